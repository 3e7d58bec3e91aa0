//! The Elasticsearch sink's configuration (`{ type = "elasticsearch", … }` in `sink` or `sinks`):
//! where the cluster is, how to authenticate, where records go, how requests are sized and
//! retried, and what the sink installs at start.
//!
//! Every field has a documented default; [`ElasticsearchConfig::problems`] checks the values once
//! at load (it reads `ca_file`, nothing else; `AggregatorConfig::resolve` reads the
//! `*_file` secrets before), so `ferry check` reports every problem and `ferry
//! aggregator` refuses to start on any.

use std::path::PathBuf;

use chrono::format::{Item, StrftimeItems};
use serde::{Deserialize, Serialize};

/// Request body compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestCompression {
    /// Bodies as they are (least CPU; the default).
    #[default]
    None,
    /// `Content-Encoding: gzip` at level 1 (about a tenth of the bytes on the wire for log
    /// documents, for some CPU).
    Gzip,
}

/// Configuration of one Elasticsearch sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// The sink's name: the `sink` label of its metrics and its folder under
    /// `<data_dir>/sinks/` (queue position, dead letters). Letters, digits, `_` and `-`.
    /// Default `elasticsearch`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Node URLs (`http://` or `https://`, with an optional path prefix). Requests go round
    /// robin over the nodes that answer; a node that fails a request is left out for a backoff
    /// and the request is retried on the next one (failover). Default `["http://127.0.0.1:9200"]`.
    #[serde(default = "default_urls")]
    pub urls: Vec<String>,
    /// User for HTTP basic authentication (with `password`). Default none.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for HTTP basic authentication. Default none.
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password (a mounted Docker or Kubernetes secret), read once at start;
    /// not with `password`. Default none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the password, read once at start; not with
    /// `password` or `password_file`. Default none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// API key, as the `encoded` value Elasticsearch returns (base64 of `id:key`), sent as
    /// `Authorization: ApiKey <api_key>`. Not together with `username`. Default none.
    #[serde(default)]
    pub api_key: Option<String>,
    /// File holding the API key (a mounted Docker or Kubernetes secret), read once at start;
    /// not with `api_key`. Default none.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Name of an environment variable holding the API key, read once at start; not with
    /// `api_key` or `api_key_file`. Default none.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// PEM file of the certificate authorities to trust for `https://` URLs (in addition to the
    /// system's). Default none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// UNSAFE: accept any certificate from the nodes (expired, self-signed, for another host).
    /// Anyone on the path can then read and change what is sent, credentials included. Only for
    /// a throwaway test cluster; use `ca_file` instead. Default `false`.
    #[serde(default)]
    pub tls_insecure_skip_verify: bool,
    /// Time limit of one request (connecting, sending, and reading the answer). Default 30000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Dataset part of the data stream name `logs-<dataset>-<namespace>`. Default `ferry`.
    #[serde(default = "default_dataset")]
    pub data_stream_dataset: String,
    /// Namespace part of the data stream name, for records without a `namespace_field` value.
    /// Default `default` (so the target is `logs-ferry-default`).
    #[serde(default = "default_namespace")]
    pub data_stream_namespace: String,
    /// A record field (dotted path, e.g. `kubernetes.namespace`) whose value becomes the data
    /// stream's namespace, sanitised to Elasticsearch's naming rules (lowercase; anything but
    /// `a-z`, `0-9`, `_` and `.` becomes `_`; at most 100 bytes). Default none.
    #[serde(default)]
    pub namespace_field: Option<String>,
    /// A dated index name instead of a data stream, e.g. `ferry-%Y.%m.%d`, formatted (chrono
    /// `strftime`) from each record's `@timestamp` in UTC. For clusters without data streams.
    /// Default none (data stream).
    #[serde(default)]
    pub index: Option<String>,
    /// Install the index template, the ILM policy and the data stream at start. Turn off for
    /// clusters where ferry's user may only write documents. Default `true`.
    #[serde(default = "default_true")]
    pub bootstrap: bool,
    /// ILM: roll the data stream over to a new backing index after this many days…
    /// Default 1.
    #[serde(default = "default_rollover_days")]
    pub ilm_rollover_max_age_days: u32,
    /// …or once a primary shard holds this many GB. Default 50.
    #[serde(default = "default_rollover_gb")]
    pub ilm_rollover_max_primary_shard_size_gb: u32,
    /// ILM: delete a backing index this many days after its rollover (a dated index: after its
    /// creation). Default 30.
    #[serde(default = "default_delete_days")]
    pub ilm_delete_after_days: u32,
    /// Largest bulk request body (uncompressed), at most Elasticsearch's
    /// `http.max_content_length` (100 MB by default). Default 5242880 (5 MiB).
    #[serde(default = "default_bulk_max_bytes")]
    pub bulk_max_bytes: usize,
    /// Most documents in one bulk request. Default 5000.
    #[serde(default = "default_bulk_max_records")]
    pub bulk_max_records: usize,
    /// Longest a document waits for its bulk request to fill before it is sent anyway.
    /// Default 200.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Bulk requests in flight at once. Default 2.
    #[serde(default = "default_concurrent_requests")]
    pub concurrent_requests: usize,
    /// `none` or `gzip` (level 1). Default `none`.
    #[serde(default)]
    pub request_compression: RequestCompression,
    /// First retry delay after a failed request or a rejected item; doubles per failure, with
    /// full jitter. Default 200.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest retry delay. Default 30000.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// An index that also receives every dead letter (with the reason, and the original record
    /// as a string so that it cannot fail the same way). The local dead-letter file is written
    /// in any case. Default none.
    #[serde(default)]
    pub dead_letter_index: Option<String>,
}

fn default_name() -> String {
    "elasticsearch".into()
}
fn default_urls() -> Vec<String> {
    vec!["http://127.0.0.1:9200".into()]
}
const fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_dataset() -> String {
    "ferry".into()
}
fn default_namespace() -> String {
    "default".into()
}
const fn default_true() -> bool {
    true
}
const fn default_rollover_days() -> u32 {
    1
}
const fn default_rollover_gb() -> u32 {
    50
}
const fn default_delete_days() -> u32 {
    30
}
const fn default_bulk_max_bytes() -> usize {
    5 << 20
}
const fn default_bulk_max_records() -> usize {
    5000
}
const fn default_flush_interval_ms() -> u64 {
    200
}
const fn default_concurrent_requests() -> usize {
    2
}
const fn default_backoff_initial_ms() -> u64 {
    200
}
const fn default_backoff_max_ms() -> u64 {
    30_000
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        ElasticsearchConfig {
            name: default_name(),
            urls: default_urls(),
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            api_key: None,
            api_key_file: None,
            api_key_env: None,
            ca_file: None,
            tls_insecure_skip_verify: false,
            request_timeout_ms: default_request_timeout_ms(),
            data_stream_dataset: default_dataset(),
            data_stream_namespace: default_namespace(),
            namespace_field: None,
            index: None,
            bootstrap: true,
            ilm_rollover_max_age_days: default_rollover_days(),
            ilm_rollover_max_primary_shard_size_gb: default_rollover_gb(),
            ilm_delete_after_days: default_delete_days(),
            bulk_max_bytes: default_bulk_max_bytes(),
            bulk_max_records: default_bulk_max_records(),
            flush_interval_ms: default_flush_interval_ms(),
            concurrent_requests: default_concurrent_requests(),
            request_compression: RequestCompression::None,
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            dead_letter_index: None,
        }
    }
}

/// Elasticsearch's largest request body by default (`http.max_content_length`).
pub(crate) const MAX_CONTENT_LENGTH: usize = 100 << 20;

/// Why `name` is not a valid index (or data stream) name, if it is not.
pub(crate) fn index_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Some("must be lowercase")
    } else if name.starts_with(['_', '-', '+', '.']) {
        Some("must not start with '_', '-', '+' or '.'")
    } else if name.len() > 255 {
        Some("must be at most 255 bytes")
    } else if name.chars().any(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
        )
    }) {
        Some("must not contain \\ / * ? \" < > | , # : or spaces")
    } else {
        None
    }
}

/// Why `part` cannot be a data stream's dataset or namespace, if it cannot.
fn stream_part_problem(part: &str) -> Option<&'static str> {
    if part.contains('-') {
        Some("must not contain '-' (it separates the parts of logs-<dataset>-<namespace>)")
    } else if part.len() > 100 {
        Some("must be at most 100 bytes")
    } else {
        index_name_problem(part)
    }
}

/// Turns a field value into a valid data stream namespace (see `namespace_field`); `None` when
/// nothing usable is left.
pub(crate) fn sanitise_namespace(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len().min(100));
    for c in value.chars() {
        let c = c.to_ascii_lowercase();
        let keep = c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.';
        if out.len() == 100 {
            break;
        }
        out.push(if keep { c } else { '_' });
    }
    let trimmed = out.trim_start_matches(['_', '.']);
    (!trimmed.is_empty() && trimmed != "." && trimmed != "..").then(|| trimmed.to_string())
}

impl ElasticsearchConfig {
    /// The data stream for records without a routed namespace.
    pub(crate) fn default_data_stream(&self) -> String {
        format!(
            "logs-{}-{}",
            self.data_stream_dataset, self.data_stream_namespace
        )
    }

    /// The fixed part of `index` before its first date field (the template matches it + `*`).
    pub(crate) fn index_prefix(&self) -> Option<&str> {
        self.index
            .as_deref()
            .map(|p| p.split('%').next().unwrap_or(""))
    }

    /// Every problem, each as (field below the sink, value as written or hidden, reason).
    pub(crate) fn problems(&self) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let mut bad = |field: &'static str, value: String, reason: &str| {
            out.push((field, value, reason.to_string()))
        };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bad(
                "name",
                format!("{:?}", self.name),
                "must be 1 to 64 letters, digits, '_' or '-'",
            );
        }
        if self.urls.is_empty() {
            bad("urls", "[]".into(), "must name at least one node");
        }
        let mut https = false;
        for (i, url) in self.urls.iter().enumerate() {
            match elasticsearch::http::Url::parse(url) {
                Ok(u) => {
                    if !matches!(u.scheme(), "http" | "https") {
                        bad(
                            "urls",
                            format!("{url:?}"),
                            "must start with http:// or https://",
                        );
                    } else if u.host_str().is_none_or(str::is_empty) {
                        bad("urls", format!("{url:?}"), "has no host");
                    } else if !u.username().is_empty() || u.password().is_some() {
                        bad(
                            "urls",
                            "(hidden: the URL holds credentials)".into(),
                            "must not hold credentials; use username/password or api_key",
                        );
                    } else if u.query().is_some() || u.fragment().is_some() {
                        bad(
                            "urls",
                            format!("{url:?}"),
                            "must not have a query or fragment",
                        );
                    }
                    https |= u.scheme() == "https";
                    if self.urls[..i].contains(url) {
                        bad("urls", format!("{url:?}"), "is listed twice");
                    }
                }
                Err(e) => bad("urls", format!("{url:?}"), &format!("is not a URL: {e}")),
            }
        }
        match (&self.username, &self.password, &self.api_key) {
            (Some(u), _, _) if u.is_empty() => bad("username", "\"\"".into(), "must not be empty"),
            (Some(_), None, _) => bad("password", "(none)".into(), "is required with username"),
            (None, Some(_), _) => bad("username", "(none)".into(), "is required with password"),
            (Some(_), Some(_), Some(_)) => bad(
                "api_key",
                "(hidden)".into(),
                "use either username/password or api_key, not both",
            ),
            _ => {}
        }
        if let Some(key) = &self.api_key {
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bad(
                    "api_key",
                    "(hidden)".into(),
                    "must be the encoded key (base64, no spaces)",
                );
            }
        }
        if let Some(path) = &self.ca_file {
            match std::fs::read(path) {
                Ok(pem) => {
                    if let Err(e) = elasticsearch::cert::Certificate::from_pem(&pem) {
                        bad(
                            "ca_file",
                            path.display().to_string(),
                            &format!("is not a PEM certificate: {e}"),
                        );
                    }
                }
                Err(e) => bad(
                    "ca_file",
                    path.display().to_string(),
                    &format!("cannot be read: {e}"),
                ),
            }
            if self.tls_insecure_skip_verify {
                bad(
                    "tls_insecure_skip_verify",
                    "true".into(),
                    "contradicts ca_file (which certificates to trust); keep one",
                );
            }
            if !https && !self.urls.is_empty() {
                bad(
                    "ca_file",
                    path.display().to_string(),
                    "is set but no url uses https://",
                );
            }
        }
        if self.request_timeout_ms == 0 {
            bad("request_timeout_ms", "0".into(), "must be positive");
        }
        if let Some(why) = stream_part_problem(&self.data_stream_dataset) {
            bad(
                "data_stream_dataset",
                format!("{:?}", self.data_stream_dataset),
                why,
            );
        }
        if let Some(why) = stream_part_problem(&self.data_stream_namespace) {
            bad(
                "data_stream_namespace",
                format!("{:?}", self.data_stream_namespace),
                why,
            );
        }
        if let Some(field) = &self.namespace_field {
            if field.split('.').any(str::is_empty) {
                bad(
                    "namespace_field",
                    format!("{field:?}"),
                    "must be a dotted field path such as kubernetes.namespace",
                );
            }
            if self.index.is_some() {
                bad(
                    "namespace_field",
                    format!("{field:?}"),
                    "routes data stream namespaces; it does not apply with index",
                );
            }
        }
        if let Some(pattern) = &self.index {
            if let Some(why) = index_pattern_problem(pattern) {
                bad("index", format!("{pattern:?}"), &why);
            }
        }
        for (field, value) in [
            ("ilm_rollover_max_age_days", self.ilm_rollover_max_age_days),
            (
                "ilm_rollover_max_primary_shard_size_gb",
                self.ilm_rollover_max_primary_shard_size_gb,
            ),
            ("ilm_delete_after_days", self.ilm_delete_after_days),
        ] {
            if value == 0 {
                bad(field, "0".into(), "must be at least 1");
            }
        }
        if self.bulk_max_bytes < 1024 || self.bulk_max_bytes > MAX_CONTENT_LENGTH {
            bad(
                "bulk_max_bytes",
                self.bulk_max_bytes.to_string(),
                &format!("must be between 1024 and {MAX_CONTENT_LENGTH} (Elasticsearch's default http.max_content_length)"),
            );
        }
        if self.bulk_max_records == 0 {
            bad("bulk_max_records", "0".into(), "must be at least 1");
        }
        if self.concurrent_requests == 0 || self.concurrent_requests > 64 {
            bad(
                "concurrent_requests",
                self.concurrent_requests.to_string(),
                "must be between 1 and 64",
            );
        }
        if self.backoff_initial_ms == 0 {
            bad("backoff_initial_ms", "0".into(), "must be positive");
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            bad(
                "backoff_max_ms",
                self.backoff_max_ms.to_string(),
                "must be at least backoff_initial_ms",
            );
        }
        if let Some(index) = &self.dead_letter_index {
            if let Some(why) = index_name_problem(index) {
                bad("dead_letter_index", format!("{index:?}"), why);
            }
        }
        out
    }
}

/// Why a dated index pattern cannot work, if it cannot: it must be a valid strftime pattern
/// whose every expansion is a valid index name.
fn index_pattern_problem(pattern: &str) -> Option<String> {
    if StrftimeItems::new(pattern).any(|i| matches!(i, Item::Error)) {
        return Some("is not a valid strftime pattern (e.g. ferry-%Y.%m.%d)".into());
    }
    let sample = chrono::DateTime::from_timestamp(1_795_000_000, 0).expect("a valid time");
    let name = sample.format(pattern).to_string();
    if let Some(why) = index_name_problem(&name) {
        return Some(format!("gives index names like {name:?}, which {why}"));
    }
    if !pattern.contains('%') {
        return Some(
            "has no date in it (e.g. ferry-%Y.%m.%d); every record would go to one index".into(),
        );
    }
    if pattern.starts_with('%') {
        return Some("must start with a fixed prefix (e.g. ferry-%Y.%m.%d): the index template matches <prefix>*".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(c: &ElasticsearchConfig) -> Vec<&'static str> {
        c.problems().into_iter().map(|(f, _, _)| f).collect()
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let c: ElasticsearchConfig = toml::from_str("").unwrap();
        assert_eq!(c, ElasticsearchConfig::default());
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.default_data_stream(), "logs-ferry-default");
        assert_eq!(c.urls, ["http://127.0.0.1:9200"]);
        assert_eq!(c.bulk_max_bytes, 5 << 20);
        assert!(c.bootstrap);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let c = ElasticsearchConfig {
            name: "es main".into(),
            urls: vec![
                "ftp://x".into(),
                "http://u:p@es:9200".into(),
                "not a url".into(),
            ],
            username: Some("u".into()),
            ca_file: Some("/nonexistent/ca.pem".into()),
            tls_insecure_skip_verify: true,
            request_timeout_ms: 0,
            data_stream_dataset: "my-app".into(),
            data_stream_namespace: "Prod".into(),
            namespace_field: Some("kubernetes..namespace".into()),
            index: Some("Ferry-%Y".into()),
            ilm_delete_after_days: 0,
            bulk_max_bytes: 10,
            bulk_max_records: 0,
            concurrent_requests: 0,
            backoff_initial_ms: 100,
            backoff_max_ms: 10,
            dead_letter_index: Some("_dead".into()),
            ..Default::default()
        };
        assert_eq!(
            fields(&c),
            [
                "name",
                "urls",
                "urls",
                "urls",
                "password",
                "ca_file",
                "tls_insecure_skip_verify",
                "ca_file",
                "request_timeout_ms",
                "data_stream_dataset",
                "data_stream_namespace",
                "namespace_field",
                "namespace_field",
                "index",
                "ilm_delete_after_days",
                "bulk_max_bytes",
                "bulk_max_records",
                "concurrent_requests",
                "backoff_max_ms",
                "dead_letter_index",
            ]
        );
        let text = format!("{:?}", c.problems());
        assert!(
            !text.contains("u:p@"),
            "credentials are never shown: {text}"
        );
    }

    #[test]
    fn index_patterns_are_checked_by_their_expansion() {
        assert_eq!(index_pattern_problem("ferry-%Y.%m.%d"), None);
        assert!(index_pattern_problem("ferry-%Q").is_some());
        assert!(index_pattern_problem("ferry").unwrap().contains("no date"));
        assert!(index_pattern_problem("ferry %Y")
            .unwrap()
            .contains("spaces"));
        assert!(index_pattern_problem("%Y-logs").unwrap().contains("prefix"));
    }

    #[test]
    fn namespaces_are_sanitised_to_es_rules() {
        assert_eq!(
            sanitise_namespace("kube-system").as_deref(),
            Some("kube_system")
        );
        assert_eq!(
            sanitise_namespace("Team A/Prod").as_deref(),
            Some("team_a_prod")
        );
        assert_eq!(sanitise_namespace("__x").as_deref(), Some("x"));
        assert_eq!(sanitise_namespace("--"), None);
        assert_eq!(sanitise_namespace(""), None);
        let long = sanitise_namespace(&"aü".repeat(300)).unwrap();
        assert!(long.len() <= 100);
        for ns in ["kube-system", "Team A/Prod", "a:b#c*d"] {
            let s = sanitise_namespace(ns).unwrap();
            assert_eq!(stream_part_problem(&s), None, "{s}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<ElasticsearchConfig>("url = \"http://x\"").unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
    }
}
