//! The Kubernetes manifests (`deploy/kubernetes/`): they validate against the Kubernetes schemas
//! (PyPI's `kubernetes-validate`, strict: unknown fields are errors), and the agent's DaemonSet
//! mounts exactly the paths its configuration reads: the agent's default `include` globs (the
//! ConfigMap keeps them), its checkpoints, rules, token and config, and nothing else. Both need
//! Python (`pip install kubernetes-validate==1.37.0`, which brings PyYAML); without it they fail
//! unless `FERRY_TEST_SKIP_PYTHON=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_agent::AgentConfig;
use ferry_aggregator::AggregatorConfig;
use serde::Deserialize;
use serde_json::Value;

use crate::deploy_docker::repo;

/// The oldest and newest Kubernetes versions the manifests are checked against (1.25: a
/// DaemonSet's `maxSurge` is GA).
const KUBERNETES_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

fn python_available(test: &str) -> bool {
    if std::env::var("FERRY_TEST_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        eprintln!("FERRY_TEST_SKIP_PYTHON=1: {test} is skipped");
        return false;
    }
    true
}

/// The manifests in `deploy/kubernetes/<folder>`, in apply order.
fn manifests(folder: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes").join(folder))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifests under deploy/kubernetes/{folder}"
    );
    files
}

/// Every YAML document of `files`, as JSON (read by PyYAML).
fn documents(files: &[PathBuf]) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
             json.dump(docs, sys.stdout)",
        ])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("python3 does not run ({e}); or set FERRY_TEST_SKIP_PYTHON=1"));
    assert!(
        out.status.success(),
        "reading the manifests with PyYAML failed (pip install kubernetes-validate==1.37.0 brings it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What a cluster holds after `kubectl apply -f deploy/kubernetes/` and then, for each of
/// `overlays`, `kubectl apply -f deploy/kubernetes/<overlay>/` (an object of the same kind and
/// name replaces the earlier one).
fn applied(overlays: &[&str]) -> Vec<Value> {
    let mut docs = documents(&manifests(""));
    for overlay in overlays {
        for doc in documents(&manifests(overlay)) {
            docs.retain(|d| {
                !(d["kind"] == doc["kind"] && d["metadata"]["name"] == doc["metadata"]["name"])
            });
            docs.push(doc);
        }
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

#[test]
fn kubernetes_manifests_validate_against_the_kubernetes_schemas() {
    if !python_available("the Kubernetes schema check") {
        return;
    }
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(manifests(""))
            .args(manifests("docker-engine"))
            .output()
            .unwrap_or_else(|e| {
                panic!("kubernetes-validate does not run ({e}): `pip install kubernetes-validate==1.37.0` (as .ci/run does), or set FERRY_TEST_SKIP_PYTHON=1")
            });
        assert!(
            out.status.success(),
            "deploy/kubernetes against Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every object is namespaced in ferry's namespace, or is that namespace.
    for doc in documents(&[manifests(""), manifests("docker-engine")].concat()) {
        if doc["kind"] != "Namespace" {
            assert_eq!(doc["metadata"]["namespace"], "ferry", "{}", doc["metadata"]);
        }
    }
}

#[derive(Deserialize)]
struct AgentFile {
    agent: AgentConfig,
}

#[derive(Deserialize)]
struct AggregatorFile {
    aggregator: AggregatorConfig,
}

/// The directory a glob's fixed part names (`/var/log/pods/*/*/*.log` → `/var/log/pods`).
fn glob_root(glob: &str) -> PathBuf {
    let fixed: PathBuf = Path::new(glob)
        .components()
        .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
        .collect();
    fixed
}

/// The mounts of `container` in `workload` (a DaemonSet or StatefulSet): (mount path, volume,
/// read-only). A StatefulSet's claim templates count as volumes.
fn mounts(workload: &Value, container: &str) -> Vec<(PathBuf, Value, bool)> {
    let pod = &workload["spec"]["template"]["spec"];
    let c = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap();
    let mut volumes = pod["volumes"].as_array().unwrap().clone();
    for claim in workload["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        volumes.push(serde_json::json!({
            "name": claim["metadata"]["name"], "persistentVolumeClaim": claim["spec"]
        }));
    }
    c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let volume = volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("volume {} of mount {m} is not declared", m["name"]));
            (
                PathBuf::from(m["mountPath"].as_str().unwrap()),
                volume.clone(),
                m["readOnly"] == true,
            )
        })
        .collect()
}

/// Checks that `reads` (what a configuration reads, with why) and the mounts match one to one:
/// each path read lies under a mount, each mount holds something read.
fn assert_mounts_cover_exactly(
    what: &str,
    reads: &[(PathBuf, String)],
    mounts: &[(PathBuf, Value, bool)],
) {
    for (path, why) in reads {
        assert!(
            mounts.iter().any(|(at, _, _)| path.starts_with(at)),
            "{what}: {why} reads {}, which no volume mounts",
            path.display()
        );
    }
    for (at, volume, _) in mounts {
        assert!(
            reads.iter().any(|(path, _)| path.starts_with(at)),
            "{what}: {} (volume {}) is mounted but nothing in the configuration reads it",
            at.display(),
            volume["name"]
        );
    }
}

/// The agent mounts exactly what its configuration reads, on containerd nodes (the folder as
/// it is) and on Docker Engine nodes (with `docker-engine/` applied over it: the Docker socket,
/// the host's cgroups and /proc besides).
#[test]
fn kubernetes_agent_mounts_exactly_what_its_configuration_reads() {
    if !python_available("the Kubernetes mount check") {
        return;
    }
    let containerd = check_agent(&applied(&[]));
    assert!(!containerd.docker_enabled && !containerd.stats_enabled);
    let docker = check_agent(&applied(&["docker-engine"]));
    assert!(docker.docker_enabled && docker.stats_enabled);
}

/// Checks the agent's DaemonSet against its ConfigMap in `docs`; returns the configuration.
fn check_agent(docs: &[Value]) -> AgentConfig {
    let daemonset = find(docs, "DaemonSet", "ferry-agent");
    let pod = &daemonset["spec"]["template"]["spec"];
    let text = find(docs, "ConfigMap", "ferry-agent")["data"]["ferry.toml"]
        .as_str()
        .unwrap();
    let agent = toml::from_str::<AgentFile>(text)
        .unwrap_or_else(|e| panic!("the ferry-agent ConfigMap: {e}"))
        .agent;
    agent.validate().unwrap();

    // The logs it tails are the agent's defaults, untouched by the ConfigMap.
    assert_eq!(agent.include, AgentConfig::default().include);
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];

    let mut reads: Vec<(PathBuf, String)> = agent
        .include
        .iter()
        .map(|g| (glob_root(g), format!("include {g:?}")))
        .collect();
    reads.push((agent.data_dir.clone(), "data_dir (checkpoints)".into()));
    reads.push((PathBuf::from(config_path), "--config".into()));
    for dir in &agent.rules_dirs {
        reads.push((dir.clone(), "rules_dirs".into()));
    }
    let token_file = agent
        .token_file
        .clone()
        .expect("the agent reads its token from a file");
    reads.push((token_file.clone(), "token_file".into()));
    if agent.docker_enabled {
        reads.push((agent.docker_socket.clone(), "docker_socket".into()));
    }
    if agent.stats_enabled {
        reads.push((agent.stats_cgroup_root.clone(), "stats_cgroup_root".into()));
        reads.push((agent.stats_proc_root.clone(), "stats_proc_root".into()));
    }
    let mounts = mounts(daemonset, "agent");
    assert_mounts_cover_exactly("the agent DaemonSet", &reads, &mounts);

    // Each host path is what the agent reads there by default, so a setting that moves it
    // (stats_*_root) names where the host's is mounted; log paths stay where they are, because
    // Docker's LogPath and the kubelet's links name host paths.
    let defaults = AgentConfig::default();
    for (at, volume, read_only) in &mounts {
        if let Some(host) = volume["hostPath"]["path"].as_str() {
            let moved = [
                (&agent.stats_cgroup_root, &defaults.stats_cgroup_root),
                (&agent.stats_proc_root, &defaults.stats_proc_root),
            ]
            .into_iter()
            .find(|(configured, _)| *configured == at);
            let expected = moved.map_or(at, |(_, default)| default);
            assert_eq!(
                Path::new(host),
                expected,
                "{} is mounted from {host}",
                at.display()
            );
            let writes = at == &agent.data_dir;
            assert_eq!(
                !read_only,
                writes,
                "{}: only the checkpoints are writable",
                at.display()
            );
        }
    }
    // The token file is the Secret's item.
    let token_volume = mounts
        .iter()
        .find(|(at, _, _)| token_file.starts_with(at))
        .unwrap();
    let item = &token_volume.1["secret"]["items"][0];
    assert_eq!(
        token_volume.0.join(item["path"].as_str().unwrap()),
        token_file,
        "the token Secret's item is where token_file points"
    );
    // host.name: the node's name through the downward API, in the variable host_name_env names.
    let env_name = agent
        .host_name_env
        .as_deref()
        .expect("host_name_env is set");
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == env_name)
        .unwrap_or_else(|| panic!("{env_name} is not in the agent's env"));
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    // Probes and scraping reach the agent's /health and /metrics on metrics_listen's port.
    let port = agent.metrics_listen.port();
    assert!(
        agent.metrics_listen.ip().is_unspecified(),
        "metrics_listen must take the pod's address"
    );
    assert_eq!(container["ports"][0]["containerPort"], port);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/health", "{probe}");
    }
    assert_eq!(
        daemonset["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        port.to_string()
    );
    // Never two agents on one node during an update; every node, whatever its taints.
    let rolling = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"], 0);
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );

    // The extra rules compile.
    let rules = find(docs, "ConfigMap", "ferry-rules")["data"]
        .as_object()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in rules {
        std::fs::write(dir.path().join(name), text.as_str().unwrap()).unwrap();
    }
    let errors = ferry_parsers::check_rule_files(&[dir.path().to_path_buf()]);
    assert!(errors.is_empty(), "the ferry-rules ConfigMap: {errors:?}");
    agent
}

#[test]
fn kubernetes_aggregator_mounts_its_config_token_and_volume_where_its_configuration_reads() {
    if !python_available("the Kubernetes mount check") {
        return;
    }
    let docs = applied(&[]);
    let statefulset = find(&docs, "StatefulSet", "ferry-aggregator");
    let pod = &statefulset["spec"]["template"]["spec"];
    let text = find(&docs, "ConfigMap", "ferry-aggregator")["data"]["ferry.toml"]
        .as_str()
        .unwrap();
    let aggregator = toml::from_str::<AggregatorFile>(text)
        .unwrap_or_else(|e| panic!("the ferry-aggregator ConfigMap: {e}"))
        .aggregator;
    assert_eq!(aggregator.problems(), []);
    let mounts = mounts(statefulset, "aggregator");
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    // The queue and store on the claim, the token from its Secret, the config from its ConfigMap.
    let data = mounts
        .iter()
        .find(|(at, _, _)| at == &aggregator.data_dir)
        .expect("data_dir is a mount");
    assert!(!data.2, "data_dir is writable");
    assert!(
        data.1["persistentVolumeClaim"].is_object(),
        "data_dir is the claim: {}",
        data.1
    );
    let token_file = aggregator.token_file.clone().expect("token_file is set");
    assert!(
        mounts
            .iter()
            .any(|(at, v, _)| token_file.starts_with(at)
                && v["secret"]["secretName"] == "ferry-token")
    );
    assert!(mounts
        .iter()
        .any(|(at, v, _)| at == Path::new(config_path)
            && v["configMap"]["name"] == "ferry-aggregator"));
    let service = find(&docs, "Service", "ferry-aggregator");
    assert_eq!(
        service["spec"]["ports"][0]["port"],
        aggregator.listen.port()
    );
    // The agents' aggregator_url names this Service and port.
    let agent_text = find(&docs, "ConfigMap", "ferry-agent")["data"]["ferry.toml"]
        .as_str()
        .unwrap();
    let agent = toml::from_str::<AgentFile>(agent_text).unwrap().agent;
    assert_eq!(
        agent.aggregator_url,
        format!(
            "http://ferry-aggregator.ferry.svc:{}",
            aggregator.listen.port()
        )
    );
}
