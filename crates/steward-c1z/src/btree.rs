//! The `v1_grants` secondary indexes written as SQLite b-trees directly, instead of one `CREATE INDEX`
//! (a full pass over the grant table and a sort) per index.
//!
//! [`collect`] reads every row of `v1_grants` once (all syncs in the file) and gathers the keys of all
//! the indexes to build at once: per index, the key columns and the row id in a form whose bytewise
//! order is SQLite's order of the entries ([`push_key_col`], [`push_rowid`]), appended to a run buffer.
//! When the buffers reach their share of a fixed budget (`WriterOptions::sort_run_kib`, by default
//! [`RUN_BUDGET`], in all), each is sorted (7 key bytes at a time, [`Runs::sort`]) and spilled to an
//! unnamed temporary file next to the database (keys front-coded, [`Runs::spill`]), so memory stays flat
//! in the grant count. The non-unique indexes, whose keys are made of few distinct parts (a principal, a
//! resource, an entitlement), keep them as numbers of a dictionary instead ([`Keys::Ids`],
//! `crate::keydict`): 16 bytes an entry, sorted and merged by integer comparisons, turned back into the
//! same key bytes on the way to the page builder. The writer usually gathers the same keys while it
//! inserts the grants instead ([`Gatherer`]: the same entries, built by a background thread from the
//! values the writer binds and the row ids its rows get, full runs sorted and spilled there too), and
//! adds only the rows it did not insert with [`collect_rows`] (row-id ranges of the table).
//!
//! [`write_indexes`] then, with no SQLite connection open on the database, merges each index's runs
//! (k-way, a binary heap, on a thread of its own that hands the entries over in batches) and appends
//! its b-tree pages to the end of the database file, in SQLite's file format
//! (<https://www.sqlite.org/fileformat2.html>): index leaf pages (0x0a) and interior index pages (0x02)
//! whose cells are `[left child]` + payload size + record (key columns, then the row id), payloads
//! longer than the maximum local size continued on overflow pages. The order is SQLite's for these keys:
//! every key column holds TEXT (anything else makes [`collect`] give up, and the caller builds the
//! indexes with SQLite), compared bytewise (BINARY collation, UTF-8), then the row id. The tree is built
//! bottom up while the sorted entries stream by: a leaf is filled until the next entry does not fit;
//! that entry goes up to the parent level as the divider (in an index b-tree every entry is stored once,
//! interior cells are entries too), and so on up. A divider is only sent up once a following entry
//! exists, so no page is left empty; at the end of the stream the last page of a level that has a
//! divider waiting gives its own last cell up instead. Every leaf is at the same depth. A duplicate key
//! in a unique index stops the build (the caller then builds with SQLite, which reports it as before).
//! Page 1's header (database size, file change counter, version-valid-for) is then updated, and the
//! caller registers the indexes in `sqlite_schema`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::direct::{self, SeqWriter};
use crate::error::{C1zError, Result};
use crate::keydict::{Dict, IdRuns, NONE};
use crate::schema::BulkIndex;

/// Memory for the sort runs of all indexes together (each index gets an equal share); a full buffer is
/// sorted and spilled to a temporary file.
pub(crate) const RUN_BUDGET: usize = 64 << 20;

/// The columns [`collect`] reads, after the row id, in this order.
const COLUMNS: [&str; 7] = [
    "external_id",
    "sync_id",
    "resource_type_id",
    "resource_id",
    "entitlement_id",
    "principal_resource_type_id",
    "principal_resource_id",
];

/// One index to build.
pub(crate) struct Spec {
    /// Index name.
    pub name: &'static str,
    /// The `sql` that `sqlite_schema` holds for it (SQLite stores the statement without `IF NOT EXISTS`).
    pub sql: String,
    /// Positions of its key columns in [`COLUMNS`].
    cols: Vec<usize>,
    /// UNIQUE (a duplicate key stops the build).
    pub unique: bool,
}

impl Spec {
    /// The spec of a `v1_grants` bulk index, or `None` if its columns are not ones [`collect`] reads.
    pub(crate) fn of(idx: &BulkIndex) -> Option<Self> {
        if idx.table != "v1_grants" {
            return None;
        }
        let open = idx.ddl.rfind('(')?;
        let close = idx.ddl.rfind(')')?;
        let cols = idx
            .ddl
            .get(open + 1..close)?
            .split(',')
            .map(|c| COLUMNS.iter().position(|n| *n == c.trim()))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            name: idx.name,
            sql: idx.ddl.replace(" IF NOT EXISTS", ""),
            cols,
            unique: idx.unique,
        })
    }
}

/// Sorted runs of one index: spilled files and the last, in-memory run.
struct Runs {
    files: Vec<File>,
    /// Entries: `u32` (LE) length, then the key in a form whose bytewise order is SQLite's order of the
    /// index entry ([`push_key_col`] per column, then [`push_rowid`]).
    arena: Vec<u8>,
    /// Each entry's sort chunk ([`chunk_at`]) and offset.
    sorted: Vec<(u64, u32)>,
}

/// The gathered keys of one index.
enum Keys {
    /// As key bytes (a unique index, or one with more than two parts).
    Bytes(Runs),
    /// As numbers of their parts in [`Collected::dict`] (`parts`: places in [`Collected::parts`]; the
    /// second `usize::MAX` for one part).
    Ids { runs: IdRuns, parts: [usize; 2] },
}

/// A key part of the dictionary-keyed indexes: columns stored in the dictionary together, and the number
/// of the last row's value (rows come grouped by entitlement or by principal, so most repeat it).
struct Part {
    cols: Vec<usize>,
    last: Vec<u8>,
    id: u32,
    scratch: Vec<u8>,
}

/// The keys of every index, gathered by one pass over `v1_grants`.
pub(crate) struct Collected {
    runs: Vec<Keys>,
    dict: Dict,
    parts: Vec<Part>,
    /// Rows read.
    pub rows: u64,
    /// Temporary files written (sorted runs).
    pub spilled: usize,
}

/// The parts of an index's key: a resource type column with the id column after it as one part (the
/// pair repeats as a whole: a principal, a resource), any other column alone.
fn parts_of(cols: &[usize]) -> Vec<Vec<usize>> {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < cols.len() {
        let c = cols[i];
        let pair = COLUMNS[c].ends_with("resource_type_id")
            && cols.get(i + 1) == Some(&(c + 1))
            && COLUMNS.get(c + 1).is_some_and(|n| n.ends_with("resource_id"));
        if pair {
            parts.push(vec![c, c + 1]);
            i += 2;
        } else {
            parts.push(vec![c]);
            i += 1;
        }
    }
    parts
}

/// Appends a TEXT column so that byte order of the whole key is column-by-column order: the bytes with
/// each 0x00 written as 0x00 0xFF, then the terminator 0x00 0x00 (which sorts before any continuation,
/// as a shorter string sorts before a longer one it starts).
fn push_key_col(out: &mut Vec<u8>, v: &[u8]) {
    if zero_at(v).is_some() {
        for &b in v {
            out.push(b);
            if b == 0 {
                out.push(0xff);
            }
        }
    } else {
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&[0, 0]);
}

/// Appends the row id, big-endian with the sign bit flipped (byte order = integer order).
pub(crate) fn push_rowid(out: &mut Vec<u8>, id: i64) {
    out.extend_from_slice(&((id as u64) ^ (1 << 63)).to_be_bytes());
}

/// Whether the key columns (not the row id) of two keys are equal.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() >= 8 && b.len() >= 8 && a[..a.len() - 8] == b[..b.len() - 8]
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn rowid_of(e: &[u8]) -> i64 {
    let mut r = [0u8; 8];
    r.copy_from_slice(&e[e.len() - 8..]);
    (u64::from_be_bytes(r) ^ (1 << 63)) as i64
}

/// Key bytes `7 * depth ..` as a big-endian number: 7 bytes (zero-padded past the end), then how many
/// key bytes remain, capped at 8 — so that only a key ending within these 7 bytes is told apart by it,
/// and sorts first (it is then a prefix of the other).
fn chunk_at(key: &[u8], depth: usize) -> u64 {
    let rest = &key[(7 * depth).min(key.len())..];
    let mut b = [0u8; 8];
    let n = rest.len().min(7);
    b[..n].copy_from_slice(&rest[..n]);
    b[7] = rest.len().min(8) as u8;
    u64::from_be_bytes(b)
}

impl Runs {
    fn entry(&self, off: u32) -> &[u8] {
        let o = off as usize;
        let len = u32_le(&self.arena, o) as usize;
        &self.arena[o + 4..o + 4 + len]
    }

    /// Sorts the entries by key: by 7 key bytes at a time (kept next to each entry's offset, so that a
    /// comparison touches no key bytes; [`chunk_at`]), refining only the groups of entries whose bytes
    /// so far are equal with the next 7 — one read of each tied key per 7 bytes of common prefix, instead
    /// of reading both keys in every comparison of a comparison sort. Deep ties (more than 112 equal
    /// bytes) are sorted by whole keys.
    fn sort(&mut self) {
        let mut sorted = std::mem::take(&mut self.sorted);
        let mut stack = vec![(0usize, sorted.len(), 0usize)];
        while let Some((start, end, depth)) = stack.pop() {
            let group = &mut sorted[start..end];
            if depth > 0 {
                for e in group.iter_mut() {
                    *e = (chunk_at(self.entry(e.1), depth), e.1);
                }
            }
            if depth >= 16 {
                group.sort_unstable_by(|a, b| self.entry(a.1).cmp(self.entry(b.1)));
                continue;
            }
            group.sort_unstable_by_key(|e| e.0);
            let mut i = 0;
            while i < group.len() {
                let mut j = i + 1;
                while j < group.len() && group[j].0 == group[i].0 {
                    j += 1;
                }
                if j - i > 1 {
                    stack.push((start + i, start + j, depth + 1));
                }
                i = j;
            }
        }
        self.sorted = sorted;
    }

    /// Sorts the buffer and writes it to a temporary file, each key as the length of the prefix it
    /// shares with the one before, its remaining length (both LEB128) and the remaining bytes: sorted
    /// keys share long prefixes (the same entitlement, principal, or whole key but the row id), so the
    /// runs are a fraction of the keys' size.
    fn spill(&mut self, dir: &Path) -> Result<()> {
        self.sort();
        let f = tempfile::tempfile_in(dir).map_err(C1zError::io("create a sort run in", dir))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut prev: &[u8] = &[];
        let mut head = Vec::with_capacity(10);
        for &(_, off) in &self.sorted {
            let key = self.entry(off);
            let shared = prev.iter().zip(key).take_while(|(a, b)| a == b).count();
            head.clear();
            put_leb(&mut head, shared as u64);
            put_leb(&mut head, (key.len() - shared) as u64);
            w.write_all(&head)
                .and_then(|()| w.write_all(&key[shared..]))
                .map_err(C1zError::io("write a sort run in", dir))?;
            prev = key;
        }
        let f = w
            .into_inner()
            .map_err(|e| C1zError::io("write a sort run in", dir)(e.into_error()))?;
        self.files.push(f);
        self.arena.clear();
        self.sorted.clear();
        Ok(())
    }
}

pub(crate) fn put_leb(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 number from the reader's buffer; `None` at the end of the input before its first byte.
pub(crate) fn read_leb(r: &mut impl BufRead) -> std::io::Result<Option<u64>> {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let (used, done) = {
            let buf = r.fill_buf()?;
            if buf.is_empty() {
                if shift == 0 {
                    return Ok(None);
                }
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut used = 0;
            let mut done = false;
            for &b in buf {
                used += 1;
                if shift > 63 {
                    return Err(std::io::Error::other("sort run: number too long"));
                }
                v |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    done = true;
                    break;
                }
            }
            (used, done)
        };
        r.consume(used);
        if done {
            return Ok(Some(v));
        }
    }
}

/// Appends the entry of one row to `run`: `vals` are the row's values of [`COLUMNS`], `id` its row id.
/// False when the run buffer would pass 4 GiB (offsets are `u32`).
fn push_entry(run: &mut Runs, spec: &Spec, vals: &[&[u8]; 7], id: i64) -> bool {
    let off = run.arena.len();
    run.arena.extend_from_slice(&[0; 4]);
    for &c in &spec.cols {
        push_key_col(&mut run.arena, vals[c]);
    }
    push_rowid(&mut run.arena, id);
    let len = run.arena.len() - off - 4;
    if run.arena.len() > u32::MAX as usize {
        return false;
    }
    run.arena[off..off + 4].copy_from_slice(&(len as u32).to_le_bytes());
    let key = &run.arena[off + 4..];
    run.sorted.push((chunk_at(key, 0), off as u32));
    true
}

impl Runs {
    fn with_capacity(share: usize) -> Self {
        Self {
            files: Vec::new(),
            // Reserved (not yet touched) so that filling it never copies it.
            arena: Vec::with_capacity(share + (64 << 10)),
            sorted: Vec::new(),
        }
    }
}

impl Collected {
    /// Adds one row's entry (`vals`: its seven key columns, `id`: its row id) to each index's run, spilling
    /// a run that reaches `share` bytes; false when an entry cannot be made (the caller gives up).
    fn add_row(
        &mut self,
        specs: &[Spec],
        vals: &[&[u8]; 7],
        id: i64,
        share: usize,
        dir: &Path,
    ) -> Result<bool> {
        let Self {
            runs,
            dict,
            parts,
            rows,
            spilled,
        } = self;
        *rows += 1;
        for p in parts.iter_mut() {
            p.scratch.clear();
            for &c in &p.cols {
                push_key_col(&mut p.scratch, vals[c]);
            }
            if p.id == NONE || p.scratch != p.last {
                let Some(n) = dict.intern(&p.scratch) else {
                    return Ok(false);
                };
                p.id = n;
                std::mem::swap(&mut p.last, &mut p.scratch);
            }
        }
        for (spec, keys) in specs.iter().zip(runs.iter_mut()) {
            match keys {
                Keys::Bytes(run) => {
                    if !push_entry(run, spec, vals, id) {
                        return Ok(false);
                    }
                    if run.arena.len() >= share {
                        run.spill(dir)?;
                        *spilled += 1;
                    }
                }
                Keys::Ids { runs, parts: at } => {
                    let ids = at.map(|i| parts.get(i).map_or(NONE, |p| p.id));
                    if !runs.push(ids, id) {
                        return Ok(false);
                    }
                    if runs.bytes() >= share {
                        runs.spill(dict, dir)?;
                        *spilled += 1;
                    }
                }
            }
        }
        Ok(true)
    }

    /// No keys yet, for `specs`' indexes.
    fn empty(specs: &[Spec], budget: usize) -> Self {
        let share = budget / specs.len().max(1);
        let mut parts: Vec<Part> = Vec::new();
        let runs = specs
            .iter()
            .map(|spec| {
                let cols = parts_of(&spec.cols);
                if spec.unique || cols.len() > 2 {
                    return Keys::Bytes(Runs::with_capacity(share));
                }
                let mut at = [usize::MAX; 2];
                for (a, c) in at.iter_mut().zip(&cols) {
                    *a = match parts.iter().position(|p| p.cols == *c) {
                        Some(i) => i,
                        None => {
                            parts.push(Part {
                                cols: c.clone(),
                                last: Vec::new(),
                                id: NONE,
                                scratch: Vec::new(),
                            });
                            parts.len() - 1
                        }
                    };
                }
                Keys::Ids {
                    runs: IdRuns::new(cols.len()),
                    parts: at,
                }
            })
            .collect();
        Self {
            runs,
            dict: Dict::default(),
            parts,
            rows: 0,
            spilled: 0,
        }
    }

    /// Spills the in-memory run of each index and frees its memory (keys kept while other work needs the
    /// memory; more rows can still be added).
    pub(crate) fn spill_all(&mut self, dir: &Path) -> Result<()> {
        for keys in &mut self.runs {
            match keys {
                Keys::Bytes(run) => {
                    if !run.sorted.is_empty() {
                        run.spill(dir)?;
                        self.spilled += 1;
                    }
                    run.arena = Vec::new();
                    run.sorted = Vec::new();
                }
                Keys::Ids { runs, .. } => {
                    if !runs.is_empty() {
                        runs.spill(&mut self.dict, dir)?;
                        self.spilled += 1;
                    }
                    runs.release();
                }
            }
        }
        Ok(())
    }

    /// Sorts the last, in-memory run of each index (after the last row was added).
    pub(crate) fn sort_last(&mut self) {
        self.dict.rank_all();
        for keys in &mut self.runs {
            match keys {
                Keys::Bytes(run) => run.sort(),
                Keys::Ids { runs, .. } => runs.sort(&self.dict),
            }
        }
    }
}

/// Adds the keys of `specs` of the `v1_grants` rows `filter` selects (SQL after `FROM v1_grants`, with
/// `args`) to `keys`, whose in-memory runs are spilled when they reach their share of `budget`. False
/// when a key column holds something other than TEXT (the caller then lets SQLite build the indexes).
pub(crate) fn collect_rows(
    conn: &Connection,
    specs: &[Spec],
    dir: &Path,
    budget: usize,
    keys: &mut Collected,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<bool> {
    let share = budget / specs.len().max(1);
    let mut st = conn.prepare(&format!(
        "SELECT id, {} FROM v1_grants {filter}",
        COLUMNS.join(", ")
    ))?;
    let mut rows = st.query(args)?;
    while let Some(r) = rows.next()? {
        let id = r.get::<_, i64>(0)?;
        let mut vals: [&[u8]; 7] = [&[]; 7];
        for (i, v) in vals.iter_mut().enumerate() {
            match r.get_ref(i + 1)? {
                ValueRef::Text(t) => *v = t,
                _ => return Ok(false),
            }
        }
        if !keys.add_row(specs, &vals, id, share, dir)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One pass over every row of `v1_grants`, gathering the keys of `specs` (sorted runs of `budget` bytes
/// in all). `None` when a key column holds something other than TEXT (the caller then lets SQLite build
/// the indexes).
pub(crate) fn collect(
    conn: &Connection,
    specs: &[Spec],
    dir: &Path,
    budget: usize,
) -> Result<Option<Collected>> {
    let mut keys = Collected::empty(specs, budget);
    if !collect_rows(conn, specs, dir, budget, &mut keys, "", [])? {
        return Ok(None);
    }
    keys.sort_last();
    Ok(Some(keys))
}

/// Rows handed to the gathering thread: their values of [`COLUMNS`] in one buffer and their row ids.
#[derive(Default)]
struct RowBatch {
    bytes: Vec<u8>,
    /// Per row, the end offsets of its values in `bytes` (each starts where the previous one ends).
    ends: Vec<[usize; 7]>,
    ids: Vec<i64>,
}

/// Bytes of row values sent to the gathering thread at a time.
const ROW_BATCH_BYTES: usize = 256 << 10;

/// Row batches that can wait for the gathering thread (while it sorts and spills a run).
const ROW_BATCHES_QUEUED: usize = 32;

impl RowBatch {
    fn push(&mut self, vals: &[&[u8]; 7], id: i64) {
        let mut ends = [0usize; 7];
        for (e, v) in ends.iter_mut().zip(vals) {
            self.bytes.extend_from_slice(v);
            *e = self.bytes.len();
        }
        self.ends.push(ends);
        self.ids.push(id);
    }

    /// Adds every row's entries to `keys` (spilling full runs); false when one does not fit.
    fn add_to(&self, specs: &[Spec], keys: &mut Collected, share: usize, dir: &Path) -> Result<bool> {
        let mut start = 0;
        for (ends, &id) in self.ends.iter().zip(&self.ids) {
            let mut vals: [&[u8]; 7] = [&[]; 7];
            for (v, &end) in vals.iter_mut().zip(ends) {
                *v = &self.bytes[start..end];
                start = end;
            }
            if !keys.add_row(specs, &vals, id, share, dir)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.ids.clear();
    }
}

/// The keys of the grant indexes gathered while the writer inserts the rows (instead of a pass over the
/// table at the end). The writer hands over each inserted row's values and row id; they are copied into
/// a batch, and full batches go to a background thread that builds the entries exactly as [`collect`]
/// does, sorts full runs and spills them to unnamed temporary files — so that building, sorting and
/// spilling overlap the inserts (on another core). The writer's thread only copies the values. Memory:
/// the runs (`budget`) plus at most [`ROW_BATCHES_QUEUED`] batches waiting for the thread.
pub(crate) struct Gatherer {
    names: Vec<&'static str>,
    batch: RowBatch,
    jobs: Option<std::sync::mpsc::SyncSender<RowBatch>>,
    free: std::sync::mpsc::Receiver<RowBatch>,
    worker: Option<std::thread::JoinHandle<Result<Option<Collected>>>>,
}

impl Gatherer {
    /// Starts gathering the keys of `specs` (runs of `budget` bytes in all, spilled into `dir`).
    pub(crate) fn new(specs: Vec<Spec>, dir: &Path, budget: usize) -> Result<Self> {
        let share = budget / specs.len().max(1);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<RowBatch>(ROW_BATCHES_QUEUED);
        let (give_back, free) = std::sync::mpsc::channel::<RowBatch>();
        let names = specs.iter().map(|s| s.name).collect();
        let tdir = dir.to_owned();
        let worker = std::thread::Builder::new()
            .name("c1z-index-keys".into())
            .spawn(move || -> Result<Option<Collected>> {
                let mut keys = Collected::empty(&specs, budget);
                let mut ok = true;
                for mut batch in queue {
                    if ok {
                        ok = batch.add_to(&specs, &mut keys, share, &tdir)?;
                    }
                    batch.clear();
                    // The writer may have stopped gathering: then nobody takes the batch back.
                    let _ = give_back.send(batch);
                }
                Ok(ok.then_some(keys))
            })
            .map_err(C1zError::io("start the index key thread for", dir))?;
        Ok(Self {
            names,
            batch: RowBatch::default(),
            jobs: Some(jobs),
            free,
            worker: Some(worker),
        })
    }

    /// The names of the indexes whose keys are gathered, in order.
    pub(crate) fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Adds one inserted row (`vals`: its values of [`COLUMNS`]; `id`: its row id).
    pub(crate) fn add(&mut self, vals: &[&[u8]; 7], id: i64) -> Result<()> {
        self.batch.push(vals, id);
        if self.batch.bytes.len() >= ROW_BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }

    /// Hands the current batch to the thread.
    fn send(&mut self) -> Result<()> {
        let fresh = self.free.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.batch, fresh);
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(full).is_ok());
        if !sent {
            // The thread stopped: its error says why.
            self.join()?;
            return Err(C1zError::State("the index key thread stopped"));
        }
        Ok(())
    }

    /// Waits for the thread to take in every row sent.
    fn join(&mut self) -> Result<Option<Collected>> {
        self.jobs = None;
        match self.worker.take() {
            Some(h) => h
                .join()
                .map_err(|_| C1zError::State("the index key thread panicked"))?,
            None => Err(C1zError::State("the index key thread is gone")),
        }
    }

    /// The gathered keys (the last runs not sorted yet: more rows may be added with [`collect_rows`],
    /// then [`Collected::sort_last`]); `None` when a key could not be gathered.
    pub(crate) fn finish(mut self) -> Result<Option<Collected>> {
        if !self.batch.ids.is_empty() {
            self.send()?;
        }
        self.join()
    }
}

impl Drop for Gatherer {
    fn drop(&mut self) {
        // Let the thread finish what it was given (its files are unnamed: closing them frees them).
        self.jobs = None;
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

/// The specs of every `v1_grants` bulk index in build order (the unique one first: a duplicate stops the
/// build before the others are written); `None` if one is not a kind [`collect`] handles.
pub(crate) fn grant_specs(indexes: &[&BulkIndex]) -> Option<Vec<Spec>> {
    let mut specs = indexes.iter().map(|i| Spec::of(i)).collect::<Option<Vec<_>>>()?;
    specs.sort_by_key(|s| !s.unique);
    Some(specs)
}

/// The facts of page 1's header that the b-tree writer needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbHeader {
    pub page_size: usize,
    /// Page size minus the reserved bytes at the end of each page.
    pub usable: usize,
    /// Pages in the database (in-header size).
    pub pages: u32,
    change_counter: u32,
    /// Schema format 4 stores the integers 0 and 1 as serial types 8 and 9.
    pub format4: bool,
}

/// Reads page 1's header; `None` when the file is not something [`write_indexes`] handles (not UTF-8,
/// in-header size not valid).
pub(crate) fn read_header(path: &Path) -> Result<Option<DbHeader>> {
    let mut f = File::open(path).map_err(C1zError::io("open", path))?;
    let mut h = [0u8; 100];
    f.read_exact(&mut h).map_err(C1zError::io("read", path))?;
    let ps = u16::from_be_bytes([h[16], h[17]]) as usize;
    let page_size = if ps == 1 { 65536 } else { ps };
    let be = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let (counter, pages, valid_for, encoding, format) = (be(24), be(28), be(92), be(56), be(44));
    // An auto-vacuum database (a non-zero largest root page) keeps pointer-map pages that pages written
    // here would have to be entered in.
    let auto_vacuum = be(52) != 0;
    if &h[..16] != b"SQLite format 3\0"
        || auto_vacuum
        || encoding != 1
        || counter != valid_for
        || pages == 0
        || page_size < 512
    {
        return Ok(None);
    }
    Ok(Some(DbHeader {
        page_size,
        usable: page_size - h[20] as usize,
        pages,
        change_counter: counter,
        format4: format >= 4,
    }))
}

/// Sets the database size in page 1's header to `pages` (and bumps the change counter, with the
/// version-valid-for number equal to it) and cuts the file to that size.
pub(crate) fn set_size(path: &Path, hdr: &DbHeader, pages: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(C1zError::io("open", path))?;
    let counter = hdr.change_counter.wrapping_add(1);
    let io = C1zError::io("write the header of", path);
    f.seek(SeekFrom::Start(24))
        .map_err(C1zError::io("seek in", path))?;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&counter.to_be_bytes());
    b[4..].copy_from_slice(&pages.to_be_bytes());
    f.write_all(&b)
        .map_err(C1zError::io("write the header of", path))?;
    f.seek(SeekFrom::Start(92))
        .map_err(C1zError::io("seek in", path))?;
    f.write_all(&counter.to_be_bytes()).map_err(io)?;
    f.set_len(pages as u64 * hdr.page_size as u64)
        .map_err(C1zError::io("truncate", path))?;
    Ok(())
}

/// Pages appended to the database file in page-number order.
struct PageOut {
    w: SeqWriter,
    next: u32,
    page: Vec<u8>,
    hdr: DbHeader,
}

impl PageOut {
    /// Pages appended to the file at `path` after the `hdr.pages` it has (bypassing the page cache
    /// where the system allows it: they are read once more, by `finish`).
    fn new(hdr: DbHeader, path: &Path) -> Result<Self> {
        let end = hdr.pages as u64 * hdr.page_size as u64;
        Ok(Self {
            w: SeqWriter::open(path, end, hdr.page_size.is_multiple_of(direct::ALIGN))?,
            next: hdr.pages + 1,
            page: vec![0u8; hdr.page_size],
            hdr,
        })
    }

    /// SQLite's lock-byte page: the page holding byte 2^30 of the file is never part of a b-tree
    /// (`integrity_check` reports a reference to it as a second reference), so numbering skips it.
    fn lock_page(&self) -> u32 {
        lock_page(self.hdr.page_size)
    }

    /// The number [`append`](Self::append) gives the next page.
    fn next_no(&self) -> u32 {
        if self.next == self.lock_page() {
            self.next.saturating_add(1)
        } else {
            self.next
        }
    }

    /// The number of the page after that one.
    fn after_next_no(&self) -> u32 {
        let n = self.next_no().saturating_add(1);
        if n == self.lock_page() {
            n.saturating_add(1)
        } else {
            n
        }
    }

    /// Writes the lock-byte page, when it is next, as zeros (as SQLite leaves it).
    fn skip_lock_page(&mut self) -> Result<()> {
        if self.next == self.lock_page() {
            let zeros = vec![0u8; self.page.len()];
            self.w.write_all(&zeros)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Counts the next page as written; returns its number.
    fn count_page(&mut self) -> Result<u32> {
        let pgno = self.next;
        self.next = self
            .next
            .checked_add(1)
            .ok_or(C1zError::State("the database would exceed 2^32 pages"))?;
        Ok(pgno)
    }

    /// The bytes of the next page, in the writer's buffer, to be filled whole and then counted with
    /// [`commit`](Self::commit) (until then, calls return the same page).
    fn slot(&mut self) -> Result<&mut [u8]> {
        self.skip_lock_page()?;
        self.w.slot(self.page.len())
    }

    /// Counts the page filled in the [`slot`](Self::slot) as written; returns its number.
    fn commit(&mut self) -> Result<u32> {
        self.w.advance(self.page.len())?;
        self.count_page()
    }

    /// Writes `self.page` as the next page and returns its number.
    fn append(&mut self) -> Result<u32> {
        self.skip_lock_page()?;
        self.w.write_all(&self.page)?;
        self.count_page()
    }
}

/// The number of SQLite's lock-byte page (the page holding byte 2^30 of the file) for `page_size`.
pub(crate) fn lock_page(page_size: usize) -> u32 {
    u32::try_from((1u64 << 30) / page_size as u64 + 1).unwrap_or(u32::MAX)
}

/// One level of the b-tree being built: the cells of its current page.
#[derive(Default)]
struct Level {
    cells: Vec<u8>,
    ends: Vec<usize>,
    /// A cell that did not fit: it goes up as a divider once the next cell arrives.
    held: Option<Vec<u8>>,
}

impl Level {
    fn cell(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.cells[start..self.ends[i]]
    }

    fn push(&mut self, c: &[u8]) {
        self.cells.extend_from_slice(c);
        self.ends.push(self.cells.len());
    }

    fn pop(&mut self) -> Vec<u8> {
        self.ends.pop();
        let start = self.ends.last().copied().unwrap_or(0);
        self.cells.split_off(start)
    }

    fn clear(&mut self) {
        self.cells.clear();
        self.ends.clear();
    }
}

/// The place of the first zero byte in `b`, 8 bytes at a time (key columns are tens of bytes).
fn zero_at(b: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w);
        // Non-zero exactly when a byte is zero; its lowest set bit marks the first one.
        let z = x.wrapping_sub(LO) & !x & HI;
        if z != 0 {
            return Some(at + (z.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks.remainder().iter().position(|&x| x == 0).map(|p| at + p)
}

/// Appends an index record to `out`: its header (`hdr_size` bytes: their own count, the key columns'
/// serial `types`, the row id's `rt`), the key columns, the row id's bytes.
#[inline(always)]
fn put_record(
    out: &mut Vec<u8>,
    hdr_size: usize,
    types: &[u64],
    rt: u64,
    cols: &[u8],
    rowid: &[u8],
) -> Result<()> {
    let start = out.len();
    put_varint(out, hdr_size as u64);
    for &t in types {
        put_varint(out, t);
    }
    put_varint(out, rt);
    if out.len() - start != hdr_size {
        return Err(C1zError::State("index record header size mismatch"));
    }
    out.extend_from_slice(cols);
    out.extend_from_slice(rowid);
    Ok(())
}

/// Builds one index b-tree from entries given in order.
struct Builder<'a> {
    out: &'a mut PageOut,
    levels: Vec<Level>,
    max_local: usize,
    min_local: usize,
    rec: Vec<u8>,
    cell: Vec<u8>,
    cols: Vec<u8>,
    col_ends: Vec<usize>,
    /// The key columns `cols` was parsed from (the next entry often has the same: a non-unique index).
    body: Vec<u8>,
}

pub(crate) fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v <= 0x7f {
        out.push(v as u8);
        return;
    }
    if v <= 0x3fff {
        // Two bytes: the usual size of a TEXT column's serial type and of a cell's payload size.
        out.extend_from_slice(&[((v >> 7) as u8) | 0x80, (v & 0x7f) as u8]);
        return;
    }
    if v > 0x00ff_ffff_ffff_ffff {
        // Nine bytes: eight of 7 bits, then a full byte.
        let mut b = [0u8; 9];
        b[8] = v as u8;
        let mut x = v >> 8;
        for i in (0..8).rev() {
            b[i] = ((x & 0x7f) as u8) | 0x80;
            x >>= 7;
        }
        out.extend_from_slice(&b);
        return;
    }
    let mut tmp = [0u8; 9];
    let mut n = 0;
    let mut x = v;
    while x > 0 {
        tmp[n] = ((x & 0x7f) as u8) | 0x80;
        x >>= 7;
        n += 1;
    }
    tmp[0] &= 0x7f;
    for i in (0..n).rev() {
        out.push(tmp[i]);
    }
}

/// The bytes [`put_varint`] writes for `v` (computed: this is called for every column of every entry).
pub(crate) fn varint_len(v: u64) -> usize {
    if v <= 0x7f {
        1
    } else if v > 0x00ff_ffff_ffff_ffff {
        9
    } else {
        (64 - v.leading_zeros() as usize).div_ceil(7)
    }
}

/// Serial type and byte width of an integer, as SQLite chooses them.
pub(crate) fn int_type(v: i64, format4: bool) -> (u64, usize) {
    if format4 && v == 0 {
        return (8, 0);
    }
    if format4 && v == 1 {
        return (9, 0);
    }
    let u = if v < 0 { !v } else { v } as u64;
    match u {
        0..=127 => (1, 1),
        128..=32767 => (2, 2),
        32768..=8_388_607 => (3, 3),
        8_388_608..=2_147_483_647 => (4, 4),
        2_147_483_648..=0x7fff_ffff_ffff => (5, 6),
        _ => (6, 8),
    }
}

impl<'a> Builder<'a> {
    fn new(out: &'a mut PageOut) -> Self {
        let u = out.hdr.usable;
        Self {
            out,
            levels: vec![Level::default()],
            max_local: (u - 12) * 64 / 255 - 23,
            min_local: (u - 12) * 32 / 255 - 23,
            rec: Vec::new(),
            cell: Vec::new(),
            cols: Vec::new(),
            col_ends: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Parses the `k` key columns of `body` (their sortable form) into `cols` and `col_ends`.
    fn parse_cols(&mut self, body: &[u8], k: usize) -> Result<()> {
        let corrupt = || C1zError::State("malformed index key in a sort run");
        self.cols.clear();
        self.col_ends.clear();
        self.body.clear();
        let mut i = 0;
        for _ in 0..k {
            loop {
                let p = body.get(i..).and_then(zero_at).ok_or_else(corrupt)?;
                self.cols.extend_from_slice(&body[i..i + p]);
                i += p;
                match body.get(i + 1) {
                    Some(0) => {
                        i += 2;
                        break;
                    }
                    Some(_) => {
                        self.cols.push(0);
                        i += 2;
                    }
                    None => return Err(corrupt()),
                }
            }
            self.col_ends.push(self.cols.len());
        }
        self.body.extend_from_slice(body);
        Ok(())
    }

    /// Adds an entry (a key as [`collect`] stores it, without the length prefix) of `k` key columns.
    fn add(&mut self, e: &[u8], k: usize) -> Result<()> {
        let corrupt = || C1zError::State("malformed index key in a sort run");
        if e.len() < 8 {
            return Err(corrupt());
        }
        // The columns back from their sortable form (unless they are the previous entry's).
        let body = &e[..e.len() - 8];
        if self.col_ends.len() != k || body != self.body.as_slice() {
            self.parse_cols(body, k)?;
        }
        // The record: header size, serial types (TEXT n = 2n + 13, the row id's integer type), values.
        let rowid = rowid_of(e);
        let (rt, rw) = int_type(rowid, self.out.hdr.format4);
        let mut types = [0u64; 8];
        let mut hdr_len = varint_len(rt);
        let mut start = 0;
        for (t, &end) in types.iter_mut().zip(&self.col_ends) {
            *t = 2 * (end - start) as u64 + 13;
            start = end;
            hdr_len += varint_len(*t);
        }
        // The header size counts its own varint.
        let hdr_size = if hdr_len < 127 {
            hdr_len + 1
        } else {
            hdr_len + varint_len(hdr_len as u64 + 2)
        };
        let (types, rowid) = (&types[..k], &rowid.to_be_bytes()[8 - rw..]);
        // Usually the cell fits the current leaf whole: written straight into it.
        let p = hdr_size + self.cols.len() + rw;
        if p <= self.max_local && self.levels[0].held.is_none() && self.fits(0, varint_len(p as u64) + p) {
            let l = &mut self.levels[0];
            put_varint(&mut l.cells, p as u64);
            put_record(&mut l.cells, hdr_size, types, rt, &self.cols, rowid)?;
            l.ends.push(l.cells.len());
            return Ok(());
        }
        self.rec.clear();
        put_record(&mut self.rec, hdr_size, types, rt, &self.cols, rowid)?;
        // The cell's payload part: size, local bytes, and the first overflow page when it does not fit.
        let p = self.rec.len();
        self.cell.clear();
        put_varint(&mut self.cell, p as u64);
        if p <= self.max_local {
            self.cell.extend_from_slice(&self.rec);
        } else {
            let u = self.out.hdr.usable;
            let kk = self.min_local + (p - self.min_local) % (u - 4);
            let local = if kk <= self.max_local { kk } else { self.min_local };
            self.cell.extend_from_slice(&self.rec[..local]);
            self.cell.extend_from_slice(&self.out.next_no().to_be_bytes());
            let rest = &self.rec[local..];
            let chunks: Vec<&[u8]> = rest.chunks(u - 4).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                self.out.page.fill(0);
                let next = if i + 1 < chunks.len() {
                    self.out.after_next_no()
                } else {
                    0
                };
                self.out.page[..4].copy_from_slice(&next.to_be_bytes());
                self.out.page[4..4 + chunk.len()].copy_from_slice(chunk);
                self.out.append()?;
            }
        }
        let cell = std::mem::take(&mut self.cell);
        let r = self.push(0, &cell);
        self.cell = cell;
        r
    }

    fn fits(&self, level: usize, cell_len: usize) -> bool {
        let l = &self.levels[level];
        let hdr = if level == 0 { 8 } else { 12 };
        hdr + 2 * (l.ends.len() + 1) + l.cells.len() + cell_len <= self.out.hdr.usable
    }

    /// Adds a cell (for an interior level: left child first) to `level`.
    fn push(&mut self, level: usize, cell: &[u8]) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.push(Level::default());
        }
        if self.levels[level].held.is_none() {
            if self.fits(level, cell.len()) {
                self.levels[level].push(cell);
            } else {
                self.levels[level].held = Some(cell.to_vec());
            }
            return Ok(());
        }
        // The page is full and its held cell is followed by this one: the page is done, the held cell
        // becomes the divider above it, and this one starts the next page.
        let held = self.levels[level].held.take().unwrap_or_default();
        let up = if level == 0 {
            let pg = self.write_page(0, 0)?;
            let mut up = pg.to_be_bytes().to_vec();
            up.extend_from_slice(&held);
            up
        } else {
            let right = u32::from_be_bytes([held[0], held[1], held[2], held[3]]);
            let pg = self.write_page(level, right)?;
            let mut up = pg.to_be_bytes().to_vec();
            up.extend_from_slice(&held[4..]);
            up
        };
        self.levels[level].clear();
        self.push(level + 1, &up)?;
        self.levels[level].push(cell);
        Ok(())
    }

    /// Writes the current page of `level` (with `right` as the right-most child of an interior page).
    fn write_page(&mut self, level: usize, right: u32) -> Result<u32> {
        let usable = self.out.hdr.usable;
        let l = &self.levels[level];
        let leaf = level == 0;
        let hdr = if leaf { 8 } else { 12 };
        let n = l.ends.len();
        let start = usable - l.cells.len();
        if hdr + 2 * n > start || n > 0xffff {
            return Err(C1zError::State("index page overflow"));
        }
        // Built in place in the writer's buffer.
        let page = self.out.slot()?;
        // Zeros between the cell pointers and the cells, and in the reserved bytes (the cells and the
        // headers overwrite the rest).
        page[..start].fill(0);
        page[usable..].fill(0);
        page[0] = if leaf { 0x0a } else { 0x02 };
        page[3..5].copy_from_slice(&(n as u16).to_be_bytes());
        // 65536 is stored as 0.
        page[5..7].copy_from_slice(&((start & 0xffff) as u16).to_be_bytes());
        if !leaf {
            page[8..12].copy_from_slice(&right.to_be_bytes());
        }
        page[start..usable].copy_from_slice(&l.cells);
        let mut at = start;
        for i in 0..n {
            page[hdr + 2 * i..hdr + 2 * i + 2].copy_from_slice(&(at as u16).to_be_bytes());
            at += l.cell(i).len();
        }
        self.out.commit()
    }

    /// Writes the last page of every level; returns the root page.
    fn finish(mut self) -> Result<u32> {
        let mut level = 0;
        let mut right = 0u32;
        loop {
            let held = self.levels[level].held.take();
            let pg = match held {
                None => self.write_page(level, right)?,
                Some(h) => {
                    // The page's own last cell goes up as the divider; the held cell alone makes the last
                    // page of the level.
                    if self.levels[level].ends.len() < 2 {
                        return Err(C1zError::State("index page holds fewer than three cells"));
                    }
                    let last = self.levels[level].pop();
                    let (left_right, payload) = if level == 0 {
                        (0, &last[..])
                    } else {
                        (
                            u32::from_be_bytes([last[0], last[1], last[2], last[3]]),
                            &last[4..],
                        )
                    };
                    let a = self.write_page(level, left_right)?;
                    let mut up = a.to_be_bytes().to_vec();
                    up.extend_from_slice(payload);
                    self.levels[level].clear();
                    self.levels[level].push(&h);
                    let b = self.write_page(level, right)?;
                    self.push(level + 1, &up)?;
                    b
                }
            };
            if level + 1 >= self.levels.len() {
                return Ok(pg);
            }
            right = pg;
            level += 1;
        }
    }
}

/// A source of sorted entries for the merge.
enum Source<'a> {
    File(BufReader<&'a File>),
    Mem(&'a Runs, usize),
}

impl Source<'_> {
    /// Reads the next entry (without its length prefix) into `buf`; false at the end.
    fn next(&mut self, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        match self {
            Source::File(r) => {
                // `buf` holds this run's previous key, whose prefix the next one shares.
                let Some(shared) = read_leb(r)? else {
                    return Ok(false);
                };
                let rest = read_leb(r)?.ok_or_else(|| std::io::Error::other("sort run: cut short"))?;
                let (shared, rest) = (shared as usize, rest as usize);
                if shared > buf.len() || rest > u32::MAX as usize {
                    return Err(std::io::Error::other("sort run: malformed key"));
                }
                buf.truncate(shared);
                buf.resize(shared + rest, 0);
                r.read_exact(&mut buf[shared..])?;
                Ok(true)
            }
            Source::Mem(runs, i) => {
                let Some(&(_, off)) = runs.sorted.get(*i) else {
                    return Ok(false);
                };
                *i += 1;
                buf.clear();
                buf.extend_from_slice(runs.entry(off));
                Ok(true)
            }
        }
    }
}

struct Head {
    entry: Vec<u8>,
    src: usize,
}

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        o.entry.cmp(&self.entry)
    }
}

/// What the merge thread hands to the page writer.
enum Merged {
    /// Entries in order, each as a `u32` (LE) length and the entry.
    Entries(Vec<u8>),
    /// Two entries of a unique index have the same key: the build stops.
    Duplicate,
    /// Reading a run failed.
    Failed(C1zError),
}

/// Bytes of merged entries handed over at a time.
const MERGED_BATCH: usize = 256 << 10;

/// Batches of merged entries that can wait for the page writer.
const MERGED_QUEUED: usize = 4;

/// Hands merged entries to the page writer in batches of [`MERGED_BATCH`] bytes.
struct Batcher<'a> {
    tx: &'a std::sync::mpsc::SyncSender<Merged>,
    free: &'a std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Batcher<'_> {
    /// Adds an entry; false when the receiver is gone.
    fn push(&mut self, entry: &[u8]) -> bool {
        let Ok(len) = u32::try_from(entry.len()) else {
            let _ = self
                .tx
                .send(Merged::Failed(C1zError::State("index key too long")));
            return false;
        };
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(entry);
        if self.buf.len() >= MERGED_BATCH {
            let fresh = self
                .free
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(MERGED_BATCH + (64 << 10)));
            let full = std::mem::replace(&mut self.buf, fresh);
            return self.tx.send(Merged::Entries(full)).is_ok();
        }
        true
    }

    /// Sends the last batch.
    fn finish(self) {
        if !self.buf.is_empty() {
            let _ = self.tx.send(Merged::Entries(self.buf));
        }
    }
}

/// Merges the sorted runs of one index and sends the entries in order to `tx` in batches (emptied
/// batches come back through `free`); stops at a duplicate key of a `unique` index, or when the receiver
/// is gone.
fn merge_runs(
    keys: &Keys,
    dict: &Dict,
    unique: bool,
    path: &Path,
    tx: &std::sync::mpsc::SyncSender<Merged>,
    free: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    let mut out = Batcher {
        tx,
        free,
        buf: Vec::with_capacity(MERGED_BATCH + (64 << 10)),
    };
    let done = match keys {
        Keys::Bytes(runs) => merge_bytes(runs, unique, &mut out),
        Keys::Ids { runs, .. } => crate::keydict::merge(runs, dict, |e| out.push(e)).map(|()| true),
    };
    match done {
        Ok(true) => out.finish(),
        Ok(false) => {}
        Err(e) => {
            let _ = tx.send(Merged::Failed(C1zError::io("read a sort run of", path)(e)));
        }
    }
}

/// The k-way merge (a binary heap) of runs of key bytes into `out`; false when it stopped early (a
/// duplicate key of a `unique` index, which it reported, or the receiver gone).
fn merge_bytes(runs: &Runs, unique: bool, out: &mut Batcher) -> std::io::Result<bool> {
    let mut sources: Vec<Source> = runs
        .files
        .iter()
        .map(|f| Source::File(BufReader::with_capacity(256 << 10, f)))
        .collect();
    sources.push(Source::Mem(runs, 0));
    let mut heap = BinaryHeap::with_capacity(sources.len());
    for (i, s) in sources.iter_mut().enumerate() {
        let mut entry = Vec::new();
        if s.next(&mut entry)? {
            heap.push(Head { entry, src: i });
        }
    }
    let mut prev: Vec<u8> = Vec::new();
    let mut first = true;
    while let Some(mut head) = heap.pop() {
        if unique && !first && same_key(&prev, &head.entry) {
            let _ = out.tx.send(Merged::Duplicate);
            return Ok(false);
        }
        first = false;
        if !out.push(&head.entry) {
            return Ok(false);
        }
        if unique {
            prev.clear();
            prev.extend_from_slice(&head.entry);
        }
        if sources[head.src].next(&mut head.entry)? {
            heap.push(head);
        }
    }
    Ok(true)
}

/// Writes the b-trees of `specs` (gathered in `keys`) after the last page of the database at `path`.
/// Returns each index's root page and the new size in pages, or `None` when a unique index has a
/// duplicate key (nothing is registered then; the caller cuts the file back to `hdr.pages`).
pub(crate) fn write_indexes(
    path: &Path,
    hdr: &DbHeader,
    specs: &[Spec],
    keys: &mut Collected,
) -> Result<Option<(Vec<u32>, u32)>> {
    let mut out = PageOut::new(*hdr, path)?;
    let mut roots = Vec::with_capacity(specs.len());
    keys.dict.rank_all();
    let dict = &keys.dict;
    for (spec, runs) in specs.iter().zip(keys.runs.iter_mut()) {
        let k = spec.cols.len();
        let files = match runs {
            Keys::Bytes(r) => &mut r.files,
            Keys::Ids { runs, .. } => &mut runs.files,
        };
        for f in files {
            f.seek(SeekFrom::Start(0))
                .map_err(C1zError::io("rewind a sort run of", path))?;
        }
        let runs = &*runs;
        let unique = spec.unique;
        // The merge runs on a thread of its own and hands the entries over in order, in batches, while
        // this thread turns them into pages.
        let root = std::thread::scope(|scope| -> Result<Option<u32>> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Merged>(MERGED_QUEUED);
            let (give_back, free) = std::sync::mpsc::channel::<Vec<u8>>();
            std::thread::Builder::new()
                .name("c1z-index-merge".into())
                .spawn_scoped(scope, move || merge_runs(runs, dict, unique, path, &tx, &free))
                .map_err(C1zError::io("start the index merge thread for", path))?;
            let mut b = Builder::new(&mut out);
            for msg in &rx {
                let mut buf = match msg {
                    Merged::Entries(buf) => buf,
                    Merged::Duplicate => return Ok(None),
                    Merged::Failed(e) => return Err(e),
                };
                let mut at = 0;
                while at < buf.len() {
                    let len = u32_le(&buf, at) as usize;
                    b.add(&buf[at + 4..at + 4 + len], k)?;
                    at += 4 + len;
                }
                // The merge thread may have finished: then nobody takes the buffer back.
                buf.clear();
                let _ = give_back.send(buf);
            }
            Ok(Some(b.finish()?))
        })?;
        match root {
            Some(r) => roots.push(r),
            None => return Ok(None),
        }
    }
    let pages = out.next - 1;
    out.w.flush()?;
    tracing::debug!(
        pages,
        bypassed_page_cache = out.w.is_direct(),
        "c1z: grant index pages appended"
    );
    Ok(Some((roots, pages)))
}

/// Writes an index b-tree on `(sync_id)` holding the rows `ids` (ascending, at least one) of the sync
/// `sync_id` after the `hdr.pages` the file has — the partial indexes of `v1_grants` after its pages were
/// written directly (`table`). Returns the root page and the new size in pages.
pub(crate) fn write_sync_index(
    path: &Path,
    hdr: &DbHeader,
    sync_id: &str,
    ids: &[i64],
) -> Result<(u32, u32)> {
    let mut out = PageOut::new(*hdr, path)?;
    let mut b = Builder::new(&mut out);
    let mut e = Vec::new();
    for &id in ids {
        e.clear();
        push_key_col(&mut e, sync_id.as_bytes());
        push_rowid(&mut e, id);
        b.add(&e, 1)?;
    }
    let root = b.finish()?;
    let pages = out.next - 1;
    out.w.flush()?;
    Ok((root, pages))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible generator of numbers below its argument, seeded with `seed` (xorshift64).
    fn xorshift(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        move |m| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        }
    }

    /// Runs whose keys share long prefixes (several 7-byte chunks alike) and tie on whole columns sort
    /// exactly as a plain sort of the key bytes does.
    #[test]
    fn runs_sort_like_the_key_bytes_whatever_they_share() {
        let spec = Spec {
            name: "t",
            sql: String::new(),
            cols: vec![4, 5, 6],
            unique: false,
        };
        for (seed, prefix) in [
            (1u64, ""),
            (2, "group:group-000"),
            (3, "a-much-longer-shared-prefix-of-entitlement-ids:"),
        ] {
            let mut next = xorshift(seed);
            for n in [1usize, 2, 7, 300, 5000] {
                let mut run = Runs::with_capacity(1 << 20);
                for i in 0..n {
                    // Few distinct values, so that whole columns tie and tails decide.
                    let ent = format!("{prefix}{}", next(5));
                    let ptype = if next(3) == 0 { "group" } else { "user" };
                    let pid = format!("{prefix}{}{}", next(4), "x".repeat(next(20) as usize));
                    let vals: [&[u8]; 7] = [
                        b"",
                        b"",
                        b"",
                        b"",
                        ent.as_bytes(),
                        ptype.as_bytes(),
                        pid.as_bytes(),
                    ];
                    assert!(push_entry(&mut run, &spec, &vals, i as i64 * 7 - 100));
                }
                let mut want: Vec<Vec<u8>> = run.sorted.iter().map(|e| run.entry(e.1).to_vec()).collect();
                want.sort();
                run.sort();
                let got: Vec<Vec<u8>> = run.sorted.iter().map(|e| run.entry(e.1).to_vec()).collect();
                assert!(got == want, "prefix {prefix:?}, {n} keys");
            }
        }
    }

    #[test]
    fn page_numbers_skip_the_lock_byte_page() {
        // 64 KiB pages: byte 2^30 is on page 16,385. Pages are appended from 16,383 on (a sparse file).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages");
        let mut f = File::create(&path).unwrap();
        let size = 65536usize;
        f.seek(SeekFrom::Start(16_382 * size as u64)).unwrap();
        let hdr = DbHeader {
            page_size: size,
            usable: size,
            pages: 16_382,
            change_counter: 1,
            format4: true,
        };
        let mut out = PageOut::new(hdr, &path).unwrap();
        out.page.fill(7);
        assert_eq!((out.next_no(), out.after_next_no()), (16_383, 16_384));
        assert_eq!(out.append().unwrap(), 16_383);
        assert_eq!((out.next_no(), out.after_next_no()), (16_384, 16_386));
        assert_eq!(out.append().unwrap(), 16_384);
        assert_eq!((out.next_no(), out.after_next_no()), (16_386, 16_387));
        assert_eq!(out.append().unwrap(), 16_386);
        assert_eq!(out.next, 16_387);
        out.w.flush().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16_386 * size as u64);
        // The four pages written (not the sparse gigabyte before them).
        let mut f = File::open(&path).unwrap();
        f.seek(SeekFrom::Start(16_382 * size as u64)).unwrap();
        let mut bytes = vec![0u8; 4 * size];
        f.read_exact(&mut bytes).unwrap();
        let page = |n: usize| &bytes[(n - 16_383) * size..(n - 16_382) * size];
        assert!(page(16_384).iter().all(|b| *b == 7));
        assert!(
            page(16_385).iter().all(|b| *b == 0),
            "the lock-byte page holds nothing"
        );
        assert!(page(16_386).iter().all(|b| *b == 7));
    }

    #[test]
    fn leb_numbers_read_back_across_buffer_ends() {
        let values = [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX];
        let mut bytes = Vec::new();
        for v in values {
            put_leb(&mut bytes, v);
        }
        for cap in [1, 2, 3, 64] {
            let mut r = BufReader::with_capacity(cap, bytes.as_slice());
            for v in values {
                assert_eq!(read_leb(&mut r).unwrap(), Some(v), "capacity {cap}");
            }
            assert_eq!(read_leb(&mut r).unwrap(), None);
        }
        let mut cut = BufReader::new(&[0x80u8][..]);
        assert!(read_leb(&mut cut).is_err(), "a number cut short");
    }

    /// Key columns holding 0x00 bytes: escaped so that they sort as the values do, and parsed back whole
    /// by the page builder.
    #[test]
    fn key_columns_with_zero_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pages");
        File::create(&path).unwrap();
        let hdr = DbHeader {
            page_size: 4096,
            usable: 4096,
            pages: 1,
            change_counter: 1,
            format4: true,
        };
        let mut out = PageOut::new(hdr, &path).unwrap();
        let mut b = Builder::new(&mut out);
        let cases: [(&[u8], &[u8]); 5] = [
            (b"a\0b", b"\0"),
            (b"", b"x\0\0y"),
            (b"\0\0\0\0\0\0\0\0\0", b"plain"),
            (b"a value of more than eight bytes", b"z"),
            (b"a\0b", b"\0"),
        ];
        for (v1, v2) in cases {
            let mut e = Vec::new();
            push_key_col(&mut e, v1);
            push_key_col(&mut e, v2);
            b.parse_cols(&e, 2).unwrap();
            assert_eq!(b.cols, [v1, v2].concat());
            assert_eq!(b.col_ends, [v1.len(), v1.len() + v2.len()]);
        }
        let mut vals: Vec<&[u8]> = vec![b"ab", b"a\x01", b"a\0b", b"a", b"a\0", b"\0", b""];
        let mut by_key = vals.clone();
        by_key.sort_by_key(|v| {
            let mut e = Vec::new();
            push_key_col(&mut e, v);
            e
        });
        vals.sort();
        assert_eq!(by_key, vals);
    }

    #[test]
    fn zero_found_wherever_it_is() {
        for len in 0..40 {
            for z in 0..=len {
                let mut b: Vec<u8> = (0..len).map(|i| 1 + (i as u8 % 250)).collect();
                // 0x80 and 0x01 bytes around the zero (borrows across bytes must not fool it).
                if z > 0 {
                    b[z - 1] = 0x80;
                }
                if z < len {
                    b[z] = 0;
                    if z + 1 < len {
                        b[z + 1] = 0x01;
                    }
                }
                let want = b.iter().position(|&x| x == 0);
                assert_eq!(zero_at(&b), want, "len {len}, zero at {z}");
            }
        }
    }

    #[test]
    fn varints_match_sqlite() {
        let cases: [(u64, &[u8]); 5] = [
            (0, &[0]),
            (127, &[0x7f]),
            (128, &[0x81, 0x00]),
            (16383, &[0xff, 0x7f]),
            (16384, &[0x81, 0x80, 0x00]),
        ];
        for (v, want) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, want, "{v}");
        }
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        let mut values: Vec<u64> = vec![0, u64::MAX];
        for bit in 0..64 {
            let p = 1u64 << bit;
            values.extend([p - 1, p, p + 1]);
        }
        for v in values {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn integer_serial_types() {
        assert_eq!(int_type(1, true), (9, 0));
        assert_eq!(int_type(1, false), (1, 1));
        assert_eq!(int_type(200, true), (2, 2));
        assert_eq!(int_type(3_000_000_000, true), (5, 6));
    }

    /// SQLite's varint at `b[at..]`: (value, bytes).
    fn get_varint(b: &[u8], at: usize) -> (u64, usize) {
        let mut v = 0u64;
        for i in 0..8 {
            let x = b[at + i];
            v = (v << 7) | u64::from(x & 0x7f);
            if x < 0x80 {
                return (v, i + 1);
            }
        }
        ((v << 8) | u64::from(b[at + 8]), 9)
    }

    /// Walks the index b-tree at `pgno` in order, independently of the writer: checks each page's
    /// header, cell pointers (inside the content area, cells not overlapping), that every page has a
    /// cell (but an empty root leaf), that every leaf is at depth `leaf_depth` (set by the first), follows
    /// overflow chains, decodes each record (one TEXT column and the row id) into `out`, and marks the
    /// pages in `used` (a page used twice fails).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        file: &[u8],
        ps: usize,
        pgno: u32,
        depth: usize,
        leaf_depth: &mut Option<usize>,
        used: &mut Vec<bool>,
        out: &mut Vec<(Vec<u8>, i64)>,
        is_root: bool,
    ) {
        let p = pgno as usize;
        assert!(p >= 2 && !used[p], "page {p} used twice or out of range");
        used[p] = true;
        let page = &file[(p - 1) * ps..p * ps];
        let leaf = match page[0] {
            0x0a => true,
            0x02 => false,
            t => panic!("page {p}: type {t:#x}"),
        };
        let hdr = if leaf { 8 } else { 12 };
        let n = u16::from_be_bytes([page[3], page[4]]) as usize;
        let content = match u16::from_be_bytes([page[5], page[6]]) {
            0 => 65536,
            c => c as usize,
        };
        assert!(n > 0 || (leaf && is_root), "page {p}: no cells");
        assert!(
            hdr + 2 * n <= content && content <= ps,
            "page {p}: header and content overlap"
        );
        assert_eq!(page[7], 0, "page {p}: fragmented bytes");
        assert_eq!(u16::from_be_bytes([page[1], page[2]]), 0, "page {p}: freeblocks");
        let max_local = (ps - 12) * 64 / 255 - 23;
        let min_local = (ps - 12) * 32 / 255 - 23;
        if leaf {
            match *leaf_depth {
                None => *leaf_depth = Some(depth),
                Some(d) => assert_eq!(d, depth, "page {p}: leaves at different depths"),
            }
        }
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for i in 0..n {
            let at = u16::from_be_bytes([page[hdr + 2 * i], page[hdr + 2 * i + 1]]) as usize;
            assert!(
                at >= content && at < ps,
                "page {p}: cell {i} outside the content area"
            );
            let mut c = at;
            let mut child = 0u32;
            if !leaf {
                child = u32::from_be_bytes([page[c], page[c + 1], page[c + 2], page[c + 3]]);
                c += 4;
            }
            let (size, w) = get_varint(page, c);
            c += w;
            let size = size as usize;
            let local = if size <= max_local {
                size
            } else {
                let k = min_local + (size - min_local) % (ps - 4);
                if k <= max_local { k } else { min_local }
            };
            let mut payload = page[c..c + local].to_vec();
            c += local;
            if local < size {
                let mut next = u32::from_be_bytes([page[c], page[c + 1], page[c + 2], page[c + 3]]);
                c += 4;
                while payload.len() < size {
                    let o = next as usize;
                    assert!(o >= 2 && !used[o], "overflow page {o} used twice");
                    used[o] = true;
                    let op = &file[(o - 1) * ps..o * ps];
                    next = u32::from_be_bytes([op[0], op[1], op[2], op[3]]);
                    let take = (size - payload.len()).min(ps - 4);
                    payload.extend_from_slice(&op[4..4 + take]);
                }
                assert_eq!(next, 0, "overflow chain longer than the payload");
            }
            assert!(c <= ps, "page {p}: cell {i} runs past the page");
            spans.push((at, c));
            // The record: header size, the TEXT column's and the row id's serial types, values.
            let (hsize, w1) = get_varint(&payload, 0);
            let (tt, w2) = get_varint(&payload, w1);
            let (rt, w3) = get_varint(&payload, w1 + w2);
            assert_eq!(hsize as usize, w1 + w2 + w3, "record header size");
            assert!(tt >= 13 && tt % 2 == 1, "a TEXT column");
            let tlen = ((tt - 13) / 2) as usize;
            let h = hsize as usize;
            let text = payload[h..h + tlen].to_vec();
            let rb = &payload[h + tlen..];
            let rowid = match rt {
                8 => 0,
                9 => 1,
                1..=6 => {
                    let width = [0, 1, 2, 3, 4, 6, 8][rt as usize];
                    assert_eq!(rb.len(), width, "row id width");
                    let mut v: i64 = if rb[0] & 0x80 != 0 { -1 } else { 0 };
                    for &b in rb {
                        v = (v << 8) | i64::from(b);
                    }
                    v
                }
                t => panic!("row id serial type {t}"),
            };
            if !leaf {
                walk(file, ps, child, depth + 1, leaf_depth, used, out, false);
            }
            out.push((text, rowid));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "page {p}: cells overlap");
        }
        if !leaf {
            let right = u32::from_be_bytes([page[8], page[9], page[10], page[11]]);
            walk(file, ps, right, depth + 1, leaf_depth, used, out, false);
        }
    }

    /// Every entry count from 0 to 1,200 (and a few larger) on 512-byte pages, with entries of mixed
    /// sizes (a third longer than the maximum local payload, some spanning several overflow pages), so
    /// that every way a level can end — a full page with a held cell or not, at each level — is met:
    /// walking the pages independently of SQLite must give back every entry in order, every leaf at the
    /// same depth, no empty page, no cell outside its page's content area, and every written page used
    /// exactly once.
    #[test]
    fn every_level_ending_walks_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tree");
        let ps = 512usize;
        let hdr = DbHeader {
            page_size: ps,
            usable: ps,
            pages: 1,
            change_counter: 1,
            format4: true,
        };
        let counts: Vec<u64> = (0..=1_200).chain([3_000, 7_777]).collect();
        for n in counts {
            let mut rnd = xorshift(n);
            let mut want: Vec<(Vec<u8>, i64)> = Vec::new();
            let mut f = File::create(&path).unwrap();
            f.write_all(&vec![0u8; ps]).unwrap();
            let mut out = PageOut::new(hdr, &path).unwrap();
            let mut b = Builder::new(&mut out);
            let mut e = Vec::new();
            for i in 0..n {
                let len = match rnd(3) {
                    0 => 12 + rnd(40),
                    1 => 60 + rnd(60),
                    _ => 100 + rnd(1_500),
                } as usize;
                let mut text = format!("{i:08}").into_bytes();
                while text.len() < len {
                    text.push(b'a' + (rnd(26) as u8));
                }
                // Row ids of every width, in order.
                let rowid =
                    [0i64, 1, 100, 30_000, 8_000_000, 2_000_000_000, 1 << 40, 1 << 60][(i % 8) as usize];
                e.clear();
                push_key_col(&mut e, &text);
                push_rowid(&mut e, rowid);
                b.add(&e, 1).unwrap();
                want.push((text, rowid));
            }
            let root = b.finish().unwrap();
            let end = out.next;
            out.w.flush().unwrap();
            drop(out);
            let file = std::fs::read(&path).unwrap();
            assert_eq!(file.len(), (end as usize - 1) * ps, "{n} entries");
            let mut used = vec![false; end as usize];
            let mut got = Vec::new();
            let mut leaf_depth = None;
            walk(&file, ps, root, 1, &mut leaf_depth, &mut used, &mut got, true);
            assert!(
                got == want,
                "{n} entries: the tree does not give them back in order"
            );
            assert!(
                used[2..].iter().all(|u| *u),
                "{n} entries: a written page is not part of the tree"
            );
        }
    }

    /// Builds every grant index directly into small-page databases (512-byte pages: many levels, overflow
    /// pages and spilled runs even with a few hundred rows) for each row count below 100 and two larger
    /// ones, so that every way a level can end is met; SQLite's `integrity_check` must be ok and each index
    /// must list the rows in the order of a sorted table scan.
    #[test]
    fn small_pages_every_count() {
        let dir = tempfile::tempdir().unwrap();
        let specs: Vec<Spec> = crate::schema::BULK_INDEXES.iter().filter_map(Spec::of).collect();
        assert_eq!(specs.len(), 4);
        let counts: Vec<u64> = (0..100).chain([300, 1_500]).collect();
        for n in counts {
            let path = dir.path().join(format!("db{n}"));
            let c = Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA page_size=512; PRAGMA journal_mode=OFF;")
                .unwrap();
            c.execute_batch(crate::schema::TABLES).unwrap();
            let mut rnd = xorshift(n);
            for i in 0..n {
                let text = |len: u64, tag: u64| {
                    let mut s = format!("{tag:x}é");
                    while (s.len() as u64) < len {
                        s.push_str("日z");
                    }
                    s
                };
                let rid = text(rnd(150), rnd(5));
                let pid = text(rnd(40), rnd(20));
                let ext = format!("{}:{i}", text(rnd(300), rnd(1000)));
                c.execute(
                    "INSERT INTO v1_grants (resource_type_id, resource_id, entitlement_id, principal_resource_type_id,
                       principal_resource_id, external_id, data, sync_id, discovered_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, x'00', ?7, '')",
                    rusqlite::params![
                        if rnd(2) == 0 { "group" } else { "role" },
                        rid,
                        format!("{rid}:member"),
                        "user",
                        pid,
                        ext,
                        if rnd(3) == 0 { "sync-a" } else { "sync-b" }
                    ],
                )
                .unwrap();
            }
            let mut keys = collect(&c, &specs, dir.path(), 4096).unwrap().unwrap();
            assert_eq!(keys.rows, n);
            let pages: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
            drop(c);
            let hdr = read_header(&path).unwrap().unwrap();
            assert_eq!(hdr.pages, pages);
            let (roots, end) = write_indexes(&path, &hdr, &specs, &mut keys).unwrap().unwrap();
            set_size(&path, &hdr, end).unwrap();
            let c = Connection::open(&path).unwrap();
            c.execute_batch("BEGIN; PRAGMA writable_schema=ON;").unwrap();
            for (s, root) in specs.iter().zip(&roots) {
                c.execute(
                    "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ('index', ?1, 'v1_grants', ?2, ?3)",
                    rusqlite::params![s.name, root, s.sql],
                )
                .unwrap();
            }
            c.execute_batch("PRAGMA writable_schema=OFF; PRAGMA schema_version=100; COMMIT;")
                .unwrap();
            drop(c);
            let c = Connection::open(&path).unwrap();
            let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            assert_eq!(ok, "ok", "{n} rows");
            for s in &specs {
                let cols = s.cols.iter().map(|&i| COLUMNS[i]).collect::<Vec<_>>().join(", ");
                let q = |hint: &str| -> Vec<(String, i64)> {
                    let sql = format!("SELECT {cols}, id FROM v1_grants {hint} ORDER BY {cols}, id");
                    let mut st = c.prepare(&sql).unwrap();
                    let k = s.cols.len();
                    st.query_map([], |r| {
                        let mut key = String::new();
                        for i in 0..k {
                            key.push_str(&r.get::<_, String>(i)?);
                            key.push('\u{1}');
                        }
                        Ok((key, r.get(k)?))
                    })
                    .unwrap()
                    .collect::<std::result::Result<_, _>>()
                    .unwrap()
                };
                assert_eq!(
                    q(&format!("INDEXED BY {}", s.name)),
                    q("NOT INDEXED"),
                    "{} at {n} rows",
                    s.name
                );
            }
        }
    }
}
