//! The aggregator's configuration: where it listens, who may send, how much it accepts and keeps,
//! and which sinks receive the queue.
//!
//! Every field has a documented default, so an empty table is a working configuration.
//! [`AggregatorConfig::validate`] checks the values once at load; nothing here opens sockets,
//! and the only file read is an Elasticsearch sink's `ca_file`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::alerts::AlertsConfig;
use crate::elasticsearch::ElasticsearchConfig;
use crate::queue::ENTRY_OVERHEAD_BYTES;
use crate::tls::TlsConfig;

/// Configuration of `ferry aggregator`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// Address the ingest, metrics and health endpoints listen on. Default `127.0.0.1:7480`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token agents must send (`Authorization: Bearer <token>`). The tokens accepted are
    /// this one, `tokens`, the lines of `token_file` and the value of `token_env` together; with
    /// none of them set there is no authentication (only sensible on a loopback or otherwise
    /// private address). Prefer `token_file` or `token_env`: a secret does not belong in a
    /// configuration file. Default none.
    #[serde(default)]
    pub token: Option<String>,
    /// Several accepted tokens at once, for rotation without downtime (add the new token, move
    /// the agents over, remove the old one, SIGHUP). Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// File holding the accepted tokens (a mounted Docker or Kubernetes secret), one per line;
    /// blank lines and lines starting with `#` are skipped, surrounding whitespace trimmed. Read
    /// at start and again on SIGHUP (a file that no longer reads, or holds no token, keeps the
    /// tokens in use). Default none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Name of an environment variable holding one accepted token, read at start. Default none.
    #[serde(default)]
    pub token_env: Option<String>,
    /// TLS on the listener (see [`TlsConfig`]): `cert_file`, `key_file`, and for mTLS
    /// `client_ca_file` and `client_allowlist`. Default none: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Directory holding the durable queue (`queue/`) and the local store (`store/`).
    /// Default `/var/lib/ferry/aggregator`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest request body accepted, as sent (compressed). Larger bodies get 413.
    /// Default 16 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest batch accepted after decompression. Larger batches (and decompression bombs)
    /// get 413. Default 64 MiB.
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: usize,
    /// Most bytes the durable queue may hold before new batches get 503 + `Retry-After`.
    /// Default 1 GiB.
    #[serde(default = "default_queue_max_bytes")]
    pub queue_max_bytes: u64,
    /// Size at which the queue starts a new segment file. Default 64 MiB.
    #[serde(default = "default_queue_segment_bytes")]
    pub queue_segment_bytes: u64,
    /// Value of the `Retry-After` header sent with 503 when the queue is full. Default 1.
    #[serde(default = "default_retry_after_seconds")]
    pub retry_after_seconds: u64,
    /// Where queued batches go, when there is one sink. Default `{ type = "local",
    /// retention_days = 7, max_sources = 250000 }`. Shorthand for `sinks` with one entry; set
    /// one or the other.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Several sinks reading the one queue, each with its own position in it (e.g. the local
    /// store and Elasticsearch); a queue segment is deleted once every sink has passed it. At
    /// most one `local` and one `discard`; Elasticsearch sinks need distinct `name`s. When set,
    /// `sink` must be left out. Default none (then `sink` applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkConfig>,
    /// How long a container's series stay on `/metrics` after its last stats sample arrived;
    /// then they are dropped (the container stopped, or its agent went away). Must be positive.
    /// Default 60.
    #[serde(default = "default_stats_grace_seconds")]
    pub stats_grace_seconds: u64,
    /// Threshold alerts: rule files, receivers, routes (see [`AlertsConfig`]). Default none:
    /// no rules are evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsConfig>,
}

/// The sink that drains the durable queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Per-day NDJSON files under `<data_dir>/store/`, searchable with `ferry search`.
    Local {
        /// Days of files to keep: a day file is deleted once its day is more than this many
        /// days before today (UTC). Default 7.
        #[serde(default = "default_retention_days")]
        retention_days: u32,
        /// Most sources (log file fingerprints) whose high-water marks the store keeps for
        /// de-duplication. A source is forgotten when its agent retires it; past this count the
        /// least recently stored tenth are forgotten too (`ferry_store_sources_evicted_total`),
        /// and a replay of one of those would be stored again. About 140 bytes of memory each
        /// (measured with 32-character fingerprints: 250000 sources take 33 MiB).
        /// Default 250000.
        #[serde(default = "default_max_sources")]
        max_sources: usize,
    },
    /// Counts records and drops them (for benchmarks).
    Discard,
    /// Bulk-indexes into an Elasticsearch cluster (see [`ElasticsearchConfig`]).
    Elasticsearch(Box<ElasticsearchConfig>),
}

impl SinkConfig {
    /// The sink's name: the `sink` label of its metrics.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Local { .. } => "local",
            SinkConfig::Discard => "discard",
            SinkConfig::Elasticsearch(es) => &es.name,
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Local {
            retention_days: default_retention_days(),
            max_sources: default_max_sources(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7480))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/ferry/aggregator")
}

const fn default_max_body_bytes() -> usize {
    16 << 20
}

const fn default_max_decompressed_bytes() -> usize {
    64 << 20
}

const fn default_queue_max_bytes() -> u64 {
    1 << 30
}

const fn default_queue_segment_bytes() -> u64 {
    64 << 20
}

const fn default_retry_after_seconds() -> u64 {
    1
}

const fn default_stats_grace_seconds() -> u64 {
    60
}

const fn default_retention_days() -> u32 {
    7
}

const fn default_max_sources() -> usize {
    250_000
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            listen: default_listen(),
            token: None,
            tokens: Vec::new(),
            token_file: None,
            token_env: None,
            tls: None,
            data_dir: default_data_dir(),
            max_body_bytes: default_max_body_bytes(),
            max_decompressed_bytes: default_max_decompressed_bytes(),
            queue_max_bytes: default_queue_max_bytes(),
            queue_segment_bytes: default_queue_segment_bytes(),
            retry_after_seconds: default_retry_after_seconds(),
            sink: SinkConfig::default(),
            sinks: Vec::new(),
            stats_grace_seconds: default_stats_grace_seconds(),
            alerts: None,
        }
    }
}

/// A configuration value that cannot work, with the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("aggregator.{field} = {value}: {reason}")]
pub struct ConfigError {
    /// Dotted field name below the aggregator table, e.g. `sink.retention_days` or
    /// `sinks[1].urls`.
    pub field: String,
    /// The offending value as written (secrets are never shown).
    pub value: String,
    pub reason: String,
}

/// Reads the secret in `file` (the field `<field>_file` names it), or in the environment
/// variable `env` names (`<field>_env`), into `value`, surrounding whitespace trimmed; a problem
/// when it cannot, or when more than one source is set. Problems name the file or the variable,
/// never the secret.
fn resolve_secret(
    field: &str,
    value: &mut Option<String>,
    file: &Option<PathBuf>,
    env: &Option<String>,
    out: &mut Vec<ConfigError>,
) {
    if let Some(var) = env {
        let mut bad = |reason: String| {
            out.push(ConfigError {
                field: format!("{field}_env"),
                value: format!("{var:?}"),
                reason,
            })
        };
        if value.is_some() || file.is_some() {
            return bad(format!(
                "set one of `{field}`, `{field}_file` and `{field}_env`, not several"
            ));
        }
        match std::env::var(var) {
            Ok(text) if !text.trim().is_empty() => *value = Some(text.trim().to_string()),
            _ => bad("the environment variable is not set or empty".into()),
        }
        return;
    }
    let Some(path) = file else {
        return;
    };
    let mut bad = |reason: String| {
        out.push(ConfigError {
            field: format!("{field}_file"),
            value: format!("{:?}", path.display().to_string()),
            reason,
        })
    };
    if value.is_some() {
        return bad(format!("set either `{field}` or `{field}_file`, not both"));
    }
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => *value = Some(text.trim().to_string()),
        Ok(_) => bad("the file is empty".into()),
        Err(e) => bad(format!("cannot read it: {e}")),
    }
}

/// Queue entries carry a u32 length in a header of [`ENTRY_OVERHEAD_BYTES`].
const MAX_ENTRY_PAYLOAD: u64 = u32::MAX as u64;

impl AggregatorConfig {
    /// The sinks to run: `sinks`, or else the one `sink`.
    pub fn sink_list(&self) -> Vec<SinkConfig> {
        if self.sinks.is_empty() {
            vec![self.sink.clone()]
        } else {
            self.sinks.clone()
        }
    }

    /// Every bearer token agents may send: `token`, `tokens`, the lines of `token_file` and the
    /// value of `token_env`, read now (at start and on each reload). Empty: no authentication.
    /// Problems name the file, its line or the variable, never a token.
    pub fn read_tokens(&self) -> Result<Vec<String>, Vec<ConfigError>> {
        let mut tokens: Vec<String> = self.token.iter().chain(&self.tokens).cloned().collect();
        let mut out = Vec::new();
        let unfit = |t: &str| t.chars().any(|c| c.is_whitespace() || c.is_control());
        if let Some(path) = &self.token_file {
            let bad = |reason: String| ConfigError {
                field: "token_file".into(),
                value: format!("{:?}", path.display().to_string()),
                reason,
            };
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let before = tokens.len();
                    for (i, line) in text.lines().enumerate() {
                        let line = line.trim();
                        if line.is_empty() || line.starts_with('#') {
                            continue;
                        }
                        if unfit(line) {
                            out.push(bad(format!(
                                "line {}: a token must not contain whitespace or control characters",
                                i + 1
                            )));
                        } else {
                            tokens.push(line.to_string());
                        }
                    }
                    if tokens.len() == before && out.is_empty() {
                        out.push(bad("holds no token".into()));
                    }
                }
                Err(e) => out.push(bad(format!("cannot read it: {e}"))),
            }
        }
        if let Some(var) = &self.token_env {
            let bad = |reason: &str| ConfigError {
                field: "token_env".into(),
                value: format!("{var:?}"),
                reason: reason.into(),
            };
            match std::env::var(var) {
                Ok(v) if unfit(v.trim()) => out.push(bad(
                    "the token must not contain whitespace or control characters",
                )),
                Ok(v) if !v.trim().is_empty() => tokens.push(v.trim().to_string()),
                _ => out.push(bad("the environment variable is not set or empty")),
            }
        }
        if out.is_empty() {
            Ok(tokens)
        } else {
            Err(out)
        }
    }

    /// Takes in what the configuration names outside itself: each Elasticsearch sink's
    /// `password_file`/`password_env` and `api_key_file`/`api_key_env` become `password` and
    /// `api_key`; the token sources are read to report their problems (the server reads them
    /// again at start and on SIGHUP, see [`Self::read_tokens`]). Returns every problem, each
    /// with its field; run [`Self::problems`] afterwards.
    pub fn resolve(&mut self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if let Err(problems) = self.read_tokens() {
            out.extend(problems);
        }
        let one_sink = self.sinks.is_empty();
        let at = |i: usize, field: &str| match one_sink {
            true => format!("sink.{field}"),
            false => format!("sinks[{i}].{field}"),
        };
        let mut named = Vec::new();
        let list = if self.sinks.is_empty() {
            std::slice::from_mut(&mut self.sink)
        } else {
            &mut self.sinks[..]
        };
        for (i, sink) in list.iter_mut().enumerate() {
            if let SinkConfig::Elasticsearch(es) = sink {
                let es = &mut **es;
                named.push((
                    i,
                    "password",
                    &mut es.password,
                    &es.password_file,
                    &es.password_env,
                ));
                named.push((
                    i,
                    "api_key",
                    &mut es.api_key,
                    &es.api_key_file,
                    &es.api_key_env,
                ));
            }
        }
        for (i, field, value, file, env) in named {
            let mut problems = Vec::new();
            resolve_secret(field, value, file, env, &mut problems);
            out.extend(problems.into_iter().map(|mut p| {
                p.field = at(i, &p.field);
                p
            }));
        }
        out
    }

    /// Checks the configuration; returns the first problem (see [`Self::problems`] for all).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem with the configuration, in field order (empty when it is valid).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let mut bad = |field: &str, value: String, reason: String| {
            out.push(ConfigError {
                field: field.to_string(),
                value,
                reason,
            })
        };
        let inline = self.token.iter().map(|t| ("token".to_string(), t));
        let listed = (self.tokens.iter().enumerate()).map(|(i, t)| (format!("tokens[{i}]"), t));
        for (field, token) in inline.chain(listed) {
            if token.trim().is_empty() {
                bad(&field, "\"\"".into(), "an empty token would let anyone in; remove the field to disable authentication".into());
            } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bad(
                    &field,
                    "(hidden)".into(),
                    "must not contain whitespace or control characters".into(),
                );
            }
        }
        if let Some(tls) = &self.tls {
            for (field, value, reason) in tls.problems() {
                bad(&format!("tls.{field}"), value, reason);
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            bad("data_dir", "\"\"".into(), "must name a directory".into());
        }
        if self.max_body_bytes == 0 {
            bad("max_body_bytes", "0".into(), "must be positive".into());
        }
        if self.max_decompressed_bytes == 0 {
            bad(
                "max_decompressed_bytes",
                "0".into(),
                "must be positive".into(),
            );
        } else if self.max_decompressed_bytes as u64 > MAX_ENTRY_PAYLOAD {
            bad(
                "max_decompressed_bytes",
                self.max_decompressed_bytes.to_string(),
                format!("must be at most {MAX_ENTRY_PAYLOAD} (queue entries are at most 4 GiB)"),
            );
        }
        let largest_entry = self.max_decompressed_bytes as u64 + ENTRY_OVERHEAD_BYTES;
        if self.queue_max_bytes < largest_entry {
            bad(
                "queue_max_bytes",
                self.queue_max_bytes.to_string(),
                format!(
                    "must hold at least one largest batch (max_decompressed_bytes + {ENTRY_OVERHEAD_BYTES} = {largest_entry})"
                ),
            );
        }
        if self.queue_segment_bytes == 0 {
            bad("queue_segment_bytes", "0".into(), "must be positive".into());
        }
        if self.retry_after_seconds == 0 {
            bad(
                "retry_after_seconds",
                "0".into(),
                "must be at least 1".into(),
            );
        }
        if self.stats_grace_seconds == 0 {
            bad(
                "stats_grace_seconds",
                "0".into(),
                "must be at least 1".into(),
            );
        }
        if !self.sinks.is_empty() && self.sink != SinkConfig::default() {
            bad(
                "sink",
                format!("{{ type = \"{}\" }}", self.sink.name()),
                "set either sink or sinks, not both (sinks lists every sink)".into(),
            );
        }
        let (list, prefix) = if self.sinks.is_empty() {
            (std::slice::from_ref(&self.sink), None)
        } else {
            (&self.sinks[..], Some("sinks"))
        };
        for (i, sink) in list.iter().enumerate() {
            let at = match prefix {
                Some(p) => format!("{p}[{i}]"),
                None => "sink".to_string(),
            };
            let name = sink.name();
            if list[..i].iter().any(|other| other.name() == name) {
                let why = match sink {
                    SinkConfig::Elasticsearch(_) => {
                        "another sink has this name; give each Elasticsearch sink its own name"
                    }
                    _ => "there may be only one sink of this type",
                };
                bad(&format!("{at}.name"), format!("{name:?}"), why.into());
            }
            match sink {
                SinkConfig::Local {
                    retention_days,
                    max_sources,
                } => {
                    if *retention_days == 0 {
                        bad(
                            &format!("{at}.retention_days"),
                            "0".into(),
                            "must be at least 1".into(),
                        );
                    }
                    if *max_sources < 10 {
                        bad(
                            &format!("{at}.max_sources"),
                            max_sources.to_string(),
                            "must be at least 10".into(),
                        );
                    }
                }
                SinkConfig::Elasticsearch(es) => {
                    for (field, value, reason) in es.problems() {
                        bad(&format!("{at}.{field}"), value, reason);
                    }
                }
                SinkConfig::Discard => {}
            }
        }
        if let Some(alerts) = &self.alerts {
            out.extend(alerts.problems());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_gives_documented_defaults() {
        let config: AggregatorConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, AggregatorConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:7480");
        assert_eq!(config.max_body_bytes, 16 << 20);
        assert_eq!(
            config.sink,
            SinkConfig::Local {
                retention_days: 7,
                max_sources: 250_000
            }
        );
        config.validate().unwrap();
    }

    #[test]
    fn stats_grace_defaults_to_a_minute_and_must_be_positive() {
        assert_eq!(AggregatorConfig::default().stats_grace_seconds, 60);
        let config = AggregatorConfig {
            stats_grace_seconds: 0,
            ..Default::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "stats_grace_seconds");
    }

    #[test]
    fn sink_is_a_tagged_table() {
        let c: AggregatorConfig = serde_json::from_str(r#"{"sink":{"type":"discard"}}"#).unwrap();
        assert_eq!(c.sink, SinkConfig::Discard);
        let c: AggregatorConfig =
            serde_json::from_str(r#"{"sink":{"type":"local","retention_days":3}}"#).unwrap();
        assert_eq!(
            c.sink,
            SinkConfig::Local {
                retention_days: 3,
                max_sources: 250_000
            }
        );
        let c: AggregatorConfig =
            serde_json::from_str(r#"{"sink":{"type":"local","max_sources":1000}}"#).unwrap();
        assert_eq!(
            c.sink,
            SinkConfig::Local {
                retention_days: 7,
                max_sources: 1000
            }
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err =
            serde_json::from_str::<AggregatorConfig>(r#"{"listen_addr":"0.0.0.0:1"}"#).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err =
            serde_json::from_str::<AggregatorConfig>(r#"{"sink":{"type":"local","retention":3}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("retention"), "{err}");
    }

    #[test]
    fn reports_every_problem_and_hides_the_token() {
        let config = AggregatorConfig {
            token: Some("se cret".into()),
            queue_max_bytes: 10,
            retry_after_seconds: 0,
            sink: SinkConfig::Local {
                retention_days: 0,
                max_sources: 9,
            },
            ..Default::default()
        };
        let problems = config.problems();
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "token",
                "queue_max_bytes",
                "retry_after_seconds",
                "sink.retention_days",
                "sink.max_sources"
            ]
        );
        assert!(!problems[0].to_string().contains("cret"), "{}", problems[0]);
        assert_eq!(config.validate().unwrap_err(), problems[0]);
        assert!(problems[1]
            .to_string()
            .contains("aggregator.queue_max_bytes = 10"));
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn tokens_come_from_every_source_and_problems_never_show_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "# rotation: new first
  new-tok

old-tok
",
        )
        .unwrap();
        std::env::set_var("FERRY_AGG_TEST_TOKEN", "env-tok");
        let config = AggregatorConfig {
            tokens: vec!["listed-tok".into()],
            token_file: Some(file.clone()),
            token_env: Some("FERRY_AGG_TEST_TOKEN".into()),
            ..AggregatorConfig::default()
        };
        assert_eq!(
            config.read_tokens().unwrap(),
            ["listed-tok", "new-tok", "old-tok", "env-tok"]
        );

        std::fs::write(
            &file,
            "good-tok
bad tok-with-space
",
        )
        .unwrap();
        let config = AggregatorConfig {
            token_file: Some(file.clone()),
            token_env: Some("FERRY_AGG_TEST_UNSET".into()),
            tokens: vec!["x y-listed".into()],
            ..AggregatorConfig::default()
        };
        let problems = config.read_tokens().unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 2, "{text:?}");
        assert!(text[0].contains("line 2"), "{text:?}");
        assert!(text[1].contains("FERRY_AGG_TEST_UNSET"), "{text:?}");
        let listed = config.problems();
        assert_eq!(listed[0].field, "tokens[0]");
        for text in text.iter().chain([&listed[0].to_string()]) {
            assert!(
                !text.contains("tok-with") && !text.contains("y-listed"),
                "{text}"
            );
        }
    }

    #[test]
    fn tls_table_is_checked_field_by_field() {
        let config: AggregatorConfig = toml::from_str(
            "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nclient_allowlist = [\"agent-1\", \"\"]\n",
        )
        .unwrap();
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(tls.reload_interval_ms, 10_000);
        let fields: Vec<String> = config.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["tls.client_allowlist", "tls.client_allowlist[1]"]);
        let err = toml::from_str::<AggregatorConfig>("[tls]\ncert_file = \"/c\"\n").unwrap_err();
        assert!(err.to_string().contains("key_file"), "{err}");
    }

    #[test]
    fn es_secrets_come_from_the_environment() {
        std::env::set_var("FERRY_AGG_TEST_ES_PASSWORD", "es-pass");
        let mut config: AggregatorConfig = toml::from_str(
            "sink = { type = \"elasticsearch\", username = \"ferry\", password_env = \"FERRY_AGG_TEST_ES_PASSWORD\" }",
        )
        .unwrap();
        assert_eq!(config.resolve(), []);
        let SinkConfig::Elasticsearch(es) = &config.sink else {
            panic!("an Elasticsearch sink")
        };
        assert_eq!(es.password.as_deref(), Some("es-pass"));
        let mut both: AggregatorConfig = toml::from_str(
            "sink = { type = \"elasticsearch\", api_key = \"k\", api_key_env = \"FERRY_AGG_TEST_ES_PASSWORD\" }",
        )
        .unwrap();
        let problems = both.resolve();
        assert_eq!(problems[0].field, "sink.api_key_env", "{problems:?}");
    }
}

#[cfg(test)]
mod sinks_tests {
    use super::*;

    fn parse(text: &str) -> AggregatorConfig {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sinks_list_several_sinks_and_sink_is_its_shorthand() {
        let c = parse(
            r#"sinks = [
                { type = "local", retention_days = 3 },
                { type = "elasticsearch", urls = ["http://es-1:9200", "http://es-2:9200"] },
            ]"#,
        );
        c.validate().unwrap();
        let list = c.sink_list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0],
            SinkConfig::Local {
                retention_days: 3,
                max_sources: default_max_sources()
            }
        );
        assert_eq!(list[1].name(), "elasticsearch");
        let c = parse(r#"sink = { type = "elasticsearch" }"#);
        assert_eq!(c.sink_list().len(), 1);
        assert_eq!(parse("").sink_list(), [SinkConfig::default()]);
    }

    #[test]
    fn every_sink_problem_is_reported_with_its_place() {
        let c = parse(
            r#"sink = { type = "discard" }
            sinks = [
                { type = "local", retention_days = 0 },
                { type = "elasticsearch", urls = [], bulk_max_records = 0 },
                { type = "elasticsearch", name = "elasticsearch" },
                { type = "local" },
            ]"#,
        );
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "sink",
                "sinks[0].retention_days",
                "sinks[1].urls",
                "sinks[1].bulk_max_records",
                "sinks[2].name",
                "sinks[3].name",
            ]
        );
        let one = parse(r#"sink = { type = "elasticsearch", request_timeout_ms = 0 }"#);
        assert_eq!(
            one.validate().unwrap_err().to_string(),
            "aggregator.sink.request_timeout_ms = 0: must be positive"
        );
    }

    #[test]
    fn unknown_elasticsearch_keys_are_refused() {
        let err = toml::from_str::<AggregatorConfig>(
            r#"sink = { type = "elasticsearch", hosts = ["http://x"] }"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("hosts"), "{err}");
    }

    #[test]
    fn resolve_reads_the_token_file_and_names_it_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("ferry_token");
        std::fs::write(&secret, "  s3cret\n").unwrap();
        let mut config = AggregatorConfig {
            token_file: Some(secret.clone()),
            ..AggregatorConfig::default()
        };
        assert_eq!(config.resolve(), []);
        assert_eq!(config.read_tokens().unwrap(), ["s3cret"]);

        let missing = dir.path().join("missing");
        let problems = AggregatorConfig {
            token_file: Some(missing.clone()),
            ..AggregatorConfig::default()
        }
        .resolve();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "token_file");
        let text = problems[0].to_string();
        assert!(text.contains(&*missing.to_string_lossy()), "{text}");

        // Every source counts: the inline token and the file's lines are all accepted.
        let both = AggregatorConfig {
            token: Some("inline".into()),
            token_file: Some(secret.clone()),
            ..AggregatorConfig::default()
        };
        assert_eq!(both.read_tokens().unwrap(), ["inline", "s3cret"]);

        // An Elasticsearch sink's password and API key, from their files, named by position.
        let key = dir.path().join("es_api_key");
        std::fs::write(&key, "VnVhQ2ZHY0JDZGJrUW0=\n").unwrap();
        let mut config: AggregatorConfig = toml::from_str(&format!(
            "token_file = {secret:?}\nsinks = [{{ type = \"local\" }}, \
             {{ type = \"elasticsearch\", api_key_file = {key:?} }}, \
             {{ type = \"elasticsearch\", name = \"b\", username = \"ferry\", password_file = {missing:?} }}]"
        ))
        .unwrap();
        let problems = config.resolve();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "sinks[2].password_file");
        let SinkConfig::Elasticsearch(es) = &config.sinks[1] else {
            panic!("an Elasticsearch sink")
        };
        assert_eq!(es.api_key.as_deref(), Some("VnVhQ2ZHY0JDZGJrUW0="));
    }
}
