//! One traced process tree, a service's instance, as the export side sees it.
use std::sync::Arc;

use opentelemetry_sdk::Resource;

use crate::assembly::CompletedRequest;

#[derive(Debug)]
pub struct Instance {
    /// Index into `ExportConfig::services`.
    pub service: usize,
    /// Its whole OTLP resource, never shared with another instance.
    pub resource: Resource,
}

/// What the daemon sends the export task.
pub enum ExportItem {
    Request(Arc<Instance>, CompletedRequest),
    /// Every process of the instance is gone: flush what it has, export its
    /// metrics a last time, free its exporters.
    Retired(Arc<Instance>),
}
