use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine;
use hyper_util::rt::TokioIo;
use provider::plugin::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use provider::tfplugin6::get_provider_schema;
use provider::tfplugin6::provider_client::ProviderClient;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The provider process; killed when dropped.
struct Plugin {
    child: Child,
    address: String,
    server_cert: Vec<u8>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(client_cert_pem: Option<&str>) -> anyhow::Result<Plugin> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_terraform-provider-fanner"));
    command
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "5,6")
        .env_remove("PLUGIN_CLIENT_CERT")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(pem) = client_cert_pem {
        command.env("PLUGIN_CLIENT_CERT", pem);
    }
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    anyhow::ensure!(fields.len() == 6, "bad handshake line {line:?}");
    assert_eq!(&fields[..3], ["1", "6", "tcp"], "handshake {line:?}");
    assert_eq!(fields[4], "grpc");
    let server_cert = base64::engine::general_purpose::STANDARD_NO_PAD.decode(fields[5])?;
    Ok(Plugin {
        child,
        address: fields[3].to_owned(),
        server_cert,
    })
}

/// A self-signed client certificate, as go-plugin makes one per run.
fn client_identity() -> anyhow::Result<(String, CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    let pem = cert.pem();
    let der = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((pem, der, key))
}

/// Connects over TLS as `cert` and asks for the provider schema.
async fn get_schema(
    plugin: &Plugin,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<get_provider_schema::Response> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(plugin.server_cert.clone()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let address = plugin.address.clone();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            let address = address.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(tls))
            }
        }))
        .await?;
    let response = ProviderClient::new(channel)
        .get_provider_schema(get_provider_schema::Request {})
        .await?;
    Ok(response.into_inner())
}

#[tokio::test]
async fn only_terraforms_client_certificate_is_accepted() -> anyhow::Result<()> {
    api::install_crypto_provider();
    let (terraform_pem, terraform_cert, terraform_key) = client_identity()?;
    let (_, other_cert, other_key) = client_identity()?;
    let plugin = start(Some(&terraform_pem))?;

    let refused = get_schema(&plugin, other_cert, other_key).await;
    assert!(
        refused.is_err(),
        "a client with another certificate was served"
    );

    let schema = get_schema(&plugin, terraform_cert, terraform_key).await?;
    let mut resources: Vec<_> = schema.resource_schemas.keys().cloned().collect();
    resources.sort();
    assert_eq!(
        resources,
        [
            "fanner_event",
            "fanner_grant",
            "fanner_stream",
            "fanner_subscription"
        ]
    );
    Ok(())
}

#[test]
fn refuses_to_run_outside_terraform() -> anyhow::Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_terraform-provider-fanner"))
        .env_remove(MAGIC_COOKIE_KEY)
        .output()?;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "stdout is for the handshake only");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Terraform plugin"), "stderr: {stderr}");
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_the_process() -> anyhow::Result<()> {
    let mut plugin = start(None)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", plugin.address))?
        .connect()
        .await?;
    let mut controller =
        provider::plugin_controller::grpc_controller_client::GrpcControllerClient::new(channel);
    controller
        .shutdown(provider::plugin_controller::Empty {})
        .await?;
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = plugin.child.try_wait()? {
            assert!(status.success(), "exit status {status}");
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the provider did not exit after Shutdown"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
