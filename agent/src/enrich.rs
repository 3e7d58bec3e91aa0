//! What a record learns from where its file lives, and the hook where its message gets parsed.
//!
//! From the path alone: Docker's `…/containers/<id>/<id>-json.log` gives `container.id` (and the
//! container's `config.v2.json` beside it gives name, image and allowlisted labels); the kubelet's
//! `…/pods/<ns>_<pod>_<uid>/<container>/N.log` gives the `kubernetes.*` fields. The format of a
//! file in `auto` mode is chosen here too. Nothing here fails: missing or unreadable metadata just
//! leaves fields empty (logged at debug level).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ferry_wire::{
    Container, ContainerImage, Kubernetes, KubernetesContainer, KubernetesPod, LogRecord,
};
use serde::Deserialize;
use tracing::debug;

use crate::config::FormatConfig;
use crate::decode::Format;

/// Parses the record's message into fields (`log.level`, `@timestamp`, ECS fields, `parse.error`).
///
/// HOOK for the `parsers` crate: called once per record after decoding and path enrichment, just
/// before the record is put into a batch. It may set `log.level`, replace `@timestamp` (keeping the
/// read time in `event.created`) and add `fields`; it must not touch `event.id`, `log.offset` or
/// `log.file.*`, which identify the record. Today it runs JSON auto-detect; the regex rule engine
/// plugs in here.
pub(crate) fn enrich_and_parse(record: &mut LogRecord) {
    ferry_parsers::Parser::JsonAuto.apply(record);
}

/// The decoding format of a file found at `path`.
pub(crate) fn format_for(config: FormatConfig, path: &Path) -> Format {
    match config {
        FormatConfig::Docker => Format::Docker,
        FormatConfig::Cri => Format::Cri,
        FormatConfig::Plain => Format::Plain,
        FormatConfig::Auto => {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            if name.ends_with("-json.log") {
                Format::Docker
            } else if kubernetes_from_path(path).is_some() {
                Format::Cri
            } else {
                Format::Plain
            }
        }
    }
}

/// `kubernetes.*` from `…/pods/<ns>_<pod>_<uid>/<container>/<file>`.
pub(crate) fn kubernetes_from_path(path: &Path) -> Option<Kubernetes> {
    let container = path.parent()?;
    let pod_dir = container.parent()?;
    if pod_dir.parent()?.file_name()? != "pods" {
        return None;
    }
    let pod_dir = pod_dir.file_name()?.to_str()?;
    let container = container.file_name()?.to_str()?;
    // Namespaces and pod names cannot contain `_`; the uid is last.
    let mut parts = pod_dir.splitn(3, '_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some(Kubernetes {
        namespace: Some(ns.to_string()),
        pod: KubernetesPod {
            name: Some(pod.to_string()),
            uid: Some(uid.to_string()),
        },
        container: KubernetesContainer {
            name: Some(container.to_string()),
        },
    })
}

/// The fields of Docker's `config.v2.json` the agent reads.
#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<DockerContainerConfig>,
}

#[derive(Deserialize)]
struct DockerContainerConfig {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Container metadata per Docker container directory, read once.
#[derive(Debug)]
pub(crate) struct Enricher {
    labels_allowlist: Vec<String>,
    cache: HashMap<PathBuf, Container>,
}

impl Enricher {
    pub fn new(labels_allowlist: Vec<String>) -> Self {
        Enricher {
            labels_allowlist,
            cache: HashMap::new(),
        }
    }

    /// `container.*` and `kubernetes.*` for a file found at `path`.
    pub fn for_path(&mut self, path: &Path) -> (Container, Kubernetes) {
        let kubernetes = kubernetes_from_path(path).unwrap_or_default();
        (self.docker_container(path).unwrap_or_default(), kubernetes)
    }

    fn docker_container(&mut self, path: &Path) -> Option<Container> {
        let name = path.file_name()?.to_str()?;
        let id = name.strip_suffix("-json.log")?;
        let dir = path.parent()?;
        if dir.file_name()?.to_str()? != id {
            return None;
        }
        if let Some(cached) = self.cache.get(dir) {
            return Some(cached.clone());
        }
        let mut container = Container {
            id: Some(id.to_string()),
            ..Default::default()
        };
        let config_path = dir.join("config.v2.json");
        match std::fs::read(&config_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<DockerConfig>(&b).map_err(|e| e.to_string()))
        {
            Ok(config) => {
                container.name = config.name.map(|n| n.trim_start_matches('/').to_string());
                if let Some(c) = config.config {
                    container.image = ContainerImage { name: c.image };
                    container.labels = c
                        .labels
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(k, _)| self.labels_allowlist.iter().any(|a| a == k))
                        .collect();
                }
            }
            Err(error) => {
                debug!(path = %config_path.display(), %error, "No Docker container config")
            }
        }
        self.cache.insert(dir.to_path_buf(), container.clone());
        Some(container)
    }

    /// Forgets cached metadata of container directories that no longer hold a tailed file.
    pub fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        self.cache.retain(|dir, _| keep(dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_fields_come_from_the_pod_log_path() {
        let k = kubernetes_from_path(Path::new(
            "/var/log/pods/default_web-7d4_0a1b-2c3d/nginx/0.log",
        ))
        .unwrap();
        assert_eq!(k.namespace.as_deref(), Some("default"));
        assert_eq!(k.pod.name.as_deref(), Some("web-7d4"));
        assert_eq!(k.pod.uid.as_deref(), Some("0a1b-2c3d"));
        assert_eq!(k.container.name.as_deref(), Some("nginx"));
        assert!(kubernetes_from_path(Path::new("/var/log/syslog")).is_none());
        assert_eq!(
            format_for(FormatConfig::Auto, Path::new("/var/log/pods/a_b_c/d/1.log")),
            Format::Cri
        );
        assert_eq!(
            format_for(FormatConfig::Auto, Path::new("/x/abc-json.log")),
            Format::Docker
        );
        assert_eq!(
            format_for(FormatConfig::Auto, Path::new("/x/app.log")),
            Format::Plain
        );
    }

    #[test]
    fn docker_metadata_comes_from_config_v2_with_allowlisted_labels() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("containers").join("abc123");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            r#"{"Name":"/web","Config":{"Image":"nginx:1.27","Labels":{"app":"shop","secret":"x"}},"Other":1}"#,
        )
        .unwrap();
        let mut e = Enricher::new(vec!["app".into()]);
        let (c, k) = e.for_path(&dir.join("abc123-json.log"));
        assert_eq!(c.id.as_deref(), Some("abc123"));
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(c.image.name.as_deref(), Some("nginx:1.27"));
        assert_eq!(c.labels.len(), 1);
        assert_eq!(c.labels["app"], "shop");
        assert!(k.is_empty());

        let (c, _) = e.for_path(&root.path().join("containers/zzz/zzz-json.log"));
        assert_eq!(
            c.id.as_deref(),
            Some("zzz"),
            "missing config still gives the id"
        );
        assert!(c.name.is_none());
    }
}
