//! The OpenSSL uprobes, per traced process: loaded with the other
//! programs, attached for each process that maps a libssl defining the
//! functions (`openssl.rs` finds them), for that process alone, so that no
//! other process on the host pays a uprobe hit; detached when it exits.
//! A forked child gets its own attachment: a perf-event uprobe follows
//! one process, not its children.
use std::{collections::HashMap, num::NonZeroU32, sync::mpsc::Sender};

use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeLink, UProbeLinkId, UProbeScope},
    },
};

use super::openssl::{Finder, Form, Function, Library, OpenSslError};
use crate::events::Direction;

/// The programs: an entry per function, one return for all.
const RETURN: &str = "ssl_call_return";
const PROGRAMS: [&str; 5] = [
    "ssl_read_entry",
    "ssl_read_ex_entry",
    "ssl_write_entry",
    "ssl_write_ex_entry",
    RETURN,
];

/// The entry program of `function`.
fn entry(function: &Function) -> &'static str {
    match (function.direction, function.form) {
        (Direction::Recv, Form::Count) => PROGRAMS[0],
        (Direction::Recv, Form::Ex) => PROGRAMS[1],
        (Direction::Send, Form::Count) => PROGRAMS[2],
        (Direction::Send, Form::Ex) => PROGRAMS[3],
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UprobeError {
    #[error(transparent)]
    OpenSsl(#[from] OpenSslError),
    #[error("the BPF object has no program {0} (build mismatch)")]
    MissingProgram(&'static str),
    #[error("cannot load {program}: {source}")]
    Load {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot attach {program} to {function} in {library}: {source}")]
    Attach {
        program: &'static str,
        function: &'static str,
        library: String,
        #[source]
        source: Box<ProgramError>,
    },
}

/// The loaded programs' attachments, by process.
pub struct TlsProbes {
    finder: Finder,
    closer: Sender<UProbeLink>,
    attached: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
}

impl TlsProbes {
    /// Loads the programs (the verifier checks them now, once).
    pub fn load(ebpf: &mut Ebpf) -> Result<Self, UprobeError> {
        for name in PROGRAMS {
            program(ebpf, name)?
                .load()
                .map_err(|source| UprobeError::Load {
                    program: name,
                    source: Box::new(source),
                })?;
        }
        Ok(Self {
            finder: Finder::default(),
            closer: closing_thread(),
            attached: HashMap::new(),
        })
    }

    /// Whether `pid` has the uprobes.
    pub fn is_attached(&self, pid: u32) -> bool {
        self.attached.contains_key(&pid)
    }

    /// Attaches the uprobes for `pid` to its libssl: returns the library,
    /// or why not (nothing is left attached then).
    pub fn attach(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<Library, UprobeError> {
        let library = self.finder.find(pid)?;
        let Some(scope) = NonZeroU32::new(pid).map(UProbeScope::OneProcess) else {
            return Err(OpenSslError::NoLibrary { static_in: None }.into());
        };
        let mut links = Vec::new();
        // Returns before entries: a return without its entry does nothing,
        // an entry without its return would leave its call noted.
        let order = |entries: bool| {
            library.functions.iter().map(move |(function, offset)| {
                let program = if entries { entry(function) } else { RETURN };
                (program, function.name, *offset)
            })
        };
        for (name, function, offset) in order(false).chain(order(true)) {
            let attached = program(ebpf, name).and_then(|program| {
                program
                    .attach(offset, &library.path, scope)
                    .map_err(|source| UprobeError::Attach {
                        program: name,
                        function,
                        library: library.mapped.clone(),
                        source: Box::new(source),
                    })
            });
            match attached {
                Ok(link) => links.push((name, link)),
                Err(err) => {
                    detach_links(ebpf, &self.closer, links);
                    return Err(err);
                }
            }
        }
        self.attached.insert(pid, links);
        Ok(library)
    }

    /// Detaches `pid`'s uprobes, if it had them (it exited).
    pub fn detach(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if let Some(links) = self.attached.remove(&pid) {
            detach_links(ebpf, &self.closer, links);
        }
    }
}

/// Detaches `links` off the caller's thread, one at a time: closing a
/// uprobe link waits for RCU grace periods (about a quarter of a second
/// here) under a lock that attaching takes too, so a worker's eight closed
/// in line stalled the event loop for two seconds, and eight closed at once
/// held back the attachment of every worker forked meanwhile.
fn detach_links(
    ebpf: &mut Ebpf,
    closer: &Sender<UProbeLink>,
    links: Vec<(&'static str, UProbeLinkId)>,
) {
    for (name, link) in links {
        if let Ok(link) = program(ebpf, name).and_then(|program| {
            program
                .take_link(link)
                .map_err(|_| UprobeError::MissingProgram(name))
        }) {
            // With the closing thread gone, the link is closed here.
            let _ = closer.send(link);
        }
    }
}

/// The thread that closes detached links, one after the other.
fn closing_thread() -> Sender<UProbeLink> {
    let (closer, links) = std::sync::mpsc::channel::<UProbeLink>();
    let started = std::thread::Builder::new()
        .name("uprobe-detach".into())
        .spawn(move || links.into_iter().for_each(drop));
    if let Err(err) = started {
        log::warn!("cannot start the uprobe-detaching thread ({err}); links close in line");
    }
    closer
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, UprobeError> {
    ebpf.program_mut(name)
        .and_then(|program| <&mut UProbe>::try_from(program).ok())
        .ok_or(UprobeError::MissingProgram(name))
}
