//! Filters, delivery formats and redaction through the API: validated with messages that name
//! the bad key, stored, audited, shown in the access view, and compiled into the route table
//! (with the grant's key only for admins).

use std::collections::BTreeMap;
use std::time::Duration;

use api::*;
use serde_json::json;

use crate::support::{Db, TestServer, assert_status, db_tests};

db_tests!(filters_and_redaction_are_validated_stored_and_routed);
db_tests!(a_stored_schema_redacts_its_pii_fields_for_grantees);

async fn filters_and_redaction_are_validated_stored_and_routed(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let growth = server.principal("growth", Role::Member).await;
    let fraud = server.principal("fraud", Role::Member).await;
    let auditor = server.principal("auditor", Role::Auditor).await;
    growth
        .create_event(&CreateEvent {
            name: "signup".to_owned(),
            classification: Classification::Internal,
            description: String::new(),
            owner: None,
        })
        .await
        .expect("event");
    let grant = |redact: &[&str], redact_mode| CreateGrant {
        event: "signup".to_owned(),
        grantee: "fraud".to_owned(),
        reason: "Scoring.".to_owned(),
        redact: redact.iter().map(|p| (*p).to_owned()).collect(),
        redact_mode,
        ..Default::default()
    };
    assert_status(
        growth
            .create_grant(&grant(&["payload.card..number"], RedactMode::Drop))
            .await,
        400,
        "redact: field path \"payload.card..number\" has an empty key",
    );
    assert_status(
        growth
            .create_grant(&grant(&["event_name"], RedactMode::Drop))
            .await,
        400,
        "is not one a grant can redact",
    );
    let created = growth
        .create_grant(&grant(
            &["user_id", "payload.ssn", "user_id"],
            RedactMode::Hash,
        ))
        .await
        .expect("grant");
    assert_eq!(
        created.redact,
        ["payload.ssn", "user_id"],
        "sorted, once each"
    );
    assert_eq!(created.redact_mode, RedactMode::Hash);

    fraud
        .create_stream(&CreateStream {
            name: "fraud-signals".to_owned(),
            shard_count: None,
            retention_hours: None,
            tags: BTreeMap::new(),
        })
        .await
        .expect("stream");
    let subscribe = |filter: serde_json::Value| CreateSubscription {
        stream: "fraud-signals".to_owned(),
        events: vec!["signup".to_owned()],
        filter: Some(filter),
        delivery_format: DeliveryFormat::Payload,
        start_from: Default::default(),
    };
    assert_status(
        fraud
            .create_subscription(&subscribe(
                json!({"payload": {"age": [{"numeric": [">", "x"]}]}}),
            ))
            .await,
        400,
        "filter key payload.age: numeric bounds must be numbers",
    );
    let too_many: Vec<i64> = (0..=300).collect();
    assert_status(
        fraud
            .create_subscription(&subscribe(json!({"payload": {"n": too_many}})))
            .await,
        400,
        "more than 300 conditions",
    );
    assert_status(
        fraud
            .check_subscription(&CheckSubscription {
                stream: "fraud-signals".to_owned(),
                events: vec!["signup".to_owned()],
                filter: Some(json!({"colour": ["red"]})),
            })
            .await,
        400,
        "filter key colour: is not a field a filter can address",
    );
    let us = json!({"payload": {"country": ["US"]}});
    let subscription = fraud
        .create_subscription(&subscribe(us.clone()))
        .await
        .expect("subscription");
    assert_eq!(subscription.filter, Some(us.clone()));
    assert_eq!(subscription.delivery_format, DeliveryFormat::Payload);
    let read = fraud
        .get_subscription(&subscription.id)
        .await
        .expect("read back");
    assert_eq!(read, Some(subscription.clone()));

    // The route table carries what the engine needs; only admins see the key.
    let table = server
        .admin
        .routes(None, Duration::ZERO)
        .await
        .expect("routes");
    let target = &table.routes[0].targets[0];
    assert_eq!(
        (
            &target.filter,
            target.delivery_format,
            &target.redact,
            target.redact_mode
        ),
        (
            &Some(us.clone()),
            DeliveryFormat::Payload,
            &created.redact,
            RedactMode::Hash
        )
    );
    let key = target.redact_key.clone().expect("the admin sees the key");
    assert_eq!(key.len(), 64);
    let audited = auditor.routes(None, Duration::ZERO).await.expect("routes");
    assert_eq!(audited.routes[0].targets[0].redact_key, None);

    // Updates replace the settings; the grant keeps its key, so its tokens stay stable.
    let updated = growth
        .update_grant(
            &created.id,
            &UpdateGrant {
                reason: "Scoring.".to_owned(),
                redact: vec!["payload.email".to_owned()],
                redact_mode: RedactMode::Hash,
                include_pii: vec!["payload.name".to_owned()],
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(updated.redact, ["payload.email"]);
    assert_eq!(updated.include_pii, ["payload.name"]);
    let table = server
        .admin
        .routes(None, Duration::ZERO)
        .await
        .expect("routes");
    assert_eq!(table.routes[0].targets[0].redact_key, Some(key.clone()));
    fraud
        .update_subscription(
            &subscription.id,
            &UpdateSubscription {
                events: vec!["signup".to_owned()],
                ..Default::default()
            },
        )
        .await
        .expect("filter removed");

    // The access view and the audit trail show them; neither shows the key.
    let view = growth.access("signup").await.expect("access view");
    assert_eq!(view.grants[0].redact, ["payload.email"]);
    assert_eq!(view.subscriptions[0].filter, None);
    assert_eq!(
        view.subscriptions[0].delivery_format,
        DeliveryFormat::Envelope
    );
    let log = auditor
        .audit_log(None, None, None)
        .await
        .expect("audit log")
        .entries;
    let text = serde_json::to_string(&log).expect("json");
    assert!(!text.contains(&key), "the key is never audited");
    let created_entry = log
        .iter()
        .find(|e| e.action == "subscription.create" && e.outcome == "ok")
        .expect("audited");
    assert_eq!(
        created_entry.after.as_ref().map(|a| &a["filter"]),
        Some(&us)
    );
    let grant_entry = log
        .iter()
        .find(|e| e.action == "grant.update")
        .expect("audited");
    assert_eq!(
        grant_entry.after.as_ref().map(|a| a["redact"].clone()),
        Some(json!(["payload.email"]))
    );
}

/// `descriptors` of `shop.Signup`, whose `email` and `ssn` are marked PII.
fn signup_descriptors() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("fanner/v1")).expect("mkdir");
    std::fs::write(
        dir.path().join("fanner/v1/catalog.proto"),
        proto::CATALOG_PROTO,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("shop.proto"),
        r#"syntax = "proto3";
package shop;
import "fanner/v1/catalog.proto";
message Signup {
  string plan = 1;
  string email = 2 [(fanner.v1.field).pii = true];
  string ssn = 3 [(fanner.v1.field).pii = true];
}
"#,
    )
    .expect("write");
    let mut compiler = protox::Compiler::new([dir.path()]).expect("compiler");
    compiler.include_imports(true);
    compiler.open_file("shop.proto").expect("compiles");
    compiler.encode_file_descriptor_set()
}

async fn a_stored_schema_redacts_its_pii_fields_for_grantees(db: Db) {
    use base64::Engine as _;
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let growth = server.principal("growth", Role::Member).await;
    let fraud = server.principal("fraud", Role::Member).await;
    let auditor = server.principal("auditor", Role::Auditor).await;
    growth
        .create_event(&CreateEvent {
            name: "signup".to_owned(),
            classification: Classification::Internal,
            description: String::new(),
            owner: None,
        })
        .await
        .expect("event");
    let set = |message: &str, descriptors: &[u8]| SetEventSchema {
        message: message.to_owned(),
        descriptor_set: base64::engine::general_purpose::STANDARD.encode(descriptors),
    };
    let descriptors = signup_descriptors();
    for (body, message) in [
        (
            SetEventSchema {
                message: "shop.Signup".to_owned(),
                descriptor_set: "not base64!".to_owned(),
            },
            "descriptor_set is not base64",
        ),
        (
            set("shop.Signup", b"garbage"),
            "descriptor_set: not a valid FileDescriptorSet",
        ),
        (
            set("shop.Other", &descriptors),
            "defines no message \"shop.Other\"",
        ),
    ] {
        assert_status(growth.set_event_schema("signup", &body).await, 400, message);
    }
    assert_status(
        fraud
            .set_event_schema("signup", &set("shop.Signup", &descriptors))
            .await,
        403,
        "the event's owner",
    );
    assert_status(
        growth
            .set_event_schema("nope", &set("shop.Signup", &descriptors))
            .await,
        404,
        "nope",
    );
    let stored = growth
        .set_event_schema("signup", &set("shop.Signup", &descriptors))
        .await
        .expect("stored")
        .schema
        .expect("a schema");
    assert_eq!(stored.message, "shop.Signup");
    assert_eq!(stored.pii_fields, ["payload.email", "payload.ssn"]);
    assert_eq!(stored.digest.len(), 64);
    // Storing it again changes nothing, and is not audited again.
    let again = growth
        .set_event_schema("signup", &set("shop.Signup", &descriptors))
        .await
        .expect("stored");
    assert_eq!(again.schema.as_ref(), Some(&stored));
    assert_eq!(
        growth
            .get_event("signup")
            .await
            .expect("read")
            .map(|e| e.schema),
        Some(Some(stored.clone()))
    );

    growth
        .create_grant(&CreateGrant {
            event: "signup".to_owned(),
            grantee: "fraud".to_owned(),
            reason: "Scoring.".to_owned(),
            include_pii: vec!["payload.email".to_owned()],
            ..Default::default()
        })
        .await
        .expect("grant");
    for (who, stream) in [(&fraud, "fraud-signals"), (&growth, "growth-own")] {
        who.create_stream(&CreateStream {
            name: stream.to_owned(),
            shard_count: None,
            retention_hours: None,
            tags: BTreeMap::new(),
        })
        .await
        .expect("stream");
        who.create_subscription(&CreateSubscription {
            stream: stream.to_owned(),
            events: vec!["signup".to_owned()],
            ..Default::default()
        })
        .await
        .expect("subscription");
    }
    // The grantee's target redacts the PII field its grant does not include; the owner's
    // target redacts nothing; the route carries the descriptors for protobuf payloads.
    let table = server
        .admin
        .routes(None, Duration::ZERO)
        .await
        .expect("routes");
    let route = &table.routes[0];
    let redactions: BTreeMap<&str, &[String]> = route
        .targets
        .iter()
        .map(|t| (t.stream.as_str(), t.redact.as_slice()))
        .collect();
    assert_eq!(
        redactions,
        BTreeMap::from([
            ("fraud-signals", ["payload.ssn".to_owned()].as_slice()),
            ("growth-own", [].as_slice()),
        ])
    );
    let schema = route.payload_schema.as_ref().expect("the schema");
    assert_eq!(schema.message, "shop.Signup");
    let carried = base64::engine::general_purpose::STANDARD
        .decode(&schema.descriptor_set)
        .expect("base64");
    assert_eq!(
        proto::PayloadSchema::decode(&carried, "shop.Signup")
            .expect("decodes")
            .pii_fields(),
        stored.pii_fields
    );

    let log = auditor
        .audit_log(None, None, None)
        .await
        .expect("audit log")
        .entries;
    let schema_entries: Vec<_> = log
        .iter()
        .filter(|e| e.action == "event.schema")
        .map(|e| e.outcome.as_str())
        .collect();
    // Every refusal is audited too; the unchanged second store is not.
    assert_eq!(
        schema_entries,
        ["invalid", "invalid", "invalid", "denied", "invalid", "ok"],
        "{log:?}"
    );
}
