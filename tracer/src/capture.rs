//! `--capture-header`: the request headers whose values the kernel sends.
//! Names are checked here, once, kept lowercase and in the order given; a
//! value's record carries the index of its name in this list, never the
//! name, so what a span calls a header is always the daemon's own word.
use std::str::FromStr;

use tracer_common::header_capture::{CaptureNames, MAX_NAME_LEN, MAX_NAMES, is_header_name};

#[derive(Debug, thiserror::Error)]
pub enum CaptureHeaderError {
    #[error(
        "invalid header name {0:?}: an HTTP token (letters, digits and !#$%&'*+-.^_`|~) of 1 to {MAX_NAME_LEN} bytes"
    )]
    Name(String),
    #[error(
        "--capture-header: {0} header names, at most {MAX_NAMES} (with the config file's capture_headers)"
    )]
    TooMany(usize),
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

/// The names to capture, and the kernel's patterns of them.
#[derive(Clone, Debug)]
pub struct CaptureHeaders {
    names: Vec<String>,
    kernel: CaptureNames,
}

impl Default for CaptureHeaders {
    fn default() -> Self {
        Self {
            names: Vec::new(),
            kernel: CaptureNames::NONE,
        }
    }
}

impl CaptureHeaders {
    /// `names` in order, a name given twice kept once.
    pub fn new(names: impl IntoIterator<Item = HeaderName>) -> Result<Self, CaptureHeaderError> {
        let mut unique: Vec<String> = Vec::new();
        for HeaderName(name) in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        let bytes: Vec<&[u8]> = unique.iter().map(|name| name.as_bytes()).collect();
        let kernel = CaptureNames::new(&bytes).ok_or(CaptureHeaderError::TooMany(unique.len()))?;
        Ok(Self {
            names: unique,
            kernel,
        })
    }

    /// Lowercase, by the index the kernel's records carry.
    pub fn names(&self) -> &[String] {
        &self.names
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
        let parsed: Result<Vec<HeaderName>, _> = texts.iter().map(|text| text.parse()).collect();
        CaptureHeaders::new(parsed?)
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
        assert!(matches!(names(&nine), Err(CaptureHeaderError::TooMany(9))));
        assert!(names(&nine[..8]).is_ok());
    }
}
