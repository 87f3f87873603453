//! History on demand, as a team meets it: events published before their subscription existed
//! arrive in its stream from the lake and the GES, events published while it is hydrated
//! arrive too, and every one arrives exactly once, whatever the lake's format and backend, and
//! across a `kill -9` in the middle.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use api::{CreateSubscription, Hydration, HydrationState, StartFrom};

use crate::Server;

const EVENT: &str = "invoice_paid";
const STREAM: &str = "ledger";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn client(server: &Server) -> api::Client {
    api::Client::new(&server.endpoint, Some(server.admin_token.clone())).expect("client")
}

/// Publishes events `from..to` (their payload says which) and waits for every acknowledgement.
fn publish(server: &Server, from: usize, to: usize) {
    let lines: String = (from..to)
        .map(|i| format!("{{\"event\": \"{EVENT}\", \"payload\": {{\"n\": {i}}}}}\n"))
        .collect();
    server.publish_lines(&server.admin_token, &lines);
}

/// Every record on the stream: payload number → (copies, copies marked as history).
fn stream_records(server: &Server, at_most: usize) -> BTreeMap<u64, (usize, usize)> {
    let output = server.run(
        &server.admin_token,
        &[
            "tail",
            STREAM,
            "--from-beginning",
            "--limit",
            &at_most.to_string(),
            "--idle",
            "1",
        ],
    );
    assert!(
        output.status.success(),
        "tail failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut records = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let envelope: api::EnvelopeView = serde_json::from_str(line).expect("an envelope");
        let n = envelope.payload.as_ref().and_then(|p| p["n"].as_u64());
        let entry: &mut (usize, usize) = records.entry(n.expect("payload n")).or_default();
        entry.0 += 1;
        entry.1 += usize::from(envelope.history_id.is_some());
    }
    records
}

/// How many of the event's records the lake holds.
fn lake_count(lake: &Path) -> usize {
    let mut count = 0;
    let mut dirs = vec![lake.join("events").join(EVENT)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(body) = std::fs::read(&path) {
                let name = path.to_string_lossy().into_owned();
                let format = if name.ends_with(".parquet") {
                    persister::ObjectFormat::Parquet
                } else if name.ends_with(".ndjson.gz") {
                    persister::ObjectFormat::NdjsonGzip
                } else if name.ends_with(".ndjson") {
                    persister::ObjectFormat::Ndjson
                } else {
                    continue;
                };
                count += persister::lake::decode(format, &body)
                    .expect("a lake object reads")
                    .len();
            }
        }
    }
    count
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Polling what a user would poll; the bound above keeps a failure from hanging.
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn hydration(server: &Server, id: &str) -> Hydration {
    runtime()
        .block_on(client(server).get_subscription(id))
        .expect("subscription read")
        .expect("subscription exists")
        .hydration
}

/// The event and stream, `before` events in the lake, then a subscription from the earliest
/// event; returns its id.
fn subscribe_after_history(server: &Server, lake: &Path, before: usize) -> String {
    let admin = &server.admin_token;
    server.ok(
        admin,
        &["event", "create", EVENT, "--classification", "internal"],
    );
    server.ok(admin, &["stream", "create", STREAM]);
    publish(server, 0, before);
    wait_for(
        "the lake to hold the history",
        Duration::from_secs(60),
        || lake_count(lake) >= before,
    );
    runtime()
        .block_on(client(server).create_subscription(&CreateSubscription {
            stream: STREAM.to_owned(),
            events: vec![EVENT.to_owned()],
            start_from: Some(StartFrom::Earliest),
            delivery_format: Default::default(),
            filter: Default::default(),
        }))
        .expect("subscription created")
        .id
}

/// Every event number in `0..total` exactly once on the stream, `at_least_history` of them
/// marked as history.
fn assert_exactly_once(server: &Server, total: usize, history: usize) {
    let mut records = BTreeMap::new();
    wait_for("every event on the stream", Duration::from_secs(90), || {
        records = stream_records(server, total * 2 + 10);
        records.len() >= total
    });
    let copies: usize = records.values().map(|(c, _)| c).sum();
    let duplicated: Vec<_> = records.iter().filter(|(_, (c, _))| *c > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} events arrived more than once, e.g. {:?}",
        duplicated.len(),
        duplicated.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(copies, total, "every event once");
    assert_eq!(
        records.keys().copied().collect::<Vec<_>>(),
        (0..total as u64).collect::<Vec<_>>(),
        "no gap"
    );
    let marked: usize = records.values().map(|(_, h)| h).sum();
    assert!(
        marked >= history,
        "{marked} records carry the history mark; the {history} published before are history"
    );
}

fn hydrate_while_publishing(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut env = env.to_vec();
    env.push(("FANNER__PERSISTER__MAX_OBJECT_AGE_MS", "300"));
    let server = Server::start_with(dir.path(), &env);
    let (before, during) = (600, 300);
    let id = subscribe_after_history(&server, &dir.path().join("lake"), before);
    publish(&server, before, before + during);
    wait_for("hydration to finish", Duration::from_secs(90), || {
        hydration(&server, &id).state.is_finished()
    });
    let done = hydration(&server, &id);
    assert_eq!(done.state, HydrationState::Done, "{done:?}");
    assert!(done.events_delivered >= before as u64, "{done:?}");
    assert_exactly_once(&server, before + during, before);
}

#[test]
fn history_then_live_arrives_exactly_once_from_a_gzip_ndjson_lake() {
    hydrate_while_publishing(&[]);
}

#[test]
fn history_then_live_arrives_exactly_once_from_a_parquet_lake() {
    hydrate_while_publishing(&[("FANNER__PERSISTER__FORMAT", "parquet")]);
}

#[test]
fn history_then_live_arrives_exactly_once_on_kinesis() {
    if !testkit::integration_enabled("history_on_kinesis") {
        return;
    }
    let moto = testkit::moto::MotoServer::start_serial().expect("moto starts");
    let mut env = crate::kinesis_env(&moto, &testkit::unique_name("ges"), 2);
    env.push(("FANNER__STREAMS__BACKING_PREFIX", testkit::unique_name("h")));
    let env = crate::as_env(&env);
    hydrate_while_publishing(&env);
}

#[test]
fn a_hydration_killed_midway_resumes_with_no_gap_and_at_most_a_batch_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Slow enough to be killed in the middle: 1,500 events at 300 per second.
    let env = [
        ("FANNER__PERSISTER__MAX_OBJECT_AGE_MS", "300"),
        ("FANNER__HYDRATION__MAX_RECORDS_PER_SECOND", "300"),
    ];
    let server = Server::start_with(dir.path(), &env);
    let before = 1500;
    let id = subscribe_after_history(&server, &dir.path().join("lake"), before);
    wait_for("hydration to be under way", Duration::from_secs(60), || {
        hydration(&server, &id).events_delivered > 0
    });
    let midway = hydration(&server, &id);
    assert_eq!(midway.state, HydrationState::Running, "{midway:?}");
    server.kill();
    let server = Server::start_with(dir.path(), &env);
    publish(&server, before, before + 100);
    wait_for("hydration to finish", Duration::from_secs(90), || {
        hydration(&server, &id).state.is_finished()
    });
    assert_eq!(hydration(&server, &id).state, HydrationState::Done);
    let total = before + 100;
    let mut records = BTreeMap::new();
    wait_for("every event on the stream", Duration::from_secs(60), || {
        records = stream_records(&server, total * 2);
        records.len() >= total
    });
    assert_eq!(
        records.keys().copied().collect::<Vec<_>>(),
        (0..total as u64).collect::<Vec<_>>(),
        "no gap"
    );
    let repeated: usize = records.values().map(|(c, _)| c - 1).sum();
    assert!(
        repeated <= 500,
        "{repeated} records repeated; a crash repeats at most one batch (500)"
    );
}

/// A grantee's history starts where its grant says: by default when the grant was made.
#[test]
fn grants_bound_history_and_revocation_stops_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("FANNER__PERSISTER__MAX_OBJECT_AGE_MS", "300"),
        ("FANNER__HYDRATION__MAX_RECORDS_PER_SECOND", "40"),
    ];
    let server = Server::start_with(dir.path(), &env);
    let admin = &server.admin_token;
    let token = |principal: &str| {
        server
            .ok(admin, &["token", "create", "--principal", principal])
            .trim()
            .to_owned()
    };
    let growth = token("growth");
    let fraud = token("fraud");
    let risk = token("risk");
    server.ok(
        &growth,
        &["event", "create", EVENT, "--classification", "internal"],
    );
    // Old events (by event time), then the grants, then newer events.
    let old = chrono::Utc::now() - chrono::Duration::days(30);
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!(
            r#"{{"event": "{EVENT}", "event_time": "{}", "payload": {{"n": {i}}}}}"#,
            old.to_rfc3339()
        ));
        lines.push('\n');
    }
    server.publish_lines(&growth, &lines);
    let grants = runtime().block_on(async {
        let growth = api::Client::new(&server.endpoint, Some(growth.clone())).expect("client");
        let mut made = Vec::new();
        for (grantee, history_from) in
            [("fraud", None), ("risk", Some(api::HistoryFrom::Unbounded))]
        {
            made.push(
                growth
                    .create_grant(&api::CreateGrant {
                        event: EVENT.to_owned(),
                        grantee: grantee.to_owned(),
                        reason: "Ledger reconciliation.".to_owned(),
                        expires_at: None,
                        history_from,
                        include_pii: Default::default(),
                        redact: Default::default(),
                        redact_mode: Default::default(),
                    })
                    .await
                    .expect("grant"),
            );
        }
        made
    });
    assert_eq!(
        grants[0].history_from,
        api::HistoryFrom::At(grants[0].created_at),
        "deny by default: history from the grant's creation"
    );
    assert_eq!(grants[1].history_from, api::HistoryFrom::Unbounded);
    publish(&server, 200, 300);
    wait_for(
        "the lake to hold the history",
        Duration::from_secs(60),
        || lake_count(&dir.path().join("lake")) >= 300,
    );
    let subscribe = |token: &str, stream: &str| {
        server.ok(token, &["stream", "create", stream]);
        runtime()
            .block_on(
                api::Client::new(&server.endpoint, Some(token.to_owned()))
                    .expect("client")
                    .create_subscription(&CreateSubscription {
                        stream: stream.to_owned(),
                        events: vec![EVENT.to_owned()],
                        start_from: Some(StartFrom::Earliest),
                        delivery_format: Default::default(),
                        filter: Default::default(),
                    }),
            )
            .expect("subscription")
            .id
    };
    let fraud_sub = subscribe(&fraud, "fraud-ledger");
    let risk_sub = subscribe(&risk, "risk-ledger");
    wait_for("fraud's hydration", Duration::from_secs(60), || {
        hydration(&server, &fraud_sub).state.is_finished()
    });
    let numbers = |stream: &str| -> Vec<u64> {
        let out = server.ok(
            admin,
            &[
                "tail",
                stream,
                "--from-beginning",
                "--limit",
                "1000",
                "--idle",
                "1",
            ],
        );
        let mut got: Vec<u64> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<api::EnvelopeView>(l).ok())
            .filter_map(|e| e.payload.and_then(|p| p["n"].as_u64()))
            .collect();
        // History comes from each GES shard in turn.
        got.sort_unstable();
        got
    };
    let fraud_got = numbers("fraud-ledger");
    assert_eq!(
        fraud_got,
        (200..300).collect::<Vec<_>>(),
        "fraud's grant reaches back to its creation only"
    );
    // Risk's unbounded grant reaches every event; revoked half-way, its hydration stops.
    wait_for("risk's hydration to start", Duration::from_secs(60), || {
        hydration(&server, &risk_sub).events_delivered > 0
    });
    server.ok(&growth, &["grant", "revoke", &grants[1].id]);
    wait_for("risk's hydration to stop", Duration::from_secs(60), || {
        hydration(&server, &risk_sub).state.is_finished()
    });
    let stopped = hydration(&server, &risk_sub);
    assert_eq!(stopped.state, HydrationState::Failed, "{stopped:?}");
    assert!(
        stopped
            .error
            .as_deref()
            .is_some_and(|e| e.contains("access ended")),
        "{stopped:?}"
    );
    let risk_got = numbers("risk-ledger");
    assert!(
        !risk_got.is_empty() && risk_got.len() < 300,
        "risk got {} of 300 events before its grant was revoked",
        risk_got.len()
    );
}

/// After a consumer bug, a window of history is delivered again, beside live delivery, and the
/// audit trail says who asked for which window and how many events it re-delivered.
#[test]
fn a_replay_redelivers_its_window_and_is_audited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(
        dir.path(),
        &[("FANNER__PERSISTER__MAX_OBJECT_AGE_MS", "300")],
    );
    let admin = &server.admin_token;
    server.ok(
        admin,
        &["event", "create", EVENT, "--classification", "internal"],
    );
    server.ok(admin, &["stream", "create", STREAM]);
    let subscription = runtime()
        .block_on(client(&server).create_subscription(&CreateSubscription {
            stream: STREAM.to_owned(),
            events: vec![EVENT.to_owned()],
            start_from: None,
            delivery_format: Default::default(),
            filter: Default::default(),
        }))
        .expect("subscription");
    assert_eq!(subscription.hydration.state, HydrationState::None);
    // Events 0..100 on day one, 100..200 on day two (by event time).
    let day = |d: i64| chrono::Utc::now() - chrono::Duration::days(10 - d);
    let mut lines = String::new();
    for i in 0..200 {
        let at = day(if i < 100 { 1 } else { 2 });
        lines.push_str(&format!(
            r#"{{"event": "{EVENT}", "event_time": "{}", "payload": {{"n": {i}}}}}"#,
            at.to_rfc3339()
        ));
        lines.push('\n');
    }
    server.publish_lines(admin, &lines);
    wait_for("the lake", Duration::from_secs(60), || {
        lake_count(&dir.path().join("lake")) >= 200
    });
    let (from, to) = (day(2) - chrono::Duration::hours(1), day(3));
    let replay = runtime()
        .block_on(client(&server).replay_subscription(
            &subscription.id,
            &api::ReplaySubscription {
                from: StartFrom::At(from),
                to: Some(to),
            },
        ))
        .expect("replay");
    let id = replay.id.clone().expect("a replay has an id");
    wait_for("the replay", Duration::from_secs(60), || {
        hydration(&server, &subscription.id).state.is_finished()
    });
    let done = hydration(&server, &subscription.id);
    assert_eq!(
        (done.state, done.events_delivered),
        (HydrationState::Done, 100)
    );
    let records = stream_records(&server, 1000);
    for (n, (copies, marked)) in &records {
        let expected = if *n >= 100 { (2, 1) } else { (1, 0) };
        assert_eq!((*copies, *marked), expected, "event {n}");
    }
    assert_eq!(records.len(), 200);
    let audit = server.ok(admin, &["audit", "export", "--format", "jsonl"]);
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("an audit entry"))
        .collect();
    let asked = entries
        .iter()
        .find(|e| e["action"] == "subscription.replay")
        .expect("the replay is audited");
    assert_eq!(asked["actor"], "admin");
    assert_eq!(asked["after"]["id"], id.as_str());
    assert!(asked["after"]["from"].is_string() && asked["after"]["to"].is_string());
    let finished = entries
        .iter()
        .find(|e| e["action"] == "hydration.done" && e["object_id"] == id.as_str())
        .expect("its end is audited");
    assert_eq!(finished["after"]["events_delivered"], 100);
}

/// History passes the same gate as live delivery: the subscription's filter, the grant's
/// redaction.
#[test]
fn history_is_filtered_and_redacted_exactly_like_live_delivery() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(
        dir.path(),
        &[("FANNER__PERSISTER__MAX_OBJECT_AGE_MS", "300")],
    );
    let admin = &server.admin_token;
    let token = |principal: &str| {
        server
            .ok(admin, &["token", "create", "--principal", principal])
            .trim()
            .to_owned()
    };
    let (growth, fraud) = (token("growth"), token("fraud"));
    server.ok(
        &growth,
        &["event", "create", EVENT, "--classification", "internal"],
    );
    server.ok(
        &growth,
        &[
            "grant",
            "create",
            EVENT,
            "--to",
            "fraud",
            "--reason",
            "Ledger checks.",
            "--history-from",
            "unbounded",
            "--redact",
            "user_id,payload.secret",
        ],
    );
    let lines = |range: std::ops::Range<usize>| {
        range
            .map(|i| {
                format!(
                    r#"{{"event": "{EVENT}", "user_id": "u-{i}", "payload": {{"n": {}, "i": {i}, "secret": "s-{i}"}}}}"#,
                    i % 100
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    server.publish_lines(&growth, &lines(0..100));
    wait_for("the lake", Duration::from_secs(60), || {
        lake_count(&dir.path().join("lake")) >= 100
    });
    server.ok(&fraud, &["stream", "create", "fraud-ledger"]);
    let id = runtime()
        .block_on(
            api::Client::new(&server.endpoint, Some(fraud.clone()))
                .expect("client")
                .create_subscription(&CreateSubscription {
                    stream: "fraud-ledger".to_owned(),
                    events: vec![EVENT.to_owned()],
                    start_from: Some(StartFrom::Earliest),
                    filter: Some(serde_json::json!({"payload": {"n": [{"numeric": ["<", 50]}]}})),
                    ..Default::default()
                }),
        )
        .expect("subscription")
        .id;
    server.publish_lines(&growth, &lines(100..200));
    wait_for("hydration", Duration::from_secs(60), || {
        hydration(&server, &id).state.is_finished()
    });
    let mut got: Vec<api::EnvelopeView> = Vec::new();
    wait_for("the matching events", Duration::from_secs(60), || {
        let out = server.ok(
            admin,
            &[
                "tail",
                "fraud-ledger",
                "--from-beginning",
                "--limit",
                "500",
                "--idle",
                "1",
            ],
        );
        got = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("an envelope"))
            .collect();
        got.len() >= 100
    });
    let mut numbers: Vec<u64> = got
        .iter()
        .filter_map(|e| e.payload.as_ref().and_then(|p| p["i"].as_u64()))
        .collect();
    numbers.sort_unstable();
    let expected: Vec<u64> = (0..200).filter(|i| i % 100 < 50).collect();
    assert_eq!(numbers, expected, "exactly the matching events, once each");
    let history = got.iter().filter(|e| e.history_id.is_some()).count();
    // Events published while the subscription was hydrated may come either way, never both.
    assert!(
        history >= 50,
        "the 50 matching events from before came as history: {history}"
    );
    for envelope in &got {
        assert_eq!(envelope.user_id, "", "user_id is redacted: {envelope:?}");
        let payload = envelope.payload.as_ref().expect("a JSON payload");
        assert!(
            payload.get("secret").is_none(),
            "payload.secret is redacted: {payload}"
        );
        assert!(
            payload["n"].as_u64() < Some(50),
            "the filter holds: {payload}"
        );
    }
}
