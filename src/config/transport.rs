//! Transport settings of the config: where the gRPC listener listens (TCP or a Unix
//! socket), its TLS files, and the admin token. Kept apart from the rest of the schema
//! because each of these needs its own parsing (`unix:` addresses, octal modes) and
//! its own care (a secret that must never be printed).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a listener listens: a TCP address (`0.0.0.0:50051`) or a Unix-domain socket
/// (`unix:/run/extproc/gateway.sock`, the `unix:` form gRPC clients use). A Unix
/// socket suits a sidecar: Envoy reaches it through a `pipe` address and nothing
/// outside the pod (or the host) can.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address; port 0 picks a free port.
    Tcp(SocketAddr),
    /// A filesystem path for a Unix-domain socket.
    Unix(PathBuf),
}

impl ListenAddr {
    /// The TCP address, or `None` for a Unix socket.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }

    /// The TCP port, or `None` for a Unix socket.
    pub fn port(&self) -> Option<u16> {
        self.tcp().map(|a| a.port())
    }

    /// The socket path, or `None` for TCP.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        match self {
            ListenAddr::Tcp(_) => None,
            ListenAddr::Unix(p) => Some(p),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        ListenAddr::Tcp(a)
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "`unix:` needs a socket path, e.g. unix:/run/extproc/gateway.sock".into(),
                );
            }
            if path.starts_with("//") {
                return Err(format!(
                    "`{s}`: write a Unix socket as unix:/absolute/path or unix:relative/path"
                ));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("`{s}` is neither ip:port (e.g. 0.0.0.0:50051) nor unix:/path/to.sock")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl schemars::JsonSchema for ListenAddr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ListenAddr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`ip:port` (port 0 picks a free port), or `unix:/path/to.sock` for a Unix-domain socket",
            "pattern": r"^(unix:.+|.+:[0-9]{1,5})$",
            "examples": ["0.0.0.0:50051", "unix:/run/extproc/gateway.sock"]
        })
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// File permissions of a Unix socket the gateway creates, written as octal digits
/// (`0660` or `"0660"`): always read as octal text, never as YAML's decimal 660.
/// Connecting needs write permission, so `0660` lets the owner and the socket's group
/// in (e.g. Envoy sharing a group or a Kubernetes `fsGroup`) and nobody else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl Default for SocketMode {
    fn default() -> Self {
        SocketMode(0o660)
    }
}

impl FromStr for SocketMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if !digits.is_empty() && m <= 0o777 => Ok(SocketMode(m)),
            _ => Err(format!(
                "`{s}` is not a file mode: write octal permission digits such as \"0660\""
            )),
        }
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for SocketMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl schemars::JsonSchema for SocketMode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SocketMode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Quoted octal text, or the digits unquoted (which YAML reads as a number).
        schemars::json_schema!({
            "description": "octal permission digits, e.g. \"0660\"",
            "anyOf": [
                {"type": "string", "pattern": "^(0o)?[0-7]{1,4}$"},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// TLS of the gRPC listener: PEM files, read at start (a bad file stops the start,
/// naming it) and polled for changes every `reload_interval` while serving, so a
/// rotated certificate (cert-manager, a Kubernetes secret) is picked up without a
/// restart and without touching established connections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to. Set: mutual TLS,
    /// a client without such a certificate is refused during the handshake. Unset:
    /// any client may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for new content; `0s` turns reloading off.
    #[serde(default = "default_tls_reload", with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub reload_interval: Duration,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(5)
}

/// A secret from the config (the admin token). Its `Debug` and its serialised form
/// (what `/config` shows) are `<redacted>`, so it cannot leak through logs or the
/// admin API by accident; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What a [`Secret`] looks like wherever it is shown.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl schemars::JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "minLength": 1})
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_reads_tcp_and_unix_forms() {
        assert_eq!(
            "127.0.0.1:50051".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/gw.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/run/gw.sock".into()))
        );
        assert_eq!(
            "unix:/run/gw.sock"
                .parse::<ListenAddr>()
                .unwrap()
                .to_string(),
            "unix:/run/gw.sock"
        );
        for bad in ["unix:", "unix:///x", "nope", "localhost:50051", ""] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_mode_is_octal_text() {
        assert_eq!("0660".parse::<SocketMode>(), Ok(SocketMode(0o660)));
        assert_eq!("600".parse::<SocketMode>(), Ok(SocketMode(0o600)));
        assert_eq!("0o666".parse::<SocketMode>(), Ok(SocketMode(0o666)));
        assert_eq!(SocketMode(0o600).to_string(), "0600");
        for bad in ["", "0o", "0888", "1777", "rw"] {
            assert!(bad.parse::<SocketMode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_never_show() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(serde_saphyr::to_string(&s).unwrap().trim(), REDACTED);
        assert_eq!(s.expose(), "hunter2");
    }
}
