//! `steward request …`, `steward approve …`, `steward deny …` (clients of a running platform: STEWARD_URL,
//! STEWARD_TOKEN) and `steward audit …` (export through the API, or verify the chain on the database itself).

use std::sync::Arc;

use serde_json::json;
use steward_platform::{Platform, SystemClock};

use super::connectors::{Client, ClientArgs, block_on, print};
use super::serve::StoreArgs;

#[derive(clap::Subcommand)]
pub enum RequestCommand {
    /// What you may request, and why.
    Catalog {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Request an app entitlement (its id from `steward request catalog`).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// The app entitlement id.
        entitlement: String,
        /// The app, if the entitlement id is ambiguous.
        #[arg(long)]
        app: Option<String>,
        /// Why you need it.
        #[arg(long)]
        justification: Option<String>,
        /// How long, in seconds (default: the policy's maximum).
        #[arg(long)]
        duration: Option<i64>,
    },
    /// Your requests (admins: --all for everyone's).
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        state: Option<String>,
    },
    /// One request with its steps and history.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Withdraw a request before it is provisioned.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// Retry a failed request's provisioning (admins, app owners).
    Retry {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
    /// End provisioned access now.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        id: String,
    },
}

/// `steward approve`: list what waits for you, or approve one.
#[derive(clap::Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The request to approve; without it, list the requests waiting for you.
    id: Option<String>,
    #[arg(long)]
    comment: Option<String>,
}

/// `steward deny ID`.
#[derive(clap::Args)]
pub struct DenyArgs {
    #[command(flatten)]
    client: ClientArgs,
    id: String,
    #[arg(long)]
    comment: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit log in the database (exit status 1 if it was tampered with).
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Export the audit log through the API (--format jsonl|csv; filters as the API's).
    Export {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        since: Option<String>,
    },
}

pub fn run(c: RequestCommand) -> anyhow::Result<()> {
    block_on(async move {
        match c {
            RequestCommand::Catalog { client } => print(&Client::new(client).get("/api/v1/catalog").await?),
            RequestCommand::Create {
                client,
                entitlement,
                app,
                justification,
                duration,
            } => print(
                &Client::new(client)
                    .post(
                        "/api/v1/requests",
                        json!({"entitlement": entitlement, "app": app, "justification": justification, "duration": duration}),
                    )
                    .await?,
            ),
            RequestCommand::List { client, all, state } => {
                let mut qs = format!("?mine={}", !all);
                if let Some(s) = state {
                    qs.push_str(&format!("&state={s}"));
                }
                print(&Client::new(client).get(&format!("/api/v1/requests{qs}")).await?)
            }
            RequestCommand::Get { client, id } => {
                print(&Client::new(client).get(&format!("/api/v1/requests/{id}")).await?)
            }
            RequestCommand::Cancel { client, id } => print(
                &Client::new(client)
                    .post(&format!("/api/v1/requests/{id}/cancel"), json!({}))
                    .await?,
            ),
            RequestCommand::Retry { client, id } => print(
                &Client::new(client)
                    .post(&format!("/api/v1/requests/{id}/retry"), json!({}))
                    .await?,
            ),
            RequestCommand::Revoke { client, id } => print(
                &Client::new(client)
                    .post(&format!("/api/v1/requests/{id}/revoke"), json!({}))
                    .await?,
            ),
        }
    })
}

pub fn approve(a: ApproveArgs) -> anyhow::Result<()> {
    block_on(async move {
        let c = Client::new(a.client);
        match a.id {
            None => print(&c.get("/api/v1/approvals").await?),
            Some(id) => print(
                &c.post(
                    &format!("/api/v1/requests/{id}/approve"),
                    json!({"comment": a.comment}),
                )
                .await?,
            ),
        }
    })
}

pub fn deny(a: DenyArgs) -> anyhow::Result<()> {
    block_on(async move {
        print(
            &Client::new(a.client)
                .post(
                    &format!("/api/v1/requests/{}/deny", a.id),
                    json!({"comment": a.comment}),
                )
                .await?,
        )
    })
}

pub fn audit(c: AuditCommand) -> anyhow::Result<()> {
    match c {
        AuditCommand::Verify { store } => {
            let rt = super::runtime()?;
            let v = rt.block_on(async move {
                let p = Platform::open(&store.options(), Arc::new(SystemClock)).await?;
                anyhow::Ok(p.verify_audit().await?)
            })?;
            if v.ok {
                println!(
                    "audit log intact: {} entries, hash chain and head verified",
                    v.entries
                );
                Ok(())
            } else {
                anyhow::bail!(
                    "audit log TAMPERED: {} (checked {} entries)",
                    v.problem.unwrap_or_default(),
                    v.entries
                )
            }
        }
        AuditCommand::Export {
            client,
            format,
            action,
            since,
        } => block_on(async move {
            let mut qs = format!("?format={format}");
            if let Some(a) = action {
                qs.push_str(&format!("&action={a}"));
            }
            if let Some(s) = since {
                qs.push_str(&format!("&since={s}"));
            }
            let text = Client::new(client)
                .get_text(&format!("/api/v1/audit{qs}"))
                .await?;
            print!("{text}");
            Ok(())
        }),
    }
}

/// `steward bench requests`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Emulated tenant size.
    #[arg(long, default_value = "medium")]
    pub tenant: String,
    /// Requests measured one at a time (latency).
    #[arg(long, default_value_t = 200)]
    pub sequential: usize,
    /// Requests filed at once (sustained rate and the expiry sweep).
    #[arg(long, default_value_t = 2000)]
    pub burst: usize,
    /// Database URL (default: SQLite in a temporary data directory, the embedded default).
    #[arg(long)]
    pub db: Option<String>,
    /// Further due grants for the expiry sweep, put in place without provisioning one by one: users are
    /// added to groups linked to the tenant's apps (as virtual roles) in the emulator, and the matching
    /// provisioned requests are imported into the platform.
    #[arg(long, default_value_t = 0)]
    pub sweep: usize,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ts(s: &str) -> anyhow::Result<time::OffsetDateTime> {
    Ok(time::OffsetDateTime::parse(
        s,
        &time::format_description::well_known::Rfc3339,
    )?)
}

/// Measures, against the emulator without latency: request → provisioned (auto-approve; grant in the tenant
/// and confirmation by a partial sync) one at a time, then a burst of requests, then their expiry sweep.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(bench_async(a))
}

async fn bench_async(a: BenchArgs) -> anyhow::Result<()> {
    use steward_platform::{ManualClock, OpenOptions};
    let size = steward_sim::Size::named(&a.tenant)
        .ok_or_else(|| anyhow::anyhow!("unknown tenant size {:?}", a.tenant))?;
    let sim_dir = tempfile::tempdir()?;
    let sim = steward_sim::start(steward_sim::Options {
        tenant: steward_sim::generate(size, 1),
        settings: Default::default(),
        listen: "127.0.0.1:0".parse()?,
        tls: false,
        proxy: None,
        state_dir: sim_dir.path().to_owned(),
    })
    .await?;
    let r = sim.ready.clone();
    let data = tempfile::tempdir()?;
    let opts = OpenOptions {
        db_url: a.db.clone(),
        data_dir: Some(data.path().to_owned()),
    };
    // A manual clock that follows real time until the sweep jumps it forward.
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let server = steward_server::start(&opts, "127.0.0.1:0".parse()?, clock.clone()).await?;
    let tick = {
        let c = clock.clone();
        tokio::spawn(async move {
            let mut last = std::time::Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let now = std::time::Instant::now();
                c.advance(time::Duration::try_from(now - last).unwrap_or_default());
                last = now;
            }
        })
    };
    let admin = ClientArgs {
        url: server.url(),
        token: server
            .bootstrap_token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the benchmark needs a fresh database"))?,
    };
    let c = Client::new(admin.clone());
    let conn = c
        .post("/api/v1/connectors", json!({"kind": "entra", "name": "bench", "settings": {
            "entra_tenant_id": r.tenant_id, "entra_client_id": r.client_id, "entra_client_secret": r.client_secret,
            "login_endpoint": r.login, "graph_endpoint": r.graph, "provisioning": true}}))
        .await?;
    let cid = conn["id"].as_str().unwrap_or_default().to_owned();
    let t = std::time::Instant::now();
    server.platform.run_connector(&cid, "bench").await?;
    eprintln!(
        "synced the {} tenant in {:.1}s",
        a.tenant,
        t.elapsed().as_secs_f64()
    );
    // The app whose first assigned group has the fewest members: every request adds one.
    let apps = c.get("/api/v1/apps?managed=false&limit=1000").await?;
    let mut linked: Vec<(String, String, i64)> = Vec::new();
    for app in apps["items"].as_array().into_iter().flatten() {
        let id = app["id"].as_str().unwrap_or_default();
        let le = c.get(&format!("/api/v1/apps/{id}/linked-entitlements")).await?;
        for l in le["items"].as_array().into_iter().flatten() {
            let idp = l["idp_entitlement_id"].as_str().unwrap_or_default();
            if idp.starts_with("group:") && idp.ends_with(":member") {
                linked.push((id.to_owned(), idp.to_owned(), l["members"].as_i64().unwrap_or(0)));
            }
        }
    }
    linked.sort_by_key(|l| l.2);
    linked.dedup_by(|a, b| a.1 == b.1);
    let (app, idp, members) = linked
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no enterprise app with an assigned group"))?;
    c.post(&format!("/api/v1/apps/{app}/manage"), json!({})).await?;
    c.post(
        &format!("/api/v1/apps/{app}/linked-entitlements/{idp}"),
        json!({"action": "virtual_role", "name": "Bench"}),
    )
    .await?;
    c.post(
        "/api/v1/policies",
        json!({"name": "auto", "steps": [{"kind": "auto_approve"}]}),
    )
    .await?;
    c.post(
        &format!("/api/v1/apps/{app}/entitlement-rules"),
        json!({"resource_types": ["virtual_role"], "access_profiles": ["everyone"], "policy": "auto"}),
    )
    .await?;
    let vr = format!("vr:{idp}");
    // Users who are not in the group yet.
    let ids = c.get("/api/v1/identities?limit=1000").await?;
    let mut users = Vec::new();
    let mut page = ids;
    loop {
        for i in page["items"].as_array().into_iter().flatten() {
            if i["kind"] == "user" {
                users.push(i["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        match page["next_page_token"].as_str() {
            Some(tok) => {
                page = c
                    .get(&format!("/api/v1/identities?limit=1000&page_token={tok}"))
                    .await?
            }
            None => break,
        }
    }
    let held: std::collections::HashSet<String> = c
        .get(&format!(
            "/api/v1/apps/{app}/entitlements/{vr}/holders?limit=1000"
        ))
        .await
        .ok()
        .and_then(|v| v["items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["principal_id"].as_str().map(str::to_owned))
        .collect();
    users.retain(|u| !held.contains(u));
    let want = a.sequential + a.burst;
    anyhow::ensure!(
        users.len() >= want,
        "the {} tenant has {} users outside the group ({members} members); ask for fewer requests",
        a.tenant,
        users.len()
    );
    let mut tokens = Vec::new();
    for u in users.iter().take(want) {
        let t = c.post("/api/v1/tokens", json!({"user": u})).await?;
        tokens.push(t["token"].as_str().unwrap_or_default().to_owned());
    }
    let as_user = |tok: &str| {
        Client::new(ClientArgs {
            url: admin.url.clone(),
            token: tok.to_owned(),
        })
    };
    let wait = |id: String, tok: String| {
        let cl = as_user(&tok);
        async move {
            loop {
                let r = cl.get(&format!("/api/v1/requests/{id}")).await?;
                match r["state"].as_str() {
                    Some("provisioned") => return anyhow::Ok(r),
                    Some("failed" | "denied") => {
                        anyhow::bail!("request {id} ended {}: {}", r["state"], r["reason"])
                    }
                    _ => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
                }
            }
        }
    };
    // 1. One at a time: latency as the server records it (created → provisioned).
    let mut lat = Vec::new();
    for tok in tokens.iter().take(a.sequential) {
        let r = as_user(tok)
            .post("/api/v1/requests", json!({"entitlement": vr, "duration": 3600}))
            .await?;
        let done = wait(r["id"].as_str().unwrap_or_default().to_owned(), tok.clone()).await?;
        let d = ts(done["provisioned_at"].as_str().unwrap_or_default())?
            - ts(done["created_at"].as_str().unwrap_or_default())?;
        lat.push(d.as_seconds_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    // 2. A burst: all filed at once, time until every one is provisioned.
    let t = std::time::Instant::now();
    let mut handles = Vec::new();
    for tok in tokens.iter().skip(a.sequential) {
        let cl = as_user(tok);
        let vr = vr.clone();
        handles.push(tokio::spawn(async move {
            cl.post("/api/v1/requests", json!({"entitlement": vr, "duration": 3600}))
                .await
        }));
    }
    let mut burst_ids = Vec::new();
    for (h, tok) in handles.into_iter().zip(tokens.iter().skip(a.sequential)) {
        let r = h.await??;
        burst_ids.push((r["id"].as_str().unwrap_or_default().to_owned(), tok.clone()));
    }
    let filed = t.elapsed().as_secs_f64();
    for (id, tok) in &burst_ids {
        wait(id.clone(), tok.clone()).await?;
    }
    let burst_secs = t.elapsed().as_secs_f64();
    let seeded = if a.sweep > 0 {
        let t = std::time::Instant::now();
        let template = burst_ids
            .first()
            .map(|b| b.0.clone())
            .ok_or_else(|| anyhow::anyhow!("--sweep needs a --burst of at least one request"))?;
        let n = seed_due_grants(
            &c,
            &server.platform,
            &sim,
            &cid,
            &linked[1..],
            &users,
            a.sweep,
            &template,
        )
        .await?;
        eprintln!(
            "put {n} further due grants in place in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        n
    } else {
        0
    };
    let want = want + seeded;
    // 3. The expiry sweep: jump past every end time and wait until all are expired and removed.
    let before = sim.sim.stats.json();
    let t = std::time::Instant::now();
    clock.advance(time::Duration::seconds(3601));
    server.platform.wake_signal().notify_one();
    loop {
        let r = c.get("/api/v1/requests?state=provisioned&limit=1").await?;
        if r["items"].as_array().is_none_or(|v| v.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let sweep_secs = t.elapsed().as_secs_f64();
    let after = sim.sim.stats.json();
    // 4. What every later ingest of the connector pays for drift detection with this many ended requests
    //    (nothing was put back, so none is found).
    let t = std::time::Instant::now();
    let drifted = server.platform.check_drift(&cid).await?;
    let drift_ms = t.elapsed().as_secs_f64() * 1000.0;
    tick.abort();
    let graph = |v: &serde_json::Value| v["requests"].as_u64().unwrap_or(0);
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "tenant": a.tenant,
            "database": server.platform.store().backend(),
            "group_members_before": members,
            "sequential": {"requests": a.sequential, "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "max_ms": pct(&lat, 1.0)},
            "burst": {"requests": a.burst, "filed_s": filed, "all_provisioned_s": burst_secs, "provisioned_per_s": a.burst as f64 / burst_secs},
            "expiry_sweep": {"grants": want, "imported": seeded, "seconds": sweep_secs, "expired_per_s": want as f64 / sweep_secs, "graph_requests": graph(&after) - graph(&before)},
            "drift_check": {"ended_requests": want, "found": drifted, "ms": drift_ms},
        }))?
    );
    server.stop().await;
    sim.stop().await;
    Ok(())
}

/// Puts `n` further due grants in place for the sweep: makes the next linked groups virtual roles, adds
/// users to them in the emulated tenant, and imports the matching provisioned requests (modelled on the
/// request `template_id`) into the platform. Returns how many.
#[allow(clippy::too_many_arguments)]
async fn seed_due_grants(
    c: &Client,
    platform: &steward_platform::Platform,
    sim: &steward_sim::Running,
    connector: &str,
    linked: &[(String, String, i64)],
    users: &[String],
    n: usize,
    template_id: &str,
) -> anyhow::Result<usize> {
    let template: steward_platform::Request =
        serde_json::from_value(c.get(&format!("/api/v1/requests/{template_id}")).await?)?;
    // Every linked group whose membership Steward may change becomes a virtual role of its app.
    let mut roles = Vec::new();
    let mut managed = std::collections::HashSet::new();
    for (app, idp, _) in linked {
        let gid: uuid::Uuid = idp
            .strip_prefix("group:")
            .and_then(|s| s.strip_suffix(":member"))
            .unwrap_or_default()
            .parse()?;
        let writable = sim
            .sim
            .read()
            .group(&gid)
            .is_some_and(|g| g.membership_rule.is_none() && !g.on_premises_sync_enabled);
        if !writable {
            continue;
        }
        if managed.insert(app.clone()) {
            // Already managed (the first one, by the benchmark itself) answers 409: fine.
            let _ = c.post(&format!("/api/v1/apps/{app}/manage"), json!({})).await;
            c.post(
                &format!("/api/v1/apps/{app}/entitlement-rules"),
                json!({"resource_types": ["virtual_role"], "access_profiles": ["everyone"], "policy": "auto"}),
            )
            .await?;
        }
        let vr = c
            .post(
                &format!("/api/v1/apps/{app}/linked-entitlements/{idp}"),
                json!({"action": "virtual_role", "name": format!("Sweep {gid}")}),
            )
            .await?;
        roles.push((
            app.clone(),
            idp.clone(),
            gid,
            vr["name"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    anyhow::ensure!(
        !roles.is_empty(),
        "the tenant has no linked group Steward may change"
    );
    // Spread over every role, as a mass expiry across many roles would be: users are dealt out round
    // the roles, each role starting at another user.
    let mut pairs: Vec<(usize, String)> = Vec::with_capacity(n);
    {
        let mut st = sim
            .sim
            .store
            .write()
            .map_err(|_| anyhow::anyhow!("the emulator's state is poisoned"))?;
        let mut next = vec![0usize; roles.len()];
        let stride = users.len() / roles.len().max(1) + 1;
        while pairs.len() < n {
            let before = pairs.len();
            for (r, (_, _, gid, _)) in roles.iter().enumerate() {
                // The next user of this role not yet in its group (one already in it is skipped: its
                // access is not the request's).
                while next[r] < users.len() && pairs.len() < n {
                    let u = &users[(r * stride + next[r]) % users.len()];
                    next[r] += 1;
                    if let Ok(uid) = u.parse::<uuid::Uuid>()
                        && st.add_group_member(*gid, uid).is_ok()
                    {
                        pairs.push((r, u.clone()));
                        break;
                    }
                }
            }
            if pairs.len() == before {
                break;
            }
        }
    }
    anyhow::ensure!(
        pairs.len() >= n,
        "the tenant's linked groups take only {} further grants; ask for a smaller --sweep or a larger tenant",
        pairs.len()
    );
    let now = time::OffsetDateTime::now_utc();
    let stamp = steward_platform::clock::rfc3339(now);
    let expires = steward_platform::clock::rfc3339(now + time::Duration::seconds(3600));
    let requests = pairs
        .into_iter()
        .map(|(r, u)| {
            let (app, idp, _, name) = &roles[r];
            let mut q = template.clone();
            q.id = uuid::Uuid::new_v4().to_string();
            q.requester_id = u.clone();
            q.requester_name = u;
            q.app_id = app.clone();
            q.entitlement = format!("vr:{idp}");
            q.entitlement_name = name.clone();
            q.targets = vec![steward_platform::Target {
                connector_id: connector.to_owned(),
                entitlement: idp.clone(),
                confirmed: true,
            }];
            q.created_at = stamp.clone();
            q.updated_at = stamp.clone();
            q.provisioned_at = Some(stamp.clone());
            q.expires_at = Some(expires.clone());
            q.events.clear();
            q.decisions.clear();
            q
        })
        .collect();
    Ok(platform.import_provisioned(requests).await?)
}
