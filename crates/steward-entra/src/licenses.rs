//! Licenses: subscribed SKUs with their seats in the profile, and an `assigned` entitlement whose grants
//! come from users' `assignedLicenses` (read once, in the directory index).

use serde_json::{Map, Value, json};
use steward_model::pb::entitlement::PurposeValue;
use steward_model::{Entitlement, Resource, builders, profile};

use crate::types;

/// A license resource from a subscribed SKU (id = skuId).
pub fn license(v: &Value) -> Option<Resource> {
    let sku = v.get("skuId")?.as_str()?;
    let part = v["skuPartNumber"].as_str().unwrap_or(sku);
    let mut p = Map::new();
    p.insert("sku_id".into(), json!(sku));
    p.insert("sku_part_number".into(), json!(part));
    p.insert("capability_status".into(), v["capabilityStatus"].clone());
    p.insert("consumed_units".into(), v["consumedUnits"].clone());
    p.insert(
        "enabled_units".into(),
        v.pointer("/prepaidUnits/enabled").cloned().unwrap_or(Value::Null),
    );
    p.insert(
        "suspended_units".into(),
        v.pointer("/prepaidUnits/suspended")
            .cloned()
            .unwrap_or(Value::Null),
    );
    p.insert(
        "warning_units".into(),
        v.pointer("/prepaidUnits/warning").cloned().unwrap_or(Value::Null),
    );
    p.insert(
        "service_plans".into(),
        json!(
            v["servicePlans"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["servicePlanName"].as_str())
                .collect::<Vec<_>>()
        ),
    );
    Some(
        builders::ResourceBuilder::new(types::LICENSE, sku, part)
            .profile(profile::struct_from_json_map(&p))
            .build(),
    )
}

/// `assigned`.
pub fn entitlements(r: &Resource) -> Vec<Entitlement> {
    let users: Vec<_> = types::by_id(types::USER).into_iter().collect();
    let mut e = builders::entitlement(
        r,
        "assigned",
        &format!("{} license", r.display_name),
        PurposeValue::Assignment,
        &users,
    );
    e.description = format!("Assigned the {} license", r.display_name);
    vec![e]
}
