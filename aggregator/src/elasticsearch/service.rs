//! The cluster's nodes and the requests to them, on the official `elasticsearch` crate: one
//! client per configured URL, round robin over the nodes that are up, a node that fails left
//! out for a backoff (failover to the next), and the raw `_bulk` call.
//!
//! A client carries the credentials, the certificate settings and the request time limit.
//! Proxies from the environment are not used (the cluster is reached directly). Nothing here
//! decides what an answer means: that is [`super::settlement`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;

use super::config::{ElasticsearchConfig, RequestCompression};
use super::retry::{Backoff, Failures};
use super::settlement::FILTER_PATH;

/// A client could not be built (bad URL, unreadable CA file, TLS set-up).
#[derive(Debug, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct ClientError {
    pub url: String,
    pub reason: String,
}

#[derive(Debug)]
struct Node {
    url: String,
    client: Elasticsearch,
    down_until: Option<Instant>,
    failures: Failures,
}

/// The nodes of the cluster.
#[derive(Debug)]
pub(crate) struct Nodes {
    nodes: Vec<Node>,
    next: usize,
    backoff: Backoff,
}

/// One answer: the status and the body, or no answer at all.
#[derive(Debug)]
pub(crate) enum Answer {
    Status(u16, Bytes),
    /// Connection refused or reset, time-out, or the body could not be read.
    Failed(String),
}

impl Nodes {
    pub(crate) fn new(config: &ElasticsearchConfig) -> Result<Nodes, ClientError> {
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let ca = match &config.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| ClientError {
                    url: path.display().to_string(),
                    reason: format!("cannot read the CA file: {e}"),
                })?;
                Some(pem)
            }
            None => None,
        };
        let mut nodes = Vec::with_capacity(config.urls.len());
        for url in &config.urls {
            let err = |reason: String| ClientError {
                url: url.clone(),
                reason,
            };
            let parsed = Url::parse(url).map_err(|e| err(e.to_string()))?;
            let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(parsed))
                .timeout(timeout)
                .disable_proxy();
            if let (Some(user), Some(password)) = (&config.username, &config.password) {
                builder = builder.auth(Credentials::Basic(user.clone(), password.clone()));
            }
            if let Some(key) = &config.api_key {
                builder = builder.auth(Credentials::EncodedApiKey(key.clone()));
            }
            if let Some(pem) = &ca {
                let certs = Certificate::from_pem(pem)
                    .map_err(|e| err(format!("the CA file holds no usable certificate: {e}")))?;
                builder = builder.cert_validation(CertificateValidation::Full(certs));
            } else if config.tls_insecure_skip_verify {
                builder = builder.cert_validation(CertificateValidation::None);
            }
            let transport = builder.build().map_err(|e| err(e.to_string()))?;
            nodes.push(Node {
                url: url.clone(),
                client: Elasticsearch::new(transport),
                down_until: None,
                failures: Failures::NONE,
            });
        }
        Ok(Nodes {
            nodes,
            next: 0,
            backoff: Backoff {
                initial: Duration::from_millis(config.backoff_initial_ms),
                max: Duration::from_millis(config.backoff_max_ms),
            },
        })
    }

    /// The next node: round robin over the nodes that are up; when none is, the one that comes
    /// back first (the caller waits for it with [`Nodes::all_down_until`]).
    pub(crate) fn pick(&mut self) -> usize {
        let now = Instant::now();
        let n = self.nodes.len();
        for step in 0..n {
            let i = (self.next + step) % n;
            if self.nodes[i].down_until.is_none_or(|t| t <= now) {
                self.next = (i + 1) % n;
                return i;
            }
        }
        (0..n)
            .min_by_key(|&i| self.nodes[i].down_until)
            .expect("at least one node")
    }

    /// When every node is down: the moment the first one comes back.
    pub(crate) fn all_down_until(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut soonest: Option<Instant> = None;
        for node in &self.nodes {
            match node.down_until {
                Some(t) if t > now => soonest = Some(soonest.map_or(t, |s| s.min(t))),
                _ => return None,
            }
        }
        soonest
    }

    pub(crate) fn client(&self, node: usize) -> &Elasticsearch {
        &self.nodes[node].client
    }

    pub(crate) fn url(&self, node: usize) -> &str {
        &self.nodes[node].url
    }

    /// Leaves `node` out for a backoff that grows with its consecutive failures.
    pub(crate) fn failed(&mut self, node: usize, rng: &mut fastrand::Rng) -> Duration {
        let n = &mut self.nodes[node];
        let wait = n.failures.fail(&self.backoff, rng);
        n.down_until = Some(Instant::now() + wait);
        wait
    }

    pub(crate) fn succeeded(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.failures = Failures::NONE;
        n.down_until = None;
    }
}

/// Reads a whole answer.
pub(crate) async fn answer(
    sent: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
) -> Answer {
    match sent {
        Ok(response) => {
            let status = response.status_code().as_u16();
            match response.bytes().await {
                Ok(body) => Answer::Status(status, body),
                Err(e) => Answer::Failed(format!("reading the answer failed: {e}")),
            }
        }
        Err(e) if e.is_timeout() => Answer::Failed(format!("timed out: {e}")),
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// `POST /_bulk` with a ready body (gzip-compressed when `compression` says so).
pub(crate) async fn bulk(
    client: &Elasticsearch,
    body: Bytes,
    compression: RequestCompression,
) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if compression == RequestCompression::Gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let sent = client
        .transport()
        .send(
            Method::Post,
            "/_bulk",
            headers,
            Some(&[("filter_path", FILTER_PATH)]),
            Some(body),
            None,
        )
        .await;
    answer(sent).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Nodes {
        Nodes::new(&ElasticsearchConfig {
            urls: (0..n)
                .map(|i| format!("http://127.0.0.1:{}", 9200 + i))
                .collect(),
            backoff_initial_ms: 10_000,
            backoff_max_ms: 60_000,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn round_robin_over_nodes_that_are_up() {
        let mut n = nodes(3);
        let picks: Vec<usize> = (0..6).map(|_| n.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let mut rng = fastrand::Rng::with_seed(1);
        n.failed(1, &mut rng);
        let picks: Vec<usize> = (0..4).map(|_| n.pick()).collect();
        assert_eq!(picks, [0, 2, 0, 2], "a failed node is left out");
        assert_eq!(n.all_down_until(), None);
        n.succeeded(1);
        assert!(
            (0..3).map(|_| n.pick()).any(|i| i == 1),
            "and back after success"
        );
    }

    #[test]
    fn when_every_node_is_down_the_soonest_back_is_picked() {
        let mut n = nodes(2);
        let mut rng = fastrand::Rng::with_seed(1);
        n.failed(0, &mut rng);
        n.failed(1, &mut rng);
        n.failed(1, &mut rng);
        let until = n.all_down_until().expect("all down");
        assert!(until > Instant::now());
        assert_eq!(n.pick(), 0, "node 0 failed once: back first");
    }
}
