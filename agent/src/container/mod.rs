//! What the agent knows about one Docker container, built from `GET /containers/<id>/json`
//! (inspect) or, when the API is unavailable, from the container's `config.v2.json`; how that
//! knowledge lands on a record (`container.*`, `kubernetes.*`); and which containers are
//! collected ([`Filter`], [`Selector`]).
//!
//! Plain data and pure functions, no I/O: shared by the configuration (which checks the
//! selectors), Docker discovery (which fills its registry with these) and the tailer's
//! enrichment, and depending on none of them.

mod filter;

use std::collections::BTreeMap;
use std::path::PathBuf;

use bollard::models::ContainerInspectResponse;
use ferry_wire::{Container, ContainerImage, Kubernetes, KubernetesContainer, KubernetesPod};
use serde::Deserialize;

pub(crate) use filter::{Filter, Selector};

/// Label that opts a container out of log collection when set to `false`.
pub(crate) const ENABLE_LABEL: &str = "ferry.enable";

const K8S_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const K8S_POD_NAME: &str = "io.kubernetes.pod.name";
const K8S_POD_UID: &str = "io.kubernetes.pod.uid";
const K8S_CONTAINER_NAME: &str = "io.kubernetes.container.name";
const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const SWARM_SERVICE: &str = "com.docker.swarm.service.name";
const SWARM_TASK: &str = "com.docker.swarm.task.name";
const SWARM_NODE: &str = "com.docker.swarm.node.id";

/// How a container's output can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogSource {
    /// The `json-file` driver: the tailer reads `LogPath`.
    File,
    /// Any other driver but `none`: followed through `GET /containers/<id>/logs`.
    Api,
    /// The `none` driver: nothing to read.
    None,
}

/// One container's metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ContainerMeta {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: Option<String>,
    /// The image as the container was created from it (`Config.Image`, e.g. `nginx:1.27`).
    pub image: Option<String>,
    /// Every label (the allowlist applies when copying them onto records).
    pub labels: BTreeMap<String, String>,
    /// `HostConfig.LogConfig.Type`; `None` when unknown (config.v2.json fallback).
    pub log_driver: Option<String>,
    /// `LogPath`: empty for drivers that write no json-file.
    pub log_path: Option<PathBuf>,
    /// `State.Pid`: the init process of a running container, 0 otherwise.
    pub pid: u32,
    pub running: bool,
    /// From the `com.docker.compose.*` labels.
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// From the `com.docker.swarm.*` labels.
    pub swarm_service: Option<String>,
    pub swarm_task: Option<String>,
    pub swarm_node: Option<String>,
    /// From the `io.kubernetes.*` labels (dockershim / cri-dockerd).
    pub kubernetes: Kubernetes,
}

impl ContainerMeta {
    /// From an inspect answer; `None` without an id.
    pub fn from_inspect(i: ContainerInspectResponse) -> Option<Self> {
        let id = i.id?;
        let config = i.config.unwrap_or_default();
        let state = i.state.unwrap_or_default();
        let running = state.running.unwrap_or(false);
        let log_driver = i
            .host_config
            .and_then(|h| h.log_config)
            .and_then(|l| l.typ)
            .filter(|t| !t.is_empty());
        Some(Self::build(
            id,
            i.name,
            config.image,
            config.labels.unwrap_or_default().into_iter().collect(),
            log_driver,
            i.log_path.filter(|p| !p.is_empty()).map(PathBuf::from),
            if running {
                state.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0)
            } else {
                0
            },
            running,
        ))
    }

    /// From the bytes of Docker's `config.v2.json` (the fallback when the API is unavailable).
    pub fn from_config_v2(id: &str, bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let c: ConfigV2 = serde_json::from_slice(bytes)?;
        let config = c.config.unwrap_or_default();
        let state = c.state.unwrap_or_default();
        Ok(Self::build(
            c.id.unwrap_or_else(|| id.to_string()),
            c.name,
            config.image,
            config.labels.unwrap_or_default(),
            None,
            c.log_path.filter(|p| !p.is_empty()).map(PathBuf::from),
            if state.running { state.pid } else { 0 },
            state.running,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        id: String,
        name: Option<String>,
        image: Option<String>,
        labels: BTreeMap<String, String>,
        log_driver: Option<String>,
        log_path: Option<PathBuf>,
        pid: u32,
        running: bool,
    ) -> Self {
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        let kubernetes = Kubernetes {
            namespace: label(K8S_NAMESPACE),
            pod: KubernetesPod {
                name: label(K8S_POD_NAME),
                uid: label(K8S_POD_UID),
            },
            container: KubernetesContainer {
                name: label(K8S_CONTAINER_NAME),
            },
        };
        ContainerMeta {
            name: name
                .map(|n| n.trim_start_matches('/').to_string())
                .filter(|n| !n.is_empty()),
            image: image.filter(|i| !i.is_empty()),
            compose_project: label(COMPOSE_PROJECT),
            compose_service: label(COMPOSE_SERVICE),
            swarm_service: label(SWARM_SERVICE),
            swarm_task: label(SWARM_TASK),
            swarm_node: label(SWARM_NODE),
            kubernetes,
            id,
            labels,
            log_driver,
            log_path,
            pid,
            running,
        }
    }

    /// How this container's output is read (`File` when the driver is unknown).
    pub fn log_source(&self) -> LogSource {
        match self.log_driver.as_deref() {
            None | Some("json-file") => LogSource::File,
            Some("none") => LogSource::None,
            Some(_) => LogSource::Api,
        }
    }

    /// Whether the container opted out with `ferry.enable=false`.
    pub fn opted_out(&self) -> bool {
        self.labels
            .get(ENABLE_LABEL)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
    }

    /// Puts this container's fields on a record: `container.*` replaced (labels filtered by
    /// `allowlist`), `kubernetes.*` set where a label gives them (path-derived values stay
    /// otherwise).
    pub fn apply(
        &self,
        allowlist: &[String],
        container: &mut Container,
        kubernetes: &mut Kubernetes,
    ) {
        *container = Container {
            id: Some(self.id.clone()),
            name: self.name.clone(),
            image: ContainerImage {
                name: self.image.clone(),
            },
            labels: self
                .labels
                .iter()
                .filter(|(k, _)| allowlist.iter().any(|a| a == *k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let k = &self.kubernetes;
        if k.namespace.is_some() {
            kubernetes.namespace.clone_from(&k.namespace);
        }
        if k.pod.name.is_some() {
            kubernetes.pod.name.clone_from(&k.pod.name);
        }
        if k.pod.uid.is_some() {
            kubernetes.pod.uid.clone_from(&k.pod.uid);
        }
        if k.container.name.is_some() {
            kubernetes.container.name.clone_from(&k.container.name);
        }
    }
}

/// The fields of `config.v2.json` the agent reads.
#[derive(Deserialize)]
struct ConfigV2 {
    #[serde(rename = "ID", default)]
    id: Option<String>,
    #[serde(rename = "Name", default)]
    name: Option<String>,
    #[serde(rename = "LogPath", default)]
    log_path: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<ConfigV2Config>,
    #[serde(rename = "State", default)]
    state: Option<ConfigV2State>,
}

#[derive(Deserialize, Default)]
struct ConfigV2Config {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct ConfigV2State {
    #[serde(rename = "Running", default)]
    running: bool,
    #[serde(rename = "Pid", default)]
    pid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_give_kubernetes_compose_and_swarm_fields() {
        let meta = ContainerMeta::from_config_v2(
            "abc",
            br#"{"Name":"/k8s_app_web-1","LogPath":"/var/lib/docker/containers/abc/abc-json.log",
                "State":{"Running":true,"Pid":42},
                "Config":{"Image":"nginx:1.27","Labels":{
                  "io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.name":"web-1",
                  "io.kubernetes.pod.uid":"u-1","io.kubernetes.container.name":"app",
                  "com.docker.compose.project":"p","com.docker.compose.service":"s",
                  "com.docker.swarm.service.name":"svc","com.docker.swarm.task.name":"svc.1.x",
                  "com.docker.swarm.node.id":"n1","team":"core","ferry.enable":"False"}}}"#,
        )
        .unwrap();
        assert_eq!(meta.id, "abc");
        assert_eq!(meta.name.as_deref(), Some("k8s_app_web-1"));
        assert_eq!((meta.pid, meta.running), (42, true));
        assert_eq!(meta.compose_project.as_deref(), Some("p"));
        assert_eq!(meta.compose_service.as_deref(), Some("s"));
        assert_eq!(meta.swarm_service.as_deref(), Some("svc"));
        assert_eq!(meta.swarm_task.as_deref(), Some("svc.1.x"));
        assert_eq!(meta.swarm_node.as_deref(), Some("n1"));
        assert!(meta.opted_out());
        assert_eq!(meta.log_source(), LogSource::File);

        let mut c = Container::default();
        let mut k = Kubernetes::default();
        k.container.name = Some("from-path".into());
        meta.apply(&["team".to_string()], &mut c, &mut k);
        assert_eq!(c.id.as_deref(), Some("abc"));
        assert_eq!(c.image.name.as_deref(), Some("nginx:1.27"));
        assert_eq!(c.labels.len(), 1);
        assert_eq!(c.labels["team"], "core");
        assert_eq!(k.namespace.as_deref(), Some("shop"));
        assert_eq!(k.pod.name.as_deref(), Some("web-1"));
        assert_eq!(k.pod.uid.as_deref(), Some("u-1"));
        assert_eq!(
            k.container.name.as_deref(),
            Some("app"),
            "labels win over the path"
        );
    }

    #[test]
    fn log_driver_decides_how_output_is_read() {
        let mut m = ContainerMeta::default();
        for (driver, source) in [
            (None, LogSource::File),
            (Some("json-file"), LogSource::File),
            (Some("local"), LogSource::Api),
            (Some("journald"), LogSource::Api),
            (Some("none"), LogSource::None),
        ] {
            m.log_driver = driver.map(str::to_string);
            assert_eq!(m.log_source(), source, "{driver:?}");
        }
    }
}
