//! Prometheus rule files (`groups` → `name`, `interval`, `rules` → `alert`/`record`, `expr`,
//! `for`, `keep_firing_for`, `labels`, `annotations`), read from files and directories,
//! checked completely at load: YAML shape and unknown keys, durations, PromQL (parsed by
//! `promql-parser`, then limited to the evaluator's subset), templates. Every problem names
//! the file, the group and the rule. Nothing here evaluates.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use promql_parser::parser::Expr;
use serde::Deserialize;

use super::promql;
use super::template::Template;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    groups: Vec<GroupSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: String,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) kind: RuleKind,
    /// The alert or record name.
    pub(crate) name: String,
    /// The expression as written.
    pub(crate) query: String,
    pub(crate) expr: Expr,
    pub(crate) labels: Vec<(String, Template)>,
    pub(crate) raw_labels: BTreeMap<String, String>,
    pub(crate) raw_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub(crate) enum RuleKind {
    Alert {
        hold: Duration,
        keep_firing_for: Duration,
        annotations: Vec<(String, Template)>,
    },
    Record,
}

/// A group of rules evaluated in order at one interval.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) file: PathBuf,
    pub(crate) interval: Duration,
    pub(crate) rules: Vec<Rule>,
}

/// A problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}{}: {reason}", group.as_ref().map(|g| format!(": group {g:?}")).unwrap_or_default(), rule.as_ref().map(|r| format!(", rule {r:?}")).unwrap_or_default())]
pub struct RuleError {
    pub file: PathBuf,
    pub group: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
}

/// Parses a Prometheus duration (`90s`, `5m`, `1h30m`, `2d`, `1w`, `1y`, `500ms`, `0`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{s:?} is not a duration (e.g. 30s, 5m, 1h30m)");
    let mut total_ms: u64 = 0;
    let mut rest = s;
    let units: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("ms", 1),
        ("m", 60_000),
        ("s", 1000),
    ];
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, ms) = units
            .iter()
            .find(|(u, _)| rest.starts_with(u) && !(*u == "m" && rest.starts_with("ms")))
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        total_ms = total_ms.saturating_add(n.saturating_mul(*ms));
    }
    Ok(Duration::from_millis(total_ms))
}

/// Rule files under `paths`: a file as given, a directory's `*.yml`/`*.yaml` (not recursive),
/// sorted by path.
pub(crate) fn rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RuleError> {
    let mut files = Vec::new();
    for path in paths {
        let io = |e: std::io::Error| RuleError {
            file: path.clone(),
            group: None,
            rule: None,
            reason: e.to_string(),
        };
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            std::fs::metadata(path).map_err(io)?;
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Loads and checks every rule file; returns every problem found (none: the groups).
pub(crate) fn load(
    paths: &[PathBuf],
    default_interval: Duration,
) -> Result<Vec<Group>, Vec<RuleError>> {
    let files = rule_files(paths).map_err(|e| vec![e])?;
    let mut groups = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_file(&file, &text, default_interval) {
                Ok(g) => groups.extend(g),
                Err(mut p) => problems.append(&mut p),
            },
            Err(e) => problems.push(RuleError {
                file: file.clone(),
                group: None,
                rule: None,
                reason: e.to_string(),
            }),
        }
    }
    let mut names = std::collections::HashSet::new();
    for g in &groups {
        if !names.insert((g.file.clone(), g.name.clone())) {
            problems.push(RuleError {
                file: g.file.clone(),
                group: Some(g.name.clone()),
                rule: None,
                reason: "the group name is used twice in this file".into(),
            });
        }
    }
    if problems.is_empty() {
        Ok(groups)
    } else {
        Err(problems)
    }
}

/// Parses one rule file's text.
pub(crate) fn parse_file(
    file: &Path,
    text: &str,
    default_interval: Duration,
) -> Result<Vec<Group>, Vec<RuleError>> {
    let spec: FileSpec = serde_norway::from_str(text).map_err(|e| {
        vec![RuleError {
            file: file.to_path_buf(),
            group: None,
            rule: None,
            reason: e.to_string(),
        }]
    })?;
    let mut problems = Vec::new();
    let mut groups = Vec::new();
    for g in spec.groups {
        let problem = |rule: Option<&str>, reason: String| RuleError {
            file: file.to_path_buf(),
            group: Some(g.name.clone()),
            rule: rule.map(str::to_string),
            reason,
        };
        if g.name.is_empty() {
            problems.push(problem(None, "a group needs a name".into()));
        }
        if g.limit.is_some_and(|l| l > 0) {
            problems.push(problem(None, "`limit` is not supported".into()));
        }
        let interval = match g.interval.as_deref().map(parse_duration) {
            None => default_interval,
            Some(Ok(d)) if d >= Duration::from_secs(1) => d,
            Some(Ok(_)) => {
                problems.push(problem(None, "interval must be at least 1s".into()));
                default_interval
            }
            Some(Err(e)) => {
                problems.push(problem(None, format!("interval: {e}")));
                default_interval
            }
        };
        let mut rules = Vec::new();
        for r in g.rules {
            let name = r
                .alert
                .clone()
                .or_else(|| r.record.clone())
                .unwrap_or_default();
            match build_rule(r) {
                Ok(rule) => rules.push(rule),
                Err(reason) => problems.push(problem(Some(&name), reason)),
            }
        }
        groups.push(Group {
            name: g.name.clone(),
            file: file.to_path_buf(),
            interval,
            rules,
        });
    }
    if problems.is_empty() {
        Ok(groups)
    } else {
        Err(problems)
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn build_rule(r: RuleSpec) -> Result<Rule, String> {
    let (name, alert) = match (&r.alert, &r.record) {
        (Some(a), None) => (a.clone(), true),
        (None, Some(rec)) => (rec.clone(), false),
        (Some(_), Some(_)) => return Err("a rule has either `alert` or `record`, not both".into()),
        (None, None) => return Err("a rule needs `alert` or `record`".into()),
    };
    if name.is_empty() {
        return Err("the rule's name is empty".into());
    }
    if !alert && !valid_metric_name(&name) {
        return Err(format!("{name:?} is not a valid metric name"));
    }
    let expr =
        promql_parser::parser::parse(&r.expr).map_err(|e| format!("expr {:?}: {e}", r.expr))?;
    promql::check(&expr).map_err(|e| format!("expr {:?}: {e}", r.expr))?;
    let returns_vector = !matches!(
        expr.value_type(),
        promql_parser::parser::value::ValueType::Scalar
            | promql_parser::parser::value::ValueType::String
    );
    if !returns_vector {
        return Err(format!(
            "expr {:?}: a rule's expression must give an instant vector",
            r.expr
        ));
    }
    let mut labels = Vec::new();
    for (k, v) in &r.labels {
        if !valid_label_name(k) || k.starts_with("__") {
            return Err(format!("{k:?} is not a valid label name"));
        }
        labels.push((
            k.clone(),
            Template::parse(v).map_err(|e| format!("label {k}: {e}"))?,
        ));
    }
    let kind = if alert {
        let duration = |field: &str, v: &Option<String>| -> Result<Duration, String> {
            v.as_deref()
                .map(parse_duration)
                .transpose()
                .map(Option::unwrap_or_default)
                .map_err(|e| format!("{field}: {e}"))
        };
        let mut annotations = Vec::new();
        for (k, v) in &r.annotations {
            annotations.push((
                k.clone(),
                Template::parse(v).map_err(|e| format!("annotation {k}: {e}"))?,
            ));
        }
        RuleKind::Alert {
            hold: duration("for", &r.for_)?,
            keep_firing_for: duration("keep_firing_for", &r.keep_firing_for)?,
            annotations,
        }
    } else {
        if r.for_.is_some() || r.keep_firing_for.is_some() || !r.annotations.is_empty() {
            return Err(
                "a recording rule takes no `for`, `keep_firing_for` or `annotations`".into(),
            );
        }
        RuleKind::Record
    };
    Ok(Rule {
        kind,
        name,
        query: r.expr.clone(),
        expr,
        labels,
        raw_labels: r.labels,
        raw_annotations: r.annotations,
    })
}

/// How far back the rules read each metric (range plus offset; zero for an instant
/// selector), and how far back any selector without a fixed metric name reads (`None` when
/// every selector names its metric), so the history keeps each series only as long as needed.
pub(crate) fn reach_by_name(groups: &[Group]) -> (HashMap<String, Duration>, Option<Duration>) {
    use promql_parser::parser::{Offset, VectorSelector};
    fn visit(e: &Expr, by_name: &mut HashMap<String, Duration>, nameless: &mut Option<Duration>) {
        let mut selector = |vs: &VectorSelector, range: Duration| {
            let offset = match &vs.offset {
                Some(Offset::Pos(d)) => *d,
                _ => Duration::ZERO,
            };
            let reach = range + offset;
            let name = vs.name.clone().or_else(|| {
                vs.matchers
                    .matchers
                    .iter()
                    .find(|m| {
                        m.name == "__name__" && matches!(m.op, promql_parser::label::MatchOp::Equal)
                    })
                    .map(|m| m.value.clone())
            });
            match name {
                Some(name) => {
                    let r = by_name.entry(name).or_default();
                    *r = (*r).max(reach);
                }
                None => *nameless = Some(nameless.unwrap_or_default().max(reach)),
            }
        };
        match e {
            Expr::VectorSelector(vs) => selector(vs, Duration::ZERO),
            Expr::MatrixSelector(ms) => selector(&ms.vs, ms.range),
            Expr::Aggregate(a) => {
                visit(&a.expr, by_name, nameless);
                if let Some(p) = &a.param {
                    visit(p, by_name, nameless);
                }
            }
            Expr::Unary(u) => visit(&u.expr, by_name, nameless),
            Expr::Binary(b) => {
                visit(&b.lhs, by_name, nameless);
                visit(&b.rhs, by_name, nameless);
            }
            Expr::Paren(p) => visit(&p.expr, by_name, nameless),
            Expr::Call(c) => c.args.args.iter().for_each(|a| visit(a, by_name, nameless)),
            _ => {}
        }
    }
    let mut by_name = HashMap::new();
    let mut nameless = None;
    for rule in groups.iter().flat_map(|g| &g.rules) {
        visit(&rule.expr, &mut by_name, &mut nameless);
    }
    (by_name, nameless)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_prometheus() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("5 m").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn every_problem_names_file_group_and_rule() {
        let text = r#"
groups:
  - name: g
    rules:
      - alert: Fine
        expr: up == 0
        for: 1m
      - alert: Predicts
        expr: predict_linear(x[5m], 60) > 0
      - alert: BadFor
        expr: up == 0
        for: soon
      - record: "bad name"
        expr: up
      - alert: BadTemplate
        expr: up
        annotations:
          summary: "{{ range $x }}"
"#;
        let errs = parse_file(Path::new("a.yml"), text, Duration::from_secs(15)).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "a.yml: group \"g\", rule \"Predicts\": expr \"predict_linear(x[5m], 60) > 0\": the function `predict_linear` is not supported by ferry's evaluator",
                "a.yml: group \"g\", rule \"BadFor\": for: \"soon\" is not a duration (e.g. 30s, 5m, 1h30m)",
                "a.yml: group \"g\", rule \"bad name\": \"bad name\" is not a valid metric name",
                "a.yml: group \"g\", rule \"BadTemplate\": annotation summary: template \"{{ range $x }}\": `range` is not supported",
            ]
        );
        let unknown = parse_file(
            Path::new("b.yml"),
            "groups:\n- name: g\n  rulez: []\n",
            Duration::from_secs(15),
        )
        .unwrap_err();
        assert!(unknown[0].to_string().contains("rulez"), "{}", unknown[0]);
    }
}
