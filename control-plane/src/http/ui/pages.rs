use api::{
    AccessMatrix, AccessReview, AccessView, Attention, AuditEntry, AuditVerification,
    CheckSubscription, Event, EventHealth, Reach, ReviewedGrant, Stream, StreamHealth,
    Subscription,
};
use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;

use super::graph::{self, Graph};
use super::{UiError, Viewer, csrf_token, over_tls, render, render_with, session_cookie};
use crate::error::ApiError;
use crate::http::extract::Params;
use crate::http::handlers::DEFAULT_REVIEW_DAYS;
use crate::service::{ControlPlane, SESSION_LIFETIME};
use crate::store::audit;

type Page = Result<Response, UiError>;

/// The most audit entries one page shows.
const AUDIT_PAGE: i64 = 200;

/// What every page's header shows.
struct Nav {
    principal: String,
    role: &'static str,
    sees_everything: bool,
    csrf: String,
}

impl Nav {
    fn of(viewer: &Viewer) -> Nav {
        Nav {
            principal: viewer.ctx.caller.principal.clone(),
            role: viewer.ctx.caller.role.as_str(),
            sees_everything: viewer.ctx.caller.sees_everything(),
            csrf: viewer.csrf(),
        }
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    message: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    message: String,
}

pub(super) fn error_page(status: StatusCode, message: String) -> Response {
    let page = ErrorPage {
        status: status.as_u16(),
        message,
    };
    match render_with(status, &page) {
        Ok(response) => response,
        Err(_) => status.into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct CatalogQuery {
    #[serde(default)]
    q: String,
}

#[derive(Template)]
#[template(path = "catalog.html")]
struct CatalogPage {
    nav: Nav,
    q: String,
    events: Vec<Event>,
    total: usize,
}

/// `/ui/`: the catalog when signed in, else the sign-in form.
pub(super) async fn home(
    State(cp): State<ControlPlane>,
    viewer: Result<Viewer, UiError>,
    Params(query): Params<CatalogQuery>,
) -> Page {
    let viewer = match viewer {
        Ok(viewer) => viewer,
        Err(UiError::SignIn) => return render(&SignInPage { message: None }),
        Err(other) => return Err(other),
    };
    let all = cp.list_events().await?;
    let total = all.len();
    let needle = query.q.trim().to_lowercase();
    let events = all
        .into_iter()
        .filter(|e| {
            needle.is_empty()
                || [
                    e.name.as_str(),
                    e.owner.as_str(),
                    e.classification.as_str(),
                    e.description.as_str(),
                ]
                .iter()
                .any(|field| field.to_lowercase().contains(&needle))
        })
        .collect();
    render(&CatalogPage {
        nav: Nav::of(&viewer),
        q: query.q,
        events,
        total,
    })
}

#[derive(Deserialize)]
pub(super) struct SignIn {
    token: String,
}

pub(super) async fn sign_in(
    State(cp): State<ControlPlane>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<SignIn>,
) -> Page {
    match cp.sign_in(form.token.trim()).await {
        Ok(session) => {
            let cookie = session_cookie(
                &session.id,
                SESSION_LIFETIME.num_seconds(),
                over_tls(&headers, &uri),
            );
            Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response())
        }
        Err(ApiError::Unauthorized) => render_with(
            StatusCode::UNAUTHORIZED,
            &SignInPage {
                message: Some("That token is not valid."),
            },
        ),
        Err(other) => Err(other.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct SignOut {
    csrf: String,
}

pub(super) async fn sign_out(
    State(cp): State<ControlPlane>,
    viewer: Viewer,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<SignOut>,
) -> Page {
    if form.csrf != csrf_token(&viewer.session_id) {
        return Err(ApiError::Forbidden("the form is stale; reload the page".to_owned()).into());
    }
    cp.sign_out(&viewer.session_id).await?;
    let cookie = session_cookie("", 0, over_tls(&headers, &uri));
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui/")).into_response())
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    nav: Nav,
    view: AccessView,
    graph: Graph,
    history: Vec<AuditEntry>,
}

pub(super) async fn event(
    State(cp): State<ControlPlane>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Page {
    let view = cp.access_view(&viewer.ctx, &name).await?;
    let history = cp.grant_history(&viewer.ctx, &name).await?;
    render(&EventPage {
        nav: Nav::of(&viewer),
        graph: graph::access_graph(&view),
        view,
        history,
    })
}

#[derive(Template)]
#[template(path = "stream.html")]
struct StreamPage {
    nav: Nav,
    stream: Stream,
    subscriptions: Vec<Subscription>,
    /// Each event a subscription names, and why it is not delivered (`None`: it is).
    events: Vec<(String, Option<String>)>,
}

pub(super) async fn stream(
    State(cp): State<ControlPlane>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> Page {
    let stream = cp.get_stream(&viewer.ctx, &name).await?;
    let subscriptions = cp.list_subscriptions(&viewer.ctx, Some(&name)).await?;
    let mut named: Vec<String> = subscriptions
        .iter()
        .flat_map(|s| s.events.iter().cloned())
        .collect();
    named.sort();
    named.dedup();
    let verdict = if named.is_empty() {
        None
    } else {
        let check = CheckSubscription {
            stream: stream.name.clone(),
            events: named.clone(),
            ..Default::default()
        };
        Some(cp.check_subscription(&viewer.ctx, check).await?)
    };
    let events = named
        .into_iter()
        .map(|event| {
            let problem = verdict
                .iter()
                .flat_map(|v| &v.problems)
                .find(|p| p.event == event)
                .map(|p| p.message.clone());
            (event, problem)
        })
        .collect();
    render(&StreamPage {
        nav: Nav::of(&viewer),
        stream,
        subscriptions,
        events,
    })
}

#[derive(Template)]
#[template(path = "access.html")]
struct AccessPage {
    nav: Nav,
    matrix: AccessMatrix,
}

pub(super) async fn access(State(cp): State<ControlPlane>, viewer: Viewer) -> Page {
    let matrix = cp.access_matrix(&viewer.ctx).await?;
    render(&AccessPage {
        nav: Nav::of(&viewer),
        matrix,
    })
}

/// The access matrix as CSV: one row per principal, one column per event.
pub(super) async fn access_csv(State(cp): State<ControlPlane>, viewer: Viewer) -> Page {
    let matrix = cp.access_matrix(&viewer.ctx).await?;
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["principal".to_owned()];
    header.extend(matrix.events.iter().map(|e| e.name.clone()));
    let write = |out: &mut csv::Writer<Vec<u8>>, record: &[String]| {
        out.write_record(record)
            .map_err(|e| ApiError::Internal(format!("CSV export failed: {e}")))
    };
    write(&mut out, &header)?;
    for row in &matrix.rows {
        let mut record = vec![row.principal.clone()];
        record.extend(row.reach.iter().map(|r| r.as_str().to_owned()));
        write(&mut out, &record)?;
    }
    let body = out
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("CSV export failed: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"fanner-access.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
pub(super) struct ReviewQuery {
    days: Option<u32>,
}

#[derive(Template)]
#[template(path = "review.html")]
struct ReviewPage {
    nav: Nav,
    review: AccessReview,
}

impl ReviewPage {
    fn needing(&self, attention: &str) -> Vec<&ReviewedGrant> {
        self.review
            .grants
            .iter()
            .filter(|g| g.attention.map(Attention::as_str) == Some(attention))
            .collect()
    }
}

pub(super) async fn review(
    State(cp): State<ControlPlane>,
    viewer: Viewer,
    Params(query): Params<ReviewQuery>,
) -> Page {
    let review = cp
        .access_review(&viewer.ctx, query.days.unwrap_or(DEFAULT_REVIEW_DAYS))
        .await?;
    render(&ReviewPage {
        nav: Nav::of(&viewer),
        review,
    })
}

/// The audit page's filters, as an HTML form sends them (empty fields are empty strings).
#[derive(Deserialize, Default)]
pub(super) struct AuditForm {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    object: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    form: AuditForm,
    entries: Vec<AuditEntry>,
    verification: AuditVerification,
}

fn non_empty(text: &str) -> Option<String> {
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}

/// A form date (`YYYY-MM-DD`): the start of that day, or with `end_of_day` its last millisecond.
fn form_date(field: &str, text: &str, end_of_day: bool) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(text) = non_empty(text) else {
        return Ok(None);
    };
    let day = NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| {
        ApiError::BadRequest(format!(
            "{field} must be a date like 2026-01-31, not {text:?}"
        ))
    })?;
    let time = if end_of_day {
        day.and_hms_milli_opt(23, 59, 59, 999)
    } else {
        day.and_hms_opt(0, 0, 0)
    };
    Ok(time.map(|t| t.and_utc()))
}

pub(super) async fn audit(
    State(cp): State<ControlPlane>,
    viewer: Viewer,
    Params(form): Params<AuditForm>,
) -> Page {
    let filter = audit::Filter {
        actor: non_empty(&form.actor),
        action: non_empty(&form.action),
        object_ids: non_empty(&form.object).into_iter().collect(),
        since: form_date("since", &form.since, false)?,
        until: form_date("until", &form.until, true)?,
        newest: true,
        ..audit::Filter::default()
    };
    let entries = cp.audit_log(&viewer.ctx, &filter, Some(AUDIT_PAGE)).await?;
    let verification = cp.audit_verify(&viewer.ctx).await?;
    render(&AuditPage {
        nav: Nav::of(&viewer),
        form,
        entries,
        verification,
    })
}

#[derive(Template)]
#[template(path = "health.html")]
struct HealthPage {
    nav: Nav,
    health: Vec<EventHealth>,
    streams: Vec<StreamHealth>,
    gaps: usize,
}

pub(super) async fn health(State(cp): State<ControlPlane>, viewer: Viewer) -> Page {
    let health = cp.event_health(&viewer.ctx).await?;
    let streams = cp.stream_health(&viewer.ctx).await?;
    render(&HealthPage {
        nav: Nav::of(&viewer),
        streams,
        gaps: health.iter().filter(|h| h.gap).count(),
        health,
    })
}

/// `Reach` of row `row` on event `i`, as the CSS class and label of its cell.
fn cell(matrix: &AccessMatrix, row: usize, i: usize) -> (&'static str, &'static str) {
    match matrix.rows.get(row).and_then(|r| r.reach.get(i)) {
        Some(Reach::Owner) => ("owner", "owner"),
        Some(Reach::Grant) => ("grant", "grant"),
        _ => ("none", ""),
    }
}

impl AccessPage {
    fn cell(&self, row: &usize, i: &usize) -> (&'static str, &'static str) {
        cell(&self.matrix, *row, *i)
    }
}

/// `at` as the console shows instants.
fn when(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

fn when_opt(at: &Option<DateTime<Utc>>) -> String {
    at.as_ref().map(when).unwrap_or_else(|| "never".to_owned())
}

/// The grantee an audited grant change concerns, from its before/after snapshot.
fn grantee_of(entry: &AuditEntry) -> String {
    entry
        .after
        .as_ref()
        .or(entry.before.as_ref())
        .and_then(|v| v.get("grantee"))
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned()
}
