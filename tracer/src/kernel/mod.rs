//! Everything that touches the kernel: finding what it offers, loading and
//! attaching the programs, and the maps the daemon shares with them.
pub mod abi;
pub mod btf;
pub mod doctor;
pub mod loader;
pub mod openssl;
pub mod privileges;
pub mod probes;
pub mod tracefs;
pub mod uprobes;
