//! `steward inspect resource-types|resources|entitlements|grants|stats|syncs|access -f FILE [--json]`:
//! read a .c1z and print its contents as console tables (like the `baton` CLI) or JSON lines.
//!
//! Rows are read a page at a time and printed as they come, so memory stays flat for large files. The
//! rows shown are the reader's default view — the latest finished full sync overlaid with the finished
//! partial syncs that ended after it — unless `--sync-id` names one sync. `syncs` marks as selected every
//! sync the shown rows come from (the base and each overlaid partial sync).

use std::io::Write;

use anyhow::bail;
use serde_json::{Value, json};
use steward_c1z::reader::AccessEntry;
use steward_c1z::{C1zReader, EntitlementFilter, GrantFilter, PageRequest, ResourceFilter};
use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};
use steward_model::profile::struct_to_json;
use steward_model::{Entitlement, Grant, Resource, ResourceId, ResourceType};

/// What `inspect` shows.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum What {
    /// Resource types.
    ResourceTypes,
    /// Resources (filter with --resource-type).
    Resources,
    /// Entitlements (filter with --resource-type and --resource).
    Entitlements,
    /// Grants (filter with --entitlement, or --resource-type and --resource for a principal).
    Grants,
    /// Row counts.
    Stats,
    /// Sync runs in the file.
    Syncs,
    /// Everything one principal (--resource-type, --resource) holds, and through which path.
    Access,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// What to show.
    #[arg(value_enum)]
    pub what: What,
    /// The sync file.
    #[arg(short = 'f', long = "file", default_value = "sync.c1z")]
    pub file: std::path::PathBuf,
    /// Machine-readable output: one JSON object per line (`stats` and `syncs`: one object).
    #[arg(long)]
    pub json: bool,
    /// Read this sync instead of the latest finished full one.
    #[arg(long)]
    pub sync_id: Option<String>,
    /// Resource type filter (or the principal's type for `access` and `grants`).
    #[arg(short = 't', long = "resource-type")]
    pub resource_type: Option<String>,
    /// Resource id filter (or the principal's id for `access` and `grants`).
    #[arg(short = 'r', long = "resource")]
    pub resource: Option<String>,
    /// Entitlement id filter for `grants`.
    #[arg(short = 'e', long = "entitlement")]
    pub entitlement: Option<String>,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
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

fn run_inner(args: InspectArgs) -> anyhow::Result<()> {
    let mut reader = C1zReader::open(&args.file)?;
    if let Some(id) = &args.sync_id {
        reader.select_sync(id)?;
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    match args.what {
        What::Syncs => syncs(&reader, args.json, &mut out),
        What::Stats => stats(&reader, args.json, &mut out),
        What::ResourceTypes => {
            let mut t = Table::new(args.json, &["ID", "Display Name", "Traits"]);
            paged(
                |p| reader.resource_types(p),
                |rt| t.row(&mut out, rt_row(&rt), rt_json(&rt)),
            )?;
            t.finish(&mut out)
        }
        What::Resources => {
            let f = ResourceFilter {
                resource_type: args.resource_type.clone(),
                parent: None,
            };
            let mut t = Table::new(args.json, &["ID", "Display Name", "Resource Type", "Parent"]);
            paged(
                |p| reader.resources(&f, p),
                |r| t.row(&mut out, resource_row(&r), resource_json(&r)),
            )?;
            t.finish(&mut out)
        }
        What::Entitlements => {
            let resource = match (&args.resource_type, &args.resource) {
                (Some(t), Some(r)) => Some(ResourceId::new(t, r)),
                (None, None) => None,
                _ => bail!("give both --resource-type and --resource to filter entitlements by resource"),
            };
            let f = EntitlementFilter { resource };
            let mut t = Table::new(args.json, &["ID", "Display Name", "Resource", "Purpose", "Slug"]);
            paged(
                |p| reader.entitlements(&f, p),
                |e| t.row(&mut out, ent_row(&e), ent_json(&e)),
            )?;
            t.finish(&mut out)
        }
        What::Grants => {
            let principal = match (&args.resource_type, &args.resource) {
                (Some(t), Some(r)) => Some(ResourceId::new(t, r)),
                (None, None) => None,
                _ => bail!("give both --resource-type and --resource to filter grants by principal"),
            };
            let f = GrantFilter {
                entitlement_id: args.entitlement.clone(),
                principal,
                resource: None,
            };
            let mut t = Table::new(
                args.json,
                &["ID", "Entitlement", "Principal", "Principal Name", "Sources"],
            );
            paged(
                |p| reader.grants(&f, p),
                |g| t.row(&mut out, grant_row(&g), grant_json(&g)),
            )?;
            t.finish(&mut out)
        }
        What::Access => {
            let (Some(ty), Some(id)) = (&args.resource_type, &args.resource) else {
                bail!(
                    "`inspect access` needs the principal: --resource-type TYPE --resource ID (e.g. -t user -r 42)"
                );
            };
            let pid = ResourceId::new(ty, id);
            if reader.resource(&pid)?.is_none() {
                bail!(
                    "principal {pid} is not in {}; `steward inspect resources -f FILE` lists them",
                    args.file.display()
                );
            }
            let mut t = Table::new(args.json, &["Entitlement", "Resource", "Display Name", "Via"]);
            for a in reader.access(&pid)? {
                t.row(&mut out, access_row(&a), access_json(&a))?;
            }
            t.finish(&mut out)
        }
    }
}

/// Reads every page of a listing and hands each item to `f`.
fn paged<T>(
    mut list: impl FnMut(&PageRequest) -> steward_c1z::Result<steward_c1z::Page<T>>,
    mut f: impl FnMut(T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut req = PageRequest::first(1000);
    loop {
        let page = list(&req)?;
        for item in page.items {
            f(item)?;
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        req.token = page.next_page_token;
    }
}

/// A console table printed in chunks (column widths from each chunk), or JSON lines.
struct Table {
    json: bool,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    printed: bool,
}

impl Table {
    const CHUNK: usize = 500;

    fn new(json: bool, header: &[&str]) -> Self {
        Self {
            json,
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            printed: false,
        }
    }

    fn row(&mut self, out: &mut impl Write, cells: Vec<String>, json: Value) -> anyhow::Result<()> {
        if self.json {
            writeln!(out, "{json}")?;
            return Ok(());
        }
        self.rows.push(cells);
        if self.rows.len() >= Self::CHUNK {
            self.flush(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut impl Write) -> anyhow::Result<()> {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let s: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect();
            s.join("  ").trim_end().to_owned()
        };
        if !self.printed {
            writeln!(out, "{}", line(&self.header))?;
            let rule: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
            writeln!(out, "{}", rule.join("  "))?;
            self.printed = true;
        }
        for r in self.rows.drain(..) {
            writeln!(out, "{}", line(&r))?;
        }
        Ok(())
    }

    fn finish(mut self, out: &mut impl Write) -> anyhow::Result<()> {
        if !self.json {
            self.flush(out)?;
        }
        Ok(())
    }
}

fn rid(r: &Option<ResourceId>) -> String {
    r.as_ref().map(|r| r.to_string()).unwrap_or_default()
}

fn trait_name(t: i32) -> String {
    Trait::try_from(t)
        .map(|t| t.as_str_name().trim_start_matches("TRAIT_").to_lowercase())
        .unwrap_or_else(|_| t.to_string())
}

fn purpose_name(p: i32) -> String {
    PurposeValue::try_from(p)
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("PURPOSE_VALUE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| p.to_string())
}

fn annotation_types(a: &[steward_model::Any]) -> Vec<String> {
    a.iter()
        .map(|a| a.type_url.rsplit('/').next().unwrap_or_default().to_owned())
        .collect()
}

fn rt_row(rt: &ResourceType) -> Vec<String> {
    vec![
        rt.id.clone(),
        rt.display_name.clone(),
        rt.traits
            .iter()
            .map(|t| trait_name(*t))
            .collect::<Vec<_>>()
            .join(","),
    ]
}

fn rt_json(rt: &ResourceType) -> Value {
    json!({
        "id": rt.id, "displayName": rt.display_name, "description": rt.description,
        "traits": rt.traits.iter().map(|t| trait_name(*t)).collect::<Vec<_>>(),
        "annotations": annotation_types(&rt.annotations),
    })
}

fn resource_row(r: &Resource) -> Vec<String> {
    let id = r.id.clone().unwrap_or_default();
    vec![
        id.to_string(),
        r.display_name.clone(),
        id.resource_type,
        rid(&r.parent_resource_id),
    ]
}

fn resource_json(r: &Resource) -> Value {
    json!({
        "id": rid(&r.id), "displayName": r.display_name, "description": r.description,
        "parent": r.parent_resource_id.as_ref().map(|p| p.to_string()),
        "profile": r.profile.as_ref().map(struct_to_json),
        "annotations": annotation_types(&r.annotations),
    })
}

fn ent_row(e: &Entitlement) -> Vec<String> {
    let res = e.resource.as_ref().map(|r| rid(&r.id)).unwrap_or_default();
    vec![
        e.id.clone(),
        e.display_name.clone(),
        res,
        purpose_name(e.purpose),
        e.slug.clone(),
    ]
}

fn ent_json(e: &Entitlement) -> Value {
    json!({
        "id": e.id, "displayName": e.display_name, "description": e.description, "slug": e.slug,
        "resource": e.resource.as_ref().map(|r| rid(&r.id)), "purpose": purpose_name(e.purpose),
        "grantableTo": e.grantable_to.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        "annotations": annotation_types(&e.annotations),
    })
}

fn sources_text(g: &Grant) -> String {
    match &g.sources {
        Some(s) if !s.sources.is_empty() => s
            .sources
            .iter()
            .map(|(k, v)| {
                if v.is_direct {
                    format!("{k} (direct)")
                } else {
                    k.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "direct".into(),
    }
}

fn grant_row(g: &Grant) -> Vec<String> {
    let p = g.principal.as_ref();
    vec![
        g.id.clone(),
        g.entitlement.as_ref().map(|e| e.id.clone()).unwrap_or_default(),
        p.map(|p| rid(&p.id)).unwrap_or_default(),
        p.map(|p| p.display_name.clone()).unwrap_or_default(),
        sources_text(g),
    ]
}

fn grant_json(g: &Grant) -> Value {
    json!({
        "id": g.id,
        "entitlement": g.entitlement.as_ref().map(|e| e.id.clone()),
        "principal": g.principal.as_ref().map(|p| rid(&p.id)),
        "sources": g.sources.as_ref().map(|s| s.sources.iter().map(|(k, v)| (k.clone(), json!({"isDirect": v.is_direct}))).collect::<serde_json::Map<_, _>>()),
        "annotations": annotation_types(&g.annotations),
    })
}

fn access_row(a: &AccessEntry) -> Vec<String> {
    let e = a.grant.entitlement.as_ref();
    let via = if a.path.len() <= 1 {
        "direct".to_owned()
    } else {
        a.path[..a.path.len() - 1].join(" → ")
    };
    vec![
        e.map(|e| e.id.clone()).unwrap_or_default(),
        e.and_then(|e| e.resource.as_ref())
            .map(|r| rid(&r.id))
            .unwrap_or_default(),
        e.map(|e| e.display_name.clone()).unwrap_or_default(),
        via,
    ]
}

fn access_json(a: &AccessEntry) -> Value {
    json!({ "grant": grant_json(&a.grant), "path": a.path })
}

/// Whether the rows `r` shows come (partly) from `sync_id`: the base sync or one laid over it.
fn in_view(r: &C1zReader, sync_id: &str) -> bool {
    r.sync_id() == Some(sync_id) || r.overlay_sync_ids().iter().any(|s| s == sync_id)
}

fn syncs(r: &C1zReader, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let runs = r.sync_runs()?;
    if json {
        let v: Vec<Value> = runs
            .iter()
            .map(|s| {
                json!({"id": s.sync_id, "type": s.sync_type, "startedAt": s.started_at, "endedAt": s.ended_at,
                       "syncToken": s.sync_token, "parentSyncId": s.parent_sync_id, "selected": in_view(r, &s.sync_id)})
            })
            .collect();
        writeln!(out, "{}", json!({ "syncs": v }))?;
        return Ok(());
    }
    let mut t = Table::new(false, &["ID", "Type", "Started", "Ended", "Selected"]);
    for s in &runs {
        let sel = if in_view(r, &s.sync_id) { "*" } else { "" };
        let cells = vec![
            s.sync_id.clone(),
            s.sync_type.clone(),
            s.started_at.clone(),
            s.ended_at.clone().unwrap_or_else(|| "(unfinished)".into()),
            sel.into(),
        ];
        t.row(out, cells, Value::Null)?;
    }
    t.finish(out)
}

fn stats(r: &C1zReader, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let s = r.stats()?;
    if json {
        writeln!(
            out,
            "{}",
            json!({"syncId": r.sync_id(), "resourceTypes": s.resource_types, "resources": s.resources_by_type,
                   "entitlements": s.entitlements, "grants": s.grants})
        )?;
        return Ok(());
    }
    let mut t = Table::new(false, &["Type", "Count"]);
    t.row(
        out,
        vec!["resource_types".into(), s.resource_types.to_string()],
        Value::Null,
    )?;
    for (ty, n) in &s.resources_by_type {
        t.row(out, vec![ty.clone(), n.to_string()], Value::Null)?;
    }
    t.row(
        out,
        vec!["entitlements".into(), s.entitlements.to_string()],
        Value::Null,
    )?;
    t.row(out, vec!["grants".into(), s.grants.to_string()], Value::Null)?;
    t.finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_c1z::{C1zWriter, SyncType};
    use steward_model::builders::{self, ResourceBuilder};

    /// Writes one sync of `kind` holding a user type and one user.
    fn add_sync(path: &std::path::Path, kind: SyncType) -> String {
        let mut w = C1zWriter::open(path).unwrap();
        let id = w.begin_sync(kind).unwrap();
        w.put_resource_type(&builders::resource_type("user", "User", &[]))
            .unwrap();
        w.put_resource(&ResourceBuilder::new("user", "u1", "U1").build())
            .unwrap();
        w.end_sync().unwrap();
        w.finish().unwrap();
        id
    }

    fn selected(r: &C1zReader) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        syncs(r, true, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        v["syncs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_owned(),
                    s["selected"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn syncs_marks_every_sync_of_the_default_view() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.c1z");
        let old_full = add_sync(&p, SyncType::Full);
        let old_partial = add_sync(&p, SyncType::Partial);
        let full = add_sync(&p, SyncType::Full);
        let p1 = add_sync(&p, SyncType::Partial);
        let upserts = add_sync(&p, SyncType::PartialUpserts);
        let p2 = add_sync(&p, SyncType::Partial);

        let mut r = C1zReader::open(&p).unwrap();
        assert_eq!(r.sync_id(), Some(full.as_str()));
        let expect = |sel: &[&String]| -> Vec<(String, bool)> {
            [&old_full, &old_partial, &full, &p1, &upserts, &p2]
                .iter()
                .map(|id| ((*id).clone(), sel.contains(id)))
                .collect()
        };
        // The newest full sync, and the partial syncs after it; not the older ones, not partial_upserts.
        assert_eq!(selected(&r), expect(&[&full, &p1, &p2]));

        let mut table = Vec::new();
        syncs(&r, false, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        for (id, sel) in expect(&[&full, &p1, &p2]) {
            let line = table.lines().find(|l| l.contains(&id)).unwrap();
            assert_eq!(line.trim_end().ends_with('*'), sel, "{line}");
        }

        // An explicit sync is shown alone.
        r.select_sync(&p1).unwrap();
        assert_eq!(selected(&r), expect(&[&p1]));
    }
}
