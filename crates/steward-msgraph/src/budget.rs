//! One throttle budget per app and tenant, shaped like Graph's resource units (specs §3): a token bucket of
//! `capacity` RU refilled at `capacity / 10` RU per second (3,500, 5,000 or 8,000 RU per 10 s by tenant
//! size). Every request takes its estimated cost before it is sent, so a sync stays under Microsoft's limit
//! instead of bouncing off it.
//!
//! It adapts to what the service says: a 429 with `Retry-After` empties the bucket and pauses every caller
//! until then; `x-ms-throttle-limit-percentage` (the fraction used, sent above 0.8) lowers the bucket to
//! what the service reports left; `x-ms-resource-unit` corrects the estimate of each request.
//! ARM uses the same type with its own numbers (250 reads, 25 per second).

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
    paused_until: Option<Instant>,
}

/// A resource-unit budget shared by every request of one client.
#[derive(Debug)]
pub struct Budget {
    capacity: Mutex<(f64, f64)>,
    state: Mutex<State>,
}

impl Budget {
    /// A bucket of `capacity` units refilled at `per_sec` units per second, full at the start.
    pub fn new(capacity: f64, per_sec: f64) -> Budget {
        Budget {
            capacity: Mutex::new((capacity, per_sec)),
            state: Mutex::new(State {
                tokens: capacity,
                at: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// Graph's identity-and-access budget for a tenant of `users` users.
    pub fn graph_for_users(users: u64) -> Budget {
        let c = graph_capacity(users);
        Budget::new(c, c / 10.0)
    }

    /// Resizes the bucket (e.g. once the tenant's size is known), keeping the fraction used.
    pub fn resize(&self, capacity: f64, per_sec: f64) {
        if let (Ok(mut c), Ok(mut s)) = (self.capacity.lock(), self.state.lock()) {
            let frac = if c.0 > 0.0 { s.tokens / c.0 } else { 1.0 };
            *c = (capacity, per_sec);
            s.tokens = frac * capacity;
        }
    }

    /// (capacity, refill per second).
    pub fn shape(&self) -> (f64, f64) {
        self.capacity.lock().map(|c| *c).unwrap_or((1.0, 1.0))
    }

    /// Waits until `cost` units are available and takes them.
    pub async fn acquire(&self, cost: f64) {
        loop {
            let wait = self.try_take(cost);
            match wait {
                None => return,
                Some(w) => tokio::time::sleep(w).await,
            }
        }
    }

    fn try_take(&self, cost: f64) -> Option<Duration> {
        let (cap, rate) = self.shape();
        let Ok(mut s) = self.state.lock() else {
            return None;
        };
        let now = Instant::now();
        if let Some(p) = s.paused_until {
            if now < p {
                return Some(p - now);
            }
            s.paused_until = None;
        }
        s.tokens = (s.tokens + now.duration_since(s.at).as_secs_f64() * rate).min(cap);
        s.at = now;
        let cost = cost.min(cap);
        if s.tokens >= cost {
            s.tokens -= cost;
            None
        } else {
            let secs = (cost - s.tokens) / rate.max(0.001);
            Some(Duration::from_secs_f64(secs.clamp(0.001, 60.0)))
        }
    }

    /// Units available now (refilled to this instant; may be negative after corrections), without taking any.
    pub fn available(&self) -> f64 {
        let (cap, rate) = self.shape();
        let Ok(s) = self.state.lock() else {
            return 0.0;
        };
        let now = Instant::now();
        if s.paused_until.is_some_and(|p| now < p) {
            return s.tokens.min(0.0);
        }
        (s.tokens + now.saturating_duration_since(s.at).as_secs_f64() * rate).min(cap)
    }

    /// Corrects a request's estimated cost with the actual one (`x-ms-resource-unit`).
    pub fn reconcile(&self, estimated: f64, actual: f64) {
        if let Ok(mut s) = self.state.lock() {
            s.tokens -= actual - estimated;
        }
    }

    /// The service reported `used` (0..1) of the budget spent: never believe we have more left than that.
    pub fn observe_used(&self, used: f64) {
        let (cap, _) = self.shape();
        if let Ok(mut s) = self.state.lock() {
            let left = (1.0 - used.clamp(0.0, 1.0)) * cap;
            if s.tokens > left {
                s.tokens = left;
            }
        }
    }

    /// The service answered 429: empty the bucket and pause everyone for `retry_after`.
    pub fn throttled(&self, retry_after: Duration) {
        if let Ok(mut s) = self.state.lock() {
            let until = Instant::now() + retry_after;
            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
            s.tokens = s.tokens.min(0.0);
            s.at = until;
        }
    }
}

/// RU per 10 s for a tenant of `users` users (3,500 under 50; 5,000 up to 500; 8,000 above).
pub fn graph_capacity(users: u64) -> f64 {
    if users < 50 {
        3_500.0
    } else if users <= 500 {
        5_000.0
    } else {
        8_000.0
    }
}

/// The estimated RU cost of a Graph GET of `path_and_query` (`/v1.0/...`), per specs §3.
pub fn graph_cost(path_and_query: &str) -> f64 {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let segs: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != "v1.0" && *s != "beta")
        .collect();
    let base: i32 = match segs.as_slice() {
        ["users"] | ["users", _] | ["applications"] | ["applications", _] => 2,
        ["servicePrincipals", _, "appRoleAssignments"] => 2,
        ["users", _, "memberOf" | "transitiveMemberOf" | "licenseDetails"] => 2,
        ["groups", _, "members", ..] | ["subscribedSkus"] => 3,
        ["groups", _, "transitiveMembers", ..] => 5,
        _ => 1,
    };
    let q = percent_decode(query);
    let has = |k: &str| q.split('&').any(|p| p.starts_with(k));
    let mut c = base;
    if has("$select=") {
        c -= 1;
    }
    if has("$expand=") {
        c += 1;
    }
    if let Some(top) = q.split('&').find_map(|p| p.strip_prefix("$top="))
        && top.parse::<u32>().is_ok_and(|t| t < 20)
    {
        c -= 1;
    }
    f64::from(c.max(1))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_follow_the_table() {
        assert_eq!(graph_cost("/v1.0/users?$top=999&$select=id"), 1.0);
        assert_eq!(graph_cost("/v1.0/users?$top=999"), 2.0);
        assert_eq!(graph_cost("/v1.0/groups/x/members?$select=id&$top=999"), 2.0);
        assert_eq!(graph_cost("/v1.0/groups/x/transitiveMembers"), 5.0);
        assert_eq!(graph_cost("/v1.0/subscribedSkus"), 3.0);
        assert_eq!(graph_cost("/v1.0/users?%24select=id&%24expand=manager"), 2.0);
        assert_eq!(graph_cost("/v1.0/groups?$top=5&$select=id"), 1.0);
        assert_eq!(graph_capacity(10), 3_500.0);
        assert_eq!(graph_capacity(200), 5_000.0);
        assert_eq!(graph_capacity(10_000), 8_000.0);
    }

    #[tokio::test]
    async fn bucket_waits_and_pauses() {
        let b = Budget::new(10.0, 100.0);
        b.acquire(10.0).await;
        let t = Instant::now();
        b.acquire(5.0).await; // 50 ms of refill
        assert!(t.elapsed() >= Duration::from_millis(40));
        b.throttled(Duration::from_millis(100));
        let t = Instant::now();
        b.acquire(1.0).await;
        assert!(t.elapsed() >= Duration::from_millis(90));
        b.observe_used(1.0);
        assert!(b.try_take(5.0).is_some());
    }
}
