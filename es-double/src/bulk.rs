//! `_bulk`: the request rules (final newline, action lines, meta keys, source lines), the
//! data-stream rules, scripted and drawn item outcomes, and the response in request order.

use std::time::Instant;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::store::{EsError, Store};
use crate::Shared;

/// Meta keys an action line may carry.
const META_KEYS: [&str; 14] = [
    "_index",
    "_id",
    "routing",
    "pipeline",
    "require_alias",
    "require_data_stream",
    "if_seq_no",
    "if_primary_term",
    "retry_on_conflict",
    "version",
    "version_type",
    "dynamic_templates",
    "list_executed_pipelines",
    "_source",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Index,
    Create,
    Update,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Index => "index",
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

struct Action<'a> {
    op: Op,
    index: String,
    id: Option<String>,
    source: Option<&'a [u8]>,
}

/// Non-empty lines (a `\r` before `\n` trimmed) with their 1-based numbers.
fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
}

fn bad(reason: impl Into<String>) -> EsError {
    EsError::new(400, "illegal_argument_exception", reason)
}

fn token_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "VALUE_NULL",
        Value::Bool(_) => "VALUE_BOOLEAN",
        Value::Number(_) => "VALUE_NUMBER",
        Value::String(_) => "VALUE_STRING",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
    }
}

/// Parses the body into actions, or the whole-request 400 Elasticsearch answers.
fn parse<'a>(body: &'a [u8], path_index: Option<&str>) -> Result<Vec<Action<'a>>, EsError> {
    if !body.is_empty() && !body.ends_with(b"\n") {
        return Err(bad(
            "The bulk request must be terminated by a newline [\\n]",
        ));
    }
    let mut actions = Vec::new();
    let mut it = lines(body);
    while let Some((n, line)) = it.next() {
        let value: Value = serde_json::from_slice(line).map_err(|e| {
            EsError::new(
                400,
                "x_content_parse_exception",
                format!("[{n}:{}] Unexpected character: {e}", e.column()),
            )
        })?;
        let Value::Object(map) = value else {
            return Err(bad(format!(
                "Malformed action/metadata line [{n}], expected START_OBJECT or END_OBJECT but found [{}]",
                token_name(&value)
            )));
        };
        let mut entries = map.into_iter();
        let Some((key, meta)) = entries.next() else {
            return Err(bad(format!(
                "Malformed action/metadata line [{n}], expected FIELD_NAME but found [END_OBJECT]"
            )));
        };
        let op = match key.as_str() {
            "index" => Op::Index,
            "create" => Op::Create,
            "update" => Op::Update,
            "delete" => Op::Delete,
            other => {
                return Err(bad(format!(
                "Malformed action/metadata line [{n}], expected field [create], [delete], [index] or [update] but found [{other}]"
            )))
            }
        };
        if entries.next().is_some() {
            return Err(bad(format!(
                "Malformed action/metadata line [{n}], expected END_OBJECT but found [FIELD_NAME]"
            )));
        }
        let Value::Object(meta) = meta else {
            return Err(bad(format!(
                "Malformed action/metadata line [{n}], expected START_OBJECT but found [{}]",
                token_name(&meta)
            )));
        };
        if let Some(unknown) = meta.keys().find(|k| !META_KEYS.contains(&k.as_str())) {
            return Err(bad(format!(
                "Action/metadata line [{n}] contains an unknown parameter [{unknown}]"
            )));
        }
        let index = match meta.get("_index") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(bad(format!(
                    "Malformed action/metadata line [{n}], expected a simple value for field [_index] but found [{}]",
                    token_name(other)
                )))
            }
            None => path_index.map(String::from),
        };
        let Some(index) = index else {
            return Err(EsError::new(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: index is missing;",
            ));
        };
        let id = match meta.get("_id") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                return Err(bad(format!(
                    "Malformed action/metadata line [{n}], expected a simple value for field [_id] but found [{}]",
                    token_name(other)
                )))
            }
            None => None,
        };
        let source = if op == Op::Delete {
            None
        } else {
            match it.next() {
                Some((_, src)) => Some(src),
                None => {
                    return Err(bad(format!(
                        "Action/metadata line [{n}] is missing its source line"
                    )))
                }
            }
        };
        actions.push(Action {
            op,
            index,
            id,
            source,
        });
    }
    if actions.is_empty() {
        return Err(EsError::new(
            400,
            "action_request_validation_exception",
            "Validation Failed: 1: no requests added;",
        ));
    }
    Ok(actions)
}

/// Only the field a data stream needs; every other field is skipped (and still syntax-checked).
#[derive(Deserialize)]
struct TimestampOnly {
    #[serde(rename = "@timestamp")]
    timestamp: Option<serde::de::IgnoredAny>,
}

/// Whether `id` is one of the documents with a (seeded) mapping error.
fn mapping_error(seed: u64, id: &str, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let mut key = seed.to_le_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    let h = xxhash_rust::xxh3::xxh3_64(&key);
    (h as f64 / u64::MAX as f64) < rate
}

/// One item's answer.
#[derive(Debug)]
enum ItemOut {
    Done {
        index: String,
        id: String,
        version: u8,
        result: &'static str,
        seq: u64,
        status: u16,
    },
    Failed {
        index: String,
        id: String,
        error: EsError,
    },
}

fn failure(index: &str, id: &str, e: &EsError) -> ItemOut {
    ItemOut::Failed {
        index: index.to_string(),
        id: id.to_string(),
        error: e.clone(),
    }
}

impl ItemOut {
    /// The item's fields, in Elasticsearch's order, as `(name, JSON)`.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let s = |v: &str| Value::from(v).to_string();
        match self {
            ItemOut::Done {
                index,
                id,
                version,
                result,
                seq,
                status,
            } => vec![
                ("_index", s(index)),
                ("_id", s(id)),
                ("_version", version.to_string()),
                ("result", s(result)),
                ("_shards", r#"{"total":2,"successful":1,"failed":0}"#.to_string()),
                ("_seq_no", seq.to_string()),
                ("_primary_term", "1".to_string()),
                ("status", status.to_string()),
            ],
            ItemOut::Failed { index, id, error } => vec![
                ("_index", s(index)),
                ("_id", s(id)),
                ("status", error.status.to_string()),
                (
                    "error",
                    json!({"type": error.kind, "reason": error.reason, "index_uuid": "double-uuid", "shard": "0", "index": index})
                        .to_string(),
                ),
            ],
        }
    }
}

/// A bulk response, rendered on demand (with or without a `filter_path`).
#[derive(Debug)]
pub(crate) struct BulkResponse {
    took: u64,
    errors: bool,
    items: Vec<(Op, ItemOut)>,
}

impl BulkResponse {
    /// The JSON body; `filter` is the request's `filter_path`.
    pub(crate) fn render(&self, filter: Option<&str>) -> String {
        // Filters the sink and the clients use (`errors`, `took`, `items`, `items.*.<field>`)
        // are applied while writing; any other goes through the general filter.
        let mut top: Vec<&str> = Vec::new();
        let mut item_fields: Option<Vec<&str>> = None;
        if let Some(f) = filter {
            for p in f.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match p.split('.').collect::<Vec<_>>().as_slice() {
                    [k @ ("took" | "errors" | "items")] => top.push(k),
                    ["items", "*", field] if !field.contains('*') => {
                        item_fields.get_or_insert_with(Vec::new).push(field)
                    }
                    _ => {
                        let full: Value =
                            serde_json::from_str(&self.render(None)).expect("valid JSON");
                        return filter_path(&full, f).to_string();
                    }
                }
            }
        }
        let keep = |k: &str| filter.is_none() || top.contains(&k);
        let mut out = String::with_capacity(self.items.len() * 80 + 64);
        let mut first = true;
        let mut open = |out: &mut String, key: &str| {
            out.push(if first { '{' } else { ',' });
            first = false;
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
        };
        if keep("took") {
            open(&mut out, "took");
            out.push_str(&self.took.to_string());
        }
        if keep("errors") {
            open(&mut out, "errors");
            out.push_str(if self.errors { "true" } else { "false" });
        }
        let all_items = keep("items");
        if all_items || item_fields.is_some() {
            let mut items = String::new();
            for (op, item) in &self.items {
                let fields: Vec<(&str, String)> = item
                    .fields()
                    .into_iter()
                    .filter(|(k, _)| {
                        all_items || item_fields.as_ref().is_some_and(|f| f.contains(k))
                    })
                    .collect();
                if fields.is_empty() {
                    continue;
                }
                items.push(if items.is_empty() { '[' } else { ',' });
                items.push_str("{\"");
                items.push_str(op.name());
                items.push_str("\":{");
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        items.push(',');
                    }
                    items.push('"');
                    items.push_str(k);
                    items.push_str("\":");
                    items.push_str(v);
                }
                items.push_str("}}");
            }
            if !items.is_empty() {
                items.push(']');
                open(&mut out, "items");
                out.push_str(&items);
            }
        }
        if first {
            out.push('{');
        }
        out.push('}');
        out
    }
}

/// Runs a bulk request; `Ok` is the 200 response body (items may have failed).
pub(crate) fn run(
    shared: &Shared,
    path_index: Option<&str>,
    body: &[u8],
) -> Result<BulkResponse, EsError> {
    let started = Instant::now();
    let actions = parse(body, path_index)?;
    let behaviour = shared.behaviour.borrow().clone();
    let mut scripted: Vec<u16> = {
        let mut script = shared.script.lock().unwrap_or_else(|p| p.into_inner());
        let n = script.items.len().min(actions.len());
        script.items.drain(..n).collect()
    };
    scripted.reverse();
    let mut rng = shared.rng.lock().unwrap_or_else(|p| p.into_inner());
    let mut store = shared.store();
    let mut items = Vec::with_capacity(actions.len());
    let mut errors = false;
    for action in actions {
        let script = scripted.pop().unwrap_or(201);
        let id = action
            .id
            .clone()
            .unwrap_or_else(|| format!("auto-{:016x}", rng.u64(..)));
        let item = item(
            shared, &mut store, &mut rng, &behaviour, &action, &id, script,
        );
        if matches!(item, ItemOut::Failed { .. }) {
            errors = true;
        }
        items.push((action.op, item));
    }
    Ok(BulkResponse {
        took: started.elapsed().as_millis() as u64,
        errors,
        items,
    })
}

/// One item's outcome (and its effect on the store).
fn item(
    shared: &Shared,
    store: &mut Store,
    rng: &mut fastrand::Rng,
    behaviour: &crate::Behaviour,
    action: &Action<'_>,
    id: &str,
    script: u16,
) -> ItemOut {
    let target = match store.target(&action.index) {
        Ok(t) => t,
        Err(e) => {
            store.count_item("other_error");
            return failure(&action.index, id, &e);
        }
    };
    let index = target.index.clone();
    let fail = |store: &mut Store, outcome: &'static str, e: EsError| {
        store.count_item(outcome);
        failure(&index, id, &e)
    };
    if target.data_stream && action.op != Op::Create {
        return fail(
            store,
            "other_error",
            bad("only write ops with an op_type of create are allowed in data streams"),
        );
    }
    if let Some(source) = action.source {
        let parsed = if shared.options.mapping_check {
            serde_json::from_slice::<Value>(source).map(|v| {
                let has_ts = v.get("@timestamp").is_some();
                (Some(v), has_ts)
            })
        } else {
            serde_json::from_slice::<TimestampOnly>(source).map(|t| (None, t.timestamp.is_some()))
        };
        let (doc, has_ts) = match parsed {
            Ok(p) => p,
            Err(e) => {
                return fail(
                    store,
                    "parse_error",
                    EsError::new(
                        400,
                        "document_parsing_exception",
                        format!("[{}:{}] failed to parse: {e}", e.line(), e.column()),
                    ),
                )
            }
        };
        if target.data_stream && !has_ts {
            return fail(
                store,
                "parse_error",
                EsError::new(
                    400,
                    "document_parsing_exception",
                    "[1:1] failed to parse: data stream timestamp field [@timestamp] is missing",
                ),
            );
        }
        match script {
            409 => {
                return fail(
                    store,
                    "conflict",
                    EsError::new(
                        409,
                        "version_conflict_engine_exception",
                        format!(
                        "[{id}]: version conflict, document already exists (current version [1])"
                    ),
                    ),
                )
            }
            429 => return fail(store, "rejected", rejected()),
            503 => return fail(store, "unavailable", unavailable(&index)),
            400 => return fail(store, "mapping_error", mapper_error(id)),
            _ => {}
        }
        if behaviour.item_429_rate > 0.0 && rng.f64() < behaviour.item_429_rate {
            return fail(store, "rejected", rejected());
        }
        if mapping_error(shared.options.seed, id, behaviour.mapping_error_rate) {
            return fail(store, "mapping_error", mapper_error(id));
        }
        if let Some(doc) = &doc {
            if let Err(e) = store.map_document(&index, doc) {
                return fail(store, "mapping_error", e);
            }
        }
    }
    let exists = store.exists(&index, id);
    match action.op {
        Op::Create if exists => fail(
            store,
            "conflict",
            EsError::new(
                409,
                "version_conflict_engine_exception",
                format!("[{id}]: version conflict, document already exists (current version [1])"),
            ),
        ),
        Op::Create | Op::Index => {
            let seq = store.create(&index, id, action.source.unwrap_or_default());
            store.count_item("created");
            let (result, status, version) = if exists {
                ("updated", 200, 2)
            } else {
                ("created", 201, 1)
            };
            ItemOut::Done {
                index,
                id: id.to_string(),
                version,
                result,
                seq,
                status,
            }
        }
        Op::Update if !exists => fail(
            store,
            "other_error",
            EsError::new(
                404,
                "document_missing_exception",
                format!("[{id}]: document missing"),
            ),
        ),
        Op::Update | Op::Delete => {
            let (result, status) = match (action.op, exists) {
                (Op::Delete, false) => ("not_found", 404),
                (Op::Delete, true) => ("deleted", 200),
                _ => ("updated", 200),
            };
            ItemOut::Done {
                index,
                id: id.to_string(),
                version: 2,
                result,
                seq: 0,
                status,
            }
        }
    }
}

fn rejected() -> EsError {
    EsError::new(
        429,
        "es_rejected_execution_exception",
        "rejected execution of coordinating operation [coordinating_and_primary_bytes=104857600, replica_bytes=0, all_bytes=104857600, coordinating_operation_bytes=1024, max_coordinating_and_primary_bytes=104857600]",
    )
}

fn unavailable(index: &str) -> EsError {
    EsError::new(
        503,
        "unavailable_shards_exception",
        format!("[{index}][0] primary shard is not active Timeout: [1m]"),
    )
}

fn mapper_error(id: &str) -> EsError {
    EsError::new(
        400,
        "mapper_parsing_exception",
        format!("failed to parse field [message] of type [long] in document with id '{id}'. Preview of field's value: 'not a number'"),
    )
}

/// Applies an Elasticsearch `filter_path` (comma-separated dotted paths, `*` for one key, `**`
/// for any depth; arrays are transparent) to a response.
pub(crate) fn filter_path(value: &Value, filter: &str) -> Value {
    let patterns: Vec<Vec<&str>> = filter
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with('-'))
        .map(|p| p.split('.').collect())
        .collect();
    let refs: Vec<&[&str]> = patterns.iter().map(Vec::as_slice).collect();
    filter_value(value, &refs).unwrap_or_else(|| json!({}))
}

fn filter_value(value: &Value, patterns: &[&[&str]]) -> Option<Value> {
    if patterns.iter().any(|p| p.is_empty()) {
        return Some(value.clone());
    }
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, v) in map {
                let mut next: Vec<&[&str]> = Vec::new();
                for p in patterns {
                    if p[0] == "**" {
                        next.push(p);
                        if p.len() > 1 && crate::store::glob(p[1], key) {
                            next.push(&p[2..]);
                        }
                    } else if crate::store::glob(p[0], key) {
                        next.push(&p[1..]);
                    }
                }
                if next.is_empty() {
                    continue;
                }
                if let Some(kept) = filter_value(v, &next) {
                    out.insert(key.clone(), kept);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items
                .iter()
                .filter_map(|v| filter_value(v, patterns))
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_rules() {
        assert!(parse(b"{\"create\":{\"_index\":\"a\"}}\n{}", None)
            .err()
            .unwrap()
            .reason
            .contains("terminated by a newline"));
        let e = parse(b"{\"upsert\":{}}\n{}\n", None).err().unwrap();
        assert!(e.reason.contains("but found [upsert]"), "{e:?}");
        let e = parse(b"{\"create\":{\"_index\":\"a\",\"colour\":1}}\n{}\n", None)
            .err()
            .unwrap();
        assert!(e.reason.contains("unknown parameter [colour]"), "{e:?}");
        let e = parse(b"\n\r\n", None).err().unwrap();
        assert_eq!(e.kind, "action_request_validation_exception");
        let e = parse(b"{\"create\":{}}\n{}\n", None).err().unwrap();
        assert!(e.reason.contains("index is missing"), "{e:?}");
        // `\r\n` endings and empty lines are fine; the path supplies the index.
        let a = parse(
            b"{\"create\":{\"_id\":\"1\"}}\r\n\n{\"a\":1}\r\n",
            Some("x"),
        )
        .unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].index, "x");
        assert_eq!(a[0].source, Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn filter_path_keeps_positions_with_status() {
        let v = json!({"took": 3, "errors": true, "items": [
            {"create": {"_index": "i", "_id": "1", "status": 201, "result": "created"}},
            {"create": {"_index": "i", "_id": "2", "status": 429, "error": {"type": "x"}}},
        ]});
        let f = filter_path(&v, "errors,items.*._id,items.*.status,items.*.error");
        assert_eq!(
            f,
            json!({"errors": true, "items": [
                {"create": {"_id": "1", "status": 201}},
                {"create": {"_id": "2", "status": 429, "error": {"type": "x"}}},
            ]})
        );
        // Errors only: successful items vanish (why the sink must keep `status`).
        let f = filter_path(&v, "items.*.error");
        assert_eq!(f["items"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn mapping_errors_are_decided_per_id() {
        let hits = (0..100_000)
            .filter(|i| mapping_error(7, &i.to_string(), 0.001))
            .count();
        assert!((50..200).contains(&hits), "{hits}");
        assert_eq!(
            mapping_error(7, "42", 0.5),
            mapping_error(7, "42", 0.5),
            "a retry fails the same way"
        );
    }
}

#[cfg(test)]
mod speed {
    /// Not a test of speed (none is asserted): prints how long a 5000-document bulk takes, for
    /// looking into the double's cost (`cargo test --release -p ferry-es-double speed -- --nocapture`).
    #[test]
    fn prints_the_cost_of_a_bulk_request() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let double = rt
            .block_on(crate::start(crate::Options {
                mapping_check: false,
                ..Default::default()
            }))
            .unwrap();
        let doc = r#"{"event":{"id":"X"},"@timestamp":"2026-11-28T08:00:00.000Z","message":"203.0.113.9 - - [28/Nov/2026:08:00:00 +0000] \"GET /api/v1/orders?page=2 HTTP/1.1\" 200 512 \"-\" \"curl/8.5.0\"","log":{"file":{"path":"/var/log/nginx/access.log","fingerprint":"0123456789abcdef0123456789abcdef"},"offset":1234567},"host":{"name":"node-1"},"source":{"ip":"203.0.113.9"},"http":{"request":{"method":"GET"},"response":{"status_code":200,"body":{"bytes":512}}},"url":{"original":"/api/v1/orders?page=2"}}"#;
        for round in 0..3 {
            let mut body = Vec::new();
            for i in 0..5000 {
                let id = format!("{round:04}{i:028}");
                body.extend_from_slice(
                    format!(
                        "{{\"create\":{{\"_index\":\"logs-ferry-default\",\"_id\":\"{id}\"}}}}\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(doc.replace("\"X\"", &format!("\"{id}\"")).as_bytes());
                body.push(b'\n');
            }
            let started = std::time::Instant::now();
            let v = super::run(&double.shared, None, &body).unwrap();
            let ran = started.elapsed();
            let filtered = started.elapsed();
            let text = v.render(Some("items.*._id,items.*.status,items.*.error"));
            eprintln!(
                "5000 docs: run {ran:?}, filter {:?}, serialise {:?} ({} bytes)",
                filtered - ran,
                started.elapsed() - filtered,
                text.len()
            );
        }
    }
}
