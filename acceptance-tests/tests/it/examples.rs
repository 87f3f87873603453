use std::path::{Path, PathBuf};

use acceptance_tests::{Server, Workspace, enabled, terraforms};
use anyhow::{Context, ensure};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/terraform")
}

/// Every `.tf` file directly in `dir`, as (file name, content).
fn tf_files(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tf") {
            let name = path
                .file_name()
                .context("no file name")?
                .to_string_lossy()
                .into_owned();
            files.push((name, std::fs::read_to_string(&path)?));
        }
    }
    Ok(files)
}

/// Every example directory: `provider/`, `query/`, `resources/<type>/`, `data-sources/<type>/`,
/// `modules/*/` and `quickstart/`.
fn example_dirs() -> anyhow::Result<Vec<PathBuf>> {
    let root = examples_dir();
    let mut dirs = vec![
        root.join("provider"),
        root.join("query"),
        root.join("quickstart"),
    ];
    for group in ["resources", "data-sources", "modules"] {
        for entry in std::fs::read_dir(root.join(group))? {
            dirs.push(entry?.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Puts the example modules beside the working directory, where `../modules/` finds them.
fn copy_modules(ws: &Workspace) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(examples_dir().join("modules"))? {
        let dir = entry?.path();
        let module = dir
            .file_name()
            .context("no name")?
            .to_string_lossy()
            .into_owned();
        for (name, content) in tf_files(&dir)? {
            ws.write_file(&format!("../modules/{module}/{name}"), &content)?;
        }
    }
    Ok(())
}

/// `terraform fmt -check` and `terraform validate` pass on every example, on every version.
#[tokio::test]
async fn examples_are_formatted_and_valid() -> anyhow::Result<()> {
    if !enabled("examples_are_formatted_and_valid") {
        return Ok(());
    }
    let server = Server::start().await?;
    for terraform in terraforms() {
        let root = examples_dir();
        let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
        let fmt = ws.run(&[
            "fmt",
            "-check",
            "-recursive",
            "-diff",
            &root.display().to_string(),
        ])?;
        ensure!(
            fmt.code == 0,
            "examples are not terraform fmt-clean:\n{fmt}"
        );
        for dir in example_dirs()? {
            let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
            let mut has_terraform_block = false;
            for (name, content) in tf_files(&dir)? {
                has_terraform_block |= content.contains("required_providers");
                ws.write_file(&name, &content)?;
            }
            if !has_terraform_block {
                ws.write_file(
                    "versions.tf",
                    "terraform {\n  required_providers {\n    fanner = { source = \"fanner/fanner\" }\n  }\n}\n",
                )?;
            }
            copy_modules(&ws)?;
            ws.init()?;
            let run = ws.run(&["validate", "-no-color"])?;
            ensure!(
                run.code == 0,
                "{} is not valid on {}:\n{run}",
                dir.display(),
                ws.version_label()
            );
        }
    }
    Ok(())
}

/// The quickstart applies against `fanner serve`, plans empty, and its module makes a stream and
/// its subscription.
#[tokio::test]
async fn quickstart_and_module_apply() -> anyhow::Result<()> {
    if !enabled("quickstart_and_module_apply") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let admin = server.admin()?;
        let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
        let root = examples_dir();
        for (name, content) in tf_files(&root.join("quickstart"))? {
            ws.write_file(&name, &content)?;
        }
        copy_modules(&ws)?;
        ws.init()?;
        let run = ws.apply()?;
        ensure!(run.stdout.contains("signup_streams"), "{run}");
        ws.assert_no_changes("the quickstart")?;
        let streams = ws.ok(&["output", "-json", "signup_streams"])?;
        let streams: Vec<String> = serde_json::from_str(&streams.stdout)?;
        ensure!(streams == ["fraud-signals"], "streams {streams:?}");
        let subscriptions = admin.list_subscriptions(Some("fraud-signals")).await?;
        ensure!(
            subscriptions.len() == 1
                && subscriptions[0].events == ["card_swiped", "user_signed_up"],
            "{subscriptions:?}"
        );
        ws.destroy()?;
        ensure!(admin.list_streams().await?.is_empty());
    }
    Ok(())
}

/// The committed docs are exactly what `terraform providers schema -json` renders to, on every
/// Terraform version.
#[tokio::test]
async fn docs_match_terraforms_schema() -> anyhow::Result<()> {
    if !enabled("docs_match_terraforms_schema") {
        return Ok(());
    }
    let server = Server::start().await?;
    let root = examples_dir();
    for terraform in terraforms() {
        let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
        ws.write("")?;
        ws.init()?;
        let run = ws.ok(&["providers", "schema", "-json"])?;
        let schemas: serde_json::Value = serde_json::from_str(&run.stdout)?;
        let pages = xtask::render(&xtask::provider_entry(&schemas)?, &root)?;
        let docs = root.join("../../docs");
        for (path, content) in pages {
            let committed = std::fs::read_to_string(docs.join(&path))
                .with_context(|| format!("docs/{} is missing", path.display()))?;
            ensure!(
                committed == content,
                "docs/{} differs from what {} renders: run `cargo xtask docs`",
                path.display(),
                ws.version_label()
            );
        }
    }
    Ok(())
}
