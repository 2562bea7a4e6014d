//! Arbitrary bytes into the HTTP head parsers (`tracer_fuzz::http_input`
//! says how the first byte picks the options): no panic; a complete head is
//! no longer than the input and its method and path are in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::http::{self, Parsed};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn check_request(bytes: &[u8], head: &http::RequestHead) {
    let line = format!("{} {}", head.method, head.path);
    assert!(
        contains(bytes, line.as_bytes()),
        "{line:?} not in the input"
    );
    assert!(head.minor_version <= 1);
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, bytes)) = input.split_first() else {
        return;
    };
    let keep_query = selector & 1 == 1;
    let method = tracer_fuzz::METHODS[usize::from(selector >> 1) % tracer_fuzz::METHODS.len()];

    let request = http::parse_request(bytes, keep_query);
    if let Parsed::Complete(head) = &request {
        assert!(head.head_len <= bytes.len());
        check_request(bytes, head);
        // The head alone parses the same.
        assert_eq!(
            http::parse_request(&bytes[..head.head_len], keep_query),
            request
        );
    }
    if let Some(head) = http::parse_request_line(bytes, keep_query) {
        assert_eq!(head.head_len, bytes.len());
        check_request(bytes, &head);
        if let Parsed::Complete(full) = &request {
            assert_eq!(
                (&head.method, &head.path, head.minor_version),
                (&full.method, &full.path, full.minor_version)
            );
        }
    }

    if let Parsed::Complete(head) = http::parse_response(bytes, method) {
        assert!(head.head_len <= bytes.len());
        assert!(head.status <= 999 && head.minor_version <= 1);
        let bodiless = method == "HEAD" || head.status < 200 || matches!(head.status, 204 | 304);
        if bodiless {
            assert_eq!(head.body, http::BodyLength::None);
        }
        if let Some(total) = head.total_len() {
            assert!(total >= head.head_len as u64);
        }
    }
});
