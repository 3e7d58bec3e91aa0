//! Trust on the wire, with real `ferry` processes on 127.0.0.1: TLS and mTLS between agent and
//! aggregator (certificates made at test time with rcgen: a CA, server certificates good,
//! expired and for the wrong host, client certificates allowed, not allowed and from another
//! CA), bearer tokens (wrong, missing, rotated), certificates re-read on SIGHUP, and a scan of
//! everything the processes print and serve for the secrets they were given.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ferry_wire::{BatchBuilder, Compression, LogRecord};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::util::{free_port, http, metric, wait_for, Proc, World, FERRY};

/// A certificate and its key, written as `<name>.pem` and `<name>.key`.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

/// The test PKI: two CAs and the certificates the tests need, under one directory.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    /// For 127.0.0.1 and localhost, signed by `ca`.
    server: Pair,
    /// Another good server certificate (CN `aggregator-b`), for the reload test.
    server_b: Pair,
    /// Valid until 2021 only.
    expired: Pair,
    /// For `elsewhere.example` only.
    wrong_host: Pair,
    /// CN `agent-1`, signed by `ca`: on the allowlist.
    agent: Pair,
    /// CN `intruder`, signed by `ca`: not on the allowlist.
    intruder: Pair,
    /// CN `agent-1`, signed by `other_ca`.
    foreign: Pair,
}

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (Issuer::new(params, key), pem)
}

fn leaf(
    dir: &Path,
    name: &str,
    cn: &str,
    sans: &[&str],
    client: bool,
    issuer: &Issuer<'_, KeyPair>,
    expired: bool,
) -> Pair {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let pair = Pair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
        der: cert.der().to_vec(),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    pair
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let (issuer, ca_pem) = ca("ferry test CA");
        let (other, other_pem) = ca("another CA");
        let ca = dir.join("ca.pem");
        let other_ca = dir.join("other-ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&other_ca, other_pem).unwrap();
        let local = ["127.0.0.1", "localhost"];
        Pki {
            server: leaf(dir, "server", "aggregator-a", &local, false, &issuer, false),
            server_b: leaf(
                dir,
                "server-b",
                "aggregator-b",
                &local,
                false,
                &issuer,
                false,
            ),
            expired: leaf(dir, "expired", "aggregator", &local, false, &issuer, true),
            wrong_host: leaf(
                dir,
                "wrong-host",
                "aggregator",
                &["elsewhere.example"],
                false,
                &issuer,
                false,
            ),
            agent: leaf(dir, "agent-1", "agent-1", &[], true, &issuer, false),
            intruder: leaf(dir, "intruder", "intruder", &[], true, &issuer, false),
            foreign: leaf(dir, "foreign", "agent-1", &[], true, &other, false),
            ca,
            other_ca,
        }
    }
}

/// The `[aggregator]` table: loopback listener, local store, then `extra` (plain keys first,
/// sub-tables after).
fn aggregator_table(world: &World, extra: &str) -> String {
    format!(
        "[aggregator]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n{extra}\n",
        world.agg_port,
        world.agg_data().display()
    )
}

/// The `[agent]` table, as the other end-to-end tests set it up, sending to `url`.
fn agent_table(world: &World, name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"[agent]
host_name = "test-node"
data_dir = "{data}"
aggregator_url = "{url}"
include = {include:?}
metrics_listen = "127.0.0.1:0"
poll_interval_ms = 50
glob_interval_ms = 200
batch_max_age_ms = 200
backoff_initial_ms = 50
backoff_max_ms = 500
docker_enabled = false
stats_enabled = false
{extra}
"#,
        data = world.path(name).display(),
        include = world.include,
    )
}

fn write_config(world: &World, name: &str, text: &str) -> PathBuf {
    let path = world.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `ferry <command> --config <config>` with `env` added, output to `<log>`.
fn spawn(world: &World, command: &str, config: &Path, log: &str, env: &[(&str, &str)]) -> Proc {
    let log = world.path(log);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut cmd = Command::new(FERRY);
    cmd.args([command, "--config", config.to_str().unwrap()])
        .env("FERRY_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().expect("ferry binary starts"),
        log,
    }
}

/// Starts an aggregator and waits until it listens (its log says so: a TLS listener cannot be
/// probed without the right certificates).
fn start_aggregator(world: &World, config: &Path, env: &[(&str, &str)]) -> Proc {
    let mut p = spawn(world, "aggregator", config, "aggregator.log", env);
    wait_for("the aggregator to listen", Duration::from_secs(30), || {
        assert!(p.alive(), "aggregator exited: {}", p.log_text());
        p.log_text().contains("Aggregator listening").then_some(())
    });
    p
}

/// [`wait_for`], and on a time-out the tails of the processes' logs in the panic message.
fn wait_logged<T>(what: &str, logs: &[&Proc], mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            let tails: Vec<String> = logs
                .iter()
                .map(|p| {
                    let text = p.log_text();
                    let lines: Vec<&str> = text.lines().collect();
                    format!(
                        "--- {}:\n{}",
                        p.log.display(),
                        lines[lines.len().saturating_sub(30)..].join("\n")
                    )
                })
                .collect();
            panic!("timed out waiting for {what}\n{}", tails.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write_lines(world: &World, file: &str, n: usize) {
    let dir = world.path("logs/plain");
    std::fs::create_dir_all(&dir).unwrap();
    let text: String = (0..n).map(|i| format!("line {i} of {file}\n")).collect();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A TLS client trusting `ca`, with an optional client certificate.
fn client_config(ca: &Path, client: Option<&Pair>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some(pair) => {
            use rustls::pki_types::pem::PemObject;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&pair.key).unwrap();
            builder
                .with_client_auth_cert(
                    vec![rustls::pki_types::CertificateDer::from(pair.der.clone())],
                    key,
                )
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    })
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

/// What one request over TLS gave: the status, the body and the server's certificate.
struct TlsReply {
    status: u16,
    body: String,
    server_cert: Vec<u8>,
}

/// One HTTP/1.1 request over TLS to 127.0.0.1; `Err` with rustls' words when TLS fails.
fn tls_request(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<TlsReply, String> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    let sock =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    tls.write_all(body).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let read = tls.read_to_end(&mut raw);
    if raw.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let server_cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    Ok(TlsReply {
        status,
        body: body.to_string(),
        server_cert,
    })
}

fn tls_config_table(pki: &Pki, server: &Pair, mtls: bool, extra: &str) -> String {
    let mut table = format!(
        "[aggregator.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        server.cert.display(),
        server.key.display()
    );
    if mtls {
        table.push_str(&format!(
            "client_ca_file = \"{}\"\nclient_allowlist = [\"agent-1\"]\n",
            pki.ca.display()
        ));
    }
    table.push_str(extra);
    table
}

fn agent_tls(ca: &Path, client: Option<&Pair>) -> String {
    let mut table = format!("[agent.tls]\nca_file = \"{}\"\n", ca.display());
    if let Some(pair) = client {
        table.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            pair.cert.display(),
            pair.key.display()
        ));
    }
    table
}

#[test]
fn agent_delivers_over_mtls_and_its_identity_shows_in_metrics() {
    let world = World::new();
    let pki = Pki::new(&world.path("pki"));
    let url = format!("https://127.0.0.1:{}", world.agg_port);
    let text = format!(
        "{}{}{}{}",
        aggregator_table(&world, "token = \"tls-test-token\""),
        tls_config_table(&pki, &pki.server, true, ""),
        agent_table(&world, "agent", &url, "token = \"tls-test-token\""),
        agent_tls(&pki.ca, Some(&pki.agent)),
    );
    let config = write_config(&world, "ferry.toml", &text);
    let agg = start_aggregator(&world, &config, &[]);
    write_lines(&world, "app.log", 50);
    let agent = spawn(&world, "agent", &config, "agent.log", &[]);
    wait_logged("50 records stored", &[&agg, &agent], || {
        (world.stored().len() == 50).then_some(())
    });
    let client = client_config(&pki.ca, Some(&pki.agent));
    let page = tls_request(world.agg_addr(), &client, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(page.status, 200);
    assert_eq!(page.server_cert, pki.server.der);
    assert!(
        metric(
            &page.body,
            "ferry_ingest_client_batches_total{identity=\"agent-1\"}"
        ) >= 1.0,
        "{}",
        page.body
    );
    // Plain HTTP on the TLS port gets nowhere.
    assert!(http(world.agg_addr(), "GET", "/health", &[], b"").is_err());
}

#[test]
fn agent_names_a_wrong_ca_an_expired_certificate_and_a_host_name_mismatch() {
    let world = World::new();
    let pki = Pki::new(&world.path("pki"));
    let cases = [
        (&pki.server, &pki.other_ca, "wrong CA"),
        (&pki.expired, &pki.ca, "expired certificate"),
        (&pki.wrong_host, &pki.ca, "host-name mismatch"),
    ];
    write_lines(&world, "app.log", 5);
    for (i, (server, ca, says)) in cases.into_iter().enumerate() {
        let url = format!("https://127.0.0.1:{}", world.agg_port);
        let text = format!(
            "{}{}{}{}",
            aggregator_table(&world, ""),
            tls_config_table(&pki, server, false, ""),
            agent_table(&world, &format!("agent-{i}"), &url, ""),
            agent_tls(ca, None),
        );
        let config = write_config(&world, &format!("ferry-{i}.toml"), &text);
        let mut agg = start_aggregator(&world, &config, &[]);
        let log = format!("agent-{i}.log");
        let mut agent = spawn(&world, "agent", &config, &log, &[]);
        let text = wait_logged(says, &[&agent], || {
            let text = agent.log_text();
            text.contains(says).then_some(text)
        });
        assert!(text.contains("TLS with the aggregator failed"), "{text}");
        assert!(
            world.stored().is_empty(),
            "nothing passes a failed handshake"
        );
        agent.kill();
        agg.terminate();
    }
}

#[test]
fn client_certificates_are_checked_against_the_ca_and_the_allowlist() {
    let world = World::new();
    let pki = Pki::new(&world.path("pki"));
    let text = format!(
        "{}{}",
        aggregator_table(&world, ""),
        tls_config_table(&pki, &pki.server, true, ""),
    );
    let config = write_config(&world, "aggregator.toml", &text);
    let agg = start_aggregator(&world, &config, &[]);
    let addr = world.agg_addr();
    let get = |client: Option<&Pair>| {
        tls_request(
            addr,
            &client_config(&pki.ca, client),
            "GET",
            "/health",
            &[],
            b"",
        )
    };
    assert_eq!(get(Some(&pki.agent)).unwrap().status, 200);
    let refused = get(Some(&pki.intruder)).unwrap();
    assert_eq!(refused.status, 403);
    assert!(
        refused.body.contains("\\\"intruder\\\" is not allowed"),
        "{}",
        refused.body
    );
    let err = get(None).err().expect("no client certificate: refused");
    assert!(err.contains("CertificateRequired"), "{err}");
    let err = get(Some(&pki.foreign))
        .err()
        .expect("another CA's client: refused");
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );

    // The agent says what is wrong: no client certificate, or one from another CA.
    write_lines(&world, "app.log", 5);
    let url = format!("https://127.0.0.1:{}", world.agg_port);
    for (name, client, says) in [
        ("agent-none", None, "requires a client certificate"),
        (
            "agent-foreign",
            Some(&pki.foreign),
            "refused this agent's client certificate",
        ),
        (
            "agent-intruder",
            Some(&pki.intruder),
            "is not allowed (not in tls.client_allowlist)",
        ),
    ] {
        let text = format!(
            "{}{}",
            agent_table(&world, name, &url, ""),
            agent_tls(&pki.ca, client)
        );
        let config = write_config(&world, &format!("{name}.toml"), &text);
        let mut agent = spawn(&world, "agent", &config, &format!("{name}.log"), &[]);
        wait_for(says, Duration::from_secs(30), || {
            agent.log_text().contains(says).then_some(())
        });
        agent.kill();
    }
    assert!(world.stored().is_empty());
    let page = get(Some(&pki.agent)).map(|_| ()).and_then(|()| {
        tls_request(
            addr,
            &client_config(&pki.ca, Some(&pki.agent)),
            "GET",
            "/metrics",
            &[],
            b"",
        )
    });
    let page = page.unwrap().body;
    assert!(
        metric(&page, "ferry_tls_handshake_errors_total") >= 4.0,
        "{page}"
    );
    assert!(
        metric(&page, "ferry_tls_clients_refused_total") >= 2.0,
        "{page}"
    );
    drop(agg);
}

fn batch() -> Vec<u8> {
    let mut builder = BatchBuilder::new("node-1");
    let mut r = LogRecord {
        message: "hello".into(),
        timestamp: "2024-05-01T12:00:00.000Z".into(),
        ..Default::default()
    };
    r.log.file.path = "/var/log/x.log".into();
    r.log.file.fingerprint = "fp-1".into();
    r.log.offset = 1;
    builder.push_log(&r);
    builder.finish(Compression::None).body
}

fn post(addr: SocketAddr, token: Option<&str>) -> u16 {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/x-ndjson")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    http(addr, "POST", "/v1/batches", &headers, &batch())
        .unwrap()
        .status
}

fn hangup(p: &Proc) {
    let status = Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn tokens_rotate_without_downtime_and_the_old_one_is_refused_after_reload() {
    let world = World::new();
    let tokens = world.path("tokens");
    std::fs::write(&tokens, "old-token-1\n").unwrap();
    let text = aggregator_table(&world, &format!("token_file = \"{}\"", tokens.display()));
    let config = write_config(&world, "ferry.toml", &text);
    let agg = start_aggregator(&world, &config, &[]);
    let addr = world.agg_addr();
    assert_eq!(post(addr, None), 401, "no token");
    assert_eq!(post(addr, Some("wrong-token")), 401, "wrong token");
    assert_eq!(post(addr, Some("old-token-1")), 200);

    // Rotation: the new token joins, both work.
    std::fs::write(&tokens, "# new first\nnew-token-2\nold-token-1\n").unwrap();
    hangup(&agg);
    wait_for("the new token accepted", Duration::from_secs(20), || {
        (post(addr, Some("new-token-2")) == 200).then_some(())
    });
    assert_eq!(
        post(addr, Some("old-token-1")),
        200,
        "old token still valid"
    );

    // The old one leaves: refused after the reload, the new one still works.
    std::fs::write(&tokens, "new-token-2\n").unwrap();
    hangup(&agg);
    wait_for("the old token refused", Duration::from_secs(20), || {
        (post(addr, Some("old-token-1")) == 401).then_some(())
    });
    assert_eq!(post(addr, Some("new-token-2")), 200);

    // A token file that empties keeps the tokens in use (no silent switch to no authentication).
    std::fs::write(&tokens, "\n").unwrap();
    hangup(&agg);
    wait_for("the refused reload logged", Duration::from_secs(20), || {
        agg.log_text()
            .contains("keeping the tokens in use")
            .then_some(())
    });
    assert_eq!(post(addr, None), 401);
    assert_eq!(post(addr, Some("new-token-2")), 200);
}

#[test]
fn certificates_are_reread_on_sighup_and_a_bad_pair_keeps_the_old_ones() {
    let world = World::new();
    let pki = Pki::new(&world.path("pki"));
    // The files the aggregator reads, replaced in place by the test.
    let live = Pair {
        cert: world.path("live.pem"),
        key: world.path("live.key"),
        der: Vec::new(),
    };
    std::fs::copy(&pki.server.cert, &live.cert).unwrap();
    std::fs::copy(&pki.server.key, &live.key).unwrap();
    let text = format!(
        "{}{}",
        aggregator_table(&world, ""),
        tls_config_table(&pki, &live, false, "reload_interval_ms = 0\n"),
    );
    let config = write_config(&world, "ferry.toml", &text);
    let agg = start_aggregator(&world, &config, &[]);
    let client = client_config(&pki.ca, None);
    let served = || {
        tls_request(world.agg_addr(), &client, "GET", "/health", &[], b"")
            .unwrap()
            .server_cert
    };
    assert_eq!(served(), pki.server.der);

    // A certificate whose key does not go with it: refused, the old pair stays.
    std::fs::copy(&pki.server_b.cert, &live.cert).unwrap();
    hangup(&agg);
    let text = wait_for("the failed reload logged", Duration::from_secs(20), || {
        let text = agg.log_text();
        text.contains("keeping the certificates in use")
            .then_some(text)
    });
    assert!(text.contains("does not go with"), "{text}");
    assert_eq!(served(), pki.server.der);

    // The matching key arrives: the next SIGHUP swaps the new pair in, without a restart.
    std::fs::copy(&pki.server_b.key, &live.key).unwrap();
    hangup(&agg);
    wait_for(
        "the new certificate served",
        Duration::from_secs(20),
        || (served() == pki.server_b.der).then_some(()),
    );
}

#[test]
fn certificates_are_reread_when_their_files_change() {
    let world = World::new();
    let pki = Pki::new(&world.path("pki"));
    let live = Pair {
        cert: world.path("live.pem"),
        key: world.path("live.key"),
        der: Vec::new(),
    };
    std::fs::copy(&pki.server.cert, &live.cert).unwrap();
    std::fs::copy(&pki.server.key, &live.key).unwrap();
    let text = format!(
        "{}{}",
        aggregator_table(&world, ""),
        tls_config_table(&pki, &live, false, "reload_interval_ms = 200\n"),
    );
    let config = write_config(&world, "ferry.toml", &text);
    let _agg = start_aggregator(&world, &config, &[]);
    let client = client_config(&pki.ca, None);
    let served = || {
        tls_request(world.agg_addr(), &client, "GET", "/health", &[], b"")
            .unwrap()
            .server_cert
    };
    assert_eq!(served(), pki.server.der);
    // Written as a Kubernetes secret update would land: new files renamed over the old ones.
    std::fs::copy(&pki.server_b.key, world.path("new.key")).unwrap();
    std::fs::copy(&pki.server_b.cert, world.path("new.pem")).unwrap();
    std::fs::rename(world.path("new.key"), &live.key).unwrap();
    std::fs::rename(world.path("new.pem"), &live.cert).unwrap();
    wait_for(
        "the new certificate served",
        Duration::from_secs(20),
        || (served() == pki.server_b.der).then_some(()),
    );
}

/// Every secret given to the processes, and none of them anywhere in what they print, serve on
/// `/metrics`, or what `ferry check` says, through normal operation and through errors (a wrong
/// token, an unreachable webhook, an invalid configuration).
#[test]
fn no_secret_appears_in_logs_metrics_or_check_output() {
    const TOKEN: &str = "tok-SCAN-7f3a9c2e";
    const WRONG_TOKEN: &str = "tok-WRONG-c41d88b0";
    const ES_PASSWORD: &str = "espw-SCAN-91bd44";
    const HOOK_PATH: &str = "/hooks/HOOK-SCAN-5e2b13";
    let world = World::new();
    let es = crate::util::EsDouble::start(ferry_es_double::Options::default());
    let secrets = world.path("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(secrets.join("wrong-token"), format!("{WRONG_TOKEN}\n")).unwrap();
    std::fs::write(secrets.join("es-password"), format!("{ES_PASSWORD}\n")).unwrap();
    // A webhook nobody answers: every notification fails and is retried (and logged).
    let hook_url = format!("http://127.0.0.1:{}{HOOK_PATH}", free_port());
    std::fs::write(secrets.join("hook-url"), format!("{hook_url}\n")).unwrap();
    let rules = world.path("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("t.yml"),
        "groups:\n  - name: t\n    rules:\n      - alert: AlwaysOn\n        expr: ferry_sink_up == 1\n",
    )
    .unwrap();
    let agent_metrics = free_port();
    let text = format!(
        r#"{aggregator}sinks = [{{ type = "local" }}, {{ type = "elasticsearch", urls = ["http://{es}"], username = "ferry", password_file = "{pw}" }}]

[aggregator.alerts]
rule_paths = ["{rules}"]
evaluation_interval_seconds = 1

[[aggregator.alerts.receivers]]
name = "oncall"
type = "slack"
url_file = "{hook}"

[[aggregator.alerts.routes]]
receiver = "oncall"
group_wait_seconds = 1

{agent}"#,
        aggregator = aggregator_table(
            &world,
            &format!("token_file = \"{}\"", secrets.join("token").display())
        ),
        es = es.handle.addr(),
        pw = secrets.join("es-password").display(),
        rules = rules.display(),
        hook = secrets.join("hook-url").display(),
        agent = agent_table(
            &world,
            "agent",
            &format!("http://127.0.0.1:{}", world.agg_port),
            "token_env = \"FERRY_SCAN_TOKEN\""
        )
        .replace(
            "metrics_listen = \"127.0.0.1:0\"",
            &format!("metrics_listen = \"127.0.0.1:{agent_metrics}\"")
        ),
    );
    let config = write_config(&world, "ferry.toml", &text);
    let agg = start_aggregator(&world, &config, &[]);
    write_lines(&world, "app.log", 20);
    let agent = spawn(
        &world,
        "agent",
        &config,
        "agent.log",
        &[("FERRY_SCAN_TOKEN", TOKEN)],
    );
    wait_for("20 records stored", Duration::from_secs(60), || {
        (world.stored().len() == 20).then_some(())
    });
    // An agent with the wrong token: refused, and says so.
    let wrong = agent_table(
        &world,
        "agent-wrong",
        &format!("http://127.0.0.1:{}", world.agg_port),
        &format!("token_file = \"{}\"", secrets.join("wrong-token").display()),
    );
    let wrong_config = write_config(&world, "wrong.toml", &wrong);
    let mut wrong_agent = spawn(&world, "agent", &wrong_config, "agent-wrong.log", &[]);
    wait_for("the wrong token refused", Duration::from_secs(30), || {
        wrong_agent
            .log_text()
            .contains("the `token` is wrong or missing")
            .then_some(())
    });
    wait_for("a failed notification", Duration::from_secs(30), || {
        agg.log_text().contains("Notification failed").then_some(())
    });
    // A request with a secret-looking token straight to the aggregator.
    assert_eq!(post(world.agg_addr(), Some(WRONG_TOKEN)), 401);
    wrong_agent.kill();

    let mut captured = Vec::new();
    captured.push((
        "aggregator /metrics",
        http(world.agg_addr(), "GET", "/metrics", &[], b"")
            .unwrap()
            .body,
    ));
    let agent_addr = SocketAddr::from(([127, 0, 0, 1], agent_metrics));
    captured.push((
        "agent /metrics",
        http(agent_addr, "GET", "/metrics", &[], b"").unwrap().body,
    ));
    let check = |config: &Path, env: &[(&str, &str)]| {
        let mut cmd = Command::new(FERRY);
        cmd.args(["check", config.to_str().unwrap()]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ok = check(&config, &[("FERRY_SCAN_TOKEN", TOKEN)]);
    assert!(ok.contains(": ok"), "{ok}");
    captured.push(("ferry check", ok));
    // A configuration with every secret inline and broken around them.
    let broken = write_config(
        &world,
        "broken.toml",
        &format!(
            "[aggregator]\ntoken = \"{TOKEN} \"\ntokens = [\"{WRONG_TOKEN}\\n\"]\nsink = {{ type = \"elasticsearch\", username = \"ferry\", password = \"{ES_PASSWORD}\", password_file = \"/nonexistent\" }}\n\n[agent]\ntoken = \"{TOKEN} x\"\ntoken_env = \"FERRY_SCAN_TOKEN\"\naggregator_url = \"https://127.0.0.1:1\"\n"
        ),
    );
    let bad = check(&broken, &[("FERRY_SCAN_TOKEN", TOKEN)]);
    assert!(bad.contains("token"), "{bad}");
    captured.push(("ferry check (broken)", bad));
    drop(agent);
    drop(agg);
    for log in ["aggregator.log", "agent.log", "agent-wrong.log"] {
        captured.push((log, std::fs::read_to_string(world.path(log)).unwrap()));
    }
    let hook_secret = &HOOK_PATH[7..];
    for (what, text) in &captured {
        assert!(!text.is_empty(), "{what} captured nothing");
        for secret in [TOKEN, WRONG_TOKEN, ES_PASSWORD, hook_secret] {
            assert!(
                !text.contains(secret),
                "{what} shows the secret {secret}:\n{text}"
            );
        }
    }
}

#[test]
fn agent_fails_over_to_the_next_aggregator_url() {
    let world = World::new();
    // Nothing listens on the first URL.
    let dead = free_port();
    let urls = format!(
        "aggregator_urls = [\"http://127.0.0.1:{dead}\", \"http://127.0.0.1:{}\"]",
        world.agg_port
    );
    let text = format!(
        "{}{}",
        aggregator_table(&world, ""),
        agent_table(&world, "agent", "http://127.0.0.1:7480", &urls),
    );
    let config = write_config(&world, "ferry.toml", &text);
    let agg = start_aggregator(&world, &config, &[]);
    write_lines(&world, "app.log", 30);
    let agent = spawn(&world, "agent", &config, "agent.log", &[]);
    wait_logged("30 records stored", &[&agg, &agent], || {
        (world.stored().len() == 30).then_some(())
    });
    let log = agent.log_text();
    assert!(log.contains("Switching to the next aggregator"), "{log}");
}
