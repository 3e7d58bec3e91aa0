//! ferry's metric registry against the `prometheus` crate's, for issue 11's question whether to
//! move the aggregator's metrics onto that crate: the same work done both ways.
//!
//! - `counter_inc`: one counter increment (ours: a relaxed `AtomicU64` add, as `Metrics` does).
//! - `histogram_observe`: one duration observed into the 8-bucket histogram
//!   (`ferry_wire::DurationHistogram` against `prometheus::Histogram`).
//! - `stats_update/10000_series`: one batch of stats of 1 666 containers × six cAdvisor series
//!   taken in (ours: the latest sample kept per host and container id, as
//!   `containers::Containers::observe` does; theirs: six `GaugeVec`s set by label values).
//! - `render/10000_series`: the text exposition of those series (ours:
//!   `ferry_wire::render_container_metrics` over the kept samples, sorted as `/metrics` sorts
//!   them; theirs: `Registry::gather` and `TextEncoder`).
//!
//! For instruction counts, `FERRY_REGISTRY_DRIVER=1` skips criterion and runs each piece of
//! work once through its own function (`ferry_update`, `prometheus_update`, `ferry_render`,
//! `prometheus_render`, after one update that creates the series), to read with
//! `valgrind --tool=callgrind` and `callgrind_annotate --inclusive=yes`.
//! The figures and the decision are in README's Alerts section.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, BenchmarkId, Criterion};
use ferry_wire::{DurationHistogram, StatsSample};
use prometheus::{Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, Opts, Registry};

const CONTAINERS: usize = 1_666;
const BUCKETS_SECONDS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
const METRICS: [&str; 6] = [
    "container_memory_working_set_bytes",
    "container_spec_memory_limit_bytes",
    "container_cpu_usage_seconds_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_oom_events_total",
];

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
            for (i, m) in METRICS.iter().enumerate() {
                s.metrics.insert(m.to_string(), (c * 7 + i) as f64 * 1024.5);
            }
            s
        })
        .collect()
}

/// The aggregator's way: the latest sample per (host, container id), metrics merged.
#[derive(Default)]
struct Ours {
    entries: Mutex<HashMap<(String, String), StatsSample>>,
}

impl Ours {
    fn observe(&self, samples: &[StatsSample]) {
        let mut entries = self.entries.lock().expect("not poisoned");
        for sample in samples {
            let id = sample.container.id.clone().unwrap_or_default();
            let entry = entries.entry((sample.host.name.clone(), id)).or_default();
            let mut metrics = std::mem::take(&mut entry.metrics);
            metrics.extend(sample.metrics.iter().map(|(k, v)| (k.clone(), *v)));
            *entry = StatsSample {
                metrics,
                ..sample.clone()
            };
        }
    }

    fn render(&self, out: &mut String) {
        let entries = self.entries.lock().expect("not poisoned");
        let mut sorted: Vec<_> = entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        ferry_wire::render_container_metrics(out, sorted.iter().map(|(_, s)| *s));
    }
}

/// The `prometheus` crate's way: one gauge family per metric, labelled like ours.
struct Theirs {
    registry: Registry,
    families: Vec<GaugeVec>,
}

impl Theirs {
    fn new() -> Theirs {
        let registry = Registry::new();
        let families = METRICS
            .iter()
            .map(|name| {
                let g = GaugeVec::new(
                    Opts::new(*name, "cAdvisor's series."),
                    &["id", "name", "image", "host"],
                )
                .expect("valid family");
                registry.register(Box::new(g.clone())).expect("registered");
                g
            })
            .collect();
        Theirs { registry, families }
    }

    fn observe(&self, samples: &[StatsSample]) {
        for sample in samples {
            let labels = [
                sample.container.id.as_deref().unwrap_or(""),
                sample.container.name.as_deref().unwrap_or(""),
                sample.container.image.name.as_deref().unwrap_or(""),
                sample.host.name.as_str(),
            ];
            for (family, name) in self.families.iter().zip(METRICS) {
                if let Some(v) = sample.metrics.get(name) {
                    family.with_label_values(&labels).set(*v);
                }
            }
        }
    }

    fn render(&self, out: &mut Vec<u8>) {
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), out)
            .expect("encodes");
    }
}

fn bench(c: &mut Criterion) {
    let ours_counter = AtomicU64::new(0);
    let theirs_counter = IntCounter::new("c_total", "A counter.").expect("valid counter");
    let mut g = c.benchmark_group("counter_inc");
    g.bench_function("ferry", |b| {
        b.iter(|| black_box(&ours_counter).fetch_add(1, Ordering::Relaxed))
    });
    g.bench_function("prometheus", |b| {
        b.iter(|| black_box(&theirs_counter).inc())
    });
    g.finish();

    let ours_histogram = DurationHistogram::<8>::default();
    let theirs_histogram = Histogram::with_opts(
        HistogramOpts::new("d_seconds", "A duration.").buckets(BUCKETS_SECONDS.to_vec()),
    )
    .expect("valid histogram");
    let took = Duration::from_micros(7_300);
    let mut g = c.benchmark_group("histogram_observe");
    g.bench_function("ferry", |b| {
        b.iter(|| black_box(&ours_histogram).observe(&BUCKETS_SECONDS, black_box(took)))
    });
    g.bench_function("prometheus", |b| {
        b.iter(|| black_box(&theirs_histogram).observe(black_box(took).as_secs_f64()))
    });
    g.finish();

    let batch = samples();
    let ours = Ours::default();
    let theirs = Theirs::new();
    ours.observe(&batch);
    theirs.observe(&batch);
    let series = CONTAINERS * METRICS.len();
    let mut g = c.benchmark_group("stats_update");
    g.bench_function(BenchmarkId::new("ferry", series), |b| {
        b.iter(|| ours.observe(black_box(&batch)))
    });
    g.bench_function(BenchmarkId::new("prometheus", series), |b| {
        b.iter(|| theirs.observe(black_box(&batch)))
    });
    g.finish();

    let mut g = c.benchmark_group("render");
    g.bench_function(BenchmarkId::new("ferry", series), |b| {
        b.iter(|| {
            let mut out = String::with_capacity(4 << 20);
            ours.render(&mut out);
            out
        })
    });
    g.bench_function(BenchmarkId::new("prometheus", series), |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(4 << 20);
            theirs.render(&mut out);
            out
        })
    });
    g.finish();
}

#[inline(never)]
fn ferry_update(ours: &Ours, batch: &[StatsSample]) {
    ours.observe(batch);
}

#[inline(never)]
fn prometheus_update(theirs: &Theirs, batch: &[StatsSample]) {
    theirs.observe(batch);
}

#[inline(never)]
fn ferry_render(ours: &Ours) -> usize {
    let mut out = String::with_capacity(4 << 20);
    ours.render(&mut out);
    out.len()
}

#[inline(never)]
fn prometheus_render(theirs: &Theirs) -> usize {
    let mut out = Vec::with_capacity(4 << 20);
    theirs.render(&mut out);
    out.len()
}

fn driver() {
    let batch = samples();
    let ours = Ours::default();
    let theirs = Theirs::new();
    ours.observe(&batch);
    theirs.observe(&batch);
    ferry_update(&ours, &batch);
    prometheus_update(&theirs, &batch);
    let ours_bytes = ferry_render(&ours);
    let theirs_bytes = prometheus_render(&theirs);
    eprintln!("rendered {ours_bytes} bytes (ferry), {theirs_bytes} bytes (prometheus)");
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
fn main() {
    if std::env::var_os("FERRY_REGISTRY_DRIVER").is_some() {
        driver();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
