//! `steward serve`: the governance platform; `steward bench platform`: ingest throughput.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use steward_platform::{Actor, CreateConnector, OpenOptions, Platform, Role, SystemClock};

/// Where the platform keeps its data.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Database URL: postgres://… (default: SQLite file steward.db in --data-dir).
    #[arg(long, env = "STEWARD_DATABASE_URL")]
    pub db: Option<String>,
    /// Data directory (SQLite database, master key, working files).
    #[arg(long, env = "STEWARD_DATA_DIR", default_value = "steward-data")]
    pub data_dir: PathBuf,
}

impl StoreArgs {
    /// Open options.
    pub fn options(&self) -> OpenOptions {
        OpenOptions {
            db_url: self.db.clone(),
            data_dir: Some(self.data_dir.clone()),
        }
    }
}

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async move {
        let s = steward_server::start(&a.store.options(), a.listen, Arc::new(SystemClock)).await?;
        let line = serde_json::json!({
            "url": s.url(),
            "database": s.platform.store().backend(),
            "bootstrap_token": s.bootstrap_token,
        });
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}")?;
        o.flush()?;
        drop(o);
        if s.bootstrap_token.is_some() {
            eprintln!("First start: the bootstrap_token above is a super_admin token, shown only this once.");
        }
        eprintln!("Steward listening on {} (Ctrl-C to stop)", s.url());
        tokio::signal::ctrl_c().await?;
        s.stop().await;
        Ok(())
    })
}

/// `steward bench platform`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// A .c1z to ingest (default: a synthetic sync with --grants grants).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Grants of the synthetic sync.
    #[arg(long, default_value_t = 1_000_000)]
    pub grants: u64,
    /// Instead of a synthetic sync: sync this emulated tenant (small, medium, large, xl or a tenant file)
    /// with the Entra ID connector (in-process emulator, no latency, no throttling) and ingest that.
    #[arg(long, conflicts_with = "file")]
    pub tenant: Option<String>,
    /// Emulator seed for --tenant.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the sync file written for --tenant or --grants here (reuse it later with -f).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Also on this PostgreSQL server (a fresh database is created on it when `psql` is installed;
    /// default: $STEWARD_TEST_DATABASE_URL if set).
    #[arg(long, env = "STEWARD_TEST_DATABASE_URL")]
    pub postgres: Option<String>,
    /// Skip SQLite (PostgreSQL only).
    #[arg(long)]
    pub no_sqlite: bool,
    /// Ingests per backend (the best is reported; after the first, each replaces the previous snapshot).
    #[arg(long, default_value_t = 2)]
    pub runs: u32,
    /// Seconds to wait between runs: a re-ingest as an hourly sync meets it, after the previous snapshot's
    /// background work (SQLite's checkpoint of the WAL into the database file) has finished.
    #[arg(long, default_value_t = 0)]
    pub pause_secs: u64,
    /// After ingesting, serve the API on loopback and load `GET /api/v1/apps` and
    /// `GET /api/v1/identities/{id}/access` with wrk (or print the wrk commands and wait for Ctrl-C when
    /// wrk is not installed).
    #[arg(long)]
    pub http: bool,
    /// wrk: seconds per run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// wrk: open connections.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
    /// wrk: threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// wrk: runs per endpoint (each run is printed; the median and the best are summarised).
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Identity (id or UPN) whose access is loaded (default: the first identity by name).
    #[arg(long)]
    pub identity: Option<String>,
}

/// Writes a synthetic sync: users in groups, groups assigned to apps (expanded), direct app assignments.
pub fn synthetic(path: &std::path::Path, grants: u64) -> anyhow::Result<()> {
    use steward_model::builders::{self, ResourceBuilder};
    use steward_model::pb::{entitlement::PurposeValue, resource_type::Trait};
    let users_n = (grants / 20).max(10);
    let groups_n = (users_n / 50).max(2);
    let ut = builders::resource_type("user", "User", &[Trait::User]);
    let gt = builders::resource_type("group", "Group", &[Trait::Group]);
    let at = builders::resource_type("enterprise_application", "Enterprise application", &[Trait::App]);
    let mut w = steward_c1z::C1zWriter::create(path)?;
    w.begin_sync(steward_c1z::SyncType::Full)?;
    for t in [&ut, &gt, &at] {
        w.put_resource_type(t)?;
    }
    let users: Vec<_> = (0..users_n)
        .map(|i| {
            let upn = format!("user{i}@bench.example");
            ResourceBuilder::new("user", &format!("u{i}"), &format!("User {i}"))
                .profile(steward_model::profile::strings([
                    ("user_principal_name", upn.as_str()),
                    ("department", "Bench"),
                ]))
                .user(builders::user_trait(Some(&upn), true, &upn))
                .build()
        })
        .collect();
    for u in &users {
        w.put_resource(u)?;
    }
    let groups: Vec<_> = (0..groups_n)
        .map(|i| {
            ResourceBuilder::new("group", &format!("g{i}"), &format!("Group {i}"))
                .group()
                .build()
        })
        .collect();
    let members: Vec<_> = groups
        .iter()
        .map(|g| {
            builders::entitlement(
                g,
                "member",
                "member",
                PurposeValue::Assignment,
                std::slice::from_ref(&ut),
            )
        })
        .collect();
    for (g, e) in groups.iter().zip(&members) {
        w.put_resource(g)?;
        w.put_entitlement(e)?;
    }
    let mut n = 0u64;
    let mut i = 0u64;
    while n < grants {
        let u = &users[(i % users_n) as usize];
        let g = ((i / users_n) * 7 + i * 13) % groups_n;
        w.put_grant(&builders::grant(&members[g as usize], u))?;
        n += 1;
        i += 1;
    }
    w.end_sync()?;
    w.finish()?;
    Ok(())
}

/// A fresh database on the PostgreSQL server of `url` (created with `psql`), or `url` itself when `psql` is
/// missing. Returns (URL to use, database to drop afterwards).
fn fresh_pg_database(url: &str) -> (String, Option<String>) {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let Some((server, _)) = base.rsplit_once('/').filter(|(s, _)| s.contains("://")) else {
        return (url.to_owned(), None);
    };
    let name = format!("steward_bench_{}", uuid::Uuid::new_v4().simple());
    let ok = std::process::Command::new("psql")
        .args([
            url,
            "-qAt",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        (format!("{server}/{name}{query}"), Some(name))
    } else {
        eprintln!("psql not available: benchmarking in the database of the given URL as it is");
        (url.to_owned(), None)
    }
}

/// Syncs the emulated `tenant` with the Entra ID connector into `file`.
async fn sync_tenant(
    tenant: &str,
    seed: u64,
    file: &std::path::Path,
    work: &std::path::Path,
) -> anyhow::Result<()> {
    use steward_entra::{Entra, EntraConfig};
    use steward_msgraph::{Credential, Secret};
    let t = Instant::now();
    let running = steward_sim::start(steward_sim::Options {
        tenant: steward_sim::load_tenant(tenant, seed)?,
        settings: steward_sim::ctx::Settings {
            seed,
            latency_ms: 0,
            throttle: false,
            ..Default::default()
        },
        listen: "127.0.0.1:0".parse()?,
        tls: false,
        proxy: None,
        state_dir: work.to_owned(),
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
    let entra = Arc::new(Entra::new(cfg)?);
    let summary = steward_sync::run_sync(
        entra,
        file,
        steward_sync::SyncPlan::Full,
        steward_sync::SyncOptions::default(),
        None,
    )
    .await?;
    running.stop().await;
    eprintln!(
        "synced the emulated {tenant} tenant (seed {seed}) in {:.1}s: {} resources, {} entitlements, {} grants (+{} expanded) -> {}",
        t.elapsed().as_secs_f64(),
        summary.resources,
        summary.entitlements,
        summary.grants,
        summary.end.expansion.grants_created,
        file.display()
    );
    Ok(())
}

/// One wrk run: (requests/s, p50 ms, p99 ms, non-2xx responses, socket errors).
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct WrkRun {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
    load_1m: f64,
}

fn wrk_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Parses wrk's `--latency` report.
fn parse_wrk(out: &str) -> Option<WrkRun> {
    let mut r = WrkRun {
        rps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        non_2xx: 0,
        socket_errors: 0,
        load_1m: 0.0,
    };
    let mut seen = (false, false, false);
    for line in out.lines().map(str::trim) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["Requests/sec:", v] => {
                r.rps = v.parse().ok()?;
                seen.0 = true;
            }
            ["50%", v] => {
                r.p50_ms = wrk_ms(v)?;
                seen.1 = true;
            }
            ["99%", v] => {
                r.p99_ms = wrk_ms(v)?;
                seen.2 = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", v] => r.non_2xx = v.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                r.socket_errors = rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    (seen == (true, true, true)).then_some(r)
}

fn load_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Serves the platform of `opts` on loopback and loads the two read endpoints with wrk.
async fn http_bench(a: &BenchArgs, backend: &str, opts: &OpenOptions) -> anyhow::Result<()> {
    let s = steward_server::start(opts, "127.0.0.1:0".parse()?, Arc::new(SystemClock)).await?;
    let token = s
        .platform
        .create_token(None, Some(Role::SuperAdmin), Some("bench-http"))
        .await?
        .token;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let (client, url, token) = (client.clone(), s.url(), token.clone());
        async move {
            let r = client
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "GET {path}: {}", r.status());
            Ok::<serde_json::Value, anyhow::Error>(r.json().await?)
        }
    };
    let identity = match &a.identity {
        Some(i) => i.clone(),
        None => get("/api/v1/identities?limit=1".into()).await?["items"][0]["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the snapshot has no identities: use an identity-source sync"))?
            .to_owned(),
    };
    let apps = get("/api/v1/apps".into()).await?;
    let access = get(format!("/api/v1/identities/{identity}/access")).await?;
    let endpoints = [
        (
            "GET /api/v1/apps",
            "/api/v1/apps".to_owned(),
            apps["items"].as_array().map_or(0, Vec::len),
        ),
        (
            "GET /api/v1/identities/{id}/access",
            format!("/api/v1/identities/{identity}/access"),
            access["items"].as_array().map_or(0, Vec::len),
        ),
    ];
    let have_wrk = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok();
    let wrk_args = |path: &str| {
        vec![
            format!("-t{}", a.threads),
            format!("-c{}", a.connections),
            format!("-d{}s", a.duration),
            "--latency".to_owned(),
            "-H".to_owned(),
            format!("Authorization: Bearer {token}"),
            format!("{}{path}", s.url()),
        ]
    };
    if !have_wrk {
        eprintln!("wrk is not installed (apt-get install -y wrk); run these while this waits for Ctrl-C:");
        for (name, path, items) in &endpoints {
            let args = wrk_args(path);
            eprintln!(
                "# {backend} {name} ({items} items)\nwrk {} {} {} {} -H '{}' {}",
                args[0], args[1], args[2], args[3], args[5], args[6]
            );
        }
        tokio::signal::ctrl_c().await?;
        s.stop().await;
        return Ok(());
    }
    for (name, path, items) in &endpoints {
        let mut runs = Vec::new();
        for _ in 0..a.repeat.max(1) {
            let load = load_1m();
            let out = tokio::process::Command::new("wrk")
                .args(wrk_args(path))
                .output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut r =
                parse_wrk(&text).ok_or_else(|| anyhow::anyhow!("could not read wrk's report:\n{text}"))?;
            r.load_1m = load;
            eprintln!(
                "{backend} {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms (load {load:.2})",
                r.rps, r.p50_ms, r.p99_ms
            );
            runs.push(r);
        }
        let rps: Vec<f64> = runs.iter().map(|r| r.rps).collect();
        let p99: Vec<f64> = runs.iter().map(|r| r.p99_ms).collect();
        let p50: Vec<f64> = runs.iter().map(|r| r.p50_ms).collect();
        println!(
            "{}",
            serde_json::json!({
                "backend": backend, "endpoint": name, "items": items, "identity": identity,
                "wrk": format!("wrk -t{} -c{} -d{}s --latency", a.threads, a.connections, a.duration),
                "median_rps": median(rps.clone()).round(), "best_rps": rps.iter().copied().fold(0.0, f64::max).round(),
                "median_p50_ms": median(p50), "median_p99_ms": median(p99.clone()),
                "best_p99_ms": p99.iter().copied().fold(f64::MAX, f64::min),
                "runs": runs,
            })
        );
    }
    s.stop().await;
    Ok(())
}

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let file = match (&a.file, &a.tenant) {
            (Some(f), _) => f.clone(),
            (None, Some(t)) => {
                let p = a.save.clone().unwrap_or_else(|| dir.path().join("tenant.c1z"));
                sync_tenant(t, a.seed, &p, dir.path()).await?;
                p
            }
            (None, None) => {
                let p = a.save.clone().unwrap_or_else(|| dir.path().join("bench.c1z"));
                let t = Instant::now();
                let grants = a.grants;
                let q = p.clone();
                tokio::task::spawn_blocking(move || synthetic(&q, grants)).await??;
                eprintln!(
                    "wrote a synthetic sync with {} grants in {:.1}s",
                    a.grants,
                    t.elapsed().as_secs_f64()
                );
                p
            }
        };
        let mut backends = Vec::new();
        if !a.no_sqlite {
            backends.push(("sqlite", None));
        }
        if let Some(u) = &a.postgres {
            backends.push(("postgres", Some(u.clone())));
        }
        let actor = Actor {
            token_id: "bench".into(),
            name: "bench".into(),
            role: Role::SuperAdmin,
            identity_id: None,
        };
        for (name, url) in backends {
            let d = tempfile::tempdir()?;
            let (url, drop_db) = match url {
                Some(u) => {
                    let (u2, db) = fresh_pg_database(&u);
                    (Some(u2), db.map(|d| (u, d)))
                }
                None => (None, None),
            };
            let opts = OpenOptions {
                db_url: url,
                data_dir: Some(d.path().to_owned()),
            };
            let p = Platform::open(&opts, Arc::new(SystemClock)).await?;
            let c = p
                .create_connector(
                    &actor,
                    CreateConnector {
                        kind: "baton".into(),
                        name: format!("bench-{}", uuid::Uuid::new_v4()),
                        settings: Default::default(),
                        owners: vec![],
                        identity_source: Some(true),
                        app_id: None,
                        sync_interval_secs: None,
                    },
                )
                .await?;
            let mut secs_all = Vec::new();
            let mut stats = serde_json::Value::Null;
            for run in 0..a.runs.max(1) {
                if run > 0 && a.pause_secs > 0 {
                    tokio::time::sleep(std::time::Duration::from_secs(a.pause_secs)).await;
                }
                let t = Instant::now();
                let rec = p.ingest(&c, &file, "upload", vec![]).await?;
                secs_all.push(t.elapsed().as_secs_f64());
                stats = rec.stats.unwrap_or_default();
            }
            let grants = stats["grants"].as_u64().unwrap_or(0);
            let best = secs_all.iter().copied().fold(f64::MAX, f64::min);
            let round = |x: f64| (x * 1000.0).round() / 1000.0;
            println!(
                "{}",
                serde_json::json!({
                    "backend": name, "grants": grants, "stats": stats,
                    "seconds": round(best), "grants_per_second": (grants as f64 / best).round(),
                    "first_seconds": round(secs_all[0]),
                    "runs_seconds": secs_all.iter().map(|x| round(*x)).collect::<Vec<_>>(),
                })
            );
            drop(p);
            if a.http {
                http_bench(&a, name, &opts).await?;
            }
            if let Some((admin_url, db)) = drop_db {
                let _ = std::process::Command::new("psql")
                    .args([
                        admin_url.as_str(),
                        "-qAt",
                        "-c",
                        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                    ])
                    .stdout(std::process::Stdio::null())
                    .status();
            }
        }
        Ok(())
    })
}
