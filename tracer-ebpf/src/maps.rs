//! The maps shared by the programs and the daemon.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    ConnState, KERNEL_COUNTERS, KernelCounter, MAX_CONNECTIONS, MAX_LISTEN_PORTS, MAX_TRACED_TASKS,
    MAX_WATCHED_PORTS, RING_BUFFER_BYTES,
    header_capture::{MatchState, SCAN_WORDS},
};

/// Tasks (process and thread ids) being traced: the daemon seeds it with the
/// tree of `--pid`, the fork hook adds children.
#[map]
pub static TRACED_TASKS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACED_TASKS, 0);

/// Local ports the traced tree listens on (host byte order), kept by the daemon.
#[map]
pub static LISTEN_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_LISTEN_PORTS, 0);

/// Ports of `--port` selectors (host byte order): a process that starts
/// listening on one is traced from that moment, by the kernel itself.
#[map]
pub static WATCHED_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_WATCHED_PORTS, 0);

/// Connections by `struct sock` address.
#[map]
pub static CONNECTIONS: LruHashMap<u64, ConnState> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Every event, in order, to the daemon.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_BYTES, 0);

/// What the programs could not do, by [`KernelCounter`].
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_COUNTERS, 0);

/// A read's first bytes, scanned for `--capture-header` names, and the
/// scan's state: more than the stack holds, and in a map the verifier does
/// not track what the state holds from one step to the next.
pub struct HeaderScratch {
    pub state: MatchState,
    pub words: [u64; SCAN_WORDS],
}

#[map]
pub static HEADER_SCRATCH: PerCpuArray<HeaderScratch> = PerCpuArray::with_max_entries(1, 0);

/// Submit flags: wake the daemon only when enough is waiting.
pub fn wakeup_flags() -> u64 {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= tracer_common::RING_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// The common header of a record stamped now.
pub fn header(kind: tracer_common::EventKind, tgid: u32) -> tracer_common::EventHeader {
    tracer_common::EventHeader {
        kind: kind as u32,
        tgid,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
    }
}

/// Sends one fixed-size record, counting it when the ring buffer is full.
pub fn emit<T: 'static>(record: T) {
    submit(record, wakeup_flags());
}

/// [`emit`] for rare records the daemon must act on at once (a process to
/// trace before it serves): wakes it whatever is waiting.
pub fn emit_now<T: 'static>(record: T) {
    submit(record, aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64);
}

fn submit<T: 'static>(record: T, flags: u64) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(flags);
        }
        None => count(KernelCounter::RingBufferFull),
    }
}

pub fn count(counter: KernelCounter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, programs do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}

pub fn is_traced(task: u32) -> bool {
    // SAFETY: only presence is checked, the value is not read.
    unsafe { TRACED_TASKS.get(task).is_some() }
}

/// The current process id (tgid) and task id.
pub fn current_task() -> (u32, u32) {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}
