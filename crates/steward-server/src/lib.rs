//! Steward's HTTP API: `/api/v1/…` (JSON, bearer tokens), `/api/v1/openapi.json`, `/healthz`, `/metrics`.
//!
//! Routes are declared once in [`routes`]; the router and the OpenAPI document are both built from that
//! table, so the document lists every route. Platform errors become HTTP responses in exactly one place:
//! `impl IntoResponse for ApiError`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use steward_platform::*;
use tokio::io::AsyncWriteExt;

mod requests;

/// Shared state of the server.
#[derive(Clone)]
pub struct AppState {
    /// The platform.
    pub platform: Arc<Platform>,
    metrics: Arc<Metrics>,
}

/// (method, route, status) → (count, seconds).
type RequestCounts = BTreeMap<(String, String, u16), (u64, f64)>;

#[derive(Default)]
struct Metrics {
    requests: Mutex<RequestCounts>,
}

/// An API error: the one place where errors become HTTP.
#[derive(Debug)]
pub struct ApiError(pub PlatformError);

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        ApiError(e)
    }
}
impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError(PlatformError::Invalid(e.body_text()))
    }
}
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError(PlatformError::Invalid(e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self.0 {
            PlatformError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            PlatformError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            PlatformError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            PlatformError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            PlatformError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            PlatformError::SyncFile(_) => (StatusCode::UNPROCESSABLE_ENTITY, "sync_file_rejected"),
            PlatformError::Connector(_) => (StatusCode::BAD_GATEWAY, "connector_failed"),
            PlatformError::Db(_) | PlatformError::Crypto(_) | PlatformError::Io(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %self.0, "request failed");
        }
        let mut r = (
            status,
            axum::Json(json!({"error": {"code": code, "message": self.0.to_string()}})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED
            && let Ok(v) = "Bearer".parse()
        {
            r.headers_mut().insert("www-authenticate", v);
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON body whose rejections are JSON errors.
pub struct Body2<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body2<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Body2(v))
    }
}

/// Query string whose rejections are JSON errors.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(v) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Q(v))
    }
}

/// The authenticated caller.
pub struct Auth(pub Actor);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let h = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PlatformError::Unauthenticated("missing Authorization: Bearer <token>".into()))?;
        let t = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(|| {
                PlatformError::Unauthenticated("the Authorization header must be Bearer <token>".into())
            })?;
        Ok(Auth(state.platform.authenticate(t.trim()).await?))
    }
}

fn ok<T: serde::Serialize>(v: T) -> ApiResult<Response> {
    Ok(axum::Json(v).into_response())
}

// ---- handlers ----

/// `GET /healthz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`.
    status: &'static str,
    /// `sqlite` or `postgres`.
    database: &'static str,
}

async fn healthz(State(s): State<AppState>) -> Response {
    axum::Json(Health {
        status: "ok",
        database: s.platform.store().backend(),
    })
    .into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut out = String::from(
        "# HELP steward_http_requests_total HTTP requests by route and status.\n# TYPE steward_http_requests_total counter\n",
    );
    let mut dur = String::from(
        "# HELP steward_http_request_duration_seconds_sum Time spent serving requests.\n# TYPE steward_http_request_duration_seconds_sum counter\n",
    );
    if let Ok(m) = s.metrics.requests.lock() {
        for ((method, route, status), (n, secs)) in m.iter() {
            out.push_str(&format!("steward_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}\n"));
            dur.push_str(&format!("steward_http_request_duration_seconds_sum{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {secs}\n"));
        }
    }
    out.push_str(&dur);
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn openapi() -> Response {
    axum::Json(openapi_document()).into_response()
}

async fn me(Auth(a): Auth) -> ApiResult<Response> {
    ok(a)
}

/// `POST /api/v1/tokens`: a user token (`user`: id or UPN of a synced identity) or a role token
/// (`role` and `name`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenReq {
    /// The identity a user token acts as.
    user: Option<String>,
    /// `super_admin`, `connector_admin` or `user`.
    role: Option<String>,
    /// A name for the token.
    name: Option<String>,
}

async fn create_token(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body2(b): Body2<TokenReq>,
) -> ApiResult<Response> {
    let role = match b.role.as_deref() {
        Some(r) => Some(Role::parse(r).ok_or_else(|| PlatformError::Invalid(format!("unknown role {r:?}")))?),
        None => None,
    };
    let t = s
        .platform
        .api_create_token(&a, b.user.as_deref(), role, b.name.as_deref())
        .await?;
    Ok((StatusCode::CREATED, axum::Json(t)).into_response())
}

async fn list_connectors(
    State(s): State<AppState>,
    Auth(a): Auth,
    Q(q): Q<ListQuery>,
) -> ApiResult<Response> {
    ok(s.platform.connectors(&a, &q).await?)
}

async fn create_connector(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body2(b): Body2<CreateConnector>,
) -> ApiResult<Response> {
    let c = s.platform.create_connector(&a, b).await?;
    Ok((StatusCode::CREATED, axum::Json(c)).into_response())
}

async fn get_connector(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(s.platform.connector(&a, &id).await?)
}

async fn connector_status(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = s.platform.connector(&a, &id).await?;
    ok(ConnectorState {
        status: c.status,
        status_reason: c.status_reason,
        last_sync_at: c.last_sync_at,
        current_sync_id: c.current_sync_id,
    })
}

/// `GET /api/v1/connectors/{id}/status`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ConnectorState {
    /// Status.
    status: ConnectorStatus,
    /// Why it is in error.
    status_reason: Option<String>,
    /// Last successful ingest.
    last_sync_at: Option<String>,
    /// The sync whose snapshot is current.
    current_sync_id: Option<String>,
}

/// `GET /api/v1/idp-entitlements/{idpEntitlement}/bindings`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Bindings {
    /// The IdP entitlement.
    idp_entitlement_id: String,
    /// Its bindings: `{app_id, action, name, app_entitlement_id}` each.
    bindings: Vec<Value>,
}

async fn start_sync(State(s): State<AppState>, Auth(a): Auth, Path(id): Path<String>) -> ApiResult<Response> {
    let c = s.platform.start_sync(&a, &id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(c)).into_response())
}

async fn list_syncs(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Response> {
    ok(s.platform.syncs(&a, &id, &q).await?)
}

async fn upload_sync(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    // Check the role and the connector before reading the body.
    s.platform.connector(&a, &id).await?;
    let path = s.platform.work_file("c1z");
    let r = async {
        let mut f = tokio::fs::File::create(&path).await.map_err(PlatformError::Io)?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| PlatformError::Invalid(format!("upload interrupted: {e}")))?;
            f.write_all(&chunk).await.map_err(PlatformError::Io)?;
        }
        f.flush().await.map_err(PlatformError::Io)?;
        drop(f);
        s.platform.upload_sync(&a, &id, &path).await
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    Ok((StatusCode::CREATED, axum::Json(r?)).into_response())
}

#[derive(Deserialize, Default, utoipa::IntoParams)]
struct AppsQuery {
    managed: Option<bool>,
    q: Option<String>,
    limit: Option<u32>,
    page_token: Option<String>,
}

async fn list_apps(State(s): State<AppState>, Auth(a): Auth, Q(q): Q<AppsQuery>) -> ApiResult<Response> {
    let lq = ListQuery {
        q: q.q,
        limit: q.limit,
        page_token: q.page_token,
    };
    ok(s.platform.apps(&a, q.managed, &lq).await?)
}

async fn create_app(
    State(s): State<AppState>,
    Auth(a): Auth,
    Body2(b): Body2<CreateApp>,
) -> ApiResult<Response> {
    Ok((
        StatusCode::CREATED,
        axum::Json(s.platform.create_app(&a, b).await?),
    )
        .into_response())
}

async fn get_app(State(s): State<AppState>, Auth(a): Auth, Path(id): Path<String>) -> ApiResult<Response> {
    ok(s.platform.app(&a, &id).await?)
}

async fn manage_app(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let m: ManageApp = if body.iter().all(|b| b.is_ascii_whitespace()) {
        ManageApp::default()
    } else {
        serde_json::from_slice::<Option<ManageApp>>(&body)
            .map_err(|e| PlatformError::Invalid(format!("bad JSON body: {e}")))?
            .unwrap_or_default()
    };
    ok(s.platform.manage_app(&a, &id, m).await?)
}

async fn holders(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path((id, ent)): Path<(String, String)>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Response> {
    ok(s.platform.holders(&a, &id, &ent, &q).await?)
}

async fn linked(State(s): State<AppState>, Auth(a): Auth, Path(id): Path<String>) -> ApiResult<Response> {
    ok(json!({"items": s.platform.linked_entitlements(&a, &id).await?}))
}

async fn link(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path((id, idp)): Path<(String, String)>,
    Body2(b): Body2<LinkAction>,
) -> ApiResult<Response> {
    ok(s.platform.link(&a, &id, &idp, b).await?)
}

async fn bindings(State(s): State<AppState>, Auth(a): Auth, Path(idp): Path<String>) -> ApiResult<Response> {
    let bindings = s.platform.bindings_of(&a, &idp).await?;
    ok(Bindings {
        idp_entitlement_id: idp,
        bindings,
    })
}

async fn list_identities(
    State(s): State<AppState>,
    Auth(a): Auth,
    Q(q): Q<ListQuery>,
) -> ApiResult<Response> {
    ok(s.platform.identities(&a, &q).await?)
}

async fn get_identity(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(s.platform.identity(&a, &id).await?)
}

async fn identity_access(
    State(s): State<AppState>,
    Auth(a): Auth,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    ok(json!({"items": s.platform.access(&a, &id).await?}))
}

async fn not_found() -> ApiError {
    ApiError(PlatformError::not_found("route", "no such endpoint"))
}

/// One route: method, path, who may call it, summary, what it takes and answers, handler.
pub struct RouteDef {
    /// `get` or `post`.
    pub method: &'static str,
    /// Axum path (`{param}` style, as OpenAPI).
    pub path: &'static str,
    /// Roles, or `public`.
    pub auth: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// The request body.
    pub request: In,
    /// The successful response.
    pub response: Out,
    /// The query parameters (from the `utoipa::IntoParams` derive of the handler's query type).
    pub query: Option<ParamsFn>,
    handler: MethodRouter<AppState>,
}

/// The OpenAPI parameter objects of a query type.
pub type ParamsFn = fn() -> Vec<Value>;

/// The query parameters of `T`.
fn query<T: utoipa::IntoParams>() -> Vec<Value> {
    T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
        .iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .collect()
}

/// The schemas named so far in `components/schemas` (name → JSON schema).
pub type Schemas = BTreeMap<String, Value>;

/// Writes a type's schema (and those it refers to) into [`Schemas`] and returns the schema to put where
/// the type is used (a `$ref`, or an inline wrapper around one).
pub type SchemaFn = fn(&mut Schemas) -> Value;

/// A route's request body.
#[derive(Clone, Copy)]
pub enum In {
    /// None.
    Empty,
    /// A JSON document of this schema.
    Json(SchemaFn),
    /// A JSON document of this schema, or an empty body (defaults).
    Optional(SchemaFn),
    /// A file (`application/octet-stream`).
    File,
}

/// A route's successful response.
#[derive(Clone, Copy)]
pub enum Out {
    /// JSON with this status and schema.
    Json(u16, SchemaFn),
    /// Text of this content type.
    Text(&'static str),
}

const NO_BODY: In = In::Empty;

fn add_schema(out: &mut Schemas, name: &str, s: &utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) {
    if !out.contains_key(name) {
        out.insert(name.to_owned(), serde_json::to_value(s).unwrap_or(Value::Null));
    }
}

fn add_deps<T: utoipa::ToSchema>(out: &mut Schemas) {
    let mut deps = Vec::new();
    T::schemas(&mut deps);
    for (n, s) in &deps {
        add_schema(out, n, s);
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A type's own schema, by reference.
fn one<T: utoipa::ToSchema>(out: &mut Schemas) -> Value {
    add_deps::<T>(out);
    let name = T::name();
    add_schema(out, &name, &T::schema());
    reference(&name)
}

/// `{"items": [T]}`: the lists that are not paged.
fn items<T: utoipa::ToSchema>(out: &mut Schemas) -> Value {
    json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": one::<T>(out)}}})
}

/// [`Page`] of T, named `<T>Page`.
fn page<T: utoipa::ToSchema>(out: &mut Schemas) -> Value {
    one::<T>(out);
    add_deps::<Page<T>>(out);
    let name = format!("{}Page", T::name());
    add_schema(out, &name, &<Page<T> as utoipa::PartialSchema>::schema());
    reference(&name)
}

/// Every route of the server (the router and the OpenAPI document are built from this).
pub fn routes() -> Vec<RouteDef> {
    macro_rules! r {
        ($m:ident, $p:expr, $auth:expr, $s:expr, $h:expr, $req:expr, $resp:expr) => {
            r!($m, $p, $auth, $s, $h, $req, $resp, None)
        };
        ($m:ident, $p:expr, $auth:expr, $s:expr, $h:expr, $req:expr, $resp:expr, $query:expr) => {
            RouteDef {
                method: stringify!($m),
                path: $p,
                auth: $auth,
                summary: $s,
                request: $req,
                response: $resp,
                query: $query,
                handler: $m($h),
            }
        };
    }
    vec![
        r!(
            get,
            "/healthz",
            "public",
            "Liveness and the database backend",
            healthz,
            NO_BODY,
            Out::Json(200, one::<Health>)
        ),
        r!(
            get,
            "/metrics",
            "public",
            "Prometheus metrics",
            metrics,
            NO_BODY,
            Out::Text("text/plain")
        ),
        r!(
            get,
            "/api/v1/openapi.json",
            "public",
            "This document",
            openapi,
            NO_BODY,
            Out::Json(200, one::<Value>)
        ),
        r!(
            get,
            "/api/v1/me",
            "any",
            "The caller's token: role and identity",
            me,
            NO_BODY,
            Out::Json(200, one::<Actor>)
        ),
        r!(
            post,
            "/api/v1/tokens",
            "super_admin",
            "Mint a token ({user} or {role, name}); the secret is shown once",
            create_token,
            In::Json(one::<TokenReq>),
            Out::Json(201, one::<NewToken>)
        ),
        r!(
            get,
            "/api/v1/connectors",
            "super_admin, connector_admin",
            "List connectors (q, limit, page_token)",
            list_connectors,
            NO_BODY,
            Out::Json(200, page::<Connector>),
            Some(query::<ListQuery>)
        ),
        r!(
            post,
            "/api/v1/connectors",
            "super_admin, connector_admin",
            "Register a connector {kind, name, settings, owners}; secret settings are write-only",
            create_connector,
            In::Json(one::<CreateConnector>),
            Out::Json(201, one::<Connector>)
        ),
        r!(
            get,
            "/api/v1/connectors/{id}",
            "super_admin, connector_admin",
            "A connector (without secrets)",
            get_connector,
            NO_BODY,
            Out::Json(200, one::<Connector>)
        ),
        r!(
            get,
            "/api/v1/connectors/{id}/status",
            "super_admin, connector_admin",
            "not_connected, syncing, connected or error with the reason",
            connector_status,
            NO_BODY,
            Out::Json(200, one::<ConnectorState>)
        ),
        r!(
            post,
            "/api/v1/connectors/{id}/sync",
            "super_admin, connector_admin",
            "Run the connector now (202; poll status)",
            start_sync,
            NO_BODY,
            Out::Json(202, one::<Connector>)
        ),
        r!(
            get,
            "/api/v1/connectors/{id}/syncs",
            "super_admin, connector_admin",
            "Sync history with stats and logs",
            list_syncs,
            NO_BODY,
            Out::Json(200, page::<SyncRecord>),
            Some(query::<ListQuery>)
        ),
        r!(
            post,
            "/api/v1/connectors/{id}/syncs",
            "super_admin, connector_admin",
            "Upload a Baton .c1z (body = the file); it replaces the connector's snapshot atomically",
            upload_sync,
            In::File,
            Out::Json(201, one::<SyncRecord>)
        ),
        r!(
            get,
            "/api/v1/apps",
            "any",
            "The app catalog (managed=true|false, q, limit, page_token)",
            list_apps,
            NO_BODY,
            Out::Json(200, page::<App>),
            Some(query::<AppsQuery>)
        ),
        r!(
            post,
            "/api/v1/apps",
            "super_admin",
            "Create a managed app {name, description, owners}",
            create_app,
            In::Json(one::<CreateApp>),
            Out::Json(201, one::<AppDetail>)
        ),
        r!(
            get,
            "/api/v1/apps/{id}",
            "any",
            "An app with its entitlements and holder counts",
            get_app,
            NO_BODY,
            Out::Json(200, one::<AppDetail>)
        ),
        r!(
            post,
            "/api/v1/apps/{id}/manage",
            "super_admin",
            "Manage a discovered app {owners}; nothing changes in the IdP",
            manage_app,
            In::Optional(one::<ManageApp>),
            Out::Json(200, one::<AppDetail>)
        ),
        r!(
            get,
            "/api/v1/apps/{id}/entitlements/{entitlement}/holders",
            "super_admin, connector_admin, app owner",
            "Who holds an app entitlement",
            holders,
            NO_BODY,
            Out::Json(200, page::<Holder>),
            Some(query::<ListQuery>)
        ),
        r!(
            get,
            "/api/v1/apps/{id}/linked-entitlements",
            "super_admin, app owner",
            "IdP groups assigned to the app's enterprise application, with their bindings",
            linked,
            NO_BODY,
            Out::Json(200, items::<LinkedEntitlement>)
        ),
        r!(
            post,
            "/api/v1/apps/{id}/linked-entitlements/{idpEntitlement}",
            "super_admin, app owner",
            "Bind: {action: virtual_role, name} | {action: provision_for, entitlement} | {action: skip}",
            link,
            In::Json(one::<LinkAction>),
            Out::Json(200, one::<LinkedEntitlement>)
        ),
        r!(
            get,
            "/api/v1/idp-entitlements/{idpEntitlement}/bindings",
            "super_admin, connector_admin",
            "Bindings of an IdP entitlement (the IdP side)",
            bindings,
            NO_BODY,
            Out::Json(200, one::<Bindings>)
        ),
        r!(
            get,
            "/api/v1/identities",
            "super_admin, connector_admin",
            "Identities (q, limit, page_token)",
            list_identities,
            NO_BODY,
            Out::Json(200, page::<Identity>),
            Some(query::<ListQuery>)
        ),
        r!(
            get,
            "/api/v1/identities/{id}",
            "super_admin, connector_admin, self",
            "One identity (id or UPN)",
            get_identity,
            NO_BODY,
            Out::Json(200, one::<Identity>)
        ),
        r!(
            get,
            "/api/v1/identities/{id}/access",
            "super_admin, connector_admin, self",
            "Everything an identity holds, with paths",
            identity_access,
            NO_BODY,
            Out::Json(200, items::<AccessItem>)
        ),
        r!(
            get,
            "/api/v1/access-profiles",
            "any",
            "Access profiles (everyone is built in)",
            requests::list_profiles,
            NO_BODY,
            Out::Json(200, items::<AccessProfile>)
        ),
        r!(
            post,
            "/api/v1/access-profiles",
            "super_admin",
            "Define a profile {name, kind: group, group} | {name, kind: attribute, attributes}",
            requests::create_profile,
            In::Json(one::<CreateProfile>),
            Out::Json(201, one::<AccessProfile>)
        ),
        r!(
            get,
            "/api/v1/policies",
            "any",
            "Request policies",
            requests::list_policies,
            NO_BODY,
            Out::Json(200, items::<Policy>)
        ),
        r!(
            post,
            "/api/v1/policies",
            "super_admin",
            "Create a policy {name, steps | rules, require_justification, max_duration, allow_self_approval, revoke_drift}",
            requests::create_policy,
            In::Json(one::<PolicySpec>),
            Out::Json(201, one::<Policy>)
        ),
        r!(
            get,
            "/api/v1/apps/{id}/entitlements",
            "any",
            "An app's entitlements (their ids are what requests name)",
            requests::app_entitlements,
            NO_BODY,
            Out::Json(200, items::<AppEntitlement>)
        ),
        r!(
            get,
            "/api/v1/apps/{id}/entitlement-rules",
            "any",
            "What of the app is requestable, by whom, under which policy",
            requests::list_rules,
            NO_BODY,
            Out::Json(200, items::<EntitlementRule>)
        ),
        r!(
            post,
            "/api/v1/apps/{id}/entitlement-rules",
            "super_admin, app owner",
            "Make entitlements requestable {enabled, resource_types | entitlements, access_profiles, policy, max_duration}",
            requests::create_rule,
            In::Json(one::<RuleSpec>),
            Out::Json(201, one::<EntitlementRule>)
        ),
        r!(
            get,
            "/api/v1/catalog",
            "user token",
            "What the caller may request, and why",
            requests::catalog,
            NO_BODY,
            Out::Json(200, items::<CatalogItem>)
        ),
        r!(
            post,
            "/api/v1/requests",
            "user token",
            "Request access {entitlement, app?, justification, duration}",
            requests::create_request,
            In::Json(one::<CreateRequest>),
            Out::Json(201, one::<steward_platform::Request>)
        ),
        r!(
            get,
            "/api/v1/requests",
            "any (users see their own)",
            "Requests (mine=true, state, limit, page_token)",
            requests::list_requests,
            NO_BODY,
            Out::Json(200, page::<steward_platform::Request>),
            Some(query::<RequestQuery>)
        ),
        r!(
            get,
            "/api/v1/requests/{id}",
            "requester, approvers, app owners, admins",
            "A request with its steps, decisions and history",
            requests::get_request,
            NO_BODY,
            Out::Json(200, one::<steward_platform::Request>)
        ),
        r!(
            post,
            "/api/v1/requests/{id}/approve",
            "a current approver",
            "Approve the current step {comment?}",
            requests::approve,
            In::Optional(one::<Decide>),
            Out::Json(200, one::<steward_platform::Request>)
        ),
        r!(
            post,
            "/api/v1/requests/{id}/deny",
            "a current approver",
            "Deny the request {comment?}",
            requests::deny,
            In::Optional(one::<Decide>),
            Out::Json(200, one::<steward_platform::Request>)
        ),
        r!(
            post,
            "/api/v1/requests/{id}/cancel",
            "requester",
            "Withdraw a request before provisioning",
            requests::cancel,
            NO_BODY,
            Out::Json(200, one::<steward_platform::Request>)
        ),
        r!(
            post,
            "/api/v1/requests/{id}/retry",
            "super_admin, app owner",
            "Retry the provisioning of a failed request",
            requests::retry,
            NO_BODY,
            Out::Json(200, one::<steward_platform::Request>)
        ),
        r!(
            post,
            "/api/v1/requests/{id}/revoke",
            "super_admin, app owner, requester",
            "End provisioned access now (removed from the tenant)",
            requests::revoke,
            NO_BODY,
            Out::Json(200, one::<steward_platform::Request>)
        ),
        r!(
            get,
            "/api/v1/approvals",
            "user token",
            "Requests waiting for the caller's decision",
            requests::approvals,
            NO_BODY,
            Out::Json(200, page::<steward_platform::Request>),
            Some(query::<ListQuery>)
        ),
        r!(
            get,
            "/api/v1/audit",
            "super_admin",
            "The audit log (action, actor, target_type, target_id, since, until; format=json|jsonl|csv)",
            requests::audit,
            NO_BODY,
            Out::Json(200, page::<AuditEntry>),
            Some(query::<AuditQuery>)
        ),
        r!(
            get,
            "/api/v1/audit/verify",
            "super_admin",
            "Check the audit log's hash chain",
            requests::audit_verify,
            NO_BODY,
            Out::Json(200, one::<AuditVerdict>)
        ),
        r!(
            get,
            "/api/v1/tokens",
            "super_admin",
            "Tokens (never their secrets) and whether each is revoked",
            requests::list_tokens,
            NO_BODY,
            Out::Json(200, items::<Value>)
        ),
        r!(
            post,
            "/api/v1/tokens/{id}/revoke",
            "super_admin",
            "Revoke a token: it stops working at once",
            requests::revoke_token,
            NO_BODY,
            Out::Json(200, one::<Value>)
        ),
        r!(
            get,
            "/api/v1/webhooks",
            "super_admin",
            "Outbound webhooks",
            requests::list_webhooks,
            NO_BODY,
            Out::Json(200, items::<Webhook>)
        ),
        r!(
            post,
            "/api/v1/webhooks",
            "super_admin",
            "Add a webhook {url, events, format: slack|json}",
            requests::create_webhook,
            In::Json(one::<CreateWebhook>),
            Out::Json(201, one::<Webhook>)
        ),
    ]
}

/// The OpenAPI 3.1 document, built from [`routes`]: request and response schemas come from the
/// `utoipa::ToSchema` derives of the types the handlers parse and return.
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    let mut schemas = Schemas::new();
    let error = |code: &str| (code.to_owned(), json!({"$ref": "#/components/responses/Error"}));
    for r in routes() {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(r.query.map(|q| q()).unwrap_or_default());
        let (status, ok) = match r.response {
            Out::Json(status, f) => (
                status,
                json!({"description": "OK", "content": {"application/json": {"schema": f(&mut schemas)}}}),
            ),
            Out::Text(ct) => (
                200,
                json!({"description": "OK", "content": {ct: {"schema": {"type": "string"}}}}),
            ),
        };
        let mut responses = serde_json::Map::new();
        responses.insert(status.to_string(), ok);
        let mut codes = vec!["400", "404", "500"];
        if r.auth != "public" {
            codes.extend(["401", "403"]);
        }
        if r.method == "post" {
            codes.push("409");
        }
        if matches!(r.request, In::File) {
            codes.extend(["422", "502"]);
        }
        responses.extend(codes.into_iter().map(error));
        let mut op = json!({
            "operationId": format!("{}{}", r.method, r.path.replace(['/', '{', '}', '.', '-'], "_")),
            "summary": r.summary,
            "description": format!("Roles: {}.", r.auth),
            "parameters": params,
            "responses": responses,
        });
        let body = match r.request {
            In::Empty => None,
            In::Json(f) => Some((true, json!({"application/json": {"schema": f(&mut schemas)}}))),
            In::Optional(f) => Some((false, json!({"application/json": {"schema": f(&mut schemas)}}))),
            In::File => Some((
                true,
                json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}),
            )),
        };
        if let Some((required, content)) = body {
            op["requestBody"] = json!({"required": required, "content": content});
        }
        if r.auth == "public" {
            op["security"] = json!([]);
        }
        if let Some(o) = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
        {
            o.insert(r.method.to_owned(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Steward API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
            "responses": {"Error": {"description": "An error", "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}
            }}}}}
        },
        "security": [{"bearer": []}],
        "paths": paths
    })
}

async fn track(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let t = Instant::now();
    let resp = next.run(req).await;
    let secs = t.elapsed().as_secs_f64();
    if let Ok(mut m) = s.metrics.requests.lock() {
        let e = m.entry((method, route, resp.status().as_u16())).or_default();
        e.0 += 1;
        e.1 += secs;
    }
    resp
}

/// The router.
pub fn router(platform: Arc<Platform>) -> Router {
    let state = AppState {
        platform,
        metrics: Arc::default(),
    };
    let mut r = Router::new();
    for d in routes() {
        r = r.route(d.path, d.handler);
    }
    r.fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The bootstrap token, if this start minted it.
    pub bootstrap_token: Option<String>,
    /// The platform.
    pub platform: Arc<Platform>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops serving and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Opens the platform, bootstraps, binds `listen` and serves in the background (with scheduled syncs).
pub async fn start(
    opts: &OpenOptions,
    listen: SocketAddr,
    clock: Arc<dyn Clock>,
) -> Result<Server, PlatformError> {
    let platform = Arc::new(Platform::open(opts, clock).await?);
    let bootstrap_token = platform.bootstrap().await?.map(|t| t.token);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(Arc::clone(&platform));
    let sched = Arc::clone(&platform);
    let worker = Arc::clone(&platform);
    let task = tokio::spawn(async move {
        // The task worker: runs due tasks when woken by a write and at least every half second.
        let wake = worker.wake_signal();
        let work = tokio::spawn(async move {
            loop {
                if let Err(e) = worker.work().await {
                    tracing::warn!(error = %e, "task worker");
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), wake.notified()).await;
            }
        });
        let ticker = tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_secs(30));
            loop {
                iv.tick().await;
                if let Err(e) = sched.run_scheduled().await {
                    tracing::warn!(error = %e, "scheduled syncs");
                }
            }
        });
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        ticker.abort();
        work.abort();
        let _ = work.await;
    });
    Ok(Server {
        addr,
        bootstrap_token,
        platform,
        stop,
        task,
    })
}
