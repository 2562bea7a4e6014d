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
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{DIRECTION_RECV, DIRECTION_SEND};

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    probes::process::on_fork(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    probes::process::on_exit();
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    probes::connection::on_state_change(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    probes::data::on_socket_io(&ctx, DIRECTION_RECV);
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    probes::data::on_socket_io(&ctx, DIRECTION_SEND);
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
