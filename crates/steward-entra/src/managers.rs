//! Users' managers, read apart from the user listing.
//!
//! Graph pages a listing with `$expand` at most 100 items, so listing users with `$expand=manager` makes a
//! chain of n/100 dependent round trips (a 100,000-user tenant: 1,000 in a row). Instead, users are
//! listed at `$top=999` without `$expand`, and managers come from several `$expand=manager($select=id)`
//! listings of `id` only, each restricted by `startswith(userPrincipalName, …)` to a slice of the tenant,
//! read concurrently. The slices are planned from the user principal names the directory index already
//! read: prefixes are lengthened until each holds at most [`target`] users, and neighbouring prefixes are
//! joined with `or` (at most [`MAX_TERMS`] per filter). The resource units are those of the single
//! `$expand` listing (2 per 100 users, plus one partial page per slice); only the chain is shorter.
//!
//! Invariant: every user the listing returns gets its manager from Graph. The slices cover every user
//! principal name the index saw (a prefix covers all names that start with it); a user the slices did
//! not return (created since the index was read, or with a name a prefix filter misses) is looked up
//! directly with `GET /users/{id}/manager` through `$batch`.

use std::collections::HashMap;

use serde_json::Value;
use steward_msgraph::{Client, Error as GraphError};

use crate::error::EntraError;

/// Prefixes joined with `or` in one filter, at most.
pub const MAX_TERMS: usize = 10;
/// Slices of the tenant at most (each is a chain of pages; more slices make the chains shorter but cost
/// one partial page each, and Graph evaluates each filter over the directory).
pub const MAX_SLICES: usize = 12;
/// Users per slice below which slicing does not pay.
pub const MIN_SLICE: usize = 1_000;
/// Longest prefix tried when splitting a crowded one.
const MAX_PREFIX: usize = 8;

/// Users per slice for a tenant of `users` users.
pub fn target(users: usize) -> usize {
    users.div_ceil(MAX_SLICES).max(MIN_SLICE)
}

/// One slice: the prefixes it covers (lower case) and how many known users they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// `startswith(userPrincipalName, p)` for each, joined with `or`; empty = the whole tenant.
    pub prefixes: Vec<String>,
    /// Users of the index inside the slice.
    pub users: usize,
}

fn prefix(s: &str, chars: usize) -> &str {
    match s.char_indices().nth(chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Prefixes of `sorted` (lower-case names, sorted) at `depth` characters and more, each holding at most
/// `target` names unless it cannot be split further.
fn leaves(sorted: &[String], depth: usize, target: usize, out: &mut Vec<(String, usize)>) {
    let mut i = 0;
    while i < sorted.len() {
        let p = prefix(&sorted[i], depth);
        let mut j = i + 1;
        while j < sorted.len() && prefix(&sorted[j], depth) == p {
            j += 1;
        }
        let group = &sorted[i..j];
        let splittable = group.iter().any(|s| s.chars().count() > depth);
        if group.len() <= target || depth >= MAX_PREFIX || !splittable {
            out.push((p.to_owned(), group.len()));
        } else {
            leaves(group, depth + 1, target, out);
        }
        i = j;
    }
}

/// Plans the slices for the given user principal names.
pub fn plan(upns: &[String], target: usize) -> Vec<Slice> {
    if upns.len() <= target {
        return vec![Slice {
            prefixes: Vec::new(),
            users: upns.len(),
        }];
    }
    let mut sorted: Vec<String> = upns.iter().map(|u| u.to_lowercase()).collect();
    sorted.sort_unstable();
    let mut ls = Vec::new();
    leaves(&sorted, 1, target, &mut ls);
    let mut out: Vec<Slice> = Vec::new();
    for (p, n) in ls {
        match out.last_mut() {
            Some(s) if s.users + n <= target && s.prefixes.len() < MAX_TERMS => {
                s.prefixes.push(p);
                s.users += n;
            }
            _ => out.push(Slice {
                prefixes: vec![p],
                users: n,
            }),
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The listing URL of one slice.
pub fn slice_url(s: &Slice) -> String {
    let base = "/v1.0/users?$select=id&$expand=manager($select=id)&$top=100";
    if s.prefixes.is_empty() {
        return base.to_owned();
    }
    let filter = s
        .prefixes
        .iter()
        .map(|p| format!("startswith(userPrincipalName,'{}')", p.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" or ");
    format!("{base}&$filter={}", encode(&filter))
}

/// User id → manager id (`None`: the user has no manager), for every user the slices returned.
#[derive(Debug, Default)]
pub struct Managers {
    of: HashMap<String, Option<String>>,
    /// Users in the largest slice (the longest chain is this ÷ 100 pages).
    pub largest_slice: usize,
    /// Slices read.
    pub slices: usize,
}

impl Managers {
    /// Reads the managers of every user, slices concurrently (the client bounds requests in flight).
    pub async fn load(g: &Client, upns: &[String]) -> Result<Managers, EntraError> {
        let slices = plan(upns, target(upns.len()));
        // Each slice keeps only (id, manager) of its pages, never the pages themselves.
        let lists = futures::future::try_join_all(slices.iter().map(|s| async move {
            let mut out: Vec<(String, Option<String>)> = Vec::new();
            let mut url = slice_url(s);
            loop {
                let page = g.get_page(&url, false).await?;
                out.extend(
                    page.items
                        .iter()
                        .filter_map(|v| Some((v["id"].as_str()?.to_owned(), manager_of(v)))),
                );
                match page.next_link {
                    Some(n) => url = n,
                    None => return Ok::<_, GraphError>(out),
                }
            }
        }))
        .await?;
        let mut of = HashMap::with_capacity(upns.len());
        of.extend(lists.into_iter().flatten());
        tracing::info!(
            slices = slices.len(),
            users = of.len(),
            "managers read in concurrent slices"
        );
        Ok(Managers {
            of,
            largest_slice: slices.iter().map(|s| s.users).max().unwrap_or(0),
            slices: slices.len(),
        })
    }

    /// The manager of each of `ids`, in order: from the slices, or read directly for users they missed.
    pub async fn of(&self, g: &Client, ids: &[&str]) -> Result<Vec<Option<String>>, EntraError> {
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !self.of.contains_key(*id))
            .collect();
        let mut direct: HashMap<&str, Option<String>> = HashMap::new();
        if !missing.is_empty() {
            tracing::debug!(users = missing.len(), "managers read one by one");
            let paths: Vec<String> = missing
                .iter()
                .map(|id| format!("/v1.0/users/{id}/manager?$select=id"))
                .collect();
            for (id, r) in missing.iter().zip(g.batch_get(&paths).await) {
                match r {
                    Ok(v) => direct.insert(id, v["id"].as_str().map(str::to_owned)),
                    Err(GraphError::NotFound { .. }) => direct.insert(id, None),
                    Err(e) => return Err(e.into()),
                };
            }
        }
        Ok(ids
            .iter()
            .map(|id| match self.of.get(*id) {
                Some(m) => m.clone(),
                None => direct.get(id).cloned().flatten(),
            })
            .collect())
    }
}

/// The manager id of a user listed with `$expand=manager($select=id)`.
pub fn manager_of(v: &Value) -> Option<String> {
    v.pointer("/manager/id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        let first = [
            "anna", "aaron", "sam", "sara", "steve", "bob", "zoe", "o'neil", "émile",
        ];
        (0..n)
            .map(|i| format!("{}.{i}@contoso.com", first[i % first.len()]))
            .collect()
    }

    fn covered(s: &[Slice], upn: &str) -> usize {
        let l = upn.to_lowercase();
        s.iter()
            .filter(|x| x.prefixes.is_empty() || x.prefixes.iter().any(|p| l.starts_with(p.as_str())))
            .count()
    }

    #[test]
    fn slices_cover_every_name_once_and_stay_small() {
        let upns = names(20_000);
        let t = target(upns.len());
        assert_eq!(t, 1_667);
        let s = plan(&upns, t);
        for u in &upns {
            assert_eq!(covered(&s, u), 1, "{u}");
        }
        assert_eq!(s.iter().map(|x| x.users).sum::<usize>(), upns.len());
        assert!(
            s.iter().all(|x| x.users <= t && x.prefixes.len() <= MAX_TERMS),
            "{s:?}"
        );
        assert!(s.len() <= 2 * MAX_SLICES, "{} slices", s.len());
    }

    #[test]
    fn a_small_tenant_is_one_unfiltered_slice() {
        let s = plan(&names(900), target(900));
        assert_eq!(s.len(), 1);
        assert!(s[0].prefixes.is_empty());
        assert_eq!(
            slice_url(&s[0]),
            "/v1.0/users?$select=id&$expand=manager($select=id)&$top=100"
        );
    }

    #[test]
    fn filters_quote_and_encode_prefixes() {
        let s = Slice {
            prefixes: vec!["o'n".into(), "é".into()],
            users: 2,
        };
        assert_eq!(
            slice_url(&s),
            "/v1.0/users?$select=id&$expand=manager($select=id)&$top=100&$filter=startswith%28userPrincipalName%2C%27o%27%27n%27%29%20or%20startswith%28userPrincipalName%2C%27%C3%A9%27%29"
        );
    }

    #[test]
    fn identical_names_beyond_the_longest_prefix_stay_in_one_slice() {
        let upns: Vec<String> = (0..3_000).map(|_| "same@x.com".to_owned()).collect();
        let s = plan(&upns, 1_000);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].users, 3_000);
    }
}
