//! [`Entra`]: the `Connector` implementation — what each engine call reads from Graph.
//!
//! Page tokens are Graph's `@odata.nextLink`s verbatim (prefixed with what they continue), or offsets
//! into lists this connector read once per sync (the directory index, role holders). Shared state is
//! read lazily, once, behind `OnceCell`s, so a resumed sync rebuilds it on demand. A group's first grants
//! page reads its first members page and all of its owners concurrently; an app's reads its first
//! assignments page and its owners concurrently. Group and app grants resolve principals whose type Graph
//! states with the directory part of the index (groups, service principals: ready in about a second), so
//! they start while the users are still being indexed (see [`crate::index`]). Chains — the index
//! listings, the manager slices, the user listing, next pages of members and assignments — go through
//! the client's urgent lane ([`Client::urgent`]), so that thousands of independent member reads do not
//! slow them down.
//!
//! Every full sync first takes Graph delta links (two requests) and keeps them with the sync
//! ([`Connector::sync_state`]); with [`Entra::set_previous`], the listings are served from the previous
//! sync plus what changed since (see [`crate::incremental`]), falling back to a full read when that is not
//! possible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use steward_model::{Entitlement, Grant, Resource, ResourceId, ResourceType};
use steward_msgraph::{Client, Error as GraphError, Microsoft, StatsSnapshot};
use steward_sync::{Capabilities, Connector, ConnectorError, Page, ResourceTypeCapability};
use tokio::sync::OnceCell;

use crate::config::EntraConfig;
use crate::error::EntraError;
use crate::incremental::{self as inc, Changes, Links};
use crate::index::{self, Index, Kind, Stated};
use crate::managers::Managers;
use crate::prefetch::Chain;
use crate::provision::{self, GrantOptions};
use crate::roles::RoleHolders;
use crate::{apps, grants, groups, licenses, roles, types, users};

const OFFSET_PAGE: usize = 1_000;

/// The Entra ID connector. See the module docs.
pub struct Entra {
    cfg: EntraConfig,
    ms: Microsoft,
    graph: Client,
    /// `graph` for the pages of chains (see the module docs).
    chain: Client,
    sized: OnceCell<()>,
    directory: OnceCell<Arc<Index>>,
    index: OnceCell<Arc<Index>>,
    managers: OnceCell<Arc<Managers>>,
    roles: tokio::sync::Mutex<Option<Arc<RoleHolders>>>,
    sign_in: OnceCell<bool>,
    left_out: AtomicU64,
    user_pages: Chain,
    group_pages: Chain,
    previous: std::sync::Mutex<Option<steward_sync::Previous>>,
    mode: OnceCell<Mode>,
    fell_back: std::sync::Mutex<Option<String>>,
}

/// How this sync reads the tenant: in full (with the delta links taken before reading), or
/// incrementally.
enum Mode {
    /// With the links taken before reading; `None` when Graph would not give them (logged).
    Full(Option<Links>),
    Incremental(Arc<Changes>),
}

impl Mode {
    fn links(&self) -> Option<&Links> {
        match self {
            Mode::Full(l) => l.as_ref(),
            Mode::Incremental(c) => Some(&c.links),
        }
    }
}

impl std::fmt::Debug for Entra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entra")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Entra {
    /// A connector for `cfg` (no request is made yet).
    pub fn new(cfg: EntraConfig) -> Result<Entra, EntraError> {
        let ms = cfg.microsoft()?;
        let graph = ms.graph();
        Ok(Entra {
            cfg,
            ms,
            chain: graph.urgent(),
            graph,
            sized: OnceCell::new(),
            directory: OnceCell::new(),
            index: OnceCell::new(),
            managers: OnceCell::new(),
            roles: tokio::sync::Mutex::new(None),
            sign_in: OnceCell::new(),
            left_out: AtomicU64::new(0),
            user_pages: Chain::default(),
            group_pages: Chain::default(),
            previous: std::sync::Mutex::new(None),
            mode: OnceCell::new(),
            fell_back: std::sync::Mutex::new(None),
        })
    }

    /// Makes the next full sync incremental: `prev` is the file's previous full sync (see
    /// `steward_sync::previous_sync`). Without delta links in it, or when Graph says they expired, the
    /// sync reads everything (and says why in the log).
    pub fn set_previous(&self, prev: steward_sync::Previous) {
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(prev);
    }

    /// `incremental` when this sync read only the changes, `full` when it read everything, `None`
    /// before it started listing.
    pub fn sync_mode(&self) -> Option<&'static str> {
        self.mode.get().map(|m| match m {
            Mode::Full(_) => "full",
            Mode::Incremental(_) => "incremental",
        })
    }

    /// Why an incremental sync read everything instead (also logged), if it did.
    pub fn fell_back(&self) -> Option<String> {
        self.fell_back.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Decides, once per sync and before anything is listed, how the tenant is read.
    async fn mode(&self) -> Result<&Mode, EntraError> {
        self.mode
            .get_or_try_init(|| async {
                self.size().await?;
                let prev = self.previous.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(prev) = prev {
                    let cx = inc::Ctx {
                        graph: &self.graph,
                        cfg: &self.cfg,
                        sign_in: self.sign_in().await,
                    };
                    match inc::prepare(cx, prev).await? {
                        Ok(ch) => return Ok(Mode::Incremental(Arc::new(ch))),
                        Err(why) => {
                            *self.fell_back.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                        }
                    }
                }
                // Links are a convenience for the next sync: without them this sync still runs.
                let links = match inc::latest(&self.graph).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(
                            "could not take Graph delta links ({e}); this sync runs, and the next --incremental sync will read everything"
                        );
                        None
                    }
                };
                Ok::<_, EntraError>(Mode::Full(links))
            })
            .await
    }

    /// The incremental changes, when this sync is incremental (never starts one).
    fn changes(&self) -> Option<&Arc<Changes>> {
        match self.mode.get() {
            Some(Mode::Incremental(c)) => Some(c),
            _ => None,
        }
    }

    /// Graph request statistics so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.graph.stats()
    }

    /// Tokens fetched so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.ms.tokens().fetched()
    }

    /// Members, owners and assignees left out because they are not synced (devices, contacts, on-prem
    /// groups under `skip_ad_groups`, excluded Microsoft apps) or point at an app role that no longer exists.
    pub fn left_out(&self) -> u64 {
        self.left_out.load(Ordering::Relaxed)
    }

    /// The Graph client.
    pub fn graph(&self) -> &Client {
        &self.graph
    }

    /// Checks credentials and the basic read permission, and sizes the throttle budget.
    pub async fn check(&self) -> Result<(), EntraError> {
        self.graph
            .get_json("/v1.0/organization?$select=id,displayName", false)
            .await?;
        self.size().await
    }

    async fn size(&self) -> Result<(), EntraError> {
        self.sized
            .get_or_try_init(|| async {
                let n = self.graph.get_json("/v1.0/users/$count", true).await?;
                let users = n.as_f64().unwrap_or(0.0) as u64;
                self.graph.set_tenant_users(users);
                tracing::info!(users, budget = ?self.graph.budget().shape(), "sized the Graph throttle budget");
                Ok::<(), EntraError>(())
            })
            .await?;
        Ok(())
    }

    async fn index(&self) -> Result<Arc<Index>, EntraError> {
        if let Some(c) = self.changes() {
            return Ok(c.index.clone());
        }
        let dir = self.directory().await?;
        let ix = self
            .index
            .get_or_try_init(|| async { dir.with_users(&self.chain).await.map(Arc::new) })
            .await?;
        Ok(ix.clone())
    }

    /// The directory part of the index (groups and service principals; the full index of an incremental
    /// sync).
    async fn directory(&self) -> Result<Arc<Index>, EntraError> {
        if let Some(c) = self.changes() {
            return Ok(c.index.clone());
        }
        self.size().await?;
        let ix = self
            .directory
            .get_or_try_init(|| async { Index::directory(&self.chain, &self.cfg).await.map(Arc::new) })
            .await?;
        Ok(ix.clone())
    }

    /// The kind of principal `id` (of the type Graph `stated`): from the directory part when the type says
    /// enough, else from the full index (read once into `full`). `None` (counted as left out) when it is
    /// not synced.
    async fn kind_of(
        &self,
        dir: &Index,
        full: &mut Option<Arc<Index>>,
        id: &str,
        stated: Stated,
    ) -> Result<Option<Kind>, EntraError> {
        let k = match dir.typed(id, stated) {
            Ok(k) => k,
            Err(()) => {
                if full.is_none() {
                    *full = Some(self.index().await?);
                }
                full.as_ref().and_then(|f| f.kind(id))
            }
        };
        if k.is_none() {
            self.left_out.fetch_add(1, Ordering::Relaxed);
        }
        Ok(k)
    }

    /// Users' managers, read once per sync in concurrent slices planned from the index.
    async fn managers(&self) -> Result<Arc<Managers>, EntraError> {
        let ix = self.index().await?;
        let m = self
            .managers
            .get_or_try_init(|| async { Managers::load(&self.chain, &ix.upns).await.map(Arc::new) })
            .await?;
        Ok(m.clone())
    }

    /// How the managers were read, once they were: (slices, users in the largest slice).
    pub fn manager_slices(&self) -> Option<(usize, usize)> {
        self.managers.get().map(|m| (m.slices, m.largest_slice))
    }

    async fn role_holders(&self) -> Result<Arc<RoleHolders>, EntraError> {
        let mut slot = self.roles.lock().await;
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(RoleHolders::load(&self.graph, self.cfg.skip_p2).await?);
        *slot = Some(r.clone());
        Ok(r)
    }

    /// Forgets the role holders read so far (after a role was granted or revoked), so that the next
    /// (partial) sync reads them again.
    pub(crate) async fn reset_role_holders(&self) {
        *self.roles.lock().await = None;
    }

    /// The settings.
    pub fn config(&self) -> &EntraConfig {
        &self.cfg
    }

    /// Whether `signInActivity` can be read (needs AuditLog.Read.All and Entra ID P1).
    async fn sign_in(&self) -> bool {
        *self
            .sign_in
            .get_or_init(|| async {
                match self
                    .graph
                    .get_json("/v1.0/users?$select=id,signInActivity&$top=1", false)
                    .await
                {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::info!("last sign-in times are not synced: {e}");
                        false
                    }
                }
            })
            .await
    }

    fn resolve(&self, ix: &Index, id: Option<&str>) -> Option<(Kind, String)> {
        let id = id?;
        match ix.kind(id) {
            Some(k) => Some((k, id.to_owned())),
            None => {
                self.left_out.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    async fn list_users(&self, token: &str) -> Result<Page<Resource>, EntraError> {
        self.size().await?;
        let url = if token.is_empty() {
            let (sel, top) = if self.sign_in().await {
                (format!("{},signInActivity", users::USER_SELECT), 500)
            } else {
                (users::USER_SELECT.to_owned(), 999)
            };
            format!("/v1.0/users?$select={sel}&$top={top}")
        } else {
            token.to_owned()
        };
        // The page and the managers concurrently: the read-ahead keeps going while managers are read.
        let (page, managers) = futures::try_join!(
            async {
                self.user_pages
                    .page(&self.chain, &url)
                    .await
                    .map_err(EntraError::from)
            },
            self.managers()
        )?;
        let ids: Vec<&str> = page
            .items
            .iter()
            .map(|u| u["id"].as_str().unwrap_or_default())
            .collect();
        let (bosses, purposes) =
            futures::try_join!(managers.of(&self.graph, &ids), self.mailbox_purposes(&ids))?;
        let items = page
            .items
            .iter()
            .zip(bosses)
            .zip(purposes)
            .filter_map(|((u, m), p)| users::user(u, m.as_deref(), p.as_deref()))
            .collect();
        Ok(Page {
            items,
            next_page_token: page.next_link.unwrap_or_default(),
        })
    }

    /// Mailbox purposes of `ids` through `$batch` with `--mailbox-settings`, else none.
    async fn mailbox_purposes(&self, ids: &[&str]) -> Result<Vec<Option<String>>, EntraError> {
        mailbox_purposes(&self.graph, self.cfg.mailbox_settings, ids).await
    }

    /// One user by id, with its manager (and mailbox purpose), or `None` when it does not exist.
    async fn one_user(&self, id: &str) -> Result<Option<Resource>, EntraError> {
        self.size().await?;
        let sel = if self.sign_in().await {
            format!("{},signInActivity", users::USER_SELECT)
        } else {
            users::USER_SELECT.to_owned()
        };
        let path = format!("/v1.0/users/{id}?$select={sel}&$expand=manager($select=id)");
        let v = match self.graph.get_json(&path, false).await {
            Ok(v) => v,
            Err(GraphError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let purpose = self.mailbox_purposes(&[id]).await?.pop().flatten();
        let manager = crate::managers::manager_of(&v);
        Ok(users::user(&v, manager.as_deref(), purpose.as_deref()))
    }

    async fn list_groups(&self, token: &str) -> Result<Page<Resource>, EntraError> {
        self.size().await?;
        let url = if token.is_empty() {
            format!("/v1.0/groups?$select={}&$top=999", groups::GROUP_SELECT)
        } else {
            token.to_owned()
        };
        let page = self.group_pages.page(&self.chain, &url).await?;
        let items = page
            .items
            .iter()
            .filter(|g| !(self.cfg.skip_ad_groups && index::is_on_prem(g)))
            .filter_map(groups::group)
            .collect();
        Ok(Page {
            items,
            next_page_token: page.next_link.unwrap_or_default(),
        })
    }

    /// Grants of `ent` to the directory objects of one members/owners page (typed by `@odata.type`).
    async fn object_grants(
        &self,
        dir: &Index,
        full: &mut Option<Arc<Index>>,
        ent: &Entitlement,
        items: &[Value],
        out: &mut Vec<Grant>,
    ) -> Result<(), EntraError> {
        for o in items {
            let Some(id) = o["id"].as_str() else { continue };
            let stated = Stated::of_odata(o["@odata.type"].as_str());
            if let Some(k) = self.kind_of(dir, full, id, stated).await? {
                out.push(grants::to(ent, k, id));
            }
        }
        Ok(())
    }

    async fn group_grants(&self, r: &Resource, token: &str) -> Result<Page<Grant>, EntraError> {
        let dir = self.directory().await?;
        let id = rid(r)?;
        let ents = groups::entitlements(r);
        let (member, owner) = (&ents[0], &ents[1]);
        let mut out = Vec::new();
        let mut full = None;
        if let Some(ch) = self.changes().filter(|c| !c.group_is_new(&id)) {
            let ix = self.index().await?;
            let (members, owners) = ch.group_principals(&id)?;
            for (ent, list) in [(owner, owners), (member, members)] {
                for p in list {
                    if let Some((k, pid)) = self.resolve(&ix, Some(&p)) {
                        out.push(grants::to(ent, k, &pid));
                    }
                }
            }
            return Ok(Page::last(out));
        }
        let members = if let Some(next) = token.strip_prefix("m|") {
            self.chain.get_page(next, false).await?
        } else {
            let m = format!("/v1.0/groups/{id}/members?$select=id&$top=999");
            let o = format!("/v1.0/groups/{id}/owners?$select=id&$top=999");
            let (members, owners) =
                futures::try_join!(self.graph.get_page(&m, false), self.graph.get_all(&o, false))?;
            self.object_grants(&dir, &mut full, owner, &owners, &mut out)
                .await?;
            members
        };
        self.object_grants(&dir, &mut full, member, &members.items, &mut out)
            .await?;
        Ok(Page {
            items: out,
            next_page_token: members.next_link.map(|n| format!("m|{n}")).unwrap_or_default(),
        })
    }

    async fn app_grants(&self, r: &Resource, token: &str) -> Result<Page<Grant>, EntraError> {
        let dir = self.directory().await?;
        let id = rid(r)?;
        let ents = apps::entitlements(r);
        let owner = &ents[0];
        let mut out = Vec::new();
        let mut full = None;
        if let Some(ch) = self.changes().filter(|c| !c.app_is_dirty(&id)) {
            let ix = self.index().await?;
            for (slug, p) in ch.app_grants(&id)? {
                let Some(ent) = ents.iter().find(|e| e.slug == slug) else {
                    self.left_out.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Some((k, pid)) = self.resolve(&ix, Some(&p)) {
                    out.push(grants::to(ent, k, &pid));
                }
            }
            return Ok(Page::last(out));
        }
        let assigned = if let Some(next) = token.strip_prefix("a|") {
            self.chain.get_page(next, false).await?
        } else {
            let a = format!(
                "/v1.0/servicePrincipals/{id}/appRoleAssignedTo?$select=id,appRoleId,principalId,principalType&$top=999"
            );
            let o = format!("/v1.0/servicePrincipals/{id}/owners?$select=id&$top=999");
            let (assigned, owners) =
                futures::try_join!(self.graph.get_page(&a, false), self.graph.get_all(&o, false))?;
            self.object_grants(&dir, &mut full, owner, &owners, &mut out)
                .await?;
            assigned
        };
        for a in &assigned.items {
            let role = a["appRoleId"].as_str().unwrap_or(apps::DEFAULT_ACCESS);
            let slug = format!("assignment:{role}");
            let Some(ent) = ents.iter().find(|e| e.slug == slug) else {
                tracing::debug!(app = %id, role, "assignment to an app role the app no longer defines: left out");
                self.left_out.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Some(pid) = a["principalId"].as_str() else {
                continue;
            };
            let stated = Stated::of_principal_type(a["principalType"].as_str());
            if let Some(k) = self.kind_of(&dir, &mut full, pid, stated).await? {
                out.push(grants::to(ent, k, pid));
            }
        }
        Ok(Page {
            items: out,
            next_page_token: assigned.next_link.map(|n| format!("a|{n}")).unwrap_or_default(),
        })
    }

    async fn role_grants(&self, r: &Resource) -> Result<Page<Grant>, EntraError> {
        let ix = self.index().await?;
        let holders = self.role_holders().await?;
        let id = rid(r)?;
        let ents = roles::entitlements(r, holders.eligible.is_some());
        let mut out = Vec::new();
        for p in holders.assigned.get(&id).into_iter().flatten() {
            if let Some((k, pid)) = self.resolve(&ix, Some(p)) {
                out.push(grants::to(&ents[0], k, &pid));
            }
        }
        if let (Some(el), Some(ent)) = (&holders.eligible, ents.get(1)) {
            for p in el.get(&id).into_iter().flatten() {
                if let Some((k, pid)) = self.resolve(&ix, Some(p)) {
                    out.push(grants::to(ent, k, &pid));
                }
            }
        }
        Ok(Page::last(out))
    }

    async fn license_grants(&self, r: &Resource, token: &str) -> Result<Page<Grant>, EntraError> {
        let ix = self.index().await?;
        let sku = rid(r)?;
        let ent = &licenses::entitlements(r)[0];
        if let Some(ch) = self.changes() {
            let holders = ch.license_holders(&sku)?;
            let (items, next) = offset_page(&holders, token);
            return Ok(Page {
                items: items.iter().map(|u| grants::to(ent, Kind::User, u)).collect(),
                next_page_token: next,
            });
        }
        let holders = ix.license_holders(&sku);
        let (items, next) = offset_page(holders, token);
        Ok(Page {
            items: items.iter().map(|u| grants::to(ent, Kind::User, u)).collect(),
            next_page_token: next,
        })
    }

    async fn resources(&self, rt: &str, token: &str) -> Result<Page<Resource>, EntraError> {
        if let Mode::Incremental(ch) = self.mode().await?
            && (rt == types::USER || rt == types::GROUP)
        {
            let (items, next_page_token) = ch.resources(rt, token)?;
            return Ok(Page {
                items,
                next_page_token,
            });
        }
        match rt {
            types::USER => self.list_users(token).await,
            types::GROUP => self.list_groups(token).await,
            types::MANAGED_IDENTITY => {
                let ix = self.index().await?;
                let (items, next) = offset_page(&ix.managed_identities, token);
                Ok(Page {
                    items: items.iter().filter_map(users::managed_identity).collect(),
                    next_page_token: next,
                })
            }
            types::APP => {
                let ix = self.index().await?;
                let (items, next) = offset_page(&ix.apps, token);
                Ok(Page {
                    items: items.iter().filter_map(apps::app).collect(),
                    next_page_token: next,
                })
            }
            types::ROLE => {
                self.size().await?;
                // Read role holders now, so that every role's entitlements agree on PIM.
                let (defs, _) = futures::try_join!(
                    async {
                        self.graph
                            .get_all(
                                "/v1.0/roleManagement/directory/roleDefinitions?$select=id,displayName,description,isBuiltIn,isEnabled,templateId",
                                false,
                            )
                            .await
                            .map_err(EntraError::from)
                    },
                    self.role_holders()
                )?;
                Ok(Page::last(defs.iter().filter_map(roles::role).collect()))
            }
            types::LICENSE => {
                self.size().await?;
                let skus = self.graph.get_all("/v1.0/subscribedSkus", false).await?;
                Ok(Page::last(skus.iter().filter_map(licenses::license).collect()))
            }
            _ => Ok(Page::default()),
        }
    }

    /// One resource by id, read directly (partial syncs after a change): `None` when it does not exist or
    /// is not synced (an on-premises group under `skip_ad_groups`, an excluded Microsoft app).
    async fn one_resource(&self, id: &ResourceId) -> Result<Option<Resource>, EntraError> {
        let rid = id.resource.as_str();
        let found = |r: Result<Value, GraphError>| match r {
            Ok(v) => Ok(Some(v)),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(e) => Err(EntraError::from(e)),
        };
        match id.resource_type.as_str() {
            types::GROUP => {
                self.size().await?;
                let path = format!("/v1.0/groups/{rid}?$select={}", groups::GROUP_SELECT);
                let v = found(self.graph.get_json(&path, false).await)?;
                Ok(v.filter(|g| !(self.cfg.skip_ad_groups && index::is_on_prem(g)))
                    .as_ref()
                    .and_then(groups::group))
            }
            types::APP | types::MANAGED_IDENTITY => {
                let ix = self.index().await?;
                let mi = id.resource_type == types::MANAGED_IDENTITY;
                let list = if mi { &ix.managed_identities } else { &ix.apps };
                let v = list.iter().find(|a| a["id"].as_str() == Some(rid));
                Ok(if mi {
                    v.and_then(users::managed_identity)
                } else {
                    v.and_then(apps::app)
                })
            }
            types::ROLE => {
                self.size().await?;
                // Role holders first, so that the role's entitlements agree on PIM.
                self.role_holders().await?;
                let path = format!(
                    "/v1.0/roleManagement/directory/roleDefinitions/{rid}?$select=id,displayName,description,isBuiltIn,isEnabled,templateId"
                );
                let v = found(self.graph.get_json(&path, false).await)?;
                Ok(v.as_ref().and_then(roles::role))
            }
            types::USER => self.one_user(rid).await,
            rt => {
                // Licenses: scan their listing (they are few).
                let mut token = String::new();
                loop {
                    let page = self.resources(rt, &token).await?;
                    if let Some(r) = page.items.into_iter().find(|r| r.id.as_ref() == Some(id)) {
                        return Ok(Some(r));
                    }
                    if page.next_page_token.is_empty() {
                        return Ok(None);
                    }
                    token = page.next_page_token;
                }
            }
        }
    }

    async fn entitlements(&self, r: &Resource) -> Result<Vec<Entitlement>, EntraError> {
        let rt =
            r.id.as_ref()
                .map(|i| i.resource_type.as_str())
                .unwrap_or_default();
        Ok(match rt {
            types::GROUP => groups::entitlements(r),
            types::APP => apps::entitlements(r),
            types::ROLE => roles::entitlements(r, self.role_holders().await?.eligible.is_some()),
            types::LICENSE => licenses::entitlements(r),
            _ => Vec::new(),
        })
    }

    async fn grants_of(&self, r: &Resource, token: &str) -> Result<Page<Grant>, EntraError> {
        let rt =
            r.id.as_ref()
                .map(|i| i.resource_type.as_str())
                .unwrap_or_default();
        match rt {
            types::GROUP => self.group_grants(r, token).await,
            types::APP => self.app_grants(r, token).await,
            types::ROLE => self.role_grants(r).await,
            types::LICENSE => self.license_grants(r, token).await,
            _ => Ok(Page::default()),
        }
    }
}

/// Mailbox purposes of `ids` through `$batch` when `enabled`, else none.
pub(crate) async fn mailbox_purposes(
    g: &Client,
    enabled: bool,
    ids: &[&str],
) -> Result<Vec<Option<String>>, EntraError> {
    if !enabled {
        return Ok(vec![None; ids.len()]);
    }
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/v1.0/users/{id}/mailboxSettings?$select=userPurpose"))
        .collect();
    let mut out = Vec::with_capacity(paths.len());
    for r in g.batch_get(&paths).await {
        match r {
            Ok(v) => out.push(v["userPurpose"].as_str().map(str::to_owned)),
            Err(GraphError::NotFound { .. }) => out.push(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn rid(r: &Resource) -> Result<String, EntraError> {
    r.id.as_ref()
        .map(|i| i.resource.clone())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EntraError::ForeignResource(r.display_name.clone()))
}

fn offset_page<'a, T>(all: &'a [T], token: &str) -> (&'a [T], String) {
    let start = token
        .rsplit('|')
        .next()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0)
        .min(all.len());
    let end = (start + OFFSET_PAGE).min(all.len());
    let next = if end < all.len() {
        end.to_string()
    } else {
        String::new()
    };
    (&all[start..end], next)
}

impl Connector for Entra {
    async fn validate(&self) -> Result<(), ConnectorError> {
        Ok(self.check().await?)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resource_types: types::all()
                .into_iter()
                .map(|t| ResourceTypeCapability {
                    provision: self.cfg.provisioning
                        && matches!(t.id.as_str(), types::GROUP | types::APP | types::ROLE),
                    resource_type: t.id,
                    sync: true,
                })
                .collect(),
        }
    }

    async fn resource_types(&self) -> Result<Vec<ResourceType>, ConnectorError> {
        Ok(types::all())
    }

    /// The delta links taken before this sync read anything (or those its incremental read ended
    /// with); none for a sync that listed nothing (a partial sync).
    async fn sync_state(&self) -> Result<Option<String>, ConnectorError> {
        Ok(self.mode.get().and_then(Mode::links).map(Links::to_json))
    }

    async fn list_resources(
        &self,
        resource_type: &str,
        _parent: Option<&ResourceId>,
        page_token: &str,
    ) -> Result<Page<Resource>, ConnectorError> {
        Ok(self.resources(resource_type, page_token).await?)
    }

    async fn get_resource(&self, id: &ResourceId) -> Result<Option<Resource>, ConnectorError> {
        Ok(self.one_resource(id).await?)
    }

    async fn list_entitlements(
        &self,
        resource: &Resource,
        _page_token: &str,
    ) -> Result<Page<Entitlement>, ConnectorError> {
        Ok(Page::last(self.entitlements(resource).await?))
    }

    async fn list_grants(
        &self,
        resource: &Resource,
        page_token: &str,
    ) -> Result<Page<Grant>, ConnectorError> {
        Ok(self.grants_of(resource, page_token).await?)
    }

    /// Grants through [`Entra::grant_entitlement`] (no end time); "already held" is success too.
    async fn grant(
        &self,
        principal: &Resource,
        entitlement: &Entitlement,
    ) -> Result<Vec<Grant>, ConnectorError> {
        let pid = principal
            .id
            .clone()
            .ok_or_else(|| EntraError::ForeignResource(principal.display_name.clone()))?;
        let kind = provision::kind_of(&pid.resource_type).ok_or_else(|| {
            EntraError::Refused(format!(
                "'{}' is not a principal type of the Entra ID connector",
                pid.resource_type
            ))
        })?;
        self.grant_entitlement(&entitlement.id, &pid, &GrantOptions::default())
            .await?;
        Ok(vec![grants::to(entitlement, kind, &pid.resource)])
    }

    /// Revokes through [`Entra::revoke_grant`]; "already absent" is success too.
    async fn revoke(&self, grant: &Grant) -> Result<(), ConnectorError> {
        let ent = grant
            .entitlement
            .as_ref()
            .map(|e| e.id.clone())
            .unwrap_or_default();
        let principal = grant.principal.as_ref().and_then(|p| p.id.clone());
        match principal {
            Some(pid) if !ent.is_empty() => {
                self.revoke_entitlement(&ent, &pid).await?;
            }
            _ => {
                self.revoke_grant(&grant.id).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_pages() {
        let v: Vec<u32> = (0..2_500).collect();
        let (a, n) = offset_page(&v, "");
        assert_eq!((a.len(), n.as_str()), (1_000, "1000"));
        let (b, n) = offset_page(&v, &n);
        assert_eq!((b[0], n.as_str()), (1_000, "2000"));
        let (c, n) = offset_page(&v, &n);
        assert_eq!((c.len(), n.as_str()), (500, ""));
    }
}
