//! The one error type of this crate. Every variant says what went wrong in words and, where a person can
//! fix it, what to do (grant a permission, renew a secret, check the tenant id). Secrets never appear.

use std::time::Duration;

/// Why a Microsoft identity platform, Graph or ARM call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The client secret is wrong (AADSTS7000215) or expired (AADSTS7000222), or no credential was sent.
    #[error("the client credential was refused (AADSTS{code}): {message} — {hint}")]
    InvalidClient {
        /// The AADSTS code.
        code: u32,
        /// Microsoft's first line of `error_description`.
        message: String,
        /// What to do.
        hint: &'static str,
    },
    /// The tenant id or domain does not exist (AADSTS90002).
    #[error(
        "tenant '{tenant}' was not found (AADSTS90002): check the tenant id (a GUID or a verified domain) and the cloud (--graph-domain)"
    )]
    UnknownTenant {
        /// The tenant as configured.
        tenant: String,
    },
    /// No application with this client id in the tenant (AADSTS700016).
    #[error(
        "application '{client_id}' was not found in tenant '{tenant}' (AADSTS700016): check the client id, and that the app is registered in (or consented to by) this tenant"
    )]
    UnknownApplication {
        /// The client id as configured.
        client_id: String,
        /// The tenant as configured.
        tenant: String,
    },
    /// Another refusal of the token endpoint.
    #[error("the token endpoint refused the request ({error}, AADSTS{code}): {message}")]
    TokenRefused {
        /// OAuth `error`.
        error: String,
        /// AADSTS code (0 if absent).
        code: u32,
        /// First line of `error_description`.
        message: String,
    },
    /// The app lacks an application permission (Graph 403 Authorization_RequestDenied, ARM AuthorizationFailed).
    #[error("missing permission {permission} for {what}: {hint}")]
    MissingPermission {
        /// The least-privileged permission that allows the call.
        permission: String,
        /// The request (method and path, no host).
        what: String,
        /// What to do.
        hint: String,
    },
    /// The tenant lacks Entra ID P2 / Governance for a PIM call (AadPremiumLicenseRequired).
    #[error(
        "the tenant has no Microsoft Entra ID P2 (or ID Governance) license, so PIM eligibility cannot be read: {message}"
    )]
    PremiumLicenseRequired {
        /// Microsoft's message.
        message: String,
    },
    /// The object does not exist (404).
    #[error("not found: {what}: {message}")]
    NotFound {
        /// The request.
        what: String,
        /// Microsoft's message.
        message: String,
    },
    /// A delta token expired (410 Gone / syncStateNotFound): a full resync is needed.
    #[error("the delta token has expired; a full resync is needed")]
    DeltaExpired,
    /// Still throttled after every retry.
    #[error("still throttled after {attempts} attempts at {what}; last Retry-After {retry_after:?}")]
    Throttled {
        /// The request.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last Retry-After.
        retry_after: Duration,
    },
    /// A transient failure (5xx, reset, timeout, truncated body) that outlived every retry.
    #[error("{what} kept failing after {attempts} attempts: {message}")]
    Transient {
        /// The request.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        message: String,
    },
    /// Any other HTTP error answer.
    #[error("{what} failed with HTTP {status} {code}: {message}")]
    Http {
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// Graph/ARM error code.
        code: String,
        /// Message.
        message: String,
    },
    /// Bad configuration (URL, CA file, certificate, key).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether retrying later could help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. } | Error::Throttled { .. })
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The least-privileged Graph application permission for a GET of `path` (`/v1.0/...`, no host).
pub fn graph_permission_for(path: &str) -> &'static str {
    let p = path.split('?').next().unwrap_or(path);
    let q = path.split_once('?').map(|x| x.1).unwrap_or("");
    let segs: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != "v1.0" && *s != "beta")
        .collect();
    match segs.as_slice() {
        ["users", _, "mailboxSettings"] => "MailboxSettings.Read",
        ["users", ..] if q.contains("signInActivity") => "AuditLog.Read.All",
        ["users", ..] => "User.Read.All",
        ["groups", ..] => "GroupMember.Read.All",
        ["servicePrincipals", _, "appRoleAssignedTo"] => "Application.Read.All",
        ["servicePrincipals", ..] | ["applications", ..] => "Application.Read.All",
        ["roleManagement", "directory", s, ..] if s.starts_with("roleEligibility") => {
            "RoleEligibilitySchedule.Read.Directory"
        }
        ["roleManagement", ..] | ["directoryRoles", ..] => "RoleManagement.Read.Directory",
        ["subscribedSkus"] | ["organization", ..] | ["domains", ..] => "Organization.Read.All",
        _ => "Directory.Read.All",
    }
}

/// The least-privileged Graph application permission for a write (`POST`/`PATCH`/`DELETE`) of `path`.
pub fn graph_write_permission_for(path: &str) -> &'static str {
    let p = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != "v1.0" && *s != "beta")
        .collect();
    match segs.as_slice() {
        ["groups", _, "members", ..] => "GroupMember.ReadWrite.All",
        ["groups", _, "owners", ..] => "Group.ReadWrite.All",
        [_, _, "appRoleAssignedTo", ..] | [_, _, "appRoleAssignments", ..] => {
            "AppRoleAssignment.ReadWrite.All"
        }
        ["servicePrincipals", ..] | ["applications", ..] => "Application.ReadWrite.All",
        ["roleManagement", ..] | ["directoryRoles", ..] => "RoleManagement.ReadWrite.Directory",
        ["groups", ..] => "Group.ReadWrite.All",
        ["users", ..] => "User.ReadWrite.All",
        _ => "Directory.ReadWrite.All",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_names_follow_the_path() {
        assert_eq!(graph_permission_for("/v1.0/users?$top=999"), "User.Read.All");
        assert_eq!(
            graph_permission_for("/v1.0/users?$select=id,signInActivity"),
            "AuditLog.Read.All"
        );
        assert_eq!(
            graph_permission_for("/v1.0/users/abc/mailboxSettings"),
            "MailboxSettings.Read"
        );
        assert_eq!(
            graph_permission_for("/v1.0/groups/x/members?$select=id"),
            "GroupMember.Read.All"
        );
        assert_eq!(
            graph_permission_for("/v1.0/roleManagement/directory/roleEligibilitySchedules"),
            "RoleEligibilitySchedule.Read.Directory"
        );
        assert_eq!(
            graph_write_permission_for("/v1.0/groups/g/members/$ref"),
            "GroupMember.ReadWrite.All"
        );
        assert_eq!(
            graph_write_permission_for("/v1.0/servicePrincipals/s/appRoleAssignedTo"),
            "AppRoleAssignment.ReadWrite.All"
        );
        assert_eq!(
            graph_write_permission_for("/v1.0/roleManagement/directory/roleEligibilityScheduleRequests"),
            "RoleManagement.ReadWrite.Directory"
        );
        assert_eq!(
            graph_permission_for("/v1.0/subscribedSkus"),
            "Organization.Read.All"
        );
    }
}
