use std::os::unix::fs::PermissionsExt;

use crate::{FANNER, Server};

#[test]
fn a_new_user_sets_up_fanner_from_the_shell() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    let mode = std::fs::metadata(dir.path().join("admin.token"))
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the admin token is readable by its owner only"
    );
    let admin = server.admin_token.clone();

    let growth = server
        .ok(&admin, &["token", "create", "--principal", "growth"])
        .trim()
        .to_owned();
    let fraud = server
        .ok(&admin, &["token", "create", "--principal", "fraud"])
        .trim()
        .to_owned();
    let auditor = server
        .ok(
            &admin,
            &[
                "token",
                "create",
                "--principal",
                "security",
                "--role",
                "auditor",
            ],
        )
        .trim()
        .to_owned();
    assert!(growth.starts_with("fnr_") && !growth.contains(char::is_whitespace));

    server.ok(
        &growth,
        &[
            "event",
            "create",
            "user_signed_up",
            "--classification",
            "pii",
            "--description",
            "A user finished signup.",
        ],
    );
    server.ok(
        &growth,
        &[
            "event",
            "create",
            "card_swiped",
            "--classification",
            "internal",
        ],
    );
    server.ok(
        &fraud,
        &[
            "stream",
            "create",
            "fraud-signals",
            "--shards",
            "2",
            "--retention-hours",
            "48",
            "--tag",
            "team=fraud",
        ],
    );

    // Refused: not granted. Exit code 1, one line naming each event and why.
    let refused = server.run(
        &fraud,
        &[
            "subscription",
            "create",
            "--stream",
            "fraud-signals",
            "--events",
            "user_signed_up,card_swiped",
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(message.trim().lines().count(), 1, "{message}");
    assert!(
        message.contains("card_swiped (not granted)")
            && message.contains("user_signed_up (not granted)"),
        "{message}"
    );

    // Expiry is required on pii events.
    let no_expiry = server.run(
        &growth,
        &[
            "grant",
            "create",
            "user_signed_up",
            "--to",
            "fraud",
            "--reason",
            "Fraud scoring.",
        ],
    );
    assert_eq!(no_expiry.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_expiry.stderr).contains("expires_at is required"));

    let expires = (chrono::Utc::now() + chrono::Duration::days(90)).to_rfc3339();
    let grant: api::Grant = serde_json::from_str(&server.ok(
        &growth,
        &[
            "--json",
            "grant",
            "create",
            "user_signed_up",
            "--to",
            "fraud",
            "--reason",
            "Fraud scoring at signup.",
            "--expires-at",
            &expires,
        ],
    ))
    .expect("grant JSON");
    assert_eq!(
        (grant.granted_by.as_str(), grant.grantee.as_str()),
        ("growth", "fraud")
    );
    server.ok(
        &growth,
        &[
            "grant",
            "create",
            "card_swiped",
            "--to",
            "fraud",
            "--reason",
            "Fraud scoring.",
        ],
    );

    let subscription: api::Subscription = serde_json::from_str(&server.ok(
        &fraud,
        &[
            "--json",
            "subscription",
            "create",
            "--stream",
            "fraud-signals",
            "--events",
            "user_signed_up,card_swiped",
        ],
    ))
    .expect("subscription JSON");
    assert_eq!(subscription.events, ["card_swiped", "user_signed_up"]);

    let access = server.ok(&auditor, &["access", "user_signed_up"]);
    for expected in [
        "fraud",
        "growth",
        "Fraud scoring at signup.",
        "fraud-signals",
        "yes",
    ] {
        assert!(
            access.contains(expected),
            "access output lacks {expected:?}:\n{access}"
        );
    }
    assert!(server.ok(&auditor, &["audit", "verify"]).starts_with("OK:"));
    let denied = server.run(&fraud, &["audit", "verify"]);
    assert_eq!(denied.status.code(), Some(1));

    let lines = server.ok(&auditor, &["audit", "export", "--format", "jsonl"]);
    let entries: Vec<api::AuditEntry> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(
        entries
            .iter()
            .any(|e| e.action == "subscription.create" && e.outcome == "denied")
    );
    let csv = server.ok(&auditor, &["audit", "export", "--format", "csv"]);
    assert_eq!(
        csv.lines().count(),
        entries.len() + 1,
        "a header and one row per entry"
    );
    assert!(csv.starts_with("seq,time,request_id,actor"));
    let recent = server.ok(&auditor, &["--json", "audit", "log", "--since", "1h"]);
    assert_eq!(
        serde_json::from_str::<Vec<api::AuditEntry>>(&recent)
            .expect("JSON")
            .len(),
        entries.len()
    );

    // A restart keeps everything.
    server.stop();
    let server = Server::start(dir.path());
    assert_eq!(
        server.admin_token, admin,
        "the first admin's token is not replaced"
    );
    let streams: Vec<api::Stream> =
        serde_json::from_str(&server.ok(&fraud, &["--json", "stream", "list"])).expect("JSON");
    assert_eq!(
        streams
            .iter()
            .map(|s| (s.name.as_str(), s.shard_count, s.retention_hours))
            .collect::<Vec<_>>(),
        [("fraud-signals", 2, 48)]
    );
    let subscriptions: Vec<api::Subscription> =
        serde_json::from_str(&server.ok(&fraud, &["--json", "subscription", "list"]))
            .expect("JSON");
    assert_eq!(subscriptions, [subscription]);
    assert!(server.ok(&auditor, &["audit", "verify"]).starts_with("OK:"));
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let usage = std::process::Command::new(FANNER)
        .args(["grant", "create"])
        .output()
        .expect("runs");
    assert_eq!(usage.status.code(), Some(2));
    let bad_value = std::process::Command::new(FANNER)
        .args(["event", "create", "x", "--classification", "secret"])
        .output()
        .expect("runs");
    assert_eq!(bad_value.status.code(), Some(2));

    let unreachable = std::process::Command::new(FANNER)
        .args(["event", "list"])
        .env("FANNER_ENDPOINT", "http://127.0.0.1:9")
        .env("FANNER_TOKEN", "fnr_x")
        .output()
        .expect("runs");
    assert_eq!(unreachable.status.code(), Some(1));
    let message = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        message.starts_with("error: cannot reach the Fanner API at http://127.0.0.1:9"),
        "{message}"
    );

    let no_token = std::process::Command::new(FANNER)
        .args(["event", "list"])
        .env_remove("FANNER_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(no_token.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("FANNER_TOKEN"));
}

#[test]
fn catalog_push_registers_annotated_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let protos = dir.path().join("protos");
    std::fs::create_dir_all(protos.join("fanner/v1")).expect("mkdir");
    std::fs::write(protos.join("fanner/v1/catalog.proto"), proto::CATALOG_PROTO).expect("write");
    std::fs::write(
        protos.join("events.proto"),
        r#"syntax = "proto3";
package shop;
import "fanner/v1/catalog.proto";
message OrderPlaced {
  option (fanner.v1.event) = { name: "order_placed" classification: CLASSIFICATION_INTERNAL description: "An order was placed." };
  string order_id = 1;
}
message PaymentCaptured {
  option (fanner.v1.event) = { name: "payment_captured" classification: CLASSIFICATION_PII };
  string payment_id = 1;
}
message NotAnEvent { string x = 1; }
"#,
    )
    .expect("write");
    // What `protoc --include_imports --descriptor_set_out` writes; re-encoding through prost's
    // types would drop the custom options.
    let mut compiler = protox::Compiler::new([&protos]).expect("compiler");
    compiler.include_imports(true);
    compiler.open_file("events.proto").expect("compiles");
    let file = dir.path().join("events.binpb");
    std::fs::write(&file, compiler.encode_file_descriptor_set()).expect("write");

    let server = Server::start(&dir.path().join("data"));
    let shop = server
        .ok(
            &server.admin_token,
            &["token", "create", "--principal", "shop"],
        )
        .trim()
        .to_owned();
    let file = file.to_str().expect("utf-8 path");
    let pushed = server.ok(&shop, &["catalog", "push", file]);
    assert!(
        pushed.contains("order_placed") && pushed.contains("created"),
        "{pushed}"
    );
    let events: Vec<api::Event> =
        serde_json::from_str(&server.ok(&shop, &["--json", "event", "list"])).expect("JSON");
    let summary: Vec<(&str, &str, api::Classification, &str)> = events
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.owner.as_str(),
                e.classification,
                e.description.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "order_placed",
                "shop",
                api::Classification::Internal,
                "An order was placed."
            ),
            ("payment_captured", "shop", api::Classification::Pii, ""),
        ]
    );
    // Pushing again changes nothing.
    assert_eq!(
        server
            .ok(&shop, &["catalog", "push", file])
            .matches("unchanged")
            .count(),
        2
    );

    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, b"not a descriptor set").expect("write");
    let refused = server.run(
        &shop,
        &["catalog", "push", garbage.to_str().expect("utf-8")],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a valid FileDescriptorSet"));
}

#[test]
fn published_events_reach_granted_streams_and_the_lake() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    let admin = server.admin_token.clone();
    let growth = server
        .ok(&admin, &["token", "create", "--principal", "growth"])
        .trim()
        .to_owned();
    let fraud = server
        .ok(&admin, &["token", "create", "--principal", "fraud"])
        .trim()
        .to_owned();
    let ads = server
        .ok(&admin, &["token", "create", "--principal", "ads"])
        .trim()
        .to_owned();
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
    server.ok(
        &growth,
        &[
            "event",
            "create",
            "password_changed",
            "--classification",
            "internal",
        ],
    );
    server.ok(
        &growth,
        &[
            "grant",
            "create",
            "user_signed_up",
            "--to",
            "fraud",
            "--reason",
            "Fraud scoring.",
        ],
    );
    server.ok(&fraud, &["stream", "create", "fraud-signals"]);
    server.ok(
        &fraud,
        &[
            "subscription",
            "create",
            "--stream",
            "fraud-signals",
            "--events",
            "user_signed_up",
        ],
    );

    // Only the owner publishes; unknown events are refused by name.
    let foreign = server.run(&fraud, &["publish", "user_signed_up", "--json", "{}"]);
    assert_eq!(foreign.status.code(), Some(1));
    let unknown = server.run(&growth, &["publish", "ghost_event", "--json", "{}"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown events: ghost_event"));

    let publish = std::process::Command::new(FANNER)
        .args(["publish"])
        .env("FANNER_ENDPOINT", &server.endpoint)
        .env("FANNER_TOKEN", &growth)
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(
            r#"{"event": "user_signed_up", "payload": {"n": 1}, "user_id": "u1"}
{"event": "password_changed", "payload": {"n": 2}}
{"event": "user_signed_up", "payload_base64": "/wAQ"}
"#,
        );
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );

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
    let envelopes: Vec<api::EnvelopeView> = tailed
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(envelopes.len(), 2, "{tailed}");
    assert!(
        envelopes
            .iter()
            .all(|e| e.event_name == "user_signed_up" && e.producer == "growth")
    );
    let payloads: Vec<(Option<serde_json::Value>, Option<String>)> = envelopes
        .iter()
        .map(|e| (e.payload.clone(), e.payload_base64.clone()))
        .collect();
    assert!(payloads.contains(&(Some(serde_json::json!({"n": 1})), None)));
    assert!(payloads.contains(&(None, Some("/wAQ".to_owned()))));
    // password_changed was not granted: nothing more arrives.
    let more = server.ok(
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
    assert_eq!(more.lines().count(), 2, "{more}");

    let refused = server.run(
        &ads,
        &["tail", "fraud-signals", "--limit", "1", "--idle", "1"],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("belongs to"));

    // The persister writes every event (granted or not) under <event>/<yyyy-MM-dd:hh>/.
    let lake = dir.path().join("lake");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    loop {
        let found = ["user_signed_up", "password_changed"].iter().all(|event| {
            std::fs::read_dir(lake.join("events").join(event)).is_ok_and(|mut d| d.next().is_some())
        });
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lake objects did not appear under {}",
            lake.display()
        );
        // The persister flushes on age (5 s by default); poll rather than guess.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let partitions: Vec<String> = std::fs::read_dir(lake.join("events/user_signed_up"))
        .expect("partition dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        partitions
            .iter()
            .any(|p| p.starts_with(&today) && p.len() == "yyyy-MM-dd:hh".len()),
        "{partitions:?}"
    );
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawns");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("writes");
        child.wait_with_output().expect("finishes")
    }
}

/// Every file and directory under `root` (itself included), with its permission bits.
fn modes(root: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        // A file may vanish while we walk (a temporary object renamed into place).
        let Ok(metadata) = std::fs::metadata(&path) else {
            continue;
        };
        found.push((path.clone(), metadata.permissions().mode() & 0o777));
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten() {
                stack.push(entry.expect("entry").path());
            }
        }
    }
    found
}

#[test]
fn the_data_dir_is_owner_only_even_when_it_was_made_looser() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(data.join("instance"), "kept-name\n").expect("instance");
    std::fs::set_permissions(
        data.join("instance"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let server = Server::start_with(&data, &[("FANNER__PERSISTER__MAX_OBJECT_AGE_MS", "200")]);
    let admin = server.admin_token.clone();
    server.ok(
        &admin,
        &[
            "event",
            "create",
            "card_added",
            "--classification",
            "internal",
        ],
    );
    server.ok(
        &admin,
        &["publish", "card_added", "--json", r#"{"secret": 1}"#],
    );

    let objects = data.join("lake/events/card_added");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !modes(&objects).iter().any(|(path, _)| path.is_file()) {
        assert!(std::time::Instant::now() < deadline, "no lake object");
        // The persister flushes on age; poll rather than guess.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let found = modes(&data);
    for name in [
        "fanner.db",
        "fanner.db-wal",
        "streams.redb",
        "instance",
        "fanner.lock",
        "admin.token",
    ] {
        assert!(
            found.iter().any(|(path, _)| path.ends_with(name)),
            "{name} in {found:?}"
        );
    }
    let loose: Vec<_> = found
        .iter()
        .filter(|(path, mode)| *mode != if path.is_dir() { 0o700 } else { 0o600 })
        .collect();
    assert!(loose.is_empty(), "not owner-only: {loose:?}");
}

/// Writes a new self-signed certificate for 127.0.0.1 and its key over `dir`'s `cert.pem` and
/// `key.pem` (each replaced whole, as a certificate manager does), and the certificate again as
/// `ca-<n>.pem` for clients to trust.
fn new_certificate(dir: &std::path::Path, n: u32) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    for (name, pem) in [("key.pem", key.serialize_pem()), ("cert.pem", cert.pem())] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, pem).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }
    let ca = dir.join(format!("ca-{n}.pem"));
    std::fs::write(&ca, cert.pem()).expect("write");
    ca
}

#[test]
fn serve_terminates_tls_and_serves_a_replaced_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).expect("tls dir");
    let cert = tls.join("cert.pem").to_string_lossy().into_owned();
    let key = tls.join("key.pem").to_string_lossy().into_owned();
    let tls_env = [
        ("FANNER__TLS__CERT", cert.as_str()),
        ("FANNER__TLS__KEY", key.as_str()),
    ];

    // A key that is not the certificate's is refused at start, by name.
    new_certificate(&tls, 0);
    let other_key = rcgen::KeyPair::generate().expect("key");
    std::fs::write(&key, other_key.serialize_pem()).expect("write");
    let refused = std::process::Command::new(FANNER)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("refused"))
        .envs(tls_env)
        .output()
        .expect("fanner serve runs");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );

    let first = new_certificate(&tls, 1);
    let server = Server::start_with(&dir.path().join("data"), &tls_env);
    assert!(
        server.endpoint.starts_with("https://"),
        "{}",
        server.endpoint
    );
    let whoami = |ca: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(FANNER);
        command
            .arg("whoami")
            .env("FANNER_ENDPOINT", &server.endpoint)
            .env("FANNER_TOKEN", &server.admin_token);
        if let Some(ca) = ca {
            command.env("FANNER_CA_CERT", ca);
        }
        command.output().expect("fanner runs")
    };
    let trusted = whoami(Some(&first));
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert_eq!(
        whoami(None).status.code(),
        Some(1),
        "an unknown CA is refused"
    );

    let second = new_certificate(&tls, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !whoami(Some(&second)).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the replaced certificate was not served"
        );
        // The server polls the files' modification times every few seconds.
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(
        whoami(Some(&first)).status.code(),
        Some(1),
        "the old certificate is no longer served"
    );
}

#[test]
fn an_unknown_kinesis_read_mode_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = std::process::Command::new(FANNER)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FANNER__STREAMS__KINESIS__READ", "push")
        .output()
        .expect("fanner serve runs");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for needle in ["STREAMS.KINESIS.READ", "`polling` or `efo`", "push"] {
        assert!(stderr.contains(needle), "{stderr:?} should name {needle:?}");
    }
}
