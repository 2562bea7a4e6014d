//! The contract between the kernel programs and the daemon: event records,
//! map values, configuration handed to the programs, and the limits both
//! sides agree on. Every type is `#[repr(C)]` with explicit padding so the
//! byte layout is the same on both sides; discriminants never change.
#![no_std]

pub mod header_capture;
pub mod header_scan;
pub mod swar;

/// Bytes of a read or write copied into an event. Only buffers that start
/// an HTTP message, or continue its header block, are copied; bodies never.
/// The request or status line and the first headers fit; a longer head
/// keeps its first line (the daemon falls back to it). Spans use no more,
/// and a small record keeps the ring buffer's bandwidth low.
pub const CAPTURE_LEN: usize = 256;
/// Process (and thread) ids the kernel programs treat as traced.
pub const MAX_TRACED_TASKS: u32 = 16_384;
/// Connections tracked at once (an LRU map: the oldest idle one goes first).
pub const MAX_CONNECTIONS: u32 = 65_536;
/// Local ports the traced tree listens on, for accept-queue timestamps.
pub const MAX_LISTEN_PORTS: u32 = 256;
/// Ports `--port` selectors watch, ranges expanded.
pub const MAX_WATCHED_PORTS: u32 = 4096;
/// Size of the one ring buffer that carries every event.
pub const RING_BUFFER_BYTES: u32 = 16 << 20;
/// Records are submitted without waking the daemon, which drains the ring on
/// a short timer (see `tracer::daemon`); a wakeup is forced only once this
/// many bytes wait. One wakeup per event would cost the daemon far more CPU
/// per request than all the programs together.
pub const RING_WAKEUP_BYTES: u64 = RING_BUFFER_BYTES as u64 / 8;

/// What a record on the ring buffer is. The first four bytes of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Data = 1,
    ConnOpen = 2,
    ConnClose = 3,
    TaskFork = 4,
    TaskExit = 5,
    /// A process of the host replaced its image (only while a selector
    /// needs it: executable, cgroup or unit).
    ProcessExec = 6,
    /// A traced process, or one listening on a watched port, started listening.
    SocketListen = 7,
    /// The value of a `--capture-header` header, just before its data record.
    Header = 8,
}

impl EventKind {
    pub fn from_u32(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Data,
            2 => Self::ConnOpen,
            3 => Self::ConnClose,
            4 => Self::TaskFork,
            5 => Self::TaskExit,
            6 => Self::ProcessExec,
            7 => Self::SocketListen,
            8 => Self::Header,
            _ => return None,
        })
    }
}

/// Common first field of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// Process id (tgid) of the task the event happened in; 0 in softirq.
    pub tgid: u32,
    /// `bpf_ktime_get_ns`: monotonic, the daemon maps it to wall-clock time.
    pub timestamp_ns: u64,
}

/// Direction of a [`DataEvent`].
pub const DIRECTION_RECV: u8 = 0;
pub const DIRECTION_SEND: u8 = 1;

/// A completed read or write on a TCP socket of a traced process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
    /// Kernel address of the `struct sock`: the connection's identity while it lives.
    pub sock: u64,
    pub tid: u32,
    /// `DIRECTION_RECV` or `DIRECTION_SEND`.
    pub direction: u8,
    pub _pad: [u8; 3],
    /// Bytes the syscall moved.
    pub bytes: u32,
    /// Bytes copied into `payload` (0 when the buffer is body or unreadable).
    pub captured: u32,
    /// The connection's data records are numbered from 0, lost ones too, so
    /// that the daemon sees a gap instead of pairing the wrong messages.
    pub seq: u32,
    pub _pad2: u32,
    pub payload: [u8; CAPTURE_LEN],
}

/// [`HeaderEvent::flags`]: the value goes on past what was sent (longer
/// than [`header_capture::VALUE_LEN`], or past the bytes scanned).
pub const HEADER_TRUNCATED: u8 = 1;

/// The value of one named request header (`--capture-header`), found in a
/// read that starts a request or continues its head. Sent just before that
/// read's data record, whose `seq` it carries: the daemon gives it to the
/// request that record's bytes belong to.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeaderEvent {
    pub header: EventHeader,
    pub sock: u64,
    /// [`DataEvent::seq`] of the read it was found in.
    pub seq: u32,
    /// Index of the name in the daemon's list (the kernel's [`header_capture::CaptureNames`]).
    pub name: u8,
    /// [`HEADER_TRUNCATED`] or 0.
    pub flags: u8,
    /// Bytes of `value` that are the value.
    pub len: u16,
    pub value: [u8; header_capture::VALUE_LEN],
}

/// A connection seen for the first time by a traced process, or its end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    pub header: EventHeader,
    pub sock: u64,
    /// When the kernel completed the handshake (0 if it predates the tracer).
    pub established_ns: u64,
    pub meta: ConnMeta,
    /// [`ROLE_SERVER`] or [`ROLE_CLIENT`] ([`ROLE_UNKNOWN`] in a close of a
    /// connection that never carried a message).
    pub role: u8,
    /// 1 when its messages are the plaintext of a TLS connection (OpenSSL).
    pub tls: u8,
    pub _pad: [u8; 6],
}

/// Which end of a connection the traced process is ([`ConnState::role`]):
/// the server, when the socket's local port is one the traced tree listens
/// on or its first message was read; the client otherwise (it `connect()`ed
/// and wrote the first message).
pub const ROLE_UNKNOWN: u8 = 0;
pub const ROLE_SERVER: u8 = 1;
pub const ROLE_CLIENT: u8 = 2;

/// Addresses of a connection, as `inet_sock_set_state` reported them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    /// `AF_INET` (2), `AF_INET6` (10), or 0 when unknown.
    pub family: u16,
    pub local_port: u16,
    pub peer_port: u16,
    pub _pad: u16,
    /// IPv4 in the first four bytes, or the IPv6 address.
    pub peer_addr: [u8; 16],
}

impl ConnMeta {
    /// Addresses not seen (the connection predates the tracer).
    pub const fn unknown(family: u16) -> Self {
        Self {
            family,
            local_port: 0,
            peer_port: 0,
            _pad: 0,
            peer_addr: [0; 16],
        }
    }
}

/// A task forked by, or exiting from, the traced tree.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    pub header: EventHeader,
    /// The child for `TaskFork`, the exiting task id for `TaskExit`.
    pub task: u32,
    pub _pad: u32,
}

/// A TCP socket entering LISTEN in a traced process, or on a port a
/// `--port` selector watches (the kernel then traces the process itself, so
/// that its first connection is seen whatever the daemon is doing).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenEvent {
    pub header: EventHeader,
    /// Local port, host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Where a connection is in its current message, per direction, so that
/// only header blocks are ever copied out of a process.
pub const PHASE_START: u8 = 0;
pub const PHASE_HEADERS: u8 = 1;
pub const PHASE_BODY: u8 = 2;

/// Value of the kernel's connection map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    pub established_ns: u64,
    /// Traced process that reads and writes it; 0 until one does.
    pub owner_tgid: u32,
    pub recv_phase: u8,
    pub send_phase: u8,
    /// 1 once either direction started an HTTP message.
    pub is_http: u8,
    /// 1 when the last request bytes scanned for `--capture-header` ended
    /// at the start of a line, their head still open.
    pub recv_line_start: u8,
    /// Number of the next data record ([`DataEvent::seq`]).
    pub next_seq: u32,
    /// [`ROLE_UNKNOWN`] until the first message starts.
    pub role: u8,
    /// 1 once OpenSSL's plaintext of this socket was seen: from then on the
    /// socket's own bytes (ciphertext) are ignored, and its data records
    /// come from the TLS hooks alone.
    pub tls: u8,
    pub _pad2: [u8; 2],
    pub meta: ConnMeta,
}

impl ConnState {
    /// A connection at the start of its first message in both directions.
    pub const fn new(established_ns: u64, owner_tgid: u32, meta: ConnMeta) -> Self {
        Self {
            established_ns,
            owner_tgid,
            recv_phase: PHASE_START,
            send_phase: PHASE_START,
            is_http: 0,
            recv_line_start: 0,
            next_seq: 0,
            role: ROLE_UNKNOWN,
            tls: 0,
            _pad2: [0; 2],
            meta,
        }
    }
}

/// Indexes of the per-CPU counters the programs keep.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCounter {
    /// An event was lost because the ring buffer was full.
    RingBufferFull = 0,
    /// A user buffer could not be read (faulted or unknown syscall).
    CaptureFailed = 1,
    /// The connection map refused an insert.
    ConnTableFull = 2,
    /// The traced-task map refused an insert (a fork went untraced).
    TaskTableFull = 3,
    /// The record of a read that started a request was lost (ring buffer
    /// full): that request gets no span.
    RequestStartLost = 4,
    /// A named header may have been missed: a read ended inside a line
    /// that begins like one, a head went on past what is scanned, or a
    /// read had more values than one read may send.
    HeaderMissed = 5,
    /// OpenSSL handed over plaintext of a connection whose socket no call
    /// of it had touched yet (its bytes were buffered before): no record.
    TlsSocketUnknown = 6,
}

pub const KERNEL_COUNTERS: u32 = 7;

/// Where `struct task_struct` keeps the task id (from BTF): the fork hook is
/// a raw tracepoint, which receives the child's `task_struct` itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
}

/// Offsets of the `struct sock` fields the socket programs read (from BTF):
/// those programs are raw tracepoints, which receive the `sk` pointer itself
/// rather than a formatted record (formatting a record would cost every
/// socket operation and state change on the host, traced or not).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    pub family: u32,
    pub protocol: u32,
    /// Local port, host byte order (`skc_num`).
    pub local_port: u32,
    /// Peer port, network byte order (`skc_dport`).
    pub peer_port: u32,
    pub peer_addr_v4: u32,
    pub peer_addr_v6: u32,
}

/// Offsets into the task's saved user registers (`struct pt_regs`, from BTF)
/// and the syscall numbers of this architecture (from libc), so the programs
/// can find the user buffer of the syscall that moved the bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallAbi {
    pub regs_syscall_nr: u32,
    pub regs_arg1: u32,
    /// Syscalls whose second argument is the data buffer.
    pub plain_buffer: [i32; 6],
    /// Syscalls whose second argument is a `struct iovec *`.
    pub iovec: [i32; 4],
    /// Syscalls whose second argument is a `struct msghdr *`.
    pub msghdr: [i32; 2],
}

/// Everything the daemon hands the programs at load time (one read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    pub task: TaskOffsets,
    pub sock: SockOffsets,
    pub syscalls: SyscallAbi,
    pub tcp: TcpArgs,
}

/// Where `tcp_recvmsg` takes its `flags` (0-based, from BTF): the fentry and
/// kprobe sets read them to skip `MSG_PEEK`. Kernels before 5.19 had a
/// `nonblock` argument before them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpArgs {
    pub recvmsg_flags: u32,
}

/// Offsets of `struct iovec` and `struct msghdr` in the user ABI (x86_64 and
/// every other 64-bit Linux ABI).
pub const IOVEC_BASE: u64 = 0;
pub const MSGHDR_IOV: u64 = 16;

/// Linux constants the programs compare against (uapi, stable).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const MSG_PEEK: i32 = 2;
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_CLOSE_WAIT: i32 = 8;
pub const TCP_LAST_ACK: i32 = 9;
pub const TCP_LISTEN: i32 = 10;

/// Bytes of a buffer the kernel looks at to decide whether it starts a message.
pub const PREFIX_LEN: usize = 8;

/// The first bytes of every HTTP/1.x message start (methods, status line),
/// as little-endian words with a mask of their length, so the kernel can
/// test a prefix with a few word compares instead of byte loops (which the
/// verifier would have to walk one path at a time).
const MESSAGE_STARTS: [(u64, u64); 10] = [
    word(b"GET "),
    word(b"POST "),
    word(b"PUT "),
    word(b"HEAD "),
    word(b"DELETE "),
    word(b"PATCH "),
    word(b"OPTIONS "),
    word(b"CONNECT "),
    word(b"TRACE "),
    word(b"HTTP/1."),
];

const fn word(token: &[u8]) -> (u64, u64) {
    let mut value = 0u64;
    let mut mask = 0u64;
    let mut i = 0;
    while i < token.len() && i < PREFIX_LEN {
        value |= (token[i] as u64) << (8 * i);
        mask |= 0xff << (8 * i);
        i += 1;
    }
    (value, mask)
}

/// May a buffer whose first `len` bytes (at most [`PREFIX_LEN`]) are the
/// little-endian word `prefix` start an HTTP/1.x message? A buffer shorter
/// than a token counts when it is the token's beginning, so that a request
/// line split across reads is still followed.
#[inline(always)]
pub fn prefix_may_start_http_message(prefix: u64, len: usize) -> bool {
    if len == 0 {
        return false;
    }
    let len_mask = if len >= PREFIX_LEN {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    };
    let mut i = 0;
    while i < MESSAGE_STARTS.len() {
        let (token, token_mask) = MESSAGE_STARTS[i];
        if (prefix ^ token) & token_mask & len_mask == 0 {
            return true;
        }
        i += 1;
    }
    false
}

/// [`prefix_may_start_http_message`] for a byte slice.
pub fn may_start_http_message(bytes: &[u8]) -> bool {
    let len = if bytes.len() < PREFIX_LEN {
        bytes.len()
    } else {
        PREFIX_LEN
    };
    let mut word = [0u8; PREFIX_LEN];
    word[..len].copy_from_slice(&bytes[..len]);
    prefix_may_start_http_message(u64::from_le_bytes(word), len)
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain-old-data, `#[repr(C)]`, no implicit padding.
    unsafe impl aya::Pod for ConnState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for header_capture::CaptureNames {}
}

const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 16);
    assert!(core::mem::size_of::<DataEvent>() == 16 + 8 + 4 + 4 + 4 + 4 + 4 + 4 + CAPTURE_LEN);
    assert!(core::mem::size_of::<ConnMeta>() == 24);
    assert!(core::mem::size_of::<ConnEvent>() == 64);
    assert!(core::mem::size_of::<TaskEvent>() == 24);
    assert!(core::mem::size_of::<ListenEvent>() == 24);
    assert!(core::mem::size_of::<HeaderEvent>() == 32 + header_capture::VALUE_LEN);
    assert!(header_capture::VALUE_LEN <= u16::MAX as usize);
    assert!(header_capture::MAX_NAMES <= u8::MAX as usize);
    assert!(core::mem::size_of::<header_capture::CaptureNames>() == 8 + 8 * 128);
    assert!(core::mem::size_of::<ConnState>() == 48);
    assert!(CAPTURE_LEN.is_power_of_two());
    // The kernel scans the payload a u64 word at a time.
    assert!(core::mem::offset_of!(DataEvent, payload) % 8 == 0);
    // And a header value a word at a time.
    assert!(core::mem::offset_of!(HeaderEvent, value) % 8 == 0);
    assert!(header_capture::VALUE_LEN.is_multiple_of(8));
    assert!(CAPTURE_LEN.is_multiple_of(8));
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_starts() {
        assert!(may_start_http_message(b"GET /work HTTP/1.1"));
        assert!(may_start_http_message(b"HTTP/1.1 200 OK"));
        assert!(may_start_http_message(b"OPTIONS "));
        assert!(
            may_start_http_message(b"GE"),
            "a split request line is followed"
        );
        assert!(!may_start_http_message(b""));
        assert!(!may_start_http_message(b"0 1 2 3 4 5"));
        assert!(!may_start_http_message(b"GETX /"));
        assert!(!may_start_http_message(b"\x16\x03\x01\x02\x00\x01\x00\x01"));
    }
}
