//! The OTLP exporters of both signals, each built from its resolved
//! [`SignalExport`]: transport, endpoint, headers, compression, timeout and,
//! for an `https://` endpoint, the CAs to trust (the system's unless
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` names others). Every setting is passed
//! explicitly: [`super::otel_env`] alone reads the environment.
//!
//! An OTLP span exporter carries one resource, so there is one per traced
//! instance, all built by one [`SpanExporters`] from the same settings.
use opentelemetry_otlp::{
    ExporterBuildError, MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig,
    WithTonicConfig,
    tonic_types::{
        metadata::MetadataMap,
        transport::{Certificate, ClientTlsConfig},
    },
};

use opentelemetry_sdk::{Resource, trace::SpanExporter as _};

use super::{
    exporter::OtlpProtocol,
    otel_env::{Signal, SignalExport},
};

#[derive(Debug, thiserror::Error)]
pub enum ExporterSetupError {
    #[error("cannot set up the OTLP {signal} exporter for {endpoint}: {source}")]
    Otlp {
        signal: Signal,
        endpoint: String,
        #[source]
        source: ExporterBuildError,
    },
    #[error("cannot start the metrics thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the HTTP client for {endpoint}: {source}")]
    HttpClient {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Span exporters, one per resource, all with the same settings. Over
/// http/protobuf they share one HTTP client (clones share its connection
/// pool), built once; over gRPC each has a channel of its own.
pub struct SpanExporters {
    settings: SignalExport,
    http_client: Option<reqwest::blocking::Client>,
}

impl SpanExporters {
    /// Checks the settings by building one exporter, so a bad endpoint
    /// fails at start-up rather than at an instance's first request.
    pub fn new(settings: &SignalExport) -> Result<Self, ExporterSetupError> {
        let http_client = match settings.protocol {
            OtlpProtocol::Grpc => None,
            OtlpProtocol::HttpProtobuf => Some(http_client(settings)?),
        };
        let exporters = Self {
            settings: settings.clone(),
            http_client,
        };
        exporters.build(&Resource::builder_empty().build())?;
        Ok(exporters)
    }

    /// An exporter whose spans all go under `resource`. Over gRPC it must
    /// be built inside the runtime that drives its channel.
    pub fn build(&self, resource: &Resource) -> Result<SpanExporter, ExporterSetupError> {
        let settings = &self.settings;
        let built = match &self.http_client {
            None => grpc(SpanExporter::builder().with_tonic(), settings).build(),
            Some(client) => http(
                SpanExporter::builder().with_http(),
                settings,
                client.clone(),
            )
            .build(),
        };
        let mut exporter = built.map_err(build_error(Signal::Traces, settings))?;
        exporter.set_resource(resource);
        Ok(exporter)
    }
}

pub fn metric_exporter(settings: &SignalExport) -> Result<MetricExporter, ExporterSetupError> {
    let built = match settings.protocol {
        OtlpProtocol::Grpc => grpc(MetricExporter::builder().with_tonic(), settings).build(),
        OtlpProtocol::HttpProtobuf => http(
            MetricExporter::builder().with_http(),
            settings,
            http_client(settings)?,
        )
        .build(),
    };
    built.map_err(build_error(Signal::Metrics, settings))
}

fn build_error(
    signal: Signal,
    settings: &SignalExport,
) -> impl FnOnce(ExporterBuildError) -> ExporterSetupError {
    let endpoint = settings.endpoint.clone();
    move |source| ExporterSetupError::Otlp {
        signal,
        endpoint,
        source,
    }
}

fn grpc<B: WithExportConfig + WithTonicConfig>(builder: B, settings: &SignalExport) -> B {
    let builder = builder
        .with_endpoint(&settings.endpoint)
        .with_timeout(settings.timeout)
        .with_metadata(MetadataMap::from_headers(settings.headers.clone()));
    let builder = match settings.compression {
        Some(compression) => builder.with_compression(compression),
        None => builder,
    };
    if !settings.is_https() {
        return builder;
    }
    let tls = match &settings.ca_certificates {
        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    builder.with_tls_config(tls)
}

fn http<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    settings: &SignalExport,
    client: reqwest::blocking::Client,
) -> B {
    let builder = builder
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(&settings.endpoint)
        .with_timeout(settings.timeout)
        .with_http_client(client);
    match settings.compression {
        Some(compression) => builder.with_compression(compression),
        None => builder,
    }
}

/// reqwest's blocking client: the metrics reader exports from a thread of its
/// own, with no async runtime to drive a non-blocking one. The headers go on
/// the client, since the exporter's own header option percent-decodes values
/// a second time. Built on another thread: building one inside the async
/// runtime panics.
fn http_client(settings: &SignalExport) -> Result<reqwest::blocking::Client, ExporterSetupError> {
    let build = || {
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(settings.timeout)
            .default_headers(settings.headers.clone());
        if let Some(pem) = &settings.ca_certificates {
            builder = builder.tls_built_in_root_certs(false);
            for certificate in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder.build()
    };
    std::thread::scope(|scope| scope.spawn(build).join())
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        .map_err(|source| ExporterSetupError::HttpClient {
            endpoint: settings.endpoint.clone(),
            source,
        })
}
