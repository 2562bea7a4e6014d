//! The load-time configuration: one read-only global that the daemon fills
//! before loading. Because `.rodata` is frozen, the verifier sees its values
//! as constants.
use tracer_common::{KernelConfig, header_capture::CaptureNames};

#[unsafe(no_mangle)]
static CONFIG: KernelConfig = KernelConfig {
    task: tracer_common::TaskOffsets { pid: 0 },
    sock: tracer_common::SockOffsets {
        family: 0,
        protocol: 0,
        local_port: 0,
        peer_port: 0,
        peer_addr_v4: 0,
        peer_addr_v6: 0,
    },
    syscalls: tracer_common::SyscallAbi {
        regs_syscall_nr: 0,
        regs_arg1: 0,
        plain_buffer: [-1; 6],
        iovec: [-1; 4],
        msghdr: [-1; 2],
    },
    tcp: tracer_common::TcpArgs { recvmsg_flags: 3 },
};

/// Reads the configuration without letting the compiler fold the zeroes above.
#[inline(always)]
pub fn config() -> KernelConfig {
    // SAFETY: a plain read of an initialised static.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// The `--capture-header` names (none: capture is off).
#[unsafe(no_mangle)]
static CAPTURE_NAMES: CaptureNames = CaptureNames::NONE;

/// The names to capture. Through `black_box`, so that the compiler does not
/// fold the empty default; the verifier still sees every field as the
/// constant the daemon wrote.
#[inline(always)]
pub fn capture_names() -> &'static CaptureNames {
    core::hint::black_box(&CAPTURE_NAMES)
}
