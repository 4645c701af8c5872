//! Directory roles: role definitions as role resources with `assigned` (active, from
//! `roleManagement/directory/roleAssignments`) and `eligible` (PIM, from `roleEligibilitySchedules`)
//! entitlements. Both lists are read once per sync and grouped by role. Without P2 (or with
//! `skip_p2`) there is no `eligible` entitlement, and the reason is logged in words.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};
use steward_model::pb::entitlement::PurposeValue;
use steward_model::{Entitlement, Resource, builders, profile};
use steward_msgraph::{Client, Error};

use crate::error::EntraError;
use crate::types;

/// Who holds each role, actively and eligibly.
#[derive(Debug, Default)]
pub struct RoleHolders {
    /// Role definition id → principal ids (active).
    pub assigned: HashMap<String, Vec<String>>,
    /// Role definition id → principal ids (eligible); `None` when PIM is not read.
    pub eligible: Option<HashMap<String, Vec<String>>>,
}

fn group_by_role(items: &[Value]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen = HashSet::new();
    for a in items {
        let (Some(role), Some(p)) = (a["roleDefinitionId"].as_str(), a["principalId"].as_str()) else {
            continue;
        };
        if seen.insert((role.to_owned(), p.to_owned())) {
            m.entry(role.to_owned()).or_default().push(p.to_owned());
        }
    }
    m
}

impl RoleHolders {
    /// Reads assignments, and eligibility unless `skip_p2`; a tenant without P2 is detected and explained.
    pub async fn load(g: &Client, skip_p2: bool) -> Result<RoleHolders, EntraError> {
        let assigned = g
            .get_all(
                "/v1.0/roleManagement/directory/roleAssignments?$select=id,roleDefinitionId,principalId,directoryScopeId&$top=999",
                false,
            )
            .await?;
        let eligible = if skip_p2 {
            tracing::info!("skipping PIM eligibility (--skip-p2-features)");
            None
        } else {
            match g
                .get_all(
                    "/v1.0/roleManagement/directory/roleEligibilitySchedules?$select=id,roleDefinitionId,principalId,directoryScopeId&$top=999",
                    false,
                )
                .await
            {
                Ok(v) => Some(group_by_role(&v)),
                Err(e @ Error::PremiumLicenseRequired { .. }) => {
                    tracing::warn!(
                        "{e}. Syncing active role assignments only; add --skip-p2-features to skip this check"
                    );
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(RoleHolders {
            assigned: group_by_role(&assigned),
            eligible,
        })
    }
}

/// A role resource from a role definition.
pub fn role(v: &Value) -> Option<Resource> {
    let id = v.get("id")?.as_str()?;
    let name = v["displayName"].as_str().unwrap_or(id);
    let mut p = Map::new();
    p.insert("role_id".into(), json!(id));
    p.insert(
        "template_id".into(),
        json!(v["templateId"].as_str().unwrap_or(id)),
    );
    p.insert("built_in".into(), json!(v["isBuiltIn"].as_bool().unwrap_or(true)));
    p.insert("enabled".into(), json!(v["isEnabled"].as_bool().unwrap_or(true)));
    let mut b = builders::ResourceBuilder::new(types::ROLE, id, name)
        .profile(profile::struct_from_json_map(&p))
        .role();
    if let Some(d) = v["description"].as_str() {
        b = b.description(d);
    }
    Some(b.build())
}

/// `assigned`, and `eligible` when PIM is read.
pub fn entitlements(r: &Resource, pim: bool) -> Vec<Entitlement> {
    let name = &r.display_name;
    let to: Vec<_> = [types::USER, types::GROUP, types::APP, types::MANAGED_IDENTITY]
        .iter()
        .filter_map(|t| types::by_id(t))
        .collect();
    let mut a = builders::entitlement(
        r,
        "assigned",
        &format!("{name} (active)"),
        PurposeValue::Permission,
        &to,
    );
    a.description = format!("Active assignment of the directory role {name}");
    let mut out = vec![a];
    if pim {
        let mut e = builders::entitlement(
            r,
            "eligible",
            &format!("{name} (eligible)"),
            PurposeValue::Permission,
            &to,
        );
        e.description = format!("PIM eligibility for the directory role {name}");
        out.push(e);
    }
    out
}
