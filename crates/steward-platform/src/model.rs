//! The platform's domain types (also the API's JSON shapes).

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    SuperAdmin,
    /// Connectors (create, sync, upload) and reading the catalog.
    ConnectorAdmin,
    /// A synced identity: the catalog, its own access, and the apps it owns (app_owner is per app).
    User,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdmin => "super_admin",
            Role::ConnectorAdmin => "connector_admin",
            Role::User => "user",
        }
    }
    /// Parses a stored or typed name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "super_admin" => Some(Role::SuperAdmin),
            "connector_admin" => Some(Role::ConnectorAdmin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Actor {
    /// Token id.
    pub token_id: String,
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The identity a user token acts as.
    pub identity_id: Option<String>,
}

/// A stored token (without its hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// The identity a user token acts as.
    pub identity_id: Option<String>,
    /// Created.
    pub created_at: String,
}

/// A freshly minted token: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The token's record.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The bearer token.
    pub token: String,
}

/// A page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Pass as `page_token` for the next page; absent at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// Paging and search on a list.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
pub struct ListQuery {
    /// Substring search (case-insensitive) on names.
    pub q: Option<String>,
    /// Rows per page (default 100, at most 1000).
    pub limit: Option<u32>,
    /// From a previous page.
    pub page_token: Option<String>,
}

impl ListQuery {
    /// (limit, offset), validated.
    pub fn window(&self) -> crate::Result<(i64, i64)> {
        let limit = i64::from(self.limit.unwrap_or(100).clamp(1, 1000));
        let offset = match self.page_token.as_deref() {
            None | Some("") => 0,
            Some(t) => t
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| crate::PlatformError::Invalid(format!("bad page_token {t:?}")))?,
        };
        Ok((limit, offset))
    }
    /// The search pattern for `LIKE` (lowercased, `%` around).
    pub fn pattern(&self) -> String {
        let q = self.q.as_deref().unwrap_or("").to_lowercase();
        let q: String = q.chars().filter(|c| *c != '%' && *c != '_').collect();
        format!("%{q}%")
    }
}

/// Makes a page from `limit + 1` fetched rows.
pub fn page_of<T>(mut rows: Vec<T>, limit: i64, offset: i64) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Page {
        items: rows,
        next_page_token: more.then(|| (offset + limit).to_string()),
    }
}

/// Connector status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorStatus {
    /// Never synced.
    NotConnected,
    /// A sync is running.
    Syncing,
    /// The last sync succeeded.
    Connected,
    /// The last sync failed (see `status_reason`).
    Error,
}

impl ConnectorStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorStatus::NotConnected => "not_connected",
            ConnectorStatus::Syncing => "syncing",
            ConnectorStatus::Connected => "connected",
            ConnectorStatus::Error => "error",
        }
    }
    /// Parses the stored name.
    pub fn parse(s: &str) -> ConnectorStatus {
        match s {
            "syncing" => ConnectorStatus::Syncing,
            "connected" => ConnectorStatus::Connected,
            "error" => ConnectorStatus::Error,
            _ => ConnectorStatus::NotConnected,
        }
    }
}

/// A connector as the API shows it: settings without secrets, and which secrets are set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Connector {
    /// Id.
    pub id: String,
    /// `entra`, `azure` or `baton`.
    pub kind: String,
    /// Unique name.
    pub name: String,
    /// Settings without the secret ones.
    #[schema(value_type = Object)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Names of the secret settings that are set (their values are write-only).
    pub secrets_set: Vec<String>,
    /// Owners (identity ids or UPNs).
    pub owners: Vec<String>,
    /// Whether its users and managed identities are the platform's identities.
    pub identity_source: bool,
    /// The app the connector is attached to.
    pub app_id: Option<String>,
    /// Scheduled sync interval.
    pub sync_interval_secs: Option<i64>,
    /// Status.
    pub status: ConnectorStatus,
    /// Why it is in error.
    pub status_reason: Option<String>,
    /// Last successful ingest.
    pub last_sync_at: Option<String>,
    /// The sync whose snapshot is current.
    pub current_sync_id: Option<String>,
    /// Created.
    pub created_at: String,
}

/// `POST /api/v1/connectors`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConnector {
    /// `entra`, `azure` or `baton`.
    pub kind: String,
    /// Unique name.
    pub name: String,
    /// Settings in snake_case (the connector's flag names); secret ones are encrypted and never returned.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Owners.
    #[serde(default)]
    pub owners: Vec<String>,
    /// Mark as the identity source (default: true for the first entra connector).
    pub identity_source: Option<bool>,
    /// Attach to an existing app.
    pub app_id: Option<String>,
    /// Sync every N seconds.
    pub sync_interval_secs: Option<i64>,
}

/// One sync of a connector.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncRecord {
    /// Id.
    pub id: String,
    /// Connector.
    pub connector_id: String,
    /// `upload`, `connector` or `schedule`.
    pub source: String,
    /// `running`, `succeeded`, `failed`.
    pub status: String,
    /// Started.
    pub started_at: String,
    /// Ended.
    pub ended_at: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Counts.
    pub stats: Option<serde_json::Value>,
    /// Log lines.
    pub log: Vec<String>,
}

/// Counts of one ingest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct IngestStats {
    /// Resources.
    pub resources: u64,
    /// Entitlements.
    pub entitlements: u64,
    /// Grants.
    pub grants: u64,
    /// Identities (identity source only).
    pub identities: u64,
    /// Apps discovered (new).
    pub apps_discovered: u64,
    /// Accounts matched to identities.
    pub accounts_linked: u64,
}

/// A person or workload identity.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Identity {
    /// Object id.
    pub id: String,
    /// `user` or `managed_identity`.
    pub kind: String,
    /// Name.
    pub display_name: String,
    /// UPN.
    pub upn: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Department.
    pub department: Option<String>,
    /// Job title.
    pub job_title: Option<String>,
    /// Manager's identity id.
    pub manager_id: Option<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    /// The connector it came from.
    pub connector_id: String,
}

/// An app in the catalog.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct App {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Managed (governed) or only discovered.
    pub managed: bool,
    /// Connector it was discovered by / is attached to.
    pub connector_id: Option<String>,
    /// The enterprise application's object id.
    pub resource_id: Option<String>,
    /// Owners (identity ids).
    pub owners: Vec<String>,
    /// Created.
    pub created_at: String,
}

/// `POST /api/v1/apps`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Owners (identity ids or UPNs).
    #[serde(default)]
    pub owners: Vec<String>,
}

/// `POST /api/v1/apps/{id}/manage`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageApp {
    /// Owners (identity ids or UPNs); default: the caller's identity if it has one.
    #[serde(default)]
    pub owners: Vec<String>,
}

/// An entitlement of an app.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AppEntitlement {
    /// Id (for IdP-backed ones, the IdP entitlement id).
    pub id: String,
    /// Name.
    pub name: String,
    /// `access` (the enterprise app assignment), `app_role`, `virtual_role`, or an attached connector's
    /// resource type (`role`, `group`, `license`, …) for its entitlements.
    pub kind: String,
    /// The connector behind it.
    pub connector_id: Option<String>,
    /// The IdP entitlement it provisions.
    pub idp_entitlement_id: Option<String>,
    /// How many principals hold it (IdP-backed ones).
    pub holders: i64,
}

/// An IdP entitlement linked to an app (a group assigned to its enterprise application), with its binding.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LinkedEntitlement {
    /// The IdP entitlement (`group:<id>:member`).
    pub idp_entitlement_id: String,
    /// The group's name.
    pub display_name: String,
    /// The connector.
    pub connector_id: String,
    /// Which assignments of the enterprise app the group holds.
    pub assigned_via: Vec<String>,
    /// Members (direct and nested).
    pub members: i64,
    /// `unbound`, `virtual_role`, `provision_for`, `skip`.
    pub action: String,
    /// Virtual role name.
    pub name: Option<String>,
    /// The app entitlement it provisions or is.
    pub app_entitlement_id: Option<String>,
}

/// `POST /api/v1/apps/{id}/linked-entitlements/{idpEntitlement}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum LinkAction {
    /// A role that exists only in Steward and provisions the IdP group.
    VirtualRole {
        /// Its name.
        name: String,
    },
    /// Provision access for an existing app entitlement.
    ProvisionFor {
        /// The app entitlement id.
        entitlement: String,
    },
    /// Not governed.
    Skip,
}

/// A holder of an entitlement.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Holder {
    /// Principal type.
    pub principal_type: String,
    /// Principal id.
    pub principal_id: String,
    /// Principal name.
    pub display_name: String,
    /// Held directly (else through a group).
    pub direct: bool,
    /// The entitlement it came through.
    pub via: Option<String>,
}

/// One step of how access is held.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PathStep {
    /// `direct`, `group`, `virtual_role`.
    pub kind: String,
    /// Entitlement id (or app entitlement id for a virtual role).
    pub entitlement_id: String,
    /// Name.
    pub display_name: String,
}

/// One thing an identity holds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccessItem {
    /// Connector.
    pub connector_id: String,
    /// Grant id.
    pub grant_id: String,
    /// Entitlement id.
    pub entitlement_id: String,
    /// Entitlement name.
    pub entitlement_name: String,
    /// Resource type of the entitlement's resource.
    pub resource_type: String,
    /// Resource id.
    pub resource_id: String,
    /// The app it belongs to, if any.
    pub app_id: Option<String>,
    /// Held directly.
    pub direct: bool,
    /// From the directly held entitlement to this one.
    pub path: Vec<PathStep>,
}
