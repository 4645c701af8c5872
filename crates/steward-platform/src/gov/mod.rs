//! Just-in-time access: access profiles, request policies, entitlement rules (what is requestable by whom),
//! the catalog, requests and approvals, and the audit log. Provisioning, expiry, drift and webhooks run as
//! durable tasks in [`worker`].
//!
//! Invariants:
//! * A request moves only forward through its states, each move a versioned [`store::Write`] together
//!   with its audit entries and the tasks it queues: a move is recorded exactly once even when several
//!   servers act on one database.
//! * Only a current approver decides a step; a requester never approves their own request unless the
//!   policy says so.
//! * Nothing is requestable without an enabled rule naming a profile the requester belongs to.

pub mod audit;
pub mod policy;
pub mod store;
pub mod types;
pub mod worker;

use std::collections::{BTreeSet, HashMap};

use serde_json::json;

use crate::error::{PlatformError, Result};
use crate::model::*;
use crate::{Platform, require};
use store::{ConfigTable, NewAudit, Task, Write};
use types::*;

/// Who an actor is in the audit log: its identity, or its token's name.
pub fn actor_label(a: &Actor) -> String {
    a.identity_id
        .clone()
        .unwrap_or_else(|| format!("token:{}", a.name))
}

fn audit(
    actor: &str,
    action: &str,
    target_type: &str,
    target_id: &str,
    detail: serde_json::Value,
) -> NewAudit {
    NewAudit {
        actor: actor.to_owned(),
        action: action.to_owned(),
        target_type: target_type.to_owned(),
        target_id: target_id.to_owned(),
        detail,
    }
}

fn everyone() -> AccessProfile {
    AccessProfile {
        id: EVERYONE.into(),
        name: "Everyone".into(),
        spec: ProfileSpec::Everyone,
        created_at: String::new(),
    }
}

impl Platform {
    pub(crate) fn event(&self, r: &mut Request, kind: &str, message: String) {
        let at = self.now();
        r.updated_at = at.clone();
        r.events.push(RequestEvent {
            at,
            kind: kind.into(),
            message,
        });
    }

    pub(crate) fn write(&self) -> Write {
        Write {
            at: self.now(),
            ..Default::default()
        }
    }

    /// Commits a write and wakes the worker when it queued tasks.
    pub(crate) async fn commit(&self, w: Write) -> Result<bool> {
        let wake = !w.tasks.is_empty();
        let ok = self.gov.commit(w).await?;
        if ok && wake {
            self.wake.notify_one();
        }
        Ok(ok)
    }

    /// Records a configuration change in the audit log.
    pub(crate) async fn audit_config(
        &self,
        a: &Actor,
        action: &str,
        target_type: &str,
        target_id: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        let mut w = self.write();
        w.audit
            .push(audit(&actor_label(a), action, target_type, target_id, detail));
        self.commit(w).await.map(|_| ())
    }

    // ---- access profiles ----

    /// Access profiles, `everyone` first (everyone signed in).
    pub async fn profiles(&self, _a: &Actor) -> Result<Vec<AccessProfile>> {
        self.profiles_all().await
    }

    /// Defines an access profile (super_admin).
    pub async fn create_profile(&self, a: &Actor, c: CreateProfile) -> Result<AccessProfile> {
        require(a, &[Role::SuperAdmin])?;
        policy::validate_profile(&c)?;
        if c.name.eq_ignore_ascii_case("everyone") {
            return Err(PlatformError::Conflict(
                "the name \"Everyone\" is the built-in profile's".into(),
            ));
        }
        let spec = match c.spec {
            ProfileSpec::Group { group } => ProfileSpec::Group {
                group: policy::group_entitlement(&group),
            },
            s => s,
        };
        let p = AccessProfile {
            id: uuid::Uuid::new_v4().to_string(),
            name: c.name,
            spec,
            created_at: self.now(),
        };
        let mut w = self.write();
        w.config.push((
            ConfigTable::Profile,
            p.id.clone(),
            p.name.clone(),
            serde_json::to_string(&p.spec).unwrap_or_default(),
        ));
        w.audit.push(audit(
            &actor_label(a),
            "profile.created",
            "access_profile",
            &p.id,
            json!(p),
        ));
        self.commit(w).await?;
        Ok(p)
    }

    async fn profile_by_ref(&self, r: &str) -> Result<AccessProfile> {
        self.profiles_all()
            .await?
            .into_iter()
            .find(|p| p.id == r || p.name.eq_ignore_ascii_case(r))
            .ok_or_else(|| PlatformError::not_found("access profile", r))
    }

    async fn profiles_all(&self) -> Result<Vec<AccessProfile>> {
        let mut v = vec![everyone()];
        v.extend(self.gov.profiles().await?);
        Ok(v)
    }

    /// The ids of the profiles `who` belongs to.
    pub async fn profiles_of(&self, who: &Identity) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for p in self.profiles_all().await? {
            let yes = match &p.spec {
                ProfileSpec::Everyone => true,
                ProfileSpec::Attribute { attributes } => policy::attributes_match(attributes, who),
                ProfileSpec::Group { group } => self.gov.entitlement_users(group).await?.contains(&who.id),
            };
            if yes {
                out.insert(p.id);
            }
        }
        Ok(out)
    }

    // ---- policies ----

    /// Policies (everyone signed in: requesters see what decides their requests).
    pub async fn policies(&self, _a: &Actor) -> Result<Vec<Policy>> {
        self.gov.policies().await
    }

    /// Creates a policy (super_admin). Identities in steps are resolved to ids and must exist.
    pub async fn create_policy(&self, a: &Actor, mut spec: PolicySpec) -> Result<Policy> {
        require(a, &[Role::SuperAdmin])?;
        policy::validate_policy(&spec)?;
        let mut steps: Vec<&mut Step> = spec.steps.iter_mut().collect();
        for r in &mut spec.rules {
            steps.extend(r.steps.iter_mut());
        }
        for s in steps {
            s.identities = self.resolve_owners(&s.identities).await?;
            s.fallback = self.resolve_owners(&s.fallback).await?;
            if let Some(g) = &s.group {
                s.group = Some(policy::group_entitlement(g));
            }
        }
        let now = self.now();
        let p = Policy {
            id: uuid::Uuid::new_v4().to_string(),
            spec,
            created_at: now.clone(),
            updated_at: now,
        };
        let mut w = self.write();
        w.config.push((
            ConfigTable::Policy,
            p.id.clone(),
            p.spec.name.clone(),
            serde_json::to_string(&p.spec).unwrap_or_default(),
        ));
        w.audit.push(audit(
            &actor_label(a),
            "policy.created",
            "policy",
            &p.id,
            json!(p),
        ));
        self.commit(w).await?;
        Ok(p)
    }

    async fn policy_by_ref(&self, r: &str) -> Result<Policy> {
        self.gov
            .policies()
            .await?
            .into_iter()
            .find(|p| p.id == r || p.spec.name == r)
            .ok_or_else(|| PlatformError::not_found("policy", r))
    }

    // ---- entitlement rules ----

    /// An app's entitlements (everyone signed in).
    pub async fn app_entitlements(&self, a: &Actor, app_id: &str) -> Result<Vec<AppEntitlement>> {
        Ok(self.app(a, app_id).await?.entitlements)
    }

    /// The entitlements of the connectors attached to an app (`app_id` on the connector): each of the
    /// connector's entitlements is one of the app's, with its IdP id as id and its resource type as kind
    /// (`role`, `group`, `license`, `subscription`, …), so that rules can make them requestable by kind.
    /// They are appended to `out` unless it already has one with the same id (the app's own come first).
    pub(crate) async fn attached_entitlements(
        &self,
        app_id: &str,
        with_holders: bool,
        out: &mut Vec<AppEntitlement>,
    ) -> Result<()> {
        let own: BTreeSet<String> = out.iter().map(|e| e.id.clone()).collect();
        for (cid, _) in self.gov.attached_connectors(app_id).await? {
            for (id, name, kind, holders) in self.gov.connector_entitlements(&cid, with_holders).await? {
                if own.contains(&id) {
                    continue;
                }
                out.push(AppEntitlement {
                    id: id.clone(),
                    name,
                    kind,
                    connector_id: Some(cid.clone()),
                    idp_entitlement_id: Some(id),
                    holders,
                });
            }
        }
        Ok(())
    }

    /// An app's own entitlements (access, app roles, virtual roles) followed by its attached connectors'.
    async fn requestable_entitlements(&self, app_id: &str) -> Result<Vec<AppEntitlement>> {
        let mut ents = self.store.app_entitlements(app_id).await?;
        self.attached_entitlements(app_id, false, &mut ents).await?;
        Ok(ents)
    }

    /// Only the Entra ID connector provisions requests (groups, app assignments, directory roles): a
    /// request whose target needs another kind of connector is refused when filed, not left to fail.
    async fn check_provisionable(&self, targets: &[Target]) -> Result<()> {
        for t in targets {
            let kind = self
                .store
                .connector(&t.connector_id)
                .await?
                .map(|c| c.connector.kind)
                .unwrap_or_default();
            if kind != "entra" {
                return Err(PlatformError::Invalid(format!(
                    "{} comes from a {kind:?} connector ({}): requests are provisioned through Entra ID \
                     connectors only so far",
                    t.entitlement, t.connector_id
                )));
            }
        }
        Ok(())
    }

    /// Makes an app's entitlements requestable (super_admin, app owner).
    pub async fn create_rule(&self, a: &Actor, app_id: &str, mut spec: RuleSpec) -> Result<EntitlementRule> {
        let app = self.app_row(app_id).await?;
        Self::require_app_admin(a, &app)?;
        if !app.managed {
            return Err(PlatformError::Conflict(format!(
                "app {app_id} is not managed: manage it first (POST /api/v1/apps/{app_id}/manage)"
            )));
        }
        let ents = self.requestable_entitlements(app_id).await?;
        let kinds: BTreeSet<String> = ents.iter().map(|e| e.kind.clone()).collect();
        policy::validate_rule(&spec, &kinds)?;
        for e in &spec.entitlements {
            if !ents.iter().any(|x| &x.id == e) {
                return Err(PlatformError::Invalid(format!(
                    "app {app_id} has no entitlement {e:?} (GET /api/v1/apps/{app_id}/entitlements lists them)"
                )));
            }
        }
        let mut profiles = Vec::new();
        for p in &spec.access_profiles {
            profiles.push(self.profile_by_ref(p).await?.id);
        }
        spec.access_profiles = profiles;
        spec.policy = self.policy_by_ref(&spec.policy).await?.id;
        let r = EntitlementRule {
            id: uuid::Uuid::new_v4().to_string(),
            app_id: app_id.to_owned(),
            spec,
            created_at: self.now(),
        };
        let mut w = self.write();
        w.config.push((
            ConfigTable::Rule,
            r.id.clone(),
            r.app_id.clone(),
            serde_json::to_string(&r.spec).unwrap_or_default(),
        ));
        w.audit.push(audit(
            &actor_label(a),
            "entitlement_rule.created",
            "app",
            app_id,
            json!(r),
        ));
        self.commit(w).await?;
        Ok(r)
    }

    /// An app's entitlement rules (everyone signed in).
    pub async fn rules(&self, _a: &Actor, app_id: &str) -> Result<Vec<EntitlementRule>> {
        self.app_row(app_id).await?;
        self.gov.rules(Some(app_id)).await
    }

    // ---- catalog ----

    async fn requester(&self, a: &Actor) -> Result<Identity> {
        let id = a.identity_id.as_deref().ok_or_else(|| {
            PlatformError::Invalid(
                "requests are made by an identity: use a user token (steward admin token create --user UPN)"
                    .into(),
            )
        })?;
        self.store
            .identity(id)
            .await?
            .ok_or_else(|| PlatformError::not_found("identity", id))
    }

    /// What the caller may request, and why.
    pub async fn catalog(&self, a: &Actor) -> Result<Vec<CatalogItem>> {
        let me = self.requester(a).await?;
        let mine = self.profiles_of(&me).await?;
        let names: HashMap<String, String> = self
            .profiles_all()
            .await?
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect();
        let policies: HashMap<String, Policy> = self
            .gov
            .policies()
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let mut by_app: HashMap<String, Vec<EntitlementRule>> = HashMap::new();
        for r in self.gov.rules(None).await? {
            by_app.entry(r.app_id.clone()).or_default().push(r);
        }
        let open: HashMap<(String, String), String> = self
            .gov
            .requests(Some(&me.id), None, 10_000, 0)
            .await?
            .into_iter()
            .filter(|r| r.state.is_open())
            .map(|r| ((r.app_id, r.entitlement), r.id))
            .collect();
        let mut out = Vec::new();
        let mut apps: Vec<_> = by_app.into_iter().collect();
        apps.sort_by(|a, b| a.0.cmp(&b.0));
        for (app_id, rules) in apps {
            let Some(app) = self.store.app(&app_id).await? else {
                continue;
            };
            if !app.managed {
                continue;
            }
            let attached: HashMap<String, String> =
                self.gov.attached_connectors(&app_id).await?.into_iter().collect();
            for e in self.requestable_entitlements(&app_id).await? {
                // Attached connectors' entitlements are offered only where requests can be provisioned.
                if let Some(c) = &e.connector_id
                    && attached.get(c).is_some_and(|k| k != "entra")
                {
                    continue;
                }
                let hit = rules.iter().find_map(|r| {
                    if !policy::rule_covers(&r.spec, &e.id, &e.kind) {
                        return None;
                    }
                    let p = r.spec.access_profiles.iter().find(|p| mine.contains(*p))?;
                    Some((r, p))
                });
                let Some((r, p)) = hit else { continue };
                let Some(pol) = policies.get(&r.spec.policy) else {
                    continue;
                };
                out.push(CatalogItem {
                    app_id: app.id.clone(),
                    app_name: app.name.clone(),
                    entitlement: e.id.clone(),
                    entitlement_name: e.name.clone(),
                    kind: e.kind.clone(),
                    policy_id: pol.id.clone(),
                    policy_name: pol.spec.name.clone(),
                    max_duration: policy::max_duration(&r.spec, &pol.spec),
                    require_justification: pol.spec.require_justification,
                    why: vec![format!(
                        "rule {} lets profile {:?} request it",
                        r.id,
                        names.get(p).cloned().unwrap_or_else(|| p.clone())
                    )],
                    open_request: open.get(&(app.id.clone(), e.id.clone())).cloned(),
                });
            }
        }
        Ok(out)
    }

    // ---- requests ----

    /// One of an app's entitlements: its own, else one of an attached connector's (looked up by id).
    async fn app_entitlement(&self, app_id: &str, ent: &str) -> Result<Option<AppEntitlement>> {
        if let Some(e) = self
            .store
            .app_entitlements(app_id)
            .await?
            .into_iter()
            .find(|e| e.id == ent)
        {
            return Ok(Some(e));
        }
        for (cid, _) in self.gov.attached_connectors(app_id).await? {
            if let Some(row) = self.store.entitlement(&cid, ent).await? {
                return Ok(Some(AppEntitlement {
                    id: row.id.clone(),
                    name: row.display_name,
                    kind: row.resource_type,
                    connector_id: Some(cid),
                    idp_entitlement_id: Some(row.id),
                    holders: 0,
                }));
            }
        }
        Ok(None)
    }

    async fn find_app_entitlement(&self, ent: &str, app: Option<&str>) -> Result<(App, AppEntitlement)> {
        if let Some(app_id) = app {
            let app = self.app_row(app_id).await?;
            let e = self
                .app_entitlement(app_id, ent)
                .await?
                .ok_or_else(|| PlatformError::not_found("app entitlement", ent))?;
            return Ok((app, e));
        }
        let mut found = Vec::new();
        for r in self.gov.rules(None).await? {
            if found
                .iter()
                .any(|(a, _): &(App, AppEntitlement)| a.id == r.app_id)
            {
                continue;
            }
            if let Some(e) = self.app_entitlement(&r.app_id, ent).await?
                && let Some(app) = self.store.app(&r.app_id).await?
            {
                found.push((app, e));
            }
        }
        match found.len() {
            0 => Err(PlatformError::not_found("requestable app entitlement", ent)),
            1 => Ok(found.remove(0)),
            _ => Err(PlatformError::Invalid(format!(
                "entitlement {ent:?} belongs to several apps ({}): pass \"app\"",
                found
                    .iter()
                    .map(|(a, _)| a.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The IdP changes that give an app entitlement: its own IdP entitlement and the IdP entitlements bound
    /// to it with `provision_for`.
    async fn targets_of(&self, app: &App, e: &AppEntitlement) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        if let (Some(c), Some(i)) = (&e.connector_id, &e.idp_entitlement_id) {
            out.push(Target {
                connector_id: c.clone(),
                entitlement: i.clone(),
                confirmed: false,
            });
        }
        if let Some(c) = &app.connector_id {
            for (idp, action, _, ae) in self.store.links(&app.id).await? {
                if action == "provision_for" && ae.as_deref() == Some(e.id.as_str()) {
                    out.push(Target {
                        connector_id: c.clone(),
                        entitlement: idp,
                        confirmed: false,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Records requests whose access is already in the tenant as `provisioned` — for load tests and
    /// benchmarks (the expiry sweep of 100,000 grants, whose provisioning one by one through the tenant would
    /// take hours) and for taking over access granted outside Steward. Each must be `provisioned` with its
    /// targets confirmed; one with `expires_at` gets its `end` task then. Written 1,000 to a transaction;
    /// each is audited as `request.imported`.
    pub async fn import_provisioned(&self, requests: Vec<Request>) -> Result<usize> {
        for r in &requests {
            if r.state != RequestState::Provisioned || r.targets.iter().any(|t| !t.confirmed) {
                return Err(PlatformError::Invalid(format!(
                    "request {} is not provisioned with every target confirmed; only such requests can be imported",
                    r.id
                )));
            }
        }
        let n = requests.len();
        for chunk in requests.chunks(1000) {
            let mut ws = Vec::with_capacity(chunk.len());
            for r in chunk {
                let mut w = self.write();
                if let Some(e) = &r.expires_at {
                    let end = time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| {
                            PlatformError::Invalid(format!(
                                "request {}: expires_at {e:?} is not RFC 3339",
                                r.id
                            ))
                        })?;
                    w.tasks.push(self.task_at(
                        "end",
                        &r.id,
                        serde_json::json!({"end_state": "expired"}),
                        end.unix_timestamp(),
                    ));
                }
                w.audit.push(NewAudit {
                    actor: "system".into(),
                    action: "request.imported".into(),
                    target_type: "request".into(),
                    target_id: r.id.clone(),
                    detail: serde_json::json!({"entitlement": r.entitlement, "requester": r.requester_id, "expires_at": r.expires_at}),
                });
                w.request = Some((r.clone(), None));
                ws.push(w);
            }
            self.gov.commit_all(&ws).await?;
        }
        self.wake.notify_one();
        Ok(n)
    }

    /// Files a request; the policy's automatic steps run at once.
    pub async fn create_request(&self, a: &Actor, c: CreateRequest) -> Result<Request> {
        let me = self.requester(a).await?;
        let (app, ent) = self
            .find_app_entitlement(&c.entitlement, c.app.as_deref())
            .await?;
        let mine = self.profiles_of(&me).await?;
        let rule = self
            .gov
            .rules(Some(&app.id))
            .await?
            .into_iter()
            .find(|r| {
                policy::rule_covers(&r.spec, &ent.id, &ent.kind)
                    && r.spec.access_profiles.iter().any(|p| mine.contains(p))
            })
            .ok_or_else(|| {
                PlatformError::Forbidden(format!(
                    "{} is not requestable by you: no enabled entitlement rule of app {:?} names an access profile you belong to",
                    ent.id, app.name
                ))
            })?;
        let pol = self.policy_by_ref(&rule.spec.policy).await?;
        let maxd = policy::max_duration(&rule.spec, &pol.spec);
        let duration = match (c.duration, maxd) {
            (Some(d), _) if d <= 0 => {
                return Err(PlatformError::Invalid(
                    "duration is in seconds and must be positive".into(),
                ));
            }
            (Some(d), Some(m)) if d > m => {
                return Err(PlatformError::Invalid(format!(
                    "duration {d}s is longer than the {m}s policy {:?} allows",
                    pol.spec.name
                )));
            }
            (Some(d), _) => Some(d),
            (None, m) => m,
        };
        let justification = c.justification.filter(|j| !j.trim().is_empty());
        if pol.spec.require_justification && justification.is_none() {
            return Err(PlatformError::Invalid(format!(
                "policy {:?} requires a justification",
                pol.spec.name
            )));
        }
        let targets = self.targets_of(&app, &ent).await?;
        if targets.is_empty() {
            return Err(PlatformError::Conflict(format!(
                "nothing provisions {} of app {:?}: bind an IdP entitlement to it (provision_for) or attach a connector",
                ent.id, app.name
            )));
        }
        self.check_provisionable(&targets).await?;
        if let Some(o) = self.gov.open_requests(&me.id, &app.id, &ent.id).await?.first() {
            return Err(PlatformError::Conflict(format!(
                "you already have request {} ({}) for {}",
                o.id,
                o.state.as_str(),
                ent.id
            )));
        }
        let mut held = true;
        for t in &targets {
            held &= self
                .gov
                .holds_direct(&t.connector_id, &t.entitlement, &me.id)
                .await?;
        }
        if held {
            return Err(PlatformError::Conflict(format!(
                "you already hold {} (the last sync shows it)",
                ent.id
            )));
        }
        let steps = policy::choose_steps(&pol.spec, &me, &ent.id, &ent.kind, duration)
            .ok_or_else(|| {
                PlatformError::Forbidden(format!(
                    "no rule of policy {:?} applies to this request and it has no default steps",
                    pol.spec.name
                ))
            })?
            .to_vec();
        let now = self.now();
        let mut r = Request {
            id: uuid::Uuid::new_v4().to_string(),
            requester_id: me.id.clone(),
            requester_name: me.display_name.clone(),
            app_id: app.id.clone(),
            entitlement: ent.id.clone(),
            entitlement_name: ent.name.clone(),
            entitlement_kind: ent.kind.clone(),
            justification,
            duration,
            state: RequestState::PendingApproval,
            reason: None,
            rule_id: rule.id.clone(),
            policy_id: pol.id.clone(),
            revoke_drift: pol.spec.revoke_drift,
            allow_self_approval: pol.spec.allow_self_approval,
            steps,
            step: 0,
            approvers: Vec::new(),
            decisions: Vec::new(),
            targets,
            created_at: now.clone(),
            updated_at: now,
            provisioned_at: None,
            expires_at: None,
            ended_at: None,
            drift_count: 0,
            events: Vec::new(),
        };
        let msg = format!(
            "{} requested {} of {} for {}",
            me.display_name,
            ent.name,
            app.name,
            duration.map_or("good".to_owned(), |d| format!("{d}s"))
        );
        self.event(&mut r, "created", msg);
        let mut w = self.write();
        w.audit.push(audit(
            &me.id,
            "request.created",
            "request",
            &r.id,
            json!({"app": app.id, "entitlement": ent.id, "justification": r.justification, "duration": duration, "policy": pol.id}),
        ));
        self.notify(&mut w, "request.created", &r, &[]).await?;
        self.advance(&mut r, &mut w, &app, &me).await?;
        w.request = Some((r.clone(), None));
        self.commit(w).await?;
        Ok(r)
    }

    async fn approvers_of(&self, s: &Step, requester: &Identity, app: &App) -> Result<(Vec<String>, String)> {
        let (ids, what) = match s.kind {
            StepKind::AutoApprove => (Vec::new(), "automatic".to_owned()),
            StepKind::Manager => (
                requester.manager_id.iter().cloned().collect(),
                format!("{}'s manager", requester.display_name),
            ),
            StepKind::AppOwner => (app.owners.clone(), format!("an owner of {}", app.name)),
            StepKind::Identities => (s.identities.clone(), "named approvers".to_owned()),
            StepKind::Group => {
                let g = s.group.clone().unwrap_or_default();
                (self.gov.entitlement_users(&g).await?, format!("members of {g}"))
            }
        };
        Ok((ids, what))
    }

    /// Runs the request's steps from the current one: automatic steps pass, the first step that needs
    /// people gets its approvers; past the last step the request is approved and provisioning is queued.
    async fn advance(&self, r: &mut Request, w: &mut Write, app: &App, requester: &Identity) -> Result<()> {
        loop {
            if r.step >= r.steps.len() {
                r.state = RequestState::Approved;
                r.approvers.clear();
                self.event(r, "approved", "approved: provisioning is queued".into());
                w.approvers = Some((r.id.clone(), r.step, Vec::new()));
                w.audit
                    .push(audit("system", "request.approved", "request", &r.id, json!({})));
                w.tasks.push(self.task("provision", &r.id, json!({})));
                return Ok(());
            }
            let s = r.steps[r.step].clone();
            let n = r.step + 1;
            if s.kind == StepKind::AutoApprove {
                r.decisions.push(Decision {
                    step: r.step,
                    approver_id: "system".into(),
                    decision: "auto_approved".into(),
                    comment: None,
                    at: self.now(),
                });
                self.event(r, "step", format!("step {n}: approved automatically"));
                r.step += 1;
                continue;
            }
            let (mut ids, what) = self.approvers_of(&s, requester, app).await?;
            let mut why_none = format!("{what}: nobody found");
            if !r.allow_self_approval && ids.contains(&r.requester_id) {
                ids.retain(|i| *i != r.requester_id);
                why_none = format!("{what}: only the requester, and the policy does not allow self-approval");
            }
            if ids.is_empty() {
                ids = policy::fallback_approvers(&s, &r.requester_id, r.allow_self_approval);
            }
            ids.sort();
            ids.dedup();
            if ids.is_empty() {
                r.state = RequestState::Denied;
                r.reason = Some(format!(
                    "step {n} ({:?}) has no approver ({why_none}); add a fallback to the step",
                    s.kind
                ));
                r.approvers.clear();
                let reason = r.reason.clone().unwrap_or_default();
                self.event(r, "denied", reason.clone());
                w.approvers = Some((r.id.clone(), r.step, Vec::new()));
                w.audit.push(audit(
                    "system",
                    "request.denied",
                    "request",
                    &r.id,
                    json!({"reason": reason}),
                ));
                self.notify(w, "request.denied", r, &[]).await?;
                return Ok(());
            }
            r.approvers = ids.clone();
            let mode = if s.mode == StepMode::All {
                "all of"
            } else {
                "any of"
            };
            self.event(
                r,
                "step",
                format!("step {n}: waiting for {mode} {}", ids.join(", ")),
            );
            w.approvers = Some((r.id.clone(), r.step, ids.clone()));
            w.audit.push(audit(
                "system",
                "approval.requested",
                "request",
                &r.id,
                json!({"step": n, "approvers": ids, "mode": s.mode, "timeout_secs": s.timeout_secs}),
            ));
            if let Some(secs) = s.timeout_secs {
                // The step's deadline is a durable task: it survives restarts and runs once.
                w.tasks.push(self.task_at(
                    "step_timeout",
                    &r.id,
                    json!({"step": r.step, "escalated": false}),
                    self.clock.now().unix_timestamp() + secs,
                ));
            }
            self.notify(w, "approval.requested", r, &ids).await?;
            return Ok(());
        }
    }

    pub(crate) fn task(&self, kind: &str, ref_id: &str, payload: serde_json::Value) -> Task {
        self.task_at(kind, ref_id, payload, self.clock.now().unix_timestamp())
    }

    pub(crate) fn task_at(&self, kind: &str, ref_id: &str, payload: serde_json::Value, at: i64) -> Task {
        Task {
            id: uuid::Uuid::new_v4().to_string(),
            kind: kind.into(),
            ref_id: ref_id.into(),
            payload,
            run_at_s: at,
            attempts: 0,
        }
    }

    async fn load(&self, id: &str) -> Result<(Request, i64)> {
        self.gov
            .request(id)
            .await?
            .ok_or_else(|| PlatformError::not_found("request", id))
    }

    async fn can_see(&self, a: &Actor, r: &Request) -> Result<bool> {
        if matches!(a.role, Role::SuperAdmin | Role::ConnectorAdmin) {
            return Ok(true);
        }
        let Some(me) = &a.identity_id else {
            return Ok(false);
        };
        if *me == r.requester_id
            || r.approvers.contains(me)
            || r.decisions.iter().any(|d| d.approver_id == *me)
        {
            return Ok(true);
        }
        Ok(self
            .store
            .app(&r.app_id)
            .await?
            .is_some_and(|app| app.owners.contains(me)))
    }

    /// One request (its requester, approvers, app owners, admins).
    pub async fn request(&self, a: &Actor, id: &str) -> Result<Request> {
        let (r, _) = self.load(id).await?;
        if !self.can_see(a, &r).await? {
            return Err(PlatformError::not_found("request", id));
        }
        Ok(r)
    }

    /// Requests: the caller's own (`mine=true`, and always for users), or all (admins).
    pub async fn requests(&self, a: &Actor, q: &RequestQuery) -> Result<Page<Request>> {
        let lq = ListQuery {
            q: None,
            limit: q.limit,
            page_token: q.page_token.clone(),
        };
        let (limit, offset) = lq.window()?;
        let admin = matches!(a.role, Role::SuperAdmin | Role::ConnectorAdmin);
        let who = if q.mine.unwrap_or(false) || !admin {
            Some(a.identity_id.clone().ok_or_else(|| {
                PlatformError::Invalid("mine=true needs a user token (this token has no identity)".into())
            })?)
        } else {
            None
        };
        let rows = self
            .gov
            .requests(who.as_deref(), q.state.as_deref(), limit + 1, offset)
            .await?;
        Ok(page_of(rows, limit, offset))
    }

    /// Requests waiting for the caller's decision.
    pub async fn approvals(&self, a: &Actor, q: &ListQuery) -> Result<Page<Request>> {
        let me = a.identity_id.as_deref().ok_or_else(|| {
            PlatformError::Invalid("approvals belong to identities: use a user token".into())
        })?;
        let (limit, offset) = q.window()?;
        Ok(page_of(
            self.gov.waiting_for(me, limit + 1, offset).await?,
            limit,
            offset,
        ))
    }

    /// Approves or denies the current step (only its approvers).
    pub async fn decide(&self, a: &Actor, id: &str, approve: bool, d: Decide) -> Result<Request> {
        let me = a.identity_id.clone().ok_or_else(|| {
            PlatformError::Forbidden("only an approver's user token can decide a request".into())
        })?;
        for _ in 0..8 {
            let (mut r, ver) = self.load(id).await?;
            if r.state != RequestState::PendingApproval {
                return Err(PlatformError::Conflict(format!(
                    "request {id} is {}, not waiting for approval",
                    r.state.as_str()
                )));
            }
            if me == r.requester_id && !r.allow_self_approval {
                return Err(PlatformError::Forbidden(
                    "you cannot decide your own request: its policy does not allow self-approval".into(),
                ));
            }
            if !r.approvers.contains(&me) {
                return Err(PlatformError::Forbidden(format!(
                    "you are not an approver of step {} of request {id}",
                    r.step + 1
                )));
            }
            let step = r.step;
            let s = r.steps[step].clone();
            let word = if approve { "approved" } else { "denied" };
            r.decisions.push(Decision {
                step,
                approver_id: me.clone(),
                decision: word.into(),
                comment: d.comment.clone(),
                at: self.now(),
            });
            let mut w = self.write();
            w.audit.push(audit(
                &me,
                if approve {
                    "request.step_approved"
                } else {
                    "request.step_denied"
                },
                "request",
                id,
                json!({"step": step + 1, "comment": d.comment}),
            ));
            self.event(
                &mut r,
                "decision",
                format!(
                    "step {}: {word} by {me}{}",
                    step + 1,
                    d.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default()
                ),
            );
            if !approve {
                r.state = RequestState::Denied;
                r.reason = Some(format!(
                    "denied by {me}{}",
                    d.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default()
                ));
                r.approvers.clear();
                w.approvers = Some((r.id.clone(), step, Vec::new()));
                w.audit.push(audit(
                    &me,
                    "request.denied",
                    "request",
                    id,
                    json!({"reason": r.reason}),
                ));
                self.notify(&mut w, "request.denied", &r, &[]).await?;
            } else {
                let approved: BTreeSet<&str> = r
                    .decisions
                    .iter()
                    .filter(|x| x.step == step && x.decision == "approved")
                    .map(|x| x.approver_id.as_str())
                    .collect();
                let done =
                    s.mode == StepMode::Any || r.approvers.iter().all(|x| approved.contains(x.as_str()));
                if done {
                    r.step += 1;
                    let app = self.app_row(&r.app_id).await?;
                    let requester = self
                        .store
                        .identity(&r.requester_id)
                        .await?
                        .ok_or_else(|| PlatformError::not_found("identity", &r.requester_id))?;
                    self.advance(&mut r, &mut w, &app, &requester).await?;
                } else {
                    let left: Vec<String> = r
                        .approvers
                        .iter()
                        .filter(|x| !approved.contains(x.as_str()))
                        .cloned()
                        .collect();
                    w.approvers = Some((r.id.clone(), step, left));
                }
            }
            w.request = Some((r.clone(), Some(ver)));
            if self.commit(w).await? {
                return Ok(r);
            }
        }
        Err(PlatformError::Conflict(format!(
            "request {id} kept changing while deciding; try again"
        )))
    }

    async fn move_request(
        &self,
        a: &Actor,
        id: &str,
        from: &[RequestState],
        apply: impl Fn(&Self, &mut Request, &mut Write),
        action: &str,
    ) -> Result<Request> {
        for _ in 0..8 {
            let (mut r, ver) = self.load(id).await?;
            if !from.contains(&r.state) {
                return Err(PlatformError::Conflict(format!(
                    "request {id} is {}; this needs it to be {}",
                    r.state.as_str(),
                    from.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" or ")
                )));
            }
            let mut w = self.write();
            apply(self, &mut r, &mut w);
            w.audit.push(audit(
                &actor_label(a),
                action,
                "request",
                id,
                json!({"state": r.state}),
            ));
            w.request = Some((r.clone(), Some(ver)));
            if self.commit(w).await? {
                return Ok(r);
            }
        }
        Err(PlatformError::Conflict(format!(
            "request {id} kept changing; try again"
        )))
    }

    async fn require_request_admin(&self, a: &Actor, r: &Request) -> Result<()> {
        let app = self.app_row(&r.app_id).await?;
        Self::require_app_admin(a, &app)
    }

    /// Withdraws a request before provisioning starts (its requester).
    pub async fn cancel_request(&self, a: &Actor, id: &str) -> Result<Request> {
        let (r, _) = self.load(id).await?;
        if a.identity_id.as_deref() != Some(r.requester_id.as_str()) {
            return Err(PlatformError::Forbidden(
                "only the requester can cancel a request".into(),
            ));
        }
        let who = actor_label(a);
        self.move_request(
            a,
            id,
            &[RequestState::PendingApproval, RequestState::Approved],
            move |p, r, w| {
                r.state = RequestState::Cancelled;
                r.approvers.clear();
                w.approvers = Some((r.id.clone(), r.step, Vec::new()));
                p.event(r, "cancelled", format!("cancelled by {who}"));
            },
            "request.cancelled",
        )
        .await
    }

    /// Runs a failed request's provisioning again (super_admin, app owner).
    pub async fn retry_request(&self, a: &Actor, id: &str) -> Result<Request> {
        let (r, _) = self.load(id).await?;
        self.require_request_admin(a, &r).await?;
        let who = actor_label(a);
        self.move_request(
            a,
            id,
            &[RequestState::Failed],
            move |p, r, w| {
                r.state = RequestState::Approved;
                r.reason = None;
                p.event(r, "retry", format!("retry asked by {who}"));
                w.tasks.push(p.task("provision", &r.id, json!({})));
            },
            "request.retried",
        )
        .await
    }

    /// Ends provisioned access now (super_admin, app owner, or the requester giving it up).
    pub async fn revoke_request(&self, a: &Actor, id: &str) -> Result<Request> {
        let (r, _) = self.load(id).await?;
        if a.identity_id.as_deref() != Some(r.requester_id.as_str()) {
            self.require_request_admin(a, &r).await?;
        }
        let who = actor_label(a);
        self.move_request(
            a,
            id,
            &[RequestState::Provisioned],
            move |p, r, w| {
                p.event(
                    r,
                    "revoke",
                    format!("revocation asked by {who}; removing from the tenant"),
                );
                w.tasks
                    .push(p.task("end", &r.id, json!({"end_state": "revoked"})));
            },
            "request.revoke_requested",
        )
        .await
    }

    // ---- audit ----

    /// The audit log (super_admin), oldest first, filtered and paged.
    pub async fn audit_log(&self, a: &Actor, q: &AuditQuery) -> Result<Page<AuditEntry>> {
        require(a, &[Role::SuperAdmin])?;
        let lq = ListQuery {
            q: None,
            limit: q.limit,
            page_token: q.page_token.clone(),
        };
        let (limit, offset) = lq.window()?;
        Ok(page_of(
            self.gov.audit(q, limit + 1, offset).await?,
            limit,
            offset,
        ))
    }

    /// Every audit entry matching `q` (exports), read in chunks.
    pub async fn audit_export(&self, a: &Actor, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        require(a, &[Role::SuperAdmin])?;
        let mut out = Vec::new();
        loop {
            let chunk = self.gov.audit(q, 10_000, out.len() as i64).await?;
            let n = chunk.len();
            out.extend(chunk);
            if n < 10_000 {
                return Ok(out);
            }
        }
    }

    /// Checks the whole audit chain (no actor: also used by `steward audit verify` on the database).
    pub async fn verify_audit(&self) -> Result<AuditVerdict> {
        let mut v = audit::Verifier::default();
        let q = AuditQuery::default();
        let mut offset = 0;
        loop {
            let chunk = self.gov.audit(&q, 10_000, offset).await?;
            for e in &chunk {
                if !v.feed(e) {
                    break;
                }
            }
            if chunk.len() < 10_000 {
                break;
            }
            offset += 10_000;
        }
        Ok(v.finish(self.gov.audit_head().await?))
    }

    // ---- webhooks ----

    /// Registers an outbound webhook (super_admin).
    pub async fn create_webhook(&self, a: &Actor, c: CreateWebhook) -> Result<Webhook> {
        require(a, &[Role::SuperAdmin])?;
        if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
            return Err(PlatformError::Invalid(format!(
                "webhook url {:?} must be http:// or https://",
                c.url
            )));
        }
        let format = c.format.unwrap_or_else(|| "slack".into());
        if format != "slack" && format != "json" {
            return Err(PlatformError::Invalid(format!(
                "webhook format {format:?}: use slack or json"
            )));
        }
        let events = if c.events.is_empty() {
            vec!["*".to_owned()]
        } else {
            c.events
        };
        let secret_enc = match &c.secret {
            Some(s) if s.chars().count() < 16 => {
                return Err(PlatformError::Invalid(
                    "webhook secret must be at least 16 characters".into(),
                ));
            }
            Some(s) => Some(self.key.encrypt(s.as_bytes())?),
            None => None,
        };
        let h = Webhook {
            id: uuid::Uuid::new_v4().to_string(),
            url: c.url,
            events,
            format,
            signed: secret_enc.is_some(),
            created_at: self.now(),
            secret_enc,
        };
        let mut spec = json!({"events": h.events, "format": h.format});
        if let Some(enc) = &h.secret_enc {
            spec["secret"] = json!(enc);
        }
        let mut w = self.write();
        w.config.push((
            ConfigTable::Webhook,
            h.id.clone(),
            h.url.clone(),
            spec.to_string(),
        ));
        w.audit.push(audit(
            &actor_label(a),
            "webhook.created",
            "webhook",
            &h.id,
            json!({"url": h.url, "events": h.events, "signed": h.signed}),
        ));
        self.commit(w).await?;
        Ok(h)
    }

    /// Webhooks (super_admin).
    pub async fn webhooks(&self, a: &Actor) -> Result<Vec<Webhook>> {
        require(a, &[Role::SuperAdmin])?;
        self.gov.webhooks().await
    }

    /// Queues a delivery of `event` about `r` to every webhook that wants it (in the same write).
    pub(crate) async fn notify(&self, w: &mut Write, event: &str, r: &Request, to: &[String]) -> Result<()> {
        let hooks = self.gov.webhooks().await?;
        for h in hooks
            .iter()
            .filter(|h| h.events.iter().any(|e| e == "*" || e == event))
        {
            let text = format!(
                "[{event}] {} — {} ({}){}",
                r.requester_name,
                r.entitlement_name,
                r.state.as_str(),
                if to.is_empty() {
                    String::new()
                } else {
                    format!("; approvers: {}", to.join(", "))
                }
            );
            let body = if h.format == "slack" {
                json!({"text": text, "event": event, "request_id": r.id, "to": to})
            } else {
                json!({"event": event, "request": r, "to": to})
            };
            w.tasks
                .push(self.task("webhook", &h.id, json!({"url": h.url, "body": body})));
        }
        Ok(())
    }
}
