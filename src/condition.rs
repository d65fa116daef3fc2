//!
//! The expression is [CEL](https://cel.dev), the language of Envoy's RBAC filter, so
//! operators can reuse what they already write there. A [`Condition`] is compiled
//! once, when the config is loaded, so that a typo is a config error rather than a
//! failure on every request, and evaluated on each request against that request's
//! [`RequestCtx`] and headers.
//!
//! # Variables
//!
//! The names follow [Envoy's attributes], so that an expression written for RBAC
//! reads the same here:
//!
//! | variable | what it holds |
//! |---|---|
//! | `request.method` | `:method` |
//! | `request.path` | `:path`, query string included |
//! | `request.url_path` | `:path` without the query string |
//! | `request.query` | what follows the first `?` of `:path`; empty if there is none |
//! | `request.host` | `:authority` |
//! | `request.scheme` | the `:scheme` header; empty if absent |
//! | `request.id` | `x-request-id` |
//! | `request.headers` | map of header name (lower case) to value; the values of a repeated header joined with `,`, as Envoy does; pseudo headers (`:authority`, ...) included |
//! | `request.<other>` | any other `request.*` attribute Envoy sent (`request.time`, `request.protocol`, ...) |
//! | `source`, `destination`, `connection`, `upstream`, `xds`, `response` | the attributes Envoy sent under that prefix: `xds.route_name`, `source.address`, `connection.mtls`, ... |
//! | `route` | the name of the gateway's route serving the request |
//! | `metadata` | the dynamic metadata Envoy forwarded: namespace to map, e.g. `metadata["envoy.filters.http.jwt_authn"]` |
//! | `grpc_metadata` | the stream's gRPC initial metadata: key to value, the values of a repeated key joined with `,` |
//!
//! Attributes only reach the gateway when the Envoy filter lists them in its
//! `request_attributes`. A root such as `xds` is always defined, as an empty map when
//! Envoy sent nothing under it, so `has(xds.route_name)` answers rather than fails.
//!
//! Attribute values keep their JSON shape: strings, bools, lists, maps, null. Envoy
//! sends every number as a double; an integral one becomes a CEL `int`, so that
//! `source.port == 8080` holds (CEL does not compare an `int` to a `double`).
//!
//! A header value that is not valid UTF-8 is read lossily: its invalid bytes become
//! U+FFFD, so the header is still present for `in` and `has()` but equals no
//! literal an operator would write.
//!
//! A name the expression uses that is none of the above, nor a CEL type name such as
//! `int` or `string`, is refused by [`Condition::compile`].
//!
//! # Errors are not `false`
//!
//! A condition that cannot be evaluated for a request, because it reads a header the
//! request does not have, or compares values of different types, gives an
//! [`Err`], which the caller routes through the processor's failure policy: silently
//! skipping (or running) a processor because of a typo would be worse. An expression
//! tests for absence explicitly, with one of:
//!
//! - `in`: `"x-tenant-id" in request.headers && request.headers["x-tenant-id"] == "acme"`;
//! - `has()` on a field: `has(request.headers.authorization)` (only for names that are
//!   identifiers: `has()` takes no `[...]`);
//! - optional access, `[?key]` or `.?field`, which gives an optional value instead of
//!   failing: `request.headers[?"x-tenant-id"].orValue("") == "acme"`,
//!   `request.headers.?authorization.hasValue()`.
//!
//! `&&` and `||` absorb an error on one side when the other side decides the result,
//! as in CEL everywhere: `!("x-a" in request.headers) || request.headers["x-a"] == "1"`
//! holds for a request without `x-a`.
//!
//! # Cost
//!
//! Evaluation builds only the variables, the fields of `request` and the entries of
//! `request.headers`, `metadata` and of an attribute root that the expression
//! reads, found once at compile time, and borrows their strings from the request
//! rather than copying them. A `matches()` pattern written as a literal is compiled
//! by [`Condition::compile`], which refuses an invalid one, and kept compiled for the
//! evaluations; one computed per request is compiled on first use, then cached too.
//!
//! [Envoy's attributes]: https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes
//! [`Condition`]: crate::condition::Condition
//! [`Condition::compile`]: crate::condition::Condition::compile
//! [`RequestCtx`]: crate::processor::RequestCtx

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
    STRING_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, ParseErrors, Program, Value};

use crate::phase::Headers;
use crate::processor::RequestCtx;

/// The variables the gateway defines itself.
const GATEWAY_VARIABLES: [&str; 4] = ["request", "route", "metadata", "grpc_metadata"];

/// The roots of Envoy's attributes, besides `request`, that an expression may read.
const ATTRIBUTE_ROOTS: [&str; 6] = [
    "source",
    "destination",
    "connection",
    "upstream",
    "xds",
    "response",
];

/// Namespaces of the functions the CEL standard library declares (`optional.of(x)`,
/// `optional.none()`): a call on one of these names is not a variable reference.
const FUNCTION_NAMESPACES: [&str; 1] = ["optional"];

/// Type names the CEL standard library may register; those it does are valid
/// identifiers (`type(x) == string`). Probed against the environment, not assumed.
const TYPE_NAME_CANDIDATES: [&str; 12] = [
    "bool",
    "bytes",
    "double",
    "dyn",
    "int",
    "list",
    "map",
    "null_type",
    "optional_type",
    "string",
    "type",
    "uint",
];

/// The fields of `request` the gateway fills itself, in the order of [`RequestField`].
const REQUEST_FIELDS: [&str; 8] = [
    "method", "path", "url_path", "query", "host", "scheme", "id", "headers",
];

/// The standard library with optional values (`[?key]`, `.?field`) and [`matches`],
/// shared by every condition: building it costs far more than an evaluation.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // Both only fail if `matches` is already declared, i.e. if some other crate turned
    // on cel's "regex" feature: its uncached `matches` then serves, with the same
    // semantics.
    let _ = env.add_overload(
        "matches",
        "matches_string_string",
        vec![STRING_TYPE, STRING_TYPE],
        matches,
    );
    let _ = env.add_member_overload(
        "matches",
        "string_matches_string",
        STRING_TYPE,
        vec![STRING_TYPE],
        matches,
    );
    Arc::new(env)
});

/// Compiled `matches()` patterns. The patterns of a config are few and written as
/// literals (each checked, and cached, by [`Condition::compile`]); the bound only
/// matters for patterns computed per request.
static REGEXES: LazyLock<quick_cache::sync::Cache<String, Arc<regex::Regex>>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(1024));

/// `pattern` compiled, from the cache when it was compiled before. Shared as an
/// `Arc` so that every caller uses the one regex and its pool of match caches.
fn regex(pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
    if let Some(re) = REGEXES.get(pattern) {
        return Ok(re);
    }
    let re = Arc::new(regex::Regex::new(pattern)?);
    REGEXES.insert(pattern.to_owned(), Arc::clone(&re));
    Ok(re)
}

/// CEL's `s.matches(re)` and `matches(s, re)`: true when `re` (RE2-like syntax, as
/// the regex crate reads it) matches anywhere in `s`.
fn matches<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let string = |i: usize| {
        args.get(i)
            .and_then(|a| a.downcast_ref::<CelString>())
            .map(|s| s.inner())
            .ok_or_else(|| ExecutionError::function_error("matches", "expects two strings"))
    };
    let (text, pattern) = (string(0)?, string(1)?);
    let re = regex(pattern).map_err(|e| {
        ExecutionError::function_error(
            "matches",
            format!("'{pattern}' is not a valid regex: {}", one_line(&e)),
        )
    })?;
    Ok(CowVal::owned(CelBool::from(re.is_match(text))))
}

/// A regex error on one line: the regex crate draws the pattern and a caret over
/// several.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or_default();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// Why a condition could not be compiled or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// The expression is empty or only whitespace: a `when:` that says nothing is a
    /// mistake, not "always".
    #[error("empty condition: `when:` needs a CEL expression")]
    Empty,
    /// The expression does not parse.
    #[error("invalid condition `{expression}`: {message}")]
    Syntax {
        /// The expression as written.
        expression: Arc<str>,
        /// Every parse error, each with its line and column within the expression.
        message: String,
    },
    /// The expression reads variables that no request will ever define.
    #[error(
        "condition `{expression}` uses unknown variable{} {}; known variables: {known}",
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    )]
    UnknownVariables {
        /// The expression as written.
        expression: Arc<str>,
        /// The unknown names, sorted.
        names: Vec<String>,
        /// The names an expression may use, for the message.
        known: String,
    },
    /// A literal pattern given to `matches()` is not a valid regular expression.
    #[error("condition `{expression}`: invalid regex `{pattern}` for matches(): {message}")]
    InvalidRegex {
        /// The expression as written.
        expression: Arc<str>,
        /// The pattern.
        pattern: String,
        /// What the regex parser said.
        message: String,
    },
    /// Evaluating the expression for this request failed.
    #[error("condition `{expression}` failed: {message}")]
    Evaluation {
        /// The expression as written.
        expression: Arc<str>,
        /// What went wrong, with a hint when a key was missing.
        message: String,
    },
    /// The expression evaluated to something other than a bool.
    #[error("condition `{expression}` gave a {got}, not a bool")]
    NotBool {
        /// The expression as written.
        expression: Arc<str>,
        /// The CEL type of the result.
        got: String,
    },
}

/// A compiled `when:` expression, shared by every stream of its route (cloning it
/// shares the compiled program).
#[derive(Debug, Clone)]
pub struct Condition {
    inner: Arc<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    source: Arc<str>,
    program: Program,
    needs: Needs,
}

// Every stream of a route evaluates the same condition, from any worker thread.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Condition>();
};

impl Condition {
    /// Parses `source` and checks the names it uses, so that a mistake is refused
    /// when the config loads rather than on every request.
    pub fn compile(source: &str) -> Result<Condition, ConditionError> {
        if source.trim().is_empty() {
            return Err(ConditionError::Empty);
        }
        let shared: Arc<str> = Arc::from(source);
        let program = ENV
            .compile(source)
            .map_err(|errors| ConditionError::Syntax {
                expression: Arc::clone(&shared),
                message: parse_errors_message(&errors),
            })?;

        let mut analysis = Analysis::default();
        analysis.walk(program.expression(), &mut Vec::new());
        if let Some((pattern, message)) = analysis.bad_regex {
            return Err(ConditionError::InvalidRegex {
                expression: shared,
                pattern: pattern.to_string(),
                message,
            });
        }
        let unknown: Vec<String> = analysis
            .usage
            .keys()
            .filter(|name| !is_known(name))
            .map(|name| name.to_string())
            .collect();
        if !unknown.is_empty() {
            return Err(ConditionError::UnknownVariables {
                expression: shared,
                names: unknown,
                known: known_names(),
            });
        }
        let needs = Needs::from_usage(&analysis.usage);
        Ok(Condition {
            inner: Arc::new(Compiled {
                source: shared,
                program,
                needs,
            }),
        })
    }

    /// The expression as written, for logs and the admin API.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Decides for one request; an expression that cannot be evaluated is an error,
    /// never `false`, so that the processor's failure policy decides.
    pub fn evaluate(&self, ctx: &RequestCtx, headers: &Headers) -> Result<bool, ConditionError> {
        let compiled = &*self.inner;
        let bindings = Bindings::build(&compiled.needs, ctx, headers);
        let mut context = Context::with_env(Arc::clone(&ENV));
        context.set_variable_resolver(&bindings);
        match compiled.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(ConditionError::NotBool {
                expression: Arc::clone(&compiled.source),
                got: other.type_of().to_string(),
            }),
            Err(e) => Err(ConditionError::Evaluation {
                expression: Arc::clone(&compiled.source),
                message: execution_message(&e),
            }),
        }
    }
}

/// One line per parse error, each with its position in the expression.
fn parse_errors_message(errors: &ParseErrors) -> String {
    let mut out = String::new();
    for (i, e) in errors.errors.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let (line, column) = e.pos;
        if line > 0 && column > 0 {
            out.push_str(&format!("line {line}, column {column}: {}", e.msg));
        } else {
            out.push_str(&e.msg);
        }
    }
    if out.is_empty() {
        out.push_str("does not parse");
    }
    out
}

fn execution_message(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(key) => {
            format!("no such key: {key} (test for it first with `in`, `has()` or `[?key]`)")
        }
        other => other.to_string(),
    }
}

fn is_known(name: &str) -> bool {
    GATEWAY_VARIABLES.contains(&name)
        || ATTRIBUTE_ROOTS.contains(&name)
        || ENV.types().find_type(name).is_some()
}

fn known_names() -> String {
    let mut out: Vec<&str> = GATEWAY_VARIABLES.to_vec();
    out.extend(ATTRIBUTE_ROOTS);
    let types: Vec<&str> = TYPE_NAME_CANDIDATES
        .iter()
        .copied()
        .filter(|t| ENV.types().find_type(t).is_some())
        .collect();
    let mut s = out.join(", ");
    if !types.is_empty() {
        s.push_str(" (and the type names ");
        s.push_str(&types.join(", "));
        s.push(')');
    }
    s
}

/// How an expression uses a variable, or a field of one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Usage {
    /// The whole value: compared, iterated, passed to a function, ...
    Whole,
    /// Only these fields (map keys), each used as its usage says.
    Fields(BTreeMap<String, Usage>),
}

impl Usage {
    /// Records the use of the value at `path` below this one.
    fn record(&mut self, path: &[&str]) {
        let Some((first, rest)) = path.split_first() else {
            *self = Usage::Whole;
            return;
        };
        if let Usage::Fields(fields) = self {
            fields
                .entry((*first).to_string())
                .or_insert_with(|| Usage::Fields(BTreeMap::new()))
                .record(rest);
        }
    }

    /// The usage of field `name`: `None` when the field is never read.
    fn field(&self, name: &str) -> Option<&Usage> {
        match self {
            Usage::Whole => Some(&Usage::Whole),
            Usage::Fields(fields) => fields.get(name),
        }
    }

    /// The keys read, or `None` when any key may be.
    fn keys(&self) -> Option<Vec<&str>> {
        match self {
            Usage::Whole => None,
            Usage::Fields(fields) => Some(fields.keys().map(String::as_str).collect()),
        }
    }
}

/// What one walk of the expression found.
#[derive(Default)]
struct Analysis<'e> {
    /// Free variable name -> how it is used.
    usage: BTreeMap<&'e str, Usage>,
    /// The first literal `matches()` pattern that is not a valid regex, and why.
    bad_regex: Option<(&'e str, String)>,
}

impl<'e> Analysis<'e> {
    fn walk(&mut self, e: &'e IdedExpr, bound: &mut Vec<&'e str>) {
        if let Some((root, path)) = self.path(e, bound) {
            self.usage
                .entry(root)
                .or_insert_with(|| Usage::Fields(BTreeMap::new()))
                .record(&path);
            return;
        }
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            // A free identifier is a path of its own; a bound one needs nothing.
            Expr::Ident(_) => {}
            Expr::Select(select) => self.walk(&select.operand, bound),
            Expr::Call(call) => {
                self.check_regex(call);
                if let Some(target) = &call.target {
                    if !self.is_namespace(target, bound) {
                        self.walk(target, bound);
                    }
                }
                for arg in &call.args {
                    self.walk(arg, bound);
                }
            }
            Expr::List(list) => {
                for element in &list.elements {
                    self.walk(element, bound);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    self.walk_entry(&entry.expr, bound);
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    self.walk_entry(&entry.expr, bound);
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, bound);
                self.walk(&c.accu_init, bound);
                let depth = bound.len();
                bound.push(&c.accu_var);
                bound.push(&c.iter_var);
                if let Some(v) = &c.iter_var2 {
                    bound.push(v);
                }
                self.walk(&c.loop_cond, bound);
                self.walk(&c.loop_step, bound);
                self.walk(&c.result, bound);
                bound.truncate(depth);
            }
        }
    }

    fn walk_entry(&mut self, entry: &'e EntryExpr, bound: &mut Vec<&'e str>) {
        match entry {
            EntryExpr::StructField(field) => self.walk(&field.value, bound),
            EntryExpr::MapEntry(entry) => {
                self.walk(&entry.key, bound);
                self.walk(&entry.value, bound);
            }
        }
    }

    /// `e` as a free variable and the fields read below it, when `e` only reads
    /// fields by constant names: `a`, `a.b`, `a["b"]`, `a[?"b"]`, `a.?b`,
    /// `has(a.b)`, and `"b" in a` (which reads `a.b`'s presence).
    fn path(&self, e: &'e IdedExpr, bound: &[&'e str]) -> Option<(&'e str, Vec<&'e str>)> {
        match &e.expr {
            Expr::Ident(name) if !bound.contains(&name.as_str()) && !name.starts_with('@') => {
                Some((name, Vec::new()))
            }
            Expr::Select(select) => {
                let (root, mut path) = self.path(&select.operand, bound)?;
                path.push(&select.field);
                Some((root, path))
            }
            Expr::Call(call) if call.target.is_none() && call.args.len() == 2 => {
                let (container, key) = match call.func_name.as_str() {
                    operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT => {
                        (&call.args[0], &call.args[1])
                    }
                    operators::IN => (&call.args[1], &call.args[0]),
                    _ => return None,
                };
                let key = string_literal(key)?;
                let (root, mut path) = self.path(container, bound)?;
                path.push(key);
                Some((root, path))
            }
            _ => None,
        }
    }

    /// True for `optional` in `optional.of(x)`: a function's namespace, not a
    /// variable, unless the expression binds the name itself.
    fn is_namespace(&self, target: &IdedExpr, bound: &[&str]) -> bool {
        matches!(&target.expr, Expr::Ident(name)
            if FUNCTION_NAMESPACES.contains(&name.as_str()) && !bound.contains(&name.as_str()))
    }

    /// Compiles the pattern of `s.matches("...")` / `matches(s, "...")` now, so that
    /// a bad one fails the config rather than every request, and a good one is cached
    /// before the first request.
    fn check_regex(&mut self, call: &'e cel::common::ast::CallExpr) {
        if call.func_name != "matches" || self.bad_regex.is_some() {
            return;
        }
        let pattern = match (&call.target, call.args.as_slice()) {
            (Some(_), [pattern]) | (None, [_, pattern]) => string_literal(pattern),
            _ => None,
        };
        if let Some(pattern) = pattern {
            if let Err(e) = regex(pattern) {
                self.bad_regex = Some((pattern, one_line(&e)));
            }
        }
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// The fixed fields of `request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestField {
    Method,
    Path,
    UrlPath,
    Query,
    Host,
    Scheme,
    Id,
    Headers,
}

impl RequestField {
    const ALL: [RequestField; 8] = [
        RequestField::Method,
        RequestField::Path,
        RequestField::UrlPath,
        RequestField::Query,
        RequestField::Host,
        RequestField::Scheme,
        RequestField::Id,
        RequestField::Headers,
    ];

    fn name(self) -> &'static str {
        REQUEST_FIELDS[self as usize]
    }
}

/// Which keys of a map to build: `None` for all of them.
type Keys = Option<Vec<Box<str>>>;

fn keys_of(usage: &Usage) -> Keys {
    usage
        .keys()
        .map(|keys| keys.into_iter().map(Box::from).collect())
}

fn wanted(keys: &Keys, key: &str) -> bool {
    keys.as_ref()
        .is_none_or(|keys| keys.iter().any(|k| &**k == key))
}

/// What to build for an evaluation, decided at compile time from [`Usage`].
#[derive(Debug, Default)]
struct Needs {
    /// `request`, when read.
    request: Option<RequestNeeds>,
    route: bool,
    /// `metadata` namespaces.
    metadata: Option<Keys>,
    /// `grpc_metadata` keys.
    grpc_metadata: Option<Keys>,
    /// Attribute roots read, each with the keys below it that are read.
    roots: Vec<(&'static str, Keys)>,
}

#[derive(Debug, Default)]
struct RequestNeeds {
    /// The fixed fields read.
    fields: Vec<RequestField>,
    /// The header names read, when `headers` is read.
    headers: Keys,
    /// The full names (`request.time`) of the other `request.*` attributes read, or
    /// `None` for all of them.
    attributes: Option<Vec<Box<str>>>,
}

impl Needs {
    fn from_usage(usage: &BTreeMap<&str, Usage>) -> Needs {
        let mut needs = Needs::default();
        for (&name, usage) in usage {
            match name {
                "request" => needs.request = Some(RequestNeeds::from_usage(usage)),
                "route" => needs.route = true,
                "metadata" => needs.metadata = Some(keys_of(usage)),
                "grpc_metadata" => needs.grpc_metadata = Some(keys_of(usage)),
                _ => {
                    if let Some(root) = ATTRIBUTE_ROOTS.iter().find(|r| **r == name) {
                        needs.roots.push((*root, keys_of(usage)));
                    }
                }
            }
        }
        needs
    }
}

impl RequestNeeds {
    fn from_usage(usage: &Usage) -> RequestNeeds {
        let fields = RequestField::ALL
            .into_iter()
            .filter(|f| usage.field(f.name()).is_some())
            .collect();
        let headers = match usage.field(RequestField::Headers.name()) {
            Some(headers) => keys_of(headers),
            None => None,
        };
        let attributes = match usage {
            Usage::Whole => None,
            Usage::Fields(fields) => Some(
                fields
                    .keys()
                    .filter(|k| !REQUEST_FIELDS.contains(&k.as_str()))
                    .map(|k| format!("request.{k}").into())
                    .collect(),
            ),
        };
        RequestNeeds {
            fields,
            headers,
            attributes,
        }
    }
}

type Map<'v> = HashMap<CelMapKey<'v>, Box<dyn Val + 'v>>;

/// The variables of one evaluation, borrowing from the request.
struct Bindings<'v> {
    vars: Vec<(&'static str, Box<dyn Val + 'v>)>,
}

impl VariableResolver for Bindings<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        self.vars
            .iter()
            .find(|(name, _)| *name == variable)
            .map(|(_, value)| CowVal::Borrowed(&**value))
    }
}

impl<'v> Bindings<'v> {
    fn build(needs: &Needs, ctx: &'v RequestCtx, headers: &'v Headers) -> Bindings<'v> {
        let mut vars: Vec<(&'static str, Box<dyn Val + 'v>)> = Vec::with_capacity(
            usize::from(needs.request.is_some())
                + usize::from(needs.route)
                + usize::from(needs.metadata.is_some())
                + usize::from(needs.grpc_metadata.is_some())
                + needs.roots.len(),
        );
        if let Some(request) = &needs.request {
            vars.push(("request", Box::new(request_map(request, ctx, headers))));
        }
        if needs.route {
            vars.push(("route", Box::new(CelString::from(ctx.route()))));
        }
        if let Some(keys) = &needs.metadata {
            let map: Map<'v> = ctx
                .metadata
                .iter()
                .filter(|(k, _)| wanted(keys, k))
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_val(v)))
                .collect();
            vars.push(("metadata", Box::new(CelMap::from(map))));
        }
        if let Some(keys) = &needs.grpc_metadata {
            let mut map = Map::new();
            for (k, v) in &ctx.grpc_metadata {
                if wanted(keys, k) {
                    insert_joined(&mut map, CelMapKey::from(k.as_str()), v);
                }
            }
            vars.push(("grpc_metadata", Box::new(CelMap::from(map))));
        }
        for (root, keys) in &needs.roots {
            vars.push((
                root,
                Box::new(CelMap::from(attribute_root(ctx, root, keys))),
            ));
        }
        Bindings { vars }
    }
}

fn request_map<'v>(needs: &RequestNeeds, ctx: &'v RequestCtx, headers: &'v Headers) -> CelMap<'v> {
    let mut map = Map::with_capacity(needs.fields.len());
    let (url_path, query) = ctx.path.split_once('?').unwrap_or((&ctx.path, ""));
    for field in &needs.fields {
        let value: Box<dyn Val + 'v> = match field {
            RequestField::Method => Box::new(CelString::from(ctx.method.as_str())),
            RequestField::Path => Box::new(CelString::from(ctx.path.as_str())),
            RequestField::UrlPath => Box::new(CelString::from(url_path)),
            RequestField::Query => Box::new(CelString::from(query)),
            RequestField::Host => Box::new(CelString::from(ctx.authority.as_str())),
            RequestField::Scheme => Box::new(CelString::from(
                headers.get_str(":scheme").unwrap_or_default(),
            )),
            RequestField::Id => Box::new(CelString::from(ctx.request_id.as_str())),
            RequestField::Headers => Box::new(header_map(headers, &needs.headers)),
        };
        map.insert(CelMapKey::from(field.name()), value);
    }
    let mut attribute = |field: &'v str, value: &'v serde_json::Value| {
        if !REQUEST_FIELDS.contains(&field) {
            map.insert(CelMapKey::from(field), json_val(value));
        }
    };
    match &needs.attributes {
        None => {
            for (name, value) in &ctx.attributes {
                if let Some(field) = name.strip_prefix("request.") {
                    attribute(field, value);
                }
            }
        }
        Some(wanted) => {
            for full in wanted {
                if let Some((name, value)) = ctx.attributes.get_key_value(&**full) {
                    // The field name borrowed from the request, which outlives `needs`.
                    if let Some(field) = name.strip_prefix("request.") {
                        attribute(field, value);
                    }
                }
            }
        }
    }
    CelMap::from(map)
}

/// The request headers as Envoy's `request.headers`: lower-case names, the values
/// of a repeated name joined with `,`.
fn header_map<'v>(headers: &'v Headers, keys: &Keys) -> CelMap<'v> {
    let mut map = Map::new();
    for (name, value) in headers.iter() {
        let key = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            CelMapKey::from(name.to_ascii_lowercase())
        } else {
            CelMapKey::from(name)
        };
        if let CelMapKey::String(s) = &key {
            if !wanted(keys, s.inner()) {
                continue;
            }
        }
        match String::from_utf8_lossy(value) {
            std::borrow::Cow::Borrowed(v) => insert_joined(&mut map, key, v),
            std::borrow::Cow::Owned(v) => insert_joined_owned(&mut map, key, v),
        }
    }
    CelMap::from(map)
}

/// Adds `value` under `key`, after a `,` when the key is already there.
fn insert_joined<'v>(map: &mut Map<'v>, key: CelMapKey<'v>, value: &'v str) {
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(Box::new(CelString::from(value)));
        }
        Entry::Occupied(mut e) => join(e.get_mut(), value),
    }
}

fn insert_joined_owned<'v>(map: &mut Map<'v>, key: CelMapKey<'v>, value: String) {
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(Box::new(CelString::from(value)));
        }
        Entry::Occupied(mut e) => join(e.get_mut(), &value),
    }
}

fn join<'v>(existing: &mut Box<dyn Val + 'v>, value: &str) {
    let prev = existing
        .downcast_ref::<CelString>()
        .map(|s| s.inner())
        .unwrap_or_default();
    let mut joined = String::with_capacity(prev.len() + 1 + value.len());
    joined.push_str(prev);
    joined.push(',');
    joined.push_str(value);
    *existing = Box::new(CelString::from(joined));
}

/// The attributes under `root.`, keyed by the rest of their name.
fn attribute_root<'v>(ctx: &'v RequestCtx, root: &str, keys: &Keys) -> Map<'v> {
    let mut map = Map::new();
    for (name, value) in &ctx.attributes {
        let Some(field) = name
            .strip_prefix(root)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            continue;
        };
        if wanted(keys, field) {
            map.insert(CelMapKey::from(field), json_val(value));
        }
    }
    map
}

/// A JSON value as a CEL value, borrowing its strings.
fn json_val(value: &serde_json::Value) -> Box<dyn Val + '_> {
    use serde_json::Value as J;
    match value {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => number(n),
        J::String(s) => Box::new(CelString::from(s.as_str())),
        J::Array(items) => Box::new(CelList::from(
            items.iter().map(json_val).collect::<Vec<_>>(),
        )),
        J::Object(fields) => Box::new(CelMap::from(
            fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), json_val(v)))
                .collect::<Map<'_>>(),
        )),
    }
}

/// An integral number as an `int` (a `uint` past `i64::MAX`), anything else as a
/// `double`: Envoy sends every number as a double, ports and sizes included.
fn number(n: &serde_json::Number) -> Box<dyn Val + 'static> {
    if let Some(i) = n.as_i64() {
        return Box::new(CelInt::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Box::new(CelUInt::from(u));
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    // 2^63 is exact as a double; anything in [-2^63, 2^63) converts without loss.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) {
        Box::new(CelInt::from(f as i64))
    } else {
        Box::new(CelDouble::from(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> RequestCtx {
        let mut ctx = RequestCtx::new(Arc::from("api"), 0);
        ctx.method = "GET".into();
        ctx.path = "/v1/items/7?x=1&y=2".into();
        ctx.authority = "example.com".into();
        ctx.request_id = "req-1".into();
        ctx
    }

    fn headers() -> Headers {
        [
            (":method", "GET"),
            (":path", "/v1/items/7?x=1&y=2"),
            (":authority", "example.com"),
            (":scheme", "https"),
            ("x-tenant-id", "acme"),
            ("accept", "text/html"),
            ("accept", "application/json"),
        ]
        .into_iter()
        .collect()
    }

    fn eval(source: &str, ctx: &RequestCtx, headers: &Headers) -> Result<bool, ConditionError> {
        Condition::compile(source)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
            .evaluate(ctx, headers)
    }

    fn holds(source: &str) -> bool {
        eval(source, &ctx(), &headers()).unwrap_or_else(|e| panic!("{source}: {e}"))
    }

    #[test]
    fn method_inequality() {
        let c = Condition::compile(r#"request.method != "OPTIONS""#).unwrap();
        let mut ctx = ctx();
        assert!(c.evaluate(&ctx, &headers()).unwrap());
        ctx.method = "OPTIONS".into();
        assert!(!c.evaluate(&ctx, &headers()).unwrap());
    }

    #[test]
    fn header_equality_and_absence() {
        assert!(holds(r#"request.headers["x-tenant-id"] == "acme""#));
        assert!(!holds(r#"request.headers["x-tenant-id"] == "other""#));
        assert!(holds(r#""x-tenant-id" in request.headers"#));
        assert!(!holds(r#""x-missing" in request.headers"#));
        assert!(holds(
            r#"!("x-missing" in request.headers) || request.headers["x-missing"] == "1""#
        ));
        // Pseudo headers are there, as in Envoy's request.headers.
        assert!(holds(r#"request.headers[":authority"] == "example.com""#));
    }

    #[test]
    fn missing_header_is_an_error_not_false() {
        let err = eval(r#"request.headers["x-missing"] == "1""#, &ctx(), &headers())
            .expect_err("a missing key must not read as false");
        assert!(
            matches!(&err, ConditionError::Evaluation { message, .. } if message.contains("x-missing")),
            "{err}"
        );
        assert!(err.to_string().contains("`in`"), "{err}");
        // Not even under negation.
        assert!(eval(
            r#"!(request.headers["x-missing"] == "1")"#,
            &ctx(),
            &headers()
        )
        .is_err());
    }

    #[test]
    fn repeated_header_values_are_joined_with_commas() {
        assert!(holds(
            r#"request.headers.accept == "text/html,application/json""#
        ));
        let h: Headers = [("X-Upper", "a"), ("x-upper", "b")].into_iter().collect();
        assert!(eval(r#"request.headers["x-upper"] == "a,b""#, &ctx(), &h).unwrap());
    }

    #[test]
    fn non_utf8_header_value_is_present_but_lossy() {
        let mut h = Headers::new();
        h.push("x-bin", bytes::Bytes::from_static(b"a\xffb"));
        assert!(eval(r#""x-bin" in request.headers"#, &ctx(), &h).unwrap());
        assert!(eval(r#"request.headers["x-bin"] == "a\uFFFDb""#, &ctx(), &h).unwrap());
    }

    #[test]
    fn url_path_query_and_the_other_request_fields() {
        assert!(holds(r#"request.path == "/v1/items/7?x=1&y=2""#));
        assert!(holds(r#"request.url_path == "/v1/items/7""#));
        assert!(holds(r#"request.query == "x=1&y=2""#));
        assert!(holds(r#"request.host == "example.com""#));
        assert!(holds(r#"request.scheme == "https""#));
        assert!(holds(r#"request.id == "req-1""#));

        let mut c = ctx();
        c.path = "/plain".into();
        let none = Headers::new();
        assert!(eval(
            r#"request.url_path == "/plain" && request.query == """#,
            &c,
            &none
        )
        .unwrap());
        assert!(eval(r#"request.scheme == """#, &c, &none).unwrap());
    }

    #[test]
    fn envoy_attributes_by_their_first_segment() {
        let mut c = ctx();
        c.attributes
            .insert("xds.route_name".into(), json!("orders"));
        c.attributes.insert("source.port".into(), json!(8080.0));
        c.attributes.insert("connection.mtls".into(), json!(true));
        c.attributes
            .insert("request.protocol".into(), json!("HTTP/2"));
        // Fixed fields win over an attribute of the same name.
        c.attributes.insert("request.method".into(), json!("POST"));
        let h = headers();
        assert!(eval(r#"xds.route_name == "orders""#, &c, &h).unwrap());
        assert!(eval("source.port == 8080", &c, &h).unwrap());
        assert!(eval("connection.mtls", &c, &h).unwrap());
        assert!(eval(r#"request.protocol == "HTTP/2""#, &c, &h).unwrap());
        assert!(eval(r#"request.method == "GET""#, &c, &h).unwrap());
        // The whole request, as a map, carries the attributes too.
        assert!(eval(
            r#"request["protocol"] == "HTTP/2" && size(request) == 9"#,
            &c,
            &h
        )
        .unwrap());
        // A root Envoy sent nothing under is an empty map: has() answers.
        assert!(!eval("has(upstream.address)", &c, &h).unwrap());
        assert!(eval("has(xds.route_name)", &c, &h).unwrap());
    }

    #[test]
    fn json_numbers() {
        let mut c = ctx();
        c.attributes.insert("upstream.ratio".into(), json!(0.5));
        c.attributes.insert("upstream.big".into(), json!(u64::MAX));
        c.attributes
            .insert("upstream.list".into(), json!([1.0, "a", null]));
        let h = Headers::new();
        assert!(eval("upstream.ratio == 0.5", &c, &h).unwrap());
        assert!(eval("upstream.big == 18446744073709551615u", &c, &h).unwrap());
        assert!(eval(r#"upstream.list == [1, "a", null]"#, &c, &h).unwrap());
    }

    #[test]
    fn metadata_lookup() {
        let mut c = ctx();
        c.metadata.insert(
            "envoy.filters.http.jwt_authn".into(),
            json!({"payload": {"sub": "alice", "scope": ["read", "write"]}}),
        );
        c.metadata.insert("acme".into(), json!({"tier": "gold"}));
        let h = Headers::new();
        assert!(eval(
            r#"metadata["envoy.filters.http.jwt_authn"].payload.sub == "alice""#,
            &c,
            &h
        )
        .unwrap());
        assert!(eval(
            r#""write" in metadata["envoy.filters.http.jwt_authn"].payload.scope"#,
            &c,
            &h
        )
        .unwrap());
        assert!(eval(r#"metadata.acme.tier == "gold""#, &c, &h).unwrap());
        assert!(eval("size(metadata) == 2", &c, &h).unwrap());
        assert!(eval(r#"metadata.nope.tier == "gold""#, &c, &h).is_err());
    }

    #[test]
    fn grpc_metadata_and_route() {
        let mut c = ctx();
        c.grpc_metadata = vec![
            ("x-shard".into(), "3".into()),
            ("x-tag".into(), "a".into()),
            ("x-tag".into(), "b".into()),
        ];
        let h = Headers::new();
        assert!(eval(r#"grpc_metadata["x-shard"] == "3""#, &c, &h).unwrap());
        assert!(eval(r#"grpc_metadata["x-tag"] == "a,b""#, &c, &h).unwrap());
        assert!(eval(r#"grpc_metadata["x-none"] == "1""#, &c, &h).is_err());
        assert!(eval(r#"route == "api""#, &c, &h).unwrap());
        assert!(!eval(r#"route == "web""#, &c, &h).unwrap());
    }

    #[test]
    fn a_result_that_is_not_a_bool_is_an_error_naming_its_type() {
        let err = eval("request.method", &ctx(), &headers()).unwrap_err();
        assert!(
            matches!(&err, ConditionError::NotBool { got, .. } if got == "string"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("gave a string, not a bool"),
            "{err}"
        );
        let err = eval("size(request.headers)", &ctx(), &headers()).unwrap_err();
        assert!(matches!(&err, ConditionError::NotBool { got, .. } if got == "int"));
    }

    #[test]
    fn syntax_error_names_its_position() {
        let err = Condition::compile(r#"request.method == "GET" &&"#).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConditionError::Syntax { .. }), "{text}");
        assert!(text.contains("line 1, column "), "{text}");
        let err = Condition::compile("request.method ==\n  == \"GET\"").unwrap_err();
        assert!(err.to_string().contains("line 2, column 3"), "{err}");
    }

    #[test]
    fn unknown_variables_are_refused_at_compile_time() {
        let err = Condition::compile(r#"reqest.method == "GET" || foo"#).unwrap_err();
        match &err {
            ConditionError::UnknownVariables { names, known, .. } => {
                assert_eq!(names, &["foo", "reqest"]);
                assert!(
                    known.contains("request") && known.contains("xds"),
                    "{known}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("unknown variables foo, reqest"),
            "{err}"
        );
        // Not a variable: comprehension variables, type names, function namespaces.
        for ok in [
            r#"request.headers.exists(name, name.startsWith("x-"))"#,
            "[1, 2].all(x, x > 0)",
            "type(route) == string",
            "optional.of(route).hasValue()",
        ] {
            assert!(holds(ok), "{ok}");
        }
        // A comprehension variable is bound only inside its macro.
        assert!(matches!(
            Condition::compile("[1].all(x, x > 0) && x == 1"),
            Err(ConditionError::UnknownVariables { .. })
        ));
    }

    #[test]
    fn empty_source_is_refused() {
        assert_eq!(Condition::compile("").unwrap_err(), ConditionError::Empty);
        assert_eq!(
            Condition::compile(" \n\t ").unwrap_err(),
            ConditionError::Empty
        );
    }

    #[test]
    fn matches_with_a_regex() {
        assert!(holds(r#"request.url_path.matches("^/v[0-9]+/items/")"#));
        assert!(!holds(r#"request.url_path.matches("^/v[0-9]+/users/")"#));
        assert!(holds(r#"matches(request.host, "^example\\.")"#));
        // A literal pattern is compiled once, by compile(), not per request.
        assert!(REGEXES.get("^/v[0-9]+/items/").is_some());
        let err = Condition::compile(r#"request.path.matches("(unclosed")"#).unwrap_err();
        assert!(
            matches!(&err, ConditionError::InvalidRegex { pattern, .. } if pattern == "(unclosed"),
            "{err:?}"
        );
        // A pattern only known per request is checked per request, as an error.
        assert!(eval(
            r#"request.path.matches(request.id + "(")"#,
            &ctx(),
            &headers()
        )
        .is_err());
    }

    #[test]
    fn string_functions() {
        assert!(holds(r#"request.path.startsWith("/v1/")"#));
        assert!(!holds(r#"request.path.startsWith("/v2/")"#));
        assert!(holds(
            r#"request.host.endsWith(".com") && request.query.contains("y=2")"#
        ));
    }

    #[test]
    fn has_and_optional_access_test_for_absence() {
        assert!(holds("has(request.headers.accept)"));
        assert!(!holds("has(request.headers.authorization)"));
        // has() takes a field, not an index: a name with a dash needs `in` or `[?]`.
        assert!(matches!(
            Condition::compile(r#"has(request.headers["x-tenant-id"])"#),
            Err(ConditionError::Syntax { .. })
        ));
        assert!(holds(
            r#"request.headers[?"x-tenant-id"].orValue("") == "acme""#
        ));
        assert!(holds(
            r#"request.headers[?"x-missing"].orValue("none") == "none""#
        ));
        assert!(holds("request.headers.?accept.hasValue()"));
        assert!(!holds("request.headers.?authorization.hasValue()"));
    }

    #[test]
    fn only_what_the_expression_reads_is_built() {
        let c = Condition::compile(r#"request.headers["x-tenant-id"] == "acme""#).unwrap();
        let needs = &c.inner.needs;
        let request = needs.request.as_ref().unwrap();
        assert_eq!(request.fields, [RequestField::Headers]);
        assert_eq!(request.headers, Some(vec![Box::from("x-tenant-id")]));
        assert_eq!(request.attributes, Some(vec![]));
        assert!(!needs.route && needs.metadata.is_none() && needs.roots.is_empty());

        // Any use of the whole map builds all of it.
        let c =
            Condition::compile(r#""a" in request.headers && size(request.headers) > 0"#).unwrap();
        assert_eq!(c.inner.needs.request.as_ref().unwrap().headers, None);
        let c = Condition::compile("xds.route_name == route").unwrap();
        assert!(c.inner.needs.route);
        assert_eq!(
            c.inner.needs.roots,
            [("xds", Some(vec![Box::from("route_name")]))]
        );
    }

    #[test]
    fn restricted_maps_keep_full_map_semantics() {
        // Each reads some keys by name and the map as a whole elsewhere.
        assert!(holds(
            r#"request.headers.accept != "" && size(request.headers) == 6"#
        ));
        assert!(holds(
            r#"request.headers["x-tenant-id"] == "acme" && request.headers.exists(k, k == ":scheme")"#
        ));
        assert!(holds(
            r#"request.headers[request.headers["x-tenant-id"] == "acme" ? "accept" : "x"] != """#
        ));
        // A name shadowed by a comprehension variable is not the request.
        assert!(holds(
            r#"[{"method": "PUT"}].exists(request, request.method == "PUT")"#
        ));
    }

    #[test]
    fn a_condition_is_shared_between_threads() {
        let c = Condition::compile(r#"request.method == "GET""#).unwrap();
        let other = c.clone();
        assert_eq!(other.source(), r#"request.method == "GET""#);
        let handle = std::thread::spawn(move || other.evaluate(&ctx(), &headers()));
        assert_eq!(handle.join().unwrap(), Ok(true));
        assert!(Arc::ptr_eq(&c.inner, &c.clone().inner));
    }
}
