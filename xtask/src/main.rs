//! `cargo xtask <command>`: every command a user or CI runs. Each one first
//! makes sure the machine has what it needs (`setup`, idempotent).
mod dist;
mod exec;
mod fuzz;
mod lint;
mod setup;
mod vm;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
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
    /// Build the Debian package (cargo-deb): target/debian/tracer_*.deb.
    Dist,
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
        /// Guest vCPUs (1 shows the tests' waits hold on a slower machine).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        smp: u32,
        /// Run the tests once per probe set (comma-separated: tracepoints,
        /// fentry, kprobes); default once, with the tracer's own choice.
        #[arg(long, value_delimiter = ',')]
        probes: Vec<String>,
        /// When a series' pinned kernel is gone from the apt archive, run the
        /// newest installable one (said loudly) instead of failing.
        #[arg(long)]
        accept_newer_kernel: bool,
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
    // What each command needs, and no more (a build needs no nginx).
    match &command {
        Command::Build | Command::Run { .. } | Command::Fuzz { .. } => setup::toolchain()?,
        Command::Dist => {
            setup::toolchain()?;
            setup::packaging()?;
        }
        Command::VmTest { .. } => {
            setup::toolchain()?;
            setup::test_tools()?;
            setup::venv(&root)?;
        }
        // `test` times its setup as a stage of its own.
        Command::Test => {}
        Command::Setup | Command::Soak { .. } | Command::Bench { .. } => setup::all(&root)?,
    }
    match command {
        Command::Setup => Ok(()),
        Command::Build => build(&root).map(|_| ()),
        Command::Dist => {
            let deb = dist::run(&root)?;
            println!("{}", deb.display());
            Ok(())
        }
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
            smp,
            probes,
            accept_newer_kernel,
            args,
        } => vm::vm_test(
            &root,
            vm::Options {
                kernel,
                shell,
                timeout: Duration::from_secs(timeout),
                memory,
                accel,
                runs: vm::TestRun::per_probe_set(&probes, &args),
                accept_newer_kernel,
                smp,
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

/// Runs a subcommand of the harness binary that [`build`] built, with the
/// tracer at `tracer` (the binary itself: `cargo run` could resolve other
/// features and rebuild the kernel programs).
fn harness(
    root: &std::path::Path,
    subcommand: &str,
    tracer: &std::path::Path,
    args: &[String],
) -> Result<()> {
    exec::run(
        exec::command(root.join("target/release/harness"))
            .current_dir(root)
            .arg(subcommand)
            .arg("--tracer")
            .arg(tracer)
            .args(args),
    )
}

/// Builds the release tracer and the harness binary; returns the tracer's path.
fn build(root: &std::path::Path) -> Result<PathBuf> {
    exec::run(exec::cargo(root).args(["build", "--release", "-p", "tracer", "-p", "harness"]))?;
    Ok(root.join("target/release/tracer"))
}

/// The README's test command: every stage in order, each timed, and the
/// times printed at the end whether it passed or not (docs/tests.md says
/// what each stage covers).
fn test(root: &std::path::Path) -> Result<()> {
    let mut stages = Stages::default();
    let result = test_stages(root, &mut stages);
    stages.print();
    result
}

fn test_stages(root: &std::path::Path, stages: &mut Stages) -> Result<()> {
    stages.run("setup", || setup::all(root))?;
    stages.run("lint", || lint(root))?;
    let tracer = stages.run("build", || build(root))?;
    let harness_bin = root.join("target/release/harness");
    // The package around the binary just built (no second build; fast
    // compression: the tests unpack it and throw it away).
    let deb = stages.run("package (cargo deb)", || {
        dist::package(root, dist::Compression::Fast)
    })?;
    // Unit tests of the default members, in the release profile the build
    // already compiled (a debug profile would compile everything again).
    stages.run("unit tests", || {
        exec::run(exec::cargo(root).args(["test", "--release"]))
    })?;
    stages.run("fuzz", || fuzz::test_pass(root))?;
    // Real gunicorn, the real programs in the real kernel, one at a time
    // (they share the kernel's hooks and the CPU).
    stages.run("integration (host kernel)", || {
        exec::run(
            exec::cargo(root)
                .args(INTEGRATION_TESTS)
                .args(["--", "--test-threads=1"])
                .env("TRACER_BIN", &tracer)
                .env("HARNESS_BIN", &harness_bin)
                .env("TRACER_DEB", &deb)
                .env("HARNESS_VENV", root.join(".venv")),
        )
    })?;
    // The soak's short form: a minute of re-forking workers at 1000 req/s.
    stages.run("soak (60 s)", || {
        harness(root, "soak", &tracer, &["--seconds".into(), "60".into()])
    })?;
    // The kernel matrix, only where it adds coverage the host cannot give:
    // this host's kernel offers the tracepoint set alone. Under Debian 12's
    // kernel, the span, robustness and CLI tests (doctor, `auto`, least
    // privilege under Debian's perf_event_paranoid=3) with fentry and the
    // span tests with kprobes; under its backport (the other form of
    // tcp_recvmsg), the span tests with fentry. Guests run emulated here,
    // so tests bound to a request rate stay on the host
    // (docs/kernel-matrix.md).
    let guest = |kernel: &str, runs: &[(&str, &[&str])]| vm::Options {
        kernel: kernel.into(),
        shell: None,
        timeout: Duration::from_secs(1800),
        memory: "4G".into(),
        accel: vm::Accel::Auto,
        runs: runs
            .iter()
            .map(|(probes, args)| vm::TestRun {
                probes: probes.to_string(),
                args: args.iter().map(|arg| arg.to_string()).collect(),
            })
            .collect(),
        // A pin Debian has dropped must not stop every change from landing;
        // the summary says loudly which kernel ran instead.
        accept_newer_kernel: true,
        smp: 2,
    };
    // One boot per kernel. The fentry set is what `auto` picks on both;
    // under it the CLI tests run too (they mostly leave the choice to the
    // tracer), and the header capture on the oldest verifier. The kprobe
    // set's own code is its data path: the span tests.
    stages.run("guest: Debian 6.1 (fentry, kprobes, CLI)", || {
        vm::vm_test(
            root,
            guest(
                "6.1",
                &[
                    (
                        "fentry",
                        &[
                            "spans::",
                            "robustness::",
                            "cli::",
                            "headers::",
                            "--skip",
                            "sigkill",
                        ],
                    ),
                    ("kprobes", &["spans::"]),
                ],
            ),
        )
    })?;
    // The port selector's listen hook and its restarts, on the newer kernel
    // (the 6.1 guest's CLI tests run the exec hook), and the client side
    // and trace context through the fentry set's data path.
    stages.run("guest: Debian 6.12 (fentry, port selector, traces)", || {
        vm::vm_test(
            root,
            guest(
                "6.12",
                &[("fentry", &["spans::", "selection::a_port", "traces::"])],
            ),
        )
    })
}

/// Wall time per stage of `cargo xtask test`.
#[derive(Default)]
struct Stages {
    done: Vec<(&'static str, Duration, bool)>,
}

impl Stages {
    fn run<T>(&mut self, name: &'static str, stage: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("\n=== xtask test: {name} ===");
        let started = std::time::Instant::now();
        let result = stage();
        self.done.push((name, started.elapsed(), result.is_ok()));
        result.with_context(|| format!("stage {name:?}"))
    }

    fn print(&self) {
        eprintln!("\n=== xtask test: time per stage ===");
        for (name, took, passed) in &self.done {
            let status = if *passed { "ok" } else { "FAILED" };
            eprintln!("{name:<40} {status:<7} {:>6.0} s", took.as_secs_f64());
        }
        let total: Duration = self.done.iter().map(|(_, took, _)| *took).sum();
        eprintln!("{:<40} {:<7} {:>6.0} s", "total", "", total.as_secs_f64());
    }
}

/// `cargo` arguments that build (and, without `--no-run`, run) the root
/// integration tests: the one test binary of `integration-test`.
const INTEGRATION_TESTS: [&str; 4] = ["test", "--release", "-p", "integration-test"];

/// Formatting, and clippy (warnings are errors) over the host crates and the eBPF crate.
fn lint(root: &std::path::Path) -> Result<()> {
    exec::run(exec::cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    lint::ebpf_clippy(root)?;
    // In the release profile, so build scripts and proc macros are those the
    // build compiles next, not a second set.
    exec::run(exec::cargo(root).args([
        "clippy",
        "--release",
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
