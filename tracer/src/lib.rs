//! The tracer as a library: the binary is a thin `main.rs` over `daemon::run`.
pub mod assembly;
pub mod cli;
pub mod daemon;
pub mod events;
pub mod exit;
pub mod http;
pub mod kernel;
pub mod proctree;
pub mod stats;
pub mod telemetry;
