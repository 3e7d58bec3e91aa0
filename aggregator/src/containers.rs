//! Container metrics from the agents' stats samples: the latest value per (host, container id,
//! metric), exposed on `/metrics` under cAdvisor's names with the labels `id`, `name`, `image`,
//! `host` (plus `namespace`, `pod`, `container` when the sample carries them), so one Prometheus
//! scrape of the aggregator sees every node.
//!
//! A container's series are dropped once no sample for it arrived for `stats_grace_seconds`
//! (measured on this server's clock at arrival, so agents' clock skew does not matter); a
//! metric missing from a newer sample keeps its last value until then. Types follow the names
//! (`_total` is a counter, anything else a gauge); names that are not valid Prometheus metric
//! names or not `container_*` are ignored, label values are escaped. The agent renders its own
//! node's series the same way (`ferry_agent::stats::expose`); keep the two in step.
//! [`Containers::sample`] gives the alert history the very series `/metrics` shows, without
//! text: each series keeps where it lives in the history, so a steady round is a walk over
//! the values. This module keeps no history itself and never touches the queue or the sink.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_wire::StatsSample;

use crate::alerts::{make_labels, History, SlotRef};

/// How often, at most, ingest sweeps out expired containers (rendering always does).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Entry {
    /// The latest sample's labels, with every metric's latest value (a metric missing from a
    /// newer sample keeps its value until the container expires).
    sample: StatsSample,
    seen: Instant,
    /// Where each of `sample.metrics` (in its order) lives in the alert history; `None` for
    /// a metric `/metrics` does not show. Emptied when the labels change or a metric is
    /// added, so it is resolved again.
    slots: Vec<Option<SlotRef>>,
}

#[derive(Debug)]
struct State {
    /// Keyed by (host, container id).
    entries: HashMap<(String, String), Entry>,
    last_sweep: Instant,
}

/// The latest stats of every container of every agent.
#[derive(Debug)]
pub(crate) struct Containers {
    grace: Duration,
    state: Mutex<State>,
}

impl Default for Containers {
    fn default() -> Self {
        Containers::new(Duration::from_secs(60))
    }
}

impl Containers {
    pub(crate) fn new(grace: Duration) -> Self {
        Containers {
            grace,
            state: Mutex::new(State {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Takes the samples of one accepted batch.
    pub(crate) fn observe(&self, samples: &[StatsSample]) {
        self.observe_at(samples, Instant::now());
    }

    fn observe_at(&self, samples: &[StatsSample], now: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        for sample in samples {
            let id = sample.container.id.clone().unwrap_or_default();
            let entry = state
                .entries
                .entry((sample.host.name.clone(), id))
                .or_insert_with(|| Entry {
                    sample: StatsSample::default(),
                    seen: now,
                    slots: Vec::new(),
                });
            let mut metrics = std::mem::take(&mut entry.sample.metrics);
            let known = metrics.len();
            metrics.extend(sample.metrics.iter().map(|(k, v)| (k.clone(), *v)));
            // Metrics are only ever added, so an unchanged count means unchanged names.
            if metrics.len() != known || !same_labels(&entry.sample, sample) {
                entry.slots.clear();
            }
            entry.sample = StatsSample {
                metrics,
                ..sample.clone()
            };
            entry.seen = now;
        }
        if now.saturating_duration_since(state.last_sweep) >= SWEEP_INTERVAL {
            self.sweep(&mut state, now);
        }
    }

    fn sweep(&self, state: &mut State, now: Instant) {
        let grace = self.grace;
        state
            .entries
            .retain(|_, e| now.saturating_duration_since(e.seen) < grace);
        state.last_sweep = now;
    }

    /// Appends one family per metric name, one series per container that has it.
    pub(crate) fn render(&self, out: &mut String) {
        self.render_at(out, Instant::now());
    }

    fn render_at(&self, out: &mut String, now: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        self.sweep(&mut state, now);
        // Stable output: containers by (host, id), families by name.
        let mut entries: Vec<_> = state.entries.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        ferry_wire::render_container_metrics(out, entries.iter().map(|(_, e)| &e.sample));
    }

    /// Gives the round in progress of `history` every series [`Containers::render`] would
    /// show, with the same labels and values.
    pub(crate) fn sample(&self, history: &mut History) {
        self.sample_at(history, Instant::now());
    }

    fn sample_at(&self, history: &mut History, now: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        self.sweep(&mut state, now);
        let mut missed = Vec::new();
        for (key, entry) in state.entries.iter_mut() {
            let taken =
                entry.slots.len() == entry.sample.metrics.len()
                    && entry.slots.iter().zip(entry.sample.metrics.values()).all(
                        |(slot, value)| {
                            slot.is_none_or(|slot| history.push(slot, exposed_value(*value)))
                        },
                    );
            if !taken {
                missed.push((key, entry));
            }
        }
        if missed.is_empty() {
            return;
        }
        // New series get their places in the order the page lists them (by host and id).
        missed.sort_by(|a, b| a.0.cmp(b.0));
        let names: [Arc<str>; 8] = [
            "__name__",
            "id",
            "name",
            "image",
            "host",
            "namespace",
            "pod",
            "container",
        ]
        .map(Arc::from);
        for (_, entry) in missed {
            let s = &entry.sample;
            let values = [
                s.container.id.as_deref(),
                s.container.name.as_deref(),
                s.container.image.name.as_deref(),
                Some(s.host.name.as_str()),
                s.kubernetes.namespace.as_deref(),
                s.kubernetes.pod.name.as_deref(),
                s.kubernetes.container.name.as_deref(),
            ];
            // Shared by the container's series.
            let base: Vec<(Arc<str>, Arc<str>)> = names[1..]
                .iter()
                .zip(values)
                .filter_map(|(k, v)| Some((Arc::clone(k), Arc::from(v?))))
                .collect();
            entry.slots = s
                .metrics
                .iter()
                .map(|(name, value)| {
                    if !exposed_name(name) {
                        return None;
                    }
                    let pairs = base
                        .iter()
                        .cloned()
                        .chain([(Arc::clone(&names[0]), Arc::from(name.as_str()))]);
                    Some(history.push_new(make_labels(pairs), exposed_value(*value)))
                })
                .collect();
        }
    }
}

/// Whether `/metrics` shows a stats metric of this name (`container_*`, a valid name).
fn exposed_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.starts_with("container_")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The value a scrape of `/metrics` reads back: the number itself (every finite value is
/// printed so that it reads back exactly), and any NaN as the one NaN the text can say.
fn exposed_value(v: f64) -> f64 {
    if v.is_nan() {
        f64::NAN
    } else {
        v
    }
}

/// Whether two samples of one container give its series the same labels.
fn same_labels(a: &StatsSample, b: &StatsSample) -> bool {
    a.host.name == b.host.name
        && a.container.id == b.container.id
        && a.container.name == b.container.name
        && a.container.image.name == b.container.image.name
        && a.kubernetes.namespace == b.kubernetes.namespace
        && a.kubernetes.pod.name == b.kubernetes.pod.name
        && a.kubernetes.container.name == b.kubernetes.container.name
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(host: &str, id: &str, metrics: &[(&str, f64)]) -> StatsSample {
        let mut s = StatsSample {
            timestamp: "2024-05-01T12:00:00.000Z".into(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..StatsSample::default()
        };
        s.host.name = host.into();
        s.container.id = Some(id.into());
        s
    }

    #[test]
    fn keeps_the_latest_value_per_host_container_and_metric() {
        let c = Containers::new(Duration::from_secs(60));
        let t0 = Instant::now();
        c.observe_at(
            &[
                sample("a", "1", &[("container_memory_usage_bytes", 10.0)]),
                sample("b", "1", &[("container_memory_usage_bytes", 20.0)]),
            ],
            t0,
        );
        c.observe_at(
            &[sample(
                "a",
                "1",
                &[
                    ("container_memory_usage_bytes", 11.0),
                    ("container_cpu_usage_seconds_total", 1.5),
                    ("not_a_container_metric", 1.0),
                    ("container bad", 1.0),
                ],
            )],
            t0,
        );
        let mut out = String::new();
        c.render_at(&mut out, t0);
        assert_eq!(
            out,
            "# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.\n\
             # TYPE container_cpu_usage_seconds_total counter\n\
             container_cpu_usage_seconds_total{id=\"1\",name=\"\",image=\"\",host=\"a\"} 1.5\n\
             # HELP container_memory_usage_bytes Current memory usage in bytes, including all memory regardless of when it was accessed.\n\
             # TYPE container_memory_usage_bytes gauge\n\
             container_memory_usage_bytes{id=\"1\",name=\"\",image=\"\",host=\"a\"} 11\n\
             container_memory_usage_bytes{id=\"1\",name=\"\",image=\"\",host=\"b\"} 20\n"
        );
    }

    #[test]
    fn drops_a_container_after_the_grace_period() {
        let c = Containers::new(Duration::from_secs(10));
        let t0 = Instant::now();
        c.observe_at(&[sample("a", "old", &[("container_threads", 1.0)])], t0);
        c.observe_at(
            &[sample("a", "new", &[("container_threads", 2.0)])],
            t0 + Duration::from_secs(8),
        );
        let mut out = String::new();
        c.render_at(&mut out, t0 + Duration::from_secs(11));
        assert!(!out.contains("id=\"old\""), "{out}");
        assert!(out.contains("id=\"new\""), "{out}");
        let mut out = String::new();
        c.render_at(&mut out, t0 + Duration::from_secs(19));
        assert_eq!(out, "", "no samples, no families");
    }

    #[test]
    fn escapes_label_values_and_adds_kubernetes_labels() {
        let c = Containers::default();
        let mut s = sample("h\\1", "x", &[("container_threads", 1.0)]);
        s.container.name = Some("a\"b\nc".into());
        s.kubernetes.namespace = Some("ns".into());
        c.observe(&[s]);
        let mut out = String::new();
        c.render(&mut out);
        assert!(
            out.contains(
                "container_threads{id=\"x\",name=\"a\\\"b\\nc\",image=\"\",host=\"h\\\\1\",namespace=\"ns\"} 1\n"
            ),
            "{out}"
        );
    }
}

/// Through the real server: ingest → `/metrics` → expiry, and promtool reads the page.
#[cfg(test)]
pub(crate) mod server_tests {
    use std::time::{Duration, Instant};

    use ferry_wire::{BatchBuilder, Compression};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::tests::sample;
    use crate::{start, AggregatorConfig, AggregatorHandle};

    async fn request(handle: &AggregatorHandle, head: &str, body: &[u8]) -> String {
        let mut stream = TcpStream::connect(handle.local_addr()).await.unwrap();
        let mut req = format!(
            "{head}\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        stream.write_all(&req).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        raw
    }

    /// `promtool check metrics` over `text`. Without promtool this fails the test, unless
    /// `FERRY_TEST_SKIP_PROMTOOL=1` (then `None`, with a note).
    pub(crate) fn promtool_check(text: &str) -> Option<(bool, String)> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let spawned = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(_) if std::env::var("FERRY_TEST_SKIP_PROMTOOL").is_ok_and(|v| v == "1") => {
                eprintln!("FERRY_TEST_SKIP_PROMTOOL=1: the exposition check is skipped");
                return None;
            }
            Err(e) => panic!(
                "promtool does not run ({e}): install Debian's `prometheus` (as .ci/run does), or set FERRY_TEST_SKIP_PROMTOOL=1"
            ),
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Some((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ingested_stats_appear_on_metrics_and_expire_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let handle = start(AggregatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            stats_grace_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut builder = BatchBuilder::new("node-1");
        let mut named = sample(
            "node-1",
            "abc",
            &[
                ("container_cpu_usage_seconds_total", 12.5),
                ("container_memory_working_set_bytes", 1048576.0),
                ("container_spec_memory_limit_bytes", 0.0),
                ("container_network_receive_bytes_total", 300.0),
            ],
        );
        named.container.name = Some("web \"1\"".into());
        named.container.image.name = Some("nginx:1.25".into());
        builder.push_stats(&named);
        builder.push_stats(&sample(
            "node-2",
            "def",
            &[("container_cpu_usage_seconds_total", 1.0)],
        ));
        let batch = builder.finish(Compression::Gzip { level: 1 });
        let reply = request(
            &handle,
            "POST /v1/batches HTTP/1.1\r\nContent-Encoding: gzip",
            &batch.body,
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let page = handle.render_metrics();
        let served = request(&handle, "GET /metrics HTTP/1.1", b"").await;
        assert!(served.contains("container_cpu_usage_seconds_total{id=\"abc\""));
        for line in [
            "# TYPE container_cpu_usage_seconds_total counter\n",
            "# TYPE container_memory_working_set_bytes gauge\n",
            "# TYPE container_network_receive_bytes_total counter\n",
            "container_cpu_usage_seconds_total{id=\"abc\",name=\"web \\\"1\\\"\",image=\"nginx:1.25\",host=\"node-1\"} 12.5\n",
            "container_cpu_usage_seconds_total{id=\"def\",name=\"\",image=\"\",host=\"node-2\"} 1\n",
            "container_memory_working_set_bytes{id=\"abc\",name=\"web \\\"1\\\"\",image=\"nginx:1.25\",host=\"node-1\"} 1048576\n",
            "container_spec_memory_limit_bytes{id=\"abc\",name=\"web \\\"1\\\"\",image=\"nginx:1.25\",host=\"node-1\"} 0\n",
        ] {
            assert!(page.contains(line), "missing {line:?} in\n{page}");
        }
        if let Some((ok, report)) = promtool_check(&page) {
            assert!(ok, "promtool: {report}\n{page}");
        }
        // No sample for longer than the grace period: the series go.
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle
            .render_metrics()
            .lines()
            .any(|l| l.starts_with("container_"))
        {
            assert!(Instant::now() < deadline, "series still there after grace");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        handle.shutdown().await;
    }
}
