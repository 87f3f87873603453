//! `terraform plan` over 1,000 `fanner_subscription`s against `fanner serve`, next to the same
//! plan over 1,000 `null_resource`s of the Go null provider (v2.1.2) whose `triggers` carry the
//! same expressions, on the newest Terraform in FANNER_TERRAFORM_BINS. Prints medians and the
//! ratio; asserts nothing. `FANNER_PLAN_RESOURCES` changes the count.
//!
//! cargo build --release --bins && cargo bench -p acceptance-tests --bench plan

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use acceptance_tests::{PROVIDER_VERSION, Server, bin_dir, install_mirror};
use anyhow::{Context, ensure};

const DEFAULT_RESOURCES: usize = 1000;
const STREAMS: usize = 10;
const RUNS: usize = 7;
const NULL_PROVIDER: &str = "terraform {\n  required_providers {\n    null = {\n      source  = \"hashicorp/null\"\n      version = \"2.1.2\"\n    }\n  }\n}\n\n";

struct Bench {
    terraform: PathBuf,
    cli_config: PathBuf,
    env: Vec<(String, String)>,
}

impl Bench {
    fn run(&self, dir: &Path, args: &[&str]) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let output = Command::new(&self.terraform)
            .args(args)
            .current_dir(dir)
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("TF_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()?;
        let elapsed = started.elapsed();
        ensure!(
            output.status.success(),
            "terraform {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(elapsed)
    }

    /// Median `terraform plan` times of two working directories, run alternately so that load
    /// from anything else on the machine weighs on both alike.
    fn median_plans(
        &self,
        a: &Path,
        b: &Path,
        refresh: bool,
    ) -> anyhow::Result<(Duration, Duration)> {
        let mut args = vec!["plan", "-input=false", "-no-color", "-lock=false"];
        if !refresh {
            args.push("-refresh=false");
        }
        let (mut times_a, mut times_b) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            times_a.push(self.run(a, &args)?);
            times_b.push(self.run(b, &args)?);
        }
        times_a.sort();
        times_b.sort();
        Ok((times_a[RUNS / 2], times_b[RUNS / 2]))
    }
}

fn workdir(root: &Path, name: &str, hcl: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("main.tf"), hcl)?;
    Ok(dir)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let terraform = std::env::var("FANNER_TERRAFORM_BINS")
        .ok()
        .and_then(|b| b.split(':').rfind(|p| !p.is_empty()).map(PathBuf::from))
        .context("set FANNER_TERRAFORM_BINS (scripts/setup-tools)")?;
    let null_provider = std::env::var("FANNER_TOOLS_BIN")
        .map(|d| PathBuf::from(d).join("terraform-provider-null"))
        .context("set FANNER_TOOLS_BIN (scripts/setup-tools) for the Go null provider")?;
    println!("binaries from {}", bin_dir()?.display());
    let resources = match std::env::var("FANNER_PLAN_RESOURCES") {
        Ok(n) => n.parse().context("FANNER_PLAN_RESOURCES must be a count")?,
        Err(_) => DEFAULT_RESOURCES,
    };

    let server = Server::start().await?;
    let admin = server.admin()?;
    admin
        .create_event(&api::CreateEvent {
            name: "bench_event".to_owned(),
            classification: api::Classification::Internal,
            description: String::new(),
            owner: None,
        })
        .await?;
    for i in 0..STREAMS {
        admin
            .create_stream(&api::CreateStream {
                name: format!("bench-{i}"),
                shard_count: None,
                retention_hours: None,
                tags: Default::default(),
            })
            .await?;
    }

    let scratch = tempfile::tempdir()?;
    let mirror = scratch.path().join("mirror");
    install_mirror(&mirror, &bin_dir()?.join("terraform-provider-fanner"))?;
    let null_dir = mirror.join("registry.terraform.io/hashicorp/null/2.1.2/linux_amd64");
    std::fs::create_dir_all(&null_dir)?;
    std::fs::copy(
        &null_provider,
        null_dir.join("terraform-provider-null_v2.1.2"),
    )?;
    let cli_config = scratch.path().join("cli.tfrc");
    std::fs::write(
        &cli_config,
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n  }}\n}}\n",
            mirror.display()
        ),
    )?;
    let bench = Bench {
        terraform,
        cli_config,
        env: vec![
            ("FANNER_ENDPOINT".to_owned(), server.endpoint.clone()),
            ("FANNER_TOKEN".to_owned(), server.admin_token.clone()),
        ],
    };

    let fanner = workdir(
        scratch.path(),
        "fanner",
        &format!(
            "terraform {{\n  required_providers {{\n    fanner = {{\n      source  = \"fanner/fanner\"\n      version = \"{PROVIDER_VERSION}\"\n    }}\n  }}\n}}\n\nresource \"fanner_subscription\" \"s\" {{\n  count  = {resources}\n  stream = \"bench-${{count.index % {STREAMS}}}\"\n  events = [\"bench_event\"]\n}}\n"
        ),
    )?;
    // The same expressions on both sides (Terraform evaluates `count.index` per instance and
    // builds a function table for it); the bare null_resource is printed for reference.
    let null = workdir(
        scratch.path(),
        "null",
        &format!(
            "{NULL_PROVIDER}resource \"null_resource\" \"n\" {{\n  count = {resources}\n  triggers = {{\n    stream = \"bench-${{count.index % {STREAMS}}}\"\n    events = \"bench_event\"\n  }}\n}}\n"
        ),
    )?;
    let bare = workdir(
        scratch.path(),
        "bare",
        &format!("{NULL_PROVIDER}resource \"null_resource\" \"n\" {{\n  count = {resources}\n}}\n"),
    )?;
    for dir in [&fanner, &null, &bare] {
        bench.run(dir, &["init", "-input=false", "-no-color"])?;
    }

    println!("terraform plan, {resources} resources, median of {RUNS}:");
    let (fresh_fanner, fresh_null) = bench.median_plans(&fanner, &null, true)?;
    report("fresh (nothing applied)", fresh_fanner, fresh_null);
    let (fresh_fanner, fresh_bare) = bench.median_plans(&fanner, &bare, true)?;
    report("fresh, bare null_resource", fresh_fanner, fresh_bare);

    for dir in [&fanner, &null] {
        let took = bench.run(
            dir,
            &["apply", "-input=false", "-auto-approve", "-no-color"],
        )?;
        println!("  apply {}: {:.2} s", dir.display(), took.as_secs_f64());
    }
    let (refresh_fanner, refresh_null) = bench.median_plans(&fanner, &null, true)?;
    report("after apply, with refresh", refresh_fanner, refresh_null);
    let (cached_fanner, cached_null) = bench.median_plans(&fanner, &null, false)?;
    report("after apply, -refresh=false", cached_fanner, cached_null);
    Ok(())
}

fn report(what: &str, fanner: Duration, null: Duration) {
    println!(
        "  {what:<28} fanner_subscription {:>6.2} s   null_resource {:>6.2} s   ratio {:.2}x",
        fanner.as_secs_f64(),
        null.as_secs_f64(),
        fanner.as_secs_f64() / null.as_secs_f64()
    );
}
