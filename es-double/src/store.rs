//! What the double keeps in memory: index templates, ILM policies, data streams, indices with
//! their dynamic mappings, and every created document's id (with how many times it was created).
//! Nothing here speaks HTTP.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One created document, as [`crate::DoubleHandle::docs`] and `GET /docs` report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocRecord {
    /// The concrete index (a data stream's backing index).
    pub index: String,
    pub id: String,
    /// How many times a document with this id was created, over every index (1 = exactly once).
    pub creates: u32,
    /// The source as sent, when the double keeps sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the double first created a document with this id (Unix time, milliseconds): the
    /// "stored" end of a write-to-stored latency.
    #[serde(default)]
    pub created_unix_ms: u64,
}

/// Counters and names, as `GET /stats` reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Bulk requests by the status they were answered with.
    pub bulk_requests: BTreeMap<String, u64>,
    /// Bulk items by outcome: `created`, `conflict` (409), `rejected` (429), `unavailable` (503),
    /// `mapping_error` (400 mapper_parsing_exception), `parse_error` (400
    /// document_parsing_exception), `other_error`.
    pub items: BTreeMap<String, u64>,
    /// Uncompressed bulk body bytes received.
    pub bulk_bytes: u64,
    /// Documents stored (over every index).
    pub docs: u64,
    /// Distinct ids created.
    pub distinct_ids: u64,
    /// Ids created more than once (in different indices): duplicates.
    pub duplicate_ids: u64,
    pub templates: Vec<String>,
    pub policies: Vec<String>,
    pub data_streams: Vec<String>,
    pub indices: Vec<String>,
    /// Write requests to templates, policies and data streams that changed something.
    pub template_puts: u64,
    pub policy_puts: u64,
    pub data_stream_puts: u64,
}

/// An error of one item or one management request, in Elasticsearch's shape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EsError {
    pub(crate) status: u16,
    pub(crate) kind: &'static str,
    pub(crate) reason: String,
}

impl EsError {
    pub(crate) fn new(status: u16, kind: &'static str, reason: impl Into<String>) -> Self {
        EsError {
            status,
            kind,
            reason: reason.into(),
        }
    }

    /// The whole-request error body: `{"error":{"root_cause":[…],"type","reason"},"status"}`.
    pub(crate) fn body(&self) -> Value {
        json!({
            "error": {
                "root_cause": [{"type": self.kind, "reason": self.reason}],
                "type": self.kind,
                "reason": self.reason,
            },
            "status": self.status,
        })
    }
}

#[derive(Debug)]
struct DataStream {
    template: String,
    backing: String,
}

#[derive(Debug, Default)]
struct Index {
    /// Hashes of the ids created in this index (a 128-bit hash: no collisions in practice, and a
    /// fraction of the memory of the ids). Ids are hex hashes, so a fast hasher (the double's
    /// own cost competes with the processes a benchmark measures).
    ids: FxHashSet<u128>,
    data_stream: Option<String>,
    /// Known field paths: `true` = object, `false` = leaf.
    paths: HashMap<String, bool>,
    /// Paths mapped `flattened` (anything below them is one field).
    flattened: Vec<String>,
}

#[derive(Debug, Default)]
struct IdRecord {
    creates: u32,
    /// Position in [`Store::index_names`] of the index it was last created in.
    index: u32,
    source: Option<Box<str>>,
    /// Unix time in milliseconds of the first create.
    created_unix_ms: u64,
}

/// Everything the double knows.
#[derive(Debug)]
pub(crate) struct Store {
    keep_sources: bool,
    templates: BTreeMap<String, Value>,
    policies: BTreeMap<String, (u64, Value)>,
    data_streams: BTreeMap<String, DataStream>,
    indices: HashMap<String, Index>,
    index_names: Vec<String>,
    ids: FxHashMap<Box<str>, IdRecord>,
    pub(crate) items: BTreeMap<&'static str, u64>,
    seq: u64,
    template_puts: u64,
    policy_puts: u64,
    data_stream_puts: u64,
}

/// The built-in `logs` template of a real cluster: `logs-*-*`, priority 100, a data stream.
fn builtin_logs_template() -> Value {
    json!({
        "index_patterns": ["logs-*-*"],
        "priority": 100,
        "data_stream": {"hidden": false, "allow_custom_routing": false},
        "composed_of": ["logs@mappings", "logs@settings"],
        "_meta": {"description": "default logs template installed by x-pack", "managed": true},
    })
}

/// `*`-glob match of an index pattern.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

/// Elasticsearch's index name rules; `None` when `name` is valid.
pub(crate) fn invalid_index_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name != name.to_lowercase() {
        Some("must be lowercase")
    } else if name.starts_with(['_', '-', '+']) {
        Some("must not start with '_', '-', or '+'")
    } else if name == "." || name == ".." {
        Some("must not be '.' or '..'")
    } else if name.len() > 255 {
        Some("index name is too long")
    } else if name.chars().any(|c| {
        matches!(
            c,
            '\\' | '/' | '*' | '?' | '"' | '<' | '>' | '|' | ' ' | ',' | '#' | ':'
        )
    }) {
        Some("must not contain the following characters [ , \", *, \\, <, |, ,, >, /, ?, #, :]")
    } else {
        None
    }
}

/// Where a bulk item goes.
pub(crate) struct Target {
    pub(crate) index: String,
    pub(crate) data_stream: bool,
}

impl Store {
    pub(crate) fn new(keep_sources: bool) -> Store {
        let mut templates = BTreeMap::new();
        templates.insert("logs".to_string(), builtin_logs_template());
        Store {
            keep_sources,
            templates,
            policies: BTreeMap::new(),
            data_streams: BTreeMap::new(),
            indices: HashMap::new(),
            index_names: Vec::new(),
            ids: FxHashMap::default(),
            items: BTreeMap::new(),
            seq: 0,
            template_puts: 0,
            policy_puts: 0,
            data_stream_puts: 0,
        }
    }

    pub(crate) fn count_item(&mut self, outcome: &'static str) {
        *self.items.entry(outcome).or_insert(0) += 1;
    }

    // ---- templates ----

    pub(crate) fn put_template(&mut self, name: &str, body: Value) -> Result<Value, EsError> {
        let patterns: Vec<String> = body
            .get("index_patterns")
            .and_then(|p| match p {
                Value::String(s) => Some(vec![s.clone()]),
                Value::Array(a) => a.iter().map(|v| v.as_str().map(String::from)).collect(),
                _ => None,
            })
            .ok_or_else(|| {
                EsError::new(
                    400,
                    "action_request_validation_exception",
                    "Validation Failed: 1: index patterns are missing;",
                )
            })?;
        if let Some(key) = body.as_object().and_then(|o| {
            o.keys().find(|k| {
                !matches!(
                    k.as_str(),
                    "index_patterns"
                        | "priority"
                        | "template"
                        | "data_stream"
                        | "_meta"
                        | "composed_of"
                        | "version"
                        | "allow_auto_create"
                        | "ignore_missing_component_templates"
                        | "deprecated"
                )
            })
        }) {
            return Err(EsError::new(
                400,
                "x_content_parse_exception",
                format!("[1:2] [index_template] unknown field [{key}]"),
            ));
        }
        let priority = body.get("priority").and_then(Value::as_u64).unwrap_or(0);
        for (other, t) in &self.templates {
            if other == name {
                continue;
            }
            let same = t.get("priority").and_then(Value::as_u64).unwrap_or(0) == priority;
            let theirs: Vec<&str> = t["index_patterns"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let overlap = patterns.iter().any(|p| {
                theirs
                    .iter()
                    .any(|q| glob(p, q) || glob(q, p) || overlaps(p, q))
            });
            if same && overlap {
                return Err(EsError::new(
                    400,
                    "illegal_argument_exception",
                    format!(
                        "index template [{name}] has index patterns {patterns:?} matching patterns from existing templates [{other}] with patterns ({other} => {theirs:?}) that have the same priority [{priority}], multiple index templates may not match during index creation, please use a different priority"
                    ),
                ));
            }
        }
        if self.templates.get(name) != Some(&body) {
            self.template_puts += 1;
        }
        self.templates.insert(name.to_string(), body);
        Ok(json!({"acknowledged": true}))
    }

    pub(crate) fn get_template(&self, name: &str) -> Result<Value, EsError> {
        let found: Vec<Value> = self
            .templates
            .iter()
            .filter(|(n, _)| glob(name, n))
            .map(|(n, t)| json!({"name": n, "index_template": t}))
            .collect();
        if found.is_empty() {
            return Err(EsError::new(
                404,
                "resource_not_found_exception",
                format!("index template matching [{name}] not found"),
            ));
        }
        Ok(json!({ "index_templates": found }))
    }

    /// The highest-priority template matching `index`.
    fn template_for(&self, index: &str) -> Option<(&String, &Value)> {
        self.templates
            .iter()
            .filter(|(_, t)| {
                t["index_patterns"]
                    .as_array()
                    .is_some_and(|a| a.iter().filter_map(Value::as_str).any(|p| glob(p, index)))
            })
            .max_by_key(|(_, t)| t.get("priority").and_then(Value::as_u64).unwrap_or(0))
    }

    // ---- ILM ----

    pub(crate) fn put_policy(&mut self, name: &str, body: Value) -> Result<Value, EsError> {
        let Some(policy) = body.get("policy").filter(|p| p.is_object()) else {
            return Err(EsError::new(
                400,
                "x_content_parse_exception",
                "[1:2] [put_lifecycle_request] policy is required",
            ));
        };
        if let Some(phases) = policy.get("phases").and_then(Value::as_object) {
            if let Some(bad) = phases
                .keys()
                .find(|p| !matches!(p.as_str(), "hot" | "warm" | "cold" | "frozen" | "delete"))
            {
                return Err(EsError::new(
                    400,
                    "illegal_argument_exception",
                    format!("Timeseries lifecycle does not support phase [{bad}]"),
                ));
            }
        }
        let entry = self
            .policies
            .entry(name.to_string())
            .or_insert((0, Value::Null));
        if entry.1 != *policy {
            entry.0 += 1;
            entry.1 = policy.clone();
            self.policy_puts += 1;
        }
        Ok(json!({"acknowledged": true}))
    }

    pub(crate) fn get_policy(&self, name: &str) -> Result<Value, EsError> {
        match self.policies.get(name) {
            Some((version, policy)) => Ok(json!({
                name: {"version": version, "modified_date": "2026-11-28T00:00:00.000Z", "policy": policy}
            })),
            None => Err(EsError::new(
                404,
                "resource_not_found_exception",
                format!("Lifecycle policy not found: {name}"),
            )),
        }
    }

    // ---- data streams and indices ----

    fn backing_name(name: &str) -> String {
        let day = chrono_day();
        format!(".ds-{name}-{day}-000001")
    }

    pub(crate) fn put_data_stream(&mut self, name: &str) -> Result<Value, EsError> {
        if let Some(why) = invalid_index_name(name) {
            return Err(EsError::new(
                400,
                "invalid_index_name_exception",
                format!("Invalid index name [{name}], {why}"),
            ));
        }
        if self.data_streams.contains_key(name) {
            return Err(EsError::new(
                400,
                "resource_already_exists_exception",
                format!("data_stream [{name}] already exists"),
            ));
        }
        self.create_data_stream(name)?;
        self.data_stream_puts += 1;
        Ok(json!({"acknowledged": true}))
    }

    fn create_data_stream(&mut self, name: &str) -> Result<String, EsError> {
        let (template, body) = match self.template_for(name) {
            Some((t, body)) if body.get("data_stream").is_some() => (t.clone(), body.clone()),
            _ => {
                return Err(EsError::new(
                    400,
                    "illegal_argument_exception",
                    format!("no matching index template found for data stream [{name}]"),
                ))
            }
        };
        let backing = Self::backing_name(name);
        let index = Index {
            data_stream: Some(name.to_string()),
            flattened: flattened_paths(&body),
            ..Default::default()
        };
        self.indices.insert(backing.clone(), index);
        self.data_streams.insert(
            name.to_string(),
            DataStream {
                template,
                backing: backing.clone(),
            },
        );
        Ok(backing)
    }

    pub(crate) fn get_data_stream(&self, name: &str) -> Result<Value, EsError> {
        let found: Vec<Value> = self
            .data_streams
            .iter()
            .filter(|(n, _)| glob(name, n))
            .map(|(n, ds)| {
                json!({
                    "name": n,
                    "timestamp_field": {"name": "@timestamp"},
                    "indices": [{"index_name": ds.backing, "index_uuid": "double-uuid"}],
                    "generation": 1,
                    "status": "GREEN",
                    "template": ds.template,
                    "hidden": false,
                    "system": false,
                })
            })
            .collect();
        if found.is_empty() {
            return Err(EsError::new(
                404,
                "index_not_found_exception",
                format!("no such index [{name}]"),
            ));
        }
        Ok(json!({ "data_streams": found }))
    }

    /// Resolves (and auto-creates) the index or data stream a bulk item names.
    pub(crate) fn target(&mut self, name: &str) -> Result<Target, EsError> {
        if let Some(ds) = self.data_streams.get(name) {
            return Ok(Target {
                index: ds.backing.clone(),
                data_stream: true,
            });
        }
        if let Some(index) = self.indices.get(name) {
            return Ok(Target {
                index: name.to_string(),
                data_stream: index.data_stream.is_some(),
            });
        }
        if let Some(why) = invalid_index_name(name) {
            return Err(EsError::new(
                400,
                "invalid_index_name_exception",
                format!("Invalid index name [{name}], {why}"),
            ));
        }
        match self.template_for(name) {
            Some((_, body)) if body.get("data_stream").is_some() => {
                let backing = self.create_data_stream(name)?;
                Ok(Target {
                    index: backing,
                    data_stream: true,
                })
            }
            template => {
                let flattened = template
                    .map(|(_, b)| flattened_paths(b))
                    .unwrap_or_default();
                self.indices.insert(
                    name.to_string(),
                    Index {
                        flattened,
                        ..Default::default()
                    },
                );
                Ok(Target {
                    index: name.to_string(),
                    data_stream: false,
                })
            }
        }
    }

    /// Checks `doc` against the index's dynamic mapping and records its new paths.
    pub(crate) fn map_document(&mut self, index: &str, doc: &Value) -> Result<(), EsError> {
        let Some(ix) = self.indices.get_mut(index) else {
            return Ok(());
        };
        let mut new = Vec::new();
        walk(doc, "", ix, &mut new)?;
        for (path, object) in new {
            ix.paths.insert(path, object);
        }
        Ok(())
    }

    /// Whether `id` exists in `index`.
    pub(crate) fn exists(&self, index: &str, id: &str) -> bool {
        self.indices
            .get(index)
            .is_some_and(|ix| ix.ids.contains(&xxhash_rust::xxh3::xxh3_128(id.as_bytes())))
    }

    /// Creates the document; returns its sequence number.
    pub(crate) fn create(&mut self, index: &str, id: &str, source: &[u8]) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        if let Some(ix) = self.indices.get_mut(index) {
            ix.ids.insert(xxhash_rust::xxh3::xxh3_128(id.as_bytes()));
        }
        let index_no = match self.index_names.iter().position(|n| n == index) {
            Some(i) => i,
            None => {
                self.index_names.push(index.to_string());
                self.index_names.len() - 1
            }
        } as u32;
        let keep = self.keep_sources;
        let rec = match self.ids.get_mut(id) {
            Some(rec) => rec,
            None => self.ids.entry(id.into()).or_default(),
        };
        if rec.creates == 0 {
            rec.created_unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
        }
        rec.creates += 1;
        rec.index = index_no;
        if keep {
            rec.source = Some(String::from_utf8_lossy(source).into());
        }
        seq
    }

    pub(crate) fn docs(&self) -> Vec<DocRecord> {
        let mut out: Vec<DocRecord> = self
            .ids
            .iter()
            .map(|(id, r)| DocRecord {
                index: self.index_names[r.index as usize].clone(),
                id: id.to_string(),
                creates: r.creates,
                source: r.source.as_deref().map(String::from),
                created_unix_ms: r.created_unix_ms,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut indices: Vec<String> = self.indices.keys().cloned().collect();
        indices.sort();
        Stats {
            items: self
                .items
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            docs: self.indices.values().map(|ix| ix.ids.len() as u64).sum(),
            distinct_ids: self.ids.len() as u64,
            duplicate_ids: self.ids.values().filter(|r| r.creates > 1).count() as u64,
            templates: self.templates.keys().cloned().collect(),
            policies: self.policies.keys().cloned().collect(),
            data_streams: self.data_streams.keys().cloned().collect(),
            indices,
            template_puts: self.template_puts,
            policy_puts: self.policy_puts,
            data_stream_puts: self.data_stream_puts,
            ..Default::default()
        }
    }
}

/// Whether two patterns with wildcards can match a common name (a cheap over-approximation:
/// same literal prefix up to the first `*`).
fn overlaps(a: &str, b: &str) -> bool {
    let pa = a.split('*').next().unwrap_or("");
    let pb = b.split('*').next().unwrap_or("");
    (a.contains('*') || b.contains('*')) && (pa.starts_with(pb) || pb.starts_with(pa))
}

/// Paths a template maps as `flattened` (in `template.mappings.properties`, nested by
/// `properties`).
fn flattened_paths(template: &Value) -> Vec<String> {
    fn collect(props: &Value, prefix: &str, out: &mut Vec<String>) {
        let Some(map) = props.as_object() else { return };
        for (key, field) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if field.get("type").and_then(Value::as_str) == Some("flattened") {
                out.push(path.clone());
            }
            if let Some(inner) = field.get("properties") {
                collect(inner, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    collect(
        &template["template"]["mappings"]["properties"],
        "",
        &mut out,
    );
    out
}

/// Walks a document's fields (dotted keys expand into objects, as Elasticsearch does) and
/// collects paths not yet known; a leaf where an object is known (or the reverse) is the
/// mapping error Elasticsearch reports.
fn walk(
    value: &Value,
    prefix: &str,
    ix: &Index,
    new: &mut Vec<(String, bool)>,
) -> Result<(), EsError> {
    let Some(map) = value.as_object() else {
        return Ok(());
    };
    'fields: for (key, field) in map {
        if field.is_null() {
            continue;
        }
        let parts: Vec<&str> = key.split('.').collect();
        let mut path = prefix.to_string();
        for (i, part) in parts.iter().enumerate() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
            if ix.flattened.iter().any(|f| f == &path) {
                continue 'fields;
            }
            let last = i + 1 == parts.len();
            let as_object = !last
                || field.is_object()
                || field
                    .as_array()
                    .is_some_and(|items| items.iter().any(Value::is_object));
            let known = ix
                .paths
                .get(&path)
                .copied()
                .or_else(|| new.iter().find(|(p, _)| p == &path).map(|(_, o)| *o));
            match known {
                Some(true) if !as_object => {
                    return Err(EsError::new(
                        400,
                        "document_parsing_exception",
                        format!("[1:1] object mapping for [{path}] tried to parse field [{part}] as object, but found a concrete value"),
                    ))
                }
                Some(false) if as_object => {
                    return Err(EsError::new(
                        400,
                        "document_parsing_exception",
                        format!("[1:1] failed to parse field [{path}] of type [keyword] in document. Preview of field's value: '{{...}}'"),
                    ))
                }
                Some(_) => {}
                None => new.push((path.clone(), as_object)),
            }
            if last && as_object {
                match field {
                    Value::Array(items) => {
                        for item in items {
                            walk(item, &path, ix, new)?;
                        }
                    }
                    _ => walk(field, &path, ix, new)?,
                }
            }
        }
    }
    Ok(())
}

/// Today's UTC date as `yyyy.MM.dd` (backing index names).
fn chrono_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}.{m:02}.{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_index_patterns() {
        assert!(glob("logs-*-*", "logs-ferry-default"));
        assert!(!glob("logs-*-*", "logs-ferry"));
        assert!(glob("ferry-*", "ferry-2026.11.28"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn labels_conflict_unless_flattened() {
        let doc: Value = serde_json::from_str(
            r#"{"container":{"labels":{"app":"web","app.kubernetes.io/name":"web"}}}"#,
        )
        .unwrap();
        let mut s = Store::new(false);
        s.target("plain").unwrap();
        let err = s.map_document("plain", &doc).unwrap_err();
        assert_eq!(err.status, 400, "{err:?}");
        s.put_template(
            "flat",
            json!({"index_patterns": ["flat-*"], "priority": 5, "template": {"mappings": {"properties": {"container": {"properties": {"labels": {"type": "flattened"}}}}}}}),
        )
        .unwrap();
        s.target("flat-1").unwrap();
        s.map_document("flat-1", &doc).unwrap();
    }

    #[test]
    fn same_priority_overlap_is_refused() {
        let mut s = Store::new(false);
        let err = s
            .put_template(
                "mine",
                json!({"index_patterns": ["logs-ferry-*"], "priority": 100, "data_stream": {}}),
            )
            .unwrap_err();
        assert_eq!(err.kind, "illegal_argument_exception");
        s.put_template(
            "mine",
            json!({"index_patterns": ["logs-ferry-*"], "priority": 501, "data_stream": {}}),
        )
        .unwrap();
        let t = s.target("logs-ferry-default").unwrap();
        assert!(t.data_stream);
        assert!(
            t.index.starts_with(".ds-logs-ferry-default-"),
            "{}",
            t.index
        );
        assert!(t.index.ends_with("-000001"));
    }
}
