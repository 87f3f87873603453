//! Filters, delivery formats and redaction from HCL: created, planned exactly, changed in
//! place, and a bad filter or one over the condition budget refused at `terraform plan`, naming
//! the attribute and the key.

use acceptance_tests::{Server, Workspace, assert_plan, enabled, terraforms};
use anyhow::{Context, ensure};

const UPDATE_ONE: &str = "0 to add, 1 to change, 0 to destroy";

fn config(filter: &str, redact: &str, format: &str) -> String {
    format!(
        r#"resource "fanner_event" "signup" {{
  name           = "user_signed_up"
  classification = "internal"
}}

resource "fanner_grant" "fraud" {{
  event       = fanner_event.signup.name
  grantee     = "fraud"
  reason      = "Fraud scoring."
  redact      = [{redact}]
  redact_mode = "hash"
}}

resource "fanner_stream" "own" {{
  name = "growth-payloads"
}}

resource "fanner_subscription" "us" {{
  stream          = fanner_stream.own.name
  events          = [fanner_event.signup.name]
  filter          = {filter}
  delivery_format = "{format}"
}}
"#
    )
}

fn id_of(ws: &Workspace, address: &str) -> anyhow::Result<String> {
    Ok(ws.state_of(address)?["id"]
        .as_str()
        .context("no id in state")?
        .to_owned())
}

#[tokio::test]
async fn filters_and_redaction_from_hcl() -> anyhow::Result<()> {
    if !enabled("filters_and_redaction_from_hcl") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let admin = server.admin()?;
        server.principal("fraud").await?;
        let ws = Workspace::new(&terraform, &server, &server.admin_token)?;
        let us =
            r#"jsonencode({ payload = { country = ["US"], age = [{ numeric = [">=", 18] }] } })"#;
        ws.write(&config(us, r#""payload.ssn", "user_id""#, "payload"))?;
        ws.init()?;
        ws.apply()?;
        ws.assert_no_changes("create")?;
        let subscription_id = id_of(&ws, "fanner_subscription.us")?;
        let subscription = admin
            .get_subscription(&subscription_id)
            .await?
            .context("subscription gone")?;
        ensure!(
            subscription.filter
                == Some(
                    serde_json::json!({"payload": {"country": ["US"], "age": [{"numeric": [">=", 18]}]}})
                )
                && subscription.delivery_format == api::DeliveryFormat::Payload,
            "{subscription:?}"
        );
        let grant = admin
            .get_grant(&id_of(&ws, "fanner_grant.fraud")?)
            .await?
            .context("grant gone")?;
        ensure!(
            grant.redact == ["payload.ssn", "user_id"]
                && grant.redact_mode == api::RedactMode::Hash,
            "{grant:?}"
        );

        // Changed in place: the filter, the format, the redaction.
        let ca = r#"jsonencode({ payload = { country = ["CA"] } })"#;
        ws.write(&config(ca, r#""payload.ssn", "user_id""#, "envelope"))?;
        assert_plan(&ws, UPDATE_ONE, "changing the filter and format")?;
        ws.apply()?;
        ws.assert_no_changes("an in-place filter update")?;
        ensure!(id_of(&ws, "fanner_subscription.us")? == subscription_id);
        ws.write(&config(ca, r#""payload.email""#, "envelope"))?;
        assert_plan(&ws, UPDATE_ONE, "changing what the grant redacts")?;
        ws.apply()?;
        ws.assert_no_changes("an in-place redaction update")?;

        // A bad pattern fails the plan, naming the attribute, the key and why.
        let bad = r#"jsonencode({ payload = { age = [{ numeric = [">", "eighteen"] }] } })"#;
        ws.write(&config(bad, r#""payload.email""#, "envelope"))?;
        let run = ws.plan()?;
        ensure!(
            run.code == 1
                && run.stderr.contains("Invalid filter")
                && run.stderr.contains("payload.age")
                && run.stderr.contains("numeric bounds must be numbers"),
            "a bad filter was not refused at plan time ({}):\n{run}",
            ws.version_label()
        );
        // So does a pattern over the condition budget.
        let big = r#"jsonencode({ payload = { n = range(301) } })"#;
        ws.write(&config(big, r#""payload.email""#, "envelope"))?;
        let run = ws.plan()?;
        ensure!(
            run.code == 1
                && run.stderr.contains("Invalid filter")
                && run.stderr.contains("more than 300 conditions"),
            "a filter over the budget was not refused at plan time ({}):\n{run}",
            ws.version_label()
        );
        // And a redaction path that names nothing a grant can redact.
        ws.write(&config(ca, r#""payload..email""#, "envelope"))?;
        let run = ws.plan()?;
        ensure!(
            run.code == 1
                && run.stderr.contains("Invalid redact")
                && run.stderr.contains("empty key"),
            "a bad redaction path was not refused at plan time ({}):\n{run}",
            ws.version_label()
        );

        ws.write(&config(ca, r#""payload.email""#, "envelope"))?;
        ws.destroy()?;
    }
    Ok(())
}
