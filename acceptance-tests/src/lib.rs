//! The acceptance-test harness: a real `fanner serve` on a free loopback port with a fresh data
//! directory, and real Terraform CLIs (every version in `FANNER_TERRAFORM_BINS`) that install
//! the provider from a filesystem mirror, exactly as a user's `terraform init` would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value as Json;

pub const PROVIDER_VERSION: &str = "0.0.1";

/// The acceptance tier runs only with `TF_ACC=1`; says why when it does not.
pub fn enabled(test: &str) -> bool {
    if std::env::var("TF_ACC").as_deref() != Ok("1") {
        eprintln!("{test}: skipped; set TF_ACC=1 to run the Terraform acceptance tests.");
        return false;
    }
    if std::env::var("FANNER_TERRAFORM_BINS").is_err() {
        eprintln!(
            "{test}: skipped; set FANNER_TERRAFORM_BINS (the `export` lines of scripts/setup-tools)."
        );
        return false;
    }
    true
}

/// `target/<profile>/`, where cargo puts the workspace's binaries next to the test executables.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test executable has no directory")?;
    let dir = if deps.ends_with("deps") {
        deps.parent().context("deps has no parent")?
    } else {
        deps
    };
    Ok(dir.to_path_buf())
}

fn binary(name: &str, override_var: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(override_var) {
        return Ok(PathBuf::from(path));
    }
    let path = bin_dir()?.join(name);
    ensure!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (or set {override_var})",
        path.display()
    );
    Ok(path)
}

/// A `fanner serve` process; killed when dropped.
pub struct Server {
    child: Child,
    pub endpoint: String,
    pub admin_token: String,
    _data_dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    pub async fn start() -> anyhow::Result<Server> {
        let fanner = binary("fanner", "FANNER_BIN")?;
        let data_dir = tempfile::tempdir()?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(&fanner)
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("FANNER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", fanner.display()))?;
        let endpoint = format!("http://{listen}");
        let mut server = Server {
            child,
            endpoint,
            admin_token: String::new(),
            _data_dir: data_dir,
        };
        let token_file = server._data_dir.path().join("admin.token");
        let client = api::Client::new(&server.endpoint, None)?;
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("fanner serve exited with {status}");
            }
            if client.healthz().await.is_ok() && token_file.exists() {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "fanner serve did not become healthy within 60 s"
            );
            // Polling for readiness: the server gives no other signal.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.admin_token = std::fs::read_to_string(&token_file)?.trim().to_owned();
        Ok(server)
    }

    pub fn admin(&self) -> anyhow::Result<api::Client> {
        Ok(api::Client::new(
            &self.endpoint,
            Some(self.admin_token.clone()),
        )?)
    }

    /// A member principal and its token.
    pub async fn principal(&self, name: &str) -> anyhow::Result<(String, api::Client)> {
        let created = self
            .admin()?
            .create_token(&api::CreateToken {
                principal: name.to_owned(),
                role: None,
            })
            .await?;
        let client = api::Client::new(&self.endpoint, Some(created.token.clone()))?;
        Ok((created.token, client))
    }
}

/// Every Terraform CLI to test against.
pub fn terraforms() -> Vec<PathBuf> {
    std::env::var("FANNER_TERRAFORM_BINS")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// A Terraform working directory with its own CLI configuration and provider mirror.
pub struct Workspace {
    pub terraform: PathBuf,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Lays out `<mirror>/registry.terraform.io/fanner/fanner/<version>/linux_amd64/` with the built
/// provider, the layout `terraform init` reads on every supported version.
pub fn install_mirror(mirror: &Path, provider: &Path) -> anyhow::Result<()> {
    let dir = mirror.join(format!(
        "registry.terraform.io/fanner/fanner/{PROVIDER_VERSION}/linux_amd64"
    ));
    std::fs::create_dir_all(&dir)?;
    let target = dir.join(format!("terraform-provider-fanner_v{PROVIDER_VERSION}"));
    let _ = std::fs::remove_file(&target);
    if std::fs::hard_link(provider, &target).is_err() {
        std::fs::copy(provider, &target)?;
    }
    Ok(())
}

pub fn cli_config(mirror: &Path) -> String {
    format!(
        r#"provider_installation {{
  filesystem_mirror {{
    path    = "{}"
    include = ["registry.terraform.io/fanner/fanner"]
  }}
  direct {{
    exclude = ["registry.terraform.io/fanner/fanner"]
  }}
}}
"#,
        mirror.display()
    )
}

impl Workspace {
    /// A workspace whose provider talks to `server` as the holder of `token`.
    pub fn new(terraform: &Path, server: &Server, token: &str) -> anyhow::Result<Workspace> {
        let dir = tempfile::tempdir()?;
        let mirror = dir.path().join("mirror");
        install_mirror(
            &mirror,
            &binary("terraform-provider-fanner", "FANNER_PROVIDER_BIN")?,
        )?;
        let cli_config_file = dir.path().join("cli.tfrc");
        std::fs::write(&cli_config_file, cli_config(&mirror))?;
        std::fs::create_dir_all(dir.path().join("work"))?;
        let env = vec![
            (
                "TF_CLI_CONFIG_FILE".to_owned(),
                cli_config_file.display().to_string(),
            ),
            ("CHECKPOINT_DISABLE".to_owned(), "1".to_owned()),
            ("TF_IN_AUTOMATION".to_owned(), "1".to_owned()),
            ("FANNER_ENDPOINT".to_owned(), server.endpoint.clone()),
            ("FANNER_TOKEN".to_owned(), token.to_owned()),
        ];
        Ok(Workspace {
            terraform: terraform.to_path_buf(),
            dir,
            env,
        })
    }

    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn version_label(&self) -> String {
        self.terraform
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Whether this Terraform is `major.minor` or newer.
    pub fn is_at_least(&self, major: u32, minor: u32) -> anyhow::Result<bool> {
        let run = self.run(&["version", "-json"])?;
        let version: Json = serde_json::from_str(&run.stdout)?;
        let text = version["terraform_version"].as_str().unwrap_or("0.0.0");
        let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        Ok(found >= (major, minor))
    }

    pub fn supports_import_blocks(&self) -> anyhow::Result<bool> {
        self.is_at_least(1, 5)
    }

    /// Writes `main.tf` (the provider block comes from the environment).
    pub fn write(&self, hcl: &str) -> anyhow::Result<()> {
        let main = format!(
            "terraform {{\n  required_providers {{\n    fanner = {{ source = \"fanner/fanner\" }}\n  }}\n}}\n\n{hcl}"
        );
        std::fs::write(self.work_dir().join("main.tf"), main)?;
        Ok(())
    }

    pub fn write_file(&self, name: &str, content: &str) -> anyhow::Result<()> {
        let path = self.work_dir().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, content)?;
        Ok(())
    }

    pub fn remove_file(&self, name: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.work_dir().join(name))?;
        Ok(())
    }

    pub fn run(&self, args: &[&str]) -> anyhow::Result<Run> {
        let mut command = Command::new(&self.terraform);
        command
            .args(args)
            .current_dir(self.work_dir())
            .env_remove("TF_LOG")
            .env_remove("TF_WORKSPACE");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        Ok(Run::from(command.output().with_context(|| {
            format!("running {}", self.terraform.display())
        })?))
    }

    /// Runs a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<Run> {
        let run = self.run(args)?;
        ensure!(
            run.code == 0,
            "terraform {} ({}) failed:\n{run}",
            args.join(" "),
            self.version_label()
        );
        Ok(run)
    }

    pub fn init(&self) -> anyhow::Result<()> {
        self.ok(&["init", "-input=false", "-no-color"])?;
        Ok(())
    }

    pub fn apply(&self) -> anyhow::Result<Run> {
        self.ok(&["apply", "-input=false", "-auto-approve", "-no-color"])
    }

    /// `terraform plan -detailed-exitcode`: 0 no changes, 1 error, 2 changes.
    pub fn plan(&self) -> anyhow::Result<Run> {
        self.run(&["plan", "-input=false", "-detailed-exitcode", "-no-color"])
    }

    /// Fails unless the plan is empty.
    pub fn assert_no_changes(&self, after: &str) -> anyhow::Result<()> {
        let run = self.plan()?;
        ensure!(
            run.code == 0,
            "plan after {after} is not empty ({}):\n{run}",
            self.version_label()
        );
        Ok(())
    }

    /// The attribute values of `address` in the state.
    pub fn state_of(&self, address: &str) -> anyhow::Result<Json> {
        let run = self.ok(&["show", "-json"])?;
        let state: Json = serde_json::from_str(&run.stdout)?;
        let resources = state["values"]["root_module"]["resources"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        resources
            .into_iter()
            .find(|r| r["address"] == address)
            .map(|r| r["values"].clone())
            .with_context(|| format!("{address} is not in the state"))
    }

    pub fn destroy(&self) -> anyhow::Result<()> {
        self.ok(&["destroy", "-input=false", "-auto-approve", "-no-color"])?;
        Ok(())
    }
}

/// Re-imports `address` by `id` with `terraform import` (and with an `import {}` block where
/// supported) and checks the imported state equals the created one.
pub fn check_import(ws: &Workspace, address: &str, id: &str) -> anyhow::Result<()> {
    let created = ws.state_of(address)?;
    ws.ok(&["state", "rm", "-no-color", address])?;
    ws.ok(&["import", "-input=false", "-no-color", address, id])?;
    let imported = ws.state_of(address)?;
    ensure!(
        imported == created,
        "terraform import of {address} ({}) differs:\ncreated  {created}\nimported {imported}",
        ws.version_label()
    );
    ws.assert_no_changes("terraform import")?;

    if ws.supports_import_blocks()? {
        ws.ok(&["state", "rm", "-no-color", address])?;
        ws.write_file(
            "import.tf",
            &format!("import {{\n  to = {address}\n  id = \"{id}\"\n}}\n"),
        )?;
        let run = ws.apply()?;
        ensure!(
            run.stdout.contains("1 imported"),
            "the import block did not import {address}:\n{run}"
        );
        ws.remove_file("import.tf")?;
        let imported = ws.state_of(address)?;
        ensure!(
            imported == created,
            "import block for {address} differs:\ncreated  {created}\nimported {imported}"
        );
        ws.assert_no_changes("an import block")?;
    }
    Ok(())
}

/// A plan that must propose exactly `expected` (e.g. "0 to add, 1 to change, 0 to destroy").
pub fn assert_plan(ws: &Workspace, expected: &str, why: &str) -> anyhow::Result<Run> {
    let run = ws.plan()?;
    ensure!(
        run.code == 2 && run.stdout.contains(expected),
        "after {why}, expected a plan with {expected:?} ({}):\n{run}",
        ws.version_label()
    );
    Ok(run)
}
