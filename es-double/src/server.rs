//! The Elasticsearch API over HTTP/1.1: routing, the product header, content types, body size
//! and encoding, whole-request outcomes, slow mode and outages.

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::store::EsError;
use crate::{Outage, Shared};

pub(crate) type Body = Full<Bytes>;

/// Binds with `SO_REUSEADDR`, so the API can be bound again on the same port after an outage.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves one connection with `handler`.
pub(crate) fn spawn_connection<F, Fut>(
    conns: &mut JoinSet<()>,
    stream: tokio::net::TcpStream,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    conns.spawn(async move {
        let service = service_fn(move |req| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

/// Accepts Elasticsearch API connections; while the outage is `refuse`, the listener is closed
/// and every open connection is cut.
pub(crate) async fn serve_es(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener = Some(listener);
    let mut behaviour = shared.behaviour.subscribe();
    let mut conns = JoinSet::new();
    loop {
        let refuse = behaviour.borrow_and_update().outage == Outage::Refuse;
        if refuse && listener.take().is_some() {
            conns.abort_all();
        } else if !refuse && listener.is_none() {
            match bind(addr) {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|&s| s) => break,
            changed = behaviour.changed() => if changed.is_err() { break },
            accepted = async { listener.as_ref().expect("checked").accept().await }, if listener.is_some() => {
                if let Ok((stream, _)) = accepted {
                    let shared = Arc::clone(&shared);
                    spawn_connection(&mut conns, stream, move |req| route(Arc::clone(&shared), req));
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

/// The media type Elasticsearch answers with: the vendor type when the client asked for it.
fn response_type(headers: &HeaderMap) -> &'static str {
    let accept = headers
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("vnd.elasticsearch+json") {
        if accept.contains("compatible-with=8") {
            return "application/vnd.elasticsearch+json;compatible-with=8";
        }
        return "application/vnd.elasticsearch+json;compatible-with=9";
    }
    "application/json"
}

fn respond(
    shared: &Shared,
    status: u16,
    media: &'static str,
    body: Option<&Value>,
) -> Response<Body> {
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if body.is_some() {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(media));
    }
    if shared.options.distribution == "elasticsearch" {
        response.headers_mut().insert(
            "x-elastic-product",
            HeaderValue::from_static("Elasticsearch"),
        );
    }
    response
}

fn respond_text(shared: &Shared, status: u16, media: &'static str, text: String) -> Response<Body> {
    let mut response = respond(shared, status, media, None);
    *response.body_mut() = Full::new(Bytes::from(text));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(media));
    response
}

fn error(shared: &Shared, media: &'static str, e: &EsError) -> Response<Body> {
    respond(shared, e.status, media, Some(&e.body()))
}

/// The query parameter `name`, percent-decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten();
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn info(shared: &Shared) -> Value {
    let o = &shared.options;
    if o.distribution == "opensearch" {
        json!({
            "name": "es-double", "cluster_name": "ferry-es-double", "cluster_uuid": "ZG91YmxlLWNsdXN0ZXI",
            "version": {
                "distribution": "opensearch", "number": o.version, "build_type": "tar",
                "build_hash": "0000000", "build_date": "2026-01-01T00:00:00.000Z", "build_snapshot": false,
                "lucene_version": "9.12.0", "minimum_wire_compatibility_version": "7.10.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "The OpenSearch Project: https://opensearch.org/"
        })
    } else {
        json!({
            "name": "es-double", "cluster_name": "ferry-es-double", "cluster_uuid": "ZG91YmxlLWNsdXN0ZXI",
            "version": {
                "number": o.version, "build_flavor": "default", "build_type": "docker",
                "build_hash": "0000000000000000000000000000000000000000",
                "build_date": "2026-01-01T00:00:00.000000000Z", "build_snapshot": false,
                "lucene_version": "10.2.2", "minimum_wire_compatibility_version": "8.19.0",
                "minimum_index_compatibility_version": "8.0.0"
            },
            "tagline": "You Know, for Search"
        })
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let latency = crate::latency(&shared);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let media = response_type(req.headers());
    if shared.behaviour.borrow().outage == Outage::Unavailable {
        return error(
            &shared,
            media,
            &EsError::new(
                503,
                "cluster_block_exception",
                "blocked by: [SERVICE_UNAVAILABLE/2/no master];",
            ),
        );
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(String::from);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let result: Result<Value, EsError> = match (&method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, [""]) => Ok(info(&shared)),
        (&Method::POST | &Method::PUT, ["_bulk"]) => {
            return bulk(shared, None, query, req, media).await
        }
        (&Method::POST | &Method::PUT, [index, "_bulk"]) => {
            let index = percent_decode(index);
            return bulk(shared, Some(index), query, req, media).await;
        }
        (&Method::PUT | &Method::POST, ["_index_template", name]) => match read_json(req).await {
            Ok(body) => shared.store().put_template(name, body),
            Err(e) => Err(e),
        },
        (&Method::GET, ["_index_template", name]) => shared.store().get_template(name),
        (&Method::PUT | &Method::POST, ["_ilm", "policy", name]) => match read_json(req).await {
            Ok(body) => shared.store().put_policy(name, body),
            Err(e) => Err(e),
        },
        (&Method::GET, ["_ilm", "policy", name]) => shared.store().get_policy(name),
        (&Method::PUT, ["_data_stream", name]) => shared.store().put_data_stream(name),
        (&Method::GET, ["_data_stream", name]) => shared.store().get_data_stream(name),
        _ => {
            let body = json!({
                "error": format!("no handler found for uri [{path}] and method [{method}]"),
                "status": 400,
            });
            return respond(&shared, 400, media, Some(&body));
        }
    };
    match result {
        Ok(body) if method == Method::HEAD => {
            let _ = body;
            respond(&shared, 200, media, None)
        }
        Ok(body) => respond(&shared, 200, media, Some(&body)),
        Err(e) => error(&shared, media, &e),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, EsError> {
    let body = Limited::new(req.into_body(), 16 << 20)
        .collect()
        .await
        .map_err(|e| {
            EsError::new(
                400,
                "parse_exception",
                format!("request body is unreadable: {e}"),
            )
        })?
        .to_bytes();
    if body.is_empty() {
        return Err(EsError::new(
            400,
            "parse_exception",
            "request body is required",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        EsError::new(
            400,
            "x_content_parse_exception",
            format!("[{}:{}] {e}", e.line(), e.column()),
        )
    })
}

/// Whether Elasticsearch takes a bulk body of this `Content-Type`.
fn bulk_content_type_ok(value: Option<&str>) -> bool {
    let Some(value) = value else { return false };
    let mut parts = value.split(';').map(str::trim);
    let media = parts.next().unwrap_or("").to_ascii_lowercase();
    let compatible = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("compatible-with"))
        .map(|(_, v)| v.trim().to_string());
    match media.as_str() {
        "application/json" | "application/x-ndjson" => true,
        "application/vnd.elasticsearch+json" | "application/vnd.elasticsearch+x-ndjson" => {
            matches!(compatible.as_deref(), Some("8" | "9"))
        }
        _ => false,
    }
}

async fn bulk(
    shared: Arc<Shared>,
    path_index: Option<String>,
    query: Option<String>,
    req: Request<Incoming>,
    media: &'static str,
) -> Response<Body> {
    let response = bulk_response(&shared, path_index, query, req, media).await;
    shared.count_request(response.status().as_u16());
    response
}

async fn bulk_response(
    shared: &Arc<Shared>,
    path_index: Option<String>,
    query: Option<String>,
    req: Request<Incoming>,
    media: &'static str,
) -> Response<Body> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    if !bulk_content_type_ok(content_type.as_deref()) {
        let body = json!({
            "error": format!("Content-Type header [{}] is not supported", content_type.unwrap_or_default()),
            "status": 406,
        });
        return respond(shared, 406, media, Some(&body));
    }
    let max = shared.options.max_content_length;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let encoding = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("") | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return error(
                shared,
                media,
                &EsError::new(
                    400,
                    "illegal_argument_exception",
                    format!("unsupported Content-Encoding [{other}]"),
                ),
            )
        }
    };
    if !gzip && declared.is_some_and(|n| n > max) {
        return respond(shared, 413, media, None);
    }
    let raw = match Limited::new(req.into_body(), max + 1).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return respond(shared, 413, media, None),
    };
    let body = if gzip {
        let mut out = Vec::new();
        let read = flate2::read::GzDecoder::new(&raw[..])
            .take(max as u64 + 1)
            .read_to_end(&mut out);
        if let Err(e) = read {
            return error(
                shared,
                media,
                &EsError::new(
                    400,
                    "parse_exception",
                    format!("gzip body does not decompress: {e}"),
                ),
            );
        }
        Bytes::from(out)
    } else {
        raw
    };
    if body.len() > max {
        return respond(shared, 413, media, None);
    }
    shared
        .bulk_bytes
        .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let whole = {
        let mut script = shared.script.lock().unwrap_or_else(|p| p.into_inner());
        (!script.requests.is_empty()).then(|| script.requests.remove(0))
    };
    match whole {
        Some(413) => return respond(shared, 413, media, None),
        Some(429) => {
            let e = EsError::new(
                429,
                "circuit_breaking_exception",
                "[parent] Data too large, data for [<http_request>] would be [1073741824/1gb], which is larger than the limit of [1020054732/972.7mb]",
            );
            return error(shared, media, &e);
        }
        Some(503) => {
            let e = EsError::new(
                503,
                "cluster_block_exception",
                "blocked by: [SERVICE_UNAVAILABLE/2/no master];",
            );
            return error(shared, media, &e);
        }
        _ => {}
    }
    let filter = query_param(query.as_deref(), "filter_path");
    let shared2 = Arc::clone(shared);
    let outcome = tokio::task::spawn_blocking(move || {
        crate::bulk::run(&shared2, path_index.as_deref(), &body)
            .map(|r| r.render(filter.as_deref()))
    })
    .await;
    match outcome {
        Ok(Ok(text)) => respond_text(shared, 200, media, text),
        Ok(Err(e)) => error(shared, media, &e),
        Err(e) => error(
            shared,
            media,
            &EsError::new(500, "exception", e.to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "application/x-ndjson",
            "application/json; charset=UTF-8",
            "application/vnd.elasticsearch+x-ndjson; compatible-with=9",
            "application/vnd.elasticsearch+x-ndjson;compatible-with=8",
        ] {
            assert!(bulk_content_type_ok(Some(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/vnd.elasticsearch+x-ndjson; compatible-with=7",
            "application/vnd.elasticsearch+x-ndjson",
        ] {
            assert!(!bulk_content_type_ok(Some(bad)), "{bad}");
        }
        assert!(!bulk_content_type_ok(None));
    }

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            query_param(
                Some("a=1&filter_path=items.%2A._id%2Citems.*.status"),
                "filter_path"
            )
            .as_deref(),
            Some("items.*._id,items.*.status")
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
