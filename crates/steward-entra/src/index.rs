//! The directory index: every principal the sync will emit (users, groups, managed identities,
//! enterprise applications) by id, users' licenses by SKU, and the managed identities themselves.
//!
//! Built once per sync in two steps, from minimal listings (`$select`, `$top=999`): the *directory* part
//! (groups and service principals, a few pages read concurrently: ready in about a second), then the
//! users (a chain of n/999 pages: 101 on a 100,000-user tenant), which adds them to a copy. Grants resolve
//! their principals through it, which keeps the file referentially intact: a member, owner or assignee
//! that is not synced (an on-prem group under `skip_ad_groups`, an excluded Microsoft app, a device or
//! contact) is left out and counted, never written as a dangling reference. A principal whose type Graph
//! states (`@odata.type` of members and owners, `principalType` of app role assignments) is resolved
//! with the directory part alone — every user is synced, groups and service principals are in it — so
//! group and app grants need not wait for the user listing. The full index also sizes the throttle
//! budget from the tenant's user count.

use std::collections::HashMap;

use serde_json::Value;
use steward_msgraph::Client;

use crate::config::EntraConfig;
use crate::error::EntraError;
use crate::types;

/// A principal's type as Graph states it, for [`Index::typed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stated {
    /// A user.
    User,
    /// A group or a service principal: the directory part knows whether it is synced, and as what.
    Directory,
    /// Another kind of directory object (device, contact…): never synced.
    Other,
    /// Not stated: only the full index can tell.
    Unknown,
}

impl Stated {
    /// From a directory object's `@odata.type` (`#microsoft.graph.user`, …).
    pub fn of_odata(t: Option<&str>) -> Stated {
        match t.map(|t| t.trim_start_matches("#microsoft.graph.")) {
            None | Some("") | Some("directoryObject") => Stated::Unknown,
            Some("user") => Stated::User,
            Some("group" | "servicePrincipal") => Stated::Directory,
            Some(_) => Stated::Other,
        }
    }

    /// From an app role assignment's `principalType` (`User`, `Group`, `ServicePrincipal`).
    pub fn of_principal_type(t: Option<&str>) -> Stated {
        match t {
            Some(t) if t.eq_ignore_ascii_case("user") => Stated::User,
            Some(t) if t.eq_ignore_ascii_case("group") || t.eq_ignore_ascii_case("servicePrincipal") => {
                Stated::Directory
            }
            _ => Stated::Unknown,
        }
    }
}

/// Microsoft's own tenant: `appOwnerOrganizationId` of first-party service principals.
pub const MICROSOFT_TENANT: &str = "f8cdef31-a31e-4b4a-93e4-5f571e91255a";

/// What kind of synced principal an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A user.
    User,
    /// A group.
    Group,
    /// A managed identity's service principal.
    ManagedIdentity,
    /// Any other service principal (enterprise application).
    App,
}

impl Kind {
    /// The resource type of this kind.
    pub fn resource_type(self) -> &'static str {
        match self {
            Kind::User => types::USER,
            Kind::Group => types::GROUP,
            Kind::ManagedIdentity => types::MANAGED_IDENTITY,
            Kind::App => types::APP,
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct Index {
    kinds: HashMap<String, Kind>,
    licenses: HashMap<String, Vec<String>>,
    /// Managed identities, as listed (they are few; the `managed_identity` listing serves them from here).
    pub managed_identities: Vec<Value>,
    /// Enterprise applications, as listed (the `enterprise_application` listing serves them from here).
    pub apps: Vec<Value>,
    /// Users in the tenant.
    pub users: usize,
    /// Users' principal names (to plan the concurrent manager listings, see `managers`).
    pub upns: Vec<String>,
}

/// `$select` of the service principal listing (shared with the enterprise application listing).
pub const SP_SELECT: &str = "id,appId,displayName,servicePrincipalType,appOwnerOrganizationId,accountEnabled,appRoleAssignmentRequired,appRoles,tags,homepage,alternativeNames,signInAudience";

impl Index {
    /// Lists the directory and builds the full index (both steps).
    pub async fn build(g: &Client, cfg: &EntraConfig) -> Result<Index, EntraError> {
        Index::directory(g, cfg).await?.with_users(g).await
    }

    /// The directory part: groups and service principals (no users).
    pub async fn directory(g: &Client, cfg: &EntraConfig) -> Result<Index, EntraError> {
        let sp_url = format!("/v1.0/servicePrincipals?$select={SP_SELECT}&$top=999");
        let (groups, sps) = futures::try_join!(
            g.get_all("/v1.0/groups?$select=id,onPremisesSyncEnabled&$top=999", false),
            g.get_all(&sp_url, false),
        )?;
        let mut ix = Index::default();
        for gr in &groups {
            if cfg.skip_ad_groups && is_on_prem(gr) {
                continue;
            }
            if let Some(id) = id_of(gr) {
                ix.kinds.insert(id, Kind::Group);
            }
        }
        ix.add_service_principals(sps, cfg);
        Ok(ix)
    }

    /// A copy of this directory part with every user added (their principal names and licenses too); sizes
    /// `g`'s throttle budget from their number.
    pub async fn with_users(&self, g: &Client) -> Result<Index, EntraError> {
        let mut ix = Index {
            kinds: self.kinds.clone(),
            licenses: HashMap::new(),
            managed_identities: self.managed_identities.clone(),
            apps: self.apps.clone(),
            users: 0,
            upns: Vec::new(),
        };
        // Page by page: only one page of parsed users is held at a time.
        let mut url = "/v1.0/users?$select=id,userPrincipalName,assignedLicenses&$top=999".to_owned();
        loop {
            let page = g.get_page(&url, false).await?;
            ix.kinds.reserve(page.items.len());
            for u in &page.items {
                let Some(id) = id_of(u) else { continue };
                ix.users += 1;
                if let Some(upn) = u["userPrincipalName"].as_str() {
                    ix.upns.push(upn.to_owned());
                }
                for l in u["assignedLicenses"].as_array().into_iter().flatten() {
                    if let Some(sku) = l["skuId"].as_str() {
                        ix.licenses
                            .entry(sku.to_ascii_lowercase())
                            .or_default()
                            .push(id.clone());
                    }
                }
                ix.kinds.insert(id, Kind::User);
            }
            match page.next_link {
                Some(n) => url = n,
                None => break,
            }
        }
        g.set_tenant_users(ix.users as u64);
        tracing::info!(
            users = ix.users,
            principals = ix.kinds.len(),
            managed_identities = ix.managed_identities.len(),
            apps = ix.apps.len(),
            "directory indexed"
        );
        Ok(ix)
    }

    /// The index of an incremental sync: users and groups as given (the previous sync's, updated from
    /// the delta queries), service principals listed again (one request per 999: Graph's service
    /// principal changes are cheaper to read in full than to track). No license holders: an incremental
    /// sync derives those from the previous sync's license grants.
    pub async fn incremental(
        g: &Client,
        cfg: &EntraConfig,
        users: impl Iterator<Item = String>,
        groups: impl Iterator<Item = String>,
    ) -> Result<Index, EntraError> {
        let sp_url = format!("/v1.0/servicePrincipals?$select={SP_SELECT}&$top=999");
        let sps = g.get_all(&sp_url, false).await?;
        let mut ix = Index::default();
        for u in users {
            ix.kinds.insert(u, Kind::User);
            ix.users += 1;
        }
        for gr in groups {
            ix.kinds.insert(gr, Kind::Group);
        }
        ix.add_service_principals(sps, cfg);
        Ok(ix)
    }

    fn add_service_principals(&mut self, sps: Vec<Value>, cfg: &EntraConfig) {
        for sp in sps {
            let Some(id) = id_of(&sp) else { continue };
            if is_managed_identity(&sp) {
                self.kinds.insert(id, Kind::ManagedIdentity);
                self.managed_identities.push(sp);
            } else if include_app(&sp, cfg) {
                self.kinds.insert(id, Kind::App);
                self.apps.push(sp);
            }
        }
    }

    /// The kind of a synced principal, `None` if it is not synced.
    pub fn kind(&self, id: &str) -> Option<Kind> {
        self.kinds.get(id).copied()
    }

    /// The kind of principal `id` whose type Graph stated: `Ok(None)` when it is not synced, `Err(())` when
    /// the type is not stated and only the full index can tell.
    #[allow(clippy::result_unit_err)]
    pub fn typed(&self, id: &str, stated: Stated) -> Result<Option<Kind>, ()> {
        match stated {
            Stated::User => Ok(Some(Kind::User)),
            Stated::Directory => Ok(self.kind(id).filter(|k| *k != Kind::User)),
            Stated::Other => Ok(None),
            Stated::Unknown => Err(()),
        }
    }

    /// Users holding SKU `sku_id`.
    pub fn license_holders(&self, sku_id: &str) -> &[String] {
        self.licenses
            .get(&sku_id.to_ascii_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The `id` of a Graph object.
pub fn id_of(v: &Value) -> Option<String> {
    v.get("id").and_then(Value::as_str).map(str::to_owned)
}

/// Whether a group is synced from on-premises AD.
pub fn is_on_prem(g: &Value) -> bool {
    g.get("onPremisesSyncEnabled").and_then(Value::as_bool) == Some(true)
}

/// Whether a service principal is a managed identity.
pub fn is_managed_identity(sp: &Value) -> bool {
    sp.get("servicePrincipalType").and_then(Value::as_str) == Some("ManagedIdentity")
}

/// Whether a service principal is a Microsoft first-party app.
pub fn is_microsoft(sp: &Value) -> bool {
    sp.get("appOwnerOrganizationId")
        .and_then(Value::as_str)
        .is_some_and(|o| o.eq_ignore_ascii_case(MICROSOFT_TENANT))
}

/// Whether a (non-managed-identity) service principal is synced as an enterprise application.
pub fn include_app(sp: &Value, cfg: &EntraConfig) -> bool {
    !(is_managed_identity(sp) || (cfg.exclude_microsoft_apps && is_microsoft(sp)))
}
