//! What a processor sees and what it answers, free of any protobuf type.
//!
//! Envoy splits an HTTP exchange into up to six phases. Processors receive them as
//! [`Phase`] events and record their changes in a [`Mutations`] builder, or stop the
//! exchange with an [`ImmediateResponse`]. The wire module is the only place that turns
//! these into ext_proc messages.

use bytes::Bytes;

/// One of the six points at which Envoy consults an ext_proc server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PhaseKind {
    /// Request headers, before Envoy picks the upstream.
    RequestHeaders,
    /// A request body chunk (or the whole body when buffered).
    RequestBody,
    /// Request trailers (HTTP/2 or when the client sent them).
    RequestTrailers,
    /// Response headers from the upstream (or a local reply).
    ResponseHeaders,
    /// A response body chunk (or the whole body when buffered).
    ResponseBody,
    /// Response trailers.
    ResponseTrailers,
}

impl PhaseKind {
    /// All phases in the order Envoy sends them.
    pub const ALL: [PhaseKind; 6] = [
        PhaseKind::RequestHeaders,
        PhaseKind::RequestBody,
        PhaseKind::RequestTrailers,
        PhaseKind::ResponseHeaders,
        PhaseKind::ResponseBody,
        PhaseKind::ResponseTrailers,
    ];

    /// Stable snake_case name, used in logs, metrics labels and config.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::RequestHeaders => "request_headers",
            PhaseKind::RequestBody => "request_body",
            PhaseKind::RequestTrailers => "request_trailers",
            PhaseKind::ResponseHeaders => "response_headers",
            PhaseKind::ResponseBody => "response_body",
            PhaseKind::ResponseTrailers => "response_trailers",
        }
    }

    /// True for the three phases that travel towards the upstream.
    pub fn is_request(self) -> bool {
        matches!(
            self,
            PhaseKind::RequestHeaders | PhaseKind::RequestBody | PhaseKind::RequestTrailers
        )
    }
}

impl std::fmt::Display for PhaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ordered header list as Envoy sends it. Names are lower case; values are raw bytes
/// because HTTP allows non-UTF-8 values and copying them into `String`s would cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Bytes)>,
}

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry at the end (a repeated name keeps both values, as on the wire).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        self.entries.push((name.into(), value.into()));
    }

    /// The first value of `name` (compared case-insensitively).
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of `name` when it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// All entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Removes every entry of `name` (case-insensitive).
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Applies one header write as Envoy would.
    fn write(&mut self, w: &HeaderWrite) {
        match w.action {
            HeaderAction::Set => {
                self.remove(&w.name);
                self.push(w.name.clone(), w.value.clone());
            }
            HeaderAction::Append => self.push(w.name.clone(), w.value.clone()),
            HeaderAction::AddIfAbsent => {
                if self.get(&w.name).is_none() {
                    self.push(w.name.clone(), w.value.clone());
                }
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<N: Into<String>, V: Into<Bytes>> FromIterator<(N, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        Self {
            entries: iter
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }
}

/// Request or response headers, and whether a body follows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadersPhase {
    /// The headers, pseudo headers (`:method`, `:path`, `:status`, ...) included.
    pub headers: Headers,
    /// True when no body or trailers follow.
    pub end_of_stream: bool,
}

/// What part of a body one body message holds, as far as the gateway knows from the
/// body mode Envoy really uses (its `protocol_config`, and what has arrived so far).
///
/// A processor that needs the whole body must not present a result computed from a
/// [`BodyKind::Prefix`] as if it covered the body: see [`crate::processor::BodyReceipt`]
/// for what the gateway knows once the body is over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// The whole body in one message (BUFFERED, or BUFFERED_PARTIAL when the body fit
    /// Envoy's buffer). The request headers are held until it is answered.
    #[default]
    Whole,
    /// One chunk of a STREAMED body; the last one has `end_of_stream` (or trailers end
    /// the body). The headers are already on their way.
    Chunk,
    /// The first bytes of a body larger than Envoy's buffer (BUFFERED_PARTIAL): nothing
    /// more of this body will reach the gateway.
    Prefix,
    /// One chunk of a FULL_DUPLEX_STREAMED body: what the answer carries is what Envoy
    /// forwards.
    Duplex,
}

impl BodyKind {
    /// Stable snake_case name for logs and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyKind::Whole => "whole",
            BodyKind::Chunk => "chunk",
            BodyKind::Prefix => "prefix",
            BodyKind::Duplex => "duplex",
        }
    }
}

/// One body message: a chunk when streamed, the whole body when buffered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyPhase {
    /// The bytes of this chunk.
    pub chunk: Bytes,
    /// True on the last chunk.
    pub end_of_stream: bool,
    /// What part of the body this message holds.
    pub kind: BodyKind,
}

/// One event of the HTTP exchange, as a processor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// See [`PhaseKind::RequestHeaders`].
    RequestHeaders(HeadersPhase),
    /// See [`PhaseKind::RequestBody`].
    RequestBody(BodyPhase),
    /// See [`PhaseKind::RequestTrailers`].
    RequestTrailers(Headers),
    /// See [`PhaseKind::ResponseHeaders`].
    ResponseHeaders(HeadersPhase),
    /// See [`PhaseKind::ResponseBody`].
    ResponseBody(BodyPhase),
    /// See [`PhaseKind::ResponseTrailers`].
    ResponseTrailers(Headers),
}

impl Phase {
    /// Which of the six phases this is.
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::RequestHeaders(_) => PhaseKind::RequestHeaders,
            Phase::RequestBody(_) => PhaseKind::RequestBody,
            Phase::RequestTrailers(_) => PhaseKind::RequestTrailers,
            Phase::ResponseHeaders(_) => PhaseKind::ResponseHeaders,
            Phase::ResponseBody(_) => PhaseKind::ResponseBody,
            Phase::ResponseTrailers(_) => PhaseKind::ResponseTrailers,
        }
    }
}

/// How a header write combines with a header already present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderAction {
    /// Replace any existing value, or add.
    Set,
    /// Add another value alongside existing ones.
    Append,
    /// Add only when the header is absent.
    AddIfAbsent,
}

/// A header write recorded by a processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderWrite {
    /// Lower-case header name.
    pub name: String,
    /// Raw value.
    pub value: Bytes,
    /// How it combines with an existing header.
    pub action: HeaderAction,
}

/// A change to the body of the current message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyChange {
    /// Replace the body (or this chunk) with these bytes.
    Replace(Bytes),
    /// Send an empty body (or chunk).
    Clear,
}

/// The changes the chain makes in one phase, merged in chain order.
///
/// Merging rules (what an operator expects from several filters in a row): a later
/// `set` of a header replaces earlier writes of it, a removal cancels earlier writes and
/// removes the original, appends accumulate, and nothing is sent twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mutations {
    writes: Vec<HeaderWrite>,
    removes: Vec<String>,
    body: Option<BodyChange>,
    clear_route_cache: bool,
    metadata: Vec<MetadataWrite>,
}

/// One dynamic metadata entry a processor hands to Envoy (`dynamic_metadata` of the
/// answer), e.g. verified claims for an RBAC rule or an access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataWrite {
    /// The metadata namespace, e.g. `envoy.filters.http.jwt_authn`. Envoy keeps only
    /// namespaces listed in the filter's `metadata_options.receiving_namespaces`.
    pub namespace: String,
    /// The key inside the namespace.
    pub key: String,
    /// Any JSON value (objects become nested structs).
    pub value: serde_json::Value,
}

impl Mutations {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces `name` (or adds it). A later `set` of the same name wins.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        let name = lower(name.into());
        self.writes.retain(|w| w.name != name);
        self.writes.push(HeaderWrite {
            name,
            value: value.into(),
            action: HeaderAction::Set,
        });
    }

    /// Adds another value of `name`, keeping existing ones.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        let value = value.into();
        let name = lower(name.into());
        if self
            .writes
            .iter()
            .any(|w| w.name == name && w.value == value && w.action == HeaderAction::Append)
        {
            return;
        }
        self.writes.push(HeaderWrite {
            name,
            value,
            action: HeaderAction::Append,
        });
    }

    /// Adds `name` only if neither the message nor an earlier processor has it.
    pub fn add_if_absent(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        let name = lower(name.into());
        if self.writes.iter().any(|w| w.name == name) {
            return;
        }
        self.writes.push(HeaderWrite {
            name,
            value: value.into(),
            action: HeaderAction::AddIfAbsent,
        });
    }

    /// Removes `name` from the message and cancels earlier writes of it.
    pub fn remove(&mut self, name: impl Into<String>) {
        let name = lower(name.into());
        self.writes.retain(|w| w.name != name);
        if !self.removes.contains(&name) {
            self.removes.push(name);
        }
    }

    /// Replaces the body of the current message.
    pub fn replace_body(&mut self, body: impl Into<Bytes>) {
        self.body = Some(BodyChange::Replace(body.into()));
    }

    /// Empties the body of the current message.
    pub fn clear_body(&mut self) {
        self.body = Some(BodyChange::Clear);
    }

    /// Emits dynamic metadata `namespace.key = value` with this phase's answer. A later
    /// write of the same namespace and key replaces an earlier one.
    pub fn set_metadata(
        &mut self,
        namespace: impl Into<String>,
        key: impl Into<String>,
        value: serde_json::Value,
    ) {
        let (namespace, key) = (namespace.into(), key.into());
        self.metadata
            .retain(|m| m.namespace != namespace || m.key != key);
        self.metadata.push(MetadataWrite {
            namespace,
            key,
            value,
        });
    }

    /// Moves out everything but the body change: header writes and removals, route
    /// cache clearing and metadata (what a held headers' answer carries).
    pub fn take_header_changes(&mut self) -> Mutations {
        Mutations {
            writes: std::mem::take(&mut self.writes),
            removes: std::mem::take(&mut self.removes),
            body: None,
            clear_route_cache: std::mem::take(&mut self.clear_route_cache),
            metadata: std::mem::take(&mut self.metadata),
        }
    }

    /// Dynamic metadata to emit, in write order.
    pub fn metadata(&self) -> &[MetadataWrite] {
        &self.metadata
    }

    /// Asks Envoy to re-select the route (needed when a header written for routing
    /// changed; Envoy ignores it on the response path).
    pub fn clear_route_cache(&mut self) {
        self.clear_route_cache = true;
    }

    /// Header writes in the order they will be applied.
    pub fn writes(&self) -> &[HeaderWrite] {
        &self.writes
    }

    /// Header names to remove.
    pub fn removes(&self) -> &[String] {
        &self.removes
    }

    /// The body change, if any.
    pub fn body(&self) -> Option<&BodyChange> {
        self.body.as_ref()
    }

    /// Whether a route re-selection was asked for.
    pub fn route_cache_cleared(&self) -> bool {
        self.clear_route_cache
    }

    /// The value this phase will set for `name`, if a processor wrote it.
    pub fn written(&self, name: &str) -> Option<&Bytes> {
        self.writes
            .iter()
            .rev()
            .find(|w| w.name.eq_ignore_ascii_case(name))
            .map(|w| &w.value)
    }

    /// Folds the changes of a later processor into these, as if it had written them
    /// here: its removals first (they cancel earlier writes), then its writes.
    pub fn merge(&mut self, later: Mutations) {
        for name in later.removes {
            self.remove(name);
        }
        for w in later.writes {
            match w.action {
                HeaderAction::Set => self.set(w.name, w.value),
                HeaderAction::Append => self.append(w.name, w.value),
                HeaderAction::AddIfAbsent => self.add_if_absent(w.name, w.value),
            }
        }
        if later.body.is_some() {
            self.body = later.body;
        }
        for m in later.metadata {
            self.set_metadata(m.namespace, m.key, m.value);
        }
        self.clear_route_cache |= later.clear_route_cache;
    }

    /// Applies these changes to the event itself, so the next processor of the chain
    /// sees the message as the next Envoy filter would.
    pub fn apply_to(&self, phase: &mut Phase) {
        let headers = match phase {
            Phase::RequestHeaders(h) | Phase::ResponseHeaders(h) => Some(&mut h.headers),
            Phase::RequestTrailers(t) | Phase::ResponseTrailers(t) => Some(t),
            Phase::RequestBody(b) | Phase::ResponseBody(b) => {
                match &self.body {
                    Some(BodyChange::Replace(new)) => b.chunk = new.clone(),
                    Some(BodyChange::Clear) => b.chunk = Bytes::new(),
                    None => {}
                }
                None
            }
        };
        if let Some(headers) = headers {
            self.apply_to_headers(headers);
        }
    }

    /// Applies the header changes to a header list.
    pub fn apply_to_headers(&self, headers: &mut Headers) {
        for name in &self.removes {
            headers.remove(name);
        }
        for w in &self.writes {
            headers.write(w);
        }
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.removes.is_empty()
            && self.body.is_none()
            && !self.clear_route_cache
            && self.metadata.is_empty()
    }
}

fn lower(mut name: String) -> String {
    name.make_ascii_lowercase();
    name
}

/// A reply Envoy sends to the client in place of the upstream's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImmediateResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, Bytes)>,
    /// Response body.
    pub body: Bytes,
    /// Shown in Envoy's access log as the response code details.
    pub details: String,
    /// For gRPC clients: the `grpc-status` Envoy puts on the local reply.
    pub grpc_status: Option<u32>,
}

impl ImmediateResponse {
    /// A reply with the given status and no headers or body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            details: String::new(),
            grpc_status: None,
        }
    }

    /// Sets the gRPC status of the reply (e.g. 16 UNAUTHENTICATED), so a gRPC client
    /// sees a gRPC error rather than a bare HTTP status.
    pub fn grpc_status(mut self, code: u32) -> Self {
        self.grpc_status = Some(code);
        self
    }

    /// A reply whose body is the JSON object `{"error": reason}` plus the given
    /// status; the shape every built-in processor uses for its refusals.
    pub fn json_error(status: u16, reason: &str) -> Self {
        let body = serde_json::json!({ "error": reason }).to_string();
        Self::new(status)
            .header("content-type", "application/json")
            .body(body)
            .details(reason)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((lower(name.into()), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the details Envoy logs; spaces become underscores as Envoy requires.
    pub fn details(mut self, details: &str) -> Self {
        self.details = details
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        self
    }
}

/// What a processor decides for one phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Let the exchange go on (with whatever was written to [`Mutations`]).
    Continue,
    /// Answer the client now; the chain stops and the upstream is not called (or its
    /// response is replaced).
    Respond(ImmediateResponse),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_set_wins_and_nothing_is_duplicated() {
        let mut m = Mutations::new();
        m.set("X-A", "1");
        m.append("x-b", "1");
        m.set("x-a", "2");
        m.append("x-b", "1");
        m.append("x-b", "2");
        let got: Vec<_> = m
            .writes()
            .iter()
            .map(|w| (w.name.as_str(), w.value.as_ref()))
            .collect();
        assert_eq!(
            got,
            vec![("x-b", &b"1"[..]), ("x-a", &b"2"[..]), ("x-b", &b"2"[..])]
        );
    }

    #[test]
    fn remove_cancels_earlier_writes_and_set_after_remove_survives() {
        let mut m = Mutations::new();
        m.set("x-a", "1");
        m.remove("X-A");
        assert!(m.writes().is_empty());
        assert_eq!(m.removes(), ["x-a".to_string()]);
        m.set("x-a", "3");
        assert_eq!(m.written("x-a").map(|v| v.as_ref()), Some(&b"3"[..]));
        assert_eq!(m.removes().len(), 1);
    }

    #[test]
    fn merge_and_apply_match_sequential_filters() {
        let mut phase = Phase::RequestHeaders(HeadersPhase {
            headers: [("x-a", "orig"), ("x-b", "1"), ("x-c", "keep")]
                .into_iter()
                .collect(),
            end_of_stream: true,
        });
        let mut total = Mutations::new();
        let mut first = Mutations::new();
        first.set("x-a", "first");
        first.append("x-b", "2");
        first.apply_to(&mut phase);
        total.merge(first);
        let mut second = Mutations::new();
        second.remove("x-a");
        second.add_if_absent("x-c", "ignored");
        second.add_if_absent("x-d", "new");
        second.apply_to(&mut phase);
        total.merge(second);
        let Phase::RequestHeaders(h) = &phase else {
            unreachable!()
        };
        assert_eq!(h.headers.get("x-a"), None);
        assert_eq!(h.headers.get_all("x-b").count(), 2);
        assert_eq!(h.headers.get_str("x-c"), Some("keep"));
        assert_eq!(h.headers.get_str("x-d"), Some("new"));
        assert_eq!(total.removes(), ["x-a".to_string()]);
        assert!(total.written("x-a").is_none());
        assert_eq!(total.written("x-b").map(|v| v.as_ref()), Some(&b"2"[..]));
    }

    #[test]
    fn headers_lookup_is_case_insensitive() {
        let h: Headers = [("x-a", "1"), ("x-a", "2")].into_iter().collect();
        assert_eq!(h.get_str("X-A"), Some("1"));
        assert_eq!(h.get_all("x-a").count(), 2);
    }

    #[test]
    fn details_have_no_spaces() {
        let r = ImmediateResponse::json_error(401, "token expired");
        assert_eq!(r.details, "token_expired");
        assert_eq!(&r.body[..], br#"{"error":"token expired"}"#);
    }
}
