//! `steward azure …`: the Azure Infrastructure connector as a Baton-style command (issue 6), and
//! `steward bench azure`.
//!
//! Settings are flags that are also read from the `BATON_*` environment variables of ConductorOne's
//! documentation for the Azure Infrastructure connector. One-shot mode syncs into `--file`; with
//! `--provisioning`, `--grant-entitlement ID --grant-principal ID --grant-principal-type TYPE` or
//! `--revoke-grant ID` change one role assignment, looked up by the ids of an earlier sync in `--file`
//! (a role not yet in use at a synced scope is granted by its entitlement id alone), then partially sync
//! the scope into `--file` so that readers show the change.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use steward_azure::{Azure, AzureConfig};
use steward_msgraph::{Credential, Secret};
use steward_sync::{Connector, ProgressEvent, SyncOptions, SyncPlan, run_sync};

/// The Azure Infrastructure connector.
#[derive(clap::Args, Clone)]
pub struct AzureArgs {
    /// The c1z file to write.
    #[arg(short = 'f', long, env = "BATON_FILE", default_value = "sync.c1z")]
    pub file: PathBuf,
    /// Microsoft Entra tenant id (GUID) or a verified domain.
    #[arg(long, env = "BATON_AZURE_TENANT_ID", default_value = "")]
    pub azure_tenant_id: String,
    /// Client id of the app registration the connector signs in as (Reader on the subscriptions; Owner or
    /// User Access Administrator to provision).
    #[arg(long, env = "BATON_AZURE_CLIENT_ID", default_value = "")]
    pub azure_client_id: String,
    /// Client secret of that app.
    #[arg(
        long,
        env = "BATON_AZURE_CLIENT_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub azure_client_secret: String,
    /// Certificate (PEM) registered on the app, instead of a secret.
    #[arg(long, env = "BATON_AZURE_CERTIFICATE")]
    pub azure_certificate: Option<PathBuf>,
    /// The certificate's RSA private key (PEM).
    #[arg(long, env = "BATON_AZURE_CERTIFICATE_KEY")]
    pub azure_certificate_key: Option<PathBuf>,
    /// Cloud: graph.microsoft.com, graph.microsoft.us (GCC High), dod-graph.microsoft.us,
    /// microsoftgraph.chinacloudapi.cn (login and ARM hosts follow).
    #[arg(long, env = "BATON_GRAPH_DOMAIN", default_value = "graph.microsoft.com")]
    pub graph_domain: String,
    /// Read mailbox settings: room, equipment and shared mailboxes become service accounts.
    #[arg(long, env = "BATON_MAILBOXSETTINGS")]
    pub mailbox_settings: bool,
    /// Leave out groups synced from on-premises Active Directory.
    #[arg(long, env = "BATON_SKIP_AD_GROUPS")]
    pub skip_ad_groups: bool,
    /// List only role definitions that are assigned somewhere in their subscription.
    #[arg(long, env = "BATON_SKIP_UNUSED_ROLES")]
    pub skip_unused_roles: bool,
    /// Do not sync blob containers.
    #[arg(long, env = "BATON_SKIP_STORAGE_CONTAINERS")]
    pub skip_storage_containers: bool,
    /// Take users, groups, enterprise applications and managed identities from this sync file (e.g. the
    /// Entra ID connector's) and link role grants to them, instead of reading them from Graph.
    #[arg(long, env = "BATON_EXTERNAL_RESOURCE_C1Z")]
    pub external_resource_c1z: Option<PathBuf>,
    /// Do not read PIM-eligible Azure role assignments (tenants without Microsoft Entra ID P2).
    #[arg(long, env = "BATON_SKIP_P2_FEATURES")]
    pub skip_p2_features: bool,
    /// Enable provisioning (grant / revoke).
    #[arg(short = 'p', long, env = "BATON_PROVISIONING")]
    pub provisioning: bool,
    /// One-shot provisioning: the entitlement to grant.
    #[arg(long, env = "BATON_GRANT_ENTITLEMENT")]
    pub grant_entitlement: Option<String>,
    /// One-shot provisioning: the principal to grant to.
    #[arg(long, env = "BATON_GRANT_PRINCIPAL")]
    pub grant_principal: Option<String>,
    /// One-shot provisioning: the principal's resource type (user, group, managed_identity, enterprise_application).
    #[arg(long, env = "BATON_GRANT_PRINCIPAL_TYPE")]
    pub grant_principal_type: Option<String>,
    /// One-shot provisioning: the grant to revoke.
    #[arg(long, env = "BATON_REVOKE_GRANT")]
    pub revoke_grant: Option<String>,
    /// Login base URL instead of the cloud's (e.g. an emulator).
    #[arg(long, env = "BATON_LOGIN_ENDPOINT")]
    pub login_endpoint: Option<String>,
    /// Graph base URL instead of the cloud's.
    #[arg(long, env = "BATON_GRAPH_ENDPOINT")]
    pub graph_endpoint: Option<String>,
    /// ARM base URL instead of the cloud's.
    #[arg(long, env = "BATON_ARM_ENDPOINT")]
    pub arm_endpoint: Option<String>,
    /// An extra CA certificate (PEM) to trust.
    #[arg(long, env = "BATON_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Requests in flight at most, per API and subscription.
    #[arg(long, env = "BATON_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
}

impl AzureArgs {
    fn config(&self) -> anyhow::Result<AzureConfig> {
        let credential = match (&self.azure_certificate, &self.azure_certificate_key) {
            (Some(c), Some(k)) => Credential::Certificate {
                certificate_pem: std::fs::read_to_string(c)
                    .with_context(|| format!("reading --azure-certificate {}", c.display()))?,
                private_key_pem: Secret::new(
                    std::fs::read_to_string(k)
                        .with_context(|| format!("reading --azure-certificate-key {}", k.display()))?,
                ),
            },
            (Some(_), None) | (None, Some(_)) => {
                bail!("a certificate needs both --azure-certificate and --azure-certificate-key")
            }
            (None, None) => Credential::Secret(Secret::new(self.azure_client_secret.clone())),
        };
        let mut c = AzureConfig::new(&self.azure_tenant_id, &self.azure_client_id, credential);
        c.entra.graph_domain = self.graph_domain.clone();
        c.entra.login_endpoint = self.login_endpoint.clone();
        c.entra.graph_endpoint = self.graph_endpoint.clone();
        c.entra.arm_endpoint = self.arm_endpoint.clone();
        c.entra.ca_file = self.ca_file.clone();
        c.entra.mailbox_settings = self.mailbox_settings;
        c.entra.skip_ad_groups = self.skip_ad_groups;
        c.entra.skip_p2 = self.skip_p2_features;
        c.entra.concurrency = self.concurrency;
        c.skip_unused_roles = self.skip_unused_roles;
        c.skip_storage_containers = self.skip_storage_containers;
        c.external_resource_c1z = self.external_resource_c1z.clone();
        c.provisioning = self.provisioning;
        Ok(c)
    }
}

pub fn run(a: AzureArgs) -> anyhow::Result<()> {
    if a.azure_tenant_id.is_empty() || a.azure_client_id.is_empty() {
        bail!(
            "--azure-tenant-id and --azure-client-id (BATON_AZURE_TENANT_ID, BATON_AZURE_CLIENT_ID) are required"
        );
    }
    let cfg = a.config()?;
    super::runtime()?.block_on(async move {
        let az = Arc::new(Azure::new(cfg)?);
        if a.grant_entitlement.is_some() || a.revoke_grant.is_some() {
            return provision(&a, &az).await;
        }
        az.validate().await?;
        let t0 = Instant::now();
        let opts = SyncOptions {
            concurrency: 64,
            ..SyncOptions::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressEvent>();
        let progress = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                match ev {
                    ProgressEvent::Warning { message } => eprintln!("warning: {message}"),
                    ProgressEvent::Finishing => eprintln!("finishing: indexes, grant expansion, compression"),
                    _ => {}
                }
            }
        });
        let s = run_sync(az.clone(), &a.file, SyncPlan::Full, opts, Some(tx)).await?;
        let _ = progress.await;
        let st = az.stats();
        if az.p2_missing() {
            eprintln!(
                "warning: the tenant has no Microsoft Entra ID P2: PIM-eligible Azure role assignments were not synced; pass --skip-p2-features (BATON_SKIP_P2_FEATURES=true) to skip them deliberately"
            );
        }
        eprintln!(
            "synced {} in {:.1} s: {} resources, {} entitlements, {} grants (+{} by expansion: group members and inherited roles); {} ARM requests ({} throttled), {} Graph requests; {} principals left out (not synced)",
            a.file.display(),
            t0.elapsed().as_secs_f64(),
            s.resources,
            s.entitlements,
            s.grants,
            s.end.expansion.grants_created,
            st.arm.requests,
            st.arm.throttled,
            st.graph.requests + st.entra.requests,
            az.left_out()
        );
        Ok(())
    })
}

async fn provision(a: &AzureArgs, az: &Arc<Azure>) -> anyhow::Result<()> {
    if !a.provisioning {
        bail!("{}", steward_azure::AzureError::ProvisioningDisabled);
    }
    if a.grant_entitlement.is_some() && a.revoke_grant.is_some() {
        bail!("give either --grant-entitlement or --revoke-grant, not both");
    }
    if !a.file.exists() {
        bail!(
            "{} does not exist: run a sync first (steward azure -f {} …), then provision by the ids it holds",
            a.file.display(),
            a.file.display()
        );
    }
    let scope = if let Some(ent_id) = &a.grant_entitlement {
        let (Some(pid), Some(pt)) = (&a.grant_principal, &a.grant_principal_type) else {
            bail!(
                "--grant-entitlement needs --grant-principal ID and --grant-principal-type TYPE (user, group, managed_identity, enterprise_application)"
            );
        };
        let (ent, principal) = {
            let r = steward_c1z::C1zReader::open(&a.file)
                .with_context(|| format!("reading {}", a.file.display()))?;
            let pid = steward_model::ResourceId::new(pt.as_str(), pid.as_str());
            let Some(principal) = r.resource(&pid)? else {
                bail!(
                    "principal {pid} is not in {}; run a full sync first",
                    a.file.display()
                );
            };
            let ent = match r.entitlement(ent_id)? {
                Some(e) => e,
                // Another spelling of the scope, or a role not yet in use there (no entitlement in the file):
                // the id says it all, as long as the scope itself was synced.
                None => {
                    let e = entitlement_from_id(ent_id)?;
                    match r.entitlement(&e.id)? {
                        Some(known) => known,
                        None if r.resource(&scope_id(&e)?)?.is_none() => bail!(
                            "the scope of {ent_id} is not in {}; run a full sync first",
                            a.file.display()
                        ),
                        None => e,
                    }
                }
            };
            (ent, principal)
        };
        let grants = az.grant(&principal, &ent).await?;
        for g in grants {
            println!("granted {}", g.id);
        }
        scope_id(&ent)?
    } else {
        let id = a.revoke_grant.clone().unwrap_or_default();
        let g = match steward_c1z::C1zReader::open(&a.file)
            .with_context(|| format!("reading {}", a.file.display()))?
            .grant(&id)?
        {
            Some(g) => g,
            // Not in the file (e.g. granted after the last sync): the id says everything needed.
            None => grant_from_id(&id)?,
        };
        az.revoke(&g).await?;
        println!("revoked {id}");
        scope_id(g.entitlement.as_ref().context("the grant names no entitlement")?)?
    };
    // Record what the scope now holds: a partial sync of it, which readers lay over the full sync.
    let opts = SyncOptions {
        concurrency: 16,
        ..SyncOptions::default()
    };
    let plan = SyncPlan::Partial {
        resources: vec![scope.clone()],
    };
    let summary = run_sync(az.clone(), &a.file, plan, opts, None).await.with_context(|| {
        format!(
            "the change is made, but the partial sync of {scope} into {} failed; run a sync to update the file",
            a.file.display()
        )
    })?;
    eprintln!(
        "updated {}: partial sync {} of {scope} ({} grants; grants derived through groups or from scopes above it show again after the next full sync)",
        a.file.display(),
        summary.sync_id,
        summary.grants
    );
    Ok(())
}

/// The scope resource an Azure role entitlement is on, its id canonical.
fn scope_id(e: &steward_model::Entitlement) -> anyhow::Result<steward_model::ResourceId> {
    let id = e
        .resource
        .as_ref()
        .and_then(|r| r.id.clone())
        .with_context(|| format!("entitlement {} names no resource", e.id))?;
    canonical_scope(&id.resource_type, &id.resource)
        .with_context(|| format!("{} is not an Azure role entitlement", e.id))
}

/// `(resource type, id)` of a scope resource with the id spelled as the connector emits it (ARM ids in any
/// case are accepted).
fn canonical_scope(rt: &str, id: &str) -> Option<steward_model::ResourceId> {
    let sc = steward_azure::scope::of(rt, id)?;
    let id = if rt == steward_azure::types::SUBSCRIPTION {
        steward_azure::scope::subscription_of(&sc)?.to_owned()
    } else {
        sc
    };
    Some(steward_model::ResourceId::new(rt, id))
}

/// An entitlement rebuilt from its id `<type>:<id>:role:<guid>[:eligible]` (ARM ids hold no `:`), its
/// scope spelled canonically.
fn entitlement_from_id(ent: &str) -> anyhow::Result<steward_model::Entitlement> {
    let (rt, rest) = ent.split_once(':').unwrap_or_default();
    let (Some(i), Some(scope)) = (
        rest.find(":role:"),
        rest.find(":role:").and_then(|i| canonical_scope(rt, &rest[..i])),
    ) else {
        bail!(
            "{ent} is not an Azure role entitlement id (<type>:<id>:role:<guid>, type subscription, resource_group, storage_account or container)"
        );
    };
    let resource =
        steward_model::builders::ResourceBuilder::new(&scope.resource_type, &scope.resource, &scope.resource)
            .build();
    Ok(steward_model::builders::entitlement(
        &resource,
        &rest[i + 1..].to_ascii_lowercase(),
        ent,
        steward_model::pb::entitlement::PurposeValue::Assignment,
        &[],
    ))
}

/// A grant rebuilt from its id `<type>:<id>:role:<guid>[:eligible]:<principal type>:<principal id>`.
fn grant_from_id(id: &str) -> anyhow::Result<steward_model::Grant> {
    let mut parts = id.rsplitn(3, ':');
    let (Some(pid), Some(pt), Some(ent)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("{id} is not a grant id of this connector");
    };
    let e = entitlement_from_id(ent).with_context(|| format!("{id} is not an Azure role grant id"))?;
    let principal = steward_model::builders::ResourceBuilder::new(pt, pid, pid).build();
    Ok(steward_model::builders::grant(&e, &principal))
}

/// `steward bench azure`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// small, medium, large, xl or a tenant JSON file.
    #[arg(long, default_value = "large")]
    pub tenant: String,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Emulated latency per request.
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    /// microsoft (ARM's and Graph's buckets) or off.
    #[arg(long, default_value = "microsoft")]
    pub throttle: String,
    /// Requests in flight at most, per API and subscription.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let tenant = steward_sim::load_tenant(&a.tenant, a.seed)?;
    super::runtime()?.block_on(async move {
        let dir = std::env::temp_dir().join(format!("steward-bench-azure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let settings = steward_sim::ctx::Settings {
            seed: a.seed,
            latency_ms: a.latency_ms,
            throttle: a.throttle == "microsoft",
            ..Default::default()
        };
        let running = steward_sim::start(steward_sim::Options {
            tenant,
            settings,
            listen: "127.0.0.1:0".parse()?,
            tls: false,
            proxy: None,
            state_dir: dir.clone(),
        })
        .await?;
        let ready = running.ready.clone();
        let mut cfg = AzureConfig::new(
            &ready.tenant_id,
            &ready.client_id,
            Credential::Secret(Secret::new(ready.client_secret.clone())),
        );
        cfg.entra.login_endpoint = Some(ready.login.clone());
        cfg.entra.graph_endpoint = Some(ready.graph.clone());
        cfg.entra.arm_endpoint = Some(ready.arm.clone());
        cfg.entra.concurrency = a.concurrency;
        let az = Arc::new(Azure::new(cfg)?);
        let file = dir.join("bench.c1z");
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressEvent>();
        let fetch_done = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if ev == ProgressEvent::Finishing {
                    return Some(t0.elapsed().as_secs_f64());
                }
            }
            None
        });
        let opts = SyncOptions {
            concurrency: 64,
            ..SyncOptions::default()
        };
        let summary = run_sync(az.clone(), &file, SyncPlan::Full, opts, Some(tx)).await?;
        let wall = t0.elapsed().as_secs_f64();
        let fetch = fetch_done.await.ok().flatten().unwrap_or(wall);
        let st = az.stats();
        let by_sub = az.arm_requests_by_subscription();
        // ARM's read bucket per principal and subscription: 250 at once, then 25 per second.
        let floor = by_sub
            .iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(_, n)| (*n as f64 - 250.0).max(0.0) / 25.0)
            .fold(0.0, f64::max);
        let busiest = by_sub.iter().filter(|(k, _)| !k.is_empty()).map(|(_, n)| *n).max().unwrap_or(0);
        let (_, peak) = crate::cmd::bench::rss_mib();
        println!(
            "azure sync of {} (seed {}), latency {} ms, throttle {}: {:.2} s wall",
            a.tenant, a.seed, a.latency_ms, a.throttle, wall
        );
        println!(
            "  reading the tenant: {fetch:.2} s; writing the file (indexes, expansion, compression): {:.2} s",
            wall - fetch
        );
        println!(
            "  {} resources, {} entitlements, {} grants (+{} by expansion)",
            summary.resources, summary.entitlements, summary.grants, summary.end.expansion.grants_created
        );
        println!(
            "  ARM: {} requests over {} subscriptions (busiest {}), {} throttled (429), {} retried",
            st.arm.requests,
            by_sub.len().saturating_sub(1),
            busiest,
            st.arm.throttled,
            st.arm.retries
        );
        println!(
            "  Graph: {} requests (directory index {}, Entra ID code {}), {} throttled",
            st.graph.requests + st.entra.requests,
            st.graph.requests,
            st.entra.requests,
            st.graph.throttled + st.entra.throttled
        );
        println!(
            "  ARM bucket floor: {floor:.2} s (busiest subscription: (requests − 250 burst) ÷ 25/s); left out: {}",
            az.left_out()
        );
        println!("  peak RSS (emulator + connector in one process): {peak} MiB");
        running.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}
