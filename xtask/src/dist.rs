//! `cargo xtask dist`: the Debian package, made by cargo-deb from
//! `[package.metadata.deb]` in `tracer/Cargo.toml` around the release
//! binary [`crate::build`] builds (with its kernel programs). cargo-deb
//! runs with `--no-build`: its own `cargo build` would resolve features
//! and a profile of its own and could build the programs a second time.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use crate::exec;

/// Builds the release binary, then the package; returns the .deb's path.
pub fn run(root: &Path) -> Result<PathBuf> {
    crate::build(root)?;
    package(root, Compression::Default)
}

/// How hard cargo-deb compresses: `Fast` (xz -1) is for a package that a
/// test unpacks and throws away.
#[derive(Clone, Copy)]
pub enum Compression {
    Default,
    Fast,
}

/// Packages the release binary already in `target/release`; returns the
/// .deb's path, `target/debian/tracer_<version>-1_<arch>.deb`.
pub fn package(root: &Path, compression: Compression) -> Result<PathBuf> {
    let mut cargo_deb = exec::cargo(root);
    cargo_deb.args(["deb", "-p", "tracer", "--no-build", "--locked"]);
    if let Compression::Fast = compression {
        cargo_deb.arg("--fast");
    }
    // cargo-deb prints the package's path, alone, on stdout.
    let out = cargo_deb
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {cargo_deb:?}"))?;
    if !out.status.success() {
        bail!("{cargo_deb:?} failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.ends_with(".deb"))
        .map(|line| root.join(line))
        .with_context(|| format!("cargo deb printed no .deb path: {stdout:?}"))?;
    if !deb.is_file() {
        bail!(
            "cargo deb said it wrote {}, which is not there",
            deb.display()
        );
    }
    Ok(deb)
}
