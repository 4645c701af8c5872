//! The HTTP client for Graph and ARM: one connection pool and token provider per app, and per API a base
//! URL, a token scope, a throttle [`Budget`], a concurrency bound and statistics.
//!
//! Invariants: every request takes its estimated cost from the budget before it is sent and holds a
//! concurrency permit while in flight (never while sleeping) — a client made by [`Client::urgent`] takes
//! its permits from a separate, smaller pool, so that the pages of a chain (each page's next link is in the
//! previous one) never queue behind hundreds of independent requests; only GETs (and `$batch` of GETs) are retried
//! blindly — a write is resent only when it certainly did not apply (429, 401, no connection), otherwise
//! [`Client::write`] answers [`Written::Unconfirmed`] and the caller reads back;
//! `@odata.nextLink` / `nextLink` are followed verbatim with the same headers; a 401 refreshes the token
//! and retries; errors become [`Error`] variants that say what to do.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::auth::{Credential, TokenProvider};
use crate::budget::{Budget, graph_cost};
use crate::cloud::Endpoints;
use crate::error::{Error, Result, graph_permission_for, graph_write_permission_for};
use crate::retry::{RetryPolicy, backoff};

/// Which API a client talks to (decides costs, budgets and error shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Microsoft Graph.
    Graph,
    /// Azure Resource Manager.
    Arm,
}

/// How to reach Microsoft (or an emulator) as one app.
#[derive(Debug, Clone)]
pub struct Config {
    /// Hosts and scopes.
    pub endpoints: Endpoints,
    /// Tenant id or domain.
    pub tenant: String,
    /// The app's client id.
    pub client_id: String,
    /// Secret or certificate.
    pub credential: Credential,
    /// An extra CA certificate (PEM) to trust, e.g. an emulator's or a TLS-inspecting proxy's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Requests in flight at most, per API.
    pub concurrency: usize,
    /// Timeout of one request.
    pub timeout: Duration,
    /// Retry patience.
    pub retry: RetryPolicy,
}

impl Config {
    /// Defaults for everything but who and where.
    pub fn new(endpoints: Endpoints, tenant: &str, client_id: &str, credential: Credential) -> Config {
        Config {
            endpoints,
            tenant: tenant.to_owned(),
            client_id: client_id.to_owned(),
            credential,
            ca_file: None,
            concurrency: 32,
            timeout: Duration::from_secs(90),
            retry: RetryPolicy::default(),
        }
    }
}

/// Request counters of one API client.
#[derive(Debug, Default)]
pub struct Stats {
    /// HTTP requests sent (a `$batch` counts once).
    pub requests: AtomicU64,
    /// Requests inside `$batch` calls.
    pub batched: AtomicU64,
    /// 429 answers (outer and inner).
    pub throttled: AtomicU64,
    /// Retries after transient failures.
    pub retries: AtomicU64,
    /// Resource units the service reported (`x-ms-resource-unit`).
    pub resource_units: AtomicU64,
    /// Requests waiting for the throttle budget now.
    pub waiting: AtomicU64,
}

/// Counts one while alive (also when the future holding it is dropped).
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(g: &'a AtomicU64) -> Gauge<'a> {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// HTTP requests sent.
    pub requests: u64,
    /// Requests inside `$batch` calls.
    pub batched: u64,
    /// 429 answers.
    pub throttled: u64,
    /// Retries after transient failures.
    pub retries: u64,
    /// Resource units reported by the service.
    pub resource_units: u64,
}

/// One page of a collection.
#[derive(Debug, Clone, Default)]
pub struct ODataPage {
    /// `value`.
    pub items: Vec<Value>,
    /// `@odata.nextLink` (Graph) or `nextLink` (ARM), verbatim.
    pub next_link: Option<String>,
    /// `@odata.deltaLink` (delta queries).
    pub delta_link: Option<String>,
}

/// The HTTP method of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    /// `POST`.
    Post,
    /// `PATCH`.
    Patch,
    /// `PUT` (ARM creates by name: resending the same PUT is safe, the caller may resend an unconfirmed one).
    Put,
    /// `DELETE`.
    Delete,
}

impl WriteMethod {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Post => "POST",
            WriteMethod::Patch => "PATCH",
            WriteMethod::Put => "PUT",
            WriteMethod::Delete => "DELETE",
        }
    }
}

/// What is known after one write.
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    /// The service answered 2xx: applied (the body, or `Null` when empty or cut off).
    Done(Value),
    /// The request may or may not have applied (reset, timeout, 5xx after sending): read back to know.
    Unconfirmed(String),
}

/// Builds HTTP clients for one app: shared connection pool and token cache.
#[derive(Debug, Clone)]
pub struct Microsoft {
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    cfg: Arc<Config>,
}

impl Microsoft {
    /// Checks the configuration and builds the shared HTTP client (no request is made).
    pub fn new(cfg: Config) -> Result<Microsoft> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(cfg.concurrency.max(1) * 2)
            .user_agent(concat!("steward/", env!("CARGO_PKG_VERSION")));
        let mut extra = None;
        if let Some(p) = &cfg.ca_file {
            extra = Some(load_ca(p)?);
        }
        if let Some(certs) = &extra {
            b = b.tls_certs_merge(certs.clone());
        }
        let http = match b.build() {
            Ok(h) => h,
            Err(_) if extra.is_some() => {
                // Some verifiers cannot merge extra roots with the platform's: trust the file's only.
                reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(Duration::from_secs(15))
                    .pool_max_idle_per_host(cfg.concurrency.max(1) * 2)
                    .tls_certs_only(extra.unwrap_or_default())
                    .build()
                    .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?
            }
            Err(e) => return Err(Error::Config(format!("cannot build the HTTP client: {e}"))),
        };
        let tokens = TokenProvider::new(
            http.clone(),
            &cfg.endpoints.login,
            &cfg.tenant,
            &cfg.client_id,
            cfg.credential.clone(),
        )?;
        Ok(Microsoft {
            http,
            tokens: Arc::new(tokens),
            cfg: Arc::new(cfg),
        })
    }

    /// A Graph client (budget sized for a small tenant until [`Client::set_tenant_users`]).
    pub fn graph(&self) -> Client {
        self.client(
            Api::Graph,
            self.cfg.endpoints.graph.clone(),
            self.cfg.endpoints.cloud.graph_scope(),
            Budget::graph_for_users(0),
        )
    }

    /// An ARM client (250 reads, 25 per second).
    pub fn arm(&self) -> Client {
        self.client(
            Api::Arm,
            self.cfg.endpoints.arm.clone(),
            self.cfg.endpoints.cloud.arm_scope(),
            Budget::new(250.0, 25.0),
        )
    }

    /// The token provider (tokens fetched, tests).
    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    fn client(&self, api: Api, base: String, scope: String, budget: Budget) -> Client {
        let writes = shared_writes(api, &base, &self.cfg.tenant, &self.cfg.client_id);
        Client {
            inner: Arc::new(Inner {
                api,
                http: self.http.clone(),
                tokens: self.tokens.clone(),
                base,
                scope,
                budget,
                writes,
                sem: Semaphore::new(self.cfg.concurrency.max(1)),
                sem_size: self.cfg.concurrency.max(1),
                lane: Semaphore::new(urgent_permits(self.cfg.concurrency)),
                stats: Stats::default(),
                retry: self.cfg.retry,
            }),
            urgent: false,
        }
    }
}

/// Permits of the urgent lane for a client of `concurrency` permits: a third, at least 4.
fn urgent_permits(concurrency: usize) -> usize {
    (concurrency / 3).max(4)
}

fn load_ca(p: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(p)
        .map_err(|e| Error::Config(format!("cannot read the CA file {}: {e}", p.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        Error::Config(format!(
            "the CA file {} holds no PEM certificate: {e}",
            p.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "the CA file {} holds no PEM certificate",
            p.display()
        )));
    }
    Ok(certs)
}

struct Inner {
    api: Api,
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    base: String,
    scope: String,
    budget: Budget,
    /// The write limit: Graph's 3,000 writes per 150 s per app and tenant (specs §3); ARM's writes
    /// bucket of 200, refilled 10 per second (specs §6). Shared by every client of the same app, tenant and
    /// endpoint in the process ([`shared_writes`]).
    writes: Arc<Budget>,
    sem: Semaphore,
    /// Permits of `sem`.
    sem_size: usize,
    /// Permits of urgent clients ([`Client::urgent`]).
    lane: Semaphore,
    stats: Stats,
    retry: RetryPolicy,
}

/// The write budget of one app in one tenant at one endpoint, shared by every client of the process: the
/// service counts writes per app and tenant, so a client built anew (a worker that renews its connector
/// client, a second connector on the same app) must not start again from a full bucket.
fn shared_writes(api: Api, base: &str, tenant: &str, client_id: &str) -> Arc<Budget> {
    static ALL: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Arc<Budget>>>> =
        std::sync::LazyLock::new(Default::default);
    let key = format!(
        "{api:?} {base} {} {}",
        tenant.to_ascii_lowercase(),
        client_id.to_ascii_lowercase()
    );
    let fresh = || {
        Arc::new(match api {
            Api::Graph => Budget::new(3_000.0, 3_000.0 / 150.0),
            Api::Arm => Budget::new(200.0, 10.0),
        })
    };
    match ALL.lock() {
        Ok(mut m) => Arc::clone(m.entry(key).or_insert_with(fresh)),
        Err(_) => fresh(),
    }
}

/// A client of one API (Graph or ARM). Cheap to clone; clones share budget, permits and statistics.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Takes permits from `Inner::lane` instead of `Inner::sem`.
    urgent: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api", &self.inner.api)
            .field("base", &self.inner.base)
            .finish_non_exhaustive()
    }
}

enum Outcome {
    Done(Value),
    Retry {
        wait: Duration,
        throttled: bool,
        message: String,
    },
    Reauth(crate::secret::Secret),
    Fail(Error),
}

impl Client {
    /// The base URL (no version).
    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// The API.
    pub fn api(&self) -> Api {
        self.inner.api
    }

    /// The throttle budget.
    pub fn budget(&self) -> &Budget {
        &self.inner.budget
    }

    /// Sizes the Graph budget for a tenant of `users` users (specs §3).
    pub fn set_tenant_users(&self, users: u64) {
        let c = crate::budget::graph_capacity(users);
        self.inner.budget.resize(c, c / 10.0);
    }

    /// A clone for the pages of a chain (a listing followed page by page, whose next link is known only
    /// when the previous page is read): same budget, token and statistics, but its own, smaller pool of
    /// permits (a third of the concurrency, at least 4), so that the chain is not slowed by independent
    /// requests queued for the main pool.
    pub fn urgent(&self) -> Client {
        Client {
            inner: self.inner.clone(),
            urgent: true,
        }
    }

    fn permits(&self) -> &Semaphore {
        if self.urgent {
            &self.inner.lane
        } else {
            &self.inner.sem
        }
    }

    /// Requests now (waiting for the throttle budget, in flight on the network), for benchmarks' timelines.
    pub fn gauges(&self) -> (u64, usize) {
        let i = &self.inner;
        let waiting = i.stats.waiting.load(Ordering::Relaxed);
        let main = i.sem_size.saturating_sub(i.sem.available_permits());
        let lane = urgent_permits(i.sem_size).saturating_sub(i.lane.available_permits());
        (waiting, main + lane)
    }

    /// Counters so far.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.inner.stats;
        StatsSnapshot {
            requests: s.requests.load(Ordering::Relaxed),
            batched: s.batched.load(Ordering::Relaxed),
            throttled: s.throttled.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            resource_units: s.resource_units.load(Ordering::Relaxed),
        }
    }

    /// The absolute URL of `path_or_url` (a path such as `/v1.0/users?...`, or an absolute URL kept as is).
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{}", self.inner.base, path_or_url)
        }
    }

    fn path_of<'a>(&self, url: &'a str) -> &'a str {
        match url.find("://") {
            Some(i) => url[i + 3..].find('/').map_or("/", |j| &url[i + 3 + j..]),
            None => url,
        }
    }

    fn cost(&self, path: &str) -> f64 {
        match self.inner.api {
            Api::Graph => graph_cost(path),
            Api::Arm => 1.0,
        }
    }

    /// GETs one JSON document, retrying throttling and transient failures.
    pub async fn get_json(&self, path_or_url: &str, eventual: bool) -> Result<Value> {
        let url = self.url(path_or_url);
        let what = format!("GET {}", self.path_of(&url));
        let (mut transient, mut throttled, mut reauth) = (0u32, 0u32, 0u32);
        loop {
            match self.once(&url, &what, eventual).await {
                Outcome::Done(v) => return Ok(v),
                Outcome::Fail(e) => return Err(e),
                Outcome::Reauth(bad) => {
                    reauth += 1;
                    self.inner.tokens.invalidate(&self.inner.scope, &bad).await;
                    if reauth > 3 {
                        return Err(Error::Http {
                            what,
                            status: 401,
                            code: "InvalidAuthenticationToken".into(),
                            message: "fresh tokens keep being refused".into(),
                        });
                    }
                }
                Outcome::Retry {
                    wait,
                    throttled: t,
                    message,
                } => {
                    if t {
                        throttled += 1;
                        if throttled >= self.inner.retry.throttled_attempts {
                            return Err(Error::Throttled {
                                what,
                                attempts: throttled,
                                retry_after: wait,
                            });
                        }
                    } else {
                        transient += 1;
                        self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                        if transient >= self.inner.retry.transient_attempts {
                            return Err(Error::Transient {
                                what,
                                attempts: transient,
                                message,
                            });
                        }
                        tracing::debug!(%what, attempt = transient, "retrying: {message}");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn once(&self, url: &str, what: &str, eventual: bool) -> Outcome {
        let inner = &self.inner;
        let est = self.cost(self.path_of(url));
        {
            let _waiting = Gauge::up(&inner.stats.waiting);
            inner.budget.acquire(est).await;
        }
        let token = match inner.tokens.token(&inner.scope).await {
            Ok(t) => t,
            Err(e) if e.is_transient() => {
                return Outcome::Retry {
                    wait: backoff(1),
                    throttled: false,
                    message: e.to_string(),
                };
            }
            Err(e) => return Outcome::Fail(e),
        };
        let Ok(_permit) = self.permits().acquire().await else {
            return Outcome::Fail(Error::Config("the client was shut down".into()));
        };
        let mut req = inner.http.get(url).bearer_auth(token.expose());
        if eventual {
            req = req.header("ConsistencyLevel", "eventual");
        }
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    wait: backoff(1),
                    throttled: false,
                    message: format!("request failed: {e}"),
                };
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let hdr = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Some(ru) = hdr("x-ms-resource-unit").and_then(|v| v.parse::<f64>().ok()) {
            inner.stats.resource_units.fetch_add(ru as u64, Ordering::Relaxed);
            inner.budget.reconcile(est, ru);
        }
        if let Some(p) = hdr("x-ms-throttle-limit-percentage").and_then(|v| v.parse::<f64>().ok()) {
            inner.budget.observe_used(if p > 1.0 { p / 100.0 } else { p });
        }
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Retry {
                    wait: backoff(1),
                    throttled: false,
                    message: format!("the answer was cut off: {e}"),
                };
            }
        };
        drop(_permit);
        let retry_after = hdr("retry-after")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(Duration::from_secs_f64);
        if (200..300).contains(&status) {
            if body.is_empty() {
                return Outcome::Done(Value::Null);
            }
            return match serde_json::from_slice::<Value>(&body) {
                Ok(v) => Outcome::Done(v),
                // A plain number or text (e.g. `$count`) is still an answer.
                Err(_) => match std::str::from_utf8(&body).ok().map(str::trim) {
                    Some(t) if t.parse::<f64>().is_ok() => {
                        Outcome::Done(json!(t.parse::<f64>().unwrap_or(0.0)))
                    }
                    _ => Outcome::Retry {
                        wait: backoff(1),
                        throttled: false,
                        message: "the answer is not complete JSON (cut off?)".into(),
                    },
                },
            };
        }
        let (code, message) = error_of(&body);
        match status {
            429 => {
                inner.stats.throttled.fetch_add(1, Ordering::Relaxed);
                let wait = retry_after.unwrap_or(Duration::from_secs(5));
                inner.budget.throttled(wait);
                tracing::debug!(%what, ?wait, "throttled");
                Outcome::Retry {
                    wait: Duration::ZERO,
                    throttled: true,
                    message,
                }
            }
            401 => Outcome::Reauth(token),
            500 | 502 | 503 | 504 => Outcome::Retry {
                wait: retry_after.unwrap_or_else(|| backoff(2)),
                throttled: false,
                message: format!("HTTP {status} {code}: {message}"),
            },
            _ => Outcome::Fail(map_error(self.inner.api, status, code, message, what)),
        }
    }

    /// Sends one write (`POST`, `PATCH`, `PUT` or `DELETE` of `path_or_url`, with an optional JSON body) and says
    /// whether it is known to have applied.
    ///
    /// Writes are not idempotent, so this never resends a request that may have reached the service:
    /// it resends only what certainly did not apply — a 429 (after `Retry-After`), a 401 (with a fresh
    /// token), a connection that could not be opened. A reset, a timeout or a 5xx after the request was
    /// sent give [`Written::Unconfirmed`]: the caller reads back to find out and decides. A 2xx whose body
    /// is cut off is still [`Written::Done`] (with `Value::Null`): the status says it applied.
    pub async fn write(
        &self,
        method: WriteMethod,
        path_or_url: &str,
        body: Option<&Value>,
    ) -> Result<Written> {
        let url = self.url(path_or_url);
        let what = format!("{} {}", method.as_str(), self.path_of(&url));
        let (mut connect, mut throttled, mut reauth) = (0u32, 0u32, 0u32);
        let inner = &self.inner;
        loop {
            // Every write takes one of the app's writes; on Graph also 1 RU plus 1 for the write (specs §3),
            // while ARM counts writes apart from reads (specs §6).
            inner.writes.acquire(1.0).await;
            if inner.api == Api::Graph {
                inner.budget.acquire(2.0).await;
            }
            let token = match inner.tokens.token(&inner.scope).await {
                Ok(t) => t,
                Err(e) if e.is_transient() && connect + 1 < inner.retry.transient_attempts => {
                    connect += 1;
                    tokio::time::sleep(backoff(connect)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let permit = inner.sem.acquire().await;
            if permit.is_err() {
                return Err(Error::Config("the client was shut down".into()));
            }
            let mut req = match method {
                WriteMethod::Post => inner.http.post(&url),
                WriteMethod::Patch => inner.http.patch(&url),
                WriteMethod::Put => inner.http.put(&url),
                WriteMethod::Delete => inner.http.delete(&url),
            }
            .bearer_auth(token.expose());
            if let Some(b) = body {
                req = req.json(b);
            }
            inner.stats.requests.fetch_add(1, Ordering::Relaxed);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if e.is_connect() && connect + 1 < inner.retry.transient_attempts => {
                    // Never reached the service: safe to send again.
                    drop(permit);
                    connect += 1;
                    inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff(connect)).await;
                    continue;
                }
                Err(e) => {
                    return Ok(Written::Unconfirmed(format!("{what}: request failed: {e}")));
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let hdr = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
            if let Some(ru) = hdr("x-ms-resource-unit").and_then(|v| v.parse::<f64>().ok()) {
                inner.stats.resource_units.fetch_add(ru as u64, Ordering::Relaxed);
                inner.budget.reconcile(2.0, ru);
            }
            let bytes = resp.bytes().await;
            drop(permit);
            if (200..300).contains(&status) {
                let v = match &bytes {
                    Ok(b) if !b.is_empty() => serde_json::from_slice(b).unwrap_or(Value::Null),
                    _ => Value::Null,
                };
                return Ok(Written::Done(v));
            }
            let Ok(bytes) = bytes else {
                return Ok(Written::Unconfirmed(format!(
                    "{what}: HTTP {status}, and the answer was cut off"
                )));
            };
            let (code, message) = error_of(&bytes);
            match status {
                429 => {
                    inner.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    let wait = hdr("retry-after")
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(Duration::from_secs_f64)
                        .unwrap_or(Duration::from_secs(5));
                    throttled += 1;
                    if throttled >= inner.retry.throttled_attempts {
                        return Err(Error::Throttled {
                            what,
                            attempts: throttled,
                            retry_after: wait,
                        });
                    }
                    // A 429 is refused before it is applied: wait for the whole client, then resend.
                    inner.budget.throttled(wait);
                    tracing::debug!(%what, ?wait, "write throttled");
                }
                401 => {
                    reauth += 1;
                    inner.tokens.invalidate(&inner.scope, &token).await;
                    if reauth > 3 {
                        return Err(Error::Http {
                            what,
                            status,
                            code: "InvalidAuthenticationToken".into(),
                            message: "fresh tokens keep being refused".into(),
                        });
                    }
                }
                500..=504 => {
                    return Ok(Written::Unconfirmed(format!(
                        "{what}: HTTP {status} {code}: {message}"
                    )));
                }
                _ => return Err(map_error(inner.api, status, code, message, &what)),
            }
        }
    }

    /// GETs one page of a collection.
    pub async fn get_page(&self, path_or_url: &str, eventual: bool) -> Result<ODataPage> {
        let v = self.get_json(path_or_url, eventual).await?;
        Ok(page_of(v))
    }

    /// GETs every page of a collection, following next links verbatim.
    pub async fn get_all(&self, path_or_url: &str, eventual: bool) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut url = path_or_url.to_owned();
        loop {
            let p = self.get_page(&url, eventual).await?;
            out.extend(p.items);
            match p.next_link {
                Some(n) => url = n,
                None => return Ok(out),
            }
        }
    }

    /// GETs many Graph paths (`/v1.0/...`) through `$batch`, 20 per call, calls run concurrently; inner
    /// 429s and 5xx are retried. Returns one result per path, in order.
    pub async fn batch_get(&self, paths: &[String]) -> Vec<Result<Value>> {
        let chunks: Vec<(usize, &[String])> = paths.chunks(20).enumerate().collect();
        let futs = chunks
            .into_iter()
            .map(|(i, c)| async move { (i, self.batch_chunk(c).await) });
        let mut done: Vec<(usize, Vec<Result<Value>>)> = futures::future::join_all(futs).await;
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().flat_map(|(_, v)| v).collect()
    }

    async fn batch_chunk(&self, paths: &[String]) -> Vec<Result<Value>> {
        let mut results: Vec<Option<Result<Value>>> = vec![None; paths.len()];
        let mut attempts = vec![0u32; paths.len()];
        loop {
            let pending: Vec<usize> = (0..paths.len()).filter(|i| results[*i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            let requests: Vec<Value> = pending
                .iter()
                .map(|i| {
                    let p = paths[*i].strip_prefix("/v1.0").unwrap_or(&paths[*i]);
                    json!({"id": i.to_string(), "method": "GET", "url": p})
                })
                .collect();
            // The inner requests are charged individually; the envelope itself is not.
            let est: f64 = pending.iter().map(|i| graph_cost(&paths[*i])).sum();
            self.inner.budget.acquire(est).await;
            self.inner
                .stats
                .batched
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            let answer = self.post_batch(&json!({ "requests": requests })).await;
            let answer = match answer {
                Ok(v) => v,
                Err(e) => {
                    for i in pending {
                        results[i] = Some(Err(e.clone()));
                    }
                    break;
                }
            };
            let mut wait = Duration::ZERO;
            let responses = answer
                .get("responses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for r in responses {
                let Some(i) = r
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|i| *i < paths.len())
                else {
                    continue;
                };
                let status = r.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
                let body = r.get("body").cloned().unwrap_or(Value::Null);
                let what = format!("GET {} ($batch)", paths[i]);
                if (200..300).contains(&status) {
                    results[i] = Some(Ok(body));
                    continue;
                }
                let ra = r
                    .pointer("/headers/Retry-After")
                    .or_else(|| r.pointer("/headers/retry-after"))
                    .and_then(|v| v.as_str().and_then(|s| s.parse::<f64>().ok()).or(v.as_f64()))
                    .map(Duration::from_secs_f64);
                attempts[i] += 1;
                let (code, message) = error_of(body.to_string().as_bytes());
                if status == 429 || (500..=504).contains(&status) {
                    if status == 429 {
                        self.inner.stats.throttled.fetch_add(1, Ordering::Relaxed);
                        let w = ra.unwrap_or(Duration::from_secs(5));
                        self.inner.budget.throttled(w);
                    } else {
                        self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                        wait = wait.max(ra.unwrap_or_else(|| backoff(attempts[i])));
                    }
                    if attempts[i] >= self.inner.retry.throttled_attempts {
                        results[i] = Some(Err(Error::Transient {
                            what,
                            attempts: attempts[i],
                            message,
                        }));
                    }
                    continue;
                }
                results[i] = Some(Err(map_error(Api::Graph, status, code, message, &what)));
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Config("a $batch answer was missing".into()))))
            .collect()
    }

    async fn post_batch(&self, body: &Value) -> Result<Value> {
        let url = format!("{}/v1.0/$batch", self.inner.base);
        let what = "POST /v1.0/$batch".to_owned();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let r = self.post_once(&url, body).await;
            match r {
                Ok(v) => return Ok(v),
                Err((retry, e)) if retry && attempt < self.inner.retry.transient_attempts => {
                    self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%what, attempt, "retrying: {e}");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    async fn post_once(&self, url: &str, body: &Value) -> std::result::Result<Value, (bool, Error)> {
        let inner = &self.inner;
        let transient = |m: String| {
            (
                true,
                Error::Transient {
                    what: "POST /v1.0/$batch".into(),
                    attempts: 1,
                    message: m,
                },
            )
        };
        let token = inner
            .tokens
            .token(&inner.scope)
            .await
            .map_err(|e| (e.is_transient(), e))?;
        let Ok(_permit) = self.permits().acquire().await else {
            return Err((false, Error::Config("the client was shut down".into())));
        };
        inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let resp = inner
            .http
            .post(url)
            .bearer_auth(token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| transient(format!("request failed: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transient(format!("the answer was cut off: {e}")))?;
        if status == 401 {
            inner.tokens.invalidate(&inner.scope, &token).await;
            return Err(transient("the token was refused; refreshed".into()));
        }
        if (500..=504).contains(&status) || status == 429 {
            return Err(transient(format!("HTTP {status}")));
        }
        if !(200..300).contains(&status) {
            let (code, message) = error_of(&bytes);
            return Err((
                false,
                map_error(Api::Graph, status, code, message, "POST /v1.0/$batch"),
            ));
        }
        serde_json::from_slice(&bytes).map_err(|_| transient("the answer is not complete JSON".into()))
    }

    /// Follows a delta query from `start` (a `/v1.0/.../delta?...` path or a saved delta link) through
    /// every page; returns the changes and the new delta link. A 410 / `syncStateNotFound` gives
    /// [`Error::DeltaExpired`]: start again without a token.
    pub async fn delta_all(&self, start: &str) -> Result<(Vec<Value>, String)> {
        let mut out = Vec::new();
        let mut url = start.to_owned();
        loop {
            let p = self.get_page(&url, false).await?;
            out.extend(p.items);
            if let Some(d) = p.delta_link {
                return Ok((out, d));
            }
            match p.next_link {
                Some(n) => url = n,
                None => {
                    return Err(Error::Http {
                        what: format!("GET {start}"),
                        status: 200,
                        code: "NoDeltaLink".into(),
                        message: "the delta query ended without an @odata.deltaLink".into(),
                    });
                }
            }
        }
    }
}

/// Splits a collection answer into items and links.
pub fn page_of(v: Value) -> ODataPage {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let next_link = s("@odata.nextLink").or_else(|| s("nextLink"));
    let delta_link = s("@odata.deltaLink");
    let items = match v {
        Value::Object(mut m) => match m.remove("value") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    ODataPage {
        items,
        next_link,
        delta_link,
    }
}

fn error_of(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.get("error").unwrap_or(&Value::Null);
    let code = e.get("code").and_then(Value::as_str).unwrap_or("").to_owned();
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_else(|| std::str::from_utf8(body).unwrap_or(""))
        .chars()
        .take(500)
        .collect();
    (code, message)
}

fn map_error(api: Api, status: u16, code: String, message: String, what: &str) -> Error {
    let path = what.split_whitespace().nth(1).unwrap_or("");
    match (status, code.as_str()) {
        (403, "Authorization_RequestDenied") | (403, "Forbidden") | (403, "") if api == Api::Graph => {
            let p = if what.starts_with("GET ") {
                graph_permission_for(path)
            } else {
                graph_write_permission_for(path)
            };
            Error::MissingPermission {
                permission: p.to_owned(),
                what: what.to_owned(),
                hint: format!(
                    "grant the Microsoft Graph application permission {p} to the app (Entra admin center → App registrations → API permissions → Add a permission → Microsoft Graph → Application permissions), then grant admin consent. The Entra ID connector reads with: User.Read.All, Group.Read.All (or GroupMember.Read.All), Application.Read.All, RoleManagement.Read.Directory, RoleEligibilitySchedule.Read.Directory, Organization.Read.All, and MailboxSettings.Read with --mailbox-settings"
                ),
            }
        }
        (403, "AuthorizationFailed") if !what.starts_with("GET ") => Error::MissingPermission {
            permission: "Owner or User Access Administrator (Azure RBAC)".into(),
            what: what.to_owned(),
            hint: format!(
                "assign the app Owner or User Access Administrator (Microsoft.Authorization/roleAssignments/write and delete) on that scope or above it; ARM said: {message}"
            ),
        },
        (403, "AuthorizationFailed") => Error::MissingPermission {
            permission: "Reader (Azure RBAC)".into(),
            what: what.to_owned(),
            hint: format!("assign the app the Reader role on the subscription: {message}"),
        },
        (_, "AadPremiumLicenseRequired") => Error::PremiumLicenseRequired { message },
        (410, _) | (_, "syncStateNotFound") | (_, "resyncRequired") => Error::DeltaExpired,
        (404, _) => Error::NotFound {
            what: what.to_owned(),
            message,
        },
        _ => Error::Http {
            what: what.to_owned(),
            status,
            code,
            message,
        },
    }
}
