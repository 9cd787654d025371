//! The start-up taint hand-off: a node pool registered with the taint
//! `imdsguard.io/agent-not-ready:NoSchedule` takes no workload pod until the node's
//! agent has its table in place and removes the taint ([`remove_taint`]).
//!
//! The removal is one JSON patch of the node (`application/json-patch+json`): a `test`
//! of `/spec/taints` against the list as just read, then a `replace` with the same list
//! less the taints of [`STARTUP_TAINT_KEY`] with effect `NoSchedule`. If anything edited
//! the taints in between, the `test` fails (422) and the node is read again, so a
//! concurrent change is never lost; other taints, and other nodes, are never touched.
//! A node without the taint is left alone (no write).

use serde_json::{Value, json};

use crate::Client;

/// The taint's key (any value).
pub const STARTUP_TAINT_KEY: &str = "imdsguard.io/agent-not-ready";
/// The taint's effect; a taint of the same key with another effect is left alone.
pub const STARTUP_TAINT_EFFECT: &str = "NoSchedule";

/// How many times the read-then-patch is tried when the taints keep changing under it.
pub const MAX_ATTEMPTS: usize = 10;

/// What [`remove_taint`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaintOutcome {
    /// The taint was there and is gone: `removed` taints (one unless the list held
    /// duplicates), after `attempts` patches (more than one when the taints changed
    /// concurrently).
    Removed {
        /// Taints removed.
        removed: usize,
        /// Patches sent.
        attempts: usize,
    },
    /// The node has no such taint: nothing written.
    Absent,
}

/// Why the taint could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum TaintError {
    /// The API refused or failed the read or the patch (403: RBAC, `nodes` `get` and
    /// `patch` for this node; 404: no such node).
    #[error("node {node}: {what}: {source}")]
    Api {
        /// The node.
        node: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The taints kept changing between the read and the patch.
    #[error(
        "node {node}: the taints changed under every one of {attempts} patches; trying again later"
    )]
    Contended {
        /// The node.
        node: String,
        /// Patches sent.
        attempts: usize,
    },
    /// A node name that cannot be one.
    #[error("{0:?} is not a node name")]
    BadName(String),
}

/// Whether `taint` (a node's `spec.taints` item, as JSON) is the start-up taint.
pub fn is_startup_taint(taint: &Value) -> bool {
    taint.get("key").and_then(Value::as_str) == Some(STARTUP_TAINT_KEY)
        && taint.get("effect").and_then(Value::as_str) == Some(STARTUP_TAINT_EFFECT)
}

/// The JSON patch removing the start-up taints from `taints` (the node's `spec.taints`
/// as read), with how many it removes; `None` when there is none. The patch tests the
/// list first, so it applies only to the taints it was computed from.
pub fn removal_patch(taints: &[Value]) -> Option<(Value, usize)> {
    let kept: Vec<&Value> = taints.iter().filter(|t| !is_startup_taint(t)).collect();
    let removed = taints.len() - kept.len();
    (removed > 0).then(|| {
        (
            json!([
                {"op": "test", "path": "/spec/taints", "value": taints},
                {"op": "replace", "path": "/spec/taints", "value": kept},
            ]),
            removed,
        )
    })
}

fn valid_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Whether the API refused a patch because its `test` failed (the taints changed since
/// they were read), or a conflict. The API server answers a JSON patch that does not
/// apply with 422 `Invalid` and no field causes (a validation error names its fields);
/// the patch is built from the list just read, so not applying means that list changed.
fn lost_race(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 409
                || (s.code == 422 && s.details.as_ref().is_none_or(|d| d.causes.is_empty()))
        }
        _ => false,
    }
}

/// Removes the start-up taint from `node` (and only from it; other taints stay): reads
/// the node, and when the taint is there sends the [`removal_patch`]; a failed `test`
/// (the taints changed meanwhile) or a conflict reads the node again, up to
/// [`MAX_ATTEMPTS`] times. Needs `get` and `patch` on `nodes` (this node).
pub async fn remove_taint(client: &Client, node: &str) -> Result<TaintOutcome, TaintError> {
    remove_taint_with(client, node, |_| {}).await
}

/// [`remove_taint`], calling `between(attempt)` after each read of the node and before
/// its patch (tests use it to edit the taints concurrently, at the worst moment).
pub async fn remove_taint_with(
    client: &Client,
    node: &str,
    mut between: impl FnMut(usize),
) -> Result<TaintOutcome, TaintError> {
    if !valid_name(node) {
        return Err(TaintError::BadName(node.to_owned()));
    }
    let uri = format!("/api/v1/nodes/{node}");
    let api_error = |what, source| TaintError::Api {
        node: node.to_owned(),
        what,
        source,
    };
    for attempt in 1..=MAX_ATTEMPTS {
        let get = http::Request::get(&uri)
            .body(Vec::new())
            .expect("a valid request");
        let current: Value = client
            .request(get)
            .await
            .map_err(|e| api_error("reading the node", e))?;
        let taints = current
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some((patch, removed)) = removal_patch(&taints) else {
            return Ok(TaintOutcome::Absent);
        };
        between(attempt);
        let body = serde_json::to_vec(&patch).expect("the patch serializes");
        let request = http::Request::patch(&uri)
            .header(http::header::CONTENT_TYPE, "application/json-patch+json")
            .body(body)
            .expect("a valid request");
        match client.request::<Value>(request).await {
            Ok(_) => {
                return Ok(TaintOutcome::Removed {
                    removed,
                    attempts: attempt,
                });
            }
            Err(e) if lost_race(&e) => {
                tracing::debug!(
                    node,
                    attempt,
                    "the node's taints changed meanwhile: reading them again"
                );
            }
            Err(e) => return Err(api_error("patching the taints", e)),
        }
    }
    Err(TaintError::Contended {
        node: node.to_owned(),
        attempts: MAX_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_tests_the_list_and_keeps_every_other_taint() {
        let taints = vec![
            json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}),
            json!({"key": STARTUP_TAINT_KEY, "value": "true", "effect": "NoSchedule"}),
            json!({"key": STARTUP_TAINT_KEY, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}),
        ];
        let (patch, removed) = removal_patch(&taints).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(patch[0]["op"], "test");
        assert_eq!(patch[0]["path"], "/spec/taints");
        assert_eq!(patch[0]["value"], Value::Array(taints.clone()));
        assert_eq!(patch[1]["op"], "replace");
        assert_eq!(
            patch[1]["value"],
            json!([taints[0].clone(), taints[2].clone()])
        );
        // Any value, or none.
        let only = vec![json!({"key": STARTUP_TAINT_KEY, "effect": "NoSchedule"})];
        let (patch, removed) = removal_patch(&only).unwrap();
        assert_eq!((removed, &patch[1]["value"]), (1, &json!([])));
    }

    #[test]
    fn no_startup_taint_no_patch() {
        assert!(removal_patch(&[]).is_none());
        let other = [
            json!({"key": "dedicated", "effect": "NoSchedule"}),
            json!({"key": STARTUP_TAINT_KEY, "effect": "PreferNoSchedule"}),
        ];
        assert!(removal_patch(&other).is_none());
    }

    #[test]
    fn node_names_and_races() {
        assert!(valid_name("aks-nodepool1-123-vmss000000"));
        for bad in ["", "a/b", "A", "a?b", "../x"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let status = |code, message: &str| {
            kube::Error::Api(
                kube::core::Status {
                    code,
                    message: message.into(),
                    ..Default::default()
                }
                .boxed(),
            )
        };
        assert!(lost_race(&status(409, "conflict")));
        // What the API server answers when the `test` fails.
        assert!(lost_race(&status(
            422,
            "the server rejected our request due to an error in our request"
        )));
        assert!(!lost_race(&status(403, "forbidden")));
        let mut invalid = kube::core::Status {
            code: 422,
            message: "Node \"n\" is invalid: spec.taints[0].effect: Unsupported value".into(),
            ..Default::default()
        };
        invalid.details = Some(
            serde_json::from_value(json!({"causes": [{"field": "spec.taints[0].effect"}]}))
                .unwrap(),
        );
        assert!(!lost_race(&kube::Error::Api(invalid.boxed())));
    }
}
