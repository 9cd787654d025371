//! The `MetadataAccessPolicy` CRD (`deploy/crds/metadataaccesspolicies.imdsguard.io.yaml`)
//! on a real kube-apiserver (`imdsguard_testkit::ControlPlane`): the committed file
//! applies (server-side, again and again), valid objects are stored and read back as
//! sent through `Api<MetadataAccessPolicy>`, and each invalid object is refused by the
//! server with the message of the schema rule or CEL rule that catches it, naming the
//! field. What the schema cannot see (a path that is not an IMDS endpoint) is stored,
//! and the core refuses it when the object is read as access rules.
//!
//! The control plane is shared with the other tests of this binary and the objects are
//! cluster-scoped: every object name carries this process's id and a counter, and a
//! guard deletes them all when the test ends, also on failure.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imdsguard_kube::crd::MetadataAccessPolicy;
use imdsguard_kube::{Client, Config};
use imdsguard_testkit::ControlPlane;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use serde_json::{Value, json};

const CRD_NAME: &str = "metadataaccesspolicies.imdsguard.io";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

/// A cluster-scoped name unique to this process and call.
fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Deletes the named `MetadataAccessPolicy` objects on drop (test end or panic).
struct Cleanup<'a> {
    cp: &'a ControlPlane,
    names: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut args = vec![
            "delete",
            "metadataaccesspolicies",
            "--ignore-not-found",
            "--wait=false",
        ];
        args.extend(self.names.iter().map(String::as_str));
        let _ = self.cp.kubectl(&args, None);
    }
}

fn dynamic_api(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<MetadataAccessPolicy>(&());
    Api::all_with(client.clone(), &ar)
}

/// An object of the kind with this name and spec, as JSON (so a test can send what the
/// Rust types could not hold: an unknown method, a missing field).
fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "imdsguard.io/v1alpha1",
        "kind": "MetadataAccessPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a dynamic object")
}

/// Creates the object; right after the CRD is established the kind may still be
/// unknown for a moment (404), so that alone is retried for a few seconds.
async fn create(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
) -> Result<DynamicObject, kube::Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.create(&PostParams::default(), obj).await {
            Err(kube::Error::Api(s)) if s.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

fn valid_specs() -> Vec<(&'static str, Value)> {
    vec![
        (
            "token",
            json!({"rules": [{
                "name": "monitoring",
                "description": "Container Insights agents",
                "subjects": [{"namespace": "kube-system",
                              "podSelector": {"matchLabels": {"component": "ama-logs-agent"}}}],
                "token": {"resources": ["https://monitor.azure.com/"],
                          "identities": [{"any": true}, {"clientId": "00000000-0000-0000-0000-000000000001"}]}
            }]}),
        ),
        (
            "paths",
            json!({"rules": [
                {
                    "name": "instance-compute",
                    "subjects": [{"namespaces": ["a", "b"], "serviceAccounts": ["reader"],
                                  "podSelector": {"matchExpressions": [
                                      {"key": "tier", "operator": "In", "values": ["web", "api"]},
                                      {"key": "canary", "operator": "DoesNotExist"}]}}],
                    "methods": ["GET"],
                    "paths": ["/metadata/instance/compute/*"],
                    "redact": ["customData"]
                },
                {
                    "name": "all.pods:scheduled_events",
                    "subjects": [{"namespace": "*"}],
                    "methods": ["GET", "POST"],
                    "paths": ["/metadata/scheduledevents"]
                }
            ]}),
        ),
        ("empty", json!({"rules": []})),
    ]
}

/// A valid rule to start an invalid one from.
fn rule() -> Value {
    json!({"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/metadata/instance/compute"]})
}

fn with(mut base: Value, edit: impl FnOnce(&mut Value)) -> Value {
    edit(&mut base);
    base
}

/// Invalid specs: what is wrong, the spec, and what the server's message must contain
/// (the field and the rule's words).
fn invalid_specs() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        // The OpenAPI schema.
        (
            "a method that is neither GET, POST nor PUT",
            json!({"rules": [with(rule(), |r| r["methods"] = json!(["DELETE"]))]}),
            vec![
                "spec.rules[0].methods[0]",
                "Unsupported value: \"DELETE\"",
                "\"GET\"",
                "\"POST\"",
                "\"PUT\"",
            ],
        ),
        (
            "a rule name with a space and a slash",
            json!({"rules": [with(rule(), |r| r["name"] = json!("my rule/1"))]}),
            vec!["spec.rules[0].name", "should match '^[A-Za-z0-9._:-]+$'"],
        ),
        (
            "a path with a query",
            json!({"rules": [with(rule(), |r| r["paths"] = json!(["/metadata/instance?api-version=2021-02-01"]))]}),
            vec!["spec.rules[0].paths[0]", "should match '^/[^?]*$'"],
        ),
        (
            "two rules with the same name",
            json!({"rules": [rule(), with(rule(), |r| r["paths"] = json!(["/metadata/scheduledevents"]))]}),
            vec!["spec.rules[1]", "Duplicate value", "\"name\":\"r\""],
        ),
        (
            "a rule without subjects",
            json!({"rules": [with(rule(), |r| { r.as_object_mut().unwrap().remove("subjects"); })]}),
            vec!["spec.rules[0].subjects", "Required value"],
        ),
        // CEL rules (x-kubernetes-validations).
        (
            "an empty subject",
            json!({"rules": [with(rule(), |r| r["subjects"] = json!([{}]))]}),
            vec![
                "spec.rules[0].subjects[0]",
                "Required value",
                "an empty subject would select nothing",
            ],
        ),
        (
            "a rule with neither paths nor token",
            json!({"rules": [with(rule(), |r| { r.as_object_mut().unwrap().remove("paths"); })]}),
            vec![
                "spec.rules[0]",
                "a rule allows nothing without `paths` or `token`",
            ],
        ),
        (
            "a rule whose paths are empty",
            json!({"rules": [with(rule(), |r| r["paths"] = json!([]))]}),
            vec![
                "spec.rules[0]",
                "a rule allows nothing without `paths` or `token`",
            ],
        ),
        (
            "an identity with two selectors",
            json!({"rules": [with(rule(), |r| r["token"] = json!({
                "resources": ["https://management.azure.com/"],
                "identities": [{"clientId": "c", "objectId": "o"}]}))]}),
            vec![
                "spec.rules[0].token.identities[0]",
                "give exactly one of clientId, objectId, resourceId, default: true, any: true",
            ],
        ),
        (
            "an identity with no selector (default: false)",
            json!({"rules": [with(rule(), |r| r["token"] = json!({
                "resources": ["*"], "identities": [{"default": false}]}))]}),
            vec![
                "spec.rules[0].token.identities[0]",
                "give exactly one of clientId, objectId, resourceId",
            ],
        ),
        (
            "In without values",
            json!({"rules": [with(rule(), |r| r["subjects"] = json!([{"podSelector": {
                "matchExpressions": [{"key": "app", "operator": "In"}]}}]))]}),
            vec![
                "spec.rules[0].subjects[0].podSelector.matchExpressions[0]",
                "In and NotIn need values; Exists and DoesNotExist take none",
            ],
        ),
        (
            "Exists with values",
            json!({"rules": [with(rule(), |r| r["subjects"] = json!([{"podSelector": {
                "matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}}]))]}),
            vec![
                "spec.rules[0].subjects[0].podSelector.matchExpressions[0]",
                "In and NotIn need values; Exists and DoesNotExist take none",
            ],
        ),
    ]
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn the_committed_crd_applies_and_valid_objects_read_back_as_sent() {
    let cp = ControlPlane::shared("the_committed_crd_applies_and_valid_objects_read_back_as_sent");
    cp.install_imdsguard_crd();
    // Applying it again (as every test and the chart do) changes nothing.
    let before = cp.kubectl_ok(
        &[
            "get",
            "crd",
            CRD_NAME,
            "-o",
            "jsonpath={.metadata.generation}",
        ],
        None,
    );
    cp.install_imdsguard_crd();
    let after = cp.kubectl_ok(
        &[
            "get",
            "crd",
            CRD_NAME,
            "-o",
            "jsonpath={.metadata.generation}",
        ],
        None,
    );
    assert_eq!(
        before, after,
        "a second apply of the same CRD changed its spec"
    );

    let client = client(cp.kubeconfig()).await;
    let dynamic = dynamic_api(&client);
    let typed: Api<MetadataAccessPolicy> = Api::all(client.clone());
    let mut cleanup = Cleanup {
        cp,
        names: Vec::new(),
    };
    for (what, spec) in valid_specs() {
        let name = unique(&format!("crd-valid-{what}"));
        cleanup.names.push(name.clone());
        if let Err(e) = create(&dynamic, &object(&name, spec.clone())).await {
            panic!("the valid object {what} was refused: {e}");
        }
        let read = typed.get(&name).await.expect("the object reads back");
        let sent: imdsguard_kube::MetadataAccessPolicySpec =
            serde_json::from_value(spec.clone()).expect("the spec is the Rust type");
        assert_eq!(
            read.spec, sent,
            "{what}: the stored spec differs from the one sent"
        );
        // And as JSON: the server neither dropped nor added a field.
        assert_eq!(
            serde_json::to_value(&read.spec).unwrap(),
            spec,
            "{what}: the stored spec's JSON differs"
        );
        let rules = read
            .access_rules()
            .unwrap_or_else(|e| panic!("{what}: the core refuses a valid object: {e}"));
        assert_eq!(
            rules.len(),
            spec["rules"].as_array().unwrap().len(),
            "{what}"
        );
        for r in rules.rules() {
            assert!(
                r.name.starts_with(&format!("{name}/")),
                "{what}: rule named {}",
                r.name
            );
        }
    }
    // The typed client writes too: create through Api<MetadataAccessPolicy>, delete.
    let name = unique("crd-typed");
    cleanup.names.push(name.clone());
    let spec: imdsguard_kube::MetadataAccessPolicySpec =
        serde_json::from_value(valid_specs()[0].1.clone()).unwrap();
    let created = typed
        .create(
            &PostParams::default(),
            &MetadataAccessPolicy::new(&name, spec.clone()),
        )
        .await
        .expect("the typed create is accepted");
    assert_eq!(created.spec, spec);
    typed
        .delete(&name, &DeleteParams::default())
        .await
        .expect("the typed delete is accepted");
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn invalid_objects_are_refused_with_the_rules_message() {
    let cp = ControlPlane::shared("invalid_objects_are_refused_with_the_rules_message");
    cp.install_imdsguard_crd();
    let client = client(cp.kubeconfig()).await;
    let dynamic = dynamic_api(&client);
    let mut cleanup = Cleanup {
        cp,
        names: Vec::new(),
    };
    let mut failures = Vec::new();
    for (what, spec, expected) in invalid_specs() {
        let name = unique("crd-invalid");
        cleanup.names.push(name.clone());
        match create(&dynamic, &object(&name, spec)).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(s)) => {
                let missing: Vec<_> = expected
                    .iter()
                    .filter(|e| !s.message.contains(**e))
                    .collect();
                if s.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "{what}: refused with {} {:?}, missing {missing:?}: {}",
                        s.code, s.reason, s.message
                    ));
                }
                // The object is named in the message, so a user knows which one.
                if !s.message.contains(&name) {
                    failures.push(format!(
                        "{what}: the message does not name {name}: {}",
                        s.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{what}: not an API error: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn what_the_schema_lets_through_the_core_refuses_naming_the_rule() {
    let cp = ControlPlane::shared("what_the_schema_lets_through_the_core_refuses_naming_the_rule");
    cp.install_imdsguard_crd();
    let client = client(cp.kubeconfig()).await;
    let dynamic = dynamic_api(&client);
    let typed: Api<MetadataAccessPolicy> = Api::all(client.clone());
    let mut cleanup = Cleanup {
        cp,
        names: Vec::new(),
    };
    let name = unique("crd-core-refuses");
    cleanup.names.push(name.clone());
    let spec = json!({"rules": [
        rule(),
        {"name": "not-imds", "subjects": [{"namespace": "a"}], "paths": ["/not/imds"]}
    ]});
    create(&dynamic, &object(&name, spec))
        .await
        .expect("the schema accepts any path without a query");
    let read = typed.get(&name).await.expect("the object reads back");
    let e = read
        .access_rules()
        .expect_err("the core refuses a path that is no IMDS endpoint")
        .to_string();
    assert!(
        e.contains(&format!("{name}/not-imds")) && e.contains("/not/imds"),
        "the core's error names neither the rule nor the path: {e}"
    );
    // The object's other rule is not what is blamed.
    assert!(!e.contains(&format!("{name}/r ")), "{e}");
}
