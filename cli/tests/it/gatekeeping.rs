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
