//! End-to-end tests of the c1z crate: round trip, schema, several syncs, expansion, diff, resume,
//! damaged files and concurrent readers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use prost::Message;
use rusqlite::Connection;
use steward_c1z::*;
use steward_model::builders::{self, ResourceBuilder};
use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};
use steward_model::{
    AnnotationsExt, Entitlement, Grant, GrantImmutable, Resource, ResourceId, ResourceType, profile,
};

struct Tenant {
    types: Vec<ResourceType>,
    resources: Vec<Resource>,
    ents: Vec<Entitlement>,
    grants: Vec<Grant>,
}

fn user(id: &str) -> Resource {
    ResourceBuilder::new("user", id, &format!("User {id}"))
        .profile(profile::strings([
            ("user_id", id),
            ("first_name", "F"),
            ("last_name", "L"),
        ]))
        .user(builders::user_trait(Some(&format!("{id}@example.com")), true, id))
        .build()
}

fn group(id: &str) -> Resource {
    ResourceBuilder::new("group", id, &format!("Group {id}"))
        .group()
        .build()
}

/// Users u1..u3; groups g1 ⊂ g2 ⊂ g3 (g1 is a member of g2, …); u1 ∈ g1, u2 ∈ g2, u3 ∈ g3 directly.
fn nested() -> Tenant {
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let users: Vec<Resource> = (1..=3).map(|i| user(&format!("u{i}"))).collect();
    let groups: Vec<Resource> = (1..=3).map(|i| group(&format!("g{i}"))).collect();
    let ents: Vec<Entitlement> = groups
        .iter()
        .map(|g| {
            builders::entitlement(
                g,
                "member",
                "member",
                PurposeValue::Assignment,
                &[ut.clone(), gt.clone()],
            )
        })
        .collect();
    let mut grants = vec![
        builders::grant(&ents[0], &users[0]),
        builders::grant(&ents[1], &users[1]),
        builders::grant(&ents[2], &users[2]),
        builders::expandable(builders::grant(&ents[1], &groups[0]), &["group:g1:member"]),
        builders::expandable(builders::grant(&ents[2], &groups[1]), &["group:g2:member"]),
    ];
    grants.push(builders::expandable(
        builders::grant(&ents[2], &groups[2]),
        &["", " "],
    )); // blank ids only
    Tenant {
        types: vec![ut, gt],
        resources: users.into_iter().chain(groups).collect(),
        ents,
        grants,
    }
}

fn write(path: &Path, t: &Tenant, opts: WriterOptions, create: bool) -> EndReport {
    let mut w = if create {
        C1zWriter::create_with(path, opts)
    } else {
        C1zWriter::open_with(path, opts)
    }
    .unwrap();
    w.begin_sync(SyncType::Full).unwrap();
    put_tenant(&mut w, t);
    let rep = w.end_sync().unwrap();
    w.finish().unwrap();
    rep
}

/// Writes every row of `t` into the open sync of `w`.
fn put_tenant(w: &mut C1zWriter, t: &Tenant) {
    for x in &t.types {
        w.put_resource_type(x).unwrap();
    }
    for x in &t.resources {
        w.put_resource(x).unwrap();
    }
    for x in &t.ents {
        w.put_entitlement(x).unwrap();
    }
    for x in &t.grants {
        w.put_grant(x).unwrap();
    }
}

fn all_grants(r: &C1zReader) -> Vec<Grant> {
    let mut v = Vec::new();
    r.for_each_grant(&GrantFilter::default(), |g| {
        v.push(g);
        Ok(())
    })
    .unwrap();
    v
}

fn sources(g: &Grant) -> Vec<(String, bool)> {
    g.sources
        .as_ref()
        .map(|s| s.sources.iter().map(|(k, v)| (k.clone(), v.is_direct)).collect())
        .unwrap_or_default()
}

#[test]
fn round_trip_schema_and_expansion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.c1z");
    let t = nested();
    let rep = write(&path, &t, WriterOptions::default(), true);
    assert_eq!(
        rep.dropped_grants + rep.dropped_resources + rep.dropped_entitlements,
        0
    );
    assert!(!writer::wip_path(&path).exists(), "working database removed");

    let r = C1zReader::open(&path).unwrap();
    let tmp_db = r.db_path().to_owned();
    // Round trip.
    let rts = r.resource_types(&PageRequest::first(10)).unwrap();
    assert_eq!(rts.items, t.types);
    let mut got = Vec::new();
    let mut req = PageRequest::first(2);
    loop {
        let p = r.resources(&ResourceFilter::default(), &req).unwrap();
        got.extend(p.items);
        if p.next_page_token.is_empty() {
            break;
        }
        req.token = p.next_page_token;
    }
    assert_eq!(got, t.resources);
    assert_eq!(
        r.entitlements(&EntitlementFilter::default(), &PageRequest::first(10))
            .unwrap()
            .items,
        t.ents
    );
    let u1 = r.resource(&ResourceId::new("user", "u1")).unwrap().unwrap();
    assert_eq!(u1, t.resources[0]);

    // Expandable annotations left `data`; direct grants unchanged otherwise.
    let g = r.grant("group:g2:member:group:g1").unwrap().unwrap();
    assert!(g.annotations.is_empty());
    assert_eq!(r.grant("group:g1:member:user:u1").unwrap().unwrap(), t.grants[0]);

    // Expansion: u1 ∈ g1 ⊂ g2 ⊂ g3 → u1 gets g2 and g3; u2 gets g3; g1 gets g3.
    let u1g3 = r
        .grant("group:g3:member:user:u1")
        .unwrap()
        .expect("u1 holds g3 transitively");
    assert_eq!(sources(&u1g3), vec![("group:g2:member".to_owned(), false)]);
    assert!(u1g3.annotations.contains::<GrantImmutable>());
    let u1g2 = r.grant("group:g2:member:user:u1").unwrap().unwrap();
    assert_eq!(sources(&u1g2), vec![("group:g1:member".to_owned(), true)]);
    let u2g3 = r.grant("group:g3:member:user:u2").unwrap().unwrap();
    assert_eq!(sources(&u2g3), vec![("group:g2:member".to_owned(), true)]);
    assert!(r.grant("group:g3:member:group:g1").unwrap().is_some());
    let st = r.stats().unwrap();
    assert_eq!(st.grants, 6 + 4);
    assert_eq!(st.resources_by_type.get("user"), Some(&3));

    // Access with paths.
    let acc = r.access(&ResourceId::new("user", "u1")).unwrap();
    let paths: Vec<Vec<String>> = acc.iter().map(|a| a.path.clone()).collect();
    assert_eq!(
        paths,
        vec![
            vec!["group:g1:member".to_owned()],
            vec!["group:g1:member".into(), "group:g2:member".into()],
            vec![
                "group:g1:member".into(),
                "group:g2:member".into(),
                "group:g3:member".into()
            ],
        ]
    );

    // Raw schema: names, columns, flags, needs_expansion.
    let c = Connection::open(&tmp_db).unwrap();
    let cols: Vec<String> = c
        .prepare("SELECT name FROM pragma_table_info('v1_sync_runs')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        cols,
        [
            "id",
            "sync_id",
            "started_at",
            "ended_at",
            "sync_token",
            "sync_type",
            "parent_sync_id",
            "linked_sync_id",
            "supports_diff"
        ]
    );
    let idx: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for want in [
        "idx_resource_types_external_sync_v1",
        "idx_resources_resource_type_id_v1",
        "idx_resources_external_sync_v1",
        "idx_resources_parent_resource_id_v1",
        "idx_entitlements_resource_id_v1",
        "idx_entitlements_external_sync_v1",
        "idx_grants_resource_type_id_resource_id_v1",
        "idx_grants_principal_id_v1",
        "idx_grants_entitlement_id_principal_id_v1",
        "idx_grants_external_sync_v1",
        "idx_grants_sync_expansion_v1",
        "idx_grants_sync_needs_expansion_v1",
        "idx_sync_runs_sync_id_v1",
        "idx_assets_external_sync_v1",
        "idx_session_store_sync_key_v1",
    ] {
        assert!(idx.contains(&want.to_owned()), "missing index {want}: {idx:?}");
    }
    let (ext, supports_diff, ty): (String, i64, String) = c
        .query_row("SELECT r.external_id, s.supports_diff, s.sync_type FROM v1_resources r JOIN v1_sync_runs s USING (sync_id) ORDER BY r.id LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((ext.as_str(), supports_diff, ty.as_str()), ("user:u1", 1, "full"));
    let (ne, exp): (i64, Option<Vec<u8>>) = c
        .query_row(
            "SELECT needs_expansion, expansion FROM v1_grants WHERE external_id = 'group:g3:member:group:g2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(ne, 1);
    let ge = steward_model::GrantExpandable::decode(exp.unwrap().as_slice()).unwrap();
    assert_eq!(ge.entitlement_ids, vec!["group:g2:member"]);
    let (ne, exp): (i64, Option<Vec<u8>>) = c
        .query_row(
            "SELECT needs_expansion, expansion FROM v1_grants WHERE external_id = 'group:g3:member:group:g3'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (ne, exp),
        (0, None),
        "blank-only GrantExpandable is removed without expansion"
    );
    let (rid, prid): (String, String) = c
        .query_row(
            "SELECT resource_id, principal_resource_id FROM v1_grants ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (rid.as_str(), prid.as_str()),
        ("g1", "u1"),
        "bare ids, not type:id"
    );
    drop(c);
    drop(r);
    assert!(!tmp_db.exists(), "reader's temp dir removed on drop");
}

#[test]
fn cycles_and_depth_limit() {
    let dir = tempfile::tempdir().unwrap();
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    // Cycle a ⊂ b ⊂ c ⊂ a, with u1 ∈ a.
    let groups: Vec<Resource> = ["a", "b", "c"].iter().map(|g| group(g)).collect();
    let ents: Vec<Entitlement> = groups
        .iter()
        .map(|g| builders::entitlement(g, "member", "m", PurposeValue::Assignment, &[]))
        .collect();
    let u1 = user("u1");
    let mut grants = vec![builders::grant(&ents[0], &u1)];
    for i in 0..3 {
        let (inner, outer) = (i, (i + 1) % 3);
        grants.push(builders::expandable(
            builders::grant(&ents[outer], &groups[inner]),
            &[&ents[inner].id],
        ));
    }
    let t = Tenant {
        types: vec![ut.clone(), gt.clone()],
        resources: [vec![u1.clone()], groups].concat(),
        ents,
        grants,
    };
    let p = dir.path().join("cycle.c1z");
    let rep = write(&p, &t, WriterOptions::default(), true);
    assert_eq!(rep.expansion.cycles, 1);
    let r = C1zReader::open(&p).unwrap();
    for g in ["a", "b", "c"] {
        assert!(
            r.grant(&format!("group:{g}:member:user:u1")).unwrap().is_some(),
            "u1 in {g}"
        );
    }
    for g in ["a", "b", "c"] {
        assert!(
            r.grant(&format!("group:{g}:member:group:{g}")).unwrap().is_none(),
            "{g} is not its own member"
        );
    }

    // A chain of 25 nested groups: n0 ⊂ n1 ⊂ … ⊂ n24, u1 ∈ n0. With the limit 20, u1 reaches n20 only.
    let chain: Vec<Resource> = (0..25).map(|i| group(&format!("n{i}"))).collect();
    let ents: Vec<Entitlement> = chain
        .iter()
        .map(|g| builders::entitlement(g, "member", "m", PurposeValue::Assignment, &[]))
        .collect();
    let mut grants = vec![builders::grant(&ents[0], &u1)];
    for i in 0..24 {
        grants.push(builders::expandable(
            builders::grant(&ents[i + 1], &chain[i]),
            &[&ents[i].id],
        ));
    }
    let t = Tenant {
        types: vec![ut, gt],
        resources: [vec![u1], chain].concat(),
        ents,
        grants,
    };
    let p = dir.path().join("deep.c1z");
    let rep = write(&p, &t, WriterOptions::default(), true);
    assert!(rep.expansion.edges_over_depth > 0);
    let r = C1zReader::open(&p).unwrap();
    assert!(r.grant("group:n20:member:user:u1").unwrap().is_some());
    assert!(r.grant("group:n21:member:user:u1").unwrap().is_none());
}

#[test]
fn several_syncs_keep_two_and_diff() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("multi.c1z");
    let mut t = nested();
    write(&p, &t, WriterOptions::default(), true);
    write(&p, &t, WriterOptions::default(), false);
    // Third sync: u3 leaves g3, u4 appears and joins g1, g1's display name changes.
    t.grants.retain(|g| g.id != "group:g3:member:user:u3");
    let u4 = user("u4");
    t.resources.push(u4.clone());
    t.grants.push(builders::grant(&t.ents[0], &u4));
    t.resources[3].display_name = "Renamed".into();
    t.ents[0].resource = Some(t.resources[3].clone());
    write(&p, &t, WriterOptions::default(), false);

    let r = C1zReader::open(&p).unwrap();
    let runs = r.sync_runs().unwrap();
    assert_eq!(runs.len(), 2, "only two full syncs are kept");
    assert_eq!(r.sync_id(), Some(runs[1].sync_id.as_str()));
    let d = diff::diff_syncs_in(&r, &runs[0].sync_id, &runs[1].sync_id).unwrap();
    assert_eq!(d.resources.added, vec!["user:u4"]);
    assert_eq!(d.resources.changed, vec!["group:g1"]);
    assert!(d.grants.removed.contains(&"group:g3:member:user:u3".to_owned()));
    assert!(d.grants.added.contains(&"group:g1:member:user:u4".to_owned()));
    assert!(
        d.grants.added.contains(&"group:g3:member:user:u4".to_owned()),
        "expanded grants diff too"
    );
    assert!(
        d.entitlements.changed.contains(&"group:g1:member".to_owned()),
        "embedded resource changed"
    );

    // Two files, same content → empty diff; the identical tenant written twice is byte-equal.
    let p2 = dir.path().join("again.c1z");
    write(&p2, &t, WriterOptions::default(), true);
    let r2 = C1zReader::open(&p2).unwrap();
    let d = diff_syncs(&r, &r2).unwrap();
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn dangling_and_duplicate_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.c1z");
    let mut t = nested();
    let ghost = user("ghost"); // never written as a resource
    t.grants.push(builders::grant(&t.ents[0], &ghost));
    let mut orphan_ent = t.ents[0].clone();
    orphan_ent.id = "group:g1:owner".into();
    t.grants.push(builders::grant(&orphan_ent, &t.resources[0])); // entitlement never written
    t.grants.push(t.grants[0].clone()); // duplicate
    let rep = write(&p, &t, WriterOptions::default(), true);
    assert_eq!(rep.dropped_grants, 2);
    assert_eq!(rep.duplicates_removed, 1);
    let r = C1zReader::open(&p).unwrap();
    assert!(r.grant("group:g1:member:user:ghost").unwrap().is_none());
}

#[test]
fn resume_after_crash_keeps_checkpointed_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.c1z");
    let t = nested();
    let opts = WriterOptions {
        auto_commit_rows: None,
        crash_safe: true,
        ..Default::default()
    };
    let sync_id;
    {
        let mut w = C1zWriter::create_with(&p, opts.clone()).unwrap();
        sync_id = w.begin_sync(SyncType::Full).unwrap();
        for x in &t.types {
            w.put_resource_type(x).unwrap();
        }
        w.session_put("q/1", b"resources").unwrap();
        w.checkpoint("after-types").unwrap();
        w.put_resource(&t.resources[0]).unwrap(); // not checkpointed: lost in the "crash"
        // dropped without finish = crash
    }
    assert!(!p.exists());
    let mut w = C1zWriter::open_with(&p, opts).unwrap();
    let run = w.unfinished_sync().unwrap().unwrap();
    assert_eq!(run.sync_id, sync_id);
    assert_eq!(run.sync_token, "after-types");
    w.resume_sync(&sync_id).unwrap();
    assert_eq!(
        w.session_scan("q/", "", 10).unwrap(),
        vec![("q/1".to_owned(), b"resources".to_vec())]
    );
    for x in &t.resources {
        w.put_resource(x).unwrap();
    }
    for x in &t.ents {
        w.put_entitlement(x).unwrap();
    }
    for x in &t.grants {
        w.put_grant(x).unwrap();
    }
    w.session_clear("q/").unwrap();
    let rep = w.end_sync().unwrap();
    assert_eq!(rep.duplicates_removed, 0);
    w.finish().unwrap();
    let r = C1zReader::open(&p).unwrap();
    assert_eq!(r.sync_id(), Some(sync_id.as_str()));
    assert_eq!(r.stats().unwrap().resources_by_type.values().sum::<u64>(), 6);
}

/// What SIGKILL leaves: the working database and its journal as they are on disk in the middle of a
/// transaction, with pages already spilled from a small cache into the database file. Copying them then
/// (the process's own page cache is what a kill loses) and opening the copy must give the last checkpoint.
#[test]
fn a_kill_mid_transaction_resumes_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.c1z");
    let killed = dir.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    let t = nested();
    let opts = WriterOptions {
        auto_commit_rows: None,
        crash_safe: true,
        cache_kib: 256,
        ..Default::default()
    };
    let files = |from: &Path, to: &Path| {
        for suffix in ["", "-journal", "-wal"] {
            let mut src = writer::wip_path(from).into_os_string();
            src.push(suffix);
            let mut dst = writer::wip_path(to).into_os_string();
            dst.push(suffix);
            if Path::new(&src).exists() {
                std::fs::copy(&src, &dst).unwrap();
            }
        }
    };
    let mut w = C1zWriter::create_with(&p, opts.clone()).unwrap();
    let sync_id = w.begin_sync(SyncType::Full).unwrap();
    for x in &t.types {
        w.put_resource_type(x).unwrap();
    }
    for x in &t.resources {
        w.put_resource(x).unwrap();
    }
    w.session_put("q/1", b"entitlements").unwrap();
    for i in 0..2_000 {
        w.session_put(&format!("s/{i:05}"), &[1; 4096]).unwrap();
    }
    w.checkpoint("after-resources").unwrap();
    let at_checkpoint = std::fs::read(writer::wip_path(&p)).unwrap();
    // Uncommitted: far more than the cache holds — committed pages overwritten (every session value) and
    // new ones appended.
    for i in 0..2_000 {
        w.session_put(&format!("s/{i:05}"), &[2; 4096]).unwrap();
    }
    for i in 0..20_000 {
        w.put_resource(&user(&format!("extra{i}"))).unwrap();
    }
    w.session_put("q/1", b"uncommitted").unwrap();
    let target = killed.join("k.c1z");
    files(&p, &target);
    drop(w);
    assert_ne!(
        std::fs::read(writer::wip_path(&target)).unwrap(),
        at_checkpoint,
        "the test needs uncommitted pages in the database file"
    );

    let mut w = C1zWriter::open_with(&target, opts).unwrap();
    let run = w.unfinished_sync().unwrap().unwrap();
    assert_eq!(run.sync_id, sync_id);
    assert_eq!(run.sync_token, "after-resources");
    w.resume_sync(&sync_id).unwrap();
    assert_eq!(
        w.session_get("q/1").unwrap().as_deref(),
        Some(&b"entitlements"[..])
    );
    let kept = w.session_scan("s/", "", 3_000).unwrap();
    assert_eq!(kept.len(), 2_000);
    assert!(kept.iter().all(|(_, v)| v.as_slice() == [1; 4096]));
    w.session_clear("s/").unwrap();
    for x in &t.ents {
        w.put_entitlement(x).unwrap();
    }
    for x in &t.grants {
        w.put_grant(x).unwrap();
    }
    let rep = w.end_sync().unwrap();
    assert_eq!(rep.duplicates_removed, 0);
    w.finish().unwrap();
    let r = C1zReader::open(&target).unwrap();
    assert_eq!(
        r.stats().unwrap().resources_by_type.values().sum::<u64>(),
        t.resources.len() as u64
    );
    let clean = dir.path().join("clean.c1z");
    write(&clean, &t, WriterOptions::default(), true);
    let ids = |r: &C1zReader| all_grants(r).into_iter().map(|g| g.id).collect::<Vec<_>>();
    assert_eq!(ids(&r), ids(&C1zReader::open(&clean).unwrap()));
}

#[test]
fn damaged_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.c1z");
    write(&p, &nested(), WriterOptions::default(), true);
    let good = std::fs::read(&p).unwrap();
    let open = |name: &str, bytes: &[u8]| {
        let q = dir.path().join(name);
        std::fs::write(&q, bytes).unwrap();
        C1zReader::open(&q).unwrap_err()
    };
    let e = open("v3.c1z", b"C1Z3\0pebble");
    assert!(matches!(e, C1zError::C1z3 { .. }));
    assert!(e.to_string().contains("C1Z3"), "{e}");
    assert!(matches!(open("zip.c1z", b"PK\x03\x04"), C1zError::NotC1z { .. }));
    for cut in [6, 100, good.len() / 2, good.len() - 4] {
        let e = open("cut.c1z", &good[..cut]);
        assert!(matches!(e, C1zError::Corrupt { .. }), "cut at {cut}: {e}");
        assert!(e.to_string().contains("corrupt or truncated"));
    }
    // A valid envelope around something that is not SQLite, and around a SQLite file without c1z tables.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"hello, not a database".repeat(1000)).unwrap();
    envelope::write_c1z(&junk, &dir.path().join("junk.c1z"), Default::default()).unwrap();
    assert!(matches!(
        C1zReader::open(dir.path().join("junk.c1z")).unwrap_err(),
        C1zError::Corrupt { .. }
    ));
    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    envelope::write_c1z(&other, &dir.path().join("other.c1z"), Default::default()).unwrap();
    let e = C1zReader::open(dir.path().join("other.c1z")).unwrap_err();
    assert!(e.to_string().contains("v1_sync_runs"), "{e}");
    assert!(matches!(
        C1zReader::open(dir.path().join("missing.c1z")).unwrap_err(),
        C1zError::Io { .. }
    ));
    // A writer refuses to append to a damaged file and leaves no working file behind.
    let cut = dir.path().join("cut2.c1z");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    assert!(C1zWriter::open(&cut).is_err());
    assert!(!writer::wip_path(&cut).exists());
}

#[test]
fn concurrent_readers() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.c1z");
    write(&p, &nested(), WriterOptions::default(), true);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || {
                let r = C1zReader::open(&p).unwrap();
                let n = all_grants(&r).len();
                (n, r.db_path().to_owned())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().all(|(n, _)| *n == 10));
    let mut dbs: Vec<_> = results.iter().map(|(_, d)| d.clone()).collect();
    dbs.dedup();
    assert_eq!(dbs.len(), 8, "each reader has its own copy");
    assert!(dbs.iter().all(|d| !d.exists()));
}

fn grant_ids(r: &C1zReader, f: &GrantFilter) -> Vec<String> {
    let mut ids = Vec::new();
    r.for_each_grant(f, |g| {
        ids.push(g.id);
        Ok(())
    })
    .unwrap();
    ids.sort();
    ids
}

#[test]
fn default_view_overlays_newer_partial_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("overlay.c1z");
    let t = nested();
    write(&p, &t, WriterOptions::default(), true);
    let full_id = C1zReader::open(&p).unwrap().sync_id().unwrap().to_owned();
    let before = grant_ids(&C1zReader::open(&p).unwrap(), &GrantFilter::default());

    // Provisioning changed g1: u1 was removed, u2 added. The partial sync lists g1 again (renamed too).
    let mut g1 = t.resources[3].clone();
    g1.display_name = "Group one".into();
    let mut g1_member = t.ents[0].clone();
    g1_member.resource = Some(g1.clone());
    let mut w = C1zWriter::open(&p).unwrap();
    let partial_id = w.begin_sync(SyncType::Partial).unwrap();
    for x in &t.types {
        w.put_resource_type(x).unwrap();
    }
    w.put_resource(&g1).unwrap();
    w.put_entitlement(&g1_member).unwrap();
    w.put_grant(&builders::grant(&g1_member, &t.resources[1]))
        .unwrap();
    w.end_sync().unwrap();
    w.finish().unwrap();

    let r = C1zReader::open(&p).unwrap();
    assert_eq!(r.sync_id(), Some(full_id.as_str()), "the base is the full sync");
    assert_eq!(r.overlay_sync_ids(), std::slice::from_ref(&partial_id));
    let g1_grants = grant_ids(
        &r,
        &GrantFilter {
            entitlement_id: Some("group:g1:member".into()),
            ..Default::default()
        },
    );
    assert_eq!(g1_grants, ["group:g1:member:user:u2"]);
    assert!(
        r.grant("group:g1:member:user:u1").unwrap().is_none(),
        "removed grant hidden"
    );
    let u2g1 = r
        .grant("group:g1:member:user:u2")
        .unwrap()
        .expect("added grant shown");
    assert_eq!(
        u2g1.entitlement.unwrap().resource.unwrap().display_name,
        "Group one"
    );
    assert_eq!(
        r.resource(&ResourceId::new("group", "g1"))
            .unwrap()
            .unwrap()
            .display_name,
        "Group one"
    );
    // Other resources are the full sync's, rows and counts alike.
    let mut expect: Vec<String> = before
        .iter()
        .filter(|id| !id.starts_with("group:g1:"))
        .cloned()
        .chain(["group:g1:member:user:u2".to_owned()])
        .collect();
    expect.sort();
    assert_eq!(grant_ids(&r, &GrantFilter::default()), expect);
    assert!(r.grant("group:g3:member:user:u3").unwrap().is_some());
    assert_eq!(
        r.resource(&ResourceId::new("user", "u1")).unwrap().unwrap(),
        t.resources[0]
    );
    let st = r.stats().unwrap();
    assert_eq!(st.grants, expect.len() as u64);
    assert_eq!(st.resources_by_type.get("group"), Some(&3));
    assert_eq!(st.resources_by_type.get("user"), Some(&3));
    assert_eq!(st.entitlements, 3);
    assert_eq!(st.resource_types, 2);
    let mut all_res = Vec::new();
    let page = r
        .resources(&ResourceFilter::default(), &PageRequest::first(100))
        .unwrap();
    all_res.extend(page.items.into_iter().map(|x| x.display_name));
    all_res.sort();
    assert_eq!(
        all_res,
        [
            "Group g2",
            "Group g3",
            "Group one",
            "User u1",
            "User u2",
            "User u3"
        ]
    );
    let ents = r
        .entitlements(&EntitlementFilter::default(), &PageRequest::first(100))
        .unwrap();
    assert_eq!(ents.items.len(), 3);
    assert!(
        r.access(&ResourceId::new("user", "u2"))
            .unwrap()
            .iter()
            .any(|a| a.grant.id == "group:g1:member:user:u2")
    );

    // An explicit sync id reads exactly that sync.
    let mut r = C1zReader::open(&p).unwrap();
    r.select_sync(&full_id).unwrap();
    assert!(r.overlay_sync_ids().is_empty());
    assert_eq!(grant_ids(&r, &GrantFilter::default()), before);
    r.select_sync(&partial_id).unwrap();
    assert_eq!(
        grant_ids(&r, &GrantFilter::default()),
        ["group:g1:member:user:u2"]
    );
    assert_eq!(r.stats().unwrap().resources_by_type.get("user"), None);

    // A newer full sync is the whole truth again: the older partial sync is not laid over it.
    write(&p, &t, WriterOptions::default(), false);
    let r = C1zReader::open(&p).unwrap();
    assert!(r.overlay_sync_ids().is_empty());
    assert!(r.grant("group:g1:member:user:u1").unwrap().is_some());
    assert!(r.grant("group:g1:member:user:u2").unwrap().is_none());
}

/// Many edges (the whole-table load) and many new grants (indexes dropped and rebuilt around the inserts).
#[test]
fn large_expansion_matches_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let root = group("root");
    let root_member = builders::entitlement(&root, "member", "m", PurposeValue::Assignment, &[]);
    let groups: Vec<Resource> = (0..300).map(|i| group(&format!("s{i:03}"))).collect();
    let ents: Vec<Entitlement> = groups
        .iter()
        .map(|g| builders::entitlement(g, "member", "m", PurposeValue::Assignment, &[]))
        .collect();
    let mut users = Vec::new();
    let mut grants = Vec::new();
    for (i, (g, e)) in groups.iter().zip(&ents).enumerate() {
        grants.push(builders::expandable(builders::grant(&root_member, g), &[&e.id]));
        for j in 0..70 {
            let u = user(&format!("u{i:03}-{j:02}"));
            grants.push(builders::grant(e, &u));
            users.push(u);
        }
    }
    // u000-00 also holds root directly; u000-01 is in two member groups.
    grants.push(builders::grant(&root_member, &users[0]));
    grants.push(builders::grant(&ents[1], &users[1]));
    let t = Tenant {
        types: vec![ut, gt],
        resources: [vec![root], groups, users].concat(),
        ents: [vec![root_member], ents].concat(),
        grants,
    };
    let p = dir.path().join("large.c1z");
    let rep = write(&p, &t, WriterOptions::default(), true);
    assert_eq!(rep.expansion.edges, 300);
    assert_eq!(
        rep.expansion.grants_created, 20_999,
        "one grant on root per user without one"
    );
    assert_eq!(
        rep.expansion.grants_updated, 1,
        "u000-00's direct grant gains sources"
    );

    let r = C1zReader::open(&p).unwrap();
    let g = r.grant("group:root:member:user:u005-07").unwrap().unwrap();
    assert_eq!(sources(&g), vec![("group:s005:member".to_owned(), true)]);
    assert!(g.annotations.contains::<GrantImmutable>());
    assert_eq!(g.principal.unwrap().display_name, "User u005-07");
    let two = r.grant("group:root:member:user:u000-01").unwrap().unwrap();
    assert_eq!(
        sources(&two),
        vec![
            ("group:s000:member".to_owned(), true),
            ("group:s001:member".to_owned(), true)
        ]
    );
    let direct = r.grant("group:root:member:user:u000-00").unwrap().unwrap();
    assert_eq!(
        sources(&direct),
        vec![
            ("group:root:member".to_owned(), true),
            ("group:s000:member".to_owned(), true)
        ]
    );
    let by_principal = r
        .grants(
            &GrantFilter {
                principal: Some(ResourceId::new("user", "u005-07")),
                ..Default::default()
            },
            &PageRequest::first(10),
        )
        .unwrap();
    assert_eq!(by_principal.items.len(), 2);
    assert_eq!(r.stats().unwrap().grants, 21_000 + 300 + 2 + 20_999);
    // The indexes dropped for the inserts are back.
    let c = Connection::open(r.db_path()).unwrap();
    for idx in schema::BULK_INDEXES {
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [idx.name],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "{} exists", idx.name);
    }
}

/// The database of a finished c1z, checked: `PRAGMA integrity_check` (every index holds exactly its
/// table's rows, b-trees well formed) and every bulk index present with the spec's SQL. Returns the grants
/// as (external_id, data) in id order, and the same through each grant index.
fn checked_grants(p: &Path) -> Vec<(String, Vec<u8>)> {
    let r = C1zReader::open(p).unwrap();
    let c = Connection::open(r.db_path()).unwrap();
    let ok: Vec<String> = c
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ok, ["ok"], "integrity_check of {}", p.display());
    for idx in schema::BULK_INDEXES {
        let sql: String = c
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [idx.name],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(sql, idx.ddl.replace(" IF NOT EXISTS", ""), "{}", idx.name);
    }
    let rows = |sql: &str| -> Vec<(String, Vec<u8>)> {
        let mut st = c.prepare(sql).unwrap();
        let mut v: Vec<(i64, String, Vec<u8>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        v.sort();
        v.into_iter().map(|(_, e, d)| (e, d)).collect()
    };
    let all = rows("SELECT id, external_id, data FROM v1_grants NOT INDEXED");
    for idx in schema::BULK_INDEXES.iter().filter(|i| i.table == "v1_grants") {
        let through = rows(&format!(
            "SELECT id, external_id, data FROM v1_grants INDEXED BY {} WHERE {} IS NOT NULL OR 1",
            idx.name,
            match idx.name {
                "idx_grants_external_sync_v1" => "external_id",
                "idx_grants_resource_type_id_resource_id_v1" => "resource_type_id",
                "idx_grants_principal_id_v1" => "principal_resource_type_id",
                _ => "entitlement_id",
            }
        ));
        assert_eq!(through, all, "rows through {}", idx.name);
    }
    all
}

/// `end_sync` takes different paths for a sync written in one go (references and grant ids tracked while
/// written: no pass over the grants for dangling rows, the unique grant index built after expansion) and for
/// a resumed one (a pass over the grants, the unique index first): both give the same rows, the same
/// report and sound databases with every index.
#[test]
fn end_sync_paths_give_the_same_sound_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = nested();
    let ghost = user("ghost"); // never written as a resource
    t.grants.push(builders::grant(&t.ents[0], &ghost));
    let mut orphan_ent = t.ents[0].clone();
    orphan_ent.id = "group:g1:owner".into();
    t.grants.push(builders::grant(&orphan_ent, &t.resources[0])); // entitlement never written
    let opts = WriterOptions {
        auto_commit_rows: None,
        crash_safe: true,
        ..Default::default()
    };

    let one_go = dir.path().join("one-go.c1z");
    let rep1 = write(&one_go, &t, opts.clone(), true);

    let resumed = dir.path().join("resumed.c1z");
    let sync_id = {
        let mut w = C1zWriter::create_with(&resumed, opts.clone()).unwrap();
        let id = w.begin_sync(SyncType::Full).unwrap();
        for x in &t.types {
            w.put_resource_type(x).unwrap();
        }
        for x in &t.resources {
            w.put_resource(x).unwrap();
        }
        w.put_grant(&t.grants[0]).unwrap();
        w.checkpoint("half").unwrap();
        id // dropped without finish: a crash
    };
    let mut w = C1zWriter::open_with(&resumed, opts).unwrap();
    w.resume_sync(&sync_id).unwrap();
    for x in &t.ents {
        w.put_entitlement(x).unwrap();
    }
    for x in &t.grants[1..] {
        w.put_grant(x).unwrap();
    }
    let rep2 = w.end_sync().unwrap();
    w.finish().unwrap();

    assert_eq!(rep1.dropped_grants, 2);
    assert_eq!(
        (rep1.dropped_grants, rep1.duplicates_removed, &rep1.expansion),
        (rep2.dropped_grants, rep2.duplicates_removed, &rep2.expansion)
    );
    assert!(rep1.expansion.grants_created > 0);
    let a = checked_grants(&one_go);
    let b = checked_grants(&resumed);
    assert_eq!(
        a.len(),
        6 + rep1.expansion.grants_created as usize,
        "6 written grants kept"
    );
    let ids = |v: &[(String, Vec<u8>)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a, b, "same grant bytes");
    assert!(!ids(&a).contains(&"group:g1:member:user:ghost".to_owned()));
}

/// A duplicate grant id makes `end_sync` build the unique index before expansion and keep the last write;
/// the file is sound.
#[test]
fn duplicate_grant_ids_resolve_to_the_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dup.c1z");
    let mut t = nested();
    let mut last = t.grants[0].clone();
    last.entitlement.as_mut().unwrap().display_name = "changed".into();
    t.grants.push(last.clone());
    let rep = write(&p, &t, WriterOptions::default(), true);
    assert_eq!(rep.duplicates_removed, 1);
    let rows = checked_grants(&p);
    let got: Vec<&(String, Vec<u8>)> = rows.iter().filter(|r| r.0 == last.id).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, last.encode_to_vec());
}

/// Grants go to the insert thread in batches while the caller keeps writing: resources and entitlements
/// written meanwhile, the session store and the sync token read back (which wait for the thread),
/// checkpoints and a commit every few hundred rows all land as if written on one thread — every row,
/// grants in the order they were put, and the grant index keys gathered on the thread still match the
/// table.
#[test]
fn grants_inserted_on_their_own_thread_interleave_with_other_writes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("interleaved.c1z");
    let opts = WriterOptions {
        crash_safe: true,
        auto_commit_rows: Some(777),
        ..Default::default()
    };
    let mut w = C1zWriter::create_with(&p, opts).unwrap();
    w.begin_sync(SyncType::Full).unwrap();
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    w.put_resource_type(&ut).unwrap();
    w.put_resource_type(&gt).unwrap();
    let groups: Vec<Resource> = (0..10).map(|i| group(&format!("g{i}"))).collect();
    let mut ents = Vec::new();
    let mut grants = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        w.put_resource(g).unwrap();
        let e = builders::entitlement(
            g,
            "member",
            "member",
            PurposeValue::Assignment,
            std::slice::from_ref(&ut),
        );
        // Half the entitlements come after grants that reference them.
        if i % 2 == 0 {
            w.put_entitlement(&e).unwrap();
        }
        ents.push(e);
    }
    let users = 3_000;
    for u in 0..users {
        let r = user(&format!("u{u}"));
        w.put_resource(&r).unwrap();
        for k in 0..5 {
            let g = builders::grant(&ents[(u + k) % ents.len()], &r);
            w.put_grant(&g).unwrap();
            grants.push(g);
        }
        if u % 700 == 0 {
            w.session_put(&format!("s/{u}"), u.to_string().as_bytes())
                .unwrap();
            assert_eq!(
                w.session_get(&format!("s/{u}")).unwrap().as_deref(),
                Some(u.to_string().as_bytes())
            );
        }
        if u % 1_000 == 999 {
            w.checkpoint(&format!("t{u}")).unwrap();
            assert_eq!(w.sync_token().unwrap(), format!("t{u}"));
        }
        if u == users / 2 {
            for e in ents.iter().skip(1).step_by(2) {
                w.put_entitlement(e).unwrap();
            }
        }
    }
    assert_eq!(w.session_scan("s/", "", 100).unwrap().len(), 5);
    let rep = w.end_sync().unwrap();
    assert_eq!(
        rep.dropped_grants + rep.dropped_resources + rep.dropped_entitlements,
        0
    );
    assert_eq!(rep.index_keys_gathered, grants.len() as u64);
    w.finish().unwrap();
    let want: Vec<(String, Vec<u8>)> = grants.iter().map(|g| (g.id.clone(), g.encode_to_vec())).collect();
    assert_eq!(checked_grants(&p), want);
    let r = C1zReader::open(&p).unwrap();
    let st = r.stats().unwrap();
    assert_eq!(st.resources_by_type.get("user"), Some(&(users as u64)));
    assert_eq!(st.resources_by_type.get("group"), Some(&(groups.len() as u64)));
    assert_eq!(st.entitlements, ents.len() as u64);
}

/// The grant table's pages written directly (a sync on an empty table, not crash-safe) give the same
/// rows, column by column and type by type, as SQLite's inserts: thousands of grants over many leaves,
/// expandable grants (the partial indexes), a grant larger than a page (overflow pages), commits in
/// between; the file passes `integrity_check` with every index.
#[test]
fn grant_table_pages_written_directly_match_sqlite_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = nested();
    for i in 0..2500 {
        let u = user(&format!("x{i}"));
        t.grants.push(builders::grant(&t.ents[i % 3], &u));
        t.resources.push(u);
    }
    let mut big = builders::grant(&t.ents[0], &t.resources[1]);
    big.entitlement.as_mut().unwrap().description = "d".repeat(300_000);
    t.grants.insert(1000, big);
    let write_with = |name: &str, direct_table: bool| {
        let p = dir.path().join(name);
        let opts = WriterOptions {
            auto_commit_rows: Some(700),
            direct_table,
            ..Default::default()
        };
        let rep = write(&p, &t, opts, true);
        (p, rep)
    };
    let (a, rep_a) = write_with("direct.c1z", true);
    let (b, rep_b) = write_with("sqlite.c1z", false);
    assert_eq!(rep_a.table_rows_direct, t.grants.len() as u64);
    assert_eq!(rep_b.table_rows_direct, 0);
    assert!(rep_a.expansion.grants_created > 0);
    assert_eq!(
        (
            rep_a.dropped_grants,
            rep_a.duplicates_removed,
            &rep_a.expansion,
            rep_a.index_keys_gathered
        ),
        (
            rep_b.dropped_grants,
            rep_b.duplicates_removed,
            &rep_b.expansion,
            rep_b.index_keys_gathered
        )
    );
    assert_eq!(checked_grants(&a), checked_grants(&b));
    let columns = |p: &Path| -> Vec<Vec<rusqlite::types::Value>> {
        let r = C1zReader::open(p).unwrap();
        let c = Connection::open(r.db_path()).unwrap();
        let mut st = c
            .prepare(
                "SELECT id, resource_type_id, resource_id, entitlement_id, principal_resource_type_id,
                   principal_resource_id, external_id, expansion, typeof(expansion), needs_expansion,
                   typeof(needs_expansion), typeof(data), length(data), typeof(sync_id), typeof(discovered_at),
                   sync_id = (SELECT sync_id FROM v1_sync_runs), discovered_at > '2026'
                 FROM v1_grants ORDER BY id",
            )
            .unwrap();
        st.query_map([], |r| (0..17).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let (ca, cb) = (columns(&a), columns(&b));
    assert_eq!(
        ca.len(),
        t.grants.len() - rep_a.dropped_grants as usize + rep_a.expansion.grants_created as usize
    );
    assert!(ca == cb, "columns differ");
}

/// Grants whose table pages are written directly carry the `discovered_at` of the transaction that
/// wrote them, as SQLite's inserts do: never older than the sync's start, however long the writer was
/// open before it.
#[test]
fn grants_written_as_pages_are_discovered_during_their_sync() {
    for direct_table in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.c1z");
        let t = nested();
        let opts = WriterOptions {
            direct_table,
            ..Default::default()
        };
        let mut w = C1zWriter::create_with(&p, opts).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        w.begin_sync(SyncType::Full).unwrap();
        put_tenant(&mut w, &t);
        let rep = w.end_sync().unwrap();
        assert_eq!(rep.table_rows_direct > 0, direct_table);
        w.finish().unwrap();
        let r = C1zReader::open(&p).unwrap();
        let c = Connection::open(r.db_path()).unwrap();
        let (started, first): (String, String) = c
            .query_row(
                "SELECT (SELECT started_at FROM v1_sync_runs), (SELECT min(discovered_at) FROM v1_grants)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            first >= started,
            "direct_table={direct_table}: {first} < {started}"
        );
    }
}

/// A file whose grant table carries an index this writer does not know gets SQLite's inserts (which
/// keep that index), not pages written directly: the file stays sound.
#[test]
fn a_grant_table_with_a_foreign_index_gets_sqlite_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("foreign.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA page_size=65536;").unwrap();
    c.execute_batch(schema::TABLES).unwrap();
    c.execute_batch("CREATE INDEX idx_grants_extra ON v1_grants (sync_id, external_id)")
        .unwrap();
    drop(c);
    let p = dir.path().join("foreign.c1z");
    envelope::write_c1z(&db, &p, envelope::CompressOptions::default()).unwrap();
    let t = nested();
    let rep = write(&p, &t, WriterOptions::default(), false);
    assert_eq!(rep.table_rows_direct, 0);
    assert!(rep.expansion.grants_created > 0);
    // integrity_check covers the extra index.
    let rows = checked_grants(&p);
    assert_eq!(
        rows.len(),
        t.grants.len() - rep.dropped_grants as usize + rep.expansion.grants_created as usize
    );
}
