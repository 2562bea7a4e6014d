//! The tracer as a library: the binary is a thin `main.rs` over `daemon::run`.
//! Without the `daemon` feature only what parses and assembles the kernel's
//! records is built (the fuzz targets' view of the crate).
pub mod assembly;
#[cfg(feature = "daemon")]
pub mod capture;
#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub mod discovery;
pub mod events;
pub mod exit;
pub mod http;
pub mod inflight;
#[cfg(feature = "daemon")]
pub mod kernel;
#[cfg(feature = "daemon")]
pub mod proctree;
pub mod stats;
#[cfg(feature = "daemon")]
pub mod telemetry;
pub mod trace_context;
