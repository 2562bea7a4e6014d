//! Kernel programs of the tracer. This file holds only the entry shims; the
//! logic of each hook family lives in `probes/`. Every program first checks
//! that the current process is traced (except the TCP state hook, which runs
//! in softirq context and filters on the connection map instead).
#![no_std]
#![no_main]

mod config;
mod maps;
mod probes;

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe, raw_tracepoint, uprobe, uretprobe},
    programs::{FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use tracer_common::{DIRECTION_RECV, DIRECTION_SEND};

// Raw tracepoints throughout: attached with BPF_RAW_TRACEPOINT_OPEN, not
// perf_event_open, so CAP_BPF + CAP_PERFMON suffice even where
// kernel.perf_event_paranoid is 3 (Debian's default), and no record is
// formatted.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    probes::process::on_fork(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    probes::process::on_exit();
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    probes::process::on_exec();
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    probes::connection::on_state_change(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    probes::data::on_socket_tracepoint(&ctx, DIRECTION_RECV);
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    probes::data::on_socket_tracepoint(&ctx, DIRECTION_SEND);
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_exit(ctx: FExitContext) -> i32 {
    probes::tcp::on_recvmsg_exit::<5>(&ctx);
    0
}

/// `tcp_recvmsg` without its `addr_len` argument (recent kernels).
#[fexit(function = "tcp_recvmsg")]
pub fn tcp_recvmsg4_exit(ctx: FExitContext) -> i32 {
    probes::tcp::on_recvmsg_exit::<4>(&ctx);
    0
}

#[fexit(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_exit(ctx: FExitContext) -> i32 {
    probes::tcp::on_sendmsg_exit(&ctx);
    0
}

#[kprobe]
pub fn tcp_recvmsg_entry(ctx: ProbeContext) -> u32 {
    probes::tcp::on_call_entry(&ctx, DIRECTION_RECV);
    0
}

#[kretprobe]
pub fn tcp_recvmsg_return(ctx: RetProbeContext) -> u32 {
    probes::tcp::on_call_return(&ctx, DIRECTION_RECV);
    0
}

#[kprobe]
pub fn tcp_sendmsg_entry(ctx: ProbeContext) -> u32 {
    probes::tcp::on_call_entry(&ctx, DIRECTION_SEND);
    0
}

#[kretprobe]
pub fn tcp_sendmsg_return(ctx: RetProbeContext) -> u32 {
    probes::tcp::on_call_return(&ctx, DIRECTION_SEND);
    0
}

/// `SSL_read` and `SSL_write`, and their `_ex` forms (OpenSSL 1.1.1+).
#[uprobe]
pub fn ssl_read_entry(ctx: ProbeContext) -> u32 {
    probes::tls::on_call_entry::<false>(&ctx, DIRECTION_RECV);
    0
}

#[uprobe]
pub fn ssl_read_ex_entry(ctx: ProbeContext) -> u32 {
    probes::tls::on_call_entry::<true>(&ctx, DIRECTION_RECV);
    0
}

#[uprobe]
pub fn ssl_write_entry(ctx: ProbeContext) -> u32 {
    probes::tls::on_call_entry::<false>(&ctx, DIRECTION_SEND);
    0
}

#[uprobe]
pub fn ssl_write_ex_entry(ctx: ProbeContext) -> u32 {
    probes::tls::on_call_entry::<true>(&ctx, DIRECTION_SEND);
    0
}

#[uretprobe]
pub fn ssl_call_return(ctx: RetProbeContext) -> u32 {
    probes::tls::on_call_return(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
