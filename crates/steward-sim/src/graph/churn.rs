//! Churn: a small, deterministic share of the tenant changed through the same store writes the Graph
//! routes use, so that every change lands in the change log (`/users/delta`, `/groups/delta`) or the
//! audit log (`/auditLogs/directoryAudits`) exactly as an API write would. Used by incremental-sync tests
//! and `steward bench entra --incremental`.
//!
//! For a fraction `f`: `f` of the users changed — a third created (with a licensed user's licenses), a
//! third disabled, a third deleted (their reports lose their manager); `f` of the groups get a member
//! added and one removed, one of them a new owner, and one group is deleted; `f` of the service principals
//! get a default-access assignment; one user gets a directory role.

use uuid::Uuid;

use crate::model::{RoleAssignment, User};
use crate::store::{Obj, State};
use crate::util::{now, rfc3339};

/// What [`churn`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Churn {
    /// Users created.
    pub created: Vec<Uuid>,
    /// Users disabled.
    pub disabled: Vec<Uuid>,
    /// Users deleted.
    pub deleted: Vec<Uuid>,
    /// (group, member) added.
    pub members_added: Vec<(Uuid, Uuid)>,
    /// (group, member) removed.
    pub members_removed: Vec<(Uuid, Uuid)>,
    /// (group, owner) added.
    pub owners_added: Vec<(Uuid, Uuid)>,
    /// Groups deleted.
    pub groups_deleted: Vec<Uuid>,
    /// (service principal, user) default-access assignments added.
    pub assignments_added: Vec<(Uuid, Uuid)>,
}

impl Churn {
    /// Writes made.
    pub fn writes(&self) -> usize {
        self.created.len()
            + self.disabled.len()
            + self.deleted.len()
            + self.members_added.len()
            + self.members_removed.len()
            + self.owners_added.len()
            + self.groups_deleted.len()
            + self.assignments_added.len()
    }
}

struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        if n == 0 { 0 } else { ((self.0 >> 33) as usize) % n }
    }
}

fn writable_group(st: &State, i: usize) -> bool {
    let g = &st.tenant.groups[i];
    g.membership_rule.is_none() && !g.on_premises_sync_enabled
}

/// Changes about `fraction` of the tenant (see the module docs); deterministic for a given state and seed.
pub fn churn(st: &mut State, fraction: f64, seed: u64) -> Churn {
    let mut rng = Lcg(seed ^ 0x5eed_c0ff_ee00_0001);
    let mut out = Churn::default();
    let users = st.tenant.users.len();
    let per = ((users as f64 * fraction / 3.0).round() as usize).max(1);
    let licenses = st
        .tenant
        .users
        .iter()
        .find(|u| !u.licenses.is_empty())
        .map(|u| u.licenses.clone())
        .unwrap_or_default();
    let domain = st
        .tenant
        .users
        .first()
        .and_then(|u| u.user_principal_name.split('@').nth(1))
        .unwrap_or("contoso.example")
        .to_owned();
    for n in 0..per {
        let id = Uuid::from_u128(((rng.below(usize::MAX) as u128) << 64) | n as u128);
        let u = User {
            id,
            user_principal_name: format!("churn.{}.{n}@{domain}", seed),
            display_name: format!("Churn {seed} {n}"),
            given_name: Some("Churn".into()),
            surname: Some(format!("{n}")),
            mail: None,
            user_type: Default::default(),
            account_enabled: true,
            created: rfc3339(now()),
            on_premises_sync_enabled: false,
            employee_id: None,
            employee_type: None,
            department: Some("Churn".into()),
            job_title: None,
            manager: None,
            mailbox: None,
            licenses: licenses.clone(),
            last_sign_in: None,
        };
        if st.create_user(u).is_ok() {
            out.created.push(id);
        }
    }
    for _ in 0..per {
        let i = rng.below(st.tenant.users.len());
        let u = &mut st.tenant.users[i];
        if u.account_enabled && !out.created.contains(&u.id) {
            u.account_enabled = false;
            let id = u.id;
            st.touch_user(id);
            out.disabled.push(id);
        }
    }
    for _ in 0..per {
        let i = rng.below(st.tenant.users.len());
        let id = st.tenant.users[i].id;
        if out.created.contains(&id) || out.disabled.contains(&id) {
            continue;
        }
        if st.delete_user(id).is_ok() {
            out.deleted.push(id);
        }
    }
    let groups = st.tenant.groups.len();
    let per_group = ((groups as f64 * fraction).round() as usize).max(2);
    for k in 0..per_group {
        let gi = rng.below(st.tenant.groups.len());
        if !writable_group(st, gi) {
            continue;
        }
        let gid = st.tenant.groups[gi].id;
        let ui = rng.below(st.tenant.users.len());
        let uid = st.tenant.users[ui].id;
        if st.add_group_member(gid, uid).is_ok() {
            out.members_added.push((gid, uid));
        }
        let members = &st.tenant.groups[gi].members;
        if let Some(&m) = members.get(rng.below(members.len()))
            && m != uid
            && st.remove_group_member(gid, m).is_ok()
        {
            out.members_removed.push((gid, m));
        }
        if k == 0 && st.add_owner(gid, uid).is_ok() {
            out.owners_added.push((gid, uid));
        }
    }
    // One group deleted (a writable one that is not already changed).
    for _ in 0..16 {
        let gi = rng.below(st.tenant.groups.len());
        let gid = st.tenant.groups[gi].id;
        let touched = out
            .members_added
            .iter()
            .chain(&out.members_removed)
            .any(|(g, _)| *g == gid);
        if writable_group(st, gi) && !touched && st.delete_group(gid).is_ok() {
            out.groups_deleted.push(gid);
            break;
        }
    }
    let sps: Vec<Uuid> = st.tenant.service_principals.iter().map(|s| s.id).collect();
    let per_sp = ((sps.len() as f64 * fraction).round() as usize).max(1);
    for n in 0..per_sp {
        let sp = sps[rng.below(sps.len())];
        let uid = st.tenant.users[rng.below(st.tenant.users.len())].id;
        let id = format!("churn-{seed}-{n}-{}", Uuid::new_v4().simple());
        if st
            .add_app_role_assignment(sp, uid, Uuid::nil(), id, rfc3339(now()))
            .is_ok()
        {
            out.assignments_added.push((sp, uid));
        }
    }
    if let Some(role) = st.tenant.role_definitions.first().map(|r| r.id) {
        let uid = st.tenant.users[rng.below(st.tenant.users.len())].id;
        if matches!(st.objects.get(&uid), Some(Obj::User(_))) {
            let _ = st.add_role_assignment(RoleAssignment {
                id: format!("churn-{seed}-{}", Uuid::new_v4().simple()),
                role_definition_id: role,
                principal_id: uid,
                directory_scope_id: "/".into(),
                end: None,
            });
        }
    }
    out
}
