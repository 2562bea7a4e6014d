//! Follows the process tree of the traced pids: children forked by a traced
//! task become traced, exiting tasks are forgotten.
use aya_ebpf::programs::TracePointContext;
use tracer_common::{EventKind, KernelCounter, TaskEvent};

use crate::{
    config::config,
    maps::{TRACED_TASKS, count, current_task, emit, header, is_traced},
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
    emit_task(EventKind::TaskFork, tgid, child);
}

pub fn on_exit() {
    let (tgid, tid) = current_task();
    if !is_traced(tid) {
        return;
    }
    let _ = TRACED_TASKS.remove(&tid);
    emit_task(EventKind::TaskExit, tgid, tid);
}

fn emit_task(kind: EventKind, tgid: u32, task: u32) {
    emit(TaskEvent {
        header: header(kind, tgid),
        task,
        _pad: 0,
    });
}
