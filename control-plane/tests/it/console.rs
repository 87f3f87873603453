//! The console at `/ui/`, over a real socket: sign-in and sessions, security headers, escaping,
//! and that each page shows what its viewer may see and refuses the rest.

use std::collections::BTreeMap;

use api::*;
use chrono::Duration;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE, X_FRAME_OPTIONS};

use crate::support::{Db, TestServer, assert_status, db_tests};

db_tests!(
    signing_in_and_out,
    pages_show_what_their_viewer_may_see,
    silent_events_become_gaps,
    engine_reports_become_stream_health
);

const NASTY: &str = "<script>alert('x')</script>";

/// A browser without redirects or a cookie jar: the test sees every Set-Cookie and Location.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Browser {
    fn new(server: &TestServer) -> Browser {
        api::install_crypto_provider();
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: server.endpoint(),
            cookie: None,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let request = match &self.cookie {
            Some(cookie) => request.header(COOKIE, cookie),
            None => request,
        };
        let response = request.send().await.expect("request");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("body"),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.base)).form(form))
            .await
    }

    /// Signs in with `token` and keeps the session cookie.
    async fn sign_in(&mut self, token: &str) -> Answer {
        let answer = self.post("/ui/", &[("token", token)]).await;
        assert_eq!(answer.status, 303, "sign-in answers with a redirect");
        let set = answer.headers[SET_COOKIE].to_str().expect("ascii");
        self.cookie = Some(set.split(';').next().expect("pair").to_owned());
        answer
    }
}

async fn signing_in_and_out(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let token = server.token("security", Role::Auditor).await;
    let mut browser = Browser::new(&server);

    let form = browser.get("/ui/").await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains(r#"name="token""#), "{}", form.body);
    assert!(
        form.headers[CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .contains("default-src 'none'")
    );
    assert_eq!(form.headers[X_FRAME_OPTIONS], "DENY");
    assert_eq!(browser.get("/ui/access").await.headers[LOCATION], "/ui/");

    let refused = browser.post("/ui/", &[("token", "fnr_not-a-token")]).await;
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("not valid"));
    assert!(refused.headers.get(SET_COOKIE).is_none());

    let signed_in = browser.sign_in(&token).await;
    let cookie = signed_in.headers[SET_COOKIE].to_str().expect("ascii");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP cookie: {cookie}");
    assert!(!cookie.contains(&token), "the token never goes back out");
    let over_tls = browser
        .send(
            browser
                .http
                .post(format!("{}/ui/", browser.base))
                .header("x-forwarded-proto", "https")
                .form(&[("token", token.as_str())]),
        )
        .await;
    assert!(
        over_tls.headers[SET_COOKIE]
            .to_str()
            .expect("ascii")
            .contains("; Secure")
    );

    let catalog = browser.get("/ui/").await;
    assert_eq!(catalog.status, 200);
    assert!(catalog.body.contains("Event catalog") && catalog.body.contains("security"));

    // Signing out needs the page's per-session token.
    assert_eq!(
        browser
            .post("/ui/sign-out", &[("csrf", "guess")])
            .await
            .status,
        403
    );
    let csrf = catalog
        .body
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page carries a csrf token")
        .to_owned();
    let out = browser.post("/ui/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(
        out.headers[SET_COOKIE]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    assert_eq!(
        browser.get("/ui/access").await.status,
        303,
        "the session is gone"
    );

    // A session ends at its expiry.
    browser.sign_in(&token).await;
    assert_eq!(browser.get("/ui/access").await.status, 200);
    server
        .cp
        .clock()
        .advance(std::time::Duration::from_secs(8 * 3600 + 1));
    assert_eq!(browser.get("/ui/access").await.headers[LOCATION], "/ui/");
}

async fn pages_show_what_their_viewer_may_see(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let identity = server.principal("identity", Role::Member).await;
    let analytics_token = server.token("analytics", Role::Member).await;
    let analytics = server.client(Some(&analytics_token));
    let marketing_token = server.token("marketing", Role::Member).await;
    let auditor_token = server.token("security", Role::Auditor).await;
    for (name, classification) in [
        ("user_signed_up", Classification::Pii),
        ("page_viewed", Classification::Internal),
    ] {
        identity
            .create_event(&CreateEvent {
                name: name.to_owned(),
                classification,
                description: format!("Emitted by identity {NASTY}"),
                owner: None,
            })
            .await
            .expect("event");
    }
    let now = server.cp.now();
    identity
        .create_grant(&CreateGrant {
            event: "user_signed_up".to_owned(),
            grantee: "analytics".to_owned(),
            reason: format!("Churn model {NASTY}"),
            expires_at: Some(now + Duration::days(20)),
            ..Default::default()
        })
        .await
        .expect("grant");
    identity
        .create_grant(&CreateGrant {
            event: "page_viewed".to_owned(),
            grantee: "marketing".to_owned(),
            reason: "Campaign reach".to_owned(),
            expires_at: None,
            ..Default::default()
        })
        .await
        .expect("grant");
    analytics
        .create_stream(&CreateStream {
            name: "analytics-users".to_owned(),
            shard_count: Some(1),
            retention_hours: None,
            tags: BTreeMap::new(),
        })
        .await
        .expect("stream");
    analytics
        .create_subscription(&CreateSubscription {
            stream: "analytics-users".to_owned(),
            events: vec!["user_signed_up".to_owned()],
            ..Default::default()
        })
        .await
        .expect("subscription");

    let mut auditor = Browser::new(&server);
    auditor.sign_in(&auditor_token).await;
    let page = auditor.get("/ui/events/user_signed_up").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let svg = page.body.split("<svg").nth(1).expect("an access graph");
    for shown in [
        "producer",
        "identity",
        "grant → analytics",
        "analytics-users",
        "delivering",
    ] {
        assert!(svg.contains(shown), "the graph shows {shown:?}");
    }
    assert!(
        page.body.contains("grant.create"),
        "history from the audit trail"
    );
    assert!(!page.body.contains("<script"), "nothing stored is markup");
    assert!(
        page.body
            .contains("Churn model &#60;script&#62;alert(&#39;x&#39;)")
    );

    let review = auditor.get("/ui/review?days=30").await;
    assert_eq!(review.status, 200);
    let expiring = section(&review.body, "Expiring");
    assert!(expiring.contains("user_signed_up") && expiring.contains("analytics"));
    assert!(section(&review.body, "PII reach").contains("analytics-users"));
    let head = server.admin.audit_verify().await.expect("verify").head;
    assert!(
        review.body.contains(&head),
        "the review cites the audit head"
    );

    let audit = auditor
        .get("/ui/audit?actor=identity&action=grant.create")
        .await;
    assert_eq!(audit.status, 200);
    assert!(audit.body.contains("Chain verified") && audit.body.contains(&head));
    assert_eq!(audit.body.matches("<td>grant.create</td>").count(), 2);
    assert!(!audit.body.contains("<td>event.create</td>"));
    assert_eq!(auditor.get("/ui/audit?since=yesterday").await.status, 400);

    let csv = auditor.get("/ui/access.csv").await;
    assert_eq!(csv.status, 200);
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], "principal,page_viewed,user_signed_up");
    assert!(lines.contains(&"analytics,,grant"), "{lines:?}");
    assert!(lines.contains(&"identity,owner,owner"), "{lines:?}");

    // A member sees its own stream, and is refused another team's pages.
    let mut member = Browser::new(&server);
    member.sign_in(&marketing_token).await;
    let refused = member.get("/ui/streams/analytics-users").await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("Not yours to see"));
    assert_eq!(member.get("/ui/events/user_signed_up").await.status, 403);
    assert_eq!(member.get("/ui/audit").await.status, 403);
    let access = member.get("/ui/access.csv").await;
    assert_eq!(
        access.body.lines().count(),
        2,
        "a member sees only its own row"
    );
    let mut owner = Browser::new(&server);
    owner.sign_in(&analytics_token).await;
    let stream = owner.get("/ui/streams/analytics-users").await;
    assert_eq!(stream.status, 200);
    assert!(
        stream
            .body
            .contains(r#"<a href="/ui/events/user_signed_up">user_signed_up</a></td><td>yes</td>"#),
        "{}",
        stream.body
    );

    // A month on, the pii grant has expired and the unused one is a revocation candidate.
    server
        .cp
        .clock()
        .advance(std::time::Duration::from_secs(31 * 86_400));
    let later = server
        .raw()
        .get(server.url("/v1/review?days=30"))
        .bearer_auth(&auditor_token)
        .send()
        .await
        .expect("review")
        .json::<AccessReview>()
        .await
        .expect("json");
    let attention = |event: &str| {
        later
            .grants
            .iter()
            .find(|g| g.grant.event == event)
            .and_then(|g| g.attention)
    };
    assert_eq!(attention("user_signed_up"), Some(Attention::Expired));
    assert_eq!(attention("page_viewed"), Some(Attention::Unused));
    let bad = server
        .raw()
        .get(server.url("/v1/review?days=0"))
        .bearer_auth(&auditor_token)
        .send()
        .await
        .expect("review");
    assert_eq!(bad.status(), 400);
}

/// The HTML from heading `title` to the next heading.
fn section<'a>(body: &'a str, title: &str) -> &'a str {
    let start = body
        .find(&format!("<h2>{title}</h2>"))
        .unwrap_or_else(|| panic!("no section {title}"));
    let rest = &body[start + 4..];
    &rest[..rest.find("<h2>").unwrap_or(rest.len())]
}

async fn silent_events_become_gaps(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let identity = server.principal("identity", Role::Member).await;
    let marketing = server.principal("marketing", Role::Member).await;
    let auditor_token = server.token("security", Role::Auditor).await;
    let auditor = server.client(Some(&auditor_token));
    for name in ["orders", "quiet"] {
        identity
            .create_event(&CreateEvent {
                name: name.to_owned(),
                classification: Classification::Internal,
                description: String::new(),
                owner: None,
            })
            .await
            .expect("event");
    }
    identity
        .set_max_silence("quiet", Some(600))
        .await
        .expect("max silence set");
    assert_status(
        marketing.set_max_silence("quiet", Some(60)).await,
        403,
        "owner",
    );
    assert_status(
        identity.set_max_silence("quiet", Some(0)).await,
        400,
        "between 1 and",
    );
    assert_status(
        identity.set_max_silence("nope", Some(60)).await,
        404,
        "does not exist",
    );

    use streams::StreamBackend;
    server
        .backend
        .create_stream(&streams::StreamSpec {
            name: server.cp.ges().to_owned(),
            shard_count: 1,
            retention_hours: 24,
            tags: BTreeMap::new(),
        })
        .await
        .expect("the global event stream");
    for _ in 0..3 {
        let events = (0..2)
            .map(|_| PublishEvent {
                event: "orders".to_owned(),
                payload: Some(serde_json::json!({"total": 1})),
                ..PublishEvent::default()
            })
            .collect();
        identity
            .publish(&PublishRequest { events })
            .await
            .expect("published");
    }
    let gaps = |list: Vec<EventHealth>| list.into_iter().map(|h| h.event).collect::<Vec<_>>();
    assert!(gaps(auditor.health_gaps().await.expect("gaps")).is_empty());

    // Bursts teach the shortest learned silence, a minute; the set ten minutes holds longer.
    server
        .cp
        .clock()
        .advance(std::time::Duration::from_secs(61));
    assert_eq!(gaps(auditor.health_gaps().await.expect("gaps")), ["orders"]);
    server
        .cp
        .clock()
        .advance(std::time::Duration::from_secs(600));
    assert_eq!(
        gaps(auditor.health_gaps().await.expect("gaps")),
        ["orders", "quiet"]
    );
    assert!(
        gaps(marketing.health_gaps().await.expect("gaps")).is_empty(),
        "not marketing's events"
    );

    let metrics = server
        .raw()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("fanner_health_gaps "), "{metrics}");

    let mut browser = Browser::new(&server);
    browser.sign_in(&auditor_token).await;
    let page = browser.get("/ui/health").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("2 event(s) silent"));
    assert!(page.body.contains("600 s (set)") && page.body.contains("60 s (learned)"));
}

async fn engine_reports_become_stream_health(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let analytics = server.principal("analytics", Role::Member).await;
    let marketing = server.principal("marketing", Role::Member).await;
    for (client, name) in [(&analytics, "analytics-users"), (&marketing, "campaigns")] {
        client
            .create_stream(&CreateStream {
                name: name.to_owned(),
                shard_count: Some(1),
                retention_hours: None,
                tags: BTreeMap::new(),
            })
            .await
            .expect("stream");
    }
    let report = |mode, lag_ms, lag_records, owed| control_plane::service::TargetReport {
        backing_name: server.cp.backing_name("analytics-users"),
        mode,
        reason: None,
        lag_ms: Some(lag_ms),
        lag_records: Some(lag_records),
        owed,
    };
    // Two GES shards disagree: the stream is as bad as its worst shard, and behind by both.
    server.cp.report_engine_status(vec![
        report("attached", 10, 1, 2),
        report("behind", 500, 40, 0),
    ]);
    let health = |client: &api::Client| {
        let client = client.clone();
        async move {
            client
                .health_streams()
                .await
                .expect("stream health")
                .into_iter()
                .map(|h| (h.stream, h.mode, h.lag_ms, h.lag_records, h.owed))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        health(&analytics).await,
        [(
            "analytics-users".to_owned(),
            "behind".to_owned(),
            Some(500),
            Some(41),
            2
        )]
    );
    assert_eq!(
        health(&marketing).await,
        [(
            "campaigns".to_owned(),
            "unreported".to_owned(),
            None,
            None,
            0
        )],
        "a member sees only its own streams"
    );

    // Write rates come from the deliveries between two reports.
    let rates = || async {
        analytics
            .health_streams()
            .await
            .expect("stream health")
            .into_iter()
            .map(|h| h.events_per_second)
            .collect::<Vec<_>>()
    };
    assert_eq!(rates().await, [None], "no rate before two reports");
    server.cp.observe_deliveries(Vec::new());
    server.cp.clock().advance(std::time::Duration::from_secs(2));
    server
        .cp
        .observe_deliveries(vec![(server.cp.backing_name("analytics-users"), 100)]);
    assert_eq!(rates().await, [Some(50.0)]);
    server.cp.clock().advance(std::time::Duration::from_secs(2));
    server.cp.observe_deliveries(Vec::new());
    assert_eq!(
        rates().await,
        [Some(0.0)],
        "a quiet interval is a zero rate"
    );
}
