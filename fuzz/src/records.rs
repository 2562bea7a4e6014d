//! Ring-buffer records encoded as the kernel writes them, the framing of the
//! `records` target's input, and the decoding every target checks.
use tracer::events::{self, Event};
use tracer_common::{
    AF_INET, CAPTURE_LEN, ConnEvent, ConnMeta, DataEvent, EventHeader, EventKind, HEADER_TRUNCATED,
    HeaderEvent, ListenEvent, ROLE_SERVER, ROLE_UNKNOWN, TaskEvent,
    header_capture::{CaptureNames, MatchState, SCAN_LEN, SCAN_STEPS, SCAN_WORDS, Step, VALUE_LEN},
};

/// The bytes of a record, as the kernel writes it. Only for the
/// `tracer_common` event types, which are `#[repr(C)]` with explicit padding.
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: every byte of these plain-old-data types is initialized (no
    // implicit padding), and the slice does not outlive `value`.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
    .to_vec()
}

const TGID: u32 = 4242;

fn header(kind: EventKind, timestamp_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tgid: TGID,
        timestamp_ns,
    }
}

/// A read (`DIRECTION_RECV`) or write of `moved` bytes whose start, `captured`
/// (at most `CAPTURE_LEN` bytes), the kernel copied; `seq` numbers the
/// connection's data records.
pub fn data_record(
    sock: u64,
    direction: u8,
    ts: u64,
    seq: u32,
    moved: u32,
    captured: &[u8],
) -> Vec<u8> {
    let captured = &captured[..captured.len().min(CAPTURE_LEN)];
    // SAFETY: integers and arrays of integers only; all zeroes is a valid
    // value (and leaves any field added later at zero).
    let mut event: DataEvent = unsafe { std::mem::zeroed() };
    event.header = header(EventKind::Data, ts);
    event.sock = sock;
    event.tid = TGID;
    event.direction = direction;
    event.bytes = moved.max(captured.len() as u32);
    event.captured = captured.len() as u32;
    event.seq = seq;
    event.payload[..captured.len()].copy_from_slice(captured);
    bytes_of(&event)
}

/// A `--capture-header` value (name `name` of [`CAPTURE_NAMES`]) found in
/// the read whose data record is `seq`.
pub fn header_record(
    sock: u64,
    ts: u64,
    seq: u32,
    name: u8,
    value: &[u8],
    truncated: bool,
) -> Vec<u8> {
    let value = &value[..value.len().min(VALUE_LEN)];
    // SAFETY: as in `data_record`.
    let mut event: HeaderEvent = unsafe { std::mem::zeroed() };
    event.header = header(EventKind::Header, ts);
    event.sock = sock;
    event.seq = seq;
    event.name = name;
    event.flags = if truncated { HEADER_TRUNCATED } else { 0 };
    event.len = value.len() as u16;
    event.value[..value.len()].copy_from_slice(value);
    bytes_of(&event)
}

/// The names the targets' assemblers capture, by the index header records carry.
pub const CAPTURE_NAMES: [&str; 2] = ["x-tenant", "user-agent"];

/// The header records the kernel sends for a read of `read` (starting a
/// request) before its data record `seq`: the programs' own matcher over
/// its first `SCAN_LEN` bytes, [`CAPTURE_NAMES`] configured.
pub fn header_records(sock: u64, ts: u64, seq: u32, read: &[u8]) -> Vec<Vec<u8>> {
    let names: Vec<&[u8]> = CAPTURE_NAMES.iter().map(|name| name.as_bytes()).collect();
    let names = CaptureNames::new(&names).expect("valid names");
    let mut words = [0u64; SCAN_WORDS];
    for (word, bytes) in words
        .iter_mut()
        .zip(read[..read.len().min(SCAN_LEN)].chunks(8))
    {
        let mut padded = [0u8; 8];
        padded[..bytes.len()].copy_from_slice(bytes);
        *word = u64::from_le_bytes(padded);
    }
    let mut scan = MatchState::new(read.len(), false);
    let mut records = Vec::new();
    for _ in 0..SCAN_STEPS {
        match scan.step(&words, &names) {
            Step::Next => {}
            Step::Found(found) => {
                let value = &read[found.start..found.start + found.len];
                records.push(header_record(
                    sock,
                    ts,
                    seq,
                    found.name as u8,
                    value,
                    found.truncated,
                ));
            }
            Step::Stop => break,
        }
    }
    records
}

pub fn open_record(sock: u64, ts: u64, established_ns: u64) -> Vec<u8> {
    bytes_of(&ConnEvent {
        header: header(EventKind::ConnOpen, ts),
        sock,
        established_ns,
        meta: ConnMeta {
            family: AF_INET,
            local_port: 8000,
            peer_port: 40000 + (sock & 0xff) as u16,
            _pad: 0,
            peer_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        },
        role: ROLE_SERVER,
        tls: 0,
        _pad: [0; 6],
    })
}

pub fn close_record(sock: u64, ts: u64) -> Vec<u8> {
    bytes_of(&ConnEvent {
        header: header(EventKind::ConnClose, ts),
        sock,
        established_ns: 0,
        meta: ConnMeta::unknown(0),
        role: ROLE_UNKNOWN,
        tls: 0,
        _pad: [0; 6],
    })
}

pub fn task_record(kind: EventKind, ts: u64, task: u32) -> Vec<u8> {
    bytes_of(&TaskEvent {
        header: header(kind, ts),
        task,
        _pad: 0,
    })
}

/// The `records` target's input: records, each behind its length (u16 LE).
pub fn frame(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for record in records {
        out.extend_from_slice(&(record.len() as u16).to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

/// Splits a `records` input into records; the last one may be cut short.
pub fn unframe(mut input: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    while input.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([input[0], input[1]]));
        let rest = &input[2..];
        let (record, tail) = rest.split_at(len.min(rest.len()));
        records.push(record);
        input = tail;
    }
    records
}

/// Decodes a record and checks what `decode` promises about what it accepts.
pub fn decode_checked(record: &[u8]) -> Option<Event<'_>> {
    let event = events::decode(record).ok()?;
    let expected = match &event {
        Event::Data(data) => {
            assert!(data.payload.len() <= CAPTURE_LEN);
            assert!(data.payload.len() as u64 <= u64::from(data.bytes));
            std::mem::size_of::<DataEvent>()
        }
        Event::Header(header) => {
            assert!(header.value.len() <= VALUE_LEN);
            std::mem::size_of::<HeaderEvent>()
        }
        Event::ConnOpen { .. } | Event::ConnClose { .. } => std::mem::size_of::<ConnEvent>(),
        Event::TaskFork { .. } | Event::TaskExit { .. } | Event::ProcessExec { .. } => {
            std::mem::size_of::<TaskEvent>()
        }
        Event::SocketListen { .. } => std::mem::size_of::<ListenEvent>(),
    };
    assert_eq!(record.len(), expected, "a record of the wrong size decoded");
    Some(event)
}
