//! `C1zReader`: opens a c1z file for queries.
//!
//! The database is unpacked into a private temporary directory that is removed when the reader is dropped
//! (also on error paths: the `TempDir` owns it). Each reader has its own copy, so any number of readers
//! may open the same file at once. Listing queries are paged by row id: a page token is the last row id of
//! the previous page.
//!
//! # Which rows a query sees
//!
//! * **Default view** (after [`C1zReader::open`]): the latest finished full sync (by `ended_at`) — the
//!   *base* — overlaid with every finished `partial` sync that ended after it, oldest first. A partial
//!   sync (what the CLI writes after provisioning to confirm a change) lists a few resources again with
//!   their entitlements and grants; for each resource it lists, the resource row, its entitlements and
//!   the grants on its entitlements come from the newest such partial sync and those of the base are
//!   hidden. Everything else (other resources, resource types) comes from the base unchanged.
//!   `partial_upserts`, `partial_deletions` and `resources_only` syncs are not overlaid. Expansion is not
//!   recomputed across the overlay: a grant derived in the base through a resource the partial sync
//!   changed (e.g. membership of a group nested in the changed group) stays as the base recorded it until
//!   the next full sync.
//! * Without a finished full sync, the latest finished sync of any type, alone.
//! * **An explicit sync** ([`C1zReader::select_sync`]): exactly that sync's rows, no overlay.
//!
//! [`C1zReader::sync_id`] is the base sync (or the selected one); [`C1zReader::overlay_sync_ids`] lists
//! the partial syncs laid over it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use prost::Message;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use steward_model::{Entitlement, Grant, Resource, ResourceId, ResourceType};

use crate::envelope;
use crate::error::{C1zError, Result};
use crate::{SyncRun, SyncType, list_sync_runs};

/// A page request: where to start and how many rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Token from the previous page's `next_page_token`; empty for the first page.
    pub token: String,
    /// Rows per page (0 means 100).
    pub size: usize,
}

impl PageRequest {
    /// The first page of `size` rows.
    pub fn first(size: usize) -> Self {
        Self {
            token: String::new(),
            size,
        }
    }
}

/// A page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Token of the next page; empty at the end.
    pub next_page_token: String,
}

/// Which resources to list.
#[derive(Debug, Clone, Default)]
pub struct ResourceFilter {
    /// Only this resource type.
    pub resource_type: Option<String>,
    /// Only children of this resource.
    pub parent: Option<ResourceId>,
}

/// Which entitlements to list.
#[derive(Debug, Clone, Default)]
pub struct EntitlementFilter {
    /// Only entitlements on this resource.
    pub resource: Option<ResourceId>,
}

/// Which grants to list.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    /// Only grants of this entitlement.
    pub entitlement_id: Option<String>,
    /// Only grants to this principal.
    pub principal: Option<ResourceId>,
    /// Only grants on entitlements of this resource.
    pub resource: Option<ResourceId>,
}

/// Row counts of a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Resource types.
    pub resource_types: u64,
    /// Resources per resource type.
    pub resources_by_type: BTreeMap<String, u64>,
    /// Entitlements.
    pub entitlements: u64,
    /// Grants (including expanded ones).
    pub grants: u64,
}

/// One grant a principal holds, with how it got it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessEntry {
    /// The grant.
    pub grant: Grant,
    /// Entitlement ids from a directly held one to this grant's (one element for a direct grant).
    pub path: Vec<String>,
}

/// Open options.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Cap on the decompressed size.
    pub max_decoded: u64,
    /// Where to create the private temporary directory (default: the system's).
    pub temp_dir: Option<PathBuf>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            max_decoded: envelope::DEFAULT_MAX_DECODED,
            temp_dir: None,
        }
    }
}

/// A c1z file opened for reading. See the module docs.
pub struct C1zReader {
    path: PathBuf,
    db: PathBuf,
    conn: Connection,
    sync_id: Option<String>,
    /// Partial syncs laid over `sync_id`, oldest first (empty: the sync alone).
    overlay: Vec<String>,
    _dir: tempfile::TempDir,
}

/// The temp table mapping each resource a partial sync of the overlay lists (`type:id`) to the newest
/// such sync.
const COVER: &str = "temp.steward_overlay_cover";

impl std::fmt::Debug for C1zReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("C1zReader")
            .field("path", &self.path)
            .field("sync_id", &self.sync_id)
            .finish()
    }
}

impl C1zReader {
    /// Opens `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Opens `path`: checks the envelope, unpacks it, checks it is a c1z database, selects the default sync.
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let dir = match &opts.temp_dir {
            Some(d) => tempfile::Builder::new().prefix("steward-c1z-").tempdir_in(d),
            None => tempfile::Builder::new().prefix("steward-c1z-").tempdir(),
        }
        .map_err(C1zError::io("create a temporary directory for", &path))?;
        let db = dir.path().join("db.sqlite");
        envelope::read_c1z(&path, &db, opts.max_decoded)?;
        let corrupt = |detail: String| C1zError::Corrupt {
            path: path.clone(),
            detail,
        };
        let conn = Connection::open(&db)?;
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| {
                corrupt(format!(
                    "the zstd frame does not hold a readable SQLite database ({e})"
                ))
            })?;
        for t in [
            "v1_sync_runs",
            "v1_resource_types",
            "v1_resources",
            "v1_entitlements",
            "v1_grants",
        ] {
            if !tables.iter().any(|x| x == t) {
                return Err(corrupt(format!(
                    "the database has no {t} table, so it is not a c1z sync database"
                )));
            }
        }
        conn.execute_batch("PRAGMA cache_size = -32768;")?;
        let mut r = Self {
            path,
            db,
            conn,
            sync_id: None,
            overlay: Vec::new(),
            _dir: dir,
        };
        match r.latest_finished_sync(Some(SyncType::Full))? {
            Some(base) => {
                r.sync_id = Some(base.sync_id.clone());
                r.overlay = r.build_overlay(&base)?;
            }
            None => r.sync_id = r.latest_finished_sync(None)?.map(|s| s.sync_id),
        }
        r.conn.execute_batch("PRAGMA query_only = ON;")?;
        Ok(r)
    }

    /// Finds the finished partial syncs newer than `base` and records, for each resource they list, the
    /// newest one (in a temp table of this reader's own connection).
    fn build_overlay(&self, base: &SyncRun) -> Result<Vec<String>> {
        let mut partials: Vec<SyncRun> = self
            .sync_runs()?
            .into_iter()
            .filter(|r| SyncType::parse(&r.sync_type) == Some(SyncType::Partial))
            .filter(|r| r.ended_at.is_some() && r.ended_at > base.ended_at)
            .collect();
        if partials.is_empty() {
            return Ok(Vec::new());
        }
        partials.sort_by(|a, b| a.ended_at.cmp(&b.ended_at));
        self.conn.execute_batch(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS steward_overlay_cover (k TEXT PRIMARY KEY, sync_id TEXT NOT NULL) WITHOUT ROWID;
             DELETE FROM {COVER};"
        ))?;
        let mut st = self.conn.prepare(&format!(
            "INSERT OR REPLACE INTO {COVER} (k, sync_id) SELECT external_id, sync_id FROM v1_resources WHERE sync_id = ?1"
        ))?;
        for p in &partials {
            st.execute([&p.sync_id])?;
        }
        Ok(partials.into_iter().map(|p| p.sync_id).collect())
    }

    /// The partial syncs laid over [`sync_id`](Self::sync_id) in the default view, oldest first; empty
    /// after [`select_sync`](Self::select_sync) or when there are none.
    pub fn overlay_sync_ids(&self) -> &[String] {
        &self.overlay
    }

    /// The SQL condition selecting the visible rows of `table` (aliased `t`), with the base sync id as
    /// parameter `?1`.
    fn visible(&self, table: &str) -> String {
        if self.overlay.is_empty() || table == "v1_resource_types" {
            return "t.sync_id = ?1".to_owned();
        }
        let key = if table == "v1_resources" {
            "t.external_id"
        } else {
            "t.resource_type_id || ':' || t.resource_id"
        };
        // The row's resource's newest partial sync if one lists it, else the base.
        format!("t.sync_id = coalesce((SELECT c.sync_id FROM {COVER} c WHERE c.k = {key}), ?1)")
    }

    /// The c1z file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The unpacked SQLite database (valid while the reader lives).
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// The selected sync, if the file has a finished one (or one was selected).
    pub fn sync_id(&self) -> Option<&str> {
        self.sync_id.as_deref()
    }

    /// Selects the sync that queries address.
    pub fn select_sync(&mut self, sync_id: &str) -> Result<()> {
        if !self.sync_runs()?.iter().any(|r| r.sync_id == sync_id) {
            return Err(C1zError::NoSync(format!(
                "sync {sync_id} is not in {}; `steward inspect syncs -f FILE` lists the syncs",
                self.path.display()
            )));
        }
        self.sync_id = Some(sync_id.to_owned());
        self.overlay.clear();
        Ok(())
    }

    /// All sync runs, oldest first.
    pub fn sync_runs(&self) -> Result<Vec<SyncRun>> {
        list_sync_runs(&self.conn)
    }

    /// The latest finished sync (by `ended_at`) of `kind`, or of any kind.
    pub fn latest_finished_sync(&self, kind: Option<SyncType>) -> Result<Option<SyncRun>> {
        let mut runs = self.sync_runs()?;
        let i = crate::latest_finished(
            runs.iter().map(|r| (r.ended_at.as_deref(), r.sync_type.as_str())),
            kind,
        );
        Ok(i.map(|i| runs.swap_remove(i)))
    }

    fn sid(&self) -> Result<&str> {
        self.sync_id.as_deref().ok_or_else(|| {
            C1zError::NoSync(format!(
                "{} has no finished sync; finish a sync first or select one by id",
                self.path.display()
            ))
        })
    }

    fn page<T: Message + Default>(
        &self,
        table: &'static str,
        filters: &[(&str, SqlValue)],
        page: &PageRequest,
    ) -> Result<Page<T>> {
        let size = if page.size == 0 { 100 } else { page.size };
        let after: i64 = if page.token.is_empty() {
            0
        } else {
            page.token
                .parse()
                .map_err(|_| C1zError::NoSync(format!("invalid page token {:?}", page.token)))?
        };
        let mut sql = format!(
            "SELECT id, external_id, data FROM {table} t WHERE {} AND id > ?2",
            self.visible(table)
        );
        let mut args: Vec<SqlValue> = vec![SqlValue::Text(self.sid()?.to_owned()), SqlValue::Integer(after)];
        for (col, v) in filters {
            args.push(v.clone());
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
        args.push(SqlValue::Integer(size as i64 + 1));
        sql.push_str(&format!(" ORDER BY id LIMIT ?{}", args.len()));
        let mut st = self.conn.prepare_cached(&sql)?;
        let mut rows = st.query(params_from_iter(args))?;
        let mut items = Vec::with_capacity(size);
        let mut last = 0i64;
        let mut more = false;
        while let Some(r) = rows.next()? {
            if items.len() == size {
                more = true;
                break;
            }
            last = r.get(0)?;
            let bytes: Vec<u8> = r.get(2)?;
            items.push(T::decode(bytes.as_slice()).map_err(|source| C1zError::Decode {
                table,
                external_id: r.get(1).unwrap_or_default(),
                source,
            })?);
        }
        Ok(Page {
            items,
            next_page_token: if more { last.to_string() } else { String::new() },
        })
    }

    /// Resource types of the selected sync.
    pub fn resource_types(&self, page: &PageRequest) -> Result<Page<ResourceType>> {
        self.page("v1_resource_types", &[], page)
    }

    /// Resources of the selected sync.
    pub fn resources(&self, f: &ResourceFilter, page: &PageRequest) -> Result<Page<Resource>> {
        let mut w = Vec::new();
        if let Some(t) = &f.resource_type {
            w.push(("resource_type_id", SqlValue::Text(t.clone())));
        }
        if let Some(p) = &f.parent {
            w.push(("parent_resource_type_id", SqlValue::Text(p.resource_type.clone())));
            w.push(("parent_resource_id", SqlValue::Text(p.resource.clone())));
        }
        self.page("v1_resources", &w, page)
    }

    /// Entitlements of the selected sync.
    pub fn entitlements(&self, f: &EntitlementFilter, page: &PageRequest) -> Result<Page<Entitlement>> {
        let mut w = Vec::new();
        if let Some(r) = &f.resource {
            w.push(("resource_type_id", SqlValue::Text(r.resource_type.clone())));
            w.push(("resource_id", SqlValue::Text(r.resource.clone())));
        }
        self.page("v1_entitlements", &w, page)
    }

    /// Grants of the selected sync (as stored: expandable annotations are in `expansion`, not in `data`).
    pub fn grants(&self, f: &GrantFilter, page: &PageRequest) -> Result<Page<Grant>> {
        let mut w = Vec::new();
        if let Some(e) = &f.entitlement_id {
            w.push(("entitlement_id", SqlValue::Text(e.clone())));
        }
        if let Some(p) = &f.principal {
            w.push((
                "principal_resource_type_id",
                SqlValue::Text(p.resource_type.clone()),
            ));
            w.push(("principal_resource_id", SqlValue::Text(p.resource.clone())));
        }
        if let Some(r) = &f.resource {
            w.push(("resource_type_id", SqlValue::Text(r.resource_type.clone())));
            w.push(("resource_id", SqlValue::Text(r.resource.clone())));
        }
        self.page("v1_grants", &w, page)
    }

    /// Calls `f` for every grant of the selected sync, in row order, a page at a time.
    pub fn for_each_grant(
        &self,
        filter: &GrantFilter,
        mut f: impl FnMut(Grant) -> Result<()>,
    ) -> Result<u64> {
        let mut req = PageRequest::first(10_000);
        let mut n = 0;
        loop {
            let page = self.grants(filter, &req)?;
            for g in page.items {
                n += 1;
                f(g)?;
            }
            if page.next_page_token.is_empty() {
                return Ok(n);
            }
            req.token = page.next_page_token;
        }
    }

    fn one<T: Message + Default>(&self, table: &'static str, external_id: &str) -> Result<Option<T>> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached(&format!(
                "SELECT data FROM {table} t WHERE external_id = ?2 AND {} LIMIT 1",
                self.visible(table)
            ))?
            .query_row(params![self.sid()?, external_id], |r| r.get(0))
            .optional()?;
        bytes
            .map(|b| {
                T::decode(b.as_slice()).map_err(|source| C1zError::Decode {
                    table,
                    external_id: external_id.to_owned(),
                    source,
                })
            })
            .transpose()
    }

    /// The resource type `id`.
    pub fn resource_type(&self, id: &str) -> Result<Option<ResourceType>> {
        self.one("v1_resource_types", id)
    }

    /// The resource `id`.
    pub fn resource(&self, id: &ResourceId) -> Result<Option<Resource>> {
        self.one("v1_resources", &id.to_string())
    }

    /// The entitlement `id`.
    pub fn entitlement(&self, id: &str) -> Result<Option<Entitlement>> {
        self.one("v1_entitlements", id)
    }

    /// The grant `id`.
    pub fn grant(&self, id: &str) -> Result<Option<Grant>> {
        self.one("v1_grants", id)
    }

    /// Row counts of the selected sync.
    pub fn stats(&self) -> Result<Stats> {
        let sid = self.sid()?;
        let count = |t: &str| -> Result<u64> {
            Ok(self.conn.query_row(
                &format!("SELECT count(*) FROM {t} t WHERE {}", self.visible(t)),
                [sid],
                |r| r.get::<_, i64>(0),
            )? as u64)
        };
        let mut st = self.conn.prepare(&format!(
            "SELECT resource_type_id, count(*) FROM v1_resources t WHERE {} GROUP BY resource_type_id",
            self.visible("v1_resources")
        ))?;
        let by_type = st
            .query_map([sid], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
        Ok(Stats {
            resource_types: count("v1_resource_types")?,
            resources_by_type: by_type,
            entitlements: count("v1_entitlements")?,
            grants: count("v1_grants")?,
        })
    }

    /// Everything `principal` holds, each grant with the chain of entitlements it came through.
    pub fn access(&self, principal: &ResourceId) -> Result<Vec<AccessEntry>> {
        let mut grants = Vec::new();
        self.for_each_grant(
            &GrantFilter {
                principal: Some(principal.clone()),
                ..Default::default()
            },
            |g| {
                grants.push(g);
                Ok(())
            },
        )?;
        let by_ent: HashMap<String, &Grant> = grants
            .iter()
            .filter_map(|g| g.entitlement.as_ref().map(|e| (e.id.clone(), g)))
            .collect();
        let path_of = |start: &str| -> Vec<String> {
            let mut path = vec![start.to_owned()];
            let mut seen: HashSet<String> = HashSet::from([start.to_owned()]);
            let mut cur = start.to_owned();
            while path.len() <= crate::expand::DEFAULT_MAX_DEPTH {
                let Some(g) = by_ent.get(&cur) else { break };
                let srcs = g.sources.as_ref().map(|s| &s.sources);
                let direct = srcs.is_none_or(|s| s.is_empty() || s.get(&cur).is_some_and(|x| x.is_direct));
                if direct {
                    break;
                }
                // Prefer a source held directly, then any source, in id order.
                let next = srcs.and_then(|s| {
                    let held = |k: &&String| !seen.contains(*k) && by_ent.contains_key(*k);
                    s.iter()
                        .filter(|(k, v)| v.is_direct && held(k))
                        .map(|(k, _)| k)
                        .next()
                        .or(s.keys().find(held))
                });
                let Some(next) = next.cloned() else { break };
                seen.insert(next.clone());
                path.push(next.clone());
                cur = next;
            }
            path.reverse();
            path
        };
        let mut out: Vec<AccessEntry> = grants
            .iter()
            .map(|g| AccessEntry {
                path: path_of(g.entitlement.as_ref().map(|e| e.id.as_str()).unwrap_or_default()),
                grant: g.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.grant.id.cmp(&b.grant.id));
        Ok(out)
    }
}
