//! Provisioning: grant and revoke group membership and ownership, enterprise application assignments and
//! ownership, and directory roles (active and PIM-eligible), safe to repeat and to retry.
//!
//! Invariants:
//! * Nothing is written unless provisioning is enabled ([`EntraConfig::provisioning`](crate::EntraConfig)).
//! * Refusals come before any write and change nothing (removing a group member, where Graph refuses the
//!   same cases, is explained by the same checks after its refusal): dynamic and on-premises synced groups, a principal
//!   type the entitlement cannot take (or an id that is not of that type), an app role that the app does not
//!   define or that does not accept the principal type, a group that is not role-assignable, a group's last
//!   owner. A 403 names the write permission to grant.
//! * Idempotence: the state is read first; what is held is reported "already held", what is absent "already
//!   absent". A duplicate (or absent) answer to the write itself — someone else was faster — is reported
//!   the same way. Group membership is the exception to reading first: its list is as long as the group
//!   (a 100,000-member group would cost 100 pages per change), and Graph's answer to the write says the
//!   same — a duplicate member on add, 404 on remove — so the write goes first.
//! * Retries never double-apply: [`Client::write`](steward_msgraph::Client::write) resends only what
//!   certainly did not reach the service; when an answer is lost (reset, timeout, 5xx), the state is read
//!   back, and the write is sent again only if it did not apply. A duplicate answer after a lost one means
//!   our own earlier attempt applied.
//! * Time-bound access: an end time is enforced by Microsoft for directory roles (active through a PIM
//!   assignment schedule request, eligible through an eligibility schedule request). Other entitlements have
//!   no native expiry: [`Change::end_in_tenant`] is false and the platform revokes on time.

use serde_json::{Value, json};
use steward_model::{ResourceId, ids};
use steward_msgraph::retry::backoff;
use steward_msgraph::{Error as GraphError, WriteMethod, Written};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::connector::Entra;
use crate::error::EntraError;
use crate::index::Kind;
use crate::{apps, types};

/// Writes whose answer is lost are read back and resent at most this many times.
const UNCONFIRMED_ATTEMPTS: u32 = 6;

/// Options of a grant.
#[derive(Debug, Clone, Default)]
pub struct GrantOptions {
    /// When the access ends (RFC 3339, in the future). Enforced by Microsoft for directory roles; for
    /// other entitlements the caller (the platform) must revoke on time — see [`Change::end_in_tenant`].
    pub end: Option<String>,
    /// Justification recorded with PIM schedule requests (default: "Granted by Steward").
    pub justification: Option<String>,
}

/// What a grant or revoke did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The principal now holds the entitlement, and did not before.
    Granted,
    /// The principal already held the entitlement: nothing was written.
    AlreadyHeld,
    /// The principal no longer holds the entitlement, and did before.
    Revoked,
    /// The principal did not hold the entitlement: nothing was written.
    AlreadyAbsent,
}

impl Outcome {
    /// Whether the tenant changed.
    pub fn changed(self) -> bool {
        matches!(self, Outcome::Granted | Outcome::Revoked)
    }

    /// Words for people.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::AlreadyHeld => "already held",
            Outcome::Revoked => "revoked",
            Outcome::AlreadyAbsent => "already absent",
        }
    }
}

/// The result of one grant or revoke.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// What happened.
    pub outcome: Outcome,
    /// `<type>:<id>:<slug>`.
    pub entitlement_id: String,
    /// The principal, `<type>:<id>`.
    pub principal: String,
    /// `<entitlement>:<principal type>:<principal id>`.
    pub grant_id: String,
    /// The resource whose grants changed (sync it to update the file).
    pub resource_type: String,
    /// Its id.
    pub resource_id: String,
    /// The end time asked for, if any.
    pub end: Option<String>,
    /// Whether Microsoft itself ends the access at `end` (directory roles); otherwise the platform must.
    pub end_in_tenant: bool,
    /// Whether an answer was lost and the outcome was established by reading the tenant back.
    pub read_back: bool,
}

impl Change {
    /// The affected resource.
    pub fn resource(&self) -> ResourceId {
        ResourceId::new(&self.resource_type, &self.resource_id)
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.outcome.as_str(),
            self.grant_id,
            self.principal
        )?;
        if let Some(e) = &self.end {
            if self.end_in_tenant {
                write!(f, "; ends {e} (enforced by Microsoft)")?;
            } else {
                write!(
                    f,
                    "; ends {e} (no native expiry for this entitlement: the platform revokes it then)"
                )?;
            }
        }
        if self.read_back {
            write!(
                f,
                "; an answer was lost, the outcome was read back from the tenant"
            )?;
        }
        Ok(())
    }
}

/// What an entitlement id stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `group:<id>:member`.
    GroupMember(String),
    /// `group:<id>:owner`.
    GroupOwner(String),
    /// `enterprise_application:<id>:owner`.
    AppOwner(String),
    /// `enterprise_application:<id>:assignment:<appRoleId>`.
    AppAssignment {
        /// The service principal.
        sp: String,
        /// The app role (nil = default access).
        role: String,
    },
    /// `role:<id>:assigned`.
    RoleAssigned(String),
    /// `role:<id>:eligible`.
    RoleEligible(String),
}

impl Target {
    /// Parses an entitlement id of this connector.
    pub fn parse(entitlement_id: &str) -> Result<(ResourceId, Target), EntraError> {
        let mut it = entitlement_id.splitn(3, ':');
        let (rt, rid, slug) = match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c)) if !b.is_empty() => (a, b.to_owned(), c),
            _ => {
                return Err(EntraError::Refused(format!(
                    "'{entitlement_id}' is not an entitlement id (<resource type>:<resource id>:<slug>, e.g. group:<id>:member)"
                )));
            }
        };
        let t = match (rt, slug) {
            (types::GROUP, "member") => Target::GroupMember(rid.clone()),
            (types::GROUP, "owner") => Target::GroupOwner(rid.clone()),
            (types::APP, "owner") => Target::AppOwner(rid.clone()),
            (types::APP, s) if s.starts_with("assignment:") => Target::AppAssignment {
                sp: rid.clone(),
                role: s["assignment:".len()..].to_owned(),
            },
            (types::ROLE, "assigned") => Target::RoleAssigned(rid.clone()),
            (types::ROLE, "eligible") => Target::RoleEligible(rid.clone()),
            (types::LICENSE, _) => {
                return Err(EntraError::Refused(format!(
                    "{entitlement_id}: licenses are not provisioned by the Entra ID connector (assign them through a group with group-based licensing, or in the Microsoft 365 admin center)"
                )));
            }
            _ => {
                return Err(EntraError::Refused(format!(
                    "{entitlement_id}: the Entra ID connector provisions group member/owner, enterprise_application owner/assignment:<appRoleId> and role assigned/eligible, not this entitlement"
                )));
            }
        };
        Ok((ResourceId::new(rt, &rid), t))
    }

    /// The principal kinds this entitlement can take.
    pub fn allowed(&self) -> &'static [Kind] {
        match self {
            Target::GroupMember(_) | Target::AppAssignment { .. } | Target::RoleAssigned(_) => {
                &[Kind::User, Kind::Group, Kind::App, Kind::ManagedIdentity]
            }
            Target::GroupOwner(_) | Target::AppOwner(_) => &[Kind::User, Kind::App, Kind::ManagedIdentity],
            Target::RoleEligible(_) => &[Kind::User, Kind::Group],
        }
    }
}

/// The principal kind of a resource type.
pub fn kind_of(resource_type: &str) -> Option<Kind> {
    match resource_type {
        types::USER => Some(Kind::User),
        types::GROUP => Some(Kind::Group),
        types::APP => Some(Kind::App),
        types::MANAGED_IDENTITY => Some(Kind::ManagedIdentity),
        _ => None,
    }
}

/// Splits a grant id `<type>:<id>:<slug>:<principal type>:<principal id>` into entitlement and principal.
pub fn split_grant_id(grant_id: &str) -> Result<(String, ResourceId), EntraError> {
    let mut it = grant_id.rsplitn(3, ':');
    match (it.next(), it.next(), it.next()) {
        (Some(pid), Some(pt), Some(ent)) if !pid.is_empty() && kind_of(pt).is_some() => {
            Ok((ent.to_owned(), ResourceId::new(pt, pid)))
        }
        _ => Err(EntraError::Refused(format!(
            "'{grant_id}' is not a grant id of this connector (<entitlement id>:<principal type>:<principal id>)"
        ))),
    }
}

fn collection(k: Kind) -> &'static str {
    match k {
        Kind::User => "users",
        Kind::Group => "groups",
        Kind::App | Kind::ManagedIdentity => "servicePrincipals",
    }
}

fn is_duplicate(e: &GraphError) -> bool {
    match e {
        GraphError::Http { code, message, .. } => {
            code == "RoleAssignmentExists"
                || message.contains("already exist")
                || message.contains("conflicting object")
        }
        _ => false,
    }
}

fn is_absent(e: &GraphError) -> bool {
    match e {
        GraphError::NotFound { .. } => true,
        GraphError::Http { code, .. } => code == "RoleAssignmentDoesNotExist",
        _ => false,
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn check_end(end: &str) -> Result<(), EntraError> {
    let t = OffsetDateTime::parse(end, &Rfc3339).map_err(|_| {
        EntraError::Refused(format!(
            "end time '{end}' is not an RFC 3339 date and time (e.g. 2026-12-31T17:00:00Z)"
        ))
    })?;
    if t <= OffsetDateTime::now_utc() {
        return Err(EntraError::Refused(format!("end time {end} is in the past")));
    }
    Ok(())
}

struct Req {
    method: WriteMethod,
    path: String,
    body: Option<Value>,
}

impl Entra {
    fn ensure_provisioning(&self) -> Result<(), EntraError> {
        if self.config().provisioning {
            Ok(())
        } else {
            Err(EntraError::ProvisioningDisabled)
        }
    }

    /// Grants `entitlement_id` to `principal` (`user:<id>`, `group:<id>`, `enterprise_application:<id>`,
    /// `managed_identity:<id>`). See the module docs for the guarantees.
    pub async fn grant_entitlement(
        &self,
        entitlement_id: &str,
        principal: &ResourceId,
        opts: &GrantOptions,
    ) -> Result<Change, EntraError> {
        self.ensure_provisioning()?;
        let (resource, target) = Target::parse(entitlement_id)?;
        let kind = self.principal_kind(&target, principal, entitlement_id).await?;
        if let Some(e) = &opts.end {
            check_end(e)?;
        }
        let pid = principal.resource.as_str();
        self.refusals(&target, kind, pid, true).await?;
        let end_in_tenant =
            opts.end.is_some() && matches!(target, Target::RoleAssigned(_) | Target::RoleEligible(_));
        let mut change = Change {
            outcome: Outcome::AlreadyHeld,
            entitlement_id: entitlement_id.to_owned(),
            principal: principal.to_string(),
            grant_id: ids::grant_id(entitlement_id, &principal.resource_type, pid),
            resource_type: resource.resource_type.clone(),
            resource_id: resource.resource.clone(),
            end: opts.end.clone(),
            end_in_tenant,
            read_back: false,
        };
        if !matches!(target, Target::GroupMember(_)) && self.holds(&target, kind, pid).await?.is_some() {
            return Ok(change);
        }
        let req = self.grant_request(&target, pid, opts);
        let (changed, read_back) = self.confirmed(&req, &target, kind, pid, true).await?;
        change.outcome = if changed {
            Outcome::Granted
        } else {
            Outcome::AlreadyHeld
        };
        change.read_back = read_back;
        if changed {
            self.forget_roles(&target).await;
        }
        tracing::info!(%change, "grant");
        Ok(change)
    }

    /// Revokes grant `grant_id` (`<entitlement id>:<principal type>:<principal id>`).
    pub async fn revoke_grant(&self, grant_id: &str) -> Result<Change, EntraError> {
        let (ent, principal) = split_grant_id(grant_id)?;
        self.revoke_entitlement(&ent, &principal).await
    }

    /// Removes `entitlement_id` from `principal`. See the module docs for the guarantees.
    pub async fn revoke_entitlement(
        &self,
        entitlement_id: &str,
        principal: &ResourceId,
    ) -> Result<Change, EntraError> {
        self.ensure_provisioning()?;
        let (resource, target) = Target::parse(entitlement_id)?;
        let kind = kind_of(&principal.resource_type).ok_or_else(|| {
            EntraError::Refused(format!(
                "'{}' is not a principal type of the Entra ID connector (user, group, enterprise_application, managed_identity)",
                principal.resource_type
            ))
        })?;
        let pid = principal.resource.as_str();
        // Removing a group member: the removal is tried first and only a refused one is explained by the
        // checks (one request per removal instead of two; Graph's refusal changes nothing either).
        let check_after = matches!(target, Target::GroupMember(_));
        if !check_after {
            self.refusals(&target, kind, pid, false).await?;
        }
        let mut change = Change {
            outcome: Outcome::AlreadyAbsent,
            entitlement_id: entitlement_id.to_owned(),
            principal: principal.to_string(),
            grant_id: ids::grant_id(entitlement_id, &principal.resource_type, pid),
            resource_type: resource.resource_type.clone(),
            resource_id: resource.resource.clone(),
            end: None,
            end_in_tenant: false,
            read_back: false,
        };
        let held_id = match &target {
            // Removing a member is keyed by the member's own id; 404 means it was not a member.
            Target::GroupMember(_) => pid.to_owned(),
            _ => match self.holds(&target, kind, pid).await? {
                Some(id) => id,
                None => return Ok(change),
            },
        };
        if let Target::GroupOwner(g) = &target {
            let owners = self
                .graph()
                .get_all(&format!("/v1.0/groups/{g}/owners?$select=id&$top=999"), false)
                .await?;
            if owners.len() <= 1 {
                return Err(EntraError::Refused(format!(
                    "{grant_id}: {principal} is the last owner of group {g}; Entra ID requires at least one owner — add another owner first",
                    grant_id = change.grant_id
                )));
            }
        }
        let req = self.revoke_request(&target, pid, &held_id);
        let (changed, read_back) = match self.confirmed(&req, &target, kind, pid, false).await {
            // Without Entra ID P2 there is no PIM: remove the assignment object itself.
            Err(EntraError::Refused(m)) if matches!(target, Target::RoleAssigned(_)) && m.contains("P2") => {
                let del = Req {
                    method: WriteMethod::Delete,
                    path: format!("/v1.0/roleManagement/directory/roleAssignments/{held_id}"),
                    body: None,
                };
                self.confirmed(&del, &target, kind, pid, false).await?
            }
            Err(e) if check_after => {
                self.refusals(&target, kind, pid, false).await?;
                return Err(e);
            }
            r => r?,
        };
        change.outcome = if changed {
            Outcome::Revoked
        } else {
            Outcome::AlreadyAbsent
        };
        change.read_back = read_back;
        if changed {
            self.forget_roles(&target).await;
        }
        tracing::info!(%change, "revoke");
        Ok(change)
    }

    /// Checks the principal type against the entitlement and the principal's id against the tenant.
    async fn principal_kind(
        &self,
        target: &Target,
        principal: &ResourceId,
        entitlement_id: &str,
    ) -> Result<Kind, EntraError> {
        let kind = kind_of(&principal.resource_type).ok_or_else(|| {
            EntraError::Refused(format!(
                "'{}' is not a principal type of the Entra ID connector (user, group, enterprise_application, managed_identity)",
                principal.resource_type
            ))
        })?;
        if !target.allowed().contains(&kind) {
            let names: Vec<&str> = target.allowed().iter().map(|k| k.resource_type()).collect();
            return Err(EntraError::Refused(format!(
                "{entitlement_id} cannot be granted to a {}: it takes {}",
                principal.resource_type,
                names.join(", ")
            )));
        }
        let pid = &principal.resource;
        let path = match kind {
            Kind::User => format!("/v1.0/users/{pid}?$select=id"),
            Kind::Group => format!("/v1.0/groups/{pid}?$select=id"),
            Kind::App | Kind::ManagedIdentity => {
                format!("/v1.0/servicePrincipals/{pid}?$select=id,servicePrincipalType")
            }
        };
        let v = match self.graph().get_json(&path, false).await {
            Ok(v) => v,
            Err(GraphError::NotFound { .. }) => {
                return Err(EntraError::Refused(format!(
                    "{principal} does not exist in the tenant (no {} with id {pid})",
                    collection(kind).trim_end_matches('s')
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let mi = v["servicePrincipalType"].as_str() == Some("ManagedIdentity");
        match kind {
            Kind::ManagedIdentity if !mi => Err(EntraError::Refused(format!(
                "{principal} is not a managed identity: use enterprise_application:{pid}"
            ))),
            Kind::App if mi => Err(EntraError::Refused(format!(
                "{principal} is a managed identity: use managed_identity:{pid}"
            ))),
            _ => Ok(kind),
        }
    }

    /// Refusals that depend on the tenant: group kind, app roles, role-assignable groups.
    async fn refusals(
        &self,
        target: &Target,
        kind: Kind,
        pid: &str,
        granting: bool,
    ) -> Result<(), EntraError> {
        match target {
            Target::GroupMember(g) | Target::GroupOwner(g) => {
                let v = self
                    .graph()
                    .get_json(
                        &format!(
                            "/v1.0/groups/{g}?$select=id,displayName,groupTypes,membershipRule,onPremisesSyncEnabled,isAssignableToRole"
                        ),
                        false,
                    )
                    .await?;
                let name = v["displayName"].as_str().unwrap_or(g);
                if v["onPremisesSyncEnabled"].as_bool() == Some(true) {
                    return Err(EntraError::Refused(format!(
                        "group '{name}' ({g}) is synced from on-premises Active Directory: its {} are managed there, not in the cloud",
                        if matches!(target, Target::GroupMember(_)) {
                            "members"
                        } else {
                            "owners"
                        }
                    )));
                }
                let dynamic = v["groupTypes"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x.as_str() == Some("DynamicMembership")))
                    || v["membershipRule"].as_str().is_some_and(|r| !r.is_empty());
                let member = matches!(target, Target::GroupMember(_));
                if member && granting && kind == Kind::Group && pid == g {
                    return Err(EntraError::Refused(format!(
                        "group '{name}' ({g}) cannot be a member of itself"
                    )));
                }
                if member
                    && granting
                    && kind == Kind::Group
                    && v["isAssignableToRole"].as_bool() == Some(true)
                {
                    return Err(EntraError::Refused(format!(
                        "group '{name}' ({g}) is role-assignable: Entra ID does not allow groups as members of role-assignable groups"
                    )));
                }
                if dynamic && member {
                    return Err(EntraError::Refused(format!(
                        "group '{name}' ({g}) has dynamic membership (rule: {}): Entra ID computes its members; change the rule or the principal's attributes instead",
                        v["membershipRule"].as_str().unwrap_or("?")
                    )));
                }
            }
            Target::AppAssignment { sp, role } if granting => {
                let v = self
                    .graph()
                    .get_json(
                        &format!("/v1.0/servicePrincipals/{sp}?$select=id,displayName,appRoles"),
                        false,
                    )
                    .await?;
                let name = v["displayName"].as_str().unwrap_or(sp);
                if role != apps::DEFAULT_ACCESS {
                    let roles = v["appRoles"].as_array().cloned().unwrap_or_default();
                    let Some(r) = roles.iter().find(|r| r["id"].as_str() == Some(role.as_str())) else {
                        return Err(EntraError::Refused(format!(
                            "the app '{name}' ({sp}) defines no app role {role}"
                        )));
                    };
                    if r["isEnabled"].as_bool() == Some(false) {
                        return Err(EntraError::Refused(format!(
                            "the app role {} of '{name}' is disabled",
                            r["value"].as_str().or(r["displayName"].as_str()).unwrap_or(role)
                        )));
                    }
                    let wanted = match kind {
                        Kind::User | Kind::Group => "User",
                        Kind::App | Kind::ManagedIdentity => "Application",
                    };
                    let allowed = r["allowedMemberTypes"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|m| m.as_str() == Some(wanted)));
                    if !allowed {
                        return Err(EntraError::Refused(format!(
                            "the app role {} of '{name}' cannot be assigned to a {}: its allowedMemberTypes are {}",
                            r["value"].as_str().or(r["displayName"].as_str()).unwrap_or(role),
                            kind.resource_type(),
                            r["allowedMemberTypes"]
                        )));
                    }
                }
            }
            Target::RoleAssigned(_) | Target::RoleEligible(_) if granting && kind == Kind::Group => {
                let v = self
                    .graph()
                    .get_json(
                        &format!("/v1.0/groups/{pid}?$select=id,displayName,isAssignableToRole"),
                        false,
                    )
                    .await?;
                if v["isAssignableToRole"].as_bool() != Some(true) {
                    return Err(EntraError::Refused(format!(
                        "group '{}' ({pid}) is not role-assignable: only groups created with isAssignableToRole can hold directory roles",
                        v["displayName"].as_str().unwrap_or(pid)
                    )));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `pid` holds `target` now; the id to remove it by (assignment id, or the principal id).
    pub async fn holds(&self, target: &Target, kind: Kind, pid: &str) -> Result<Option<String>, EntraError> {
        let g = self.graph();
        let in_list = |list: Vec<Value>| {
            list.iter()
                .any(|o| o["id"].as_str() == Some(pid))
                .then(|| pid.to_owned())
        };
        Ok(match target {
            Target::GroupMember(x) => in_list(
                g.get_all(&format!("/v1.0/groups/{x}/members?$select=id&$top=999"), false)
                    .await?,
            ),
            Target::GroupOwner(x) => in_list(
                g.get_all(&format!("/v1.0/groups/{x}/owners?$select=id&$top=999"), false)
                    .await?,
            ),
            Target::AppOwner(x) => in_list(
                g.get_all(
                    &format!("/v1.0/servicePrincipals/{x}/owners?$select=id&$top=999"),
                    false,
                )
                .await?,
            ),
            Target::AppAssignment { sp, role } => {
                let list = g
                    .get_all(
                        &format!(
                            "/v1.0/{}/{pid}/appRoleAssignments?$select=id,appRoleId,resourceId&$top=999",
                            collection(kind)
                        ),
                        false,
                    )
                    .await?;
                list.iter()
                    .find(|a| {
                        a["resourceId"].as_str() == Some(sp.as_str())
                            && a["appRoleId"].as_str().unwrap_or(apps::DEFAULT_ACCESS) == role
                    })
                    .and_then(|a| a["id"].as_str().map(str::to_owned))
            }
            Target::RoleAssigned(r) => {
                let list = g
                    .get_all(
                        &format!(
                            "/v1.0/roleManagement/directory/roleAssignments?$filter=principalId eq '{pid}'"
                        ),
                        false,
                    )
                    .await?;
                list.iter()
                    .find(|a| {
                        a["principalId"].as_str() == Some(pid)
                            && a["roleDefinitionId"].as_str() == Some(r.as_str())
                            && a["directoryScopeId"].as_str().unwrap_or("/") == "/"
                    })
                    .and_then(|a| a["id"].as_str().map(str::to_owned))
            }
            Target::RoleEligible(r) => {
                let list = g
                    .get_all(
                        &format!(
                            "/v1.0/roleManagement/directory/roleEligibilitySchedules?$filter=principalId eq '{pid}'"
                        ),
                        false,
                    )
                    .await?;
                list.iter()
                    .find(|a| {
                        a["principalId"].as_str() == Some(pid)
                            && a["roleDefinitionId"].as_str() == Some(r.as_str())
                            && a["directoryScopeId"].as_str().unwrap_or("/") == "/"
                    })
                    .map(|a| a["id"].as_str().unwrap_or(pid).to_owned())
            }
        })
    }

    fn grant_request(&self, target: &Target, pid: &str, opts: &GrantOptions) -> Req {
        let reference = json!({
            "@odata.id": format!("https://{}/v1.0/directoryObjects/{pid}", self.config().graph_domain)
        });
        let justification = opts
            .justification
            .clone()
            .unwrap_or_else(|| "Granted by Steward".into());
        let schedule = |end: &Option<String>| {
            let expiration = match end {
                Some(e) => json!({"type": "afterDateTime", "endDateTime": e}),
                None => json!({"type": "noExpiration"}),
            };
            json!({"startDateTime": now_rfc3339(), "expiration": expiration})
        };
        match target {
            Target::GroupMember(g) => Req {
                method: WriteMethod::Post,
                path: format!("/v1.0/groups/{g}/members/$ref"),
                body: Some(reference),
            },
            Target::GroupOwner(g) => Req {
                method: WriteMethod::Post,
                path: format!("/v1.0/groups/{g}/owners/$ref"),
                body: Some(reference),
            },
            Target::AppOwner(sp) => Req {
                method: WriteMethod::Post,
                path: format!("/v1.0/servicePrincipals/{sp}/owners/$ref"),
                body: Some(reference),
            },
            Target::AppAssignment { sp, role } => Req {
                method: WriteMethod::Post,
                path: format!("/v1.0/servicePrincipals/{sp}/appRoleAssignedTo"),
                body: Some(json!({"principalId": pid, "resourceId": sp, "appRoleId": role})),
            },
            Target::RoleAssigned(r) if opts.end.is_some() => Req {
                method: WriteMethod::Post,
                path: "/v1.0/roleManagement/directory/roleAssignmentScheduleRequests".into(),
                body: Some(json!({
                    "action": "adminAssign", "justification": justification, "roleDefinitionId": r,
                    "directoryScopeId": "/", "principalId": pid, "scheduleInfo": schedule(&opts.end),
                })),
            },
            Target::RoleAssigned(r) => Req {
                method: WriteMethod::Post,
                path: "/v1.0/roleManagement/directory/roleAssignments".into(),
                body: Some(json!({"roleDefinitionId": r, "principalId": pid, "directoryScopeId": "/"})),
            },
            Target::RoleEligible(r) => Req {
                method: WriteMethod::Post,
                path: "/v1.0/roleManagement/directory/roleEligibilityScheduleRequests".into(),
                body: Some(json!({
                    "action": "adminAssign", "justification": justification, "roleDefinitionId": r,
                    "directoryScopeId": "/", "principalId": pid, "scheduleInfo": schedule(&opts.end),
                })),
            },
        }
    }

    fn revoke_request(&self, target: &Target, pid: &str, held_id: &str) -> Req {
        let delete = |path: String| Req {
            method: WriteMethod::Delete,
            path,
            body: None,
        };
        match target {
            Target::GroupMember(g) => delete(format!("/v1.0/groups/{g}/members/{pid}/$ref")),
            Target::GroupOwner(g) => delete(format!("/v1.0/groups/{g}/owners/{pid}/$ref")),
            Target::AppOwner(sp) => delete(format!("/v1.0/servicePrincipals/{sp}/owners/{pid}/$ref")),
            Target::AppAssignment { sp, .. } => delete(format!(
                "/v1.0/servicePrincipals/{sp}/appRoleAssignedTo/{held_id}"
            )),
            // Through PIM, so that assignments PIM manages (time-bound ones included) end cleanly; without
            // P2 the caller falls back to deleting the assignment.
            Target::RoleAssigned(r) => Req {
                method: WriteMethod::Post,
                path: "/v1.0/roleManagement/directory/roleAssignmentScheduleRequests".into(),
                body: Some(json!({
                    "action": "adminRemove", "justification": "Revoked by Steward", "roleDefinitionId": r,
                    "directoryScopeId": "/", "principalId": pid,
                })),
            },
            Target::RoleEligible(r) => Req {
                method: WriteMethod::Post,
                path: "/v1.0/roleManagement/directory/roleEligibilityScheduleRequests".into(),
                body: Some(json!({
                    "action": "adminRemove", "justification": "Revoked by Steward", "roleDefinitionId": r,
                    "directoryScopeId": "/", "principalId": pid,
                })),
            },
        }
    }

    /// Sends `req` until the tenant is known to be in the wanted state (`want_held`). Returns whether this
    /// call changed the tenant, and whether an answer was lost and read back.
    async fn confirmed(
        &self,
        req: &Req,
        target: &Target,
        kind: Kind,
        pid: &str,
        want_held: bool,
    ) -> Result<(bool, bool), EntraError> {
        let mut lost = 0u32;
        loop {
            match self.graph().write(req.method, &req.path, req.body.as_ref()).await {
                Ok(Written::Done(_)) => return Ok((true, lost > 0)),
                Ok(Written::Unconfirmed(msg)) => {
                    lost += 1;
                    tracing::warn!("{msg}: reading the tenant back to see whether it applied");
                    let held = self.holds(target, kind, pid).await?.is_some();
                    if held == want_held {
                        return Ok((true, true));
                    }
                    if lost >= UNCONFIRMED_ATTEMPTS {
                        return Err(EntraError::Graph(GraphError::Transient {
                            what: format!("{} {}", req.method.as_str(), req.path),
                            attempts: lost,
                            message: msg,
                        }));
                    }
                    tokio::time::sleep(backoff(lost)).await;
                }
                // Someone else (or our own lost attempt) got there first.
                Err(e) if want_held && is_duplicate(&e) => return Ok((lost > 0, lost > 0)),
                Err(e) if !want_held && is_absent(&e) => return Ok((lost > 0, lost > 0)),
                Err(e) => return Err(self.explain(e, target)),
            }
        }
    }

    /// Adds what the refusals above could not see (e.g. the service's own refusal words).
    fn explain(&self, e: GraphError, target: &Target) -> EntraError {
        match &e {
            GraphError::PremiumLicenseRequired { message } => EntraError::Refused(format!(
                "the tenant has no Microsoft Entra ID P2 (or ID Governance) license: PIM schedule requests ({}) need one: {message}",
                match target {
                    Target::RoleEligible(_) => "eligible roles",
                    _ => "time-bound or PIM-managed active roles",
                }
            )),
            GraphError::Http {
                status: 400, message, ..
            } if message.contains("at least one owner")
                || message.contains("dynamic membership")
                || message.contains("on-premises mastered")
                || message.contains("not role-assignable")
                || message.contains("not assignable") =>
            {
                EntraError::Refused(message.clone())
            }
            _ => EntraError::Graph(e),
        }
    }

    async fn forget_roles(&self, target: &Target) {
        if matches!(target, Target::RoleAssigned(_) | Target::RoleEligible(_)) {
            self.reset_role_holders().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse() {
        let (r, t) =
            Target::parse("enterprise_application:s1:assignment:r1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r, ResourceId::new("enterprise_application", "s1"));
        assert_eq!(
            t,
            Target::AppAssignment {
                sp: "s1".into(),
                role: "r1".into()
            }
        );
        assert!(Target::parse("license:x:assigned").is_err());
        assert!(Target::parse("nonsense").is_err());
        let (e, p) = split_grant_id("group:g1:member:user:u1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (e.as_str(), p),
            ("group:g1:member", ResourceId::new("user", "u1"))
        );
        assert!(split_grant_id("group:g1:member").is_err());
        assert!(check_end("2000-01-01T00:00:00Z").is_err());
        assert!(check_end("2999-01-01T00:00:00Z").is_ok());
    }
}
