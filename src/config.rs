//! The `ferry` configuration file: one TOML file with an `[agent]` and/or an `[aggregator]` table.
//!
//! Each table is owned and validated by its crate; this module only reads the file, reports every
//! problem with its location (`ferry check`, both tables), and hands each command its own table:
//! `ferry agent` reads and checks only `[agent]`, `ferry aggregator` only `[aggregator]`, so a
//! mistake in one table never stops the other command.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ferry_agent::AgentConfig;
use ferry_aggregator::AggregatorConfig;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The tables a configuration file may hold (their contents are read by [`AgentFile`] and
/// [`AggregatorFile`]); anything else at the top level is refused by `ferry check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tables {
    /// Settings of `ferry agent`.
    #[serde(default)]
    #[allow(dead_code)]
    agent: Option<IgnoredAny>,
    /// Settings of `ferry aggregator`.
    #[serde(default)]
    #[allow(dead_code)]
    aggregator: Option<IgnoredAny>,
}

/// The file as `ferry agent` reads it: its own table only; the rest of the file is not parsed
/// (a problem there is for `ferry check` and the command that owns it).
#[derive(Debug, Deserialize)]
struct AgentFile {
    agent: Option<AgentConfig>,
}

/// The file as `ferry aggregator` reads it: its own table only.
#[derive(Debug, Deserialize)]
struct AggregatorFile {
    aggregator: Option<AggregatorConfig>,
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

/// Every problem in the configuration file at `path`, in both tables, each as one line starting
/// with the file name.
pub fn check(path: &Path) -> Vec<String> {
    let text = match read(path) {
        Ok(text) => text,
        Err(problem) => return vec![problem],
    };
    // A syntax error concerns the whole file: nothing else can be read.
    let table = match toml::from_str::<toml::Table>(&text) {
        Ok(table) => table,
        Err(e) => return vec![located(path, &e)],
    };
    let mut problems = Vec::new();
    if let Err(e) = toml::from_str::<Tables>(&text) {
        problems.push(located(path, &e));
    }
    let mut agent = match toml::from_str::<AgentFile>(&text) {
        Ok(file) => file.agent,
        Err(e) => {
            problems.push(located(path, &e));
            None
        }
    };
    if let Some(agent) = &mut agent {
        problems.extend(check_agent(path, agent));
    }
    let mut aggregator = match toml::from_str::<AggregatorFile>(&text) {
        Ok(file) => file.aggregator,
        Err(e) => {
            problems.push(located(path, &e));
            None
        }
    };
    if let Some(aggregator) = &mut aggregator {
        problems.extend(check_aggregator(path, aggregator));
    }
    if !table.contains_key("agent") && !table.contains_key("aggregator") {
        problems.push(format!(
            "{}: neither an [agent] nor an [aggregator] table: nothing to run",
            path.display()
        ));
    }
    problems
}

/// The problems of an `[agent]` table (its values, the token file and environment variable it
/// names, which are read into it, and the rules it names).
fn check_agent(path: &Path, agent: &mut AgentConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = agent.resolve(|name| std::env::var(name).ok()) {
        problems.push(format!("{}: [agent] {e}", path.display()));
    }
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
    problems
}

/// The problems of an `[aggregator]` table (its values, the secret files it names, which are
/// read into it, and its alert rule files).
fn check_aggregator(path: &Path, aggregator: &mut AggregatorConfig) -> Vec<String> {
    let mut problems: Vec<String> = aggregator
        .resolve()
        .into_iter()
        .chain(aggregator.problems())
        .map(|e| format!("{}: [aggregator] {e}", path.display()))
        .collect();
    if let Some(alerts) = &aggregator.alerts {
        problems.extend(
            ferry_aggregator::check_rules(alerts)
                .iter()
                .map(|e| format!("{}: [aggregator.alerts] rule_paths: {e}", path.display())),
        );
    }
    problems
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the configuration: {e}", path.display()))
}

fn located(path: &Path, e: &toml::de::Error) -> String {
    format!("{}: {}", path.display(), one_line(e))
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

/// Fails with every problem, one per line.
fn refuse(problems: Vec<String>) -> anyhow::Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

/// The `[agent]` table of `path`, or the defaults when no file is given. Only that table is read
/// and checked: an `[aggregator]` table in the same file is the aggregator's business.
pub fn agent(path: Option<&PathBuf>) -> anyhow::Result<AgentConfig> {
    own_table(
        path,
        "agent",
        |text| toml::from_str::<AgentFile>(text).map(|f| f.agent),
        check_agent,
    )
}

/// The `[aggregator]` table of `path`, or the defaults when no file is given. Only that table is
/// read and checked: an `[agent]` table in the same file is the agent's business.
pub fn aggregator(path: Option<&PathBuf>) -> anyhow::Result<AggregatorConfig> {
    own_table(
        path,
        "aggregator",
        |text| toml::from_str::<AggregatorFile>(text).map(|f| f.aggregator),
        check_aggregator,
    )
}

/// The `[name]` table of `path` as `parse` reads it, refused on any problem `check` finds; the
/// defaults without a file.
fn own_table<T: Default>(
    path: Option<&PathBuf>,
    name: &str,
    parse: fn(&str) -> Result<Option<T>, toml::de::Error>,
    check: fn(&Path, &mut T) -> Vec<String>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = read(path).map_err(|p| anyhow::anyhow!(p))?;
    let mut table = parse(&text)
        .map_err(|e| anyhow::anyhow!(located(path, &e)))?
        .with_context(|| format!("{}: no [{name}] table", path.display()))?;
    refuse(check(path, &mut table))?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGGREGATOR: &str =
        "[aggregator]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"/tmp/ferry-test\"\n";
    const AGENT: &str =
        "[agent]\nhost_name = \"node-1\"\naggregator_url = \"http://127.0.0.1:7480\"\n";

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// Regression (review of issue 10): `ferry aggregator --config` refused to start over
    /// errors in the `[agent]` table of the same file.
    #[test]
    fn each_command_reads_and_checks_only_its_own_table() {
        for broken_agent in [
            "[agent]\nmax_line_bytes = \"big\"\n",
            "[agent]\naggregator_url = \"not a url\"\n",
            "[agent]\ncolour = \"blue\"\n",
        ] {
            let (_dir, path) = file(&format!("{AGGREGATOR}{broken_agent}"));
            let aggregator = aggregator(Some(&path)).unwrap();
            assert_eq!(aggregator.listen.to_string(), "127.0.0.1:0");
            let err = agent(Some(&path)).unwrap_err().to_string();
            assert!(err.contains("ferry.toml"), "{err}");
        }
        for broken_aggregator in [
            "[aggregator]\nlisten = \"not an address\"\n",
            "[aggregator]\nretry_after_seconds = 0\n",
            "[aggregator]\nlisten_addr = \"0.0.0.0:1\"\n",
        ] {
            let (_dir, path) = file(&format!("{AGENT}{broken_aggregator}"));
            let agent = agent(Some(&path)).unwrap();
            assert_eq!(agent.host_name, "node-1");
            let err = aggregator(Some(&path)).unwrap_err().to_string();
            assert!(err.contains("ferry.toml"), "{err}");
        }
    }

    #[test]
    fn a_command_refuses_every_problem_of_its_own_table_naming_the_field() {
        let (_dir, path) = file(&format!(
            "{AGENT}[aggregator]\nretry_after_seconds = 0\nqueue_segment_bytes = 0\n"
        ));
        let err = aggregator(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("retry_after_seconds"), "{err}");
        assert!(err.contains("queue_segment_bytes"), "{err}");
        let (_dir, path) = file(AGENT);
        let err = aggregator(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("no [aggregator] table"), "{err}");
    }

    #[test]
    fn check_reports_the_problems_of_both_tables_at_once() {
        let (_dir, path) = file(
            "[agent]\nmax_line_bytes = \"big\"\n[aggregator]\nretry_after_seconds = 0\n[aggregater]\nlisten = \"x\"\n",
        );
        let problems = check(&path);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems
            .iter()
            .all(|p| p.starts_with(path.to_str().unwrap())));
        assert!(
            problems.iter().any(|p| p.contains("aggregater")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("max_line_bytes")),
            "{problems:#?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("retry_after_seconds")),
            "{problems:#?}"
        );
        let (_dir, path) = file("[agent\n");
        assert_eq!(check(&path).len(), 1, "a syntax error is the one problem");
        let (_dir, path) = file(&format!("{AGENT}{AGGREGATOR}"));
        assert_eq!(check(&path), Vec::<String>::new());
    }

    #[test]
    fn both_commands_take_the_token_from_its_file_and_the_agent_its_host_name_from_the_environment()
    {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("ferry_token");
        std::fs::write(&secret, "s3cret\n").unwrap();
        // A name no other test uses: the process environment is shared by the tests.
        std::env::set_var("FERRY_CONFIG_TEST_NODE_NAME", "node-from-env");
        let (_dir, path) = file(&format!(
            "[agent]\ntoken_file = {secret:?}\nhost_name_env = \"FERRY_CONFIG_TEST_NODE_NAME\"\n\
             [aggregator]\ntoken_file = {secret:?}\n"
        ));
        let agent = agent(Some(&path)).unwrap();
        assert_eq!(agent.token.as_deref(), Some("s3cret"));
        assert_eq!(agent.host_name, "node-from-env");
        let aggregator = aggregator(Some(&path)).unwrap();
        assert_eq!(aggregator.read_tokens().unwrap(), ["s3cret"]);
        assert_eq!(check(&path), Vec::<String>::new());

        let (_dir, path) = file(
            "[agent]\ntoken_file = \"/nonexistent/agent_token\"\nhost_name_env = \"FERRY_CONFIG_TEST_UNSET\"\n\
             [aggregator]\ntoken_file = \"/nonexistent/aggregator_token\"\n",
        );
        let problems = check(&path).join("\n");
        for needle in [
            "/nonexistent/agent_token",
            "FERRY_CONFIG_TEST_UNSET",
            "/nonexistent/aggregator_token",
        ] {
            assert!(problems.contains(needle), "{needle} in {problems}");
        }
    }
}
