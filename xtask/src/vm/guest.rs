//! The guest itself: booting qemu with the shares, waiting for it (bounded),
//! reading back its exit code and the test binaries' results, and the summary.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    Accel, Options,
    initramfs::initramfs,
    kernel::{Kernel, Provenance},
    plan::Payload,
    quote,
};
use crate::exec::command;

enum Outcome {
    Exited(i32),
    InitFailed,
    TimedOut,
    /// qemu stopped without the guest reporting an exit code (panic, crash).
    NoExit(String),
}

pub(super) struct Run {
    pub(super) release: String,
    /// Which package ran, and whether it is the pinned one.
    provenance: Provenance,
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
    pub(super) fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Exited(0))
    }

    fn counts(&self) -> (u32, u32) {
        self.binaries.iter().fold((0, 0), |(passed, failed), bin| {
            (passed + bin.passed, failed + bin.failed)
        })
    }

    pub(super) fn print_details(&self, payload: &Payload) {
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

pub(super) fn boot(
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
        .arg("-smp")
        .arg(options.smp.to_string())
        .args(["-m", &options.memory])
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
        provenance: kernel.provenance.clone(),
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

pub(super) fn print_table(runs: &[Run], payload: &Payload, machine: &str) {
    println!("\n=== vm-test summary ({machine}) ===");
    println!(
        "{:<24} {:<10} {:>7} {:>7} {:>9}  {:<11} package version",
        "kernel", "result", "passed", "failed", "duration", "pinned?"
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
        let pinned = if run.provenance.pinned() {
            "pinned"
        } else {
            "NOT PINNED"
        };
        println!(
            "{:<24} {result:<10} {passed:>7} {failed:>7} {:>8.0}s  {pinned:<11} {}",
            run.release,
            run.duration.as_secs_f64(),
            run.provenance.origin
        );
    }
    for run in runs {
        if let Some(warning) = run.provenance.warning() {
            println!("Linux {}: {warning}", run.release);
        }
    }
}
