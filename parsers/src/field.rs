//! What a rule does with one capture: the target field, the type, and how the text becomes a
//! JSON value in the record.
//!
//! Field names are ECS dotted paths. Three names address the record itself: `message`,
//! `log.level` (the source's name after `map`, lower-cased, with `log.level_normalized` beside it:
//! see `level.rs`) and `@timestamp`. Every other path becomes
//! nested objects in `record.fields` (`http.request.method` → `{"http":{"request":{…}}}`), except
//! paths under the record's own top-level objects (`log`, `host`, `event`, `container`,
//! `kubernetes`, `stream`), which are kept as one literal dotted key (`"log.logger": "…"`) so the
//! serialised record never has two `log` keys; Elasticsearch expands such keys into the same
//! object. Paths that would overwrite what identifies a record (`event.id`, `log.offset`,
//! `log.file.*`, …) are refused at load.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::level::{
    normalise_level, source_level, LEVEL_NORMALIZED, NORMALISED, SYSLOG_SEVERITIES,
};
use crate::time::TimeFormat;
use crate::typed::Typed;

/// Top-level keys owned by the record struct: paths under them stay dotted keys.
const RECORD_OBJECTS: &[&str] = &["log", "host", "event", "container", "kubernetes", "stream"];

/// Paths a rule may not write: they identify the record or belong to the engine.
const FORBIDDEN_EXACT: &[&str] = &[
    "event",
    "log",
    "host",
    "message",
    "@timestamp",
    "event.id",
    "event.created",
    "event.ingested",
    "log.offset",
    "log.flags",
    "log.level",
    LEVEL_NORMALIZED,
    "host.name",
];

/// Subtrees a rule may not write into.
const FORBIDDEN_TREES: &[&str] = &[
    "log.file",
    "container",
    "kubernetes",
    "stream",
    "parse",
    "message",
    "@timestamp",
];

fn forbidden(name: &str) -> bool {
    FORBIDDEN_EXACT.contains(&name)
        || FORBIDDEN_TREES.iter().any(|t| {
            name.strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
}

/// A capture's entry under `[rule.captures]`: a field name, or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum CaptureConfig {
    /// `user = "user.name"`: a string field.
    Field(String),
    /// `code = { field = "http.response.status_code", type = "int" }`.
    Spec(CaptureSpecConfig),
}

/// The table form of a capture entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaptureSpecConfig {
    /// Target ECS field (dotted path), or `message`, `log.level`, `@timestamp`. For `type = "kv"`
    /// a prefix for the keys found ("" = top level).
    pub field: String,
    /// Value type. Default: `string`.
    #[serde(default, rename = "type")]
    pub ty: TypeName,
    /// For `type = "timestamp"`: formats tried in order (`rfc3339`, `epoch_seconds`,
    /// `epoch_millis`, `epoch`, or a strftime pattern). Default: none (required).
    #[serde(default)]
    pub formats: Vec<String>,
    /// Replaces whole captured values before typing (`{ "#" = "warning" }`). Default: empty.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// For `field = "log.level"`: the normalised level (`trace`, `debug`, `info`, `warn`,
    /// `error`, `fatal`) of level names (after `map`, any case) that the common names do not
    /// cover or that this source means otherwise (`{ log = "info", verbose = "debug" }`).
    /// Default: empty.
    #[serde(default)]
    pub normalised: BTreeMap<String, String>,
    /// Undoes `\"`, `\\`, `\xHH`, `\n`, `\t` escapes (nginx and Apache escape quotes in logged
    /// headers). Default: false.
    #[serde(default)]
    pub unescape: bool,
}

/// The value types a capture can have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TypeName {
    #[default]
    String,
    Int,
    Float,
    Bool,
    /// Validated as an IPv4/IPv6 address, kept as text (brackets removed).
    Ip,
    Timestamp,
    /// A syslog `<PRI>` number: sets `log.syslog.priority`, facility and severity, and
    /// `log.level` when nothing else set it.
    SyslogPri,
    /// logfmt `key=value key2="quoted value"` pairs, each becoming a field.
    Kv,
}

/// Where a value goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Message,
    Level,
    Timestamp,
    Field(FieldPath),
}

/// A field path compiled for insertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldPath {
    /// Nested objects: `["http", "request", "method"]`.
    Nested(Vec<String>),
    /// One literal dotted key under a record-owned object: `"log.logger"`.
    Dotted(String),
}

impl FieldPath {
    /// Compiles a dotted name; the error says what is wrong with it.
    pub(crate) fn new(name: &str) -> Result<FieldPath, String> {
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return Err(format!("`{name}` is not a field name"));
        }
        if forbidden(name) {
            return Err(format!(
                "`{name}` belongs to the record and cannot be set by a rule"
            ));
        }
        let head = name.split('.').next().unwrap_or(name);
        if RECORD_OBJECTS.contains(&head) {
            Ok(FieldPath::Dotted(name.to_owned()))
        } else {
            Ok(FieldPath::Nested(
                name.split('.').map(str::to_owned).collect(),
            ))
        }
    }

    fn name(&self) -> String {
        match self {
            FieldPath::Nested(p) => p.join("."),
            FieldPath::Dotted(d) => d.clone(),
        }
    }

    /// Whether one of the two paths is a prefix of the other (they would overwrite each other).
    pub(crate) fn overlaps(&self, other: &FieldPath) -> bool {
        let (a, b) = (self.name(), other.name());
        a != b && (a.starts_with(&format!("{b}.")) || b.starts_with(&format!("{a}.")))
    }
}

/// Inserts `value` at `path`, creating (or replacing non-object) intermediate objects.
pub(crate) fn insert(fields: &mut Map<String, Value>, path: &FieldPath, value: Value) {
    match path {
        FieldPath::Dotted(key) => {
            fields.insert(key.clone(), value);
        }
        FieldPath::Nested(segments) => {
            insert_segments(fields, segments.iter().map(String::as_str), value)
        }
    }
}

/// Inserts at a path given as `&str` segments (logfmt keys, `parse.*`).
pub(crate) fn insert_segments<'a>(
    fields: &mut Map<String, Value>,
    segments: impl IntoIterator<Item = &'a str>,
    value: Value,
) {
    let mut segments = segments.into_iter().peekable();
    let mut map = fields;
    while let Some(seg) = segments.next() {
        if segments.peek().is_none() {
            map.insert(seg.to_owned(), value);
            return;
        }
        if !matches!(map.get(seg), Some(Value::Object(_))) {
            map.insert(seg.to_owned(), Value::Object(Map::new()));
        }
        map = match map.get_mut(seg) {
            Some(Value::Object(m)) => m,
            _ => return, // unreachable: just inserted an object
        };
    }
}

/// A capture compiled at load.
#[derive(Debug, Clone)]
pub(crate) struct CaptureSpec {
    /// Group index in the rule's pattern.
    pub group: usize,
    pub target: Target,
    pub kind: Kind,
    map: Vec<(String, String)>,
    /// Lower-cased level name → normalised level, for a `log.level` capture.
    normalised: Vec<(String, &'static str)>,
    unescape: bool,
}

/// The compiled type of a capture.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    String,
    Int,
    Float,
    Bool,
    Ip,
    Timestamp(Vec<TimeFormat>),
    SyslogPri,
    /// logfmt pairs; `None` merges at the top level with the usual keys recognised.
    Kv(Option<Vec<String>>),
}

impl CaptureSpec {
    /// Compiles one `[rule.captures]` entry.
    pub(crate) fn compile(group: usize, config: &CaptureConfig) -> Result<CaptureSpec, String> {
        let spec = match config {
            CaptureConfig::Field(f) => CaptureSpecConfig {
                field: f.clone(),
                ty: TypeName::String,
                formats: Vec::new(),
                map: BTreeMap::new(),
                normalised: BTreeMap::new(),
                unescape: false,
            },
            CaptureConfig::Spec(s) => s.clone(),
        };
        if !spec.formats.is_empty() && spec.ty != TypeName::Timestamp {
            return Err("`formats` only applies to `type = \"timestamp\"`".into());
        }
        let kind = match spec.ty {
            TypeName::String => Kind::String,
            TypeName::Int => Kind::Int,
            TypeName::Float => Kind::Float,
            TypeName::Bool => Kind::Bool,
            TypeName::Ip => Kind::Ip,
            TypeName::SyslogPri => Kind::SyslogPri,
            TypeName::Timestamp => {
                if spec.formats.is_empty() {
                    return Err("`type = \"timestamp\"` needs `formats`".into());
                }
                let formats = spec
                    .formats
                    .iter()
                    .map(|f| TimeFormat::compile(f))
                    .collect::<Result<Vec<_>, _>>()?;
                Kind::Timestamp(formats)
            }
            TypeName::Kv => {
                let prefix = if spec.field.is_empty() {
                    None
                } else {
                    FieldPath::new(&spec.field)?;
                    Some(spec.field.split('.').map(str::to_owned).collect())
                };
                Kind::Kv(prefix)
            }
        };
        let target = match (spec.field.as_str(), &kind) {
            (_, Kind::Kv(_)) => Target::Message, // unused: kv writes its own fields
            ("message", Kind::String) => Target::Message,
            ("log.level", Kind::String) => Target::Level,
            ("@timestamp", Kind::Timestamp(_)) => Target::Timestamp,
            ("message" | "log.level", _) => {
                return Err(format!("`{}` must have type `string`", spec.field))
            }
            ("@timestamp", _) => return Err("`@timestamp` must have type `timestamp`".into()),
            ("log.syslog.priority", Kind::SyslogPri) => Target::Field(FieldPath::new(&spec.field)?),
            (_, Kind::SyslogPri) => {
                return Err("`type = \"syslog_pri\"` must target `log.syslog.priority`".into())
            }
            (f, _) => Target::Field(FieldPath::new(f)?),
        };
        if !spec.normalised.is_empty() && target != Target::Level {
            return Err("`normalised` only applies to `field = \"log.level\"`".into());
        }
        let mut normalised = Vec::new();
        for (name, level) in spec.normalised {
            let Some(&level) = NORMALISED.iter().find(|n| **n == level) else {
                return Err(format!(
                    "`normalised`: `{name}` = `{level}` is not one of {}",
                    NORMALISED.join(", ")
                ));
            };
            normalised.push((name.to_ascii_lowercase(), level));
        }
        Ok(CaptureSpec {
            group,
            target,
            kind,
            map: spec.map.into_iter().collect(),
            normalised,
            unescape: spec.unescape,
        })
    }

    /// The captured text after `map` (borrowed unless it was mapped).
    pub(crate) fn mapped<'a>(&'a self, raw: &'a str) -> &'a str {
        self.map
            .iter()
            .find(|(k, _)| k == raw)
            .map_or(raw, |(_, v)| v.as_str())
    }

    /// The text, unescaped when asked to (allocates only when there is an escape).
    pub(crate) fn text(&self, raw: &str) -> String {
        if self.unescape && has_backslash(raw) {
            unescape(raw)
        } else {
            raw.to_owned()
        }
    }

    /// Converts a captured value that starts at byte `start` of the line; the error is for
    /// `parse.error`. A value that is the capture itself (or a piece of it) stays a span.
    pub(crate) fn typed(&self, raw: &str, start: usize) -> Result<Typed, String> {
        let mapped = self.mapped(raw);
        let is_span = std::ptr::eq(mapped, raw);
        let raw = mapped;
        let bad = |what: &str| Err(format!("invalid {what} `{}`", truncate(raw, 64)));
        let text = |s: usize, e: usize| {
            if is_span {
                Typed::Span(start + s, start + e)
            } else {
                Typed::Owned(raw[s..e].to_owned())
            }
        };
        match &self.kind {
            Kind::String if self.unescape && has_backslash(raw) => Ok(Typed::Owned(unescape(raw))),
            Kind::String => Ok(text(0, raw.len())),
            Kind::Int => raw.parse::<i64>().map(Typed::Int).or_else(|_| bad("int")),
            Kind::Float => match raw.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Typed::Float(f)),
                _ => bad("float"),
            },
            Kind::Bool => match raw.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Typed::Bool(true)),
                "false" | "no" | "off" | "0" => Ok(Typed::Bool(false)),
                _ => bad("bool"),
            },
            Kind::Ip => {
                let bare = match raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                    Some(_) => 1..raw.len() - 1,
                    None => 0..raw.len(),
                };
                // A zone index (`fe80::1%eth0`) is legal in logs but not in an `ip` field.
                let end = memchr::memchr(b'%', raw[bare.clone()].as_bytes())
                    .map_or(bare.end, |p| bare.start + p);
                match raw[bare.start..end].parse::<IpAddr>() {
                    Ok(_) => Ok(text(bare.start, end)),
                    Err(_) => bad("ip"),
                }
            }
            Kind::Timestamp(_) | Kind::SyslogPri | Kind::Kv(_) => Ok(text(0, raw.len())),
        }
    }
}

pub(crate) fn has_backslash(s: &str) -> bool {
    memchr::memchr(b'\\', s.as_bytes()).is_some()
}

/// Cuts a string for an error message, on a char boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Undoes C-style escapes as nginx (`\x22`) and Apache (`\"`) write them. Unknown escapes are
/// kept as written; `\xHH` that is not valid UTF-8 on its own becomes U+FFFD.
pub(crate) fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut bytes: Vec<u8> = Vec::new();
    let mut chars = raw.char_indices().peekable();
    let flush = |bytes: &mut Vec<u8>, out: &mut String| {
        if !bytes.is_empty() {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        }
    };
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            flush(&mut bytes, &mut out);
            out.push(c);
            continue;
        }
        match chars.peek().map(|&(_, c)| c) {
            Some('x') => {
                let hex = raw.get(i + 2..i + 4);
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        bytes.push(b);
                        chars.next();
                        chars.next();
                        chars.next();
                    }
                    None => {
                        flush(&mut bytes, &mut out);
                        out.push('\\');
                    }
                }
            }
            Some(e @ ('"' | '\\' | 'n' | 't' | 'r')) => {
                flush(&mut bytes, &mut out);
                chars.next();
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                });
            }
            _ => {
                flush(&mut bytes, &mut out);
                out.push('\\');
            }
        }
    }
    flush(&mut bytes, &mut out);
    out
}

/// Syslog facility names (RFC 5424 table 1), indexed by code.
const FACILITIES: [&str; 24] = [
    "kernel",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Writes `log.syslog.*` for a `<PRI>` value; returns the severity's keyword (`notice`) and
/// its normalised level (`info`).
pub(crate) fn syslog_pri(
    fields: &mut Map<String, Value>,
    raw: &str,
) -> Result<(&'static str, &'static str), String> {
    let pri: u8 = match raw.parse() {
        Ok(p) if p <= 191 => p,
        _ => return Err(format!("invalid syslog priority `{}`", truncate(raw, 16))),
    };
    let (facility, severity) = (pri / 8, pri % 8);
    let (keyword, severity_name, normalised) = SYSLOG_SEVERITIES[usize::from(severity)];
    fields.insert("log.syslog.priority".into(), pri.into());
    fields.insert("log.syslog.facility.code".into(), facility.into());
    fields.insert(
        "log.syslog.facility.name".into(),
        FACILITIES[usize::from(facility)].into(),
    );
    fields.insert("log.syslog.severity.code".into(), severity.into());
    fields.insert("log.syslog.severity.name".into(), severity_name.into());
    Ok((keyword, normalised))
}

/// One logfmt pair, borrowed from the line; `value` is `None` for a bare key.
pub(crate) struct Pair<'a> {
    pub key: &'a str,
    pub value: Option<std::borrow::Cow<'a, str>>,
}

/// The `key=value key="quoted \" value" flag` pairs of a logfmt string, in order. Reading stops
/// at the first text that is not a pair or a bare key (an item starting with `=` or `"`, a key
/// running into a `"`, a quote left open); [`Logfmt::unparsed`] then says where that text begins.
pub(crate) struct Logfmt<'a> {
    s: &'a str,
    at: usize,
    unparsed: Option<usize>,
}

impl<'a> Logfmt<'a> {
    pub(crate) fn new(s: &'a str) -> Logfmt<'a> {
        Logfmt {
            s,
            at: 0,
            unparsed: None,
        }
    }

    /// Once the pairs are read: the byte where the text that is not logfmt begins, if any.
    pub(crate) fn unparsed(&self) -> Option<usize> {
        self.unparsed
    }

    fn stop(&mut self, at: usize) -> Option<Pair<'a>> {
        self.unparsed = Some(at);
        self.at = self.s.len();
        None
    }
}

impl<'a> Iterator for Logfmt<'a> {
    type Item = Pair<'a>;

    fn next(&mut self) -> Option<Pair<'a>> {
        let (s, bytes) = (self.s, self.s.as_bytes());
        let mut i = self.at;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            self.at = i;
            return None;
        }
        let key_start = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && bytes[i] != b'='
            && bytes[i] != b'"'
        {
            i += 1;
        }
        let key = &s[key_start..i];
        if key.is_empty() || bytes.get(i) == Some(&b'"') {
            return self.stop(key_start);
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            self.at = i;
            return Some(Pair { key, value: None });
        }
        i += 1;
        if bytes.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut escaped = false;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    escaped = true;
                    i += 1;
                }
                i += 1;
            }
            if i >= bytes.len() {
                return self.stop(key_start);
            }
            let raw = &s[start..i];
            self.at = i + 1;
            let value = if escaped {
                std::borrow::Cow::Owned(unescape(raw))
            } else {
                std::borrow::Cow::Borrowed(raw)
            };
            return Some(Pair {
                key,
                value: Some(value),
            });
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        self.at = i;
        Some(Pair {
            key,
            value: Some(std::borrow::Cow::Borrowed(&s[start..i])),
        })
    }
}

/// A logfmt key the engine gives a meaning at the top level.
pub(crate) enum KnownKey {
    Message,
    Level,
    Time,
    Error,
    Caller,
    Other,
}

pub(crate) fn known_key(key: &str) -> KnownKey {
    match key {
        "msg" | "message" => KnownKey::Message,
        "level" | "lvl" | "severity" | "log.level" => KnownKey::Level,
        "time" | "ts" | "timestamp" | "@timestamp" | "t" => KnownKey::Time,
        "err" | "error" => KnownKey::Error,
        "caller" | "source" => KnownKey::Caller,
        _ => KnownKey::Other,
    }
}

impl CaptureSpec {
    /// A captured level: the name `log.level` keeps, and its normalised level (the rule's
    /// `normalised` table first, then the common names).
    pub(crate) fn level(&self, raw: &str) -> (String, Option<&'static str>) {
        let name = source_level(self.mapped(raw));
        let normalised = self
            .normalised
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, l)| *l)
            .or_else(|| normalise_level(&name));
        (name, normalised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_nest_except_under_record_objects() {
        let mut m = Map::new();
        insert(
            &mut m,
            &FieldPath::new("http.request.method").unwrap(),
            "GET".into(),
        );
        insert(
            &mut m,
            &FieldPath::new("http.version").unwrap(),
            "1.1".into(),
        );
        insert(&mut m, &FieldPath::new("log.logger").unwrap(), "a.B".into());
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"http":{"request":{"method":"GET"},"version":"1.1"},"log.logger":"a.B"})
        );
    }

    #[test]
    fn record_owned_paths_are_refused() {
        for bad in [
            "event.id",
            "log.offset",
            "log.file.path",
            "stream",
            "container.id",
            "parse.error",
            "",
            "a..b",
            "host.name",
        ] {
            assert!(FieldPath::new(bad).is_err(), "{bad}");
        }
        for good in [
            "log.logger",
            "host.hostname",
            "event.dataset",
            "log.origin.file.line",
        ] {
            assert!(FieldPath::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn unescapes_nginx_and_apache_quotes() {
        assert_eq!(unescape(r#"Mozilla \x22quoted\x22"#), r#"Mozilla "quoted""#);
        assert_eq!(unescape(r#"say \"hi\" \\ \q"#), r#"say "hi" \ \q"#);
        assert_eq!(unescape(r"\xc3\xa9t\xc3\xa9"), "été");
        assert_eq!(unescape(r"end\"), r"end\");
        assert_eq!(unescape(r"\x4"), r"\x4");
    }

    fn pairs(text: &str) -> (Vec<(String, Option<String>)>, Option<usize>) {
        let mut logfmt = Logfmt::new(text);
        let pairs = logfmt
            .by_ref()
            .map(|p| (p.key.to_owned(), p.value.map(|v| v.into_owned())))
            .collect();
        (pairs, logfmt.unparsed())
    }

    #[test]
    fn logfmt_pairs_with_quotes_and_flags() {
        let (pairs, unparsed) =
            pairs(r#"a=1 b="two words" c= flag d="esc \"q\"" env#prod=1 @timestamp=x"#);
        assert_eq!(
            pairs,
            [
                ("a".into(), Some("1".into())),
                ("b".into(), Some("two words".into())),
                ("c".into(), Some("".into())),
                ("flag".into(), None),
                ("d".into(), Some(r#"esc "q""#.into())),
                ("env#prod".into(), Some("1".into())),
                ("@timestamp".into(), Some("x".into())),
            ]
        );
        assert_eq!(unparsed, None);
    }

    #[test]
    fn logfmt_stops_where_the_text_is_not_pairs() {
        for (text, read, at) in [
            (r#"a=1 e="unterminated"#, 1, 4),
            (r#"a=1 "quoted" b=2"#, 1, 4),
            ("a=1 =2 b=3", 1, 4),
            (r#"a=1 key"x" b=2"#, 1, 4),
            ("  ", 0, usize::MAX),
        ] {
            let (pairs, unparsed) = pairs(text);
            assert_eq!(pairs.len(), read, "{text}");
            assert_eq!(unparsed.unwrap_or(usize::MAX), at, "{text}");
        }
    }
}
