//! `ferry`: one binary, a thin command line over the agent, the aggregator and the local store.
#![forbid(unsafe_code)]

mod config;
mod demo;
mod generator;
mod health;
mod parse;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ships container logs and stats from every node to one place"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-node agent: tail container logs and forward them to an aggregator.
    Agent {
        /// Configuration file (TOML, `[agent]` table). Without it, the documented defaults apply.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run the aggregator: receive batches, queue them durably and store them.
    Aggregator {
        /// Configuration file (TOML, `[aggregator]` table). Without it, the documented defaults apply.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run an aggregator with the local store plus an agent on this host, in one process.
    Demo(demo::DemoArgs),
    /// Search the local store.
    Search(SearchArgs),
    /// Write a file of realistic nginx access lines (plain, Docker json-file or CRI), for trials and benchmarks.
    Generate {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Format of the file.
        #[arg(long, value_enum, default_value = "docker")]
        format: generator::Format,
        /// Stop once the file holds at least this many bytes.
        #[arg(long, default_value_t = 100 << 20)]
        bytes: u64,
        /// Seed: the same seed writes the same lines.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Validate configuration files, rule files and rule directories; report every problem with its location.
    Check {
        /// Configuration files (`[agent]`/`[aggregator]`), rule files (`[[rule]]`) or directories of rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Probe a `/health` URL (the images' health check: they hold no curl or shell); exits 0 on a 2xx answer.
    Health {
        /// The URL, e.g. `http://127.0.0.1:7481/health` (the agent's) or `http://127.0.0.1:7480/health`.
        url: String,
        /// Time limit of the probe, in milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Run a parsing rule over sample lines and print one JSON object per event, nested as the store holds it.
    Parse {
        /// Rule name (or several, comma-separated, as in the `ferry.parser` label).
        #[arg(long)]
        rule: String,
        /// Extra rule files or directories, loaded before the built-in rules.
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// Input file; standard input when absent.
        file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct SearchArgs {
    /// The aggregator's data directory (the store is its `store/` folder).
    #[arg(long, default_value = "/var/lib/ferry/aggregator")]
    data_dir: PathBuf,
    /// Start of the time range: RFC 3339 (`2026-11-28T08:00:00Z`) or a duration before now with
    /// its unit (`30s`, `10m`, `2h`, `7d`; at most 36525d). A bare number is refused.
    #[arg(long)]
    since: Option<String>,
    /// End of the time range, same forms as --since.
    #[arg(long)]
    until: Option<String>,
    /// Container name, or a prefix of its id.
    #[arg(long)]
    container: Option<String>,
    /// Kubernetes namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Kubernetes pod name.
    #[arg(long)]
    pod: Option<String>,
    /// `stdout` or `stderr`.
    #[arg(long)]
    stream: Option<String>,
    /// Log level, the source's own name (`notice`, `crit`) or the normalised one (`error`, `warn`,
    /// `info`, …).
    #[arg(long)]
    level: Option<String>,
    /// Only messages containing this text.
    #[arg(long)]
    grep: Option<String>,
    /// Only messages matching this regular expression.
    #[arg(long)]
    regex: Option<String>,
    /// Stop after this many matches.
    #[arg(long)]
    limit: Option<usize>,
    /// One stored JSON record per line instead of readable lines.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo has its own status line: keep the log to what needs attention.
    init_tracing(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    });
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr; `FERRY_LOG` (e.g. `debug`, `ferry_agent=debug`) overrides `default`.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent { config } => {
            let config = config::agent(config.as_ref())?;
            runtime()?.block_on(async {
                let agent = ferry_agent::start(config).await?;
                tracing::info!(metrics = %agent.metrics_addr(), "Agent started");
                // SIGHUP reloads the parser rules; the agent logs the outcome, and a rule set
                // that does not compile leaves the previous one in place.
                let mut hangup =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                        .context("cannot listen for SIGHUP")?;
                let stop = shutdown_signal();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = hangup.recv() => {
                            let _ = agent.reload_rules().await;
                        }
                    }
                }
                agent.shutdown().await;
                anyhow::Ok(())
            })?;
        }
        Command::Aggregator { config } => {
            let config = config::aggregator(config.as_ref())?;
            runtime()?.block_on(async {
                let aggregator = ferry_aggregator::start(config).await?;
                tracing::info!(listen = %aggregator.local_addr(), "Aggregator started");
                shutdown_signal().await;
                aggregator.shutdown().await;
                anyhow::Ok(())
            })?;
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args))?,
        Command::Search(args) => return search(args),
        Command::Generate {
            out,
            format,
            bytes,
            seed,
        } => {
            let lines = generator::generate_file(&out, format, bytes, seed)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {lines} lines to {}", out.display());
        }
        Command::Health { url, timeout_ms } => {
            return Ok(
                match health::probe(&url, std::time::Duration::from_millis(timeout_ms)) {
                    Ok(status) => {
                        println!("{status}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("ferry health: {e:#}");
                        ExitCode::FAILURE
                    }
                },
            );
        }
        Command::Parse { rule, rules, file } => return parse::run(&rule, &rules, file.as_deref()),
        Command::Check { files } => {
            let mut bad = 0;
            for file in &files {
                let problems = config::check_any(file);
                if problems.is_empty() {
                    println!("{}: ok", file.display());
                } else {
                    bad += 1;
                    for p in problems {
                        println!("{p}");
                    }
                }
            }
            return Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what Docker and Kubernetes send).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
    tracing::info!("Shutting down");
}

fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let regex = args
        .regex
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("--regex is not a valid regular expression")?;
    let now = Utc::now();
    let bound = |value: &Option<String>| {
        value
            .as_deref()
            .map(|v| ferry_aggregator::parse_time_bound(v, now))
            .transpose()
    };
    let query = ferry_aggregator::SearchQuery {
        since: bound(&args.since).context("--since")?,
        until: bound(&args.until).context("--until")?,
        container: args.container,
        namespace: args.namespace,
        pod: args.pod,
        stream: args.stream,
        level: args.level,
        text: args.grep,
        regex,
        limit: args.limit,
    };
    let store = ferry_aggregator::store_dir(&args.data_dir);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let found = ferry_aggregator::search(&store, &query, args.json, &mut out)
        .with_context(|| format!("searching {}", store.display()))?;
    drop(out);
    eprintln!("{found} matching records");
    Ok(ExitCode::SUCCESS)
}
