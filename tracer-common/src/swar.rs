//! Byte tests a word at a time ("SIMD within a register"), shared by the
//! kernel's scans of captured bytes (`header_scan`, `header_capture`). A
//! byte loop would make the verifier walk one path per byte; these are a
//! few ALU instructions per eight bytes.

pub const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
/// The top bit of every byte: the form the masks below are in.
pub const HIGH: u64 = 0x8080_8080_8080_8080;

/// The top bit of each byte of `word` that equals `byte` (exact, no carries).
#[inline(always)]
pub fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * byte as u64);
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Bytes of word `index` that lie below `limit`, as a byte mask.
#[inline(always)]
pub fn bytes_below(index: usize, limit: usize) -> u64 {
    let start = index * 8;
    if limit >= start + 8 {
        u64::MAX
    } else if limit <= start {
        0
    } else {
        (1u64 << (8 * (limit - start))) - 1
    }
}

/// The eight bytes from `at`, as a little-endian word. Indexes are masked
/// rather than compared so the verifier sees them bounded; a wrapped last
/// word only supplies bytes past the buffer, which callers mask off.
#[inline(always)]
pub fn word_at<const N: usize>(words: &[u64; N], at: usize) -> u64 {
    // The mask goes through `black_box`: as a plain constant, the compiler
    // proves it redundant (it knows `at` is in range) and drops it, and
    // older verifiers, which do not know that, refuse the access.
    let mask = core::hint::black_box(N - 1);
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

/// Index of the lowest byte set in a non-zero mask of top bits.
#[inline(always)]
pub fn lowest_byte(mask: u64) -> usize {
    mask.trailing_zeros() as usize / 8
}

/// Index of the highest byte set in a non-zero mask of top bits (BPF has
/// a byte swap but no leading-zero count).
#[inline(always)]
pub fn highest_byte(mask: u64) -> usize {
    7 - mask.swap_bytes().trailing_zeros() as usize / 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_find_bytes() {
        let word = u64::from_le_bytes(*b"a\r\nb:c\n\n");
        assert_eq!(bytes_equal(word, b'\n'), 0x8080_0000_0080_0000);
        assert_eq!(lowest_byte(bytes_equal(word, b'\n')), 2);
        assert_eq!(highest_byte(bytes_equal(word, b'\n')), 7);
        assert_eq!(highest_byte(bytes_equal(word, b'a')), 0);
        assert_eq!(bytes_below(1, 10), 0xffff);
        assert_eq!(bytes_below(1, 8), 0);
        assert_eq!(bytes_below(1, 20), u64::MAX);
        let words = [
            u64::from_le_bytes(*b"01234567"),
            u64::from_le_bytes(*b"89abcdef"),
        ];
        assert_eq!(word_at(&words, 3).to_le_bytes(), *b"3456789a");
        assert_eq!(word_at(&words, 8).to_le_bytes(), *b"89abcdef");
    }
}
