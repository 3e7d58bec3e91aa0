//! The log record and the stats sample, with ECS field names.
//!
//! Field order matters for one reason: `event` is serialised first, so the aggregator can splice
//! `event.ingested` into an encoded line without re-encoding it (see [`crate::splice_ingested`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One log event, as the agent sends it and the stores keep it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub event: Event,
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    pub log: LogMeta,
    #[serde(default, skip_serializing_if = "Container::is_empty")]
    pub container: Container,
    #[serde(default, skip_serializing_if = "Kubernetes::is_empty")]
    pub kubernetes: Kubernetes,
    #[serde(default)]
    pub host: Host,
    /// Fields a parser extracted (dotted ECS names as nested objects), merged at the top level.
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// `event.*`: identity and timing of the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Set by the aggregator when it stores the record (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested: Option<String>,
    /// Deterministic id: hash of the source fingerprint and the byte offset.
    pub id: String,
    /// When the agent read the line (RFC 3339, UTC), kept when a parsed time replaces `@timestamp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// Which output stream of the container wrote the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `log.*`: where the line came from and what happened to it on the way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    pub file: LogFile,
    /// Byte offset of the line that completed this record (for a record joined from partial
    /// lines, the offset of the last part). Strictly increasing within one fingerprint.
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
}

/// `log.file.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogFile {
    pub path: String,
    /// Source identity (see [`crate::source_id`]).
    pub fingerprint: String,
}

/// Something the pipeline did to a line that a reader should know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// The line was longer than `max_line_bytes`: the message holds its first bytes only.
    Truncated,
    /// The line was not valid UTF-8: invalid sequences were replaced with U+FFFD.
    InvalidUtf8,
    /// The Docker json-file line could not be decoded: the message is the raw line.
    MalformedJson,
    /// The CRI line did not have the `<time> <stream> <P|F> <msg>` shape: the message is the raw line.
    MalformedCri,
    /// Partial lines were joined into this record.
    Joined,
    /// The file ended (deleted, rotated away or truncated) inside a partial record.
    Incomplete,
    /// Several lines (a stack trace, a multi-line message) were joined by a multiline rule.
    Multiline,
}

impl Flag {
    /// Every flag, in declaration order.
    pub const ALL: [Flag; 7] = [
        Flag::Truncated,
        Flag::InvalidUtf8,
        Flag::MalformedJson,
        Flag::MalformedCri,
        Flag::Joined,
        Flag::Incomplete,
        Flag::Multiline,
    ];

    /// The name the record carries in `log.flags`.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Truncated => "truncated",
            Flag::InvalidUtf8 => "invalid_utf8",
            Flag::MalformedJson => "malformed_json",
            Flag::MalformedCri => "malformed_cri",
            Flag::Joined => "joined",
            Flag::Incomplete => "incomplete",
            Flag::Multiline => "multiline",
        }
    }
}

/// `container.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "ContainerImage::is_empty")]
    pub image: ContainerImage,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Container {
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.name.is_none() && self.image.is_empty() && self.labels.is_empty()
    }
}

/// `container.image.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerImage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ContainerImage {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
    }
}

/// `kubernetes.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Kubernetes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "KubernetesPod::is_empty")]
    pub pod: KubernetesPod,
    #[serde(default, skip_serializing_if = "KubernetesContainer::is_empty")]
    pub container: KubernetesContainer,
}

impl Kubernetes {
    pub fn is_empty(&self) -> bool {
        self.namespace.is_none() && self.pod.is_empty() && self.container.is_empty()
    }
}

/// `kubernetes.pod.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KubernetesPod {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl KubernetesPod {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.uid.is_none()
    }
}

/// `kubernetes.container.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KubernetesContainer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl KubernetesContainer {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
    }
}

/// `host.*`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
}

/// One container's resource figures at one instant, under cAdvisor's metric names
/// (`container_cpu_usage_seconds_total`, `container_memory_working_set_bytes`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSample {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub host: Host,
    #[serde(default, skip_serializing_if = "Container::is_empty")]
    pub container: Container,
    #[serde(default, skip_serializing_if = "Kubernetes::is_empty")]
    pub kubernetes: Kubernetes,
    /// Metric name → value.
    pub metrics: BTreeMap<String, f64>,
}
