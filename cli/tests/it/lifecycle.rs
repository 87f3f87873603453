//! `fanner serve` as operators meet it: killed and restarted on the same data dir, stopped with
//! clients still attached, started twice on one data dir, and run as two replicas on one store
//! and one Kinesis of which one is killed.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{FANNER, Server, as_env};

pub(crate) const EVENT: &str = "order_placed";
pub(crate) const STREAM: &str = "order-audit";

/// An event owned by the admin, and a stream of the admin's that subscribes to it.
pub(crate) fn set_up(server: &Server) {
    let admin = &server.admin_token;
    server.ok(
        admin,
        &["event", "create", EVENT, "--classification", "internal"],
    );
    server.ok(admin, &["stream", "create", STREAM]);
    server.ok(
        admin,
        &[
            "subscription",
            "create",
            "--stream",
            STREAM,
            "--events",
            EVENT,
        ],
    );
}

/// Publishes `n` events and returns once every one is acknowledged.
pub(crate) fn publish(server: &Server, n: usize) {
    let lines: String = (0..n)
        .map(|i| format!("{{\"event\": \"{EVENT}\", \"payload\": {{\"n\": {i}}}}}\n"))
        .collect();
    server.publish_lines(&server.admin_token, &lines);
}

/// Every event id in the lake's objects for [`EVENT`], with how often each occurs.
pub(crate) fn lake_ids(lake: &Path) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    let mut dirs = vec![lake.join("events").join(EVENT)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.to_string_lossy();
            if !name.ends_with(".ndjson.gz") {
                continue;
            }
            let mut text = String::new();
            // Objects appear by rename, so a listed one is complete.
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            flate2::read::MultiGzDecoder::new(file)
                .read_to_string(&mut text)
                .expect("a lake object is gzip NDJSON");
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
                let id = value["event_id"].as_str().expect("event_id").to_owned();
                *ids.entry(id).or_default() += 1;
            }
        }
    }
    ids
}

/// The distinct event ids on [`STREAM`] (delivery is at least once: duplicates are allowed).
fn stream_ids(server: &Server, n: usize) -> HashSet<String> {
    stream_envelopes(server, n)
        .into_iter()
        .map(|envelope| envelope.event_id)
        .collect()
}

/// What [`STREAM`] holds, shard by shard in order, up to `2 n` records.
pub(crate) fn stream_envelopes(server: &Server, n: usize) -> Vec<api::EnvelopeView> {
    let output = server.run(
        &server.admin_token,
        &[
            "tail",
            STREAM,
            "--from-beginning",
            "--limit",
            &(2 * n).to_string(),
            "--idle",
            "0.5",
        ],
    );
    if !output.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<api::EnvelopeView>(line).ok())
        .collect()
}

/// Polls until `done` holds, up to `limit`.
#[track_caller]
pub(crate) fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the lake and the stream each hold all `n` events; how long after `since` each
/// was first seen complete.
pub(crate) fn until_complete(
    server: &Server,
    lake: &Path,
    n: usize,
    since: Instant,
) -> (Duration, Duration) {
    let (mut lake_at, mut stream_at) = (None, None);
    wait_until(
        "the lake and the stream hold every event",
        Duration::from_secs(90),
        || {
            if lake_at.is_none() && lake_ids(lake).len() == n {
                lake_at = Some(since.elapsed());
            }
            if stream_at.is_none() && stream_ids(server, n).len() == n {
                stream_at = Some(since.elapsed());
            }
            lake_at.is_some() && stream_at.is_some()
        },
    );
    (lake_at.unwrap_or_default(), stream_at.unwrap_or_default())
}

#[test]
fn after_kill_9_a_restart_on_the_same_data_dir_takes_its_shards_back_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Leases far longer than this test: only a restart that takes its own shards back (rather
    // than waiting for them to expire) delivers in time.
    let env = [
        ("FANNER__ENGINE__LEASE_TTL_MS", "600000"),
        ("FANNER__PERSISTER__LEASE_TTL_MS", "600000"),
    ];
    let server = Server::start_with(dir.path(), &env);
    set_up(&server);
    let instance = std::fs::read_to_string(dir.path().join("instance")).expect("instance");
    let n = 3000;
    publish(&server, n);
    server.kill();

    let restarted = Instant::now();
    let server = Server::start_with(dir.path(), &env);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("instance")).expect("instance"),
        instance,
        "a restart keeps the data dir's identity"
    );
    let lake = dir.path().join("lake");
    let (lake_took, stream_took) = until_complete(&server, &lake, n, restarted);
    let copies = lake_ids(&lake);
    assert!(
        copies.values().all(|&count| count == 1),
        "every event is in the lake exactly once"
    );
    eprintln!(
        "after kill -9 and restart: lake complete in {lake_took:?}, stream in {stream_took:?} \
         (including the restart)"
    );
    server.stop();
}

#[test]
fn sigterm_with_open_tails_exits_within_the_shutdown_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(dir.path(), &[("FANNER__SHUTDOWN_TIMEOUT_MS", "3000")]);
    set_up(&server);
    let mut tails: Vec<_> = (0..2)
        .map(|_| {
            Command::new(FANNER)
                .args(["tail", STREAM])
                .env("FANNER_ENDPOINT", &server.endpoint)
                .env("FANNER_TOKEN", &server.admin_token)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("tail starts")
        })
        .collect();
    // The tails follow from the stream's end: an event published now reaches both, which shows
    // they are connected.
    let readers: Vec<_> = tails
        .iter_mut()
        .map(|tail| {
            let stdout = tail.stdout.take().expect("stdout");
            std::thread::spawn(move || BufReader::new(stdout).lines().next().is_some())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while readers.iter().any(|r| !r.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "the tails did not receive an event"
        );
        publish(&server, 1);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, took) = server
        .terminate(Duration::from_secs(20))
        .expect("fanner serve exits after SIGTERM while tails are open");
    assert!(status.success(), "a graceful shutdown exits 0: {status}");
    assert!(
        took < Duration::from_secs(3 + 5),
        "exited after {took:?}, past the 3 s shutdown timeout"
    );
    for mut tail in tails {
        let ended = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            tail.try_wait().expect("wait").is_some()
        });
        if !ended {
            let _ = tail.kill();
        }
        assert!(ended, "a tail ends when the server shuts down");
    }
    eprintln!("SIGTERM with two open tails: exited in {took:?}");
}

#[test]
fn one_data_dir_is_served_by_one_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    let second = Command::new(FANNER)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FANNER_LOG", "warn")
        .output()
        .expect("second serve runs");
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another process is serving"), "{stderr}");
    // The first is unaffected.
    server.ok(&server.admin_token, &["event", "list"]);
    server.stop();
}

/// `GET path` on the server, the body as text.
pub(crate) fn http_get(endpoint: &str, path: &str) -> String {
    let address = endpoint.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// The shards a replica holds in `group`, from its `/metrics`.
pub(crate) fn shards_held(server: &Server, group: &str) -> Option<u32> {
    let metrics = http_get(&server.endpoint, "/metrics");
    let prefix = format!("fanner_shards_held{{group=\"{group}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u32)
}

/// One PostgreSQL database, one moto Kinesis and one local lake that several `fanner serve`
/// processes share, when the integration tier and a database are available.
struct SharedDeployment {
    database: String,
    moto: testkit::moto::MotoServer,
    lake: tempfile::TempDir,
    ges: String,
}

impl SharedDeployment {
    fn start(test: &str) -> Option<SharedDeployment> {
        if !testkit::integration_enabled(test) {
            return None;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let database = runtime.block_on(testkit::postgres::fresh_database(test))?;
        Some(SharedDeployment {
            database,
            moto: testkit::moto::MotoServer::start_serial().expect("moto starts"),
            lake: tempfile::tempdir().expect("lake dir"),
            ges: testkit::unique_name("ges"),
        })
    }

    /// The environment of a process on this deployment, whose GES has `shards` shards.
    fn env(&self, shards: u32) -> Vec<(&'static str, String)> {
        let mut env = crate::kinesis_env(&self.moto, &self.ges, shards);
        env.extend([
            ("FANNER_DATABASE_URL", self.database.clone()),
            ("FANNER__LAKE__SINK", "local".to_owned()),
            (
                "FANNER__LAKE__PATH",
                self.lake.path().to_string_lossy().into_owned(),
            ),
        ]);
        env
    }
}

#[test]
fn an_api_only_and_a_worker_only_process_split_the_work() {
    let Some(shared) = SharedDeployment::start("api_and_worker_processes") else {
        return;
    };
    let env = shared.env(2);
    let env = as_env(&env);
    let dir_api = tempfile::tempdir().expect("temp dir");
    let dir_worker = tempfile::tempdir().expect("temp dir");
    let api = Server::start_with_args(dir_api.path(), &["--components", "api"], &env);
    let worker = Server::start_with_args(
        dir_worker.path(),
        &["--components", "engine,persister"],
        &env,
    );
    // A worker answers operators only; the API process runs no shard jobs.
    for path in ["/healthz", "/metrics"] {
        assert!(
            http_get(&worker.endpoint, path).starts_with("HTTP/1.0 200"),
            "{path}"
        );
    }
    assert!(http_get(&worker.endpoint, "/v1/openapi.json").starts_with("HTTP/1.0 404"));
    wait_until("both processes are ready", Duration::from_secs(30), || {
        [&api, &worker]
            .iter()
            .all(|s| http_get(&s.endpoint, "/readyz").starts_with("HTTP/1.0 200"))
    });
    set_up(&api);
    wait_until(
        "the worker holds both jobs' shards",
        Duration::from_secs(30),
        || {
            shards_held(&worker, "fanner") == Some(2)
                && shards_held(&worker, "persister") == Some(2)
        },
    );
    assert_eq!(shards_held(&api, "fanner"), None);
    let n = 200;
    publish(&api, n);
    until_complete(&api, shared.lake.path(), n, Instant::now());
}

#[test]
fn two_replicas_on_postgres_and_kinesis_share_both_jobs_and_survive_a_kill_9() {
    let test = "two_replicas_on_postgres_and_kinesis";
    let Some(shared) = SharedDeployment::start(test) else {
        return;
    };
    let env = shared.env(4);
    let lake = &shared.lake;
    let env = as_env(&env);
    let dir_a = tempfile::tempdir().expect("temp dir");
    let dir_b = tempfile::tempdir().expect("temp dir");
    let a = Server::start_with(dir_a.path(), &env);
    let b = Server::start_with(dir_b.path(), &env);
    set_up(&a);
    for group in ["fanner", "persister"] {
        wait_until(
            &format!("the replicas share the {group} job's shards 2 + 2"),
            Duration::from_secs(60),
            || shards_held(&a, group) == Some(2) && shards_held(&b, group) == Some(2),
        );
    }
    let n = 3000;
    publish(&a, n);
    b.kill();
    let killed = Instant::now();
    wait_until(
        "the survivor holds every shard of both jobs",
        Duration::from_secs(60),
        || shards_held(&a, "fanner") == Some(4) && shards_held(&a, "persister") == Some(4),
    );
    let (lake_took, stream_took) = until_complete(&a, lake.path(), n, killed);
    let copies = lake_ids(lake.path());
    assert!(
        copies.values().all(|&count| count == 1),
        "every event is in the lake exactly once"
    );
    eprintln!(
        "two replicas, kill -9 of one: lake complete after {lake_took:?}, stream after \
         {stream_took:?}"
    );
    a.stop();
}

#[test]
fn events_published_through_the_api_are_counted_once_from_the_ges() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path());
    set_up(&server);
    publish(&server, 40);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client =
        api::Client::new(&server.endpoint, Some(server.admin_token.clone())).expect("client");
    let seen = || {
        runtime
            .block_on(client.event_health())
            .expect("health")
            .into_iter()
            .find(|health| health.event == EVENT)
            .map_or(0, |health| health.events_seen)
    };
    wait_until(
        "the engine's count reaches the control plane",
        Duration::from_secs(30),
        || seen() >= 40,
    );
    // Two more status reports: a count from the API on top of the GES's would show by now.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(seen(), 40, "each event counted once");
    server.stop();
}
