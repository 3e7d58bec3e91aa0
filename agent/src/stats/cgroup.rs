//! Finds a process's cgroup directories from `/proc/<pid>/cgroup`, under a configurable cgroup
//! root (so tests can point it at a fixture tree), and reads the small files inside them.
//!
//! Cgroup v1 (one hierarchy per controller, possibly co-mounted as `cpu,cpuacct`) and v2 (one
//! unified hierarchy, at the root or at `<root>/unified` on hybrid hosts) are both handled; a
//! process with a v1 `memory` line is read as v1, anything else as v2. Nothing here interprets
//! the numbers: that is `v1.rs` and `v2.rs`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use tracing::debug;

/// Where one container's cgroup files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CgroupDirs {
    /// Cgroup v1: one directory per controller (`cpu`, `cpuacct`, `memory`, `blkio`, `pids`).
    V1(HashMap<String, PathBuf>),
    /// Cgroup v2: the one unified directory.
    V2(PathBuf),
}

/// The cgroup mount points under one root, found once (they do not change while the agent runs).
#[derive(Debug, Clone)]
pub(crate) struct Mounts {
    root: PathBuf,
    /// v1 controller → its hierarchy's mount directory (co-mounted controllers share one).
    v1: HashMap<String, PathBuf>,
    /// The v2 hierarchy: the root itself (pure v2) or `<root>/unified` (hybrid).
    v2: Option<PathBuf>,
}

impl Mounts {
    /// Looks at the directories under `root` (`/sys/fs/cgroup` on a host).
    pub fn scan(root: &Path) -> Mounts {
        let mut v1 = HashMap::new();
        let v2 = if root.join("cgroup.controllers").exists() {
            Some(root.to_path_buf())
        } else if root.join("unified/cgroup.controllers").exists() {
            Some(root.join("unified"))
        } else {
            None
        };
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == "unified" || !entry.path().is_dir() {
                    continue;
                }
                for controller in name.split(',') {
                    // A plain directory (or a `cpu -> cpu,cpuacct` symlink) wins over the
                    // co-mounted name: both point at the same hierarchy.
                    if controller == name || !v1.contains_key(controller) {
                        v1.insert(controller.to_string(), entry.path());
                    }
                }
            }
        }
        Mounts {
            root: root.to_path_buf(),
            v1,
            v2,
        }
    }

    /// The cgroup directories of the process whose `/proc/<pid>/cgroup` reads `text`.
    pub fn dirs(&self, text: &str) -> Option<CgroupDirs> {
        let mut v1 = HashMap::new();
        let mut unified = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if controllers.is_empty() {
                unified = Some(rel.to_string());
                continue;
            }
            for controller in controllers.split(',') {
                if let Some(mount) = self.v1.get(controller) {
                    v1.insert(controller.to_string(), mount.join(rel));
                }
            }
        }
        if v1.contains_key("memory") {
            return Some(CgroupDirs::V1(v1));
        }
        let base = self.v2.clone().unwrap_or_else(|| self.root.clone());
        unified.map(|rel| CgroupDirs::V2(base.join(rel)))
    }
}

impl CgroupDirs {
    /// Whether the cgroup path names the container (guards against a PID reused by another
    /// process after the container died: Docker, containerd, CRI-O and Podman all put the full
    /// id in the cgroup path).
    pub fn belongs_to(&self, container_id: &str) -> bool {
        if container_id.is_empty() {
            return true;
        }
        let contains = |p: &PathBuf| p.to_string_lossy().contains(container_id);
        match self {
            CgroupDirs::V1(dirs) => dirs.get("memory").is_some_and(contains),
            CgroupDirs::V2(dir) => contains(dir),
        }
    }
}

/// Reads small cgroup and proc files into one reused buffer.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    buf: String,
}

impl Reader {
    /// The content of `dir/name`, or `None` (logged at debug) when it is missing or unreadable:
    /// a container that stopped mid-read, a controller that is not enabled, an older kernel.
    pub fn read(&mut self, dir: &Path, name: &str) -> Option<&str> {
        let path = dir.join(name);
        self.buf.clear();
        match File::open(&path).and_then(|mut f| f.read_to_string(&mut self.buf)) {
            Ok(_) => Some(self.buf.as_str()),
            Err(error) => {
                if error.kind() != io::ErrorKind::NotFound {
                    debug!(path = %path.display(), %error, "Cannot read stats file");
                } else {
                    debug!(path = %path.display(), "Stats file missing");
                }
                None
            }
        }
    }

    /// `dir/name` as one unsigned number; `max` (no limit) reads as `None`.
    pub fn u64(&mut self, dir: &Path, name: &str) -> Option<u64> {
        self.read(dir, name)?.trim().parse().ok()
    }
}

/// The value after `key ` on a `key value` line of a flat-keyed file (`memory.stat`, `cpu.stat`).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_V1: &str = "12:pids:/docker/abc\n11:cpu,cpuacct:/docker/abc\n9:memory:/docker/abc\n8:blkio:/docker/abc\n1:name=systemd:/docker/abc\n0::/docker/abc\n";

    #[test]
    fn v1_controllers_resolve_through_separate_and_comounted_mounts() {
        let root = tempfile::tempdir().unwrap();
        for d in [
            "cpu,cpuacct",
            "memory",
            "blkio",
            "pids",
            "systemd",
            "unified",
        ] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        std::fs::write(root.path().join("unified/cgroup.controllers"), "").unwrap();
        let mounts = Mounts::scan(root.path());
        let Some(CgroupDirs::V1(dirs)) = mounts.dirs(DOCKER_V1) else {
            panic!("not v1");
        };
        assert_eq!(dirs["cpu"], root.path().join("cpu,cpuacct/docker/abc"));
        assert_eq!(dirs["cpuacct"], root.path().join("cpu,cpuacct/docker/abc"));
        assert_eq!(dirs["memory"], root.path().join("memory/docker/abc"));
        assert_eq!(dirs["pids"], root.path().join("pids/docker/abc"));
        assert!(CgroupDirs::V1(dirs.clone()).belongs_to("abc"));
        assert!(!CgroupDirs::V1(dirs).belongs_to("def"));
    }

    #[test]
    fn pure_v2_uses_the_unified_path() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory io pids").unwrap();
        let mounts = Mounts::scan(root.path());
        assert_eq!(
            mounts.dirs("0::/system.slice/docker-abc.scope\n"),
            Some(CgroupDirs::V2(
                root.path().join("system.slice/docker-abc.scope")
            ))
        );
        assert_eq!(mounts.dirs("garbage"), None);
    }

    #[test]
    fn hybrid_without_v1_memory_reads_unified() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("unified")).unwrap();
        std::fs::write(root.path().join("unified/cgroup.controllers"), "").unwrap();
        let mounts = Mounts::scan(root.path());
        assert_eq!(
            mounts.dirs("1:name=systemd:/x\n0::/x\n"),
            Some(CgroupDirs::V2(root.path().join("unified/x")))
        );
    }

    #[test]
    fn reader_reports_missing_files_as_none() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pids.max"), "max\n").unwrap();
        std::fs::write(dir.path().join("pids.current"), "7\n").unwrap();
        let mut r = Reader::default();
        assert_eq!(r.u64(dir.path(), "pids.current"), Some(7));
        assert_eq!(r.u64(dir.path(), "pids.max"), None);
        assert_eq!(r.u64(dir.path(), "nope"), None);
        assert_eq!(keyed("a 1\nbb 2\n", "bb"), Some(2));
        assert_eq!(keyed("a 1\nbb 2\n", "b"), None);
    }
}
