//! Drives the real `fanner` binary: `fanner serve` on a fresh data directory, and every command
//! against it, checking output and exit codes as a user's script would.

mod commands_history;
mod gatekeeping;
mod history;
mod kinesis_local;
mod lifecycle;
mod openapi;
mod review;
mod serve;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FANNER: &str = env!("CARGO_BIN_EXE_fanner");

/// The environment that points `fanner serve` at Kinesis on `moto` with `ges` as its GES.
pub fn kinesis_env(
    moto: &testkit::moto::MotoServer,
    ges: &str,
    shards: u32,
) -> Vec<(&'static str, String)> {
    [
        ("FANNER__STREAMS__BACKEND", "kinesis".to_owned()),
        ("FANNER__STREAMS__GES", ges.to_owned()),
        ("FANNER__STREAMS__GES_SHARDS", shards.to_string()),
    ]
    .into_iter()
    .chain(testkit::aws_env(moto.endpoint()))
    .collect()
}

/// `(name, value)` pairs as [`Server::start_with`] takes them.
pub fn as_env<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A running `fanner serve`, killed on drop.
pub struct Server {
    child: Child,
    pub endpoint: String,
    pub admin_token: String,
}

impl Server {
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    /// `fanner serve` with extra environment (`FANNER__...` settings, AWS endpoints).
    pub fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        Server::start_with_args(data_dir, &[], env)
    }

    /// `fanner serve ARGS` with extra environment.
    pub fn start_with_args(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(FANNER)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("FANNER_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fanner serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let endpoint = loop {
            assert!(
                Instant::now() < deadline,
                "fanner serve did not start listening"
            );
            let line = lines
                .next()
                .expect("fanner serve exited early")
                .expect("stderr line");
            if let Some(url) = line.strip_prefix("Fanner is listening on ") {
                break url.trim().to_owned();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        // Only the process that bootstrapped the store writes it (a replica on a shared store
        // finds the admin there already).
        let admin_token = std::fs::read_to_string(data_dir.join("admin.token"))
            .map(|token| token.trim().to_owned())
            .unwrap_or_default();
        Server {
            child,
            endpoint,
            admin_token,
        }
    }

    /// Runs `fanner ARGS` against this server with `token`.
    pub fn run(&self, token: &str, args: &[&str]) -> Output {
        Command::new(FANNER)
            .args(args)
            .env("FANNER_ENDPOINT", &self.endpoint)
            .env("FANNER_TOKEN", token)
            .output()
            .expect("fanner runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    #[track_caller]
    pub fn ok(&self, token: &str, args: &[&str]) -> String {
        let output = self.run(token, args);
        assert!(
            output.status.success(),
            "fanner {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// Runs a command that must fail with exit code 1 and name `needle` on stderr.
    #[track_caller]
    pub fn fails(&self, token: &str, args: &[&str], needle: &str) {
        let output = self.run(token, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "fanner {}: {stderr}",
            args.join(" ")
        );
        assert!(
            stderr.contains(needle),
            "{stderr:?} should mention {needle:?}"
        );
    }

    /// `fanner publish` with `lines` (NDJSON) on stdin as `token`; waits for every
    /// acknowledgement.
    #[track_caller]
    pub fn publish_lines(&self, token: &str, lines: &str) {
        use std::io::Write;
        let mut child = Command::new(FANNER)
            .arg("publish")
            .env("FANNER_ENDPOINT", &self.endpoint)
            .env("FANNER_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fanner publish starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(lines.as_bytes())
            .expect("writes");
        let output = child.wait_with_output().expect("publish ends");
        assert!(
            output.status.success(),
            "publish failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -9`: no drain, no release, as a crash or an OOM kill.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit: its exit status and how
    /// long it took, or `None` (the process is then killed).
    pub fn terminate(mut self, limit: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let sent = Instant::now();
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(signalled.success(), "SIGTERM delivered");
        while sent.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some((status, sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
