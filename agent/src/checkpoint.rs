//! The position database: how far each source has been delivered, kept across restarts.
//!
//! On disk it is `<data_dir>/checkpoints.json`, a versioned document
//! `{"version":2,"sources":{"<fingerprint>":{path,dev,ino,head_hash,generation,offset,tail_hash,
//! finished}}}`, replaced atomically (temp file, `sync_all`, `rename`, fsync of the directory).
//! Version 1 (without `tail_hash` and `finished`) is still read. A leftover temp file from a crash
//! is removed at load; a file that cannot be read as a checkpoint is moved aside with a warning,
//! never a crash; a document of a newer version than this build writes stops the start with an
//! error (reading it as corrupt would read every file again from its start). This module stores
//! what it is told: only the forwarder applies updates, and only after the aggregator
//! acknowledged the records before them.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

const FILE_NAME: &str = "checkpoints.json";
const TMP_NAME: &str = "checkpoints.json.tmp";
/// The format version this build writes.
const VERSION: u32 = 2;

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
    /// xxh3-64 of the (at most [`crate::fingerprint::TAIL_BYTES`]) bytes just before `offset`:
    /// a file that holds the same head but other bytes there is not this source (it was truncated
    /// and written again). Absent at offset 0 and in version 1 documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_hash: Option<String>,
    /// The file was read to its end and closed after it was rotated away; the entry stays while
    /// the file is still on disk, so the agent knows it was read and never reads it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

/// A change to the checkpoint: a source's new position, or `None` to forget the source.
pub(crate) type Update = (String, Option<Entry>);

/// Fingerprint → entry.
pub(crate) type Sources = BTreeMap<String, Entry>;

/// The version-1 and version-2 document (version 2 added optional entry fields).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
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
    #[error("checkpoint file {path} has version {version}, written by a newer ferry (this build reads versions 1 to {VERSION}); run the newer agent, or move the file away to read every file again from its start")]
    Newer { path: PathBuf, version: u32 },
}

/// Why the bytes of a checkpoint file are not a checkpoint.
#[derive(Debug, thiserror::Error)]
enum ParseError {
    #[error("not a checkpoint document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("checkpoint version {0} is not supported (this build reads versions 1 to {VERSION})")]
    Version(u32),
    #[error("checkpoint version {0} is newer than this build")]
    Newer(u32),
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
    /// The file was a version 1 document: it does not list the rotated files already read, so
    /// the rotated files on disk at this start are not read as new.
    pub legacy: bool,
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
                    legacy: false,
                })
            }
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        let mut legacy = false;
        match parse(&bytes) {
            Ok((version, sources)) => {
                checkpointer.sources = sources;
                legacy = version == 1;
            }
            Err(ParseError::Newer(version)) => {
                return Err(CheckpointError::Newer { path, version })
            }
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
            legacy,
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

    /// Adds entries for sources it does not know yet (known ones keep their position).
    pub fn register(&mut self, updates: impl IntoIterator<Item = Update>) {
        for (fingerprint, entry) in updates {
            if let Some(entry) = entry {
                self.sources.entry(fingerprint).or_insert(entry);
            }
        }
    }

    /// The current document, ready for [`write_file`].
    pub fn encode(&self) -> Vec<u8> {
        let doc = Document {
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

/// The document's version and sources.
fn parse(bytes: &[u8]) -> Result<(u32, Sources), ParseError> {
    let VersionOnly { version } = serde_json::from_slice(bytes)?;
    match version {
        1 | 2 => Ok((version, serde_json::from_slice::<Document>(bytes)?.sources)),
        v if v > VERSION => Err(ParseError::Newer(v)),
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
            tail_hash: None,
            finished: false,
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
        assert!(text.contains("\"version\": 2"), "{text}");
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
            b"{\"version\":0,\"sources\":{}}",
        )
        .unwrap();
        let loaded = Checkpointer::load(dir.path()).unwrap();
        assert!(loaded.checkpointer.sources().is_empty());
    }

    #[test]
    fn newer_version_is_refused_not_read_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let doc = b"{\"version\":3,\"sources\":{\"a\":{\"what\":1}}}";
        fs::write(dir.path().join(FILE_NAME), doc).unwrap();
        let err = Checkpointer::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Newer { version: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer ferry"), "{err}");
        assert_eq!(
            fs::read(dir.path().join(FILE_NAME)).unwrap(),
            doc,
            "left as it was"
        );
    }

    #[test]
    fn version_1_documents_are_read_as_legacy() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version":1,"sources":{"a":{"path":"/var/log/x.log","dev":1,"ino":2,"head_hash":"00000000000000ff","generation":0,"offset":9}}}"#,
        )
        .unwrap();
        let loaded = Checkpointer::load(dir.path()).unwrap();
        assert!(loaded.legacy);
        assert_eq!(loaded.checkpointer.sources()["a"], entry(9));
    }
}
