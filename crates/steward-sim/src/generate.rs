//! The tenant generator: a realistic tenant of a chosen size, the same for the same seed.
//!
//! Realism that matters to connectors: a few huge groups ("All Employees", departments) and a long tail of
//! small ones; nested groups up to depth 5 and (in `large` and up) one membership cycle; on-prem synced,
//! dynamic and role-assignable groups; SaaS apps with thousands of assignments; first-party Microsoft apps;
//! managed identities; PIM eligibilities; resource-group names that repeat across subscriptions; role
//! assignments at every ARM scope kind. Two connector apps are registered: one with every permission the
//! connectors use (read and write) and one with read permissions only.

use std::collections::HashSet;

use base64::Engine;
use uuid::Uuid;

use crate::catalog::{self, stable_uuid};
use crate::model::*;
use crate::rng::Rng;

/// How big a generated tenant is.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub users: usize,
    pub groups: usize,
    pub memberships: usize,
    pub service_principals: usize,
    pub subscriptions: usize,
    pub resource_groups: usize,
    pub azure_assignments: usize,
    /// Direct user assignments of the biggest SaaS app.
    pub big_app_assignments: usize,
    pub membership_cycle: bool,
}

impl Size {
    pub fn named(name: &str) -> Option<Size> {
        Some(match name {
            "tiny" => Size {
                users: 20,
                groups: 8,
                memberships: 80,
                service_principals: 20,
                subscriptions: 1,
                resource_groups: 3,
                azure_assignments: 15,
                big_app_assignments: 5,
                membership_cycle: false,
            },
            "small" => Size {
                users: 200,
                groups: 40,
                memberships: 2_000,
                service_principals: 40,
                subscriptions: 2,
                resource_groups: 8,
                azure_assignments: 120,
                big_app_assignments: 60,
                membership_cycle: false,
            },
            "medium" => Size {
                users: 10_000,
                groups: 1_000,
                memberships: 100_000,
                service_principals: 300,
                subscriptions: 10,
                resource_groups: 200,
                azure_assignments: 4_000,
                big_app_assignments: 2_000,
                membership_cycle: false,
            },
            "large" => Size {
                users: 100_000,
                groups: 10_000,
                memberships: 1_000_000,
                service_principals: 2_000,
                subscriptions: 50,
                resource_groups: 1_000,
                azure_assignments: 20_000,
                big_app_assignments: 5_000,
                membership_cycle: true,
            },
            "xl" => Size {
                users: 1_000_000,
                groups: 50_000,
                memberships: 5_000_000,
                service_principals: 5_000,
                subscriptions: 100,
                resource_groups: 2_000,
                azure_assignments: 50_000,
                big_app_assignments: 20_000,
                membership_cycle: true,
            },
            _ => return None,
        })
    }
}

/// The connector apps every generated tenant registers, with their secrets. Secrets are derived from the
/// seed: a generated tenant is a test fixture, not a place for real secrets.
pub const CONNECTOR_APP: &str = "Steward Connector";
pub const READER_APP: &str = "Steward Reader";

const READ_PERMISSIONS: &[&str] = &[
    "User.Read.All",
    "Group.Read.All",
    "GroupMember.Read.All",
    "Application.Read.All",
    "RoleManagement.Read.Directory",
    "RoleEligibilitySchedule.Read.Directory",
    "MailboxSettings.Read",
    "Organization.Read.All",
    "AuditLog.Read.All",
    "Directory.Read.All",
];
const WRITE_PERMISSIONS: &[&str] = &[
    "GroupMember.ReadWrite.All",
    "Group.ReadWrite.All",
    "AppRoleAssignment.ReadWrite.All",
    "Application.ReadWrite.All",
    "RoleManagement.ReadWrite.Directory",
    "RoleEligibilitySchedule.ReadWrite.Directory",
    "RoleAssignmentSchedule.ReadWrite.Directory",
];

const BASE_TIME: i64 = 1_577_836_800; // 2020-01-01T00:00:00Z

fn ts(secs_after_base: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(BASE_TIME + secs_after_base)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    crate::util::rfc3339(t)
}

/// The 43-character id Graph gives an appRoleAssignment: the principal's GUID bytes (little-endian, as
/// .NET lays them out) followed by 16 more bytes, base64url without padding.
pub fn app_role_assignment_id(principal: Uuid, extra: [u8; 16]) -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&principal.to_bytes_le());
    bytes.extend_from_slice(&extra);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The id Graph gives an active unifiedRoleAssignment: base64url(roleDefinitionId ‖ principalId) + "-1".
pub fn role_assignment_id(role: Uuid, principal: Uuid) -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&role.to_bytes_le());
    bytes.extend_from_slice(&principal.to_bytes_le());
    format!(
        "{}-1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Registers a new self-signed certificate (RSA, valid 2024–2099) on the connector app of `t`, for sign-in
/// with a client assertion; returns (certificate PEM, private key PEM).
pub fn add_connector_certificate(t: &mut Tenant) -> Result<(String, String), crate::SimError> {
    let err = |e: rcgen::Error| crate::SimError::Config(format!("cannot make a certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).map_err(err)?;
    let cert = rcgen::CertificateParams::new(vec!["steward".to_string()])
        .map_err(err)?
        .self_signed(&key)
        .map_err(err)?;
    let app = t
        .applications
        .iter_mut()
        .find(|a| a.display_name == CONNECTOR_APP)
        .ok_or_else(|| crate::SimError::Config(format!("the tenant has no app named {CONNECTOR_APP:?}")))?;
    app.certificates.push(KeyCredential {
        key_id: Uuid::new_v4(),
        display_name: None,
        certificate_pem: cert.pem(),
        start: "2024-01-01T00:00:00Z".into(),
        end: "2099-01-01T00:00:00Z".into(),
    });
    Ok((cert.pem(), key.serialize_pem()))
}

pub fn generate(size: Size, seed: u64) -> Tenant {
    let root = Rng::new(seed);
    let mut t = Tenant {
        tenant_id: root.fork("tenant").uuid(),
        has_p2: true,
        ..Tenant::default()
    };
    let org = [
        "Contoso",
        "Fabrikam",
        "Northwind",
        "Tailspin",
        "Woodgrove",
        "Litware",
    ][seed as usize % 6];
    t.display_name = format!("{org} (emulated)");
    let initial = format!("{}{}.onmicrosoft.com", org.to_lowercase(), seed % 1000);
    let primary = format!("{}.example", org.to_lowercase());
    t.domains = vec![
        Domain {
            name: primary.clone(),
            is_default: true,
            is_initial: false,
        },
        Domain {
            name: initial.clone(),
            is_default: false,
            is_initial: true,
        },
    ];
    skus(&mut t, size);
    users(&mut t, size, &mut root.fork("users"), &primary, &initial);
    groups(&mut t, size, &mut root.fork("groups"));
    directory_roles(&mut t, size, &mut root.fork("roles"));
    apps(&mut t, size, &mut root.fork("apps"), seed);
    azure(&mut t, size, &mut root.fork("azure"));
    t
}

fn skus(t: &mut Tenant, size: Size) {
    for (id, part, plans) in catalog::SKUS {
        t.skus.push(Sku {
            sku_id: Uuid::parse_str(id).unwrap_or_else(|_| stable_uuid(part)),
            sku_part_number: (*part).to_string(),
            enabled_units: (size.users as u32).saturating_add(size.users as u32 / 10),
            service_plans: plans
                .iter()
                .map(|p| ServicePlan {
                    service_plan_id: catalog::sku_service_plan_id(p),
                    service_plan_name: (*p).to_string(),
                })
                .collect(),
        });
    }
}

fn users(t: &mut Tenant, size: Size, rng: &mut Rng, primary: &str, initial: &str) {
    let e3 = t.skus[0].sku_id;
    let e5 = t.skus[1].sku_id;
    let p2 = t.skus[2].sku_id;
    let pbi = t.skus[4].sku_id;
    t.users.reserve(size.users);
    for i in 0..size.users {
        let first = *rng.pick(catalog::FIRST_NAMES);
        let last = *rng.pick(catalog::LAST_NAMES);
        let guest = i > 0 && rng.chance(0.05);
        let roll = rng.unit();
        let mailbox = if guest {
            None
        } else if roll < 0.01 {
            Some(MailboxPurpose::Room)
        } else if roll < 0.015 {
            Some(MailboxPurpose::Equipment)
        } else if roll < 0.025 {
            Some(MailboxPurpose::Shared)
        } else if roll < 0.03 {
            None
        } else {
            Some(MailboxPurpose::User)
        };
        let nick = format!("{}.{}{}", first.to_lowercase(), last.to_lowercase(), i);
        let (upn, display, user_type) = match (guest, mailbox) {
            (true, _) => (
                format!("{nick}_partner.example#EXT#@{initial}"),
                format!("{first} {last} (Guest)"),
                UserType::Guest,
            ),
            (false, Some(MailboxPurpose::Room)) => (
                format!("room{i}@{primary}"),
                format!("Meeting Room {i}"),
                UserType::Member,
            ),
            (false, Some(MailboxPurpose::Equipment)) => (
                format!("equipment{i}@{primary}"),
                format!("Projector {i}"),
                UserType::Member,
            ),
            (false, Some(MailboxPurpose::Shared)) => (
                format!("shared{i}@{primary}"),
                format!("Shared Mailbox {i}"),
                UserType::Member,
            ),
            _ => (
                format!("{nick}@{primary}"),
                format!("{first} {last}"),
                UserType::Member,
            ),
        };
        let person = matches!(mailbox, Some(MailboxPurpose::User) | None);
        let resource_mailbox = !person && !guest;
        let enabled = !resource_mailbox && !rng.chance(0.03);
        let dept = if person && !guest {
            Some((*rng.pick(catalog::DEPARTMENTS)).to_string())
        } else {
            None
        };
        let manager = if i > 0 && person && !guest {
            let idx = rng.below(i.div_ceil(8).max(1));
            Some(t.users[idx].id)
        } else {
            None
        };
        let mut licenses = Vec::new();
        if person && !guest {
            if rng.chance(0.7) {
                licenses.push(e3);
            } else if rng.chance(0.85) {
                licenses.push(e5);
            }
            if rng.chance(0.1) {
                licenses.push(p2);
            }
            if rng.chance(0.2) {
                licenses.push(pbi);
            }
        }
        let created = ts(rng.below(5 * 365 * 86_400) as i64);
        t.users.push(User {
            id: rng.uuid(),
            user_principal_name: upn.clone(),
            display_name: display,
            given_name: person.then(|| first.to_string()),
            surname: person.then(|| last.to_string()),
            mail: if guest {
                Some(format!("{nick}@partner.example"))
            } else {
                mailbox.map(|_| upn.clone())
            },
            user_type,
            account_enabled: enabled,
            created,
            on_premises_sync_enabled: !guest && rng.chance(0.4),
            employee_id: (person && !guest).then(|| format!("E{:07}", i + 1)),
            employee_type: (person && !guest)
                .then(|| if rng.chance(0.9) { "Employee" } else { "Contractor" }.to_string()),
            department: dept,
            job_title: (person && !guest).then(|| (*rng.pick(catalog::JOB_TITLES)).to_string()),
            manager,
            mailbox,
            licenses,
            last_sign_in: (enabled && rng.chance(0.8))
                .then(|| ts(5 * 365 * 86_400 + rng.below(300 * 86_400) as i64)),
        });
    }
}

fn group_kind(rng: &mut Rng) -> GroupKind {
    let r = rng.unit();
    if r < 0.5 {
        GroupKind::Security
    } else if r < 0.8 {
        GroupKind::Microsoft365
    } else if r < 0.9 {
        GroupKind::MailEnabledSecurity
    } else {
        GroupKind::Distribution
    }
}

fn groups(t: &mut Tenant, size: Size, rng: &mut Rng) {
    let n_users = t.users.len();
    let member_users: Vec<usize> = (0..n_users)
        .filter(|&i| t.users[i].user_type == UserType::Member && t.users[i].given_name.is_some())
        .collect();
    let mut left = size.memberships as i64;
    let push = |t: &mut Tenant, g: Group| {
        t.groups.push(g);
    };
    let owners_for = |rng: &mut Rng, t: &Tenant, k: usize| -> Vec<Uuid> {
        rng.sample(member_users.len(), k)
            .into_iter()
            .map(|i| t.users[member_users[i]].id)
            .collect()
    };
    // The big ones.
    let all: Vec<Uuid> = member_users.iter().map(|&i| t.users[i].id).collect();
    left -= all.len() as i64;
    let owners = owners_for(rng, t, 2);
    push(
        t,
        Group {
            id: rng.uuid(),
            display_name: "All Employees".into(),
            description: Some("Every member account (dynamic)".into()),
            kind: GroupKind::Security,
            membership_rule: Some("(user.userType -eq \"Member\") and (user.givenName -ne null)".into()),
            is_assignable_to_role: false,
            on_premises_sync_enabled: false,
            visibility: None,
            created: ts(0),
            members: all,
            owners,
        },
    );
    for dept in catalog::DEPARTMENTS {
        if t.groups.len() >= size.groups {
            break;
        }
        let members: Vec<Uuid> = member_users
            .iter()
            .filter(|&&i| t.users[i].department.as_deref() == Some(dept))
            .map(|&i| t.users[i].id)
            .collect();
        left -= members.len() as i64;
        let owners = owners_for(rng, t, 1);
        let synced = rng.chance(0.5);
        push(
            t,
            Group {
                id: rng.uuid(),
                display_name: format!("Dept - {dept}"),
                description: Some(format!("Everyone in {dept}")),
                kind: if synced {
                    GroupKind::Security
                } else {
                    GroupKind::MailEnabledSecurity
                },
                membership_rule: None,
                is_assignable_to_role: false,
                on_premises_sync_enabled: synced,
                visibility: None,
                created: ts(rng.below(86_400 * 30) as i64),
                members,
                owners: if synced { Vec::new() } else { owners },
            },
        );
    }
    // The long tail: Pareto-distributed sizes scaled to the membership budget.
    let tail = size.groups.saturating_sub(t.groups.len());
    let raw: Vec<f64> = (0..tail)
        .map(|_| 1.0 / (1.0 - rng.unit()).powf(1.0 / 1.3))
        .collect();
    let raw_sum: f64 = raw.iter().sum::<f64>().max(1.0);
    let scale = (left.max(tail as i64) as f64) / raw_sum;
    let cap = (member_users.len() / 3).max(1);
    let words = [
        "Project",
        "Team",
        "Guild",
        "Squad",
        "Committee",
        "Working Group",
        "Program",
        "Chapter",
    ];
    let topics = [
        "Apollo", "Atlas", "Borealis", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor", "Ion",
        "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Onyx", "Pioneer", "Quartz", "Raven", "Summit",
        "Tundra", "Umbra", "Vertex", "Willow", "Xenon", "Yonder", "Zephyr",
    ];
    for (k, r) in raw.into_iter().enumerate() {
        let n = ((r * scale).round() as usize).clamp(1, cap);
        let kind = group_kind(rng);
        let dynamic = rng.chance(0.04);
        let role_assignable = kind == GroupKind::Security && !dynamic && rng.chance(0.04);
        let synced = !dynamic
            && !role_assignable
            && matches!(
                kind,
                GroupKind::Security | GroupKind::Distribution | GroupKind::MailEnabledSecurity
            )
            && rng.chance(0.3);
        let members: Vec<Uuid> = rng
            .sample(member_users.len(), n)
            .into_iter()
            .map(|i| t.users[member_users[i]].id)
            .collect();
        let owner_count = if synced {
            0
        } else if kind == GroupKind::Microsoft365 {
            rng.range(1, 3)
        } else {
            rng.range(0, 2)
        };
        let owners = owners_for(rng, t, owner_count);
        let name = format!("{} {} {}", rng.pick(&words), rng.pick(&topics), k + 1);
        push(
            t,
            Group {
                id: rng.uuid(),
                display_name: name,
                description: None,
                kind,
                membership_rule: dynamic
                    .then(|| format!("user.department -eq \"{}\"", rng.pick(catalog::DEPARTMENTS))),
                is_assignable_to_role: role_assignable,
                on_premises_sync_enabled: synced,
                visibility: (kind == GroupKind::Microsoft365)
                    .then(|| if rng.chance(0.8) { "Private" } else { "Public" }.to_string()),
                created: ts(rng.below(5 * 365 * 86_400) as i64),
                members,
                owners,
            },
        );
    }
    // Nesting: disjoint chains of 2..=6 groups (depth up to 5), parent ∋ child. Only cloud security
    // groups that are not dynamic take nested groups.
    let nestable: Vec<usize> = (1 + catalog::DEPARTMENTS.len()..t.groups.len())
        .filter(|&i| {
            let g = &t.groups[i];
            g.membership_rule.is_none() && !g.on_premises_sync_enabled && g.kind != GroupKind::Microsoft365
        })
        .collect();
    let picked = rng.sample(nestable.len(), nestable.len() / 4);
    let mut order: Vec<usize> = picked.into_iter().map(|i| nestable[i]).collect();
    // Shuffle so chains mix sizes.
    for i in (1..order.len()).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    let mut at = 0;
    let mut first_chain: Option<(usize, usize)> = None;
    while at + 1 < order.len() {
        let len = rng.range(2, 6).min(order.len() - at);
        for w in at..at + len - 1 {
            let child = t.groups[order[w + 1]].id;
            t.groups[order[w]].members.push(child);
        }
        if first_chain.is_none() {
            first_chain = Some((order[at], order[at + len - 1]));
        }
        at += len;
    }
    if size.membership_cycle
        && let Some((head, tail_idx)) = first_chain
    {
        // The deepest member of the first chain contains its head again: one cycle.
        let head_id = t.groups[head].id;
        t.groups[tail_idx].members.push(head_id);
    }
}

fn directory_roles(t: &mut Tenant, size: Size, rng: &mut Rng) {
    for (id, name, desc) in catalog::DIRECTORY_ROLES {
        t.role_definitions.push(RoleDefinition {
            id: Uuid::parse_str(id).unwrap_or_else(|_| stable_uuid(name)),
            display_name: (*name).to_string(),
            description: Some((*desc).to_string()),
            is_built_in: true,
            is_enabled: true,
            allowed_actions: vec![format!(
                "microsoft.directory/{}/allTasks",
                name.to_lowercase().replace(' ', "")
            )],
        });
    }
    for name in ["Helpdesk Tier 1 (custom)", "App Catalog Curator (custom)"] {
        t.role_definitions.push(RoleDefinition {
            id: rng.uuid(),
            display_name: name.to_string(),
            description: Some("Custom role defined by the tenant".into()),
            is_built_in: false,
            is_enabled: true,
            allowed_actions: vec!["microsoft.directory/users/basic/update".into()],
        });
    }
    let people: Vec<Uuid> = t
        .users
        .iter()
        .filter(|u| u.user_type == UserType::Member && u.given_name.is_some() && u.account_enabled)
        .map(|u| u.id)
        .collect();
    let role_groups: Vec<Uuid> = t
        .groups
        .iter()
        .filter(|g| g.is_assignable_to_role)
        .map(|g| g.id)
        .collect();
    let mut seen = HashSet::new();
    let n_roles = t.role_definitions.len();
    let active = (size.users / 50).max(20);
    for k in 0..active {
        let role = if k < 3 {
            t.role_definitions[0].id
        } else {
            t.role_definitions[rng.below(n_roles)].id
        };
        let principal = if !role_groups.is_empty() && rng.chance(0.1) {
            *rng.pick(&role_groups)
        } else {
            *rng.pick(&people)
        };
        if seen.insert((role, principal)) {
            t.role_assignments.push(RoleAssignment {
                id: role_assignment_id(role, principal),
                role_definition_id: role,
                principal_id: principal,
                directory_scope_id: "/".into(),
                end: None,
            });
        }
    }
    let eligible = (size.users / 100).max(10);
    let mut seen = HashSet::new();
    for _ in 0..eligible {
        let role = t.role_definitions[rng.below(n_roles)].id;
        let principal = if !role_groups.is_empty() && rng.chance(0.15) {
            *rng.pick(&role_groups)
        } else {
            *rng.pick(&people)
        };
        if seen.insert((role, principal)) {
            let start = 5 * 365 * 86_400 + rng.below(200 * 86_400) as i64;
            t.role_eligibilities.push(RoleEligibility {
                id: rng.uuid().to_string(),
                role_definition_id: role,
                principal_id: principal,
                directory_scope_id: "/".into(),
                start: ts(start),
                end: rng.chance(0.4).then(|| ts(start + 365 * 86_400)),
            });
        }
    }
}

struct SpPlan {
    index: usize,
    roles: Vec<Uuid>,
}

fn apps(t: &mut Tenant, size: Size, rng: &mut Rng, seed: u64) {
    let people: Vec<Uuid> = t
        .users
        .iter()
        .filter(|u| u.user_type == UserType::Member && u.given_name.is_some())
        .map(|u| u.id)
        .collect();
    let microsoft = Uuid::parse_str(catalog::MICROSOFT_TENANT).unwrap_or_default();
    // First-party service principals; Microsoft Graph carries the permissions as app roles.
    let perms = catalog::graph_permissions();
    for (app_id, name) in catalog::FIRST_PARTY_APPS {
        let app_roles = if *app_id == catalog::GRAPH_APP_ID {
            perms
                .iter()
                .map(|(id, v)| AppRole {
                    id: *id,
                    value: Some((*v).to_string()),
                    display_name: format!("{v} (application permission)"),
                    description: None,
                    allowed_member_types: vec!["Application".into()],
                    is_enabled: true,
                })
                .collect()
        } else {
            Vec::new()
        };
        t.service_principals.push(ServicePrincipal {
            id: rng.uuid(),
            app_id: Uuid::parse_str(app_id).unwrap_or_else(|_| stable_uuid(name)),
            display_name: (*name).to_string(),
            kind: SpKind::Application,
            publisher: Publisher::Microsoft,
            owner_organization: Some(microsoft),
            account_enabled: true,
            app_role_assignment_required: false,
            app_roles,
            tags: Vec::new(),
            homepage: None,
            owners: Vec::new(),
            alternative_names: Vec::new(),
            created: ts(0),
        });
    }
    let graph_sp = t.service_principals[0].id;
    // The connector apps.
    let mut secret_rng = Rng::new(seed ^ 0x005e_c2e7);
    for (name, write) in [(CONNECTOR_APP, true), (READER_APP, false)] {
        let app_id = rng.uuid();
        let secret = connector_secret(&mut secret_rng);
        t.applications.push(Application {
            id: rng.uuid(),
            app_id,
            display_name: name.to_string(),
            created: ts(86_400),
            sign_in_audience: Some("AzureADMyOrg".into()),
            secrets: vec![PasswordCredential {
                key_id: rng.uuid(),
                display_name: Some("emulator".into()),
                secret,
                start: ts(0),
                end: "2099-12-31T00:00:00Z".into(),
            }],
            certificates: Vec::new(),
            owners: vec![people[0]],
        });
        let sp_id = rng.uuid();
        t.service_principals.push(ServicePrincipal {
            id: sp_id,
            app_id,
            display_name: name.to_string(),
            kind: SpKind::Application,
            publisher: Publisher::Tenant,
            owner_organization: Some(t.tenant_id),
            account_enabled: true,
            app_role_assignment_required: false,
            app_roles: Vec::new(),
            tags: vec!["WindowsAzureActiveDirectoryIntegratedApp".into()],
            homepage: None,
            owners: vec![people[0]],
            alternative_names: Vec::new(),
            created: ts(86_400),
        });
        let granted: Vec<&str> = READ_PERMISSIONS
            .iter()
            .chain(if write { WRITE_PERMISSIONS } else { &[] })
            .copied()
            .collect();
        for p in granted {
            if let Some((role, _)) = perms.iter().find(|(_, v)| *v == p) {
                t.app_role_assignments.push(AppRoleAssignment {
                    id: app_role_assignment_id(sp_id, rng.bytes()),
                    resource_id: graph_sp,
                    app_role_id: *role,
                    principal_id: sp_id,
                    created: ts(86_400),
                });
            }
        }
    }
    // An app whose only secret has expired (AADSTS7000222).
    let expired_app = rng.uuid();
    t.applications.push(Application {
        id: rng.uuid(),
        app_id: expired_app,
        display_name: "Legacy Integration (expired secret)".into(),
        created: ts(0),
        sign_in_audience: Some("AzureADMyOrg".into()),
        secrets: vec![PasswordCredential {
            key_id: rng.uuid(),
            display_name: Some("old".into()),
            secret: connector_secret(&mut secret_rng),
            start: ts(0),
            end: ts(365 * 86_400),
        }],
        certificates: Vec::new(),
        owners: Vec::new(),
    });
    t.service_principals.push(ServicePrincipal {
        id: rng.uuid(),
        app_id: expired_app,
        display_name: "Legacy Integration (expired secret)".into(),
        kind: SpKind::Application,
        publisher: Publisher::Tenant,
        owner_organization: Some(t.tenant_id),
        account_enabled: true,
        app_role_assignment_required: false,
        app_roles: Vec::new(),
        tags: vec!["WindowsAzureActiveDirectoryIntegratedApp".into()],
        homepage: None,
        owners: Vec::new(),
        alternative_names: Vec::new(),
        created: ts(0),
    });

    // Managed identities are created with the Azure resources (user-assigned) and here (system-assigned).
    let remaining = size.service_principals.saturating_sub(t.service_principals.len());
    let n_mi = remaining * 15 / 100;
    let n_third = remaining * 30 / 100;
    let n_own = remaining.saturating_sub(n_mi + n_third);
    let mut plans = Vec::new();
    for k in 0..n_third + n_own {
        let third = k < n_third;
        let name = if third {
            let base = catalog::SAAS_APPS[k % catalog::SAAS_APPS.len()];
            if k < catalog::SAAS_APPS.len() {
                base.to_string()
            } else {
                format!("{base} ({})", k / catalog::SAAS_APPS.len() + 1)
            }
        } else {
            format!(
                "{} {}",
                ["Internal", "HR", "Finance", "Ops", "Data", "Portal"][k % 6],
                ["Portal", "API", "Dashboard", "Tool", "Service"][rng.below(5)]
            ) + &format!(" {}", k + 1)
        };
        let n_roles = rng.range(0, 4);
        let role_names = ["Admin", "User", "Reader", "Approver", "Auditor"];
        let mut app_roles: Vec<AppRole> = (0..n_roles)
            .map(|r| AppRole {
                id: rng.uuid(),
                value: Some(role_names[r].to_lowercase()),
                display_name: role_names[r].to_string(),
                description: Some(format!("{} of {name}", role_names[r])),
                allowed_member_types: vec!["User".into()],
                is_enabled: true,
            })
            .collect();
        if rng.chance(0.15) {
            app_roles.push(AppRole {
                id: rng.uuid(),
                value: Some("api.access".into()),
                display_name: "API access".into(),
                description: Some("Daemon access".into()),
                allowed_member_types: vec!["Application".into()],
                is_enabled: true,
            });
        }
        let app_id = rng.uuid();
        let n_owners = rng.range(0, 3);
        let owners: Vec<Uuid> = rng
            .sample(people.len(), n_owners)
            .into_iter()
            .map(|i| people[i])
            .collect();
        let created = ts(rng.below(5 * 365 * 86_400) as i64);
        if !third {
            t.applications.push(Application {
                id: rng.uuid(),
                app_id,
                display_name: name.clone(),
                created: created.clone(),
                sign_in_audience: Some("AzureADMyOrg".into()),
                secrets: Vec::new(),
                certificates: Vec::new(),
                owners: owners.clone(),
            });
        }
        let roles: Vec<Uuid> = std::iter::once(catalog::DEFAULT_ACCESS)
            .chain(
                app_roles
                    .iter()
                    .filter(|r| r.allowed_member_types.iter().any(|m| m == "User"))
                    .map(|r| r.id),
            )
            .collect();
        plans.push(SpPlan {
            index: t.service_principals.len(),
            roles,
        });
        let hidden = rng.chance(0.1);
        t.service_principals.push(ServicePrincipal {
            id: rng.uuid(),
            app_id,
            display_name: name.clone(),
            kind: SpKind::Application,
            publisher: if third {
                Publisher::ThirdParty
            } else {
                Publisher::Tenant
            },
            owner_organization: Some(if third {
                stable_uuid(&format!("vendor:{name}"))
            } else {
                t.tenant_id
            }),
            account_enabled: rng.chance(0.97),
            app_role_assignment_required: rng.chance(0.6),
            app_roles,
            tags: if hidden {
                vec![
                    "WindowsAzureActiveDirectoryIntegratedApp".into(),
                    "HideApp".into(),
                ]
            } else {
                vec!["WindowsAzureActiveDirectoryIntegratedApp".into()]
            },
            homepage: Some(format!(
                "https://{}.example/",
                name.to_lowercase().replace([' ', '(', ')', '.'], "")
            )),
            owners,
            alternative_names: Vec::new(),
            created,
        });
    }
    for k in 0..n_mi {
        t.service_principals.push(ServicePrincipal {
            id: rng.uuid(),
            app_id: rng.uuid(),
            display_name: format!("vm-{}-{:03}", ["web", "batch", "build", "db", "jump"][k % 5], k),
            kind: SpKind::ManagedIdentity,
            publisher: Publisher::Microsoft,
            owner_organization: None,
            account_enabled: true,
            app_role_assignment_required: false,
            app_roles: Vec::new(),
            tags: Vec::new(),
            homepage: None,
            owners: Vec::new(),
            alternative_names: vec!["isExplicit=False".into()],
            created: ts(rng.below(5 * 365 * 86_400) as i64),
        });
    }
    // Assignments: the first two SaaS apps are huge; the rest have a long tail.
    let all_employees = t.groups.first().map(|g| g.id);
    let group_ids: Vec<Uuid> = t.groups.iter().map(|g| g.id).collect();
    let sp_ids: Vec<Uuid> = t.service_principals.iter().map(|s| s.id).collect();
    for (k, plan) in plans.iter().enumerate() {
        let resource = t.service_principals[plan.index].id;
        let mut seen = HashSet::new();
        let mut assign = |t: &mut Tenant, rng: &mut Rng, principal: Uuid, role: Uuid| {
            if seen.insert((principal, role)) {
                t.app_role_assignments.push(AppRoleAssignment {
                    id: app_role_assignment_id(principal, rng.bytes()),
                    resource_id: resource,
                    app_role_id: role,
                    principal_id: principal,
                    created: ts(rng.below(5 * 365 * 86_400) as i64),
                });
            }
        };
        let (n_users, n_groups) = if k < 2 {
            (size.big_app_assignments, 3)
        } else {
            (rng.below(40), rng.below(4))
        };
        if k < 2
            && let Some(g) = all_employees
        {
            assign(t, rng, g, plan.roles[0]);
        }
        for i in rng.sample(people.len(), n_users) {
            let role = *rng.pick(&plan.roles);
            assign(t, rng, people[i], role);
        }
        for i in rng.sample(group_ids.len(), n_groups) {
            let role = *rng.pick(&plan.roles);
            assign(t, rng, group_ids[i], role);
        }
        if rng.chance(0.1) {
            let p = *rng.pick(&sp_ids);
            assign(t, rng, p, catalog::DEFAULT_ACCESS);
        }
    }
    // A few service principals (managed identities and apps) are members of security groups.
    let secgroups: Vec<usize> = (0..t.groups.len())
        .filter(|&i| {
            let g = &t.groups[i];
            g.kind == GroupKind::Security && g.membership_rule.is_none() && !g.on_premises_sync_enabled
        })
        .collect();
    if !secgroups.is_empty() {
        for _ in 0..(t.service_principals.len() / 10).max(1) {
            let sp = *rng.pick(&sp_ids);
            let gi = *rng.pick(&secgroups);
            if !t.groups[gi].members.contains(&sp) {
                t.groups[gi].members.push(sp);
            }
        }
    }
}

fn connector_secret(rng: &mut Rng) -> String {
    // Microsoft's secrets are 40 characters: a 3-character hint, "8Q~" and random base64url-ish text.
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~";
    let mut s = String::with_capacity(40);
    for i in 0..40 {
        if (3..6).contains(&i) {
            s.push(['8', 'Q', '~'][i - 3]);
        } else {
            s.push(alphabet[rng.below(alphabet.len())] as char);
        }
    }
    s
}

fn azure(t: &mut Tenant, size: Size, rng: &mut Rng) {
    let az = &mut t.azure;
    for (id, name, actions, data) in catalog::AZURE_BUILTIN_ROLES {
        az.builtin_roles.push(AzureRoleDefinition {
            name: Uuid::parse_str(id).unwrap_or_else(|_| stable_uuid(name)),
            role_name: (*name).to_string(),
            description: format!("Built-in role {name}"),
            actions: actions.iter().map(|s| s.to_string()).collect(),
            not_actions: if *name == "Contributor" {
                vec![
                    "Microsoft.Authorization/*/Delete".into(),
                    "Microsoft.Authorization/*/Write".into(),
                ]
            } else {
                Vec::new()
            },
            data_actions: data.iter().map(|s| s.to_string()).collect(),
            assignable_scopes: vec!["/".into()],
        });
    }
    for svc in catalog::AZURE_SERVICES {
        for suf in catalog::AZURE_ROLE_SUFFIXES {
            let name = format!("{svc} {suf}");
            az.builtin_roles.push(AzureRoleDefinition {
                name: stable_uuid(&format!("azure-role:{name}")),
                role_name: name,
                description: format!("Lets you {} {svc} resources", suf.to_lowercase()),
                actions: vec![format!("Microsoft.{}/*/read", svc.replace(' ', ""))],
                not_actions: Vec::new(),
                data_actions: Vec::new(),
                assignable_scopes: vec!["/".into()],
            });
        }
    }
    let envs = [
        "Production",
        "Staging",
        "Development",
        "Sandbox",
        "Shared Services",
        "Data Platform",
    ];
    for k in 0..size.subscriptions {
        az.subscriptions.push(Subscription {
            subscription_id: rng.uuid(),
            display_name: if k < envs.len() {
                envs[k].to_string()
            } else {
                format!("{} {}", envs[k % envs.len()], k)
            },
            state: "Enabled".into(),
        });
    }
    let subs: Vec<Uuid> = az.subscriptions.iter().map(|s| s.subscription_id).collect();
    for (k, s) in subs.iter().enumerate() {
        az.custom_roles.push(AzureRoleDefinition {
            name: rng.uuid(),
            role_name: format!("Custom Deployer {}", k + 1),
            description: "Deploys the tenant's workloads".into(),
            actions: vec!["Microsoft.Resources/deployments/*".into(), "*/read".into()],
            not_actions: Vec::new(),
            data_actions: Vec::new(),
            assignable_scopes: vec![format!("/subscriptions/{s}")],
        });
        if k >= 2 {
            break;
        }
    }
    // Resource groups: names repeat across subscriptions on purpose.
    let per_sub = (size.resource_groups / subs.len().max(1)).max(1);
    let mut storage_n = 0usize;
    for (si, s) in subs.iter().enumerate() {
        for r in 0..per_sub {
            let name = if r < catalog::RG_PURPOSES.len() {
                format!("rg-{}", catalog::RG_PURPOSES[r])
            } else {
                format!(
                    "rg-{}-{}",
                    catalog::RG_PURPOSES[r % catalog::RG_PURPOSES.len()],
                    r
                )
            };
            let location = (*rng.pick(catalog::LOCATIONS)).to_string();
            t.azure.resource_groups.push(ResourceGroup {
                subscription_id: *s,
                name: name.clone(),
                location: location.clone(),
            });
            // Every tenant has at least one storage account and one user-assigned identity.
            if rng.chance(0.35) || (si == 0 && r == 0) {
                for _ in 0..rng.range(1, 2) {
                    storage_n += 1;
                    let account = format!(
                        "st{}{:06}",
                        &name[3..].replace('-', "").chars().take(8).collect::<String>(),
                        storage_n
                    );
                    t.azure.storage_accounts.push(StorageAccount {
                        subscription_id: *s,
                        resource_group: name.clone(),
                        name: account.clone(),
                        location: location.clone(),
                        created: ts(rng.below(5 * 365 * 86_400) as i64),
                    });
                    for c in 0..rng.range(1, 5) {
                        t.azure.containers.push(BlobContainer {
                            subscription_id: *s,
                            resource_group: name.clone(),
                            account: account.clone(),
                            name: ["logs", "backups", "exports", "images", "raw", "curated"][c].to_string(),
                        });
                    }
                }
            }
            if rng.chance(0.2) || (si == 0 && r == 1 % per_sub) {
                let sp_id = rng.uuid();
                let client_id = rng.uuid();
                let id_name = format!("id-{}-{}", &name[3..], storage_n + r);
                let ident = UserAssignedIdentity {
                    subscription_id: *s,
                    resource_group: name.clone(),
                    name: id_name.clone(),
                    location: location.clone(),
                    principal_id: sp_id,
                    client_id,
                };
                t.service_principals.push(ServicePrincipal {
                    id: sp_id,
                    app_id: client_id,
                    display_name: id_name,
                    kind: SpKind::ManagedIdentity,
                    publisher: Publisher::Microsoft,
                    owner_organization: None,
                    account_enabled: true,
                    app_role_assignment_required: false,
                    app_roles: Vec::new(),
                    tags: Vec::new(),
                    homepage: None,
                    owners: Vec::new(),
                    alternative_names: vec!["isExplicit=True".into(), ident.arm_id()],
                    created: ts(rng.below(5 * 365 * 86_400) as i64),
                });
                t.azure.identities.push(ident);
            }
        }
    }
    let az = &mut t.azure;
    // Role assignments. The connector app is Owner of every subscription (so it can read and provision);
    // the reader app is Reader.
    let connector = t
        .service_principals
        .iter()
        .find(|s| s.display_name == CONNECTOR_APP)
        .map(|s| s.id);
    let reader = t
        .service_principals
        .iter()
        .find(|s| s.display_name == READER_APP)
        .map(|s| s.id);
    let owner = Uuid::parse_str("8e3af657-a8ff-443c-a75c-2fe8c4bcb635").unwrap_or_default();
    let reader_role = Uuid::parse_str("acdd72a7-3385-48ef-bd42-f606fba81ae7").unwrap_or_default();
    let mut seen = HashSet::new();
    for s in &subs {
        for (p, role) in [(connector, owner), (reader, reader_role)] {
            if let Some(p) = p {
                seen.insert((format!("/subscriptions/{s}"), role, p));
                az.role_assignments.push(AzureRoleAssignment {
                    name: rng.uuid(),
                    scope: format!("/subscriptions/{s}"),
                    role_definition: role,
                    principal_id: p,
                    principal_type: PrincipalType::ServicePrincipal,
                    created: ts(86_400),
                    end: None,
                });
            }
        }
    }
    let people: Vec<Uuid> = t
        .users
        .iter()
        .filter(|u| u.given_name.is_some())
        .map(|u| u.id)
        .collect();
    let groups: Vec<Uuid> = t
        .groups
        .iter()
        .filter(|g| g.kind != GroupKind::Distribution)
        .map(|g| g.id)
        .collect();
    let sps: Vec<Uuid> = t
        .service_principals
        .iter()
        .filter(|s| s.kind == SpKind::Application)
        .map(|s| s.id)
        .collect();
    let mis: Vec<Uuid> = t
        .service_principals
        .iter()
        .filter(|s| s.kind == SpKind::ManagedIdentity)
        .map(|s| s.id)
        .collect();
    let common: Vec<Uuid> = az.builtin_roles.iter().take(5).map(|r| r.name).collect();
    let storage_roles: Vec<Uuid> = az.builtin_roles.iter().skip(5).take(4).map(|r| r.name).collect();
    let n_builtin = az.builtin_roles.len();
    let target = size.azure_assignments;
    let mut tries = 0;
    while az.role_assignments.len() < target && tries < target * 4 {
        tries += 1;
        let r = rng.unit();
        let (scope, roles): (String, &[Uuid]) = if r < 0.3 || az.resource_groups.is_empty() {
            (format!("/subscriptions/{}", rng.pick(&subs)), &common)
        } else if r < 0.8 || az.storage_accounts.is_empty() {
            (rng.pick(&az.resource_groups).arm_id(), &common)
        } else if r < 0.92 || az.containers.is_empty() {
            (rng.pick(&az.storage_accounts).arm_id(), &storage_roles)
        } else {
            (rng.pick(&az.containers).arm_id(), &storage_roles)
        };
        let role = if rng.chance(0.1) {
            az.builtin_roles[rng.below(n_builtin)].name
        } else {
            *rng.pick(roles)
        };
        let p = rng.unit();
        let (principal, ptype) = if p < 0.6 || groups.is_empty() {
            (*rng.pick(&people), PrincipalType::User)
        } else if p < 0.85 {
            (*rng.pick(&groups), PrincipalType::Group)
        } else if p < 0.95 || mis.is_empty() {
            (*rng.pick(&sps), PrincipalType::ServicePrincipal)
        } else {
            (*rng.pick(&mis), PrincipalType::ServicePrincipal)
        };
        if seen.insert((scope.clone(), role, principal)) {
            az.role_assignments.push(AzureRoleAssignment {
                name: rng.uuid(),
                scope,
                role_definition: role,
                principal_id: principal,
                principal_type: ptype,
                created: ts(rng.below(5 * 365 * 86_400) as i64),
                end: None,
            });
        }
    }
    for _ in 0..(target / 50).max(3) {
        let scope = if rng.chance(0.5) || az.resource_groups.is_empty() {
            format!("/subscriptions/{}", rng.pick(&subs))
        } else {
            rng.pick(&az.resource_groups).arm_id()
        };
        az.role_eligibilities.push(AzureRoleAssignment {
            name: rng.uuid(),
            scope,
            role_definition: *rng.pick(&common),
            principal_id: *rng.pick(&people),
            principal_type: PrincipalType::User,
            created: ts(5 * 365 * 86_400),
            end: rng.chance(0.5).then(|| ts(6 * 365 * 86_400)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_for_a_seed() {
        let a = serde_json::to_string(&generate(Size::named("small").unwrap(), 7)).unwrap();
        let b = serde_json::to_string(&generate(Size::named("small").unwrap(), 7)).unwrap();
        let c = serde_json::to_string(&generate(Size::named("small").unwrap(), 8)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn small_tenant_has_the_promised_shape() {
        let t = generate(Size::named("small").unwrap(), 1);
        t.validate().unwrap();
        assert_eq!(t.users.len(), 200);
        assert_eq!(t.groups.len(), 40);
        assert!(t.users.iter().any(|u| u.user_type == UserType::Guest));
        assert!(t.users.iter().any(|u| u.mailbox == Some(MailboxPurpose::Room)));
        assert!(t.groups.iter().any(|g| g.on_premises_sync_enabled));
        assert!(t.groups.iter().any(|g| g.membership_rule.is_some()));
        assert!(
            t.service_principals
                .iter()
                .any(|s| s.kind == SpKind::ManagedIdentity)
        );
        assert!(
            t.service_principals
                .iter()
                .any(|s| s.publisher == Publisher::Microsoft)
        );
        assert!(!t.role_eligibilities.is_empty());
        // The biggest app has at least its configured number of direct user assignments.
        let max = t
            .service_principals
            .iter()
            .map(|s| {
                t.app_role_assignments
                    .iter()
                    .filter(|a| a.resource_id == s.id)
                    .count()
            })
            .max()
            .unwrap();
        assert!(max >= 60, "{max}");
        // Resource-group names repeat across subscriptions.
        let names: Vec<&str> = t.azure.resource_groups.iter().map(|r| r.name.as_str()).collect();
        let uniq: HashSet<&&str> = names.iter().collect();
        assert!(uniq.len() < names.len());
        // Every Azure scope kind is used.
        for kind in ["/resourceGroups/", "/storageAccounts/", "/containers/"] {
            assert!(
                t.azure.role_assignments.iter().any(|a| a.scope.contains(kind)),
                "{kind}"
            );
        }
    }

    #[test]
    fn nesting_depth_is_bounded_and_cycle_only_when_asked() {
        let mut size = Size::named("small").unwrap();
        let t = generate(size, 3);
        assert!(!crate::manifest::has_cycle(&t));
        size.membership_cycle = true;
        let t = generate(size, 3);
        assert!(crate::manifest::has_cycle(&t));
    }
}
