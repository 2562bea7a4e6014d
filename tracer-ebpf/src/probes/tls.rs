//! HTTPS through OpenSSL: uprobes on `SSL_read`, `SSL_read_ex`,
//! `SSL_write` and `SSL_write_ex` of the libssl a traced process maps,
//! attached by the daemon for that process alone. The plaintext goes
//! through the common data path (`data.rs`) as if a socket had moved it.
//!
//! Which socket: while a thread is inside one of these calls, the socket
//! hooks that fire for the same thread are OpenSSL moving that
//! connection's ciphertext. The entry hook notes the call by task; the
//! socket hook claims it (it names the `sock`, and the ciphertext makes no
//! record); the return hook sends the plaintext on that socket, so a TLS
//! connection has the same identity, addresses and handshake time as a
//! plain one. A call that OpenSSL served from what it had buffered touches
//! no socket: its `SSL*` gives the socket an earlier call saw.
//!
//! Entry and return are both needed: a read's bytes and count exist only
//! at its return, and a write may fail (a non-blocking socket) and be
//! retried with the same bytes, which only its return tells.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{KernelCounter, MAX_CONNECTIONS};

use crate::{
    maps::{count, current_task, is_traced},
    probes::data::on_tls_io,
};

/// An OpenSSL call in progress, between its entry and its return.
#[derive(Clone, Copy)]
pub struct TlsCall {
    ssl: u64,
    buffer: u64,
    /// `size_t *` where the `_ex` forms return the count; 0 for the others,
    /// which return it.
    count_at: u64,
    /// The socket OpenSSL moved bytes on during the call; 0 until then.
    sock: u64,
}

/// Calls in progress by task (pid_tgid); LRU, so a return never seen
/// cannot leak.
#[map]
static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(4096, 0);

/// An `SSL*` of one process (the same address means another connection in
/// another process).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    ssl: u64,
    tgid: u32,
    _pad: u32,
}

/// The socket under each `SSL*` seen, for calls that touch none.
#[map]
static TLS_SOCKETS: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// `SSL_read(SSL *ssl, void *buf, int num)`, `SSL_write(SSL *ssl, const
/// void *buf, int num)` (`EX` false), and their `_ex` forms with a fourth
/// argument `size_t *readbytes` / `*written` (`EX` true).
#[inline(always)]
pub fn on_call_entry<const EX: bool>(ctx: &ProbeContext) {
    let (tgid, _) = current_task();
    if !is_traced(tgid) {
        return;
    }
    let (Some(ssl), Some(buffer)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let count_at = if EX {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let call = TlsCall {
        ssl,
        buffer,
        count_at,
        sock: 0,
    };
    let _ = TLS_CALLS.insert(bpf_get_current_pid_tgid(), call, 0);
}

/// Whether socket I/O of the current task is an OpenSSL call's; notes the
/// socket for the call's return.
#[inline(always)]
pub fn claim_socket(sock: u64) -> bool {
    match TLS_CALLS.get_ptr_mut(bpf_get_current_pid_tgid()) {
        Some(call) => {
            // SAFETY: map values live until removed; the entry is this
            // task's, and a task runs one program at a time.
            unsafe { (*call).sock = sock };
            true
        }
        None => false,
    }
}

/// The return of any of the four: the plaintext moved, on its socket.
pub fn on_call_return(ctx: &RetProbeContext, direction: u8) {
    let task = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(task) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(task);
    let returned: i64 = ctx.ret();
    let returned = returned as i32;
    let moved = if call.count_at != 0 {
        if returned != 1 {
            return;
        }
        // SAFETY: the helper checks the user address.
        match unsafe { bpf_probe_read_user(call.count_at as *const u64) } {
            Ok(moved) => moved,
            Err(_) => return,
        }
    } else if returned > 0 {
        returned as u64
    } else {
        return;
    };
    if moved == 0 || moved > i32::MAX as u64 {
        return;
    }
    let (tgid, tid) = current_task();
    let key = SslKey {
        ssl: call.ssl,
        tgid,
        _pad: 0,
    };
    let sock = if call.sock != 0 {
        let _ = TLS_SOCKETS.insert(key, call.sock, 0);
        call.sock
    } else {
        // SAFETY: a copy of a plain value.
        match unsafe { TLS_SOCKETS.get(key) } {
            Some(sock) => *sock,
            None => {
                count(KernelCounter::TlsSocketUnknown);
                return;
            }
        }
    };
    on_tls_io(sock, moved as u32, direction, call.buffer, tgid, tid);
}
