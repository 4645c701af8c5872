//! Client-credentials tokens from the Microsoft identity platform (v2.0 token endpoint), with a secret or a
//! certificate (a JWT assertion signed with the certificate's key, `x5t` = SHA-1 thumbprint).
//!
//! Invariants: one cached token per scope, refreshed before it expires (a margin of a fifth of its
//! lifetime, at most five minutes); one refresh at a time per provider; token endpoint errors are mapped to
//! [`Error`] variants that name the problem (wrong or expired secret, unknown tenant, unknown app).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use sha1::Digest;
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// How the app proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A client secret.
    Secret(Secret),
    /// A certificate: its PEM (for the thumbprint) and its RSA private key in PEM (PKCS#1 or PKCS#8).
    Certificate {
        /// The public certificate, PEM.
        certificate_pem: String,
        /// The private key, PEM.
        private_key_pem: Secret,
    },
}

/// An access token and when to stop using it.
#[derive(Clone)]
struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// Fetches and caches app-only tokens for one app in one tenant.
pub struct TokenProvider {
    http: reqwest::Client,
    token_url: String,
    tenant: String,
    client_id: String,
    credential: Credential,
    cache: Mutex<HashMap<String, Cached>>,
    fetched: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

impl TokenProvider {
    /// A provider for `client_id` in `tenant` at login base URL `login` (e.g. `https://login.microsoftonline.com`).
    pub fn new(
        http: reqwest::Client,
        login: &str,
        tenant: &str,
        client_id: &str,
        credential: Credential,
    ) -> Result<TokenProvider> {
        if tenant.trim().is_empty() {
            return Err(Error::Config(
                "the tenant id is empty: set --entra-tenant-id (BATON_ENTRA_TENANT_ID)".into(),
            ));
        }
        if client_id.trim().is_empty() {
            return Err(Error::Config(
                "the client id is empty: set --entra-client-id (BATON_ENTRA_CLIENT_ID)".into(),
            ));
        }
        if let Credential::Secret(s) = &credential
            && s.is_empty()
        {
            return Err(Error::Config(
                "no credential: set --entra-client-secret (BATON_ENTRA_CLIENT_SECRET) or a certificate"
                    .into(),
            ));
        }
        if let Credential::Certificate { certificate_pem, .. } = &credential {
            thumbprint(certificate_pem)?;
        }
        Ok(TokenProvider {
            http,
            token_url: format!(
                "{}/{}/oauth2/v2.0/token",
                login.trim_end_matches('/'),
                tenant.trim()
            ),
            tenant: tenant.trim().to_owned(),
            client_id: client_id.trim().to_owned(),
            credential,
            cache: Mutex::new(HashMap::new()),
            fetched: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// A valid token for `scope`, from the cache or freshly fetched.
    pub async fn token(&self, scope: &str) -> Result<Secret> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(scope)
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch(scope).await?;
        let token = fresh.token.clone();
        cache.insert(scope.to_owned(), fresh);
        Ok(token)
    }

    /// Drops the cached token for `scope` if it is `rejected` (after a 401), so the next call refetches.
    pub async fn invalidate(&self, scope: &str, rejected: &Secret) {
        let mut cache = self.cache.lock().await;
        if cache.get(scope).is_some_and(|c| c.token == *rejected) {
            cache.remove(scope);
        }
    }

    /// Tokens fetched so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fetch(&self, scope: &str) -> Result<Cached> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", scope.to_owned()),
        ];
        match &self.credential {
            Credential::Secret(s) => form.push(("client_secret", s.expose().to_owned())),
            Credential::Certificate {
                certificate_pem,
                private_key_pem,
            } => {
                let a = assertion(&self.client_id, &self.token_url, certificate_pem, private_key_pem)?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", a));
            }
        }
        let mut last = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(crate::retry::backoff(attempt)).await;
            }
            let resp = match self.http.post(&self.token_url).form(&form).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = format!("cannot reach the token endpoint {}: {e}", self.token_url);
                    continue;
                }
            };
            let status = resp.status();
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last = format!("the token endpoint's answer was cut off: {e}");
                    continue;
                }
            };
            if status.is_server_error() || status.as_u16() == 429 {
                last = format!("the token endpoint answered HTTP {status}");
                continue;
            }
            if status.is_success() {
                let Ok(t) = serde_json::from_slice::<TokenResponse>(&body) else {
                    last = "the token endpoint's answer is not a token".into();
                    continue;
                };
                let secs = t
                    .expires_in
                    .as_ref()
                    .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
                    .unwrap_or(3599);
                let margin = (secs / 5).min(300);
                self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(Cached {
                    token: Secret::new(t.access_token),
                    refresh_at: Instant::now() + Duration::from_secs(secs.saturating_sub(margin)),
                });
            }
            let e: TokenError = serde_json::from_slice(&body).unwrap_or_default();
            return Err(self.map_error(status.as_u16(), e));
        }
        Err(Error::Transient {
            what: format!("POST {}", self.token_url),
            attempts: 5,
            message: last,
        })
    }

    fn map_error(&self, status: u16, e: TokenError) -> Error {
        let code = e.error_codes.first().copied().unwrap_or_else(|| {
            e.error_description
                .strip_prefix("AADSTS")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        });
        let message = e
            .error_description
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        match code {
            7000215 => Error::InvalidClient {
                code,
                message,
                hint: "the client secret is wrong: use the secret's Value (not its Secret ID) from the app registration's Certificates & secrets page",
            },
            7000222 => Error::InvalidClient {
                code,
                message,
                hint: "the client secret has expired: create a new secret in the app registration and update --entra-client-secret",
            },
            7000218 => Error::InvalidClient {
                code,
                message,
                hint: "no credential was sent: set --entra-client-secret or a certificate",
            },
            700027 => Error::InvalidClient {
                code,
                message,
                hint: "the certificate is not registered on the app, or the assertion is invalid: upload the certificate to the app registration",
            },
            90002 => Error::UnknownTenant {
                tenant: self.tenant.clone(),
            },
            700016 => Error::UnknownApplication {
                client_id: self.client_id.clone(),
                tenant: self.tenant.clone(),
            },
            _ => Error::TokenRefused {
                error: if e.error.is_empty() {
                    format!("HTTP {status}")
                } else {
                    e.error
                },
                code,
                message,
            },
        }
    }
}

/// The `x5t` of a PEM certificate: base64url(SHA-1(DER)).
pub fn thumbprint(certificate_pem: &str) -> Result<String> {
    let der = pem_block(certificate_pem, "CERTIFICATE")
        .ok_or_else(|| Error::Config("the certificate file holds no PEM CERTIFICATE block".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&der)))
}

fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// A client assertion: RS256 JWT with `x5t`, `aud` = token URL, `iss` = `sub` = client id, 10 minutes.
fn assertion(client_id: &str, token_url: &str, cert_pem: &str, key_pem: &Secret) -> Result<String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5t = Some(thumbprint(cert_pem)?);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.expose().as_bytes()).map_err(|e| {
        Error::Config(format!(
            "the certificate's private key is not an RSA key in PEM (PKCS#1 or PKCS#8): {e}"
        ))
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "aud": token_url, "iss": client_id, "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(), "nbf": now, "iat": now, "exp": now + 600,
    });
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| Error::Config(format!("cannot sign the client assertion: {e}")))
}
