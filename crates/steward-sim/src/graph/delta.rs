//! Delta queries for users and groups.
//!
//! A first round (no token) pages through every object — for groups with `members` selected, each
//! group's members arrive as `members@delta`, a large group spread over several pages — and ends with an
//! `@odata.deltaLink` holding the change-log position at which the round started. A later round returns
//! each object changed since then once, with the net member additions and removals (`@removed`). Tokens
//! older than seven days answer 410 `syncStateNotFound`, as Graph does, so clients must start over.
//!
//! Also as Graph: `$deltatoken=latest` answers no objects and a delta link at the current position (to
//! start tracking without reading everything); with `owners` selected, owner changes arrive as
//! `owners@delta` like members; an object deleted through the API is reported `@removed` with reason
//! `changed` (it went to deleted items), one no longer known with reason `deleted`.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::GraphError;
use super::query::{Query, decode_token, encode_token};
use super::read::{READ_GROUPS, READ_USERS};
use super::render::{self, USER_DEFAULT};
use super::{Call, Reply};
use crate::ctx::Sim;
use crate::store::{ChangeKind, Obj, State};
use crate::util::now;

/// Objects per page, and members per group occurrence within a page.
const PAGE: usize = 200;
const MEMBERS_PER_OBJECT: usize = 500;
const TOKEN_DAYS: i64 = 7;

fn member_ref(st: &State, id: &Uuid, removed: bool) -> Value {
    let t = match st.objects.get(id) {
        Some(Obj::User(_)) => "#microsoft.graph.user",
        Some(Obj::Group(_)) => "#microsoft.graph.group",
        _ => "#microsoft.graph.servicePrincipal",
    };
    if removed {
        json!({"@odata.type": t, "id": id, "@removed": {"reason": "deleted"}})
    } else {
        json!({"@odata.type": t, "id": id})
    }
}

pub fn delta(sim: &Sim, call: &Call, q: &Query, segs: &[&str]) -> Result<Reply, GraphError> {
    let kind = match segs {
        ["users", "delta"] => {
            call.need(READ_USERS)?;
            ChangeKind::User
        }
        ["groups", "delta"] => {
            call.need(READ_GROUPS)?;
            ChangeKind::Group
        }
        _ => return Err(GraphError::no_route(&call.segs.join("/"))),
    };
    if q.top.is_some() || q.orderby.is_some() {
        return Err(GraphError::bad_request(
            "$top and $orderby are not supported with delta queries.",
        ));
    }
    let st = sim.read();
    let with_members = kind == ChangeKind::Group && q.selects("members");
    let with_owners = kind == ChangeKind::Group && q.selects("owners");
    let page = q.max_page_size.unwrap_or(PAGE).clamp(1, 999);
    let path = call.self_path();
    let mut value: Vec<Value> = Vec::new();
    let next: Option<String>;
    let mut delta_link: Option<String> = None;
    // Delta responses always carry the id, whatever $select says.
    let render_obj = |i: usize| -> Map<String, Value> {
        let (full, default) = match kind {
            ChangeKind::User => (render::user(&st.tenant.users[i], false), Some(USER_DEFAULT)),
            ChangeKind::Group => (render::group(&st.tenant.groups[i]), None),
        };
        let id = full.get("id").cloned().unwrap_or(Value::Null);
        let mut m = q.project(full, default);
        m.insert("id".into(), id);
        m
    };
    // Phase "i" (initial): [object offset, member offset, start seq]; phase "c" (changes): [since, upto, offset].
    let tok = q.skiptoken.as_deref();
    if q.deltatoken.as_deref() == Some("latest") {
        next = None;
        delta_link = Some(q.next_link(
            &path,
            &encode_token("t", &[st.seq, now().unix_timestamp() as u64]),
            "$deltatoken",
        ));
    } else if let Some(dt) = &q.deltatoken {
        let parts = decode_token("t", dt)?;
        let (since, issued) = (
            parts.first().copied().unwrap_or(0),
            parts.get(1).copied().unwrap_or(0) as i64,
        );
        if now().unix_timestamp() - issued > TOKEN_DAYS * 86_400 || since < st.delta_floor {
            return Err(GraphError::new(
                axum::http::StatusCode::GONE,
                "syncStateNotFound",
                "The delta token has expired; start a new round without a token.",
            ));
        }
        let r = changes(
            &st,
            call,
            q,
            kind,
            (with_members, with_owners),
            since,
            st.seq,
            0,
            page,
            &path,
            &render_obj,
        )?;
        value = r.0;
        next = r.1;
        delta_link = r.2;
    } else if let Some(t) = tok.filter(|t| decode_token("c", t).is_ok()) {
        let p = decode_token("c", t)?;
        let r = changes(
            &st,
            call,
            q,
            kind,
            (with_members, with_owners),
            p[0],
            p[1],
            p[2] as usize,
            page,
            &path,
            &render_obj,
        )?;
        value = r.0;
        next = r.1;
        delta_link = r.2;
    } else {
        let (mut obj, mut mem, start) = match tok {
            Some(t) => {
                let p = decode_token("i", t)?;
                (p[0] as usize, p[1] as usize, p[2])
            }
            None => (0, 0, st.seq),
        };
        let n = match kind {
            ChangeKind::User => st.tenant.users.len(),
            ChangeKind::Group => st.tenant.groups.len(),
        };
        let mut members_budget = PAGE * 10;
        while obj < n && value.len() < page {
            let mut m = render_obj(obj);
            if with_members {
                let all = &st.tenant.groups[obj].members;
                let take = MEMBERS_PER_OBJECT.min(members_budget).max(1);
                let chunk: Vec<Value> = all
                    .iter()
                    .skip(mem)
                    .take(take)
                    .map(|id| member_ref(&st, id, false))
                    .collect();
                members_budget = members_budget.saturating_sub(chunk.len());
                if with_owners && mem == 0 {
                    let owners = st.tenant.groups[obj].owners.iter();
                    let owners = owners.map(|id| member_ref(&st, id, false)).collect();
                    m.insert("owners@delta".into(), Value::Array(owners));
                }
                mem += chunk.len();
                m.insert("members@delta".into(), Value::Array(chunk));
                value.push(Value::Object(m));
                if mem < all.len() {
                    // The rest of this group's members come on the next page, in another occurrence.
                    break;
                }
                mem = 0;
                obj += 1;
                if members_budget == 0 {
                    break;
                }
            } else {
                if with_owners {
                    let owners = st.tenant.groups[obj].owners.iter();
                    let owners = owners.map(|id| member_ref(&st, id, false)).collect();
                    m.insert("owners@delta".into(), Value::Array(owners));
                }
                value.push(Value::Object(m));
                obj += 1;
            }
        }
        if obj < n {
            next = Some(q.next_link(
                &path,
                &encode_token("i", &[obj as u64, mem as u64, start]),
                "$skiptoken",
            ));
        } else {
            next = None;
            delta_link = Some(q.next_link(
                &path,
                &encode_token("t", &[start, now().unix_timestamp() as u64]),
                "$deltatoken",
            ));
        }
    }
    let items = value.len();
    let mut body = Map::new();
    let ctx = if kind == ChangeKind::User {
        "users"
    } else {
        "groups"
    };
    body.insert("@odata.context".into(), json!(call.context(ctx)));
    if let Some(n) = next {
        body.insert("@odata.nextLink".into(), json!(n));
    }
    if let Some(d) = delta_link {
        body.insert("@odata.deltaLink".into(), json!(d));
    }
    body.insert("value".into(), Value::Array(value));
    Ok(Reply::json(Value::Object(body), items))
}

type Page = (Vec<Value>, Option<String>, Option<String>);

#[allow(clippy::too_many_arguments)]
fn changes(
    st: &State,
    _call: &Call,
    q: &Query,
    kind: ChangeKind,
    (with_members, with_owners): (bool, bool),
    since: u64,
    upto: u64,
    offset: usize,
    page: usize,
    path: &str,
    render_obj: &dyn Fn(usize) -> Map<String, Value>,
) -> Result<Page, GraphError> {
    // Net effect per object, in order of first change.
    let mut order: Vec<Uuid> = Vec::new();
    let mut net: HashMap<Uuid, Vec<(Uuid, bool)>> = HashMap::new();
    let mut net_owners: HashMap<Uuid, Vec<(Uuid, bool)>> = HashMap::new();
    let mut soft_deleted: HashMap<Uuid, bool> = HashMap::new();
    for c in st
        .changes
        .iter()
        .filter(|c| c.kind == kind && c.seq > since && c.seq <= upto)
    {
        let entry = net.entry(c.id).or_insert_with(|| {
            order.push(c.id);
            Vec::new()
        });
        for (m, added) in &c.members {
            entry.retain(|(x, _)| x != m);
            entry.push((*m, *added));
        }
        let owners = net_owners.entry(c.id).or_default();
        for (m, added) in &c.owners {
            owners.retain(|(x, _)| x != m);
            owners.push((*m, *added));
        }
        soft_deleted.insert(c.id, c.deleted);
    }
    let mut value = Vec::new();
    for id in order.iter().skip(offset).take(page) {
        let idx = match (kind, st.objects.get(id)) {
            (ChangeKind::User, Some(Obj::User(i))) | (ChangeKind::Group, Some(Obj::Group(i))) => Some(*i),
            _ => None,
        };
        let Some(i) = idx else {
            let reason = if soft_deleted.get(id) == Some(&true) {
                "changed"
            } else {
                "deleted"
            };
            value.push(json!({"id": id, "@removed": {"reason": reason}}));
            continue;
        };
        let mut m = render_obj(i);
        if with_owners {
            let list: Vec<Value> = net_owners
                .get(id)
                .into_iter()
                .flatten()
                .map(|(mid, added)| member_ref(st, mid, !added))
                .collect();
            m.insert("owners@delta".into(), Value::Array(list));
        }
        if with_members {
            let list: Vec<Value> = net
                .get(id)
                .into_iter()
                .flatten()
                .map(|(mid, added)| member_ref(st, mid, !added))
                .collect();
            m.insert("members@delta".into(), Value::Array(list));
        }
        value.push(Value::Object(m));
    }
    let consumed = offset + page;
    if consumed < order.len() {
        Ok((
            value,
            Some(q.next_link(
                path,
                &encode_token("c", &[since, upto, consumed as u64]),
                "$skiptoken",
            )),
            None,
        ))
    } else {
        let dl = q.next_link(
            path,
            &encode_token("t", &[upto, now().unix_timestamp() as u64]),
            "$deltatoken",
        );
        Ok((value, None, Some(dl)))
    }
}

/// `GET /auditLogs/directoryAudits` (AuditLog.Read.All): the audit entries of the writes Graph has no
/// delta query for — app role assignments and service principal owners — newest first, with `$filter`
/// (e.g. `activityDateTime ge 2026-11-29T12:00:00Z`), `$top` (at most 1000) and `$skiptoken` paging.
pub fn directory_audits(sim: &Sim, call: &Call, q: &Query) -> Result<Reply, GraphError> {
    call.need(&["AuditLog.Read.All"])?;
    let st = sim.read();
    let page = q.top.unwrap_or(1_000).clamp(1, 1_000);
    let all: Vec<Value> = st
        .audits
        .iter()
        .rev()
        .map(|a| {
            json!({
                "id": a.id,
                "category": a.category,
                "activityDateTime": a.time,
                "activityDisplayName": a.activity,
                "operationType": if a.activity.starts_with("Add") { "Assign" } else { "Unassign" },
                "result": "success",
                "loggedByService": "Core Directory",
                "targetResources": a.targets.iter().map(|(id, t)| json!({"id": id, "type": t})).collect::<Vec<_>>(),
            })
        })
        .filter(|v| q.filter.as_ref().is_none_or(|f| f.eval(v)))
        .collect();
    let start = match q.skiptoken.as_deref() {
        Some(t) => decode_token("a", t)?.first().copied().unwrap_or(0) as usize,
        None => 0,
    }
    .min(all.len());
    let end = (start + page).min(all.len());
    let value: Vec<Value> = all[start..end].to_vec();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(call.context("auditLogs/directoryAudits")),
    );
    if end < all.len() {
        let next = q.next_link(&call.self_path(), &encode_token("a", &[end as u64]), "$skiptoken");
        body.insert("@odata.nextLink".into(), json!(next));
    }
    let items = value.len();
    body.insert("value".into(), Value::Array(value));
    Ok(Reply::json(Value::Object(body), items))
}
