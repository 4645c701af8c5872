//! The keys of the non-unique grant indexes as numbers: each distinct key part — one TEXT column, or a
//! resource type and id pair, in the sortable form of `btree` (`push_key_col`) — is stored once in a
//! [`Dict`] and numbered in order of first sight, and an index entry is the numbers of its parts and the
//! row id (16 bytes, whatever the ids' lengths). [`IdRuns`] sorts full runs of such entries by the
//! parts' ranks in byte order, then the row id, and spills them to unnamed temporary files (a few bytes
//! an entry: the row id's distance from the previous entry's while the parts repeat); [`merge`] merges
//! the runs of one index by integer comparisons only and turns each entry back into its key bytes — the
//! same entries, in the same order, as sorting the key bytes would give.
//!
//! Invariants: a part's number never changes; its rank (its place among all parts in byte order) may
//! grow as parts are added, but two parts never swap, so a run sorted by the ranks of its day is in
//! byte order for good, and the merge compares by the final ranks ([`Dict::rank_all`] after the last
//! row). The dictionary holds every distinct part once — at most the sync's resources, principals and
//! entitlements, as the writer's reference sets (`GrantRefs`) do — so memory does not grow with the
//! grant count.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use crate::btree::{push_rowid, put_leb, read_leb};
use crate::error::{C1zError, Result};
use crate::writer::FastBuild;

/// No part (the end of a hash chain; a second part of a one-part key).
pub(crate) const NONE: u32 = u32::MAX;

/// Bytes an entry costs in memory while its run fills (two part numbers, the row id, its place in
/// the sort).
pub(crate) const ENTRY_BYTES: usize = 20;

/// The distinct key parts, numbered in order of first sight.
#[derive(Default)]
pub(crate) struct Dict {
    /// Every part's bytes, back to back.
    bytes: Vec<u8>,
    /// Where each part ends in `bytes` (it starts where the previous one ends).
    ends: Vec<usize>,
    /// The newest part with each hash; older parts with the same hash are chained through `older`.
    heads: HashMap<u64, u32, FastBuild>,
    older: Vec<u32>,
    /// The parts ranked so far, in byte order.
    order: Vec<u32>,
    /// Each ranked part's place in `order`.
    rank: Vec<u32>,
}

impl Dict {
    /// The bytes of part `id`.
    pub(crate) fn get(&self, id: u32) -> &[u8] {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Parts stored.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The number of part `v`, added if new; `None` when 2^32 - 1 parts are stored already.
    pub(crate) fn intern(&mut self, v: &[u8]) -> Option<u32> {
        let h = FastBuild::default().hash_one(v);
        let head = self.heads.get(&h).copied().unwrap_or(NONE);
        let mut id = head;
        while id != NONE {
            if self.get(id) == v {
                return Some(id);
            }
            id = self.older[id as usize];
        }
        let new = u32::try_from(self.ends.len()).ok().filter(|&n| n != NONE)?;
        self.bytes.extend_from_slice(v);
        self.ends.push(self.bytes.len());
        self.older.push(head);
        self.heads.insert(h, new);
        Some(new)
    }

    /// Ranks the parts added since the last call among all (sorted alone, then merged with the ranked
    /// ones: linear in the parts, plus a sort of the new ones).
    pub(crate) fn rank_all(&mut self) {
        let from = self.rank.len();
        let to = self.ends.len();
        if from == to {
            return;
        }
        let mut fresh: Vec<u32> = (from as u32..to as u32).collect();
        fresh.sort_unstable_by(|&a, &b| self.get(a).cmp(self.get(b)));
        let mut merged = Vec::with_capacity(to);
        let (mut i, mut j) = (0, 0);
        while i < self.order.len() && j < fresh.len() {
            if self.get(self.order[i]) <= self.get(fresh[j]) {
                merged.push(self.order[i]);
                i += 1;
            } else {
                merged.push(fresh[j]);
                j += 1;
            }
        }
        merged.extend_from_slice(&self.order[i..]);
        merged.extend_from_slice(&fresh[j..]);
        self.rank.resize(to, 0);
        for (r, &id) in merged.iter().enumerate() {
            self.rank[id as usize] = r as u32;
        }
        self.order = merged;
    }

    /// The rank of a ranked part (a missing second part ranks first).
    fn rank_of(&self, id: u32) -> u32 {
        if id == NONE { 0 } else { self.rank[id as usize] }
    }

    /// Whether every part is ranked.
    fn ranked(&self) -> bool {
        self.rank.len() == self.ends.len()
    }
}

/// Sorted runs of one index whose entries are part numbers: spilled files and the last, in-memory run.
pub(crate) struct IdRuns {
    pub(crate) files: Vec<File>,
    /// Parts per key (1 or 2).
    parts: usize,
    /// Each entry's part numbers (the second `NONE` for one part).
    ids: Vec<[u32; 2]>,
    rowids: Vec<i64>,
    /// Whether the row ids came in ascending order (then a stable sort by the parts alone is enough).
    ascending: bool,
    /// The entries' places in sorted order, after [`sort`](Self::sort).
    sorted: Vec<u32>,
}

impl IdRuns {
    pub(crate) fn new(parts: usize) -> Self {
        Self {
            files: Vec::new(),
            parts: parts.clamp(1, 2),
            ids: Vec::new(),
            rowids: Vec::new(),
            ascending: true,
            sorted: Vec::new(),
        }
    }

    /// Adds an entry; false when the run cannot take more (its places are `u32`).
    pub(crate) fn push(&mut self, ids: [u32; 2], rowid: i64) -> bool {
        if self.ids.len() >= NONE as usize {
            return false;
        }
        if self.rowids.last().is_some_and(|&l| rowid <= l) {
            self.ascending = false;
        }
        self.ids.push(ids);
        self.rowids.push(rowid);
        true
    }

    /// Memory the in-memory run holds.
    pub(crate) fn bytes(&self) -> usize {
        self.ids.len() * ENTRY_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Sorts the in-memory run by its parts' ranks, then row id (`dict` ranked). Row ids that came in
    /// ascending order (as the writer inserts them) need only a stable counting sort per part.
    pub(crate) fn sort(&mut self, dict: &Dict) {
        let n = self.ids.len();
        let mut perm: Vec<u32> = (0..n as u32).collect();
        if self.ascending {
            let domain = dict.len() + 1;
            let mut counts = vec![0u32; domain + 1];
            let mut out = vec![0u32; n];
            for p in (0..self.parts).rev() {
                counts.fill(0);
                let key = |i: u32| dict.rank_of(self.ids[i as usize][p]) as usize;
                for &i in &perm {
                    counts[key(i) + 1] += 1;
                }
                for k in 1..counts.len() {
                    counts[k] += counts[k - 1];
                }
                for &i in &perm {
                    let k = key(i);
                    out[counts[k] as usize] = i;
                    counts[k] += 1;
                }
                std::mem::swap(&mut perm, &mut out);
            }
        } else {
            perm.sort_unstable_by_key(|&i| {
                let e = self.ids[i as usize];
                (dict.rank_of(e[0]), dict.rank_of(e[1]), self.rowids[i as usize])
            });
        }
        self.sorted = perm;
    }

    /// Sorts the in-memory run and writes it to a temporary file in `dir`: per entry, the row id's
    /// distance from the previous entry's while the parts are the same (never 0: an index holds each
    /// row once), else 0, the part numbers and the row id (LEB128; the row id zigzag-coded).
    pub(crate) fn spill(&mut self, dict: &mut Dict, dir: &Path) -> Result<()> {
        dict.rank_all();
        self.sort(dict);
        let f = tempfile::tempfile_in(dir).map_err(C1zError::io("create a sort run in", dir))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut head = Vec::with_capacity(32);
        let mut prev: Option<([u32; 2], i64)> = None;
        for &i in &self.sorted {
            let (ids, rowid) = (self.ids[i as usize], self.rowids[i as usize]);
            head.clear();
            match prev {
                Some((p, r)) if p == ids && rowid > r => put_leb(&mut head, (rowid - r) as u64),
                _ => {
                    put_leb(&mut head, 0);
                    for &id in &ids[..self.parts] {
                        put_leb(&mut head, u64::from(id));
                    }
                    put_leb(&mut head, zigzag(rowid));
                }
            }
            prev = Some((ids, rowid));
            w.write_all(&head)
                .map_err(C1zError::io("write a sort run in", dir))?;
        }
        let f = w
            .into_inner()
            .map_err(|e| C1zError::io("write a sort run in", dir)(e.into_error()))?;
        self.files.push(f);
        self.release();
        Ok(())
    }

    /// Frees the in-memory run's memory (after it was spilled).
    pub(crate) fn release(&mut self) {
        self.ids = Vec::new();
        self.rowids = Vec::new();
        self.sorted = Vec::new();
        self.ascending = true;
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// One sorted run being merged.
enum Source<'a> {
    File {
        r: BufReader<&'a File>,
        ids: [u32; 2],
        rowid: i64,
    },
    Mem(usize),
}

fn malformed() -> std::io::Error {
    std::io::Error::other("sort run: malformed entry")
}

impl Source<'_> {
    /// The next entry: its part numbers and row id.
    fn next(&mut self, runs: &IdRuns, parts: usize) -> std::io::Result<Option<([u32; 2], i64)>> {
        match self {
            Source::File { r, ids, rowid } => {
                let Some(d) = read_leb(r)? else {
                    return Ok(None);
                };
                if d == 0 {
                    *ids = [NONE; 2];
                    for id in ids.iter_mut().take(parts) {
                        let v = read_leb(r)?.ok_or_else(malformed)?;
                        *id = u32::try_from(v).map_err(|_| malformed())?;
                    }
                    *rowid = unzigzag(read_leb(r)?.ok_or_else(malformed)?);
                } else {
                    *rowid = i64::try_from(d)
                        .ok()
                        .and_then(|d| rowid.checked_add(d))
                        .ok_or_else(malformed)?;
                }
                Ok(Some((*ids, *rowid)))
            }
            Source::Mem(i) => {
                let Some(&at) = runs.sorted.get(*i) else {
                    return Ok(None);
                };
                *i += 1;
                let at = at as usize;
                Ok(Some((runs.ids[at], runs.rowids[at])))
            }
        }
    }
}

/// Merges the runs of one index (files read from their start; the in-memory run sorted) in order of
/// the final ranks of `dict` (every part ranked), and hands each entry to `emit` as key bytes — its parts'
/// bytes, then the row id as `push_rowid` writes it — until `emit` returns false.
pub(crate) fn merge(runs: &IdRuns, dict: &Dict, mut emit: impl FnMut(&[u8]) -> bool) -> std::io::Result<()> {
    if !dict.ranked() {
        return Err(std::io::Error::other("sort run: parts not ranked"));
    }
    let parts = runs.parts;
    let check = |ids: [u32; 2]| {
        let ok = ids[..parts].iter().all(|&id| (id as usize) < dict.len());
        if ok { Ok(ids) } else { Err(malformed()) }
    };
    let mut sources: Vec<Source> = runs
        .files
        .iter()
        .map(|f| Source::File {
            r: BufReader::with_capacity(256 << 10, f),
            ids: [NONE; 2],
            rowid: 0,
        })
        .collect();
    sources.push(Source::Mem(0));
    type Head = Reverse<(u32, u32, i64, usize, [u32; 2])>;
    let head = |ids: [u32; 2], rowid: i64, src: usize| -> Head {
        Reverse((dict.rank_of(ids[0]), dict.rank_of(ids[1]), rowid, src, ids))
    };
    let mut heap: BinaryHeap<Head> = BinaryHeap::with_capacity(sources.len());
    for (src, s) in sources.iter_mut().enumerate() {
        if let Some((ids, rowid)) = s.next(runs, parts)? {
            heap.push(head(check(ids)?, rowid, src));
        }
    }
    let mut entry = Vec::with_capacity(256);
    let mut key_of = [NONE; 2];
    while let Some(Reverse((_, _, mut rowid, src, mut ids))) = heap.pop() {
        // Entries of one source follow one another while they sort before every other source's next
        // one (runs hold long groups of equal parts): one comparison with the heap's top each, instead
        // of a pop and a push.
        loop {
            if ids != key_of {
                entry.clear();
                for &id in &ids[..parts] {
                    entry.extend_from_slice(dict.get(id));
                }
                key_of = ids;
            } else {
                entry.truncate(entry.len() - 8);
            }
            push_rowid(&mut entry, rowid);
            if !emit(&entry) {
                return Ok(());
            }
            let Some((next_ids, next_rowid)) = sources[src].next(runs, parts)? else {
                break;
            };
            let next = head(check(next_ids)?, next_rowid, src);
            match heap.peek() {
                Some(top) if top > &next => {
                    heap.push(next);
                    break;
                }
                _ => (ids, rowid) = (next_ids, next_rowid),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries pushed with row ids in order or not, parts arriving over time (so that ranks shift
    /// between spills), several spilled runs and the in-memory one, come out of the merge exactly as a
    /// sort of their key bytes orders them.
    #[test]
    fn merged_runs_come_out_in_key_byte_order() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        for (parts, ascending) in [(1, true), (2, true), (2, false), (1, false)] {
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ parts as u64;
            let mut next = move |m: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % m
            };
            let mut d = Dict::default();
            let mut runs = IdRuns::new(parts);
            let mut want = Vec::new();
            for i in 0..5000i64 {
                // Sortable form: the bytes, then 0x00 0x00.
                let a = format!("ent-{}\0\0", next(i as u64 / 40 + 1)).into_bytes();
                let b = format!("user\0\0u{}\0\0", next(i as u64 / 25 + 2)).into_bytes();
                let ids = [
                    d.intern(&a).unwrap(),
                    if parts == 2 { d.intern(&b).unwrap() } else { NONE },
                ];
                let rowid = if ascending {
                    i * 3 - 7
                } else {
                    (i * 7919) % 10_007 - 5000
                };
                assert!(runs.push(ids, rowid));
                let mut e = a.clone();
                if parts == 2 {
                    e.extend_from_slice(&b);
                }
                push_rowid(&mut e, rowid);
                want.push(e);
                if i % 700 == 699 {
                    runs.spill(&mut d, dir.path()).unwrap();
                }
            }
            d.rank_all();
            runs.sort(&d);
            for f in &mut runs.files {
                f.seek(SeekFrom::Start(0)).unwrap();
            }
            let mut got = Vec::new();
            merge(&runs, &d, |e| {
                got.push(e.to_vec());
                true
            })
            .unwrap();
            want.sort();
            assert!(got == want, "{parts} parts, ascending {ascending}");
        }
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, 1, -1, 2, -2, i64::MAX, i64::MIN, 123_456_789] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn parts_are_numbered_once_and_ranked_in_byte_order() {
        let mut d = Dict::default();
        let words: [&[u8]; 5] = [b"m", b"b", b"zz", b"b", b""];
        let ids: Vec<u32> = words.iter().map(|w| d.intern(w).unwrap()).collect();
        assert_eq!(ids, [0, 1, 2, 1, 3]);
        d.rank_all();
        assert_eq!(d.rank, [2, 1, 3, 0]);
        // A later part lands between the ranked ones; the order of the earlier ones stays.
        let a = d.intern(b"c").unwrap();
        d.rank_all();
        assert_eq!((d.rank_of(1), d.rank_of(a), d.rank_of(0)), (1, 2, 3));
        assert_eq!(d.get(a), b"c");
    }
}
