//! The daemon: checks what it needs, loads the programs, seeds the traced
//! tree, then reads the ring buffer until a signal or until the whole traced
//! tree has exited. Killing it at any point leaves the traced service as it
//! was: the programs only read, and the kernel detaches them with our fds.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc::error::TrySendError,
};

use crate::{
    assembly::{Assembler, CompletedRequest},
    cli::Config,
    events::{self, Event},
    exit::Exit,
    kernel::{
        loader::{self, KernelSide, LoadError},
        privileges,
    },
    proctree,
    stats::Stats,
    telemetry::{
        clock::Clock,
        exporter,
        instance::{ExportItem, Instance},
        otlp::ExporterSetupError,
        prometheus::{self, ListenError},
    },
};

/// A response of unknown length is finished after this much silence.
const IDLE_RESPONSE: Duration = Duration::from_secs(2);
/// How often the ring buffer is drained. The programs wake the daemon only
/// when a lot is waiting, so at ordinary rates this timer does all the
/// reading, in batches, instead of one wakeup per event. Each tick costs a
/// wakeup even when idle, so the interval trades idle CPU for how late spans
/// leave (at most this much, their timestamps unchanged); the measured
/// trade is in docs/results/overload.md.
const DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Above this many requests a second, drain every [`BUSY_DRAIN_INTERVAL`]
/// instead: the same work in small slices rather than one burst per
/// interval, which delays whatever shares the tracer's core
/// (docs/results/overload.md).
const BUSY_REQUESTS_PER_SECOND: f64 = 2_000.0;
const BUSY_DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// Listening ports are re-read this often, and whenever the tree changes.
const PORT_RESCAN_TICKS: u32 = 30;
/// A connection silent this long lost its close event; forget it.
const FORGET_CONNECTION: Duration = Duration::from_secs(300);
const EXPORT_DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "not permitted: loading BPF programs needs root, or CAP_BPF and CAP_PERFMON (effective capabilities: {0:#x})"
    )]
    NotPermitted(u64),
    #[error("no such process: {0}")]
    NoSuchPid(u32),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Exporter(#[from] ExporterSetupError),
    #[error(transparent)]
    PrometheusListen(#[from] ListenError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    /// How the tracer exits with this error.
    pub fn exit(&self) -> Exit {
        match self {
            Self::NotPermitted(_) => Exit::NotPermitted,
            Self::NoSuchPid(_) => Exit::NoSuchPid,
            Self::Load(_) => Exit::KernelUnsupported,
            Self::Exporter(_) => Exit::ExporterSetup,
            Self::PrometheusListen(_) => Exit::PrometheusListen,
            Self::Io { .. } => Exit::Failure,
        }
    }
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { context, source }
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    let capabilities = privileges::effective_capabilities().map_err(io("reading capabilities"))?;
    if !privileges::can_trace(capabilities) {
        return Err(DaemonError::NotPermitted(capabilities));
    }
    if let Some(&missing) = config.pids.iter().find(|&&pid| !proctree::is_alive(pid)) {
        return Err(DaemonError::NoSuchPid(missing));
    }
    let stats = Arc::new(Stats::default());
    // Bound before anything is loaded, so a port in use fails at once.
    let prometheus = match config.prometheus {
        Some(address) => Some(prometheus::start(address, stats.clone()).await?),
        None => None,
    };
    if let Some(otlp) = &config.export.otlp {
        for endpoint in otlp.endpoints() {
            warn_if_unreachable(endpoint).await;
        }
    }
    let loader::Loaded {
        mut kernel,
        events: ring,
        probe_set,
        refused,
    } = loader::load(config.probes)?;
    for reason in &refused {
        log::info!("probe set refused by this kernel: {reason}");
    }
    log::info!(
        "probe set {} ({})",
        probe_set.name(),
        if refused.is_empty() {
            format!("{:?}", config.probes).to_lowercase()
        } else {
            "the cheapest this kernel accepts".to_owned()
        }
    );
    // Programs are attached first, so a fork from now on is followed in the
    // kernel; then the tree as it is now is seeded.
    let mut tree = proctree::tree_of(&config.pids);
    for &pid in &tree {
        kernel.trace_task(pid)?;
    }
    let mut ports = refresh_ports(&mut kernel, &tree, &BTreeSet::new())?;
    log::info!(
        "tracing {} processes {:?} with {}, listening on ports {:?}",
        tree.len(),
        tree,
        probe_set.name(),
        ports
    );
    // The one readiness signal: systemd's `Type=notify` and the harness wait
    // for it (programs attached, tree seeded); without NOTIFY_SOCKET a no-op.
    notify(sd_notify::NotifyState::Ready);

    let clock = Clock::new();
    // The one instance traced: every request is its.
    let instance = Arc::new(Instance {
        service: 0,
        resource: config.resource.clone(),
    });
    let export = exporter::start(
        config.export.clone(),
        clock,
        stats.clone(),
        prometheus.as_ref().map(prometheus::Endpoint::recorder),
    )?;
    // SAFETY: the ring buffer owns its fd and outlives this registration
    // (AsyncFd holds it); nothing else closes it.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|err| DaemonError::Io {
        context: "polling the ring buffer",
        source: err.into(),
    })?;
    let mut assembler = Assembler::new(config.keep_query);
    let mut done = Vec::new();
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("installing SIGINT handler"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("installing SIGTERM handler"))?;
    let mut drain_period = DRAIN_INTERVAL;
    let drain = tokio::time::sleep(drain_period);
    tokio::pin!(drain);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks_since_rescan = 0;
    let mut tree_changed = false;
    let mut report = tokio::time::interval(config.stats_interval);
    report.tick().await;

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(io("waiting for the ring buffer"))?;
                tree_changed |= read_events(guard.get_inner_mut(), &mut assembler, &mut tree, &stats, &mut done);
                guard.clear_ready();
            }
            _ = &mut drain => {
                tree_changed |= read_events(ring.get_mut(), &mut assembler, &mut tree, &stats, &mut done);
                let rate = done.len() as f64 / drain_period.as_secs_f64();
                drain_period = if rate >= BUSY_REQUESTS_PER_SECOND {
                    BUSY_DRAIN_INTERVAL
                } else {
                    DRAIN_INTERVAL
                };
                drain.as_mut().reset(tokio::time::Instant::now() + drain_period);
            }
            _ = tick.tick() => {
                let now = Clock::monotonic_now_ns();
                assembler.sweep(
                    now.saturating_sub(IDLE_RESPONSE.as_nanos() as u64),
                    now.saturating_sub(FORGET_CONNECTION.as_nanos() as u64),
                    &mut done,
                );
                tree.retain(|&pid| proctree::is_alive(pid));
                if let Some(endpoint) = &prometheus {
                    endpoint.set_traced_processes(tree.len());
                }
                if tree.is_empty() {
                    log::info!("every traced process has exited; stopping");
                    break;
                }
                ticks_since_rescan += 1;
                if tree_changed || ticks_since_rescan >= PORT_RESCAN_TICKS {
                    ports = refresh_ports(&mut kernel, &tree, &ports)?;
                    ticks_since_rescan = 0;
                    tree_changed = false;
                }
            }
            _ = report.tick() => {
                stats.set_kernel(kernel.counters());
                stats.set_assembly(assembler.counters);
                log::info!("{} open_connections={}", stats.summary(), assembler.open_connections());
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        send(&export.queue, &instance, &mut done, &stats);
    }

    // Finish what is pending and flush it.
    notify(sd_notify::NotifyState::Stopping);
    let _ = read_events(ring.get_mut(), &mut assembler, &mut tree, &stats, &mut done);
    assembler.drain(&mut done);
    send(&export.queue, &instance, &mut done, &stats);
    stats.set_kernel(kernel.counters());
    stats.set_assembly(assembler.counters);
    drop(export.queue);
    if tokio::time::timeout(EXPORT_DRAIN, export.task)
        .await
        .is_err()
    {
        log::warn!("export did not finish within {EXPORT_DRAIN:?}; pending spans are lost");
    }
    log::info!("stopped: {}", stats.summary());
    Ok(())
}

/// Tells the supervisor, if any, how the daemon stands; a failure only
/// costs the supervisor its signal, never the tracing.
fn notify(state: sd_notify::NotifyState) {
    if let Err(err) = sd_notify::notify(&[state]) {
        log::warn!("cannot notify the supervisor (NOTIFY_SOCKET): {err}");
    }
}

/// Drains the ring buffer; says whether the traced tree changed.
fn read_events(
    ring: &mut RingBuf<MapData>,
    assembler: &mut Assembler,
    tree: &mut BTreeSet<u32>,
    stats: &Stats,
    done: &mut Vec<CompletedRequest>,
) -> bool {
    let mut tree_changed = false;
    while let Some(record) = ring.next() {
        match events::decode(&record) {
            Ok(event) => {
                match event {
                    Event::TaskFork { child } => {
                        tree_changed |= tree.insert(child);
                    }
                    Event::TaskExit { task, .. } => {
                        tree_changed |= tree.remove(&task);
                    }
                    _ => {}
                }
                assembler.handle(&event, done);
            }
            Err(err) => {
                let before = stats
                    .bad_records
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if before == 0 {
                    log::warn!("skipping a malformed ring-buffer record: {err}");
                }
            }
        }
    }
    tree_changed
}

fn send(
    queue: &tokio::sync::mpsc::Sender<ExportItem>,
    instance: &Arc<Instance>,
    done: &mut Vec<CompletedRequest>,
    stats: &Stats,
) {
    use std::sync::atomic::Ordering::Relaxed;
    for request in done.drain(..) {
        stats.requests.fetch_add(1, Relaxed);
        match queue.try_send(ExportItem::Request(instance.clone(), request)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                stats.queue_full.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Keeps the kernel's listening-port set equal to what the tree listens on.
fn refresh_ports(
    kernel: &mut KernelSide,
    tree: &BTreeSet<u32>,
    current: &BTreeSet<u16>,
) -> Result<BTreeSet<u16>, DaemonError> {
    let ports = proctree::listening_ports(tree);
    if &ports != current {
        kernel.set_listen_ports(&ports)?;
    }
    Ok(ports)
}

async fn warn_if_unreachable(endpoint: &str) {
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let address = if authority.contains(':') {
        authority.to_owned()
    } else if endpoint.starts_with("https") {
        format!("{authority}:443")
    } else {
        format!("{authority}:80")
    };
    let connect = tokio::net::TcpStream::connect(&address);
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => log::warn!(
            "OTLP collector {endpoint} is unreachable ({err}); tracing goes on; requests are kept (up to --queue-size) and sent when it answers"
        ),
        Err(_) => log::warn!("OTLP collector {endpoint} did not answer within 2s; tracing goes on"),
    }
}
