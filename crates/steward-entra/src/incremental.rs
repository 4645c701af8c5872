//! Incremental sync (`--incremental`): a full sync's rows at the cost of the changes.
//!
//! Every full sync keeps Graph delta links with it (in the finished sync's token, see
//! `steward_sync::incremental`): `/users/delta` and `/groups/delta` (with `members` and `owners`), taken
//! with `$deltatoken=latest` *before* anything is read, so that whatever changes while the sync runs is
//! replayed next time (replays are harmless: changes are applied as sets), plus the time from which to
//! read the directory audit log. An incremental sync reads the previous full sync of the same file and
//! asks Graph only for what changed:
//!
//! | what | how an incremental sync reads it | requests (1% churn, medium tenant) |
//! |---|---|---|
//! | users | `/users/delta` → ids changed or removed; the changed ones read again, 15 per `$filter=id in (…)` with their manager; the rest copied from the previous sync | 1 + changed ÷ 15 |
//! | groups, members, owners | `/groups/delta` with `members@delta` and `owners@delta`; a group new since the previous sync is read in full | 1–2 (+2 per new group) |
//! | enterprise applications, managed identities | listed again (one request per 999 service principals: cheaper than tracking) | 1 |
//! | app role assignments, app owners | Graph has no delta for them: the audit log (`/auditLogs/directoryAudits`, activities since the previous sync started, less an hour for the log's latency) names the service principals whose assignments or owners changed, and only those are read again; without `AuditLog.Read.All` every app is read again | 1 + 2 per changed app |
//! | directory roles, PIM eligibility | read again in full (3 requests; assignments have no delta) | 3 |
//! | licenses | SKUs read again (1 request); holders from the previous sync's grants, updated with changed users' `assignedLicenses` | 1 |
//!
//! Invariant: the rows equal a full sync's of the same tenant state. Rows of the previous sync are
//! rebuilt from their ids (never copied with their expansion), and every principal is resolved against
//! the new directory index, so grants to deleted principals vanish even where Graph reports no change.
//!
//! Falls back to a full sync, with a log line saying why, when the previous sync kept no delta links or
//! Graph answers that a link expired (410 Gone / `syncStateNotFound`; links last about 7 days).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use serde_json::{Value, json};
use steward_c1z::{C1zReader, GrantFilter, PageRequest, ResourceFilter};
use steward_model::{AnnotationsExt, Grant, GrantImmutable, Resource};
use steward_msgraph::{Client, Error as GraphError};
use steward_sync::Previous;

use crate::error::EntraError;
use crate::index::{Index, Kind};
use crate::{groups, types, users};

/// How far back the audit log is read before the previous sync's start (the log's own latency).
pub const AUDIT_OVERLAP: time::Duration = time::Duration::hours(1);
/// Users read again per `$filter=id in (…)` request.
pub const IDS_PER_FILTER: usize = 15;
/// Rows per page when reading the previous sync.
const PREV_PAGE: usize = 1_000;

/// The `$select` of the users delta query.
pub fn users_delta() -> String {
    format!(
        "/v1.0/users/delta?$select={},assignedLicenses,manager",
        users::USER_SELECT
    )
}

/// The `$select` of the groups delta query.
pub fn groups_delta() -> String {
    format!(
        "/v1.0/groups/delta?$select={},members,owners",
        groups::GROUP_SELECT
    )
}

/// What a sync keeps for the next incremental one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// `/users/delta` link.
    pub users: String,
    /// `/groups/delta` link.
    pub groups: String,
    /// RFC 3339 time the sync started reading (the audit log is read from there, less the overlap).
    pub since: String,
}

impl Links {
    /// As stored in the file.
    pub fn to_json(&self) -> String {
        json!({"users_delta": self.users, "groups_delta": self.groups, "since": self.since}).to_string()
    }

    /// From the stored text; `None` when it is not ours or incomplete.
    pub fn parse(s: &str) -> Option<Links> {
        let v: Value = serde_json::from_str(s).ok()?;
        let f = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Some(Links {
            users: f("users_delta")?,
            groups: f("groups_delta")?,
            since: f("since")?,
        })
    }
}

/// Now, as RFC 3339 (UTC, whole seconds).
pub fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Delta links at the current position (`$deltatoken=latest`: no objects, just the link).
pub async fn latest(g: &Client) -> Result<Links, EntraError> {
    let since = now_rfc3339();
    let (uu, gu) = (
        format!("{}&$deltatoken=latest", users_delta()),
        format!("{}&$deltatoken=latest", groups_delta()),
    );
    let (u, gr) = futures::try_join!(g.get_page(&uu, false), g.get_page(&gu, false))?;
    let link = |p: steward_msgraph::ODataPage, what: &str| {
        p.delta_link.ok_or_else(|| {
            EntraError::Graph(GraphError::Http {
                what: format!("GET /v1.0/{what}/delta?$deltatoken=latest"),
                status: 200,
                code: "NoDeltaLink".into(),
                message: "the answer has no @odata.deltaLink".into(),
            })
        })
    };
    Ok(Links {
        users: link(u, "users")?,
        groups: link(gr, "groups")?,
        since,
    })
}

/// The previous sync's direct grants on groups, apps and licenses, read in one pass over its grants
/// (a query per resource would scan the grants table once per group) and held compactly: ids interned.
#[derive(Default)]
struct PrevGrants {
    names: Vec<String>,
    ids: HashMap<String, u32>,
    /// Resource id → (entitlement slug, principal id), as name indexes.
    by_resource: HashMap<u32, Vec<(u32, u32)>>,
}

impl PrevGrants {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(i) = self.ids.get(s) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_owned());
        self.ids.insert(s.to_owned(), i);
        i
    }

    fn read(r: &C1zReader) -> Result<PrevGrants, EntraError> {
        let mut out = PrevGrants::default();
        let mut n = 0u64;
        r.for_each_grant(&GrantFilter::default(), |g| {
            if g.annotations.contains::<GrantImmutable>() {
                return Ok(()); // derived by expansion, which runs again
            }
            let Some(ent) = g.entitlement.as_ref() else {
                return Ok(());
            };
            let Some(res) = ent.resource.as_ref().and_then(|x| x.id.as_ref()) else {
                return Ok(());
            };
            if !matches!(
                res.resource_type.as_str(),
                types::GROUP | types::APP | types::LICENSE
            ) {
                return Ok(());
            }
            let Some((_, pid)) = principal_of(&g) else {
                return Ok(());
            };
            let prefix = format!("{}:{}:", res.resource_type, res.resource);
            let Some(slug) = ent.id.strip_prefix(&prefix) else {
                return Ok(());
            };
            let (rk, sk, pk) = (out.intern(&res.resource), out.intern(slug), out.intern(&pid));
            out.by_resource.entry(rk).or_default().push((sk, pk));
            n += 1;
            Ok(())
        })
        .map_err(prev_err)?;
        tracing::debug!(
            grants = n,
            resources = out.by_resource.len(),
            "previous direct grants read"
        );
        Ok(out)
    }

    /// (slug, principal id) of the previous direct grants on resource `id`.
    fn of(&self, id: &str) -> impl Iterator<Item = (&str, &str)> {
        self.ids
            .get(id)
            .and_then(|k| self.by_resource.get(k))
            .into_iter()
            .flatten()
            .map(|(s, p)| (self.names[*s as usize].as_str(), self.names[*p as usize].as_str()))
    }
}

/// What changed since the previous sync, and that sync's rows.
pub struct Changes {
    prev: Mutex<C1zReader>,
    grants: PrevGrants,
    /// The links to keep with this sync.
    pub links: Links,
    /// The directory index (previous users and groups, updated; service principals listed again).
    pub index: std::sync::Arc<Index>,
    /// Previous users that changed (`Some`: the new resource) or are gone (`None`).
    users: HashMap<String, Option<Resource>>,
    /// Changed and new users' SKU ids (lower case).
    user_licenses: HashMap<String, Vec<String>>,
    /// Users new since the previous sync.
    pub added_users: Vec<Resource>,
    groups: HashMap<String, Option<Resource>>,
    /// Groups new since the previous sync.
    pub added_groups: Vec<Resource>,
    new_groups: HashSet<String>,
    members: HashMap<String, Vec<(String, bool)>>,
    owners: HashMap<String, Vec<(String, bool)>>,
    prev_apps: HashSet<String>,
    /// Service principals whose assignments or owners changed; `None`: unknown, read every app again.
    dirty_apps: Option<HashSet<String>>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("users", &self.users.len())
            .field("added_users", &self.added_users.len())
            .field("groups", &self.groups.len())
            .field("added_groups", &self.added_groups.len())
            .field("dirty_apps", &self.dirty_apps.as_ref().map(HashSet::len))
            .finish_non_exhaustive()
    }
}

/// The ids of the previous sync's resources of `rt`.
fn prev_ids(r: &C1zReader, rt: &str) -> Result<HashSet<String>, EntraError> {
    let f = ResourceFilter {
        resource_type: Some(rt.to_owned()),
        parent: None,
    };
    let mut out = HashSet::new();
    let mut req = PageRequest::first(5_000);
    loop {
        let p = r.resources(&f, &req).map_err(prev_err)?;
        out.extend(p.items.into_iter().filter_map(|x| x.id.map(|i| i.resource)));
        if p.next_page_token.is_empty() {
            return Ok(out);
        }
        req.token = p.next_page_token;
    }
}

fn prev_err(e: steward_c1z::C1zError) -> EntraError {
    EntraError::Previous(e.to_string())
}

fn removed(v: &Value) -> bool {
    v.get("@removed").is_some()
}

fn refs(v: &Value, key: &str, out: &mut Vec<(String, bool)>) {
    for m in v.get(key).and_then(Value::as_array).into_iter().flatten() {
        if let Some(id) = m.get("id").and_then(Value::as_str) {
            out.push((id.to_owned(), !removed(m)));
        }
    }
}

/// The `$filter=id in (…)` listing of `ids`.
fn users_by_id_url(ids: &[String], sign_in: bool) -> String {
    let list = ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(",");
    let sel = if sign_in {
        format!("{},assignedLicenses,signInActivity", users::USER_SELECT)
    } else {
        format!("{},assignedLicenses", users::USER_SELECT)
    };
    format!("/v1.0/users?$filter=id%20in%20({list})&$select={sel}&$expand=manager($select=id)")
}

/// The inputs of [`prepare`] that live on the connector.
pub struct Ctx<'a> {
    /// Graph.
    pub graph: &'a Client,
    /// Settings.
    pub cfg: &'a crate::EntraConfig,
    /// Whether sign-in times are read.
    pub sign_in: bool,
}

/// Reads what changed since `prev`; `Ok(Err(why))` (logged) when an incremental sync is not possible and a
/// full one must run.
pub async fn prepare(cx: Ctx<'_>, prev: Previous) -> Result<Result<Changes, String>, EntraError> {
    let g = cx.graph;
    let Some(links) = prev.state.as_deref().and_then(Links::parse) else {
        let why = format!(
            "incremental sync: the previous sync ({}) kept no Graph delta links (written by an older version or another tool); doing a full sync",
            prev.sync_id
        );
        tracing::warn!("{why}");
        return Ok(Err(why));
    };
    let since_time =
        time::OffsetDateTime::parse(&links.since, &time::format_description::well_known::Rfc3339)
            .map(|t| t - AUDIT_OVERLAP)
            .ok();
    let audit_url = since_time.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
            .map(|s| format!("/v1.0/auditLogs/directoryAudits?$filter=activityDateTime%20ge%20{s}"))
    });
    let started = now_rfc3339();
    let deltas = futures::try_join!(g.delta_all(&links.users), g.delta_all(&links.groups));
    let ((user_items, users_link), (group_items, groups_link)) = match deltas {
        Ok(x) => x,
        Err(GraphError::DeltaExpired) => {
            let why = format!(
                "incremental sync: Graph says the delta link kept with the previous sync ({}) has expired (410 Gone / syncStateNotFound); doing a full sync instead",
                prev.sync_id
            );
            tracing::warn!("{why}");
            return Ok(Err(why));
        }
        Err(e) => return Err(e.into()),
    };
    let dirty_apps = match &audit_url {
        Some(u) => match g.get_all(u, false).await {
            Ok(items) => Some(
                items
                    .iter()
                    .flat_map(|a| a["targetResources"].as_array().cloned().unwrap_or_default())
                    .filter(|t| t["type"].as_str() == Some("ServicePrincipal"))
                    .filter_map(|t| t["id"].as_str().map(str::to_owned))
                    .collect::<HashSet<String>>(),
            ),
            Err(e) => {
                tracing::warn!(
                    "incremental sync: cannot read the audit log ({e}); every enterprise application's assignments and owners are read again (grant AuditLog.Read.All to avoid that)"
                );
                None
            }
        },
        None => None,
    };

    let (prev_users, prev_groups, prev_apps) = {
        let r = &prev.reader;
        (
            prev_ids(r, types::USER)?,
            prev_ids(r, types::GROUP)?,
            prev_ids(r, types::APP)?,
        )
    };

    // Users: ids from the delta, changed ones read again with their manager.
    let mut gone: HashSet<String> = HashSet::new();
    let mut changed: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for u in user_items.iter().rev() {
        let Some(id) = u["id"].as_str() else { continue };
        if !seen.insert(id.to_owned()) {
            continue;
        }
        if removed(u) {
            gone.insert(id.to_owned());
        } else {
            changed.push(id.to_owned());
        }
    }
    let pages = futures::future::try_join_all(changed.chunks(IDS_PER_FILTER).map(|c| {
        let url = users_by_id_url(c, cx.sign_in);
        async move { g.get_all(&url, false).await }
    }))
    .await?;
    let fresh: Vec<Value> = pages.into_iter().flatten().collect();
    let ids: Vec<&str> = fresh.iter().filter_map(|v| v["id"].as_str()).collect();
    let purposes = crate::connector::mailbox_purposes(g, cx.cfg.mailbox_settings, &ids).await?;
    let mut users_map: HashMap<String, Option<Resource>> = HashMap::new();
    let mut user_licenses = HashMap::new();
    let mut added_users = Vec::new();
    let mut found = HashSet::new();
    for (v, p) in fresh.iter().zip(purposes) {
        let Some(id) = v["id"].as_str() else { continue };
        found.insert(id.to_owned());
        let manager = crate::managers::manager_of(v);
        let Some(r) = users::user(v, manager.as_deref(), p.as_deref()) else {
            continue;
        };
        let skus = v["assignedLicenses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["skuId"].as_str().map(str::to_ascii_lowercase))
            .collect();
        user_licenses.insert(id.to_owned(), skus);
        if prev_users.contains(id) {
            users_map.insert(id.to_owned(), Some(r));
        } else {
            added_users.push(r);
        }
    }
    for id in changed.iter().filter(|i| !found.contains(*i)).chain(gone.iter()) {
        if prev_users.contains(id) {
            users_map.insert(id.clone(), None);
        }
    }

    // Groups: properties, members and owners from the delta.
    let mut groups_map: HashMap<String, Option<Resource>> = HashMap::new();
    let mut added: HashMap<String, Resource> = HashMap::new();
    let mut members: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    let mut owners: HashMap<String, Vec<(String, bool)>> = HashMap::new();
    for v in &group_items {
        let Some(id) = v["id"].as_str() else { continue };
        let skipped = cx.cfg.skip_ad_groups && crate::index::is_on_prem(v);
        if removed(v) || skipped {
            added.remove(id);
            if prev_groups.contains(id) {
                groups_map.insert(id.to_owned(), None);
            }
            continue;
        }
        refs(v, "members@delta", members.entry(id.to_owned()).or_default());
        refs(v, "owners@delta", owners.entry(id.to_owned()).or_default());
        // Later occurrences of a large group may carry only its id and members.
        if v.get("displayName").is_none() {
            continue;
        }
        let Some(r) = groups::group(v) else { continue };
        if prev_groups.contains(id) {
            groups_map.insert(id.to_owned(), Some(r));
        } else {
            added.insert(id.to_owned(), r);
        }
    }
    let new_groups: HashSet<String> = added.keys().cloned().collect();

    let user_ids = prev_users
        .iter()
        .filter(|u| !matches!(users_map.get(*u), Some(None)))
        .cloned()
        .chain(
            added_users
                .iter()
                .filter_map(|r| r.id.as_ref().map(|i| i.resource.clone())),
        );
    let group_ids = prev_groups
        .iter()
        .filter(|u| !matches!(groups_map.get(*u), Some(None)))
        .cloned()
        .chain(new_groups.iter().cloned());
    let index = Index::incremental(g, cx.cfg, user_ids, group_ids).await?;
    let grants = PrevGrants::read(&prev.reader)?;
    tracing::info!(
        previous = %prev.sync_id,
        users_changed = users_map.len(),
        users_added = added_users.len(),
        groups_changed = groups_map.len(),
        groups_added = new_groups.len(),
        apps_to_read = dirty_apps.as_ref().map_or(index.apps.len(), HashSet::len),
        "incremental sync: changes since the previous sync read"
    );
    Ok(Ok(Changes {
        prev: Mutex::new(prev.reader),
        grants,
        links: Links {
            users: users_link,
            groups: groups_link,
            since: started,
        },
        index: std::sync::Arc::new(index),
        users: users_map,
        user_licenses,
        added_users,
        groups: groups_map,
        added_groups: added.into_values().collect(),
        new_groups,
        members,
        owners,
        prev_apps,
        dirty_apps,
    }))
}

/// A principal reference of a previous grant: (resource type, id).
fn principal_of(g: &Grant) -> Option<(String, String)> {
    let id = g.principal.as_ref()?.id.as_ref()?;
    Some((id.resource_type.clone(), id.resource.clone()))
}

impl Changes {
    fn reader(&self) -> std::sync::MutexGuard<'_, C1zReader> {
        self.prev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One page of resources of `rt` (users or groups): the previous sync's, changed ones replaced and
    /// gone ones left out, then the new ones.
    pub fn resources(&self, rt: &str, token: &str) -> Result<(Vec<Resource>, String), EntraError> {
        let (changes, added) = if rt == types::USER {
            (&self.users, &self.added_users)
        } else {
            (&self.groups, &self.added_groups)
        };
        if let Some(off) = token.strip_prefix("n|") {
            let start = off.parse::<usize>().unwrap_or(0).min(added.len());
            let end = (start + PREV_PAGE).min(added.len());
            let next = if end < added.len() {
                format!("n|{end}")
            } else {
                String::new()
            };
            return Ok((added[start..end].to_vec(), next));
        }
        let req = PageRequest {
            token: token.strip_prefix("p|").unwrap_or_default().to_owned(),
            size: PREV_PAGE,
        };
        let f = ResourceFilter {
            resource_type: Some(rt.to_owned()),
            parent: None,
        };
        let page = self.reader().resources(&f, &req).map_err(prev_err)?;
        let items = page
            .items
            .into_iter()
            .filter_map(|r| {
                let id = r.id.as_ref().map(|i| i.resource.as_str()).unwrap_or_default();
                match changes.get(id) {
                    Some(Some(fresh)) => Some(fresh.clone()),
                    Some(None) => None,
                    None => Some(r),
                }
            })
            .collect();
        let next = if !page.next_page_token.is_empty() {
            format!("p|{}", page.next_page_token)
        } else if !added.is_empty() {
            "n|0".to_owned()
        } else {
            String::new()
        };
        Ok((items, next))
    }

    /// Whether group `id` must be read from Graph (it is new since the previous sync).
    pub fn group_is_new(&self, id: &str) -> bool {
        self.new_groups.contains(id)
    }

    /// Members and owners of group `id` (ids), from the previous sync and the delta.
    pub fn group_principals(&self, id: &str) -> Result<(Vec<String>, Vec<String>), EntraError> {
        let mut members: Vec<String> = Vec::new();
        let mut owners: Vec<String> = Vec::new();
        for (slug, pid) in self.grants.of(id) {
            match slug {
                "owner" => owners.push(pid.to_owned()),
                "member" => members.push(pid.to_owned()),
                _ => {}
            }
        }
        let apply = |list: &mut Vec<String>, changes: Option<&Vec<(String, bool)>>| {
            let mut set: HashSet<String> = list.drain(..).collect();
            for (m, add) in changes.into_iter().flatten() {
                if *add {
                    set.insert(m.clone());
                } else {
                    set.remove(m);
                }
            }
            let mut v: Vec<String> = set.into_iter().collect();
            v.sort_unstable();
            *list = v;
        };
        apply(&mut members, self.members.get(id));
        apply(&mut owners, self.owners.get(id));
        Ok((members, owners))
    }

    /// Whether app `id`'s assignments and owners must be read from Graph.
    pub fn app_is_dirty(&self, id: &str) -> bool {
        !self.prev_apps.contains(id) || self.dirty_apps.as_ref().is_none_or(|d| d.contains(id))
    }

    /// The previous sync's grants on app `id`: (entitlement slug, principal id).
    pub fn app_grants(&self, id: &str) -> Result<Vec<(String, String)>, EntraError> {
        Ok(self
            .grants
            .of(id)
            .map(|(s, p)| (s.to_owned(), p.to_owned()))
            .collect())
    }

    /// Users holding SKU `sku` (license resource id): the previous holders that did not change, and the
    /// changed or new users that hold it now.
    pub fn license_holders(&self, sku: &str) -> Result<Vec<String>, EntraError> {
        let mut out: Vec<String> = self
            .grants
            .of(sku)
            .filter(|(_, u)| !self.users.contains_key(*u))
            .map(|(_, u)| u.to_owned())
            .collect();
        let sku = sku.to_ascii_lowercase();
        for (u, skus) in &self.user_licenses {
            if skus.contains(&sku) && self.index.kind(u) == Some(Kind::User) {
                out.push(u.clone());
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}
