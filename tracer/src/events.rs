//! Decoding and validating ring-buffer records. A record is trusted only
//! after its kind, length and inner lengths check out; anything else is an
//! error the caller counts and skips.
use tracer_common::{
    CAPTURE_LEN, ConnEvent, ConnMeta, DIRECTION_RECV, DIRECTION_SEND, DataEvent, EventHeader,
    EventKind, HEADER_TRUNCATED, HeaderEvent, ListenEvent, ROLE_CLIENT, ROLE_SERVER, TaskEvent,
    header_capture::VALUE_LEN,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Recv,
    Send,
}

/// Which end of its connection the traced process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Server,
    Client,
}

impl Side {
    /// The direction of the requests' bytes on this side.
    pub fn request_direction(self) -> Direction {
        match self {
            Side::Server => Direction::Recv,
            Side::Client => Direction::Send,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Data<'a> {
    pub tgid: u32,
    /// The thread that moved the bytes.
    pub tid: u32,
    pub timestamp_ns: u64,
    pub sock: u64,
    pub direction: Direction,
    /// Bytes the syscall moved.
    pub bytes: u32,
    /// The captured start of those bytes (header bytes only).
    pub payload: &'a [u8],
    /// The connection's record number ([`DataEvent::seq`]).
    pub seq: u32,
}

/// The value of a `--capture-header` header, found in the read whose data
/// record is `seq` (and comes next on its connection).
#[derive(Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub tgid: u32,
    pub timestamp_ns: u64,
    pub sock: u64,
    pub seq: u32,
    /// Index of the name in the daemon's list.
    pub name: usize,
    pub value: &'a [u8],
    /// The value went on past what the kernel sent.
    pub truncated: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Data(Data<'a>),
    Header(Header<'a>),
    ConnOpen {
        tgid: u32,
        sock: u64,
        /// When the kernel saw the connection handed to the app.
        timestamp_ns: u64,
        established_ns: Option<u64>,
        meta: ConnMeta,
        /// As the kernel decided it (`None`: not said).
        side: Option<Side>,
        /// Its messages are TLS plaintext (HTTPS).
        tls: bool,
    },
    ConnClose {
        sock: u64,
        timestamp_ns: u64,
    },
    TaskFork {
        /// The forking process.
        parent: u32,
        child: u32,
    },
    TaskExit {
        tgid: u32,
        task: u32,
    },
    /// A process not yet traced replaced its image.
    ProcessExec {
        tgid: u32,
    },
    SocketListen {
        tgid: u32,
        port: u16,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short for a header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record kind {kind:?} has {len} bytes, expected {expected}")]
    Length {
        kind: EventKind,
        len: usize,
        expected: usize,
    },
    #[error("data record claims {captured} captured bytes of {bytes} moved")]
    Captured { captured: u32, bytes: u32 },
    #[error("data record has direction {0}")]
    Direction(u8),
    #[error("header record claims {len} value bytes (flags {flags:#x})")]
    Header { len: u16, flags: u8 },
}

pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    let header: EventHeader = read(record).ok_or(DecodeError::Short(record.len()))?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    match kind {
        EventKind::Data => {
            let event: DataEvent = read_exact(record, kind)?;
            let direction = match event.direction {
                DIRECTION_RECV => Direction::Recv,
                DIRECTION_SEND => Direction::Send,
                other => return Err(DecodeError::Direction(other)),
            };
            let captured = event.captured as usize;
            if captured > CAPTURE_LEN || event.captured > event.bytes {
                return Err(DecodeError::Captured {
                    captured: event.captured,
                    bytes: event.bytes,
                });
            }
            let payload_start = std::mem::offset_of!(DataEvent, payload);
            Ok(Event::Data(Data {
                tgid: header.tgid,
                tid: event.tid,
                timestamp_ns: header.timestamp_ns,
                sock: event.sock,
                direction,
                bytes: event.bytes,
                payload: &record[payload_start..payload_start + captured],
                seq: event.seq,
            }))
        }
        EventKind::Header => {
            let event: HeaderEvent = read_exact(record, kind)?;
            if usize::from(event.len) > VALUE_LEN || event.flags & !HEADER_TRUNCATED != 0 {
                return Err(DecodeError::Header {
                    len: event.len,
                    flags: event.flags,
                });
            }
            let value_start = std::mem::offset_of!(HeaderEvent, value);
            Ok(Event::Header(Header {
                tgid: header.tgid,
                timestamp_ns: header.timestamp_ns,
                sock: event.sock,
                seq: event.seq,
                name: usize::from(event.name),
                value: &record[value_start..value_start + usize::from(event.len)],
                truncated: event.flags & HEADER_TRUNCATED != 0,
            }))
        }
        EventKind::ConnOpen | EventKind::ConnClose => {
            let event: ConnEvent = read_exact(record, kind)?;
            Ok(if kind == EventKind::ConnOpen {
                Event::ConnOpen {
                    tgid: header.tgid,
                    sock: event.sock,
                    timestamp_ns: header.timestamp_ns,
                    established_ns: (event.established_ns != 0).then_some(event.established_ns),
                    meta: event.meta,
                    side: match event.role {
                        ROLE_SERVER => Some(Side::Server),
                        ROLE_CLIENT => Some(Side::Client),
                        _ => None,
                    },
                    tls: event.tls != 0,
                }
            } else {
                Event::ConnClose {
                    sock: event.sock,
                    timestamp_ns: header.timestamp_ns,
                }
            })
        }
        EventKind::TaskFork | EventKind::TaskExit | EventKind::ProcessExec => {
            let event: TaskEvent = read_exact(record, kind)?;
            Ok(match kind {
                EventKind::TaskFork => Event::TaskFork {
                    parent: header.tgid,
                    child: event.task,
                },
                EventKind::TaskExit => Event::TaskExit {
                    tgid: header.tgid,
                    task: event.task,
                },
                _ => Event::ProcessExec { tgid: header.tgid },
            })
        }
        EventKind::SocketListen => {
            let event: ListenEvent = read_exact(record, kind)?;
            Ok(Event::SocketListen {
                tgid: header.tgid,
                port: event.port,
            })
        }
    }
}

fn read_exact<T: Copy>(record: &[u8], kind: EventKind) -> Result<T, DecodeError> {
    let expected = std::mem::size_of::<T>();
    if record.len() != expected {
        return Err(DecodeError::Length {
            kind,
            len: record.len(),
            expected,
        });
    }
    read(record).ok_or(DecodeError::Short(record.len()))
}

/// Copies a `#[repr(C)]` plain-old-data value out of the start of `bytes`.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length is checked; every `T` used here is plain old data
    // for which any bit pattern is valid; the read tolerates misalignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Encodes a record as the kernel would; for tests of the layers above.
#[cfg(test)]
pub fn encode<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain-old-data value.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
    .to_vec()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn data_event(sock: u64, direction: u8, ts: u64, bytes: u32, payload: &[u8]) -> DataEvent {
        let mut event = DataEvent {
            header: EventHeader {
                kind: EventKind::Data as u32,
                tgid: 42,
                timestamp_ns: ts,
            },
            sock,
            tid: 42,
            direction,
            _pad: [0; 3],
            bytes,
            captured: payload.len() as u32,
            seq: 0,
            _pad2: 0,
            payload: [0; CAPTURE_LEN],
        };
        event.payload[..payload.len()].copy_from_slice(payload);
        event
    }

    #[test]
    fn data_round_trip() {
        let record = encode(&data_event(
            7,
            DIRECTION_SEND,
            99,
            100,
            b"HTTP/1.1 200 OK\r\n",
        ));
        let Event::Data(data) = decode(&record).unwrap() else {
            panic!("wrong kind");
        };
        assert_eq!(data.sock, 7);
        assert_eq!(data.direction, Direction::Send);
        assert_eq!(data.timestamp_ns, 99);
        assert_eq!(data.payload, b"HTTP/1.1 200 OK\r\n");
    }

    pub fn header_event(sock: u64, seq: u32, name: u8, value: &[u8], flags: u8) -> HeaderEvent {
        let mut event = HeaderEvent {
            header: EventHeader {
                kind: EventKind::Header as u32,
                tgid: 42,
                timestamp_ns: 1,
            },
            sock,
            seq,
            name,
            flags,
            len: value.len() as u16,
            value: [b'?'; VALUE_LEN],
        };
        event.value[..value.len()].copy_from_slice(value);
        event
    }

    #[test]
    fn header_round_trip() {
        let record = encode(&header_event(7, 3, 1, b"acme", HEADER_TRUNCATED));
        let Event::Header(header) = decode(&record).unwrap() else {
            panic!("wrong kind");
        };
        assert_eq!(
            (header.sock, header.seq, header.name, header.value),
            (7, 3, 1, &b"acme"[..])
        );
        assert!(header.truncated);
        let mut long = header_event(7, 3, 1, b"", 0);
        long.len = VALUE_LEN as u16 + 1;
        assert!(matches!(
            decode(&encode(&long)),
            Err(DecodeError::Header { .. })
        ));
        let flagged = header_event(7, 3, 1, b"", 4);
        assert!(matches!(
            decode(&encode(&flagged)),
            Err(DecodeError::Header { .. })
        ));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut record = encode(&data_event(7, DIRECTION_RECV, 1, 4, b"GET "));
        record[0] = 99;
        assert_eq!(decode(&record), Err(DecodeError::UnknownKind(99)));
        let mut lying = data_event(7, DIRECTION_RECV, 1, 2, b"GET ");
        lying.captured = 4;
        assert!(matches!(
            decode(&encode(&lying)),
            Err(DecodeError::Captured { .. })
        ));
        let record = encode(&data_event(7, 9, 1, 4, b"GET "));
        assert_eq!(decode(&record), Err(DecodeError::Direction(9)));
        let record = encode(&data_event(7, DIRECTION_RECV, 1, 4, b"GET "));
        assert!(matches!(
            decode(&record[..100]),
            Err(DecodeError::Length { .. })
        ));
    }
}
