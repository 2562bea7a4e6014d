//! Finding the request headers `--capture-header` names, so that the kernel
//! sends their values alone (never the rest of the head). The kernel copies
//! the first `min(bytes read, SCAN_LEN)` bytes of a read that starts a
//! request, or continues its head, to a per-CPU scratch buffer and drives
//! [`MatchState::step`] from a `bpf_loop` callback; the host tests drive
//! the same steps with a plain loop.
//!
//! A header matches at the start of a line (after `\n`): its name in any
//! case, then `:` at once. Its value runs to the end of the line (CR or
//! LF), spaces and tabs around it trimmed, at most [`VALUE_LEN`] bytes. The
//! scan ends at the blank line that ends the head, so it never looks into a
//! body, nor into a request pipelined behind the first.
//!
//! Shaped for the verifier like `header_scan`: each step looks at one word
//! or one line start, indexes are masked, and the names come from the
//! programs' read-only configuration, which the verifier sees as constants
//! (the code for names not configured is never walked).
use crate::swar::{HIGH, bytes_below, bytes_equal, highest_byte, lowest_byte, word_at};

/// Bytes of a read scanned for named headers: a head of up to 8 KiB.
pub const SCAN_LEN: usize = 8192;
pub const SCAN_WORDS: usize = SCAN_LEN / 8;
/// Header names that can be captured at once.
pub const MAX_NAMES: usize = 8;
pub const MAX_NAME_LEN: usize = 32;
/// A name and its colon, in words.
const PATTERN_WORDS: usize = (MAX_NAME_LEN + 1).div_ceil(8);
/// Bytes of a value sent; a longer one is cut and flagged.
pub const VALUE_LEN: usize = 128;
/// Values one read can send: a head repeating a named header cannot flood
/// the ring buffer. Past it the scan stops (and is counted).
pub const MAX_VALUES_PER_READ: usize = 32;
/// Bound of the `bpf_loop`: every step moves at least one byte on, except
/// one per line start (lines are two bytes or more) and two per value.
pub const SCAN_STEPS: u32 = (2 * SCAN_LEN) as u32;

/// One name to match, prepared so that a match is a few word compares.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamePattern {
    /// Bytes compared: the name and its colon.
    pub len: u32,
    pub _pad: u32,
    /// The lowercase name, then `:`, as little-endian words, zero-padded.
    pub words: [u64; PATTERN_WORDS],
    /// 0x20 in each byte that is a letter: `input | fold` folds the case.
    pub fold: [u64; PATTERN_WORDS],
    /// 0xff in each byte below `len`.
    pub mask: [u64; PATTERN_WORDS],
}

impl NamePattern {
    const NONE: Self = Self {
        len: 0,
        _pad: 0,
        words: [0; PATTERN_WORDS],
        fold: [0; PATTERN_WORDS],
        mask: [0; PATTERN_WORDS],
    };

    /// The pattern of a header name: `None` unless it is an HTTP token
    /// (RFC 9110, 5.6.2) of at most [`MAX_NAME_LEN`] bytes.
    pub fn new(name: &[u8]) -> Option<Self> {
        if !is_header_name(name) {
            return None;
        }
        let mut bytes = [[0u8; 8]; PATTERN_WORDS];
        let mut fold = bytes;
        let mut mask = bytes;
        for (at, &byte) in name.iter().chain(b":").enumerate() {
            let (word, index) = (at / 8, at % 8);
            bytes[word][index] = byte.to_ascii_lowercase();
            fold[word][index] = if byte.is_ascii_alphabetic() { 0x20 } else { 0 };
            mask[word][index] = 0xff;
        }
        Some(Self {
            len: name.len() as u32 + 1,
            _pad: 0,
            words: bytes.map(u64::from_le_bytes),
            fold: fold.map(u64::from_le_bytes),
            mask: mask.map(u64::from_le_bytes),
        })
    }
}

/// Whether `name` can be captured: a token of 1 to [`MAX_NAME_LEN`] bytes.
pub fn is_header_name(name: &[u8]) -> bool {
    let tchar = |byte: u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte);
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.iter().all(|&byte| tchar(byte))
}

/// The names to capture, as the programs get them (a read-only global).
/// A value's record carries the index of its name here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureNames {
    /// Names in use: 0 turns capture off (the programs' one check).
    pub count: u32,
    pub _pad: u32,
    pub names: [NamePattern; MAX_NAMES],
}

impl CaptureNames {
    pub const NONE: Self = Self {
        count: 0,
        _pad: 0,
        names: [NamePattern::NONE; MAX_NAMES],
    };

    /// `None` if there are more than [`MAX_NAMES`], or one is not a name.
    pub fn new(names: &[&[u8]]) -> Option<Self> {
        if names.len() > MAX_NAMES {
            return None;
        }
        let mut capture = Self::NONE;
        for (slot, name) in capture.names.iter_mut().zip(names) {
            *slot = NamePattern::new(name)?;
        }
        capture.count = names.len() as u32;
        Some(capture)
    }
}

/// A value found: `len` bytes from `start` of the scanned bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Index of the name in [`CaptureNames`].
    pub name: usize,
    pub start: usize,
    pub len: usize,
    /// The value goes on past what is sent: longer than [`VALUE_LEN`], or
    /// running past the bytes scanned.
    pub truncated: bool,
}

/// What a step of the scan came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Next,
    /// A value to send; the scan goes on after it.
    Found(Found),
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Looking for the next `\n` from `pos`.
    Seek,
    /// At the start of a line, `pos`.
    Line,
    /// In the value of a matched header, at `pos`.
    Value,
}

const NONE: usize = usize::MAX;

/// The scan of one read's bytes, between steps. Plain numbers only, no
/// references: the kernel keeps it in its per-CPU scratch map, where the
/// verifier sees every field as unknown at each step. Kept on the stack,
/// its fields would be constants the verifier tracks from step to step, and
/// a loop that converges in two passes would take one per position.
#[derive(Clone, Copy, Debug)]
pub struct MatchState {
    /// Bytes scanned.
    len: usize,
    /// The read goes on past them (a head over [`SCAN_LEN`]).
    more: bool,
    pos: usize,
    mode: Mode,
    /// In a value: its name, first and last bytes that are not blank.
    name: usize,
    first: usize,
    last: usize,
    values: usize,
    head_open: bool,
    ends_at_line_start: bool,
    missed: bool,
}

impl MatchState {
    /// A scan of the first `min(moved, SCAN_LEN)` bytes of a read of
    /// `moved` bytes. A read that starts a request starts in its request
    /// line; one that continues a head starts at a line start when the read
    /// before ended one ([`Self::ends_at_line_start`]).
    pub fn new(moved: usize, at_line_start: bool) -> Self {
        Self {
            len: if moved < SCAN_LEN { moved } else { SCAN_LEN },
            more: moved > SCAN_LEN,
            pos: 0,
            mode: if at_line_start {
                Mode::Line
            } else {
                Mode::Seek
            },
            name: 0,
            first: NONE,
            last: 0,
            values: 0,
            head_open: false,
            ends_at_line_start: false,
            missed: false,
        }
    }

    /// The scan ran to the end of the bytes without the head's blank line:
    /// the head goes on in the bytes after them.
    pub fn head_open(&self) -> bool {
        self.head_open
    }

    /// The scan stopped at a line start at the end of the read, its head
    /// not ended: the next read of the head starts a line.
    pub fn ends_at_line_start(&self) -> bool {
        self.ends_at_line_start
    }

    /// A named header may have been missed: the read ended inside a line
    /// that begins like one (the rest comes in the next read, not at a line
    /// start), the head goes on past [`SCAN_LEN`], or the read had more
    /// than [`MAX_VALUES_PER_READ`] values.
    pub fn missed(&self) -> bool {
        self.missed
    }

    /// One step over `words`, the read's first bytes; the caller goes on
    /// while it returns `Next` or `Found`, up to [`SCAN_STEPS`] steps.
    #[inline(always)]
    pub fn step(&mut self, words: &[u64; SCAN_WORDS], names: &CaptureNames) -> Step {
        match self.mode {
            Mode::Seek => self.seek(words),
            Mode::Line => self.line(words, names),
            Mode::Value => self.value(words),
        }
    }

    #[inline(always)]
    fn seek(&mut self, words: &[u64; SCAN_WORDS]) -> Step {
        let (pos, len) = (self.pos, self.len);
        if pos >= len {
            // In a line that goes on past the bytes scanned.
            self.head_open = true;
            self.missed |= self.more;
            return Step::Stop;
        }
        let w = pos / 8;
        let lf = bytes_equal(word_at(words, w * 8), b'\n') & self.range(w, pos);
        if lf == 0 {
            self.pos = (w + 1) * 8;
        } else {
            self.pos = w * 8 + lowest_byte(lf) + 1;
            self.mode = Mode::Line;
        }
        Step::Next
    }

    #[inline(always)]
    fn line(&mut self, words: &[u64; SCAN_WORDS], names: &CaptureNames) -> Step {
        let (at, len) = (self.pos, self.len);
        if at >= len {
            self.head_open = true;
            self.ends_at_line_start = !self.more;
            self.missed |= self.more;
            return Step::Stop;
        }
        let first = word_at(words, at) as u8;
        if first == b'\r' || first == b'\n' {
            // The blank line: the head ends.
            return Step::Stop;
        }
        self.mode = Mode::Seek;
        let available = len - at;
        let count = names.count as usize;
        let mut i = 0;
        while i < MAX_NAMES && i < count {
            let pattern = &names.names[i];
            let pattern_len = pattern.len as usize;
            if matches(words, at, available, pattern) {
                if pattern_len > available {
                    // Cut by the end of the bytes: the name may go on.
                    self.missed = true;
                } else if self.values >= MAX_VALUES_PER_READ {
                    self.missed = true;
                    return Step::Stop;
                } else {
                    self.name = i;
                    self.pos = at + pattern_len;
                    self.mode = Mode::Value;
                    self.first = NONE;
                    return Step::Next;
                }
            }
            i += 1;
        }
        Step::Next
    }

    #[inline(always)]
    fn value(&mut self, words: &[u64; SCAN_WORDS]) -> Step {
        let (pos, len) = (self.pos, self.len);
        if pos >= len {
            self.mode = Mode::Seek;
            return self.found(true);
        }
        let w = pos / 8;
        let word = word_at(words, w * 8);
        let range = self.range(w, pos);
        let eol = (bytes_equal(word, b'\r') | bytes_equal(word, b'\n')) & range;
        let before_eol = if eol == 0 {
            range
        } else {
            range & ((eol & eol.wrapping_neg()) - 1)
        };
        let text = before_eol & !(bytes_equal(word, b' ') | bytes_equal(word, b'\t'));
        if text != 0 {
            if self.first == NONE {
                self.first = w * 8 + lowest_byte(text);
            }
            self.last = w * 8 + highest_byte(text);
            if self.last - self.first >= VALUE_LEN {
                // Longer than is sent: the line's end is looked for from here.
                self.mode = Mode::Seek;
                return self.found(true);
            }
        }
        if eol != 0 {
            self.pos = w * 8 + lowest_byte(eol);
            self.mode = Mode::Seek;
            return self.found(false);
        }
        self.pos = (w + 1) * 8;
        Step::Next
    }

    #[inline(always)]
    fn found(&mut self, truncated: bool) -> Step {
        self.values += 1;
        let (start, len) = if self.first == NONE {
            (0, 0)
        } else {
            let len = self.last + 1 - self.first;
            (self.first, if len < VALUE_LEN { len } else { VALUE_LEN })
        };
        Step::Found(Found {
            name: self.name,
            start,
            len,
            truncated,
        })
    }

    /// The top bits of the bytes of word `w` from `pos` and below `len`.
    #[inline(always)]
    fn range(&self, w: usize, pos: usize) -> u64 {
        HIGH & bytes_below(w, self.len) & (u64::MAX << (8 * (pos % 8)))
    }
}

/// The value `found` as the words of its record: bytes past it zero, so
/// nothing but the value leaves the scratch buffer. Without a branch (the
/// start's shift taken once, masks from sign bits): at each of the record's
/// words the verifier would otherwise split its states, and a copy of
/// variable length through a helper would make it track the length's
/// every origin.
#[inline(always)]
pub fn value_words(words: &[u64; SCAN_WORDS], found: &Found, out: &mut [u64; VALUE_LEN / 8]) {
    // Masked, so the verifier sees it bounded (through `black_box`, or the
    // compiler, which knows better, drops the mask).
    let mask = core::hint::black_box(SCAN_WORDS - 1);
    let (index, shift) = (found.start / 8, (found.start % 8) * 8);
    // SAFETY: `i & mask` is below SCAN_WORDS, a power of two.
    let word = |i: usize| unsafe { *words.get_unchecked(i & mask) };
    let mut low = word(index);
    for (k, slot) in out.iter_mut().enumerate() {
        let high = word(index + k + 1);
        // In two steps, so that an aligned start (a shift of 64) gives 0.
        let bytes = (low >> shift) | ((high << 1) << (63 - shift));
        // Bytes of this word inside the value: `len - 8k` held to 0..=8.
        let left = (found.len as i64).wrapping_sub(8 * k as i64);
        let left = left & !(left >> 63);
        let over = (8 - left) >> 63;
        let left = ((left & !over) | (8 & over)) as u32;
        *slot = bytes & ((1u64 << (4 * left)) << (4 * left)).wrapping_sub(1);
        low = high;
    }
}

const _: () = assert!(SCAN_WORDS.is_power_of_two());

/// Whether the bytes at `at` (`available` of them are valid) are the
/// pattern's name and colon, in any case, as far as they go.
#[inline(always)]
fn matches(words: &[u64; SCAN_WORDS], at: usize, available: usize, pattern: &NamePattern) -> bool {
    let len = pattern.len as usize;
    let mut k = 0;
    while k < PATTERN_WORDS && k * 8 < len {
        let mask = pattern.mask[k] & bytes_below(k, available);
        if (word_at(words, at + 8 * k) | pattern.fold[k]) & mask != pattern.words[k] & mask {
            return false;
        }
        k += 1;
    }
    true
}
