//! The control API (its own port, up during outages): `GET /stats`, `GET /docs` (NDJSON of every
//! created document), `GET|POST /behaviour` (a partial JSON object merged into the current
//! [`crate::Behaviour`]) and `POST /script` (a [`crate::Script`] appended to the pending one).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::server::{spawn_connection, Body};
use crate::{Behaviour, Script, Shared, Stats};

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|&s| s) => break,
            accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                let shared = Arc::clone(&shared);
                spawn_connection(&mut conns, stream, move |req| route(Arc::clone(&shared), req));
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

/// Counters and names.
pub(crate) fn stats(shared: &Shared) -> Stats {
    let mut stats = shared.store().stats();
    for (status, n) in ["200", "400", "406", "413", "429", "503", "other"]
        .iter()
        .zip(&shared.requests)
    {
        let n = n.load(Ordering::Relaxed);
        if n > 0 {
            stats.bulk_requests.insert(status.to_string(), n);
        }
    }
    stats.bulk_bytes = shared.bulk_bytes.load(Ordering::Relaxed);
    stats
}

fn reply(status: StatusCode, body: Bytes, media: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(media));
    r
}

fn json_reply(status: StatusCode, value: &Value) -> Response<Body> {
    reply(status, Bytes::from(value.to_string()), "application/json")
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return json_reply(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    };
    match (method, path.as_str()) {
        (Method::GET, "/stats") => json_reply(StatusCode::OK, &json!(stats(&shared))),
        (Method::GET, "/docs") => {
            let mut out = Vec::new();
            for doc in shared.store().docs() {
                serde_json::to_writer(&mut out, &doc).expect("a record serialises");
                out.push(b'\n');
            }
            reply(StatusCode::OK, Bytes::from(out), "application/x-ndjson")
        }
        (Method::GET, "/behaviour") => {
            json_reply(StatusCode::OK, &json!(*shared.behaviour.borrow()))
        }
        (Method::POST, "/behaviour") => {
            let mut current = json!(*shared.behaviour.borrow());
            let patch: Value = match serde_json::from_slice(&body) {
                Ok(Value::Object(p)) => Value::Object(p),
                Ok(_) => {
                    return json_reply(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "expected a JSON object"}),
                    )
                }
                Err(e) => {
                    return json_reply(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}))
                }
            };
            for (k, v) in patch.as_object().expect("checked") {
                current[k] = v.clone();
            }
            match serde_json::from_value::<Behaviour>(current) {
                Ok(b) => {
                    shared.behaviour.send_replace(b.clone());
                    json_reply(StatusCode::OK, &json!(b))
                }
                Err(e) => json_reply(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
            }
        }
        (Method::POST, "/script") => match serde_json::from_slice::<Script>(&body) {
            Ok(script) => {
                let mut s = shared.script.lock().unwrap_or_else(|p| p.into_inner());
                s.items.extend(script.items);
                s.requests.extend(script.requests);
                json_reply(
                    StatusCode::OK,
                    &json!({"pending_items": s.items.len(), "pending_requests": s.requests.len()}),
                )
            }
            Err(e) => json_reply(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
        },
        (_, other) => json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no control endpoint {other}")}),
        ),
    }
}
