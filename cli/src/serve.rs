//! `fanner serve`: Fanner in one process, on an embedded store and stream backend by default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use control_plane::{Clock, ControlPlane, Settings, Store};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use streams::StreamBackend;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ServeArgs {
    /// Where the embedded store, streams and lake live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A TOML file of settings; `FANNER__<SECTION>__<FIELD>` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `postgres://...` for a shared store (several replicas); default: SQLite in --data-dir.
    #[arg(long, env = "FANNER_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// What this process runs: any of api, engine, persister (default: all three).
    #[arg(long, value_delimiter = ',', value_enum)]
    components: Option<Vec<Component>>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Embedded,
    Kinesis,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// This process's name on shard leases. Default: the name kept in `<data_dir>/instance`,
    /// made on first start, so a restart on the same data dir takes its shards back at once.
    /// Two live processes must never share it (one data dir is locked by one process).
    pub instance: Option<String>,
    /// How long a graceful shutdown (SIGTERM, Ctrl-C) may take: open tails are ended, requests
    /// and shard jobs drain within it, then the process exits.
    pub shutdown_timeout_ms: u64,
    pub database_url: Option<String>,
    pub log_format: LogFormat,
    pub streams: StreamsConfig,
    /// What this process runs; production runs API replicas and worker replicas apart.
    pub components: Vec<Component>,
    /// The fan-out engine's tuning; its `ges` is always `streams.ges`.
    pub engine: fanner::EngineConfig,
    /// The persister's tuning; its `stream` is always `streams.ges`.
    pub persister: persister::Config,
    /// History on demand, run with the engine: it reads the lake the persister writes.
    pub hydration: HydrationConfig,
    pub lake: LakeConfig,
    /// HTTPS with this certificate; plain HTTP without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// PEM files of the served certificate chain and its key, read again when either changes.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How fast history is written into a consumer stream.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HydrationConfig {
    /// Records per second per shard of the receiving stream, per GES shard hydrating (a
    /// Kinesis shard takes 1,000). Unset: as fast as the stream takes them.
    pub max_records_per_second: Option<u32>,
    /// Bytes per second, likewise (a Kinesis shard takes 1 MiB).
    pub max_bytes_per_second: Option<u32>,
    /// Lake objects fetched and decoded ahead of delivery.
    pub objects_in_flight: usize,
}

impl Default for HydrationConfig {
    fn default() -> Self {
        HydrationConfig {
            max_records_per_second: None,
            max_bytes_per_second: None,
            objects_in_flight: 4,
        }
    }
}

/// A part of Fanner one process may run.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The HTTP API and console (without it: only `/healthz`, `/readyz`, `/metrics`).
    Api,
    /// The fan-out engine's shard jobs, and hydrations and replays of history.
    Engine,
    /// The persister's shard jobs.
    Persister,
}

/// Where the persister writes.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "sink", rename_all = "lowercase")]
pub enum LakeConfig {
    /// Files under `path` (default `<data_dir>/lake`).
    Local { path: Option<PathBuf> },
    /// Objects in an S3 bucket (AWS_ENDPOINT_URL and the credential chain are honoured).
    S3 { bucket: String },
    /// A Kinesis Firehose delivery stream that partitions by event name and hour.
    Firehose { delivery_stream: String },
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    pub backend: BackendKind,
    /// The global event stream's name in the backend.
    pub ges: String,
    /// Shard count of the global event stream when Fanner creates it.
    pub ges_shards: u32,
    /// Prefix of consumer streams' backing names.
    pub backing_prefix: String,
    /// The embedded log's page cache, in MiB.
    pub embedded_cache_mb: usize,
    /// How readers of the Kinesis backend get records (ignored by the embedded backend).
    pub kinesis: KinesisConfig,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisConfig {
    /// `polling`: the engine and the persister share each GES shard's 5 `GetRecords` calls a
    /// second; `efo`: each has its own enhanced fan-out consumer (named after its lease group).
    pub read: streams::kinesis::ReadMode,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            data_dir: PathBuf::from("fanner-data"),
            instance: None,
            shutdown_timeout_ms: 10_000,
            database_url: None,
            log_format: LogFormat::Text,
            streams: StreamsConfig {
                backend: BackendKind::Embedded,
                ges: "global-events".to_owned(),
                ges_shards: 2,
                backing_prefix: Settings::default().backing_prefix,
                embedded_cache_mb: streams::embedded::DEFAULT_CACHE_BYTES / (1024 * 1024),
                kinesis: KinesisConfig {
                    read: streams::kinesis::ReadMode::Polling,
                },
            },
            components: vec![Component::Api, Component::Engine, Component::Persister],
            engine: fanner::EngineConfig::default(),
            persister: persister::Config::default(),
            hydration: HydrationConfig::default(),
            lake: LakeConfig::Local { path: None },
            tls: None,
        }
    }
}

impl Config {
    fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &args.config {
            anyhow::ensure!(
                file.exists(),
                "config file {} does not exist",
                file.display()
            );
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("FANNER__").split("__"));
        let mut config: Config = figment.extract().context("invalid configuration")?;
        if let Some(dir) = &args.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(listen) = args.listen {
            config.listen = listen;
        }
        if let Some(url) = &args.database_url {
            config.database_url = Some(url.clone());
        }
        if let Some(components) = &args.components {
            config.components = components.clone();
        }
        anyhow::ensure!(
            !config.components.is_empty(),
            "components must name at least one of api, engine, persister"
        );
        anyhow::ensure!(
            !config
                .streams
                .ges
                .starts_with(&config.streams.backing_prefix),
            "streams.ges {:?} must not start with streams.backing_prefix {:?}: a consumer stream could collide with it",
            config.streams.ges,
            config.streams.backing_prefix
        );
        config.engine.ges = config.streams.ges.clone();
        config.persister.stream = config.streams.ges.clone();
        Ok(config)
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FANNER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The backend, and how a reader role (its lease group) reads the GES through it.
struct Backends {
    shared: Arc<dyn StreamBackend>,
    kinesis: Option<(streams::kinesis::KinesisBackend, streams::kinesis::ReadMode)>,
}

impl Backends {
    /// The backend the shard jobs of `group` read the GES through: with `read = "efo"`, as an
    /// enhanced fan-out consumer of that name.
    fn for_readers(&self, group: &str) -> Arc<dyn StreamBackend> {
        match &self.kinesis {
            Some((kinesis, mode)) => Arc::new(kinesis.for_readers(*mode, group)),
            None => self.shared.clone(),
        }
    }
}

async fn open_backend(config: &Config) -> anyhow::Result<Backends> {
    if config.streams.backend == BackendKind::Kinesis {
        let kinesis = streams::kinesis::KinesisBackend::from_env().await;
        return Ok(Backends {
            shared: Arc::new(kinesis.clone()),
            kinesis: Some((kinesis, config.streams.kinesis.read)),
        });
    }
    Ok(Backends {
        shared: open_embedded(config)?,
        kinesis: None,
    })
}

fn open_embedded(config: &Config) -> anyhow::Result<Arc<dyn StreamBackend>> {
    let path = config.data_dir.join("streams.redb");
    let options = streams::embedded::EmbeddedOptions {
        cache_bytes: config.streams.embedded_cache_mb.saturating_mul(1024 * 1024),
        ..Default::default()
    };
    Ok(Arc::new(
        streams::embedded::EmbeddedBackend::open_with(&path, options)
            .with_context(|| format!("cannot open the embedded stream store {}", path.display()))?,
    ))
}

/// Creates `dir` (and missing parents) owner-only, and tightens it if it exists with a looser mode:
/// it holds the store, the log and the lake, and so every payload.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    make_private(dir, 0o700)
}

/// Sets `path`'s mode to `mode` when it grants anyone else more, and says so; a missing path is
/// fine (the file is made later, inside the private dir).
fn make_private(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("cannot stat {}", path.display())),
    };
    let was = metadata.permissions().mode() & 0o777;
    if was & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot make {} owner-only", path.display()))?;
        tracing::warn!(path = %path.display(), was = format!("{was:o}"), now = format!("{mode:o}"), "Tightened the mode of a data file to owner-only.");
    }
    Ok(())
}

/// Writes a secret or an identity where only this user can read it, durably.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    make_private(path, 0o600)?;
    writeln!(file, "{text}")?;
    file.sync_all()?;
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    init_logging(config.log_format);
    create_private_dir(&config.data_dir)?;
    let identity = Identity::claim(&config.data_dir, config.instance.as_deref())?;
    let mut config = config;
    config.engine.owner = identity.name.clone();
    config.persister.owner = Some(identity.name.clone());
    let shutdown_timeout = std::time::Duration::from_millis(config.shutdown_timeout_ms);

    let store = match &config.database_url {
        Some(url) => Store::open(url).await.context("cannot open the store")?,
        None => Store::open_sqlite(&config.data_dir.join("fanner.db"))
            .await
            .context("cannot open the SQLite store")?,
    };
    let backends = open_backend(&config).await?;
    let backend = backends.shared.clone();
    // Created by SQLite and redb with the default modes; the private dir already keeps others
    // out, and the files stay owner-only if the dir is ever copied or loosened.
    for file in [
        "fanner.db",
        "fanner.db-wal",
        "fanner.db-shm",
        "streams.redb",
    ] {
        make_private(&config.data_dir.join(file), 0o600)?;
    }
    backend
        .create_stream(&streams::StreamSpec {
            name: config.streams.ges.clone(),
            shard_count: config.streams.ges_shards,
            retention_hours: api::rules::DEFAULT_RETENTION_HOURS,
            tags: Default::default(),
        })
        .await
        .with_context(|| {
            format!(
                "cannot create the global event stream {:?}",
                config.streams.ges
            )
        })?;
    let settings = Settings {
        backing_prefix: config.streams.backing_prefix.clone(),
        ges: config.streams.ges.clone(),
    };
    let control_plane = ControlPlane::new(store, backend, settings, Clock::default()).await?;

    if let Some(token) = control_plane.bootstrap().await? {
        let path = config.data_dir.join("admin.token");
        write_private(&path, &token)?;
        eprintln!(
            "Created the admin principal; its token is in {} (export FANNER_TOKEN=$(cat {}))",
            path.display(),
            path.display()
        );
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;

    let stop = CancellationToken::new();
    let mut components = JoinSet::new();
    let mut role = control_plane::http::Role {
        api: config.components.contains(&Component::Api),
        workers: Vec::new(),
    };
    if config.components.contains(&Component::Engine) {
        let link = Arc::new(cli::link::InProcess::new(control_plane.clone()));
        let engine = fanner::Engine::new(
            config.engine.clone(),
            backends.for_readers(fanner::config::LEASE_GROUP),
            Arc::new(control_plane.store().clone()),
            link.clone(),
            link.clone(),
        );
        role.workers.push(("engine", engine.shards()));
        control_plane.take_activity_from_the_ges();
        components.spawn(report_engine_status(
            engine.status(),
            control_plane.clone(),
            stop.clone(),
        ));
        let stopped = stop.clone().cancelled_owned();
        components.spawn(async move {
            engine
                .run(stopped)
                .await
                .map_err(|e| anyhow::anyhow!("fan-out engine: {e}"))
        });
        let hydrator = hydrator::Hydrator::new(
            hydrator_config(&config),
            backends.for_readers(hydrator::GROUP),
            Arc::new(control_plane.store().clone()),
            open_lake(&config).await?,
            link.clone(),
            link,
        );
        role.workers.push(("hydration", hydrator.shards()));
        let stopped = stop.clone().cancelled_owned();
        components.spawn(async move {
            hydrator.run(stopped).await;
            Ok(())
        });
    }
    if config.components.contains(&Component::Persister) {
        let sink = open_lake(&config).await?;
        let persister = persister::Persister::new(
            &config.persister,
            backends.for_readers(persister::GROUP),
            Arc::new(control_plane.store().clone()),
            sink,
        )
        .context("invalid persister configuration")?;
        role.workers.push(("persister", persister.shards()));
        let stopped = stop.clone().cancelled_owned();
        components.spawn(async move {
            persister.run(stopped).await;
            Ok(())
        });
    }

    tracing::info!(%address, data_dir = %config.data_dir.display(), backend = ?config.streams.backend, instance = %identity.name, components = ?config.components, "Fanner is serving.");
    let app = control_plane::http::app_for(control_plane.clone(), role);
    let drained_stop = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let http: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
        match &config.tls {
            None => {
                eprintln!("Fanner is listening on http://{address}");
                Box::pin(control_plane::http::serve(
                    listener,
                    app,
                    drained_stop,
                    shutdown_timeout,
                ))
            }
            Some(tls) => {
                let files = control_plane::http::tls::TlsFiles {
                    cert: tls.cert.clone(),
                    key: tls.key.clone(),
                };
                let listener = control_plane::http::tls::TlsListener::new(listener, files)
                    .context("cannot set up TLS")?;
                eprintln!("Fanner is listening on https://{address}");
                Box::pin(control_plane::http::serve(
                    listener,
                    app,
                    drained_stop,
                    shutdown_timeout,
                ))
            }
        };
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    });
    let stopping = {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            // Tails would otherwise hold the HTTP server open for as long as their clients.
            control_plane.close();
            tokio::time::Instant::now() + shutdown_timeout
        }
    };
    let (served, deadline) = tokio::join!(http, stopping);
    let drained = tokio::time::timeout_at(deadline, async {
        while let Some(finished) = components.join_next().await {
            finished.context("a component panicked")??;
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            ?shutdown_timeout,
            "Shard jobs did not drain in time; their leases are taken back at the next start."
        ),
    }
    served?;
    drop(identity);
    tracing::info!("Fanner stopped.");
    Ok(())
}

/// This process's stable name on shard leases, and the lock that keeps a second process off the
/// same data dir (which would share the name and so its leases).
struct Identity {
    name: String,
    _lock: std::fs::File,
}

impl Identity {
    fn claim(data_dir: &Path, configured: Option<&str>) -> anyhow::Result<Identity> {
        use std::os::unix::fs::OpenOptionsExt;
        let lock_path = data_dir.join("fanner.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        make_private(&lock_path, 0o600)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another process is serving from {}: one data directory, one process",
                data_dir.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        let name = match configured {
            Some("") => anyhow::bail!("instance must not be empty"),
            Some(name) => name.to_owned(),
            None => {
                let path = data_dir.join("instance");
                make_private(&path, 0o600)?;
                let kept = match std::fs::read_to_string(&path) {
                    Ok(text) => Some(text.trim().to_owned()).filter(|name| !name.is_empty()),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                    Err(error) => {
                        return Err(error)
                            .with_context(|| format!("cannot read {}", path.display()));
                    }
                };
                match kept {
                    Some(name) => name,
                    None => {
                        let name = format!("fanner-{}", uuid::Uuid::new_v4().simple());
                        write_private(&path, &name)?;
                        name
                    }
                }
            }
        };
        Ok(Identity { name, _lock: lock })
    }
}

fn hydrator_config(config: &Config) -> hydrator::Config {
    let mut hydration = hydrator::Config::new(&config.streams.ges, &config.engine.owner);
    hydration.base_prefix = config.persister.base_prefix.clone();
    hydration.runtime = config.engine.runtime_settings();
    hydration.objects_in_flight = config.hydration.objects_in_flight;
    hydration.max_records_per_second = config.hydration.max_records_per_second;
    hydration.max_bytes_per_second = config.hydration.max_bytes_per_second;
    hydration
}

async fn open_lake(config: &Config) -> anyhow::Result<Arc<dyn persister::ObjectSink>> {
    Ok(match &config.lake {
        LakeConfig::Local { path } => {
            let root = path.clone().unwrap_or_else(|| config.data_dir.join("lake"));
            Arc::new(
                persister::LocalFsSink::new(&root).with_context(|| {
                    format!("cannot open the lake directory {}", root.display())
                })?,
            )
        }
        LakeConfig::S3 { bucket } => {
            Arc::new(persister::S3Sink::from_env(bucket).context("cannot set up the S3 lake")?)
        }
        LakeConfig::Firehose { delivery_stream } => {
            Arc::new(persister::FirehoseSink::from_env(delivery_stream).await)
        }
    })
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("Shutting down.");
}

/// How often the engine's status board is handed to the control plane's health view.
const STATUS_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands the engine's view of every consumer stream to the control plane until `stop`.
async fn report_engine_status(
    board: fanner::StatusBoard,
    control_plane: ControlPlane,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(STATUS_REPORT_INTERVAL);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stop.cancelled() => return Ok(()),
        }
        let targets = board
            .shards()
            .into_iter()
            .flat_map(|shard| shard.targets)
            .map(|t| control_plane::service::TargetReport {
                backing_name: t.backing_name,
                mode: match t.mode {
                    fanner::TargetMode::Attached => "attached",
                    fanner::TargetMode::Behind => "behind",
                    fanner::TargetMode::Broken => "broken",
                },
                reason: t.reason,
                lag_ms: t.lag_ms,
                lag_records: t.lag_records,
                owed: u64::try_from(t.owed).unwrap_or(u64::MAX),
            })
            .collect();
        control_plane.report_engine_status(targets);
        control_plane.observe_deliveries(board.take_delivered());
        control_plane.observe_ges_events(
            board
                .take_events()
                .into_iter()
                .map(|seen| (seen.event, seen.count, seen.last_arrival))
                .collect(),
        );
    }
}
