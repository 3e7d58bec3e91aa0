//! One alert round with the shipped rules over 10 000 series: sampling the exposition page
//! into the history and evaluating every group (`round/10000_series`). The page is what 1 666
//! containers' six cAdvisor series plus ferry's own look like on `/metrics`; the history is
//! filled for an hour of 15 s rounds first, so range selectors read full windows. Prints the
//! history's size once (series, samples, approximate bytes).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ferry_aggregator::alerts_support::Evaluator;

const CONTAINERS: usize = 1_666;
const ROUND_MS: i64 = 15_000;

fn page(round: i64) -> String {
    let mut out = String::with_capacity(2 << 20);
    let r = round as f64;
    for c in 0..CONTAINERS {
        let labels = format!(
            "{{id=\"{c:064x}\",name=\"app-{c}\",image=\"registry/app:1.{}\",host=\"node-{}\"}}",
            c % 7,
            c % 50
        );
        let limit = 512.0 * 1024.0 * 1024.0;
        let ws = limit * (0.3 + 0.6 * ((c as f64 * 0.37 + r * 0.01).sin().abs()));
        let _ = writeln!(out, "container_memory_working_set_bytes{labels} {ws}");
        let _ = writeln!(out, "container_spec_memory_limit_bytes{labels} {limit}");
        let _ = writeln!(
            out,
            "container_cpu_usage_seconds_total{labels} {}",
            r * 0.4 + c as f64
        );
        let _ = writeln!(out, "container_cpu_cfs_periods_total{labels} {}", r * 150.0);
        let _ = writeln!(
            out,
            "container_cpu_cfs_throttled_periods_total{labels} {}",
            r * (c % 5) as f64 * 10.0
        );
        let _ = writeln!(
            out,
            "container_oom_events_total{labels} {}",
            (r / 100.0).floor() * (c % 3) as f64
        );
    }
    for h in 0..50 {
        let _ = writeln!(
            out,
            "ferry_agent_last_batch_timestamp_seconds{{host=\"node-{h}\"}} {}",
            r * 15.0
        );
    }
    let _ = writeln!(out, "ferry_sink_up{{sink=\"local\"}} 1");
    let _ = writeln!(
        out,
        "ferry_sink_oldest_record_age_seconds{{sink=\"local\"}} 0.5"
    );
    let _ = writeln!(
        out,
        "ferry_ingest_errors_total{{error_type=\"queue_full\"}} 0"
    );
    out
}

fn bench(c: &mut Criterion) {
    let alerts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../alerts");
    let mut evaluator =
        Evaluator::load(&[alerts], Duration::from_secs(15)).expect("shipped rules load");
    let pages: Vec<String> = (0..8).map(page).collect();
    // An hour of rounds first.
    let mut round: i64 = 0;
    while round < 240 {
        evaluator.step(&pages[(round % 8) as usize], round * ROUND_MS);
        round += 1;
    }
    let (series, samples, bytes) = evaluator.history_size();
    eprintln!(
        "alerts history: {series} series, {samples} samples, about {:.1} MiB",
        bytes as f64 / (1 << 20) as f64
    );
    c.bench_function("round/10000_series", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let page = &pages[(round % 8) as usize];
                let started = Instant::now();
                evaluator.step(page, round * ROUND_MS);
                took += started.elapsed();
                round += 1;
            }
            took
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = bench
}
criterion_main!(benches);
