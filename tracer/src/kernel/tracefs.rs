//! tracefs, for `tracer doctor` only: which tracepoints and kprobe support
//! this kernel has. The programs need none of it (raw tracepoints, fentry
//! and kprobes attach without tracefs; offsets come from BTF).
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); run `mount -t tracefs tracefs /sys/kernel/tracing` as root"
    )]
    NotMounted(std::io::Error),
    #[error(
        "cannot read tracefs at {0}: permission denied (it is root-only: run as root or grant CAP_DAC_READ_SEARCH)"
    )]
    Unreadable(PathBuf),
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounted on `/sys/kernel/tracing` if nothing is.
pub fn root() -> Result<PathBuf, TracefsError> {
    for candidate in CANDIDATES.iter().map(Path::new) {
        match std::fs::read_dir(candidate.join("events")) {
            Ok(_) => return Ok(candidate.to_path_buf()),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(TracefsError::Unreadable(candidate.to_path_buf()));
            }
            Err(_) => {}
        }
    }
    mount(CANDIDATES[0]).map_err(TracefsError::NotMounted)?;
    Ok(PathBuf::from(CANDIDATES[0]))
}

fn mount(target: &str) -> std::io::Result<()> {
    let source = c"tracefs";
    let target_c = std::ffi::CString::new(target).map_err(std::io::Error::other)?;
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
