//! Filters and redaction as a user drives them: `fanner grant create --redact`, `fanner
//! subscription create --filter`, what `fanner tail` then shows the grantee, and what `fanner
//! access` shows the owner.

use crate::Server;

#[test]
fn a_redacting_grant_and_a_filter_shape_what_the_grantee_tails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    let admin = server.admin_token.clone();
    let token = |principal: &str| {
        server
            .ok(&admin, &["token", "create", "--principal", principal])
            .trim()
            .to_owned()
    };
    let growth = token("growth");
    let fraud = token("fraud");
    server.ok(
        &growth,
        &[
            "event",
            "create",
            "user_signed_up",
            "--classification",
            "internal",
        ],
    );
    server.fails(&growth, &grant("payload..ssn"), "--redact: field path");
    // A mode that does not exist is a usage error (exit 2), as for any bad flag value.
    let mut mode = grant("user_id");
    mode[10] = "mask";
    let refused = server.run(&growth, &mode);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("\"mask\" is not drop or hash"));
    server.ok(&growth, &grant("user_id,payload.ssn"));
    server.ok(&fraud, &["stream", "create", "fraud-signals"]);
    server.fails(
        &fraud,
        &subscribe(r#"{"payload":{"age":[{"numeric":[">"]}]}}"#),
        "filter key payload.age",
    );
    server.ok(&fraud, &subscribe(r#"{"payload":{"country":["US"]}}"#));

    for (country, user) in [("US", "u1"), ("CA", "u2"), ("US", "u1"), ("DE", "u3")] {
        let payload = format!(r#"{{"country":"{country}","ssn":"123-45-6789","plan":"pro"}}"#);
        server.ok(
            &growth,
            &["publish", "user_signed_up", &payload, "--user-id", user],
        );
    }
    let tailed = server.ok(
        &fraud,
        &[
            "tail",
            "fraud-signals",
            "--from-beginning",
            "--limit",
            "2",
            "--idle",
            "20",
        ],
    );
    assert!(
        !tailed.contains("123-45") && !tailed.contains("\"u1\""),
        "{tailed}"
    );
    let envelopes: Vec<api::EnvelopeView> = tailed
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(envelopes.len(), 2, "{tailed}");
    for envelope in &envelopes {
        let payload = envelope.payload.clone().expect("a JSON payload");
        assert_eq!(payload["country"], "US");
        assert_eq!(payload["plan"], "pro");
        let ssn = payload["ssn"].as_str().expect("a token");
        assert_eq!(ssn.len(), 64, "a hash token: {ssn}");
        assert_eq!(
            envelope.user_id.len(),
            64,
            "a hash token: {}",
            envelope.user_id
        );
    }
    assert_eq!(
        envelopes[0].user_id, envelopes[1].user_id,
        "one user, one token"
    );
    // Nothing else arrives: the CA and DE signups were filtered out.
    let all = server.ok(
        &fraud,
        &[
            "tail",
            "fraud-signals",
            "--from-beginning",
            "--limit",
            "3",
            "--idle",
            "2",
        ],
    );
    assert_eq!(all.lines().count(), 2, "{all}");

    let access = server.ok(&growth, &["access", "user_signed_up"]);
    assert!(access.contains("payload.ssn,user_id (hash)"), "{access}");
    assert!(
        access.contains(r#"{"payload":{"country":["US"]}}"#),
        "{access}"
    );
}

fn subscribe(filter: &str) -> [&str; 8] {
    [
        "subscription",
        "create",
        "--stream",
        "fraud-signals",
        "--events",
        "user_signed_up",
        "--filter",
        filter,
    ]
}

fn grant(redact: &str) -> [&str; 11] {
    [
        "grant",
        "create",
        "user_signed_up",
        "--to",
        "fraud",
        "--reason",
        "Fraud scoring.",
        "--redact",
        redact,
        "--redact-mode",
        "hash",
    ]
}

/// A message whose fields the schema marks PII, in JSON and in protobuf payloads: each grantee
/// gets them redacted unless its grant includes them; the owner gets them whole.
#[test]
fn schema_pii_marks_are_redacted_for_every_grantee_unless_included() {
    use base64::Engine as _;
    use prost_reflect::{DescriptorPool, DynamicMessage, Value};

    let dir = tempfile::tempdir().expect("temp dir");
    let protos = dir.path().join("protos");
    std::fs::create_dir_all(protos.join("fanner/v1")).expect("mkdir");
    std::fs::write(protos.join("fanner/v1/catalog.proto"), proto::CATALOG_PROTO).expect("write");
    std::fs::write(
        protos.join("signup.proto"),
        r#"syntax = "proto3";
package growth;
import "fanner/v1/catalog.proto";
message Address {
  string street = 1 [(fanner.v1.field).pii = true];
  string country = 2;
}
message UserSignedUp {
  option (fanner.v1.event) = { name: "user_signed_up" classification: CLASSIFICATION_INTERNAL };
  string plan = 1;
  string email = 2 [(fanner.v1.field).pii = true];
  string ssn = 3 [(fanner.v1.field).pii = true];
  Address address = 4;
}
"#,
    )
    .expect("write");
    let mut compiler = protox::Compiler::new([&protos]).expect("compiler");
    compiler.include_imports(true);
    compiler.open_file("signup.proto").expect("compiles");
    let descriptors = compiler.encode_file_descriptor_set();
    let file = dir.path().join("signup.binpb");
    std::fs::write(&file, &descriptors).expect("write");

    let server = Server::start(&dir.path().join("data"));
    let admin = server.admin_token.clone();
    let token = |principal: &str| {
        server
            .ok(&admin, &["token", "create", "--principal", principal])
            .trim()
            .to_owned()
    };
    let growth = token("growth");
    let fraud = token("fraud");
    let analytics = token("analytics");
    let pushed = server.ok(&growth, &["catalog", "push", file.to_str().expect("utf-8")]);
    assert!(
        pushed.contains("payload.email, payload.ssn, payload.address.street"),
        "{pushed}"
    );
    let shown = server.ok(&growth, &["event", "show", "user_signed_up"]);
    assert!(shown.contains("growth.UserSignedUp"), "{shown}");
    let grant = |to: &str, include: Option<&str>| {
        let mut args = vec![
            "grant",
            "create",
            "user_signed_up",
            "--to",
            to,
            "--reason",
            "Signup analysis.",
        ];
        if let Some(include) = include {
            args.extend(["--include-pii", include]);
        }
        server.ok(&growth, &args);
    };
    grant("fraud", Some("payload.email"));
    grant("analytics", None);
    for (who, stream) in [
        (&fraud, "fraud-signals"),
        (&analytics, "analytics-in"),
        (&growth, "growth-own"),
    ] {
        server.ok(who, &["stream", "create", stream]);
        server.ok(
            who,
            &[
                "subscription",
                "create",
                "--stream",
                stream,
                "--events",
                "user_signed_up",
            ],
        );
    }

    let pool = DescriptorPool::decode(descriptors.as_slice()).expect("pool");
    let signup = pool
        .get_message_by_name("growth.UserSignedUp")
        .expect("message");
    let address = pool.get_message_by_name("growth.Address").expect("message");
    let mut message = DynamicMessage::new(signup.clone());
    message.set_field_by_name("plan", Value::String("pro".into()));
    message.set_field_by_name("email", Value::String("ada@example.com".into()));
    message.set_field_by_name("ssn", Value::String("123-45-6789".into()));
    let mut home = DynamicMessage::new(address);
    home.set_field_by_name("street", Value::String("1 Main St".into()));
    home.set_field_by_name("country", Value::String("US".into()));
    message.set_field_by_name("address", Value::Message(home));
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(proto::Message::encode_to_vec(&message));
    server.publish_lines(
        &growth,
        &format!(
            "{}\n{}\n",
            serde_json::json!({"event": "user_signed_up", "payload": {
                "plan": "pro", "email": "ada@example.com", "ssn": "123-45-6789",
                "address": {"street": "1 Main St", "country": "US"}}}),
            serde_json::json!({"event": "user_signed_up", "payload_base64": encoded,
                "content_type": "application/x-protobuf"}),
        ),
    );

    // What each stream's owner tails: the JSON payload, and the protobuf one decoded with the
    // schema, as (email, ssn, street, country, plan); "" where a field is absent.
    let tail = |who: &str, stream: &str| -> Vec<[String; 5]> {
        let tailed = server.ok(
            who,
            &[
                "tail",
                stream,
                "--from-beginning",
                "--limit",
                "2",
                "--idle",
                "20",
            ],
        );
        let envelopes: Vec<api::EnvelopeView> = tailed
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(envelopes.len(), 2, "{stream}: {tailed}");
        envelopes
            .iter()
            .map(
                |envelope| match (&envelope.payload, &envelope.payload_base64) {
                    (Some(json), None) => {
                        let text =
                            |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                        [
                            text(&json["email"]),
                            text(&json["ssn"]),
                            text(&json["address"]["street"]),
                            text(&json["address"]["country"]),
                            text(&json["plan"]),
                        ]
                    }
                    (None, Some(encoded)) => {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(encoded)
                            .expect("base64");
                        let message = DynamicMessage::decode(signup.clone(), bytes.as_slice())
                            .expect("decodes");
                        let text = |m: &DynamicMessage, name: &str| {
                            m.get_field_by_name(name)
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default()
                        };
                        let address = message
                            .get_field_by_name("address")
                            .and_then(|v| v.as_message().cloned())
                            .expect("address");
                        [
                            text(&message, "email"),
                            text(&message, "ssn"),
                            text(&address, "street"),
                            text(&address, "country"),
                            text(&message, "plan"),
                        ]
                    }
                    other => panic!("{stream}: no payload: {other:?}"),
                },
            )
            .collect()
    };
    let whole = ["ada@example.com", "123-45-6789", "1 Main St", "US", "pro"].map(str::to_owned);
    let included = ["ada@example.com", "", "", "US", "pro"].map(str::to_owned);
    let redacted = ["", "", "", "US", "pro"].map(str::to_owned);
    assert_eq!(tail(&fraud, "fraud-signals"), [included.clone(), included]);
    assert_eq!(
        tail(&analytics, "analytics-in"),
        [redacted.clone(), redacted]
    );
    assert_eq!(tail(&growth, "growth-own"), [whole.clone(), whole]);
    // Who stored which schema, and its PII fields, is on the audit trail.
    let log = server.ok(&admin, &["audit", "log"]);
    assert!(log.contains("event.schema"), "{log}");
}
