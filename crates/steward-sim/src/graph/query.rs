//! OData query options as Graph reads them (`$select $top $filter $count $expand $search $orderby
//! $skiptoken`), the checks Graph makes on them, `$select` projection and opaque page tokens.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::error::GraphError;
use super::filter::{self, Expr};

#[derive(Debug, Default, Clone)]
pub struct Query {
    /// The query string as sent, minus `$skiptoken` and `$deltatoken` (kept for nextLinks).
    pub keep: Vec<(String, String)>,
    pub select: Option<Vec<String>>,
    pub top: Option<usize>,
    pub filter: Option<Expr>,
    pub count: bool,
    pub expand: Vec<String>,
    pub search: Option<(String, String)>,
    pub orderby: Option<(String, bool)>,
    pub skiptoken: Option<String>,
    pub deltatoken: Option<String>,
    /// `ConsistencyLevel: eventual` was sent.
    pub eventual: bool,
    /// `Prefer: odata.maxpagesize=N`.
    pub max_page_size: Option<usize>,
}

impl Query {
    pub fn parse(raw_query: &str, headers: &HeaderMap) -> Result<Query, GraphError> {
        let mut q = Query {
            eventual: headers
                .get("consistencylevel")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("eventual")),
            max_page_size: headers
                .get("prefer")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.split(',')
                        .find_map(|p| p.trim().strip_prefix("odata.maxpagesize="))
                })
                .and_then(|n| n.parse().ok()),
            ..Query::default()
        };
        for (k, v) in url::form_urlencoded::parse(raw_query.as_bytes()) {
            let key = k.to_string();
            let val = v.to_string();
            let name = key.trim_start_matches('$').to_ascii_lowercase();
            match name.as_str() {
                "skiptoken" => {
                    q.skiptoken = Some(val);
                    continue;
                }
                "deltatoken" => {
                    q.deltatoken = Some(val);
                    continue;
                }
                "select" => {
                    q.select = Some(
                        val.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    )
                }
                "top" => {
                    let n: i64 = val.parse().map_err(|_| {
                        GraphError::bad_request(format!(
                            "Invalid page size specified: '{val}'. Must be between 1 and 999 inclusive."
                        ))
                    })?;
                    if !(1..=999).contains(&n) {
                        return Err(GraphError::bad_request(format!(
                            "Invalid page size specified: '{n}'. Must be between 1 and 999 inclusive."
                        )));
                    }
                    q.top = Some(n as usize);
                }
                "filter" => {
                    q.filter = Some(
                        filter::parse(&val)
                            .map_err(|e| GraphError::bad_request(format!("Invalid filter clause: {e}")))?,
                    )
                }
                "count" => q.count = val.eq_ignore_ascii_case("true"),
                "expand" => {
                    q.expand = val
                        .split(',')
                        .map(|s| s.split('(').next().unwrap_or(s).trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                }
                "search" => {
                    let inner = val.trim().trim_matches('"');
                    let Some((p, v)) = inner.split_once(':') else {
                        return Err(GraphError::bad_request(
                            "Syntax error: $search must look like \"property:value\".",
                        ));
                    };
                    q.search = Some((p.to_string(), v.to_lowercase()));
                }
                "orderby" => {
                    let mut parts = val.split_whitespace();
                    let prop = parts.next().unwrap_or_default().to_string();
                    let desc = parts.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
                    q.orderby = Some((prop, desc));
                }
                _ => {}
            }
            q.keep.push((key, val));
        }
        let needs_advanced = q.search.is_some()
            || q.filter.as_ref().is_some_and(Expr::needs_advanced)
            || (q.orderby.is_some() && q.filter.is_some());
        if needs_advanced && !(q.eventual && (q.count || q.search.is_some())) {
            return Err(GraphError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "Request_UnsupportedQuery",
                "Unsupported Query. This query needs the ConsistencyLevel: eventual header and $count=true (an advanced query).",
            ));
        }
        if q.count && !q.eventual {
            return Err(GraphError::bad_request(
                "$count is not currently supported without the ConsistencyLevel: eventual header.",
            ));
        }
        Ok(q)
    }

    pub fn page_size(&self, default: usize) -> usize {
        self.top
            .or(self.max_page_size.map(|n| n.clamp(1, 999)))
            .unwrap_or(default)
    }

    pub fn selects(&self, prop: &str) -> bool {
        self.select
            .as_ref()
            .is_some_and(|s| s.iter().any(|p| p.eq_ignore_ascii_case(prop)))
    }

    /// Checks every `$select`ed property exists on the type (given its full property list).
    pub fn check_select(
        &self,
        full: &Map<String, Value>,
        type_name: &str,
        extra: &[&str],
    ) -> Result<(), GraphError> {
        if let Some(sel) = &self.select {
            for p in sel {
                if p == "*" || p.starts_with('@') || extra.iter().any(|e| e.eq_ignore_ascii_case(p)) {
                    continue;
                }
                if !full.keys().any(|k| k.eq_ignore_ascii_case(p)) {
                    return Err(GraphError::bad_request(format!(
                        "Could not find a property named '{p}' on type 'microsoft.graph.{type_name}'."
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies `$select` (or the type's default set) to a full object.
    pub fn project(&self, mut full: Map<String, Value>, default: Option<&[&str]>) -> Map<String, Value> {
        // Expanded navigation properties are returned whatever `$select` says (OData; Graph does so).
        let expanded = |k: &str| self.expand.iter().any(|e| e.eq_ignore_ascii_case(k));
        let keep = |k: &str, list: &[String]| {
            k.starts_with('@') || expanded(k) || list.iter().any(|p| p == "*" || p.eq_ignore_ascii_case(k))
        };
        match (&self.select, default) {
            (Some(sel), _) => {
                full.retain(|k, _| keep(k, sel) || k.ends_with("@delta"));
                full
            }
            (None, Some(def)) => {
                full.retain(|k, _| {
                    k.starts_with('@') || expanded(k) || def.contains(&k.as_str()) || k.ends_with("@delta")
                });
                full
            }
            (None, None) => full,
        }
    }

    /// Whether an object matches `$filter` and `$search`.
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(f) = &self.filter
            && !f.eval(obj)
        {
            return false;
        }
        if let Some((prop, needle)) = &self.search {
            let hay = obj
                .get(prop.as_str())
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_lowercase();
            // Graph's $search matches word prefixes.
            if !hay
                .split(|c: char| !c.is_alphanumeric() && c != '@' && c != '.')
                .any(|w| w.starts_with(needle.as_str()))
                && !hay.starts_with(needle.as_str())
            {
                return false;
            }
        }
        true
    }

    /// The nextLink for a page that stops at `token`.
    pub fn next_link(&self, base_path: &str, token: &str, param: &str) -> String {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.keep {
            ser.append_pair(k, v);
        }
        ser.append_pair(param, token);
        format!("{base_path}?{}", ser.finish())
    }
}

/// An opaque page token binding an offset to the request it belongs to.
pub fn encode_token(kind: &str, parts: &[u64]) -> String {
    let text = format!(
        "{kind}:{}",
        parts.iter().map(u64::to_string).collect::<Vec<_>>().join(":")
    );
    format!("RFNwd{}", URL_SAFE_NO_PAD.encode(text))
}

pub fn decode_token(kind: &str, token: &str) -> Result<Vec<u64>, GraphError> {
    let bad = || {
        GraphError::bad_request(
            "Invalid paging token (skiptoken/deltatoken). Follow the @odata.nextLink exactly as returned.",
        )
    };
    let body = token.strip_prefix("RFNwd").ok_or_else(bad)?;
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?).map_err(|_| bad())?;
    let rest = text
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(bad)?;
    rest.split(':')
        .map(|p| p.parse::<u64>().map_err(|_| bad()))
        .collect()
}

/// A short hash binding a page token to the query that made it (filter, search and order).
pub fn query_hash(path: &str, q: &Query) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&path.to_lowercase());
    for (k, v) in &q.keep {
        let k = k.to_lowercase();
        if k.contains("filter") || k.contains("search") || k.contains("orderby") {
            eat(&k);
            eat(v);
        }
    }
    h & 0xffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_limits() {
        let h = HeaderMap::new();
        assert!(Query::parse("$top=999", &h).is_ok());
        let e = Query::parse("$top=1000", &h).unwrap_err();
        assert_eq!(
            e.message,
            "Invalid page size specified: '1000'. Must be between 1 and 999 inclusive."
        );
        assert!(Query::parse("$top=0", &h).is_err());
        assert!(Query::parse("$top=abc", &h).is_err());
    }

    #[test]
    fn advanced_queries_need_eventual_and_count() {
        let mut h = HeaderMap::new();
        assert!(Query::parse("$filter=userType ne 'Member'", &h).is_err());
        assert!(Query::parse("$count=true", &h).is_err());
        h.insert("ConsistencyLevel", "eventual".parse().unwrap());
        assert!(Query::parse("$filter=userType ne 'Member'", &h).is_err());
        assert!(Query::parse("$filter=userType ne 'Member'&$count=true", &h).is_ok());
        assert!(Query::parse("$search=\"displayName:ada\"", &h).is_ok());
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let t = encode_token("p", &[5, 77]);
        assert_eq!(decode_token("p", &t).unwrap(), vec![5, 77]);
        assert!(decode_token("d", &t).is_err());
        assert!(decode_token("p", "garbage").is_err());
        assert!(decode_token("p", "RFNwd!!!").is_err());
    }
}
