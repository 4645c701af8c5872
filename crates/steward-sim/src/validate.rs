//! Referential checks of a tenant loaded from JSON: every reference must name an object that exists, and
//! every id must be unique. A crafted tenant file with a typo fails at load with the path of the bad
//! reference, instead of serving a directory that Microsoft could never produce.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::model::Tenant;

#[derive(Debug, thiserror::Error)]
#[error("invalid tenant: {0}")]
pub struct InvalidTenant(pub String);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    User,
    Group,
    ServicePrincipal,
    Application,
}

impl Tenant {
    /// Checks ids are unique and references resolve. Returns the first problem found.
    pub fn validate(&self) -> Result<(), InvalidTenant> {
        let mut objects: HashMap<Uuid, Kind> = HashMap::new();
        let mut add = |id: Uuid, kind: Kind, what: &str| -> Result<(), InvalidTenant> {
            if objects.insert(id, kind).is_some() {
                return Err(InvalidTenant(format!(
                    "{what} {id}: the id is used by another object"
                )));
            }
            Ok(())
        };
        for u in &self.users {
            add(u.id, Kind::User, "users[]")?;
        }
        for g in &self.groups {
            add(g.id, Kind::Group, "groups[]")?;
        }
        for s in &self.service_principals {
            add(s.id, Kind::ServicePrincipal, "service_principals[]")?;
        }
        for a in &self.applications {
            add(a.id, Kind::Application, "applications[]")?;
        }
        let is = |id: &Uuid, kinds: &[Kind]| objects.get(id).is_some_and(|k| kinds.contains(k));
        let principal = [Kind::User, Kind::Group, Kind::ServicePrincipal];
        let person_or_sp = [Kind::User, Kind::ServicePrincipal];
        let skus: HashSet<Uuid> = self.skus.iter().map(|s| s.sku_id).collect();
        for u in &self.users {
            if let Some(m) = u.manager
                && !is(&m, &[Kind::User])
            {
                return Err(InvalidTenant(format!(
                    "users[{}].manager {m} is not a user",
                    u.id
                )));
            }
            for l in &u.licenses {
                if !skus.contains(l) {
                    return Err(InvalidTenant(format!("users[{}].licenses: no sku {l}", u.id)));
                }
            }
        }
        for g in &self.groups {
            let mut seen = HashSet::new();
            for m in &g.members {
                if !is(m, &principal) {
                    return Err(InvalidTenant(format!(
                        "groups[{}].members: {m} is not a user, group or service principal",
                        g.id
                    )));
                }
                if *m == g.id {
                    return Err(InvalidTenant(format!("groups[{}] is a member of itself", g.id)));
                }
                if !seen.insert(m) {
                    return Err(InvalidTenant(format!("groups[{}].members lists {m} twice", g.id)));
                }
            }
            for o in &g.owners {
                if !is(o, &person_or_sp) {
                    return Err(InvalidTenant(format!(
                        "groups[{}].owners: {o} is not a user or service principal",
                        g.id
                    )));
                }
            }
        }
        for s in &self.service_principals {
            for o in &s.owners {
                if !is(o, &person_or_sp) {
                    return Err(InvalidTenant(format!(
                        "service_principals[{}].owners: {o} is not a user or service principal",
                        s.id
                    )));
                }
            }
        }
        let sps: HashMap<Uuid, &crate::model::ServicePrincipal> =
            self.service_principals.iter().map(|s| (s.id, s)).collect();
        let role_defs: HashSet<Uuid> = self.role_definitions.iter().map(|d| d.id).collect();
        for a in &self.app_role_assignments {
            let Some(sp) = sps.get(&a.resource_id) else {
                return Err(InvalidTenant(format!(
                    "app_role_assignments[{}]: resource {} is not a service principal",
                    a.id, a.resource_id
                )));
            };
            if !a.app_role_id.is_nil() && !sp.app_roles.iter().any(|r| r.id == a.app_role_id) {
                return Err(InvalidTenant(format!(
                    "app_role_assignments[{}]: {} has no app role {}",
                    a.id, sp.display_name, a.app_role_id
                )));
            }
            if !is(&a.principal_id, &principal) {
                return Err(InvalidTenant(format!(
                    "app_role_assignments[{}]: principal {} not found",
                    a.id, a.principal_id
                )));
            }
        }
        for r in &self.role_assignments {
            if !role_defs.contains(&r.role_definition_id) {
                return Err(InvalidTenant(format!(
                    "role_assignments[{}]: no role definition {}",
                    r.id, r.role_definition_id
                )));
            }
            if !is(&r.principal_id, &principal) {
                return Err(InvalidTenant(format!(
                    "role_assignments[{}]: principal {} not found",
                    r.id, r.principal_id
                )));
            }
        }
        for r in &self.role_eligibilities {
            if !role_defs.contains(&r.role_definition_id) {
                return Err(InvalidTenant(format!(
                    "role_eligibilities[{}]: no role definition {}",
                    r.id, r.role_definition_id
                )));
            }
            if !is(&r.principal_id, &[Kind::User, Kind::Group]) {
                return Err(InvalidTenant(format!(
                    "role_eligibilities[{}]: principal {} not found",
                    r.id, r.principal_id
                )));
            }
        }
        let subs: HashSet<Uuid> = self
            .azure
            .subscriptions
            .iter()
            .map(|s| s.subscription_id)
            .collect();
        let roles: HashSet<Uuid> = self
            .azure
            .builtin_roles
            .iter()
            .chain(&self.azure.custom_roles)
            .map(|r| r.name)
            .collect();
        for rg in &self.azure.resource_groups {
            if !subs.contains(&rg.subscription_id) {
                return Err(InvalidTenant(format!(
                    "azure.resource_groups[{}]: no subscription {}",
                    rg.name, rg.subscription_id
                )));
            }
        }
        for a in self
            .azure
            .role_assignments
            .iter()
            .chain(&self.azure.role_eligibilities)
        {
            if !roles.contains(&a.role_definition) {
                return Err(InvalidTenant(format!(
                    "azure role assignment {}: no role definition {}",
                    a.name, a.role_definition
                )));
            }
            if !is(&a.principal_id, &principal) {
                return Err(InvalidTenant(format!(
                    "azure role assignment {}: principal {} not found",
                    a.name, a.principal_id
                )));
            }
            let Some(sub) = a
                .scope
                .strip_prefix("/subscriptions/")
                .and_then(|r| r.split('/').next())
            else {
                return Err(InvalidTenant(format!(
                    "azure role assignment {}: scope {} is not under a subscription",
                    a.name, a.scope
                )));
            };
            if !Uuid::parse_str(sub).is_ok_and(|s| subs.contains(&s)) {
                return Err(InvalidTenant(format!(
                    "azure role assignment {}: no subscription {sub}",
                    a.name
                )));
            }
        }
        Ok(())
    }
}
