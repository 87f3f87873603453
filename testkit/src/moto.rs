//! A moto server (AWS APIs on loopback) run as a child process.
//!
//! The server is started through a small shell wrapper that holds a pipe from the test process and
//! stops moto when that pipe closes, so moto goes away with the test process even when the test
//! process is killed or a shared instance (a `static`, never dropped) is left behind at exit.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::config::Credentials;
use aws_smithy_types::checksum_config::{RequestChecksumCalculation, ResponseChecksumValidation};

/// Names the moto executable (`moto_server`); `scripts/setup-tools` prints it.
pub const SERVER_VAR: &str = "FANNER_MOTO_SERVER";
/// Names the Python that has moto installed; `scripts/setup-tools` prints it.
pub const PYTHON_VAR: &str = "FANNER_PYTHON";
const SERIAL_SERVER: &str = "import sys
from werkzeug.serving import run_simple
from moto.server import DomainDispatcherApplication, create_backend_app
run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: u32 = 3;

pub struct MotoServer {
    wrapper: Child,
    /// Closing it stops moto.
    lifeline: Option<ChildStdin>,
    endpoint: String,
    log: PathBuf,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("endpoint", &self.endpoint)
            .field("log", &self.log)
            .finish()
    }
}

/// The moto server of this test binary, started on first use; `None` (after printing which
/// variable to set) when the integration tier is off or moto is not configured.
pub fn shared(test: &str) -> Option<&'static MotoServer> {
    static SHARED: OnceLock<Result<MotoServer, String>> = OnceLock::new();
    if !crate::integration_enabled(test) {
        return None;
    }
    if std::env::var_os(SERVER_VAR).is_none() {
        eprintln!(
            "{test}: skipped: set {SERVER_VAR} to the moto_server executable \
             (`bash scripts/setup-tools` prints it)"
        );
        return None;
    }
    match SHARED.get_or_init(|| MotoServer::start().map_err(|error| error.to_string())) {
        Ok(server) => Some(server),
        Err(error) => panic!("{test}: FANNER_IT=1 but moto did not start: {error}"),
    }
}

impl MotoServer {
    /// Starts `$FANNER_MOTO_SERVER -H 127.0.0.1 -p <free port>` and waits until it answers.
    pub fn start() -> std::io::Result<Self> {
        let program = std::env::var_os(SERVER_VAR).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{SERVER_VAR} is not set"),
            )
        })?;
        Self::start_with(|port| {
            vec![
                program.clone(),
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string().into(),
            ]
        })
    }

    /// A moto that answers one request at a time. Several processes writing one Kinesis shard
    /// through the threaded server can be given the same sequence number; this one cannot.
    /// Needs `FANNER_PYTHON` (the venv's python with moto; `scripts/setup-tools` prints it).
    pub fn start_serial() -> std::io::Result<Self> {
        let python = std::env::var_os(PYTHON_VAR).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{PYTHON_VAR} is not set"),
            )
        })?;
        Self::start_with(|port| {
            vec![
                python.clone(),
                "-c".into(),
                SERIAL_SERVER.into(),
                port.to_string().into(),
            ]
        })
    }

    fn start_with(command: impl Fn(u16) -> Vec<std::ffi::OsString>) -> std::io::Result<Self> {
        let mut last_error = None;
        // The free port is found by binding and releasing it; another process may take it in
        // between, so a failed start is tried again on a new port.
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&command) {
                Ok(server) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("moto did not start")))
    }

    fn start_once(command: &impl Fn(u16) -> Vec<std::ffi::OsString>) -> std::io::Result<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let log = std::env::temp_dir().join(format!("moto-{port}.log"));
        let log_file = std::fs::File::create(&log)?;
        // fd 3 keeps the pipe for the watcher: a background job's stdin is /dev/null otherwise.
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(
                r#"exec 3<&0
"$@" </dev/null & moto=$!
(cat <&3 >/dev/null; kill "$moto" 2>/dev/null) &
wait "$moto""#,
            )
            .arg("moto")
            .args(command(port))
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        let lifeline = wrapper.stdin.take();
        let mut server = Self {
            wrapper,
            lifeline,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_ready(port)?;
        Ok(server)
    }

    fn wait_ready(&mut self, port: u16) -> std::io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.wrapper.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "moto exited with {status} before answering; see {}",
                    self.log.display()
                )));
            }
            if answers(port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "moto did not answer within {READY_TIMEOUT:?}; see {}",
                        self.log.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An SDK configuration for this server: dummy static credentials, `us-east-1`, checksums
    /// only where an operation requires them (moto mishandles the newer defaults). Nothing is
    /// read from or written to the process environment.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
            .endpoint_url(&self.endpoint)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .load()
            .await
    }
}

/// Whether moto answers its own API on `port`.
fn answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        if let Err(error) = self.wrapper.wait() {
            eprintln!("moto at {} did not stop cleanly: {error}", self.endpoint);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
