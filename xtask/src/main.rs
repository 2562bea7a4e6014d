//! `cargo xtask <command>`: every command a user or CI runs. Each one first
//! makes sure the machine has what it needs (`setup`, idempotent).
mod exec;
mod fuzz;
mod lint;
mod setup;
mod vm;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks: setup, build, run, test, bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: rust-src, LLVM 22, bpf-linker, the Python venv, bench tools.
    Setup,
    /// Build the tracer (release) with its kernel programs.
    Build,
    /// Build, then run the tracer as root with these arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Unit tests, then the root integration tests that load the real programs.
    Test,
    /// Boot Debian kernels under qemu/KVM and run the root integration tests in each.
    ///
    /// Trailing arguments naming a test target (e.g. `tracer_spans`) select
    /// those test binaries; the others go to every test binary (filters).
    VmTest {
        /// Kernel series: 6.1, 6.12 (comma-separated) or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Run this shell command in the guest instead of the tests.
        #[arg(long)]
        shell: Option<String>,
        /// Limit per kernel, boot included, in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Guest memory (qemu syntax).
        #[arg(long, default_value = "4G")]
        memory: String,
        /// kvm, tcg (software emulation), or auto: KVM when it can run Debian's kernels.
        #[arg(long, value_enum, default_value_t = vm::Accel::Auto)]
        accel: vm::Accel,
        /// Run the tests once per probe set (comma-separated: tracepoints,
        /// fentry, kprobes); default once, with the tracer's own choice.
        #[arg(long, value_delimiter = ',')]
        probes: Vec<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the fuzz targets (all, or those named) on the committed seed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        targets: Vec<String>,
    },
    /// Trace the app for 10 minutes while gunicorn re-forks its workers
    /// (see `cargo xtask soak -- --help`; `cargo xtask test` runs 60 s of it).
    Soak {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Reproduce the published experiment (see `cargo xtask bench -- --help`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    let root = workspace_root();
    setup::ensure(&root)?;
    match command {
        Command::Setup => Ok(()),
        Command::Build => build(&root).map(|_| ()),
        Command::Run { args } => {
            let tracer = build(&root)?;
            exec::run(exec::command(&tracer).args(args))
        }
        Command::Test => test(&root),
        Command::Fuzz { seconds, targets } => fuzz::run(&root, seconds, &targets),
        Command::VmTest {
            kernel,
            shell,
            timeout,
            memory,
            accel,
            probes,
            args,
        } => vm::vm_test(
            &root,
            vm::Options {
                kernel,
                shell,
                timeout: Duration::from_secs(timeout),
                memory,
                accel,
                args,
                probes,
            },
        ),
        Command::Soak { args } => {
            let tracer = build(&root)?;
            harness(&root, "soak", &tracer, &args)
        }
        Command::Bench { args } => {
            let tracer = build(&root)?;
            harness(&root, "bench", &tracer, &args)
        }
    }
}

/// Runs a subcommand of the harness binary with the tracer at `tracer`.
fn harness(
    root: &std::path::Path,
    subcommand: &str,
    tracer: &std::path::Path,
    args: &[String],
) -> Result<()> {
    exec::run(
        exec::cargo(root)
            .args([
                "run",
                "--release",
                "-p",
                "harness",
                "--bin",
                "harness",
                "--",
            ])
            .arg(subcommand)
            .arg("--tracer")
            .arg(tracer)
            .args(args),
    )
}

/// Builds the release tracer and returns its path.
fn build(root: &std::path::Path) -> Result<PathBuf> {
    exec::run(exec::cargo(root).args(["build", "--release", "-p", "tracer"]))?;
    Ok(root.join("target/release/tracer"))
}

fn test(root: &std::path::Path) -> Result<()> {
    lint(root)?;
    let tracer = build(root)?;
    // Unit tests of every crate (no root needed, but root is fine).
    exec::run(exec::cargo(root).args([
        "test",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--lib",
        "--bins",
    ]))?;
    // A bounded fuzz pass over the parsers of kernel bytes.
    fuzz::test_pass(root)?;
    // Integration tests: real gunicorn, the real programs in the real kernel,
    // one at a time (they share the kernel's tracepoints and the CPU).
    exec::run(
        exec::cargo(root)
            .args(INTEGRATION_TESTS)
            .args(["--", "--test-threads=1"])
            .env("TRACER_BIN", &tracer)
            .env("HARNESS_VENV", root.join(".venv")),
    )?;
    // The soak's short form: a minute of re-forking workers at 1000 req/s.
    harness(root, "soak", &tracer, &["--seconds".into(), "60".into()])?;
    // The kernel matrix: under Debian 12's kernel, the span and robustness
    // tests once with each TCP probe set (this host's kernel offers
    // neither), and the CLI tests (doctor, `auto`, least privilege under
    // Debian's perf_event_paranoid=3); under its backport, the span tests.
    // Guests run emulated here, so tests bound to a request rate stay on the
    // host (README, "Kernel matrix").
    let guest = |kernel: &str, args: &[&str], probes: &[&str]| vm::Options {
        kernel: kernel.into(),
        shell: None,
        timeout: Duration::from_secs(1200),
        memory: "4G".into(),
        accel: vm::Accel::Auto,
        args: args.iter().map(|arg| arg.to_string()).collect(),
        probes: probes.iter().map(|set| set.to_string()).collect(),
    };
    let both_sets = ["fentry", "kprobes"];
    let functional = ["tracer_spans", "tracer_robustness", "--skip", "sigkill"];
    vm::vm_test(root, guest("6.1", &functional, &both_sets))?;
    vm::vm_test(root, guest("6.1", &["tracer_cli"], &[]))?;
    vm::vm_test(root, guest("6.12", &["tracer_spans"], &both_sets))
}

/// `cargo` arguments that build (and, without `--no-run`, run) the root
/// integration tests: the harness's test targets.
const INTEGRATION_TESTS: [&str; 6] = ["test", "--release", "-p", "harness", "--test", "*"];

/// Formatting, and clippy (warnings are errors) over the host crates and the eBPF crate.
fn lint(root: &std::path::Path) -> Result<()> {
    exec::run(exec::cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    lint::ebpf_clippy(root)?;
    exec::run(exec::cargo(root).args([
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
