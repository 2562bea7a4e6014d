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
    AF_INET, AF_INET6, CAPTURE_LEN, ConnMeta, ConnState, DIRECTION_RECV, DataEvent, EventHeader,
    EventKind, IOVEC_BASE, IPPROTO_TCP, KernelCounter, MSG_PEEK, MSGHDR_IOV, PHASE_BODY,
    PHASE_HEADERS, PREFIX_LEN, SyscallAbi, prefix_may_start_http_message,
};

use crate::{
    config::config,
    maps::{CONNECTIONS, EVENTS, count, current_task, is_traced, wakeup_flags},
    probes::connection::{emit_conn_event, field},
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
    let _ = try_on_socket_io(sock, moved, flags, direction, tgid, tid);
}

#[inline(always)]
fn try_on_socket_io(
    sock: u64,
    moved: i32,
    flags: i32,
    direction: u8,
    tgid: u32,
    tid: u32,
) -> Result<(), i32> {
    if moved <= 0 || (direction == DIRECTION_RECV && flags & MSG_PEEK != 0) {
        return Ok(());
    }
    let at = config().sock;
    let family: u16 = field(sock, at.family)?;
    let protocol: u16 = field(sock, at.protocol)?;
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return Ok(());
    }
    let state = connection(sock, tgid, family)?;
    let phase = if direction == DIRECTION_RECV {
        state.recv_phase
    } else {
        state.send_phase
    };
    let moved = moved as u32;
    let buffer = user_buffer(&config().syscalls);

    let continues_headers = phase == PHASE_HEADERS;
    let starts_message =
        !continues_headers && buffer.is_some_and(|buffer| buffer_may_start_message(buffer, moved));
    if !continues_headers && !starts_message {
        // Body bytes: only the time and size matter, and only for writes
        // (the last write of a response ends its span).
        if direction != DIRECTION_RECV && state.is_http != 0 {
            let seq = next_seq(state);
            emit_data(sock, tgid, tid, direction, moved, seq, None);
        }
        return Ok(());
    }
    if state.is_http == 0 {
        state.is_http = 1;
        emit_conn_event(EventKind::ConnOpen, tgid, sock, state);
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
    Ok(())
}

/// Takes the number of the connection's next data record.
fn next_seq(state: &mut ConnState) -> u32 {
    let seq = state.next_seq;
    state.next_seq = seq.wrapping_add(1);
    seq
}

/// The connection's state, created on first use by a traced process.
fn connection(sock: u64, tgid: u32, family: u16) -> Result<&'static mut ConnState, i32> {
    if let Some(state) = CONNECTIONS.get_ptr_mut(&sock) {
        // SAFETY: map values live until removed; a connection is used by one
        // task at a time, so no other program writes this entry concurrently.
        let state = unsafe { &mut *state };
        if state.owner_tgid == 0 {
            state.owner_tgid = tgid;
        }
        return Ok(state);
    }
    let fresh = ConnState::new(0, tgid, ConnMeta::unknown(family));
    if CONNECTIONS.insert(&sock, &fresh, 0).is_err() {
        count(KernelCounter::ConnTableFull);
        return Err(0);
    }
    match CONNECTIONS.get_ptr_mut(&sock) {
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

const WORDS: usize = CAPTURE_LEN / 8;
const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The top bit of each byte of `word` that equals `byte` (exact, no carries).
#[inline(always)]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * byte as u64);
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Bytes of word `index` that lie below `limit`, as a byte mask.
#[inline(always)]
fn bytes_below(index: usize, limit: usize) -> u64 {
    let start = index * 8;
    if limit >= start + 8 {
        u64::MAX
    } else if limit <= start {
        0
    } else {
        (1u64 << (8 * (limit - start))) - 1
    }
}

/// Finds where the header part of the first `len` bytes ends and zeroes
/// what follows: that is body. Header blocks end at `\r\n\r\n`; one that is
/// followed by the start of another message (pipelined requests) does not
/// end the header part. Returns `None` when the last header block is still
/// open, so the next bytes continue it.
///
/// The scan goes a word at a time in a `bpf_loop` callback: the verifier
/// checks the callback once, not once per word. As an unrolled loop, the
/// verifier walked 324,000 instructions for it on 6.18 and exceeded the
/// one-million budget on 6.1, which prunes less.
fn keep_header_block(payload: &mut [u8; CAPTURE_LEN], len: usize) -> Option<usize> {
    // SAFETY: `payload` is 8-byte aligned inside the record (a const
    // assertion in tracer-common checks the offset) and WORDS * 8 long.
    let words = unsafe { &mut *(payload.as_mut_ptr() as *mut [u64; WORDS]) };
    let mut scan = HeaderScan {
        words,
        len,
        prev_cr: 0,
        prev_lf: 0,
        cut: 0,
        ends_at_len: false,
    };
    // SAFETY: the callback has the signature the helper calls, and `scan`
    // outlives the call.
    unsafe {
        bpf_loop(
            (WORDS + 1) as u32,
            scan_word as *mut c_void,
            (&mut scan as *mut HeaderScan).cast(),
            0,
        )
    };
    let cut = match (scan.cut, scan.ends_at_len) {
        (0, false) => return None,
        (0, true) => len,
        (cut, _) => cut,
    };
    let mut w = 0;
    while w < WORDS && w * 8 < len {
        words[w] &= bytes_below(w, cut);
        w += 1;
    }
    Some(cut)
}

/// The header scan's state between words.
struct HeaderScan<'a> {
    words: &'a [u64; WORDS],
    len: usize,
    /// CR and LF bytes of the previous word (top bit of each byte).
    prev_cr: u64,
    prev_lf: u64,
    /// Where the header part ends, once found (0: not yet).
    cut: usize,
    /// A header block ends exactly at `len`.
    ends_at_len: bool,
}

const LOOP_CONTINUE: i64 = 0;
const LOOP_STOP: i64 = 1;

/// One step of [`keep_header_block`]: looks for `\r\n\r\n` starting in
/// word `w - 1`, with the CR/LF masks of word `w` to see across the border.
/// Only `cut` and a flag are carried from a match (not its position).
extern "C" fn scan_word(w: u64, context: *mut c_void) -> i64 {
    // SAFETY: `keep_header_block` passes its `HeaderScan` as the context.
    let scan = unsafe { &mut *context.cast::<HeaderScan>() };
    let (w, len) = (w as usize, scan.len);
    let (cr, lf) = if w < WORDS && w * 8 < len {
        let word = word_at(scan.words, w * 8);
        let valid = bytes_below(w, len) & HIGH;
        (
            bytes_equal(word, b'\r') & valid,
            bytes_equal(word, b'\n') & valid,
        )
    } else {
        (0, 0)
    };
    if w > 0 {
        // Pattern starts in word w-1: CR at p, LF at p+1, CR at p+2, LF at p+3.
        // A message start has no CR or LF in its first bytes, so after an
        // accepted end the next one is at least a word further: the lowest
        // match of a word is the only one to look at.
        let (prev_cr, prev_lf) = (scan.prev_cr, scan.prev_lf);
        let starts = prev_cr
            & ((prev_lf >> 8) | (lf << 56))
            & ((prev_cr >> 16) | (cr << 48))
            & ((prev_lf >> 24) | (lf << 40));
        if starts != 0 {
            let end = (w - 1) * 8 + (starts.trailing_zeros() as usize) / 8 + 4;
            if end >= len {
                scan.ends_at_len = true;
            } else if !message_starts_at(scan.words, end, len) {
                scan.cut = end;
                return LOOP_STOP;
            }
        }
    }
    if w * 8 >= len {
        return LOOP_STOP;
    }
    scan.prev_cr = cr;
    scan.prev_lf = lf;
    LOOP_CONTINUE
}

/// Whether the bytes at `at` (below `len`) may start an HTTP message.
#[inline(always)]
fn message_starts_at(words: &[u64; WORDS], at: usize, len: usize) -> bool {
    let available = if len - at < PREFIX_LEN {
        len - at
    } else {
        PREFIX_LEN
    };
    prefix_may_start_http_message(word_at(words, at), available)
}

/// The eight bytes from `at`, as a little-endian word. Indexes are masked
/// rather than compared so the verifier sees them bounded; a wrapped last
/// word only supplies bytes past the capture, which callers ignore.
#[inline(always)]
fn word_at(words: &[u64; WORDS], at: usize) -> u64 {
    // The mask goes through `black_box`: as a plain constant, the compiler
    // proves it redundant (it knows `at` < the capture) and drops it, and
    // older verifiers, which do not know that, refuse the access.
    let mask = core::hint::black_box(WORDS - 1);
    let (index, shift) = (at / 8, (at % 8) * 8);
    let word = |i: usize| words.get(i & mask).copied().unwrap_or(0);
    let low = word(index) >> shift;
    let high = if shift != 0 {
        word(index + 1) << (64 - shift)
    } else {
        0
    };
    low | high
}
