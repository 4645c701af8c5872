//! The grant indexes `end_sync` writes as b-tree pages itself: checked by SQLite (`PRAGMA integrity_check`
//! looks every table row up in every index and walks each b-tree) and by reading each index in its own
//! order against a sorted table scan — at sizes that give three-level trees, with multi-byte UTF-8 keys,
//! keys longer than a page's maximum local payload (overflow pages), two syncs in one file, a resumed
//! sync with a duplicate grant, an index build cut short by a kill, and keys gathered while the grants
//! were written instead of read back from the table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use rusqlite::Connection;
use steward_c1z::*;
use steward_model::builders::{self, ResourceBuilder};
use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};
use steward_model::{Entitlement, Grant, Resource, ResourceType};

const GRANT_INDEXES: [(&str, &str); 4] = [
    ("idx_grants_external_sync_v1", "external_id, sync_id"),
    (
        "idx_grants_resource_type_id_resource_id_v1",
        "resource_type_id, resource_id",
    ),
    (
        "idx_grants_principal_id_v1",
        "principal_resource_type_id, principal_resource_id",
    ),
    (
        "idx_grants_entitlement_id_principal_id_v1",
        "entitlement_id, principal_resource_type_id, principal_resource_id",
    ),
];

struct Tenant {
    types: Vec<ResourceType>,
    resources: Vec<Resource>,
    ents: Vec<Entitlement>,
    grants: Vec<Grant>,
}

/// A scrambled, long, partly multi-byte id: rows are not written in key order.
fn long_id(i: u64, len: usize) -> String {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    let mut s = format!("{h:016x}-ü日本-🙂-{i}-");
    while s.len() < len {
        s.push_str("abcdé");
    }
    s
}

/// `users` users × `groups` groups (every user a member of every `step`-th group from its own offset),
/// plus two users whose ids are longer than a 64 KiB page's maximum local payload (16,422 bytes; one
/// longer than a page), members of three groups each.
fn tenant(users: u64, groups: u64, step: u64) -> Tenant {
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let mut us: Vec<Resource> = (0..users)
        .map(|i| ResourceBuilder::new("user", &long_id(i, 700), "U").build())
        .collect();
    us.push(ResourceBuilder::new("user", &long_id(1_000_001, 20_000), "long").build());
    us.push(ResourceBuilder::new("user", &long_id(1_000_002, 78_000), "longer").build());
    let gs: Vec<Resource> = (0..groups)
        .map(|i| {
            ResourceBuilder::new("group", &long_id(10_000 + i, 900), "G")
                .group()
                .build()
        })
        .collect();
    let ents: Vec<Entitlement> = gs
        .iter()
        .map(|g| {
            builders::entitlement(
                g,
                "member",
                "member",
                PurposeValue::Assignment,
                std::slice::from_ref(&ut),
            )
        })
        .collect();
    let mut grants = Vec::new();
    for (i, u) in us.iter().enumerate() {
        let i = i as u64;
        let mut j = i % step;
        let mut n = 0;
        while j < groups && (i < users || n < 3) {
            grants.push(builders::grant(&ents[j as usize], u));
            j += step;
            n += 1;
        }
    }
    Tenant {
        types: vec![ut, gt],
        resources: us.into_iter().chain(gs).collect(),
        ents,
        grants,
    }
}

fn put_all(w: &mut C1zWriter, t: &Tenant, grants: &[Grant]) {
    for x in &t.types {
        w.put_resource_type(x).unwrap();
    }
    for x in &t.resources {
        w.put_resource(x).unwrap();
    }
    for x in &t.ents {
        w.put_entitlement(x).unwrap();
    }
    for x in grants {
        w.put_grant(x).unwrap();
    }
}

/// Levels of the b-tree rooted at `root` (following the left-most child down).
fn depth(db: &Path, root: u32) -> usize {
    let mut f = std::fs::File::open(db).unwrap();
    let mut h = [0u8; 100];
    f.read_exact(&mut h).unwrap();
    let ps = match u16::from_be_bytes([h[16], h[17]]) {
        1 => 65536u64,
        n => n as u64,
    };
    let mut page = vec![0u8; ps as usize];
    let mut pg = root;
    let mut levels = 1;
    loop {
        f.seek(SeekFrom::Start((pg as u64 - 1) * ps)).unwrap();
        f.read_exact(&mut page).unwrap();
        match page[0] {
            0x0a => return levels,
            0x02 => {
                let cell = u16::from_be_bytes([page[12], page[13]]) as usize;
                pg = u32::from_be_bytes([page[cell], page[cell + 1], page[cell + 2], page[cell + 3]]);
                levels += 1;
            }
            t => panic!("page {pg} of type {t:#x} in an index"),
        }
    }
}

/// `PRAGMA integrity_check` is ok and each grant index, read in its own order, holds exactly the table's
/// rows in SQLite's order. Returns (index name, depth).
fn check(db: &Path) -> Vec<(String, usize)> {
    let c = Connection::open(db).unwrap();
    let ok: Vec<String> = c
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ok, ["ok"], "integrity_check");
    let mut depths = Vec::new();
    for (name, cols) in GRANT_INDEXES {
        let rows = |sql: String| -> Vec<Vec<u8>> {
            let mut st = c.prepare(&sql).unwrap();
            let n = st.column_count();
            st.query_map([], |r| {
                let mut key = Vec::new();
                for i in 0..n {
                    match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Text(t) => key.extend_from_slice(t),
                        rusqlite::types::ValueRef::Integer(v) => key.extend_from_slice(&v.to_be_bytes()),
                        v => panic!("unexpected {v:?}"),
                    }
                    key.push(0xff);
                }
                Ok(key)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        let plan: String = c
            .query_row(
                &format!("EXPLAIN QUERY PLAN SELECT {cols}, id FROM v1_grants INDEXED BY {name} ORDER BY {cols}, id"),
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains(name) && !plan.contains("TEMP B-TREE"), "{plan}");
        let through = rows(format!(
            "SELECT {cols}, id FROM v1_grants INDEXED BY {name} ORDER BY {cols}, id"
        ));
        let scan = rows(format!(
            "SELECT {cols}, id FROM v1_grants NOT INDEXED ORDER BY {cols}, id"
        ));
        assert_eq!(through.len(), scan.len(), "{name}");
        assert!(through == scan, "rows through {name} equal a sorted table scan");
        let root: u32 = c
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .unwrap();
        depths.push((name.to_owned(), depth(db, root)));
    }
    depths
}

#[test]
fn directly_written_grant_indexes_are_sound() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.c1z");
    let t = tenant(120, 100, 2);
    assert!(t.grants.len() > 6_000, "{}", t.grants.len());

    // Sync 1 killed half way and resumed, with one grant written twice: the unique index is built by
    // SQLite before expansion (resolving the duplicate), the three others directly.
    let opts = WriterOptions {
        keep_full_syncs: None,
        crash_safe: true,
        auto_commit_rows: None,
        ..Default::default()
    };
    let half = t.grants.len() / 2;
    let sync1 = {
        let mut w = C1zWriter::create_with(&p, opts.clone()).unwrap();
        let id = w.begin_sync(SyncType::Full).unwrap();
        put_all(&mut w, &t, &t.grants[..half]);
        w.checkpoint("half").unwrap();
        id
    };
    let mut w = C1zWriter::open_with(&p, opts.clone()).unwrap();
    w.resume_sync(&sync1).unwrap();
    let mut dup = t.grants[3].clone();
    dup.entitlement.as_mut().unwrap().display_name = "changed".into();
    for g in &t.grants[half..] {
        w.put_grant(g).unwrap();
    }
    w.put_grant(&dup).unwrap();
    let rep1 = w.end_sync().unwrap();
    assert_eq!(rep1.duplicates_removed, 1);
    assert_eq!(
        rep1.index_keys_gathered, 0,
        "a resumed sync reads its keys from the table"
    );
    w.finish().unwrap();
    check(C1zReader::open(&p).unwrap().db_path());

    // Sync 2 in the same file, in one go: all four grant indexes written directly, over both syncs.
    let mut w = C1zWriter::open_with(
        &p,
        WriterOptions {
            crash_safe: false,
            ..opts
        },
    )
    .unwrap();
    let sync2 = w.begin_sync(SyncType::Full).unwrap();
    put_all(&mut w, &t, &t.grants);
    let rep2 = w.end_sync().unwrap();
    assert_eq!(rep2.duplicates_removed, 0);
    assert_eq!(rep2.index_keys_gathered, t.grants.len() as u64);
    w.finish().unwrap();

    let r = C1zReader::open(&p).unwrap();
    let depths = check(r.db_path());
    for (name, d) in &depths {
        assert!(*d >= 3, "{name}: {d} levels");
    }
    let c = Connection::open(r.db_path()).unwrap();
    let per_sync: Vec<i64> = c
        .prepare("SELECT count(*) FROM v1_grants GROUP BY sync_id ORDER BY sync_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(per_sync, [t.grants.len() as i64; 2]);
    // Keys longer than the maximum local payload, found through each index that holds them.
    let long = t.resources.iter().find(|r| r.display_name == "longer").unwrap();
    let pid = &long.id.as_ref().unwrap().resource;
    assert!(pid.len() > 65_536);
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM v1_grants INDEXED BY idx_grants_principal_id_v1
             WHERE principal_resource_type_id = 'user' AND principal_resource_id = ?1",
            [pid],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 6, "3 grants in each sync");
    let g = t.grants.iter().find(|g| g.id.contains(pid.as_str())).unwrap();
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM v1_grants INDEXED BY idx_grants_external_sync_v1 WHERE external_id = ?1",
            [&g.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
    assert_ne!(sync1, sync2);
    let dup_data: Vec<u8> = c
        .query_row(
            "SELECT data FROM v1_grants INDEXED BY idx_grants_external_sync_v1 WHERE external_id = ?1 AND sync_id = ?2",
            [&dup.id, &sync1],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        dup_data,
        prost::Message::encode_to_vec(&dup),
        "the last write is kept"
    );
}

/// A kill after page 1's header counted the new index pages but before they were registered: the next
/// open cuts them off (without that, `integrity_check` reports pages no b-tree uses), and the resumed
/// sync builds its indexes.
#[test]
fn an_interrupted_index_build_leaves_no_unused_pages() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.c1z");
    let t = tenant(30, 20, 3);
    let opts = WriterOptions {
        crash_safe: true,
        auto_commit_rows: None,
        ..Default::default()
    };
    let sync = {
        let mut w = C1zWriter::create_with(&p, opts.clone()).unwrap();
        let id = w.begin_sync(SyncType::Full).unwrap();
        put_all(&mut w, &t, &t.grants);
        w.checkpoint("all").unwrap();
        id
    };
    // What a kill in that window leaves: the mark (minus the size before), and more pages in the header.
    let wip = writer::wip_path(&p);
    let before: i64 = {
        let c = Connection::open(&wip).unwrap();
        let n: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        c.execute_batch(&format!("PRAGMA user_version={}", -n)).unwrap();
        n
    };
    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&wip)
            .unwrap();
        let mut h = [0u8; 100];
        f.read_exact(&mut h).unwrap();
        let counter = u32::from_be_bytes([h[24], h[25], h[26], h[27]]) + 1;
        let pages = before as u32 + 3;
        let mut junk = vec![0u8; 65536];
        junk[0] = 0x0a;
        junk[5] = 0;
        f.seek(SeekFrom::Start(before as u64 * 65536)).unwrap();
        for _ in 0..3 {
            f.write_all(&junk).unwrap();
        }
        f.seek(SeekFrom::Start(24)).unwrap();
        f.write_all(&counter.to_be_bytes()).unwrap();
        f.write_all(&pages.to_be_bytes()).unwrap();
        f.seek(SeekFrom::Start(92)).unwrap();
        f.write_all(&counter.to_be_bytes()).unwrap();
    }
    let mut w = C1zWriter::open_with(&p, opts).unwrap();
    w.resume_sync(&sync).unwrap();
    w.end_sync().unwrap();
    w.finish().unwrap();
    let r = C1zReader::open(&p).unwrap();
    check(r.db_path());
    let c = Connection::open(r.db_path()).unwrap();
    let uv: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(uv, 0);
}

/// 300 users members of a hub group, 80 groups each held by the hub through an expandable grant: expansion
/// gives every user each of the 80 groups (24,000 new grants). 380 grants are written.
fn hub_tenant() -> Tenant {
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let users: Vec<Resource> = (0..300)
        .map(|i| ResourceBuilder::new("user", &long_id(i, 40), "U").build())
        .collect();
    let hub = ResourceBuilder::new("group", "hub-ö", "hub").group().build();
    let groups: Vec<Resource> = (0..80)
        .map(|i| {
            ResourceBuilder::new("group", &long_id(5_000 + i, 30), "G")
                .group()
                .build()
        })
        .collect();
    let all_types = [ut.clone(), gt.clone()];
    let ent =
        |g: &Resource| builders::entitlement(g, "member", "member", PurposeValue::Assignment, &all_types);
    let hub_ent = ent(&hub);
    let ents: Vec<Entitlement> = groups.iter().map(ent).chain([hub_ent.clone()]).collect();
    let mut grants: Vec<Grant> = users.iter().map(|u| builders::grant(&hub_ent, u)).collect();
    for e in &ents[..groups.len()] {
        grants.push(builders::expandable(
            builders::grant(e, &hub),
            &[hub_ent.id.as_str()],
        ));
    }
    Tenant {
        types: vec![ut, gt],
        resources: users.into_iter().chain(groups).chain([hub]).collect(),
        ents,
        grants,
    }
}

/// A resumed sync (grant ids not tracked): all four grant indexes are written before expansion, SQLite
/// maintains them through expansion, which drops the non-unique ones for its 24,000 new grants; those
/// are written again afterwards. Every index is sound and complete.
#[test]
fn resumed_sync_with_a_large_expansion() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("resumed.c1z");
    let t = hub_tenant();
    let opts = WriterOptions {
        crash_safe: true,
        auto_commit_rows: None,
        ..Default::default()
    };
    let sync = {
        let mut w = C1zWriter::create_with(&p, opts.clone()).unwrap();
        let id = w.begin_sync(SyncType::Full).unwrap();
        put_all(&mut w, &t, &t.grants[..100]);
        w.checkpoint("part").unwrap();
        id
    };
    let mut w = C1zWriter::open_with(&p, opts).unwrap();
    w.resume_sync(&sync).unwrap();
    for g in &t.grants[100..] {
        w.put_grant(g).unwrap();
    }
    let rep = w.end_sync().unwrap();
    w.finish().unwrap();
    assert_eq!(rep.expansion.grants_created, 24_000);
    assert_eq!(rep.index_keys_gathered, 0);
    let r = C1zReader::open(&p).unwrap();
    check(r.db_path());
    let c = Connection::open(r.db_path()).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM v1_grants", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 380 + 24_000);
}

/// Syncs added to a file whose oldest one `finish` then deletes (Baton keeps two full syncs): SQLite
/// deletes its rows through the b-trees written directly, and the file stays sound.
#[test]
fn old_syncs_deleted_through_directly_written_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("three.c1z");
    let t = tenant(40, 30, 3);
    for i in 0..3 {
        let mut w = if i == 0 {
            C1zWriter::create(&p)
        } else {
            C1zWriter::open(&p)
        }
        .unwrap();
        w.begin_sync(SyncType::Full).unwrap();
        put_all(&mut w, &t, &t.grants);
        w.end_sync().unwrap();
        w.finish().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let r = C1zReader::open(&p).unwrap();
    check(r.db_path());
    let c = Connection::open(r.db_path()).unwrap();
    let (syncs, n): (i64, i64) = c
        .query_row(
            "SELECT count(DISTINCT sync_id), count(*) FROM v1_grants",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((syncs, n), (2, 2 * t.grants.len() as i64));
}

/// The grant index keys the writer gathers while it inserts a sync's grants (sorted and spilled by a
/// background thread; here in runs of a few KiB, so hundreds of them) stand in for the pass over the
/// table: the indexes they give must hold exactly the table's rows — with an older sync in the file
/// (its rows read from the table), with expansion adding grants after them (read from the table too),
/// on the path where the unique index is written before expansion (too many ids to track), with a
/// dangling grant dropped (the gathered keys are then not used), and with a duplicate grant id.
#[test]
fn gathered_grant_index_keys_equal_the_table() {
    let hub = hub_tenant();
    let wide = tenant(60, 40, 3);
    // (case, ids tracked, a dangling grant, a duplicate id, keys gathered used)
    let cases: [(&str, usize, bool, bool, bool); 5] = [
        ("tracked, expansion after", 2_000_000, false, false, true),
        (
            "ids not tracked, indexes before expansion",
            10,
            false,
            false,
            true,
        ),
        ("a dangling grant dropped", 2_000_000, true, false, false),
        ("a duplicate id, tracked", 2_000_000, false, true, false),
        ("a duplicate id, not tracked", 10, false, true, false),
    ];
    for (name, track, dangling, duplicate, used) in cases {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gathered.c1z");
        let opts = WriterOptions {
            keep_full_syncs: None,
            track_grant_ids: track,
            sort_run_kib: 16,
            ..Default::default()
        };
        // An older sync in the file: its rows are below the new sync's first id.
        let mut w = C1zWriter::create_with(&p, opts.clone()).unwrap();
        w.begin_sync(SyncType::Full).unwrap();
        put_all(&mut w, &wide, &wide.grants);
        w.end_sync().unwrap();
        w.finish().unwrap();
        let mut w = C1zWriter::open_with(&p, opts).unwrap();
        w.begin_sync(SyncType::Full).unwrap();
        put_all(&mut w, &hub, &hub.grants);
        put_all(&mut w, &wide, &wide.grants);
        if dangling {
            let ghost = ResourceBuilder::new("user", "ghost", "gone").build();
            w.put_grant(&builders::grant(&wide.ents[0], &ghost)).unwrap();
        }
        if duplicate {
            let mut again = wide.grants[7].clone();
            again.entitlement.as_mut().unwrap().display_name = "changed".into();
            w.put_grant(&again).unwrap();
        }
        let rep = w.end_sync().unwrap();
        w.finish().unwrap();
        assert_eq!(rep.expansion.grants_created, 24_000, "{name}");
        assert_eq!(rep.dropped_grants, dangling as u64, "{name}");
        assert_eq!(rep.duplicates_removed, duplicate as u64, "{name}");
        let written = hub.grants.len() + wide.grants.len() + dangling as usize + duplicate as usize;
        assert_eq!(
            rep.index_keys_gathered,
            if used { written as u64 } else { 0 },
            "{name}"
        );
        let r = C1zReader::open(&p).unwrap();
        check(r.db_path());
        let c = Connection::open(r.db_path()).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM v1_grants", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            n as usize,
            2 * wide.grants.len() + hub.grants.len() + 24_000,
            "{name}"
        );
    }
}

/// The row ids the writer expects its grants to get (the table's largest + 1 when the sync began) no
/// longer hold when an older sync's rows at the end of the table are deleted before the grants are
/// written: the insert check notices, and the indexes are built from the table instead.
#[test]
fn unexpected_row_ids_fall_back_to_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ids.c1z");
    let t = tenant(30, 20, 3);
    let opts = WriterOptions {
        keep_full_syncs: None,
        ..Default::default()
    };
    let mut w = C1zWriter::create_with(&p, opts.clone()).unwrap();
    let old = w.begin_sync(SyncType::Full).unwrap();
    put_all(&mut w, &t, &t.grants);
    w.end_sync().unwrap();
    w.finish().unwrap();
    let mut w = C1zWriter::open_with(&p, opts).unwrap();
    w.begin_sync(SyncType::Full).unwrap();
    w.delete_sync(&old).unwrap();
    put_all(&mut w, &t, &t.grants);
    let rep = w.end_sync().unwrap();
    w.finish().unwrap();
    assert_eq!(rep.index_keys_gathered, 0);
    let r = C1zReader::open(&p).unwrap();
    check(r.db_path());
    let c = Connection::open(r.db_path()).unwrap();
    let (min, n): (i64, i64) = c
        .query_row("SELECT min(id), count(*) FROM v1_grants", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((min, n), (1, t.grants.len() as i64), "ids were reused");
}
