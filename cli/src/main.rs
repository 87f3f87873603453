//! `fanner`: runs Fanner (`fanner serve`) and drives its API from the shell.
//!
//! Exit codes: 0 success, 1 an error (one line on stderr naming what was wrong), 2 usage.

mod alerts;
mod catalog;
mod commands;
mod data;
mod history;
mod output;
mod review;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "fanner",
    version,
    about = "Access-checked fan-out of a global event stream."
)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct Connection {
    /// Control-plane URL.
    #[arg(
        long,
        global = true,
        env = "FANNER_ENDPOINT",
        default_value = "http://127.0.0.1:7878"
    )]
    endpoint: String,
    /// Bearer token (`fanner serve` writes the first admin's to <data-dir>/admin.token).
    #[arg(long, global = true, env = "FANNER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// A PEM file of the CA that signed an https:// endpoint's certificate (a private CA).
    #[arg(long, global = true, env = "FANNER_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run Fanner: control plane, with an embedded store and stream backend under --data-dir.
    Serve(serve::ServeArgs),
    /// Issue API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Principals (teams, people, services).
    #[command(subcommand)]
    Principal(PrincipalCommand),
    /// The event catalog.
    #[command(subcommand)]
    Event(EventCommand),
    /// Register events from a protobuf FileDescriptorSet.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Read access to events.
    #[command(subcommand)]
    Grant(GrantCommand),
    /// Consumer streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Which events flow into which stream.
    #[command(subcommand)]
    Subscription(SubscriptionCommand),
    /// Who can read an event: grants and the subscriptions that receive it.
    Access { event: String },
    /// The tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Access review: grants that expire soon, have expired, or go unused.
    Review(ReviewArgs),
    /// Alerting rules over Fanner's metrics.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Who the token belongs to.
    Whoami,
    /// Publish events onto the global event stream: one PAYLOAD (a JSON value, e.g.
    /// `fanner publish user_signed_up --json '{"plan":"pro"}'`), or NDJSON on stdin: payloads of
    /// EVENT, or, without EVENT, whole events (`{"event": ..., "payload": ...}`).
    Publish {
        event: Option<String>,
        #[arg(allow_hyphen_values = true)]
        payload: Option<String>,
        #[arg(long)]
        user_id: Option<String>,
    },
    /// Print a stream's envelopes as JSON lines (its owner, admins and auditors).
    Tail {
        stream: String,
        /// Start at the oldest retained record instead of only new ones.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after N records.
        #[arg(long)]
        limit: Option<u64>,
        /// Stop after this many seconds without a new record.
        #[arg(long)]
        idle: Option<f64>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token (admins only); creates the principal if needed. Prints the token.
    Create {
        #[arg(long)]
        principal: String,
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
    },
}

#[derive(Subcommand)]
enum PrincipalCommand {
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Member,
    Auditor,
}

impl From<RoleArg> for api::Role {
    fn from(role: RoleArg) -> api::Role {
        match role {
            RoleArg::Admin => api::Role::Admin,
            RoleArg::Member => api::Role::Member,
            RoleArg::Auditor => api::Role::Auditor,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ClassificationArg {
    Public,
    Internal,
    Pii,
    Restricted,
}

impl From<ClassificationArg> for api::Classification {
    fn from(c: ClassificationArg) -> api::Classification {
        match c {
            ClassificationArg::Public => api::Classification::Public,
            ClassificationArg::Internal => api::Classification::Internal,
            ClassificationArg::Pii => api::Classification::Pii,
            ClassificationArg::Restricted => api::Classification::Restricted,
        }
    }
}

#[derive(Subcommand)]
enum EventCommand {
    /// Register an event owned by the caller.
    Create {
        name: String,
        #[arg(long, value_enum)]
        classification: ClassificationArg,
        #[arg(long, default_value = "")]
        description: String,
        /// Register on behalf of another principal (admins only).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Set how long the event may stay silent before the console and /metrics call it a gap.
    Update {
        name: String,
        /// A duration such as `10m`, `2h`, `1d`, or `off` to learn it from the event's rate.
        #[arg(long)]
        max_silence: String,
    },
    List,
    Show {
        name: String,
    },
    /// Delete an event nobody reads any more.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Register every message carrying the `(fanner.v1.event)` option in a FileDescriptorSet
    /// (e.g. `protoc --include_imports --descriptor_set_out=FILE` or `buf build -o FILE`).
    Push { file: PathBuf },
}

#[derive(Subcommand)]
enum GrantCommand {
    /// Let PRINCIPAL read EVENT (the event's owner or an admin).
    Create {
        event: String,
        #[arg(long = "to")]
        to: String,
        #[arg(long)]
        reason: String,
        /// RFC 3339; required for pii and restricted events, at most 365 days ahead.
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Comma-separated fields the grantee never sees: user_id, device_id, trace_id,
        /// producer, attributes.KEY, payload.KEY[.KEY...].
        #[arg(long, value_delimiter = ',')]
        redact: Vec<String>,
        /// drop (remove the fields) or hash (an HMAC-SHA-256 token per value, keyed per grant).
        #[arg(long, default_value = "drop", value_parser = parse_redact_mode)]
        redact_mode: api::RedactMode,
        /// Comma-separated PII fields of the event's schema the grantee may see anyway.
        #[arg(long, value_delimiter = ',')]
        include_pii: Vec<String>,
        /// The oldest history (by event time) the grantee may receive: `unbounded` or RFC 3339.
        /// Defaults to the grant's creation time: no history before it.
        #[arg(long, value_parser = api::HistoryFrom::parse)]
        history_from: Option<api::HistoryFrom>,
    },
    /// Change a grant's reason, expiry or history bound; what is not given stays as it is.
    Update {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        /// RFC 3339; required for pii and restricted events, at most 365 days ahead.
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// The oldest history (by event time) the grantee may receive: `unbounded` or RFC 3339.
        #[arg(long, value_parser = api::HistoryFrom::parse)]
        history_from: Option<api::HistoryFrom>,
    },
    /// Revoke a grant now; it stays listed as revoked.
    Revoke { id: String },
    List {
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        grantee: Option<String>,
    },
}

#[derive(Subcommand)]
enum StreamCommand {
    /// Create a consumer stream owned by the caller, and its backing stream.
    Create {
        name: String,
        #[arg(long, default_value_t = api::rules::DEFAULT_SHARD_COUNT)]
        shards: u32,
        #[arg(long, default_value_t = api::rules::DEFAULT_RETENTION_HOURS)]
        retention_hours: u32,
        /// KEY=VALUE, repeatable.
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Change shard count, retention or tags in place.
    Update {
        name: String,
        #[arg(long)]
        shards: Option<u32>,
        #[arg(long)]
        retention_hours: Option<u32>,
    },
    /// Delete a stream, its subscriptions and its backing stream.
    Delete {
        name: String,
    },
    List,
}

fn parse_redact_mode(raw: &str) -> Result<api::RedactMode, String> {
    api::RedactMode::parse(raw).ok_or_else(|| format!("{raw:?} is not drop or hash"))
}

fn parse_delivery_format(raw: &str) -> Result<api::DeliveryFormat, String> {
    api::DeliveryFormat::parse(raw).ok_or_else(|| format!("{raw:?} is not envelope or payload"))
}

fn parse_tag(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("tag {raw:?} must look like KEY=VALUE"))
}

#[derive(Subcommand)]
enum SubscriptionCommand {
    /// Subscribe a stream to events its owner may read.
    Create {
        #[arg(long)]
        stream: String,
        /// Comma-separated event names.
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// Deliver only events matching this pattern (JSON, an EventBridge-pattern subset),
        /// e.g. '{"payload":{"country":["US"]}}'.
        #[arg(long)]
        filter: Option<String>,
        /// envelope (the event's envelope) or payload (the payload bytes alone).
        #[arg(long, default_value = "envelope", value_parser = parse_delivery_format)]
        delivery_format: api::DeliveryFormat,
        /// Where delivery begins, by event time: `now` (live events only), `earliest`, or an
        /// RFC 3339 instant. History is delivered first, then live events, with no gap.
        #[arg(long, value_parser = api::StartFrom::parse)]
        from: Option<api::StartFrom>,
        /// Wait until the history is delivered (a progress spinner on a terminal); exit 1 if
        /// its hydration fails.
        #[arg(long)]
        wait: bool,
    },
    /// A subscription with its hydration's progress.
    Show {
        id: String,
    },
    /// Change a subscription's events, or replay its history from a new `--from`.
    Update {
        id: String,
        /// Comma-separated event names; unchanged when not given.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// A new start (`earliest` or RFC 3339) replays the history since then into the stream.
        #[arg(long, value_parser = api::StartFrom::parse)]
        from: Option<api::StartFrom>,
        /// Wait until a replay asked for with `--from` is delivered.
        #[arg(long)]
        wait: bool,
    },
    /// Re-deliver the events of a window (by event time) into the subscription's stream, e.g.
    /// after a consumer bug. Replayed envelopes carry `history_id`.
    Replay {
        id: String,
        /// `earliest` or an RFC 3339 instant (inclusive).
        #[arg(long, value_parser = api::StartFrom::parse)]
        from: api::StartFrom,
        /// An RFC 3339 instant (exclusive); up to the newest event when not given.
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// Wait until the window is delivered; exit 1 if the replay fails.
        #[arg(long)]
        wait: bool,
    },
    /// Would the stream's owner be allowed these events? Writes nothing.
    Check {
        #[arg(long)]
        stream: String,
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
    },
    Delete {
        id: String,
    },
    List {
        #[arg(long)]
        stream: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Audit entries, oldest first.
    Log {
        /// RFC 3339 instant, or a duration back from now such as `24h`, `7d`, `30m`.
        #[arg(long)]
        since: Option<String>,
    },
    /// Recompute the hash chain and report the first entry that does not match.
    Verify,
    /// Every entry, as CSV or JSON Lines, on stdout.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ReviewArgs {
    #[command(subcommand)]
    command: Option<ReviewCommand>,
    /// The window: grants expiring within, or unused for, this many days.
    #[arg(long, default_value_t = 30)]
    days: u32,
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// A dated access-review document: every grant with its use, PII reach, and the audit
    /// chain's head hash.
    Report {
        #[arg(long, value_enum, default_value = "html")]
        format: ReportFormat,
        /// Write to FILE instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Write the alerting rules (gaps, lag, broken streams, dead letters, stale lake, expiring grants).
    Export {
        #[arg(long, value_enum)]
        format: AlertFormat,
        /// Write to FILE instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AlertFormat {
    Prometheus,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Html,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Csv,
    Jsonl,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, so scripts can show it as is.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line.replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let conn = cli.conn;
    match cli.command {
        Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Token(TokenCommand::Create { principal, role }) => {
            commands::token_create(&conn, principal, role.map(Into::into)).await
        }
        Command::Principal(PrincipalCommand::List) => commands::principal_list(&conn).await,
        Command::Event(command) => match command {
            EventCommand::Create {
                name,
                classification,
                description,
                owner,
            } => {
                commands::event_create(&conn, name, classification.into(), description, owner).await
            }
            EventCommand::List => commands::event_list(&conn).await,
            EventCommand::Update { name, max_silence } => {
                commands::event_update(&conn, &name, &max_silence).await
            }
            EventCommand::Show { name } => commands::event_show(&conn, &name).await,
            EventCommand::Delete { name } => commands::event_delete(&conn, &name).await,
        },
        Command::Catalog(CatalogCommand::Push { file }) => catalog::push(&conn, &file).await,
        Command::Grant(command) => match command {
            GrantCommand::Create {
                event,
                to,
                reason,
                expires_at,
                history_from,
                redact,
                redact_mode,
                include_pii,
            } => {
                let body = api::CreateGrant {
                    event,
                    grantee: to,
                    reason,
                    expires_at,
                    history_from,
                    redact,
                    redact_mode,
                    include_pii,
                };
                commands::grant_create(&conn, body).await
            }
            GrantCommand::Update {
                id,
                reason,
                expires_at,
                history_from,
            } => commands::grant_update(&conn, &id, reason, expires_at, history_from).await,
            GrantCommand::Revoke { id } => commands::grant_revoke(&conn, &id).await,
            GrantCommand::List { event, grantee } => {
                commands::grant_list(&conn, event.as_deref(), grantee.as_deref()).await
            }
        },
        Command::Stream(command) => match command {
            StreamCommand::Create {
                name,
                shards,
                retention_hours,
                tags,
            } => {
                commands::stream_create(
                    &conn,
                    name,
                    shards,
                    retention_hours,
                    tags.into_iter().collect(),
                )
                .await
            }
            StreamCommand::Update {
                name,
                shards,
                retention_hours,
            } => commands::stream_update(&conn, &name, shards, retention_hours).await,
            StreamCommand::Delete { name } => commands::stream_delete(&conn, &name).await,
            StreamCommand::List => commands::stream_list(&conn).await,
        },
        Command::Subscription(command) => match command {
            SubscriptionCommand::Create {
                stream,
                events,
                from,
                wait,
                filter,
                delivery_format,
            } => {
                commands::subscription_create(
                    &conn,
                    stream,
                    events,
                    from,
                    wait,
                    filter,
                    delivery_format,
                )
                .await
            }
            SubscriptionCommand::Show { id } => commands::subscription_show(&conn, &id).await,
            SubscriptionCommand::Update {
                id,
                events,
                from,
                wait,
            } => commands::subscription_update(&conn, &id, events, from, wait).await,
            SubscriptionCommand::Replay { id, from, to, wait } => {
                history::replay(&conn, &id, from, to, wait).await
            }
            SubscriptionCommand::Check { stream, events } => {
                commands::subscription_check(&conn, stream, events).await
            }
            SubscriptionCommand::Delete { id } => commands::subscription_delete(&conn, &id).await,
            SubscriptionCommand::List { stream } => {
                commands::subscription_list(&conn, stream.as_deref()).await
            }
        },
        Command::Access { event } => commands::access(&conn, &event).await,
        Command::Alerts(AlertsCommand::Export { format, out }) => {
            alerts::export(format, out.as_deref())
        }
        Command::Review(ReviewArgs { command, days }) => match command {
            None => review::list(&conn, days).await,
            Some(ReviewCommand::Report { format, out, days }) => {
                review::report(&conn, days, format, out.as_deref()).await
            }
        },
        Command::Audit(command) => match command {
            AuditCommand::Log { since } => commands::audit_log(&conn, since.as_deref()).await,
            AuditCommand::Verify => commands::audit_verify(&conn).await,
            AuditCommand::Export { format } => commands::audit_export(&conn, format).await,
        },
        Command::Whoami => commands::whoami(&conn).await,
        Command::Publish {
            event,
            payload,
            user_id,
        } => data::publish(&conn, event, payload, user_id).await,
        Command::Tail {
            stream,
            from_beginning,
            limit,
            idle,
        } => data::tail(&conn, &stream, from_beginning, limit, idle).await,
    }
}
