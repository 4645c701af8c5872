//! Graph reads: collections with paging, filters and projection; single objects; navigation lists.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::GraphError;
use super::query::{Query, decode_token, encode_token, query_hash};
use super::render::{self, USER_DEFAULT};
use super::{Call, Reply};
use crate::ctx::Sim;
use crate::model::*;
use crate::store::{Obj, State};

pub const READ_USERS: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "User.ReadBasic.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
pub const READ_GROUPS: &[&str] = &[
    "Group.Read.All",
    "Group.ReadWrite.All",
    "GroupMember.Read.All",
    "GroupMember.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
pub const READ_APPS: &[&str] = &[
    "Application.Read.All",
    "Application.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
pub const READ_ASSIGNMENTS: &[&str] = &[
    "Application.Read.All",
    "Application.ReadWrite.All",
    "AppRoleAssignment.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
pub const READ_ROLES: &[&str] = &[
    "RoleManagement.Read.Directory",
    "RoleManagement.ReadWrite.Directory",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
pub const READ_ELIGIBILITY: &[&str] = &[
    "RoleEligibilitySchedule.Read.Directory",
    "RoleEligibilitySchedule.ReadWrite.Directory",
    "RoleManagement.Read.Directory",
    "RoleManagement.ReadWrite.Directory",
];
pub const READ_ORG: &[&str] = &[
    "Organization.Read.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "LicenseAssignment.Read.All",
];
pub const READ_MAILBOX: &[&str] = &["MailboxSettings.Read", "MailboxSettings.ReadWrite"];
pub const READ_ANY_DIRECTORY: &[&str] = &[
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "User.Read.All",
    "User.ReadWrite.All",
    "Group.Read.All",
    "Application.Read.All",
];

/// How a list is described to `list`.
pub struct ListSpec<'a> {
    /// The `@odata.context` fragment.
    pub context: String,
    pub type_name: &'a str,
    pub default: Option<&'a [&'a str]>,
    /// Properties that may be selected though not in the full object (select-only or navigation).
    pub extra_select: &'a [&'a str],
    pub default_page: usize,
    pub max_page: usize,
}

/// Pages through `n` items rendered by `render(i)` (which returns `None` for items to skip), applying
/// `$filter`, `$search`, `$orderby`, `$count`, `$select` and `$skiptoken`.
pub fn list(
    call: &Call,
    q: &Query,
    n: usize,
    spec: ListSpec,
    render: impl Fn(usize) -> Option<Map<String, Value>>,
) -> Result<Reply, GraphError> {
    list_with(call, q, n, spec, render, |_, _| {})
}

/// [`list`], with `$expand` applied by `expand` to the items of the page only — after `$filter`, which never
/// looks at expanded properties — so a filtered listing does not expand every object it skips.
pub fn list_with(
    call: &Call,
    q: &Query,
    n: usize,
    spec: ListSpec,
    render: impl Fn(usize) -> Option<Map<String, Value>>,
    expand: impl Fn(usize, &mut Map<String, Value>),
) -> Result<Reply, GraphError> {
    let hash = query_hash(&call.segs.join("/"), q);
    let offset = match &q.skiptoken {
        Some(t) => {
            let parts = decode_token("p", t)?;
            if parts.get(1) != Some(&hash) {
                return Err(GraphError::bad_request(
                    "The $skiptoken does not belong to this query. Follow the @odata.nextLink exactly as returned.",
                ));
            }
            parts.first().copied().unwrap_or(0) as usize
        }
        None => 0,
    };
    let mut size = q.page_size(spec.default_page).min(spec.max_page);
    if !q.expand.is_empty() {
        size = size.min(100);
    }
    let mut checked = false;
    let mut check = |m: &Map<String, Value>| -> Result<(), GraphError> {
        if !checked {
            checked = true;
            q.check_select(m, spec.type_name, spec.extra_select)?;
        }
        Ok(())
    };
    let filtering = q.filter.is_some() || q.search.is_some();
    let mut value = Vec::with_capacity(size.min(n));
    let mut next: Option<usize> = None;
    let mut count = None;
    if let Some((prop, desc)) = &q.orderby {
        // Sorted: collect every match, order, then page over the sorted list.
        let mut all: Vec<(String, usize, Map<String, Value>)> = Vec::new();
        for i in 0..n {
            if let Some(m) = render(i) {
                check(&m)?;
                let v = Value::Object(m);
                if q.matches(&v) {
                    let key = v
                        .get(prop.as_str())
                        .map(|x| x.as_str().map(str::to_lowercase).unwrap_or_else(|| x.to_string()))
                        .unwrap_or_default();
                    if let Value::Object(m) = v {
                        all.push((key, i, m));
                    }
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        if *desc {
            all.reverse();
        }
        if q.count && offset == 0 {
            count = Some(all.len());
        }
        let total = all.len();
        for (_, i, mut m) in all.into_iter().skip(offset).take(size) {
            expand(i, &mut m);
            value.push(Value::Object(q.project(m, spec.default)));
        }
        if offset + size < total {
            next = Some(offset + size);
        }
    } else {
        let mut i = offset;
        while i < n {
            if let Some(m) = render(i) {
                check(&m)?;
                let v = Value::Object(m);
                if !filtering || q.matches(&v) {
                    if value.len() == size {
                        next = Some(i);
                        break;
                    }
                    if let Value::Object(mut m) = v {
                        expand(i, &mut m);
                        value.push(Value::Object(q.project(m, spec.default)));
                    }
                }
            }
            i += 1;
        }
        if q.count && offset == 0 {
            let mut c = 0;
            for j in 0..n {
                if let Some(m) = render(j)
                    && (!filtering || q.matches(&Value::Object(m)))
                {
                    c += 1;
                }
            }
            count = Some(c);
        }
    }
    let items = value.len();
    let mut body = Map::new();
    body.insert("@odata.context".into(), json!(call.context(&spec.context)));
    if let Some(c) = count {
        body.insert("@odata.count".into(), json!(c));
    }
    if let Some(nx) = next {
        let token = encode_token("p", &[nx as u64, hash]);
        body.insert(
            "@odata.nextLink".into(),
            json!(q.next_link(&call.self_path(), &token, "$skiptoken")),
        );
    }
    body.insert("value".into(), Value::Array(value));
    Ok(Reply::json(Value::Object(body), items))
}

fn single(
    call: &Call,
    q: &Query,
    context: &str,
    type_name: &str,
    default: Option<&[&str]>,
    extra: &[&str],
    m: Map<String, Value>,
) -> Result<Reply, GraphError> {
    q.check_select(&m, type_name, extra)?;
    let mut out = Map::new();
    out.insert("@odata.context".into(), json!(call.context(context)));
    out.extend(q.project(m, default));
    Ok(Reply::json(Value::Object(out), 1))
}

fn uuid_of(s: &str) -> Result<Uuid, GraphError> {
    Uuid::parse_str(s).map_err(|_| GraphError::bad_request(format!("Invalid object identifier '{s}'.")))
}

/// Adds `$expand`ed navigation properties (at most 20 items, no nextLink — as Graph does).
fn expand(st: &State, q: &Query, id: &Uuid, m: &mut Map<String, Value>) -> Result<(), GraphError> {
    for nav in &q.expand {
        let ids: Vec<Uuid> = match (nav.as_str(), st.objects.get(id)) {
            ("members", Some(Obj::Group(i))) => st.tenant.groups[*i].members.clone(),
            ("owners", Some(Obj::Group(i))) => st.tenant.groups[*i].owners.clone(),
            ("owners", Some(Obj::Sp(i))) => st.tenant.service_principals[*i].owners.clone(),
            ("memberOf", _) => st.member_of(id),
            ("manager", Some(Obj::User(i))) => {
                let v = st.tenant.users[*i]
                    .manager
                    .and_then(|mgr| render::directory_object(st, &mgr, false))
                    .map(|(o, _)| Value::Object(o));
                m.insert("manager".into(), v.unwrap_or(Value::Null));
                continue;
            }
            ("appRoleAssignedTo", Some(Obj::Sp(_))) => {
                let list: Vec<Value> = st
                    .assignments_by_resource
                    .get(id)
                    .into_iter()
                    .flatten()
                    .take(20)
                    .map(|&i| {
                        Value::Object(render::app_role_assignment(
                            st,
                            &st.tenant.app_role_assignments[i],
                        ))
                    })
                    .collect();
                m.insert("appRoleAssignedTo".into(), Value::Array(list));
                continue;
            }
            (other, _) => {
                return Err(GraphError::bad_request(format!(
                    "Could not find a property named '{other}' on the requested type."
                )));
            }
        };
        let list: Vec<Value> = ids
            .iter()
            .take(20)
            .filter_map(|x| render::directory_object(st, x, false))
            .map(|(o, _)| Value::Object(o))
            .collect();
        m.insert(nav.clone(), Value::Array(list));
    }
    Ok(())
}

fn user_for(st: &State, key: &str) -> Result<usize, GraphError> {
    let u = st.user(key).ok_or_else(|| GraphError::not_found(key))?;
    match st.objects.get(&u.id) {
        Some(Obj::User(i)) => Ok(*i),
        _ => Err(GraphError::not_found(key)),
    }
}

fn group_index(st: &State, key: &str) -> Result<usize, GraphError> {
    let id = uuid_of(key)?;
    match st.objects.get(&id) {
        Some(Obj::Group(i)) => Ok(*i),
        _ => Err(GraphError::not_found(key)),
    }
}

fn sp_index(st: &State, key: &str) -> Result<usize, GraphError> {
    if let Some(app) = key.strip_prefix("(appId='").and_then(|r| r.strip_suffix("')")) {
        let a = uuid_of(app)?;
        return st
            .sp_by_app_id
            .get(&a)
            .copied()
            .ok_or_else(|| GraphError::not_found(app));
    }
    let id = uuid_of(key)?;
    match st.objects.get(&id) {
        Some(Obj::Sp(i)) => Ok(*i),
        _ => Err(GraphError::not_found(key)),
    }
}

/// A list of directory objects (members, owners, memberOf …), optionally narrowed by an OData type cast.
fn object_list(
    call: &Call,
    q: &Query,
    st: &State,
    ids: &[Uuid],
    context: &str,
    cast: Option<&str>,
) -> Result<Reply, GraphError> {
    let sign_in = q.selects("signInActivity");
    let want: Option<&str> = match cast {
        Some("microsoft.graph.user") => Some("#microsoft.graph.user"),
        Some("microsoft.graph.group") => Some("#microsoft.graph.group"),
        Some("microsoft.graph.servicePrincipal") => Some("#microsoft.graph.servicePrincipal"),
        Some(other) => return Err(GraphError::no_route(other)),
        None => None,
    };
    list(
        call,
        q,
        ids.len(),
        ListSpec {
            context: context.to_string(),
            type_name: "directoryObject",
            default: None,
            extra_select: &[
                "signInActivity",
                "userPrincipalName",
                "appId",
                "mail",
                "userType",
                "accountEnabled",
                "servicePrincipalType",
                "securityEnabled",
                "groupTypes",
            ],
            default_page: 100,
            max_page: 999,
        },
        |i| {
            let (m, t) = render::directory_object(st, &ids[i], sign_in)?;
            if want.is_some_and(|w| w != t) {
                return None;
            }
            Some(m)
        },
    )
}

pub fn get(sim: &Sim, call: &Call, q: &Query, segs: &[&str]) -> Result<Reply, GraphError> {
    let st = sim.read();
    let t = &st.tenant;
    match segs {
        ["organization"] => {
            call.need(&[READ_ORG, READ_USERS].concat())?;
            list(
                call,
                q,
                1,
                ListSpec {
                    context: "organization".into(),
                    type_name: "organization",
                    default: None,
                    extra_select: &[],
                    default_page: 100,
                    max_page: 999,
                },
                |_| Some(render::organization(t)),
            )
        }
        ["domains"] => {
            call.need(&[READ_ORG, READ_ANY_DIRECTORY].concat())?;
            let n = t.domains.len();
            list(
                call,
                q,
                n,
                ListSpec {
                    context: "domains".into(),
                    type_name: "domain",
                    default: None,
                    extra_select: &[],
                    default_page: 100,
                    max_page: 999,
                },
                |i| {
                    let d = &t.domains[i];
                    let mut m = Map::new();
                    m.insert("id".into(), json!(d.name));
                    m.insert("isDefault".into(), json!(d.is_default));
                    m.insert("isInitial".into(), json!(d.is_initial));
                    m.insert("isVerified".into(), json!(true));
                    m.insert("authenticationType".into(), json!("Managed"));
                    Some(m)
                },
            )
        }
        ["users"] => {
            call.need(READ_USERS)?;
            let sign_in = q.selects("signInActivity");
            if sign_in {
                call.need(&["AuditLog.Read.All"])?;
                if q.top.is_some_and(|n| n > 500) {
                    return Err(GraphError::bad_request(
                        "Invalid page size specified: the page size must be at most 500 when signInActivity is selected.",
                    ));
                }
            }
            let max = if sign_in { 500 } else { 999 };
            let spec = ListSpec {
                context: "users".into(),
                type_name: "user",
                default: Some(USER_DEFAULT),
                extra_select: &["signInActivity", "manager"],
                default_page: 100,
                max_page: max,
            };
            list_with(
                call,
                q,
                t.users.len(),
                spec,
                |i| Some(render::user(&t.users[i], sign_in)),
                |i, m| {
                    if !q.expand.is_empty() {
                        let _ = expand(&st, q, &t.users[i].id, m);
                    }
                },
            )
        }
        ["users", "$count"]
        | ["groups", "$count"]
        | ["servicePrincipals", "$count"]
        | ["applications", "$count"] => {
            if !q.eventual {
                return Err(GraphError::bad_request(
                    "$count is not currently supported without the ConsistencyLevel: eventual header.",
                ));
            }
            let n = match segs[0] {
                "users" => {
                    call.need(READ_USERS)?;
                    t.users.len()
                }
                "groups" => {
                    call.need(READ_GROUPS)?;
                    t.groups.len()
                }
                "servicePrincipals" => {
                    call.need(READ_APPS)?;
                    t.service_principals.len()
                }
                _ => {
                    call.need(READ_APPS)?;
                    t.applications.len()
                }
            };
            Ok(Reply {
                status: axum::http::StatusCode::OK,
                body: Some(json!(n)),
                items: 1,
            })
        }
        ["users", key] => {
            call.need(READ_USERS)?;
            let i = user_for(&st, key)?;
            let sign_in = q.selects("signInActivity");
            if sign_in {
                call.need(&["AuditLog.Read.All"])?;
            }
            let mut m = render::user(&t.users[i], sign_in);
            expand(&st, q, &t.users[i].id, &mut m)?;
            single(
                call,
                q,
                "users/$entity",
                "user",
                Some(USER_DEFAULT),
                &["signInActivity", "manager"],
                m,
            )
        }
        ["users", key, "mailboxSettings"] => {
            call.need(READ_MAILBOX)?;
            let u = &t.users[user_for(&st, key)?];
            let Some(p) = u.mailbox else {
                return Err(GraphError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "MailboxNotEnabledForRESTAPI",
                    "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                ));
            };
            single(
                call,
                q,
                &format!("users('{}')/mailboxSettings", u.id),
                "mailboxSettings",
                None,
                &[],
                render::mailbox_settings(p),
            )
        }
        ["users", key, "licenseDetails"] => {
            call.need(READ_USERS)?;
            let u = &t.users[user_for(&st, key)?];
            let skus: Vec<&Sku> = u
                .licenses
                .iter()
                .filter_map(|l| t.skus.iter().find(|s| s.sku_id == *l))
                .collect();
            list(
                call,
                q,
                skus.len(),
                ListSpec {
                    context: format!("users('{}')/licenseDetails", u.id),
                    type_name: "licenseDetails",
                    default: None,
                    extra_select: &[],
                    default_page: 100,
                    max_page: 999,
                },
                |i| Some(render::license_detail(skus[i], &u.id)),
            )
        }
        ["users", key, "manager"] => {
            call.need(READ_USERS)?;
            let u = &t.users[user_for(&st, key)?];
            let Some(mgr) = u.manager else {
                return Err(GraphError::not_found("manager"));
            };
            let (m, _) =
                render::directory_object(&st, &mgr, false).ok_or_else(|| GraphError::not_found("manager"))?;
            single(
                call,
                q,
                "directoryObjects/$entity",
                "directoryObject",
                None,
                &[],
                m,
            )
        }
        ["users", key, nav @ ("memberOf" | "transitiveMemberOf"), rest @ ..] => {
            call.need(&[READ_USERS, READ_GROUPS].concat())?;
            let u = &t.users[user_for(&st, key)?];
            let ids = if *nav == "memberOf" {
                st.member_of(&u.id)
            } else {
                st.transitive_member_of(&u.id)
            };
            object_list(call, q, &st, &ids, "directoryObjects", rest.first().copied())
        }
        ["users", key, "appRoleAssignments"]
        | ["groups", key, "appRoleAssignments"]
        | ["servicePrincipals", key, "appRoleAssignments"] => {
            call.need(READ_ASSIGNMENTS)?;
            let id = match segs[0] {
                "users" => t.users[user_for(&st, key)?].id,
                "groups" => t.groups[group_index(&st, key)?].id,
                _ => t.service_principals[sp_index(&st, key)?].id,
            };
            let list_: Vec<&AppRoleAssignment> = t
                .app_role_assignments
                .iter()
                .filter(|a| a.principal_id == id)
                .collect();
            list(
                call,
                q,
                list_.len(),
                assignment_spec(format!("{}('{id}')/appRoleAssignments", segs[0])),
                |i| Some(render::app_role_assignment(&st, list_[i])),
            )
        }
        ["groups"] => {
            call.need(READ_GROUPS)?;
            let spec = ListSpec {
                context: "groups".into(),
                type_name: "group",
                default: None,
                extra_select: &["members", "owners"],
                default_page: 100,
                max_page: 999,
            };
            list(call, q, t.groups.len(), spec, |i| {
                let mut m = render::group(&t.groups[i]);
                if !q.expand.is_empty() {
                    let _ = expand(&st, q, &t.groups[i].id, &mut m);
                }
                Some(m)
            })
        }
        ["groups", key] => {
            call.need(READ_GROUPS)?;
            let g = &t.groups[group_index(&st, key)?];
            let mut m = render::group(g);
            expand(&st, q, &g.id, &mut m)?;
            single(
                call,
                q,
                "groups/$entity",
                "group",
                None,
                &["members", "owners"],
                m,
            )
        }
        [
            "groups",
            key,
            nav @ ("members" | "owners" | "transitiveMembers"),
            rest @ ..,
        ] => {
            call.need(READ_GROUPS)?;
            let g = &t.groups[group_index(&st, key)?];
            let ids: Vec<Uuid> = match *nav {
                "members" => g.members.clone(),
                "owners" => g.owners.clone(),
                _ => st.transitive_members(&g.id),
            };
            if rest.first() == Some(&"$count") {
                if !q.eventual {
                    return Err(GraphError::bad_request(
                        "$count is not currently supported without the ConsistencyLevel: eventual header.",
                    ));
                }
                return Ok(Reply {
                    status: axum::http::StatusCode::OK,
                    body: Some(json!(ids.len())),
                    items: 1,
                });
            }
            object_list(call, q, &st, &ids, "directoryObjects", rest.first().copied())
        }
        ["servicePrincipals"] => {
            call.need(READ_APPS)?;
            let spec = ListSpec {
                context: "servicePrincipals".into(),
                type_name: "servicePrincipal",
                default: None,
                extra_select: &["owners", "appRoleAssignedTo"],
                default_page: 100,
                max_page: 999,
            };
            list(call, q, t.service_principals.len(), spec, |i| {
                let mut m = render::service_principal(&t.service_principals[i]);
                if !q.expand.is_empty() {
                    let _ = expand(&st, q, &t.service_principals[i].id, &mut m);
                }
                Some(m)
            })
        }
        [sp, rest @ ..] if sp.starts_with("servicePrincipals(") => {
            let key = &sp["servicePrincipals".len()..];
            let i = sp_index(&st, key)?;
            let id = t.service_principals[i].id.to_string();
            let mut segs2: Vec<&str> = vec!["servicePrincipals", id.as_str()];
            segs2.extend(rest);
            drop(st);
            get(sim, call, q, &segs2)
        }
        ["servicePrincipals", key] => {
            call.need(READ_APPS)?;
            let s = &t.service_principals[sp_index(&st, key)?];
            let mut m = render::service_principal(s);
            expand(&st, q, &s.id, &mut m)?;
            single(
                call,
                q,
                "servicePrincipals/$entity",
                "servicePrincipal",
                None,
                &["owners", "appRoleAssignedTo"],
                m,
            )
        }
        ["servicePrincipals", key, "appRoleAssignedTo"] => {
            call.need(READ_ASSIGNMENTS)?;
            let s = &t.service_principals[sp_index(&st, key)?];
            let idx: &[usize] = st
                .assignments_by_resource
                .get(&s.id)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            list(
                call,
                q,
                idx.len(),
                assignment_spec(format!("servicePrincipals('{}')/appRoleAssignedTo", s.id)),
                |i| Some(render::app_role_assignment(&st, &t.app_role_assignments[idx[i]])),
            )
        }
        ["servicePrincipals", key, "owners", rest @ ..] => {
            call.need(READ_APPS)?;
            let s = &t.service_principals[sp_index(&st, key)?];
            object_list(call, q, &st, &s.owners, "directoryObjects", rest.first().copied())
        }
        ["applications"] => {
            call.need(READ_APPS)?;
            let spec = ListSpec {
                context: "applications".into(),
                type_name: "application",
                default: None,
                extra_select: &["owners"],
                default_page: 100,
                max_page: 999,
            };
            list(call, q, t.applications.len(), spec, |i| {
                Some(render::application(&t.applications[i]))
            })
        }
        ["applications", key, rest @ ..] => {
            call.need(READ_APPS)?;
            let app = if let Some(a) = key.strip_prefix("(appId='").and_then(|r| r.strip_suffix("')")) {
                st.app_by_app_id.get(&uuid_of(a)?).map(|i| &t.applications[*i])
            } else {
                st.app(&uuid_of(key)?)
            };
            let app = app.ok_or_else(|| GraphError::not_found(key))?;
            match rest {
                [] => single(
                    call,
                    q,
                    "applications/$entity",
                    "application",
                    None,
                    &["owners"],
                    render::application(app),
                ),
                ["owners", more @ ..] => object_list(
                    call,
                    q,
                    &st,
                    &app.owners,
                    "directoryObjects",
                    more.first().copied(),
                ),
                _ => Err(GraphError::no_route(&call.segs.join("/"))),
            }
        }
        ["roleManagement", "directory", "roleDefinitions"] => {
            call.need(READ_ROLES)?;
            let spec = ListSpec {
                context: "roleManagement/directory/roleDefinitions".into(),
                type_name: "unifiedRoleDefinition",
                default: None,
                extra_select: &[],
                default_page: 999,
                max_page: 999,
            };
            list(call, q, t.role_definitions.len(), spec, |i| {
                Some(render::role_definition(&t.role_definitions[i]))
            })
        }
        ["roleManagement", "directory", "roleDefinitions", key] => {
            call.need(READ_ROLES)?;
            let id = uuid_of(key)?;
            let r = t
                .role_definitions
                .iter()
                .find(|r| r.id == id)
                .ok_or_else(|| GraphError::not_found(key))?;
            single(
                call,
                q,
                "roleManagement/directory/roleDefinitions/$entity",
                "unifiedRoleDefinition",
                None,
                &[],
                render::role_definition(r),
            )
        }
        ["roleManagement", "directory", "roleAssignments"] => {
            call.need(READ_ROLES)?;
            let spec = ListSpec {
                context: "roleManagement/directory/roleAssignments".into(),
                type_name: "unifiedRoleAssignment",
                default: None,
                extra_select: &["principal", "roleDefinition"],
                default_page: 100,
                max_page: 999,
            };
            list(call, q, t.role_assignments.len(), spec, |i| {
                Some(render::role_assignment(&t.role_assignments[i]))
            })
        }
        ["roleManagement", "directory", "roleAssignments", key] => {
            call.need(READ_ROLES)?;
            let r = t
                .role_assignments
                .iter()
                .find(|r| r.id == *key)
                .ok_or_else(|| GraphError::not_found(key))?;
            single(
                call,
                q,
                "roleManagement/directory/roleAssignments/$entity",
                "unifiedRoleAssignment",
                None,
                &[],
                render::role_assignment(r),
            )
        }
        [
            "roleManagement",
            "directory",
            kind @ ("roleEligibilitySchedules" | "roleEligibilityScheduleInstances"),
        ] => {
            call.need(READ_ELIGIBILITY)?;
            if !t.has_p2 {
                return Err(p2_required());
            }
            let sched = *kind == "roleEligibilitySchedules";
            let spec = ListSpec {
                context: format!("roleManagement/directory/{kind}"),
                type_name: if sched {
                    "unifiedRoleEligibilitySchedule"
                } else {
                    "unifiedRoleEligibilityScheduleInstance"
                },
                default: None,
                extra_select: &[],
                default_page: 100,
                max_page: 999,
            };
            list(call, q, t.role_eligibilities.len(), spec, |i| {
                let e = &t.role_eligibilities[i];
                Some(if sched {
                    render::role_eligibility_schedule(e)
                } else {
                    render::role_eligibility_instance(e)
                })
            })
        }
        ["directoryRoles"] => {
            call.need(&[READ_ROLES, READ_ANY_DIRECTORY].concat())?;
            let active: Vec<&RoleDefinition> = t
                .role_definitions
                .iter()
                .filter(|d| d.is_built_in && t.role_assignments.iter().any(|a| a.role_definition_id == d.id))
                .collect();
            list(
                call,
                q,
                active.len(),
                ListSpec {
                    context: "directoryRoles".into(),
                    type_name: "directoryRole",
                    default: None,
                    extra_select: &[],
                    default_page: 999,
                    max_page: 999,
                },
                |i| {
                    let d = active[i];
                    let mut m = Map::new();
                    m.insert(
                        "id".into(),
                        json!(crate::catalog::stable_uuid(&format!("directoryRole:{}", d.id))),
                    );
                    m.insert("deletedDateTime".into(), Value::Null);
                    m.insert("description".into(), json!(d.description));
                    m.insert("displayName".into(), json!(d.display_name));
                    m.insert("roleTemplateId".into(), json!(d.id));
                    Some(m)
                },
            )
        }
        ["directoryRoles", key, "members"] => {
            call.need(&[READ_ROLES, READ_ANY_DIRECTORY].concat())?;
            let id = uuid_of(key)?;
            let def = t
                .role_definitions
                .iter()
                .find(|d| d.id == id || crate::catalog::stable_uuid(&format!("directoryRole:{}", d.id)) == id)
                .ok_or_else(|| GraphError::not_found(key))?;
            let ids: Vec<Uuid> = t
                .role_assignments
                .iter()
                .filter(|a| a.role_definition_id == def.id)
                .map(|a| a.principal_id)
                .collect();
            object_list(call, q, &st, &ids, "directoryObjects", None)
        }
        ["subscribedSkus"] => {
            call.need(READ_ORG)?;
            let spec = ListSpec {
                context: "subscribedSkus".into(),
                type_name: "subscribedSku",
                default: None,
                extra_select: &[],
                default_page: 999,
                max_page: 999,
            };
            list(call, q, t.skus.len(), spec, |i| {
                Some(render::subscribed_sku(t, &t.skus[i]))
            })
        }
        ["directoryObjects", key] => {
            call.need(READ_ANY_DIRECTORY)?;
            let id = uuid_of(key)?;
            let (m, _) =
                render::directory_object(&st, &id, false).ok_or_else(|| GraphError::not_found(key))?;
            single(
                call,
                q,
                "directoryObjects/$entity",
                "directoryObject",
                None,
                &[],
                m,
            )
        }
        _ => Err(GraphError::no_route(&call.segs.join("/"))),
    }
}

fn assignment_spec(context: String) -> ListSpec<'static> {
    ListSpec {
        context,
        type_name: "appRoleAssignment",
        default: None,
        extra_select: &[],
        default_page: 100,
        max_page: 999,
    }
}

pub fn p2_required() -> GraphError {
    GraphError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "AadPremiumLicenseRequired",
        "The tenant needs to have Microsoft Entra ID P2 or Microsoft Entra ID Governance license.",
    )
}
