//! Arbitrary bytes, cut into ring-buffer records (`u16` length, then the
//! record), through `events::decode` into the assembler: no panic, records
//! that decode are well-formed, no invented span, no more spans than request
//! lines fed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    tracer_fuzz::feed_records(tracer_fuzz::unframe(input));
});
