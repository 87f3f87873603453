//! A moto server (AWS APIs on loopback) run as a child process that goes away with the test
//! process (see [`crate::process`]).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::SdkConfig;

use crate::process::{Emulator, Launch};

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

pub struct MotoServer {
    emulator: Emulator,
    endpoint: String,
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("endpoint", &self.endpoint)
            .field("log", &self.emulator.log)
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
        let emulator = Emulator::start(
            "moto",
            |port| {
                Ok(Launch {
                    program_and_args: command(port),
                    env: Vec::new(),
                    dir: None,
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
