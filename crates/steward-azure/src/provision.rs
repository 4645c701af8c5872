//! Grant and revoke Azure roles at subscription, resource-group, storage-account and container scope.
//!
//! * Grant: `PUT {scope}/providers/Microsoft.Authorization/roleAssignments/{new GUID}`. The GUID is chosen
//!   once, so resending after a reset or a 5xx is safe (ARM's PUT is idempotent by name). 409
//!   `RoleAssignmentExists` means the principal already holds the role there: success, nothing changed.
//! * Revoke: the principal's assignments visible at the scope are listed (`assignedTo`, which includes its
//!   groups); the one at exactly that scope with that role is deleted. One assigned to the principal above
//!   the scope (inherited) is refused, naming where it is assigned; so is a grant derived from a group's
//!   assignment (expanded, `GrantImmutable`), naming the group. Absent: success, nothing changed.
//! * 403 `AuthorizationFailed` is explained (Owner or User Access Administrator on that scope); PIM-eligible
//!   entitlements are refused (they are managed through PIM requests); everything else is an error.
//!
//! `steward-msgraph`'s `Client::write` has no PUT, so the grant's PUT is sent here, with that crate's
//! token provider and the same CA settings.

use std::time::Duration;

use serde_json::{Value, json};
use steward_entra::grants as entra_grants;
use steward_entra::index::Kind;
use steward_model::{AnnotationsExt, Entitlement, Grant, GrantImmutable, Resource};
use steward_msgraph::{Cloud, Error as MsError, WriteMethod, Written};

use crate::arm::AUTHZ_API;
use crate::connector::{Azure, rid};
use crate::error::AzureError;
use crate::{scope, types};

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
    fn http(&self) -> Result<reqwest::Client, AzureError> {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(15));
        if let Some(p) = &self.cfg.entra.ca_file {
            let pem = std::fs::read(p)
                .map_err(|e| MsError::Config(format!("cannot read the CA file {}: {e}", p.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                MsError::Config(format!(
                    "the CA file {} holds no PEM certificate: {e}",
                    p.display()
                ))
            })?;
            b = b.tls_certs_merge(certs);
        }
        b.build()
            .map_err(|e| MsError::Config(format!("cannot build the HTTP client: {e}")).into())
    }

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
        let url = format!(
            "{}{}/providers/Microsoft.Authorization/roleAssignments/{}?api-version={AUTHZ_API}",
            self.arm_root.base(),
            t.scope,
            uuid::Uuid::new_v4()
        );
        let http = self.http()?;
        let arm_scope = Cloud::from_graph_domain(&self.cfg.entra.graph_domain)?.arm_scope();
        let what = format!(
            "PUT role assignment of {} to {ptype} {pid} at {}",
            t.role, t.scope
        );
        let mut last = String::new();
        for attempt in 0..6u32 {
            let token = self.ms.tokens().token(&arm_scope).await?;
            let resp = match http
                .put(&url)
                .bearer_auth(token.expose())
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = format!("request failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(Duration::from_secs_f64);
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
            let message = v["error"]["message"].as_str().unwrap_or_default().to_owned();
            match status {
                200 | 201 => {
                    tracing::info!(scope = %t.scope, role = %t.role, principal = %pid, "role assignment created");
                    return Ok(vec![entra_grants::to(ent, kind, &pid)]);
                }
                409 if code == "RoleAssignmentExists" => {
                    tracing::info!(scope = %t.scope, role = %t.role, principal = %pid, "already held; nothing changed");
                    return Ok(vec![entra_grants::to(ent, kind, &pid)]);
                }
                403 => {
                    return Err(AzureError::WriteForbidden {
                        scope: t.scope,
                        message: format!("{code}: {message}"),
                    });
                }
                401 => {
                    self.ms.tokens().invalidate(&arm_scope, &token).await;
                    last = format!("HTTP 401 {code}: {message}");
                }
                429 => {
                    last = format!("HTTP 429 {code}: {message}");
                    tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(5))).await;
                }
                500..=504 => {
                    last = format!("HTTP {status} {code}: {message}");
                    tokio::time::sleep(retry_after.unwrap_or(Duration::from_millis(500 << attempt))).await;
                }
                _ => {
                    return Err(MsError::Http {
                        what,
                        status,
                        code,
                        message,
                    }
                    .into());
                }
            }
        }
        Err(AzureError::Unconfirmed(format!("{what}: {last}")))
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
                return match arm.write(WriteMethod::Delete, &path, None).await {
                    Ok(Written::Done(_)) => {
                        tracing::info!(scope = %t.scope, role = %t.role, principal = %pid, "role assignment deleted");
                        Ok(())
                    }
                    Ok(Written::Unconfirmed(m)) => Err(AzureError::Unconfirmed(m)),
                    Err(e) => Err(forbidden(e.into(), &t.scope)),
                };
            }
            inherited.get_or_insert((sc.to_owned(), who.to_ascii_lowercase()));
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
