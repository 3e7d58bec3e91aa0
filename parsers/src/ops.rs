//! What `ferry check` and `ferry parse` need from this crate: validating rule files, and running
//! one rule over lines to show what it makes of them.
//!
//! Output of [`parse_lines`] is one JSON object per event with dotted keys, sorted, the way
//! Kibana lists fields: `message`, `log.level`, `@timestamp` (only when the rule parsed a time),
//! `log.flags` (`["multiline"]` for joined events) and every extracted field. This module does
//! no argument parsing and prints nothing itself.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use ferry_wire::LogRecord;
use serde_json::{Map, Value};

use crate::multiline::{Joined, Line};
use crate::rule::RuleError;
use crate::set::{RuleSet, Scratch, Selection};

/// Checks rule files or directories for `ferry check`: every problem, each naming its file, its
/// rule and the error. Empty when all is well.
pub fn check_rule_files(paths: &[PathBuf]) -> Vec<RuleError> {
    RuleSet::load(paths, false).err().unwrap_or_default()
}

/// Why [`parse_lines`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ParseLinesError {
    #[error("no rule named `{0}`")]
    UnknownRule(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Counts from one [`parse_lines`] run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParseSummary {
    pub lines: u64,
    pub events: u64,
    /// Events the rule did not match (they carry `parse.error`).
    pub missed: u64,
}

/// Runs rule `rule` (or several, comma-separated, as in the `ferry.parser` label) over `input`,
/// writing one JSON object per event to `out` (see the module docs). Multiline rules join lines
/// as the agent would (the whole input is one stream). `read_time` stands in for the time the
/// agent read each line (RFC 3339; default: now); year-less timestamps take their year from it.
pub fn parse_lines(
    set: &RuleSet,
    rule: &str,
    input: impl BufRead,
    mut out: impl Write,
    read_time: Option<&str>,
) -> Result<ParseSummary, ParseLinesError> {
    let selection = set.select(Some(rule), None);
    if let Some(unknown) = selection.unknown_rule() {
        return Err(ParseLinesError::UnknownRule(unknown.to_owned()));
    }
    let read_time = read_time.map_or_else(
        || chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        str::to_owned,
    );
    let mut joiner = selection.joiner();
    let mut scratch = Scratch::new();
    let mut summary = ParseSummary::default();
    let mut emit = |joined: Joined, out: &mut dyn Write| -> std::io::Result<()> {
        let value = parse_event(&selection, &mut scratch, joined, &read_time, &mut summary);
        serde_json::to_writer(&mut *out, &value)?;
        out.write_all(b"\n")
    };
    let mut offset = 0u64;
    let mut lines = 0u64;
    for line in input.split(b'\n') {
        let mut bytes = line?;
        let len = bytes.len() as u64 + 1;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        lines += 1;
        let line = Line {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            offset,
            at: Instant::now(),
        };
        offset += len;
        match &mut joiner {
            Some(j) => {
                for joined in j.push(line) {
                    emit(joined, &mut out)?;
                }
            }
            None => emit(single(line), &mut out)?,
        }
    }
    if let Some(joined) = joiner.as_mut().and_then(|j| j.flush()) {
        emit(joined, &mut out)?;
    }
    out.flush()?;
    summary.lines = lines;
    Ok(summary)
}

fn single(line: Line) -> Joined {
    Joined {
        text: line.text,
        first_offset: line.offset,
        last_offset: line.offset,
        lines: 1,
        split: false,
    }
}

fn parse_event(
    selection: &Selection,
    scratch: &mut Scratch,
    joined: Joined,
    read_time: &str,
    summary: &mut ParseSummary,
) -> Value {
    let multiline = joined.is_multiline();
    let mut record = LogRecord {
        timestamp: read_time.to_owned(),
        message: joined.text,
        ..Default::default()
    };
    if selection.apply(&mut record, scratch) == crate::set::Outcome::Missed {
        summary.missed += 1;
    }
    summary.events += 1;
    let mut flat = flatten_record(&record);
    if multiline {
        flat.insert("log.flags".into(), serde_json::json!(["multiline"]));
    }
    Value::Object(flat)
}

/// What a parser put into a record, as dotted keys: `message`, `log.level`, `@timestamp` (when
/// parsed: `event.created` is set) and the extracted fields.
pub fn flatten_record(record: &LogRecord) -> Map<String, Value> {
    let mut flat = Map::new();
    flat.insert("message".into(), record.message.clone().into());
    if let Some(level) = &record.log.level {
        flat.insert("log.level".into(), level.clone().into());
    }
    if record.event.created.is_some() {
        flat.insert("@timestamp".into(), record.timestamp.clone().into());
    }
    flatten_into(&mut flat, "", &record.fields);
    flat
}

fn flatten_into(flat: &mut Map<String, Value>, prefix: &str, map: &Map<String, Value>) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Object(m) if !m.is_empty() => flatten_into(flat, &key, m),
            _ => {
                flat.insert(key, v.clone());
            }
        }
    }
}
