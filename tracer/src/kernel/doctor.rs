//! `tracer doctor`: what this kernel and this process offer for tracing,
//! and whether the tracer can run here. Exits non-zero when it cannot.
use std::{path::Path, process::ExitCode};

use aya::maps::MapType;

use super::{btf::Btf, privileges, probes::ProbeSet, tracefs};

pub fn run() -> ExitCode {
    let mut ready = true;
    let mut check = |what: &str, result: Result<String, String>, required: bool| match &result {
        Ok(detail) => println!("  ok    {what}: {detail}"),
        Err(detail) if required => {
            ready = false;
            println!("  FAIL  {what}: {detail}");
        }
        Err(detail) => println!("  no    {what}: {detail}"),
    };
    println!("tracer doctor");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("  kernel {}", release.trim());
    let capabilities = privileges::effective_capabilities().unwrap_or(0);
    check(
        "privileges (root, or CAP_BPF + CAP_PERFMON)",
        if privileges::can_trace(capabilities) {
            Ok(format!("effective {capabilities:#x}"))
        } else {
            Err(format!("effective {capabilities:#x}; run as root"))
        },
        true,
    );
    check(
        "kernel BTF (/sys/kernel/btf/vmlinux)",
        Btf::from_sys_fs()
            .and_then(|btf| btf.member_offset("pt_regs", "si"))
            .map(|offset| format!("pt_regs.si at byte {offset}"))
            .map_err(|err| err.to_string()),
        true,
    );
    check(
        "BPF ring buffer (5.8+)",
        match aya::sys::is_map_supported(MapType::RingBuf) {
            Ok(true) => Ok("supported".into()),
            Ok(false) => Err("not supported by this kernel".into()),
            Err(err) => Err(format!("probe failed: {err}")),
        },
        true,
    );
    match tracefs::root() {
        Ok(root) => {
            check("tracefs", Ok(root.display().to_string()), true);
            for set in [ProbeSet::SocketTracepoints] {
                for hook in set.hooks() {
                    let path = root.join("events").join(hook.group).join(hook.name);
                    check(
                        &format!("tracepoint {}:{}", hook.group, hook.name),
                        if path.is_dir() {
                            Ok("present".into())
                        } else {
                            Err("absent".into())
                        },
                        true,
                    );
                }
            }
            let kprobes = root.join("kprobe_events");
            check(
                "kprobes",
                if kprobes.exists() {
                    Ok("available".into())
                } else {
                    Err("CONFIG_KPROBES not set".into())
                },
                false,
            );
        }
        Err(err) => check("tracefs", Err(err.to_string()), true),
    }
    check(
        "fentry/fexit (BPF trampolines)",
        if Path::new("/sys/kernel/btf/vmlinux").exists() {
            Ok("may work; not used by this version".into())
        } else {
            Err("needs BTF".into())
        },
        false,
    );
    if ready {
        println!("probe set: socket-tracepoints; tracing can run here");
        ExitCode::SUCCESS
    } else {
        println!("tracing cannot run here: fix the FAIL lines above");
        ExitCode::from(6)
    }
}
