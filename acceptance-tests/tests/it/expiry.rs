//! Expiring access in plans: warnings on `expires_at` and on a subscription's `events` within
//! `expiry_warning_days`, and a grant that expired since the last apply as drift.

use std::time::Duration;

use acceptance_tests::{Server, Workspace, enabled, terraforms};
use anyhow::{Context, ensure};
use serde_json::Value as Json;

use crate::days_ahead;

fn config(warning_days: Option<u32>, grant_expires_at: &str) -> String {
    let provider = warning_days
        .map(|days| format!("provider \"fanner\" {{\n  expiry_warning_days = {days}\n}}\n\n"))
        .unwrap_or_default();
    format!(
        r#"{provider}resource "fanner_event" "scored" {{
  name           = "fraud_scored"
  classification = "internal"
}}

resource "fanner_grant" "to_growth" {{
  event      = fanner_event.scored.name
  grantee    = "growth"
  reason     = "Growth excludes fraudulent signups from funnels."
  expires_at = "{grant_expires_at}"
}}

resource "fanner_stream" "signals" {{
  name = "fraud-signals"
}}

resource "fanner_subscription" "signals" {{
  stream = fanner_stream.signals.name
  events = ["user_signed_up"]
}}
"#
    )
}

/// The day part of an RFC 3339 instant, as the warnings name it.
fn day(instant: &str) -> &str {
    instant.get(..10).unwrap_or(instant)
}

#[tokio::test]
async fn expiry_warnings_and_expired_grant_drift() -> anyhow::Result<()> {
    if !enabled("expiry_warnings_and_expired_grant_drift") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let (fraud_token, fraud) = server.principal("fraud").await?;
        let (_, growth) = server.principal("growth").await?;
        server.principal("risk").await?;
        growth
            .create_event(&api::CreateEvent {
                name: "user_signed_up".to_owned(),
                classification: api::Classification::Internal,
                description: String::new(),
                owner: None,
            })
            .await?;
        let growth_grant_ends = days_ahead(20);
        growth
            .create_grant(&api::CreateGrant {
                event: "user_signed_up".to_owned(),
                grantee: "fraud".to_owned(),
                reason: "Fraud scoring at signup.".to_owned(),
                expires_at: Some(chrono::DateTime::parse_from_rfc3339(&growth_grant_ends)?.into()),
                ..Default::default()
            })
            .await?;
        let ws = Workspace::new(&terraform, &server, &fraud_token)?;
        let own_grant_ends = days_ahead(10);
        ws.write(&config(None, &own_grant_ends))?;
        ws.init()?;
        ws.apply()?;

        // The default window (14 days) covers the grant ending in 10 days, not the one in 20.
        let run = ws.plan()?;
        let output = format!("{}{}", run.stdout, run.stderr);
        ensure!(
            run.code == 0
                && output.contains(r#"Grant of "fraud_scored" to "growth" expires on"#)
                && output.contains(day(&own_grant_ends))
                && !output.contains("stops receiving"),
            "an unchanged plan must warn about the grant ending within 14 days, and only \
             about it ({}):\n{run}",
            ws.version_label()
        );

        // A wider window also covers the grant the subscription reads through.
        ws.write(&config(Some(30), &own_grant_ends))?;
        let run = ws.plan()?;
        let output = format!("{}{}", run.stdout, run.stderr);
        ensure!(
            run.code == 0
                && output.contains(r#"Stream "fraud-signals" stops receiving "user_signed_up" on"#)
                && output.contains(day(&growth_grant_ends))
                && output.contains("fanner_subscription.signals"),
            "with expiry_warning_days = 30 the subscription must warn on events, naming the \
             event and the date ({}):\n{run}",
            ws.version_label()
        );

        // A grant that expires after the apply shows as drift: `expired` turns true.
        let short = fraud
            .create_grant(&api::CreateGrant {
                event: "fraud_scored".to_owned(),
                grantee: "risk".to_owned(),
                reason: "Risk reviews scored signups.".to_owned(),
                expires_at: Some(chrono::Utc::now() + chrono::Duration::seconds(4)),
                ..Default::default()
            })
            .await?;
        let ends = short.expires_at.context("the grant has an expiry")?;
        let expires_at = ends.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        ws.write(&format!(
            "{}\nresource \"fanner_grant\" \"short\" {{\n  event      = \"fraud_scored\"\n  grantee    = \"risk\"\n  reason     = \"Risk reviews scored signups.\"\n  expires_at = \"{expires_at}\"\n}}\n",
            config(None, &own_grant_ends)
        ))?;
        ws.ok(&[
            "import",
            "-input=false",
            "-no-color",
            "fanner_grant.short",
            &short.id,
        ])?;
        let state = ws.state_of("fanner_grant.short")?;
        ensure!(state["expired"] == false, "imported before expiry: {state}");
        if let Ok(left) = (ends - chrono::Utc::now()).to_std() {
            // The control plane runs on the real clock: waiting is the only way past an expiry.
            tokio::time::sleep(left + Duration::from_millis(200)).await;
        }
        ws.ok(&["plan", "-input=false", "-no-color", "-out=tfplan"])?;
        let shown = ws.ok(&["show", "-json", "tfplan"])?;
        let plan: Json = serde_json::from_str(&shown.stdout)?;
        let drift = plan["resource_drift"]
            .as_array()
            .and_then(|d| d.iter().find(|c| c["address"] == "fanner_grant.short"))
            .with_context(|| format!("no drift for the expired grant: {}", shown.stdout))?;
        ensure!(
            drift["change"]["before"]["expired"] == false
                && drift["change"]["after"]["expired"] == true
                && drift["change"]["after"]["status"] == "expired",
            "the expired grant's drift must show expired = true: {drift}"
        );
        let run = ws.plan()?;
        let output = format!("{}{}", run.stdout, run.stderr);
        ensure!(
            output.contains(r#"Grant of "fraud_scored" to "risk" expired on"#),
            "the plan must say the grant expired ({}):\n{run}",
            ws.version_label()
        );
    }
    Ok(())
}
