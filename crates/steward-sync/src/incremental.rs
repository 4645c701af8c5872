//! What an incremental sync starts from: the file's latest finished full sync and the connector state
//! kept with it.
//!
//! An incremental sync is still a full sync (`sync_type = full`, every resource, entitlement and grant
//! written), so readers, `diff` and cleanup treat it like any other; the connector only reads less from
//! the service: it reads the previous sync's rows through [`Previous::reader`] and asks the service for
//! what changed since, using the state it kept (e.g. Graph delta links).
//!
//! The state is stored in the finished sync's `sync_token` (the writer's checkpoint column, free once a
//! sync is finished; Baton readers treat it as opaque text), prefixed with [`STATE_PREFIX`]. A sync whose
//! token lacks the prefix (a sync by another tool, or by a connector without state) has no state: the
//! connector then does a full read.

use std::path::Path;

use steward_c1z::{C1zReader, SyncType};

use crate::SyncError;

/// Marks a `sync_token` that holds connector state.
pub const STATE_PREFIX: &str = "steward-state:v1:";

/// The `sync_token` that stores `state`.
pub fn state_token(state: &str) -> String {
    format!("{STATE_PREFIX}{state}")
}

/// The previous finished full sync of a file.
pub struct Previous {
    /// Its id.
    pub sync_id: String,
    /// When it started (UTC timestamp text as stored).
    pub started_at: String,
    /// The connector state kept with it, if any.
    pub state: Option<String>,
    /// A reader with that sync selected (its own unpacked copy of the file).
    pub reader: C1zReader,
}

impl std::fmt::Debug for Previous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Previous")
            .field("sync_id", &self.sync_id)
            .field("started_at", &self.started_at)
            .field("has_state", &self.state.is_some())
            .finish()
    }
}

/// The latest finished full sync of the c1z at `path` with its connector state; `None` when the file does
/// not exist or holds no finished full sync.
pub fn previous_sync(path: &Path) -> Result<Option<Previous>, SyncError> {
    if !path.exists() {
        return Ok(None);
    }
    let mut reader = C1zReader::open(path)?;
    let Some(run) = reader.latest_finished_sync(Some(SyncType::Full))? else {
        return Ok(None);
    };
    reader.select_sync(&run.sync_id)?;
    let state = run.sync_token.strip_prefix(STATE_PREFIX).map(str::to_owned);
    Ok(Some(Previous {
        sync_id: run.sync_id,
        started_at: run.started_at,
        state,
        reader,
    }))
}
