//! The agent's configuration: what to tail, how to read it, where to send it.
//!
//! Every field has a default (see the `default_*` functions), so an empty TOML table is a valid
//! agent configuration. [`AgentConfig::validate`] checks the whole configuration once, at start,
//! and reports every problem it finds with the field it belongs to. Only
//! [`AgentConfig::resolve`] looks outside the table, at the token file and the environment variable
//! it names (for secrets and node names mounted by Docker or Kubernetes); nothing here touches the
//! network.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Configuration of the per-node agent (`[agent]` in ferry's config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `host.name` put on every record. Default: the kernel's host name
    /// (`/proc/sys/kernel/hostname`, then `/etc/hostname`, then `localhost`).
    pub host_name: String,
    /// Name of an environment variable whose value becomes `host_name`, read once at start: for
    /// a node name set by the orchestrator (Kubernetes' downward API `spec.nodeName`, Swarm's
    /// `{{.Node.Hostname}}`). The variable must be set and not empty. Default: none.
    pub host_name_env: Option<String>,
    /// Directory for the checkpoint file (`checkpoints.json`) and dead-lettered batches
    /// (`dead-letter/`). Created at start if missing. Default `/var/lib/ferry/agent`.
    pub data_dir: PathBuf,
    /// Where batches go: `aggregator` (default) posts them to `aggregator_url`; `discard` drops
    /// each batch once it is built (lines read, decoded, parsed and encoded, then thrown away,
    /// with checkpoints advancing as if delivered). `discard` is for measuring the agent's own
    /// cost and trying rules on a node's real logs; it delivers nothing, and says so at start.
    pub output: OutputConfig,
    /// Base URL of the aggregator; batches are posted to `{aggregator_url}/v1/batches`.
    /// `http://` or `https://` (then `tls.ca_file` is needed). Default `http://127.0.0.1:7480`.
    pub aggregator_url: String,
    /// Several aggregators, tried in order: batches go to one until it fails (no connection,
    /// TLS failure, time-out, 5xx), then to the next, which is kept while it works. When set,
    /// `aggregator_url` must be left at its default. Default: none (`aggregator_url` alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aggregator_urls: Vec<String>,
    /// Bearer token sent as `Authorization: Bearer <token>`. Prefer `token_file` or `token_env`:
    /// a secret does not belong in a configuration file. Default: none.
    pub token: Option<String>,
    /// File holding the bearer token (a mounted Docker or Kubernetes secret), read once at start,
    /// surrounding whitespace trimmed; not with `token` or `token_env`. Default: none.
    pub token_file: Option<PathBuf>,
    /// Name of an environment variable holding the bearer token, read once at start; not with
    /// `token` or `token_file`. Default: none.
    pub token_env: Option<String>,
    /// TLS for `https://` aggregator URLs (`[agent.tls]`: `ca_file`, and for mTLS `cert_file`
    /// and `key_file`). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<AgentTlsConfig>,
    /// Glob patterns of the log files to tail. Default: Docker's json-file logs and the
    /// kubelet's pod logs (`/var/lib/docker/containers/*/*-json.log`, `/var/log/pods/*/*/*.log`).
    pub include: Vec<String>,
    /// Glob patterns of files never to tail, even when `include` matches them. Default: none.
    pub exclude: Vec<String>,
    /// How lines are decoded. `auto` (default) picks per file: `*-json.log` is Docker
    /// json-file, a file under `pods/<ns>_<pod>_<uid>/<container>/` is CRI, anything else plain.
    pub format: FormatConfig,
    /// Where to start in files that have no checkpoint at the agent's very first start (no
    /// checkpoint file in `data_dir`). Files that appear later are always read from the
    /// beginning. Default `beginning`.
    pub read_from: ReadFrom,
    /// Longest line (or joined partial message) kept, in bytes; longer ones are cut to this size
    /// and flagged `truncated`. Default 262144 (256 KiB).
    pub max_line_bytes: usize,
    /// Size of one read from a file, in bytes. Default 262144 (256 KiB).
    pub read_buffer_bytes: usize,
    /// How often every tailed file is checked for new data, truncation and deletion even when
    /// no file-system notification arrived (the polling fallback), in milliseconds. Default 250.
    pub poll_interval_ms: u64,
    /// How often the `include` globs are expanded to find new files, in milliseconds (a
    /// file-system notification also triggers a scan). Default 1000.
    pub glob_interval_ms: u64,
    /// How long a file that was rotated away (renamed out of the `include` globs) or deleted stays
    /// open once it is read to its end (a writer may still be finishing its last lines), in
    /// milliseconds. Default 5000.
    pub rotate_wait_ms: u64,
    /// Where a file's rotated copies are looked for: glob patterns matched against what follows
    /// the file's name in its own directory (`app.log` → `app.log.1`: the pattern sees `.1`).
    /// A source whose file moved away or was truncated while the agent was not looking is
    /// finished in the sibling that holds it (same inode, or same head and the same bytes before
    /// the checkpoint), and the siblings of a newly met file that the agent never read are read
    /// first, oldest first. Siblings whose name ends in `.gz`, `.zst`, `.bz2`, `.xz`, `.lz4`,
    /// `.zip` or `.Z` are never read. Default `[".[0-9]*", "-[0-9]*"]`: Docker's `X-json.log.1`,
    /// the kubelet's `0.log.<timestamp>`, logrotate's `name.1` and `name-<date>`. Empty: rotated
    /// copies are never looked for.
    pub rotated_suffixes: Vec<String>,
    /// A batch is sealed once its uncompressed size reaches this many bytes. Default 1048576.
    pub batch_max_bytes: usize,
    /// A batch is sealed once it holds this many records. Default 10000.
    pub batch_max_records: usize,
    /// A batch is sealed this many milliseconds after its first record at the latest. Default 1000.
    pub batch_max_age_ms: u64,
    /// Compression of batch bodies: `lz4` (default: the least CPU, on both ends), `zstd` (about
    /// 40 % fewer bytes on the wire than lz4, for 1.5× the agent's compression CPU), `gzip`, or
    /// `none` (for a same-host aggregator). An aggregator that predates lz4 refuses it; the agent
    /// then sends zstd for 5 minutes before trying lz4 again.
    pub compression: CompressionConfig,
    /// Compression level: gzip 0 (store) to 9 (smallest); zstd −7 (fastest, zstd's "fast"
    /// levels) to 19 (smallest); lz4 has none (leave it unset). Default 1.
    pub compression_level: i32,
    /// First retry delay after a failed send, in milliseconds. Default 100.
    pub backoff_initial_ms: u64,
    /// Longest retry delay (also caps a server's `Retry-After`), in milliseconds. Default 30000.
    pub backoff_max_ms: u64,
    /// Time limit of one request to the aggregator (connect, send, response), in milliseconds.
    /// Default 30000.
    pub request_timeout_ms: u64,
    /// How long [`crate::AgentHandle::shutdown`] keeps trying to deliver the batches already read,
    /// in milliseconds; what is not delivered by then is read again after the next start.
    /// Default 5000.
    pub shutdown_timeout_ms: u64,
    /// Address of the agent's own HTTP server (`GET /metrics`, `GET /health`); port 0 picks a
    /// free port. Default `127.0.0.1:7481`.
    pub metrics_listen: SocketAddr,
    /// Docker container labels copied to `container.labels.*` (exact label keys). Labels are
    /// opt-in to keep label cardinality bounded. Default: none.
    pub container_labels_allowlist: Vec<String>,
    /// Discover containers through the Docker API: metadata (name, image, labels, Compose, Swarm
    /// and `io.kubernetes.*` labels) for their log files, and the logs API for containers whose log
    /// driver writes no json-file. If the socket is missing or unreachable the agent still starts,
    /// warns, takes metadata from each container's `config.v2.json`, and keeps reconnecting.
    /// Default `true`.
    pub docker_enabled: bool,
    /// Path of the Docker engine's unix socket. Default `/var/run/docker.sock`.
    pub docker_socket: PathBuf,
    /// Longest delay between attempts to reconnect to the Docker API (exponential backoff from
    /// 100 ms), in milliseconds. Default 10000.
    pub docker_reconnect_max_ms: u64,
    /// Only collect the logs of containers matching one of these selectors (empty: all
    /// containers). A selector is `name:<glob>` (container name, e.g. `name:web-*`),
    /// `image:<glob>` (image as given to `docker run`, e.g. `image:nginx*`), `label:<key>` (label
    /// present) or `label:<key>=<glob>` (e.g. `label:app=web`). A container labelled
    /// `ferry.enable=false` is never collected. Default: none.
    pub containers_include: Vec<String>,
    /// Never collect the logs of containers matching one of these selectors (syntax as
    /// `containers_include`). Default: none.
    pub containers_exclude: Vec<String>,
    /// Collect container resource stats (cgroup CPU, memory, block IO, pids; network) and send
    /// them under cAdvisor's metric names. Default `true`.
    pub stats_enabled: bool,
    /// How often every container's stats are read, in milliseconds. Default 10000.
    pub stats_interval_ms: u64,
    /// Where the host's cgroup hierarchies are mounted (v1 per-controller directories, or the v2
    /// unified tree). Default `/sys/fs/cgroup`.
    pub stats_cgroup_root: PathBuf,
    /// The host's `/proc` (containers' PIDs are looked up here). Default `/proc`.
    pub stats_proc_root: PathBuf,
    /// Parser rule files: directories (every `*.toml` in them, in name order) or single files,
    /// loaded before the built-in library, so a user rule with a built-in rule's name replaces
    /// it. Any rule error stops the agent from starting; [`crate::AgentHandle::reload_rules`]
    /// reads them again (SIGHUP). Default: none (the built-in rules only).
    pub rules_dirs: Vec<PathBuf>,
    /// Rule name, or comma-separated names, used to parse the files whose container has no
    /// `ferry.parser` label (plain files, for instance), e.g. `logfmt`. Default: none (the image
    /// rules, then auto-detection).
    pub parser: Option<String>,
}

/// `[agent.tls]`: how the agent speaks TLS to `https://` aggregators. Files are read at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentTlsConfig {
    /// PEM file of the certificate authorities that sign the aggregator's certificate (only
    /// these are trusted; for a public CA name the system bundle, e.g.
    /// `/etc/ssl/certs/ca-certificates.crt`). Required for `https://`. Default: none.
    pub ca_file: Option<PathBuf>,
    /// PEM file with this agent's client certificate (and intermediates), for an aggregator
    /// that asks for one (mTLS); with `key_file`. Default: none.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the client certificate's private key; with `cert_file`. Default: none.
    pub key_file: Option<PathBuf>,
}

/// How a file's lines are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatConfig {
    /// Chosen per file from its path.
    Auto,
    /// Docker json-file: `{"log":"…","stream":"stdout","time":"…"}`.
    Docker,
    /// CRI (containerd, CRI-O): `<time> <stream> <P|F> <message>`.
    Cri,
    /// One record per line.
    Plain,
}

/// Where to start reading files without a checkpoint at the agent's first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFrom {
    /// From byte 0.
    Beginning,
    /// From the end of the last complete line.
    End,
}

/// Where batches go (see [`AgentConfig::output`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputConfig {
    #[default]
    Aggregator,
    Discard,
}

/// Batch body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionConfig {
    Lz4,
    Zstd,
    Gzip,
    None,
}

/// Default for [`AgentConfig::host_name`].
pub fn default_host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
/// Default for [`AgentConfig::data_dir`].
pub fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/ferry/agent")
}
/// Default for [`AgentConfig::aggregator_url`].
pub fn default_aggregator_url() -> String {
    "http://127.0.0.1:7480".to_string()
}
/// Default for [`AgentConfig::include`].
pub fn default_include() -> Vec<String> {
    vec![
        "/var/lib/docker/containers/*/*-json.log".to_string(),
        "/var/log/pods/*/*/*.log".to_string(),
    ]
}
/// Default for [`AgentConfig::max_line_bytes`].
pub const fn default_max_line_bytes() -> usize {
    256 * 1024
}
/// Default for [`AgentConfig::read_buffer_bytes`].
pub const fn default_read_buffer_bytes() -> usize {
    256 * 1024
}
/// Default for [`AgentConfig::poll_interval_ms`].
pub const fn default_poll_interval_ms() -> u64 {
    250
}
/// Default for [`AgentConfig::glob_interval_ms`].
pub const fn default_glob_interval_ms() -> u64 {
    1000
}
/// Default for [`AgentConfig::rotate_wait_ms`].
pub const fn default_rotate_wait_ms() -> u64 {
    5000
}
/// Default for [`AgentConfig::rotated_suffixes`].
pub fn default_rotated_suffixes() -> Vec<String> {
    vec![".[0-9]*".to_string(), "-[0-9]*".to_string()]
}
/// Default for [`AgentConfig::batch_max_bytes`].
pub const fn default_batch_max_bytes() -> usize {
    1024 * 1024
}
/// Default for [`AgentConfig::batch_max_records`].
pub const fn default_batch_max_records() -> usize {
    10_000
}
/// Default for [`AgentConfig::batch_max_age_ms`].
pub const fn default_batch_max_age_ms() -> u64 {
    1000
}
/// Default for [`AgentConfig::compression_level`].
pub const fn default_compression_level() -> i32 {
    1
}
/// Default for [`AgentConfig::backoff_initial_ms`].
pub const fn default_backoff_initial_ms() -> u64 {
    100
}
/// Default for [`AgentConfig::backoff_max_ms`].
pub const fn default_backoff_max_ms() -> u64 {
    30_000
}
/// Default for [`AgentConfig::request_timeout_ms`].
pub const fn default_request_timeout_ms() -> u64 {
    30_000
}
/// Default for [`AgentConfig::shutdown_timeout_ms`].
pub const fn default_shutdown_timeout_ms() -> u64 {
    5000
}
/// Default for [`AgentConfig::metrics_listen`].
pub fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7481))
}

/// Default for [`AgentConfig::docker_socket`].
pub fn default_docker_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
}
/// Default for [`AgentConfig::docker_reconnect_max_ms`].
pub const fn default_docker_reconnect_max_ms() -> u64 {
    10_000
}

/// Default for [`AgentConfig::stats_interval_ms`].
pub const fn default_stats_interval_ms() -> u64 {
    10_000
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            host_name: default_host_name(),
            host_name_env: None,
            data_dir: default_data_dir(),
            aggregator_url: default_aggregator_url(),
            aggregator_urls: Vec::new(),
            token: None,
            token_file: None,
            token_env: None,
            tls: None,
            include: default_include(),
            exclude: Vec::new(),
            format: FormatConfig::Auto,
            read_from: ReadFrom::Beginning,
            max_line_bytes: default_max_line_bytes(),
            read_buffer_bytes: default_read_buffer_bytes(),
            poll_interval_ms: default_poll_interval_ms(),
            glob_interval_ms: default_glob_interval_ms(),
            rotate_wait_ms: default_rotate_wait_ms(),
            rotated_suffixes: default_rotated_suffixes(),
            batch_max_bytes: default_batch_max_bytes(),
            batch_max_records: default_batch_max_records(),
            batch_max_age_ms: default_batch_max_age_ms(),
            output: OutputConfig::Aggregator,
            compression: CompressionConfig::Lz4,
            compression_level: default_compression_level(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            metrics_listen: default_metrics_listen(),
            container_labels_allowlist: Vec::new(),
            docker_enabled: true,
            docker_socket: default_docker_socket(),
            docker_reconnect_max_ms: default_docker_reconnect_max_ms(),
            containers_include: Vec::new(),
            containers_exclude: Vec::new(),
            stats_enabled: true,
            stats_interval_ms: default_stats_interval_ms(),
            stats_cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            stats_proc_root: PathBuf::from("/proc"),
            rules_dirs: Vec::new(),
            parser: None,
        }
    }
}

/// One thing wrong with a configuration, and the field it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field, e.g. `include[1]`.
    pub field: String,
    pub message: String,
}

/// Every problem [`AgentConfig::validate`] found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent configuration: {}", .problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl AgentConfig {
    /// Takes in what the configuration names outside itself: the token in `token_file` becomes
    /// `token`, the value of the variable `host_name_env` (looked up with `env`) becomes
    /// `host_name`. Every problem is reported with its field; run [`Self::validate`] afterwards.
    pub fn resolve(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Some(name) = &self.token_env {
            if self.token.is_some() || self.token_file.is_some() {
                problems.push(ConfigProblem {
                    field: "token_env".into(),
                    message: "set one of `token`, `token_file` and `token_env`, not several".into(),
                });
            } else {
                match env(name).filter(|v| !v.trim().is_empty()) {
                    Some(value) => self.token = Some(value.trim().into()),
                    None => problems.push(ConfigProblem {
                        field: "token_env".into(),
                        message: format!("the environment variable {name:?} is not set or empty"),
                    }),
                }
            }
        }
        if let Some(path) = &self.token_file {
            if self.token.is_some() && self.token_env.is_none() {
                problems.push(ConfigProblem {
                    field: "token_file".into(),
                    message: "set either `token` or `token_file`, not both".into(),
                });
            } else {
                match std::fs::read_to_string(path) {
                    Ok(text) if !text.trim().is_empty() => self.token = Some(text.trim().into()),
                    Ok(_) => problems.push(ConfigProblem {
                        field: "token_file".into(),
                        message: format!("{} is empty", path.display()),
                    }),
                    Err(e) => problems.push(ConfigProblem {
                        field: "token_file".into(),
                        message: format!("cannot read {}: {e}", path.display()),
                    }),
                }
            }
        }
        if let Some(name) = &self.host_name_env {
            match env(name).filter(|v| !v.trim().is_empty()) {
                Some(value) => self.host_name = value.trim().into(),
                None => problems.push(ConfigProblem {
                    field: "host_name_env".into(),
                    message: format!("the environment variable {name:?} is not set or empty"),
                }),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks the whole configuration and reports every problem, each with its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad =
            |field: String, message: String| problems.push(ConfigProblem { field, message });
        if self.host_name.trim().is_empty() {
            bad("host_name".into(), "must not be empty".into());
        }
        if self.aggregator_urls.is_empty() {
            if let Err(message) = parse_http_url(&self.aggregator_url) {
                bad(
                    "aggregator_url".into(),
                    format!("{:?}: {message}", self.aggregator_url),
                );
            }
        } else if self.aggregator_url != default_aggregator_url() {
            bad(
                "aggregator_urls".into(),
                "set either aggregator_url or aggregator_urls, not both".into(),
            );
        }
        for (i, url) in self.aggregator_urls.iter().enumerate() {
            if let Err(message) = parse_http_url(url) {
                bad(
                    format!("aggregator_urls[{i}]"),
                    format!("{url:?}: {message}"),
                );
            }
        }
        let tls = self.tls.clone().unwrap_or_default();
        if self.output == OutputConfig::Aggregator
            && tls.ca_file.is_none()
            && self.urls().iter().any(|u| u.starts_with("https://"))
        {
            bad(
                "tls.ca_file".into(),
                "an https:// aggregator URL needs the CA that signed the aggregator's certificate"
                    .into(),
            );
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            bad(
                "tls.cert_file".into(),
                "a client certificate needs both cert_file and key_file".into(),
            );
        }
        if let Some(token) = &self.token {
            if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
                bad(
                    "token".into(),
                    "must be non-empty and contain no spaces or control characters".into(),
                );
            }
        }
        if self.include.is_empty() {
            bad(
                "include".into(),
                "at least one glob pattern is needed".into(),
            );
        }
        for (name, list) in [
            ("include", &self.include),
            ("exclude", &self.exclude),
            ("rotated_suffixes", &self.rotated_suffixes),
        ] {
            for (i, pattern) in list.iter().enumerate() {
                if let Err(e) = glob::Pattern::new(pattern) {
                    bad(
                        format!("{name}[{i}]"),
                        format!("{pattern:?} is not a valid glob: {e}"),
                    );
                }
            }
        }
        for (field, value) in [
            ("max_line_bytes", self.max_line_bytes),
            ("read_buffer_bytes", self.read_buffer_bytes),
            ("batch_max_bytes", self.batch_max_bytes),
            ("batch_max_records", self.batch_max_records),
        ] {
            if value == 0 {
                bad(field.into(), "must be greater than 0".into());
            }
        }
        for (field, value) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("glob_interval_ms", self.glob_interval_ms),
            ("batch_max_age_ms", self.batch_max_age_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("stats_interval_ms", self.stats_interval_ms),
            ("docker_reconnect_max_ms", self.docker_reconnect_max_ms),
        ] {
            if value == 0 {
                bad(field.into(), "must be greater than 0".into());
            }
        }
        if self.docker_enabled && self.docker_socket.as_os_str().is_empty() {
            bad("docker_socket".into(), "must not be empty".into());
        }
        for (name, list) in [
            ("containers_include", &self.containers_include),
            ("containers_exclude", &self.containers_exclude),
        ] {
            for (i, selector) in list.iter().enumerate() {
                if let Err(e) = crate::container::Selector::parse(selector) {
                    bad(format!("{name}[{i}]"), format!("{selector:?}: {e}"));
                }
            }
        }
        if let Some(parser) = &self.parser {
            if parser.split(',').all(|n| n.trim().is_empty()) {
                bad("parser".into(), "must name at least one rule".into());
            }
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            bad(
                "backoff_initial_ms".into(),
                format!(
                    "{} is larger than backoff_max_ms ({})",
                    self.backoff_initial_ms, self.backoff_max_ms
                ),
            );
        }
        let levels = match self.compression {
            CompressionConfig::Gzip => Some(0..=9),
            CompressionConfig::Zstd => Some(-7..=19),
            CompressionConfig::Lz4 | CompressionConfig::None => None,
        };
        // zstd's level 0 means "its default" (3): a slower level than one would guess.
        let zstd_zero = self.compression == CompressionConfig::Zstd && self.compression_level == 0;
        match levels {
            Some(levels) if !levels.contains(&self.compression_level) || zstd_zero => bad(
                "compression_level".into(),
                format!(
                    "{} is not in {}..={}{} for {:?}",
                    self.compression_level,
                    levels.start(),
                    levels.end(),
                    if zstd_zero { " (0 excluded)" } else { "" },
                    self.compression
                ),
            ),
            // lz4 has no levels: a level set for it is refused rather than silently ignored.
            None if self.compression == CompressionConfig::Lz4
                && self.compression_level != default_compression_level() =>
            {
                bad(
                    "compression_level".into(),
                    format!(
                        "{} is set, but lz4 has no levels (leave compression_level unset, or use zstd)",
                        self.compression_level
                    ),
                )
            }
            _ => {}
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    pub(crate) fn wire_compression(&self) -> ferry_wire::Compression {
        match self.compression {
            CompressionConfig::None => ferry_wire::Compression::None,
            CompressionConfig::Lz4 => ferry_wire::Compression::Lz4,
            CompressionConfig::Zstd => ferry_wire::Compression::Zstd {
                level: self.compression_level,
            },
            CompressionConfig::Gzip => ferry_wire::Compression::Gzip {
                // Validated: 0..=9.
                level: self.compression_level.clamp(0, 9) as u32,
            },
        }
    }

    /// The aggregator base URLs, in failover order: `aggregator_urls`, or `aggregator_url`.
    pub fn urls(&self) -> Vec<String> {
        if self.aggregator_urls.is_empty() {
            vec![self.aggregator_url.clone()]
        } else {
            self.aggregator_urls.clone()
        }
    }

    /// `{aggregator_url}/v1/batches`, for each aggregator URL.
    pub(crate) fn batches_urls(&self) -> Vec<String> {
        self.urls()
            .iter()
            .map(|u| format!("{}/v1/batches", u.trim_end_matches('/')))
            .collect()
    }
}

/// Accepts `http://host[:port][/path]` and `https://host[:port][/path]`.
fn parse_http_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "scheme {other:?} is not supported (use http:// or https://)"
            ))
        }
        None => return Err("missing scheme (use http://host:port)".into()),
    }
    if uri.host().is_none() {
        return Err("missing host".into());
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_is_the_default_config() {
        let cfg: AgentConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, AgentConfig::default());
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = toml::from_str::<AgentConfig>("max_line_byte = 3").unwrap_err();
        assert!(err.to_string().contains("max_line_byte"), "{err}");
    }

    #[test]
    fn lz4_is_the_default_and_takes_no_level() {
        let cfg: AgentConfig = toml::from_str("").unwrap();
        assert_eq!(cfg.wire_compression(), ferry_wire::Compression::Lz4);
        let cfg: AgentConfig = toml::from_str("compression_level = 9").unwrap();
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.problems[0].field, "compression_level");
        assert!(err.to_string().contains("lz4 has no levels"), "{err}");
        let cfg: AgentConfig =
            toml::from_str("compression = \"zstd\"\ncompression_level = 9").unwrap();
        cfg.validate().unwrap();
    }

    #[test]
    fn zstd_takes_its_fast_levels_and_gzip_does_not() {
        let with = |compression, compression_level| AgentConfig {
            compression,
            compression_level,
            ..AgentConfig::default()
        };
        for level in [-7, -1, 1, 19] {
            let cfg = with(CompressionConfig::Zstd, level);
            cfg.validate().unwrap();
            assert_eq!(
                cfg.wire_compression(),
                ferry_wire::Compression::Zstd { level }
            );
        }
        for (compression, level) in [
            (CompressionConfig::Zstd, -8),
            (CompressionConfig::Zstd, 0),
            (CompressionConfig::Zstd, 20),
            (CompressionConfig::Gzip, -1),
            (CompressionConfig::Gzip, 10),
            (CompressionConfig::Lz4, 3),
        ] {
            let err = with(compression, level).validate().unwrap_err();
            assert_eq!(err.problems.len(), 1, "{err}");
            assert_eq!(err.problems[0].field, "compression_level");
            assert!(err.to_string().contains(&level.to_string()), "{err}");
        }
    }

    #[test]
    fn validate_reports_every_problem_with_its_field() {
        let cfg = AgentConfig {
            aggregator_url: "ftp://x".into(),
            include: vec!["/ok/*.log".into(), "/bad/[".into()],
            max_line_bytes: 0,
            compression_level: 42,
            ..AgentConfig::default()
        };
        let err = cfg.validate().unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "aggregator_url",
                "include[1]",
                "max_line_bytes",
                "compression_level"
            ]
        );
        assert!(err.to_string().contains("/bad/["), "{err}");
    }

    #[test]
    fn resolve_reads_the_token_file_and_the_host_name_variable() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("ferry_token");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let mut cfg = AgentConfig {
            token_file: Some(secret),
            host_name_env: Some("NODE_NAME".into()),
            ..AgentConfig::default()
        };
        cfg.resolve(|name| (name == "NODE_NAME").then(|| "node-7".to_string()))
            .unwrap();
        assert_eq!(cfg.token.as_deref(), Some("s3cret"));
        assert_eq!(cfg.host_name, "node-7");
        cfg.validate().unwrap();
    }

    #[test]
    fn resolve_names_the_missing_file_and_the_unset_variable() {
        let mut cfg = AgentConfig {
            token_file: Some("/nonexistent/ferry_token".into()),
            host_name_env: Some("NODE_NAME".into()),
            ..AgentConfig::default()
        };
        let err = cfg.resolve(|_| None).unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["token_file", "host_name_env"]);
        assert!(
            err.to_string().contains("/nonexistent/ferry_token"),
            "{err}"
        );
        assert!(err.to_string().contains("\"NODE_NAME\""), "{err}");

        let mut both = AgentConfig {
            token: Some("inline".into()),
            token_file: Some("/run/secrets/ferry_token".into()),
            ..AgentConfig::default()
        };
        let err = both.resolve(|_| None).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
    }
}
