//! `cargo xtask vm-test`: boots Debian kernels under qemu/KVM and runs the
//! root integration tests (or a shell command) inside each, the way aya tests
//! itself across kernels.
//!
//! Each guest is the host's root filesystem, shared read-only over 9p and made
//! writable with an overlay (tmpfs upper), under the packaged kernel: a small
//! initramfs (busybox-static, the 9p/virtio/overlay modules of that kernel and
//! an `/init` script) mounts it, mounts the workspace (a third, writable share)
//! at its host path, so that a clone on another filesystem or under `/tmp`
//! works too, chroots into it and runs a script the host wrote into a second,
//! writable 9p share, where the output and exit code come back. No network
//! inside the guest; nothing is built there: the test binaries are built on
//! the host and run directly, with the environment `cargo xtask test` gives
//! them.
//!
//! qemu uses KVM when it can run Debian's kernels, and falls back to TCG
//! (software emulation, several times slower: timing-sensitive tests suffer)
//! when it cannot: no `/dev/kvm`, or a `/dev/kvm` provided by PVM (`kvm_pvm`,
//! pagetable-based KVM without VMX/SVM), which runs only PVM-aware guest
//! kernels at speed. `--accel kvm|tcg` forces one.
//!
//! The kernels are pinned (package, Debian version, SHA256 of the .deb: see
//! `kernel::PINS`), fetched with `apt-get download`, checked and extracted
//! (never installed) into a cache outside the repository
//! (`/var/cache/tracer-vm`, or `$TRACER_VM_CACHE`), reused across runs and
//! clean clones. A pin gone from the archive fails the run, unless
//! `--accept-newer-kernel`, which runs the newest kernel of the series and
//! says so in the per-kernel header and the summary.
//!
//! The parts: `kernel` (fetching and caching the kernel packages),
//! `initramfs` (the guest's `/init` and the archive that carries it),
//! `plan` (what the guest runs: the test plan and its script) and `guest`
//! (booting qemu, collecting and reporting the results).
mod guest;
mod initramfs;
mod kernel;
mod plan;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::setup;
use guest::{boot, print_table};
use kernel::Kernel;
pub use plan::TestRun;
use plan::{Payload, TestPlan};

/// What the host needs for the matrix (installed only when missing).
const APT_PACKAGES: [&str; 4] = ["qemu-system-x86", "busybox-static", "xz-utils", "zstd"];
/// Kernel series of `--kernel all`: Debian 12's own kernel and its backport.
const ALL_SERIES: [&str; 2] = ["6.1", "6.12"];
const DEFAULT_CACHE: &str = "/var/cache/tracer-vm";
/// Where the writable share appears inside the guest's root.
const GUEST_OUT: &str = "/run/vm-test";
const GUEST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct Options {
    /// `6.1`, `6.12`, … or `all`; comma-separated lists allowed.
    pub kernel: String,
    /// A shell command to run instead of the tests.
    pub shell: Option<String>,
    /// Whole-run limit per kernel (boot included).
    pub timeout: Duration,
    /// Guest memory, qemu syntax.
    pub memory: String,
    pub accel: Accel,
    /// The passes of the test binaries, in order, in one boot.
    pub runs: Vec<TestRun>,
    /// When a series' pinned kernel is gone from the apt archive (or the
    /// series has no pin), run the newest installable one instead of
    /// failing, and say so loudly.
    pub accept_newer_kernel: bool,
    /// Guest vCPUs (qemu `-smp`).
    pub smp: u32,
}

pub fn vm_test(root: &Path, options: Options) -> Result<()> {
    let accel = options.accel.resolve()?;
    setup::apt_install(&APT_PACKAGES)?;
    let series = kernel_series(&options.kernel)?;
    let cache = std::env::var_os("TRACER_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE));
    let kernels = series
        .iter()
        .map(|series| Kernel::fetch(&cache, series, options.accept_newer_kernel))
        .collect::<Result<Vec<_>>>()?;

    let payload = match &options.shell {
        Some(shell) => Payload::Shell(shell.clone()),
        None => Payload::Tests(TestPlan::build(root, &options.runs)?),
    };
    let script = payload.script(root, accel.patience());
    let machine = format!(
        "{accel:?}, {} vCPU{}, TRACER_TEST_PATIENCE={}",
        options.smp,
        if options.smp == 1 { "" } else { "s" },
        accel.patience()
    );

    let work = root.join("target/vm-test");
    let mut runs = Vec::new();
    for kernel in &kernels {
        println!(
            "\n=== vm-test: Linux {} ({}; {machine}) ===",
            kernel.release,
            kernel.provenance.short()
        );
        if let Some(warning) = kernel.provenance.warning() {
            println!("{warning}");
        }
        let run = boot(kernel, root, &work, &script, &options, accel)
            .with_context(|| format!("running the guest with Linux {}", kernel.release))?;
        run.print_details(&payload);
        runs.push(run);
    }
    print_table(&runs, &payload, &machine);
    let failed: Vec<&str> = runs
        .iter()
        .filter(|run| !run.passed())
        .map(|run| run.release.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// How qemu runs the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Accel {
    /// KVM when it can run an unmodified kernel, else TCG (with a warning).
    Auto,
    Kvm,
    /// Software emulation: slow (several times), but works anywhere.
    Tcg,
}

impl Accel {
    /// The accelerator to use, or why the one asked for cannot be.
    fn resolve(self) -> Result<Accel> {
        let kvm = kvm_usable();
        match (self, kvm) {
            (Accel::Tcg, _) => Ok(Accel::Tcg),
            (Accel::Kvm | Accel::Auto, Ok(())) => Ok(Accel::Kvm),
            (Accel::Kvm, Err(why)) => bail!("no usable KVM: {why}"),
            (Accel::Auto, Err(why)) => {
                eprintln!(
                    "xtask: no usable KVM ({why}); falling back to TCG software emulation \
                     (slower; timing-sensitive tests may suffer)"
                );
                Ok(Accel::Tcg)
            }
        }
    }

    /// By how much the tests' wait ceilings are scaled in the guest
    /// (`TRACER_TEST_PATIENCE`): software emulation runs 5-20x slower.
    fn patience(self) -> u32 {
        match self {
            Accel::Kvm | Accel::Auto => 1,
            Accel::Tcg => 10,
        }
    }

    fn qemu_args(self) -> [&'static str; 4] {
        match self {
            // arch-capabilities off: some hosts' KVM refuses the MSR value
            // qemu 7.2 sets for `-cpu host` (qemu aborts: "failed to set MSR 0x10a").
            Accel::Kvm | Accel::Auto => ["-accel", "kvm", "-cpu", "host,-arch-capabilities"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

fn kvm_usable() -> Result<(), String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|err| {
            format!(
                "cannot open /dev/kvm ({err}): hardware virtualisation (on a cloud VM, \
                 nested virtualisation) and access to /dev/kvm are needed"
            )
        })?;
    // PVM (pagetable-based KVM, no VMX/SVM) runs only PVM-aware guest
    // kernels at speed; Debian's kernels it emulates instruction by
    // instruction (minutes to decompress) and fails on VEX instructions.
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err(
            "/dev/kvm is PVM (kvm_pvm), which cannot run Debian's kernels at \
                    usable speed"
                .into(),
        );
    }
    Ok(())
}

fn kernel_series(spec: &str) -> Result<Vec<String>> {
    let mut series = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "all" {
            series.extend(ALL_SERIES.iter().map(|s| s.to_string()));
        } else if item.split('.').all(|part| part.parse::<u32>().is_ok()) {
            series.push(item.to_string());
        } else {
            bail!("--kernel {item:?}: expected a series such as 6.1 or 6.12, or all");
        }
    }
    series.dedup();
    if series.is_empty() {
        bail!("--kernel: no kernel series given");
    }
    Ok(series)
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
