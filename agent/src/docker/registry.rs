//! The metadata cache: every container the Docker API reported, keyed by id, shared by the
//! discovery task (the only writer), the tailer thread, the logs-API followers and the stats
//! engine (readers). Readers take a short read lock; [`Registry::version`] tells them cheaply
//! whether anything changed since they last looked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, RwLock};

use ferry_wire::{Container, Kubernetes};

use crate::container::{ContainerMeta, Filter, LogSource};
use crate::metrics::ContainerGauges;

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Arc<ContainerMeta>>,
    /// `LogPath` → id.
    by_path: HashMap<PathBuf, String>,
}

/// Container metadata by id. Cheap to share (`Arc<Registry>`) and to read from any thread.
#[derive(Debug)]
pub(crate) struct Registry {
    inner: RwLock<Inner>,
    version: AtomicU64,
    labels_allowlist: Vec<String>,
    filter: Filter,
    gauges: Arc<ContainerGauges>,
    waker: Mutex<Option<SyncSender<()>>>,
}

impl Registry {
    pub fn new(
        labels_allowlist: Vec<String>,
        filter: Filter,
        gauges: Arc<ContainerGauges>,
    ) -> Self {
        Registry {
            inner: RwLock::default(),
            version: AtomicU64::new(0),
            labels_allowlist,
            filter,
            gauges,
            waker: Mutex::new(None),
        }
    }

    /// Wakes the tailer after each change (so it re-enriches open files promptly).
    pub fn set_waker(&self, waker: SyncSender<()>) {
        if let Ok(mut w) = self.waker.lock() {
            *w = Some(waker);
        }
    }

    /// Bumped on every change.
    pub fn version(&self) -> u64 {
        self.version.load(Relaxed)
    }

    pub fn get(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        self.read(|i| i.by_id.get(id).cloned())
    }

    /// The container whose `LogPath` is `path`.
    pub fn id_for_path(&self, path: &Path) -> Option<String> {
        self.read(|i| i.by_path.get(path).cloned())
    }

    /// Whether the container's logs are collected (opt-out label and include/exclude selectors).
    pub fn wants(&self, meta: &ContainerMeta) -> bool {
        self.filter.wants(meta)
    }

    /// `(id, init pid)` of every running container the registry knows.
    pub(crate) fn stats_targets(&self) -> Vec<(String, u32)> {
        self.read(|i| {
            i.by_id
                .values()
                .filter(|m| m.running && m.pid != 0)
                .map(|m| (m.id.clone(), m.pid))
                .collect()
        })
    }

    /// Fills `container.*` and `kubernetes.*` from the container's metadata; leaves both as they
    /// are when the id is unknown.
    pub(crate) fn enrich(&self, id: &str, container: &mut Container, kubernetes: &mut Kubernetes) {
        if let Some(meta) = self.get(id) {
            meta.apply(&self.labels_allowlist, container, kubernetes);
        }
    }

    /// Adds or replaces one container; returns the previous metadata.
    pub fn upsert(&self, meta: ContainerMeta) -> Option<Arc<ContainerMeta>> {
        let previous = self.write(|i| {
            let previous = i.by_id.insert(meta.id.clone(), Arc::new(meta.clone()));
            if let Some(p) = previous.as_ref().and_then(|p| p.log_path.as_ref()) {
                i.by_path.remove(p);
            }
            if let Some(p) = &meta.log_path {
                i.by_path.insert(p.clone(), meta.id.clone());
            }
            previous
        });
        self.changed();
        previous
    }

    /// Forgets a destroyed container.
    pub fn remove(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        let removed = self.write(|i| {
            let removed = i.by_id.remove(id);
            if let Some(p) = removed.as_ref().and_then(|m| m.log_path.as_ref()) {
                i.by_path.remove(p);
            }
            removed
        });
        if removed.is_some() {
            self.changed();
        }
        removed
    }

    /// Replaces everything with a fresh listing; returns the ids that are gone.
    pub fn replace_all(&self, metas: Vec<ContainerMeta>) -> Vec<String> {
        let gone = self.write(|i| {
            let mut fresh = Inner::default();
            for m in metas {
                if let Some(p) = &m.log_path {
                    fresh.by_path.insert(p.clone(), m.id.clone());
                }
                fresh.by_id.insert(m.id.clone(), Arc::new(m));
            }
            let gone = i
                .by_id
                .keys()
                .filter(|id| !fresh.by_id.contains_key(*id))
                .cloned()
                .collect();
            *i = fresh;
            gone
        });
        self.changed();
        gone
    }

    /// Every known container (a snapshot).
    pub fn all(&self) -> Vec<Arc<ContainerMeta>> {
        self.read(|i| i.by_id.values().cloned().collect())
    }

    fn changed(&self) {
        self.version.fetch_add(1, Relaxed);
        let (mut file, mut api, mut none, mut excluded) = (0, 0, 0, 0);
        self.read(|i| {
            for m in i.by_id.values() {
                if !self.filter.wants(m) {
                    excluded += 1;
                    continue;
                }
                match m.log_source() {
                    LogSource::File => file += 1,
                    LogSource::Api => api += 1,
                    LogSource::None => none += 1,
                }
            }
        });
        let g = &self.gauges;
        g.file.store(file, Relaxed);
        g.logs_api.store(api, Relaxed);
        g.no_logs.store(none, Relaxed);
        g.excluded.store(excluded, Relaxed);
        if let Ok(w) = self.waker.lock() {
            if let Some(w) = w.as_ref() {
                let _ = w.try_send(());
            }
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        match self.inner.read() {
            Ok(g) => f(&g),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        match self.inner.write() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, driver: &str, running: bool) -> ContainerMeta {
        ContainerMeta {
            id: id.into(),
            name: Some(format!("n-{id}")),
            log_driver: Some(driver.into()),
            log_path: (driver == "json-file")
                .then(|| PathBuf::from(format!("/c/{id}/{id}-json.log"))),
            pid: if running { 100 } else { 0 },
            running,
            ..Default::default()
        }
    }

    #[test]
    fn tracks_containers_paths_stats_targets_and_gauges() {
        let gauges = Arc::new(ContainerGauges::default());
        let r = Registry::new(
            vec![],
            Filter::new(&[], &["name:n-x*".into()]),
            gauges.clone(),
        );
        let v0 = r.version();
        r.upsert(meta("a", "json-file", true));
        r.upsert(meta("b", "local", false));
        r.upsert(meta("c", "none", true));
        r.upsert(meta("x1", "json-file", true));
        assert!(r.version() > v0);
        assert_eq!(
            r.id_for_path(Path::new("/c/a/a-json.log")).as_deref(),
            Some("a")
        );
        let mut targets = r.stats_targets();
        targets.sort();
        assert_eq!(
            targets,
            [
                ("a".to_string(), 100),
                ("c".to_string(), 100),
                ("x1".to_string(), 100)
            ]
        );
        let mut text = String::new();
        gauges.render(&mut text);
        for line in [
            "ferry_agent_containers{state=\"file\"} 1",
            "ferry_agent_containers{state=\"logs_api\"} 1",
            "ferry_agent_containers{state=\"no_logs\"} 1",
            "ferry_agent_containers{state=\"excluded\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let mut c = Container::default();
        let mut k = Kubernetes::default();
        r.enrich("a", &mut c, &mut k);
        assert_eq!(c.name.as_deref(), Some("n-a"));

        r.remove("a");
        assert!(r.id_for_path(Path::new("/c/a/a-json.log")).is_none());
        let gone = r.replace_all(vec![meta("b", "local", true)]);
        let mut gone = gone;
        gone.sort();
        assert_eq!(gone, ["c", "x1"]);
        assert_eq!(r.all().len(), 1);
    }
}
