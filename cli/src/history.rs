//! History on demand from the shell: `subscription replay`, and `--wait` on a subscription's
//! hydration (a progress spinner on a terminal) for `create`, `update` and `replay`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use api::{Client, Hydration, HydrationState, ReplaySubscription, StartFrom, Subscription};
use chrono::{DateTime, Utc};

use crate::Connection;
use crate::commands::{client, print_subscription};
use crate::output::{self, fields, opt_time};

/// How often `--wait` asks for progress: often enough for a live count, rare enough to be
/// nothing next to the API's other traffic.
const POLL: Duration = Duration::from_millis(500);

/// The hydration as `key: value` lines beside a subscription's fields; just `none` when no
/// history was ever asked for.
pub fn hydration_fields(hydration: &Hydration) -> Vec<(&'static str, String)> {
    if hydration.id.is_none() {
        return vec![("hydration", HydrationState::None.as_str().to_owned())];
    }
    let mut pairs = vec![
        ("hydration", hydration.state.as_str().to_owned()),
        ("hydration_id", hydration.id.clone().unwrap_or_default()),
        ("hydration_kind", kind(hydration).to_owned()),
        (
            "hydration_from",
            hydration
                .from
                .as_ref()
                .map_or_else(|| "earliest".to_owned(), output::time),
        ),
    ];
    if hydration.to.is_some() {
        pairs.push(("hydration_to", opt_time(&hydration.to)));
    }
    pairs.push(("events_delivered", hydration.events_delivered.to_string()));
    if let Some(error) = &hydration.error {
        pairs.push(("hydration_error", error.clone()));
    }
    if hydration.finished_at.is_some() {
        pairs.push(("hydration_finished", opt_time(&hydration.finished_at)));
    }
    pairs
}

fn kind(hydration: &Hydration) -> &'static str {
    match hydration.kind {
        api::HydrationKind::Start => "start",
        api::HydrationKind::Replay => "replay",
    }
}

/// One short cell for tables: `running (1200)`, `done (5000)`, `none`.
pub fn hydration_cell(hydration: &Hydration) -> String {
    match hydration.state {
        HydrationState::None => "none".to_owned(),
        state => format!("{} ({})", state.as_str(), hydration.events_delivered),
    }
}

/// Polls the subscription until the hydration `id` is done or failed, showing a spinner with the
/// events delivered so far when stderr is a terminal. Returns the subscription as last read.
pub async fn wait(client: &Client, subscription: &str, id: &str) -> anyhow::Result<Subscription> {
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} hydration {msg}: {pos} events delivered ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let result = loop {
        let current = client
            .get_subscription(subscription)
            .await?
            .with_context(|| format!("subscription {subscription:?} was deleted while waiting"))?;
        let hydration = &current.hydration;
        if hydration.id.as_deref() != Some(id) {
            break Err(anyhow::anyhow!(
                "hydration {id} was superseded by {} before it finished",
                hydration.id.as_deref().unwrap_or("none")
            ));
        }
        if let Some(bar) = &progress {
            bar.set_message(hydration.state.as_str());
            bar.set_position(hydration.events_delivered);
        }
        if hydration.state.is_finished() {
            break Ok(current);
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    result
}

/// Waits (with `--wait`) for the subscription's hydration, prints the subscription, and fails
/// with the hydration's error when it failed.
pub async fn finish(
    conn: &Connection,
    client: &Client,
    subscription: Subscription,
    wait_for_it: bool,
) -> anyhow::Result<ExitCode> {
    let subscription = match (&subscription.hydration.id, wait_for_it) {
        (Some(id), true) if !subscription.hydration.state.is_finished() => {
            wait(client, &subscription.id, id).await?
        }
        _ => subscription,
    };
    print_subscription(conn, &subscription)?;
    failed(&subscription.hydration)
}

fn failed(hydration: &Hydration) -> anyhow::Result<ExitCode> {
    if hydration.state == HydrationState::Failed {
        bail!(
            "hydration {} failed: {}",
            hydration.id.as_deref().unwrap_or_default(),
            hydration.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `fanner subscription replay ID --from T [--to T] [--wait]`.
pub async fn replay(
    conn: &Connection,
    id: &str,
    from: StartFrom,
    to: Option<DateTime<Utc>>,
    wait_for_it: bool,
) -> anyhow::Result<ExitCode> {
    if from == StartFrom::Now {
        bail!("--from must be `earliest` or an RFC 3339 instant: `now` replays nothing");
    }
    let client = client(conn)?;
    let mut hydration = client
        .replay_subscription(id, &ReplaySubscription { from, to })
        .await?;
    if wait_for_it && let Some(hydration_id) = hydration.id.clone() {
        hydration = wait(&client, id, &hydration_id).await?.hydration;
    }
    if conn.json {
        output::json(&hydration)?;
    } else {
        let mut pairs = vec![("subscription", id.to_owned())];
        pairs.extend(hydration_fields(&hydration));
        if let Some(by) = &hydration.requested_by {
            pairs.push(("requested_by", by.clone()));
        }
        fields(&pairs);
    }
    failed(&hydration)
}
