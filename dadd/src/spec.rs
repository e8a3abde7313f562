//! The job [`Spec`]: what to run, what it needs, and how long it may take.
//!
//! A spec is a JSON or YAML map. It is read into a JSON value first and then
//! checked field by field, so that every problem is reported with the field it is
//! in (`download_urls[2].name`, `env.PORT`, `timeout`) and what is wrong with it,
//! all of them at once rather than the first only. Nothing is run or fetched for a
//! spec that does not pass.
//!
//! ```
//! use dadd::spec::{Format, Spec};
//!
//! let spec = Spec::parse(
//!     r#"
//! cmd: python -m report --settings $APP_SETTINGS
//! download_urls:
//!   input.csv: https://example.com/input.csv
//! config: {threshold: 3}
//! timeout: 2h
//! "#,
//!     Format::Yaml,
//! )?;
//! assert_eq!(spec.cmd, ["python", "-m", "report", "--settings", "$APP_SETTINGS"]);
//! assert_eq!(spec.timeout, Some(std::time::Duration::from_secs(7200)));
//!
//! let error = Spec::parse(r#"{"cmd": "true", "timeout": true}"#, Format::Json).unwrap_err();
//! assert!(error.to_string().contains(r#"timeout: expected a duration like 30, "90s" or "2h", got true"#));
//! # Ok::<(), dadd::spec::SpecError>(())
//! ```

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fetcher::{Archive, Artifact, FetchError, Sha256};
use serde::Serialize;
use serde_json::{Map, Value};
use url::Url;

/// The fields a spec may have; any other is an error.
pub const FIELDS: &[&str] = &[
    "name",
    "cmd",
    "download_urls",
    "config",
    "env",
    "python_deps",
    "python_cheeseshop",
    "timeout",
    "keep_dir",
    "host",
];

/// The fields of one entry of `download_urls` in its list form.
const ARTIFACT_FIELDS: &[&str] = &["name", "url", "sha256", "unpack", "read_only"];

/// The placeholder in `cmd` that is replaced by the config file's absolute path.
pub const APP_SETTINGS: &str = "APP_SETTINGS";

/// A validated job spec.
///
/// It serializes to a spec that reads back the same (the form written to the run
/// directory as `spec.json`): `cmd` as a list, `download_urls` as a list of
/// artifacts, `timeout` as text such as `"1h 30m"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Spec {
    /// A name for people (logs, mails, the master's pages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The program and its arguments, never empty. A `$APP_SETTINGS` (or
    /// `${APP_SETTINGS}`) in them stands for the config file's path; see
    /// [`Spec::command`].
    pub cmd: Vec<String>,
    /// The files fetched into the run directory before the command starts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub download_urls: Vec<Artifact>,
    /// What the command reads from the file whose path is in `APP_SETTINGS_JSON`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// Environment variables added to the command's.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Python requirements to install into a virtual environment (each may carry
    /// pip options, such as `-i URL pkg>=3`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub python_deps: Vec<String>,
    /// The package index to install `python_deps` from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_cheeseshop: Option<Url>,
    /// How long the command may run before it is terminated.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_timeout"
    )]
    pub timeout: Option<Duration>,
    /// Keep the run directory even when the command succeeds.
    pub keep_dir: bool,
    /// The host (a worker's name) the master must run it on; by default the
    /// live host with the fewest running processes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// How a spec's text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
    /// JSON if it reads as JSON, else YAML (for standard input).
    Detect,
}

impl Format {
    /// The format a file's extension says: `.json` is JSON, `.yaml` and `.yml` are
    /// YAML, anything else is [`Format::Detect`].
    pub fn of_path(path: &Path) -> Format {
        match path.extension().and_then(OsStr::to_str) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            Some(ext) if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Detect,
        }
    }
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read the spec {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not JSON or YAML.
    #[error("the spec is not valid {format}: {message}")]
    Syntax {
        /// `"JSON"` or `"YAML"`.
        format: &'static str,
        /// What the parser said, with the line and column.
        message: String,
    },
    /// The document is not a map of fields.
    #[error("the spec must be a map of fields (cmd, download_urls, ...), got {got}")]
    NotAMap {
        /// What it is instead.
        got: String,
    },
    /// Some fields are wrong; every problem found is listed.
    #[error("invalid spec: {}", join_problems(.0))]
    Invalid(Vec<FieldProblem>),
}

/// One problem with one field of a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldProblem {
    /// Where: `cmd`, `download_urls[2].name`, `env.PORT`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

fn join_problems(problems: &[FieldProblem]) -> String {
    let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

impl Spec {
    /// Reads and checks the spec in `path`, in the format its extension says.
    pub fn from_file(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        Spec::parse(&text, Format::of_path(path))
    }

    /// Parses and checks a spec written in `format`.
    pub fn parse(text: &str, format: Format) -> Result<Spec, SpecError> {
        let value = match format {
            Format::Json => parse_json(text)?,
            Format::Yaml => parse_yaml(text)?,
            Format::Detect => match parse_json(text) {
                Ok(value) => value,
                Err(json_error) => match parse_yaml(text) {
                    Ok(value) => value,
                    // Say what was wrong in the language it seems to be written in.
                    Err(_) if text.trim_start().starts_with('{') => return Err(json_error),
                    Err(yaml_error) => return Err(yaml_error),
                },
            },
        };
        Spec::from_value(value)
    }

    /// Checks a spec already read into a JSON value.
    pub fn from_value(value: Value) -> Result<Spec, SpecError> {
        let fields = match value {
            Value::Object(fields) => fields,
            Value::Null => {
                return Err(SpecError::NotAMap {
                    got: "an empty document".to_owned(),
                });
            }
            other => {
                return Err(SpecError::NotAMap {
                    got: describe(&other),
                });
            }
        };
        let mut check = Check::default();
        for key in fields.keys() {
            if !FIELDS.contains(&key.as_str()) {
                check.fail(
                    key,
                    format!("unknown field (a spec has {})", FIELDS.join(", ")),
                );
            }
        }
        let spec = Spec {
            name: optional_string(&mut check, "name", fields.get("name")),
            cmd: cmd(&mut check, fields.get("cmd")),
            download_urls: download_urls(&mut check, fields.get("download_urls")),
            config: fields.get("config").filter(|v| !v.is_null()).cloned(),
            env: env(&mut check, fields.get("env")),
            python_deps: python_deps(&mut check, fields.get("python_deps")),
            python_cheeseshop: optional_string(
                &mut check,
                "python_cheeseshop",
                fields.get("python_cheeseshop"),
            )
            .and_then(|text| http_url(&mut check, "python_cheeseshop", &text)),
            timeout: timeout(&mut check, fields.get("timeout")),
            keep_dir: keep_dir(&mut check, fields.get("keep_dir")),
            host: host(&mut check, fields.get("host")),
        };
        if check.problems.is_empty() {
            Ok(spec)
        } else {
            Err(SpecError::Invalid(check.problems))
        }
    }

    /// The command line to run, with `$APP_SETTINGS` and `${APP_SETTINGS}` replaced
    /// by `config_path`. A longer name that starts the same, such as
    /// `$APP_SETTINGS_JSON`, is left alone (for a shell the command may start).
    pub fn command(&self, config_path: &Path) -> Vec<OsString> {
        self.cmd
            .iter()
            .map(|arg| substitute(arg, config_path.as_os_str()))
            .collect()
    }

    /// The config as written to `config.json`: the spec's, or `{}` when it has none.
    pub fn config_or_empty(&self) -> Value {
        self.config
            .clone()
            .unwrap_or_else(|| Value::Object(Map::new()))
    }
}

fn parse_json(text: &str) -> Result<Value, SpecError> {
    serde_json::from_str(text).map_err(|error| SpecError::Syntax {
        format: "JSON",
        message: error.to_string(),
    })
}

fn parse_yaml(text: &str) -> Result<Value, SpecError> {
    serde_yaml_ng::from_str(text).map_err(|error| SpecError::Syntax {
        format: "YAML",
        message: error.to_string(),
    })
}

fn serialize_timeout<S: serde::Serializer>(
    timeout: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match timeout {
        Some(timeout) => serializer.collect_str(&humantime::format_duration(*timeout)),
        None => serializer.serialize_none(),
    }
}

/// Replaces each `$APP_SETTINGS` not followed by a name character, and each
/// `${APP_SETTINGS}`, with `path`.
fn substitute(arg: &str, path: &OsStr) -> OsString {
    let braced = format!("${{{APP_SETTINGS}}}");
    let bare = format!("${APP_SETTINGS}");
    let mut out = OsString::new();
    let mut rest = arg;
    while let Some(at) = rest.find('$') {
        out.push(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with(&braced) {
            out.push(path);
            rest = &tail[braced.len()..];
        } else if tail.starts_with(&bare)
            && !tail[bare.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push(path);
            rest = &tail[bare.len()..];
        } else {
            out.push("$");
            rest = &tail[1..];
        }
    }
    out.push(rest);
    out
}

/// The problems found so far.
#[derive(Default)]
struct Check {
    problems: Vec<FieldProblem>,
}

impl Check {
    fn fail(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.problems.push(FieldProblem {
            field: field.into(),
            problem: problem.into(),
        });
    }
}

/// A value as a message shows it: scalars as written, containers by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
        scalar => scalar.to_string(),
    }
}

/// A string quoted as JSON writes it (for names and keys in messages).
fn quoted(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

fn optional_string(check: &mut Check, field: &str, value: Option<&Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => {
            check.fail(field, format!("expected a string, got {}", describe(other)));
            None
        }
    }
}

fn cmd(check: &mut Check, value: Option<&Value>) -> Vec<String> {
    match value {
        None | Some(Value::Null) => {
            check.fail(
                "cmd",
                "missing (the command to run: a string, split as a shell would, or a list)",
            );
            Vec::new()
        }
        Some(Value::String(line)) => match shell_words::split(line) {
            Ok(words) if words.is_empty() => {
                check.fail("cmd", "is empty (the command to run)");
                words
            }
            Ok(words) => words,
            Err(error) => {
                check.fail(
                    "cmd",
                    format!("{} cannot be split into words: {error}", quoted(line)),
                );
                Vec::new()
            }
        },
        Some(Value::Array(items)) => {
            if items.is_empty() {
                check.fail("cmd", "is an empty list (the command to run)");
            }
            let mut words = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                match item {
                    Value::String(word) if index == 0 && word.is_empty() => {
                        check.fail("cmd[0]", "is empty (the program to run)");
                    }
                    Value::String(word) => words.push(word.clone()),
                    other => check.fail(
                        format!("cmd[{index}]"),
                        format!("expected a string, got {}", describe(other)),
                    ),
                }
            }
            words
        }
        Some(other) => {
            check.fail(
                "cmd",
                format!(
                    "expected a string or a list of strings, got {}",
                    describe(other)
                ),
            );
            Vec::new()
        }
    }
}

fn download_urls(check: &mut Check, value: Option<&Value>) -> Vec<Artifact> {
    // Each artifact with the field its name is in, for the overlap check.
    let mut named: Vec<(Artifact, String, PathBuf)> = Vec::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, url) in map {
                let field = format!("download_urls[{}]", quoted(name));
                let path = artifact_name(check, &field, name);
                let url = match url {
                    Value::String(text) => http_url(check, &field, text),
                    other => {
                        check.fail(
                            &field,
                            format!("expected the URL as a string, got {}", describe(other)),
                        );
                        None
                    }
                };
                if let (Some(path), Some(url)) = (path, url) {
                    named.push((Artifact::new(name.clone(), url), field, path));
                }
            }
        }
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let field = format!("download_urls[{index}]");
                if let Some((artifact, path)) = artifact_entry(check, &field, item) {
                    named.push((artifact, format!("{field}.name"), path));
                }
            }
        }
        Some(other) => check.fail(
            "download_urls",
            format!(
                "expected a map of name: URL, or a list of {{name, url, sha256, unpack, read_only}}, got {}",
                describe(other)
            ),
        ),
    }
    // Two names overlap when one is the other or lies inside it: one would
    // overwrite the other.
    for (later, (artifact, field, path)) in named.iter().enumerate() {
        if let Some((first, _, _)) = named[..later]
            .iter()
            .find(|(_, _, other)| path.starts_with(other) || other.starts_with(path))
        {
            check.fail(
                field,
                format!(
                    "{} overlaps {}: one would overwrite the other",
                    quoted(&artifact.name),
                    quoted(&first.name)
                ),
            );
        }
    }
    named.into_iter().map(|(artifact, _, _)| artifact).collect()
}

/// One entry of the list form: `{name, url, sha256, unpack, read_only}`.
fn artifact_entry(check: &mut Check, field: &str, item: &Value) -> Option<(Artifact, PathBuf)> {
    let Value::Object(entry) = item else {
        check.fail(
            field,
            format!(
                "expected a map {{name, url, sha256, unpack, read_only}}, got {}",
                describe(item)
            ),
        );
        return None;
    };
    for key in entry.keys() {
        if !ARTIFACT_FIELDS.contains(&key.as_str()) {
            check.fail(
                format!("{field}.{key}"),
                format!(
                    "unknown field (an artifact has {})",
                    ARTIFACT_FIELDS.join(", ")
                ),
            );
        }
    }
    let name_field = format!("{field}.name");
    let name = match entry.get("name") {
        Some(Value::String(name)) => Some(name.clone()),
        None | Some(Value::Null) => {
            check.fail(
                &name_field,
                "missing (the file's path in the run directory)",
            );
            None
        }
        Some(other) => {
            check.fail(
                &name_field,
                format!("expected a string, got {}", describe(other)),
            );
            None
        }
    };
    let path = name
        .as_deref()
        .and_then(|name| artifact_name(check, &name_field, name));
    let url_field = format!("{field}.url");
    let url = match entry.get("url") {
        Some(Value::String(text)) => http_url(check, &url_field, text),
        None | Some(Value::Null) => {
            check.fail(&url_field, "missing (where the file is fetched from)");
            None
        }
        Some(other) => {
            check.fail(
                &url_field,
                format!("expected a string, got {}", describe(other)),
            );
            None
        }
    };
    let sha256_field = format!("{field}.sha256");
    let sha256 = optional_string(check, &sha256_field, entry.get("sha256")).and_then(|text| {
        text.parse::<Sha256>()
            .map_err(|error| check.fail(&sha256_field, error.to_string()))
            .ok()
    });
    let unpack = unpack(
        check,
        &format!("{field}.unpack"),
        entry.get("unpack"),
        name.as_deref(),
        url.as_ref(),
    );
    let read_only = match entry.get("read_only") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(read_only)) => *read_only,
        Some(other) => {
            check.fail(
                format!("{field}.read_only"),
                format!("expected true or false, got {}", describe(other)),
            );
            false
        }
    };
    let mut artifact = Artifact::new(name?, url?).read_only(read_only);
    artifact.sha256 = sha256;
    artifact.unpack = unpack?;
    Some((artifact, path?))
}

/// `unpack`: an archive format (`"tar"`, `"tar.gz"`, `"tgz"`, `"zip"`), or `true`
/// for the format the name's (else the URL's) extension says. `None` when wrong.
fn unpack(
    check: &mut Check,
    field: &str,
    value: Option<&Value>,
    name: Option<&str>,
    url: Option<&Url>,
) -> Option<Option<Archive>> {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Some(None),
        Some(Value::String(format)) => match format.parse::<Archive>() {
            Ok(archive) => Some(Some(archive)),
            Err(_) => {
                check.fail(
                    field,
                    format!(
                        "{} is not an archive format (tar, tar.gz, tgz or zip)",
                        quoted(format)
                    ),
                );
                None
            }
        },
        Some(Value::Bool(true)) => {
            let from_name = name.and_then(Archive::from_name);
            let from_url = || url.and_then(|url| Archive::from_name(url.path()));
            match from_name.or_else(from_url) {
                Some(archive) => Some(Some(archive)),
                // Without a name or a URL, their own problems are reported.
                None if name.is_none() || url.is_none() => None,
                None => {
                    check.fail(
                        field,
                        "is true, but neither the name nor the URL ends in .tar, .tar.gz, .tgz or .zip: give the format",
                    );
                    None
                }
            }
        }
        Some(other) => {
            check.fail(
                field,
                format!(
                    "expected an archive format (tar, tar.gz, tgz, zip) or true, got {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

/// Checks an artifact's name with the fetcher's rules.
fn artifact_name(check: &mut Check, field: &str, name: &str) -> Option<PathBuf> {
    match fetcher::check_name(name) {
        Ok(path) => Some(path),
        Err(FetchError::BadName { reason, .. }) => {
            check.fail(field, format!("{} is refused: {reason}", quoted(name)));
            None
        }
        Err(other) => {
            check.fail(field, format!("{} is refused: {other}", quoted(name)));
            None
        }
    }
}

fn http_url(check: &mut Check, field: &str, text: &str) -> Option<Url> {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
        Ok(url) => {
            check.fail(
                field,
                format!(
                    "{} is a {} URL; only http and https are fetched",
                    quoted(text),
                    url.scheme()
                ),
            );
            None
        }
        Err(error) => {
            check.fail(field, format!("{} is not a URL: {error}", quoted(text)));
            None
        }
    }
}

fn env(check: &mut Check, value: Option<&Value>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                let field = format!("env.{key}");
                if key.is_empty() || key.contains(['=', '\0']) {
                    check.fail(
                        &field,
                        format!(
                            "{} is not a variable name (empty, or with `=` or NUL)",
                            quoted(key)
                        ),
                    );
                    continue;
                }
                // YAML writes `PORT: 8080` without quotes: numbers and booleans are
                // taken as they are written.
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Number(number) => number.to_string(),
                    Value::Bool(flag) => flag.to_string(),
                    other => {
                        check.fail(
                            &field,
                            format!("expected a string, got {}", describe(other)),
                        );
                        continue;
                    }
                };
                if text.contains('\0') {
                    check.fail(&field, "contains a NUL character");
                    continue;
                }
                env.insert(key.clone(), text);
            }
        }
        Some(other) => check.fail(
            "env",
            format!("expected a map of NAME: value, got {}", describe(other)),
        ),
    }
    env
}

fn python_deps(check: &mut Check, value: Option<&Value>) -> Vec<String> {
    let mut deps = Vec::new();
    let mut push = |check: &mut Check, field: String, dep: &str| {
        if dep.trim().is_empty() {
            check.fail(field, "is empty (a requirement such as `requests>=2`)");
        } else if let Err(error) = shell_words::split(dep) {
            check.fail(
                field,
                format!("cannot be split into pip's arguments as a shell would: {error}"),
            );
        } else {
            deps.push(dep.to_owned());
        }
    };
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(dep)) => push(check, "python_deps".to_owned(), dep),
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let field = format!("python_deps[{index}]");
                match item {
                    Value::String(dep) => push(check, field, dep),
                    other => {
                        check.fail(field, format!("expected a string, got {}", describe(other)))
                    }
                }
            }
        }
        Some(other) => check.fail(
            "python_deps",
            format!(
                "expected a requirement or a list of them, got {}",
                describe(other)
            ),
        ),
    }
    deps
}

fn timeout(check: &mut Check, value: Option<&Value>) -> Option<Duration> {
    const EXPECTED: &str = r#"expected a duration like 30, "90s" or "2h""#;
    let duration = match value? {
        Value::Null => return None,
        Value::Number(number) => number
            .as_f64()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok()),
        Value::String(text) => {
            let text = text.trim();
            match text.parse::<f64>() {
                Ok(seconds) => Duration::try_from_secs_f64(seconds).ok(),
                Err(_) => humantime::parse_duration(text).ok(),
            }
        }
        _ => None,
    };
    match duration {
        Some(duration) if duration.is_zero() => {
            check.fail("timeout", "must be longer than zero");
            None
        }
        Some(duration) => Some(duration),
        None => {
            let got = value.map(describe).unwrap_or_default();
            check.fail("timeout", format!("{EXPECTED}, got {got}"));
            None
        }
    }
}

fn keep_dir(check: &mut Check, value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(keep)) => *keep,
        Some(other) => {
            check.fail(
                "keep_dir",
                format!("expected true or false, got {}", describe(other)),
            );
            false
        }
    }
}

fn host(check: &mut Check, value: Option<&Value>) -> Option<String> {
    let name = optional_string(check, "host", value)?;
    if crate::api::valid_host_name(&name) {
        Some(name)
    } else {
        check.fail(
            "host",
            format!(
                "{name:?} is not a host name (1 to 128 ASCII letters, digits, `-`, `_` and `.`)"
            ),
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Result<Spec, SpecError> {
        Spec::parse(text, Format::Json)
    }

    /// The problems of a refused spec, as `field: problem` lines.
    fn problems(text: &str) -> Vec<String> {
        match Spec::parse(text, Format::Detect) {
            Err(SpecError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
            other => panic!("expected field problems, got {other:?}"),
        }
    }

    fn assert_problem(text: &str, expected: &str) {
        let problems = problems(text);
        assert!(
            problems.iter().any(|problem| problem.contains(expected)),
            "{expected:?} not in {problems:?}"
        );
    }

    #[test]
    fn a_string_cmd_is_split_as_a_shell_would_without_running_one() {
        let spec = json(r#"{"cmd": "sh -c 'echo \"a b\" > out' $HOME"}"#).unwrap();
        assert_eq!(spec.cmd, ["sh", "-c", "echo \"a b\" > out", "$HOME"]);
    }

    #[test]
    fn a_list_cmd_is_taken_as_it_is() {
        let spec = json(r#"{"cmd": ["printf", "%s\n", "a b"]}"#).unwrap();
        assert_eq!(spec.cmd, ["printf", "%s\n", "a b"]);
    }

    #[test]
    fn cmd_problems_name_the_field() {
        assert_problem("{}", "cmd: missing (the command to run");
        assert_problem(r#"{"cmd": ""}"#, "cmd: is empty");
        assert_problem(r#"{"cmd": []}"#, "cmd: is an empty list");
        assert_problem(
            r#"{"cmd": "echo 'open"}"#,
            "cmd: \"echo 'open\" cannot be split",
        );
        assert_problem(
            r#"{"cmd": ["echo", 3]}"#,
            "cmd[1]: expected a string, got 3",
        );
        assert_problem(
            r#"{"cmd": 3}"#,
            "cmd: expected a string or a list of strings, got 3",
        );
    }

    #[test]
    fn app_settings_is_replaced_by_the_config_path_and_longer_names_are_not() {
        let spec =
            json(r#"{"cmd": ["run", "--settings=$APP_SETTINGS", "${APP_SETTINGS}x", "$APP_SETTINGS_JSON", "$", "a$b"]}"#)
                .unwrap();
        let command = spec.command(Path::new("/run/config.json"));
        assert_eq!(
            command,
            [
                "run",
                "--settings=/run/config.json",
                "/run/config.jsonx",
                "$APP_SETTINGS_JSON",
                "$",
                "a$b"
            ]
        );
    }

    #[test]
    fn download_urls_as_a_map_become_artifacts() {
        let spec = json(
            r#"{"cmd": "true", "download_urls": {"data/in.csv": "http://h/in.csv", "b": "https://h/b"}}"#,
        )
        .unwrap();
        let names: Vec<&str> = spec.download_urls.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["b", "data/in.csv"]);
        assert_eq!(spec.download_urls[1].url.as_str(), "http://h/in.csv");
    }

    #[test]
    fn download_urls_as_a_list_carry_digest_unpack_and_read_only() {
        let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let spec = json(&format!(
            r#"{{"cmd": "true", "download_urls": [
                {{"name": "a", "url": "http://h/a", "sha256": "{digest}", "read_only": true}},
                {{"name": "tools", "url": "http://h/tools.tgz", "unpack": true}},
                {{"name": "site", "url": "http://h/site", "unpack": "zip"}}
            ]}}"#
        ))
        .unwrap();
        let [a, tools, site] = &spec.download_urls[..] else {
            panic!("{:?}", spec.download_urls)
        };
        assert_eq!(a.sha256.unwrap().to_string(), digest);
        assert!(a.read_only);
        assert_eq!(tools.unpack, Some(Archive::TarGz));
        assert_eq!(site.unpack, Some(Archive::Zip));
    }

    #[test]
    fn artifact_names_are_checked_with_the_fetchers_rules() {
        assert_problem(
            r#"{"cmd": "true", "download_urls": [{"name": "a", "url": "http://h/a"}, {"name": "b", "url": "http://h/b"}, {"name": "../x", "url": "http://h/x"}]}"#,
            r#"download_urls[2].name: "../x" is refused: it has a `..` component, which could leave the run directory"#,
        );
        assert_problem(
            r#"{"cmd": "true", "download_urls": {"/etc/passwd": "http://h/x"}}"#,
            r#"download_urls["/etc/passwd"]: "/etc/passwd" is refused: it is an absolute path"#,
        );
        assert_problem(
            r#"{"cmd": "true", "download_urls": {"a": "http://h/a", "a/b": "http://h/b"}}"#,
            r#"download_urls["a/b"]: "a/b" overlaps "a""#,
        );
    }

    #[test]
    fn artifact_fields_are_checked() {
        for (entry, expected) in [
            (r#"{"url": "http://h/a"}"#, "download_urls[0].name: missing"),
            (r#"{"name": "a"}"#, "download_urls[0].url: missing"),
            (
                r#"{"name": "a", "url": "ftp://h/a"}"#,
                "download_urls[0].url: \"ftp://h/a\" is a ftp URL",
            ),
            (
                r#"{"name": "a", "url": "nope"}"#,
                "download_urls[0].url: \"nope\" is not a URL",
            ),
            (
                r#"{"name": "a", "url": "http://h/a", "sha256": "abc"}"#,
                "download_urls[0].sha256: \"abc\" is not a SHA-256 digest",
            ),
            (
                r#"{"name": "a", "url": "http://h/a", "unpack": "rar"}"#,
                "download_urls[0].unpack: \"rar\" is not an archive format",
            ),
            (
                r#"{"name": "a", "url": "http://h/a", "unpack": true}"#,
                "download_urls[0].unpack: is true, but neither",
            ),
            (
                r#"{"name": "a", "url": "http://h/a", "read_only": "yes"}"#,
                "download_urls[0].read_only: expected true or false, got \"yes\"",
            ),
            (
                r#"{"name": "a", "url": "http://h/a", "sha": "1"}"#,
                "download_urls[0].sha: unknown field",
            ),
            (r#""http://h/a""#, "download_urls[0]: expected a map"),
        ] {
            assert_problem(
                &format!(r#"{{"cmd": "true", "download_urls": [{entry}]}}"#),
                expected,
            );
        }
        assert_problem(
            r#"{"cmd": "true", "download_urls": "http://h/a"}"#,
            "download_urls: expected a map of name: URL",
        );
    }

    #[test]
    fn env_takes_strings_and_scalars_as_written() {
        let spec = Spec::parse(
            "cmd: env\nenv:\n  PORT: 8080\n  DEBUG: true\n  NAME: x\n",
            Format::Yaml,
        )
        .unwrap();
        let env: Vec<(&str, &str)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("DEBUG", "true"), ("NAME", "x"), ("PORT", "8080")]);
        assert_problem(
            r#"{"cmd": "env", "env": {"A": [1]}}"#,
            "env.A: expected a string, got a list",
        );
        assert_problem(
            r#"{"cmd": "env", "env": {"A=B": "1"}}"#,
            "env.A=B: \"A=B\" is not a variable name",
        );
        assert_problem(
            r#"{"cmd": "env", "env": ["A"]}"#,
            "env: expected a map of NAME: value, got a list",
        );
    }

    #[test]
    fn python_deps_are_a_list_or_one_string_and_the_cheeseshop_a_url() {
        let spec = json(r#"{"cmd": "true", "python_deps": "-i https://i/simple pkg>=3", "python_cheeseshop": "https://pypi.example/simple"}"#).unwrap();
        assert_eq!(spec.python_deps, ["-i https://i/simple pkg>=3"]);
        assert_eq!(
            spec.python_cheeseshop.unwrap().host_str(),
            Some("pypi.example")
        );
        let spec = json(r#"{"cmd": "true", "python_deps": ["a", "b==1"]}"#).unwrap();
        assert_eq!(spec.python_deps, ["a", "b==1"]);
        assert_problem(
            r#"{"cmd": "true", "python_deps": ["pkg 'unclosed"]}"#,
            "python_deps[0]: cannot be split into pip's arguments as a shell would",
        );
        assert_problem(
            r#"{"cmd": "true", "python_deps": ["a", 1]}"#,
            "python_deps[1]: expected a string, got 1",
        );
        assert_problem(
            r#"{"cmd": "true", "python_deps": " "}"#,
            "python_deps: is empty",
        );
        assert_problem(
            r#"{"cmd": "true", "python_cheeseshop": "file:///x"}"#,
            "python_cheeseshop: \"file:///x\" is a file URL",
        );
    }

    #[test]
    fn timeout_is_seconds_or_a_humantime_string() {
        for (text, seconds) in [
            ("30", 30.0),
            ("1.5", 1.5),
            (r#""90s""#, 90.0),
            (r#""2h""#, 7200.0),
            (r#""1m 30s""#, 90.0),
            (r#""45""#, 45.0),
        ] {
            let spec = json(&format!(r#"{{"cmd": "true", "timeout": {text}}}"#)).unwrap();
            assert_eq!(
                spec.timeout,
                Some(Duration::from_secs_f64(seconds)),
                "{text}"
            );
        }
        assert_problem(
            r#"{"cmd": "true", "timeout": true}"#,
            r#"timeout: expected a duration like 30, "90s" or "2h", got true"#,
        );
        assert_problem(r#"{"cmd": "true", "timeout": "soon"}"#, r#"got "soon""#);
        assert_problem(
            r#"{"cmd": "true", "timeout": -1}"#,
            "timeout: expected a duration",
        );
        assert_problem(
            r#"{"cmd": "true", "timeout": 0}"#,
            "timeout: must be longer than zero",
        );
    }

    #[test]
    fn a_host_is_a_worker_name() {
        let spec = json(r#"{"cmd": "true", "host": "node-1"}"#).unwrap();
        assert_eq!(spec.host.as_deref(), Some("node-1"));
        assert_eq!(
            problems(r#"{"cmd": "true", "host": "a b"}"#),
            ["host: \"a b\" is not a host name (1 to 128 ASCII letters, digits, `-`, `_` and `.`)"]
        );
    }

    #[test]
    fn keep_dir_and_name_have_their_types() {
        let spec = json(r#"{"cmd": "true", "keep_dir": true, "name": "nightly"}"#).unwrap();
        assert!(spec.keep_dir);
        assert_eq!(spec.name.as_deref(), Some("nightly"));
        assert_problem(
            r#"{"cmd": "true", "keep_dir": "no"}"#,
            "keep_dir: expected true or false, got \"no\"",
        );
        assert_problem(
            r#"{"cmd": "true", "name": 7}"#,
            "name: expected a string, got 7",
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        assert_problem(
            r#"{"cmd": "true", "cmnd": "x"}"#,
            "cmnd: unknown field (a spec has name, cmd,",
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = problems(r#"{"timeout": true, "keep_dir": 1}"#);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn formats_follow_the_extension_or_are_detected() {
        assert_eq!(Format::of_path(Path::new("a.JSON")), Format::Json);
        assert_eq!(Format::of_path(Path::new("a.yml")), Format::Yaml);
        assert_eq!(Format::of_path(Path::new("-")), Format::Detect);
        assert_eq!(
            Spec::parse(r#"{"cmd": "true"}"#, Format::Detect)
                .unwrap()
                .cmd,
            ["true"]
        );
        assert_eq!(
            Spec::parse("cmd: [a, b]", Format::Detect).unwrap().cmd,
            ["a", "b"]
        );
        let error = Spec::parse(r#"{"cmd": "true""#, Format::Detect)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not valid JSON"), "{error}");
        let error = Spec::parse("cmd: [a", Format::Yaml)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not valid YAML"), "{error}");
        let error = Spec::parse("[1]", Format::Json).unwrap_err().to_string();
        assert!(error.contains("must be a map of fields"), "{error}");
        let error = Spec::parse("", Format::Yaml).unwrap_err().to_string();
        assert!(error.contains("empty document"), "{error}");
    }

    #[test]
    fn a_spec_serializes_to_a_spec_that_reads_back_the_same() {
        let spec = json(
            r#"{"name": "n", "cmd": "a 'b c'", "download_urls": [{"name": "t", "url": "http://h/t.tar", "unpack": "tar"}],
                "config": {"k": [1, 2]}, "env": {"A": "1"}, "python_deps": "x", "python_cheeseshop": "https://i/simple",
                "timeout": 5400, "keep_dir": true}"#,
        )
        .unwrap();
        let again = Spec::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }
}
