//! Enterprise applications (service principals other than managed identities): the resource, with its
//! app roles in the profile, and its entitlements — `owner`, and `assignment:<appRoleId>` for every app
//! role plus default access (`00000000-0000-0000-0000-000000000000`). Grants come from the full, paged
//! `/servicePrincipals/{id}/appRoleAssignedTo` (never `$expand`, which stops at 20) and `/owners`.

use serde_json::{Map, Value, json};
use steward_model::pb::entitlement::PurposeValue;
use steward_model::{AppTrait, Entitlement, Resource, builders, profile};

use crate::index;
use crate::types;

/// The app role id of default access.
pub const DEFAULT_ACCESS: &str = "00000000-0000-0000-0000-000000000000";

/// An enterprise application resource from a service principal.
pub fn app(v: &Value) -> Option<Resource> {
    let id = v.get("id")?.as_str()?;
    let name = v["displayName"].as_str().unwrap_or(id);
    let roles: Vec<Value> = v["appRoles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(json!({
                "id": r["id"].as_str()?,
                "display_name": r["displayName"].as_str().unwrap_or_default(),
                "value": r["value"].as_str().unwrap_or_default(),
                "allowed_member_types": r["allowedMemberTypes"].clone(),
                "enabled": r["isEnabled"].as_bool().unwrap_or(true),
            }))
        })
        .collect();
    let mut p = Map::new();
    p.insert("app_id".into(), json!(v["appId"].as_str().unwrap_or_default()));
    p.insert(
        "service_principal_type".into(),
        json!(v["servicePrincipalType"].as_str().unwrap_or("Application")),
    );
    p.insert("microsoft_first_party".into(), json!(index::is_microsoft(v)));
    p.insert(
        "account_enabled".into(),
        json!(v["accountEnabled"].as_bool().unwrap_or(true)),
    );
    p.insert(
        "assignment_required".into(),
        json!(v["appRoleAssignmentRequired"].as_bool().unwrap_or(false)),
    );
    if let Some(o) = v["appOwnerOrganizationId"].as_str() {
        p.insert("owner_organization_id".into(), json!(o));
    }
    p.insert("tags".into(), v["tags"].clone());
    p.insert("app_roles".into(), Value::Array(roles));
    let t = AppTrait {
        help_url: v["homepage"].as_str().unwrap_or_default().to_owned(),
        ..Default::default()
    };
    Some(
        builders::ResourceBuilder::new(types::APP, id, name)
            .profile(profile::struct_from_json_map(&p))
            .app(t)
            .build(),
    )
}

/// `owner`, default access and one assignment entitlement per app role.
pub fn entitlements(r: &Resource) -> Vec<Entitlement> {
    let name = &r.display_name;
    let pt = |ids: &[&str]| ids.iter().filter_map(|t| types::by_id(t)).collect::<Vec<_>>();
    let mut out = Vec::new();
    let mut owner = builders::entitlement(
        r,
        "owner",
        &format!("{name} owner"),
        PurposeValue::Ownership,
        &pt(&[types::USER, types::APP, types::MANAGED_IDENTITY]),
    );
    owner.description = format!("Owner of the enterprise application {name}");
    out.push(owner);
    let mut default = builders::entitlement(
        r,
        &format!("assignment:{DEFAULT_ACCESS}"),
        &format!("{name} default access"),
        PurposeValue::Assignment,
        &pt(&[types::USER, types::GROUP, types::APP, types::MANAGED_IDENTITY]),
    );
    default.description = format!("Assigned to {name} without a specific app role");
    out.push(default);
    let profile_json = r
        .profile
        .as_ref()
        .map(profile::struct_to_json)
        .unwrap_or_default();
    for role in profile_json["app_roles"].as_array().into_iter().flatten() {
        let Some(id) = role["id"].as_str() else { continue };
        if id == DEFAULT_ACCESS {
            continue;
        }
        let members: Vec<&str> = role["allowed_member_types"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut grantable = Vec::new();
        if members.contains(&"User") {
            grantable.extend([types::USER, types::GROUP]);
        }
        if members.contains(&"Application") {
            grantable.extend([types::APP, types::MANAGED_IDENTITY]);
        }
        let label = role["display_name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(id);
        let mut e = builders::entitlement(
            r,
            &format!("assignment:{id}"),
            &format!("{name}: {label}"),
            PurposeValue::Assignment,
            &pt(&grantable),
        );
        e.description = format!(
            "App role {} of {name}",
            role["value"].as_str().filter(|s| !s.is_empty()).unwrap_or(label)
        );
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entitlement_per_role_plus_owner_and_default() {
        let v = json!({"id": "sp", "displayName": "App", "appRoles": [
            {"id": "r1", "displayName": "Admin", "value": "admin", "allowedMemberTypes": ["User"], "isEnabled": true},
            {"id": "r2", "displayName": "Daemon", "value": "daemon", "allowedMemberTypes": ["Application"], "isEnabled": true}]});
        let e = entitlements(&app(&v).unwrap());
        let ids: Vec<&str> = e.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "enterprise_application:sp:owner",
                "enterprise_application:sp:assignment:00000000-0000-0000-0000-000000000000",
                "enterprise_application:sp:assignment:r1",
                "enterprise_application:sp:assignment:r2"
            ]
        );
    }
}
