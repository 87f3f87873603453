//! The go-plugin side of the process: check that Terraform started us, listen on loopback, print
//! the one handshake line on stdout, serve tfplugin6 (with AutoMTLS when Terraform asks for it)
//! and exit as soon as Terraform says so.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tonic::{Request, Response, Status};

use crate::plugin_controller::Empty;
use crate::plugin_controller::grpc_controller_server::{GrpcController, GrpcControllerServer};
use crate::server::FannerProvider;
use crate::tfplugin6::provider_server::ProviderServer;
use crate::tls;

pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
pub const MAGIC_COOKIE_VALUE: &str =
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
const PROTOCOL_VERSION: u32 = 6;
/// Terraform sends whole plans and states in one message: tonic's 4 MiB default is too small.
const MESSAGE_LIMIT: usize = 256 * 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(
        "this binary is a Terraform plugin: it is not meant to be executed directly. Run terraform, which starts it as needed"
    )]
    NotStartedByTerraform,
    #[error("Terraform offers plugin protocol versions {0:?}; this provider speaks only version 6")]
    UnsupportedProtocol(String),
    #[error("cannot listen on loopback: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot write the handshake line: {0}")]
    Handshake(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the environment Terraform set up for us says.
#[derive(Debug)]
pub struct PluginEnv {
    pub client_cert_pem: Option<String>,
}

impl PluginEnv {
    pub fn from_env() -> Result<PluginEnv, PluginError> {
        if std::env::var(MAGIC_COOKIE_KEY).ok().as_deref() != Some(MAGIC_COOKIE_VALUE) {
            return Err(PluginError::NotStartedByTerraform);
        }
        let versions = std::env::var("PLUGIN_PROTOCOL_VERSIONS").unwrap_or_default();
        if !versions
            .split(',')
            .any(|v| v.trim().parse() == Ok(PROTOCOL_VERSION))
        {
            return Err(PluginError::UnsupportedProtocol(versions));
        }
        let client_cert_pem = std::env::var("PLUGIN_CLIENT_CERT")
            .ok()
            .filter(|pem| !pem.trim().is_empty());
        Ok(PluginEnv { client_cert_pem })
    }
}

struct Controller {
    shutdown: Arc<Notify>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::debug!("Terraform asked the provider to shut down.");
        self.shutdown.notify_one();
        Ok(Response::new(Empty {}))
    }
}

/// Serves until Terraform calls `plugin.GRPCController/Shutdown`.
pub async fn serve(env: PluginEnv, provider: FannerProvider) -> Result<(), PluginError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(PluginError::Listen)?;
    let address = listener.local_addr().map_err(PluginError::Listen)?;
    let shutdown = Arc::new(Notify::new());
    let router = tonic::transport::Server::builder()
        .add_service(GrpcControllerServer::new(Controller {
            shutdown: shutdown.clone(),
        }))
        .add_service(
            ProviderServer::new(provider)
                .max_decoding_message_size(MESSAGE_LIMIT)
                .max_encoding_message_size(MESSAGE_LIMIT),
        );

    match env.client_cert_pem {
        Some(pem) => {
            let tls = tls::server_tls(&pem)?;
            let cert = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&tls.cert_der);
            announce(&format!("1|{PROTOCOL_VERSION}|tcp|{address}|grpc|{cert}"))?;
            let incoming = tls_incoming(listener, tokio_rustls::TlsAcceptor::from(tls.config));
            finish(router.serve_with_incoming(incoming), &shutdown).await
        }
        None => {
            announce(&format!("1|{PROTOCOL_VERSION}|tcp|{address}|grpc|"))?;
            let incoming = plain_incoming(listener);
            finish(router.serve_with_incoming(incoming), &shutdown).await
        }
    }
}

fn announce(line: &str) -> Result<(), PluginError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(PluginError::Handshake)?;
    stdout.flush().map_err(PluginError::Handshake)
}

/// Runs the server until Terraform asks it to stop. Terraform has finished with the provider by
/// then but may keep connections open (so a graceful drain would wait out its timeout, and
/// Terraform with it, on every one of the three provider starts of a plan): after a moment for
/// the Shutdown response to leave, return regardless.
async fn finish(
    serve: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: &Notify,
) -> Result<(), PluginError> {
    let serve = std::pin::pin!(serve);
    let asked = async {
        shutdown.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = serve => Ok(result?),
        () = asked => Ok(()),
    }
}

fn accept_loop<IO, F, Fut>(
    listener: TcpListener,
    wrap: F,
) -> impl Stream<Item = std::io::Result<IO>>
where
    IO: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<IO>> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<std::io::Result<IO>>(16);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    continue;
                }
            };
            // Small gRPC messages dominate a plan: Nagle's delay would add up per call.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "Cannot set TCP_NODELAY.");
            }
            let connection = wrap(stream);
            let tx = tx.clone();
            tokio::spawn(async move {
                match connection.await {
                    Ok(io) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "Refused a connection."),
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn plain_incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    accept_loop(listener, |stream| async move { Ok(stream) })
}

fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    accept_loop(listener, move |stream| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )),
            }
        }
    })
}
