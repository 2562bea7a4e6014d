//! Follows the process tree of the traced pids: children forked by a traced
//! task become traced, exiting tasks are forgotten.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use tracer_common::{EventHeader, EventKind, KernelCounter, TaskEvent};

use crate::{
    config::config,
    maps::{EVENTS, TRACED_TASKS, count, current_task, is_traced, wakeup_flags},
};

pub fn on_fork(ctx: &TracePointContext) {
    let (tgid, _) = current_task();
    if !is_traced(tgid) {
        return;
    }
    let offset = config().tracepoints.fork_child_pid as usize;
    // SAFETY: the offset comes from the tracepoint's format file.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(offset) }) else {
        return;
    };
    let child = child as u32;
    if TRACED_TASKS.insert(&child, &1, 0).is_err() {
        count(KernelCounter::TaskTableFull);
        return;
    }
    emit(EventKind::TaskFork, tgid, child);
}

pub fn on_exit() {
    let (tgid, tid) = current_task();
    if !is_traced(tid) {
        return;
    }
    let _ = TRACED_TASKS.remove(&tid);
    emit(EventKind::TaskExit, tgid, tid);
}

fn emit(kind: EventKind, tgid: u32, task: u32) {
    let Some(mut entry) = EVENTS.reserve::<TaskEvent>(0) else {
        count(KernelCounter::RingBufferFull);
        return;
    };
    entry.write(TaskEvent {
        header: EventHeader {
            kind: kind as u32,
            tgid,
            // SAFETY: helper without preconditions.
            timestamp_ns: unsafe { bpf_ktime_get_ns() },
        },
        task,
        _pad: 0,
    });
    entry.submit(wakeup_flags());
}
