//! OTLP metrics of every instance from one thread and one exporter. The
//! SDK's resource is per meter provider, so each instance has a provider of
//! its own (and the tracer's own counters another, under
//! [`super::instance::tracer_resource`]); but the SDK's `PeriodicReader`
//! starts a thread per provider. Here each provider has a manual reader
//! instead, and one thread collects them all each interval and exports
//! each through one OTLP metric exporter, which takes the resource from
//! what it exports. A retired instance is collected and exported a last
//! time, then its provider is dropped.
use std::{
    collections::HashMap,
    sync::{Arc, Weak, mpsc},
    thread,
    time::{Duration, Instant},
};

use opentelemetry_otlp::MetricExporter;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality,
        data::ResourceMetrics, exporter::PushMetricExporter, reader::MetricReader,
    },
};

/// A manual reader the collecting thread shares with its provider.
#[derive(Clone, Debug)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, metrics: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(metrics)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

enum Command {
    Add(usize, SharedReader),
    /// Collect and export a last time, then drop the provider.
    Retire(usize, SdkMeterProvider),
}

/// The collecting thread's handle. Dropping it (or [`Meters::shutdown`])
/// ends the thread after a last export of every provider still added.
pub struct Meters {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<thread::JoinHandle<()>>,
    temporality: Temporality,
}

impl Meters {
    /// Starts the thread. Over gRPC the exporter's channel is driven by the
    /// runtime it was built in, which must go on running meanwhile.
    pub fn start(exporter: MetricExporter, interval: Duration) -> std::io::Result<Self> {
        let temporality = exporter.temporality();
        let (commands, received) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("tracer-metrics".into())
            .spawn(move || collect(exporter, received, interval))?;
        Ok(Self {
            commands: Some(commands),
            thread: Some(thread),
            temporality,
        })
    }

    /// A provider for `resource`, collected from now on under `key` until
    /// [`Meters::retire`].
    pub fn provider(&self, key: usize, resource: Resource) -> SdkMeterProvider {
        let reader = SharedReader(Arc::new(
            ManualReader::builder()
                .with_temporality(self.temporality)
                .build(),
        ));
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader.clone())
            .build();
        self.send(Command::Add(key, reader));
        provider
    }

    /// Exports `key`'s metrics a last time, then drops its provider.
    pub fn retire(&self, key: usize, provider: SdkMeterProvider) {
        self.send(Command::Retire(key, provider));
    }

    fn send(&self, command: Command) {
        let sent = self
            .commands
            .as_ref()
            .map(|commands| commands.send(command));
        if !matches!(sent, Some(Ok(()))) {
            log::warn!("the metrics thread has stopped; metrics are not exported");
        }
    }

    /// Ends the thread after its last exports: blocks until then, so call
    /// it off the runtime's thread (its exports need the runtime).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::warn!("the metrics thread panicked");
        }
    }
}

impl Drop for Meters {
    fn drop(&mut self) {
        self.stop();
    }
}

fn collect(exporter: MetricExporter, commands: mpsc::Receiver<Command>, interval: Duration) {
    let mut readers: HashMap<usize, SharedReader> = HashMap::new();
    let mut failing = false;
    let mut export = |reader: &SharedReader| {
        let mut metrics = ResourceMetrics::default();
        if let Err(err) = reader.collect(&mut metrics) {
            log::warn!("cannot collect metrics: {err}");
            return;
        }
        if metrics.scope_metrics().next().is_none() {
            return;
        }
        match futures_executor::block_on(exporter.export(&metrics)) {
            Ok(()) if failing => {
                log::info!("OTLP metrics export resumed");
                failing = false;
            }
            Ok(()) => {}
            Err(err) if !failing => {
                log::warn!("OTLP metrics export failed: {err}");
                failing = true;
            }
            Err(_) => {}
        }
    };
    let mut next = Instant::now() + interval;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match commands.recv_timeout(wait) {
            Ok(Command::Add(key, reader)) => {
                readers.insert(key, reader);
            }
            Ok(Command::Retire(key, provider)) => {
                if let Some(reader) = readers.remove(&key) {
                    export(&reader);
                }
                drop(provider);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                readers.values().for_each(&mut export);
                next = Instant::now() + interval;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                readers.values().for_each(&mut export);
                break;
            }
        }
    }
    if let Err(err) = exporter.shutdown() {
        log::debug!("metric exporter shutdown: {err}");
    }
}
