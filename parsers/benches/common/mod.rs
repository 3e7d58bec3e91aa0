//! What the parsers' benchmarks share: the nginx lines shaped like the reference workload, and
//! the on-CPU-time measurement. Not a benchmark itself (a folder, so Cargo does not take it for
//! one).

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

/// nginx combined lines shaped like the reference workload's.
pub fn nginx_lines(n: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(42);
    let firsts = [
        10, 31, 45, 62, 66, 77, 81, 89, 91, 93, 104, 141, 172, 185, 192, 212,
    ];
    let agents = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0.0.0 Safari/537.36",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "curl/8.4.0",
        "python-requests/2.31.0",
        "okhttp/4.12.0",
    ];
    let slugs = [
        "blue-widget",
        "summer-sale",
        "usb-c-cable",
        "desk-lamp",
        "yoga-mat",
    ];
    (0..n)
        .map(|i| {
            let ip = if rng.u8(..100) < 5 {
                format!("2001:db8:{:x}:{:x}::{:x}", rng.u16(..), rng.u16(..), rng.u16(1..))
            } else {
                format!("{}.{}.{}.{}", firsts[rng.usize(..firsts.len())], rng.u8(..), rng.u8(..), rng.u8(1..255))
            };
            let user = if rng.u8(..100) < 3 { "alice" } else { "-" };
            let (method, path, probe) = match rng.u8(..100) {
                0..=29 => ("GET", format!("/static/js/app.{:06x}.js", rng.u32(..1 << 24)), false),
                30..=61 => {
                    let m = ["GET", "GET", "GET", "POST", "PUT"][rng.usize(..5)];
                    (m, format!("/api/v1/users/{}/orders?page={}&limit=20", rng.u32(1..2_000_000), rng.u8(1..30)), false)
                }
                62..=89 => ("GET", format!("/products/{}-{}", slugs[rng.usize(..slugs.len())], rng.u16(1..20000)), false),
                90..=96 => ("GET", "/healthz".to_owned(), true),
                _ => ("GET", "/wp-login.php".to_owned(), false),
            };
            let status = [200, 200, 200, 200, 200, 200, 200, 304, 404, 201, 302, 500][rng.usize(..12)];
            let size = if status == 304 { 0 } else { rng.u32(100..60000) };
            let (referer, agent) = if probe {
                ("-".to_owned(), "kube-probe/1.29")
            } else if rng.bool() {
                (format!("https://shop.example.com/products/{}-{}", slugs[rng.usize(..slugs.len())], rng.u16(1..20000)), agents[rng.usize(..agents.len())])
            } else {
                ("-".to_owned(), agents[rng.usize(..agents.len())])
            };
            let proto = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/2.0"][rng.usize(..4)];
            let secs = i / 2000;
            format!(
                r#"{ip} - {user} [21/Aug/2026:{:02}:{:02}:{:02} +0000] "{method} {path} {proto}" {status} {size} "{referer}" "{agent}""#,
                secs / 3600 % 24,
                secs / 60 % 60,
                secs % 60
            )
        })
        .collect()
}

/// Bytes of input, newlines included (the throughput of a pass over `lines`).
pub fn bytes(lines: &[String]) -> u64 {
    lines.iter().map(|l| l.len() as u64 + 1).sum()
}

/// The benchmark thread's time on a CPU, read from `/proc/thread-self/schedstat`: with
/// `FERRY_BENCH_CPU_TIME=1`, time the core spends on other processes is not counted, so figures
/// taken under different loads compare (baselines saved with one measurement compare only with
/// runs of the same one).
pub struct CpuTime;

/// Nanoseconds the calling thread has run on a CPU. The kernel brings a running thread's figure
/// up to date only at a tick or a switch (a read between them can see a sample take no time at
/// all); yielding first makes it account the time run so far.
fn on_cpu_ns() -> u64 {
    std::thread::yield_now();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("FERRY_BENCH_CPU_TIME needs /proc/thread-self/schedstat (Linux)")
}

/// Values are nanoseconds, as wall time's are: its formatter prints them.
static WALL_TIME: WallTime = WallTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = Duration;

    fn start(&self) -> u64 {
        on_cpu_ns()
    }

    fn end(&self, start: u64) -> Duration {
        Duration::from_nanos(on_cpu_ns().saturating_sub(start))
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        WALL_TIME.formatter()
    }
}
