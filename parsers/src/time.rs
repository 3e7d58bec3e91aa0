//! Timestamp formats a rule can name, and how a parsed time replaces a record's `@timestamp`.
//!
//! Formats are compiled once at load (strftime strings become chrono items); parsing a line's
//! time allocates nothing. A format without a year (`%b %e %H:%M:%S` in syslog, `%m%d` in klog)
//! takes the year of the record's read time, and the year before when that would put the event
//! more than a day in the future (a December line read in January). A format without a UTC
//! offset is read as UTC. This module never touches fields other than `@timestamp` and
//! `event.created`.

use chrono::format::{parse as chrono_parse, Item, Parsed, StrftimeItems};
use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};

/// One way of reading a captured time, compiled from a rule's `formats` entry.
#[derive(Debug, Clone)]
pub(crate) enum TimeFormat {
    /// `rfc3339`: `2026-11-28T08:00:00.123+01:00` (a space instead of `T` is accepted too).
    Rfc3339,
    /// `epoch_seconds`: `1795852800` or `1795852800.123`.
    EpochSeconds,
    /// `epoch_millis`: `1795852800123`.
    EpochMillis,
    /// `epoch`: seconds or milliseconds, told apart by magnitude.
    Epoch,
    /// Any other string: a chrono strftime pattern such as `%d/%b/%Y:%H:%M:%S %z`.
    Strftime {
        items: Vec<Item<'static>>,
        has_year: bool,
    },
}

impl TimeFormat {
    /// Compiles a format name or strftime string; the error says what chrono did not accept.
    pub(crate) fn compile(spec: &str) -> Result<TimeFormat, String> {
        Ok(match spec {
            "rfc3339" => TimeFormat::Rfc3339,
            "epoch_seconds" => TimeFormat::EpochSeconds,
            "epoch_millis" => TimeFormat::EpochMillis,
            "epoch" => TimeFormat::Epoch,
            _ => {
                let items = StrftimeItems::new(spec)
                    .parse_to_owned()
                    .map_err(|e| format!("bad time format `{spec}`: {e}"))?;
                if items.is_empty() {
                    return Err("empty time format".into());
                }
                let has_year = [
                    "%Y", "%y", "%G", "%g", "%C", "%s", "%+", "%F", "%D", "%c", "%x",
                ]
                .iter()
                .any(|y| spec.contains(y));
                TimeFormat::Strftime { items, has_year }
            }
        })
    }

    fn parse(&self, raw: &str, read_time: &mut ReadTime<'_>) -> Option<DateTime<Utc>> {
        match self {
            TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(raw)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            TimeFormat::EpochSeconds => raw.parse::<f64>().ok().and_then(|s| {
                epoch_to_time(s * 1000.0, true) // seconds → millis
            }),
            TimeFormat::EpochMillis => raw.parse::<f64>().ok().and_then(|m| epoch_to_time(m, true)),
            TimeFormat::Epoch => raw
                .parse::<f64>()
                .ok()
                .and_then(|v| epoch_to_time(v, false)),
            TimeFormat::Strftime { items, has_year } => {
                let mut parsed = Parsed::new();
                chrono_parse(&mut parsed, raw, items.iter()).ok()?;
                if !has_year {
                    let now = read_time.get();
                    let mut before = parsed.clone();
                    parsed.set_year(i64::from(now.year())).ok()?;
                    match to_utc(&parsed) {
                        Some(t) if t <= now + chrono::Duration::days(1) => return Some(t),
                        // In the future, or Feb 29 of a non-leap year: try the year before.
                        _ => {
                            before.set_year(i64::from(now.year() - 1)).ok()?;
                            return to_utc(&before);
                        }
                    }
                }
                to_utc(&parsed)
            }
        }
    }
}

fn to_utc(parsed: &Parsed) -> Option<DateTime<Utc>> {
    if parsed.offset().is_some() || parsed.timestamp().is_some() {
        return parsed.to_datetime().ok().map(|t| t.with_timezone(&Utc));
    }
    let naive = parsed.to_naive_datetime_with_offset(0).ok()?;
    Some(Utc.from_utc_datetime(&naive))
}

/// The record's read time, parsed only when a year-less format needs it.
pub(crate) struct ReadTime<'a> {
    raw: &'a str,
    parsed: Option<DateTime<Utc>>,
}

impl<'a> ReadTime<'a> {
    pub(crate) fn new(raw: &'a str) -> Self {
        ReadTime { raw, parsed: None }
    }

    fn get(&mut self) -> DateTime<Utc> {
        *self.parsed.get_or_insert_with(|| {
            DateTime::parse_from_rfc3339(self.raw)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now())
        })
    }
}

/// Tries each format in order; the first that reads the whole string wins.
pub(crate) fn parse_time(
    raw: &str,
    formats: &[TimeFormat],
    read_time: &mut ReadTime<'_>,
) -> Option<DateTime<Utc>> {
    formats.iter().find_map(|f| f.parse(raw, read_time))
}

/// The last time text a capture read and what it became, formatted for `@timestamp`: log lines
/// written in the same second carry the same text, so most lines skip parsing and formatting.
/// Formats without a year are not cached (their result depends on the read time).
#[derive(Debug, Default)]
pub(crate) struct TimeCache {
    /// Which capture (its address: stable while one rule set is loaded; the cache is emptied
    /// when the set changes).
    capture: usize,
    raw: String,
    formatted: Option<String>,
}

impl TimeCache {
    /// [`parse_time`], formatted as `@timestamp` is (RFC 3339, UTC, `Z`).
    pub(crate) fn parse(
        &mut self,
        capture: usize,
        raw: &str,
        formats: &[TimeFormat],
        read_time: &mut ReadTime<'_>,
    ) -> Option<&str> {
        let cacheable = formats.iter().all(|f| {
            !matches!(
                f,
                TimeFormat::Strftime {
                    has_year: false,
                    ..
                }
            )
        });
        if !(cacheable && self.capture == capture && self.raw == raw) {
            self.formatted = parse_time(raw, formats, read_time).map(format_timestamp);
            self.capture = 0;
            self.raw.clear();
            if cacheable {
                self.capture = capture;
                self.raw.push_str(raw);
            }
        }
        self.formatted.as_deref()
    }
}

/// Epoch milliseconds (`millis = true`) or seconds-or-milliseconds told apart by magnitude
/// (values above 1e11 are milliseconds).
pub(crate) fn epoch_to_time(value: f64, millis: bool) -> Option<DateTime<Utc>> {
    if !value.is_finite() || !(0.0..=1e16).contains(&value) {
        return None;
    }
    let ms = if millis || value > 1e11 {
        value
    } else {
        value * 1000.0
    };
    Utc.timestamp_millis_opt(ms as i64).single()
}

/// Makes `time` the record's `@timestamp`, keeping the read time as `event.created` when that
/// is not set yet. `spare`: a buffer to take for `@timestamp` then (the last record's
/// `event.created`, handed back by [`crate::Scratch::unset_created`]), so that a record costs no
/// allocation.
pub(crate) fn replace_timestamp(
    timestamp: &mut String,
    created: &mut Option<String>,
    time: &str,
    spare: &mut String,
) {
    match created {
        None => {
            let mut new = std::mem::take(spare);
            new.clear();
            new.push_str(time);
            *created = Some(std::mem::replace(timestamp, new));
        }
        Some(_) => {
            timestamp.clear();
            timestamp.push_str(time);
        }
    }
}

/// `time` as `@timestamp` writes it.
pub(crate) fn format_timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, fmt: &str, read: &str) -> Option<String> {
        let f = TimeFormat::compile(fmt).unwrap();
        parse_time(raw, &[f], &mut ReadTime::new(read)).map(format_timestamp)
    }

    #[test]
    fn the_cache_answers_like_parsing_and_never_caches_year_less_formats() {
        let with_year = [TimeFormat::compile("%d/%b/%Y:%H:%M:%S %z").unwrap()];
        let year_less = [TimeFormat::compile("%b %e %H:%M:%S").unwrap()];
        let mut cache = TimeCache::default();
        let mut parse = |capture, raw: &str, formats: &[TimeFormat], read: &str| {
            cache
                .parse(capture, raw, formats, &mut ReadTime::new(read))
                .map(str::to_owned)
        };
        let read = "2026-11-28T12:00:00Z";
        for _ in 0..2 {
            assert_eq!(
                parse(1, "28/Nov/2026:09:00:00 +0100", &with_year, read).as_deref(),
                Some("2026-11-28T08:00:00Z")
            );
        }
        assert_eq!(parse(1, "not a time", &with_year, read), None);
        assert_eq!(parse(1, "not a time", &with_year, read), None);
        // The same text under another capture is parsed with that capture's formats.
        assert_eq!(
            parse(2, "28/Nov/2026:09:00:00 +0100", &year_less, read),
            None
        );
        // A year-less time takes its year from each record's read time.
        let jan = parse(3, "Dec 31 23:59:00", &year_less, "2027-01-01T00:00:10Z");
        let dec = parse(3, "Dec 31 23:59:00", &year_less, "2026-12-31T23:59:30Z");
        assert_eq!(jan.as_deref(), Some("2026-12-31T23:59:00Z"));
        assert_eq!(dec.as_deref(), Some("2026-12-31T23:59:00Z"));
        let next_year = parse(3, "Dec 31 23:59:00", &year_less, "2028-01-01T00:00:10Z");
        assert_eq!(next_year.as_deref(), Some("2027-12-31T23:59:00Z"));
    }

    #[test]
    fn strftime_with_offset() {
        assert_eq!(
            parse(
                "28/Nov/2026:09:00:00 +0100",
                "%d/%b/%Y:%H:%M:%S %z",
                "2026-11-28T12:00:00Z"
            )
            .as_deref(),
            Some("2026-11-28T08:00:00Z")
        );
    }

    #[test]
    fn year_less_formats_take_the_read_year_or_the_one_before() {
        let read = "2026-01-02T00:00:00Z";
        assert_eq!(
            parse("Jan  1 23:59:59", "%b %e %H:%M:%S", read).as_deref(),
            Some("2026-01-01T23:59:59Z")
        );
        assert_eq!(
            parse("Dec 31 23:59:59", "%b %e %H:%M:%S", read).as_deref(),
            Some("2025-12-31T23:59:59Z"),
            "a December line read in January belongs to the year before"
        );
        assert_eq!(
            parse(
                "1128 08:00:00.123456",
                "%m%d %H:%M:%S%.f",
                "2026-11-28T12:00:00Z"
            )
            .as_deref(),
            Some("2026-11-28T08:00:00.123456Z")
        );
    }

    #[test]
    fn epochs_and_rfc3339() {
        let read = "2026-11-28T12:00:00Z";
        assert_eq!(
            parse("1795852800.5", "epoch_seconds", read).as_deref(),
            Some("2026-11-28T08:00:00.500Z")
        );
        assert_eq!(
            parse("1795852800123", "epoch_millis", read).as_deref(),
            Some("2026-11-28T08:00:00.123Z")
        );
        assert_eq!(
            parse("1795852800", "epoch", read).as_deref(),
            Some("2026-11-28T08:00:00Z")
        );
        assert_eq!(
            parse("2026-11-28T09:00:00.25+01:00", "rfc3339", read).as_deref(),
            Some("2026-11-28T08:00:00.250Z")
        );
        assert_eq!(parse("yesterday", "rfc3339", read), None);
        assert_eq!(parse("-5", "epoch", read), None);
    }

    #[test]
    fn bad_formats_fail_to_compile() {
        assert!(TimeFormat::compile("%Q").is_err());
        assert!(TimeFormat::compile("").is_err());
    }
}
