//! History on demand, end to end on the embedded backend: publishes N events (default
//! 1,000,000), then `terraform apply`s a `fanner_subscription` with `start_from = "earliest"` on
//! the newest Terraform in FANNER_TERRAFORM_BINS and polls the subscription until its hydration
//! is done. Prints the publish rate, the apply's duration, the time from the apply's start to
//! `done` and the delivery rate. Asserts nothing, but exits non-zero when the hydration fails or
//! is not done within FANNER_HYDRATION_LIMIT_S (default 1800). `FANNER_HYDRATION_EVENTS` changes
//! N.
//!
//! cargo build --release --bins && cargo bench -p acceptance-tests --bench hydration

use std::time::{Duration, Instant};

use acceptance_tests::{Server, Workspace, terraforms};
use anyhow::{Context, bail, ensure};

const DEFAULT_EVENTS: usize = 1_000_000;
const DEFAULT_LIMIT_S: u64 = 1800;
/// Events per publish request: the API's batch.
const BATCH: usize = 500;
const EVENT: &str = "card_swiped";

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: usize = env_number("FANNER_HYDRATION_EVENTS", DEFAULT_EVENTS);
    let limit = Duration::from_secs(env_number("FANNER_HYDRATION_LIMIT_S", DEFAULT_LIMIT_S));
    let terraform = terraforms()
        .pop()
        .context("set FANNER_TERRAFORM_BINS (the `export` lines of scripts/setup-tools)")?;
    let server = Server::start().await?;
    let (token, fraud) = server.principal("fraud").await?;
    fraud
        .create_event(&api::CreateEvent {
            name: EVENT.to_owned(),
            classification: api::Classification::Internal,
            description: String::new(),
            owner: None,
        })
        .await?;

    let started = Instant::now();
    let mut published = 0;
    while published < events {
        let n = BATCH.min(events - published);
        let batch = (published..published + n)
            .map(|i| api::PublishEvent {
                event: EVENT.to_owned(),
                payload: Some(serde_json::json!({ "n": i, "card": "4111-xxxx" })),
                ..api::PublishEvent::default()
            })
            .collect();
        let response = fraud
            .publish(&api::PublishRequest { events: batch })
            .await?;
        ensure!(response.accepted == n, "a publish was not fully accepted");
        published += n;
    }
    let publish_took = started.elapsed();
    println!(
        "published {events} events in {:.1} s ({:.0} events/s)",
        publish_took.as_secs_f64(),
        events as f64 / publish_took.as_secs_f64()
    );

    let ws = Workspace::new(&terraform, &server, &token)?;
    ws.write(
        r#"resource "fanner_stream" "backfill" {
  name        = "fraud-backfill"
  shard_count = 4
}

resource "fanner_subscription" "backfill" {
  stream     = fanner_stream.backfill.name
  events     = ["card_swiped"]
  start_from = "earliest"
}
"#,
    )?;
    ws.init()?;
    let applying = Instant::now();
    ws.apply()?;
    let apply_took = applying.elapsed();
    let id = ws.state_of("fanner_subscription.backfill")?["id"]
        .as_str()
        .context("no id")?
        .to_owned();
    let hydration = loop {
        let subscription = fraud.get_subscription(&id).await?.context("gone")?;
        if subscription.hydration.state.is_finished() {
            break subscription.hydration;
        }
        if applying.elapsed() > limit {
            bail!(
                "hydration not done within {limit:?}: {:?}",
                subscription.hydration
            );
        }
        // The figure's resolution: a tenth of a second is plenty next to minutes.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done_after = applying.elapsed();
    println!(
        "terraform apply ({}) took {:.2} s; hydration {} after {:.1} s: {} events delivered \
         ({:.0} events/s)",
        ws.version_label(),
        apply_took.as_secs_f64(),
        hydration.state.as_str(),
        done_after.as_secs_f64(),
        hydration.events_delivered,
        hydration.events_delivered as f64 / done_after.as_secs_f64()
    );
    if hydration.state != api::HydrationState::Done {
        bail!("hydration failed: {:?}", hydration.error);
    }
    Ok(())
}
