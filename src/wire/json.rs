//! ext_proc messages as proto3 JSON, the encoding of Envoy's `http_service`.
//!
//! Envoy POSTs each `ProcessingRequest` as JSON (`MessageUtil::getJsonStringFromMessage`:
//! proto field names such as `request_headers`, `raw_value` as base64) and parses the
//! answer as a JSON `ProcessingResponse`. Rather than keep a second, hand-written
//! schema in step with the protobuf one, this module transcodes through the compiled
//! descriptors of `proto/` (`prost-reflect`): JSON -> dynamic message -> protobuf bytes
//! -> the generated type the gRPC service uses, and back. The cost is one extra
//! protobuf encode and decode per message, small beside the JSON itself.

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};

use crate::proto::ext_proc::{ProcessingRequest, ProcessingResponse};

const REQUEST: &str = "envoy.service.ext_proc.v3.ProcessingRequest";
const RESPONSE: &str = "envoy.service.ext_proc.v3.ProcessingResponse";

/// Why a message could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The JSON text is not a valid message of the expected type (syntax, wrong type
    /// of a field, bad base64, unknown enum name...). The text says where.
    #[error("malformed {message} JSON: {source}")]
    Malformed {
        /// The protobuf message expected.
        message: &'static str,
        /// What serde_json or the proto3 JSON mapping objected to, with its position.
        source: serde_json::Error,
    },
    /// Transcoding between the dynamic and the generated message failed: the
    /// descriptors and the generated code disagree, a bug rather than bad input.
    #[error("cannot transcode {message}: {reason}")]
    Transcode {
        /// The protobuf message being converted.
        message: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Converts ext_proc messages to and from proto3 JSON. Built once per server (the
/// descriptors are parsed at construction), then shared.
#[derive(Debug, Clone)]
pub struct JsonCodec {
    request: MessageDescriptor,
    response: MessageDescriptor,
}

impl JsonCodec {
    /// Loads the descriptors compiled from `proto/`. Fails only if the build embedded
    /// a broken descriptor set.
    pub fn new() -> Result<Self, JsonError> {
        let transcode = |reason: String| JsonError::Transcode {
            message: "descriptor set",
            reason,
        };
        let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| transcode(e.to_string()))?;
        let find = |name: &str| {
            pool.get_message_by_name(name)
                .ok_or_else(|| transcode(format!("{name} is not in the descriptor set")))
        };
        Ok(Self {
            request: find(REQUEST)?,
            response: find(RESPONSE)?,
        })
    }

    /// Parses a JSON `ProcessingRequest` as Envoy sends it. Field names may be the
    /// proto names (`request_headers`, Envoy's choice) or their lowerCamelCase JSON
    /// names. Fields this gateway's proto does not know are ignored, as the binary
    /// protocol would, so a newer Envoy's additions do not break it.
    pub fn decode_request(&self, json: &[u8]) -> Result<ProcessingRequest, JsonError> {
        let bytes = self.json_to_protobuf(&self.request, json, "ProcessingRequest")?;
        ProcessingRequest::decode(bytes.as_slice()).map_err(|e| JsonError::Transcode {
            message: "ProcessingRequest",
            reason: e.to_string(),
        })
    }

    /// Writes a `ProcessingResponse` as the JSON body Envoy parses: proto field names,
    /// default values left out, enums by name, bytes as base64.
    pub fn encode_response(&self, response: &ProcessingResponse) -> Result<Vec<u8>, JsonError> {
        self.protobuf_to_json(
            &self.response,
            &response.encode_to_vec(),
            "ProcessingResponse",
        )
    }

    /// Writes a `ProcessingRequest` as Envoy would send it (for tests and for clients
    /// that play Envoy's side).
    pub fn encode_request(&self, request: &ProcessingRequest) -> Result<Vec<u8>, JsonError> {
        self.protobuf_to_json(&self.request, &request.encode_to_vec(), "ProcessingRequest")
    }

    /// Parses a JSON `ProcessingResponse` (for tests and for clients that play
    /// Envoy's side).
    pub fn decode_response(&self, json: &[u8]) -> Result<ProcessingResponse, JsonError> {
        let bytes = self.json_to_protobuf(&self.response, json, "ProcessingResponse")?;
        ProcessingResponse::decode(bytes.as_slice()).map_err(|e| JsonError::Transcode {
            message: "ProcessingResponse",
            reason: e.to_string(),
        })
    }

    fn json_to_protobuf(
        &self,
        desc: &MessageDescriptor,
        json: &[u8],
        message: &'static str,
    ) -> Result<Vec<u8>, JsonError> {
        let malformed = |source| JsonError::Malformed { message, source };
        let mut de = serde_json::Deserializer::from_slice(json);
        let options = DeserializeOptions::new().deny_unknown_fields(false);
        let dynamic = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &options)
            .map_err(malformed)?;
        // Nothing but whitespace may follow the message.
        de.end().map_err(malformed)?;
        Ok(dynamic.encode_to_vec())
    }

    fn protobuf_to_json(
        &self,
        desc: &MessageDescriptor,
        bytes: &[u8],
        message: &'static str,
    ) -> Result<Vec<u8>, JsonError> {
        let dynamic =
            DynamicMessage::decode(desc.clone(), bytes).map_err(|e| JsonError::Transcode {
                message,
                reason: e.to_string(),
            })?;
        let mut out = serde_json::Serializer::new(Vec::with_capacity(bytes.len() * 2 + 64));
        let options = SerializeOptions::new().use_proto_field_name(true);
        dynamic
            .serialize_with_options(&mut out, &options)
            .map_err(|e| JsonError::Transcode {
                message,
                reason: e.to_string(),
            })?;
        Ok(out.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::core::{
        header_value_option::HeaderAppendAction, HeaderMap, HeaderValue, HeaderValueOption,
    };
    use crate::proto::ext_proc::{
        common_response, processing_request, processing_response, CommonResponse, HeaderMutation,
        HeadersResponse, HttpHeaders, ImmediateResponse,
    };
    use crate::proto::http_status::{HttpStatus, StatusCode};
    use crate::proto::mode::processing_mode::{BodySendMode, HeaderSendMode};
    use crate::proto::mode::ProcessingMode;

    fn codec() -> JsonCodec {
        JsonCodec::new().expect("embedded descriptors")
    }

    /// A request as Envoy 1.40 sent it over `http_service` (captured on loopback).
    const ENVOY_REQUEST: &str = r#"{"request_headers":{"headers":{"headers":[
        {"key":":authority","raw_value":"bG9jYWxob3N0OjE5MDAw"},
        {"key":":path","raw_value":"L2hlbGxvP3g9MQ=="},
        {"key":":method","raw_value":"R0VU"},
        {"key":"x-request-id","raw_value":"Y2xpZW50LXJpZC0x"}]},"end_of_stream":true},
        "metadata_context":{},
        "attributes":{"envoy.filters.http.ext_proc":{"request.path":"/hello?x=1",
            "xds.route_name":"default","request.id":"client-rid-1"}},
        "protocol_config":{}}"#;

    #[test]
    fn decodes_envoys_request_headers_raw_values_and_attributes() {
        let req = codec().decode_request(ENVOY_REQUEST.as_bytes()).unwrap();
        let Some(processing_request::Request::RequestHeaders(h)) = &req.request else {
            panic!("not request headers: {req:?}");
        };
        assert!(h.end_of_stream);
        let headers = &h.headers.as_ref().unwrap().headers;
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.key.as_str(), h.raw_value.as_ref()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (":authority", &b"localhost:19000"[..]),
                (":path", b"/hello?x=1"),
                (":method", b"GET"),
                ("x-request-id", b"client-rid-1"),
            ]
        );
        assert!(headers.iter().all(|h| h.value.is_empty()));
        assert!(req.protocol_config.is_some());
        let attrs = crate::wire::decode(req).unwrap().attributes;
        assert_eq!(attrs["request.path"], "/hello?x=1");
        assert_eq!(attrs["xds.route_name"], "default");
        assert_eq!(attrs["request.id"], "client-rid-1");
    }

    #[test]
    fn accepts_json_names_and_ignores_unknown_fields() {
        let json = r#"{"responseHeaders":{"headers":{"headers":[{"key":":status","rawValue":"MjAw"}]}},
            "someFieldOfANewerEnvoy":{"x":1}}"#;
        let req = codec().decode_request(json.as_bytes()).unwrap();
        let Some(processing_request::Request::ResponseHeaders(h)) = &req.request else {
            panic!("not response headers: {req:?}");
        };
        assert_eq!(
            &h.headers.as_ref().unwrap().headers[0].raw_value[..],
            b"200"
        );
        assert!(!h.end_of_stream);
    }

    #[test]
    fn an_enum_name_of_a_newer_envoy_is_ignored_not_fatal() {
        // As with unknown fields: the proto3 JSON parser's ignore-unknown mode.
        let json = r#"{"protocol_config":{"request_body_mode":"SOMETHING_NEW"}}"#;
        let req = codec().decode_request(json.as_bytes()).unwrap();
        assert_eq!(req.protocol_config.unwrap().request_body_mode, 0);
    }

    #[test]
    fn request_round_trips() {
        let c = codec();
        let req = c.decode_request(ENVOY_REQUEST.as_bytes()).unwrap();
        let json = c.encode_request(&req).unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""raw_value":"R0VU""#), "{text}");
        assert_eq!(c.decode_request(&json).unwrap(), req);
    }

    #[test]
    fn malformed_input_is_an_error_naming_the_problem() {
        let c = codec();
        for (json, want) in [
            ("", "EOF"),
            ("{", "EOF"),
            ("[1,2]", "invalid type"),
            (
                r#"{"request_headers":{"end_of_stream":"yes"}}"#,
                "invalid type",
            ),
            (
                r#"{"request_headers":{"headers":{"headers":[{"key":"a","raw_value":"%%%"}]}}}"#,
                "",
            ),
            (r#"{"observability_mode":3}"#, "invalid type"),
            (r#"{"attributes":{"k":[1]}}"#, "invalid type"),
            (r#"{} trailing"#, "trailing"),
        ] {
            match c.decode_request(json.as_bytes()) {
                Err(e @ JsonError::Malformed { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.starts_with("malformed ProcessingRequest JSON"),
                        "{text}"
                    );
                    assert!(text.contains(want), "{json}: {text}");
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn encodes_a_header_mutation_with_mode_override() {
        let c = codec();
        let response = ProcessingResponse {
            response: Some(processing_response::Response::RequestHeaders(
                HeadersResponse {
                    response: Some(CommonResponse {
                        status: common_response::ResponseStatus::Continue as i32,
                        header_mutation: Some(HeaderMutation {
                            set_headers: vec![HeaderValueOption {
                                header: Some(HeaderValue {
                                    key: "x-extra-request-id".into(),
                                    value: String::new(),
                                    raw_value: "rid-1".into(),
                                }),
                                append: None,
                                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                                keep_empty_value: true,
                            }],
                            remove_headers: vec!["decoded-sub".into()],
                        }),
                        body_mutation: None,
                        trailers: None,
                        clear_route_cache: true,
                    }),
                },
            )),
            mode_override: Some(ProcessingMode {
                request_header_mode: HeaderSendMode::Send as i32,
                response_header_mode: HeaderSendMode::Skip as i32,
                request_body_mode: BodySendMode::None as i32,
                response_body_mode: BodySendMode::None as i32,
                request_trailer_mode: HeaderSendMode::Skip as i32,
                response_trailer_mode: HeaderSendMode::Skip as i32,
            }),
            ..Default::default()
        };
        let json = c.encode_response(&response).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let set = &v["request_headers"]["response"]["header_mutation"]["set_headers"][0];
        assert_eq!(set["header"]["key"], "x-extra-request-id");
        // base64 of "rid-1", and no `value` beside it.
        assert_eq!(set["header"]["raw_value"], "cmlkLTE=");
        assert!(set["header"].get("value").is_none());
        assert_eq!(set["append_action"], "OVERWRITE_IF_EXISTS_OR_ADD");
        assert_eq!(set["keep_empty_value"], true);
        assert_eq!(
            v["request_headers"]["response"]["header_mutation"]["remove_headers"][0],
            "decoded-sub"
        );
        assert_eq!(v["request_headers"]["response"]["clear_route_cache"], true);
        // CONTINUE is the default status: left out, as Envoy's own encoder would.
        assert!(v["request_headers"]["response"].get("status").is_none());
        assert_eq!(v["mode_override"]["request_header_mode"], "SEND");
        assert_eq!(v["mode_override"]["response_header_mode"], "SKIP");
        assert_eq!(c.decode_response(&json).unwrap(), response);
    }

    #[test]
    fn encodes_an_immediate_response() {
        let c = codec();
        let response = ProcessingResponse {
            response: Some(processing_response::Response::ImmediateResponse(
                ImmediateResponse {
                    status: Some(HttpStatus {
                        code: StatusCode::Unauthorized as i32,
                    }),
                    headers: Some(HeaderMutation {
                        set_headers: vec![HeaderValueOption {
                            header: Some(HeaderValue {
                                key: "www-authenticate".into(),
                                value: String::new(),
                                raw_value: "Bearer".into(),
                            }),
                            append: None,
                            append_action: HeaderAppendAction::AppendIfExistsOrAdd as i32,
                            keep_empty_value: false,
                        }],
                        remove_headers: vec![],
                    }),
                    body: br#"{"error":"missing token"}"#.to_vec().into(),
                    grpc_status: None,
                    details: "jwt_auth".into(),
                },
            )),
            ..Default::default()
        };
        let json = c.encode_response(&response).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let ir = &v["immediate_response"];
        assert_eq!(ir["status"]["code"], "Unauthorized");
        assert_eq!(
            ir["headers"]["set_headers"][0]["header"]["raw_value"],
            "QmVhcmVy"
        );
        // APPEND_IF_EXISTS_OR_ADD is the enum's zero value: left out.
        assert!(ir["headers"]["set_headers"][0]
            .get("append_action")
            .is_none());
        assert_eq!(ir["body"], "eyJlcnJvciI6Im1pc3NpbmcgdG9rZW4ifQ==");
        assert_eq!(ir["details"], "jwt_auth");
        assert_eq!(c.decode_response(&json).unwrap(), response);
    }

    #[test]
    fn request_built_in_code_decodes_to_itself() {
        let c = codec();
        let req = ProcessingRequest {
            request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: vec![HeaderValue {
                        key: "x-bin".into(),
                        value: String::new(),
                        raw_value: vec![0u8, 0xff, b'\n'].into(),
                    }],
                }),
                end_of_stream: false,
                ..Default::default()
            })),
            observability_mode: true,
            ..Default::default()
        };
        let json = c.encode_request(&req).unwrap();
        assert_eq!(c.decode_request(&json).unwrap(), req);
    }
}
