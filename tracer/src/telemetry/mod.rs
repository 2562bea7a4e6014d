//! From completed requests to what leaves the host: OTLP spans and metrics,
//! the same metrics for Prometheus to scrape, and JSON lines for debugging.
pub mod active;
pub mod clock;
pub mod delivery;
pub mod encode;
pub mod exporter;
pub mod instance;
pub mod json;
pub mod meters;
pub mod otel_env;
pub mod otlp;
pub mod prometheus;
#[cfg(test)]
mod reference;
pub mod routes;
pub mod sampling;
pub mod spans;
