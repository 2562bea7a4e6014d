//! The proving ground for the tracer: an open-loop load generator, an
//! embedded OTLP sink, supervision of the Flask app in its three
//! configurations, CPU accounting, the benchmark that ties them together and
//! writes its report, and the tracer's own measurements (cost, overload,
//! soak) on the pieces they share in `measure`.

pub mod affinity;
pub mod app;
pub mod bench;
pub mod clock;
pub mod cost;
pub mod cpu;
pub mod http1;
pub mod latency;
pub mod loadgen;
pub mod losses;
pub mod measure;
pub mod nginx;
pub mod overload;
pub mod patience;
pub mod plot;
pub mod report;
pub mod selection;
pub mod setup;
pub mod sink;
pub mod soak;
pub mod testserver;
pub mod tls;
pub mod tracer;
