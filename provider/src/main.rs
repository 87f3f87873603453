//! The provider binary: Terraform starts it; stdout carries only the go-plugin handshake line and
//! logs go to stderr, where `TF_LOG=debug` shows them.

use provider::FannerProvider;
use provider::plugin::{self, PluginEnv};

fn log_filter() -> tracing_subscriber::EnvFilter {
    let level = ["TF_LOG_PROVIDER_FANNER", "TF_LOG_PROVIDER", "TF_LOG"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .map(|v| match v.to_ascii_lowercase().as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "info" => "info",
            "error" => "error",
            "off" => "off",
            _ => "warn",
        })
        .unwrap_or("warn");
    tracing_subscriber::EnvFilter::new(format!(
        "warn,provider={level},terraform_provider_fanner={level},api={level}"
    ))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(log_filter())
        .init();
    // The same provider as the API client's (which installs it too): ring serves all TLS.
    api::install_crypto_provider();
    let env = match PluginEnv::from_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("terraform-provider-fanner: {e}.");
            std::process::exit(1);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(plugin::serve(env, FannerProvider::default()))?;
    Ok(())
}
