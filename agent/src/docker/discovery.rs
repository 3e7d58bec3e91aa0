//! Keeps the [`Registry`] in step with the Docker engine: list and inspect every container, then
//! follow the event stream (start, die, destroy, rename). When the engine goes away (the stream
//! ends or fails), reconnect with capped exponential backoff and list again, so nothing that
//! started or went away in between is missed. Also starts and stops the logs-API followers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as DockerError;
use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::logs_api::{self, ApiItem, FollowerCtx, FollowerSignals};
use super::registry::Registry;
use crate::container::{ContainerMeta, LogSource};
use crate::metrics::Metrics;
use crate::rules::Rules;

/// Time limit of one API request (streams: until their answer starts), in seconds.
const REQUEST_TIMEOUT_SECS: u64 = 30;
/// First reconnect delay.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// What discovery needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub socket: PathBuf,
    pub reconnect_max: Duration,
    pub host_name: String,
    pub max_line_bytes: usize,
}

/// Why a session with the engine ended.
enum Ended {
    Shutdown,
    Lost(String),
}

pub(crate) struct Discovery {
    pub s: Settings,
    pub registry: Arc<Registry>,
    pub rules: Arc<Rules>,
    pub metrics: Arc<Metrics>,
    pub api_tx: mpsc::Sender<ApiItem>,
    pub shutdown: watch::Receiver<bool>,
    /// Checkpointed logs-API offsets by container id, not yet claimed by a follower.
    pub restored: BTreeMap<String, u64>,
    pub followers: HashMap<String, Arc<FollowerSignals>>,
    /// Containers with log driver `none` already logged.
    pub announced: HashSet<String>,
}

impl Discovery {
    /// Runs until shutdown. `first` is told once the first connection attempt is over.
    pub async fn run(mut self, first: oneshot::Sender<bool>) {
        let mut first = Some(first);
        let mut backoff = BACKOFF_INITIAL;
        let mut failures: u32 = 0;
        loop {
            match self.session(&mut first).await {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::Lost(reason)) => {
                    warn!(%reason, socket = %self.s.socket.display(), "Lost the Docker event stream; reconnecting");
                    backoff = BACKOFF_INITIAL;
                    failures = 0;
                }
                Err(error) => {
                    if let Some(first) = first.take() {
                        warn!(socket = %self.s.socket.display(), %error,
                            "Docker API unavailable; container metadata comes from config.v2.json beside the log files until it is reachable");
                        let _ = first.send(false);
                    } else if failures == 0 {
                        warn!(socket = %self.s.socket.display(), %error, "Cannot reach the Docker API; retrying");
                    } else {
                        debug!(socket = %self.s.socket.display(), %error, "Cannot reach the Docker API; retrying");
                    }
                    failures = failures.saturating_add(1);
                }
            }
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 4));
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = self.shutdown.changed() => break,
            }
            backoff = (backoff * 2).min(self.s.reconnect_max);
        }
        debug!("Docker discovery stopped");
    }

    /// Connects, lists, then follows events. `Err` when the engine could not be reached or listed.
    async fn session(
        &mut self,
        first: &mut Option<oneshot::Sender<bool>>,
    ) -> Result<Ended, DockerError> {
        let socket = self.s.socket.to_string_lossy().into_owned();
        let docker = Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)?
            .negotiate_version()
            .await?;
        // Events are asked for from a second before the listing, so nothing falls in between;
        // an event seen twice is harmless (inspect again).
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(1))
            .unwrap_or(0);
        self.sync(&docker).await?;
        info!(socket = %socket, containers = self.registry.all().len(), "Connected to the Docker API");
        if let Some(first) = first.take() {
            let _ = first.send(true);
        }
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                ["start", "die", "destroy", "rename"]
                    .map(str::to_string)
                    .to_vec(),
            ),
        ]);
        let mut events = docker.events(Some(EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        }));
        loop {
            let event = tokio::select! {
                _ = self.shutdown.changed() => return Ok(Ended::Shutdown),
                e = events.next() => e,
            };
            match event {
                None => return Ok(Ended::Lost("the event stream ended".into())),
                Some(Err(e)) => return Ok(Ended::Lost(e.to_string())),
                Some(Ok(event)) => {
                    if let Err(e) = self.handle(&docker, event).await {
                        return Ok(Ended::Lost(e.to_string()));
                    }
                }
            }
        }
    }

    /// Lists and inspects every container and replaces the registry's contents.
    async fn sync(&mut self, docker: &Docker) -> Result<(), DockerError> {
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await?;
        let mut metas = Vec::with_capacity(list.len());
        for c in list {
            let Some(id) = c.id else { continue };
            if let Some(meta) = inspect(docker, &id).await? {
                metas.push(meta);
            }
        }
        for id in self.registry.replace_all(metas) {
            self.gone(&id);
        }
        for meta in self.registry.all() {
            self.seen(docker, &meta);
        }
        // Checkpointed logs-API sources of containers destroyed while the agent was away.
        let known: HashSet<String> = self.registry.all().iter().map(|m| m.id.clone()).collect();
        let stale: Vec<String> = self
            .restored
            .keys()
            .filter(|id| !known.contains(*id))
            .cloned()
            .collect();
        for id in stale {
            self.restored.remove(&id);
            let _ = self
                .api_tx
                .send(ApiItem::Forget(logs_api::fingerprint(&id)))
                .await;
        }
        Ok(())
    }

    async fn handle(&mut self, docker: &Docker, event: EventMessage) -> Result<(), DockerError> {
        let Some(id) = event.actor.and_then(|a| a.id) else {
            return Ok(());
        };
        let action = event.action.unwrap_or_default();
        debug!(container = %id, %action, "Docker event");
        if action == "destroy" {
            self.registry.remove(&id);
            self.gone(&id);
            return Ok(());
        }
        match inspect(docker, &id).await? {
            Some(meta) => {
                self.registry.upsert(meta.clone());
                self.seen(docker, &meta);
            }
            None => {
                self.registry.remove(&id);
                self.gone(&id);
            }
        }
        Ok(())
    }

    /// A container was listed or changed: start (or wake) its logs-API follower if it needs one.
    fn seen(&mut self, docker: &Docker, meta: &ContainerMeta) {
        if !self.registry.wants(meta) {
            return;
        }
        match meta.log_source() {
            LogSource::File => {}
            LogSource::None => {
                if self.announced.insert(meta.id.clone()) {
                    info!(container = %meta.id, name = meta.name.as_deref().unwrap_or(""),
                        "Container has log driver none; there is nothing to collect");
                }
            }
            LogSource::Api => {
                if let Some(signals) = self.followers.get(&meta.id) {
                    signals.wake.notify_one();
                    return;
                }
                let signals = Arc::new(FollowerSignals::default());
                self.followers.insert(meta.id.clone(), signals.clone());
                let ctx = FollowerCtx {
                    docker: docker.clone(),
                    registry: self.registry.clone(),
                    rules: self.rules.clone(),
                    tx: self.api_tx.clone(),
                    metrics: self.metrics.clone(),
                    shutdown: self.shutdown.clone(),
                    host_name: self.s.host_name.clone(),
                    max_line_bytes: self.s.max_line_bytes,
                    retry_max: self.s.reconnect_max,
                };
                let after = self.restored.remove(&meta.id).unwrap_or(0);
                tokio::spawn(logs_api::follow(ctx, meta.id.clone(), after, signals));
            }
        }
    }

    /// A container was destroyed: its follower finishes and forgets its source.
    fn gone(&mut self, id: &str) {
        self.announced.remove(id);
        if let Some(signals) = self.followers.remove(id) {
            signals.destroyed.store(true, Relaxed);
            signals.wake.notify_one();
        }
    }
}

/// Inspects one container; `None` when it no longer exists.
async fn inspect(docker: &Docker, id: &str) -> Result<Option<ContainerMeta>, DockerError> {
    match docker.inspect_container(id, None).await {
        Ok(i) => Ok(ContainerMeta::from_inspect(i)),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}
