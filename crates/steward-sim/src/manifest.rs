//! The true counts of a tenant (`steward sim manifest`): what a complete sync must find, per kind.
//!
//! Tests compare connectors' results and paging against these numbers, so they are computed from the
//! tenant data directly, never from the HTTP layer.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use uuid::Uuid;

use crate::model::*;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Manifest {
    pub tenant_id: Uuid,
    pub users: usize,
    pub users_member: usize,
    pub users_guest: usize,
    pub users_disabled: usize,
    pub users_on_prem_synced: usize,
    pub users_by_mailbox_purpose: BTreeMap<String, usize>,
    pub groups: usize,
    pub groups_by_kind: BTreeMap<String, usize>,
    pub groups_dynamic: usize,
    pub groups_role_assignable: usize,
    pub groups_on_prem_synced: usize,
    pub group_memberships_direct: usize,
    pub group_memberships_direct_by_member_type: BTreeMap<String, usize>,
    /// Sum over groups of the size of `transitiveMembers` (members at any depth, nested groups included).
    pub group_memberships_transitive: usize,
    pub group_owners: usize,
    pub nested_group_edges: usize,
    pub max_nesting_depth: usize,
    pub membership_cycles: bool,
    pub applications: usize,
    pub service_principals: usize,
    pub service_principals_by_kind: BTreeMap<String, usize>,
    pub service_principals_by_publisher: BTreeMap<String, usize>,
    pub service_principal_owners: usize,
    pub app_roles: usize,
    pub app_role_assignments: usize,
    pub app_role_assignments_by_principal_type: BTreeMap<String, usize>,
    pub max_assignments_per_app: usize,
    pub role_definitions: usize,
    pub role_assignments: usize,
    pub role_assignments_by_principal_type: BTreeMap<String, usize>,
    pub role_eligibilities: usize,
    pub skus: usize,
    pub license_assignments: usize,
    pub subscriptions: usize,
    pub resource_groups: usize,
    pub azure_role_definitions_builtin: usize,
    pub azure_role_definitions_custom: usize,
    pub azure_role_assignments: usize,
    pub azure_role_assignments_by_scope_kind: BTreeMap<String, usize>,
    pub azure_role_assignments_by_principal_type: BTreeMap<String, usize>,
    pub azure_role_eligibilities: usize,
    pub storage_accounts: usize,
    pub blob_containers: usize,
    pub user_assigned_identities: usize,
}

fn bump(m: &mut BTreeMap<String, usize>, k: impl Into<String>) {
    *m.entry(k.into()).or_default() += 1;
}

fn key<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The Azure scope kind of an ARM scope string.
pub fn scope_kind(scope: &str) -> &'static str {
    if scope.contains("/blobServices/default/containers/") {
        "container"
    } else if scope.contains("/providers/Microsoft.Storage/storageAccounts/") {
        "storage_account"
    } else if scope.contains("/providers/") && scope.contains("/resourceGroups/") {
        "resource"
    } else if scope.contains("/resourceGroups/") {
        "resource_group"
    } else if scope.starts_with("/subscriptions/") {
        "subscription"
    } else {
        "other"
    }
}

/// For each group, the ids of its members at any depth (nested groups included, the group itself
/// excluded even when a cycle leads back to it).
pub fn transitive_members(t: &Tenant) -> HashMap<Uuid, HashSet<Uuid>> {
    let by_id: HashMap<Uuid, &Group> = t.groups.iter().map(|g| (g.id, g)).collect();
    let mut out = HashMap::with_capacity(t.groups.len());
    for g in &t.groups {
        let mut seen: HashSet<Uuid> = HashSet::with_capacity(g.members.len());
        let mut stack: Vec<Uuid> = vec![g.id];
        while let Some(x) = stack.pop() {
            if let Some(group) = by_id.get(&x) {
                for m in &group.members {
                    if *m != g.id && seen.insert(*m) && by_id.contains_key(m) {
                        stack.push(*m);
                    }
                }
            }
        }
        out.insert(g.id, seen);
    }
    out
}

pub fn has_cycle(t: &Tenant) -> bool {
    let ids: HashSet<Uuid> = t.groups.iter().map(|g| g.id).collect();
    let tm = transitive_members(t);
    // A group reaches itself iff one of its nested groups has it as a transitive member.
    t.groups.iter().any(|g| {
        g.members
            .iter()
            .filter(|m| ids.contains(m))
            .any(|child| tm.get(child).is_some_and(|s| s.contains(&g.id)))
    })
}

fn max_depth(t: &Tenant) -> usize {
    let by_id: HashMap<Uuid, &Group> = t.groups.iter().map(|g| (g.id, g)).collect();
    fn depth(id: Uuid, by_id: &HashMap<Uuid, &Group>, path: &mut Vec<Uuid>) -> usize {
        let Some(g) = by_id.get(&id) else { return 0 };
        let mut best = 0;
        for m in &g.members {
            if by_id.contains_key(m) && !path.contains(m) {
                path.push(*m);
                best = best.max(1 + depth(*m, by_id, path));
                path.pop();
            }
        }
        best
    }
    t.groups
        .iter()
        .filter(|g| g.members.iter().any(|m| by_id.contains_key(m)))
        .map(|g| depth(g.id, &by_id, &mut vec![g.id]))
        .max()
        .unwrap_or(0)
}

impl Manifest {
    pub fn of(t: &Tenant) -> Manifest {
        let users: HashSet<Uuid> = t.users.iter().map(|u| u.id).collect();
        let groups: HashSet<Uuid> = t.groups.iter().map(|g| g.id).collect();
        let ptype = |id: &Uuid| {
            if users.contains(id) {
                "User"
            } else if groups.contains(id) {
                "Group"
            } else {
                "ServicePrincipal"
            }
        };
        let mut m = Manifest {
            tenant_id: t.tenant_id,
            users: t.users.len(),
            users_member: t.users.iter().filter(|u| u.user_type == UserType::Member).count(),
            users_guest: t.users.iter().filter(|u| u.user_type == UserType::Guest).count(),
            users_disabled: t.users.iter().filter(|u| !u.account_enabled).count(),
            users_on_prem_synced: t.users.iter().filter(|u| u.on_premises_sync_enabled).count(),
            users_by_mailbox_purpose: BTreeMap::new(),
            groups: t.groups.len(),
            groups_by_kind: BTreeMap::new(),
            groups_dynamic: t.groups.iter().filter(|g| g.membership_rule.is_some()).count(),
            groups_role_assignable: t.groups.iter().filter(|g| g.is_assignable_to_role).count(),
            groups_on_prem_synced: t.groups.iter().filter(|g| g.on_premises_sync_enabled).count(),
            group_memberships_direct: t.groups.iter().map(|g| g.members.len()).sum(),
            group_memberships_direct_by_member_type: BTreeMap::new(),
            group_memberships_transitive: transitive_members(t).values().map(HashSet::len).sum(),
            group_owners: t.groups.iter().map(|g| g.owners.len()).sum(),
            nested_group_edges: t
                .groups
                .iter()
                .flat_map(|g| &g.members)
                .filter(|m| groups.contains(m))
                .count(),
            max_nesting_depth: max_depth(t),
            membership_cycles: has_cycle(t),
            applications: t.applications.len(),
            service_principals: t.service_principals.len(),
            service_principals_by_kind: BTreeMap::new(),
            service_principals_by_publisher: BTreeMap::new(),
            service_principal_owners: t.service_principals.iter().map(|s| s.owners.len()).sum(),
            app_roles: t.service_principals.iter().map(|s| s.app_roles.len()).sum(),
            app_role_assignments: t.app_role_assignments.len(),
            app_role_assignments_by_principal_type: BTreeMap::new(),
            max_assignments_per_app: 0,
            role_definitions: t.role_definitions.len(),
            role_assignments: t.role_assignments.len(),
            role_assignments_by_principal_type: BTreeMap::new(),
            role_eligibilities: t.role_eligibilities.len(),
            skus: t.skus.len(),
            license_assignments: t.users.iter().map(|u| u.licenses.len()).sum(),
            subscriptions: t.azure.subscriptions.len(),
            resource_groups: t.azure.resource_groups.len(),
            azure_role_definitions_builtin: t.azure.builtin_roles.len(),
            azure_role_definitions_custom: t.azure.custom_roles.len(),
            azure_role_assignments: t.azure.role_assignments.len(),
            azure_role_assignments_by_scope_kind: BTreeMap::new(),
            azure_role_assignments_by_principal_type: BTreeMap::new(),
            azure_role_eligibilities: t.azure.role_eligibilities.len(),
            storage_accounts: t.azure.storage_accounts.len(),
            blob_containers: t.azure.containers.len(),
            user_assigned_identities: t.azure.identities.len(),
        };
        for u in &t.users {
            bump(
                &mut m.users_by_mailbox_purpose,
                u.mailbox.map(|p| key(&p)).unwrap_or_else(|| "none".into()),
            );
        }
        for g in &t.groups {
            bump(&mut m.groups_by_kind, key(&g.kind));
            for x in &g.members {
                bump(&mut m.group_memberships_direct_by_member_type, ptype(x));
            }
        }
        for s in &t.service_principals {
            bump(&mut m.service_principals_by_kind, key(&s.kind));
            bump(&mut m.service_principals_by_publisher, key(&s.publisher));
        }
        let mut per_app: HashMap<Uuid, usize> = HashMap::new();
        for a in &t.app_role_assignments {
            bump(
                &mut m.app_role_assignments_by_principal_type,
                ptype(&a.principal_id),
            );
            *per_app.entry(a.resource_id).or_default() += 1;
        }
        m.max_assignments_per_app = per_app.values().copied().max().unwrap_or(0);
        for r in &t.role_assignments {
            bump(&mut m.role_assignments_by_principal_type, ptype(&r.principal_id));
        }
        for a in &t.azure.role_assignments {
            bump(&mut m.azure_role_assignments_by_scope_kind, scope_kind(&a.scope));
            bump(
                &mut m.azure_role_assignments_by_principal_type,
                key(&a.principal_type),
            );
        }
        m
    }
}
