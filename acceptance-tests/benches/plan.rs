//! `terraform plan` over 1,000 `fanner_subscription`s against `fanner serve`, next to the same
//! plan over 1,000 `null_resource`s of the Go null provider (v2.1.2) whose `triggers` carry the
//! same expressions, on the newest Terraform in FANNER_TERRAFORM_BINS. Prints medians and the
//! ratio; then, for one plan of each kind, the CPU seconds of Terraform with its providers and
//! of the provider alone (Fanner's, and the null provider's for comparison: both from
//! `/usr/bin/time`) and the API calls the plan made (from the control plane's `/metrics`), and
//! the apply rate at `-parallelism=10`. Asserts nothing.
//! `FANNER_PLAN_RESOURCES` changes the count, `FANNER_PLAN_RUNS` the runs per median.
//!
//! `FANNER_PLAN_GROW_TO=10000` then measures refresh plans at that size too. Applying 10,000
//! resources takes Terraform half an hour here, so the state is grown instead: the missing
//! subscriptions are created through the API and their state instances written from the applied
//! ones (null_resource likewise), then one `terraform apply -refresh-only` makes every instance
//! exactly what the provider reads.
//!
//! `FANNER_PLAN_PERF=<dir>` also records one refresh plan of each kind, at the largest size, with
//! `perf record -g` (Terraform's code included: its binaries keep their symbols) into that
//! folder, to read with `perf report -i <dir>/fanner.data --no-children`.
//!
//! cargo build --release --bins && cargo bench -p acceptance-tests --bench plan

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use acceptance_tests::{PROVIDER_VERSION, Server, bin_dir, install_mirror};
use anyhow::{Context, ensure};

const DEFAULT_RESOURCES: usize = 1000;
const STREAMS: usize = 10;
const DEFAULT_RUNS: usize = 7;
const NULL_PROVIDER: &str = "terraform {\n  required_providers {\n    null = {\n      source  = \"hashicorp/null\"\n      version = \"2.1.2\"\n    }\n  }\n}\n\n";

const TIME: &str = "/usr/bin/time";
const PLAN: [&str; 4] = ["plan", "-input=false", "-no-color", "-lock=false"];

struct Bench {
    runs: usize,
    terraform: PathBuf,
    cli_config: PathBuf,
    env: Vec<(String, String)>,
    /// Where the provider wrappers append each provider process's CPU seconds.
    provider_cpu_log: PathBuf,
    null_cpu_log: PathBuf,
    api: api::Client,
    /// Where `perf record` writes, when asked for.
    perf: Option<PathBuf>,
}

/// The summed `user system` lines `/usr/bin/time -f "%U %S"` wrote to `path`.
fn cpu_seconds(path: &Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    Ok(text
        .split_whitespace()
        .filter_map(|field| field.parse::<f64>().ok())
        .sum())
}

/// `fanner_api_requests_total` by "METHOD route".
fn api_calls(metrics: &str) -> BTreeMap<String, f64> {
    let mut calls = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("fanner_api_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        *calls
            .entry(format!("{} {}", label("method"), label("route")))
            .or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    calls
}

impl Bench {
    fn run(&self, dir: &Path, args: &[&str]) -> anyhow::Result<Duration> {
        self.run_under(None, dir, args)
    }

    /// `run`, under `perf record` into `perf` when given.
    fn run_under(
        &self,
        perf: Option<&Path>,
        dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<Duration> {
        let mut command = match perf {
            Some(data) => {
                let mut perf = Command::new("perf");
                perf.args(["record", "-e", "cpu-clock", "-F", "499", "-g", "-q", "-o"])
                    .arg(data)
                    .arg("--")
                    .arg(&self.terraform);
                perf
            }
            None => Command::new(&self.terraform),
        };
        let started = Instant::now();
        let output = command
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
        let mut args = PLAN.to_vec();
        if !refresh {
            args.push("-refresh=false");
        }
        let (mut times_a, mut times_b) = (Vec::new(), Vec::new());
        for _ in 0..self.runs {
            times_a.push(self.run(a, &args)?);
            times_b.push(self.run(b, &args)?);
        }
        times_a.sort();
        times_b.sort();
        Ok((times_a[self.runs / 2], times_b[self.runs / 2]))
    }

    /// Plans of applied states: medians with and without refresh, then one refresh plan of
    /// each kind profiled.
    async fn applied_plans(&self, fanner: &Path, null: &Path) -> anyhow::Result<()> {
        let (refresh_fanner, refresh_null) = self.median_plans(fanner, null, true)?;
        report("with refresh", refresh_fanner, refresh_null);
        let (cached_fanner, cached_null) = self.median_plans(fanner, null, false)?;
        report("-refresh=false", cached_fanner, cached_null);
        self.profile("refresh plan, one run", fanner, &self.provider_cpu_log)
            .await?;
        self.profile("null_resource, the same", null, &self.null_cpu_log)
            .await
    }

    /// One `terraform plan` under `/usr/bin/time`: prints its CPU seconds (with every provider
    /// it waited for), the share of the provider logging to `provider_log`, and the API calls
    /// it made.
    async fn profile(&self, what: &str, dir: &Path, provider_log: &Path) -> anyhow::Result<()> {
        let total_log = dir.join("terraform.cpu");
        let _ = std::fs::remove_file(&total_log);
        let _ = std::fs::remove_file(provider_log);
        let before = api_calls(&self.api.metrics().await?);
        let started = Instant::now();
        let output = Command::new(TIME)
            .arg("-f")
            .arg("%U %S")
            .arg("-o")
            .arg(&total_log)
            .arg(&self.terraform)
            .args(PLAN)
            .current_dir(dir)
            .env("TF_CLI_CONFIG_FILE", &self.cli_config)
            .env("CHECKPOINT_DISABLE", "1")
            .env_remove("TF_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()?;
        let wall = started.elapsed();
        ensure!(
            output.status.success(),
            "terraform {} failed:\n{}",
            PLAN.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        let after = api_calls(&self.api.metrics().await?);
        let (total, provider) = (cpu_seconds(&total_log)?, cpu_seconds(provider_log)?);
        let calls: Vec<String> = after
            .iter()
            .filter_map(|(route, n)| {
                let made = n - before.get(route).copied().unwrap_or(0.0);
                // The `before` scrape is itself counted.
                (made > 0.0 && !route.ends_with("/metrics")).then(|| format!("{route} ×{made}"))
            })
            .collect();
        println!(
            "  {what:<28} wall {:>6.2} s   CPU {total:>6.2} s   provider CPU {provider:>5.2} s ({:.1} %)   API calls: {}",
            wall.as_secs_f64(),
            100.0 * provider / total.max(f64::EPSILON),
            if calls.is_empty() {
                "none".to_owned()
            } else {
                calls.join(", ")
            }
        );
        Ok(())
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

    let runs = match std::env::var("FANNER_PLAN_RUNS") {
        Ok(n) => n.parse().context("FANNER_PLAN_RUNS must be a count")?,
        Err(_) => DEFAULT_RUNS,
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
    ensure!(
        Path::new(TIME).exists(),
        "{TIME} is missing (Debian package `time`)"
    );
    // Wrappers in the mirror run each provider under /usr/bin/time, which appends each provider
    // process's CPU seconds to a log of its own.
    let timed = |name: &str, binary: &Path| -> anyhow::Result<(PathBuf, PathBuf)> {
        let log = scratch.path().join(format!("{name}.cpu"));
        let wrapper = scratch.path().join(name);
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {TIME} -a -o '{}' -f '%U %S' '{}' \"$@\"\n",
                log.display(),
                binary.display()
            ),
        )?;
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        Ok((wrapper, log))
    };
    let (wrapper, provider_cpu_log) = timed(
        "terraform-provider-fanner",
        &bin_dir()?.join("terraform-provider-fanner"),
    )?;
    install_mirror(&mirror, &wrapper)?;
    let (null_wrapper, null_cpu_log) = timed("terraform-provider-null", &null_provider)?;
    let null_dir = mirror.join("registry.terraform.io/hashicorp/null/2.1.2/linux_amd64");
    std::fs::create_dir_all(&null_dir)?;
    std::fs::copy(
        &null_wrapper,
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
        runs,
        terraform,
        cli_config,
        env: vec![
            ("FANNER_ENDPOINT".to_owned(), server.endpoint.clone()),
            ("FANNER_TOKEN".to_owned(), server.admin_token.clone()),
        ],
        provider_cpu_log,
        null_cpu_log,
        api: admin.clone(),
        perf: std::env::var_os("FANNER_PLAN_PERF").map(PathBuf::from),
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

    println!("terraform plan, {resources} resources, median of {runs}:");
    let (fresh_fanner, fresh_null) = bench.median_plans(&fanner, &null, true)?;
    report("fresh (nothing applied)", fresh_fanner, fresh_null);
    let (fresh_fanner, fresh_bare) = bench.median_plans(&fanner, &bare, true)?;
    report("fresh, bare null_resource", fresh_fanner, fresh_bare);
    bench
        .profile("fresh plan, one run", &fanner, &bench.provider_cpu_log)
        .await?;

    for dir in [&fanner, &null] {
        let took = bench.run(
            dir,
            &[
                "apply",
                "-input=false",
                "-auto-approve",
                "-no-color",
                "-parallelism=10",
            ],
        )?;
        println!(
            "  apply -parallelism=10 {}: {:.2} s, {:.1} objects/s",
            dir.display(),
            took.as_secs_f64(),
            resources as f64 / took.as_secs_f64()
        );
    }
    println!("terraform plan after apply, {resources} resources, median of {runs}:");
    bench.applied_plans(&fanner, &null).await?;

    if let Ok(target) = std::env::var("FANNER_PLAN_GROW_TO") {
        let target: usize = target
            .parse()
            .context("FANNER_PLAN_GROW_TO must be a count")?;
        grow(&admin, &fanner, &null, resources, target).await?;
        for dir in [&fanner, &null] {
            bench.run(
                dir,
                &[
                    "apply",
                    "-refresh-only",
                    "-auto-approve",
                    "-input=false",
                    "-no-color",
                ],
            )?;
        }
        println!(
            "terraform plan, {target} resources (state grown from {resources} applied), median of {runs}:"
        );
        bench.applied_plans(&fanner, &null).await?;
    }
    if let Some(folder) = &bench.perf {
        std::fs::create_dir_all(folder)?;
        for (name, dir) in [("fanner", &fanner), ("null", &null)] {
            let data = folder.join(format!("{name}.data"));
            let took = bench.run_under(Some(&data), dir, &PLAN)?;
            println!(
                "  perf record of a refresh plan, {name}: {:.2} s, in {}",
                took.as_secs_f64(),
                data.display()
            );
        }
    }
    Ok(())
}

/// Grows both workdirs from `from` to `to` instances: subscriptions created through the API,
/// state instances copied from the first applied one with each object's own values, and the
/// configuration's `count` raised to match.
async fn grow(
    admin: &api::Client,
    fanner: &Path,
    null: &Path,
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    use serde_json::{Value, json};
    let mut created = Vec::with_capacity(to.saturating_sub(from));
    for chunk in (from..to).collect::<Vec<_>>().chunks(32) {
        let batch = chunk.iter().map(|i| async move {
            admin
                .create_subscription(&api::CreateSubscription {
                    stream: format!("bench-{}", i % STREAMS),
                    events: vec!["bench_event".to_owned()],
                    ..Default::default()
                })
                .await
        });
        for subscription in futures::future::join_all(batch).await {
            created.push(subscription?);
        }
    }
    let grow_state = |dir: &Path, instance: &dyn Fn(usize, &mut Value)| -> anyhow::Result<()> {
        let path = dir.join("terraform.tfstate");
        let mut state: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let instances = state["resources"][0]["instances"]
            .as_array_mut()
            .context("an applied state")?;
        let template = instances.first().context("an applied instance")?.clone();
        for i in from..to {
            let mut copy = template.clone();
            copy["index_key"] = json!(i);
            instance(i, &mut copy);
            instances.push(copy);
        }
        state["serial"] = json!(state["serial"].as_i64().unwrap_or(0) + 1);
        std::fs::write(&path, serde_json::to_vec(&state)?)?;
        let hcl = std::fs::read_to_string(dir.join("main.tf"))?;
        std::fs::write(
            dir.join("main.tf"),
            hcl.replace(&format!("count = {from}\n"), &format!("count = {to}\n"))
                .replace(&format!("count  = {from}\n"), &format!("count  = {to}\n")),
        )?;
        Ok(())
    };
    grow_state(fanner, &|i, copy| {
        let subscription = &created[i - from];
        let attributes = &mut copy["attributes"];
        attributes["id"] = json!(subscription.id);
        attributes["stream"] = json!(subscription.stream);
        if copy["identity"].is_object() {
            copy["identity"] = json!({ "id": subscription.id });
        }
    })?;
    grow_state(null, &|i, copy| {
        copy["attributes"]["id"] = json!(format!("{}", 7_000_000_000_000_000_000u64 + i as u64));
        copy["attributes"]["triggers"] =
            json!({ "stream": format!("bench-{}", i % STREAMS), "events": "bench_event" });
    })?;
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
