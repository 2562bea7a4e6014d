//! What the export side is told about the processes it exports for: each
//! traced process tree is one [`Instance`] of a service, with an OTLP
//! resource of its own, and the daemon tags every completed request with
//! its instance. Spans and metrics of two instances never share a
//! resource: each live instance has its own encoded resource for its spans
//! and its own meter provider, from its first request until it is
//! [`ExportItem::Retired`].
//!
//! Instances are told apart by the address of their `Arc`
//! ([`Instance::key`]): whoever keys state by it also holds a clone of the
//! `Arc`, so the address cannot be reused while the state lives.
//!
//! The tracer's own telemetry (losses, overflows, traced processes) is the
//! daemon's, not any instance's: it goes under [`tracer_resource`], the
//! resource of the tracer as a service of its own (as the OpenTelemetry
//! collector reports its own telemetry under `service.name` = its binary).
use std::sync::{Arc, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use super::routes::RouteConfig;
use crate::assembly::CompletedRequest;

/// One traced process tree (a service's instance) as exported.
#[derive(Debug)]
pub struct Instance {
    /// Index into ExportConfig::services.
    pub service: usize,
    /// Its full OTLP resource (service.name, service.instance.id, process.pid, host.name, ...), built by the caller.
    pub resource: Resource,
}

impl Instance {
    /// Its resource's `service.name`.
    pub fn service_name(&self) -> String {
        self.resource
            .get(&"service.name".into())
            .map(|name| name.to_string())
            .unwrap_or_default()
    }

    /// The instance's identity while an `Arc` of it is held.
    pub(crate) fn key(instance: &Arc<Instance>) -> usize {
        Arc::as_ptr(instance) as usize
    }
}

/// What the daemon sends the export task. Nearly every item is a request:
/// boxing it to shrink the rare other one would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum ExportItem {
    Request(Arc<Instance>, CompletedRequest),
    /// The instance's processes are all gone: flush what it has, export its metrics a last time, free its export state.
    Retired(Arc<Instance>),
}

/// One traced service: how its paths become routes. Each service has its
/// own route state.
#[derive(Clone, Debug)]
pub struct ServiceExport {
    pub routes: RouteConfig,
}

/// The resource of the tracer's own telemetry: `service.name` "tracer",
/// its version, this host and this daemon's pid. The same for the OTLP
/// export and the Prometheus endpoint.
pub fn tracer_resource() -> &'static Resource {
    static RESOURCE: OnceLock<Resource> = OnceLock::new();
    RESOURCE.get_or_init(|| {
        let host = host_name();
        let pid = std::process::id();
        Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "tracer"),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", format!("{host}:{pid}")),
                KeyValue::new("host.name", host),
                KeyValue::new("process.pid", i64::from(pid)),
                KeyValue::new("telemetry.sdk.name", "tracer"),
                KeyValue::new("telemetry.sdk.language", "rust"),
                KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ])
            .build()
    })
}

/// This host's name, for `host.name`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
