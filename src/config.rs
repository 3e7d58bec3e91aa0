//! The `ferry` configuration file: one TOML file with an `[agent]` and/or an `[aggregator]` table.
//!
//! Each table is owned and validated by its crate; this module only reads the file, reports every
//! problem with its location (`ferry check`), and hands the tables out.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ferry_agent::AgentConfig;
use ferry_aggregator::AggregatorConfig;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FerryConfig {
    /// Settings of `ferry agent`.
    pub agent: Option<AgentConfig>,
    /// Settings of `ferry aggregator`.
    pub aggregator: Option<AggregatorConfig>,
}

/// Reads and validates `path`; every problem is reported in one error, each naming the file.
pub fn load(path: &Path) -> anyhow::Result<FerryConfig> {
    let problems = check(path);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    parse(path).map_err(|p| anyhow::anyhow!(p))
}

/// Every problem in `path`, which may be a configuration file, a rule file (one with `[[rule]]`
/// tables) or a directory of rule files; each problem is one line naming the file.
pub fn check_any(path: &Path) -> Vec<String> {
    let is_rules = path.is_dir()
        || std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .is_some_and(|table| table.contains_key("rule"));
    if is_rules {
        ferry_parsers::check_rule_files(&[path.to_path_buf()])
            .iter()
            .map(|e| e.to_string())
            .collect()
    } else {
        check(path)
    }
}

/// Every problem in the configuration file at `path`, each as one line starting with the file name.
pub fn check(path: &Path) -> Vec<String> {
    let config = match parse(path) {
        Ok(c) => c,
        Err(problem) => return vec![problem],
    };
    let mut problems = Vec::new();
    if let Some(agent) = &config.agent {
        if let Err(e) = agent.validate() {
            problems.push(format!("{}: [agent] {e}", path.display()));
        }
        if let Err(errors) = ferry_parsers::RuleSet::load(&agent.rules_dirs, true) {
            problems.extend(
                errors
                    .iter()
                    .map(|e| format!("{}: [agent] rules_dirs: {e}", path.display())),
            );
        }
    }
    if let Some(aggregator) = &config.aggregator {
        if let Err(e) = aggregator.validate() {
            problems.push(format!("{}: [aggregator] {e}", path.display()));
        }
    }
    if config.agent.is_none() && config.aggregator.is_none() {
        problems.push(format!(
            "{}: neither an [agent] nor an [aggregator] table: nothing to run",
            path.display()
        ));
    }
    problems
}

fn parse(path: &Path) -> Result<FerryConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the configuration: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), one_line(&e)))
}

/// toml's errors render a multi-line snippet; keep the location and the message on one line
/// followed by the snippet, which is what an operator wants to see.
fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message();
    match e.span() {
        Some(span) => format!("at byte {}..{}: {msg}\n{e}", span.start, span.end),
        None => msg.to_string(),
    }
}

/// The `[agent]` table of `path`, or the defaults when no file is given.
pub fn agent(path: Option<&PathBuf>) -> anyhow::Result<AgentConfig> {
    match path {
        None => Ok(AgentConfig::default()),
        Some(p) => load(p)?
            .agent
            .with_context(|| format!("{}: no [agent] table", p.display())),
    }
}

/// The `[aggregator]` table of `path`, or the defaults when no file is given.
pub fn aggregator(path: Option<&PathBuf>) -> anyhow::Result<AggregatorConfig> {
    match path {
        None => Ok(AggregatorConfig::default()),
        Some(p) => load(p)?
            .aggregator
            .with_context(|| format!("{}: no [aggregator] table", p.display())),
    }
}
