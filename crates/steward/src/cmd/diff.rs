//! `steward diff OLD NEW [--json]`: compare the latest finished full syncs of two .c1z files — resource
//! types, resources, entitlements and grants added, removed and changed. Given the same file twice, it
//! compares that file's latest finished full sync with the one before it (as `baton diff` does).

use std::io::Write;

use anyhow::bail;
use serde_json::json;
use steward_c1z::diff::diff_syncs_in;
use steward_c1z::{C1zReader, DiffSet, SyncType, diff_syncs};

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The older sync file.
    pub old: std::path::PathBuf,
    /// The newer sync file.
    pub new: std::path::PathBuf,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    pub json: bool,
    /// Print at most this many ids per category in the console output.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    // A closed pipe (`| head`) is not an error.
    match run_inner(args) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn run_inner(args: DiffArgs) -> anyhow::Result<()> {
    let open = |p: &std::path::Path| C1zReader::open(p);
    let d = if args.old == args.new {
        let r = open(&args.old)?;
        let mut full: Vec<_> = r
            .sync_runs()?
            .into_iter()
            .filter(|s| s.ended_at.is_some() && SyncType::parse(&s.sync_type) == Some(SyncType::Full))
            .collect();
        full.sort_by(|a, b| a.ended_at.cmp(&b.ended_at));
        if full.len() < 2 {
            bail!(
                "{} holds {} finished full sync(s); diffing one file needs two",
                args.old.display(),
                full.len()
            );
        }
        diff_syncs_in(&r, &full[full.len() - 2].sync_id, &full[full.len() - 1].sync_id)?
    } else {
        diff_syncs(&open(&args.old)?, &open(&args.new)?)?
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.json {
        let set = |s: &DiffSet| json!({"added": s.added, "removed": s.removed, "changed": s.changed});
        writeln!(
            out,
            "{}",
            json!({
                "oldSyncId": d.old_sync_id, "newSyncId": d.new_sync_id,
                "resourceTypes": set(&d.resource_types), "resources": set(&d.resources),
                "entitlements": set(&d.entitlements), "grants": set(&d.grants),
            })
        )?;
        return Ok(());
    }
    writeln!(out, "old sync {}  →  new sync {}", d.old_sync_id, d.new_sync_id)?;
    writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>10}",
        "", "added", "removed", "changed"
    )?;
    for (name, s) in [
        ("resource types", &d.resource_types),
        ("resources", &d.resources),
        ("entitlements", &d.entitlements),
        ("grants", &d.grants),
    ] {
        writeln!(
            out,
            "{name:<16} {:>10} {:>10} {:>10}",
            s.added.len(),
            s.removed.len(),
            s.changed.len()
        )?;
    }
    for (name, s) in [
        ("resource type", &d.resource_types),
        ("resource", &d.resources),
        ("entitlement", &d.entitlements),
        ("grant", &d.grants),
    ] {
        for (sign, ids) in [("+", &s.added), ("-", &s.removed), ("~", &s.changed)] {
            for id in ids.iter().take(args.limit) {
                writeln!(out, "{sign} {name} {id}")?;
            }
            if ids.len() > args.limit {
                writeln!(out, "  … and {} more ({name}, {sign})", ids.len() - args.limit)?;
            }
        }
    }
    if d.is_empty() {
        writeln!(out, "no differences")?;
    }
    Ok(())
}
