//! Open-loop, constant-rate HTTP/1.1 load generator (the wrk2 model).
//!
//! Request `i` is scheduled at `start + i / rate` and is sent by connection
//! `i mod connections`; every connection sends its share in order. Latency is
//! measured from the *scheduled* time to the end of the response, so a server
//! that stalls is charged for the requests queued behind the stall
//! (coordinated-omission correction). No request is sent after the duration;
//! scheduled requests that were never sent are counted, not hidden.
//!
//! A connection is kept alive unless the server answers `Connection: close`
//! (or ends the body by closing), in which case the next request opens a new
//! connection and the connect time is part of its latency. A reused
//! connection that turns out to be closed by the server is retried once on a
//! fresh connection.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, pki_types::ServerName},
};

use crate::clock::{PreciseTimer, WallClock, mono_ns};
use crate::http1::{self, HttpError};
use crate::latency::{self, LatencySummary};

/// Requests still in flight this long after the duration are abandoned.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What to send and how fast.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: SocketAddr,
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// Requests per second, > 0.
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    /// A request with no complete response after this is a timeout.
    pub timeout: Duration,
    /// Keep one [`RequestRecord`] per request in the report.
    pub keep_records: bool,
}

impl LoadConfig {
    /// GET `path` on `target` with 10 connections and a 10 s timeout.
    pub fn get(target: SocketAddr, path: &str, rate: f64, duration: Duration) -> Self {
        Self {
            target,
            method: "GET".into(),
            path: path.into(),
            body: Vec::new(),
            rate,
            duration,
            connections: 10,
            timeout: Duration::from_secs(10),
            keep_records: false,
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load configuration: {0}")]
    Config(String),
    #[error("could not create a timer")]
    Timer(#[source] io::Error),
    #[error("a connection task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// How a request that got no response failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    Connect,
    Timeout,
    /// Reset, broken pipe, or the peer closed before a complete response.
    Reset,
    /// Any other I/O error or a malformed response.
    Other,
    /// Still in flight when the run ended.
    Unfinished,
}

/// One request, for matching requests to spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    pub failure: Option<Failure>,
    pub scheduled_unix_ns: u64,
    /// From the scheduled time to the end of the response (or the failure).
    pub latency_ns: u64,
}

/// Outcome counts of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests whose send time fell inside the duration.
    pub scheduled: u64,
    /// Requests actually sent (the rest were still queued at the end).
    pub sent: u64,
    pub ok_2xx: u64,
    /// Non-2xx responses by status code.
    pub non_2xx: BTreeMap<u16, u64>,
    pub connect_errors: u64,
    pub timeouts: u64,
    pub resets: u64,
    pub other_errors: u64,
    pub unfinished: u64,
}

impl Counts {
    /// Requests that got a complete response, whatever its status.
    pub fn responses(&self) -> u64 {
        self.ok_2xx + self.non_2xx.values().sum::<u64>()
    }

    /// Requests that failed outright: connect errors, timeouts, resets and
    /// other errors (not the unfinished ones at the end of a run).
    pub fn failures(&self) -> u64 {
        self.connect_errors + self.timeouts + self.resets + self.other_errors
    }

    fn failure(&mut self, failure: Failure) {
        let slot = match failure {
            Failure::Connect => &mut self.connect_errors,
            Failure::Timeout => &mut self.timeouts,
            Failure::Reset => &mut self.resets,
            Failure::Other => &mut self.other_errors,
            Failure::Unfinished => &mut self.unfinished,
        };
        *slot += 1;
    }

    fn merge(&mut self, other: &Counts) {
        self.scheduled += other.scheduled;
        self.sent += other.sent;
        self.ok_2xx += other.ok_2xx;
        for (status, n) in &other.non_2xx {
            *self.non_2xx.entry(*status).or_default() += n;
        }
        self.connect_errors += other.connect_errors;
        self.timeouts += other.timeouts;
        self.resets += other.resets;
        self.other_errors += other.other_errors;
        self.unfinished += other.unfinished;
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub target_rate: f64,
    /// Responses per second over the run.
    pub achieved_rate: f64,
    pub duration_s: f64,
    pub connections: usize,
    pub started_unix_ns: u64,
    pub ended_unix_ns: u64,
    pub counts: Counts,
    /// Latency of the requests that got a response (any status).
    pub latency: LatencySummary,
    /// Per-request records, sorted by schedule, when asked for.
    pub records: Vec<RequestRecord>,
}

/// The intended send time of request `i`, ns after the start.
pub fn scheduled_offset_ns(i: u64, rate: f64) -> u64 {
    (i as f64 * 1e9 / rate).round() as u64
}

struct Shared {
    config: LoadConfig,
    request: Vec<u8>,
    start_ns: u64,
    end_ns: u64,
    wall: WallClock,
}

struct ConnResult {
    counts: Counts,
    histogram: hdrhistogram::Histogram<u64>,
    records: Vec<RequestRecord>,
    last_done_ns: u64,
}

/// Runs the load and returns its report. Needs a tokio runtime with I/O and
/// time enabled; a current-thread runtime is enough for tens of thousands of
/// requests per second.
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        return Err(LoadError::Config(format!(
            "rate must be > 0, got {}",
            config.rate
        )));
    }
    if config.connections == 0 {
        return Err(LoadError::Config("connections must be > 0".into()));
    }
    if config.duration.is_zero() {
        return Err(LoadError::Config("duration must be > 0".into()));
    }
    let host = config.target.to_string();
    let request = http1::build_request(&config.method, &host, &config.path, &config.body);
    let timers = (0..config.connections)
        .map(|_| PreciseTimer::new())
        .collect::<io::Result<Vec<_>>>()
        .map_err(LoadError::Timer)?;
    // Start slightly in the future so every connection task is ready.
    let start_ns = mono_ns() + 5_000_000;
    let shared = Arc::new(Shared {
        request,
        start_ns,
        end_ns: start_ns + config.duration.as_nanos() as u64,
        wall: WallClock::now(),
        config,
    });
    let mut tasks = JoinSet::new();
    for (index, timer) in timers.into_iter().enumerate() {
        tasks.spawn(connection(shared.clone(), index as u64, timer));
    }
    let mut counts = Counts::default();
    let mut histogram = latency::new_histogram();
    let mut records = Vec::new();
    let mut last_done_ns = shared.end_ns;
    while let Some(result) = tasks.join_next().await {
        let result = result?;
        counts.merge(&result.counts);
        // Both histograms share the same bounds, so adding cannot fail.
        let _ = histogram.add(&result.histogram);
        records.extend(result.records);
        last_done_ns = last_done_ns.max(result.last_done_ns);
    }
    records.sort_by_key(|r| r.scheduled_unix_ns);
    let elapsed_s = (last_done_ns - shared.start_ns) as f64 / 1e9;
    let config = &shared.config;
    Ok(LoadReport {
        target_rate: config.rate,
        achieved_rate: counts.responses() as f64 / elapsed_s,
        duration_s: config.duration.as_secs_f64(),
        connections: config.connections,
        started_unix_ns: shared.wall.to_unix(shared.start_ns),
        ended_unix_ns: shared.wall.to_unix(last_done_ns),
        counts,
        latency: LatencySummary::from_histogram(&histogram),
        records,
    })
}

async fn connection(shared: Arc<Shared>, first: u64, mut timer: PreciseTimer) -> ConnResult {
    let config = &shared.config;
    let step = config.connections as u64;
    let drain_end_ns = shared.end_ns + DRAIN_GRACE.as_nanos() as u64;
    let mut result = ConnResult {
        counts: Counts::default(),
        histogram: latency::new_histogram(),
        records: Vec::new(),
        last_done_ns: 0,
    };
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut i = first;
    loop {
        let scheduled = shared.start_ns + scheduled_offset_ns(i, config.rate);
        if scheduled >= shared.end_ns {
            break;
        }
        result.counts.scheduled += 1;
        i += step;
        if timer.sleep_until(scheduled).await.is_err() {
            result.counts.failure(Failure::Other);
            continue;
        }
        if mono_ns() >= shared.end_ns {
            // Queued behind a slow server past the end: scheduled, never sent.
            continue;
        }
        result.counts.sent += 1;
        let deadline = (mono_ns() + config.timeout.as_nanos() as u64).min(drain_end_ns);
        let outcome = match tokio::time::timeout(
            Duration::from_nanos(deadline.saturating_sub(mono_ns())),
            send(&shared, &mut stream, &mut buf),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) if deadline == drain_end_ns => Err(Failure::Unfinished),
            Err(_) => Err(Failure::Timeout),
        };
        let done = mono_ns();
        let latency_ns = done - scheduled;
        result.last_done_ns = result.last_done_ns.max(done);
        let status = match outcome {
            Ok(status) => {
                latency::record(&mut result.histogram, latency_ns);
                if (200..300).contains(&status) {
                    result.counts.ok_2xx += 1;
                } else {
                    *result.counts.non_2xx.entry(status).or_default() += 1;
                }
                Some(status)
            }
            Err(failure) => {
                stream = None;
                result.counts.failure(failure);
                None
            }
        };
        if config.keep_records {
            result.records.push(RequestRecord {
                method: config.method.clone(),
                path: config.path.clone(),
                status,
                failure: outcome.err(),
                scheduled_unix_ns: shared.wall.to_unix(scheduled),
                latency_ns,
            });
        }
    }
    result
}

/// One request on the kept connection (or a new one). Leaves `stream` set
/// only if the connection may be reused.
async fn send(
    shared: &Shared,
    stream: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
) -> Result<u16, Failure> {
    let reused = stream.is_some();
    let mut conn = match stream.take() {
        Some(conn) => conn,
        None => connect(shared.config.target).await?,
    };
    let response = match http1::exchange(&mut conn, &shared.request, buf).await {
        Err(e) if reused && is_stale_connection(&e) => {
            conn = connect(shared.config.target).await?;
            http1::exchange(&mut conn, &shared.request, buf).await
        }
        other => other,
    }
    .map_err(|e| classify(&e))?;
    if response.keep_alive {
        *stream = Some(conn);
    }
    Ok(response.status)
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let conn = TcpStream::connect(addr)
        .await
        .map_err(|_| Failure::Connect)?;
    conn.set_nodelay(true).map_err(|_| Failure::Connect)?;
    Ok(conn)
}

/// A kept-alive connection the server closed while it was idle.
fn is_stale_connection(e: &HttpError) -> bool {
    match e {
        HttpError::Closed { received } => *received == 0,
        HttpError::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        HttpError::Malformed(_) => false,
    }
}

fn classify(e: &HttpError) -> Failure {
    match e {
        HttpError::Closed { .. } => Failure::Reset,
        HttpError::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            Failure::Reset
        }
        HttpError::Io(_) | HttpError::Malformed(_) => Failure::Other,
    }
}

/// Sends one request on a fresh connection and returns its status: for
/// health checks.
pub async fn probe(
    target: SocketAddr,
    path: &str,
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
) -> Result<u16, HttpError> {
    let request = http1::build_request("GET", &target.to_string(), path, &[]);
    let attempt = async {
        let mut conn = TcpStream::connect(target).await?;
        let mut buf = Vec::new();
        let response = match tls {
            Some(config) => {
                let name = ServerName::from(target.ip());
                let mut conn = TlsConnector::from(config).connect(name, conn).await?;
                http1::exchange(&mut conn, &request, &mut buf).await
            }
            None => http1::exchange(&mut conn, &request, &mut buf).await,
        };
        response.map(|r| r.status)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| HttpError::Io(io::Error::new(io::ErrorKind::TimedOut, "probe timed out")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced() {
        assert_eq!(scheduled_offset_ns(0, 1000.0), 0);
        assert_eq!(scheduled_offset_ns(1, 1000.0), 1_000_000);
        assert_eq!(scheduled_offset_ns(999, 1000.0), 999_000_000);
        assert_eq!(scheduled_offset_ns(3, 3.0), 1_000_000_000);
        // No drift over long runs at awkward rates.
        assert_eq!(scheduled_offset_ns(3_000_000, 300.0), 10_000_000_000_000);
        assert_eq!(scheduled_offset_ns(7, 7.0 / 3.0), 3_000_000_000);
    }

    #[test]
    fn counts_merge_and_responses() {
        let mut a = Counts {
            ok_2xx: 3,
            ..Counts::default()
        };
        a.non_2xx.insert(500, 1);
        let mut b = Counts {
            ok_2xx: 2,
            timeouts: 1,
            ..Counts::default()
        };
        b.non_2xx.insert(500, 2);
        b.non_2xx.insert(404, 1);
        a.merge(&b);
        assert_eq!(a.responses(), 9);
        assert_eq!(a.non_2xx[&500], 3);
        assert_eq!(a.timeouts, 1);
    }

    #[tokio::test]
    async fn rejects_bad_config() {
        let mut config =
            LoadConfig::get(([127, 0, 0, 1], 1).into(), "/", 0.0, Duration::from_secs(1));
        assert!(matches!(
            run(config.clone()).await,
            Err(LoadError::Config(_))
        ));
        config.rate = 10.0;
        config.connections = 0;
        assert!(matches!(run(config).await, Err(LoadError::Config(_))));
    }
}
