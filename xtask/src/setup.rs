//! Idempotent machine setup, each step skipped when already done, in the
//! parts the commands need: the toolchain (rust-src, LLVM 22 and bpf-linker
//! built against it: what a build needs), the packager, the test tools, and
//! the Python venv.
use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::exec::{self, command, output};

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian packages: LLVM 22 for bpf-linker.
const TOOLCHAIN_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Debian packages: nginx and wrk for the collateral-cost bench; bpftool
/// for the test that checks nothing of ours stays loaded after the tracer
/// is killed; systemd for `systemd-analyze verify` of the packaged unit.
const TEST_PACKAGES: [&str; 4] = ["nginx-light", "wrk", "bpftool", "systemd"];
/// Debian packages: dpkg-shlibdeps, which cargo-deb runs for `depends = "$auto"`.
const PACKAGING_PACKAGES: [&str; 1] = ["dpkg-dev"];

/// Everything: `cargo xtask setup`, and what the tests and the bench need.
pub fn all(root: &Path) -> Result<()> {
    toolchain()?;
    packaging()?;
    test_tools()?;
    venv(root)
}

/// What building the tracer needs: the rust components, LLVM 22, bpf-linker.
pub fn toolchain() -> Result<()> {
    rust_components()?;
    apt_install(&TOOLCHAIN_PACKAGES)?;
    bpf_linker()
}

/// What `cargo xtask dist` needs beside the toolchain: cargo-deb, dpkg-dev.
pub fn packaging() -> Result<()> {
    apt_install(&PACKAGING_PACKAGES)?;
    cargo_deb()
}

/// What the tests and the bench run beside the tracer and the app.
pub fn test_tools() -> Result<()> {
    apt_install(&TEST_PACKAGES)
}

/// rust-src builds `core` for the BPF target; clippy and rustfmt lint.
fn rust_components() -> Result<()> {
    let installed =
        output(command("rustup").args(["component", "list", "--installed"])).unwrap_or_default();
    let missing: Vec<&str> = ["rust-src", "clippy", "rustfmt"]
        .into_iter()
        .filter(|component| !installed.lines().any(|line| line.starts_with(component)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    exec::run(command("rustup").args(["component", "add"]).args(&missing))
}

/// Installs those of `packages` that are not installed yet.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            output(command("dpkg-query").args(["-W", "-f=${Status}", package]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `sudo cargo xtask setup` (or install them)"
        );
    }
    eprintln!("xtask: installing {missing:?}");
    exec::run(command("apt-get").args(["update", "-qq"]))?;
    exec::run(
        command("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker() -> Result<()> {
    let version = output(command("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    exec::run(
        command("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env(
                "RUSTFLAGS",
                format!("-L {LLVM_PREFIX}/lib -C link-args=-Wl,-rpath,{LLVM_PREFIX}/lib"),
            ),
    )
}

fn cargo_deb() -> Result<()> {
    let version = output(command("cargo").args(["deb", "--version"])).unwrap_or_default();
    if version.contains(CARGO_DEB_VERSION) {
        return Ok(());
    }
    eprintln!("xtask: building cargo-deb {CARGO_DEB_VERSION} (a few minutes)");
    exec::run(command("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]))
}

/// `.venv` with the pinned requirements (the app the tests and the soak
/// trace); redone when the requirements change.
pub fn venv(root: &Path) -> Result<()> {
    let venv = root.join(".venv");
    let requirements = root.join("harness/app/requirements.txt");
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join(".requirements");
    if fs::read_to_string(&stamp).is_ok_and(|have| have == wanted) {
        return Ok(());
    }
    eprintln!("xtask: creating the Python venv in {}", venv.display());
    exec::run(command("python3").args(["-m", "venv"]).arg(&venv))?;
    exec::run(
        command(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
    )?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}

fn is_root() -> bool {
    output(command("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}
