//! The guest kernels: Debian kernel packages, pinned (exact package, Debian
//! version and SHA256 of the .deb, `PINS`), downloaded with `apt-get
//! download`, checked against the pin and extracted (never installed) into
//! the cache.
//!
//! Debian's security archive keeps only the newest kernels of a series, so a
//! pin eventually disappears from it. Then `vm-test` fails and says how to
//! move the pin, unless `--accept-newer-kernel` is given: then it runs the
//! newest installable kernel of the series, and says loudly, per kernel and
//! in the summary, that it is not the pinned one.
use std::{
    cmp::Ordering,
    fmt, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{self, command, output};

/// A kernel the matrix is pinned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Pin {
    /// `6.1`, `6.12`: what `--kernel` names.
    pub(super) series: &'static str,
    pub(super) package: &'static str,
    /// The Debian version, as `apt-cache policy` and `apt-cache show` give it.
    pub(super) version: &'static str,
    /// Of the .deb, as `apt-cache show <package>=<version>` gives it.
    pub(super) sha256: &'static str,
}

/// The pinned kernels: what the matrix tests changes only with this table.
///
/// To move a pin (when vm-test says it is gone, or to test a newer kernel):
/// `apt-get update`; `apt-cache policy 'linux-image-<series>.*-amd64'` (or
/// `apt-cache pkgnames linux-image-<series>.`) for the newest plain `-amd64`
/// image (not `-unsigned`, cloud or rt) that has a candidate;
/// `apt-cache show <package>=<candidate>` for its `Version:` and `SHA256:`;
/// then `cargo xtask vm-test --kernel <series>` downloads it and checks it.
pub(super) const PINS: [Pin; 2] = [
    Pin {
        series: "6.1",
        package: "linux-image-6.1.0-57-amd64",
        version: "6.1.192-3",
        sha256: "14d219d01e1283261817d961dbb3895cb5b4288d0de10e0ba0632a0d993e15bf",
    },
    Pin {
        series: "6.12",
        package: "linux-image-6.12.117+deb12-amd64",
        version: "6.12.117-1~deb12u1",
        sha256: "803d36a7cda13355ae8152122470288b2636f19f1cb58162dd9d8b408af9b1b4",
    },
];

fn pin_for(series: &str) -> Option<Pin> {
    PINS.iter().copied().find(|pin| pin.series == series)
}

/// A package at one version, and the SHA256 of its .deb.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) package: String,
    pub(super) version: String,
    pub(super) sha256: String,
}

impl Pin {
    fn origin(&self) -> Origin {
        Origin {
            package: self.package.into(),
            version: self.version.into(),
            sha256: self.sha256.into(),
        }
    }
}

impl Origin {
    /// What `uname -r` says under it: the package name without `linux-image-`.
    fn release(&self) -> &str {
        self.package.trim_start_matches("linux-image-")
    }

    /// The `.complete` stamp of its cache directory.
    fn stamp(&self) -> String {
        format!(
            "package={}\nversion={}\nsha256={}\n",
            self.package, self.version, self.sha256
        )
    }

    /// Reads a stamp; `None` for one written before kernels were pinned
    /// (the package name alone), or damaged.
    fn parse_stamp(text: &str) -> Option<Origin> {
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(String::from)
        };
        Some(Origin {
            package: field("package")?,
            version: field("version")?,
            sha256: field("sha256")?,
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.package, self.version)
    }
}

/// Which kernel ran, and whether it is the pinned one.
#[derive(Clone, Debug)]
pub(super) struct Provenance {
    pub(super) origin: Origin,
    /// The series' pin (`None`: the series has none).
    pub(super) pin: Option<Pin>,
}

impl Provenance {
    pub(super) fn pinned(&self) -> bool {
        self.pin.is_some_and(|pin| pin.origin() == self.origin)
    }

    /// For headers: `linux-image-… 6.1.… (pinned)`.
    pub(super) fn short(&self) -> String {
        let pinned = if self.pinned() {
            "pinned"
        } else {
            "NOT PINNED"
        };
        format!("{}, {pinned}", self.origin)
    }

    /// The loud line about a kernel that is not the pinned one; `None` for
    /// the pinned one.
    pub(super) fn warning(&self) -> Option<String> {
        if self.pinned() {
            return None;
        }
        let pin = match self.pin {
            Some(pin) => format!("the pin is {} {}", pin.package, pin.version),
            None => "the series has no pin".into(),
        };
        Some(format!(
            "!!! NOT THE PINNED KERNEL (--accept-newer-kernel): ran {} (sha256 {}); {pin}",
            self.origin, self.origin.sha256
        ))
    }
}

/// A Debian kernel package, extracted into the cache.
pub(super) struct Kernel {
    pub(super) release: String,
    pub(super) provenance: Provenance,
    pub(super) vmlinuz: PathBuf,
    pub(super) modules: PathBuf,
}

impl Kernel {
    /// The series' pinned kernel, from the cache or downloaded and checked;
    /// with `accept_newer`, the newest installable kernel of the series when
    /// the pin is gone from the archive (or the series has none).
    pub(super) fn fetch(cache: &Path, series: &str, accept_newer: bool) -> Result<Kernel> {
        let pin = pin_for(series);
        match pin {
            Some(pin) => {
                let wanted = pin.origin();
                if let Some(kernel) = cached(cache, &wanted, Some(pin)) {
                    return Ok(kernel);
                }
                match archive_entry(&wanted.package, &wanted.version) {
                    Ok(Some(entry)) => {
                        if entry.sha256 != pin.sha256 {
                            bail!(
                                "the apt archive's {wanted} has SHA256 {}, but the pin in \
                                 xtask/src/vm/kernel.rs says {}: not using it",
                                entry.sha256,
                                pin.sha256
                            );
                        }
                        return download(cache, series, &wanted, Some(pin));
                    }
                    Ok(None) if !accept_newer => bail!(
                        "the pinned kernel for {series}, {wanted}, is neither cached nor in the \
                         apt archive any more (Debian's security archive keeps only the newest \
                         kernels). Move the pin in xtask/src/vm/kernel.rs (PINS: the newest \
                         installable linux-image-{series}.*-amd64, `apt-cache policy` for its \
                         version, `apt-cache show <package>=<version>` for its SHA256), or pass \
                         --accept-newer-kernel to run the newest one unpinned"
                    ),
                    Ok(None) => eprintln!(
                        "xtask: !!! the pinned kernel for {series}, {wanted}, is gone from the \
                         apt archive; --accept-newer-kernel: using the newest installable \
                         kernel of the series instead, NOT the pinned one"
                    ),
                    Err(err) if !accept_newer => return Err(err),
                    // Offline: the newest cached kernel of the series may still do.
                    Err(err) => eprintln!(
                        "xtask: !!! {err:#}; --accept-newer-kernel: using the newest kernel of \
                         the series that can be had, NOT the pinned one"
                    ),
                }
            }
            None if !accept_newer => bail!(
                "no pinned kernel for the series {series} (pinned: {}): add one to PINS in \
                 xtask/src/vm/kernel.rs, or pass --accept-newer-kernel to run the newest one \
                 unpinned",
                PINS.map(|pin| pin.series).join(", ")
            ),
            None => eprintln!(
                "xtask: !!! no pinned kernel for the series {series}; --accept-newer-kernel: \
                 using the newest installable one, NOT a pinned one"
            ),
        }
        let newest = match newest_installable(series) {
            Ok(newest) => newest,
            Err(err) => {
                // Offline, or apt lists gone: a cached kernel of the series still does.
                if let Some(kernel) = cached_kernels(cache, series, pin).pop() {
                    eprintln!(
                        "xtask: {err:#}; using the cached {}",
                        kernel.provenance.origin
                    );
                    return Ok(kernel);
                }
                return Err(err);
            }
        };
        match cached(cache, &newest, pin) {
            Some(kernel) => Ok(kernel),
            None => download(cache, series, &newest, pin),
        }
    }

    fn open(dir: &Path, provenance: Provenance) -> Result<Kernel> {
        let release = provenance.origin.release().to_string();
        let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
        let modules = dir.join(format!("lib/modules/{release}"));
        if !vmlinuz.exists() || !modules.is_dir() {
            bail!(
                "{}: no {} or {} in the extracted package (remove {} to fetch it again)",
                provenance.origin,
                vmlinuz.display(),
                modules.display(),
                dir.display()
            );
        }
        Ok(Kernel {
            release,
            provenance,
            vmlinuz,
            modules,
        })
    }
}

/// The cached kernel extracted from exactly `origin`, if any.
fn cached(cache: &Path, origin: &Origin, pin: Option<Pin>) -> Option<Kernel> {
    let dir = cache.join(origin.release());
    let stamp = fs::read_to_string(dir.join(".complete")).ok()?;
    if Origin::parse_stamp(&stamp).as_ref() != Some(origin) {
        return None;
    }
    Kernel::open(
        &dir,
        Provenance {
            origin: origin.clone(),
            pin,
        },
    )
    .ok()
}

/// Cached kernels of a series (complete, with a stamp), oldest first.
fn cached_kernels(cache: &Path, series: &str, pin: Option<Pin>) -> Vec<Kernel> {
    let prefix = format!("{series}.");
    let mut kernels: Vec<Kernel> = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|entry| {
            let stamp = fs::read_to_string(entry.path().join(".complete")).ok()?;
            let origin = Origin::parse_stamp(&stamp)?;
            Kernel::open(&entry.path(), Provenance { origin, pin }).ok()
        })
        .collect();
    kernels.sort_by(|a, b| {
        compare_versions(&a.provenance.origin.version, &b.provenance.origin.version)
    });
    kernels
}

/// One stanza of `apt-cache show`.
#[derive(Debug, PartialEq, Eq)]
struct ShowEntry {
    package: String,
    version: String,
    sha256: String,
}

/// The stanzas of `apt-cache show` output that have a package, a version
/// and a SHA256 (continuation lines, such as a long description's, skipped).
fn parse_show(text: &str) -> Vec<ShowEntry> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let field = |key: &str| {
                stanza
                    .lines()
                    .filter(|line| !line.starts_with([' ', '\t']))
                    .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
                    .map(|value| value.trim().to_string())
                    .filter(|value| !value.is_empty())
            };
            Some(ShowEntry {
                package: field("Package")?,
                version: field("Version")?,
                sha256: field("SHA256")?,
            })
        })
        .collect()
}

/// `package` at `version` in the apt archive (after one `apt-get update`
/// when the lists lack it), or `None` when the archive does not have it.
fn archive_entry(package: &str, version: &str) -> Result<Option<ShowEntry>> {
    let lookup = || {
        let shown = output(command("apt-cache").args(["show", &format!("{package}={version}")]))
            .unwrap_or_default();
        parse_show(&shown)
            .into_iter()
            .find(|entry| entry.package == package && entry.version == version)
    };
    if let Some(entry) = lookup() {
        return Ok(Some(entry));
    }
    // Fresh machine without apt lists, or stale ones: update once.
    exec::run(command("apt-get").args(["update", "-qq"])).with_context(|| {
        format!("looking for {package} {version} in the apt archive (apt-get update)")
    })?;
    Ok(lookup())
}

/// The newest installable plain image of the series (the highest candidate
/// version among the package names), with its SHA256.
fn newest_installable(series: &str) -> Result<Origin> {
    let mut names = plain_images(series);
    if names.is_empty() {
        // Fresh machine without apt lists: update once.
        exec::run(command("apt-get").args(["update", "-qq"]))?;
        names = plain_images(series);
    }
    let newest = names
        .into_iter()
        .filter_map(|name| {
            let policy = output(command("apt-cache").args(["policy", &name]))?;
            let candidate = parse_candidate(&policy)?;
            Some((name, candidate))
        })
        .max_by(|(_, a), (_, b)| compare_versions(a, b));
    let Some((package, version)) = newest else {
        bail!(
            "no installable Debian package linux-image-{series}.*-amd64 (not cloud, not rt) in \
             the apt archive: is Debian 12 (bookworm, bookworm-security) in the apt sources, \
             and was `apt-get update` run?"
        );
    };
    let entry = archive_entry(&package, &version)?
        .with_context(|| format!("apt-cache show {package}={version} gave no SHA256"))?;
    Ok(Origin {
        package,
        version,
        sha256: entry.sha256,
    })
}

/// The `Candidate:` of `apt-cache policy` output, `None` for `(none)`.
fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .find(|candidate| !candidate.is_empty() && *candidate != "(none)")
        .map(String::from)
}

/// Package names `linux-image-<series>.<…>-amd64`, without cloud/rt flavours.
fn plain_images(series: &str) -> Vec<String> {
    let prefix = format!("linux-image-{series}.");
    output(command("apt-cache").args(["pkgnames", &prefix]))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|name| is_plain_image(name, series))
        .map(String::from)
        .collect()
}

fn is_plain_image(name: &str, series: &str) -> bool {
    name.starts_with(&format!("linux-image-{series}."))
        && name.ends_with("-amd64")
        && !name.contains("-cloud-")
        && !name.contains("-rt-")
}

/// Debian version order (dpkg's): epoch, then upstream version, then
/// revision, each compared as alternating non-digit runs (letters before
/// other characters, `~` before everything, even the end) and numbers.
pub(super) fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(version: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match version.split_once(':') {
            Some((epoch, rest)) if epoch.bytes().all(|b| b.is_ascii_digit()) => {
                (epoch.parse().unwrap_or(0), rest)
            }
            _ => (0, version),
        };
        let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, upstream, revision)
    }
    let (a_epoch, a_upstream, a_revision) = split(a);
    let (b_epoch, b_upstream, b_revision) = split(b);
    a_epoch
        .cmp(&b_epoch)
        .then_with(|| compare_part(a_upstream, b_upstream))
        .then_with(|| compare_part(a_revision, b_revision))
}

/// dpkg's `verrevcmp`.
fn compare_part(a: &str, b: &str) -> Ordering {
    fn order(byte: Option<u8>) -> i32 {
        match byte {
            None => 0,
            Some(b'~') => -1,
            Some(byte) if byte.is_ascii_digit() => 0,
            Some(byte) if byte.is_ascii_alphabetic() => i32::from(byte),
            Some(byte) => i32::from(byte) + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], at: usize| s.get(at).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (x, y) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if x != y {
                return x.cmp(&y);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// Downloads `origin`, checks its SHA256, extracts it into the cache and
/// drops the series' other cached kernels (but the pinned one).
fn download(cache: &Path, series: &str, origin: &Origin, pin: Option<Pin>) -> Result<Kernel> {
    let dir = cache.join(origin.release());
    extract(cache, origin, &dir)?;
    for old in cached_kernels(cache, series, pin) {
        let keep = old.provenance.origin == *origin || old.provenance.pinned();
        if !keep {
            eprintln!("xtask: removing the cached {}", old.provenance.origin);
            let _ = fs::remove_dir_all(cache.join(&old.release));
        }
    }
    Kernel::open(
        &dir,
        Provenance {
            origin: origin.clone(),
            pin,
        },
    )
}

fn extract(cache: &Path, origin: &Origin, dir: &Path) -> Result<()> {
    fs::create_dir_all(cache).with_context(|| {
        format!(
            "creating the kernel cache {} (run as root, or set TRACER_VM_CACHE)",
            cache.display()
        )
    })?;
    let download = cache.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    let spec = format!("{}={}", origin.package, origin.version);
    eprintln!("xtask: downloading {origin} (not installing it)");
    let fetched = exec::run(
        command("apt-get")
            .args(["download", "-qq", &spec])
            .current_dir(&download),
    )
    .or_else(|_| {
        // Stale lists point at files the mirror dropped: update and retry.
        exec::run(command("apt-get").args(["update", "-qq"]))?;
        exec::run(
            command("apt-get")
                .args(["download", "-qq", &spec])
                .current_dir(&download),
        )
    });
    let result = fetched
        .with_context(|| format!("apt-get download {spec}"))
        .and_then(|()| {
            let deb = fs::read_dir(&download)?
                .flatten()
                .map(|entry| entry.path())
                .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
                .with_context(|| format!("apt-get download {spec} left no .deb"))?;
            let sha256 = sha256_of(&deb)?;
            if sha256 != origin.sha256 {
                bail!(
                    "SHA256 mismatch for {origin}: the downloaded {} has {sha256}, expected {} \
                     (not extracting it)",
                    deb.display(),
                    origin.sha256
                );
            }
            let staging = cache.join(format!(".extract-{}", std::process::id()));
            let _ = fs::remove_dir_all(&staging);
            exec::run(command("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
            fs::write(staging.join(".complete"), origin.stamp())?;
            let _ = fs::remove_dir_all(dir);
            fs::rename(&staging, dir)
                .with_context(|| format!("moving the extracted kernel to {}", dir.display()))
        });
    let _ = fs::remove_dir_all(&download);
    result
}

/// `sha256sum` of a file, lower-case hex.
fn sha256_of(path: &Path) -> Result<String> {
    let out = output(command("sha256sum").arg(path))
        .with_context(|| format!("sha256sum {}", path.display()))?;
    let digest = out.split_whitespace().next().unwrap_or_default();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("sha256sum {}: unexpected output {out:?}", path.display());
    }
    Ok(digest.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache show linux-image-6.1.0-57-amd64=6.1.192-3`, shortened.
    const SHOW: &str = "\
Package: linux-image-6.1.0-57-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Installed-Size: 400842
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux 6.1 for 64-bit PCs (signed)
 The Linux kernel 6.1 and modules for use on PCs with AMD64, Intel 64 or
 VIA Nano processors.
 Version: 9.9.9 (a continuation line, not the field)
Description-md5: eaf7b81be84ec12eb25fe90a4bac0f60
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb
Size: 70591024
SHA256: 14d219d01e1283261817d961dbb3895cb5b4288d0de10e0ba0632a0d993e15bf

";

    #[test]
    fn parses_apt_cache_show() {
        assert_eq!(
            parse_show(SHOW),
            vec![ShowEntry {
                package: "linux-image-6.1.0-57-amd64".into(),
                version: "6.1.192-3".into(),
                sha256: "14d219d01e1283261817d961dbb3895cb5b4288d0de10e0ba0632a0d993e15bf".into(),
            }]
        );
    }

    #[test]
    fn parses_every_stanza_and_skips_incomplete_ones() {
        let two = format!(
            "{SHOW}{}",
            SHOW.replace("6.1.192-3", "6.1.170-1")
                .replace("14d219d0", "00000000")
        );
        let entries = parse_show(&two);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].version, "6.1.170-1");
        assert!(entries[1].sha256.starts_with("00000000"));
        // No SHA256 (a virtual package, or an error message): nothing.
        assert!(parse_show("Package: linux-image-x\nVersion: 1\n").is_empty());
        assert!(parse_show("").is_empty());
    }

    #[test]
    fn parses_apt_cache_policy_candidate() {
        let policy = "linux-image-6.12.117+deb12-amd64:\n  Installed: (none)\n  \
                      Candidate: 6.12.117-1~deb12u1\n  Version table:\n     \
                      6.12.117-1~deb12u1 500\n";
        assert_eq!(
            parse_candidate(policy).as_deref(),
            Some("6.12.117-1~deb12u1")
        );
        let gone = "linux-image-6.12.118+deb12-amd64:\n  Installed: (none)\n  \
                    Candidate: (none)\n  Version table:\n";
        assert_eq!(parse_candidate(gone), None);
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn orders_debian_versions() {
        use Ordering::*;
        let cases = [
            ("6.1.192-3", "6.1.170-1", Greater),
            ("6.1.192-3", "6.1.192-3", Equal),
            ("6.1.192-10", "6.1.192-9", Greater),
            ("6.12.117-1~deb12u1", "6.12.115-1~deb12u1", Greater),
            // `~` sorts before the end: a backport precedes the release.
            ("6.12.117-1~deb12u1", "6.12.117-1", Less),
            ("6.12.117-1~deb12u1", "6.12.117-1~deb12u2", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0a", "1.0", Greater),
            ("1.0+b1", "1.0a", Greater),
            ("1:0.1", "9.9", Greater),
            ("1.01", "1.1", Equal),
            ("6.1.99", "6.1.100", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn stamps_round_trip_and_old_ones_do_not_match() {
        let origin = PINS[1].origin();
        assert_eq!(Origin::parse_stamp(&origin.stamp()), Some(origin));
        // The stamp of an extraction from before the pins: the package only.
        assert_eq!(Origin::parse_stamp("linux-image-6.1.0-57-amd64\n"), None);
    }

    #[test]
    fn pins_are_well_formed() {
        for pin in PINS {
            assert!(is_plain_image(pin.package, pin.series), "{pin:?}");
            assert_eq!(pin.sha256.len(), 64, "{pin:?}");
            assert!(
                pin.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{pin:?}"
            );
            assert!(pin_for(pin.series) == Some(pin));
        }
        // `6.1.` does not take the 6.12 images.
        assert!(!is_plain_image("linux-image-6.12.117+deb12-amd64", "6.1"));
        assert!(!is_plain_image(
            "linux-image-6.1.0-57-amd64-unsigned",
            "6.1"
        ));
        assert!(!is_plain_image("linux-image-6.1.0-57-cloud-amd64", "6.1"));
        assert!(!is_plain_image("linux-image-6.1.0-57-rt-amd64", "6.1"));
    }

    #[test]
    fn provenance_says_whether_pinned() {
        let pin = PINS[0];
        let pinned = Provenance {
            origin: pin.origin(),
            pin: Some(pin),
        };
        assert!(pinned.pinned());
        assert!(pinned.warning().is_none());
        let newer = Provenance {
            origin: Origin {
                package: "linux-image-6.1.0-58-amd64".into(),
                version: "6.1.199-1".into(),
                sha256: "ab".repeat(32),
            },
            pin: Some(pin),
        };
        assert!(!newer.pinned());
        let warning = newer.warning().unwrap_or_default();
        assert!(warning.contains("NOT THE PINNED KERNEL"), "{warning}");
        assert!(warning.contains("linux-image-6.1.0-58-amd64 6.1.199-1"));
        assert!(warning.contains(&"ab".repeat(32)));
        assert!(warning.contains(pin.version));
        assert!(newer.short().contains("NOT PINNED"));
    }
}
