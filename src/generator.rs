//! Realistic container log lines, for `ferry demo` on a host without containers and for the
//! end-to-end benchmark (`ferry generate`).
//!
//! The nginx "combined" lines follow the reference workload in the project's shared bench folder
//! (Zipf-like client popularity, ~5 % IPv6, query strings, health probes, 77 % status 200, a few
//! dozen real user agents); the output formats are Docker json-file (with Docker's 16 KiB
//! partial-message split) and Kubernetes CRI.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};

/// Docker splits a message into json-file entries of at most this many bytes.
const DOCKER_PARTIAL_BYTES: usize = 16 * 1024;

const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
    "curl/8.5.0",
    "kube-probe/1.31",
    "Prometheus/2.53.0",
    "Go-http-client/1.1",
    "python-requests/2.32.3",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 zgrab/0.x",
];

const PATHS: &[&str] = &[
    "/",
    "/index.html",
    "/api/v1/orders",
    "/api/v1/users/me",
    "/api/v1/cart/items",
    "/static/js/app.3f9a1c.js",
    "/static/css/main.82be.css",
    "/images/logo.svg",
    "/healthz",
    "/metrics",
    "/login",
    "/search",
    "/products/8812",
    "/wp-login.php",
    "/.env",
];

const REFERERS: &[&str] = &[
    "-",
    "-",
    "-",
    "https://shop.example.com/",
    "https://shop.example.com/search?q=shoes",
    "https://www.google.com/",
];

/// Deterministic nginx "combined" access-log lines.
pub struct NginxLines {
    rng: fastrand::Rng,
    clients: Vec<String>,
}

impl NginxLines {
    pub fn new(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let clients = (0..5000)
            .map(|_| {
                if rng.u8(..100) < 5 {
                    format!(
                        "2001:db8:{:x}:{:x}::{:x}",
                        rng.u16(..),
                        rng.u16(..),
                        rng.u16(1..)
                    )
                } else {
                    format!(
                        "{}.{}.{}.{}",
                        rng.u8(1..224),
                        rng.u8(..),
                        rng.u8(..),
                        rng.u8(1..255)
                    )
                }
            })
            .collect();
        NginxLines { rng, clients }
    }

    /// Appends one line (without a newline) for a request at `now`.
    pub fn line(&mut self, now: DateTime<Utc>, out: &mut String) {
        use std::fmt::Write as _;
        let r = &mut self.rng;
        // Zipf-like: the square of a uniform number favours the first clients.
        let u = r.f64();
        let client = &self.clients[((u * u) * self.clients.len() as f64) as usize];
        let user = if r.u8(..100) < 3 { "alice" } else { "-" };
        let method = match r.u8(..100) {
            0..=79 => "GET",
            80..=93 => "POST",
            94..=96 => "PUT",
            97..=98 => "DELETE",
            _ => "HEAD",
        };
        let path = PATHS[r.usize(..PATHS.len())];
        let status = match r.u8(..100) {
            0..=76 => 200,
            77..=84 => 304,
            85..=89 => 301,
            90..=95 => 404,
            96..=97 => 499,
            _ => 502,
        };
        let size = if status == 304 { 0 } else { r.u32(120..48_000) };
        let _ = write!(
            out,
            "{client} - {user} [{}] \"{method} {path}",
            now.format("%d/%b/%Y:%H:%M:%S %z")
        );
        if r.u8(..100) < 30 {
            let _ = write!(out, "?page={}&sort=price&ref={:x}", r.u8(1..40), r.u32(..));
        }
        let _ = write!(
            out,
            " HTTP/1.1\" {status} {size} \"{}\" \"{}\"",
            REFERERS[r.usize(..REFERERS.len())],
            AGENTS[r.usize(..AGENTS.len())]
        );
    }
}

/// Appends `message` as Docker json-file entries (split into 16 KiB partials like Docker does).
pub fn docker_json(message: &str, stream: &str, time: &str, out: &mut Vec<u8>) {
    let bytes = message.as_bytes();
    let mut start = 0;
    loop {
        let mut end = (start + DOCKER_PARTIAL_BYTES).min(bytes.len());
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let last = end == bytes.len();
        let mut part = String::with_capacity(end - start + 1);
        part.push_str(&message[start..end]);
        if last {
            part.push('\n');
        }
        out.extend_from_slice(b"{\"log\":");
        serde_json::to_writer(&mut *out, &part).expect("writing to a Vec cannot fail");
        out.extend_from_slice(b",\"stream\":\"");
        out.extend_from_slice(stream.as_bytes());
        out.extend_from_slice(b"\",\"time\":\"");
        out.extend_from_slice(time.as_bytes());
        out.extend_from_slice(b"\"}\n");
        if last {
            break;
        }
        start = end;
    }
}

/// Appends `message` as CRI lines (`P` parts of at most 16 KiB, then `F`).
pub fn cri(message: &str, stream: &str, time: &str, out: &mut Vec<u8>) {
    let mut rest = message;
    while rest.len() > DOCKER_PARTIAL_BYTES {
        let mut cut = DOCKER_PARTIAL_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.extend_from_slice(format!("{time} {stream} P {}\n", &rest[..cut]).as_bytes());
        rest = &rest[cut..];
    }
    out.extend_from_slice(format!("{time} {stream} F {rest}\n").as_bytes());
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Output format of `ferry generate`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Raw nginx lines.
    Plain,
    /// Docker json-file.
    Docker,
    /// Kubernetes CRI.
    Cri,
}

/// Writes nginx lines in `format` to `path` until the file holds at least `bytes` bytes.
/// Returns the number of lines written.
pub fn generate_file(path: &Path, format: Format, bytes: u64, seed: u64) -> std::io::Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut gen = NginxLines::new(seed);
    let start = Utc::now() - chrono::Duration::hours(1);
    let (mut written, mut lines) = (0u64, 0u64);
    let (mut line, mut buf) = (String::new(), Vec::new());
    while written < bytes {
        let now = start + chrono::Duration::milliseconds(lines as i64 / 10);
        line.clear();
        buf.clear();
        gen.line(now, &mut line);
        match format {
            Format::Plain => {
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
            }
            Format::Docker => docker_json(&line, "stdout", &rfc3339(now), &mut buf),
            Format::Cri => cri(&line, "stdout", &rfc3339(now), &mut buf),
        }
        out.write_all(&buf)?;
        written += buf.len() as u64;
        lines += 1;
    }
    out.flush()?;
    Ok(lines)
}

/// The demo's fake host: a few "containers" writing Docker json-file logs (with the
/// `config.v2.json` Docker keeps beside them, so names and images show) and one Kubernetes pod
/// writing CRI logs.
pub struct DemoWorkload {
    root: PathBuf,
}

impl DemoWorkload {
    pub fn new(root: PathBuf) -> Self {
        DemoWorkload { root }
    }

    /// The globs an agent needs to pick these files up.
    pub fn include_globs(&self) -> Vec<String> {
        vec![
            format!("{}/containers/*/*-json.log", self.root.display()),
            format!("{}/pods/*/*/*.log", self.root.display()),
        ]
    }

    /// Writes about `lines_per_second` lines in all until `stop` is set.
    pub fn run(&self, lines_per_second: u32, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let web = self.container("3f4e5d6c7b8a", "web-1", "nginx:1.27", "web")?;
        let api = self.container("9a8b7c6d5e4f", "api-1", "shop/api:2.4.1", "api")?;
        let worker = self.container("1b2c3d4e5f60", "worker-1", "shop/worker:2.4.1", "worker")?;
        let pod_dir = self
            .root
            .join("pods/shop_checkout-7d9f8-xk2lp_6c1e2f3a-1b2c-4d5e-8f90-123456789abc/checkout");
        std::fs::create_dir_all(&pod_dir)?;
        let mut pod = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pod_dir.join("0.log"))?;
        let mut nginx = NginxLines::new(Utc::now().timestamp() as u64);
        let mut rng = fastrand::Rng::new();
        let tick = Duration::from_millis(100);
        let per_tick = (lines_per_second / 10).max(1);
        let (mut line, mut buf) = (String::new(), Vec::new());
        let mut next = Instant::now();
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..per_tick {
                n += 1;
                let now = Utc::now();
                let time = rfc3339(now);
                line.clear();
                buf.clear();
                match n % 10 {
                    0..=5 => {
                        nginx.line(now, &mut line);
                        docker_json(&line, "stdout", &time, &mut buf);
                        web.append(&buf)?;
                    }
                    6 | 7 => {
                        let level =
                            ["info", "info", "info", "debug", "warn", "error"][rng.usize(..6)];
                        line = serde_json::json!({
                            "level": level, "ts": time, "msg": "order processed",
                            "order_id": rng.u32(..1_000_000), "duration_ms": rng.u16(1..900)
                        })
                        .to_string();
                        docker_json(
                            &line,
                            if level == "error" { "stderr" } else { "stdout" },
                            &time,
                            &mut buf,
                        );
                        api.append(&buf)?;
                    }
                    8 => {
                        line = if rng.u16(..200) == 0 {
                            format!("batch report: {}", "x".repeat(40 * 1024))
                        } else {
                            format!(
                                "job {} finished in {} ms",
                                rng.u32(..100_000),
                                rng.u16(..5000)
                            )
                        };
                        docker_json(&line, "stdout", &time, &mut buf);
                        worker.append(&buf)?;
                    }
                    _ => {
                        let stream = if rng.bool() { "stdout" } else { "stderr" };
                        line = format!(
                            "checkout step={} cart_items={}",
                            rng.u8(1..6),
                            rng.u8(1..20)
                        );
                        cri(&line, stream, &time, &mut buf);
                        pod.write_all(&buf)?;
                    }
                }
            }
            next += tick;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        Ok(())
    }

    fn container(
        &self,
        short: &str,
        name: &str,
        image: &str,
        service: &str,
    ) -> std::io::Result<ContainerLog> {
        let id = format!("{short}{}", "0".repeat(64 - short.len()));
        let dir = self.root.join("containers").join(&id);
        std::fs::create_dir_all(&dir)?;
        let config = serde_json::json!({
            "ID": id, "Name": format!("/{name}"),
            "Config": {"Image": image, "Labels": {"com.docker.compose.project": "shop", "com.docker.compose.service": service}}
        });
        std::fs::write(dir.join("config.v2.json"), config.to_string())?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{id}-json.log")))?;
        Ok(ContainerLog { file })
    }
}

struct ContainerLog {
    file: File,
}

impl ContainerLog {
    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        (&self.file).write_all(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_json_splits_like_docker() {
        let message = "é".repeat(20_000); // 40 000 bytes
        let mut out = Vec::new();
        docker_json(&message, "stderr", "2026-11-28T08:00:00Z", &mut out);
        let parts: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(parts.len(), 3);
        let joined: String = parts.iter().map(|p| p["log"].as_str().unwrap()).collect();
        assert_eq!(joined, format!("{message}\n"));
        assert!(parts[..2]
            .iter()
            .all(|p| !p["log"].as_str().unwrap().ends_with('\n')));
        assert!(parts.iter().all(|p| p["stream"] == "stderr"));
    }

    #[test]
    fn cri_splits_into_partials() {
        let mut out = Vec::new();
        cri(
            &"a".repeat(40_000),
            "stdout",
            "2026-11-28T08:00:00Z",
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "P", "F"]);
    }

    #[test]
    fn nginx_lines_look_like_nginx() {
        let mut g = NginxLines::new(42);
        let re = regex::Regex::new(r#"^(?P<remote>[^ ]*) [^ ]* (?P<user>[^ ]*) \[(?P<time>[^\]]*)\] "(?P<method>\S+) (?P<path>[^ "]*) (?P<protocol>[^"]*)" (?P<code>[^ ]*) (?P<size>[^ ]*) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$"#).unwrap();
        let mut total = 0;
        for _ in 0..1000 {
            let mut line = String::new();
            g.line(Utc::now(), &mut line);
            assert!(re.is_match(&line), "{line}");
            total += line.len();
        }
        let mean = total / 1000;
        assert!((150..300).contains(&mean), "mean line length {mean}");
    }
}
