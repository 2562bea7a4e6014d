//! Hook families: process tree, TCP connection life, socket data.
pub mod connection;
pub mod data;
pub mod process;
