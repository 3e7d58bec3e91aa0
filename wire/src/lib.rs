//! ferry's event model and batch codec: the only contract between agent and aggregator.
//!
//! A [`LogRecord`] is an Elastic Common Schema document (`@timestamp`, `message`,
//! `log.*`, `container.*`, `kubernetes.*`, …); a [`StatsSample`] carries one container's
//! cgroup figures under cAdvisor's metric names. A batch is NDJSON: one header line, then the
//! log records, then the stats samples, then (version 2) the fields each source's records
//! share, carried once; optionally zstd- or gzip-compressed (see [`batch`]).
//! This crate does no I/O beyond byte buffers and knows nothing of files, sockets or stores.
#![forbid(unsafe_code)]

mod batch;
mod exposition;
#[doc(hidden)]
pub mod fuzz_support;
mod id;
mod json;
mod record;

pub use batch::{
    batch_buffer, decode_batch, decompress, parse_batch, refused_encoding, refused_for_version,
    splice_ingested, BatchBuilder, BatchError, BatchHeader, Compression, DecodedBatch, DecodedLog,
    EncodedBatch, Ingested, RecordKeys, WIRE_VERSION,
};
pub use exposition::{escape_label_value, render_container_metrics, DurationHistogram};
pub use id::{event_id, event_id_bytes, source_id};
pub use json::{write_i64, write_log_record, write_plain_str, write_str, write_u64, Escapes};
pub use record::{
    Container, ContainerImage, Event, Flag, Host, Kubernetes, KubernetesContainer, KubernetesPod,
    LogFile, LogMeta, LogRecord, StatsSample, Stream,
};
