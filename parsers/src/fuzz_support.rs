//! Harness functions for the fuzz targets (`fuzz/`) and for the corpus replay test: each takes
//! arbitrary bytes, drives the rule engine or the greedy walk, and panics when an invariant
//! breaks. Not an interface: nothing outside the fuzzing and its replay calls these.

use std::sync::OnceLock;

use ferry_wire::{write_log_record, Escapes, LogRecord};
use serde_json::Value;

use crate::greedy::{self, Greedy};
use crate::{RuleSet, Scratch, Selection};

fn builtin() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(RuleSet::builtin)
}

fn record(message: &str) -> LogRecord {
    LogRecord {
        timestamp: "2026-11-29T12:00:00.000Z".into(),
        message: message.into(),
        ..Default::default()
    }
}

/// The input (lossy UTF-8) as one message, through every built-in rule chosen by name and
/// through auto-detection, both the way the agent writes a record (typed fields straight into
/// its JSON) and the way `ferry parse` does (fields materialised into the record).
///
/// Invariants: nothing panics; every group a rule's match reports lies inside the message, on
/// character boundaries; the record the agent writes is valid JSON, and it is the record
/// `ferry parse` builds (same message, same fields).
pub fn rules(data: &[u8]) {
    let message = String::from_utf8_lossy(data);
    let set = builtin();
    for rule in set.rules() {
        let mut locs = rule.locations();
        if rule.captures_read(&message, &mut locs) {
            for group in 0..rule.regex.captures_len() {
                if let Some((start, end)) = locs.get(group) {
                    assert!(
                        start <= end && end <= message.len(),
                        "rule {}: group {group} at {start}..{end} of {} bytes",
                        rule.name,
                        message.len()
                    );
                    assert!(
                        message.is_char_boundary(start) && message.is_char_boundary(end),
                        "rule {}: group {group} at {start}..{end} splits a character",
                        rule.name
                    );
                }
            }
        }
    }
    let names: Vec<&str> = set.rule_names().collect();
    for name in names.iter().map(|n| Some(*n)).chain([None]) {
        let selection = set.select(name, None);
        check_selection(&selection, &message, name.unwrap_or("<auto>"));
    }
}

fn check_selection(selection: &Selection, message: &str, name: &str) {
    let mut typed = record(message);
    let mut scratch = Scratch::new();
    selection.apply_typed(&mut typed, &mut scratch);
    let mut json = Vec::new();
    write_log_record(
        &mut json,
        &typed,
        &mut Escapes::default(),
        |out, escapes| selection.write_fields(&mut scratch, &typed, escapes, out),
    );
    let written: Value = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "rule {name}: the agent's record is not JSON ({e}): {}",
            String::from_utf8_lossy(&json)
        )
    });
    let mut materialised = record(message);
    selection.apply(&mut materialised, &mut Scratch::new());
    let expected = serde_json::to_value(&materialised).expect("a record serialises");
    assert_eq!(
        written, expected,
        "rule {name}: the agent's record differs from ferry parse's"
    );
}

/// Differential check of the greedy walk against the regex crate, two ways:
/// - the input as text (lossy UTF-8) against every built-in rule that has a walk;
/// - the input's first line as a pattern (when the regex crate takes it and the walk can follow
///   it) and the rest as text.
///
/// Invariant: whenever the walk answers, the regex matches and every group's span is the
/// regex's (the walk's promise, `greedy.rs`).
pub fn greedy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut slots = Vec::new();
    for rule in builtin().rules() {
        if let Some(walk) = &rule.greedy {
            agrees(&rule.regex, walk, &text, &mut slots);
        }
    }
    let (pattern, text) = match memchr::memchr(b'\n', data) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => return,
    };
    let (Ok(pattern), text) = (std::str::from_utf8(pattern), String::from_utf8_lossy(text)) else {
        return;
    };
    // Bounded, so one input cannot take the fuzzer's whole time budget to compile.
    if pattern.len() > 256 {
        return;
    }
    let Ok(regex) = regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .nest_limit(32)
        .build()
    else {
        return;
    };
    if let Some(walk) = Greedy::new(pattern, regex.captures_len()) {
        for line in text.split('\n') {
            agrees(&regex, &walk, line, &mut slots);
        }
        agrees(&regex, &walk, &text, &mut slots);
    }
}

fn agrees(regex: &regex::Regex, walk: &Greedy, text: &str, slots: &mut Vec<usize>) {
    if !walk.find(text.as_bytes(), slots) {
        return;
    }
    let caps = regex
        .captures(text)
        .unwrap_or_else(|| panic!("the walk matched {text:?}, `{regex}` does not"));
    for g in 0..regex.captures_len() {
        assert_eq!(
            greedy::group(slots, g),
            caps.get(g).map(|m| (m.start(), m.end())),
            "group {g} of `{regex}` on {text:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use ferry_wire::fuzz_support::replay_corpus as replay;

    #[test]
    fn corpus_rules_replays() {
        replay("rules", super::rules);
    }

    #[test]
    fn corpus_greedy_replays() {
        replay("greedy", super::greedy);
    }
}
