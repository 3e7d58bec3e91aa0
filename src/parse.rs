//! `ferry parse`: runs a rule over sample lines and prints one JSON object per event, with the
//! fields nested as the store (and Elasticsearch) hold them: `{"log":{"level":"error"},
//! "http":{"request":{"method":"GET"}}}`, not `{"log.level":…}`, so what a rule author sees is
//! what `ferry search --json` and `jq` will show. The rule engine itself lives in
//! `ferry-parsers`; this module only reshapes and prints its output.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Map, Value};

pub fn run(rule: &str, rules: &[PathBuf], file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let set = ferry_parsers::RuleSet::load(rules, true).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the rules do not load:\n{}", lines.join("\n"))
    })?;
    let stdout = io::stdout();
    let out = Nested::new(io::BufWriter::new(stdout.lock()));
    let summary = match file {
        Some(path) => {
            let input = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            ferry_parsers::parse_lines(&set, rule, io::BufReader::new(input), out, None)?
        }
        None => ferry_parsers::parse_lines(&set, rule, io::stdin().lock(), out, None)?,
    };
    eprintln!(
        "{} lines, {} events, {} not matched by `{rule}`",
        summary.lines, summary.events, summary.missed
    );
    Ok(if summary.missed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `{"a.b":1,"a.c":2,"d":3}` → `{"a":{"b":1,"c":2},"d":3}`. A dotted key that would land on a
/// value already there (a leaf where an object is needed, or the reverse), or that is not a
/// path (`a..b`, `.a`), stays as it is, so nothing is ever overwritten.
pub fn nest(flat: Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let (plain, dotted): (Vec<_>, Vec<_>) = flat.into_iter().partition(|(k, _)| !k.contains('.'));
    out.extend(plain);
    for (key, value) in dotted {
        let is_path = key.split('.').all(|part| !part.is_empty());
        if !is_path || !insert_path(&mut out, &key, &value) {
            out.insert(key, value);
        }
    }
    out
}

/// Inserts `value` at the dotted `path`; false (and nothing changed) when the path is taken.
fn insert_path(map: &mut Map<String, Value>, path: &str, value: &Value) -> bool {
    match path.split_once('.') {
        None if map.contains_key(path) => false,
        None => {
            map.insert(path.to_string(), value.clone());
            true
        }
        Some((head, rest)) => match map
            .entry(head.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(inner) => insert_path(inner, rest, value),
            _ => false,
        },
    }
}

/// Rewrites each line written through it (one flat JSON object per line, as
/// `ferry_parsers::parse_lines` writes them) as the nested object.
struct Nested<W: Write> {
    out: W,
    line: Vec<u8>,
}

impl<W: Write> Nested<W> {
    fn new(out: W) -> Self {
        Nested {
            out,
            line: Vec::new(),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        let flat: Map<String, Value> = serde_json::from_slice(&self.line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an event is not a JSON object: {e}"),
            )
        })?;
        serde_json::to_writer(&mut self.out, &nest(flat))?;
        self.out.write_all(b"\n")?;
        self.line.clear();
        Ok(())
    }
}

impl<W: Write> Write for Nested<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let len = buf.len();
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&buf[..end]);
            self.emit()?;
            buf = &buf[end + 1..];
        }
        self.line.extend_from_slice(buf);
        Ok(len)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.emit()?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_keys_become_the_nested_objects_the_store_holds() {
        let flat = json!({
            "@timestamp": "2026-11-28T08:40:00Z",
            "message": "GET /",
            "log.level": "info",
            "log.flags": ["multiline"],
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "parse.error": "no match",
        });
        let Value::Object(flat) = flat else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(nest(flat)),
            json!({
                "@timestamp": "2026-11-28T08:40:00Z",
                "message": "GET /",
                "log": {"level": "info", "flags": ["multiline"]},
                "http": {"request": {"method": "GET"}, "response": {"status_code": 200}},
                "parse": {"error": "no match"},
            })
        );
    }

    #[test]
    fn a_key_that_would_overwrite_stays_dotted() {
        let Value::Object(flat) =
            json!({"message": "m", "message.x": 1, "a..b": 2, "a.c": 3, "a.c.d": 4, ".e": 5})
        else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(nest(flat)),
            json!({"message": "m", "message.x": 1, "a..b": 2, "a": {"c": 3}, "a.c.d": 4, ".e": 5})
        );
    }

    /// What `ferry parse` prints for a built-in rule has the shape the store writes for the
    /// same line: every key path of the printed event is a key path of the stored record.
    #[test]
    fn parse_output_agrees_with_the_stored_record() {
        let set = ferry_parsers::RuleSet::builtin();
        let line = br#"203.0.113.9 - - [28/Nov/2026:08:40:00 +0000] "GET /index.html HTTP/1.1" 200 512 "-" "curl/8.5.0""#;
        let mut printed = Vec::new();
        ferry_parsers::parse_lines(
            &set,
            "nginx_access",
            &line[..],
            Nested::new(&mut printed),
            Some("2026-11-28T08:40:01Z"),
        )
        .unwrap();
        let printed: Value = serde_json::from_slice(&printed).unwrap();

        // The same line through the agent's path: a record with the rule applied, as stored.
        let mut record = ferry_wire::LogRecord {
            timestamp: "2026-11-28T08:40:01Z".into(),
            message: String::from_utf8(line.to_vec()).unwrap(),
            ..Default::default()
        };
        let selection = set.select(Some("nginx_access"), None);
        selection.apply(&mut record, &mut ferry_parsers::Scratch::new());
        let stored = serde_json::to_value(&record).unwrap();

        fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        leaves(v, &format!("{prefix}/{k}"), out)
                    }
                }
                other => out.push((prefix.to_string(), other.clone())),
            }
        }
        let mut shown = Vec::new();
        leaves(&printed, "", &mut shown);
        assert!(shown.len() >= 6, "{printed}");
        for (path, value) in shown {
            assert_eq!(stored.pointer(&path), Some(&value), "{path} in {stored}");
        }
    }
}
