//! What a record learns from where its file lives.
//!
//! A Docker container's file gets name, image, allowlisted labels and `io.kubernetes.*` fields from
//! the Docker registry (`crate::docker`), or, while the API does not know the container, from the
//! container's `config.v2.json` beside the file; the kubelet's
//! `…/pods/<ns>_<pod>_<uid>/<container>/N.log` gives the `kubernetes.*` fields a label does not.
//! The format of a file in `auto` mode is chosen here too, and what its parser rules are chosen
//! from ([`Found::parser`]: the `ferry.parser` label, whatever the label allowlist, and the
//! image); `crate::rules::parse` applies them. Nothing here fails: missing or unreadable metadata just leaves
//! fields empty (logged at debug level).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_wire::{Container, Kubernetes, KubernetesContainer, KubernetesPod};
use tracing::debug;

use crate::config::FormatConfig;
use crate::container::ContainerMeta;
use crate::decode::Format;
use crate::docker::Registry;
use crate::rules::{ParserKey, PARSER_LABEL};

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

/// `<id>` of Docker's `…/containers/<id>/<id>-json.log` layout.
fn docker_id_from_path(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_suffix("-json.log")?;
    (path.parent()?.file_name()?.to_str()? == id).then_some(id)
}

/// What a tailed file's records get from its container.
#[derive(Debug, Clone, Default)]
pub(crate) struct Found {
    pub container: Container,
    pub kubernetes: Kubernetes,
    /// The container's `ferry.parser` label (any label, not only allowlisted ones) and image.
    pub parser: ParserKey,
}

impl Found {
    fn new(container: Container, kubernetes: Kubernetes, meta: Option<&ContainerMeta>) -> Self {
        let parser = ParserKey {
            label: meta.and_then(|m| m.labels.get(PARSER_LABEL).cloned()),
            image: container.image.name.clone(),
        };
        Found {
            container,
            kubernetes,
            parser,
        }
    }
}

/// Container metadata for tailed files: from the Docker [`Registry`] when it knows the container
/// (matched by `LogPath`, else by the path layout), else from the container's `config.v2.json`
/// beside the file (read once per directory).
#[derive(Debug)]
pub(crate) struct Enricher {
    labels_allowlist: Vec<String>,
    registry: Arc<Registry>,
    cache: HashMap<PathBuf, Option<Arc<ContainerMeta>>>,
}

impl Enricher {
    pub fn new(labels_allowlist: Vec<String>, registry: Arc<Registry>) -> Self {
        Enricher {
            labels_allowlist,
            registry,
            cache: HashMap::new(),
        }
    }

    /// The registry's version (see [`Registry::version`]).
    pub fn registry_version(&self) -> u64 {
        self.registry.version()
    }

    /// `container.*` and `kubernetes.*` for a file found at `path`, and what its parser rules are
    /// chosen from, or `None` when the file belongs to a container whose logs are not collected
    /// (`ferry.enable=false`, `containers_include` / `containers_exclude`).
    pub fn for_path(&mut self, path: &Path) -> Option<Found> {
        let (meta, found) = self.lookup(path);
        if meta.is_some_and(|m| !self.registry.wants(&m)) {
            return None;
        }
        Some(found)
    }

    /// Fresh metadata for a file already tailed (no filter), or `None` when no metadata is known
    /// any more (a destroyed container's file being drained keeps what it had).
    pub fn refresh(&mut self, path: &Path) -> Option<Found> {
        let (meta, found) = self.lookup(path);
        meta.map(|_| found)
    }

    fn lookup(&mut self, path: &Path) -> (Option<Arc<ContainerMeta>>, Found) {
        let mut kubernetes = kubernetes_from_path(path).unwrap_or_default();
        let mut container = Container::default();
        let id = self
            .registry
            .id_for_path(path)
            .or_else(|| docker_id_from_path(path).map(str::to_string));
        let Some(id) = id else {
            return (None, Found::new(container, kubernetes, None));
        };
        let meta = self.registry.get(&id).or_else(|| self.config_v2(path, &id));
        match &meta {
            Some(m) => m.apply(&self.labels_allowlist, &mut container, &mut kubernetes),
            None => container.id = Some(id),
        }
        let found = Found::new(container, kubernetes, meta.as_deref());
        (meta, found)
    }

    fn config_v2(&mut self, path: &Path, id: &str) -> Option<Arc<ContainerMeta>> {
        let dir = path.parent()?;
        if let Some(cached) = self.cache.get(dir) {
            return cached.clone();
        }
        let config_path = dir.join("config.v2.json");
        let meta = match std::fs::read(&config_path)
            .map_err(|e| e.to_string())
            .and_then(|b| ContainerMeta::from_config_v2(id, &b).map_err(|e| e.to_string()))
        {
            Ok(meta) => Some(Arc::new(meta)),
            Err(error) => {
                debug!(path = %config_path.display(), %error, "No Docker container config");
                None
            }
        };
        self.cache.insert(dir.to_path_buf(), meta.clone());
        meta
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
        let registry = Arc::new(Registry::new(
            vec!["app".into()],
            crate::container::Filter::default(),
            Default::default(),
        ));
        let mut e = Enricher::new(vec!["app".into()], registry.clone());
        let found = e.for_path(&dir.join("abc123-json.log")).unwrap();
        let (c, k) = (found.container, found.kubernetes);
        assert_eq!(c.id.as_deref(), Some("abc123"));
        assert_eq!(c.name.as_deref(), Some("web"));
        assert_eq!(c.image.name.as_deref(), Some("nginx:1.27"));
        assert_eq!(c.labels.len(), 1);
        assert_eq!(c.labels["app"], "shop");
        assert!(k.is_empty());

        let c = e
            .for_path(&root.path().join("containers/zzz/zzz-json.log"))
            .unwrap()
            .container;
        assert_eq!(
            c.id.as_deref(),
            Some("zzz"),
            "missing config still gives the id"
        );
        assert!(c.name.is_none());
    }

    #[test]
    fn registry_wins_over_config_v2_and_opted_out_files_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("containers").join("abc");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            r#"{"Name":"/old-name","Config":{"Image":"img:1","Labels":{"app":"a"}}}"#,
        )
        .unwrap();
        let log = dir.join("abc-json.log");
        let registry = Arc::new(Registry::new(
            vec!["app".into()],
            crate::container::Filter::default(),
            Default::default(),
        ));
        let mut e = Enricher::new(vec!["app".into()], registry.clone());
        assert_eq!(
            e.for_path(&log).unwrap().container.name.as_deref(),
            Some("old-name")
        );
        registry.upsert(ContainerMeta {
            id: "abc".into(),
            name: Some("new-name".into()),
            image: Some("img:1".into()),
            log_path: Some(log.clone()),
            ..Default::default()
        });
        assert_eq!(
            e.refresh(&log).unwrap().container.name.as_deref(),
            Some("new-name")
        );

        let off = root.path().join("containers/off");
        std::fs::create_dir_all(&off).unwrap();
        std::fs::write(
            off.join("config.v2.json"),
            r#"{"Name":"/quiet","Config":{"Image":"img:1","Labels":{"ferry.enable":"false"}}}"#,
        )
        .unwrap();
        assert!(e.for_path(&off.join("off-json.log")).is_none());
    }
}
