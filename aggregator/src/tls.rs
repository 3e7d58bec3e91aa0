//! TLS on the ingest listener: the server certificate and key, optional client certificates
//! (mTLS) checked against a CA and an allowlist of agent identities, and the re-reading of those
//! files on change or SIGHUP without a restart.
//!
//! rustls with the ring provider; TLS 1.2 and 1.3 only. A reload builds a whole new server
//! configuration from the files and swaps it in for new connections; when the new files do not
//! make a working configuration (unreadable, no certificate, a key that does not match), the one
//! in use stays and the reason is logged. Connections already open keep the configuration they
//! were accepted with. This module reads files and certificates; it never touches requests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

/// Most distinct client identities `ferry_ingest_client_batches_total` keeps as their own label
/// value; further ones are counted as `other` (label cardinality stays bounded even when no
/// allowlist limits who may connect).
const MAX_IDENTITY_LABELS: usize = 100;
/// Longest identity kept as a label value.
const MAX_IDENTITY_BYTES: usize = 64;

/// `[aggregator.tls]`: TLS on the listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by any intermediate certificates.
    /// Required.
    pub cert_file: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key_file: PathBuf,
    /// PEM file of the certificate authorities that sign agents' client certificates. When set,
    /// every client must present a certificate signed by one of them (mTLS); also `/metrics`
    /// and `/health` clients. Default none: no client certificates asked for.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Agent identities allowed in: a client certificate is accepted when its subject common
    /// name or one of its DNS subject alternative names equals an entry. Others get 403 on every
    /// request. Needs `client_ca_file`. Default empty: any certificate the CA signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_allowlist: Vec<String>,
    /// How often the certificate, key and client CA files are checked for a change (modified
    /// time, size), in milliseconds; a change re-reads them, as SIGHUP does. 0: only SIGHUP.
    /// Default 10000.
    #[serde(default = "default_reload_interval_ms")]
    pub reload_interval_ms: u64,
}

const fn default_reload_interval_ms() -> u64 {
    10_000
}

impl TlsConfig {
    /// What is wrong with the values (not the files: [`Tls::open`] reads those), as
    /// `(field, value, reason)`.
    pub(crate) fn problems(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (field, path) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if path.as_os_str().is_empty() {
                out.push((field.into(), "\"\"".into(), "must name a PEM file".into()));
            }
        }
        if !self.client_allowlist.is_empty() && self.client_ca_file.is_none() {
            out.push((
                "client_allowlist".into(),
                format!("{:?}", self.client_allowlist),
                "needs client_ca_file (without it no client certificate is asked for)".into(),
            ));
        }
        for (i, entry) in self.client_allowlist.iter().enumerate() {
            if entry.trim().is_empty() {
                out.push((
                    format!("client_allowlist[{i}]"),
                    "\"\"".into(),
                    "an identity must not be empty".into(),
                ));
            }
        }
        out
    }
}

/// Why the TLS files do not make a working configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{field} {path}: {reason}")]
    File {
        field: &'static str,
        path: String,
        reason: String,
    },
    #[error("tls: {0}")]
    Rustls(String),
}

fn file_error(field: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        field,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The TLS side of the listener: the configuration in use, the files it came from, and its
/// counters.
#[derive(Debug)]
pub(crate) struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' (modified time, size) at the last load attempt.
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
    pub(crate) metrics: TlsMetrics,
}

/// TLS counters, rendered on `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct TlsMetrics {
    handshake_errors: AtomicU64,
    clients_refused: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Accepted batch requests per client identity (at most [`MAX_IDENTITY_LABELS`] + `other`).
    client_batches: Mutex<BTreeMap<String, u64>>,
}

/// Who is on the other end of one connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    /// The client certificate's identity (the allowlist entry it matched, else its common name
    /// or first DNS name), as a label value.
    pub(crate) identity: Option<String>,
    /// Why every request on this connection is refused (a certificate outside the allowlist).
    pub(crate) refused: Option<String>,
}

impl Tls {
    /// Reads the files; fails (naming the file and the problem) when they do not make a working
    /// configuration.
    pub(crate) fn open(config: &TlsConfig) -> Result<Tls, TlsError> {
        let stamps = stamps(config);
        let server = build(config)?;
        Ok(Tls {
            config: config.clone(),
            current: RwLock::new(Arc::new(server)),
            stamps: Mutex::new(stamps),
            metrics: TlsMetrics::default(),
        })
    }

    /// An acceptor with the configuration in use now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(Arc::clone(&current))
    }

    /// Reads the files again and swaps the new configuration in; on any problem the one in use
    /// stays, the problem is logged and returned.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps(&self.config);
        match build(&self.config) {
            Ok(server) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(server);
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                info!(cert_file = %self.config.cert_file.display(), "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "TLS certificate reload failed; keeping the certificates in use");
                Err(e)
            }
        }
    }

    /// Whether a file changed since the last load attempt.
    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != stamps(&self.config)
    }

    /// Re-reads the files whenever they change (checked every `reload_interval_ms`), until
    /// shutdown. SIGHUP is the caller's: it calls [`Tls::reload`].
    pub(crate) async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.config.reload_interval_ms == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.reload_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = async move {
            // The guard `wait_for` returns is not Send: drop it before any further await.
            let _ = shutdown.wait_for(|&stop| stop).await.map(drop);
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let this = Arc::clone(&self);
                    let _ = tokio::task::spawn_blocking(move || {
                        if this.changed() {
                            let _ = this.reload();
                        }
                    })
                    .await;
                }
                () = &mut stop => return,
            }
        }
    }

    /// The identity of a connection that completed its handshake, and whether the allowlist
    /// lets it in.
    pub(crate) fn peer(&self, conn: &ServerConnection) -> Peer {
        let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
            return Peer::default();
        };
        let names = cert_names(cert.as_ref()).unwrap_or_default();
        let allow = &self.config.client_allowlist;
        if allow.is_empty() {
            return Peer {
                identity: names.all().next().map(label_value),
                refused: None,
            };
        }
        match allow.iter().find(|a| names.all().any(|n| n == a.as_str())) {
            Some(entry) => Peer {
                identity: Some(label_value(entry)),
                refused: None,
            },
            None => {
                self.metrics.clients_refused.fetch_add(1, Ordering::Relaxed);
                let shown = names.all().next().unwrap_or("(no name)").to_string();
                warn!(identity = %shown, "Client certificate not in tls.client_allowlist; refusing its requests");
                Peer {
                    identity: None,
                    refused: Some(format!(
                        "client certificate {shown:?} is not allowed (not in tls.client_allowlist)"
                    )),
                }
            }
        }
    }
}

impl TlsMetrics {
    pub(crate) fn handshake_failed(&self) {
        self.handshake_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one accepted batch from `identity`.
    pub(crate) fn client_batch(&self, identity: &str) {
        let mut map = self
            .client_batches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = if map.contains_key(identity) || map.len() < MAX_IDENTITY_LABELS {
            identity
        } else {
            "other"
        };
        *map.entry(key.to_string()).or_insert(0) += 1;
    }

    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let families = [
            (
                "ferry_tls_handshake_errors_total",
                "TLS handshakes that failed (wrong CA, no or bad client certificate, not TLS, time-out).",
                vec![(String::new(), load(&self.handshake_errors))],
            ),
            (
                "ferry_tls_clients_refused_total",
                "Connections whose client certificate is not in tls.client_allowlist.",
                vec![(String::new(), load(&self.clients_refused))],
            ),
            (
                "ferry_tls_reloads_total",
                "Re-reads of the TLS certificate files, by result (error: the previous ones stay).",
                vec![
                    ("{result=\"ok\"}".to_string(), load(&self.reloads_ok)),
                    ("{result=\"error\"}".to_string(), load(&self.reloads_failed)),
                ],
            ),
            (
                "ferry_ingest_client_batches_total",
                "Batches accepted, by client certificate identity (mTLS).",
                self.client_batches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(identity, n)| (format!("{{identity=\"{identity}\"}}"), *n))
                    .collect(),
            ),
        ];
        for (name, help, samples) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
    }
}

/// An identity as a label value: characters outside `[A-Za-z0-9._:@*-]` become `_`, at most
/// [`MAX_IDENTITY_BYTES`] long (so it never needs escaping).
fn label_value(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:@*-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_IDENTITY_BYTES)
        .collect()
}

fn stamps(config: &TlsConfig) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&config.cert_file),
        Some(&config.key_file),
        config.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

/// Builds the server configuration from the files.
fn build(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let certs = read_certs("cert_file", &config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file).map_err(|e| {
        file_error(
            "key_file",
            &config.key_file,
            format!("no usable private key: {e}"),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &config.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("client_ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    file_error("client_ca_file", path, format!("not a usable CA: {e}"))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error("client_ca_file", path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        file_error(
            "key_file",
            &config.key_file,
            format!("does not go with {} ({e})", config.cert_file.display()),
        )
    })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(field, path, format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(field, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(field, path, "holds no certificate"));
    }
    Ok(certs)
}

/// A certificate's subject common names and DNS subject alternative names.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Names {
    pub(crate) common: Vec<String>,
    pub(crate) dns: Vec<String>,
}

impl Names {
    /// Common names first, then DNS names.
    fn all(&self) -> impl Iterator<Item = &str> {
        self.common.iter().chain(&self.dns).map(String::as_str)
    }
}

/// One DER element: (tag, contents, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The elements of a constructed value's contents.
fn elements(mut input: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (tag, contents, rest) = tlv(input)?;
        input = rest;
        Some((tag, contents))
    })
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// id-ce-subjectAltName, 2.5.29.17.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// GeneralName's dNSName: [2] IMPLICIT IA5String.
const DNS_NAME: u8 = 0x82;

/// Reads the subject common names and DNS alternative names of a DER certificate (RFC 5280
/// layout); `None` when it is not laid out as a certificate. The certificate was verified by
/// the time this runs: this only reads names.
pub(crate) fn cert_names(der: &[u8]) -> Option<Names> {
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        // [0] EXPLICIT version
        rest = after;
    }
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, subject, after) = tlv(rest)? else {
        return None;
    };
    // subjectPublicKeyInfo, then the optional [1] [2] [3]
    rest = tlv(after)?.2;
    let mut names = Names::default();
    for (tag, rdn) in elements(subject) {
        if tag != SET {
            continue;
        }
        for (tag, pair) in elements(rdn) {
            let mut parts = elements(pair);
            if let (SEQUENCE, Some((OID, OID_COMMON_NAME)), Some((_, value))) =
                (tag, parts.next(), parts.next())
            {
                names
                    .common
                    .push(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    for (tag, contents) in elements(rest) {
        if tag != 0xa3 {
            continue;
        }
        let Some((SEQUENCE, extensions, _)) = tlv(contents) else {
            continue;
        };
        for (_, extension) in elements(extensions) {
            let mut parts = elements(extension);
            if parts.next() != Some((OID, OID_SUBJECT_ALT_NAME)) {
                continue;
            }
            let Some((_, value)) = parts.find(|(t, _)| *t == OCTET_STRING) else {
                continue;
            };
            let Some((SEQUENCE, general_names, _)) = tlv(value) else {
                continue;
            };
            for (tag, name) in elements(general_names) {
                if tag == DNS_NAME {
                    names.dns.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if !cn.is_empty() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_common_name_and_dns_alt_names() {
        let names = cert_names(&cert("agent-7", &["node-7.example", "127.0.0.1"])).unwrap();
        assert_eq!(names.common, ["agent-7"]);
        // The IP address SAN is not a DNS name.
        assert_eq!(names.dns, ["node-7.example"]);
        let names = cert_names(&cert("", &["only-dns"])).unwrap();
        assert_eq!(
            names,
            Names {
                common: vec![],
                dns: vec!["only-dns".into()]
            }
        );
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(cert_names(b""), None);
        assert_eq!(cert_names(&[0x30, 0x82, 0xff]), None);
        let der = cert("x", &["y"]);
        for cut in [1, 10, der.len() / 2] {
            // Cut anywhere: never panics, and names nothing it did not read.
            let _ = cert_names(&der[..cut]);
        }
    }

    #[test]
    fn identity_labels_are_bounded_and_plain() {
        assert_eq!(label_value("agent \"7\"\n"), "agent__7__");
        assert_eq!(label_value(&"a".repeat(200)).len(), MAX_IDENTITY_BYTES);
        let m = TlsMetrics::default();
        for i in 0..MAX_IDENTITY_LABELS + 5 {
            m.client_batch(&format!("agent-{i}"));
        }
        m.client_batch("agent-0");
        let mut text = String::new();
        m.render(&mut text);
        assert!(text.contains("identity=\"agent-0\"} 2\n"), "{text}");
        assert!(text.contains("identity=\"other\"} 5\n"), "{text}");
    }
}
