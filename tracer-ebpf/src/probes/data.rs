//! Socket data, from whichever hook the probe set uses: the socket
//! tracepoints `sock:sock_recv_length` / `sock_send_length`, or the exits of
//! `tcp_recvmsg` / `tcp_sendmsg` (fexit or kretprobe, see `tcp.rs`). All fire
//! in the process that moved the bytes, after the copy, and cost nothing to
//! processes whose syscalls are not socket I/O (unlike syscall tracepoints,
//! which put every task of the host on the slow syscall path).
//!
//! None carries the user buffer, so it is found from the syscall's saved
//! registers (`bpf_task_pt_regs`). Only buffers that start an HTTP
//! message or continue its header block are copied, and the copy stops at
//! the end of the header block: bodies never leave the process.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_loop, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_buf, bpf_task_pt_regs,
    },
    programs::RawTracePointContext,
};
use tracer_common::{
    AF_INET, AF_INET6, CAPTURE_LEN, ConnMeta, ConnState, DIRECTION_RECV, DIRECTION_SEND, DataEvent,
    EventHeader, EventKind, IOVEC_BASE, IPPROTO_TCP, KernelCounter, MSG_PEEK, MSGHDR_IOV,
    PHASE_BODY, PHASE_HEADERS, PREFIX_LEN, ROLE_CLIENT, ROLE_SERVER, SyscallAbi,
    header_scan::{self, HeaderScan, SCAN_STEPS, WORDS},
    prefix_may_start_http_message,
};

use crate::{
    config::config,
    maps::{CONNECTIONS, EVENTS, LISTEN_PORTS, count, current_task, is_traced, wakeup_flags},
    probes::{
        connection::{addresses, emit_conn_event, field},
        headers,
        tls::{self, Claim},
    },
};

/// `sock:sock_recv_length` / `sock_send_length`, raw. Arguments
/// (`TP_PROTO`): `struct sock *sk, int ret, int flags`.
pub fn on_socket_tracepoint(ctx: &RawTracePointContext, direction: u8) {
    let (sock, moved, flags) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2));
    on_socket_io(sock, moved as i32, flags as i32, direction);
}

/// Bytes `moved` (or an error, when negative) on socket `sock` by the
/// current task, whichever hook saw it.
#[inline(always)]
pub fn on_socket_io(sock: u64, moved: i32, flags: i32, direction: u8) {
    let (tgid, tid) = current_task();
    if !is_traced(tgid) {
        return;
    }
    // Bytes of an OpenSSL call in progress are ciphertext: its plaintext
    // is sent instead, a write's now (see `tls.rs`), a read's at its return.
    let plaintext = match tls::claim_socket(sock, moved, direction) {
        Claim::Plain => None,
        Claim::Ciphertext => return,
        Claim::Plaintext { buffer, len } => Some((buffer, len)),
    };
    let _ = try_on_socket_io(sock, moved, flags, direction, tgid, tid, plaintext);
}

#[inline(always)]
fn try_on_socket_io(
    sock: u64,
    moved: i32,
    flags: i32,
    direction: u8,
    tgid: u32,
    tid: u32,
    plaintext: Option<(u64, u32)>,
) -> Result<(), i32> {
    if moved <= 0 || (direction == DIRECTION_RECV && flags & MSG_PEEK != 0) {
        return Ok(());
    }
    let state = tcp_connection(sock, tgid)?;
    let (moved, buffer) = match plaintext {
        Some((buffer, len)) => {
            state.tls = 1;
            (len, Some(buffer))
        }
        // A TLS connection's records come from OpenSSL's hooks alone (its
        // handshake and alerts, outside the hooked calls, are ciphertext).
        None if state.tls != 0 => return Ok(()),
        None => (moved as u32, user_buffer(&config().syscalls)),
    };
    on_bytes(state, sock, direction, moved, buffer, tgid, tid);
    Ok(())
}

/// Plaintext that OpenSSL read from or wrote to socket `sock` (at the
/// call's return): `moved` bytes at the user address `buffer`. The
/// connection is TLS from now on.
#[inline(always)]
pub fn on_tls_io(sock: u64, moved: u32, direction: u8, buffer: u64, tgid: u32, tid: u32) {
    if let Ok(state) = tcp_connection(sock, tgid) {
        state.tls = 1;
        on_bytes(state, sock, direction, moved, Some(buffer), tgid, tid);
    }
}

/// The state of TCP connection `sock` (IPv4 or IPv6), created on first use.
#[inline(always)]
fn tcp_connection(sock: u64, tgid: u32) -> Result<&'static mut ConnState, i32> {
    let at = config().sock;
    let family: u16 = field(sock, at.family)?;
    let protocol: u16 = field(sock, at.protocol)?;
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return Err(0);
    }
    connection(sock, tgid, family)
}

/// `moved` bytes of connection `sock` in `direction`, at `buffer` when
/// known: a message start or header block is sent with its head, a
/// response body only as its size.
#[inline(always)]
fn on_bytes(
    state: &mut ConnState,
    sock: u64,
    direction: u8,
    moved: u32,
    buffer: Option<u64>,
    tgid: u32,
    tid: u32,
) {
    let phase = if direction == DIRECTION_RECV {
        state.recv_phase
    } else {
        state.send_phase
    };
    let continues_headers = phase == PHASE_HEADERS;
    let starts_message =
        !continues_headers && buffer.is_some_and(|buffer| buffer_may_start_message(buffer, moved));
    if !continues_headers && !starts_message {
        // Body bytes: only the time and size matter, and only of responses
        // (their last byte ends the span): the server's writes, the
        // client's reads.
        let responds = if state.role == ROLE_CLIENT {
            DIRECTION_RECV
        } else {
            DIRECTION_SEND
        };
        if direction == responds && state.is_http != 0 {
            let seq = next_seq(state);
            emit_data(sock, tgid, tid, direction, moved, seq, None);
        }
        return;
    }
    if state.is_http == 0 {
        state.is_http = 1;
        state.role = role(state, direction);
        emit_conn_event(EventKind::ConnOpen, tgid, sock, state);
    }
    // Only requests' headers are captured: those the server reads.
    if direction == DIRECTION_RECV
        && state.role == ROLE_SERVER
        && headers::enabled()
        && let Some(buffer) = buffer
    {
        headers::capture(state, sock, tgid, buffer, moved);
    }
    let seq = next_seq(state);
    let next_phase = match emit_data(sock, tgid, tid, direction, moved, seq, buffer) {
        Some(phase) => phase,
        None => {
            if direction == DIRECTION_RECV && starts_message {
                count(KernelCounter::RequestStartLost);
            }
            // The message is lost: copy nothing more of it (its rest may be
            // body) until a new one starts.
            PHASE_BODY
        }
    };
    if direction == DIRECTION_RECV {
        state.recv_phase = next_phase;
    } else {
        state.send_phase = next_phase;
    }
}

/// Which end the traced process is, as its first message starts: the
/// server when it listens on the socket's local port (whatever the first
/// message seen, the tracer may have started mid-exchange) or reads first.
fn role(state: &ConnState, direction: u8) -> u8 {
    // SAFETY: presence check only.
    let listens = unsafe { LISTEN_PORTS.get(state.meta.local_port) }.is_some();
    if listens || direction == DIRECTION_RECV {
        ROLE_SERVER
    } else {
        ROLE_CLIENT
    }
}

/// Takes the number of the connection's next data record.
fn next_seq(state: &mut ConnState) -> u32 {
    let seq = state.next_seq;
    state.next_seq = seq.wrapping_add(1);
    seq
}

/// The connection's state, created on first use by a traced process.
fn connection(sock: u64, tgid: u32, family: u16) -> Result<&'static mut ConnState, i32> {
    if let Some(state) = CONNECTIONS.get_ptr_mut(sock) {
        // SAFETY: map values live until removed; a connection is used by one
        // task at a time, so no other program writes this entry concurrently.
        let state = unsafe { &mut *state };
        if state.owner_tgid == 0 {
            state.owner_tgid = tgid;
        }
        return Ok(state);
    }
    // Opened before the tracer, or `connect()`ed: its handshake was not
    // seen, its addresses are read now.
    let meta = addresses(sock, family).unwrap_or(ConnMeta::unknown(family));
    let fresh = ConnState::new(0, tgid, meta);
    if CONNECTIONS.insert(sock, fresh, 0).is_err() {
        count(KernelCounter::ConnTableFull);
        return Err(0);
    }
    match CONNECTIONS.get_ptr_mut(sock) {
        // SAFETY: as above.
        Some(state) => Ok(unsafe { &mut *state }),
        None => Err(0),
    }
}

/// The user buffer of the syscall in progress, from its saved registers.
fn user_buffer(abi: &SyscallAbi) -> Option<u64> {
    // SAFETY: the current task is valid for the program's whole run; reading
    // its saved registers cannot fault in a way the helpers do not handle.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        let nr: u64 = bpf_probe_read_kernel(regs.add(abi.regs_syscall_nr as usize).cast()).ok()?;
        let arg1: u64 = bpf_probe_read_kernel(regs.add(abi.regs_arg1 as usize).cast()).ok()?;
        let nr = nr as i32;
        if abi.plain_buffer.contains(&nr) {
            return Some(arg1);
        }
        if abi.iovec.contains(&nr) {
            return bpf_probe_read_user((arg1 + IOVEC_BASE) as *const u64).ok();
        }
        if abi.msghdr.contains(&nr) {
            let iov: u64 = bpf_probe_read_user((arg1 + MSGHDR_IOV) as *const u64).ok()?;
            return bpf_probe_read_user((iov + IOVEC_BASE) as *const u64).ok();
        }
    }
    None
}

fn buffer_may_start_message(buffer: u64, moved: u32) -> bool {
    let mut word = [0u8; PREFIX_LEN];
    let len = if (moved as usize) < PREFIX_LEN {
        moved as usize
    } else {
        PREFIX_LEN
    };
    let Some(prefix) = word.get_mut(..len) else {
        return false;
    };
    // SAFETY: the helper checks the user address.
    if unsafe { bpf_probe_read_user_buf(buffer as *const u8, prefix) }.is_err() {
        return false;
    }
    prefix_may_start_http_message(u64::from_le_bytes(word), len)
}

/// Sends one data record, copying the header part of `buffer` when given.
/// Returns the phase the direction is in after these bytes, or `None` when
/// the ring buffer is full and the record is lost.
#[inline(always)]
fn emit_data(
    sock: u64,
    tgid: u32,
    tid: u32,
    direction: u8,
    moved: u32,
    seq: u32,
    buffer: Option<u64>,
) -> Option<u8> {
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        count(KernelCounter::RingBufferFull);
        return None;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved record of the right size; every
    // field the daemon reads is written below.
    let event = unsafe { &mut *event };
    event.header = EventHeader {
        kind: EventKind::Data as u32,
        tgid,
        // SAFETY: helper without preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    };
    event.sock = sock;
    event.tid = tid;
    event.direction = direction;
    event._pad = [0; 3];
    event.bytes = moved;
    event.captured = 0;
    event.seq = seq;
    event._pad2 = 0;
    let mut phase = PHASE_BODY;
    if let Some(buffer) = buffer {
        let len = if (moved as usize) < CAPTURE_LEN {
            moved as usize
        } else {
            CAPTURE_LEN
        };
        let copied = match event.payload.get_mut(..len) {
            // SAFETY: the helper checks the user address.
            Some(dst) => unsafe { bpf_probe_read_user_buf(buffer as *const u8, dst) }.is_ok(),
            None => false,
        };
        if copied {
            match keep_header_block(&mut event.payload, len) {
                Some(end) => event.captured = end as u32,
                None => {
                    event.captured = len as u32;
                    // A head longer than the capture most likely ends in the
                    // uncaptured rest of this same buffer: what follows it
                    // is body, so the next buffer is not taken for headers.
                    // (Read back from the record, volatile: compared with
                    // `moved` itself, the compiler merges the two and the
                    // copy's length loses the bound the verifier needs.)
                    // SAFETY: a field of the record reserved above.
                    let bytes = unsafe { core::ptr::read_volatile(&event.bytes) };
                    if bytes as usize <= CAPTURE_LEN {
                        phase = PHASE_HEADERS;
                    }
                }
            }
        } else {
            count(KernelCounter::CaptureFailed);
        }
    }
    entry.submit(wakeup_flags());
    Some(phase)
}

/// [`header_scan::keep_header_block`] over the record's payload.
///
/// The scan goes a word at a time in a `bpf_loop` callback: the verifier
/// checks the callback once, not once per word. As an unrolled loop, the
/// verifier walked 324,000 instructions for it on 6.18 and exceeded the
/// one-million budget on 6.1, which prunes less.
fn keep_header_block(payload: &mut [u8; CAPTURE_LEN], len: usize) -> Option<usize> {
    // SAFETY: `payload` is 8-byte aligned inside the record (a const
    // assertion in tracer-common checks the offset) and WORDS * 8 long.
    let words = unsafe { &mut *(payload.as_mut_ptr() as *mut [u64; WORDS]) };
    header_scan::keep_header_block(words, len, |scan| {
        // SAFETY: the callback has the signature the helper calls, and
        // `scan` outlives the call.
        unsafe {
            bpf_loop(
                SCAN_STEPS,
                scan_word as *mut c_void,
                (scan as *mut HeaderScan).cast(),
                0,
            )
        };
    })
}

/// What a `bpf_loop` callback returns: go on, or stop the loop.
pub const LOOP_CONTINUE: i64 = 0;
pub const LOOP_STOP: i64 = 1;

/// The `bpf_loop` callback: step `w` of the scan.
extern "C" fn scan_word(w: u64, context: *mut c_void) -> i64 {
    // SAFETY: `keep_header_block` passes its `HeaderScan` as the context.
    let scan = unsafe { &mut *context.cast::<HeaderScan>() };
    if scan.step(w as usize) {
        LOOP_CONTINUE
    } else {
        LOOP_STOP
    }
}
