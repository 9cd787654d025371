//! A whole object read generically (as a [`serde_json::Value`]) from YAML, for the kinds
//! whose fields their own module reads (cluster-scoped policies, Calico, Cilium, nodes).
//!
//! Unlike `serde_json::Value`'s own `Deserialize`, an integer beyond 64 bits
//! (`priority: 99999999999999999999999`, which YAML hands over as a 128-bit integer) does
//! not fail the whole object: it becomes the nearest float, as JSON input does, and the
//! module reading the field reports it by name and with the allowed range.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A [`Value`] that accepts integers of any size.
pub(super) struct LenientValue(pub Value);

impl<'de> Deserialize<'de> for LenientValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(LenientValue)
    }
}

/// A float that stands for an integer too large for 64 bits (always finite: every
/// 128-bit integer is below `f64::MAX`).
fn wide(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(match i64::try_from(v) {
            Ok(n) => Value::Number(n.into()),
            Err(_) => wide(v as f64),
        })
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(match u64::try_from(v) {
            Ok(n) => Value::Number(n.into()),
            Err(_) => wide(v as f64),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // `.inf` and `.nan` have no JSON form: null, as serde_json makes them.
        Ok(wide(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(LenientValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((k, LenientValue(v))) = map.next_entry::<String, LenientValue>()? {
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> Value {
        serde_norway::from_str::<LenientValue>(yaml).unwrap().0
    }

    #[test]
    fn integers_beyond_64_bits_become_floats_instead_of_failing() {
        // serde_json::Value alone refuses them, which lost the whole object.
        assert!(serde_norway::from_str::<Value>("a: 99999999999999999999999").is_err());
        let v = read("a: 99999999999999999999999\nb: -99999999999999999999999\nc: [1, x]");
        assert_eq!(v["a"].as_f64(), Some(1e23));
        assert_eq!(v["b"].as_f64(), Some(-1e23));
        assert_eq!(v["c"], serde_json::json!([1, "x"]));
    }

    #[test]
    fn reads_like_serde_json_value_otherwise() {
        let text = "a: {b: [1, -2, 3.5, true, null, ~, \"s\"]}\nc: 18446744073709551615\n";
        assert_eq!(
            read(text),
            serde_norway::from_str::<Value>(text).unwrap(),
            "same value as serde_json::Value for input it accepts"
        );
    }
}
