//! Diff of two syncs (in one file or two): resource types, resources, entitlements and grants added,
//! removed and changed, keyed by external id. Rows are compared by their stored bytes, which is exact
//! because writers encode deterministically; for grants the `expansion` column is compared too.
//!
//! Runs in SQLite: the new sync's database is attached to a connection on the old one, and the set
//! differences are anti-joins on the `(external_id, sync_id)` unique indexes.

use rusqlite::{Connection, params};

use crate::error::{C1zError, Result};
use crate::reader::C1zReader;

/// Added, removed and changed external ids of one table, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffSet {
    /// Only in the new sync.
    pub added: Vec<String>,
    /// Only in the old sync.
    pub removed: Vec<String>,
    /// In both, with different bytes.
    pub changed: Vec<String>,
}

impl DiffSet {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The difference between two syncs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncDiff {
    /// The old sync id.
    pub old_sync_id: String,
    /// The new sync id.
    pub new_sync_id: String,
    /// Resource types.
    pub resource_types: DiffSet,
    /// Resources (`type:id`).
    pub resources: DiffSet,
    /// Entitlements.
    pub entitlements: DiffSet,
    /// Grants.
    pub grants: DiffSet,
}

impl SyncDiff {
    /// Whether the syncs hold the same rows.
    pub fn is_empty(&self) -> bool {
        self.resource_types.is_empty()
            && self.resources.is_empty()
            && self.entitlements.is_empty()
            && self.grants.is_empty()
    }
}

/// Diffs the selected sync of `old` against the selected sync of `new`.
pub fn diff_syncs(old: &C1zReader, new: &C1zReader) -> Result<SyncDiff> {
    let need = |r: &C1zReader| {
        r.sync_id()
            .map(str::to_owned)
            .ok_or_else(|| C1zError::NoSync(format!("{} has no finished sync to diff", r.path().display())))
    };
    let (old_id, new_id) = (need(old)?, need(new)?);
    let conn = Connection::open(old.db_path())?;
    let other = if old.db_path() == new.db_path() {
        "main"
    } else {
        conn.execute("ATTACH DATABASE ?1 AS other", [new.db_path().to_string_lossy()])?;
        "other"
    };
    let mut d = SyncDiff {
        old_sync_id: old_id.clone(),
        new_sync_id: new_id.clone(),
        ..Default::default()
    };
    d.resource_types = diff_table(&conn, other, "v1_resource_types", false, &old_id, &new_id)?;
    d.resources = diff_table(&conn, other, "v1_resources", false, &old_id, &new_id)?;
    d.entitlements = diff_table(&conn, other, "v1_entitlements", false, &old_id, &new_id)?;
    d.grants = diff_table(&conn, other, "v1_grants", true, &old_id, &new_id)?;
    Ok(d)
}

/// Diffs two syncs stored in the same file.
pub fn diff_syncs_in(reader: &C1zReader, old_sync_id: &str, new_sync_id: &str) -> Result<SyncDiff> {
    let conn = Connection::open(reader.db_path())?;
    let mut d = SyncDiff {
        old_sync_id: old_sync_id.into(),
        new_sync_id: new_sync_id.into(),
        ..Default::default()
    };
    d.resource_types = diff_table(
        &conn,
        "main",
        "v1_resource_types",
        false,
        old_sync_id,
        new_sync_id,
    )?;
    d.resources = diff_table(&conn, "main", "v1_resources", false, old_sync_id, new_sync_id)?;
    d.entitlements = diff_table(&conn, "main", "v1_entitlements", false, old_sync_id, new_sync_id)?;
    d.grants = diff_table(&conn, "main", "v1_grants", true, old_sync_id, new_sync_id)?;
    Ok(d)
}

fn diff_table(
    conn: &Connection,
    other: &str,
    table: &str,
    grants: bool,
    old: &str,
    new: &str,
) -> Result<DiffSet> {
    let ids = |sql: String| -> Result<Vec<String>> {
        let mut st = conn.prepare(&sql)?;
        Ok(st
            .query_map(params![old, new], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    };
    let added = ids(format!(
        "SELECT n.external_id FROM {other}.{table} n WHERE n.sync_id = ?2 AND NOT EXISTS
           (SELECT 1 FROM main.{table} o WHERE o.sync_id = ?1 AND o.external_id = n.external_id) ORDER BY 1"
    ))?;
    let removed = ids(format!(
        "SELECT o.external_id FROM main.{table} o WHERE o.sync_id = ?1 AND NOT EXISTS
           (SELECT 1 FROM {other}.{table} n WHERE n.sync_id = ?2 AND n.external_id = o.external_id) ORDER BY 1"
    ))?;
    let extra = if grants {
        " OR o.expansion IS NOT n.expansion"
    } else {
        ""
    };
    let changed = ids(format!(
        "SELECT n.external_id FROM {other}.{table} n JOIN main.{table} o
           ON o.sync_id = ?1 AND o.external_id = n.external_id
         WHERE n.sync_id = ?2 AND (o.data != n.data{extra}) ORDER BY 1"
    ))?;
    Ok(DiffSet {
        added,
        removed,
        changed,
    })
}
