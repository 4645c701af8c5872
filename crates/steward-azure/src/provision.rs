//! Grant and revoke Azure roles at subscription, resource-group, storage-account and container scope.
//!
//! * Grant: `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{new GUID}`. The GUID is chosen
//!   once, so resending after a reset or a 5xx is safe (ARM's PUT is idempotent by name). 409
//!   `RoleAssignmentExists` means the principal already holds the role there: success, nothing changed.
//! * Revoke: the principal's assignments visible at the scope are listed (`assignedTo`, which includes its
//!   groups); the one at exactly that scope with that role is deleted. One assigned to the principal above
//!   the scope (inherited) is refused, naming where it is assigned; so is a grant derived from a group's
//!   assignment (expanded, `GrantImmutable`), naming the group. Absent: success, nothing changed.
//! * After a change (or one that may have applied) the subscription's cached roles and assignments are
//!   forgotten, so a partial sync by the same connector confirms what ARM now holds.
//! * 403 `AuthorizationFailed` is explained (Owner or User Access Administrator on that scope); PIM-eligible
//!   entitlements are refused (they are managed through PIM requests); everything else is an error.
//!
//! Both writes go through the subscription's ARM client (`steward-msgraph`): its writes bucket, token,
//! CA settings, retries of what certainly did not apply (429, 401, no connection) and error mapping. A PUT
//! whose answer was lost (reset, timeout, 5xx) is sent again under the same GUID, and a DELETE of the same
//! assignment id again (204 once gone), up to [`PUT_ATTEMPTS`] times in all.

use serde_json::json;
use steward_entra::grants as entra_grants;
use steward_entra::index::Kind;
use steward_model::{AnnotationsExt, Entitlement, Grant, GrantImmutable, Resource};
use steward_msgraph::{Error as MsError, WriteMethod, Written};

use crate::arm::AUTHZ_API;
use crate::connector::{Azure, rid};
use crate::error::AzureError;
use crate::{scope, types};

/// PUTs (or DELETEs) sent at most for one grant (or revoke) when answers are lost.
pub const PUT_ATTEMPTS: u32 = 4;

/// Where an entitlement applies: scope, subscription, role GUID.
struct Target {
    scope: String,
    sub: String,
    role: String,
}

fn target(ent: &Entitlement) -> Result<Target, AzureError> {
    let r = ent
        .resource
        .as_ref()
        .ok_or_else(|| AzureError::Foreign(format!("entitlement {}", ent.id)))?;
    let (rt, id) = rid(r)?;
    let sc = scope::of(&rt, &id).ok_or_else(|| {
        AzureError::Refused(format!(
            "{} is not an Azure role entitlement on a subscription, resource group, storage account or container",
            ent.id
        ))
    })?;
    let slug = if ent.slug.is_empty() {
        ent.id
            .strip_prefix(&format!("{rt}:{id}:"))
            .unwrap_or_default()
            .to_owned()
    } else {
        ent.slug.clone()
    };
    let (role, eligible) = scope::parse_slug(&slug)
        .ok_or_else(|| AzureError::Refused(format!("{} is not an Azure role entitlement", ent.id)))?;
    if eligible {
        return Err(AzureError::Refused(format!(
            "{} is a PIM-eligible role: eligibility is managed through Privileged Identity Management requests; grant the active role entitlement instead",
            ent.id
        )));
    }
    let sub = scope::subscription_of(&sc)
        .ok_or_else(|| AzureError::Foreign(sc.clone()))?
        .to_owned();
    Ok(Target {
        scope: sc,
        sub,
        role: role.to_ascii_lowercase(),
    })
}

fn principal_kind(rt: &str) -> Option<(Kind, &'static str)> {
    match rt {
        types::USER => Some((Kind::User, "User")),
        types::GROUP => Some((Kind::Group, "Group")),
        types::MANAGED_IDENTITY => Some((Kind::ManagedIdentity, "ServicePrincipal")),
        types::APP => Some((Kind::App, "ServicePrincipal")),
        _ => None,
    }
}

fn forbidden(e: AzureError, scope: &str) -> AzureError {
    match e {
        AzureError::Microsoft(MsError::MissingPermission { hint, .. }) => AzureError::WriteForbidden {
            scope: scope.to_owned(),
            message: hint,
        },
        other => other,
    }
}

impl Azure {
    /// Grants the Azure role of `ent` to `principal` (see the module docs).
    pub async fn grant_role(
        &self,
        principal: &Resource,
        ent: &Entitlement,
    ) -> Result<Vec<Grant>, AzureError> {
        if !self.cfg.provisioning {
            return Err(AzureError::ProvisioningDisabled);
        }
        let t = target(ent)?;
        let (prt, pid) = rid(principal)?;
        let (kind, ptype) = principal_kind(&prt).ok_or_else(|| {
            AzureError::Refused(format!(
                "Azure roles are granted to users, groups, managed identities and enterprise applications, not to a {prt}"
            ))
        })?;
        let body = json!({"properties": {
            "roleDefinitionId": format!("/subscriptions/{}/providers/Microsoft.Authorization/roleDefinitions/{}", t.sub, t.role),
            "principalId": pid, "principalType": ptype,
        }});
        // One GUID for every attempt: a resent PUT names the same assignment, so it cannot make a second one.
        let path = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{}?api-version={AUTHZ_API}",
            t.scope,
            uuid::Uuid::new_v4()
        );
        let arm = self.arm(&t.sub);
        let mut last = String::new();
        for _ in 0..PUT_ATTEMPTS {
            match arm.write(WriteMethod::Put, &path, Some(&body)).await {
                Ok(Written::Done(_)) => {
                    self.changed(&t.sub);
                    tracing::info!(scope = %t.scope, role = %t.role, principal = %pid, "role assignment created");
                    return Ok(vec![entra_grants::to(ent, kind, &pid)]);
                }
                Ok(Written::Unconfirmed(m)) => {
                    self.changed(&t.sub);
                    tracing::debug!(scope = %t.scope, role = %t.role, principal = %pid, "PUT unconfirmed, sent again: {m}");
                    last = m;
                }
                Err(MsError::Http {
                    status: 409, code, ..
                }) if code == "RoleAssignmentExists" => {
                    tracing::info!(scope = %t.scope, role = %t.role, principal = %pid, "already held; nothing changed");
                    return Ok(vec![entra_grants::to(ent, kind, &pid)]);
                }
                Err(e) => return Err(forbidden(e.into(), &t.scope)),
            }
        }
        Err(AzureError::Unconfirmed(last))
    }

    /// Revokes `grant` at exactly its scope (see the module docs).
    pub async fn revoke_role(&self, grant: &Grant) -> Result<(), AzureError> {
        if !self.cfg.provisioning {
            return Err(AzureError::ProvisioningDisabled);
        }
        let ent = grant
            .entitlement
            .as_ref()
            .ok_or_else(|| AzureError::Foreign(format!("grant {}", grant.id)))?;
        let t = target(ent)?;
        let p = grant
            .principal
            .as_ref()
            .ok_or_else(|| AzureError::Foreign(format!("grant {}", grant.id)))?;
        let (prt, pid) = rid(p)?;
        if types::SCOPES.contains(&prt.as_str()) {
            let at = scope::of(&prt, &pid).unwrap_or(pid);
            return Err(AzureError::Refused(format!(
                "{} is inherited: the role is assigned at {at} (or above); revoke it there",
                grant.id
            )));
        }
        let pid = pid.to_ascii_lowercase();
        let list = format!(
            "{}/providers/Microsoft.Authorization/roleAssignments?api-version={AUTHZ_API}&$filter=assignedTo('{pid}')",
            t.scope
        );
        let arm = self.arm(&t.sub);
        let all = arm.get_all(&list, false).await?;
        let mut inherited = None;
        for a in &all {
            let props = &a["properties"];
            let (Some(id), Some(sc), Some(rd), Some(who)) = (
                a["id"].as_str(),
                props["scope"].as_str(),
                props["roleDefinitionId"].as_str(),
                props["principalId"].as_str(),
            ) else {
                continue;
            };
            if scope::last_segment(rd) != t.role || !scope::covers(sc, &t.scope) {
                continue;
            }
            if who.eq_ignore_ascii_case(&pid) && scope::same(sc, &t.scope) {
                let path = format!("{id}?api-version={AUTHZ_API}");
                // DELETE of one assignment by id is idempotent (204 once it is gone): resent when unconfirmed.
                let mut last = String::new();
                for _ in 0..PUT_ATTEMPTS {
                    match arm.write(WriteMethod::Delete, &path, None).await {
                        Ok(Written::Done(_)) => {
                            self.changed(&t.sub);
                            tracing::info!(scope = %t.scope, role = %t.role, principal = %pid, "role assignment deleted");
                            return Ok(());
                        }
                        Ok(Written::Unconfirmed(m)) => {
                            self.changed(&t.sub);
                            tracing::debug!(scope = %t.scope, role = %t.role, principal = %pid, "DELETE unconfirmed, sent again: {m}");
                            last = m;
                        }
                        Err(e) => return Err(forbidden(e.into(), &t.scope)),
                    }
                }
                return Err(AzureError::Unconfirmed(last));
            }
            inherited.get_or_insert((scope::canonical(sc), who.to_ascii_lowercase()));
        }
        match inherited {
            Some((sc, who)) if who == pid => Err(AzureError::Refused(format!(
                "{} is inherited: the role is assigned at {sc}, above {}; revoke it at {sc}",
                grant.id, t.scope
            ))),
            Some((sc, who)) if grant.annotations.contains::<GrantImmutable>() => {
                Err(AzureError::Refused(format!(
                    "{} is held through group {who} (assigned at {sc}); remove the membership or revoke the group's grant",
                    grant.id
                )))
            }
            Some((sc, who)) => {
                tracing::info!(scope = %t.scope, role = %t.role, principal = %pid, group = %who, at = %sc, "no own assignment to revoke; the role is still held through a group");
                Ok(())
            }
            None => {
                tracing::info!(scope = %t.scope, role = %t.role, principal = %pid, "not assigned; nothing to revoke");
                Ok(())
            }
        }
    }
}
