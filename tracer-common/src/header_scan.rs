//! Where the header part of a captured buffer ends, so that the body after
//! it is zeroed before the record leaves the kernel. The kernel programs
//! drive the scan from a `bpf_loop` callback, one word per call; the host
//! tests drive the same steps with a plain loop. Everything here is shaped
//! for the verifier: word-at-a-time masks instead of byte loops, and
//! indexes it can see bounded.
use crate::{
    CAPTURE_LEN, PREFIX_LEN, prefix_may_start_http_message,
    swar::{HIGH, bytes_below, bytes_equal, word_at},
};

/// The capture as little-endian words.
pub const WORDS: usize = CAPTURE_LEN / 8;
/// Steps of a whole scan: one per word, and one more to look across the
/// last word's border.
pub const SCAN_STEPS: u32 = (WORDS + 1) as u32;

/// Finds where the header part of the first `len` bytes ends and zeroes
/// what follows: that is body. Header blocks end at `\r\n\r\n`; one that is
/// followed by the start of another message (pipelined requests) does not
/// end the header part. Returns `None` when the last header block is still
/// open, so the next bytes continue it.
///
/// `run` drives the scan: it calls [`HeaderScan::step`] with 0, 1, … until
/// a step returns `false` or [`SCAN_STEPS`] steps ran, as `bpf_loop` does.
pub fn keep_header_block(
    words: &mut [u64; WORDS],
    len: usize,
    run: impl FnOnce(&mut HeaderScan<'_>),
) -> Option<usize> {
    let mut scan = HeaderScan {
        words,
        len,
        prev_cr: 0,
        prev_lf: 0,
        cut: 0,
        ends_at_len: false,
    };
    run(&mut scan);
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
pub struct HeaderScan<'a> {
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

impl HeaderScan<'_> {
    /// Step `w` of [`keep_header_block`]: looks for `\r\n\r\n` starting in
    /// word `w - 1`, with the CR/LF masks of word `w` to see across the
    /// border. Only `cut` and a flag are carried from a match (not its
    /// position). Returns whether the scan goes on.
    #[inline(always)]
    pub fn step(&mut self, w: usize) -> bool {
        let len = self.len;
        let (cr, lf) = if w < WORDS && w * 8 < len {
            let word = word_at(self.words, w * 8);
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
            let (prev_cr, prev_lf) = (self.prev_cr, self.prev_lf);
            let starts = prev_cr
                & ((prev_lf >> 8) | (lf << 56))
                & ((prev_cr >> 16) | (cr << 48))
                & ((prev_lf >> 24) | (lf << 40));
            if starts != 0 {
                let end = (w - 1) * 8 + (starts.trailing_zeros() as usize) / 8 + 4;
                if end >= len {
                    self.ends_at_len = true;
                } else if !message_starts_at(self.words, end, len) {
                    self.cut = end;
                    return false;
                }
            }
        }
        if w * 8 >= len {
            return false;
        }
        self.prev_cr = cr;
        self.prev_lf = lf;
        true
    }
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
