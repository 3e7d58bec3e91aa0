//! Parsing throughput per built-in rule, with realistic inputs.
//!
//! - `rule/<name>`: the rule chosen explicitly, over its corpus (`rules/corpus/<name>.txt`)
//!   repeated; for `nginx_access`, lines generated like the reference workload
//!   (shared/bench/gen_nginx_logs.py: ~5 % IPv6 clients, real user agents, query strings,
//!   probes and scanners, 77 % status 200).
//! - `reference/10_captures`: the exact 10-capture pattern of shared/bench/README.md,
//!   `captures_read` only, over the same nginx lines, so figures compare with the peers'.
//! - `auto/nginx`: the same lines through auto-detection (JSON check, `RegexSet`, rule).
//! - `multiline/<name>`: joiner + rule over the multiline corpora.
//! - `regex_only/<name>`: the rule's pattern through the regex crate alone (`captures_read`,
//!   no fields) over `rules/corpus/<name>.txt`: what a line costs when the greedy walk leaves it
//!   to the regex (a pattern it cannot follow, a byte outside ASCII, a shape it gives up on).
//! - `variants/<name>`: the rule over its variants corpus (`rules/corpus/<name>.variants.txt`:
//!   syslog without a host, logfmt bare keys, Apache ErrorLogFormat forms, …). The `rule/` inputs
//!   stay `<name>.txt`, so their figures compare across changes to the variants.
//! - `walk_or_regex/<case>`: one line the greedy walk settles against the same line in the shape
//!   the pattern leaves to the regex (a syslog line without its host, a logfmt bare key between
//!   the first two pairs, and an nginx request line that begins with a capital but is not
//!   `METHOD url HTTP/x`, which the walk gives up on and the regex refuses): what a variant
//!   costs when the walk cannot follow it.
//!
//! On a shared machine, set `FERRY_BENCH_CPU_TIME=1` to measure the benchmark thread's on-CPU
//! time (`/proc/thread-self/schedstat`) instead of wall time: time the core spends on other
//! processes is then not counted, so figures taken under different loads compare (baselines
//! saved with one measurement compare only with runs of the same one).
//!
//! Each measures the whole per-record work of the agent: message in, the record's JSON out (the
//! rule's typed fields written straight into it, as the tailer does), record and buffer reused.
//! Throughput is bytes of input; lines/s = bytes/s ÷ the mean line length printed at start.

use std::time::{Duration, Instant};

use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion, Throughput};
use ferry_parsers::{Line, RuleSet, Scratch, Selection};
use ferry_wire::LogRecord;

mod common;

use common::{bytes, nginx_lines, CpuTime};

const READ_TIME: &str = "2026-11-28T12:00:00Z";

const REFERENCE: &str = r#"^(?P<remote>[^ ]*) [^ ]* (?P<user>[^ ]*) \[(?P<time>[^\]]*)\] "(?P<method>\S+) (?P<path>[^ "]*) (?P<protocol>[^"]*)" (?P<code>[^ ]*) (?P<size>[^ ]*) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$"#;

fn corpus(name: &str) -> String {
    let path = format!("{}/rules/corpus/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(selection: &Selection, lines: &[String], record: &mut LogRecord, scratch: &mut Scratch) {
    let mut out = Vec::with_capacity(64 * 1024);
    for line in lines {
        record.message.clear();
        record.message.push_str(line);
        record.fields.clear();
        record.log.level = None;
        record.event.created = None;
        record.timestamp.clear();
        record.timestamp.push_str(READ_TIME);
        selection.apply_typed(record, scratch);
        out.clear();
        ferry_wire::write_log_record(&mut out, record, &mut Default::default(), |out, escapes| {
            selection.write_fields(scratch, record, escapes, out)
        });
    }
}

fn note(name: &str, lines: &[String]) {
    eprintln!(
        "{name}: {} lines, mean {:.1} B/line",
        lines.len(),
        bytes(lines) as f64 / lines.len() as f64
    );
}

/// The built-in single-line rules, nginx_access first (its input is generated, the others read
/// their corpora).
const SINGLE_LINE: [&str; 10] = [
    "nginx_access",
    "nginx_error",
    "apache_access",
    "apache_error",
    "syslog_rfc3164",
    "syslog_rfc5424",
    "logfmt",
    "klog",
    "postgresql",
    "redis",
];

fn single_line_rules<M: Measurement>(c: &mut Criterion<M>) {
    let set = RuleSet::builtin();
    let mut group = c.benchmark_group("rule");
    let nginx = nginx_lines(5000);
    let mut inputs: Vec<(String, Vec<String>)> = vec![("nginx_access".into(), nginx)];
    for &name in &SINGLE_LINE[1..] {
        let text = corpus(name);
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        // Repeat the corpus to ~200 KiB so a batch is not all in L1.
        let reps = (200 * 1024 / bytes(&lines) as usize).max(1);
        inputs.push((
            name.into(),
            lines
                .iter()
                .cycle()
                .take(lines.len() * reps)
                .cloned()
                .collect(),
        ));
    }
    for (name, lines) in &inputs {
        note(name, lines);
        let selection = set.select(Some(name), None);
        let mut record = LogRecord::default();
        let mut scratch = Scratch::new();
        group.throughput(Throughput::Bytes(bytes(lines)));
        group.bench_with_input(BenchmarkId::from_parameter(name), lines, |b, lines| {
            b.iter(|| run(&selection, lines, &mut record, &mut scratch))
        });
    }
    group.finish();
}

fn reference_and_auto<M: Measurement>(c: &mut Criterion<M>) {
    let lines = nginx_lines(5000);
    let mut group = c.benchmark_group("reference");
    group.throughput(Throughput::Bytes(bytes(&lines)));
    let re = regex::Regex::new(REFERENCE).unwrap();
    let mut locs = re.capture_locations();
    group.bench_function("10_captures", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for line in &lines {
                if re.captures_read(&mut locs, line).is_some() {
                    n += locs.get(10).map_or(0, |(s, _)| s);
                }
            }
            n
        })
    });
    // The built-in nginx_access pattern alone (captures only, no field building).
    let rules: toml::Table = toml::from_str(include_str!("../rules/nginx.toml")).unwrap();
    let pattern = rules["rule"][0]["pattern"].as_str().unwrap();
    let re = regex::Regex::new(pattern).unwrap();
    let mut locs = re.capture_locations();
    group.bench_function("nginx_access_pattern", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for line in &lines {
                if re.captures_read(&mut locs, line).is_some() {
                    n += locs.get(1).map_or(0, |(_, e)| e);
                }
            }
            n
        })
    });
    group.finish();

    let set = RuleSet::builtin();
    let mut group = c.benchmark_group("auto");
    group.throughput(Throughput::Bytes(bytes(&lines)));
    let selection = set.select(None, None);
    let mut record = LogRecord::default();
    let mut scratch = Scratch::new();
    group.bench_function("nginx", |b| {
        b.iter(|| run(&selection, &lines, &mut record, &mut scratch))
    });
    group.finish();
}

fn multiline_rules<M: Measurement>(c: &mut Criterion<M>) {
    let set = RuleSet::builtin();
    let mut group = c.benchmark_group("multiline");
    for name in ["go_panic", "java_exception", "python_traceback"] {
        let text = corpus(name).repeat(50);
        let selection = set.select(Some(name), None);
        let mut scratch = Scratch::new();
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut joiner = selection.joiner().unwrap();
                let at = Instant::now();
                let mut events = 0;
                let mut out = Vec::new();
                let mut parse = |text: String| {
                    let mut record = LogRecord {
                        timestamp: READ_TIME.into(),
                        message: text,
                        ..Default::default()
                    };
                    selection.apply_typed(&mut record, &mut scratch);
                    out.clear();
                    ferry_wire::write_log_record(
                        &mut out,
                        &record,
                        &mut Default::default(),
                        |out, escapes| selection.write_fields(&mut scratch, &record, escapes, out),
                    );
                    events += 1;
                };
                for (i, line) in text.lines().enumerate() {
                    let line = Line {
                        text: line.to_owned(),
                        offset: i as u64,
                        at,
                    };
                    for joined in joiner.push(line) {
                        parse(joined.text);
                    }
                }
                if let Some(joined) = joiner.flush() {
                    parse(joined.text);
                }
                events
            })
        });
    }
    group.finish();
}

/// Every built-in single-line rule's pattern, by name, as its rule file writes it.
fn patterns() -> Vec<(String, String)> {
    let files = [
        include_str!("../rules/nginx.toml"),
        include_str!("../rules/apache.toml"),
        include_str!("../rules/syslog.toml"),
        include_str!("../rules/logfmt.toml"),
        include_str!("../rules/klog.toml"),
        include_str!("../rules/postgresql.toml"),
        include_str!("../rules/redis.toml"),
    ];
    let mut out = Vec::new();
    for text in files {
        let table: toml::Table = toml::from_str(text).unwrap();
        for rule in table["rule"].as_array().unwrap() {
            out.push((
                rule["name"].as_str().unwrap().to_owned(),
                rule["pattern"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

fn regex_only<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("regex_only");
    for (name, pattern) in patterns() {
        let text = corpus(&name);
        let lines = repeated(&text.lines().map(str::to_owned).collect::<Vec<_>>());
        let re = regex::Regex::new(&pattern).unwrap();
        let mut locs = re.capture_locations();
        group.throughput(Throughput::Bytes(bytes(&lines)));
        group.bench_function(&name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for line in &lines {
                    if re.captures_read(&mut locs, line).is_some() {
                        n += locs.get(1).map_or(0, |(_, e)| e);
                    }
                }
                n
            })
        });
    }
    group.finish();
}

fn repeated(lines: &[String]) -> Vec<String> {
    // Repeat to ~200 KiB so a batch is not all in L1.
    let reps = (200 * 1024 / bytes(lines) as usize).max(1);
    lines
        .iter()
        .cycle()
        .take(lines.len() * reps)
        .cloned()
        .collect()
}

fn variants<M: Measurement>(c: &mut Criterion<M>) {
    let set = RuleSet::builtin();
    let mut group = c.benchmark_group("variants");
    for name in SINGLE_LINE {
        let text = corpus(&format!("{name}.variants"));
        let lines = repeated(&text.lines().map(str::to_owned).collect::<Vec<_>>());
        note(&format!("{name}.variants"), &lines);
        let selection = set.select(Some(name), None);
        let (mut record, mut scratch) = (LogRecord::default(), Scratch::new());
        group.throughput(Throughput::Bytes(bytes(&lines)));
        group.bench_with_input(BenchmarkId::from_parameter(name), &lines, |b, lines| {
            b.iter(|| run(&selection, lines, &mut record, &mut scratch))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("walk_or_regex");
    let cases = [
        (
            "syslog_rfc3164",
            "with_host",
            "<134>Nov 28 08:00:00 lb-1 haproxy[812]: 10.0.0.1:51234 [28/Nov/2026:08:00:00.123] http-in servers/web1 0/0/1/12/13 200 512",
        ),
        (
            "syslog_rfc3164",
            "without_host",
            "<134>Nov 28 08:00:00 haproxy[812]: 10.0.0.1:51234 [28/Nov/2026:08:00:00.123] http-in servers/web1 0/0/1/12/13 200 512",
        ),
        (
            "nginx_access",
            "request",
            r#"198.51.100.7 - - [28/Nov/2026:08:00:01 +0000] "GET /search?q=a+b HTTP/1.1" 400 150 "-" "curl/8.4.0""#,
        ),
        (
            "nginx_access",
            "malformed_request",
            r#"198.51.100.7 - - [28/Nov/2026:08:00:01 +0000] "GET /search?q=a b HTTP/1.1" 400 150 "-" "curl/8.4.0""#,
        ),
        (
            "logfmt",
            "pairs",
            r#"ts=2026-11-28T08:00:00Z level=debug msg="verbose mode on" component=scheduler hit"#,
        ),
        (
            "logfmt",
            "bare_key_second",
            r#"ts=2026-11-28T08:00:00Z debug msg="verbose mode on" component=scheduler hit"#,
        ),
    ];
    for (rule, case, line) in cases {
        let lines = repeated(&[line.to_owned()]);
        let selection = set.select(Some(rule), None);
        let (mut record, mut scratch) = (LogRecord::default(), Scratch::new());
        group.throughput(Throughput::Bytes(bytes(&lines)));
        group.bench_with_input(BenchmarkId::new(rule, case), &lines, |b, lines| {
            b.iter(|| run(&selection, lines, &mut record, &mut scratch))
        });
    }
    group.finish();
}

fn run_all<M: Measurement>(c: Criterion<M>) {
    let mut c = c
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    single_line_rules(&mut c);
    reference_and_auto(&mut c);
    multiline_rules(&mut c);
    regex_only(&mut c);
    variants(&mut c);
}

fn main() {
    if std::env::var_os("FERRY_BENCH_CPU_TIME").is_some() {
        run_all(Criterion::default().with_measurement(CpuTime));
    } else {
        run_all(Criterion::default());
    }
    Criterion::default().configure_from_args().final_summary();
}
