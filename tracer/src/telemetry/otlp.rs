//! The OTLP exports of both signals, each built from its resolved
//! [`SignalExport`]: transport, endpoint, headers, compression, timeout and,
//! for an `https://` endpoint, the CAs to trust (the system's unless
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` names others). Every setting is passed
//! explicitly: [`super::otel_env`] alone reads the environment.
//!
//! Metrics go through opentelemetry-otlp's exporter. Spans go through a
//! [`TraceClient`] of the tracer's own, which sends export requests already
//! encoded ([`super::encode`]): over gRPC the trace service's `Export`
//! method (what the generated `TraceServiceClient` calls, with a codec that
//! passes the bytes through), over http/protobuf a POST to the traces URL.
//! Each request carries its resource, so one client serves every instance.
use std::io::Write as _;

use bytes::BufMut as _;
use http::{HeaderValue, header};
use opentelemetry_otlp::{
    ExporterBuildError, MetricExporter, Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::{
    GrpcMethod,
    codec::{Codec, CompressionEncoding, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::{exporter::OtlpProtocol, otel_env::SignalExport};

#[derive(Debug, thiserror::Error)]
pub enum ExporterSetupError {
    #[error("cannot set up the OTLP metrics exporter for {endpoint}: {source}")]
    Otlp {
        endpoint: String,
        #[source]
        source: ExporterBuildError,
    },
    #[error("cannot set up the OTLP/gRPC channel to {endpoint}: {source}")]
    Channel {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
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

/// Why a span export failed; delivery retries it.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("gRPC status {code:?}: {message}", code = .0.code(), message = .0.message())]
    Grpc(#[from] tonic::Status),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP status {status} from {url}")]
    HttpStatus {
        status: reqwest::StatusCode,
        url: reqwest::Url,
    },
    #[error("cannot compress the export: {0}")]
    Gzip(#[source] std::io::Error),
}

/// What the collector refused of an export it accepted (OTLP partial success).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    pub spans: u64,
    pub message: String,
}

impl Rejected {
    fn of(response: ExportTraceServiceResponse) -> Self {
        response
            .partial_success
            .map(|partial| Self {
                spans: u64::try_from(partial.rejected_spans).unwrap_or(0),
                message: partial.error_message,
            })
            .unwrap_or_default()
    }
}

const USER_AGENT: &str = concat!("tracer/", env!("CARGO_PKG_VERSION"));
const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends encoded `ExportTraceServiceRequest`s, for every instance.
#[derive(Debug)]
pub enum TraceClient {
    Grpc {
        grpc: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: reqwest::Url,
        gzip: bool,
    },
}

impl TraceClient {
    /// Over gRPC it must be built inside the runtime that drives its channel;
    /// it connects at the first export.
    pub fn new(settings: &SignalExport) -> Result<Self, ExporterSetupError> {
        match settings.protocol {
            OtlpProtocol::Grpc => Self::grpc(settings),
            OtlpProtocol::HttpProtobuf => Self::http(settings),
        }
    }

    fn grpc(settings: &SignalExport) -> Result<Self, ExporterSetupError> {
        let channel_error = |source| ExporterSetupError::Channel {
            endpoint: settings.endpoint.clone(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())
            .and_then(|endpoint| endpoint.user_agent(USER_AGENT))
            .map_err(channel_error)?
            .timeout(settings.timeout);
        if settings.is_https() {
            let tls = match &settings.ca_certificates {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls).map_err(channel_error)?;
        }
        let mut grpc = tonic::client::Grpc::new(endpoint.connect_lazy());
        // Gzip is the one compression the settings accept.
        if settings.compression.is_some() {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self::Grpc {
            grpc,
            metadata: MetadataMap::from_headers(settings.headers.clone()),
        })
    }

    /// The endpoint is the whole traces URL ([`super::otel_env`] appended
    /// `/v1/traces` to a base endpoint): it is used as it is.
    fn http(settings: &SignalExport) -> Result<Self, ExporterSetupError> {
        let http_error = |source| ExporterSetupError::HttpClient {
            endpoint: settings.endpoint.clone(),
            source,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(HeaderValue::from_static(USER_AGENT))
            .default_headers(settings.headers.clone());
        if let Some(pem) = &settings.ca_certificates {
            builder = builder.tls_built_in_root_certs(false);
            for certificate in reqwest::Certificate::from_pem_bundle(pem).map_err(http_error)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(http_error)?;
        // Building a request checks the URL now rather than at the first export.
        let url = client
            .post(&settings.endpoint)
            .build()
            .map_err(http_error)?
            .url()
            .clone();
        Ok(Self::Http {
            client,
            url,
            gzip: settings.compression.is_some(),
        })
    }

    /// Sends one encoded export request.
    pub async fn export(&self, request: Vec<u8>) -> Result<Rejected, ExportError> {
        match self {
            Self::Grpc { grpc, metadata } => {
                let mut grpc = grpc.clone();
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                request.extensions_mut().insert(GrpcMethod::new(
                    "opentelemetry.proto.collector.trace.v1.TraceService",
                    "Export",
                ));
                grpc.ready()
                    .await
                    .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
                let path = http::uri::PathAndQuery::from_static(TRACE_EXPORT);
                let response = grpc.unary(request, path, EncodedCodec).await?;
                Ok(Rejected::of(response.into_inner()))
            }
            Self::Http { client, url, gzip } => {
                let mut post = client
                    .post(url.clone())
                    .header(header::CONTENT_TYPE, "application/x-protobuf");
                post = if *gzip {
                    post.header(header::CONTENT_ENCODING, "gzip")
                        .body(gzipped(&request).map_err(ExportError::Gzip)?)
                } else {
                    post.body(request)
                };
                let response = post.send().await?;
                let status = response.status();
                if !status.is_success() {
                    return Err(ExportError::HttpStatus {
                        status,
                        url: url.clone(),
                    });
                }
                // A reply that is no ExportTraceServiceResponse still says
                // the spans were taken: only a partial success has more.
                let body = response.bytes().await?;
                Ok(ExportTraceServiceResponse::decode(body)
                    .map(Rejected::of)
                    .unwrap_or_default())
            }
        }
    }
}

fn gzipped(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::default(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

/// A gRPC codec for a message encoded already: its bytes pass through, the
/// response is decoded by prost.
#[derive(Debug, Default)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedCodec;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

impl Encoder for EncodedCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
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
    built.map_err(|source| ExporterSetupError::Otlp {
        endpoint: settings.endpoint.clone(),
        source,
    })
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
