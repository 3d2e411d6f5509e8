//! TLS on the listener (`[server.tls]`): rustls with the `ring` provider.
//!
//! With `[server.tls]` set, every accepted TCP connection does a TLS handshake
//! (bounded by `limits.handshake_timeout`) before hyper sees a byte, so
//! WebSocket (wss), SSE, long-poll, the HTTP API, metrics and health are all
//! served over TLS only. ALPN offers `http/1.1`.
//!
//! The certificate and key are PEM files read at start (a bad file is a
//! startup error naming it) and again on SIGHUP ([`Tls::reload`]): the new
//! pair is used by the handshakes that start after it, connections already
//! open keep theirs, and a pair that does not load leaves the old one serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use switchyard_core::config::TlsConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// Installs `ring` as the process-wide rustls provider (the Redis client's
/// `rediss://` connections use it too). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Why a certificate/key pair did not load; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("server.tls: cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not a separate cause).
        error: std::io::Error,
    },
    /// A file is not the PEM expected.
    #[error("server.tls: {path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key does not fit the certificate, or rustls refused them.
    #[error("server.tls: {cert} with {key}: {message}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
}

/// Reads a PEM certificate chain and private key into a rustls pair.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| TlsError::Read {
            path: path.to_owned(),
            error,
        })
    };
    let pem = |path: &Path, message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem(cert, "no CERTIFICATE block".into()));
    }
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        pem(
            key,
            format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// The current pair; every handshake reads it once.
#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The listener's TLS side: the acceptor and the swappable certificate.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Resolver>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads `[server.tls]`; an error names the file at fault.
    pub fn load(cfg: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let pair = load_pair(&cfg.cert, &cfg.key)?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(pair)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair {
                cert: cfg.cert.clone(),
                key: cfg.key.clone(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }))
    }

    /// Re-reads the files; on success new handshakes use the new pair, on
    /// failure the old one stays. Open connections are untouched either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.cert, &self.key)?;
        self.resolver.0.store(Arc::new(pair));
        Ok(())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The TLS handshake on an accepted stream, bounded by `timeout`.
    pub async fn accept<IO>(&self, io: IO, timeout: Duration) -> Result<TlsStream<IO>, AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(timeout, self.acceptor.accept(io)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(AcceptError::Handshake(e)),
            Err(_) => Err(AcceptError::Timeout),
        }
    }
}

/// A TLS handshake that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The peer sent something that is not an acceptable TLS handshake.
    #[error("tls handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The handshake did not finish within `limits.handshake_timeout`.
    #[error("tls handshake timed out")]
    Timeout,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchyard-tls-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[test]
    fn bad_files_are_named() {
        install_crypto_provider();
        let dir = scratch("bad");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let err = load_pair(&cert, &key).expect_err("missing");
        assert!(err.to_string().contains("cert.pem"), "{err}");
        std::fs::write(&cert, "not pem").expect("write");
        let err = load_pair(&cert, &key).expect_err("garbage");
        assert!(
            err.to_string().contains("cert.pem") && err.to_string().contains("CERTIFICATE"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
