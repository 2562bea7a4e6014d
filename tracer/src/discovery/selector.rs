//! Selectors and the services they make up. A service traces every process
//! any of its selectors selects, with all of that process's descendants.
use std::{collections::BTreeSet, fmt, str::FromStr};

use globset::{Glob, GlobMatcher};

use super::{cgroup, process::ProcessInfo};
use crate::telemetry::routes::RoutePattern;

#[derive(Clone, Debug)]
pub enum Selector {
    /// That process and its descendants.
    Pid(u32),
    /// Whatever listens on one of these ports, now or later.
    Ports(PortRange),
    /// An executable or command line matching a glob.
    Exe(ExePattern),
    /// A cgroup v2 path inside the hierarchy (`/a/b`), and everything below.
    Cgroup(String),
    /// A systemd unit (`web.service`): its cgroup and everything below.
    Unit(String),
}

/// One traced service: its selectors and options.
#[derive(Clone, Debug, Default)]
pub struct ServiceSpec {
    /// `service.name`, when the user gives one.
    pub name: Option<String>,
    pub selectors: Vec<Selector>,
    /// Keep query strings in `url.path`.
    pub keep_query: bool,
    pub routes: Vec<RoutePattern>,
}

impl ServiceSpec {
    /// Whether a process matches one of the selectors that a new image or
    /// the process's place can satisfy (everything but its ports and pid).
    pub fn selects_image(&self, process: &ProcessInfo) -> bool {
        self.selectors.iter().any(|selector| match selector {
            Selector::Exe(pattern) => pattern.matches(process),
            Selector::Cgroup(path) => process
                .cgroup
                .as_deref()
                .is_some_and(|own| cgroup::is_within(own, path)),
            Selector::Unit(name) => process
                .cgroup
                .as_deref()
                .is_some_and(|own| cgroup::in_unit(own, name)),
            Selector::Pid(_) | Selector::Ports(_) => false,
        })
    }

    pub fn selects_pid(&self, pid: u32) -> bool {
        self.selectors
            .iter()
            .any(|selector| matches!(selector, Selector::Pid(own) if *own == pid))
    }

    /// The pids of `--pid` selectors.
    pub fn pids(&self) -> Vec<u32> {
        self.selectors
            .iter()
            .filter_map(|selector| match selector {
                Selector::Pid(pid) => Some(*pid),
                _ => None,
            })
            .collect()
    }

    pub fn selects_port(&self, port: u16) -> bool {
        self.selectors
            .iter()
            .any(|selector| matches!(selector, Selector::Ports(range) if range.contains(port)))
    }

    /// Whether anything but `--pid` selects: then the tracer outlives the
    /// processes it traces, waiting for the next ones.
    pub fn waits_for_new_processes(&self) -> bool {
        self.selectors
            .iter()
            .any(|selector| !matches!(selector, Selector::Pid(_)))
    }

    /// Whether the exec hook is needed.
    pub fn watches_execs(&self) -> bool {
        self.selectors.iter().any(|selector| {
            matches!(
                selector,
                Selector::Exe(_) | Selector::Cgroup(_) | Selector::Unit(_)
            )
        })
    }

    pub fn ports(&self) -> BTreeSet<u16> {
        self.selectors
            .iter()
            .filter_map(|selector| match selector {
                Selector::Ports(range) => Some(range.first..=range.last),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// `8000` or `8000-8010`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let port = |part: &str| match part.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!(
                "{text:?} is not a port or a port range (1-65535, as 8000 or 8000-8010)"
            )),
            Ok(port) => Ok(port),
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => (port(text)?, port(text)?),
        };
        if first > last {
            return Err(format!("port range {text:?} ends before it starts"));
        }
        Ok(Self { first, last })
    }
}

/// A glob over a process's executable, script or command line
/// ([`ProcessInfo::exe_candidates`]).
#[derive(Clone, Debug)]
pub struct ExePattern {
    text: String,
    matcher: GlobMatcher,
}

impl ExePattern {
    pub fn matches(&self, process: &ProcessInfo) -> bool {
        process
            .exe_candidates()
            .iter()
            .any(|name| self.matcher.is_match(name))
    }
}

impl FromStr for ExePattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty executable pattern matches nothing".into());
        }
        let glob = Glob::new(text).map_err(|err| format!("bad pattern {text:?}: {err}"))?;
        Ok(Self {
            text: text.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }
}

impl fmt::Display for ExePattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

/// A `--cgroup` path: a directory under the cgroup v2 mount, or a path
/// inside the hierarchy; it must exist now.
pub fn cgroup_selector(text: &str) -> Result<Selector, String> {
    let mount = cgroup::v2_mount()
        .ok_or("no cgroup v2 hierarchy is mounted on this host (see /proc/self/mountinfo)")?;
    cgroup::resolve(std::path::Path::new(text), &mount)
        .map(Selector::Cgroup)
        .ok_or_else(|| {
            format!(
                "cgroup {text:?} does not exist (the cgroup v2 hierarchy is mounted at {})",
                mount.display()
            )
        })
}

/// A unit name as systemd spells it: `web` means `web.service`.
pub fn unit_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('/') {
        return Err(format!("{text:?} is not a systemd unit name"));
    }
    Ok(if text.contains('.') {
        text.to_owned()
    } else {
        format!("{text}.service")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunicorn() -> ProcessInfo {
        ProcessInfo {
            pid: 10,
            exe: Some("/usr/bin/python3.11".into()),
            comm: "gunicorn".into(),
            argv: vec![
                "/srv/venv/bin/python".into(),
                "/srv/venv/bin/gunicorn".into(),
                "app:app".into(),
            ],
            cgroup: Some("/system.slice/shop.service".into()),
            ..Default::default()
        }
    }

    fn service(selectors: Vec<Selector>) -> ServiceSpec {
        ServiceSpec {
            selectors,
            ..Default::default()
        }
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(
            "8000".parse::<PortRange>().unwrap(),
            PortRange {
                first: 8000,
                last: 8000
            }
        );
        let range: PortRange = "8000-8010".parse().unwrap();
        assert!(range.contains(8005) && !range.contains(8011));
        for bad in ["0", "65536", "http", "9-8", "8000-", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
        let spec = service(vec![Selector::Ports(range), Selector::Pid(3)]);
        assert_eq!(spec.ports().len(), 11);
        assert!(spec.selects_port(8010) && spec.selects_pid(3) && !spec.selects_pid(4));
        assert!(spec.waits_for_new_processes() && !spec.watches_execs());
        assert!(!service(vec![Selector::Pid(3)]).waits_for_new_processes());
    }

    #[test]
    fn executable_patterns_match_a_script_under_its_interpreter() {
        for (pattern, selects) in [
            ("gunicorn", true),
            ("*/venv/bin/gunicorn", true),
            ("python3*", true),
            ("*app:app*", true),
            ("uwsgi", false),
            ("guni", false),
        ] {
            let spec = service(vec![Selector::Exe(pattern.parse().unwrap())]);
            assert_eq!(spec.selects_image(&gunicorn()), selects, "{pattern}");
        }
        assert!("".parse::<ExePattern>().is_err());
        assert!("[".parse::<ExePattern>().is_err());
    }

    #[test]
    fn cgroups_and_units() {
        let process = gunicorn();
        assert!(service(vec![Selector::Cgroup("/system.slice".into())]).selects_image(&process));
        assert!(!service(vec![Selector::Cgroup("/user.slice".into())]).selects_image(&process));
        assert!(service(vec![Selector::Unit("shop.service".into())]).selects_image(&process));
        assert!(!service(vec![Selector::Unit("cart.service".into())]).selects_image(&process));
        assert_eq!(unit_name("shop").unwrap(), "shop.service");
        assert_eq!(unit_name("shop.socket").unwrap(), "shop.socket");
        assert!(unit_name("a/b").is_err());
    }
}
