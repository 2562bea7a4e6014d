//! Hook families: process tree, TCP connection life, socket data (and the
//! TCP function hooks that feed it in the fentry and kprobe sets).
pub mod connection;
pub mod data;
pub mod process;
pub mod tcp;
