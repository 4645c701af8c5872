//! Profiles: the `google.protobuf.Struct` a resource and its trait carry, built from JSON or key/value
//! pairs. Struct fields live in a `BTreeMap`, so a profile always encodes in key order.

use prost_types::{ListValue, Struct, Value, value::Kind};

/// Converts a JSON value to a protobuf `Value` (numbers become doubles, as in protojson).
pub fn value_from_json(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(value_from_json).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(struct_from_json_map(o)),
    };
    Value { kind: Some(kind) }
}

/// Converts a JSON object to a `Struct`.
pub fn struct_from_json_map(o: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), value_from_json(v))).collect(),
    }
}

/// Converts a JSON value to a `Struct`; anything other than an object gives an empty struct.
pub fn struct_from_json(v: &serde_json::Value) -> Struct {
    match v {
        serde_json::Value::Object(o) => struct_from_json_map(o),
        _ => Struct::default(),
    }
}

/// Converts a protobuf `Value` to JSON (for `--json` output and tests).
pub fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// Converts a `Struct` to a JSON object.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

/// A `Struct` of string values, e.g. `strings([("first_name", "Ada"), ("user_id", "7")])`.
pub fn strings<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Struct {
    Struct {
        fields: pairs
            .into_iter()
            .map(|(k, v)| {
                (
                    k.into(),
                    Value {
                        kind: Some(Kind::StringValue(v.into())),
                    },
                )
            })
            .collect(),
    }
}

/// The string value of `key`, if present and a string.
pub fn get_str<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let j = serde_json::json!({"b": [1.5, "x", null, true], "a": {"c": "d"}});
        let s = struct_from_json(&j);
        assert_eq!(struct_to_json(&s), j);
        assert_eq!(s.fields.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(get_str(&strings([("k", "v")]), "k"), Some("v"));
    }
}
