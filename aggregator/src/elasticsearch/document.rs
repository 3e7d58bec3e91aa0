//! Queue entries turned into documents: each log record's `_id` (its `event.id`), its target
//! (data stream or dated index), the document to index (the record with `event.ingested`) and
//! the way back to the original record (for dead letters).
//!
//! [`Router::documents`] is the one place that reads the batch format. A version 2 batch gives
//! `_id`, `@timestamp` and the source's fields (a routing field such as `kubernetes.namespace`)
//! without parsing the record, and each document is written once, straight into one buffer per
//! queue entry that every document of the entry shares (`Bytes`). Only a routing field that is
//! not a source field (one a parser set), or a version 1 batch, costs a parse of the record.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferry_wire::{parse_batch, BatchError, DecodedBatch, DecodedLog, Ingested};
use serde_json::value::RawValue;

use super::config::{sanitise_namespace, ElasticsearchConfig};

/// One document to index.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Document {
    /// `_id`: the record's `event.id`.
    pub(crate) id: Box<str>,
    /// `_index`: a data stream or a dated index.
    pub(crate) index: Arc<str>,
    /// The JSON document (no trailing newline).
    pub(crate) source: Bytes,
    /// How to get the record as queued back (for dead letters).
    pub(crate) original: Original,
}

/// The record as queued, from a [`Document`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Original {
    /// The document without the `"ingested":"…",` member of this many bytes right after
    /// `{"event":{`.
    Spliced(usize),
    /// These bytes (a record that had to be re-encoded to take `event.ingested`, or a
    /// document that is not a record).
    Bytes(Bytes),
}

impl Document {
    /// The record as it was queued, without `event.ingested`.
    pub(crate) fn original(&self) -> Bytes {
        match &self.original {
            Original::Bytes(bytes) => bytes.clone(),
            Original::Spliced(len) => {
                const PREFIX: usize = b"{\"event\":{".len();
                let mut out = Vec::with_capacity(self.source.len() - len);
                out.extend_from_slice(&self.source[..PREFIX]);
                out.extend_from_slice(&self.source[PREFIX + len..]);
                Bytes::from(out)
            }
        }
    }
}

/// Where records go.
#[derive(Debug)]
enum Mode {
    DataStream {
        dataset: String,
        default: Arc<str>,
        /// `namespace_field`, split at dots.
        field: Option<Vec<String>>,
    },
    Dated {
        pattern: String,
    },
}

/// Chooses each record's target and builds its document.
#[derive(Debug)]
pub(crate) struct Router {
    mode: Mode,
    /// Target names by namespace value or by UTC hour, reused (cleared when it grows large).
    names: HashMap<String, Arc<str>>,
}

/// Targets remembered before the cache starts over.
const MAX_CACHED_NAMES: usize = 4096;

impl Router {
    pub(crate) fn new(config: &ElasticsearchConfig) -> Router {
        let mode = match &config.index {
            Some(pattern) => Mode::Dated {
                pattern: pattern.clone(),
            },
            None => Mode::DataStream {
                dataset: config.data_stream_dataset.clone(),
                default: config.default_data_stream().into(),
                field: config
                    .namespace_field
                    .as_ref()
                    .map(|f| f.split('.').map(String::from).collect()),
            },
        };
        Router {
            mode,
            names: HashMap::new(),
        }
    }

    /// The documents of one queue entry (a decompressed, validated batch), with `ingested` as
    /// their `event.ingested`.
    pub(crate) fn documents(
        &mut self,
        entry: Vec<u8>,
        ingested: DateTime<Utc>,
    ) -> Result<Vec<Document>, BatchError> {
        let batch = parse_batch(entry)?;
        let stamp = Ingested::new(&ingested.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        // Sized exactly (the documents share this buffer for as long as any is in flight):
        // each record, and `"ingested":"<stamp>",`.
        let member = stamp.member_len();
        let size = batch
            .logs
            .iter()
            .map(|log| batch.record_len(log) + member)
            .sum();
        let mut sources = Vec::with_capacity(size);
        let mut spans = Vec::with_capacity(batch.logs.len());
        for log in &batch.logs {
            let start = sources.len();
            let spliced = batch.write_record(log, Some(&stamp), &mut sources);
            let index = self.target(&batch, log, &sources[start..], ingested);
            let original = match spliced {
                Some(len) => Original::Spliced(len),
                None => Original::Bytes(Bytes::copy_from_slice(&batch.record(log))),
            };
            spans.push((start..sources.len(), index, original));
        }
        let sources = Bytes::from(sources);
        Ok(batch
            .logs
            .iter()
            .zip(spans)
            .map(|(log, (span, index, original))| Document {
                id: batch.id(log).into(),
                index,
                source: sources.slice(span),
                original,
            })
            .collect())
    }

    /// The target of one record, whose document is `doc`.
    fn target(
        &mut self,
        batch: &DecodedBatch,
        log: &DecodedLog,
        doc: &[u8],
        ingested: DateTime<Utc>,
    ) -> Arc<str> {
        match &self.mode {
            Mode::DataStream {
                dataset,
                default,
                field,
            } => {
                let Some(path) = field else {
                    return Arc::clone(default);
                };
                // The path as `&str`s without allocating (longer paths are never source fields).
                let mut parts = [""; 8];
                let value = if path.len() <= parts.len() {
                    for (part, key) in parts.iter_mut().zip(path) {
                        *part = key;
                    }
                    batch.source_field(log, &parts[..path.len()])
                } else {
                    None
                };
                let value = match value {
                    Some(value) => value.map(Cow::Borrowed),
                    None => field_value(doc, path).map(Cow::Owned),
                };
                let Some(namespace) = value.as_deref().and_then(sanitise_namespace) else {
                    return Arc::clone(default);
                };
                if let Some(name) = self.names.get(&namespace) {
                    return Arc::clone(name);
                }
                let name: Arc<str> = format!("logs-{dataset}-{namespace}").into();
                self.remember(namespace, Arc::clone(&name));
                name
            }
            Mode::Dated { pattern } => {
                // A record whose @timestamp does not parse goes by its ingest time.
                let at = DateTime::parse_from_rfc3339(&batch.timestamp(log))
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or(ingested);
                let hour = at.format("%Y%m%d%H").to_string();
                if let Some(name) = self.names.get(&hour) {
                    return Arc::clone(name);
                }
                let name: Arc<str> = at.format(pattern).to_string().into();
                self.remember(hour, Arc::clone(&name));
                name
            }
        }
    }

    fn remember(&mut self, key: String, name: Arc<str>) {
        if self.names.len() >= MAX_CACHED_NAMES {
            self.names.clear();
        }
        self.names.insert(key, name);
    }
}

/// The string (or number) at a dotted `path` of a JSON record; `None` when absent or another type.
pub(crate) fn field_value(record: &[u8], path: &[String]) -> Option<String> {
    let mut raw: &RawValue = serde_json::from_slice(record).ok()?;
    for key in path {
        let object: HashMap<Cow<'_, str>, &RawValue> = serde_json::from_str(raw.get()).ok()?;
        raw = object.get(key.as_str())?;
    }
    match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::tests::{batch, record};

    #[test]
    fn documents_carry_id_target_ingested_and_the_original() {
        let mut r1 = record("src", 1, "one");
        r1.kubernetes.namespace = Some("Kube-System".into());
        let r2 = record("src", 2, "two \"quoted\"");
        let entry = batch(&[r1.clone(), r2.clone()]);
        let config = ElasticsearchConfig {
            namespace_field: Some("kubernetes.namespace".into()),
            ..Default::default()
        };
        let at = DateTime::parse_from_rfc3339("2026-11-28T09:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let docs = Router::new(&config).documents(entry, at).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(&*docs[0].id, r1.event.id);
        assert_eq!(&*docs[0].index, "logs-ferry-kube_system");
        assert_eq!(
            &*docs[1].index, "logs-ferry-default",
            "no namespace: the default"
        );
        for (doc, rec) in docs.iter().zip([&r1, &r2]) {
            let v: serde_json::Value = serde_json::from_slice(&doc.source).unwrap();
            assert_eq!(v["event"]["ingested"], "2026-11-28T09:00:00.500Z");
            assert_eq!(v["event"]["id"], rec.event.id.as_str());
            assert_eq!(v["message"], rec.message.as_str());
            let original: ferry_wire::LogRecord = serde_json::from_slice(&doc.original()).unwrap();
            assert_eq!(&original, rec);
        }
    }

    #[test]
    fn dated_indices_follow_the_records_timestamp_in_utc() {
        let mut a = record("s", 1, "a");
        a.timestamp = "2026-11-28T23:30:00+02:00".into();
        let mut b = record("s", 2, "b");
        b.timestamp = "2026-11-29T00:00:00Z".into();
        let config = ElasticsearchConfig {
            index: Some("ferry-%Y.%m.%d".into()),
            ..Default::default()
        };
        let docs = Router::new(&config)
            .documents(batch(&[a, b]), Utc::now())
            .unwrap();
        assert_eq!(&*docs[0].index, "ferry-2026.11.28");
        assert_eq!(&*docs[1].index, "ferry-2026.11.29");
    }

    #[test]
    fn field_values_by_dotted_path() {
        let line = br#"{"kubernetes":{"namespace":"prod","pod":{"name":"p"}},"n":{"x":3}}"#;
        let path = |p: &str| p.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            field_value(line, &path("kubernetes.namespace")).as_deref(),
            Some("prod")
        );
        assert_eq!(field_value(line, &path("n.x")).as_deref(), Some("3"));
        assert_eq!(field_value(line, &path("kubernetes.pod")), None);
        assert_eq!(field_value(line, &path("missing.field")), None);
    }
}
