//! `ferry demo`: an aggregator with the local store plus an agent, in one process, on this host.
//!
//! It tails this host's container logs (Docker json-file and Kubernetes CRI, at the default paths);
//! where there are none, it says so and starts a small generator of realistic container logs so
//! there is something to carry. A status line shows the flow; Ctrl-C stops everything cleanly.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_agent::AgentConfig;
use ferry_aggregator::{AggregatorConfig, SinkConfig};

use crate::generator::DemoWorkload;

/// Options of `ferry demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps everything: the store (`aggregator/`), checkpoints (`agent/`) and
    /// generated logs (`generated/`).
    #[arg(long, default_value = "ferry-demo")]
    data_dir: PathBuf,
    /// Address of the demo aggregator (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
    /// Whether to run the log generator: `auto` runs it when this host has no container logs.
    #[arg(long, value_enum, default_value = "auto")]
    generator: GeneratorMode,
    /// Lines per second the generator writes.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Stop by itself after this many seconds (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration_seconds: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GeneratorMode {
    Auto,
    Always,
    Never,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the demo directory {}",
            args.data_dir.display()
        )
    })?;
    let dir = std::fs::canonicalize(&args.data_dir)?;

    let mut aggregator_config = AggregatorConfig {
        listen: args.listen,
        data_dir: dir.join("aggregator"),
        sink: SinkConfig::default(),
        ..AggregatorConfig::default()
    };
    let aggregator = match ferry_aggregator::start(aggregator_config.clone()).await {
        Ok(a) => a,
        Err(e) if args.listen.port() != 0 => {
            println!(
                "ferry demo: {} is taken ({e}); using a free port instead",
                args.listen
            );
            aggregator_config.listen.set_port(0);
            ferry_aggregator::start(aggregator_config).await?
        }
        Err(e) => return Err(e.into()),
    };

    let mut agent_config = AgentConfig {
        data_dir: dir.join("agent"),
        aggregator_url: format!("http://{}", aggregator.local_addr()),
        metrics_listen: "127.0.0.1:0".parse().expect("valid address"),
        ..AgentConfig::default()
    };
    let host_files = count_matches(&agent_config.include);
    let generate = match args.generator {
        GeneratorMode::Always => true,
        GeneratorMode::Never => false,
        GeneratorMode::Auto => host_files == 0,
    };
    println!("ferry demo: everything lives under {}", dir.display());
    if host_files > 0 {
        println!("ferry demo: tailing {host_files} container log files on this host");
    } else {
        println!(
            "ferry demo: no container logs on this host (looked in {})",
            agent_config.include.join(", ")
        );
    }
    let stop_generator = Arc::new(AtomicBool::new(false));
    let mut generator_thread = None;
    if generate {
        let workload = DemoWorkload::new(dir.join("generated"));
        println!(
            "ferry demo: generating {} lines/s of realistic container logs under {}",
            args.rate,
            dir.join("generated").display()
        );
        agent_config.include.extend(workload.include_globs());
        let stop = stop_generator.clone();
        let rate = args.rate;
        generator_thread = Some(std::thread::spawn(move || {
            if let Err(e) = workload.run(rate, stop) {
                tracing::error!(error = %e, "Demo log generator stopped");
            }
        }));
    }

    let agent = ferry_agent::start(agent_config).await?;
    println!();
    println!(
        "  aggregator metrics:  http://{}/metrics",
        aggregator.local_addr()
    );
    println!(
        "  agent metrics:       http://{}/metrics",
        agent.metrics_addr()
    );
    println!(
        "  search the store:    ferry search --data-dir {} --since 10m",
        dir.join("aggregator").display()
    );
    println!(
        "                       ferry search --data-dir {} --container web-1 --grep POST",
        dir.join("aggregator").display()
    );
    println!("  stop:                Ctrl-C");
    println!();

    let deadline = (args.duration_seconds > 0)
        .then(|| Instant::now() + Duration::from_secs(args.duration_seconds));
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last = (agent.status(), Instant::now());
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {
                ticks += 1;
                let (a, g) = (agent.status(), aggregator.status());
                let secs = last.1.elapsed().as_secs_f64().max(0.001);
                let lines_s = (a.lines_read - last.0.lines_read) as f64 / secs;
                let mib_s = (a.bytes_read - last.0.bytes_read) as f64 / secs / 1048576.0;
                let line = format!(
                    "[{:>4}s] files {} | {:>7.0} lines/s | {:>6.2} MiB/s | read {} | queued {} | stored {} | dup-suppressed {} | errors {}",
                    started.elapsed().as_secs(), a.files_tailed, lines_s, mib_s, a.lines_read,
                    g.queue_records, g.records_stored, g.duplicates_suppressed, a.errors + g.errors
                );
                if tty {
                    print!("\r{line}\x1b[K");
                    let _ = std::io::stdout().flush();
                } else if ticks.is_multiple_of(5) {
                    println!("{line}");
                }
                last = (a, Instant::now());
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    if tty {
        println!();
    }
    println!("ferry demo: stopping");
    stop_generator.store(true, Ordering::Relaxed);
    if let Some(t) = generator_thread {
        // Joining blocks: not on an async worker.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    agent.shutdown().await;
    let last = aggregator.shutdown().await;
    println!(
        "ferry demo: stopped; {} records stored, {} left queued for the next start. Try: ferry search --data-dir {} --since 1h",
        last.records_stored,
        last.queue_records,
        dir.join("aggregator").display()
    );
    Ok(())
}

fn count_matches(globs: &[String]) -> usize {
    globs
        .iter()
        .filter_map(|g| glob::glob(g).ok())
        .flat_map(|paths| paths.flatten())
        .filter(|p| std::fs::File::open(p).is_ok())
        .count()
}
