//! The connector's error type, and how it maps onto the sync engine's [`ConnectorError`] classes
//! (throttled and transient ones are retried by the engine; a missing permission stops the sync with the
//! permission's name).

use steward_sync::ConnectorError;

/// Why the Entra ID connector failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EntraError {
    /// Graph or the identity platform refused or failed (the message says what to do).
    #[error(transparent)]
    Graph(#[from] steward_msgraph::Error),
    /// A resource handed back by the engine lacks what this connector put in it.
    #[error("resource {0} is not one this connector emitted (missing id or profile)")]
    ForeignResource(String),
    /// Provisioning is not part of this connector yet.
    #[error(
        "provisioning through the Entra ID connector is not available yet (tracked in issue 5); this build syncs only"
    )]
    ProvisioningUnavailable,
    /// Provisioning was asked for but not enabled.
    #[error(
        "provisioning is not enabled: pass --provisioning (or set BATON_PROVISIONING=true) to let the Entra ID connector grant and revoke"
    )]
    ProvisioningDisabled,
    /// The previous sync in the file could not be read for an incremental sync.
    #[error(
        "cannot read the previous sync in the file for an incremental sync: {0}; run without --incremental for a full sync"
    )]
    Previous(String),
    /// A grant or revoke that cannot be done, with the reason; nothing was changed.
    #[error("refused, nothing was changed: {0}")]
    Refused(String),
}

impl From<EntraError> for ConnectorError {
    fn from(e: EntraError) -> Self {
        use steward_msgraph::Error as G;
        match e {
            EntraError::Graph(G::Throttled { retry_after, .. }) => {
                ConnectorError::RateLimited { retry_after }
            }
            EntraError::Graph(G::Transient { .. }) => ConnectorError::Transient(e.to_string()),
            EntraError::Graph(G::NotFound { .. }) => ConnectorError::NotFound(e.to_string()),
            EntraError::ProvisioningUnavailable
            | EntraError::ProvisioningDisabled
            | EntraError::Refused(_) => ConnectorError::Unsupported(e.to_string()),
            other => ConnectorError::Fatal(other.to_string()),
        }
    }
}
