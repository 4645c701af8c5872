//! Users and managed identities as Baton user resources.
//!
//! A user's account type is `human`, or `service` when `--mailbox-settings` is on and the mailbox's
//! `userPurpose` is room, equipment or shared. Managed identities are always `service`. The profile keeps
//! the keys `baton export csv` reads (`first_name`, `last_name`, `user_id`) and the Entra specifics
//! (user type, on-prem sync, manager, department, job title, employee type).

use serde_json::{Map, Value, json};
use steward_model::pb::user_trait::{AccountType, Email};
use steward_model::{Resource, Timestamp, builders, profile};

use crate::types;

/// `$select` of the user listing (without `signInActivity`). Managers are read apart (see `managers`):
/// `$expand` would cap the listing's pages at 100 users.
pub const USER_SELECT: &str = "id,displayName,userPrincipalName,mail,givenName,surname,accountEnabled,userType,employeeId,employeeType,department,jobTitle,onPremisesSyncEnabled,createdDateTime";

/// The account type a mailbox purpose implies.
pub fn account_type(purpose: Option<&str>) -> AccountType {
    match purpose {
        Some("room" | "equipment" | "shared") => AccountType::Service,
        _ => AccountType::Human,
    }
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|x| !x.is_empty())
}

/// An RFC 3339 timestamp as a protobuf `Timestamp`.
pub fn timestamp(text: Option<&str>) -> Option<Timestamp> {
    let t = time::OffsetDateTime::parse(text?, &time::format_description::well_known::Rfc3339).ok()?;
    Some(Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

/// A user resource from a Graph user (as listed with [`USER_SELECT`]), its manager's id and its mailbox
/// purpose.
pub fn user(v: &Value, manager: Option<&str>, mailbox_purpose: Option<&str>) -> Option<Resource> {
    let id = s(v, "id")?;
    let upn = s(v, "userPrincipalName").unwrap_or(id);
    let name = s(v, "displayName").unwrap_or(upn);
    let enabled = v.get("accountEnabled").and_then(Value::as_bool).unwrap_or(true);
    let mail = s(v, "mail");
    let mut t = builders::user_trait(mail, enabled, upn);
    if mail.is_some_and(|m| !m.eq_ignore_ascii_case(upn)) {
        t.login_aliases.push(upn.to_owned());
    }
    if mail.is_none() {
        t.emails.push(Email {
            address: upn.to_owned(),
            is_primary: true,
        });
    }
    t.account_type = account_type(mailbox_purpose) as i32;
    t.employee_ids = s(v, "employeeId").map(str::to_owned).into_iter().collect();
    t.created_at = timestamp(s(v, "createdDateTime"));
    let last = v
        .pointer("/signInActivity/lastSignInDateTime")
        .and_then(Value::as_str)
        .or_else(|| {
            v.pointer("/signInActivity/lastNonInteractiveSignInDateTime")
                .and_then(Value::as_str)
        });
    t.last_login = timestamp(last);
    let mut p = Map::new();
    p.insert("user_id".into(), json!(id));
    p.insert("user_principal_name".into(), json!(upn));
    p.insert("display_name".into(), json!(name));
    let mut put = |k: &str, x: Option<&str>| {
        if let Some(x) = x {
            p.insert(k.into(), json!(x));
        }
    };
    put("first_name", s(v, "givenName"));
    put("last_name", s(v, "surname"));
    put("email", mail);
    put("employee_id", s(v, "employeeId"));
    put("employee_type", s(v, "employeeType"));
    put("department", s(v, "department"));
    put("job_title", s(v, "jobTitle"));
    put("manager_id", manager);
    put("mailbox_purpose", mailbox_purpose);
    put("last_sign_in", last);
    p.insert("user_type".into(), json!(s(v, "userType").unwrap_or("Member")));
    p.insert("guest".into(), json!(s(v, "userType") == Some("Guest")));
    p.insert(
        "on_premises_synced".into(),
        json!(v.get("onPremisesSyncEnabled").and_then(Value::as_bool) == Some(true)),
    );
    p.insert("account_enabled".into(), json!(enabled));
    Some(
        builders::ResourceBuilder::new(types::USER, id, name)
            .profile(profile::struct_from_json_map(&p))
            .user(t)
            .build(),
    )
}

/// A managed identity resource from its service principal.
pub fn managed_identity(v: &Value) -> Option<Resource> {
    let id = s(v, "id")?;
    let name = s(v, "displayName").unwrap_or(id);
    let enabled = v.get("accountEnabled").and_then(Value::as_bool).unwrap_or(true);
    let app_id = s(v, "appId").unwrap_or_default();
    let mut t = builders::user_trait(None, enabled, app_id);
    t.account_type = AccountType::Service as i32;
    let arm_id = v["alternativeNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|n| n.starts_with('/'));
    let mut p = Map::new();
    p.insert("user_id".into(), json!(id));
    p.insert("app_id".into(), json!(app_id));
    p.insert("display_name".into(), json!(name));
    p.insert("account_enabled".into(), json!(enabled));
    if let Some(a) = arm_id {
        p.insert("azure_resource_id".into(), json!(a));
        p.insert(
            "identity_kind".into(),
            json!(if a.contains("/userAssignedIdentities/") {
                "user_assigned"
            } else {
                "system_assigned"
            }),
        );
    }
    Some(
        builders::ResourceBuilder::new(types::MANAGED_IDENTITY, id, name)
            .profile(profile::struct_from_json_map(&p))
            .user(t)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_model::{AnnotationsExt, UserTrait};

    #[test]
    fn room_mailboxes_are_service_accounts() {
        let v = json!({"id": "u1", "userPrincipalName": "room1@x.com", "displayName": "Room 1",
            "accountEnabled": true, "userType": "Member", "createdDateTime": "2021-01-02T03:04:05Z",
            "signInActivity": {"lastSignInDateTime": "2024-05-01T00:00:00Z"}});
        let r = user(&v, Some("m1"), Some("room")).unwrap();
        let t: UserTrait = r.annotations.find().unwrap().unwrap();
        assert_eq!(t.account_type, AccountType::Service as i32);
        assert_eq!(t.login, "room1@x.com");
        assert_eq!(t.emails[0].address, "room1@x.com");
        assert!(t.last_login.is_some() && t.created_at.is_some());
        let p = r.profile.unwrap();
        assert_eq!(profile::get_str(&p, "manager_id"), Some("m1"));
        let r = user(&v, None, Some("user")).unwrap();
        let t: UserTrait = r.annotations.find().unwrap().unwrap();
        assert_eq!(t.account_type, AccountType::Human as i32);
    }
}
