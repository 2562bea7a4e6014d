//! The traced process tree as `/proc` shows it: descendants of the given
//! pids at start-up (later forks are followed in the kernel), liveness, and
//! the TCP ports the tree listens on.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs,
    io::{BufRead as _, BufReader},
};

/// `pid` and every process below it.
pub fn tree_of(roots: &[u32]) -> BTreeSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(parent) = parent_of(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut tree = BTreeSet::new();
    let mut queue: Vec<u32> = roots.to_vec();
    while let Some(pid) = queue.pop() {
        if tree.insert(pid) {
            queue.extend(children.get(&pid).into_iter().flatten());
        }
    }
    tree
}

pub fn is_alive(pid: u32) -> bool {
    // A zombie has exited: it serves nothing.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// The executable's name, for a default service name.
pub fn command_name(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim().to_owned())
}

/// Every process of the host.
pub fn all_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}

/// Whether `task` is a process (its thread group's leader), not a thread.
pub fn is_process(task: u32) -> bool {
    fs::read_to_string(format!("/proc/{task}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Tgid:"))
            .and_then(|tgid| tgid.trim().parse::<u32>().ok())
            == Some(task)
    })
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: parse after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Local ports of TCP sockets in LISTEN state held by any of `pids`.
pub fn listening_ports(pids: &BTreeSet<u32>) -> BTreeSet<u16> {
    let mut inodes = HashSet::new();
    // Reading /proc/<pid>/net/tcp walks the namespace's whole socket table
    // (milliseconds on a busy host): read it once per network namespace.
    let mut namespaces = HashMap::new();
    for pid in pids {
        inodes.extend(socket_inodes(*pid));
        if let Ok(namespace) = fs::metadata(format!("/proc/{pid}/ns/net")) {
            use std::os::unix::fs::MetadataExt as _;
            namespaces.entry(namespace.ino()).or_insert(*pid);
        }
    }
    let mut ports = BTreeSet::new();
    for pid in namespaces.into_values() {
        for table in ["tcp", "tcp6"] {
            let listeners = listeners_in(&format!("/proc/{pid}/net/{table}"));
            ports.extend(
                listeners
                    .into_iter()
                    .filter(|(inode, _)| inodes.contains(inode))
                    .map(|(_, port)| port),
            );
        }
    }
    ports
}

/// The inode and local port of each listening socket in a `/proc/net/tcp`
/// table. The kernel lists the listening sockets before all others, so the
/// read stops at the first other one: a busy host's table holds tens of
/// thousands of connections (TIME_WAIT included) that would cost
/// milliseconds to list.
fn listeners_in(path: &str) -> Vec<(u64, u16)> {
    let Ok(file) = fs::File::open(path) else {
        return Vec::new();
    };
    listening_sockets(BufReader::new(file).lines().map_while(Result::ok))
}

/// The inodes of the sockets among `pid`'s open files.
fn socket_inodes(pid: u32) -> impl Iterator<Item = u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| socket_inode(&fs::read_link(fd.path()).ok()?.to_string_lossy()))
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The LISTEN state in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// What a `/proc/net/tcp` line (`sl local rem st ... uid timeout inode`) says.
enum TableLine {
    Listening { inode: u64, port: u16 },
    OtherState,
    Malformed,
}

fn table_line(line: &str) -> TableLine {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
    else {
        return TableLine::Malformed;
    };
    if *state != LISTEN {
        return TableLine::OtherState;
    }
    let port = local
        .rsplit_once(':')
        .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
    match (port, inode.parse()) {
        (Some(port), Ok(inode)) => TableLine::Listening { inode, port },
        _ => TableLine::Malformed,
    }
}

/// The listening sockets of a table's lines (its header first), up to the
/// first socket in another state; malformed lines are skipped.
fn listening_sockets(lines: impl Iterator<Item = impl AsRef<str>>) -> Vec<(u64, u16)> {
    lines
        .skip(1)
        .map(|line| table_line(line.as_ref()))
        .take_while(|line| !matches!(line, TableLine::OtherState))
        .filter_map(|line| match line {
            TableLine::Listening { inode, port } => Some((inode, port)),
            TableLine::OtherState | TableLine::Malformed => None,
        })
        .collect()
}

/// The processes of this network namespace listening on any of `ports`,
/// with the ports each holds (a forked server's workers share its socket).
pub fn listeners_on(ports: &BTreeSet<u16>) -> HashMap<u32, BTreeSet<u16>> {
    let mut wanted = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        wanted.extend(
            listeners_in(table)
                .into_iter()
                .filter(|(_, port)| ports.contains(port)),
        );
    }
    let mut listeners: HashMap<u32, BTreeSet<u16>> = HashMap::new();
    if wanted.is_empty() {
        return listeners;
    }
    for pid in all_pids() {
        for inode in socket_inodes(pid) {
            if let Some(port) = wanted.get(&inode) {
                listeners.entry(pid).or_default().insert(*port);
            }
        }
    }
    listeners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_and_its_listener() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(tree_of(&[me]).contains(&me));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A connection lists after the listeners: the read stops before it.
        let connection = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let connection_port = connection.local_addr().unwrap().port();
        let listeners = listeners_in("/proc/net/tcp");
        assert!(listeners.iter().any(|(_, listening)| *listening == port));
        assert!(
            listeners
                .iter()
                .all(|(_, listening)| *listening != connection_port)
        );
        assert!(listening_ports(&BTreeSet::from([me])).contains(&port));
        let listeners = listeners_on(&BTreeSet::from([port]));
        assert_eq!(listeners.get(&me), Some(&BTreeSet::from([port])));
    }

    #[test]
    fn parses_a_tcp_table() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n   1: 0100007F:1F91 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0 100 0 0 10 0\n";
        assert_eq!(listening_sockets(text.lines()), vec![(12345, 8080)]);
        let malformed_first = format!(
            "{}garbage\n{}",
            &text[..text.find('\n').unwrap() + 1],
            &text[text.find('\n').unwrap() + 1..]
        );
        assert_eq!(
            listening_sockets(malformed_first.lines()),
            vec![(12345, 8080)],
            "a malformed line is skipped, not the end"
        );
        let listener_after_a_connection = format!(
            "{text}   2: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12347 1 0 100 0 0 10 0\n"
        );
        assert_eq!(
            listening_sockets(listener_after_a_connection.lines()),
            vec![(12345, 8080)],
            "the read stops at the first socket in another state"
        );
    }
}
