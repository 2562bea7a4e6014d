//! The TCP function hooks of the fentry and kprobe sets: `tcp_sendmsg` and
//! `tcp_recvmsg`, which run only for TCP (the socket tracepoints fire for
//! every socket family). Both sets hand the bytes moved to the common data
//! path when the function returns, as the tracepoints do.
//!
//! - fexit programs get the arguments and the return value together, typed
//!   from BTF, through a BPF trampoline (read by position: the helper
//!   `bpf_get_func_ret` is missing from some kernels that have trampolines).
//! - kprobes see only the arguments at entry and kretprobes only the return
//!   value, so the entry keeps what the return needs per task.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::map,
    maps::LruHashMap,
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::{DIRECTION_RECV, DIRECTION_SEND};

use crate::{
    config::config,
    maps::{current_task, is_traced},
    probes::data::on_socket_io,
};

/// A call in progress, between its kprobe and its kretprobe.
#[derive(Clone, Copy)]
pub struct PendingCall {
    sock: u64,
    flags: i32,
}

/// Calls in progress by task; LRU so that a return never seen cannot leak.
#[map]
static PENDING_CALLS: LruHashMap<u64, PendingCall> = LruHashMap::with_max_entries(4096, 0);

/// fexit `tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
pub fn on_sendmsg_exit(ctx: &FExitContext) {
    let sock: u64 = ctx.arg(0);
    let sent: i64 = ctx.arg(3);
    on_socket_io(sock, sent as i32, 0, DIRECTION_SEND);
}

/// fexit `tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len,
/// int flags[, int *addr_len])`: the return value follows the `ARGS`
/// arguments (5 until 6.x dropped `addr_len`, 4 after; the daemon loads the
/// variant BTF calls for, and refuses the set on pre-5.19 kernels, where a
/// `nonblock` argument came before `flags`).
#[inline(always)]
pub fn on_recvmsg_exit<const ARGS: usize>(ctx: &FExitContext) {
    let sock: u64 = ctx.arg(0);
    let flags: i64 = ctx.arg(3);
    let received: i64 = ctx.arg(ARGS);
    on_socket_io(sock, received as i32, flags as i32, DIRECTION_RECV);
}

/// `tcp_recvmsg`'s flags, from its arguments 3 and 4 (0-based) as read:
/// before 5.19 a `nonblock` argument came first.
/// Both are read at fixed offsets and the value chosen after: the verifier
/// refuses a load from a computed offset into the context.
#[inline(always)]
fn recvmsg_flags(third: i64, fourth: i64) -> i32 {
    if config().tcp.recvmsg_flags == 4 {
        fourth as i32
    } else {
        third as i32
    }
}

/// kprobe on either function: remember the socket (and recv flags).
pub fn on_call_entry(ctx: &ProbeContext, direction: u8) {
    let (tgid, _) = current_task();
    if !is_traced(tgid) {
        return;
    }
    let Some(sock) = ctx.arg::<u64>(0) else {
        return;
    };
    let flags = if direction == DIRECTION_RECV {
        let (third, fourth) = (ctx.arg::<i64>(3), ctx.arg::<i64>(4));
        recvmsg_flags(third.unwrap_or(0), fourth.unwrap_or(0))
    } else {
        0
    };
    let call = PendingCall { sock, flags };
    let _ = PENDING_CALLS.insert(bpf_get_current_pid_tgid(), call, 0);
}

/// kretprobe on either function: the bytes moved, for the call remembered.
pub fn on_call_return(ctx: &RetProbeContext, direction: u8) {
    let task = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { PENDING_CALLS.get(task) }).copied() else {
        return;
    };
    let _ = PENDING_CALLS.remove(task);
    let moved: i64 = ctx.ret();
    on_socket_io(call.sock, moved as i32, call.flags, direction);
}
