//! `fanner review`, `fanner review report` and `fanner alerts export`, against a real server,
//! and the console in a real Chromium.

use std::path::Path;
use std::process::Command;

use crate::Server;

/// Two teams, a pii event granted to one of them with an expiry three weeks out, and the
/// grantee's stream subscribed to it: what the README's quickstart sets up.
pub struct Setup {
    pub server: Server,
    /// Owns `user_signed_up`.
    pub identity: String,
    /// A member who owns nothing the others made.
    pub marketing: String,
    pub auditor: String,
}

pub fn setup(data_dir: &Path) -> Setup {
    let server = Server::start(data_dir);
    let admin = server.admin_token.clone();
    let token = |principal: &str, role: &str| {
        server
            .ok(
                &admin,
                &["token", "create", "--principal", principal, "--role", role],
            )
            .trim()
            .to_owned()
    };
    let identity = token("identity", "member");
    let analytics = token("analytics", "member");
    let marketing = token("marketing", "member");
    let auditor = token("security", "auditor");
    server.ok(
        &identity,
        &[
            "event",
            "create",
            "user_signed_up",
            "--classification",
            "pii",
            "--description",
            "A user finished <b>sign-up</b>.",
        ],
    );
    let expires = (chrono::Utc::now() + chrono::Duration::days(21)).to_rfc3339();
    server.ok(
        &identity,
        &[
            "grant",
            "create",
            "user_signed_up",
            "--to",
            "analytics",
            "--reason",
            "Churn model <script>alert(1)</script>",
            "--expires-at",
            &expires,
        ],
    );
    server.ok(
        &analytics,
        &["stream", "create", "analytics-users", "--shards", "1"],
    );
    server.ok(
        &analytics,
        &[
            "subscription",
            "create",
            "--stream",
            "analytics-users",
            "--events",
            "user_signed_up",
        ],
    );
    Setup {
        server,
        identity,
        marketing,
        auditor,
    }
}

#[test]
fn review_lists_attention_and_reports_carry_the_audit_head() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(dir.path());
    let attention = s.server.ok(&s.auditor, &["review"]);
    assert!(
        attention.contains("expiring") && attention.contains("analytics"),
        "{attention}"
    );
    assert!(
        s.server
            .ok(&s.auditor, &["review", "--days", "7"])
            .contains("Nothing needs attention")
    );

    let head: serde_json::Value =
        serde_json::from_str(&s.server.ok(&s.auditor, &["audit", "verify", "--json"]))
            .expect("json");
    let head = head["head"].as_str().expect("head").to_owned();
    assert_eq!(head.len(), 64);

    let json_path = dir.path().join("review.json");
    s.server.ok(
        &s.auditor,
        &[
            "review",
            "report",
            "--format",
            "json",
            "--out",
            json_path.to_str().expect("utf-8"),
        ],
    );
    let report: api::AccessReview =
        serde_json::from_slice(&std::fs::read(&json_path).expect("report written")).expect("json");
    assert_eq!(report.audit_head, head);
    assert_eq!(report.grants.len(), 1);
    assert_eq!(report.grants[0].streams, ["analytics-users"]);
    assert_eq!(report.pii_reach[0].readers, ["analytics", "identity"]);

    let html = s.server.ok(&s.auditor, &["review", "report"]);
    assert!(html.starts_with("<!doctype html>") && html.contains(&head));
    assert!(
        html.contains("Churn model &#60;script&#62;")
            || html.contains("Churn model &lt;script&gt;")
    );
    assert!(!html.contains("<script>"));

    let csv = s
        .server
        .ok(&s.auditor, &["review", "report", "--format", "csv"]);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .expect("header")
            .starts_with("event,grantee,reason,granted_by")
    );
    let row = lines.next().expect("one grant");
    assert!(
        row.starts_with("user_signed_up,analytics,") && row.ends_with(&head),
        "{row}"
    );

    let set = s.server.ok(
        &s.identity,
        &["event", "update", "user_signed_up", "--max-silence", "10m"],
    );
    assert!(set.contains("after 600 s"), "{set}");
    s.server.fails(
        &s.identity,
        &[
            "event",
            "update",
            "user_signed_up",
            "--max-silence",
            "10 minutes",
        ],
        "--max-silence",
    );
    s.server.fails(
        &s.auditor,
        &["review", "--days", "0"],
        "days must be between 1 and 3650",
    );
}

#[test]
fn exported_alert_rules_pass_promtool() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("fanner.rules.yml");
    let output = Command::new(crate::FANNER)
        .args(["alerts", "export", "--format", "prometheus", "--out"])
        .arg(&rules)
        .output()
        .expect("fanner runs");
    assert!(output.status.success());
    let text = std::fs::read_to_string(&rules).expect("rules written");
    for alert in [
        "FannerConsumerLag",
        "FannerStreamBroken",
        "FannerGrantsExpiring",
        "FannerShardsRefused",
        "FannerShardJobsFailing",
    ] {
        assert!(text.contains(alert), "{alert} is exported");
    }
    let Ok(check) = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    else {
        eprintln!(
            "SKIPPED: promtool is not installed (scripts/setup-tools installs Debian's prometheus)"
        );
        return;
    };
    assert!(
        check.status.success(),
        "promtool rejects the rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("SUCCESS: 9 rules found"));
}

#[test]
fn the_console_in_a_real_browser() {
    let Some(python) = std::env::var_os("FANNER_PYTHON") else {
        eprintln!(
            "SKIPPED: FANNER_PYTHON is not set; run `eval \"$(bash scripts/setup-tools)\"` for the browser tier"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let s = setup(dir.path());
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/console.py"
        ))
        .env("FANNER_ENDPOINT", &s.server.endpoint)
        .env("FANNER_SCREENSHOTS", &screenshots)
        .env("AUDITOR_TOKEN", &s.auditor)
        .env("MEMBER_TOKEN", &s.marketing)
        .output()
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => eprintln!("Console screenshots are in {}.", screenshots.display()),
        Some(77) => eprintln!("SKIPPED: {}", stderr.trim()),
        _ if stderr.contains("No module named 'playwright'") => {
            eprintln!("SKIPPED: playwright is not installed; run scripts/setup-tools")
        }
        _ => panic!(
            "the browser test failed:\n{}{stderr}",
            String::from_utf8_lossy(&output.stdout)
        ),
    }
}
