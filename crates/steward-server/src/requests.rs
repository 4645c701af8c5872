//! Handlers of the access-request API: access profiles, policies, entitlement rules, the catalog,
//! requests and approvals, the audit log and webhooks. Thin: each parses, calls [`Platform`], and answers.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use steward_platform::*;

use crate::{ApiResult, AppState, Auth, Body2, Q, ok};

/// An optional JSON body: empty means `T::default()`.
fn opt_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, PlatformError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| PlatformError::Invalid(format!("bad JSON body: {e}")))
}

fn created<T: serde::Serialize>(v: T) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

pub(crate) async fn list_profiles(State(s): State<AppState>, Auth(a): Auth) -> ApiResult<Response> {
    ok(json!({"items": s.platform.profiles(&a).await?}))
}

pub(crate) async fn create_profile(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body2(b): Body2<CreateProfile>,
) -> ApiResult<Response> {
    created(s.platform.create_profile(&a, b).await?)
}

pub(crate) async fn list_policies(State(s): State<AppState>, Auth(a): Auth) -> ApiResult<Response> {
    ok(json!({"items": s.platform.policies(&a).await?}))
}

pub(crate) async fn create_policy(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body2(b): Body2<PolicySpec>,
) -> ApiResult<Response> {
    created(s.platform.create_policy(&a, b).await?)
}

pub(crate) async fn app_entitlements(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(json!({"items": s.platform.app_entitlements(&a, &id).await?}))
}

pub(crate) async fn list_rules(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(json!({"items": s.platform.rules(&a, &id).await?}))
}

pub(crate) async fn create_rule(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    Body2(b): Body2<RuleSpec>,
) -> ApiResult<Response> {
    created(s.platform.create_rule(&a, &id, b).await?)
}

pub(crate) async fn catalog(State(s): State<AppState>, Auth(a): Auth) -> ApiResult<Response> {
    ok(json!({"items": s.platform.catalog(&a).await?}))
}

pub(crate) async fn create_request(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body2(b): Body2<CreateRequest>,
) -> ApiResult<Response> {
    created(s.platform.create_request(&a, b).await?)
}

pub(crate) async fn list_requests(
    State(s): State<AppState>,
    Auth(a): Auth,
    Q(q): Q<RequestQuery>,
) -> ApiResult<Response> {
    ok(s.platform.requests(&a, &q).await?)
}

pub(crate) async fn get_request(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(s.platform.request(&a, &id).await?)
}

pub(crate) async fn approve(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    ok(s.platform.decide(&a, &id, true, opt_body(&body)?).await?)
}

pub(crate) async fn deny(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    ok(s.platform.decide(&a, &id, false, opt_body(&body)?).await?)
}

pub(crate) async fn cancel(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(s.platform.cancel_request(&a, &id).await?)
}

pub(crate) async fn retry(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(s.platform.retry_request(&a, &id).await?)
}

pub(crate) async fn revoke(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(s.platform.revoke_request(&a, &id).await?)
}

pub(crate) async fn approvals(
    State(s): State<AppState>,
    Auth(a): Auth,
    Q(q): Q<ListQuery>,
) -> ApiResult<Response> {
    ok(s.platform.approvals(&a, &q).await?)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub(crate) async fn audit(
    State(s): State<AppState>,
    Auth(a): Auth,
    Q(q): Q<AuditQuery>,
) -> ApiResult<Response> {
    match q.format.as_deref() {
        None | Some("json") => ok(s.platform.audit_log(&a, &q).await?),
        Some("jsonl") => {
            let mut out = String::new();
            for e in s.platform.audit_export(&a, &q).await? {
                out.push_str(&serde_json::to_string(&e).unwrap_or_default());
                out.push('\n');
            }
            Ok(([("content-type", "application/x-ndjson")], out).into_response())
        }
        Some("csv") => {
            let mut out = String::from("seq,at,actor,action,target_type,target_id,detail,prev_hash,hash\n");
            for e in s.platform.audit_export(&a, &q).await? {
                let detail = serde_json::to_string(&e.detail).unwrap_or_default();
                let row = [
                    e.seq.to_string(),
                    e.at,
                    e.actor,
                    e.action,
                    e.target_type,
                    e.target_id,
                    detail,
                    e.prev_hash,
                    e.hash,
                ];
                out.push_str(&row.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            Ok(([("content-type", "text/csv")], out).into_response())
        }
        Some(f) => Err(PlatformError::Invalid(format!("format {f:?}: use json, jsonl or csv")).into()),
    }
}

pub(crate) async fn audit_verify(State(s): State<AppState>, Auth(a): Auth) -> ApiResult<Response> {
    require(&a, &[Role::SuperAdmin])?;
    ok(s.platform.verify_audit().await?)
}

pub(crate) async fn list_webhooks(State(s): State<AppState>, Auth(a): Auth) -> ApiResult<Response> {
    ok(json!({"items": s.platform.webhooks(&a).await?}))
}

pub(crate) async fn create_webhook(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body2(b): Body2<CreateWebhook>,
) -> ApiResult<Response> {
    created(s.platform.create_webhook(&a, b).await?)
}

pub(crate) async fn list_tokens(State(s): State<AppState>, Auth(a): Auth) -> ApiResult<Response> {
    ok(json!({"items": s.platform.tokens(&a).await?}))
}

pub(crate) async fn revoke_token(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(s.platform.revoke_token(&a, &id).await?)
}
