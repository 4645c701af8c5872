//! The directory index: every principal the sync will emit (users, groups, managed identities,
//! enterprise applications) by id, users' licenses by SKU, and the managed identities themselves.
//!
//! Built once per sync with three concurrent minimal listings (`$select`, `$top=999`). Grants resolve their
//! principals through it, which keeps the file referentially intact: a member, owner or assignee that is
//! not synced (an on-prem group under `skip_ad_groups`, an excluded Microsoft app, a device or contact) is
//! left out and counted, never written as a dangling reference. It also sizes the throttle budget from
//! the tenant's user count.

use std::collections::HashMap;

use serde_json::Value;
use steward_msgraph::Client;

use crate::config::EntraConfig;
use crate::error::EntraError;
use crate::types;

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
    /// Lists the directory and builds the index.
    pub async fn build(g: &Client, cfg: &EntraConfig) -> Result<Index, EntraError> {
        let sp_url = format!("/v1.0/servicePrincipals?$select={SP_SELECT}&$top=999");
        let (users, groups, sps) = futures::try_join!(
            g.get_all(
                "/v1.0/users?$select=id,userPrincipalName,assignedLicenses&$top=999",
                false
            ),
            g.get_all("/v1.0/groups?$select=id,onPremisesSyncEnabled&$top=999", false),
            g.get_all(&sp_url, false),
        )?;
        g.set_tenant_users(users.len() as u64);
        let mut ix = Index {
            users: users.len(),
            ..Index::default()
        };
        for u in &users {
            let Some(id) = id_of(u) else { continue };
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
        for gr in &groups {
            if cfg.skip_ad_groups && is_on_prem(gr) {
                continue;
            }
            if let Some(id) = id_of(gr) {
                ix.kinds.insert(id, Kind::Group);
            }
        }
        ix.add_service_principals(sps, cfg);
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
