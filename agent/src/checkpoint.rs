//! The position database: how far each source has been delivered, kept across restarts.
//!
//! On disk it is `<data_dir>/checkpoints.json`, a versioned document
//! `{"version":1,"sources":{"<fingerprint>":{path,dev,ino,head_hash,generation,offset}}}`,
//! replaced atomically (temp file, `sync_all`, `rename`, fsync of the directory). A leftover temp
//! file from a crash is removed at load; a file that cannot be read as a checkpoint is moved aside
//! with a warning, never a crash. This module stores what it is told: only the forwarder applies
//! updates, and only after the aggregator acknowledged the records before them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

const FILE_NAME: &str = "checkpoints.json";
const TMP_NAME: &str = "checkpoints.json.tmp";
/// The format version this build writes.
const VERSION: u32 = 1;

/// Where one source stands: the first byte not yet delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    /// The path the file was last seen under (informative only).
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    /// xxh3-64 of the file's head, 16 hex digits.
    pub head_hash: String,
    pub generation: u32,
    /// Byte offset to resume reading at.
    pub offset: u64,
}

/// A change to the checkpoint: a source's new position, or `None` to forget the source.
pub(crate) type Update = (String, Option<Entry>);

/// Fingerprint → entry.
pub(crate) type Sources = BTreeMap<String, Entry>;

/// The version-1 document.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1 {
    version: u32,
    sources: Sources,
}

/// Only the `version` key, read first to pick the document's shape.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// Why the checkpoint could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write checkpoint file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot move corrupt checkpoint file {path} aside: {source}")]
    MoveAside { path: PathBuf, source: io::Error },
}

/// Why the bytes of a checkpoint file are not a checkpoint.
#[derive(Debug, thiserror::Error)]
enum ParseError {
    #[error("not a checkpoint document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("checkpoint version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
}

/// The checkpoint file of one data directory and the acknowledged positions in memory.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    sources: Sources,
}

/// What [`Checkpointer::load`] found.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub checkpointer: Checkpointer,
    /// Whether a checkpoint file (readable or not) existed: false only at the very first start.
    pub existed: bool,
}

impl Checkpointer {
    /// Loads `<dir>/checkpoints.json`, removing a leftover temp file and moving a corrupt file
    /// aside (`checkpoints.json.corrupt-<unix seconds>`).
    pub fn load(dir: &Path) -> Result<Loaded, CheckpointError> {
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(TMP_NAME);
        if tmp.exists() {
            warn!(path = %tmp.display(), "Removing leftover checkpoint temp file");
            let _ = fs::remove_file(&tmp);
        }
        let mut checkpointer = Checkpointer {
            path: path.clone(),
            tmp,
            dir: dir.to_path_buf(),
            sources: Sources::new(),
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Loaded {
                    checkpointer,
                    existed: false,
                })
            }
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        match parse(&bytes) {
            Ok(sources) => checkpointer.sources = sources,
            Err(e) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = dir.join(format!("{FILE_NAME}.corrupt-{secs}"));
                warn!(path = %path.display(), moved_to = %aside.display(), error = %e,
                    "Checkpoint file is unreadable; moved aside, files are read from their start");
                fs::rename(&path, &aside)
                    .map_err(|source| CheckpointError::MoveAside { path, source })?;
            }
        }
        Ok(Loaded {
            checkpointer,
            existed: true,
        })
    }

    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    pub fn apply(&mut self, updates: impl IntoIterator<Item = Update>) {
        for (fingerprint, entry) in updates {
            match entry {
                Some(entry) => {
                    self.sources.insert(fingerprint, entry);
                }
                None => {
                    self.sources.remove(&fingerprint);
                }
            }
        }
    }

    /// The current document, ready for [`write_file`].
    pub fn encode(&self) -> Vec<u8> {
        let doc = V1 {
            version: VERSION,
            sources: self.sources.clone(),
        };
        serde_json::to_vec_pretty(&doc).expect("a checkpoint always serialises")
    }

    /// Where [`write_file`] puts the document: (file, temp file, directory).
    pub fn paths(&self) -> (PathBuf, PathBuf, PathBuf) {
        (self.path.clone(), self.tmp.clone(), self.dir.clone())
    }

    /// Encodes and writes the current document (blocking).
    pub fn write(&self) -> Result<(), CheckpointError> {
        let (path, tmp, dir) = self.paths();
        write_file(&path, &tmp, &dir, &self.encode())
    }
}

fn parse(bytes: &[u8]) -> Result<Sources, ParseError> {
    let VersionOnly { version } = serde_json::from_slice(bytes)?;
    match version {
        1 => Ok(serde_json::from_slice::<V1>(bytes)?.sources),
        other => Err(ParseError::Version(other)),
    }
}

/// Replaces `path` with `bytes` atomically: write `tmp`, `sync_all`, rename, fsync `dir`.
pub(crate) fn write_file(
    path: &Path,
    tmp: &Path,
    dir: &Path,
    bytes: &[u8],
) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(tmp, path).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64) -> Entry {
        Entry {
            path: "/var/log/x.log".into(),
            dev: 1,
            ino: 2,
            head_hash: "00000000000000ff".into(),
            generation: 0,
            offset,
        }
    }

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = Checkpointer::load(dir.path()).unwrap();
        assert!(!loaded.existed);
        let mut cp = loaded.checkpointer;
        cp.apply([
            ("a".to_string(), Some(entry(10))),
            ("b".to_string(), Some(entry(20))),
        ]);
        cp.write().unwrap();
        cp.apply([("b".to_string(), None), ("a".to_string(), Some(entry(15)))]);
        cp.write().unwrap();
        assert!(!dir.path().join(TMP_NAME).exists());

        let text = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        let again = Checkpointer::load(dir.path()).unwrap();
        assert!(again.existed);
        assert_eq!(again.checkpointer.sources().len(), 1);
        assert_eq!(again.checkpointer.sources()["a"].offset, 15);
    }

    #[test]
    fn leftover_temp_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cp = Checkpointer::load(dir.path()).unwrap().checkpointer;
        cp.apply([("a".to_string(), Some(entry(7)))]);
        cp.write().unwrap();
        // A crash between writing the temp file and the rename leaves a half-written temp file.
        fs::write(dir.path().join(TMP_NAME), b"{\"version\":1,\"sour").unwrap();
        let loaded = Checkpointer::load(dir.path()).unwrap();
        assert_eq!(loaded.checkpointer.sources()["a"].offset, 7);
        assert!(!dir.path().join(TMP_NAME).exists());
    }

    #[test]
    fn corrupt_checkpoint_is_moved_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"\0\0garbage").unwrap();
        let loaded = Checkpointer::load(dir.path()).unwrap();
        assert!(
            loaded.existed,
            "a corrupt file still means this is not the first start"
        );
        assert!(loaded.checkpointer.sources().is_empty());
        assert!(!dir.path().join(FILE_NAME).exists());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("checkpoints.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);

        fs::write(
            dir.path().join(FILE_NAME),
            b"{\"version\":7,\"sources\":{}}",
        )
        .unwrap();
        let loaded = Checkpointer::load(dir.path()).unwrap();
        assert!(loaded.checkpointer.sources().is_empty());
    }
}
