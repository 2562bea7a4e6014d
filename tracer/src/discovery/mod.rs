//! Which processes to trace: the selectors and services the user gives
//! ([`selector`], [`config_file`]), what `/proc` says of a process
//! ([`process`], [`cgroup`]), and the live map from traced process to its
//! service instance ([`registry`]), with the OTLP resource of each
//! ([`resource`]).
pub mod cgroup;
pub mod config_file;
pub mod process;
pub mod registry;
pub mod resource;
pub mod selector;
