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
//! How it stays fast: an edge is applied a page of holders at a time (holders are read in principal order
//! from the `(entitlement_id, principal)` index), and the grants of D for the same principal range are
//! read with one range scan and merged against them, instead of one lookup per holder. Nothing is fully
//! decoded on the common path: a holder's embedded principal and its `sources` are located by scanning
//! the top-level protobuf fields, and a new grant's bytes are assembled from parts encoded once per edge
//! (the target entitlement, the `GrantImmutable` annotation, the two possible `sources` values) plus the
//! holder's principal bytes. The result is byte-for-byte what encoding the `Grant` message would give.
//! Memory: edges, entitlement ids and one page of holders and of existing grants.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use steward_model::pb::grant_sources::GrantSource;
use steward_model::{AnnotationsExt, Entitlement, Grant, GrantExpandable, GrantImmutable, GrantSources};

use crate::error::{C1zError, Result};

/// Baton's maximum expansion depth.
pub const DEFAULT_MAX_DEPTH: usize = 20;
/// Holders read per page.
const PAGE: i64 = 8192;

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

/// Expands the grants of `sync_id` in place. Needs the grant indexes to exist.
pub fn expand_grants(conn: &Connection, sync_id: &str, max_depth: usize) -> Result<ExpandStats> {
    let edges = load_edges(conn, sync_id)?;
    if edges.is_empty() {
        return Ok(ExpandStats::default());
    }
    let mut x = Expander::new(conn, sync_id)?;
    x.stats.edges = edges.len() as u64;

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
    let mut incoming: Vec<Vec<(&String, &String, &EdgeAttr)>> = vec![Vec::new(); ncomp];
    let mut inner: Vec<Vec<(&String, &String, &EdgeAttr)>> = vec![Vec::new(); ncomp];
    for ((s, d), a) in &edges {
        let (cs, cd) = (comp[index[s]], comp[index[d]]);
        if cs == cd {
            inner[cd].push((s, d, a))
        } else {
            incoming[cd].push((s, d, a))
        }
    }
    for c in order {
        if depth[c] > max_depth {
            x.stats.edges_over_depth += (incoming[c].len() + inner[c].len()) as u64;
            continue;
        }
        for (s, d, a) in &incoming[c] {
            x.apply_edge(s, d, a)?;
        }
        // Inside a cycle, repeat until nothing changes: everyone ends up holding every member.
        for _ in 0..=members[c] {
            let mut changed = false;
            for (s, d, a) in &inner[c] {
                changed |= x.apply_edge(s, d, a)?;
            }
            if !changed {
                break;
            }
        }
    }
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

/// Whether a grant with these sources holds entitlement `s` directly: no sources, or `s` among them.
fn is_direct(sources: Option<&GrantSources>, s: &str) -> bool {
    sources.is_none_or(|x| x.sources.is_empty() || x.sources.contains_key(s))
}

/// Adds `s` to the sources of a grant on `d` (after `d: direct` when they were empty) and upgrades a
/// non-direct `s`. Returns whether anything changed.
fn add_source(srcs: &mut GrantSources, d: &str, s: &str, direct: bool) -> bool {
    let srcs = &mut srcs.sources;
    let mut dirty = false;
    if srcs.is_empty() {
        srcs.insert(d.to_owned(), GrantSource { is_direct: true });
        dirty = true;
    }
    match srcs.get_mut(s) {
        None => {
            srcs.insert(s.to_owned(), GrantSource { is_direct: direct });
            dirty = true;
        }
        Some(src) if direct && !src.is_direct => {
            src.is_direct = true;
            dirty = true;
        }
        Some(_) => {}
    }
    dirty
}

/// The new bytes of grant `bytes` (id `id`, on `d`) with `s` added to its sources, or `None` when they
/// already say so.
fn with_source(bytes: &[u8], id: &str, d: &str, s: &str, direct: bool) -> Result<Option<Vec<u8>>> {
    if let Some(parts) = scan_grant(bytes) {
        let mut srcs = match parts.sources {
            Some(b) => decode_sources(b, id)?,
            None => GrantSources::default(),
        };
        if !add_source(&mut srcs, d, s, direct) {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(bytes.len() + 64);
        out.extend_from_slice(&bytes[..parts.sources_at]);
        put_len_field(&mut out, 5, &srcs.encode_to_vec());
        return Ok(Some(out));
    }
    let mut g = decode_grant(bytes, id)?;
    if !add_source(g.sources.get_or_insert_with(GrantSources::default), d, s, direct) {
        return Ok(None);
    }
    Ok(Some(g.encode_to_vec()))
}

/// A target entitlement, encoded once.
struct Target {
    /// `Entitlement` bytes.
    bytes: Vec<u8>,
    resource_type: String,
    resource: String,
}

/// One grant read from the database: its principal, row id, external id and bytes.
struct Row {
    ptype: String,
    pid: String,
    id: i64,
    external_id: String,
    data: Vec<u8>,
}

struct Expander<'c> {
    conn: &'c Connection,
    sync_id: &'c str,
    discovered_at: String,
    targets: HashMap<String, Option<Rc<Target>>>,
    /// Field 4 of a derived grant: one `Any` holding an empty `GrantImmutable`.
    immutable: Vec<u8>,
    stats: ExpandStats,
    buf: Vec<u8>,
    existing: Vec<Row>,
}

impl<'c> Expander<'c> {
    fn new(conn: &'c Connection, sync_id: &'c str) -> Result<Self> {
        let discovered_at: String = conn
            .query_row(
                "SELECT started_at FROM v1_sync_runs WHERE sync_id = ?1",
                [sync_id],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| C1zError::NoSync(format!("sync {sync_id} is not in the file")))?;
        let mut tmpl = Grant::default();
        tmpl.annotations.push_msg(&GrantImmutable::default());
        Ok(Self {
            conn,
            sync_id,
            discovered_at,
            targets: HashMap::new(),
            immutable: tmpl.encode_to_vec(),
            stats: ExpandStats::default(),
            buf: Vec::with_capacity(4096),
            existing: Vec::new(),
        })
    }

    /// The entitlement `id` from `v1_entitlements`, else as embedded in one of its grants.
    fn target(&mut self, id: &str) -> Result<Option<Rc<Target>>> {
        if let Some(t) = self.targets.get(id) {
            return Ok(t.clone());
        }
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM v1_entitlements WHERE sync_id = ?1 AND external_id = ?2")?
            .query_row(params![self.sync_id, id], |r| r.get(0))
            .optional()?;
        let ent = match bytes {
            Some(b) => Some(
                Entitlement::decode(b.as_slice()).map_err(|source| C1zError::Decode {
                    table: "v1_entitlements",
                    external_id: id.to_owned(),
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
        self.targets.insert(id.to_owned(), t.clone());
        Ok(t)
    }

    /// Grants of `ent` in principal order after `after` (type, id, row id), at most `limit`; or, with
    /// `upto`, all of them up to and including that principal.
    fn read_grants(
        &self,
        ent: &str,
        after: (&str, &str, i64),
        upto: Option<(&str, &str)>,
        out: &mut Vec<Row>,
    ) -> Result<()> {
        out.clear();
        let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
            Ok(Row {
                ptype: r.get(0)?,
                pid: r.get(1)?,
                id: r.get(2)?,
                external_id: r.get(3)?,
                data: r.get(4)?,
            })
        };
        const COLS: &str = "SELECT principal_resource_type_id, principal_resource_id, id, external_id, data
             FROM v1_grants WHERE entitlement_id = ?1 AND sync_id = ?2
               AND (principal_resource_type_id, principal_resource_id, id) > (?3, ?4, ?5)";
        match upto {
            None => {
                let mut st = self.conn.prepare_cached(&format!(
                    "{COLS} ORDER BY principal_resource_type_id, principal_resource_id, id LIMIT ?6"
                ))?;
                for r in st.query_map(params![ent, self.sync_id, after.0, after.1, after.2, PAGE], map)? {
                    out.push(r?);
                }
            }
            Some((t, p)) => {
                let mut st = self.conn.prepare_cached(&format!(
                    "{COLS} AND (principal_resource_type_id, principal_resource_id) <= (?6, ?7)
                     ORDER BY principal_resource_type_id, principal_resource_id, id"
                ))?;
                for r in st.query_map(params![ent, self.sync_id, after.0, after.1, after.2, t, p], map)? {
                    out.push(r?);
                }
            }
        }
        Ok(())
    }

    /// Applies S→D to every holder of S. Returns whether any grant was created or changed.
    fn apply_edge(&mut self, s: &str, d: &str, attr: &EdgeAttr) -> Result<bool> {
        let Some(dst) = self.target(d)? else {
            return Ok(false);
        };
        // The two possible `sources` fields of a new grant, encoded once.
        let sources_field = |direct: bool| {
            let srcs = GrantSources {
                sources: [(s.to_owned(), GrantSource { is_direct: direct })].into(),
            };
            let mut f = Vec::new();
            put_len_field(&mut f, 5, &srcs.encode_to_vec());
            f
        };
        let (src_direct, src_indirect) = (sources_field(true), sources_field(false));
        let mut changed = false;
        let mut holders = Vec::new();
        let mut existing = std::mem::take(&mut self.existing);
        let mut cursor = (String::new(), String::new(), 0i64);
        loop {
            self.read_grants(s, (&cursor.0, &cursor.1, cursor.2), None, &mut holders)?;
            let Some(last) = holders.last() else { break };
            let (first, last_key) = (&holders[0], (last.ptype.clone(), last.pid.clone()));
            // D's grants for the same principal range, merged against the holders below.
            self.read_grants(
                d,
                (&first.ptype, &first.pid, -1),
                Some((&last_key.0, &last_key.1)),
                &mut existing,
            )?;
            let mut ex = existing.iter_mut().peekable();
            // The grant created for the previous holder: two holder rows of one principal (duplicates under
            // different ids) must not create two grants.
            let mut fresh: Option<Row> = None;
            for h in &holders {
                if !attr.resource_type_ids.is_empty() && !attr.resource_type_ids.contains(&h.ptype) {
                    continue;
                }
                if h.ptype == dst.resource_type && h.pid == dst.resource {
                    continue;
                }
                let parts = scan_grant(&h.data);
                let direct = match parts.as_ref() {
                    Some(p) => match p.sources {
                        None => true,
                        Some(b) => is_direct(Some(&decode_sources(b, &h.external_id)?), s),
                    },
                    None => is_direct(decode_grant(&h.data, &h.external_id)?.sources.as_ref(), s),
                };
                if attr.shallow && !direct {
                    continue;
                }
                // Advance the existing grants of D to this holder's principal.
                while ex
                    .peek()
                    .is_some_and(|e| (e.ptype.as_str(), e.pid.as_str()) < (h.ptype.as_str(), h.pid.as_str()))
                {
                    ex.next();
                }
                let hit = match fresh.as_mut() {
                    Some(f) if f.ptype == h.ptype && f.pid == h.pid => Some(f),
                    _ => ex
                        .peek_mut()
                        .map(|e| &mut **e)
                        .filter(|e| e.ptype == h.ptype && e.pid == h.pid),
                };
                match hit {
                    Some(e) => {
                        if let Some(new) = with_source(&e.data, &e.external_id, d, s, direct)? {
                            self.conn
                                .prepare_cached("UPDATE v1_grants SET data = ?1 WHERE id = ?2")?
                                .execute(params![new, e.id])?;
                            e.data = new; // a later holder row for the same principal sees it
                            self.stats.grants_updated += 1;
                            changed = true;
                        }
                    }
                    None => {
                        let gid = steward_model::ids::grant_id(d, &h.ptype, &h.pid);
                        self.buf.clear();
                        put_len_field(&mut self.buf, 1, &dst.bytes);
                        match parts.as_ref() {
                            Some(p) => {
                                if let Some(pr) = p.principal {
                                    put_len_field(&mut self.buf, 2, pr);
                                }
                            }
                            None => {
                                if let Some(pr) = decode_grant(&h.data, &h.external_id)?.principal {
                                    put_len_field(&mut self.buf, 2, &pr.encode_to_vec());
                                }
                            }
                        }
                        put_len_field(&mut self.buf, 3, gid.as_bytes());
                        self.buf.extend_from_slice(&self.immutable);
                        self.buf
                            .extend_from_slice(if direct { &src_direct } else { &src_indirect });
                        self.conn
                            .prepare_cached(
                                "INSERT INTO v1_grants (resource_type_id, resource_id, entitlement_id,
                                   principal_resource_type_id, principal_resource_id, external_id, expansion,
                                   needs_expansion, data, sync_id, discovered_at)
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 0, ?7, ?8, ?9)",
                            )?
                            .execute(params![
                                dst.resource_type,
                                dst.resource,
                                d,
                                h.ptype,
                                h.pid,
                                gid,
                                self.buf,
                                self.sync_id,
                                self.discovered_at
                            ])?;
                        self.stats.grants_created += 1;
                        changed = true;
                        fresh = Some(Row {
                            ptype: h.ptype.clone(),
                            pid: h.pid.clone(),
                            id: self.conn.last_insert_rowid(),
                            external_id: gid,
                            data: self.buf.clone(),
                        });
                    }
                }
            }
            if holders.len() < PAGE as usize {
                break;
            }
            let l = &holders[holders.len() - 1];
            cursor = (l.ptype.clone(), l.pid.clone(), l.id);
        }
        self.existing = existing;
        Ok(changed)
    }
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
    fn with_source_matches_full_decode() {
        let (_, mut g) = sample();
        // No sources: D first, then S.
        let b = with_source(&g.encode_to_vec(), "id", "D", "S", false)
            .unwrap()
            .unwrap();
        let got = Grant::decode(b.as_slice()).unwrap();
        g.sources = Some(GrantSources {
            sources: [
                ("D".to_owned(), GrantSource { is_direct: true }),
                ("S".to_owned(), GrantSource { is_direct: false }),
            ]
            .into(),
        });
        assert_eq!(got, g);
        assert_eq!(b, g.encode_to_vec());
        // Same again: nothing to change; upgrade to direct changes it.
        assert!(with_source(&b, "id", "D", "S", false).unwrap().is_none());
        let up = with_source(&b, "id", "D", "S", true).unwrap().unwrap();
        let got = Grant::decode(up.as_slice()).unwrap();
        assert!(got.sources.unwrap().sources["S"].is_direct);
        // A non-canonical encoding (field 5 before field 3) takes the decode path and gives the same result.
        let mut odd = Vec::new();
        put_len_field(&mut odd, 5, &GrantSources::default().encode_to_vec());
        odd.extend_from_slice(&sample().1.encode_to_vec());
        assert!(scan_grant(&odd).is_none());
        assert!(with_source(&odd, "id", "D", "S", false).unwrap().is_some());
    }
}
