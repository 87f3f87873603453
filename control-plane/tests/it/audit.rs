use api::*;

use crate::support::{Db, TestServer, assert_status, db_tests};

db_tests!(every_change_and_refusal_is_chained, tampering_is_detected);

async fn every_change_and_refusal_is_chained(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let growth = server.principal("growth", Role::Member).await;
    let fraud = server.principal("fraud", Role::Member).await;
    let auditor = server.principal("security", Role::Auditor).await;
    growth
        .create_event(&CreateEvent {
            name: "user_signed_up".to_owned(),
            classification: Classification::Internal,
            description: String::new(),
            owner: None,
        })
        .await
        .expect("event");
    let refused = fraud
        .update_event(
            "user_signed_up",
            &UpdateEvent {
                classification: Classification::Public,
                description: "mine".to_owned(),
                revision: None,
            },
        )
        .await;
    assert_status(refused, 403, "owner");

    let entries = auditor
        .audit_log(None, None, None)
        .await
        .expect("audit log")
        .entries;
    let summary: Vec<(&str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.action.as_str(),
                e.object_id.as_str(),
                e.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("system", "principal.bootstrap", "admin", "ok"),
            ("admin", "token.create", "growth", "ok"),
            ("admin", "token.create", "fraud", "ok"),
            ("admin", "token.create", "security", "ok"),
            ("growth", "event.create", "user_signed_up", "ok"),
            ("fraud", "event.update", "user_signed_up", "denied"),
        ]
    );
    let created = &entries[4];
    assert_eq!(created.before, None);
    assert_eq!(
        created.after.as_ref().and_then(|a| a["owner"].as_str()),
        Some("growth")
    );
    assert!(
        entries[5]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("owner"))
    );
    assert!(!created.request_id.is_empty());
    for pair in entries.windows(2) {
        assert_eq!(
            pair[1].prev_hash, pair[0].hash,
            "entry {} links to its predecessor",
            pair[1].seq
        );
    }
    // Token values never reach the trail.
    let export = serde_json::to_string(&entries).expect("json");
    assert!(!export.contains("fnr_"));

    // Paging and filters.
    let page = auditor
        .audit_log(None, Some(4), Some(1))
        .await
        .expect("page")
        .entries;
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!(
        auditor
            .audit_log(Some(future), None, None)
            .await
            .expect("since")
            .entries
            .is_empty()
    );

    let verification = auditor.audit_verify().await.expect("verify");
    assert!(verification.ok, "{}", verification.message);
    assert_eq!(verification.entries_checked, 6);
    assert_status(
        growth.audit_log(None, None, None).await,
        403,
        "admins and auditors",
    );
    assert_status(growth.audit_verify().await, 403, "admins and auditors");
}

async fn tampering_is_detected(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    for name in ["a", "b", "c", "d"] {
        server.principal(name, Role::Member).await;
    }
    assert!(server.admin.audit_verify().await.expect("verify").ok);

    // An edited field.
    server
        .sql("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
        .await;
    let verification = server.admin.audit_verify().await.expect("verify");
    assert_eq!(
        (verification.ok, verification.first_mismatch),
        (false, Some(3)),
        "{}",
        verification.message
    );
    assert!(verification.message.contains("entry 3 was modified"));
    server
        .sql("UPDATE audit_log SET actor = 'admin' WHERE seq = 3")
        .await;
    assert!(server.admin.audit_verify().await.expect("verify").ok);

    // An entry removed from the end.
    server.sql("DELETE FROM audit_log WHERE seq = 5").await;
    let verification = server.admin.audit_verify().await.expect("verify");
    assert_eq!(
        (verification.ok, verification.first_mismatch),
        (false, Some(5)),
        "{}",
        verification.message
    );

    // An entry removed from the middle.
    server.sql("DELETE FROM audit_log WHERE seq = 2").await;
    let verification = server.admin.audit_verify().await.expect("verify");
    assert_eq!(
        (verification.ok, verification.first_mismatch),
        (false, Some(2)),
        "{}",
        verification.message
    );
    assert!(verification.message.contains("missing"));
}
