//! Command line: `Args` only validates what was typed; `Config` is what the
//! daemon runs with, every default and environment variable resolved (the
//! `OTEL_*` ones by [`otel_env`], flags first).
use std::time::Duration;

use clap::{Parser, Subcommand};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use crate::{
    kernel::probes::ProbeChoice,
    proctree,
    telemetry::{
        exporter::{ExportConfig, OtlpProtocol},
        otel_env::{self, Flags, InvalidSetting},
    },
};

/// Seconds between loss summaries and metric exports, unless set.
const DEFAULT_STATS_INTERVAL: u64 = 10;

#[derive(Parser, Debug)]
#[command(
    version,
    subcommand_negates_reqs = true,
    about = "Trace every HTTP request of a process tree with eBPF and export OTLP spans"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Process to trace with all its descendants, now and later (repeatable).
    #[arg(long = "pid", value_name = "PID", required = true)]
    pub pids: Vec<u32>,
    /// `service.name` of the spans [default: the traced executable's name].
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// OTLP collector endpoint, or `none` to export nothing; over
    /// OTEL_EXPORTER_OTLP_ENDPOINT and the per-signal variables
    /// [default: http://localhost:4317, :4318 for http/protobuf].
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport, over OTEL_EXPORTER_OTLP_PROTOCOL and the per-signal
    /// variables [default: grpc].
    #[arg(long, value_enum)]
    pub otlp_protocol: Option<OtlpProtocol>,
    /// Also print each finished request as one JSON object per line on stdout.
    #[arg(long, value_enum)]
    pub print: Option<PrintFormat>,
    /// Keep query strings in `url.path` (they may hold secrets: off by default).
    #[arg(long)]
    pub keep_query_string: bool,
    /// Kernel hook set: auto picks the cheapest this kernel accepts
    /// (fentry, then tracepoints, then kprobes).
    #[arg(long, value_enum, default_value = "auto")]
    pub probes: ProbeChoice,
    /// Requests waiting for export before new ones are dropped (and counted).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_size: u32,
    /// Seconds between loss summaries in the log and metric exports (over
    /// OTEL_METRIC_EXPORT_INTERVAL) [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_interval: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show what this kernel and this process offer for tracing.
    Doctor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrintFormat {
    Json,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub pids: Vec<u32>,
    pub probes: ProbeChoice,
    pub keep_query: bool,
    pub export: ExportConfig,
    pub stats_interval: Duration,
}

impl Args {
    pub fn into_config(self) -> Result<Config, InvalidSetting> {
        self.resolve(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// [`Args::into_config`] with the environment read through `lookup`.
    fn resolve(self, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, InvalidSetting> {
        let stats_interval = self.stats_interval.map(Duration::from_secs);
        let flags = Flags {
            endpoint: self.otlp_endpoint.as_deref(),
            protocol: self.otlp_protocol,
            metric_interval: stats_interval,
        };
        let otel = otel_env::resolve(&flags, lookup)?;
        let root = self.pids.first().copied().unwrap_or_default();
        // --service-name or OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES,
        // as the specification orders them.
        let service_name = self
            .service_name
            .or_else(|| {
                otel.resource_attributes
                    .iter()
                    .find(|attribute| attribute.key.as_str() == "service.name")
                    .map(|attribute| attribute.value.to_string())
            })
            .or_else(|| proctree::command_name(root))
            .unwrap_or_else(|| "unknown_service".into());
        // OTEL_RESOURCE_ATTRIBUTES overrides what the tracer detects.
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("host.name", host_name()),
                KeyValue::new("process.pid", i64::from(root)),
                KeyValue::new("telemetry.sdk.name", "tracer"),
                KeyValue::new("telemetry.sdk.language", "rust"),
                KeyValue::new("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ])
            .with_attributes(otel.resource_attributes)
            .with_service_name(service_name)
            .build();
        let stats_interval = stats_interval.unwrap_or(Duration::from_secs(DEFAULT_STATS_INTERVAL));
        Ok(Config {
            pids: self.pids,
            probes: self.probes,
            keep_query: self.keep_query_string,
            export: ExportConfig {
                otlp: otel.otlp,
                sampler: otel.sampler,
                resource,
                print_json: self.print == Some(PrintFormat::Json),
                queue_capacity: self.queue_size as usize,
                metric_interval: otel.metric_interval.unwrap_or(stats_interval),
            },
            stats_interval,
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("tracer").chain(args.iter().copied()))
    }

    /// Resolves with only the variables given, none of the process's.
    fn config(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, InvalidSetting> {
        let args = parse(args).expect("valid arguments");
        args.resolve(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string())
        })
    }

    fn resource_value(config: &Config, key: &'static str) -> Option<String> {
        config
            .export
            .resource
            .get(&key.into())
            .map(|value| value.to_string())
    }

    #[test]
    fn validates_input() {
        assert!(parse(&[]).is_err(), "a pid is required");
        assert!(parse(&["--pid", "-3"]).is_err());
        assert!(parse(&["--pid", "1", "--otlp-protocol", "carrier-pigeon"]).is_err());
        assert!(parse(&["--pid", "1", "--queue-size", "0"]).is_err());
        assert!(config(&["--pid", "1", "--otlp-endpoint", "localhost:4317"], &[]).is_err());
        let none = config(
            &["--pid", "1", "--otlp-endpoint", "none", "--print", "json"],
            &[],
        )
        .expect("valid");
        assert!(none.export.otlp.is_none());
        assert!(none.export.print_json);
        let http = parse(&[
            "--pid",
            "1",
            "--pid",
            "2",
            "--otlp-protocol",
            "http/protobuf",
        ])
        .unwrap();
        assert_eq!(http.otlp_protocol, Some(OtlpProtocol::HttpProtobuf));
        assert_eq!(http.pids, vec![1, 2]);
    }

    #[test]
    fn intervals_flag_over_variable_over_default() {
        let interval = [("OTEL_METRIC_EXPORT_INTERVAL", "250")];
        let from_env = config(&["--pid", "1"], &interval).expect("valid");
        assert_eq!(from_env.export.metric_interval, Duration::from_millis(250));
        assert_eq!(from_env.stats_interval, Duration::from_secs(10));
        let flagged = config(&["--pid", "1", "--stats-interval", "3"], &interval).expect("valid");
        assert_eq!(flagged.export.metric_interval, Duration::from_secs(3));
        assert_eq!(flagged.stats_interval, Duration::from_secs(3));
        let default = config(&["--pid", "1"], &[]).expect("valid");
        assert_eq!(default.export.metric_interval, Duration::from_secs(10));
    }

    #[test]
    fn service_name_and_resource_attributes_in_the_specifications_order() {
        let attributes = [(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attributes,host.name=web-1,deployment.environment=prod",
        )];
        let from_attributes = config(&["--pid", "1"], &attributes).expect("valid");
        for (key, expected) in [
            ("service.name", "from-attributes"),
            ("host.name", "web-1"),
            ("deployment.environment", "prod"),
            ("telemetry.sdk.name", "tracer"),
        ] {
            assert_eq!(
                resource_value(&from_attributes, key).as_deref(),
                Some(expected)
            );
        }
        let flagged =
            config(&["--pid", "1", "--service-name", "flag"], &attributes).expect("valid");
        assert_eq!(
            resource_value(&flagged, "service.name").as_deref(),
            Some("flag")
        );
    }
}
