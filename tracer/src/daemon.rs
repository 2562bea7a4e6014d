//! The daemon: checks what it needs, loads the programs, traces the
//! processes the selectors select now, then reads the ring buffer (which
//! also tells of new processes to trace) until a signal, or, with `--pid`
//! alone, until the traced trees have exited. Killing it at any point
//! leaves the traced services as they were: the programs only read, and the
//! kernel detaches them with our fds.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc::error::TrySendError,
};

use crate::{
    assembly::{Assembler, CompletedRequest},
    cli::Config,
    discovery::{
        process::ProcessInfo,
        registry::{DEPARTED_GRACE, Registry},
    },
    events::{self, Event},
    exit::Exit,
    kernel::{
        loader::{self, KernelSide, LoadError},
        privileges,
    },
    proctree,
    stats::Stats,
    telemetry::{
        active::ActiveRequests,
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
    let registry = Registry::new(config.services.clone(), config.resource_base.clone());
    if registry.only_pids() {
        let pids = config.services.iter().flat_map(|service| service.pids());
        if let Some(missing) = pids.into_iter().find(|&pid| !proctree::is_alive(pid)) {
            return Err(DaemonError::NoSuchPid(missing));
        }
    }
    let stats = Arc::new(Stats::default());
    // Bound before anything is loaded, so a port in use fails at once.
    let active = ActiveRequests::default();
    let prometheus = match config.prometheus {
        Some(address) => Some(prometheus::start(address, stats.clone(), active.clone()).await?),
        None => None,
    };
    if let Some(otlp) = &config.export.otlp {
        for endpoint in otlp.endpoints() {
            warn_if_unreachable(endpoint).await;
        }
    }
    let watch_execs = config
        .services
        .iter()
        .any(|service| service.watches_execs());
    let loader::Loaded {
        kernel,
        events: ring,
        probe_set,
        refused,
    } = loader::load(config.probes, watch_execs, config.capture_headers.kernel())?;
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
    // Programs are attached first, so a fork, exec or listen from now on is
    // seen in the kernel; then what runs now is found in /proc.
    let mut selection = Selection {
        kernel,
        registry,
        idle_said: false,
        retired: Vec::new(),
    };
    selection.start()?;
    let mut ports = refresh_ports(
        &mut selection.kernel,
        &selection.registry.tasks(),
        &BTreeSet::new(),
    )?;
    log::info!(
        "tracing {} processes with {}, listening on ports {:?}",
        selection.registry.tasks().len(),
        probe_set.name(),
        ports
    );
    // The one readiness signal: systemd's `Type=notify` and the harness wait
    // for it (programs attached, running processes traced); without
    // NOTIFY_SOCKET a no-op.
    notify(sd_notify::NotifyState::Ready);

    let clock = Clock::new();
    let export = exporter::start(
        config.export.clone(),
        clock,
        stats.clone(),
        prometheus.as_ref().map(prometheus::Endpoint::recorder),
        active.clone(),
    )?;
    // SAFETY: the ring buffer owns its fd and outlives this registration
    // (AsyncFd holds it); nothing else closes it.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|err| DaemonError::Io {
        context: "polling the ring buffer",
        source: err.into(),
    })?;
    // Query strings are cut per service, when requests leave (see `send`).
    let keep_any_query = config.services.iter().any(|service| service.keep_query);
    let mut assembler = Assembler::new(keep_any_query).capturing(
        config.capture_headers.names().to_vec(),
        config.capture_headers.exported(),
    );
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
    let mut in_flight_seen = 0;
    report.tick().await;

    loop {
        // With nothing traced and no connection open, no record can be
        // waiting unwoken (execs and listens wake the daemon themselves):
        // the periodic drain sleeps, so an idle tracer costs one tick a second.
        let idle = selection.registry.is_empty() && assembler.open_connections() == 0;
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(io("waiting for the ring buffer"))?;
                tree_changed |= read_events(guard.get_inner_mut(), &mut assembler, &mut selection, &stats, &mut done);
                guard.clear_ready();
            }
            _ = &mut drain, if !idle => {
                tree_changed |= read_events(ring.get_mut(), &mut assembler, &mut selection, &stats, &mut done);
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
                // Requests finished by the sweep are attributed before
                // their departed tasks can be forgotten.
                send(&export.queue, &mut done, &selection.registry, &stats);
                if selection.tick() {
                    break;
                }
                selection.send_retired(&export.queue);
                if let Some(endpoint) = &prometheus {
                    endpoint.set_traced_processes(selection.registry.tasks().len());
                }
                ticks_since_rescan += 1;
                if tree_changed || ticks_since_rescan >= PORT_RESCAN_TICKS {
                    ports = refresh_ports(&mut selection.kernel, &selection.registry.tasks(), &ports)?;
                    selection.retry_tls();
                    ticks_since_rescan = 0;
                    tree_changed = false;
                }
            }
            _ = report.tick() => {
                stats.set_kernel(selection.kernel.counters());
                stats.set_assembly(assembler.counters);
                log::info!("{} open_connections={}", stats.summary(), assembler.open_connections());
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        send(&export.queue, &mut done, &selection.registry, &stats);
        if let Some(in_flight) = assembler.in_flight_since(&mut in_flight_seen) {
            active.publish(&in_flight, &selection.registry);
        }
    }

    // Finish what is pending and flush it.
    notify(sd_notify::NotifyState::Stopping);
    let _ = read_events(
        ring.get_mut(),
        &mut assembler,
        &mut selection,
        &stats,
        &mut done,
    );
    assembler.drain(&mut done);
    send(&export.queue, &mut done, &selection.registry, &stats);
    stats.set_kernel(selection.kernel.counters());
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

/// The traced processes: the kernel's task map and the registry of
/// instances, changed together.
struct Selection {
    kernel: KernelSide,
    registry: Registry,
    /// Whether "no selected process is running" was said since the last
    /// process was traced.
    idle_said: bool,
    /// Instances gone whose export state the export task is still to free.
    retired: Vec<Arc<Instance>>,
}

impl Selection {
    /// Watches the selectors' ports, then traces what runs now: each
    /// selected process that no selected process is an ancestor of, as an
    /// instance of the first service that selects it.
    fn start(&mut self) -> Result<(), DaemonError> {
        let ports: BTreeSet<u16> = self
            .registry
            .services()
            .iter()
            .flat_map(|service| service.ports())
            .collect();
        self.kernel.watch_ports(ports.iter().copied())?;
        let listeners = if ports.is_empty() {
            HashMap::new()
        } else {
            proctree::listeners_on(&ports)
        };
        let own = std::process::id();
        let mut parents = HashMap::new();
        let mut selected = BTreeMap::new();
        for pid in proctree::all_pids().filter(|&pid| pid != own) {
            let Some(process) = ProcessInfo::read(pid) else {
                continue;
            };
            if let Some(parent) = process.parent {
                parents.insert(pid, parent);
            }
            let services = self
                .registry
                .select(&process, listeners.get(&pid).unwrap_or(&BTreeSet::new()));
            if !services.is_empty() {
                selected.insert(pid, (process, services));
            }
        }
        let has_selected_ancestor = |pid: u32| {
            let mut ancestor = parents.get(&pid);
            while let Some(&above) = ancestor {
                if selected.contains_key(&above) {
                    return true;
                }
                ancestor = parents.get(&above);
            }
            false
        };
        let roots: Vec<u32> = selected
            .keys()
            .copied()
            .filter(|&pid| !has_selected_ancestor(pid))
            .collect();
        for pid in roots {
            let (process, services) = &selected[&pid];
            self.adopt(process, services)?;
        }
        for (index, service) in self.registry.services().iter().enumerate() {
            if !self.registry.serves(index) {
                log::warn!(
                    "service #{} ({}): no running process matches its selectors yet; waiting for one",
                    index + 1,
                    service.name.as_deref().unwrap_or("unnamed"),
                );
            }
        }
        Ok(())
    }

    /// Traces `root` and its descendants as a new instance of the first of
    /// `services` (all of which select it).
    fn adopt(
        &mut self,
        root: &ProcessInfo,
        services: &[usize],
    ) -> Result<Arc<Instance>, DaemonError> {
        self.kernel.trace_task(root.pid)?;
        let instance = self.registry.adopt(services[0], root);
        // The root is in the kernel's map: what it forks from now on is
        // followed there, and what it forked before is in /proc already.
        for pid in proctree::tree_of(&[root.pid]) {
            self.kernel.trace_task(pid)?;
            self.registry.join(pid, &instance);
            self.trace_tls(pid, true);
        }
        let name = instance.service_name();
        log::info!(
            "tracing pid {} ({}) and its descendants as service {name:?}",
            root.pid,
            root.comm
        );
        if services.len() > 1 {
            log::info!(
                "pid {} is selected by {} services; it is traced once, as {name:?}, the first",
                root.pid,
                services.len()
            );
        }
        self.idle_said = false;
        Ok(instance)
    }

    /// Attaches the OpenSSL uprobes for process `pid`, and says so; when
    /// they cannot be, says why if `tell_why`.
    fn trace_tls(&mut self, pid: u32, tell_why: bool) {
        // Found in /proc at adoption, then its fork read from the ring.
        if self.kernel.traces_tls(pid) {
            return;
        }
        match self.kernel.trace_tls(pid) {
            Ok(library) => {
                let hooked: Vec<&str> = library.functions.iter().map(|(f, _)| f.name).collect();
                log::info!(
                    "HTTPS: pid {pid}: uprobes on {} ({}){}",
                    library.mapped,
                    hooked.join(", "),
                    if library.missing.is_empty() {
                        String::new()
                    } else {
                        format!("; it lacks {}", library.missing.join(", "))
                    }
                );
            }
            Err(err) if tell_why => log::info!("HTTPS: pid {pid}: {err}"),
            Err(err) => log::debug!("HTTPS: pid {pid}: {err}"),
        }
    }

    /// Traced processes without the OpenSSL uprobes try again: one may
    /// have loaded libssl since (Python imports `ssl` when first needed).
    fn retry_tls(&mut self) {
        for task in self.registry.tasks() {
            if !self.kernel.traces_tls(task) && proctree::is_process(task) {
                self.trace_tls(task, false);
            }
        }
    }

    /// A process replaced its image: a new one may be selected, and a
    /// traced root is renamed after what it became.
    fn on_exec(&mut self, tgid: u32) {
        let traced = self.registry.is_traced(tgid);
        if traced && !self.registry.is_root(tgid) {
            return;
        }
        // A short-lived process may be gone already: nothing to trace.
        let Some(process) = ProcessInfo::read(tgid) else {
            return;
        };
        if !traced {
            self.adopt_if_selected(&process, &BTreeSet::new());
        } else if let Some(instance) = self.registry.renew(&process) {
            log::info!(
                "pid {tgid} became {}: traced as service {:?}",
                process.comm,
                instance.service_name()
            );
        }
    }

    /// A socket entered LISTEN in a traced process, or on a watched port
    /// (the kernel traces that process already).
    fn on_listen(&mut self, tgid: u32, port: u16) {
        if self.registry.is_traced(tgid) {
            return;
        }
        if let Some(process) = ProcessInfo::read(tgid) {
            self.adopt_if_selected(&process, &BTreeSet::from([port]));
        }
    }

    /// Tells the export task which instances are gone; what the full queue
    /// refuses is told at the next tick.
    fn send_retired(&mut self, queue: &tokio::sync::mpsc::Sender<ExportItem>) {
        self.retired.retain(|instance| {
            queue
                .try_send(ExportItem::Retired(instance.clone()))
                .is_err()
        });
    }

    fn adopt_if_selected(&mut self, process: &ProcessInfo, ports: &BTreeSet<u16>) {
        let services = self.registry.select(process, ports);
        if services.is_empty() {
            return;
        }
        if let Err(err) = self.adopt(process, &services) {
            log::warn!("cannot trace pid {} ({}): {err}", process.pid, process.comm);
        }
    }

    /// Once a second: forgets what exited; says whether the daemon is done
    /// (selected by pid alone, and every traced process has exited).
    fn tick(&mut self) -> bool {
        let now = Instant::now();
        self.registry.depart_dead(proctree::is_alive, now);
        let retired = self.registry.forget_departed(now - DEPARTED_GRACE);
        self.retired.extend(retired);
        if !self.registry.is_empty() {
            return false;
        }
        if self.registry.only_pids() {
            log::info!("every traced process has exited; stopping");
            return true;
        }
        if !self.idle_said {
            log::info!("no selected process is running; waiting for one to start");
            self.idle_said = true;
        }
        false
    }
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
    selection: &mut Selection,
    stats: &Stats,
    done: &mut Vec<CompletedRequest>,
) -> bool {
    let mut tree_changed = false;
    while let Some(record) = ring.next() {
        match events::decode(&record) {
            Ok(event) => {
                match event {
                    Event::TaskFork { parent, child } => {
                        if let Some(instance) = selection.registry.instance_of(parent).cloned() {
                            selection.registry.join(child, &instance);
                            tree_changed = true;
                            // A forked process (a new worker) has its
                            // parent's libssl mapped, not its uprobes.
                            if proctree::is_process(child) {
                                selection.trace_tls(child, true);
                            }
                        }
                    }
                    Event::TaskExit { tgid, task } => {
                        selection.registry.depart(task, Instant::now());
                        if task == tgid {
                            selection.kernel.untrace_tls(task);
                        }
                        tree_changed = true;
                    }
                    Event::ProcessExec { tgid } => selection.on_exec(tgid),
                    Event::SocketListen { tgid, port } => {
                        selection.on_listen(tgid, port);
                        tree_changed = true;
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

/// Hands finished requests to the export queue, each with its instance.
fn send(
    queue: &tokio::sync::mpsc::Sender<ExportItem>,
    done: &mut Vec<CompletedRequest>,
    registry: &Registry,
    stats: &Stats,
) {
    use std::sync::atomic::Ordering::Relaxed;
    for mut request in done.drain(..) {
        stats.requests.fetch_add(1, Relaxed);
        let Some(instance) = registry.instance_of(request.tgid) else {
            stats.unattributed.fetch_add(1, Relaxed);
            continue;
        };
        if !registry.services()[instance.service].keep_query {
            request.request.strip_query();
        }
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
