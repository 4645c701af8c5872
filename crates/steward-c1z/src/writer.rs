//! `C1zWriter`: builds a c1z file sync by sync.
//!
//! The working database is a plain SQLite file `<target>.wip` next to the target (rollback journal,
//! `synchronous=OFF`, exclusive lock). Writes go into large transactions; the secondary indexes of the bulk
//! tables are dropped while a sync loads and built again by [`C1zWriter::end_sync`]: first those of the small
//! tables and, when a grant id may be duplicated, the unique grant index (duplicates resolve to the last
//! write); then it removes dangling rows, expands grants, builds the remaining grant indexes once over all
//! grants and marks the sync finished. Those remaining grant indexes are written as b-tree pages directly
//! (`btree`: one pass over the grants for all their keys, sorted runs merged into pages appended to the
//! file, then registered in `sqlite_schema`); SQLite's `CREATE INDEX` is the fallback for what that does
//! not handle (a key that is not TEXT, a duplicate id). When the unique grant index is needed before
//! expansion, all four grant indexes are written that way before it (SQLite maintains them through
//! expansion; those it drops for many new grants are written again after it), and only a duplicate id
//! sends the unique one to SQLite's build that resolves it.
//!
//! While grants are written the writer remembers the entitlements and principals they reference and a
//! hash of each grant id (up to [`WriterOptions::track_grant_ids`]; none of it for a resumed sync), so
//! that the end needs no extra pass over the grants to find dangling references or possible duplicates.
//! It also knows the row id each grant gets (the table's largest + 1: only its grant inserts append to
//! the table during a sync; checked after every insert) and hands each inserted row's key columns to a
//! background thread that gathers the keys of the four grant indexes (`btree::Gatherer`: entries built,
//! full runs sorted and spilled there while the inserts go on), so the first direct index build of
//! `end_sync` reads from the table only the rows those keys do not cover — other syncs' rows (ids below
//! the sync's first) and rows expansion added (ids above its last). The gathered keys live only in this
//! process (runs in unnamed temporary files next to the working database) and serve one build: a
//! resumed sync, a failed insert or commit, row ids other than the expected ones, a grant row deleted
//! before the build (a dangling reference dropped, a duplicate resolved) and any later build fall back to
//! the pass over the table. [`C1zWriter::finish`] (after checkpointing a WAL an
//! older version left) compresses the database into `<target>` atomically and deletes the working file.
//!
//! Crash safety: committed transactions survive a kill of the process (a transaction cut short leaves a hot
//! journal that SQLite rolls back on the next open; pages of a direct index build cut short are cut off
//! the file by the next open, see `write_grant_indexes`); [`C1zWriter::checkpoint`]
//! commits together with the caller's `sync_token`, so a resumed run ([`C1zWriter::open`] finds the `.wip`,
//! [`C1zWriter::resume_sync`]) continues exactly from the last checkpoint. Dropping a writer without
//! `finish` keeps the `.wip` for a later resume and rolls back the open transaction.
//!
//! Duplicates within a sync (a connector listing a row twice, or a re-run page) resolve to the last write,
//! as Baton's upserts do.
//!
//! A sync that starts on an empty grant table in a writer that is not crash-safe does not insert its
//! grants through SQLite at all (`WriterOptions::direct_table`): a thread builds the table's leaf pages
//! in a file of their own while the sync is written (`table`), and `end_sync` first joins them to the
//! database under `v1_grants` (and writes the two partial grant indexes as pages), then goes on as below.
//!
//! Otherwise grants are inserted on a thread of their own (`inserter`): full batches are handed
//! over with the connection, and every method that needs the database first takes it back
//! (`settle`, which also surfaces an error of those inserts). Resources and entitlements written while
//! the thread holds it wait in `pending` and are written, in order, when it comes back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};
use steward_model::{AnnotationsExt, Entitlement, Grant, GrantExpandable, Resource, ResourceType};

use crate::btree;
use crate::envelope::{self, CompressOptions};
use crate::error::{C1zError, Result};
use crate::expand::{self, ExpandStats};
use crate::inserter::{self, Gathering, GrantBatch, HANDOFF_ROWS, InsertSql, Inserter, Lent, RowIds};
use crate::pieces;
use crate::schema::{BULK_INDEXES, BulkIndex, TABLES};
use crate::table;
use crate::{SyncRun, SyncType, ksuid, list_sync_runs, timefmt};

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Commit automatically after this many rows (bounds the transaction); `None` commits only at
    /// [`C1zWriter::checkpoint`] and [`C1zWriter::end_sync`] — what a resumable engine wants.
    pub auto_commit_rows: Option<u64>,
    /// zstd settings for [`C1zWriter::finish`].
    pub compress: CompressOptions,
    /// Keep at most this many finished full syncs in the file (Baton keeps 2); `None` keeps all.
    pub keep_full_syncs: Option<usize>,
    /// Maximum nesting depth of grant expansion (Baton: 20).
    pub max_expansion_depth: usize,
    /// Delete rows whose type, resource, entitlement or principal is missing at the end of a full sync
    /// (the `baton` CLI shows them as `MISSING RESOURCE` or panics).
    pub drop_dangling: bool,
    /// SQLite page cache size in KiB while rows are written.
    pub cache_kib: i64,
    /// SQLite page cache size in KiB while [`C1zWriter::end_sync`] builds indexes and expands grants (also
    /// the index sorter's in-memory run size, so the page cache and the sorter can each reach it). 32 MiB:
    /// replaying the large Entra sync (1.7 M grants in a 4.2 GB database), 16 / 32 / 64 / 128 MiB gave
    /// end_sync CPU 11.5 / 9.8–11.5 / 13.7–15.0 / ~15 s and peak RSS 196 / 213 / 250–265 / 374–416 MiB.
    pub index_cache_kib: i64,
    /// Keep the working database consistent across a kill of the process (rollback journal, truncated at
    /// each commit), so that [`C1zWriter::open`] can resume its unfinished sync. The journal holds only the
    /// old content of pages a transaction overwrites: pages appended to the file (new rows, new index
    /// pages) and reused free pages are not copied, so a sync that mostly appends writes each page about
    /// once. (A WAL journal, used before, wrote every page twice — to the WAL and again at its
    /// checkpoint: ≈ 8 GB of 20.7 GB on the large Azure tenant.) Without it the journal is off and a
    /// leftover working database is discarded instead of resumed.
    pub crash_safe: bool,
    /// Grant ids whose hashes the writer keeps while a sync is written (8 bytes each), so that the unique
    /// grant index can wait until after expansion when no two ids collide; past it the index is built
    /// before expansion, where a duplicate is resolved.
    pub track_grant_ids: usize,
    /// Memory in KiB for the sorted runs of the grant index keys, gathered while grants are written or
    /// read from the table at the end (each of the four indexes an equal share; a full share is sorted
    /// and spilled to a temporary file).
    pub sort_run_kib: usize,
    /// Write the grant table's pages directly (`table`: a thread builds its leaf pages while the sync is
    /// written, instead of SQLite inserting the rows) when the sync starts on an empty grant table and
    /// the writer is not crash-safe. The file is the same either way but for the layout of the pages.
    pub direct_table: bool,
    /// With [`direct_table`](Self::direct_table): compress the grant table's leaves while they are
    /// written (`pieces`), so that `finish` takes them from there instead of reading them back. The file
    /// holds the same database either way.
    pub compress_leaves_early: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            auto_commit_rows: Some(200_000),
            compress: CompressOptions::default(),
            keep_full_syncs: Some(2),
            max_expansion_depth: expand::DEFAULT_MAX_DEPTH,
            drop_dangling: true,
            cache_kib: 16 * 1024,
            index_cache_kib: 32 * 1024,
            crash_safe: false,
            track_grant_ids: TRACK_MAX_GRANTS,
            sort_run_kib: btree::RUN_BUDGET >> 10,
            direct_table: true,
            compress_leaves_early: true,
        }
    }
}

/// What [`C1zWriter::end_sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndReport {
    /// The sync id.
    pub sync_id: String,
    /// Resources dropped because their resource type is missing.
    pub dropped_resources: u64,
    /// Entitlements dropped because their resource is missing.
    pub dropped_entitlements: u64,
    /// Grants dropped because their entitlement or principal is missing.
    pub dropped_grants: u64,
    /// Duplicate rows resolved to the last write.
    pub duplicates_removed: u64,
    /// Grant expansion.
    pub expansion: ExpandStats,
    /// Milliseconds spent building indexes.
    pub index_ms: u64,
    /// Milliseconds spent expanding.
    pub expand_ms: u64,
    /// Grants whose index keys were gathered while they were written (the grant indexes were then built
    /// without reading them back); 0 when the keys came from a pass over the table.
    pub index_keys_gathered: u64,
    /// Grants of the sync whose table pages were written directly (`WriterOptions::direct_table`); 0
    /// when SQLite inserted them.
    pub table_rows_direct: u64,
}

struct Active {
    sync_id: String,
    sync_type: SyncType,
    /// What the grants of this sync reference, gathered as they are written; `None` when the sync was
    /// resumed (rows from before the crash are not in it).
    refs: Option<GrantRefs>,
    /// The row id the next grant gets and the index keys gathered so far (with the inserter thread while
    /// a batch is in flight).
    ids: RowIds,
}

/// Gathered keys handed to the first grant index build of [`C1zWriter::end_sync`]: the rows below
/// `start_id` and from `end_id` on are read from the table.
struct Gathered {
    keys: GatheredKeys,
    /// The indexes they are for, in order.
    names: Vec<&'static str>,
    start_id: i64,
    end_id: i64,
}

enum GatheredKeys {
    /// The gathering thread may still be taking in the last rows.
    Running(btree::Gatherer),
    /// Finished, with every run spilled (while expansion needs the memory); `None` if unusable.
    Parked(Option<btree::Collected>),
}

impl GatheredKeys {
    fn finish(self) -> Result<Option<btree::Collected>> {
        match self {
            Self::Running(g) => g.finish(),
            Self::Parked(k) => Ok(k),
        }
    }

    /// Finishes gathering and spills the in-memory runs, so that they hold no memory until the build.
    fn park(&mut self, dir: &Path) -> Result<()> {
        if let Self::Running(_) = self {
            let Self::Running(g) = std::mem::replace(self, Self::Parked(None)) else {
                return Ok(());
            };
            let mut keys = g.finish()?;
            if let Some(k) = keys.as_mut() {
                k.spill_all(dir)?;
            }
            *self = Self::Parked(keys);
        }
        Ok(())
    }
}

/// Grant ids whose hashes [`GrantRefs`] keeps at most (16 MiB); past it, a possible duplicate id is
/// assumed (the unique grant index is then built before expansion, where a duplicate is resolved).
const TRACK_MAX_GRANTS: usize = 2_000_000;

/// A fast non-cryptographic hasher for the sets of [`GrantRefs`] (the ids come from the connector, not an
/// attacker who could aim at collisions, and a collision of id hashes only costs the slower path): FxHash
/// over 8-byte words, finished with a 64-bit mix so that every bit of the result depends on the input.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.word(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.word(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.word(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.word(i as u64);
    }

    fn finish(&self) -> u64 {
        // murmur3's fmix64.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub(crate) type FastBuild = std::hash::BuildHasherDefault<FastHasher>;

/// The distinct entitlements and principals the current sync's grants reference, and a hash of each grant
/// id (up to [`WriterOptions::track_grant_ids`]; appended to a list, 8 bytes each, and sorted once at the
/// end — a hash set cost ~300 ns an insert in cache misses at 2M ids): at the end of the sync, dangling
/// references are checked without a pass over the grants, and when no two grant ids collide the unique
/// grant index can be built after expansion. The entitlements and principals are kept whatever the count (there are at most as many as
/// the sync's entitlements and resources).
#[derive(Default)]
struct GrantRefs {
    /// Each entitlement, and whether an expandable grant seen so far feeds it (expansion may rewrite its
    /// grants: `pieces` keeps their leaves apart).
    entitlements: HashMap<Box<str>, bool, FastBuild>,
    /// That flag for `last_entitlement`.
    last_hot: bool,
    /// Principal ids by principal type.
    principals: HashMap<Box<str>, HashSet<Box<str>, FastBuild>, FastBuild>,
    /// `None` once more than `max_ids` ids were seen.
    id_hashes: Option<Vec<u64>>,
    /// Too many ids to tell whether two are alike.
    too_many: bool,
    /// Ids tracked at most ([`WriterOptions::track_grant_ids`]).
    max_ids: usize,
    /// The entitlement and principal of the previous grant (connectors list grants by entitlement or by
    /// principal, so most grants repeat one of them): known to be in the sets already.
    /// `None` before the first grant.
    last_entitlement: Option<String>,
    last_principal: Option<(String, String)>,
}

impl GrantRefs {
    fn new(max_ids: usize) -> Self {
        Self {
            id_hashes: Some(Vec::new()),
            max_ids,
            ..Default::default()
        }
    }

    /// Adds a grant's references (`feeds`: the grant is expandable, so expansion may rewrite the other
    /// grants of its entitlement); returns whether an expandable grant seen so far, this one included,
    /// feeds its entitlement.
    fn add(&mut self, entitlement: &str, ptype: &str, pid: &str, id: &str, feeds: bool) -> bool {
        if feeds || self.last_entitlement.as_deref() != Some(entitlement) {
            self.last_hot = match self.entitlements.get_mut(entitlement) {
                Some(hot) => {
                    *hot |= feeds;
                    *hot
                }
                None => {
                    self.entitlements.insert(entitlement.into(), feeds);
                    feeds
                }
            };
            let last = self.last_entitlement.get_or_insert_with(String::new);
            last.clear();
            last.push_str(entitlement);
        }
        if self
            .last_principal
            .as_ref()
            .is_none_or(|(t, i)| i != pid || t != ptype)
        {
            if !self.principals.get(ptype).is_some_and(|ids| ids.contains(pid)) {
                self.principals
                    .entry(ptype.into())
                    .or_default()
                    .insert(pid.into());
            }
            let (t, i) = self.last_principal.get_or_insert_with(Default::default);
            t.clear();
            t.push_str(ptype);
            i.clear();
            i.push_str(pid);
        }
        if let Some(ids) = self.id_hashes.as_mut() {
            if ids.len() >= self.max_ids {
                self.id_hashes = None;
                self.too_many = true;
            } else {
                let mut h = FastHasher::default();
                std::hash::Hasher::write(&mut h, id.as_bytes());
                ids.push(std::hash::Hasher::finish(&h));
            }
        }
        self.last_hot
    }

    /// Whether two grant ids of the sync may be the same (two hashed alike, or too many to tell). Asked
    /// once, at the end of the sync: it sorts the hashes and frees them.
    fn maybe_duplicate(&mut self) -> bool {
        match self.id_hashes.as_mut() {
            Some(ids) => {
                ids.sort_unstable();
                let dup = ids.windows(2).any(|w| w[0] == w[1]);
                self.id_hashes = None;
                dup
            }
            None => self.too_many,
        }
    }
}

/// The error for using the database while no connection is here: an earlier error lost it (or a bug
/// used it while the insert thread held it: every public method settles first).
fn db_lent() -> C1zError {
    C1zError::State(
        "the working database's connection is not available (an earlier error closed it); open the file again to resume the sync",
    )
}

/// Writes syncs into a c1z file. See the module docs for the life cycle.
pub struct C1zWriter {
    target: PathBuf,
    wip: PathBuf,
    /// `None` while a batch of grants is with the inserter thread (see [`C1zWriter::settle`]).
    conn: Option<Connection>,
    opts: WriterOptions,
    active: Option<Active>,
    in_tx: bool,
    uncommitted: u64,
    now: String,
    buf: Vec<u8>,
    batch: GrantBatch,
    sql: InsertSql,
    /// Started at the first batch handed over.
    inserter: Option<Inserter>,
    /// The thread writing the sync's grant table pages, when they are written directly (`table`; then
    /// no grant goes through SQLite until [`end_sync`](Self::end_sync) joins them to the database).
    table: Option<table::PageThread>,
    /// Resources and entitlements written while a batch of grants is with the inserter thread (the
    /// statement and its values), inserted when the connection comes back.
    pending: Vec<(&'static str, Vec<Value>)>,
    /// Set when inserts on the insert thread failed: every later call fails (see `settle`).
    failed: Option<String>,
    /// Byte ranges of the working database this process wrote past the page cache (grant index pages),
    /// which `finish` reads the same way.
    direct_ranges: Vec<(u64, u64)>,
    /// During [`end_sync`](Self::end_sync), after the grant table's pages were joined (`table`): the
    /// page size and each leaf's page and largest row id, to read ahead the rows expansion reads.
    leaf_pages: Option<(usize, Vec<(u32, i64)>)>,
    /// From the end of a sync whose grant table pages were written directly to `finish`: the leaves
    /// compressed as they were written (`pieces`); dropped (with their file) by anything that could
    /// change the table other than what they track.
    pieces: Option<pieces::LeafPieces>,
    /// During [`end_sync`](Self::end_sync): the keys gathered while the sync's grants were inserted, for
    /// the first grant index build (dropped when a grant row they cover is deleted).
    gathered: Option<Gathered>,
}

/// The indexes [`C1zWriter::end_sync`] builds after expansion: the non-unique ones of `v1_grants`, and its
/// unique one too when no grant id can be a duplicate (`with_unique`).
fn late_index(idx: &BulkIndex, with_unique: bool) -> bool {
    idx.table == "v1_grants" && (with_unique || !idx.unique)
}

/// `<target>.wip`: the working database of a crash-safe writer (resumable).
pub fn wip_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".wip");
    PathBuf::from(s)
}

/// `<target>.build`: the working database of a writer that is not crash-safe (never resumed).
pub fn build_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(".build");
    PathBuf::from(s)
}

fn work_path(target: &Path, opts: &WriterOptions) -> PathBuf {
    if opts.crash_safe {
        wip_path(target)
    } else {
        build_path(target)
    }
}

/// Opens the working database with the writer's settings.
fn connect(target: &Path, wip: &Path, opts: &WriterOptions) -> Result<Connection> {
    let conn = Connection::open(wip)?;
    // Large pages: a grant row is hundreds of bytes, and index builds scan the whole table once per
    // index; 64 KiB pages make those scans and the appends several times cheaper. (Only takes effect
    // on a new database; readers accept any page size.)
    conn.execute_batch("PRAGMA page_size=65536;")?;
    // No sorter threads: with N threads SQLite's index sorter keeps up to N+1 in-memory runs of
    // `index_cache_kib` each, so peak memory grew with the sync (522 MiB at 10M grants with 2 threads)
    // while the builds were no faster on our 2 cores (docs/benchmarks.md). One run at a time keeps the
    // peak independent of the count.
    conn.execute_batch(&format!(
        "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode={}; PRAGMA synchronous=OFF;
             PRAGMA cache_size=-{}; PRAGMA temp_store=FILE; PRAGMA threads=0;",
        // Switching a `.wip` an older version left in WAL mode checkpoints its WAL first.
        if opts.crash_safe { "TRUNCATE" } else { "OFF" },
        opts.cache_kib
    ))
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
            C1zError::Corrupt {
                path: target.to_owned(),
                detail: "the zstd frame does not hold a SQLite database".into(),
            }
        }
        e => e.into(),
    })?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Cuts the pages of an interrupted grant index build (marked by a negative `user_version`: minus the
/// database size before the build) off the end of the working database and clears the mark. Nothing else
/// can have been written after them: the mark is set right before the build and cleared in the same
/// transaction that registers the finished indexes.
fn undo_index_build(
    conn: Connection,
    target: &Path,
    wip: &Path,
    opts: &WriterOptions,
    pages: u32,
) -> Result<Connection> {
    conn.close().map_err(|(_, e)| C1zError::Sqlite(e))?;
    if let Some(hdr) = btree::read_header(wip)?
        && hdr.pages > pages
    {
        tracing::warn!(
            orphaned = hdr.pages - pages,
            "c1z: removing the pages of an interrupted index build"
        );
        btree::set_size(wip, &hdr, pages)?;
    }
    let conn = connect(target, wip, opts)?;
    conn.execute_batch("PRAGMA user_version=0")?;
    Ok(conn)
}

/// `v1_grants` and its indexes as `sqlite_master` holds them while a sync loads (the bulk indexes
/// dropped), sorted: what the direct table writer (`table`) requires.
fn expected_grant_schema() -> Vec<(String, String, Option<String>)> {
    let mut v: Vec<(String, String, Option<String>)> = TABLES
        .split(';')
        .map(str::trim)
        .filter_map(|stmt| {
            let sql = stmt.replace(" IF NOT EXISTS", "");
            let mut words = sql.split_whitespace();
            let kind = match (words.next(), words.next()) {
                (Some("CREATE"), Some("TABLE")) => "table",
                (Some("CREATE"), Some("INDEX")) => "index",
                _ => return None,
            };
            let name = words.next()?.to_owned();
            let on_grants = if kind == "table" {
                name == "v1_grants"
            } else {
                sql.contains(" ON v1_grants ")
            };
            on_grants.then(|| (kind.to_owned(), name, Some(sql)))
        })
        .collect();
    v.sort();
    v
}

/// Suffix of the file the grant table's leaf pages are written to (`table`) next to the working database.
const TABLE_SUFFIX: &str = "-grants";

/// The root page of the table or index `name`.
fn root_of(db: &Connection, name: &str) -> Result<u32> {
    let r: i64 = db.query_row(
        "SELECT rootpage FROM sqlite_master WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    u32::try_from(r).map_err(|_| C1zError::State("a root page number out of range"))
}

fn remove_wip(wip: &Path) -> Result<()> {
    for suffix in [
        "",
        "-wal",
        "-shm",
        "-journal",
        TABLE_SUFFIX,
        pieces::PIECES_SUFFIX,
    ] {
        let mut s = wip.as_os_str().to_owned();
        s.push(suffix);
        let p = PathBuf::from(s);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(C1zError::Io {
                    action: "remove",
                    path: p,
                    error: e,
                });
            }
        }
    }
    Ok(())
}

impl C1zWriter {
    /// Starts a new file at `path` (replacing it at [`finish`](Self::finish)); discards a leftover `.wip`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Self::create_with(path, WriterOptions::default())
    }

    /// [`create`](Self::create) with options.
    pub fn create_with(path: impl AsRef<Path>, opts: WriterOptions) -> Result<Self> {
        let target = path.as_ref().to_owned();
        let wip = work_path(&target, &opts);
        remove_wip(&wip)?;
        Self::open_db(target, wip, opts)
    }

    /// Opens `path` to add a sync or resume one: with [`WriterOptions::crash_safe`], an existing `.wip`
    /// (left by a crash) is used as is; otherwise an existing c1z is unpacked into a new working database;
    /// otherwise the file starts empty.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, WriterOptions::default())
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(path: impl AsRef<Path>, opts: WriterOptions) -> Result<Self> {
        let target = path.as_ref().to_owned();
        let wip = work_path(&target, &opts);
        if !opts.crash_safe {
            remove_wip(&wip)?;
        }
        if !wip.exists()
            && target.exists()
            && let Err(e) = envelope::read_c1z(&target, &wip, envelope::DEFAULT_MAX_DECODED)
        {
            remove_wip(&wip)?;
            return Err(e);
        }
        Self::open_db(target, wip, opts)
    }

    fn open_db(target: PathBuf, wip: PathBuf, opts: WriterOptions) -> Result<Self> {
        let mut conn = connect(&target, &wip, &opts)?;
        // A grant index build cut short between writing page 1's header and registering its b-trees left
        // pages no b-tree uses at the end of the file: cut them off before anything else is written.
        let marker: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if marker < 0 {
            conn = undo_index_build(conn, &target, &wip, &opts, (-marker) as u32)?;
        }
        conn.execute_batch(TABLES)?;
        Ok(Self {
            target,
            wip,
            conn: Some(conn),
            opts,
            active: None,
            in_tx: false,
            uncommitted: 0,
            now: timefmt::now_text(),
            buf: Vec::with_capacity(4096),
            batch: GrantBatch::default(),
            sql: InsertSql::new(),
            inserter: None,
            table: None,
            leaf_pages: None,
            pieces: None,
            pending: Vec::new(),
            direct_ranges: Vec::new(),
            failed: None,
            gathered: None,
        })
    }

    /// The target path.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The id of the sync being written, if any.
    pub fn sync_id(&self) -> Option<&str> {
        self.active.as_ref().map(|a| a.sync_id.as_str())
    }

    /// All sync runs in the file, oldest first.
    pub fn sync_runs(&mut self) -> Result<Vec<SyncRun>> {
        self.settle()?;
        list_sync_runs(self.db()?)
    }

    /// The newest sync that was started but not ended (e.g. by a crash), if any.
    pub fn unfinished_sync(&mut self) -> Result<Option<SyncRun>> {
        Ok(self.sync_runs()?.into_iter().rev().find(|r| r.ended_at.is_none()))
    }

    /// Starts a new sync and returns its KSUID. Unfinished syncs left in the file are discarded first
    /// (use [`resume_sync`](Self::resume_sync) to continue one instead).
    pub fn begin_sync(&mut self, sync_type: SyncType) -> Result<String> {
        self.begin_sync_with_parent(sync_type, "")
    }

    /// [`begin_sync`](Self::begin_sync) for a partial sync that applies to `parent_sync_id`.
    pub fn begin_sync_with_parent(&mut self, sync_type: SyncType, parent_sync_id: &str) -> Result<String> {
        if self.active.is_some() {
            return Err(C1zError::State(
                "a sync is already in progress: call end_sync before begin_sync",
            ));
        }
        self.commit()?;
        self.pieces = None;
        for run in self.sync_runs()?.into_iter().filter(|r| r.ended_at.is_none()) {
            tracing::warn!(sync_id = %run.sync_id, "discarding an unfinished sync left in the file");
            self.delete_sync_rows(&run.sync_id)?;
        }
        let sync_id = ksuid::new_ksuid();
        self.db()?.execute(
            "INSERT INTO v1_sync_runs (sync_id, started_at, ended_at, sync_token, sync_type, parent_sync_id, linked_sync_id, supports_diff)
             VALUES (?1, ?2, NULL, '', ?3, ?4, '', 1)",
            params![sync_id, timefmt::now_text(), sync_type.as_str(), parent_sync_id],
        )?;
        self.drop_bulk_indexes()?;
        let next = self.next_grant_id()?;
        let gather = self.start_gathering(next)?;
        let mut ids = RowIds { next, gather };
        self.table = None;
        if let Some(lay) = self.direct_table_layout(next)? {
            let mut leaves_path = self.wip.as_os_str().to_owned();
            leaves_path.push(TABLE_SUFFIX);
            let mut leaves = table::Leaves::create(Path::new(&leaves_path), lay)?;
            // Only for a writer that is not crash-safe (as the direct table): `finish` then changes the
            // working database (`pieces::write_frame`), which no later run reuses.
            if self.opts.compress_leaves_early && !self.opts.crash_safe {
                let mut p = self.wip.as_os_str().to_owned();
                p.push(pieces::PIECES_SUFFIX);
                leaves.tap(pieces::Tap::start(
                    Path::new(&p),
                    lay.page_size,
                    self.opts.compress.level,
                )?);
            }
            self.table = Some(table::PageThread::start(table::TableOut {
                leaves,
                contiguous: lay.format4,
                sync_id: sync_id.clone(),
                ids: std::mem::replace(&mut ids, RowIds { next, gather: None }),
            })?);
        }
        self.active = Some(Active {
            sync_id: sync_id.clone(),
            sync_type,
            refs: Some(GrantRefs::new(self.opts.track_grant_ids)),
            ids,
        });
        Ok(sync_id)
    }

    /// Continues the unfinished sync `sync_id` (found with [`unfinished_sync`](Self::unfinished_sync)).
    pub fn resume_sync(&mut self, sync_id: &str) -> Result<SyncRun> {
        if self.active.is_some() {
            return Err(C1zError::State(
                "a sync is already in progress: call end_sync before resume_sync",
            ));
        }
        self.pieces = None;
        let run = self
            .sync_runs()?
            .into_iter()
            .find(|r| r.sync_id == sync_id)
            .ok_or_else(|| C1zError::NoSync(format!("sync {sync_id} is not in {}", self.target.display())))?;
        if run.ended_at.is_some() {
            return Err(C1zError::NoSync(format!(
                "sync {sync_id} has already ended; start a new one"
            )));
        }
        let sync_type = SyncType::parse(&run.sync_type).unwrap_or(SyncType::Full);
        self.drop_bulk_indexes()?;
        let next = self.next_grant_id()?;
        self.active = Some(Active {
            sync_id: sync_id.to_owned(),
            sync_type,
            refs: None,
            ids: RowIds { next, gather: None },
        });
        Ok(run)
    }

    /// The page layout to write the grant table's pages directly in (see [`WriterOptions::direct_table`]),
    /// or `None` when SQLite inserts the rows: a crash-safe writer, a grant table that is not empty
    /// (`next` is its next row id), a header this writer does not handle.
    fn direct_table_layout(&self, next: i64) -> Result<Option<table::Layout>> {
        if !self.opts.direct_table || self.opts.crash_safe || next != 1 || self.in_tx {
            return Ok(None);
        }
        // The pages hold rows in this schema's column order, and only the two partial indexes are kept
        // up to date: a file from another writer with other columns, indexes or triggers on the table
        // gets SQLite's inserts.
        let mut st = self
            .db()?
            .prepare("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'v1_grants'")?;
        let mut found: Vec<(String, String, Option<String>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        found.sort();
        if found != expected_grant_schema() {
            tracing::debug!("c1z: the grant table is not exactly this writer's: SQLite inserts the grants");
            return Ok(None);
        }
        Ok(btree::read_header(&self.wip)?.map(|h| table::Layout::from(&h)))
    }

    /// The table's largest grant row id + 1.
    fn next_grant_id(&self) -> Result<i64> {
        let max: i64 = self
            .db()?
            .query_row("SELECT coalesce(max(id), 0) FROM v1_grants", [], |r| r.get(0))?;
        Ok(max.saturating_add(1))
    }

    /// Starts gathering the grant index keys of the rows a new sync inserts from `start_id` on (sorted
    /// runs spilled next to the working database); `None` when the indexes are not ones it handles.
    fn start_gathering(&self, start_id: i64) -> Result<Option<Gathering>> {
        let indexes: Vec<&BulkIndex> = BULK_INDEXES.iter().filter(|i| i.table == "v1_grants").collect();
        let Some(specs) = btree::grant_specs(&indexes) else {
            return Ok(None);
        };
        let keys = btree::Gatherer::new(specs, &self.work_dir(), self.opts.sort_run_kib << 10)?;
        Ok(Some(Gathering { keys, start_id }))
    }

    /// The directory of the working database (where sort runs are spilled).
    fn work_dir(&self) -> PathBuf {
        self.wip
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    }

    fn drop_bulk_indexes(&mut self) -> Result<()> {
        for idx in BULK_INDEXES {
            self.db()?
                .execute_batch(&format!("DROP INDEX IF EXISTS {}", idx.name))?;
        }
        Ok(())
    }

    fn active(&self) -> Result<&Active> {
        self.active.as_ref().ok_or(C1zError::State(
            "no sync in progress: call begin_sync or resume_sync first",
        ))
    }

    fn before_write(&mut self) -> Result<()> {
        if let Some(msg) = &self.failed {
            return Err(C1zError::Failed(msg.clone()));
        }
        if !self.in_tx {
            self.db()?.execute_batch("BEGIN")?;
            self.in_tx = true;
            self.now = timefmt::now_text();
        }
        Ok(())
    }

    fn after_write(&mut self) -> Result<()> {
        self.uncommitted += 1;
        if let Some(n) = self.opts.auto_commit_rows
            && self.uncommitted >= n
        {
            self.commit()?;
        }
        Ok(())
    }

    /// The connection, unless a batch of grants is with the inserter thread: every public method that
    /// reads or writes the database calls [`settle`](Self::settle) first.
    fn db(&self) -> Result<&Connection> {
        self.conn.as_ref().ok_or_else(db_lent)
    }

    /// Takes the connection back from the inserter thread, if it holds it (after it has inserted every
    /// batch handed over), with the row-id state, then writes the rows that waited for it; returns the
    /// first error of those inserts (the rows of the failed batch and the ones after it are not in the
    /// table, and the gathered keys are dropped).
    ///
    /// Such an error arrives after the calls that queued those rows returned, so the writer cannot
    /// say which rows are missing: it rolls back the open transaction (everything since the last
    /// checkpoint) and fails every later call with [`C1zError::Failed`] — never a commit of a sync with
    /// rows missing. The caller resumes from the last checkpoint by opening the file again.
    fn settle(&mut self) -> Result<()> {
        if let Some(msg) = &self.failed {
            return Err(C1zError::Failed(msg.clone()));
        }
        let Some(ins) = self.inserter.as_mut() else {
            return Ok(());
        };
        let back = match ins.take_back() {
            Ok(Some(back)) => back,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.failed = Some(e.to_string());
                return Err(e);
            }
        };
        self.conn = Some(back.conn);
        if let Some(a) = self.active.as_mut() {
            a.ids = back.ids;
        }
        let r = back.result.and_then(|()| {
            // Rows written while the connection was away, in the order they came.
            let pending = std::mem::take(&mut self.pending);
            let db = self.db()?;
            for (sql, vals) in &pending {
                db.prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(vals))?;
            }
            Ok(())
        });
        if let Err(e) = &r {
            self.fail(e.to_string());
        }
        r
    }

    /// Runs `sql` with `vals` now, or, while the insert thread holds the connection, when it comes back
    /// (in the order written; see [`settle`](Self::settle)).
    fn write_row(&mut self, sql: &'static str, vals: Vec<Value>) -> Result<()> {
        match self.conn.as_ref() {
            Some(c) => {
                c.prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(&vals))?;
            }
            None => self.pending.push((sql, vals)),
        }
        Ok(())
    }

    /// After an insert error that surfaced late: rolls back the open transaction, drops what waits and
    /// refuses every later call (see [`settle`](Self::settle)).
    fn fail(&mut self, msg: String) {
        tracing::error!(error = %msg, "a write to the sync file failed; rolling back to the last checkpoint");
        self.pending.clear();
        self.batch.clear();
        if self.in_tx
            && let Some(c) = self.conn.as_ref()
        {
            let _ = c.execute_batch("ROLLBACK");
        }
        self.in_tx = false;
        if let Some(a) = self.active.as_mut() {
            a.ids.gather = None;
            a.refs = None;
        }
        self.table = None;
        self.pieces = None;
        self.failed = Some(msg);
    }

    /// Hands the full batch of grants to the inserter thread (lending it the connection first), so that
    /// the caller can go on encoding grants while SQLite inserts these.
    fn hand_off(&mut self) -> Result<()> {
        if let Some(t) = self.table.as_mut() {
            let full = std::mem::take(&mut self.batch);
            match t.send(full, &self.now) {
                Ok(b) => self.batch = b,
                Err(e) => {
                    self.fail(e.to_string());
                    return Err(e);
                }
            }
            return Ok(());
        }
        if self.inserter.is_none() {
            self.inserter = Some(Inserter::start(self.sql.clone())?);
        }
        let (Some(a), Some(ins)) = (self.active.as_mut(), self.inserter.as_mut()) else {
            return Err(C1zError::State(
                "no sync in progress: call begin_sync or resume_sync first",
            ));
        };
        if !ins.lent() {
            let conn = self.conn.take().ok_or_else(db_lent)?;
            let lent = Lent {
                conn,
                sync_id: a.sync_id.clone(),
                now: self.now.clone(),
                ids: std::mem::replace(
                    &mut a.ids,
                    RowIds {
                        next: 0,
                        gather: None,
                    },
                ),
            };
            if let Err(back) = ins.lend(lent) {
                // The thread is gone: insert on this thread from now on.
                self.inserter = None;
                let back = back.ok_or_else(db_lent)?;
                self.conn = Some(back.conn);
                a.ids = back.ids;
                return self.flush_grants();
            }
        }
        let full = std::mem::take(&mut self.batch);
        self.batch = ins.insert(full)?;
        Ok(())
    }

    /// Inserts the batched grants on this thread (after the batch with the inserter thread, if any).
    fn flush_grants(&mut self) -> Result<()> {
        self.settle()?;
        if self.batch.rows.is_empty() {
            return Ok(());
        }
        if self.table.is_some() {
            return self.hand_off();
        }
        let Some(a) = self.active.as_mut() else {
            return Err(C1zError::State(
                "no sync in progress: call begin_sync or resume_sync first",
            ));
        };
        let conn = self.conn.as_ref().ok_or_else(db_lent)?;
        let r = inserter::insert_rows(conn, &self.sql, &self.batch, &a.sync_id, &self.now, &mut a.ids);
        self.batch.clear();
        if r.is_err() {
            // Rows of the batch may be missing: the gathered keys no longer match the table.
            a.ids.gather = None;
        }
        r
    }

    fn commit(&mut self) -> Result<()> {
        self.flush_grants()?;
        if self.in_tx {
            if let Err(e) = self.db()?.execute_batch("COMMIT") {
                if let Some(a) = self.active.as_mut() {
                    // The transaction may be rolled back: the gathered keys may no longer match.
                    a.ids.gather = None;
                }
                return Err(e.into());
            }
            self.in_tx = false;
        }
        self.uncommitted = 0;
        Ok(())
    }

    /// Commits everything written so far together with `sync_token` (the caller's resume state).
    pub fn checkpoint(&mut self, sync_token: &str) -> Result<()> {
        self.settle()?;
        let id = self.active()?.sync_id.clone();
        self.before_write()?;
        self.db()?.execute(
            "UPDATE v1_sync_runs SET sync_token = ?1 WHERE sync_id = ?2",
            params![sync_token, id],
        )?;
        self.commit()
    }

    /// The current sync's `sync_token` as last written.
    pub fn sync_token(&mut self) -> Result<String> {
        self.settle()?;
        let id = &self.active()?.sync_id;
        Ok(self.db()?.query_row(
            "SELECT sync_token FROM v1_sync_runs WHERE sync_id = ?1",
            [id],
            |r| r.get(0),
        )?)
    }

    /// The resource types written so far in the current sync (e.g. to resume a sync).
    pub fn current_resource_types(&mut self) -> Result<Vec<ResourceType>> {
        self.settle()?;
        let id = &self.active()?.sync_id;
        let mut st = self
            .db()?
            .prepare("SELECT external_id, data FROM v1_resource_types WHERE sync_id = ?1 ORDER BY id")?;
        let mut rows = st.query([id])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let b: Vec<u8> = r.get(1)?;
            out.push(
                ResourceType::decode(b.as_slice()).map_err(|source| C1zError::Decode {
                    table: "v1_resource_types",
                    external_id: r.get(0).unwrap_or_default(),
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// Writes a resource type.
    pub fn put_resource_type(&mut self, rt: &ResourceType) -> Result<()> {
        self.settle()?;
        if rt.id.is_empty() {
            return Err(C1zError::Incomplete {
                what: "resource type",
                id: rt.display_name.clone(),
                field: "id",
            });
        }
        self.before_write()?;
        self.buf.clear();
        rt.encode_raw(&mut self.buf);
        let id = &self.active()?.sync_id;
        self.db()?
            .prepare_cached(
                "INSERT INTO v1_resource_types (external_id, data, sync_id, discovered_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (external_id, sync_id) DO UPDATE SET data = excluded.data",
            )?
            .execute(params![rt.id, self.buf, id, self.now])?;
        self.after_write()
    }

    /// Writes a resource (`external_id` = `type:id`).
    pub fn put_resource(&mut self, r: &Resource) -> Result<()> {
        let rid = r.id.as_ref().ok_or_else(|| C1zError::Incomplete {
            what: "resource",
            id: r.display_name.clone(),
            field: "id",
        })?;
        self.before_write()?;
        self.buf.clear();
        r.encode_raw(&mut self.buf);
        let id = &self.active()?.sync_id;
        let (pt, pid) = match &r.parent_resource_id {
            Some(p) => (Some(p.resource_type.as_str()), Some(p.resource.as_str())),
            None => (None, None),
        };
        const SQL: &str = "INSERT INTO v1_resources (resource_type_id, external_id, parent_resource_type_id, parent_resource_id, data, sync_id, discovered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
        let text = |v: Option<&str>| v.map_or(Value::Null, |t| Value::Text(t.to_owned()));
        let vals = vec![
            Value::Text(rid.resource_type.clone()),
            Value::Text(rid.to_string()),
            text(pt),
            text(pid),
            Value::Blob(self.buf.clone()),
            Value::Text(id.clone()),
            Value::Text(self.now.clone()),
        ];
        self.write_row(SQL, vals)?;
        self.after_write()
    }

    /// Writes an entitlement.
    pub fn put_entitlement(&mut self, e: &Entitlement) -> Result<()> {
        let rid = e
            .resource
            .as_ref()
            .and_then(|r| r.id.as_ref())
            .ok_or_else(|| C1zError::Incomplete {
                what: "entitlement",
                id: e.id.clone(),
                field: "resource.id",
            })?;
        self.before_write()?;
        self.buf.clear();
        e.encode_raw(&mut self.buf);
        let id = &self.active()?.sync_id;
        const SQL: &str = "INSERT INTO v1_entitlements (resource_type_id, resource_id, external_id, data, sync_id, discovered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
        let vals = vec![
            Value::Text(rid.resource_type.clone()),
            Value::Text(rid.resource.clone()),
            Value::Text(e.id.clone()),
            Value::Blob(self.buf.clone()),
            Value::Text(id.clone()),
            Value::Text(self.now.clone()),
        ];
        self.write_row(SQL, vals)?;
        self.after_write()
    }

    /// Writes a grant. A `GrantExpandable` annotation is moved out of `data` into `expansion` /
    /// `needs_expansion` as the spec describes.
    pub fn put_grant(&mut self, g: &Grant) -> Result<()> {
        let incomplete = |field| C1zError::Incomplete {
            what: "grant",
            id: g.id.clone(),
            field,
        };
        let ent = g.entitlement.as_ref().ok_or_else(|| incomplete("entitlement"))?;
        let rid = ent
            .resource
            .as_ref()
            .and_then(|r| r.id.as_ref())
            .ok_or_else(|| incomplete("entitlement.resource.id"))?;
        let pid = g
            .principal
            .as_ref()
            .and_then(|p| p.id.as_ref())
            .ok_or_else(|| incomplete("principal.id"))?;
        self.before_write()?;
        self.active()?;
        // The annotation is decoded before anything of the row is in the batch (an error leaves none).
        let expandable = if g.annotations.contains::<GrantExpandable>() {
            let mut owned = g.clone();
            let ge = owned.annotations.take::<GrantExpandable>()?;
            Some((owned, ge))
        } else {
            None
        };
        // An expansion with at least one source entitlement: stored in the row, and it feeds the
        // grant's entitlement.
        let needs_expansion = expandable
            .as_ref()
            .and_then(|(_, ge)| ge.as_ref())
            .is_some_and(|ge| ge.entitlement_ids.iter().any(|s| !s.trim().is_empty()));
        let hot = self
            .active
            .as_mut()
            .and_then(|a| a.refs.as_mut())
            .map(|refs| refs.add(&ent.id, &pid.resource_type, &pid.resource, &g.id, needs_expansion));
        let mut ends = self.batch.push_columns([
            rid.resource_type.as_bytes(),
            rid.resource.as_bytes(),
            ent.id.as_bytes(),
            pid.resource_type.as_bytes(),
            pid.resource.as_bytes(),
            g.id.as_bytes(),
        ]);
        let b = &mut self.batch.bytes;
        if let Some((owned, ge)) = expandable {
            if let Some(ge) = ge.filter(|_| needs_expansion) {
                ge.encode_raw(b);
            }
            ends[6] = b.len();
            owned.encode_raw(b);
        } else {
            ends[6] = b.len();
            g.encode_raw(b);
        }
        ends[7] = b.len();
        self.batch.rows.push(inserter::BatchRow {
            ends,
            has_expansion: needs_expansion,
            needs_expansion,
            hot,
        });
        if self.batch.rows.len() >= HANDOFF_ROWS {
            self.hand_off()?;
        }
        self.after_write()
    }

    /// Stores `value` under `key` in `v1_connector_sessions` for the current sync.
    pub fn session_put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.settle()?;
        self.before_write()?;
        let id = &self.active()?.sync_id;
        self.db()?
            .prepare_cached(
                "INSERT INTO v1_connector_sessions (sync_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (sync_id, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![id, key, value])?;
        Ok(())
    }

    /// Deletes `key` from the current sync's session store.
    pub fn session_delete(&mut self, key: &str) -> Result<()> {
        self.settle()?;
        self.before_write()?;
        let id = &self.active()?.sync_id;
        self.db()?
            .prepare_cached("DELETE FROM v1_connector_sessions WHERE sync_id = ?1 AND key = ?2")?
            .execute(params![id, key])?;
        Ok(())
    }

    /// Up to `limit` session entries whose key starts with `prefix` and sorts after `after`, in key order.
    pub fn session_scan(
        &mut self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.settle()?;
        let id = &self.active()?.sync_id;
        let start = if after.is_empty() || after < prefix {
            prefix
        } else {
            after
        };
        let mut st = self.db()?.prepare_cached(
            "SELECT key, value FROM v1_connector_sessions WHERE sync_id = ?1 AND key > ?2 AND substr(key, 1, ?3) = ?4
             ORDER BY key LIMIT ?5",
        )?;
        // `key > start` would skip a key equal to the bare prefix; prefixes are never used as keys.
        let rows = st
            .query_map(
                params![id, start, prefix.len() as i64, prefix, limit as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The value stored under `key` for the current sync.
    pub fn session_get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        self.settle()?;
        let id = &self.active()?.sync_id;
        Ok(self
            .db()?
            .query_row(
                "SELECT value FROM v1_connector_sessions WHERE sync_id = ?1 AND key = ?2",
                params![id, key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Deletes every session entry of the current sync whose key starts with `prefix`.
    pub fn session_clear(&mut self, prefix: &str) -> Result<()> {
        self.settle()?;
        self.before_write()?;
        let id = &self.active()?.sync_id;
        self.db()?.execute(
            "DELETE FROM v1_connector_sessions WHERE sync_id = ?1 AND substr(key, 1, ?2) = ?3",
            params![id, prefix.len() as i64, prefix],
        )?;
        Ok(())
    }

    /// Ends the current sync: rebuilds indexes (resolving duplicates), drops dangling rows of a full sync,
    /// expands grants and records `ended_at`.
    pub fn end_sync(&mut self) -> Result<EndReport> {
        let (sync_id, sync_type, refs) = match &mut self.active {
            Some(a) => (a.sync_id.clone(), a.sync_type, a.refs.take()),
            None => {
                return Err(C1zError::State(
                    "no sync in progress: call begin_sync before end_sync",
                ));
            }
        };
        self.commit()?;
        let direct_rows = match self.link_table() {
            Ok(n) => n,
            Err(e) => {
                self.fail(e.to_string());
                return Err(e);
            }
        };
        // The sync's grants are in: the insert thread and its batches go (a later sync starts another).
        self.inserter = None;
        self.batch = GrantBatch::default();
        self.gathered = self.active.as_mut().and_then(|a| {
            a.ids.gather.take().map(|g| Gathered {
                names: g.keys.names().to_vec(),
                keys: GatheredKeys::Running(g.keys),
                start_id: g.start_id,
                end_id: a.ids.next,
            })
        });
        let r = self.end_sync_with(sync_id, sync_type, refs);
        if r.is_err() {
            // What the failed attempt changed in the table (journal off) is not tracked: a retry must
            // not trust the compressed leaves.
            self.pieces = None;
        }
        self.gathered = None;
        self.leaf_pages = None;
        r.map(|mut rep| {
            rep.table_rows_direct = direct_rows;
            rep
        })
    }

    /// Joins the grant table pages written directly (if they were) to the database: the page thread
    /// finishes, and with no connection open [`table::splice`] puts them under `v1_grants`; the two
    /// partial grant indexes are then written as pages too (`btree`) and copied over their (empty) roots.
    /// Returns the rows joined.
    fn link_table(&mut self) -> Result<u64> {
        let Some(t) = self.table.take() else {
            return Ok(0);
        };
        let t0 = Instant::now();
        let mut done = t.finish()?;
        let compressed = done.built.pieces.take();
        let rows = done.ids.next - 1;
        let (sync_id, leaves) = match self.active.as_mut() {
            Some(a) => {
                a.ids = done.ids;
                (a.sync_id.clone(), done.built.leaves.len())
            }
            None => return Err(C1zError::State("no sync in progress")),
        };
        let db = self.db()?;
        let root = root_of(db, "v1_grants")?;
        let partial = [
            (root_of(db, "idx_grants_sync_expansion_v1")?, done.expansion_ids),
            (root_of(db, "idx_grants_sync_needs_expansion_v1")?, done.needs_ids),
        ];
        self.close_db()?;
        let leaves_path = done.built.path.clone();
        let spliced = self.splice(done.built, root, &sync_id, &partial);
        if spliced.is_err() {
            // The sync fails (see `fail`); its pages must not stay behind.
            let _ = std::fs::remove_file(&leaves_path);
        }
        // Reconnect whatever happened.
        self.reconnect()?;
        // The leaves bypassed the page cache (when they stayed in place): `finish` reads them the same way.
        let spliced = spliced?;
        if spliced.in_place {
            self.direct_ranges.push(spliced.leaves);
        }
        if let Some(c) = compressed.filter(|_| !spliced.leaf_pages.is_empty()) {
            self.pieces = Some(pieces::LeafPieces::new(c, spliced.leaf_pages.clone()));
        }
        self.leaf_pages = Some((spliced.page_size, spliced.leaf_pages));
        tracing::debug!(
            rows,
            leaves,
            pages = spliced.pages,
            in_place = spliced.in_place,
            ms = t0.elapsed().as_millis() as u64,
            "c1z: grant table pages joined to the database"
        );
        Ok(rows as u64)
    }

    /// Keeps the compressed leaves only if nothing but what they track changed the grant table: no row
    /// was deleted, and no leaf was rebalanced (the table's b-tree still has every leaf where it was).
    fn check_pieces(&mut self, report: &EndReport) -> Result<()> {
        if self.pieces.is_none() {
            return Ok(());
        }
        if report.dropped_grants > 0 || report.duplicates_removed > 0 {
            self.pieces = None;
            return Ok(());
        }
        let root = root_of(self.db()?, "v1_grants")?;
        let kept = match &self.pieces {
            Some(p) => p.tree_unchanged(&self.wip, root)?,
            None => false,
        };
        if !kept {
            tracing::debug!("c1z: grant table leaves were rebalanced: compressed again in finish");
            #[cfg(test)]
            pieces::OUTCOMES.with(|o| o.set((o.get().0, o.get().1, o.get().2 + 1)));
            self.pieces = None;
        }
        Ok(())
    }

    /// Closes the connection (for work on the file with none open; [`reconnect`](Self::reconnect) after).
    fn close_db(&mut self) -> Result<()> {
        let conn = self.conn.take().ok_or_else(db_lent)?;
        conn.close().map_err(|(_, e)| C1zError::Sqlite(e))
    }

    /// Opens the working database again (it reads the schema and header afresh).
    fn reconnect(&mut self) -> Result<()> {
        self.conn = Some(connect(&self.target, &self.wip, &self.opts)?);
        Ok(())
    }

    /// The file part of [`link_table`](Self::link_table), with no connection open.
    fn splice(
        &self,
        built: table::Built,
        root: u32,
        sync_id: &str,
        partial: &[(u32, Vec<i64>)],
    ) -> Result<table::Spliced> {
        let hdr = btree::read_header(&self.wip)?.ok_or(C1zError::State(
            "the working database's header changed while grants were written",
        ))?;
        let spliced = table::splice(&self.wip, &hdr, built, root)?;
        for (index_root, ids) in partial {
            if ids.is_empty() {
                continue;
            }
            let hdr = btree::read_header(&self.wip)?.ok_or(C1zError::State(
                "the working database's header is not one this writer handles",
            ))?;
            let (top, mut pages) = btree::write_sync_index(&self.wip, &hdr, sync_id, ids)?;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.wip)
                .map_err(C1zError::io("open", &self.wip))?;
            table::copy_page(&f, &self.wip, hdr.page_size, top, *index_root)?;
            if top == pages && top - 1 != btree::lock_page(hdr.page_size) {
                pages -= 1;
            } else {
                table::free_page(&f, &self.wip, hdr.page_size, top)?;
            }
            drop(f);
            btree::set_size(&self.wip, &hdr, pages)?;
        }
        Ok(spliced)
    }

    fn end_sync_with(
        &mut self,
        sync_id: String,
        sync_type: SyncType,
        refs: Option<GrantRefs>,
    ) -> Result<EndReport> {
        let mut report = EndReport {
            sync_id: sync_id.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        // Without a possible duplicate grant id, the unique grant index is built after expansion too.
        let mut refs = refs;
        let defer_unique = refs.as_mut().is_some_and(|r| !r.maybe_duplicate());
        // When the unique grant index must exist before expansion (a resumed sync, or one too large for
        // its grant ids to be tracked), all four grant indexes are written as pages now, in one pass over
        // the grants; a duplicate id makes that give up, and SQLite's unique build below resolves it.
        // Expansion then maintains them (or drops the non-unique ones for many new grants: they are
        // written again below).
        let grant_indexes: Vec<&BulkIndex> = BULK_INDEXES.iter().filter(|i| i.table == "v1_grants").collect();
        let early_direct = !defer_unique && self.write_grant_indexes(&grant_indexes, &mut report)?;
        if !self.opts.crash_safe {
            // A failed CREATE UNIQUE INDEX (duplicates) must roll back, which needs a journal; in memory it
            // costs little because index pages are appended, not overwritten. Expansion, which rewrites
            // scattered pages, runs without one again (an in-memory journal would grow with the sync).
            self.db()?.execute_batch("PRAGMA journal_mode=MEMORY")?;
        }
        self.db()?.execute_batch("BEGIN")?;
        self.in_tx = true;
        // A larger page cache while indexes are built and grants expanded: it is also the sorter's
        // in-memory run size, so the index sorts spill far fewer runs to temporary files.
        self.db()?.execute_batch(&format!(
            "PRAGMA cache_size=-{}",
            self.opts.index_cache_kib.max(self.opts.cache_kib)
        ))?;
        // The unique indexes (they resolve duplicates) and those of the small tables first; the three
        // non-unique grant indexes only after expansion, so that they are built once over every grant
        // instead of being built, dropped for expansion's inserts and built again.
        report.duplicates_removed = self.build_indexes(&sync_id, true, |i| {
            let written = early_direct && i.table == "v1_grants";
            !late_index(i, defer_unique) && !written
        })?;
        let mut index_ms = t.elapsed().as_millis() as u64;
        self.commit()?;
        if !self.opts.crash_safe {
            self.db()?.execute_batch("PRAGMA journal_mode=OFF")?;
        }
        self.db()?.execute_batch("BEGIN")?;
        self.in_tx = true;
        if sync_type == SyncType::Full && self.opts.drop_dangling {
            let t = Instant::now();
            self.drop_dangling(&sync_id, refs.as_ref(), &mut report)?;
            if report.dropped_grants > 0 {
                // Rows the gathered keys hold are gone.
                self.gathered = None;
            }
            tracing::debug!(ms = t.elapsed().as_millis() as u64, "c1z: dangling rows checked");
        }
        let dir = self.work_dir();
        if let Some(g) = self.gathered.as_mut() {
            // Not used before expansion: its runs go to disk rather than sit in memory beside
            // expansion's.
            g.keys.park(&dir)?;
        }
        let t = Instant::now();
        let ahead = self
            .leaf_pages
            .take()
            .and_then(|(ps, pages)| Some((std::fs::File::open(&self.wip).ok()?, ps, pages)));
        let prefetch = |ids: &[i64]| {
            if let Some((f, ps, pages)) = &ahead {
                let n = table::prefetch_rows(f, *ps, pages, ids);
                tracing::debug!(
                    rows = ids.len(),
                    pages = n,
                    "c1z: leaves of expansion's rows read ahead"
                );
            }
        };
        let prefetch: Option<expand::Prefetch<'_>> = ahead.is_some().then_some(&prefetch);
        // The grants expansion rewrites: their leaves change after they were compressed.
        let rewritten = std::cell::RefCell::new(Vec::new());
        let rewrites = |ids: &[i64]| rewritten.borrow_mut().extend_from_slice(ids);
        report.expansion = expand::expand(
            self.db()?,
            &sync_id,
            self.opts.max_expansion_depth,
            false,
            prefetch,
            Some(&rewrites),
        )?;
        if let Some(p) = self.pieces.as_mut() {
            let mut rows = rewritten.into_inner();
            rows.sort_unstable();
            p.mark_rows(&rows);
        }
        report.expand_ms = t.elapsed().as_millis() as u64;
        let t = Instant::now();
        drop(refs);
        // A duplicate here can only be a grant expansion created under an id another grant has: an
        // error, as inserting it into the unique index would have been (the direct build leaves such a
        // case, and keys it cannot write, to SQLite's CREATE INDEX).
        // The grant indexes not built yet: all four, or the three non-unique ones, or those expansion
        // dropped.
        let mut late: Vec<&BulkIndex> = Vec::new();
        for idx in grant_indexes {
            let exists = self
                .db()?
                .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1")?
                .exists([idx.name])?;
            if !exists {
                late.push(idx);
            }
        }
        if !late.is_empty() && !self.write_grant_indexes(&late, &mut report)? {
            self.build_indexes(&sync_id, false, |i| late.iter().any(|l| l.name == i.name))?;
        }
        index_ms += t.elapsed().as_millis() as u64;
        report.index_ms = index_ms;
        self.db()?.execute(
            "UPDATE v1_sync_runs SET ended_at = ?1 WHERE sync_id = ?2",
            params![timefmt::now_text(), sync_id],
        )?;
        self.commit()?;
        self.check_pieces(&report)?;
        self.db()?
            .execute_batch(&format!("PRAGMA cache_size=-{}", self.opts.cache_kib))?;
        self.active = None;
        tracing::info!(
            index_ms = report.index_ms,
            expand_ms = report.expand_ms,
            "c1z: sync {} ended",
            report.sync_id
        );
        Ok(report)
    }

    /// Builds the grant indexes `late` by writing their b-tree pages directly (see [`btree`]): one pass
    /// over `v1_grants` for all their keys, sorted runs merged into pages appended to the file, page 1's
    /// header updated, the indexes registered in `sqlite_schema`. Commits what is pending first. Returns
    /// false, having changed nothing, when SQLite must build them instead (a key that is not TEXT, a
    /// duplicate in the unique index, a file it does not handle).
    ///
    /// Crash safety: the database size before the build is recorded (as a negative `user_version`) in a
    /// committed transaction first; the pages are written after the last page with no connection open,
    /// then the header's size is set, then one transaction registers the indexes and clears the record.
    /// A kill before the header is written leaves bytes past the size SQLite reads (ignored, overwritten
    /// later); a kill after it leaves pages no b-tree uses, which the next [`open`](Self::open) cuts
    /// off ([`undo_index_build`]). Either way the indexes are not registered and a resumed `end_sync`
    /// builds them again. The one transaction that registers them is journalled as any other.
    fn write_grant_indexes(&mut self, late: &[&BulkIndex], report: &mut EndReport) -> Result<bool> {
        // Gathered keys serve only the first build, and only one of all four indexes.
        let gathered = self.gathered.take();
        let Some(specs) = btree::grant_specs(late) else {
            return Ok(false);
        };
        if specs.is_empty() {
            return Ok(true);
        }
        let dir = self.work_dir();
        let budget = self.opts.sort_run_kib << 10;
        let t = Instant::now();
        // A sequential scan needs no page cache: its memory is better spent on the sort runs.
        self.db()?.execute_batch("PRAGMA cache_size=-2048")?;
        let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
        let mut from_put = 0;
        let keys = match gathered.filter(|g| g.names == names) {
            Some(g) => match g.keys.finish()? {
                // The rows of other syncs (below) and those expansion added (above), from the table.
                Some(mut keys) => {
                    let gathered_rows = keys.rows;
                    let below = btree::collect_rows(
                        self.db()?,
                        &specs,
                        &dir,
                        budget,
                        &mut keys,
                        "WHERE id < ?1",
                        [g.start_id],
                    )?;
                    let above = below
                        && btree::collect_rows(
                            self.db()?,
                            &specs,
                            &dir,
                            budget,
                            &mut keys,
                            "WHERE id >= ?1",
                            [g.end_id],
                        )?;
                    keys.sort_last();
                    if above {
                        from_put = gathered_rows;
                    }
                    above.then_some(keys)
                }
                None => btree::collect(self.db()?, &specs, &dir, budget)?,
            },
            None => btree::collect(self.db()?, &specs, &dir, budget)?,
        };
        let Some(mut keys) = keys else {
            tracing::debug!("c1z: a grant key is not text; SQLite builds the indexes");
            self.db()?.execute_batch(&format!(
                "PRAGMA cache_size=-{}",
                self.opts.index_cache_kib.max(self.opts.cache_kib)
            ))?;
            return Ok(false);
        };
        let pass_ms = t.elapsed().as_millis() as u64;
        let pages: i64 = self.db()?.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let Ok(pages) = u32::try_from(pages) else {
            return Ok(false);
        };
        self.before_write()?;
        self.db()?
            .execute_batch(&format!("PRAGMA user_version={}", -i64::from(pages)))?;
        self.commit()?;
        self.close_db()?;
        let t = Instant::now();
        let written = self.write_pages(&specs, &mut keys, pages);
        let write_ms = t.elapsed().as_millis() as u64;
        drop(keys);
        // Reconnect whatever happened (the writer must not be left on the placeholder).
        self.reconnect()?;
        let Some(roots) = written? else {
            self.db()?.execute_batch("PRAGMA user_version=0")?;
            return Ok(false);
        };
        let t = Instant::now();
        let schema_version: i64 = self.db()?.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        self.db()?.execute_batch("BEGIN; PRAGMA writable_schema=ON;")?;
        self.in_tx = true;
        for (spec, root) in specs.iter().zip(&roots) {
            self.db()?.execute(
                "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ('index', ?1, 'v1_grants', ?2, ?3)",
                params![spec.name, root, spec.sql],
            )?;
        }
        self.db()?.execute_batch(&format!(
            "PRAGMA writable_schema=OFF; PRAGMA user_version=0; PRAGMA schema_version={};",
            schema_version + 1
        ))?;
        self.commit()?;
        // A new connection reads the schema with the indexes (so that later writes maintain them).
        self.close_db()?;
        self.reconnect()?;
        tracing::debug!(
            indexes = specs.len(),
            pass_ms,
            write_ms,
            register_ms = t.elapsed().as_millis() as u64,
            keys_gathered_during_put = from_put,
            "c1z: grant indexes written directly"
        );
        report.index_keys_gathered += from_put;
        // Those pages bypassed the page cache where the system allowed it: `finish` reads them the same way.
        let (end, page_size): (i64, i64) = self.db()?.query_row(
            "SELECT page_count, page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.direct_ranges
            .push((u64::from(pages) * page_size as u64, end as u64 * page_size as u64));
        Ok(true)
    }

    /// The page-writing part of [`write_grant_indexes`](Self::write_grant_indexes), with no connection
    /// open: `None` (and the file as it was) when the unique index has a duplicate or the header is not
    /// one it handles.
    fn write_pages(
        &self,
        specs: &[btree::Spec],
        keys: &mut btree::Collected,
        pages: u32,
    ) -> Result<Option<Vec<u32>>> {
        let Some(hdr) = btree::read_header(&self.wip)?.filter(|h| h.pages == pages) else {
            return Ok(None);
        };
        tracing::debug!(
            rows = keys.rows,
            spilled_runs = keys.spilled,
            "c1z: grant index keys gathered"
        );
        match btree::write_indexes(&self.wip, &hdr, specs, keys) {
            Ok(Some((roots, end))) => {
                btree::set_size(&self.wip, &hdr, end)?;
                Ok(Some(roots))
            }
            Ok(None) => {
                btree::set_size(&self.wip, &hdr, hdr.pages)?;
                Ok(None)
            }
            Err(e) => {
                btree::set_size(&self.wip, &hdr, hdr.pages)?;
                Err(e)
            }
        }
    }

    /// Builds the bulk indexes `which` selects; with `dedupe`, duplicates that fail a unique index are
    /// resolved to their last write, else they are an error.
    fn build_indexes(
        &mut self,
        sync_id: &str,
        dedupe: bool,
        which: impl Fn(&BulkIndex) -> bool,
    ) -> Result<u64> {
        let mut removed = 0;
        for idx in BULK_INDEXES.iter().filter(|i| which(i)) {
            let t = Instant::now();
            match self.db()?.execute_batch(idx.ddl) {
                Ok(()) => {}
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if dedupe && idx.unique && f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    let n = self.db()?.execute(
                        &format!(
                            "DELETE FROM {t} WHERE sync_id = ?1 AND id NOT IN
                               (SELECT MAX(id) FROM {t} WHERE sync_id = ?1 GROUP BY external_id)",
                            t = idx.table
                        ),
                        [sync_id],
                    )?;
                    removed += n as u64;
                    self.db()?.execute_batch(idx.ddl)?;
                }
                Err(e) => return Err(e.into()),
            }
            tracing::debug!(
                index = idx.name,
                ms = t.elapsed().as_millis() as u64,
                "c1z: index built"
            );
        }
        if removed > 0 {
            tracing::warn!(
                sync_id,
                removed,
                "duplicate rows in the sync resolved to their last write"
            );
        }
        Ok(removed)
    }

    fn drop_dangling(
        &mut self,
        sync_id: &str,
        refs: Option<&GrantRefs>,
        report: &mut EndReport,
    ) -> Result<()> {
        let c = self.db()?;
        report.dropped_resources = c.execute(
            "DELETE FROM v1_resources WHERE sync_id = ?1 AND NOT EXISTS
               (SELECT 1 FROM v1_resource_types t WHERE t.sync_id = ?1 AND t.external_id = v1_resources.resource_type_id)",
            [sync_id],
        )? as u64;
        report.dropped_entitlements = c.execute(
            "DELETE FROM v1_entitlements WHERE sync_id = ?1 AND NOT EXISTS
               (SELECT 1 FROM v1_resources r WHERE r.sync_id = ?1
                  AND r.external_id = v1_entitlements.resource_type_id || ':' || v1_entitlements.resource_id)",
            [sync_id],
        )? as u64;
        // The distinct entitlements and principals the grants reference: gathered while they were written,
        // else from one pass over the sync's grants (their non-unique indexes are only built after
        // expansion); then one existence check each through the unique indexes.
        let mut ents: HashSet<String> = HashSet::new();
        let mut principals: HashMap<String, HashSet<String>> = HashMap::new();
        if let Some(refs) = refs {
            ents.extend(refs.entitlements.keys().map(|e| e.to_string()));
            for (t, ids) in &refs.principals {
                principals
                    .entry(t.to_string())
                    .or_default()
                    .extend(ids.iter().map(|i| i.to_string()));
            }
        } else {
            let mut st = c.prepare(
                "SELECT entitlement_id, principal_resource_type_id, principal_resource_id FROM v1_grants WHERE sync_id = ?1",
            )?;
            let mut rows = st.query([sync_id])?;
            while let Some(r) = rows.next()? {
                let e = r.get_ref(0)?.as_str().unwrap_or_default();
                if !ents.contains(e) {
                    ents.insert(e.to_owned());
                }
                let (t, id) = (
                    r.get_ref(1)?.as_str().unwrap_or_default(),
                    r.get_ref(2)?.as_str().unwrap_or_default(),
                );
                // Keyed by type first, so that the lookup borrows and a row allocates nothing.
                if !principals.get(t).is_some_and(|ids| ids.contains(id)) {
                    principals.entry(t.to_owned()).or_default().insert(id.to_owned());
                }
            }
        }
        let mut missing_ent: Vec<String> = Vec::new();
        let mut exists_ent =
            c.prepare_cached("SELECT 1 FROM v1_entitlements WHERE sync_id = ?1 AND external_id = ?2")?;
        for e in ents {
            if !exists_ent.exists(params![sync_id, e])? {
                missing_ent.push(e);
            }
        }
        drop(exists_ent);
        let mut missing_p: Vec<(String, String)> = Vec::new();
        let mut exists_res =
            c.prepare_cached("SELECT 1 FROM v1_resources WHERE sync_id = ?1 AND external_id = ?2")?;
        for (t, id) in principals
            .into_iter()
            .flat_map(|(t, ids)| ids.into_iter().map(move |id| (t.clone(), id)))
        {
            if !exists_res.exists(params![sync_id, format!("{t}:{id}")])? {
                missing_p.push((t, id));
            }
        }
        drop(exists_res);
        missing_ent.sort();
        missing_p.sort();
        if !missing_ent.is_empty() || !missing_p.is_empty() {
            // One pass deletes them all (a DELETE per missing id would scan the table each time).
            c.execute_batch(
                "CREATE TEMP TABLE c1z_missing_ent (id TEXT PRIMARY KEY);
                 CREATE TEMP TABLE c1z_missing_principal (t TEXT, id TEXT, PRIMARY KEY (t, id));",
            )?;
            let mut ins = c.prepare("INSERT INTO temp.c1z_missing_ent (id) VALUES (?1)")?;
            for e in &missing_ent {
                ins.execute([e])?;
            }
            let mut ins = c.prepare("INSERT INTO temp.c1z_missing_principal (t, id) VALUES (?1, ?2)")?;
            for (t, id) in &missing_p {
                ins.execute([t, id])?;
            }
            report.dropped_grants += c.execute(
                "DELETE FROM v1_grants WHERE sync_id = ?1 AND (entitlement_id IN (SELECT id FROM temp.c1z_missing_ent)
                   OR (principal_resource_type_id, principal_resource_id) IN (SELECT t, id FROM temp.c1z_missing_principal))",
                [sync_id],
            )? as u64;
            c.execute_batch("DROP TABLE temp.c1z_missing_ent; DROP TABLE temp.c1z_missing_principal;")?;
        }
        if report.dropped_resources + report.dropped_entitlements + report.dropped_grants > 0 {
            tracing::warn!(
                sync_id,
                resources = report.dropped_resources,
                entitlements = report.dropped_entitlements,
                grants = report.dropped_grants,
                missing_entitlements = ?missing_ent.iter().take(5).collect::<Vec<_>>(),
                missing_principals = ?missing_p.iter().take(5).collect::<Vec<_>>(),
                "dropped rows that reference missing objects (the baton CLI cannot show them)"
            );
        }
        Ok(())
    }

    fn delete_sync_rows(&mut self, sync_id: &str) -> Result<()> {
        self.pieces = None;
        for t in [
            "v1_resource_types",
            "v1_resources",
            "v1_entitlements",
            "v1_grants",
            "v1_assets",
            "v1_connector_sessions",
            "v1_sync_runs",
        ] {
            self.db()?
                .execute(&format!("DELETE FROM {t} WHERE sync_id = ?1"), [sync_id])?;
        }
        Ok(())
    }

    /// Deletes `sync_id` and all its rows from the file.
    pub fn delete_sync(&mut self, sync_id: &str) -> Result<()> {
        self.settle()?;
        if self.sync_id() == Some(sync_id) {
            return Err(C1zError::State(
                "cannot delete the sync in progress: end it first",
            ));
        }
        self.before_write()?;
        self.delete_sync_rows(sync_id)?;
        self.commit()
    }

    /// Compresses the file into its target atomically and removes the working database. Fails while a
    /// sync is in progress. Returns the size of the written file.
    pub fn finish(mut self) -> Result<u64> {
        if self.active.is_some() {
            return Err(C1zError::State(
                "a sync is still in progress: call end_sync before finish",
            ));
        }
        let t0 = Instant::now();
        self.commit()?;
        if let Some(keep) = self.opts.keep_full_syncs {
            let full: Vec<SyncRun> = self
                .sync_runs()?
                .into_iter()
                .filter(|r| r.ended_at.is_some() && r.sync_type == SyncType::Full.as_str())
                .collect();
            let mut by_end = full;
            by_end.sort_by(|a, b| b.ended_at.cmp(&a.ended_at));
            for old in by_end.iter().skip(keep) {
                self.delete_sync(&old.sync_id)?;
            }
        }
        self.db()?
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;")?;
        let Self {
            conn,
            wip,
            target,
            opts,
            direct_ranges,
            pieces,
            ..
        } = self;
        conn.ok_or_else(db_lent)?
            .close()
            .map_err(|(_, e)| C1zError::Sqlite(e))?;
        tracing::debug!(
            ms = t0.elapsed().as_millis() as u64,
            "c1z: working database closed"
        );
        let db_size = std::fs::metadata(&wip).map_err(C1zError::io("stat", &wip))?.len();
        if db_size > envelope::DEFAULT_MAX_DECODED {
            tracing::warn!(
                path = %target.display(),
                db_size,
                "the sync database exceeds 10 GiB: Baton readers refuse to unpack it; embed principals by id only to shrink grants"
            );
        }
        // Pages SQLite changed in the ranges written past the page cache (expansion rewrites grants among
        // the leaves) are still dirty in the page cache. A direct read of a range first writes back the
        // dirty pages in it, one read at a time: they are written back in one go first (at 10 M grants
        // `finish` took 8.6–10.5 s this way, 12.4–12.8 s reading the leaves through the page cache, and
        // longer reading them directly without this).
        let flush = !direct_ranges.is_empty();
        let t = Instant::now();
        let size = envelope::write_c1z_with(
            &wip,
            &target,
            opts.compress,
            &direct_ranges,
            pieces.as_ref(),
            flush,
        )?;
        drop(pieces);
        tracing::debug!(ms = t.elapsed().as_millis() as u64, size, "c1z: compressed");
        let t = Instant::now();
        remove_wip(&wip)?;
        tracing::debug!(ms = t.elapsed().as_millis() as u64, "c1z: working files removed");
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use steward_model::builders::{self, ResourceBuilder};
    use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};

    /// An insert that fails on the insert thread surfaces after the `put_grant` that queued it has
    /// returned: the writer then rolls back to the last checkpoint and refuses every later call, so a
    /// sync with rows missing is never committed; opened again, the file resumes from that checkpoint.
    #[test]
    fn a_failed_insert_on_the_thread_rolls_back_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("full.c1z");
        let opts = WriterOptions {
            crash_safe: true,
            auto_commit_rows: None,
            ..Default::default()
        };
        let mut w = C1zWriter::create_with(&p, opts.clone()).unwrap();
        let sync = w.begin_sync(SyncType::Full).unwrap();
        let ut = builders::resource_type("user", "User", &[Trait::User]);
        let gt = builders::resource_type("group", "Group", &[Trait::Group]);
        w.put_resource_type(&ut).unwrap();
        w.put_resource_type(&gt).unwrap();
        let g = ResourceBuilder::new("group", "g", "G").group().build();
        w.put_resource(&g).unwrap();
        let e = builders::entitlement(
            &g,
            "member",
            "member",
            PurposeValue::Assignment,
            std::slice::from_ref(&ut),
        );
        w.put_entitlement(&e).unwrap();
        let user = |i: usize| ResourceBuilder::new("user", &format!("u{i}"), "U").build();
        for i in 0..1_000 {
            w.put_resource(&user(i)).unwrap();
            w.put_grant(&builders::grant(&e, &user(i))).unwrap();
        }
        w.checkpoint("kept").unwrap();
        // The file may not grow any more: the next inserts fail (SQLITE_FULL) on the insert thread.
        let pages: i64 = w
            .db()
            .unwrap()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        w.db()
            .unwrap()
            .execute_batch(&format!("PRAGMA max_page_count = {pages}"))
            .unwrap();
        let mut refused = None;
        for i in 1_000..200_000 {
            if let Err(err) = w.put_grant(&builders::grant(&e, &user(i))) {
                refused = Some(err);
                break;
            }
            if i % 5_000 == 0 {
                // A resource written while the thread holds the connection waits for it.
                w.put_resource(&user(i)).unwrap();
            }
        }
        let err = match refused {
            Some(e) => e,
            None => w.checkpoint("lost").unwrap_err(),
        };
        assert!(err.to_string().contains("full"), "{err}");
        assert!(matches!(w.checkpoint("lost"), Err(C1zError::Failed(_))));
        assert!(matches!(
            w.put_grant(&builders::grant(&e, &user(7))),
            Err(C1zError::Failed(_))
        ));
        assert!(matches!(w.end_sync(), Err(C1zError::Failed(_))));
        drop(w);
        let mut w = C1zWriter::open_with(&p, opts).unwrap();
        let run = w.unfinished_sync().unwrap().unwrap();
        assert_eq!(run.sync_id, sync);
        w.resume_sync(&sync).unwrap();
        assert_eq!(w.sync_token().unwrap(), "kept");
        let grants: i64 = w
            .db()
            .unwrap()
            .query_row("SELECT count(*) FROM v1_grants", [], |r| r.get(0))
            .unwrap();
        let users: i64 = w
            .db()
            .unwrap()
            .query_row(
                "SELECT count(*) FROM v1_resources WHERE resource_type_id = 'user'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!((grants, users), (1_000, 1_000));
    }

    /// How the grants of [`pieces_scenario`] are laid out.
    #[derive(Clone, Copy, Debug)]
    enum Order {
        /// Each user's grants together (as the `write_grants` benchmark), the expandable grants first.
        UsersExpandableFirst,
        /// The same, the expandable grants last: the leaves expansion rewrites are not known as such
        /// while they are written.
        UsersExpandableLast,
        /// Each entitlement's grants together, the expandable ones first.
        Entitlements,
    }

    /// Writes a sync whose expansion rewrites grants among the compressed leaves (`pieces`): `groups`
    /// groups, each user a member of every one; group `k` (1 ≤ k ≤ `sources`) is a member of group 0.
    /// Checks that the c1z holds exactly the working database as `end_sync` left it, and returns whether
    /// the pieces survived `end_sync` and `pieces::OUTCOMES` for the sync.
    /// With `retry`, the first `end_sync` fails halfway through expansion's rewrites and is called again.
    fn pieces_scenario(
        users: usize,
        groups: usize,
        sources: usize,
        order: Order,
        retry: bool,
    ) -> (bool, (u32, u32, u32)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.c1z");
        let mut w = C1zWriter::create_with(&path, WriterOptions::default()).unwrap();
        w.begin_sync(SyncType::Full).unwrap();
        let ut = builders::resource_type("user", "User", &[Trait::User]);
        let gt = builders::resource_type("group", "Group", &[Trait::Group]);
        w.put_resource_type(&ut).unwrap();
        w.put_resource_type(&gt).unwrap();
        let gs: Vec<_> = (0..groups)
            .map(|g| {
                ResourceBuilder::new("group", &format!("group-{g:04}"), "G")
                    .group()
                    .build()
            })
            .collect();
        let ents: Vec<_> = gs
            .iter()
            .map(|g| {
                builders::entitlement(
                    g,
                    "member",
                    "member",
                    PurposeValue::Assignment,
                    &[ut.clone(), gt.clone()],
                )
            })
            .collect();
        for g in &gs {
            w.put_resource(g).unwrap();
        }
        for e in &ents {
            w.put_entitlement(e).unwrap();
        }
        let us: Vec<_> = (0..users)
            .map(|i| ResourceBuilder::new("user", &format!("user-{i:06}"), "U").build())
            .collect();
        for u in &us {
            w.put_resource(u).unwrap();
        }
        let nested: Vec<_> = (1..=sources)
            .map(|k| builders::expandable(builders::grant(&ents[0], &gs[k]), &[&ents[k].id]))
            .collect();
        if !matches!(order, Order::UsersExpandableLast) {
            nested.iter().for_each(|g| w.put_grant(g).unwrap());
        }
        match order {
            Order::Entitlements => {
                for e in &ents {
                    us.iter()
                        .for_each(|u| w.put_grant(&builders::grant(e, u)).unwrap());
                }
            }
            _ => {
                for u in &us {
                    ents.iter()
                        .for_each(|e| w.put_grant(&builders::grant(e, u)).unwrap());
                }
            }
        }
        if matches!(order, Order::UsersExpandableLast) {
            nested.iter().for_each(|g| w.put_grant(g).unwrap());
        }
        crate::pieces::OUTCOMES.with(|o| o.set((0, 0, 0)));
        if retry {
            crate::expand::FAIL_AFTER.with(|f| f.set(Some(users / 2)));
            let first = w.end_sync();
            crate::expand::FAIL_AFTER.with(|f| f.set(None));
            assert!(first.is_err(), "the injected failure");
        }
        let rep = w.end_sync().unwrap();
        // A retry finds the rows the failed attempt rewrote (the journal is off) already done.
        let expected = if retry { users - users / 2 } else { users };
        assert_eq!(rep.expansion.grants_updated as usize, expected);
        let kept = w.pieces.is_some();
        let db = std::fs::read(&w.wip).unwrap();
        w.finish().unwrap();
        let outcomes = crate::pieces::OUTCOMES.with(|o| o.get());
        let back = dir.path().join("back.db");
        envelope::read_c1z(&path, &back, envelope::DEFAULT_MAX_DECODED).unwrap();
        let got = std::fs::read(&back).unwrap();
        assert_eq!(got.len(), db.len(), "{order:?}: database size");
        let ps = 65536;
        let first_diff = db.chunks(ps).zip(got.chunks(ps)).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{order:?}: first page that differs (0-based)");
        (kept, outcomes)
    }

    /// The leaves compressed during the sync end up in the c1z as the database has them after
    /// expansion: rewritten leaves compressed again, known or not as such beforehand; a rebalanced grant
    /// table makes `finish` compress the file as a whole.
    #[test]
    fn leaves_compressed_early_match_the_database_after_expansion() {
        // One rewritten grant (10 sources) among the 1,000 of each user: about one leaf in seven.
        let (kept, outcomes) = pieces_scenario(100, 1_000, 10, Order::UsersExpandableFirst, false);
        assert!(kept, "no leaf rebalanced");
        assert_eq!(outcomes, (1, 0, 0));
        let (kept, (used, fallback, rebalanced)) =
            pieces_scenario(100, 1_000, 10, Order::UsersExpandableLast, false);
        assert!(kept);
        assert_eq!((used + fallback, rebalanced), (1, 0));
        // Each user's grant on group 0 grows by 30 sources: more than a leaf's room when they lie
        // together.
        let (kept, outcomes) = pieces_scenario(1_500, 31, 30, Order::Entitlements, false);
        assert!(!kept, "a rebalanced leaf drops the pieces");
        assert_eq!(outcomes, (0, 0, 1));
        // An end_sync that failed after rewriting rows (not tracked) leaves no pieces to trust.
        let (kept, outcomes) = pieces_scenario(100, 1_000, 10, Order::UsersExpandableFirst, true);
        assert!(!kept);
        assert_eq!(outcomes, (0, 0, 0));
    }
}
