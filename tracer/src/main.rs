use std::process::ExitCode;

use clap::Parser;
use tracer::{
    cli::{Args, Command},
    daemon,
    exit::Exit,
    telemetry::otel_env,
};

fn main() -> ExitCode {
    run().into()
}

fn run() -> Exit {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // `--help` and `--version` come this way too, to be printed on stdout.
            let _ = err.print();
            return if err.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
        }
    };
    if let Some(Command::Doctor { pids }) = &args.command {
        return tracer::kernel::doctor::run(pids);
    }
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tracer: {err}");
            return Exit::Usage;
        }
    };
    // SAFETY: nothing has started a thread yet; the runtime starts below.
    unsafe { otel_env::hide_from_opentelemetry_otlp() };
    // One thread: the daemon's work is sequential, and cross-thread wakeups
    // would cost more CPU than the work itself.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tracer: cannot start the async runtime: {err}");
            return Exit::Failure;
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => Exit::Ok,
        Err(err) => {
            eprintln!("tracer: {err}");
            err.exit()
        }
    }
}
