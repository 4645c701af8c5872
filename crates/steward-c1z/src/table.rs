//! The `v1_grants` table written as SQLite b-tree pages directly, instead of through SQLite's inserts
//! (about 1 µs of one core per row, the largest cost of writing grants; docs/benchmarks.md).
//!
//! Used for a sync that starts on an empty grant table, in exactly this writer's schema, in a writer that
//! is not crash-safe (nothing is resumed, so nothing has to be consistent on disk before the end). While
//! the sync is written, a thread of its own ([`PageThread`]) turns the batches of grant rows into table
//! leaf pages (type 0x0d) in a file next to the working database ([`Leaves`]), numbered from 0 there:
//! each leaf is built in place in the write buffer of `direct` (past the page cache where the system
//! allows it), followed by the overflow pages of its rows. Each row gets the next row id, exactly as
//! SQLite would have given it (the table is empty, and only these rows go into it), and the
//! `discovered_at` of the transaction its batch belongs to. The thread also gathers the grant index keys
//! (as the insert thread does) and the ids of the rows that belong in the two partial indexes. Each leaf
//! keeps a tenth of its space free ([`LEAF_SLACK`]) for the rows expansion rewrites later; expansion
//! asks for the leaves of the rows it reads one by one ahead of time ([`prefetch_rows`]).
//!
//! At the end of the sync [`splice`] joins the two files, with no connection open: the working
//! database's pages go in front of the leaves (`FALLOC_FL_INSERT_RANGE` makes room there without moving
//! the leaves, where the filesystem supports it, e.g. ext4 and XFS; otherwise the leaves are copied to
//! the end of the database, which costs a copy), so leaf `i` becomes page `P + 1 + i` (`P` the
//! database's pages; one more from SQLite's lock-byte page on, which stays empty: that hole is made
//! first, and taken out again if the room in front cannot be made). Page numbers stored
//! in the leaves (overflow pages of rows larger than a page) are recorded as they are written and mapped
//! then. The interior pages are built over the leaves and appended; the top one is written over the
//! table's existing root page, so `sqlite_schema` does not change (a single leaf is copied there and its
//! page freed). Page 1's header gets the new size, and the leaves file replaces the database.
//!
//! Invariants: rows come in increasing row-id order; nothing else writes `v1_grants` until the splice;
//! every page number in the result is a database page number (checked by the tests with SQLite's
//! `integrity_check`).
//!
//! Record format (<https://www.sqlite.org/fileformat2.html>): the header size, each column's serial type
//! (NULL 0, integers by size, 8 and 9 for 0 and 1 in schema format 4, TEXT 2n+13, BLOB 2n+12), then the
//! values; the `INTEGER PRIMARY KEY` column is NULL in the record (the row id holds it). A leaf cell is the
//! payload size, the row id, and the payload, of which at most `usable - 35` bytes stay on the page, the
//! rest on a chain of overflow pages. An interior cell is a left child and the largest row id under it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use crate::btree::{self, DbHeader, int_type, put_varint, varint_len};
use crate::direct::{self, SeqWriter};
use crate::error::{C1zError, Result};
use crate::inserter::{GrantBatch, RowIds};

/// A column value of a row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Null,
    Int(i64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

/// The page geometry rows are laid out for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub page_size: usize,
    pub usable: usize,
    pub format4: bool,
}

impl From<&DbHeader> for Layout {
    fn from(h: &DbHeader) -> Self {
        Self {
            page_size: h.page_size,
            usable: h.usable,
            format4: h.format4,
        }
    }
}

/// Leaf pages written, for [`splice`].
pub(crate) struct Built {
    /// The file holding them (page `i` at byte `i * page_size`).
    pub path: PathBuf,
    /// Pages in the file (leaves and overflow pages).
    pub pages: u32,
    /// Each leaf's page in the file and the largest row id on it, in row-id order.
    pub leaves: Vec<(u32, i64)>,
    /// Byte positions in the file of page numbers (of overflow pages) to map at the splice.
    pub patches: Vec<u64>,
    /// The leaves compressed as they were written (`pieces`), if any.
    pub pieces: Option<crate::pieces::Compressed>,
}

/// Table leaf pages built from rows given in row-id order (see the module docs).
pub(crate) struct Leaves {
    out: SeqWriter,
    path: PathBuf,
    lay: Layout,
    /// Overflow pages of the current leaf's rows, written right after it.
    pending: Vec<u8>,
    pending_pages: u32,
    /// Cells on the current leaf, and where its cell content area starts.
    cells: usize,
    content: usize,
    last_rowid: i64,
    /// Offsets in the current leaf of the first-overflow-page numbers of its cells.
    ovfl_at: Vec<usize>,
    written: u32,
    leaves: Vec<(u32, i64)>,
    patches: Vec<u64>,
    hdr: Vec<u8>,
    rec: Vec<u8>,
    ovf: Vec<u8>,
    max_local: usize,
    min_local: usize,
    /// Bytes a leaf keeps free for rows that grow later ([`LEAF_SLACK`]).
    slack: usize,
    /// Copies of the pages for their compression during the sync (`pieces`).
    tap: Option<crate::pieces::Tap>,
    /// A row on the current leaf may be rewritten by expansion ([`mark_hot`](Self::mark_hot)).
    hot: bool,
}

/// The part of each leaf page left free, as a divisor of the usable size (1/10). Expansion rewrites
/// grants with their `sources` added; on a full leaf each such update splits the page (balancing
/// reads and rewrites three leaves and their parent): ≈ 60 µs an update against ≈ 6 µs with room, at
/// 2 M grants (docs/benchmarks.md). SQLite's own inserts left its leaves about 89 % full.
pub(crate) const LEAF_SLACK: usize = 10;

fn serial(v: &Val<'_>, format4: bool) -> (u64, usize) {
    match v {
        Val::Null => (0, 0),
        Val::Int(i) => int_type(*i, format4),
        Val::Text(b) => (2 * b.len() as u64 + 13, b.len()),
        Val::Blob(b) => (2 * b.len() as u64 + 12, b.len()),
    }
}

fn put_value(out: &mut Vec<u8>, v: &Val<'_>, format4: bool) {
    match v {
        Val::Null => {}
        Val::Int(i) => {
            let (_, w) = int_type(*i, format4);
            out.extend_from_slice(&i.to_be_bytes()[8 - w..]);
        }
        Val::Text(b) | Val::Blob(b) => out.extend_from_slice(b),
    }
}

/// Writes `v` as a varint at `page[at..]`; returns the position after it.
fn varint_at(page: &mut [u8], at: usize, v: u64) -> usize {
    if v <= 0x7f {
        page[at] = v as u8;
        return at + 1;
    }
    let n = varint_len(v);
    if n == 9 {
        let mut tmp = Vec::with_capacity(9);
        put_varint(&mut tmp, v);
        page[at..at + 9].copy_from_slice(&tmp);
        return at + 9;
    }
    // Big-endian groups of 7 bits, the high bit set on all but the last byte.
    for i in 0..n {
        let shift = 7 * (n - 1 - i);
        let b = ((v >> shift) & 0x7f) as u8;
        page[at + i] = if i + 1 < n { b | 0x80 } else { b };
    }
    at + n
}

impl Leaves {
    /// Creates (or empties) the file at `path` for the leaves.
    pub(crate) fn create(path: &Path, lay: Layout) -> Result<Self> {
        File::create(path).map_err(C1zError::io("create", path))?;
        let u = lay.usable;
        Ok(Self {
            out: SeqWriter::open(path, 0, lay.page_size.is_multiple_of(direct::ALIGN))?,
            path: path.to_owned(),
            lay,
            pending: Vec::new(),
            pending_pages: 0,
            cells: 0,
            content: u,
            last_rowid: 0,
            ovfl_at: Vec::new(),
            written: 0,
            leaves: Vec::new(),
            patches: Vec::new(),
            hdr: Vec::new(),
            rec: Vec::new(),
            ovf: vec![0u8; lay.page_size],
            max_local: u - 35,
            min_local: (u - 12) * 32 / 255 - 23,
            slack: u / LEAF_SLACK,
            tap: None,
            hot: false,
        })
    }

    /// The row pushed last may be rewritten by expansion (its entitlement receives grants through an
    /// expandable one): its leaf is compressed apart (see `pieces`).
    pub(crate) fn mark_hot(&mut self) {
        self.hot = true;
    }

    /// Hands a copy of every leaf page to `tap` as it is written (see `pieces`).
    pub(crate) fn tap(&mut self, tap: crate::pieces::Tap) {
        self.tap = Some(tap);
    }

    /// Adds the row `rowid` (larger than every row before it) with the column values `vals`.
    pub(crate) fn push(&mut self, rowid: i64, vals: &[Val<'_>]) -> Result<()> {
        self.push_parts(rowid, vals, None)
    }

    /// [`push`](Self::push), with the record's values given as `parts` whose bytes, one after another,
    /// are those of `vals` (the grant columns lie in one piece in a batch: fewer, larger copies).
    pub(crate) fn push_parts(&mut self, rowid: i64, vals: &[Val<'_>], parts: Option<&[&[u8]]>) -> Result<()> {
        if (self.cells > 0 || !self.leaves.is_empty()) && rowid <= self.last_rowid {
            return Err(C1zError::State("table rows out of row-id order"));
        }
        let f4 = self.lay.format4;
        let mut types_len = 0;
        let mut body = 0;
        for v in vals {
            let (t, n) = serial(v, f4);
            types_len += varint_len(t);
            body += n;
        }
        // The header size counts its own varint.
        let mut h = types_len + 1;
        while types_len + varint_len(h as u64) != h {
            h = types_len + varint_len(h as u64);
        }
        self.hdr.clear();
        put_varint(&mut self.hdr, h as u64);
        for v in vals {
            put_varint(&mut self.hdr, serial(v, f4).0);
        }
        if let Some(parts) = parts
            && parts.iter().map(|b| b.len()).sum::<usize>() != body
        {
            return Err(C1zError::State("table row parts do not match its values"));
        }
        let p = h + body;
        let u = self.lay.usable;
        let local = if p <= self.max_local {
            p
        } else {
            let k = self.min_local + (p - self.min_local) % (u - 4);
            if k <= self.max_local { k } else { self.min_local }
        };
        let overflows = local < p;
        let cell_len =
            varint_len(p as u64) + varint_len(rowid as u64) + local + if overflows { 4 } else { 0 };
        if self.cells > 0 && self.content < cell_len + 8 + 2 * (self.cells + 1) + self.slack {
            self.flush_leaf()?;
        }
        let start = self.content - cell_len;
        let ps = self.lay.page_size;
        // The leaf is built where it will be written from (no copy of the page).
        let page = self.out.slot(ps)?;
        let mut at = varint_at(page, start, p as u64);
        at = varint_at(page, at, rowid as u64);
        if overflows {
            // The whole record: its local part on the leaf, the rest on overflow pages written right
            // after the leaf (the leaf is page `written`, they follow it in order).
            self.rec.clear();
            self.rec.extend_from_slice(&self.hdr);
            match parts {
                Some(parts) => parts.iter().for_each(|b| self.rec.extend_from_slice(b)),
                None => vals.iter().for_each(|v| put_value(&mut self.rec, v, f4)),
            }
            page[at..at + local].copy_from_slice(&self.rec[..local]);
            at += local;
            let too_many = || C1zError::State("the grant table would exceed 2^32 pages");
            let first = self
                .written
                .checked_add(1 + self.pending_pages)
                .ok_or_else(too_many)?;
            page[at..at + 4].copy_from_slice(&first.to_be_bytes());
            self.ovfl_at.push(at);
            let chunks = self.rec[local..].chunks(u - 4).count();
            for i in 0..chunks {
                let no = first + i as u32;
                let from = local + i * (u - 4);
                let chunk = &self.rec[from..(from + u - 4).min(p)];
                self.ovf.fill(0);
                if i + 1 < chunks {
                    self.ovf[..4].copy_from_slice(&(no + 1).to_be_bytes());
                    self.patches.push(u64::from(no) * ps as u64);
                }
                self.ovf[4..4 + chunk.len()].copy_from_slice(chunk);
                self.pending.extend_from_slice(&self.ovf);
                self.pending_pages = self.pending_pages.checked_add(1).ok_or_else(too_many)?;
            }
        } else {
            let hl = self.hdr.len();
            page[at..at + hl].copy_from_slice(&self.hdr);
            at += hl;
            for b in parts.unwrap_or_default() {
                page[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            }
            for v in vals.iter().filter(|_| parts.is_none()) {
                let b: &[u8] = match v {
                    Val::Text(b) | Val::Blob(b) => b,
                    Val::Null => &[],
                    Val::Int(_) => {
                        self.rec.clear();
                        put_value(&mut self.rec, v, f4);
                        &self.rec
                    }
                };
                page[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            }
        }
        let ptr = 8 + 2 * self.cells;
        page[ptr..ptr + 2].copy_from_slice(&(start as u16).to_be_bytes());
        self.cells += 1;
        self.content = start;
        self.last_rowid = rowid;
        Ok(())
    }

    /// Writes the current leaf (if it holds a cell).
    fn flush_leaf(&mut self) -> Result<()> {
        let n = self.cells;
        if n == 0 {
            return Ok(());
        }
        let (u, content, ps) = (self.lay.usable, self.content, self.lay.page_size);
        let p = self.out.slot(ps)?;
        p[0] = 0x0d;
        p[1..3].fill(0);
        p[3..5].copy_from_slice(&(n as u16).to_be_bytes());
        p[5..7].copy_from_slice(&((content & 0xffff) as u16).to_be_bytes());
        p[7] = 0;
        p[8 + 2 * n..content].fill(0);
        p[u..].fill(0);
        if let Some(tap) = self.tap.as_mut() {
            // A leaf with overflow pages stops the copies: the page numbers in it change at the splice.
            tap.page(
                p,
                (self.pending_pages == 0).then_some((8 + 2 * n, content)),
                self.hot,
            );
        }
        let rel = self.written;
        self.out.advance(ps)?;
        // Then the overflow pages of its rows.
        self.out.write_all(&self.pending)?;
        self.pending.clear();
        self.written = self
            .written
            .checked_add(1 + self.pending_pages)
            .ok_or(C1zError::State("the grant table would exceed 2^32 pages"))?;
        self.pending_pages = 0;
        for off in self.ovfl_at.drain(..) {
            self.patches.push(u64::from(rel) * ps as u64 + off as u64);
        }
        self.leaves.push((rel, self.last_rowid));
        self.hot = false;
        self.cells = 0;
        self.content = u;
        Ok(())
    }

    /// Writes the last leaf and returns what [`splice`] needs.
    pub(crate) fn finish(mut self) -> Result<Built> {
        self.flush_leaf()?;
        self.out.flush()?;
        let pieces = match self.tap.take() {
            Some(t) => t.finish()?,
            None => None,
        };
        Ok(Built {
            pieces,
            path: self.path.clone(),
            pages: self.written,
            leaves: std::mem::take(&mut self.leaves),
            patches: std::mem::take(&mut self.patches),
        })
    }
}

fn write_at(f: &File, buf: &[u8], pos: u64, path: &Path) -> Result<()> {
    direct::write_at(f, buf, pos).map_err(C1zError::io("write", path))
}

/// Copies `len` bytes of `from` at `src` to `to` at `dst`.
fn copy_bytes(from: (&File, &Path), src: u64, to: (&File, &Path), dst: u64, len: u64) -> Result<()> {
    let mut buf = vec![0u8; direct::CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        direct::read_exact_at(from.0, &mut buf[..n], src + done, from.1)?;
        write_at(to.0, &buf[..n], dst + done, to.1)?;
        done += n as u64;
    }
    Ok(())
}

/// Makes room for `len` bytes at `pos` in `f`, moving what follows up, without copying it.
#[cfg(target_os = "linux")]
fn insert_range(f: &File, pos: u64, len: u64) -> std::io::Result<()> {
    rustix::fs::fallocate(f, rustix::fs::FallocateFlags::INSERT_RANGE, pos, len).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn insert_range(_f: &File, _pos: u64, _len: u64) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Removes `len` bytes at `pos` from `f`, moving what follows down (undoes [`insert_range`]).
#[cfg(target_os = "linux")]
fn collapse_range(f: &File, pos: u64, len: u64) -> std::io::Result<()> {
    rustix::fs::fallocate(f, rustix::fs::FallocateFlags::COLLAPSE_RANGE, pos, len)
        .map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn collapse_range(_f: &File, _pos: u64, _len: u64) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Opens room in the leaves file `f` for the database's `base` pages in front and, if `lock_inside`, a
/// hole at the lock-byte page, without moving the leaves' bytes; false (and the file as it was) when the
/// system cannot (not Linux, a filesystem without `FALLOC_FL_INSERT_RANGE`, page or database sizes that
/// are not whole filesystem blocks). The lock hole goes first: it is undone if the second step fails.
fn make_room(f: &File, path: &Path, base: u32, map: &PageMap, lock_inside: bool, ps: u64) -> Result<bool> {
    #[cfg(unix)]
    let blk = {
        use std::os::unix::fs::MetadataExt;
        f.metadata().map_or(0, |m| m.blksize())
    };
    #[cfg(not(unix))]
    let blk = 0u64;
    let front = u64::from(base) * ps;
    if blk == 0 || !ps.is_multiple_of(blk) || !front.is_multiple_of(blk) {
        return Ok(false);
    }
    let hole = u64::from(map.lock - base - 1) * ps;
    if lock_inside && insert_range(f, hole, ps).is_err() {
        return Ok(false);
    }
    if insert_range(f, 0, front).is_ok() {
        return Ok(true);
    }
    if lock_inside {
        // Put the leaves back where they were: the copy path reads them from there.
        collapse_range(f, hole, ps).map_err(C1zError::io("restore the grant table pages in", path))?;
    }
    Ok(false)
}

/// Puts page `pgno` of the database `f` on the freelist (as a trunk page with no leaves, first in the
/// list).
pub(crate) fn free_page(f: &File, path: &Path, page_size: usize, pgno: u32) -> Result<()> {
    let mut h = [0u8; 8];
    direct::read_exact_at(f, &mut h, 32, path)?;
    let count = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let mut page = vec![0u8; page_size];
    page[..4].copy_from_slice(&h[..4]);
    write_at(f, &page, u64::from(pgno - 1) * page_size as u64, path)?;
    h[..4].copy_from_slice(&pgno.to_be_bytes());
    h[4..].copy_from_slice(&count.saturating_add(1).to_be_bytes());
    write_at(f, &h, 32, path)
}

/// Copies page `from` of the database `f` over page `to`.
pub(crate) fn copy_page(f: &File, path: &Path, page_size: usize, from: u32, to: u32) -> Result<()> {
    let mut page = vec![0u8; page_size];
    let ps = page_size as u64;
    direct::read_exact_at(f, &mut page, u64::from(from - 1) * ps, path)?;
    write_at(f, &page, u64::from(to - 1) * ps, path)
}

/// Database page numbers of the leaves file's pages once spliced after `base` pages.
struct PageMap {
    base: u32,
    lock: u32,
}

impl PageMap {
    fn page(&self, rel: u32) -> u32 {
        let p = self.base + 1 + rel;
        if self.lock > self.base && p >= self.lock {
            p + 1
        } else {
            p
        }
    }
}

/// What [`splice`] did.
pub(crate) struct Spliced {
    /// Pages in the database now.
    pub pages: u32,
    /// The leaves stayed in place (the database's pages were inserted in front of them).
    pub in_place: bool,
    /// Byte range of the database holding the leaves (as written: past the page cache where the
    /// system allowed it, when `in_place`).
    pub leaves: (u64, u64),
    /// Each leaf's database page and the largest row id on it, in row-id order.
    pub leaf_pages: Vec<(u32, i64)>,
    /// The database's page size.
    pub page_size: usize,
}

/// Largest children an interior table page of `usable` bytes takes (each cell: a 4-byte child, a row id
/// of up to 9 bytes and a 2-byte pointer; the last child is the header's right-most pointer).
fn interior_fanout(usable: usize) -> usize {
    (usable - 12) / 15 + 1
}

/// Joins the database `db` (header `hdr`, with no connection open) and the leaves of `built` into one
/// database whose table rooted at page `root` (an empty leaf now) holds the rows (see the module docs).
pub(crate) fn splice(db: &Path, hdr: &DbHeader, built: Built, root: u32) -> Result<Spliced> {
    splice_with(db, hdr, built, root, true)
}

/// [`splice`], which tries to keep the leaves in place only when `try_in_place`.
fn splice_with(db: &Path, hdr: &DbHeader, built: Built, root: u32, try_in_place: bool) -> Result<Spliced> {
    let ps = hdr.page_size as u64;
    let base = hdr.pages;
    if built.leaves.is_empty() {
        let _ = std::fs::remove_file(&built.path);
        return Ok(Spliced {
            pages: base,
            in_place: false,
            leaves: (0, 0),
            leaf_pages: Vec::new(),
            page_size: hdr.page_size,
        });
    }
    let map = PageMap {
        base,
        lock: btree::lock_page(hdr.page_size),
    };
    let last = map.page(built.pages - 1);
    let lock_inside = map.lock > base && map.lock <= last;
    let db_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .map_err(C1zError::io("open", db))?;
    let leaves_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&built.path)
        .map_err(C1zError::io("open", &built.path))?;
    // The root must be the empty leaf of an empty table, in the database part.
    let mut root_hdr = [0u8; 8];
    if root == 0 || root > base {
        return Err(C1zError::State(
            "the grant table's root page is not in the database",
        ));
    }
    direct::read_exact_at(&db_file, &mut root_hdr, u64::from(root - 1) * ps, db)?;
    if root_hdr[0] != 0x0d || root_hdr[3..5] != [0, 0] {
        return Err(C1zError::State(
            "the grant table's root page is not an empty leaf",
        ));
    }
    let in_place = try_in_place && make_room(&leaves_file, &built.path, base, &map, lock_inside, ps)?;
    let (out, out_path) = if in_place {
        copy_bytes(
            (&db_file, db),
            0,
            (&leaves_file, &built.path),
            0,
            u64::from(base) * ps,
        )?;
        (&leaves_file, built.path.as_path())
    } else {
        // No room can be made in front of the leaves here: copy them to the end of the database.
        let all = u64::from(built.pages) * ps;
        let before_lock = if lock_inside {
            u64::from(map.lock - base - 1) * ps
        } else {
            all
        };
        let end = u64::from(base) * ps;
        copy_bytes((&leaves_file, &built.path), 0, (&db_file, db), end, before_lock)?;
        if lock_inside {
            write_at(&db_file, &vec![0u8; hdr.page_size], end + before_lock, db)?;
            copy_bytes(
                (&leaves_file, &built.path),
                before_lock,
                (&db_file, db),
                end + before_lock + ps,
                all - before_lock,
            )?;
        }
        (&db_file, db)
    };
    // Overflow page numbers, from the leaves file's numbering to the database's.
    let mut b = [0u8; 4];
    for &at in &built.patches {
        let (rel, off) = ((at / ps) as u32, at % ps);
        let pos = u64::from(map.page(rel) - 1) * ps + off;
        direct::read_exact_at(out, &mut b, pos, out_path)?;
        let v = map.page(u32::from_be_bytes(b));
        write_at(out, &v.to_be_bytes(), pos, out_path)?;
    }
    // Interior levels over the leaves, appended; the top page is written over the root.
    let leaf_pages: Vec<(u32, i64)> = built
        .leaves
        .iter()
        .map(|&(rel, max)| (map.page(rel), max))
        .collect();
    let mut children = leaf_pages.clone();
    let mut next = last + 1;
    let mut page = vec![0u8; hdr.page_size];
    let fanout = interior_fanout(hdr.usable);
    let mut freed = None;
    if children.len() == 1 {
        copy_page(out, out_path, hdr.page_size, children[0].0, root)?;
        freed = Some(children[0].0);
    }
    while children.len() > 1 {
        let n = children.len();
        let pages = n.div_ceil(fanout);
        let mut up = Vec::with_capacity(pages);
        let mut from = 0;
        for i in 0..pages {
            // Children spread evenly: every page gets at least two.
            let to = n * (i + 1) / pages;
            let group = &children[from..to];
            from = to;
            interior_page(&mut page, hdr.usable, group)?;
            let pgno = if pages == 1 {
                root
            } else {
                if next == map.lock {
                    next += 1;
                }
                let p = next;
                next += 1;
                p
            };
            write_at(out, &page, u64::from(pgno - 1) * ps, out_path)?;
            up.push((pgno, group[group.len() - 1].1));
        }
        children = if pages == 1 { Vec::new() } else { up };
    }
    if let Some(p) = freed {
        free_page(out, out_path, hdr.page_size, p)?;
    }
    let pages = next - 1;
    drop(db_file);
    drop(leaves_file);
    let new_hdr = btree::read_header(out_path)?.ok_or(C1zError::State(
        "the spliced database's header is not one this writer handles",
    ))?;
    btree::set_size(out_path, &new_hdr, pages)?;
    if in_place {
        std::fs::rename(&built.path, db).map_err(C1zError::io("replace", db))?;
    } else {
        std::fs::remove_file(&built.path).map_err(C1zError::io("remove", &built.path))?;
    }
    Ok(Spliced {
        pages,
        in_place,
        leaves: (u64::from(base) * ps, u64::from(last) * ps),
        leaf_pages,
        page_size: hdr.page_size,
    })
}

/// Asks the system to read the leaves holding the rows `ids` (ascending) of the database `f` into the
/// page cache, without waiting: the reads are queued together, where SQLite would read the pages one
/// at a time (`leaf_pages` as [`Spliced::leaf_pages`]). Returns the pages asked for.
pub(crate) fn prefetch_rows(f: &File, page_size: usize, leaf_pages: &[(u32, i64)], ids: &[i64]) -> usize {
    let mut last = 0u32;
    let mut asked = 0;
    for &id in ids {
        let Some(&(pg, _)) = leaf_pages.get(leaf_pages.partition_point(|&(_, max)| max < id)) else {
            continue;
        };
        if pg != last {
            last = pg;
            asked += 1;
            #[cfg(target_os = "linux")]
            let _ = rustix::fs::fadvise(
                f,
                u64::from(pg - 1) * page_size as u64,
                std::num::NonZeroU64::new(page_size as u64),
                rustix::fs::Advice::WillNeed,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
    asked
}

/// Lays out an interior table page over `group` (child page, largest row id under it; at least two).
fn interior_page(page: &mut [u8], usable: usize, group: &[(u32, i64)]) -> Result<()> {
    let n = group.len() - 1;
    page.fill(0);
    page[0] = 0x05;
    page[3..5].copy_from_slice(&(n as u16).to_be_bytes());
    page[8..12].copy_from_slice(&group[n].0.to_be_bytes());
    let mut content = usable;
    let mut cell = Vec::with_capacity(13);
    for (i, &(child, max)) in group[..n].iter().enumerate() {
        cell.clear();
        cell.extend_from_slice(&child.to_be_bytes());
        put_varint(&mut cell, max as u64);
        if content < cell.len() + 12 + 2 * (i + 1) {
            return Err(C1zError::State("interior table page overflow"));
        }
        content -= cell.len();
        page[content..content + cell.len()].copy_from_slice(&cell);
        page[12 + 2 * i..14 + 2 * i].copy_from_slice(&(content as u16).to_be_bytes());
    }
    page[5..7].copy_from_slice(&((content & 0xffff) as u16).to_be_bytes());
    Ok(())
}

/// What the [`PageThread`] needs: the leaves, the sync's id and timestamp, the row ids and gathered keys.
pub(crate) struct TableOut {
    pub leaves: Leaves,
    /// The record's values of a batch row lie in one piece (schema format 4: `needs_expansion` 0 or 1
    /// takes no bytes).
    pub contiguous: bool,
    pub sync_id: String,
    pub ids: RowIds,
}

/// A batch of grant rows and the `discovered_at` of the transaction that wrote them (what SQLite's
/// inserts would have stored).
type TableMsg = (GrantBatch, String);

/// What the [`PageThread`] gives back at the end.
pub(crate) struct TableDone {
    pub built: Built,
    pub ids: RowIds,
    /// Rows with an `expansion` (for `idx_grants_sync_expansion_v1`).
    pub expansion_ids: Vec<i64>,
    /// Rows with `needs_expansion = 1` (for `idx_grants_sync_needs_expansion_v1`).
    pub needs_ids: Vec<i64>,
}

/// Batches that can wait for the thread while the writer fills the next one.
const QUEUED: usize = 1;

/// The thread that turns the sync's grant batches into leaf pages, in order (see the module docs).
pub(crate) struct PageThread {
    msgs: Option<SyncSender<TableMsg>>,
    free: Receiver<GrantBatch>,
    thread: Option<std::thread::JoinHandle<Result<TableDone>>>,
    /// The leaves file, removed if the thread's work is never finished.
    path: PathBuf,
}

fn run(mut t: TableOut, msgs: Receiver<TableMsg>, give: Sender<GrantBatch>) -> Result<TableDone> {
    let mut expansion_ids = Vec::new();
    let mut needs_ids = Vec::new();
    // The entitlements of the expandable grants so far: expansion may add sources to the other grants
    // of those entitlements (for `pieces`, which compresses their leaves apart).
    let mut targets: std::collections::HashSet<Box<[u8]>, crate::writer::FastBuild> = Default::default();
    for (mut batch, now) in msgs {
        for r in 0..batch.rows.len() {
            let id = t.ids.next;
            let row = &batch.rows[r];
            let c = |k| batch.col(r, k);
            let vals = [
                Val::Null,
                Val::Text(c(0)),
                Val::Text(c(1)),
                Val::Text(c(2)),
                Val::Text(c(3)),
                Val::Text(c(4)),
                Val::Text(c(5)),
                if row.has_expansion {
                    Val::Blob(c(6))
                } else {
                    Val::Null
                },
                Val::Int(i64::from(row.needs_expansion)),
                Val::Blob(c(7)),
                Val::Text(t.sync_id.as_bytes()),
                Val::Text(now.as_bytes()),
            ];
            if t.contiguous {
                // The six text columns, `expansion` (empty when NULL) and `data` lie in one piece.
                let start = if r == 0 { 0 } else { batch.rows[r - 1].ends[7] };
                let parts: [&[u8]; 3] = [
                    &batch.bytes[start..row.ends[7]],
                    t.sync_id.as_bytes(),
                    now.as_bytes(),
                ];
                t.leaves.push_parts(id, &vals, Some(&parts))?;
            } else {
                t.leaves.push(id, &vals)?;
            }
            if row.has_expansion {
                expansion_ids.push(id);
                if row.hot.is_none() && !targets.contains(c(2)) {
                    targets.insert(c(2).into());
                }
            }
            let hot = match row.hot {
                Some(hot) => hot,
                None => !targets.is_empty() && targets.contains(c(2)),
            };
            if hot {
                t.leaves.mark_hot();
            }
            if row.needs_expansion {
                needs_ids.push(id);
            }
            if let Some(g) = t.ids.gather.as_mut() {
                // In the order of `btree`'s columns.
                let keys: [&[u8]; 7] = [c(5), t.sync_id.as_bytes(), c(0), c(1), c(2), c(3), c(4)];
                g.keys.add(&keys, id)?;
            }
            t.ids.next += 1;
        }
        batch.clear();
        let _ = give.send(batch);
    }
    Ok(TableDone {
        built: t.leaves.finish()?,
        ids: t.ids,
        expansion_ids,
        needs_ids,
    })
}

impl PageThread {
    pub(crate) fn start(t: TableOut) -> Result<Self> {
        let path = t.leaves.path.clone();
        let (msgs, rx) = std::sync::mpsc::sync_channel::<TableMsg>(QUEUED);
        let (give, free) = std::sync::mpsc::channel::<GrantBatch>();
        let thread = std::thread::Builder::new()
            .name("c1z-grant-pages".into())
            .spawn(move || run(t, rx, give))
            .map_err(C1zError::io("start the grant page thread for", &path))?;
        Ok(Self {
            msgs: Some(msgs),
            free,
            thread: Some(thread),
            path,
        })
    }

    /// Hands `batch` over (its rows written at `now`); returns an empty batch to fill next. An error of
    /// the thread (its pages are then incomplete) surfaces here or at [`finish`](Self::finish).
    pub(crate) fn send(&mut self, batch: GrantBatch, now: &str) -> Result<GrantBatch> {
        let sent = self.msgs.as_ref().map(|m| m.send((batch, now.to_owned())));
        if !matches!(sent, Some(Ok(()))) {
            return Err(self
                .join()
                .err()
                .unwrap_or(C1zError::State("the grant page thread stopped without an error")));
        }
        Ok(self.free.try_recv().unwrap_or_default())
    }

    fn join(&mut self) -> Result<TableDone> {
        self.msgs = None;
        let t = self
            .thread
            .take()
            .ok_or(C1zError::State("the grant page thread has already finished"))?;
        t.join()
            .map_err(|_| C1zError::State("the grant page thread panicked"))?
    }

    /// Waits for every batch to be written and returns the leaves.
    pub(crate) fn finish(mut self) -> Result<TableDone> {
        let done = self.join();
        if done.is_ok() {
            self.path = PathBuf::new();
        }
        done
    }
}

impl Drop for PageThread {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use rusqlite::Connection;

    /// A row of the test table: (id, a TEXT, b BLOB or NULL, c INTEGER).
    type Row = (i64, String, Option<Vec<u8>>, i64);

    fn rows(n: usize) -> Vec<Row> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let mut id = 0i64;
        (0..n)
            .map(|i| {
                id += 1 + next(3) as i64 * 1000;
                let a = "t".repeat(next(60) as usize) + &i.to_string();
                // Every 50th row larger than a page (overflow chains), some NULL, some empty.
                let b = match i % 50 {
                    0 => Some((0..(600 + next(3000))).map(|k| (k % 251) as u8).collect()),
                    1 => None,
                    2 => Some(Vec::new()),
                    _ => Some(vec![i as u8; next(120) as usize]),
                };
                let c = [0i64, 1, -1, 127, 128, 40_000, 1 << 40, i64::MIN][i % 8];
                (id, a, b, c)
            })
            .collect()
    }

    /// Writes `rows` as the pages of table `t` in a database of `page_size`-byte pages (many leaves,
    /// interior levels, overflow chains) holding other rows too, joins them, and checks the database:
    /// SQLite's integrity check and every row read back.
    fn splice_case(rows: &[Row], in_place: bool, page_size: usize) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(&format!(
            "PRAGMA page_size={page_size}; PRAGMA journal_mode=OFF;
             CREATE TABLE other (x text);
             CREATE TABLE t (id integer primary key, a text not null, b blob, c integer not null);"
        ))
        .unwrap();
        for i in 0..300 {
            c.execute(
                "INSERT INTO other VALUES (?1)",
                [format!("other row {i} {}", "o".repeat(i % 90))],
            )
            .unwrap();
        }
        let root: u32 = c
            .query_row("SELECT rootpage FROM sqlite_master WHERE name = 't'", [], |r| {
                r.get(0)
            })
            .unwrap();
        drop(c);
        let hdr = btree::read_header(&db).unwrap().unwrap();
        let mut leaves = Leaves::create(&dir.path().join("t.db-grants"), Layout::from(&hdr)).unwrap();
        for (id, a, b, cc) in rows {
            let bv = b.as_deref().map_or(Val::Null, Val::Blob);
            leaves
                .push(*id, &[Val::Null, Val::Text(a.as_bytes()), bv, Val::Int(*cc)])
                .unwrap();
        }
        let built = leaves.finish().unwrap();
        assert!(rows.len() < 2 || built.leaves.len() > 1);
        let sp = splice_with(&db, &hdr, built, root, in_place).unwrap();
        if in_place && !sp.in_place {
            // A filesystem without FALLOC_FL_INSERT_RANGE (e.g. tmpfs): the copy path ran instead.
            eprintln!("the leaves could not stay in place here; they were copied");
        }
        assert!(in_place || !sp.in_place);
        assert!(!dir.path().join("t.db-grants").exists());
        let c = Connection::open(&db).unwrap();
        let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
        let pages: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert_eq!(pages, sp.pages);
        let got: Vec<Row> = c
            .prepare("SELECT id, a, b, c FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), rows.len());
        assert!(got == rows, "rows read back differ");
        // Lookups by row id walk the interior pages.
        for (id, a, _, _) in rows.iter().step_by(97) {
            let v: String = c
                .query_row("SELECT a FROM t WHERE id = ?1", [id], |r| r.get(0))
                .unwrap();
            assert_eq!(&v, a);
        }
        let others: i64 = c
            .query_row("SELECT count(*) FROM other", [], |r| r.get(0))
            .unwrap();
        assert_eq!(others, 300);
        // SQLite goes on writing the database.
        c.execute("INSERT INTO t (a, c) VALUES ('after', 5)", []).unwrap();
        let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
    }

    #[test]
    fn spliced_leaves_read_back_in_place_or_copied() {
        let many = rows(3000);
        // 512-byte pages are smaller than a filesystem block: only the copy path takes them.
        for (in_place, page_size) in [(true, 4096), (false, 4096), (false, 512)] {
            splice_case(&many, in_place, page_size);
            splice_case(&many[..1], in_place, page_size);
            splice_case(&many[..40], in_place, page_size);
        }
    }

    #[test]
    fn varints_written_in_place_match_put_varint() {
        let mut page = vec![0u8; 32];
        let mut v = 1u64;
        for _ in 0..64 {
            for x in [v - 1, v, v + 1, v.wrapping_mul(3) / 2, u64::MAX - v] {
                let mut want = Vec::new();
                put_varint(&mut want, x);
                let end = varint_at(&mut page, 5, x);
                assert_eq!(&page[5..end], &want[..], "{x}");
            }
            v = v.wrapping_mul(2);
        }
    }

    #[test]
    fn interior_pages_take_what_fits() {
        let usable = 512;
        let n = interior_fanout(usable);
        let group: Vec<(u32, i64)> = (0..n)
            .map(|i| (u32::MAX - i as u32, i64::MAX - i as i64))
            .collect();
        let mut page = vec![0u8; usable];
        interior_page(&mut page, usable, &group).unwrap();
        assert_eq!(u16::from_be_bytes([page[3], page[4]]) as usize, n - 1);
    }
}
