//! The guest's initramfs: busybox, the modules that mount the 9p shares and
//! the overlay root, and the `/init` script that chroots into the host's root.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use super::{GUEST_OUT, GUEST_PATH, kernel::Kernel, quote};
use crate::exec::command;

/// Modules the initramfs loads (with their dependencies) when not built in.
const GUEST_MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];

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

pub(super) fn initramfs(kernel: &Kernel, workspace: &Path) -> Result<Vec<u8>> {
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
