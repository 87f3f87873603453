//! The local file-system sink, the default of the embedded server (`<data-dir>/lake/`).
//!
//! A put writes a temporary file under `<root>/.tmp/`, syncs it, renames it over the target and
//! syncs the target directory: after `put` returns the object survives a power cut, and a
//! reader (or a crash) never sees half an object. Objects hold payloads, so files are `0600` and
//! directories `0700` whatever the umask, and a root made looser elsewhere is tightened.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectSink, SinkError};

const TMP_DIR: &str = ".tmp";
/// Temporary files older than this at startup were left by a crash.
const STALE_TMP: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct LocalFsSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    next_tmp: AtomicU64,
    tmp_prefix: String,
}

fn create_private_dirs(dir: &Path) -> Result<(), SinkError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl LocalFsSink {
    /// Creates the root and removes temporary files an earlier crash left behind.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, SinkError> {
        let root = root.into();
        let tmp = root.join(TMP_DIR);
        create_private_dirs(&tmp)?;
        for dir in [&root, &tmp] {
            let was = fs::metadata(dir).map_err(io_err(dir))?.permissions().mode() & 0o777;
            if was & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
                tracing::warn!(path = %dir.display(), was = format!("{was:o}"), "Tightened the lake directory to owner-only.");
            }
        }
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let entry = entry.map_err(io_err(&tmp))?;
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > STALE_TMP);
            if stale {
                // Another process may be cleaning up too: losing that race is fine.
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(LocalFsSink {
            inner: Arc::new(Inner {
                root,
                next_tmp: AtomicU64::new(0),
                tmp_prefix: format!("{}-{:016x}", std::process::id(), rand::random::<u64>()),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file that holds `key`. Keys are relative, `/`-separated, without empty, `.` or `..`
    /// segments, so the path is always inside the root.
    fn path_of(&self, key: &str) -> Result<PathBuf, SinkError> {
        let invalid = |reason: &str| SinkError::InvalidKey {
            key: key.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        let mut path = self.inner.root.clone();
        for segment in key.split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(invalid("empty, `.` or `..` segment"));
            }
            if segment.starts_with('.') {
                return Err(invalid("segments may not start with a dot"));
            }
            if segment.contains(['\0', '\\']) {
                return Err(invalid("NUL or backslash"));
            }
            path.push(segment);
        }
        Ok(path)
    }
}

impl Inner {
    fn put_blocking(&self, path: &Path, body: &[u8]) -> Result<(), SinkError> {
        let dir = path.parent().ok_or_else(|| SinkError::InvalidKey {
            key: path.display().to_string(),
            reason: "no parent directory".into(),
        })?;
        create_private_dirs(dir)?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(format!("{}-{n}", self.tmp_prefix));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(body)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io_err(path))
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        // Walk only below the deepest directory the prefix names completely.
        let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let mut start = self.root.clone();
        for segment in dir_part.split('/').filter(|s| !s.is_empty()) {
            if segment == ".." || segment == "." {
                return Ok(Vec::new());
            }
            start.push(segment);
        }
        let mut keys = Vec::new();
        let mut stack = vec![(start, dir_part.to_owned())];
        while let Some((dir, key_dir)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let key = if key_dir.is_empty() {
                    name
                } else {
                    format!("{key_dir}/{name}")
                };
                let file_type = entry.file_type().map_err(io_err(&dir))?;
                if file_type.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push((entry.path(), key));
                    }
                } else if key.starts_with(prefix) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }
}

#[async_trait]
impl ObjectSink for LocalFsSink {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        let path = self.path_of(key)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.put_blocking(&path, &body))
            .await
            .map_err(|e| SinkError::Io {
                path: key.to_owned(),
                source: io::Error::other(e),
            })?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || inner.list_blocking(&prefix))
            .await
            .map_err(|e| SinkError::Io {
                path: "list".to_owned(),
                source: io::Error::other(e),
            })?
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, SinkError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(body) => Ok(Some(Bytes::from(body))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}
