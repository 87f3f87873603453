use api::*;
use chrono::{Duration, Utc};

use crate::support::{Db, TestServer, assert_status, db_tests};

db_tests!(tokens_and_principals, events, grants);

async fn tokens_and_principals(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let me = server.admin.whoami().await.expect("whoami");
    assert_eq!(
        me,
        WhoAmI {
            principal: "admin".to_owned(),
            role: Role::Admin
        }
    );

    assert_status(server.client(None).whoami().await, 401, "token");
    assert_status(
        server.client(Some("fnr_not-a-token")).whoami().await,
        401,
        "token",
    );

    let growth = server.principal("growth", Role::Member).await;
    let auditor = server.principal("security", Role::Auditor).await;
    assert_eq!(growth.whoami().await.expect("whoami").principal, "growth");
    for caller in [&growth, &auditor] {
        let refused = caller
            .create_token(&CreateToken {
                principal: "mallory".to_owned(),
                role: Some(Role::Admin),
            })
            .await;
        assert_status(refused, 403, "only admins");
    }
    let conflict = server
        .admin
        .create_token(&CreateToken {
            principal: "growth".to_owned(),
            role: Some(Role::Admin),
        })
        .await;
    assert_status(conflict, 409, "exists with role member");
    let invalid = server
        .admin
        .create_token(&CreateToken {
            principal: "Not Valid".to_owned(),
            role: None,
        })
        .await;
    assert_status(invalid, 400, "principal name");

    // A second token for an existing principal authenticates as that principal.
    let again = server
        .admin
        .create_token(&CreateToken {
            principal: "growth".to_owned(),
            role: None,
        })
        .await
        .expect("token");
    assert_eq!(again.role, Role::Member);
    assert_eq!(
        server
            .client(Some(&again.token))
            .whoami()
            .await
            .expect("whoami")
            .principal,
        "growth"
    );

    let names: Vec<String> = server
        .admin
        .list_principals()
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["admin", "growth", "security"]);

    // Tokens are stored hashed: no stored value equals a token.
    let rows: Vec<String> = sqlx::query_scalar("SELECT hash FROM tokens")
        .fetch_all(server.cp.store().pool())
        .await
        .expect("tokens");
    assert!(
        rows.iter()
            .all(|hash| *hash != again.token && hash.len() == 64)
    );
}

fn new_event(name: &str, classification: Classification) -> CreateEvent {
    CreateEvent {
        name: name.to_owned(),
        classification,
        description: format!("{name} happened."),
        owner: None,
    }
}

async fn events(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let growth = server.principal("growth", Role::Member).await;
    let fraud = server.principal("fraud", Role::Member).await;
    let auditor = server.principal("security", Role::Auditor).await;

    let event = growth
        .create_event(&new_event("user_signed_up", Classification::Pii))
        .await
        .expect("create");
    assert_eq!((event.owner.as_str(), event.revision), ("growth", 1));
    assert_status(
        fraud
            .create_event(&new_event("user_signed_up", Classification::Public))
            .await,
        409,
        "already exists",
    );
    assert_status(
        auditor
            .create_event(&new_event("audited", Classification::Public))
            .await,
        403,
        "auditors",
    );
    for bad in [
        "",
        "Upper",
        "my table",
        "../escape",
        "你好",
        "a/b",
        &"x".repeat(129),
    ] {
        assert_status(
            growth
                .create_event(&new_event(bad, Classification::Public))
                .await,
            400,
            "event name",
        );
    }

    // Only admins register on behalf of others.
    let mut on_behalf = new_event("card_swiped", Classification::Internal);
    on_behalf.owner = Some("growth".to_owned());
    assert_status(fraud.create_event(&on_behalf).await, 403, "only admins");
    assert_eq!(
        server
            .admin
            .create_event(&on_behalf)
            .await
            .expect("admin creates")
            .owner,
        "growth"
    );

    let update = |revision| UpdateEvent {
        classification: Classification::Pii,
        description: "Changed.".to_owned(),
        revision,
    };
    assert_status(
        fraud.update_event("user_signed_up", &update(None)).await,
        403,
        "owner",
    );
    let updated = growth
        .update_event("user_signed_up", &update(Some(1)))
        .await
        .expect("owner updates");
    assert_eq!(
        (updated.revision, updated.description.as_str()),
        (2, "Changed.")
    );
    // A stale revision is refused and changes nothing.
    let stale = UpdateEvent {
        classification: Classification::Public,
        description: "Stale.".to_owned(),
        revision: Some(1),
    };
    assert_status(
        growth.update_event("user_signed_up", &stale).await,
        409,
        "revision 2, not 1",
    );
    assert_eq!(
        growth.get_event("user_signed_up").await.expect("get"),
        Some(updated)
    );
    assert_eq!(growth.get_event("nope").await.expect("get"), None);

    // An event with an active grant cannot be deleted; without one it can.
    growth
        .create_grant(&CreateGrant {
            event: "card_swiped".to_owned(),
            grantee: "fraud".to_owned(),
            reason: "Scoring.".to_owned(),
            expires_at: None,
            ..Default::default()
        })
        .await
        .expect("grant");
    assert_status(
        growth.delete_event("card_swiped").await,
        409,
        "active grants",
    );
    assert_status(fraud.delete_event("user_signed_up").await, 403, "owner");
    growth.delete_event("user_signed_up").await.expect("delete");
    assert_eq!(growth.get_event("user_signed_up").await.expect("get"), None);
}

async fn grants(db: Db) {
    let Some(server) = TestServer::start(db).await else {
        return;
    };
    let growth = server.principal("growth", Role::Member).await;
    let fraud = server.principal("fraud", Role::Member).await;
    server.principal("ads", Role::Member).await;
    growth
        .create_event(&new_event("user_signed_up", Classification::Pii))
        .await
        .expect("event");
    growth
        .create_event(&new_event("page_viewed", Classification::Public))
        .await
        .expect("event");
    let now = Utc::now();
    let grant = |event: &str, grantee: &str, reason: &str, expires_at| CreateGrant {
        event: event.to_owned(),
        grantee: grantee.to_owned(),
        reason: reason.to_owned(),
        expires_at,
        ..Default::default()
    };

    assert_status(
        fraud
            .create_grant(&grant(
                "user_signed_up",
                "fraud",
                "Mine now.",
                Some(now + Duration::days(30)),
            ))
            .await,
        403,
        "owner",
    );
    assert_status(
        growth
            .create_grant(&grant("user_signed_up", "fraud", "Scoring.", None))
            .await,
        400,
        "expires_at is required",
    );
    assert_status(
        growth
            .create_grant(&grant(
                "user_signed_up",
                "fraud",
                "Scoring.",
                Some(now + Duration::days(366)),
            ))
            .await,
        400,
        "more than 365 days",
    );
    assert_status(
        growth
            .create_grant(&grant(
                "user_signed_up",
                "fraud",
                "Scoring.",
                Some(now - Duration::days(1)),
            ))
            .await,
        400,
        "not in the future",
    );
    assert_status(
        growth
            .create_grant(&grant(
                "user_signed_up",
                "fraud",
                "  ",
                Some(now + Duration::days(30)),
            ))
            .await,
        400,
        "reason",
    );
    assert_status(
        growth
            .create_grant(&grant(
                "user_signed_up",
                "ghost",
                "Scoring.",
                Some(now + Duration::days(30)),
            ))
            .await,
        400,
        "not a known principal",
    );
    assert_status(
        growth
            .create_grant(&grant("nope", "fraud", "Scoring.", None))
            .await,
        404,
        "does not exist",
    );
    assert_status(
        growth
            .create_grant(&grant("page_viewed", "growth", "Self.", None))
            .await,
        400,
        "owns event",
    );

    let granted = growth
        .create_grant(&grant(
            "user_signed_up",
            "fraud",
            "Scoring.",
            Some(now + Duration::days(30)),
        ))
        .await
        .expect("grant");
    assert_eq!(
        (granted.granted_by.as_str(), granted.status),
        ("growth", GrantStatus::Active)
    );
    assert_status(
        growth
            .create_grant(&grant(
                "user_signed_up",
                "fraud",
                "Again.",
                Some(now + Duration::days(30)),
            ))
            .await,
        409,
        "already gives",
    );
    // Public events need no expiry; admins may grant on anyone's event.
    let open = server
        .admin
        .create_grant(&grant("page_viewed", "ads", "Attribution.", None))
        .await
        .expect("admin grants");
    assert_eq!(open.granted_by, "admin");

    // Visibility: the grantee and the owner see a grant, others don't.
    assert_eq!(
        fraud.get_grant(&granted.id).await.expect("grantee sees"),
        Some(granted.clone())
    );
    let ads = server.principal("ads", Role::Member).await;
    assert_status(ads.get_grant(&granted.id).await, 403, "visible to");
    assert_eq!(ads.list_grants(None, None).await.expect("list").len(), 1);
    assert_eq!(
        growth
            .list_grants(Some("user_signed_up"), None)
            .await
            .expect("list"),
        vec![granted.clone()]
    );

    // Update: reason and expiry in place, stale revision refused.
    let update = UpdateGrant {
        reason: "Fraud scoring at signup.".to_owned(),
        expires_at: Some(now + Duration::days(60)),
        revision: Some(1),
        ..Default::default()
    };
    let updated = growth
        .update_grant(&granted.id, &update)
        .await
        .expect("update");
    assert_eq!(
        (updated.revision, updated.reason.as_str()),
        (2, "Fraud scoring at signup.")
    );
    assert_status(
        growth.update_grant(&granted.id, &update).await,
        409,
        "revision 2, not 1",
    );
    assert_status(
        fraud
            .update_grant(
                &granted.id,
                &UpdateGrant {
                    revision: None,
                    ..update.clone()
                },
            )
            .await,
        403,
        "owner",
    );

    // Expiry: the grant stays listed, as expired, and gives no access.
    server
        .cp
        .clock()
        .advance(std::time::Duration::from_secs(61 * 86_400));
    let expired = growth
        .get_grant(&granted.id)
        .await
        .expect("get")
        .expect("still listed");
    assert_eq!(expired.status, GrantStatus::Expired);
    let verdict = fraud
        .check_subscription(&CheckSubscription {
            stream: "fraud-signals".to_owned(),
            events: vec!["user_signed_up".to_owned()],
            ..Default::default()
        })
        .await
        .expect("check");
    assert_eq!(
        verdict
            .problems
            .iter()
            .map(|p| p.reason)
            .collect::<Vec<_>>(),
        [DenialReason::GrantExpired]
    );

    // Revocation: immediate, idempotent, still listed.
    assert_status(ads.revoke_grant(&open.id).await, 403, "owner");
    let revoked = growth
        .revoke_grant(&open.id)
        .await
        .expect("owner revokes an admin's grant");
    assert_eq!(
        (revoked.status, revoked.revoked_by.as_deref()),
        (GrantStatus::Revoked, Some("growth"))
    );
    assert_eq!(
        growth.revoke_grant(&open.id).await.expect("again").revision,
        revoked.revision
    );
    assert_eq!(
        ads.list_grants(None, None).await.expect("list")[0].status,
        GrantStatus::Revoked
    );
    assert_status(
        growth
            .update_grant(
                &open.id,
                &UpdateGrant {
                    reason: "x".to_owned(),
                    expires_at: None,
                    revision: None,
                    ..Default::default()
                },
            )
            .await,
        409,
        "revoked",
    );
}
