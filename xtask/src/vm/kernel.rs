//! The guest kernels: Debian kernel packages, downloaded with `apt-get
//! download` and extracted (never installed) into the cache.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{self, command, output};

/// A Debian kernel package, extracted into the cache.
pub(super) struct Kernel {
    pub(super) package: String,
    pub(super) release: String,
    pub(super) vmlinuz: PathBuf,
    pub(super) modules: PathBuf,
}

impl Kernel {
    /// The newest `linux-image-<series>.*-amd64` (not cloud, not rt) of the
    /// apt archive, downloaded and extracted unless the cache has it.
    pub(super) fn fetch(cache: &Path, series: &str) -> Result<Kernel> {
        let package = match newest_package(series) {
            Ok(package) => package,
            Err(err) => {
                // Offline, or apt lists gone: a cached kernel of the series still does.
                if let Some(kernel) = cached_kernels(cache, series).pop() {
                    eprintln!("xtask: {err:#}; using the cached Linux {}", kernel.release);
                    return Ok(kernel);
                }
                return Err(err);
            }
        };
        let release = package.trim_start_matches("linux-image-").to_string();
        let dir = cache.join(&release);
        if !dir.join(".complete").exists() {
            extract(cache, &package, &dir)?;
            // Older kernels of the same series are no longer wanted.
            for old in cached_kernels(cache, series) {
                if old.release != release {
                    eprintln!("xtask: removing the cached Linux {}", old.release);
                    let _ = fs::remove_dir_all(cache.join(&old.release));
                }
            }
        }
        Kernel::open(&dir, &release, &package)
    }

    fn open(dir: &Path, release: &str, package: &str) -> Result<Kernel> {
        let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
        let modules = dir.join(format!("lib/modules/{release}"));
        if !vmlinuz.exists() || !modules.is_dir() {
            bail!(
                "{package}: no {} or {} in the extracted package (remove {} to fetch it again)",
                vmlinuz.display(),
                modules.display(),
                dir.display()
            );
        }
        Ok(Kernel {
            package: package.to_string(),
            release: release.to_string(),
            vmlinuz,
            modules,
        })
    }
}

/// Cached kernels of a series, oldest first.
fn cached_kernels(cache: &Path, series: &str) -> Vec<Kernel> {
    let prefix = format!("{series}.");
    let mut kernels: Vec<Kernel> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let release = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            (release.starts_with(&prefix) && dir.join(".complete").exists())
                .then(|| Kernel::open(&dir, &release, &format!("linux-image-{release}")).ok())
                .flatten()
        })
        .collect();
    kernels.sort_by_key(|kernel| version_key(&kernel.release));
    kernels
}

fn newest_package(series: &str) -> Result<String> {
    let mut names = plain_images(series);
    if names.is_empty() {
        // Fresh machine without apt lists: update once.
        exec::run(command("apt-get").args(["update", "-qq"]))?;
        names = plain_images(series);
    }
    names.sort_by_key(|name| std::cmp::Reverse(version_key(name)));
    for name in names {
        let policy = output(command("apt-cache").args(["policy", &name])).unwrap_or_default();
        let has_candidate = policy
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Candidate:"))
            .any(|candidate| candidate.trim() != "(none)");
        if has_candidate {
            return Ok(name);
        }
    }
    bail!(
        "no installable Debian package linux-image-{series}.*-amd64 (not cloud, not rt) in the \
         apt archive: is Debian 12 (bookworm, bookworm-security) in the apt sources, and was \
         `apt-get update` run?"
    )
}

/// Package names `linux-image-<series>.<…>-amd64`, without cloud/rt flavours.
fn plain_images(series: &str) -> Vec<String> {
    let prefix = format!("linux-image-{series}.");
    output(command("apt-cache").args(["pkgnames", &prefix]))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|name| {
            name.starts_with(&prefix)
                && name.ends_with("-amd64")
                && !name.contains("-cloud-")
                && !name.contains("-rt-")
        })
        .map(String::from)
        .collect()
}

/// The numbers of a version-like string, for ordering: `6.12.117+deb12` → [6, 12, 117, 12].
fn version_key(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

fn extract(cache: &Path, package: &str, dir: &Path) -> Result<()> {
    fs::create_dir_all(cache).with_context(|| {
        format!(
            "creating the kernel cache {} (run as root, or set TRACER_VM_CACHE)",
            cache.display()
        )
    })?;
    let download = cache.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    eprintln!("xtask: downloading {package} (not installing it)");
    let fetched = exec::run(
        command("apt-get")
            .args(["download", "-qq", package])
            .current_dir(&download),
    )
    .or_else(|_| {
        // Stale lists point at files the mirror dropped: update and retry.
        exec::run(command("apt-get").args(["update", "-qq"]))?;
        exec::run(
            command("apt-get")
                .args(["download", "-qq", package])
                .current_dir(&download),
        )
    });
    let result = fetched
        .with_context(|| format!("apt-get download {package}"))
        .and_then(|()| {
            let deb = fs::read_dir(&download)?
                .flatten()
                .map(|entry| entry.path())
                .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
                .with_context(|| format!("apt-get download {package} left no .deb"))?;
            let staging = cache.join(format!(".extract-{}", std::process::id()));
            let _ = fs::remove_dir_all(&staging);
            exec::run(command("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
            fs::write(staging.join(".complete"), format!("{package}\n"))?;
            let _ = fs::remove_dir_all(dir);
            fs::rename(&staging, dir)
                .with_context(|| format!("moving the extracted kernel to {}", dir.display()))
        });
    let _ = fs::remove_dir_all(&download);
    result
}
