//! `--capture-header`: the values of the named request headers, each in a
//! record of its own, sent just before the data record of the read they
//! were found in. The read's first `min(bytes read, SCAN_LEN)` bytes are
//! copied to a per-CPU scratch buffer and matched there
//! (`tracer_common::header_capture`); only the values leave it. With no
//! names configured the data path checks one constant and does nothing more.
use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_loop, bpf_probe_read_user_buf};
use tracer_common::{
    CAPTURE_LEN, ConnState, EventKind, HEADER_TRUNCATED, HeaderEvent, KernelCounter, PHASE_HEADERS,
    header_capture::{
        Found, MatchState, SCAN_LEN, SCAN_STEPS, SCAN_WORDS, Step, VALUE_LEN, value_words,
    },
};

use crate::{
    config::capture_names,
    maps::{EVENTS, HEADER_SCRATCH, HeaderScratch, count, header, wakeup_flags},
    probes::data::{LOOP_CONTINUE, LOOP_STOP},
};

/// Whether any name is to be captured: a constant to the verifier, which
/// then skips the capture code altogether when it is 0.
#[inline(always)]
pub fn enabled() -> bool {
    capture_names().count != 0
}

/// What the scan's `bpf_loop` callback needs besides the scratch map.
struct Capture {
    scratch: *mut HeaderScratch,
    sock: u64,
    tgid: u32,
    seq: u32,
}

/// Sends the named headers of the read of `moved` bytes at `buffer` on
/// connection `sock`, tagged with the number its data record will get, and
/// notes in `state` whether the read ended at a line start (so that the
/// next read of the same head starts a line). A function of its own (a BPF
/// subprogram), so that the data path's code around the call stays as it
/// was: its registers, and so the verifier's work on it.
#[inline(never)]
pub fn capture(state: &mut ConnState, sock: u64, tgid: u32, buffer: u64, moved: u32) {
    let at_line_start = state.recv_phase == PHASE_HEADERS && state.recv_line_start != 0;
    state.recv_line_start = scan(sock, tgid, state.next_seq, buffer, moved, at_line_start) as u8;
}

#[inline(always)]
fn scan(sock: u64, tgid: u32, seq: u32, buffer: u64, moved: u32, at_line_start: bool) -> bool {
    let Some(scratch) = HEADER_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the per-CPU slot is ours while the program runs (programs do
    // not preempt each other on one CPU); a u64 array is as many bytes.
    let bytes = unsafe { &mut *((&raw mut (*scratch).words) as *mut [u8; SCAN_LEN]) };
    let len = if (moved as usize) < SCAN_LEN {
        moved as usize
    } else {
        SCAN_LEN
    };
    let Some(dst) = bytes.get_mut(..len) else {
        return false;
    };
    // SAFETY: the helper checks the user address.
    if unsafe { bpf_probe_read_user_buf(buffer as *const u8, dst) }.is_err() {
        count(KernelCounter::CaptureFailed);
        return false;
    }
    // SAFETY: as above.
    unsafe { (*scratch).state = MatchState::new(moved as usize, at_line_start) };
    let mut capture = Capture {
        scratch,
        sock,
        tgid,
        seq,
    };
    // SAFETY: the callback has the signature the helper calls, and
    // `capture` outlives the call.
    unsafe {
        bpf_loop(
            SCAN_STEPS,
            scan_step as *mut c_void,
            (&mut capture as *mut Capture).cast(),
            0,
        )
    };
    // SAFETY: as above.
    let state = unsafe { &(*scratch).state };
    // A head still open after a read longer than the capture is not
    // followed into the next read (see `data.rs`): its rest goes unscanned.
    if state.missed() || (state.head_open() && moved as usize > CAPTURE_LEN) {
        count(KernelCounter::HeaderMissed);
    }
    state.ends_at_line_start()
}

/// The `bpf_loop` callback: one step of the scan, and the value it found.
extern "C" fn scan_step(_step: u64, context: *mut c_void) -> i64 {
    // SAFETY: `capture` passes its `Capture` as the context, and its
    // scratch slot stays ours for the whole loop.
    let capture = unsafe { &*context.cast::<Capture>() };
    let scratch = unsafe { &mut *capture.scratch };
    match scratch.state.step(&scratch.words, capture_names()) {
        Step::Next => LOOP_CONTINUE,
        Step::Found(found) => {
            send(capture, &scratch.words, &found);
            LOOP_CONTINUE
        }
        Step::Stop => LOOP_STOP,
    }
}

/// One value's record, its bytes taken from the scratch buffer word by
/// word, everything past the value zeroed.
#[inline(always)]
fn send(capture: &Capture, words: &[u64; SCAN_WORDS], found: &Found) {
    let Some(mut entry) = EVENTS.reserve::<HeaderEvent>(0) else {
        count(KernelCounter::RingBufferFull);
        return;
    };
    // SAFETY: a reserved record of the right size; every field is written
    // below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = header(EventKind::Header, capture.tgid);
    event.sock = capture.sock;
    event.seq = capture.seq;
    event.name = found.name as u8;
    event.flags = if found.truncated { HEADER_TRUNCATED } else { 0 };
    event.len = found.len as u16;
    // SAFETY: `value` is 8-byte aligned in the record (a const assertion in
    // tracer-common checks it) and VALUE_LEN long.
    let value = unsafe { &mut *(event.value.as_mut_ptr() as *mut [u64; VALUE_LEN / 8]) };
    value_words(words, found, value);
    entry.submit(wakeup_flags());
}
