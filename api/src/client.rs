use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Fanner API at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the Fanner API did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{} (HTTP {status})", detail.message)]
    Api { status: u16, detail: ErrorDetail },
    #[error("unexpected response from the Fanner API: {0}")]
    Decode(String),
    #[error("invalid endpoint {0:?}: it must be an http:// or https:// URL")]
    BadEndpoint(String),
    #[error("invalid CA certificate: {0}")]
    BadCaCert(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The per-event refusals of an access-checked request, if that is why it failed.
    pub fn problems(&self) -> &[AccessProblem] {
        match self {
            ClientError::Api { detail, .. } => &detail.problems,
            _ => &[],
        }
    }
}

/// A typed client for the control-plane API. Cheap to clone; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    timeout: Duration,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::trusting(endpoint, token, None)
    }

    /// A client that also trusts the CA certificate(s) in `ca_pem` (PEM), for a server whose
    /// certificate a private CA signed.
    pub fn trusting(
        endpoint: &str,
        token: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Client, ClientError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ClientError::BadEndpoint(endpoint));
        }
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::BadCaCert(e.to_string()))?;
            if certs.is_empty() {
                return Err(ClientError::BadCaCert("no certificate in it".to_owned()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Unreachable {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            http,
            endpoint,
            token,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.endpoint))
            .timeout(self.timeout);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, ClientError> {
        let response = builder.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            let body: &[u8] = if body.is_empty() { b"null" } else { &body };
            return serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()));
        }
        let detail = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => error.error,
            Err(_) => ErrorDetail {
                code: status.canonical_reason().unwrap_or("error").to_lowercase(),
                message: format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
                problems: Vec::new(),
                request_id: None,
            },
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            detail,
        })
    }

    fn transport_error(&self, error: reqwest::Error) -> ClientError {
        if error.is_timeout() {
            return ClientError::Timeout(self.timeout);
        }
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(Method::GET, path)).await
    }

    async fn get_optional<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, ClientError> {
        match self.get(path).await {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(Method::DELETE, path)).await
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/v1/whoami").await
    }

    pub async fn create_token(&self, body: &CreateToken) -> Result<TokenCreated, ClientError> {
        self.post("/v1/tokens", body).await
    }

    pub async fn list_principals(&self) -> Result<Vec<Principal>, ClientError> {
        self.get("/v1/principals").await
    }

    pub async fn create_event(&self, body: &CreateEvent) -> Result<Event, ClientError> {
        self.post("/v1/events", body).await
    }

    pub async fn get_event(&self, name: &str) -> Result<Option<Event>, ClientError> {
        self.get_optional(&format!("/v1/events/{}", segment(name)))
            .await
    }

    pub async fn list_events(&self) -> Result<Vec<Event>, ClientError> {
        self.get("/v1/events").await
    }

    pub async fn update_event(&self, name: &str, body: &UpdateEvent) -> Result<Event, ClientError> {
        self.put(&format!("/v1/events/{}", segment(name)), body)
            .await
    }

    /// Stores the protobuf message `name`'s payload is.
    pub async fn set_event_schema(
        &self,
        name: &str,
        body: &SetEventSchema,
    ) -> Result<Event, ClientError> {
        self.put(&format!("/v1/events/{}/schema", segment(name)), body)
            .await
    }

    pub async fn delete_event(&self, name: &str) -> Result<Event, ClientError> {
        self.delete(&format!("/v1/events/{}", segment(name))).await
    }

    pub async fn create_grant(&self, body: &CreateGrant) -> Result<Grant, ClientError> {
        self.post("/v1/grants", body).await
    }

    pub async fn get_grant(&self, id: &str) -> Result<Option<Grant>, ClientError> {
        self.get_optional(&format!("/v1/grants/{}", segment(id)))
            .await
    }

    /// Grants, optionally only those on `event` and/or to `grantee`.
    pub async fn list_grants(
        &self,
        event: Option<&str>,
        grantee: Option<&str>,
    ) -> Result<Vec<Grant>, ClientError> {
        let mut query = Vec::new();
        if let Some(event) = event {
            query.push(("event", event));
        }
        if let Some(grantee) = grantee {
            query.push(("grantee", grantee));
        }
        self.send(self.request(Method::GET, "/v1/grants").query(&query))
            .await
    }

    pub async fn update_grant(&self, id: &str, body: &UpdateGrant) -> Result<Grant, ClientError> {
        self.put(&format!("/v1/grants/{}", segment(id)), body).await
    }

    /// Revokes the grant; it stays listed, as revoked.
    pub async fn revoke_grant(&self, id: &str) -> Result<Grant, ClientError> {
        self.delete(&format!("/v1/grants/{}", segment(id))).await
    }

    pub async fn create_stream(&self, body: &CreateStream) -> Result<Stream, ClientError> {
        self.post("/v1/streams", body).await
    }

    pub async fn get_stream(&self, name: &str) -> Result<Option<Stream>, ClientError> {
        self.get_optional(&format!("/v1/streams/{}", segment(name)))
            .await
    }

    pub async fn list_streams(&self) -> Result<Vec<Stream>, ClientError> {
        self.get("/v1/streams").await
    }

    pub async fn update_stream(
        &self,
        name: &str,
        body: &UpdateStream,
    ) -> Result<Stream, ClientError> {
        self.put(&format!("/v1/streams/{}", segment(name)), body)
            .await
    }

    pub async fn delete_stream(&self, name: &str) -> Result<Stream, ClientError> {
        self.delete(&format!("/v1/streams/{}", segment(name))).await
    }

    pub async fn create_subscription(
        &self,
        body: &CreateSubscription,
    ) -> Result<Subscription, ClientError> {
        self.post("/v1/subscriptions", body).await
    }

    pub async fn get_subscription(&self, id: &str) -> Result<Option<Subscription>, ClientError> {
        self.get_optional(&format!("/v1/subscriptions/{}", segment(id)))
            .await
    }

    /// Subscriptions, optionally only those of `stream`.
    pub async fn list_subscriptions(
        &self,
        stream: Option<&str>,
    ) -> Result<Vec<Subscription>, ClientError> {
        let query: Vec<(&str, &str)> = stream.map(|s| ("stream", s)).into_iter().collect();
        self.send(self.request(Method::GET, "/v1/subscriptions").query(&query))
            .await
    }

    pub async fn update_subscription(
        &self,
        id: &str,
        body: &UpdateSubscription,
    ) -> Result<Subscription, ClientError> {
        self.put(&format!("/v1/subscriptions/{}", segment(id)), body)
            .await
    }

    pub async fn delete_subscription(&self, id: &str) -> Result<Subscription, ClientError> {
        self.delete(&format!("/v1/subscriptions/{}", segment(id)))
            .await
    }

    /// Marks a subscription failed (with why) or active again; the data plane's report (admins).
    pub async fn set_subscription_status(
        &self,
        id: &str,
        status: SubscriptionStatus,
        reason: Option<&str>,
    ) -> Result<Subscription, ClientError> {
        let body = serde_json::json!({ "status": status, "reason": reason });
        self.put(&format!("/v1/subscriptions/{}/status", segment(id)), &body)
            .await
    }

    /// Re-delivers a window of history into the subscription's stream.
    pub async fn replay_subscription(
        &self,
        id: &str,
        body: &ReplaySubscription,
    ) -> Result<Hydration, ClientError> {
        self.post(&format!("/v1/subscriptions/{}/replay", segment(id)), body)
            .await
    }

    /// Hydrations and replays the data plane has to work on (admins).
    pub async fn unfinished_hydrations(&self) -> Result<Vec<HydrationTask>, ClientError> {
        self.send(self.request(Method::GET, "/v1/hydrations")).await
    }

    /// The data plane's progress on one GES shard of a hydration (admins).
    pub async fn report_hydration(
        &self,
        id: &str,
        body: &HydrationProgress,
    ) -> Result<Hydration, ClientError> {
        self.post(&format!("/v1/hydrations/{}/progress", segment(id)), body)
            .await
    }

    /// The engine's choice of where live delivery begins on a GES shard (admins).
    pub async fn set_handover(
        &self,
        id: &str,
        body: &SetHandover,
    ) -> Result<Handover, ClientError> {
        self.post(&format!("/v1/hydrations/{}/handover", segment(id)), body)
            .await
    }

    /// The verdict a create or update would get, without writing anything.
    pub async fn check_subscription(
        &self,
        body: &CheckSubscription,
    ) -> Result<AccessVerdict, ClientError> {
        self.post("/v1/subscriptions/check", body).await
    }

    pub async fn access(&self, event: &str) -> Result<AccessView, ClientError> {
        self.get(&format!("/v1/access/{}", segment(event))).await
    }

    /// Sets (`Some`) or clears (`None`) how long `event` may stay silent before it is a gap.
    pub async fn set_max_silence(
        &self,
        event: &str,
        seconds: Option<u64>,
    ) -> Result<SetMaxSilence, ClientError> {
        self.put(
            &format!("/v1/events/{}/max-silence", segment(event)),
            &SetMaxSilence {
                max_silence_seconds: seconds,
            },
        )
        .await
    }

    /// Activity and gaps of every event the caller may see.
    pub async fn event_health(&self) -> Result<Vec<EventHealth>, ClientError> {
        self.get("/v1/health").await
    }

    /// Delivery health of the caller's streams (all streams for admins and auditors).
    pub async fn health_streams(&self) -> Result<Vec<StreamHealth>, ClientError> {
        self.get("/v1/health/streams").await
    }

    /// Events silent for longer than they should be.
    pub async fn health_gaps(&self) -> Result<Vec<EventHealth>, ClientError> {
        self.get("/v1/health/gaps").await
    }

    /// Who can read what: principals × events.
    pub async fn access_matrix(&self) -> Result<AccessMatrix, ClientError> {
        self.get("/v1/access").await
    }

    /// Every grant the caller may see with its use and what needs attention within `days`.
    pub async fn review(&self, days: u32) -> Result<AccessReview, ClientError> {
        self.get(&format!("/v1/review?days={days}")).await
    }

    /// Audit entries after `after_seq` (oldest first), at or after `since`, at most `limit`.
    pub async fn audit_log(
        &self,
        since: Option<DateTime<Utc>>,
        after_seq: Option<i64>,
        limit: Option<u32>,
    ) -> Result<AuditPage, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(since) = since {
            query.push(("since", since.to_rfc3339()));
        }
        if let Some(after) = after_seq {
            query.push(("after_seq", after.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.send(self.request(Method::GET, "/v1/audit").query(&query))
            .await
    }

    pub async fn audit_verify(&self) -> Result<AuditVerification, ClientError> {
        self.get("/v1/audit/verify").await
    }

    /// Long-polls for a route table newer than `after`; returns the current one after `wait`.
    pub async fn routes(
        &self,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<RouteTable, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("wait_ms", wait.as_millis().to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        let request = self
            .request(Method::GET, "/v1/routes")
            .query(&query)
            .timeout(self.timeout + wait);
        self.send(request).await
    }

    pub async fn publish(&self, body: &PublishRequest) -> Result<PublishResponse, ClientError> {
        self.post("/v1/publish", body).await
    }

    /// Streams the records of `stream` to `on_record` (from its start with `from_beginning`,
    /// else only new ones) until `limit` records, until nothing new came for `idle`, or until
    /// `on_record` returns `false`.
    pub async fn tail(
        &self,
        stream: &str,
        from_beginning: bool,
        limit: Option<u64>,
        idle: Option<Duration>,
        mut on_record: impl FnMut(TailRecord) -> bool,
    ) -> Result<(), ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if from_beginning {
            query.push(("from", "beginning".to_owned()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(idle) = idle {
            query.push(("idle_ms", idle.as_millis().to_string()));
        }
        let mut request = self
            .http
            .get(format!(
                "{}/v1/streams/{}/records",
                self.endpoint,
                segment(stream)
            ))
            .query(&query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(|e| self.transport_error(e))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response
                .bytes()
                .await
                .map_err(|e| self.transport_error(e))?;
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(error) => ClientError::Api {
                    status,
                    detail: error.error,
                },
                Err(e) => ClientError::Decode(e.to_string()),
            });
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let record: TailRecord = serde_json::from_slice(&line)
                    .map_err(|e| ClientError::Decode(e.to_string()))?;
                if !on_record(record) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub async fn healthz(&self) -> Result<(), ClientError> {
        self.get_text("/healthz").await.map(|_| ())
    }

    /// The Prometheus text of `/metrics` (operators and benchmarks count API calls with it).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.get_text("/metrics").await
    }

    /// An operator endpoint's plain-text body; anything but 200 is an error.
    async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let response = self
            .request(Method::GET, path)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        if response.status() != StatusCode::OK {
            return Err(ClientError::Decode(format!(
                "{path} answered {}",
                response.status()
            )));
        }
        response.text().await.map_err(|e| self.transport_error(e))
    }
}

/// Percent-encodes one path segment, so a hostile name can never change the route it addresses.
fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_are_encoded() {
        assert_eq!(super::segment("user_signed_up"), "user_signed_up");
        assert_eq!(super::segment("../x"), "..%2Fx");
        assert_eq!(super::segment("a b?c#"), "a%20b%3Fc%23");
    }
}
