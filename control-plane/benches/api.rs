//! API throughput and latency: concurrent clients over real sockets against an in-process control
//! plane, on SQLite and (when `FANNER_TEST_DATABASE_URL` is set) PostgreSQL.
//!
//! `cargo bench -p control-plane --bench api` (set `FANNER_BENCH_SECONDS` to run longer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{Classification, Client, CreateEvent, CreateToken, Role, UpdateEvent};
use control_plane::{Clock, ControlPlane, Settings, Store};
use streams::embedded::EmbeddedBackend;

const CLIENTS: usize = 16;

struct Figures {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn print(&mut self, store: &str, what: &str) {
        self.latencies.sort();
        let at = |q: f64| self.latencies[((self.latencies.len() as f64 - 1.0) * q) as usize];
        println!(
            "{store:<9} {what:<22} {:>8.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} requests, {CLIENTS} clients)",
            self.requests as f64 / self.elapsed.as_secs_f64(),
            at(0.50).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            self.requests,
        );
    }
}

/// Runs `op` from `CLIENTS` concurrent tasks for `duration`.
async fn load<F, Fut>(duration: Duration, op: F) -> Figures
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0;
                while started.elapsed() < duration {
                    let t = Instant::now();
                    op(client, i).await;
                    latencies.push(t.elapsed());
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    Figures {
        requests: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

async fn bench(store_name: &str, url: &str, dir: &std::path::Path, duration: Duration) {
    let store = Store::open(url).await.expect("store");
    let backend = Arc::new(EmbeddedBackend::open(dir.join("streams.redb")).expect("backend"));
    let cp = ControlPlane::new(store, backend, Settings::default(), Clock::default())
        .await
        .expect("control plane");
    let token = cp.bootstrap().await.expect("bootstrap").expect("fresh");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(control_plane::http::serve(
        listener,
        control_plane::http::app(cp),
        std::future::pending(),
        std::time::Duration::from_secs(1),
    ));
    let admin = Client::new(&endpoint, Some(token)).expect("client");
    let member = admin
        .create_token(&CreateToken {
            principal: "bench".to_owned(),
            role: Some(Role::Member),
        })
        .await
        .expect("token");
    let client = Client::new(&endpoint, Some(member.token)).expect("client");
    for i in 0..100 {
        client
            .create_event(&CreateEvent {
                name: format!("event_{i}"),
                classification: Classification::Internal,
                description: String::new(),
                owner: None,
            })
            .await
            .expect("seed");
    }

    let reader = client.clone();
    load(duration, move |c, i| {
        let reader = reader.clone();
        async move {
            reader
                .get_event(&format!("event_{}", (c * 7 + i) % 100))
                .await
                .expect("read");
        }
    })
    .await
    .print(store_name, "read (GET event)");

    let writer = client.clone();
    let run = rand_suffix();
    load(duration, move |c, i| {
        let writer = writer.clone();
        let name = format!("new_{run}_{c}_{i}");
        async move {
            writer
                .create_event(&CreateEvent {
                    name,
                    classification: Classification::Public,
                    description: String::new(),
                    owner: None,
                })
                .await
                .expect("write");
        }
    })
    .await
    .print(store_name, "write (POST event)");

    let updater = client.clone();
    load(duration, move |c, i| {
        let updater = updater.clone();
        async move {
            updater
                .update_event(
                    &format!("event_{c}"),
                    &UpdateEvent {
                        classification: Classification::Internal,
                        description: format!("update {i}"),
                        revision: None,
                    },
                )
                .await
                .expect("update");
        }
    })
    .await
    .print(store_name, "write (PUT event)");
}

fn rand_suffix() -> u32 {
    std::process::id()
}

fn main() {
    let seconds: u64 = std::env::var("FANNER_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        );
        bench("sqlite", &sqlite, dir.path(), duration).await;
        match testkit::postgres::fresh_database("api bench").await {
            Some(url) => {
                let dir = tempfile::tempdir().expect("temp dir");
                bench("postgres", &url, dir.path(), duration).await;
            }
            None => println!("postgres  skipped: set FANNER_TEST_DATABASE_URL"),
        }
    });
}
