//! The JSON shapes of access requests: profiles, policies, entitlement rules, requests, audit entries,
//! webhooks. Stored as JSON documents (with the columns queries need beside them) and returned by the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The built-in profile every identity belongs to.
pub const EVERYONE: &str = "everyone";

/// Who an access profile contains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProfileSpec {
    /// Every identity (the built-in `everyone` profile).
    Everyone,
    /// Members (direct or nested) of an IdP group: its id, or its member entitlement `group:<id>:member`.
    Group {
        /// The group.
        group: String,
    },
    /// Identities whose attributes match: every named attribute must equal one of its values
    /// (case-insensitive). Attributes: `department`, `job_title`, `kind`, `status`, `upn_domain`.
    Attribute {
        /// attribute → accepted values.
        attributes: BTreeMap<String, Vec<String>>,
    },
}

/// An access profile.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessProfile {
    /// Id (`everyone` for the built-in one).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Who it contains.
    #[serde(flatten)]
    pub spec: ProfileSpec,
    /// Created.
    pub created_at: String,
}

/// `POST /api/v1/access-profiles`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CreateProfile {
    /// Unique name.
    pub name: String,
    /// Who it contains.
    #[serde(flatten)]
    pub spec: ProfileSpec,
}

/// What kind of approval a step asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Approved at once.
    AutoApprove,
    /// The requester's manager (from the identity source).
    Manager,
    /// An owner of the app.
    AppOwner,
    /// Named identities.
    Identities,
    /// Members of an IdP group.
    Group,
}

/// Whether one approver is enough or all must approve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepMode {
    /// Any one approver decides.
    #[default]
    Any,
    /// Every approver must approve (one denial denies).
    All,
}

/// One approval step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The kind.
    pub kind: StepKind,
    /// Any-of or all-of.
    #[serde(default)]
    pub mode: StepMode,
    /// For `identities`: ids or UPNs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// For `group`: the group id (or `group:<id>:member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Who approves when the step finds nobody (no manager, no owner, only the requester), and who the
    /// step is escalated to (`on_timeout: escalate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// Seconds the step waits for a decision before `on_timeout` happens (none: it waits until decided).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<i64>,
    /// What a timeout does: `deny` (the default) or `escalate` to the `fallback` approvers, who then get
    /// the same time before the request is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
}

/// What happens when an approval step is not decided within its `timeout_secs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The request is denied, with the timeout as the reason.
    #[default]
    Deny,
    /// The step's `fallback` approvers replace its approvers (once); a second timeout denies.
    Escalate,
}

/// When a policy rule applies. Every present field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Requester attributes (as in attribute profiles): attribute → accepted values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requester: BTreeMap<String, Vec<String>>,
    /// App entitlement kinds (`access`, `app_role`, `virtual_role`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entitlement_kinds: Vec<String>,
    /// App entitlement ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entitlements: Vec<String>,
    /// Matches when the requested duration (seconds) is longer than this (a permanent request is longer
    /// than any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_over: Option<i64>,
}

/// An ordered rule of a policy: the first whose condition matches chooses the steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// When it applies.
    #[serde(default)]
    pub when: Condition,
    /// The steps, in sequence.
    pub steps: Vec<Step>,
}

/// A request policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Unique name.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Ordered rules; the first matching one chooses the steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
    /// The steps when no rule matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// Whether a justification must be given.
    #[serde(default)]
    pub require_justification: bool,
    /// Longest grant in seconds (absent: permanent access may be requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<i64>,
    /// Whether a requester may approve their own request.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Whether access that reappears after it was revoked or expired is revoked again (default true).
    #[serde(default = "yes")]
    pub revoke_drift: bool,
}

fn yes() -> bool {
    true
}

/// A stored policy.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Policy {
    /// Id.
    pub id: String,
    /// The policy.
    #[serde(flatten)]
    pub spec: PolicySpec,
    /// Created.
    pub created_at: String,
    /// Updated.
    pub updated_at: String,
}

/// `POST /api/v1/apps/{id}/entitlement-rules`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Whether it is in force.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// App entitlement kinds it makes requestable (`access`, `app_role`, `virtual_role`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_types: Vec<String>,
    /// App entitlement ids it makes requestable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entitlements: Vec<String>,
    /// Access profiles (ids or names) that may request.
    pub access_profiles: Vec<String>,
    /// The policy (id or name).
    pub policy: String,
    /// Longest grant in seconds (the shorter of this and the policy's maximum applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<i64>,
}

/// A stored entitlement rule.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntitlementRule {
    /// Id.
    pub id: String,
    /// The app.
    pub app_id: String,
    /// The rule (profiles and policy resolved to ids).
    #[serde(flatten)]
    pub spec: RuleSpec,
    /// Created.
    pub created_at: String,
}

/// One requestable thing in the catalog.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CatalogItem {
    /// App.
    pub app_id: String,
    /// App name.
    pub app_name: String,
    /// App entitlement id (pass it to `POST /api/v1/requests`).
    pub entitlement: String,
    /// Its name.
    pub entitlement_name: String,
    /// `access`, `app_role`, `virtual_role`.
    pub kind: String,
    /// The policy that decides.
    pub policy_id: String,
    /// Its name.
    pub policy_name: String,
    /// Longest grant in seconds (absent: permanent).
    pub max_duration: Option<i64>,
    /// Whether a justification must be given.
    pub require_justification: bool,
    /// Why the caller may request it (rule and profile).
    pub why: Vec<String>,
    /// An open request of the caller for it.
    pub open_request: Option<String>,
}

/// `POST /api/v1/requests`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The app entitlement id (as listed under `GET /api/v1/apps/{id}/entitlements`).
    pub entitlement: String,
    /// The app, when the entitlement id alone is ambiguous.
    #[serde(default)]
    pub app: Option<String>,
    /// Why.
    #[serde(default)]
    pub justification: Option<String>,
    /// Seconds; omitted: the policy's maximum.
    #[serde(default)]
    pub duration: Option<i64>,
}

/// `POST /api/v1/requests/{id}/approve|deny`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// A comment.
    #[serde(default)]
    pub comment: Option<String>,
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for the current step's approvers.
    PendingApproval,
    /// Approved, waiting for provisioning.
    Approved,
    /// Being provisioned.
    Provisioning,
    /// Provisioned and confirmed.
    Provisioned,
    /// Ended at its time and removed from the tenant.
    Expired,
    /// Ended early and removed from the tenant.
    Revoked,
    /// An approver denied it (or no approver could be found).
    Denied,
    /// The requester withdrew it.
    Cancelled,
    /// Provisioning failed (see `reason`); an admin may retry.
    Failed,
}

impl RequestState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::PendingApproval => "pending_approval",
            RequestState::Approved => "approved",
            RequestState::Provisioning => "provisioning",
            RequestState::Provisioned => "provisioned",
            RequestState::Expired => "expired",
            RequestState::Revoked => "revoked",
            RequestState::Denied => "denied",
            RequestState::Cancelled => "cancelled",
            RequestState::Failed => "failed",
        }
    }
    /// Whether the request is still going somewhere.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            RequestState::PendingApproval
                | RequestState::Approved
                | RequestState::Provisioning
                | RequestState::Provisioned
        )
    }
}

/// A decision on a step.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// Step index.
    pub step: usize,
    /// Who.
    pub approver_id: String,
    /// `approved` or `denied` (`auto_approved` for automatic steps).
    pub decision: String,
    /// Comment.
    pub comment: Option<String>,
    /// When.
    pub at: String,
}

/// One thing that happened to a request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestEvent {
    /// When.
    pub at: String,
    /// What (`created`, `step`, `approved`, `provision`, `confirm`, `retry`, `expired`, `drift`, …).
    pub kind: String,
    /// In words.
    pub message: String,
}

/// One IdP change a request makes: grant `entitlement` to the requester through `connector_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Target {
    /// The connector.
    pub connector_id: String,
    /// The IdP entitlement (`group:<id>:member`, `enterprise_application:<id>:assignment:<role>`).
    pub entitlement: String,
    /// Whether the tenant holds it for the requester (after a grant, confirmed by a partial sync).
    #[serde(default)]
    pub confirmed: bool,
}

/// An access request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Request {
    /// Id.
    pub id: String,
    /// The requesting identity.
    pub requester_id: String,
    /// Its name.
    pub requester_name: String,
    /// The app.
    pub app_id: String,
    /// The app entitlement.
    pub entitlement: String,
    /// Its name.
    pub entitlement_name: String,
    /// Its kind.
    pub entitlement_kind: String,
    /// Why.
    pub justification: Option<String>,
    /// Seconds of access asked for (absent: permanent).
    pub duration: Option<i64>,
    /// State.
    pub state: RequestState,
    /// Why it is denied or failed.
    pub reason: Option<String>,
    /// The rule that made it requestable.
    pub rule_id: String,
    /// The policy that decides.
    pub policy_id: String,
    /// Whether drift is revoked again (from the policy).
    pub revoke_drift: bool,
    /// Whether the requester may approve it (from the policy).
    pub allow_self_approval: bool,
    /// The steps chosen by the policy.
    pub steps: Vec<Step>,
    /// The current step.
    pub step: usize,
    /// Approvers of the current step.
    pub approvers: Vec<String>,
    /// Decisions so far.
    pub decisions: Vec<Decision>,
    /// What is provisioned in the IdP.
    pub targets: Vec<Target>,
    /// Created.
    pub created_at: String,
    /// Updated.
    pub updated_at: String,
    /// When provisioned.
    pub provisioned_at: Option<String>,
    /// When the access ends (absent: permanent).
    pub expires_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
    /// Times drift was found after it ended.
    #[serde(default)]
    pub drift_count: u32,
    /// The history.
    pub events: Vec<RequestEvent>,
}

/// `GET /api/v1/requests` filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
pub struct RequestQuery {
    /// Only the caller's own.
    #[serde(default)]
    pub mine: Option<bool>,
    /// Only in this state.
    pub state: Option<String>,
    /// Rows per page.
    pub limit: Option<u32>,
    /// From a previous page.
    pub page_token: Option<String>,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position in the chain (1, 2, …).
    pub seq: i64,
    /// When.
    pub at: String,
    /// Who (identity id, token name, or `system`).
    pub actor: String,
    /// What (`request.created`, `policy.created`, …).
    pub action: String,
    /// The kind of thing acted on.
    pub target_type: String,
    /// Its id.
    pub target_id: String,
    /// Details (JSON).
    pub detail: serde_json::Value,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// SHA-256 over this entry and `prev_hash`.
    pub hash: String,
}

/// `GET /api/v1/audit` filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Action (exact, or a prefix ending in `.`).
    pub action: Option<String>,
    /// Actor.
    pub actor: Option<String>,
    /// Target type.
    pub target_type: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
    /// From this time (RFC 3339, inclusive).
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    pub until: Option<String>,
    /// `json` (default, paged), `jsonl` or `csv` (export of everything matching).
    pub format: Option<String>,
    /// Rows per page.
    pub limit: Option<u32>,
    /// From a previous page.
    pub page_token: Option<String>,
}

/// The result of checking the audit chain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditVerdict {
    /// Whether the chain is intact.
    pub ok: bool,
    /// Entries checked.
    pub entries: i64,
    /// What is wrong (first problem found).
    pub problem: Option<String>,
}

/// An outbound webhook.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    /// Id.
    pub id: String,
    /// Where to POST.
    pub url: String,
    /// Event names (`request.created`, `approval.requested`, `request.provisioned`, `request.denied`,
    /// `request.failed`, `request.expired`, `request.revoked`, `drift.detected`) or `*`.
    pub events: Vec<String>,
    /// `slack` (a `text` field) or `json` (the event).
    pub format: String,
    /// Whether deliveries carry an HMAC signature (a secret was given; it is never returned).
    pub signed: bool,
    /// Created.
    pub created_at: String,
    /// The signing secret, encrypted with the master key (never serialized).
    #[serde(skip)]
    pub secret_enc: Option<String>,
}

/// `POST /api/v1/webhooks`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where to POST.
    pub url: String,
    /// Events (default `*`).
    #[serde(default)]
    pub events: Vec<String>,
    /// `slack` (default) or `json`.
    #[serde(default)]
    pub format: Option<String>,
    /// Signing secret (write-only, at least 16 characters): each delivery then carries
    /// `X-Steward-Timestamp` and `X-Steward-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
    #[serde(default)]
    pub secret: Option<String>,
}
