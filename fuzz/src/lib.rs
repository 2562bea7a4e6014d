//! What the fuzz targets and the seed generator share: ring-buffer records
//! encoded as the kernel writes them, the framing of the `records` target's
//! input, a small traffic script language for the `assembly` target (decoded
//! with `arbitrary`, and encodable, so the committed seeds are named scripts),
//! and the invariants every target checks (`Witness`).
mod invariants;
mod records;
mod scripts;
mod traffic;

pub use invariants::{Witness, capturing_assembler, feed_records};
pub use records::{
    CAPTURE_NAMES, close_record, data_record, decode_checked, frame, header_record, header_records,
    open_record, task_record, unframe,
};
pub use scripts::{
    Capture, METHODS, Op, Script, Step, http_input, play, run_script, script_records, sock_id,
};
pub use traffic::{PATHS, POSTGRES_STARTUP, Request, Response, TLS_CLIENT_HELLO};
