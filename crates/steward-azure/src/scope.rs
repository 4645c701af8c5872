//! ARM scopes: containment (case-insensitive, as ARM), the scope of each resource this connector emits,
//! and the entitlement id scheme.
//!
//! Resource ids: `subscription` = the subscription GUID; `resource_group`, `storage_account`,
//! `container` = their ARM ids (unique across subscriptions; a bare name is not); `role` = the role
//! definition's ARM id in its subscription (`/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{guid}`).
//! Entitlements on a scope resource: `<type>:<id>:role:<roleGuid>` (active) and
//! `<type>:<id>:role:<roleGuid>:eligible` (PIM), e.g.
//! `resource_group:/subscriptions/S/resourceGroups/rg1:role:8e3af657-a8ff-443c-a75c-2fe8c4bcb635`.

use crate::types;

/// Whether `outer` is `inner` or above it (`/` covers everything).
pub fn covers(outer: &str, inner: &str) -> bool {
    let o = outer.trim_end_matches('/');
    if o.is_empty() {
        return true;
    }
    inner.len() >= o.len()
        && inner[..o.len()].eq_ignore_ascii_case(o)
        && (inner.len() == o.len() || inner.as_bytes()[o.len()] == b'/')
}

/// Whether two scopes are the same (ARM compares case-insensitively).
pub fn same(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// The ARM scope of a scope resource.
pub fn of(resource_type: &str, id: &str) -> Option<String> {
    match resource_type {
        types::SUBSCRIPTION => Some(format!("/subscriptions/{id}")),
        types::RESOURCE_GROUP | types::STORAGE_ACCOUNT | types::CONTAINER => Some(id.to_owned()),
        _ => None,
    }
}

/// The subscription GUID of an ARM id or scope.
pub fn subscription_of(scope: &str) -> Option<&str> {
    let rest = scope.strip_prefix("/subscriptions/").or_else(|| {
        scope
            .get(..15)
            .filter(|p| p.eq_ignore_ascii_case("/subscriptions/"))
            .map(|_| &scope[15..])
    })?;
    rest.split('/').next().filter(|s| !s.is_empty())
}

/// The resource type of the scope resource an ARM scope names, if this connector emits one.
pub fn kind(scope: &str) -> Option<&'static str> {
    let l = scope.to_ascii_lowercase();
    if l.contains("/blobservices/default/containers/") {
        Some(types::CONTAINER)
    } else if l.contains("/providers/microsoft.storage/storageaccounts/") {
        (l.split("/storageaccounts/")
            .nth(1)
            .is_some_and(|r| !r.contains('/')))
        .then_some(types::STORAGE_ACCOUNT)
    } else if l.contains("/providers/") {
        None
    } else if l.contains("/resourcegroups/") {
        Some(types::RESOURCE_GROUP)
    } else if l.starts_with("/subscriptions/") {
        Some(types::SUBSCRIPTION)
    } else {
        None
    }
}

/// The entitlement slug of a role (active or eligible).
pub fn slug(role: &str, eligible: bool) -> String {
    if eligible {
        format!("role:{role}:eligible")
    } else {
        format!("role:{role}")
    }
}

/// The role GUID and eligibility of a slug made by [`slug`].
pub fn parse_slug(slug: &str) -> Option<(&str, bool)> {
    let rest = slug.strip_prefix("role:")?;
    match rest.strip_suffix(":eligible") {
        Some(r) => Some((r, true)),
        None => Some((rest, false)),
    }
}

/// The last segment of an ARM id (a role definition's GUID), lower case.
pub fn last_segment(id: &str) -> String {
    id.rsplit('/').next().unwrap_or(id).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_and_kinds() {
        assert!(covers("/subscriptions/A", "/subscriptions/a/resourceGroups/x"));
        assert!(covers("/", "/subscriptions/a"));
        assert!(!covers("/subscriptions/ab", "/subscriptions/abc"));
        assert!(!covers("/subscriptions/a/resourceGroups/x", "/subscriptions/a"));
        let c = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/a/blobServices/default/containers/c";
        assert_eq!(kind(c), Some(types::CONTAINER));
        assert_eq!(
            kind("/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/a"),
            Some(types::STORAGE_ACCOUNT)
        );
        assert_eq!(
            kind("/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/w"),
            None
        );
        assert_eq!(
            kind("/subscriptions/s/resourcegroups/r"),
            Some(types::RESOURCE_GROUP)
        );
        assert_eq!(kind("/subscriptions/s"), Some(types::SUBSCRIPTION));
        assert_eq!(subscription_of(c), Some("s"));
        assert_eq!(parse_slug(&slug("g", true)), Some(("g", true)));
        assert_eq!(parse_slug(&slug("g", false)), Some(("g", false)));
    }
}
