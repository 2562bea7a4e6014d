//! Kernel timestamps are `CLOCK_MONOTONIC`; spans want wall-clock time. The
//! offset between the two is read once, at start-up.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock unix nanoseconds at monotonic zero.
    boot_unix_ns: u64,
}

impl Clock {
    pub fn new() -> Self {
        let mut mono = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono) };
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mono = mono.tv_sec as u64 * 1_000_000_000 + mono.tv_nsec as u64;
        Self {
            boot_unix_ns: wall.saturating_sub(mono),
        }
    }

    pub fn unix_ns(&self, monotonic_ns: u64) -> u64 {
        self.boot_unix_ns + monotonic_ns
    }

    pub fn system_time(&self, monotonic_ns: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.unix_ns(monotonic_ns))
    }

    /// The monotonic time now, in the kernel's clock.
    pub fn monotonic_now_ns() -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
