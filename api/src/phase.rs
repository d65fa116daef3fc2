//! What a processor sees and what it answers, free of any protobuf type.
//!
//! Envoy splits an HTTP exchange into up to six phases. Processors receive them as
//! [`Phase`] events and record their changes in a [`Mutations`] builder, or stop the
//! exchange with an [`ImmediateResponse`]. The wire module is the only place that turns
//! these into ext_proc messages.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;

use hashbrown::hash_table::{Entry, HashTable};

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
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of `name` when it is valid UTF-8.
    #[inline]
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

/// True for a header name the gateway may emit: a non-empty RFC 9110 token in lower
/// case (`a-z 0-9 ! # $ % & ' * + - . ^ _ ` | ~`). Pseudo headers (`:path`) are not
/// tokens and are never written. Envoy lower-cases names itself, so an upper-case
/// letter here would mean the name was never normalised.
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| NAME_BYTES[usize::from(b)])
}

/// The bytes of [`is_valid_header_name`], as a table (it runs on every write).
const NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let extra = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// True for a header value the gateway may emit: no control character but HTAB
/// (bytes below 0x20 other than 0x09, and 0x7f, are refused). Envoy rejects a
/// mutation carrying one, and the whole request then fails. Bytes of 0x80 and above
/// (UTF-8, obs-text) are allowed.
#[inline]
pub fn is_valid_header_value(value: &[u8]) -> bool {
    let ok = |b: u8| (b >= 0x20 && b != 0x7f) || b == b'\t';
    // Whole chunks without an early exit, which the compiler turns into vector code
    // (long values, such as a JWT or a context id, are common); the exit comes per
    // chunk.
    value
        .chunks(32)
        .all(|chunk| chunk.iter().fold(true, |all, &b| all & ok(b)))
}

/// A header write refused because Envoy (or an upstream) would reject what it emits.
/// Returned by the `try_*` methods of [`Mutations`] and [`ImmediateResponse`], so a
/// processor can refuse the request (`instructions` answers 400) or skip the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidHeader {
    /// The name is not a header name (see [`is_valid_header_name`]); holds the name.
    Name(String),
    /// The value of this header has a control character (see
    /// [`is_valid_header_value`]); holds the (valid) name.
    Value(String),
}

impl InvalidHeader {
    /// The header name the write was for, as given (lower-cased).
    pub fn name(&self) -> &str {
        match self {
            InvalidHeader::Name(n) | InvalidHeader::Value(n) => n,
        }
    }
}

/// A name as shown in an error: escaped, and cut to a readable length, since it may
/// come from a client (control characters, 60 KiB of it).
struct Shown<'a>(&'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX_CHARS: usize = 64;
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX_CHARS {
                return f.write_str("...");
            }
            write!(f, "{}", c.escape_debug())?;
        }
        Ok(())
    }
}

impl std::fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvalidHeader::Name(n) => write!(
                f,
                "`{}` is not a header name (RFC 9110 token characters only)",
                Shown(n)
            ),
            InvalidHeader::Value(n) => {
                write!(f, "value of `{}` contains a control character", Shown(n))
            }
        }
    }
}

impl std::error::Error for InvalidHeader {}

/// Lower-cases `name` and checks it (and `value`, when given) for emission, in one
/// pass over the name (a second only to lower-case one that has capitals).
#[inline]
fn checked(mut name: String, value: Option<&[u8]>) -> Result<String, InvalidHeader> {
    let mut capitals = false;
    let mut valid = !name.is_empty();
    for b in name.bytes() {
        if !NAME_BYTES[usize::from(b)] {
            capitals |= b.is_ascii_uppercase();
            valid &= b.is_ascii_uppercase();
        }
    }
    if capitals {
        name.make_ascii_lowercase();
    }
    if !valid {
        return Err(InvalidHeader::Name(name));
    }
    match value {
        Some(v) if !is_valid_header_value(v) => Err(InvalidHeader::Value(name)),
        _ => Ok(name),
    }
}

fn dropped(what: &str, e: &InvalidHeader) {
    tracing::debug!(error = %e, "{what}: invalid header write dropped");
}

/// A change to the body of the current message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyChange {
    /// Replace the body (or this chunk) with these bytes.
    Replace(Bytes),
    /// Send an empty body (or chunk).
    Clear,
}

/// Below this many writes (or removals) a phase's changes are searched by scanning,
/// which beats hashing for the few headers a typical chain writes; past it they are
/// indexed by name, so a phase costs linear time in its writes however many a client
/// asks for (a 60 KiB `instructions` header holds thousands).
const INDEX_FROM: usize = 16;

/// The changes the chain makes in one phase, merged in chain order.
///
/// Merging rules (what an operator expects from several filters in a row): a later
/// `set` of a header replaces earlier writes of it, a removal cancels earlier writes and
/// removes the original, appends accumulate, and nothing is sent twice. The order of
/// the writes that remain is the order they were made in.
///
/// Every write is checked here, so no processor can emit a header Envoy would reject
/// (which fails the request): names must be RFC 9110 tokens (they are lower-cased
/// first), values must have no control character but HTAB. `set`, `append`,
/// `add_if_absent` and `remove` drop an invalid write (logged at debug level); their
/// `try_*` twins return the [`InvalidHeader`] instead, for a processor that must act on
/// it. Each operation costs amortised constant time.
#[derive(Clone, Default)]
pub struct Mutations {
    /// Writes in order; `None` marks one cancelled by a later `set` or `remove`
    /// (kept as a hole so cancelling is O(1); holes are compacted away in bulk).
    slots: Vec<Option<HeaderWrite>>,
    /// Number of `Some` slots.
    live: usize,
    removes: Vec<String>,
    /// Built once the writes or removals outgrow [`INDEX_FROM`].
    index: Option<Box<NameIndex>>,
    body: Option<BodyChange>,
    clear_route_cache: bool,
    metadata: Vec<MetadataWrite>,
}

/// No slot.
const NONE: usize = usize::MAX;

/// Where each header name stands among a phase's changes.
///
/// The table holds no copy of the names (it would cost an allocation per header):
/// each entry finds its name in its first live write or in its removal, and is
/// hashed with a per-index random key (names come from clients, so the hash must
/// resist chosen collisions, as `std`'s does).
#[derive(Debug, Clone, Default)]
struct NameIndex {
    hasher: RandomState,
    names: HashTable<NameState>,
    /// For each slot, the slot of the previous live write of the same name (`NONE`
    /// for the first): cancelling a name walks its writes without a list per name.
    prev: Vec<usize>,
    /// Values of the live appends of a name (an equal append is sent once), for the
    /// names that have appends: kept out of the table so its entries stay small (a
    /// large phase has thousands, and a smaller table stays in cache).
    appended: Vec<HashSet<Bytes>>,
}

/// The key of a name in a [`NameIndex`]: SipHash, keyed per index, of the name's bytes
/// (one name per key, so `str`'s prefix-free terminator is not needed).
fn hash_name(hasher: &RandomState, name: &str) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(name.as_bytes());
    h.finish()
}

#[derive(Debug, Clone)]
struct NameState {
    /// First and last live write of this name (`NONE` when there is none). Only the
    /// first can be a `Set` or an `AddIfAbsent`: both come after every other write of
    /// their name has been cancelled, or not at all.
    first: usize,
    last: usize,
    /// Where the values of the live appends of this name are in
    /// [`NameIndex::appended`] (`NONE`: it never had an append).
    appended: usize,
    /// Where the name is listed in the removals (`NONE`: not removed).
    removed_at: usize,
}

impl Default for NameState {
    fn default() -> Self {
        Self {
            first: NONE,
            last: NONE,
            appended: NONE,
            removed_at: NONE,
        }
    }
}

/// The name an index entry stands for: every entry has a removal or a live write
/// once the operation that made it is over (an entry's name never changes).
fn name_of<'a>(
    state: &NameState,
    slots: &'a [Option<HeaderWrite>],
    removes: &'a [String],
) -> &'a str {
    match removes.get(state.removed_at) {
        Some(name) => name,
        None => slots
            .get(state.first)
            .and_then(Option::as_ref)
            .map_or("", |w| w.name.as_str()),
    }
}

/// The parts of an indexed [`Mutations`] one operation on `state`'s name touches.
struct Indexed<'a> {
    state: &'a mut NameState,
    prev: &'a mut Vec<usize>,
    appended: &'a mut Vec<HashSet<Bytes>>,
    slots: &'a mut Vec<Option<HeaderWrite>>,
    live: &'a mut usize,
    removes: &'a mut Vec<String>,
}

impl Indexed<'_> {
    /// Cancels every live write of the name.
    fn cancel(&mut self) {
        if self.state.last == NONE {
            return;
        }
        let mut at = self.state.last;
        while at != NONE {
            if self.slots.get_mut(at).and_then(Option::take).is_some() {
                *self.live -= 1;
            }
            at = self.prev.get(at).copied().unwrap_or(NONE);
        }
        self.state.first = NONE;
        self.state.last = NONE;
        // Emptied, not dropped: the name keeps its set (and its allocation).
        if let Some(set) = self.appended.get_mut(self.state.appended) {
            set.clear();
        }
    }

    /// True when a live append of the name has this value.
    fn appended(&self, value: &Bytes) -> bool {
        self.appended
            .get(self.state.appended)
            .is_some_and(|set| set.contains(value))
    }

    fn push(&mut self, w: HeaderWrite) {
        let at = self.slots.len();
        self.prev.push(self.state.last);
        if self.state.first == NONE {
            self.state.first = at;
        }
        self.state.last = at;
        if w.action == HeaderAction::Append {
            note_append(self.state, self.appended, &w.value);
        }
        self.slots.push(Some(w));
        *self.live += 1;
    }
}

/// Records a live append of `value` for the name of `state`.
fn note_append(state: &mut NameState, appended: &mut Vec<HashSet<Bytes>>, value: &Bytes) {
    if state.appended == NONE {
        state.appended = appended.len();
        appended.push(HashSet::default());
    }
    if let Some(set) = appended.get_mut(state.appended) {
        set.insert(value.clone());
    }
}

/// The header writes of a [`Mutations`], in the order they will be applied (a view
/// that skips cancelled writes without copying).
#[derive(Clone, Copy)]
pub struct Writes<'a> {
    slots: &'a [Option<HeaderWrite>],
    len: usize,
}

impl<'a> Writes<'a> {
    /// The writes in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a HeaderWrite> + 'a {
        self.slots.iter().flatten()
    }

    /// How many writes there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'a> IntoIterator for Writes<'a> {
    type Item = &'a HeaderWrite;
    type IntoIter = std::iter::Flatten<std::slice::Iter<'a, Option<HeaderWrite>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.slots.iter().flatten()
    }
}

/// The header writes of a [`Mutations`], moved out in order (see
/// [`Mutations::into_header_changes`]).
#[derive(Debug)]
pub struct IntoWrites {
    slots: std::vec::IntoIter<Option<HeaderWrite>>,
    len: usize,
}

impl Iterator for IntoWrites {
    type Item = HeaderWrite;

    #[inline]
    fn next(&mut self) -> Option<HeaderWrite> {
        // Holes (cancelled writes) are skipped.
        loop {
            if let Some(w) = self.slots.next()? {
                self.len -= 1;
                return Some(w);
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl ExactSizeIterator for IntoWrites {}

impl std::fmt::Debug for Writes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl std::fmt::Debug for Mutations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutations")
            .field("writes", &self.writes())
            .field("removes", &self.removes)
            .field("body", &self.body)
            .field("clear_route_cache", &self.clear_route_cache)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// Equal when they would send Envoy the same changes (cancelled writes and the index
/// are bookkeeping).
impl PartialEq for Mutations {
    fn eq(&self, other: &Self) -> bool {
        self.live == other.live
            && self.writes().iter().eq(other.writes().iter())
            && self.removes == other.removes
            && self.body == other.body
            && self.clear_route_cache == other.clear_route_cache
            && self.metadata == other.metadata
    }
}

impl Eq for Mutations {}

/// One dynamic metadata entry a processor hands to Envoy (`dynamic_metadata` of the
/// answer), e.g. verified claims for an RBAC rule or an access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataWrite {
    /// The metadata namespace, e.g. `envoy.filters.http.jwt_authn`. Envoy keeps only
    /// namespaces listed in the filter's `metadata_options.receiving_namespaces`.
    pub namespace: String,
    /// The key inside the namespace.
    pub key: String,
    /// Any JSON value (objects become nested structs); shared, so a value a
    /// processor keeps (e.g. a cached token's claims) is written without a copy.
    pub value: Arc<serde_json::Value>,
}

impl Mutations {
    /// No changes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces `name` (or adds it). A later `set` of the same name wins. An invalid
    /// name or value is dropped: see [`Mutations::try_set`].
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        if let Err(e) = self.try_set(name, value) {
            dropped("set", &e);
        }
    }

    /// Like [`Mutations::set`], and says why a write was refused (nothing is changed
    /// then).
    pub fn try_set(
        &mut self,
        name: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Result<(), InvalidHeader> {
        let value = value.into();
        let name = checked(name.into(), Some(&value))?;
        self.set_checked(name, value);
        Ok(())
    }

    /// Rewrites the request's `:path` (a pseudo header, so no processor can write it
    /// through [`Mutations::set`]): only the gateway's own path policy does, after
    /// routing on the same normalised path. A value with a control character is
    /// refused.
    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn set_request_path(&mut self, path: Bytes) -> Result<(), InvalidHeader> {
        if !is_valid_header_value(&path) {
            return Err(InvalidHeader::Value(":path".into()));
        }
        self.set_checked(":path".into(), path);
        Ok(())
    }

    /// Adds another value of `name`, keeping existing ones (the same value appended
    /// twice is sent once). An invalid name or value is dropped: see
    /// [`Mutations::try_append`].
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        if let Err(e) = self.try_append(name, value) {
            dropped("append", &e);
        }
    }

    /// Like [`Mutations::append`], and says why a write was refused.
    pub fn try_append(
        &mut self,
        name: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Result<(), InvalidHeader> {
        let value = value.into();
        let name = checked(name.into(), Some(&value))?;
        self.append_checked(name, value);
        Ok(())
    }

    /// Adds `name` only if neither the message nor an earlier processor has it. An
    /// invalid name or value is dropped: see [`Mutations::try_add_if_absent`].
    pub fn add_if_absent(&mut self, name: impl Into<String>, value: impl Into<Bytes>) {
        if let Err(e) = self.try_add_if_absent(name, value) {
            dropped("add_if_absent", &e);
        }
    }

    /// Like [`Mutations::add_if_absent`], and says why a write was refused.
    pub fn try_add_if_absent(
        &mut self,
        name: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Result<(), InvalidHeader> {
        let value = value.into();
        let name = checked(name.into(), Some(&value))?;
        self.add_if_absent_checked(name, value);
        Ok(())
    }

    /// Removes `name` from the message and cancels earlier writes of it. A name that
    /// is not a header name is dropped (no such header can be on the message): see
    /// [`Mutations::try_remove`].
    pub fn remove(&mut self, name: impl Into<String>) {
        if let Err(e) = self.try_remove(name) {
            dropped("remove", &e);
        }
    }

    /// Like [`Mutations::remove`], and says why a removal was refused.
    pub fn try_remove(&mut self, name: impl Into<String>) -> Result<(), InvalidHeader> {
        let name = checked(name.into(), None)?;
        self.remove_checked(name);
        Ok(())
    }

    /// The indexed parts for `name` (its state created when new), or `None` while
    /// the changes are few enough to scan.
    fn indexed(&mut self, name: &str) -> Option<Indexed<'_>> {
        let ix = self.index.as_deref_mut()?;
        let (slots, removes, hasher) = (&self.slots, &self.removes, &ix.hasher);
        let entry = ix.names.entry(
            hash_name(hasher, name),
            |s| name_of(s, slots, removes) == name,
            |s| hash_name(hasher, name_of(s, slots, removes)),
        );
        // A new entry gets its name (a write or a removal) before this operation ends.
        let state = match entry {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(NameState::default()).into_mut(),
        };
        Some(Indexed {
            state,
            prev: &mut ix.prev,
            appended: &mut ix.appended,
            slots: &mut self.slots,
            live: &mut self.live,
            removes: &mut self.removes,
        })
    }

    fn set_checked(&mut self, name: String, value: Bytes) {
        let w = HeaderWrite {
            name,
            value,
            action: HeaderAction::Set,
        };
        if let Some(mut ix) = self.indexed(&w.name) {
            ix.cancel();
            ix.push(w);
            self.compact();
        } else {
            self.cancel_scanned(&w.name);
            self.push_scanned(w);
        }
    }

    fn append_checked(&mut self, name: String, value: Bytes) {
        let w = HeaderWrite {
            name,
            value,
            action: HeaderAction::Append,
        };
        if let Some(mut ix) = self.indexed(&w.name) {
            if !ix.appended(&w.value) {
                ix.push(w);
            }
        } else if !self
            .writes()
            .iter()
            .any(|o| o.name == w.name && o.value == w.value && o.action == HeaderAction::Append)
        {
            self.push_scanned(w);
        }
    }

    fn add_if_absent_checked(&mut self, name: String, value: Bytes) {
        let w = HeaderWrite {
            name,
            value,
            action: HeaderAction::AddIfAbsent,
        };
        if let Some(mut ix) = self.indexed(&w.name) {
            if ix.state.last == NONE {
                ix.push(w);
            }
        } else if !self.writes().iter().any(|o| o.name == w.name) {
            self.push_scanned(w);
        }
    }

    fn remove_checked(&mut self, name: String) {
        if let Some(mut ix) = self.indexed(&name) {
            ix.cancel();
            if ix.state.removed_at == NONE {
                ix.state.removed_at = ix.removes.len();
                ix.removes.push(name);
            }
            self.compact();
        } else {
            self.cancel_scanned(&name);
            if !self.removes.contains(&name) {
                self.removes.push(name);
                self.grow_index();
            }
        }
    }

    /// Cancels every write of `name`, keeping the (few) writes dense.
    fn cancel_scanned(&mut self, name: &str) {
        let before = self.slots.len();
        self.slots
            .retain(|s| s.as_ref().is_some_and(|w| w.name != name));
        self.live -= before - self.slots.len();
    }

    fn push_scanned(&mut self, w: HeaderWrite) {
        self.slots.push(Some(w));
        self.live += 1;
        self.grow_index();
    }

    /// Switches to the indexed form once there are too many changes to scan.
    fn grow_index(&mut self) {
        if self.index.is_none()
            && (self.slots.len() > INDEX_FROM || self.removes.len() > INDEX_FROM)
        {
            self.build_index();
        }
    }

    /// Drops the holes left by cancelled writes once they outnumber the writes
    /// (amortised over the cancels that made them).
    fn compact(&mut self) {
        if self.slots.len() > 2 * self.live + INDEX_FROM {
            self.build_index();
        }
    }

    /// (Re)builds the index from the writes and removals, dropping holes.
    fn build_index(&mut self) {
        self.slots.retain(Option::is_some);
        let mut index = NameIndex {
            hasher: RandomState::new(),
            names: HashTable::with_capacity(self.slots.len() + self.removes.len()),
            prev: Vec::with_capacity(self.slots.len()),
            appended: Vec::new(),
        };
        let (slots, removes) = (&self.slots, &self.removes);
        let NameIndex {
            hasher,
            names,
            prev,
            appended,
        } = &mut index;
        let rehash = |s: &NameState| hash_name(hasher, name_of(s, slots, removes));
        for (at, w) in slots.iter().flatten().enumerate() {
            let same = |s: &NameState| name_of(s, slots, removes) == w.name;
            let state = match names.entry(hash_name(hasher, &w.name), same, rehash) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e
                    .insert(NameState {
                        first: at,
                        ..NameState::default()
                    })
                    .into_mut(),
            };
            prev.push(state.last);
            state.last = at;
            if w.action == HeaderAction::Append {
                note_append(state, appended, &w.value);
            }
        }
        for (i, name) in removes.iter().enumerate() {
            let same = |s: &NameState| name_of(s, slots, removes) == name;
            match names.entry(hash_name(hasher, name), same, rehash) {
                Entry::Occupied(e) => e.into_mut().removed_at = i,
                Entry::Vacant(e) => {
                    e.insert(NameState {
                        removed_at: i,
                        ..NameState::default()
                    });
                }
            }
        }
        self.index = Some(Box::new(index));
    }

    /// Makes room for `additional` more header changes: a processor that knows how
    /// many it will make (`instructions`) saves the regrowth of the index.
    pub fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
        if self.index.is_none() && self.slots.len() + additional > INDEX_FROM {
            self.build_index();
        }
        let (slots, removes) = (&self.slots, &self.removes);
        if let Some(ix) = self.index.as_deref_mut() {
            let hasher = &ix.hasher;
            ix.names.reserve(additional, |s| {
                hash_name(hasher, name_of(s, slots, removes))
            });
            ix.prev.reserve(additional);
        }
    }

    /// Makes room in the list of removals for `additional` more (the index is sized
    /// by [`Mutations::reserve`], which counts removals as changes): saves the
    /// regrowth, a copy of the list each time, of a long list.
    pub fn reserve_removals(&mut self, additional: usize) {
        self.removes.reserve(additional);
    }

    /// The index entry of a header name as it may be spelled in a header list.
    fn state_of(&self, name: &str) -> Option<&NameState> {
        let ix = self.index.as_ref()?;
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        let (slots, removes) = (&self.slots, &self.removes);
        ix.names.find(hash_name(&ix.hasher, name), |s| {
            name_of(s, slots, removes) == name
        })
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
        self.set_metadata_shared(namespace, key, Arc::new(value));
    }

    /// Like [`Mutations::set_metadata`], for a value the processor keeps across
    /// requests: written without copying it.
    pub fn set_metadata_shared(
        &mut self,
        namespace: impl Into<String>,
        key: impl Into<String>,
        value: Arc<serde_json::Value>,
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
            slots: std::mem::take(&mut self.slots),
            live: std::mem::take(&mut self.live),
            removes: std::mem::take(&mut self.removes),
            index: self.index.take(),
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
    pub fn writes(&self) -> Writes<'_> {
        Writes {
            slots: &self.slots,
            len: self.live,
        }
    }

    /// Moves the header changes out: the writes in order and the removals (the wire
    /// encoding hands them to Envoy as they are, without a copy of each name).
    pub fn into_header_changes(self) -> (IntoWrites, Vec<String>) {
        let writes = IntoWrites {
            slots: self.slots.into_iter(),
            len: self.live,
        };
        (writes, self.removes)
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
        match &self.index {
            Some(_) => {
                let at = self.state_of(name)?.last;
                self.slots.get(at)?.as_ref().map(|w| &w.value)
            }
            None => self
                .slots
                .iter()
                .rev()
                .flatten()
                .find(|w| w.name.eq_ignore_ascii_case(name))
                .map(|w| &w.value),
        }
    }

    /// Folds the changes of a later processor into these, as if it had written them
    /// here: its removals first (they cancel earlier writes), then its writes.
    pub fn merge(&mut self, later: Mutations) {
        if self.slots.is_empty() && self.removes.is_empty() {
            // Nothing earlier to combine with: take the later changes as they are.
            self.slots = later.slots;
            self.live = later.live;
            self.removes = later.removes;
            self.index = later.index;
        } else {
            // Already checked when they were written.
            for name in later.removes {
                self.remove_checked(name);
            }
            for w in later.slots.into_iter().flatten() {
                match w.action {
                    HeaderAction::Set => self.set_checked(w.name, w.value),
                    HeaderAction::Append => self.append_checked(w.name, w.value),
                    HeaderAction::AddIfAbsent => self.add_if_absent_checked(w.name, w.value),
                }
            }
        }
        if later.body.is_some() {
            self.body = later.body;
        }
        for m in later.metadata {
            self.set_metadata_shared(m.namespace, m.key, m.value);
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

    /// Applies the header changes to a header list, as Envoy would: removals first,
    /// then each write in order.
    pub fn apply_to_headers(&self, headers: &mut Headers) {
        if self.index.is_none() {
            // A few changes: scanning the list per change is cheapest.
            for name in &self.removes {
                headers.remove(name);
            }
            for w in self.writes() {
                headers.write(w);
            }
            return;
        }
        // Many changes: one pass over the list and one over the writes. Per name only
        // the first write can be a `Set` (which drops the list's entries of the name)
        // or an `AddIfAbsent` (which adds only when the list has none left).
        let originals = std::mem::take(&mut headers.entries);
        // With room for the few writes of the processors that follow, which would
        // otherwise copy the whole list to grow it.
        let mut out: Vec<(String, Bytes)> =
            Vec::with_capacity(originals.len() + self.live + INDEX_FROM);
        for (name, value) in originals {
            let dropped = self.state_of(&name).is_some_and(|s| {
                s.removed_at != NONE
                    || self
                        .slots
                        .get(s.first)
                        .and_then(Option::as_ref)
                        .is_some_and(|w| w.action == HeaderAction::Set)
            });
            if !dropped {
                out.push((name, value));
            }
        }
        let kept = out.len();
        let mut present: Option<HashSet<String>> = None;
        for w in self.writes() {
            if w.action == HeaderAction::AddIfAbsent {
                let present = present.get_or_insert_with(|| {
                    out.iter()
                        .take(kept)
                        .map(|(n, _)| n.to_ascii_lowercase())
                        .collect()
                });
                if present.contains(&w.name) {
                    continue;
                }
            }
            out.push((w.name.clone(), w.value.clone()));
        }
        headers.entries = out;
    }

    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.live == 0
            && self.removes.is_empty()
            && self.body.is_none()
            && !self.clear_route_cache
            && self.metadata.is_empty()
    }
}

/// A reply Envoy sends to the client in place of the upstream's response.
///
/// Its headers are checked as [`Mutations`] are: [`ImmediateResponse::header`] drops
/// an invalid one, [`ImmediateResponse::try_add_header`] says why, so no processor can
/// make Envoy refuse the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImmediateResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (lower-case names, checked values): private so that every
    /// header goes through the checks.
    headers: Vec<(String, Bytes)>,
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

    /// Adds a header (another value when the name is already there). An invalid name
    /// or value is dropped: see [`ImmediateResponse::try_add_header`].
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        if let Err(e) = self.try_add_header(name, value) {
            dropped("immediate response header", &e);
        }
        self
    }

    /// Like [`ImmediateResponse::header`], in place, and says why a header was refused.
    pub fn try_add_header(
        &mut self,
        name: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Result<(), InvalidHeader> {
        let value = value.into();
        let name = checked(name.into(), Some(&value))?;
        self.headers.push((name, value));
        Ok(())
    }

    /// Replaces every value of `name` with this one (or adds it).
    pub fn set_header(
        &mut self,
        name: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Result<(), InvalidHeader> {
        let value = value.into();
        let name = checked(name.into(), Some(&value))?;
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value));
        Ok(())
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, Bytes)] {
        &self.headers
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the details Envoy logs; spaces (and control characters) become
    /// underscores as Envoy requires.
    pub fn details(mut self, details: &str) -> Self {
        self.details = details
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
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

    #[test]
    fn header_names_and_values_are_checked_at_the_builder() {
        for ok in ["x-a", "a", "x_a", "!#$%&'*+-.^_`|~09az"] {
            assert!(is_valid_header_name(ok), "{ok}");
        }
        for bad in [
            "", "X-A", "a b", ":path", "a:b", "é", "a\0", "a\"b", "(a)", "a/b",
        ] {
            assert!(!is_valid_header_name(bad), "{bad:?}");
        }
        for ok in [
            &b""[..],
            b"v",
            b"a\tb",
            b" spaced ",
            "é".as_bytes(),
            &[0x80, 0xff],
        ] {
            assert!(is_valid_header_value(ok), "{ok:?}");
        }
        for bad in [
            &b"a\rb"[..],
            b"a\nb",
            b"\0",
            b"\x01",
            b"\x1f",
            b"\x7f",
            b"a\x0bb",
        ] {
            assert!(!is_valid_header_value(bad), "{bad:?}");
        }
        // Every byte at every place a chunk boundary can put it, in long values.
        for len in [1, 31, 32, 33, 64, 100] {
            for at in [0, len / 2, len - 1] {
                for b in 0..=255u8 {
                    let mut value = vec![b'v'; len];
                    value[at] = b;
                    let want = (b >= 0x20 && b != 0x7f) || b == b'\t';
                    assert_eq!(
                        is_valid_header_value(&value),
                        want,
                        "{b:#x} at {at} of {len}"
                    );
                }
            }
        }

        let mut m = Mutations::new();
        assert_eq!(m.try_set("X-Ok", "v"), Ok(()));
        assert_eq!(
            m.try_set("bad name", "v"),
            Err(InvalidHeader::Name("bad name".into()))
        );
        assert_eq!(
            m.try_append("x-v", "a\x7fb"),
            Err(InvalidHeader::Value("x-v".into()))
        );
        assert_eq!(
            m.try_add_if_absent("x-v", "\x01"),
            Err(InvalidHeader::Value("x-v".into()))
        );
        assert_eq!(
            m.try_remove(":path"),
            Err(InvalidHeader::Name(":path".into()))
        );
        // The infallible forms drop what the try_ forms refuse.
        m.set("x-ctl", "a\x1bb");
        m.append("a b", "v");
        m.remove("");
        let names: Vec<_> = m.writes().iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["x-ok"]);
        assert!(m.removes().is_empty());

        let e = InvalidHeader::Name(format!("a\r\n{}", "x".repeat(500)));
        let shown = e.to_string();
        assert!(shown.starts_with("`a\\r\\nxx"), "{shown}");
        assert!(shown.len() < 200, "{shown}");
        assert!(!shown.contains('\r'));

        let mut r = ImmediateResponse::new(200)
            .header("X-Good", "1")
            .header("bad name", "1")
            .header("x-bad-value", "a\nb");
        assert_eq!(r.headers(), [("x-good".to_string(), Bytes::from("1"))]);
        assert_eq!(
            r.try_add_header("x-v", "\0"),
            Err(InvalidHeader::Value("x-v".into()))
        );
        assert_eq!(r.set_header("x-good", "2"), Ok(()));
        assert_eq!(r.headers(), [("x-good".to_string(), Bytes::from("2"))]);
        let r = ImmediateResponse::new(400).details("a b\x01c");
        assert_eq!(r.details, "a_b_c");
    }

    /// The original builder, quadratic but plainly right: the indexed one must behave
    /// exactly like it.
    #[derive(Default)]
    struct Model {
        writes: Vec<HeaderWrite>,
        removes: Vec<String>,
    }

    impl Model {
        fn write(&mut self, name: &str, value: &str, action: HeaderAction) {
            let name = name.to_ascii_lowercase();
            let value = Bytes::copy_from_slice(value.as_bytes());
            match action {
                HeaderAction::Set => self.writes.retain(|w| w.name != name),
                HeaderAction::Append => {
                    if self.writes.iter().any(|w| {
                        w.name == name && w.value == value && w.action == HeaderAction::Append
                    }) {
                        return;
                    }
                }
                HeaderAction::AddIfAbsent => {
                    if self.writes.iter().any(|w| w.name == name) {
                        return;
                    }
                }
            }
            self.writes.push(HeaderWrite {
                name,
                value,
                action,
            });
        }

        fn remove(&mut self, name: &str) {
            let name = name.to_ascii_lowercase();
            self.writes.retain(|w| w.name != name);
            if !self.removes.contains(&name) {
                self.removes.push(name);
            }
        }

        fn merge(&mut self, later: Model) {
            for name in later.removes {
                self.remove(&name);
            }
            for w in later.writes {
                self.write(
                    &w.name,
                    std::str::from_utf8(&w.value).unwrap_or(""),
                    w.action,
                );
            }
        }

        fn apply(&self, headers: &mut Headers) {
            for name in &self.removes {
                headers.remove(name);
            }
            for w in &self.writes {
                headers.write(w);
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(usize, u8, HeaderAction),
        Remove(usize),
    }

    /// Names that collide (case), values that repeat, and enough distinct names to
    /// cross into the indexed form.
    fn op_name(i: usize) -> String {
        if i % 7 == 3 {
            format!("X-H{}", i % 40)
        } else {
            format!("x-h{}", i % 40)
        }
    }

    fn run(ops: &[Op], reserve: usize) -> (Mutations, Model) {
        let (mut m, mut model) = (Mutations::new(), Model::default());
        m.reserve(reserve);
        for op in ops {
            match op {
                Op::Write(n, v, action) => {
                    let (name, value) = (op_name(*n), format!("v{v}"));
                    match action {
                        HeaderAction::Set => m.set(name.clone(), value.clone()),
                        HeaderAction::Append => m.append(name.clone(), value.clone()),
                        HeaderAction::AddIfAbsent => m.add_if_absent(name.clone(), value.clone()),
                    }
                    model.write(&name, &value, *action);
                }
                Op::Remove(n) => {
                    m.remove(op_name(*n));
                    model.remove(&op_name(*n));
                }
            }
        }
        (m, model)
    }

    fn same(m: &Mutations, model: &Model) -> Result<(), proptest::test_runner::TestCaseError> {
        let got: Vec<&HeaderWrite> = m.writes().iter().collect();
        let want: Vec<&HeaderWrite> = model.writes.iter().collect();
        proptest::prop_assert_eq!(got, want);
        proptest::prop_assert_eq!(m.writes().len(), model.writes.len());
        proptest::prop_assert_eq!(m.removes(), &model.removes[..]);
        for i in 0..40 {
            let name = op_name(i);
            let want = model
                .writes
                .iter()
                .rev()
                .find(|w| w.name.eq_ignore_ascii_case(&name))
                .map(|w| &w.value);
            proptest::prop_assert_eq!(m.written(&name), want);
        }
        Ok(())
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
        use proptest::prelude::*;
        let action = prop_oneof![
            Just(HeaderAction::Set),
            Just(HeaderAction::Append),
            Just(HeaderAction::AddIfAbsent)
        ];
        let op = prop_oneof![
            3 => (0..60usize, 0..3u8, action).prop_map(|(n, v, a)| Op::Write(n, v, a)),
            1 => (0..60usize).prop_map(Op::Remove),
        ];
        proptest::collection::vec(op, 0..120)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(192))]

        /// Writes, removals, merges and application to a header list give what the
        /// original builder gave, below and above the indexing threshold.
        #[test]
        fn indexed_mutations_match_the_reference(
            first in ops(),
            second in ops(),
            reserve in proptest::prop_oneof![proptest::strategy::Just(0usize), 0..200usize],
            original in proptest::collection::vec((0..60usize, 0..3u8), 0..30),
        ) {
            let (mut m, mut model) = run(&first, reserve);
            same(&m, &model)?;
            let (m2, model2) = run(&second, 0);
            same(&m2, &model2)?;
            m.merge(m2);
            model.merge(model2);
            same(&m, &model)?;

            let headers: Headers = original
                .iter()
                .map(|(n, v)| (op_name(*n), format!("o{v}")))
                .collect();
            let (mut got, mut want) = (headers.clone(), headers);
            m.apply_to_headers(&mut got);
            model.apply(&mut want);
            proptest::prop_assert_eq!(got, want);

            // Moving the header changes out keeps them whole.
            let taken = m.take_header_changes();
            same(&taken, &model)?;
            proptest::prop_assert!(m.writes().is_empty() && m.removes().is_empty());
        }
    }

    #[test]
    fn thousands_of_writes_cost_linear_time() {
        // 20,000 sets, appends and removals of distinct names: quadratic bookkeeping
        // would take seconds (4 x 10^8 comparisons); linear takes milliseconds.
        let started = std::time::Instant::now();
        let mut m = Mutations::new();
        for i in 0..20_000 {
            m.set(format!("x-s{i}"), "v");
            m.append(format!("x-a{i}"), "v");
            m.remove(format!("x-r{i}"));
        }
        let mut total = Mutations::new();
        total.set("x-first", "1");
        total.merge(m);
        let mut headers: Headers = (0..100).map(|i| (format!("x-r{i}"), "o")).collect();
        total.apply_to_headers(&mut headers);
        assert_eq!(total.writes().len(), 40_001);
        assert_eq!(total.removes().len(), 20_000);
        assert_eq!(headers.len(), 40_001);
        let took = started.elapsed();
        // Generous for an unoptimised build on a shared machine.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }
}
