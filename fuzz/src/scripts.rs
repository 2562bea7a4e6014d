//! The script language of the `assembly` target: operations on a few
//! sockets, decoded from fuzz input with `arbitrary` and encodable (so that
//! the committed seeds are named scripts), played into the records the
//! kernel would write; and the `http` target's input framing.
use std::collections::HashMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use tracer_common::{CAPTURE_LEN, DIRECTION_RECV, DIRECTION_SEND};

use crate::{
    Request, Response, Witness, capturing_assembler, close_record, data_record, decode_checked,
    header_records, open_record,
};

/// How much of a read or write the kernel copied into the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    /// Up to `CAPTURE_LEN`, zeroed after the blank line that ends the header
    /// part (one followed by another message start does not), as the
    /// programs do.
    Kernel,
    /// Up to `CAPTURE_LEN` bytes as they are.
    Full,
    /// Nothing (a body, or an unreadable buffer).
    None,
    /// The first `n` bytes (capped at `CAPTURE_LEN`).
    Prefix(u16),
}

/// One step of a connection-level script; sockets are numbered 0..4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The kernel saw the handshake `established_ago` ns ago (0: never).
    Open {
        sock: u8,
        established_ago: u8,
    },
    Close {
        sock: u8,
    },
    /// The client sends a request: it waits in the socket to be read.
    Client {
        sock: u8,
        request: Request,
    },
    /// The app has a response to write.
    Server {
        sock: u8,
        response: Response,
    },
    /// The app reads up to `len` bytes (0: all that wait).
    Read {
        sock: u8,
        len: u16,
        capture: Capture,
    },
    /// The app writes up to `len` bytes (0: all that wait).
    Write {
        sock: u8,
        len: u16,
        capture: Capture,
    },
    /// A read (`recv`) or write of these bytes, `extra` more moved past them.
    Raw {
        sock: u8,
        recv: bool,
        extra: u16,
        bytes: Vec<u8>,
    },
    Sweep {
        idle_ago: u16,
        forget_ago: u16,
    },
    Wait {
        ns: u16,
    },
    /// The kernel numbered a data record but could not deliver it.
    Lose {
        sock: u8,
    },
}

/// A script: decoded from fuzz input with `arbitrary`, and encodable so that
/// seeds are readable scripts (`encode` is the inverse of `arbitrary`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script(pub Vec<Op>);

/// Bounds what one input can ask for (each op is a few bytes).
const MAX_OPS: usize = 256;

impl<'a> Arbitrary<'a> for Script {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::decode(u)?);
        }
        Ok(Script(ops))
    }
}

impl Script {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for op in &self.0 {
            op.encode(&mut out);
        }
        out
    }
}

fn flag(u: &mut Unstructured<'_>) -> Result<bool> {
    Ok(u8::arbitrary(u)? & 1 == 1)
}

impl Capture {
    fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(match u8::arbitrary(u)? % 4 {
            0 => Capture::Kernel,
            1 => Capture::Full,
            2 => Capture::None,
            _ => Capture::Prefix(u16::arbitrary(u)?),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Capture::Kernel => out.push(0),
            Capture::Full => out.push(1),
            Capture::None => out.push(2),
            Capture::Prefix(n) => {
                out.push(3);
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }

    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let len = match *self {
            Capture::None => 0,
            Capture::Prefix(n) => usize::from(n),
            Capture::Kernel | Capture::Full => CAPTURE_LEN,
        };
        let mut captured = bytes[..len.min(bytes.len()).min(CAPTURE_LEN)].to_vec();
        if *self == Capture::Kernel {
            let body = (0..captured.len()).find_map(|at| {
                let end = at + 4;
                (captured[at..].starts_with(b"\r\n\r\n")
                    && !captured.get(end).is_some_and(u8::is_ascii_uppercase))
                .then_some(end)
            });
            if let Some(end) = body {
                captured[end..].fill(0);
            }
        }
        captured
    }
}

impl Request {
    fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(match u8::arbitrary(u)? % 11 {
            0 => Request::Get {
                path: u8::arbitrary(u)?,
                http10: flag(u)?,
            },
            1 => Request::Head {
                path: u8::arbitrary(u)?,
            },
            2 => Request::Post {
                path: u8::arbitrary(u)?,
                body: u16::arbitrary(u)?,
            },
            3 => Request::PostContinue {
                path: u8::arbitrary(u)?,
                body: u16::arbitrary(u)?,
            },
            4 => Request::Pipelined {
                path: u8::arbitrary(u)?,
                count: u8::arbitrary(u)?,
            },
            5 => Request::HugeHeaders {
                path: u8::arbitrary(u)?,
                size: u16::arbitrary(u)?,
            },
            6 => Request::LoneCr {
                path: u8::arbitrary(u)?,
            },
            7 => Request::InvalidUtf8,
            8 => Request::TlsClientHello,
            9 => Request::RedisInline,
            _ => Request::PostgresStartup,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Request::Get { path, http10 } => out.extend([0, path, u8::from(http10)]),
            Request::Head { path } => out.extend([1, path]),
            Request::Post { path, body } => {
                out.extend([2, path]);
                out.extend(body.to_le_bytes());
            }
            Request::PostContinue { path, body } => {
                out.extend([3, path]);
                out.extend(body.to_le_bytes());
            }
            Request::Pipelined { path, count } => out.extend([4, path, count]),
            Request::HugeHeaders { path, size } => {
                out.extend([5, path]);
                out.extend(size.to_le_bytes());
            }
            Request::LoneCr { path } => out.extend([6, path]),
            Request::InvalidUtf8 => out.push(7),
            Request::TlsClientHello => out.push(8),
            Request::RedisInline => out.push(9),
            Request::PostgresStartup => out.push(10),
        }
    }
}

impl Response {
    fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        Ok(match u8::arbitrary(u)? % 8 {
            0 => Response::Sized {
                status: u8::arbitrary(u)?,
                body: u16::arbitrary(u)?,
                http10: flag(u)?,
            },
            1 => Response::Chunked {
                chunks: u8::arbitrary(u)?,
            },
            2 => Response::Continue,
            3 => Response::NoBody {
                status: u8::arbitrary(u)?,
            },
            4 => Response::AbsurdLength,
            5 => Response::CloseDelimited {
                body: u16::arbitrary(u)?,
            },
            6 => Response::BadLength,
            _ => Response::Binary,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Response::Sized {
                status,
                body,
                http10,
            } => {
                out.extend([0, status]);
                out.extend(body.to_le_bytes());
                out.push(u8::from(http10));
            }
            Response::Chunked { chunks } => out.extend([1, chunks]),
            Response::Continue => out.push(2),
            Response::NoBody { status } => out.extend([3, status]),
            Response::AbsurdLength => out.push(4),
            Response::CloseDelimited { body } => {
                out.push(5);
                out.extend(body.to_le_bytes());
            }
            Response::BadLength => out.push(6),
            Response::Binary => out.push(7),
        }
    }
}

impl Op {
    fn decode(u: &mut Unstructured<'_>) -> Result<Self> {
        let tag = u8::arbitrary(u)? % 10;
        let sock = u8::arbitrary(u)? % 4;
        Ok(match tag {
            0 => Op::Open {
                sock,
                established_ago: u8::arbitrary(u)?,
            },
            1 => Op::Close { sock },
            2 => Op::Client {
                sock,
                request: Request::decode(u)?,
            },
            3 => Op::Server {
                sock,
                response: Response::decode(u)?,
            },
            4 => Op::Read {
                sock,
                len: u16::arbitrary(u)?,
                capture: Capture::decode(u)?,
            },
            5 => Op::Write {
                sock,
                len: u16::arbitrary(u)?,
                capture: Capture::decode(u)?,
            },
            6 => {
                let recv = flag(u)?;
                let extra = u16::arbitrary(u)?;
                let len = usize::from(u16::arbitrary(u)?) % (CAPTURE_LEN + 1);
                let bytes = u.bytes(len.min(u.len()))?.to_vec();
                Op::Raw {
                    sock,
                    recv,
                    extra,
                    bytes,
                }
            }
            7 => Op::Sweep {
                idle_ago: u16::arbitrary(u)?,
                forget_ago: u16::arbitrary(u)?,
            },
            8 => Op::Wait {
                ns: u16::arbitrary(u)?,
            },
            _ => Op::Lose { sock },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Open {
                sock,
                established_ago,
            } => out.extend([0, *sock, *established_ago]),
            Op::Close { sock } => out.extend([1, *sock]),
            Op::Client { sock, request } => {
                out.extend([2, *sock]);
                request.encode(out);
            }
            Op::Server { sock, response } => {
                out.extend([3, *sock]);
                response.encode(out);
            }
            Op::Read { sock, len, capture } | Op::Write { sock, len, capture } => {
                out.extend([
                    if matches!(self, Op::Read { .. }) {
                        4
                    } else {
                        5
                    },
                    *sock,
                ]);
                out.extend(len.to_le_bytes());
                capture.encode(out);
            }
            Op::Raw {
                sock,
                recv,
                extra,
                bytes,
            } => {
                out.extend([6, *sock, u8::from(*recv)]);
                out.extend(extra.to_le_bytes());
                out.extend((bytes.len() as u16).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Op::Sweep {
                idle_ago,
                forget_ago,
            } => {
                out.extend([7, 0]);
                out.extend(idle_ago.to_le_bytes());
                out.extend(forget_ago.to_le_bytes());
            }
            Op::Wait { ns } => {
                out.extend([8, 0]);
                out.extend(ns.to_le_bytes());
            }
            Op::Lose { sock } => out.extend([9, *sock]),
        }
    }
}

/// What playing a script gives: records for the ring buffer, and sweeps.
#[derive(Debug)]
pub enum Step {
    Record(Vec<u8>),
    Sweep {
        idle_before_ns: u64,
        forget_before_ns: u64,
    },
}

/// Bytes waiting in one direction of a socket, bounded so that an input
/// cannot ask for unbounded traffic.
const MAX_QUEUED: usize = 64 * 1024;

pub fn sock_id(sock: u8) -> u64 {
    0xffff_8880_0001_0000 + u64::from(sock) * 0x1000
}

/// Turns a script into what the kernel would report, with a clock that only
/// moves forward.
pub fn play(script: &Script) -> Vec<Step> {
    let mut now: u64 = 1_000_000;
    let mut to_read: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut to_write: HashMap<u8, Vec<u8>> = HashMap::new();
    // Data records are numbered per connection, from 0 when the kernel
    // first sees it (at its handshake, or at its first read or write).
    let mut seqs: HashMap<u8, u32> = HashMap::new();
    let mut steps = Vec::new();
    for op in &script.0 {
        now += 1;
        match op {
            Op::Open {
                sock,
                established_ago,
            } => {
                seqs.remove(sock);
                let established = if *established_ago == 0 {
                    0
                } else {
                    now - u64::from(*established_ago)
                };
                steps.push(Step::Record(open_record(sock_id(*sock), now, established)));
            }
            Op::Close { sock } => {
                seqs.remove(sock);
                to_read.remove(sock);
                to_write.remove(sock);
                steps.push(Step::Record(close_record(sock_id(*sock), now)));
            }
            Op::Client { sock, request } => {
                queue(to_read.entry(*sock).or_default(), request.bytes())
            }
            Op::Server { sock, response } => {
                queue(to_write.entry(*sock).or_default(), response.bytes())
            }
            Op::Read { sock, len, capture } | Op::Write { sock, len, capture } => {
                let (waiting, direction) = if matches!(op, Op::Read { .. }) {
                    (to_read.entry(*sock).or_default(), DIRECTION_RECV)
                } else {
                    (to_write.entry(*sock).or_default(), DIRECTION_SEND)
                };
                let n = match usize::from(*len) {
                    0 => waiting.len(),
                    len => len.min(waiting.len()),
                };
                if n == 0 {
                    continue;
                }
                let moved: Vec<u8> = waiting.drain(..n).collect();
                let seq = next_seq(&mut seqs, *sock);
                // The kernel's header values come just before their read.
                if direction == DIRECTION_RECV && *capture == Capture::Kernel {
                    let headers = header_records(sock_id(*sock), now, seq, &moved);
                    steps.extend(headers.into_iter().map(Step::Record));
                }
                steps.push(Step::Record(data_record(
                    sock_id(*sock),
                    direction,
                    now,
                    seq,
                    n as u32,
                    &capture.apply(&moved),
                )));
            }
            Op::Raw {
                sock,
                recv,
                extra,
                bytes,
            } => {
                let direction = if *recv {
                    DIRECTION_RECV
                } else {
                    DIRECTION_SEND
                };
                let moved = bytes.len() as u32 + u32::from(*extra);
                let seq = next_seq(&mut seqs, *sock);
                steps.push(Step::Record(data_record(
                    sock_id(*sock),
                    direction,
                    now,
                    seq,
                    moved,
                    bytes,
                )));
            }
            Op::Sweep {
                idle_ago,
                forget_ago,
            } => steps.push(Step::Sweep {
                idle_before_ns: now - u64::from(*idle_ago),
                forget_before_ns: now - u64::from(*forget_ago),
            }),
            Op::Wait { ns } => now += u64::from(*ns),
            Op::Lose { sock } => {
                next_seq(&mut seqs, *sock);
            }
        }
    }
    steps
}

fn next_seq(seqs: &mut HashMap<u8, u32>, sock: u8) -> u32 {
    let seq = seqs.entry(sock).or_default();
    *seq = seq.wrapping_add(1);
    seq.wrapping_sub(1)
}

fn queue(waiting: &mut Vec<u8>, bytes: Vec<u8>) {
    if waiting.len() + bytes.len() <= MAX_QUEUED {
        waiting.extend(bytes);
    }
}

/// Plays a script into an assembler, checking every invariant.
pub fn run_script(script: &Script) -> usize {
    let mut assembler = capturing_assembler();
    let mut witness = Witness::default();
    let mut done = Vec::new();
    for step in play(script) {
        match step {
            Step::Record(record) => {
                let event = decode_checked(&record).expect("a record as the kernel writes it");
                witness.observe(&event);
                assembler.handle(&event, &mut done);
            }
            Step::Sweep {
                idle_before_ns,
                forget_before_ns,
            } => {
                witness.observe_sweep(idle_before_ns, forget_before_ns);
                assembler.sweep(idle_before_ns, forget_before_ns, &mut done);
            }
        }
        witness.spans(&mut done, true);
    }
    witness.finish(&mut assembler, true);
    witness.spans.len()
}

/// The records a script plays to (its sweeps dropped), for `records` seeds.
pub fn script_records(script: &Script) -> Vec<Vec<u8>> {
    play(script)
        .into_iter()
        .filter_map(|step| match step {
            Step::Record(record) => Some(record),
            Step::Sweep { .. } => None,
        })
        .collect()
}

/// The `http` target's input: a selector byte (bit 0: keep the query; the
/// rest picks the request method for the response parser), then the bytes.
pub const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "OPTIONS", "", "head"];

pub fn http_input(keep_query: bool, method: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(method as u8) << 1 | u8::from(keep_query)];
    out.extend_from_slice(bytes);
    out
}
