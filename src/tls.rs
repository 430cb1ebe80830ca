//! TLS for both listeners (rustls, ring): a certificate chain and key from PEM files, optionally
//! a client CA for mutual TLS, reloaded while serving when the files change.
//!
//! Each accepted connection takes the configuration current at that moment, so a rotated
//! certificate is served to the next handshake and connections already open keep theirs. A
//! rotation caught half-written (a new certificate beside the old key, a truncated file) fails
//! to build and is retried at the next look; the previous configuration serves meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::watch;

/// How often the files are looked at for a change.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(2);

/// A PEM file of certificates or a key is a few kilobytes; anything this large is a wrong path.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Makes ring the process's rustls provider, for the clients that take the process default
/// (the object-store client). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The files TLS is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS cannot be set up from the files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// One listener's TLS: the current configuration and what it was built from.
pub struct Tls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
    /// The files' bytes behind `current`, and the last failed contents (so a broken rotation is
    /// reported once, not every look).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    loaded: Vec<Vec<u8>>,
    failed: Option<Vec<Vec<u8>>>,
}

impl Tls {
    /// Builds the configuration, or says which file is wrong. `alpn` lists the protocols the
    /// listener offers (`h2`, `http/1.1`).
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Arc<Tls>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let contents = read_all(&files)?;
        let config = build(&files, &contents, &alpn)?;
        Ok(Arc::new(Tls {
            files,
            alpn,
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(Seen {
                loaded: contents,
                failed: None,
            }),
        }))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files and, when they changed and build, swaps the configuration in.
    /// Returns whether it did. Blocking: file reads.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files)?;
        let mut seen = self.seen.lock();
        if contents == seen.loaded || seen.failed.as_ref() == Some(&contents) {
            return Ok(false);
        }
        match build(&self.files, &contents, &self.alpn) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                seen.loaded = contents;
                seen.failed = None;
                Ok(true)
            }
            Err(e) => {
                seen.failed = Some(contents);
                Err(e)
            }
        }
    }
}

/// Looks at every listener's files each [`RELOAD_PERIOD`] until the server stops.
pub async fn watch(
    listeners: Vec<Arc<Tls>>,
    metrics: crate::metrics::Metrics,
    stopped: watch::Receiver<bool>,
) {
    if listeners.is_empty() {
        return;
    }
    let step = move || {
        for tls in &listeners {
            match tls.reload_if_changed() {
                Ok(true) => {
                    metrics.record_tls_reload("ok");
                    tracing::info!("TLS certificate reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.record_tls_reload("error");
                    tracing::warn!(error = %e, "TLS files changed but do not build; the previous certificate keeps serving");
                }
            }
        }
    };
    crate::periodic::every_blocking(
        RELOAD_PERIOD,
        crate::periodic::First::AfterPeriod,
        stopped,
        step,
    )
    .await
}

fn read_all(files: &TlsFiles) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut out = vec![read(&files.cert)?, read(&files.key)?];
    if let Some(ca) = &files.client_ca {
        out.push(read(ca)?);
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    cairn_core::bounded::read(path, MAX_PEM_BYTES).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn build(
    files: &TlsFiles,
    contents: &[Vec<u8>],
    alpn: &[Vec<u8>],
) -> Result<ServerConfig, TlsError> {
    let bad = |path: &Path, reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&contents[0])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad(&files.cert, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&contents[1])
        .map_err(|e| bad(&files.key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match (&files.client_ca, contents.get(2)) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| bad(path, format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(path, format!("not a usable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad(path, "holds no certificate".into()));
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad(&files.key, format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}
