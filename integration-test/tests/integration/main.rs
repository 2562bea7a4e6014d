//! One test binary of modules, one module per concern, sharing `support`.
//! Each needs root (it loads the tracer's programs) and runs with
//! `--test-threads=1`: the tests share the kernel's hooks and the CPU.
//! `cargo xtask vm-test` selects modules by their path (`spans::`).
mod bench_quick;
mod cli;
mod collector;
mod headers;
mod https;
mod otel_env;
mod overload;
mod package;
mod prometheus;
mod robustness;
mod routes;
mod selection;
mod spans;
mod support;
mod traces;
