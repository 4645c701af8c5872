//! Benchmark: replays a real sync into a new file, the way the sync engine writes it, and times the end of
//! the sync (`end_sync` + `finish`) — the part that comes after the connector's last page.
//!
//! Input: `STEWARD_BENCH_REPLAY=<file.c1z>` (e.g. the large Entra tenant synced by `steward entra`). Its
//! latest finished full sync is read back in row order: resource types, resources, entitlements, then the
//! direct grants (grants expansion created — those carrying `GrantImmutable` — are skipped, the others lose
//! their `sources` and get their `GrantExpandable` annotation back from the `expansion` column), and written
//! with the crash-safe working database the engine uses, committing with a checkpoint every
//! `STEWARD_BENCH_CHECKPOINT_ROWS` rows (default 100,000). Prints wall and CPU seconds of each phase, the
//! writer's `index_ms`/`expand_ms`, the expansion counts and the peak RSS of the end phase (`VmHWM`, reset
//! before `end_sync`). `STEWARD_BENCH_ZSTD_LEVEL` / `STEWARD_BENCH_ZSTD_WORKERS` / `STEWARD_BENCH_ZSTD_JOB_MIB`
//! change the compression,
//! `STEWARD_BENCH_INDEX_CACHE_MIB` the page cache (and index sorter) size of `end_sync`.
//!
//! Run: `STEWARD_BENCH_REPLAY=large.c1z cargo bench -p steward-c1z --bench replay`.

use std::time::Instant;

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use prost::Message;
use rusqlite::Connection;
use steward_c1z::{C1zWriter, SyncType, WriterOptions, envelope};
use steward_model::{
    AnnotationsExt, Entitlement, Grant, GrantExpandable, GrantImmutable, Resource, ResourceType,
};

mod common;
use common::{cpu_s, status_kib};

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(input) = std::env::var_os("STEWARD_BENCH_REPLAY") else {
        eprintln!("replay: set STEWARD_BENCH_REPLAY to a .c1z file (skipped)");
        return Ok(());
    };
    // `STEWARD_LOG=steward_c1z=debug` shows the writer's timings per index and step.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("STEWARD_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let every: u64 = env_num("STEWARD_BENCH_CHECKPOINT_ROWS").unwrap_or(100_000);
    let dir = match std::env::var_os("STEWARD_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let src_db = dir.path().join("source.db");
    envelope::read_c1z(std::path::Path::new(&input), &src_db, u64::MAX >> 1)?;
    let src = Connection::open(&src_db)?;
    let sync_id: String = src.query_row(
        "SELECT sync_id FROM v1_sync_runs WHERE ended_at IS NOT NULL AND sync_type = 'full' ORDER BY ended_at DESC LIMIT 1",
        [],
        |r| r.get(0),
    )?;

    let mut wopts = WriterOptions {
        auto_commit_rows: None,
        crash_safe: true,
        ..Default::default()
    };
    if let Some(level) = env_num("STEWARD_BENCH_ZSTD_LEVEL") {
        wopts.compress.level = level;
    }
    if let Some(mib) = env_num::<i64>("STEWARD_BENCH_INDEX_CACHE_MIB") {
        wopts.index_cache_kib = mib * 1024;
    }
    if let Some(job) = env_num::<u32>("STEWARD_BENCH_ZSTD_JOB_MIB") {
        wopts.compress.job_size = job << 20;
    }
    if let Some(workers) = env_num("STEWARD_BENCH_ZSTD_WORKERS") {
        wopts.compress.workers = workers;
    }
    let path = dir.path().join("replay.c1z");
    let mut w = C1zWriter::create_with(&path, wopts)?;
    w.begin_sync(SyncType::Full)?;
    let (t0, c0) = (Instant::now(), cpu_s());
    let mut rows = 0u64;
    let mut tick = |w: &mut C1zWriter| -> Result<(), steward_c1z::C1zError> {
        rows += 1;
        if rows.is_multiple_of(every) {
            w.checkpoint(&rows.to_string())?;
        }
        Ok(())
    };
    let (mut n_rt, mut n_res, mut n_ent, mut n_grants, mut n_skipped) = (0u64, 0u64, 0u64, 0u64, 0u64);
    {
        let mut st = src.prepare("SELECT data FROM v1_resource_types WHERE sync_id = ?1 ORDER BY id")?;
        let mut q = st.query([&sync_id])?;
        while let Some(r) = q.next()? {
            w.put_resource_type(&ResourceType::decode(r.get_ref(0)?.as_blob()?)?)?;
            n_rt += 1;
            tick(&mut w)?;
        }
    }
    {
        let mut st = src.prepare("SELECT data FROM v1_resources WHERE sync_id = ?1 ORDER BY id")?;
        let mut q = st.query([&sync_id])?;
        while let Some(r) = q.next()? {
            w.put_resource(&Resource::decode(r.get_ref(0)?.as_blob()?)?)?;
            n_res += 1;
            tick(&mut w)?;
        }
    }
    {
        let mut st = src.prepare("SELECT data FROM v1_entitlements WHERE sync_id = ?1 ORDER BY id")?;
        let mut q = st.query([&sync_id])?;
        while let Some(r) = q.next()? {
            w.put_entitlement(&Entitlement::decode(r.get_ref(0)?.as_blob()?)?)?;
            n_ent += 1;
            tick(&mut w)?;
        }
    }
    {
        let mut st = src.prepare("SELECT data, expansion FROM v1_grants WHERE sync_id = ?1 ORDER BY id")?;
        let mut q = st.query([&sync_id])?;
        while let Some(r) = q.next()? {
            let mut g = Grant::decode(r.get_ref(0)?.as_blob()?)?;
            if g.annotations.contains::<GrantImmutable>() {
                n_skipped += 1;
                continue;
            }
            g.sources = None;
            if let Some(exp) = r.get_ref(1)?.as_blob_or_null()? {
                g.annotations.push_msg(&GrantExpandable::decode(exp)?);
            }
            w.put_grant(&g)?;
            n_grants += 1;
            tick(&mut w)?;
        }
    }
    w.checkpoint("last page")?;
    let (put_s, put_cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
    drop(src);
    std::fs::remove_file(&src_db)?;
    println!(
        "replayed sync {sync_id}: {n_rt} resource types, {n_res} resources, {n_ent} entitlements, {n_grants} direct grants ({n_skipped} expanded skipped)"
    );
    println!(
        "put:      {put_s:7.2} s, CPU {put_cpu:6.2} s, peak RSS so far {} MiB",
        status_kib("VmHWM:") / 1024
    );
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss0 = status_kib("VmRSS:");
    let (t1, c1) = (Instant::now(), cpu_s());
    let rep = w.end_sync()?;
    let (end_s, end_cpu) = (t1.elapsed().as_secs_f64(), cpu_s() - c1);
    let hwm_end = status_kib("VmHWM:");
    let (t2, c2) = (Instant::now(), cpu_s());
    let size = w.finish()?;
    let (fin_s, fin_cpu) = (t2.elapsed().as_secs_f64(), cpu_s() - c2);
    let x = &rep.expansion;
    println!(
        "end_sync: {end_s:7.2} s, CPU {end_cpu:6.2} s (index_ms {}, expand_ms {}); {} edges, {} grants created, {} updated",
        rep.index_ms, rep.expand_ms, x.edges, x.grants_created, x.grants_updated
    );
    println!("finish:   {fin_s:7.2} s, CPU {fin_cpu:6.2} s; file {size} bytes");
    println!(
        "after the last page: {:.2} s; peak RSS of end_sync {} MiB, of end_sync + finish {} MiB (RSS at its start {} MiB)",
        end_s + fin_s,
        hwm_end / 1024,
        status_kib("VmHWM:") / 1024,
        rss0 / 1024
    );
    Ok(())
}
