//! `steward sim serve|manifest`: run the tenant emulator, or print a tenant's true counts.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use steward_sim::ctx::Settings;
use steward_sim::realism::FaultSpec;

#[derive(clap::Subcommand)]
pub enum SimCommand {
    /// Serve Microsoft login, Graph and ARM for an emulated tenant. Prints one JSON line when ready.
    Serve(ServeArgs),
    /// Print the true counts of a tenant as JSON.
    Manifest(TenantArgs),
    /// Write a generated tenant as JSON (to edit and load with --tenant PATH.json).
    Export(ExportArgs),
}

#[derive(clap::Args, Clone)]
pub struct TenantArgs {
    /// tiny, small, medium, large, xl, or a tenant JSON file (docs/tenant-schema.md).
    #[arg(long, default_value = "small")]
    pub tenant: String,
    /// Seed of the generator: the same seed gives the same tenant.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub tenant: TenantArgs,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub tenant: TenantArgs,
    /// Address to listen on. Port 0 picks three free ports; port P uses P, P+1, P+2 (login, Graph, ARM).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Serve HTTPS with a CA generated at start (its path is `ca_file` in the ready line).
    #[arg(long)]
    pub tls: bool,
    /// Also run an HTTPS proxy (CONNECT) on this address that answers for login.microsoftonline.com,
    /// graph.microsoft.com and management.azure.com: use with HTTPS_PROXY and SSL_CERT_FILE.
    #[arg(long)]
    pub proxy: Option<SocketAddr>,
    /// Added latency per request, in milliseconds (plus a small cost per returned item).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// `microsoft`: Graph's resource-unit budgets and ARM's buckets, answering 429 + Retry-After; `off`.
    #[arg(long, default_value = "off")]
    pub throttle: String,
    /// Inject faults: `P` or `P:KIND,…` with KIND in 500, 502, 503, 504, reset, truncate, stall, revoke.
    #[arg(long)]
    pub faults: Option<String>,
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 3599)]
    pub token_lifetime: u64,
    /// Directory for the CA certificate (default: a new directory under the system temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

pub fn run(c: SimCommand) -> anyhow::Result<()> {
    match c {
        SimCommand::Serve(a) => serve(a),
        SimCommand::Manifest(a) => {
            let t = steward_sim::load_tenant(&a.tenant, a.seed)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&steward_sim::Manifest::of(&t))?
            );
            Ok(())
        }
        SimCommand::Export(a) => {
            let t = steward_sim::load_tenant(&a.tenant.tenant, a.tenant.seed)?;
            let tmp = a.output.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&t)?)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &a.output).with_context(|| format!("writing {}", a.output.display()))?;
            eprintln!("wrote {}", a.output.display());
            Ok(())
        }
    }
}

pub fn settings(a: &ServeArgs) -> anyhow::Result<Settings> {
    let throttle = match a.throttle.as_str() {
        "microsoft" => true,
        "off" => false,
        other => anyhow::bail!("--throttle {other}: use `microsoft` or `off`"),
    };
    let faults = a
        .faults
        .as_deref()
        .map(str::parse::<FaultSpec>)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    Ok(Settings {
        seed: a.tenant.seed,
        latency_ms: a.latency_ms,
        throttle,
        faults,
        token_lifetime: a.token_lifetime.max(1),
        ..Settings::default()
    })
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let settings = settings(&a)?;
    let tenant = steward_sim::load_tenant(&a.tenant.tenant, a.tenant.seed)?;
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("steward-sim-{}", std::process::id())));
    let rt = super::runtime()?;
    rt.block_on(async move {
        let running = steward_sim::start(steward_sim::Options {
            tenant,
            settings,
            listen: a.listen,
            tls: a.tls,
            proxy: a.proxy,
            state_dir,
        })
        .await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string(&running.ready)?)?;
        out.flush()?;
        drop(out);
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        running.stop().await;
        Ok(())
    })
}
