//! The governance platform: connectors and their syncs, the ingested snapshot (identities, resources,
//! entitlements, grants with their paths), the app catalog and linked entitlements, tokens and roles.
//!
//! [`Platform`] is the domain API (every method takes the calling [`Actor`] and checks its role); storage is
//! behind [`store::Store`], implemented by [`store::SqlStore`] on SQLite and PostgreSQL. Time comes from a
//! [`clock::Clock`].

pub mod clock;
pub mod crypto;
pub mod db;
pub mod error;
pub mod gov;
pub mod ingest;
pub mod model;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use steward_msgraph::{Credential, Secret};
use tokio::sync::mpsc;

pub use clock::{Clock, ManualClock, SystemClock};
pub use crypto::MasterKey;
pub use error::{PlatformError, Result};
pub use gov::store::GovStore;
pub use gov::types::*;
pub use model::*;
pub use store::{SqlStore, Store};

/// How to open the platform.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// `postgres://…` or `sqlite://…`; default: SQLite in `data_dir`.
    pub db_url: Option<String>,
    /// Data directory (SQLite file, master key, working files).
    pub data_dir: Option<PathBuf>,
}

/// The platform.
pub struct Platform {
    store: Arc<dyn Store>,
    gov: Arc<dyn GovStore>,
    wake: Arc<tokio::sync::Notify>,
    worker_id: String,
    http: reqwest::Client,
    /// Connector clients reused by the task worker: connector id → (built, client).
    provisioners: std::sync::Mutex<HashMap<String, (std::time::Instant, Arc<steward_entra::Entra>)>>,
    confirms: gov::worker::Confirmations,
    key: MasterKey,
    clock: Arc<dyn Clock>,
    work_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("backend", &self.store.backend())
            .finish()
    }
}

/// Settings whose values are secret: encrypted at rest, never returned or logged.
pub fn is_secret_setting(k: &str) -> bool {
    ["secret", "password", "private_key", "token", "api_key"]
        .iter()
        .any(|s| k.contains(s))
}

const KINDS: &[&str] = &["entra", "azure", "baton"];

/// App detail: the app with its entitlements.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AppDetail {
    /// The app.
    #[serde(flatten)]
    pub app: App,
    /// Its entitlements.
    pub entitlements: Vec<AppEntitlement>,
}

impl Platform {
    /// Connects, migrates, loads (or creates) the master key.
    pub async fn open(opts: &OpenOptions, clock: Arc<dyn Clock>) -> Result<Platform> {
        let db = db::Db::connect(opts.db_url.as_deref(), opts.data_dir.as_deref()).await?;
        db.migrate().await?;
        let key = MasterKey::load_or_create(opts.data_dir.as_deref())?;
        let (work_dir, tmp) = match &opts.data_dir {
            Some(d) => {
                let w = d.join("work");
                std::fs::create_dir_all(&w)?;
                (w, None)
            }
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_owned(), Some(t))
            }
        };
        let sql = SqlStore::new(db);
        Ok(Platform {
            store: Arc::new(sql.clone()),
            gov: Arc::new(sql),
            wake: Arc::new(tokio::sync::Notify::new()),
            worker_id: uuid::Uuid::new_v4().to_string(),
            http: reqwest::Client::new(),
            provisioners: std::sync::Mutex::new(HashMap::new()),
            confirms: Default::default(),
            key,
            clock,
            work_dir,
            _tmp: tmp,
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn now(&self) -> String {
        clock::rfc3339(self.clock.now())
    }

    /// On the first start of a database: mints the bootstrap super_admin token (shown once). Later: None.
    pub async fn bootstrap(&self) -> Result<Option<NewToken>> {
        if !self.store.meta_set_once("bootstrapped", &self.now()).await? {
            return Ok(None);
        }
        Ok(Some(self.mint(Role::SuperAdmin, "bootstrap admin", None).await?))
    }

    async fn mint(&self, role: Role, name: &str, identity_id: Option<String>) -> Result<NewToken> {
        let token = crypto::new_token()?;
        let info = TokenInfo {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            role,
            identity_id,
            created_at: self.now(),
        };
        self.store
            .insert_token(&info, &crypto::hash_token(&token))
            .await?;
        Ok(NewToken { info, token })
    }

    /// Mints a token: for a synced identity (`user`, by id or UPN) or with a role and a name.
    pub async fn create_token(
        &self,
        user: Option<&str>,
        role: Option<Role>,
        name: Option<&str>,
    ) -> Result<NewToken> {
        match (user, role) {
            (Some(u), None | Some(Role::User)) => {
                let id = self
                    .store
                    .identity(u)
                    .await?
                    .ok_or_else(|| PlatformError::not_found("identity", u))?;
                let label = id.upn.clone().unwrap_or_else(|| id.display_name.clone());
                self.mint(Role::User, name.unwrap_or(&label), Some(id.id)).await
            }
            (None, Some(Role::User)) => Err(PlatformError::Invalid("a user token needs --user".into())),
            (None, Some(r)) => {
                let n = name
                    .filter(|n| !n.trim().is_empty())
                    .ok_or_else(|| PlatformError::Invalid("a role token needs a name".into()))?;
                self.mint(r, n, None).await
            }
            (Some(_), Some(_)) => Err(PlatformError::Invalid(
                "give a user or an admin role, not both".into(),
            )),
            (None, None) => Err(PlatformError::Invalid("give a user or a role".into())),
        }
    }

    /// `POST /api/v1/tokens` (super_admin).
    pub async fn api_create_token(
        &self,
        a: &Actor,
        user: Option<&str>,
        role: Option<Role>,
        name: Option<&str>,
    ) -> Result<NewToken> {
        require(a, &[Role::SuperAdmin])?;
        let t = self.create_token(user, role, name).await?;
        self.audit_config(a, "token.created", "token", &t.info.id, serde_json::json!(t.info))
            .await?;
        Ok(t)
    }

    /// Tokens without their secrets, and whether each is revoked (super_admin).
    pub async fn tokens(&self, a: &Actor) -> Result<Vec<serde_json::Value>> {
        require(a, &[Role::SuperAdmin])?;
        Ok(self
            .store
            .tokens()
            .await?
            .into_iter()
            .map(|(t, revoked)| {
                let mut v = serde_json::json!(t);
                v["revoked"] = serde_json::Value::Bool(revoked);
                v
            })
            .collect())
    }

    /// Revokes a token: it stops working at once (super_admin).
    pub async fn revoke_token(&self, a: &Actor, id: &str) -> Result<serde_json::Value> {
        require(a, &[Role::SuperAdmin])?;
        if !self.store.revoke_token(id).await? {
            return Err(PlatformError::not_found("token", id));
        }
        self.audit_config(a, "token.revoked", "token", id, serde_json::json!({}))
            .await?;
        Ok(serde_json::json!({"id": id, "revoked": true}))
    }

    /// Who a bearer token belongs to.
    pub async fn authenticate(&self, bearer: &str) -> Result<Actor> {
        let t = self
            .store
            .token_by_hash(&crypto::hash_token(bearer))
            .await?
            .ok_or_else(|| PlatformError::Unauthenticated("unknown or revoked token".into()))?;
        Ok(Actor {
            token_id: t.id,
            name: t.name,
            role: t.role,
            identity_id: t.identity_id,
        })
    }

    // ---- connectors ----

    /// Registers a connector; secret settings are encrypted and never returned.
    pub async fn create_connector(&self, a: &Actor, c: CreateConnector) -> Result<Connector> {
        require(a, &[Role::SuperAdmin, Role::ConnectorAdmin])?;
        if !KINDS.contains(&c.kind.as_str()) {
            return Err(PlatformError::Invalid(format!(
                "kind must be one of {KINDS:?}, not {:?}",
                c.kind
            )));
        }
        if c.name.trim().is_empty() {
            return Err(PlatformError::Invalid("name must not be empty".into()));
        }
        if let Some(i) = c.sync_interval_secs
            && i < 60
        {
            return Err(PlatformError::Invalid(
                "sync_interval_secs must be at least 60".into(),
            ));
        }
        if let Some(app) = &c.app_id
            && self.store.app(app).await?.is_none()
        {
            return Err(PlatformError::not_found("app", app.clone()));
        }
        let mut settings = serde_json::Map::new();
        let mut secrets = serde_json::Map::new();
        for (k, v) in c.settings {
            if is_secret_setting(&k) {
                if !v.is_string() {
                    return Err(PlatformError::Invalid(format!("setting {k} must be a string")));
                }
                secrets.insert(k, v);
            } else {
                settings.insert(k, v);
            }
        }
        if c.kind == "entra" {
            for k in ["entra_tenant_id", "entra_client_id"] {
                if settings.get(k).and_then(|v| v.as_str()).is_none_or(str::is_empty) {
                    return Err(PlatformError::Invalid(format!(
                        "an entra connector needs the setting {k}"
                    )));
                }
            }
        }
        let identity_source = match c.identity_source {
            Some(b) => b,
            None => c.kind == "entra" && !self.store.has_identity_source().await?,
        };
        let secrets_enc = self
            .key
            .encrypt(serde_json::Value::Object(secrets.clone()).to_string().as_bytes())?;
        let conn = Connector {
            id: uuid::Uuid::new_v4().to_string(),
            kind: c.kind,
            name: c.name,
            settings,
            secrets_set: secrets.keys().cloned().collect(),
            owners: c.owners,
            identity_source,
            app_id: c.app_id,
            sync_interval_secs: c.sync_interval_secs,
            status: ConnectorStatus::NotConnected,
            status_reason: None,
            last_sync_at: None,
            current_sync_id: None,
            created_at: self.now(),
        };
        self.store
            .insert_connector(&store::ConnectorRow {
                connector: conn.clone(),
                secrets_enc,
            })
            .await?;
        tracing::info!(id = %conn.id, kind = %conn.kind, name = %conn.name, "connector registered");
        // Settings without secrets: `conn` never holds them.
        self.audit_config(
            a,
            "connector.created",
            "connector",
            &conn.id,
            serde_json::json!(conn),
        )
        .await?;
        Ok(conn)
    }

    /// Connectors.
    pub async fn connectors(&self, a: &Actor, q: &ListQuery) -> Result<Page<Connector>> {
        require(a, &[Role::SuperAdmin, Role::ConnectorAdmin])?;
        self.store.connectors(q).await
    }

    /// One connector.
    pub async fn connector(&self, a: &Actor, id: &str) -> Result<Connector> {
        require(a, &[Role::SuperAdmin, Role::ConnectorAdmin])?;
        Ok(self.connector_row(id).await?.connector)
    }

    async fn connector_row(&self, id: &str) -> Result<store::ConnectorRow> {
        self.store
            .connector(id)
            .await?
            .ok_or_else(|| PlatformError::not_found("connector", id))
    }

    /// Sync history of a connector.
    pub async fn syncs(&self, a: &Actor, id: &str, q: &ListQuery) -> Result<Page<SyncRecord>> {
        require(a, &[Role::SuperAdmin, Role::ConnectorAdmin])?;
        self.connector_row(id).await?;
        self.store.syncs(id, q).await
    }

    /// Ingests an uploaded `.c1z` (the caller has written it to `path`).
    pub async fn upload_sync(&self, a: &Actor, id: &str, path: &Path) -> Result<SyncRecord> {
        require(a, &[Role::SuperAdmin, Role::ConnectorAdmin])?;
        let c = self.connector_row(id).await?.connector;
        self.ingest(&c, path, "upload", Vec::new()).await
    }

    /// A path for a working file (uploads, connector output).
    pub fn work_file(&self, ext: &str) -> PathBuf {
        self.work_dir.join(format!("{}.{ext}", uuid::Uuid::new_v4()))
    }

    /// Ingests `path` as connector `c`'s new snapshot, recording the sync. Fails without changing the
    /// current snapshot.
    pub async fn ingest(
        &self,
        c: &Connector,
        path: &Path,
        source: &str,
        mut log: Vec<String>,
    ) -> Result<SyncRecord> {
        let mut rec = SyncRecord {
            id: uuid::Uuid::new_v4().to_string(),
            connector_id: c.id.clone(),
            source: source.into(),
            status: "running".into(),
            started_at: self.now(),
            ended_at: None,
            error: None,
            stats: None,
            log: std::mem::take(&mut log),
        };
        self.store.insert_sync(&rec).await?;
        self.store
            .set_connector_status(&c.id, ConnectorStatus::Syncing, None, None)
            .await?;
        let started = std::time::Instant::now();
        let (tx, rx) = mpsc::channel(4);
        let (p, cid, is) = (path.to_owned(), c.id.clone(), c.identity_source);
        let reader = tokio::task::spawn_blocking(move || ingest::read_c1z(&p, &cid, is, &tx));
        let r = self
            .store
            .replace_snapshot(&c.id, c.identity_source, rx, &rec.started_at)
            .await;
        let _ = reader.await;
        rec.ended_at = Some(self.now());
        match r {
            Ok(st) => {
                let snapshot = started.elapsed();
                let secs = snapshot.as_secs_f64();
                rec.log.push(format!(
                    "ingested {} resources, {} entitlements, {} grants in {:.2}s ({:.0} grants/s)",
                    st.resources,
                    st.entitlements,
                    st.grants,
                    secs,
                    st.grants as f64 / secs.max(1e-9)
                ));
                rec.status = "succeeded".into();
                rec.stats = serde_json::to_value(&st).ok();
                self.store.finish_sync(&rec).await?;
                let at = rec.ended_at.clone().unwrap_or_default();
                self.store
                    .set_connector_status(&c.id, ConnectorStatus::Connected, None, Some((&rec.id, &at)))
                    .await?;
                match self.check_drift(&c.id).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(connector = %c.id, requests = n, "drift: ended access is back"),
                    Err(e) => tracing::warn!(connector = %c.id, error = %e, "drift check failed"),
                }
                tracing::debug!(
                    connector = %c.id,
                    ?snapshot,
                    finish = ?(started.elapsed() - snapshot),
                    "ingest recorded"
                );
                Ok(rec)
            }
            Err(e) => {
                let msg = e.to_string();
                rec.status = "failed".into();
                rec.error = Some(msg.clone());
                rec.log
                    .push(format!("failed: {msg}; the previous snapshot is kept"));
                self.store.finish_sync(&rec).await?;
                self.store
                    .set_connector_status(&c.id, ConnectorStatus::Error, Some(&msg), None)
                    .await?;
                Err(e)
            }
        }
    }

    /// The Entra connector configuration of a stored connector (secrets decrypted; provisioning on when its
    /// `provisioning` setting is true).
    pub(crate) fn entra_config(&self, row: &store::ConnectorRow) -> Result<steward_entra::EntraConfig> {
        let c = &row.connector;
        let secrets: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&self.key.decrypt(&row.secrets_enc)?)
                .map_err(|e| PlatformError::Crypto(e.to_string()))?;
        let st = |k: &str| c.settings.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let flag = |k: &str| {
            c.settings
                .get(k)
                .and_then(|v| v.as_bool().or_else(|| v.as_str().map(|s| s == "true")))
                .unwrap_or(false)
        };
        let secret = secrets
            .get("entra_client_secret")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let mut cfg = steward_entra::EntraConfig::new(
            &st("entra_tenant_id").unwrap_or_default(),
            &st("entra_client_id").unwrap_or_default(),
            Credential::Secret(Secret::new(secret)),
        );
        cfg.login_endpoint = st("login_endpoint");
        cfg.graph_endpoint = st("graph_endpoint");
        cfg.arm_endpoint = st("arm_endpoint");
        cfg.ca_file = st("ca_file").map(PathBuf::from);
        cfg.skip_ad_groups = flag("skip_ad_groups");
        cfg.mailbox_settings = flag("mailbox_settings");
        cfg.skip_p2 = flag("skip_p2");
        cfg.exclude_microsoft_apps = flag("exclude_microsoft_apps");
        cfg.provisioning = flag("provisioning");
        Ok(cfg)
    }

    /// Runs the connector (Entra) against its settings and ingests the result. Returns when done.
    pub async fn run_connector(&self, id: &str, source: &str) -> Result<SyncRecord> {
        let row = self.connector_row(id).await?;
        let c = row.connector.clone();
        if c.kind != "entra" {
            return Err(PlatformError::Invalid(format!(
                "{} connectors are synced by uploading a .c1z (POST /api/v1/connectors/{id}/syncs)",
                c.kind
            )));
        }
        let cfg = self.entra_config(&row)?;
        self.store
            .set_connector_status(id, ConnectorStatus::Syncing, None, None)
            .await?;
        let file = self.work_file("c1z");
        let started = std::time::Instant::now();
        let result = async {
            let entra =
                steward_entra::Entra::new(cfg).map_err(|e| PlatformError::Connector(e.to_string()))?;
            steward_sync::run_sync(
                Arc::new(entra),
                &file,
                steward_sync::SyncPlan::Full,
                steward_sync::SyncOptions::default(),
                None,
            )
            .await
            .map_err(|e| PlatformError::Connector(e.to_string()))
        }
        .await;
        let out = match result {
            Ok(_) => {
                let log = vec![format!(
                    "entra connector synced in {:.2}s",
                    started.elapsed().as_secs_f64()
                )];
                self.ingest(&c, &file, source, log).await
            }
            Err(e) => {
                let msg = e.to_string();
                let rec = SyncRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    connector_id: c.id.clone(),
                    source: source.into(),
                    status: "failed".into(),
                    started_at: self.now(),
                    ended_at: Some(self.now()),
                    error: Some(msg.clone()),
                    stats: None,
                    log: vec![format!("failed: {msg}; the previous snapshot is kept")],
                };
                self.store.insert_sync(&rec).await?;
                self.store
                    .set_connector_status(id, ConnectorStatus::Error, Some(&msg), None)
                    .await?;
                Err(e)
            }
        };
        remove_work_file(&file);
        out
    }

    /// `POST /api/v1/connectors/{id}/sync`: checks and starts a connector sync in the background.
    pub async fn start_sync(self: &Arc<Self>, a: &Actor, id: &str) -> Result<Connector> {
        require(a, &[Role::SuperAdmin, Role::ConnectorAdmin])?;
        let c = self.connector_row(id).await?.connector;
        if c.kind != "entra" {
            return Err(PlatformError::Invalid(format!(
                "{} connectors are synced by uploading a .c1z (POST /api/v1/connectors/{id}/syncs)",
                c.kind
            )));
        }
        if c.status == ConnectorStatus::Syncing {
            return Err(PlatformError::Conflict("a sync is already running".into()));
        }
        self.store
            .set_connector_status(id, ConnectorStatus::Syncing, None, None)
            .await?;
        let me = Arc::clone(self);
        let id2 = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = me.run_connector(&id2, "connector").await {
                tracing::warn!(connector = %id2, error = %e, "sync failed");
            }
        });
        Ok(self.connector_row(id).await?.connector)
    }

    /// Starts the syncs that are due by their `sync_interval_secs` (called periodically by the server).
    pub async fn run_scheduled(self: &Arc<Self>) -> Result<usize> {
        if let Err(e) = self.purge_finished_tasks().await {
            tracing::warn!(error = %e, "purging finished tasks");
        }
        let now = self.clock.now();
        let mut started = 0;
        let all = self
            .store
            .connectors(&ListQuery {
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        for c in all.items {
            let Some(iv) = c.sync_interval_secs else { continue };
            if c.kind != "entra" || c.status == ConnectorStatus::Syncing {
                continue;
            }
            let due = match c.last_sync_at.as_deref().and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            }) {
                Some(t) => now - t >= time::Duration::seconds(iv),
                None => true,
            };
            if due {
                started += 1;
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    let _ = me.run_connector(&c.id, "schedule").await;
                });
            }
        }
        Ok(started)
    }

    // ---- identities ----

    /// Identities (admins).
    pub async fn identities(&self, a: &Actor, q: &ListQuery) -> Result<Page<Identity>> {
        require(a, &[Role::SuperAdmin, Role::ConnectorAdmin])?;
        self.store.identities(q).await
    }

    async fn identity_for(&self, a: &Actor, id: &str) -> Result<Identity> {
        let i = self
            .store
            .identity(id)
            .await?
            .ok_or_else(|| PlatformError::not_found("identity", id))?;
        if a.role == Role::User && a.identity_id.as_deref() != Some(i.id.as_str()) {
            return Err(PlatformError::Forbidden(
                "users may only see their own identity".into(),
            ));
        }
        Ok(i)
    }

    /// One identity (admins, or the identity itself).
    pub async fn identity(&self, a: &Actor, id: &str) -> Result<Identity> {
        self.identity_for(a, id).await
    }

    /// Everything an identity holds, with the path: direct, via group X, via virtual role Y.
    pub async fn access(&self, a: &Actor, id: &str) -> Result<Vec<AccessItem>> {
        let ident = self.identity_for(a, id).await?;
        let grants = self.store.grants_of_identity(&ident.id).await?;
        let by_ent: HashMap<(&str, &str), &store::HeldGrant> = grants
            .iter()
            .map(|g| ((g.0.as_str(), g.1.entitlement_id.as_str()), g))
            .collect();
        let mut vr_cache: HashMap<String, Vec<store::Binding>> = HashMap::new();
        let mut out = Vec::with_capacity(grants.len());
        for g in &grants {
            let (cid, row) = (&g.0, &g.1);
            let mut chain = vec![row.entitlement_id.clone()];
            let mut seen = BTreeSet::from([row.entitlement_id.clone()]);
            let mut cur = row;
            while !cur.direct && chain.len() <= 20 {
                let Some(v) = &cur.via else { break };
                if !seen.insert(v.clone()) {
                    break;
                }
                chain.push(v.clone());
                match by_ent.get(&(cid.as_str(), v.as_str())) {
                    Some(n) => cur = &n.1,
                    None => break,
                }
            }
            chain.reverse();
            let mut path = Vec::new();
            for (i, e) in chain.iter().enumerate() {
                let name = match by_ent.get(&(cid.as_str(), e.as_str())) {
                    Some(x) => x.2.clone(),
                    None => e.clone(),
                };
                let kind = if i == 0 {
                    "direct"
                } else if e.starts_with("group:") {
                    "group"
                } else {
                    "entitlement"
                };
                if i + 1 < chain.len() || chain.len() == 1 {
                    path.push(PathStep {
                        kind: kind.into(),
                        entitlement_id: e.clone(),
                        display_name: name,
                    });
                } else {
                    path.push(PathStep {
                        kind: "via".into(),
                        entitlement_id: e.clone(),
                        display_name: name,
                    });
                }
                if e.starts_with("group:") && e.ends_with(":member") {
                    if !vr_cache.contains_key(e) {
                        let l = self.store.links_of_idp_entitlement(e).await?;
                        vr_cache.insert(e.clone(), l);
                    }
                    for (app, action, vname, ae) in vr_cache.get(e).into_iter().flatten() {
                        if action == "virtual_role" {
                            path.push(PathStep {
                                kind: "virtual_role".into(),
                                entitlement_id: format!("{app}/{}", ae.clone().unwrap_or_default()),
                                display_name: vname.clone().unwrap_or_default(),
                            });
                        }
                    }
                }
            }
            let app_id = g.5.clone();
            out.push(AccessItem {
                connector_id: cid.clone(),
                grant_id: row.id.clone(),
                entitlement_id: row.entitlement_id.clone(),
                entitlement_name: g.2.clone(),
                resource_type: g.3.clone(),
                resource_id: g.4.clone(),
                app_id,
                direct: row.direct,
                path,
            });
        }
        Ok(out)
    }

    // ---- apps ----

    /// The catalog (everyone signed in).
    pub async fn apps(&self, _a: &Actor, managed: Option<bool>, q: &ListQuery) -> Result<Page<App>> {
        self.store.apps(managed, q).await
    }

    async fn app_row(&self, id: &str) -> Result<App> {
        self.store
            .app(id)
            .await?
            .ok_or_else(|| PlatformError::not_found("app", id))
    }

    /// One app with its entitlements (everyone signed in): its own, then its attached connectors'.
    pub async fn app(&self, _a: &Actor, id: &str) -> Result<AppDetail> {
        let app = self.app_row(id).await?;
        let entitlements = self.entitlements_of_app(&app, true).await?;
        Ok(AppDetail { app, entitlements })
    }

    /// An app's entitlements: its own (stored once managed, else read from the IdP snapshot), then its
    /// attached connectors'; their holders are counted only when asked (one index range per entitlement).
    async fn entitlements_of_app(&self, app: &App, with_holders: bool) -> Result<Vec<AppEntitlement>> {
        let mut entitlements = if app.managed {
            self.store.app_entitlements(&app.id).await?
        } else {
            self.idp_app_entitlements(app).await?
        };
        self.attached_entitlements(&app.id, with_holders, &mut entitlements)
            .await?;
        Ok(entitlements)
    }

    async fn idp_app_entitlements(&self, app: &App) -> Result<Vec<AppEntitlement>> {
        let (Some(cid), Some(rid)) = (&app.connector_id, &app.resource_id) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in self
            .store
            .entitlements_of(cid, "enterprise_application", rid)
            .await?
        {
            if !e.slug.starts_with("assignment:") {
                continue;
            }
            let kind = if e.slug == "assignment:00000000-0000-0000-0000-000000000000" {
                "access"
            } else {
                "app_role"
            };
            out.push(AppEntitlement {
                id: e.id.clone(),
                name: e.display_name,
                kind: kind.into(),
                connector_id: Some(cid.clone()),
                idp_entitlement_id: Some(e.id),
                holders: 0,
            });
        }
        Ok(out)
    }

    async fn resolve_owners(&self, owners: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for o in owners {
            let i = self
                .store
                .identity(o)
                .await?
                .ok_or_else(|| PlatformError::Invalid(format!("owner {o:?} is not a known identity")))?;
            out.push(i.id);
        }
        Ok(out)
    }

    /// Creates a managed app (super_admin).
    pub async fn create_app(&self, a: &Actor, c: CreateApp) -> Result<AppDetail> {
        require(a, &[Role::SuperAdmin])?;
        if c.name.trim().is_empty() {
            return Err(PlatformError::Invalid("name must not be empty".into()));
        }
        let owners = self.resolve_owners(&c.owners).await?;
        let app = App {
            id: uuid::Uuid::new_v4().to_string(),
            name: c.name,
            description: c.description,
            managed: true,
            connector_id: None,
            resource_id: None,
            owners,
            created_at: self.now(),
        };
        self.store.insert_app(&app).await?;
        self.audit_config(a, "app.created", "app", &app.id, serde_json::json!(app))
            .await?;
        self.store
            .insert_app_entitlement(
                &app.id,
                &AppEntitlement {
                    id: "access".into(),
                    name: format!("{} access", app.name),
                    kind: "access".into(),
                    connector_id: None,
                    idp_entitlement_id: None,
                    holders: 0,
                },
            )
            .await?;
        self.app(a, &app.id).await
    }

    /// Manages a discovered app; nothing changes in the IdP (super_admin).
    pub async fn manage_app(&self, a: &Actor, id: &str, m: ManageApp) -> Result<AppDetail> {
        require(a, &[Role::SuperAdmin])?;
        let app = self.app_row(id).await?;
        if app.managed {
            return Err(PlatformError::Conflict(format!("app {id} is already managed")));
        }
        let mut owners = self.resolve_owners(&m.owners).await?;
        if owners.is_empty()
            && let Some(i) = &a.identity_id
        {
            owners.push(i.clone());
        }
        let ents = self.idp_app_entitlements(&app).await?;
        self.store.manage_app(id, &owners, &ents).await?;
        self.audit_config(a, "app.managed", "app", id, serde_json::json!({"owners": owners}))
            .await?;
        self.app(a, id).await
    }

    fn require_app_admin(a: &Actor, app: &App) -> Result<()> {
        if a.role == Role::SuperAdmin || a.identity_id.as_ref().is_some_and(|i| app.owners.contains(i)) {
            Ok(())
        } else {
            Err(PlatformError::Forbidden(format!(
                "only a super_admin or an owner of app {} may do this",
                app.id
            )))
        }
    }

    /// Holders of one of an app's entitlements (super_admin, connector_admin, owners).
    pub async fn holders(&self, a: &Actor, app_id: &str, ent: &str, q: &ListQuery) -> Result<Page<Holder>> {
        let app = self.app_row(app_id).await?;
        if a.role != Role::ConnectorAdmin {
            Self::require_app_admin(a, &app)?;
        }
        // Only the one entitlement is wanted: no holder counts for all of them.
        let e = self
            .entitlements_of_app(&app, false)
            .await?
            .into_iter()
            .find(|e| e.id == ent)
            .ok_or_else(|| PlatformError::not_found("app entitlement", ent))?;
        match (&e.connector_id, &e.idp_entitlement_id) {
            (Some(c), Some(i)) => self.store.holders(c, i, q).await,
            _ => Ok(Page {
                items: Vec::new(),
                next_page_token: None,
            }),
        }
    }

    /// IdP entitlements linked to an app (groups assigned to its enterprise application) with bindings.
    pub async fn linked_entitlements(&self, a: &Actor, app_id: &str) -> Result<Vec<LinkedEntitlement>> {
        let app = self.app_row(app_id).await?;
        Self::require_app_admin(a, &app)?;
        let (Some(cid), Some(rid)) = (&app.connector_id, &app.resource_id) else {
            return Ok(Vec::new());
        };
        let links: HashMap<String, (String, Option<String>, Option<String>)> = self
            .store
            .links(app_id)
            .await?
            .into_iter()
            .map(|(i, ac, n, e)| (i, (ac, n, e)))
            .collect();
        Ok(self
            .store
            .groups_assigned(cid, rid)
            .await?
            .into_iter()
            .map(|(idp, name, via, members)| {
                let (action, n, e) = links.get(&idp).cloned().unwrap_or(("unbound".into(), None, None));
                LinkedEntitlement {
                    idp_entitlement_id: idp,
                    display_name: name,
                    connector_id: cid.clone(),
                    assigned_via: via,
                    members,
                    action,
                    name: n,
                    app_entitlement_id: e,
                }
            })
            .collect())
    }

    /// Binds a linked IdP entitlement: virtual role, provision for an app entitlement, or skip.
    pub async fn link(
        &self,
        a: &Actor,
        app_id: &str,
        idp: &str,
        action: LinkAction,
    ) -> Result<LinkedEntitlement> {
        let app = self.app_row(app_id).await?;
        Self::require_app_admin(a, &app)?;
        if !app.managed {
            return Err(PlatformError::Conflict(format!(
                "app {app_id} is not managed: manage it first (POST /api/v1/apps/{app_id}/manage)"
            )));
        }
        let linked = self.linked_entitlements(a, app_id).await?;
        let cur = linked
            .iter()
            .find(|l| l.idp_entitlement_id == idp)
            .ok_or_else(|| PlatformError::not_found("linked entitlement", idp))?;
        let cid = cur.connector_id.clone();
        let now = self.now();
        match action {
            LinkAction::VirtualRole { name } => {
                if name.trim().is_empty() {
                    return Err(PlatformError::Invalid("a virtual role needs a name".into()));
                }
                let eid = format!("vr:{idp}");
                self.store
                    .upsert_link(app_id, idp, &cid, "virtual_role", Some(&name), Some(&eid), &now)
                    .await?;
            }
            LinkAction::ProvisionFor { entitlement } => {
                let ents = self.store.app_entitlements(app_id).await?;
                if !ents
                    .iter()
                    .any(|e| e.id == entitlement && e.kind != "virtual_role")
                {
                    return Err(PlatformError::not_found("app entitlement", entitlement));
                }
                self.store
                    .upsert_link(app_id, idp, &cid, "provision_for", None, Some(&entitlement), &now)
                    .await?;
            }
            LinkAction::Skip => {
                self.store
                    .upsert_link(app_id, idp, &cid, "skip", None, None, &now)
                    .await?;
            }
        }
        let out = self
            .linked_entitlements(a, app_id)
            .await?
            .into_iter()
            .find(|l| l.idp_entitlement_id == idp)
            .ok_or_else(|| PlatformError::not_found("linked entitlement", idp))?;
        self.audit_config(a, "app.linked_entitlement", "app", app_id, serde_json::json!(out))
            .await?;
        Ok(out)
    }

    /// Bindings of an IdP entitlement, seen from the IdP side: (app id, action, name, app entitlement).
    pub async fn bindings_of(&self, a: &Actor, idp: &str) -> Result<Vec<serde_json::Value>> {
        require(a, &[Role::SuperAdmin, Role::ConnectorAdmin])?;
        Ok(self
            .store
            .links_of_idp_entitlement(idp)
            .await?
            .into_iter()
            .map(|(app, action, name, e)| serde_json::json!({"app_id": app, "action": action, "name": name, "app_entitlement_id": e}))
            .collect())
    }
}

/// Deletes a connector's working sync file with the writer's side files (build and write-ahead copies).
pub(crate) fn remove_work_file(file: &Path) {
    for f in [
        file.to_owned(),
        steward_c1z::writer::build_path(file),
        steward_c1z::writer::wip_path(file),
    ] {
        let _ = std::fs::remove_file(f);
    }
}

/// Fails with 403 unless the actor has one of `roles`.
pub fn require(a: &Actor, roles: &[Role]) -> Result<()> {
    if roles.contains(&a.role) {
        Ok(())
    } else {
        Err(PlatformError::Forbidden(format!(
            "this needs one of the roles {}; your token has {}",
            roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
            a.role.as_str()
        )))
    }
}
