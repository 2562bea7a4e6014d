//! The OTLP resource of each instance: what the tracer detects of the
//! process, then `OTEL_RESOURCE_ATTRIBUTES`, then `service.name` in the
//! order the issue and the SDK specification give: the service's own name,
//! `OTEL_SERVICE_NAME` (when the tracer traces one service), the systemd
//! unit, the executable.
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use super::{cgroup, process::ProcessInfo, selector::ServiceSpec};

/// What every instance's resource shares.
#[derive(Clone, Debug)]
pub struct ResourceBase {
    pub host_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub attributes: Vec<KeyValue>,
    /// `OTEL_SERVICE_NAME`, or `service.name` of the attributes, when one
    /// service is traced (with several it would name them all alike).
    pub service_name: Option<String>,
}

impl ResourceBase {
    pub fn from_host(attributes: Vec<KeyValue>, service_name: Option<String>) -> Self {
        Self {
            host_name: crate::telemetry::instance::host_name(),
            attributes,
            service_name,
        }
    }

    pub fn service_name(&self, spec: &ServiceSpec, root: &ProcessInfo) -> String {
        spec.name
            .clone()
            .or_else(|| self.service_name.clone())
            .or_else(|| {
                let unit = cgroup::unit_of(root.cgroup.as_deref()?)?;
                Some(unit.strip_suffix(".service").unwrap_or(unit).to_owned())
            })
            .unwrap_or_else(|| root.comm.clone())
    }

    /// The resource of the instance rooted at `root`.
    pub fn instance(&self, spec: &ServiceSpec, root: &ProcessInfo) -> Resource {
        let mut detected = vec![
            KeyValue::new("host.name", self.host_name.clone()),
            KeyValue::new("service.instance.id", self.instance_id(root)),
            KeyValue::new("process.pid", i64::from(root.pid)),
            KeyValue::new("telemetry.sdk.name", "tracer"),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ];
        if let Some(name) = root.executable_name() {
            detected.push(KeyValue::new("process.executable.name", name));
        }
        if let Some(runtime) = root.runtime_name() {
            detected.push(KeyValue::new("process.runtime.name", runtime));
        }
        if let Some(id) = root.cgroup.as_deref().and_then(cgroup::container_id) {
            detected.push(KeyValue::new("container.id", id.to_owned()));
        }
        Resource::builder_empty()
            .with_attributes(detected)
            .with_attributes(self.attributes.iter().cloned())
            .with_service_name(self.service_name(spec, root))
            .build()
    }

    /// Stable for the process's life, across tracer restarts, and never
    /// reused by a later process with the same pid: a name-based UUID of
    /// the host, the pid and its start time.
    fn instance_id(&self, root: &ProcessInfo) -> String {
        // Any fixed namespace will do; this one is the tracer's own.
        const NAMESPACE: uuid::Uuid =
            uuid::Uuid::from_u128(0x6f1d_5c3e_8a47_4b0f_9e2d_71c4_a8b3_0e55);
        let name = format!("{}:{}:{}", self.host_name, root.pid, root.start_ticks);
        uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(resource: &Resource, key: &'static str) -> Option<String> {
        resource.get(&key.into()).map(|value| value.to_string())
    }

    #[test]
    fn names_and_attributes_in_order() {
        let root = ProcessInfo {
            pid: 42,
            exe: Some("/usr/bin/python3.11".into()),
            comm: "gunicorn".into(),
            cgroup: Some(format!("/system.slice/docker-{}.scope", "ab".repeat(32))),
            start_ticks: 7,
            ..Default::default()
        };
        let base = ResourceBase {
            host_name: "web-1".into(),
            attributes: vec![KeyValue::new("deployment.environment", "prod")],
            service_name: None,
        };
        let unnamed = ServiceSpec::default();
        let resource = base.instance(&unnamed, &root);
        for (key, expected) in [
            ("service.name", "gunicorn"),
            ("process.pid", "42"),
            ("process.executable.name", "python3.11"),
            ("process.runtime.name", "cpython"),
            ("host.name", "web-1"),
            ("deployment.environment", "prod"),
        ] {
            assert_eq!(value(&resource, key).as_deref(), Some(expected), "{key}");
        }
        assert_eq!(value(&resource, "container.id"), Some("ab".repeat(32)));
        let id = value(&resource, "service.instance.id").unwrap();
        assert_eq!(
            Some(id.clone()),
            value(&base.instance(&unnamed, &root), "service.instance.id")
        );
        let restarted = ProcessInfo {
            start_ticks: 8,
            ..root.clone()
        };
        assert_ne!(
            Some(id),
            value(&base.instance(&unnamed, &restarted), "service.instance.id")
        );

        let in_unit = ProcessInfo {
            cgroup: Some("/system.slice/shop.service".into()),
            ..root.clone()
        };
        assert_eq!(base.service_name(&unnamed, &in_unit), "shop");
        let from_env = ResourceBase {
            service_name: Some("env".into()),
            ..base.clone()
        };
        assert_eq!(from_env.service_name(&unnamed, &in_unit), "env");
        let named = ServiceSpec {
            name: Some("config".into()),
            ..Default::default()
        };
        assert_eq!(from_env.service_name(&named, &in_unit), "config");
    }
}
