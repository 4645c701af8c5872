//! ARM scopes: containment (case-insensitive, as ARM), the canonical spelling of ids, the scope of each
//! resource this connector emits, and the entitlement id scheme.
//!
//! ARM compares ids without case and answers in varying case: a role assignment keeps the spelling its
//! scope was written with (`/resourcegroups/RG-App`), resource providers spell resource-group segments
//! their own way, GUIDs come in either case. Every ARM id this connector emits or matches goes through
//! [`canonical`] first: type segments spelled as in ARM's API reference (`resourceGroups`,
//! `Microsoft.Storage`, `storageAccounts`, …), names and GUIDs in lower case. So one resource group is one
//! resource however ARM spells it, and an inherited grant names exactly the resource it was assigned at.
//!
//! Resource ids: `subscription` = the subscription GUID (lower case); `resource_group`, `storage_account`,
//! `container` = their canonical ARM ids (unique across subscriptions; a bare name is not); `role` = the
//! role definition's canonical ARM id in its subscription
//! (`/subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{guid}`). Display names keep
//! ARM's own spelling.
//! Entitlements on a scope resource: `<type>:<id>:role:<roleGuid>` (active) and
//! `<type>:<id>:role:<roleGuid>:eligible` (PIM), e.g.
//! `resource_group:/subscriptions/S/resourceGroups/rg1:role:8e3af657-a8ff-443c-a75c-2fe8c4bcb635`.

use crate::types;

/// ARM's type segments (and provider namespaces) as its API reference spells them.
const TYPE_SEGMENTS: &[&str] = &[
    "subscriptions",
    "resourceGroups",
    "providers",
    "Microsoft.Authorization",
    "roleAssignments",
    "roleDefinitions",
    "roleEligibilityScheduleInstances",
    "Microsoft.Storage",
    "storageAccounts",
    "blobServices",
    "containers",
    "Microsoft.ManagedIdentity",
    "userAssignedIdentities",
    "Microsoft.Management",
    "managementGroups",
];

fn type_segment(s: &str) -> String {
    TYPE_SEGMENTS
        .iter()
        .find(|t| t.eq_ignore_ascii_case(s))
        .map_or_else(|| s.to_ascii_lowercase(), |t| (*t).to_owned())
}

/// The canonical spelling of an ARM id or scope (see the module docs); `/` for the root.
///
/// ARM ids alternate type and name segments (`/subscriptions/{s}/resourceGroups/{g}`), except that
/// `providers` is followed by a namespace and then type/name pairs again; this walks them in that order,
/// so a resource group named `providers` is still a name.
pub fn canonical(id: &str) -> String {
    let segs: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = String::with_capacity(id.len() + 1);
    let mut i = 0;
    while i < segs.len() {
        let key = type_segment(segs[i]);
        out.push('/');
        out.push_str(&key);
        let Some(next) = segs.get(i + 1) else { break };
        out.push('/');
        if key == "providers" {
            out.push_str(&type_segment(next));
        } else {
            out.push_str(&next.to_ascii_lowercase());
        }
        i += 2;
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

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

/// The canonical ARM scope of a scope resource.
pub fn of(resource_type: &str, id: &str) -> Option<String> {
    match resource_type {
        types::SUBSCRIPTION => Some(canonical(&format!("/subscriptions/{id}"))),
        types::RESOURCE_GROUP | types::STORAGE_ACCOUNT | types::CONTAINER => Some(canonical(id)),
        _ => None,
    }
}

/// The scope resource directly above the scope resource `(resource_type, canonical id)`, as this
/// connector parents them: a resource group's subscription, a storage account's resource group, a
/// container's storage account.
pub fn parent(resource_type: &str, id: &str) -> Option<(&'static str, String)> {
    let segs: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
    let (keep, rt) = match resource_type {
        types::RESOURCE_GROUP => return subscription_of(id).map(|s| (types::SUBSCRIPTION, s.to_owned())),
        types::STORAGE_ACCOUNT => (4, types::RESOURCE_GROUP),
        types::CONTAINER => (8, types::STORAGE_ACCOUNT),
        _ => return None,
    };
    (segs.len() > keep).then(|| (rt, format!("/{}", segs[..keep].join("/"))))
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

    #[test]
    fn canonical_spelling() {
        let want = "/subscriptions/0a1b2c3d-0000-4000-8000-00000000000a/resourceGroups/rg-app/providers/Microsoft.Storage/storageAccounts/stapp1/blobServices/default/containers/logs";
        for spelled in [
            want,
            "/subscriptions/0A1B2C3D-0000-4000-8000-00000000000A/resourcegroups/RG-App/providers/microsoft.storage/storageaccounts/stapp1/blobservices/default/containers/logs",
            "/SUBSCRIPTIONS/0a1b2c3d-0000-4000-8000-00000000000a/ResourceGroups/rg-APP/PROVIDERS/Microsoft.Storage/StorageAccounts/STAPP1/blobServices/Default/containers/Logs/",
        ] {
            assert_eq!(canonical(spelled), want);
        }
        assert_eq!(
            canonical("/subscriptions/S/resourcegroups/providers"),
            "/subscriptions/s/resourceGroups/providers"
        );
        assert_eq!(
            canonical("/providers/microsoft.management/managementgroups/Root"),
            "/providers/Microsoft.Management/managementGroups/root"
        );
        assert_eq!(canonical("/"), "/");
        let (rt, acct) = parent(types::CONTAINER, want).unwrap();
        assert_eq!(rt, types::STORAGE_ACCOUNT);
        assert_eq!(
            acct,
            "/subscriptions/0a1b2c3d-0000-4000-8000-00000000000a/resourceGroups/rg-app/providers/Microsoft.Storage/storageAccounts/stapp1"
        );
        let (rt, rg) = parent(types::STORAGE_ACCOUNT, &acct).unwrap();
        assert_eq!(
            (rt, rg.as_str()),
            (
                types::RESOURCE_GROUP,
                "/subscriptions/0a1b2c3d-0000-4000-8000-00000000000a/resourceGroups/rg-app"
            )
        );
        assert_eq!(
            parent(types::RESOURCE_GROUP, &rg),
            Some((
                types::SUBSCRIPTION,
                "0a1b2c3d-0000-4000-8000-00000000000a".to_owned()
            ))
        );
        assert_eq!(parent(types::SUBSCRIPTION, "s"), None);
        assert_eq!(canonical("/subscriptions/AB"), "/subscriptions/ab");
    }
}
