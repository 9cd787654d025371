//! The pure parts of the reconcile: which live objects the controller owns, and
//! whether a live object already is what the controller would apply.
//!
//! Ownership: an object is the controller's only when it carries the
//! `app.kubernetes.io/managed-by: imdsguard` label (`core::generate::MANAGED_BY_LABEL`)
//! AND its `metadata.managedFields` name the field manager `imdsguard`: the label alone
//! can be copied by anyone (a user's own policy with the label is never touched), the
//! field manager alone is what `audit --apply` also uses for its report objects.

use imdsguard_core::generate::{MANAGED_BY, MANAGED_BY_LABEL};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "imdsguard";

/// Whether the controller owns an object with this metadata: the managed-by label AND a
/// managed-fields entry of manager [`FIELD_MANAGER`].
pub fn owned(meta: &ObjectMeta) -> bool {
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY);
    let managed = meta.managed_fields.as_ref().is_some_and(|m| {
        m.iter()
            .any(|e| e.manager.as_deref() == Some(FIELD_MANAGER))
    });
    labelled && managed
}

/// Whether `live` already holds everything `desired` says: every field of `desired` is
/// in `live` with the same value (objects compared key by key, arrays element by element
/// and of the same length), so fields the API server defaults (a port's `protocol`,
/// `policyTypes`) or adds (`metadata.uid`, `status`) do not count as a difference, while
/// any edit of a field the controller sets (a rule removed or added, a label changed)
/// does. An empty or null value in `desired` matches a missing one (the API server
/// drops empty lists).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => contains(lv, dv),
            None => is_empty(dv),
        }),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        (Value::Null, d) => is_empty(d),
        (l, d) => l == d,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

/// Whether the live object (as JSON: its `metadata` and the rest) is up to date with the
/// desired one: the labels and annotations the controller sets, and every other
/// top-level field but `metadata` and `status` ([`contains`]).
pub fn up_to_date(live: &Value, desired: &Value) -> bool {
    let Some(d) = desired.as_object() else {
        return false;
    };
    d.iter().all(|(k, dv)| match k.as_str() {
        "apiVersion" | "kind" | "status" => true,
        "metadata" => ["labels", "annotations"].iter().all(|f| {
            let want = dv.get(*f).unwrap_or(&Value::Null);
            let have = live
                .get("metadata")
                .and_then(|m| m.get(*f))
                .unwrap_or(&Value::Null);
            contains(have, want)
        }),
        _ => contains(live.get(k).unwrap_or(&Value::Null), dv),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use serde_json::json;

    fn meta(label: Option<&str>, managers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            name: Some("imdsguard-deny-metadata".into()),
            labels: label.map(|v| [(MANAGED_BY_LABEL.to_string(), v.to_string())].into()),
            managed_fields: Some(
                managers
                    .iter()
                    .map(|m| ManagedFieldsEntry {
                        manager: Some(m.to_string()),
                        operation: Some("Apply".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn owned_needs_the_label_and_the_field_manager() {
        assert!(owned(&meta(Some("imdsguard"), &["imdsguard"])));
        // Edited by a user afterwards: still ours (the label and our manager stay).
        assert!(owned(&meta(
            Some("imdsguard"),
            &["kubectl-edit", "imdsguard"]
        )));
        // A user's object that copied the label.
        assert!(!owned(&meta(
            Some("imdsguard"),
            &["kubectl-client-side-apply"]
        )));
        // Ours once, label changed by someone.
        assert!(!owned(&meta(Some("helm"), &["imdsguard"])));
        // audit --apply's field manager alone, no label.
        assert!(!owned(&meta(None, &["imdsguard"])));
        assert!(!owned(&ObjectMeta::default()));
    }

    fn desired() -> Value {
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": "imdsguard-deny-metadata",
                "namespace": "shop",
                "labels": {"app.kubernetes.io/managed-by": "imdsguard"},
                "annotations": {"imdsguard.io/rules": "MetadataAccessPolicy"}
            },
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}]},
                           {"ports": [{"port": 1, "endPort": 79}]}]
            }
        })
    }

    fn as_served() -> Value {
        let mut live = desired();
        live["metadata"]["uid"] = json!("u-1");
        live["metadata"]["resourceVersion"] = json!("42");
        live["metadata"]["labels"]["team"] = json!("shop");
        live["metadata"]["annotations"]["other"] = json!("x");
        // The API server defaults the protocol.
        live["spec"]["egress"][1]["ports"][0]["protocol"] = json!("TCP");
        live
    }

    #[test]
    fn what_the_server_adds_or_defaults_is_no_difference() {
        assert!(up_to_date(&as_served(), &desired()));
    }

    #[test]
    fn an_edit_of_what_the_controller_sets_is_a_difference() {
        let mut removed_except = as_served();
        removed_except["spec"]["egress"][0]["to"][0]["ipBlock"]["except"] = json!([]);
        assert!(!up_to_date(&removed_except, &desired()));
        let mut added_rule = as_served();
        added_rule["spec"]["egress"]
            .as_array_mut()
            .unwrap()
            .push(json!({}));
        assert!(!up_to_date(&added_rule, &desired()));
        let mut label = as_served();
        label["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("me");
        assert!(!up_to_date(&label, &desired()));
        let mut annotation = as_served();
        annotation["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("imdsguard.io/rules");
        assert!(!up_to_date(&annotation, &desired()));
        let mut no_spec = as_served();
        no_spec.as_object_mut().unwrap().remove("spec");
        assert!(!up_to_date(&no_spec, &desired()));
    }

    #[test]
    fn empty_desired_values_match_missing_ones() {
        assert!(contains(
            &json!({"a": 1}),
            &json!({"a": 1, "b": [], "c": null, "d": {}})
        ));
        assert!(!contains(&json!({"a": 1}), &json!({"a": 1, "b": [1]})));
        assert!(!contains(&json!([1, 2]), &json!([1])));
    }
}
