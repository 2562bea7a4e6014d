//! Follows the process tree of the traced pids: children forked by a traced
//! task become traced, exiting tasks are forgotten; and, only while a
//! selector needs it, tells the daemon of every exec on the host.
use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::RawTracePointContext};
use tracer_common::{EventKind, KernelCounter, TaskEvent};

use crate::{
    config::config,
    maps::{TRACED_TASKS, count, current_task, emit, emit_now, header, is_traced},
};

/// Raw `sched_process_fork`: `(struct task_struct *parent, struct task_struct *child)`.
pub fn on_fork(ctx: &RawTracePointContext) {
    let (tgid, _) = current_task();
    if !is_traced(tgid) {
        return;
    }
    let child_task: u64 = ctx.arg(1);
    let pid_at = child_task + u64::from(config().task.pid);
    // SAFETY: the helper checks the kernel address; the offset is from BTF.
    let Ok(child) = (unsafe { bpf_probe_read_kernel(pid_at as *const i32) }) else {
        return;
    };
    let child = child as u32;
    if TRACED_TASKS.insert(child, 1, 0).is_err() {
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
    let _ = TRACED_TASKS.remove(tid);
    emit_task(EventKind::TaskExit, tgid, tid);
}

/// Raw `sched_process_exec`: the daemon matches the new image against the
/// executable and cgroup selectors before the program can serve anything
/// (and renames an instance whose root became another program). Attached
/// only when such a selector is given.
pub fn on_exec() {
    let (tgid, _) = current_task();
    emit_now(TaskEvent {
        header: header(EventKind::ProcessExec, tgid),
        task: tgid,
        _pad: 0,
    });
}

fn emit_task(kind: EventKind, tgid: u32, task: u32) {
    emit(TaskEvent {
        header: header(kind, tgid),
        task,
        _pad: 0,
    });
}
