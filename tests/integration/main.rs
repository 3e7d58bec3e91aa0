//! End-to-end tests with real `ferry` processes: the agent tails files on disk and forwards to an
//! aggregator that stores into the local store; the tests read the store and check every line.

mod alerts_config;
mod alerts_differential;
mod alerts_docker;
mod alerts_receivers;
mod bad_input;
mod crash;
mod deploy_docker;
mod deploy_grafana;
mod deploy_kibana;
mod deploy_kubernetes;
mod deploy_swarm;
mod deploy_systemd;
mod edges;
mod elasticsearch;
mod pipeline;
mod rules;
mod tls;
mod util;
mod workload;
