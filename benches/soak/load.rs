//! Load mode: how many lines a second one node ships with many busy containers. The rate of
//! every container is stepped up; each step settles, then is measured: lines written (what
//! the containers reported) and indexed (distinct ids the double created), the lag between them
//! at the start and end of the window, the agent's CPU and memory, and write-to-stored latency.
//! The pipeline kept up in a step when the double indexed at least 95 % of what was written in
//! the window and the lag grew by less than two seconds of lines. The climb ends at the first
//! step where it did not, or where the writers (busybox shells on the same two cores) wrote less
//! than 10 % more than in the step before: then the node is saturated either way.

use std::time::{Duration, Instant};

use ferry_es_double::Options;

use crate::fleet::{self, Fleet, LogOpts};
use crate::stack::{self, pause, Settings, Stack};
use crate::util::{metric, EsDouble};
use crate::Args;

/// Lines per container per tick, step by step.
const STEPS: [u32; 9] = [2, 5, 10, 20, 40, 80, 160, 320, 640];

struct Step {
    target: f64,
    written_rate: f64,
    indexed_rate: f64,
    lag_start: i64,
    lag_end: i64,
    agent_cpu: f64,
    agent_rss: u64,
    aggregator_cpu: f64,
    double_cpu: f64,
    lines: u64,
    p50_ms: f64,
    p99_ms: f64,
    sustained: bool,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn run(args: &Args) -> bool {
    let dir = tempfile::Builder::new()
        .prefix("ferry-load-")
        .tempdir()
        .unwrap();
    let label = format!("{:08x}", fastrand::u32(..));
    let double = EsDouble::start(Options {
        keep_sources: true,
        // The double is the measuring instrument here; its mapping check costs CPU the node
        // under test would not spend.
        mapping_check: false,
        ..Default::default()
    });
    let d = &double.handle;
    let agg_data = dir.path().join("aggregator");
    let mut stack = Stack::start(Settings {
        dir: dir.path(),
        agg_data: &agg_data,
        es_url: &d.url(),
        label: &label,
        soak: false,
        faketime: None,
    });
    let fleet = Fleet::start(
        args.containers,
        &dir.path().join("ctl"),
        &label,
        0,
        STEPS[0],
        &LogOpts {
            max_size: "20m".into(),
            max_file: 5,
        },
    );
    let started = Instant::now();
    println!(
        "load: {} containers, agent with default settings → aggregator → Elasticsearch double (in this process), {} s a step after 10 s to settle",
        args.containers, args.step_seconds
    );
    let agent_pid = stack.agent.child.id();
    let aggregator_pid = stack.aggregator.child.id();
    let mut steps: Vec<Step> = Vec::new();
    for &per_tick in &STEPS {
        let target = per_tick as f64 / fleet::TICK_SECONDS * args.containers as f64;
        fleet.set_rate(per_tick);
        println!(
            "{} step: asking {target:.0} lines/s ({:.0} per container)",
            crate::stamp(started),
            per_tick as f64 / fleet::TICK_SECONDS
        );
        pause(Duration::from_secs(10));
        let sample = || {
            let written: u64 = fleet.written().iter().sum();
            let indexed = d.stats().distinct_ids;
            (Instant::now(), written, indexed)
        };
        let (t0, w0, i0) = sample();
        let ms0 = unix_ms();
        let (a0, _, _) = stack::usage(agent_pid);
        let (g0, _, _) = stack::usage(aggregator_pid);
        let d0 = double.cpu_seconds();
        let mut rss_max = 0;
        let end = t0 + Duration::from_secs(args.step_seconds);
        while Instant::now() < end {
            pause(Duration::from_secs(1));
            rss_max = rss_max.max(stack::usage(agent_pid).1);
        }
        let (t1, w1, i1) = sample();
        let ms1 = unix_ms();
        let (a1, _, _) = stack::usage(agent_pid);
        let (g1, _, _) = stack::usage(aggregator_pid);
        let secs = t1.duration_since(t0).as_secs_f64();
        let written_rate = (w1 - w0) as f64 / secs;
        let indexed_rate = (i1 - i0) as f64 / secs;
        let (lag_start, lag_end) = (w0 as i64 - i0 as i64, w1 as i64 - i1 as i64);
        let (p50_ms, p99_ms) = latency(d, ms0, ms1);
        let sustained = indexed_rate >= 0.95 * written_rate
            && ((lag_end - lag_start) as f64) < 2.0 * written_rate;
        let writers_grew = steps
            .last()
            .is_none_or(|s: &Step| written_rate > 1.1 * s.written_rate);
        let step = Step {
            target,
            written_rate,
            indexed_rate,
            lag_start,
            lag_end,
            agent_cpu: (a1 - a0) / secs,
            agent_rss: rss_max,
            aggregator_cpu: (g1 - g0) / secs,
            double_cpu: (double.cpu_seconds() - d0) / secs,
            lines: w1 - w0,
            p50_ms,
            p99_ms,
            sustained,
        };
        println!(
            "{}   written {:.0}/s, indexed {:.0}/s, lag {} → {} lines; agent {:.3} CPU-s/s ({:.1} CPU-s per million lines), RSS max {:.1} MiB; aggregator {:.3} CPU-s/s; double {:.3} CPU-s/s; latency p50 {:.0} ms p99 {:.0} ms; {}",
            crate::stamp(started),
            step.written_rate,
            step.indexed_rate,
            step.lag_start,
            step.lag_end,
            step.agent_cpu,
            step.agent_cpu * secs / (step.lines.max(1) as f64) * 1e6,
            step.agent_rss as f64 / 1048576.0,
            step.aggregator_cpu,
            step.double_cpu,
            step.p50_ms,
            step.p99_ms,
            match (sustained, writers_grew) {
                (true, true) => "kept up",
                (true, false) => "kept up; the writers wrote no faster than in the step before",
                (false, _) => "did NOT keep up",
            }
        );
        steps.push(step);
        if !sustained || !writers_grew {
            break;
        }
        if !stack.agent.alive() || !stack.aggregator.alive() {
            println!("a process exited on its own");
            return false;
        }
    }
    fleet.stop();
    let page = stack.poll();
    let _ = stack.agent.terminate();
    let _ = stack.aggregator.terminate();
    println!();
    println!(
        "load report ({} containers, {} CPUs on this machine, shared with the aggregator, the double and the writers):",
        args.containers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  | asked lines/s | written/s | indexed/s | lag start → end | agent CPU-s/s | agent CPU-s per M lines | agent RSS max | aggregator CPU-s/s | double CPU-s/s | latency p50 | p99 | kept up |");
    println!("  |---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &steps {
        println!(
            "  | {:.0} | {:.0} | {:.0} | {} → {} | {:.3} | {:.1} | {:.1} MiB | {:.3} | {:.3} | {:.0} ms | {:.0} ms | {} |",
            s.target,
            s.written_rate,
            s.indexed_rate,
            s.lag_start,
            s.lag_end,
            s.agent_cpu,
            s.agent_cpu / s.written_rate.max(1.0) * 1e6,
            s.agent_rss as f64 / 1048576.0,
            s.aggregator_cpu,
            s.double_cpu,
            s.p50_ms,
            s.p99_ms,
            if s.sustained { "yes" } else { "no" }
        );
    }
    match steps.iter().rfind(|s| s.sustained) {
        Some(best) => println!(
            "  highest rate kept up with: {:.0} lines/s written and indexed ({} containers), agent {:.3} CPU-s/s = {:.1} CPU-s per million lines, agent RSS max {:.1} MiB, write-to-stored p50 {:.0} ms p99 {:.0} ms",
            best.written_rate,
            args.containers,
            best.agent_cpu,
            best.agent_cpu / best.written_rate.max(1.0) * 1e6,
            best.agent_rss as f64 / 1048576.0,
            best.p50_ms,
            best.p99_ms
        ),
        None => println!("  no step was kept up with"),
    }
    println!(
        "  documents {}, created twice {}, dead-lettered by the sink {}",
        d.stats().docs,
        d.stats().duplicate_ids,
        metric(
            &page,
            "ferry_sink_items_total{sink=\"elasticsearch\",result=\"dead_lettered\"}"
        )
    );
    true
}

/// p50 and p99 of (first create − Docker's receive time) over the documents created in
/// `[from_ms, to_ms)` (Unix milliseconds), in milliseconds.
fn latency(d: &ferry_es_double::DoubleHandle, from_ms: u64, to_ms: u64) -> (f64, f64) {
    let mut lat: Vec<f64> = d
        .docs()
        .iter()
        .filter(|doc| doc.created_unix_ms >= from_ms && doc.created_unix_ms < to_ms)
        .filter_map(|doc| {
            let v: serde_json::Value = serde_json::from_str(doc.source.as_deref()?).ok()?;
            let t = chrono::DateTime::parse_from_rfc3339(v["@timestamp"].as_str()?).ok()?;
            Some(doc.created_unix_ms as f64 - t.timestamp_millis() as f64)
        })
        .collect();
    if lat.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (pct(0.50), pct(0.99))
}
