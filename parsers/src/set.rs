//! The loaded rules, and the choice of rules for one container.
//!
//! A [`RuleSet`] is immutable once loaded, `Send + Sync` and cheap to clone (one `Arc`), so the
//! agent swaps a whole new set on SIGHUP. [`RuleSet::select`] decides once per container which
//! rules apply (explicit name from the `ferry.parser` label, else the rules whose image globs
//! match, else auto-detection); [`Selection::apply`] runs that decision on each record. The hot
//! path reuses the capture locations kept in a [`Scratch`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_wire::LogRecord;
use regex::RegexSet;

use crate::json::parse_json_message;
use crate::multiline::MultilineJoiner;
use crate::rule::{load_file, set_parse_error, Locations, Rule, RuleError, RuleErrorKind};
use crate::typed::Slots;

/// The built-in library, embedded so the binary needs no files.
const BUILTIN: &[(&str, &str)] = &[
    ("nginx.toml", include_str!("../rules/nginx.toml")),
    ("apache.toml", include_str!("../rules/apache.toml")),
    ("syslog.toml", include_str!("../rules/syslog.toml")),
    ("logfmt.toml", include_str!("../rules/logfmt.toml")),
    ("klog.toml", include_str!("../rules/klog.toml")),
    ("postgresql.toml", include_str!("../rules/postgresql.toml")),
    ("redis.toml", include_str!("../rules/redis.toml")),
    ("go.toml", include_str!("../rules/go.toml")),
    ("java.toml", include_str!("../rules/java.toml")),
    ("python.toml", include_str!("../rules/python.toml")),
];

static GENERATION: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Inner {
    /// User rules first (load order), then the built-in ones not overridden.
    rules: Vec<Rule>,
    by_name: HashMap<String, usize>,
    /// Indices of `auto` rules, in order, and their patterns as one set.
    auto: Vec<usize>,
    auto_set: Option<RegexSet>,
    /// Tells a [`Scratch`] built for an older set to start over.
    generation: u64,
}

/// All loaded rules. Clone it freely; swap it whole to reload.
#[derive(Debug, Clone)]
pub struct RuleSet {
    inner: Arc<Inner>,
}

impl RuleSet {
    /// Loads every `*.toml` file of the given directories (files may be given directly too),
    /// in name order, plus the built-in library when `include_builtin`. A user rule with the
    /// name of a built-in one replaces it; two user rules with one name are an error. Returns
    /// every problem found, not just the first.
    pub fn load(paths: &[PathBuf], include_builtin: bool) -> Result<RuleSet, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut rules: Vec<Rule> = Vec::new();
        for file in rule_files(paths, &mut errors) {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let (r, e) = load_file(&file, &text);
                    rules.extend(r);
                    errors.extend(e);
                }
                Err(e) => errors.push(RuleError {
                    file,
                    rule: None,
                    kind: RuleErrorKind::Io(e),
                }),
            }
        }
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut kept = Vec::new();
        for rule in rules {
            if let Some(&first) = by_name.get(&rule.name) {
                let first_file: &Rule = &kept[first];
                errors.push(RuleError {
                    file: rule.file.clone(),
                    rule: Some(rule.name.clone()),
                    kind: RuleErrorKind::Duplicate(first_file.file.clone()),
                });
                continue;
            }
            by_name.insert(rule.name.clone(), kept.len());
            kept.push(rule);
        }
        if include_builtin {
            for rule in builtin_rules(&mut errors) {
                if !by_name.contains_key(&rule.name) {
                    by_name.insert(rule.name.clone(), kept.len());
                    kept.push(rule);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let auto: Vec<usize> = (0..kept.len()).filter(|&i| kept[i].auto).collect();
        let auto_set = if auto.is_empty() {
            None
        } else {
            // Each pattern compiled alone, so the set compiles too (its size limit aside).
            match RegexSet::new(auto.iter().map(|&i| kept[i].regex.as_str())) {
                Ok(s) => Some(s),
                Err(e) => {
                    return Err(vec![RuleError {
                        file: PathBuf::from("<auto rules>"),
                        rule: None,
                        kind: RuleErrorKind::Regex(e),
                    }])
                }
            }
        };
        Ok(RuleSet {
            inner: Arc::new(Inner {
                rules: kept,
                by_name,
                auto,
                auto_set,
                generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            }),
        })
    }

    /// The built-in library alone.
    pub fn builtin() -> RuleSet {
        match RuleSet::load(&[], true) {
            Ok(set) => set,
            // The library is tested (`builtin_rules_load`); a broken one is a build defect.
            Err(errors) => panic!("built-in rules do not load: {errors:?}"),
        }
    }

    /// The rules in order (user rules first); for tests and `fuzz_support`.
    pub(crate) fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }

    /// Rule names in order (user rules first).
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.inner.rules.iter().map(|r| r.name.as_str())
    }

    /// Chooses the rules for one container; cheap, and worth caching per container.
    ///
    /// `explicit` is the `ferry.parser` label: one rule name, or several separated by commas
    /// (`nginx_access,nginx_error` for a container that writes both). An unknown name is kept
    /// and reported in `parse.error` on every record (the record is still auto-detected).
    /// `image` is the container image reference.
    pub fn select(&self, explicit: Option<&str>, image: Option<&str>) -> Selection {
        let inner = &self.inner;
        let mut selection = Selection {
            inner: Arc::clone(inner),
            candidates: Vec::new(),
            unknown: None,
            chosen: Chosen::Auto,
            label: String::new(),
            raw: false,
        };
        if explicit.map(str::trim) == Some(RAW) && !inner.by_name.contains_key(RAW) {
            selection.raw = true;
            selection.chosen = Chosen::Explicit;
            selection.label = RAW.to_owned();
            return selection;
        }
        if let Some(names) = explicit.map(str::trim).filter(|n| !n.is_empty()) {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match inner.by_name.get(name) {
                    Some(&i) => selection.candidates.push(i),
                    None => selection.unknown = Some(name.to_owned()),
                }
            }
            if selection.unknown.is_none() {
                selection.chosen = Chosen::Explicit;
            } else {
                selection.candidates.clear();
            }
        } else if let Some(image) = image {
            selection.candidates = (0..inner.rules.len())
                .filter(|&i| inner.rules[i].matches_image(image))
                .collect();
            if !selection.candidates.is_empty() {
                selection.chosen = Chosen::Image;
            }
        }
        let names: Vec<&str> = selection
            .candidates
            .iter()
            .map(|&i| inner.rules[i].name.as_str())
            .collect();
        selection.label = names.join(",");
        selection
    }
}

fn rule_files(paths: &[PathBuf], errors: &mut Vec<RuleError>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_file() {
            files.push(path.clone());
            continue;
        }
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                    .collect();
                found.sort();
                files.extend(found);
            }
            Err(e) => errors.push(RuleError {
                file: path.clone(),
                rule: None,
                kind: RuleErrorKind::Io(e),
            }),
        }
    }
    files
}

fn builtin_rules(errors: &mut Vec<RuleError>) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (name, text) in BUILTIN {
        let (r, e) = load_file(&Path::new("builtin:rules").join(name), text);
        rules.extend(r);
        errors.extend(e);
    }
    rules
}

/// How a selection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// Named by the `ferry.parser` label.
    Explicit,
    /// The image matched one or more rules' image globs.
    Image,
    /// Nothing chosen: JSON auto-detect, then the `auto` rules, then raw.
    Auto,
}

/// What happened to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A rule matched (an explicit, image or auto one).
    Rule,
    /// The message was a JSON object.
    Json,
    /// Nothing applied and nothing was expected to: the message is kept as it was.
    Raw,
    /// The chosen rule did not match (or the named rule does not exist): `parse.error` is set.
    Missed,
}

/// The rules chosen for one container. Clone it into each reader of the container.
#[derive(Debug, Clone)]
pub struct Selection {
    inner: Arc<Inner>,
    candidates: Vec<usize>,
    unknown: Option<String>,
    chosen: Chosen,
    label: String,
    /// The reserved name [`RAW`] was chosen: no parsing at all, not even auto-detection.
    raw: bool,
}

/// The reserved parser name that turns parsing off for a container (`ferry.parser=raw`): the
/// message is kept as read, with no JSON or auto detection, at no CPU cost.
pub const RAW: &str = "raw";

/// Per-thread buffers reused across records (capture locations of each rule), and the typed
/// values the last [`Selection::apply_typed`] left for [`Selection::write_fields`].
#[derive(Debug, Default)]
pub struct Scratch {
    generation: u64,
    locs: Vec<Option<Locations>>,
    slots: Slots,
    /// The rule whose values are in `slots`.
    typed: Option<usize>,
    /// Position in the auto rules of the one that read the last auto-detected line.
    last_auto: Option<usize>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Unsets `record.event.created` before the record is reused for the next line, keeping
    /// its buffer for that line's `@timestamp` (a rule that reads the time moves the read time
    /// to `event.created`): no allocation a line.
    pub fn unset_created(&mut self, record: &mut LogRecord) {
        if let Some(created) = record.event.created.take() {
            self.slots.spare = created;
        }
    }

    /// Applies rule `rule` of `inner`, keeping its slots when it matched.
    fn apply(&mut self, inner: &Inner, rule: usize, record: &mut LogRecord) -> bool {
        if self.generation != inner.generation {
            self.generation = inner.generation;
            self.locs.clear();
            self.slots.times = Default::default();
            self.last_auto = None;
        }
        if self.locs.len() < inner.rules.len() {
            self.locs.resize_with(inner.rules.len(), || None);
        }
        let r = &inner.rules[rule];
        let locs = self.locs[rule].get_or_insert_with(|| r.locations());
        let matched = r.apply(record, locs, &mut self.slots);
        if matched && !r.map_only && !r.captures.is_empty() {
            self.typed = Some(rule);
        }
        matched
    }
}

impl Selection {
    /// How the rules were chosen.
    pub fn chosen(&self) -> Chosen {
        self.chosen
    }

    /// The chosen rule names, comma-separated (empty for auto-detection).
    pub fn rules(&self) -> &str {
        &self.label
    }

    /// A `ferry.parser` name that is not a loaded rule, if any.
    pub fn unknown_rule(&self) -> Option<&str> {
        self.unknown.as_deref()
    }

    /// A fresh joiner when a chosen rule is multiline (the first such rule's settings); the
    /// caller keeps one per stream of the container.
    pub fn joiner(&self) -> Option<MultilineJoiner> {
        self.candidates
            .iter()
            .find_map(|&i| self.inner.rules[i].multiline.as_ref())
            .map(|m| m.joiner())
    }

    /// Parses one record in place (see the crate docs for the order). Never drops anything:
    /// on a miss the message is kept and `parse.error`/`parse.rule` say why.
    pub fn apply(&self, record: &mut LogRecord, scratch: &mut Scratch) -> Outcome {
        let outcome = self.apply_typed(record, scratch);
        if let Some(rule) = scratch.typed.take() {
            let captures = &self.inner.rules[rule].captures;
            scratch
                .slots
                .materialize(captures, &record.message, &mut record.fields);
        }
        outcome
    }

    /// [`Selection::apply`] for a caller that writes the record itself: a rule's typed fields
    /// stay in `scratch` instead of `record.fields`, and [`Selection::write_fields`] appends
    /// them to the record's JSON, with no map built in between (the agent's hot path).
    pub fn apply_typed(&self, record: &mut LogRecord, scratch: &mut Scratch) -> Outcome {
        scratch.typed = None;
        if self.raw {
            return Outcome::Raw;
        }
        let inner = &*self.inner;
        for &i in &self.candidates {
            if scratch.apply(inner, i, record) {
                return Outcome::Rule;
            }
        }
        if let Some(name) = &self.unknown {
            // Still auto-detected, so nothing is lost while the label is being fixed.
            self.auto(record, scratch);
            set_parse_error(&mut record.fields, format!("unknown rule `{name}`"), name);
            return Outcome::Missed;
        }
        if self.candidates.is_empty() {
            return self.auto(record, scratch);
        }
        // A multiline rule sees single lines too (everything else its container writes):
        // those go through auto-detection without an error.
        let all_multiline = self
            .candidates
            .iter()
            .all(|&i| inner.rules[i].multiline.is_some());
        if all_multiline && memchr::memchr(b'\n', record.message.as_bytes()).is_none() {
            return self.auto(record, scratch);
        }
        let error = if self.candidates.len() == 1 {
            "message does not match the rule's pattern"
        } else {
            "message matches none of the rules"
        };
        set_parse_error(&mut record.fields, error.to_owned(), &self.label);
        Outcome::Missed
    }

    fn auto(&self, record: &mut LogRecord, scratch: &mut Scratch) -> Outcome {
        if parse_json_message(record) {
            return Outcome::Json;
        }
        let inner = &*self.inner;
        let Some(set) = &inner.auto_set else {
            return Outcome::Raw;
        };
        // A container's lines are mostly of one format: the auto rule that read the last line
        // is tried first, without the pass of the whole set. The result is the same as the
        // set's: it is taken only when no auto rule before it matches the line.
        if let Some(pos) = scratch
            .last_auto
            .filter(|_| scratch.generation == inner.generation)
        {
            let earlier_match = inner.auto[..pos]
                .iter()
                .any(|&j| inner.rules[j].regex.is_match(&record.message));
            if !earlier_match && scratch.apply(inner, inner.auto[pos], record) {
                return Outcome::Rule;
            }
        }
        let Some(first) = set.matches(&record.message).iter().next() else {
            return Outcome::Raw;
        };
        for (pos, &i) in inner.auto.iter().enumerate().skip(first) {
            if scratch.apply(inner, i, record) {
                scratch.last_auto = Some(pos);
                return Outcome::Rule;
            }
        }
        Outcome::Raw
    }

    /// Appends the typed fields the last [`Selection::apply_typed`] of `record` left in
    /// `scratch`, as `,"key":value` members (see [`ferry_wire::BatchBuilder::push_log_with`]).
    /// `escapes`: where the record's message needed JSON escaping (as
    /// [`ferry_wire::write_log_record`] passes them), so pieces without any are copied as they are.
    pub fn write_fields(
        &self,
        scratch: &mut Scratch,
        record: &LogRecord,
        escapes: &ferry_wire::Escapes,
        out: &mut Vec<u8>,
    ) {
        if let Some(rule) = scratch.typed {
            if scratch.generation == self.inner.generation {
                self.inner.rules[rule].tree.write(
                    &mut scratch.slots,
                    &record.message,
                    escapes,
                    out,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(message: &str) -> LogRecord {
        LogRecord {
            timestamp: "2026-11-28T12:00:00Z".into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn builtin_rules_load() {
        let set = RuleSet::builtin();
        assert!(set.rule_names().count() >= 13);
    }

    #[test]
    fn selection_order_explicit_then_image_then_auto() {
        let set = RuleSet::builtin();
        let s = set.select(Some("redis"), Some("nginx:1.27"));
        assert_eq!((s.chosen(), s.rules()), (Chosen::Explicit, "redis"));
        let s = set.select(None, Some("docker.io/library/nginx:1.27-alpine"));
        assert_eq!(
            (s.chosen(), s.rules()),
            (Chosen::Image, "nginx_access,nginx_error")
        );
        let s = set.select(None, Some("registry.local:5000/team/api:3"));
        assert_eq!(s.chosen(), Chosen::Auto);
        let s = set.select(Some("nope"), None);
        assert_eq!(s.unknown_rule(), Some("nope"));
    }

    #[test]
    fn raw_turns_parsing_off_even_for_json_and_auto_lines() {
        let set = RuleSet::builtin();
        let s = set.select(Some("raw"), Some("nginx:1.27"));
        assert_eq!((s.chosen(), s.rules()), (Chosen::Explicit, "raw"));
        let mut scratch = Scratch::new();
        for line in [
            r#"{"level":"warn","msg":"json stays a string"}"#,
            r#"10.0.0.1 - - [28/Nov/2026:08:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8""#,
        ] {
            let mut record = LogRecord {
                message: line.into(),
                ..Default::default()
            };
            assert_eq!(s.apply(&mut record, &mut scratch), Outcome::Raw);
            assert_eq!(record.message, line);
            assert!(record.fields.is_empty() && record.log.level.is_none());
        }
    }

    #[test]
    fn miss_keeps_the_message_and_names_the_rule() {
        let set = RuleSet::builtin();
        let s = set.select(Some("nginx_access"), None);
        let mut r = record("not an access line");
        assert_eq!(s.apply(&mut r, &mut Scratch::new()), Outcome::Missed);
        assert_eq!(r.message, "not an access line");
        assert_eq!(r.fields["parse"]["rule"], "nginx_access");
        assert!(r.fields["parse"]["error"]
            .as_str()
            .unwrap()
            .contains("does not match"));
    }

    #[test]
    fn hits_stay_lean_and_auto_detects() {
        let set = RuleSet::builtin();
        let s = set.select(None, None);
        let mut scratch = Scratch::new();
        let mut r = record(
            r#"::1 - - [28/Nov/2026:08:00:00 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8.5.0""#,
        );
        assert_eq!(s.apply(&mut r, &mut scratch), Outcome::Rule);
        assert!(!r.fields.contains_key("parse"));
        assert_eq!(r.fields["source"]["ip"], "::1");
        let mut r = record(r#"{"msg":"hi"}"#);
        assert_eq!(s.apply(&mut r, &mut scratch), Outcome::Json);
        let mut r = record("just words");
        assert_eq!(s.apply(&mut r, &mut scratch), Outcome::Raw);
    }

    #[test]
    fn scratch_survives_a_reload() {
        let a = RuleSet::builtin();
        let b = RuleSet::builtin();
        let mut scratch = Scratch::new();
        let line = r#"1:M 28 Nov 2026 08:00:00.123 * Ready to accept connections"#;
        for set in [&a, &b, &a] {
            let mut r = record(line);
            let outcome = set.select(Some("redis"), None).apply(&mut r, &mut scratch);
            assert_eq!(outcome, Outcome::Rule);
        }
    }
}
