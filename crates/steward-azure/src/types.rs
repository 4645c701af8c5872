//! The resource types this connector syncs. `user`, `group`, `enterprise_application` and
//! `managed_identity` are the Entra ID connector's own definitions; the Azure ones are defined here.

use steward_model::pb::resource_type::Trait;
use steward_model::{AnnotationsExt, ResourceType, SkipEntitlementsAndGrants, builders};

/// `tenant`.
pub const TENANT: &str = "tenant";
/// `subscription`.
pub const SUBSCRIPTION: &str = "subscription";
/// `resource_group` (child of its subscription).
pub const RESOURCE_GROUP: &str = "resource_group";
/// `role`: an Azure role definition in one subscription (child of it).
pub const ROLE: &str = "role";
/// `storage_account` (child of its resource group).
pub const STORAGE_ACCOUNT: &str = "storage_account";
/// `container`: a blob container (child of its storage account).
pub const CONTAINER: &str = "container";
/// `user` (Entra ID).
pub const USER: &str = steward_entra::types::USER;
/// `group` (Entra ID).
pub const GROUP: &str = steward_entra::types::GROUP;
/// `enterprise_application` (Entra ID).
pub const APP: &str = steward_entra::types::APP;
/// `managed_identity`: user-assigned (ARM) and system-assigned (Graph).
pub const MANAGED_IDENTITY: &str = steward_entra::types::MANAGED_IDENTITY;

/// Resource types that are ARM scopes with role entitlements.
pub const SCOPES: [&str; 4] = [SUBSCRIPTION, RESOURCE_GROUP, STORAGE_ACCOUNT, CONTAINER];
/// Principal types (what role entitlements are grantable to).
pub const PRINCIPALS: [&str; 4] = [USER, GROUP, MANAGED_IDENTITY, APP];

/// Every resource type, in sync order.
pub fn all(skip_containers: bool) -> Vec<ResourceType> {
    let entra = steward_entra::types::all();
    let pick = |id: &str| entra.iter().find(|t| t.id == id).cloned();
    let mut out = Vec::new();
    let mut tenant = builders::resource_type(TENANT, "Tenant", &[]);
    tenant.description = "The Microsoft Entra tenant".into();
    tenant.annotations.push_msg(&SkipEntitlementsAndGrants {});
    out.push(tenant);
    let mut sub = builders::resource_type(SUBSCRIPTION, "Subscription", &[]);
    sub.description = "Azure subscriptions (entitlement per Azure role in use there)".into();
    out.push(sub);
    let mut rg = builders::resource_type(RESOURCE_GROUP, "Resource Group", &[]);
    rg.description = "Resource groups (entitlement per Azure role in use there)".into();
    out.push(rg);
    let mut role = builders::resource_type(ROLE, "Azure Role", &[Trait::Role]);
    role.description = "Azure role definitions (built-in and custom) per subscription".into();
    role.annotations.push_msg(&SkipEntitlementsAndGrants {});
    out.push(role);
    let mut sa = builders::resource_type(STORAGE_ACCOUNT, "Storage Account", &[]);
    sa.description = "Storage accounts (entitlement per Azure role in use there)".into();
    out.push(sa);
    if !skip_containers {
        let mut c = builders::resource_type(CONTAINER, "Blob Container", &[]);
        c.description = "Blob containers (entitlement per Azure role in use there)".into();
        out.push(c);
    }
    out.extend([USER, GROUP, APP, MANAGED_IDENTITY].into_iter().filter_map(pick));
    out
}

/// The principal resource types (for `grantable_to`).
pub fn principals() -> Vec<ResourceType> {
    let entra = steward_entra::types::all();
    PRINCIPALS
        .iter()
        .filter_map(|id| entra.iter().find(|t| t.id == *id).cloned())
        .collect()
}
