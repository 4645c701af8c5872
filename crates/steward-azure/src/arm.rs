//! What is read from Azure Resource Manager, and the per-subscription snapshot that role entitlements and
//! grants are computed from.
//!
//! One role-assignment listing per subscription (no filter: ARM returns the assignments at the
//! subscription, below it and above it) and one PIM eligibility listing answer every scope of that
//! subscription, so no request is made per scope or per assignment. Each subscription gets its own
//! [`Client`] — ARM's buckets are per principal and subscription — so subscriptions are read concurrently,
//! each at its own bucket's pace.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use steward_msgraph::{Client, Error as MsError};
use tokio::sync::OnceCell;

use crate::error::AzureError;
use crate::scope;

/// api-version of tenants, subscriptions and resource groups.
pub const RESOURCES_API: &str = "2022-12-01";
/// api-version of resource group listings.
pub const GROUPS_API: &str = "2021-04-01";
/// api-version of role definitions and assignments.
pub const AUTHZ_API: &str = "2022-04-01";
/// api-version of PIM eligibility schedule instances.
pub const PIM_API: &str = "2020-10-01";
/// api-version of storage accounts and blob containers.
pub const STORAGE_API: &str = "2023-05-01";
/// api-version of user-assigned identities.
pub const MSI_API: &str = "2024-11-30";

/// A role definition available in a subscription.
#[derive(Debug, Clone)]
pub struct RoleDef {
    /// GUID, lower case.
    pub guid: String,
    /// ARM id in the subscription, canonical.
    pub arm_id: String,
    /// `roleName`.
    pub name: String,
    /// `description`.
    pub description: String,
    /// `CustomRole` (else built-in).
    pub custom: bool,
}

/// An active or PIM-eligible role assignment.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// ARM id of the assignment (or eligibility instance), canonical.
    pub id: String,
    /// The scope it is assigned at, canonical.
    pub scope: String,
    /// Role definition GUID, lower case.
    pub role: String,
    /// Principal object id, lower case.
    pub principal: String,
    /// `principalType` as ARM says.
    pub principal_type: String,
    /// PIM-eligible (not active).
    pub eligible: bool,
}

impl Assignment {
    fn from_json(v: &Value, eligible: bool) -> Option<Assignment> {
        let p = &v["properties"];
        Some(Assignment {
            id: scope::canonical(v["id"].as_str()?),
            scope: scope::canonical(p["scope"].as_str()?),
            role: scope::last_segment(p["roleDefinitionId"].as_str()?),
            principal: p["principalId"].as_str()?.to_ascii_lowercase(),
            principal_type: p["principalType"].as_str().unwrap_or_default().to_owned(),
            eligible,
        })
    }
}

/// Everything role-related of one subscription.
#[derive(Debug, Default)]
pub struct SubData {
    /// Role definitions available there.
    pub roles: Vec<RoleDef>,
    /// Role names by GUID.
    pub names: HashMap<String, String>,
    /// Assignments at, below and above the subscription (eligible ones too unless skipped).
    pub assignments: Vec<Assignment>,
    /// Eligibility could not be read because the tenant has no Entra ID P2.
    pub p2_missing: bool,
}

impl SubData {
    /// Reads role definitions, assignments and (unless `skip_p2`) eligibilities of subscription `sub`.
    pub async fn load(arm: &Client, sub: &str, skip_p2: bool) -> Result<SubData, AzureError> {
        let base = format!("/subscriptions/{sub}/providers/Microsoft.Authorization");
        let defs = format!("{base}/roleDefinitions?api-version={AUTHZ_API}");
        let assigned = format!("{base}/roleAssignments?api-version={AUTHZ_API}");
        let eligible = format!("{base}/roleEligibilityScheduleInstances?api-version={PIM_API}");
        let (defs, assigned, eligible) =
            futures::join!(arm.get_all(&defs, false), arm.get_all(&assigned, false), async {
                if skip_p2 {
                    Ok(Vec::new())
                } else {
                    arm.get_all(&eligible, false).await
                }
            });
        let (defs, assigned) = (defs?, assigned?);
        let (eligible, p2_missing) = match eligible {
            Ok(v) => (v, false),
            Err(MsError::PremiumLicenseRequired { .. }) => (Vec::new(), true),
            Err(e) => return Err(e.into()),
        };
        let mut d = SubData {
            p2_missing,
            ..SubData::default()
        };
        for v in &defs {
            let Some(arm_id) = v["id"].as_str() else { continue };
            let p = &v["properties"];
            let r = RoleDef {
                guid: scope::last_segment(arm_id),
                arm_id: scope::canonical(arm_id),
                name: p["roleName"].as_str().unwrap_or_default().to_owned(),
                description: p["description"].as_str().unwrap_or_default().to_owned(),
                custom: p["type"].as_str() == Some("CustomRole"),
            };
            d.names.insert(r.guid.clone(), r.name.clone());
            d.roles.push(r);
        }
        d.assignments = assigned
            .iter()
            .filter_map(|v| Assignment::from_json(v, false))
            .chain(eligible.iter().filter_map(|v| Assignment::from_json(v, true)))
            .collect();
        Ok(d)
    }

    /// Assignments at or above `scope`.
    pub fn at_or_above<'a>(&'a self, scope: &'a str) -> impl Iterator<Item = &'a Assignment> + 'a {
        self.assignments
            .iter()
            .filter(move |a| scope::covers(&a.scope, scope))
    }

    /// GUIDs of roles assigned (actively or eligibly) anywhere in or above the subscription.
    pub fn used_roles(&self) -> HashSet<&str> {
        self.assignments.iter().map(|a| a.role.as_str()).collect()
    }

    /// A role's display name (its GUID if the subscription does not define it).
    pub fn name<'a>(&'a self, guid: &'a str) -> &'a str {
        self.names.get(guid).map_or(guid, String::as_str)
    }
}

/// Values computed once per key (subscription), concurrently for different keys.
#[derive(Debug)]
pub struct PerKey<T>(Mutex<HashMap<String, Arc<OnceCell<Arc<T>>>>>);

impl<T> Default for PerKey<T> {
    fn default() -> Self {
        PerKey(Mutex::new(HashMap::new()))
    }
}

impl<T> PerKey<T> {
    /// The cell of `key`.
    pub fn cell(&self, key: &str) -> Arc<OnceCell<Arc<T>>> {
        let mut m = match self.0.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(key.to_ascii_lowercase()).or_default().clone()
    }

    /// Forgets the value of `key`: the next [`cell`](Self::cell) computes it again.
    pub fn forget(&self, key: &str) {
        let mut m = match self.0.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.remove(&key.to_ascii_lowercase());
    }
}
