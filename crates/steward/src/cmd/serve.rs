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
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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
    /// Also on this PostgreSQL database (default: $STEWARD_TEST_DATABASE_URL if set).
    #[arg(long, env = "STEWARD_TEST_DATABASE_URL")]
    pub postgres: Option<String>,
    /// Ingests per backend (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub runs: u32,
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

pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = match &a.file {
        Some(f) => f.clone(),
        None => {
            let p = dir.path().join("bench.c1z");
            let t = Instant::now();
            synthetic(&p, a.grants)?;
            eprintln!(
                "wrote a synthetic sync with {} grants in {:.1}s",
                a.grants,
                t.elapsed().as_secs_f64()
            );
            p
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut backends = vec![("sqlite", None)];
        if let Some(u) = &a.postgres {
            backends.push(("postgres", Some(u.clone())));
        }
        let actor = Actor { token_id: "bench".into(), name: "bench".into(), role: Role::SuperAdmin, identity_id: None };
        for (name, url) in backends {
            let d = tempfile::tempdir()?;
            let p = Platform::open(&OpenOptions { db_url: url, data_dir: Some(d.path().to_owned()) }, Arc::new(SystemClock)).await?;
            let c = p
                .create_connector(&actor, CreateConnector {
                    kind: "baton".into(),
                    name: format!("bench-{}", uuid::Uuid::new_v4()),
                    settings: Default::default(),
                    owners: vec![],
                    identity_source: Some(true),
                    app_id: None,
                    sync_interval_secs: None,
                })
                .await?;
            let mut best = f64::MAX;
            let mut grants = 0;
            for _ in 0..a.runs.max(1) {
                let t = Instant::now();
                let rec = p.ingest(&c, &file, "upload", vec![]).await?;
                let secs = t.elapsed().as_secs_f64();
                grants = rec.stats.as_ref().and_then(|s| s["grants"].as_u64()).unwrap_or(0);
                best = best.min(secs);
            }
            println!(
                "{}",
                serde_json::json!({"backend": name, "grants": grants, "seconds": (best * 1000.0).round() / 1000.0, "grants_per_second": (grants as f64 / best).round()})
            );
        }
        Ok(())
    })
}
