//! Reading a `.c1z` for ingest.
//!
//! [`read_c1z`] runs on a blocking thread: it checks the envelope and the database header and hands the
//! store a [`C1zStream`] (or, for a database the stream reader does not handle, the file unpacked into a
//! temporary SQLite database, [`SyncFile`]), or a `Batch::Failed` with the reason. The store then feeds
//! the rows to a [`Sink`] (the backend's bulk writer) without building intermediate row vectors of grants:
//! - [`extract_stream`] reads the SQLite pages as they come out of the zstd stream — no 4 GB temporary
//!   file written and read back (see the comment above [`C1zStream`]); when it meets something it does not
//!   read it answers [`Extracted::Fallback`], and the store rolls back and reads the file unpacked;
//! - [`extract`] walks an unpacked database with plain SQL.
//!
//! Either way resources and entitlements are decoded from their protobuf (they are few; the profile
//! becomes JSON and the login/email are lowercased for account matching), and grants are taken from the
//! table's columns (id, entitlement, principal) with only their `sources` field (5) decoded, to tell a
//! direct grant from one held through another entitlement (`via`).
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

/// Opens the c1z at `path` and sends it to the store: as a [`C1zStream`] when its database can be read
/// from the zstd stream, else unpacked ([`SyncFile`]); `Batch::Failed` on error. Blocking.
pub fn read_c1z(path: &Path, _connector_id: &str, _identity_source: bool, tx: &mpsc::Sender<Batch>) {
    let b = match C1zStream::open(path) {
        Ok(Some(s)) => Batch::Stream(Box::new(s)),
        Ok(None) => match SyncFile::open(path) {
            Ok(f) => Batch::Sync(Box::new(f)),
            Err(e) => Batch::Failed(e),
        },
        Err(e) => Batch::Failed(e),
    };
    let _ = tx.blocking_send(b);
}

/// Where the store reads a sync's rows from.
#[derive(Debug)]
pub enum Source {
    /// The zstd stream, page by page ([`extract_stream`]).
    Stream(Box<C1zStream>),
    /// The unpacked file ([`extract`]).
    File(Box<SyncFile>),
}

/// How a read ended.
#[derive(Debug)]
pub enum Extracted {
    /// Every row was given to the sink.
    Done(Counts),
    /// The stream holds something [`extract_stream`] does not read (the reason): the rows given to the
    /// sink so far must be discarded and the file read unpacked instead.
    Fallback(String),
}

impl Source {
    /// Feeds every row of the sync to `sink` (see [`extract`] and [`extract_stream`]). Blocking.
    pub fn extract(
        self,
        connector_id: &str,
        identity_source: bool,
        sink: &mut impl Sink,
    ) -> Result<Extracted> {
        match self {
            Source::Stream(s) => extract_stream(*s, connector_id, identity_source, sink),
            Source::File(f) => {
                let n = extract(&f, connector_id, identity_source, sink);
                // Deleting the multi-GB unpacked file is not part of the ingest.
                std::thread::spawn(move || drop(f));
                n.map(Extracted::Done)
            }
        }
    }
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

/// The grant's id when it is not the one derived from its entitlement and principal
/// (`<entitlement>:<principal type>:<principal id>`, what Baton connectors write): grants store only such
/// explicit ids and NULL otherwise (migration 7), and readers derive the rest.
pub fn explicit_grant_id<'a>(
    id: &'a str,
    entitlement_id: &str,
    principal_type: &str,
    principal_id: &str,
) -> Option<&'a str> {
    let (e, t) = (entitlement_id.len(), principal_type.len());
    let derived = id.len() == e + t + principal_id.len() + 2
        && id.starts_with(entitlement_id)
        && id.ends_with(principal_id)
        && id[e..].starts_with(':')
        && id[e + 1..].starts_with(principal_type)
        && id[e + 1 + t..].starts_with(':');
    (!derived).then_some(id)
}

/// Where [`extract`] and [`extract_stream`] put the rows: in the order the file gives them (an identity just
/// before its resource; the stream reader interleaves the tables as their pages come, so that the writer
/// inserts resources while grants are still being read). A sink that loads one table at a time buffers.
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

/// The rows of an encoded resource: its identity (identity source only: users and managed identities) and
/// its resource row; `None` for a resource without an id.
fn resource_rows(
    data: &[u8],
    connector_id: &str,
    identity_source: bool,
) -> Result<Option<(Option<Identity>, ResourceRow)>> {
    let r = Resource::decode(data)
        .map_err(|e| PlatformError::SyncFile(format!("a resource does not decode: {e}")))?;
    let Some(id) = &r.id else { return Ok(None) };
    let p = profile_json(&r);
    let login = s(&p, "user_principal_name")
        .or_else(|| s(&p, "login"))
        .map(|x| x.to_lowercase());
    let email = s(&p, "email").or_else(|| s(&p, "mail")).map(|x| x.to_lowercase());
    let identity = (identity_source
        && (id.resource_type == "user" || id.resource_type == "managed_identity"))
        .then(|| {
            let enabled = p.get("account_enabled").and_then(|v| v.as_bool()).unwrap_or(true);
            Identity {
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
            }
        });
    let row = ResourceRow {
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
    };
    Ok(Some((identity, row)))
}

/// The row of an encoded entitlement.
fn entitlement_row(data: &[u8]) -> Result<EntitlementRow> {
    let e = Entitlement::decode(data)
        .map_err(|e| PlatformError::SyncFile(format!("an entitlement does not decode: {e}")))?;
    let rid = e.resource.and_then(|r| r.id).unwrap_or_default();
    Ok(EntitlementRow {
        id: e.id,
        resource_type: rid.resource_type,
        resource_id: rid.resource,
        display_name: e.display_name,
        slug: e.slug,
    })
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
        let Some((identity, r)) = resource_rows(data, connector_id, identity_source)? else {
            continue;
        };
        if let Some(i) = identity {
            sink.identity(&i)?;
            n.identities += 1;
        }
        sink.resource(&r)?;
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
        sink.entitlement(&entitlement_row(data)?)?;
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

// ---------------------------------------------------------------------------------------------------------
// Reading the rows straight from the zstd stream.
//
// A c1z is one zstd frame holding a SQLite database file, so its pages arrive in page-number order. The
// rows ingest needs live in the leaf pages of four tables' B-trees (v1_resources, v1_entitlements,
// v1_grants, v1_sync_runs). Which tree a page belongs to is not written on the page: it follows from the
// interior pages, starting at each table's root page (from `sqlite_master`, on page 1). A page is read
// only once it is known to belong to one of those trees; a leaf page that arrives before the interior page
// pointing at it waits in memory until then, and pages that no tree reaches (the freelist, pointer maps)
// are never read. A file may hold several syncs (Baton's cleanup keeps two full ones; incremental runs add
// more): the sync to ingest is the one the unpacked reader takes (the latest finished full sync by
// `ended_at`, else the latest finished sync of any kind), chosen before the rows are read from a first,
// short pass over the stream up to `v1_sync_runs`' root page, and rows of the other syncs are skipped.
// Anything this reader does not handle — a needed row that spills into overflow pages, a schema that does
// not fit on page 1, several syncs whose runs are not on one early leaf page, a malformed page — makes it
// answer [`Extracted::Fallback`], and the store reads the file unpacked instead.
// ---------------------------------------------------------------------------------------------------------

/// Smallest page size read from the stream: below it, large rows spill into overflow pages.
const STREAM_MIN_PAGE: usize = 32 * 1024;
/// Pages per message from the decompressing thread.
const STREAM_CHUNK_PAGES: usize = 16;
/// Memory for leaf pages that arrive before their interior page; past it the file is read unpacked.
const STREAM_MAX_PENDING: usize = 1 << 30;

/// A c1z opened for [`extract_stream`]: envelope and database header checked, page 1 (the schema) read.
pub struct C1zStream {
    path: std::path::PathBuf,
    dec: steward_c1z::envelope::Decoder,
    page_size: usize,
    usable: usize,
    schema: StreamSchema,
}

impl std::fmt::Debug for C1zStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("C1zStream")
            .field("path", &self.path)
            .field("page_size", &self.page_size)
            .finish()
    }
}

/// The tables whose rows are read, with the positions of the columns used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    /// `data`, `sync_id`.
    Resources { data: usize, sync: usize },
    /// `data`, `sync_id`.
    Entitlements { data: usize, sync: usize },
    /// `external_id`, `entitlement_id`, `principal_resource_type_id`, `principal_resource_id`, `data`, `sync_id`.
    Grants { cols: [usize; 6] },
    /// `sync_id`, `ended_at`, `sync_type` (absent from old schemas: full).
    SyncRuns {
        sync: usize,
        ended: usize,
        kind: Option<usize>,
    },
    /// Any other table: its pages are recognised and skipped.
    Other,
}

/// Root page of every table.
#[derive(Debug, Default)]
struct StreamSchema {
    roots: Vec<(u32, Table)>,
}

impl C1zStream {
    /// Opens `path`. `Ok(None)`: the database is not one this reader handles (page size, encoding, schema),
    /// so the caller unpacks it; `Err`: the envelope is not a c1z (the reason).
    pub fn open(path: &Path) -> std::result::Result<Option<C1zStream>, String> {
        use std::io::Read;
        let mut dec = steward_c1z::envelope::decoder(path).map_err(|e| e.to_string())?;
        let mut header = [0u8; 100];
        if dec.read_exact(&mut header).is_err() || &header[..16] != b"SQLite format 3\0" {
            return Ok(None);
        }
        let page_size = match u16::from_be_bytes([header[16], header[17]]) {
            1 => 65536,
            n => usize::from(n),
        };
        let reserved = usize::from(header[20]);
        let utf8 = u32::from_be_bytes([header[56], header[57], header[58], header[59]]) == 1;
        if page_size < STREAM_MIN_PAGE || !page_size.is_power_of_two() || !utf8 {
            return Ok(None);
        }
        let mut page = vec![0u8; page_size];
        page[..100].copy_from_slice(&header);
        if dec.read_exact(&mut page[100..]).is_err() {
            return Ok(None);
        }
        let usable = page_size - reserved;
        let Some(schema) = read_schema(&page, usable) else {
            return Ok(None);
        };
        Ok(Some(C1zStream {
            path: path.to_owned(),
            dec,
            page_size,
            usable,
            schema,
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A SQLite varint at `b[*i..]` (big-endian groups of 7 bits, the ninth byte whole).
fn sqlite_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for k in 0..9 {
        let byte = *b.get(*i)?;
        *i += 1;
        if k == 8 {
            return Some((v << 8) | u64::from(byte));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

fn be16(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])))
}

fn be32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// A column value of a record.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Null,
    Int(i64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

/// At most this many leading columns of a record are located.
const MAX_COLS: usize = 16;

/// The first [`MAX_COLS`] columns of the record `rec` (missing trailing columns are NULL, as SQLite reads
/// rows written before an `ADD COLUMN`). `None`: malformed.
fn record(rec: &[u8]) -> Option<[Val<'_>; MAX_COLS]> {
    let mut out = [Val::Null; MAX_COLS];
    let mut i = 0;
    let hlen = usize::try_from(sqlite_varint(rec, &mut i)?).ok()?;
    let mut body = hlen;
    let mut col = 0;
    while i < hlen && col < MAX_COLS {
        let t = sqlite_varint(rec, &mut i)?;
        let (len, v): (usize, fn(&[u8]) -> Val<'_>) = match t {
            0 => (0, |_| Val::Null),
            1..=6 => {
                let n = [0, 1, 2, 3, 4, 6, 8][usize::try_from(t).ok()?];
                (n, |b| {
                    let mut x = if b.first().is_some_and(|f| f & 0x80 != 0) {
                        -1i64
                    } else {
                        0
                    };
                    for &c in b {
                        x = (x << 8) | i64::from(c);
                    }
                    Val::Int(x)
                })
            }
            7 => (8, |_| Val::Null),
            8 => (0, |_| Val::Int(0)),
            9 => (0, |_| Val::Int(1)),
            10 | 11 => return None,
            n if n % 2 == 0 => (usize::try_from((n - 12) / 2).ok()?, |b| Val::Blob(b)),
            n => (usize::try_from((n - 13) / 2).ok()?, |b| Val::Text(b)),
        };
        let end = body.checked_add(len)?;
        out[col] = v(rec.get(body..end)?);
        body = end;
        col += 1;
    }
    Some(out)
}

/// The local payload of each cell of a table leaf page: `(payload, spills)`; `spills` when the row
/// continues on overflow pages (the payload is then only its first part).
fn leaf_cells(page: &[u8], hdr: usize, usable: usize) -> Option<Vec<(&[u8], bool)>> {
    let n = be16(page, hdr + 3)?;
    let mut out = Vec::with_capacity(n);
    let max_local = usable - 35;
    for k in 0..n {
        let mut i = be16(page, hdr + 8 + 2 * k)?;
        let p = usize::try_from(sqlite_varint(page, &mut i)?).ok()?;
        sqlite_varint(page, &mut i)?; // rowid
        if p <= max_local {
            out.push((page.get(i..i.checked_add(p)?)?, false));
        } else {
            let m = (usable - 12) * 32 / 255 - 23;
            let k = m + (p - m) % (usable - 4);
            let local = if k <= max_local { k } else { m };
            out.push((page.get(i..i + local)?, true));
        }
    }
    Some(out)
}

/// The child pages of a table interior page.
fn interior_children(page: &[u8]) -> Option<Vec<u32>> {
    let n = be16(page, 3)?;
    let mut out = Vec::with_capacity(n + 1);
    for k in 0..n {
        out.push(be32(page, be16(page, 12 + 2 * k)?)?);
    }
    out.push(be32(page, 8)?);
    Some(out)
}

/// Column names of a `CREATE TABLE` statement, lowercased, in order.
fn table_columns(sql: &str) -> Option<Vec<String>> {
    let body = &sql[sql.find('(')? + 1..sql.rfind(')')?];
    let mut cols = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    let mut parts = Vec::new();
    for (i, c) in body.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    for p in parts {
        let word = p.split_whitespace().next()?;
        let name = word
            .trim_matches(|c| matches!(c, '"' | '`' | '[' | ']'))
            .to_lowercase();
        if ["constraint", "primary", "unique", "check", "foreign"].contains(&name.as_str()) {
            continue;
        }
        cols.push(name);
    }
    Some(cols)
}

/// Reads `sqlite_master` from page 1; `None` when it is not there whole or lacks a needed table.
fn read_schema(page1: &[u8], usable: usize) -> Option<StreamSchema> {
    if page1.get(100) != Some(&13) {
        return None;
    }
    let mut schema = StreamSchema::default();
    let mut found = 0;
    for (payload, spills) in leaf_cells(page1, 100, usable)? {
        if spills {
            return None;
        }
        let v = record(payload)?;
        let (Val::Text(kind), Val::Text(name), Val::Int(root), Val::Text(sql)) = (v[0], v[1], v[3], v[4])
        else {
            continue;
        };
        if kind != b"table" || root <= 0 {
            continue;
        }
        let (name, sql) = (std::str::from_utf8(name).ok()?, std::str::from_utf8(sql).ok()?);
        let root = u32::try_from(root).ok()?;
        let needed = ["v1_resources", "v1_entitlements", "v1_grants", "v1_sync_runs"].contains(&name);
        if !needed {
            schema.roots.push((root, Table::Other));
            continue;
        }
        if sql.to_lowercase().contains("without rowid") {
            return None;
        }
        let cols = table_columns(sql)?;
        let at = |c: &str| cols.iter().position(|x| x == c).filter(|i| *i < MAX_COLS);
        let t = match name {
            "v1_resources" => Table::Resources {
                data: at("data")?,
                sync: at("sync_id")?,
            },
            "v1_entitlements" => Table::Entitlements {
                data: at("data")?,
                sync: at("sync_id")?,
            },
            "v1_grants" => Table::Grants {
                cols: [
                    at("external_id")?,
                    at("entitlement_id")?,
                    at("principal_resource_type_id")?,
                    at("principal_resource_id")?,
                    at("data")?,
                    at("sync_id")?,
                ],
            },
            _ => Table::SyncRuns {
                sync: at("sync_id")?,
                ended: at("ended_at")?,
                kind: at("sync_type"),
            },
        };
        schema.roots.push((root, t));
        found += 1;
    }
    (found == 4).then_some(schema)
}

/// Why a page cannot be read here (the file is read unpacked instead).
struct NotStreamable(String);

/// The state of [`extract_stream`] between pages.
struct StreamState<'s, S: Sink> {
    sink: &'s mut S,
    connector_id: &'s str,
    identity_source: bool,
    usable: usize,
    /// Which tree each page known so far belongs to.
    owner: std::collections::HashMap<u32, Table>,
    /// Interior pages not yet reached from a root: their children.
    pending_interior: std::collections::HashMap<u32, Vec<u32>>,
    /// Leaf pages not yet reached from a root.
    pending_leaf: std::collections::HashMap<u32, Vec<u8>>,
    pending_bytes: usize,
    /// The sync whose rows are read, when the file was found to hold several ([`choose_sync`]).
    want: Option<Vec<u8>>,
    /// Without `want`: the sync of every row read so far.
    sync_id: Option<Vec<u8>>,
    /// The rows of `v1_sync_runs`: (sync id, finished).
    runs: Vec<(Vec<u8>, bool)>,
    n: Counts,
}

type Step = std::result::Result<(), NotStreamable>;

fn text<'a>(v: Val<'a>, what: &str) -> std::result::Result<&'a str, NotStreamable> {
    match v {
        Val::Text(t) => std::str::from_utf8(t).map_err(|_| NotStreamable(format!("{what} is not UTF-8"))),
        _ => Err(NotStreamable(format!("{what} is not text"))),
    }
}

impl<S: Sink> StreamState<'_, S> {
    /// A page of the stream (`pgno` ≥ 2).
    fn page(&mut self, pgno: u32, page: &[u8]) -> Result<Step> {
        match page.first() {
            Some(5) => {
                let Some(children) = interior_children(page) else {
                    return Ok(Err(NotStreamable(format!("page {pgno} is malformed"))));
                };
                match self.owner.get(&pgno).copied() {
                    Some(t) => self.assign(children, t),
                    None => {
                        self.pending_interior.insert(pgno, children);
                        Ok(Ok(()))
                    }
                }
            }
            Some(13) => match self.owner.get(&pgno).copied() {
                Some(t) => self.leaf(pgno, page, t),
                None => {
                    self.pending_bytes += page.len();
                    if self.pending_bytes > STREAM_MAX_PENDING {
                        return Ok(Err(NotStreamable(
                            "too many pages arrive before the pages that point at them".into(),
                        )));
                    }
                    self.pending_leaf.insert(pgno, page.to_vec());
                    Ok(Ok(()))
                }
            },
            _ => Ok(Ok(())),
        }
    }

    /// Records that `pages` belong to table `t`, reading those that arrived already.
    fn assign(&mut self, pages: Vec<u32>, t: Table) -> Result<Step> {
        let mut stack = pages;
        while let Some(p) = stack.pop() {
            if self.owner.insert(p, t).is_some() {
                return Ok(Err(NotStreamable(format!(
                    "page {p} is in two places of the file's trees"
                ))));
            }
            if let Some(children) = self.pending_interior.remove(&p) {
                stack.extend(children);
            }
            if let Some(page) = self.pending_leaf.remove(&p) {
                self.pending_bytes -= page.len();
                if let Err(e) = self.leaf(p, &page, t)? {
                    return Ok(Err(e));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Whether a row of sync `sid` is read: with a chosen sync, only its rows; without one, the file must
    /// hold a single sync.
    fn same_sync(&mut self, sid: Val<'_>) -> std::result::Result<bool, NotStreamable> {
        let Val::Text(sid) = sid else {
            return Err(NotStreamable("a row without a sync id".into()));
        };
        if let Some(want) = &self.want {
            return Ok(want.as_slice() == sid);
        }
        match &self.sync_id {
            Some(s) if s.as_slice() == sid => Ok(true),
            Some(_) => Err(NotStreamable("the file holds rows of more than one sync".into())),
            None => {
                self.sync_id = Some(sid.to_vec());
                Ok(true)
            }
        }
    }

    /// The rows of a leaf page of table `t`.
    fn leaf(&mut self, pgno: u32, page: &[u8], t: Table) -> Result<Step> {
        if t == Table::Other {
            return Ok(Ok(()));
        }
        let Some(cells) = leaf_cells(page, 0, self.usable) else {
            return Ok(Err(NotStreamable(format!("page {pgno} is malformed"))));
        };
        for (payload, spills) in cells {
            if spills {
                return Ok(Err(NotStreamable("a row larger than a page".into())));
            }
            let Some(v) = record(payload) else {
                return Ok(Err(NotStreamable(format!("a row of page {pgno} is malformed"))));
            };
            match t {
                Table::Grants { cols } => {
                    match self.same_sync(v[cols[5]]) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => return Ok(Err(e)),
                    }
                    let texts = (|| {
                        Ok::<_, NotStreamable>((
                            text(v[cols[0]], "a grant id")?,
                            text(v[cols[1]], "a grant's entitlement")?,
                            text(v[cols[2]], "a grant's principal type")?,
                            text(v[cols[3]], "a grant's principal")?,
                        ))
                    })();
                    let (id, ent, ptype, pid) = match texts {
                        Ok(x) => x,
                        Err(e) => return Ok(Err(e)),
                    };
                    let Val::Blob(data) = v[cols[4]] else {
                        return Ok(Err(NotStreamable("a grant without data".into())));
                    };
                    let srcs = grant_sources(data)
                        .map_err(|e| PlatformError::SyncFile(format!("grant {id}: {e}")))?;
                    let (direct, via) = direct_and_via(ent, srcs.as_ref());
                    self.sink.grant(&GrantRef {
                        id,
                        entitlement_id: ent,
                        principal_type: ptype,
                        principal_id: pid,
                        direct,
                        via,
                    })?;
                    self.n.grants += 1;
                }
                Table::Resources { data, sync } => {
                    match self.same_sync(v[sync]) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => return Ok(Err(e)),
                    }
                    let Val::Blob(data) = v[data] else {
                        return Ok(Err(NotStreamable("a resource without data".into())));
                    };
                    if let Some((identity, r)) = resource_rows(data, self.connector_id, self.identity_source)?
                    {
                        if let Some(i) = identity {
                            self.sink.identity(&i)?;
                            self.n.identities += 1;
                        }
                        self.sink.resource(&r)?;
                        self.n.resources += 1;
                    }
                }
                Table::Entitlements { data, sync } => {
                    match self.same_sync(v[sync]) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => return Ok(Err(e)),
                    }
                    let Val::Blob(data) = v[data] else {
                        return Ok(Err(NotStreamable("an entitlement without data".into())));
                    };
                    self.sink.entitlement(&entitlement_row(data)?)?;
                    self.n.entitlements += 1;
                }
                Table::SyncRuns { sync, ended, .. } => {
                    let Val::Text(sid) = v[sync] else {
                        return Ok(Err(NotStreamable("a sync run without an id".into())));
                    };
                    self.runs.push((sid.to_vec(), !matches!(v[ended], Val::Null)));
                }
                Table::Other => {}
            }
        }
        Ok(Ok(()))
    }
}

/// The first pages a file's `v1_sync_runs` root may sit on for [`choose_sync`] to read it (tables are
/// created with the file, so their roots come first).
const CHOOSE_SYNC_MAX_PAGE: u32 = 64;

/// The sync the unpacked reader would ingest (the latest finished full sync by `ended_at`, else the latest
/// finished sync of any kind), when the file holds more than one run: read from a first pass over the
/// stream that stops at `v1_sync_runs`' root page, which must be an early leaf. `None` when the file holds
/// one run, or when the runs cannot be read that way (the single-sync rule then applies).
fn choose_sync(path: &Path, page_size: usize, usable: usize, schema: &StreamSchema) -> Option<Vec<u8>> {
    use std::io::Read;
    let (root, sync, ended, kind) = schema.roots.iter().find_map(|(root, t)| match *t {
        Table::SyncRuns { sync, ended, kind } => Some((*root, sync, ended, kind)),
        _ => None,
    })?;
    if !(2..=CHOOSE_SYNC_MAX_PAGE).contains(&root) {
        return None;
    }
    let mut dec = steward_c1z::envelope::decoder(path).ok()?;
    let mut page = vec![0u8; page_size];
    for _ in 1..root {
        dec.read_exact(&mut page).ok()?;
    }
    dec.read_exact(&mut page).ok()?;
    if page.first() != Some(&13) {
        return None;
    }
    // (sync id, ended_at, sync_type) of every run, in row order.
    let mut runs: Vec<(&[u8], Option<&str>, &str)> = Vec::new();
    for (payload, spills) in leaf_cells(&page, 0, usable)? {
        if spills {
            return None;
        }
        let v = record(payload)?;
        let Val::Text(sid) = v[sync] else { return None };
        let ended = match v[ended] {
            Val::Text(t) => Some(std::str::from_utf8(t).ok()?),
            _ => None,
        };
        let kind = match kind.map(|k| v[k]) {
            None | Some(Val::Null) => "",
            Some(Val::Text(t)) => std::str::from_utf8(t).ok()?,
            Some(_) => return None,
        };
        runs.push((sid, ended, kind));
    }
    if runs.len() < 2 {
        return None;
    }
    let pairs = || runs.iter().map(|r| (r.1, r.2));
    let i = steward_c1z::latest_finished(pairs(), Some(steward_c1z::SyncType::Full))
        .or_else(|| steward_c1z::latest_finished(pairs(), None))?;
    Some(runs[i].0.to_vec())
}

/// Feeds every row of the stream's sync to `sink` (grants first, as they arrive; then the resources with
/// their identities, then the entitlements, which are kept until the end). Blocking. A zstd or protobuf
/// error is a [`PlatformError::SyncFile`], as with [`extract`]; a file this reader does not handle is
/// [`Extracted::Fallback`] (see the comment above [`C1zStream`]).
pub fn extract_stream(
    stream: C1zStream,
    connector_id: &str,
    identity_source: bool,
    sink: &mut impl Sink,
) -> Result<Extracted> {
    use std::io::Read;
    let C1zStream {
        path,
        mut dec,
        page_size,
        usable,
        schema,
    } = stream;
    let zstd_err = |e: std::io::Error| PlatformError::SyncFile(format!("{}: zstd: {e}", path.display()));
    let mut st = StreamState {
        sink,
        connector_id,
        identity_source,
        usable,
        owner: schema.roots.iter().copied().collect(),
        pending_interior: Default::default(),
        pending_leaf: Default::default(),
        pending_bytes: 0,
        want: choose_sync(&path, page_size, usable, &schema),
        sync_id: None,
        runs: Vec::new(),
        n: Counts::default(),
    };
    let chunk = page_size * STREAM_CHUNK_PAGES;
    let max_pages = steward_c1z::envelope::DEFAULT_MAX_DECODED / page_size as u64;
    // One thread decompresses, this one reads the pages; used buffers go back to the decompressor.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let (outcome, last) = std::thread::scope(|scope| {
        scope.spawn(move || {
            loop {
                let mut buf = empty_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(chunk));
                buf.resize(chunk, 0);
                let mut filled = 0;
                let r = loop {
                    match dec.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(k) => {
                            filled += k;
                            if filled == chunk {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let done = r.is_err() || filled < chunk;
                let msg = r.map(|()| buf);
                if full_tx.send(msg).is_err() || done {
                    return;
                }
            }
        });
        // Owned here: returning early drops it, which stops the decompressing thread.
        let full_rx = full_rx;
        let mut pgno: u32 = 1;
        for msg in full_rx.iter() {
            let buf = msg.map_err(zstd_err)?;
            if buf.len() % page_size != 0 {
                return Err(PlatformError::SyncFile(format!(
                    "{}: the database ends inside a page",
                    path.display()
                )));
            }
            for page in buf.chunks_exact(page_size) {
                pgno = pgno.saturating_add(1);
                if u64::from(pgno) > max_pages {
                    return Err(PlatformError::SyncFile(format!(
                        "{} unpacks to more than {} bytes",
                        path.display(),
                        steward_c1z::envelope::DEFAULT_MAX_DECODED
                    )));
                }
                if let Err(e) = st.page(pgno, page)? {
                    return Ok((Err(e), pgno));
                }
            }
            let _ = empty_tx.try_send(buf);
        }
        Ok((Ok(()), pgno))
    })?;
    if let Err(NotStreamable(why)) = outcome {
        return Ok(Extracted::Fallback(why));
    }
    if let Some(p) = st.owner.keys().find(|p| **p > last) {
        return Ok(Extracted::Fallback(format!(
            "page {p} is past the end of the database"
        )));
    }
    if let Some(want) = &st.want {
        if !st.runs.iter().any(|(sid, finished)| sid == want && *finished) {
            return Ok(Extracted::Fallback("the chosen sync is not finished".into()));
        }
    } else {
        let Some((sid, finished)) = st.runs.first().cloned() else {
            return Ok(Extracted::Fallback("no sync run".into()));
        };
        if !finished || st.runs.iter().any(|r| r.0 != sid) || st.sync_id.as_ref().is_some_and(|s| *s != sid) {
            return Ok(Extracted::Fallback("not exactly one finished sync".into()));
        }
    }
    let n = st.n;
    Ok(Extracted::Done(n))
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

    use steward_model::builders::{self, ResourceBuilder};
    use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};

    /// Every row a sink was given, as text, sorted.
    #[derive(Default, Debug, PartialEq)]
    struct Rows(Vec<String>);

    impl Sink for Rows {
        fn resource(&mut self, r: &ResourceRow) -> Result<()> {
            self.0.push(format!("{r:?}"));
            Ok(())
        }
        fn identity(&mut self, i: &Identity) -> Result<()> {
            self.0.push(format!("{i:?}"));
            Ok(())
        }
        fn entitlement(&mut self, e: &EntitlementRow) -> Result<()> {
            self.0.push(format!("{e:?}"));
            Ok(())
        }
        fn grant(&mut self, g: &GrantRef<'_>) -> Result<()> {
            self.0.push(format!("{g:?}"));
            Ok(())
        }
    }

    /// A full sync of `users` users (with profiles large enough to fill many 64 KiB pages), `groups`
    /// groups and memberships spread over them; `partial`: a second, partial sync after it.
    fn write_sync(path: &Path, users: usize, groups: usize, partial: bool) {
        write_sync_to(
            steward_c1z::C1zWriter::create(path).unwrap(),
            users,
            groups,
            partial,
        );
    }

    /// Adds a full sync to the c1z at `path`.
    fn append_sync(path: &Path, users: usize, groups: usize, partial: bool) {
        write_sync_to(
            steward_c1z::C1zWriter::open(path).unwrap(),
            users,
            groups,
            partial,
        );
    }

    fn write_sync_to(mut w: steward_c1z::C1zWriter, users: usize, groups: usize, partial: bool) {
        let ut = builders::resource_type("user", "User", &[Trait::User]);
        let gt = builders::resource_type("group", "Group", &[Trait::Group]);
        w.begin_sync(steward_c1z::SyncType::Full).unwrap();
        w.put_resource_type(&ut).unwrap();
        w.put_resource_type(&gt).unwrap();
        let mut ents = Vec::new();
        for g in 0..groups {
            let g = ResourceBuilder::new("group", &format!("g{g}"), &format!("Group {g}"))
                .group()
                .build();
            let e = builders::entitlement(
                &g,
                "member",
                "member",
                PurposeValue::Assignment,
                std::slice::from_ref(&ut),
            );
            w.put_resource(&g).unwrap();
            w.put_entitlement(&e).unwrap();
            ents.push(e);
        }
        for i in 0..users {
            let upn = format!("User{i}@Test.Example");
            let dept = format!("department {} {}", i % 7, "x".repeat(i % 300));
            let u = ResourceBuilder::new("user", &format!("u{i}"), &format!("User\t{i}"))
                .profile(steward_model::profile::strings([
                    ("user_principal_name", upn.as_str()),
                    ("department", dept.as_str()),
                ]))
                .user(builders::user_trait(Some(&upn), i % 5 != 0, &upn))
                .build();
            w.put_resource(&u).unwrap();
            for k in 0..3 {
                w.put_grant(&builders::grant(&ents[(i * 7 + k) % groups], &u))
                    .unwrap();
            }
        }
        w.end_sync().unwrap();
        if partial {
            w.begin_sync(steward_c1z::SyncType::Partial).unwrap();
            w.put_resource_type(&ut).unwrap();
            let u = ResourceBuilder::new("user", "u1", "User one again").build();
            w.put_resource(&u).unwrap();
            w.end_sync().unwrap();
        }
        w.finish().unwrap();
    }

    fn unpacked_rows(path: &Path) -> Rows {
        let mut rows = Rows::default();
        let n = extract(&SyncFile::open(path).unwrap(), "c1", true, &mut rows).unwrap();
        assert!(n.grants > 0);
        rows.0.sort();
        rows
    }

    fn streamed_rows(path: &Path) -> std::result::Result<Rows, String> {
        let s = C1zStream::open(path).unwrap().expect("a file the stream reads");
        let mut rows = Rows::default();
        match extract_stream(s, "c1", true, &mut rows).unwrap() {
            Extracted::Done(_) => {
                rows.0.sort();
                Ok(rows)
            }
            Extracted::Fallback(why) => Err(why),
        }
    }

    /// Repacks `path` after running `sql` on its unpacked database.
    fn rewrite(path: &Path, out: &Path, sql: &str) {
        let db = out.with_extension("sqlite");
        steward_c1z::envelope::read_c1z(path, &db, 1 << 32).unwrap();
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        steward_c1z::envelope::write_c1z(&db, out, Default::default()).unwrap();
    }

    #[test]
    fn the_stream_gives_the_rows_of_the_unpacked_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.c1z");
        write_sync(&f, 3000, 40, false);
        let unpacked = unpacked_rows(&f);
        assert_eq!(unpacked.0.len(), 3000 * 2 + 40 * 2 + 9000);
        assert_eq!(streamed_rows(&f).unwrap(), unpacked);

        // Whole leaf pages freed by a delete stay in the file (freelist) with their old rows: the stream
        // must not read them.
        let g = dir.path().join("deleted.c1z");
        rewrite(
            &f,
            &g,
            "PRAGMA secure_delete = OFF; DELETE FROM v1_grants WHERE id BETWEEN 100 AND 6000",
        );
        let unpacked = unpacked_rows(&g);
        assert_eq!(unpacked.0.len(), 3000 * 2 + 40 * 2 + 9000 - 5901);
        let (free,): (i64,) = {
            let db = dir.path().join("check.sqlite");
            steward_c1z::envelope::read_c1z(&g, &db, 1 << 32).unwrap();
            let c = rusqlite::Connection::open(&db).unwrap();
            (c.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap(),)
        };
        assert!(free > 0, "the delete freed pages");
        assert_eq!(streamed_rows(&g).unwrap(), unpacked);
    }

    #[test]
    fn the_stream_takes_the_sync_the_unpacked_reader_takes_from_a_file_with_several() {
        let dir = tempfile::tempdir().unwrap();
        // A full sync and a partial one after it: the full sync is ingested.
        let two = dir.path().join("two.c1z");
        write_sync(&two, 200, 5, true);
        let unpacked = unpacked_rows(&two);
        assert_eq!(unpacked.0.len(), 200 * 2 + 5 * 2 + 600);
        assert_eq!(streamed_rows(&two).unwrap(), unpacked);

        // Two full syncs (as Baton's cleanup keeps), then a partial one: the newer full sync, and none of
        // the older one's rows.
        let many = dir.path().join("many.c1z");
        write_sync(&many, 300, 7, false);
        append_sync(&many, 500, 11, true);
        let unpacked = unpacked_rows(&many);
        assert_eq!(unpacked.0.len(), 500 * 2 + 11 * 2 + 1500);
        assert_eq!(streamed_rows(&many).unwrap(), unpacked);

        // The newest full sync unfinished (a crash): the older finished one, as unpacked.
        let cut = dir.path().join("cut.c1z");
        rewrite(
            &many,
            &cut,
            "UPDATE v1_sync_runs SET ended_at = NULL WHERE id = (SELECT max(id) FROM v1_sync_runs WHERE sync_type = 'full')",
        );
        let unpacked = unpacked_rows(&cut);
        assert_eq!(unpacked.0.len(), 300 * 2 + 7 * 2 + 900);
        assert_eq!(streamed_rows(&cut).unwrap(), unpacked);
    }

    #[test]
    fn what_the_stream_does_not_read_is_read_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        // Several syncs whose runs are not on an early leaf page: the single-sync rule, then unpacked.
        let two = dir.path().join("two.c1z");
        write_sync(&two, 200, 5, false);
        append_sync(&two, 100, 5, false);
        let late = dir.path().join("late.c1z");
        rewrite(
            &two,
            &late,
            "CREATE TABLE pad (x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 80)
               INSERT INTO pad SELECT zeroblob(60000) FROM n;
             CREATE TABLE runs_copy AS SELECT * FROM v1_sync_runs; DROP TABLE v1_sync_runs;
             ALTER TABLE runs_copy RENAME TO v1_sync_runs;",
        );
        let why = streamed_rows(&late).unwrap_err();
        assert!(why.contains("sync"), "{why}");
        assert_eq!(unpacked_rows(&late), unpacked_rows(&two));

        // Small pages: rows may spill into overflow pages, so the file is not streamed at all.
        let one = dir.path().join("one.c1z");
        write_sync(&one, 200, 5, false);
        let small = dir.path().join("small.c1z");
        rewrite(&one, &small, "PRAGMA page_size = 4096; VACUUM");
        assert!(C1zStream::open(&small).unwrap().is_none());
        assert_eq!(unpacked_rows(&small), unpacked_rows(&one));

        // A row larger than a page.
        let big = dir.path().join("big.c1z");
        rewrite(
            &one,
            &big,
            "UPDATE v1_resources SET data = data || zeroblob(70000) WHERE id = 3",
        );
        let why = streamed_rows(&big).unwrap_err();
        assert!(why.contains("larger than a page"), "{why}");

        // Not a c1z at all: the envelope's error.
        let junk = dir.path().join("junk.c1z");
        std::fs::write(&junk, b"not a c1z").unwrap();
        assert!(C1zStream::open(&junk).is_err());
    }

    #[test]
    fn only_ids_that_differ_from_the_derived_one_are_kept() {
        let ent = "group:g1:member";
        assert_eq!(
            explicit_grant_id("group:g1:member:user:u1", ent, "user", "u1"),
            None
        );
        for id in [
            "group:g1:member:user:u2",
            "group:g1:member:group:u1",
            "group:g1:member-user:u1",
            "group:g1:memberXuserXu1",
            "g1",
            "",
            "grüp:g1:member:user:u1",
        ] {
            assert_eq!(explicit_grant_id(id, ent, "user", "u1"), Some(id));
        }
    }

    #[test]
    fn a_truncated_grant_is_an_error() {
        let b = encoded(&[("group:g2:member", true)]);
        assert!(grant_sources(&b[..b.len() - 3]).is_err());
    }
}
