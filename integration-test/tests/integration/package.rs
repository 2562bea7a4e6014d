//! The Debian package `cargo xtask dist` makes with cargo-deb, as a host
//! would get it: unpacked into a scratch root exactly as dpkg lays it out,
//! every file is where the unit says, the packaged binary runs (`tracer
//! doctor`, its kernel programs inside), the package neither enables nor
//! starts the unit, and `systemd-analyze verify` accepts the unit as
//! installed.
//!
//! `dpkg -x` rather than `dpkg --root`: `--root` runs the maintainer scripts
//! chrooted into the scratch root (no shell there) or, forced chrootless,
//! against this host's systemd state; `-x` lays out the same files, and
//! the scripts are read instead (`dpkg -e`).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::workspace_root;

/// The package under test: `TRACER_DEB` (`cargo xtask test` sets it to
/// the one it made around `TRACER_BIN`), else the one in `target/debian`.
fn deb() -> PathBuf {
    if let Some(deb) = std::env::var_os("TRACER_DEB") {
        return PathBuf::from(deb);
    }
    let dir = workspace_root().join("target/debian");
    let debs: Vec<PathBuf> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("tracer_") && name.ends_with(".deb")
        })
        .collect();
    match debs.as_slice() {
        [deb] => deb.clone(),
        _ => panic!(
            "want exactly one tracer_*.deb in {}, found {debs:?}: run `cargo xtask dist` \
             or set TRACER_DEB",
            dir.display()
        ),
    }
}

/// The package unpacked: its files under `root`, its control files under
/// `control`; removed on drop.
struct Unpacked {
    dir: PathBuf,
    root: PathBuf,
    control: PathBuf,
}

impl Unpacked {
    fn new(test: &str) -> Unpacked {
        let dir =
            std::env::temp_dir().join(format!("tracer-package-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let unpacked = Unpacked {
            root: dir.join("root"),
            control: dir.join("control"),
            dir,
        };
        fs::create_dir_all(&unpacked.dir).expect("scratch dir");
        let deb = deb();
        run_ok(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked.root));
        run_ok(
            Command::new("dpkg")
                .arg("-e")
                .arg(&deb)
                .arg(&unpacked.control),
        );
        unpacked
    }

    /// `path` (absolute, as on the host) inside the scratch root.
    fn installed(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        let file = self.installed(path);
        fs::read_to_string(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display()))
    }

    fn control_file(&self, name: &str) -> String {
        fs::read_to_string(self.control.join(name)).unwrap_or_default()
    }
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command`, panics with its output unless it exits 0; its stdout.
fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Where the installed unit goes: /usr/lib/systemd/system, which on
/// merged-/usr Debian (12 on) is also /lib/systemd/system.
const UNIT: &str = "/usr/lib/systemd/system/tracer.service";

/// The values of `key=` in a unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The unit's own paths (the binary, the environment file, the docs) are
/// the package's files, with the right modes; the unit and the
/// environment file are `deploy/`'s, unchanged; the environment file is a
/// conffile; and installing neither enables nor starts the unit.
#[test]
fn the_package_holds_what_the_unit_names_and_starts_nothing() {
    let package = Unpacked::new("layout");
    for (path, mode) in [
        ("/usr/bin/tracer", 0o755),
        (UNIT, 0o644),
        ("/etc/default/tracer", 0o600),
        ("/usr/share/doc/tracer/README.md", 0o644),
        ("/usr/share/doc/tracer/LICENSE-MIT", 0o644),
        ("/usr/share/doc/tracer/LICENSE-APACHE", 0o644),
        ("/usr/share/doc/tracer/docs/configuration.md", 0o644),
        ("/usr/share/doc/tracer/docs/results/suite.md", 0o644),
    ] {
        let file = package.installed(path);
        let meta = fs::metadata(&file).unwrap_or_else(|err| panic!("{path}: {err}"));
        assert!(meta.is_file(), "{path} is not a file");
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}'s mode");
    }

    let deploy = workspace_root().join("deploy");
    let unit = package.read(UNIT);
    assert_eq!(unit, read(&deploy.join("tracer.service")), "installed unit");
    assert_eq!(
        package.read("/etc/default/tracer"),
        read(&deploy.join("tracer.env")),
        "installed environment file"
    );

    let exec_start = unit_values(&unit, "ExecStart");
    assert_eq!(exec_start, ["/usr/bin/tracer $TRACER_ARGS"], "{unit}");
    let environment_files = unit_values(&unit, "EnvironmentFile");
    assert_eq!(environment_files, ["/etc/default/tracer"], "{unit}");
    let documentation = unit_values(&unit, "Documentation");
    assert_eq!(
        documentation,
        ["file:///usr/share/doc/tracer/README.md"],
        "{unit}"
    );
    for path in [
        exec_start[0].split_whitespace().next().unwrap_or_default(),
        environment_files[0],
        documentation[0].trim_start_matches("file://"),
    ] {
        assert!(
            package.installed(path).is_file(),
            "{path} not in the package"
        );
    }
    assert!(
        package
            .read("/etc/default/tracer")
            .lines()
            .any(|line| line == "TRACER_ARGS=--port 8000"),
        "the environment file selects --port 8000"
    );

    let control = package.control_file("control");
    for field in [
        "Package: tracer\n",
        "Section: net\n",
        "Priority: optional\n",
    ] {
        assert!(control.contains(field), "{field:?} not in\n{control}");
    }
    let depends = control
        .lines()
        .find_map(|line| line.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends in\n{control}"));
    assert!(depends.contains("libc6"), "Depends: {depends}");
    assert_eq!(
        package
            .control_file("conffiles")
            .lines()
            .collect::<Vec<_>>(),
        ["/etc/default/tracer"]
    );

    // The maintainer scripts reload systemd and, on upgrade, keep the
    // unit as the user had it; on install they enable and start nothing.
    let postinst = package.control_file("postinst");
    assert!(postinst.contains("tracer.service"), "postinst:\n{postinst}");
    assert!(
        !postinst.contains("was-enabled defaults to true"),
        "postinst enables the unit on install:\n{postinst}"
    );
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let text = package.control_file(script);
        for starts in [
            "deb-systemd-invoke start",
            "systemctl start",
            "enable --now",
        ] {
            assert!(!text.contains(starts), "{script} runs {starts:?}:\n{text}");
        }
    }
}

/// The packaged binary is the whole tracer: its kernel programs load
/// (doctor tries each probe set for real and names the one `auto` picks).
#[test]
fn the_packaged_tracer_runs_doctor() {
    let package = Unpacked::new("doctor");
    let tracer = package.installed("/usr/bin/tracer");
    let output = Command::new(&tracer)
        .arg("doctor")
        .output()
        .unwrap_or_else(|err| panic!("{}: {err}", tracer.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}: {}\n{stdout}{}",
        tracer.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let picked = stdout
        .lines()
        .find_map(|line| line.split("--probes auto picks ").nth(1))
        .unwrap_or_else(|| panic!("doctor names no probe set: {stdout}"))
        .trim();
    assert!(
        stdout.contains(&format!("ok    probe set {picked}: loads and attaches")),
        "{stdout}"
    );
}

/// `systemd-analyze verify` on the unit as installed, its binary and
/// environment file pointed at the scratch root (verify checks that
/// ExecStart's binary exists and is executable; `--root` would want a whole
/// systemd tree there, sysinit.target and all). Exit 0 and no warning but
/// one: systemd calls `User=nobody` "not safe" (files owned by nobody
/// elsewhere), and the unit keeps it, with the capability set the `cli`
/// tests measured for that user. A missing binary and a bad value must each
/// be caught: the check is real.
#[test]
fn systemd_analyze_verifies_the_installed_unit() {
    assert!(
        Path::new(SYSTEMD_ANALYZE).is_file(),
        "no {SYSTEMD_ANALYZE}: `cargo xtask setup` installs Debian's systemd package"
    );
    let package = Unpacked::new("verify");
    let unit = package.read(UNIT);
    let units = package.dir.join("units");
    fs::create_dir_all(&units).expect("units dir");
    let binary = package.installed("/usr/bin/tracer");
    let rooted = |binary: &Path| {
        unit.replace(
            "ExecStart=/usr/bin/tracer ",
            &format!("ExecStart={} ", binary.display()),
        )
        .replace(
            "EnvironmentFile=/etc/default/tracer",
            &format!(
                "EnvironmentFile={}",
                package.installed("/etc/default/tracer").display()
            ),
        )
    };
    let verify = |name: &str, text: &str| {
        let file = units.join(name);
        fs::write(&file, text).expect("write unit");
        let output = Command::new(SYSTEMD_ANALYZE)
            .arg("verify")
            .arg(&file)
            .output()
            .expect("systemd-analyze runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let warnings: Vec<String> = stderr
            .lines()
            .filter(|line| line.contains(name))
            .filter(|line| !line.ends_with("Special user nobody configured, this is not safe!"))
            .map(String::from)
            .collect();
        (output.status, warnings, stderr)
    };

    let good = rooted(&binary);
    assert_ne!(good, unit, "the unit's paths were not rewritten");
    let (status, warnings, stderr) = verify("tracer.service", &good);
    assert!(status.success(), "{status}: {stderr}");
    assert!(warnings.is_empty(), "systemd-analyze warns: {stderr}");

    let missing = rooted(&package.installed("/usr/bin/no-such-tracer"));
    let (status, _, stderr) = verify("tracer-missing.service", &missing);
    assert!(
        !status.success() && stderr.contains("no-such-tracer"),
        "verify accepted a unit whose binary is missing: {status}: {stderr}"
    );

    let bad_value = good.replace("Restart=on-failure", "Restart=sometimes");
    assert_ne!(bad_value, good, "no Restart=on-failure in the unit");
    let (_, warnings, stderr) = verify("tracer-bad.service", &bad_value);
    assert!(
        warnings.iter().any(|line| line.contains("sometimes")),
        "no warning for Restart=sometimes: {stderr}"
    );
}

const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}
