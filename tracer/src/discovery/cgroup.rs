//! cgroup v2 as this host mounts it: hosts with v1 controllers mount the
//! unified hierarchy elsewhere (`/sys/fs/cgroup/unified` here), so the
//! mount is read from `/proc/self/mountinfo`, never assumed.
use std::path::{Path, PathBuf};

/// Where the cgroup v2 hierarchy is mounted, if it is.
pub fn v2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    v2_mount_in(&mountinfo)
}

/// `mountinfo` lines: `id parent major:minor root mount-point options ... - fstype source ...`.
fn v2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A `--cgroup` argument as a path inside the hierarchy (`/a/b`): either a
/// directory under the mount, or a hierarchy path that exists there.
pub fn resolve(argument: &Path, mount: &Path) -> Option<String> {
    let inside = match argument.strip_prefix(mount) {
        Ok(relative) => relative.to_path_buf(),
        Err(_) => argument.strip_prefix("/").unwrap_or(argument).to_path_buf(),
    };
    if !mount.join(&inside).is_dir() {
        return None;
    }
    let text = inside.to_str()?.trim_end_matches('/');
    Some(format!("/{text}"))
}

/// The process's cgroup v2 path (`0::/system.slice/web.service`).
pub fn of_process(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Whether `path` is `ancestor` or below it.
pub fn is_within(path: &str, ancestor: &str) -> bool {
    let ancestor = ancestor.trim_end_matches('/');
    ancestor.is_empty()
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The systemd service a cgroup path belongs to: its innermost `*.service`
/// component (scopes are skipped: container runtimes name them after ids).
pub fn unit_of(path: &str) -> Option<&str> {
    path.split('/')
        .rev()
        .find(|component| component.len() > ".service".len() && component.ends_with(".service"))
}

/// Whether a cgroup path lies in unit `name` (its own cgroup or one below).
pub fn in_unit(path: &str, name: &str) -> bool {
    path.split('/').any(|component| component == name)
}

/// The container id a cgroup path names, as container runtimes lay them
/// out (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `/docker/<id>`,
/// `crio-<id>`): a run of 64 hexadecimal digits.
pub fn container_id(path: &str) -> Option<&str> {
    path.split('/').rev().find_map(|component| {
        let bytes = component.as_bytes();
        (0..bytes.len().saturating_sub(63)).find_map(|start| {
            let run = &component[start..start + 64];
            let bounded = |at: Option<&u8>| at.is_none_or(|byte| !byte.is_ascii_hexdigit());
            (run.bytes().all(|byte| byte.is_ascii_hexdigit())
                && bounded(start.checked_sub(1).and_then(|before| bytes.get(before)))
                && bounded(bytes.get(start + 64)))
            .then_some(run)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_among_v1_controllers() {
        let mountinfo = "\
35 26 0:30 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            v2_mount_in(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(v2_mount_in("35 26 0:30 / /x rw - tmpfs tmpfs rw\n"), None);
    }

    #[test]
    fn this_host_has_a_v2_hierarchy_and_this_process_a_path_in_it() {
        let mount = v2_mount().expect("cgroup2 is mounted");
        assert_eq!(resolve(&mount, &mount).as_deref(), Some("/"));
        let mine = of_process(std::process::id()).expect("a v2 path");
        assert!(mine.starts_with('/'));
        assert!(resolve(Path::new("/no/such/cgroup"), &mount).is_none());
    }

    #[test]
    fn paths_units_and_containers() {
        assert!(is_within("/test/a", "/test"));
        assert!(is_within("/test", "/test/"));
        assert!(!is_within("/testing", "/test"));
        assert!(is_within("/anything", "/"));
        let path = "/system.slice/web.service/worker";
        assert_eq!(unit_of(path), Some("web.service"));
        assert!(in_unit(path, "web.service"));
        assert!(!in_unit(path, "web"));
        assert_eq!(unit_of("/user.slice"), None);
        let id = "3f2a".repeat(16);
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods/burstable/pod1/cri-containerd-{id}.scope"),
            format!("/docker/{id}"),
        ] {
            assert_eq!(container_id(&path), Some(id.as_str()), "{path}");
        }
        assert_eq!(container_id("/system.slice/web.service"), None);
        assert_eq!(container_id(&format!("/x/{id}0")), None, "65 digits");
    }
}
