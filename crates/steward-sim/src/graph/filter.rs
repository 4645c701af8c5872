//! OData `$filter` as Graph accepts it from connectors: `eq ne gt ge lt le`, `and or not`, `in (…)`,
//! `startswith`/`endswith`, lambdas (`groupTypes/any(c:c eq 'Unified')`), evaluated against the JSON form
//! of an object. String comparisons ignore case, as Graph's do. `needs_advanced` tells whether the
//! expression uses operators Graph only allows as an advanced query (ConsistencyLevel: eventual).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(Operand, Op, Operand),
    In(Operand, Vec<Value>),
    StartsWith(Operand, String),
    EndsWith(Operand, String),
    /// `path/any(var: expr)`; `expr` refers to the element as `var` or `var/prop`.
    Any(String, String, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(String),
    Lit(Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Colon,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' | '\t' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            ':' => {
                out.push(Tok::Colon);
                i += 1
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match cs.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if cs.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            v.push(*ch);
                            i += 1
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let start = i;
                while i < cs.len() && !matches!(cs[i], ' ' | '\t' | '(' | ')' | ',' | '\'') {
                    // A colon ends a word only inside a lambda (`c:c`); times like 12:00:00Z keep it.
                    if cs[i] == ':' && !cs[start].is_ascii_digit() {
                        break;
                    }
                    i += 1;
                }
                out.push(Tok::Word(cs[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self) -> Option<&str> {
        match self.toks.get(self.pos) {
            Some(Tok::Word(w)) => Some(w.as_str()),
            _ => None,
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, t: Tok) -> Result<(), String> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            other => Err(format!("expected {t:?}, found {other:?}")),
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek_word().is_some_and(|w| w.eq_ignore_ascii_case("or")) {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while self.peek_word().is_some_and(|w| w.eq_ignore_ascii_case("and")) {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_word().is_some_and(|w| w.eq_ignore_ascii_case("not")) {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.toks.get(self.pos) == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            self.expect(Tok::RParen)?;
            return Ok(e);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let Some(Tok::Word(w)) = self.next() else {
            return Err("expected a property or function".into());
        };
        let lower = w.to_ascii_lowercase();
        if (lower == "startswith" || lower == "endswith") && self.toks.get(self.pos) == Some(&Tok::LParen) {
            self.pos += 1;
            let Some(Tok::Word(path)) = self.next() else {
                return Err(format!("{w}: expected a property"));
            };
            self.expect(Tok::Comma)?;
            let Some(Tok::Str(v)) = self.next() else {
                return Err(format!("{w}: expected a string"));
            };
            self.expect(Tok::RParen)?;
            return Ok(if lower == "startswith" {
                Expr::StartsWith(Operand::Path(path), v)
            } else {
                Expr::EndsWith(Operand::Path(path), v)
            });
        }
        if let Some(base) = w.strip_suffix("/any").or_else(|| w.strip_suffix("/all")) {
            self.expect(Tok::LParen)?;
            let Some(Tok::Word(var)) = self.next() else {
                return Err("lambda: expected a variable".into());
            };
            self.expect(Tok::Colon)?;
            let body = self.or()?;
            self.expect(Tok::RParen)?;
            return Ok(Expr::Any(base.to_string(), var, Box::new(body)));
        }
        let left = Operand::Path(w);
        let Some(Tok::Word(op)) = self.next() else {
            return Err("expected an operator".into());
        };
        let op = match op.to_ascii_lowercase().as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "in" => {
                self.expect(Tok::LParen)?;
                let mut vals = Vec::new();
                loop {
                    vals.push(self.literal()?);
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::RParen) => break,
                        other => return Err(format!("in: expected , or ) but found {other:?}")),
                    }
                }
                return Ok(Expr::In(left, vals));
            }
            other => return Err(format!("unknown operator '{other}'")),
        };
        let right = Operand::Lit(self.literal()?);
        Ok(Expr::Cmp(left, op, right))
    }

    fn literal(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Value::String(s)),
            Some(Tok::Word(w)) => Ok(match w.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                _ => match w.parse::<f64>() {
                    Ok(n) if !w.contains('-') || w.starts_with('-') => serde_json::json!(n),
                    // GUIDs and timestamps are written bare.
                    _ => Value::String(w),
                },
            }),
            other => Err(format!("expected a literal, found {other:?}")),
        }
    }
}

pub fn parse(s: &str) -> Result<Expr, String> {
    let toks = lex(s)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected text after position {}", p.pos));
    }
    Ok(e)
}

impl Expr {
    /// Operators Graph accepts only with `ConsistencyLevel: eventual` and `$count=true`.
    pub fn needs_advanced(&self) -> bool {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => a.needs_advanced() || b.needs_advanced(),
            Expr::Not(_) | Expr::EndsWith(..) => true,
            Expr::Cmp(_, Op::Ne, _) => true,
            Expr::Cmp(..) | Expr::In(..) | Expr::StartsWith(..) => false,
            Expr::Any(_, _, e) => e.needs_advanced(),
        }
    }

    /// Property paths the filter reads (top-level names).
    pub fn properties(&self, out: &mut Vec<String>) {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.properties(out);
                b.properties(out);
            }
            Expr::Not(a) => a.properties(out),
            Expr::Cmp(Operand::Path(p), _, _)
            | Expr::In(Operand::Path(p), _)
            | Expr::StartsWith(Operand::Path(p), _)
            | Expr::EndsWith(Operand::Path(p), _)
            | Expr::Any(p, _, _) => out.push(p.split('/').next().unwrap_or(p).to_string()),
            _ => {}
        }
    }

    pub fn eval(&self, obj: &Value) -> bool {
        self.eval_in(obj, None)
    }

    fn eval_in(&self, obj: &Value, var: Option<(&str, &Value)>) -> bool {
        match self {
            Expr::And(a, b) => a.eval_in(obj, var) && b.eval_in(obj, var),
            Expr::Or(a, b) => a.eval_in(obj, var) || b.eval_in(obj, var),
            Expr::Not(a) => !a.eval_in(obj, var),
            Expr::Cmp(l, op, r) => compare(&resolve(l, obj, var), *op, &resolve(r, obj, var)),
            Expr::In(l, vals) => {
                let v = resolve(l, obj, var);
                vals.iter().any(|x| compare(&v, Op::Eq, x))
            }
            Expr::StartsWith(l, s) => resolve(l, obj, var)
                .as_str()
                .is_some_and(|v| v.to_lowercase().starts_with(&s.to_lowercase())),
            Expr::EndsWith(l, s) => resolve(l, obj, var)
                .as_str()
                .is_some_and(|v| v.to_lowercase().ends_with(&s.to_lowercase())),
            Expr::Any(path, name, body) => match lookup(obj, path) {
                Value::Array(items) => items.iter().any(|it| body.eval_in(obj, Some((name, it)))),
                _ => false,
            },
        }
    }
}

fn lookup(obj: &Value, path: &str) -> Value {
    let mut cur = obj;
    for seg in path.split('/') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return Value::Null,
        }
    }
    cur.clone()
}

fn resolve(o: &Operand, obj: &Value, var: Option<(&str, &Value)>) -> Value {
    match o {
        Operand::Lit(v) => v.clone(),
        Operand::Path(p) => {
            if let Some((name, val)) = var {
                if p == name {
                    return val.clone();
                }
                if let Some(rest) = p.strip_prefix(name).and_then(|r| r.strip_prefix('/')) {
                    return lookup(val, rest);
                }
            }
            lookup(obj, p)
        }
    }
}

fn compare(a: &Value, op: Op, b: &Value) -> bool {
    use std::cmp::Ordering;
    let ord = match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().zip(y.as_f64()).and_then(|(x, y)| x.partial_cmp(&y))
        }
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    };
    match (op, ord) {
        (Op::Eq, o) => o == Some(Ordering::Equal),
        (Op::Ne, o) => o != Some(Ordering::Equal),
        (Op::Gt, Some(o)) => o == Ordering::Greater,
        (Op::Ge, Some(o)) => o != Ordering::Less,
        (Op::Lt, Some(o)) => o == Ordering::Less,
        (Op::Le, Some(o)) => o != Ordering::Greater,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_connector_filters() {
        let u = json!({"id": "AB-1", "userType": "Guest", "accountEnabled": false, "displayName": "Ada Lovelace",
            "groupTypes": ["Unified"], "assignedLicenses": [{"skuId": "s1"}], "createdDateTime": "2021-01-01T00:00:00Z"});
        let t = |f: &str| parse(f).unwrap().eval(&u);
        assert!(t("userType eq 'guest'"));
        assert!(t("accountEnabled eq false"));
        assert!(t("startswith(displayName,'ada')"));
        assert!(t("groupTypes/any(c:c eq 'Unified')"));
        assert!(t("assignedLicenses/any(x:x/skuId eq s1)"));
        assert!(t("id in ('x', 'ab-1')"));
        assert!(t("not (userType eq 'Member') and accountEnabled eq false"));
        assert!(t("userType eq 'Member' or accountEnabled ne true"));
        assert!(t("createdDateTime ge 2020-06-01T00:00:00Z"));
        assert!(!t("endswith(displayName,'x')"));
        assert!(parse("userType ne 'Member'").unwrap().needs_advanced());
        assert!(!parse("userType eq 'Member'").unwrap().needs_advanced());
    }

    #[test]
    fn rejects_malformed_filters() {
        for f in [
            "",
            "userType",
            "userType eq",
            "userType zz 'a'",
            "startswith(displayName",
            "(a eq 'b'",
            "a eq 'b' c",
        ] {
            assert!(parse(f).is_err(), "{f}");
        }
    }
}
