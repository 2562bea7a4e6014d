//! tracefs: where it is mounted (mounting it when it is not), and the field
//! offsets of the tracepoints the programs read, from their `format` files.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use tracer_common::TracepointOffsets;

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
    #[error("tracepoint {0} does not exist on this kernel ({1})")]
    MissingTracepoint(String, std::io::Error),
    #[error("tracepoint {tracepoint} has no field {field} (format changed?)")]
    MissingField { tracepoint: String, field: String },
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

/// Field name -> byte offset, from one tracepoint's `format` file.
pub struct Format {
    tracepoint: String,
    fields: HashMap<String, u32>,
}

impl Format {
    pub fn read(root: &Path, group: &str, name: &str) -> Result<Self, TracefsError> {
        let tracepoint = format!("{group}:{name}");
        let text =
            std::fs::read_to_string(root.join("events").join(group).join(name).join("format"))
                .map_err(|err| TracefsError::MissingTracepoint(tracepoint.clone(), err))?;
        Ok(Self::parse(tracepoint, &text))
    }

    /// Parses lines like `field:__u16 sport; offset:24; size:2; signed:0;`.
    pub fn parse(tracepoint: String, text: &str) -> Self {
        let fields = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.trim().split(';');
                let declaration = parts.next()?.strip_prefix("field:")?;
                let offset = parts.next()?.trim().strip_prefix("offset:")?.parse().ok()?;
                // The name is the last word, without any array suffix.
                let name = declaration.split_whitespace().last()?;
                let name = name.split('[').next()?;
                Some((name.to_owned(), offset))
            })
            .collect();
        Self { tracepoint, fields }
    }

    pub fn offset(&self, field: &str) -> Result<u32, TracefsError> {
        self.fields
            .get(field)
            .copied()
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.tracepoint.clone(),
                field: field.to_owned(),
            })
    }
}

/// The offsets of every field the programs read.
pub fn tracepoint_offsets(root: &Path) -> Result<TracepointOffsets, TracefsError> {
    let fork = Format::read(root, "sched", "sched_process_fork")?;
    Ok(TracepointOffsets {
        fork_child_pid: fork.offset("child_pid")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_format_file() {
        let text = "name: inet_sock_set_state\nID: 2287\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n\nprint fmt: \"x\"";
        let format = Format::parse("sock:inet_sock_set_state".into(), text);
        assert_eq!(format.offset("common_type").unwrap(), 0);
        assert_eq!(format.offset("skaddr").unwrap(), 8);
        assert_eq!(format.offset("daddr_v6").unwrap(), 56);
        assert!(format.offset("saddr").is_err());
    }
}
