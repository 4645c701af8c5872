//! Benchmark: grant expansion. Writes a tenant of nested groups and reports how fast `end_sync` expands.
//!
//! Shape (env): `STEWARD_BENCH_USERS` users (default 20,000), `STEWARD_BENCH_GROUPS` groups (default 1,000),
//! each user a direct member of `STEWARD_BENCH_MEMBERSHIPS` groups (default 5, spread deterministically);
//! group i > 0 is a member of group (i-1)/4 (a 4-ary tree, so memberships propagate up ~log4(groups)
//! levels), plus one 3-group cycle. `STEWARD_BENCH_CRASH_SAFE=1` uses the crash-safe (journalled) working
//! database, as the sync engine does; `STEWARD_BENCH_DIRECT_TABLE=0` has SQLite insert the grant rows. Prints the grants expansion created and created grants per second
//! of the expansion alone (`expand_ms`: load, apply, insert and index upkeep), and the phases of the whole
//! write.
//!
//! Run: `cargo bench -p steward-c1z --bench expand_grants`.

use std::time::Instant;

use steward_c1z::{C1zWriter, SyncType, WriterOptions};
use steward_model::builders::{self, ResourceBuilder};
use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n_users = env("STEWARD_BENCH_USERS", 20_000);
    let n_groups = env("STEWARD_BENCH_GROUPS", 1_000).max(4);
    let per_user = env("STEWARD_BENCH_MEMBERSHIPS", 5);
    let crash_safe = std::env::var("STEWARD_BENCH_CRASH_SAFE").is_ok_and(|v| v == "1");
    let dir = match std::env::var_os("STEWARD_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let path = dir.path().join("expand.c1z");
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let groups: Vec<_> = (0..n_groups)
        .map(|g| {
            ResourceBuilder::new("group", &format!("group-{g:06}"), &format!("Group {g}"))
                .group()
                .build()
        })
        .collect();
    let ents: Vec<_> = groups
        .iter()
        .map(|g| builders::entitlement(g, "member", "Member", PurposeValue::Assignment, &[]))
        .collect();

    let t0 = Instant::now();
    let opts = WriterOptions {
        crash_safe,
        // `STEWARD_BENCH_DIRECT_TABLE=0`: SQLite inserts the grant rows instead of the direct table pages.
        direct_table: !std::env::var("STEWARD_BENCH_DIRECT_TABLE").is_ok_and(|v| v == "0"),
        ..Default::default()
    };
    let mut w = C1zWriter::create_with(&path, opts)?;
    w.begin_sync(SyncType::Full)?;
    w.put_resource_type(&ut)?;
    w.put_resource_type(&gt)?;
    for g in &groups {
        w.put_resource(g)?;
    }
    for e in &ents {
        w.put_entitlement(e)?;
    }
    let mut direct = 0u64;
    for i in 1..n_groups as usize {
        let parent = (i - 1) / 4;
        w.put_grant(&builders::expandable(
            builders::grant(&ents[parent], &groups[i]),
            &[&ents[i].id],
        ))?;
        direct += 1;
    }
    // A cycle among the last three groups.
    let k = n_groups as usize - 3;
    for j in 0..3 {
        let (inner, outer) = (k + j, k + (j + 1) % 3);
        w.put_grant(&builders::expandable(
            builders::grant(&ents[outer], &groups[inner]),
            &[&ents[inner].id],
        ))?;
        direct += 1;
    }
    for u in 0..n_users {
        let id = format!("{u:08}-0000-4000-8000-{u:012}");
        let user = ResourceBuilder::new("user", &id, &format!("User {u}"))
            .user(builders::user_trait(
                Some(&format!("user{u}@contoso.example")),
                true,
                &id,
            ))
            .build();
        w.put_resource(&user)?;
        for m in 0..per_user {
            let g = ((u.wrapping_mul(2_654_435_761) >> 7) + m * 7919) % n_groups;
            w.put_grant(&builders::grant(&ents[g as usize], &user))?;
            direct += 1;
        }
    }
    let put_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let rep = w.end_sync()?;
    let end_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let size = w.finish()?;
    let fin_s = t2.elapsed().as_secs_f64();
    let x = &rep.expansion;
    println!(
        "tenant: {n_users} users, {n_groups} groups, {per_user} memberships per user, {direct} direct grants; crash_safe={crash_safe}"
    );
    println!("put:      {put_s:8.2} s");
    println!(
        "end_sync: {end_s:8.2} s  (indexes {} ms, expansion {} ms)",
        rep.index_ms, rep.expand_ms
    );
    println!(
        "expansion: {} edges, {} cycles, {} grants created, {} updated: {:.0} created grants/s",
        x.edges,
        x.cycles,
        x.grants_created,
        x.grants_updated,
        x.grants_created as f64 / (rep.expand_ms.max(1) as f64 / 1000.0)
    );
    println!("finish:   {fin_s:8.2} s; file {size} bytes");
    Ok(())
}
