//! Loads the programs with this kernel's configuration, attaches the chosen
//! hook set and hands out the maps the daemon uses.
use std::collections::BTreeSet;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
};
use tracer_common::{KERNEL_COUNTERS, KernelConfig};

use super::{
    abi::{sock_offsets, syscall_abi},
    btf::{Btf, BtfError},
    probes::{AttachError, ProbeSet},
    tracefs::{self, TracefsError},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("the kernel refused the BPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error(transparent)]
    Attach(#[from] AttachError),
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
    _ebpf: Ebpf,
    traced_tasks: HashMap<MapData, u32, u8>,
    listen_ports: HashMap<MapData, u16, u8>,
    counters: PerCpuArray<MapData, u64>,
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Loads and attaches; returns the kernel side and the event ring buffer.
pub fn load(probe_set: ProbeSet) -> Result<(KernelSide, RingBuf<MapData>), LoadError> {
    let tracefs_root = tracefs::root()?;
    let btf = Btf::from_sys_fs()?;
    let config = KernelConfig {
        tracepoints: tracefs::tracepoint_offsets(&tracefs_root)?,
        sock: sock_offsets(&btf)?,
        syscalls: syscall_abi(&btf)?,
    };
    let mut ebpf = EbpfLoader::new()
        .override_global("CONFIG", &config, true)
        .load(OBJECT)?;
    let events = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(map_error("EVENTS"))?;
    let traced_tasks =
        HashMap::try_from(take(&mut ebpf, "TRACED_TASKS")?).map_err(map_error("TRACED_TASKS"))?;
    let listen_ports =
        HashMap::try_from(take(&mut ebpf, "LISTEN_PORTS")?).map_err(map_error("LISTEN_PORTS"))?;
    let counters =
        PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(map_error("COUNTERS"))?;
    probe_set.attach(&mut ebpf)?;
    Ok((
        KernelSide {
            _ebpf: ebpf,
            traced_tasks,
            listen_ports,
            counters,
        },
        events,
    ))
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
