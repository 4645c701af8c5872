//! `steward demo`: everything on this machine — the emulated tenant, the platform on the embedded default
//! (SQLite), the Entra connector registered and synced — and what to try.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use steward_platform::{Actor, CreateConnector, OpenOptions, Role, SystemClock};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Tenant size or JSON file.
    #[arg(long, default_value = "small")]
    pub tenant: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Platform data directory (default: a new temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Platform listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Exit after setting up and printing instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let tenant = steward_sim::load_tenant(&a.tenant, a.seed)?;
    let manifest = steward_sim::Manifest::of(&tenant);
    let rt = super::runtime()?;
    rt.block_on(async move {
        let tmp = tempfile::tempdir()?;
        let running = steward_sim::start(steward_sim::Options {
            tenant,
            settings: steward_sim::ctx::Settings::default(),
            listen: "127.0.0.1:0".parse()?,
            tls: false,
            proxy: None,
            state_dir: tmp.path().join("sim"),
        })
        .await?;
        let r = running.ready.clone();
        let data_dir = a.data_dir.clone().unwrap_or_else(|| tmp.path().join("platform"));
        let opts = OpenOptions {
            db_url: None,
            data_dir: Some(data_dir.clone()),
        };
        let server = steward_server::start(&opts, a.listen, Arc::new(SystemClock)).await?;
        let p = Arc::clone(&server.platform);
        let admin = match &server.bootstrap_token {
            Some(t) => t.clone(),
            None => {
                p.create_token(None, Some(Role::SuperAdmin), Some("demo admin"))
                    .await?
                    .token
            }
        };
        let actor = Actor {
            token_id: "demo".into(),
            name: "demo".into(),
            role: Role::SuperAdmin,
            identity_id: None,
        };
        let mut settings = serde_json::Map::new();
        for (k, v) in [
            ("entra_tenant_id", &r.tenant_id),
            ("entra_client_id", &r.client_id),
            ("entra_client_secret", &r.client_secret),
            ("login_endpoint", &r.login),
            ("graph_endpoint", &r.graph),
            ("arm_endpoint", &r.arm),
        ] {
            settings.insert(k.into(), serde_json::Value::String(v.clone()));
        }
        // The demo grants and revokes in the emulated tenant when requests say so.
        settings.insert("provisioning".into(), serde_json::Value::Bool(true));
        let c = p
            .create_connector(
                &actor,
                CreateConnector {
                    kind: "entra".into(),
                    name: format!("Entra ID ({})", uuid::Uuid::new_v4().simple()),
                    settings,
                    owners: vec![],
                    identity_source: None,
                    app_id: None,
                    sync_interval_secs: None,
                },
            )
            .await?;
        eprintln!("syncing the Entra connector…");
        let rec = p.run_connector(&c.id, "connector").await?;
        let auto: steward_platform::PolicySpec = serde_json::from_value(serde_json::json!({
            "name": "auto", "description": "Approved at once (demo)", "steps": [{"kind": "auto_approve"}]
        }))?;
        p.create_policy(&actor, auto).await?;
        let url = server.url();
        let mut o = std::io::stdout().lock();
        writeln!(
            o,
            "Steward demo: an emulated Microsoft tenant and the governance platform are running.\n"
        )?;
        writeln!(o, "  platform   {url}   (SQLite in {})", data_dir.display())?;
        writeln!(o, "  admin      STEWARD_TOKEN={admin}")?;
        writeln!(
            o,
            "  tenant     {} ({} users, {} groups, {} enterprise apps)",
            r.tenant_id, manifest.users, manifest.groups, manifest.service_principals
        )?;
        writeln!(
            o,
            "  connector  {} synced: {}",
            c.id,
            rec.stats.map(|s| s.to_string()).unwrap_or_default()
        )?;
        writeln!(o, "  graph      {}/v1.0   login {}\n", r.graph, r.login)?;
        writeln!(o, "Try it:")?;
        writeln!(o, "  export STEWARD_URL={url} STEWARD_TOKEN={admin}")?;
        writeln!(
            o,
            "  steward apps list --managed false          # enterprise applications discovered from Entra"
        )?;
        writeln!(
            o,
            "  steward apps manage <app id>               # govern one (nothing changes in Entra)"
        )?;
        writeln!(
            o,
            "  steward apps linked <app id>               # groups assigned to it"
        )?;
        writeln!(
            o,
            "  steward apps link <app id> group:<id>:member --virtual-role 'Members'"
        )?;
        writeln!(
            o,
            "  curl -s -H \"Authorization: Bearer $STEWARD_TOKEN\" {url}/api/v1/identities?limit=5"
        )?;
        writeln!(o, "Make it requestable (policy \"auto\" exists) and request it as a user:")?;
        writeln!(
            o,
            "  curl -s -H \"Authorization: Bearer $STEWARD_TOKEN\" -d '{{\"resource_types\": [\"access\", \"virtual_role\"], \"access_profiles\": [\"everyone\"], \"policy\": \"auto\", \"max_duration\": 3600}}' -H 'content-type: application/json' {url}/api/v1/apps/<app id>/entitlement-rules"
        )?;
        writeln!(
            o,
            "  steward admin token create --data-dir {} --user <upn>   # a user's token",
            data_dir.display()
        )?;
        writeln!(
            o,
            "  STEWARD_TOKEN=<user token> steward request catalog"
        )?;
        writeln!(
            o,
            "  STEWARD_TOKEN=<user token> steward request create <entitlement id> --justification 'on call' --duration 120"
        )?;
        writeln!(o, "  steward audit verify --data-dir {}", data_dir.display())?;
        writeln!(o, "  curl -s {url}/api/v1/openapi.json | jq '.paths | keys'")?;
        o.flush()?;
        drop(o);
        if !a.no_wait {
            eprintln!("Press Ctrl-C to stop.");
            tokio::signal::ctrl_c().await?;
        }
        server.stop().await;
        running.stop().await;
        Ok(())
    })
}
