//! `steward entra …`: the Entra ID connector as a Baton-style command (issue 4), and `steward bench entra`.
//!
//! Settings are flags that are also read from the `BATON_*` environment variables of ConductorOne's
//! documentation. One-shot mode (the default) syncs the tenant into `--file`; progress goes to stderr
//! (a rewritten status line on a terminal, a line every few seconds otherwise) and a summary follows.
//! `--log-level` is steward's global flag (env STEWARD_LOG). With `--provisioning`, `--grant-entitlement ID
//! --grant-principal ID --grant-principal-type TYPE` (optionally `--grant-end`) or `--revoke-grant ID` make one
//! change, print it, and partially sync the affected resource into `--file`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use steward_entra::{Entra, EntraConfig};
use steward_msgraph::{Credential, Secret};
use steward_sync::{Connector, ProgressEvent, SyncOptions, SyncPlan, SyncSummary, run_sync};

/// The Entra ID connector.
#[derive(clap::Args)]
pub struct EntraArgs {
    #[command(subcommand)]
    pub command: Option<EntraCommand>,
    #[command(flatten)]
    pub settings: Settings,
}

/// What else than a sync.
#[derive(clap::Subcommand, Clone, Copy)]
pub enum EntraCommand {
    /// Print what each resource type supports (sync / provision) as JSON.
    Capabilities,
    /// Print the connector's settings (names, environment variables, defaults) as JSON.
    Config,
}

/// Connector settings (flags and `BATON_*` variables).
#[derive(clap::Args, Clone)]
pub struct Settings {
    /// The c1z file to write.
    #[arg(short = 'f', long, env = "BATON_FILE", default_value = "sync.c1z")]
    pub file: PathBuf,
    /// Microsoft Entra tenant id (GUID) or a verified domain.
    #[arg(long, env = "BATON_ENTRA_TENANT_ID", default_value = "")]
    pub entra_tenant_id: String,
    /// Client id of the app registration the connector signs in as.
    #[arg(long, env = "BATON_ENTRA_CLIENT_ID", default_value = "")]
    pub entra_client_id: String,
    /// Client secret of that app (its Value, not its Secret ID).
    #[arg(
        long,
        env = "BATON_ENTRA_CLIENT_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub entra_client_secret: String,
    /// Certificate (PEM) registered on the app, instead of a secret.
    #[arg(long, env = "BATON_ENTRA_CERTIFICATE")]
    pub entra_certificate: Option<PathBuf>,
    /// The certificate's RSA private key (PEM).
    #[arg(long, env = "BATON_ENTRA_CERTIFICATE_KEY")]
    pub entra_certificate_key: Option<PathBuf>,
    /// Cloud: graph.microsoft.com, graph.microsoft.us (GCC High), dod-graph.microsoft.us, microsoftgraph.chinacloudapi.cn.
    #[arg(long, env = "BATON_GRAPH_DOMAIN", default_value = "graph.microsoft.com")]
    pub graph_domain: String,
    /// Read mailbox settings: room, equipment and shared mailboxes become service accounts (needs MailboxSettings.Read).
    #[arg(long, env = "BATON_MAILBOXSETTINGS")]
    pub mailbox_settings: bool,
    /// Leave out groups synced from on-premises Active Directory.
    #[arg(long, env = "BATON_SKIP_AD_GROUPS")]
    pub skip_ad_groups: bool,
    /// Do not read PIM eligibility (tenants without Microsoft Entra ID P2).
    #[arg(long, env = "BATON_SKIP_P2_FEATURES")]
    pub skip_p2_features: bool,
    /// Leave out Microsoft's first-party service principals (synced by default: they carry application permissions).
    #[arg(long, env = "BATON_EXCLUDE_MICROSOFT_APPS")]
    pub exclude_microsoft_apps: bool,
    /// Enable provisioning (grant / revoke).
    #[arg(short = 'p', long, env = "BATON_PROVISIONING")]
    pub provisioning: bool,
    /// One-shot provisioning: the entitlement to grant.
    #[arg(long, env = "BATON_GRANT_ENTITLEMENT")]
    pub grant_entitlement: Option<String>,
    /// One-shot provisioning: the principal to grant to.
    #[arg(long, env = "BATON_GRANT_PRINCIPAL")]
    pub grant_principal: Option<String>,
    /// One-shot provisioning: the principal's resource type.
    #[arg(long, env = "BATON_GRANT_PRINCIPAL_TYPE")]
    pub grant_principal_type: Option<String>,
    /// One-shot provisioning: the grant to revoke.
    #[arg(long, env = "BATON_REVOKE_GRANT")]
    pub revoke_grant: Option<String>,
    /// One-shot provisioning: when the granted access ends (RFC 3339). Enforced by Microsoft for directory
    /// roles (PIM schedules); for other entitlements the platform revokes on time.
    #[arg(long, env = "BATON_GRANT_END", requires = "grant_entitlement")]
    pub grant_end: Option<String>,
    /// One-shot provisioning: justification recorded with PIM requests.
    #[arg(long, env = "BATON_GRANT_JUSTIFICATION", requires = "grant_entitlement")]
    pub grant_justification: Option<String>,
    /// Log format: console or json (the level is the global --log-level / STEWARD_LOG).
    #[arg(long, env = "BATON_LOG_FORMAT", default_value = "console")]
    pub log_format: String,
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
    /// Service mode: client id at the Steward server.
    #[arg(long, env = "BATON_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Service mode: client secret at the Steward server.
    #[arg(long, env = "BATON_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: Option<String>,
    /// Graph requests in flight at most.
    #[arg(long, env = "BATON_CONCURRENCY", default_value_t = 48)]
    pub concurrency: usize,
    /// Read only what changed since the previous full sync in --file (Graph delta links kept with it);
    /// the result is a full sync all the same. Falls back to a full read, saying why, when that is not possible.
    #[arg(long, env = "BATON_INCREMENTAL")]
    pub incremental: bool,
}

impl Settings {
    fn config(&self) -> anyhow::Result<EntraConfig> {
        let credential = match (&self.entra_certificate, &self.entra_certificate_key) {
            (Some(c), Some(k)) => Credential::Certificate {
                certificate_pem: std::fs::read_to_string(c)
                    .with_context(|| format!("reading --entra-certificate {}", c.display()))?,
                private_key_pem: Secret::new(
                    std::fs::read_to_string(k)
                        .with_context(|| format!("reading --entra-certificate-key {}", k.display()))?,
                ),
            },
            (Some(_), None) | (None, Some(_)) => {
                bail!("a certificate needs both --entra-certificate and --entra-certificate-key")
            }
            (None, None) => Credential::Secret(Secret::new(self.entra_client_secret.clone())),
        };
        let mut c = EntraConfig::new(&self.entra_tenant_id, &self.entra_client_id, credential);
        c.graph_domain = self.graph_domain.clone();
        c.login_endpoint = self.login_endpoint.clone();
        c.graph_endpoint = self.graph_endpoint.clone();
        c.arm_endpoint = self.arm_endpoint.clone();
        c.ca_file = self.ca_file.clone();
        c.mailbox_settings = self.mailbox_settings;
        c.skip_ad_groups = self.skip_ad_groups;
        c.skip_p2 = self.skip_p2_features;
        c.exclude_microsoft_apps = self.exclude_microsoft_apps;
        c.concurrency = self.concurrency;
        c.provisioning = self.provisioning;
        Ok(c)
    }
}

pub fn run(a: EntraArgs) -> anyhow::Result<()> {
    let s = a.settings;
    match a.command {
        Some(EntraCommand::Capabilities) => {
            let caps: Vec<serde_json::Value> = steward_entra::types::all()
                .iter()
                .map(|t| {
                    let provision = matches!(
                        t.id.as_str(),
                        steward_entra::types::GROUP | steward_entra::types::APP | steward_entra::types::ROLE
                    );
                    serde_json::json!({"resource_type": t.id, "sync": true, "provision": provision})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&caps)?);
            return Ok(());
        }
        Some(EntraCommand::Config) => {
            println!("{}", serde_json::to_string_pretty(&config_schema())?);
            return Ok(());
        }
        None => {}
    }
    if s.client_id.is_some() || s.client_secret.is_some() {
        bail!(
            "service mode (--client-id/--client-secret, BATON_CLIENT_ID/BATON_CLIENT_SECRET) is not available yet: unset them to run a one-shot sync into --file"
        );
    }
    if s.log_format != "console" && s.log_format != "json" {
        bail!("--log-format must be console or json");
    }
    if s.grant_entitlement.is_some() || s.revoke_grant.is_some() {
        return provision(&s);
    }
    let cfg = s.config()?;
    super::runtime()?.block_on(async move {
        let entra = Arc::new(Entra::new(cfg)?);
        entra.validate().await?;
        if s.incremental {
            match steward_sync::previous_sync(&s.file)? {
                Some(prev) => entra.set_previous(prev),
                None => tracing::warn!(
                    file = %s.file.display(),
                    "--incremental: the file holds no finished full sync to start from; doing a full sync"
                ),
            }
        }
        let started = Instant::now();
        let summary = sync_with_progress(entra.clone(), &s.file, s.log_format == "json").await?;
        print_summary(
            &summary,
            &entra,
            started.elapsed(),
            &s.file,
            s.log_format == "json",
        );
        Ok(())
    })
}

/// One-shot `--grant-entitlement` / `--revoke-grant`: ids are looked up in the sync file (`-f`), the change
/// is made (or found already made), printed, and followed by a partial sync of the affected resource so that
/// the file records what the tenant now holds.
fn provision(s: &Settings) -> anyhow::Result<()> {
    if !s.provisioning {
        bail!("{}", steward_entra::EntraError::ProvisioningDisabled);
    }
    if s.grant_entitlement.is_some() && s.revoke_grant.is_some() {
        bail!("give either --grant-entitlement or --revoke-grant, not both");
    }
    if !s.file.exists() {
        bail!(
            "{} does not exist: run a sync first (steward entra -f {} …), then provision by the ids it holds",
            s.file.display(),
            s.file.display()
        );
    }
    let json = s.log_format == "json";
    let cfg = s.config()?;
    super::runtime()?.block_on(async move {
        let entra = Arc::new(Entra::new(cfg)?);
        let change = if let Some(ent_id) = &s.grant_entitlement {
            let (Some(pid), Some(ptype)) = (&s.grant_principal, &s.grant_principal_type) else {
                bail!("--grant-entitlement needs --grant-principal ID and --grant-principal-type TYPE (user, group, enterprise_application, managed_identity)");
            };
            let principal = steward_model::ResourceId::new(ptype.as_str(), pid.as_str());
            {
                let r = steward_c1z::C1zReader::open(&s.file)
                    .with_context(|| format!("reading {}", s.file.display()))?;
                if r.entitlement(ent_id)?.is_none() {
                    bail!("entitlement {ent_id} is not in {}; run a full sync first", s.file.display());
                }
                if r.resource(&principal)?.is_none() {
                    bail!("principal {principal} is not in {}; run a full sync first", s.file.display());
                }
            }
            let opts = steward_entra::GrantOptions {
                end: s.grant_end.clone(),
                justification: s.grant_justification.clone(),
            };
            entra.grant_entitlement(ent_id, &principal, &opts).await?
        } else {
            let grant_id = s.revoke_grant.clone().unwrap_or_default();
            let (ent_id, principal) = steward_entra::provision::split_grant_id(&grant_id)?;
            let (resource, _) = steward_entra::provision::Target::parse(&ent_id)?;
            match file_holds(&s.file, &resource, &grant_id)? {
                Some((true, _)) => {}
                Some((false, sync_id)) => eprintln!(
                    "note: {} (sync {sync_id}) records no grant {grant_id}; checking the tenant anyway",
                    s.file.display()
                ),
                None => bail!(
                    "{resource} (of grant {grant_id}) is not in {}; run a full sync first",
                    s.file.display()
                ),
            }
            let _ = principal;
            entra.revoke_grant(&grant_id).await?
        };
        if json {
            println!("{}", serde_json::to_string(&change)?);
        } else {
            println!("{change}");
        }
        let opts = SyncOptions {
            concurrency: 16,
            ..SyncOptions::default()
        };
        let plan = SyncPlan::Partial {
            resources: vec![change.resource()],
        };
        let summary = run_sync(entra.clone(), &s.file, plan, opts, None)
            .await
            .with_context(|| {
                format!(
                    "the change is made, but the partial sync of {} into {} failed; run a sync to update the file",
                    change.resource(),
                    s.file.display()
                )
            })?;
        eprintln!(
            "updated {}: partial sync {} of {} ({} grants)",
            s.file.display(),
            summary.sync_id,
            change.resource(),
            summary.grants
        );
        Ok(())
    })
}

/// Whether the newest finished sync in `file` that holds `resource` (a full sync, or a later partial sync of
/// that resource) records `grant_id`; with that sync's id. `None` when no sync holds the resource.
fn file_holds(
    file: &Path,
    resource: &steward_model::ResourceId,
    grant_id: &str,
) -> anyhow::Result<Option<(bool, String)>> {
    let mut r = steward_c1z::C1zReader::open(file).with_context(|| format!("reading {}", file.display()))?;
    let mut runs: Vec<_> = r
        .sync_runs()?
        .into_iter()
        .filter(|x| x.ended_at.is_some())
        .collect();
    runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    for run in runs {
        r.select_sync(&run.sync_id)?;
        if r.resource(resource)?.is_some() {
            return Ok(Some((r.grant(grant_id)?.is_some(), run.sync_id)));
        }
    }
    Ok(None)
}

async fn sync_with_progress(entra: Arc<Entra>, file: &Path, json: bool) -> anyhow::Result<SyncSummary> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressEvent>();
    let tty = std::io::stderr().is_terminal() && !json;
    let e2 = entra.clone();
    let progress = tokio::spawn(async move {
        let started = Instant::now();
        let (mut pages, mut rows, mut throttled) = (0u64, 0u64, 0u64);
        let mut last = Instant::now();
        while let Some(ev) = rx.recv().await {
            match ev {
                ProgressEvent::Page { rows: r, .. } => {
                    pages += 1;
                    rows += r as u64;
                }
                ProgressEvent::RateLimited { .. } => throttled += 1,
                ProgressEvent::Warning { message } => eprintln!("warning: {message}"),
                ProgressEvent::Finishing => {
                    if tty {
                        eprintln!();
                    }
                    eprintln!("finishing: indexes, grant expansion, compression");
                }
                _ => {}
            }
            let every = if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(5)
            };
            if last.elapsed() >= every {
                last = Instant::now();
                let st = e2.stats();
                let line = format!(
                    "{:>6.1}s  {pages} pages  {rows} rows  {} Graph requests  {} RU  {} throttled",
                    started.elapsed().as_secs_f64(),
                    st.requests,
                    st.resource_units,
                    st.throttled + throttled
                );
                if tty {
                    eprint!("\r{line}");
                } else if json {
                    eprintln!(
                        "{}",
                        serde_json::json!({"msg": "progress", "pages": pages, "rows": rows, "requests": st.requests, "resource_units": st.resource_units, "elapsed_s": started.elapsed().as_secs_f64()})
                    );
                } else {
                    eprintln!("progress: {line}");
                }
            }
        }
    });
    let opts = SyncOptions {
        concurrency: 64,
        ..SyncOptions::default()
    };
    let r = run_sync(entra, file, SyncPlan::Full, opts, Some(tx)).await;
    let _ = progress.await;
    Ok(r?)
}

fn print_summary(s: &SyncSummary, e: &Entra, took: Duration, file: &Path, json: bool) {
    let st = e.stats();
    if json {
        eprintln!(
            "{}",
            serde_json::json!({"msg": "sync finished", "file": file, "sync_id": s.sync_id, "mode": e.sync_mode(), "seconds": took.as_secs_f64(),
                "resources": s.resources, "entitlements": s.entitlements, "grants": s.grants,
                "expanded_grants": s.end.expansion.grants_created, "requests": st, "left_out": e.left_out()})
        );
        return;
    }
    eprintln!(
        "synced {} ({}) in {:.1} s: {} resources, {} entitlements, {} grants (+{} by group expansion); {} Graph requests ({} inside $batch), {} resource units, {} throttled, {} retried; {} members/assignees left out (not synced)",
        file.display(),
        e.sync_mode().unwrap_or("full"),
        took.as_secs_f64(),
        s.resources,
        s.entitlements,
        s.grants,
        s.end.expansion.grants_created,
        st.requests,
        st.batched,
        st.resource_units,
        st.throttled,
        st.retries,
        e.left_out(),
    );
}

fn config_schema() -> serde_json::Value {
    let f = |name: &str, env: &str, kind: &str, default: serde_json::Value, help: &str| serde_json::json!({"flag": format!("--{name}"), "env": env, "type": kind, "default": default, "help": help});
    serde_json::json!({"connector": "entra", "settings": [
        f("entra-tenant-id", "BATON_ENTRA_TENANT_ID", "string", "".into(), "Tenant id or verified domain (required)"),
        f("entra-client-id", "BATON_ENTRA_CLIENT_ID", "string", "".into(), "App registration client id (required)"),
        f("entra-client-secret", "BATON_ENTRA_CLIENT_SECRET", "secret", "".into(), "Client secret (or a certificate)"),
        f("entra-certificate", "BATON_ENTRA_CERTIFICATE", "path", serde_json::Value::Null, "Certificate PEM registered on the app"),
        f("entra-certificate-key", "BATON_ENTRA_CERTIFICATE_KEY", "path", serde_json::Value::Null, "The certificate's RSA private key PEM"),
        f("graph-domain", "BATON_GRAPH_DOMAIN", "string", "graph.microsoft.com".into(), "Cloud: graph.microsoft.com, graph.microsoft.us, dod-graph.microsoft.us, microsoftgraph.chinacloudapi.cn"),
        f("mailbox-settings", "BATON_MAILBOXSETTINGS", "bool", false.into(), "Room, equipment and shared mailboxes become service accounts"),
        f("skip-ad-groups", "BATON_SKIP_AD_GROUPS", "bool", false.into(), "Leave out on-premises synced groups"),
        f("skip-p2-features", "BATON_SKIP_P2_FEATURES", "bool", false.into(), "Do not read PIM eligibility"),
        f("exclude-microsoft-apps", "BATON_EXCLUDE_MICROSOFT_APPS", "bool", false.into(), "Leave out Microsoft first-party service principals"),
        f("provisioning", "BATON_PROVISIONING", "bool", false.into(), "Enable grant/revoke (--grant-entitlement/--grant-principal/--grant-principal-type, --revoke-grant)"),
        f("grant-entitlement", "BATON_GRANT_ENTITLEMENT", "string", serde_json::Value::Null, "One-shot: entitlement id to grant (with --grant-principal, --grant-principal-type)"),
        f("grant-principal", "BATON_GRANT_PRINCIPAL", "string", serde_json::Value::Null, "One-shot: principal id"),
        f("grant-principal-type", "BATON_GRANT_PRINCIPAL_TYPE", "string", serde_json::Value::Null, "One-shot: user, group, enterprise_application or managed_identity"),
        f("grant-end", "BATON_GRANT_END", "RFC 3339", serde_json::Value::Null, "One-shot: end of the granted access (enforced by Microsoft for directory roles)"),
        f("grant-justification", "BATON_GRANT_JUSTIFICATION", "string", serde_json::Value::Null, "One-shot: justification recorded with PIM requests"),
        f("revoke-grant", "BATON_REVOKE_GRANT", "string", serde_json::Value::Null, "One-shot: grant id to revoke"),
        f("file", "BATON_FILE", "path", "sync.c1z".into(), "Output c1z"),
        f("login-endpoint", "BATON_LOGIN_ENDPOINT", "url", serde_json::Value::Null, "Login base URL override"),
        f("graph-endpoint", "BATON_GRAPH_ENDPOINT", "url", serde_json::Value::Null, "Graph base URL override"),
        f("arm-endpoint", "BATON_ARM_ENDPOINT", "url", serde_json::Value::Null, "ARM base URL override"),
        f("ca-file", "BATON_CA_FILE", "path", serde_json::Value::Null, "Extra CA certificate (PEM)"),
        f("concurrency", "BATON_CONCURRENCY", "int", 48.into(), "Graph requests in flight at most"),
        f("incremental", "BATON_INCREMENTAL", "bool", false.into(), "Read only what changed since the previous full sync in --file (Graph delta links); falls back to a full read"),
    ]})
}

/// `steward bench entra`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Tenant size (small, medium, large, xl).
    #[arg(long, default_value = "medium")]
    pub tenant: String,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Emulated latency per request, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub latency_ms: u64,
    /// `microsoft` (Graph's resource-unit budget, 429 + Retry-After) or `off`.
    #[arg(long, default_value = "microsoft")]
    pub throttle: String,
    /// Read mailbox settings too.
    #[arg(long)]
    pub mailbox_settings: bool,
    /// Graph requests in flight at most.
    #[arg(long, default_value_t = 48)]
    pub concurrency: usize,
    /// After the full sync, change this share of the tenant (users, memberships, owners, a group, app
    /// assignments) and sync again incrementally; report both syncs' requests and check the result
    /// against a third, full sync of the changed tenant.
    #[arg(long)]
    pub incremental: bool,
    /// The share changed before the incremental sync.
    #[arg(long, default_value_t = 0.01)]
    pub churn: f64,
    /// Print a timeline to stderr every second of the full sync: resource units and requests the emulator
    /// served, the client's requests waiting for the budget and in flight, the budget's units left, CPU
    /// by thread (writer, tokio workers) and the busiest routes.
    #[arg(long)]
    pub timeline: bool,
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let tenant = steward_sim::load_tenant(&a.tenant, a.seed)?;
    let m = steward_sim::Manifest::of(&tenant);
    let users = m.users as u64;
    super::runtime()?.block_on(async move {
        let dir = tempfile_dir()?;
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
        let mut cfg = EntraConfig::new(
            &ready.tenant_id,
            &ready.client_id,
            Credential::Secret(Secret::new(ready.client_secret.clone())),
        );
        cfg.login_endpoint = Some(ready.login.clone());
        cfg.graph_endpoint = Some(ready.graph.clone());
        cfg.mailbox_settings = a.mailbox_settings;
        cfg.concurrency = a.concurrency;
        let entra = Arc::new(Entra::new(cfg)?);
        let file = dir.join("bench.c1z");
        let t0 = Instant::now();
        let opts = SyncOptions {
            concurrency: 64,
            ..SyncOptions::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressEvent>();
        let fetch_done = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if ev == ProgressEvent::Finishing {
                    return Some(t0.elapsed().as_secs_f64());
                }
            }
            None
        });
        let timeline = a
            .timeline
            .then(|| tokio::spawn(timeline(running.sim.clone(), entra.clone(), t0)));
        let summary = run_sync(entra.clone(), &file, SyncPlan::Full, opts, Some(tx)).await?;
        let wall = t0.elapsed().as_secs_f64();
        if let Some(t) = timeline {
            t.abort();
        }
        let fetch = fetch_done.await.ok().flatten().unwrap_or(wall);
        let stats: serde_json::Value = reqwest::get(format!("{}/_sim/stats", ready.graph))
            .await?
            .json()
            .await?;
        let ru = stats["resource_units"].as_f64().unwrap_or(0.0);
        let cap = steward_msgraph::budget::graph_capacity(users);
        let floor = ru / (cap / 10.0);
        let floor_burst = ((ru - cap).max(0.0)) / (cap / 10.0);
        // The longest chain of dependent requests: the index's user listing (999 a page), then the largest
        // slice of the manager listings (`$expand` pages hold 100).
        let index_pages = (m.users as f64 / 999.0).ceil();
        let (slices, largest) = entra.manager_slices().unwrap_or((0, 0));
        let slice_pages = (largest as f64 / 100.0).ceil();
        let user_pages = index_pages + slice_pages;
        let page_floor = user_pages * (a.latency_ms as f64 + 1.0) / 1000.0;
        let (_, peak) = crate::cmd::bench::rss_mib();
        println!(
            "entra sync of {} (seed {}), latency {} ms, throttle {}: {:.2} s wall",
            a.tenant, a.seed, a.latency_ms, a.throttle, wall
        );
        println!(
            "  reading the tenant: {fetch:.2} s; writing the file (indexes, expansion, compression): {:.2} s",
            wall - fetch
        );
        println!(
            "  {} resources, {} entitlements, {} grants (+{} expanded)",
            summary.resources, summary.entitlements, summary.grants, summary.end.expansion.grants_created
        );
        println!(
            "  Graph: {} HTTP requests seen by the emulator ({} client-side, {} inside $batch), {} resource units, {} throttled (429)",
            stats["requests"], entra.stats().requests, entra.stats().batched, ru, stats["throttled"]
        );
        println!(
            "  throttle floor: {:.2} s (RU ÷ {:.0} RU/s); with the initial {:.0} RU burst: {:.2} s",
            floor,
            cap / 10.0,
            cap,
            floor_burst
        );
        println!(
            "  page-count floor: {:.2} s ({} sequential pages: {} user pages of 999, then {} of the largest of {} manager slices, × {} ms)",
            page_floor, user_pages, index_pages, slice_pages, slices, a.latency_ms
        );
        println!("  peak RSS (emulator + connector in one process): {peak} MiB");
        if a.incremental {
            incremental_bench(&running, &file, &dir, &a, &stats).await?;
        }
        running.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

/// CPU seconds of this process's threads so far: (sync writer, tokio workers — `tokio-rt-worker`, or
/// `tokio-runtime-w` in older tokio —, others).
fn thread_cpu() -> (f64, f64, f64) {
    let mut out = (0.0, 0.0, 0.0);
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // Fields after the name: state is 0, utime 11, stime 12 (clock ticks, 100 per second).
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let secs = (ticks(11) + ticks(12)) / 100.0;
        if name.starts_with("steward-sync") {
            out.0 += secs;
        } else if name.starts_with("tokio-r") {
            out.1 += secs;
        } else {
            out.2 += secs;
        }
    }
    out
}

/// `--timeline`: one line a second on stderr (see [`BenchArgs::timeline`]).
async fn timeline(sim: Arc<steward_sim::ctx::Sim>, entra: Arc<Entra>, t0: Instant) {
    use std::sync::atomic::Ordering::Relaxed;
    let routes = || sim.stats.by_route.lock().map(|m| m.clone()).unwrap_or_default();
    let (mut ru0, mut rq0, mut cpu0, mut r0) = (0, 0, thread_cpu(), routes());
    eprintln!(
        "t_s\tRU/s\treq/s\twaiting\tin_flight\tbudget_RU\tcpu_writer\tcpu_tokio\tcpu_other\tbusiest routes"
    );
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (ru, rq) = (
            sim.stats.resource_units.load(Relaxed),
            sim.stats.requests.load(Relaxed),
        );
        let cpu = thread_cpu();
        let r = routes();
        let mut busiest: Vec<(u64, &String)> = r
            .iter()
            .map(|(k, v)| (v - r0.get(k).copied().unwrap_or(0), k))
            .filter(|(n, _)| *n > 0)
            .collect();
        busiest.sort_unstable_by(|a, b| b.cmp(a));
        let busiest: Vec<String> = busiest.iter().take(3).map(|(n, k)| format!("{k} ×{n}")).collect();
        let (waiting, in_flight) = entra.graph().gauges();
        eprintln!(
            "{:.0}\t{}\t{}\t{waiting}\t{in_flight}\t{:.0}\t{:.2}\t{:.2}\t{:.2}\t{}",
            t0.elapsed().as_secs_f64(),
            ru - ru0,
            rq - rq0,
            entra.graph().budget().available(),
            cpu.0 - cpu0.0,
            cpu.1 - cpu0.1,
            cpu.2 - cpu0.2,
            busiest.join("; ")
        );
        (ru0, rq0, cpu0, r0) = (ru, rq, cpu, r);
    }
}

/// The incremental part of `steward bench entra --incremental`: churn, an incremental sync into the full
/// sync's file, and a full sync of the changed tenant to compare with.
async fn incremental_bench(
    running: &steward_sim::Running,
    file: &Path,
    dir: &Path,
    a: &BenchArgs,
    full: &serde_json::Value,
) -> anyhow::Result<()> {
    let ready = &running.ready;
    let churn = steward_sim::graph::churn::churn(&mut running.sim.write(), a.churn, a.seed);
    let connector = || -> anyhow::Result<Arc<Entra>> {
        let mut cfg = EntraConfig::new(
            &ready.tenant_id,
            &ready.client_id,
            Credential::Secret(Secret::new(ready.client_secret.clone())),
        );
        cfg.login_endpoint = Some(ready.login.clone());
        cfg.graph_endpoint = Some(ready.graph.clone());
        cfg.mailbox_settings = a.mailbox_settings;
        cfg.concurrency = a.concurrency;
        Ok(Arc::new(Entra::new(cfg)?))
    };
    let opts = SyncOptions {
        concurrency: 64,
        ..SyncOptions::default()
    };
    let stats = || async {
        let v: serde_json::Value = reqwest::get(format!("{}/_sim/stats", ready.graph))
            .await?
            .json()
            .await?;
        Ok::<_, anyhow::Error>(v)
    };
    running.sim.stats.reset();
    let entra = connector()?;
    if let Some(prev) = steward_sync::previous_sync(file)? {
        entra.set_previous(prev);
    }
    let t0 = Instant::now();
    run_sync(entra.clone(), file, SyncPlan::Full, opts.clone(), None).await?;
    let wall = t0.elapsed().as_secs_f64();
    let inc = stats().await?;
    let mode = entra.sync_mode().unwrap_or("full");
    running.sim.stats.reset();
    let check = dir.join("check.c1z");
    run_sync(connector()?, &check, SyncPlan::Full, opts, None).await?;
    let (old, new) = (
        steward_c1z::C1zReader::open(&check)?,
        steward_c1z::C1zReader::open(file)?,
    );
    let diff = steward_c1z::diff_syncs(&old, &new)?;
    let n = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    println!(
        "incremental sync ({mode}) after {:.1}% churn ({} writes: {} users created, {} disabled, {} deleted, {} members added, {} removed, {} owners added, {} group deleted, {} app assignments added): {wall:.2} s wall",
        a.churn * 100.0,
        churn.writes(),
        churn.created.len(),
        churn.disabled.len(),
        churn.deleted.len(),
        churn.members_added.len(),
        churn.members_removed.len(),
        churn.owners_added.len(),
        churn.groups_deleted.len(),
        churn.assignments_added.len()
    );
    println!(
        "  Graph: {} requests ({:.2}% of the full sync's {}), {} resource units ({:.2}% of {}), {} throttled",
        inc["requests"],
        100.0 * n(&inc, "requests") / n(full, "requests").max(1.0),
        full["requests"],
        inc["resource_units"],
        100.0 * n(&inc, "resource_units") / n(full, "resource_units").max(1.0),
        full["resource_units"],
        inc["throttled"]
    );
    if let Some(routes) = inc["by_route"].as_object() {
        let list: Vec<String> = routes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        println!("  requests by route: {}", list.join("; "));
    }
    println!(
        "  against a full sync of the same tenant state: {}",
        if diff.is_empty() {
            "no difference (steward diff is empty)".to_owned()
        } else {
            format!(
                "DIFFERENT: resources +{} -{} ~{}, entitlements +{} -{} ~{}, grants +{} -{} ~{}",
                diff.resources.added.len(),
                diff.resources.removed.len(),
                diff.resources.changed.len(),
                diff.entitlements.added.len(),
                diff.entitlements.removed.len(),
                diff.entitlements.changed.len(),
                diff.grants.added.len(),
                diff.grants.removed.len(),
                diff.grants.changed.len()
            )
        }
    );
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("steward-bench-entra-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        entra: EntraArgs,
    }

    /// The issue's "Done when": a one-shot grant of group membership to a user against the emulator adds
    /// the member (seen in the tenant and in the file), a revoke removes it; both are safe to repeat.
    #[test]
    fn one_shot_grant_and_revoke_against_the_emulator() {
        let rt = crate::cmd::runtime().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tenant = steward_sim::load_tenant("tiny", 21).unwrap();
        let running = rt
            .block_on(steward_sim::start(steward_sim::Options {
                tenant,
                settings: Default::default(),
                listen: "127.0.0.1:0".parse().unwrap(),
                tls: false,
                proxy: None,
                state_dir: dir.path().to_owned(),
            }))
            .unwrap();
        let (group, user) = {
            let st = running.sim.read();
            let t = &st.tenant;
            let g = t
                .groups
                .iter()
                .find(|g| g.membership_rule.is_none() && !g.on_premises_sync_enabled)
                .unwrap();
            let u = t.users.iter().find(|u| !g.members.contains(&u.id)).unwrap();
            (g.id, u.id)
        };
        let is_member = || {
            running
                .sim
                .read()
                .tenant
                .groups
                .iter()
                .find(|g| g.id == group)
                .unwrap()
                .members
                .contains(&user)
        };
        let file = dir.path().join("sync.c1z");
        let r = &running.ready;
        let base: Vec<String> = [
            "steward",
            "-f",
            file.to_str().unwrap(),
            "--entra-tenant-id",
            &r.tenant_id,
            "--entra-client-id",
            &r.client_id,
            "--entra-client-secret",
            &r.client_secret,
            "--login-endpoint",
            &r.login,
            "--graph-endpoint",
            &r.graph,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let go = |extra: &[&str]| {
            let mut args = base.clone();
            args.extend(extra.iter().map(|s| s.to_string()));
            run(Cli::try_parse_from(args).unwrap().entra)
        };
        go(&[]).unwrap();
        let ent = format!("group:{group}:member");
        let uid = user.to_string();
        let grant = [
            "--grant-entitlement",
            ent.as_str(),
            "--grant-principal",
            uid.as_str(),
            "--grant-principal-type",
            "user",
        ];
        let err = go(&grant).unwrap_err().to_string();
        assert!(err.contains("--provisioning"), "{err}");
        assert!(!is_member());
        let mut with = vec!["--provisioning"];
        with.extend(grant);
        go(&with).unwrap();
        assert!(is_member(), "granted");
        let grant_id = format!("{ent}:user:{user}");
        assert_eq!(
            file_holds(
                &file,
                &steward_model::ResourceId::new("group", group.to_string()),
                &grant_id
            )
            .unwrap()
            .map(|x| x.0),
            Some(true),
            "the file records the grant"
        );
        go(&with).unwrap();
        assert!(is_member(), "granting again changes nothing");
        go(&["--provisioning", "--revoke-grant", &grant_id]).unwrap();
        assert!(!is_member(), "revoked");
        assert_eq!(
            file_holds(
                &file,
                &steward_model::ResourceId::new("group", group.to_string()),
                &grant_id
            )
            .unwrap()
            .map(|x| x.0),
            Some(false),
            "the file no longer records it"
        );
        go(&["--provisioning", "--revoke-grant", &grant_id]).unwrap();
        assert!(!is_member());
        let err = go(&["--provisioning", "--revoke-grant", "group:nope"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a grant id"), "{err}");
        rt.block_on(running.stop());
    }
}
