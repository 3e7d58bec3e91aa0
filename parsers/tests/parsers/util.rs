//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use ferry_wire::LogRecord;

/// The time the "agent" read every test line (year-less timestamps take their year from it).
pub const READ_TIME: &str = "2026-11-28T12:00:00Z";

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/corpus")
}

pub fn record(message: &str) -> LogRecord {
    LogRecord {
        timestamp: READ_TIME.into(),
        message: message.into(),
        ..Default::default()
    }
}
