//! Microsoft identity platform auth and a throttle-aware HTTP client for Microsoft Graph and Azure Resource
//! Manager, used by the Entra ID and Azure connectors.
//!
//! * [`cloud`]: national clouds from the `graph_domain` setting, endpoint overrides (scopes never change).
//! * [`auth`]: client-credentials tokens with a secret or a certificate assertion; cached, refreshed early.
//! * [`budget`]: one resource-unit budget per app and tenant, shaped like Graph's, adapting to 429s and
//!   `x-ms-throttle-limit-percentage`.
//! * [`client`]: GETs with retries (jitter, 5xx, resets, timeouts, cut-off bodies), `@odata.nextLink`
//!   paging, `$batch` (20 per call, inner 429s retried), delta queries; bounded concurrency; writes
//!   ([`Client::write`]) resent only when they certainly did not apply, otherwise reported unconfirmed.
//! * [`error`]: one error type whose variants say what to do; [`secret`]: redacted secrets.
//!
//! ```no_run
//! # async fn f() -> steward_msgraph::Result<()> {
//! use steward_msgraph::*;
//! let ep = Endpoints::new("graph.microsoft.com", None, None, None)?;
//! let ms = Microsoft::new(Config::new(ep, "contoso.onmicrosoft.com", "client-id",
//!     Credential::Secret(Secret::new("…"))))?;
//! let graph = ms.graph();
//! let users = graph.get_all("/v1.0/users?$select=id,displayName&$top=999", false).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod budget;
pub mod client;
pub mod cloud;
pub mod error;
pub mod retry;
pub mod secret;

pub use auth::{Credential, TokenProvider};
pub use budget::Budget;
pub use client::{Api, Client, Config, Microsoft, ODataPage, StatsSnapshot, WriteMethod, Written};
pub use cloud::{Cloud, Endpoints};
pub use error::{Error, Result, graph_permission_for, graph_write_permission_for};
pub use retry::RetryPolicy;
pub use secret::Secret;
