//! What `/proc` tells of one process, for matching selectors and naming it.
use std::{fs, path::PathBuf};

use super::cgroup;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub parent: Option<u32>,
    /// `/proc/<pid>/exe`: unreadable for another user's process without
    /// CAP_SYS_PTRACE, and for kernel threads.
    pub exe: Option<PathBuf>,
    /// The kernel's name of the task: the file the process executed (a
    /// script's name for `#!` scripts, as `gunicorn` under Python).
    pub comm: String,
    pub argv: Vec<String>,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
    /// Clock ticks after boot at which it started: with the pid, it names
    /// this process and no later one that reuses the pid.
    pub start_ticks: u64,
}

impl ProcessInfo {
    /// `None` when the process is gone (or was never there).
    pub fn read(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, fields) = parse_stat(&stat)?;
        let argv = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|bytes| split_cmdline(&bytes))
            .unwrap_or_default();
        Some(Self {
            pid,
            parent: fields.parent,
            exe: fs::read_link(format!("/proc/{pid}/exe")).ok(),
            comm,
            argv,
            cgroup: cgroup::of_process(pid),
            start_ticks: fields.start_ticks,
        })
    }

    /// The executable's file name, for `process.executable.name`.
    pub fn executable_name(&self) -> Option<String> {
        let exe = self.exe.as_ref()?;
        Some(exe.file_name()?.to_string_lossy().into_owned())
    }

    /// The runtime, where the executable says it (`process.runtime.name`).
    pub fn runtime_name(&self) -> Option<&'static str> {
        let name = self.executable_name()?;
        name.starts_with("python").then_some("cpython")
    }

    /// The names a `--exe` pattern is matched against: the executable's
    /// path and name, the task name, the program and script of the command
    /// line (path and name each), and the whole command line.
    pub fn exe_candidates(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut add_path = |path: &str| {
            if path.is_empty() {
                return;
            }
            names.push(path.to_owned());
            if let Some((_, file)) = path.rsplit_once('/') {
                names.push(file.to_owned());
            }
        };
        if let Some(exe) = &self.exe {
            add_path(&exe.to_string_lossy());
        }
        for arg in self.argv.iter().take(2) {
            add_path(arg);
        }
        names.push(self.comm.clone());
        if !self.argv.is_empty() {
            names.push(self.argv.join(" "));
        }
        names
    }
}

struct StatFields {
    parent: Option<u32>,
    start_ticks: u64,
}

/// `pid (comm) state ppid ...`: the name may hold spaces and parentheses,
/// so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<(String, StatFields)> {
    let open = stat.find('(')?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.get(open + 1..)?.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... starttime(19).
    let parent = fields.get(1)?.parse().ok().filter(|&ppid| ppid != 0);
    let start_ticks = fields.get(19)?.parse().ok()?;
    Some((
        comm,
        StatFields {
            parent,
            start_ticks,
        },
    ))
}

fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&byte| byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = ProcessInfo::read(std::process::id()).expect("alive");
        assert_eq!(me.parent, Some(std::os::unix::process::parent_id()));
        assert!(me.exe.is_some() && !me.argv.is_empty() && me.start_ticks > 0);
        assert!(ProcessInfo::read(u32::MAX).is_none());
    }

    #[test]
    fn parses_odd_names_and_a_scripts_command_line() {
        let stat = "42 (gun (icorn) x) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1 1";
        let (comm, fields) = parse_stat(stat).unwrap();
        assert_eq!(comm, "gun (icorn) x");
        assert_eq!(fields.parent, Some(7));
        assert_eq!(fields.start_ticks, 12345);
        let script = ProcessInfo {
            exe: Some("/usr/bin/python3.11".into()),
            comm: "gunicorn".into(),
            argv: split_cmdline(b"/venv/bin/python\0/venv/bin/gunicorn\0app:app\0"),
            ..Default::default()
        };
        let names = script.exe_candidates();
        for expected in ["python3.11", "/venv/bin/gunicorn", "gunicorn"] {
            assert!(names.iter().any(|name| name == expected), "{expected}");
        }
        assert_eq!(script.runtime_name(), Some("cpython"));
    }
}
