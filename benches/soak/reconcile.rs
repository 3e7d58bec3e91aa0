//! The end-of-run accounting: every line each container wrote against what the Elasticsearch
//! double created (every create it answered, before any de-duplication) and what the
//! aggregator dead-lettered, line by line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use ferry_es_double::DocRecord;
use serde_json::Value;

use crate::fleet::is_bad;

/// One dead letter as the aggregator wrote it.
pub struct Letter {
    pub id: String,
    pub status: u64,
    pub kind: String,
    pub reason: String,
    pub message: String,
}

/// Every whole line of the dead-letter files under `dir`.
pub fn dead_letters(dir: &Path) -> Vec<Letter> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            out.push(Letter {
                id: s(&v["_id"]),
                status: v["status"].as_u64().unwrap_or(0),
                kind: s(&v["error"]["type"]),
                reason: s(&v["error"]["reason"]),
                message: s(&v["record"]["message"]),
            });
        }
    }
    out
}

/// `soak <name> <seq>` → (name, seq).
fn parse_message(m: &str) -> Option<(&str, u64)> {
    let mut f = m.split(' ');
    (f.next()? == "soak").then_some(())?;
    let name = f.next()?;
    let seq = f.next()?.parse().ok()?;
    f.next().is_none().then_some((name, seq))
}

#[derive(Default)]
pub struct Outcome {
    pub written: u64,
    pub injected: u64,
    pub docs: u64,
    /// Lines indexed at least once.
    pub indexed_lines: u64,
    pub lost: u64,
    pub lost_examples: Vec<String>,
    /// Extra copies: a line in several documents, documents created more than once, a line
    /// both indexed and dead-lettered.
    pub duplicated: u64,
    pub duplicate_examples: Vec<String>,
    /// Dead-letter lines, and the distinct lines they name.
    pub dead_letter_lines: u64,
    pub dead_lettered: u64,
    /// Dead letters written more than once for one line (a replay after a crash).
    pub dead_letter_repeats: u64,
    /// Dead letters of lines that were not written to fail.
    pub unexpected_dead: Vec<String>,
    /// Injected lines that were indexed instead of refused.
    pub injected_indexed: u64,
    /// (status, error type) → count, with one reason each.
    pub reasons: BTreeMap<(u64, String), (u64, String)>,
    /// Documents that are no line of this run.
    pub foreign: u64,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.dead_lettered == self.injected
            && self.unexpected_dead.is_empty()
            && self.foreign == 0
    }
}

pub fn reconcile(
    written: &[(String, u64)],
    bad_every: u64,
    docs: &[DocRecord],
    letters: &[Letter],
) -> Outcome {
    let mut o = Outcome::default();
    // How many documents hold each line.
    let mut seen: HashMap<&str, Vec<u16>> = written
        .iter()
        .map(|(n, c)| (n.as_str(), vec![0u16; *c as usize]))
        .collect();
    for (_, c) in written {
        o.written += c;
        o.injected += (0..*c).filter(|&s| is_bad(s, bad_every)).count() as u64;
    }
    o.docs = docs.len() as u64;
    for doc in docs {
        if doc.creates > 1 {
            o.duplicated += u64::from(doc.creates - 1);
            if o.duplicate_examples.len() < 10 {
                o.duplicate_examples
                    .push(format!("_id {} created {} times", doc.id, doc.creates));
            }
        }
        let source: Value = doc
            .source
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        let message = source["message"].as_str().unwrap_or_default();
        let mut counted = false;
        if let Some((name, seq)) = parse_message(message) {
            if let Some(n) = seen
                .get_mut(name)
                .and_then(|counts| counts.get_mut(seq as usize))
            {
                *n = n.saturating_add(1);
                counted = true;
            }
        }
        if !counted {
            o.foreign += 1;
            if o.duplicate_examples.len() < 10 {
                o.duplicate_examples
                    .push(format!("foreign document {}: {message:?}", doc.id));
            }
        }
    }
    o.dead_letter_lines = letters.len() as u64;
    let mut dead: HashSet<(String, u64)> = HashSet::new();
    for l in letters {
        let entry = o
            .reasons
            .entry((l.status, l.kind.clone()))
            .or_insert((0, l.reason.clone()));
        entry.0 += 1;
        let Some((name, seq)) = parse_message(&l.message) else {
            o.unexpected_dead
                .push(format!("{}: {:?} ({})", l.id, l.message, l.reason));
            continue;
        };
        if !dead.insert((name.to_string(), seq)) {
            o.dead_letter_repeats += 1;
            continue;
        }
        // Elasticsearch 8 and later call a mapping conflict `document_parsing_exception`,
        // earlier versions `mapper_parsing_exception`.
        let expected = is_bad(seq, bad_every)
            && l.status == 400
            && matches!(
                l.kind.as_str(),
                "document_parsing_exception" | "mapper_parsing_exception"
            )
            && !l.reason.is_empty();
        if !expected {
            o.unexpected_dead.push(format!(
                "{name} {seq}: {} {} ({})",
                l.status, l.kind, l.reason
            ));
        }
    }
    o.dead_lettered = dead.len() as u64;
    for (name, counts) in &seen {
        for (seq, &n) in counts.iter().enumerate() {
            let seq = seq as u64;
            let was_dead = dead.contains(&(name.to_string(), seq));
            if n > 0 {
                o.indexed_lines += 1;
                if is_bad(seq, bad_every) {
                    o.injected_indexed += 1;
                }
            }
            if n > 1 {
                o.duplicated += u64::from(n - 1);
                if o.duplicate_examples.len() < 10 {
                    o.duplicate_examples
                        .push(format!("{name} {seq}: {n} documents"));
                }
            }
            if n > 0 && was_dead {
                o.duplicated += 1;
                if o.duplicate_examples.len() < 10 {
                    o.duplicate_examples
                        .push(format!("{name} {seq}: indexed and dead-lettered"));
                }
            }
            if n == 0 && !was_dead {
                o.lost += 1;
                if o.lost_examples.len() < 10 {
                    o.lost_examples.push(format!("{name} {seq}"));
                }
            }
        }
    }
    o
}
