//! The agent's parser rules: the [`RuleSet`] loaded from `rules_dirs` plus the built-in library,
//! shared by the tailer thread and the logs-API followers, and swapped whole on a reload
//! (SIGHUP). It also decides which rules a source gets: the container's `ferry.parser` label,
//! else the configured `parser`, else the image rules and auto-detection.
//!
//! Readers never lock on the hot path: they compare [`Rules::version`] (one atomic load) with the
//! version their [`Selection`]s were made from and only then take the read lock. A failed reload
//! keeps the previous rules. [`parse`] and [`parse_into`] apply a source's rules to a record. This
//! module reads rule files and nothing else.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;

use ferry_parsers::{RuleError, RuleErrorKind, RuleSet, Scratch, Selection};
use ferry_wire::{BatchBuilder, LogRecord};
use tracing::{error, info};

/// Container label that names the rules of a container's logs.
pub(crate) const PARSER_LABEL: &str = "ferry.parser";

/// Every problem found in the rule files (and an unknown `parser` name in the configuration).
#[derive(Debug, thiserror::Error)]
#[error("cannot load the parser rules: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct RulesError {
    pub errors: Vec<RuleError>,
}

/// What a source's rules are chosen from: its container's `ferry.parser` label and image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParserKey {
    pub label: Option<String>,
    pub image: Option<String>,
}

/// The current rule set, replaceable while the agent runs.
#[derive(Debug)]
pub(crate) struct Rules {
    dirs: Vec<PathBuf>,
    parser: Option<String>,
    current: RwLock<RuleSet>,
    version: AtomicU64,
}

impl Rules {
    /// Loads `dirs` and the built-in library; `parser` (the configured default rule names) must
    /// name loaded rules.
    pub fn load(dirs: Vec<PathBuf>, parser: Option<String>) -> Result<Rules, RulesError> {
        let set = load_checked(&dirs, parser.as_deref()).map_err(|errors| RulesError { errors })?;
        info!(rules = set.rule_names().count(), dirs = ?dirs, "Parser rules loaded");
        Ok(Rules {
            dirs,
            parser,
            current: RwLock::new(set),
            version: AtomicU64::new(1),
        })
    }

    /// Bumped by every successful reload.
    pub fn version(&self) -> u64 {
        self.version.load(Relaxed)
    }

    /// The current rule set (a cheap clone).
    pub fn current(&self) -> RuleSet {
        match self.current.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the rule files again. On success the new rules replace the old ones (readers pick
    /// them up at their next record or loop turn) and the number of rules is returned; on failure
    /// the previous rules stay and every problem is logged and returned.
    pub fn reload(&self) -> Result<usize, Vec<RuleError>> {
        match load_checked(&self.dirs, self.parser.as_deref()) {
            Ok(set) => {
                let count = set.rule_names().count();
                match self.current.write() {
                    Ok(mut current) => *current = set,
                    Err(poisoned) => *poisoned.into_inner() = set,
                }
                self.version.fetch_add(1, Relaxed);
                info!(rules = count, "Parser rules reloaded");
                Ok(count)
            }
            Err(errors) => {
                for e in &errors {
                    error!(file = %e.file.display(), rule = e.rule.as_deref().unwrap_or(""), error = %e.kind, "Invalid parser rule");
                }
                error!(
                    problems = errors.len(),
                    "Parser rules not reloaded; keeping the previous rules"
                );
                Err(errors)
            }
        }
    }

    /// The rules for one source: its `ferry.parser` label, else the configured `parser`, else
    /// the image rules and auto-detection.
    pub fn select(&self, set: &RuleSet, key: &ParserKey) -> Selection {
        let explicit = key.label.as_deref().or(self.parser.as_deref());
        set.select(explicit, key.image.as_deref())
    }
}

/// Parses the record's message into fields (`log.level`, `@timestamp`, ECS fields, `parse.error`)
/// with the rules chosen for its source ([`Rules::select`]).
///
/// Called once per record after decoding, path enrichment and multiline joining, just before the
/// record is put into a batch. It may set `log.level`, replace `@timestamp` (keeping the read time
/// in `event.created`) and add `fields`; it never touches `event.id`, `log.offset` or
/// `log.file.*`, which identify the record.
pub(crate) fn parse(record: &mut LogRecord, selection: &Selection, scratch: &mut Scratch) {
    selection.apply(record, scratch);
}

/// [`parse`], then into the batch: a rule's fields go straight from the line into the batch's
/// JSON, without a map in between (the tailer's hot path).
pub(crate) fn parse_into(
    builder: &mut BatchBuilder,
    record: &mut LogRecord,
    selection: &Selection,
    scratch: &mut Scratch,
) {
    selection.apply_typed(record, scratch);
    builder.push_log_with(record, |out, escapes| {
        selection.write_fields(scratch, record, escapes, out)
    });
}

fn load_checked(dirs: &[PathBuf], parser: Option<&str>) -> Result<RuleSet, Vec<RuleError>> {
    let set = RuleSet::load(dirs, true)?;
    let unknown: Vec<RuleError> = parser
        .into_iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != ferry_parsers::RAW && !set.rule_names().any(|r| r == *n))
        .map(|name| RuleError {
            file: PathBuf::from("<agent config `parser`>"),
            rule: Some(name.to_string()),
            kind: RuleErrorKind::Config("no loaded rule has this name".into()),
        })
        .collect();
    if unknown.is_empty() {
        Ok(set)
    } else {
        Err(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_wins_over_the_configured_parser() {
        let rules = Rules::load(Vec::new(), Some("logfmt".into())).unwrap();
        let set = rules.current();
        let plain = rules.select(&set, &ParserKey::default());
        assert_eq!(plain.rules(), "logfmt");
        let labelled = rules.select(
            &set,
            &ParserKey {
                label: Some("nginx_access".into()),
                image: None,
            },
        );
        assert_eq!(labelled.rules(), "nginx_access");
    }

    #[test]
    fn unknown_configured_parser_is_a_load_error() {
        let err = Rules::load(Vec::new(), Some("logfmt, nope".into())).unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
