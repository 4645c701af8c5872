//! The Entra ID connector: users, managed identities, groups, enterprise applications, directory roles and
//! licenses of a Microsoft Entra ID tenant, as Baton resources, entitlements and grants.
//!
//! | resource type | trait | entitlements | grants from |
//! |---|---|---|---|
//! | `user` | user | — | — |
//! | `managed_identity` | user (service) | — | — |
//! | `group` | group | `member`, `owner` | `/groups/{id}/members`, `/owners` (group members expandable) |
//! | `enterprise_application` | app | `owner`, `assignment:<appRoleId>` (incl. default access) | `/servicePrincipals/{id}/appRoleAssignedTo` (paged, never `$expand`), `/owners` |
//! | `role` | role | `assigned`, `eligible` (PIM) | `roleAssignments`, `roleEligibilitySchedules` |
//! | `license` | — | `assigned` | users' `assignedLicenses` |
//!
//! Rooms: [`config`] (settings), [`connector`] (the `Connector` impl and paging), [`index`] (the
//! directory index that keeps grants referentially intact), [`managers`] (users' managers, read in
//! concurrent slices), [`types`], and one mapping module per kind
//! ([`users`], [`groups`], [`apps`], [`roles`], [`licenses`], [`grants`]); [`provision`] (grant and
//! revoke, safe to repeat and retry); [`incremental`] (delta links kept with each sync, and the
//! incremental sync that reads only what changed since); [`error`].

pub mod apps;
pub mod config;
pub mod connector;
pub mod error;
pub mod grants;
pub mod groups;
pub mod incremental;
pub mod index;
pub mod licenses;
pub mod managers;
pub mod prefetch;
pub mod provision;
pub mod roles;
pub mod types;
pub mod users;

pub use config::EntraConfig;
pub use connector::Entra;
pub use error::EntraError;
pub use provision::{Change, GrantOptions, Outcome};
