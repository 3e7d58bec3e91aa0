//! `ferry health URL`: the health probe of the container images, which hold no shell, `curl` or
//! `wget`. One plain-HTTP `GET` with a time limit; success is a 2xx answer. It owns nothing else:
//! Kubernetes probes `/health` itself (`httpGet`), Docker and Swarm health checks run this.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

/// Asks `url` (`http://host:port/path`) and returns its status line when the answer is 2xx.
pub fn probe(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url:?}: cannot resolve {authority:?}"))?
        .next()
        .with_context(|| format!("{url:?}: {authority:?} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("{url}: cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: a server may answer and close as soon as it has read the request line.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("{url}: cannot send the request"))?;
    // The status line and a little of the body (the reason a sick process gives) are enough.
    let mut answer = Vec::new();
    stream
        .take(4096)
        .read_to_end(&mut answer)
        .with_context(|| format!("{url}: no answer within {timeout:?}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("").to_string();
    let code = status_line.split(' ').nth(1).unwrap_or("");
    if !code.starts_with('2') || code.len() != 3 {
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        bail!("{url}: {status_line:?} {body}");
    }
    Ok(status_line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection with `answer`.
    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The whole request, then the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(answer.as_bytes()).unwrap();
        });
        format!("http://{addr}/health")
    }

    #[test]
    fn a_2xx_answer_is_healthy_anything_else_names_the_status_and_reason() {
        let url = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(
            probe(&url, Duration::from_secs(5)).unwrap(),
            "HTTP/1.1 200 OK"
        );
        let url = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 20\r\n\r\nsink elasticsearch down",
        );
        let err = probe(&url, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(
            err.contains("503") && err.contains("sink elasticsearch"),
            "{err}"
        );
    }

    #[test]
    fn a_closed_port_and_a_non_http_url_are_refused_with_the_url() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/health");
        let err = format!("{:#}", probe(&url, Duration::from_secs(5)).unwrap_err());
        assert!(err.contains(&url), "{err}");
        let err = probe("https://x/health", Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("only http://"), "{err}");
    }
}
