//! Realism controls: Microsoft's throttling budgets, injected faults and latency.
//!
//! Graph: one token bucket of resource units per app and tenant, sized by the tenant's user count
//! (3,500 / 5,000 / 8,000 RU per 10 s), plus a write bucket (3,000 writes per 150 s). ARM: per principal
//! and subscription, a read bucket of 250 refilled at 25/s and a write bucket of 200 refilled at 10/s.
//! A request that does not fit is answered 429 with the seconds until it would fit. Faults are drawn
//! from a stream seeded by `--seed`, one draw per request in arrival order.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Outcome of taking from a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    /// Allowed; fraction of the budget in use after this request (0..1).
    Ok { used: f64, remaining: f64 },
    /// Refused; whole seconds to wait.
    Wait(u64),
}

#[derive(Debug)]
struct Spec {
    capacity: f64,
    per_sec: f64,
}

fn take(map: &Mutex<HashMap<String, Bucket>>, key: &str, spec: &Spec, cost: f64) -> Take {
    let now = Instant::now();
    let Ok(mut m) = map.lock() else {
        return Take::Ok {
            used: 0.0,
            remaining: spec.capacity,
        };
    };
    let b = m.entry(key.to_string()).or_insert(Bucket {
        tokens: spec.capacity,
        at: now,
    });
    let elapsed = now.duration_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + elapsed * spec.per_sec).min(spec.capacity);
    b.at = now;
    if b.tokens >= cost {
        b.tokens -= cost;
        Take::Ok {
            used: 1.0 - b.tokens / spec.capacity,
            remaining: b.tokens,
        }
    } else {
        let wait = ((cost - b.tokens) / spec.per_sec).ceil().max(1.0) as u64;
        Take::Wait(wait)
    }
}

pub struct Throttle {
    graph: Spec,
    graph_writes: Spec,
    arm_reads: Spec,
    arm_writes: Spec,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Throttle {
    pub fn new(tenant_users: usize) -> Throttle {
        let ru = if tenant_users < 50 {
            3_500.0
        } else if tenant_users <= 500 {
            5_000.0
        } else {
            8_000.0
        };
        Throttle {
            graph: Spec {
                capacity: ru,
                per_sec: ru / 10.0,
            },
            graph_writes: Spec {
                capacity: 3_000.0,
                per_sec: 3_000.0 / 150.0,
            },
            arm_reads: Spec {
                capacity: 250.0,
                per_sec: 25.0,
            },
            arm_writes: Spec {
                capacity: 200.0,
                per_sec: 10.0,
            },
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Graph: `cost` resource units for `app`; writes also take from the write bucket.
    pub fn graph(&self, app: &str, cost: u32, write: bool) -> Take {
        if write && let Take::Wait(s) = take(&self.buckets, &format!("gw:{app}"), &self.graph_writes, 1.0) {
            return Take::Wait(s);
        }
        take(&self.buckets, &format!("g:{app}"), &self.graph, f64::from(cost))
    }

    pub fn arm(&self, principal: &str, subscription: &str, write: bool) -> Take {
        if write {
            take(
                &self.buckets,
                &format!("aw:{principal}:{subscription}"),
                &self.arm_writes,
                1.0,
            )
        } else {
            take(
                &self.buckets,
                &format!("ar:{principal}:{subscription}"),
                &self.arm_reads,
                1.0,
            )
        }
    }

    pub fn graph_capacity(&self) -> f64 {
        self.graph.capacity
    }
}

/// What a fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Status(u16),
    /// Close the connection without a response.
    Reset,
    /// Send the headers and half of the body, then close.
    Truncate,
    /// Hold the request for `stall_ms`, then answer normally.
    Stall,
    /// Revoke the caller's token: this and later calls with it get 401.
    Revoke,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub probability: f64,
    pub kinds: Vec<FaultKind>,
}

impl std::str::FromStr for FaultSpec {
    type Err = String;

    /// `P` or `P:KIND,KIND…` with kinds 500, 502, 503, 504, reset, truncate, stall, revoke.
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, kinds) = match s.split_once(':') {
            Some((p, k)) => (p, Some(k)),
            None => (s, None),
        };
        let probability: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("--faults {s}: the probability '{p}' is not a number (e.g. 0.05)"))?;
        if !(0.0..=1.0).contains(&probability) {
            return Err(format!("--faults {s}: the probability must be between 0 and 1"));
        }
        let kinds = match kinds {
            None => vec![
                FaultKind::Status(500),
                FaultKind::Status(502),
                FaultKind::Status(503),
                FaultKind::Status(504),
                FaultKind::Reset,
                FaultKind::Truncate,
            ],
            Some(list) => list
                .split(',')
                .map(|k| match k.trim() {
                    "500" | "502" | "503" | "504" => Ok(FaultKind::Status(k.trim().parse().unwrap_or(500))),
                    "reset" => Ok(FaultKind::Reset),
                    "truncate" => Ok(FaultKind::Truncate),
                    "stall" => Ok(FaultKind::Stall),
                    "revoke" => Ok(FaultKind::Revoke),
                    other => Err(format!(
                        "--faults {s}: unknown fault '{other}' (use 500, 502, 503, 504, reset, truncate, stall, revoke)"
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(FaultSpec { probability, kinds })
    }
}

pub struct Faults {
    spec: FaultSpec,
    seed: u64,
    counter: AtomicU64,
}

impl Faults {
    pub fn new(spec: FaultSpec, seed: u64) -> Faults {
        Faults {
            spec,
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// The fault for the next request, if any. The n-th request's draw depends only on the seed and n.
    pub fn next(&self) -> Option<FaultKind> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        Self::draw(&self.spec, self.seed, n)
    }

    pub fn draw(spec: &FaultSpec, seed: u64, n: u64) -> Option<FaultKind> {
        let mut r = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n);
        if spec.kinds.is_empty() || !r.chance(spec.probability) {
            return None;
        }
        Some(spec.kinds[r.below(spec.kinds.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_spec_parses_and_rejects() {
        let f: FaultSpec = "0.05:503,reset".parse().unwrap();
        assert_eq!(f.probability, 0.05);
        assert_eq!(f.kinds, vec![FaultKind::Status(503), FaultKind::Reset]);
        assert!("x".parse::<FaultSpec>().unwrap_err().contains("not a number"));
        assert!("2".parse::<FaultSpec>().is_err());
        assert!(
            "0.1:boom"
                .parse::<FaultSpec>()
                .unwrap_err()
                .contains("unknown fault 'boom'")
        );
    }

    #[test]
    fn faults_are_deterministic_and_near_the_probability() {
        let spec: FaultSpec = "0.1".parse().unwrap();
        let a: Vec<_> = (0..2000).map(|n| Faults::draw(&spec, 7, n)).collect();
        let b: Vec<_> = (0..2000).map(|n| Faults::draw(&spec, 7, n)).collect();
        assert_eq!(a, b);
        let hits = a.iter().filter(|x| x.is_some()).count();
        assert!((120..=280).contains(&hits), "{hits}");
    }

    #[test]
    fn bucket_refuses_when_empty_and_says_how_long() {
        let t = Throttle::new(10);
        let mut refused = None;
        for _ in 0..10_000 {
            if let Take::Wait(s) = t.graph("app", 5, false) {
                refused = Some(s);
                break;
            }
        }
        let s = refused.expect("a 3,500 RU bucket refuses within 700 requests of 5 RU");
        assert!((1..=2).contains(&s), "{s}");
    }
}
