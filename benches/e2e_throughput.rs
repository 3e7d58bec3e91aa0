//! End-to-end throughput harness: a Docker json-file log of nginx lines (the reference workload's
//! shape) pushed through a real agent process into a real aggregator process.
//!
//! ```text
//! cargo bench --bench e2e_throughput -- [--bytes N] [--input FILE]
//!                                        [--sink discard|local|elasticsearch]
//!                                        [--compression lz4|zstd|gzip|none] [--compression-level L]
//!                                        [--format docker|plain]
//!                                        [--parser RULE] [--floor] [--output discard]
//!                                        [--outage-after-seconds A --outage-seconds N]
//!                                        [--rate LINES_PER_SECOND --seconds N]
//! ```
//! `--sink elasticsearch` starts the Elasticsearch test double inside the harness process (on
//! its own threads, whose CPU time is reported separately) and points the aggregator's sink at
//! it; `--outage-after-seconds`/`--outage-seconds` cut the double off (connections refused) for
//! a while, and the aggregator's peak RSS at the end of the outage is reported.
//! `--output discard` runs the agent with `output = "discard"`: it reads, decodes, parses and
//! encodes every line and drops the batches (the "tail → parse → discard" pipeline); the
//! aggregator then only idles.
//! `--rate R --seconds N` (with `--sink elasticsearch`) measures latency instead of throughput:
//! the harness appends the input's lines to an empty file at R lines a second for N seconds (a
//! burst every 10 ms, like a busy container), and reports how long after a line was written the
//! double had indexed it (p50, p99, max): line n counts as indexed once the double holds n
//! documents, which is exact while documents arrive in order (the sink's concurrent requests
//! can interleave a few neighbours; each is still counted once).
//! Prints MiB/s, lines/s, CPU seconds per GiB and peak RSS of each process. A measurement, never
//! a pass/fail threshold.

#[path = "../tests/integration/util.rs"]
#[allow(dead_code)]
mod util;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

struct Args {
    bytes: u64,
    input: Option<PathBuf>,
    sink: String,
    compression: String,
    /// The agent's `compression_level` (its default when not given).
    compression_level: Option<i32>,
    format: String,
    parser: Option<String>,
    floor: bool,
    discard: bool,
    outage_after: Option<u64>,
    outage_seconds: u64,
    /// Latency mode: lines a second, for `seconds`.
    rate: Option<u64>,
    seconds: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        bytes: 256 << 20,
        input: None,
        sink: "discard".into(),
        compression: "lz4".into(),
        compression_level: None,
        format: "docker".into(),
        parser: None,
        floor: false,
        discard: false,
        outage_after: None,
        outage_seconds: 0,
        rate: None,
        seconds: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--bytes" => a.bytes = value().parse().expect("--bytes takes a number of bytes"),
            "--input" => a.input = Some(value().into()),
            "--sink" => a.sink = value(),
            "--compression" => a.compression = value(),
            "--compression-level" => {
                a.compression_level = Some(
                    value()
                        .parse()
                        .expect("--compression-level takes an integer"),
                )
            }
            "--format" => a.format = value(),
            "--parser" => a.parser = Some(value()),
            "--floor" => a.floor = true,
            "--outage-after-seconds" => {
                a.outage_after = Some(
                    value()
                        .parse()
                        .expect("--outage-after-seconds takes seconds"),
                )
            }
            "--outage-seconds" => {
                a.outage_seconds = value().parse().expect("--outage-seconds takes seconds")
            }
            "--rate" => a.rate = Some(value().parse().expect("--rate takes lines a second")),
            "--seconds" => a.seconds = value().parse().expect("--seconds takes seconds"),
            "--output" => {
                let v = value();
                assert!(v == "discard", "--output takes `discard`, not {v:?}");
                a.discard = true;
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// (user + system CPU seconds, peak RSS in bytes) of a live process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let cpu = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (cpu / ticks, hwm_kib * 1024)
}

fn main() {
    let args = parse_args();
    let mut w = World::new();
    let dir = w.path("logs/plain");
    std::fs::create_dir_all(&dir).unwrap();
    let file = match &args.input {
        Some(p) => p.clone(),
        None => {
            let path = dir.join("nginx.log");
            eprintln!(
                "generating {} MiB of {} nginx lines …",
                args.bytes >> 20,
                args.format
            );
            let ok = Command::new(FERRY)
                .args([
                    "generate",
                    "--format",
                    &args.format,
                    "--bytes",
                    &args.bytes.to_string(),
                    "--out",
                ])
                .arg(&path)
                .status()
                .unwrap();
            assert!(ok.success());
            path
        }
    };
    let size = std::fs::metadata(&file).unwrap().len();
    let (lines, first_byte) = scan(&file);
    // Latency mode: the agent tails a file the harness writes as it goes.
    let written = dir.join("written.log");
    w.include = vec![match args.rate {
        Some(_) => written.display().to_string(),
        None => file.display().to_string(),
    }];
    // Docker json-file lines are JSON objects; anything else is tailed as plain lines.
    let format = if first_byte == Some(b'{') {
        "docker"
    } else {
        "plain"
    };
    let mut agent_extra = format!(
        "format = \"{format}\"\ncompression = \"{}\"\n",
        args.compression
    );
    if let Some(level) = args.compression_level {
        agent_extra.push_str(&format!("compression_level = {level}\n"));
    }
    if let Some(rule) = &args.parser {
        agent_extra.push_str(&format!("parser = \"{rule}\"\n"));
    }
    if args.discard {
        agent_extra.push_str("output = \"discard\"\n");
    }
    let double = (args.sink == "elasticsearch").then(|| {
        EsDouble::start(ferry_es_double::Options {
            // The double's own cost is reported separately; keep it small.
            mapping_check: false,
            ..Default::default()
        })
    });
    let sink = match &double {
        Some(d) => format!(
            "sink = {{ type = \"elasticsearch\", urls = [\"{}\"], backoff_max_ms = 2000 }}\n",
            d.handle.url()
        ),
        None => format!("sink = {{ type = \"{}\" }}\n", args.sink),
    };
    let config = w.config(&agent_extra, &sink);
    // The agent's /metrics on a known port, to follow a discarding agent's progress.
    let agent_metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "metrics_listen = \"127.0.0.1:0\"",
        &format!("metrics_listen = \"{agent_metrics}\""),
    );
    std::fs::write(&config, text).unwrap();
    let destination = if args.discard {
        "agent output = discard".to_owned()
    } else {
        let level = args
            .compression_level
            .map(|l| format!(" level {l}"))
            .unwrap_or_default();
        format!(
            "aggregator, {} sink, {}{level}",
            args.sink, args.compression
        )
    };

    let aggregator = w.start_aggregator(&config);
    if let Some(rate) = args.rate {
        let double = double.expect("--rate needs --sink elasticsearch");
        std::fs::write(&written, b"").unwrap();
        let agent = w.start_agent(&config);
        return latency(&args, rate, &file, &written, &double, &agent, &aggregator);
    }
    let started = Instant::now();
    let agent = w.start_agent(&config);
    eprintln!(
        "pushing {lines} lines ({:.1} MiB, {format}) through agent → {destination} …",
        size as f64 / 1048576.0,
    );
    let addr = w.agg_addr();
    let mut last_print = Instant::now();
    let mut outage: Option<(Instant, u64)> = None;
    let peak = loop {
        let (from, counters): (_, &[&str]) = if args.discard {
            (agent_metrics, &["ferry_agent_records_discarded_total"])
        } else if double.is_some() {
            (
                addr,
                &[
                    "ferry_sink_items_total{sink=\"elasticsearch\",result=\"created\"}",
                    "ferry_sink_items_total{sink=\"elasticsearch\",result=\"duplicate\"}",
                    "ferry_sink_items_total{sink=\"elasticsearch\",result=\"dead_lettered\"}",
                ],
            )
        } else {
            (addr, &["ferry_sink_records_total"])
        };
        let page = http(from, "GET", "/metrics", &[], b"")
            .map(|r| r.body)
            .unwrap_or_default();
        let done = counters.iter().map(|c| metric(&page, c)).sum::<f64>() as u64;
        if let (Some(d), Some(after)) = (&double, args.outage_after) {
            let elapsed = started.elapsed();
            if outage.is_none() && elapsed >= Duration::from_secs(after) {
                eprintln!(
                    "  outage: the double refuses connections for {} s",
                    args.outage_seconds
                );
                d.handle.set_behaviour(ferry_es_double::Behaviour {
                    outage: ferry_es_double::Outage::Refuse,
                    ..Default::default()
                });
                outage = Some((Instant::now(), 0));
            }
            if let Some((since, rss)) = &mut outage {
                if *rss == 0 && since.elapsed() >= Duration::from_secs(args.outage_seconds) {
                    *rss = usage(aggregator.child.id()).1;
                    d.handle
                        .set_behaviour(ferry_es_double::Behaviour::default());
                    eprintln!(
                        "  outage over: aggregator peak RSS so far {:.1} MiB",
                        *rss as f64 / 1048576.0
                    );
                }
            }
        }
        let usage_now = (usage(agent.child.id()), usage(aggregator.child.id()));
        if done >= lines {
            break usage_now;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {done}/{lines} records after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "gave up after an hour"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = started.elapsed().as_secs_f64();
    // What the batches held before compression (after it, for a discarding agent: nothing).
    let ingest_bytes = http(addr, "GET", "/metrics", &[], b"")
        .map(|r| metric(&r.body, "ferry_ingest_bytes_total"))
        .unwrap_or(0.0);
    let gib = size as f64 / (1u64 << 30) as f64;
    let ((a_cpu, a_rss), (g_cpu, g_rss)) = peak;
    println!(
        "e2e throughput ({format} log → agent (parser: {}) → {destination}):",
        args.parser
            .as_deref()
            .unwrap_or("auto-detect: JSON, then the auto rules"),
    );
    println!(
        "  input          {:.1} MiB, {lines} lines",
        size as f64 / 1048576.0
    );
    println!("  wall           {secs:.2} s");
    println!(
        "  throughput     {:.1} MiB/s, {:.0} lines/s",
        size as f64 / 1048576.0 / secs,
        lines as f64 / secs
    );
    println!(
        "  agent          {a_cpu:.2} CPU-s ({:.2} CPU-s/GiB), peak RSS {:.1} MiB",
        a_cpu / gib,
        a_rss as f64 / 1048576.0
    );
    println!(
        "  aggregator     {g_cpu:.2} CPU-s ({:.2} CPU-s/GiB), peak RSS {:.1} MiB",
        g_cpu / gib,
        g_rss as f64 / 1048576.0
    );
    if ingest_bytes > 0.0 {
        println!(
            "  batches        {:.1} MiB decompressed, {:.0} bytes a record",
            ingest_bytes / 1048576.0,
            ingest_bytes / lines as f64
        );
    }
    if let Some(d) = &double {
        let stats = d.handle.stats();
        println!(
            "  es double      {:.2} CPU-s (in the harness process, not counted above), {} documents, {} bulk requests",
            d.cpu_seconds(),
            stats.docs,
            stats.bulk_requests.values().sum::<u64>()
        );
    }
    if let Some((_, rss)) = outage {
        println!(
            "  outage         {} s from {} s in: aggregator peak RSS at its end {:.1} MiB",
            args.outage_seconds,
            args.outage_after.unwrap_or(0),
            rss as f64 / 1048576.0
        );
    }
    if args.floor {
        let cpu = grep_floor(&file);
        println!(
            "  floor          LC_ALL=C grep -cE (reference pattern): {cpu:.2} CPU-s, {:.0} MiB/s of CPU",
            size as f64 / 1048576.0 / cpu
        );
    }
}

/// Latency mode: writes `source`'s lines to `written` at `rate` lines a second for
/// `args.seconds` and reports write-to-indexed latency percentiles.
fn latency(
    args: &Args,
    rate: u64,
    source: &std::path::Path,
    written: &std::path::Path,
    double: &EsDouble,
    agent: &Proc,
    aggregator: &Proc,
) {
    use std::io::{BufRead, Write};
    // Wait for the aggregator to take batches (and the sink to bootstrap) before the clock runs.
    wait_for("the double's bootstrap", Duration::from_secs(30), || {
        (!double.handle.stats().data_streams.is_empty()).then_some(())
    });
    let seconds = args.seconds;
    let (source, written) = (source.to_path_buf(), written.to_path_buf());
    eprintln!("writing {rate} lines/s for {seconds} s, measuring write-to-indexed latency …");
    // (when, lines written by then), one entry a burst.
    let writer = std::thread::spawn(move || {
        let mut input =
            std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&source).unwrap());
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(&written)
            .unwrap();
        let started = Instant::now();
        let total = rate * seconds;
        let (mut done, mut bursts, mut line, mut chunk) =
            (0u64, Vec::new(), Vec::new(), Vec::new());
        while done < total {
            let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
            chunk.clear();
            while done < due {
                line.clear();
                if input.read_until(b'\n', &mut line).unwrap() == 0 {
                    panic!("the input has fewer than {total} lines");
                }
                chunk.extend_from_slice(&line);
                done += 1;
            }
            if !chunk.is_empty() {
                out.write_all(&chunk).unwrap();
                bursts.push((Instant::now(), done));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bursts
    });
    // (when, documents indexed by then), one entry a change.
    let mut indexed: Vec<(Instant, u64)> = Vec::new();
    let total = rate * seconds;
    let deadline = Instant::now() + Duration::from_secs(seconds + 120);
    loop {
        let docs = double.handle.stats().docs;
        if indexed.last().is_none_or(|&(_, d)| d != docs) {
            indexed.push((Instant::now(), docs));
        }
        if docs >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {docs} of {total} lines indexed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let bursts = writer.join().unwrap();
    // Each line's latency: when the double first held as many documents, minus its burst's time.
    let mut latencies = Vec::with_capacity(total as usize);
    let (mut first, mut k) = (0u64, 0usize);
    for &(at, upto) in &bursts {
        for n in first..upto {
            while indexed[k].1 <= n {
                k += 1;
            }
            latencies.push(indexed[k].0.saturating_duration_since(at).as_secs_f64());
        }
        first = upto;
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let (a_cpu, a_rss) = usage(agent.child.id());
    let (g_cpu, g_rss) = usage(aggregator.child.id());
    println!("write-to-indexed latency ({rate} lines/s for {seconds} s, agent → aggregator → Elasticsearch double):");
    println!("  lines          {}", latencies.len());
    println!(
        "  latency        p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(0.50) * 1000.0,
        pct(0.99) * 1000.0,
        latencies.last().copied().unwrap_or(0.0) * 1000.0
    );
    println!(
        "  agent          {a_cpu:.2} CPU-s, peak RSS {:.1} MiB",
        a_rss as f64 / 1048576.0
    );
    println!(
        "  aggregator     {g_cpu:.2} CPU-s, peak RSS {:.1} MiB",
        g_rss as f64 / 1048576.0
    );
}

/// The reference workload's pattern without captures (its `nginx.ere`), for the grep floor.
const NGINX_ERE: &str =
    r#"^[^ ]* [^ ]* [^ ]* \[[^]]*\] "[^ ]+ [^ "]* [^"]*" [^ ]* [^ ]* "[^"]*" "[^"]*"$"#;

/// CPU seconds (user + system) of `LC_ALL=C grep -cE` over `file`, from bash's `times`.
fn grep_floor(file: &std::path::Path) -> f64 {
    // Not `>/dev/null`: GNU grep notices that and stops at the first match.
    let script = "n=$(LC_ALL=C grep -cE \"$1\" \"$2\"); times";
    let out = Command::new("bash")
        .args(["-c", script, "floor", NGINX_ERE])
        .arg(file)
        .output()
        .expect("bash runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // Second line of `times`: children's user and system time, e.g. `0m3.512s 0m0.310s`.
    let seconds = |t: &str| -> f64 {
        let (m, s) = t
            .trim_end_matches('s')
            .split_once('m')
            .unwrap_or(("0", "0"));
        m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
    };
    text.lines()
        .nth(1)
        .map(|l| l.split_whitespace().map(seconds).sum())
        .unwrap_or(f64::NAN)
}

/// Number of lines and the first byte of `path`, read in 1 MiB chunks.
fn scan(path: &std::path::Path) -> (u64, Option<u8>) {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut first) = (0u64, None);
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return (lines, first);
        }
        first = first.or(Some(buf[0]));
        lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
    }
}
