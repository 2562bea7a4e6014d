//! Loads the programs with this kernel's configuration, attaches the chosen
//! hook set and hands out the maps the daemon uses.
use std::collections::BTreeSet;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
};
use tracer_common::{KERNEL_COUNTERS, KernelConfig, header_capture::CaptureNames};

use super::{
    abi::{sock_offsets, syscall_abi, task_offsets, tcp_args},
    btf::{Btf, BtfError},
    openssl::Library,
    probes::{ProbeChoice, ProbeSet, RecvmsgForm},
    uprobes::{TlsProbes, UprobeError},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("the kernel refused the BPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("no probe set works on this kernel: {}", .0.join("; "))]
    NoProbeSet(Vec<String>),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// The loaded programs and the maps the daemon writes or reads.
pub struct KernelSide {
    // Dropping it detaches every program.
    ebpf: Ebpf,
    /// The OpenSSL uprobes, or why the kernel refused them.
    tls: Result<TlsProbes, String>,
    traced_tasks: HashMap<MapData, u32, u8>,
    listen_ports: HashMap<MapData, u16, u8>,
    watched_ports: HashMap<MapData, u16, u8>,
    counters: PerCpuArray<MapData, u64>,
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// What loading chose, and why the sets tried before it were refused.
pub struct Loaded {
    pub kernel: KernelSide,
    pub events: RingBuf<MapData>,
    pub probe_set: ProbeSet,
    pub refused: Vec<String>,
}

/// Why a process's HTTPS is not traced.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the kernel refused the OpenSSL uprobe programs: {0}")]
    Programs(String),
    #[error(transparent)]
    Uprobe(#[from] UprobeError),
}

/// Loads the programs and attaches the first candidate set of `choice` that
/// this kernel accepts, with the exec hook when `watch_execs`, capturing
/// the request headers `capture` names.
pub fn load(
    choice: ProbeChoice,
    watch_execs: bool,
    capture: &CaptureNames,
) -> Result<Loaded, LoadError> {
    let btf = Btf::from_sys_fs()?;
    let mut config = KernelConfig {
        task: task_offsets(&btf)?,
        sock: sock_offsets(&btf)?,
        syscalls: syscall_abi(&btf)?,
        tcp: Default::default(),
    };
    // Only the TCP function hooks need these; their absence rules them out.
    let tcp = tcp_args(&btf);
    let recvmsg_form = recvmsg_form(&btf);
    let typed_btf = aya::Btf::from_sys_fs();
    let mut refused = Vec::new();
    for probe_set in ProbeSet::candidates(choice) {
        let recvmsg = match (probe_set, &recvmsg_form) {
            (ProbeSet::Fentry, Err(reason)) => {
                refused.push(format!("fentry: {reason}"));
                continue;
            }
            (_, Ok(form)) => *form,
            // Only the fentry set reads the form.
            (_, Err(_)) => RecvmsgForm::WithAddrLen,
        };
        let needs_tcp_functions = probe_set != ProbeSet::Tracepoints;
        match (&tcp, needs_tcp_functions) {
            (Ok(args), true) => config.tcp = *args,
            (Err(err), true) => {
                refused.push(format!("{}: {err}", probe_set.name()));
                continue;
            }
            (_, false) => {}
        }
        let typed_btf = match &typed_btf {
            Ok(btf) => btf,
            Err(err) => {
                refused.push(format!("{}: kernel BTF: {err}", probe_set.name()));
                continue;
            }
        };
        // A fresh object per attempt: dropping a refused one detaches and
        // frees whatever it had loaded.
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .override_global("CAPTURE_NAMES", capture, true)
            .load(OBJECT)?;
        if let Err(err) = probe_set.attach(&mut ebpf, typed_btf, recvmsg, watch_execs) {
            log::debug!("probe set {} in full: {err}", probe_set.name());
            refused.push(format!("{}: {}", probe_set.name(), brief(&err)));
            continue;
        }
        let (kernel, events) = KernelSide::new(ebpf)?;
        return Ok(Loaded {
            kernel,
            events,
            probe_set,
            refused,
        });
    }
    Err(LoadError::NoProbeSet(refused))
}

impl KernelSide {
    fn new(mut ebpf: Ebpf) -> Result<(Self, RingBuf<MapData>), LoadError> {
        let events = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(map_error("EVENTS"))?;
        let traced_tasks = HashMap::try_from(take(&mut ebpf, "TRACED_TASKS")?)
            .map_err(map_error("TRACED_TASKS"))?;
        let listen_ports = HashMap::try_from(take(&mut ebpf, "LISTEN_PORTS")?)
            .map_err(map_error("LISTEN_PORTS"))?;
        let watched_ports = HashMap::try_from(take(&mut ebpf, "WATCHED_PORTS")?)
            .map_err(map_error("WATCHED_PORTS"))?;
        let counters =
            PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(map_error("COUNTERS"))?;
        let tls = TlsProbes::load(&mut ebpf).map_err(|err| {
            log::debug!("OpenSSL uprobe programs in full: {err}");
            brief(&err)
        });
        let kernel = KernelSide {
            ebpf,
            tls,
            traced_tasks,
            listen_ports,
            watched_ports,
            counters,
        };
        Ok((kernel, events))
    }
}

/// The form of `tcp_recvmsg` on this kernel, if the fexit programs read it.
fn recvmsg_form(btf: &Btf) -> Result<RecvmsgForm, String> {
    let params = btf.params("tcp_recvmsg").map_err(|err| err.to_string())?;
    RecvmsgForm::from_params(params).ok_or_else(|| {
        format!(
            "tcp_recvmsg{params:?} is a form the fexit programs do not read \
             (before 5.19); kprobes handle it"
        )
    })
}

/// An attach error in a line or two: what failed, and the verifier's last
/// word when there is one (its whole log can run to thousands of lines).
fn brief(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next().unwrap_or_default().to_owned();
    let verdict = lines
        .take_while(|line| !line.starts_with("verification time"))
        .last();
    match verdict {
        Some(verdict) => format!("{first} … {verdict}"),
        None => first,
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })
}

fn map_error(name: &'static str) -> impl Fn(MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

impl KernelSide {
    pub fn trace_task(&mut self, pid: u32) -> Result<(), LoadError> {
        self.traced_tasks
            .insert(pid, 1, 0)
            .map_err(map_error("TRACED_TASKS"))
    }

    /// Attaches the OpenSSL uprobes for process `pid` (not a thread).
    pub fn trace_tls(&mut self, pid: u32) -> Result<Library, TlsError> {
        match &mut self.tls {
            Ok(tls) => Ok(tls.attach(&mut self.ebpf, pid)?),
            Err(reason) => Err(TlsError::Programs(reason.clone())),
        }
    }

    /// Whether the kernel took the OpenSSL uprobe programs, or why not.
    pub fn tls_programs(&self) -> Result<(), String> {
        self.tls.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Whether process `pid` has the OpenSSL uprobes.
    pub fn traces_tls(&self, pid: u32) -> bool {
        self.tls.as_ref().is_ok_and(|tls| tls.is_attached(pid))
    }

    /// Detaches process `pid`'s OpenSSL uprobes (it exited).
    pub fn untrace_tls(&mut self, pid: u32) {
        if let Ok(tls) = &mut self.tls {
            tls.detach(&mut self.ebpf, pid);
        }
    }

    /// Makes the kernel's set of listening ports equal to `ports`.
    pub fn set_listen_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), LoadError> {
        let present: BTreeSet<u16> = self.listen_ports.keys().filter_map(Result::ok).collect();
        for stale in present.difference(ports) {
            self.listen_ports
                .remove(stale)
                .map_err(map_error("LISTEN_PORTS"))?;
        }
        for port in ports.difference(&present) {
            self.listen_ports
                .insert(port, 1, 0)
                .map_err(map_error("LISTEN_PORTS"))?;
        }
        Ok(())
    }

    /// Ports whose listeners the kernel starts tracing itself (`--port`).
    pub fn watch_ports(&mut self, ports: impl IntoIterator<Item = u16>) -> Result<(), LoadError> {
        for port in ports {
            self.watched_ports
                .insert(port, 1, 0)
                .map_err(map_error("WATCHED_PORTS"))?;
        }
        Ok(())
    }

    /// The programs' counters, summed over CPUs, by `KernelCounter` index.
    pub fn counters(&self) -> [u64; KERNEL_COUNTERS as usize] {
        let mut totals = [0; KERNEL_COUNTERS as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.counters.get(&(index as u32), 0) {
                *total = per_cpu.iter().sum();
            }
        }
        totals
    }
}
