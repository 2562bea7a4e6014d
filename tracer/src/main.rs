use std::process::ExitCode;

use clap::Parser;
use tracer::{
    cli::{Args, Command},
    daemon,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    if let Some(Command::Doctor) = args.command {
        return tracer::kernel::doctor::run();
    }
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("tracer: {err}");
            return ExitCode::from(2);
        }
    };
    // One thread: the daemon's work is sequential, and cross-thread wakeups
    // would cost more CPU than the work itself.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tracer: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tracer: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
