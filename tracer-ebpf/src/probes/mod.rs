//! Hook families: process tree, TCP connection life, socket data (and the
//! TCP function hooks that feed it in the fentry and kprobe sets), the
//! `--capture-header` values found in request heads, and OpenSSL's
//! plaintext (uprobes).
pub mod connection;
pub mod data;
pub mod headers;
pub mod process;
pub mod tcp;
pub mod tls;
