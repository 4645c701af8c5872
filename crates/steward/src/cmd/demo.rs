//! `steward demo`: everything on this machine. For now: the emulated tenant, and how to use it.

use std::io::Write;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Tenant size or JSON file.
    #[arg(long, default_value = "small")]
    pub tenant: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Exit after printing instead of serving until Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let tenant = steward_sim::load_tenant(&a.tenant, a.seed)?;
    let manifest = steward_sim::Manifest::of(&tenant);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let running = steward_sim::start(steward_sim::Options {
            tenant,
            settings: steward_sim::ctx::Settings::default(),
            listen: "127.0.0.1:0".parse()?,
            tls: false,
            proxy: None,
            state_dir: std::env::temp_dir().join(format!("steward-demo-{}", std::process::id())),
        })
        .await?;
        let r = &running.ready;
        let mut o = std::io::stdout().lock();
        writeln!(o, "Steward demo: an emulated Microsoft tenant is running.\n")?;
        writeln!(o, "  tenant     {} ({} users, {} groups, {} enterprise apps, {} subscriptions)", r.tenant_id, manifest.users, manifest.groups, manifest.service_principals, manifest.subscriptions)?;
        writeln!(o, "  login      {}", r.login)?;
        writeln!(o, "  graph      {}/v1.0", r.graph)?;
        writeln!(o, "  arm        {}", r.arm)?;
        writeln!(o, "  client id  {}", r.client_id)?;
        writeln!(o, "  stats      {}/_sim/stats\n", r.graph)?;
        writeln!(o, "Try it:")?;
        writeln!(o, "  TOKEN=$(curl -s {}/{}/oauth2/v2.0/token -d grant_type=client_credentials \\", r.login, r.tenant_id)?;
        writeln!(o, "      -d client_id={} -d client_secret='<client_secret from `steward sim serve`>' \\", r.client_id)?;
        writeln!(o, "      -d scope=https://graph.microsoft.com/.default | jq -r .access_token)")?;
        writeln!(o, "  curl -s -H \"Authorization: Bearer $TOKEN\" '{}/v1.0/users?$top=5&$select=displayName,userPrincipalName'\n", r.graph)?;
        writeln!(o, "The client secret is printed by `steward sim serve` (the emulator's test credential).")?;
        writeln!(o, "Connectors, the governance platform and the web UI join the demo as they land (see README).")?;
        o.flush()?;
        drop(o);
        if !a.no_wait {
            eprintln!("Press Ctrl-C to stop.");
            tokio::signal::ctrl_c().await?;
        }
        running.stop().await;
        Ok(())
    })
}
