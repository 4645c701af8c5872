//! `C1zError`: everything that can go wrong reading or writing a c1z file, each with what to do about it.

use std::path::PathBuf;

/// Errors from reading, writing, expanding or diffing c1z files.
#[derive(Debug, thiserror::Error)]
pub enum C1zError {
    /// A file could not be read, written, renamed or removed.
    #[error("cannot {action} {path}: {error}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not chained, so that it prints once).
        error: std::io::Error,
    },
    /// The file does not start with a c1z magic number.
    #[error(
        "{path} is not a c1z file: it starts with {found:?}, expected \"C1ZF\\0\"; pass a sync file written by steward or a Baton connector"
    )]
    NotC1z {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        found: Vec<u8>,
    },
    /// The file is in the newer Pebble-based `C1Z3` format.
    #[error(
        "{path} is in the newer C1Z3 (Pebble) format, which steward does not read; re-run the connector with a baton-sdk that writes format v1 (C1ZF), or convert it with `baton export c1z`"
    )]
    C1z3 {
        /// The file.
        path: PathBuf,
    },
    /// The file is damaged: truncated, bad checksum, or not a SQLite database inside.
    #[error("{path} is corrupt or truncated: {detail}; re-run the sync to write a new file")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// Decompressing would exceed the size cap.
    #[error(
        "{path} decompresses to more than {limit} bytes; refusing to unpack it (raise the limit if the file is trusted)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap in bytes.
        limit: u64,
    },
    /// A SQLite statement failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row does not decode.
    #[error(
        "row {external_id:?} of {table} does not decode: {source}; the file is corrupt or not written by a c1.connector.v2 writer"
    )]
    Decode {
        /// The table.
        table: &'static str,
        /// The row's external id.
        external_id: String,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
    /// A model-level failure (annotations).
    #[error(transparent)]
    Model(#[from] steward_model::ModelError),
    /// An object handed to the writer lacks a field the file needs.
    #[error("{what} {id:?} has no {field}; set it before writing (builders in steward_model::builders do)")]
    Incomplete {
        /// Kind of object.
        what: &'static str,
        /// Its id.
        id: String,
        /// The missing field.
        field: &'static str,
    },
    /// The file holds no sync that fits the request.
    #[error("{0}")]
    NoSync(String),
    /// A writer method was called in the wrong state.
    #[error("{0}")]
    State(&'static str),
    /// An earlier write of this writer failed; what it wrote since its last checkpoint was rolled back.
    #[error(
        "an earlier write to the sync file failed ({0}); everything since the last checkpoint was rolled back: open the file again to resume the sync"
    )]
    Failed(String),
}

impl C1zError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |error| Self::Io { action, path, error }
    }
}

/// Result alias.
pub type Result<T, E = C1zError> = std::result::Result<T, E>;
