//! When to look and what to look at: file-system notifications and glob discovery.
//!
//! [`Wakeups`] watches (non-recursively) the directories of tailed files and the existing fixed
//! parent directories of the `include` globs. A notification carries no information the tailer
//! trusts: it only wakes the loop (and, for create/remove/rename, asks for a new glob scan). The
//! loop also wakes on its own every `poll_interval_ms`, so when notify cannot start or misses
//! events (network file systems, overflow), polling still finds everything. [`discover`] expands
//! the globs into files, never reading them.

use std::collections::HashSet;
use std::fs::Metadata;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, warn};

/// Notify-driven wake-ups of the tailer loop.
pub(crate) struct Wakeups {
    rx: Receiver<()>,
    tx: SyncSender<()>,
    rescan: Arc<AtomicBool>,
    watcher: Option<RecommendedWatcher>,
    watched: HashSet<PathBuf>,
}

impl Wakeups {
    /// Starts the watcher (or logs why it cannot and relies on polling) and watches the fixed
    /// parent directories of `include` that exist.
    pub fn new(include: &[String]) -> Self {
        let (tx, rx) = sync_channel(1);
        let rescan = Arc::new(AtomicBool::new(true));
        let watcher = {
            let tx = tx.clone();
            let rescan = rescan.clone();
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                match event {
                    Ok(event) => {
                        if matches!(
                            event.kind,
                            EventKind::Create(_)
                                | EventKind::Remove(_)
                                | EventKind::Modify(notify::event::ModifyKind::Name(_))
                        ) {
                            rescan.store(true, Ordering::Relaxed);
                        }
                    }
                    // Overflow and the like: look at everything again.
                    Err(_) => rescan.store(true, Ordering::Relaxed),
                }
                let _ = tx.try_send(());
            })
        };
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(error) => {
                warn!(%error, "File notifications unavailable; polling only");
                None
            }
        };
        let mut wakeups = Wakeups {
            rx,
            tx,
            rescan,
            watcher,
            watched: HashSet::new(),
        };
        for pattern in include {
            let dir = glob_parent(pattern);
            if dir.is_dir() {
                wakeups.watch(&dir);
            }
        }
        wakeups
    }

    /// Watches `dir` (non-recursively) if it is not watched yet.
    pub fn watch(&mut self, dir: &Path) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        if self.watched.contains(dir) {
            return;
        }
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                debug!(dir = %dir.display(), "Watching directory");
                self.watched.insert(dir.to_path_buf());
            }
            Err(error) => {
                debug!(dir = %dir.display(), %error, "Cannot watch directory; polling it")
            }
        }
    }

    /// Stops watching directories for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        self.watched.retain(|dir| {
            let k = keep(dir);
            if !k {
                let _ = watcher.unwatch(dir);
            }
            k
        });
    }

    /// Blocks until a notification or [`Wakeups::waker`] fires, or `timeout` passes.
    /// Waits for a notification or `timeout`. After a notification it waits a further
    /// [`NOTIFY_COALESCE`] and swallows the notifications that came meanwhile: containers that
    /// write a line at a time would otherwise wake the tailer once per line.
    pub fn wait(&self, timeout: Duration) {
        match self.rx.recv_timeout(timeout) {
            Ok(()) => {
                std::thread::sleep(NOTIFY_COALESCE.min(timeout));
                while self.rx.try_recv().is_ok() {}
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
    }

    /// Whether a notification asked for a new glob scan since the last call.
    pub fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::Relaxed)
    }

    /// A handle that wakes the loop from another thread.
    pub fn waker(&self) -> SyncSender<()> {
        self.tx.clone()
    }
}

/// How long the tailer gathers file-system notifications before it reads: at most this much
/// latency is added to a line, in exchange for one read pass per burst instead of one per write.
pub(crate) const NOTIFY_COALESCE: Duration = Duration::from_millis(20);

/// The leading directories of a glob pattern that contain no glob syntax.
pub(crate) fn glob_parent(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::new();
    for component in Path::new(pattern).components() {
        if let Component::Normal(part) = component {
            if part.to_string_lossy().contains(['*', '?', '[', '{']) {
                break;
            }
        }
        dir.push(component);
    }
    if dir == Path::new(pattern) {
        dir.pop();
    }
    dir
}

/// Regular files matching any `include` pattern and no `exclude` pattern (symlinks followed),
/// with their metadata. Unreadable directories are skipped with a debug log.
pub(crate) fn discover(include: &[String], exclude: &[glob::Pattern]) -> Vec<(PathBuf, Metadata)> {
    let mut found = Vec::new();
    for pattern in include {
        let paths = match glob::glob(pattern) {
            Ok(paths) => paths,
            Err(error) => {
                debug!(pattern, %error, "Bad include pattern");
                continue;
            }
        };
        for entry in paths {
            let path = match entry {
                Ok(path) => path,
                Err(error) => {
                    debug!(%error, "Glob skipped an unreadable path");
                    continue;
                }
            };
            if exclude.iter().any(|p| p.matches_path(&path)) {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => found.push((path, meta)),
                Ok(_) => {}
                Err(error) => debug!(path = %path.display(), %error, "Cannot stat a matched path"),
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_parent_stops_at_the_first_wildcard() {
        assert_eq!(
            glob_parent("/var/lib/docker/containers/*/*-json.log"),
            Path::new("/var/lib/docker/containers")
        );
        assert_eq!(
            glob_parent("/var/log/pods/*/*/*.log"),
            Path::new("/var/log/pods")
        );
        assert_eq!(glob_parent("/var/log/app.log"), Path::new("/var/log"));
    }

    #[test]
    fn notification_wakes_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/*.log", dir.path().display());
        let w = Wakeups::new(std::slice::from_ref(&pattern));
        assert!(w.take_rescan(), "first scan is always requested");
        std::fs::write(dir.path().join("a.log"), b"x\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !w.take_rescan() {
            assert!(
                std::time::Instant::now() < deadline,
                "no notification within 5 s"
            );
            w.wait(Duration::from_millis(50));
        }
        let found = discover(&[pattern], &[glob::Pattern::new("**/b.log").unwrap()]);
        assert_eq!(found.len(), 1);
    }
}
