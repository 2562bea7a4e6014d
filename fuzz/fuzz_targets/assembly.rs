//! A script of connection events on a few sockets (`tracer_fuzz::Op`):
//! HTTP/1.0 and 1.1 requests and responses (keep-alive, pipelined, chunked,
//! HEAD, 1xx, absurd lengths, huge header blocks, a lone CR, invalid UTF-8)
//! and binary protocols, read and written in arbitrary pieces with arbitrary
//! capture, plus sweeps. No panic, no invented span, no more spans than
//! request lines fed, span times in order; memory is bounded by libFuzzer's
//! `-malloc_limit_mb` / `-rss_limit_mb`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer_fuzz::Script;

fuzz_target!(|script: Script| {
    tracer_fuzz::run_script(&script);
});
