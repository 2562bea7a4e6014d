//! The OTLP exporters of both signals, each built from its resolved
//! [`SignalExport`]: transport, endpoint, headers, compression, timeout and,
//! for an `https://` endpoint, the CAs to trust (the system's unless
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` names others). Every setting is passed
//! explicitly: [`super::otel_env`] alone reads the environment.
use opentelemetry_otlp::{
    ExporterBuildError, MetricExporter, Protocol, SpanExporter, WithExportConfig, WithHttpConfig,
    WithTonicConfig,
    tonic_types::{
        metadata::MetadataMap,
        transport::{Certificate, ClientTlsConfig},
    },
};

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
    #[error("cannot set up the HTTP client for {endpoint}: {source}")]
    HttpClient {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
}

pub fn span_exporter(settings: &SignalExport) -> Result<SpanExporter, ExporterSetupError> {
    let built = match settings.protocol {
        OtlpProtocol::Grpc => grpc(SpanExporter::builder().with_tonic(), settings).build(),
        OtlpProtocol::HttpProtobuf => http(SpanExporter::builder().with_http(), settings)?.build(),
    };
    built.map_err(build_error(Signal::Traces, settings))
}

pub fn metric_exporter(settings: &SignalExport) -> Result<MetricExporter, ExporterSetupError> {
    let built = match settings.protocol {
        OtlpProtocol::Grpc => grpc(MetricExporter::builder().with_tonic(), settings).build(),
        OtlpProtocol::HttpProtobuf => {
            http(MetricExporter::builder().with_http(), settings)?.build()
        }
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
) -> Result<B, ExporterSetupError> {
    let builder = builder
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(&settings.endpoint)
        .with_timeout(settings.timeout)
        .with_http_client(http_client(settings)?);
    Ok(match settings.compression {
        Some(compression) => builder.with_compression(compression),
        None => builder,
    })
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
