//! Pure policy logic: validating policies, profiles and rules, matching identities against attributes,
//! choosing a policy's steps for a request. No storage and no clock here.

use std::collections::{BTreeMap, BTreeSet};

use super::types::*;
use crate::error::{PlatformError, Result};
use crate::model::Identity;

/// Identity attributes that profiles and conditions may test.
pub const ATTRIBUTES: &[&str] = &["department", "job_title", "kind", "status", "upn_domain"];

fn attribute(i: &Identity, name: &str) -> Option<String> {
    match name {
        "department" => i.department.clone(),
        "job_title" => i.job_title.clone(),
        "kind" => Some(i.kind.clone()),
        "status" => Some(i.status.clone()),
        "upn_domain" => i
            .upn
            .as_deref()
            .and_then(|u| u.rsplit_once('@'))
            .map(|(_, d)| d.to_owned()),
        _ => None,
    }
}

/// Whether every named attribute of `i` equals one of its accepted values (case-insensitive).
pub fn attributes_match(attrs: &BTreeMap<String, Vec<String>>, i: &Identity) -> bool {
    attrs
        .iter()
        .all(|(k, vals)| attribute(i, k).is_some_and(|v| vals.iter().any(|x| x.eq_ignore_ascii_case(&v))))
}

fn check_attributes(attrs: &BTreeMap<String, Vec<String>>, what: &str) -> Result<()> {
    for (k, v) in attrs {
        if !ATTRIBUTES.contains(&k.as_str()) {
            return Err(PlatformError::Invalid(format!(
                "{what}: unknown attribute {k:?}; use one of {}",
                ATTRIBUTES.join(", ")
            )));
        }
        if v.is_empty() {
            return Err(PlatformError::Invalid(format!(
                "{what}: attribute {k:?} needs at least one value"
            )));
        }
    }
    Ok(())
}

/// `group:<id>:member` for a group given by id or by that entitlement id.
pub fn group_entitlement(g: &str) -> String {
    if g.starts_with("group:") {
        g.to_owned()
    } else {
        format!("group:{g}:member")
    }
}

/// Checks a profile.
pub fn validate_profile(c: &CreateProfile) -> Result<()> {
    if c.name.trim().is_empty() {
        return Err(PlatformError::Invalid("an access profile needs a name".into()));
    }
    match &c.spec {
        ProfileSpec::Everyone => Err(PlatformError::Invalid(
            "the everyone profile is built in (id \"everyone\"); define profiles of kind group or attribute"
                .into(),
        )),
        ProfileSpec::Group { group } if group.trim().is_empty() => Err(PlatformError::Invalid(
            "a group profile needs \"group\": the group's id or group:<id>:member".into(),
        )),
        ProfileSpec::Group { .. } => Ok(()),
        ProfileSpec::Attribute { attributes } if attributes.is_empty() => Err(PlatformError::Invalid(
            "an attribute profile needs \"attributes\", e.g. {\"department\": [\"Sales\"]}".into(),
        )),
        ProfileSpec::Attribute { attributes } => check_attributes(attributes, "profile"),
    }
}

fn validate_steps(steps: &[Step], at: &str) -> Result<()> {
    if steps.is_empty() {
        return Err(PlatformError::Invalid(format!("{at}: needs at least one step")));
    }
    for (n, s) in steps.iter().enumerate() {
        let here = format!("{at} step {}", n + 1);
        match s.kind {
            StepKind::Identities if s.identities.is_empty() => {
                return Err(PlatformError::Invalid(format!(
                    "{here}: kind identities needs \"identities\": [ids or UPNs]"
                )));
            }
            StepKind::Group if s.group.as_deref().is_none_or(|g| g.trim().is_empty()) => {
                return Err(PlatformError::Invalid(format!(
                    "{here}: kind group needs \"group\": the group's id"
                )));
            }
            StepKind::AutoApprove if steps.len() > 1 => {
                return Err(PlatformError::Invalid(format!(
                    "{here}: auto_approve must be the only step"
                )));
            }
            _ => {}
        }
        if s.kind == StepKind::AutoApprove && (s.timeout_secs.is_some() || s.on_timeout.is_some()) {
            return Err(PlatformError::Invalid(format!(
                "{here}: auto_approve decides at once; it takes no timeout_secs or on_timeout"
            )));
        }
        if let Some(t) = s.timeout_secs
            && t < 60
        {
            return Err(PlatformError::Invalid(format!(
                "{here}: timeout_secs is in seconds and must be at least 60, not {t}"
            )));
        }
        if s.on_timeout.is_some() && s.timeout_secs.is_none() {
            return Err(PlatformError::Invalid(format!(
                "{here}: on_timeout needs timeout_secs (how long the step waits)"
            )));
        }
        if s.on_timeout == Some(OnTimeout::Escalate) && s.fallback.is_empty() {
            return Err(PlatformError::Invalid(format!(
                "{here}: on_timeout escalate needs \"fallback\": the approvers it escalates to"
            )));
        }
    }
    Ok(())
}

/// Checks a policy.
pub fn validate_policy(p: &PolicySpec) -> Result<()> {
    if p.name.trim().is_empty() {
        return Err(PlatformError::Invalid("a policy needs a name".into()));
    }
    if p.rules.is_empty() && p.steps.is_empty() {
        return Err(PlatformError::Invalid(
            "a policy needs \"steps\" (e.g. [{\"kind\": \"auto_approve\"}]) or \"rules\"".into(),
        ));
    }
    if !p.steps.is_empty() {
        validate_steps(&p.steps, "steps")?;
    }
    for (n, r) in p.rules.iter().enumerate() {
        validate_steps(&r.steps, &format!("rule {}", n + 1))?;
        check_attributes(&r.when.requester, &format!("rule {}", n + 1))?;
        for k in &r.when.entitlement_kinds {
            check_kind(k)?;
        }
    }
    if let Some(d) = p.max_duration
        && d <= 0
    {
        return Err(PlatformError::Invalid(
            "max_duration is in seconds and must be positive".into(),
        ));
    }
    Ok(())
}

/// App entitlement kinds of an app's own entitlements; an attached connector adds its resource types
/// (`role`, `group`, …) as further kinds.
pub const KINDS: &[&str] = &["access", "app_role", "virtual_role"];

/// A kind in a policy condition: one of [`KINDS`] or a connector resource type (lower case, digits, `_`).
fn check_kind(k: &str) -> Result<()> {
    let resource_type = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if KINDS.contains(&k) || resource_type {
        Ok(())
    } else {
        Err(PlatformError::Invalid(format!(
            "unknown entitlement kind {k:?}; use one of {} or a connector's resource type such as role",
            KINDS.join(", ")
        )))
    }
}

/// Checks a rule (its profiles and policy are resolved by the caller); `kinds` are the kinds the app's
/// entitlements have besides [`KINDS`] (its attached connectors' resource types).
pub fn validate_rule(r: &RuleSpec, kinds: &BTreeSet<String>) -> Result<()> {
    if r.resource_types.is_empty() && r.entitlements.is_empty() {
        return Err(PlatformError::Invalid(
            "an entitlement rule needs \"resource_types\" (access, app_role, virtual_role, or an attached connector's resource types) or \"entitlements\" (app entitlement ids)".into(),
        ));
    }
    for k in &r.resource_types {
        if !KINDS.contains(&k.as_str()) && !kinds.contains(k) {
            let mut all: Vec<&str> = KINDS.to_vec();
            all.extend(kinds.iter().map(String::as_str));
            return Err(PlatformError::Invalid(format!(
                "unknown entitlement kind {k:?} for this app; use one of {}",
                all.join(", ")
            )));
        }
    }
    if r.access_profiles.is_empty() {
        return Err(PlatformError::Invalid(
            "an entitlement rule needs \"access_profiles\" (e.g. [\"everyone\"])".into(),
        ));
    }
    if let Some(d) = r.max_duration
        && d <= 0
    {
        return Err(PlatformError::Invalid(
            "max_duration is in seconds and must be positive".into(),
        ));
    }
    Ok(())
}

/// The step's fallback approvers who may decide this request (the requester only when the policy allows
/// self-approval), sorted and without repeats: used when a step finds nobody and when it is escalated.
pub fn fallback_approvers(step: &Step, requester: &str, allow_self_approval: bool) -> Vec<String> {
    let mut ids: Vec<String> = step
        .fallback
        .iter()
        .filter(|i| allow_self_approval || i.as_str() != requester)
        .cloned()
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Whether a rule covers an app entitlement.
pub fn rule_covers(r: &RuleSpec, entitlement: &str, kind: &str) -> bool {
    r.enabled
        && (r.entitlements.iter().any(|e| e == entitlement) || r.resource_types.iter().any(|k| k == kind))
}

/// The longest grant a rule and its policy allow (None: permanent allowed).
pub fn max_duration(rule: &RuleSpec, policy: &PolicySpec) -> Option<i64> {
    match (rule.max_duration, policy.max_duration) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The steps a policy chooses for a request (None: no rule matches and there are no default steps).
pub fn choose_steps<'a>(
    p: &'a PolicySpec,
    requester: &Identity,
    entitlement: &str,
    kind: &str,
    duration: Option<i64>,
) -> Option<&'a [Step]> {
    for r in &p.rules {
        let w = &r.when;
        let ok = attributes_match(&w.requester, requester)
            && (w.entitlement_kinds.is_empty() || w.entitlement_kinds.iter().any(|k| k == kind))
            && (w.entitlements.is_empty() || w.entitlements.iter().any(|e| e == entitlement))
            && w.duration_over.is_none_or(|o| duration.is_none_or(|d| d > o));
        if ok {
            return Some(&r.steps);
        }
    }
    (!p.steps.is_empty()).then_some(p.steps.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(dept: &str) -> Identity {
        Identity {
            id: "u1".into(),
            kind: "user".into(),
            display_name: "U".into(),
            upn: Some("u@contoso.example".into()),
            email: None,
            department: Some(dept.into()),
            job_title: Some("Engineer".into()),
            manager_id: None,
            status: "enabled".into(),
            connector_id: "c".into(),
        }
    }

    fn step(kind: StepKind) -> Step {
        Step {
            kind,
            mode: StepMode::Any,
            identities: vec![],
            group: None,
            fallback: vec![],
            timeout_secs: None,
            on_timeout: None,
        }
    }

    #[test]
    fn step_timeouts_are_checked() {
        let parse = |steps: &str| -> PolicySpec {
            serde_json::from_str(&format!(r#"{{"name": "p", "steps": {steps}}}"#)).unwrap()
        };
        let ok = parse(
            r#"[{"kind": "manager", "timeout_secs": 86400, "on_timeout": "escalate", "fallback": ["boss"]}]"#,
        );
        validate_policy(&ok).unwrap();
        assert_eq!(ok.steps[0].on_timeout, Some(OnTimeout::Escalate));
        validate_policy(&parse(r#"[{"kind": "manager", "timeout_secs": 3600}]"#)).unwrap();
        for (bad, says) in [
            (r#"[{"kind": "manager", "timeout_secs": 5}]"#, "at least 60"),
            (
                r#"[{"kind": "manager", "on_timeout": "deny"}]"#,
                "needs timeout_secs",
            ),
            (
                r#"[{"kind": "manager", "timeout_secs": 600, "on_timeout": "escalate"}]"#,
                "fallback",
            ),
            (
                r#"[{"kind": "auto_approve", "timeout_secs": 600}]"#,
                "auto_approve",
            ),
        ] {
            let e = validate_policy(&parse(bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(
            serde_json::from_str::<PolicySpec>(
                r#"{"name": "p", "steps": [{"kind": "manager", "timeout_secs": 600, "on_timeout": "later"}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn the_simplest_policy_is_valid_and_auto_approves() {
        let p: PolicySpec =
            serde_json::from_str(r#"{"name": "auto", "steps": [{"kind": "auto_approve"}]}"#).unwrap();
        validate_policy(&p).unwrap();
        assert!(p.revoke_drift);
        let s = choose_steps(&p, &ident("Sales"), "access", "access", Some(60)).unwrap();
        assert_eq!(s[0].kind, StepKind::AutoApprove);
    }

    #[test]
    fn rules_are_ordered_and_conditions_all_apply() {
        let p: PolicySpec = serde_json::from_str(
            r#"{"name": "p", "rules": [
                {"when": {"requester": {"department": ["engineering"]}, "duration_over": 3600}, "steps": [{"kind": "manager"}, {"kind": "app_owner"}]},
                {"when": {"requester": {"department": ["Engineering"]}}, "steps": [{"kind": "auto_approve"}]}
            ], "steps": [{"kind": "manager"}]}"#,
        )
        .unwrap();
        validate_policy(&p).unwrap();
        let eng = ident("Engineering");
        assert_eq!(
            choose_steps(&p, &eng, "e", "access", Some(7200)).unwrap().len(),
            2
        );
        assert_eq!(
            choose_steps(&p, &eng, "e", "access", None).unwrap().len(),
            2,
            "permanent is longer than any"
        );
        assert_eq!(
            choose_steps(&p, &eng, "e", "access", Some(60)).unwrap()[0].kind,
            StepKind::AutoApprove
        );
        assert_eq!(
            choose_steps(&p, &ident("Sales"), "e", "access", Some(60)).unwrap()[0].kind,
            StepKind::Manager
        );
    }

    #[test]
    fn bad_policies_say_what_to_fix() {
        let e = validate_policy(&PolicySpec {
            name: "x".into(),
            description: String::new(),
            rules: vec![],
            steps: vec![step(StepKind::Identities)],
            require_justification: false,
            max_duration: None,
            allow_self_approval: false,
            revoke_drift: true,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("identities"), "{e}");
        let e = serde_json::from_str::<PolicySpec>(r#"{"name": "x", "steps": [{"kind": "boss"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant"), "{e}");
        let mut attrs = BTreeMap::new();
        attrs.insert("shoe_size".to_owned(), vec!["42".to_owned()]);
        let e = validate_profile(&CreateProfile {
            name: "p".into(),
            spec: ProfileSpec::Attribute { attributes: attrs },
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("shoe_size") && e.contains("department"), "{e}");
    }

    #[test]
    fn attribute_matching() {
        let mut attrs = BTreeMap::new();
        attrs.insert("upn_domain".to_owned(), vec!["CONTOSO.example".to_owned()]);
        attrs.insert(
            "department".to_owned(),
            vec!["Sales".to_owned(), "Ops".to_owned()],
        );
        assert!(attributes_match(&attrs, &ident("ops")));
        assert!(!attributes_match(&attrs, &ident("Engineering")));
    }
}
