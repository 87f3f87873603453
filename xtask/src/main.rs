//! `cargo xtask docs`: builds the provider, asks a real Terraform for its schema
//! (`terraform providers schema -json`) and writes `docs/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use xtask::{DOC_DIRS, is_hand_written, mirror_cli_config, provider_entry, render, workspace_root};

const USAGE: &str = "usage: cargo xtask docs";

fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("docs") => docs(),
        _ => bail!("{USAGE}"),
    }
}

fn terraform() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("TERRAFORM") {
        return Ok(PathBuf::from(path));
    }
    std::env::var("FANNER_TERRAFORM_BINS")
        .ok()
        .and_then(|bins| bins.split(':').rfind(|b| !b.is_empty()).map(PathBuf::from))
        .context(
            "set TERRAFORM to a terraform binary, or FANNER_TERRAFORM_BINS (scripts/setup-tools)",
        )
}

fn build_provider(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "provider",
            "--bin",
            "terraform-provider-fanner",
        ])
        .current_dir(root)
        .status()?;
    ensure!(status.success(), "building the provider failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target.join("debug/terraform-provider-fanner"))
}

fn run(terraform: &Path, dir: &Path, cli_config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(terraform)
        .args(args)
        .current_dir(dir)
        .env("TF_CLI_CONFIG_FILE", cli_config)
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .with_context(|| format!("running {}", terraform.display()))?;
    ensure!(
        output.status.success(),
        "terraform {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn docs() -> anyhow::Result<()> {
    let root = workspace_root();
    let provider = build_provider(&root)?;
    let terraform = terraform()?;
    let scratch = tempfile::tempdir()?;
    let mirror = scratch.path().join("mirror");
    let platform = mirror.join("registry.terraform.io/fanner/fanner/0.0.1/linux_amd64");
    std::fs::create_dir_all(&platform)?;
    std::fs::copy(&provider, platform.join("terraform-provider-fanner_v0.0.1"))?;
    let cli_config = scratch.path().join("cli.tfrc");
    std::fs::write(&cli_config, mirror_cli_config(&mirror))?;
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("main.tf"),
        "terraform {\n  required_providers {\n    fanner = { source = \"fanner/fanner\" }\n  }\n}\n",
    )?;
    run(
        &terraform,
        &work,
        &cli_config,
        &["init", "-input=false", "-no-color"],
    )?;
    let schemas: serde_json::Value = serde_json::from_str(&run(
        &terraform,
        &work,
        &cli_config,
        &["providers", "schema", "-json"],
    )?)?;
    let pages = render(&provider_entry(&schemas)?, &root.join("examples/terraform"))?;
    let docs = root.join("docs");
    for sub in DOC_DIRS {
        if let Ok(entries) = std::fs::read_dir(docs.join(sub)) {
            for entry in entries {
                let path = entry?.path();
                let hand_written = path.strip_prefix(&docs).is_ok_and(is_hand_written);
                if path.extension().is_some_and(|e| e == "md") && !hand_written {
                    std::fs::remove_file(path)?;
                }
            }
        }
    }
    for (path, content) in &pages {
        let path = docs.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
        println!(
            "wrote {}",
            path.strip_prefix(&root).unwrap_or(&path).display()
        );
    }
    Ok(())
}
