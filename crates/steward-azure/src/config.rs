//! The connector's settings: ConductorOne's documented names (mapped from flags and `BATON_*` variables by
//! the CLI). Identity settings (tenant, app, credential, cloud, endpoints, `mailbox_settings`,
//! `skip_ad_groups`, `skip_p2`) live in the embedded [`EntraConfig`], because users, groups and enterprise
//! applications are synced by the Entra ID connector's code.

use std::path::PathBuf;

use steward_entra::EntraConfig;
use steward_msgraph::Credential;

/// Settings of the Azure Infrastructure connector.
#[derive(Debug, Clone)]
pub struct AzureConfig {
    /// Who, where, and the Entra ID options.
    pub entra: EntraConfig,
    /// List only role definitions assigned (actively or eligibly) somewhere in their subscription.
    pub skip_unused_roles: bool,
    /// Do not list blob containers (nor their role assignments).
    pub skip_storage_containers: bool,
    /// Take users, groups, enterprise applications and system-assigned managed identities from this sync
    /// file (e.g. the Entra ID connector's) instead of reading Graph.
    pub external_resource_c1z: Option<PathBuf>,
    /// Allow grant and revoke.
    pub provisioning: bool,
}

impl AzureConfig {
    /// Settings with defaults for everything but who.
    pub fn new(tenant_id: &str, client_id: &str, credential: Credential) -> AzureConfig {
        AzureConfig {
            entra: EntraConfig::new(tenant_id, client_id, credential),
            skip_unused_roles: false,
            skip_storage_containers: false,
            external_resource_c1z: None,
            provisioning: false,
        }
    }
}
