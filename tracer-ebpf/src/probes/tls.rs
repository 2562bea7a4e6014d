//! HTTPS through OpenSSL: uprobes on `SSL_read`, `SSL_read_ex`,
//! `SSL_write` and `SSL_write_ex` of the libssl a traced process maps,
//! attached by the daemon for that process alone. The plaintext goes
//! through the common data path (`data.rs`) as if a socket had moved it.
//!
//! Which socket: while a thread is inside one of these calls, the socket
//! hooks that fire for the same thread are OpenSSL moving that
//! connection's ciphertext. The entry hook notes the call by task; the
//! socket hook claims it (it names the `sock`, and the ciphertext makes no
//! record), so a TLS connection has the same identity, addresses and
//! handshake time as a plain one. A call that OpenSSL served from what it
//! had buffered touches no socket: its `SSL*` gives the socket an earlier
//! call saw.
//!
//! When: a write's plaintext is sent by the socket hook, at its first
//! ciphertext on the socket, inside the syscall, as plain HTTP's is. Sent
//! at the write's return instead, it could come after the peer's answer to
//! it: the peer can run (and answer) between the syscall and the return.
//! A read's plaintext exists only at its return, and is sent from there.
//! A write that fails after its first ciphertext (a non-blocking socket)
//! is retried with the same length: the retry sends nothing again.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::map,
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{DIRECTION_SEND, KernelCounter, MAX_CONNECTIONS};

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
    /// A write's plaintext length (its `num`).
    len: u64,
    direction: u8,
    /// 1 once a write's plaintext was sent (or needs none: a retry).
    sent: u8,
    _pad: [u8; 6],
}

/// What the programs keep of an `SSL*`.
#[derive(Clone, Copy)]
pub struct SslState {
    /// The socket under it, for calls that touch none.
    sock: u64,
    /// The length of a write that failed after its plaintext was sent:
    /// its retry (same length) sends nothing again; 0 for none.
    retry_len: u64,
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

/// Each `SSL*` seen.
#[map]
static TLS_SOCKETS: LruHashMap<SslKey, SslState> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// `SSL_read(SSL *ssl, void *buf, int num)`, `SSL_write(SSL *ssl, const
/// void *buf, int num)` (`EX` false), and their `_ex` forms with a fourth
/// argument `size_t *readbytes` / `*written` (`EX` true).
#[inline(always)]
pub fn on_call_entry<const EX: bool>(ctx: &ProbeContext, direction: u8) {
    let (tgid, _) = current_task();
    if !is_traced(tgid) {
        return;
    }
    let (Some(ssl), Some(buffer), Some(len)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return;
    };
    let count_at = if EX {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    // `num` is an int in the plain forms, a size_t in the _ex forms.
    let len = if EX {
        len
    } else {
        len as u32 as i32 as i64 as u64
    };
    let mut sent = 0;
    if direction == DIRECTION_SEND {
        let key = key(ssl, tgid);
        if let Some(state) = TLS_SOCKETS.get_ptr_mut(key) {
            // SAFETY: map values live until removed; this process's SSL*
            // is used by one thread at a time (OpenSSL requires it).
            let state = unsafe { &mut *state };
            if state.retry_len != 0 && state.retry_len == len {
                sent = 1;
            }
            state.retry_len = 0;
        }
    }
    let call = TlsCall {
        ssl,
        buffer,
        count_at,
        sock: 0,
        len,
        direction,
        sent,
        _pad: [0; 6],
    };
    let _ = TLS_CALLS.insert(bpf_get_current_pid_tgid(), call, 0);
}

/// What socket I/O of the current task is.
pub enum Claim {
    /// No OpenSSL call of this task is in progress: plain bytes.
    Plain,
    /// Ciphertext of a call in progress: no record.
    Ciphertext,
    /// The first ciphertext of a write: its plaintext, `len` bytes at
    /// `buffer`, to be sent now.
    Plaintext { buffer: u64, len: u32 },
}

/// Socket `sock` moved `moved` bytes in `direction` for the current task:
/// notes the socket for an OpenSSL call in progress.
#[inline(always)]
pub fn claim_socket(sock: u64, moved: i32, direction: u8) -> Claim {
    let Some(call) = TLS_CALLS.get_ptr_mut(bpf_get_current_pid_tgid()) else {
        return Claim::Plain;
    };
    // SAFETY: map values live until removed; the entry is this task's,
    // and a task runs one program at a time.
    let call = unsafe { &mut *call };
    call.sock = sock;
    let first_send = call.direction == DIRECTION_SEND && direction == DIRECTION_SEND;
    if !first_send || call.sent != 0 || moved <= 0 || call.len == 0 || call.len > i32::MAX as u64 {
        return Claim::Ciphertext;
    }
    call.sent = 1;
    Claim::Plaintext {
        buffer: call.buffer,
        len: call.len as u32,
    }
}

fn key(ssl: u64, tgid: u32) -> SslKey {
    SslKey { ssl, tgid, _pad: 0 }
}

/// The return of any of the four: a read's plaintext, on its socket; a
/// write's, if no ciphertext of it sent it already.
pub fn on_call_return(ctx: &RetProbeContext) {
    let task = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(call) = (unsafe { TLS_CALLS.get(task) }).copied() else {
        return;
    };
    let _ = TLS_CALLS.remove(task);
    let (tgid, tid) = current_task();
    let key = key(call.ssl, tgid);
    let returned: i64 = ctx.ret();
    let returned = returned as i32;
    let succeeded = if call.count_at != 0 {
        returned == 1
    } else {
        returned > 0
    };
    let known = if call.sock != 0 {
        let state = SslState {
            sock: call.sock,
            retry_len: 0,
        };
        let _ = TLS_SOCKETS.insert(key, state, 0);
        Some(call.sock)
    } else {
        // SAFETY: a copy of a plain value.
        unsafe { TLS_SOCKETS.get(key) }.map(|state| state.sock)
    };
    if !succeeded {
        if call.direction == DIRECTION_SEND
            && call.sent != 0
            && let Some(state) = TLS_SOCKETS.get_ptr_mut(key)
        {
            // SAFETY: as in `on_call_entry`.
            unsafe { (*state).retry_len = call.len };
        }
        return;
    }
    if call.direction == DIRECTION_SEND && call.sent != 0 {
        return;
    }
    let moved = if call.count_at != 0 {
        // SAFETY: the helper checks the user address.
        match unsafe { bpf_probe_read_user(call.count_at as *const u64) } {
            Ok(moved) => moved,
            Err(_) => return,
        }
    } else {
        returned as u64
    };
    if moved == 0 || moved > i32::MAX as u64 {
        return;
    }
    let Some(sock) = known else {
        count(KernelCounter::TlsSocketUnknown);
        return;
    };
    on_tls_io(sock, moved as u32, call.direction, call.buffer, tgid, tid);
}
