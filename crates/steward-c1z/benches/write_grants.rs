//! Benchmark: write N grants (env `STEWARD_BENCH_GRANTS`, default 1,000,000) into a c1z, then read them back.
//!
//! Tenant shape: N/1000 users (with a profile and UserTrait), 1000 groups with a `member` entitlement, every
//! user a direct member of every group, plus a chain of 10 nested groups (expandable grants) so that the
//! end of the sync also expands. Prints grants/s of the put phase and of the whole write (put + indexes +
//! expansion + compression), the CPU seconds of each phase (all threads; far less sensitive than wall time
//! to other processes on the machine), file size vs raw protobuf size, peak RSS of writing and of reading.
//! Runs on jemalloc, the allocator of the `steward` binary.
//!
//! `STEWARD_BENCH_SHAPE=baton` embeds only the principal's id in each grant (what baton-sdk's `NewGrant`
//! writes); the default `full` embeds the whole principal (profile, UserTrait), as the spec prefers.
//!
//! Run: `cargo bench -p steward-c1z --bench write_grants` (set `STEWARD_BENCH_DIR` to choose the disk;
//! `STEWARD_BENCH_ZSTD_LEVEL` to try another zstd level; `STEWARD_BENCH_CRASH_SAFE=1` for the crash-safe
//! journalled working database the sync engine uses; `STEWARD_BENCH_NO_READ=1` to skip the read-back;
//! `STEWARD_BENCH_TRACK_IDS` and `STEWARD_BENCH_SORT_MIB` for the writer's `track_grant_ids` and
//! `sort_run_kib`; `STEWARD_BENCH_OUT` to keep the file; `STEWARD_BENCH_DIRECT_TABLE=0` to have SQLite insert the grant rows).

use std::time::Instant;

// The allocator of the `steward` binary, which runs every production writer (SQLite's page cache and sorter
// allocate a lot; glibc's malloc spent ~15 % of this benchmark's samples consolidating free chunks).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use prost::Message;
use steward_c1z::{C1zReader, C1zWriter, GrantFilter, SyncType, WriterOptions};
use steward_model::builders::{self, ResourceBuilder};
use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};
use steward_model::profile;

mod common;
use common::{cpu_s, status_kib};

fn vm_hwm_kib() -> u64 {
    status_kib("VmHWM:")
}

fn vm_rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn reset_hwm() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `STEWARD_LOG=steward_c1z=debug` shows the writer's phases (e.g. the index build's pass and pages).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("STEWARD_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let n: u64 = std::env::var("STEWARD_BENCH_GRANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = match std::env::var_os("STEWARD_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    // `STEWARD_BENCH_OUT=FILE` keeps the c1z there (e.g. for `baton`, `steward inspect` or `zstd` trials).
    let path = match std::env::var_os("STEWARD_BENCH_OUT") {
        Some(p) => std::path::PathBuf::from(p),
        None => dir.path().join("bench.c1z"),
    };
    let baton_shape = std::env::var("STEWARD_BENCH_SHAPE").is_ok_and(|v| v == "baton");
    let n_groups: u64 = 1000;
    let n_users = n.div_ceil(n_groups);

    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let t0 = Instant::now();
    let c0 = cpu_s();
    let mut wopts = WriterOptions::default();
    if let Some(mib) = std::env::var("STEWARD_BENCH_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        wopts.cache_kib = mib * 1024;
    }
    if let Some(level) = std::env::var("STEWARD_BENCH_ZSTD_LEVEL")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        wopts.compress.level = level;
    }
    wopts.crash_safe = std::env::var("STEWARD_BENCH_CRASH_SAFE").is_ok_and(|v| v == "1");
    if let Some(ids) = std::env::var("STEWARD_BENCH_TRACK_IDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        wopts.track_grant_ids = ids;
    }
    if let Some(mib) = std::env::var("STEWARD_BENCH_SORT_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        wopts.sort_run_kib = mib * 1024;
    }
    if std::env::var("STEWARD_BENCH_DIRECT_TABLE").is_ok_and(|v| v == "0") {
        wopts.direct_table = false;
    }
    // `STEWARD_BENCH_LEAF_PIECES=0`: `finish` reads the grant table's leaves back instead.
    if std::env::var("STEWARD_BENCH_LEAF_PIECES").is_ok_and(|v| v == "0") {
        wopts.compress_leaves_early = false;
    }
    let mut w = C1zWriter::create_with(&path, wopts)?;
    w.begin_sync(SyncType::Full)?;
    w.put_resource_type(&ut)?;
    w.put_resource_type(&gt)?;
    let mut raw = (ut.encoded_len() + gt.encoded_len()) as u64;
    let user = |i: u64| {
        let id = format!("{i:08}-0000-4000-8000-{i:012}");
        ResourceBuilder::new("user", &id, &format!("User Number {i}"))
            .profile(profile::strings([
                ("first_name", "User".to_owned()),
                ("last_name", format!("Number {i}")),
                ("user_id", id.clone()),
            ]))
            .user(builders::user_trait(
                Some(&format!("user{i}@contoso.example")),
                true,
                &format!("user{i}@contoso.example"),
            ))
            .build()
    };
    let groups: Vec<_> = (0..n_groups)
        .map(|g| {
            ResourceBuilder::new("group", &format!("group-{g:06}"), &format!("Group {g}"))
                .group()
                .build()
        })
        .collect();
    let ents: Vec<_> = groups
        .iter()
        .map(|g| {
            builders::entitlement(
                g,
                "member",
                "Member",
                PurposeValue::Assignment,
                &[ut.clone(), gt.clone()],
            )
        })
        .collect();
    for g in &groups {
        w.put_resource(g)?;
        raw += g.encoded_len() as u64;
    }
    for e in &ents {
        w.put_entitlement(e)?;
        raw += e.encoded_len() as u64;
    }
    // Nested chain: group k is a member of group k+1 for k < 10.
    for k in 0..10usize {
        let g = builders::expandable(builders::grant(&ents[k + 1], &groups[k]), &[&ents[k].id]);
        raw += g.encoded_len() as u64;
        w.put_grant(&g)?;
    }
    // Grants embed the full entitlement and principal. To time the writer rather than cloning, one grant
    // value is reused: its entitlement is moved in and out of `slots` instead of cloned.
    let mut written = 10u64;
    let mut slots: Vec<Option<_>> = ents.iter().cloned().map(Some).collect();
    // The raw size of each slot's grant, measured for a user and reused for the next users whose id and
    // encoded resource have the same lengths (their grants then encode to the same lengths): the
    // benchmark times the writer, not its own bookkeeping.
    let mut slot_len: Vec<u64> = Vec::new();
    let mut measured = None;
    'outer: for u in 0..n_users {
        let r = user(u);
        w.put_resource(&r)?;
        let r_len = r.encoded_len();
        raw += r_len as u64;
        let pid = r.id.clone().unwrap_or_default();
        let measure = measured != Some((pid.resource.len(), r_len));
        if measure {
            measured = Some((pid.resource.len(), r_len));
            slot_len.clear();
        }
        let mut g = builders::grant(&ents[0], &r);
        if baton_shape {
            g.principal = Some(steward_model::Resource {
                id: r.id.clone(),
                ..Default::default()
            });
        }
        for (k, slot) in slots.iter_mut().enumerate() {
            if written >= n {
                break 'outer;
            }
            g.entitlement = slot.take();
            let eid = g.entitlement.as_ref().map(|e| e.id.as_str()).unwrap_or_default();
            g.id = steward_model::ids::grant_id(eid, &pid.resource_type, &pid.resource);
            if measure {
                slot_len.push(g.encoded_len() as u64);
            }
            raw += slot_len[k];
            w.put_grant(&g)?;
            *slot = g.entitlement.take();
            written += 1;
        }
    }
    let put_s = t0.elapsed().as_secs_f64();
    let c1 = cpu_s();
    let put_hwm = vm_hwm_kib();
    let t1 = Instant::now();
    let rep = w.end_sync()?;
    let end_s = t1.elapsed().as_secs_f64();
    let c2 = cpu_s();
    let end_hwm = vm_hwm_kib();
    let t2 = Instant::now();
    let size = w.finish()?;
    let fin_s = t2.elapsed().as_secs_f64();
    let total_s = t0.elapsed().as_secs_f64();
    let c3 = cpu_s();
    let write_hwm = vm_hwm_kib();

    println!(
        "grants written: {written} ({n_users} users, {n_groups} groups; principal embedded {})",
        if baton_shape { "as id only" } else { "in full" }
    );
    println!(
        "put:      {put_s:8.2} s  {:>10.0} grants/s  (CPU {:.2} s)",
        written as f64 / put_s,
        c1 - c0
    );
    println!(
        "end_sync: {end_s:8.2} s  (CPU {:.2} s; indexes {} ms (keys of {} grants gathered during put), expansion {} ms: {} grants created, {} updated)",
        c2 - c1,
        rep.index_ms,
        rep.index_keys_gathered,
        rep.expand_ms,
        rep.expansion.grants_created,
        rep.expansion.grants_updated
    );
    println!(
        "finish:   {fin_s:8.2} s  (CPU {:.2} s; zstd + fsync + rename)",
        c3 - c2
    );
    println!(
        "total:    {total_s:8.2} s  {:>10.0} grants/s  (CPU {:.2} s)",
        written as f64 / total_s,
        c3 - c0
    );
    println!(
        "file: {} bytes; raw protobuf: {} bytes; ratio {:.3}",
        size,
        raw,
        size as f64 / raw as f64
    );
    println!(
        "peak RSS writing: {} MiB (after put {} MiB, after end_sync {} MiB; RSS now {} MiB)",
        write_hwm / 1024,
        put_hwm / 1024,
        end_hwm / 1024,
        vm_rss_kib() / 1024
    );

    // `STEWARD_BENCH_NO_READ=1`: only the write (a 10 M read-back takes minutes and another 6 GB of disk).
    if std::env::var("STEWARD_BENCH_NO_READ").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    reset_hwm();
    let t3 = Instant::now();
    // No decoded-size cap here: the full shape at 10M grants exceeds the 10 GiB that Baton readers accept.
    let opts = steward_c1z::reader::OpenOptions {
        max_decoded: u64::MAX / 2,
        temp_dir: None,
    };
    let r = C1zReader::open_with(&path, &opts)?;
    let open_s = t3.elapsed().as_secs_f64();
    let t4 = Instant::now();
    let mut n_read = 0u64;
    let mut bytes = 0u64;
    r.for_each_grant(&GrantFilter::default(), |g| {
        n_read += 1;
        bytes += g.id.len() as u64;
        Ok(())
    })?;
    let read_s = t4.elapsed().as_secs_f64();
    println!(
        "read: open (unpack) {open_s:.2} s; decode all {n_read} grants {read_s:.2} s ({:.0} grants/s)",
        n_read as f64 / read_s
    );
    println!("peak RSS reading: {} MiB", vm_hwm_kib() / 1024);
    Ok(())
}
