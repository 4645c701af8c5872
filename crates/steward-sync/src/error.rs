//! `SyncError`: why a sync or a provisioning call failed, and what to do.

use crate::ConnectorError;

/// Errors of the sync engine and provisioning helpers.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The c1z file could not be read or written.
    #[error(transparent)]
    C1z(#[from] steward_c1z::C1zError),
    /// The connector failed in a way that retrying does not fix.
    #[error("connector failed while {during}: {source}; progress is checkpointed, re-run to resume")]
    Connector {
        /// What the engine was doing.
        during: String,
        /// The connector's error.
        source: ConnectorError,
    },
    /// More objects vanished mid-sync than the warnings budget allows.
    #[error(
        "{count} objects were not found during the sync (budget {budget}); the tenant changed too much while syncing — re-run, or raise the warnings budget"
    )]
    TooManyWarnings {
        /// Warnings so far.
        count: u64,
        /// The budget.
        budget: u64,
    },
    /// The sync stopped before finishing (its writer went away, or the test hook fired); the file's
    /// working database keeps the last checkpoint for a resume.
    #[error("the sync was interrupted before it finished: {0}; re-run to resume from the last checkpoint")]
    Interrupted(String),
    /// A provisioning request names something the file does not hold.
    #[error("{0}")]
    NotFound(String),
}
