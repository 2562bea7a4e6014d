//! What the programs need to find a syscall's user buffer on this
//! architecture: the `struct pt_regs` members holding the syscall number and
//! second argument (offsets from BTF) and the syscall numbers (from libc).
use tracer_common::{SockOffsets, SyscallAbi, TaskOffsets, TcpArgs};

use super::btf::{Btf, BtfError};

/// Where `struct sock` keeps its family, protocol, ports and peer address.
pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    let common = btf.member_offset("sock", "__sk_common")?;
    let field = |name| Ok::<_, BtfError>(common + btf.member_offset("sock_common", name)?);
    Ok(SockOffsets {
        family: field("skc_family")?,
        protocol: btf.member_offset("sock", "sk_protocol")?,
        local_port: field("skc_num")?,
        peer_port: field("skc_dport")?,
        peer_addr_v4: field("skc_daddr")?,
        peer_addr_v6: field("skc_v6_daddr")?,
    })
}

/// Where `struct task_struct` keeps the task id.
pub fn task_offsets(btf: &Btf) -> Result<TaskOffsets, BtfError> {
    Ok(TaskOffsets {
        pid: btf.member_offset("task_struct", "pid")?,
    })
}

/// Argument positions of the TCP functions the fentry and kprobe sets hook.
pub fn tcp_args(btf: &Btf) -> Result<TcpArgs, BtfError> {
    Ok(TcpArgs {
        recvmsg_flags: btf.param_index("tcp_recvmsg", "flags")?,
    })
}

#[cfg(target_arch = "x86_64")]
const REGS_SYSCALL_NR: &str = "orig_ax";
#[cfg(target_arch = "x86_64")]
const REGS_ARG1: &str = "si";

#[cfg(target_arch = "x86_64")]
pub fn syscall_abi(btf: &Btf) -> Result<SyscallAbi, BtfError> {
    let nr = |n: libc::c_long| n as i32;
    Ok(SyscallAbi {
        regs_syscall_nr: btf.member_offset("pt_regs", REGS_SYSCALL_NR)?,
        regs_arg1: btf.member_offset("pt_regs", REGS_ARG1)?,
        plain_buffer: [
            nr(libc::SYS_read),
            nr(libc::SYS_write),
            nr(libc::SYS_recvfrom),
            nr(libc::SYS_sendto),
            nr(libc::SYS_pread64),
            nr(libc::SYS_pwrite64),
        ],
        iovec: [
            nr(libc::SYS_readv),
            nr(libc::SYS_writev),
            nr(libc::SYS_preadv),
            nr(libc::SYS_pwritev),
        ],
        msghdr: [nr(libc::SYS_recvmsg), nr(libc::SYS_sendmsg)],
    })
}

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the tracer finds syscall buffers through x86_64 pt_regs; port abi.rs first");
