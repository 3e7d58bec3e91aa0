//! TLS towards the aggregator: the client configuration built from `[agent.tls]` (the CA that
//! signed the aggregator's certificate, and the agent's own certificate for mTLS), and the
//! translation of TLS failures into sentences that say what is wrong: a wrong CA, an expired
//! certificate, a host-name mismatch, a refused client certificate.
//!
//! rustls with the ring provider, TLS 1.2 and 1.3 only. Files are read once, at start.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use crate::config::AgentTlsConfig;

/// Why the TLS files do not make a client configuration.
#[derive(Debug, thiserror::Error)]
#[error("tls.{field} {path}: {reason}")]
pub struct TlsError {
    pub field: &'static str,
    pub path: String,
    pub reason: String,
}

fn bad(field: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError {
        field,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The client configuration for `https://` aggregator URLs.
pub(crate) fn client_config(config: &AgentTlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &config.ca_file {
        for cert in read_certs("ca_file", ca)? {
            roots
                .add(cert)
                .map_err(|e| bad("ca_file", ca, format!("not a usable CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError {
            field: "ca_file",
            path: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    // No ALPN here: the connector sets `http/1.1` itself (and refuses a preset list).
    let client = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("cert_file", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| bad("key_file", key, format!("no usable private key: {e}")))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                bad(
                    "key_file",
                    key,
                    format!("does not go with {} ({e})", cert.display()),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(client))
}

fn read_certs(field: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(field, path, format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(field, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad(field, path, "holds no certificate"));
    }
    Ok(certs)
}

/// The TLS failure somewhere in `e`'s chain of causes, said plainly; `None` when the failure
/// was not TLS.
pub(crate) fn explain(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    find_tls(e).map(sentence)
}

/// rustls' error in `e`'s chain: an I/O error's source skips the error it wraps, so wrapped
/// errors are opened one by one (the connector wraps rustls' error in two I/O errors).
fn find_tls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(tls) = find_tls(inner) {
            return Some(tls);
        }
    }
    e.source().and_then(find_tls)
}

fn sentence(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "wrong CA: the aggregator's certificate is not signed by a CA in tls.ca_file".into(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("expired certificate: the aggregator's certificate has expired ({e})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("the aggregator's certificate is not valid yet ({e})")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("host-name mismatch: the aggregator's certificate is not valid for the host in the aggregator URL ({e})")
            }
            _ => format!("the aggregator's certificate was refused: {e}"),
        },
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the aggregator requires a client certificate: set tls.cert_file and tls.key_file".into()
        }
        E::AlertReceived(AlertDescription::CertificateExpired) => {
            "the aggregator refused this agent's client certificate: it has expired".into()
        }
        E::AlertReceived(
            a @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied),
        ) => format!(
            "the aggregator refused this agent's client certificate ({a:?}): is it signed by the aggregator's tls.client_ca_file?"
        ),
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the connector hands it on: rustls' error inside an I/O error inside the client's.
    fn wrapped(e: rustls::Error) -> Box<dyn std::error::Error + Send + Sync> {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        Box::new(Outer(std::io::Error::other(io)))
    }

    #[test]
    fn tls_failures_are_said_plainly() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "wrong CA",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                "expired certificate",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                "host-name mismatch",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                "requires a client certificate",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                "refused this agent's client certificate",
            ),
        ];
        for (error, says) in cases {
            let text = explain(wrapped(error).as_ref()).unwrap();
            assert!(text.contains(says), "{text}");
        }
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(explain(&plain), None);
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "").unwrap();
        for path in [dir.path().join("missing.pem"), empty] {
            let err = client_config(&AgentTlsConfig {
                ca_file: Some(path.clone()),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.starts_with("tls.ca_file"), "{err}");
            assert!(err.contains(&*path.to_string_lossy()), "{err}");
        }
    }
}
