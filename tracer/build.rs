//! Builds the kernel programs (`tracer-ebpf`) for `bpfel-unknown-none` and
//! embeds them. `AYA_BUILD_SKIP=1` skips this for a quick check or lint pass.
//! Without the `daemon` feature (the fuzz targets' build) there is no loader
//! to embed them in, so nothing is built: no BPF toolchain is needed, and the
//! sanitizer flags cargo-fuzz sets in RUSTFLAGS never reach a nested build.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_FEATURE_DAEMON").is_none() {
        // No loader to embed the programs in.
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata failed")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tracer-ebpf manifest has no parent"))?;
    // The programs also compile the kernel/user contract: a change there
    // must rebuild them, or the object and the daemon disagree on records.
    let common = metadata
        .packages
        .iter()
        .find(|package| package.name.as_str() == "tracer-common")
        .and_then(|package| package.manifest_path.parent())
        .ok_or_else(|| anyhow!("tracer-common package not found"))?;
    println!("cargo:rerun-if-changed={common}");
    // Stable rustc builds `core` for the BPF target only with build-std,
    // which stable unlocks with RUSTC_BOOTSTRAP.
    // SAFETY: the build script is single-threaded here.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom("stable"),
    )
}
