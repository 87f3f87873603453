use api::{ErrorBody, Role};
use serde_json::json;

use crate::support::{Db, TestServer, db_tests};

db_tests!(
    bad_input_gets_a_clear_4xx,
    service_endpoints,
    a_worker_serves_operators_only_and_is_unready_until_its_jobs_scan
);

async fn bad_input_gets_a_clear_4xx(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let token = server
        .admin
        .create_token(&api::CreateToken {
            principal: "growth".to_owned(),
            role: Some(Role::Member),
        })
        .await
        .expect("token")
        .token;
    let admin = server.token("admin", Role::Admin).await;
    let http = server.raw();
    let post = |path: &str| http.post(server.url(path)).bearer_auth(&token);

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            post("/v1/events")
                .json(&json!({"name": "a", "classification": "public", "colour": "red"})),
            400,
            "unknown field `colour`",
        ),
        (
            post("/v1/events").json(&json!({"name": "a", "classification": "secret"})),
            400,
            "unknown variant `secret`",
        ),
        (
            post("/v1/events").json(&json!({"name": 7, "classification": "public"})),
            400,
            "invalid type",
        ),
        (
            post("/v1/events").json(&json!({"classification": "public"})),
            400,
            "missing field `name`",
        ),
        (
            post("/v1/events")
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "not valid JSON",
        ),
        (
            post("/v1/events").body(r#"{"name":"a","classification":"public"}"#),
            400,
            "Content-Type",
        ),
        (
            post("/v1/grants").json(
                &json!({"event": "a", "grantee": "b", "reason": "r", "expires_at": "tomorrow"}),
            ),
            400,
            "expires_at",
        ),
        (
            post("/v1/streams").json(&json!({"name": "s", "shard_count": -1})),
            400,
            "shard_count",
        ),
        (
            http.get(server.url("/v1/grants?colour=red"))
                .bearer_auth(&token),
            400,
            "unknown field `colour`",
        ),
        (
            http.get(server.url("/v1/audit?limit=many"))
                .bearer_auth(&token),
            400,
            "limit",
        ),
        (
            http.get(server.url("/v1/routes?wait_ms=60001"))
                .bearer_auth(&token),
            400,
            "wait_ms must be at most 60000",
        ),
        (
            http.get(server.url("/v1/audit?limit=0"))
                .bearer_auth(&admin),
            400,
            "limit must be between 1 and 10000",
        ),
        (
            http.get(server.url("/v1/audit?limit=10001"))
                .bearer_auth(&admin),
            400,
            "limit must be between 1 and 10000",
        ),
        (
            http.get(server.url("/v1/nowhere")).bearer_auth(&token),
            404,
            "no such route",
        ),
        (http.get(server.url("/v1/events")), 401, "bearer token"),
        (
            http.get(server.url("/v1/events"))
                .header("authorization", "Basic Zm9vOmJhcg=="),
            401,
            "bearer token",
        ),
    ];
    for (request, status, needle) in cases {
        let response = request.send().await.expect("response");
        assert_eq!(
            response.status().as_u16(),
            status,
            "expected {status} mentioning {needle:?}"
        );
        assert!(response.headers().contains_key("x-request-id"));
        let body: ErrorBody = response.json().await.expect("a JSON error body");
        assert!(
            body.error.message.contains(needle),
            "{:?} should mention {needle:?}",
            body.error.message
        );
        assert!(body.error.request_id.is_some());
    }
    // The server answers before reading an oversized body and closes that connection, so this
    // request gets a client of its own.
    api::install_crypto_provider();
    let oversized = reqwest::Client::new()
        .post(server.url("/v1/events"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .expect("response");
    assert_eq!(oversized.status().as_u16(), 413);
    let body: ErrorBody = oversized.json().await.expect("a JSON error body");
    assert!(
        body.error.message.contains("larger than"),
        "{}",
        body.error.message
    );

    // Nothing was created by any of it.
    assert!(server.admin.list_events().await.expect("list").is_empty());
}

async fn service_endpoints(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let http = server.raw();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            http.get(server.url(path))
                .send()
                .await
                .expect("response")
                .status(),
            200,
            "{path}"
        );
    }
    let openapi: serde_json::Value = http
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .expect("response")
        .json()
        .await
        .expect("OpenAPI is JSON");
    assert!(
        openapi["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let paths = openapi["paths"].as_object().expect("paths");
    for path in [
        "/v1/tokens",
        "/v1/events/{name}",
        "/v1/grants/{id}",
        "/v1/streams/{name}",
        "/v1/subscriptions/check",
        "/v1/access/{event}",
        "/v1/audit/verify",
        "/v1/routes",
    ] {
        assert!(paths.contains_key(path), "OpenAPI lacks {path}");
    }
    assert!(openapi["components"]["schemas"]["Grant"].is_object());

    server.admin.whoami().await.expect("whoami");
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("response")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("fanner_api_requests_total"), "{metrics}");
}

async fn a_worker_serves_operators_only_and_is_unready_until_its_jobs_scan(db: Db) {
    use streams::StreamBackend;
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    server
        .backend
        .create_stream(&streams::StreamSpec {
            name: server.cp.ges().to_owned(),
            shard_count: 1,
            retention_hours: 24,
            tags: Default::default(),
        })
        .await
        .expect("GES");
    // A scheduler that has not completed a scan yet: a fresh status.
    let role = control_plane::http::Role {
        api: false,
        workers: vec![("engine", shard_runtime::Status::default())],
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(control_plane::http::serve(
        listener,
        control_plane::http::app_for(server.cp.clone(), role),
        std::future::pending(),
        std::time::Duration::from_secs(1),
    ));
    let http = server.raw();
    let get = |path: &str| http.get(format!("http://{addr}{path}")).send();
    for path in ["/healthz", "/metrics"] {
        assert_eq!(get(path).await.expect("response").status(), 200, "{path}");
    }
    for path in ["/v1/openapi.json", "/v1/events", "/ui/"] {
        assert_eq!(get(path).await.expect("response").status(), 404, "{path}");
    }
    let ready = get("/readyz").await.expect("response");
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.text().await.expect("body"),
        "engine is not scanning its shards\n"
    );
}
