//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` for a bounded
//! time each. New inputs go to a working corpus under `target/` that starts
//! from the committed seeds (`fuzz/corpus/<target>`, read only to libFuzzer);
//! a crash, a leak, an input over the memory limits or a hang fails the run
//! and leaves the input in `fuzz/artifacts/<target>/`.
use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{self, output};

/// Builds on the stable compiler; the sanitizer flags it passes are unlocked
/// with `RUSTC_BOOTSTRAP=1`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub const TARGETS: [&str; 3] = ["records", "assembly", "http"];
/// Per target in `cargo xtask test`: CI, and elsewhere.
const TEST_SECONDS_CI: u64 = 20;
const TEST_SECONDS_LOCAL: u64 = 10;
/// Memory limits (RSS includes AddressSanitizer's shadow and quarantine),
/// and the longest one input may take.
const LIBFUZZER_ARGS: [&str; 4] = [
    "-rss_limit_mb=1024",
    "-malloc_limit_mb=256",
    "-timeout=10",
    "-print_final_stats=1",
];

/// HTTP tokens for libFuzzer, for the targets fed raw bytes.
const DICTIONARY: &str = "fuzz/http.dict";
const DICTIONARY_TARGETS: [&str; 2] = ["records", "http"];

/// The bounded pass of `cargo xtask test`.
pub fn test_pass(root: &Path) -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|ci| ci == "true");
    let seconds = if ci {
        TEST_SECONDS_CI
    } else {
        TEST_SECONDS_LOCAL
    };
    run(root, seconds, &[])
}

/// Runs `targets` (all when empty) for `seconds` each.
pub fn run(root: &Path, seconds: u64, targets: &[String]) -> Result<()> {
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!("no fuzz target {target:?} (there are {TARGETS:?})");
        }
    }
    cargo_fuzz(root)?;
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    for target in targets {
        fuzz(root, target, seconds)?;
    }
    Ok(())
}

fn cargo_fuzz(root: &Path) -> Result<()> {
    let installed = output(exec::cargo(root).args(["install", "--list"])).unwrap_or_default();
    let wanted = format!("cargo-fuzz v{CARGO_FUZZ_VERSION}:");
    if installed.lines().any(|line| line.starts_with(&wanted)) {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    exec::run(exec::cargo(root).args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

fn fuzz(root: &Path, target: &str, seconds: u64) -> Result<()> {
    let seeds = root.join("fuzz/corpus").join(target);
    let corpus = root.join("target/fuzz/corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let artifacts = root.join("fuzz/artifacts").join(target);
    let started = SystemTime::now();
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let result = exec::run(
        exec::cargo(root)
            .args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(LIBFUZZER_ARGS)
            .args(
                DICTIONARY_TARGETS
                    .contains(&target)
                    .then(|| format!("-dict={}", root.join(DICTIONARY).display())),
            )
            .env("RUSTC_BOOTSTRAP", "1"),
    );
    if result.is_err() {
        for input in files_since(&artifacts, started) {
            eprintln!("xtask: fuzz target {target} failed on {}", input.display());
        }
    }
    result.with_context(|| format!("fuzz target {target}"))
}

/// Files of `dir` modified since `since`.
fn files_since(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| modified >= since)
        })
        .map(|entry| entry.path())
        .collect()
}
