//! One registry for every processor a config can name: built-ins and a user's own go
//! in the same way (a name, a settings type, a constructor), so config loading,
//! `check-config`, `/config`, `/routes`, metrics, traces and reload never special-case
//! a built-in.
//!
//! A user's binary registers its processors and runs the same command line:
//!
//! ```no_run
//! use extproc_gateway::prelude::*;
//! use extproc_gateway::registry::{BuildContext, ProcessorSettings, Registry, RegistryError};
//! use serde::{Deserialize, Serialize};
//!
//! /// `- require_tenant: {header: x-tenant-id}`
//! #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct RequireTenant {
//!     header: String,
//! }
//!
//! impl Processor for RequireTenant {
//!     type State = ();
//!     fn name(&self) -> &str { "require_tenant" }
//!     fn needs(&self) -> PhaseNeeds { PhaseNeeds::REQUEST_HEADERS }
//!     fn new_state(&self) {}
//!     async fn on_request_headers(&self, _: &mut RequestCtx, _: &mut (), h: &HeadersPhase, _: &mut Mutations) -> HookResult {
//!         Ok(match h.headers.get(&self.header) {
//!             Some(_) => Flow::Continue,
//!             None => Flow::Respond(ImmediateResponse::json_error(400, "a tenant is required")),
//!         })
//!     }
//! }
//!
//! impl ProcessorSettings for RequireTenant {
//!     type Processor = RequireTenant;
//!     fn build(&self, _: &BuildContext<'_>) -> Result<RequireTenant, String> {
//!         Ok(self.clone())
//!     }
//! }
//!
//! fn main() -> Result<std::process::ExitCode, RegistryError> {
//!     let registry = Registry::builtin().with::<RequireTenant>("require_tenant")?;
//!     Ok(extproc_gateway::cli::run(registry))
//! }
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::value::MapDeserializer;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::chain::{ChainBuilder, ProcessorOptions};
use crate::condition::Condition;
use crate::processor::OnError;
pub use extproc_gateway_api::settings::{
    duration_schema, optional_duration_schema, BuildContext, ProcessorSettings, Registrar,
    RequestHeaderWrites, DURATION_PATTERN,
};

/// A registration the registry refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two processors under one name.
    #[error("a processor named `{0}` is already registered")]
    Duplicate(String),
    /// Not a name YAML can hold as a processor entry's key.
    #[error("`{0}` cannot name a processor: use lower-case letters, digits and `_`, starting with a letter, and not `when` or `on_error`")]
    BadName(String),
}

/// Keys of a processor entry that are not processor names.
const ENTRY_KEYS: [&str; 2] = ["when", "on_error"];

/// The processors a config can name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn Kind>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    /// Every built-in processor, under its documented name: the built-ins crate
    /// registers its own, as any crate of processors would.
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        extproc_gateway_processors::register(&mut registry);
        registry
    }

    /// No processors at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds a processor type under `name` (see [`Registry::register`]), for chaining.
    pub fn with<S: ProcessorSettings>(mut self, name: &str) -> Result<Self, RegistryError> {
        self.register::<S>(name)?;
        Ok(self)
    }

    /// Adds a processor type: config entries named `name` are read as `S` and build
    /// `S::Processor`.
    pub fn register<S: ProcessorSettings>(&mut self, name: &str) -> Result<(), RegistryError> {
        let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !ENTRY_KEYS.contains(&name);
        if !valid {
            return Err(RegistryError::BadName(name.to_string()));
        }
        if self.kinds.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        self.kinds
            .insert(name.to_string(), Arc::new(KindOf::<S>(PhantomData)));
        Ok(())
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// Runs `read` with this registry naming the processors of any config it reads on
    /// this thread (serde gives a `Deserialize` impl no context of its own).
    pub fn scope<T>(&self, read: impl FnOnce() -> T) -> T {
        struct Restore(Option<Registry>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                SCOPE.with(|s| *s.borrow_mut() = previous);
            }
        }
        let previous = SCOPE.with(|s| s.borrow_mut().replace(self.clone()));
        let _restore = Restore(previous);
        read()
    }

    fn listed(&self) -> String {
        self.names().collect::<Vec<_>>().join(", ")
    }
}

impl Registrar for Registry {
    type Error = RegistryError;

    fn add<S: ProcessorSettings>(&mut self, name: &str) -> Result<(), RegistryError> {
        self.register::<S>(name)
    }
}

thread_local! {
    static SCOPE: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

/// The registry in scope on this thread, if any.
fn in_scope() -> Option<Registry> {
    SCOPE.with(|s| s.borrow().clone())
}

/// A registered processor type, with its settings type erased.
trait Kind: Send + Sync {
    fn read(
        &self,
        settings: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<Arc<dyn Configured>, erased_serde::Error>;
    /// The JSON Schema of the settings (a reference into `generator`'s definitions).
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
}

struct KindOf<S>(PhantomData<fn() -> S>);

impl<S: ProcessorSettings> Kind for KindOf<S> {
    fn read(
        &self,
        settings: &mut dyn erased_serde::Deserializer<'_>,
    ) -> Result<Arc<dyn Configured>, erased_serde::Error> {
        let s: S = erased_serde::deserialize(settings)?;
        s.validate().map_err(de::Error::custom)?;
        Ok(Arc::new(s))
    }

    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<S>()
    }
}

/// Settings read from config, with their type erased.
trait Configured: erased_serde::Serialize + fmt::Debug + Send + Sync {
    fn add_to(
        &self,
        chain: ChainBuilder,
        options: ProcessorOptions,
        ctx: &BuildContext<'_>,
    ) -> Result<ChainBuilder, String>;
    fn redacted(&self) -> Arc<dyn Configured>;
    fn request_header_writes(&self) -> RequestHeaderWrites;
    fn claim_header_prefix(&self) -> Option<&str>;
}

erased_serde::serialize_trait_object!(Configured);

impl<S: ProcessorSettings> Configured for S {
    fn add_to(
        &self,
        chain: ChainBuilder,
        options: ProcessorOptions,
        ctx: &BuildContext<'_>,
    ) -> Result<ChainBuilder, String> {
        Ok(chain.processor_with(self.build(ctx)?, options))
    }

    fn redacted(&self) -> Arc<dyn Configured> {
        Arc::new(ProcessorSettings::redacted(self))
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        ProcessorSettings::request_header_writes(self)
    }

    fn claim_header_prefix(&self) -> Option<&str> {
        ProcessorSettings::claim_header_prefix(self)
    }
}

/// One entry of a route's `processors:` list: a registered processor with its
/// settings, and the entry's own keys (`when:`, `on_error:`). Written as a bare name
/// (`- trivial`), or a map of the name to its settings plus the entry keys:
///
/// ```yaml
/// - jwt_auth: {jwks_url: "https://issuer/jwks"}
///   when: request.method != "OPTIONS"   # CEL; false: skipped, its phases not asked for
///   on_error: fail_closed
/// ```
#[derive(Clone)]
pub struct ProcessorSpec {
    name: Arc<str>,
    settings: Arc<dyn Configured>,
    when: Option<Condition>,
    on_error: OnError,
}

impl fmt::Debug for ProcessorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorSpec")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("when", &self.when.as_ref().map(Condition::source))
            .field("on_error", &self.on_error)
            .finish()
    }
}

/// Equal when the names, entry keys and settings (as written) are.
impl PartialEq for ProcessorSpec {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.on_error == other.on_error
            && self.when.as_ref().map(Condition::source)
                == other.when.as_ref().map(Condition::source)
            && settings_value(&*self.settings).ok() == settings_value(&*other.settings).ok()
    }
}

fn settings_value(settings: &dyn Configured) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(settings)
}

impl ProcessorSpec {
    /// An entry built in code: `settings` under `name` (which should be the name the
    /// type is registered under, for the config it renders to load again).
    pub fn new<S: ProcessorSettings>(name: &str, settings: S) -> Self {
        Self {
            name: Arc::from(name),
            settings: Arc::new(settings),
            when: None,
            on_error: OnError::default(),
        }
    }

    /// The same entry, run only for requests `when` holds for.
    pub fn with_when(mut self, when: Condition) -> Self {
        self.when = Some(when);
        self
    }

    /// The same entry with another failure policy.
    pub fn with_on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// The registered name (config, metrics, traces, `x-ext-procs-applied`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry's failure policy.
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// The entry's condition, when it has one.
    pub fn when(&self) -> Option<&Condition> {
        self.when.as_ref()
    }

    /// Builds the processor and appends it to a chain.
    pub fn add_to(
        &self,
        chain: ChainBuilder,
        ctx: &BuildContext<'_>,
    ) -> Result<ChainBuilder, String> {
        let mut options = ProcessorOptions::new()
            .named(self.name.clone())
            .on_error(self.on_error);
        if let Some(when) = &self.when {
            options = options.when(when.clone());
        }
        self.settings.add_to(chain, options, ctx)
    }

    /// See [`ProcessorSettings::request_header_writes`].
    pub fn request_header_writes(&self) -> RequestHeaderWrites {
        self.settings.request_header_writes()
    }

    /// See [`ProcessorSettings::claim_header_prefix`].
    pub fn claim_header_prefix(&self) -> Option<&str> {
        self.settings.claim_header_prefix()
    }

    /// The entry as `/config` shows it: secrets hidden.
    pub fn redacted(&self) -> ProcessorSpec {
        ProcessorSpec {
            settings: self.settings.redacted(),
            ..self.clone()
        }
    }
}

/// Written the way it is read: a bare name when there is nothing else to say, else a
/// map, so a rendered config (`/config`) loads again.
impl Serialize for ProcessorSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let settings = settings_value(&*self.settings).map_err(S::Error::custom)?;
        let no_settings =
            matches!(&settings, serde_json::Value::Object(m) if m.is_empty()) || settings.is_null();
        let default_on_error = self.on_error == OnError::default();
        if no_settings && default_on_error && self.when.is_none() {
            return serializer.serialize_str(&self.name);
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(&*self.name, &settings)?;
        if let Some(when) = &self.when {
            map.serialize_entry("when", when.source())?;
        }
        if !default_on_error {
            map.serialize_entry("on_error", &self.on_error)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ProcessorSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let registry = in_scope().ok_or_else(|| {
            de::Error::custom(
                "processor entries are read with a registry in scope (GatewayConfig::parse_with, or Registry::scope)",
            )
        })?;
        deserializer.deserialize_any(EntryVisitor(registry))
    }
}

/// The schema of one `processors:` entry, for the registry in scope: a bare name (of
/// the processors whose settings all have defaults, as the reader accepts), or a map
/// of exactly one registered name to its settings, with `when:` and `on_error:`.
impl JsonSchema for ProcessorSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ProcessorEntry".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let Some(registry) = in_scope() else {
            return json_schema!({
                "description": "a processor name, or a map of one name to its settings (no registry was in scope: names unchecked)",
                "type": ["string", "object"]
            });
        };
        let when = json_schema!({
            "type": "string",
            "description": "CEL over Envoy's attribute names (request.method, request.path, request.headers[...]); false: the processor is skipped and its phases not asked for"
        });
        let on_error = generator.subschema_for::<OnError>();
        let mut bare = Vec::new();
        let mut entries = Vec::new();
        for (name, kind) in &registry.kinds {
            let takes_none = no_settings(&**kind).is_ok();
            if takes_none {
                bare.push(name.clone());
            }
            let settings = kind.schema(generator);
            let value = if takes_none {
                json_schema!({"anyOf": [settings, {"type": "null"}]})
            } else {
                settings
            };
            entries.push(json_schema!({
                "type": "object",
                "properties": {name.as_str(): value, "when": when.clone(), "on_error": on_error.clone()},
                "required": [name],
                "additionalProperties": false
            }));
        }
        let mut one_of = vec![json_schema!({
            "type": "string",
            "enum": bare,
            "description": "a processor whose settings all have defaults"
        })];
        one_of.extend(entries);
        json_schema!({"oneOf": one_of})
    }
}

struct EntryVisitor(Registry);

impl EntryVisitor {
    fn kind<E: de::Error>(&self, name: &str) -> Result<Arc<dyn Kind>, E> {
        self.0.kinds.get(name).cloned().ok_or_else(|| {
            E::custom(format!(
                "unknown processor `{name}`; registered: {}",
                self.0.listed()
            ))
        })
    }
}

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = ProcessorSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a processor name ({}) or a map of one name to its settings",
            self.0.listed()
        )
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<ProcessorSpec, E> {
        let kind = self.kind(name)?;
        Ok(ProcessorSpec {
            name: Arc::from(name),
            settings: no_settings(&*kind).map_err(E::custom)?,
            when: None,
            on_error: OnError::default(),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ProcessorSpec, A::Error> {
        let mut processor: Option<(Arc<str>, Arc<dyn Configured>)> = None;
        let mut on_error = None;
        let mut when = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "on_error" => on_error = Some(map.next_value::<OnError>()?),
                // Compiled now, so a bad expression is an error at its line.
                "when" => when = Some(map.next_value_seed(ConditionSeed)?),
                name => {
                    if let Some((first, _)) = &processor {
                        return Err(de::Error::custom(format!(
                            "one processor per list entry: `{first}` and `{name}` (write each as its own `- name: {{...}}`)"
                        )));
                    }
                    let kind = self.kind(name)?;
                    let settings = map.next_value_seed(SettingsSeed(kind))?;
                    processor = Some((Arc::from(name), settings));
                }
            }
        }
        let (name, settings) = processor.ok_or_else(|| {
            de::Error::custom(format!(
                "the entry names no processor (one of: {})",
                self.0.listed()
            ))
        })?;
        Ok(ProcessorSpec {
            name,
            settings,
            when,
            on_error: on_error.unwrap_or_default(),
        })
    }
}

/// The settings of a bare name or of `name:` with nothing after it: an empty map, so
/// a settings type with every field defaulted reads, and one that needs a field says
/// which.
fn no_settings(kind: &dyn Kind) -> Result<Arc<dyn Configured>, erased_serde::Error> {
    let empty = MapDeserializer::<_, erased_serde::Error>::new(std::iter::empty::<((), ())>());
    kind.read(&mut <dyn erased_serde::Deserializer>::erase(empty))
}

/// Reads and compiles a `when:` inside the value's own deserializer, so an error
/// carries the line of the expression rather than of the entry.
struct ConditionSeed;

impl<'de> DeserializeSeed<'de> for ConditionSeed {
    type Value = Condition;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Condition, D::Error> {
        let source = String::deserialize(deserializer)?;
        Condition::compile(&source).map_err(de::Error::custom)
    }
}

struct SettingsSeed(Arc<dyn Kind>);

impl<'de> DeserializeSeed<'de> for SettingsSeed {
    type Value = Arc<dyn Configured>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for SettingsSeed {
    type Value = Arc<dyn Configured>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the processor's settings")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        no_settings(&*self.0).map_err(E::custom)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        no_settings(&*self.0).map_err(E::custom)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.0
            .read(&mut <dyn erased_serde::Deserializer>::erase(deserializer))
            .map_err(de::Error::custom)
    }
}
