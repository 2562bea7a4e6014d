//! `--capture-header`: the request headers whose values the kernel sends.
//! Names are checked here, once, kept lowercase and in the order given; a
//! value's record carries the index of its name in this list, never the
//! name, so what a span calls a header is always the daemon's own word.
//! The trace context's headers (`traceparent`, `tracestate`) follow the
//! user's names unless tracing them is off: they join the caller's trace
//! and are no span's attribute unless named.
use std::str::FromStr;

use tracer_common::header_capture::{CaptureNames, MAX_NAME_LEN, MAX_NAMES, is_header_name};

#[derive(Debug, thiserror::Error)]
pub enum CaptureHeaderError {
    #[error(
        "invalid header name {0:?}: an HTTP token (letters, digits and !#$%&'*+-.^_`|~) of 1 to {MAX_NAME_LEN} bytes"
    )]
    Name(String),
    #[error(
        "--capture-header: {0} header names, at most {1} (with the config file's capture_headers; {MAX_NAMES} with --no-trace-context)"
    )]
    TooMany(usize, usize),
}

/// One `--capture-header` value, checked and lowercased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderName(pub String);

impl FromStr for HeaderName {
    type Err = CaptureHeaderError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if is_header_name(text.as_bytes()) {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(CaptureHeaderError::Name(text.to_owned()))
        }
    }
}

/// The headers of W3C Trace Context, read to join an incoming trace.
pub const TRACE_CONTEXT: [&str; 2] = ["traceparent", "tracestate"];

/// The names to capture, and the kernel's patterns of them.
#[derive(Clone, Debug)]
pub struct CaptureHeaders {
    names: Vec<String>,
    /// How many of `names` the user gave (the spans' attributes).
    exported: usize,
    kernel: CaptureNames,
}

impl Default for CaptureHeaders {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            exported: 0,
            kernel: CaptureNames::NONE,
        }
    }
}

impl CaptureHeaders {
    /// `names` in order, a name given twice kept once, then the trace
    /// context's when `trace_context` (and not given).
    pub fn new(
        names: impl IntoIterator<Item = HeaderName>,
        trace_context: bool,
    ) -> Result<Self, CaptureHeaderError> {
        let mut unique: Vec<String> = Vec::new();
        for HeaderName(name) in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        let exported = unique.len();
        let context: Vec<String> = TRACE_CONTEXT
            .iter()
            .filter(|name| trace_context && !unique.iter().any(|given| given == *name))
            .map(|name| name.to_string())
            .collect();
        let room = MAX_NAMES - context.len();
        unique.extend(context);
        let bytes: Vec<&[u8]> = unique.iter().map(|name| name.as_bytes()).collect();
        let kernel =
            CaptureNames::new(&bytes).ok_or(CaptureHeaderError::TooMany(exported, room))?;
        Ok(Self {
            names: unique,
            exported,
            kernel,
        })
    }

    /// Lowercase, by the index the kernel's records carry.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// How many of [`Self::names`], from the first, go on the spans.
    pub fn exported(&self) -> usize {
        self.exported
    }

    /// What the programs are loaded with (no names: capture off).
    pub fn kernel(&self) -> &CaptureNames {
        &self.kernel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(texts: &[&str]) -> Result<CaptureHeaders, CaptureHeaderError> {
        with_context(texts, false)
    }

    fn with_context(texts: &[&str], context: bool) -> Result<CaptureHeaders, CaptureHeaderError> {
        let parsed: Result<Vec<HeaderName>, _> = texts.iter().map(|text| text.parse()).collect();
        CaptureHeaders::new(parsed?, context)
    }

    #[test]
    fn names_are_tokens_lowercased_in_order_once() {
        let capture = names(&["X-Tenant", "user-agent", "x-tenant", "X-A"]).unwrap();
        assert_eq!(capture.names(), ["x-tenant", "user-agent", "x-a"]);
        assert_eq!(capture.kernel().count, 3);
        assert_eq!(CaptureHeaders::default().kernel().count, 0);
        for bad in ["", "x tenant", "x:y", "é", &"a".repeat(33)] {
            assert!(
                matches!(names(&[bad]), Err(CaptureHeaderError::Name(_))),
                "{bad:?}"
            );
        }
        let nine: Vec<String> = (0..9).map(|i| format!("x-{i}")).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(matches!(
            names(&nine),
            Err(CaptureHeaderError::TooMany(9, 8))
        ));
        assert!(names(&nine[..8]).is_ok());
    }

    #[test]
    fn the_trace_context_follows_the_users_names_and_is_not_exported() {
        let capture = with_context(&["x-a"], true).unwrap();
        assert_eq!(capture.names(), ["x-a", "traceparent", "tracestate"]);
        assert_eq!(capture.exported(), 1);
        let capture = with_context(&["TraceParent"], true).unwrap();
        assert_eq!(capture.names(), ["traceparent", "tracestate"]);
        assert_eq!(capture.exported(), 1, "named, it is exported too");
        assert_eq!(with_context(&[], false).unwrap().kernel().count, 0);
        let seven = ["a", "b", "c", "d", "e", "f", "g"];
        assert!(matches!(
            with_context(&seven, true),
            Err(CaptureHeaderError::TooMany(7, 6))
        ));
    }
}
