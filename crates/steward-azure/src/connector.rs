//! [`Azure`]: the `Connector` implementation.
//!
//! * `tenant`, `subscription` top level; `resource_group` and `role` children of a subscription;
//!   `storage_account` child of its resource group; `container` child of its storage account.
//! * `user`, `group`, `enterprise_application`: delegated to the Entra ID connector ([`Entra`]), or copied
//!   from `--external-resource-c1z`. `managed_identity`: user-assigned ones from ARM, system-assigned ones
//!   from Graph (mapped by the Entra ID connector's code), or from the external file.
//! * Scope resources (subscription, resource group, storage account, container) carry one entitlement per
//!   role assigned at or above them (`role:<guid>`, and `role:<guid>:eligible` for PIM). An assignment at
//!   exactly that scope is a grant to its principal (groups expandable to their members). An assignment
//!   above it becomes one grant per (role, ancestor scope where it is assigned) to that ancestor scope
//!   resource, `GrantExpandable` *shallow* from the ancestor's entitlement of the same role: the writer's
//!   expansion gives each principal assigned there the grant here, with the ancestor's entitlement as its
//!   source — so the path says where it was assigned. Shallow keeps the file linear in assignments × scopes:
//!   a group assigned at a subscription holds the role on every resource group below it, and its members
//!   hold it at the subscription (group expansion), but members × child scopes are not materialised.
//!   Assignments above a subscription (management groups, root) are grants on the subscription's
//!   entitlement.
//! * Principals of assignments resolve through the directory index (one listing per sync); an id the sync
//!   does not emit (deleted principal, device, on-prem group under `--skip-ad-groups`) is left out and counted.
//! * Every ARM id is emitted in [`scope::canonical`] form, whatever spelling ARM answered with, so scope
//!   resources, their entitlements and the ancestors inherited grants name all agree.
//! * `get_resource` (partial syncs) finds a scope resource in its parent's listing; roles and assignments
//!   of a subscription are cached for the connector's life and forgotten after a grant or revoke there.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use steward_entra::index::{Index, Kind};
use steward_entra::{Entra, grants as entra_grants, users as entra_users};
use steward_model::pb::entitlement::PurposeValue;
use steward_model::{
    AnnotationsExt, ChildResourceType, Entitlement, Grant, GrantExpandable, Resource, ResourceId,
    ResourceType, builders, ids, pack_any, profile,
};
use steward_msgraph::{Client, Microsoft, StatsSnapshot};
use steward_sync::{Capabilities, Connector, ConnectorError, Page, ResourceTypeCapability};
use tokio::sync::OnceCell;

use crate::arm::{self, PerKey, SubData};
use crate::config::AzureConfig;
use crate::error::AzureError;
use crate::external::External;
use crate::{scope, types};

/// The Azure Infrastructure connector. See the module docs.
pub struct Azure {
    pub(crate) cfg: AzureConfig,
    ms: Microsoft,
    graph: Client,
    entra: Entra,
    arm_root: Client,
    arm_subs: Mutex<BTreeMap<String, Client>>,
    subs: PerKey<SubData>,
    storage: PerKey<Vec<Value>>,
    identities: PerKey<Vec<Value>>,
    sub_ids: OnceCell<Arc<Vec<String>>>,
    index: OnceCell<Arc<Index>>,
    external: Option<Arc<External>>,
    left_out: AtomicU64,
    p2_warned: AtomicBool,
}

impl std::fmt::Debug for Azure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Azure")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Request counters of a sync.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct AzureStats {
    /// ARM (all subscriptions).
    pub arm: StatsSnapshot,
    /// Graph, this connector's own client (the directory index).
    pub graph: StatsSnapshot,
    /// Graph, the Entra ID connector's client (users, groups, applications).
    pub entra: StatsSnapshot,
}

fn add(a: &mut StatsSnapshot, b: StatsSnapshot) {
    a.requests += b.requests;
    a.batched += b.batched;
    a.throttled += b.throttled;
    a.retries += b.retries;
    a.resource_units += b.resource_units;
}

impl Azure {
    /// A connector for `cfg` (reads `--external-resource-c1z` if set; no request is made yet).
    pub fn new(cfg: AzureConfig) -> Result<Azure, AzureError> {
        let ms = cfg.entra.microsoft()?;
        let external = match &cfg.external_resource_c1z {
            Some(p) => Some(Arc::new(External::load(p)?)),
            None => None,
        };
        Ok(Azure {
            graph: ms.graph(),
            arm_root: ms.arm(),
            entra: Entra::new(cfg.entra.clone())?,
            ms,
            cfg,
            arm_subs: Mutex::new(BTreeMap::new()),
            subs: PerKey::default(),
            storage: PerKey::default(),
            identities: PerKey::default(),
            sub_ids: OnceCell::new(),
            index: OnceCell::new(),
            external,
            left_out: AtomicU64::new(0),
            p2_warned: AtomicBool::new(false),
        })
    }

    /// The settings.
    pub fn config(&self) -> &AzureConfig {
        &self.cfg
    }

    /// Request counters so far.
    pub fn stats(&self) -> AzureStats {
        let mut s = AzureStats {
            arm: self.arm_root.stats(),
            graph: self.graph.stats(),
            entra: self.entra.stats(),
        };
        let subs = match self.arm_subs.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        for c in subs.values() {
            add(&mut s.arm, c.stats());
        }
        s
    }

    /// ARM requests sent per subscription (tenant-level calls under `""`).
    pub fn arm_requests_by_subscription(&self) -> BTreeMap<String, u64> {
        let subs = match self.arm_subs.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let mut out: BTreeMap<String, u64> = subs
            .iter()
            .map(|(k, c)| (k.clone(), c.stats().requests))
            .collect();
        out.insert(String::new(), self.arm_root.stats().requests);
        out
    }

    /// Role-assignment principals left out because the sync does not emit them.
    pub fn left_out(&self) -> u64 {
        self.left_out.load(Ordering::Relaxed) + self.entra.left_out()
    }

    /// The ARM client of subscription `sub` (its own throttle bucket, as ARM's).
    pub(crate) fn arm(&self, sub: &str) -> Client {
        let mut m = match self.arm_subs.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(sub.to_ascii_lowercase())
            .or_insert_with(|| self.ms.arm())
            .clone()
    }

    /// Checks the ARM and Graph credentials.
    pub async fn check(&self) -> Result<(), AzureError> {
        self.arm_root
            .get_json(
                &format!("/subscriptions?api-version={}", arm::RESOURCES_API),
                false,
            )
            .await?;
        if self.external.is_none() {
            self.entra.check().await?;
        }
        Ok(())
    }

    pub(crate) async fn sub_data(&self, sub: &str) -> Result<Arc<SubData>, AzureError> {
        let cell = self.subs.cell(sub);
        let d = cell
            .get_or_try_init(|| async {
                let d = SubData::load(&self.arm(sub), sub, self.cfg.entra.skip_p2).await?;
                if d.p2_missing && !self.p2_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the tenant has no Microsoft Entra ID P2 (or ID Governance) license, so PIM-eligible Azure role assignments cannot be read and are not synced; set --skip-p2-features (BATON_SKIP_P2_FEATURES=true) to skip them without this warning"
                    );
                }
                Ok::<_, AzureError>(Arc::new(d))
            })
            .await?;
        Ok(d.clone())
    }

    /// Forgets what was read of subscription `sub`'s roles and assignments, after a change there: the
    /// next listing (e.g. the partial sync confirming the change) reads them again.
    pub(crate) fn changed(&self, sub: &str) {
        self.subs.forget(sub);
    }

    /// Whether the P2 warning was given (the tenant lacks Entra ID P2 and `skip_p2` is off).
    pub fn p2_missing(&self) -> bool {
        self.p2_warned.load(Ordering::Relaxed)
    }

    async fn per_sub_list(
        &self,
        cache: &PerKey<Vec<Value>>,
        sub: &str,
        path: String,
    ) -> Result<Arc<Vec<Value>>, AzureError> {
        let cell = cache.cell(sub);
        let v = cell
            .get_or_try_init(|| async {
                Ok::<_, AzureError>(Arc::new(self.arm(sub).get_all(&path, false).await?))
            })
            .await?;
        Ok(v.clone())
    }

    async fn subscription_ids(&self) -> Result<Arc<Vec<String>>, AzureError> {
        let v = self
            .sub_ids
            .get_or_try_init(|| async {
                let all = self
                    .arm_root
                    .get_all(
                        &format!("/subscriptions?api-version={}", arm::RESOURCES_API),
                        false,
                    )
                    .await?;
                Ok::<_, AzureError>(Arc::new(
                    all.iter()
                        .filter_map(|s| s["subscriptionId"].as_str().map(str::to_ascii_lowercase))
                        .collect(),
                ))
            })
            .await?;
        Ok(v.clone())
    }

    async fn graph_index(&self) -> Result<Arc<Index>, AzureError> {
        let ix = self
            .index
            .get_or_try_init(|| async {
                Index::build(&self.graph, &self.cfg.entra)
                    .await
                    .map(Arc::new)
                    .map_err(AzureError::from)
            })
            .await?;
        Ok(ix.clone())
    }

    /// What kind of synced principal `id` is (`None`: not synced).
    async fn kind_of(&self, id: &str) -> Result<Option<Kind>, AzureError> {
        Ok(match &self.external {
            Some(x) => x.kind(id),
            None => self.graph_index().await?.kind(id),
        })
    }

    // ---- listing ------------------------------------------------------------------------------------

    async fn tenants(&self) -> Result<Page<Resource>, AzureError> {
        let all = self
            .arm_root
            .get_all(&format!("/tenants?api-version={}", arm::RESOURCES_API), false)
            .await?;
        let items = all
            .iter()
            .filter_map(|t| {
                let id = t["tenantId"].as_str()?;
                let name = t["displayName"].as_str().unwrap_or(id);
                let p = profile::struct_from_json_map(&obj(json!({
                    "tenant_id": id, "display_name": name,
                    "default_domain": t["defaultDomain"], "tenant_category": t["tenantCategory"],
                })));
                Some(
                    builders::ResourceBuilder::new(types::TENANT, id, name)
                        .profile(p)
                        .build(),
                )
            })
            .collect();
        Ok(Page::last(items))
    }

    async fn subscriptions(&self, token: &str) -> Result<Page<Resource>, AzureError> {
        let url = if token.is_empty() {
            format!("/subscriptions?api-version={}", arm::RESOURCES_API)
        } else {
            token.to_owned()
        };
        let page = self.arm_root.get_page(&url, false).await?;
        let items = page
            .items
            .iter()
            .filter_map(|s| {
                let id = s["subscriptionId"].as_str()?.to_ascii_lowercase();
                let name = s["displayName"].as_str().unwrap_or(&id);
                let p = profile::struct_from_json_map(&obj(json!({
                    "subscription_id": id, "display_name": name, "state": s["state"],
                    "tenant_id": s["tenantId"], "arm_id": format!("/subscriptions/{id}"),
                })));
                Some(
                    builders::ResourceBuilder::new(types::SUBSCRIPTION, &id, name)
                        .profile(p)
                        .annotation(child(types::RESOURCE_GROUP))
                        .annotation(child(types::ROLE))
                        .build(),
                )
            })
            .collect();
        Ok(Page {
            items,
            next_page_token: page.next_link.unwrap_or_default(),
        })
    }

    async fn resource_groups(&self, parent: &ResourceId, token: &str) -> Result<Page<Resource>, AzureError> {
        let sub = &parent.resource;
        let url = if token.is_empty() {
            format!(
                "/subscriptions/{sub}/resourcegroups?api-version={}",
                arm::GROUPS_API
            )
        } else {
            token.to_owned()
        };
        let page = self.arm(sub).get_page(&url, false).await?;
        let items = page
            .items
            .iter()
            .filter_map(|g| {
                let id = scope::canonical(g["id"].as_str()?);
                let name = g["name"].as_str().unwrap_or(&id);
                let p = profile::struct_from_json_map(&obj(json!({
                    "arm_id": id, "name": name, "subscription_id": sub, "location": g["location"],
                })));
                Some(
                    builders::ResourceBuilder::new(types::RESOURCE_GROUP, &id, name)
                        .parent(parent.clone())
                        .profile(p)
                        .annotation(child(types::STORAGE_ACCOUNT))
                        .build(),
                )
            })
            .collect();
        Ok(Page {
            items,
            next_page_token: page.next_link.unwrap_or_default(),
        })
    }

    async fn roles(&self, parent: &ResourceId) -> Result<Page<Resource>, AzureError> {
        let sub = &parent.resource;
        let d = self.sub_data(sub).await?;
        let used = d.used_roles();
        let items = d
            .roles
            .iter()
            .filter(|r| !self.cfg.skip_unused_roles || used.contains(r.guid.as_str()))
            .map(|r| {
                let p = profile::struct_from_json_map(&obj(json!({
                    "role_id": r.guid, "role_name": r.name, "description": r.description,
                    "role_type": if r.custom { "CustomRole" } else { "BuiltInRole" }, "subscription_id": sub,
                })));
                builders::ResourceBuilder::new(types::ROLE, &r.arm_id, &r.name)
                    .parent(parent.clone())
                    .description(r.description.clone())
                    .profile(p)
                    .role()
                    .build()
            })
            .collect();
        Ok(Page::last(items))
    }

    async fn storage_accounts(&self, parent: &ResourceId) -> Result<Page<Resource>, AzureError> {
        let rg = &parent.resource;
        let sub = scope::subscription_of(rg).ok_or_else(|| AzureError::Foreign(rg.clone()))?;
        let path = format!(
            "/subscriptions/{sub}/providers/Microsoft.Storage/storageAccounts?api-version={}",
            arm::STORAGE_API
        );
        let all = self.per_sub_list(&self.storage, sub, path).await?;
        let items = all
            .iter()
            .filter_map(|a| {
                let id = scope::canonical(a["id"].as_str()?);
                if !scope::covers(rg, &id) {
                    return None;
                }
                let name = a["name"].as_str().unwrap_or(&id);
                let p = profile::struct_from_json_map(&obj(json!({
                    "arm_id": id, "name": name, "subscription_id": sub, "location": a["location"], "kind": a["kind"],
                })));
                let mut b = builders::ResourceBuilder::new(types::STORAGE_ACCOUNT, &id, name)
                    .parent(parent.clone())
                    .profile(p);
                if !self.cfg.skip_storage_containers {
                    b = b.annotation(child(types::CONTAINER));
                }
                Some(b.build())
            })
            .collect();
        Ok(Page::last(items))
    }

    async fn containers(&self, parent: &ResourceId, token: &str) -> Result<Page<Resource>, AzureError> {
        let acct = &parent.resource;
        let sub = scope::subscription_of(acct).ok_or_else(|| AzureError::Foreign(acct.clone()))?;
        let url = if token.is_empty() {
            format!(
                "{acct}/blobServices/default/containers?api-version={}",
                arm::STORAGE_API
            )
        } else {
            token.to_owned()
        };
        let page = self.arm(sub).get_page(&url, false).await?;
        let items = page
            .items
            .iter()
            .filter_map(|c| {
                let id = scope::canonical(c["id"].as_str()?);
                let name = c["name"].as_str().unwrap_or(&id);
                let p = profile::struct_from_json_map(&obj(json!({
                    "arm_id": id, "name": name, "subscription_id": sub,
                    "public_access": c["properties"]["publicAccess"],
                })));
                Some(
                    builders::ResourceBuilder::new(types::CONTAINER, &id, name)
                        .parent(parent.clone())
                        .profile(p)
                        .build(),
                )
            })
            .collect();
        Ok(Page {
            items,
            next_page_token: page.next_link.unwrap_or_default(),
        })
    }

    /// User-assigned identities from ARM (every subscription, concurrently), then system-assigned ones
    /// from Graph (or the external file), both mapped by the Entra ID connector's code.
    async fn managed_identities(&self) -> Result<Page<Resource>, AzureError> {
        let subs = self.subscription_ids().await?;
        let lists = futures::future::try_join_all(subs.iter().map(|s| {
            let path = format!(
                "/subscriptions/{s}/providers/Microsoft.ManagedIdentity/userAssignedIdentities?api-version={}",
                arm::MSI_API
            );
            self.per_sub_list(&self.identities, s, path)
        }))
        .await?;
        let mut seen = HashSet::new();
        let mut items = Vec::new();
        for i in lists.iter().flat_map(|l| l.iter()) {
            let (Some(pid), Some(arm_id)) = (i["properties"]["principalId"].as_str(), i["id"].as_str())
            else {
                continue;
            };
            if !seen.insert(pid.to_ascii_lowercase()) {
                continue;
            }
            let sp = json!({"id": pid.to_ascii_lowercase(), "displayName": i["name"], "appId": i["properties"]["clientId"],
                "accountEnabled": true, "alternativeNames": ["isExplicit=True", arm_id]});
            items.extend(entra_users::managed_identity(&sp));
        }
        match &self.external {
            Some(x) => {
                for r in x.resources.get(types::MANAGED_IDENTITY).into_iter().flatten() {
                    let id =
                        r.id.as_ref()
                            .map(|i| i.resource.to_ascii_lowercase())
                            .unwrap_or_default();
                    if seen.insert(id) {
                        items.push(r.clone());
                    }
                }
            }
            None => {
                let ix = self.graph_index().await?;
                for sp in &ix.managed_identities {
                    let id = sp["id"].as_str().unwrap_or_default().to_ascii_lowercase();
                    if seen.insert(id) {
                        items.extend(entra_users::managed_identity(sp));
                    }
                }
            }
        }
        Ok(Page::last(items))
    }

    async fn resources(
        &self,
        rt: &str,
        parent: Option<&ResourceId>,
        token: &str,
    ) -> Result<Page<Resource>, AzureError> {
        match (rt, parent) {
            (types::TENANT, None) => self.tenants().await,
            (types::SUBSCRIPTION, None) => self.subscriptions(token).await,
            (types::RESOURCE_GROUP, Some(p)) if p.resource_type == types::SUBSCRIPTION => {
                self.resource_groups(p, token).await
            }
            (types::ROLE, Some(p)) if p.resource_type == types::SUBSCRIPTION => self.roles(p).await,
            (types::STORAGE_ACCOUNT, Some(p)) if p.resource_type == types::RESOURCE_GROUP => {
                self.storage_accounts(p).await
            }
            (types::CONTAINER, Some(p))
                if p.resource_type == types::STORAGE_ACCOUNT && !self.cfg.skip_storage_containers =>
            {
                self.containers(p, token).await
            }
            (types::MANAGED_IDENTITY, None) => self.managed_identities().await,
            (types::USER | types::GROUP | types::APP, None) => match &self.external {
                Some(x) => Ok(Page::last(x.resources.get(rt).cloned().unwrap_or_default())),
                None => Ok(self.entra.list_resources(rt, None, token).await?),
            },
            _ => Ok(Page::default()),
        }
    }

    /// One resource by id (partial syncs, e.g. after a one-shot grant): scope resources are found in
    /// their parent's listing (ids in any spelling), identities through the Entra ID code or the
    /// external file.
    async fn resource_by_id(&self, id: &ResourceId) -> Result<Option<Resource>, AzureError> {
        let rt = id.resource_type.as_str();
        let (want, parent) = match rt {
            types::SUBSCRIPTION => (id.resource.to_ascii_lowercase(), None),
            types::RESOURCE_GROUP | types::STORAGE_ACCOUNT | types::CONTAINER => {
                let want = scope::canonical(&id.resource);
                let Some((prt, pid)) = scope::parent(rt, &want) else {
                    return Ok(None);
                };
                (want, Some(ResourceId::new(prt, pid)))
            }
            types::USER | types::GROUP | types::APP if self.external.is_none() => {
                return Ok(self.entra.get_resource(id).await?);
            }
            _ => (id.resource.clone(), None),
        };
        let mut token = String::new();
        loop {
            let page = self.resources(rt, parent.as_ref(), &token).await?;
            let found = page.items.into_iter().find(|r| {
                r.id.as_ref()
                    .is_some_and(|i| i.resource.eq_ignore_ascii_case(&want))
            });
            if found.is_some() || page.next_page_token.is_empty() {
                return Ok(found);
            }
            token = page.next_page_token;
        }
    }

    // ---- entitlements and grants --------------------------------------------------------------------

    /// The role entitlements of scope resource `r`, keyed by (role GUID, eligible).
    async fn scope_entitlements(
        &self,
        r: &Resource,
    ) -> Result<(Arc<SubData>, BTreeMap<(String, bool), Entitlement>), AzureError> {
        let (rt, id) = rid(r)?;
        let sc = scope::of(&rt, &id).ok_or_else(|| AzureError::Foreign(id.clone()))?;
        let sub = scope::subscription_of(&sc)
            .ok_or_else(|| AzureError::Foreign(id.clone()))?
            .to_owned();
        let d = self.sub_data(&sub).await?;
        let principals = types::principals();
        let mut out = BTreeMap::new();
        for a in d.at_or_above(&sc) {
            let key = (a.role.clone(), a.eligible);
            if out.contains_key(&key) {
                continue;
            }
            let role = d.name(&a.role);
            let name = if a.eligible {
                format!("{role} (eligible) on {}", r.display_name)
            } else {
                format!("{role} on {}", r.display_name)
            };
            let mut e = builders::entitlement(
                r,
                &scope::slug(&a.role, a.eligible),
                &name,
                PurposeValue::Assignment,
                &principals,
            );
            e.description = format!(
                "Azure role {role} ({}){} at scope {sc} and below",
                a.role,
                if a.eligible { ", PIM-eligible" } else { "" }
            );
            out.insert(key, e);
        }
        Ok((d, out))
    }

    async fn scope_grants(&self, r: &Resource) -> Result<Vec<Grant>, AzureError> {
        let (rt, id) = rid(r)?;
        let sc = scope::of(&rt, &id).ok_or_else(|| AzureError::Foreign(id.clone()))?;
        let (d, ents) = self.scope_entitlements(r).await?;
        let mut out = Vec::new();
        // (role, eligible) → ancestor scopes (type, id) where it is assigned directly.
        let mut inherited: BTreeMap<(String, bool), BTreeSet<(String, String)>> = BTreeMap::new();
        for a in d.at_or_above(&sc) {
            let key = (a.role.clone(), a.eligible);
            let Some(ent) = ents.get(&key) else { continue };
            let here = scope::same(&a.scope, &sc);
            if here || rt == types::SUBSCRIPTION {
                match self.kind_of(&a.principal).await? {
                    Some(k) => out.push(entra_grants::to(ent, k, &a.principal)),
                    None => {
                        tracing::debug!(principal = %a.principal, ptype = %a.principal_type, scope = %a.scope, "role assignment to a principal this sync does not emit: left out");
                        self.left_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            } else if let Some(ak) = scope::kind(&a.scope) {
                // Assigned above the subscription: held directly at the subscription, so inherited from it.
                let from = if scope::subscription_of(&a.scope).is_none() {
                    (
                        types::SUBSCRIPTION.to_owned(),
                        scope::subscription_of(&sc).unwrap_or_default().to_owned(),
                    )
                } else if ak == types::SUBSCRIPTION {
                    (
                        ak.to_owned(),
                        scope::subscription_of(&a.scope).unwrap_or_default().to_owned(),
                    )
                } else {
                    (ak.to_owned(), a.scope.clone())
                };
                inherited.entry(key).or_default().insert(from);
            } else {
                let from = (
                    types::SUBSCRIPTION.to_owned(),
                    scope::subscription_of(&sc).unwrap_or_default().to_owned(),
                );
                inherited.entry(key).or_default().insert(from);
            }
        }
        for ((role, eligible), froms) in &inherited {
            let Some(ent) = ents.get(&(role.clone(), *eligible)) else {
                continue;
            };
            for (fty, fid) in froms {
                let from = ids::entitlement_id(fty, fid, &scope::slug(role, *eligible));
                let principal = Resource {
                    id: Some(ResourceId::new(fty.clone(), fid.clone())),
                    ..Default::default()
                };
                let mut g = builders::grant(ent, &principal);
                g.annotations.push_msg(&GrantExpandable {
                    entitlement_ids: vec![from],
                    shallow: true,
                    resource_type_ids: Vec::new(),
                });
                out.push(g);
            }
        }
        Ok(out)
    }

    async fn entitlements_of(&self, r: &Resource) -> Result<Vec<Entitlement>, AzureError> {
        let (rt, id) = rid(r)?;
        if types::SCOPES.contains(&rt.as_str()) {
            return Ok(self.scope_entitlements(r).await?.1.into_values().collect());
        }
        match (rt.as_str(), &self.external) {
            (types::GROUP | types::APP, Some(x)) => Ok(x
                .entitlements
                .get(&ids::resource_external_id(&rt, &id))
                .cloned()
                .unwrap_or_default()),
            (types::GROUP | types::APP, None) => {
                let mut out = Vec::new();
                let mut token = String::new();
                loop {
                    let p = self.entra.list_entitlements(r, &token).await?;
                    out.extend(p.items);
                    if p.next_page_token.is_empty() {
                        return Ok(out);
                    }
                    token = p.next_page_token;
                }
            }
            _ => Ok(Vec::new()),
        }
    }

    async fn grants_of(&self, r: &Resource, token: &str) -> Result<Page<Grant>, AzureError> {
        let (rt, id) = rid(r)?;
        if types::SCOPES.contains(&rt.as_str()) {
            return Ok(Page::last(self.scope_grants(r).await?));
        }
        match (rt.as_str(), &self.external) {
            (types::GROUP | types::APP, Some(x)) => Ok(Page::last(
                x.grants
                    .get(&ids::resource_external_id(&rt, &id))
                    .cloned()
                    .unwrap_or_default(),
            )),
            (types::GROUP | types::APP, None) => Ok(self.entra.list_grants(r, token).await?),
            _ => Ok(Page::default()),
        }
    }
}

pub(crate) fn rid(r: &Resource) -> Result<(String, String), AzureError> {
    r.id.as_ref()
        .filter(|i| !i.resource.is_empty())
        .map(|i| (i.resource_type.clone(), i.resource.clone()))
        .ok_or_else(|| AzureError::Foreign(format!("resource '{}'", r.display_name)))
}

fn child(rt: &str) -> steward_model::Any {
    pack_any(&ChildResourceType {
        resource_type_id: rt.to_owned(),
    })
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => serde_json::Map::new(),
    }
}

impl Connector for Azure {
    async fn validate(&self) -> Result<(), ConnectorError> {
        Ok(self.check().await?)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resource_types: types::all(self.cfg.skip_storage_containers)
                .into_iter()
                .map(|t| ResourceTypeCapability {
                    provision: types::SCOPES.contains(&t.id.as_str()),
                    resource_type: t.id,
                    sync: true,
                })
                .collect(),
        }
    }

    async fn resource_types(&self) -> Result<Vec<ResourceType>, ConnectorError> {
        Ok(types::all(self.cfg.skip_storage_containers))
    }

    async fn list_resources(
        &self,
        resource_type: &str,
        parent: Option<&ResourceId>,
        page_token: &str,
    ) -> Result<Page<Resource>, ConnectorError> {
        Ok(self.resources(resource_type, parent, page_token).await?)
    }

    async fn get_resource(&self, id: &ResourceId) -> Result<Option<Resource>, ConnectorError> {
        Ok(self.resource_by_id(id).await?)
    }

    async fn list_entitlements(
        &self,
        resource: &Resource,
        _page_token: &str,
    ) -> Result<Page<Entitlement>, ConnectorError> {
        Ok(Page::last(self.entitlements_of(resource).await?))
    }

    async fn list_grants(
        &self,
        resource: &Resource,
        page_token: &str,
    ) -> Result<Page<Grant>, ConnectorError> {
        Ok(self.grants_of(resource, page_token).await?)
    }

    async fn grant(
        &self,
        principal: &Resource,
        entitlement: &Entitlement,
    ) -> Result<Vec<Grant>, ConnectorError> {
        Ok(self.grant_role(principal, entitlement).await?)
    }

    async fn revoke(&self, grant: &Grant) -> Result<(), ConnectorError> {
        Ok(self.revoke_role(grant).await?)
    }
}
