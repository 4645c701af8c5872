//! The tamper-evident audit log: every entry carries the SHA-256 of its own fields and of the entry before
//! it, so editing, inserting or deleting any entry breaks the chain from there on. The head (last sequence
//! number and hash) is also kept in `meta`, so cutting entries off the end is caught too.

use sha2::{Digest, Sha256};

use super::types::{AuditEntry, AuditVerdict};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an entry: SHA-256 over its fields (not `hash`), each length-prefixed, hex.
pub fn hash(e: &AuditEntry) -> String {
    let mut h = Sha256::new();
    let detail = serde_json::to_string(&e.detail).unwrap_or_default();
    let seq = e.seq.to_string();
    for part in [
        e.prev_hash.as_str(),
        seq.as_str(),
        e.at.as_str(),
        e.actor.as_str(),
        e.action.as_str(),
        e.target_type.as_str(),
        e.target_id.as_str(),
        detail.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Checks a chain read in order from `seq = 1`, continuing from `(expected seq, prev hash)`.
#[derive(Debug)]
pub struct Verifier {
    next: i64,
    prev: String,
    problem: Option<String>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            next: 1,
            prev: GENESIS.to_owned(),
            problem: None,
        }
    }
}

impl Verifier {
    /// Feeds the next entry; false once a problem is found.
    pub fn feed(&mut self, e: &AuditEntry) -> bool {
        if self.problem.is_some() {
            return false;
        }
        let p = if e.seq != self.next {
            Some(format!(
                "entry {} is missing (found {} next): entries were deleted or inserted",
                self.next, e.seq
            ))
        } else if e.prev_hash != self.prev {
            Some(format!(
                "entry {} does not follow entry {}: its prev_hash does not match",
                e.seq,
                e.seq - 1
            ))
        } else if hash(e) != e.hash {
            Some(format!(
                "entry {} was edited: its content no longer matches its hash",
                e.seq
            ))
        } else {
            None
        };
        if p.is_some() {
            self.problem = p;
            return false;
        }
        self.next += 1;
        self.prev = e.hash.clone();
        true
    }

    /// The verdict, given the recorded head.
    pub fn finish(self, head: Option<(i64, String)>) -> AuditVerdict {
        let entries = self.next - 1;
        let problem = self.problem.or_else(|| match head {
            Some((seq, h)) if seq != entries || (seq > 0 && h != self.prev) => Some(format!(
                "the log ends at entry {entries} but its recorded head is entry {seq}: entries were deleted from the end or the head was altered"
            )),
            None if entries > 0 => Some("the log has entries but no recorded head".into()),
            _ => None,
        });
        AuditVerdict {
            ok: problem.is_none(),
            entries,
            problem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let mut e = AuditEntry {
                    seq,
                    at: format!("2026-11-29T10:00:{seq:02}Z"),
                    actor: "alice".into(),
                    action: "request.created".into(),
                    target_type: "request".into(),
                    target_id: format!("r{seq}"),
                    detail: serde_json::json!({"n": seq}),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                e.hash = hash(&e);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn verify(es: &[AuditEntry], head: Option<(i64, String)>) -> AuditVerdict {
        let mut v = Verifier::default();
        for e in es {
            v.feed(e);
        }
        v.finish(head)
    }

    #[test]
    fn intact_chain_verifies_and_every_kind_of_tampering_is_caught() {
        let es = chain(5);
        let head = Some((5, es[4].hash.clone()));
        assert!(verify(&es, head.clone()).ok);
        let mut edited = es.clone();
        edited[2].actor = "mallory".into();
        let v = verify(&edited, head.clone());
        assert!(!v.ok && v.problem.unwrap().contains("entry 3 was edited"));
        let mut deleted = es.clone();
        deleted.remove(1);
        assert!(
            verify(&deleted, head.clone())
                .problem
                .unwrap()
                .contains("entry 2 is missing")
        );
        let truncated = &es[..4];
        assert!(
            verify(truncated, head.clone())
                .problem
                .unwrap()
                .contains("recorded head")
        );
        // Rehashing an edited entry does not help: the next one no longer follows it.
        let mut rehashed = es.clone();
        rehashed[1].detail = serde_json::json!({"n": 99});
        rehashed[1].hash = hash(&rehashed[1]);
        assert!(
            verify(&rehashed, head)
                .problem
                .unwrap()
                .contains("entry 3 does not follow")
        );
        assert!(verify(&[], None).ok);
    }
}
