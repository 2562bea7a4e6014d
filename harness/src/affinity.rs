//! CPU pinning of the harness itself (`sched_setaffinity`).
//!
//! The app is pinned to core 0 with `taskset`; the harness (load generator,
//! sink) and the tracer go to the other core so they do not steal the app's
//! CPU. Threads inherit the mask, so pin before starting any runtime.

use std::io;

/// Pins the calling thread (and the threads it creates later) to `core`.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set`; out-of-range cores are ignored by
    // the macro's bounds check, and the kernel rejects an empty set.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: pid 0 means the calling thread; `set` outlives the call.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Number of CPUs online on the machine (not just those this thread may use).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}
