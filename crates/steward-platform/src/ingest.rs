//! Reading a `.c1z` for ingest.
//!
//! [`read_c1z`] runs on a blocking thread: it unpacks the file (checking the envelope and that it holds a
//! finished sync) and hands the opened [`SyncFile`] to the store, or a `Batch::Failed` with the reason. The
//! store then calls [`extract`], which walks the unpacked SQLite database with plain SQL and feeds every row
//! to a [`Sink`] (the backend's bulk writer) without building intermediate row vectors:
//! - resources and entitlements are decoded from their protobuf (they are few; the profile becomes JSON and
//!   the login/email are lowercased for account matching);
//! - grants are taken from the table's columns (id, entitlement, principal) and only their `sources` field
//!   (5) is decoded, to tell a direct grant from one held through another entitlement (`via`).
//!
//! The rows are borrowed from the reader's current row, so a sink must copy what it keeps.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use steward_c1z::C1zReader;
use steward_model::pb::{AppTrait, Entitlement, GrantSources, GroupTrait, Resource, UserTrait};
use steward_model::{Message, profile, unpack_any};
use tokio::sync::mpsc;

use crate::error::{PlatformError, Result};
use crate::model::Identity;
use crate::store::{Batch, EntitlementRow, ResourceRow};

/// An opened sync file (unpacked into a temporary SQLite database that lives as long as this value).
#[derive(Debug)]
pub struct SyncFile {
    reader: C1zReader,
    sync_id: String,
}

impl SyncFile {
    /// Unpacks and checks `path`.
    pub fn open(path: &Path) -> std::result::Result<SyncFile, String> {
        let reader = C1zReader::open(path).map_err(|e| e.to_string())?;
        let sync_id = reader
            .sync_id()
            .ok_or_else(|| "the file holds no finished sync".to_owned())?
            .to_owned();
        Ok(SyncFile { reader, sync_id })
    }

    /// The unpacked database.
    pub fn db_path(&self) -> &Path {
        self.reader.db_path()
    }

    /// The sync whose rows are ingested.
    pub fn sync_id(&self) -> &str {
        &self.sync_id
    }
}

/// Opens the c1z at `path` and sends it to the store; sends `Batch::Failed` on error. Blocking.
pub fn read_c1z(path: &Path, _connector_id: &str, _identity_source: bool, tx: &mpsc::Sender<Batch>) {
    let b = match SyncFile::open(path) {
        Ok(f) => Batch::Sync(Box::new(f)),
        Err(e) => Batch::Failed(e),
    };
    let _ = tx.blocking_send(b);
}

/// A grant of the sync, borrowed from the reader.
#[derive(Debug, Clone, Copy)]
pub struct GrantRef<'a> {
    /// Id.
    pub id: &'a str,
    /// Entitlement.
    pub entitlement_id: &'a str,
    /// Principal type.
    pub principal_type: &'a str,
    /// Principal id.
    pub principal_id: &'a str,
    /// Held directly.
    pub direct: bool,
    /// The entitlement it came through.
    pub via: Option<&'a str>,
}

/// Where [`extract`] puts the rows (in this order: resources with identities, entitlements, grants).
pub trait Sink {
    /// A resource.
    fn resource(&mut self, r: &ResourceRow) -> Result<()>;
    /// An identity (identity source only).
    fn identity(&mut self, i: &Identity) -> Result<()>;
    /// An entitlement.
    fn entitlement(&mut self, e: &EntitlementRow) -> Result<()>;
    /// A grant.
    fn grant(&mut self, g: &GrantRef<'_>) -> Result<()>;
}

/// Row counts seen by [`extract`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Resources.
    pub resources: u64,
    /// Identities.
    pub identities: u64,
    /// Entitlements.
    pub entitlements: u64,
    /// Grants.
    pub grants: u64,
}

fn profile_json(r: &Resource) -> serde_json::Value {
    if let Some(p) = &r.profile {
        return profile::struct_to_json(p);
    }
    for a in &r.annotations {
        if let Ok(t) = unpack_any::<UserTrait>(a)
            && let Some(p) = &t.profile
        {
            return profile::struct_to_json(p);
        }
        if let Ok(t) = unpack_any::<AppTrait>(a)
            && let Some(p) = &t.profile
        {
            return profile::struct_to_json(p);
        }
        if let Ok(t) = unpack_any::<GroupTrait>(a)
            && let Some(p) = &t.profile
        {
            return profile::struct_to_json(p);
        }
    }
    serde_json::Value::Object(Default::default())
}

fn s(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k)
        .and_then(|x| x.as_str())
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
}

fn varint(b: &[u8], i: &mut usize) -> std::result::Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i).ok_or("truncated varint")?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// The `sources` (field 5) of an encoded `Grant`, skipping every other field without decoding it.
pub fn grant_sources(data: &[u8]) -> std::result::Result<Option<GrantSources>, String> {
    let mut out: Option<GrantSources> = None;
    let mut i = 0;
    while i < data.len() {
        let key = varint(data, &mut i)?;
        let skip = match key & 7 {
            0 => {
                varint(data, &mut i)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(data, &mut i)?).map_err(|_| "length overflow")?;
                let end = i
                    .checked_add(len)
                    .filter(|e| *e <= data.len())
                    .ok_or("field longer than the grant")?;
                if key >> 3 == 5 {
                    out.get_or_insert_with(GrantSources::default)
                        .merge(&data[i..end])
                        .map_err(|e| format!("grant sources: {e}"))?;
                }
                len
            }
            w => return Err(format!("unsupported protobuf wire type {w} in a grant")),
        };
        i += skip;
    }
    if i > data.len() {
        return Err("truncated grant".into());
    }
    Ok(out)
}

/// Whether a grant of `ent` with `srcs` is direct, and else the entitlement it came through (the first
/// direct source other than `ent`, else the first other source).
pub fn direct_and_via<'a>(ent: &str, srcs: Option<&'a GrantSources>) -> (bool, Option<&'a str>) {
    let Some(srcs) = srcs.map(|s| &s.sources).filter(|m| !m.is_empty()) else {
        return (true, None);
    };
    if srcs.get(ent).is_some_and(|x| x.is_direct) {
        return (true, None);
    }
    let via = srcs
        .iter()
        .filter(|(k, _)| k.as_str() != ent)
        .find(|(_, v)| v.is_direct)
        .or_else(|| srcs.iter().find(|(k, _)| k.as_str() != ent))
        .map(|(k, _)| k.as_str());
    (false, via)
}

/// Feeds every resource, identity, entitlement and grant of `file` to `sink`. Blocking. A file that cannot
/// be read is a [`PlatformError::SyncFile`]; the sink's errors pass through.
pub fn extract(
    file: &SyncFile,
    connector_id: &str,
    identity_source: bool,
    sink: &mut impl Sink,
) -> Result<Counts> {
    extract_from(
        file.db_path(),
        file.sync_id(),
        connector_id,
        identity_source,
        sink,
    )
}

/// [`extract`] from the unpacked database at `db` (sync `sid`): what a thread other than the one holding
/// the [`SyncFile`] calls.
pub fn extract_from(
    db: &Path,
    sid: &str,
    connector_id: &str,
    identity_source: bool,
    sink: &mut impl Sink,
) -> Result<Counts> {
    let err = |e: rusqlite::Error| PlatformError::SyncFile(format!("reading the sync file: {e}"));
    let bad = PlatformError::SyncFile;
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.execute_batch("PRAGMA cache_size = -65536; PRAGMA mmap_size = 4294967296;")
        .map_err(err)?;
    let mut n = Counts::default();

    let mut st = conn
        .prepare("SELECT data FROM v1_resources WHERE sync_id = ?1 ORDER BY id")
        .map_err(err)?;
    let mut rows = st.query([sid]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let data = row.get_ref(0).and_then(|v| Ok(v.as_blob()?)).map_err(err)?;
        let r = Resource::decode(data).map_err(|e| bad(format!("a resource does not decode: {e}")))?;
        let Some(id) = &r.id else { continue };
        let p = profile_json(&r);
        let login = s(&p, "user_principal_name")
            .or_else(|| s(&p, "login"))
            .map(|x| x.to_lowercase());
        let email = s(&p, "email").or_else(|| s(&p, "mail")).map(|x| x.to_lowercase());
        if identity_source && (id.resource_type == "user" || id.resource_type == "managed_identity") {
            let enabled = p.get("account_enabled").and_then(|v| v.as_bool()).unwrap_or(true);
            sink.identity(&Identity {
                id: id.resource.clone(),
                kind: id.resource_type.clone(),
                display_name: r.display_name.clone(),
                upn: s(&p, "user_principal_name"),
                email: s(&p, "email"),
                department: s(&p, "department"),
                job_title: s(&p, "job_title"),
                manager_id: s(&p, "manager_id"),
                status: if enabled { "enabled" } else { "disabled" }.into(),
                connector_id: connector_id.to_owned(),
            })?;
            n.identities += 1;
        }
        sink.resource(&ResourceRow {
            resource_type: id.resource_type.clone(),
            resource_id: id.resource.clone(),
            display_name: r.display_name.clone(),
            parent: r
                .parent_resource_id
                .as_ref()
                .map(|p| format!("{}:{}", p.resource_type, p.resource)),
            login,
            email,
            profile: p.to_string(),
        })?;
        n.resources += 1;
    }
    drop(rows);
    drop(st);

    let mut st = conn
        .prepare("SELECT data FROM v1_entitlements WHERE sync_id = ?1 ORDER BY id")
        .map_err(err)?;
    let mut rows = st.query([sid]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let data = row.get_ref(0).and_then(|v| Ok(v.as_blob()?)).map_err(err)?;
        let e = Entitlement::decode(data).map_err(|e| bad(format!("an entitlement does not decode: {e}")))?;
        let rid = e.resource.and_then(|r| r.id).unwrap_or_default();
        sink.entitlement(&EntitlementRow {
            id: e.id,
            resource_type: rid.resource_type,
            resource_id: rid.resource,
            display_name: e.display_name,
            slug: e.slug,
        })?;
        n.entitlements += 1;
    }
    drop(rows);
    drop(st);

    let mut st = conn
        .prepare("SELECT external_id, entitlement_id, principal_resource_type_id, principal_resource_id, data FROM v1_grants WHERE sync_id = ?1 ORDER BY id")
        .map_err(err)?;
    let mut rows = st.query([sid]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let text = |i| row.get_ref(i).and_then(|v| Ok(v.as_str()?)).map_err(err);
        let (id, ent, ptype, pid) = (text(0)?, text(1)?, text(2)?, text(3)?);
        let data = row.get_ref(4).and_then(|v| Ok(v.as_blob()?)).map_err(err)?;
        let srcs = grant_sources(data).map_err(|e| bad(format!("grant {id}: {e}")))?;
        let (direct, via) = direct_and_via(ent, srcs.as_ref());
        sink.grant(&GrantRef {
            id,
            entitlement_id: ent,
            principal_type: ptype,
            principal_id: pid,
            direct,
            via,
        })?;
        n.grants += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_model::GrantSource;
    use steward_model::pb::{Grant, ResourceId};

    fn encoded(sources: &[(&str, bool)]) -> Vec<u8> {
        let g = Grant {
            id: "group:g1:member:user:u1".into(),
            entitlement: Some(Entitlement {
                id: "group:g1:member".into(),
                display_name: "G1 member".into(),
                ..Default::default()
            }),
            principal: Some(Resource {
                id: Some(ResourceId {
                    resource_type: "user".into(),
                    resource: "u1".into(),
                    ..Default::default()
                }),
                display_name: "U1".into(),
                ..Default::default()
            }),
            sources: (!sources.is_empty()).then(|| GrantSources {
                sources: sources
                    .iter()
                    .map(|(k, d)| ((*k).to_owned(), GrantSource { is_direct: *d }))
                    .collect(),
            }),
            ..Default::default()
        };
        g.encode_to_vec()
    }

    #[test]
    fn sources_are_read_without_decoding_the_rest() {
        let ent = "group:g1:member";
        let none = grant_sources(&encoded(&[])).unwrap();
        assert_eq!(direct_and_via(ent, none.as_ref()), (true, None));
        let s = grant_sources(&encoded(&[(ent, true), ("group:g2:member", true)])).unwrap();
        assert_eq!(direct_and_via(ent, s.as_ref()), (true, None));
        let s = grant_sources(&encoded(&[("group:g3:member", false), ("group:g2:member", true)])).unwrap();
        assert_eq!(direct_and_via(ent, s.as_ref()), (false, Some("group:g2:member")));
        let s = grant_sources(&encoded(&[("group:g3:member", false)])).unwrap();
        assert_eq!(direct_and_via(ent, s.as_ref()), (false, Some("group:g3:member")));
        let s = grant_sources(&encoded(&[(ent, false)])).unwrap();
        assert_eq!(direct_and_via(ent, s.as_ref()), (false, None));
    }

    #[test]
    fn a_truncated_grant_is_an_error() {
        let b = encoded(&[("group:g2:member", true)]);
        assert!(grant_sources(&b[..b.len() - 3]).is_err());
    }
}
