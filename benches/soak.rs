//! The soak and load harness (issue 13, items 4 and 5): not a criterion benchmark and not part
//! of CI, a long run of the real processes against real containers.
//!
//! ```text
//! cargo bench --bench soak -- [--minutes 30] [--kills 100] [--containers 10] [--seed S]
//!                             [--rate LINES_PER_SECOND_PER_CONTAINER] [--bad-every 499]
//!                             [--tmpfs-mib 3] [--no-faketime]
//! cargo bench --bench soak -- --load [--containers 50] [--step-seconds 30]
//! ```
//! **Soak**: the Elasticsearch test double (in this process), an aggregator whose data
//! directory (queue, sink position, dead letters) is a small tmpfs mounted for the run, an
//! agent that finds the containers through the Docker socket, and `--containers` busybox
//! containers writing numbered JSON lines through Docker's json-file driver (`max-size=256k`,
//! so Docker rotates all the time; `max-file=100`, so Docker never deletes a file during the
//! run, which the report checks). Over `--minutes`, on a schedule drawn from `--seed`:
//! `--kills` SIGKILLs spread over agent and aggregator (each restarted at once), a sink outage
//! of a third of the run (the double refuses connections), rotation storms (every container
//! writes 20 times faster for a while, one storm inside the outage so the tmpfs fills and ingest
//! must push back), whole-request 429 bursts and a few minutes of 30 % item-level 429s, and a
//! wall-clock jump of +1 h and back (libfaketime preloaded into both processes; the machine's
//! clock is never touched). Every `--bad-every`-th line carries an object where the first lines
//! mapped a keyword, so Elasticsearch must refuse it: a known number of dead letters. At the end
//! the containers stop, the pipeline drains, and every line is reconciled against every document
//! the double created (before any de-duplication) and every dead letter: lost, duplicated,
//! dead-lettered with its reason. Exits 1 if anything is lost or duplicated or the dead letters
//! differ from the injected lines.
//!
//! **Load** (`--load`): `--containers` containers with the agent's default settings, the rate
//! stepped up until the node no longer keeps up (lag grows); per step the written and indexed
//! rates, agent CPU (CPU-s per second and per million lines) and RSS, and write-to-stored
//! latency p50/p99 (Docker's receive time of the line, its `@timestamp`, to the double's first
//! create of the document). A measurement, never a pass/fail threshold.

#[path = "../tests/integration/util.rs"]
#[allow(dead_code)]
mod util;

#[path = "soak/fleet.rs"]
mod fleet;
#[path = "soak/load.rs"]
mod load;
#[path = "soak/reconcile.rs"]
mod reconcile;
#[path = "soak/stack.rs"]
mod stack;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ferry_es_double::{Behaviour, Options, Outage, Script};

use fleet::{Fleet, LogOpts};
use stack::{pause, Settings, Stack, Tmpfs};
use util::{metric, EsDouble};

pub struct Args {
    pub minutes: f64,
    pub kills: u32,
    pub containers: usize,
    pub seed: u64,
    /// Lines a second per container, outside storms.
    pub rate: u32,
    pub bad_every: u64,
    pub tmpfs_mib: u64,
    pub faketime: bool,
    pub load: bool,
    pub step_seconds: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        minutes: 30.0,
        kills: 100,
        containers: 0,
        seed: fastrand::u64(..),
        rate: 20,
        bad_every: 499,
        tmpfs_mib: 4,
        faketime: true,
        load: false,
        step_seconds: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--minutes" => a.minutes = value().parse().expect("--minutes takes minutes"),
            "--kills" => a.kills = value().parse().expect("--kills takes a count"),
            "--containers" => a.containers = value().parse().expect("--containers takes a count"),
            "--seed" => a.seed = value().parse().expect("--seed takes a number"),
            "--rate" => a.rate = value().parse().expect("--rate takes lines a second"),
            "--bad-every" => a.bad_every = value().parse().expect("--bad-every takes a number"),
            "--tmpfs-mib" => a.tmpfs_mib = value().parse().expect("--tmpfs-mib takes MiB"),
            "--step-seconds" => {
                a.step_seconds = value().parse().expect("--step-seconds takes seconds")
            }
            "--no-faketime" => a.faketime = false,
            "--load" => a.load = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    if a.containers == 0 {
        a.containers = if a.load { 50 } else { 10 };
    }
    a
}

fn main() -> ExitCode {
    let args = parse_args();
    stack::watch_signals();
    Tmpfs::unmount_leftovers();
    Fleet::remove_leftovers();
    let ok = if args.load {
        load::run(&args)
    } else {
        soak(&args)
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Minutes:seconds since the start, for event lines.
pub fn stamp(started: Instant) -> String {
    let s = started.elapsed().as_secs();
    format!("[{:02}:{:02}]", s / 60, s % 60)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    KillAgent,
    KillAggregator,
    OutageStart,
    OutageEnd,
    StormStart,
    StormEnd,
    RequestBurst429,
    Items429Start,
    Items429End,
    ClockOffset(i64),
}

/// The run's events at their times, drawn from the seed.
fn schedule(args: &Args, rng: &mut fastrand::Rng) -> Vec<(Duration, Event)> {
    let total = args.minutes * 60.0;
    let at = |f: f64| Duration::from_secs_f64(total * f);
    let mut ev = vec![
        (at(0.25), Event::OutageStart),
        (at(0.25 + 1.0 / 3.0), Event::OutageEnd),
        (at(0.08), Event::RequestBurst429),
        (at(0.70), Event::RequestBurst429),
        (at(0.85), Event::RequestBurst429),
        (at(0.62), Event::Items429Start),
        (at(0.72), Event::Items429End),
        (at(0.66), Event::ClockOffset(3600)),
        (at(0.76), Event::ClockOffset(0)),
    ];
    let storm = Duration::from_secs_f64((total / 60.0).max(10.0));
    for f in [0.12, 0.40, 0.64, 0.80] {
        ev.push((at(f), Event::StormStart));
        ev.push((at(f) + storm, Event::StormEnd));
    }
    for _ in 0..args.kills {
        let when = at(0.02 + 0.88 * rng.f64());
        let what = if rng.bool() {
            Event::KillAgent
        } else {
            Event::KillAggregator
        };
        ev.push((when, what));
    }
    ev.sort_by_key(|(t, _)| *t);
    ev
}

fn soak(args: &Args) -> bool {
    assert!(
        !args.faketime || stack::faketime_available(),
        "libfaketime is missing: `apt-get install -y faketime` (or --no-faketime)"
    );
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let events = schedule(args, &mut rng);
    let per_tick = ((args.rate as f64 * fleet::TICK_SECONDS).round() as u32).max(1);
    let storm_tick = per_tick * 20;
    println!(
        "soak: seed {} ({} min, {} SIGKILLs, {} containers at {} lines/s each, storms at {} lines/s, every {}th line from 100 on refused by the mapping, queue on a {} MiB tmpfs, clock jump {})",
        args.seed,
        args.minutes,
        args.kills,
        args.containers,
        per_tick as f64 / fleet::TICK_SECONDS,
        storm_tick as f64 / fleet::TICK_SECONDS,
        args.bad_every,
        args.tmpfs_mib,
        if args.faketime { "+1 h and back" } else { "off" },
    );
    // Declared first, dropped last: unmounted after the processes on it are gone.
    let dir = tempfile::Builder::new()
        .prefix("ferry-soak-")
        .tempdir()
        .unwrap();
    let label = format!("{:08x}", args.seed as u32 ^ fastrand::u32(..));
    let tmpfs = Tmpfs::mount(&dir.path().join("aggregator"), args.tmpfs_mib << 20);
    let double = EsDouble::start(Options {
        seed: args.seed,
        keep_sources: true,
        ..Default::default()
    });
    let d = &double.handle;
    let clock_file = dir.path().join("faketime");
    stack::set_clock_offset(&clock_file, 0);
    let mut stack = Stack::start(Settings {
        dir: dir.path(),
        agg_data: &tmpfs.path,
        es_url: &d.url(),
        label: &label,
        soak: true,
        faketime: args.faketime.then(|| clock_file.clone()),
    });
    let log_opts = LogOpts {
        max_size: "256k".into(),
        max_file: 100,
    };
    let fleet = Fleet::start(
        args.containers,
        &dir.path().join("ctl"),
        &label,
        args.bad_every,
        per_tick,
        &log_opts,
    );
    let started = Instant::now();
    println!(
        "{} started: aggregator {}, double {}, {} containers labelled ferry.soak={label}, work dir {}",
        stamp(started),
        stack.agg_addr,
        d.url(),
        fleet.names.len(),
        dir.path().display()
    );

    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let mut next = 0;
    let mut next_progress = Duration::from_secs(60);
    let mut outage_started: Option<Instant> = None;
    let mut outage_total = Duration::ZERO;
    let mut tmpfs_peak = 0u64;
    let mut clock_jumps = Vec::new();
    let mut failure: Option<String> = None;
    let mut last_written = 0u64;
    let mut last_progress = Instant::now();
    let mut last_poll = Instant::now();
    while started.elapsed() < total && failure.is_none() {
        while next < events.len() && events[next].0 <= started.elapsed() {
            let (_, event) = events[next];
            next += 1;
            let t = stamp(started);
            match event {
                Event::KillAgent => {
                    stack.kill_agent();
                    println!(
                        "{t} SIGKILL agent (#{} of {}), restarted",
                        stack.agent_kills + stack.aggregator_kills,
                        args.kills
                    );
                }
                Event::KillAggregator => match stack.kill_aggregator() {
                    Ok(took) => println!(
                        "{t} SIGKILL aggregator (#{} of {}), answering again after {:.2} s",
                        stack.agent_kills + stack.aggregator_kills,
                        args.kills,
                        took.as_secs_f64()
                    ),
                    Err(e) => failure = Some(e),
                },
                Event::OutageStart => {
                    d.set_behaviour(Behaviour {
                        outage: Outage::Refuse,
                        ..d.behaviour()
                    });
                    outage_started = Some(Instant::now());
                    println!("{t} sink outage starts: the double refuses connections");
                }
                Event::OutageEnd => {
                    d.set_behaviour(Behaviour {
                        outage: Outage::None,
                        ..d.behaviour()
                    });
                    if let Some(s) = outage_started.take() {
                        outage_total += s.elapsed();
                    }
                    println!(
                        "{t} sink outage ends after {:.1} min",
                        outage_total.as_secs_f64() / 60.0
                    );
                }
                Event::StormStart => {
                    fleet.set_rate(storm_tick);
                    println!(
                        "{t} rotation storm: {} lines/s per container",
                        storm_tick as f64 / fleet::TICK_SECONDS
                    );
                }
                Event::StormEnd => {
                    fleet.set_rate(per_tick);
                    println!("{t} rotation storm over");
                }
                Event::RequestBurst429 => {
                    d.script(Script {
                        items: Vec::new(),
                        requests: vec![429; 40],
                    });
                    println!("{t} 429 burst: the next 40 bulk requests are answered 429");
                }
                Event::Items429Start => {
                    d.set_behaviour(Behaviour {
                        item_429_rate: 0.3,
                        ..d.behaviour()
                    });
                    println!("{t} 429 storm: 30 % of bulk items answered 429");
                }
                Event::Items429End => {
                    d.set_behaviour(Behaviour {
                        item_429_rate: 0.0,
                        ..d.behaviour()
                    });
                    println!("{t} 429 storm over");
                }
                Event::ClockOffset(s) => {
                    if args.faketime {
                        stack::set_clock_offset(&clock_file, s);
                        clock_jumps.push(s);
                        println!("{t} clock jump: agent and aggregator wall clocks now at true time {s:+} s");
                    }
                }
            }
        }
        tmpfs_peak = tmpfs_peak.max(tmpfs.used());
        if started.elapsed() >= next_progress {
            next_progress += Duration::from_secs(60);
            let page = stack.poll();
            let written: u64 = fleet.written().iter().sum();
            let stats = d.stats();
            let dead = metric(
                &page,
                "ferry_sink_items_total{sink=\"elasticsearch\",result=\"dead_lettered\"}",
            );
            println!(
                "{} progress: written {written} ({:.0}/s), indexed {} ids ({} creates answered 409 so far), dead letters this incarnation {dead}, queue {:.2} MiB, tmpfs {:.2}/{} MiB (peak {:.2}), kills {} agent + {} aggregator, 503s answered >= {}, 500s >= {}{}",
                stamp(started),
                (written - last_written) as f64 / last_progress.elapsed().as_secs_f64(),
                stats.distinct_ids,
                stats.items.get("conflict").copied().unwrap_or(0),
                metric(&page, "ferry_queue_bytes") / 1048576.0,
                tmpfs.used() as f64 / 1048576.0,
                args.tmpfs_mib,
                tmpfs_peak as f64 / 1048576.0,
                stack.agent_kills,
                stack.aggregator_kills,
                stack.ingest_503.value(),
                stack.ingest_500.value(),
                if outage_started.is_some() { ", outage on" } else { "" },
            );
            last_written = written;
            last_progress = Instant::now();
        } else if last_poll.elapsed() >= Duration::from_secs(2) {
            stack.poll();
            last_poll = Instant::now();
        }
        if !stack.agent.alive() {
            failure = Some(format!(
                "the agent exited on its own: {}",
                stack::tail(&stack.agent_recipe.log)
            ));
        }
        if !stack.aggregator.alive() {
            failure = Some(format!(
                "the aggregator exited on its own: {}",
                stack::tail(&stack.aggregator_recipe.log)
            ));
        }
        pause(Duration::from_millis(200));
    }
    // Whatever the schedule left on: off.
    d.set_behaviour(Behaviour::default());
    if let Some(s) = outage_started.take() {
        outage_total += s.elapsed();
    }
    stack::set_clock_offset(&clock_file, 0);
    fleet.set_rate(per_tick);
    if let Some(f) = &failure {
        println!("{} FAILED: {f}", stamp(started));
        return false;
    }
    let counts = fleet.stop();
    let expected: u64 = counts.iter().map(|(_, c)| c).sum();
    println!(
        "{} containers stopped: {expected} lines written; draining",
        stamp(started)
    );

    // Drain: until every line is indexed or dead-lettered, or nothing moved for 3 minutes.
    let dl_dir = tmpfs.path.join("sinks/elasticsearch/dead-letter");
    let drain_started = Instant::now();
    let mut last_done = 0;
    let mut last_move = Instant::now();
    loop {
        stack.poll();
        let dead: std::collections::HashSet<String> = reconcile::dead_letters(&dl_dir)
            .into_iter()
            .map(|l| l.id)
            .collect();
        let done = d.stats().distinct_ids + dead.len() as u64;
        if done >= expected {
            break;
        }
        if done != last_done {
            last_done = done;
            last_move = Instant::now();
        }
        if last_move.elapsed() > Duration::from_secs(180)
            || drain_started.elapsed() > Duration::from_secs(1200)
        {
            println!("{} drain stalled at {done} of {expected}", stamp(started));
            break;
        }
        pause(Duration::from_secs(1));
    }
    // The sink must have nothing left and the queue no damage.
    let page = wait_settled(&mut stack);
    let queue_left = metric(&page, "ferry_sink_queue_bytes{sink=\"elasticsearch\"}");
    let damaged = metric(&page, "ferry_queue_damaged_bytes_total");
    let damaged_dir = tmpfs.path.join("queue/damaged");
    let damaged_files = std::fs::read_dir(&damaged_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    let agent_code = stack.agent.terminate().code();
    let aggregator_code = stack.aggregator.terminate().code();
    let drained_in = drain_started.elapsed();

    let letters = reconcile::dead_letters(&dl_dir);
    let docs = d.docs();
    let stats = d.stats();
    let o = reconcile::reconcile(&counts, args.bad_every, &docs, &letters);
    drop(docs);
    // What Docker kept: the most files any container had (it deletes only past max-file).
    let most_files = fleet
        .log_paths()
        .iter()
        .map(|p| {
            (1..=log_opts.max_file)
                .take_while(|n| Path::new(&format!("{}.{n}", p.display())).exists())
                .count()
                + 1
        })
        .max()
        .unwrap_or(0);
    let agent_log = &stack.agent_recipe.log;
    let agg_log = &stack.aggregator_recipe.log;
    let agent_503 = Stack::count_log(agent_log, &["asked to slow down", "status=503"]);
    let agent_5xx = Stack::count_log(agent_log, &["Aggregator failed the batch", "status=5"]);
    let enospc = Stack::count_log(agg_log, &["No space left on device"]);
    let corrupt_logged = Stack::count_log(agg_log, &["damaged"]);
    let jumped_docs = docs_ingested_in_future(d, 1800);

    println!();
    println!("soak report (seed {}):", args.seed);
    println!(
        "  run              {:.1} min of load + {:.1} min drain, {} containers, Docker json-file max-size={} max-file={} (most files kept by one container: {most_files}{})",
        args.minutes,
        drained_in.as_secs_f64() / 60.0,
        args.containers,
        log_opts.max_size,
        log_opts.max_file,
        if most_files < log_opts.max_file as usize { ": Docker deleted nothing" } else { ": Docker may have deleted files" },
    );
    println!(
        "  kills survived   {} ({} agent, {} aggregator; slowest aggregator restart {:.2} s)",
        stack.agent_kills + stack.aggregator_kills,
        stack.agent_kills,
        stack.aggregator_kills,
        stack.slowest_aggregator_restart.as_secs_f64()
    );
    println!(
        "  outage           {:.1} min (connections refused)",
        outage_total.as_secs_f64() / 60.0
    );
    println!(
        "  disk full        tmpfs {} MiB, peak use {:.2} MiB; ingest answered 503 >= {} times (aggregator metrics, sampled), the agent logged {agent_503} 503s and {agent_5xx} other 5xx; aggregator logged ENOSPC {enospc} times",
        args.tmpfs_mib,
        tmpfs_peak as f64 / 1048576.0,
        stack.ingest_503.value(),
    );
    println!(
        "  queue            {queue_left} bytes left for the sink at the end, damaged bytes {damaged} (last incarnation), {damaged_files} files under queue/damaged, {corrupt_logged} log lines about damage"
    );
    println!(
        "  clock jump       {}; documents whose event.ingested is over 30 min ahead of true time: {jumped_docs}",
        if clock_jumps.is_empty() {
            "not done".to_string()
        } else {
            format!("offsets {clock_jumps:?} s applied to agent and aggregator")
        }
    );
    println!(
        "  double           {} bulk requests by status {:?}, items {:?}",
        stats.bulk_requests.values().sum::<u64>(),
        stats.bulk_requests,
        stats.items
    );
    println!("  written          {}", o.written);
    println!(
        "  indexed          {} lines in {} documents",
        o.indexed_lines, o.docs
    );
    println!(
        "  dead-lettered    {} lines ({} dead-letter records, {} repeats of a line), injected {}{}",
        o.dead_lettered,
        o.dead_letter_lines,
        o.dead_letter_repeats,
        o.injected,
        if o.dead_lettered == o.injected {
            ": equal"
        } else {
            ": DIFFERENT"
        }
    );
    for ((status, kind), (n, reason)) in &o.reasons {
        println!("    {n} × {status} {kind}: {reason}");
    }
    if !o.unexpected_dead.is_empty() {
        println!(
            "  unexpected dead letters {}: {:?}",
            o.unexpected_dead.len(),
            &o.unexpected_dead[..o.unexpected_dead.len().min(10)]
        );
    }
    if o.injected_indexed > 0 {
        println!("  injected lines indexed anyway: {}", o.injected_indexed);
    }
    println!("  lost             {} {:?}", o.lost, o.lost_examples);
    println!(
        "  duplicated       {} {:?}",
        o.duplicated, o.duplicate_examples
    );
    if o.foreign > 0 {
        println!("  foreign documents {}", o.foreign);
    }
    println!("  exits            agent {agent_code:?}, aggregator {aggregator_code:?} on SIGTERM");
    let passed = o.passed() && queue_left == 0.0 && damaged_files == 0;
    println!(
        "  verdict          {}",
        if passed { "PASS" } else { "FAIL" }
    );
    passed
}

/// The aggregator's page once its Elasticsearch sink has nothing left (or after 60 s).
fn wait_settled(stack: &mut Stack) -> String {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let page = stack.poll();
        let left = metric(&page, "ferry_sink_queue_bytes{sink=\"elasticsearch\"}");
        if (!page.is_empty() && left == 0.0) || Instant::now() > end {
            return page;
        }
        pause(Duration::from_millis(500));
    }
}

/// Documents whose `event.ingested` (the aggregator's wall clock) is more than `ahead_seconds`
/// after the double's own (true) clock created them: the clock jump's trace.
fn docs_ingested_in_future(d: &ferry_es_double::DoubleHandle, ahead_seconds: i64) -> usize {
    d.docs()
        .iter()
        .filter_map(|doc| {
            let v: serde_json::Value = serde_json::from_str(doc.source.as_deref()?).ok()?;
            let t = chrono::DateTime::parse_from_rfc3339(v["event"]["ingested"].as_str()?).ok()?;
            let ahead_ms = t.timestamp_millis() - doc.created_unix_ms as i64;
            (ahead_ms > ahead_seconds * 1000).then_some(())
        })
        .count()
}
