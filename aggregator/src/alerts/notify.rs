//! Notifications: which receiver hears of an alert (routes matched on labels, first match
//! wins unless `continue`), how alerts are grouped (`group_by`), and when a group is sent
//! (`group_wait` after it forms, then at most every `group_interval` when it changed, again
//! every `repeat_interval` while it fires, and once more with its resolved alerts) — the
//! Alertmanager model, kept as plain data driven by explicit times so it can be saved across
//! restarts and tested without a clock.
//!
//! A failed delivery is retried with doubling backoff (1 s up to a minute) without losing
//! what it carried; what was delivered is remembered, so a restart neither re-pages nor drops
//! a resolve. Payload building ([`slack_payload`], [`webhook_payload`],
//! [`alertmanager_payload`]) is pure; sending lives in the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::state::{Alert, AlertState};

/// Longest wait between retries of a failed delivery.
const MAX_BACKOFF_MS: i64 = 60_000;

/// The kind of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    /// A Slack-compatible incoming webhook (also Mattermost, Rocket.Chat).
    Slack,
    /// Any URL, receiving Alertmanager's webhook JSON (version 4).
    Webhook,
    /// An Alertmanager, `POST /api/v2/alerts` (it groups and routes itself).
    Alertmanager,
}

/// One route, resolved from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Route {
    pub(crate) receiver: String,
    pub(crate) kind: ReceiverKind,
    pub(crate) matchers: BTreeMap<String, String>,
    pub(crate) group_by: Vec<String>,
    pub(crate) group_wait_ms: i64,
    pub(crate) group_interval_ms: i64,
    pub(crate) repeat_interval_ms: i64,
    pub(crate) continue_matching: bool,
}

/// An alert as a group holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Notified {
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    pub(crate) starts_at_ms: i64,
    /// 0 while firing.
    pub(crate) ends_at_ms: i64,
    pub(crate) value: f64,
}

impl Notified {
    pub(crate) fn firing(&self) -> bool {
        self.ends_at_ms == 0
    }
}

/// One aggregation group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AggGroup {
    pub(crate) route: usize,
    pub(crate) receiver: String,
    pub(crate) group_labels: BTreeMap<String, String>,
    pub(crate) alerts: BTreeMap<String, Notified>,
    pub(crate) next_send_ms: i64,
    /// When the last delivery succeeded (0: never).
    pub(crate) last_sent_ms: i64,
    /// What the last successful delivery said: each alert's identity and whether it fired.
    pub(crate) last_sent: BTreeSet<(String, bool)>,
    pub(crate) failures: u32,
    pub(crate) in_flight: bool,
}

/// A delivery to make now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delivery {
    pub(crate) group_key: String,
    pub(crate) receiver: String,
    pub(crate) kind: ReceiverKind,
    pub(crate) group_labels: BTreeMap<String, String>,
    pub(crate) alerts: Vec<Notified>,
    /// What the group will remember as sent when this succeeds.
    sent: BTreeSet<(String, bool)>,
}

/// Every group's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Notifier {
    pub(crate) groups: BTreeMap<String, AggGroup>,
    #[serde(skip)]
    routes: Vec<Route>,
}

fn identity(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_default()
}

/// A stable fingerprint of an alert's labels (Alertmanager shows one per alert).
pub(crate) fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    format!("{:016x}", h.finish())
}

impl Notifier {
    pub(crate) fn set_routes(&mut self, routes: Vec<Route>) {
        self.routes = routes;
        let n = self.routes.len();
        // Groups of routes that no longer exist are dropped.
        self.groups.retain(|_, g| g.route < n);
    }

    fn routes_for(&self, labels: &BTreeMap<String, String>) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            if r.matchers
                .iter()
                .all(|(k, v)| labels.get(k).map_or(v.is_empty(), |l| l == v))
            {
                out.push(i);
                if !r.continue_matching {
                    break;
                }
            }
        }
        out
    }

    /// Takes the current alerts of every rule at `now`: firing ones join (or stay in) their
    /// groups, resolved ones are marked so; an alert a group holds as firing that is no
    /// longer reported at all (its rule went away) counts as resolved now.
    pub(crate) fn update<'a>(&mut self, alerts: impl Iterator<Item = &'a Alert>, now: i64) {
        let mut reported = BTreeSet::new();
        for a in alerts {
            let firing = a.state == AlertState::Firing;
            let resolved = a.state == AlertState::Inactive && a.fired_at != 0;
            if !firing && !resolved {
                continue;
            }
            let id = identity(&a.labels);
            for route in self.routes_for(&a.labels) {
                let r = &self.routes[route];
                let group_labels: BTreeMap<String, String> =
                    if r.group_by.iter().any(|g| g == "...") {
                        a.labels.clone()
                    } else {
                        r.group_by
                            .iter()
                            .filter_map(|k| a.labels.get(k).map(|v| (k.clone(), v.clone())))
                            .collect()
                    };
                let key = format!("{route}:{}", identity(&group_labels));
                reported.insert((key.clone(), id.clone()));
                let notified = Notified {
                    labels: a.labels.clone(),
                    annotations: a.annotations.clone(),
                    starts_at_ms: if a.fired_at != 0 {
                        a.fired_at
                    } else {
                        a.active_at
                    },
                    ends_at_ms: if firing { 0 } else { a.resolved_at.max(1) },
                    value: a.value,
                };
                match self.groups.get_mut(&key) {
                    // A resolve for an alert the group never held is news to nobody.
                    Some(g) if firing || g.alerts.contains_key(&id) => {
                        g.alerts.insert(id.clone(), notified);
                    }
                    Some(_) => {}
                    None if firing => {
                        let mut alerts = BTreeMap::new();
                        alerts.insert(id.clone(), notified);
                        self.groups.insert(
                            key,
                            AggGroup {
                                route,
                                receiver: r.receiver.clone(),
                                group_labels,
                                alerts,
                                next_send_ms: now + r.group_wait_ms,
                                last_sent_ms: 0,
                                last_sent: BTreeSet::new(),
                                failures: 0,
                                in_flight: false,
                            },
                        );
                    }
                    None => {}
                }
            }
        }
        for (key, g) in &mut self.groups {
            for (id, n) in &mut g.alerts {
                if n.firing() && !reported.contains(&(key.clone(), id.clone())) {
                    n.ends_at_ms = now.max(1);
                }
            }
        }
    }

    /// The deliveries due at `now` (each group at most one in flight).
    pub(crate) fn due(&mut self, now: i64) -> Vec<Delivery> {
        let mut out = Vec::new();
        let routes = &self.routes;
        for (key, g) in &mut self.groups {
            if g.in_flight || now < g.next_send_ms {
                continue;
            }
            let Some(route) = routes.get(g.route) else {
                continue;
            };
            let current: BTreeSet<(String, bool)> = g
                .alerts
                .iter()
                .map(|(id, n)| (id.clone(), n.firing()))
                .collect();
            let any_firing = current.iter().any(|(_, f)| *f);
            let changed = current != g.last_sent;
            let repeat = any_firing && now - g.last_sent_ms >= route.repeat_interval_ms;
            if !changed && !repeat {
                g.next_send_ms = now + route.group_interval_ms;
                continue;
            }
            // A group whose alerts all resolved before it was ever sent says nothing.
            if g.last_sent_ms == 0 && !any_firing {
                g.alerts.clear();
                continue;
            }
            g.in_flight = true;
            out.push(Delivery {
                group_key: key.clone(),
                receiver: g.receiver.clone(),
                kind: route.kind,
                group_labels: g.group_labels.clone(),
                alerts: g.alerts.values().cloned().collect(),
                sent: current,
            });
        }
        self.groups
            .retain(|_, g| !g.alerts.is_empty() || g.in_flight);
        out
    }

    /// Records how a delivery ended.
    pub(crate) fn delivered(&mut self, delivery: &Delivery, ok: bool, now: i64) {
        let Some(g) = self.groups.get_mut(&delivery.group_key) else {
            return;
        };
        g.in_flight = false;
        let Some(route) = self.routes.get(g.route) else {
            return;
        };
        if ok {
            g.failures = 0;
            g.last_sent_ms = now;
            // The resolved alerts were told: forget them (unless they fired again since).
            for (id, firing) in &delivery.sent {
                if !firing && g.alerts.get(id).is_some_and(|n| !n.firing()) {
                    g.alerts.remove(id);
                }
            }
            g.last_sent = delivery.sent.iter().filter(|(_, f)| *f).cloned().collect();
            g.next_send_ms = now + route.group_interval_ms;
        } else {
            g.failures += 1;
            let backoff = (1000i64 << g.failures.min(6).saturating_sub(1)).min(MAX_BACKOFF_MS);
            g.next_send_ms = now + backoff;
        }
        if g.alerts.is_empty() {
            self.groups.remove(&delivery.group_key);
        }
    }

    /// Clears every in-flight mark (after a restart nothing is in flight).
    pub(crate) fn reset_in_flight(&mut self) {
        for g in self.groups.values_mut() {
            g.in_flight = false;
        }
    }
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Labels every alert of the delivery shares.
fn common(maps: impl Iterator<Item = BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut out: Option<BTreeMap<String, String>> = None;
    for m in maps {
        out = Some(match out {
            None => m,
            Some(c) => c.into_iter().filter(|(k, v)| m.get(k) == Some(v)).collect(),
        });
    }
    out.unwrap_or_default()
}

fn status(d: &Delivery) -> &'static str {
    if d.alerts.iter().any(Notified::firing) {
        "firing"
    } else {
        "resolved"
    }
}

/// Alertmanager's webhook JSON (version 4).
pub(crate) fn webhook_payload(d: &Delivery, external_url: &str) -> serde_json::Value {
    let alerts: Vec<_> = d
        .alerts
        .iter()
        .map(|n| {
            json!({
                "status": if n.firing() { "firing" } else { "resolved" },
                "labels": n.labels,
                "annotations": n.annotations,
                "startsAt": rfc3339(n.starts_at_ms),
                "endsAt": if n.firing() { "0001-01-01T00:00:00Z".to_string() } else { rfc3339(n.ends_at_ms) },
                "generatorURL": format!("{external_url}/api/v1/alerts"),
                "fingerprint": fingerprint(&n.labels),
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": d.group_key,
        "truncatedAlerts": 0,
        "status": status(d),
        "receiver": d.receiver,
        "groupLabels": d.group_labels,
        "commonLabels": common(d.alerts.iter().map(|n| n.labels.clone())),
        "commonAnnotations": common(d.alerts.iter().map(|n| n.annotations.clone())),
        "externalURL": external_url,
        "alerts": alerts,
    })
}

/// A Slack incoming-webhook message: one attachment, coloured by state and severity, with
/// a line per alert (summary, description, runbook link).
pub(crate) fn slack_payload(d: &Delivery, external_url: &str) -> serde_json::Value {
    let firing: Vec<&Notified> = d.alerts.iter().filter(|n| n.firing()).collect();
    let resolved: Vec<&Notified> = d.alerts.iter().filter(|n| !n.firing()).collect();
    let common_labels = common(d.alerts.iter().map(|n| n.labels.clone()));
    let name = common_labels
        .get("alertname")
        .cloned()
        .unwrap_or_else(|| "alerts".into());
    let severity = common_labels.get("severity").map(String::as_str);
    let color = match (firing.is_empty(), severity) {
        (true, _) => "good",
        (false, Some("critical" | "page")) => "danger",
        (false, Some("warning")) => "warning",
        (false, _) => "#439FE0",
    };
    let group: Vec<String> = d
        .group_labels
        .iter()
        .filter(|(k, _)| *k != "alertname")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let title = format!(
        "[{}] {name}{}",
        if firing.is_empty() {
            "RESOLVED".to_string()
        } else {
            format!("FIRING:{}", firing.len())
        },
        if group.is_empty() {
            String::new()
        } else {
            format!(" ({})", group.join(" "))
        }
    );
    let mut text = String::new();
    for (heading, list) in [("Firing", &firing), ("Resolved", &resolved)] {
        if list.is_empty() {
            continue;
        }
        if !firing.is_empty() && !resolved.is_empty() {
            text.push_str(&format!("*{heading}*\n"));
        }
        for n in list.iter() {
            let summary = n
                .annotations
                .get("summary")
                .cloned()
                .unwrap_or_else(|| n.labels.get("alertname").cloned().unwrap_or_default());
            text.push_str(&format!("• *{summary}*"));
            if let Some(desc) = n.annotations.get("description") {
                text.push_str(&format!(" — {desc}"));
            }
            if let Some(runbook) = n
                .annotations
                .get("runbook_url")
                .or_else(|| n.annotations.get("runbook"))
            {
                if runbook.starts_with("http") {
                    text.push_str(&format!(" <{runbook}|runbook>"));
                } else {
                    text.push_str(&format!("\n   runbook: {runbook}"));
                }
            }
            let labels: Vec<String> = n
                .labels
                .iter()
                .filter(|(k, v)| common_labels.get(*k) != Some(v))
                .map(|(k, v)| format!("`{k}={v}`"))
                .collect();
            if !labels.is_empty() {
                text.push_str(&format!("\n   {}", labels.join(" ")));
            }
            text.push('\n');
        }
    }
    json!({
        "text": title,
        "attachments": [{
            "color": color,
            "title": title,
            "title_link": format!("{external_url}/api/v1/alerts"),
            "text": text.trim_end(),
            "fallback": title,
            "footer": "ferry",
            "mrkdwn_in": ["text"],
        }]
    })
}

/// Alertmanager's `POST /api/v2/alerts` body. Firing alerts end `resend_ms × 4` from now,
/// as Prometheus sends them, so an Alertmanager that stops hearing of them resolves them.
pub(crate) fn alertmanager_payload(
    d: &Delivery,
    external_url: &str,
    now: i64,
    resend_ms: i64,
) -> serde_json::Value {
    let alerts: Vec<_> = d
        .alerts
        .iter()
        .map(|n| {
            json!({
                "labels": n.labels,
                "annotations": n.annotations,
                "startsAt": rfc3339(n.starts_at_ms),
                "endsAt": rfc3339(if n.firing() { now + 4 * resend_ms } else { n.ends_at_ms }),
                "generatorURL": format!("{external_url}/api/v1/alerts"),
            })
        })
        .collect();
    serde_json::Value::Array(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(group_by: &[&str]) -> Route {
        Route {
            receiver: "chat".into(),
            kind: ReceiverKind::Slack,
            matchers: BTreeMap::new(),
            group_by: group_by.iter().map(|s| s.to_string()).collect(),
            group_wait_ms: 30_000,
            group_interval_ms: 300_000,
            repeat_interval_ms: 3_600_000,
            continue_matching: false,
        }
    }

    fn alert(name: &str, x: &str, state: AlertState) -> Alert {
        Alert {
            labels: [("alertname", name), ("x", x)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
            state,
            value: 1.0,
            active_at: 1,
            fired_at: if state == AlertState::Pending { 0 } else { 1 },
            resolved_at: if state == AlertState::Inactive { 2 } else { 0 },
            keep_firing_since: 0,
        }
    }

    #[test]
    fn waits_groups_repeats_and_resolves() {
        let mut n = Notifier::default();
        n.set_routes(vec![route(&["alertname"])]);
        n.update([alert("A", "1", AlertState::Firing)].iter(), 0);
        assert!(n.due(10_000).is_empty(), "group_wait holds the first send");
        n.update(
            [
                alert("A", "1", AlertState::Firing),
                alert("A", "2", AlertState::Firing),
            ]
            .iter(),
            20_000,
        );
        let d = n.due(30_000);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].alerts.len(),
            2,
            "both alerts of the group in one message"
        );
        n.delivered(&d[0], true, 30_000);
        // Nothing new: nothing until the repeat interval.
        assert!(n.due(330_000).is_empty());
        let d = n.due(30_000 + 3_600_000);
        assert_eq!(d.len(), 1, "repeat");
        // A failed delivery is retried with backoff, carrying the same alerts.
        n.delivered(&d[0], false, 3_630_000);
        assert!(n.due(3_630_500).is_empty());
        let d = n.due(3_631_000);
        assert_eq!(d.len(), 1);
        n.delivered(&d[0], true, 3_631_000);
        // One resolves: sent at the next group interval, then forgotten.
        n.update(
            [
                alert("A", "1", AlertState::Firing),
                alert("A", "2", AlertState::Inactive),
            ]
            .iter(),
            3_700_000,
        );
        assert!(n.due(3_800_000).is_empty());
        let d = n.due(3_931_000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].alerts.iter().filter(|a| !a.firing()).count(), 1);
        n.delivered(&d[0], true, 3_931_000);
        assert_eq!(n.groups.values().next().unwrap().alerts.len(), 1);
        // Saved and restored: no re-page.
        let saved = serde_json::to_string(&n).unwrap();
        let mut back: Notifier = serde_json::from_str(&saved).unwrap();
        back.set_routes(vec![route(&["alertname"])]);
        back.update([alert("A", "1", AlertState::Firing)].iter(), 4_000_000);
        assert!(back.due(4_300_000).is_empty());
    }
}
