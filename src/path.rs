//! Path safety: the path a route is chosen by.
//!
//! Behind an Envoy without `normalize_path`, `:path` arrives as the client wrote it, and
//! `/public/../api` would take a `/public` route while the upstream serves `/api`. So
//! routes are matched on a normalised path, computed once per stream:
//!
//! 1. the query (from the first `?`) is kept out of matching;
//! 2. percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`, any hex case) are
//!    decoded, once; every other escape stays encoded, its hex upper-cased
//!    (RFC 3986 section 6.2.2), so `%252e` is the literal text `%2e`, never a dot;
//! 3. dot segments are removed (RFC 3986 section 5.2.4; `..` above the root is dropped);
//! 4. adjacent slashes are merged (after step 3, in the order Envoy applies
//!    `normalize_path` and `merge_slashes`).
//!
//! Paths that servers read in different ways are refused instead ([`PathRefusal`]):
//! an invalid escape, an encoded `/` or `\` (unless the policy keeps them), a raw `\`,
//! a control character (raw or encoded), `#` or a space, bytes that are not UTF-8, a
//! dot segment with a `;` parameter (`..;` is `..` to Tomcat and Jetty), a `..` whose
//! result depends on whether slashes are merged first, and a path that does not start
//! with `/` (other than `*`).
//!
//! The module depends on nothing else in the crate: the router and the metrics use it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Why a request path is refused (400 at request headers, before any processor runs).
/// The label values of `extproc_paths_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathRefusal {
    /// A `%` not followed by two hex digits (`%zz`, a trailing `%2`): no server can
    /// decode it the same way as another.
    InvalidPercentEncoding,
    /// `%2F` or `%5C` (any case): one segment posing as two to an upstream that
    /// decodes them.
    EscapedSlash,
    /// A raw `\`: a path separator to some servers, not to others.
    Backslash,
    /// A control character (0x00-0x1F, 0x7F), raw or percent-encoded: a NUL ends the
    /// path early in C-based upstreams.
    ControlCharacter,
    /// `#` or a space in the path, or bytes that are not UTF-8: not part of a request
    /// path, read differently by each parser.
    InvalidCharacter,
    /// A dot segment with a parameter (`..;x`, `.;`), or a `..` after an empty segment
    /// whose result depends on whether slashes are merged first.
    AmbiguousSegment,
    /// A path that does not start with `/` (and is not `*`).
    NotOriginForm,
}

impl PathRefusal {
    /// Every reason, in label order (metrics export each at 0 from the start).
    pub const ALL: [PathRefusal; 7] = [
        PathRefusal::InvalidPercentEncoding,
        PathRefusal::EscapedSlash,
        PathRefusal::Backslash,
        PathRefusal::ControlCharacter,
        PathRefusal::InvalidCharacter,
        PathRefusal::AmbiguousSegment,
        PathRefusal::NotOriginForm,
    ];

    /// Label value and the `reason` field of the 400's JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            PathRefusal::InvalidPercentEncoding => "invalid_percent_encoding",
            PathRefusal::EscapedSlash => "escaped_slash",
            PathRefusal::Backslash => "backslash",
            PathRefusal::ControlCharacter => "control_character",
            PathRefusal::InvalidCharacter => "invalid_character",
            PathRefusal::AmbiguousSegment => "ambiguous_segment",
            PathRefusal::NotOriginForm => "not_origin_form",
        }
    }

    /// The sentence the client gets in the 400's JSON `error` field.
    pub fn message(self) -> &'static str {
        match self {
            PathRefusal::InvalidPercentEncoding => {
                "request path refused: a '%' not followed by two hex digits"
            }
            PathRefusal::EscapedSlash => {
                "request path refused: it contains an encoded slash or backslash (%2F or %5C)"
            }
            PathRefusal::Backslash => "request path refused: it contains a backslash",
            PathRefusal::ControlCharacter => {
                "request path refused: it contains a control character (raw or percent-encoded)"
            }
            PathRefusal::InvalidCharacter => {
                "request path refused: it contains '#', a space or bytes that are not UTF-8"
            }
            PathRefusal::AmbiguousSegment => {
                "request path refused: a dot segment that servers resolve differently ('..;', '.;', or '..' after '//')"
            }
            PathRefusal::NotOriginForm => "request path refused: it does not start with '/'",
        }
    }

    /// Position in [`PathRefusal::ALL`].
    pub fn index(self) -> usize {
        PathRefusal::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// What a path with `%2F` or `%5C` gets: the names of Envoy's
/// `path_with_escaped_slashes_action` that the gateway can carry out.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EscapedSlashesAction {
    /// 400 (the default): an upstream that decodes `%2F` would see other segments than
    /// the route was chosen by.
    #[default]
    RejectRequest,
    /// Kept encoded, as part of their segment (`/public%2F..%2Fapi` is one segment
    /// under `/`): only safe when the upstream never decodes them.
    KeepUnchanged,
}

/// How the gateway reads `:path` to pick a route (the config's `path_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PathPolicy {
    /// Match routes on the normalised path (the default). `false` matches the path as
    /// sent (query excluded), which is only safe behind an Envoy that normalises
    /// (`normalize_path`, `merge_slashes`); the refusals apply either way.
    pub normalize: bool,
    /// What a path with `%2F` or `%5C` gets (Envoy's setting of the same name).
    pub path_with_escaped_slashes_action: EscapedSlashesAction,
    /// Also send the normalised path upstream: `:path` is rewritten (query kept) before
    /// any processor runs, so processors and the upstream see what the route was chosen
    /// by. Off by default: processors and the upstream see the request as sent.
    pub forward_normalized: bool,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            normalize: true,
            path_with_escaped_slashes_action: EscapedSlashesAction::RejectRequest,
            forward_normalized: false,
        }
    }
}

/// A request path as routes see it: the path, normalised per the policy, and the query
/// (without its `?`), which routes never match on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingPath<'a> {
    path: Cow<'a, str>,
    query: Option<&'a str>,
}

impl RoutingPath<'_> {
    /// The path routes match on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query, without its `?`, as sent.
    pub fn query(&self) -> Option<&str> {
        self.query
    }

    /// True when the path differs from the one sent.
    pub fn changed(&self) -> bool {
        matches!(self.path, Cow::Owned(_))
    }

    /// The path with its query, as `:path` carries it (what `forward_normalized` sends
    /// upstream, and what header conditions on `:path` see).
    pub fn with_query(&self) -> String {
        match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_string(),
        }
    }
}

impl PathPolicy {
    /// The path routes match on, or why the path is refused. `raw` is `:path` as Envoy
    /// sent it (or the `request.path` attribute).
    pub fn routing_path<'a>(&self, raw: &'a [u8]) -> Result<RoutingPath<'a>, PathRefusal> {
        let raw = std::str::from_utf8(raw).map_err(|_| PathRefusal::InvalidCharacter)?;
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        if let Some(q) = query {
            if q.bytes().any(is_control) {
                return Err(PathRefusal::ControlCharacter);
            }
        }
        if path == "*" {
            return Ok(RoutingPath {
                path: Cow::Borrowed(path),
                query,
            });
        }
        if !path.starts_with('/') {
            return Err(PathRefusal::NotOriginForm);
        }
        let keep_escaped =
            self.path_with_escaped_slashes_action == EscapedSlashesAction::KeepUnchanged;
        if is_plain(path) {
            return Ok(RoutingPath {
                path: Cow::Borrowed(path),
                query,
            });
        }
        let decoded = decode(path, keep_escaped)?;
        for segment in decoded.split('/') {
            if segment.starts_with(".;") || segment.starts_with("..;") {
                return Err(PathRefusal::AmbiguousSegment);
            }
        }
        if !self.normalize {
            return Ok(RoutingPath {
                path: Cow::Borrowed(path),
                query,
            });
        }
        let normalized = normalize_decoded(&decoded)?;
        Ok(RoutingPath {
            path: if normalized == path {
                Cow::Borrowed(path)
            } else {
                Cow::Owned(normalized)
            },
            query,
        })
    }
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// True when the path needs no decoding, has no dot segment and no empty segment:
/// the common case, answered without allocating.
fn is_plain(path: &str) -> bool {
    path.bytes()
        .all(|b| !is_control(b) && !matches!(b, b'%' | b'\\' | b'#' | b' '))
        && !path.contains("//")
        && !path.contains("/.")
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Step 2 and the character refusals: decodes unreserved escapes once, upper-cases the
/// others, refuses what cannot be read one way only.
fn decode(path: &str, keep_escaped_slashes: bool) -> Result<String, PathRefusal> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathRefusal::InvalidPercentEncoding);
                };
                let value = hi * 16 + lo;
                if is_control(value) {
                    return Err(PathRefusal::ControlCharacter);
                }
                if matches!(value, b'/' | b'\\') && !keep_escaped_slashes {
                    return Err(PathRefusal::EscapedSlash);
                }
                if is_unreserved(value) {
                    out.push(value);
                } else {
                    out.push(b'%');
                    out.push(HEX_UPPER.get(usize::from(hi)).copied().unwrap_or(b'0'));
                    out.push(HEX_UPPER.get(usize::from(lo)).copied().unwrap_or(b'0'));
                }
                i += 3;
            }
            b'\\' => return Err(PathRefusal::Backslash),
            b'#' | b' ' => return Err(PathRefusal::InvalidCharacter),
            b if is_control(b) => return Err(PathRefusal::ControlCharacter),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was decoded and every other byte copied from a `str`: still UTF-8.
    String::from_utf8(out).map_err(|_| PathRefusal::InvalidCharacter)
}

/// Steps 3 and 4 on a decoded path that starts with `/`; a path whose result depends
/// on the order of the two steps is refused.
fn normalize_decoded(decoded: &str) -> Result<String, PathRefusal> {
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let merged_last = merge_slashes(remove_dot_segments(&segments));
    let has_inner_empty = segments
        .split_last()
        .is_some_and(|(_, init)| init.iter().any(|s| s.is_empty()));
    if has_inner_empty && segments.contains(&"..") {
        // Envoy removes dot segments before merging slashes, nginx merges first:
        // `/a//../b` is `/a/b` to one and `/b` to the other.
        let merged_first = remove_dot_segments(&merge_slashes(segments.clone()));
        if merged_first != merged_last {
            return Err(PathRefusal::AmbiguousSegment);
        }
    }
    Ok(join(&merged_last))
}

/// RFC 3986 section 5.2.4 over the segments of an absolute path (the text after each
/// `/`): `.` goes, `..` removes the segment before it (none above the root), and a
/// dot segment at the end leaves a trailing slash.
fn remove_dot_segments<'a>(segments: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (i, &segment) in segments.iter().enumerate() {
        match segment {
            "." | ".." => {
                if segment == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    out
}

/// Drops empty segments but a trailing one (which stands for a trailing slash).
fn merge_slashes(segments: Vec<&str>) -> Vec<&str> {
    let last = segments.len().saturating_sub(1);
    segments
        .into_iter()
        .enumerate()
        .filter(|(i, s)| !s.is_empty() || *i == last)
        .map(|(_, s)| s)
        .collect()
}

fn join(segments: &[&str]) -> String {
    let mut out = String::with_capacity(segments.iter().map(|s| s.len() + 1).sum::<usize>() + 1);
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(raw: &str) -> Result<String, PathRefusal> {
        PathPolicy::default()
            .routing_path(raw.as_bytes())
            .map(|p| p.path().to_string())
    }

    fn ok(raw: &str, want: &str) {
        assert_eq!(route(raw).as_deref(), Ok(want), "{raw:?}");
    }

    fn refused(raw: &str, why: PathRefusal) {
        assert_eq!(route(raw), Err(why), "{raw:?}");
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api",
            "/api/items",
            "/a-b_c~d/e.f",
            "/caf\u{e9}",
            "/a/b/",
        ] {
            let r = PathPolicy::default().routing_path(p.as_bytes()).unwrap();
            assert_eq!(r.path(), p);
            assert!(!r.changed(), "{p}");
        }
    }

    #[test]
    fn rfc3986_dot_segments_are_removed() {
        // RFC 3986 section 5.2.4's own examples, as absolute paths.
        ok("/a/b/c/./../../g", "/a/g");
        ok("/mid/content=5/../6", "/mid/6");
        ok("/public/../api/items", "/api/items");
        ok("/public/./../api/x", "/api/x");
        ok("/./public/../api", "/api");
        ok("/public/x/..", "/public/");
        ok("/public/x/.", "/public/x/");
        ok("/public/.", "/public/");
        ok("/.", "/");
        ok("/..", "/");
        ok("/a/..", "/");
        // Climbing above the root is clamped.
        ok("/public/../../api", "/api");
        ok("/../../../etc/passwd", "/etc/passwd");
        // Not dot segments.
        ok("/a/.../b", "/a/.../b");
        ok("/a/..b/c", "/a/..b/c");
        ok("/a/b../c", "/a/b../c");
        ok("/a/.b", "/a/.b");
    }

    #[test]
    fn unreserved_escapes_are_decoded_once_in_any_case() {
        ok("/public/%2e%2e/api/x", "/api/x");
        ok("/public/%2E%2E/api/x", "/api/x");
        ok("/public/%2e%2E/api", "/api");
        ok("/public/.%2e/api", "/api");
        ok("/public/%2e./api", "/api");
        ok("/public/%2e/api", "/public/api");
        ok("/%61%70%69/items", "/api/items");
        ok("/%7Euser/%2D%5F", "/~user/-_");
        ok("/%7euser", "/~user");
        // Double encoding is decoded once: `%25` is not unreserved, so `%252e` stays.
        ok("/public/%252e%252e/api", "/public/%252e%252e/api");
        // Reserved and non-ASCII escapes stay encoded, hex upper-cased.
        ok("/a%3bb/%c3%a9", "/a%3Bb/%C3%A9");
        ok("/a%20b", "/a%20b");
        ok("/q%3F/x", "/q%3F/x");
        // An encoded `..` next to reserved escapes.
        ok("/x/%2e%2e%3b/y", "/x/..%3B/y");
    }

    #[test]
    fn slashes_are_merged_after_dot_segments() {
        ok("//public/../api", "/api");
        ok("//api//items///", "/api/items/");
        ok("///", "/");
        ok("/a/.//b", "/a/b");
        ok("//../a", "/a");
        // Orders disagree: Envoy gives /a/b, a merge-first server /b.
        refused("/a//../b", PathRefusal::AmbiguousSegment);
        refused("/public//../api", PathRefusal::AmbiguousSegment);
    }

    #[test]
    fn the_query_is_kept_out_of_matching() {
        let r = PathPolicy::default()
            .routing_path(b"/public?x=/../api")
            .unwrap();
        assert_eq!(r.path(), "/public");
        assert_eq!(r.query(), Some("x=/../api"));
        assert_eq!(r.with_query(), "/public?x=/../api");
        let r = PathPolicy::default()
            .routing_path(b"/a/./b?q=%zz\\#")
            .unwrap();
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.with_query(), "/a/b?q=%zz\\#");
        ok("/p?", "/p");
        ok("/p/..?a?b", "/");
        // A raw control character is refused in the query too.
        refused("/p?a=\u{0}", PathRefusal::ControlCharacter);
    }

    #[test]
    fn escaped_slashes_are_refused_or_kept() {
        for p in [
            "/public/..%2fapi/x",
            "/public/..%2Fapi/x",
            "/public%2f..%2fapi",
            "/public/..%5capi/x",
            "/public/..%5Capi/x",
        ] {
            refused(p, PathRefusal::EscapedSlash);
        }
        let keep = PathPolicy {
            path_with_escaped_slashes_action: EscapedSlashesAction::KeepUnchanged,
            ..PathPolicy::default()
        };
        let r = |p: &str| {
            keep.routing_path(p.as_bytes())
                .map(|r| r.path().to_string())
        };
        assert_eq!(r("/public/..%2fapi/x").as_deref(), Ok("/public/..%2Fapi/x"));
        assert_eq!(r("/public%2f..%2fapi").as_deref(), Ok("/public%2F..%2Fapi"));
        assert_eq!(r("/a/%5c/../b").as_deref(), Ok("/a/b"));
        // Keeping slashes encoded keeps nothing else.
        assert_eq!(r("/a\\b"), Err(PathRefusal::Backslash));
    }

    #[test]
    fn unreadable_paths_are_refused() {
        refused("/public/..\\api", PathRefusal::Backslash);
        refused("\\public", PathRefusal::NotOriginForm);
        refused("/public/..%00/api", PathRefusal::ControlCharacter);
        refused("/a%0d%0aX-Injected:%201", PathRefusal::ControlCharacter);
        refused("/a%7f", PathRefusal::ControlCharacter);
        refused("/a\u{0}b", PathRefusal::ControlCharacter);
        refused("/a\tb", PathRefusal::ControlCharacter);
        refused("/a\u{7f}", PathRefusal::ControlCharacter);
        refused("/a/%zz", PathRefusal::InvalidPercentEncoding);
        refused("/a/%2", PathRefusal::InvalidPercentEncoding);
        refused("/a/%", PathRefusal::InvalidPercentEncoding);
        refused("/a/%g0", PathRefusal::InvalidPercentEncoding);
        refused("/a/%u002e%u002e/b", PathRefusal::InvalidPercentEncoding);
        refused("/public#/../api", PathRefusal::InvalidCharacter);
        refused("/a b", PathRefusal::InvalidCharacter);
        refused("api", PathRefusal::NotOriginForm);
        refused("", PathRefusal::NotOriginForm);
        refused("../api", PathRefusal::NotOriginForm);
        refused("http://x/api", PathRefusal::NotOriginForm);
        assert_eq!(
            PathPolicy::default().routing_path(b"/a/\xff/b"),
            Err(PathRefusal::InvalidCharacter)
        );
        // `OPTIONS *`.
        ok("*", "*");
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        refused("/public/..;/api", PathRefusal::AmbiguousSegment);
        refused("/public/..;x=1/api", PathRefusal::AmbiguousSegment);
        refused("/public/.;/../api", PathRefusal::AmbiguousSegment);
        refused("/public/%2e%2e;/api", PathRefusal::AmbiguousSegment);
        // A parameter on a normal segment is that segment's text.
        ok("/api;jsessionid=1/items", "/api;jsessionid=1/items");
        ok("/a;/../b", "/b");
        ok("/a/...;/b", "/a/...;/b");
    }

    #[test]
    fn raw_matching_keeps_the_refusals() {
        let raw = PathPolicy {
            normalize: false,
            ..PathPolicy::default()
        };
        let r = |p: &str| raw.routing_path(p.as_bytes()).map(|r| r.path().to_string());
        assert_eq!(r("/public/../api?x").as_deref(), Ok("/public/../api"));
        assert_eq!(r("/public/%2e%2e/api").as_deref(), Ok("/public/%2e%2e/api"));
        assert_eq!(r("/public/..%2fapi"), Err(PathRefusal::EscapedSlash));
        assert_eq!(r("/public/..;/api"), Err(PathRefusal::AmbiguousSegment));
        assert_eq!(r("/a%zz"), Err(PathRefusal::InvalidPercentEncoding));
    }

    #[test]
    fn normalising_is_idempotent() {
        let samples = [
            "/public/../api/items",
            "/public/%2e%2e/api",
            "//a///b/./c/../d/",
            "/%41%42/%c3%A9/x%3b",
            "/a/b/c/./../../g",
            "/public/x/..",
            "/../../x",
        ];
        for p in samples {
            let once = route(p).unwrap();
            assert_eq!(route(&once).as_deref(), Ok(once.as_str()), "{p}");
        }
    }

    #[test]
    fn changed_reports_a_rewrite() {
        let policy = PathPolicy::default();
        assert!(policy.routing_path(b"/a/../b").unwrap().changed());
        assert!(policy.routing_path(b"/%61").unwrap().changed());
        // A path that needed the slow path but normalises to itself.
        assert!(!policy.routing_path(b"/a%3B").unwrap().changed());
        assert!(!policy.routing_path(b"/a/.b").unwrap().changed());
    }

    #[test]
    fn reasons_have_distinct_labels_and_indexes() {
        let labels: std::collections::HashSet<_> =
            PathRefusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), PathRefusal::ALL.len());
        for (i, r) in PathRefusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(r.message().starts_with("request path refused"));
        }
    }

    #[test]
    fn policy_yaml_uses_envoys_names_and_denies_unknown_fields() {
        let p: PathPolicy = serde_saphyr::from_str(
            "{normalize: true, path_with_escaped_slashes_action: KEEP_UNCHANGED, forward_normalized: true}",
        )
        .unwrap();
        assert_eq!(
            p.path_with_escaped_slashes_action,
            EscapedSlashesAction::KeepUnchanged
        );
        assert!(p.forward_normalized);
        let p: PathPolicy = serde_saphyr::from_str("{}").unwrap();
        assert_eq!(p, PathPolicy::default());
        assert!(serde_saphyr::from_str::<PathPolicy>("{normalise: true}").is_err());
        assert!(serde_saphyr::from_str::<PathPolicy>(
            "{path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT}"
        )
        .is_err());
    }
}
