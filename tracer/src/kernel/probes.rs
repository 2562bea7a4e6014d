//! The hook sets the tracer can run, behind one interface: each names the
//! programs to attach and where. Request assembly and export never know
//! which set produced the events.
//!
//! `SocketTracepoints` (the default, and the only set this repository's
//! build host offers without kprobes or fentry): `sock:sock_recv_length` /
//! `sock_send_length` fire only for socket I/O, so unlike `syscalls:*`
//! tracepoints they put no tax on the syscalls of other processes (see
//! DESIGN.md, "Mind the host-wide cost", and docs/hooks.md for figures).
use aya::{
    Ebpf,
    programs::{ProgramError, RawTracePoint, TracePoint},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeSet {
    /// Socket, TCP-state and scheduler tracepoints (kernel 6.3+ for the socket ones).
    SocketTracepoints,
}

/// A program of the object, and the tracepoint it attaches to.
pub struct Hook {
    pub program: &'static str,
    pub group: &'static str,
    pub name: &'static str,
    /// Raw tracepoints get the `TP_PROTO` arguments without the kernel first
    /// formatting a record: cheaper for hooks that fire on every socket
    /// operation of the host.
    pub raw: bool,
}

impl ProbeSet {
    /// Hooks in attach order: the process tree first, so no fork is missed,
    /// then connection life, then data.
    pub fn hooks(self) -> &'static [Hook] {
        match self {
            Self::SocketTracepoints => &[
                Hook {
                    program: "sched_process_fork",
                    group: "sched",
                    name: "sched_process_fork",
                    raw: false,
                },
                Hook {
                    program: "sched_process_exit",
                    group: "sched",
                    name: "sched_process_exit",
                    raw: false,
                },
                Hook {
                    program: "inet_sock_set_state",
                    group: "sock",
                    name: "inet_sock_set_state",
                    raw: true,
                },
                Hook {
                    program: "sock_recv_length",
                    group: "sock",
                    name: "sock_recv_length",
                    raw: true,
                },
                Hook {
                    program: "sock_send_length",
                    group: "sock",
                    name: "sock_send_length",
                    raw: true,
                },
            ],
        }
    }

    pub fn attach(self, ebpf: &mut Ebpf) -> Result<(), AttachError> {
        for hook in self.hooks() {
            let program = ebpf
                .program_mut(hook.program)
                .ok_or(AttachError::MissingProgram(hook.program))?;
            attach_one(program, hook).map_err(|source| AttachError::Program {
                hook: hook.program,
                source,
            })?;
        }
        Ok(())
    }
}

fn attach_one(program: &mut aya::programs::Program, hook: &Hook) -> Result<(), ProgramError> {
    if hook.raw {
        let program: &mut RawTracePoint = program.try_into()?;
        program.load()?;
        program.attach(hook.name)?;
    } else {
        let program: &mut TracePoint = program.try_into()?;
        program.load()?;
        program.attach(hook.group, hook.name)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("the BPF object has no program {0} (build mismatch)")]
    MissingProgram(&'static str),
    #[error("cannot load or attach {hook}: {source}")]
    Program {
        hook: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}
