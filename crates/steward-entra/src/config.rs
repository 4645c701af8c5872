//! The connector's settings (ConductorOne's documented names, mapped from flags and `BATON_*` variables by
//! the CLI) and how they turn into a Graph client.

use std::path::PathBuf;

use steward_msgraph::{Config, Credential, Endpoints, Microsoft};

use crate::error::EntraError;

/// Settings of the Entra ID connector.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// Tenant id (GUID) or a verified domain.
    pub tenant_id: String,
    /// The app's client id.
    pub client_id: String,
    /// Client secret or certificate.
    pub credential: Credential,
    /// The cloud: graph.microsoft.com, graph.microsoft.us, dod-graph.microsoft.us, microsoftgraph.chinacloudapi.cn.
    pub graph_domain: String,
    /// Login base URL override.
    pub login_endpoint: Option<String>,
    /// Graph base URL override.
    pub graph_endpoint: Option<String>,
    /// ARM base URL override (unused by this connector; kept for one client per app).
    pub arm_endpoint: Option<String>,
    /// An extra CA certificate (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Read each user's mailbox `userPurpose`: room, equipment and shared mailboxes become service accounts.
    pub mailbox_settings: bool,
    /// Leave out groups synced from on-premises Active Directory.
    pub skip_ad_groups: bool,
    /// Do not read PIM eligibility (needs Entra ID P2).
    pub skip_p2: bool,
    /// Leave out Microsoft's first-party service principals (appOwnerOrganizationId = Microsoft's tenant).
    /// Default: they are synced, because they carry the application permissions (e.g. Microsoft Graph's
    /// `Directory.ReadWrite.All` app role) — the riskiest grants in a tenant.
    pub exclude_microsoft_apps: bool,
    /// Graph requests in flight at most.
    pub concurrency: usize,
    /// Allow grant and revoke (`--provisioning` / `BATON_PROVISIONING`). Off by default: a connector
    /// only reads unless asked to write.
    pub provisioning: bool,
}

impl EntraConfig {
    /// Settings with defaults for everything but who.
    pub fn new(tenant_id: &str, client_id: &str, credential: Credential) -> EntraConfig {
        EntraConfig {
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            credential,
            graph_domain: "graph.microsoft.com".into(),
            login_endpoint: None,
            graph_endpoint: None,
            arm_endpoint: None,
            ca_file: None,
            mailbox_settings: false,
            skip_ad_groups: false,
            skip_p2: false,
            exclude_microsoft_apps: false,
            concurrency: 48,
            provisioning: false,
        }
    }

    /// The Microsoft client these settings describe.
    pub fn microsoft(&self) -> Result<Microsoft, EntraError> {
        let ep = Endpoints::new(
            &self.graph_domain,
            self.login_endpoint.as_deref(),
            self.graph_endpoint.as_deref(),
            self.arm_endpoint.as_deref(),
        )?;
        let mut c = Config::new(ep, &self.tenant_id, &self.client_id, self.credential.clone());
        c.ca_file = self.ca_file.clone();
        c.concurrency = self.concurrency.max(1);
        Ok(Microsoft::new(c)?)
    }
}
