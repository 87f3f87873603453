//! Adopting objects made outside Terraform: `import` blocks by resource identity, and
//! `terraform query` generating the resource and import blocks (Terraform ≥ 1.14), with import
//! by ID still working everywhere (see `resources`).

use acceptance_tests::{Server, Workspace, enabled, terraforms};
use anyhow::{Context, ensure};
use serde_json::Value as Json;

/// What a team made with the CLI before adopting Terraform: an event it owns, a grant of it to
/// another team, a stream and a subscription; plus another team's stream the filters must skip.
struct Existing {
    fraud_token: String,
    grant_id: String,
    subscription_id: String,
}

async fn existing_objects(server: &Server) -> anyhow::Result<Existing> {
    let (fraud_token, fraud) = server.principal("fraud").await?;
    let (_, growth) = server.principal("growth").await?;
    fraud
        .create_event(&api::CreateEvent {
            name: "fraud_scored".to_owned(),
            classification: api::Classification::Internal,
            description: "A signup was scored.".to_owned(),
            owner: None,
        })
        .await?;
    let grant = fraud
        .create_grant(&api::CreateGrant {
            event: "fraud_scored".to_owned(),
            grantee: "growth".to_owned(),
            reason: "Growth excludes fraudulent signups from funnels.".to_owned(),
            expires_at: Some(chrono::Utc::now() + chrono::Duration::days(90)),
            ..Default::default()
        })
        .await?;
    for (client, name) in [(&fraud, "fraud-signals"), (&growth, "growth-funnel")] {
        client
            .create_stream(&api::CreateStream {
                name: name.to_owned(),
                shard_count: Some(2),
                retention_hours: Some(48),
                tags: [("team".to_owned(), "fraud".to_owned())].into(),
            })
            .await?;
    }
    let subscription = fraud
        .create_subscription(&api::CreateSubscription {
            stream: "fraud-signals".to_owned(),
            events: vec!["fraud_scored".to_owned()],
            ..Default::default()
        })
        .await?;
    Ok(Existing {
        fraud_token,
        grant_id: grant.id,
        subscription_id: subscription.id,
    })
}

/// The identity Terraform stored for `address`.
fn identity_of(ws: &Workspace, address: &str) -> anyhow::Result<Json> {
    let run = ws.ok(&["show", "-json"])?;
    let state: Json = serde_json::from_str(&run.stdout)?;
    state["values"]["root_module"]["resources"]
        .as_array()
        .and_then(|resources| resources.iter().find(|r| r["address"] == address))
        .map(|r| r["identity"].clone())
        .with_context(|| format!("{address} is not in the state"))
}

#[tokio::test]
async fn import_by_identity_and_terraform_query() -> anyhow::Result<()> {
    if !enabled("import_by_identity_and_terraform_query") {
        return Ok(());
    }
    for terraform in terraforms() {
        let server = Server::start().await?;
        let existing = existing_objects(&server).await?;
        let ws = Workspace::new(&terraform, &server, &existing.fraud_token)?;
        if !ws.is_at_least(1, 14)? {
            eprintln!(
                "import_by_identity_and_terraform_query: {} has neither resource identity nor \
                 `terraform query`; import by ID is tested in `resources`.",
                ws.version_label()
            );
            continue;
        }

        // Import blocks by identity, for a type identified by name and one identified by id.
        ws.write(&format!(
            r#"resource "fanner_stream" "signals" {{
  name            = "fraud-signals"
  shard_count     = 2
  retention_hours = 48
  tags            = {{ team = "fraud" }}
}}

resource "fanner_subscription" "signals" {{
  stream = fanner_stream.signals.name
  events = ["fraud_scored"]
}}

import {{
  to       = fanner_stream.signals
  identity = {{ name = "fraud-signals" }}
}}

import {{
  to       = fanner_subscription.signals
  identity = {{ id = "{}" }}
}}
"#,
            existing.subscription_id
        ))?;
        ws.init()?;
        let run = ws.apply()?;
        ensure!(
            run.stdout
                .contains("2 imported, 0 added, 0 changed, 0 destroyed"),
            "import blocks by identity must import both objects and change nothing:\n{run}"
        );
        ensure!(
            identity_of(&ws, "fanner_stream.signals")?
                == serde_json::json!({"name": "fraud-signals"})
                && identity_of(&ws, "fanner_subscription.signals")?
                    == serde_json::json!({"id": existing.subscription_id}),
            "the state must keep each object's identity"
        );
        ws.assert_no_changes("importing by identity")?;

        // `terraform query` finds what is not managed yet and writes its configuration.
        let ws = Workspace::new(&terraform, &server, &existing.fraud_token)?;
        // The example in examples/terraform/query/, as a user would copy it.
        let example =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/terraform/query");
        for file in ["main.tf", "adopt.tfquery.hcl"] {
            ws.write_file(file, &std::fs::read_to_string(example.join(file))?)?;
        }
        ws.init()?;
        let run = ws.ok(&["query", "-no-color", "-generate-config-out=generated.tf"])?;
        ensure!(
            run.stdout.contains("fraud-signals")
                && !run.stdout.contains("growth-funnel")
                && run.stdout.contains(&existing.grant_id),
            "the query must list exactly what the filters match:\n{run}"
        );
        let generated = std::fs::read_to_string(ws.work_dir().join("generated.tf"))?;
        for wanted in [
            "resource \"fanner_stream\"",
            "resource \"fanner_event\"",
            "resource \"fanner_grant\"",
            "resource \"fanner_subscription\"",
            "name = \"fraud-signals\"",
            &format!("id = \"{}\"", existing.subscription_id),
        ] {
            ensure!(
                generated.matches(wanted).count() >= 1,
                "generated.tf lacks {wanted:?}:\n{generated}"
            );
        }
        ensure!(
            generated.matches("import {").count() == 4 && !generated.contains("growth-funnel"),
            "generated.tf must import exactly the four matching objects:\n{generated}"
        );
        let run = ws.apply()?;
        ensure!(
            run.stdout
                .contains("4 imported, 0 added, 0 changed, 0 destroyed"),
            "applying the generated configuration must import and change nothing:\n{run}"
        );
        ws.assert_no_changes("applying the generated configuration")?;
    }
    Ok(())
}
