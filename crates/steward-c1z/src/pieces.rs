//! The grant table's leaves compressed while they are still in memory, so that `finish` does not read
//! them back from disk (at 10 M grants they are 5.75 GB of the 8.35 GB database, and reading them again
//! was most of `finish`; docs/benchmarks.md).
//!
//! **During the sync.** [`Tap`] gets a copy of every leaf page the page thread of `table` writes, with
//! the zero-filled gap between its cell pointers and its cells, and whether the leaf is *hot*: it holds a
//! grant of an entitlement that an expandable grant seen so far feeds, one expansion may rewrite with
//! its `sources`. A thread of its own (`c1z-leaf-zstd`) cuts the leaves into pieces at the middle of a
//! cold leaf's gap (a run of zeros, as `zsplice` needs): before and after every run of hot leaves, and
//! otherwise every [`PIECE_BYTES`]. Each piece is compressed on its own into a side file,
//! `<work>-pieces`, as a stand-alone zstd frame. A leaf with overflow pages (rows larger than a page)
//! stops the cutting: page numbers in it change at the splice.
//!
//! **After the splice** ([`LeafPieces`]). The leaves have their database page numbers; a piece is a byte
//! range of the leaves file, which maps onto the database page by page. Until `finish`, SQLite may still
//! change leaves: expansion rewrites grants with their `sources` (the writer marks the leaves of those row
//! ids dirty, [`LeafPieces::mark_rows`], whether they were hot or not) and appends the grants it creates
//! after the last row id (the last leaf counts as dirty). A rewrite that no longer fits its leaf would
//! make SQLite rebalance neighbouring leaves: [`LeafPieces::tree_unchanged`] walks the table's interior
//! pages afterwards and keeps the pieces only if every leaf is still the page it was, under the same
//! row-id bound. Anything else that writes the table (dangling rows dropped, duplicates resolved,
//! another sync, a sync deleted) drops the pieces.
//!
//! **In `finish`** ([`write_frame`]). One zstd frame is assembled (`zsplice`): the database up to the
//! first piece, compressed from the file; the pieces in order, decompressed by two threads (the checksum
//! needs the whole content in order: it is hashed from them, not from the disk), each taking its own
//! blocks as they are or, when one of its leaves is dirty, patched with those leaves' pages from the file
//! and compressed again with the content before it as the prefix of its matches (so the small hot pieces
//! compress about as well as one stream); then the rest of the file, compressed as it is read. Should a
//! dirty leaf have lost the zeros a piece boundary was cut in, `write_frame` returns `None` before
//! writing anything and the caller compresses the whole file as before.
//!
//! Cost: the cold pieces are compressed without the content before them, so the file is a few percent
//! larger (≈ 8 % on the 10 M benchmark, whose hot leaves are one in nine).
//!
//! Invariants: pieces are contiguous in the leaves file and cut only in cold leaves; a piece's frame
//! decodes to exactly its byte range of the leaves as they were written; a leaf that changed after it was
//! copied is dirty by the time `finish` runs, or the pieces are gone.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};

use crate::direct::read_exact_at;
use crate::error::{C1zError, Result};
use crate::zsplice::{self, FrameAssembler, Piece, PieceEncoder};

/// Suffix of the side file of compressed pieces, next to the working database.
pub(crate) const PIECES_SUFFIX: &str = "-pieces";

/// Bytes of leaves sent to the compressing thread at a time, and so about the size of a piece (1 MiB:
/// compressed alone, such pieces of the 10 M benchmark's leaves are ≈ 3 % larger than one stream).
const PIECE_BYTES: usize = 1 << 20;

/// Bytes a piece may grow to when no leaf offers a boundary; past it no more pieces are made (the rest
/// of the leaves is compressed in `finish` as before).
const MAX_PIECE_BYTES: usize = 8 << 20;

/// Smallest gap of zeros in a leaf to cut at (its middle; `zsplice` needs 17 bytes, the rest is room for
/// the rows expansion rewrites on that leaf).
const MIN_GAP: usize = 256;

/// A compressed piece: bytes `start..end` of the leaves file, stored at `at` in the side file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PieceMeta {
    pub start: u64,
    pub end: u64,
    at: u64,
    len: u32,
}

/// The side file and its pieces, in order. Dropped, it removes the file.
pub(crate) struct Compressed {
    pub path: PathBuf,
    pub pieces: Vec<PieceMeta>,
    pub page_size: usize,
}

impl Drop for Compressed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A run of leaf pages (whole pages from `off` in the leaves file), with each page's gap of zeros and
/// whether expansion may rewrite rows on it ("hot").
struct Chunk {
    off: u64,
    bytes: Vec<u8>,
    pages: Vec<PageInfo>,
}

#[derive(Clone, Copy)]
struct PageInfo {
    gap: (u32, u32),
    hot: bool,
}

/// Copies of the leaf pages as they are written, for the compressing thread (see the module docs).
pub(crate) struct Tap {
    tx: Option<SyncSender<Chunk>>,
    recycled: Receiver<Vec<u8>>,
    chunk: Chunk,
    per_chunk: usize,
    thread: Option<std::thread::JoinHandle<Result<Compressed>>>,
    path: PathBuf,
}

impl Tap {
    /// Starts the thread compressing into `path` at zstd `level`, for pages of `page_size` bytes.
    pub(crate) fn start(path: &Path, page_size: usize, level: i32) -> Result<Self> {
        let file = File::create(path).map_err(C1zError::io("create", path))?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(4);
        let (give, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        let p = path.to_owned();
        let thread = match std::thread::Builder::new()
            .name("c1z-leaf-zstd".into())
            .spawn(move || compress_leaves(rx, give, file, p, page_size, level))
        {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(C1zError::io("start the leaf compression thread for", path)(e));
            }
        };
        let per_chunk = (PIECE_BYTES / page_size).max(1);
        Ok(Self {
            tx: Some(tx),
            recycled,
            chunk: Chunk {
                off: 0,
                bytes: Vec::with_capacity(PIECE_BYTES),
                pages: Vec::with_capacity(per_chunk),
            },
            per_chunk,
            thread: Some(thread),
            path: path.to_owned(),
        })
    }

    /// The next page of the leaves file: a leaf with its gap of zeros at `gap` (`None` for a leaf with
    /// overflow pages: nothing more is compressed), `hot` if expansion may rewrite a row on it.
    pub(crate) fn page(&mut self, page: &[u8], gap: Option<(usize, usize)>, hot: bool) {
        let Some(gap) = gap else {
            self.tx = None;
            return;
        };
        if self.tx.is_none() {
            return;
        }
        // A full chunk goes once a page follows it: the very last page must not be cut in (the rows
        // expansion creates go there).
        if self.chunk.pages.len() == self.per_chunk {
            let next_off = self.chunk.off + self.chunk.bytes.len() as u64;
            let mut bytes = self.recycled.try_recv().unwrap_or_default();
            bytes.clear();
            let full = std::mem::replace(
                &mut self.chunk,
                Chunk {
                    off: next_off,
                    bytes,
                    pages: Vec::with_capacity(self.per_chunk),
                },
            );
            if self.tx.as_ref().is_some_and(|tx| tx.send(full).is_err()) {
                // The thread stopped (an error it reports at `finish`).
                self.tx = None;
                return;
            }
        }
        self.chunk.bytes.extend_from_slice(page);
        self.chunk.pages.push(PageInfo {
            gap: (gap.0 as u32, gap.1 as u32),
            hot,
        });
    }

    /// Waits for the thread: the pieces, or `None` when there are none to use (the side file is then
    /// removed). An I/O error of the thread is returned as such.
    pub(crate) fn finish(mut self) -> Result<Option<Compressed>> {
        // The last chunk too (a piece may end in it), but not cut in its last page.
        let mut last = std::mem::replace(
            &mut self.chunk,
            Chunk {
                off: 0,
                bytes: Vec::new(),
                pages: Vec::new(),
            },
        );
        if let Some(p) = last.pages.last_mut() {
            p.gap = (0, 0);
        }
        if !last.pages.is_empty()
            && let Some(tx) = self.tx.as_ref()
        {
            let _ = tx.send(last);
        }
        self.tx = None;
        match self.join() {
            Ok(c) if !c.pieces.is_empty() => {
                self.path = PathBuf::new();
                Ok(Some(c))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn join(&mut self) -> Result<Compressed> {
        self.tx = None;
        let t = self.thread.take().ok_or(C1zError::State(
            "the leaf compression thread has already finished",
        ))?;
        t.join()
            .map_err(|_| C1zError::State("the leaf compression thread panicked"))?
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where to cut a leaf whose gap of zeros is `lo..hi`: its middle, if the gap is large enough.
fn cut_in((lo, hi): (u32, u32)) -> Option<usize> {
    let (lo, hi) = (lo as usize, hi as usize);
    (hi >= lo + MIN_GAP).then_some((lo + hi) / 2)
}

/// The piece being gathered by [`compress_leaves`].
struct Gathering {
    /// Its content so far, and where it starts in the leaves file.
    buf: Vec<u8>,
    start: u64,
    /// It holds a hot page (it ends at the next cold page that can be cut).
    hot: bool,
    /// Where in `buf` the page before the current one could be cut (cold, with a gap), if it could.
    prev_cut: Option<usize>,
}

/// The compressing thread. Pieces are cut at the middle of a cold leaf's gap: before and after each run
/// of hot leaves (so that the leaves expansion rewrites end up in small pieces, the only ones `finish`
/// compresses again), and otherwise once a piece holds [`PIECE_BYTES`].
fn compress_leaves(
    rx: Receiver<Chunk>,
    give: std::sync::mpsc::Sender<Vec<u8>>,
    file: File,
    path: PathBuf,
    page_size: usize,
    level: i32,
) -> Result<Compressed> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut pieces: Vec<PieceMeta> = Vec::new();
    let mut at = 0u64;
    let mut g: Option<Gathering> = None;
    // One compressor for all pieces (a fresh frame each, as `zsplice` needs).
    let mut zc = zsplice::piece_compressor(level).map_err(C1zError::io("compress", &path))?;
    let mut emit = |g: &mut Gathering, cut: usize| -> Result<()> {
        let frame = zc
            .compress(&g.buf[..cut])
            .map_err(C1zError::io("compress", &path))?;
        out.write_all(&frame).map_err(C1zError::io("write", &path))?;
        let len = u32::try_from(frame.len()).map_err(|_| C1zError::State("a compressed piece over 4 GiB"))?;
        pieces.push(PieceMeta {
            start: g.start,
            end: g.start + cut as u64,
            at,
            len,
        });
        at += u64::from(len);
        let from = cut + zsplice::REP_RESET_ZEROS;
        g.buf.drain(..from);
        g.start += from as u64;
        Ok(())
    };
    'chunks: for chunk in rx {
        for (i, info) in chunk.pages.iter().enumerate() {
            let page_off = chunk.off + (i * page_size) as u64;
            let page = &chunk.bytes[i * page_size..(i + 1) * page_size];
            let cut = (!info.hot).then(|| cut_in(info.gap)).flatten();
            let Some(cur) = g.as_mut() else {
                // Before the first cut, the leaves belong to the part `finish` compresses from the file.
                if let Some(c) = cut {
                    let from = c + zsplice::REP_RESET_ZEROS;
                    let mut buf = Vec::with_capacity(PIECE_BYTES + page_size);
                    buf.extend_from_slice(&page[from..]);
                    g = Some(Gathering {
                        buf,
                        start: page_off + from as u64,
                        hot: false,
                        prev_cut: None,
                    });
                }
                continue;
            };
            if info.hot && !cur.hot {
                // A hot run begins: end the cold piece on the page before, if it can be cut there.
                if let Some(pc) = cur.prev_cut.filter(|&pc| pc > 0) {
                    emit(cur, pc)?;
                }
                cur.hot = true;
            }
            let base = cur.buf.len();
            cur.buf.extend_from_slice(page);
            cur.prev_cut = cut.map(|c| base + c);
            if let Some(c) = cur.prev_cut
                && (cur.hot || cur.buf.len() >= PIECE_BYTES)
            {
                emit(cur, c)?;
                cur.hot = false;
                cur.prev_cut = None;
            } else if cur.buf.len() > MAX_PIECE_BYTES {
                // No leaf to cut in for too long: no more pieces.
                break 'chunks;
            }
        }
        let _ = give.send(chunk.bytes);
    }
    out.flush().map_err(C1zError::io("write", &path))?;
    Ok(Compressed {
        path,
        pieces,
        page_size,
    })
}

/// The pieces of a spliced grant table, and which of its leaves changed since (see the module docs).
pub(crate) struct LeafPieces {
    c: Compressed,
    /// Each leaf's database page and largest row id (leaf `i` is page `i` of the leaves file).
    leaf_pages: Vec<(u32, i64)>,
    dirty: Vec<bool>,
}

impl LeafPieces {
    pub(crate) fn new(c: Compressed, leaf_pages: Vec<(u32, i64)>) -> Self {
        let mut dirty = vec![false; leaf_pages.len()];
        // The last leaf takes the rows expansion creates.
        if let Some(d) = dirty.last_mut() {
            *d = true;
        }
        Self { c, leaf_pages, dirty }
    }

    /// Marks the leaves holding the row ids `rows` (ascending) as changed.
    pub(crate) fn mark_rows(&mut self, rows: &[i64]) {
        let mut i = 0;
        for &id in rows {
            i += self.leaf_pages[i..].partition_point(|&(_, max)| max < id);
            if let Some(d) = self.dirty.get_mut(i) {
                *d = true;
            }
        }
    }

    /// True when the table rooted at `root` in the database `db` still has every leaf on its page with its
    /// row-id bound (the last leaf may have been followed by new ones): no leaf was rebalanced.
    pub(crate) fn tree_unchanged(&self, db: &Path, root: u32) -> Result<bool> {
        let f = File::open(db).map_err(C1zError::io("open", db))?;
        let ps = self.c.page_size;
        let mut page = vec![0u8; ps];
        let mut walk: Vec<(u32, Option<i64>)> = Vec::with_capacity(self.leaf_pages.len() + 1);
        // All leaves are at the same depth: found down the leftmost path, so that the walk reads the
        // interior pages only.
        let mut depth = 0usize;
        let mut pg = root;
        loop {
            read_exact_at(&f, &mut page, u64::from(pg.max(1) - 1) * ps as u64, db)?;
            let h = if pg == 1 { 100 } else { 0 };
            match page[h] {
                0x0d => break,
                0x05 if depth < 64 => {
                    let Some((kids, _)) = interior_cells(&page, h, ps) else {
                        return Ok(false);
                    };
                    pg = kids.first().map_or(0, |k| k.0);
                    if pg == 0 {
                        return Ok(false);
                    }
                    depth += 1;
                }
                _ => return Ok(false),
            }
        }
        // Depth-first, children in order: (page, the bound of its subtree, its depth).
        let mut stack: Vec<(u32, Option<i64>, usize)> = vec![(root, None, 0)];
        while let Some((pg, bound, d)) = stack.pop() {
            if d == depth {
                walk.push((pg, bound));
                continue;
            }
            if pg == 0 {
                return Ok(false);
            }
            read_exact_at(&f, &mut page, u64::from(pg - 1) * ps as u64, db)?;
            let h = if pg == 1 { 100 } else { 0 };
            let Some((mut kids, right)) = interior_cells(&page, h, ps).filter(|_| page[h] == 0x05) else {
                return Ok(false);
            };
            kids.push((right, bound));
            stack.extend(kids.into_iter().rev().map(|(c, b)| (c, b, d + 1)));
        }
        let n = self.leaf_pages.len();
        if walk.len() < n {
            return Ok(false);
        }
        let same = self.leaf_pages[..n - 1]
            .iter()
            .zip(&walk)
            .all(|(&(pg, max), &(wp, wb))| pg == wp && wb == Some(max));
        Ok(same && walk[n - 1].0 == self.leaf_pages[n - 1].0)
    }

    /// Byte offset in the database of byte `x` of the leaves file.
    fn db_off(&self, x: u64) -> u64 {
        let ps = self.c.page_size as u64;
        let leaf = (x / ps) as usize;
        let pg = self.leaf_pages.get(leaf).map_or(0, |p| p.0);
        u64::from(pg.saturating_sub(1)) * ps + x % ps
    }

    fn leaf_of(&self, x: u64) -> usize {
        (x / self.c.page_size as u64) as usize
    }
}

/// A child page and the largest row id under it (`None`: the bound of its parent).
type Child = (u32, Option<i64>);

/// The cells of the interior table page `page` (header at `h`): each child with the largest row id under
/// it, and the right-most child; `None` if the page is malformed.
fn interior_cells(page: &[u8], h: usize, ps: usize) -> Option<(Vec<Child>, u32)> {
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let n = usize::from(u16::from_be_bytes([*page.get(h + 3)?, *page.get(h + 4)?]));
    let right = be32(page.get(h + 8..h + 12)?);
    let mut kids = Vec::with_capacity(n + 1);
    for k in 0..n {
        let ptr = page.get(h + 12 + 2 * k..h + 14 + 2 * k)?;
        let at = usize::from(u16::from_be_bytes([ptr[0], ptr[1]]));
        let cell = page.get(at..(at + 13).min(ps))?;
        if cell.len() < 5 {
            return None;
        }
        kids.push((be32(cell), Some(varint(&cell[4..])?)));
    }
    Some((kids, right))
}

/// SQLite's big-endian varint at the start of `b`.
fn varint(b: &[u8]) -> Option<i64> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(9) {
        if i == 8 {
            return Some(((v << 8) | u64::from(byte)) as i64);
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some(v as i64);
        }
    }
    None
}

#[cfg(test)]
thread_local! {
    /// On this thread: frames assembled from pieces, pieces that could not be used in `finish`, pieces
    /// dropped because the grant table was rebalanced.
    pub(crate) static OUTCOMES: std::cell::Cell<(u32, u32, u32)> = const { std::cell::Cell::new((0, 0, 0)) };
}

/// One piece ready for the frame: its blocks (`None`: to be compressed again, after the content before
/// it) and its content (with room for the rep-reset zeros after it).
type Ready = (Option<Piece>, Vec<u8>);

/// How much of the content before a piece compressed again in `finish` its matches may reach into: at
/// most the piece right before it (the release of leaves in [`write_frame`] relies on no thread reading
/// further back than that).
const PREFIX_BYTES: usize = 128 << 10;

/// Consecutive pieces one thread of `finish` makes ready in a row (and so how many it may be ahead).
const BLOCK_PIECES: usize = 8;

/// A piece ready for the frame, its content followed by the rep-reset zeros (shared with the thread
/// that may use it as the prefix of the next piece), and the content's length without them.
type Shared = (Piece, std::sync::Arc<Vec<u8>>, usize);

/// Compresses the working database `db` (of `size` bytes) into the open output `out` as one frame with
/// the pieces of `lp` (see the module docs); `direct` as in `envelope`. `None` (nothing written) when a
/// dirty leaf lost the zeros a piece boundary was cut in: the caller then compresses the file as a whole.
///
/// `db` is the writer's working database, removed afterwards: with `flush`, its dirty pages are written
/// back while the pieces are assembled (before the rest is read past the page cache), and the blocks of
/// the leaves already in the frame are given back to the filesystem meanwhile ([`release`]).
pub(crate) fn write_frame<W: Write>(
    db: &Path,
    size: u64,
    mut out: W,
    opts: crate::envelope::CompressOptions,
    direct_ranges: &[(u64, u64)],
    lp: &LeafPieces,
    flush: bool,
) -> Result<Option<W>> {
    let pieces = &lp.c.pieces;
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return Ok(None);
    };
    let level = opts.level;
    let zeros = zsplice::REP_RESET_PRECEDING_ZEROS as u64;
    let f = File::open(db).map_err(C1zError::io("open", db))?;
    // Every boundary on a changed leaf must still lie in its zeros.
    let mut bounds: Vec<u64> = vec![first.start - zsplice::REP_RESET_ZEROS as u64];
    bounds.extend(pieces.iter().map(|p| p.end));
    for &b in &bounds {
        if lp.dirty.get(lp.leaf_of(b)).copied().unwrap_or(true) {
            let mut z = [0u8; zsplice::BOUNDARY_ZEROS];
            read_exact_at(&f, &mut z, lp.db_off(b) - zeros, db)?;
            if z.iter().any(|&x| x != 0) {
                tracing::debug!(boundary = b, "c1z: a rewritten leaf lost a piece boundary");
                #[cfg(test)]
                OUTCOMES.with(|o| o.set((o.get().0, o.get().1 + 1, o.get().2)));
                return Ok(None);
            }
        }
    }
    let zerr = |e: std::io::Error| C1zError::Io {
        action: "compress into",
        path: db.to_owned(),
        error: e,
    };
    let t0 = std::time::Instant::now();
    // Written back while the front and the pieces are assembled; joined before the rest is read past
    // the page cache.
    let owned = db.to_owned();
    let flushed = std::thread::Builder::new()
        .name("c1z-flush".into())
        .spawn(move || {
            let t = std::time::Instant::now();
            let r = match flush {
                true => File::open(&owned).and_then(|f| f.sync_data()),
                false => Ok(()),
            };
            tracing::debug!(
                ms = t.elapsed().as_millis() as u64,
                "c1z: working database flushed"
            );
            r
        })
        .map_err(C1zError::io("start the thread flushing", db))?;
    let mut asm = FrameAssembler::new(&mut out, Some(size)).map_err(zerr)?;
    // The database up to the first boundary.
    let front_end = lp.db_off(bounds[0]);
    let mut enc = PieceEncoder::new(level, Some(front_end)).map_err(zerr)?;
    crate::envelope::copy_db(db, (0, front_end), direct_ranges, &mut enc)?;
    asm.push_piece(&enc.finish().map_err(zerr)?).map_err(zerr)?;
    let mut feed = ContentOf(&mut asm);
    crate::envelope::copy_db(db, (0, front_end), direct_ranges, &mut feed)?;
    let front_ms = t0.elapsed().as_millis() as u64;
    // The pieces, made ready by two threads in blocks of consecutive pieces (block `b` by thread
    // `b % 2`, so that a piece compressed again finds the content before it at hand) and taken in order.
    let recompressed = std::sync::atomic::AtomicU64::new(0);
    let ps = lp.c.page_size as u64;
    let pieces_done = std::thread::scope(|scope| -> Result<()> {
        let (release_tx, release_rx) = std::sync::mpsc::channel::<(u64, u64)>();
        scope.spawn(move || {
            for range in release_rx {
                release(db, range);
            }
        });
        // Leaves released so far: up to this byte of `db` (a page boundary).
        let mut released = lp.db_off(bounds[0]) / ps * ps;
        let mut rxs = Vec::new();
        let mut handles = Vec::new();
        for w in 0..2usize {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Shared>>(BLOCK_PIECES);
            rxs.push(rx);
            let recompressed = &recompressed;
            handles.push(scope.spawn(move || make_ready(lp, db, level, w, &tx, recompressed)));
        }
        let mut stopped = false;
        for k in 0..pieces.len() {
            let Ok(ready) = rxs[(k / BLOCK_PIECES) % 2].recv() else {
                stopped = true;
                break;
            };
            let (piece, content, len) = ready?;
            asm.push(&piece, &content[..len]).map_err(zerr)?;
            // The pages of pieces two blocks back are read by no thread any more (a thread starting a
            // block reads the piece before it, for its prefix).
            if let Some(done) = k.checked_sub(2 * BLOCK_PIECES).map(|j| &pieces[j]) {
                let to = lp.db_off(done.end) / ps * ps;
                if to >= released + RELEASE_STEP {
                    let _ = release_tx.send((released, to));
                    released = to;
                }
            }
        }
        drop(release_tx);
        drop(rxs);
        // A thread's own error first (it stopped without sending it).
        for h in handles {
            h.join()
                .map_err(|_| C1zError::State("a piece thread panicked"))??;
        }
        if stopped {
            return Err(C1zError::State("a piece thread stopped"));
        }
        Ok(())
    });
    // The pieces' own error first (then the flush's).
    let flush_done = flushed
        .join()
        .map_err(|_| C1zError::State("the thread flushing the working database panicked"));
    pieces_done?;
    flush_done?.map_err(C1zError::io("flush", db))?;
    let pieces_ms = t0.elapsed().as_millis() as u64 - front_ms;
    // The rest: the last leaves, the interior pages, the indexes.
    let rest = lp.db_off(last.end) + zsplice::REP_RESET_ZEROS as u64;
    let mut tail = asm.into_tail(level, opts.workers, opts.job_size).map_err(zerr)?;
    crate::envelope::copy_db(db, (rest, size), direct_ranges, &mut tail)?;
    tail.finish().map_err(zerr)?;
    tracing::debug!(
        pieces = pieces.len(),
        recompressed = recompressed.load(std::sync::atomic::Ordering::Relaxed),
        leaves_from = first.start,
        leaves_to = last.end,
        front_ms,
        pieces_ms,
        tail_ms = t0.elapsed().as_millis() as u64 - front_ms - pieces_ms,
        tail_bytes = size - rest,
        "c1z: leaves taken from their pieces"
    );
    #[cfg(test)]
    OUTCOMES.with(|o| o.set((o.get().0 + 1, o.get().1, o.get().2)));
    Ok(Some(out))
}

/// Bytes of leaves [`write_frame`] releases at a time.
const RELEASE_STEP: u64 = if cfg!(test) { 0 } else { 256 << 20 };

/// Frees the blocks of bytes `from..to` of `db` (page-aligned; the file keeps its size and reads zeros
/// there): leaves whose pieces are in the frame already, of the working database `finish` removes next
/// (on a filesystem mounted with `discard`, freeing 5.75 GB of leaves at the removal took ≈ 1 s).
/// Best effort: where it fails, they are freed at the removal.
fn release(db: &Path, (from, to): (u64, u64)) {
    if from >= to {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::FallocateFlags;
        let done = std::fs::OpenOptions::new().write(true).open(db).ok().map(|f| {
            rustix::fs::fallocate(
                &f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                from,
                to - from,
            )
        });
        if !matches!(done, Some(Ok(()))) {
            tracing::debug!(from, to, "c1z: leaves not released early");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (db, from, to);
}

/// Thread `w` of [`write_frame`]: makes the pieces of blocks `w`, `w + 2`, … ready in order and sends
/// them; it stops after sending an error, or when nobody receives any more.
fn make_ready(
    lp: &LeafPieces,
    db: &Path,
    level: i32,
    w: usize,
    tx: &SyncSender<Result<Shared>>,
    recompressed: &std::sync::atomic::AtomicU64,
) -> Result<()> {
    let pieces = &lp.c.pieces;
    let side = File::open(&lp.c.path).map_err(C1zError::io("open", &lp.c.path))?;
    let dbf = File::open(db).map_err(C1zError::io("open", db))?;
    let mut dec =
        zstd::bulk::Decompressor::new().map_err(C1zError::io("decompress a piece of", &lp.c.path))?;
    let mut get = |k: usize| ready(lp, &pieces[k], &side, &dbf, db, &mut dec);
    for block in (w..pieces.len().div_ceil(BLOCK_PIECES)).step_by(2) {
        // The content of the piece before, with the rep-reset zeros after it.
        let mut before: Option<std::sync::Arc<Vec<u8>>> = None;
        for k in block * BLOCK_PIECES..((block + 1) * BLOCK_PIECES).min(pieces.len()) {
            let r = share(k, &mut get, &mut before, level, &lp.c.path, recompressed);
            let failed = r.is_err();
            if tx.send(r).is_err() || failed {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Piece `k` as [`Shared`], from `get` (its [`ready`]); one to compress again is compressed after the
/// content before it: `before` when the thread made that piece ready just before, else piece `k - 1`
/// made ready once more. `before` becomes this piece's content.
fn share(
    k: usize,
    get: &mut impl FnMut(usize) -> Result<Ready>,
    before: &mut Option<std::sync::Arc<Vec<u8>>>,
    level: i32,
    side: &Path,
    recompressed: &std::sync::atomic::AtomicU64,
) -> Result<Shared> {
    let (piece, mut content) = get(k)?;
    let len = content.len();
    let piece = match piece {
        Some(p) => p,
        None => {
            recompressed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let prefix = match (before.as_ref(), k) {
                (Some(b), _) => b.clone(),
                (None, 0) => std::sync::Arc::new(Vec::new()),
                (None, _) => {
                    let mut c = get(k - 1)?.1;
                    c.extend_from_slice(&[0u8; zsplice::REP_RESET_ZEROS]);
                    std::sync::Arc::new(c)
                }
            };
            let from = prefix.len().saturating_sub(PREFIX_BYTES);
            zsplice::compress_piece_after(&content, &prefix[from..], level)
                .map_err(C1zError::io("compress a piece of", side))?
        }
    };
    content.extend_from_slice(&[0u8; zsplice::REP_RESET_ZEROS]);
    let content = std::sync::Arc::new(content);
    *before = Some(content.clone());
    Ok((piece, content, len))
}

/// Hands content to a [`FrameAssembler`] for its checksum (the piece was pushed already).
struct ContentOf<'a, W: Write>(&'a mut FrameAssembler<W>);

impl<W: Write> Write for ContentOf<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.content(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Piece `p` as it belongs in the frame now: its own blocks, or compressed again over the leaves that
/// changed (read from the database `dbf`); with its content.
fn ready(
    lp: &LeafPieces,
    p: &PieceMeta,
    side: &File,
    dbf: &File,
    db: &Path,
    dec: &mut zstd::bulk::Decompressor<'_>,
) -> Result<Ready> {
    let zerr = |e: std::io::Error| C1zError::Io {
        action: "decompress a piece of",
        path: lp.c.path.clone(),
        error: e,
    };
    let len = (p.end - p.start) as usize;
    let (db_start, db_end) = (lp.db_off(p.start), lp.db_off(p.end));
    if db_end - db_start != len as u64 {
        // The lock-byte page lies between its leaves: taken from the database as it is.
        let mut content = vec![0u8; (db_end - db_start) as usize];
        read_exact_at(dbf, &mut content, db_start, db)?;
        return Ok((None, content));
    }
    let mut frame = vec![0u8; p.len as usize];
    read_exact_at(side, &mut frame, p.at, &lp.c.path)?;
    let mut content = Vec::with_capacity(len + zsplice::REP_RESET_ZEROS);
    dec.decompress_to_buffer(&frame, &mut content).map_err(zerr)?;
    if content.len() != len {
        return Err(C1zError::State(
            "a compressed piece of the grant table decodes to the wrong size",
        ));
    }
    let ps = lp.c.page_size as u64;
    let (l0, l1) = (lp.leaf_of(p.start), lp.leaf_of(p.end));
    let mut patched = false;
    for leaf in l0..=l1 {
        if !lp.dirty.get(leaf).copied().unwrap_or(false) {
            continue;
        }
        // The part of this leaf inside the piece.
        let lo = (leaf as u64 * ps).max(p.start);
        let hi = ((leaf as u64 + 1) * ps).min(p.end);
        if lo >= hi {
            continue;
        }
        let part = &mut content[(lo - p.start) as usize..(hi - p.start) as usize];
        read_exact_at(dbf, part, lp.db_off(lo), db)?;
        patched = true;
    }
    if patched {
        return Ok((None, content));
    }
    Ok((Some(Piece::from_frame(frame, len as u64).map_err(zerr)?), content))
}
