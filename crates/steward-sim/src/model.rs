//! The emulated tenant as data: everything Entra ID (Graph) and Azure (ARM) know about one tenant.
//!
//! This is the emulator's own schema — the JSON form of a tenant that `steward sim serve --tenant PATH.json`
//! loads and the generator saves (documented in docs/tenant-schema.md). It is deliberately *not* Graph's wire
//! shape: the `graph` and `arm` modules render these records the way Microsoft does. Identifiers are UUIDs;
//! every reference (a member, an owner, a principal) is the referenced object's id, and `Tenant::validate`
//! checks that each one resolves.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One emulated tenant. Field order here is the order of the JSON file.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// The directory (tenant) id.
    pub tenant_id: Uuid,
    pub display_name: String,
    pub domains: Vec<Domain>,
    /// Whether the tenant has Entra ID P2 (PIM). Without it, eligibility endpoints answer
    /// `AadPremiumLicenseRequired`.
    #[serde(default = "yes")]
    pub has_p2: bool,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub groups: Vec<Group>,
    /// App registrations (the `applications` collection).
    #[serde(default)]
    pub applications: Vec<Application>,
    /// Enterprise applications, first-party apps and managed identities (the `servicePrincipals` collection).
    #[serde(default)]
    pub service_principals: Vec<ServicePrincipal>,
    /// Who is assigned to which app role of which service principal (`appRoleAssignedTo`). Application
    /// permissions granted to an app are assignments whose resource is the API's service principal.
    #[serde(default)]
    pub app_role_assignments: Vec<AppRoleAssignment>,
    #[serde(default)]
    pub role_definitions: Vec<RoleDefinition>,
    /// Active directory role assignments.
    #[serde(default)]
    pub role_assignments: Vec<RoleAssignment>,
    /// PIM eligibility schedules.
    #[serde(default)]
    pub role_eligibilities: Vec<RoleEligibility>,
    #[serde(default)]
    pub skus: Vec<Sku>,
    #[serde(default)]
    pub azure: Azure,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub name: String,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub is_initial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UserType {
    #[default]
    Member,
    Guest,
}

/// The mailbox's `userPurpose` (`GET /users/{id}/mailboxSettings`). `None` on a user means no mailbox:
/// Graph answers that request with 404 `MailboxNotEnabledForRESTAPI`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxPurpose {
    User,
    Linked,
    Shared,
    Room,
    Equipment,
    Others,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: Uuid,
    pub user_principal_name: String,
    pub display_name: String,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default)]
    pub user_type: UserType,
    #[serde(default = "yes")]
    pub account_enabled: bool,
    /// RFC 3339.
    pub created: String,
    #[serde(default)]
    pub on_premises_sync_enabled: bool,
    #[serde(default)]
    pub employee_id: Option<String>,
    #[serde(default)]
    pub employee_type: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub manager: Option<Uuid>,
    #[serde(default)]
    pub mailbox: Option<MailboxPurpose>,
    /// skuIds of assigned licenses.
    #[serde(default)]
    pub licenses: Vec<Uuid>,
    /// RFC 3339; only served when the tenant reports sign-in activity.
    #[serde(default)]
    pub last_sign_in: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// securityEnabled, not mail-enabled.
    Security,
    /// Microsoft 365 group: groupTypes ["Unified"], mail-enabled.
    Microsoft365,
    /// Mail-enabled security group.
    MailEnabledSecurity,
    /// Distribution list: mail-enabled, not security-enabled.
    Distribution,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub id: Uuid,
    pub display_name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub kind: GroupKind,
    /// A dynamic group's membership rule; membership is computed by the directory, not writable.
    #[serde(default)]
    pub membership_rule: Option<String>,
    #[serde(default)]
    pub is_assignable_to_role: bool,
    #[serde(default)]
    pub on_premises_sync_enabled: bool,
    #[serde(default)]
    pub visibility: Option<String>,
    pub created: String,
    /// Direct members: users, groups, service principals (incl. managed identities).
    #[serde(default)]
    pub members: Vec<Uuid>,
    #[serde(default)]
    pub owners: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    /// Object id of the app registration.
    pub id: Uuid,
    pub app_id: Uuid,
    pub display_name: String,
    pub created: String,
    #[serde(default)]
    pub sign_in_audience: Option<String>,
    #[serde(default)]
    pub secrets: Vec<PasswordCredential>,
    #[serde(default)]
    pub certificates: Vec<KeyCredential>,
    #[serde(default)]
    pub owners: Vec<Uuid>,
}

/// A client secret. The emulator keeps the secret text so it can check the token endpoint's
/// `client_secret`; Graph never returns it (only `hint`, its first three characters).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordCredential {
    pub key_id: Uuid,
    #[serde(default)]
    pub display_name: Option<String>,
    pub secret: String,
    pub start: String,
    pub end: String,
}

/// A certificate credential: the public certificate in PEM. Client assertions signed with its key (and
/// carrying its SHA-1 thumbprint as `x5t`) authenticate the app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCredential {
    pub key_id: Uuid,
    #[serde(default)]
    pub display_name: Option<String>,
    pub certificate_pem: String,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpKind {
    Application,
    ManagedIdentity,
    Legacy,
    SocialIdp,
}

/// Who owns the application behind a service principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Publisher {
    /// Registered in this tenant.
    Tenant,
    /// A multi-tenant app from another organization.
    ThirdParty,
    /// Microsoft's own (appOwnerOrganizationId f8cdef31-…).
    Microsoft,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePrincipal {
    pub id: Uuid,
    pub app_id: Uuid,
    pub display_name: String,
    pub kind: SpKind,
    pub publisher: Publisher,
    /// The publishing tenant for third-party apps (random but stable).
    #[serde(default)]
    pub owner_organization: Option<Uuid>,
    #[serde(default = "yes")]
    pub account_enabled: bool,
    #[serde(default)]
    pub app_role_assignment_required: bool,
    #[serde(default)]
    pub app_roles: Vec<AppRole>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub homepage: Option<String>,
    #[serde(default)]
    pub owners: Vec<Uuid>,
    /// For managed identities: the ARM resource id (alternativeNames).
    #[serde(default)]
    pub alternative_names: Vec<String>,
    pub created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRole {
    pub id: Uuid,
    pub value: Option<String>,
    pub display_name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// "User" and/or "Application".
    pub allowed_member_types: Vec<String>,
    #[serde(default = "yes")]
    pub is_enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrincipalType {
    User,
    Group,
    ServicePrincipal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleAssignment {
    pub id: String,
    /// The resource service principal (the app being assigned).
    pub resource_id: Uuid,
    /// `00000000-0000-0000-0000-000000000000` is default access.
    pub app_role_id: Uuid,
    pub principal_id: Uuid,
    pub created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDefinition {
    pub id: Uuid,
    pub display_name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "yes")]
    pub is_built_in: bool,
    #[serde(default = "yes")]
    pub is_enabled: bool,
    #[serde(default)]
    pub allowed_actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleAssignment {
    pub id: String,
    pub role_definition_id: Uuid,
    pub principal_id: Uuid,
    #[serde(default = "root_scope")]
    pub directory_scope_id: String,
    /// Optional expiry (RFC 3339) for time-bound active assignments created through PIM.
    #[serde(default)]
    pub end: Option<String>,
}

fn root_scope() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleEligibility {
    pub id: String,
    pub role_definition_id: Uuid,
    pub principal_id: Uuid,
    #[serde(default = "root_scope")]
    pub directory_scope_id: String,
    pub start: String,
    /// None: no expiration.
    #[serde(default)]
    pub end: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sku {
    pub sku_id: Uuid,
    pub sku_part_number: String,
    pub enabled_units: u32,
    pub service_plans: Vec<ServicePlan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePlan {
    pub service_plan_id: Uuid,
    pub service_plan_name: String,
}

/// The Azure side: everything ARM serves.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Azure {
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    #[serde(default)]
    pub resource_groups: Vec<ResourceGroup>,
    /// Custom role definitions (built-in ones are the same in every tenant and come from `arm::builtin`).
    #[serde(default)]
    pub custom_roles: Vec<AzureRoleDefinition>,
    /// Built-in role definitions served in every subscription.
    #[serde(default)]
    pub builtin_roles: Vec<AzureRoleDefinition>,
    #[serde(default)]
    pub role_assignments: Vec<AzureRoleAssignment>,
    /// PIM-eligible Azure role assignments.
    #[serde(default)]
    pub role_eligibilities: Vec<AzureRoleAssignment>,
    #[serde(default)]
    pub storage_accounts: Vec<StorageAccount>,
    #[serde(default)]
    pub containers: Vec<BlobContainer>,
    #[serde(default)]
    pub identities: Vec<UserAssignedIdentity>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub subscription_id: Uuid,
    pub display_name: String,
    #[serde(default = "enabled")]
    pub state: String,
}

fn enabled() -> String {
    "Enabled".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceGroup {
    pub subscription_id: Uuid,
    pub name: String,
    pub location: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureRoleDefinition {
    /// The role definition's GUID (the last segment of its ARM id).
    pub name: Uuid,
    pub role_name: String,
    #[serde(default)]
    pub description: String,
    pub actions: Vec<String>,
    /// Actions excluded from `actions` (Contributor: `Microsoft.Authorization/*/Write`, …).
    #[serde(default)]
    pub not_actions: Vec<String>,
    #[serde(default)]
    pub data_actions: Vec<String>,
    /// For custom roles: where it can be assigned (ARM scopes).
    #[serde(default)]
    pub assignable_scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureRoleAssignment {
    /// The assignment's GUID.
    pub name: Uuid,
    /// The ARM scope it is assigned at, e.g. `/subscriptions/{s}/resourceGroups/{rg}`.
    pub scope: String,
    pub role_definition: Uuid,
    pub principal_id: Uuid,
    pub principal_type: PrincipalType,
    pub created: String,
    #[serde(default)]
    pub end: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageAccount {
    pub subscription_id: Uuid,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    pub created: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobContainer {
    pub subscription_id: Uuid,
    pub resource_group: String,
    pub account: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAssignedIdentity {
    pub subscription_id: Uuid,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    /// The identity's service principal (also in `service_principals`, kind managed_identity).
    pub principal_id: Uuid,
    /// = the service principal's appId.
    pub client_id: Uuid,
}

impl ResourceGroup {
    pub fn arm_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}",
            self.subscription_id, self.name
        )
    }
}

impl StorageAccount {
    pub fn arm_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }
}

impl BlobContainer {
    pub fn arm_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Storage/storageAccounts/{}/blobServices/default/containers/{}",
            self.subscription_id, self.resource_group, self.account, self.name
        )
    }
}

impl UserAssignedIdentity {
    pub fn arm_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }
}
