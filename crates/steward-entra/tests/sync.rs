//! Full syncs of emulated tenants over real HTTP, read back from the c1z and compared with the emulator's
//! manifest: every resource, every direct grant by kind and principal type, referential integrity, the
//! options (skip AD groups, mailbox settings, Microsoft apps, no P2), refusals, throttling and faults.
//! Provisioning: every entitlement kind × principal type granted, granted again, revoked, revoked again
//! (checked in the emulator and in the file's partial syncs), refusals that change nothing, answers lost
//! after the write applied, 429s and faults during writes, time-bound roles, tenants without P2.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use steward_c1z::{C1zReader, EntitlementFilter, GrantFilter, PageRequest, ResourceFilter};
use steward_entra::{Entra, EntraConfig};
use steward_model::pb::user_trait::AccountType;
use steward_model::{AnnotationsExt, GrantImmutable, UserTrait};
use steward_msgraph::{Credential, Secret};
use steward_sim::ctx::Settings;
use steward_sim::model::*;
use steward_sim::{Manifest, Options, Running, Size, generate, start};
use steward_sync::{SyncOptions, SyncPlan, run_sync};

const NO_PERMS_SECRET: &str = "nop8Q~no-permissions-at-all-secret-000000";

fn add_no_perms_app(t: &mut Tenant) {
    let app_id = uuid::Uuid::from_u128(0x1234);
    t.applications.push(Application {
        id: uuid::Uuid::from_u128(0x1235),
        app_id,
        display_name: "No Permissions".into(),
        created: "2024-01-01T00:00:00Z".into(),
        sign_in_audience: None,
        secrets: vec![PasswordCredential {
            key_id: uuid::Uuid::from_u128(0x1236),
            display_name: None,
            secret: NO_PERMS_SECRET.into(),
            start: "2024-01-01T00:00:00Z".into(),
            end: "2099-01-01T00:00:00Z".into(),
        }],
        certificates: vec![],
        owners: vec![],
    });
    t.service_principals.push(ServicePrincipal {
        id: uuid::Uuid::from_u128(0x1237),
        app_id,
        display_name: "No Permissions".into(),
        kind: SpKind::Application,
        publisher: Publisher::Tenant,
        owner_organization: Some(t.tenant_id),
        account_enabled: true,
        app_role_assignment_required: false,
        app_roles: vec![],
        tags: vec![],
        homepage: None,
        owners: vec![],
        alternative_names: vec![],
        created: "2024-01-01T00:00:00Z".into(),
    });
}

struct Sim {
    r: Running,
    dir: tempfile::TempDir,
}

async fn sim(t: Tenant, settings: Settings) -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let r = start(Options {
        tenant: t,
        settings,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: false,
        proxy: None,
        state_dir: dir.path().to_owned(),
    })
    .await
    .unwrap();
    Sim { r, dir }
}

fn config(s: &Sim, client_id: &str, secret: &str) -> EntraConfig {
    let mut c = EntraConfig::new(
        &s.r.ready.tenant_id,
        client_id,
        Credential::Secret(Secret::new(secret)),
    );
    c.login_endpoint = Some(s.r.ready.login.clone());
    c.graph_endpoint = Some(s.r.ready.graph.clone());
    c.arm_endpoint = Some(s.r.ready.arm.clone());
    c
}

fn connector_config(s: &Sim) -> EntraConfig {
    config(s, &s.r.ready.client_id, &s.r.ready.client_secret)
}

async fn sync(s: &Sim, cfg: EntraConfig, name: &str) -> Result<(PathBuf, Arc<Entra>), String> {
    let path = s.dir.path().join(name);
    let e = Arc::new(Entra::new(cfg).map_err(|e| e.to_string())?);
    let opts = SyncOptions {
        concurrency: 64,
        ..SyncOptions::default()
    };
    let summary = run_sync(e.clone(), &path, SyncPlan::Full, opts, None)
        .await
        .map_err(|e| e.to_string())?;
    let end = &summary.end;
    assert_eq!(
        (
            end.dropped_resources,
            end.dropped_entitlements,
            end.dropped_grants,
            end.duplicates_removed
        ),
        (0, 0, 0, 0),
        "the connector emitted only intact, unique rows"
    );
    Ok((path, e))
}

/// What a sync file holds, summarised.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    resources: BTreeMap<String, usize>,
    resource_ids: BTreeSet<String>,
    entitlement_ids: BTreeSet<String>,
    /// (resource type, slug prefix, principal type) → direct grants.
    direct: BTreeMap<(String, String, String), usize>,
    direct_ids: BTreeSet<String>,
    all_grants: usize,
    max_per_app: usize,
}

fn read(path: &Path) -> Seen {
    let r = C1zReader::open(path).unwrap();
    let mut s = Seen::default();
    let all = PageRequest::first(1_000_000);
    for res in r.resources(&ResourceFilter::default(), &all).unwrap().items {
        let id = res.id.unwrap();
        *s.resources.entry(id.resource_type.clone()).or_default() += 1;
        s.resource_ids.insert(id.to_string());
    }
    for e in r.entitlements(&EntitlementFilter::default(), &all).unwrap().items {
        s.entitlement_ids.insert(e.id);
    }
    let mut per_app: BTreeMap<String, usize> = BTreeMap::new();
    r.for_each_grant(&GrantFilter::default(), |g| {
        s.all_grants += 1;
        let ent = g.entitlement.as_ref().unwrap();
        let p = g.principal.as_ref().unwrap().id.clone().unwrap();
        assert!(
            s.entitlement_ids.contains(&ent.id),
            "grant {} has no entitlement",
            g.id
        );
        assert!(
            s.resource_ids.contains(&p.to_string()),
            "grant {} has no principal",
            g.id
        );
        if g.annotations.contains::<GrantImmutable>() {
            return Ok(()); // derived by expansion
        }
        let res = ent.resource.as_ref().unwrap().id.clone().unwrap();
        let slug = ent.slug.split(':').next().unwrap().to_owned();
        if res.resource_type == "enterprise_application" && slug == "assignment" {
            *per_app.entry(res.resource.clone()).or_default() += 1;
        }
        *s.direct
            .entry((res.resource_type, slug, p.resource_type))
            .or_default() += 1;
        s.direct_ids.insert(g.id);
        Ok(())
    })
    .unwrap();
    s.max_per_app = per_app.values().copied().max().unwrap_or(0);
    s
}

impl Seen {
    fn direct(&self, rt: &str, slug: &str, ptypes: &[&str]) -> usize {
        self.direct
            .iter()
            .filter(|((r, s, p), _)| {
                r == rt && s == slug && (ptypes.is_empty() || ptypes.contains(&p.as_str()))
            })
            .map(|(_, n)| n)
            .sum()
    }
}

fn get(m: &BTreeMap<String, usize>, k: &str) -> usize {
    m.get(k).copied().unwrap_or(0)
}

fn assert_matches_manifest(s: &Seen, m: &Manifest) {
    let mi = get(&m.service_principals_by_kind, "managed_identity");
    assert_eq!(get(&s.resources, "user"), m.users);
    assert_eq!(get(&s.resources, "group"), m.groups);
    assert_eq!(get(&s.resources, "managed_identity"), mi);
    assert_eq!(
        get(&s.resources, "enterprise_application"),
        m.service_principals - mi
    );
    assert_eq!(get(&s.resources, "role"), m.role_definitions);
    assert_eq!(get(&s.resources, "license"), m.skus);
    let by = &m.group_memberships_direct_by_member_type;
    assert_eq!(s.direct("group", "member", &["user"]), get(by, "User"));
    assert_eq!(s.direct("group", "member", &["group"]), get(by, "Group"));
    assert_eq!(
        s.direct("group", "member", &["managed_identity", "enterprise_application"]),
        get(by, "ServicePrincipal")
    );
    assert_eq!(s.direct("group", "member", &[]), m.group_memberships_direct);
    assert_eq!(s.direct("group", "owner", &[]), m.group_owners);
    let by = &m.app_role_assignments_by_principal_type;
    assert_eq!(
        s.direct("enterprise_application", "assignment", &["user"]),
        get(by, "User")
    );
    assert_eq!(
        s.direct("enterprise_application", "assignment", &["group"]),
        get(by, "Group")
    );
    assert_eq!(
        s.direct(
            "enterprise_application",
            "assignment",
            &["managed_identity", "enterprise_application"]
        ),
        get(by, "ServicePrincipal")
    );
    assert_eq!(
        s.direct("enterprise_application", "assignment", &[]),
        m.app_role_assignments
    );
    assert_eq!(s.max_per_app, m.max_assignments_per_app, "no truncation");
    assert_eq!(
        s.direct("enterprise_application", "owner", &[]),
        m.service_principal_owners
    );
    assert_eq!(s.direct("role", "assigned", &[]), m.role_assignments);
    assert_eq!(
        s.direct("role", "assigned", &["group"]),
        get(&m.role_assignments_by_principal_type, "Group")
    );
    assert_eq!(s.direct("role", "eligible", &[]), m.role_eligibilities);
    assert_eq!(s.direct("license", "assigned", &[]), m.license_assignments);
}

#[tokio::test]
async fn small_tenant_matches_the_manifest_and_survives_throttling_and_faults() {
    let t = generate(Size::named("small").unwrap(), 3);
    let m = Manifest::of(&t);
    assert!(
        m.max_assignments_per_app > 20,
        "the tenant has an app beyond $expand's 20"
    );
    let clean = sim(t.clone(), Settings::default()).await;
    let (path, e) = sync(&clean, connector_config(&clean), "clean.c1z").await.unwrap();
    let seen = read(&path);
    assert_matches_manifest(&seen, &m);
    assert!(seen.all_grants > seen.direct_ids.len(), "nested groups expanded");
    assert_eq!(e.left_out(), 0);
    let st = e.stats();
    assert!(st.requests > 0 && st.resource_units > 0);

    // Microsoft's throttling with a small budget, and 5% injected 503s and resets: the same sync.
    let settings = Settings {
        throttle: true,
        faults: Some("0.05:503,reset".parse().unwrap()),
        ..Settings::default()
    };
    let rough = sim(t, settings).await;
    let (path2, e2) = sync(&rough, connector_config(&rough), "rough.c1z").await.unwrap();
    let seen2 = read(&path2);
    assert_eq!(seen2, seen, "a throttled, faulty sync equals a clean one");
    assert!(e2.stats().retries > 0, "faults were met and retried");
}

#[tokio::test]
async fn medium_tenant_matches_the_manifest() {
    let t = generate(Size::named("medium").unwrap(), 5);
    let m = Manifest::of(&t);
    let s = sim(t, Settings::default()).await;
    let started = std::time::Instant::now();
    let (path, e) = sync(&s, connector_config(&s), "medium.c1z").await.unwrap();
    eprintln!("medium sync: {:?}, {:?}", started.elapsed(), e.stats());
    assert!(m.max_assignments_per_app >= 1_000);
    assert_matches_manifest(&read(&path), &m);
}

#[tokio::test]
async fn options_skip_ad_groups_mailboxes_microsoft_apps_and_no_p2() {
    let mut t = generate(Size::named("small").unwrap(), 4);
    t.has_p2 = false;
    let m = Manifest::of(&t);
    assert!(m.groups_on_prem_synced > 0);
    let on_prem: HashSet<String> = t
        .groups
        .iter()
        .filter(|g| g.on_premises_sync_enabled)
        .map(|g| format!("group:{}", g.id))
        .collect();
    let service: HashSet<String> = t
        .users
        .iter()
        .filter(|u| {
            matches!(
                u.mailbox,
                Some(MailboxPurpose::Room | MailboxPurpose::Equipment | MailboxPurpose::Shared)
            )
        })
        .map(|u| u.id.to_string())
        .collect();
    assert!(!service.is_empty());
    let apps = t
        .service_principals
        .iter()
        .filter(|s| s.kind != SpKind::ManagedIdentity && s.publisher != Publisher::Microsoft)
        .count();
    let on_prem_ids: HashSet<uuid::Uuid> = t
        .groups
        .iter()
        .filter(|g| g.on_premises_sync_enabled)
        .map(|g| g.id)
        .collect();
    let roles_kept = t
        .role_assignments
        .iter()
        .filter(|a| !on_prem_ids.contains(&a.principal_id))
        .count();
    let s = sim(t, Settings::default()).await;
    let mut cfg = connector_config(&s);
    cfg.skip_ad_groups = true;
    cfg.mailbox_settings = true;
    cfg.exclude_microsoft_apps = true;
    let (path, e) = sync(&s, cfg, "options.c1z").await.unwrap();
    let seen = read(&path);
    assert_eq!(get(&seen.resources, "group"), m.groups - m.groups_on_prem_synced);
    assert!(on_prem.iter().all(|g| !seen.resource_ids.contains(g)));
    assert_eq!(get(&seen.resources, "enterprise_application"), apps);
    assert!(
        e.left_out() > 0,
        "grants to on-prem groups and Microsoft apps were left out"
    );
    assert_eq!(seen.direct("role", "eligible", &[]), 0, "no P2: no eligibility");
    assert_eq!(seen.direct("role", "assigned", &[]), roles_kept);
    let r = C1zReader::open(&path).unwrap();
    let users = r
        .resources(
            &ResourceFilter {
                resource_type: Some("user".into()),
                ..Default::default()
            },
            &PageRequest::first(100_000),
        )
        .unwrap()
        .items;
    let mut services = 0;
    for u in users {
        let t: UserTrait = u.annotations.find().unwrap().unwrap();
        let id = u.id.unwrap().resource;
        let want = if service.contains(&id) {
            services += 1;
            AccountType::Service
        } else {
            AccountType::Human
        };
        assert_eq!(t.account_type, want as i32, "user {id}");
    }
    assert_eq!(services, service.len());
    assert!(
        r.entitlement(&format!("role:{}:eligible", uuid::Uuid::nil()))
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn refusals_name_the_missing_permission_and_the_reader_syncs() {
    let mut t = generate(Size::named("tiny").unwrap(), 6);
    add_no_perms_app(&mut t);
    let s = sim(t, Settings::default()).await;
    let cfg = config(&s, "00000000-0000-0000-0000-000000001234", NO_PERMS_SECRET);
    let err = sync(&s, cfg, "none.c1z").await.unwrap_err();
    assert!(err.contains("missing permission"), "{err}");
    assert!(err.contains(".Read."), "names a permission: {err}");
    let cfg = config(&s, &s.r.ready.client_id, "not-the-secret");
    let err = sync(&s, cfg, "bad.c1z").await.unwrap_err();
    assert!(
        err.contains("AADSTS7000215") && err.contains("secret is wrong"),
        "{err}"
    );
    let reader = config(
        &s,
        s.r.ready.reader_client_id.as_deref().unwrap(),
        s.r.ready.reader_client_secret.as_deref().unwrap(),
    );
    let (path, _) = sync(&s, reader, "reader.c1z").await.unwrap();
    let m = Manifest::of(&s.r.sim.read().tenant);
    assert_eq!(get(&read(&path).resources, "user"), m.users);
}

// ---------------------------------------------------------------------------------------------------
// Provisioning (issue 5): grant and revoke over real HTTP, checked in the emulator after each operation.
// ---------------------------------------------------------------------------------------------------

use steward_entra::{GrantOptions, Outcome};
use steward_model::ResourceId;
use uuid::Uuid;

/// The objects a provisioning test works on, prepared in a generated tenant so that nothing is held yet.
#[derive(Debug, Clone)]
struct Fixture {
    /// A cloud security group with one owner (`sole_owner`) and no members.
    group: Uuid,
    sole_owner: Uuid,
    /// A role-assignable group (also a member principal).
    rgroup: Uuid,
    /// A group that is not role-assignable.
    plain_group: Uuid,
    dynamic: Uuid,
    on_prem: Uuid,
    user: Uuid,
    /// The enterprise app provisioned, with an app role for users and one for applications.
    app: Uuid,
    role_user: Uuid,
    role_app: Uuid,
    /// An enterprise app as a principal.
    sp: Uuid,
    mi: Uuid,
    role: Uuid,
}

fn fixture(t: &mut Tenant) -> Fixture {
    let users: Vec<Uuid> = t.users.iter().map(|u| u.id).collect();
    let (sole_owner, user) = (users[0], users[1]);
    // Five fresh cloud security groups, made from the first one.
    let base = t.groups.len();
    for k in 0..5u128 {
        let mut g = t.groups[0].clone();
        g.id = Uuid::from_u128(0x5157_1000 + k);
        g.display_name = format!("Steward test group {k}");
        g.kind = GroupKind::Security;
        g.membership_rule = None;
        g.on_premises_sync_enabled = false;
        g.is_assignable_to_role = false;
        g.members.clear();
        g.owners = vec![sole_owner];
        t.groups.push(g);
    }
    let (gi, ri, pi, di, oi) = (base, base + 1, base + 2, base + 3, base + 4);
    t.groups[ri].is_assignable_to_role = true;
    t.groups[di].membership_rule = Some("user.department -eq \"Sales\"".into());
    t.groups[oi].on_premises_sync_enabled = true;
    let apps: Vec<usize> = (0..t.service_principals.len())
        .filter(|&i| {
            let s = &t.service_principals[i];
            s.kind == SpKind::Application && s.publisher == Publisher::Tenant
        })
        .collect();
    assert!(apps.len() >= 2, "two tenant enterprise apps");
    let (ai, si) = (apps[0], apps[1]);
    let app = t.service_principals[ai].id;
    let (role_user, role_app) = (Uuid::from_u128(0x5157_0001), Uuid::from_u128(0x5157_0002));
    let mk = |id: Uuid, v: &str, m: &str| AppRole {
        id,
        value: Some(v.into()),
        display_name: v.into(),
        description: None,
        allowed_member_types: vec![m.into()],
        is_enabled: true,
    };
    t.service_principals[ai]
        .app_roles
        .push(mk(role_user, "Steward.User", "User"));
    t.service_principals[ai]
        .app_roles
        .push(mk(role_app, "Steward.App", "Application"));
    t.service_principals[ai].owners.clear();
    t.app_role_assignments.retain(|a| a.resource_id != app);
    let mi = match t
        .service_principals
        .iter()
        .find(|s| s.kind == SpKind::ManagedIdentity)
    {
        Some(s) => s.id,
        None => {
            let mut s = t.service_principals[si].clone();
            s.id = Uuid::from_u128(0x5157_0003);
            s.app_id = Uuid::from_u128(0x5157_0004);
            s.kind = SpKind::ManagedIdentity;
            s.display_name = "mi-steward-test".into();
            t.service_principals.push(s);
            Uuid::from_u128(0x5157_0003)
        }
    };
    let role = t.role_definitions[1].id;
    t.role_assignments.retain(|a| a.role_definition_id != role);
    t.role_eligibilities.retain(|a| a.role_definition_id != role);
    t.has_p2 = true;
    Fixture {
        group: t.groups[gi].id,
        sole_owner,
        rgroup: t.groups[ri].id,
        plain_group: t.groups[pi].id,
        dynamic: t.groups[di].id,
        on_prem: t.groups[oi].id,
        user,
        app,
        role_user,
        role_app,
        sp: t.service_principals[si].id,
        mi,
        role,
    }
}

/// How many times the emulator holds `entitlement` for `principal` (0 or 1; 2 would be a duplicate).
fn held(s: &Sim, entitlement: &str, principal: Uuid) -> usize {
    let st = s.r.sim.read();
    let t = &st.tenant;
    let mut it = entitlement.splitn(3, ':');
    let (rt, rid, slug) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let rid: Uuid = rid.parse().unwrap();
    let n = |v: &[Uuid]| v.iter().filter(|x| **x == principal).count();
    match (rt, slug) {
        ("group", "member") => n(&t.groups.iter().find(|g| g.id == rid).unwrap().members),
        ("group", "owner") => n(&t.groups.iter().find(|g| g.id == rid).unwrap().owners),
        ("enterprise_application", "owner") => {
            n(&t.service_principals.iter().find(|g| g.id == rid).unwrap().owners)
        }
        ("enterprise_application", a) => {
            let role: Uuid = a.strip_prefix("assignment:").unwrap().parse().unwrap();
            t.app_role_assignments
                .iter()
                .filter(|x| x.resource_id == rid && x.principal_id == principal && x.app_role_id == role)
                .count()
        }
        ("role", "assigned") => t
            .role_assignments
            .iter()
            .filter(|x| x.role_definition_id == rid && x.principal_id == principal)
            .count(),
        ("role", "eligible") => t
            .role_eligibilities
            .iter()
            .filter(|x| x.role_definition_id == rid && x.principal_id == principal)
            .count(),
        other => panic!("{other:?}"),
    }
}

fn prov_config(s: &Sim) -> EntraConfig {
    let mut c = connector_config(s);
    c.provisioning = true;
    c
}

/// Every entitlement kind × every principal type it takes.
fn cases(f: &Fixture) -> Vec<(String, ResourceId)> {
    let user = ResourceId::new("user", f.user.to_string());
    let group = ResourceId::new("group", f.rgroup.to_string());
    let sp = ResourceId::new("enterprise_application", f.sp.to_string());
    let mi = ResourceId::new("managed_identity", f.mi.to_string());
    let nil = Uuid::nil();
    let (g, a, r) = (f.group, f.app, f.role);
    vec![
        (format!("group:{g}:member"), user.clone()),
        (format!("group:{g}:member"), group.clone()),
        (format!("group:{g}:member"), sp.clone()),
        (format!("group:{g}:member"), mi.clone()),
        (format!("group:{g}:owner"), user.clone()),
        (format!("group:{g}:owner"), sp.clone()),
        (format!("group:{g}:owner"), mi.clone()),
        (
            format!("enterprise_application:{a}:assignment:{}", f.role_user),
            user.clone(),
        ),
        (
            format!("enterprise_application:{a}:assignment:{}", f.role_user),
            group.clone(),
        ),
        (
            format!("enterprise_application:{a}:assignment:{}", f.role_app),
            sp.clone(),
        ),
        (
            format!("enterprise_application:{a}:assignment:{}", f.role_app),
            mi.clone(),
        ),
        (
            format!("enterprise_application:{a}:assignment:{nil}"),
            user.clone(),
        ),
        (
            format!("enterprise_application:{a}:assignment:{nil}"),
            group.clone(),
        ),
        (format!("enterprise_application:{a}:assignment:{nil}"), sp.clone()),
        (format!("enterprise_application:{a}:owner"), user.clone()),
        (format!("enterprise_application:{a}:owner"), sp.clone()),
        (format!("enterprise_application:{a}:owner"), mi.clone()),
        (format!("role:{r}:assigned"), user.clone()),
        (format!("role:{r}:assigned"), group.clone()),
        (format!("role:{r}:assigned"), sp.clone()),
        (format!("role:{r}:assigned"), mi.clone()),
        (format!("role:{r}:eligible"), user),
        (format!("role:{r}:eligible"), group),
    ]
}

fn uuid_of(p: &ResourceId) -> Uuid {
    p.resource.parse().unwrap()
}

/// The grants of the newest partial sync in `path`.
fn partial_has(path: &Path, grant_id: &str) -> bool {
    let mut r = C1zReader::open(path).unwrap();
    let run = r
        .latest_finished_sync(Some(steward_c1z::SyncType::Partial))
        .unwrap()
        .expect("a finished partial sync");
    r.select_sync(&run.sync_id).unwrap();
    r.grant(grant_id).unwrap().is_some()
}

#[tokio::test]
async fn provisioning_every_kind_and_principal_type_is_idempotent_and_updates_the_file() {
    let mut t = generate(Size::named("tiny").unwrap(), 11);
    let f = fixture(&mut t);
    let s = sim(t, Settings::default()).await;
    let (path, e) = sync(&s, prov_config(&s), "prov.c1z").await.unwrap();
    let opts = GrantOptions::default();
    for (ent, p) in cases(&f) {
        let pid = uuid_of(&p);
        assert_eq!(held(&s, &ent, pid), 0, "{ent} {p} not held at first");
        let c = e
            .grant_entitlement(&ent, &p, &opts)
            .await
            .unwrap_or_else(|x| panic!("{ent} {p}: {x}"));
        assert_eq!(c.outcome, Outcome::Granted, "{ent} {p}");
        assert_eq!(held(&s, &ent, pid), 1, "{ent} {p} granted");
        assert_eq!(c.grant_id, format!("{ent}:{p}"));
        let again = e.grant_entitlement(&ent, &p, &opts).await.unwrap();
        assert_eq!(again.outcome, Outcome::AlreadyHeld, "{ent} {p}");
        assert_eq!(held(&s, &ent, pid), 1, "{ent} {p} no duplicate");
        // The sync file follows the tenant.
        let plan = SyncPlan::Partial {
            resources: vec![c.resource()],
        };
        run_sync(e.clone(), &path, plan.clone(), SyncOptions::default(), None)
            .await
            .unwrap();
        assert!(
            partial_has(&path, &c.grant_id),
            "{} in the file after the grant",
            c.grant_id
        );
        let r = e
            .revoke_grant(&c.grant_id)
            .await
            .unwrap_or_else(|x| panic!("revoke {ent} {p}: {x}"));
        assert_eq!(r.outcome, Outcome::Revoked, "{ent} {p}");
        assert_eq!(held(&s, &ent, pid), 0, "{ent} {p} revoked");
        let r2 = e.revoke_grant(&c.grant_id).await.unwrap();
        assert_eq!(r2.outcome, Outcome::AlreadyAbsent, "{ent} {p}");
        run_sync(e.clone(), &path, plan, SyncOptions::default(), None)
            .await
            .unwrap();
        assert!(
            !partial_has(&path, &c.grant_id),
            "{} gone from the file after the revoke",
            c.grant_id
        );
    }
    // Through the Connector trait too.
    let rdr = C1zReader::open(&path).unwrap();
    let ent = rdr
        .entitlement(&format!("group:{}:member", f.group))
        .unwrap()
        .unwrap();
    let principal = rdr
        .resource(&ResourceId::new("user", f.user.to_string()))
        .unwrap()
        .unwrap();
    drop(rdr);
    let grants = steward_sync::Connector::grant(e.as_ref(), &principal, &ent)
        .await
        .unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(held(&s, &ent.id, f.user), 1);
    steward_sync::Connector::revoke(e.as_ref(), &grants[0])
        .await
        .unwrap();
    assert_eq!(held(&s, &ent.id, f.user), 0);
}

#[tokio::test]
async fn provisioning_refusals_change_nothing_and_say_why() {
    let mut t = generate(Size::named("tiny").unwrap(), 12);
    let f = fixture(&mut t);
    let s = sim(t, Settings::default()).await;
    let before = serde_json::to_string(&s.r.sim.read().tenant).unwrap();
    let user = ResourceId::new("user", f.user.to_string());
    let opts = GrantOptions::default();
    let refused = |r: Result<steward_entra::Change, steward_entra::EntraError>, words: &[&str]| {
        let err = r.unwrap_err().to_string();
        for w in words {
            assert!(err.contains(w), "'{w}' in: {err}");
        }
    };
    // Not enabled.
    let off = Entra::new(connector_config(&s)).unwrap();
    refused(
        off.grant_entitlement(&format!("group:{}:member", f.group), &user, &opts)
            .await,
        &["--provisioning", "BATON_PROVISIONING"],
    );
    refused(
        off.revoke_grant(&format!("group:{}:member:user:{}", f.group, f.user))
            .await,
        &["not enabled"],
    );
    let e = Entra::new(prov_config(&s)).unwrap();
    refused(
        e.grant_entitlement(&format!("group:{}:member", f.dynamic), &user, &opts)
            .await,
        &["dynamic membership", "nothing was changed"],
    );
    refused(
        e.grant_entitlement(&format!("group:{}:member", f.on_prem), &user, &opts)
            .await,
        &["on-premises"],
    );
    refused(
        e.revoke_grant(&format!("group:{}:member:user:{}", f.on_prem, f.user))
            .await,
        &["on-premises"],
    );
    let g = ResourceId::new("group", f.rgroup.to_string());
    refused(
        e.grant_entitlement(&format!("group:{}:owner", f.group), &g, &opts)
            .await,
        &[
            "cannot be granted to a group",
            "user, enterprise_application, managed_identity",
        ],
    );
    refused(
        e.grant_entitlement(&format!("group:{}:member", f.rgroup), &g, &opts)
            .await,
        &["cannot be a member of itself"],
    );
    let plain_g = ResourceId::new("group", f.plain_group.to_string());
    refused(
        e.grant_entitlement(&format!("group:{}:member", f.rgroup), &plain_g, &opts)
            .await,
        &["role-assignable"],
    );
    let sp = ResourceId::new("enterprise_application", f.sp.to_string());
    refused(
        e.grant_entitlement(&format!("role:{}:eligible", f.role), &sp, &opts)
            .await,
        &["cannot be granted to a enterprise_application"],
    );
    refused(
        e.grant_entitlement(
            &format!("enterprise_application:{}:assignment:{}", f.app, f.role_user),
            &sp,
            &opts,
        )
        .await,
        &["allowedMemberTypes"],
    );
    refused(
        e.grant_entitlement(
            &format!("enterprise_application:{}:assignment:{}", f.app, f.role_app),
            &user,
            &opts,
        )
        .await,
        &["cannot be assigned to a user"],
    );
    refused(
        e.grant_entitlement(
            &format!(
                "enterprise_application:{}:assignment:{}",
                f.app,
                Uuid::from_u128(7)
            ),
            &user,
            &opts,
        )
        .await,
        &["defines no app role"],
    );
    let plain = ResourceId::new("group", f.plain_group.to_string());
    refused(
        e.grant_entitlement(&format!("role:{}:assigned", f.role), &plain, &opts)
            .await,
        &["not role-assignable"],
    );
    // A user's id given as a group, and a service principal given as a managed identity.
    let wrong = ResourceId::new("group", f.user.to_string());
    refused(
        e.grant_entitlement(&format!("group:{}:member", f.group), &wrong, &opts)
            .await,
        &["does not exist"],
    );
    let not_mi = ResourceId::new("managed_identity", f.sp.to_string());
    refused(
        e.grant_entitlement(&format!("group:{}:member", f.group), &not_mi, &opts)
            .await,
        &["not a managed identity"],
    );
    refused(
        e.grant_entitlement(&format!("license:{}:assigned", Uuid::nil()), &user, &opts)
            .await,
        &["licenses are not provisioned"],
    );
    // The last owner of a group stays.
    refused(
        e.revoke_grant(&format!("group:{}:owner:user:{}", f.group, f.sole_owner))
            .await,
        &["last owner", "add another owner first"],
    );
    assert_eq!(held(&s, &format!("group:{}:owner", f.group), f.sole_owner), 1);
    // An end time in the past.
    let past = GrantOptions {
        end: Some("2001-01-01T00:00:00Z".into()),
        ..Default::default()
    };
    refused(
        e.grant_entitlement(&format!("role:{}:eligible", f.role), &user, &past)
            .await,
        &["in the past"],
    );
    // Without write permission: the reader app is told which permission to ask for.
    let mut rc = config(
        &s,
        s.r.ready.reader_client_id.as_deref().unwrap(),
        s.r.ready.reader_client_secret.as_deref().unwrap(),
    );
    rc.provisioning = true;
    let reader = Entra::new(rc).unwrap();
    for (ent, p, perm) in [
        (
            format!("group:{}:member", f.group),
            &user,
            "GroupMember.ReadWrite.All",
        ),
        (
            format!("enterprise_application:{}:assignment:{}", f.app, f.role_user),
            &user,
            "AppRoleAssignment.ReadWrite.All",
        ),
        (
            format!("role:{}:assigned", f.role),
            &user,
            "RoleManagement.ReadWrite.Directory",
        ),
        (
            format!("role:{}:eligible", f.role),
            &user,
            "RoleManagement.ReadWrite.Directory",
        ),
    ] {
        refused(
            reader.grant_entitlement(&ent, p, &opts).await,
            &["missing permission", perm],
        );
    }
    let after = serde_json::to_string(&s.r.sim.read().tenant).unwrap();
    assert!(before == after, "refusals changed nothing in the tenant");
}

#[tokio::test]
async fn time_bound_roles_carry_their_end_time_into_the_tenant() {
    let mut t = generate(Size::named("tiny").unwrap(), 13);
    let f = fixture(&mut t);
    let s = sim(t, Settings::default()).await;
    let e = Entra::new(prov_config(&s)).unwrap();
    let user = ResourceId::new("user", f.user.to_string());
    let end = "2031-06-30T17:00:00Z".to_string();
    let opts = GrantOptions {
        end: Some(end.clone()),
        justification: Some("ticket 42".into()),
    };
    let c = e
        .grant_entitlement(&format!("role:{}:eligible", f.role), &user, &opts)
        .await
        .unwrap();
    assert_eq!((c.outcome, c.end_in_tenant), (Outcome::Granted, true));
    assert!(c.to_string().contains("enforced by Microsoft"), "{c}");
    {
        let st = s.r.sim.read();
        let el: Vec<_> = st
            .tenant
            .role_eligibilities
            .iter()
            .filter(|x| x.role_definition_id == f.role && x.principal_id == f.user)
            .collect();
        assert_eq!(el.len(), 1);
        assert_eq!(el[0].end.as_deref(), Some(end.as_str()));
    }
    // Visible through Graph with its end time.
    let v = e
        .graph()
        .get_all(
            "/v1.0/roleManagement/directory/roleEligibilitySchedules?$top=999",
            false,
        )
        .await
        .unwrap();
    let mine = v
        .iter()
        .find(|x| x["principalId"] == f.user.to_string() && x["roleDefinitionId"] == f.role.to_string())
        .unwrap();
    assert!(mine.to_string().contains(&end[..16]), "{mine}");
    // An active, time-bound assignment goes through a PIM assignment schedule request.
    let c = e
        .grant_entitlement(&format!("role:{}:assigned", f.role), &user, &opts)
        .await
        .unwrap();
    assert_eq!(c.outcome, Outcome::Granted);
    {
        let st = s.r.sim.read();
        let a: Vec<_> = st
            .tenant
            .role_assignments
            .iter()
            .filter(|x| x.role_definition_id == f.role && x.principal_id == f.user)
            .collect();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].end.as_deref(), Some(end.as_str()));
    }
    // Group membership has no native expiry: said so.
    let c = e
        .grant_entitlement(&format!("group:{}:member", f.group), &user, &opts)
        .await
        .unwrap();
    assert!(!c.end_in_tenant);
    assert!(c.to_string().contains("the platform revokes it"), "{c}");
    for id in [
        format!("role:{}:eligible:user:{}", f.role, f.user),
        format!("role:{}:assigned:user:{}", f.role, f.user),
        format!("group:{}:member:user:{}", f.group, f.user),
    ] {
        assert_eq!(
            e.revoke_grant(&id).await.unwrap().outcome,
            Outcome::Revoked,
            "{id}"
        );
    }
    assert_eq!(held(&s, &format!("role:{}:eligible", f.role), f.user), 0);
    assert_eq!(held(&s, &format!("role:{}:assigned", f.role), f.user), 0);
}

#[tokio::test]
async fn provisioning_through_faults_never_double_applies() {
    let mut t = generate(Size::named("tiny").unwrap(), 14);
    let f = fixture(&mut t);
    let settings = Settings {
        faults: Some("0.2:500,502,503,504,reset,truncate".parse().unwrap()),
        ..Settings::default()
    };
    let s = sim(t, settings).await;
    let e = Entra::new(prov_config(&s)).unwrap();
    let opts = GrantOptions::default();
    for round in 0..1 {
        for (ent, p) in cases(&f) {
            let pid = uuid_of(&p);
            let c = e
                .grant_entitlement(&ent, &p, &opts)
                .await
                .unwrap_or_else(|x| panic!("{ent} {p}: {x}"));
            assert_eq!(c.outcome, Outcome::Granted, "round {round} {ent} {p}");
            assert_eq!(held(&s, &ent, pid), 1, "{ent} {p}");
            let r = e.revoke_grant(&c.grant_id).await.unwrap();
            assert_eq!(r.outcome, Outcome::Revoked, "round {round} {ent} {p}");
            assert_eq!(held(&s, &ent, pid), 0, "{ent} {p}");
        }
    }
    let faults = s.r.sim.stats.faults.load(std::sync::atomic::Ordering::Relaxed);
    assert!(faults > 10, "faults were injected: {faults}");
}

/// A TCP proxy in front of the emulator's Graph listener that loses the answers of the first `lose`
/// writes: the write reaches the emulator and applies, then the connection is cut before the answer
/// (the case a blind retry would double-apply).
async fn answer_losing_proxy(upstream: &str, lose: u32) -> (String, Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let left = Arc::new(AtomicU32::new(lose));
    let lost = Arc::new(AtomicU32::new(0));
    let (left2, lost2) = (left.clone(), lost.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&up).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let losing = Arc::new(AtomicBool::new(false));
            let (l1, l2) = (losing.clone(), losing);
            let (left, lost) = (left2.clone(), lost2.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let head = &buf[..n.min(8)];
                    let is_write = head.starts_with(b"POST ") || head.starts_with(b"DELETE ");
                    let is_batch = buf[..n].windows(6).any(|w| w == b"$batch");
                    if is_write
                        && !is_batch
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |x| x.checked_sub(1))
                            .is_ok()
                    {
                        l1.store(true, Ordering::SeqCst);
                        lost.fetch_add(1, Ordering::SeqCst);
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if l2.load(Ordering::SeqCst) {
                        // The emulator answered: the write applied. Cut the connection instead.
                        let _ = cw.shutdown().await;
                        return;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), lost)
}

#[tokio::test]
async fn lost_answers_are_read_back_not_resent_and_429s_are_waited_out() {
    let mut t = generate(Size::named("tiny").unwrap(), 15);
    let f = fixture(&mut t);
    let s = sim(t, Settings::default()).await;
    // Every write's answer is lost once: the write applied, the client cannot know without reading back.
    let n = cases(&f).len() as u32;
    let (proxy, lost) = answer_losing_proxy(&s.r.ready.graph, 2 * n).await;
    let mut cfg = prov_config(&s);
    cfg.graph_endpoint = Some(proxy);
    let e = Entra::new(cfg).unwrap();
    for (ent, p) in cases(&f) {
        let pid = uuid_of(&p);
        let c = e
            .grant_entitlement(&ent, &p, &GrantOptions::default())
            .await
            .unwrap_or_else(|x| panic!("{ent} {p}: {x}"));
        assert_eq!((c.outcome, c.read_back), (Outcome::Granted, true), "{ent} {p}");
        assert_eq!(held(&s, &ent, pid), 1, "{ent} {p}: applied once");
        let r = e.revoke_grant(&c.grant_id).await.unwrap();
        assert_eq!((r.outcome, r.read_back), (Outcome::Revoked, true), "{ent} {p}");
        assert_eq!(held(&s, &ent, pid), 0, "{ent} {p}");
    }
    assert_eq!(
        lost.load(std::sync::atomic::Ordering::SeqCst),
        2 * n,
        "every answer was lost once"
    );

    // Microsoft's throttling while another client of the same app floods the budget: writes wait for
    // Retry-After and are resent (a 429 is refused before it applies), reads retry; nothing is doubled.
    let mut t = generate(Size::named("tiny").unwrap(), 16);
    let f = fixture(&mut t);
    let s = sim(
        t,
        Settings {
            throttle: true,
            ..Settings::default()
        },
    )
    .await;
    // Each flood request gets a fresh client (its own budget), so the flood never paces itself.
    let ep = steward_msgraph::Endpoints::new(
        "graph.microsoft.com",
        Some(&s.r.ready.login),
        Some(&s.r.ready.graph),
        None,
    )
    .unwrap();
    let mut fc = steward_msgraph::Config::new(
        ep,
        &s.r.ready.tenant_id,
        &s.r.ready.client_id,
        Credential::Secret(Secret::new(&s.r.ready.client_secret)),
    );
    fc.retry.throttled_attempts = 1;
    let flood = steward_msgraph::Microsoft::new(fc).unwrap();
    let g = f.group;
    let flooding = tokio::spawn(async move {
        let path = format!("/v1.0/groups/{g}/transitiveMembers");
        loop {
            let reqs = (0..32).map(|_| {
                let c = flood.graph();
                let path = path.clone();
                async move { c.get_json(&path, false).await }
            });
            let _ = futures::future::join_all(reqs).await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let e = Entra::new(prov_config(&s)).unwrap();
    for (ent, p) in cases(&f).into_iter().step_by(3) {
        let pid = uuid_of(&p);
        let c = e
            .grant_entitlement(&ent, &p, &GrantOptions::default())
            .await
            .unwrap_or_else(|x| panic!("{ent} {p}: {x}"));
        assert_eq!(c.outcome, Outcome::Granted, "{ent} {p}");
        assert_eq!(held(&s, &ent, pid), 1, "{ent} {p}");
        assert_eq!(
            e.revoke_grant(&c.grant_id).await.unwrap().outcome,
            Outcome::Revoked
        );
        assert_eq!(held(&s, &ent, pid), 0, "{ent} {p}");
    }
    flooding.abort();
    eprintln!(
        "emulator throttled {} requests",
        s.r.sim.stats.throttled.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(e.stats().throttled > 0, "provisioning met 429s: {:?}", e.stats());
}

#[tokio::test]
async fn get_resource_reads_one_resource_as_the_sync_wrote_it() {
    let t = generate(Size::named("tiny").unwrap(), 17);
    let s = sim(t, Settings::default()).await;
    let (path, e) = sync(&s, connector_config(&s), "one.c1z").await.unwrap();
    let r = C1zReader::open(&path).unwrap();
    for rt in [
        "user",
        "group",
        "enterprise_application",
        "managed_identity",
        "role",
        "license",
    ] {
        let page = r
            .resources(
                &ResourceFilter {
                    resource_type: Some(rt.into()),
                    ..Default::default()
                },
                &PageRequest::first(3),
            )
            .unwrap();
        for want in page.items {
            let id = want.id.clone().unwrap();
            let got = steward_sync::Connector::get_resource(e.as_ref(), &id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{id} found"));
            assert_eq!(got, want, "{id}");
        }
    }
    let missing = ResourceId::new("group", Uuid::from_u128(99).to_string());
    assert!(
        steward_sync::Connector::get_resource(e.as_ref(), &missing)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn roles_without_p2_assign_actively_and_refuse_pim() {
    let mut t = generate(Size::named("tiny").unwrap(), 18);
    let f = fixture(&mut t);
    t.has_p2 = false;
    let s = sim(t, Settings::default()).await;
    let e = Entra::new(prov_config(&s)).unwrap();
    let user = ResourceId::new("user", f.user.to_string());
    let ent = format!("role:{}:assigned", f.role);
    let c = e
        .grant_entitlement(&ent, &user, &GrantOptions::default())
        .await
        .unwrap();
    assert_eq!(c.outcome, Outcome::Granted);
    assert_eq!(held(&s, &ent, f.user), 1);
    let r = e.revoke_grant(&c.grant_id).await.unwrap();
    assert_eq!(r.outcome, Outcome::Revoked, "deleted without PIM");
    assert_eq!(held(&s, &ent, f.user), 0);
    let timed = GrantOptions {
        end: Some("2031-01-01T00:00:00Z".into()),
        ..Default::default()
    };
    let err = e
        .grant_entitlement(&ent, &user, &timed)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("P2"), "{err}");
    let err = e
        .grant_entitlement(
            &format!("role:{}:eligible", f.role),
            &user,
            &GrantOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("P2"), "{err}");
    assert_eq!(held(&s, &ent, f.user), 0);
}

/// A TCP proxy in front of the emulator's Graph listener that records the target of every HTTP/1.1 GET.
async fn recording_proxy(upstream: &str) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&up).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut line = Vec::new();
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            let l = String::from_utf8_lossy(&line);
                            if let Some(target) = l
                                .strip_prefix("GET ")
                                .and_then(|r| r.trim_end().strip_suffix(" HTTP/1.1"))
                            {
                                seen.lock().unwrap().push(target.to_owned());
                            }
                            line.clear();
                        } else if line.len() < 8192 {
                            line.push(b);
                        }
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn query_of(target: &str) -> BTreeMap<String, String> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Users are listed 999 per page (500 with sign-in times), never with `$expand`; managers come from
/// concurrent `$expand=manager` slices; and every user's profile names its manager exactly as the tenant.
#[tokio::test]
async fn users_are_listed_999_per_page_and_keep_their_managers() {
    let size = Size {
        users: 2_500,
        groups: 30,
        memberships: 600,
        service_principals: 20,
        subscriptions: 1,
        resource_groups: 2,
        azure_assignments: 10,
        big_app_assignments: 30,
        membership_cycle: false,
    };
    let t = generate(size, 23);
    let n = t.users.len();
    let bosses: BTreeMap<String, Option<String>> = t
        .users
        .iter()
        .map(|u| (u.id.to_string(), u.manager.map(|m| m.to_string())))
        .collect();
    assert!(bosses.values().filter(|m| m.is_some()).count() > n / 2);
    let s = sim(t, Settings::default()).await;
    let (proxy, seen) = recording_proxy(&s.r.ready.graph).await;
    let mut cfg = connector_config(&s);
    cfg.graph_endpoint = Some(proxy);
    let (path, e) = sync(&s, cfg, "managers.c1z").await.unwrap();

    // Every user, with the manager the tenant has (or none).
    let r = C1zReader::open(&path).unwrap();
    let users = r
        .resources(
            &ResourceFilter {
                resource_type: Some("user".into()),
                ..Default::default()
            },
            &PageRequest::first(1_000_000),
        )
        .unwrap()
        .items;
    assert_eq!(users.len(), n);
    for u in &users {
        let id = u.id.as_ref().unwrap().resource.clone();
        let p = u.profile.as_ref().unwrap();
        let got = steward_model::profile::get_str(p, "manager_id").map(str::to_owned);
        assert_eq!(&got, &bosses[&id], "manager of {id}");
    }

    // The profile listing: full pages of 999 (500 when sign-in times are read), no $expand.
    let seen = seen.lock().unwrap().clone();
    let lists: Vec<BTreeMap<String, String>> = seen
        .iter()
        .filter(|t| t.starts_with("/v1.0/users?"))
        .map(|t| query_of(t))
        .collect();
    let profile: Vec<&BTreeMap<String, String>> = lists
        .iter()
        .filter(|q| q.get("$select").is_some_and(|s| s.contains("displayName")))
        .collect();
    assert!(!profile.is_empty());
    let top: usize = if profile[0]["$select"].contains("signInActivity") {
        500
    } else {
        999
    };
    for q in &profile {
        assert_eq!(
            q.get("$top").map(String::as_str),
            Some(top.to_string().as_str()),
            "{q:?}"
        );
        assert!(!q.contains_key("$expand"), "{q:?}");
    }
    assert_eq!(profile.len(), n.div_ceil(top), "profile pages");

    // Managers: several slices, each a chain of $expand pages; 2 RU per 100 users, as one listing costs.
    let slices: Vec<&BTreeMap<String, String>> = lists
        .iter()
        .filter(|q| q.get("$expand").is_some_and(|x| x.starts_with("manager")))
        .collect();
    let filters: BTreeSet<&String> = slices.iter().filter_map(|q| q.get("$filter")).collect();
    let (count, largest) = e.manager_slices().unwrap();
    assert_eq!(filters.len(), count, "one filter per slice");
    assert!(count >= 3, "{n} users are read in {count} slices");
    assert!(largest <= steward_entra::managers::target(n));
    assert!(
        slices.len() <= n.div_ceil(100) + count,
        "{} manager pages",
        slices.len()
    );
    assert_eq!(e.stats().batched, 0, "no user needed its manager looked up alone");

    // Users the slices missed are looked up one by one (through $batch): same answers.
    let ids: Vec<&str> = bosses.keys().take(45).map(String::as_str).collect();
    let direct = steward_entra::managers::Managers::default()
        .of(e.graph(), &ids)
        .await
        .unwrap();
    for (id, m) in ids.iter().zip(direct) {
        assert_eq!(&m, &bosses[*id], "manager of {id}, read alone");
    }
}

/// `steward diff` of the latest syncs of two files is empty: same rows, byte for byte.
fn assert_no_diff(old: &Path, new: &Path) {
    let (a, b) = (C1zReader::open(old).unwrap(), C1zReader::open(new).unwrap());
    let d = steward_c1z::diff_syncs(&a, &b).unwrap();
    let show = |x: &steward_c1z::DiffSet| {
        format!(
            "+{} -{} ~{} e.g. {:?}",
            x.added.len(),
            x.removed.len(),
            x.changed.len(),
            x.added
                .iter()
                .chain(&x.removed)
                .chain(&x.changed)
                .take(3)
                .collect::<Vec<_>>()
        )
    };
    assert!(
        d.is_empty(),
        "resources {}; entitlements {}; grants {}",
        show(&d.resources),
        show(&d.entitlements),
        show(&d.grants)
    );
}

/// Syncs into `path` (a file that may hold earlier syncs), incrementally from its previous full sync when
/// `incremental`; returns the connector and the Graph requests the emulator saw.
async fn sync_into(s: &Sim, path: &Path, incremental: bool) -> (Arc<Entra>, u64) {
    let e = Arc::new(Entra::new(connector_config(s)).unwrap());
    if incremental {
        let prev = steward_sync::previous_sync(path)
            .unwrap()
            .expect("a previous full sync");
        assert!(prev.state.is_some(), "the full sync kept its delta links");
        e.set_previous(prev);
    }
    s.r.sim.stats.reset();
    let opts = SyncOptions {
        concurrency: 64,
        ..SyncOptions::default()
    };
    run_sync(e.clone(), path, SyncPlan::Full, opts, None)
        .await
        .unwrap();
    let requests = s.r.sim.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
    (e, requests)
}

#[tokio::test]
async fn incremental_sync_after_churn_equals_a_full_sync_for_a_fraction_of_the_requests() {
    let t = generate(Size::named("medium").unwrap(), 6);
    let s = sim(t, Settings::default()).await;
    let inc_path = s.dir.path().join("incremental.c1z");
    let (e, full_requests) = sync_into(&s, &inc_path, false).await;
    assert_eq!(e.sync_mode(), Some("full"));

    // 1% churn: users created, disabled and deleted; members added and removed; an owner added; a group
    // deleted; app assignments added (seen through the audit log); a directory role assigned.
    let churn = steward_sim::graph::churn::churn(&mut s.r.sim.write(), 0.01, 7);
    assert!(
        !churn.created.is_empty()
            && !churn.disabled.is_empty()
            && !churn.deleted.is_empty()
            && !churn.members_added.is_empty()
            && !churn.members_removed.is_empty()
            && !churn.owners_added.is_empty()
            && churn.groups_deleted.len() == 1
            && !churn.assignments_added.is_empty(),
        "{churn:?}"
    );

    let (e, inc_requests) = sync_into(&s, &inc_path, true).await;
    assert_eq!(e.sync_mode(), Some("incremental"), "{:?}", e.fell_back());
    let full_path = s.dir.path().join("full.c1z");
    let (_, _) = sync_into(&s, &full_path, false).await;

    assert_no_diff(&full_path, &inc_path);
    let (inc, full) = (read(&inc_path), read(&full_path));
    assert_eq!(inc.resources, full.resources);
    assert_eq!(inc.resource_ids, full.resource_ids);
    assert_eq!(inc.entitlement_ids, full.entitlement_ids);
    assert_eq!(inc.direct_ids, full.direct_ids, "direct grants");
    assert_eq!(inc.all_grants, full.all_grants, "grants after expansion");
    assert!(inc == full);
    // What churn changed is in the incremental sync.
    for u in &churn.created {
        assert!(inc.resource_ids.contains(&format!("user:{u}")));
    }
    for u in &churn.deleted {
        assert!(!inc.resource_ids.contains(&format!("user:{u}")));
    }
    for g in &churn.groups_deleted {
        assert!(!inc.resource_ids.contains(&format!("group:{g}")));
    }
    for (g, m) in &churn.members_added {
        assert!(inc.direct_ids.contains(&format!("group:{g}:member:user:{m}")));
    }
    for (g, m) in &churn.members_removed {
        let gone = inc
            .direct_ids
            .iter()
            .any(|id| id.starts_with(&format!("group:{g}:member:")) && id.ends_with(&m.to_string()));
        assert!(!gone, "removed member {m} of {g}");
    }
    eprintln!(
        "medium, 1% churn ({} writes): full sync {full_requests} Graph requests, incremental {inc_requests}",
        churn.writes()
    );
    assert!(
        inc_requests * 20 <= full_requests,
        "incremental {inc_requests} requests > 5% of full {full_requests}"
    );

    // The incremental sync kept new links: another incremental sync with no change reads almost nothing
    // and still equals the full sync.
    let (e, again) = sync_into(&s, &inc_path, true).await;
    assert_eq!(e.sync_mode(), Some("incremental"));
    assert!(again <= inc_requests, "{again} > {inc_requests}");
    assert_no_diff(&full_path, &inc_path);
}

#[tokio::test]
async fn an_expired_delta_link_falls_back_to_a_full_sync_that_says_why() {
    let t = generate(Size::named("small").unwrap(), 8);
    let s = sim(t, Settings::default()).await;
    let path = s.dir.path().join("sync.c1z");
    let (_, full_requests) = sync_into(&s, &path, false).await;
    steward_sim::graph::churn::churn(&mut s.r.sim.write(), 0.05, 9);
    s.r.sim.write().expire_delta_tokens();

    let (e, requests) = sync_into(&s, &path, true).await;
    assert_eq!(e.sync_mode(), Some("full"));
    let why = e.fell_back().expect("the fallback is explained");
    assert!(
        why.contains("expired") && why.contains("410 Gone") && why.contains("full sync"),
        "{why}"
    );
    assert!(requests * 2 > full_requests, "it read the tenant in full");
    let full_path = s.dir.path().join("full.c1z");
    sync_into(&s, &full_path, false).await;
    assert_no_diff(&full_path, &path);

    // The full sync it fell back to kept fresh links: the next incremental sync works.
    let (e, _) = sync_into(&s, &path, true).await;
    assert_eq!(e.sync_mode(), Some("incremental"), "{:?}", e.fell_back());
}
