//! The kernel's header scan (`tracer_common::header_scan`) on the host,
//! driven step by step as `bpf_loop` drives it: on any buffer it agrees
//! with a plain reference, and on real-looking traffic no body byte
//! survives while every header byte before the first body is kept.
use proptest::{collection::vec, prelude::*, sample::select};
use tracer_common::{
    CAPTURE_LEN,
    header_scan::{SCAN_STEPS, WORDS, keep_header_block},
};

/// What the kernel leaves of the record `payload` whose first `len` bytes
/// were copied, and where it says the header part ends.
fn kernel(payload: &[u8; CAPTURE_LEN], len: usize) -> (Option<usize>, [u8; CAPTURE_LEN]) {
    let mut words = [0u64; WORDS];
    for (word, bytes) in words.iter_mut().zip(payload.chunks_exact(8)) {
        *word = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    }
    let end = keep_header_block(&mut words, len, |scan| {
        // As bpf_loop: steps 0, 1, … until one stops, at most SCAN_STEPS.
        for w in 0..SCAN_STEPS {
            if !scan.step(w as usize) {
                break;
            }
        }
    });
    let mut out = [0u8; CAPTURE_LEN];
    for (bytes, word) in out.chunks_exact_mut(8).zip(words) {
        bytes.copy_from_slice(&word.to_le_bytes());
    }
    (end, out)
}

/// Runs the kernel scan on `copied` in a record whose bytes past it are
/// `stale` (what the ring buffer held before), checks that those are at
/// most zeroed, and returns the end and the copied bytes as left.
fn kernel_on(copied: &[u8], stale: &[u8]) -> (Option<usize>, Vec<u8>) {
    let len = copied.len();
    let mut payload = [0u8; CAPTURE_LEN];
    payload.copy_from_slice(stale);
    payload[..len].copy_from_slice(copied);
    let (end, out) = kernel(&payload, len);
    for (at, (&after, &before)) in out.iter().zip(&payload).enumerate().skip(len) {
        assert!(
            after == before || after == 0,
            "byte {at} past the copy changed"
        );
    }
    (end, out[..len].to_vec())
}

/// The starts of HTTP/1.x messages, written out again rather than taken
/// from the crate, so the reference does not share its tables.
const STARTS: [&[u8]; 10] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
    b"HTTP/1.",
];

/// Whether `rest` may start a message: it begins with a start, or all of it
/// is the beginning of one (a request line cut by the end of the read).
fn may_start(rest: &[u8]) -> bool {
    !rest.is_empty()
        && STARTS.iter().any(|start| {
            let n = start.len().min(rest.len());
            rest[..n] == start[..n]
        })
}

/// The promise, plainly: the header part ends after the first `\r\n\r\n`
/// that is not followed by the start of another message (pipelined heads
/// are all kept), and what follows it is zeroed. `None`, nothing zeroed:
/// the last head is still open.
fn reference(copied: &[u8]) -> (Option<usize>, Vec<u8>) {
    let mut from = 0;
    while let Some(at) = copied[from..].windows(4).position(|w| w == b"\r\n\r\n") {
        let end = from + at + 4;
        if end == copied.len() || !may_start(&copied[end..]) {
            let mut kept = copied.to_vec();
            kept[end..].fill(0);
            return (Some(end), kept);
        }
        from = end;
    }
    (None, copied.to_vec())
}

/// Bytes rich in what the scan looks for: line ends, blank lines, message
/// starts whole and cut, and anything else.
fn headerish(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let start =
        (select(&STARTS[..]), 1usize..9).prop_map(|(start, n)| &start[..n.min(start.len())]);
    // Blank lines are mostly followed by a message start: a scan that
    // stopped at the first blank line would not get far.
    let piece = prop_oneof![
        3 => start.clone().prop_map(|start| [b"\r\n\r\n", start].concat()),
        2 => start.prop_map(<[u8]>::to_vec),
        1 => Just(b"\r\n\r\n".to_vec()),
        2 => Just(b"\r\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just(b"\n".to_vec()),
        4 => any::<u8>().prop_map(|byte| vec![byte]),
    ];
    (vec(piece, 0..max), 0..=max).prop_map(|(pieces, len)| {
        let mut bytes = pieces.concat();
        bytes.truncate(len);
        bytes
    })
}

/// Bytes past the copy, as the ring buffer left them: often line ends, so
/// that a scan looking past the copy would find a blank line there.
fn stale() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), CAPTURE_LEN).prop_map(|bytes| {
        bytes
            .into_iter()
            .map(|byte| match byte % 4 {
                0 => b'\r',
                1 => b'\n',
                _ => byte,
            })
            .collect()
    })
}

/// A message head: request or status line, headers, blank line.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let request = (
        select(&STARTS[..9]),
        "/[a-z0-9/?=&.]{0,40}",
        select(&["HTTP/1.0", "HTTP/1.1"][..]),
    )
        .prop_map(|(method, target, version)| {
            format!("{}{target} {version}", String::from_utf8_lossy(method))
        });
    let status = (select(&["0", "1"][..]), 100u16..600, "[A-Za-z ]{0,12}")
        .prop_map(|(minor, code, reason)| format!("HTTP/1.{minor} {code} {reason}"));
    let header =
        ("[A-Za-z-]{1,16}", "[ -~]{0,40}").prop_map(|(name, value)| format!("{name}: {value}\r\n"));
    (prop_oneof![request, status], vec(header, 0..6))
        .prop_map(|(line, headers)| format!("{line}\r\n{}\r\n", headers.concat()).into_bytes())
}

/// A body, empty or not. One whose first bytes may begin a message is taken
/// for a pipelined message (the exception the README states), so none here
/// begins with the first letter of a message start.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let first = any::<u8>().prop_filter("begins like a message start", |&byte| !may_start(&[byte]));
    prop_oneof![
        Just(Vec::new()),
        (first, headerish(150)).prop_map(|(first, rest)| [vec![first], rest].concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn agrees_with_the_reference_on_any_bytes(
        copied in prop_oneof![vec(any::<u8>(), 0..=CAPTURE_LEN), headerish(CAPTURE_LEN)],
        stale in stale(),
    ) {
        prop_assert_eq!(kernel_on(&copied, &stale), reference(&copied));
    }

    /// A read of traffic that starts at a message, or inside the first head
    /// (one that continues it), and ends anywhere.
    #[test]
    fn keeps_heads_and_no_body_of_real_traffic(
        messages in vec((head(), body()), 1..5),
        start in any::<prop::sample::Index>(),
        len in 1..=CAPTURE_LEN,
        stale in stale(),
    ) {
        let mut stream = Vec::new();
        let mut is_body = Vec::new();
        let mut head_ends = Vec::new();
        for (head, body) in &messages {
            stream.extend_from_slice(head);
            is_body.extend(head.iter().map(|_| false));
            head_ends.push(stream.len());
            stream.extend_from_slice(body);
            is_body.extend(body.iter().map(|_| true));
        }
        // Not past the first byte of the first head's blank line: a read
        // that starts inside it finds no end (the scan keeps no state
        // from the read before).
        let start = start.index(messages[0].0.len() - 3);
        let end = (start + len).min(stream.len());
        let (header_end, kept) = kernel_on(&stream[start..end], &stale);

        let first_body = is_body[start..end].iter().position(|&body| body);
        for (at, &byte) in kept.iter().enumerate() {
            if is_body[start + at] {
                prop_assert_eq!(byte, 0, "body byte {} survived", at);
            } else if first_body.is_none_or(|body| at < body) {
                prop_assert_eq!(byte, stream[start + at], "header byte {} lost", at);
            }
        }
        let expected = match first_body {
            Some(body) => Some(body),
            None if head_ends.contains(&end) => Some(end - start),
            None => None,
        };
        prop_assert_eq!(header_end, expected);
    }
}
