//! History on demand through Terraform: a grant's `history_from` and a subscription's
//! `start_from` round-trip and plan empty, a new `start_from` plans an update that warns of the
//! replay, bad values are refused at plan time naming the attribute, and (with the data plane)
//! the history published before `terraform apply` arrives in the stream, followed by live events.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use acceptance_tests::{Server, Workspace, assert_plan, check_import, enabled, terraforms};
use anyhow::{Context, ensure};
use api::{HistoryFrom, HydrationKind, HydrationState, StartFrom};

const UPDATE: &str = "0 to add, 1 to change, 0 to destroy";

fn at(text: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)?.to_utc())
}

#[tokio::test]
async fn grant_history_from_round_trips() -> anyhow::Result<()> {
    if !enabled("grant_history_from_round_trips") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let admin = server.admin()?;
        server.principal("fraud").await?;
        server.principal("risk").await?;
        let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
        let config = |history_from: Option<&str>| {
            let line = history_from
                .map(|h| format!("  history_from = \"{h}\"\n"))
                .unwrap_or_default();
            format!(
                r#"resource "fanner_event" "card" {{
  name           = "card_swiped"
  classification = "internal"
}}

resource "fanner_grant" "fraud" {{
  event   = fanner_event.card.name
  grantee = "fraud"
  reason  = "Fraud scoring."
{line}}}

resource "fanner_grant" "risk" {{
  event   = fanner_event.card.name
  grantee = "risk"
  reason  = "Risk reviews."
}}

data "fanner_access" "card" {{
  event      = fanner_event.card.name
  depends_on = [fanner_grant.fraud, fanner_grant.risk]
}}
"#
            )
        };
        // An offset and fractional digits the control plane normalises stay as written.
        let written = "2026-01-01T01:00:00.000+01:00";
        ws.write(&config(Some(written)))?;
        ws.init()?;
        ws.apply()?;
        ws.assert_no_changes("create")?;
        let fraud = ws.state_of("fanner_grant.fraud")?;
        ensure!(fraud["history_from"] == written, "state {fraud}");
        let id = fraud["id"].as_str().context("no id")?.to_owned();
        let grant = admin.get_grant(&id).await?.context("grant gone")?;
        ensure!(grant.history_from == HistoryFrom::At(at("2026-01-01T00:00:00Z")?));

        // Deny by default: without history_from, the grant's creation time.
        let risk = ws.state_of("fanner_grant.risk")?;
        let risk_grant = admin
            .get_grant(risk["id"].as_str().context("no id")?)
            .await?
            .context("grant gone")?;
        ensure!(
            risk_grant.history_from == HistoryFrom::At(risk_grant.created_at)
                && risk["history_from"].as_str().map(at).transpose()?
                    == Some(risk_grant.created_at),
            "state {risk}"
        );
        check_import(&ws, "fanner_grant.risk", &risk_grant.id)?;

        // The reviewer sees each grant's bound in data "fanner_access".
        let access = ws.state_of("data.fanner_access.card")?;
        let bounds: HashMap<&str, &str> = access["grants"]
            .as_array()
            .context("no grants")?
            .iter()
            .filter_map(|g| Some((g["grantee"].as_str()?, g["history_from"].as_str()?)))
            .collect();
        ensure!(
            bounds.get("fraud") == Some(&"2026-01-01T00:00:00Z") && bounds.contains_key("risk"),
            "access {access}"
        );

        // Widened in place.
        ws.write(&config(Some("unbounded")))?;
        assert_plan(&ws, UPDATE, "widening history_from")?;
        ws.apply()?;
        ws.assert_no_changes("widening history_from")?;
        ensure!(ws.state_of("fanner_grant.fraud")?["id"] == id.as_str());
        let grant = admin.get_grant(&id).await?.context("grant gone")?;
        ensure!(grant.history_from == HistoryFrom::Unbounded);

        // No longer configured: the grant keeps its bound, and nothing is planned.
        ws.write(&config(None))?;
        ws.assert_no_changes("removing history_from from the configuration")?;

        ws.write(&config(Some("since forever")))?;
        let run = ws.plan()?;
        ensure!(
            run.code == 1
                && run.stderr.contains("Invalid history_from")
                && run.stderr.contains("history_from"),
            "a bad history_from was not refused at plan time ({}):\n{run}",
            ws.version_label()
        );
        ws.write(&config(None))?;
        ws.destroy()?;
    }
    Ok(())
}

fn subscription_config(start_from: Option<&str>) -> String {
    let line = start_from
        .map(|s| format!("  start_from = \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        r#"resource "fanner_stream" "signals" {{
  name = "fraud-signals"
}}

resource "fanner_subscription" "signals" {{
  stream = fanner_stream.signals.name
  events = ["card_swiped"]
{line}}}
"#
    )
}

#[tokio::test]
async fn subscription_start_from_applies_and_plans_empty() -> anyhow::Result<()> {
    if !enabled("subscription_start_from_applies_and_plans_empty") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let (token, fraud) = server.principal("fraud").await?;
        fraud
            .create_event(&api::CreateEvent {
                name: "card_swiped".to_owned(),
                classification: api::Classification::Internal,
                description: String::new(),
                owner: None,
            })
            .await?;
        let ws = Workspace::new(&terraform, &server, &token)?;

        ws.write(&subscription_config(Some("yesterday")))?;
        ws.init()?;
        let run = ws.plan()?;
        ensure!(
            run.code == 1
                && run.stderr.contains("Invalid start_from")
                && run.stderr.contains("start_from")
                && run.stderr.contains("yesterday"),
            "a bad start_from was not refused at plan time ({}):\n{run}",
            ws.version_label()
        );

        ws.write(&subscription_config(Some("earliest")))?;
        ws.apply()?;
        ws.assert_no_changes("create")?;
        let state = ws.state_of("fanner_subscription.signals")?;
        let hydration = &state["hydration"];
        ensure!(
            state["start_from"] == "earliest"
                && hydration["from"] == "earliest"
                && ["pending", "running", "done"]
                    .iter()
                    .any(|s| hydration["state"] == *s),
            "state {state}"
        );
        let id = state["id"].as_str().context("no id")?.to_owned();
        let subscription = fraud.get_subscription(&id).await?.context("gone")?;
        ensure!(
            subscription.start_from == StartFrom::Earliest
                && subscription.hydration.kind == HydrationKind::Start
        );

        // Progress, as the data plane moves it, is refreshed but never planned.
        ws.assert_no_changes("hydration progress")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !fraud
            .get_subscription(&id)
            .await?
            .context("gone")?
            .hydration
            .state
            .is_finished()
        {
            ensure!(
                std::time::Instant::now() < deadline,
                "the hydration did not finish"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        ws.ok(&[
            "apply",
            "-refresh-only",
            "-input=false",
            "-auto-approve",
            "-no-color",
        ])?;
        let refreshed = ws.state_of("fanner_subscription.signals")?;
        let now = fraud
            .get_subscription(&id)
            .await?
            .context("gone")?
            .hydration;
        ensure!(
            refreshed["hydration"]["state"] == now.state.as_str()
                && refreshed["hydration"]["events_delivered"].as_u64()
                    == Some(now.events_delivered),
            "the refreshed state shows the progress ({now:?}): {refreshed}"
        );
        ws.assert_no_changes("refreshing the progress")?;
        check_import(&ws, "fanner_subscription.signals", &id)?;

        // A new start is an in-place update, and the plan says that it replays.
        let since = "2026-01-01T00:00:00Z";
        ws.write(&subscription_config(Some(since)))?;
        let run = assert_plan(&ws, UPDATE, "changing start_from")?;
        let output = format!("{}{}", run.stdout, run.stderr);
        ensure!(
            output.contains("Applying replays history since 2026-01-01T00:00:00Z")
                && output.contains("fraud-signals"),
            "the plan must warn that the apply replays ({}):\n{run}",
            ws.version_label()
        );
        ws.apply()?;
        ws.assert_no_changes("changing start_from")?;
        let subscription = fraud.get_subscription(&id).await?.context("gone")?;
        ensure!(
            subscription.start_from == StartFrom::At(at(since)?)
                && subscription.hydration.kind == HydrationKind::Replay
                && subscription.hydration.from == Some(at(since)?),
            "{subscription:?}"
        );
        ensure!(ws.state_of("fanner_subscription.signals")?["id"] == id.as_str());

        // Back to `now`: live only from here, nothing replayed.
        ws.write(&subscription_config(None))?;
        let run = assert_plan(&ws, UPDATE, "returning to the default start")?;
        ensure!(!run.stdout.contains("Applying replays"), "{run}");
        ws.apply()?;
        ws.assert_no_changes("returning to the default start")?;
        let subscription = fraud.get_subscription(&id).await?.context("gone")?;
        ensure!(subscription.start_from == StartFrom::Now);
        ws.destroy()?;
    }
    Ok(())
}

/// Distinct event ids on `stream` and how many records carried a `history_id`.
async fn stream_contents(
    client: &api::Client,
    stream: &str,
    expected: usize,
) -> anyhow::Result<(HashMap<String, usize>, usize)> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut from_history = 0;
    client
        .tail(
            stream,
            true,
            Some(u64::try_from(2 * expected)?),
            Some(Duration::from_millis(500)),
            |record| {
                from_history += usize::from(record.envelope.history_id.is_some());
                *seen.entry(record.envelope.event_id).or_default() += 1;
                true
            },
        )
        .await?;
    Ok((seen, from_history))
}

async fn publish(client: &api::Client, n: usize, label: &str) -> anyhow::Result<()> {
    let events = (0..n)
        .map(|i| api::PublishEvent {
            event: "card_swiped".to_owned(),
            payload: Some(serde_json::json!({ "n": i, "when": label })),
            ..api::PublishEvent::default()
        })
        .collect();
    let published = client.publish(&api::PublishRequest { events }).await?;
    ensure!(published.accepted == n);
    Ok(())
}

/// Needs the hydration data plane in `fanner serve`: events published before the apply arrive
/// in the new stream, marked as history, then live events follow, each exactly once; a stream
/// that starts `now` gets only the live ones.
#[tokio::test]
async fn history_arrives_in_the_stream() -> anyhow::Result<()> {
    if !enabled("history_arrives_in_the_stream") {
        return Ok(());
    }
    let (before, during) = (200, 50);
    for terraform in terraforms() {
        let server = Server::start().await?;
        let (token, fraud) = server.principal("fraud").await?;
        fraud
            .create_event(&api::CreateEvent {
                name: "card_swiped".to_owned(),
                classification: api::Classification::Internal,
                description: String::new(),
                owner: None,
            })
            .await?;
        publish(&fraud, before, "before").await?;
        let ws = Workspace::new(&terraform, &server, &token)?;
        ws.write(&format!(
            r#"{}
resource "fanner_stream" "live" {{
  name = "fraud-live"
}}

resource "fanner_subscription" "live" {{
  stream = fanner_stream.live.name
  events = ["card_swiped"]
}}
"#,
            subscription_config(Some("earliest"))
        ))?;
        ws.init()?;
        ws.apply()?;
        let id = ws.state_of("fanner_subscription.signals")?["id"]
            .as_str()
            .context("no id")?
            .to_owned();
        publish(&fraud, during, "during").await?;

        let started = Instant::now();
        let limit = Duration::from_secs(120);
        let hydration = loop {
            let subscription = fraud.get_subscription(&id).await?.context("gone")?;
            if subscription.hydration.state.is_finished() {
                break subscription.hydration;
            }
            ensure!(
                started.elapsed() < limit,
                "hydration not finished within {limit:?} ({}): {:?}",
                ws.version_label(),
                subscription.hydration
            );
            // Progress comes from the data plane; asking twice a second is enough.
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        ensure!(
            hydration.state == HydrationState::Done
                && hydration.events_delivered >= u64::try_from(before)?,
            "{hydration:?}"
        );
        let total = before + during;
        let (seen, from_history) = loop {
            let (seen, from_history) = stream_contents(&fraud, "fraud-signals", total).await?;
            if seen.len() == total || started.elapsed() >= limit {
                break (seen, from_history);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        ensure!(
            seen.len() == total && seen.values().all(|&copies| copies == 1),
            "fraud-signals holds {} distinct of {total} events, {} repeated ({})",
            seen.len(),
            seen.values().filter(|&&c| c > 1).count(),
            ws.version_label()
        );
        ensure!(
            from_history >= before,
            "{from_history} records carry a history_id; the {before} published before the apply \
             must"
        );
        // Live delivery to a new subscription begins once the engine has its route, so only
        // the absence of history is exact here.
        let (live, live_history) = stream_contents(&fraud, "fraud-live", during).await?;
        ensure!(
            live.len() <= during && live_history == 0,
            "a stream that starts now gets no history: {} events, {live_history} from history",
            live.len()
        );
        ws.assert_no_changes("hydration")?;
        ws.destroy()?;
    }
    Ok(())
}
