//! One test story, two stores: each test runs on SQLite, and on a fresh PostgreSQL database when
//! `FANNER_TEST_DATABASE_URL` is set. The control plane is served on a real socket (port 0).

use std::net::SocketAddr;
use std::sync::Arc;

use api::{Client, CreateToken, Role};
use control_plane::{Clock, ControlPlane, Settings, Store};
use streams::embedded::EmbeddedBackend;
use tempfile::TempDir;
use tokio::sync::oneshot;

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs an async test fn once per store.
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::support::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::support::Db::Postgres).await
            }
        }
    )*};
}
pub(crate) use db_tests;

pub struct TestServer {
    pub cp: ControlPlane,
    pub addr: SocketAddr,
    pub admin: Client,
    pub backend: Arc<EmbeddedBackend>,
    pub db_url: String,
    _dir: TempDir,
    _shutdown: oneshot::Sender<()>,
}

/// The store URL for a new test: a SQLite file in `dir`, or a fresh Postgres database.
pub async fn store_url(db: Db, dir: &TempDir, test: &str) -> Option<String> {
    match db {
        Db::Sqlite => Some(format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("fanner.db").display()
        )),
        Db::Postgres => testkit::postgres::fresh_database(test).await,
    }
}

impl TestServer {
    /// `None` when `db` is not available here (the reason is printed).
    pub async fn start(db: Db) -> Option<TestServer> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = store_url(db, &dir, "control-plane").await?;
        let store = Store::open(&db_url).await.expect("store opens");
        let backend = Arc::new(
            EmbeddedBackend::open(dir.path().join("streams.redb")).expect("backend opens"),
        );
        Some(TestServer::serve(store, backend, db_url, dir).await)
    }

    /// Another replica on the same store and backend, on its own socket.
    pub async fn replica(&self) -> (ControlPlane, Client, oneshot::Sender<()>) {
        let store = Store::open(&self.db_url).await.expect("store opens");
        let cp = ControlPlane::new(
            store,
            self.backend.clone(),
            Settings::default(),
            Clock::default(),
        )
        .await
        .expect("control plane starts");
        let (addr, shutdown) = listen(cp.clone()).await;
        let token = self
            .admin
            .create_token(&CreateToken {
                principal: "admin".to_owned(),
                role: None,
            })
            .await
            .expect("token")
            .token;
        let client = Client::new(&format!("http://{addr}"), Some(token)).expect("client");
        (cp, client, shutdown)
    }

    async fn serve(
        store: Store,
        backend: Arc<EmbeddedBackend>,
        db_url: String,
        dir: TempDir,
    ) -> TestServer {
        let cp = ControlPlane::new(
            store,
            backend.clone(),
            Settings::default(),
            Clock::default(),
        )
        .await
        .expect("control plane starts");
        let token = cp
            .bootstrap()
            .await
            .expect("bootstrap")
            .expect("a fresh store bootstraps");
        let (addr, shutdown) = listen(cp.clone()).await;
        let admin = Client::new(&format!("http://{addr}"), Some(token)).expect("client");
        TestServer {
            cp,
            addr,
            admin,
            backend,
            db_url,
            _dir: dir,
            _shutdown: shutdown,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self, token: Option<&str>) -> Client {
        Client::new(&self.endpoint(), token.map(str::to_owned)).expect("client")
    }

    /// A client for a new principal with `role`.
    pub async fn principal(&self, name: &str, role: Role) -> Client {
        self.client(Some(&self.token(name, role).await))
    }

    /// A new token for principal `name` (created with `role` if new).
    pub async fn token(&self, name: &str, role: Role) -> String {
        self.admin
            .create_token(&CreateToken {
                principal: name.to_owned(),
                role: Some(role),
            })
            .await
            .expect("token created")
            .token
    }

    /// A plain HTTP client and the admin's token, for requests the typed client cannot make.
    pub fn raw(&self) -> reqwest::Client {
        api::install_crypto_provider();
        reqwest::Client::new()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    pub async fn sql(&self, statement: &str) {
        sqlx::query(statement)
            .execute(self.cp.store().pool())
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

async fn listen(cp: ControlPlane) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(control_plane::http::serve(
        listener,
        control_plane::http::app(cp),
        async move {
            let _ = stopped.await;
        },
        std::time::Duration::from_secs(1),
    ));
    (addr, shutdown)
}

/// Asserts that `result` failed with HTTP `status` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, api::ClientError>,
    status: u16,
    needle: &str,
) {
    match result {
        Err(api::ClientError::Api {
            status: got,
            detail,
        }) => {
            assert_eq!(
                got, status,
                "unexpected status; message: {}",
                detail.message
            );
            assert!(
                detail.message.contains(needle),
                "message {:?} should mention {needle:?}",
                detail.message
            );
        }
        other => panic!("expected HTTP {status}, got {other:?}"),
    }
}
