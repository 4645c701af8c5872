//! Graph writes: relationship `$ref`s (members, owners), app role assignments, directory role assignments,
//! PIM eligibility and assignment schedule requests, `getByIds` and user updates — with Microsoft's exact
//! success codes and error bodies (specs §4).

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::GraphError;
use super::read::{READ_ANY_DIRECTORY, p2_required};
use super::render;
use super::{Call, Reply};
use crate::ctx::Sim;
use crate::model::{RoleAssignment, RoleEligibility};
use crate::store::{Obj, WriteError};
use crate::util::{now, parse_rfc3339, rfc3339};

const WRITE_MEMBERS: &[&str] = &[
    "GroupMember.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const WRITE_GROUP_OWNERS: &[&str] = &["Group.ReadWrite.All", "Directory.ReadWrite.All"];
const WRITE_APP_OWNERS: &[&str] = &["Application.ReadWrite.All", "Directory.ReadWrite.All"];
const WRITE_ASSIGNMENTS: &[&str] = &["AppRoleAssignment.ReadWrite.All"];
const WRITE_ROLES: &[&str] = &["RoleManagement.ReadWrite.Directory"];
const WRITE_ELIGIBILITY: &[&str] = &[
    "RoleEligibilitySchedule.ReadWrite.Directory",
    "RoleManagement.ReadWrite.Directory",
];
const WRITE_ACTIVE_SCHEDULE: &[&str] = &[
    "RoleAssignmentSchedule.ReadWrite.Directory",
    "RoleManagement.ReadWrite.Directory",
];
const WRITE_USERS: &[&str] = &["User.ReadWrite.All", "Directory.ReadWrite.All"];

fn uuid_of(s: &str) -> Result<Uuid, GraphError> {
    Uuid::parse_str(s).map_err(|_| GraphError::bad_request(format!("Invalid object identifier '{s}'.")))
}

/// The object id at the end of an `@odata.id` reference URL.
fn ref_target(call: &Call) -> Result<Uuid, GraphError> {
    let body = call.json_body()?;
    let Some(url) = body.get("@odata.id").and_then(Value::as_str) else {
        return Err(GraphError::bad_request(
            "The request body must be {\"@odata.id\": \"https://graph.microsoft.com/v1.0/directoryObjects/{id}\"}.",
        ));
    };
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let last = last
        .strip_prefix("directoryObjects('")
        .and_then(|r| r.strip_suffix("')"))
        .unwrap_or(last);
    uuid_of(last)
}

fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, GraphError> {
    body.get(name).and_then(Value::as_str).ok_or_else(|| {
        GraphError::bad_request(format!(
            "The request body is missing the required property '{name}'."
        ))
    })
}

fn sp_id(sim: &Sim, key: &str) -> Result<Uuid, GraphError> {
    let id = uuid_of(key)?;
    match sim.read().objects.get(&id) {
        Some(Obj::Sp(_)) => Ok(id),
        _ => Err(GraphError::not_found(key)),
    }
}

pub fn write(sim: &Sim, call: &Call, segs: &[&str]) -> Result<Reply, GraphError> {
    use axum::http::Method;
    let m = &call.method;
    match (m, segs) {
        (&Method::POST, ["groups", g, "members", "$ref"]) => {
            call.need(WRITE_MEMBERS)?;
            let member = ref_target(call)?;
            sim.write()
                .add_group_member(uuid_of(g)?, member)
                .map_err(|e| GraphError::from_write(e, "members"))?;
            Ok(Reply::no_content())
        }
        (&Method::DELETE, ["groups", g, "members", member, "$ref"]) => {
            call.need(WRITE_MEMBERS)?;
            let member_id = uuid_of(member)?;
            sim.write()
                .remove_group_member(uuid_of(g)?, member_id)
                .map_err(|e| match e {
                    WriteError::Absent => GraphError::not_found(member),
                    other => GraphError::from_write(other, "members"),
                })?;
            Ok(Reply::no_content())
        }
        (
            &Method::POST,
            [
                coll @ ("groups" | "servicePrincipals" | "applications"),
                target,
                "owners",
                "$ref",
            ],
        ) => {
            call.need(if *coll == "groups" {
                WRITE_GROUP_OWNERS
            } else {
                WRITE_APP_OWNERS
            })?;
            let owner = ref_target(call)?;
            sim.write()
                .add_owner(uuid_of(target)?, owner)
                .map_err(|e| GraphError::from_write(e, "owners"))?;
            Ok(Reply::no_content())
        }
        (
            &Method::DELETE,
            [
                coll @ ("groups" | "servicePrincipals" | "applications"),
                target,
                "owners",
                owner,
                "$ref",
            ],
        ) => {
            call.need(if *coll == "groups" {
                WRITE_GROUP_OWNERS
            } else {
                WRITE_APP_OWNERS
            })?;
            sim.write()
                .remove_owner(uuid_of(target)?, uuid_of(owner)?)
                .map_err(|e| match e {
                    WriteError::Absent => GraphError::not_found(owner),
                    other => GraphError::from_write(other, "owners"),
                })?;
            Ok(Reply::no_content())
        }
        (&Method::POST, ["servicePrincipals", sp, "appRoleAssignedTo"]) => {
            call.need(WRITE_ASSIGNMENTS)?;
            let body = call.json_body()?;
            let resource = sp_id(sim, sp)?;
            if let Some(r) = body.get("resourceId").and_then(Value::as_str)
                && uuid_of(r)? != resource
            {
                return Err(GraphError::bad_request(
                    "resourceId in the body must be the service principal in the URL.",
                ));
            }
            assign(
                sim,
                resource,
                uuid_of(str_field(&body, "principalId")?)?,
                uuid_of(str_field(&body, "appRoleId")?)?,
            )
        }
        (
            &Method::POST,
            [
                coll @ ("users" | "groups" | "servicePrincipals"),
                principal,
                "appRoleAssignments",
            ],
        ) => {
            call.need(WRITE_ASSIGNMENTS)?;
            let body = call.json_body()?;
            let principal_id = uuid_of(principal)?;
            if sim.read().principal_type(&principal_id).is_none() {
                return Err(GraphError::not_found(principal));
            }
            let _ = coll;
            let resource = sp_id(sim, str_field(&body, "resourceId")?)?;
            assign(
                sim,
                resource,
                principal_id,
                uuid_of(str_field(&body, "appRoleId")?)?,
            )
        }
        (&Method::DELETE, ["servicePrincipals", sp, "appRoleAssignedTo", id]) => {
            call.need(WRITE_ASSIGNMENTS)?;
            let resource = sp_id(sim, sp)?;
            sim.write()
                .remove_app_role_assignment(resource, id)
                .map_err(|e| match e {
                    WriteError::Absent => GraphError::not_found(id),
                    other => GraphError::from_write(other, "appRoleAssignments"),
                })?;
            Ok(Reply::no_content())
        }
        (
            &Method::DELETE,
            [
                "users" | "groups" | "servicePrincipals",
                principal,
                "appRoleAssignments",
                id,
            ],
        ) => {
            call.need(WRITE_ASSIGNMENTS)?;
            let principal_id = uuid_of(principal)?;
            let resource = {
                let st = sim.read();
                st.tenant
                    .app_role_assignments
                    .iter()
                    .find(|a| a.id == *id && a.principal_id == principal_id)
                    .map(|a| a.resource_id)
            };
            let Some(resource) = resource else {
                return Err(GraphError::not_found(id));
            };
            sim.write()
                .remove_app_role_assignment(resource, id)
                .map_err(|_| GraphError::not_found(id))?;
            Ok(Reply::no_content())
        }
        (&Method::POST, ["roleManagement", "directory", "roleAssignments"]) => {
            call.need(WRITE_ROLES)?;
            let body = call.json_body()?;
            let role = uuid_of(str_field(&body, "roleDefinitionId")?)?;
            let principal = uuid_of(str_field(&body, "principalId")?)?;
            let scope = body
                .get("directoryScopeId")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string();
            let r = RoleAssignment {
                id: crate::generate::role_assignment_id(role, principal),
                role_definition_id: role,
                principal_id: principal,
                directory_scope_id: scope,
                end: None,
            };
            sim.write().add_role_assignment(r.clone()).map_err(role_error)?;
            let mut out = Map::new();
            out.insert(
                "@odata.context".into(),
                json!(call.context("roleManagement/directory/roleAssignments/$entity")),
            );
            out.extend(render::role_assignment(&r));
            Ok(Reply::created(Value::Object(out)))
        }
        (&Method::DELETE, ["roleManagement", "directory", "roleAssignments", id]) => {
            call.need(WRITE_ROLES)?;
            sim.write()
                .remove_role_assignment(id)
                .map_err(|_| GraphError::not_found(id))?;
            Ok(Reply::no_content())
        }
        (
            &Method::POST,
            [
                "roleManagement",
                "directory",
                kind @ ("roleEligibilityScheduleRequests" | "roleAssignmentScheduleRequests"),
            ],
        ) => {
            let eligible = *kind == "roleEligibilityScheduleRequests";
            call.need(if eligible {
                WRITE_ELIGIBILITY
            } else {
                WRITE_ACTIVE_SCHEDULE
            })?;
            if !sim.read().tenant.has_p2 {
                return Err(p2_required());
            }
            schedule_request(sim, call, eligible)
        }
        (&Method::POST, ["directoryObjects", "getByIds"]) => {
            call.need(READ_ANY_DIRECTORY)?;
            let body = call.json_body()?;
            let Some(ids) = body.get("ids").and_then(Value::as_array) else {
                return Err(GraphError::bad_request(
                    "The request body is missing the required property 'ids'.",
                ));
            };
            if ids.len() > 1000 {
                return Err(GraphError::bad_request("getByIds accepts at most 1000 ids."));
            }
            let types: Vec<String> = body
                .get("types")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(|x| {
                            x.as_str()
                                .map(|s| format!("#microsoft.graph.{}", s.to_lowercase()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let st = sim.read();
            let mut value = Vec::new();
            for id in ids.iter().filter_map(Value::as_str) {
                if let Ok(u) = Uuid::parse_str(id)
                    && let Some((m, t)) = render::directory_object(&st, &u, false)
                    && (types.is_empty() || types.iter().any(|x| x.eq_ignore_ascii_case(t)))
                {
                    value.push(Value::Object(m));
                }
            }
            let n = value.len();
            Ok(Reply::json(
                json!({"@odata.context": call.context("directoryObjects"), "value": value}),
                n,
            ))
        }
        (&Method::POST, ["users"]) => {
            call.need(WRITE_USERS)?;
            create_user(sim, call)
        }
        (&Method::DELETE, ["users", key]) => {
            call.need(WRITE_USERS)?;
            let mut st = sim.write();
            let id = st
                .user(key)
                .map(|u| u.id)
                .ok_or_else(|| GraphError::not_found(key))?;
            st.delete_user(id)
                .map_err(|e| GraphError::from_write(e, "users"))?;
            Ok(Reply::no_content())
        }
        (&Method::DELETE, ["groups", g]) => {
            call.need(WRITE_GROUP_OWNERS)?;
            let id = uuid_of(g)?;
            sim.write().delete_group(id).map_err(|e| match e {
                WriteError::NotFound(_) => GraphError::not_found(g),
                other => GraphError::from_write(other, "groups"),
            })?;
            Ok(Reply::no_content())
        }
        (&Method::PATCH, ["users", key]) => {
            call.need(WRITE_USERS)?;
            let body = call.json_body()?;
            let mut st = sim.write();
            let id = st
                .user(key)
                .map(|u| u.id)
                .ok_or_else(|| GraphError::not_found(key))?;
            let Some(Obj::User(i)) = st.objects.get(&id).copied() else {
                return Err(GraphError::not_found(key));
            };
            let Some(obj) = body.as_object() else {
                return Err(GraphError::bad_request("The body must be a JSON object."));
            };
            for (k, v) in obj {
                let u = &mut st.tenant.users[i];
                match (k.as_str(), v) {
                    ("accountEnabled", Value::Bool(b)) => u.account_enabled = *b,
                    ("displayName", Value::String(s)) => u.display_name = s.clone(),
                    ("department", v) => u.department = v.as_str().map(str::to_string),
                    ("jobTitle", v) => u.job_title = v.as_str().map(str::to_string),
                    ("employeeType", v) => u.employee_type = v.as_str().map(str::to_string),
                    _ => {
                        return Err(GraphError::bad_request(format!(
                            "Property '{k}' cannot be updated by the emulator (supported: accountEnabled, displayName, department, jobTitle, employeeType)."
                        )));
                    }
                }
            }
            st.touch_user(id);
            Ok(Reply::no_content())
        }
        _ => Err(GraphError::no_route(&call.segs.join("/"))),
    }
}

/// `POST /users`: Graph's required properties (`accountEnabled`, `displayName`, `mailNickname`,
/// `userPrincipalName`, `passwordProfile`), plus a few optional ones; answers 201 with the user.
fn create_user(sim: &Sim, call: &Call) -> Result<Reply, GraphError> {
    let body = call.json_body()?;
    for required in ["displayName", "mailNickname", "userPrincipalName"] {
        str_field(&body, required)?;
    }
    let Some(enabled) = body.get("accountEnabled").and_then(Value::as_bool) else {
        return Err(GraphError::bad_request(
            "The request body is missing the required property 'accountEnabled'.",
        ));
    };
    if body.get("passwordProfile").is_none() {
        return Err(GraphError::bad_request(
            "The request body is missing the required property 'passwordProfile'.",
        ));
    }
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let upn = text("userPrincipalName").unwrap_or_default();
    let user = crate::model::User {
        id: Uuid::new_v4(),
        user_principal_name: upn.clone(),
        display_name: text("displayName").unwrap_or_default(),
        given_name: text("givenName"),
        surname: text("surname"),
        mail: text("mail"),
        user_type: Default::default(),
        account_enabled: enabled,
        created: rfc3339(now()),
        on_premises_sync_enabled: false,
        employee_id: text("employeeId"),
        employee_type: text("employeeType"),
        department: text("department"),
        job_title: text("jobTitle"),
        manager: None,
        mailbox: None,
        licenses: Vec::new(),
        last_sign_in: None,
    };
    let id = user.id;
    let mut st = sim.write();
    st.create_user(user)
        .map_err(|e| GraphError::from_write(e, "users"))?;
    let Some(Obj::User(i)) = st.objects.get(&id).copied() else {
        return Err(GraphError::not_found(&upn));
    };
    let mut v = Value::Object(render::user(&st.tenant.users[i], false));
    v["@odata.context"] = json!(call.context("users/$entity"));
    Ok(Reply::created(v))
}

fn assign(sim: &Sim, resource: Uuid, principal: Uuid, role: Uuid) -> Result<Reply, GraphError> {
    let mut extra = [0u8; 16];
    extra.copy_from_slice(Uuid::new_v4().as_bytes());
    let id = crate::generate::app_role_assignment_id(principal, extra);
    let mut st = sim.write();
    let idx = st
        .add_app_role_assignment(resource, principal, role, id, rfc3339(now()))
        .map_err(|e| match e {
            WriteError::AlreadyExists => {
                GraphError::bad_request("Permission being assigned already exists on the object")
            }
            WriteError::NotFound(x) => GraphError::not_found(&x.to_string()),
            WriteError::ReferenceNotFound(x) => GraphError::not_found(&x),
            WriteError::BadRequest(m) | WriteError::Refused(m) => GraphError::bad_request(m),
            WriteError::Absent => GraphError::not_found(&principal.to_string()),
        })?;
    let a = st.tenant.app_role_assignments[idx].clone();
    let mut out = Map::new();
    out.insert(
        "@odata.context".into(),
        json!("$metadata#appRoleAssignments/$entity"),
    );
    out.extend(render::app_role_assignment(&st, &a));
    Ok(Reply::created(Value::Object(out)))
}

fn role_error(e: WriteError) -> GraphError {
    match e {
        WriteError::AlreadyExists => GraphError::bad_request(
            "A conflicting object with one or more of the specified property values is present in the directory.",
        ),
        WriteError::ReferenceNotFound(x) => GraphError::not_found(&x),
        WriteError::NotFound(x) => GraphError::not_found(&x.to_string()),
        WriteError::BadRequest(m) | WriteError::Refused(m) => GraphError::bad_request(m),
        WriteError::Absent => GraphError::not_found("roleAssignment"),
    }
}

/// `roleEligibilityScheduleRequests` and `roleAssignmentScheduleRequests` with `adminAssign` /
/// `adminRemove`: eligibility goes to the PIM schedules; an active schedule creates a (time-bound) role
/// assignment.
fn schedule_request(sim: &Sim, call: &Call, eligible: bool) -> Result<Reply, GraphError> {
    let body = call.json_body()?;
    let action = str_field(&body, "action")?.to_string();
    let role = uuid_of(str_field(&body, "roleDefinitionId")?)?;
    let principal = uuid_of(str_field(&body, "principalId")?)?;
    let scope = body
        .get("directoryScopeId")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    let sched = body.get("scheduleInfo").cloned().unwrap_or(Value::Null);
    let start = sched
        .get("startDateTime")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| rfc3339(now()));
    let exp = sched.get("expiration").cloned().unwrap_or(Value::Null);
    let end = match exp.get("type").and_then(Value::as_str).unwrap_or("noExpiration") {
        "noExpiration" => None,
        "afterDateTime" => {
            let e = exp.get("endDateTime").and_then(Value::as_str).unwrap_or("");
            if parse_rfc3339(e).is_none() {
                return Err(GraphError::bad_request(format!(
                    "scheduleInfo.expiration.endDateTime '{e}' is not a valid date and time."
                )));
            }
            Some(e.to_string())
        }
        "afterDuration" => {
            let d = exp.get("duration").and_then(Value::as_str).unwrap_or("");
            let secs = iso_duration_secs(d).ok_or_else(|| {
                GraphError::bad_request(format!(
                    "scheduleInfo.expiration.duration '{d}' is not an ISO 8601 duration such as PT8H."
                ))
            })?;
            let s = parse_rfc3339(&start).unwrap_or_else(now);
            Some(rfc3339(s + time::Duration::seconds(secs)))
        }
        other => {
            return Err(GraphError::bad_request(format!(
                "Unknown expiration type '{other}'."
            )));
        }
    };
    let request_id = Uuid::new_v4();
    let status = match action.as_str() {
        "adminAssign" => {
            let mut st = sim.write();
            let r = if eligible {
                st.add_role_eligibility(RoleEligibility {
                    id: request_id.to_string(),
                    role_definition_id: role,
                    principal_id: principal,
                    directory_scope_id: scope.clone(),
                    start: start.clone(),
                    end: end.clone(),
                })
            } else {
                st.add_role_assignment(RoleAssignment {
                    id: crate::generate::role_assignment_id(role, principal),
                    role_definition_id: role,
                    principal_id: principal,
                    directory_scope_id: scope.clone(),
                    end: end.clone(),
                })
            };
            r.map_err(|e| match e {
                WriteError::AlreadyExists => GraphError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "RoleAssignmentExists",
                    "The Role assignment already exists.",
                ),
                other => role_error(other),
            })?;
            "Provisioned"
        }
        "adminRemove" => {
            let mut st = sim.write();
            let r = if eligible {
                st.remove_role_eligibility(role, principal, &scope)
            } else {
                let id = st
                    .tenant
                    .role_assignments
                    .iter()
                    .find(|a| {
                        a.role_definition_id == role
                            && a.principal_id == principal
                            && a.directory_scope_id == scope
                    })
                    .map(|a| a.id.clone());
                match id {
                    Some(id) => st.remove_role_assignment(&id),
                    None => Err(WriteError::Absent),
                }
            };
            r.map_err(|_| {
                GraphError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "RoleAssignmentDoesNotExist",
                    "The Role assignment does not exist.",
                )
            })?;
            "Revoked"
        }
        other => {
            return Err(GraphError::bad_request(format!(
                "The action '{other}' is not supported by the emulator (supported: adminAssign, adminRemove)."
            )));
        }
    };
    let now_s = rfc3339(now());
    let expiration = match &end {
        Some(e) => json!({"type": "afterDateTime", "endDateTime": e, "duration": null}),
        None => json!({"type": "noExpiration", "endDateTime": null, "duration": null}),
    };
    let kind = if eligible {
        "roleEligibilityScheduleRequests"
    } else {
        "roleAssignmentScheduleRequests"
    };
    Ok(Reply::created(json!({
        "@odata.context": call.context(&format!("roleManagement/directory/{kind}/$entity")),
        "id": request_id,
        "status": status,
        "createdDateTime": now_s,
        "completedDateTime": now_s,
        "approvalId": null,
        "customData": null,
        "action": action,
        "principalId": principal,
        "roleDefinitionId": role,
        "directoryScopeId": scope,
        "appScopeId": null,
        "isValidationOnly": false,
        "targetScheduleId": request_id,
        "justification": body.get("justification").cloned().unwrap_or(Value::Null),
        "createdBy": {"application": null, "device": null, "user": null},
        "scheduleInfo": {"startDateTime": start, "recurrence": null, "expiration": expiration},
        "ticketInfo": {"ticketNumber": null, "ticketSystem": null},
    })))
}

/// Seconds in an ISO 8601 duration like `P1DT8H30M` (no years or months).
pub fn iso_duration_secs(d: &str) -> Option<i64> {
    let rest = d.strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut total = 0i64;
    let mut num = String::new();
    for c in days.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else if c == 'D' {
            total += num.parse::<i64>().ok()? * 86_400;
            num.clear();
        } else if c == 'W' {
            total += num.parse::<i64>().ok()? * 7 * 86_400;
            num.clear();
        } else {
            return None;
        }
    }
    for c in time.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n = num.parse::<i64>().ok()?;
            num.clear();
            total += match c {
                'H' => n * 3600,
                'M' => n * 60,
                'S' => n,
                _ => return None,
            };
        }
    }
    if !num.is_empty() || (days.is_empty() && time.is_empty()) {
        return None;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::iso_duration_secs;

    #[test]
    fn durations() {
        assert_eq!(iso_duration_secs("PT8H"), Some(8 * 3600));
        assert_eq!(iso_duration_secs("P1DT30M"), Some(86_400 + 1800));
        assert_eq!(iso_duration_secs("P2W"), Some(14 * 86_400));
        assert_eq!(iso_duration_secs("PT"), None);
        assert_eq!(iso_duration_secs("8H"), None);
        assert_eq!(iso_duration_secs("PT5X"), None);
    }
}
