//! The live tenant: the `Tenant` data behind one lock, the indexes that make reads fast, every write the
//! emulator supports, and the change log that delta queries read.
//!
//! Invariants: `objects` maps every user, group, service principal and application id to its index;
//! `assignments_by_resource` lists the indexes of each service principal's app role assignments; both are
//! rebuilt by every write that could move an index. Every write that a delta query can see appends one
//! `Change` with the next sequence number. Errors are domain errors (`WriteError`); the `graph` and `arm`
//! modules turn them into Microsoft's wire errors.

use std::collections::HashMap;

use uuid::Uuid;

use crate::model::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obj {
    User(usize),
    Group(usize),
    Sp(usize),
    App(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    User,
    Group,
}

/// One entry of the change log read by `/users/delta` and `/groups/delta`.
#[derive(Clone, Debug)]
pub struct Change {
    pub seq: u64,
    pub kind: ChangeKind,
    pub id: Uuid,
    /// (member id, added?) for group membership changes.
    pub members: Vec<(Uuid, bool)>,
    /// (owner id, added?) for group owner changes (`owners@delta`).
    pub owners: Vec<(Uuid, bool)>,
    /// The object was deleted (soft: delta reports `@removed: {"reason": "changed"}`).
    pub deleted: bool,
}

/// One entry of the directory audit log (`/auditLogs/directoryAudits`): writes Graph has no delta query
/// for (app role assignments and service principal owners) are found through it.
#[derive(Clone, Debug)]
pub struct Audit {
    pub id: Uuid,
    /// RFC 3339, UTC.
    pub time: String,
    pub category: &'static str,
    pub activity: &'static str,
    /// (id, type) of the objects the activity touched, the service principal first.
    pub targets: Vec<(Uuid, &'static str)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The object addressed by the URL does not exist.
    NotFound(Uuid),
    /// A referenced object (in the body) does not exist.
    ReferenceNotFound(String),
    /// The relationship already exists (duplicate member, owner, assignment).
    AlreadyExists,
    /// Removing what is not there.
    Absent,
    /// A rule of the directory forbids it; the message is Microsoft's.
    Refused(String),
    BadRequest(String),
}

pub struct State {
    pub tenant: Tenant,
    pub objects: HashMap<Uuid, Obj>,
    pub sp_by_app_id: HashMap<Uuid, usize>,
    pub app_by_app_id: HashMap<Uuid, usize>,
    pub users_by_upn: HashMap<String, usize>,
    pub assignments_by_resource: HashMap<Uuid, Vec<usize>>,
    pub changes: Vec<Change>,
    pub seq: u64,
    pub audits: Vec<Audit>,
    /// Delta tokens from before this position answer 410 `syncStateNotFound` (see `expire_delta_tokens`).
    pub delta_floor: u64,
}

impl State {
    pub fn new(tenant: Tenant) -> State {
        let mut s = State {
            tenant,
            objects: HashMap::new(),
            sp_by_app_id: HashMap::new(),
            app_by_app_id: HashMap::new(),
            users_by_upn: HashMap::new(),
            assignments_by_resource: HashMap::new(),
            changes: Vec::new(),
            seq: 1,
            audits: Vec::new(),
            delta_floor: 0,
        };
        s.reindex();
        s
    }

    fn reindex(&mut self) {
        let t = &self.tenant;
        let mut objects = HashMap::with_capacity(t.users.len() + t.groups.len() + t.service_principals.len());
        for (i, u) in t.users.iter().enumerate() {
            objects.insert(u.id, Obj::User(i));
        }
        for (i, g) in t.groups.iter().enumerate() {
            objects.insert(g.id, Obj::Group(i));
        }
        for (i, s) in t.service_principals.iter().enumerate() {
            objects.insert(s.id, Obj::Sp(i));
        }
        for (i, a) in t.applications.iter().enumerate() {
            objects.insert(a.id, Obj::App(i));
        }
        self.objects = objects;
        self.sp_by_app_id = t
            .service_principals
            .iter()
            .enumerate()
            .map(|(i, s)| (s.app_id, i))
            .collect();
        self.app_by_app_id = t
            .applications
            .iter()
            .enumerate()
            .map(|(i, a)| (a.app_id, i))
            .collect();
        self.users_by_upn = t
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.user_principal_name.to_lowercase(), i))
            .collect();
        self.reindex_assignments();
    }

    fn reindex_assignments(&mut self) {
        let mut by: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (i, a) in self.tenant.app_role_assignments.iter().enumerate() {
            by.entry(a.resource_id).or_default().push(i);
        }
        self.assignments_by_resource = by;
    }

    pub fn user(&self, key: &str) -> Option<&User> {
        if let Ok(id) = Uuid::parse_str(key) {
            return match self.objects.get(&id) {
                Some(Obj::User(i)) => self.tenant.users.get(*i),
                _ => None,
            };
        }
        self.users_by_upn
            .get(&key.to_lowercase())
            .and_then(|i| self.tenant.users.get(*i))
    }

    pub fn group(&self, id: &Uuid) -> Option<&Group> {
        match self.objects.get(id) {
            Some(Obj::Group(i)) => self.tenant.groups.get(*i),
            _ => None,
        }
    }

    pub fn sp(&self, id: &Uuid) -> Option<&ServicePrincipal> {
        match self.objects.get(id) {
            Some(Obj::Sp(i)) => self.tenant.service_principals.get(*i),
            _ => None,
        }
    }

    pub fn app(&self, id: &Uuid) -> Option<&Application> {
        match self.objects.get(id) {
            Some(Obj::App(i)) => self.tenant.applications.get(*i),
            _ => None,
        }
    }

    pub fn principal_type(&self, id: &Uuid) -> Option<PrincipalType> {
        match self.objects.get(id)? {
            Obj::User(_) => Some(PrincipalType::User),
            Obj::Group(_) => Some(PrincipalType::Group),
            Obj::Sp(_) => Some(PrincipalType::ServicePrincipal),
            Obj::App(_) => None,
        }
    }

    pub fn display_name(&self, id: &Uuid) -> Option<&str> {
        Some(match self.objects.get(id)? {
            Obj::User(i) => &self.tenant.users[*i].display_name,
            Obj::Group(i) => &self.tenant.groups[*i].display_name,
            Obj::Sp(i) => &self.tenant.service_principals[*i].display_name,
            Obj::App(i) => &self.tenant.applications[*i].display_name,
        })
    }

    /// Groups `id` is a direct member of.
    pub fn member_of(&self, id: &Uuid) -> Vec<Uuid> {
        self.tenant
            .groups
            .iter()
            .filter(|g| g.members.contains(id))
            .map(|g| g.id)
            .collect()
    }

    /// Groups `id` is a member of at any depth.
    pub fn transitive_member_of(&self, id: &Uuid) -> Vec<Uuid> {
        let mut out: Vec<Uuid> = Vec::new();
        let mut frontier = vec![*id];
        while let Some(x) = frontier.pop() {
            for g in self.member_of(&x) {
                if g != *id && !out.contains(&g) {
                    out.push(g);
                    frontier.push(g);
                }
            }
        }
        out
    }

    /// Members of a group at any depth, in breadth-first order, without duplicates.
    pub fn transitive_members(&self, group: &Uuid) -> Vec<Uuid> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut queue = std::collections::VecDeque::from([*group]);
        while let Some(x) = queue.pop_front() {
            if let Some(g) = self.group(&x) {
                for m in &g.members {
                    if *m != *group && seen.insert(*m) {
                        out.push(*m);
                        if matches!(self.objects.get(m), Some(Obj::Group(_))) {
                            queue.push_back(*m);
                        }
                    }
                }
            }
        }
        out
    }

    fn log(&mut self, kind: ChangeKind, id: Uuid, members: Vec<(Uuid, bool)>) {
        self.seq += 1;
        self.changes.push(Change {
            seq: self.seq,
            kind,
            id,
            members,
            owners: Vec::new(),
            deleted: false,
        });
    }

    fn log_owner(&mut self, group: Uuid, owner: Uuid, added: bool) {
        self.seq += 1;
        self.changes.push(Change {
            seq: self.seq,
            kind: ChangeKind::Group,
            id: group,
            members: Vec::new(),
            owners: vec![(owner, added)],
            deleted: false,
        });
    }

    fn log_deleted(&mut self, kind: ChangeKind, id: Uuid) {
        self.seq += 1;
        self.changes.push(Change {
            seq: self.seq,
            kind,
            id,
            members: Vec::new(),
            owners: Vec::new(),
            deleted: true,
        });
    }

    fn audit(&mut self, activity: &'static str, sp: Uuid, other: Option<(Uuid, &'static str)>) {
        let mut targets = vec![(sp, "ServicePrincipal")];
        targets.extend(other);
        self.audits.push(Audit {
            id: Uuid::new_v4(),
            time: crate::util::rfc3339(crate::util::now()),
            category: "ApplicationManagement",
            activity,
            targets,
        });
    }

    fn principal_audit_type(&self, id: &Uuid) -> &'static str {
        match self.objects.get(id) {
            Some(Obj::User(_)) => "User",
            Some(Obj::Group(_)) => "Group",
            _ => "ServicePrincipal",
        }
    }

    /// Makes every delta token issued so far expired, as Graph does after about seven days or when it
    /// drops a tenant's change-tracking state: the next round with such a token answers 410
    /// `syncStateNotFound`.
    pub fn expire_delta_tokens(&mut self) {
        self.seq += 1;
        self.delta_floor = self.seq;
    }

    /// Creates a user (`POST /users`), logged for `/users/delta`.
    pub fn create_user(&mut self, u: User) -> Result<(), WriteError> {
        let upn = u.user_principal_name.to_lowercase();
        if self.users_by_upn.contains_key(&upn) {
            return Err(WriteError::BadRequest(
                "Another object with the same value for property userPrincipalName already exists.".into(),
            ));
        }
        let id = u.id;
        self.tenant.users.push(u);
        let i = self.tenant.users.len() - 1;
        self.objects.insert(id, Obj::User(i));
        self.users_by_upn.insert(upn, i);
        self.touch_user(id);
        Ok(())
    }

    /// Removes `id` from every group's members and owners, logging each removal for `/groups/delta`.
    fn drop_from_groups(&mut self, id: Uuid) {
        let mut removed: Vec<(Uuid, bool)> = Vec::new();
        for g in &mut self.tenant.groups {
            let before = (g.members.len(), g.owners.len());
            g.members.retain(|m| *m != id);
            g.owners.retain(|m| *m != id);
            if g.members.len() != before.0 {
                removed.push((g.id, true));
            }
            if g.owners.len() != before.1 {
                removed.push((g.id, false));
            }
        }
        for (g, member) in removed {
            if member {
                self.log(ChangeKind::Group, g, vec![(id, false)]);
            } else {
                self.log_owner(g, id, false);
            }
        }
    }

    /// Removes what points at a deleted principal: app role assignments, role assignments and eligibility.
    fn drop_principal_refs(&mut self, id: Uuid) {
        let t = &mut self.tenant;
        t.app_role_assignments.retain(|a| a.principal_id != id);
        t.role_assignments.retain(|a| a.principal_id != id);
        t.role_eligibilities.retain(|a| a.principal_id != id);
    }

    /// Deletes a user (`DELETE /users/{id}`; Graph moves it to deleted items): it leaves its groups, app
    /// role assignments and directory roles, and its reports lose their manager (they show in
    /// `/users/delta`).
    pub fn delete_user(&mut self, id: Uuid) -> Result<(), WriteError> {
        let Some(Obj::User(i)) = self.objects.get(&id).copied() else {
            return Err(WriteError::NotFound(id));
        };
        self.tenant.users.remove(i);
        self.drop_from_groups(id);
        self.drop_principal_refs(id);
        let reports: Vec<Uuid> = self
            .tenant
            .users
            .iter_mut()
            .filter(|u| u.manager == Some(id))
            .map(|u| {
                u.manager = None;
                u.id
            })
            .collect();
        self.reindex();
        for r in reports {
            self.touch_user(r);
        }
        self.log_deleted(ChangeKind::User, id);
        Ok(())
    }

    /// Deletes a group (`DELETE /groups/{id}`): it leaves the groups it was a member of, and its app role
    /// assignments and directory roles go with it.
    pub fn delete_group(&mut self, id: Uuid) -> Result<(), WriteError> {
        let Some(Obj::Group(i)) = self.objects.get(&id).copied() else {
            return Err(WriteError::NotFound(id));
        };
        self.tenant.groups.remove(i);
        self.drop_from_groups(id);
        self.drop_principal_refs(id);
        self.reindex();
        self.log_deleted(ChangeKind::Group, id);
        Ok(())
    }

    /// Records that a user's properties changed (for `/users/delta`).
    pub fn touch_user(&mut self, id: Uuid) {
        self.log(ChangeKind::User, id, Vec::new());
    }

    fn group_mut(&mut self, id: &Uuid) -> Result<&mut Group, WriteError> {
        match self.objects.get(id) {
            Some(Obj::Group(i)) => Ok(&mut self.tenant.groups[*i]),
            _ => Err(WriteError::NotFound(*id)),
        }
    }

    pub fn add_group_member(&mut self, group: Uuid, member: Uuid) -> Result<(), WriteError> {
        match self.objects.get(&member) {
            Some(Obj::User(_) | Obj::Group(_) | Obj::Sp(_)) => {}
            _ => return Err(WriteError::ReferenceNotFound(member.to_string())),
        }
        let g = self.group_mut(&group)?;
        if g.membership_rule.is_some() {
            return Err(WriteError::Refused(
                "Insufficient privileges to complete the operation. Membership of a group with dynamic membership rules cannot be changed."
                    .into(),
            ));
        }
        if g.on_premises_sync_enabled {
            return Err(WriteError::Refused(
                "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration."
                    .into(),
            ));
        }
        if member == group {
            return Err(WriteError::BadRequest(
                "A group cannot be a member of itself.".into(),
            ));
        }
        if g.members.contains(&member) {
            return Err(WriteError::AlreadyExists);
        }
        g.members.push(member);
        self.log(ChangeKind::Group, group, vec![(member, true)]);
        Ok(())
    }

    pub fn remove_group_member(&mut self, group: Uuid, member: Uuid) -> Result<(), WriteError> {
        let g = self.group_mut(&group)?;
        if g.membership_rule.is_some() || g.on_premises_sync_enabled {
            return Err(WriteError::Refused(if g.on_premises_sync_enabled {
                "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.".into()
            } else {
                "Insufficient privileges to complete the operation. Membership of a group with dynamic membership rules cannot be changed.".into()
            }));
        }
        let Some(pos) = g.members.iter().position(|m| *m == member) else {
            return Err(WriteError::Absent);
        };
        g.members.remove(pos);
        self.log(ChangeKind::Group, group, vec![(member, false)]);
        Ok(())
    }

    fn owners_mut(&mut self, target: &Uuid) -> Result<&mut Vec<Uuid>, WriteError> {
        match self.objects.get(target) {
            Some(Obj::Group(i)) => Ok(&mut self.tenant.groups[*i].owners),
            Some(Obj::Sp(i)) => Ok(&mut self.tenant.service_principals[*i].owners),
            Some(Obj::App(i)) => Ok(&mut self.tenant.applications[*i].owners),
            _ => Err(WriteError::NotFound(*target)),
        }
    }

    pub fn add_owner(&mut self, target: Uuid, owner: Uuid) -> Result<(), WriteError> {
        match self.objects.get(&owner) {
            Some(Obj::User(_) | Obj::Sp(_)) => {}
            Some(_) => {
                return Err(WriteError::BadRequest(
                    "Only users and service principals can be owners.".into(),
                ));
            }
            None => return Err(WriteError::ReferenceNotFound(owner.to_string())),
        }
        if let Some(g) = self.group(&target)
            && g.on_premises_sync_enabled
        {
            return Err(WriteError::Refused(
                "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration."
                    .into(),
            ));
        }
        let owners = self.owners_mut(&target)?;
        if owners.contains(&owner) {
            return Err(WriteError::AlreadyExists);
        }
        owners.push(owner);
        self.owner_changed(target, owner, true);
        Ok(())
    }

    fn owner_changed(&mut self, target: Uuid, owner: Uuid, added: bool) {
        match self.objects.get(&target) {
            Some(Obj::Group(_)) => self.log_owner(target, owner, added),
            Some(Obj::Sp(_)) => {
                let t = self.principal_audit_type(&owner);
                let activity = if added {
                    "Add owner to service principal"
                } else {
                    "Remove owner from service principal"
                };
                self.audit(activity, target, Some((owner, t)));
            }
            _ => {}
        }
    }

    pub fn remove_owner(&mut self, target: Uuid, owner: Uuid) -> Result<(), WriteError> {
        let is_group = matches!(self.objects.get(&target), Some(Obj::Group(_)));
        let owners = self.owners_mut(&target)?;
        let Some(pos) = owners.iter().position(|o| *o == owner) else {
            return Err(WriteError::Absent);
        };
        if is_group && owners.len() == 1 {
            return Err(WriteError::Refused(
                "The group must have at least one owner, hence this owner cannot be removed.".into(),
            ));
        }
        owners.remove(pos);
        self.owner_changed(target, owner, false);
        Ok(())
    }

    /// Creates an app role assignment; returns its index.
    pub fn add_app_role_assignment(
        &mut self,
        resource: Uuid,
        principal: Uuid,
        app_role: Uuid,
        id: String,
        created: String,
    ) -> Result<usize, WriteError> {
        let Some(sp) = self.sp(&resource) else {
            return Err(WriteError::NotFound(resource));
        };
        let ptype = self
            .principal_type(&principal)
            .ok_or_else(|| WriteError::ReferenceNotFound(principal.to_string()))?;
        if !app_role.is_nil() {
            let Some(role) = sp.app_roles.iter().find(|r| r.id == app_role) else {
                return Err(WriteError::BadRequest(format!(
                    "Permission being assigned was not found on application '{}'",
                    sp.app_id
                )));
            };
            let wanted = if ptype == PrincipalType::ServicePrincipal {
                "Application"
            } else {
                "User"
            };
            if !role.allowed_member_types.iter().any(|m| m == wanted) {
                return Err(WriteError::BadRequest(format!(
                    "The app role '{}' is not assignable to principals of type {:?}.",
                    role.display_name, ptype
                )));
            }
        }
        let existing = self.assignments_by_resource.get(&resource).is_some_and(|v| {
            v.iter().any(|&i| {
                let a = &self.tenant.app_role_assignments[i];
                a.principal_id == principal && a.app_role_id == app_role
            })
        });
        if existing {
            return Err(WriteError::AlreadyExists);
        }
        self.tenant.app_role_assignments.push(AppRoleAssignment {
            id,
            resource_id: resource,
            app_role_id: app_role,
            principal_id: principal,
            created,
        });
        let idx = self.tenant.app_role_assignments.len() - 1;
        self.assignments_by_resource
            .entry(resource)
            .or_default()
            .push(idx);
        let t = self.principal_audit_type(&principal);
        self.audit(
            "Add app role assignment grant to user",
            resource,
            Some((principal, t)),
        );
        Ok(idx)
    }

    pub fn remove_app_role_assignment(&mut self, resource: Uuid, id: &str) -> Result<(), WriteError> {
        if self.sp(&resource).is_none() {
            return Err(WriteError::NotFound(resource));
        }
        let Some(pos) = self
            .tenant
            .app_role_assignments
            .iter()
            .position(|a| a.resource_id == resource && a.id == id)
        else {
            return Err(WriteError::Absent);
        };
        let principal = self.tenant.app_role_assignments[pos].principal_id;
        self.tenant.app_role_assignments.remove(pos);
        self.reindex_assignments();
        let t = self.principal_audit_type(&principal);
        self.audit(
            "Remove app role assignment from user",
            resource,
            Some((principal, t)),
        );
        Ok(())
    }

    pub fn add_role_assignment(&mut self, r: RoleAssignment) -> Result<(), WriteError> {
        if !self
            .tenant
            .role_definitions
            .iter()
            .any(|d| d.id == r.role_definition_id)
        {
            return Err(WriteError::ReferenceNotFound(r.role_definition_id.to_string()));
        }
        match self.objects.get(&r.principal_id) {
            Some(Obj::User(_) | Obj::Sp(_)) => {}
            Some(Obj::Group(i)) if self.tenant.groups[*i].is_assignable_to_role => {}
            Some(Obj::Group(_)) => {
                return Err(WriteError::BadRequest(
                    "The group is not role-assignable: only groups created with isAssignableToRole can be assigned directory roles.".into(),
                ));
            }
            _ => return Err(WriteError::ReferenceNotFound(r.principal_id.to_string())),
        }
        if self.tenant.role_assignments.iter().any(|x| {
            x.role_definition_id == r.role_definition_id
                && x.principal_id == r.principal_id
                && x.directory_scope_id == r.directory_scope_id
        }) {
            return Err(WriteError::AlreadyExists);
        }
        self.tenant.role_assignments.push(r);
        Ok(())
    }

    pub fn remove_role_assignment(&mut self, id: &str) -> Result<(), WriteError> {
        let Some(pos) = self.tenant.role_assignments.iter().position(|a| a.id == id) else {
            return Err(WriteError::Absent);
        };
        self.tenant.role_assignments.remove(pos);
        Ok(())
    }

    pub fn add_role_eligibility(&mut self, e: RoleEligibility) -> Result<(), WriteError> {
        if !self
            .tenant
            .role_definitions
            .iter()
            .any(|d| d.id == e.role_definition_id)
        {
            return Err(WriteError::ReferenceNotFound(e.role_definition_id.to_string()));
        }
        match self.objects.get(&e.principal_id) {
            Some(Obj::User(_)) => {}
            Some(Obj::Group(i)) if self.tenant.groups[*i].is_assignable_to_role => {}
            _ => return Err(WriteError::ReferenceNotFound(e.principal_id.to_string())),
        }
        if self.tenant.role_eligibilities.iter().any(|x| {
            x.role_definition_id == e.role_definition_id
                && x.principal_id == e.principal_id
                && x.directory_scope_id == e.directory_scope_id
        }) {
            return Err(WriteError::AlreadyExists);
        }
        self.tenant.role_eligibilities.push(e);
        Ok(())
    }

    pub fn remove_role_eligibility(
        &mut self,
        role: Uuid,
        principal: Uuid,
        scope: &str,
    ) -> Result<(), WriteError> {
        let Some(pos) = self.tenant.role_eligibilities.iter().position(|x| {
            x.role_definition_id == role && x.principal_id == principal && x.directory_scope_id == scope
        }) else {
            return Err(WriteError::Absent);
        };
        self.tenant.role_eligibilities.remove(pos);
        Ok(())
    }

    /// ARM: create a role assignment. `AlreadyExists` when the same principal, role and scope exist under
    /// any name; `BadRequest` for a name reused with other content.
    pub fn add_azure_role_assignment(&mut self, a: AzureRoleAssignment) -> Result<(), WriteError> {
        if let Some(same_name) = self
            .tenant
            .azure
            .role_assignments
            .iter()
            .find(|x| x.name == a.name)
        {
            if same_name.scope.eq_ignore_ascii_case(&a.scope)
                && same_name.role_definition == a.role_definition
                && same_name.principal_id == a.principal_id
            {
                return Ok(());
            }
            return Err(WriteError::BadRequest(
                "RoleAssignmentUpdateNotPermitted: Tenant ID, application ID, principal ID, and scope are not allowed to be updated.".into(),
            ));
        }
        if self.tenant.azure.role_assignments.iter().any(|x| {
            x.scope.eq_ignore_ascii_case(&a.scope)
                && x.role_definition == a.role_definition
                && x.principal_id == a.principal_id
        }) {
            return Err(WriteError::AlreadyExists);
        }
        self.tenant.azure.role_assignments.push(a);
        Ok(())
    }

    pub fn remove_azure_role_assignment(
        &mut self,
        scope: &str,
        name: Uuid,
    ) -> Result<AzureRoleAssignment, WriteError> {
        let Some(pos) = self
            .tenant
            .azure
            .role_assignments
            .iter()
            .position(|x| x.name == name && x.scope.eq_ignore_ascii_case(scope))
        else {
            return Err(WriteError::Absent);
        };
        Ok(self.tenant.azure.role_assignments.remove(pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{Size, generate};

    fn state() -> State {
        State::new(generate(Size::named("small").unwrap(), 5))
    }

    fn writable_group(s: &State) -> Uuid {
        s.tenant
            .groups
            .iter()
            .find(|g| g.membership_rule.is_none() && !g.on_premises_sync_enabled && g.owners.len() >= 2)
            .unwrap()
            .id
    }

    #[test]
    fn membership_write_rules() {
        let mut s = state();
        let g = writable_group(&s);
        let u = s
            .tenant
            .users
            .iter()
            .find(|u| !s.group(&g).unwrap().members.contains(&u.id))
            .unwrap()
            .id;
        let seq = s.seq;
        s.add_group_member(g, u).unwrap();
        assert_eq!(s.add_group_member(g, u), Err(WriteError::AlreadyExists));
        assert!(s.seq > seq);
        s.remove_group_member(g, u).unwrap();
        assert_eq!(s.remove_group_member(g, u), Err(WriteError::Absent));
        let dynamic = s
            .tenant
            .groups
            .iter()
            .find(|g| g.membership_rule.is_some())
            .unwrap()
            .id;
        assert!(matches!(
            s.add_group_member(dynamic, u),
            Err(WriteError::Refused(_))
        ));
        let synced = s
            .tenant
            .groups
            .iter()
            .find(|g| g.on_premises_sync_enabled)
            .unwrap()
            .id;
        assert!(matches!(
            s.add_group_member(synced, u),
            Err(WriteError::Refused(_))
        ));
        assert!(matches!(
            s.add_group_member(g, Uuid::nil()),
            Err(WriteError::ReferenceNotFound(_))
        ));
    }

    #[test]
    fn last_group_owner_cannot_be_removed() {
        let mut s = state();
        let g = writable_group(&s);
        let owners = s.group(&g).unwrap().owners.clone();
        for o in &owners[..owners.len() - 1] {
            s.remove_owner(g, *o).unwrap();
        }
        assert!(matches!(
            s.remove_owner(g, owners[owners.len() - 1]),
            Err(WriteError::Refused(_))
        ));
    }

    #[test]
    fn app_role_assignment_duplicates_and_removal() {
        let mut s = state();
        let sp = s
            .tenant
            .service_principals
            .iter()
            .find(|s| s.publisher == Publisher::ThirdParty)
            .unwrap()
            .id;
        let u = s.tenant.users[3].id;
        let before = s.tenant.app_role_assignments.len();
        let _ = s.remove_app_role_assignment(sp, "nope");
        let r = s.add_app_role_assignment(sp, u, Uuid::nil(), "x1".into(), "2024-01-01T00:00:00Z".into());
        if r == Err(WriteError::AlreadyExists) {
            return; // the generator already assigned this user; covered by the next line anyway
        }
        r.unwrap();
        assert_eq!(
            s.add_app_role_assignment(sp, u, Uuid::nil(), "x2".into(), "2024-01-01T00:00:00Z".into()),
            Err(WriteError::AlreadyExists)
        );
        assert_eq!(s.tenant.app_role_assignments.len(), before + 1);
        s.remove_app_role_assignment(sp, "x1").unwrap();
        assert_eq!(s.tenant.app_role_assignments.len(), before);
        assert!(s.assignments_by_resource.get(&sp).is_none_or(|v| {
            v.iter()
                .all(|&i| s.tenant.app_role_assignments[i].resource_id == sp)
        }));
    }
}
