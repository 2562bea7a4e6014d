//! The hook sets the tracer can run, behind one interface: each names the
//! programs to attach and where. Request assembly and export never know
//! which set produced the events. All three share the process-tree and
//! TCP-state tracepoints; they differ in where socket data is seen:
//!
//! - `Tracepoints`: `sock:sock_recv_length` / `sock_send_length` (6.3+).
//!   They fire only for socket I/O, so unlike `syscalls:*` tracepoints they
//!   tax no other syscall of the host, but they fire for every socket family
//!   (unix sockets included) of every process.
//! - `Fentry`: fexit on `tcp_recvmsg` / `tcp_sendmsg` (BPF trampolines,
//!   5.17+ for the return value): fire only for TCP.
//! - `Kprobes`: kprobe + kretprobe on the same functions: fire only for
//!   TCP, but a kretprobe hit costs more than a trampoline, and they attach
//!   through perf_event_open (root, or `kernel.perf_event_paranoid` ≤ 2).
//!
//! `--probes auto` tries them in [`ProbeSet::AUTO_ORDER`] and keeps the first
//! this kernel accepts: fentry first (TCP only, the cheapest entry), then the
//! socket tracepoints (every socket operation of the host pays one program
//! run), then kprobes, as measured on one kernel with all three
//! (docs/probe-sets.md).
use aya::{
    Btf, Ebpf,
    programs::{FExit, KProbe, ProgramError, RawTracePoint},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeChoice {
    /// The cheapest set this kernel accepts.
    Auto,
    Tracepoints,
    Fentry,
    Kprobes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSet {
    Tracepoints,
    Fentry,
    Kprobes,
}

/// Where one program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    /// Raw tracepoints get the `TP_PROTO` arguments without the kernel first
    /// formatting a record (cheaper for hooks that fire on every socket
    /// operation of the host), and attach without perf_event_open, which
    /// Debian's `kernel.perf_event_paranoid=3` refuses to CAP_PERFMON alone.
    RawTracepoint(&'static str),
    Fexit(&'static str),
    Kprobe(&'static str),
    Kretprobe(&'static str),
}

/// A program of the object, and where it attaches.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub program: &'static str,
    pub attach: Attach,
}

/// Process tree first, so no fork is missed, then connection life.
const COMMON: [Hook; 3] = [
    Hook {
        program: "sched_process_fork",
        attach: Attach::RawTracepoint("sched_process_fork"),
    },
    Hook {
        program: "sched_process_exit",
        attach: Attach::RawTracepoint("sched_process_exit"),
    },
    Hook {
        program: "inet_sock_set_state",
        attach: Attach::RawTracepoint("inet_sock_set_state"),
    },
];

/// Every exec of the host, for the selectors that match a new image
/// (executable, cgroup, unit); attached only when one is given.
const EXEC: Hook = Hook {
    program: "sched_process_exec",
    attach: Attach::RawTracepoint("sched_process_exec"),
};

const TRACEPOINT_DATA: [Hook; 2] = [
    Hook {
        program: "sock_recv_length",
        attach: Attach::RawTracepoint("sock_recv_length"),
    },
    Hook {
        program: "sock_send_length",
        attach: Attach::RawTracepoint("sock_send_length"),
    },
];

/// The fexit on `tcp_recvmsg` comes in one program per form of the
/// function ([`RecvmsgForm`]), chosen at load.
const FENTRY_SEND: Hook = Hook {
    program: "tcp_sendmsg_exit",
    attach: Attach::Fexit("tcp_sendmsg"),
};

/// The forms of `tcp_recvmsg` the fexit programs can read, by parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvmsgForm {
    /// 5.19 to 6.x: `(sk, msg, len, flags, addr_len)`.
    WithAddrLen,
    /// Later: `(sk, msg, len, flags)`.
    WithoutAddrLen,
}

impl RecvmsgForm {
    pub fn from_params(params: &[String]) -> Option<Self> {
        match params {
            [sk, msg, len, flags, rest @ ..]
                if [sk, msg, len, flags] == ["sk", "msg", "len", "flags"] =>
            {
                match rest {
                    [] => Some(Self::WithoutAddrLen),
                    [addr_len] if addr_len == "addr_len" => Some(Self::WithAddrLen),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn program(self) -> &'static str {
        match self {
            Self::WithAddrLen => "tcp_recvmsg_exit",
            Self::WithoutAddrLen => "tcp_recvmsg4_exit",
        }
    }
}

/// Entries before returns, so no return finds its call unrecorded.
const KPROBE_DATA: [Hook; 4] = [
    Hook {
        program: "tcp_recvmsg_entry",
        attach: Attach::Kprobe("tcp_recvmsg"),
    },
    Hook {
        program: "tcp_sendmsg_entry",
        attach: Attach::Kprobe("tcp_sendmsg"),
    },
    Hook {
        program: "tcp_recvmsg_return",
        attach: Attach::Kretprobe("tcp_recvmsg"),
    },
    Hook {
        program: "tcp_sendmsg_return",
        attach: Attach::Kretprobe("tcp_sendmsg"),
    },
];

impl ProbeSet {
    pub const AUTO_ORDER: [ProbeSet; 3] = [Self::Fentry, Self::Tracepoints, Self::Kprobes];

    pub fn name(self) -> &'static str {
        match self {
            Self::Tracepoints => "tracepoints",
            Self::Fentry => "fentry",
            Self::Kprobes => "kprobes",
        }
    }

    /// The candidates for a choice, in the order to try them.
    pub fn candidates(choice: ProbeChoice) -> Vec<ProbeSet> {
        match choice {
            ProbeChoice::Auto => Self::AUTO_ORDER.to_vec(),
            ProbeChoice::Tracepoints => vec![Self::Tracepoints],
            ProbeChoice::Fentry => vec![Self::Fentry],
            ProbeChoice::Kprobes => vec![Self::Kprobes],
        }
    }

    /// Hooks in attach order; `recvmsg` is this kernel's form of
    /// `tcp_recvmsg` (only the fentry set needs it); `watch_execs` adds the
    /// exec hook.
    pub fn hooks(self, recvmsg: RecvmsgForm, watch_execs: bool) -> Vec<Hook> {
        let fentry = [
            Hook {
                program: recvmsg.program(),
                attach: Attach::Fexit("tcp_recvmsg"),
            },
            FENTRY_SEND,
        ];
        let data: &[Hook] = match self {
            Self::Tracepoints => &TRACEPOINT_DATA,
            Self::Fentry => &fentry,
            Self::Kprobes => &KPROBE_DATA,
        };
        let exec = watch_execs.then_some(&EXEC);
        COMMON.iter().chain(exec).chain(data).copied().collect()
    }

    pub fn attach(
        self,
        ebpf: &mut Ebpf,
        btf: &Btf,
        recvmsg: RecvmsgForm,
        watch_execs: bool,
    ) -> Result<(), AttachError> {
        for hook in self.hooks(recvmsg, watch_execs) {
            let program = ebpf
                .program_mut(hook.program)
                .ok_or(AttachError::MissingProgram(hook.program))?;
            attach_one(program, hook.attach, btf).map_err(|source| AttachError::Program {
                hook: hook.program,
                source,
            })?;
        }
        Ok(())
    }
}

fn attach_one(
    program: &mut aya::programs::Program,
    attach: Attach,
    btf: &Btf,
) -> Result<(), ProgramError> {
    match attach {
        Attach::RawTracepoint(name) => {
            let program: &mut RawTracePoint = program.try_into()?;
            program.load()?;
            program.attach(name)?;
        }
        Attach::Fexit(function) => {
            let program: &mut FExit = program.try_into()?;
            program.load(function, btf)?;
            program.attach()?;
        }
        Attach::Kprobe(function) | Attach::Kretprobe(function) => {
            let program: &mut KProbe = program.try_into()?;
            program.load()?;
            program.attach(function, 0)?;
        }
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
