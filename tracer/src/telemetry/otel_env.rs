//! The OpenTelemetry SDK's environment variables (`OTEL_*`), resolved once at
//! start-up together with the command-line flags, which take precedence
//! where both exist. The rules follow the specification's SDK and OTLP
//! exporter configuration: an empty variable counts as unset, a per-signal
//! variable (`OTEL_EXPORTER_OTLP_TRACES_*`, `…_METRICS_*`) replaces the
//! generic one, enumerations ignore case. Where the specification only asks
//! for a warning, a value the tracer cannot honour is an error naming its
//! variable instead (exit 2): a typo must not export elsewhere, or nothing.
//!
//! Variables are read through a lookup function, so these rules are tested
//! without touching the process environment. docs/configuration.md has the
//! table of every variable and its flag.
use std::{path::Path, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use opentelemetry::KeyValue;
use opentelemetry_otlp::Compression;
use opentelemetry_sdk::trace::Sampler;
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

use super::exporter::OtlpProtocol;

/// How long one export may take unless a timeout variable says otherwise.
/// The specification's default is 10 s; the tracer's shutdown flush waits for
/// exports in flight this long, so it keeps its own 5 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const GENERIC_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const ENDPOINT_FLAG: &str = "--otlp-endpoint";

/// A flag or variable whose value the tracer cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct InvalidSetting {
    /// The variable or flag, as the user spells it.
    pub setting: String,
    problem: Problem,
}

/// What is wrong with a value. Header lists are never echoed: they hold
/// API keys.
#[derive(Debug, thiserror::Error)]
enum Problem {
    #[error("invalid OTLP endpoint {0:?}: expected http://host:port or https://host:port")]
    Endpoint(String),
    #[error("{0:?}: expected grpc or http/protobuf (http/json is not supported)")]
    Protocol(String),
    #[error("{0:?}: expected gzip or none")]
    Compression(String),
    #[error("{0:?}: expected a positive whole number of milliseconds")]
    Milliseconds(String),
    #[error("{0:?}: expected true or false")]
    Boolean(String),
    #[error(
        "{0:?}: expected always_on, always_off, traceidratio, parentbased_always_on, \
         parentbased_always_off or parentbased_traceidratio"
    )]
    Sampler(String),
    #[error("{0:?}: expected a sampling ratio from 0 to 1")]
    Ratio(String),
    #[error("entry {0} is not key=value")]
    NotKeyValue(usize),
    #[error("entry {0} has an empty key")]
    EmptyKey(usize),
    #[error("entry {entry} ({key}): the value is not valid percent-encoded UTF-8")]
    PercentEncoding { entry: usize, key: String },
    #[error("entry {entry}: {key:?} is not a valid header name")]
    HeaderName { entry: usize, key: String },
    #[error("entry {entry} ({key}): the decoded value is not a valid header value")]
    HeaderValue { entry: usize, key: String },
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
}

/// The two signals the tracer exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Metrics => "metrics",
        }
    }

    /// The per-signal variable for `key`, e.g. `OTEL_EXPORTER_OTLP_TRACES_HEADERS`.
    fn variable(self, key: &str) -> String {
        format!(
            "OTEL_EXPORTER_OTLP_{}_{key}",
            self.name().to_ascii_uppercase()
        )
    }

    /// The path OTLP/HTTP appends to a base endpoint.
    fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "/v1/traces",
            Self::Metrics => "/v1/metrics",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How one signal is exported, every default and variable resolved.
#[derive(Clone, Debug)]
pub struct SignalExport {
    pub protocol: OtlpProtocol,
    /// Where exports go; for http/protobuf the whole URL, path included.
    pub endpoint: String,
    /// Sent with every export (gRPC metadata, or HTTP headers).
    pub headers: HeaderMap,
    pub compression: Option<Compression>,
    pub timeout: Duration,
    /// PEM certificates of the CAs to trust, instead of the system's, for an
    /// `https://` endpoint.
    pub ca_certificates: Option<Vec<u8>>,
}

impl SignalExport {
    pub fn is_https(&self) -> bool {
        self.endpoint
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    }
}

/// OTLP export of both signals.
#[derive(Clone, Debug)]
pub struct OtlpSignals {
    pub traces: SignalExport,
    pub metrics: SignalExport,
}

impl OtlpSignals {
    /// The endpoints exported to, each once.
    pub fn endpoints(&self) -> Vec<&str> {
        let mut endpoints = vec![self.traces.endpoint.as_str()];
        if self.metrics.endpoint != self.traces.endpoint {
            endpoints.push(&self.metrics.endpoint);
        }
        endpoints
    }
}

/// What the command line said about export; `None` where it said nothing.
#[derive(Debug, Default)]
pub struct Flags<'a> {
    pub endpoint: Option<&'a str>,
    pub protocol: Option<OtlpProtocol>,
    pub metric_interval: Option<Duration>,
}

/// The OpenTelemetry settings, flags and variables resolved.
#[derive(Clone, Debug)]
pub struct OtelSettings {
    /// `None`: no OTLP export (endpoint `none`, or `OTEL_SDK_DISABLED=true`).
    pub otlp: Option<OtlpSignals>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, values decoded, in order.
    pub resource_attributes: Vec<KeyValue>,
    /// `None`: the tracer's default.
    pub metric_interval: Option<Duration>,
    pub sampler: Sampler,
}

/// Resolves flags and variables; `lookup` reads one variable.
pub fn resolve(
    flags: &Flags<'_>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<OtelSettings, InvalidSetting> {
    let env = Env(lookup);
    let disabled = env.boolean("OTEL_SDK_DISABLED")?.unwrap_or(false);
    let endpoint_none = match flags.endpoint {
        Some(flag) => matches!(flag.trim(), "none" | ""),
        None => env
            .get(GENERIC_ENDPOINT)
            .is_some_and(|(_, value)| value == "none"),
    };
    let otlp = if disabled || endpoint_none {
        None
    } else {
        Some(OtlpSignals {
            traces: env.signal(Signal::Traces, flags)?,
            metrics: env.signal(Signal::Metrics, flags)?,
        })
    };
    let resource_attributes = match env.get("OTEL_RESOURCE_ATTRIBUTES") {
        Some((name, list)) => key_values(&name, &list)?
            .into_iter()
            .map(|(_, key, value)| KeyValue::new(key.to_owned(), value))
            .collect(),
        None => Vec::new(),
    };
    let metric_interval = match flags.metric_interval {
        Some(interval) => Some(interval),
        None => env.milliseconds("OTEL_METRIC_EXPORT_INTERVAL")?,
    };
    Ok(OtelSettings {
        otlp,
        resource_attributes,
        metric_interval,
        sampler: env.sampler()?,
    })
}

struct Env<F>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// The variable's name and value, unless unset or empty.
    fn get(&self, name: &str) -> Option<(String, String)> {
        let value = (self.0)(name)?;
        let value = value.trim();
        (!value.is_empty()).then(|| (name.to_owned(), value.to_owned()))
    }

    /// The per-signal variable for `key`, else the generic one.
    fn per_signal(&self, signal: Signal, key: &str) -> Option<(String, String)> {
        self.get(&signal.variable(key))
            .or_else(|| self.get(&format!("OTEL_EXPORTER_OTLP_{key}")))
    }

    fn signal(&self, signal: Signal, flags: &Flags<'_>) -> Result<SignalExport, InvalidSetting> {
        let protocol = match (flags.protocol, self.per_signal(signal, "PROTOCOL")) {
            (Some(protocol), _) => protocol,
            (None, Some((name, value))) => {
                <OtlpProtocol as clap::ValueEnum>::from_str(&value, true)
                    .map_err(|_| invalid(&name, Problem::Protocol(value)))?
            }
            (None, None) => OtlpProtocol::Grpc,
        };
        let headers = match self.per_signal(signal, "HEADERS") {
            Some((name, list)) => headers(&name, &list)?,
            None => HeaderMap::new(),
        };
        let compression = match self.per_signal(signal, "COMPRESSION") {
            Some((name, value)) => match value.to_ascii_lowercase().as_str() {
                "gzip" => Some(Compression::Gzip),
                "none" => None,
                _ => return Err(invalid(&name, Problem::Compression(value))),
            },
            None => None,
        };
        let timeout = match self.per_signal(signal, "TIMEOUT") {
            Some((name, value)) => positive_milliseconds(&name, value)?,
            None => DEFAULT_TIMEOUT,
        };
        let ca_certificates = match self.per_signal(signal, "CERTIFICATE") {
            Some((name, path)) => Some(pem_certificates(&name, Path::new(&path))?),
            None => None,
        };
        Ok(SignalExport {
            protocol,
            endpoint: self.endpoint(signal, protocol, flags.endpoint)?,
            headers,
            compression,
            timeout,
            ca_certificates,
        })
    }

    /// The flag, else the per-signal variable (used as it is), else the
    /// generic variable, else the default; for http/protobuf, a base
    /// endpoint gets the signal's path appended.
    fn endpoint(
        &self,
        signal: Signal,
        protocol: OtlpProtocol,
        flag: Option<&str>,
    ) -> Result<String, InvalidSetting> {
        let per_signal = self.get(&signal.variable("ENDPOINT"));
        let (setting, url, is_base) = match (flag, per_signal) {
            (Some(flag), _) => (ENDPOINT_FLAG.to_owned(), flag.trim().to_owned(), true),
            (None, Some((name, url))) => (name, url, false),
            (None, None) => match self.get(GENERIC_ENDPOINT) {
                Some((name, url)) => (name, url, true),
                None => (
                    "the default endpoint".to_owned(),
                    match protocol {
                        OtlpProtocol::Grpc => "http://localhost:4317",
                        OtlpProtocol::HttpProtobuf => "http://localhost:4318",
                    }
                    .to_owned(),
                    true,
                ),
            },
        };
        let is_url = url.parse::<Uri>().is_ok_and(|uri| {
            uri.authority().is_some()
                && uri
                    .scheme_str()
                    .is_some_and(|scheme| ["http", "https"].contains(&scheme))
        });
        if !is_url {
            return Err(invalid(&setting, Problem::Endpoint(url)));
        }
        Ok(match protocol {
            OtlpProtocol::HttpProtobuf if is_base => {
                format!("{}{}", url.trim_end_matches('/'), signal.http_path())
            }
            _ => url,
        })
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, InvalidSetting> {
        let Some((name, value)) = self.get(name) else {
            return Ok(None);
        };
        match value.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(invalid(&name, Problem::Boolean(value))),
        }
    }

    fn milliseconds(&self, name: &str) -> Result<Option<Duration>, InvalidSetting> {
        self.get(name)
            .map(|(name, value)| positive_milliseconds(&name, value))
            .transpose()
    }

    /// `OTEL_TRACES_SAMPLER` with its argument; the specification's default
    /// is `parentbased_always_on`.
    fn sampler(&self) -> Result<Sampler, InvalidSetting> {
        let Some((name, value)) = self.get("OTEL_TRACES_SAMPLER") else {
            return Ok(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        };
        let parent_based = |root| Sampler::ParentBased(Box::new(root));
        Ok(match value.to_ascii_lowercase().as_str() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(self.ratio()?),
            "parentbased_always_on" => parent_based(Sampler::AlwaysOn),
            "parentbased_always_off" => parent_based(Sampler::AlwaysOff),
            "parentbased_traceidratio" => parent_based(Sampler::TraceIdRatioBased(self.ratio()?)),
            _ => return Err(invalid(&name, Problem::Sampler(value))),
        })
    }

    /// `OTEL_TRACES_SAMPLER_ARG` for a ratio sampler, 1 when unset.
    fn ratio(&self) -> Result<f64, InvalidSetting> {
        let Some((name, value)) = self.get("OTEL_TRACES_SAMPLER_ARG") else {
            return Ok(1.0);
        };
        value
            .parse::<f64>()
            .ok()
            .filter(|ratio| (0.0..=1.0).contains(ratio))
            .ok_or_else(|| invalid(&name, Problem::Ratio(value)))
    }
}

/// The variables opentelemetry-otlp reads once more when it builds an
/// exporter, by rules of its own: to it, `none` and `GZIP` are no
/// compressions, and a setting passed to it does not stop it from reading
/// the variable.
fn reread_by_opentelemetry_otlp() -> impl Iterator<Item = String> {
    ["", "TRACES_", "METRICS_"].into_iter().flat_map(|signal| {
        ["ENDPOINT", "HEADERS", "COMPRESSION", "TIMEOUT"]
            .map(move |key| format!("OTEL_EXPORTER_OTLP_{signal}{key}"))
    })
}

/// Removes those variables from this process's environment once they are
/// resolved, so that the tracer's resolution, flags included, is the only
/// one.
///
/// # Safety
///
/// No other thread may be running: the environment is not thread-safe.
pub unsafe fn hide_from_opentelemetry_otlp() {
    for name in reread_by_opentelemetry_otlp() {
        // SAFETY: the caller guarantees that this is the only thread.
        unsafe { std::env::remove_var(name) };
    }
}

fn invalid(setting: &str, problem: Problem) -> InvalidSetting {
    InvalidSetting {
        setting: setting.to_owned(),
        problem,
    }
}

fn positive_milliseconds(name: &str, value: String) -> Result<Duration, InvalidSetting> {
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(invalid(name, Problem::Milliseconds(value))),
    }
}

/// A `key=value,key=value` list as W3C Baggage writes it, values
/// percent-decoded: (entry number from 1, key, value). Empty entries are
/// skipped; any other entry that does not parse rejects the whole list.
fn key_values<'a>(
    name: &str,
    list: &'a str,
) -> Result<Vec<(usize, &'a str, String)>, InvalidSetting> {
    list.split(',')
        .enumerate()
        .filter(|(_, entry)| !entry.trim().is_empty())
        .map(|(index, entry)| {
            let number = index + 1;
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| invalid(name, Problem::NotKeyValue(number)))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(invalid(name, Problem::EmptyKey(number)));
            }
            let value = percent_decoded(value.trim()).ok_or_else(|| {
                invalid(
                    name,
                    Problem::PercentEncoding {
                        entry: number,
                        key: key.to_owned(),
                    },
                )
            })?;
            Ok((number, key, value))
        })
        .collect()
}

/// Strict percent-decoding: every `%` starts two hex digits, and the bytes
/// decoded are UTF-8 (the `percent-encoding` crate passes a bad `%` through).
fn percent_decoded(raw: &str) -> Option<String> {
    let well_formed = raw.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|value| value.into_owned())
}

fn headers(name: &str, list: &str) -> Result<HeaderMap, InvalidSetting> {
    let mut headers = HeaderMap::new();
    for (entry, key, value) in key_values(name, list)? {
        let header = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
            invalid(
                name,
                Problem::HeaderName {
                    entry,
                    key: key.to_owned(),
                },
            )
        })?;
        let value = HeaderValue::from_str(&value).map_err(|_| {
            invalid(
                name,
                Problem::HeaderValue {
                    entry,
                    key: key.to_owned(),
                },
            )
        })?;
        headers.insert(header, value);
    }
    Ok(headers)
}

/// The file's PEM, once it is known to hold certificates and nothing else
/// that fails to parse.
fn pem_certificates(name: &str, path: &Path) -> Result<Vec<u8>, InvalidSetting> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| {
        invalid(
            name,
            Problem::Unreadable {
                path: shown.clone(),
                source,
            },
        )
    })?;
    let certificates: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Ok(pem),
        _ => Err(invalid(name, Problem::NoCertificate(shown))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::Value;

    use super::*;

    fn resolve_with(flags: &Flags<'_>, vars: &[(&str, &str)]) -> Result<OtelSettings, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        resolve(flags, |name| vars.get(name).cloned()).map_err(|err| err.to_string())
    }

    fn env(vars: &[(&str, &str)]) -> OtelSettings {
        resolve_with(&Flags::default(), vars).expect("valid settings")
    }

    fn otlp(vars: &[(&str, &str)]) -> OtlpSignals {
        env(vars).otlp.expect("OTLP export on")
    }

    fn header_pairs(export: &SignalExport) -> Vec<(String, String)> {
        export
            .headers
            .iter()
            .map(|(name, value)| {
                let value = value.to_str().expect("ASCII").to_owned();
                (name.to_string(), value)
            })
            .collect()
    }

    /// The error for one bad variable: it must name the variable.
    fn rejected(name: &str, value: &str) -> String {
        let err = resolve_with(&Flags::default(), &[(name, value)])
            .err()
            .unwrap_or_else(|| panic!("{name}={value:?} was accepted"));
        assert!(err.starts_with(&format!("{name}: ")), "{err}");
        err
    }

    #[test]
    fn defaults_follow_the_specification_where_the_tracer_has_no_reason_not_to() {
        let settings = env(&[]);
        let grpc = settings.otlp.expect("export is on by default");
        assert_eq!(grpc.traces.protocol, OtlpProtocol::Grpc);
        assert_eq!(grpc.traces.endpoint, "http://localhost:4317");
        assert_eq!(grpc.endpoints(), ["http://localhost:4317"]);
        assert!(grpc.traces.headers.is_empty());
        assert_eq!(grpc.traces.compression, None);
        assert_eq!(grpc.traces.timeout, DEFAULT_TIMEOUT);
        assert!(settings.resource_attributes.is_empty());
        assert_eq!(settings.metric_interval, None);
        let http = otlp(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
        assert_eq!(http.traces.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(http.metrics.endpoint, "http://localhost:4318/v1/metrics");
    }

    #[test]
    fn the_generic_endpoint_gets_the_signal_path_and_a_per_signal_one_is_used_as_it_is() {
        let both = otlp(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/PROTOBUF"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector:4318/base/",
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://metrics:9090/ingest",
            ),
        ]);
        assert_eq!(
            both.traces.endpoint,
            "https://collector:4318/base/v1/traces"
        );
        assert!(both.traces.is_https());
        assert_eq!(both.metrics.endpoint, "http://metrics:9090/ingest");
        assert!(!both.metrics.is_https());
        assert_eq!(both.endpoints().len(), 2);
        let grpc = otlp(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
        assert_eq!(grpc.traces.endpoint, "http://collector:4317");
        assert_eq!(grpc.metrics.endpoint, "http://collector:4317");
    }

    #[test]
    fn per_signal_protocols_and_flags_over_variables() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/v1/traces",
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
        ];
        let mixed = env(&vars);
        let otlp = mixed.otlp.expect("export on");
        assert_eq!(otlp.traces.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(otlp.traces.endpoint, "http://traces:4318/v1/traces");
        assert_eq!(otlp.metrics.protocol, OtlpProtocol::Grpc);
        assert_eq!(otlp.metrics.endpoint, "http://env:4317");
        assert_eq!(mixed.metric_interval, Some(Duration::from_millis(250)));

        let flags = Flags {
            endpoint: Some("http://flag:4317"),
            protocol: Some(OtlpProtocol::Grpc),
            metric_interval: Some(Duration::from_secs(2)),
        };
        let flagged = resolve_with(&flags, &vars).expect("valid");
        let otlp = flagged.otlp.expect("export on");
        for signal in [&otlp.traces, &otlp.metrics] {
            assert_eq!(signal.protocol, OtlpProtocol::Grpc);
            assert_eq!(signal.endpoint, "http://flag:4317");
        }
        assert_eq!(flagged.metric_interval, Some(Duration::from_secs(2)));
    }

    #[test]
    fn none_or_a_disabled_sdk_exports_nothing() {
        assert!(
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "none")])
                .otlp
                .is_none()
        );
        assert!(env(&[("OTEL_SDK_DISABLED", "TRUE")]).otlp.is_none());
        assert!(env(&[("OTEL_SDK_DISABLED", "false")]).otlp.is_some());
        let none_flag = Flags {
            endpoint: Some("none"),
            ..Flags::default()
        };
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")];
        assert!(
            resolve_with(&none_flag, &vars)
                .expect("valid")
                .otlp
                .is_none()
        );
        let url_flag = Flags {
            endpoint: Some("http://flag:4317"),
            ..Flags::default()
        };
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "none")];
        assert!(
            resolve_with(&url_flag, &vars)
                .expect("valid")
                .otlp
                .is_some()
        );
        let disabled = [("OTEL_SDK_DISABLED", "true")];
        assert!(
            resolve_with(&url_flag, &disabled)
                .expect("valid")
                .otlp
                .is_none()
        );
    }

    #[test]
    fn header_lists_are_percent_decoded_and_per_signal_lists_replace_the_generic_one() {
        let signals = otlp(&[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                " Api-Key = s3cr%3Dt%2C1 ,, x-team=blue%20team,",
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=metrics"),
        ]);
        assert_eq!(
            header_pairs(&signals.traces),
            [
                ("api-key".to_owned(), "s3cr=t,1".to_owned()),
                ("x-team".to_owned(), "blue team".to_owned())
            ]
        );
        assert_eq!(
            header_pairs(&signals.metrics),
            [("api-key".to_owned(), "metrics".to_owned())]
        );
        // An empty per-signal variable is unset: the generic list applies.
        let signals = otlp(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", " "),
        ]);
        assert_eq!(
            header_pairs(&signals.traces),
            [("a".to_owned(), "1".to_owned())]
        );
    }

    #[test]
    fn bad_header_lists_are_rejected_without_echoing_values() {
        let name = "OTEL_EXPORTER_OTLP_HEADERS";
        assert!(rejected(name, "api-key").contains("entry 1 is not key=value"));
        assert!(rejected(name, "a=1,,=2").contains("entry 3 has an empty key"));
        let err = rejected(name, "api-key=s3cr%zzet");
        assert!(err.contains("entry 1 (api-key)"), "{err}");
        assert!(!err.contains("s3cr"), "a secret in the message: {err}");
        assert!(rejected(name, "api-key=%ff").contains("percent-encoded UTF-8"));
        assert!(rejected(name, "bad key=1").contains("not a valid header name"));
        let err = rejected("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "k=line%0Abreak");
        assert!(err.contains("not a valid header value"), "{err}");
    }

    #[test]
    fn resource_attributes_are_decoded_like_baggage() {
        let settings = env(&[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=stag%20ing, service.version = 1.2 ,note=%C3%A9t%C3%A9=ok,empty=",
        )]);
        let attributes: Vec<(String, Value)> = settings
            .resource_attributes
            .into_iter()
            .map(|kv| (kv.key.to_string(), kv.value))
            .collect();
        let expected: Vec<(String, Value)> = vec![
            ("deployment.environment".into(), "stag ing".into()),
            ("service.version".into(), "1.2".into()),
            ("note".into(), "été=ok".into()),
            ("empty".into(), "".into()),
        ];
        assert_eq!(attributes, expected);
        let name = "OTEL_RESOURCE_ATTRIBUTES";
        assert!(rejected(name, "a=1,b").contains("entry 2 is not key=value"));
        assert!(rejected(name, "a=100%").contains("entry 1 (a)"));
    }

    #[test]
    fn compression_timeout_and_certificate_per_signal() {
        let dir = std::env::temp_dir().join(format!("otel-env-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = dir.join("ca.pem");
        // Any well-formed certificate block parses; trust is the TLS stack's.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let ca_path = ca.to_str().expect("UTF-8 path");
        let otlp = otlp(&[
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_path),
        ]);
        assert_eq!(otlp.traces.compression, Some(Compression::Gzip));
        assert_eq!(otlp.metrics.compression, None);
        assert_eq!(otlp.traces.timeout, Duration::from_millis(250));
        assert_eq!(otlp.metrics.timeout, Duration::from_millis(1500));
        assert!(otlp.metrics.ca_certificates.is_some());

        let name = "OTEL_EXPORTER_OTLP_CERTIFICATE";
        let err = rejected(name, "/nonexistent/ca.pem");
        assert!(err.contains("cannot read /nonexistent/ca.pem"), "{err}");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "just text").expect("write");
        let err = rejected(name, not_pem.to_str().expect("UTF-8 path"));
        assert!(err.contains("holds no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn bad_scalar_values_name_their_variable() {
        for (name, value, expected) in [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "localhost:4317",
                "invalid OTLP endpoint",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "ftp://x",
                "invalid OTLP endpoint",
            ),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "http/json",
                "http/json is not supported",
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                "smtp",
                "expected grpc",
            ),
            (
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                "zstd",
                "expected gzip or none",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5s", "milliseconds"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "0", "milliseconds"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "-1", "milliseconds"),
            ("OTEL_SDK_DISABLED", "yes", "expected true or false"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote", "expected always_on"),
        ] {
            let err = rejected(name, value);
            assert!(err.contains(expected), "{name}={value}: {err}");
        }
        for ratio in ["1.5", "-0.1", "half", "NaN"] {
            let err = resolve_with(
                &Flags::default(),
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", ratio),
                ],
            )
            .expect_err("a bad ratio");
            assert!(err.starts_with("OTEL_TRACES_SAMPLER_ARG: "), "{err}");
        }
        let flag = Flags {
            endpoint: Some("localhost:4317"),
            ..Flags::default()
        };
        let err = resolve_with(&flag, &[]).expect_err("a bad flag");
        assert!(
            err.starts_with("--otlp-endpoint: invalid OTLP endpoint"),
            "{err}"
        );
    }

    #[test]
    fn samplers_by_name() {
        let sampler = |vars: &[(&str, &str)]| format!("{:?}", env(vars).sampler);
        assert_eq!(sampler(&[]), "ParentBased(AlwaysOn)");
        for (name, expected) in [
            ("always_on", "AlwaysOn"),
            ("ALWAYS_OFF", "AlwaysOff"),
            ("traceidratio", "TraceIdRatioBased(0.25)"),
            ("parentbased_always_off", "ParentBased(AlwaysOff)"),
            (
                "parentbased_traceidratio",
                "ParentBased(TraceIdRatioBased(0.25))",
            ),
        ] {
            let vars = [
                ("OTEL_TRACES_SAMPLER", name),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ];
            assert_eq!(sampler(&vars), expected);
        }
        let default_ratio = [("OTEL_TRACES_SAMPLER", "traceidratio")];
        assert_eq!(sampler(&default_ratio), "TraceIdRatioBased(1.0)");
        // The argument of a sampler without one is ignored, as specified.
        let ignored = [
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_TRACES_SAMPLER_ARG", "junk"),
        ];
        assert_eq!(sampler(&ignored), "AlwaysOn");
    }
}
