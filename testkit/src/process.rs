//! An emulator run as a child process on a free loopback port, stopped with the test process.
//!
//! The emulator is started through a small shell wrapper that holds a pipe from the test process
//! and stops the emulator when that pipe closes, so it goes away with the test process even when
//! the test process is killed or a shared instance (a `static`, never dropped) is left behind at
//! exit.

use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const START_ATTEMPTS: u32 = 3;

/// How to start an emulator listening on a given port.
pub(crate) struct Launch {
    pub program_and_args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// The working directory (some emulators read their files from it).
    pub dir: Option<PathBuf>,
}

pub(crate) struct Emulator {
    name: &'static str,
    wrapper: Child,
    /// Closing it stops the emulator.
    lifeline: Option<ChildStdin>,
    pub port: u16,
    pub log: PathBuf,
    /// A log of an emulator that never answered is kept for the error message that names it.
    answered: bool,
}

/// A port nobody listens on right now.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl Emulator {
    /// Starts `launch(port)` on a free port and waits until `ready(port)` holds, at most
    /// `timeout`. The free port is found by binding and releasing it; another process may take
    /// it in between, so a failed start is tried again on a new port.
    pub fn start(
        name: &'static str,
        launch: impl Fn(u16) -> std::io::Result<Launch>,
        ready: impl Fn(u16) -> bool,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(name, &launch, &ready, timeout) {
                Ok(emulator) => return Ok(emulator),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other(format!("{name} did not start"))))
    }

    fn start_once(
        name: &'static str,
        launch: &impl Fn(u16) -> std::io::Result<Launch>,
        ready: &impl Fn(u16) -> bool,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let port = free_port()?;
        let launch = launch(port)?;
        let log = std::env::temp_dir().join(format!("{name}-{port}.log"));
        let log_file = std::fs::File::create(&log)?;
        // fd 3 keeps the pipe for the watcher: a background job's stdin is /dev/null otherwise.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(
                r#"exec 3<&0
"$@" </dev/null & child=$!
(cat <&3 >/dev/null; kill "$child" 2>/dev/null) &
wait "$child""#,
            )
            .arg(name)
            .args(&launch.program_and_args)
            .envs(launch.env)
            .stdin(Stdio::piped())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(dir) = &launch.dir {
            command.current_dir(dir);
        }
        let mut wrapper = command.spawn()?;
        let lifeline = wrapper.stdin.take();
        let mut emulator = Self {
            name,
            wrapper,
            lifeline,
            port,
            log,
            answered: false,
        };
        emulator.wait_ready(ready, timeout)?;
        emulator.answered = true;
        Ok(emulator)
    }

    fn wait_ready(
        &mut self,
        ready: &impl Fn(u16) -> bool,
        timeout: Duration,
    ) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.wrapper.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "{} exited with {status} before answering; see {}",
                    self.name,
                    self.log.display()
                )));
            }
            if ready(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{} did not answer within {timeout:?}; see {}",
                        self.name,
                        self.log.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        if let Err(error) = self.wrapper.wait() {
            eprintln!(
                "{} on port {} did not stop cleanly: {error}",
                self.name, self.port
            );
        }
        if self.answered {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
