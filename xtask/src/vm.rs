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
//! Kernel packages are fetched with `apt-get download` and extracted (never
//! installed) into a cache outside the repository (`/var/cache/tracer-vm`, or
//! `$TRACER_VM_CACHE`), reused across runs and clean clones.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    exec::{self, command, output},
    setup,
};

/// What the host needs for the matrix (installed only when missing).
const APT_PACKAGES: [&str; 4] = ["qemu-system-x86", "busybox-static", "xz-utils", "zstd"];
/// Kernel series of `--kernel all`: Debian 12's own kernel and its backport.
const ALL_SERIES: [&str; 2] = ["6.1", "6.12"];
/// Modules the initramfs loads (with their dependencies) when not built in.
const GUEST_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];
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
    /// Test target names select test binaries; everything else goes to each
    /// test binary (filters, `--nocapture`, …).
    pub args: Vec<String>,
    /// Run the tests once per probe set named here (`TRACER_PROBES`);
    /// empty: once, with the tracer's own choice.
    pub probes: Vec<String>,
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
        .map(|series| Kernel::fetch(&cache, series))
        .collect::<Result<Vec<_>>>()?;

    let payload = match &options.shell {
        Some(shell) => Payload::Shell(shell.clone()),
        None => Payload::Tests(TestPlan::build(root, &options.args, &options.probes)?),
    };
    let script = payload.script(root);

    let work = root.join("target/vm-test");
    let mut runs = Vec::new();
    for kernel in &kernels {
        println!(
            "\n=== vm-test: Linux {} ({}, {accel:?}) ===",
            kernel.release, kernel.package
        );
        let run = boot(kernel, root, &work, &script, &options, accel)
            .with_context(|| format!("running the guest with Linux {}", kernel.release))?;
        run.print_details(&payload);
        runs.push(run);
    }
    print_table(&runs, &payload, accel);
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

// ---------------------------------------------------------------- kernels

/// A Debian kernel package, extracted into the cache.
struct Kernel {
    package: String,
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

impl Kernel {
    /// The newest `linux-image-<series>.*-amd64` (not cloud, not rt) of the
    /// apt archive, downloaded and extracted unless the cache has it.
    fn fetch(cache: &Path, series: &str) -> Result<Kernel> {
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

// ---------------------------------------------------------------- initramfs

/// The guest's `/init`: modules, shares, overlay root, chroot, report, power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "vm-init: $*"; }
halt() {
    sync
    poweroff -f
    sleep 2
    echo o > /proc/sysrq-trigger
}
fail() {
    say "FAILED: $*"
    echo "VM-TEST-EXIT=init-failed"
    halt
}
for m in /lib/modules/*.ko; do
    [ -e "$m" ] || continue
    insmod "$m" || fail "insmod $m"
done
mkdir -p /lower /newroot /out /rw
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $opts,cache=loose,ro hostroot /lower || fail "mounting the host root (9p)"
mount -t 9p -o $opts out /out || fail "mounting the output share (9p)"
mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
R=/newroot
if mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay $R; then
    root_mode=overlay
else
    say "overlayfs over 9p failed: read-only root, tmpfs on /tmp /run /var/tmp /root"
    mount --bind /lower $R || fail "bind-mounting the host root"
    mount -t tmpfs -o mode=0700 root $R/root
    root_mode=read-only
fi
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=1777 vartmp $R/var/tmp
mount -t tmpfs -o mode=0755 run $R/run
mount -t tracefs tracefs $R/sys/kernel/tracing || say "no tracefs"
mount -t debugfs debugfs $R/sys/kernel/debug || say "no debugfs"
mount -t bpf bpf $R/sys/fs/bpf || say "no bpffs"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || say "no cgroup2"
# The workspace at its host path, over whatever the guest mounted there
# (a clone under /tmp would otherwise be hidden by the tmpfs above).
mkdir -p $R@WORKSPACE@
mount -t 9p -o $opts workspace $R@WORKSPACE@ || fail "mounting the workspace (9p)"
mkdir -p $R@OUT@
mount --move /out $R@OUT@ || fail "moving the output share"
ip link set lo up
hostname "vm-$(uname -r)"
echo "VM-TEST-BOOTED kernel=$(uname -r) root=$root_mode"
log=$R@OUT@/output.log
: > $log
tail -n +1 -f $log &
tailer=$!
chroot $R /usr/bin/env -i PATH=@PATH@ HOME=/root USER=root LOGNAME=root \
    TERM=dumb LANG=C.UTF-8 /bin/sh @OUT@/cmd.sh < /dev/null > $log 2>&1
rc=$?
sleep 1
kill $tailer
echo $rc > $R@OUT@/exit-code
echo "VM-TEST-EXIT=$rc"
sync
umount $R@OUT@
halt
"#;

/// An uncompressed cpio (newc) archive, which the kernel unpacks as its rootfs.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), content: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            content.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            let _ = write!(header, "{field:08x}");
        }
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(content);
        self.pad();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, content: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), content);
    }

    fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | mode, (major, minor), &[]);
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

fn initramfs(kernel: &Kernel, workspace: &Path) -> Result<Vec<u8>> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|path| path.exists())
        .context("no /bin/busybox (package busybox-static)")?;
    let busybox = fs::read(busybox).context("reading busybox")?;
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.char_device("dev/null", 0o666, 1, 3);
    cpio.file("bin/busybox", 0o755, &busybox);
    let init = INIT
        .replace("@OUT@", GUEST_OUT)
        .replace("@PATH@", GUEST_PATH)
        .replace("@WORKSPACE@", &quote(&workspace.to_string_lossy()));
    cpio.file("init", 0o755, init.as_bytes());
    for (index, (name, bytes)) in guest_modules(&kernel.modules)?.iter().enumerate() {
        cpio.file(&format!("lib/modules/{index:02}-{name}.ko"), 0o644, bytes);
    }
    Ok(cpio.finish())
}

/// `GUEST_MODULES` and what they depend on (from each module's `.modinfo`),
/// decompressed, in load order. Built-in ones are not in the package: skipped.
fn guest_modules(modules: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut index = HashMap::new();
    index_modules(&modules.join("kernel"), &mut index)?;
    let mut ordered = Vec::new();
    let mut seen = HashSet::new();
    for name in GUEST_MODULES {
        add_module(name, &index, &mut seen, &mut ordered)?;
    }
    Ok(ordered)
}

fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.split_once(".ko"))
            .map(|(stem, _)| stem.replace('-', "_"))
        {
            index.insert(name, path);
        }
    }
    Ok(())
}

fn add_module(
    name: &str,
    index: &HashMap<String, PathBuf>,
    seen: &mut HashSet<String>,
    ordered: &mut Vec<(String, Vec<u8>)>,
) -> Result<()> {
    let name = name.replace('-', "_");
    if !seen.insert(name.clone()) {
        return Ok(());
    }
    let Some(path) = index.get(&name) else {
        return Ok(()); // built in
    };
    let bytes = read_module(path)?;
    for dependency in module_depends(&bytes) {
        add_module(&dependency, index, seen, ordered)?;
    }
    ordered.push((name, bytes));
    Ok(())
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let decompressor = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(decompressor) = decompressor else {
        return fs::read(path).with_context(|| format!("reading {name}"));
    };
    let out = command(decompressor)
        .args(["-dc"])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {decompressor} on {name}"))?;
    if !out.status.success() {
        bail!("{decompressor} -dc {name} failed: {}", out.status);
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section.
fn module_depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(start) = module
        .windows(key.len())
        .position(|window| window == key)
        .map(|at| at + key.len())
    else {
        return Vec::new();
    };
    let end = module[start..]
        .iter()
        .position(|&byte| byte == 0)
        .map_or(module.len(), |len| start + len);
    String::from_utf8_lossy(&module[start..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------- payload

enum Payload {
    Shell(String),
    Tests(TestPlan),
}

/// Host-built test binaries and how `cargo xtask test` runs them.
struct TestPlan {
    tracer: PathBuf,
    binaries: Vec<(String, PathBuf)>,
    args: Vec<String>,
    /// `TRACER_PROBES` values to run every binary with ("" = unset).
    probe_sets: Vec<String>,
}

impl TestPlan {
    fn build(root: &Path, args: &[String], probes: &[String]) -> Result<TestPlan> {
        let tracer = crate::build(root)?;
        let out = exec::cargo(root)
            .args(crate::INTEGRATION_TESTS)
            .arg("--no-run")
            .args(["--message-format", "json-render-diagnostics"])
            .stderr(Stdio::inherit())
            .output()
            .context("running cargo test --no-run")?;
        if !out.status.success() {
            bail!("building the integration tests failed: {}", out.status);
        }
        let mut binaries = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.contains(r#""reason":"compiler-artifact""#)
                || !line.contains(r#""kind":["test"]"#)
            {
                continue;
            }
            let Some(executable) = json_string(line, "executable") else {
                continue;
            };
            let path = PathBuf::from(executable);
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            let name = file.rsplit_once('-').map_or(&*file, |(name, _)| name);
            binaries.push((name.to_string(), path.clone()));
        }
        binaries.sort();
        if binaries.is_empty() {
            bail!("cargo test --no-run reported no integration test binaries");
        }
        // Test target names select binaries; the rest goes to each binary.
        let names: HashSet<String> = binaries.iter().map(|(name, _)| name.clone()).collect();
        let (selected, rest): (Vec<String>, Vec<String>) =
            args.iter().cloned().partition(|arg| names.contains(arg));
        if !selected.is_empty() {
            binaries.retain(|(name, _)| selected.contains(name));
        }
        let probe_sets = if probes.is_empty() {
            vec![String::new()]
        } else {
            probes.to_vec()
        };
        Ok(TestPlan {
            tracer,
            binaries,
            args: rest,
            probe_sets,
        })
    }
}

/// A JSON string field's value (no escapes in the paths cargo prints here).
fn json_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("\"{key}\":\"");
    let start = line.find(&needle)? + needle.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

impl Payload {
    /// The script the guest runs (as `/bin/sh`, in the host's root).
    fn script(&self, root: &Path) -> String {
        let mut script = String::from("# written by cargo xtask vm-test\n");
        match self {
            Payload::Shell(shell) => {
                let _ = writeln!(script, "cd {}", quote(&root.to_string_lossy()));
                script.push_str(shell);
                script.push('\n');
            }
            Payload::Tests(plan) => {
                // As `cargo xtask test`: cwd the package, TRACER_BIN, HARNESS_VENV.
                let harness = root.join("harness");
                let _ = writeln!(script, "cd {}", quote(&harness.to_string_lossy()));
                let _ = writeln!(
                    script,
                    "export TRACER_BIN={}",
                    quote(&plan.tracer.to_string_lossy())
                );
                let _ = writeln!(
                    script,
                    "export HARNESS_VENV={}",
                    quote(&root.join(".venv").to_string_lossy())
                );
                // The guest's page cache starts cold and 9p under TCG is slow:
                // read the venv and the app once, so the first test's start-up
                // deadline is not spent there.
                let _ = writeln!(
                    script,
                    "find {} {} -type f -exec cat {{}} + > /dev/null 2>&1",
                    quote(&root.join(".venv").to_string_lossy()),
                    quote(&harness.join("app").to_string_lossy())
                );
                script.push_str("export RUST_BACKTRACE=1\nfailed=0\n");
                let args: Vec<String> = plan.args.iter().map(|arg| quote(arg)).collect();
                for probes in &plan.probe_sets {
                    let _ = writeln!(script, "export TRACER_PROBES={}", quote(probes));
                    for (name, path) in &plan.binaries {
                        let name = if probes.is_empty() {
                            name.clone()
                        } else {
                            format!("{name}@{probes}")
                        };
                        let _ = writeln!(
                            script,
                            "echo 'VM-TEST-BIN-START {name}'\n{} --test-threads=1 {}\nrc=$?\n\
                             echo \"VM-TEST-BIN-END {name} $rc\"\n[ $rc -eq 0 ] || failed=1",
                            quote(&path.to_string_lossy()),
                            args.join(" ")
                        );
                    }
                }
                script.push_str("exit $failed\n");
            }
        }
        script
    }
}

// ---------------------------------------------------------------- the guest

enum Outcome {
    Exited(i32),
    InitFailed,
    TimedOut,
    /// qemu stopped without the guest reporting an exit code (panic, crash).
    NoExit(String),
}

struct Run {
    release: String,
    outcome: Outcome,
    duration: Duration,
    binaries: Vec<BinaryResult>,
    out_dir: PathBuf,
}

#[derive(Default)]
struct BinaryResult {
    name: String,
    exit: Option<i32>,
    passed: u32,
    failed: u32,
    ignored: u32,
    failures: Vec<String>,
}

impl Run {
    fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Exited(0))
    }

    fn counts(&self) -> (u32, u32) {
        self.binaries.iter().fold((0, 0), |(passed, failed), bin| {
            (passed + bin.passed, failed + bin.failed)
        })
    }

    fn print_details(&self, payload: &Payload) {
        println!("--- vm-test: Linux {}", self.release);
        if let Payload::Tests(_) = payload {
            for bin in &self.binaries {
                let status = match bin.exit {
                    Some(0) => "ok".to_string(),
                    Some(code) => format!("FAILED (exit {code})"),
                    None => "did not finish".to_string(),
                };
                println!(
                    "    {:<24} {status:<18} {} passed, {} failed, {} ignored",
                    bin.name, bin.passed, bin.failed, bin.ignored
                );
                for failure in &bin.failures {
                    println!("        failed: {failure}");
                }
            }
        }
        let outcome = match &self.outcome {
            Outcome::Exited(code) => format!("exit code {code}"),
            Outcome::InitFailed => "the guest's init failed (see the console above)".into(),
            Outcome::TimedOut => "TIMED OUT (qemu killed)".into(),
            Outcome::NoExit(why) => format!("no exit code from the guest: {why}"),
        };
        println!(
            "    {outcome}, {:.0} s; output: {}",
            self.duration.as_secs_f64(),
            self.out_dir.display()
        );
    }
}

fn boot(
    kernel: &Kernel,
    root: &Path,
    work: &Path,
    script: &str,
    options: &Options,
    accel: Accel,
) -> Result<Run> {
    let out_dir = work.join(&kernel.release);
    let _ = fs::remove_dir_all(&out_dir);
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // Where tools (bpftool, modprobe) look for this kernel's config and modules.
    let boot = kernel.vmlinuz.parent().unwrap_or(Path::new("/"));
    let preamble = format!(
        "cp {} /boot/ 2>/dev/null\nmkdir -p /lib/modules && ln -sfn {} /lib/modules/ 2>/dev/null\n",
        quote(
            &boot
                .join(format!("config-{}", kernel.release))
                .to_string_lossy()
        ),
        quote(&kernel.modules.to_string_lossy()),
    );
    fs::write(out_dir.join("cmd.sh"), preamble + script)?;
    let initrd = work.join(format!("{}.initramfs.cpio", kernel.release));
    fs::write(&initrd, initramfs(kernel, root)?)
        .with_context(|| format!("writing {}", initrd.display()))?;

    let mut qemu = command("qemu-system-x86_64");
    qemu.args(accel.qemu_args())
        .args(["-smp", "2", "-m", &options.memory])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=4"])
        .args([
            "-fsdev",
            "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device",
            "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        ])
        .arg("-fsdev")
        .arg(format!(
            "local,id=out,path={},security_model=none",
            out_dir.display()
        ))
        .args(["-device", "virtio-9p-pci,fsdev=out,mount_tag=out"])
        .arg("-fsdev")
        .arg(format!(
            "local,id=workspace,path={},security_model=none,multidevs=remap",
            root.display().to_string().replace(',', ",,")
        ))
        .args([
            "-device",
            "virtio-9p-pci,fsdev=workspace,mount_tag=workspace",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
    let console = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers = [
        spawn_reader(
            child.stdout.take(),
            console.clone(),
            out_dir.join("console.log"),
        ),
        spawn_reader(
            child.stderr.take(),
            console.clone(),
            out_dir.join("qemu.stderr"),
        ),
    ];
    let status = wait_with_timeout(&mut child, options.timeout)?;
    for reader in readers {
        let _ = reader.join();
    }
    let duration = started.elapsed();

    let console = console
        .lock()
        .map(|lines| lines.clone())
        .unwrap_or_default();
    let marker = console.iter().rev().find_map(|line| {
        line.split_once("VM-TEST-EXIT=")
            .map(|(_, code)| code.trim().to_string())
    });
    let exit_file = fs::read_to_string(out_dir.join("exit-code")).ok();
    let outcome = match (status, exit_file.or(marker)) {
        (None, _) => Outcome::TimedOut,
        (Some(_), Some(code)) if code.trim() == "init-failed" => Outcome::InitFailed,
        (Some(_), Some(code)) => match code.trim().parse() {
            Ok(code) => Outcome::Exited(code),
            Err(_) => Outcome::NoExit(format!("unreadable exit code {code:?}")),
        },
        (Some(status), None) => Outcome::NoExit(format!(
            "qemu {status}; last console lines:\n{}",
            console[console.len().saturating_sub(15)..].join("\n")
        )),
    };
    let log = fs::read_to_string(out_dir.join("output.log")).unwrap_or_default();
    Ok(Run {
        release: kernel.release.clone(),
        outcome,
        duration,
        binaries: parse_results(&log),
        out_dir,
    })
}

/// Echoes a qemu pipe to our stdout and a file, keeping the lines.
fn spawn_reader(
    pipe: Option<impl std::io::Read + Send + 'static>,
    lines: Arc<Mutex<Vec<String>>>,
    file: PathBuf,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(pipe) = pipe else { return };
        let mut file = fs::File::create(file).ok();
        let mut reader = BufReader::new(pipe);
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match reader.read_until(b'\n', &mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buffer);
            let line = line.trim_end_matches(['\n', '\r']);
            println!("  | {line}");
            if let Some(file) = file.as_mut() {
                let _ = writeln!(file, "{line}");
            }
            if let Ok(mut lines) = lines.lock() {
                lines.push(line.to_string());
            }
        }
    })
}

/// `None` when the timeout killed qemu.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Result<Option<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            return Ok(Some(status.to_string()));
        }
        if Instant::now() >= deadline {
            eprintln!(
                "xtask: the guest did not finish within {} s: killing qemu (pid {})",
                timeout.as_secs(),
                child.id()
            );
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Per test binary: its exit code and libtest's summary and failed tests.
fn parse_results(log: &str) -> Vec<BinaryResult> {
    let mut results: Vec<BinaryResult> = Vec::new();
    for line in log.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix("VM-TEST-BIN-START ") {
            results.push(BinaryResult {
                name: name.to_string(),
                ..BinaryResult::default()
            });
            continue;
        }
        let Some(current) = results.last_mut() else {
            continue;
        };
        if let Some(rest) = line.strip_prefix("VM-TEST-BIN-END ") {
            current.exit = rest
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok());
        } else if let Some(summary) = line.strip_prefix("test result: ") {
            // "ok. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; …"
            for part in summary.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(count)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(count) = count.parse::<u32>() else {
                    continue;
                };
                match what {
                    "passed" => current.passed += count,
                    "failed" => current.failed += count,
                    "ignored" => current.ignored += count,
                    _ => {}
                }
            }
        } else if let Some(test) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            current.failures.push(test.to_string());
        }
    }
    results
}

fn print_table(runs: &[Run], payload: &Payload, accel: Accel) {
    println!("\n=== vm-test summary ({accel:?}) ===");
    println!(
        "{:<24} {:<10} {:>7} {:>7} {:>9}",
        "kernel", "result", "passed", "failed", "duration"
    );
    for run in runs {
        let result = match &run.outcome {
            Outcome::Exited(0) => "ok",
            Outcome::Exited(_) => "FAILED",
            Outcome::InitFailed => "INIT-FAIL",
            Outcome::TimedOut => "TIMEOUT",
            Outcome::NoExit(_) => "CRASHED",
        };
        let (passed, failed) = match payload {
            Payload::Tests(_) => {
                let (passed, failed) = run.counts();
                (passed.to_string(), failed.to_string())
            }
            Payload::Shell(_) => ("-".into(), "-".into()),
        };
        println!(
            "{:<24} {result:<10} {passed:>7} {failed:>7} {:>8.0}s",
            run.release,
            run.duration.as_secs_f64()
        );
    }
}
