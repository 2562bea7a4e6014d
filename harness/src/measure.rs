//! What `harness cost`, `harness overload` and `harness soak` share: the
//! cores they use, the embedded sink, waiting until every answered request
//! is accounted for, the tracer's CPU, and interleaved pairs of
//! measurements with and without the tracer.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    affinity,
    cpu::{self, BpfProgStats, CpuUsage},
    losses::Losses,
    report::median,
    sink::{Sink, SinkOptions},
    tracer::{TracerError, TracerProcess},
};

/// The core the servers under test run on.
pub const SERVER_CORE: usize = 0;
/// The core of everything else: the harness (load generator, sink) and the
/// tracer, so that none of it takes the server's CPU.
pub const TOOLS_CORE: usize = 1;
/// How long the tracer may take, once the load has ended, to account for
/// every request: a loss shows up only at its next metrics export.
const ACCOUNTING_CEILING: Duration = Duration::from_secs(30);
const ACCOUNTING_POLL: Duration = Duration::from_millis(500);

/// Pins the calling thread, and the threads it starts later, to
/// [`TOOLS_CORE`]. Call before starting a runtime.
pub fn pin_to_tools_core() -> Result<()> {
    affinity::pin_current_thread(TOOLS_CORE)
        .with_context(|| format!("pinning the harness to core {TOOLS_CORE}"))
}

/// The tracer binary as an absolute path, checked to exist.
pub fn tracer_bin(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("tracer binary {}", path.display()))
}

/// The embedded OTLP sink on loopback ports, counting spans without keeping
/// them: it shares the tools core with the tracer, and decoding tens of
/// thousands of spans a second must stay cheap there.
pub async fn start_sink() -> Result<Sink> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let counting = SinkOptions {
        keep_spans: false,
        ..SinkOptions::default()
    };
    Sink::start_with(loopback, loopback, counting)
        .await
        .context("starting the OTLP sink")
}

/// Where the requests a service answered went, as the sink has received it
/// so far: server spans, or requests the tracer counted lost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accounted {
    pub spans: u64,
    pub losses: Losses,
}

impl Accounted {
    pub fn read(sink: &Sink, service: &str) -> Result<Self> {
        Ok(Self {
            spans: sink.server_span_count(service),
            losses: Losses::from_metrics(&sink.metrics())?,
        })
    }

    /// Requests accounted for: spans plus requests lost.
    pub fn requests(&self) -> f64 {
        self.spans as f64 + self.losses.requests()
    }
}

/// Waits until each of `answered` requests of `service` is a span or a
/// counted loss, or [`ACCOUNTING_CEILING`] passes; returns what was
/// accounted for by then (which the caller judges).
pub async fn wait_until_accounted(sink: &Sink, service: &str, answered: u64) -> Result<Accounted> {
    let deadline = Instant::now() + crate::patience::ceiling(ACCOUNTING_CEILING);
    loop {
        let accounted = Accounted::read(sink, service)?;
        if accounted.requests() >= answered as f64 || Instant::now() >= deadline {
            return Ok(accounted);
        }
        tokio::time::sleep(ACCOUNTING_POLL).await;
    }
}

/// The tracer's CPU from a starting point: its process (its threads' run
/// time, in ns) and its BPF programs, which run in whatever task triggers
/// them (counted only while a [`cpu::BpfStatsGuard`] is held).
pub struct TracerCpu {
    pid: u32,
    cpu_ns: u64,
    bpf: BpfProgStats,
}

/// What [`TracerCpu`] measured, over the wall time given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TracerCpuUsage {
    pub process: CpuUsage,
    pub bpf: CpuUsage,
}

impl TracerCpuUsage {
    /// Process and programs together, in percent of one core.
    pub fn percent_of_core(&self) -> f64 {
        self.process.percent_of_core() + self.bpf.percent_of_core()
    }
}

impl TracerCpu {
    pub fn start(tracer: &TracerProcess) -> Result<Self> {
        let pid = tracer.pid();
        Ok(Self {
            pid,
            cpu_ns: cpu::process_cpu_ns(pid)?,
            bpf: cpu::bpf_prog_stats(pid)?,
        })
    }

    /// The CPU used since [`TracerCpu::start`], over `wall` (the load's
    /// duration: that is what the work was for).
    pub fn since_start(&self, wall: Duration) -> Result<TracerCpuUsage> {
        let wall_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
        let cpu_ns = cpu::process_cpu_ns(self.pid)?.saturating_sub(self.cpu_ns);
        let bpf = cpu::bpf_prog_stats(self.pid)?.since(&self.bpf);
        Ok(TracerCpuUsage {
            process: CpuUsage { cpu_ns, wall_ns },
            bpf: CpuUsage {
                cpu_ns: bpf.run_time_ns,
                wall_ns,
            },
        })
    }
}

/// Measurements without and with the tracer.
#[derive(Clone, Debug, PartialEq)]
pub struct Sides<T> {
    pub without: Vec<T>,
    pub with: Vec<T>,
}

impl<T> Sides<T> {
    /// Both sides with their names in a report.
    pub fn labelled(&self) -> [(&'static str, &[T]); 2] {
        [
            ("without tracer", &self.without),
            ("with tracer", &self.with),
        ]
    }
}

/// Takes `pairs` measurements on each side; `start_tracer` runs the tracer
/// for a measurement with it (the tracer stops when what it returns is
/// dropped, after that measurement). Which side goes first alternates from
/// pair to pair, so drift favours neither.
pub async fn interleaved<T, Tracer>(
    pairs: usize,
    mut start_tracer: impl FnMut() -> Result<Tracer, TracerError>,
    mut measure: impl AsyncFnMut() -> Result<T>,
) -> Result<Sides<T>> {
    let mut sides = Sides {
        without: Vec::with_capacity(pairs),
        with: Vec::with_capacity(pairs),
    };
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_tracer in order {
            let tracer = with_tracer
                .then(&mut start_tracer)
                .transpose()
                .context("starting the tracer")?;
            let value = measure().await?;
            drop(tracer);
            if with_tracer {
                &mut sides.with
            } else {
                &mut sides.without
            }
            .push(value);
        }
    }
    Ok(sides)
}

/// The median and range of some measurements (NaN and infinities when
/// there are none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let values: Vec<f64> = values.into_iter().collect();
        Self {
            median: median(&values).unwrap_or(f64::NAN),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn pairs_alternate_which_side_goes_first() {
        let running = Rc::new(RefCell::new(false));
        let start = || {
            *running.borrow_mut() = true;
            Ok(StopOnDrop(running.clone()))
        };
        let mut runs = 0;
        let sides = interleaved(3, start, async || {
            runs += 1;
            Ok((runs, *running.borrow()))
        })
        .await
        .expect("no failure");
        let order = |side: &[(i32, bool)]| side.iter().map(|run| run.0).collect::<Vec<_>>();
        assert_eq!(order(&sides.without), [1, 4, 5]);
        assert_eq!(order(&sides.with), [2, 3, 6]);
        assert!(sides.without.iter().all(|run| !run.1));
        assert!(sides.with.iter().all(|run| run.1));
    }

    struct StopOnDrop(Rc<RefCell<bool>>);

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            *self.0.borrow_mut() = false;
        }
    }

    #[test]
    fn spread_of_measurements() {
        let spread = Spread::of([3.0, 1.0, 10.0, 2.0]);
        assert_eq!(
            spread,
            Spread {
                median: 2.5,
                min: 1.0,
                max: 10.0
            }
        );
        assert!(Spread::of([]).median.is_nan());
    }
}
