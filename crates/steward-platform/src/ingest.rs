//! Reading a `.c1z` into snapshot batches (on a blocking thread, while the store inserts).

use std::path::Path;

use steward_c1z::{C1zReader, EntitlementFilter, GrantFilter, PageRequest, ResourceFilter};
use steward_model::pb::{AppTrait, GroupTrait, Resource, UserTrait};
use steward_model::{profile, unpack_any};
use tokio::sync::mpsc;

use crate::model::Identity;
use crate::store::{Batch, EntitlementRow, GrantRow, ResourceRow};

const PAGE: usize = 10_000;

fn profile_json(r: &Resource) -> serde_json::Value {
    if let Some(p) = &r.profile {
        return profile::struct_to_json(p);
    }
    for a in &r.annotations {
        if let Ok(t) = unpack_any::<UserTrait>(a)
            && let Some(p) = &t.profile
        {
            return profile::struct_to_json(p);
        }
        if let Ok(t) = unpack_any::<AppTrait>(a)
            && let Some(p) = &t.profile
        {
            return profile::struct_to_json(p);
        }
        if let Ok(t) = unpack_any::<GroupTrait>(a)
            && let Some(p) = &t.profile
        {
            return profile::struct_to_json(p);
        }
    }
    serde_json::Value::Object(Default::default())
}

fn s(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k)
        .and_then(|x| x.as_str())
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
}

/// Reads the c1z at `path` and sends its rows; sends `Batch::Failed` on error. Blocking.
pub fn read_c1z(path: &Path, connector_id: &str, identity_source: bool, tx: &mpsc::Sender<Batch>) {
    if let Err(e) = read_inner(path, connector_id, identity_source, tx) {
        let _ = tx.blocking_send(Batch::Failed(e));
    }
}

fn read_inner(
    path: &Path,
    connector_id: &str,
    identity_source: bool,
    tx: &mpsc::Sender<Batch>,
) -> Result<(), String> {
    let send = |b: Batch| tx.blocking_send(b).map_err(|_| "ingest stopped".to_owned());
    let reader = C1zReader::open(path).map_err(|e| e.to_string())?;
    if reader.sync_id().is_none() {
        return Err("the file holds no finished sync".into());
    }
    let mut req = PageRequest::first(PAGE);
    loop {
        let page = reader
            .resources(&ResourceFilter::default(), &req)
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::with_capacity(page.items.len());
        let mut ids = Vec::new();
        for r in &page.items {
            let Some(id) = &r.id else { continue };
            let p = profile_json(r);
            let login = s(&p, "user_principal_name")
                .or_else(|| s(&p, "login"))
                .map(|x| x.to_lowercase());
            let email = s(&p, "email").or_else(|| s(&p, "mail")).map(|x| x.to_lowercase());
            if identity_source && (id.resource_type == "user" || id.resource_type == "managed_identity") {
                let enabled = p.get("account_enabled").and_then(|v| v.as_bool()).unwrap_or(true);
                ids.push(Identity {
                    id: id.resource.clone(),
                    kind: id.resource_type.clone(),
                    display_name: r.display_name.clone(),
                    upn: s(&p, "user_principal_name"),
                    email: s(&p, "email"),
                    department: s(&p, "department"),
                    job_title: s(&p, "job_title"),
                    manager_id: s(&p, "manager_id"),
                    status: if enabled { "enabled" } else { "disabled" }.into(),
                    connector_id: connector_id.to_owned(),
                });
            }
            rows.push(ResourceRow {
                resource_type: id.resource_type.clone(),
                resource_id: id.resource.clone(),
                display_name: r.display_name.clone(),
                parent: r
                    .parent_resource_id
                    .as_ref()
                    .map(|p| format!("{}:{}", p.resource_type, p.resource)),
                login,
                email,
                profile: p.to_string(),
            });
        }
        send(Batch::Resources(rows))?;
        if !ids.is_empty() {
            send(Batch::Identities(ids))?;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        req.token = page.next_page_token;
    }
    let mut req = PageRequest::first(PAGE);
    loop {
        let page = reader
            .entitlements(&EntitlementFilter::default(), &req)
            .map_err(|e| e.to_string())?;
        let rows = page
            .items
            .iter()
            .map(|e| {
                let rid = e.resource.as_ref().and_then(|r| r.id.clone()).unwrap_or_default();
                EntitlementRow {
                    id: e.id.clone(),
                    resource_type: rid.resource_type,
                    resource_id: rid.resource,
                    display_name: e.display_name.clone(),
                    slug: e.slug.clone(),
                }
            })
            .collect();
        send(Batch::Entitlements(rows))?;
        if page.next_page_token.is_empty() {
            break;
        }
        req.token = page.next_page_token;
    }
    let mut req = PageRequest::first(PAGE);
    loop {
        let page = reader
            .grants(&GrantFilter::default(), &req)
            .map_err(|e| e.to_string())?;
        let rows = page
            .items
            .into_iter()
            .map(|g| {
                let ent = g.entitlement.map(|e| e.id).unwrap_or_default();
                let pid = g.principal.and_then(|p| p.id).unwrap_or_default();
                let srcs = g.sources.map(|s| s.sources).unwrap_or_default();
                let direct = srcs.is_empty() || srcs.get(&ent).is_some_and(|x| x.is_direct);
                let via = if direct {
                    None
                } else {
                    srcs.iter()
                        .filter(|(k, _)| **k != ent)
                        .find(|(_, v)| v.is_direct)
                        .or_else(|| srcs.iter().find(|(k, _)| **k != ent))
                        .map(|(k, _)| k.clone())
                };
                GrantRow {
                    id: g.id,
                    entitlement_id: ent,
                    principal_type: pid.resource_type,
                    principal_id: pid.resource,
                    direct,
                    via,
                }
            })
            .collect();
        send(Batch::Grants(rows))?;
        if page.next_page_token.is_empty() {
            break;
        }
        req.token = page.next_page_token;
    }
    Ok(())
}
