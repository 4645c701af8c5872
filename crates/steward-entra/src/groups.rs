//! Groups: the resource (kind, dynamic membership, on-prem sync in the profile) and its `member` and
//! `owner` entitlements. Grants come from `/groups/{id}/members` and `/owners` (see `connector`).

use serde_json::{Map, Value, json};
use steward_model::pb::entitlement::PurposeValue;
use steward_model::{Entitlement, Resource, ResourceType, builders, profile};

use crate::types;

/// `$select` of the group listing.
pub const GROUP_SELECT: &str = "id,displayName,description,groupTypes,securityEnabled,mailEnabled,mail,isAssignableToRole,membershipRule,onPremisesSyncEnabled,visibility,createdDateTime";

/// The kind of a group: `microsoft_365`, `security`, `mail_enabled_security` or `distribution`.
pub fn kind(v: &Value) -> &'static str {
    let unified = v["groupTypes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t.as_str() == Some("Unified")));
    let security = v["securityEnabled"].as_bool().unwrap_or(false);
    let mail = v["mailEnabled"].as_bool().unwrap_or(false);
    match (unified, security, mail) {
        (true, _, _) => "microsoft_365",
        (false, true, false) => "security",
        (false, true, true) => "mail_enabled_security",
        (false, false, _) => "distribution",
    }
}

/// A group resource from a Graph group.
pub fn group(v: &Value) -> Option<Resource> {
    let id = v.get("id")?.as_str()?;
    let name = v["displayName"].as_str().unwrap_or(id);
    let dynamic = v["groupTypes"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t.as_str() == Some("DynamicMembership")));
    let mut p = Map::new();
    p.insert("group_id".into(), json!(id));
    p.insert("kind".into(), json!(kind(v)));
    p.insert("dynamic".into(), json!(dynamic));
    p.insert(
        "on_premises_synced".into(),
        json!(v["onPremisesSyncEnabled"].as_bool() == Some(true)),
    );
    p.insert(
        "role_assignable".into(),
        json!(v["isAssignableToRole"].as_bool() == Some(true)),
    );
    for (k, src) in [
        ("mail", "mail"),
        ("membership_rule", "membershipRule"),
        ("visibility", "visibility"),
        ("created", "createdDateTime"),
    ] {
        if let Some(x) = v[src].as_str() {
            p.insert(k.into(), json!(x));
        }
    }
    let mut b = builders::ResourceBuilder::new(types::GROUP, id, name)
        .profile(profile::struct_from_json_map(&p))
        .group();
    if let Some(d) = v["description"].as_str() {
        b = b.description(d);
    }
    Some(b.build())
}

fn principal_types(ids: &[&str]) -> Vec<ResourceType> {
    ids.iter().filter_map(|t| types::by_id(t)).collect()
}

/// `member` and `owner` of a group. Dynamic groups' membership is computed by Entra (not grantable).
pub fn entitlements(r: &Resource) -> Vec<Entitlement> {
    let name = &r.display_name;
    let mut member = builders::entitlement(
        r,
        "member",
        &format!("{name} member"),
        PurposeValue::Assignment,
        &principal_types(&[types::USER, types::GROUP, types::MANAGED_IDENTITY, types::APP]),
    );
    member.description = format!("Direct or nested member of the group {name}");
    let mut owner = builders::entitlement(
        r,
        "owner",
        &format!("{name} owner"),
        PurposeValue::Ownership,
        &principal_types(&[types::USER, types::MANAGED_IDENTITY, types::APP]),
    );
    owner.description = format!("Owner of the group {name}");
    vec![member, owner]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            kind(&json!({"groupTypes": ["Unified"], "mailEnabled": true})),
            "microsoft_365"
        );
        assert_eq!(
            kind(&json!({"groupTypes": [], "securityEnabled": true})),
            "security"
        );
        assert_eq!(
            kind(&json!({"securityEnabled": true, "mailEnabled": true})),
            "mail_enabled_security"
        );
        assert_eq!(
            kind(&json!({"securityEnabled": false, "mailEnabled": true})),
            "distribution"
        );
        let r = group(&json!({"id": "g", "displayName": "G", "groupTypes": ["DynamicMembership"], "securityEnabled": true})).unwrap();
        let e = entitlements(&r);
        assert_eq!(e[0].id, "group:g:member");
        assert_eq!(e[1].id, "group:g:owner");
    }
}
