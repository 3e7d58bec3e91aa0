//! One alert round with the shipped rules over 10 000 container series, as the aggregator does
//! it: sampling the aggregator's metrics registry (the container stats of 1 666 containers ×
//! six cAdvisor series, 50 agents' last batch times and ferry's own families, the very series
//! `/metrics` serves) into the history and evaluating every group (`round/10000_series`).
//! `round/10000_series_text` does the same through the rendered page (render it, parse it
//! back), as rounds did before they read the registry, for comparison. The history is filled
//! for an hour of 15 s rounds first, so range selectors read full windows. Prints the
//! history's size once (series, samples, approximate bytes).
//!
//! For instruction counts (repeatable on a busy machine), `FERRY_ALERTS_DRIVER_ROUNDS=N` skips
//! criterion and runs the hour of rounds, then `N` rounds, each through [`driver_round`]
//! (through the page instead with `FERRY_ALERTS_DRIVER_TEXT=1`):
//! `FERRY_ALERTS_DRIVER_ROUNDS=3 valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*driver_round*' target/release/deps/alerts_round-*` counts the
//! instructions of those `N` rounds only (the containers' figures moving left out).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use ferry_aggregator::alerts_support::Evaluator;
use ferry_wire::StatsSample;

const CONTAINERS: usize = 1_666;
const ROUND_MS: i64 = 15_000;

fn samples() -> Vec<StatsSample> {
    (0..CONTAINERS)
        .map(|c| {
            let mut s = StatsSample {
                timestamp: "2026-11-29T09:00:00.000Z".into(),
                ..Default::default()
            };
            s.host.name = format!("node-{}", c % 50);
            s.container.id = Some(format!("{c:064x}"));
            s.container.name = Some(format!("app-{c}"));
            s.container.image.name = Some(format!("registry/app:1.{}", c % 7));
            s
        })
        .collect()
}

/// Moves every container's figures to round `round`.
fn advance(samples: &mut [StatsSample], round: i64) {
    let r = round as f64;
    let limit = 512.0 * 1024.0 * 1024.0;
    for (c, s) in samples.iter_mut().enumerate() {
        let m = &mut s.metrics;
        let ws = limit * (0.3 + 0.6 * ((c as f64 * 0.37 + r * 0.01).sin().abs()));
        m.insert("container_memory_working_set_bytes".into(), ws);
        m.insert("container_spec_memory_limit_bytes".into(), limit);
        m.insert(
            "container_cpu_usage_seconds_total".into(),
            r * 0.4 + c as f64,
        );
        m.insert("container_cpu_cfs_periods_total".into(), r * 150.0);
        m.insert(
            "container_cpu_cfs_throttled_periods_total".into(),
            r * (c % 5) as f64 * 10.0,
        );
        m.insert(
            "container_oom_events_total".into(),
            (r / 100.0).floor() * (c % 3) as f64,
        );
    }
}

/// The agents' batches of round `round` arrive: their stats go into the registry.
fn arrive(evaluator: &Evaluator, containers: &mut [StatsSample], round: i64) {
    advance(containers, round);
    evaluator.observe_stats(containers);
    for h in 0..50 {
        evaluator.observe_agent(&format!("node-{h}"), (round * 15) as f64);
    }
}

/// How a round reads the registry.
#[derive(Clone, Copy)]
enum Sampling {
    /// Straight from the registry, as the aggregator does.
    Registry,
    /// Through the rendered page, parsed back (the way before).
    Text,
}

/// One round as the aggregator runs it: the batches arrive, then the timed part.
fn one_round(
    evaluator: &mut Evaluator,
    containers: &mut [StatsSample],
    round: i64,
    how: Sampling,
) -> Duration {
    arrive(evaluator, containers, round);
    let started = Instant::now();
    measured_round(evaluator, round, how);
    started.elapsed()
}

/// What a round costs the aggregator.
fn measured_round(evaluator: &mut Evaluator, round: i64, how: Sampling) {
    match how {
        Sampling::Registry => evaluator.step_registry(round * ROUND_MS),
        Sampling::Text => {
            let text = evaluator.render_registry();
            evaluator.step(&text, round * ROUND_MS);
        }
    }
}

/// The shipped rules, and a history filled with an hour of rounds.
fn setup(how: Sampling) -> (Evaluator, Vec<StatsSample>, i64) {
    let alerts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../alerts");
    let mut evaluator =
        Evaluator::load(&[alerts], Duration::from_secs(15)).expect("shipped rules load");
    let mut containers = samples();
    let mut round: i64 = 0;
    while round < 240 {
        one_round(&mut evaluator, &mut containers, round, how);
        round += 1;
    }
    let (series, samples, bytes) = evaluator.history_size();
    eprintln!(
        "alerts history: {series} series, {samples} samples, about {:.1} MiB; {} alerts",
        bytes as f64 / (1 << 20) as f64,
        evaluator.alerts().len()
    );
    (evaluator, containers, round)
}

/// One round in driver mode (the part callgrind counts).
#[inline(never)]
fn driver_round(evaluator: &mut Evaluator, round: i64, how: Sampling) {
    measured_round(evaluator, round, how);
}

fn bench(c: &mut Criterion) {
    for (name, how) in [
        ("round/10000_series", Sampling::Registry),
        ("round/10000_series_text", Sampling::Text),
    ] {
        let (mut evaluator, mut containers, mut round) = setup(how);
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    took += one_round(&mut evaluator, &mut containers, round, how);
                    round += 1;
                }
                took
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = bench
}
fn main() {
    if let Some(n) = std::env::var("FERRY_ALERTS_DRIVER_ROUNDS")
        .ok()
        .and_then(|n| n.parse::<i64>().ok())
    {
        let how = if std::env::var("FERRY_ALERTS_DRIVER_TEXT").is_ok_and(|v| v == "1") {
            Sampling::Text
        } else {
            Sampling::Registry
        };
        let (mut evaluator, mut containers, round) = setup(how);
        for r in round..round + n {
            arrive(&evaluator, &mut containers, r);
            driver_round(&mut evaluator, r, how);
        }
        eprintln!("{n} rounds measured; {} alerts", evaluator.alerts().len());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
