//! OTLP trace protobuf written straight into bytes: a request's spans are
//! appended to a reused buffer field by field, without building the
//! generated message structs (dozens of `String`s and `Vec`s a request).
//! The parts encoded once per instance, its resource and the scope, are
//! built from opentelemetry-proto's generated types and encoded by prost.
//!
//! Field numbers are those of opentelemetry-proto's trace/v1, common/v1 and
//! collector/trace/v1 messages. A decoder reads back exactly what prost
//! would have encoded from the generated types: proto3 defaults are left
//! out as prost leaves them out, while a oneof value and an optional
//! message are written even when empty, as prost writes them.
use opentelemetry_proto::{
    tonic::{
        common::v1::InstrumentationScope,
        resource::v1::Resource,
        trace::v1::{span::SpanKind, status::StatusCode},
    },
    transform::common::tonic::ResourceAttributesWithSchema,
};
use prost::Message;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// Field numbers, by message.
mod field {
    pub const EXPORT_RESOURCE_SPANS: u32 = 1;
    pub const RESOURCE_SPANS_RESOURCE: u32 = 1;
    pub const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
    pub const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
    pub const SCOPE_SPANS_SCOPE: u32 = 1;
    pub const SCOPE_SPANS_SPANS: u32 = 2;
    pub const SPAN_TRACE_ID: u32 = 1;
    pub const SPAN_SPAN_ID: u32 = 2;
    pub const SPAN_TRACE_STATE: u32 = 3;
    pub const SPAN_PARENT_SPAN_ID: u32 = 4;
    pub const SPAN_NAME: u32 = 5;
    pub const SPAN_KIND: u32 = 6;
    pub const SPAN_START: u32 = 7;
    pub const SPAN_END: u32 = 8;
    pub const SPAN_ATTRIBUTES: u32 = 9;
    pub const SPAN_STATUS: u32 = 15;
    pub const SPAN_FLAGS: u32 = 16;
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
    pub const KEY_VALUE_KEY: u32 = 1;
    pub const KEY_VALUE_VALUE: u32 = 2;
    pub const ANY_VALUE_STRING: u32 = 1;
    pub const ANY_VALUE_INT: u32 = 3;
    pub const ANY_VALUE_ARRAY: u32 = 5;
    pub const ARRAY_VALUE_VALUES: u32 = 1;
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Seven bits a byte, without a division (prost's formula).
fn varint_len(value: u64) -> usize {
    ((((value | 1).leading_zeros() ^ 63) * 9 + 73) / 64) as usize
}

fn write_key(field: u32, wire_type: u32, out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | wire_type), out);
}

fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// A length-delimited field's key and length; its `len` bytes follow.
fn len_prefix(field: u32, len: usize, out: &mut Vec<u8>) {
    write_key(field, LEN, out);
    varint(len as u64, out);
}

/// The whole length-delimited field, `len` bytes of payload included.
fn len_field_len(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

fn bytes_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    len_prefix(field, bytes.len(), out);
    out.extend_from_slice(bytes);
}

/// A generated message as a field, encoded by prost.
fn message_field(field: u32, message: &impl Message) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(field, &message.encode_to_vec(), &mut out);
    out
}

/// A span's attributes: encoded `KeyValue`s, each as the span's field 9,
/// in a buffer reused from span to span.
#[derive(Debug, Default)]
pub struct Attributes {
    bytes: Vec<u8>,
}

impl Attributes {
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// `key` is the concatenation of its parts (no `format!` for it).
    fn key_value(&mut self, key: &[&str], value_len: usize) {
        let key_bytes: usize = key.iter().map(|part| part.len()).sum();
        let body = len_field_len(field::KEY_VALUE_KEY, key_bytes)
            + len_field_len(field::KEY_VALUE_VALUE, value_len);
        self.bytes
            .reserve(len_field_len(field::SPAN_ATTRIBUTES, body));
        len_prefix(field::SPAN_ATTRIBUTES, body, &mut self.bytes);
        len_prefix(field::KEY_VALUE_KEY, key_bytes, &mut self.bytes);
        for part in key {
            self.bytes.extend_from_slice(part.as_bytes());
        }
        len_prefix(field::KEY_VALUE_VALUE, value_len, &mut self.bytes);
    }

    pub fn str(&mut self, key: &str, value: &str) {
        self.key_value(&[key], len_field_len(field::ANY_VALUE_STRING, value.len()));
        bytes_field(field::ANY_VALUE_STRING, value.as_bytes(), &mut self.bytes);
    }

    pub fn int(&mut self, key: &str, value: i64) {
        // int64 is the two's complement as a varint: ten bytes if negative.
        let value = value as u64;
        self.key_value(&[key], key_len(field::ANY_VALUE_INT) + varint_len(value));
        write_key(field::ANY_VALUE_INT, VARINT, &mut self.bytes);
        varint(value, &mut self.bytes);
    }

    /// A string array; `values` is walked twice, for the length first.
    pub fn strings<'a>(&mut self, key: &[&str], values: impl Iterator<Item = &'a str> + Clone) {
        let element = |value: &str| {
            len_field_len(
                field::ARRAY_VALUE_VALUES,
                len_field_len(field::ANY_VALUE_STRING, value.len()),
            )
        };
        let array_len: usize = values.clone().map(element).sum();
        self.key_value(key, len_field_len(field::ANY_VALUE_ARRAY, array_len));
        len_prefix(field::ANY_VALUE_ARRAY, array_len, &mut self.bytes);
        for value in values {
            let any_value = len_field_len(field::ANY_VALUE_STRING, value.len());
            len_prefix(field::ARRAY_VALUE_VALUES, any_value, &mut self.bytes);
            bytes_field(field::ANY_VALUE_STRING, value.as_bytes(), &mut self.bytes);
        }
    }
}

/// One span's fields, borrowed; what is not here is left at its default.
pub struct Span<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C `tracestate`, as the trace came with it (empty: none).
    pub trace_state: &'a str,
    /// `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: &'a str,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: &'a Attributes,
    /// `Some(message)`: status code error; `None`: unset.
    pub error: Option<&'a str>,
    pub flags: u32,
}

/// A string or bytes field's whole length; an empty one is left out.
fn optional_len(field: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len_field_len(field, len)
    }
}

/// A varint or fixed-width field's whole length; zero is left out.
fn scalar_len(field: u32, value: u64, width: usize) -> usize {
    if value == 0 {
        0
    } else {
        key_len(field) + width
    }
}

const ERROR: u64 = StatusCode::Error as u64;

impl Span<'_> {
    /// The `Status` message's length.
    fn status_len(&self) -> usize {
        self.error.map_or(0, |message| {
            optional_len(field::STATUS_MESSAGE, message.len())
                + scalar_len(field::STATUS_CODE, ERROR, varint_len(ERROR))
        })
    }

    fn len(&self) -> usize {
        let kind = self.kind as u64;
        len_field_len(field::SPAN_TRACE_ID, self.trace_id.len())
            + len_field_len(field::SPAN_SPAN_ID, self.span_id.len())
            + optional_len(field::SPAN_TRACE_STATE, self.trace_state.len())
            + self.parent_span_id.map_or(0, |parent| {
                len_field_len(field::SPAN_PARENT_SPAN_ID, parent.len())
            })
            + optional_len(field::SPAN_NAME, self.name.len())
            + scalar_len(field::SPAN_KIND, kind, varint_len(kind))
            + scalar_len(field::SPAN_START, self.start_unix_ns, 8)
            + scalar_len(field::SPAN_END, self.end_unix_ns, 8)
            + self.attributes.bytes.len()
            + len_field_len(field::SPAN_STATUS, self.status_len())
            + scalar_len(field::SPAN_FLAGS, u64::from(self.flags), 4)
    }

    /// Appends the span as a `ScopeSpans.spans` field, in field order.
    fn encode(&self, out: &mut Vec<u8>) {
        let len = self.len();
        out.reserve(len_field_len(field::SCOPE_SPANS_SPANS, len));
        len_prefix(field::SCOPE_SPANS_SPANS, len, out);
        let start = out.len();
        bytes_field(field::SPAN_TRACE_ID, &self.trace_id, out);
        bytes_field(field::SPAN_SPAN_ID, &self.span_id, out);
        if !self.trace_state.is_empty() {
            bytes_field(field::SPAN_TRACE_STATE, self.trace_state.as_bytes(), out);
        }
        if let Some(parent) = &self.parent_span_id {
            bytes_field(field::SPAN_PARENT_SPAN_ID, parent, out);
        }
        if !self.name.is_empty() {
            bytes_field(field::SPAN_NAME, self.name.as_bytes(), out);
        }
        if self.kind as u64 != 0 {
            write_key(field::SPAN_KIND, VARINT, out);
            varint(self.kind as u64, out);
        }
        for (field, time) in [
            (field::SPAN_START, self.start_unix_ns),
            (field::SPAN_END, self.end_unix_ns),
        ] {
            if time != 0 {
                write_key(field, FIXED64, out);
                out.extend_from_slice(&time.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.attributes.bytes);
        len_prefix(field::SPAN_STATUS, self.status_len(), out);
        if let Some(message) = self.error {
            if !message.is_empty() {
                bytes_field(field::STATUS_MESSAGE, message.as_bytes(), out);
            }
            write_key(field::STATUS_CODE, VARINT, out);
            varint(ERROR, out);
        }
        if self.flags != 0 {
            write_key(field::SPAN_FLAGS, FIXED32, out);
            out.extend_from_slice(&self.flags.to_le_bytes());
        }
        debug_assert_eq!(out.len() - start, len, "the span's length as announced");
    }
}

/// Encoded spans of one instance's requests, back to back, and where each
/// request ends: a batch from the moment its requests are sampled until
/// the collector has them. Dropping the oldest requests cuts bytes off the
/// front.
#[derive(Debug, Default)]
pub struct EncodedSpans {
    bytes: Vec<u8>,
    /// The end of each request's spans in `bytes`.
    ends: Vec<usize>,
    /// How many spans each request has (a server request 3, a call 1).
    counts: Vec<u8>,
    /// Spans pushed since the last request ended.
    pending: u8,
}

impl EncodedSpans {
    /// Requests held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn push_span(&mut self, span: &Span<'_>) {
        span.encode(&mut self.bytes);
        self.pending += 1;
    }

    /// The spans pushed since the last call are one request's.
    pub fn end_request(&mut self) {
        self.ends.push(self.bytes.len());
        self.counts.push(std::mem::take(&mut self.pending));
    }

    /// Spans held.
    pub fn spans(&self) -> usize {
        self.counts.iter().map(|&count| usize::from(count)).sum()
    }

    /// Forgets the oldest `count` requests.
    pub fn drop_oldest(&mut self, count: usize) {
        let count = count.min(self.ends.len());
        if count == 0 {
            return;
        }
        let cut = self.ends[count - 1];
        self.bytes.drain(..cut);
        self.ends.drain(..count);
        self.counts.drain(..count);
        for end in &mut self.ends {
            *end -= cut;
        }
    }

    /// Moves `later`'s requests after these.
    pub fn append(&mut self, later: EncodedSpans) {
        let offset = self.bytes.len();
        self.bytes.extend_from_slice(&later.bytes);
        self.ends.extend(later.ends.iter().map(|end| end + offset));
        self.counts.extend(later.counts);
    }

    /// The requests so far, leaving as much room as they had: batches
    /// that come at the same rate then never grow by copying.
    pub fn take(&mut self) -> EncodedSpans {
        let fresh = EncodedSpans {
            bytes: Vec::with_capacity(self.bytes.capacity()),
            ends: Vec::with_capacity(self.ends.capacity()),
            counts: Vec::with_capacity(self.counts.capacity()),
            pending: 0,
        };
        std::mem::replace(self, fresh)
    }
}

/// What an export request holds besides its spans: the `ResourceSpans`
/// resource and schema URL and the `ScopeSpans` scope, each encoded once.
#[derive(Debug)]
pub struct Envelope {
    /// The resource field, key and length included.
    resource: Vec<u8>,
    /// The scope field, key and length included.
    scope: Vec<u8>,
    /// The schema URL field, if any.
    schema_url: Vec<u8>,
}

impl Envelope {
    /// The resource as the OpenTelemetry SDK's exporter converts it.
    pub fn new(resource: &opentelemetry_sdk::Resource, scope: &InstrumentationScope) -> Self {
        let converted = ResourceAttributesWithSchema::from(resource);
        let resource = Resource {
            attributes: converted.attributes.0,
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        };
        let mut schema_url = Vec::new();
        if let Some(url) = converted.schema_url.filter(|url| !url.is_empty()) {
            bytes_field(
                field::RESOURCE_SPANS_SCHEMA_URL,
                url.as_bytes(),
                &mut schema_url,
            );
        }
        Self {
            resource: message_field(field::RESOURCE_SPANS_RESOURCE, &resource),
            scope: message_field(field::SCOPE_SPANS_SCOPE, scope),
            schema_url,
        }
    }

    /// The `ExportTraceServiceRequest` of `spans`: one `ResourceSpans`
    /// with one `ScopeSpans`.
    pub fn export_request(&self, spans: &EncodedSpans) -> Vec<u8> {
        let scope_spans = self.scope.len() + spans.bytes.len();
        let resource_spans = self.resource.len()
            + len_field_len(field::RESOURCE_SPANS_SCOPE_SPANS, scope_spans)
            + self.schema_url.len();
        let total = len_field_len(field::EXPORT_RESOURCE_SPANS, resource_spans);
        let mut out = Vec::with_capacity(total);
        len_prefix(field::EXPORT_RESOURCE_SPANS, resource_spans, &mut out);
        out.extend_from_slice(&self.resource);
        len_prefix(field::RESOURCE_SPANS_SCOPE_SPANS, scope_spans, &mut out);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(&spans.bytes);
        out.extend_from_slice(&self.schema_url);
        debug_assert_eq!(out.len(), total, "the request's length as announced");
        out
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value},
        trace::v1,
    };

    use super::*;

    fn string(value: &str) -> AnyValue {
        AnyValue {
            value: Some(Value::StringValue(value.into())),
        }
    }

    fn attribute(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    fn decode(envelope: &Envelope, spans: &EncodedSpans) -> ExportTraceServiceRequest {
        let bytes = envelope.export_request(spans);
        ExportTraceServiceRequest::decode(&bytes[..]).expect("a valid message")
    }

    fn envelope() -> Envelope {
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name("web")
            .with_schema_url([], "https://opentelemetry.io/schemas/1.0.0")
            .build();
        let scope = InstrumentationScope {
            name: "tracer".into(),
            ..Default::default()
        };
        Envelope::new(&resource, &scope)
    }

    #[test]
    fn varints_are_protobuf_varints() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut ours = Vec::new();
            varint(value, &mut ours);
            let mut prost = Vec::new();
            prost::encode_length_delimiter(value as usize, &mut prost).unwrap();
            assert_eq!(ours, prost, "{value}");
            assert_eq!(varint_len(value), ours.len(), "{value}");
        }
    }

    /// Every kind of field, against prost's decoding of the same bytes;
    /// empty strings and negative or zero integers included.
    #[test]
    fn spans_decode_to_the_fields_written() {
        let mut attributes = Attributes::default();
        attributes.str("empty", "");
        attributes.str("long", &"x".repeat(300));
        attributes.int("zero", 0);
        attributes.int("negative", -5);
        attributes.strings(&["http.request.header.", "x-a"], ["a", ""].into_iter());
        attributes.strings(&["none"], std::iter::empty());
        let mut spans = EncodedSpans::default();
        let span = Span {
            trace_id: [7; 16],
            span_id: [8; 8],
            trace_state: "vendor=1",
            parent_span_id: Some([9; 8]),
            name: "GET /x",
            kind: SpanKind::Server,
            start_unix_ns: 1,
            end_unix_ns: u64::MAX,
            attributes: &attributes,
            error: Some("HTTP 500"),
            flags: 0x101,
        };
        spans.push_span(&span);
        let empty = Attributes::default();
        spans.push_span(&Span {
            trace_state: "",
            parent_span_id: None,
            name: "",
            kind: SpanKind::Unspecified,
            start_unix_ns: 0,
            attributes: &empty,
            error: None,
            flags: 0,
            ..span
        });
        spans.end_request();
        let request = decode(&envelope(), &spans);
        let [resource_spans] = &request.resource_spans[..] else {
            panic!("one ResourceSpans: {request:?}");
        };
        assert_eq!(
            resource_spans.schema_url,
            "https://opentelemetry.io/schemas/1.0.0"
        );
        let [scope_spans] = &resource_spans.scope_spans[..] else {
            panic!("one ScopeSpans");
        };
        assert_eq!(scope_spans.scope.as_ref().unwrap().name, "tracer");
        let [full, bare] = &scope_spans.spans[..] else {
            panic!("two spans");
        };
        let strings = |values: &[&str]| {
            Value::ArrayValue(ArrayValue {
                values: values.iter().map(|value| string(value)).collect(),
            })
        };
        assert_eq!(
            *full,
            v1::Span {
                trace_id: vec![7; 16],
                span_id: vec![8; 8],
                trace_state: "vendor=1".into(),
                parent_span_id: vec![9; 8],
                name: "GET /x".into(),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: 1,
                end_time_unix_nano: u64::MAX,
                attributes: vec![
                    attribute("empty", Value::StringValue(String::new())),
                    attribute("long", Value::StringValue("x".repeat(300))),
                    attribute("zero", Value::IntValue(0)),
                    attribute("negative", Value::IntValue(-5)),
                    attribute("http.request.header.x-a", strings(&["a", ""])),
                    attribute("none", strings(&[])),
                ],
                status: Some(v1::Status {
                    message: "HTTP 500".into(),
                    code: StatusCode::Error as i32,
                }),
                flags: 0x101,
                ..Default::default()
            }
        );
        assert_eq!(
            *bare,
            v1::Span {
                trace_id: vec![7; 16],
                span_id: vec![8; 8],
                end_time_unix_nano: u64::MAX,
                status: Some(v1::Status::default()),
                ..Default::default()
            }
        );
    }

    fn one_span_requests(names: &[&str]) -> EncodedSpans {
        let attributes = Attributes::default();
        let mut spans = EncodedSpans::default();
        for name in names {
            spans.push_span(&Span {
                trace_id: [1; 16],
                span_id: [2; 8],
                trace_state: "",
                parent_span_id: None,
                name,
                kind: SpanKind::Internal,
                start_unix_ns: 1,
                end_unix_ns: 2,
                attributes: &attributes,
                error: None,
                flags: 0,
            });
            spans.end_request();
        }
        spans
    }

    fn names(spans: &EncodedSpans) -> Vec<String> {
        decode(&envelope(), spans).resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|span| span.name.clone())
            .collect()
    }

    #[test]
    fn the_oldest_requests_go_first_and_batches_append() {
        let mut spans = one_span_requests(&["a", "b", "c"]);
        spans.drop_oldest(2);
        assert_eq!(spans.len(), 1);
        assert_eq!(names(&spans), ["c"]);
        spans.append(one_span_requests(&["d", "e"]));
        assert_eq!(names(&spans), ["c", "d", "e"]);
        spans.drop_oldest(1);
        assert_eq!(names(&spans), ["d", "e"]);
        let taken = spans.take();
        assert!(spans.is_empty());
        assert_eq!(names(&taken), ["d", "e"]);
        let mut taken = taken;
        taken.drop_oldest(5);
        assert!(taken.is_empty());
    }
}
