//! Full syncs and provisioning against the emulated tenant over real HTTP, read back from the c1z and
//! compared with the emulator's manifest and raw tenant: every resource type, every direct role grant by
//! scope kind and principal type, inherited grants with their path, each option, grant and revoke at every
//! scope (repeated, refused, forbidden), throttling and faults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use steward_azure::{Azure, AzureConfig, scope};
use steward_c1z::{C1zReader, GrantFilter, PageRequest, ResourceFilter};
use steward_model::{AnnotationsExt, Grant, GrantImmutable, ResourceId};
use steward_msgraph::{Credential, Secret};
use steward_sim::ctx::Settings;
use steward_sim::model::*;
use steward_sim::{Manifest, Options, Running, Size, generate, start};
use steward_sync::{Connector, SyncOptions, SyncPlan, run_sync};

struct Sim {
    r: Running,
    dir: tempfile::TempDir,
}

async fn sim_with(t: Tenant, settings: Settings) -> Sim {
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

/// A tenant with a resource group of the same name in two subscriptions.
fn tenant(size: &str, seed: u64) -> Tenant {
    let mut t = generate(Size::named(size).unwrap(), seed);
    let subs: Vec<_> = t.azure.subscriptions.iter().map(|s| s.subscription_id).collect();
    assert!(subs.len() >= 2, "the tenant has two subscriptions");
    for s in &subs[..2] {
        if !t
            .azure
            .resource_groups
            .iter()
            .any(|g| g.subscription_id == *s && g.name == "rg-shared")
        {
            t.azure.resource_groups.push(ResourceGroup {
                subscription_id: *s,
                name: "rg-shared".into(),
                location: "westeurope".into(),
            });
        }
    }
    // A resource group with capitals in its name, holding a storage account and a container, and a
    // role assignment at each of the three: ARM (and the emulator) spell their ids in varying case.
    let s0 = subs[0];
    let rg = ResourceGroup {
        subscription_id: s0,
        name: MIXED_RG.into(),
        location: "westeurope".into(),
    };
    let sa = StorageAccount {
        subscription_id: s0,
        resource_group: MIXED_RG.into(),
        name: "stmixedcase000001".into(),
        location: "westeurope".into(),
        created: "2024-01-01T00:00:00Z".into(),
    };
    let c = BlobContainer {
        subscription_id: s0,
        resource_group: MIXED_RG.into(),
        account: sa.name.clone(),
        name: "mixed".into(),
    };
    let user = t.users.iter().find(|u| u.given_name.is_some()).unwrap().id;
    for (i, scope) in [rg.arm_id(), sa.arm_id(), c.arm_id()].into_iter().enumerate() {
        t.azure.role_assignments.push(AzureRoleAssignment {
            name: uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0000 + i as u128),
            scope,
            role_definition: uuid::Uuid::parse_str(READER).unwrap(),
            principal_id: user,
            principal_type: PrincipalType::User,
            created: "2024-01-01T00:00:00Z".into(),
            end: None,
        });
    }
    t.azure.resource_groups.push(rg);
    t.azure.storage_accounts.push(sa);
    t.azure.containers.push(c);
    t
}

const MIXED_RG: &str = "RG-Mixed-Case";
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

async fn sim(size: &str) -> Sim {
    sim_with(tenant(size, 7), Settings::default()).await
}

fn config_as(s: &Sim, client_id: &str, secret: &str) -> AzureConfig {
    let mut c = AzureConfig::new(
        &s.r.ready.tenant_id,
        client_id,
        Credential::Secret(Secret::new(secret)),
    );
    c.entra.login_endpoint = Some(s.r.ready.login.clone());
    c.entra.graph_endpoint = Some(s.r.ready.graph.clone());
    c.entra.arm_endpoint = Some(s.r.ready.arm.clone());
    c
}

fn config(s: &Sim) -> AzureConfig {
    config_as(s, &s.r.ready.client_id, &s.r.ready.client_secret)
}

async fn sync(s: &Sim, cfg: AzureConfig, name: &str) -> (PathBuf, Arc<Azure>) {
    let path = s.dir.path().join(name);
    let a = Arc::new(Azure::new(cfg).unwrap());
    let opts = SyncOptions {
        concurrency: 32,
        ..SyncOptions::default()
    };
    let summary = run_sync(a.clone(), &path, SyncPlan::Full, opts, None)
        .await
        .unwrap();
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
    (path, a)
}

/// What a sync file holds, summarised.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    resources: BTreeMap<String, usize>,
    /// (scope resource type, eligible, principal type) → direct role grants.
    direct: BTreeMap<(String, bool, String), usize>,
    /// (scope resource type, eligible) → inheritance grants (principal = the parent scope).
    inherited: BTreeMap<(String, bool), usize>,
    direct_ids: BTreeSet<String>,
    other_grants: usize,
}

impl Seen {
    fn direct_by_scope(&self, eligible: bool) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for ((rt, el, _), n) in &self.direct {
            if *el == eligible {
                *m.entry(rt.clone()).or_default() += n;
            }
        }
        m
    }
    fn direct_by_principal(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for ((_, el, pt), n) in &self.direct {
            if !*el {
                *m.entry(pt.clone()).or_default() += n;
            }
        }
        m
    }
}

fn read(path: &PathBuf) -> Seen {
    let r = C1zReader::open(path).unwrap();
    let stats = r.stats().unwrap();
    let mut seen = Seen {
        resources: stats
            .resources_by_type
            .iter()
            .map(|(k, v)| (k.clone(), *v as usize))
            .collect(),
        ..Seen::default()
    };
    r.for_each_grant(&GrantFilter::default(), |g: Grant| {
        let ent = g.entitlement.as_ref().unwrap();
        let ert = ent
            .resource
            .as_ref()
            .unwrap()
            .id
            .as_ref()
            .unwrap()
            .resource_type
            .clone();
        let pt = g
            .principal
            .as_ref()
            .unwrap()
            .id
            .as_ref()
            .unwrap()
            .resource_type
            .clone();
        let eligible = ent.id.ends_with(":eligible");
        if !steward_azure::types::SCOPES.contains(&ert.as_str()) {
            seen.other_grants += 1;
        } else if steward_azure::types::SCOPES.contains(&pt.as_str()) {
            *seen.inherited.entry((ert, eligible)).or_default() += 1;
        } else if !g.annotations.contains::<GrantImmutable>() {
            *seen.direct.entry((ert, eligible, pt)).or_default() += 1;
            seen.direct_ids.insert(g.id.clone());
        }
        Ok(())
    })
    .unwrap();
    seen
}

fn kind_of(scope: &str) -> &'static str {
    steward_sim::manifest::scope_kind(scope)
}

/// Role definitions listed per subscription: built-ins plus custom roles assignable there.
fn expected_roles(t: &Tenant) -> usize {
    t.azure
        .subscriptions
        .iter()
        .map(|s| {
            let sc = format!("/subscriptions/{}", s.subscription_id);
            t.azure.builtin_roles.len()
                + t.azure
                    .custom_roles
                    .iter()
                    .filter(|d| {
                        d.assignable_scopes
                            .iter()
                            .any(|a| scope::covers(a, &sc) || scope::covers(&sc, a))
                    })
                    .count()
        })
        .sum()
}

fn ptype(p: PrincipalType, t: &Tenant, id: &uuid::Uuid) -> &'static str {
    match p {
        PrincipalType::User => "user",
        PrincipalType::Group => "group",
        PrincipalType::ServicePrincipal => {
            match t.service_principals.iter().find(|s| s.id == *id).map(|s| s.kind) {
                Some(SpKind::ManagedIdentity) => "managed_identity",
                _ => "enterprise_application",
            }
        }
    }
}

fn check_full(s: &Sim, seen: &Seen) {
    let (m, t) = {
        let st = s.r.sim.read();
        (Manifest::of(&st.tenant), st.tenant.clone())
    };
    let mi = m
        .service_principals_by_kind
        .get("managed_identity")
        .copied()
        .unwrap_or(0);
    let want: BTreeMap<String, usize> = [
        ("tenant", 1),
        ("subscription", m.subscriptions),
        ("resource_group", m.resource_groups),
        ("role", expected_roles(&t)),
        ("storage_account", m.storage_accounts),
        ("container", m.blob_containers),
        ("managed_identity", mi),
        ("user", m.users),
        ("group", m.groups),
        ("enterprise_application", m.service_principals - mi),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(seen.resources, want);
    assert_eq!(
        seen.direct_by_scope(false),
        m.azure_role_assignments_by_scope_kind
    );
    assert_eq!(
        seen.direct_by_scope(true).values().sum::<usize>(),
        m.azure_role_eligibilities
    );
    // By principal type, service principals split into managed identities and enterprise apps.
    let mut by_p: BTreeMap<String, usize> = BTreeMap::new();
    for a in &t.azure.role_assignments {
        *by_p
            .entry(ptype(a.principal_type, &t, &a.principal_id).into())
            .or_default() += 1;
    }
    assert_eq!(seen.direct_by_principal(), by_p);
    assert!(
        by_p.len() == 4,
        "users, groups, managed identities and apps hold roles: {by_p:?}"
    );
    // Every assignment is there with its exact scope, role and principal.
    for a in &t.azure.role_assignments {
        let kind = kind_of(&a.scope);
        let id = if kind == "subscription" {
            a.scope.trim_start_matches("/subscriptions/").to_owned()
        } else {
            scope::canonical(&a.scope)
        };
        let gid = format!(
            "{kind}:{id}:role:{}:{}:{}",
            a.role_definition,
            ptype(a.principal_type, &t, &a.principal_id),
            a.principal_id
        );
        assert!(seen.direct_ids.contains(&gid), "missing {gid}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_tenant_matches_the_manifest() {
    let s = sim("small").await;
    let (path, a) = sync(&s, config(&s), "small.c1z").await;
    let seen = read(&path);
    check_full(&s, &seen);
    assert!(seen.inherited.values().sum::<usize>() > 0);
    assert!(
        seen.other_grants > 0,
        "group memberships and app assignments from the Entra code"
    );
    assert_eq!(a.left_out(), 0);
    // Equal resource group names in two subscriptions are two resources.
    let r = C1zReader::open(&path).unwrap();
    let rgs = r
        .resources(
            &ResourceFilter {
                resource_type: Some("resource_group".into()),
                parent: None,
            },
            &PageRequest::first(10_000),
        )
        .unwrap();
    assert_eq!(
        rgs.items.iter().filter(|g| g.display_name == "rg-shared").count(),
        2
    );
    // However ARM spells them, ids are emitted canonically, and one resource group is one resource.
    let t = s.r.sim.read().tenant.clone();
    let mixed: Vec<_> = rgs.items.iter().filter(|g| g.display_name == MIXED_RG).collect();
    assert_eq!(mixed.len(), 1);
    let mixed_rg = t
        .azure
        .resource_groups
        .iter()
        .find(|g| g.name == MIXED_RG)
        .unwrap()
        .arm_id();
    assert_eq!(
        mixed[0].id.as_ref().unwrap().resource,
        scope::canonical(&mixed_rg)
    );
    for rt in ["resource_group", "storage_account", "container"] {
        let all = r
            .resources(
                &ResourceFilter {
                    resource_type: Some(rt.into()),
                    parent: None,
                },
                &PageRequest::first(100_000),
            )
            .unwrap();
        for x in &all.items {
            let id = &x.id.as_ref().unwrap().resource;
            assert_eq!(id, &scope::canonical(id), "{rt} emitted canonically");
        }
    }
    // Every inheritance grant names a scope resource of the file as where the role is assigned.
    let mut inheritance = 0;
    r.for_each_grant(&GrantFilter::default(), |g: Grant| {
        let p = g.principal.as_ref().unwrap().id.clone().unwrap();
        if steward_azure::types::SCOPES.contains(&p.resource_type.as_str()) {
            assert!(
                r.resource(&p).unwrap().is_some(),
                "{} inherits from {p:?}, which is not in the file",
                g.id
            );
            inheritance += 1;
        }
        Ok(())
    })
    .unwrap();
    assert!(inheritance > 0);
    // Deeper than one level: the user assigned Reader at the mixed-case resource group, its storage
    // account and its container holds Reader on the container directly and through both ancestors.
    let who = t
        .azure
        .role_assignments
        .iter()
        .find(|a| a.scope == mixed_rg)
        .unwrap()
        .principal_id;
    let c = t.azure.containers.iter().find(|c| c.name == "mixed").unwrap();
    let sa = t
        .azure
        .storage_accounts
        .iter()
        .find(|a| a.name == c.account)
        .unwrap();
    let access = r.access(&ResourceId::new("user", who.to_string())).unwrap();
    let on = |kind: &str, id: &str| format!("{kind}:{}:role:{READER}", scope::canonical(id));
    let e = access
        .iter()
        .find(|e| e.grant.entitlement.as_ref().unwrap().id == on("container", &c.arm_id()))
        .expect("Reader on the container");
    let sources: BTreeSet<String> = e
        .grant
        .sources
        .as_ref()
        .unwrap()
        .sources
        .keys()
        .cloned()
        .collect();
    for want in [
        on("container", &c.arm_id()),
        on("storage_account", &sa.arm_id()),
        on("resource_group", &mixed_rg),
    ] {
        assert!(sources.contains(&want), "{want} is a source: {sources:?}");
    }
    // Two levels down: a user assigned at a subscription holds the role on a container there, and the
    // path starts at the subscription.
    let (a0, cont) = t
        .azure
        .role_assignments
        .iter()
        .filter(|a| kind_of(&a.scope) == "subscription" && a.principal_type == PrincipalType::User)
        .find_map(|a| {
            let cont = t.azure.containers.iter().find(|c| {
                scope::covers(&a.scope, &c.arm_id())
                    && !t.azure.role_assignments.iter().any(|x| {
                        x.principal_id == a.principal_id
                            && x.role_definition == a.role_definition
                            && x.scope != a.scope
                            && scope::covers(&x.scope, &c.arm_id())
                    })
            })?;
            Some((a, cont))
        })
        .expect("a user assigned at a subscription with a container below it");
    let access = r
        .access(&ResourceId::new("user", a0.principal_id.to_string()))
        .unwrap();
    let want = format!(
        "container:{}:role:{}",
        scope::canonical(&cont.arm_id()),
        a0.role_definition
    );
    let e = access
        .iter()
        .find(|e| e.grant.entitlement.as_ref().unwrap().id == want)
        .unwrap_or_else(|| panic!("{want} is not inherited"));
    assert_eq!(
        e.path,
        vec![
            format!(
                "subscription:{}:role:{}",
                scope::subscription_of(&a0.scope).unwrap(),
                a0.role_definition
            ),
            want.clone()
        ],
        "assigned at the subscription, held on the container"
    );
    // An inherited grant: a user assigned at a subscription holds the role on its resource groups,
    // through the subscription's entitlement (the path says where it was assigned).
    let t = s.r.sim.read().tenant.clone();
    let a0 = t
        .azure
        .role_assignments
        .iter()
        .find(|a| kind_of(&a.scope) == "subscription" && a.principal_type == PrincipalType::User)
        .unwrap();
    let sub = a0.scope.trim_start_matches("/subscriptions/");
    let rg = t
        .azure
        .resource_groups
        .iter()
        .find(|g| g.subscription_id.to_string() == sub)
        .unwrap();
    let access = r
        .access(&ResourceId::new("user", a0.principal_id.to_string()))
        .unwrap();
    let want = format!(
        "resource_group:{}:role:{}",
        scope::canonical(&rg.arm_id()),
        a0.role_definition
    );
    let e = access
        .iter()
        .find(|e| e.grant.entitlement.as_ref().unwrap().id == want)
        .unwrap_or_else(|| panic!("{want} is not inherited"));
    assert_eq!(
        e.path.first().unwrap(),
        &format!("subscription:{sub}:role:{}", a0.role_definition),
        "the path starts where the role is assigned"
    );
    // A group assigned at a subscription holds the role on the resource groups below it, inherited.
    if let Some(ga) = t
        .azure
        .role_assignments
        .iter()
        .find(|a| kind_of(&a.scope) == "subscription" && a.principal_type == PrincipalType::Group)
    {
        let sub = ga.scope.trim_start_matches("/subscriptions/");
        let rg = t
            .azure
            .resource_groups
            .iter()
            .find(|g| g.subscription_id.to_string() == sub)
            .unwrap();
        let access = r
            .access(&ResourceId::new("group", ga.principal_id.to_string()))
            .unwrap();
        let want = format!(
            "resource_group:{}:role:{}",
            scope::canonical(&rg.arm_id()),
            ga.role_definition
        );
        let e = access
            .iter()
            .find(|e| e.grant.entitlement.as_ref().unwrap().id == want)
            .unwrap_or_else(|| panic!("{want} is not inherited by the group"));
        assert!(e.grant.annotations.contains::<GrantImmutable>());
        assert_eq!(
            e.path.first().unwrap(),
            &format!("subscription:{sub}:role:{}", ga.role_definition)
        );
    }
}

fn scope_resource(kind: &str, scope: &str) -> steward_model::Resource {
    let id = if kind == "subscription" {
        scope.trim_start_matches("/subscriptions/").to_owned()
    } else {
        scope.to_owned()
    };
    steward_model::builders::ResourceBuilder::new(kind, &id, &id).build()
}

fn role_ent(kind: &str, scope: &str, role: &str, eligible: bool) -> steward_model::Entitlement {
    let r = scope_resource(kind, scope);
    steward_model::builders::entitlement(
        &r,
        &scope::slug(role, eligible),
        role,
        steward_model::pb::entitlement::PurposeValue::Assignment,
        &[],
    )
}

fn assigned(s: &Sim, scope: &str, role: &str, principal: &str) -> usize {
    s.r.sim
        .read()
        .tenant
        .azure
        .role_assignments
        .iter()
        .filter(|a| {
            a.scope.eq_ignore_ascii_case(scope)
                && a.role_definition.to_string() == role
                && a.principal_id.to_string() == principal
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provisioning_at_every_scope() {
    let s = sim("small").await;
    let mut cfg = config(&s);
    cfg.provisioning = true;
    let a = Azure::new(cfg).unwrap();
    let t = s.r.sim.read().tenant.clone();
    let reader = t
        .azure
        .builtin_roles
        .iter()
        .find(|d| d.role_name == "Reader")
        .unwrap()
        .name
        .to_string();
    let sub = format!("/subscriptions/{}", t.azure.subscriptions[0].subscription_id);
    let rg = t
        .azure
        .resource_groups
        .iter()
        .find(|g| g.subscription_id == t.azure.subscriptions[0].subscription_id)
        .unwrap()
        .arm_id();
    let sa = t.azure.storage_accounts[0].arm_id();
    let c = t.azure.containers[0].arm_id();
    // The mixed-case resource group, named in another spelling than ARM's own: the same scope.
    let odd = t
        .azure
        .resource_groups
        .iter()
        .find(|g| g.name == MIXED_RG)
        .unwrap()
        .arm_id()
        .to_uppercase()
        .replace("/SUBSCRIPTIONS/", "/subscriptions/")
        .replace("/RESOURCEGROUPS/", "/resourcegroups/");
    let scopes = [
        ("subscription", sub.clone()),
        ("resource_group", rg),
        ("storage_account", sa),
        ("container", c),
        ("resource_group", odd),
    ];
    for (i, (kind, sc)) in scopes.iter().enumerate() {
        // A user with no Reader assignment at or above this scope.
        let u = t
            .users
            .iter()
            .skip(i * 3)
            .find(|u| {
                !t.azure.role_assignments.iter().any(|x| {
                    x.principal_id == u.id
                        && x.role_definition.to_string() == reader
                        && scope::covers(&x.scope, sc)
                })
            })
            .unwrap();
        let uid = u.id.to_string();
        let principal = steward_model::builders::ResourceBuilder::new("user", &uid, "u").build();
        let ent = role_ent(kind, sc, &reader, false);
        let g = a.grant(&principal, &ent).await.unwrap();
        assert_eq!(g[0].id, format!("{}:user:{uid}", ent.id));
        assert_eq!(assigned(&s, sc, &reader, &uid), 1, "granted at exactly {sc}");
        // Again: 409 RoleAssignmentExists = already held, nothing changes.
        a.grant(&principal, &ent).await.unwrap();
        assert_eq!(assigned(&s, sc, &reader, &uid), 1);
        a.revoke(&g[0]).await.unwrap();
        assert_eq!(assigned(&s, sc, &reader, &uid), 0, "revoked at {sc}");
        // Again: nothing to revoke.
        a.revoke(&g[0]).await.unwrap();
    }
    // A group, a managed identity and an app as principals.
    for (rt, id) in [
        ("group", t.groups[0].id),
        (
            "managed_identity",
            t.service_principals
                .iter()
                .find(|p| p.kind == SpKind::ManagedIdentity)
                .unwrap()
                .id,
        ),
        (
            "enterprise_application",
            t.service_principals
                .iter()
                .find(|p| p.kind == SpKind::Application)
                .unwrap()
                .id,
        ),
    ] {
        let p = steward_model::builders::ResourceBuilder::new(rt, &id.to_string(), "p").build();
        let ent = role_ent("container", &scopes[3].1, &reader, false);
        let g = a.grant(&p, &ent).await.unwrap();
        assert_eq!(assigned(&s, &scopes[3].1, &reader, &id.to_string()), 1, "{rt}");
        a.revoke(&g[0]).await.unwrap();
        assert_eq!(assigned(&s, &scopes[3].1, &reader, &id.to_string()), 0, "{rt}");
    }
    // An inherited grant cannot be revoked at a child scope: the error names where it is assigned.
    let inh = t
        .azure
        .role_assignments
        .iter()
        .find(|x| kind_of(&x.scope) == "subscription" && x.principal_type == PrincipalType::User)
        .unwrap();
    let child = t
        .azure
        .resource_groups
        .iter()
        .find(|g| scope::covers(&inh.scope, &g.arm_id()))
        .unwrap()
        .arm_id();
    let ent = role_ent("resource_group", &child, &inh.role_definition.to_string(), false);
    let principal =
        steward_model::builders::ResourceBuilder::new("user", &inh.principal_id.to_string(), "u").build();
    let g = steward_model::builders::grant(&ent, &principal);
    let e = a.revoke(&g).await.unwrap_err().to_string();
    assert!(e.contains("inherited") && e.contains(&inh.scope), "{e}");
    let before = t.azure.role_assignments.len();
    assert_eq!(s.r.sim.read().tenant.azure.role_assignments.len(), before);
    // The inheritance grant itself (principal = the parent scope) is refused too.
    let parent = scope_resource("subscription", &inh.scope);
    let e = a
        .revoke(&steward_model::builders::grant(&ent, &parent))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("inherited"), "{e}");
    // A grant derived from a group's assignment (a member's) is refused, naming the group.
    let (ga, member) = t
        .azure
        .role_assignments
        .iter()
        .filter(|x| x.principal_type == PrincipalType::Group && kind_of(&x.scope) == "resource_group")
        .find_map(|x| {
            let g = t.groups.iter().find(|g| g.id == x.principal_id)?;
            let m = g.members.iter().find(|m| {
                t.users.iter().any(|u| u.id == **m)
                    && !t.azure.role_assignments.iter().any(|y| {
                        y.principal_id == **m
                            && y.role_definition == x.role_definition
                            && scope::covers(&y.scope, &x.scope)
                    })
            })?;
            Some((x, *m))
        })
        .expect("a group with a user member assigned at a resource group");
    let ent = role_ent(
        "resource_group",
        &ga.scope,
        &ga.role_definition.to_string(),
        false,
    );
    let mut derived = steward_model::builders::grant(
        &ent,
        &steward_model::builders::ResourceBuilder::new("user", &member.to_string(), "m").build(),
    );
    derived.annotations.push_msg(&GrantImmutable::default());
    let e = a.revoke(&derived).await.unwrap_err().to_string();
    assert!(
        e.contains("through group") && e.contains(&ga.principal_id.to_string()),
        "{e}"
    );
    assert_eq!(s.r.sim.read().tenant.azure.role_assignments.len(), before);
    // Any other error is an error, with ARM's code: a role that does not exist.
    let e = a
        .grant(
            &principal,
            &role_ent(
                "resource_group",
                &child,
                "00000000-0000-4000-8000-0000000000aa",
                false,
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, steward_sync::ConnectorError::Fatal(_)), "{e}");
    assert!(e.to_string().contains("RoleDefinitionDoesNotExist"), "{e}");
    assert_eq!(s.r.sim.read().tenant.azure.role_assignments.len(), before);
    // PIM-eligible entitlements are not granted here.
    let e = a
        .grant(&principal, &role_ent("subscription", &sub, &reader, true))
        .await
        .unwrap_err();
    assert!(matches!(e, steward_sync::ConnectorError::Unsupported(_)), "{e}");
    // Roles go to users, groups, managed identities and apps only.
    let tenant_principal = steward_model::builders::ResourceBuilder::new("tenant", "t", "t").build();
    let e = a
        .grant(&tenant_principal, &role_ent("subscription", &sub, READER, false))
        .await
        .unwrap_err();
    assert!(matches!(e, steward_sync::ConnectorError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("not to a tenant"), "{e}");
    assert_eq!(s.r.sim.read().tenant.azure.role_assignments.len(), before);
    // Without --provisioning nothing is written.
    let off = Azure::new(config(&s)).unwrap();
    let e = off
        .grant(&principal, &role_ent("subscription", &sub, &reader, false))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--provisioning"), "{e}");
    // The reader app (Reader on every subscription) is told what it needs.
    let ready = &s.r.ready;
    let mut rc = config_as(
        &s,
        ready.reader_client_id.as_deref().unwrap(),
        ready.reader_client_secret.as_deref().unwrap(),
    );
    rc.provisioning = true;
    let ro = Azure::new(rc).unwrap();
    let e = ro
        .grant(&principal, &role_ent("subscription", &sub, &reader, false))
        .await
        .unwrap_err();
    assert!(matches!(e, steward_sync::ConnectorError::Fatal(_)));
    assert!(
        e.to_string().contains("Owner or User Access Administrator"),
        "{e}"
    );
    let e = ro
        .revoke(&steward_model::builders::grant(
            &role_ent(
                "subscription",
                &inh.scope,
                &inh.role_definition.to_string(),
                false,
            ),
            &principal,
        ))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("Owner or User Access Administrator"),
        "{e}"
    );
    assert_eq!(
        s.r.sim.read().tenant.azure.role_assignments.len(),
        before,
        "nothing changed"
    );
}

fn without(m: &BTreeMap<String, usize>, k: &str) -> BTreeMap<String, usize> {
    m.iter()
        .filter(|(x, _)| *x != k)
        .map(|(a, b)| (a.clone(), *b))
        .collect()
}

fn active_direct(seen: &Seen) -> BTreeMap<(String, bool, String), usize> {
    seen.direct
        .iter()
        .filter(|(k, _)| !k.1)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn options_change_exactly_what_they_should() {
    let s = sim("small").await;
    let t = s.r.sim.read().tenant.clone();
    let (base_path, _) = sync(&s, config(&s), "base.c1z").await;
    let base = read(&base_path);
    check_full(&s, &base);

    // --skip-unused-roles: only roles assigned somewhere in (or above) their subscription.
    let mut c = config(&s);
    c.skip_unused_roles = true;
    let seen = read(&sync(&s, c, "unused.c1z").await.0);
    let used: usize = t
        .azure
        .subscriptions
        .iter()
        .map(|sub| {
            let sc = format!("/subscriptions/{}", sub.subscription_id);
            t.azure
                .role_assignments
                .iter()
                .chain(&t.azure.role_eligibilities)
                .filter(|a| scope::covers(&a.scope, &sc) || scope::covers(&sc, &a.scope))
                .map(|a| a.role_definition)
                .collect::<BTreeSet<_>>()
                .len()
        })
        .sum();
    assert!(used > 0 && used < base.resources["role"]);
    assert_eq!(seen.resources["role"], used);
    assert_eq!(without(&seen.resources, "role"), without(&base.resources, "role"));
    assert_eq!(seen.direct, base.direct);

    // --skip-storage-containers: no containers and no container-scope grants; the rest unchanged.
    let mut c = config(&s);
    c.skip_storage_containers = true;
    let seen = read(&sync(&s, c, "nocontainers.c1z").await.0);
    assert!(!seen.resources.contains_key("container"));
    assert_eq!(
        without(&seen.resources, "container"),
        without(&base.resources, "container")
    );
    let base_nc: BTreeMap<_, _> = base
        .direct
        .iter()
        .filter(|(k, _)| k.0 != "container")
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(seen.direct, base_nc);

    // --skip-p2-features: no eligible entitlements or grants; active ones unchanged.
    let mut c = config(&s);
    c.entra.skip_p2 = true;
    let (p, a) = sync(&s, c, "nop2.c1z").await;
    let seen = read(&p);
    assert!(seen.direct.keys().all(|k| !k.1) && seen.inherited.keys().all(|k| !k.1));
    assert_eq!(seen.direct, active_direct(&base));
    assert_eq!(seen.resources, base.resources);
    assert!(!a.p2_missing());

    // --skip-ad-groups: on-premises groups and their role grants are left out, counted.
    let mut c = config(&s);
    c.entra.skip_ad_groups = true;
    let (p, a) = sync(&s, c, "noad.c1z").await;
    let seen = read(&p);
    let on_prem: BTreeSet<_> = t
        .groups
        .iter()
        .filter(|g| g.on_premises_sync_enabled)
        .map(|g| g.id)
        .collect();
    assert!(!on_prem.is_empty());
    assert_eq!(seen.resources["group"], base.resources["group"] - on_prem.len());
    let to_on_prem = t
        .azure
        .role_assignments
        .iter()
        .chain(&t.azure.role_eligibilities)
        .filter(|x| on_prem.contains(&x.principal_id))
        .count();
    let total = |m: &Seen| m.direct.values().sum::<usize>();
    assert_eq!(total(&seen), total(&base) - to_on_prem);
    assert_eq!(
        without(&seen.resources, "group"),
        without(&base.resources, "group")
    );
    assert!(a.left_out() as usize >= to_on_prem);

    // --mailbox-settings: room, equipment and shared mailboxes become service accounts; counts unchanged.
    let mut c = config(&s);
    c.entra.mailbox_settings = true;
    let p = sync(&s, c, "mailbox.c1z").await.0;
    let seen = read(&p);
    assert_eq!(seen.resources, base.resources);
    assert_eq!(seen.direct, base.direct);
    let service = |p: &PathBuf| {
        let r = C1zReader::open(p).unwrap();
        let users = r
            .resources(
                &ResourceFilter {
                    resource_type: Some("user".into()),
                    parent: None,
                },
                &PageRequest::first(100_000),
            )
            .unwrap();
        users
            .items
            .iter()
            .filter(|u| {
                let t: steward_model::UserTrait = u.annotations.find().unwrap().unwrap();
                t.account_type == steward_model::pb::user_trait::AccountType::Service as i32
            })
            .count()
    };
    let m = Manifest::of(&t);
    let rooms: usize = ["room", "equipment", "shared"]
        .iter()
        .filter_map(|k| m.users_by_mailbox_purpose.get(*k))
        .sum();
    assert_eq!(service(&p), service(&base_path) + rooms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_resource_file_replaces_graph() {
    let s = sim("small").await;
    let (base_path, _) = sync(&s, config(&s), "base.c1z").await;
    let base = read(&base_path);
    // The Entra ID connector's own sync file.
    let entra_file = s.dir.path().join("entra.c1z");
    let e = Arc::new(steward_entra::Entra::new(config(&s).entra).unwrap());
    run_sync(e, &entra_file, SyncPlan::Full, SyncOptions::default(), None)
        .await
        .unwrap();
    let mut c = config(&s);
    c.external_resource_c1z = Some(entra_file);
    let (p, a) = sync(&s, c, "external.c1z").await;
    let seen = read(&p);
    assert_eq!(seen.resources, base.resources);
    assert_eq!(seen.direct, base.direct);
    assert_eq!(seen.inherited, base.inherited);
    let st = a.stats();
    assert_eq!(
        st.graph.requests + st.entra.requests,
        0,
        "no Graph request: identities come from the file"
    );
    assert!(st.arm.requests > 0);
    // Expansion through groups still works: same number of grants overall.
    let n = |p: &PathBuf| C1zReader::open(p).unwrap().stats().unwrap().grants;
    assert_eq!(n(&p), n(&base_path));
    // A file without identities is refused with a message.
    let mut c = config(&s);
    c.external_resource_c1z = Some(s.dir.path().join("missing.c1z"));
    assert!(
        Azure::new(c)
            .unwrap_err()
            .to_string()
            .contains("external resource file")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_without_p2_is_detected() {
    let mut t = tenant("small", 7);
    t.has_p2 = false;
    let s = sim_with(t, Settings::default()).await;
    let (p, a) = sync(&s, config(&s), "nop2.c1z").await;
    assert!(a.p2_missing(), "the missing P2 license is reported");
    let seen = read(&p);
    assert!(seen.direct.keys().all(|k| !k.1));
    let m = Manifest::of(&s.r.sim.read().tenant);
    assert_eq!(
        seen.direct_by_scope(false),
        m.azure_role_assignments_by_scope_kind
    );
    // With the flag nothing is asked and nothing reported.
    let mut c = config(&s);
    c.entra.skip_p2 = true;
    let (_, a) = sync(&s, c, "flag.c1z").await;
    assert!(!a.p2_missing());
}

/// An ARM token of the connector app itself (the emulator's throttling buckets are per principal and
/// subscription), fetched again while injected faults get in the way.
async fn connector_arm_token(s: &Sim) -> String {
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let resp = http
            .post(format!(
                "{}/{}/oauth2/v2.0/token",
                s.r.ready.login, s.r.ready.tenant_id
            ))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", s.r.ready.client_id.as_str()),
                ("client_secret", s.r.ready.client_secret.as_str()),
                ("scope", "https://management.azure.com/.default"),
            ])
            .send()
            .await;
        if let Ok(r) = resp
            && r.status() == 200
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            return v["access_token"].as_str().unwrap().to_owned();
        }
    }
    panic!("no ARM token in 20 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_and_faults_leave_the_result_unchanged() {
    let s = sim("small").await;
    let base = read(&sync(&s, config(&s), "base.c1z").await.0);
    let settings = Settings {
        throttle: true,
        faults: Some("0.05:500,503,reset,truncate".parse().unwrap()),
        ..Settings::default()
    };
    let rough = sim_with(tenant("small", 7), settings).await;
    // Another client of the same app keeps the first subscription's ARM read bucket empty until the
    // connector has been answered 429 there (or has finished): ARM throttling is met for certain.
    let sub = rough.r.sim.read().tenant.azure.subscriptions[0].subscription_id;
    let tok = connector_arm_token(&rough).await;
    let url = format!(
        "{}/subscriptions/{sub}/resourcegroups?api-version=2021-04-01",
        rough.r.ready.arm
    );
    let http = reqwest::Client::new();
    let drain = || futures::future::join_all((0..30).map(|_| http.get(&url).bearer_auth(&tok).send()));
    let mut throttled = 0;
    for _ in 0..20 {
        throttled += drain()
            .await
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.status() == 429))
            .count();
    }
    assert!(throttled > 0, "the bucket is empty");
    let path = rough.dir.path().join("rough.c1z");
    let a = Arc::new(Azure::new(config(&rough)).unwrap());
    let opts = SyncOptions {
        concurrency: 32,
        ..SyncOptions::default()
    };
    let (a2, p2) = (a.clone(), path.clone());
    let run = tokio::spawn(async move { run_sync(a2, &p2, SyncPlan::Full, opts, None).await });
    while !run.is_finished() && a.stats().arm.throttled == 0 {
        drain().await;
    }
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.end.dropped_grants, 0);
    let seen = read(&path);
    assert_eq!(seen, base);
    let st = a.stats();
    assert!(
        st.arm.throttled > 0,
        "ARM answered 429 and the connector waited: {st:?}"
    );
    assert!(
        rough
            .r
            .sim
            .stats
            .faults
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && st.arm.retries + st.graph.retries + st.entra.retries > 0,
        "faults were met and retried: {st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provisioning_survives_faults() {
    // Almost a third of all answers fail or are lost: a grant is resent under its GUID and a revoke by its
    // assignment id until one is known to have applied, and neither leaves a second assignment or a leftover.
    let settings = Settings {
        throttle: true,
        faults: Some("0.3:500,503,reset".parse().unwrap()),
        ..Settings::default()
    };
    let s = sim_with(tenant("small", 7), settings).await;
    let mut cfg = config(&s);
    cfg.provisioning = true;
    let a = Azure::new(cfg).unwrap();
    let t = s.r.sim.read().tenant.clone();
    let scopes = [
        ("resource_group", t.azure.resource_groups[0].arm_id()),
        ("storage_account", t.azure.storage_accounts[0].arm_id()),
        ("container", t.azure.containers[0].arm_id()),
    ];
    for (kind, sc) in &scopes {
        let u = t
            .users
            .iter()
            .find(|u| {
                !t.azure.role_assignments.iter().any(|x| {
                    x.principal_id == u.id
                        && x.role_definition.to_string() == READER
                        && scope::covers(&x.scope, sc)
                })
            })
            .unwrap();
        let uid = u.id.to_string();
        let p = steward_model::builders::ResourceBuilder::new("user", &uid, "u").build();
        let g = a.grant(&p, &role_ent(kind, sc, READER, false)).await.unwrap();
        assert_eq!(assigned(&s, sc, READER, &uid), 1, "granted once at {sc}");
        a.revoke(&g[0]).await.unwrap();
        assert_eq!(assigned(&s, sc, READER, &uid), 0, "revoked at {sc}");
    }
    assert!(
        s.r.sim.stats.faults.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "faults were injected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn medium_tenant_matches_the_manifest() {
    let s = sim("medium").await;
    let (p, a) = sync(&s, config(&s), "medium.c1z").await;
    check_full(&s, &read(&p));
    assert_eq!(a.left_out(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_a_ca_file_and_endpoint_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(Options {
        tenant: tenant("small", 7),
        settings: Settings::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: true,
        proxy: None,
        state_dir: dir.path().to_owned(),
    })
    .await
    .unwrap();
    let s = Sim { r, dir };
    assert!(s.r.ready.arm.starts_with("https://"));
    // Without the emulator's CA the connection is refused.
    let a = Azure::new(config(&s)).unwrap();
    assert!(a.validate().await.is_err());
    let mut c = config(&s);
    c.entra.ca_file = Some(PathBuf::from(s.r.ready.ca_file.clone().unwrap()));
    c.provisioning = true;
    let (p, a) = sync(&s, c.clone(), "tls.c1z").await;
    check_full(&s, &read(&p));
    assert!(a.stats().arm.requests > 0);
    // The grant's own PUT uses the CA file too.
    let t = s.r.sim.read().tenant.clone();
    let reader = t
        .azure
        .builtin_roles
        .iter()
        .find(|d| d.role_name == "Reader")
        .unwrap()
        .name
        .to_string();
    let sc = t.azure.storage_accounts[0].arm_id();
    let u = t
        .users
        .iter()
        .find(|u| {
            !t.azure.role_assignments.iter().any(|x| {
                x.principal_id == u.id
                    && x.role_definition.to_string() == reader
                    && scope::covers(&x.scope, &sc)
            })
        })
        .unwrap();
    let principal = steward_model::builders::ResourceBuilder::new("user", &u.id.to_string(), "u").build();
    a.grant(&principal, &role_ent("storage_account", &sc, &reader, false))
        .await
        .unwrap();
    assert_eq!(assigned(&s, &sc, &reader, &u.id.to_string()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_shot_change_shows_in_the_file_through_a_partial_sync() {
    let s = sim("small").await;
    let mut cfg = config(&s);
    cfg.provisioning = true;
    let (path, a) = sync(&s, cfg, "oneshot.c1z").await;
    let t = s.r.sim.read().tenant.clone();
    let rg = scope::canonical(
        &t.azure
            .resource_groups
            .iter()
            .find(|g| g.name == MIXED_RG)
            .unwrap()
            .arm_id(),
    );
    let rg_id = ResourceId::new("resource_group", rg.clone());
    let u = t
        .users
        .iter()
        .find(|u| {
            u.given_name.is_some()
                && !t.azure.role_assignments.iter().any(|x| {
                    x.principal_id == u.id
                        && x.role_definition.to_string() == READER
                        && scope::covers(&x.scope, &rg)
                })
        })
        .unwrap();
    let ent = role_ent("resource_group", &rg, READER, false);
    let principal = steward_model::builders::ResourceBuilder::new("user", &u.id.to_string(), "u").build();
    // Direct grants of Reader at the resource group (not derived through groups or from above).
    let held = |r: &C1zReader| {
        r.grants(
            &GrantFilter {
                entitlement_id: Some(ent.id.clone()),
                ..GrantFilter::default()
            },
            &PageRequest::first(10_000),
        )
        .unwrap()
        .items
        .into_iter()
        .filter(|g| !g.annotations.contains::<GrantImmutable>())
        .count()
    };
    let before = held(&C1zReader::open(&path).unwrap());
    assert!(before > 0, "someone holds Reader there already");
    let partial = |a: Arc<Azure>| {
        let path = path.clone();
        let rg_id = rg_id.clone();
        async move {
            run_sync(
                a,
                &path,
                SyncPlan::Partial {
                    resources: vec![rg_id],
                },
                SyncOptions::default(),
                None,
            )
            .await
            .unwrap()
        }
    };
    let g = a.grant(&principal, &ent).await.unwrap();
    partial(a.clone()).await;
    let r = C1zReader::open(&path).unwrap();
    assert_eq!(
        r.overlay_sync_ids().len(),
        1,
        "the partial sync is laid over the full one"
    );
    assert!(r.grant(&g[0].id).unwrap().is_some(), "the new grant shows");
    assert_eq!(held(&r), before + 1);
    assert_eq!(
        r.resources(
            &ResourceFilter {
                resource_type: Some("resource_group".into()),
                parent: None,
            },
            &PageRequest::first(100_000),
        )
        .unwrap()
        .items
        .iter()
        .filter(|x| x.display_name == MIXED_RG)
        .count(),
        1
    );
    drop(r);
    a.revoke(&g[0]).await.unwrap();
    partial(a.clone()).await;
    let r = C1zReader::open(&path).unwrap();
    assert_eq!(r.overlay_sync_ids().len(), 2);
    assert!(r.grant(&g[0].id).unwrap().is_none(), "the revoked grant is gone");
    assert_eq!(held(&r), before, "the other direct grants stay");
}

/// Set in the child process of [`national_clouds_use_their_own_hosts`]: what it is to do, as JSON.
const NATIONAL_CHILD: &str = "STEWARD_AZURE_TEST_NATIONAL_CLOUD";

/// `--graph-domain` of a national cloud, no endpoint overrides: the connector signs in at that cloud's login
/// host, reads Graph and ARM at its hosts, and grants there. The emulator answers for Microsoft's host
/// names through its CONNECT proxy; the proxy comes from `HTTPS_PROXY`, as for any user behind one, so the
/// grant and then the sync run in a child process (this test binary again, running only this test) that has it
/// in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn national_clouds_use_their_own_hosts() {
    if let Ok(spec) = std::env::var(NATIONAL_CHILD) {
        national_cloud_child(serde_json::from_str(&spec).unwrap()).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = start(Options {
        tenant: tenant("small", 7),
        settings: Settings::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls: false,
        proxy: Some("127.0.0.1:0".parse().unwrap()),
        state_dir: dir.path().to_owned(),
    })
    .await
    .unwrap();
    let s = Sim { r, dir };
    let proxy = format!("http://{}", s.r.ready.proxy.clone().unwrap());
    let t = s.r.sim.read().tenant.clone();
    let sa = t.azure.storage_accounts[0].arm_id();
    for (k, (domain, login, arm)) in [
        (
            "graph.microsoft.us",
            "login.microsoftonline.us",
            "management.usgovcloudapi.net",
        ),
        (
            "dod-graph.microsoft.us",
            "login.microsoftonline.us",
            "management.usgovcloudapi.net",
        ),
        (
            "microsoftgraph.chinacloudapi.cn",
            "login.chinacloudapi.cn",
            "management.chinacloudapi.cn",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        s.r.sim.stats.reset();
        let user = t
            .users
            .iter()
            .filter(|u| {
                !t.azure.role_assignments.iter().any(|x| {
                    x.principal_id == u.id
                        && x.role_definition.to_string() == READER
                        && scope::covers(&x.scope, &sa)
                })
            })
            .nth(k)
            .unwrap()
            .id
            .to_string();
        let out = s.dir.path().join(format!("{domain}.c1z"));
        let spec = serde_json::json!({
            "tenant": s.r.ready.tenant_id, "client_id": s.r.ready.client_id,
            "secret": s.r.ready.client_secret, "ca_file": s.r.ready.ca_file,
            "graph_domain": domain, "out": out, "scope": sa, "user": user,
        });
        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "national_clouds_use_their_own_hosts", "--nocapture"])
            .env(NATIONAL_CHILD, spec.to_string())
            .env("HTTPS_PROXY", &proxy)
            .env("https_proxy", &proxy)
            .env("NO_PROXY", "")
            .env("no_proxy", "")
            .output()
            .await
            .unwrap();
        assert!(
            child.status.success(),
            "{domain}: {}\n{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        let seen = read(&out);
        check_full(&s, &seen);
        assert_eq!(assigned(&s, &sa, READER, &user), 1, "{domain}: granted at {sa}");
        let tunnels: BTreeSet<String> = s.r.sim.stats.tunnels.lock().unwrap().keys().cloned().collect();
        let want: BTreeSet<String> = [login, domain, arm].iter().map(|h| h.to_string()).collect();
        assert_eq!(tunnels, want, "{domain}: only that cloud's hosts were reached");
    }
}

async fn national_cloud_child(spec: serde_json::Value) {
    let v = |k: &str| spec[k].as_str().unwrap().to_owned();
    let mut c = AzureConfig::new(
        &v("tenant"),
        &v("client_id"),
        Credential::Secret(Secret::new(v("secret"))),
    );
    c.entra.graph_domain = v("graph_domain");
    c.entra.ca_file = Some(PathBuf::from(v("ca_file")));
    c.provisioning = true;
    let a = Arc::new(Azure::new(c).unwrap());
    let principal = steward_model::builders::ResourceBuilder::new("user", &v("user"), "u").build();
    a.grant(
        &principal,
        &role_ent("storage_account", &v("scope"), READER, false),
    )
    .await
    .unwrap();
    let summary = run_sync(
        a.clone(),
        &PathBuf::from(v("out")),
        SyncPlan::Full,
        SyncOptions {
            concurrency: 32,
            ..SyncOptions::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(summary.end.dropped_grants, 0);
}

/// Sign-in with a certificate (a signed client assertion) instead of a secret: Graph and ARM both take it,
/// and the sync is complete.
#[tokio::test]
async fn certificate_sign_in_syncs_everything() {
    let mut t = tenant("small", 7);
    let (cert_pem, key_pem) = steward_sim::generate::add_connector_certificate(&mut t).unwrap();
    let s = sim_with(t, Settings::default()).await;
    let with_cert = |pem: String| {
        let mut c = AzureConfig::new(
            &s.r.ready.tenant_id,
            &s.r.ready.client_id,
            Credential::Certificate {
                certificate_pem: cert_pem.clone(),
                private_key_pem: Secret::new(pem),
            },
        );
        c.entra.login_endpoint = Some(s.r.ready.login.clone());
        c.entra.graph_endpoint = Some(s.r.ready.graph.clone());
        c.entra.arm_endpoint = Some(s.r.ready.arm.clone());
        c
    };
    let (path, _) = sync(&s, with_cert(key_pem), "cert.c1z").await;
    check_full(&s, &read(&path));
    // Another key with the same certificate: the assertion's signature does not verify, and the sync
    // fails before writing a file.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let a = Arc::new(Azure::new(with_cert(other.serialize_pem())).unwrap());
    let bad = s.dir.path().join("bad.c1z");
    let r = run_sync(a, &bad, SyncPlan::Full, SyncOptions::default(), None).await;
    let e = r.expect_err("a wrongly signed assertion is refused").to_string();
    assert!(e.contains("AADSTS") || e.contains("certificate"), "{e}");
    assert!(!bad.exists());
}
