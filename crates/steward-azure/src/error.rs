//! The connector's error type and its mapping onto the sync engine's [`ConnectorError`] classes
//! (throttled and transient ones are retried by the engine; refusals are `Unsupported`, with the reason).

use steward_sync::ConnectorError;

/// Why the Azure connector failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AzureError {
    /// ARM, Graph or the identity platform refused or failed (the message says what to do).
    #[error(transparent)]
    Microsoft(#[from] steward_msgraph::Error),
    /// The Entra ID part (users, groups, enterprise applications) failed.
    #[error(transparent)]
    Entra(#[from] steward_entra::EntraError),
    /// The Entra ID connector's listing failed (already classified for the engine).
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// A resource or entitlement handed back that this connector did not emit.
    #[error("{0} is not one this connector emitted")]
    Foreign(String),
    /// The external resource file could not be used.
    #[error("external resource file: {0}")]
    External(String),
    /// Provisioning was asked for but not enabled.
    #[error(
        "provisioning is not enabled: pass --provisioning (or set BATON_PROVISIONING=true) to let the Azure connector grant and revoke"
    )]
    ProvisioningDisabled,
    /// A grant or revoke that cannot be done, with the reason; nothing was changed.
    #[error("refused, nothing was changed: {0}")]
    Refused(String),
    /// The app may not write role assignments at this scope (ARM 403 AuthorizationFailed).
    #[error("the app may not change role assignments at {scope}: {message}")]
    WriteForbidden {
        /// The ARM scope.
        scope: String,
        /// What it needs (Owner or User Access Administrator there) and ARM's message.
        message: String,
    },
    /// A write whose outcome is unknown (the connection broke after sending).
    #[error("unconfirmed: {0}; run a sync to see whether it applied")]
    Unconfirmed(String),
}

impl From<AzureError> for ConnectorError {
    fn from(e: AzureError) -> Self {
        use steward_msgraph::Error as G;
        match e {
            AzureError::Microsoft(G::Throttled { retry_after, .. }) => {
                ConnectorError::RateLimited { retry_after }
            }
            AzureError::Microsoft(G::Transient { .. }) => ConnectorError::Transient(e.to_string()),
            AzureError::Microsoft(G::NotFound { .. }) => ConnectorError::NotFound(e.to_string()),
            AzureError::Entra(inner) => inner.into(),
            AzureError::Connector(inner) => inner,
            AzureError::ProvisioningDisabled | AzureError::Refused(_) => {
                ConnectorError::Unsupported(e.to_string())
            }
            other => ConnectorError::Fatal(other.to_string()),
        }
    }
}
