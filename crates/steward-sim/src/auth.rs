//! The Microsoft identity platform, emulated: the v2.0 token endpoint (client secret, certificate
//! assertion, authorization code, refresh token), OpenID metadata, JWKS, instance discovery, the authorize
//! and admin-consent endpoints, and the check of the access token on every Graph and ARM call.
//!
//! Access tokens are RS256 JWTs signed with a key generated at start. App-only Graph tokens carry `roles`:
//! the values of the Microsoft Graph app roles assigned to the app's service principal, so granting or
//! removing a permission in the tenant changes the next token. Errors follow Microsoft's AADSTS envelope.

// Errors here are finished HTTP responses (Microsoft's AADSTS bodies); boxing them buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::catalog;
use crate::ctx::{DelegatedGrant, Sim};
use crate::der;
use crate::util::{now, rfc3339};

/// The emulator's token-signing key.
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub kid: String,
    /// base64url modulus and exponent for the JWKS document.
    pub n: String,
    pub e: String,
}

impl Keys {
    pub fn generate() -> Result<Keys, crate::SimError> {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .map_err(|e| crate::SimError::Tls(format!("cannot generate the token-signing key: {e}")))?;
        let encoding = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes())
            .map_err(|e| crate::SimError::Tls(format!("token-signing key: {e}")))?;
        use rcgen::PublicKeyData;
        let spki = kp.subject_public_key_info();
        let (n, e) = der::rsa_components(&spki)
            .ok_or_else(|| crate::SimError::Tls("token-signing key: unreadable public key".into()))?;
        let pkcs1 = der::rsa_pkcs1(&spki)
            .ok_or_else(|| crate::SimError::Tls("token-signing key: unreadable public key".into()))?;
        let decoding = DecodingKey::from_rsa_der(pkcs1);
        use sha1::Digest;
        let kid = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&spki));
        Ok(Keys {
            encoding,
            decoding,
            kid,
            n: URL_SAFE_NO_PAD.encode(n),
            e: URL_SAFE_NO_PAD.encode(e),
        })
    }
}

/// The claims of an access token the emulator issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub appid: String,
    /// "1" secret, "2" certificate, "0" public client.
    pub appidacr: String,
    pub idp: String,
    /// The service principal (app-only) or the user (delegated).
    pub oid: String,
    pub sub: String,
    pub tid: String,
    pub uti: String,
    pub ver: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Delegated scopes, space separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn: Option<String>,
}

impl Claims {
    /// Whether the caller holds any of these permissions (app roles or delegated scopes).
    pub fn has_any(&self, perms: &[&str]) -> bool {
        perms.iter().any(|p| {
            self.roles.iter().any(|r| r == p)
                || self.scp.as_deref().is_some_and(|s| s.split(' ').any(|x| x == *p))
        })
    }

    pub fn oid(&self) -> Uuid {
        Uuid::parse_str(&self.oid).unwrap_or_default()
    }
}

/// Which API a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    Graph,
    Arm,
}

const GRAPH_RESOURCES: &[&str] = &[
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
    "00000003-0000-0000-c000-000000000000",
];
const ARM_RESOURCES: &[&str] = &[
    "https://management.azure.com",
    "https://management.core.windows.net",
    "https://management.usgovcloudapi.net",
    "https://management.core.usgovcloudapi.net",
    "https://management.chinacloudapi.cn",
    "https://management.core.chinacloudapi.cn",
];

/// Maps a requested scope (`https://graph.microsoft.com/.default`, a national cloud's, or ARM's) to the API
/// and the `aud` claim. Clients keep Microsoft's scope even when their endpoints point at the emulator.
fn resource_of(scope: &str) -> Option<(Audience, String)> {
    let first = scope
        .split(' ')
        .find(|s| s.ends_with("/.default") || s.contains("://"))?;
    let resource = first.trim_end_matches("/.default").trim_end_matches('/');
    let known = |list: &[&str]| list.iter().any(|r| r.eq_ignore_ascii_case(resource));
    if known(GRAPH_RESOURCES) {
        let aud = if resource.starts_with("http") && known(GRAPH_RESOURCES) {
            resource.to_string()
        } else {
            "https://graph.microsoft.com".to_string()
        };
        return Some((Audience::Graph, aud));
    }
    if known(ARM_RESOURCES) {
        return Some((Audience::Arm, "https://management.core.windows.net/".to_string()));
    }
    None
}

fn audience_of(aud: &str) -> Option<Audience> {
    let a = aud.trim_end_matches('/');
    if GRAPH_RESOURCES.iter().any(|r| r.eq_ignore_ascii_case(a)) {
        Some(Audience::Graph)
    } else if ARM_RESOURCES.iter().any(|r| r.eq_ignore_ascii_case(a)) {
        Some(Audience::Arm)
    } else {
        None
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    WrongAudience(String),
    WrongTenant,
    Revoked,
}

/// Checks the `Authorization: Bearer` header for `want`.
pub fn check_bearer(sim: &Sim, headers: &HeaderMap, want: Audience) -> Result<Claims, TokenError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if sim.revoked.lock().is_ok_and(|r| r.contains(token)) {
        return Err(TokenError::Revoked);
    }
    // A signature is checked once per token; later calls only re-check expiry (as Microsoft's front
    // ends cache validated tokens too).
    let cached = sim.verified.read().ok().and_then(|c| c.get(token).cloned());
    let claims = match cached {
        Some(c) => {
            if c.exp <= now().unix_timestamp() {
                return Err(TokenError::Expired);
            }
            c
        }
        None => {
            let mut v = Validation::new(Algorithm::RS256);
            v.validate_aud = false;
            v.leeway = 0;
            v.required_spec_claims = ["exp".to_string()].into_iter().collect();
            let data = jsonwebtoken::decode::<Claims>(token, &sim.keys.decoding, &v).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    _ => TokenError::Malformed,
                }
            })?;
            if let Ok(mut c) = sim.verified.write() {
                if c.len() > 10_000 {
                    c.clear();
                }
                c.insert(token.to_string(), data.claims.clone());
            }
            data.claims
        }
    };
    if audience_of(&claims.aud) != Some(want) {
        return Err(TokenError::WrongAudience(claims.aud));
    }
    if claims.tid != sim.read().tenant.tenant_id.to_string() {
        return Err(TokenError::WrongTenant);
    }
    Ok(claims)
}

/// Marks a token revoked (used by the `revoke` fault).
pub fn revoke(sim: &Sim, headers: &HeaderMap) {
    if let Some(t) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        && let Ok(mut r) = sim.revoked.lock()
    {
        r.insert(t.trim().to_string());
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/token", post(token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/{tenant}/discovery/keys", get(jwks))
        .route("/common/discovery/instance", get(instance_discovery))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
        .route("/{tenant}/adminconsent", get(admin_consent))
        .route("/{tenant}/v2.0/adminconsent", get(admin_consent))
        .with_state(sim)
}

/// `https://host[:port]` as the client addressed us.
pub fn base_url(headers: &HeaderMap, scheme: &str) -> String {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

fn scheme(headers: &HeaderMap) -> &'static str {
    match headers.get("x-steward-scheme").and_then(|v| v.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    }
}

/// Microsoft's AADSTS error response.
pub fn aadsts(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let trace = Uuid::new_v4();
    let corr = Uuid::new_v4();
    let ts = rfc3339(now());
    let stamp = ts.replace('T', " ");
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {corr} Timestamp: {stamp}")
            .replacen(" Trace ID:", "\r\nTrace ID:", 1)
            .replacen(" Correlation ID:", "\r\nCorrelation ID:", 1)
            .replacen(" Timestamp:", "\r\nTimestamp:", 1),
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (
        status,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn tenant_matches(sim: &Sim, tenant: &str) -> bool {
    let st = sim.read();
    tenant.eq_ignore_ascii_case(&st.tenant.tenant_id.to_string())
        || st
            .tenant
            .domains
            .iter()
            .any(|d| d.name.eq_ignore_ascii_case(tenant))
}

async fn token(
    State(sim): State<Arc<Sim>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    sim.stats.count("POST /{tenant}/oauth2/v2.0/token");
    if !tenant_matches(&sim, &tenant) {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        );
    }
    let Some(grant_type) = form.get("grant_type") else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    };
    let Some(client_id) = form
        .get("client_id")
        .cloned()
        .or_else(|| assertion_subject(form.get("client_assertion")))
    else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let tenant_id = sim.read().tenant.tenant_id;
    let app_id = match Uuid::parse_str(&client_id) {
        Ok(a) if sim.read().app_by_app_id.contains_key(&a) => a,
        _ => {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant_id}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
                ),
            );
        }
    };
    let base = base_url(&headers, scheme(&headers));
    let token_url = format!("{base}/{tenant}/oauth2/v2.0/token");
    // Client authentication.
    let appidacr = match authenticate_client(&sim, app_id, &form, &token_url) {
        Ok(acr) => acr,
        Err(resp) => return resp,
    };
    match grant_type.as_str() {
        "client_credentials" => {
            let scope = form
                .get("scope")
                .cloned()
                .or_else(|| form.get("resource").map(|r| format!("{r}/.default")));
            let Some((audience, aud)) = scope.as_deref().and_then(resource_of) else {
                return aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    70011,
                    &format!(
                        "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {} is not valid.",
                        scope.unwrap_or_default()
                    ),
                );
            };
            let st = sim.read();
            let Some(sp) = st
                .sp_by_app_id
                .get(&app_id)
                .map(|i| &st.tenant.service_principals[*i])
            else {
                return aadsts(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    7000112,
                    &format!("Application '{app_id}' is disabled."),
                );
            };
            let roles = if audience == Audience::Graph {
                granted_graph_roles(&st, sp.id)
            } else {
                Vec::new()
            };
            let claims = new_claims(&sim, tenant_id, aud, app_id, appidacr, sp.id, roles, None, None);
            drop(st);
            issue(&sim, claims, None, None)
        }
        "authorization_code" | "refresh_token" => delegated(&sim, app_id, appidacr, grant_type, &form),
        other => aadsts(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
    }
}

fn assertion_subject(assertion: Option<&String>) -> Option<String> {
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(assertion?).ok()?;
    claims.get("sub")?.as_str().map(str::to_string)
}

/// Authenticates the client by secret or certificate assertion; returns `appidacr`.
fn authenticate_client(
    sim: &Sim,
    app_id: Uuid,
    form: &HashMap<String, String>,
    token_url: &str,
) -> Result<String, Response> {
    let st = sim.read();
    let Some(app) = st.app_by_app_id.get(&app_id).map(|i| &st.tenant.applications[*i]) else {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            "Application not found.",
        ));
    };
    let now_s = now();
    if let Some(secret) = form.get("client_secret") {
        let matching = app.secrets.iter().find(|s| s.secret == *secret);
        return match matching {
            Some(s) if crate::util::parse_rfc3339(&s.end).is_some_and(|end| end < now_s) => Err(aadsts(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000222,
                &format!(
                    "The provided client secret keys for app '{app_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."
                ),
            )),
            Some(_) => Ok("1".into()),
            None => Err(aadsts(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{app_id}'."
                ),
            )),
        };
    }
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Invalid JWT token. client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            ));
        }
        return verify_assertion(app, assertion, token_url).map(|_| "2".to_string());
    }
    Err(aadsts(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    ))
}

fn verify_assertion(
    app: &crate::model::Application,
    assertion: &str,
    token_url: &str,
) -> Result<(), Response> {
    let bad = |code: u32, msg: &str| aadsts(StatusCode::UNAUTHORIZED, "invalid_client", code, msg);
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| bad(50027, "Invalid JWT token. The token is malformed."))?;
    let thumb = header.x5t.clone().or(header.kid.clone()).unwrap_or_default();
    use sha1::Digest;
    let cred = app.certificates.iter().find(|c| {
        der::pem_decode(&c.certificate_pem, "CERTIFICATE").is_some_and(|d| {
            let t = sha1::Sha1::digest(&d);
            URL_SAFE_NO_PAD.encode(t) == thumb || hex_upper(&t) == thumb.to_uppercase()
        })
    });
    let Some(cred) = cred else {
        return Err(bad(
            700027,
            &format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumb}']"
            ),
        ));
    };
    let der_cert = der::pem_decode(&cred.certificate_pem, "CERTIFICATE").unwrap_or_default();
    let Some(pkcs1) = der::cert_spki(&der_cert).and_then(der::rsa_pkcs1) else {
        return Err(bad(
            700027,
            "The registered certificate does not hold an RSA key.",
        ));
    };
    let mut v = Validation::new(header.alg);
    v.algorithms = vec![Algorithm::RS256, Algorithm::PS256];
    v.validate_aud = false;
    v.required_spec_claims = ["exp".to_string()].into_iter().collect();
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &DecodingKey::from_rsa_der(pkcs1), &v)
        .map_err(|e| {
            bad(
                700027,
                &format!("Client assertion failed signature validation or has expired: {e}."),
            )
        })?;
    let c = data.claims;
    let aud = c.get("aud").and_then(|a| a.as_str()).unwrap_or("");
    let aud_ok = aud.eq_ignore_ascii_case(token_url)
        || aud.ends_with("/oauth2/v2.0/token")
        || aud.ends_with("/oauth2/token")
        || aud.ends_with("/v2.0");
    if !aud_ok {
        return Err(bad(
            700016,
            &format!(
                "The audience claim of the client assertion '{aud}' is invalid; expected '{token_url}'."
            ),
        ));
    }
    let app_id = app.app_id.to_string();
    if c.get("iss").and_then(|v| v.as_str()) != Some(app_id.as_str())
        || c.get("sub").and_then(|v| v.as_str()) != Some(app_id.as_str())
    {
        return Err(bad(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    Ok(())
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Values of Microsoft Graph app roles granted to a service principal.
fn granted_graph_roles(st: &crate::store::State, sp: Uuid) -> Vec<String> {
    let Ok(graph_app) = Uuid::parse_str(catalog::GRAPH_APP_ID) else {
        return Vec::new();
    };
    let Some(graph) = st
        .sp_by_app_id
        .get(&graph_app)
        .map(|i| &st.tenant.service_principals[*i])
    else {
        return Vec::new();
    };
    let mut roles: Vec<String> = st
        .assignments_by_resource
        .get(&graph.id)
        .into_iter()
        .flatten()
        .map(|&i| &st.tenant.app_role_assignments[i])
        .filter(|a| a.principal_id == sp)
        .filter_map(|a| {
            graph
                .app_roles
                .iter()
                .find(|r| r.id == a.app_role_id)
                .and_then(|r| r.value.clone())
        })
        .collect();
    roles.sort();
    roles
}

#[allow(clippy::too_many_arguments)]
fn new_claims(
    sim: &Sim,
    tenant: Uuid,
    aud: String,
    app_id: Uuid,
    appidacr: String,
    oid: Uuid,
    roles: Vec<String>,
    scp: Option<String>,
    upn: Option<String>,
) -> Claims {
    let iat = now().unix_timestamp();
    Claims {
        aud,
        iss: format!("https://sts.windows.net/{tenant}/"),
        iat,
        nbf: iat,
        exp: iat + sim.settings.token_lifetime as i64,
        appid: app_id.to_string(),
        appidacr,
        idp: format!("https://sts.windows.net/{tenant}/"),
        oid: oid.to_string(),
        sub: oid.to_string(),
        tid: tenant.to_string(),
        uti: URL_SAFE_NO_PAD.encode(Uuid::new_v4().as_bytes()),
        ver: "1.0".into(),
        roles,
        scp,
        upn,
    }
}

fn sign(sim: &Sim, claims: &Claims) -> Result<String, Response> {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.kid = Some(sim.keys.kid.clone());
    header.x5t = Some(sim.keys.kid.clone());
    jsonwebtoken::encode(&header, claims, &sim.keys.encoding).map_err(|e| {
        aadsts(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            90033,
            &format!("Could not sign the token: {e}"),
        )
    })
}

fn issue(sim: &Sim, claims: Claims, refresh: Option<String>, id_token: Option<String>) -> Response {
    let lifetime = claims.exp - claims.iat;
    let scope = claims.scp.clone();
    let access = match sign(sim, &claims) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access,
    });
    if let Some(s) = scope {
        body["scope"] = json!(s);
    }
    if let Some(r) = refresh {
        body["refresh_token"] = json!(r);
    }
    if let Some(i) = id_token {
        body["id_token"] = json!(i);
    }
    (
        StatusCode::OK,
        [
            ("content-type", "application/json; charset=utf-8"),
            ("cache-control", "no-store, no-cache"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn random_token() -> String {
    let mut b = Vec::with_capacity(48);
    for _ in 0..3 {
        b.extend_from_slice(Uuid::new_v4().as_bytes());
    }
    URL_SAFE_NO_PAD.encode(b)
}

fn delegated(
    sim: &Sim,
    app_id: Uuid,
    appidacr: String,
    grant_type: &str,
    form: &HashMap<String, String>,
) -> Response {
    let now_s = now().unix_timestamp();
    let grant = if grant_type == "authorization_code" {
        let code = form.get("code").cloned().unwrap_or_default();
        let g = sim.codes.lock().ok().and_then(|mut c| c.remove(&code));
        match g {
            Some(g) if g.expires > now_s && g.client_id == app_id => {
                if form.get("redirect_uri").is_some_and(|r| *r != g.redirect_uri) {
                    return aadsts(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        50148,
                        "The redirect_uri does not match the one used in the authorization request.",
                    );
                }
                g
            }
            _ => {
                return aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
                );
            }
        }
    } else {
        let rt = form.get("refresh_token").cloned().unwrap_or_default();
        let g = sim.refresh_tokens.lock().ok().and_then(|m| m.get(&rt).cloned());
        match g {
            Some(g) if g.client_id == app_id && g.expires > now_s => g,
            _ => {
                return aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid: the refresh token is not valid.",
                );
            }
        }
    };
    let st = sim.read();
    let Some(user) = st.tenant.users.iter().find(|u| u.id == grant.user_id) else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            50034,
            "The user account does not exist in the directory.",
        );
    };
    let upn = user.user_principal_name.clone();
    let tenant = st.tenant.tenant_id;
    drop(st);
    let scopes: Vec<String> = grant
        .scopes
        .iter()
        .filter(|s| !matches!(s.as_str(), "openid" | "profile" | "offline_access" | "email"))
        .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
        .filter(|s| s != ".default")
        .collect();
    let scp = if scopes.is_empty() {
        "User.Read".to_string()
    } else {
        scopes.join(" ")
    };
    let claims = new_claims(
        sim,
        tenant,
        "https://graph.microsoft.com".into(),
        app_id,
        appidacr,
        grant.user_id,
        Vec::new(),
        Some(scp),
        Some(upn.clone()),
    );
    let refresh = random_token();
    if let Ok(mut m) = sim.refresh_tokens.lock() {
        m.insert(
            refresh.clone(),
            DelegatedGrant {
                expires: now_s + 90 * 86_400,
                ..grant.clone()
            },
        );
    }
    let id_claims = json!({
        "aud": app_id, "iss": format!("https://login.microsoftonline.com/{tenant}/v2.0"), "iat": now_s, "nbf": now_s,
        "exp": now_s + 3600, "oid": grant.user_id, "sub": grant.user_id, "tid": tenant, "preferred_username": upn, "ver": "2.0",
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(sim.keys.kid.clone());
    let id_token = jsonwebtoken::encode(&header, &id_claims, &sim.keys.encoding).ok();
    issue(sim, claims, Some(refresh), id_token)
}

async fn openid_configuration(
    State(sim): State<Arc<Sim>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    sim.stats
        .count("GET /{tenant}/v2.0/.well-known/openid-configuration");
    if !tenant_matches(&sim, &tenant) && !matches!(tenant.as_str(), "common" | "organizations") {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let base = base_url(&headers, scheme(&headers));
    let tid = sim.read().tenant.tenant_id;
    let body = json!({
        "token_endpoint": format!("{base}/{tid}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tid}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{tid}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{base}/oidc/userinfo"),
        "authorization_endpoint": format!("{base}/{tid}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{tid}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{tid}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/{tid}/kerberos"),
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    });
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn jwks(State(sim): State<Arc<Sim>>) -> Response {
    sim.stats.count("GET /{tenant}/discovery/v2.0/keys");
    let body = json!({"keys": [{
        "kty": "RSA", "use": "sig", "kid": sim.keys.kid, "x5t": sim.keys.kid, "n": sim.keys.n, "e": sim.keys.e,
    }]});
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn instance_discovery(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    sim.stats.count("GET /common/discovery/instance");
    let base = base_url(&headers, scheme(&headers));
    let host = base.split("://").nth(1).unwrap_or("localhost").to_string();
    let tenant = q
        .get("authorization_endpoint")
        .and_then(|a| a.split('/').nth(3).map(str::to_string))
        .unwrap_or_else(|| "common".into());
    let body = json!({
        "tenant_discovery_endpoint": format!("{base}/{tenant}/v2.0/.well-known/openid-configuration"),
        "api-version": "1.1",
        "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
    });
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// The authorize endpoint signs in without a page: as the user named by `login_hint`, or the first
/// enabled Global Administrator, and redirects back with a code.
async fn authorize(
    State(sim): State<Arc<Sim>>,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    sim.stats.count("GET /{tenant}/oauth2/v2.0/authorize");
    if !tenant_matches(&sim, &tenant) && !matches!(tenant.as_str(), "common" | "organizations") {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let Some(client_id) = q.get("client_id").and_then(|c| Uuid::parse_str(c).ok()) else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request must contain 'client_id'.",
        );
    };
    let Some(redirect) = q.get("redirect_uri").cloned() else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request must contain 'redirect_uri'.",
        );
    };
    let st = sim.read();
    if !st.app_by_app_id.contains_key(&client_id) {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found."),
        );
    }
    let global_admin = Uuid::parse_str(catalog::DIRECTORY_ROLES[0].0).unwrap_or_default();
    let user = match q.get("login_hint") {
        Some(hint) => st.user(hint).map(|u| u.id),
        None => st
            .tenant
            .role_assignments
            .iter()
            .filter(|r| r.role_definition_id == global_admin)
            .find_map(|r| {
                st.user(&r.principal_id.to_string())
                    .filter(|u| u.account_enabled)
                    .map(|u| u.id)
            }),
    };
    drop(st);
    let Some(user) = user else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50034,
            "The user account does not exist in the directory.",
        );
    };
    let code = random_token();
    let scopes = q
        .get("scope")
        .map(|s| s.split(' ').map(str::to_string).collect())
        .unwrap_or_default();
    if let Ok(mut c) = sim.codes.lock() {
        c.insert(
            code.clone(),
            DelegatedGrant {
                client_id,
                user_id: user,
                scopes,
                redirect_uri: redirect.clone(),
                expires: now().unix_timestamp() + 600,
            },
        );
    }
    let mut target = match url::Url::parse(&redirect) {
        Ok(u) => u,
        Err(_) => {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50011,
                "The redirect URI is not a valid URL.",
            );
        }
    };
    target.query_pairs_mut().append_pair("code", &code);
    if let Some(s) = q.get("state") {
        target.query_pairs_mut().append_pair("state", s);
    }
    (StatusCode::FOUND, [("location", target.to_string())]).into_response()
}

async fn admin_consent(
    State(sim): State<Arc<Sim>>,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    sim.stats.count("GET /{tenant}/adminconsent");
    let tid = sim.read().tenant.tenant_id;
    let Some(redirect) = q.get("redirect_uri") else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request must contain 'redirect_uri'.",
        );
    };
    let Ok(mut target) = url::Url::parse(redirect) else {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50011,
            "The redirect URI is not a valid URL.",
        );
    };
    let _ = tenant;
    target
        .query_pairs_mut()
        .append_pair("admin_consent", "True")
        .append_pair("tenant", &tid.to_string());
    if let Some(s) = q.get("state") {
        target.query_pairs_mut().append_pair("state", s);
    }
    (StatusCode::FOUND, [("location", target.to_string())]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_map_to_audiences() {
        assert_eq!(
            resource_of("https://graph.microsoft.com/.default").map(|r| r.0),
            Some(Audience::Graph)
        );
        assert_eq!(
            resource_of("https://graph.microsoft.us/.default").map(|r| r.0),
            Some(Audience::Graph)
        );
        assert_eq!(
            resource_of("https://management.azure.com//.default").map(|r| r.0),
            Some(Audience::Arm)
        );
        assert_eq!(resource_of("https://example.com/.default"), None);
        assert_eq!(
            audience_of("https://management.core.windows.net/"),
            Some(Audience::Arm)
        );
        assert_eq!(
            audience_of("00000003-0000-0000-c000-000000000000"),
            Some(Audience::Graph)
        );
    }
}
