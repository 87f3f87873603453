//! History on demand from the shell: `--from` and `--history-from` parsed and refused with exit
//! code 2, `--wait` following a hydration to its end (exit 1 with the reason when it fails),
//! `subscription show`/`update`/`replay`, and every replay in the audit log with its window and
//! count. The server runs only the API: the test reports progress as the data plane would, so
//! nothing else moves the hydrations.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::{HistoryFrom, Hydration, HydrationKind, HydrationState, StartFrom, Subscription};

use crate::{FANNER, Server};

/// The one GES shard of a server started with `FANNER__STREAMS__GES_SHARDS=1`.
const SHARD: &str = "shardId-000000000000";

/// The value of `key` in `key  value` output.
fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().find_map(|line| {
        line.strip_prefix(key)
            .filter(|rest| rest.starts_with(' '))
            .map(str::trim)
    })
}

#[track_caller]
fn usage_error(args: &[&str], needle: &str) {
    let output = Command::new(FANNER).args(args).output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "fanner {}: {stderr}",
        args.join(" ")
    );
    assert!(
        stderr.contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
}

#[test]
fn bad_starts_and_history_bounds_are_usage_errors() {
    let create = |from: &str| {
        vec![
            "subscription",
            "create",
            "--stream",
            "s",
            "--events",
            "e",
            "--from",
        ]
        .into_iter()
        .chain([from])
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-01-01", ""] {
        let args = create(bad);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        usage_error(&args, "--from");
        usage_error(&args, "is not `now`, `earliest` or an RFC 3339 instant");
    }
    usage_error(
        &["subscription", "replay", "some-id", "--from", "last week"],
        "--from",
    );
    usage_error(&["subscription", "replay", "some-id"], "--from");
    usage_error(
        &[
            "grant",
            "create",
            "e",
            "--to",
            "fraud",
            "--reason",
            "Fraud scoring.",
            "--history-from",
            "forever",
        ],
        "is not `unbounded` or an RFC 3339 instant",
    );
    usage_error(
        &["grant", "update", "some-id", "--history-from", "2026"],
        "--history-from",
    );
}

/// Reports progress on a hydration as the data plane does.
struct DataPlane {
    runtime: tokio::runtime::Runtime,
    admin: api::Client,
}

impl DataPlane {
    fn new(server: &Server) -> DataPlane {
        DataPlane {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            admin: api::Client::new(&server.endpoint, Some(server.admin_token.clone()))
                .expect("client"),
        }
    }

    fn report(&self, hydration: &str, delivered: u64, done: bool, error: Option<&str>) {
        self.runtime
            .block_on(self.admin.report_hydration(
                hydration,
                &api::HydrationProgress {
                    shard: SHARD.to_owned(),
                    events_delivered: delivered,
                    handover_after: None,
                    done,
                    error: error.map(str::to_owned),
                },
            ))
            .expect("progress is recorded");
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        self.runtime
            .block_on(self.admin.list_subscriptions(None))
            .expect("subscriptions")
    }

    /// The newest hydration of `subscription` once it is not `previous`.
    #[track_caller]
    fn next_hydration(&self, subscription: &str, previous: Option<&str>) -> Hydration {
        let start = Instant::now();
        loop {
            let found = self
                .subscriptions()
                .into_iter()
                .find(|s| s.id == subscription)
                .map(|s| s.hydration)
                .filter(|h| h.id.is_some() && h.id.as_deref() != previous);
            if let Some(hydration) = found {
                return hydration;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no new hydration for {subscription}"
            );
            // The command under test is still sending its request.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `fanner` command left running (it waits), with its output piped.
fn spawn(server: &Server, token: &str, args: &[&str]) -> Child {
    Command::new(FANNER)
        .args(args)
        .env("FANNER_ENDPOINT", &server.endpoint)
        .env("FANNER_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fanner starts")
}

/// Waits for a spawned command to end: its exit code, stdout and stderr.
#[track_caller]
fn finished(mut child: Child) -> (Option<i32>, String, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "`--wait` did not end after the hydration did"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    (status.code(), stdout, stderr)
}

#[test]
fn hydrations_and_replays_from_the_shell() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with_args(
        dir.path(),
        &["--components", "api"],
        &[("FANNER__STREAMS__GES_SHARDS", "1")],
    );
    let plane = DataPlane::new(&server);
    let admin = server.admin_token.clone();
    let token = |name: &str| {
        server
            .ok(&admin, &["token", "create", "--principal", name])
            .trim()
            .to_owned()
    };
    let (growth, fraud) = (token("growth"), token("fraud"));
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

    // Deny by default: a grant reaches back to its creation time, until widened.
    let grant: api::Grant = serde_json::from_str(&server.ok(
        &growth,
        &[
            "--json",
            "grant",
            "create",
            "card_swiped",
            "--to",
            "fraud",
            "--reason",
            "Fraud scoring.",
        ],
    ))
    .expect("grant JSON");
    assert_eq!(grant.history_from, HistoryFrom::At(grant.created_at));
    let widened: api::Grant = serde_json::from_str(&server.ok(
        &growth,
        &[
            "--json",
            "grant",
            "update",
            &grant.id,
            "--history-from",
            "unbounded",
        ],
    ))
    .expect("grant JSON");
    assert_eq!(
        (widened.history_from, widened.reason.as_str()),
        (HistoryFrom::Unbounded, "Fraud scoring."),
        "only what is given changes"
    );
    let access = server.ok(&growth, &["access", "card_swiped"]);
    assert!(
        access.contains("HISTORY FROM") && access.contains("unbounded"),
        "{access}"
    );

    // `--wait` follows the hydration to its end.
    server.ok(&fraud, &["stream", "create", "fraud-signals"]);
    let waiting = spawn(
        &server,
        &fraud,
        &[
            "--json",
            "subscription",
            "create",
            "--stream",
            "fraud-signals",
            "--events",
            "card_swiped",
            "--from",
            "earliest",
            "--wait",
        ],
    );
    let id = {
        let start = Instant::now();
        loop {
            if let Some(s) = plane.subscriptions().into_iter().next() {
                break s.id;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no subscription");
            // The command under test is still sending its request.
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let start = plane.next_hydration(&id, None);
    assert_eq!(
        (start.kind, start.state, start.from),
        (HydrationKind::Start, HydrationState::Pending, None)
    );
    let start_id = start.id.clone().expect("an id");
    plane.report(&start_id, 7, false, None);
    let shown = server.ok(&fraud, &["subscription", "show", &id]);
    assert_eq!(
        (
            field(&shown, "start_from"),
            field(&shown, "hydration"),
            field(&shown, "hydration_from"),
            field(&shown, "events_delivered"),
        ),
        (
            Some("earliest"),
            Some("running"),
            Some("earliest"),
            Some("7")
        ),
        "{shown}"
    );
    plane.report(&start_id, 7, true, None);
    let (code, stdout, stderr) = finished(waiting);
    assert_eq!(code, Some(0), "{stderr}");
    let created: Subscription = serde_json::from_str(&stdout).expect("subscription JSON");
    assert_eq!(
        (
            created.start_from,
            created.hydration.state,
            created.hydration.events_delivered
        ),
        (StartFrom::Earliest, HydrationState::Done, 7)
    );
    assert!(
        stderr.is_empty(),
        "no spinner without a terminal: {stderr:?}"
    );

    // A replay of a window; its failure ends `--wait` with exit 1 and the reason.
    let replayed: Hydration = serde_json::from_str(&server.ok(
        &fraud,
        &[
            "--json",
            "subscription",
            "replay",
            &id,
            "--from",
            "2026-01-01T00:00:00Z",
            "--to",
            "2026-02-01T00:00:00+01:00",
        ],
    ))
    .expect("hydration JSON");
    let at = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .expect("valid")
            .to_utc()
    };
    assert_eq!(
        (
            replayed.kind,
            replayed.state,
            replayed.from,
            replayed.to,
            replayed.requested_by.as_deref()
        ),
        (
            HydrationKind::Replay,
            HydrationState::Pending,
            Some(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-31T23:00:00Z")),
            Some("fraud")
        )
    );
    let replay_id = replayed.id.clone().expect("an id");
    let waiting = spawn(
        &server,
        &fraud,
        &[
            "subscription",
            "replay",
            &id,
            "--from",
            "earliest",
            "--wait",
        ],
    );
    let again = plane.next_hydration(&id, Some(&replay_id));
    plane.report(&replay_id, 3, false, Some("superseded by the test"));
    plane.report(
        again.id.as_deref().expect("an id"),
        2,
        false,
        Some("the lake lacks object events/card_swiped/x.ndjson.gz"),
    );
    let (code, stdout, stderr) = finished(waiting);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.starts_with("error: hydration")
            && stderr.contains(&format!(
                "failed: shard {SHARD}: the lake lacks object events/card_swiped/x.ndjson.gz"
            ))
            && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    assert_eq!(
        (
            field(&stdout, "hydration"),
            field(&stdout, "events_delivered"),
            field(&stdout, "requested_by"),
        ),
        (Some("failed"), Some("2"), Some("fraud")),
        "{stdout}"
    );
    let listed = server.ok(&fraud, &["subscription", "list"]);
    assert!(listed.contains("failed (2)"), "{listed}");

    server.fails(
        &fraud,
        &["subscription", "replay", &id, "--from", "now"],
        "`now` replays nothing",
    );
    server.fails(
        &fraud,
        &["subscription", "update", &id],
        "nothing to change",
    );
    server.fails(
        &growth,
        &["grant", "update", &grant.id],
        "nothing to change",
    );
    server.fails(
        &growth,
        &["subscription", "replay", &id, "--from", "earliest"],
        "only its owner or an admin",
    );

    // A new start replays from there.
    let updated: Subscription = serde_json::from_str(&server.ok(
        &fraud,
        &[
            "--json",
            "subscription",
            "update",
            &id,
            "--from",
            "2026-03-01T00:00:00Z",
        ],
    ))
    .expect("subscription JSON");
    assert_eq!(
        (
            updated.start_from,
            updated.hydration.kind,
            updated.hydration.state,
            updated.events
        ),
        (
            StartFrom::At(at("2026-03-01T00:00:00Z")),
            HydrationKind::Replay,
            HydrationState::Pending,
            vec!["card_swiped".to_owned()]
        )
    );

    // Every replay is audited: who, which window; and its end with the count.
    let entries: Vec<api::AuditEntry> =
        serde_json::from_str(&server.ok(&admin, &["--json", "audit", "log"])).expect("JSON");
    let replay = entries
        .iter()
        .find(|e| e.action == "subscription.replay" && e.outcome == "ok")
        .expect("the replay is audited");
    let after = replay.after.as_ref().expect("what was asked for");
    assert_eq!(
        (
            replay.actor.as_str(),
            replay.object_id.as_str(),
            after["from"].as_str().map(at),
            after["to"].as_str().map(at),
        ),
        (
            "fraud",
            id.as_str(),
            Some(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-31T23:00:00Z")),
        )
    );
    let ended = |action: &str, hydration: &str| {
        entries
            .iter()
            .find(|e| e.action == action && e.object_id == hydration)
            .and_then(|e| e.after.as_ref())
            .map(|after| after["events_delivered"].as_u64())
            .unwrap_or_else(|| panic!("no {action} for {hydration}"))
    };
    assert_eq!(ended("hydration.done", &start_id), Some(7));
    assert_eq!(ended("hydration.failed", &replay_id), Some(3));
    assert!(
        entries
            .iter()
            .any(|e| e.action == "subscription.replay" && e.outcome != "ok" && e.actor == "growth"),
        "a refused replay is audited too"
    );
    server.stop();
}
