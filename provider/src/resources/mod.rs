//! One module per resource type, each a [`Resource`]: schema, validation, plan-time checks and
//! CRUD through `api::Client`.

mod event;
mod grant;
mod stream;
mod subscription;

use std::collections::HashMap;
use std::sync::Arc;

use api::{Client, ClientError};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

use crate::diag::Diags;
use crate::schema::Schema;
use crate::value::{Obj, Value};

pub use event::{
    EventResource, data_source_schema as event_data_source_schema, state_of as event_state,
};
pub use grant::{GrantResource, access_entry as grant_access_entry};
pub use stream::StreamResource;
pub use subscription::SubscriptionResource;

/// Everything a request handler may use: the configured client, the per-process caches and what
/// this plan is about to create.
pub struct Ctx {
    client: Result<Client, String>,
    /// Grants ending within this window warn in every plan (`expiry_warning_days`).
    pub expiry_warning: chrono::Duration,
    pub cache: Cache,
    pub pending: Pending,
}

/// `expiry_warning_days` when the provider block does not set it.
pub const DEFAULT_EXPIRY_WARNING_DAYS: i64 = 14;

/// Objects this plan creates before the subscriptions that reference them. Terraform plans a
/// referenced resource first, in the same provider process, so a subscription's plan-time access
/// check can tell "refused" from "allowed once the apply has created the event or grant".
#[derive(Default)]
pub struct Pending {
    events: std::sync::Mutex<std::collections::HashSet<String>>,
    grants: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl Pending {
    pub fn add_event(&self, name: &str) {
        if let Ok(mut events) = self.events.lock() {
            events.insert(name.to_owned());
        }
    }

    pub fn add_grant(&self, event: &str, grantee: &str) {
        if let Ok(mut grants) = self.grants.lock() {
            grants.insert((event.to_owned(), grantee.to_owned()));
        }
    }

    pub fn has_event(&self, name: &str) -> bool {
        self.events.lock().is_ok_and(|e| e.contains(name))
    }

    pub fn has_grant(&self, event: &str, grantee: &str) -> bool {
        self.grants
            .lock()
            .is_ok_and(|g| g.contains(&(event.to_owned(), grantee.to_owned())))
    }
}

impl Ctx {
    pub fn unconfigured() -> Ctx {
        Ctx::new(
            Err("the provider has not been configured yet".to_owned()),
            DEFAULT_EXPIRY_WARNING_DAYS,
        )
    }

    pub fn new(client: Result<Client, String>, expiry_warning_days: i64) -> Ctx {
        Ctx {
            client,
            expiry_warning: chrono::Duration::days(expiry_warning_days),
            cache: Cache::default(),
            pending: Pending::default(),
        }
    }

    /// The client, or an error diagnostic saying why there is none.
    pub fn client(&self, diags: &mut Diags) -> Option<&Client> {
        match &self.client {
            Ok(client) => Some(client),
            Err(why) => {
                diags.error("The Fanner provider is not configured", why.clone());
                None
            }
        }
    }

    pub fn is_configured(&self) -> bool {
        self.client.is_ok()
    }
}

/// List results, fetched once per provider process on the first read of a kind and served from
/// memory after that: a plan over a thousand subscriptions makes one list call, not a thousand
/// gets. Terraform starts a fresh provider process for every command, so a cache never outlives
/// the plan or apply it serves; every write in this process clears it anyway.
#[derive(Default)]
pub struct Cache {
    pub events: ListCache<api::Event>,
    pub grants: ListCache<api::Grant>,
    pub streams: ListCache<api::Stream>,
    pub subscriptions: ListCache<api::Subscription>,
    /// Plan-time access verdicts by (stream, sorted events): many subscriptions of one stream
    /// to the same events need one check, not one each.
    pub verdicts: Verdicts,
    /// Set by the first write: the process is applying, and re-listing after every write just
    /// to repeat warnings the plan showed would make an apply quadratic.
    written: std::sync::atomic::AtomicBool,
}

type VerdictCell = Arc<tokio::sync::OnceCell<api::AccessVerdict>>;

#[derive(Default)]
pub struct Verdicts {
    cells: std::sync::Mutex<HashMap<(String, Vec<String>), VerdictCell>>,
}

impl Verdicts {
    /// The verdict for `stream` and `events`, asking the API once per distinct pair (a failed
    /// call is not remembered).
    pub async fn check(
        &self,
        client: &Client,
        stream: &str,
        events: &[String],
    ) -> Result<api::AccessVerdict, ClientError> {
        let mut events = events.to_vec();
        events.sort();
        events.dedup();
        let cell = match self.cells.lock() {
            Ok(mut cells) => cells
                .entry((stream.to_owned(), events.clone()))
                .or_default()
                .clone(),
            Err(_) => VerdictCell::default(),
        };
        let body = api::CheckSubscription {
            stream: stream.to_owned(),
            events,
            ..Default::default()
        };
        let verdict = cell
            .get_or_try_init(|| client.check_subscription(&body))
            .await?;
        Ok(verdict.clone())
    }

    pub fn clear(&self) {
        if let Ok(mut cells) = self.cells.lock() {
            cells.clear();
        }
    }
}

impl Cache {
    pub fn has_written(&self) -> bool {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn invalidate(&self) {
        self.written
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.events.invalidate().await;
        self.grants.invalidate().await;
        self.streams.invalidate().await;
        self.subscriptions.invalidate().await;
        self.verdicts.clear();
    }
}

pub struct ListCache<T> {
    entries: tokio::sync::Mutex<Option<Arc<HashMap<String, T>>>>,
}

impl<T> Default for ListCache<T> {
    fn default() -> Self {
        ListCache {
            entries: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone> ListCache<T> {
    /// The cached entry for `key`, listing everything with `list` first if nothing is cached.
    /// Concurrent callers wait for the one list call instead of making their own.
    pub async fn lookup<Fut>(
        &self,
        key: &str,
        list: impl FnOnce() -> Fut,
        key_of: impl Fn(&T) -> String,
    ) -> Result<Option<T>, ClientError>
    where
        Fut: Future<Output = Result<Vec<T>, ClientError>>,
    {
        Ok(self.all(list, key_of).await?.get(key).cloned())
    }

    /// Every cached entry by key, listing first if nothing is cached.
    pub async fn all<Fut>(
        &self,
        list: impl FnOnce() -> Fut,
        key_of: impl Fn(&T) -> String,
    ) -> Result<Arc<HashMap<String, T>>, ClientError>
    where
        Fut: Future<Output = Result<Vec<T>, ClientError>>,
    {
        let mut entries = self.entries.lock().await;
        Ok(match &*entries {
            Some(map) => map.clone(),
            None => {
                let items = list().await?;
                tracing::debug!(count = items.len(), "Listed objects for the read cache.");
                let map: Arc<HashMap<String, T>> =
                    Arc::new(items.into_iter().map(|t| (key_of(&t), t)).collect());
                *entries = Some(map.clone());
                map
            }
        })
    }

    pub async fn invalidate(&self) {
        *self.entries.lock().await = None;
    }
}

/// Reads one object: from the list cache, falling back to a direct get on a miss (an object the
/// list did not show may still exist, e.g. one created after the list was made).
pub async fn cached_get<T, ListFut, GetFut>(
    cache: &ListCache<T>,
    key: &str,
    list: impl FnOnce() -> ListFut,
    key_of: impl Fn(&T) -> String,
    get: impl FnOnce() -> GetFut,
) -> Result<Option<T>, ClientError>
where
    T: Clone,
    ListFut: Future<Output = Result<Vec<T>, ClientError>>,
    GetFut: Future<Output = Result<Option<T>, ClientError>>,
{
    match cache.lookup(key, list, key_of).await? {
        Some(found) => Ok(Some(found)),
        None => get().await,
    }
}

#[tonic::async_trait]
pub trait Resource: Send + Sync {
    fn type_name(&self) -> &'static str;
    fn schema(&self) -> &Schema;
    /// Checks what can be checked without the API (names, ranges, formats).
    fn validate(&self, config: &Obj, diags: &mut Diags);
    /// Resource-specific planning after the generic rules: values known ahead, plan-time checks.
    async fn adjust_plan(
        &self,
        _ctx: &Ctx,
        _prior: Option<&Obj>,
        _planned: &mut Obj,
        _diags: &mut Diags,
    ) {
    }
    /// `None` when the object no longer exists.
    async fn read(&self, ctx: &Ctx, state: &Obj, diags: &mut Diags) -> Option<Obj>;
    async fn create(&self, ctx: &Ctx, planned: &Obj, diags: &mut Diags) -> Option<Obj>;
    async fn update(&self, ctx: &Ctx, prior: &Obj, planned: &Obj, diags: &mut Diags)
    -> Option<Obj>;
    async fn delete(&self, ctx: &Ctx, prior: &Obj, diags: &mut Diags);
    /// What `terraform import` takes as the ID, for messages.
    fn import_id_kind(&self) -> &'static str;
    /// The one identity attribute (`import { identity = { ... } }`, `terraform query`): it
    /// holds the same value as the state's `id`.
    fn identity_attr(&self) -> &'static str;
    /// The filters of a `list` block in a `.tfquery.hcl` file.
    fn list_schema(&self) -> &Schema;
    /// Checks a list block's filters without the API.
    fn validate_list(&self, config: &Obj, diags: &mut Diags);
    /// The state of every object the filters in `config` match, in a stable order.
    async fn list(&self, ctx: &Ctx, config: &Obj, diags: &mut Diags) -> Vec<Obj>;
    /// Warnings every plan repeats while they hold, also when nothing changes (expiring access).
    async fn plan_warnings(&self, _ctx: &Ctx, _planned: &Obj, _diags: &mut Diags) {}
}

pub fn all() -> Vec<Box<dyn Resource>> {
    vec![
        Box::new(EventResource),
        Box::new(GrantResource),
        Box::new(StreamResource),
        Box::new(SubscriptionResource),
    ]
}

/// Timestamps at millisecond precision: the store keeps milliseconds while a write's response
/// may carry nanoseconds, and the state must not change between the apply and the next read.
pub fn time(t: &DateTime<Utc>) -> Value {
    Value::String(
        t.trunc_subsecs(3)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

/// The state's text for a value the API spells its own way (instants in UTC at millisecond
/// precision): `written`, from the configuration or the prior state, when it names the same
/// value, so `+02:00` offsets or fractional digits never show as a diff; else the API's text.
pub fn kept_text(written: Option<&str>, same: impl Fn(&str) -> bool, api: Value) -> Value {
    match written {
        Some(text) if same(text) => Value::string(text),
        _ => api,
    }
}

/// An instant at the precision the control plane stores.
pub fn stored(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(3)
}

pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{s:?} is not an RFC 3339 timestamp like \"2027-06-30T00:00:00Z\": {e}")
        })
}

/// When access ending at `at` deserves a plan warning: within `ctx.expiry_warning` (or past).
pub fn ends_soon(ctx: &Ctx, at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    at <= now + ctx.expiry_warning
}

/// "on 2026-12-09 (2026-12-09T12:00:00Z), in 6 days", for expiry warnings.
pub fn when(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let days = (at - now).num_days();
    let relative = match days {
        _ if at <= now => "already passed".to_owned(),
        0 => "within a day".to_owned(),
        1 => "in 1 day".to_owned(),
        n => format!("in {n} days"),
    };
    format!(
        "on {} ({}), {relative}",
        at.format("%Y-%m-%d"),
        at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

/// Whether `value` passes the optional filter `attr` of a list block (an unset filter passes all).
pub fn passes(config: &Obj, attr: &str, value: &str) -> bool {
    config.str(attr).is_none_or(|wanted| wanted == value)
}

/// A list block filter: an optional string.
pub fn filter(name: &'static str, description: &'static str) -> crate::schema::Attr {
    crate::schema::Attr::optional(name, crate::schema::Ty::String, description)
}

/// Runs `check` on a string attribute when its value is known.
pub fn check_str(
    config: &Obj,
    attr: &str,
    diags: &mut Diags,
    check: impl FnOnce(&str) -> Result<(), String>,
) {
    if let Some(value) = config.str(attr)
        && let Err(problem) = check(value)
    {
        diags.error_at(attr, format!("Invalid {attr}"), problem);
    }
}

/// Runs `check` on a whole-number attribute when its value is known.
pub fn check_u32(
    config: &Obj,
    attr: &str,
    diags: &mut Diags,
    check: impl FnOnce(u32) -> Result<(), String>,
) {
    let value = config.get(attr);
    if !value.is_wholly_known() || value.is_null() {
        return;
    }
    let problem = match value.as_i64().map(u32::try_from) {
        Some(Ok(n)) => check(n).err(),
        _ => Some(format!("{attr} must be a whole number, got {value:?}")),
    };
    if let Some(problem) = problem {
        diags.error_at(attr, format!("Invalid {attr}"), problem);
    }
}

/// A known string attribute the resource cannot do without, or an error naming it.
pub fn required_str<'a>(obj: &'a Obj, attr: &str, diags: &mut Diags) -> Option<&'a str> {
    let value = obj.str(attr);
    if value.is_none() {
        diags.error_at(
            attr,
            format!("Missing {attr}"),
            format!(
                "{attr} must be known at this point, got {:?}",
                obj.get(attr)
            ),
        );
    }
    value
}

pub fn u32_of(obj: &Obj, attr: &str, default: u32) -> u32 {
    obj.get(attr)
        .as_i64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_stable_across_precisions() {
        #[track_caller]
        fn check(input: &str, expected: &str) {
            let t = parse_time(input).expect("valid");
            assert_eq!(time(&t), Value::string(expected));
        }
        check("2026-11-22T03:49:53.213801962Z", "2026-11-22T03:49:53.213Z");
        check("2026-11-22T03:49:53.213Z", "2026-11-22T03:49:53.213Z");
        check("2026-11-22T03:49:53Z", "2026-11-22T03:49:53Z");
        check("2026-11-22T05:49:53+02:00", "2026-11-22T03:49:53Z");
    }

    #[tokio::test]
    async fn the_list_cache_lists_once() {
        let cache: ListCache<String> = ListCache::default();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        for key in ["a", "b", "missing"] {
            let found = cache
                .lookup(
                    key,
                    || async {
                        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(vec!["a".to_owned(), "b".to_owned()])
                    },
                    Clone::clone,
                )
                .await
                .expect("no error");
            assert_eq!(found.as_deref(), (key != "missing").then_some(key));
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        cache.invalidate().await;
        let _ = cache
            .lookup(
                "a",
                || async {
                    calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok(Vec::new())
                },
                Clone::clone,
            )
            .await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
