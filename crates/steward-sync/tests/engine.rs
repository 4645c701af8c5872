//! Sync engine tests against an in-memory fake connector (it stands in for a tenant): nested groups with
//! cycles, child resource types, skipped types, throttling, vanished objects and injected failures; and a
//! property test that kills syncs at random points and checks that resuming gives the uninterrupted result.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use steward_c1z::{C1zReader, EntitlementFilter, GrantFilter, PageRequest, ResourceFilter, diff_syncs};
use steward_model::builders::{self, ResourceBuilder};
use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};
use steward_model::{
    AnnotationsExt, ChildResourceType, Entitlement, Grant, Resource, ResourceId, ResourceType,
    SkipEntitlementsAndGrants,
};
use steward_sync::*;

/// A small deterministic tenant.
struct Tenant {
    types: Vec<ResourceType>,
    users: Vec<Resource>,
    groups: Vec<Resource>,
    projects: Vec<Resource>,
    audits: Vec<Resource>,
    /// (group index, member: Ok(user index) | Err(group index))
    members: Vec<(usize, Result<usize, usize>)>,
}

fn lcg(s: &mut u64) -> u64 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *s >> 33
}

fn tenant(seed: u64, n_users: usize, n_groups: usize) -> Tenant {
    let mut s = seed;
    let mut audit_t = builders::resource_type("audit", "Audit log", &[]);
    audit_t.annotations.push_msg(&SkipEntitlementsAndGrants {});
    let types = vec![
        builders::resource_type("user", "User", &[Trait::User]),
        builders::resource_type("group", "Group", &[Trait::Group]),
        builders::resource_type("project", "Project", &[]),
        builders::resource_type("repo", "Repository", &[]),
        audit_t,
    ];
    let users = (0..n_users)
        .map(|i| {
            ResourceBuilder::new("user", &format!("u{i}"), &format!("User {i}"))
                .user(builders::user_trait(
                    Some(&format!("u{i}@x.example")),
                    i % 5 != 0,
                    &format!("u{i}"),
                ))
                .build()
        })
        .collect();
    let groups: Vec<Resource> = (0..n_groups)
        .map(|i| {
            ResourceBuilder::new("group", &format!("g{i}"), &format!("Group {i}"))
                .group()
                .build()
        })
        .collect();
    let mut members = Vec::new();
    for g in 0..n_groups {
        for u in 0..n_users {
            if lcg(&mut s).is_multiple_of(3) {
                members.push((g, Ok(u)));
            }
        }
        // Nested groups, cycles included (g→g+1 and sometimes back).
        if g + 1 < n_groups {
            members.push((g + 1, Err(g)));
        }
        if lcg(&mut s).is_multiple_of(3) && g > 1 {
            members.push((g - 2, Err(g)));
        }
    }
    let projects = (0..2)
        .map(|i| {
            ResourceBuilder::new("project", &format!("p{i}"), &format!("Project {i}"))
                .annotation(steward_model::pack_any(&ChildResourceType {
                    resource_type_id: "repo".into(),
                }))
                .build()
        })
        .collect();
    let audits = vec![ResourceBuilder::new("audit", "a0", "Audit").build()];
    Tenant {
        types,
        users,
        groups,
        projects,
        audits,
        members,
    }
}

struct Fake {
    t: Tenant,
    page: usize,
    calls: AtomicU64,
    throttle_every: u64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Grants of these group ids are "not found".
    vanished: BTreeSet<String>,
    /// Fail fatally on call number N.
    fail_on_call: Option<u64>,
    /// Requests already answered "rate limited" once; their retries are let through. Without this the
    /// global every-Nth-call rule can hit the same request again on its retries (the concurrent calls and
    /// the 1 ms retries line up on the runtime's timer ticks): under load one request was throttled on
    /// all 11 attempts and the sync failed (about 1 run in 30).
    throttled: Mutex<BTreeSet<String>>,
    /// Every call, in the order they started.
    log: Mutex<Vec<String>>,
}

impl Fake {
    fn new(t: Tenant, page: usize) -> Self {
        Self {
            t,
            page,
            calls: AtomicU64::new(0),
            throttle_every: 0,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            vanished: BTreeSet::new(),
            fail_on_call: None,
            throttled: Mutex::new(BTreeSet::new()),
            log: Mutex::new(Vec::new()),
        }
    }

    fn paged<T: Clone>(&self, all: &[T], token: &str) -> Page<T> {
        let start: usize = token.parse().unwrap_or(0);
        let end = (start + self.page).min(all.len());
        Page {
            items: all[start..end].to_vec(),
            next_page_token: if end < all.len() {
                end.to_string()
            } else {
                String::new()
            },
        }
    }

    /// Bookkeeping shared by every call: concurrency, throttling, injected failure. `request` names the
    /// call and its arguments (the same for a retry).
    async fn enter(&self, request: String) -> Result<(), ConnectorError> {
        self.log.lock().unwrap().push(request.clone());
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let cur = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(cur, Ordering::SeqCst);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(200)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.fail_on_call == Some(n) {
            return Err(ConnectorError::Fatal("injected failure".into()));
        }
        if self.throttle_every > 0
            && n.is_multiple_of(self.throttle_every)
            && self.throttled.lock().unwrap().insert(request)
        {
            return Err(ConnectorError::RateLimited {
                retry_after: Duration::from_millis(1),
            });
        }
        Ok(())
    }

    fn member_ent(&self, g: usize) -> Entitlement {
        let t = &self.t;
        builders::entitlement(
            &t.groups[g],
            "member",
            "Member",
            PurposeValue::Assignment,
            &t.types[..2],
        )
    }

    fn repos(&self, parent: &ResourceId) -> Vec<Resource> {
        (0..3)
            .map(|i| {
                ResourceBuilder::new("repo", &format!("{}-r{i}", parent.resource), &format!("Repo {i}"))
                    .parent(parent.clone())
                    .build()
            })
            .collect()
    }
}

impl Connector for Fake {
    async fn validate(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            resource_types: self
                .t
                .types
                .iter()
                .map(|t| ResourceTypeCapability {
                    resource_type: t.id.clone(),
                    sync: true,
                    provision: t.id == "group",
                })
                .collect(),
        }
    }

    async fn resource_types(&self) -> Result<Vec<ResourceType>, ConnectorError> {
        self.enter("resource_types".into()).await?;
        Ok(self.t.types.clone())
    }

    async fn list_resources(
        &self,
        resource_type: &str,
        parent: Option<&ResourceId>,
        page_token: &str,
    ) -> Result<Page<Resource>, ConnectorError> {
        self.enter(format!("list_resources {resource_type} {parent:?} {page_token}"))
            .await?;
        let all = match (resource_type, parent) {
            ("user", None) => self.t.users.clone(),
            ("group", None) => self.t.groups.clone(),
            ("project", None) => self.t.projects.clone(),
            ("audit", None) => self.t.audits.clone(),
            ("repo", Some(p)) => self.repos(p),
            _ => Vec::new(),
        };
        Ok(self.paged(&all, page_token))
    }

    async fn list_entitlements(
        &self,
        resource: &Resource,
        page_token: &str,
    ) -> Result<Page<Entitlement>, ConnectorError> {
        self.enter(format!("list_entitlements {:?} {page_token}", resource.id))
            .await?;
        let id = resource.id.clone().unwrap_or_default();
        assert_ne!(
            id.resource_type, "audit",
            "SkipEntitlementsAndGrants must be honoured"
        );
        let all = match id.resource_type.as_str() {
            "group" => {
                let g: usize = id.resource[1..].parse().unwrap();
                vec![
                    self.member_ent(g),
                    builders::entitlement(
                        resource,
                        "owner",
                        "Owner",
                        PurposeValue::Ownership,
                        &self.t.types[..1],
                    ),
                ]
            }
            "repo" => vec![builders::entitlement(
                resource,
                "push",
                "Push",
                PurposeValue::Permission,
                &self.t.types[..2],
            )],
            _ => Vec::new(),
        };
        Ok(self.paged(&all, page_token))
    }

    async fn list_grants(
        &self,
        resource: &Resource,
        page_token: &str,
    ) -> Result<Page<Grant>, ConnectorError> {
        self.enter(format!("list_grants {:?} {page_token}", resource.id))
            .await?;
        let id = resource.id.clone().unwrap_or_default();
        if self.vanished.contains(&id.resource) {
            return Err(ConnectorError::NotFound(format!(
                "group {} was deleted",
                id.resource
            )));
        }
        let all: Vec<Grant> = match id.resource_type.as_str() {
            "group" => {
                let g: usize = id.resource[1..].parse().unwrap();
                let e = self.member_ent(g);
                self.t
                    .members
                    .iter()
                    .filter(|(gg, _)| *gg == g)
                    .map(|(_, m)| match m {
                        Ok(u) => builders::grant(&e, &self.t.users[*u]),
                        Err(inner) => {
                            let ie = self.member_ent(*inner);
                            builders::expandable(builders::grant(&e, &self.t.groups[*inner]), &[&ie.id])
                        }
                    })
                    .collect()
            }
            "repo" => {
                // Group g0 may push to every repo; its members get it by expansion.
                let e = builders::entitlement(
                    resource,
                    "push",
                    "Push",
                    PurposeValue::Permission,
                    &self.t.types[..2],
                );
                let g0e = self.member_ent(0);
                vec![builders::expandable(
                    builders::grant(&e, &self.t.groups[0]),
                    &[&g0e.id],
                )]
            }
            _ => Vec::new(),
        };
        Ok(self.paged(&all, page_token))
    }

    async fn grant(
        &self,
        principal: &Resource,
        entitlement: &Entitlement,
    ) -> Result<Vec<Grant>, ConnectorError> {
        Ok(vec![builders::grant(entitlement, principal)])
    }

    async fn revoke(&self, _grant: &Grant) -> Result<(), ConnectorError> {
        Ok(())
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn opts(concurrency: usize) -> SyncOptions {
    SyncOptions {
        concurrency,
        checkpoint_every_pages: 3,
        initial_backoff: Duration::from_millis(1),
        ..Default::default()
    }
}

fn count<T>(mut f: impl FnMut(&PageRequest) -> steward_c1z::Result<steward_c1z::Page<T>>) -> usize {
    let mut req = PageRequest::first(1000);
    let mut n = 0;
    loop {
        let p = f(&req).unwrap();
        n += p.items.len();
        if p.next_page_token.is_empty() {
            return n;
        }
        req.token = p.next_page_token;
    }
}

#[test]
fn full_sync_lists_everything_and_expands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.c1z");
    let mut fake = Fake::new(tenant(7, 12, 6), 4);
    fake.throttle_every = 5;
    fake.vanished.insert("g5".into());
    let fake = Arc::new(fake);
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    let s = rt()
        .block_on(run_sync(fake.clone(), &path, SyncPlan::Full, opts(3), Some(ptx)))
        .unwrap();
    assert!(!s.resumed);
    assert!(s.rate_limited > 0);
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(fake.max_in_flight.load(Ordering::SeqCst) <= 3);
    assert!(
        fake.max_in_flight.load(Ordering::SeqCst) >= 2,
        "calls ran concurrently"
    );
    let mut events = Vec::new();
    while let Ok(e) = prx.try_recv() {
        events.push(e);
    }
    assert!(matches!(events[0], ProgressEvent::Started { .. }));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProgressEvent::Checkpoint { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProgressEvent::RateLimited { .. }))
    );

    let r = C1zReader::open(&path).unwrap();
    let res = |t: &str| {
        count(|p| {
            r.resources(
                &ResourceFilter {
                    resource_type: Some(t.into()),
                    parent: None,
                },
                p,
            )
        })
    };
    assert_eq!(res("user"), 12);
    assert_eq!(res("group"), 6);
    assert_eq!(res("repo"), 6, "child resources listed under each project");
    assert_eq!(res("audit"), 1);
    let repos = r
        .resources(
            &ResourceFilter {
                resource_type: Some("repo".into()),
                parent: Some(ResourceId::new("project", "p1")),
            },
            &PageRequest::first(10),
        )
        .unwrap();
    assert_eq!(repos.items.len(), 3);
    assert_eq!(
        count(|p| r.entitlements(
            &EntitlementFilter {
                resource: Some(ResourceId::new("audit", "a0"))
            },
            p
        )),
        0
    );
    assert_eq!(
        count(|p| r.entitlements(&EntitlementFilter::default(), p)),
        6 * 2 + 6
    );
    // Expansion: members of g0 can push to repos through g0.
    let g0_members: Vec<usize> = fake
        .t
        .members
        .iter()
        .filter_map(|(g, m)| (*g == 0).then_some(m.as_ref().ok().copied()).flatten())
        .collect();
    for u in g0_members {
        assert!(r.grant(&format!("repo:p0-r0:push:user:u{u}")).unwrap().is_some());
    }
    assert!(
        r.grants(&GrantFilter::default(), &PageRequest::first(10))
            .unwrap()
            .items
            .len()
            == 10
    );
    assert!(
        !steward_c1z::writer::wip_path(&path).exists() && !steward_c1z::writer::build_path(&path).exists()
    );
}

/// A listing's next page is handed out before the follow-ups (entitlements, grants) queued before it: the
/// pages of a listing are a chain, and behind every follow-up of a large tenant it would advance one page
/// per pass over the whole queue.
#[test]
fn next_pages_go_before_queued_follow_ups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("order.c1z");
    // 60 groups, 3 a page: each page queues 6 follow-ups (entitlements and grants of 3 groups).
    let fake = Arc::new(Fake::new(tenant(3, 10, 60), 3));
    rt().block_on(run_sync(fake.clone(), &path, SyncPlan::Full, opts(1), None))
        .unwrap();
    let log = fake.log.lock().unwrap().clone();
    let pages: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, r)| r.starts_with("list_resources group "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(pages.len(), 20, "{log:#?}");
    let first_calls = |r: &String| {
        (r.starts_with("list_entitlements ") || r.starts_with("list_grants ")) && r.ends_with(' ')
    };
    for w in pages.windows(2) {
        let between = log[w[0] + 1..w[1]].iter().filter(|r| first_calls(r)).count();
        // One call running and one handed out ahead (concurrency 1) may come first; without the urgent
        // queue, all of the previous pages' follow-ups would (6 or more).
        assert!(
            between <= 2,
            "{between} follow-ups between two group pages: {:#?}",
            &log[w[0]..=w[1]]
        );
    }
    // Every group's follow-ups still ran.
    let groups = log
        .iter()
        .filter(|r| r.starts_with("list_grants ") && r.contains("\"group\""))
        .count();
    assert!(groups >= 60, "{groups}");
}

#[test]
fn failure_checkpoints_and_the_next_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fail.c1z");
    let mut fake = Fake::new(tenant(3, 8, 4), 2);
    fake.fail_on_call = Some(15);
    let err = rt()
        .block_on(run_sync(Arc::new(fake), &path, SyncPlan::Full, opts(2), None))
        .unwrap_err();
    assert!(matches!(err, SyncError::Connector { .. }), "{err}");
    assert!(err.to_string().contains("injected failure"));
    assert!(!path.exists());
    let fake = Arc::new(Fake::new(tenant(3, 8, 4), 2));
    let s = rt()
        .block_on(run_sync(fake.clone(), &path, SyncPlan::Full, opts(2), None))
        .unwrap();
    assert!(s.resumed);
    assert_eq!(s.end.duplicates_removed, 0);
    let clean = dir.path().join("clean.c1z");
    rt().block_on(run_sync(fake, &clean, SyncPlan::Full, opts(2), None))
        .unwrap();
    let d = diff_syncs(
        &C1zReader::open(&path).unwrap(),
        &C1zReader::open(&clean).unwrap(),
    )
    .unwrap();
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn warnings_budget_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = Fake::new(tenant(1, 4, 4), 10);
    fake.vanished = ["g0", "g1", "g2"].iter().map(|s| s.to_string()).collect();
    let o = SyncOptions {
        warnings_budget: 2,
        ..opts(2)
    };
    let err = rt()
        .block_on(run_sync(
            Arc::new(fake),
            &dir.path().join("w.c1z"),
            SyncPlan::Full,
            o,
            None,
        ))
        .unwrap_err();
    assert!(
        matches!(err, SyncError::TooManyWarnings { count: 3, budget: 2 }),
        "{err}"
    );
}

#[test]
fn partial_sync_of_chosen_resources() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.c1z");
    let fake = Arc::new(Fake::new(tenant(5, 6, 3), 3));
    rt().block_on(run_sync(fake.clone(), &path, SyncPlan::Full, opts(2), None))
        .unwrap();
    let plan = SyncPlan::Partial {
        resources: vec![ResourceId::new("group", "g1"), ResourceId::new("group", "nope")],
    };
    let s = rt().block_on(run_sync(fake, &path, plan, opts(2), None)).unwrap();
    assert_eq!(s.resources, 1);
    assert_eq!(s.warnings.len(), 1);
    let mut r = C1zReader::open(&path).unwrap();
    let runs = r.sync_runs().unwrap();
    assert_eq!(
        runs.iter().map(|r| r.sync_type.as_str()).collect::<Vec<_>>(),
        ["full", "partial"]
    );
    assert_eq!(
        r.sync_id(),
        Some(runs[0].sync_id.as_str()),
        "readers default to the latest full sync"
    );
    assert_eq!(
        r.overlay_sync_ids(),
        std::slice::from_ref(&s.sync_id),
        "with the newer partial sync laid over it"
    );
    r.select_sync(&s.sync_id).unwrap();
    let st = r.stats().unwrap();
    assert_eq!(st.resources_by_type.get("group"), Some(&1));
    assert_eq!(st.entitlements, 2);
    assert_eq!(st.resource_types, 5);
}

#[test]
fn provisioning_by_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prov.c1z");
    let fake = Arc::new(Fake::new(tenant(5, 3, 2), 10));
    let rt = rt();
    rt.block_on(run_sync(fake.clone(), &path, SyncPlan::Full, opts(2), None))
        .unwrap();
    let g = rt
        .block_on(provision::grant_by_ids(
            &*fake,
            &path,
            "group:g1:member",
            "user",
            "u2",
        ))
        .unwrap();
    assert_eq!(g[0].id, "group:g1:member:user:u2");
    let e = rt
        .block_on(provision::grant_by_ids(
            &*fake,
            &path,
            "group:zz:member",
            "user",
            "u2",
        ))
        .unwrap_err();
    assert!(e.to_string().contains("group:zz:member"));
    rt.block_on(provision::revoke_by_id(&*fake, &path, "group:g1:member:group:g0"))
        .unwrap();
}

fn same(a: &Path, b: &Path) {
    let (ra, rb) = (C1zReader::open(a).unwrap(), C1zReader::open(b).unwrap());
    let d = diff_syncs(&ra, &rb).unwrap();
    assert!(d.is_empty(), "resumed sync differs: {d:?}");
    assert_eq!(ra.stats().unwrap(), rb.stats().unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Kill the sync after a random number of pages (as SIGKILL would: nothing after the last checkpoint
    /// survives), possibly twice, then resume: the file equals an uninterrupted run, with no duplicates.
    #[test]
    fn killed_and_resumed_equals_uninterrupted(
        seed in 0u64..1000,
        kills in proptest::collection::vec(1u64..40, 1..3),
        concurrency in 1usize..4,
        every in 1u64..6,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let fake = || Arc::new(Fake::new(tenant(seed, 7, 5), 2));
        let o = SyncOptions { checkpoint_every_pages: every, ..opts(concurrency) };
        let clean = dir.path().join("clean.c1z");
        let full = rt.block_on(run_sync(fake(), &clean, SyncPlan::Full, o.clone(), None)).unwrap();

        let path = dir.path().join("killed.c1z");
        let mut resumed = false;
        for k in &kills {
            let crash = SyncOptions { crash_after_pages: Some(*k), ..o.clone() };
            match rt.block_on(run_sync(fake(), &path, SyncPlan::Full, crash, None)) {
                Err(SyncError::Interrupted(_)) => resumed = true,
                Ok(_) => {} // finished before the kill point
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        prop_assert_eq!(resumed, kills[0] < full.pages, "a kill point inside the sync must interrupt it");
        if !path.exists() {
            let s = rt.block_on(run_sync(fake(), &path, SyncPlan::Full, o, None)).unwrap();
            prop_assert_eq!(s.resumed, resumed);
            prop_assert_eq!(s.end.duplicates_removed, 0);
        }
        same(&clean, &path);
    }
}
