//! Full syncs of emulated tenants over real HTTP, read back from the c1z and compared with the emulator's
//! manifest: every resource, every direct grant by kind and principal type, referential integrity, the
//! options (skip AD groups, mailbox settings, Microsoft apps, no P2), refusals, throttling and faults.

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
