//! Read, write, expand and diff Baton `.c1z` sync files (format v1: `C1ZF\0` + one zstd frame holding a
//! SQLite database), following `shared/specs/c1z-format.md` to the letter so that the `baton` CLI reads our
//! files and we read any Baton connector's.
//!
//! ```no_run
//! # use steward_c1z::*;
//! # fn main() -> Result<(), C1zError> {
//! let mut w = C1zWriter::create("sync.c1z")?;
//! w.begin_sync(SyncType::Full)?;
//! // w.put_resource_type(&rt)?; w.put_resource(&r)?; w.put_entitlement(&e)?; w.put_grant(&g)?;
//! w.end_sync()?; // builds indexes, expands grants, marks the sync finished
//! w.finish()?; // compresses atomically into sync.c1z
//! let r = C1zReader::open("sync.c1z")?;
//! let page = r.grants(&GrantFilter::default(), &PageRequest::first(100))?;
//! # Ok(()) }
//! ```
//!
//! Modules: [`envelope`] (magic + zstd, atomic replace), [`schema`] (tables and indexes), [`writer`],
//! [`reader`] (temp-dir unpacking, paged queries), [`expand`] (grant expansion), [`diff`], [`ksuid`];
//! internally `btree` (the grant index b-trees the writer writes as pages itself).

mod btree;
pub mod diff;
mod direct;
pub mod envelope;
mod error;
pub mod expand;
mod inserter;
mod keydict;
pub mod ksuid;
mod pieces;
pub mod reader;
pub mod schema;
mod table;
mod timefmt;
pub mod writer;
mod zsplice;

pub use diff::{DiffSet, SyncDiff, diff_syncs};
pub use error::{C1zError, Result};
pub use expand::ExpandStats;
pub use reader::{C1zReader, EntitlementFilter, GrantFilter, Page, PageRequest, ResourceFilter, Stats};
pub use writer::{C1zWriter, EndReport, WriterOptions};

/// The kind of a sync, as stored in `v1_sync_runs.sync_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncType {
    /// Everything the connector can see.
    Full,
    /// Chosen resources only (e.g. to confirm a provisioning change).
    Partial,
    /// Resources without entitlements and grants.
    ResourcesOnly,
    /// Partial: rows to upsert into the parent sync.
    PartialUpserts,
    /// Partial: rows to delete from the parent sync.
    PartialDeletions,
}

impl SyncType {
    /// The text stored in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Partial => "partial",
            Self::ResourcesOnly => "resources_only",
            Self::PartialUpserts => "partial_upserts",
            Self::PartialDeletions => "partial_deletions",
        }
    }

    /// Parses the stored text; unknown text gives `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "full" | "" => Self::Full,
            "partial" => Self::Partial,
            "resources_only" => Self::ResourcesOnly,
            "partial_upserts" => Self::PartialUpserts,
            "partial_deletions" => Self::PartialDeletions,
            _ => return None,
        })
    }
}

impl std::fmt::Display for SyncType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Of sync runs given in row order as (`ended_at`, `sync_type`), the index of the latest finished one (by
/// `ended_at`; of two that ended at the same time, the later row) of `kind`, or of any kind. The rule
/// readers use to pick a file's sync; the platform's stream reader applies it to rows it decodes itself.
pub fn latest_finished<'a>(
    runs: impl IntoIterator<Item = (Option<&'a str>, &'a str)>,
    kind: Option<SyncType>,
) -> Option<usize> {
    let mut best: Option<(usize, &str)> = None;
    for (i, (ended, t)) in runs.into_iter().enumerate() {
        let Some(ended) = ended else { continue };
        if kind.is_some_and(|k| SyncType::parse(t) != Some(k)) {
            continue;
        }
        if best.is_none_or(|(_, b)| ended >= b) {
            best = Some((i, ended));
        }
    }
    best.map(|(i, _)| i)
}

/// One row of `v1_sync_runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRun {
    /// KSUID.
    pub sync_id: String,
    /// UTC timestamp text.
    pub started_at: String,
    /// UTC timestamp text; `None` while the sync runs (or after it crashed).
    pub ended_at: Option<String>,
    /// The writer's checkpoint.
    pub sync_token: String,
    /// `full`, `partial`, ….
    pub sync_type: String,
    /// The sync a partial sync applies to.
    pub parent_sync_id: String,
    /// A linked sync.
    pub linked_sync_id: String,
    /// Whether readers may diff it.
    pub supports_diff: bool,
}

impl SyncRun {
    pub(crate) const COLUMNS: &'static str =
        "sync_id, started_at, ended_at, sync_token, sync_type, parent_sync_id, linked_sync_id, supports_diff";

    pub(crate) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            sync_id: r.get(0)?,
            started_at: r.get(1)?,
            ended_at: r.get(2)?,
            sync_token: r.get(3)?,
            sync_type: r.get(4)?,
            parent_sync_id: r.get(5)?,
            linked_sync_id: r.get(6)?,
            supports_diff: r.get::<_, i64>(7)? != 0,
        })
    }
}

/// All sync runs, oldest first.
pub(crate) fn list_sync_runs(conn: &rusqlite::Connection) -> Result<Vec<SyncRun>> {
    let mut st = conn.prepare(&format!(
        "SELECT {} FROM v1_sync_runs ORDER BY id",
        SyncRun::COLUMNS
    ))?;
    let rows = st
        .query_map([], SyncRun::from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_finished_takes_the_last_ended_of_a_kind_and_the_later_row_on_a_tie() {
        let runs = [
            (Some("2026-01-02"), "full"),
            (None, "full"),
            (Some("2026-01-03"), "partial"),
            (Some("2026-01-02"), ""),
            (Some("2026-01-01"), "full"),
        ];
        assert_eq!(latest_finished(runs, Some(SyncType::Full)), Some(3));
        assert_eq!(latest_finished(runs, None), Some(2));
        assert_eq!(latest_finished(runs, Some(SyncType::ResourcesOnly)), None);
        assert_eq!(latest_finished([(None, "full")], None), None);
    }
}
