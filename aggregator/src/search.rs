//! `ferry search`: scans the local store's day files in date order and prints the records that
//! match, either as stored (one JSON line each) or as one readable line each.
//!
//! Time bounds are `since <= @timestamp < until` on the record's own `@timestamp`. Day files are
//! named by ingest day, which is at or after the event day except for clock skew, so a file is
//! skipped only when its day is more than one day before `since`; files after `until` are still
//! read, because a record ingested late (an agent catching up on a backlog) lands in a later day
//! file than its timestamp. Search only reads; it never touches the store's state or the queue.
//!
//! A time bound is an RFC 3339 time (`2026-11-28T08:00:00Z`) or a duration before now with its
//! unit (`30s`, `10m`, `2h`, `7d`): [`parse_time_bound`]. A number without a unit is refused
//! rather than guessed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Days, SecondsFormat, Utc};
use serde_json::Value;
use tracing::debug;

use crate::local::day_of_file;

/// What to look for. Every set filter must match; an empty query matches everything.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// Records with `@timestamp` at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Records with `@timestamp` before this instant.
    pub until: Option<DateTime<Utc>>,
    /// `container.name` or `kubernetes.container.name` equal to this, or `container.id`
    /// starting with it.
    pub container: Option<String>,
    /// `kubernetes.namespace` equal to this.
    pub namespace: Option<String>,
    /// `kubernetes.pod.name` equal to this.
    pub pod: Option<String>,
    /// `stream` equal to this (`stdout` or `stderr`).
    pub stream: Option<String>,
    /// `log.level` (the source's own name) or `log.level_normalized` equal to this, ignoring case.
    pub level: Option<String>,
    /// `message` contains this (case-sensitive).
    pub text: Option<String>,
    /// `message` matches this.
    pub regex: Option<regex::Regex>,
    /// Stop after this many matches.
    pub limit: Option<usize>,
}

/// Why a `--since`/`--until` value is not a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeBoundError {
    #[error("{0:?} has no unit: write {0}s, {0}m, {0}h or {0}d (seconds, minutes, hours, days before now), or an RFC 3339 time such as 2026-11-28T08:00:00Z")]
    NoUnit(String),
    #[error("{value:?}: unknown unit {unit:?}; use s, m, h or d (seconds, minutes, hours, days before now)")]
    UnknownUnit { value: String, unit: String },
    #[error("{value:?} is out of range: at most {max} before now")]
    OutOfRange { value: String, max: String },
    #[error("{0:?} is neither an RFC 3339 time (2026-11-28T08:00:00Z) nor a duration before now (30s, 10m, 2h, 7d)")]
    Unreadable(String),
}

/// The longest duration before now a time bound may name: 100 years, far past any store's
/// retention and far inside what the time arithmetic can represent.
const MAX_AGO_DAYS: u64 = 36_525;

/// Reads a time bound relative to `now`: an RFC 3339 time, or a whole number followed by one of
/// `s`, `m`, `h`, `d` meaning that long before `now` (at most [`MAX_AGO_DAYS`] days).
pub fn parse_time_bound(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, TimeBoundError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    if number.is_empty() {
        return Err(TimeBoundError::Unreadable(value.to_string()));
    }
    let seconds_per_unit: u64 = match unit {
        "" => return Err(TimeBoundError::NoUnit(value.to_string())),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other if other.bytes().all(|b| b.is_ascii_alphabetic()) => {
            return Err(TimeBoundError::UnknownUnit {
                value: value.to_string(),
                unit: other.to_string(),
            })
        }
        _ => return Err(TimeBoundError::Unreadable(value.to_string())),
    };
    let out_of_range = || TimeBoundError::OutOfRange {
        value: value.to_string(),
        max: format!("{MAX_AGO_DAYS}d"),
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per_unit))
        .filter(|&s| s <= MAX_AGO_DAYS * 86_400)
        .ok_or_else(out_of_range)?;
    let ago = chrono::TimeDelta::try_seconds(seconds as i64).ok_or_else(out_of_range)?;
    now.checked_sub_signed(ago).ok_or_else(out_of_range)
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing results failed: {0}")]
    Write(#[source] io::Error),
}

/// Searches the day files in `store_dir` and writes each match to `out` (the stored JSON line
/// when `json`, else a readable line). Returns the number of matches.
pub fn search(
    store_dir: &Path,
    query: &SearchQuery,
    json: bool,
    out: &mut dyn Write,
) -> Result<usize, SearchError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SearchError::Read { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(store_dir).map_err(read_err(store_dir))? {
        let entry = entry.map_err(read_err(store_dir))?;
        let Some(day) = entry.file_name().to_str().and_then(day_of_file) else {
            continue;
        };
        files.push((day, entry.path()));
    }
    files.sort();
    let first_day = query
        .since
        .and_then(|s| s.date_naive().checked_sub_days(Days::new(1)));
    let limit = query.limit.unwrap_or(usize::MAX);
    let prefilter = query.text.as_deref().filter(|t| json_verbatim(t));
    let mut matches = 0;
    let mut line = Vec::new();
    for (day, path) in files {
        if matches >= limit {
            break;
        }
        if first_day.is_some_and(|first| day < first) {
            continue;
        }
        let file = match File::open(&path) {
            Ok(f) => f,
            // Retention may delete a file while we look.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(read_err(&path)(e)),
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(read_err(&path))?;
            if n == 0 || line.last() != Some(&b'\n') {
                // End of file, or a line still being written.
                break;
            }
            if let Some(text) = prefilter {
                if !contains(&line, text.as_bytes()) {
                    continue;
                }
            }
            let record: Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(e) => {
                    debug!(path = %path.display(), error = %e, "Unreadable store line skipped");
                    continue;
                }
            };
            if !query.matches(&record) {
                continue;
            }
            if json {
                out.write_all(&line).map_err(SearchError::Write)?;
            } else {
                writeln!(out, "{}", readable(&record)).map_err(SearchError::Write)?;
            }
            matches += 1;
            if matches >= limit {
                break;
            }
        }
    }
    out.flush().map_err(SearchError::Write)?;
    Ok(matches)
}

/// Whether `text` appears byte-for-byte in a JSON encoding of a string containing it (no
/// characters JSON escapes), so the raw line can be checked before parsing.
fn json_verbatim(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn str_at<'a>(record: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(record, |v, key| v.get(key))
        .and_then(Value::as_str)
}

fn timestamp(record: &Value) -> Option<DateTime<Utc>> {
    str_at(record, &["@timestamp"])
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl SearchQuery {
    fn matches(&self, record: &Value) -> bool {
        if self.since.is_some() || self.until.is_some() {
            let Some(ts) = timestamp(record) else {
                return false;
            };
            if self.since.is_some_and(|since| ts < since) || self.until.is_some_and(|u| ts >= u) {
                return false;
            }
        }
        let eq = |want: &Option<String>, path: &[&str]| {
            want.as_deref()
                .is_none_or(|w| str_at(record, path) == Some(w))
        };
        if !eq(&self.namespace, &["kubernetes", "namespace"])
            || !eq(&self.pod, &["kubernetes", "pod", "name"])
            || !eq(&self.stream, &["stream"])
        {
            return false;
        }
        if let Some(want) = &self.container {
            let by_name = str_at(record, &["container", "name"]) == Some(want)
                || str_at(record, &["kubernetes", "container", "name"]) == Some(want);
            let by_id = str_at(record, &["container", "id"])
                .is_some_and(|id| id.starts_with(want.as_str()));
            if !by_name && !by_id {
                return false;
            }
        }
        if let Some(want) = &self.level {
            // The source's own name (`notice`) or the normalised one (`info`).
            let is =
                |path: &[&str]| str_at(record, path).is_some_and(|l| l.eq_ignore_ascii_case(want));
            if !is(&["log", "level"]) && !is(&["log", "level_normalized"]) {
                return false;
            }
        }
        let message = str_at(record, &["message"]).unwrap_or("");
        if self.text.as_deref().is_some_and(|t| !message.contains(t)) {
            return false;
        }
        if self.regex.as_ref().is_some_and(|r| !r.is_match(message)) {
            return false;
        }
        true
    }
}

/// `2026-11-28T08:40:00.123Z web-1 stderr ERROR message…`: time (UTC, milliseconds), who
/// (`namespace/pod/container` on Kubernetes, else the container name or short id, else the
/// host), stream and level when known, then the message.
fn readable(record: &Value) -> String {
    let time = match timestamp(record) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => str_at(record, &["@timestamp"]).unwrap_or("-").to_string(),
    };
    let who = match (
        str_at(record, &["kubernetes", "namespace"]),
        str_at(record, &["kubernetes", "pod", "name"]),
    ) {
        (Some(ns), Some(pod)) => {
            let container = str_at(record, &["kubernetes", "container", "name"])
                .or_else(|| str_at(record, &["container", "name"]))
                .unwrap_or("-");
            format!("{ns}/{pod}/{container}")
        }
        _ => str_at(record, &["container", "name"])
            .map(str::to_string)
            .or_else(|| {
                str_at(record, &["container", "id"]).map(|id| id.chars().take(12).collect())
            })
            .or_else(|| str_at(record, &["host", "name"]).map(str::to_string))
            .unwrap_or_else(|| "-".to_string()),
    };
    let mut line = format!("{time} {who}");
    if let Some(stream) = str_at(record, &["stream"]) {
        line.push(' ');
        line.push_str(stream);
    }
    if let Some(level) = str_at(record, &["log", "level"]) {
        line.push(' ');
        line.push_str(&level.to_uppercase());
    }
    line.push(' ');
    line.push_str(str_at(record, &["message"]).unwrap_or(""));
    line
}

#[cfg(test)]
mod tests {
    /// `--level info` finds an nginx `notice` line by its normalised level, `--level notice` by
    /// its own.
    #[test]
    fn level_matches_the_source_name_or_the_normalised_one() {
        let record = serde_json::json!({"log": {"level": "notice", "level_normalized": "info"}});
        let by = |level: &str| {
            SearchQuery {
                level: Some(level.into()),
                ..Default::default()
            }
            .matches(&record)
        };
        assert!(by("info") && by("NOTICE"));
        assert!(!by("warn"));
    }

    use super::*;
    use chrono::TimeZone;
    use ferry_wire::{
        Container, Kubernetes, KubernetesContainer, KubernetesPod, LogRecord, Stream,
    };

    fn rec(ts: &str, message: &str) -> LogRecord {
        let mut r = crate::local::tests::record("src", 0, message);
        r.timestamp = ts.into();
        r
    }

    fn docker(
        mut r: LogRecord,
        name: &str,
        id: &str,
        stream: Stream,
        level: Option<&str>,
    ) -> LogRecord {
        r.container = Container {
            id: Some(id.into()),
            name: Some(name.into()),
            ..Default::default()
        };
        r.stream = Some(stream);
        r.log.level = level.map(str::to_string);
        r
    }

    fn k8s(mut r: LogRecord, ns: &str, pod: &str, container: &str) -> LogRecord {
        r.kubernetes = Kubernetes {
            namespace: Some(ns.into()),
            pod: KubernetesPod {
                name: Some(pod.into()),
                uid: None,
            },
            container: KubernetesContainer {
                name: Some(container.into()),
            },
        };
        r.stream = Some(Stream::Stdout);
        r
    }

    /// Writes day files as the store does.
    fn store() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let days: [(&str, Vec<LogRecord>); 3] = [
            (
                "ferry-2026-11-20.ndjson",
                vec![docker(
                    rec("2026-11-20T10:00:00Z", "old news"),
                    "web-1",
                    "abcdef0123456789",
                    Stream::Stdout,
                    Some("info"),
                )],
            ),
            (
                "ferry-2026-11-28.ndjson",
                vec![
                    docker(
                        rec("2026-11-28T08:40:00.123456Z", "GET /index 500"),
                        "web-1",
                        "abcdef0123456789",
                        Stream::Stderr,
                        Some("error"),
                    ),
                    docker(
                        rec("2026-11-28T08:41:00Z", "GET /health 200"),
                        "web-1",
                        "abcdef0123456789",
                        Stream::Stdout,
                        Some("info"),
                    ),
                    docker(
                        rec("2026-11-28T08:42:00Z", "db says \"hi\""),
                        "db",
                        "0123456789abcdef",
                        Stream::Stdout,
                        None,
                    ),
                    k8s(
                        rec("2026-11-28T08:43:00Z", "reconciled 3 objects"),
                        "kube-system",
                        "op-7d9",
                        "operator",
                    ),
                ],
            ),
            (
                "ferry-2026-11-29.ndjson",
                vec![
                    // Ingested a day late.
                    k8s(
                        rec("2026-11-28T23:59:59Z", "late line"),
                        "shop",
                        "cart-5f",
                        "cart",
                    ),
                    k8s(
                        rec("2026-11-29T00:00:01Z", "next day"),
                        "shop",
                        "cart-5f",
                        "cart",
                    ),
                ],
            ),
        ];
        for (name, records) in days {
            let mut out = Vec::new();
            for r in records {
                let line = serde_json::to_vec(&r).unwrap();
                ferry_wire::splice_ingested(&line, "2026-11-29T00:00:00.000Z", &mut out);
            }
            out.extend_from_slice(b"{\"partial"); // a line still being written
            std::fs::write(tmp.path().join(name), out).unwrap();
        }
        std::fs::write(tmp.path().join("state.json"), b"{}").unwrap();
        tmp
    }

    fn run(query: &SearchQuery) -> Vec<String> {
        let tmp = store();
        let mut out = Vec::new();
        let n = search(tmp.path(), query, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert_eq!(lines.len(), n);
        lines
    }

    fn utc(d: u32, h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap()
    }

    #[test]
    fn empty_query_prints_everything_readably_in_date_order() {
        let lines = run(&SearchQuery::default());
        assert_eq!(
            lines,
            [
                "2026-11-20T10:00:00.000Z web-1 stdout INFO old news",
                "2026-11-28T08:40:00.123Z web-1 stderr ERROR GET /index 500",
                "2026-11-28T08:41:00.000Z web-1 stdout INFO GET /health 200",
                "2026-11-28T08:42:00.000Z db stdout db says \"hi\"",
                "2026-11-28T08:43:00.000Z kube-system/op-7d9/operator stdout reconciled 3 objects",
                "2026-11-28T23:59:59.000Z shop/cart-5f/cart stdout late line",
                "2026-11-29T00:00:01.000Z shop/cart-5f/cart stdout next day",
            ]
        );
    }

    #[test]
    fn time_range_includes_late_ingested_records() {
        let q = SearchQuery {
            since: Some(utc(28, 8, 41)),
            until: Some(utc(29, 0, 0)),
            ..Default::default()
        };
        let got = run(&q);
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(got[0].ends_with("GET /health 200"));
        assert!(got[3].ends_with("late line"));
    }

    #[test]
    fn filters_by_container_namespace_pod_stream_level_text_and_regex() {
        let count = |q: SearchQuery| run(&q).len();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            count(SearchQuery {
                container: s("web-1"),
                ..Default::default()
            }),
            3
        );
        assert_eq!(
            count(SearchQuery {
                container: s("0123"),
                ..Default::default()
            }),
            1,
            "id prefix"
        );
        assert_eq!(
            count(SearchQuery {
                container: s("cart"),
                ..Default::default()
            }),
            2,
            "k8s container"
        );
        assert_eq!(
            count(SearchQuery {
                container: s("web"),
                ..Default::default()
            }),
            0,
            "names match exactly"
        );
        assert_eq!(
            count(SearchQuery {
                namespace: s("shop"),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(SearchQuery {
                namespace: s("shop"),
                pod: s("cart-5f"),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(SearchQuery {
                pod: s("op-7d9"),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(SearchQuery {
                stream: s("stderr"),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(SearchQuery {
                level: s("ERROR"),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count(SearchQuery {
                level: s("info"),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(SearchQuery {
                text: s("GET"),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count(SearchQuery {
                text: s("says \"hi\""),
                ..Default::default()
            }),
            1,
            "escaped text"
        );
        assert_eq!(
            count(SearchQuery {
                text: s("web-1"),
                ..Default::default()
            }),
            0,
            "only the message"
        );
        let q = SearchQuery {
            regex: Some(regex::Regex::new(r"^GET /\w+ [45]\d\d$").unwrap()),
            ..Default::default()
        };
        assert_eq!(count(q), 1);
        let q = SearchQuery {
            container: s("web-1"),
            stream: s("stdout"),
            since: Some(utc(28, 0, 0)),
            ..Default::default()
        };
        assert_eq!(count(q), 1);
    }

    #[test]
    fn limit_stops_early_and_json_prints_stored_lines() {
        let tmp = store();
        let mut out = Vec::new();
        let q = SearchQuery {
            limit: Some(2),
            since: Some(utc(28, 0, 0)),
            ..Default::default()
        };
        assert_eq!(search(tmp.path(), &q, true, &mut out).unwrap(), 2);
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"], "GET /index 500");
        assert_eq!(lines[0]["event"]["ingested"], "2026-11-29T00:00:00.000Z");
        assert_eq!(lines[1]["message"], "GET /health 200");
    }

    #[test]
    fn time_bounds_are_rfc3339_or_a_duration_with_its_unit() {
        let now = utc(28, 12, 0);
        assert_eq!(
            parse_time_bound("2026-11-28T08:00:00Z", now).unwrap(),
            utc(28, 8, 0)
        );
        assert_eq!(
            parse_time_bound("2026-11-28T09:00:00+01:00", now).unwrap(),
            utc(28, 8, 0)
        );
        for (value, ago) in [("30s", 30), ("10m", 600), ("2h", 7200), ("7d", 7 * 86_400)] {
            assert_eq!(
                parse_time_bound(value, now).unwrap(),
                now - chrono::TimeDelta::seconds(ago),
                "{value}"
            );
        }
        assert_eq!(parse_time_bound("0s", now).unwrap(), now);
        assert_eq!(
            parse_time_bound("36525d", now).unwrap(),
            now - chrono::TimeDelta::days(36_525)
        );
    }

    /// Regression (review of issue 10): `--since 30` silently meant 30 minutes, and very large
    /// values overflowed.
    #[test]
    fn a_time_bound_without_a_unit_or_out_of_range_is_refused_naming_the_value() {
        let now = utc(28, 12, 0);
        let err = parse_time_bound("30", now).unwrap_err();
        assert_eq!(err, TimeBoundError::NoUnit("30".into()));
        assert!(err.to_string().contains("30m"), "{err}");
        for value in [
            "36526d",
            "100000000000000d",
            "9223372036854775807s",
            "18446744073709551616h",
            "99999999999999999999999999m",
        ] {
            let err = parse_time_bound(value, now).unwrap_err();
            assert!(
                matches!(err, TimeBoundError::OutOfRange { .. }),
                "{value}: {err}"
            );
            assert!(err.to_string().contains(value), "{err}");
        }
        assert!(matches!(
            parse_time_bound("15y", now).unwrap_err(),
            TimeBoundError::UnknownUnit { unit, .. } if unit == "y"
        ));
        for value in ["soon", "", "-5m", "2026-11-28", "m10", "10 m", "1.5h"] {
            assert_eq!(
                parse_time_bound(value, now).unwrap_err(),
                TimeBoundError::Unreadable(value.into()),
                "{value}"
            );
        }
    }

    #[test]
    fn missing_store_dir_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = search(&missing, &SearchQuery::default(), false, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
