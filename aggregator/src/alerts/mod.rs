//! Threshold alerts: Prometheus rule files evaluated over the aggregator's own series, and the
//! notifications they send.
//!
//! [`rules`] loads and checks the files, [`history`] keeps a bounded window of the series
//! sampled from the aggregator's own registry at each round (the very series `/metrics`
//! shows), [`promql`] evaluates the
//! supported subset over it, [`state`] runs the alert states, [`template`] expands labels and
//! annotations, and [`notify`] groups, times and retries the messages. The [`Engine`] ties
//! them together on explicit times (so tests drive it without a clock) and saves its state to
//! `<data_dir>/alerts/state.json` after every round that changed it and after every delivery
//! (before counting it). This module never
//! touches the queue or the sinks; it only reads the metrics.

mod config;
mod history;
mod labels;
mod log_lines;
mod notify;
mod promql;
mod rules;
mod state;
mod template;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use config::{AlertsConfig, ReceiverConfig, RouteConfig};
pub(crate) use log_lines::LogLines;
pub use notify::ReceiverKind;
pub use rules::RuleError;

#[cfg(test)]
pub(crate) use history::key_of;
pub(crate) use history::{BadLine, History, SlotRef};
use notify::{Delivery, Notifier};
pub(crate) use promql::make_labels;
use state::{AlertState, GroupState, SavedAlert};

use crate::metrics::Metrics;

/// How often the engine looks for notifications due (retries, group timers).
const NOTIFY_TICK: Duration = Duration::from_secs(1);
/// Version of `state.json`.
const STATE_VERSION: u32 = 1;

/// Why the alert engine could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Rules(Vec<RuleError>),
    #[error("{0}")]
    Receiver(String),
    #[error("alert state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks the rule files a configuration names (for `ferry check`): every problem.
pub fn check_rules(config: &AlertsConfig) -> Vec<RuleError> {
    match rules::load(&config.rule_paths, config.evaluation_interval()) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    }
}

/// The engine's own counters, rendered on `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct AlertMetrics {
    sent: AtomicU64,
    failed: AtomicU64,
    rule_failures: AtomicU64,
    history_series: AtomicU64,
    history_samples: AtomicU64,
    round_micros: AtomicU64,
    /// Pending and firing alerts after the last round, by (alertname, severity, state).
    active: std::sync::Mutex<BTreeMap<(String, String, &'static str), u64>>,
}

impl AlertMetrics {
    pub(crate) fn render(&self, out: &mut String) {
        let mut family = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        family(
            "ferry_alerts_notifications_total",
            "Notifications delivered to receivers.",
            "counter",
            load(&self.sent).to_string(),
        );
        family(
            "ferry_alerts_notification_failures_total",
            "Notification deliveries that failed (each is retried).",
            "counter",
            load(&self.failed).to_string(),
        );
        family(
            "ferry_alerts_rule_evaluation_failures_total",
            "Rule evaluations that failed (see /api/v1/rules).",
            "counter",
            load(&self.rule_failures).to_string(),
        );
        family(
            "ferry_alerts_history_series",
            "Series held in the alert engine's history.",
            "gauge",
            load(&self.history_series).to_string(),
        );
        family(
            "ferry_alerts_history_samples",
            "Samples held in the alert engine's history.",
            "gauge",
            load(&self.history_samples).to_string(),
        );
        family(
            "ferry_alerts_round_seconds",
            "Time the last round took (sampling the series and evaluating the rules due).",
            "gauge",
            format!("{:.6}", load(&self.round_micros) as f64 / 1e6),
        );
        let _ = writeln!(
            out,
            "# HELP ferry_alerts_active Alerts pending or firing after the last round, by rule, severity label and state.\n# TYPE ferry_alerts_active gauge"
        );
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        for ((alertname, severity, state), n) in active.iter() {
            out.push_str("ferry_alerts_active{alertname=\"");
            ferry_wire::escape_label_value(out, alertname);
            out.push_str("\",alertstate=\"");
            out.push_str(state);
            out.push_str("\",severity=\"");
            ferry_wire::escape_label_value(out, severity);
            let _ = writeln!(out, "\"}} {n}");
        }
    }

    fn set_active<'a>(&self, alerts: impl Iterator<Item = &'a state::Alert>) {
        let mut counts = BTreeMap::new();
        for a in alerts.filter(|a| a.state != AlertState::Inactive) {
            let label = |k: &str| a.labels.get(k).cloned().unwrap_or_default();
            *counts
                .entry((label("alertname"), label("severity"), a.state.as_str()))
                .or_insert(0) += 1;
        }
        *self.active.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedState {
    version: u32,
    alerts: Vec<SavedAlert>,
    notifier: Notifier,
}

#[derive(Debug)]
struct Inner {
    groups: Vec<GroupState>,
    next_eval_ms: Vec<i64>,
    history: History,
    notifier: Notifier,
    last_saved: String,
    /// The text of the registry's fixed families, reused from round to round.
    scratch: String,
}

/// A receiver ready to send.
#[derive(Debug, Clone)]
struct Target {
    kind: ReceiverKind,
    url: String,
    timeout: Duration,
}

/// The alert engine of one aggregator.
#[derive(Debug)]
pub(crate) struct Engine {
    config: AlertsConfig,
    inner: Mutex<Inner>,
    targets: BTreeMap<String, Target>,
    external_url: String,
    state_path: PathBuf,
    metrics: Arc<Metrics>,
    counters: Arc<AlertMetrics>,
    client: reqwest::Client,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long the history keeps each metric: what the rules read of it, plus the lookback and
/// two rounds of slack; metrics no rule names keep their latest sample only (unless a
/// selector without a metric name exists, which may read any of them).
fn retention_for(groups: &[rules::Group], interval: Duration) -> history::Retention {
    let pad = promql::LOOKBACK_MS + 2 * interval.as_millis() as i64;
    let (by_name, nameless) = rules::reach_by_name(groups);
    let longest = by_name
        .values()
        .copied()
        .chain(nameless)
        .max()
        .unwrap_or_default();
    history::Retention {
        by_name: by_name
            .into_iter()
            .map(|(name, reach)| (name, reach.as_millis() as i64 + pad))
            .collect(),
        other_ms: nameless.map_or(0, |_| longest.as_millis() as i64 + pad),
    }
}

impl Engine {
    /// Loads the rules and receivers, and restores the saved state.
    pub(crate) fn open(
        config: &AlertsConfig,
        data_dir: &Path,
        listen: std::net::SocketAddr,
        metrics: Arc<Metrics>,
    ) -> Result<Engine, AlertsError> {
        let groups = rules::load(&config.rule_paths, config.evaluation_interval())
            .map_err(AlertsError::Rules)?;
        let mut targets = BTreeMap::new();
        for r in &config.receivers {
            let url = r.resolve_url().map_err(AlertsError::Receiver)?;
            targets.insert(
                r.name.clone(),
                Target {
                    kind: r.kind,
                    url,
                    timeout: Duration::from_millis(r.timeout_ms),
                },
            );
        }
        let state_path = data_dir.join("alerts").join("state.json");
        let saved = match std::fs::read(&state_path) {
            Ok(bytes) => match serde_json::from_slice::<SavedState>(&bytes) {
                Ok(s) if s.version == STATE_VERSION => Some(s),
                Ok(s) => {
                    warn!(path = %state_path.display(), version = s.version, "Alert state of an unknown version ignored");
                    None
                }
                Err(e) => {
                    warn!(path = %state_path.display(), error = %e, "Unreadable alert state ignored");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(AlertsError::State {
                    path: state_path,
                    source,
                })
            }
        };
        let mut states: Vec<GroupState> = groups.iter().cloned().map(GroupState::new).collect();
        let mut notifier = Notifier::default();
        notifier.set_routes(config.routes());
        if let Some(saved) = saved {
            for g in &mut states {
                g.restore(&saved.alerts);
            }
            notifier = saved.notifier;
            notifier.set_routes(config.routes());
            notifier.reset_in_flight();
        }
        let retention = retention_for(&groups, config.evaluation_interval());
        let counters = Arc::new(AlertMetrics::default());
        metrics.set_alerts(Arc::clone(&counters));
        let client = reqwest::Client::builder().build().map_err(|e| {
            AlertsError::Receiver(format!("cannot build the HTTP client: {}", e.without_url()))
        })?;
        info!(
            groups = states.len(),
            rules = states.iter().map(|g| g.group.rules.len()).sum::<usize>(),
            "Alert rules loaded"
        );
        Ok(Engine {
            external_url: config
                .external_url
                .clone()
                .unwrap_or_else(|| format!("http://{listen}"))
                .trim_end_matches('/')
                .to_string(),
            config: config.clone(),
            inner: Mutex::new(Inner {
                next_eval_ms: vec![0; states.len()],
                groups: states,
                history: History::new(retention),
                notifier,
                last_saved: String::new(),
                scratch: String::new(),
            }),
            targets,
            state_path,
            metrics,
            counters,
            client,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reloads the rule files; on any problem the loaded rules stay and the problems are
    /// returned. Alerts of rules that keep their group and name keep their state.
    pub(crate) fn reload(&self) -> Result<(), AlertsError> {
        let groups = rules::load(&self.config.rule_paths, self.config.evaluation_interval())
            .map_err(AlertsError::Rules)?;
        let mut inner = self.lock();
        let saved: Vec<SavedAlert> = inner.groups.iter().flat_map(|g| g.saved()).collect();
        let retention = retention_for(&groups, self.config.evaluation_interval());
        let mut states: Vec<GroupState> = groups.into_iter().map(GroupState::new).collect();
        for g in &mut states {
            g.restore(&saved);
        }
        inner.next_eval_ms = vec![0; states.len()];
        inner.groups = states;
        inner.history.set_retention(retention);
        info!(groups = inner.groups.len(), "Alert rules reloaded");
        Ok(())
    }

    /// One round over the aggregator's own series, now: samples them, evaluates the groups
    /// due, passes the alerts to the notifier and saves the state if it changed.
    pub(crate) fn round(&self) {
        let started = Instant::now();
        let now = now_ms();
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.history.begin_round(now);
        let bad = self.metrics.sample(&mut inner.history, &mut inner.scratch);
        inner.history.end_round();
        if let Some(first) = bad.first() {
            debug!(lines = bad.len(), first = %first, "Exposition lines not sampled");
        }
        for (i, g) in inner.groups.iter_mut().enumerate() {
            if now < inner.next_eval_ms[i] {
                continue;
            }
            g.evaluate(&mut inner.history, now);
            let failures = g.health.iter().filter(|h| h.last_error.is_some()).count();
            self.counters
                .rule_failures
                .fetch_add(failures as u64, Ordering::Relaxed);
            let interval = g.group.interval.as_millis() as i64;
            let next = inner.next_eval_ms[i].max(now - interval) + interval;
            inner.next_eval_ms[i] = if next <= now { now + interval } else { next };
        }
        let alerts = inner
            .groups
            .iter()
            .flat_map(|g| g.alerts.iter().flat_map(|m| m.values()));
        inner.notifier.update(alerts, now);
        self.counters.set_active(
            inner
                .groups
                .iter()
                .flat_map(|g| g.alerts.iter().flat_map(|m| m.values())),
        );
        self.counters
            .history_series
            .store(inner.history.len() as u64, Ordering::Relaxed);
        self.counters
            .history_samples
            .store(inner.history.samples() as u64, Ordering::Relaxed);
        self.save(inner);
        self.counters
            .round_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn save(&self, inner: &mut Inner) {
        let state = SavedState {
            version: STATE_VERSION,
            alerts: inner.groups.iter().flat_map(|g| g.saved()).collect(),
            notifier: inner.notifier.clone(),
        };
        let Ok(text) = serde_json::to_string(&state) else {
            return;
        };
        if text == inner.last_saved {
            return;
        }
        match write_atomically(&self.state_path, text.as_bytes()) {
            Ok(()) => inner.last_saved = text,
            Err(e) => warn!(path = %self.state_path.display(), error = %e, "Alert state not saved"),
        }
    }

    /// The deliveries due at `now`.
    pub(crate) fn due(&self, now: i64) -> Vec<Delivery> {
        self.lock().notifier.due(now)
    }

    /// Records a delivery's outcome and saves it at once, then counts it: a delivery that
    /// `ferry_alerts_notifications_total` counts is one a restart will not send again. (A
    /// webhook has no idempotency key, so a crash between the receiver's answer and this
    /// save sends that one message again after the restart; nothing else is repeated.)
    pub(crate) fn delivered(&self, delivery: &Delivery, ok: bool, now: i64) {
        let mut inner = self.lock();
        inner.notifier.delivered(delivery, ok, now);
        self.save(&mut inner);
        drop(inner);
        let counter = if ok {
            &self.counters.sent
        } else {
            &self.counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends one delivery; true when the receiver answered 2xx.
    async fn send(&self, delivery: &Delivery) -> bool {
        let Some(target) = self.targets.get(&delivery.receiver) else {
            warn!(receiver = %delivery.receiver, "No such receiver");
            return false;
        };
        let now = now_ms();
        let (url, body) = match target.kind {
            ReceiverKind::Slack => (
                target.url.clone(),
                notify::slack_payload(delivery, &self.external_url),
            ),
            ReceiverKind::Webhook => (
                target.url.clone(),
                notify::webhook_payload(delivery, &self.external_url),
            ),
            ReceiverKind::Alertmanager => (
                format!("{}/api/v2/alerts", target.url.trim_end_matches('/')),
                notify::alertmanager_payload(
                    delivery,
                    &self.external_url,
                    now,
                    config::ALERTMANAGER_RESEND_MS,
                ),
            ),
        };
        let sent = self
            .client
            .post(url)
            .timeout(target.timeout)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                debug!(receiver = %delivery.receiver, alerts = delivery.alerts.len(), "Notification sent");
                true
            }
            Ok(r) => {
                warn!(receiver = %delivery.receiver, status = r.status().as_u16(), "Notification refused; will retry");
                false
            }
            Err(e) => {
                warn!(receiver = %delivery.receiver, error = %e.without_url(), "Notification failed; will retry");
                false
            }
        }
    }

    /// `GET /api/v1/alerts`, in Prometheus's shape.
    pub(crate) fn alerts_json(&self) -> serde_json::Value {
        let inner = self.lock();
        let alerts: Vec<_> = inner
            .groups
            .iter()
            .flat_map(|g| g.alerts.iter().flat_map(|m| m.values()))
            .filter(|a| a.state != AlertState::Inactive)
            .map(alert_json)
            .collect();
        json!({"status": "success", "data": {"alerts": alerts}})
    }

    /// `GET /api/v1/rules`, in Prometheus's shape.
    pub(crate) fn rules_json(&self) -> serde_json::Value {
        let inner = self.lock();
        let groups: Vec<_> = inner
            .groups
            .iter()
            .map(|g| {
                let rules: Vec<_> = g
                    .group
                    .rules
                    .iter()
                    .zip(&g.alerts)
                    .zip(&g.health)
                    .map(|((r, alerts), h)| {
                        let health = match (&h.last_error, h.last_evaluation_ms) {
                            (Some(_), _) => "err",
                            (None, 0) => "unknown",
                            (None, _) => "ok",
                        };
                        let mut rule = json!({
                            "name": r.name,
                            "query": r.query,
                            "labels": r.raw_labels,
                            "health": health,
                            "lastError": h.last_error.clone().unwrap_or_default(),
                            "evaluationTime": h.evaluation_seconds,
                            "lastEvaluation": rfc3339(h.last_evaluation_ms),
                        });
                        if let rules::RuleKind::Alert {
                            hold,
                            keep_firing_for,
                            ..
                        } = &r.kind
                        {
                            let active: Vec<_> = alerts
                                .values()
                                .filter(|a| a.state != AlertState::Inactive)
                                .collect();
                            let state = if active.iter().any(|a| a.state == AlertState::Firing) {
                                "firing"
                            } else if active.is_empty() {
                                "inactive"
                            } else {
                                "pending"
                            };
                            rule["type"] = json!("alerting");
                            rule["state"] = json!(state);
                            rule["duration"] = json!(hold.as_secs_f64());
                            rule["keepFiringFor"] = json!(keep_firing_for.as_secs_f64());
                            rule["annotations"] = json!(r.raw_annotations);
                            rule["alerts"] =
                                json!(active.into_iter().map(alert_json).collect::<Vec<_>>());
                        } else {
                            rule["type"] = json!("recording");
                        }
                        rule
                    })
                    .collect();
                json!({
                    "name": g.group.name,
                    "file": g.group.file.display().to_string(),
                    "interval": g.group.interval.as_secs_f64(),
                    "limit": 0,
                    "rules": rules,
                    "evaluationTime": g.evaluation_seconds,
                    "lastEvaluation": rfc3339(g.last_evaluation_ms),
                })
            })
            .collect();
        json!({"status": "success", "data": {"groups": groups}})
    }

    /// Runs rounds every evaluation interval and sends what is due, until `stop`; reloads
    /// the rules on SIGHUP (keeping the old set when the new one has problems).
    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = self.config.evaluation_interval();
        let mut next_round = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(NOTIFY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let stopping = async move {
            let _ = stop.wait_for(|&s| s).await.map(drop);
        };
        tokio::pin!(stopping);
        loop {
            #[cfg(unix)]
            let reload = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let reload = std::future::pending::<Option<()>>();
            tokio::select! {
                () = &mut stopping => break,
                () = tokio::time::sleep_until(next_round) => {
                    next_round += interval;
                    let engine = Arc::clone(&self);
                    if let Err(e) = tokio::task::spawn_blocking(move || engine.round()).await {
                        warn!(error = %e, "Alert round failed");
                    }
                    self.dispatch();
                }
                _ = tick.tick() => self.dispatch(),
                Some(()) = reload => {
                    // Reading and parsing the rule files blocks: not on this async worker.
                    let engine = Arc::clone(&self);
                    match tokio::task::spawn_blocking(move || engine.reload()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            warn!(error = %e, "Alert rules not reloaded; the previous rules stay");
                        }
                        Err(e) => {
                            warn!(error = %e, "Alert rule reload failed; the previous rules stay");
                        }
                    }
                }
            }
        }
    }

    /// Starts the sends that are due, each in its own task.
    fn dispatch(self: &Arc<Self>) {
        for delivery in self.due(now_ms()) {
            let engine = Arc::clone(self);
            tokio::spawn(async move {
                let ok = engine.send(&delivery).await;
                engine.delivered(&delivery, ok, now_ms());
            });
        }
    }
}

fn alert_json(a: &state::Alert) -> serde_json::Value {
    json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "keepFiringSince": if a.keep_firing_since != 0 { json!(rfc3339(a.keep_firing_since)) } else { json!(null) },
        "value": go_e(a.value),
    })
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, as Prometheus's API prints alert values.
fn go_e(v: f64) -> String {
    if !v.is_finite() {
        return template::go_float(v);
    }
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!(
        "{mantissa}e{}{:02}",
        if exp < 0 { '-' } else { '+' },
        exp.abs()
    )
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A rule evaluator without a server, driven with explicit times and exposition pages: for
/// the differential tests against Prometheus and the benchmark. Not an interface.
#[doc(hidden)]
pub mod support {
    use super::*;

    /// Rules, history and alert states, nothing else (and, for the benchmark, a metrics
    /// registry of its own to sample as the aggregator's rounds do).
    pub struct Evaluator {
        groups: Vec<GroupState>,
        history: History,
        registry: Metrics,
        scratch: String,
    }

    /// One alert as the evaluator reports it.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ReportedAlert {
        pub labels: BTreeMap<String, String>,
        pub annotations: BTreeMap<String, String>,
        /// `pending` or `firing`.
        pub state: &'static str,
        pub value: f64,
    }

    impl Evaluator {
        /// Loads rule files or directories; every problem as text.
        pub fn load(paths: &[PathBuf], interval: Duration) -> Result<Evaluator, Vec<String>> {
            let groups = rules::load(paths, interval)
                .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
            Ok(Evaluator::of(groups, interval))
        }

        /// [`Evaluator::load`] of one rule file's text (named `rules.yml` in problems), for
        /// the fuzz harness.
        pub fn from_text(text: &str, interval: Duration) -> Result<Evaluator, Vec<String>> {
            let groups = rules::parse_file(Path::new("rules.yml"), text, interval)
                .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
            Ok(Evaluator::of(groups, interval))
        }

        /// An evaluator of loaded `groups`, its history kept as long as they need.
        fn of(groups: Vec<rules::Group>, interval: Duration) -> Evaluator {
            let retention = retention_for(&groups, interval);
            Evaluator {
                groups: groups.into_iter().map(GroupState::new).collect(),
                history: History::new(retention),
                registry: Metrics::default(),
                scratch: String::new(),
            }
        }

        /// The lines of an exposition page that the history cannot read.
        pub fn unreadable_lines(page: &str) -> Vec<String> {
            let mut history = History::new(history::Retention::default());
            history
                .sample_exposition(page, 0)
                .into_iter()
                .map(|bad| bad.0)
                .collect()
        }

        /// Samples a page at `t_ms` and evaluates every group.
        pub fn step(&mut self, page: &str, t_ms: i64) {
            self.history.sample_exposition(page, t_ms);
            for g in &mut self.groups {
                g.evaluate(&mut self.history, t_ms);
            }
        }

        /// Takes container stats into the evaluator's own registry, as an accepted batch does.
        pub fn observe_stats(&self, samples: &[ferry_wire::StatsSample]) {
            self.registry.containers.observe(samples);
        }

        /// Notes a batch of the agent `host` at `seconds` (Unix time) in the registry.
        pub fn observe_agent(&self, host: &str, seconds: f64) {
            self.registry.log_lines.agent_seen(host, seconds);
        }

        /// The registry's `/metrics` page.
        pub fn render_registry(&self) -> String {
            self.registry.render()
        }

        /// Samples the registry at `t_ms` as the aggregator's round does (without its text)
        /// and evaluates every group.
        pub fn step_registry(&mut self, t_ms: i64) {
            self.history.begin_round(t_ms);
            self.registry.sample(&mut self.history, &mut self.scratch);
            self.history.end_round();
            for g in &mut self.groups {
                g.evaluate(&mut self.history, t_ms);
            }
        }

        /// Samples a page at `t_ms` without evaluating.
        pub fn sample(&mut self, page: &str, t_ms: i64) {
            self.history.sample_exposition(page, t_ms);
        }

        /// Evaluates every group at `t_ms`.
        pub fn evaluate(&mut self, t_ms: i64) {
            for g in &mut self.groups {
                g.evaluate(&mut self.history, t_ms);
            }
        }

        /// Pending and firing alerts.
        pub fn alerts(&self) -> Vec<ReportedAlert> {
            let mut out: Vec<ReportedAlert> = self
                .groups
                .iter()
                .flat_map(|g| g.alerts.iter().flat_map(|m| m.values()))
                .filter(|a| a.state != AlertState::Inactive)
                .map(|a| ReportedAlert {
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    state: a.state.as_str(),
                    value: a.value,
                })
                .collect();
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            out
        }

        /// Rule evaluation errors of the last round, as `group/rule: error`.
        pub fn errors(&self) -> Vec<String> {
            self.groups
                .iter()
                .flat_map(|g| {
                    g.group.rules.iter().zip(&g.health).filter_map(|(r, h)| {
                        h.last_error
                            .as_ref()
                            .map(|e| format!("{}/{}: {e}", g.group.name, r.name))
                    })
                })
                .collect()
        }

        /// (series, samples, approximate bytes) of the history.
        pub fn history_size(&self) -> (usize, usize, usize) {
            (
                self.history.len(),
                self.history.samples(),
                self.history.approximate_bytes(),
            )
        }
    }
}
