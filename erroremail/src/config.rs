//! Where and how to send: loaded from TOML, YAML or `ERROREMAIL_*` variables.
//!
//! Every value is checked when the config is loaded, and an error names the key it
//! is about: an operator learns that `tls = "startls"` is a typo when the service
//! starts, not when the first failure should have been mailed.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use lettre::message::{Mailbox, Mailboxes};
use serde::Deserialize;

use crate::Error;
use crate::template::SubjectTemplate;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain SMTP, for a relay on this host: the default when the server is a
    /// loopback address or `localhost`. Refused with credentials unless the server
    /// is on loopback: they would cross the network in clear.
    None,
    /// Plain connection upgraded with STARTTLS; a server that does not offer it is
    /// an error, never a silent downgrade. The default for a server that is not on
    /// loopback; port 587 by default.
    Starttls,
    /// TLS from the first byte ("implicit TLS", SMTPS); port 465 by default.
    Tls,
}

impl TlsMode {
    fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
        }
    }
}

/// The config of an [`ErrorEmail`](crate::ErrorEmail), checked when loaded.
///
/// Keys:
///
/// | key | meaning | default |
/// |---|---|---|
/// | `server` | SMTP server host name or address | required |
/// | `port` | its port | 25, 587 or 465 by `tls` |
/// | `tls` | `none`, `starttls` (required, no downgrade) or `tls` (implicit) | `none` for `localhost` and loopback addresses, else `starttls` |
/// | `username`, `password` | SMTP AUTH credentials, both or neither | none |
/// | `from` | sender, `Name <addr>` or `addr` | required |
/// | `to` | one recipient, a list, or a comma-separated string | required |
/// | `subject` | template: `{message}`, `{host}` and context keys | `ErrorEmail: {message}` |
/// | `timeout` | bound on one send: `10`, `2.5`, `"500ms"`, `"10s"`, `"1m"` | 10 s |
/// | `ca_file` | PEM file of extra root certificates to trust (a private CA, a test certificate) | system roots |
/// | `throttle_window` | how long repeats of one failure are grouped; `0` turns throttling off | 1 h |
/// | `throttle_file` | file that shares the throttle state between processes on the host; made 0600, never followed through a symbolic link: keep it in a directory only its user can write (`/var/lib/erroremail/`), not `/var/tmp` | in memory |
///
/// As environment variables, each key is upper-cased behind `ERROREMAIL_`:
/// `ERROREMAIL_SERVER`, `ERROREMAIL_TO="a@example.com, b@example.com"`, ...
///
/// # The original's configs
///
/// The Python ErrorEmail's upper-case keys `SERVER`, `PORT`, `FROM`, `TO` and
/// `SUBJECT` are accepted as aliases. Its configs have no `tls` key, and it spoke
/// plain SMTP, mostly to a relay on the same host: so `tls` defaults to `none`
/// when the server is `localhost` or a loopback address, and to `starttls` (never
/// downgraded) for any other server. A relay elsewhere that offers no STARTTLS
/// makes every send fail with a message that says to set `tls = "none"` if that
/// relay is trusted.
///
/// `Config` is also [`Deserialize`], with the same checks, so a larger config can
/// embed it as a table.
#[derive(Clone, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    pub(crate) server: String,
    pub(crate) port: u16,
    pub(crate) tls: TlsMode,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) from: Mailbox,
    pub(crate) to: Vec<Mailbox>,
    pub(crate) subject: SubjectTemplate,
    /// Whether `subject` was set, rather than left at its default.
    subject_given: bool,
    pub(crate) timeout: Duration,
    pub(crate) ca_file: Option<CaFile>,
    pub(crate) throttle_window: Duration,
    pub(crate) throttle_file: Option<PathBuf>,
}

#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: String,
}

/// Extra trusted roots, read and parsed at load time.
#[derive(Clone)]
pub(crate) struct CaFile {
    path: PathBuf,
    pub(crate) pem: Vec<u8>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field(
                "username",
                &self.credentials.as_ref().map(|c| c.username.as_str()),
            )
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from.to_string())
            .field(
                "to",
                &self.to.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
            .field("subject", &self.subject)
            .field("timeout", &self.timeout)
            .field("ca_file", &self.ca_file.as_ref().map(|ca| &ca.path))
            .field("throttle_window", &self.throttle_window)
            .field("throttle_file", &self.throttle_file)
            .finish()
    }
}

impl Config {
    /// Reads a config file: TOML for `*.toml`, YAML for `*.yaml` and `*.yml`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => parse_toml(&text, &origin),
            Some("yaml" | "yml") => parse_yaml(&text, &origin),
            _ => Err(Error::ConfigFormat {
                path: path.to_owned(),
            }),
        }
    }

    /// Parses a config from TOML text.
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        parse_toml(text, "TOML")
    }

    /// Parses a config from YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, Error> {
        parse_yaml(text, "YAML")
    }

    /// Reads the config from this process's `ERROREMAIL_*` environment variables.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_env_vars(std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        }))
    }

    /// Reads the config from `ERROREMAIL_*` variables among `vars`; others are ignored.
    pub fn from_env_vars<I>(vars: I) -> Result<Config, Error>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let keys: serde_json::Map<String, serde_json::Value> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let key = name.strip_prefix(ENV_PREFIX)?;
                Some((key.to_ascii_lowercase(), serde_json::Value::String(value)))
            })
            .collect();
        let raw = RawConfig::deserialize(serde_json::Value::Object(keys))
            .map_err(|err| syntax_error("environment", err))?;
        Config::try_from(raw)
    }

    /// The SMTP server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The SMTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How the connection is secured.
    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    /// The recipients, as `Name <address>` or `address`.
    pub fn to(&self) -> Vec<String> {
        self.to.iter().map(ToString::to_string).collect()
    }

    /// The subject template.
    pub fn subject(&self) -> &SubjectTemplate {
        &self.subject
    }

    /// The bound on one send.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long repeats of one failure are grouped; zero when throttling is off.
    pub fn throttle_window(&self) -> Duration {
        self.throttle_window
    }

    /// The file that shares the throttle state between processes, if any.
    pub fn throttle_file(&self) -> Option<&Path> {
        self.throttle_file.as_deref()
    }

    /// The same config with `template` as its subject, unless the config sets
    /// `subject` itself: how a program gives its own default.
    pub fn with_default_subject(mut self, template: SubjectTemplate) -> Config {
        if !self.subject_given {
            self.subject = template;
        }
        self
    }

    /// The same config with the throttle state in `path`.
    pub fn with_throttle_file(mut self, path: impl Into<PathBuf>) -> Config {
        self.throttle_file = Some(path.into());
        self
    }
}

const ENV_PREFIX: &str = "ERROREMAIL_";

fn parse_toml(text: &str, origin: &str) -> Result<Config, Error> {
    let raw: RawConfig = toml::from_str(text).map_err(|err| syntax_error(origin, err))?;
    Config::try_from(raw)
}

fn parse_yaml(text: &str, origin: &str) -> Result<Config, Error> {
    let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|err| syntax_error(origin, err))?;
    Config::try_from(raw)
}

fn syntax_error(origin: &str, err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::ConfigSyntax {
        origin: origin.to_owned(),
        source: Box::new(err),
    }
}

/// The config as written, before any value is checked: each value is kept loosely
/// typed so that checking it can name its key, whatever the source format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(alias = "SERVER")]
    server: Option<Value>,
    #[serde(alias = "PORT")]
    port: Option<Value>,
    tls: Option<Value>,
    username: Option<Value>,
    password: Option<Value>,
    #[serde(alias = "FROM")]
    from: Option<Value>,
    #[serde(alias = "TO")]
    to: Option<Value>,
    #[serde(alias = "SUBJECT")]
    subject: Option<Value>,
    timeout: Option<Value>,
    ca_file: Option<Value>,
    throttle_window: Option<Value>,
    throttle_file: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Value {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    List(Vec<Value>),
    /// A table, a date ...: never a valid value, accepted here so that the error
    /// names its key (an untagged enum's own error names nothing).
    Other(serde::de::IgnoredAny),
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::Text(text) => format!("`{text}`"),
            Value::Integer(n) => n.to_string(),
            Value::Float(x) => format!("{x:?}"),
            Value::Bool(b) => b.to_string(),
            Value::List(_) => "a list".to_owned(),
            Value::Other(_) => "a table or another structure".to_owned(),
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = Error;

    fn try_from(raw: RawConfig) -> Result<Config, Error> {
        let server = required(
            "server",
            raw.server,
            "the SMTP server, e.g. smtp.example.com",
        )
        .and_then(|v| text("server", v))?;
        if server.trim().is_empty() {
            return Err(invalid("server", "is empty"));
        }
        let tls = match raw.tls {
            None if is_loopback(&server) => TlsMode::None,
            None => TlsMode::Starttls,
            Some(value) => tls_mode(value)?,
        };
        let port = match raw.port {
            None => tls.default_port(),
            Some(value) => port(value)?,
        };
        let username = raw.username.map(|v| text("username", v)).transpose()?;
        let password = raw.password.map(|v| text("password", v)).transpose()?;
        let credentials = match (username, password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid("password", "is missing while `username` is set"));
            }
            (None, Some(_)) => {
                return Err(invalid("username", "is missing while `password` is set"));
            }
        };
        if credentials.is_some() && tls == TlsMode::None && !is_loopback(&server) {
            return Err(invalid(
                "tls",
                format!(
                    "is `none`, so the password would cross the network to {server} in clear: use `starttls` or `tls`"
                ),
            ));
        }
        let from = required(
            "from",
            raw.from,
            "the sender, e.g. \"cron <cron@example.com>\"",
        )
        .and_then(|v| text("from", v))?;
        let from = Mailbox::from_str(&from)
            .map_err(|err| invalid("from", format!("`{from}` is not an address: {err}")))?;
        let to = required("to", raw.to, "one or more recipients")?;
        let to = mailboxes("to", to)?;
        let subject_given = raw.subject.is_some();
        let subject = match raw.subject {
            None => SubjectTemplate::DEFAULT.to_owned(),
            Some(value) => text("subject", value)?,
        };
        let subject = SubjectTemplate::parse(&subject).map_err(|err| invalid("subject", err))?;
        let timeout = match raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(value) => duration("timeout", value)?,
        };
        if timeout.is_zero() {
            return Err(invalid("timeout", "must be more than zero"));
        }
        let ca_file = raw
            .ca_file
            .map(|v| text("ca_file", v).and_then(|path| read_ca_file(path.into())))
            .transpose()?;
        if ca_file.is_some() && tls == TlsMode::None {
            tracing::warn!("erroremail: `ca_file` is set but `tls` is `none`; it is not used");
        }
        let throttle_window = match raw.throttle_window {
            None => DEFAULT_THROTTLE_WINDOW,
            Some(value) => duration("throttle_window", value)?,
        };
        let throttle_file = raw
            .throttle_file
            .map(|v| text("throttle_file", v).map(PathBuf::from))
            .transpose()?;
        Ok(Config {
            server,
            port,
            tls,
            credentials,
            from,
            to,
            subject,
            subject_given,
            timeout,
            ca_file,
            throttle_window,
            throttle_file,
        })
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_THROTTLE_WINDOW: Duration = Duration::from_secs(3600);

fn invalid(key: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidValue {
        key,
        message: message.into(),
    }
}

fn required(key: &'static str, value: Option<Value>, hint: &'static str) -> Result<Value, Error> {
    value.ok_or(Error::MissingKey { key, hint })
}

fn text(key: &'static str, value: Value) -> Result<String, Error> {
    match value {
        Value::Text(text) => Ok(text),
        Value::Integer(n) => Ok(n.to_string()),
        other => Err(invalid(
            key,
            format!("expected text, got {}", other.describe()),
        )),
    }
}

fn tls_mode(value: Value) -> Result<TlsMode, Error> {
    let name = text("tls", value)?;
    match name.to_ascii_lowercase().as_str() {
        "none" => Ok(TlsMode::None),
        "starttls" => Ok(TlsMode::Starttls),
        "tls" => Ok(TlsMode::Tls),
        _ => Err(invalid(
            "tls",
            format!("expected `none`, `starttls` or `tls`, got `{name}`"),
        )),
    }
}

fn port(value: Value) -> Result<u16, Error> {
    let port = match &value {
        Value::Integer(n) => u16::try_from(*n).ok(),
        Value::Text(text) => text.trim().parse::<u16>().ok(),
        _ => None,
    };
    match port {
        Some(port) if port > 0 => Ok(port),
        _ => Err(invalid(
            "port",
            format!("expected a port from 1 to 65535, got {}", value.describe()),
        )),
    }
}

/// `10` and `2.5` are seconds; text may carry a unit: `500ms`, `10s`, `2m`, `1h`.
fn duration(key: &'static str, value: Value) -> Result<Duration, Error> {
    let seconds = match &value {
        Value::Integer(n) => Some(*n as f64),
        Value::Float(x) => Some(*x),
        Value::Text(text) => seconds_of(text.trim()),
        _ => None,
    };
    match seconds.and_then(|s| Duration::try_from_secs_f64(s).ok()) {
        Some(duration) => Ok(duration),
        None => Err(invalid(
            key,
            format!(
                "expected a duration such as 10, \"500ms\", \"10s\", \"2m\" or \"1h\", got {}",
                value.describe()
            ),
        )),
    }
}

fn seconds_of(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(number * scale)
}

fn mailboxes(key: &'static str, value: Value) -> Result<Vec<Mailbox>, Error> {
    let parse_one = |text: &str| {
        Mailbox::from_str(text.trim())
            .map_err(|err| invalid(key, format!("`{text}` is not an address: {err}")))
    };
    let list = match value {
        Value::Text(text) => {
            let parsed = Mailboxes::from_str(&text).map_err(|err| {
                invalid(key, format!("`{text}` is not a list of addresses: {err}"))
            })?;
            parsed.into_iter().collect()
        }
        Value::List(items) => items
            .into_iter()
            .map(|item| text(key, item).and_then(|t| parse_one(&t)))
            .collect::<Result<Vec<_>, _>>()?,
        other => {
            return Err(invalid(
                key,
                format!("expected an address or a list, got {}", other.describe()),
            ));
        }
    };
    if list.is_empty() {
        return Err(invalid(key, "names no recipient"));
    }
    Ok(list)
}

fn read_ca_file(path: PathBuf) -> Result<CaFile, Error> {
    let pem = std::fs::read(&path)
        .map_err(|err| invalid("ca_file", format!("cannot read {}: {err}", path.display())))?;
    lettre::transport::smtp::client::Certificate::from_pem(&pem).map_err(|err| {
        invalid(
            "ca_file",
            format!("{} holds no PEM certificate: {err}", path.display()),
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(
            "ca_file",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(CaFile { path, pem })
}

fn is_loopback(server: &str) -> bool {
    server.eq_ignore_ascii_case("localhost")
        || server
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(err: Error) -> &'static str {
        match err {
            Error::InvalidValue { key, .. } | Error::MissingKey { key, .. } => key,
            other => panic!("expected an error about a key, got {other}"),
        }
    }

    /// Asserts that `base` plus each line is refused with an error about its key.
    fn assert_each_names_its_key(
        parse: fn(&str) -> Result<Config, Error>,
        base: &str,
        cases: &[(&str, &str)],
    ) {
        for (line, key) in cases {
            let err = parse(&format!("{base}{line}")).unwrap_err();
            assert_eq!(key_of(err), *key, "{line}");
        }
    }

    #[test]
    fn toml_with_every_key() {
        let config = Config::from_toml(
            r#"
            server = "smtp.example.com"
            port = 2525
            tls = "tls"
            username = "cron"
            password = "s3cret"
            from = "Cron <cron@example.com>"
            to = ["ops@example.com", "Dev <dev@example.com>"]
            subject = "[{host}] {message}"
            timeout = "2.5s"
            throttle_window = "10m"
            throttle_file = "/var/lib/erroremail/throttle.json"
            "#,
        )
        .unwrap();
        assert_eq!(config.server(), "smtp.example.com");
        assert_eq!(config.port(), 2525);
        assert_eq!(config.tls(), TlsMode::Tls);
        assert_eq!(config.to().len(), 2);
        assert_eq!(config.to()[1], "Dev <dev@example.com>");
        assert_eq!(config.timeout(), Duration::from_millis(2500));
        assert_eq!(config.throttle_window(), Duration::from_secs(600));
        assert_eq!(
            config.throttle_file(),
            Some(Path::new("/var/lib/erroremail/throttle.json"))
        );
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn defaults_follow_the_tls_mode() {
        let config =
            Config::from_toml("server = 'mx'\nfrom = 'a@example.com'\nto = 'b@example.com'")
                .unwrap();
        assert_eq!(config.tls(), TlsMode::Starttls);
        assert_eq!(config.port(), 587);
        assert_eq!(config.timeout(), Duration::from_secs(10));
        assert_eq!(config.subject().as_str(), "ErrorEmail: {message}");
        let plain = Config::from_toml(
            "server = 'mx'\ntls = 'none'\nfrom = 'a@example.com'\nto = 'b@example.com'",
        )
        .unwrap();
        assert_eq!(plain.port(), 25);
    }

    #[test]
    fn yaml_with_the_originals_upper_case_keys() {
        let config = Config::from_yaml(
            "SERVER: localhost\nPORT: 25\ntls: none\nFROM: a@example.com\nTO: [b@example.com, c@example.com]\nSUBJECT: 'ERR: {host}:{port} {message}'\n",
        )
        .unwrap();
        assert_eq!(config.server(), "localhost");
        assert_eq!(config.port(), 25);
        assert_eq!(config.to().len(), 2);
        assert_eq!(config.subject().as_str(), "ERR: {host}:{port} {message}");
    }

    #[test]
    fn originals_config_without_tls_is_plain_to_a_local_relay_and_starttls_elsewhere() {
        let original = |server: &str| {
            Config::from_yaml(&format!(
                "SERVER: {server}\nPORT: 25\nFROM: a@example.com\nTO: b@example.com\n"
            ))
            .unwrap()
            .tls()
        };
        assert_eq!(original("localhost"), TlsMode::None);
        assert_eq!(original("127.0.0.1"), TlsMode::None);
        assert_eq!(original("'[::1]'"), TlsMode::None);
        assert_eq!(original("smtp.example.com"), TlsMode::Starttls);
        assert_eq!(original("10.0.0.1"), TlsMode::Starttls);
    }

    #[test]
    fn yaml_value_of_the_wrong_shape_names_its_key() {
        let base = "server: mx\nfrom: a@example.com\nto: b@example.com\n";
        assert_each_names_its_key(
            Config::from_yaml,
            base,
            &[
                ("timeout: {seconds: 10}", "timeout"),
                ("port: 25.0", "port"),
                ("subject: [a, b]", "subject"),
                ("tls: true", "tls"),
            ],
        );
        let err = Config::from_yaml(&format!("{base}port: 25.0")).unwrap_err();
        assert!(err.to_string().contains("got 25.0"), "{err}");
    }

    #[test]
    fn environment_variables_with_a_comma_separated_to() {
        let vars = [
            ("ERROREMAIL_SERVER", "smtp.example.com"),
            ("ERROREMAIL_PORT", "2525"),
            ("ERROREMAIL_FROM", "a@example.com"),
            ("ERROREMAIL_TO", "b@example.com, Ops <c@example.com>"),
            ("ERROREMAIL_TIMEOUT", "3"),
            ("ERROREMAIL_THROTTLE_WINDOW", "0"),
            ("PATH", "/usr/bin"),
        ];
        let config =
            Config::from_env_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
                .unwrap();
        assert_eq!(config.port(), 2525);
        assert_eq!(config.to().len(), 2);
        assert_eq!(config.timeout(), Duration::from_secs(3));
        assert!(config.throttle_window().is_zero());
    }

    #[test]
    fn unknown_environment_variable_is_named() {
        let err = Config::from_env_vars([
            ("ERROREMAIL_SERVER".to_owned(), "mx".to_owned()),
            ("ERROREMAIL_SEVRER".to_owned(), "mx".to_owned()),
        ])
        .unwrap_err();
        assert!(err.explain().contains("sevrer"), "{err:?}");
    }

    #[test]
    fn bad_tls_value_names_the_key() {
        let err = Config::from_toml(
            "server = 'mx'\ntls = 'startls'\nfrom = 'a@example.com'\nto = 'b@example.com'",
        )
        .unwrap_err();
        assert!(err.to_string().contains("startls"), "{err}");
        assert_eq!(key_of(err), "tls");
    }

    #[test]
    fn address_that_does_not_parse_names_the_key() {
        let err = Config::from_toml(
            "server = 'mx'\nfrom = 'a@example.com'\nto = ['b@example.com', 'not an address']",
        )
        .unwrap_err();
        assert_eq!(key_of(err), "to");
        let err =
            Config::from_toml("server = 'mx'\nfrom = 'nobody'\nto = 'b@example.com'").unwrap_err();
        assert_eq!(key_of(err), "from");
    }

    #[test]
    fn missing_to_is_named() {
        let err = Config::from_toml("server = 'mx'\nfrom = 'a@example.com'").unwrap_err();
        assert_eq!(key_of(err), "to");
        let err = Config::from_toml("server = 'mx'\nfrom = 'a@example.com'\nto = []").unwrap_err();
        assert_eq!(key_of(err), "to");
    }

    #[test]
    fn misspelled_key_is_refused() {
        let err = Config::from_toml(
            "sever = 'mx'\nserver = 'mx'\nfrom = 'a@example.com'\nto = 'b@example.com'",
        )
        .unwrap_err();
        assert!(err.explain().contains("sever"), "{err:?}");
        let parser_error = std::error::Error::source(&err).map(ToString::to_string);
        assert!(parser_error.is_some_and(|text| text.contains("sever")));
    }

    #[test]
    fn bad_port_timeout_and_subject_name_their_keys() {
        let base = "server = 'mx'\nfrom = 'a@example.com'\nto = 'b@example.com'\n";
        assert_each_names_its_key(
            Config::from_toml,
            base,
            &[
                ("port = 70000", "port"),
                ("port = 'smtp'", "port"),
                ("timeout = 'soon'", "timeout"),
                ("timeout = 0", "timeout"),
                ("subject = 'E: {message'", "subject"),
                ("subject = 'E: {0}'", "subject"),
                ("throttle_window = -5", "throttle_window"),
            ],
        );
    }

    #[test]
    fn credentials_come_in_pairs_and_never_in_clear_over_the_network() {
        let base = "server = 'smtp.example.com'\nfrom = 'a@example.com'\nto = 'b@example.com'\n";
        let err = Config::from_toml(&format!("{base}username = 'u'")).unwrap_err();
        assert_eq!(key_of(err), "password");
        let err = Config::from_toml(&format!(
            "{base}username = 'u'\npassword = 'p'\ntls = 'none'"
        ))
        .unwrap_err();
        assert_eq!(key_of(err), "tls");
        let local = "server = '127.0.0.1'\nfrom = 'a@example.com'\nto = 'b@example.com'\nusername = 'u'\npassword = 'p'\ntls = 'none'";
        assert!(Config::from_toml(local).is_ok());
    }

    #[test]
    fn ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = Config::from_toml(&format!(
            "server = 'mx'\nfrom = 'a@example.com'\nto = 'b@example.com'\nca_file = '{}'",
            path.display()
        ))
        .unwrap_err();
        assert_eq!(key_of(err), "ca_file");
    }

    #[test]
    fn file_format_follows_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("e.yml");
        std::fs::write(
            &yaml,
            "server: mx\nfrom: a@example.com\nto: b@example.com\n",
        )
        .unwrap();
        assert_eq!(Config::from_file(&yaml).unwrap().server(), "mx");
        let ini = dir.path().join("e.ini");
        std::fs::write(&ini, "").unwrap();
        assert!(matches!(
            Config::from_file(&ini),
            Err(Error::ConfigFormat { .. })
        ));
    }

    #[test]
    fn config_embeds_in_a_larger_config_with_the_same_checks() {
        #[derive(Deserialize)]
        struct Service {
            #[serde(rename = "erroremail")]
            _mail: Config,
        }
        let ok: Result<Service, _> = toml::from_str(
            "[erroremail]\nserver = 'mx'\nfrom = 'a@example.com'\nto = 'b@example.com'",
        );
        assert!(ok.is_ok());
        let bad: Result<Service, _> =
            toml::from_str("[erroremail]\nserver = 'mx'\nfrom = 'a@example.com'");
        let err = bad.err().unwrap().to_string();
        assert!(err.contains("`to`"), "{err}");
    }
}
