//! Grant expansion: turns `GrantExpandable` annotations into the transitive grants they imply, in the
//! sync's own tables (the `baton` CLI never expands, so the writer must).
//!
//! A grant on entitlement D to principal P whose `expansion` lists entitlement S gives an edge S→D:
//! "whoever holds S also holds D". Edges are grouped into strongly connected components (cycles are
//! collapsed: every holder of one member entitlement ends up holding all of them), components are processed
//! in topological order, and a component deeper than `max_depth` levels of nesting is not expanded (the
//! count is reported). For each edge and each holder H of S (optionally only direct holders when
//! `shallow`, optionally only principals of `resource_type_ids`):
//! * H without a grant on D gets one: id `<D>:<htype>:<hid>`, an empty `GrantImmutable` annotation and
//!   `sources = {S: {is_direct: X}}`, X being whether H's grant on S is direct (no sources, or sources
//!   include S);
//! * H with a grant on D gets S added to its sources (after `D: {is_direct: true}` if they were empty), and
//!   an existing non-direct S is upgraded to direct.
//!
//! A principal is never given membership of itself (a group in a cycle with its own member groups).
//!
//! How it is done (set-based, not row by row): the grants of every entitlement that is an end of an edge
//! are read once (one pass over the table when many entitlements take part, else one index range each)
//! into memory as (entitlement, principal) → (row id, sources), with principals and entitlement names
//! interned; the edges are then applied in memory; finally the new grants are inserted in creation order
//! in key order (entitlement, principal) and the changed ones updated in row order. The writer usually
//! runs expansion before it builds the grant indexes, so the new grants are only appended to the table
//! (on a resumed sync, or one too large for its grant ids to be tracked, it builds them before). When
//! those indexes exist and the new grants are many (at least 20,000 and a quarter of the table), the
//! non-unique ones are dropped while the grants go in and built again afterwards (one sort each is
//! cheaper than that many random inserts into 64 KiB index pages) — by [`expand_grants`] with SQLite, or
//! by the writer, which writes their b-tree pages itself; without the entitlement index, holders are read in one pass over the table. Grants are not decoded on
//! the common path: the embedded principal and `sources` are located by scanning the top-level protobuf
//! fields, and a new grant's bytes are assembled from the target entitlement (encoded once), the principal
//! as embedded in the first of its grants read, the id, the `GrantImmutable` annotation and the sources —
//! byte-for-byte what encoding the `Grant` message gives (unusual encodings fall back to a full decode).
//! Memory: the grants of the entitlements taking part (row ids and sources), not the rest of the sync.
//! A principal's embedded bytes (≈ 1 KB for each of 100,000 users) are not kept in memory: as the holders
//! are read, the first copy of each goes to an unnamed temporary file next to the database (removed when
//! expansion ends), and is read back from there for each grant it gets. Held grants take 16 bytes each
//! and their sources live in one arena, so a large tenant's ~1.7 M grants cost ~60 MB, not ~250 MB.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use steward_model::pb::grant_sources::GrantSource;
use steward_model::{AnnotationsExt, Entitlement, Grant, GrantExpandable, GrantImmutable, GrantSources};

use crate::error::{C1zError, Result};
use crate::inserter::{GrantBatch, HANDOFF_ROWS, InsertSql, RowIds, insert_rows};
use crate::schema::BULK_INDEXES;

/// Baton's maximum expansion depth.
pub const DEFAULT_MAX_DEPTH: usize = 20;
/// From this many new grants on (and at least a quarter of the table), the non-unique grant indexes are
/// dropped while they are inserted and built again afterwards.
const REBUILD_MIN_ROWS: i64 = 20_000;
/// The grant index by entitlement (and principal).
const ENTITLEMENT_INDEX: &str = "idx_grants_entitlement_id_principal_id_v1";

/// What an expansion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpandStats {
    /// Distinct S→D edges.
    pub edges: u64,
    /// Cycles collapsed (components with more than one entitlement, or a self loop).
    pub cycles: u64,
    /// Grants created.
    pub grants_created: u64,
    /// Existing grants whose sources changed.
    pub grants_updated: u64,
    /// Edges not applied because their target was deeper than the limit.
    pub edges_over_depth: u64,
}

#[derive(Clone, Default)]
struct EdgeAttr {
    shallow: bool,
    resource_type_ids: BTreeSet<String>, // empty = every type
}

/// Expands the grants of `sync_id` in place. Needs the unique indexes of `v1_entitlements` and `v1_grants`;
/// the non-unique grant indexes are used when they exist (the writer builds them after expansion).
pub fn expand_grants(conn: &Connection, sync_id: &str, max_depth: usize) -> Result<ExpandStats> {
    expand(conn, sync_id, max_depth, true, None, None)
}

/// Told the row ids (ascending) of the grants expansion is about to read one by one, so that their
/// pages can be read ahead (the writer's grant table pages written directly are not in the page cache).
pub(crate) type Prefetch<'a> = &'a dyn Fn(&[i64]);

/// Told the row ids (ascending) of the existing grants expansion is about to rewrite (their `sources`).
pub(crate) type Rewrites<'a> = &'a dyn Fn(&[i64]);

/// [`expand_grants`]; without `rebuild`, the non-unique grant indexes it drops for many new grants are
/// left for the caller to build (the writer writes them as b-tree pages).
pub(crate) fn expand(
    conn: &Connection,
    sync_id: &str,
    max_depth: usize,
    rebuild: bool,
    prefetch: Option<Prefetch<'_>>,
    rewrites: Option<Rewrites<'_>>,
) -> Result<ExpandStats> {
    let edges = load_edges(conn, sync_id)?;
    if edges.is_empty() {
        return Ok(ExpandStats::default());
    }

    // Node numbering (sorted, so that runs are deterministic).
    let names: Vec<&String> = edges
        .keys()
        .flat_map(|(s, d)| [s, d])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: HashMap<&String, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut adj = vec![Vec::new(); names.len()];
    for (s, d) in edges.keys() {
        adj[index[s]].push(index[d]);
    }
    let comp = tarjan(&adj);
    let mut x = Expander::new(conn, sync_id, &names)?;
    x.rebuild = rebuild;
    x.prefetch = prefetch;
    x.rewrites = rewrites;
    x.stats.edges = edges.len() as u64;
    let t = std::time::Instant::now();
    x.load()?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        "c1z expansion: holders loaded"
    );
    let t = std::time::Instant::now();
    let ncomp = comp.iter().copied().max().map_or(0, |m| m + 1);

    // Condensed DAG, depth = longest path from a root.
    let mut indeg = vec![0usize; ncomp];
    let mut cadj: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); ncomp];
    let mut self_loop = vec![false; ncomp];
    let mut members = vec![0usize; ncomp];
    for &c in &comp {
        members[c] += 1;
    }
    for (u, outs) in adj.iter().enumerate() {
        for &v in outs {
            if comp[u] == comp[v] {
                self_loop[comp[u]] = true;
            } else if cadj[comp[u]].insert(comp[v]) {
                indeg[comp[v]] += 1;
            }
        }
    }
    x.stats.cycles = (0..ncomp).filter(|&c| members[c] > 1 || self_loop[c]).count() as u64;
    let mut depth = vec![0usize; ncomp];
    let mut order = Vec::with_capacity(ncomp);
    let mut ready: Vec<usize> = (0..ncomp).filter(|&c| indeg[c] == 0).collect();
    while let Some(c) = ready.pop() {
        order.push(c);
        for &n in &cadj[c] {
            depth[n] = depth[n].max(depth[c] + 1);
            indeg[n] -= 1;
            if indeg[n] == 0 {
                ready.push(n);
            }
        }
    }
    order.sort_by_key(|&c| depth[c]); // a valid topological order (depths strictly increase along edges)

    // Edges grouped by target component: incoming cross edges first, then the cycle's inner edges.
    let mut incoming: Vec<Vec<(u32, u32, &EdgeAttr)>> = vec![Vec::new(); ncomp];
    let mut inner: Vec<Vec<(u32, u32, &EdgeAttr)>> = vec![Vec::new(); ncomp];
    for ((s, d), a) in &edges {
        let (is, id) = (index[s], index[d]);
        let (cs, cd) = (comp[is], comp[id]);
        if cs == cd {
            inner[cd].push((is as u32, id as u32, a))
        } else {
            incoming[cd].push((is as u32, id as u32, a))
        }
    }
    for c in order {
        if depth[c] > max_depth {
            x.stats.edges_over_depth += (incoming[c].len() + inner[c].len()) as u64;
            continue;
        }
        for &(s, d, a) in &incoming[c] {
            x.apply_edge(s, d, a)?;
        }
        // Inside a cycle, repeat until nothing changes: everyone ends up holding every member.
        for _ in 0..=members[c] {
            let mut changed = false;
            for &(s, d, a) in &inner[c] {
                changed |= x.apply_edge(s, d, a)?;
            }
            if !changed {
                break;
            }
        }
    }
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        "c1z expansion: edges applied"
    );
    x.write()?;
    if x.stats.edges_over_depth > 0 {
        tracing::warn!(
            sync_id,
            edges = x.stats.edges_over_depth,
            max_depth,
            "grant expansion stopped at the depth limit"
        );
    }
    Ok(x.stats)
}

fn load_edges(conn: &Connection, sync_id: &str) -> Result<BTreeMap<(String, String), EdgeAttr>> {
    let mut edges: BTreeMap<(String, String), EdgeAttr> = BTreeMap::new();
    let mut st = conn.prepare(
        "SELECT entitlement_id, expansion, external_id FROM v1_grants
         WHERE sync_id = ?1 AND needs_expansion = 1 AND expansion IS NOT NULL",
    )?;
    let mut rows = st.query([sync_id])?;
    while let Some(r) = rows.next()? {
        let dst: String = r.get(0)?;
        let bytes: Vec<u8> = r.get(1)?;
        let ge = GrantExpandable::decode(bytes.as_slice()).map_err(|source| C1zError::Decode {
            table: "v1_grants.expansion",
            external_id: r.get(2).unwrap_or_default(),
            source,
        })?;
        for src in ge
            .entitlement_ids
            .iter()
            .filter(|s| !s.trim().is_empty() && **s != dst)
        {
            let new = EdgeAttr {
                shallow: ge.shallow,
                resource_type_ids: ge.resource_type_ids.iter().cloned().collect(),
            };
            edges
                .entry((src.clone(), dst.clone()))
                .and_modify(|e| {
                    // Two grants asking for the same edge: the less restrictive wins.
                    e.shallow &= new.shallow;
                    if e.resource_type_ids.is_empty() || new.resource_type_ids.is_empty() {
                        e.resource_type_ids.clear();
                    } else {
                        e.resource_type_ids.extend(new.resource_type_ids.iter().cloned());
                    }
                })
                .or_insert_with(|| new.clone());
        }
    }
    Ok(edges)
}

/// Tarjan's strongly connected components, iterative. Returns each node's component number.
fn tarjan(adj: &[Vec<usize>]) -> Vec<usize> {
    const UNSEEN: usize = usize::MAX;
    let n = adj.len();
    let (mut idx, mut low, mut comp) = (vec![UNSEEN; n], vec![0; n], vec![UNSEEN; n]);
    let (mut on_stack, mut stack) = (vec![false; n], Vec::new());
    let (mut next, mut ncomp) = (0, 0);
    for root in 0..n {
        if idx[root] != UNSEEN {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        idx[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if *i < adj[v].len() {
                let w = adj[v][*i];
                *i += 1;
                if idx[w] == UNSEEN {
                    idx[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(idx[w]);
                }
            } else {
                call.pop();
                if let Some(&(p, _)) = call.last() {
                    low[p] = low[p].min(low[v]);
                }
                if low[v] == idx[v] {
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp[w] = ncomp;
                        if w == v {
                            break;
                        }
                    }
                    ncomp += 1;
                }
            }
        }
    }
    comp
}

// ---- protobuf plumbing on encoded grants -------------------------------------------------------------

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-delimited field.
fn put_len_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Where the fields expansion needs sit in an encoded `Grant`.
#[derive(Default)]
struct GrantParts<'a> {
    /// Field 2 (the embedded principal), without its key and length.
    principal: Option<&'a [u8]>,
    /// Field 5 (`sources`), without its key and length.
    sources: Option<&'a [u8]>,
    /// Offset where field 5 starts (its key); the length of the bytes when absent.
    sources_at: usize,
}

/// Scans the top-level fields of an encoded `Grant`. `None` when the bytes are not in the canonical shape
/// this module relies on (a field 2 or 5 that repeats, field 5 not last, malformed bytes): the caller then
/// falls back to a full decode.
fn scan_grant(b: &[u8]) -> Option<GrantParts<'_>> {
    let mut parts = GrantParts {
        sources_at: b.len(),
        ..Default::default()
    };
    let mut pos = 0;
    while pos < b.len() {
        let start = pos;
        let key = read_varint(b, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        if parts.sources.is_some() {
            return None; // something after field 5
        }
        match wire {
            0 => {
                read_varint(b, &mut pos)?;
            }
            1 => pos = pos.checked_add(8)?,
            5 => pos = pos.checked_add(4)?,
            2 => {
                let len = usize::try_from(read_varint(b, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                let body = b.get(pos..end)?;
                match field {
                    2 if parts.principal.is_some() => return None,
                    2 => parts.principal = Some(body),
                    5 => {
                        parts.sources = Some(body);
                        parts.sources_at = start;
                    }
                    _ => {}
                }
                pos = end;
            }
            _ => return None,
        }
    }
    (pos == b.len()).then_some(parts)
}

fn decode_grant(bytes: &[u8], id: &str) -> Result<Grant> {
    Grant::decode(bytes).map_err(|source| C1zError::Decode {
        table: "v1_grants",
        external_id: id.to_owned(),
        source,
    })
}

fn decode_sources(bytes: &[u8], id: &str) -> Result<GrantSources> {
    GrantSources::decode(bytes).map_err(|source| C1zError::Decode {
        table: "v1_grants",
        external_id: id.to_owned(),
        source,
    })
}

/// A target entitlement, encoded once.
struct Target {
    /// `Entitlement` bytes.
    bytes: Vec<u8>,
    resource_type: String,
    resource: String,
}

/// A principal seen in a grant of an entitlement that takes part in expansion.
struct Principal {
    ptype: String,
    pid: String,
    /// Where [`Spill`] keeps the `principal` message as embedded in its first grant read (copied into
    /// derived grants); `None` when no grant read embeds one.
    bytes: Option<(u64, u32)>,
}

/// An unnamed temporary file holding the principals' embedded bytes while expanding.
struct Spill {
    path: std::path::PathBuf,
    out: Option<std::io::BufWriter<std::fs::File>>,
    file: Option<std::fs::File>,
    len: u64,
}

impl Spill {
    /// A new file in `dir` (the database's directory), else in the system's temporary directory.
    fn new(dir: Option<&std::path::Path>) -> Result<Self> {
        let path = dir.map_or_else(std::env::temp_dir, std::path::Path::to_path_buf);
        let file = tempfile::tempfile_in(&path).map_err(C1zError::io("create a temporary file in", &path))?;
        Ok(Self {
            out: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            file: None,
            path,
            len: 0,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(u64, u32)> {
        use std::io::Write;
        let out = self
            .out
            .as_mut()
            .ok_or(C1zError::State("expansion spill written after reading"))?;
        out.write_all(bytes)
            .map_err(C1zError::io("write a temporary file in", &self.path))?;
        let at = (self.len, bytes.len() as u32);
        self.len += bytes.len() as u64;
        Ok(at)
    }

    fn get(&mut self, (at, len): (u64, u32), buf: &mut Vec<u8>) -> Result<()> {
        use std::io::{Read, Seek};
        if let Some(out) = self.out.take() {
            self.file = Some(
                out.into_inner()
                    .map_err(|e| C1zError::io("write a temporary file in", &self.path)(e.into_error()))?,
            );
        }
        let file = self
            .file
            .as_mut()
            .ok_or(C1zError::State("expansion spill lost"))?;
        buf.resize(len as usize, 0);
        file.seek(std::io::SeekFrom::Start(at))
            .and_then(|_| file.read_exact(buf))
            .map_err(C1zError::io("read a temporary file in", &self.path))
    }
}

/// One principal's grant on one entitlement, in memory while expanding (16 bytes: a large tenant has
/// ~1.7 million of them).
struct Held {
    /// Its row id; 0 for a grant expansion creates.
    row: i64,
    /// The head of its sources' list in [`SourceLists`]; [`NIL`] = no sources.
    sources: u32,
    /// Whether the row must be written.
    dirty: bool,
}

/// The end of a list in [`SourceLists`].
const NIL: u32 = u32::MAX;

/// One entry of a grant's sources: (entitlement name id, is_direct) and the next entry.
struct SourceNode {
    name: u32,
    direct: bool,
    next: u32,
}

/// The sources of every grant in memory, as singly linked lists in one arena (12 bytes an entry) rather
/// than a `Vec` per grant. Entry order does not matter: `GrantSources` encodes its map sorted.
#[derive(Default)]
struct SourceLists {
    nodes: Vec<SourceNode>,
}

impl SourceLists {
    fn iter(&self, mut head: u32) -> impl Iterator<Item = (u32, bool)> + '_ {
        std::iter::from_fn(move || {
            let n = self.nodes.get(head as usize)?;
            head = n.next;
            Some((n.name, n.direct))
        })
    }

    fn push(&mut self, head: &mut u32, name: u32, direct: bool) {
        let at = self.nodes.len() as u32;
        self.nodes.push(SourceNode {
            name,
            direct,
            next: *head,
        });
        *head = at;
    }

    /// Adds `s` to the sources of a grant on `d` (after `d: direct` when they were empty) and upgrades a
    /// non-direct `s`. Returns whether anything changed.
    fn add(&mut self, head: &mut u32, d: u32, s: u32, direct: bool) -> bool {
        let mut dirty = false;
        if *head == NIL {
            self.push(head, d, true);
            dirty = true;
        }
        let mut at = *head;
        while let Some(n) = self.nodes.get_mut(at as usize) {
            if n.name == s {
                if direct && !n.direct {
                    n.direct = true;
                    return true;
                }
                return dirty;
            }
            at = n.next;
        }
        self.push(head, s, direct);
        true
    }
}

/// The expansion state: every grant of the entitlements that take part, keyed by interned ids.
struct Expander<'c> {
    conn: &'c Connection,
    sync_id: &'c str,
    /// Entitlement names; ids `0..nodes` are the graph's nodes, later ones only appear in sources.
    names: Vec<String>,
    name_ids: HashMap<String, u32>,
    principals: Vec<Principal>,
    principal_ids: HashMap<(String, String), u32>,
    /// Per node: its holders, principal id → index in `slots` (a small map value: map nodes are at most
    /// half full when keys arrive in order).
    held: Vec<BTreeMap<u32, u32>>,
    slots: Vec<Held>,
    sources: SourceLists,
    spill: Spill,
    /// Grants created, in creation order: (node, principal).
    created: Vec<(u32, u32)>,
    targets: HashMap<u32, Option<Rc<Target>>>,
    stats: ExpandStats,
    /// Build the indexes dropped for many new grants again at the end.
    rebuild: bool,
    prefetch: Option<Prefetch<'c>>,
    rewrites: Option<Rewrites<'c>>,
}

impl<'c> Expander<'c> {
    fn new(conn: &'c Connection, sync_id: &'c str, nodes: &[&String]) -> Result<Self> {
        let names: Vec<String> = nodes.iter().map(|n| (*n).clone()).collect();
        let name_ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Ok(Self {
            conn,
            sync_id,
            held: (0..names.len()).map(|_| BTreeMap::new()).collect(),
            slots: Vec::new(),
            sources: SourceLists::default(),
            spill: Spill::new(
                conn.path()
                    .filter(|p| !p.is_empty())
                    .and_then(|p| std::path::Path::new(p).parent()),
            )?,
            names,
            name_ids,
            principals: Vec::new(),
            principal_ids: HashMap::new(),
            created: Vec::new(),
            targets: HashMap::new(),
            stats: ExpandStats::default(),
            rebuild: true,
            prefetch: None,
            rewrites: None,
        })
    }

    fn name_id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.name_ids.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.name_ids.insert(name.to_owned(), i);
        i
    }

    /// Reads every grant of the sync whose entitlement is a node: one pass over the table when many
    /// entitlements take part, else one index range per entitlement.
    fn load(&mut self) -> Result<()> {
        const COLS: &str = "SELECT id, entitlement_id, principal_resource_type_id, principal_resource_id, external_id, data FROM v1_grants";
        let nodes = self.held.len();
        // Without the entitlement index (the writer builds it after expansion) a range per entitlement
        // would be a scan each.
        let indexed = self
            .conn
            .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1")?
            .exists([ENTITLEMENT_INDEX])?;
        if nodes > 256 || !indexed {
            let mut st = self.conn.prepare(&format!("{COLS} WHERE sync_id = ?1"))?;
            let mut rows = st.query([self.sync_id])?;
            while let Some(r) = rows.next()? {
                let Ok(ent) = r.get_ref(1)?.as_str() else { continue };
                let Some(&node) = self.name_ids.get(ent) else {
                    continue;
                };
                if (node as usize) < nodes {
                    self.add_row(node, r)?;
                }
            }
        } else {
            // The row ids of every node's grants from the index alone (it holds the row id), then the
            // rows in row-id order: grants of different entitlements that share a table page (a
            // connector listing grants per principal puts each user's grants side by side) are read
            // with one page read instead of one per entitlement.
            let mut ids: Vec<(i64, u32)> = Vec::new();
            let mut st = self.conn.prepare(&format!(
                "SELECT id FROM v1_grants INDEXED BY {ENTITLEMENT_INDEX} WHERE entitlement_id = ?1"
            ))?;
            for node in 0..nodes as u32 {
                let mut rows = st.query([&self.names[node as usize]])?;
                while let Some(r) = rows.next()? {
                    ids.push((r.get(0)?, node));
                }
            }
            ids.sort_unstable();
            if let Some(p) = self.prefetch {
                let rows: Vec<i64> = ids.iter().map(|&(id, _)| id).collect();
                p(&rows);
            }
            let mut st = self
                .conn
                .prepare(&format!("{COLS} WHERE id = ?1 AND sync_id = ?2"))?;
            for (id, node) in ids {
                let mut rows = st.query(params![id, self.sync_id])?;
                if let Some(r) = rows.next()? {
                    self.add_row(node, r)?;
                }
            }
        }
        Ok(())
    }

    fn add_row(&mut self, node: u32, r: &rusqlite::Row<'_>) -> Result<()> {
        let row: i64 = r.get(0)?;
        let ptype = r.get_ref(2)?.as_str().unwrap_or_default();
        let pid = r.get_ref(3)?.as_str().unwrap_or_default();
        let data = r.get_ref(5)?.as_blob().unwrap_or_default();
        let key = (ptype.to_owned(), pid.to_owned());
        let p = match self.principal_ids.get(&key) {
            Some(&p) => p,
            None => {
                let p = self.principals.len() as u32;
                self.principals.push(Principal {
                    ptype: key.0.clone(),
                    pid: key.1.clone(),
                    bytes: None,
                });
                self.principal_ids.insert(key, p);
                p
            }
        };
        let known = self.principals[p as usize].bytes.is_some();
        let (principal, sources) = match scan_grant(data) {
            Some(parts) => {
                let srcs = match parts.sources {
                    Some(b) => Some(decode_sources(b, &r.get::<_, String>(4)?)?),
                    None => None,
                };
                (
                    parts.principal.filter(|_| !known).map(std::borrow::Cow::Borrowed),
                    srcs,
                )
            }
            None => {
                let g = decode_grant(data, &r.get::<_, String>(4)?)?;
                let pb = g.principal.filter(|_| !known).map(|x| x.encode_to_vec().into());
                (pb, g.sources)
            }
        };
        if let Some(b) = principal {
            self.principals[p as usize].bytes = Some(self.spill.put(&b)?);
        }
        // Duplicate principals on one entitlement (different grant ids): the first row stands for both.
        if self.held[node as usize].contains_key(&p) {
            return Ok(());
        }
        let mut head = NIL;
        for (k, v) in sources.map(|x| x.sources).unwrap_or_default() {
            let name = self.name_id(&k);
            self.sources.push(&mut head, name, v.is_direct);
        }
        self.held[node as usize].insert(p, self.slots.len() as u32);
        self.slots.push(Held {
            row,
            sources: head,
            dirty: false,
        });
        Ok(())
    }

    /// The entitlement `node` from `v1_entitlements`, else as embedded in one of its grants.
    fn target(&mut self, node: u32) -> Result<Option<Rc<Target>>> {
        if let Some(t) = self.targets.get(&node) {
            return Ok(t.clone());
        }
        let id = &self.names[node as usize];
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM v1_entitlements WHERE sync_id = ?1 AND external_id = ?2")?
            .query_row(params![self.sync_id, id], |r| r.get(0))
            .optional()?;
        let ent = match bytes {
            Some(b) => Some(
                Entitlement::decode(b.as_slice()).map_err(|source| C1zError::Decode {
                    table: "v1_entitlements",
                    external_id: id.clone(),
                    source,
                })?,
            ),
            None => {
                let g: Option<Vec<u8>> = self
                    .conn
                    .prepare_cached(
                        "SELECT data FROM v1_grants WHERE entitlement_id = ?2 AND sync_id = ?1 LIMIT 1",
                    )?
                    .query_row(params![self.sync_id, id], |r| r.get(0))
                    .optional()?;
                g.and_then(|b| Grant::decode(b.as_slice()).ok())
                    .and_then(|g| g.entitlement)
            }
        };
        let t = ent.map(|e| {
            let rid = e.resource.as_ref().and_then(|r| r.id.clone()).unwrap_or_default();
            Rc::new(Target {
                bytes: e.encode_to_vec(),
                resource_type: rid.resource_type,
                resource: rid.resource,
            })
        });
        self.targets.insert(node, t.clone());
        Ok(t)
    }

    /// Applies S→D to every holder of S, in memory. Returns whether any grant was created or changed.
    fn apply_edge(&mut self, s: u32, d: u32, attr: &EdgeAttr) -> Result<bool> {
        let Some(dst) = self.target(d)? else {
            return Ok(false);
        };
        let holders: Vec<(u32, bool)> = self.held[s as usize]
            .iter()
            .filter_map(|(&p, &slot)| {
                let h = &self.slots[slot as usize];
                let pr = &self.principals[p as usize];
                if !attr.resource_type_ids.is_empty() && !attr.resource_type_ids.contains(&pr.ptype) {
                    return None;
                }
                if pr.ptype == dst.resource_type && pr.pid == dst.resource {
                    return None;
                }
                let direct = h.sources == NIL || self.sources.iter(h.sources).any(|(k, _)| k == s);
                (!attr.shallow || direct).then_some((p, direct))
            })
            .collect();
        let mut changed = false;
        let dmap = &mut self.held[d as usize];
        for (p, direct) in holders {
            match dmap.entry(p) {
                std::collections::btree_map::Entry::Occupied(e) => {
                    let h = &mut self.slots[*e.get() as usize];
                    if self.sources.add(&mut h.sources, d, s, direct) {
                        if !h.dirty && h.row != 0 {
                            self.stats.grants_updated += 1;
                        }
                        h.dirty = true;
                        changed = true;
                    }
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut head = NIL;
                    self.sources.push(&mut head, s, direct);
                    e.insert(self.slots.len() as u32);
                    self.slots.push(Held {
                        row: 0,
                        sources: head,
                        dirty: true,
                    });
                    self.created.push((d, p));
                    self.stats.grants_created += 1;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    fn sources_msg(&self, head: u32) -> GrantSources {
        GrantSources {
            sources: self
                .sources
                .iter(head)
                .map(|(k, v)| (self.names[k as usize].clone(), GrantSource { is_direct: v }))
                .collect(),
        }
    }

    /// Writes the created grants (in key order) and the changed ones (in row order).
    fn write(&mut self) -> Result<()> {
        let discovered_at: String = self
            .conn
            .query_row(
                "SELECT started_at FROM v1_sync_runs WHERE sync_id = ?1",
                [self.sync_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| C1zError::NoSync(format!("sync {} is not in the file", self.sync_id)))?;
        let mut tmpl = Grant::default();
        tmpl.annotations.push_msg(&GrantImmutable::default());
        let immutable = tmpl.encode_to_vec();
        // Many new rows: inserting them into the non-unique grant indexes one by one costs more (random
        // inserts into large pages) than building those indexes again with one sort each.
        let rows: i64 = self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM v1_grants", [], |r| r.get(0))?;
        let n = self.created.len() as i64;
        let mut dropped = Vec::new();
        if n >= REBUILD_MIN_ROWS && n * 4 >= rows {
            for idx in BULK_INDEXES
                .iter()
                .filter(|i| i.table == "v1_grants" && !i.unique)
            {
                let exists = self
                    .conn
                    .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1")?
                    .exists([idx.name])?;
                if exists {
                    self.conn.execute_batch(&format!("DROP INDEX {}", idx.name))?;
                    dropped.push(idx);
                }
            }
        }
        // Key order (entitlement, principal type, principal id): the grant id, entitlement and resource
        // indexes then receive the new rows in order instead of at random places.
        let mut created = std::mem::take(&mut self.created);
        created.sort_by(|&(d1, p1), &(d2, p2)| {
            let (a, b) = (&self.principals[p1 as usize], &self.principals[p2 as usize]);
            (&self.names[d1 as usize], &a.ptype, &a.pid).cmp(&(&self.names[d2 as usize], &b.ptype, &b.pid))
        });
        let t = std::time::Instant::now();
        let mut pbytes = Vec::new();
        let mut buf = Vec::with_capacity(4096);
        // Multi-row inserts from one buffer, as the writer's own (row ids are not needed here).
        let sql = InsertSql::new();
        let mut batch = GrantBatch::default();
        let mut ids = RowIds {
            next: rows.saturating_add(1),
            gather: None,
        };
        for &(d, p) in &created {
            let (Some(Some(dst)), Some(&slot)) = (self.targets.get(&d), self.held[d as usize].get(&p)) else {
                continue;
            };
            let h = &self.slots[slot as usize];
            let pr = &self.principals[p as usize];
            if let Some(at) = pr.bytes {
                self.spill.get(at, &mut pbytes)?;
            }
            let dname = &self.names[d as usize];
            let gid = steward_model::ids::grant_id(dname, &pr.ptype, &pr.pid);
            buf.clear();
            put_len_field(&mut buf, 1, &dst.bytes);
            if pr.bytes.is_some() {
                put_len_field(&mut buf, 2, &pbytes);
            }
            put_len_field(&mut buf, 3, gid.as_bytes());
            buf.extend_from_slice(&immutable);
            put_len_field(&mut buf, 5, &self.sources_msg(h.sources).encode_to_vec());
            batch.push(
                [
                    dst.resource_type.as_bytes(),
                    dst.resource.as_bytes(),
                    dname.as_bytes(),
                    pr.ptype.as_bytes(),
                    pr.pid.as_bytes(),
                    gid.as_bytes(),
                ],
                None,
                false,
                &buf,
            );
            if batch.rows.len() >= HANDOFF_ROWS {
                insert_rows(self.conn, &sql, &batch, self.sync_id, &discovered_at, &mut ids)?;
                batch.clear();
            }
        }
        insert_rows(self.conn, &sql, &batch, self.sync_id, &discovered_at, &mut ids)?;
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            rows = created.len(),
            "c1z expansion: grants inserted"
        );
        let t = std::time::Instant::now();
        let mut changed: Vec<(i64, GrantSources)> = self
            .slots
            .iter()
            .filter(|h| h.dirty && h.row != 0)
            .map(|h| (h.row, self.sources_msg(h.sources)))
            .collect();
        changed.sort_by_key(|c| c.0);
        if let Some(r) = self.rewrites {
            let rows: Vec<i64> = changed.iter().map(|c| c.0).collect();
            r(&rows);
        }
        let mut get = self
            .conn
            .prepare_cached("SELECT external_id, data FROM v1_grants WHERE id = ?1")?;
        let mut upd = self
            .conn
            .prepare_cached("UPDATE v1_grants SET data = ?1 WHERE id = ?2")?;
        // Tests: stop after the first `k` rewrites, as an error would.
        #[cfg(test)]
        let injected = FAIL_AFTER.with(|f| f.get()).filter(|&k| k < changed.len());
        #[cfg(test)]
        if let Some(k) = injected {
            changed.truncate(k);
        }
        for (row, srcs) in changed {
            let (eid, data): (String, Vec<u8>) = get.query_row([row], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let new = replace_sources(&data, &eid, srcs)?;
            upd.execute(params![new, row])?;
        }
        #[cfg(test)]
        if injected.is_some() {
            return Err(C1zError::State("a failure injected by a test"));
        }
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "c1z expansion: grants updated"
        );
        let t = std::time::Instant::now();
        for idx in dropped.into_iter().filter(|_| self.rebuild) {
            self.conn.execute_batch(idx.ddl)?;
        }
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "c1z expansion: dropped indexes rebuilt"
        );
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: expansion fails after rewriting this many grants.
    pub(crate) static FAIL_AFTER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// `bytes` (an encoded grant) with its sources replaced by `srcs`.
fn replace_sources(bytes: &[u8], id: &str, srcs: GrantSources) -> Result<Vec<u8>> {
    if let Some(parts) = scan_grant(bytes) {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        out.extend_from_slice(&bytes[..parts.sources_at]);
        put_len_field(&mut out, 5, &srcs.encode_to_vec());
        return Ok(out);
    }
    let mut g = decode_grant(bytes, id)?;
    g.sources = Some(srcs);
    Ok(g.encode_to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use steward_model::builders::{self, ResourceBuilder};
    use steward_model::pb::entitlement::PurposeValue;

    #[test]
    fn tarjan_finds_cycles() {
        // 0→1→2→0, 2→3, 3→3, 4 alone
        let adj = vec![vec![1], vec![2], vec![0, 3], vec![3], vec![]];
        let c = tarjan(&adj);
        assert_eq!(c[0], c[1]);
        assert_eq!(c[1], c[2]);
        assert_ne!(c[2], c[3]);
        assert_ne!(c[3], c[4]);
    }

    fn sample() -> (Entitlement, Grant) {
        let g = ResourceBuilder::new("group", "g1", "G1").group().build();
        let u = ResourceBuilder::new("user", "u1", "U1").build();
        let e = builders::entitlement(&g, "member", "Member", PurposeValue::Assignment, &[]);
        let grant = builders::grant(&e, &u);
        (e, grant)
    }

    #[test]
    fn assembled_grant_equals_encoded_message() {
        let (e, holder) = sample();
        let hb = holder.encode_to_vec();
        let parts = scan_grant(&hb).unwrap();
        let mut expect = Grant {
            entitlement: Some(e.clone()),
            principal: holder.principal.clone(),
            id: "x:user:u1".into(),
            annotations: Vec::new(),
            sources: Some(GrantSources {
                sources: [("s".to_owned(), GrantSource { is_direct: false })].into(),
            }),
        };
        expect.annotations.push_msg(&GrantImmutable::default());
        let mut tmpl = Grant::default();
        tmpl.annotations.push_msg(&GrantImmutable::default());
        let mut got = Vec::new();
        put_len_field(&mut got, 1, &e.encode_to_vec());
        put_len_field(&mut got, 2, parts.principal.unwrap());
        put_len_field(&mut got, 3, b"x:user:u1");
        got.extend_from_slice(&tmpl.encode_to_vec());
        let srcs = expect.sources.clone().unwrap();
        put_len_field(&mut got, 5, &srcs.encode_to_vec());
        assert_eq!(got, expect.encode_to_vec());
    }

    #[test]
    fn sources_are_added_and_replaced_like_a_full_decode() {
        // No sources: D first, then S; the same again changes nothing; an upgrade to direct does.
        let (mut lists, mut head) = (SourceLists::default(), NIL);
        let sorted = |l: &SourceLists, h| {
            let mut v: Vec<(u32, bool)> = l.iter(h).collect();
            v.sort();
            v
        };
        assert!(lists.add(&mut head, 7, 3, false));
        assert_eq!(sorted(&lists, head), [(3, false), (7, true)]);
        assert!(!lists.add(&mut head, 7, 3, false));
        assert!(lists.add(&mut head, 7, 3, true));
        assert_eq!(sorted(&lists, head), [(3, true), (7, true)]);
        assert!(
            !lists.add(&mut head, 7, 7, false),
            "D is already there, as direct"
        );
        assert!(lists.add(&mut head, 7, 9, false));
        assert_eq!(sorted(&lists, head), [(3, true), (7, true), (9, false)]);

        let (_, mut g) = sample();
        let new = GrantSources {
            sources: [
                ("D".to_owned(), GrantSource { is_direct: true }),
                ("S".to_owned(), GrantSource { is_direct: false }),
            ]
            .into(),
        };
        let b = replace_sources(&g.encode_to_vec(), "id", new.clone()).unwrap();
        g.sources = Some(new.clone());
        assert_eq!(b, g.encode_to_vec(), "spliced bytes equal the encoded message");
        // Replacing existing sources again gives the same bytes.
        assert_eq!(replace_sources(&b, "id", new.clone()).unwrap(), b);
        // A non-canonical encoding (field 5 before field 3) takes the decode path.
        let mut odd = Vec::new();
        put_len_field(&mut odd, 5, &GrantSources::default().encode_to_vec());
        odd.extend_from_slice(&sample().1.encode_to_vec());
        assert!(scan_grant(&odd).is_none());
        assert_eq!(replace_sources(&odd, "id", new).unwrap(), b);
    }
}
