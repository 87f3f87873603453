use acceptance_tests::{Server, Workspace, enabled, terraforms};
use anyhow::ensure;

use crate::days_ahead;

/// `terraform plan` refuses a subscription to events its stream's owner may not read, naming
/// each event, why, and the `events` attribute.
#[tokio::test]
async fn plan_denies_events_without_access() -> anyhow::Result<()> {
    if !enabled("plan_denies_events_without_access") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let (_, growth) = server.principal("growth").await?;
        let (fraud_token, _) = server.principal("fraud").await?;
        growth
            .create_event(&api::CreateEvent {
                name: "user_signed_up".to_owned(),
                classification: api::Classification::Internal,
                description: String::new(),
                owner: None,
            })
            .await?;
        let ws = Workspace::new(&terraform, &server, &fraud_token)?;
        ws.write(
            r#"resource "fanner_stream" "signals" {
  name = "fraud-signals"
}

resource "fanner_subscription" "signals" {
  stream = fanner_stream.signals.name
  events = ["user_signed_up", "no_such_event"]
}
"#,
        )?;
        ws.init()?;
        let run = ws.plan()?;
        ensure!(run.code == 1, "plan must fail:\n{run}");
        for expected in [
            r#"may not receive event "user_signed_up": not granted"#,
            r#"may not receive event "no_such_event": unknown"#,
            r#"in resource "fanner_subscription" "signals""#,
            r#"events = ["user_signed_up", "no_such_event"]"#,
        ] {
            ensure!(
                run.stderr.contains(expected),
                "the diagnostic lacks {expected:?}:\n{run}"
            );
        }
        let state = ws.run(&["show", "-json"])?;
        ensure!(
            !state.stdout.contains("fraud-signals"),
            "nothing may be created"
        );
    }
    Ok(())
}

/// The producer registers and grants an event in its workspace; the consumer subscribes in its
/// own; the producer sees who reads its event; revoking shows up as a plan-time denial.
#[tokio::test]
async fn producer_grants_consumer_subscribes() -> anyhow::Result<()> {
    if !enabled("producer_grants_consumer_subscribes") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let (growth_token, _) = server.principal("growth").await?;
        let (fraud_token, fraud) = server.principal("fraud").await?;
        let producer = Workspace::new(&terraform, &server, &growth_token)?;
        let expires_at = days_ahead(90);
        let producer_event = r#"resource "fanner_event" "signup" {
  name           = "user_signed_up"
  classification = "pii"
  description    = "A user finished signup."
}
"#;
        let producer_config = format!(
            r#"{producer_event}
resource "fanner_grant" "fraud_reads_signup" {{
  event      = fanner_event.signup.name
  grantee    = "fraud"
  reason     = "Fraud scoring at signup."
  expires_at = "{expires_at}"
}}
"#
        );
        producer.write(&producer_config)?;
        producer.init()?;
        producer.apply()?;
        producer.assert_no_changes("granting")?;

        let consumer = Workspace::new(&terraform, &server, &fraud_token)?;
        let consumer_config = r#"data "fanner_event" "signup" {
  name = "user_signed_up"
}

resource "fanner_stream" "fraud_signals" {
  name = "fraud-signals"
}

resource "fanner_subscription" "fraud_signals" {
  stream = fanner_stream.fraud_signals.name
  events = [data.fanner_event.signup.name]
}

output "classification" {
  value = data.fanner_event.signup.classification
}
"#;
        consumer.write(consumer_config)?;
        consumer.init()?;
        let run = consumer.apply()?;
        ensure!(run.stdout.contains(r#"classification = "pii""#), "{run}");
        consumer.assert_no_changes("subscribing")?;
        let subscriptions = fraud.list_subscriptions(Some("fraud-signals")).await?;
        ensure!(subscriptions.len() == 1 && subscriptions[0].owner == "fraud");

        producer.write(&format!(
            "{producer_config}\ndata \"fanner_access\" \"signup\" {{\n  event = fanner_event.signup.name\n}}\n\noutput \"readers\" {{\n  value = data.fanner_access.signup.readers\n}}\n\noutput \"streams\" {{\n  value = data.fanner_access.signup.subscriptions[*].stream\n}}\n"
        ))?;
        producer.apply()?;
        let readers = producer.ok(&["output", "-json", "readers"])?;
        let readers: Vec<String> = serde_json::from_str(&readers.stdout)?;
        ensure!(readers == ["fraud", "growth"], "readers {readers:?}");
        let streams = producer.ok(&["output", "-json", "streams"])?;
        let streams: Vec<String> = serde_json::from_str(&streams.stdout)?;
        ensure!(streams == ["fraud-signals"], "streams {streams:?}");

        // The producer revokes: the consumer's next change to the subscription is refused at plan.
        producer.write(producer_event)?;
        producer.apply()?;
        consumer.write(&consumer_config.replace(
            "events = [data.fanner_event.signup.name]",
            "events = [data.fanner_event.signup.name, \"fraud_case_opened\"]",
        ))?;
        fraud
            .create_event(&api::CreateEvent {
                name: "fraud_case_opened".to_owned(),
                classification: api::Classification::Internal,
                description: String::new(),
                owner: None,
            })
            .await?;
        let run = consumer.plan()?;
        ensure!(
            run.code == 1
                && run
                    .stderr
                    .contains(r#"may not receive event "user_signed_up""#)
                && !run.stderr.contains(r#"event "fraud_case_opened""#),
            "after the revoke, the plan must refuse only the revoked event:\n{run}"
        );
        consumer.write(consumer_config)?;
        consumer.destroy()?;
        producer.destroy()?;
    }
    Ok(())
}

/// Failures reach the user as diagnostics that name the resource and say what to do: a refused
/// token, an unreachable control plane, and an object another team owns.
#[tokio::test]
async fn failures_are_diagnostics() -> anyhow::Result<()> {
    if !enabled("failures_are_diagnostics") {
        return Ok(());
    }
    let stream = "resource \"fanner_stream\" \"signals\" {\n  name = \"fraud-signals\"\n}\n";
    for terraform in terraforms() {
        let server = Server::start().await?;

        let ws = Workspace::new(&terraform, &server, "fnr_not_a_real_token")?;
        ws.write(stream)?;
        ws.init()?;
        let run = ws.run(&["apply", "-input=false", "-auto-approve", "-no-color"])?;
        ensure!(
            run.code == 1
                && run
                    .stderr
                    .contains(r#"Cannot create stream "fraud-signals""#)
                && run.stderr.contains("FANNER_TOKEN")
                && run.stderr.contains(r#"fanner_stream.signals"#),
            "a refused token must be a diagnostic on the resource:\n{run}"
        );

        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        ws.write(&format!(
            "provider \"fanner\" {{\n  endpoint = \"http://{closed}\"\n}}\n\n{stream}"
        ))?;
        let run = ws.run(&["apply", "-input=false", "-auto-approve", "-no-color"])?;
        ensure!(
            run.code == 1
                && run.stderr.contains("cannot reach the Fanner API")
                && run.stderr.contains("endpoint"),
            "an unreachable endpoint must be a diagnostic:\n{run}"
        );

        let (_, growth) = server.principal("growth").await?;
        growth
            .create_stream(&api::CreateStream {
                name: "fraud-signals".to_owned(),
                shard_count: None,
                retention_hours: None,
                tags: Default::default(),
            })
            .await?;
        let (fraud_token, _) = server.principal("fraud").await?;
        let ws = Workspace::new(&terraform, &server, &fraud_token)?;
        ws.write(stream)?;
        ws.init()?;
        let run = ws.run(&["apply", "-input=false", "-auto-approve", "-no-color"])?;
        ensure!(
            run.code == 1
                && run
                    .stderr
                    .contains(r#"Cannot create stream "fraud-signals""#)
                && run.stderr.contains("terraform import"),
            "a name taken by another team must be a diagnostic:\n{run}"
        );
        ensure!(
            !run.stderr.contains("panicked"),
            "the provider must never panic:\n{run}"
        );
    }
    Ok(())
}
