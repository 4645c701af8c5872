//! `steward bench …`: measured speed, for docs/benchmarks.md. Never used by tests as a pass/fail line.
//!
//! `steward bench sim`: how fast the emulator generates a tenant, how much memory it holds, and how many
//! simple Graph GETs per second it serves to a loopback client on this machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Tenant generation time and memory, and Graph GETs per second against the emulator.
    Sim(SimBench),
    /// A full Entra ID sync against the emulator: time, requests, resource units and the floor Graph allows.
    Entra(crate::cmd::entra::BenchArgs),
    /// A full Azure sync against the emulator (issue 6).
    Azure(crate::cmd::azure::BenchArgs),
    /// Platform ingest and API throughput (issue 7).
    Platform(crate::cmd::serve::BenchArgs),
    /// Access requests: request → provisioned latency, sustained rate, expiry sweep (issue 8).
    Requests(crate::cmd::request::BenchArgs),
}

#[derive(clap::Args)]
pub struct SimBench {
    /// Tenant size to generate (tiny, small, medium, large, xl).
    #[arg(long, default_value = "large")]
    pub tenant: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to send requests, in seconds (0: measure generation only).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
}

pub fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Sim(a) => sim(a),
        BenchCommand::Entra(a) => crate::cmd::entra::bench(a),
        BenchCommand::Azure(a) => crate::cmd::azure::bench(a),
        BenchCommand::Platform(a) => crate::cmd::serve::bench(a),
        BenchCommand::Requests(a) => crate::cmd::request::bench(a),
    }
}

/// (current RSS, peak RSS) in MiB, from /proc/self/status.
pub fn rss_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn sim(a: SimBench) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let tenant = steward_sim::load_tenant(&a.tenant, a.seed)?;
    let gen_secs = t0.elapsed().as_secs_f64();
    let (rss, peak) = rss_mib();
    let m = steward_sim::Manifest::of(&tenant);
    println!(
        "generate {}: {:.2} s; {} users, {} groups, {} direct memberships, {} service principals, {} Azure role assignments",
        a.tenant,
        gen_secs,
        m.users,
        m.groups,
        m.group_memberships_direct,
        m.service_principals,
        m.azure_role_assignments
    );
    println!("memory after generation: RSS {rss} MiB (peak {peak} MiB)");
    if a.seconds == 0 {
        return Ok(());
    }
    let ids: Vec<String> = tenant
        .users
        .iter()
        .step_by((tenant.users.len() / 1000).max(1))
        .map(|u| u.id.to_string())
        .collect();
    let rt = super::runtime()?;
    rt.block_on(async move {
        let t1 = Instant::now();
        let running = steward_sim::start(steward_sim::Options {
            tenant,
            settings: steward_sim::ctx::Settings::default(),
            listen: "127.0.0.1:0".parse()?,
            tls: false,
            proxy: None,
            state_dir: std::env::temp_dir(),
        })
        .await?;
        println!("emulator ready in {:.2} s after generation", t1.elapsed().as_secs_f64());
        let client = reqwest::Client::builder().pool_max_idle_per_host(a.connections).build()?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", running.ready.client_id.as_str()),
            ("client_secret", running.ready.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ];
        let tok: serde_json::Value = client
            .post(format!("{}/{}/oauth2/v2.0/token", running.ready.login, running.ready.tenant_id))
            .form(&form)
            .send()
            .await?
            .json()
            .await?;
        let token = tok["access_token"].as_str().context("no access token")?.to_string();
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(a.seconds);
        let ids = Arc::new(ids);
        let mut workers = Vec::new();
        for w in 0..a.connections {
            let (client, token, done, errors, ids) = (client.clone(), token.clone(), done.clone(), errors.clone(), ids.clone());
            let base = format!("{}/v1.0/users/", running.ready.graph);
            workers.push(tokio::spawn(async move {
                let mut k = w;
                while Instant::now() < deadline {
                    let url = format!("{base}{}?$select=id,displayName", ids[k % ids.len()]);
                    k += 7;
                    match client.get(&url).bearer_auth(&token).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        let start = Instant::now();
        for w in workers {
            let _ = w.await;
        }
        let secs = start.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        let (rss, peak) = rss_mib();
        println!(
            "GET /v1.0/users/{{id}}?$select=id,displayName: {n} requests in {secs:.1} s = {:.0} requests/s ({} errors), {} connections, client in the same process",
            n as f64 / secs,
            errors.load(Ordering::Relaxed),
            a.connections
        );
        println!("memory while serving: RSS {rss} MiB (peak {peak} MiB)");
        running.stop().await;
        anyhow::Ok(())
    })
}
