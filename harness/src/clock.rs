//! Clocks and a precise timer for the load generator.
//!
//! Schedules are kept in `CLOCK_MONOTONIC` nanoseconds. tokio's own timer
//! rounds every sleep up to the next millisecond tick, which would add up to
//! 1 ms to every latency measured from the intended send time; [`PreciseTimer`]
//! instead arms a `timerfd` (which applies no timer slack) shortly before the
//! absolute deadline and waits for it through the tokio reactor. Waking from
//! an idle CPU on these VMs takes 50–120 µs, so the timer fires
//! [`SPIN_MARGIN_NS`] early and the last stretch is spent yielding to the
//! runtime (which keeps polling I/O) until the deadline: the price is at most
//! that margin of CPU per sleep.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// How long before a deadline the timer fires; the rest is spent yielding.
pub const SPIN_MARGIN_NS: u64 = 150_000;

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks used here always
    // exist on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * NANOS_PER_SEC + ts.tv_nsec as u64
}

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn mono_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`).
pub fn unix_ns() -> u64 {
    now_ns(libc::CLOCK_REALTIME)
}

/// Maps monotonic timestamps to Unix time with one offset taken at creation.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    unix_minus_mono: i128,
}

impl WallClock {
    /// Samples both clocks once.
    pub fn now() -> Self {
        let mono = mono_ns();
        let unix = unix_ns();
        Self {
            unix_minus_mono: unix as i128 - mono as i128,
        }
    }

    /// The Unix time of a monotonic timestamp.
    pub fn to_unix(&self, mono: u64) -> u64 {
        (mono as i128 + self.unix_minus_mono).max(0) as u64
    }
}

/// A one-shot absolute timer on `CLOCK_MONOTONIC` with nanosecond precision.
#[derive(Debug)]
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    /// Creates the timerfd and registers it with the current tokio reactor.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant flags; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `owned` is an open timerfd that the AsyncFd takes ownership
        // of, so it stays open and refers to the same file for its lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Waits until `CLOCK_MONOTONIC` reaches `deadline_ns`; returns at once if
    /// it already has.
    pub async fn sleep_until(&mut self, deadline_ns: u64) -> io::Result<()> {
        let wake_ns = deadline_ns.saturating_sub(SPIN_MARGIN_NS);
        if mono_ns() < wake_ns {
            self.wait_timerfd(wake_ns).await?;
        }
        while mono_ns() < deadline_ns {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn wait_timerfd(&mut self, deadline_ns: u64) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (deadline_ns / NANOS_PER_SEC) as libc::time_t,
                tv_nsec: (deadline_ns % NANOS_PER_SEC) as libc::c_long,
            },
        };
        // SAFETY: the fd is a timerfd we own, `spec` is a valid itimerspec and
        // the old-value pointer may be null.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads exactly 8 bytes into a u64 we own, as timerfd requires.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    8,
                )
            };
            if n == 8 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err);
            }
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never early, whatever the machine's speed; how late it is, is a
    /// figure for the load generator's benchmark, not a test.
    #[tokio::test(flavor = "current_thread")]
    async fn precise_timer_never_wakes_before_its_deadline() {
        let mut timer = PreciseTimer::new().expect("timerfd");
        for _ in 0..21 {
            let deadline = mono_ns() + 1_300_000;
            timer.sleep_until(deadline).await.expect("sleep");
            let now = mono_ns();
            assert!(now >= deadline, "woke {} ns early", deadline - now);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn past_deadline_returns_immediately() {
        let mut timer = PreciseTimer::new().expect("timerfd");
        timer.sleep_until(0).await.expect("sleep");
    }

    #[test]
    fn wall_clock_maps_now_to_now() {
        let wall = WallClock::now();
        let diff = wall.to_unix(mono_ns()) as i128 - unix_ns() as i128;
        assert!(diff.abs() < 50_000_000);
    }
}
