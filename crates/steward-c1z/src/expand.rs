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
//! Memory: edges and entitlement ids are held in memory; holders are streamed in pages by row id.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};
use steward_model::pb::grant_sources::GrantSource;
use steward_model::{AnnotationsExt, Entitlement, Grant, GrantExpandable, GrantImmutable, GrantSources, ids};

use crate::error::{C1zError, Result};

/// Baton's maximum expansion depth.
pub const DEFAULT_MAX_DEPTH: usize = 20;
const PAGE: i64 = 5000;

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
    let mut stats = ExpandStats::default();
    let edges = load_edges(conn, sync_id)?;
    if edges.is_empty() {
        return Ok(stats);
    }
    stats.edges = edges.len() as u64;

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
    stats.cycles = (0..ncomp).filter(|&c| members[c] > 1 || self_loop[c]).count() as u64;
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
    let mut ents = EntitlementCache::default();
    for c in order {
        if depth[c] > max_depth {
            stats.edges_over_depth += (incoming[c].len() + inner[c].len()) as u64;
            continue;
        }
        for (s, d, a) in &incoming[c] {
            apply_edge(conn, sync_id, s, d, a, &mut ents, &mut stats)?;
        }
        // Inside a cycle, repeat until nothing changes: everyone ends up holding every member.
        for _ in 0..=members[c] {
            let mut changed = false;
            for (s, d, a) in &inner[c] {
                changed |= apply_edge(conn, sync_id, s, d, a, &mut ents, &mut stats)?;
            }
            if !changed {
                break;
            }
        }
    }
    if stats.edges_over_depth > 0 {
        tracing::warn!(
            sync_id,
            edges = stats.edges_over_depth,
            max_depth,
            "grant expansion stopped at the depth limit"
        );
    }
    Ok(stats)
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

#[derive(Default)]
struct EntitlementCache {
    map: HashMap<String, Option<Entitlement>>,
}

impl EntitlementCache {
    /// The entitlement `id` from `v1_entitlements`, else as embedded in one of its grants.
    fn get(&mut self, conn: &Connection, sync_id: &str, id: &str) -> Result<Option<Entitlement>> {
        if let Some(e) = self.map.get(id) {
            return Ok(e.clone());
        }
        let bytes: Option<Vec<u8>> = conn
            .prepare_cached("SELECT data FROM v1_entitlements WHERE sync_id = ?1 AND external_id = ?2")?
            .query_row(params![sync_id, id], |r| r.get(0))
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
                let g: Option<Vec<u8>> = conn
                    .prepare_cached(
                        "SELECT data FROM v1_grants WHERE sync_id = ?1 AND entitlement_id = ?2 LIMIT 1",
                    )?
                    .query_row(params![sync_id, id], |r| r.get(0))
                    .optional()?;
                g.and_then(|b| Grant::decode(b.as_slice()).ok())
                    .and_then(|g| g.entitlement)
            }
        };
        self.map.insert(id.to_owned(), ent.clone());
        Ok(ent)
    }
}

fn decode_grant(bytes: &[u8], id: &str) -> Result<Grant> {
    Grant::decode(bytes).map_err(|source| C1zError::Decode {
        table: "v1_grants",
        external_id: id.to_owned(),
        source,
    })
}

/// Applies S→D to every holder of S. Returns whether any grant was created or changed.
fn apply_edge(
    conn: &Connection,
    sync_id: &str,
    s: &str,
    d: &str,
    attr: &EdgeAttr,
    ents: &mut EntitlementCache,
    stats: &mut ExpandStats,
) -> Result<bool> {
    let Some(dst) = ents.get(conn, sync_id, d)? else {
        return Ok(false);
    };
    let dst_resource = dst
        .resource
        .as_ref()
        .and_then(|r| r.id.clone())
        .unwrap_or_default();
    let mut changed = false;
    let mut cursor = 0i64;
    loop {
        let page: Vec<(i64, String, String, String, Vec<u8>)> = {
            let mut st = conn.prepare_cached(
                "SELECT id, external_id, principal_resource_type_id, principal_resource_id, data FROM v1_grants
                 WHERE sync_id = ?1 AND entitlement_id = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
            )?;
            st.query_map(params![sync_id, s, cursor, PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?
        };
        let Some(last) = page.last() else { break };
        cursor = last.0;
        for (_, gid, ptype, pid, data) in page {
            if !attr.resource_type_ids.is_empty() && !attr.resource_type_ids.contains(&ptype) {
                continue;
            }
            if ptype == dst_resource.resource_type && pid == dst_resource.resource {
                continue;
            }
            let holder = decode_grant(&data, &gid)?;
            let direct = holder
                .sources
                .as_ref()
                .is_none_or(|x| x.sources.is_empty() || x.sources.contains_key(s));
            if attr.shallow && !direct {
                continue;
            }
            let existing: Option<(i64, String, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT id, external_id, data FROM v1_grants WHERE sync_id = ?1 AND entitlement_id = ?2
                       AND principal_resource_type_id = ?3 AND principal_resource_id = ?4 LIMIT 1",
                )?
                .query_row(params![sync_id, d, ptype, pid], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            match existing {
                Some((row, eid, bytes)) => {
                    let mut g = decode_grant(&bytes, &eid)?;
                    let srcs = &mut g.sources.get_or_insert_with(GrantSources::default).sources;
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
                    if dirty {
                        conn.prepare_cached("UPDATE v1_grants SET data = ?1 WHERE id = ?2")?
                            .execute(params![g.encode_to_vec(), row])?;
                        stats.grants_updated += 1;
                        changed = true;
                    }
                }
                None => {
                    let mut g = Grant {
                        entitlement: Some(dst.clone()),
                        principal: holder.principal,
                        id: ids::grant_id(d, &ptype, &pid),
                        annotations: Vec::new(),
                        sources: Some(GrantSources {
                            sources: [(s.to_owned(), GrantSource { is_direct: direct })].into(),
                        }),
                    };
                    g.annotations.push_msg(&GrantImmutable::default());
                    // One row with VALUES (not INSERT … SELECT, which SQLite treats as a multi-row write
                    // and gives a statement journal: a pwrite per touched page per row).
                    conn.prepare_cached(
                        "INSERT INTO v1_grants (resource_type_id, resource_id, entitlement_id, principal_resource_type_id,
                           principal_resource_id, external_id, expansion, needs_expansion, data, sync_id, discovered_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 0, ?7, ?8,
                                 (SELECT started_at FROM v1_sync_runs WHERE sync_id = ?8))",
                    )?
                    .execute(params![
                        dst_resource.resource_type,
                        dst_resource.resource,
                        d,
                        ptype,
                        pid,
                        g.id,
                        g.encode_to_vec(),
                        sync_id
                    ])?;
                    stats.grants_created += 1;
                    changed = true;
                }
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::tarjan;

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
}
