//! What `nft -j` answers, split into its objects; each reader then takes the objects it
//! knows with the `nftables` crate's schema types.

use serde_json::Value;

use super::{FAMILY, TABLE};

/// Why an `nft -j` answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftParseError {
    /// Not JSON.
    #[error("nft's answer is not JSON: {0}")]
    Json(String),
    /// JSON without the `nftables` array.
    #[error("nft's answer has no `nftables` array")]
    Shape,
}

/// The items of the `nftables` array.
pub(crate) fn objects(text: &str) -> Result<Vec<Value>, NftParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| NftParseError::Json(e.to_string()))?;
    match v {
        Value::Object(mut m) => match m.remove("nftables") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(NftParseError::Shape),
        },
        _ => Err(NftParseError::Shape),
    }
}

/// An item's one key and its body (`{"set": {...}}` → `("set", {...})`).
pub(crate) fn single(item: Value) -> Option<(String, Value)> {
    match item {
        Value::Object(m) if m.len() == 1 => m.into_iter().next(),
        _ => None,
    }
}

/// Whether an object belongs to `inet imdsguard` (`table_key` is `name` for the table
/// itself, `table` for what it holds).
pub(crate) fn ours(body: &Value, table_key: &str) -> bool {
    body.get("family").and_then(Value::as_str) == Some(FAMILY)
        && body.get(table_key).and_then(Value::as_str) == Some(TABLE)
}
