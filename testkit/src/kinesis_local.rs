//! kinesis-local (npm; kinesis-mock compiled to JavaScript): Kinesis with resharding,
//! `SHARD_END` with child shards and enhanced fan-out, none of which moto has. It is slow (several
//! milliseconds a call, about a gigabyte of memory), so only the suites that need those run on it.
//!
//! `scripts/setup-tools` installs it and patches a private copy to listen on loopback only;
//! [`shared`] starts one per test binary on a free port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::types::StreamStatus;

use crate::process::{Emulator, Launch, free_port};

/// Names the patched `main.js`; `scripts/setup-tools` prints it.
pub const SCRIPT_VAR: &str = "FANNER_KINESIS_LOCAL";
/// Loading the 9 MB script takes a few seconds on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// State changes (create, split, merge, scale, register a consumer) are asynchronous; the
/// emulator's own defaults make each take about half a second.
const STATE_CHANGE: &str = "50ms";
const DURATION_VARS: [&str; 10] = [
    "CREATE_STREAM_DURATION",
    "DELETE_STREAM_DURATION",
    "REGISTER_STREAM_CONSUMER_DURATION",
    "DEREGISTER_STREAM_CONSUMER_DURATION",
    "MERGE_SHARDS_DURATION",
    "SPLIT_SHARD_DURATION",
    "UPDATE_SHARD_COUNT_DURATION",
    "UPDATE_STREAM_MODE_DURATION",
    "START_STREAM_ENCRYPTION_DURATION",
    "STOP_STREAM_ENCRYPTION_DURATION",
];

pub struct KinesisLocal {
    emulator: Emulator,
    endpoint: String,
}

impl std::fmt::Debug for KinesisLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisLocal")
            .field("endpoint", &self.endpoint)
            .field("log", &self.emulator.log)
            .finish()
    }
}

/// The kinesis-local of this test binary, started on first use; `None` (after printing why) when
/// the integration tier is off or kinesis-local is not installed.
pub fn shared(test: &str) -> Option<&'static KinesisLocal> {
    static SHARED: OnceLock<Result<KinesisLocal, String>> = OnceLock::new();
    if !crate::integration_enabled(test) {
        return None;
    }
    let Some(script) = installed() else {
        eprintln!(
            "{test}: skipped: kinesis-local is not installed; set {SCRIPT_VAR} to its patched \
             main.js (`bash scripts/setup-tools` installs it and prints the variable)"
        );
        return None;
    };
    match SHARED.get_or_init(|| KinesisLocal::start(&script).map_err(|error| error.to_string())) {
        Ok(server) => Some(server),
        Err(error) => panic!("{test}: kinesis-local is installed but did not start: {error}"),
    }
}

/// The patched script, when it and `node` are there.
pub fn installed() -> Option<PathBuf> {
    let script = PathBuf::from(std::env::var_os(SCRIPT_VAR)?);
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    (node && script.is_file()).then_some(script)
}

impl KinesisLocal {
    /// Starts `node <script>` from the script's directory (it reads `server.json` there) with its
    /// plain HTTP port free and its HTTPS port another free one, and waits until it answers.
    pub fn start(script: &std::path::Path) -> std::io::Result<Self> {
        let dir = script
            .parent()
            .ok_or_else(|| std::io::Error::other("the kinesis-local script has no directory"))?
            .to_owned();
        let emulator = Emulator::start(
            "kinesis-local",
            |port| {
                let mut env = vec![
                    ("KINESIS_MOCK_PLAIN_PORT".to_owned(), port.to_string()),
                    ("KINESIS_MOCK_TLS_PORT".to_owned(), free_port()?.to_string()),
                    ("LOG_LEVEL".to_owned(), "WARN".to_owned()),
                    ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
                ];
                env.extend(
                    DURATION_VARS
                        .iter()
                        .map(|var| ((*var).to_owned(), STATE_CHANGE.to_owned())),
                );
                Ok(Launch {
                    program_and_args: vec!["node".into(), script.as_os_str().to_owned()],
                    env,
                    dir: Some(dir.clone()),
                })
            },
            answers,
            READY_TIMEOUT,
        )?;
        Ok(Self {
            endpoint: format!("http://127.0.0.1:{}", emulator.port),
            emulator,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An SDK configuration for this server (see [`crate::sdk_config`]).
    pub async fn sdk_config(&self) -> SdkConfig {
        crate::sdk_config(&self.endpoint).await
    }

    /// The environment of a process that reaches this server through the SDK's default chain
    /// (see [`crate::aws_env`]).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        crate::aws_env(&self.endpoint)
    }
}

/// Whether an HTTP server answers on `port` (kinesis-local answers anything unsigned with a 400).
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// Splits `shard` of `stream` in the middle of its hash key range and waits until the stream is
/// active again. Panics when Kinesis refuses (a test helper).
pub async fn split_shard(client: &Client, stream: &str, shard: &str) {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .expect("ListShards");
    let range = shards
        .shards()
        .iter()
        .find(|candidate| candidate.shard_id() == shard)
        .and_then(|found| found.hash_key_range())
        .unwrap_or_else(|| panic!("shard {shard} of {stream} has no hash key range"));
    let start: u128 = range
        .starting_hash_key()
        .parse()
        .expect("a decimal hash key");
    let end: u128 = range.ending_hash_key().parse().expect("a decimal hash key");
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard)
        .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
        .send()
        .await
        .expect("SplitShard");
    wait_active(client, stream).await;
}

/// Merges two adjacent shards of `stream` and waits until the stream is active again.
pub async fn merge_shards(client: &Client, stream: &str, shard: &str, adjacent: &str) {
    client
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(shard)
        .adjacent_shard_to_merge(adjacent)
        .send()
        .await
        .expect("MergeShards");
    wait_active(client, stream).await;
}

/// Waits until `stream` is `ACTIVE` (state changes are asynchronous), for at most a minute.
pub async fn wait_active(client: &Client, stream: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .expect("DescribeStreamSummary");
        if summary
            .stream_description_summary()
            .is_some_and(|s| *s.stream_status() == StreamStatus::Active)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stream {stream} did not become active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
