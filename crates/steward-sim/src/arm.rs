//! Azure Resource Manager, emulated: tenants, subscriptions, resource groups, role definitions, role
//! assignments (list with ARM's at/above/below scope semantics, create, delete), PIM eligibility
//! instances, storage accounts, blob containers and user-assigned identities (specs §6).
//!
//! Every call needs an ARM token; what the caller may see or change is decided by ARM's own rule — a role
//! assignment to the caller (or a group it belongs to) at or above the scope whose role grants the action.
//! Paths are matched case-insensitively, as ARM does. Each subscription has its own read and write
//! throttling buckets per caller.
//!
//! Ids come back in varying case, as ARM's do: role assignments keep the spelling their scope was
//! written with, and resource providers spell resource-group segments their own way. Listings show
//! this through [`spelled`]: a fixed spelling per item (from its name, so every listing agrees with
//! itself), one of canonical, `resourcegroups` / `microsoft.storage/storageaccounts` in lower case, the
//! subscription GUID in upper case, or the resource-group name in upper case. The stored state stays
//! canonical; single-item answers (GET, PUT, DELETE of one assignment) echo it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{self, Audience, Claims, TokenError};
use crate::ctx::Sim;
use crate::model::*;
use crate::realism::{FaultKind, Take};
use crate::store::{State as Store, WriteError};
use crate::util::{now, rfc3339};

#[derive(Debug)]
pub struct ArmError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ArmError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ArmError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn response(&self, request_id: &str) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "target": null, "details": [], "additionalInfo": []}});
        let mut r = (self.status, body.to_string()).into_response();
        let h = r.headers_mut();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-ms-request-id", v.clone());
            h.insert("x-ms-correlation-request-id", v);
        }
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            h.insert("retry-after", v);
        }
        r
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new().fallback(handle).with_state(sim)
}

const RESOURCES_VERSIONS: &[&str] = &[
    "2014-04-01",
    "2015-01-01",
    "2016-06-01",
    "2018-05-01",
    "2019-06-01",
    "2019-11-01",
    "2020-01-01",
    "2020-06-01",
    "2021-01-01",
    "2021-04-01",
    "2022-01-01",
    "2022-09-01",
    "2022-12-01",
    "2023-07-01",
    "2024-03-01",
    "2024-07-01",
    "2024-11-01",
    "2025-04-01",
];
const AUTHZ_VERSIONS: &[&str] = &[
    "2015-07-01",
    "2018-01-01-preview",
    "2018-09-01-preview",
    "2020-04-01-preview",
    "2020-08-01-preview",
    "2020-10-01-preview",
    "2022-01-01-preview",
    "2022-04-01",
    "2022-05-01-preview",
];
const PIM_VERSIONS: &[&str] = &[
    "2020-10-01",
    "2020-10-01-preview",
    "2022-04-01-preview",
    "2024-02-01-preview",
    "2024-09-01-preview",
];
const STORAGE_VERSIONS: &[&str] = &[
    "2021-04-01",
    "2021-06-01",
    "2021-08-01",
    "2021-09-01",
    "2022-05-01",
    "2022-09-01",
    "2023-01-01",
    "2023-04-01",
    "2023-05-01",
    "2024-01-01",
    "2025-01-01",
];
const MSI_VERSIONS: &[&str] = &[
    "2018-11-30",
    "2021-09-30-preview",
    "2022-01-31-preview",
    "2023-01-31",
    "2023-07-31-preview",
    "2024-11-30",
];

/// One ARM call after authentication.
struct Call<'a> {
    method: Method,
    path: String,
    segs: Vec<String>,
    query: HashMap<String, String>,
    body: Bytes,
    base: String,
    claims: &'a Claims,
}

async fn handle(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let request_id = Uuid::new_v4().to_string();
    let path = parts.uri.path().to_string();
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .to_string()
        })
        .collect();
    sim.stats
        .count(&format!("{} (arm) {}", parts.method, template(&segs)));
    match sim.fault_before(&parts.headers).await {
        Some(FaultKind::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return ArmError::new(
                status,
                "InternalServerError",
                "Encountered internal server error (injected fault).",
            )
            .response(&request_id);
        }
        Some(_) => return crate::server::reset_response(),
        None => {}
    }
    let claims = match auth::check_bearer(&sim, &parts.headers, Audience::Arm) {
        Ok(c) => c,
        Err(e) => return token_error(e).response(&request_id),
    };
    let body = axum::body::to_bytes(body, 4 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let call = Call {
        method: parts.method.clone(),
        path,
        segs,
        query,
        body,
        base: auth::base_url(&parts.headers, crate::graph::scheme(&parts.headers)),
        claims: &claims,
    };
    // Throttling per caller and subscription.
    let sub = call
        .segs
        .get(1)
        .filter(|_| {
            call.segs
                .first()
                .is_some_and(|s| s.eq_ignore_ascii_case("subscriptions"))
        })
        .cloned()
        .unwrap_or_default();
    let write = call.method != Method::GET;
    let mut remaining = None;
    if sim.settings.throttle {
        match sim.throttle.arm(&claims.oid, &sub, write) {
            Take::Wait(s) => {
                sim.stats.throttled.fetch_add(1, Ordering::Relaxed);
                let mut e = ArmError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "SubscriptionRequestsThrottled",
                    format!(
                        "Number of {} requests for subscription '{sub}' exceeded the limit. Please try again after '{s}' seconds.",
                        if write { "write" } else { "read" }
                    ),
                );
                e.retry_after = Some(s);
                return e.response(&request_id);
            }
            Take::Ok { remaining: r, .. } => remaining = Some(r as u64),
        }
    }
    let result = dispatch(&sim, &call);
    if sim.settings.latency_ms > 0 {
        let items = result
            .as_ref()
            .ok()
            .and_then(|(_, v)| v.get("value").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(1);
        let us = sim.settings.latency_ms * 1000 + sim.settings.per_item_us * items as u64;
        tokio::time::sleep(std::time::Duration::from_micros(us)).await;
    }
    match result {
        Ok((status, body)) => {
            let mut r = if status == StatusCode::NO_CONTENT {
                status.into_response()
            } else {
                (status, body.to_string()).into_response()
            };
            let h = r.headers_mut();
            h.insert(
                "content-type",
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                h.insert("x-ms-request-id", v.clone());
                h.insert("x-ms-correlation-request-id", v);
            }
            if let Some(rem) = remaining
                && let Ok(v) = HeaderValue::from_str(&rem.to_string())
            {
                h.insert(
                    match call.method {
                        Method::DELETE => "x-ms-ratelimit-remaining-subscription-deletes",
                        Method::GET => "x-ms-ratelimit-remaining-subscription-reads",
                        _ => "x-ms-ratelimit-remaining-subscription-writes",
                    },
                    v,
                );
            }
            r
        }
        Err(e) => e.response(&request_id),
    }
}

fn token_error(e: TokenError) -> ArmError {
    let (code, msg) = match e {
        TokenError::Missing => (
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.".to_string(),
        ),
        TokenError::Expired | TokenError::Revoked => (
            "ExpiredAuthenticationToken",
            "The access token expiry UTC time is earlier than current UTC time.".to_string(),
        ),
        TokenError::WrongAudience(aud) => (
            "InvalidAuthenticationTokenAudience",
            format!(
                "The access token has been obtained for wrong audience or resource '{aud}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'."
            ),
        ),
        TokenError::WrongTenant => (
            "InvalidAuthenticationTokenTenant",
            "The access token is from the wrong issuer.".to_string(),
        ),
        TokenError::BadSignature | TokenError::Malformed => (
            "InvalidAuthenticationToken",
            "The access token is invalid.".to_string(),
        ),
    };
    ArmError::new(StatusCode::UNAUTHORIZED, code, msg)
}

fn template(segs: &[String]) -> String {
    let mut out = Vec::new();
    let mut prev = "";
    for s in segs {
        let keep = matches!(prev.to_ascii_lowercase().as_str(), "providers" | "blobservices")
            || matches!(
                s.to_ascii_lowercase().as_str(),
                "subscriptions"
                    | "resourcegroups"
                    | "providers"
                    | "tenants"
                    | "roleassignments"
                    | "roledefinitions"
                    | "roleeligibilityscheduleinstances"
                    | "storageaccounts"
                    | "blobservices"
                    | "containers"
                    | "userassignedidentities"
                    | "default"
            );
        out.push(if keep { s.clone() } else { "{id}".to_string() });
        prev = s;
    }
    format!("/{}", out.join("/"))
}

fn api_version<'a>(call: &'a Call, supported: &[&str]) -> Result<&'a str, ArmError> {
    let Some(v) = call.query.get("api-version") else {
        return Err(ArmError::bad(
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    if !supported.contains(&v.as_str()) {
        return Err(ArmError::bad(
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{v}' is invalid. The supported versions are '{}'.",
                supported.join(",")
            ),
        ));
    }
    Ok(v)
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether scope `outer` contains (or equals) scope `inner`, segment-aligned and ignoring case.
pub fn scope_covers(outer: &str, inner: &str) -> bool {
    let o = outer.trim_end_matches('/').to_ascii_lowercase();
    let i = inner.trim_end_matches('/').to_ascii_lowercase();
    o.is_empty() || i == o || i.starts_with(&format!("{o}/"))
}

fn glob(pattern: &str, action: &str) -> bool {
    let p = pattern.to_ascii_lowercase();
    let a = action.to_ascii_lowercase();
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == a;
    }
    let mut rest = a.as_str();
    for (k, part) in parts.iter().enumerate() {
        if k == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if k == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

fn role_def<'a>(st: &'a Store, name: &Uuid) -> Option<&'a AzureRoleDefinition> {
    st.tenant
        .azure
        .builtin_roles
        .iter()
        .chain(&st.tenant.azure.custom_roles)
        .find(|r| r.name == *name)
}

fn grants(def: &AzureRoleDefinition, action: &str) -> bool {
    def.actions.iter().any(|p| glob(p, action)) && !def.not_actions.iter().any(|p| glob(p, action))
}

/// The caller and the groups it belongs to (at any depth).
fn identities(st: &Store, oid: Uuid) -> Vec<Uuid> {
    let mut ids = st.transitive_member_of(&oid);
    ids.push(oid);
    ids
}

fn authorize(st: &Store, claims: &Claims, scope: &str, action: &str) -> Result<(), ArmError> {
    let ids = identities(st, claims.oid());
    let ok = st.tenant.azure.role_assignments.iter().any(|a| {
        ids.contains(&a.principal_id)
            && scope_covers(&a.scope, scope)
            && role_def(st, &a.role_definition).is_some_and(|d| grants(d, action))
    });
    if ok {
        return Ok(());
    }
    Err(ArmError::new(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        format!(
            "The client '{}' with object id '{}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
            claims.appid, claims.oid
        ),
    ))
}

/// Whether the caller holds any role at, above or below `scope` (what makes a subscription visible).
fn sees(st: &Store, claims: &Claims, scope: &str) -> bool {
    let ids = identities(st, claims.oid());
    st.tenant.azure.role_assignments.iter().any(|a| {
        ids.contains(&a.principal_id) && (scope_covers(&a.scope, scope) || scope_covers(scope, &a.scope))
    })
}

/// Pages a list with `$skiptoken` (an offset) and `nextLink`.
fn page(call: &Call, items: Vec<Value>, default_size: usize) -> Result<Value, ArmError> {
    let size = call
        .query
        .get("$top")
        .or(call.query.get("$maxpagesize"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default_size)
        .clamp(1, 5000);
    let offset = match call.query.get("$skiptoken") {
        Some(t) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("o=").and_then(|n| n.parse::<usize>().ok()))
            .ok_or_else(|| {
                ArmError::bad(
                    "InvalidSkipToken",
                    "The $skiptoken is not valid; follow the nextLink as returned.",
                )
            })?,
        None => 0,
    };
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(offset).take(size).collect();
    let mut out = json!({"value": value});
    if offset + size < total {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        let mut keys: Vec<&String> = call.query.keys().filter(|k| *k != "$skiptoken").collect();
        keys.sort();
        for k in keys {
            ser.append_pair(k, &call.query[k]);
        }
        let tok = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o={}", offset + size));
        ser.append_pair("$skiptoken", &tok);
        out["nextLink"] = json!(format!("{}{}?{}", call.base, call.path, ser.finish()));
    }
    Ok(out)
}

fn sub_of<'a>(st: &'a Store, id: &str) -> Result<&'a Subscription, ArmError> {
    st.tenant
        .azure
        .subscriptions
        .iter()
        .find(|s| eq(&s.subscription_id.to_string(), id))
        .ok_or_else(|| {
            ArmError::new(
                StatusCode::NOT_FOUND,
                "SubscriptionNotFound",
                format!("The subscription '{id}' could not be found."),
            )
        })
}

fn rg_of<'a>(st: &'a Store, sub: &Subscription, name: &str) -> Result<&'a ResourceGroup, ArmError> {
    st.tenant
        .azure
        .resource_groups
        .iter()
        .find(|r| r.subscription_id == sub.subscription_id && eq(&r.name, name))
        .ok_or_else(|| {
            ArmError::new(
                StatusCode::NOT_FOUND,
                "ResourceGroupNotFound",
                format!("Resource group '{name}' could not be found."),
            )
        })
}

/// `id` (canonical) spelled as ARM's listings spell the item keyed `key`: see the module docs.
pub fn spelled(id: &str, key: &[u8]) -> String {
    let h = key
        .iter()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(*b)));
    let mut segs: Vec<String> = id.split('/').map(str::to_string).collect();
    match h % 4 {
        1 => {
            for s in segs.iter_mut() {
                if ["resourceGroups", "Microsoft.Storage", "storageAccounts"].contains(&s.as_str()) {
                    *s = s.to_ascii_lowercase();
                }
            }
        }
        2 => {
            if segs.get(1).is_some_and(|s| s == "subscriptions")
                && let Some(g) = segs.get_mut(2)
            {
                *g = g.to_ascii_uppercase();
            }
        }
        3 => {
            if segs.get(3).is_some_and(|s| s == "resourceGroups")
                && let Some(g) = segs.get_mut(4)
            {
                *g = g.to_ascii_uppercase();
            }
        }
        _ => {}
    }
    segs.join("/")
}

/// A role assignment as listings show it: scope and id in the assignment's own spelling.
fn listed_assignment_json(a: &AzureRoleAssignment) -> Value {
    let mut v = role_assignment_json(a);
    let sc = spelled(&a.scope, a.name.as_bytes());
    v["id"] = json!(format!(
        "{sc}/providers/Microsoft.Authorization/roleAssignments/{}",
        a.name
    ));
    v["properties"]["scope"] = json!(sc);
    v
}

/// Checks that an ARM scope names something that exists; returns its canonical spelling.
fn resolve_scope(st: &Store, segs: &[String]) -> Result<String, ArmError> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        [] => Ok(String::new()),
        [a, sub] if eq(a, "subscriptions") => {
            Ok(format!("/subscriptions/{}", sub_of(st, sub)?.subscription_id))
        }
        [a, sub, b, rg] if eq(a, "subscriptions") && eq(b, "resourceGroups") => {
            let sub = sub_of(st, sub)?;
            Ok(rg_of(st, sub, rg)?.arm_id())
        }
        [a, sub, b, rg, p, ns, ty, name, rest @ ..]
            if eq(a, "subscriptions") && eq(b, "resourceGroups") && eq(p, "providers") =>
        {
            let sub = sub_of(st, sub)?;
            let rg = rg_of(st, sub, rg)?;
            let not_found = || {
                ArmError::new(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    format!(
                        "The Resource '{ns}/{ty}/{name}' under resource group '{}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
                        rg.name
                    ),
                )
            };
            if eq(ns, "Microsoft.Storage") && eq(ty, "storageAccounts") {
                let acct = st
                    .tenant
                    .azure
                    .storage_accounts
                    .iter()
                    .find(|a| {
                        a.subscription_id == sub.subscription_id
                            && eq(&a.resource_group, &rg.name)
                            && eq(&a.name, name)
                    })
                    .ok_or_else(not_found)?;
                match rest {
                    [] => Ok(acct.arm_id()),
                    [bs, d, c, cname]
                        if eq(bs, "blobServices") && eq(d, "default") && eq(c, "containers") =>
                    {
                        st.tenant
                            .azure
                            .containers
                            .iter()
                            .find(|x| {
                                x.subscription_id == sub.subscription_id
                                    && eq(&x.account, &acct.name)
                                    && eq(&x.name, cname)
                            })
                            .map(BlobContainer::arm_id)
                            .ok_or_else(|| {
                                ArmError::new(
                                    StatusCode::NOT_FOUND,
                                    "ContainerNotFound",
                                    "The specified container does not exist.",
                                )
                            })
                    }
                    _ => Err(not_found()),
                }
            } else if eq(ns, "Microsoft.ManagedIdentity")
                && eq(ty, "userAssignedIdentities")
                && rest.is_empty()
            {
                st.tenant
                    .azure
                    .identities
                    .iter()
                    .find(|i| {
                        i.subscription_id == sub.subscription_id
                            && eq(&i.resource_group, &rg.name)
                            && eq(&i.name, name)
                    })
                    .map(UserAssignedIdentity::arm_id)
                    .ok_or_else(not_found)
            } else {
                Err(not_found())
            }
        }
        _ => Err(ArmError::bad(
            "InvalidScope",
            format!("The scope '/{}' is not valid.", segs.join("/")),
        )),
    }
}

fn sub_from_scope(scope: &str) -> Option<&str> {
    scope
        .strip_prefix("/subscriptions/")
        .map(|r| r.split('/').next().unwrap_or(r))
}

fn role_definition_id(scope: &str, name: &Uuid) -> String {
    match sub_from_scope(scope) {
        Some(s) => format!("/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{name}"),
        None => format!("/providers/Microsoft.Authorization/roleDefinitions/{name}"),
    }
}

fn ptype_name(p: PrincipalType) -> &'static str {
    match p {
        PrincipalType::User => "User",
        PrincipalType::Group => "Group",
        PrincipalType::ServicePrincipal => "ServicePrincipal",
    }
}

fn role_assignment_json(a: &AzureRoleAssignment) -> Value {
    json!({
        "properties": {
            "roleDefinitionId": role_definition_id(&a.scope, &a.role_definition),
            "principalId": a.principal_id,
            "principalType": ptype_name(a.principal_type),
            "scope": a.scope,
            "condition": null,
            "conditionVersion": null,
            "createdOn": a.created,
            "updatedOn": a.created,
            "createdBy": null,
            "updatedBy": null,
            "delegatedManagedIdentityResourceId": null,
            "description": null,
        },
        "id": format!("{}/providers/Microsoft.Authorization/roleAssignments/{}", a.scope, a.name),
        "type": "Microsoft.Authorization/roleAssignments",
        "name": a.name,
    })
}

fn role_definition_json(scope: &str, d: &AzureRoleDefinition, custom: bool) -> Value {
    json!({
        "properties": {
            "roleName": d.role_name,
            "type": if custom { "CustomRole" } else { "BuiltInRole" },
            "description": d.description,
            "assignableScopes": d.assignable_scopes,
            "permissions": [{"actions": d.actions, "notActions": d.not_actions, "dataActions": d.data_actions, "notDataActions": []}],
            "createdOn": "2020-01-01T00:00:00Z",
            "updatedOn": "2020-01-01T00:00:00Z",
            "createdBy": null,
            "updatedBy": null,
        },
        "id": role_definition_id(scope, &d.name),
        "type": "Microsoft.Authorization/roleDefinitions",
        "name": d.name,
    })
}

fn dispatch(sim: &Sim, call: &Call) -> Result<(StatusCode, Value), ArmError> {
    let s: Vec<&str> = call.segs.iter().map(String::as_str).collect();
    // Split at /providers/Microsoft.Authorization/ if present.
    let authz = s
        .windows(2)
        .position(|w| eq(w[0], "providers") && eq(w[1], "Microsoft.Authorization"));
    if let Some(pos) = authz {
        let scope_segs = &call.segs[..pos];
        let rest: Vec<&str> = s[pos + 2..].to_vec();
        return authorization(sim, call, scope_segs, &rest);
    }
    let st = sim.read();
    let ok = |v: Value| Ok((StatusCode::OK, v));
    match s.as_slice() {
        [t] if eq(t, "tenants") => {
            api_version(call, RESOURCES_VERSIONS)?;
            let t = &st.tenant;
            let default = t
                .domains
                .iter()
                .find(|d| d.is_default)
                .map(|d| d.name.clone())
                .unwrap_or_default();
            ok(page(
                call,
                vec![json!({
                    "id": format!("/tenants/{}", t.tenant_id), "tenantId": t.tenant_id, "countryCode": "NL",
                    "displayName": t.display_name, "domains": t.domains.iter().map(|d| d.name.clone()).collect::<Vec<_>>(),
                    "tenantCategory": "Home", "defaultDomain": default, "tenantType": "AAD",
                })],
                100,
            )?)
        }
        [a] if eq(a, "subscriptions") => {
            api_version(call, RESOURCES_VERSIONS)?;
            let items: Vec<Value> = st
                .tenant
                .azure
                .subscriptions
                .iter()
                .filter(|sub| {
                    sees(
                        &st,
                        call.claims,
                        &format!("/subscriptions/{}", sub.subscription_id),
                    )
                })
                .map(|sub| subscription_json(&st, sub))
                .collect();
            ok(page(call, items, 100)?)
        }
        [a, sub] if eq(a, "subscriptions") => {
            api_version(call, RESOURCES_VERSIONS)?;
            let sub = sub_of(&st, sub)?;
            authorize(
                &st,
                call.claims,
                &format!("/subscriptions/{}", sub.subscription_id),
                "Microsoft.Resources/subscriptions/read",
            )?;
            ok(subscription_json(&st, sub))
        }
        [a, sub, b] if eq(a, "subscriptions") && eq(b, "resourceGroups") => {
            api_version(call, RESOURCES_VERSIONS)?;
            let sub = sub_of(&st, sub)?;
            authorize(
                &st,
                call.claims,
                &format!("/subscriptions/{}", sub.subscription_id),
                "Microsoft.Resources/subscriptions/resourceGroups/read",
            )?;
            let items = st
                .tenant
                .azure
                .resource_groups
                .iter()
                .filter(|r| r.subscription_id == sub.subscription_id)
                .map(rg_json)
                .collect();
            ok(page(call, items, 100)?)
        }
        [a, sub, b, rg] if eq(a, "subscriptions") && eq(b, "resourceGroups") => {
            api_version(call, RESOURCES_VERSIONS)?;
            let sub = sub_of(&st, sub)?;
            let rg = rg_of(&st, sub, rg)?;
            authorize(
                &st,
                call.claims,
                &rg.arm_id(),
                "Microsoft.Resources/subscriptions/resourceGroups/read",
            )?;
            ok(rg_json(rg))
        }
        [a, sub, p, ns, ty] if eq(a, "subscriptions") && eq(p, "providers") => {
            let sub = sub_of(&st, sub)?;
            let scope = format!("/subscriptions/{}", sub.subscription_id);
            resource_list(call, &st, &scope, sub.subscription_id, None, ns, ty)
        }
        [a, sub, b, rg, p, ns, ty]
            if eq(a, "subscriptions") && eq(b, "resourceGroups") && eq(p, "providers") =>
        {
            let sub = sub_of(&st, sub)?;
            let rg = rg_of(&st, sub, rg)?;
            resource_list(
                call,
                &st,
                &rg.arm_id(),
                sub.subscription_id,
                Some(&rg.name),
                ns,
                ty,
            )
        }
        [a, sub, b, rg, p, ns, ty, acct, bs, d, c]
            if eq(a, "subscriptions")
                && eq(b, "resourceGroups")
                && eq(p, "providers")
                && eq(ns, "Microsoft.Storage")
                && eq(ty, "storageAccounts")
                && eq(bs, "blobServices")
                && eq(d, "default")
                && eq(c, "containers") =>
        {
            api_version(call, STORAGE_VERSIONS)?;
            let scope = resolve_scope(&st, &call.segs[..8])?;
            authorize(
                &st,
                call.claims,
                &scope,
                "Microsoft.Storage/storageAccounts/blobServices/containers/read",
            )?;
            let sub = sub_of(&st, sub)?;
            let items = st
                .tenant
                .azure
                .containers
                .iter()
                .filter(|x| x.subscription_id == sub.subscription_id && eq(&x.resource_group, rg) && eq(&x.account, acct))
                .map(|x| {
                    json!({
                        "id": spelled(&x.arm_id(), x.arm_id().as_bytes()), "name": x.name, "type": "Microsoft.Storage/storageAccounts/blobServices/containers",
                        "etag": format!("\"0x8D{:X}\"", x.name.len() * 7919),
                        "properties": {"publicAccess": "None", "leaseStatus": "Unlocked", "leaseState": "Available",
                            "lastModifiedTime": "2024-01-01T00:00:00Z", "hasImmutabilityPolicy": false, "hasLegalHold": false},
                    })
                })
                .collect();
            ok(page(call, items, 100)?)
        }
        _ => Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!("The resource type could not be found for '{}'.", call.path),
        )),
    }
}

fn subscription_json(st: &Store, sub: &Subscription) -> Value {
    json!({
        "id": format!("/subscriptions/{}", sub.subscription_id),
        "subscriptionId": sub.subscription_id,
        "tenantId": st.tenant.tenant_id,
        "displayName": sub.display_name,
        "state": sub.state,
        "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "EnterpriseAgreement_2014-09-01", "spendingLimit": "Off"},
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "tags": {},
    })
}

fn rg_json(rg: &ResourceGroup) -> Value {
    json!({
        "id": rg.arm_id(), "name": rg.name, "type": "Microsoft.Resources/resourceGroups",
        "location": rg.location, "properties": {"provisioningState": "Succeeded"},
    })
}

fn resource_list(
    call: &Call,
    st: &Store,
    scope: &str,
    sub: Uuid,
    rg: Option<&str>,
    ns: &str,
    ty: &str,
) -> Result<(StatusCode, Value), ArmError> {
    let in_scope = |s: Uuid, g: &str| s == sub && rg.is_none_or(|r| eq(r, g));
    if eq(ns, "Microsoft.Storage") && eq(ty, "storageAccounts") {
        api_version(call, STORAGE_VERSIONS)?;
        authorize(st, call.claims, scope, "Microsoft.Storage/storageAccounts/read")?;
        let items = st
            .tenant
            .azure
            .storage_accounts
            .iter()
            .filter(|a| in_scope(a.subscription_id, &a.resource_group))
            .map(|a| {
                json!({
                    "id": spelled(&a.arm_id(), a.arm_id().as_bytes()), "kind": "StorageV2", "location": a.location, "name": a.name,
                    "type": "Microsoft.Storage/storageAccounts", "sku": {"name": "Standard_LRS", "tier": "Standard"}, "tags": {},
                    "properties": {"creationTime": a.created, "provisioningState": "Succeeded", "primaryLocation": a.location,
                        "statusOfPrimary": "available", "isHnsEnabled": false, "allowBlobPublicAccess": false, "minimumTlsVersion": "TLS1_2",
                        "primaryEndpoints": {"blob": format!("https://{}.blob.core.windows.net/", a.name)}},
                })
            })
            .collect();
        return Ok((StatusCode::OK, page(call, items, 100)?));
    }
    if eq(ns, "Microsoft.ManagedIdentity") && eq(ty, "userAssignedIdentities") {
        api_version(call, MSI_VERSIONS)?;
        authorize(
            st,
            call.claims,
            scope,
            "Microsoft.ManagedIdentity/userAssignedIdentities/read",
        )?;
        let items = st
            .tenant
            .azure
            .identities
            .iter()
            .filter(|i| in_scope(i.subscription_id, &i.resource_group))
            .map(|i| {
                json!({
                    "id": i.arm_id(), "location": i.location, "name": i.name, "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
                    "tags": {}, "properties": {"clientId": i.client_id, "principalId": i.principal_id, "tenantId": st.tenant.tenant_id, "isolationScope": "None"},
                })
            })
            .collect();
        return Ok((StatusCode::OK, page(call, items, 100)?));
    }
    Err(ArmError::new(
        StatusCode::NOT_FOUND,
        "NoRegisteredProviderFound",
        format!("No registered resource provider found for type '{ns}/{ty}'."),
    ))
}

/// `{scope}/providers/Microsoft.Authorization/…`
fn authorization(
    sim: &Sim,
    call: &Call,
    scope_segs: &[String],
    rest: &[&str],
) -> Result<(StatusCode, Value), ArmError> {
    let scope = {
        let st = sim.read();
        resolve_scope(&st, scope_segs)?
    };
    match rest {
        [ra] if eq(ra, "roleAssignments") && call.method == Method::GET => {
            api_version(call, AUTHZ_VERSIONS)?;
            let st = sim.read();
            authorize(
                &st,
                call.claims,
                &scope,
                "Microsoft.Authorization/roleAssignments/read",
            )?;
            let items = list_assignments(&st, call, &scope, &st.tenant.azure.role_assignments)?;
            Ok((StatusCode::OK, page(call, items, 500)?))
        }
        [ra] if eq(ra, "roleEligibilityScheduleInstances") && call.method == Method::GET => {
            api_version(call, PIM_VERSIONS)?;
            let st = sim.read();
            if !st.tenant.has_p2 {
                return Err(ArmError::bad(
                    "AadPremiumLicenseRequired",
                    "The tenant needs to have Microsoft Entra ID P2 or Microsoft Entra ID Governance license.",
                ));
            }
            authorize(
                &st,
                call.claims,
                &scope,
                "Microsoft.Authorization/roleAssignments/read",
            )?;
            let items = list_assignments(&st, call, &scope, &st.tenant.azure.role_eligibilities)?
                .into_iter()
                .map(|mut v| {
                    let name = v["name"].clone();
                    let sc = v["properties"]["scope"].as_str().unwrap_or_default().to_string();
                    let created = v["properties"]["createdOn"].clone();
                    let a = st
                        .tenant
                        .azure
                        .role_eligibilities
                        .iter()
                        .find(|e| json!(e.name) == name);
                    v["id"] = json!(format!(
                        "{sc}/providers/Microsoft.Authorization/roleEligibilityScheduleInstances/{}",
                        name.as_str().unwrap_or_default()
                    ));
                    v["type"] = json!("Microsoft.Authorization/roleEligibilityScheduleInstances");
                    let props = v["properties"].as_object_mut();
                    if let Some(p) = props {
                        p.insert(
                            "roleEligibilityScheduleId".into(),
                            json!(format!(
                                "{sc}/providers/Microsoft.Authorization/roleEligibilitySchedules/{}",
                                name.as_str().unwrap_or_default()
                            )),
                        );
                        p.insert("startDateTime".into(), created);
                        p.insert("endDateTime".into(), json!(a.and_then(|a| a.end.clone())));
                        p.insert("memberType".into(), json!("Direct"));
                        p.insert("status".into(), json!("Provisioned"));
                    }
                    v
                })
                .collect();
            Ok((StatusCode::OK, page(call, items, 500)?))
        }
        [ra, name] if eq(ra, "roleAssignments") => {
            api_version(call, AUTHZ_VERSIONS)?;
            let name_id = Uuid::parse_str(name).map_err(|_| {
                ArmError::bad(
                    "InvalidRoleAssignmentId",
                    format!(
                        "The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID."
                    ),
                )
            })?;
            match call.method {
                Method::GET => {
                    let st = sim.read();
                    authorize(
                        &st,
                        call.claims,
                        &scope,
                        "Microsoft.Authorization/roleAssignments/read",
                    )?;
                    st.tenant
                        .azure
                        .role_assignments
                        .iter()
                        .find(|a| a.name == name_id && eq(&a.scope, &scope))
                        .map(|a| (StatusCode::OK, role_assignment_json(a)))
                        .ok_or_else(|| {
                            ArmError::new(
                                StatusCode::NOT_FOUND,
                                "RoleAssignmentNotFound",
                                format!("The role assignment '{name}' is not found."),
                            )
                        })
                }
                Method::PUT => put_assignment(sim, call, &scope, name_id),
                Method::DELETE => {
                    let mut st = sim.write();
                    authorize(
                        &st,
                        call.claims,
                        &scope,
                        "Microsoft.Authorization/roleAssignments/delete",
                    )?;
                    match st.remove_azure_role_assignment(&scope, name_id) {
                        Ok(a) => Ok((StatusCode::OK, role_assignment_json(&a))),
                        Err(_) => Ok((StatusCode::NO_CONTENT, Value::Null)),
                    }
                }
                _ => Err(ArmError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "The method is not allowed on role assignments.",
                )),
            }
        }
        [rd] if eq(rd, "roleDefinitions") && call.method == Method::GET => {
            api_version(call, AUTHZ_VERSIONS)?;
            let st = sim.read();
            if !scope.is_empty() {
                authorize(
                    &st,
                    call.claims,
                    &scope,
                    "Microsoft.Authorization/roleDefinitions/read",
                )?;
            }
            let filter = call.query.get("$filter").map(String::as_str).unwrap_or("");
            let want_custom = filter.contains("CustomRole");
            let want_builtin = filter.contains("BuiltInRole");
            let role_name = filter
                .split("roleName eq '")
                .nth(1)
                .and_then(|r| r.split('\'').next());
            let mut items = Vec::new();
            for (d, custom) in st
                .tenant
                .azure
                .builtin_roles
                .iter()
                .map(|d| (d, false))
                .chain(st.tenant.azure.custom_roles.iter().map(|d| (d, true)))
            {
                if (want_custom && !custom) || (want_builtin && custom) {
                    continue;
                }
                if role_name.is_some_and(|n| !eq(n, &d.role_name)) {
                    continue;
                }
                if custom
                    && !d
                        .assignable_scopes
                        .iter()
                        .any(|s| scope_covers(s, &scope) || scope_covers(&scope, s))
                {
                    continue;
                }
                items.push(role_definition_json(&scope, d, custom));
            }
            Ok((StatusCode::OK, page(call, items, 1000)?))
        }
        [rd, id] if eq(rd, "roleDefinitions") && call.method == Method::GET => {
            api_version(call, AUTHZ_VERSIONS)?;
            let st = sim.read();
            let name = Uuid::parse_str(id).ok();
            let custom = st.tenant.azure.custom_roles.iter().any(|d| Some(d.name) == name);
            name.and_then(|n| role_def(&st, &n))
                .map(|d| (StatusCode::OK, role_definition_json(&scope, d, custom)))
                .ok_or_else(|| {
                    ArmError::new(
                        StatusCode::NOT_FOUND,
                        "RoleDefinitionDoesNotExist",
                        format!("The specified role definition with ID '{id}' does not exist."),
                    )
                })
        }
        _ => Err(ArmError::new(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!("The resource type could not be found for '{}'.", call.path),
        )),
    }
}

/// Role assignments visible from `scope`: at, above and below it; `$filter=atScope()` keeps at and
/// above; `principalId eq '…'` one principal; `assignedTo('…')` a principal and its groups.
fn list_assignments(
    st: &Store,
    call: &Call,
    scope: &str,
    all: &[AzureRoleAssignment],
) -> Result<Vec<Value>, ArmError> {
    let filter = call
        .query
        .get("$filter")
        .map(String::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    let at_scope = filter.contains("atScope()");
    let principal = filter
        .split("principalId eq '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .map(|p| {
            Uuid::parse_str(p)
                .map_err(|_| ArmError::bad("InvalidFilter", format!("'{p}' is not a valid principal id.")))
        })
        .transpose()?;
    let assigned_to = filter
        .split("assignedTo('")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .and_then(|p| Uuid::parse_str(p).ok())
        .map(|p| identities(st, p));
    if !filter.is_empty() && !at_scope && principal.is_none() && assigned_to.is_none() {
        return Err(ArmError::bad(
            "UnsupportedFilter",
            format!(
                "The filter '{filter}' is not supported. Supported filters are atScope(), principalId eq '{{id}}' and assignedTo('{{id}}')."
            ),
        ));
    }
    Ok(all
        .iter()
        .filter(|a| {
            let above = scope_covers(&a.scope, scope);
            let below = scope_covers(scope, &a.scope);
            (above || (!at_scope && below))
                && principal.is_none_or(|p| a.principal_id == p)
                && assigned_to
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&a.principal_id))
        })
        .map(listed_assignment_json)
        .collect())
}

fn put_assignment(sim: &Sim, call: &Call, scope: &str, name: Uuid) -> Result<(StatusCode, Value), ArmError> {
    let body: Value = serde_json::from_slice(&call.body).map_err(|e| {
        ArmError::bad(
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: {e}"),
        )
    })?;
    let props = body.get("properties").cloned().unwrap_or(Value::Null);
    let rd = props
        .get("roleDefinitionId")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ArmError::bad(
                "InvalidRequestContent",
                "properties.roleDefinitionId is required.",
            )
        })?;
    let rd_name = rd
        .rsplit('/')
        .next()
        .and_then(|x| Uuid::parse_str(x).ok())
        .ok_or_else(|| {
            ArmError::bad(
                "InvalidRoleDefinitionId",
                format!("The role definition ID '{rd}' is not valid."),
            )
        })?;
    let principal = props
        .get("principalId")
        .and_then(Value::as_str)
        .and_then(|p| Uuid::parse_str(p).ok())
        .ok_or_else(|| {
            ArmError::bad(
                "InvalidRequestContent",
                "properties.principalId is required and must be a GUID.",
            )
        })?;
    let mut st = sim.write();
    authorize(
        &st,
        call.claims,
        scope,
        "Microsoft.Authorization/roleAssignments/write",
    )?;
    let tenant = st.tenant.tenant_id;
    let Some(def) = role_def(&st, &rd_name) else {
        return Err(ArmError::bad(
            "RoleDefinitionDoesNotExist",
            format!("The specified role definition with ID '{rd_name}' does not exist."),
        ));
    };
    if !def
        .assignable_scopes
        .iter()
        .any(|s| s == "/" || scope_covers(s, scope))
    {
        return Err(ArmError::bad(
            "InvalidRoleAssignmentScope",
            format!("The role definition '{rd_name}' cannot be assigned at scope '{scope}'."),
        ));
    }
    let Some(actual) = st.principal_type(&principal) else {
        return Err(ArmError::bad(
            "PrincipalNotFound",
            format!(
                "Principal {} does not exist in the directory {tenant}. Check that you have the correct principal ID. If you are creating this principal and then immediately assigning a role, this error might be related to a replication delay.",
                principal.simple()
            ),
        ));
    };
    if let Some(declared) = props.get("principalType").and_then(Value::as_str)
        && !eq(declared, ptype_name(actual))
    {
        return Err(ArmError::bad(
            "UnmatchedPrincipalType",
            format!(
                "The PrincipalType '{declared}' in the request does not match the type of principal {principal}, which is '{}'.",
                ptype_name(actual)
            ),
        ));
    }
    let a = AzureRoleAssignment {
        name,
        scope: scope.to_string(),
        role_definition: rd_name,
        principal_id: principal,
        principal_type: actual,
        created: rfc3339(now()),
        end: None,
    };
    let existed = st.tenant.azure.role_assignments.iter().any(|x| x.name == name);
    match st.add_azure_role_assignment(a.clone()) {
        Ok(()) => {
            let stored = st
                .tenant
                .azure
                .role_assignments
                .iter()
                .find(|x| x.name == name)
                .cloned()
                .unwrap_or(a);
            Ok((
                if existed {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                role_assignment_json(&stored),
            ))
        }
        Err(WriteError::AlreadyExists) => Err(ArmError::new(
            StatusCode::CONFLICT,
            "RoleAssignmentExists",
            "The role assignment already exists.",
        )),
        Err(WriteError::BadRequest(m)) => Err(ArmError::bad("RoleAssignmentUpdateNotPermitted", m)),
        Err(other) => Err(ArmError::bad("BadRequest", format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_globs() {
        assert!(scope_covers(
            "/subscriptions/a",
            "/subscriptions/a/resourceGroups/x"
        ));
        assert!(scope_covers("/subscriptions/A", "/subscriptions/a"));
        assert!(!scope_covers(
            "/subscriptions/a/resourceGroups/x",
            "/subscriptions/a"
        ));
        assert!(!scope_covers("/subscriptions/ab", "/subscriptions/abc"));
        assert!(scope_covers("/", "/subscriptions/a"));
        assert!(glob("*", "Microsoft.Authorization/roleAssignments/write"));
        assert!(glob("*/read", "Microsoft.Storage/storageAccounts/read"));
        assert!(!glob("*/read", "Microsoft.Authorization/roleAssignments/write"));
        assert!(glob(
            "Microsoft.Authorization/*/Write",
            "microsoft.authorization/roleassignments/write"
        ));
        assert!(glob(
            "Microsoft.Authorization/*",
            "Microsoft.Authorization/roleAssignments/delete"
        ));
    }
}
