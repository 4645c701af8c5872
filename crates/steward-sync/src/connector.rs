//! The `Connector` trait: what the sync engine and provisioning need from a connector.
//!
//! Listing calls are paged: the engine passes the `next_page_token` of the previous page back (empty for
//! the first page) and stops when a page returns an empty token. Futures must be `Send` because the engine
//! runs calls concurrently on tokio tasks. Implement with `async fn` in the impl block.

use std::future::Future;
use std::time::Duration;

use steward_model::{Entitlement, Grant, Resource, ResourceId, ResourceType};

/// A page of results from a connector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Token of the next page; empty when this is the last one.
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// The last page: `items` and no next token.
    pub fn last(items: Vec<T>) -> Self {
        Self {
            items,
            next_page_token: String::new(),
        }
    }
}

/// What a connector can do with one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceTypeCapability {
    /// The resource type id.
    pub resource_type: String,
    /// It is synced.
    pub sync: bool,
    /// Its entitlements can be granted and revoked.
    pub provision: bool,
}

/// What a connector can do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Per resource type.
    pub resource_types: Vec<ResourceTypeCapability>,
}

/// A connector's failure, classified so that the engine knows what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectorError {
    /// The service throttled us: the engine waits `retry_after` and tries again.
    #[error("rate limited; retry after {retry_after:?}")]
    RateLimited {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The object vanished (HTTP 404 mid-sync): counted against the warnings budget, not fatal.
    #[error("not found: {0}")]
    NotFound(String),
    /// A transient failure (timeout, 5xx): retried with exponential back-off.
    #[error("transient failure: {0}")]
    Transient(String),
    /// The connector cannot do this (e.g. provisioning a read-only type).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Anything else: the sync stops (after checkpointing).
    #[error("{0}")]
    Fatal(String),
}

/// A Baton-style connector.
pub trait Connector: Send + Sync + 'static {
    /// Checks the configuration and credentials.
    fn validate(&self) -> impl Future<Output = Result<(), ConnectorError>> + Send;

    /// What the connector can sync and provision.
    fn capabilities(&self) -> Capabilities;

    /// The resource types it syncs.
    fn resource_types(&self) -> impl Future<Output = Result<Vec<ResourceType>, ConnectorError>> + Send;

    /// Resources of `resource_type`, top-level (`parent` = None) or children of `parent`.
    fn list_resources(
        &self,
        resource_type: &str,
        parent: Option<&ResourceId>,
        page_token: &str,
    ) -> impl Future<Output = Result<Page<Resource>, ConnectorError>> + Send;

    /// Entitlements on `resource`.
    fn list_entitlements(
        &self,
        resource: &Resource,
        page_token: &str,
    ) -> impl Future<Output = Result<Page<Entitlement>, ConnectorError>> + Send;

    /// Grants of entitlements on `resource`.
    fn list_grants(
        &self,
        resource: &Resource,
        page_token: &str,
    ) -> impl Future<Output = Result<Page<Grant>, ConnectorError>> + Send;

    /// One resource by id (partial syncs). The default lists the top-level resources of its type.
    fn get_resource(
        &self,
        id: &ResourceId,
    ) -> impl Future<Output = Result<Option<Resource>, ConnectorError>> + Send {
        async move {
            let mut token = String::new();
            loop {
                let page = self.list_resources(&id.resource_type, None, &token).await?;
                if let Some(r) = page.items.into_iter().find(|r| r.id.as_ref() == Some(id)) {
                    return Ok(Some(r));
                }
                if page.next_page_token.is_empty() {
                    return Ok(None);
                }
                token = page.next_page_token;
            }
        }
    }

    /// State to keep with the finished sync (for example Graph delta links), asked once after every
    /// listing is done; [`crate::previous_sync`] hands it back before the next sync, so that an incremental
    /// sync can read only what changed. Default: none.
    fn sync_state(&self) -> impl Future<Output = Result<Option<String>, ConnectorError>> + Send {
        async { Ok(None) }
    }

    /// Grants `entitlement` to `principal`; returns the resulting grants.
    fn grant(
        &self,
        principal: &Resource,
        entitlement: &Entitlement,
    ) -> impl Future<Output = Result<Vec<Grant>, ConnectorError>> + Send;

    /// Revokes `grant`.
    fn revoke(&self, grant: &Grant) -> impl Future<Output = Result<(), ConnectorError>> + Send;
}
