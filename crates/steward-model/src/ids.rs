//! Baton's id conventions. Readers do not enforce them (the CLI looks rows up by table columns), but
//! connectors follow them so that ids are predictable across syncs and tools.

/// An entitlement id: `<resource_type>:<resource_id>:<slug>`, e.g. `group:42:member`.
pub fn entitlement_id(resource_type: &str, resource_id: &str, slug: &str) -> String {
    [resource_type, resource_id, slug].join(":")
}

/// A grant id: `<entitlement_id>:<principal_type>:<principal_id>`, e.g. `group:42:member:user:7`.
pub fn grant_id(entitlement_id: &str, principal_type: &str, principal_id: &str) -> String {
    [entitlement_id, principal_type, principal_id].join(":")
}

/// The `v1_resources.external_id` of a resource: `<resource_type>:<resource_id>`.
pub fn resource_external_id(resource_type: &str, resource_id: &str) -> String {
    [resource_type, resource_id].join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventions() {
        let e = entitlement_id("group", "42", "member");
        assert_eq!(e, "group:42:member");
        assert_eq!(grant_id(&e, "user", "7"), "group:42:member:user:7");
        assert_eq!(resource_external_id("user", "7"), "user:7");
    }
}
