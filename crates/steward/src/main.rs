//! `steward`: the command line that puts the crates together.
//!
//! Each subcommand lives in its own module under `cmd/`, owns its clap arguments and returns
//! `anyhow::Result<()>`; this file only parses, sets up logging and dispatches.

mod cmd;

use clap::{Parser, Subcommand};

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "steward",
    version,
    about = "Identity governance for Microsoft Entra ID and Azure"
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `steward_sim=debug`.
    #[arg(long, global = true, env = "STEWARD_LOG", default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The tenant emulator: Microsoft login, Graph and ARM on this machine.
    #[command(subcommand)]
    Sim(cmd::sim::SimCommand),
    /// The Entra ID connector: sync users, groups, apps, roles and licenses into a .c1z; provision access.
    Entra(Box<cmd::entra::EntraArgs>),
    /// The Azure Infrastructure connector: subscriptions, resource groups, roles at every scope, storage.
    Azure(Box<cmd::azure::AzureArgs>),
    /// Show what a .c1z sync file holds.
    Inspect(cmd::inspect::InspectArgs),
    /// Compare two .c1z sync files: resources, entitlements and grants added, removed and changed.
    Diff(cmd::diff::DiffArgs),
    /// The governance platform: HTTP API on an embedded SQLite file or PostgreSQL.
    Serve(cmd::serve::ServeArgs),
    /// Administration of a platform database (tokens, …).
    #[command(subcommand)]
    Admin(cmd::admin::AdminCommand),
    /// The app catalog (client of a running platform: STEWARD_URL, STEWARD_TOKEN).
    #[command(subcommand)]
    Apps(cmd::apps::AppsCommand),
    /// Connectors of the platform (client of a running platform: STEWARD_URL, STEWARD_TOKEN).
    #[command(subcommand)]
    Connectors(cmd::connectors::ConnectorsCommand),
    /// Access requests: catalog, request, list, cancel, retry, revoke (STEWARD_URL, STEWARD_TOKEN).
    #[command(subcommand)]
    Request(cmd::request::RequestCommand),
    /// Requests waiting for your approval, or approve one (STEWARD_URL, STEWARD_TOKEN).
    Approve(cmd::request::ApproveArgs),
    /// Deny a request waiting for your approval.
    Deny(cmd::request::DenyArgs),
    /// The audit log: verify its hash chain on the database, or export it.
    #[command(subcommand)]
    Audit(cmd::request::AuditCommand),
    /// Benchmarks (numbers for docs/benchmarks.md).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Start everything on this machine: the emulated tenant, and print how to use it.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let result = match cli.command {
        Command::Sim(c) => cmd::sim::run(c),
        Command::Entra(a) => cmd::entra::run(*a),
        Command::Azure(a) => cmd::azure::run(*a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Admin(c) => cmd::admin::run(c),
        Command::Apps(c) => cmd::apps::run(c),
        Command::Connectors(c) => cmd::connectors::run(c),
        Command::Request(c) => cmd::request::run(c),
        Command::Approve(a) => cmd::request::approve(a),
        Command::Deny(a) => cmd::request::deny(a),
        Command::Audit(c) => cmd::request::audit(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Logs go to stderr: stdout is reserved for machine-readable output (ready lines, --json).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
