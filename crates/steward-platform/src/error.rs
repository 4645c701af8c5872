//! The platform's one error type. The HTTP layer maps each variant to a status in exactly one place.

/// Everything that can go wrong in the platform.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// No credentials, or credentials that are not valid.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Valid credentials without the role this needs.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The thing asked for does not exist.
    #[error("{kind} not found: {id}")]
    NotFound {
        /// What kind of thing.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The request is not valid (what is wrong, in words a user can act on).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The request conflicts with the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A sync file could not be read or ingested.
    #[error("sync file rejected: {0}")]
    SyncFile(String),
    /// A connector failed.
    #[error("connector failed: {0}")]
    Connector(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Encryption or key handling failed.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// A file could not be read or written.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl PlatformError {
    /// A not-found error.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        PlatformError::NotFound { kind, id: id.into() }
    }
}

impl From<steward_c1z::C1zError> for PlatformError {
    fn from(e: steward_c1z::C1zError) -> Self {
        PlatformError::SyncFile(e.to_string())
    }
}

/// Results of the platform.
pub type Result<T, E = PlatformError> = std::result::Result<T, E>;
