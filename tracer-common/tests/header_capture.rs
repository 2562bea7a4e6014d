//! The kernel's header matcher (`tracer_common::header_capture`) on the
//! host, driven step by step as `bpf_loop` drives it: on any bytes it
//! agrees with a plain reference, never sends a byte of a body, of another
//! header or of what lies past the read, and always stops within the
//! loop's bound.
use proptest::{collection::vec, prelude::*, sample::select};
use tracer_common::header_capture::{
    CaptureNames, Found, MAX_NAMES, MAX_VALUES_PER_READ, MatchState, SCAN_LEN, SCAN_STEPS,
    SCAN_WORDS, Step, VALUE_LEN, is_header_name, value_words,
};

/// One value as the daemon gets it: name index, bytes, truncated.
type Value = (usize, Vec<u8>, bool);

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    values: Vec<Value>,
    missed: bool,
    head_open: bool,
    ends_at_line_start: bool,
}

/// What the kernel sends for a read of `read.len()` bytes, its scratch
/// buffer holding `stale` bytes (an earlier read's) past them.
fn kernel(read: &[u8], stale: &[u8], names: &[&str], at_line_start: bool) -> Outcome {
    let names_bytes: Vec<&[u8]> = names.iter().map(|name| name.as_bytes()).collect();
    let capture = CaptureNames::new(&names_bytes).expect("valid names");
    let mut scratch = vec![0u8; SCAN_LEN];
    for (slot, &byte) in scratch.iter_mut().zip(stale.iter().cycle()) {
        *slot = byte;
    }
    let copied = read.len().min(SCAN_LEN);
    scratch[..copied].copy_from_slice(&read[..copied]);
    let mut words = [0u64; SCAN_WORDS];
    for (word, bytes) in words.iter_mut().zip(scratch.chunks_exact(8)) {
        *word = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    }
    let mut scan = MatchState::new(read.len(), at_line_start);
    let mut values = Vec::new();
    let mut stopped = false;
    // As bpf_loop: until a step stops, at most SCAN_STEPS.
    for _ in 0..SCAN_STEPS {
        match scan.step(&words, &capture) {
            Step::Next => {}
            Step::Found(found) => {
                let Found {
                    name,
                    start,
                    len,
                    truncated,
                } = found;
                assert!(len <= VALUE_LEN && start + len <= copied, "{start}+{len}");
                // The record's words, as the kernel fills them.
                let mut record_words = [0u64; VALUE_LEN / 8];
                value_words(&words, &found, &mut record_words);
                let record: Vec<u8> = record_words.iter().flat_map(|w| w.to_le_bytes()).collect();
                assert!(record[len..].iter().all(|&byte| byte == 0));
                values.push((name, record[..len].to_vec(), truncated));
            }
            Step::Stop => {
                stopped = true;
                break;
            }
        }
    }
    assert!(stopped, "the scan ran out of steps");
    Outcome {
        values,
        missed: scan.missed(),
        head_open: scan.head_open(),
        ends_at_line_start: scan.ends_at_line_start(),
    }
}

fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// The promise, plainly, on the first `SCAN_LEN` bytes of `read`.
fn reference(read: &[u8], names: &[&str], at_line_start: bool) -> Outcome {
    let more = read.len() > SCAN_LEN;
    let bytes = &read[..read.len().min(SCAN_LEN)];
    let mut outcome = Outcome {
        values: Vec::new(),
        missed: false,
        head_open: false,
        ends_at_line_start: false,
    };
    let after_lf = |from: usize| {
        bytes[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|at| from + at + 1)
    };
    let mut line = if at_line_start { Some(0) } else { after_lf(0) };
    while let Some(start) = line {
        if start == bytes.len() {
            outcome.head_open = true;
            outcome.ends_at_line_start = !more;
            outcome.missed |= more;
            return outcome;
        }
        if bytes[start] == b'\r' || bytes[start] == b'\n' {
            return outcome;
        }
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map_or(bytes.len(), |at| start + at);
        for (index, name) in names.iter().enumerate() {
            let pattern = [name.as_bytes(), b":"].concat();
            let available = &bytes[start..];
            let seen = pattern.len().min(available.len());
            if !available[..seen].eq_ignore_ascii_case(&pattern[..seen]) {
                continue;
            }
            if seen < pattern.len() {
                outcome.missed = true;
                continue;
            }
            if outcome.values.len() == MAX_VALUES_PER_READ {
                outcome.missed = true;
                return outcome;
            }
            let raw = &bytes[start + pattern.len()..end];
            let from = raw.iter().position(|&b| !is_blank(b)).unwrap_or(raw.len());
            let to = raw
                .iter()
                .rposition(|&b| !is_blank(b))
                .map_or(from, |at| at + 1);
            let value = &raw[from..to];
            let truncated = value.len() > VALUE_LEN || end == bytes.len();
            let sent = value[..value.len().min(VALUE_LEN)].to_vec();
            outcome.values.push((index, sent, truncated));
            break;
        }
        line = after_lf(start);
    }
    // In a line that runs to the end of the bytes.
    outcome.head_open = true;
    outcome.missed |= more;
    outcome
}

/// The values, as text, for readable assertions.
fn texts(outcome: &Outcome) -> Vec<(usize, String, bool)> {
    outcome
        .values
        .iter()
        .map(|(name, value, truncated)| (*name, String::from_utf8_lossy(value).into(), *truncated))
        .collect()
}

/// `kernel` on a read with no stale bytes of interest, checked against the
/// reference.
fn scan(read: &[u8], names: &[&str]) -> Outcome {
    let outcome = kernel(read, b"\r\nx-a: stale\r\n", names, false);
    assert_eq!(outcome, reference(read, names, false));
    outcome
}

/// A request head with `headers`, padded before them to put them `at`
/// bytes from its start (the padding is headers of up to 1000 bytes).
fn head_at(at: usize, headers: &str) -> Vec<u8> {
    let mut head = b"GET /work HTTP/1.1\r\nHost: test\r\n".to_vec();
    let mut n = 0;
    while head.len() < at {
        let room = (at - head.len()).clamp(8, 1000);
        let pad = format!("X-Pad-{n}: ");
        let fill = room.saturating_sub(pad.len() + 2).max(1);
        head.extend(format!("{pad}{}\r\n", "p".repeat(fill)).bytes());
        n += 1;
    }
    head.extend(headers.bytes());
    head.extend(b"\r\n");
    head
}

#[test]
fn names_match_in_any_case_right_after_the_request_line() {
    let head = b"GET / HTTP/1.1\r\nX-TENANT:  acme \t\r\nuser-AGENT: curl/8\r\n\r\n";
    let outcome = scan(head, &["x-tenant", "User-Agent"]);
    assert_eq!(
        texts(&outcome),
        [(0, "acme".into(), false), (1, "curl/8".into(), false)]
    );
    assert!(!outcome.missed);
}

#[test]
fn a_header_deep_in_an_8_kib_head_is_found_and_its_neighbours_are_not() {
    let head = head_at(6000, "X-Tenant: acme\r\nX-Other: no\r\n");
    assert!(head.len() > 6000 && head.len() < SCAN_LEN);
    let outcome = scan(&head, &["x-tenant"]);
    assert_eq!(texts(&outcome), [(0, "acme".into(), false)]);
}

#[test]
fn a_name_that_is_a_prefix_of_another_matches_only_itself() {
    let head = b"GET / HTTP/1.1\r\nx-ab: long\r\nX-A: short\r\nx-a-b: other\r\n\r\n";
    assert_eq!(
        texts(&scan(head, &["x-a", "x-ab"])),
        [(1, "long".into(), false), (0, "short".into(), false)]
    );
    assert_eq!(texts(&scan(head, &["x-ab"])), [(0, "long".into(), false)]);
}

#[test]
fn repeated_headers_give_every_value_in_order() {
    let head = b"GET / HTTP/1.1\r\nX-A: 1\r\nX-B: 2\r\nx-a: 3\r\nX-A:\r\n\r\n";
    assert_eq!(
        texts(&scan(head, &["x-a"])),
        [
            (0, "1".into(), false),
            (0, "3".into(), false),
            (0, "".into(), false)
        ]
    );
}

#[test]
fn nothing_matches_inside_a_value_the_request_line_or_the_body() {
    let head =
        b"X-A: / HTTP/1.1\r\nReferer: x-a: 1\r\nX-B:  X-A: 2\r\n\r\nX-A: body\r\n\r\nGET / HTTP/1.1\r\nX-A: pipelined\r\n\r\n";
    let outcome = scan(head, &["x-a"]);
    assert!(outcome.values.is_empty(), "{:?}", texts(&outcome));
    assert!(!outcome.missed);
}

#[test]
fn long_values_are_cut_and_flagged() {
    let long = "v".repeat(VALUE_LEN + 1);
    let head = format!(
        "GET / HTTP/1.1\r\nX-A: {long}\r\nX-A: {}   \r\n\r\n",
        &long[1..]
    );
    let outcome = scan(head.as_bytes(), &["x-a"]);
    assert_eq!(
        texts(&outcome),
        [
            (0, long[..VALUE_LEN].into(), true),
            (0, long[1..].into(), false)
        ]
    );
}

#[test]
fn values_at_the_8_kib_edge() {
    // A line that ends just inside the scan is whole.
    let whole = head_at(SCAN_LEN - 20, "X-A: 0123456789ab\r\nX-B: more");
    assert_eq!(whole[SCAN_LEN - 20..SCAN_LEN - 2], *b"X-A: 0123456789ab\r");
    let outcome = scan(&whole, &["x-a"]);
    assert_eq!(texts(&outcome), [(0, "0123456789ab".into(), false)]);
    assert!(outcome.missed, "the head goes on past the scan");

    // A value the scan's end cuts is sent flagged; a name it cuts is missed.
    let cut_value = head_at(SCAN_LEN - 10, "X-A: 0123456789ab\r\n");
    let outcome = scan(&cut_value, &["x-a"]);
    assert_eq!(texts(&outcome), [(0, "01234".into(), true)]);
    let cut_name = head_at(SCAN_LEN - 2, "X-A: 0123456789ab\r\n");
    let outcome = scan(&cut_name, &["x-a"]);
    assert_eq!(texts(&outcome), []);
    assert!(outcome.missed);

    // Past the scan, nothing.
    let past = head_at(SCAN_LEN + 100, "X-A: late\r\n");
    let outcome = scan(&past, &["x-a"]);
    assert_eq!(texts(&outcome), []);
    assert!(outcome.missed);
}

#[test]
fn a_head_split_over_reads() {
    let names = ["x-a", "x-tenant"];
    // Split at a line start: the second read starts a line.
    let first = kernel(b"GET / HTTP/1.1\r\nX-A: 1\r\n", b"", &names, false);
    assert!(first.ends_at_line_start && !first.missed);
    let second = kernel(b"X-Tenant: acme\r\n\r\n", b"", &names, true);
    assert_eq!(texts(&second), [(1, "acme".into(), false)]);
    assert!(first.head_open && !second.head_open);

    // Split inside a name: missed, and counted.
    let first = kernel(b"GET / HTTP/1.1\r\nX-Ten", b"", &names, false);
    assert!(first.missed && !first.ends_at_line_start);
    let second = kernel(b"ant: acme\r\n\r\n", b"", &names, false);
    assert_eq!(texts(&second), []);

    // Split inside a value: its start is sent, flagged.
    let first = kernel(b"GET / HTTP/1.1\r\nX-Tenant: ac", b"", &names, false);
    assert_eq!(texts(&first), [(1, "ac".into(), true)]);
}

#[test]
fn a_read_sends_a_bounded_number_of_values() {
    let headers = "X-A: v\r\n".repeat(MAX_VALUES_PER_READ + 5);
    let head = format!("GET / HTTP/1.1\r\n{headers}\r\n");
    let outcome = scan(head.as_bytes(), &["x-a"]);
    assert_eq!(outcome.values.len(), MAX_VALUES_PER_READ);
    assert!(outcome.missed);
}

#[test]
fn the_worst_heads_stop_within_the_loop_bound() {
    // Shortest lines: a step per byte and one per line start.
    for line in ["a\n", "a\r\n", "x-a:\n", "x-a:v\n", "x-\n", " \n"] {
        let mut head = b"GET / HTTP/1.1\n".to_vec();
        while head.len() < SCAN_LEN + 100 {
            head.extend(line.bytes());
        }
        scan(&head, &["x-a", "x-ab", "a"]);
    }
}

#[test]
fn names_are_checked() {
    assert!(is_header_name(b"x-tenant"));
    assert!(is_header_name(b"User-Agent"));
    assert!(is_header_name("a".repeat(32).as_bytes()));
    assert!(!is_header_name("a".repeat(33).as_bytes()));
    for bad in [&b""[..], b"x tenant", b"x:a", b"caf\xc3\xa9", b"a\r\n"] {
        assert!(!is_header_name(bad), "{bad:?}");
    }
    let nine: Vec<&[u8]> = vec![b"a"; MAX_NAMES + 1];
    assert!(CaptureNames::new(&nine).is_none());
    assert!(CaptureNames::new(&nine[..MAX_NAMES]).is_some());
}

/// Names drawn from a pool of prefixes of each other, in any case.
fn names() -> impl Strategy<Value = Vec<&'static str>> {
    let pool = ["x-a", "x-ab", "X-AB-c", "user-agent", "a", "x"];
    proptest::sample::subsequence(pool.to_vec(), 1..=4)
}

/// Bytes rich in what the matcher looks for.
fn headerish(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let name = select(&["x-a", "X-Ab", "X-AB-C", "user-Agent", "A", "x", "x-"][..]);
    let piece = prop_oneof![
        4 => name.clone().prop_map(|name| format!("\r\n{name}:").into_bytes()),
        2 => name.prop_map(|name| name.as_bytes().to_vec()),
        2 => Just(b"\r\n".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => Just(b"\r\n\r\n".to_vec()),
        2 => select(vec![b' ', b'\t', b':', b'\r']).prop_map(|byte| vec![byte]),
        2 => (1usize..200).prop_map(|n| vec![b'v'; n]),
        1 => (1usize..3000).prop_map(|n| vec![b'p'; n]),
        3 => any::<u8>().prop_map(|byte| vec![byte]),
    ];
    vec(piece, 0..max)
        .prop_map(|pieces| pieces.concat())
        .prop_map(|mut bytes| {
            bytes.truncate(SCAN_LEN + 200);
            bytes
        })
}

/// What lay in the scratch buffer before: often a head with the names.
fn stale() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\r\nx-a: stale\r\nX-AB: stale\r\n".to_vec()),
        vec(any::<u8>(), 1..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn agrees_with_the_reference_on_any_bytes(
        read in prop_oneof![vec(any::<u8>(), 0..600), headerish(120)],
        names in names(),
        at_line_start in any::<bool>(),
        stale in stale(),
    ) {
        prop_assert_eq!(
            kernel(&read, &stale, &names, at_line_start),
            reference(&read, &names, at_line_start)
        );
    }

    /// Real-looking heads: every named header before the blank line is
    /// found whole, and a value never holds a line end.
    #[test]
    fn finds_every_named_header_of_a_real_head(
        headers in vec(("[A-Za-z-]{1,12}", "[ -~]{0,60}"), 0..40),
        named in vec((0usize..3, "[!-~]([ -~]{0,60}[!-~])?"), 0..6),
        body in "[ -~\r\n]{0,100}",
    ) {
        let names = ["x-tenant", "x-t", "user-agent"];
        let mut lines: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(name, _)| !names.iter().any(|n| n.eq_ignore_ascii_case(name)))
            .collect();
        let at = lines.len();
        for (i, (index, value)) in named.iter().enumerate() {
            lines.insert((i * 7) % (at + 1) + i, (names[*index].to_uppercase(), value.clone()));
        }
        let mut head = b"POST /p HTTP/1.1\r\n".to_vec();
        let mut expected = Vec::new();
        for (name, value) in &lines {
            head.extend(format!("{name}: {value}\r\n").bytes());
            if let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(name)) {
                expected.push((index, value.clone().into_bytes(), false));
            }
        }
        head.extend(format!("\r\n{body}").bytes());
        let outcome = kernel(&head, b"\r\nx-t: stale\r\n", &names, false);
        prop_assert_eq!(outcome.values, expected);
        prop_assert!(!outcome.missed);
    }
}
