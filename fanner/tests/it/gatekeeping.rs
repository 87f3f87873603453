//! What a grant and a subscription let through: filtered subscriptions get exactly the matching
//! events, redacted fields never reach the grantee's stream (nor its tail), and payload-format
//! streams get exactly the payload bytes.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use api::{CreateGrant, CreateSubscription, DeliveryFormat, RedactMode};
use bytes::Bytes;
use prost::Message;
use serde_json::{Value, json};
use streams::PutRecord;

use crate::support::{Harness, Kind, backend_tests, eventually};

/// A signup as a producer would write it.
fn signup(id: &str, user: &str, payload: &Value) -> PutRecord {
    PutRecord {
        partition_key: id.to_owned(),
        data: Bytes::from(
            proto::Envelope {
                event_id: id.to_owned(),
                event_name: "signup".to_owned(),
                producer: "growth".to_owned(),
                user_id: user.to_owned(),
                content_type: "application/json".to_owned(),
                payload: payload.to_string().into_bytes(),
                ..proto::Envelope::default()
            }
            .encode_to_vec(),
        ),
    }
}

backend_tests!(grants_and_subscriptions_shape_what_is_delivered);

async fn grants_and_subscriptions_shape_what_is_delivered(kind: Kind) {
    let Some(h) = Harness::start(kind, "grants_and_subscriptions_shape_what_is_delivered", 1).await
    else {
        return;
    };
    let growth = h.team("growth").await;
    let fraud = h.team("fraud").await;
    let analytics = h.team("analytics").await;
    h.event(&growth, "signup").await;
    let grant = |grantee: &str, redact: &[&str], redact_mode| CreateGrant {
        event: "signup".to_owned(),
        grantee: grantee.to_owned(),
        reason: "Testing gatekeeping.".to_owned(),
        redact: redact.iter().map(|p| (*p).to_owned()).collect(),
        redact_mode,
        ..CreateGrant::default()
    };
    h.cp.create_grant(
        &growth,
        grant("fraud", &["payload.ssn", "user_id"], RedactMode::Drop),
    )
    .await
    .expect("grant to fraud");
    h.cp.create_grant(
        &growth,
        grant("analytics", &["payload.email"], RedactMode::Hash),
    )
    .await
    .expect("grant to analytics");
    let subscribe = |stream: &str, filter: Option<Value>, delivery_format| CreateSubscription {
        stream: stream.to_owned(),
        events: vec!["signup".to_owned()],
        filter,
        delivery_format,
        start_from: Default::default(),
    };
    let fraud_stream = h.stream(&fraud, "fraud-signals", 1).await;
    let analytics_stream = h.stream(&analytics, "analytics-raw", 1).await;
    let growth_stream = h.stream(&growth, "growth-payloads", 1).await;
    let us_adults = json!({"payload": {"country": ["US"], "age": [{"numeric": [">=", 18]}]}});
    h.cp.create_subscription(
        &fraud,
        subscribe("fraud-signals", Some(us_adults), DeliveryFormat::Envelope),
    )
    .await
    .expect("fraud subscribes");
    h.cp.create_subscription(
        &analytics,
        subscribe("analytics-raw", None, DeliveryFormat::Payload),
    )
    .await
    .expect("analytics subscribes");
    h.cp.create_subscription(
        &growth,
        subscribe("growth-payloads", None, DeliveryFormat::Payload),
    )
    .await
    .expect("growth subscribes");
    let engine = h.engine(h.config("engine-a"));

    // 40 signups over countries and ages; a payload that is not JSON; the last one matches, so
    // once it arrived everything before it was routed (one GES shard, one stream shard).
    let mut records = Vec::new();
    let mut payloads: HashMap<String, Value> = HashMap::new();
    let mut matching = BTreeSet::new();
    for n in 0..40u32 {
        let id = format!("signup-{n:02}");
        let country = ["US", "CA", "us", "DE"][n as usize % 4];
        let age = 10 + n;
        let payload = json!({
            "country": country,
            "age": age,
            "ssn": format!("123-45-{n:04}"),
            "email": format!("user{}@example.com", n % 5),
            "plan": {"name": "pro", "seats": n},
        });
        if country == "US" && age >= 18 {
            matching.insert(id.clone());
        }
        records.push(signup(&id, &format!("u-{n}"), &payload));
        payloads.insert(id, payload);
    }
    let mut binary = signup("signup-bin", "u-bin", &json!(null));
    let mut envelope = proto::Envelope::decode(binary.data.clone()).expect("envelope");
    envelope.payload = vec![0xff, 0x00, 0x01];
    binary.data = Bytes::from(envelope.encode_to_vec());
    records.push(binary);
    let last = json!({"country": "US", "age": 99, "ssn": "999", "email": "last@example.com"});
    records.push(signup("signup-last", "u-last", &last));
    payloads.insert("signup-last".to_owned(), last);
    matching.insert("signup-last".to_owned());
    let produced: Vec<PutRecord> = records.clone();
    h.put_raw(records).await;

    // Fraud: exactly the US adults, without the SSN or the user id.
    let delivered = h
        .wait_for_ids(&fraud_stream, &["signup-last".to_owned()])
        .await;
    assert_eq!(
        delivered.iter().cloned().collect::<BTreeSet<_>>(),
        matching,
        "the filtered stream gets exactly the matching events"
    );
    assert_eq!(delivered.len(), matching.len(), "each once");
    for record in h.records(&fraud_stream).await {
        let envelope = proto::Envelope::decode(record.data.clone()).expect("an envelope");
        assert_eq!(envelope.user_id, "", "user_id is dropped");
        let payload: Value = serde_json::from_slice(&envelope.payload).expect("JSON");
        let mut expected = payloads[&envelope.event_id].clone();
        expected.as_object_mut().expect("object").remove("ssn");
        assert_eq!(payload, expected, "only the SSN is gone");
        assert_eq!(envelope.producer, "growth");
        assert_eq!(record.partition_key, envelope.event_id);
    }

    // Analytics: payload bytes alone, keyed by event id, with the email hashed (equal emails,
    // equal tokens; never the address); the payload that is not JSON is withheld.
    let analytics_records = all_records(&h, &analytics_stream, produced.len()).await;
    let mut tokens: HashMap<String, String> = HashMap::new();
    for record in &analytics_records {
        if record.partition_key == "signup-bin" {
            assert!(
                record.data.is_empty(),
                "an unredactable payload is withheld"
            );
            continue;
        }
        let mut payload: Value = serde_json::from_slice(&record.data).expect("JSON payload");
        let original = &payloads[&record.partition_key];
        let token = payload["email"].as_str().expect("a token").to_owned();
        assert_eq!(token.len(), 64, "an HMAC-SHA-256 token, hex");
        assert!(!token.contains('@'));
        let email = original["email"].as_str().expect("email").to_owned();
        assert_eq!(
            tokens.entry(email).or_insert_with(|| token.clone()),
            &token,
            "equal values give equal tokens"
        );
        payload["email"] = original["email"].clone();
        assert_eq!(&payload, original, "only the email is replaced");
    }
    assert_eq!(tokens.len(), 6, "five addresses in the series and one last");

    // The owner's own payload stream: exactly the produced payload bytes.
    let got: BTreeSet<(String, Bytes)> = all_records(&h, &growth_stream, produced.len())
        .await
        .into_iter()
        .map(|r| (r.partition_key, r.data))
        .collect();
    let want: BTreeSet<(String, Bytes)> = produced
        .iter()
        .map(|r| {
            let envelope = proto::Envelope::decode(r.data.clone()).expect("envelope");
            (envelope.event_id, Bytes::from(envelope.payload))
        })
        .collect();
    assert_eq!(got, want);

    // What `fanner tail` shows fraud is what its stream holds: no SSN anywhere.
    let mut tail =
        h.cp.tail(
            &fraud_ctx(),
            "fraud-signals",
            true,
            Some(matching.len() as u64),
            Some(Duration::from_secs(5)),
        )
        .await
        .expect("fraud tails its stream");
    let mut lines = 0;
    while let Some(line) = tail.recv().await {
        let text = String::from_utf8_lossy(&line);
        assert!(!text.contains("ssn") && !text.contains("123-45-"), "{text}");
        assert!(text.contains("\"user_id\":\"\""), "{text}");
        lines += 1;
    }
    assert_eq!(lines, matching.len());
    engine.shutdown().await;
}

/// A stream's records once it holds `count` of them (payload streams carry no envelope ids).
async fn all_records(h: &Harness, stream: &str, count: usize) -> Vec<streams::Record> {
    eventually(
        Duration::from_secs(60),
        &format!("{stream} holds {count} records"),
        || async {
            let records = h.records(stream).await;
            (records.len() >= count).then_some(records)
        },
    )
    .await
}

fn fraud_ctx() -> control_plane::auth::Ctx {
    crate::support::ctx("fraud", api::Role::Member)
}
