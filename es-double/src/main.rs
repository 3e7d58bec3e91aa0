//! `ferry-es-double`: the Elasticsearch test double as a process, for end-to-end tests and
//! benchmarks. Prints `es=<addr> control=<addr>` on one stdout line once both ports listen, then
//! serves until SIGINT/SIGTERM, or, with `--stdin-lifeline`, until its stdin closes (so a test
//! that dies takes its double with it).
//!
//! ```text
//! ferry-es-double [--listen ADDR] [--control-listen ADDR] [--seed N] [--version X.Y.Z]
//!                 [--distribution elasticsearch|opensearch] [--item-429-rate F]
//!                 [--mapping-error-rate F] [--latency-ms N] [--keep-sources]
//!                 [--no-mapping-check] [--max-content-length BYTES] [--stdin-lifeline]
//! ```
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use ferry_es_double::{start, Options};

fn parse_args() -> Result<(Options, bool), String> {
    let mut o = Options::default();
    let mut lifeline = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let bad = |flag: &str, e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--listen" => o.listen = value()?.parse().map_err(|e| bad(&flag, &e))?,
            "--control-listen" => {
                o.control_listen = value()?.parse().map_err(|e| bad(&flag, &e))?
            }
            "--seed" => o.seed = value()?.parse().map_err(|e| bad(&flag, &e))?,
            "--version" => o.version = value()?,
            "--distribution" => o.distribution = value()?,
            "--item-429-rate" => {
                o.behaviour.item_429_rate = value()?.parse().map_err(|e| bad(&flag, &e))?
            }
            "--mapping-error-rate" => {
                o.behaviour.mapping_error_rate = value()?.parse().map_err(|e| bad(&flag, &e))?
            }
            "--latency-ms" => {
                o.behaviour.latency_ms = value()?.parse().map_err(|e| bad(&flag, &e))?
            }
            "--keep-sources" => o.keep_sources = true,
            "--stdin-lifeline" => lifeline = true,
            "--no-mapping-check" => o.mapping_check = false,
            "--max-content-length" => {
                o.max_content_length = value()?.parse().map_err(|e| bad(&flag, &e))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !matches!(o.distribution.as_str(), "elasticsearch" | "opensearch") {
        return Err(format!(
            "--distribution: {:?} is neither elasticsearch nor opensearch",
            o.distribution
        ));
    }
    Ok((o, lifeline))
}

fn main() -> ExitCode {
    let (options, lifeline) = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ferry-es-double: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry-es-double: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let double = match start(options).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("ferry-es-double: cannot listen: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("es={} control={}", double.addr(), double.control_addr());
        let _ = std::io::stdout().flush();
        let stdin_closed = async {
            if lifeline {
                let _ = tokio::task::spawn_blocking(|| {
                    let mut sink = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
                })
                .await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("ferry-es-double: cannot listen for SIGTERM: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = stdin_closed => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        drop(double);
        ExitCode::SUCCESS
    })
}
