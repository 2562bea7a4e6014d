//! `tracer doctor`: what this kernel and this process offer for tracing,
//! and whether the tracer can run here. Exits non-zero when it cannot.
use aya::{maps::MapType, programs::ProgramType, sys::BpfHelper};
use tracer_common::header_capture::{CaptureNames, MAX_NAME_LEN, MAX_NAMES};

use super::{
    btf::Btf,
    loader,
    openssl::Finder,
    privileges,
    probes::{ProbeChoice, ProbeSet},
    tracefs,
};
use crate::exit::Exit;

/// Checks this kernel, and the HTTPS of each of `pids`.
pub fn run(pids: &[u32]) -> Exit {
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
        supported(aya::sys::is_map_supported(MapType::RingBuf)),
        true,
    );
    check(
        "bpf_loop helper (5.17+), for the header scan",
        supported(aya::sys::is_helper_supported(
            ProgramType::RawTracePoint,
            BpfHelper::BPF_FUNC_loop,
        )),
        true,
    );
    match tracefs::root() {
        Ok(root) => {
            check(
                "tracefs (informational)",
                Ok(root.display().to_string()),
                false,
            );
            for (group, name) in [
                ("sched", "sched_process_fork"),
                ("sched", "sched_process_exit"),
                ("sock", "inet_sock_set_state"),
                ("sock", "sock_recv_length"),
                ("sock", "sock_send_length"),
            ] {
                let present = root.join("events").join(group).join(name).is_dir();
                check(
                    &format!("tracepoint {group}:{name}"),
                    if present {
                        Ok("present".into())
                    } else {
                        Err("absent".into())
                    },
                    false,
                );
            }
            check(
                "kprobes",
                if root.join("kprobe_events").exists() {
                    Ok("available".into())
                } else {
                    Err("CONFIG_KPROBES not set".into())
                },
                false,
            );
        }
        Err(err) => check("tracefs (informational)", Err(err.to_string()), false),
    }
    // The real test of a probe set: load and attach it (then detach), with
    // the most a configuration can ask of the verifier.
    let most_names: Vec<String> = (0..MAX_NAMES)
        .map(|i| format!("{i:-<MAX_NAME_LEN$}"))
        .collect();
    let most_names: Vec<&[u8]> = most_names.iter().map(|name| name.as_bytes()).collect();
    let capture = CaptureNames::new(&most_names).unwrap_or(CaptureNames::NONE);
    let mut runs = None;
    let mut uprobes = None;
    for probe_set in ProbeSet::AUTO_ORDER {
        let choice = match probe_set {
            ProbeSet::Tracepoints => ProbeChoice::Tracepoints,
            ProbeSet::Fentry => ProbeChoice::Fentry,
            ProbeSet::Kprobes => ProbeChoice::Kprobes,
        };
        let result = match loader::load(choice, true, &capture) {
            Ok(loaded) => {
                uprobes.get_or_insert(loaded.kernel.tls_programs());
                Ok("loads and attaches".to_owned())
            }
            Err(loader::LoadError::NoProbeSet(reasons)) => Err(reasons.join("; ")),
            Err(err) => Err(err.to_string()),
        };
        if result.is_ok() && runs.is_none() {
            runs = Some(probe_set);
        }
        check(&format!("probe set {}", probe_set.name()), result, false);
    }
    if let Some(uprobes) = uprobes {
        check(
            "OpenSSL uprobe programs, for HTTPS",
            uprobes.map(|()| "load".to_owned()),
            false,
        );
    }
    let mut finder = Finder::default();
    for &pid in pids {
        let found = finder.find(pid).map(|library| {
            let hooked: Vec<&str> = library.functions.iter().map(|(f, _)| f.name).collect();
            format!("{}: {}", library.mapped, hooked.join(", "))
        });
        check(
            &format!("HTTPS of pid {pid} (OpenSSL)"),
            found.map_err(|err| err.to_string()),
            false,
        );
    }
    if runs.is_none() {
        ready = false;
    }
    if let (true, Some(probe_set)) = (ready, runs) {
        println!(
            "tracing can run here; --probes auto picks {}",
            probe_set.name()
        );
        Exit::Ok
    } else {
        println!("tracing cannot run here: fix the FAIL lines above");
        Exit::KernelUnsupported
    }
}

/// A feature probe's answer as a doctor line.
fn supported(probe: Result<bool, impl std::fmt::Display>) -> Result<String, String> {
    match probe {
        Ok(true) => Ok("supported".into()),
        Ok(false) => Err("not supported by this kernel".into()),
        Err(err) => Err(format!("probe failed: {err}")),
    }
}
