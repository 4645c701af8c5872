//! The Azure Infrastructure connector: tenants, subscriptions, resource groups, Azure role definitions,
//! role assignments at every scope (active and PIM-eligible), storage accounts, blob containers and
//! managed identities, plus the Entra ID users, groups and enterprise applications they are granted to —
//! synced through the Entra ID connector's code, not a copy of it.
//!
//! | resource type | parent | entitlements | grants from |
//! |---|---|---|---|
//! | `tenant` | — | — | — |
//! | `subscription` | — | `role:<guid>`, `role:<guid>:eligible` | role assignments at the subscription (and above it) |
//! | `resource_group` | subscription | same | at the group; inherited ones through the subscription |
//! | `role` | subscription | — (catalog) | — |
//! | `storage_account` | resource group | same | at the account; inherited through the group |
//! | `container` | storage account | same | at the container; inherited through the account |
//! | `user`, `group`, `enterprise_application` | — | Entra ID's | Entra ID's |
//! | `managed_identity` | — | — | — |
//!
//! Rooms: [`config`], [`connector`] (listing, entitlements, grants), [`arm`] (ARM reads and the
//! per-subscription snapshot), [`scope`] (scopes and the id scheme), [`provision`] (grant / revoke),
//! [`external`] (`--external-resource-c1z`), [`types`], [`error`].

pub mod arm;
pub mod config;
pub mod connector;
pub mod error;
pub mod external;
pub mod provision;
pub mod scope;
pub mod types;

pub use config::AzureConfig;
pub use connector::{Azure, AzureStats};
pub use error::AzureError;
