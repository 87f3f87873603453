//! HTTPS for `fanner serve`: a [`Listener`] that completes TLS handshakes off the accept path,
//! with a certificate and key read from PEM files and read again whenever either file changes,
//! so a renewed certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::serve::Listener;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the certificate files' modification times are checked.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("the key in {path} is not usable: {reason}")]
    Key { path: String, reason: String },
}

/// Where the certificate chain and its private key are, both PEM.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn load(&self) -> Result<CertifiedKey, TlsError> {
        let read = |path: &Path, reason: String| TlsError::Read {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| read(&self.cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read(&self.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.display().to_string(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|e| read(&self.key, e.to_string()))?;
        let key =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Key {
                path: self.key.display().to_string(),
                reason: e.to_string(),
            })?;
        let certified = CertifiedKey::new(certs, key);
        // A renewal that has replaced one file but not yet the other fails here, and is read
        // again at the next check.
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(error) => Err(TlsError::Key {
                path: self.key.display().to_string(),
                reason: format!(
                    "it does not belong to the certificate in {}: {error}",
                    self.cert.display()
                ),
            }),
        }
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Some((modified(&self.cert)?, modified(&self.key)?))
    }
}

/// The certificate being served, swapped when the files change.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// A TLS listener for [`axum::serve`]: TCP accepts and handshakes run in a background task (one
/// slow client does not hold up the rest), which also reloads the certificate when its files
/// change. Dropping the listener stops both.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
    _tasks: AbortOnDrop,
}

impl TlsListener {
    /// Loads `files` once (a bad certificate fails the start) and starts accepting.
    pub fn new(listener: TcpListener, files: TlsFiles) -> Result<TlsListener, TlsError> {
        let local = listener.local_addr().map_err(|e| TlsError::Read {
            path: "listener".to_owned(),
            reason: e.to_string(),
        })?;
        let current = Arc::new(Current(RwLock::new(Arc::new(files.load()?))));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Key {
                    path: files.key.display().to_string(),
                    reason: e.to_string(),
                })?
                .with_no_client_auth()
                .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (send, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let accept = tokio::spawn(accept_loop(listener, acceptor, send));
        let reload = tokio::spawn(reload_loop(files, current));
        Ok(TlsListener {
            accepted,
            local,
            _tasks: AbortOnDrop(vec![accept, reload]),
        })
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    send: mpsc::Sender<(TlsStream<TcpStream>, std::net::SocketAddr)>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(%error, "Cannot accept a connection.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let send = send.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = send.send((tls, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed."),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
            }
        });
    }
}

async fn reload_loop(files: TlsFiles, current: Arc<Current>) {
    let mut seen = files.modified();
    let mut interval = tokio::time::interval(RELOAD_INTERVAL);
    loop {
        interval.tick().await;
        let now = files.modified();
        if now.is_none() || now == seen {
            continue;
        }
        match files.load() {
            Ok(key) => {
                *current
                    .0
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(key);
                seen = now;
                tracing::info!(cert = %files.cert.display(), "Reloaded the TLS certificate.");
            }
            // A half-replaced pair: keep serving the old one and try again at the next tick.
            Err(error) => {
                tracing::warn!(%error, "Cannot reload the TLS certificate; serving the previous one.")
            }
        }
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when aborted, which is when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
