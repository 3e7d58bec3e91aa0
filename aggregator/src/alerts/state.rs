//! Rule evaluation and alert states, as Prometheus's rule manager does them: a new result
//! element is `pending`, becomes `firing` once it has been active for `for`, stays firing
//! for `keep_firing_for` after it left the result, and is then `inactive` with a resolved
//! time (kept 15 minutes so the resolve is delivered). Recording rules write their result
//! into the history for the rules after them.
//!
//! The whole state is plain data ([`SavedAlert`]) so the engine can write it to disk and
//! restore it after a restart: an alert that was firing stays firing (no re-page), and one
//! that resolved while ferry was down is resolved, not forgotten.

// `Labels` keys hold a `OnceLock` (their nameless twin, built on demand), but their hash and
// equality read only the pairs and the precomputed hash, which never change.
#![allow(clippy::mutable_key_type)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::history::History;
use super::labels::{FastMap, Labels};
use super::promql::{self, make_labels, Value};
use super::rules::{Group, Rule, RuleKind};

/// How long a resolved alert is kept (and reported as resolved).
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert instance of an alerting rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Alert {
    /// Its identity: the result labels (no `__name__`), the rule's labels and `alertname`.
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    pub(crate) state: AlertState,
    pub(crate) value: f64,
    /// Times in ms since the epoch (0: not set).
    pub(crate) active_at: i64,
    pub(crate) fired_at: i64,
    pub(crate) resolved_at: i64,
    pub(crate) keep_firing_since: i64,
}

/// An alert as saved across restarts, with its rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SavedAlert {
    pub(crate) group: String,
    pub(crate) rule: String,
    pub(crate) alert: Alert,
}

/// What one rule did at its last evaluation.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleHealth {
    pub(crate) last_error: Option<String>,
    pub(crate) last_evaluation_ms: i64,
    pub(crate) evaluation_seconds: f64,
    /// Recording rules: the series written last time (to end them when they go).
    recorded: HashSet<Box<str>>,
}

/// A group and the state of its rules.
#[derive(Debug)]
pub(crate) struct GroupState {
    pub(crate) group: Group,
    /// Per rule, its alerts keyed by their labels.
    pub(crate) alerts: Vec<BTreeMap<BTreeMap<String, String>, Alert>>,
    pub(crate) health: Vec<RuleHealth>,
    pub(crate) last_evaluation_ms: i64,
    pub(crate) evaluation_seconds: f64,
}

impl GroupState {
    pub(crate) fn new(group: Group) -> GroupState {
        let n = group.rules.len();
        GroupState {
            group,
            alerts: vec![BTreeMap::new(); n],
            health: vec![RuleHealth::default(); n],
            last_evaluation_ms: 0,
            evaluation_seconds: 0.0,
        }
    }

    /// Evaluates every rule of the group at `t`, in order.
    pub(crate) fn evaluate(&mut self, history: &mut History, t: i64) {
        let started = std::time::Instant::now();
        for i in 0..self.group.rules.len() {
            let rule_started = std::time::Instant::now();
            let rule = &self.group.rules[i];
            let result = promql::eval(&rule.expr, history, t);
            let health = &mut self.health[i];
            health.last_evaluation_ms = t;
            let vector = match result {
                Ok(Value::Vector(v)) => v,
                Ok(_) => Vec::new(),
                Err(e) => {
                    health.last_error = Some(e.to_string());
                    health.evaluation_seconds = rule_started.elapsed().as_secs_f64();
                    continue;
                }
            };
            health.last_error = match &rule.kind {
                RuleKind::Record => record(rule, vector, history, health, t).err(),
                RuleKind::Alert {
                    hold,
                    keep_firing_for,
                    annotations,
                } => alert(
                    rule,
                    *hold,
                    *keep_firing_for,
                    annotations,
                    vector,
                    &mut self.alerts[i],
                    t,
                )
                .err(),
            };
            health.evaluation_seconds = rule_started.elapsed().as_secs_f64();
        }
        self.last_evaluation_ms = t;
        self.evaluation_seconds = started.elapsed().as_secs_f64();
    }

    /// The alerts to save.
    pub(crate) fn saved(&self) -> Vec<SavedAlert> {
        self.group
            .rules
            .iter()
            .zip(&self.alerts)
            .flat_map(|(rule, alerts)| {
                alerts.values().map(|a| SavedAlert {
                    group: self.group.name.clone(),
                    rule: rule.name.clone(),
                    alert: a.clone(),
                })
            })
            .collect()
    }

    /// Takes back saved alerts of rules that still exist (by group and rule name).
    pub(crate) fn restore(&mut self, saved: &[SavedAlert]) {
        for s in saved.iter().filter(|s| s.group == self.group.name) {
            if let Some(i) = self
                .group
                .rules
                .iter()
                .position(|r| r.name == s.rule && matches!(r.kind, RuleKind::Alert { .. }))
            {
                self.alerts[i].insert(s.alert.labels.clone(), s.alert.clone());
            }
        }
    }
}

fn labels_map(labels: &Labels) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| &**k != "__name__")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn record(
    rule: &Rule,
    vector: Vec<promql::Sample>,
    history: &mut History,
    health: &mut RuleHealth,
    t: i64,
) -> Result<(), String> {
    let mut written = HashSet::new();
    let mut outputs = Vec::with_capacity(vector.len());
    for s in vector {
        let mut pairs: Vec<(String, String)> = labels_map(&s.labels).into_iter().collect();
        for (k, tmpl) in &rule.labels {
            let v = tmpl.render(&s.labels, s.value);
            pairs.retain(|(name, _)| name != k);
            pairs.push((k.clone(), v));
        }
        pairs.push(("__name__".into(), rule.name.clone()));
        let labels = make_labels(pairs);
        if !written.insert(labels.clone()) {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
        outputs.push((labels, s.value));
    }
    let mut keys = HashSet::new();
    for (labels, value) in outputs {
        keys.insert(history.push_recorded(&labels, t, value));
    }
    for gone in health.recorded.difference(&keys) {
        history.mark_stale_key(gone, t);
    }
    health.recorded = keys;
    Ok(())
}

fn alert(
    rule: &Rule,
    hold: Duration,
    keep_firing_for: Duration,
    annotation_templates: &[(String, super::template::Template)],
    vector: Vec<promql::Sample>,
    active: &mut BTreeMap<BTreeMap<String, String>, Alert>,
    t: i64,
) -> Result<(), String> {
    // This round's result: labels → (annotations, value). Built whole first, so a result
    // that fails leaves the alerts as they were.
    let mut current: FastMap<BTreeMap<String, String>, (BTreeMap<String, String>, f64)> =
        FastMap::with_capacity_and_hasher(vector.len(), Default::default());
    for s in &vector {
        let template_labels = s.labels.without_name();
        let mut labels = labels_map(&s.labels);
        for (k, tmpl) in &rule.labels {
            let v = tmpl.render(&template_labels, s.value);
            if v.is_empty() {
                labels.remove(k);
            } else {
                labels.insert(k.clone(), v);
            }
        }
        labels.insert("alertname".into(), rule.name.clone());
        let annotations = annotation_templates
            .iter()
            .map(|(k, tmpl)| (k.clone(), tmpl.render(&template_labels, s.value)))
            .collect();
        if current.insert(labels, (annotations, s.value)).is_some() {
            return Err(
                "vector contains metrics with the same labelset after applying alert labels".into(),
            );
        }
    }
    let keep_ms = keep_firing_for.as_millis() as i64;
    let hold_ms = hold.as_millis() as i64;
    let promote = |a: &mut Alert| {
        if a.state == AlertState::Pending && t - a.active_at >= hold_ms {
            a.state = AlertState::Firing;
            a.fired_at = t;
        }
    };
    let pending = |labels: BTreeMap<String, String>, annotations, value| Alert {
        labels,
        annotations,
        state: AlertState::Pending,
        value,
        active_at: t,
        fired_at: 0,
        resolved_at: 0,
        keep_firing_since: 0,
    };
    active.retain(|key, a| {
        if let Some((annotations, value)) = current.remove(key) {
            // In the result: an active alert takes the new value, a resolved one starts over.
            if a.state != AlertState::Inactive {
                a.value = value;
                a.annotations = annotations;
            } else {
                *a = pending(key.clone(), annotations, value);
            }
            a.keep_firing_since = 0;
            promote(a);
            return true;
        }
        let mut keep_firing = false;
        if a.state == AlertState::Firing && keep_ms > 0 {
            if a.keep_firing_since == 0 {
                a.keep_firing_since = t;
            }
            if t - a.keep_firing_since < keep_ms {
                keep_firing = true;
            }
        }
        if a.state == AlertState::Pending
            || (a.resolved_at != 0 && t - a.resolved_at > RESOLVED_RETENTION_MS)
        {
            return false;
        }
        if a.state != AlertState::Inactive && !keep_firing {
            a.state = AlertState::Inactive;
            a.resolved_at = t;
        }
        if keep_firing {
            promote(a);
        }
        true
    });
    // New alerts.
    for (labels, (annotations, value)) in current {
        let mut a = pending(labels.clone(), annotations, value);
        promote(&mut a);
        active.insert(labels, a);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rules::parse_file;
    use std::path::Path;

    fn group(text: &str) -> GroupState {
        let mut groups = parse_file(Path::new("t.yml"), text, Duration::from_secs(60)).unwrap();
        GroupState::new(groups.remove(0))
    }

    fn states(g: &GroupState) -> Vec<(String, AlertState)> {
        g.alerts
            .iter()
            .flat_map(|m| m.values())
            .map(|a| (a.labels["x"].clone(), a.state))
            .collect()
    }

    #[test]
    fn pending_firing_keep_firing_resolved() {
        let mut g = group(
            "groups:\n- name: g\n  rules:\n  - alert: High\n    expr: m > 5\n    for: 2m\n    keep_firing_for: 1m\n    annotations:\n      v: '{{ $value }} on {{ $labels.x }}'\n",
        );
        let mut h = History::keeping(3_600_000);
        let at = |h: &mut History, g: &mut GroupState, minute: i64, v: Option<f64>| {
            let page = v.map(|v| format!("m{{x=\"a\"}} {v}\n")).unwrap_or_default();
            h.sample_exposition(&page, minute * 60_000);
            g.evaluate(h, minute * 60_000);
            states(g)
        };
        assert_eq!(at(&mut h, &mut g, 0, Some(1.0)), vec![]);
        assert_eq!(
            at(&mut h, &mut g, 1, Some(9.0)),
            vec![("a".into(), AlertState::Pending)]
        );
        assert_eq!(
            at(&mut h, &mut g, 2, Some(9.0)),
            vec![("a".into(), AlertState::Pending)]
        );
        assert_eq!(
            at(&mut h, &mut g, 3, Some(9.5)),
            vec![("a".into(), AlertState::Firing)]
        );
        let a = g.alerts[0].values().next().unwrap();
        assert_eq!(a.annotations["v"], "9.5 on a");
        assert_eq!(a.fired_at, 180_000);
        // Below the threshold: still firing for keep_firing_for (1m), then resolved.
        assert_eq!(
            at(&mut h, &mut g, 4, Some(1.0)),
            vec![("a".into(), AlertState::Firing)]
        );
        assert_eq!(
            at(&mut h, &mut g, 5, Some(1.0)),
            vec![("a".into(), AlertState::Inactive)]
        );
        assert_eq!(g.alerts[0].values().next().unwrap().resolved_at, 300_000);
        // The resolved alert is kept 15 minutes (to deliver the resolve), then dropped.
        assert_eq!(
            at(&mut h, &mut g, 20, Some(1.0)),
            vec![("a".into(), AlertState::Inactive)]
        );
        assert_eq!(at(&mut h, &mut g, 21, Some(1.0)), vec![]);
        // A pending alert whose series vanishes (stale) is dropped at once, never resolved.
        assert_eq!(
            at(&mut h, &mut g, 22, Some(9.0)),
            vec![("a".into(), AlertState::Pending)]
        );
        assert_eq!(at(&mut h, &mut g, 23, None), vec![]);
    }

    #[test]
    fn recording_rules_feed_later_rules() {
        let mut g = group(
            "groups:\n- name: g\n  rules:\n  - record: x:m:double\n    expr: m * 2\n  - alert: Big\n    expr: x:m:double > 10\n",
        );
        let mut h = History::keeping(3_600_000);
        h.sample_exposition("m{x=\"b\"} 6\n", 0);
        g.evaluate(&mut h, 0);
        assert_eq!(states(&g), vec![("b".into(), AlertState::Firing)]);
        assert_eq!(g.alerts[1].values().next().unwrap().value, 12.0);
    }
}
