//! Command line: `Args` only validates what was typed; `Config` is what the
//! daemon runs with, every default and environment variable resolved (the
//! `OTEL_*` ones by [`otel_env`], flags first).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand};

use crate::{
    capture::{CaptureHeaderError, CaptureHeaders, HeaderName},
    discovery::{
        config_file::{self, ConfigFileError},
        resource::ResourceBase,
        selector::{self, ExePattern, PortRange, Selector, ServiceSpec},
    },
    kernel::probes::ProbeChoice,
    telemetry::{
        exporter::{ExportConfig, OtlpProtocol},
        instance::ServiceExport,
        otel_env::{self, Flags, InvalidSetting},
        routes::{self, RouteConfig, RoutePattern, UnmatchedRoute},
    },
};

/// Seconds between loss summaries and metric exports, unless set.
const DEFAULT_STATS_INTERVAL: u64 = 10;

#[derive(Parser, Debug)]
#[command(
    version,
    subcommand_negates_reqs = true,
    about = "Trace every HTTP request of the selected processes with eBPF and export OTLP spans"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    // What to trace: the selectors of one service (or several, with
    // --config). A process any of them selects is traced with all its
    // descendants. With --pid alone the tracer stops when those trees are
    // gone; with any other selector it waits for the next process.
    /// Process to trace with all its descendants (repeatable).
    #[arg(
        long = "pid",
        value_name = "PID",
        env = "TRACER_PID",
        value_delimiter = ','
    )]
    pub pids: Vec<u32>,
    /// Whatever listens on this port or range (8000, 8000-8010), now or later (repeatable).
    #[arg(
        long = "port",
        value_name = "PORT",
        env = "TRACER_PORT",
        value_delimiter = ','
    )]
    pub ports: Vec<PortRange>,
    /// Processes whose executable, script or command line matches this glob
    /// (`gunicorn` matches `python .../gunicorn`), now or later (repeatable).
    #[arg(
        long = "exe",
        value_name = "GLOB",
        env = "TRACER_EXE",
        value_delimiter = ','
    )]
    pub exes: Vec<ExePattern>,
    /// Every process in this cgroup v2 (a directory under the mount, or a
    /// path inside the hierarchy) or below it, now or later (repeatable).
    #[arg(long = "cgroup", value_name = "PATH", env = "TRACER_CGROUP", value_delimiter = ',', value_parser = selector::cgroup_selector)]
    pub cgroups: Vec<Selector>,
    /// Every process of this systemd unit (`web` is `web.service`), now or later (repeatable).
    #[arg(long = "systemd-unit", value_name = "UNIT", env = "TRACER_SYSTEMD_UNIT", value_delimiter = ',', value_parser = selector::unit_name)]
    pub units: Vec<String>,
    /// A YAML file listing services, each with its selectors and options
    /// (docs/configuration.md); after the service of the flags above, if any.
    #[arg(long, value_name = "FILE", env = "TRACER_CONFIG")]
    pub config: Option<PathBuf>,
    /// `service.name` of the service the flags select [default:
    /// OTEL_SERVICE_NAME when one service is traced, else the systemd unit,
    /// else the executable's name].
    #[arg(long, env = "TRACER_SERVICE_NAME")]
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
    #[arg(long, env = "TRACER_PRINT", value_enum)]
    pub print: Option<PrintFormat>,
    /// Keep query strings in `url.path` (they may hold secrets: off by default).
    #[arg(long, env = "TRACER_KEEP_QUERY_STRING")]
    pub keep_query_string: bool,
    /// Request header whose value goes on the span as
    /// `http.request.header.<name>` (repeatable, at most 8, for every
    /// service); nothing else of the head leaves the kernel [default: none].
    #[arg(
        long = "capture-header",
        value_name = "NAME",
        env = "TRACER_CAPTURE_HEADER",
        value_delimiter = ','
    )]
    pub capture_headers: Vec<HeaderName>,
    /// Do not read incoming W3C `traceparent`/`tracestate` headers: every
    /// served request starts a trace of its own, and the kernel scans no
    /// request head for them.
    #[arg(long, env = "TRACER_NO_TRACE_CONTEXT")]
    pub no_trace_context: bool,
    /// Kernel hook set: auto picks the cheapest this kernel accepts
    /// (fentry, then tracepoints, then kprobes).
    #[arg(long, env = "TRACER_PROBES", value_enum, default_value = "auto")]
    pub probes: ProbeChoice,
    /// Requests waiting for export before new ones are dropped (and counted).
    #[arg(long, env = "TRACER_QUEUE_SIZE", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_size: u32,
    /// Seconds between loss summaries in the log and metric exports (over
    /// OTEL_METRIC_EXPORT_INTERVAL) [default: 10].
    #[arg(long, env = "TRACER_STATS_INTERVAL", value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_interval: Option<u64>,
    /// Serve Prometheus metrics at GET /metrics on this port [default: off].
    #[arg(long, env = "TRACER_PROMETHEUS_PORT", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub prometheus_port: Option<u16>,
    /// Address the Prometheus endpoint listens on: every interface, as a
    /// scraper on another host needs; 127.0.0.1 keeps it on this host.
    #[arg(
        long,
        value_name = "IP",
        env = "TRACER_PROMETHEUS_ADDRESS",
        default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        requires = "prometheus_port"
    )]
    pub prometheus_address: IpAddr,

    // Routes and cardinality (docs/routes.md).
    /// Route pattern giving `http.route` and the span name (repeatable):
    /// `{name}` matches one segment, a trailing `{name...}` the rest.
    #[arg(
        long = "route",
        value_name = "PATTERN",
        env = "TRACER_ROUTE",
        value_delimiter = ','
    )]
    pub routes: Vec<RoutePattern>,
    /// `http.route` of a path no `--route` matches.
    #[arg(
        long,
        env = "TRACER_UNMATCHED_ROUTE",
        value_enum,
        default_value = "heuristic"
    )]
    pub unmatched_route: UnmatchedRoute,
    /// Distinct children a node of the heuristic's route trie learns; past
    /// them, other segments there become `{id}`.
    #[arg(long, env = "TRACER_ROUTE_COLLAPSE_CHILDREN", default_value_t = routes::DEFAULT_COLLAPSE_CHILDREN, value_parser = clap::value_parser!(u32).range(1..))]
    pub route_collapse_children: u32,
    /// Distinct `http.route` values in metrics; new ones past it are
    /// recorded as `http.route=""` with `otel.metric.overflow=true`.
    #[arg(long, env = "TRACER_ROUTE_LIMIT", default_value_t = routes::DEFAULT_ROUTE_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
    pub route_limit: u32,
    /// Distinct server span names; new ones past it are named `{method}`.
    #[arg(long, env = "TRACER_SPAN_NAME_LIMIT", default_value_t = routes::DEFAULT_SPAN_NAME_LIMIT, value_parser = clap::value_parser!(u32).range(1..))]
    pub span_name_limit: u32,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show what this kernel and this process offer for tracing.
    Doctor {
        /// Also say whether the HTTPS of these processes can be traced
        /// (the libssl they map, and its OpenSSL functions).
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrintFormat {
    Json,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// In order: a process is traced under the first that selects it.
    pub services: Vec<ServiceSpec>,
    pub resource_base: ResourceBase,
    pub probes: ProbeChoice,
    /// Request headers to capture, for every service.
    pub capture_headers: CaptureHeaders,
    pub export: ExportConfig,
    pub stats_interval: Duration,
    /// Where the Prometheus endpoint listens; `None`: no endpoint.
    pub prometheus: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Setting(#[from] InvalidSetting),
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error(transparent)]
    CaptureHeaders(#[from] CaptureHeaderError),
    #[error(
        "nothing to trace: give --pid, --port, --exe, --cgroup, --systemd-unit or --config (see --help)"
    )]
    NothingToTrace,
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        self.resolve(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// The service the selector flags make, if they select anything.
    fn flag_service(&mut self) -> Option<ServiceSpec> {
        let selectors: Vec<Selector> = (self.pids.iter().map(|&pid| Selector::Pid(pid)))
            .chain(self.ports.iter().map(|&range| Selector::Ports(range)))
            .chain(self.exes.drain(..).map(Selector::Exe))
            .chain(self.cgroups.drain(..))
            .chain(self.units.drain(..).map(Selector::Unit))
            .collect();
        (!selectors.is_empty()).then(|| ServiceSpec {
            name: self.service_name.take(),
            selectors,
            keep_query: self.keep_query_string,
            routes: self.routes.clone(),
        })
    }

    /// [`Args::into_config`] with the environment read through `lookup`.
    fn resolve(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let stats_interval = self.stats_interval.map(Duration::from_secs);
        let flags = Flags {
            endpoint: self.otlp_endpoint.as_deref(),
            protocol: self.otlp_protocol,
            metric_interval: stats_interval,
        };
        let otel = otel_env::resolve(&flags, &lookup)?;
        let mut services: Vec<ServiceSpec> = self.flag_service().into_iter().collect();
        let mut capture_headers = std::mem::take(&mut self.capture_headers);
        if let Some(path) = &self.config {
            let file = config_file::load(path)?;
            services.extend(file.services);
            capture_headers.extend(file.capture_headers);
        }
        let capture_headers = CaptureHeaders::new(capture_headers, !self.no_trace_context)?;
        if services.is_empty() {
            return Err(ConfigError::NothingToTrace);
        }
        // OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES, as the
        // specification orders them; for one service only.
        let env_service_name = (services.len() == 1)
            .then(|| {
                lookup("OTEL_SERVICE_NAME").or_else(|| {
                    otel.resource_attributes
                        .iter()
                        .find(|attribute| attribute.key.as_str() == "service.name")
                        .map(|attribute| attribute.value.to_string())
                })
            })
            .flatten();
        let resource_base = ResourceBase::from_host(otel.resource_attributes, env_service_name);
        let stats_interval = stats_interval.unwrap_or(Duration::from_secs(DEFAULT_STATS_INTERVAL));
        let export_services = services
            .iter()
            .map(|service| ServiceExport {
                routes: RouteConfig {
                    patterns: service.routes.clone(),
                    unmatched: self.unmatched_route,
                    collapse_children: self.route_collapse_children as usize,
                    route_limit: self.route_limit as usize,
                    span_name_limit: self.span_name_limit as usize,
                },
            })
            .collect();
        Ok(Config {
            services,
            resource_base,
            probes: self.probes,
            capture_headers,
            export: ExportConfig {
                otlp: otel.otlp,
                sampler: otel.sampler,
                services: export_services,
                print_json: self.print == Some(PrintFormat::Json),
                queue_capacity: self.queue_size as usize,
                metric_interval: otel.metric_interval.unwrap_or(stats_interval),
            },
            stats_interval,
            prometheus: self
                .prometheus_port
                .map(|port| SocketAddr::new(self.prometheus_address, port)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("tracer").chain(args.iter().copied()))
    }

    /// Resolves with only the variables given, none of the process's.
    fn config(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args = parse(args).expect("valid arguments");
        args.resolve(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string())
        })
    }

    /// An attribute of the resource the first service's instance rooted at
    /// a process named `init` would get.
    fn resource_value(config: &Config, key: &'static str) -> Option<String> {
        let root = crate::discovery::process::ProcessInfo {
            pid: 1,
            comm: "init".into(),
            ..Default::default()
        };
        config
            .resource_base
            .instance(&config.services[0], &root)
            .get(&key.into())
            .map(|value| value.to_string())
    }

    #[test]
    fn validates_input() {
        assert!(
            matches!(config(&[], &[]), Err(ConfigError::NothingToTrace)),
            "a selector is required"
        );
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
    fn the_prometheus_endpoint_is_off_unless_a_port_is_given() {
        let endpoint = |args: &[&str]| {
            parse(&[&["--pid", "1"], args].concat()).map(|args| {
                args.into_config()
                    .expect("a valid configuration")
                    .prometheus
            })
        };
        assert_eq!(endpoint(&[]).unwrap(), None);
        assert_eq!(
            endpoint(&["--prometheus-port", "9464"]).unwrap(),
            Some("0.0.0.0:9464".parse().unwrap())
        );
        assert_eq!(
            endpoint(&["--prometheus-port", "9464", "--prometheus-address", "::1"]).unwrap(),
            Some("[::1]:9464".parse().unwrap())
        );
        for bad in [
            &["--prometheus-port", "0"][..],
            &["--prometheus-port", "65536"],
            &["--prometheus-address", "127.0.0.1"],
            &[
                "--prometheus-port",
                "1",
                "--prometheus-address",
                "localhost",
            ],
        ] {
            assert!(endpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn route_flags_are_checked() {
        assert!(parse(&["--pid", "1", "--route", "users/{id}"]).is_err());
        assert!(parse(&["--pid", "1", "--route", "/files/{rest...}/raw"]).is_err());
        assert!(parse(&["--pid", "1", "--unmatched-route", "guess"]).is_err());
        assert!(parse(&["--pid", "1", "--route-limit", "0"]).is_err());
        assert!(parse(&["--pid", "1", "--route-collapse-children", "0"]).is_err());
        let args = parse(&[
            "--pid",
            "1",
            "--route",
            "/users/{id}",
            "--route",
            "/static/{file...}",
            "--unmatched-route",
            "unset",
            "--span-name-limit",
            "5",
        ])
        .unwrap();
        let config = args.into_config().unwrap();
        let routes = &config.export.services[0].routes;
        assert_eq!(routes.patterns.len(), 2);
        assert_eq!(routes.unmatched, UnmatchedRoute::Unset);
        assert_eq!(routes.span_name_limit, 5);
        assert_eq!(routes.route_limit, routes::DEFAULT_ROUTE_LIMIT as usize);
    }

    #[test]
    fn capture_headers_are_checked_and_merged_with_the_config_file() {
        let names = |args: &[&str]| {
            parse(&[&["--pid", "1"], args].concat())
                .map_err(|err| err.to_string())
                .and_then(|args| args.into_config().map_err(|err| err.to_string()))
                .map(|config| {
                    let capture = config.capture_headers;
                    capture.names()[..capture.exported()].to_vec()
                })
        };
        assert_eq!(names(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(
            names(&[
                "--capture-header",
                "X-Tenant",
                "--capture-header",
                "User-Agent"
            ])
            .unwrap(),
            ["x-tenant", "user-agent"]
        );
        let bad = names(&["--capture-header", "x tenant"]).unwrap_err();
        assert!(
            bad.contains("--capture-header") && bad.contains("invalid header name"),
            "{bad}"
        );
        let too_many: Vec<String> = (0..9).map(|i| format!("--capture-header=x-{i}")).collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let error = names(&[&too_many[..], &["--no-trace-context"]].concat()).unwrap_err();
        assert!(
            error.contains("--capture-header") && error.contains("at most 8"),
            "{error}"
        );
        let error = names(&too_many[..7]).unwrap_err();
        assert!(error.contains("at most 6"), "{error}");

        let dir = std::env::temp_dir().join(format!("tracer-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("services.yaml");
        std::fs::write(
            &file,
            "capture_headers: [x-b, X-A]\nservices:\n  - port: 80\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let merged = names(&["--capture-header", "x-a", "--config", file]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            merged.unwrap(),
            ["x-a", "x-b"],
            "flags first, each name once"
        );
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
        let from_env = config(&["--port", "80"], &[("OTEL_SERVICE_NAME", "env")]).expect("valid");
        assert_eq!(
            resource_value(&from_env, "service.name").as_deref(),
            Some("env")
        );
        let unnamed = config(&["--port", "80"], &[]).expect("valid");
        assert_eq!(
            resource_value(&unnamed, "service.name").as_deref(),
            Some("init"),
            "the executable names an unnamed service"
        );
    }
}
