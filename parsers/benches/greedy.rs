//! The greedy walk alone against the regex it stands in for, on the same lines with the same
//! pattern, captures only (no typed values, no record): the figure behind the README's "on nginx
//! access lines the walk is 2.5 times cheaper than the regex's one-pass engine".
//!
//! - `greedy_walk/walk/<pattern>`: `Walk::find` over the lines, filling the group slots.
//! - `greedy_walk/regex/<pattern>`: `regex::Regex::captures_read` with reused capture locations
//!   over the same lines (the regex crate picks its one-pass engine for these anchored patterns).
//!
//! Patterns: `nginx_access` (the built-in rule's pattern, `rules/nginx.toml`) and `reference`
//! (the 10-capture pattern of shared/bench/README.md), over 5,000 nginx lines shaped like the
//! reference workload. Before measuring, every line is checked to get the same groups from both,
//! so the two figures are for the same work. The speed-up is `regex` time ÷ `walk` time.
//!
//! ```sh
//! cargo bench -p ferry-parsers --bench greedy
//! FERRY_BENCH_CPU_TIME=1 cargo bench -p ferry-parsers --bench greedy   # on-CPU time (shared machine)
//! ```

use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::{Criterion, Throughput};
use ferry_parsers::bench::Walk;

mod common;

use common::{bytes, nginx_lines, CpuTime};

const REFERENCE: &str = r#"^(?P<remote>[^ ]*) [^ ]* (?P<user>[^ ]*) \[(?P<time>[^\]]*)\] "(?P<method>\S+) (?P<path>[^ "]*) (?P<protocol>[^"]*)" (?P<code>[^ ]*) (?P<size>[^ ]*) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$"#;

/// The built-in `nginx_access` rule's pattern, as its rule file writes it.
fn nginx_access_pattern() -> String {
    let rules: toml::Table = toml::from_str(include_str!("../rules/nginx.toml")).unwrap();
    let rule = rules["rule"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"].as_str() == Some("nginx_access"))
        .expect("rules/nginx.toml has the nginx_access rule");
    rule["pattern"].as_str().unwrap().to_owned()
}

/// Panics unless the walk settles every line with exactly the regex's groups.
fn check_same_groups(name: &str, walk: &Walk, re: &regex::Regex, lines: &[String]) {
    let mut slots = Vec::new();
    let mut locs = re.capture_locations();
    for (i, line) in lines.iter().enumerate() {
        assert!(
            walk.find(line.as_bytes(), &mut slots),
            "{name}: the walk gives up on line {i}: {line}"
        );
        assert!(
            re.captures_read(&mut locs, line).is_some(),
            "{name}: the regex misses line {i}: {line}"
        );
        for g in 0..locs.len() {
            let walked = match (slots[2 * g], slots[2 * g + 1]) {
                (usize::MAX, _) => None,
                span => Some(span),
            };
            assert_eq!(
                walked,
                locs.get(g),
                "{name}: group {g} differs on line {i}: {line}"
            );
        }
    }
}

fn walk_against_regex<M: Measurement>(c: &mut Criterion<M>) {
    let lines = nginx_lines(5000);
    eprintln!(
        "nginx lines: {}, mean {:.1} B/line",
        lines.len(),
        bytes(&lines) as f64 / lines.len() as f64
    );
    let mut group = c.benchmark_group("greedy_walk");
    group.throughput(Throughput::Bytes(bytes(&lines)));
    for (name, pattern) in [
        ("nginx_access", nginx_access_pattern()),
        ("reference", REFERENCE.to_owned()),
    ] {
        let walk = Walk::new(&pattern).expect("the walk follows the pattern");
        let re = regex::Regex::new(&pattern).unwrap();
        check_same_groups(name, &walk, &re, &lines);

        let mut slots = Vec::new();
        group.bench_function(format!("walk/{name}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for line in &lines {
                    if walk.find(line.as_bytes(), &mut slots) {
                        n += slots[1];
                    }
                }
                n
            })
        });
        let mut locs = re.capture_locations();
        group.bench_function(format!("regex/{name}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for line in &lines {
                    if re.captures_read(&mut locs, line).is_some() {
                        n += locs.get(0).map_or(0, |(_, e)| e);
                    }
                }
                n
            })
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
    walk_against_regex(&mut c);
}

fn main() {
    if std::env::var_os("FERRY_BENCH_CPU_TIME").is_some() {
        run_all(Criterion::default().with_measurement(CpuTime));
    } else {
        run_all(Criterion::default());
    }
    Criterion::default().configure_from_args().final_summary();
}
