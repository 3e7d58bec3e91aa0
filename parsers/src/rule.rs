//! One rule: its file format, its compilation (once, at load), and applying it to a record.
//!
//! A rule file is TOML with one `[[rule]]` table per rule (see the crate docs for the format).
//! Compiling checks everything that can be checked before the first line: the pattern, that
//! every mapped capture exists, field names, types and time formats, the image globs and the
//! multiline block. Each problem becomes a [`RuleError`] naming the file and the rule. Applying
//! a compiled rule allocates nothing but the output values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::{CaptureLocations, Regex};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::field::{
    has_backslash, insert, insert_segments, known_key, syslog_pri, truncate, CaptureConfig,
    CaptureSpec, Kind, KnownKey, Logfmt, Target,
};
use crate::greedy::{self, Greedy};
use crate::level::{normalise_level, source_level, LEVEL_NORMALIZED};
use crate::multiline::{Multiline, MultilineConfig};
use crate::time::{epoch_to_time, format_timestamp, replace_timestamp, ReadTime};
use crate::typed::{FieldTree, Slots, Typed};
use ferry_wire::LogRecord;

/// A rule file problem: which file, which rule (when the problem is inside one), and what.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {kind}", file.display(), rule.as_ref().map(|r| format!(": rule `{r}`")).unwrap_or_default())]
pub struct RuleError {
    /// The rule file (`builtin:rules/…` for the embedded library).
    pub file: PathBuf,
    /// The rule's name (`#N` for a rule without one), or `None` for a file-level problem.
    pub rule: Option<String>,
    pub kind: RuleErrorKind,
}

/// What is wrong.
#[derive(Debug, thiserror::Error)]
pub enum RuleErrorKind {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid TOML: {0}")]
    Toml(String),
    #[error("invalid rule: {0}")]
    Config(String),
    #[error("pattern does not compile: {0}")]
    Regex(#[source] regex::Error),
    #[error("capture `{capture}`: {reason}")]
    Capture { capture: String, reason: String },
    #[error("image: {0}")]
    Image(String),
    #[error("multiline: {0}")]
    Multiline(String),
    #[error("rule name already used in {0}")]
    Duplicate(PathBuf),
}

/// `[[rule]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// Unique name, used by the `ferry.parser` label and in `parse.rule`.
    name: String,
    /// What the rule reads, for people. Default: empty.
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    /// Regex (Rust `regex` syntax) with named captures; matched against the whole message
    /// (anchor it with `^…$`).
    pattern: String,
    /// Named capture → field. Default: no fields (the rule only recognises lines).
    #[serde(default)]
    captures: BTreeMap<String, CaptureConfig>,
    /// Globs (`*`, `?`) on the container image: without `/` matched against the repository's
    /// last path segment without tag or digest (`nginx` matches `docker.io/library/nginx:1.27`),
    /// with `/` against the whole image reference. Default: none.
    #[serde(default)]
    image: OneOrMany,
    /// Regex on the whole image reference, as an alternative to globs. Default: none.
    #[serde(default)]
    image_regex: Option<String>,
    /// Try this rule on containers with no explicit or image rule (after JSON). Default: false.
    #[serde(default)]
    auto: bool,
    /// Captured values that mean "absent" (nginx writes `-`). Default: `["-", ""]`.
    #[serde(default = "default_null_values")]
    null_values: Vec<String>,
    /// Join lines into one event before the pattern is applied. Default: none.
    #[serde(default)]
    multiline: Option<MultilineConfig>,
}

fn default_null_values() -> Vec<String> {
    vec!["-".into(), String::new()]
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::None => &[],
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub name: String,
    pub file: PathBuf,
    pub regex: Regex,
    /// The same pattern for the greedy walk, when it can follow it (see [`crate::greedy`]).
    pub(crate) greedy: Option<Greedy>,
    pub captures: Vec<CaptureSpec>,
    /// Globs without `/`, as one anchored regex on the short image name.
    image_short: Option<Regex>,
    /// Globs with `/` and `image_regex`, on the whole reference.
    image_full: Vec<Regex>,
    pub auto: bool,
    null_values: Vec<String>,
    /// The longest of `null_values`: longer captures skip the comparison.
    null_max_len: usize,
    pub multiline: Option<Multiline>,
    /// The captures' fields as JSON members (see [`crate::typed`]).
    pub tree: FieldTree,
    /// A `kv` or `syslog_pri` capture writes fields the tree does not know: such a rule fills
    /// `record.fields` directly instead of leaving its values in slots.
    pub map_only: bool,
}

impl Rule {
    /// Whether the rule's image globs or regex match `image`.
    pub fn matches_image(&self, image: &str) -> bool {
        self.image_short
            .as_ref()
            .is_some_and(|r| r.is_match(short_image_name(image)))
            || self.image_full.iter().any(|r| r.is_match(image))
    }
}

/// `registry:5000/team/nginx:1.27@sha256:…` → `nginx`.
fn short_image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last)
}

fn glob_to_regex(glob: &str) -> String {
    let mut re = String::from("^(?:");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push_str(")$");
    re
}

/// Parses one rule file and compiles its rules; every problem found is returned.
pub(crate) fn load_file(file: &Path, text: &str) -> (Vec<Rule>, Vec<RuleError>) {
    let err = |rule: Option<String>, kind| RuleError {
        file: file.to_owned(),
        rule,
        kind,
    };
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            return (
                Vec::new(),
                vec![err(None, RuleErrorKind::Toml(e.to_string()))],
            )
        }
    };
    let mut errors = Vec::new();
    for key in table.keys().filter(|k| *k != "rule") {
        errors.push(err(
            None,
            RuleErrorKind::Toml(format!(
                "unknown top-level key `{key}` (expected `[[rule]]`)"
            )),
        ));
    }
    let entries = match table.get("rule") {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a.clone(),
        Some(_) => {
            errors.push(err(
                None,
                RuleErrorKind::Toml("`rule` must be an array of tables ([[rule]])".into()),
            ));
            Vec::new()
        }
    };
    let mut rules = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let label = entry
            .get("name")
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("#{}", i + 1), str::to_owned);
        let config: RuleConfig = match entry.try_into() {
            Ok(c) => c,
            Err(e) => {
                errors.push(err(
                    Some(label),
                    RuleErrorKind::Config(e.message().to_owned()),
                ));
                continue;
            }
        };
        match compile(file, config) {
            Ok(rule) => rules.push(rule),
            Err(kinds) => errors.extend(kinds.into_iter().map(|k| err(Some(label.clone()), k))),
        }
    }
    (rules, errors)
}

fn compile(file: &Path, config: RuleConfig) -> Result<Rule, Vec<RuleErrorKind>> {
    let mut errors = Vec::new();
    if config.name.is_empty()
        || config
            .name
            .contains(|c: char| c.is_whitespace() || c == ',')
    {
        errors.push(RuleErrorKind::Config(format!(
            "name `{}` must be non-empty, without spaces or commas",
            config.name
        )));
    }
    let regex = match Regex::new(&config.pattern) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(RuleErrorKind::Regex(e));
            None
        }
    };
    let mut captures = Vec::new();
    if let Some(regex) = &regex {
        for (name, spec) in &config.captures {
            let group = regex.capture_names().position(|n| n == Some(name.as_str()));
            let compiled = match group {
                None => Err(format!(
                    "not a named group of the pattern (groups: {})",
                    group_names(regex)
                )),
                Some(g) => CaptureSpec::compile(g, spec),
            };
            match compiled {
                Ok(c) => captures.push((name.clone(), c)),
                Err(reason) => errors.push(RuleErrorKind::Capture {
                    capture: name.clone(),
                    reason,
                }),
            }
        }
    }
    for (i, (a, ca)) in captures.iter().enumerate() {
        for (b, cb) in &captures[i + 1..] {
            if let (Target::Field(pa), Target::Field(pb)) = (&ca.target, &cb.target) {
                if pa.overlaps(pb) {
                    errors.push(RuleErrorKind::Capture {
                        capture: b.clone(),
                        reason: format!("its field and the field of `{a}` contain one another"),
                    });
                }
            }
        }
    }
    let mut captures: Vec<CaptureSpec> = captures.into_iter().map(|(_, c)| c).collect();
    captures.sort_by_key(|c| c.group);

    let (short, full): (Vec<&String>, Vec<&String>) = config
        .image
        .as_slice()
        .iter()
        .partition(|g| !g.contains('/'));
    let mut image_full = Vec::new();
    let image_short = if short.is_empty() {
        None
    } else {
        let alternatives: Vec<String> = short.iter().map(|g| glob_to_regex(g)).collect();
        match Regex::new(&alternatives.join("|")) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(RuleErrorKind::Image(e.to_string()));
                None
            }
        }
    };
    for g in full {
        match Regex::new(&glob_to_regex(g)) {
            Ok(r) => image_full.push(r),
            Err(e) => errors.push(RuleErrorKind::Image(e.to_string())),
        }
    }
    if let Some(r) = &config.image_regex {
        match Regex::new(r) {
            Ok(r) => image_full.push(r),
            Err(e) => errors.push(RuleErrorKind::Image(format!(
                "`image_regex` does not compile: {e}"
            ))),
        }
    }
    let multiline = match &config.multiline {
        None => None,
        Some(m) => match m.compile() {
            Ok(m) => Some(m),
            Err(e) => {
                errors.push(RuleErrorKind::Multiline(e));
                None
            }
        },
    };
    if config.auto && config.multiline.is_some() {
        errors.push(RuleErrorKind::Config(
            "a multiline rule cannot be `auto` (choose it by label or image)".into(),
        ));
    }
    match regex {
        Some(regex) if errors.is_empty() => Ok(Rule {
            tree: FieldTree::new(&captures),
            map_only: captures
                .iter()
                .any(|c| matches!(c.kind, Kind::Kv(_) | Kind::SyslogPri)),
            name: config.name,
            file: file.to_owned(),
            greedy: Greedy::new(&config.pattern, regex.captures_len()),
            regex,
            captures,
            image_short,
            image_full,
            auto: config.auto,
            null_max_len: config
                .null_values
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(0),
            null_values: config.null_values,
            multiline,
        }),
        _ => Err(errors),
    }
}

fn group_names(regex: &Regex) -> String {
    let names: Vec<&str> = regex.capture_names().flatten().collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Where the new message comes from, decided while the old one is still borrowed.
enum NewMessage {
    Span(usize, usize),
    Owned(String),
}

/// Where a rule's groups matched in the last text it read, from the greedy walk or the regex.
#[derive(Debug)]
pub(crate) struct Locations {
    regex: CaptureLocations,
    greedy: Vec<usize>,
    from_greedy: bool,
}

impl Locations {
    /// The span of group `group`, if it took part in the match.
    #[inline]
    pub fn get(&self, group: usize) -> Option<(usize, usize)> {
        if self.from_greedy {
            greedy::group(&self.greedy, group)
        } else {
            self.regex.get(group)
        }
    }
}

impl Rule {
    /// Buffers for [`Rule::captures_read`].
    pub fn locations(&self) -> Locations {
        Locations {
            regex: self.regex.capture_locations(),
            greedy: Vec::new(),
            from_greedy: false,
        }
    }

    /// Matches the pattern against `text`, leaving the groups in `locs`: the greedy walk
    /// first, the regex where the walk gives up. Returns whether it matched.
    pub fn captures_read(&self, text: &str, locs: &mut Locations) -> bool {
        locs.from_greedy = self
            .greedy
            .as_ref()
            .is_some_and(|g| g.find(text.as_bytes(), &mut locs.greedy));
        locs.from_greedy || self.regex.captures_read(&mut locs.regex, text).is_some()
    }

    /// Applies the rule: on a match, fills the record and returns true; on a miss, leaves the
    /// record untouched and returns false. Field values go into `slots` (or, for a
    /// [`Rule::map_only`] rule, straight into `record.fields`). A matched line whose values do
    /// not convert (a bad time, an int that is not one) keeps the other fields and gets
    /// `parse.error`.
    pub fn apply(&self, record: &mut LogRecord, locs: &mut Locations, slots: &mut Slots) -> bool {
        if !self.captures_read(&record.message, locs) {
            return false;
        }
        slots.reset(self.captures.len());
        let LogRecord {
            message,
            fields,
            log,
            timestamp,
            event,
            ..
        } = record;
        let mut read_time = ReadTime::new(timestamp);
        let mut new_message = None;
        // The record's new `@timestamp` is in `slots.time`.
        let mut time = false;
        let mut error: Option<String> = None;
        for (i, spec) in self.captures.iter().enumerate() {
            let Some((s, e)) = locs.get(spec.group) else {
                continue;
            };
            let raw = &message[s..e];
            if raw.len() <= self.null_max_len && self.null_values.iter().any(|n| n == raw) {
                continue;
            }
            match (&spec.target, &spec.kind) {
                (_, Kind::Kv(prefix)) => {
                    let kv = merge_kv(raw, prefix.as_deref(), fields);
                    if let Some(m) = kv.message {
                        new_message = Some(NewMessage::Owned(m));
                    }
                    if kv.level.is_some() {
                        log.level = kv.level;
                        match kv.normalised {
                            Some(n) => fields.insert(LEVEL_NORMALIZED.into(), n.into()),
                            None => fields.remove(LEVEL_NORMALIZED),
                        };
                    }
                    if let Some(t) = kv.time {
                        slots.time = format_timestamp(t);
                        time = true;
                    }
                    if let Some(e) = kv.unparsed {
                        error.get_or_insert(e);
                    }
                }
                (_, Kind::SyslogPri) => match syslog_pri(fields, raw) {
                    Ok((keyword, normalised)) => {
                        if log.level.is_none() {
                            log.level = Some(keyword.to_owned());
                            fields.insert(LEVEL_NORMALIZED.into(), normalised.into());
                        }
                    }
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                },
                (Target::Message, _) => {
                    let text = spec.mapped(raw);
                    new_message = Some(if std::ptr::eq(text, raw) && !has_backslash(text) {
                        NewMessage::Span(s, e)
                    } else {
                        NewMessage::Owned(spec.text(text))
                    });
                }
                (Target::Level, _) => {
                    let (name, normalised) = spec.level(raw);
                    log.level = Some(name);
                    match normalised {
                        Some(n) if self.map_only => {
                            fields.insert(LEVEL_NORMALIZED.into(), n.into());
                        }
                        Some(n) => slots.set(i, Typed::Static(n)),
                        None if self.map_only => {
                            fields.remove(LEVEL_NORMALIZED);
                        }
                        None => {}
                    }
                }
                (Target::Timestamp, Kind::Timestamp(formats)) => {
                    let capture = std::ptr::from_ref(spec) as usize;
                    match slots.times.parse(capture, raw, formats, &mut read_time) {
                        Some(t) => {
                            slots.time.clear();
                            slots.time.push_str(t);
                            time = true;
                        }
                        None => {
                            error.get_or_insert_with(|| {
                                format!(
                                    "timestamp `{}` matches none of the rule's formats",
                                    truncate(raw, 64)
                                )
                            });
                        }
                    }
                }
                (Target::Timestamp, _) => {}
                (Target::Field(path), _) => match spec.typed(raw, s) {
                    Ok(v) if self.map_only => insert(fields, path, v.to_value(message)),
                    Ok(v) => slots.set(i, v),
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                },
            }
        }
        if time {
            replace_timestamp(timestamp, &mut event.created, &slots.time, &mut slots.spare);
        }
        if new_message.is_some() && !self.map_only {
            slots.keep_original(message);
        }
        match new_message {
            Some(NewMessage::Span(s, e)) => {
                message.truncate(e);
                message.drain(..s);
            }
            Some(NewMessage::Owned(m)) => *message = m,
            None => {}
        }
        if let Some(e) = error {
            set_parse_error(fields, e, &self.name);
        }
        true
    }
}

/// `parse.error` and `parse.rule`, ECS-style.
pub(crate) fn set_parse_error(fields: &mut Map<String, Value>, error: String, rule: &str) {
    insert_segments(fields, ["parse", "error"], Value::String(error));
    insert_segments(fields, ["parse", "rule"], Value::String(rule.to_owned()));
}

#[derive(Default)]
struct KvOut {
    message: Option<String>,
    level: Option<String>,
    normalised: Option<&'static str>,
    time: Option<chrono::DateTime<chrono::Utc>>,
    /// What `parse.error` says when part of the text is not logfmt.
    unparsed: Option<String>,
}

/// Where the text a logfmt capture could not read goes.
const KV_UNPARSED: [&str; 2] = ["logfmt", "unparsed"];

/// Top-level keys a logfmt line may not write directly: they go under `logfmt.*`.
const KV_RESERVED: &[&str] = &[
    "log",
    "host",
    "event",
    "container",
    "kubernetes",
    "stream",
    "parse",
    "message",
    "@timestamp",
    "logfmt",
];

fn merge_kv(raw: &str, prefix: Option<&[String]>, fields: &mut Map<String, Value>) -> KvOut {
    let mut out = KvOut::default();
    let mut pairs = Logfmt::new(raw);
    for pair in pairs.by_ref() {
        let value = match &pair.value {
            Some(v) => Value::String(v.to_string()),
            None => Value::Bool(true),
        };
        if let Some(prefix) = prefix {
            let path = prefix
                .iter()
                .map(String::as_str)
                .chain(key_segments(pair.key));
            insert_segments(fields, path, value);
            continue;
        }
        let text = pair.value.as_deref().unwrap_or("");
        match known_key(pair.key) {
            KnownKey::Message if out.message.is_none() => {
                out.message = Some(text.to_owned());
                continue;
            }
            KnownKey::Level if !text.is_empty() => {
                out.level = Some(source_level(text));
                out.normalised = normalise_level(text);
                continue;
            }
            KnownKey::Time => {
                // RFC 3339, or ISO 8601 with a `+0000` offset (Grafana's `t=`), or epoch.
                let t = chrono::DateTime::parse_from_rfc3339(text)
                    .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .ok()
                    .or_else(|| {
                        text.parse::<f64>()
                            .ok()
                            .and_then(|v| epoch_to_time(v, false))
                    });
                if t.is_some() {
                    out.time = t;
                    continue;
                }
            }
            KnownKey::Error => {
                insert_segments(fields, ["error", "message"], value);
                continue;
            }
            KnownKey::Caller => {
                match text.rsplit_once(':') {
                    Some((file, line)) if line.parse::<u64>().is_ok() => {
                        fields.insert("log.origin.file.name".into(), file.into());
                        if let Ok(n) = line.parse::<u64>() {
                            fields.insert("log.origin.file.line".into(), n.into());
                        }
                    }
                    _ => {
                        fields.insert("log.origin.file.name".into(), value);
                    }
                }
                continue;
            }
            _ => {}
        }
        let head = pair.key.split('.').next().unwrap_or(pair.key);
        if KV_RESERVED.contains(&head) {
            insert_segments(fields, ["logfmt", pair.key], value);
        } else {
            insert_segments(fields, key_segments(pair.key), value);
        }
    }
    if let Some(at) = pairs.unparsed() {
        let rest = raw[at..].trim_end();
        out.unparsed = Some(format!(
            "logfmt: text from byte {at} is not key=value pairs: `{}` (kept in {})",
            truncate(rest, 64),
            KV_UNPARSED.join(".")
        ));
        insert_segments(fields, KV_UNPARSED, Value::String(rest.to_owned()));
    }
    out
}

/// A logfmt key as path segments: split on `.` unless that would leave an empty segment.
fn key_segments(key: &str) -> impl Iterator<Item = &str> {
    let whole = key.split('.').any(str::is_empty);
    let (a, b) = if whole {
        (Some(key), None)
    } else {
        (None, Some(key.split('.')))
    };
    a.into_iter().chain(b.into_iter().flatten())
}
