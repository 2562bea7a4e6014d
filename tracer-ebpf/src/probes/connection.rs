//! TCP connection life from `sock:inet_sock_set_state`. This hook runs for
//! every TCP state change on the host (often in softirq context, so it cannot
//! filter on the current process): it does one map lookup and leaves.
//!
//! - -> LISTEN, in the listening process: a traced process's port becomes
//!   a listening port at once, and a process listening on a watched port
//!   (`--port`) becomes traced, before its first connection.
//! - SYN_RECV -> ESTABLISHED on a port the traced tree listens on: remember
//!   when the handshake completed, which is before `accept` returns; the
//!   difference is the time the request waited in the accept queue.
//! - The application closing (ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT ->
//!   LAST_ACK) or the connection dying (-> CLOSE): tell the daemon the
//!   connection is over, so it can finish what is pending, and forget it.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::RawTracePointContext,
};
use tracer_common::{
    AF_INET, ConnEvent, ConnMeta, ConnState, EventKind, IPPROTO_TCP, KernelCounter, ListenEvent,
    TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK, TCP_LISTEN,
    TCP_SYN_RECV,
};

use crate::{
    config::config,
    maps::{
        CONNECTIONS, LISTEN_PORTS, TRACED_TASKS, WATCHED_PORTS, count, current_task, emit,
        emit_now, header, is_traced,
    },
};

/// Arguments (`TP_PROTO`): `const struct sock *sk, int oldstate, int newstate`.
pub fn on_state_change(ctx: &RawTracePointContext) {
    let _ = try_on_state_change(ctx);
}

/// Reads a field of the socket at a BTF-given offset.
// Inlined into each read: when LLVM chose, the data programs cost the 6.18
// verifier 63,900 instructions instead of 44,700.
#[inline(always)]
pub fn field<T>(sock: u64, offset: u32) -> Result<T, i32> {
    // SAFETY: `sock` is the kernel's live socket; the helper checks the read.
    unsafe { bpf_probe_read_kernel((sock + offset as u64) as *const T) }
}

fn try_on_state_change(ctx: &RawTracePointContext) -> Result<(), i32> {
    let sock: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    // This runs for every state change of every TCP socket on the host:
    // decide on the states (free) before touching the socket or a map.
    if new == TCP_LISTEN {
        return on_listen(sock);
    }
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        let at = config().sock;
        let local_port: u16 = field(sock, at.local_port)?;
        // SAFETY: presence check only.
        if unsafe { LISTEN_PORTS.get(local_port) }.is_none() {
            return Ok(());
        }
        let protocol: u16 = field(sock, at.protocol)?;
        if protocol != IPPROTO_TCP {
            return Ok(());
        }
        let meta = addresses(sock, field(sock, at.family)?)?;
        // SAFETY: helper without preconditions.
        let state = ConnState::new(unsafe { bpf_ktime_get_ns() }, 0, meta);
        if CONNECTIONS.insert(sock, state, 0).is_err() {
            count(KernelCounter::ConnTableFull);
        }
        return Ok(());
    }

    let ending = (old == TCP_ESTABLISHED && new == TCP_FIN_WAIT1)
        || (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK)
        || new == TCP_CLOSE;
    if !ending {
        return Ok(());
    }
    // SAFETY: the entry is copied out before it is removed.
    let Some(state) = (unsafe { CONNECTIONS.get(sock) }).copied() else {
        return Ok(());
    };
    let _ = CONNECTIONS.remove(sock);
    if state.is_http != 0 {
        emit_conn_event(EventKind::ConnClose, state.owner_tgid, sock, &state);
    }
    Ok(())
}

/// The socket's ports and peer address.
#[inline(always)]
pub fn addresses(sock: u64, family: u16) -> Result<ConnMeta, i32> {
    let at = config().sock;
    let local_port: u16 = field(sock, at.local_port)?;
    let peer_port = u16::from_be(field(sock, at.peer_port)?);
    let mut peer_addr = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = field(sock, at.peer_addr_v4)?;
        peer_addr[..4].copy_from_slice(&v4);
    } else {
        peer_addr = field(sock, at.peer_addr_v6)?;
    }
    Ok(ConnMeta {
        family,
        local_port,
        peer_port,
        _pad: 0,
        peer_addr,
    })
}

/// `listen()` runs in the listening process, so the current task is the owner.
fn on_listen(sock: u64) -> Result<(), i32> {
    let at = config().sock;
    let protocol: u16 = field(sock, at.protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let port: u16 = field(sock, at.local_port)?;
    let (tgid, _) = current_task();
    if !is_traced(tgid) {
        // SAFETY: presence check only.
        if unsafe { WATCHED_PORTS.get(port) }.is_none() {
            return Ok(());
        }
        if TRACED_TASKS.insert(tgid, 1, 0).is_err() {
            count(KernelCounter::TaskTableFull);
            return Ok(());
        }
    }
    // A full port table is the daemon's to report: its rescan fails loudly.
    let _ = LISTEN_PORTS.insert(port, 1, 0);
    emit_now(ListenEvent {
        header: header(EventKind::SocketListen, tgid),
        port,
        _pad: [0; 6],
    });
    Ok(())
}

/// Sends a connection's opening or closing record.
pub fn emit_conn_event(kind: EventKind, tgid: u32, sock: u64, state: &ConnState) {
    emit(ConnEvent {
        header: header(kind, tgid),
        sock,
        established_ns: state.established_ns,
        meta: state.meta,
        role: state.role,
        tls: state.tls,
        _pad: [0; 6],
    });
}
