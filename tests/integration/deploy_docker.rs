//! What the deploy tests share about the Docker engine: the `docker` CLI, the opt-out
//! (`FERRY_TEST_SKIP_DOCKER=1`; without it a missing engine fails the test), and the ferry image
//! built with no base image from the binary under test (`deploy/image/build.sh`).

use std::path::Path;
use std::process::{Command, Stdio};

/// The repository root (where `deploy/` and `dashboards/` live).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// False (with a note) when `FERRY_TEST_SKIP_DOCKER=1`; panics when the engine does not answer.
pub fn docker_available(test: &str) -> bool {
    if std::env::var("FERRY_TEST_SKIP_DOCKER").is_ok_and(|v| v == "1") {
        eprintln!("FERRY_TEST_SKIP_DOCKER=1: {test} is skipped");
        return false;
    }
    match Command::new("docker")
        .args(["info", "-f", "{{.ServerVersion}}"])
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!(
            "{test} needs a Docker engine, and `docker info` failed: {} (or set FERRY_TEST_SKIP_DOCKER=1)",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "{test} needs the docker CLI and an engine ({e}); or set FERRY_TEST_SKIP_DOCKER=1"
        ),
    }
}

/// Runs the docker CLI in `dir` with `env`; returns its trimmed stdout, or its stderr as the error.
pub fn docker_in(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("docker {args:?} does not run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Runs the docker CLI; panics with its stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    docker_in(repo(), &[], args).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds the ferry image from the binary under test with `deploy/image/build.sh` (FROM
/// scratch: no registry is reachable) as `tag`; removed when dropped. `FERRY_TEST_IMAGE_BINARY`
/// names another binary (a release build, for measurements).
pub struct FerryImage {
    pub tag: String,
}

impl FerryImage {
    pub fn build(tag: &str) -> FerryImage {
        let binary =
            std::env::var("FERRY_TEST_IMAGE_BINARY").unwrap_or_else(|_| crate::util::FERRY.into());
        let out = Command::new("bash")
            .arg(repo().join("deploy/image/build.sh"))
            .arg(&binary)
            .arg(tag)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "deploy/image/build.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FerryImage { tag: tag.into() }
    }
}

impl Drop for FerryImage {
    fn drop(&mut self) {
        let _ = docker_in(repo(), &[], &["image", "rm", "-f", &self.tag]);
    }
}
