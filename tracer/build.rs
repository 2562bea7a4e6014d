//! Builds the kernel programs (`tracer-ebpf`) for `bpfel-unknown-none` and
//! embeds them. `AYA_BUILD_SKIP=1` skips this for a quick check or lint pass.
//! Under cargo-fuzz (`--cfg fuzzing`) the programs are not built at all: the
//! fuzz targets never load them, the BPF toolchain is not needed, and the
//! sanitizer flags cargo-fuzz sets in RUSTFLAGS must not reach the nested
//! BPF build. The loader then embeds an empty object.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        println!("cargo:rerun-if-changed=build.rs");
        let out_dir = std::env::var_os("OUT_DIR").context("OUT_DIR not set")?;
        let object = std::path::Path::new(&out_dir).join("tracer");
        return std::fs::write(&object, []).with_context(|| format!("writing {object:?}"));
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
