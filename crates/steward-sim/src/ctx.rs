//! The context every handler shares: the live tenant, signing keys, realism settings and statistics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::auth::Keys;
use crate::realism::{Faults, Throttle};
use crate::store::State;

/// Settings of a running emulator that handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    /// Per-request latency.
    pub latency_ms: u64,
    /// Per returned item, in microseconds, added to the latency when it is on.
    pub per_item_us: u64,
    pub throttle: bool,
    pub faults: Option<crate::realism::FaultSpec>,
    /// Access token lifetime in seconds (Microsoft: 3599 and a bit; tests shorten it).
    pub token_lifetime: u64,
    /// How long a `stall` fault holds a request, in milliseconds.
    pub stall_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seed: 1,
            latency_ms: 0,
            per_item_us: 10,
            throttle: false,
            faults: None,
            token_lifetime: 3599,
            stall_ms: 30_000,
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
    pub resource_units: AtomicU64,
    pub faults: AtomicU64,
    pub by_route: Mutex<BTreeMap<String, u64>>,
    /// Host names tunnelled through the CONNECT proxy (which cloud a client chose), with counts.
    pub tunnels: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn count(&self, route: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.by_route.lock() {
            *m.entry(route.to_string()).or_default() += 1;
        }
    }

    pub fn tunnel(&self, host: &str) {
        if let Ok(mut m) = self.tunnels.lock() {
            *m.entry(host.to_string()).or_default() += 1;
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let by_route = self.by_route.lock().map(|m| m.clone()).unwrap_or_default();
        let tunnels = self.tunnels.lock().map(|m| m.clone()).unwrap_or_default();
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "throttled": self.throttled.load(Ordering::Relaxed),
            "resource_units": self.resource_units.load(Ordering::Relaxed),
            "faults": self.faults.load(Ordering::Relaxed),
            "by_route": by_route,
            "tunnels": tunnels,
        })
    }

    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.throttled.store(0, Ordering::Relaxed);
        self.resource_units.store(0, Ordering::Relaxed);
        self.faults.store(0, Ordering::Relaxed);
        if let Ok(mut m) = self.by_route.lock() {
            m.clear();
        }
        if let Ok(mut m) = self.tunnels.lock() {
            m.clear();
        }
    }
}

/// A pending authorization code or a live refresh token of the delegated flow.
#[derive(Clone, Debug)]
pub struct DelegatedGrant {
    pub client_id: uuid::Uuid,
    pub user_id: uuid::Uuid,
    pub scopes: Vec<String>,
    pub redirect_uri: String,
    pub expires: i64,
}

pub struct Sim {
    pub store: RwLock<State>,
    pub keys: Keys,
    pub settings: Settings,
    pub stats: Stats,
    pub throttle: Throttle,
    pub faults: Option<Faults>,
    pub codes: Mutex<HashMap<String, DelegatedGrant>>,
    pub refresh_tokens: Mutex<HashMap<String, DelegatedGrant>>,
    /// Tokens revoked by the `revoke` fault: later calls with them get 401.
    pub revoked: Mutex<std::collections::HashSet<String>>,
    /// Access tokens whose signature has been verified, with their claims.
    pub verified: RwLock<HashMap<String, crate::auth::Claims>>,
}

impl Sim {
    pub fn new(state: State, keys: Keys, settings: Settings) -> Sim {
        let users = state.tenant.users.len();
        let faults = settings
            .faults
            .clone()
            .map(|spec| Faults::new(spec, settings.seed));
        Sim {
            store: RwLock::new(state),
            keys,
            throttle: Throttle::new(users),
            faults,
            settings,
            stats: Stats::default(),
            codes: Mutex::new(HashMap::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            revoked: Mutex::new(Default::default()),
            verified: RwLock::new(HashMap::new()),
        }
    }

    /// Read access to the tenant. A poisoned lock (a panic while writing) still yields the data: every
    /// write validates before it mutates, so the state is consistent.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.store.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Draws this request's fault (if `--faults` is on), counts it, and applies the kinds that act before
    /// the answer: `stall` waits, `revoke` revokes the caller's token (the token check then fails).
    /// Returns the kinds the caller must answer with itself: a status, a reset or a truncation.
    pub async fn fault_before(&self, headers: &http::HeaderMap) -> Option<crate::realism::FaultKind> {
        use crate::realism::FaultKind;
        let f = self.faults.as_ref().and_then(|f| f.next())?;
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        match f {
            FaultKind::Stall => {
                tokio::time::sleep(std::time::Duration::from_millis(self.settings.stall_ms)).await;
                None
            }
            FaultKind::Revoke => {
                crate::auth::revoke(self, headers);
                None
            }
            other => Some(other),
        }
    }
}
