//! Microsoft Graph (v1.0 and beta), emulated over HTTP.
//!
//! `handle` is the pipeline every request takes — statistics, faults, the token check, throttling,
//! latency, Microsoft's headers — and `exec` is one call's work, shared with `$batch`, which runs each
//! inner request through `exec` with its own throttling. Reads go through `read`, writes through `write`,
//! delta queries through `delta`. Permissions are checked per route against the token's roles.

pub mod churn;
mod delta;
pub mod error;
pub mod filter;
pub mod query;
mod read;
pub mod render;
mod write;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{self, Audience, Claims, TokenError};
use crate::ctx::Sim;
use crate::realism::{FaultKind, Take};
use crate::util::{now, rfc3339};
use error::GraphError;
use query::Query;

pub const ODATA_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// One Graph call, after authentication.
pub struct Call<'a> {
    pub method: Method,
    pub segs: Vec<String>,
    pub raw_query: String,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// `scheme://host` as the client addressed us.
    pub base: String,
    pub version: String,
    pub claims: &'a Claims,
}

impl Call<'_> {
    pub fn need(&self, perms: &[&str]) -> Result<(), GraphError> {
        if self.claims.has_any(perms) {
            Ok(())
        } else {
            Err(GraphError::denied())
        }
    }

    pub fn context(&self, what: &str) -> String {
        format!("{}/{}/$metadata#{what}", self.base, self.version)
    }

    /// `{base}/{version}/{segs…}` — the path a nextLink continues.
    pub fn self_path(&self) -> String {
        let path: Vec<String> = self
            .segs
            .iter()
            .map(|s| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string())
            .collect();
        format!("{}/{}/{}", self.base, self.version, path.join("/"))
            .replace("%24", "$")
            .replace("%2E", ".")
            .replace("%2D", "-")
            .replace("%5F", "_")
    }

    pub fn json_body(&self) -> Result<Value, GraphError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| GraphError::bad_request(format!("Unable to read JSON request payload: {e}")))
    }
}

/// What a call produced.
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Value>,
    /// Items returned (for per-item latency).
    pub items: usize,
}

impl Reply {
    pub fn json(body: Value, items: usize) -> Self {
        Reply {
            status: StatusCode::OK,
            body: Some(body),
            items,
        }
    }

    pub fn created(body: Value) -> Self {
        Reply {
            status: StatusCode::CREATED,
            body: Some(body),
            items: 1,
        }
    }

    pub fn no_content() -> Self {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: None,
            items: 0,
        }
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset-stats", post(reset_stats))
        .route("/_sim/manifest", get(manifest))
        .route("/_sim/tenant", get(tenant_json))
        .fallback(handle)
        .with_state(sim)
}

async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    axum::Json(sim.stats.json()).into_response()
}

async fn reset_stats(State(sim): State<Arc<Sim>>) -> Response {
    sim.stats.reset();
    StatusCode::NO_CONTENT.into_response()
}

async fn manifest(State(sim): State<Arc<Sim>>) -> Response {
    let m = crate::Manifest::of(&sim.read().tenant);
    axum::Json(m).into_response()
}

async fn tenant_json(State(sim): State<Arc<Sim>>) -> Response {
    let body = serde_json::to_vec(&sim.read().tenant).unwrap_or_default();
    ([("content-type", "application/json")], body).into_response()
}

/// The route template for statistics: ids replaced by `{id}`.
pub fn template(segs: &[String]) -> String {
    const WORDS: &[&str] = &[
        "users",
        "groups",
        "servicePrincipals",
        "applications",
        "members",
        "owners",
        "transitiveMembers",
        "memberOf",
        "transitiveMemberOf",
        "appRoleAssignedTo",
        "appRoleAssignments",
        "roleManagement",
        "directory",
        "roleDefinitions",
        "roleAssignments",
        "roleEligibilitySchedules",
        "roleEligibilityScheduleInstances",
        "roleEligibilityScheduleRequests",
        "roleAssignmentScheduleRequests",
        "subscribedSkus",
        "licenseDetails",
        "organization",
        "mailboxSettings",
        "manager",
        "directoryObjects",
        "getByIds",
        "delta",
        "$ref",
        "$count",
        "$batch",
        "microsoft.graph.user",
        "microsoft.graph.group",
        "microsoft.graph.servicePrincipal",
        "directoryRoles",
        "domains",
        "auditLogs",
        "directoryAudits",
    ];
    segs.iter()
        .map(|s| {
            if WORDS.contains(&s.as_str()) {
                s.clone()
            } else if let Some((coll, _)) = s.split_once('(') {
                format!("{coll}(…)")
            } else {
                "{id}".to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Resource units a call costs (specs §3), after modifiers.
pub fn cost(method: &Method, segs: &[String], q: &Query) -> u32 {
    if *method != Method::GET {
        return if segs.last().is_some_and(|s| s == "getByIds") {
            3
        } else {
            1
        };
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let base: i32 = match s.as_slice() {
        ["users"] | ["users", _] | ["applications"] | ["applications", _] => 2,
        ["servicePrincipals", _, "appRoleAssignments"] => 2,
        ["users", _, "memberOf" | "transitiveMemberOf" | "licenseDetails"] => 2,
        ["groups", _, "members", ..] | ["subscribedSkus"] => 3,
        ["groups", _, "transitiveMembers", ..] => 5,
        _ => 1,
    };
    let mut c = base;
    if q.select.is_some() {
        c -= 1;
    }
    if !q.expand.is_empty() {
        c += 1;
    }
    if q.top.is_some_and(|t| t < 20) {
        c -= 1;
    }
    c.max(1) as u32
}

fn date_header() -> String {
    rfc3339(now())
}

fn diagnostic() -> &'static str {
    r#"{"ServerInfo":{"DataCenter":"West Europe","Slice":"E","Ring":"5","ScaleUnit":"003","RoleInstance":"AM2PEPF0000SIM"}}"#
}

fn error_response(e: &GraphError, request_id: &str, client_request_id: &str) -> Response {
    let body = e.body(request_id, client_request_id, &date_header());
    let mut resp = (e.status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    insert(h, "request-id", request_id);
    insert(h, "client-request-id", client_request_id);
    h.insert("x-ms-ags-diagnostic", HeaderValue::from_static(diagnostic()));
    if let Some(s) = e.retry_after {
        insert(h, "retry-after", &s.to_string());
        h.insert(
            "x-ms-throttle-scope",
            HeaderValue::from_static("Tenant_Application/ReadWrite/Application"),
        );
        h.insert(
            "x-ms-throttle-information",
            HeaderValue::from_static("ResourceUnitLimitExceeded"),
        );
    }
    resp
}

fn insert(h: &mut HeaderMap, k: &'static str, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(k, v);
    }
}

fn token_error(e: TokenError) -> GraphError {
    let msg = match e {
        TokenError::Missing => "Access token is empty.".to_string(),
        TokenError::Expired => "Lifetime validation failed, the token is expired.".to_string(),
        TokenError::Revoked => "Access token has expired or is not yet valid.".to_string(),
        TokenError::WrongAudience(aud) => {
            format!("Access token validation failure. Invalid audience '{aud}'.")
        }
        TokenError::WrongTenant => {
            "Access token validation failure: the token was issued for another tenant.".to_string()
        }
        TokenError::BadSignature | TokenError::Malformed => "IDX14100: JWT is not well formed.".to_string(),
    };
    GraphError::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", msg)
}

/// Splits `/v1.0/a/b` into ("v1.0", ["a","b"]), percent-decoding each segment.
fn split_path(path: &str) -> Option<(String, Vec<String>)> {
    let mut it = path.trim_start_matches('/').split('/').filter(|s| !s.is_empty());
    let version = it.next()?;
    if version != "v1.0" && version != "beta" {
        return None;
    }
    let segs = it
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .to_string()
        })
        .collect();
    Some((version.to_string(), segs))
}

async fn handle(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let request_id = Uuid::new_v4().to_string();
    let client_request_id = parts
        .headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| request_id.clone());
    let Some((version, segs)) = split_path(parts.uri.path()) else {
        sim.stats.count("(unknown)");
        let e = GraphError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("Invalid version: {}", parts.uri.path()),
        );
        return error_response(&e, &request_id, &client_request_id);
    };
    sim.stats
        .count(&format!("{} /{version}/{}", parts.method, template(&segs)));
    let fault = sim.fault_before(&parts.headers).await;
    match fault {
        Some(FaultKind::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code_name = match code {
                502 => "BadGateway",
                503 => "serviceNotAvailable",
                504 => "GatewayTimeout",
                _ => "generalException",
            };
            let mut e = GraphError::new(
                status,
                code_name,
                "The service is temporarily unavailable (injected fault).",
            );
            if code == 503 {
                e.retry_after = Some(1);
            }
            return error_response(&e, &request_id, &client_request_id);
        }
        Some(FaultKind::Reset) => {
            return crate::server::reset_response();
        }
        _ => {}
    }
    let claims = match auth::check_bearer(&sim, &parts.headers, Audience::Graph) {
        Ok(c) => c,
        Err(e) => return error_response(&token_error(e), &request_id, &client_request_id),
    };
    let body = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            let e = GraphError::bad_request("The request body is too large or could not be read.");
            return error_response(&e, &request_id, &client_request_id);
        }
    };
    let base = auth::base_url(&parts.headers, scheme(&parts.headers));
    let call = Call {
        method: parts.method.clone(),
        segs,
        raw_query: parts.uri.query().unwrap_or("").to_string(),
        headers: &parts.headers,
        body,
        base,
        version,
        claims: &claims,
    };
    let result = if call.method == Method::POST && call.segs.len() == 1 && call.segs[0] == "$batch" {
        batch(&sim, &call).await
    } else {
        exec_throttled(&sim, &call)
    };
    let (reply, ru, used) = match result {
        Ok(r) => r,
        Err(e) => return error_response(&e, &request_id, &client_request_id),
    };
    latency(&sim, reply.items).await;
    let mut resp = match &reply.body {
        Some(v) => (reply.status, v.to_string()).into_response(),
        None => reply.status.into_response(),
    };
    let h = resp.headers_mut();
    if reply.body.is_some() {
        h.insert("content-type", HeaderValue::from_static(ODATA_JSON));
    }
    insert(h, "request-id", &request_id);
    insert(h, "client-request-id", &client_request_id);
    h.insert("x-ms-ags-diagnostic", HeaderValue::from_static(diagnostic()));
    insert(h, "x-ms-resource-unit", &ru.to_string());
    if used > 0.8 {
        insert(h, "x-ms-throttle-limit-percentage", &format!("{used:.1}"));
    }
    if fault == Some(FaultKind::Truncate) {
        return crate::server::truncate_response(resp).await;
    }
    resp
}

pub fn scheme(headers: &HeaderMap) -> &'static str {
    match headers.get("x-steward-scheme").and_then(|v| v.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    }
}

async fn latency(sim: &Sim, items: usize) {
    if sim.settings.latency_ms > 0 {
        let us = sim.settings.latency_ms * 1000 + sim.settings.per_item_us * items as u64;
        tokio::time::sleep(std::time::Duration::from_micros(us)).await;
    }
}

/// Runs one call with throttling; returns the reply, its RU cost and the fraction of budget used.
fn exec_throttled(sim: &Sim, call: &Call) -> Result<(Reply, u32, f64), GraphError> {
    let q = Query::parse(&call.raw_query, call.headers)?;
    let ru = cost(&call.method, &call.segs, &q);
    let mut used = 0.0;
    if sim.settings.throttle {
        match sim
            .throttle
            .graph(&call.claims.appid, ru, call.method != Method::GET)
        {
            Take::Wait(s) => {
                sim.stats.throttled.fetch_add(1, Ordering::Relaxed);
                return Err(GraphError::throttled(s));
            }
            Take::Ok { used: u, .. } => used = u,
        }
    }
    sim.stats
        .resource_units
        .fetch_add(u64::from(ru), Ordering::Relaxed);
    let reply = exec(sim, call, &q)?;
    Ok((reply, ru, used))
}

/// One call's work: route by method and path.
fn exec(sim: &Sim, call: &Call, q: &Query) -> Result<Reply, GraphError> {
    let segs: Vec<&str> = call.segs.iter().map(String::as_str).collect();
    if segs.last() == Some(&"delta") {
        return delta::delta(sim, call, q, &segs);
    }
    if call.method == Method::GET && segs == ["auditLogs", "directoryAudits"] {
        return delta::directory_audits(sim, call, q);
    }
    match call.method {
        Method::GET => read::get(sim, call, q, &segs),
        Method::POST | Method::DELETE | Method::PATCH | Method::PUT => write::write(sim, call, &segs),
        _ => Err(GraphError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "Method not allowed.",
        )),
    }
}

/// `POST /$batch`: up to 20 requests, ids unique, `dependsOn` honoured (a failed dependency answers 424),
/// each request throttled on its own.
async fn batch(sim: &Sim, outer: &Call<'_>) -> Result<(Reply, u32, f64), GraphError> {
    let body = outer.json_body()?;
    let Some(reqs) = body.get("requests").and_then(Value::as_array) else {
        return Err(GraphError::bad_request(
            "Invalid batch payload: 'requests' is missing.",
        ));
    };
    if reqs.len() > 20 {
        return Err(GraphError::bad_request(
            "The number of batch requests exceeds the limit of 20.",
        ));
    }
    let mut ids = std::collections::HashSet::new();
    for r in reqs {
        let id = r.get("id").and_then(Value::as_str).unwrap_or("");
        if id.is_empty() || !ids.insert(id.to_string()) {
            return Err(GraphError::bad_request(format!(
                "Batch request ids must be present and unique; '{id}' is not."
            )));
        }
    }
    let mut status_of: std::collections::HashMap<String, u16> = std::collections::HashMap::new();
    let mut responses = Vec::with_capacity(reqs.len());
    let mut total_items = 0;
    for r in reqs {
        let id = r.get("id").and_then(Value::as_str).unwrap_or("").to_string();
        let deps: Vec<String> = match r.get("dependsOn") {
            Some(Value::Array(a)) => a.iter().filter_map(|d| d.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        if let Some(missing) = deps.iter().find(|d| !status_of.contains_key(*d)) {
            return Err(GraphError::bad_request(format!(
                "Request '{id}' depends on '{missing}', which is not an earlier request of this batch."
            )));
        }
        if deps.iter().any(|d| status_of.get(d).is_some_and(|s| *s >= 400)) {
            status_of.insert(id.clone(), 424);
            responses.push(json!({"id": id, "status": 424, "headers": {}, "body": GraphError::new(StatusCode::FAILED_DEPENDENCY, "FailedDependency", "The request failed because a request it depends on failed.").body("", "", &date_header())}));
            continue;
        }
        let method = r
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let url = r.get("url").and_then(Value::as_str).unwrap_or("");
        let url = url.strip_prefix(&format!("/{}", outer.version)).unwrap_or(url);
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .to_string()
            })
            .collect();
        let mut headers = HeaderMap::new();
        if let Some(Value::Object(h)) = r.get("headers") {
            for (k, v) in h {
                if let (Ok(name), Some(Ok(val))) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    v.as_str().map(HeaderValue::from_str),
                ) {
                    headers.insert(name, val);
                }
            }
        }
        let inner = Call {
            method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
            segs,
            raw_query: query.to_string(),
            headers: &headers,
            body: r
                .get("body")
                .map(|b| Bytes::from(b.to_string()))
                .unwrap_or_default(),
            base: outer.base.clone(),
            version: outer.version.clone(),
            claims: outer.claims,
        };
        sim.stats.count(&format!(
            "{} /{}/{} ($batch)",
            inner.method,
            inner.version,
            template(&inner.segs)
        ));
        let (status, body, hdrs) = match exec_throttled(sim, &inner) {
            Ok((reply, _, _)) => {
                total_items += reply.items;
                (
                    reply.status.as_u16(),
                    reply.body,
                    json!({"content-type": ODATA_JSON}),
                )
            }
            Err(e) => {
                let mut h = json!({"content-type": "application/json"});
                if let Some(s) = e.retry_after {
                    h["Retry-After"] = json!(s.to_string());
                }
                (e.status.as_u16(), Some(e.body("", "", &date_header())), h)
            }
        };
        status_of.insert(id.clone(), status);
        let mut item = json!({"id": id, "status": status, "headers": hdrs});
        if let Some(b) = body {
            item["body"] = b;
        }
        responses.push(item);
    }
    Ok((Reply::json(json!({"responses": responses}), total_items), 0, 0.0))
}
