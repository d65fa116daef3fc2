//! [`Outbound`] -> `ProcessingResponse`: the one response kind each message expects.

use bytes::Bytes;

use super::{BodyAnswer, Outbound};
use crate::modes::BodyMode;
use crate::phase::{BodyChange, HeaderAction, ImmediateResponse, Mutations, PhaseKind};
use crate::proto::core::{header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption};
use crate::proto::ext_proc::{
    body_mutation, common_response, processing_response, BodyMutation, BodyResponse,
    CommonResponse, HeaderMutation, HeadersResponse, ProcessingResponse, StreamedBodyResponse,
    TrailersResponse,
};
use crate::proto::http_status::HttpStatus;

/// Encodes an answer as the response of the matching kind. The header changes are
/// moved into it, not copied: a large answer holds thousands of names, and a copy of
/// each would cost as much as the chain that wrote them.
pub fn encode(answer: Outbound) -> ProcessingResponse {
    use processing_response::Response;
    match answer {
        Outbound::Respond {
            response,
            mutations,
            mode_override,
        } => ProcessingResponse {
            dynamic_metadata: dynamic_metadata(&mutations),
            response: Some(Response::ImmediateResponse(immediate_response(&response))),
            mode_override: mode_override.map(super::modes::to_proto),
            ..Default::default()
        },
        Outbound::Continue {
            kind,
            mutations: m,
            body,
            mode_override,
        } => {
            let dynamic_metadata = dynamic_metadata(&m);
            let response = match kind {
                PhaseKind::RequestHeaders => Response::RequestHeaders(headers_response(m)),
                PhaseKind::ResponseHeaders => Response::ResponseHeaders(headers_response(m)),
                PhaseKind::RequestBody => Response::RequestBody(body_response(m, body)),
                PhaseKind::ResponseBody => Response::ResponseBody(body_response(m, body)),
                PhaseKind::RequestTrailers => Response::RequestTrailers(trailers_response(m)),
                PhaseKind::ResponseTrailers => Response::ResponseTrailers(trailers_response(m)),
            };
            ProcessingResponse {
                response: Some(response),
                mode_override: mode_override.map(super::modes::to_proto),
                dynamic_metadata,
                ..Default::default()
            }
        }
    }
}

/// A response carrying only `override_message_timeout` (Envoy ignores every other
/// field of such a response and keeps waiting for the real answer).
pub fn encode_timeout_override(by: std::time::Duration) -> ProcessingResponse {
    ProcessingResponse {
        override_message_timeout: Some(prost_types::Duration {
            seconds: i64::try_from(by.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(by.subsec_nanos()).unwrap_or(0),
        }),
        ..Default::default()
    }
}

/// Processors' metadata writes as Envoy's `dynamic_metadata`: one struct per namespace.
fn dynamic_metadata(m: &Mutations) -> Option<prost_types::Struct> {
    if m.metadata().is_empty() {
        return None;
    }
    let mut namespaces: std::collections::BTreeMap<String, prost_types::Struct> =
        std::collections::BTreeMap::new();
    for w in m.metadata() {
        namespaces
            .entry(w.namespace.clone())
            .or_default()
            .fields
            .insert(w.key.clone(), proto_value(&w.value));
    }
    Some(prost_types::Struct {
        fields: namespaces
            .into_iter()
            .map(|(ns, st)| {
                (
                    ns,
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StructValue(st)),
                    },
                )
            })
            .collect(),
    })
}

/// The JSON value as a protobuf `Value` (numbers become doubles, as in any Struct).
fn proto_value(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(proto_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), proto_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn headers_response(m: Mutations) -> HeadersResponse {
    HeadersResponse {
        response: Some(common(m, None)),
    }
}

fn body_response(m: Mutations, body: Option<BodyAnswer>) -> BodyResponse {
    let (mode, received, end_of_stream) = match body {
        Some(b) => (b.mode, b.received, b.end_of_stream),
        None => (BodyMode::None, Bytes::new(), false),
    };
    let body_mutation = if mode.answers_with_body() {
        // In full duplex (and GRPC) mode Envoy forwards only what the answer carries:
        // always send the chunk back (changed or not) with its end_of_stream.
        let chunk = match m.body() {
            Some(BodyChange::Replace(b)) => b.clone(),
            Some(BodyChange::Clear) => Bytes::new(),
            None => received,
        };
        Some(BodyMutation {
            mutation: Some(body_mutation::Mutation::StreamedResponse(
                StreamedBodyResponse {
                    body: chunk,
                    end_of_stream,
                    ..Default::default()
                },
            )),
        })
    } else {
        m.body().map(|change| BodyMutation {
            mutation: Some(match change {
                BodyChange::Replace(b) => body_mutation::Mutation::Body(b.clone()),
                BodyChange::Clear => body_mutation::Mutation::ClearBody(true),
            }),
        })
    };
    let content_length = match (mode == BodyMode::Buffered, m.body()) {
        (true, Some(BodyChange::Replace(b))) => Some(b.len()),
        (true, Some(BodyChange::Clear)) => Some(0),
        _ => None,
    };
    let mut response = common(m, content_length);
    response.body_mutation = body_mutation;
    BodyResponse {
        response: Some(response),
    }
}

fn trailers_response(m: Mutations) -> TrailersResponse {
    TrailersResponse {
        header_mutation: header_mutation(m, None),
    }
}

fn common(m: Mutations, content_length: Option<usize>) -> CommonResponse {
    CommonResponse {
        status: common_response::ResponseStatus::Continue as i32,
        clear_route_cache: m.route_cache_cleared(),
        header_mutation: header_mutation(m, content_length),
        body_mutation: None,
        trailers: None,
    }
}

/// The header writes and removals as Envoy's `HeaderMutation`, their names and values
/// moved in (not copied).
fn header_mutation(m: Mutations, content_length: Option<usize>) -> Option<HeaderMutation> {
    if m.writes().is_empty() && m.removes().is_empty() && content_length.is_none() {
        return None;
    }
    let (writes, remove_headers) = m.into_header_changes();
    let mut set_headers: Vec<HeaderValueOption> =
        Vec::with_capacity(writes.len() + usize::from(content_length.is_some()));
    set_headers.extend(
        writes
            .filter(|w| content_length.is_none() || w.name != "content-length")
            .map(|w| option(w.name, w.value, w.action)),
    );
    if let Some(len) = content_length {
        set_headers.push(option(
            "content-length".to_string(),
            Bytes::from(len.to_string()),
            HeaderAction::Set,
        ));
    }
    Some(HeaderMutation {
        set_headers,
        remove_headers,
    })
}

fn option(name: String, value: Bytes, action: HeaderAction) -> HeaderValueOption {
    let append_action = match action {
        HeaderAction::Set => HeaderAppendAction::OverwriteIfExistsOrAdd,
        HeaderAction::Append => HeaderAppendAction::AppendIfExistsOrAdd,
        HeaderAction::AddIfAbsent => HeaderAppendAction::AddIfAbsent,
    };
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name,
            // Only raw_value: Envoy rejects a mutation that sets both.
            value: String::new(),
            raw_value: value,
        }),
        append: None,
        append_action: append_action as i32,
        keep_empty_value: true,
    }
}

/// Encodes an immediate response.
fn immediate_response(r: &ImmediateResponse) -> crate::proto::ext_proc::ImmediateResponse {
    let headers = if r.headers().is_empty() {
        None
    } else {
        Some(HeaderMutation {
            set_headers: r
                .headers()
                .iter()
                .map(|(n, v)| option(n.clone(), v.clone(), HeaderAction::Append))
                .collect(),
            remove_headers: Vec::new(),
        })
    };
    crate::proto::ext_proc::ImmediateResponse {
        status: Some(HttpStatus {
            code: i32::from(r.status),
        }),
        headers,
        body: r.body.clone(),
        grpc_status: r
            .grpc_status
            .map(|status| crate::proto::ext_proc::GrpcStatus { status }),
        details: r.details.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_raw_value() {
        let mut m = Mutations::new();
        m.set("x-a", "1");
        let hm = header_mutation(m, None).unwrap();
        let h = hm.set_headers[0].header.as_ref().unwrap();
        assert_eq!(h.value, "");
        assert_eq!(&h.raw_value[..], b"1");
        assert_eq!(
            hm.set_headers[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
    }

    #[test]
    fn dynamic_metadata_is_one_struct_per_namespace() {
        let mut m = Mutations::new();
        m.set_metadata("ns.a", "payload", serde_json::json!({"sub": "u1", "n": 2}));
        m.set_metadata("ns.a", "other", serde_json::json!(true));
        m.set_metadata("ns.b", "k", serde_json::json!("v"));
        let st = dynamic_metadata(&m).unwrap();
        assert_eq!(st.fields.len(), 2);
        let Some(prost_types::value::Kind::StructValue(a)) = &st.fields["ns.a"].kind else {
            panic!("namespace is not a struct")
        };
        assert_eq!(a.fields.len(), 2);
        let Some(prost_types::value::Kind::StructValue(p)) = &a.fields["payload"].kind else {
            panic!("payload is not a struct")
        };
        assert_eq!(
            p.fields["sub"].kind,
            Some(prost_types::value::Kind::StringValue("u1".into()))
        );
        assert_eq!(
            p.fields["n"].kind,
            Some(prost_types::value::Kind::NumberValue(2.0))
        );
    }
}
