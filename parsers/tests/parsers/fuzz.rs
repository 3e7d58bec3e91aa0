//! Random input against every rule, the JSON detector and the joiner: nothing panics, the
//! joiner's memory stays within its limits, and no line is lost or duplicated.

use std::time::{Duration, Instant};

use ferry_parsers::{Line, MultilineConfig, RuleSet, Scratch};

use crate::util::{corpus_dir, record};

/// Lines to start from: every corpus line, plus fragments that stress the patterns.
fn seeds() -> Vec<String> {
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "txt") {
            seeds.extend(
                std::fs::read_to_string(path)
                    .unwrap()
                    .lines()
                    .map(str::to_owned),
            );
        }
    }
    seeds
}

fn mutate(rng: &mut fastrand::Rng, seed: &str) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for _ in 0..rng.usize(0..6) {
        match rng.u8(0..5) {
            0 if !bytes.is_empty() => {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
            1 if !bytes.is_empty() => {
                let i = rng.usize(..bytes.len());
                bytes.truncate(i);
            }
            2 => {
                let i = rng.usize(..=bytes.len());
                let junk = [
                    b"\"", b"\\", b"[", b"]", b" ", b"=", b"\n", b":", b"-", b"\x7f",
                ][rng.usize(..10)];
                bytes.splice(i..i, junk.iter().copied());
            }
            3 if bytes.len() > 2 => {
                let i = rng.usize(..bytes.len() - 1);
                let j = rng.usize(i..bytes.len());
                bytes.drain(i..j);
            }
            _ => {
                let n = rng.usize(0..40);
                bytes.extend((0..n).map(|_| rng.u8(..)));
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn random_input_never_panics_any_rule_or_the_json_detector() {
    let set = RuleSet::builtin();
    let mut selections: Vec<_> = set
        .rule_names()
        .map(|n| set.select(Some(n), None))
        .collect();
    selections.push(set.select(None, None));
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut scratch = Scratch::new();
    for round in 0..3000 {
        let line = if round % 4 == 0 {
            let n = rng.usize(0..300);
            String::from_utf8_lossy(&(0..n).map(|_| rng.u8(..)).collect::<Vec<_>>()).into_owned()
        } else {
            let seed = &seeds[rng.usize(..seeds.len())];
            mutate(&mut rng, seed)
        };
        for selection in &selections {
            let mut r = record(&line);
            selection.apply(&mut r, &mut scratch);
            // Whatever happened, the record still serialises.
            serde_json::to_string(&r).unwrap();
        }
        let mut r = record(&line);
        ferry_parsers::parse_json_message(&mut r);
    }
}

#[test]
fn the_joiner_stays_within_its_limits_and_loses_nothing() {
    let mut rng = fastrand::Rng::with_seed(3);
    let starts = [None, Some("^[A-Z]"), Some("^Traceback")];
    let continuations = [None, Some(r"^\s"), Some("^(?:at|  |$)")];
    for case in 0..200 {
        let config = MultilineConfig {
            start: starts[case % 3].map(str::to_owned),
            continuation: continuations[(case / 3) % 3]
                .map(str::to_owned)
                .or(Some(r"^\s".into())),
            negate: rng.bool(),
            end: rng.bool().then(|| "^[a-z]+Error".to_owned()),
            max_lines: rng.usize(1..20),
            max_bytes: rng.usize(1..400),
            flush_timeout_ms: 5,
        };
        let mut j = config.compile().unwrap().joiner();
        let t0 = Instant::now();
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for i in 0..300u64 {
            let n = rng.usize(0..60);
            let text: String = (0..n)
                .map(|_| [' ', '\t', 'a', 'T', 'E', 'r', 'x', 'r', 'o', '\u{e9}'][rng.usize(..10)])
                .collect();
            sent.push(text.clone());
            let at = t0 + Duration::from_millis(i);
            for joined in j.push(Line {
                text,
                offset: i,
                at,
            }) {
                got.push(joined);
            }
            assert!(j.pending_lines() <= config.max_lines, "case {case}");
            assert!(j.pending_bytes() <= config.max_bytes, "case {case}");
            if rng.u8(..10) == 0 {
                got.extend(j.flush_expired(at + Duration::from_millis(rng.u64(0..10))));
            }
        }
        got.extend(j.flush());
        // Every line exactly once, in order, and offsets consistent.
        let mut lines = Vec::new();
        let mut last = None;
        for joined in &got {
            assert!(joined.lines <= config.max_lines.max(1));
            assert!(joined.text.len() <= config.max_bytes || joined.lines == 1);
            assert!(joined.first_offset <= joined.last_offset);
            assert!(last.is_none_or(|l| l < joined.first_offset));
            last = Some(joined.last_offset);
            lines.extend(joined.text.split('\n').map(str::to_owned));
        }
        assert_eq!(lines, sent, "case {case}");
    }
}
