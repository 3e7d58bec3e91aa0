//! The `[aggregator.alerts]` table: where the rule files are, how often they are evaluated,
//! the receivers and the routes to them. Checked once at load ([`AlertsConfig::problems`]);
//! webhook URLs are secrets, read from a file or an environment variable and never shown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::notify::{ReceiverKind, Route};
use crate::config::ConfigError;

/// Threshold alerts (see the README's "Alerts" section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Prometheus rule files, or directories whose `*.yml`/`*.yaml` files are rule files.
    /// Default `["/etc/ferry/alerts"]` (where the packaged rules are installed).
    #[serde(default = "default_rule_paths")]
    pub rule_paths: Vec<PathBuf>,
    /// How often the aggregator samples its own series and evaluates the groups that set no
    /// `interval` of their own. Default 15.
    #[serde(default = "default_evaluation_interval_seconds")]
    pub evaluation_interval_seconds: u64,
    /// The address links in notifications point to (`<external_url>/api/v1/alerts`).
    /// Default `http://<listen>`.
    #[serde(default)]
    pub external_url: Option<String>,
    /// Where notifications go. Default none (alerts are only shown on `/api/v1/alerts`).
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
    /// Which receiver hears of which alert, tried in order (first match wins unless
    /// `continue`). Default: one route to the first receiver, when there is one.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// One receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// The name routes use. Required.
    pub name: String,
    /// `slack`, `webhook` or `alertmanager`. Required.
    #[serde(rename = "type")]
    pub kind: ReceiverKind,
    /// The URL, written in the configuration: only for `alertmanager` (its base URL, e.g.
    /// `http://alertmanager:9093`). Default none.
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the webhook URL (its first line). Default none.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// An environment variable holding the webhook URL. Default none.
    #[serde(default)]
    pub url_env: Option<String>,
    /// How long one delivery may take. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The receiver's name. Required.
    pub receiver: String,
    /// Labels an alert must carry with these values (e.g. `{ severity = "critical" }`).
    /// Default none (every alert).
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    /// Labels whose values form a group (one message per group); `["..."]` groups by every
    /// label. Default `["alertname"]`.
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// How long a new group waits for more alerts before its first message. Default 30.
    #[serde(default = "default_group_wait_seconds")]
    pub group_wait_seconds: u64,
    /// Least time between two messages of a group that changed. Default 300.
    #[serde(default = "default_group_interval_seconds")]
    pub group_interval_seconds: u64,
    /// How often a group that still fires, unchanged, is sent again. Default 14400 (4 h).
    #[serde(default = "default_repeat_interval_seconds")]
    pub repeat_interval_seconds: u64,
    /// Keep trying the routes after this one when it matched. Default false.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
}

fn default_rule_paths() -> Vec<PathBuf> {
    vec![PathBuf::from("/etc/ferry/alerts")]
}

const fn default_evaluation_interval_seconds() -> u64 {
    15
}

const fn default_timeout_ms() -> u64 {
    10_000
}

fn default_group_by() -> Vec<String> {
    vec!["alertname".into()]
}

const fn default_group_wait_seconds() -> u64 {
    30
}

const fn default_group_interval_seconds() -> u64 {
    300
}

const fn default_repeat_interval_seconds() -> u64 {
    14_400
}

/// How often ferry resends firing alerts to an Alertmanager (as Prometheus does).
pub(crate) const ALERTMANAGER_RESEND_MS: i64 = 60_000;

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            rule_paths: default_rule_paths(),
            evaluation_interval_seconds: default_evaluation_interval_seconds(),
            external_url: None,
            receivers: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl AlertsConfig {
    pub(crate) fn evaluation_interval(&self) -> Duration {
        Duration::from_secs(self.evaluation_interval_seconds.max(1))
    }

    /// Every problem, with fields named below `aggregator.alerts` (secrets never shown).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let mut bad = |field: String, value: String, reason: &str| {
            out.push(ConfigError {
                field: format!("alerts.{field}"),
                value,
                reason: reason.to_string(),
            })
        };
        if self.evaluation_interval_seconds == 0 {
            bad(
                "evaluation_interval_seconds".into(),
                "0".into(),
                "must be at least 1",
            );
        }
        if self.rule_paths.is_empty() {
            bad(
                "rule_paths".into(),
                "[]".into(),
                "must name at least one rule file or directory",
            );
        }
        for (i, r) in self.receivers.iter().enumerate() {
            let at = |f: &str| format!("receivers[{i}].{f}");
            if r.name.is_empty() {
                bad(at("name"), "\"\"".into(), "must not be empty");
            }
            if self.receivers[..i].iter().any(|o| o.name == r.name) {
                bad(
                    at("name"),
                    format!("{:?}", r.name),
                    "another receiver has this name",
                );
            }
            let sources = [r.url.is_some(), r.url_file.is_some(), r.url_env.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                bad(
                    at("url"),
                    "(hidden)".into(),
                    "set exactly one of url, url_file, url_env",
                );
            }
            if r.url.is_some() && r.kind != ReceiverKind::Alertmanager {
                bad(
                    at("url"),
                    "(hidden)".into(),
                    "a webhook URL is a secret: give it with url_file or url_env",
                );
            }
            if r.timeout_ms == 0 {
                bad(at("timeout_ms"), "0".into(), "must be positive");
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = |f: &str| format!("routes[{i}].{f}");
            if !self.receivers.iter().any(|r| r.name == route.receiver) {
                bad(
                    at("receiver"),
                    format!("{:?}", route.receiver),
                    "no receiver has this name",
                );
            }
            if route.group_interval_seconds == 0 {
                bad(
                    at("group_interval_seconds"),
                    "0".into(),
                    "must be at least 1",
                );
            }
            if route.repeat_interval_seconds == 0 {
                bad(
                    at("repeat_interval_seconds"),
                    "0".into(),
                    "must be at least 1",
                );
            }
        }
        out
    }

    /// The routes as the notifier uses them.
    pub(crate) fn routes(&self) -> Vec<Route> {
        let kind_of = |name: &str| {
            self.receivers
                .iter()
                .find(|r| r.name == name)
                .map_or(ReceiverKind::Webhook, |r| r.kind)
        };
        let configured: Vec<RouteConfig> = if self.routes.is_empty() {
            self.receivers
                .first()
                .map(|r| RouteConfig {
                    receiver: r.name.clone(),
                    matchers: BTreeMap::new(),
                    group_by: default_group_by(),
                    group_wait_seconds: default_group_wait_seconds(),
                    group_interval_seconds: default_group_interval_seconds(),
                    repeat_interval_seconds: default_repeat_interval_seconds(),
                    continue_matching: false,
                })
                .into_iter()
                .collect()
        } else {
            self.routes.clone()
        };
        configured
            .into_iter()
            .map(|r| {
                let kind = kind_of(&r.receiver);
                // An Alertmanager groups and times notifications itself: ferry forwards at
                // once and resends every minute, as Prometheus does.
                let am = kind == ReceiverKind::Alertmanager;
                Route {
                    kind,
                    matchers: r.matchers,
                    group_by: if am { vec!["...".into()] } else { r.group_by },
                    group_wait_ms: if am {
                        0
                    } else {
                        r.group_wait_seconds as i64 * 1000
                    },
                    group_interval_ms: if am {
                        ALERTMANAGER_RESEND_MS
                    } else {
                        r.group_interval_seconds as i64 * 1000
                    },
                    repeat_interval_ms: if am {
                        ALERTMANAGER_RESEND_MS
                    } else {
                        r.repeat_interval_seconds as i64 * 1000
                    },
                    continue_matching: r.continue_matching,
                    receiver: r.receiver,
                }
            })
            .collect()
    }
}

impl ReceiverConfig {
    /// The receiver's URL, read now from wherever it is kept. The error never contains it.
    pub(crate) fn resolve_url(&self) -> Result<String, String> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        if let Some(path) = &self.url_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "receiver {:?}: cannot read url_file {}: {e}",
                    self.name,
                    path.display()
                )
            })?;
            let url = text.lines().next().unwrap_or("").trim().to_string();
            if url.is_empty() {
                return Err(format!(
                    "receiver {:?}: url_file {} is empty",
                    self.name,
                    path.display()
                ));
            }
            return Ok(url);
        }
        if let Some(var) = &self.url_env {
            return match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                _ => Err(format!(
                    "receiver {:?}: environment variable {var} is not set",
                    self.name
                )),
            };
        }
        Err(format!("receiver {:?}: no URL configured", self.name))
    }
}
