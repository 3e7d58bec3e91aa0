//! JSON auto-detect: a message that is one JSON object becomes fields.
//!
//! Recognised keys: `msg`/`message` become `message`; `level`/`lvl`/`severity`/`log.level` become
//! `log.level` (the source's name, lower-cased) and `log.level_normalized` (see `level.rs`);
//! `time`/`ts`/`timestamp`/`@timestamp` become `@timestamp` when they parse as
//! RFC 3339 or epoch seconds/milliseconds (the read time is kept as `event.created`). Every other
//! key is merged at the top level, except keys that would collide with ferry's own objects
//! (`event`, `log`, `container`, `kubernetes`, `host`, `stream`), which are kept under `json.*` so
//! they can never break the index mapping.

use chrono::{DateTime, Utc};
use ferry_wire::LogRecord;
use serde_json::{Map, Value};

use crate::level::{normalise_level, source_level, LEVEL_NORMALIZED};
use crate::time::{epoch_to_time, format_timestamp, replace_timestamp};

const RESERVED: &[&str] = &["event", "log", "container", "kubernetes", "host", "stream"];

/// Parses `record.message` as a JSON object and merges it. Returns false (record untouched) when
/// the message is not a JSON object.
pub fn parse_json_message(record: &mut LogRecord) -> bool {
    let trimmed = record.message.trim_start();
    if !trimmed.starts_with('{') {
        return false;
    }
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(trimmed) else {
        return false;
    };
    merge(record, object);
    true
}

fn merge(record: &mut LogRecord, object: Map<String, Value>) {
    let mut message = None;
    let mut normalised = None;
    let mut nested = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "msg" | "message" if value.is_string() && message.is_none() => {
                message = value.as_str().map(str::to_owned);
            }
            "level" | "lvl" | "severity" | "log.level" if value.is_string() => {
                if let Some(name) = value.as_str() {
                    record.log.level = Some(source_level(name));
                    normalised = normalise_level(name);
                }
            }
            "time" | "ts" | "timestamp" | "@timestamp" if set_time(record, &value) => {}
            k if RESERVED.contains(&k) || record.fields.contains_key(k) => {
                nested.insert(key, value);
            }
            _ => {
                record.fields.insert(key, value);
            }
        }
    }
    if !nested.is_empty() {
        record.fields.insert("json".into(), Value::Object(nested));
    }
    if let Some(n) = normalised {
        record.fields.insert(LEVEL_NORMALIZED.into(), n.into());
    }
    if let Some(m) = message {
        record.message = m;
    }
}

fn set_time(record: &mut LogRecord, value: &Value) -> bool {
    let parsed: Option<DateTime<Utc>> = match value {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n.as_f64().and_then(|v| epoch_to_time(v, false)),
        _ => None,
    };
    let Some(time) = parsed else {
        return false;
    };
    replace_timestamp(
        &mut record.timestamp,
        &mut record.event.created,
        &format_timestamp(time),
        &mut String::new(),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> LogRecord {
        LogRecord {
            timestamp: "2026-11-28T08:00:00Z".into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn merges_a_json_object_line() {
        let mut r = record(
            r#"{"level":"WARNING","msg":"disk almost full","ts":"2026-11-27T10:00:00.5+01:00","disk":"/dev/sda","pct":93,"host":"db-1"}"#,
        );
        assert!(parse_json_message(&mut r));
        assert_eq!(r.message, "disk almost full");
        assert_eq!(
            r.log.level.as_deref(),
            Some("warning"),
            "the source's own name"
        );
        assert_eq!(r.fields[LEVEL_NORMALIZED], "warn");
        assert_eq!(r.timestamp, "2026-11-27T09:00:00.500Z");
        assert_eq!(r.event.created.as_deref(), Some("2026-11-28T08:00:00Z"));
        assert_eq!(r.fields["disk"], "/dev/sda");
        assert_eq!(r.fields["pct"], 93);
        assert_eq!(r.fields["json"]["host"], "db-1", "reserved keys are nested");
    }

    #[test]
    fn epoch_times_in_seconds_and_millis() {
        let mut r = record(r#"{"time":1764316800,"message":"a"}"#);
        assert!(parse_json_message(&mut r));
        assert_eq!(r.timestamp, "2025-11-28T08:00:00Z");
        let mut r = record(r#"{"time":1764316800123,"message":"a"}"#);
        assert!(parse_json_message(&mut r));
        assert_eq!(r.timestamp, "2025-11-28T08:00:00.123Z");
    }

    #[test]
    fn unparseable_time_stays_a_field() {
        let mut r = record(r#"{"time":"yesterday","message":"a"}"#);
        assert!(parse_json_message(&mut r));
        assert_eq!(r.timestamp, "2026-11-28T08:00:00Z");
        assert_eq!(r.fields["time"], "yesterday");
    }

    #[test]
    fn non_objects_are_left_alone() {
        for m in ["plain text", "[1,2]", "{broken", "", "{\"a\":1} trailing"] {
            let mut r = record(m);
            assert!(!parse_json_message(&mut r), "{m}");
            assert_eq!(r.message, m);
            assert!(r.fields.is_empty());
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet = b"{}[]\":,0123456789.eE+-truefalsnl \\u";
        for _ in 0..5000 {
            let len = rng.usize(0..64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let mut r = record(&String::from_utf8_lossy(&bytes));
            parse_json_message(&mut r);
        }
    }
}
