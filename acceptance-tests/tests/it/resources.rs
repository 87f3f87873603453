use std::collections::BTreeMap;

use acceptance_tests::{Server, Workspace, assert_plan, check_import, enabled, terraforms};
use anyhow::{Context, ensure};

use crate::days_ahead;

const UPDATE: &str = "0 to add, 1 to change, 0 to destroy";
const CREATE: &str = "1 to add, 0 to change, 0 to destroy";
const REPLACE: &str = "1 to add, 0 to change, 1 to destroy";

fn id_of(ws: &Workspace, address: &str) -> anyhow::Result<String> {
    Ok(ws.state_of(address)?["id"]
        .as_str()
        .context("no id in state")?
        .to_owned())
}

#[tokio::test]
async fn event_lifecycle() -> anyhow::Result<()> {
    if !enabled("event_lifecycle") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let admin = server.admin()?;
        let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
        let event = |classification: &str, description: &str, name: &str| {
            format!(
                "resource \"fanner_event\" \"signup\" {{\n  name           = \"{name}\"\n  classification = \"{classification}\"\n  description    = \"{description}\"\n}}\n"
            )
        };
        ws.write(&event(
            "internal",
            "A user finished signup.",
            "user_signed_up",
        ))?;
        ws.init()?;
        ws.apply()?;
        ws.assert_no_changes("create")?;
        let created = admin
            .get_event("user_signed_up")
            .await?
            .context("event not created")?;
        ensure!(created.owner == "admin" && created.description == "A user finished signup.");

        check_import(&ws, "fanner_event.signup", "user_signed_up")?;

        ws.write(&event(
            "pii",
            "Signup, with the user's email.",
            "user_signed_up",
        ))?;
        assert_plan(&ws, UPDATE, "changing classification and description")?;
        ws.apply()?;
        ws.assert_no_changes("an in-place update")?;
        let updated = admin
            .get_event("user_signed_up")
            .await?
            .context("event gone")?;
        ensure!(updated.classification == api::Classification::Pii);

        admin
            .update_event(
                "user_signed_up",
                &api::UpdateEvent {
                    classification: api::Classification::Pii,
                    description: "Changed by hand.".to_owned(),
                    revision: None,
                },
            )
            .await?;
        assert_plan(&ws, UPDATE, "an out-of-band description change")?;
        ws.apply()?;
        ws.assert_no_changes("repairing drift")?;

        admin.delete_event("user_signed_up").await?;
        assert_plan(&ws, CREATE, "an out-of-band delete")?;
        ws.apply()?;
        ws.assert_no_changes("re-creating")?;

        ws.write(&event(
            "pii",
            "Signup, with the user's email.",
            "user_registered",
        ))?;
        assert_plan(&ws, REPLACE, "renaming")?;
        ws.apply()?;
        ws.assert_no_changes("replacing")?;

        ws.destroy()?;
        ensure!(admin.get_event("user_registered").await?.is_none());
    }
    Ok(())
}

#[tokio::test]
async fn grant_lifecycle() -> anyhow::Result<()> {
    if !enabled("grant_lifecycle") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let admin = server.admin()?;
        server.principal("fraud").await?;
        server.principal("risk").await?;
        let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
        let (first, second) = (days_ahead(30), days_ahead(60));
        let config = |grantee: &str, reason: &str, expires_at: &str| {
            format!(
                r#"resource "fanner_event" "signup" {{
  name           = "user_signed_up"
  classification = "pii"
}}

resource "fanner_grant" "fraud_reads_signup" {{
  event      = fanner_event.signup.name
  grantee    = "{grantee}"
  reason     = "{reason}"
  expires_at = "{expires_at}"
}}
"#
            )
        };
        ws.write(&config("fraud", "Fraud scoring at signup.", &first))?;
        ws.init()?;
        ws.apply()?;
        ws.assert_no_changes("create")?;
        let id = id_of(&ws, "fanner_grant.fraud_reads_signup")?;
        let state = ws.state_of("fanner_grant.fraud_reads_signup")?;
        ensure!(
            state["status"] == "active"
                && state["granted_by"] == "admin"
                && state["expired"] == false
        );

        check_import(&ws, "fanner_grant.fraud_reads_signup", &id)?;

        ws.write(&config("fraud", "Fraud scoring, all year.", &second))?;
        assert_plan(&ws, UPDATE, "changing reason and expires_at")?;
        ws.apply()?;
        ws.assert_no_changes("an in-place update")?;
        ensure!(id_of(&ws, "fanner_grant.fraud_reads_signup")? == id);

        admin
            .update_grant(
                &id,
                &api::UpdateGrant {
                    reason: "Changed by hand.".to_owned(),
                    expires_at: Some(chrono::DateTime::parse_from_rfc3339(&second)?.into()),
                    history_from: None,
                    revision: None,
                    ..Default::default()
                },
            )
            .await?;
        assert_plan(&ws, UPDATE, "an out-of-band reason change")?;
        ws.apply()?;
        ws.assert_no_changes("repairing drift")?;

        admin.revoke_grant(&id).await?;
        assert_plan(&ws, CREATE, "an out-of-band revoke")?;
        ws.apply()?;
        ws.assert_no_changes("re-granting")?;

        ws.write(&config("risk", "Fraud scoring, all year.", &second))?;
        assert_plan(&ws, REPLACE, "changing the grantee")?;
        ws.apply()?;

        // An expiry beyond 365 days on a pii event is refused at plan time, naming the attribute.
        ws.write(&config(
            "risk",
            "Fraud scoring, all year.",
            &days_ahead(400),
        ))?;
        let run = ws.plan()?;
        ensure!(
            run.code == 1 && run.stderr.contains("365 days") && run.stderr.contains("expires_at"),
            "an expiry beyond 365 days on a pii event was not refused at plan time:\n{run}"
        );

        ws.write(&config("risk", "Fraud scoring, all year.", &second))?;
        ws.destroy()?;
        let grants = admin.list_grants(Some("user_signed_up"), None).await?;
        ensure!(grants.iter().all(|g| g.status != api::GrantStatus::Active));
    }
    Ok(())
}

#[tokio::test]
async fn stream_lifecycle() -> anyhow::Result<()> {
    if !enabled("stream_lifecycle") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let admin = server.admin()?;
        let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
        ws.write(
            r#"resource "fanner_stream" "fraud_signals" {
  name            = "fraud-signals"
  shard_count     = 2
  retention_hours = 48
  tags            = { team = "fraud" }
}
"#,
        )?;
        ws.init()?;
        ws.apply()?;
        ws.assert_no_changes("create")?;
        let state = ws.state_of("fanner_stream.fraud_signals")?;
        ensure!(
            state["status"] == "active" && state["owner"] == "admin",
            "state {state}"
        );
        ensure!(state["backing_id"].as_str().is_some_and(|b| !b.is_empty()));

        check_import(&ws, "fanner_stream.fraud_signals", "fraud-signals")?;

        ws.write(
            r#"resource "fanner_stream" "fraud_signals" {
  name            = "fraud-signals"
  shard_count     = 3
  retention_hours = 72
  tags            = { team = "fraud", tier = "gold" }
}
"#,
        )?;
        assert_plan(&ws, UPDATE, "changing shards, retention and tags")?;
        ws.apply()?;
        ws.assert_no_changes("an in-place update")?;
        let stream = admin
            .get_stream("fraud-signals")
            .await?
            .context("stream gone")?;
        ensure!(stream.shard_count == 3 && stream.retention_hours == 72 && stream.tags.len() == 2);

        // Dropping the optional arguments plans their defaults, then nothing.
        ws.write(
            "resource \"fanner_stream\" \"fraud_signals\" {\n  name = \"fraud-signals\"\n}\n",
        )?;
        assert_plan(&ws, UPDATE, "removing optional arguments")?;
        ws.apply()?;
        ws.assert_no_changes("returning to defaults")?;
        let stream = admin
            .get_stream("fraud-signals")
            .await?
            .context("stream gone")?;
        ensure!(stream.shard_count == 1 && stream.retention_hours == 24 && stream.tags.is_empty());

        admin
            .update_stream(
                "fraud-signals",
                &api::UpdateStream {
                    shard_count: 4,
                    retention_hours: 24,
                    tags: BTreeMap::new(),
                    revision: None,
                },
            )
            .await?;
        assert_plan(&ws, UPDATE, "an out-of-band resize")?;
        ws.apply()?;
        ws.assert_no_changes("repairing drift")?;

        admin.delete_stream("fraud-signals").await?;
        assert_plan(&ws, CREATE, "an out-of-band delete")?;
        ws.apply()?;

        ws.write(
            "resource \"fanner_stream\" \"fraud_signals\" {\n  name = \"fraud-signals-v2\"\n}\n",
        )?;
        assert_plan(&ws, REPLACE, "renaming")?;
        ws.apply()?;
        ws.assert_no_changes("replacing")?;

        ws.destroy()?;
        ensure!(admin.get_stream("fraud-signals-v2").await?.is_none());
    }
    Ok(())
}

#[tokio::test]
async fn subscription_lifecycle() -> anyhow::Result<()> {
    if !enabled("subscription_lifecycle") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let (token, fraud) = server.principal("fraud").await?;
        let ws = Workspace::new(&terraform, &server, &token)?;
        let config = |events: &str, stream: &str| {
            format!(
                r#"resource "fanner_event" "flagged" {{
  name           = "account_flagged"
  classification = "internal"
}}

resource "fanner_event" "cleared" {{
  name           = "account_cleared"
  classification = "internal"
}}

resource "fanner_stream" "signals" {{
  name = "{stream}"
}}

resource "fanner_subscription" "signals" {{
  stream = fanner_stream.signals.name
  events = [{events}]
}}
"#
            )
        };
        ws.write(&config("fanner_event.flagged.name", "fraud-signals"))?;
        ws.init()?;
        ws.apply()?;
        ws.assert_no_changes("create")?;
        let id = id_of(&ws, "fanner_subscription.signals")?;
        let state = ws.state_of("fanner_subscription.signals")?;
        ensure!(
            state["owner"] == "fraud" && state["status"] == "active",
            "state {state}"
        );

        check_import(&ws, "fanner_subscription.signals", &id)?;

        ws.write(&config(
            "fanner_event.cleared.name, fanner_event.flagged.name",
            "fraud-signals",
        ))?;
        assert_plan(&ws, UPDATE, "adding an event")?;
        ws.apply()?;
        ws.assert_no_changes("an in-place update")?;
        ensure!(id_of(&ws, "fanner_subscription.signals")? == id);
        let subscription = fraud.get_subscription(&id).await?.context("gone")?;
        ensure!(subscription.events == ["account_cleared", "account_flagged"]);

        fraud
            .update_subscription(
                &id,
                &api::UpdateSubscription {
                    events: vec!["account_flagged".to_owned()],
                    start_from: None,
                    revision: None,
                    ..Default::default()
                },
            )
            .await?;
        assert_plan(&ws, UPDATE, "an out-of-band change of events")?;
        ws.apply()?;
        ws.assert_no_changes("repairing drift")?;

        fraud.delete_subscription(&id).await?;
        assert_plan(&ws, CREATE, "an out-of-band delete")?;
        ws.apply()?;
        ws.assert_no_changes("re-creating")?;

        ws.write(&config(
            "fanner_event.cleared.name, fanner_event.flagged.name",
            "fraud-signals-v2",
        ))?;
        let run = ws.plan()?;
        ensure!(
            run.code == 2 && run.stdout.contains("2 to add, 0 to change, 2 to destroy"),
            "a new stream must replace the stream and its subscription:\n{run}"
        );
        ws.apply()?;
        ws.assert_no_changes("replacing")?;

        ws.destroy()?;
        ensure!(fraud.list_subscriptions(None).await?.is_empty());
    }
    Ok(())
}
