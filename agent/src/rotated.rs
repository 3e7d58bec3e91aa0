//! Rotated siblings: the files beside a log file that hold its earlier contents after a rotation
//! (`app.log.1`, `X-json.log.2`, `0.log.20261129-101010`, `name-20261129`).
//!
//! [`siblings`] lists them, oldest first, from one directory read; it never opens or reads them.
//! Which sibling holds which source is the tailer's business (by inode, or by head and the bytes
//! before a checkpoint, see `crate::fingerprint::holds`). A compressed sibling is listed (so a loss
//! can be reported as such) but flagged: it is never read as text.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::fingerprint::FileKey;

/// Name endings of compressed files.
const COMPRESSED: [&str; 7] = [".gz", ".zst", ".bz2", ".xz", ".lz4", ".zip", ".Z"];

/// One rotated sibling of a file.
#[derive(Debug, Clone)]
pub(crate) struct Sibling {
    pub path: PathBuf,
    pub key: FileKey,
    pub len: u64,
    pub compressed: bool,
    mtime: SystemTime,
    /// The number in `.N` (Docker, logrotate), used to order siblings of equal mtime.
    number: Option<u64>,
}

/// The rotated siblings of `live` (regular files in its directory whose name is `live`'s name
/// followed by a suffix matching one of `suffixes`), oldest first: by modification time, then by
/// rotation number, higher first.
pub(crate) fn siblings(live: &Path, suffixes: &[glob::Pattern]) -> Vec<Sibling> {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if suffixes.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Sibling> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let file_name = e.file_name();
            let rest = file_name.to_str()?.strip_prefix(name)?;
            if rest.is_empty() || !suffixes.iter().any(|p| p.matches(rest)) {
                return None;
            }
            let path = e.path();
            let meta = fs::metadata(&path).ok()?;
            if !meta.is_file() {
                return None;
            }
            Some(Sibling {
                key: FileKey::of(&meta),
                len: meta.len(),
                compressed: COMPRESSED.iter().any(|c| rest.ends_with(c)),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                number: rest.strip_prefix('.').and_then(|n| n.parse().ok()),
                path,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        a.mtime
            .cmp(&b.mtime)
            .then_with(|| b.number.cmp(&a.number))
            .then_with(|| a.path.cmp(&b.path))
    });
    out
}

impl Sibling {
    /// Opens the sibling, checking that the file opened is the one listed: between the listing
    /// and the open, a writer rotating on its own schedule may have renamed another file to this
    /// name (`name.1` becomes `name.2` and a new copy `name.1`). `None` when the name no longer
    /// holds the listed file: the next listing sees it where it went.
    pub fn open(&self) -> Option<fs::File> {
        let file = fs::File::open(&self.path).ok()?;
        let meta = file.metadata().ok()?;
        (FileKey::of(&meta) == self.key).then_some(file)
    }
}

/// The configured suffix patterns (validated at load; invalid ones are skipped).
pub(crate) fn patterns(suffixes: &[String]) -> Vec<glob::Pattern> {
    suffixes
        .iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn names(live: &Path) -> Vec<(String, bool)> {
        let suffixes = patterns(&crate::config::default_rotated_suffixes());
        siblings(live, &suffixes)
            .into_iter()
            .map(|s| {
                let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, s.compressed)
            })
            .collect()
    }

    #[test]
    fn lists_rotated_names_oldest_first_and_flags_compressed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.log");
        // Oldest first, as written here.
        let rotated = [
            "app.log.3.gz",
            "app.log-20261128",
            "app.log.20261129-101010",
            "app.log.2",
            "app.log.1",
        ];
        let t = SystemTime::now() - Duration::from_secs(100);
        for (i, n) in rotated
            .iter()
            .chain(&["app.log", "app.logger", "other.log.1"])
            .enumerate()
        {
            let path = dir.path().join(n);
            fs::write(&path, n).unwrap();
            let f = fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(t + Duration::from_secs(i as u64)).unwrap();
        }
        fs::create_dir(dir.path().join("app.log.9")).unwrap();
        let got = names(&live);
        let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(got_names, rotated);
        assert!(got.iter().all(|(n, c)| *c == n.ends_with(".gz")));
        assert!(siblings(&live, &[]).is_empty());
    }

    #[test]
    fn opening_a_sibling_renamed_over_since_the_listing_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.log");
        fs::write(dir.path().join("app.log.1"), "older\n").unwrap();
        let suffixes = patterns(&crate::config::default_rotated_suffixes());
        let listed = siblings(&live, &suffixes);
        assert_eq!(listed.len(), 1);
        assert!(listed[0].open().is_some());
        // The writer rotates: app.log.1 moves to app.log.2 and a new copy takes its name.
        fs::rename(dir.path().join("app.log.1"), dir.path().join("app.log.2")).unwrap();
        fs::write(dir.path().join("app.log.1"), "newer\n").unwrap();
        assert!(
            listed[0].open().is_none(),
            "another file under the listed name"
        );
        let again = siblings(&live, &suffixes);
        let opened: Vec<String> = again
            .iter()
            .map(|s| std::io::read_to_string(s.open().unwrap()).unwrap())
            .collect();
        assert_eq!(opened.len(), 2);
        assert!(opened.contains(&"older\n".to_string()) && opened.contains(&"newer\n".to_string()));
    }

    #[test]
    fn equal_times_are_ordered_by_rotation_number() {
        let dir = tempfile::tempdir().unwrap();
        let t = SystemTime::now();
        for n in ["x.log.1", "x.log.10", "x.log.2"] {
            let path = dir.path().join(n);
            fs::write(&path, n).unwrap();
            let f = fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(t).unwrap();
        }
        let got: Vec<String> = names(&dir.path().join("x.log"))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(got, ["x.log.10", "x.log.2", "x.log.1"]);
    }
}
