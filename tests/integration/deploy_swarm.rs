//! The shipped Swarm stack (`deploy/swarm/stack.yml`, as written; only `FERRY_IMAGE` names the
//! image built here) on this machine's engine: `docker swarm init`, `docker stack deploy`, a
//! busybox service's lines reach the aggregator once each, in order, with their container and
//! Swarm fields, through a rolling restart of the agent service; the agent's stats reach the
//! aggregator's `/metrics`. [`Swarm`] removes the stack, its volumes, the secret and the swarm
//! when dropped, also when the test fails.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::deploy_docker::*;
use crate::util::wait_for;

/// Where the stack's aggregator keeps its store (stack.yml mounts the volume there).
const AGGREGATOR_DATA: &str = "/var/lib/ferry/aggregator";

/// A swarm with the shipped stack deployed, torn down when dropped.
struct Swarm {
    stack: String,
    /// `docker swarm init` was ours (a swarm that was already there is left alone).
    initialised: bool,
    /// The `ferry_token` secret was ours.
    secret: bool,
    /// Services the test created beside the stack.
    services: Vec<String>,
}

impl Swarm {
    /// Joins or initialises a swarm and deploys the stack with `image`.
    fn deploy(stack: &str, image: &str, token: &str) -> Swarm {
        let mut swarm = Swarm {
            stack: stack.into(),
            initialised: false,
            secret: false,
            services: Vec::new(),
        };
        if docker(&["info", "-f", "{{.Swarm.LocalNodeState}}"]) != "active" {
            docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
            swarm.initialised = true;
        }
        if docker_in(repo(), &[], &["secret", "inspect", "ferry_token"]).is_err() {
            let path = std::env::temp_dir().join(format!("{stack}-token"));
            std::fs::write(&path, token).unwrap();
            let created = docker_in(
                repo(),
                &[],
                &["secret", "create", "ferry_token", path.to_str().unwrap()],
            );
            let _ = std::fs::remove_file(&path);
            created.unwrap_or_else(|e| panic!("{e}"));
            swarm.secret = true;
        }
        // As the README says: from deploy/swarm, the stack file as written.
        docker_in(
            &repo().join("deploy/swarm"),
            &[("FERRY_IMAGE", image)],
            &["stack", "deploy", "-c", "stack.yml", stack],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        swarm
    }

    fn service(&self, name: &str) -> String {
        format!("{}_{name}", self.stack)
    }

    /// The ids of the running containers of `service` that Docker reports healthy.
    fn healthy(&self, service: &str) -> Vec<String> {
        let filter = format!("label=com.docker.swarm.service.name={service}");
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &filter,
            "--filter",
            "health=healthy",
        ])
        .split_whitespace()
        .map(String::from)
        .collect()
    }

    /// Waits until `service` has exactly one healthy container; returns its id.
    fn wait_healthy(&self, service: &str) -> String {
        wait_for(
            &format!("a healthy {service} container"),
            Duration::from_secs(180),
            || {
                let ids = self.healthy(service);
                (ids.len() == 1).then(|| ids[0].clone())
            },
        )
    }

    /// Every stored record whose message contains `marker`, in store order (read by the
    /// aggregator's own `ferry search` inside its container).
    fn stored(&self, aggregator: &str, marker: &str) -> Vec<Value> {
        let out = docker_in(
            repo(),
            &[],
            &[
                "exec",
                aggregator,
                "/usr/local/bin/ferry",
                "search",
                "--data-dir",
                AGGREGATOR_DATA,
                "--json",
                "--grep",
                marker,
            ],
        )
        .unwrap_or_default();
        // The line being written as the search reads may be cut: only whole records count.
        out.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `/metrics` page of the aggregator container `aggregator`.
    fn aggregator_metrics(&self, aggregator: &str) -> Option<String> {
        self.metrics(aggregator, 7480)
    }

    /// The `/metrics` page served on `port` by the stack's container `container`, fetched from a
    /// one-off container on the stack's network (by the task's address: the test image's static
    /// busybox cannot resolve names). `None` until a whole page came back.
    fn metrics(&self, container: &str, port: u16) -> Option<String> {
        let network = format!("{}_ferry", self.stack);
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let ip = docker_in(repo(), &[], &["inspect", "-f", &format, container]).ok()?;
        let request = format!("printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {ip} {port}");
        let out = std::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                &network,
                "ferry-test:latest",
                "sh",
                "-c",
                &request,
            ])
            .output()
            .ok()?;
        let page = String::from_utf8_lossy(&out.stdout).to_string();
        // A page cut short has no final newline; a refused request has no 200.
        (page.starts_with("HTTP/1.") && page.contains(" 200 ") && page.ends_with('\n'))
            .then_some(page)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let report = |what: &str, r: Result<String, String>| {
            if let Err(e) = r {
                eprintln!("swarm clean-up, {what}: {e}");
            }
        };
        for service in &self.services {
            report(
                "service rm",
                docker_in(repo(), &[], &["service", "rm", service]),
            );
        }
        report(
            "stack rm",
            docker_in(repo(), &[], &["stack", "rm", &self.stack]),
        );
        // Volumes can go once the stack's containers have.
        let filter = format!("label=com.docker.stack.namespace={}", self.stack);
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let left =
                docker_in(repo(), &[], &["ps", "-aq", "--filter", &filter]).unwrap_or_default();
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for volume in ["aggregator-data", "agent-data"] {
            let name = format!("{}_{volume}", self.stack);
            let deadline = Instant::now() + Duration::from_secs(30);
            while docker_in(repo(), &[], &["volume", "rm", &name]).is_err()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if self.secret {
            report(
                "secret rm",
                docker_in(repo(), &[], &["secret", "rm", "ferry_token"]),
            );
        }
        if self.initialised {
            report(
                "swarm leave",
                docker_in(repo(), &[], &["swarm", "leave", "--force"]),
            );
        }
    }
}

/// Numbers each line `<marker> <i>`, `count` lines, a pause every 20 lines (about 200 lines a
/// second): a writer that keeps going through the agent's restart.
fn writer_script(marker: &str, count: usize) -> String {
    format!(
        "i=0; while [ $i -lt {count} ]; do echo \"{marker} $i\"; i=$((i+1)); \
         if [ $((i % 20)) -eq 0 ]; then usleep 100000; fi; done"
    )
}

fn field<'a>(record: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(record, |v, k| &v[k])
}

#[test]
fn swarm_stack_ships_a_services_lines_once_in_order_through_a_rolling_agent_restart() {
    if !docker_available("the Swarm deployment test") {
        return;
    }
    let run = format!("{:08x}", fastrand::u32(..));
    let image = FerryImage::build(&format!("ferry-deploy-test:{run}"));
    let mut swarm = Swarm::deploy(
        &format!("ferrytest{run}"),
        &image.tag,
        &format!("token-{run}"),
    );
    let aggregator = swarm.wait_healthy(&swarm.service("aggregator"));
    let agent = swarm.wait_healthy(&swarm.service("agent"));
    // The privileges README promises: the agent root without capabilities, the aggregator not root.
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.Config.User}} {{.HostConfig.CapDrop}}",
            &agent
        ]),
        "0:0 [ALL]"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.Config.User}}", &aggregator]),
        "65532:65532"
    );

    // A busybox service writing numbered lines for a while (about 40 s on an idle machine).
    let marker = format!("swarm-{run}");
    let total = 8000;
    let writer = format!("ferrytest{run}-writer");
    docker(&[
        "service",
        "create",
        "-d",
        "--name",
        &writer,
        "--restart-condition",
        "none",
        "ferry-test:latest",
        "sh",
        "-c",
        &writer_script(&marker, total),
    ]);
    swarm.services.push(writer.clone());

    // Restart the agent once its first lines arrived, while the writer is still writing.
    wait_for(
        "the writer's first lines in the store",
        Duration::from_secs(120),
        || (swarm.stored(&aggregator, &marker).len() >= 50).then_some(()),
    );
    let before_restart = swarm.stored(&aggregator, &marker).len();
    docker(&[
        "service",
        "update",
        "--force",
        "--detach=false",
        "--quiet",
        &swarm.service("agent"),
    ]);
    let new_agent = swarm.wait_healthy(&swarm.service("agent"));
    let after_restart = swarm.stored(&aggregator, &marker).len();
    eprintln!(
        "agent restarted with {before_restart} of {total} lines stored, {after_restart} once the new agent was healthy"
    );
    assert_ne!(
        new_agent, agent,
        "the rolling update replaced the agent's container"
    );
    assert!(
        before_restart < total,
        "the writer had finished before the restart ({before_restart} lines stored): nothing was tested"
    );

    let records = wait_for("every line of the writer", Duration::from_secs(300), || {
        let records = swarm.stored(&aggregator, &marker);
        (records.len() >= total).then_some(records)
    });
    let numbers: Vec<usize> = records
        .iter()
        .map(|r| {
            let message = r["message"].as_str().unwrap();
            message.rsplit(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        (0..total).collect::<Vec<_>>(),
        "every line once, in the order written"
    );

    // The container and Swarm fields, the same on every line.
    let filter = format!("label=com.docker.swarm.service.name={writer}");
    let container_id = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter]);
    let container_name = docker(&["inspect", "-f", "{{.Name}}", &container_id])
        .trim_start_matches('/')
        .to_string();
    let task_name = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"com.docker.swarm.task.name\"}}",
        &container_id,
    ]);
    let node = docker(&["info", "-f", "{{.Name}}"]);
    for r in &records {
        for (path, want) in [
            ("container.id", container_id.as_str()),
            ("container.name", container_name.as_str()),
            ("container.image.name", "ferry-test:latest"),
            ("host.name", node.as_str()),
            ("stream", "stdout"),
        ] {
            assert_eq!(field(r, path).as_str(), Some(want), "{path} of {r}");
        }
        let labels = &r["container"]["labels"];
        assert_eq!(
            labels["com.docker.swarm.service.name"].as_str(),
            Some(writer.as_str()),
            "{r}"
        );
        assert_eq!(
            labels["com.docker.swarm.task.name"].as_str(),
            Some(task_name.as_str()),
            "{r}"
        );
    }

    // The agent's stats of the stack's own containers reach the aggregator's /metrics.
    let aggregator_name = docker(&["inspect", "-f", "{{.Name}}", &aggregator])
        .trim_start_matches('/')
        .to_string();
    let series = format!("name=\"{aggregator_name}\"");
    let page = wait_for(
        "the aggregator container's stats",
        Duration::from_secs(120),
        || {
            swarm.aggregator_metrics(&aggregator).filter(|p| {
                p.lines().any(|l| {
                    l.starts_with("container_memory_working_set_bytes{") && l.contains(&series)
                })
            })
        },
    );
    let host = format!("host=\"{node}\"");
    assert!(
        page.lines()
            .any(|l| l.starts_with("container_cpu_usage_seconds_total{")
                && l.contains(&series)
                && l.contains(&host)),
        "CPU series of {aggregator_name} on {node}"
    );
}

/// CPU seconds (user + system) and resident set (current, peak) of a host process.
fn process_cost(pid: &str) -> (f64, u64, u64) {
    crate::util::process_usage(pid.parse().expect("a process id"))
}

/// A measurement, not a check: the agent's CPU and memory on this node under the shipped stack
/// with 20 busy containers (a replicated service, each task printing 100 nginx access lines a
/// second: 2,000 lines/s, about 0.3 MiB/s). Run it with
/// `FERRY_TEST_IMAGE_BINARY=target/release/ferry cargo nextest run -p ferry --run-ignored only
/// swarm_agent_cost` (a release binary: the test profile leaves ferry's own code unoptimised).
#[test]
#[ignore = "a measurement: about 3 minutes on the Swarm of this engine"]
fn swarm_agent_cost_with_20_busy_containers() {
    if !docker_available("the Swarm measurement") {
        return;
    }
    let run = format!("{:08x}", fastrand::u32(..));
    let image = FerryImage::build(&format!("ferry-deploy-test:{run}"));
    let size = docker(&["image", "inspect", "-f", "{{.Size}}", &image.tag]);
    let mut swarm = Swarm::deploy(
        &format!("ferrytest{run}"),
        &image.tag,
        &format!("token-{run}"),
    );
    let _aggregator = swarm.wait_healthy(&swarm.service("aggregator"));
    let agent = swarm.wait_healthy(&swarm.service("agent"));
    let busy = format!("ferrytest{run}-busy");
    let script = "while :; do i=0; while [ $i -lt 100 ]; do \
                  echo \"10.1.2.$((i % 250)) - - [29/Nov/2026:08:00:00 +0000] \\\"GET /api/items/$i?page=2 HTTP/1.1\\\" 200 $((i * 37)) \\\"-\\\" \\\"Mozilla/5.0 (bench)\\\"\"; \
                  i=$((i+1)); done; sleep 1; done";
    docker(&[
        "service",
        "create",
        "-d",
        "--name",
        &busy,
        "--replicas",
        "20",
        "ferry-test:latest",
        "sh",
        "-c",
        script,
    ]);
    swarm.services.push(busy.clone());
    wait_for("20 busy containers", Duration::from_secs(180), || {
        let filter = format!("label=com.docker.swarm.service.name={busy}");
        (docker(&["ps", "-q", "--filter", &filter]).lines().count() == 20).then_some(())
    });
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &agent]);
    // Warm up (the agent catches up with what the containers wrote while starting), then measure.
    std::thread::sleep(Duration::from_secs(30));
    // What the agent read, from its own /metrics (retried: the one-off fetch may fail under load).
    let lines_read = |s: &Swarm| {
        wait_for("the agent's /metrics", Duration::from_secs(60), || {
            s.metrics(&agent, 7481)
                .map(|p| crate::util::metric(&p, "ferry_agent_lines_read_total"))
        })
    };
    let (cpu0, _, _) = process_cost(&pid);
    let lines0 = lines_read(&swarm);
    let start = Instant::now();
    let mut rss_max = 0;
    while start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_secs(5));
        rss_max = rss_max.max(process_cost(&pid).1);
    }
    let (cpu1, rss, hwm) = process_cost(&pid);
    let seconds = start.elapsed().as_secs_f64();
    let lines1 = lines_read(&swarm);
    let lines_per_second = (lines1 - lines0) / seconds;
    let cpu = cpu1 - cpu0;
    eprintln!(
        "image {size} bytes; agent over {seconds:.0} s: {:.3} CPU-s/s ({:.1} % of one core), {:.1} CPU-µs per line, RSS {} MiB now, {} MiB sampled max, peak {} MiB; it read {lines_per_second:.0} lines/s",
        cpu / seconds,
        100.0 * cpu / seconds,
        1e6 * cpu / (lines1 - lines0).max(1.0),
        rss >> 20,
        rss_max >> 20,
        hwm >> 20,
    );
    assert!(
        lines_per_second > 0.0,
        "the agent reads the busy containers' lines"
    );
}
