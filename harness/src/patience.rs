//! How long to wait for a condition before calling it failed. Every wait in
//! the harness and the tests waits on a condition (a port answers, a
//! readiness message, a count reached); this module only sets the ceiling,
//! scaled by `TRACER_TEST_PATIENCE` (a factor, default 1), which the kernel
//! matrix sets when its guests run under software emulation. A ceiling is a
//! bound on a failure, never a pause: a healthy run never reaches it.
use std::{sync::OnceLock, time::Duration};

const VARIABLE: &str = "TRACER_TEST_PATIENCE";

/// `base` stretched by the machine's patience factor.
pub fn ceiling(base: Duration) -> Duration {
    base.mul_f64(factor())
}

/// The factor from `TRACER_TEST_PATIENCE`; 1 when unset. A value that is not
/// a number of at least 1 is refused loudly: a silent 1 would bring back the
/// flaky ceilings the variable exists to stretch.
pub fn factor() -> f64 {
    static FACTOR: OnceLock<f64> = OnceLock::new();
    *FACTOR.get_or_init(|| match std::env::var(VARIABLE) {
        Ok(text) => parse(&text).unwrap_or_else(|| {
            panic!("{VARIABLE}={text:?}: expected a number of at least 1, e.g. 10")
        }),
        Err(_) => 1.0,
    })
}

fn parse(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|factor| factor.is_finite() && *factor >= 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_below_one_or_not_numbers_are_refused() {
        assert_eq!(parse("10"), Some(10.0));
        assert_eq!(parse(" 2.5 "), Some(2.5));
        assert_eq!(parse("0.5"), None);
        assert_eq!(parse("fast"), None);
        assert_eq!(parse("inf"), None);
    }
}
