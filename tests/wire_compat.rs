//! Wire compatibility between our own ext_proc v3 protos (`proto/`, compiled into
//! `extproc_gateway::proto`) and Envoy's upstream definitions as packaged by the
//! independent `envoy-types` crate.
//!
//! Every message below is built with every field our protos define set to a
//! non-default value, and each oneof variant is covered in turn. Two directions:
//!
//! * ours -> envoy-types -> ours: encode with our types, decode and re-encode with
//!   envoy-types, decode with ours again, and require the result to equal the
//!   original (so envoy-types understood every field and nothing was lost).
//! * envoy-types -> ours -> envoy-types: the same the other way round, plus spot
//!   checks that our types read specific values (raw header bytes, attributes,
//!   mode overrides, ...) into the right fields.
//!
//! Field differences between the two definitions, as of envoy-types 0.7.7:
//! * None in the fields: envoy-types has every field our protos define, with the
//!   same numbers and types, and no extra ones in the messages used here.
//! * Rust representation only: envoy-types uses `Vec<u8>` for `bytes` (we use
//!   `Bytes`), its own `google.protobuf` types (we use `prost_types`, which maps
//!   `BoolValue` to `Option<bool>`), and marks `HeaderValueOption.append` and
//!   `ProcessingResponse.request_drain` as deprecated.
//! * Enum value sets: Envoy's `envoy.type.v3.StatusCode` has many more codes than
//!   ours. Prost keeps unknown enum values as the raw `i32`, so they still survive
//!   a round trip through our types (checked below with 429).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;

use bytes::Bytes;
use prost::Message;

use extproc_gateway::proto::core as our_core;
use extproc_gateway::proto::ext_proc as ours;
use extproc_gateway::proto::http_status as our_status;
use extproc_gateway::proto::mode as our_mode;

use envoy_types::pb::envoy::config::core::v3 as envoy_core;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3 as envoy_mode;
use envoy_types::pb::envoy::r#type::v3 as envoy_status;
use envoy_types::pb::envoy::service::ext_proc::v3 as envoy;
use envoy_types::pb::google::protobuf as envoy_pb;

use our_core::header_value_option::HeaderAppendAction as OurAppend;
use our_mode::processing_mode::{BodySendMode as OurBodyMode, HeaderSendMode as OurHeaderMode};
use ours::common_response::ResponseStatus as OurStatus;
use ours::processing_request::Request as OurRequest;
use ours::processing_response::Response as OurResponse;

use envoy::common_response::ResponseStatus as EnvoyStatus;
use envoy::processing_request::Request as EnvoyRequest;
use envoy::processing_response::Response as EnvoyResponse;
use envoy_core::header_value_option::HeaderAppendAction as EnvoyAppend;
use envoy_mode::processing_mode::{
    BodySendMode as EnvoyBodyMode, HeaderSendMode as EnvoyHeaderMode,
};

// ---------------------------------------------------------------------------
// Shared test data
// ---------------------------------------------------------------------------

const ATTR_KEY: &str = "envoy.filters.http.ext_proc";
/// Not valid UTF-8, so it can only travel in `raw_value`.
const RAW_HEADER: &[u8] = b"\xffbin\x00ary";
const BODY: &[u8] = b"{\"hello\":\"world\"}";
const ANY_TYPE_URL: &str = "type.googleapis.com/google.protobuf.StringValue";
/// A serialized `google.protobuf.StringValue { value: "hello" }`.
const ANY_VALUE: &[u8] = b"\x0a\x05hello";
/// Above `i32::MAX`, so a 32-bit field on either side would show up.
const BIG: i64 = 5_000_000_000;

// ---------------------------------------------------------------------------
// Round-trip helpers
// ---------------------------------------------------------------------------

/// Encodes `original` with type `A`, decodes and re-encodes it with type `B`, decodes
/// that with `A` again and requires the result to equal `original`. Returns the `B`
/// value for spot checks.
fn round_trip<A, B>(original: &A) -> B
where
    A: Message + Default + PartialEq + Debug,
    B: Message + Default,
{
    let wire = original.encode_to_vec();
    let other = B::decode(wire.as_slice()).expect("the other definition decodes the bytes");
    // Map order may differ between the two encodings, but their size cannot.
    assert_eq!(
        other.encoded_len(),
        wire.len(),
        "re-encoding changed the size"
    );
    let back = A::decode(other.encode_to_vec().as_slice()).expect("decoding the re-encoding");
    assert_eq!(&back, original, "a field was lost or changed on the way");
    other
}

/// The top-level field numbers present in an encoded message.
fn field_numbers(mut buf: &[u8]) -> BTreeSet<u32> {
    fn varint(buf: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = buf[0];
            *buf = &buf[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let mut numbers = BTreeSet::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        numbers.insert(u32::try_from(key >> 3).expect("field number fits u32"));
        match key & 7 {
            0 => {
                varint(&mut buf);
            }
            1 => buf = &buf[8..],
            2 => {
                let len = usize::try_from(varint(&mut buf)).expect("length fits usize");
                buf = &buf[len..];
            }
            5 => buf = &buf[4..],
            other => panic!("unexpected wire type {other}"),
        }
    }
    numbers
}

/// Requires `msg` to carry exactly the field numbers `expected` (a field at its
/// default value is not encoded, so this proves each one is set).
fn assert_fields<M: Message>(what: &str, msg: &M, expected: &[u32]) {
    let present = field_numbers(&msg.encode_to_vec());
    let expected: BTreeSet<u32> = expected.iter().copied().collect();
    assert_eq!(present, expected, "{what}: fields set");
}

// ---------------------------------------------------------------------------
// Builders: our types
// ---------------------------------------------------------------------------

fn our_value(kind: prost_types::value::Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

/// A `Struct` using every `Value` kind.
fn our_struct(name: &str) -> prost_types::Struct {
    use prost_types::value::Kind;
    let nested = prost_types::Struct {
        fields: [("k".to_owned(), our_value(Kind::StringValue("v".into())))].into(),
    };
    let list = prost_types::ListValue {
        values: vec![
            our_value(Kind::StringValue("a".into())),
            our_value(Kind::NumberValue(1.0)),
        ],
    };
    prost_types::Struct {
        fields: [
            ("name".to_owned(), our_value(Kind::StringValue(name.into()))),
            ("count".to_owned(), our_value(Kind::NumberValue(42.5))),
            ("enabled".to_owned(), our_value(Kind::BoolValue(true))),
            ("nothing".to_owned(), our_value(Kind::NullValue(0))),
            ("nested".to_owned(), our_value(Kind::StructValue(nested))),
            ("list".to_owned(), our_value(Kind::ListValue(list))),
        ]
        .into(),
    }
}

fn our_any() -> prost_types::Any {
    prost_types::Any {
        type_url: ANY_TYPE_URL.into(),
        value: ANY_VALUE.to_vec(),
    }
}

fn our_header(key: &str, value: &str, raw_value: &[u8]) -> our_core::HeaderValue {
    our_core::HeaderValue {
        key: key.into(),
        value: value.into(),
        raw_value: Bytes::copy_from_slice(raw_value),
    }
}

/// Headers carried as `value`, as `raw_value`, and with both set.
fn our_header_map() -> our_core::HeaderMap {
    our_core::HeaderMap {
        headers: vec![
            our_header(":path", "/api", b""),
            our_header("x-raw", "", RAW_HEADER),
            our_header("x-both", "text", b"raw"),
        ],
    }
}

fn our_http_headers() -> ours::HttpHeaders {
    ours::HttpHeaders {
        headers: Some(our_header_map()),
        attributes: HashMap::from([(ATTR_KEY.to_owned(), our_struct("headers-attr"))]),
        end_of_stream: true,
    }
}

fn our_http_body() -> ours::HttpBody {
    ours::HttpBody {
        body: Bytes::from_static(BODY),
        end_of_stream: true,
        end_of_stream_without_message: true,
        grpc_message_compressed: true,
        drain_complete: true,
    }
}

fn our_http_trailers() -> ours::HttpTrailers {
    ours::HttpTrailers {
        trailers: Some(our_header_map()),
    }
}

fn our_metadata() -> our_core::Metadata {
    our_core::Metadata {
        filter_metadata: HashMap::from([(ATTR_KEY.to_owned(), our_struct("metadata"))]),
        typed_filter_metadata: HashMap::from([(ATTR_KEY.to_owned(), our_any())]),
    }
}

/// One of each `request` oneof variant.
fn our_request_variants() -> Vec<OurRequest> {
    vec![
        OurRequest::RequestHeaders(our_http_headers()),
        OurRequest::ResponseHeaders(our_http_headers()),
        OurRequest::RequestBody(our_http_body()),
        OurRequest::ResponseBody(our_http_body()),
        OurRequest::RequestTrailers(our_http_trailers()),
        OurRequest::ResponseTrailers(our_http_trailers()),
    ]
}

fn our_request(request: OurRequest) -> ours::ProcessingRequest {
    ours::ProcessingRequest {
        request: Some(request),
        metadata_context: Some(our_metadata()),
        attributes: HashMap::from([(ATTR_KEY.to_owned(), our_struct("request-attr"))]),
        observability_mode: true,
        protocol_config: Some(ours::ProtocolConfiguration {
            request_body_mode: OurBodyMode::BufferedPartial as i32,
            response_body_mode: OurBodyMode::FullDuplexStreamed as i32,
            send_body_without_waiting_for_header_response: true,
        }),
        flow_control_init: Some(ours::processing_request::FlowControlInit {
            initial_window_downstream_to_sidestream: BIG + 1,
            initial_window_sidestream_to_upstream: BIG + 2,
            initial_window_upstream_to_sidestream: BIG + 3,
            initial_window_sidestream_to_downstream: BIG + 4,
        }),
        client_window_update: Some(ours::processing_request::ClientWindowUpdate {
            window_increment_sidestream_to_upstream: BIG + 5,
            window_increment_sidestream_to_downstream: BIG + 6,
        }),
    }
}

fn our_header_mutation() -> ours::HeaderMutation {
    ours::HeaderMutation {
        set_headers: vec![
            our_core::HeaderValueOption {
                header: Some(our_header("x-set", "value", b"raw")),
                append: Some(true),
                append_action: OurAppend::OverwriteIfExists as i32,
                keep_empty_value: true,
            },
            // `append: Some(false)` is an empty BoolValue on the wire; it must stay set.
            our_core::HeaderValueOption {
                header: Some(our_header("x-set-raw", "", RAW_HEADER)),
                append: Some(false),
                append_action: OurAppend::AddIfAbsent as i32,
                keep_empty_value: true,
            },
        ],
        remove_headers: vec!["x-remove-me".into(), "x-remove-me-too".into()],
    }
}

fn our_streamed_body() -> ours::StreamedBodyResponse {
    ours::StreamedBodyResponse {
        body: Bytes::from_static(BODY),
        end_of_stream: true,
        end_of_stream_without_message: true,
        grpc_message_compressed: true,
        drain_complete: true,
    }
}

/// One of each `BodyMutation` oneof form.
fn our_body_mutations() -> Vec<ours::BodyMutation> {
    use ours::body_mutation::Mutation;
    [
        Mutation::Body(Bytes::from_static(BODY)),
        Mutation::ClearBody(true),
        Mutation::StreamedResponse(our_streamed_body()),
    ]
    .into_iter()
    .map(|m| ours::BodyMutation { mutation: Some(m) })
    .collect()
}

fn our_common(body_mutation: ours::BodyMutation) -> ours::CommonResponse {
    ours::CommonResponse {
        status: OurStatus::ContinueAndReplace as i32,
        header_mutation: Some(our_header_mutation()),
        body_mutation: Some(body_mutation),
        trailers: Some(our_header_map()),
        clear_route_cache: true,
    }
}

fn our_immediate() -> ours::ImmediateResponse {
    ours::ImmediateResponse {
        status: Some(our_status::HttpStatus {
            code: our_status::StatusCode::Forbidden as i32,
        }),
        headers: Some(our_header_mutation()),
        body: Bytes::from_static(BODY),
        grpc_status: Some(ours::GrpcStatus { status: 7 }),
        details: "denied by policy".into(),
    }
}

/// One of each `response` oneof variant; the four that carry a `CommonResponse` once
/// per `BodyMutation` form, and `StreamedImmediateResponse` in each of its forms.
fn our_response_variants() -> Vec<OurResponse> {
    use ours::streamed_immediate_response::Response as Streamed;
    let mut variants = Vec::new();
    for mutation in our_body_mutations() {
        let common = Some(our_common(mutation));
        variants.extend([
            OurResponse::RequestHeaders(ours::HeadersResponse {
                response: common.clone(),
            }),
            OurResponse::ResponseHeaders(ours::HeadersResponse {
                response: common.clone(),
            }),
            OurResponse::RequestBody(ours::BodyResponse {
                response: common.clone(),
            }),
            OurResponse::ResponseBody(ours::BodyResponse { response: common }),
        ]);
    }
    let trailers = ours::TrailersResponse {
        header_mutation: Some(our_header_mutation()),
    };
    variants.push(OurResponse::RequestTrailers(trailers.clone()));
    variants.push(OurResponse::ResponseTrailers(trailers));
    variants.push(OurResponse::ImmediateResponse(our_immediate()));
    for streamed in [
        Streamed::HeadersResponse(our_http_headers()),
        Streamed::BodyResponse(our_streamed_body()),
        Streamed::TrailersResponse(our_header_map()),
    ] {
        variants.push(OurResponse::StreamedImmediateResponse(
            ours::StreamedImmediateResponse {
                response: Some(streamed),
            },
        ));
    }
    variants
}

fn our_mode_override() -> our_mode::ProcessingMode {
    our_mode::ProcessingMode {
        request_header_mode: OurHeaderMode::Send as i32,
        response_header_mode: OurHeaderMode::Skip as i32,
        request_body_mode: OurBodyMode::Grpc as i32,
        response_body_mode: OurBodyMode::FullDuplexStreamed as i32,
        request_trailer_mode: OurHeaderMode::Send as i32,
        response_trailer_mode: OurHeaderMode::Skip as i32,
    }
}

fn our_response(response: OurResponse) -> ours::ProcessingResponse {
    ours::ProcessingResponse {
        response: Some(response),
        dynamic_metadata: Some(our_struct("dynamic")),
        typed_dynamic_metadata: HashMap::from([(ATTR_KEY.to_owned(), our_any())]),
        mode_override: Some(our_mode_override()),
        request_drain: true,
        request_drain_requests: true,
        request_drain_responses: true,
        override_message_timeout: Some(prost_types::Duration {
            seconds: 5,
            nanos: 250_000_000,
        }),
        server_window_update: Some(ours::processing_response::ServerWindowUpdate {
            window_increment_downstream_to_sidestream: BIG + 7,
            window_increment_upstream_to_sidestream: BIG + 8,
        }),
    }
}

// ---------------------------------------------------------------------------
// Builders: envoy-types (mirror the ones above)
// ---------------------------------------------------------------------------

fn envoy_value(kind: envoy_pb::value::Kind) -> envoy_pb::Value {
    envoy_pb::Value { kind: Some(kind) }
}

fn envoy_struct(name: &str) -> envoy_pb::Struct {
    use envoy_pb::value::Kind;
    let nested = envoy_pb::Struct {
        fields: [("k".to_owned(), envoy_value(Kind::StringValue("v".into())))].into(),
    };
    let list = envoy_pb::ListValue {
        values: vec![
            envoy_value(Kind::StringValue("a".into())),
            envoy_value(Kind::NumberValue(1.0)),
        ],
    };
    envoy_pb::Struct {
        fields: [
            (
                "name".to_owned(),
                envoy_value(Kind::StringValue(name.into())),
            ),
            ("count".to_owned(), envoy_value(Kind::NumberValue(42.5))),
            ("enabled".to_owned(), envoy_value(Kind::BoolValue(true))),
            ("nothing".to_owned(), envoy_value(Kind::NullValue(0))),
            ("nested".to_owned(), envoy_value(Kind::StructValue(nested))),
            ("list".to_owned(), envoy_value(Kind::ListValue(list))),
        ]
        .into(),
    }
}

fn envoy_any() -> envoy_pb::Any {
    envoy_pb::Any {
        type_url: ANY_TYPE_URL.into(),
        value: ANY_VALUE.to_vec(),
    }
}

fn envoy_header(key: &str, value: &str, raw_value: &[u8]) -> envoy_core::HeaderValue {
    envoy_core::HeaderValue {
        key: key.into(),
        value: value.into(),
        raw_value: raw_value.to_vec(),
    }
}

fn envoy_header_map() -> envoy_core::HeaderMap {
    envoy_core::HeaderMap {
        headers: vec![
            envoy_header(":path", "/api", b""),
            envoy_header("x-raw", "", RAW_HEADER),
            envoy_header("x-both", "text", b"raw"),
        ],
    }
}

fn envoy_http_headers() -> envoy::HttpHeaders {
    envoy::HttpHeaders {
        headers: Some(envoy_header_map()),
        attributes: HashMap::from([(ATTR_KEY.to_owned(), envoy_struct("headers-attr"))]),
        end_of_stream: true,
    }
}

fn envoy_http_body() -> envoy::HttpBody {
    envoy::HttpBody {
        body: BODY.to_vec(),
        end_of_stream: true,
        end_of_stream_without_message: true,
        grpc_message_compressed: true,
        drain_complete: true,
    }
}

fn envoy_http_trailers() -> envoy::HttpTrailers {
    envoy::HttpTrailers {
        trailers: Some(envoy_header_map()),
    }
}

fn envoy_metadata() -> envoy_core::Metadata {
    envoy_core::Metadata {
        filter_metadata: HashMap::from([(ATTR_KEY.to_owned(), envoy_struct("metadata"))]),
        typed_filter_metadata: HashMap::from([(ATTR_KEY.to_owned(), envoy_any())]),
    }
}

fn envoy_request_variants() -> Vec<EnvoyRequest> {
    vec![
        EnvoyRequest::RequestHeaders(envoy_http_headers()),
        EnvoyRequest::ResponseHeaders(envoy_http_headers()),
        EnvoyRequest::RequestBody(envoy_http_body()),
        EnvoyRequest::ResponseBody(envoy_http_body()),
        EnvoyRequest::RequestTrailers(envoy_http_trailers()),
        EnvoyRequest::ResponseTrailers(envoy_http_trailers()),
    ]
}

fn envoy_request(request: EnvoyRequest) -> envoy::ProcessingRequest {
    envoy::ProcessingRequest {
        request: Some(request),
        metadata_context: Some(envoy_metadata()),
        attributes: HashMap::from([(ATTR_KEY.to_owned(), envoy_struct("request-attr"))]),
        observability_mode: true,
        protocol_config: Some(envoy::ProtocolConfiguration {
            request_body_mode: EnvoyBodyMode::BufferedPartial as i32,
            response_body_mode: EnvoyBodyMode::FullDuplexStreamed as i32,
            send_body_without_waiting_for_header_response: true,
        }),
        flow_control_init: Some(envoy::processing_request::FlowControlInit {
            initial_window_downstream_to_sidestream: BIG + 1,
            initial_window_sidestream_to_upstream: BIG + 2,
            initial_window_upstream_to_sidestream: BIG + 3,
            initial_window_sidestream_to_downstream: BIG + 4,
        }),
        client_window_update: Some(envoy::processing_request::ClientWindowUpdate {
            window_increment_sidestream_to_upstream: BIG + 5,
            window_increment_sidestream_to_downstream: BIG + 6,
        }),
    }
}

// `append` is deprecated upstream (in favour of `append_action`) but still on the wire.
#[allow(deprecated)]
fn envoy_header_mutation() -> envoy::HeaderMutation {
    envoy::HeaderMutation {
        set_headers: vec![
            envoy_core::HeaderValueOption {
                header: Some(envoy_header("x-set", "value", b"raw")),
                append: Some(envoy_pb::BoolValue { value: true }),
                append_action: EnvoyAppend::OverwriteIfExists as i32,
                keep_empty_value: true,
            },
            envoy_core::HeaderValueOption {
                header: Some(envoy_header("x-set-raw", "", RAW_HEADER)),
                append: Some(envoy_pb::BoolValue { value: false }),
                append_action: EnvoyAppend::AddIfAbsent as i32,
                keep_empty_value: true,
            },
        ],
        remove_headers: vec!["x-remove-me".into(), "x-remove-me-too".into()],
    }
}

fn envoy_streamed_body() -> envoy::StreamedBodyResponse {
    envoy::StreamedBodyResponse {
        body: BODY.to_vec(),
        end_of_stream: true,
        end_of_stream_without_message: true,
        grpc_message_compressed: true,
        drain_complete: true,
    }
}

fn envoy_body_mutations() -> Vec<envoy::BodyMutation> {
    use envoy::body_mutation::Mutation;
    [
        Mutation::Body(BODY.to_vec()),
        Mutation::ClearBody(true),
        Mutation::StreamedResponse(envoy_streamed_body()),
    ]
    .into_iter()
    .map(|m| envoy::BodyMutation { mutation: Some(m) })
    .collect()
}

fn envoy_common(body_mutation: envoy::BodyMutation) -> envoy::CommonResponse {
    envoy::CommonResponse {
        status: EnvoyStatus::ContinueAndReplace as i32,
        header_mutation: Some(envoy_header_mutation()),
        body_mutation: Some(body_mutation),
        trailers: Some(envoy_header_map()),
        clear_route_cache: true,
    }
}

fn envoy_immediate() -> envoy::ImmediateResponse {
    envoy::ImmediateResponse {
        status: Some(envoy_status::HttpStatus {
            code: envoy_status::StatusCode::Forbidden as i32,
        }),
        headers: Some(envoy_header_mutation()),
        body: BODY.to_vec(),
        grpc_status: Some(envoy::GrpcStatus { status: 7 }),
        details: "denied by policy".into(),
    }
}

fn envoy_response_variants() -> Vec<EnvoyResponse> {
    use envoy::streamed_immediate_response::Response as Streamed;
    let mut variants = Vec::new();
    for mutation in envoy_body_mutations() {
        let common = Some(envoy_common(mutation));
        variants.extend([
            EnvoyResponse::RequestHeaders(envoy::HeadersResponse {
                response: common.clone(),
            }),
            EnvoyResponse::ResponseHeaders(envoy::HeadersResponse {
                response: common.clone(),
            }),
            EnvoyResponse::RequestBody(envoy::BodyResponse {
                response: common.clone(),
            }),
            EnvoyResponse::ResponseBody(envoy::BodyResponse { response: common }),
        ]);
    }
    let trailers = envoy::TrailersResponse {
        header_mutation: Some(envoy_header_mutation()),
    };
    variants.push(EnvoyResponse::RequestTrailers(trailers.clone()));
    variants.push(EnvoyResponse::ResponseTrailers(trailers));
    variants.push(EnvoyResponse::ImmediateResponse(envoy_immediate()));
    for streamed in [
        Streamed::HeadersResponse(envoy_http_headers()),
        Streamed::BodyResponse(envoy_streamed_body()),
        Streamed::TrailersResponse(envoy_header_map()),
    ] {
        variants.push(EnvoyResponse::StreamedImmediateResponse(
            envoy::StreamedImmediateResponse {
                response: Some(streamed),
            },
        ));
    }
    variants
}

fn envoy_mode_override() -> envoy_mode::ProcessingMode {
    envoy_mode::ProcessingMode {
        request_header_mode: EnvoyHeaderMode::Send as i32,
        response_header_mode: EnvoyHeaderMode::Skip as i32,
        request_body_mode: EnvoyBodyMode::Grpc as i32,
        response_body_mode: EnvoyBodyMode::FullDuplexStreamed as i32,
        request_trailer_mode: EnvoyHeaderMode::Send as i32,
        response_trailer_mode: EnvoyHeaderMode::Skip as i32,
    }
}

// `request_drain` is deprecated upstream (in favour of the two split flags).
#[allow(deprecated)]
fn envoy_response(response: EnvoyResponse) -> envoy::ProcessingResponse {
    envoy::ProcessingResponse {
        response: Some(response),
        dynamic_metadata: Some(envoy_struct("dynamic")),
        typed_dynamic_metadata: HashMap::from([(ATTR_KEY.to_owned(), envoy_any())]),
        mode_override: Some(envoy_mode_override()),
        request_drain: true,
        request_drain_requests: true,
        request_drain_responses: true,
        override_message_timeout: Some(envoy_pb::Duration {
            seconds: 5,
            nanos: 250_000_000,
        }),
        server_window_update: Some(envoy::processing_response::ServerWindowUpdate {
            window_increment_downstream_to_sidestream: BIG + 7,
            window_increment_upstream_to_sidestream: BIG + 8,
        }),
    }
}

// ---------------------------------------------------------------------------
// Oneof variant names, to check both sides pick the same variant for a tag
// ---------------------------------------------------------------------------

fn our_request_kind(request: &ours::ProcessingRequest) -> &'static str {
    match request.request.as_ref().expect("request set") {
        OurRequest::RequestHeaders(_) => "request_headers",
        OurRequest::ResponseHeaders(_) => "response_headers",
        OurRequest::RequestBody(_) => "request_body",
        OurRequest::ResponseBody(_) => "response_body",
        OurRequest::RequestTrailers(_) => "request_trailers",
        OurRequest::ResponseTrailers(_) => "response_trailers",
    }
}

fn envoy_request_kind(request: &envoy::ProcessingRequest) -> &'static str {
    match request.request.as_ref().expect("request set") {
        EnvoyRequest::RequestHeaders(_) => "request_headers",
        EnvoyRequest::ResponseHeaders(_) => "response_headers",
        EnvoyRequest::RequestBody(_) => "request_body",
        EnvoyRequest::ResponseBody(_) => "response_body",
        EnvoyRequest::RequestTrailers(_) => "request_trailers",
        EnvoyRequest::ResponseTrailers(_) => "response_trailers",
    }
}

fn our_response_kind(response: &ours::ProcessingResponse) -> String {
    use ours::body_mutation::Mutation;
    use ours::streamed_immediate_response::Response as Streamed;
    let mutation = |common: &Option<ours::CommonResponse>| match common
        .as_ref()
        .and_then(|c| c.body_mutation.as_ref())
    {
        Some(ours::BodyMutation {
            mutation: Some(Mutation::Body(_)),
        }) => "body",
        Some(ours::BodyMutation {
            mutation: Some(Mutation::ClearBody(_)),
        }) => "clear_body",
        Some(ours::BodyMutation {
            mutation: Some(Mutation::StreamedResponse(_)),
        }) => "streamed_response",
        _ => "none",
    };
    match response.response.as_ref().expect("response set") {
        OurResponse::RequestHeaders(r) => format!("request_headers/{}", mutation(&r.response)),
        OurResponse::ResponseHeaders(r) => format!("response_headers/{}", mutation(&r.response)),
        OurResponse::RequestBody(r) => format!("request_body/{}", mutation(&r.response)),
        OurResponse::ResponseBody(r) => format!("response_body/{}", mutation(&r.response)),
        OurResponse::RequestTrailers(_) => "request_trailers".into(),
        OurResponse::ResponseTrailers(_) => "response_trailers".into(),
        OurResponse::ImmediateResponse(_) => "immediate_response".into(),
        OurResponse::StreamedImmediateResponse(s) => match s.response.as_ref() {
            Some(Streamed::HeadersResponse(_)) => "streamed/headers_response".into(),
            Some(Streamed::BodyResponse(_)) => "streamed/body_response".into(),
            Some(Streamed::TrailersResponse(_)) => "streamed/trailers_response".into(),
            None => "streamed/none".into(),
        },
    }
}

fn envoy_response_kind(response: &envoy::ProcessingResponse) -> String {
    use envoy::body_mutation::Mutation;
    use envoy::streamed_immediate_response::Response as Streamed;
    let mutation = |common: &Option<envoy::CommonResponse>| match common
        .as_ref()
        .and_then(|c| c.body_mutation.as_ref())
    {
        Some(envoy::BodyMutation {
            mutation: Some(Mutation::Body(_)),
        }) => "body",
        Some(envoy::BodyMutation {
            mutation: Some(Mutation::ClearBody(_)),
        }) => "clear_body",
        Some(envoy::BodyMutation {
            mutation: Some(Mutation::StreamedResponse(_)),
        }) => "streamed_response",
        _ => "none",
    };
    match response.response.as_ref().expect("response set") {
        EnvoyResponse::RequestHeaders(r) => format!("request_headers/{}", mutation(&r.response)),
        EnvoyResponse::ResponseHeaders(r) => format!("response_headers/{}", mutation(&r.response)),
        EnvoyResponse::RequestBody(r) => format!("request_body/{}", mutation(&r.response)),
        EnvoyResponse::ResponseBody(r) => format!("response_body/{}", mutation(&r.response)),
        EnvoyResponse::RequestTrailers(_) => "request_trailers".into(),
        EnvoyResponse::ResponseTrailers(_) => "response_trailers".into(),
        EnvoyResponse::ImmediateResponse(_) => "immediate_response".into(),
        EnvoyResponse::StreamedImmediateResponse(s) => match s.response.as_ref() {
            Some(Streamed::HeadersResponse(_)) => "streamed/headers_response".into(),
            Some(Streamed::BodyResponse(_)) => "streamed/body_response".into(),
            Some(Streamed::TrailersResponse(_)) => "streamed/trailers_response".into(),
            None => "streamed/none".into(),
        },
    }
}

// ---------------------------------------------------------------------------
// Spot checks on values read by our types
// ---------------------------------------------------------------------------

fn string_field<'a>(s: &'a prost_types::Struct, key: &str) -> &'a str {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(prost_types::value::Kind::StringValue(v)) => v,
        other => panic!("field {key:?} is not a string: {other:?}"),
    }
}

fn check_our_struct(s: &prost_types::Struct, name: &str) {
    use prost_types::value::Kind;
    assert_eq!(string_field(s, "name"), name);
    assert_eq!(s.fields["count"].kind, Some(Kind::NumberValue(42.5)));
    assert_eq!(s.fields["enabled"].kind, Some(Kind::BoolValue(true)));
    assert_eq!(s.fields["nothing"].kind, Some(Kind::NullValue(0)));
    match &s.fields["nested"].kind {
        Some(Kind::StructValue(nested)) => assert_eq!(string_field(nested, "k"), "v"),
        other => panic!("nested is not a struct: {other:?}"),
    }
    match &s.fields["list"].kind {
        Some(Kind::ListValue(list)) => assert_eq!(list.values.len(), 2),
        other => panic!("list is not a list: {other:?}"),
    }
}

fn check_our_header_map(map: &our_core::HeaderMap) {
    let find = |key: &str| {
        map.headers
            .iter()
            .find(|h| h.key == key)
            .unwrap_or_else(|| panic!("header {key} missing"))
    };
    assert_eq!(find(":path").value, "/api");
    assert!(find(":path").raw_value.is_empty());
    assert_eq!(find("x-raw").raw_value.as_ref(), RAW_HEADER);
    assert!(find("x-raw").value.is_empty());
    assert_eq!(find("x-both").value, "text");
    assert_eq!(find("x-both").raw_value.as_ref(), b"raw");
}

fn check_our_http_headers(h: &ours::HttpHeaders) {
    check_our_header_map(h.headers.as_ref().expect("headers"));
    check_our_struct(&h.attributes[ATTR_KEY], "headers-attr");
    assert!(h.end_of_stream);
}

fn check_our_header_mutation(m: &ours::HeaderMutation) {
    let [first, second] = m.set_headers.as_slice() else {
        panic!("expected two set_headers, got {:?}", m.set_headers);
    };
    assert_eq!(first.header.as_ref().expect("header").key, "x-set");
    assert_eq!(first.append, Some(true));
    assert_eq!(first.append_action(), OurAppend::OverwriteIfExists);
    assert!(first.keep_empty_value);
    let raw = second.header.as_ref().expect("header");
    assert_eq!(raw.raw_value.as_ref(), RAW_HEADER);
    assert_eq!(
        second.append,
        Some(false),
        "an explicit false must stay set"
    );
    assert_eq!(second.append_action(), OurAppend::AddIfAbsent);
    assert_eq!(m.remove_headers, ["x-remove-me", "x-remove-me-too"]);
}

fn check_our_streamed_body(b: &ours::StreamedBodyResponse) {
    assert_eq!(b.body.as_ref(), BODY);
    assert!(b.end_of_stream && b.end_of_stream_without_message);
    assert!(b.grpc_message_compressed && b.drain_complete);
}

fn check_our_common(c: &ours::CommonResponse) {
    use ours::body_mutation::Mutation;
    assert_eq!(c.status(), OurStatus::ContinueAndReplace);
    check_our_header_mutation(c.header_mutation.as_ref().expect("header_mutation"));
    check_our_header_map(c.trailers.as_ref().expect("trailers"));
    assert!(c.clear_route_cache);
    match c.body_mutation.as_ref().and_then(|m| m.mutation.as_ref()) {
        Some(Mutation::Body(body)) => assert_eq!(body.as_ref(), BODY),
        Some(Mutation::ClearBody(clear)) => assert!(clear),
        Some(Mutation::StreamedResponse(b)) => check_our_streamed_body(b),
        None => panic!("body_mutation missing"),
    }
}

fn check_our_request(req: &ours::ProcessingRequest) {
    let metadata = req.metadata_context.as_ref().expect("metadata_context");
    check_our_struct(&metadata.filter_metadata[ATTR_KEY], "metadata");
    assert_eq!(metadata.typed_filter_metadata[ATTR_KEY], our_any());
    check_our_struct(&req.attributes[ATTR_KEY], "request-attr");
    assert!(req.observability_mode);
    let protocol = req.protocol_config.as_ref().expect("protocol_config");
    assert_eq!(protocol.request_body_mode(), OurBodyMode::BufferedPartial);
    assert_eq!(
        protocol.response_body_mode(),
        OurBodyMode::FullDuplexStreamed
    );
    assert!(protocol.send_body_without_waiting_for_header_response);
    let init = req.flow_control_init.expect("flow_control_init");
    assert_eq!(init.initial_window_downstream_to_sidestream, BIG + 1);
    assert_eq!(init.initial_window_sidestream_to_upstream, BIG + 2);
    assert_eq!(init.initial_window_upstream_to_sidestream, BIG + 3);
    assert_eq!(init.initial_window_sidestream_to_downstream, BIG + 4);
    let update = req.client_window_update.expect("client_window_update");
    assert_eq!(update.window_increment_sidestream_to_upstream, BIG + 5);
    assert_eq!(update.window_increment_sidestream_to_downstream, BIG + 6);

    match req.request.as_ref().expect("request") {
        OurRequest::RequestHeaders(h) | OurRequest::ResponseHeaders(h) => check_our_http_headers(h),
        OurRequest::RequestBody(b) | OurRequest::ResponseBody(b) => {
            assert_eq!(b.body.as_ref(), BODY);
            assert!(b.end_of_stream && b.end_of_stream_without_message);
            assert!(b.grpc_message_compressed && b.drain_complete);
        }
        OurRequest::RequestTrailers(t) | OurRequest::ResponseTrailers(t) => {
            check_our_header_map(t.trailers.as_ref().expect("trailers"))
        }
    }
}

fn check_our_response(resp: &ours::ProcessingResponse) {
    use ours::streamed_immediate_response::Response as Streamed;
    check_our_struct(
        resp.dynamic_metadata.as_ref().expect("dynamic_metadata"),
        "dynamic",
    );
    assert_eq!(resp.typed_dynamic_metadata[ATTR_KEY], our_any());
    let mode = resp.mode_override.expect("mode_override");
    assert_eq!(mode.request_header_mode(), OurHeaderMode::Send);
    assert_eq!(mode.response_header_mode(), OurHeaderMode::Skip);
    assert_eq!(mode.request_body_mode(), OurBodyMode::Grpc);
    assert_eq!(mode.response_body_mode(), OurBodyMode::FullDuplexStreamed);
    assert_eq!(mode.request_trailer_mode(), OurHeaderMode::Send);
    assert_eq!(mode.response_trailer_mode(), OurHeaderMode::Skip);
    assert!(resp.request_drain && resp.request_drain_requests && resp.request_drain_responses);
    let timeout = resp
        .override_message_timeout
        .expect("override_message_timeout");
    assert_eq!((timeout.seconds, timeout.nanos), (5, 250_000_000));
    let window = resp.server_window_update.expect("server_window_update");
    assert_eq!(window.window_increment_downstream_to_sidestream, BIG + 7);
    assert_eq!(window.window_increment_upstream_to_sidestream, BIG + 8);

    match resp.response.as_ref().expect("response") {
        OurResponse::RequestHeaders(h) | OurResponse::ResponseHeaders(h) => {
            check_our_common(h.response.as_ref().expect("common response"))
        }
        OurResponse::RequestBody(b) | OurResponse::ResponseBody(b) => {
            check_our_common(b.response.as_ref().expect("common response"))
        }
        OurResponse::RequestTrailers(t) | OurResponse::ResponseTrailers(t) => {
            check_our_header_mutation(t.header_mutation.as_ref().expect("header_mutation"))
        }
        OurResponse::ImmediateResponse(i) => {
            let status = i.status.expect("status");
            assert_eq!(status.code(), our_status::StatusCode::Forbidden);
            check_our_header_mutation(i.headers.as_ref().expect("headers"));
            assert_eq!(i.body.as_ref(), BODY);
            assert_eq!(i.grpc_status, Some(ours::GrpcStatus { status: 7 }));
            assert_eq!(i.details, "denied by policy");
        }
        OurResponse::StreamedImmediateResponse(s) => match s.response.as_ref() {
            Some(Streamed::HeadersResponse(h)) => check_our_http_headers(h),
            Some(Streamed::BodyResponse(b)) => check_our_streamed_body(b),
            Some(Streamed::TrailersResponse(t)) => check_our_header_map(t),
            None => panic!("streamed_immediate_response is empty"),
        },
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Guards the builders: every field our protos define is set (a default value would
/// not be encoded, and so would not be tested).
#[test]
fn builders_set_every_field() {
    assert_fields(
        "HeaderValue",
        &our_header("x-both", "text", b"raw"),
        &[1, 2, 3],
    );
    assert_fields("HeaderMap", &our_header_map(), &[1]);
    assert_fields("Metadata", &our_metadata(), &[1, 2]);
    assert_fields("HttpHeaders", &our_http_headers(), &[1, 2, 3]);
    assert_fields("HttpBody", &our_http_body(), &[1, 2, 3, 4, 5]);
    assert_fields("HttpTrailers", &our_http_trailers(), &[1]);
    for option in &our_header_mutation().set_headers {
        assert_fields("HeaderValueOption", option, &[1, 2, 3, 4]);
    }
    assert_fields("HeaderMutation", &our_header_mutation(), &[1, 2]);
    assert_fields(
        "StreamedBodyResponse",
        &our_streamed_body(),
        &[1, 2, 3, 4, 5],
    );
    for (mutation, tag) in our_body_mutations().iter().zip(1..) {
        assert_fields("BodyMutation", mutation, &[tag]);
        assert_fields(
            "CommonResponse",
            &our_common(mutation.clone()),
            &[1, 2, 3, 4, 5],
        );
    }
    assert_fields("ImmediateResponse", &our_immediate(), &[1, 2, 3, 4, 5]);
    assert_fields("ProcessingMode", &our_mode_override(), &[1, 2, 3, 4, 5, 6]);

    let requests = our_request_variants();
    assert_eq!(requests.len(), 6);
    for (request, tag) in requests.into_iter().zip(2..) {
        let msg = our_request(request);
        assert_fields("ProcessingRequest", &msg, &[tag, 8, 9, 10, 11, 12, 13]);
        assert_fields(
            "ProtocolConfiguration",
            &msg.protocol_config.unwrap(),
            &[1, 2, 3],
        );
        assert_fields(
            "FlowControlInit",
            &msg.flow_control_init.unwrap(),
            &[1, 2, 3, 4],
        );
        assert_fields(
            "ClientWindowUpdate",
            &msg.client_window_update.unwrap(),
            &[1, 2],
        );
    }

    let responses = our_response_variants();
    assert_eq!(responses.len(), 4 * 3 + 2 + 1 + 3);
    let mut oneof_tags = BTreeSet::new();
    for response in responses {
        let msg = our_response(response);
        let tags = field_numbers(&msg.encode_to_vec());
        let common: BTreeSet<u32> = [8, 9, 10, 12, 13, 14, 15, 16].into();
        let oneof: Vec<u32> = tags.difference(&common).copied().collect();
        assert_eq!(oneof.len(), 1, "exactly one response variant: {tags:?}");
        assert!(tags.is_superset(&common), "all common fields set: {tags:?}");
        oneof_tags.insert(oneof[0]);
        assert_fields(
            "ServerWindowUpdate",
            &msg.server_window_update.unwrap(),
            &[1, 2],
        );
    }
    assert_eq!(
        oneof_tags,
        [1, 2, 3, 4, 5, 6, 7, 11].into(),
        "every variant covered"
    );
}

#[test]
fn processing_request_ours_through_envoy_types() {
    let pairs = our_request_variants()
        .into_iter()
        .zip(envoy_request_variants());
    for (ours, theirs) in pairs {
        let original = our_request(ours);
        let decoded: envoy::ProcessingRequest = round_trip(&original);
        assert_eq!(envoy_request_kind(&decoded), our_request_kind(&original));
        // envoy-types read exactly what it would have built itself from the same values.
        assert_eq!(decoded, envoy_request(theirs));
    }
}

#[test]
fn processing_response_ours_through_envoy_types() {
    let pairs = our_response_variants()
        .into_iter()
        .zip(envoy_response_variants());
    for (ours, theirs) in pairs {
        let original = our_response(ours);
        let decoded: envoy::ProcessingResponse = round_trip(&original);
        assert_eq!(envoy_response_kind(&decoded), our_response_kind(&original));
        assert_eq!(decoded, envoy_response(theirs));
    }
}

#[test]
fn processing_request_envoy_types_through_ours() {
    let pairs = envoy_request_variants()
        .into_iter()
        .zip(our_request_variants());
    for (theirs, ours) in pairs {
        let original = envoy_request(theirs);
        let decoded: ours::ProcessingRequest = round_trip(&original);
        assert_eq!(our_request_kind(&decoded), envoy_request_kind(&original));
        check_our_request(&decoded);
        assert_eq!(decoded, our_request(ours));
    }
}

#[test]
fn processing_response_envoy_types_through_ours() {
    let pairs = envoy_response_variants()
        .into_iter()
        .zip(our_response_variants());
    for (theirs, ours) in pairs {
        let original = envoy_response(theirs);
        let decoded: ours::ProcessingResponse = round_trip(&original);
        assert_eq!(our_response_kind(&decoded), envoy_response_kind(&original));
        check_our_response(&decoded);
        assert_eq!(decoded, our_response(ours));
    }
}

/// Envoy's `StatusCode` has codes ours lacks (429 here). Prost keeps the raw value, so
/// an immediate response from a newer peer survives our types unchanged.
#[test]
fn status_code_unknown_to_our_enum_survives() {
    let mut immediate = envoy_immediate();
    immediate.status = Some(envoy_status::HttpStatus {
        code: envoy_status::StatusCode::TooManyRequests as i32,
    });
    let original = envoy_response(EnvoyResponse::ImmediateResponse(immediate));
    let decoded: ours::ProcessingResponse = round_trip(&original);
    let Some(OurResponse::ImmediateResponse(i)) = decoded.response else {
        panic!("not an immediate response: {decoded:?}");
    };
    let status = i.status.expect("status");
    assert_eq!(status.code, 429);
    assert!(our_status::StatusCode::try_from(status.code).is_err());
    assert_eq!(
        status.code(),
        our_status::StatusCode::Empty,
        "accessor falls back"
    );
}

/// The test driver takes a message built with Envoy's own definitions and sends its
/// bytes as gRPC would; the answer's bytes decode with Envoy's definitions too.
#[tokio::test]
async fn the_driver_speaks_envoys_own_types() {
    use extproc_gateway::prelude::*;
    use extproc_gateway::processors::Trivial;
    use extproc_gateway::testing::Driver;

    let mut driver = Driver::new(Chain::builder().processor(Trivial).build().expect("chain"));
    let header = |key: &str, value: &str| envoy_core::HeaderValue {
        key: key.into(),
        raw_value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    let message = envoy::ProcessingRequest {
        request: Some(envoy::processing_request::Request::RequestHeaders(
            envoy::HttpHeaders {
                headers: Some(envoy_core::HeaderMap {
                    headers: vec![
                        header(":method", "GET"),
                        header(":path", "/"),
                        header("x-request-id", "r-1"),
                    ],
                }),
                end_of_stream: true,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let answer = driver
        .send(message)
        .await
        .expect("handled")
        .expect("an answer");
    assert_eq!(answer.header("x-extra-request-id"), Some("r-1"));
    assert!(answer.mode_override.is_some_and(|m| m.response_headers));
    let theirs = envoy::ProcessingResponse::decode(&answer.encoded()[..]).expect("decodes");
    assert!(matches!(
        theirs.response,
        Some(EnvoyResponse::RequestHeaders(_))
    ));
}
