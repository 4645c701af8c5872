//! The resource types this connector syncs, with their traits. Users and managed identities carry
//! `SkipEntitlementsAndGrants`: they are principals only, so the engine never asks for their entitlements.

use steward_model::pb::resource_type::Trait;
use steward_model::{AnnotationsExt, ResourceType, SkipEntitlementsAndGrants, builders};

/// `user`.
pub const USER: &str = "user";
/// `managed_identity`.
pub const MANAGED_IDENTITY: &str = "managed_identity";
/// `group`.
pub const GROUP: &str = "group";
/// `enterprise_application`.
pub const APP: &str = "enterprise_application";
/// `role`.
pub const ROLE: &str = "role";
/// `license`.
pub const LICENSE: &str = "license";

/// Every resource type, in sync order.
pub fn all() -> Vec<ResourceType> {
    let mut user = builders::resource_type(USER, "User", &[Trait::User]);
    user.description = "Entra ID users (members and guests)".into();
    user.annotations.push_msg(&SkipEntitlementsAndGrants {});
    let mut mi = builders::resource_type(MANAGED_IDENTITY, "Managed Identity", &[Trait::User]);
    mi.description = "Service principals of managed identities (service accounts)".into();
    mi.annotations.push_msg(&SkipEntitlementsAndGrants {});
    let mut group = builders::resource_type(GROUP, "Group", &[Trait::Group]);
    group.description = "Security, Microsoft 365, mail-enabled security groups and distribution lists".into();
    let mut app = builders::resource_type(APP, "Enterprise Application", &[Trait::App]);
    app.description = "Service principals of applications, with their app roles".into();
    let mut role = builders::resource_type(ROLE, "Directory Role", &[Trait::Role]);
    role.description = "Entra ID directory role definitions (active and PIM-eligible assignments)".into();
    let mut license = builders::resource_type(LICENSE, "License", &[]);
    license.description = "Subscribed SKUs".into();
    vec![user, mi, group, app, role, license]
}

/// The principal types `resource_type` ids stand for.
pub fn by_id(id: &str) -> Option<ResourceType> {
    all().into_iter().find(|t| t.id == id)
}
