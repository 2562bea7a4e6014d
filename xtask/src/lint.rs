//! Clippy over the kernel programs. They build only for the BPF target, so
//! the workspace pass skips them; this pass checks them for that target, as
//! aya does for its own programs: `core` comes from rust-src through
//! `-Z build-std`, which stable cargo accepts under `RUSTC_BOOTSTRAP=1`.
use std::path::Path;

use anyhow::Result;

use crate::exec;

/// Clippy over `tracer-ebpf` for `bpfel-unknown-none`, warnings as errors.
pub fn ebpf_clippy(root: &Path) -> Result<()> {
    exec::run(
        exec::cargo(root)
            .args([
                "clippy",
                "-p",
                "tracer-ebpf",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1"),
    )
}
