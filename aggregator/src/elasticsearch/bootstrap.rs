//! What the sink checks and installs before its first bulk request (unless `bootstrap = false`):
//! the cluster's product and version (`GET /`), an ILM policy, an index template with
//! ECS-friendly mappings, the data stream, and the dead-letter index's template and policy.
//!
//! - Elasticsearch 8.x and 9.x are accepted. OpenSearch (`"distribution": "opensearch"`) is
//!   refused: it has no `flattened` field type (ferry maps container labels with it), manages
//!   lifecycles with ISM instead of ILM, and its clients' compatibility rules differ. Anything
//!   else (another version, no `X-Elastic-Product: Elasticsearch` header, not JSON) is refused.
//! - Every object carries `_meta.ferry_hash`, a hash of its body: an object whose hash matches is
//!   left alone, so a second start changes nothing; a changed configuration replaces it.
//! - The template's priority is 501, above the built-in `logs-*-*` (100). Container labels are
//!   one `flattened` field, so `app` and `app.kubernetes.io/name` cannot conflict (a label is
//!   searched as `container.labels.app: web`, with keyword semantics).
//!
//! Errors are either transient (no answer, 429, 5xx: retried) or fatal (the wrong product or
//! version, refused credentials or privileges, a refused definition: the sink stops and says
//! why).

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};

use super::config::ElasticsearchConfig;
use super::service::{answer, Answer};
use super::settlement::error_text;

/// Priority of ferry's templates: above the built-in `logs-*-*` (100).
pub(crate) const TEMPLATE_PRIORITY: u64 = 501;

/// Why bootstrapping did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BootstrapError {
    /// Worth retrying: no answer, 429, 5xx.
    Transient(String),
    /// The cluster or the configuration is wrong; retrying will not help.
    Fatal(String),
}

impl std::fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootstrapError::Transient(m) | BootstrapError::Fatal(m) => f.write_str(m),
        }
    }
}

/// What `GET /` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterInfo {
    pub(crate) version: String,
}

/// The names of what ferry installs for a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    pub(crate) template: String,
    pub(crate) policy: String,
    pub(crate) dead_letter_template: String,
    pub(crate) dead_letter_policy: String,
}

impl Names {
    pub(crate) fn of(config: &ElasticsearchConfig) -> Names {
        let base = format!("ferry-{}", config.name);
        Names {
            template: base.clone(),
            policy: base.clone(),
            dead_letter_template: format!("{base}-dead-letter"),
            dead_letter_policy: format!("{base}-dead-letter"),
        }
    }
}

/// The mappings of ferry's records (ECS names).
fn mappings() -> Value {
    let keyword = json!({"type": "keyword", "ignore_above": 1024});
    json!({
        "dynamic_templates": [
            {"strings_as_keyword": {"match_mapping_type": "string", "mapping": keyword}}
        ],
        "properties": {
            "@timestamp": {"type": "date_nanos"},
            "message": {"type": "match_only_text"},
            "stream": keyword,
            "event": {"properties": {
                "id": keyword, "ingested": {"type": "date"}, "created": {"type": "date_nanos"}
            }},
            "log": {"properties": {
                "level": keyword,
                "offset": {"type": "long"},
                "flags": keyword,
                "file": {"properties": {"path": keyword, "fingerprint": keyword}}
            }},
            "host": {"properties": {"name": keyword}},
            "container": {"properties": {
                "id": keyword,
                "name": keyword,
                "image": {"properties": {"name": keyword}},
                "labels": {"type": "flattened"}
            }},
            "kubernetes": {"properties": {
                "namespace": keyword,
                "pod": {"properties": {"name": keyword, "uid": keyword}},
                "container": {"properties": {"name": keyword}}
            }},
            "parse": {"properties": {"error": keyword, "rule": keyword}},
            "source": {"properties": {"ip": {"type": "ip"}}},
            "http": {"properties": {
                "request": {"properties": {"method": keyword}},
                "response": {"properties": {
                    "status_code": {"type": "long"},
                    "body": {"properties": {"bytes": {"type": "long"}}}
                }}
            }},
            "url": {"properties": {"original": keyword, "path": keyword}},
            "user_agent": {"properties": {"original": keyword}},
            "process": {"properties": {"pid": {"type": "long"}}},
            "error": {"properties": {"type": keyword, "message": {"type": "match_only_text"}, "stack_trace": {"type": "text", "index": false}}}
        }
    })
}

/// A body with `_meta` naming ferry and the hash of the rest.
fn with_meta(mut body: Value, meta_at: &[&str]) -> Value {
    let hash = format!("{:016x}", fnv1a(body.to_string().as_bytes()));
    let mut target = &mut body;
    for key in meta_at {
        target = &mut target[*key];
    }
    target["_meta"] = json!({"managed_by": "ferry", "ferry_hash": hash});
    body
}

fn fnv1a(bytes: &[u8]) -> u64 {
    // FNV-1a: stable across versions and platforms, enough to notice a changed definition.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The ILM policy: roll over (data stream) and delete.
pub(crate) fn policy_body(config: &ElasticsearchConfig, rollover: bool) -> Value {
    let mut hot = json!({"min_age": "0ms", "actions": {}});
    if rollover {
        hot["actions"]["rollover"] = json!({
            "max_age": format!("{}d", config.ilm_rollover_max_age_days),
            "max_primary_shard_size": format!("{}gb", config.ilm_rollover_max_primary_shard_size_gb),
        });
    }
    with_meta(
        json!({"policy": {"phases": {
            "hot": hot,
            "delete": {"min_age": format!("{}d", config.ilm_delete_after_days), "actions": {"delete": {}}}
        }}}),
        &["policy"],
    )
}

/// The index template for the sink's records.
pub(crate) fn template_body(config: &ElasticsearchConfig, names: &Names) -> Value {
    let mut body = json!({
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": {"index.lifecycle.name": names.policy},
            "mappings": mappings(),
        },
    });
    match config.index_prefix() {
        Some(prefix) => body["index_patterns"] = json!([format!("{prefix}*")]),
        None => {
            body["index_patterns"] = json!([format!("logs-{}-*", config.data_stream_dataset)]);
            body["data_stream"] = json!({});
        }
    }
    with_meta(body, &[])
}

/// The template of the dead-letter index: the reason, and the record as an unparsed string.
pub(crate) fn dead_letter_template_body(index: &str, names: &Names) -> Value {
    let keyword = json!({"type": "keyword", "ignore_above": 1024});
    with_meta(
        json!({
            "index_patterns": [index],
            "priority": TEMPLATE_PRIORITY,
            "template": {
                "settings": {"index.lifecycle.name": names.dead_letter_policy},
                "mappings": {
                    "dynamic": false,
                    "properties": {
                        "@timestamp": {"type": "date"},
                        "event": {"properties": {"id": keyword}},
                        "ferry": {"properties": {"sink": keyword, "target": keyword}},
                        "error": {"properties": {"status": {"type": "long"}, "message": {"type": "text"}}},
                        "record": {"type": "text"}
                    }
                }
            }
        }),
        &[],
    )
}

/// Checks the cluster, then installs what is missing or changed. `Ok` when the sink may index.
pub(crate) async fn run(
    client: &Elasticsearch,
    config: &ElasticsearchConfig,
) -> Result<ClusterInfo, BootstrapError> {
    let info = check_cluster(client).await?;
    let names = Names::of(config);
    let data_stream = config.index.is_none();
    ensure(
        client,
        &format!("_ilm/policy/{}", names.policy),
        policy_body(config, data_stream),
        |got| got[&names.policy]["policy"]["_meta"]["ferry_hash"].clone(),
        &["policy", "_meta", "ferry_hash"],
        "ILM policy",
    )
    .await?;
    ensure(
        client,
        &format!("_index_template/{}", names.template),
        template_body(config, &names),
        |got| got["index_templates"][0]["index_template"]["_meta"]["ferry_hash"].clone(),
        &["_meta", "ferry_hash"],
        "index template",
    )
    .await?;
    if data_stream {
        let stream = config.default_data_stream();
        match request(client, Method::Get, &format!("_data_stream/{stream}"), None).await? {
            (200, _) => {}
            (404, _) => {
                match request(client, Method::Put, &format!("_data_stream/{stream}"), None).await? {
                    (200, _) => tracing::info!(data_stream = %stream, "Data stream created"),
                    // Created meanwhile by the first write or another aggregator.
                    (400, body) if body.contains("resource_already_exists_exception") => {}
                    (status, body) => {
                        return Err(refused("creating data stream", &stream, status, &body))
                    }
                }
            }
            (status, body) => return Err(refused("reading data stream", &stream, status, &body)),
        }
    }
    if let Some(index) = &config.dead_letter_index {
        ensure(
            client,
            &format!("_ilm/policy/{}", names.dead_letter_policy),
            policy_body(config, false),
            |got| got[&names.dead_letter_policy]["policy"]["_meta"]["ferry_hash"].clone(),
            &["policy", "_meta", "ferry_hash"],
            "ILM policy",
        )
        .await?;
        ensure(
            client,
            &format!("_index_template/{}", names.dead_letter_template),
            dead_letter_template_body(index, &names),
            |got| got["index_templates"][0]["index_template"]["_meta"]["ferry_hash"].clone(),
            &["_meta", "ferry_hash"],
            "index template",
        )
        .await?;
    }
    Ok(info)
}

/// `GET /`: Elasticsearch 8.x or 9.x, or a clear refusal.
pub(crate) async fn check_cluster(client: &Elasticsearch) -> Result<ClusterInfo, BootstrapError> {
    let sent = client
        .transport()
        .send(
            Method::Get,
            "/",
            HeaderMap::new(),
            None::<&()>,
            None::<()>,
            None,
        )
        .await;
    let product = sent.as_ref().ok().and_then(|r| {
        r.headers()
            .get("x-elastic-product")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    });
    let (status, body) = match answer(sent).await {
        Answer::Status(status, body) => (status, body),
        Answer::Failed(reason) => {
            return Err(BootstrapError::Transient(format!("GET / failed: {reason}")))
        }
    };
    let text = String::from_utf8_lossy(&body);
    match status {
        200 => {}
        401 => {
            return Err(BootstrapError::Fatal(
                "GET / answered 401: the cluster refused the credentials (username/password or api_key)".into(),
            ))
        }
        403 => {
            return Err(BootstrapError::Fatal(format!(
                "GET / answered 403 ({}): the user lacks the `monitor` cluster privilege; grant it, or set bootstrap = false",
                error_text(&text)
            )))
        }
        429 | 500..=599 => {
            return Err(BootstrapError::Transient(format!(
                "GET / answered {status}: {}",
                error_text(&text)
            )))
        }
        other => {
            return Err(BootstrapError::Fatal(format!(
                "GET / answered {other}: {}",
                error_text(&text)
            )))
        }
    }
    let info: Value = serde_json::from_slice(&body).map_err(|e| {
        BootstrapError::Fatal(format!(
            "GET / did not answer JSON ({e}); is this an Elasticsearch URL? It said: {}",
            text.chars().take(200).collect::<String>()
        ))
    })?;
    let version = info["version"]["number"].as_str().unwrap_or("").to_string();
    if info["version"]["distribution"].as_str() == Some("opensearch") {
        return Err(BootstrapError::Fatal(format!(
            "the cluster is OpenSearch {version}, which ferry does not support (no `flattened` field for container labels, ISM instead of ILM); use Elasticsearch 8.x or 9.x"
        )));
    }
    if product.as_deref() != Some("Elasticsearch") {
        return Err(BootstrapError::Fatal(format!(
            "the server at this URL does not say it is Elasticsearch (no `X-Elastic-Product: Elasticsearch` header; version {version:?}); ferry supports Elasticsearch 8.x and 9.x"
        )));
    }
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(8 | 9) => Ok(ClusterInfo { version }),
        _ => Err(BootstrapError::Fatal(format!(
            "Elasticsearch {version:?} is not supported; ferry supports 8.x and 9.x"
        ))),
    }
}

/// One request with a JSON body; `Ok((status, body))` for any answer but 429/5xx (transient).
async fn request(
    client: &Elasticsearch,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), BootstrapError> {
    let body = body.map(|b| bytes::Bytes::from(b.to_string()));
    let sent = client
        .transport()
        .send(method, path, HeaderMap::new(), None::<&()>, body, None)
        .await;
    match answer(sent).await {
        Answer::Status(status @ (429 | 500..=599), body) => {
            Err(BootstrapError::Transient(format!(
                "{path} answered {status}: {}",
                error_text(&String::from_utf8_lossy(&body))
            )))
        }
        Answer::Status(status, body) => Ok((status, String::from_utf8_lossy(&body).into_owned())),
        Answer::Failed(reason) => Err(BootstrapError::Transient(format!("{path}: {reason}"))),
    }
}

fn refused(what: &str, name: &str, status: u16, body: &str) -> BootstrapError {
    let hint = match status {
        401 => " (credentials refused)",
        403 => " (the user lacks the privilege; grant manage_index_templates, manage_ilm and create_index, or set bootstrap = false)",
        _ => "",
    };
    BootstrapError::Fatal(format!(
        "{what} {name} answered {status}{hint}: {}",
        error_text(body)
    ))
}

/// Installs `body` at `path` unless what is there carries the same `_meta.ferry_hash`.
async fn ensure(
    client: &Elasticsearch,
    path: &str,
    body: Value,
    hash_of: impl Fn(&Value) -> Value,
    hash_at: &[&str],
    what: &str,
) -> Result<(), BootstrapError> {
    let mut wanted = &body;
    for key in hash_at {
        wanted = &wanted[*key];
    }
    match request(client, Method::Get, path, None).await? {
        (200, got) => {
            let got: Value = serde_json::from_str(&got).unwrap_or(Value::Null);
            if hash_of(&got) == *wanted {
                tracing::debug!(path, "Bootstrap: {what} is up to date", what = what);
                return Ok(());
            }
        }
        (404, _) => {}
        (status, got) => return Err(refused(&format!("reading {what}"), path, status, &got)),
    }
    match request(client, Method::Put, path, Some(&body)).await? {
        (200, _) => {
            tracing::info!(path, "Bootstrap: {what} installed", what = what);
            Ok(())
        }
        (status, got) => Err(refused(&format!("installing {what}"), path, status, &got)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_targets_the_data_stream_above_the_builtin_priority() {
        let config = ElasticsearchConfig::default();
        let names = Names::of(&config);
        let t = template_body(&config, &names);
        assert_eq!(t["index_patterns"], json!(["logs-ferry-*"]));
        assert_eq!(t["data_stream"], json!({}));
        assert!(t["priority"].as_u64().unwrap() > 100);
        assert_eq!(
            t["template"]["mappings"]["properties"]["container"]["properties"]["labels"]["type"],
            "flattened"
        );
        assert_eq!(
            t["template"]["settings"]["index.lifecycle.name"],
            "ferry-elasticsearch"
        );
        assert_eq!(t["_meta"]["managed_by"], "ferry");
        assert_eq!(
            template_body(&config, &names),
            t,
            "the same config gives the same body"
        );
        let dated = ElasticsearchConfig {
            index: Some("app-logs-%Y.%m.%d".into()),
            ..Default::default()
        };
        let t2 = template_body(&dated, &names);
        assert_eq!(t2["index_patterns"], json!(["app-logs-*"]));
        assert!(t2.get("data_stream").is_none());
        assert_ne!(t2["_meta"]["ferry_hash"], t["_meta"]["ferry_hash"]);
    }

    #[test]
    fn policy_rolls_over_only_for_data_streams() {
        let config = ElasticsearchConfig {
            ilm_delete_after_days: 14,
            ..Default::default()
        };
        let p = policy_body(&config, true);
        assert_eq!(
            p["policy"]["phases"]["hot"]["actions"]["rollover"]["max_age"],
            "1d"
        );
        assert_eq!(p["policy"]["phases"]["delete"]["min_age"], "14d");
        assert!(p["policy"]["_meta"]["ferry_hash"].is_string());
        let p = policy_body(&config, false);
        assert_eq!(p["policy"]["phases"]["hot"]["actions"], json!({}));
    }
}
