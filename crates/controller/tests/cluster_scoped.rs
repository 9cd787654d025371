//! The cluster-scoped engines (`--engine cnp`, `anp`, `cilium`, `calico`) against their
//! published CRDs, on a control plane of each test's own: the CRD files come from
//! `scripts/schemas.sh` (the Go modules of tests/schemas/go.mod, cached; the tests fail
//! when it cannot provide them), so the API server validates, prunes and defaults what
//! the controller writes as a cluster with network-policy-api or Cilium installed would.
//!
//! Each test checks: the generated allow and deny are accepted (they exist, read back,
//! and the `MetadataAccessPolicy` says Ready True, not ApplyFailed with the API's
//! message); they carry the managed-by label and only the field manager `imdsguard`
//! (operation Apply); no NetworkPolicy is written; the schema kept every field the
//! controller sets (a resync with nothing changed writes nothing: a pruned or
//! rewritten field would be drift, written again on every resync); a deleted deny is
//! restored within 5 s; removing the `MetadataAccessPolicy` removes them all.
//!
//! AdminNetworkPolicy needs the experimental channel's CRD (v0.1.5): the standard one
//! has no `networks` egress peer and refuses every object `--engine anp` writes.
//! Calico is the weakest: `projectcalico.org/v3` is served by Calico's aggregated API
//! server, not by a CRD, so the test serves the published GlobalNetworkPolicy schema
//! (crd.projectcalico.org/v1, with `spec.tier` added) under that group, and the Tier
//! from a CRD written here (docs/controller.md, "What is tested").

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imdsguard_controller::{ControllerConfig, start};
use imdsguard_core::generate::OutputEngine;
use imdsguard_testkit::ControlPlane;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(5);
const MANAGED: &str = "app.kubernetes.io/managed-by=imdsguard";

/// One engine: what the controller writes and the published CRD files that serve it.
struct Engine {
    engine: OutputEngine,
    /// `resource.group` as kubectl names it.
    resource: &'static str,
    /// The apiVersion the controller writes (read back in that version).
    api_version: &'static str,
    /// The CRDs to install (YAML) and their names.
    crds: Vec<(String, &'static str)>,
    /// Other kinds the engine writes (`plural.version.group`): labelled, managed and
    /// removed like the policies.
    others: &'static [&'static str],
    /// What the read-back allow and deny must hold in this engine's terms.
    check: fn(allow: &Value, deny: &Value),
}

/// The folder of published CRDs, from scripts/schemas.sh (downloaded once, cached);
/// the test fails, never skips, when it cannot be had.
fn schemas() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/schemas.sh");
        let out = Command::new("bash")
            .arg(script)
            .output()
            .expect("run scripts/schemas.sh");
        assert!(
            out.status.success(),
            "scripts/schemas.sh failed (it needs go and the Go module proxy; CI runs it \
             before the tests):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

fn read_crd(file: &str) -> String {
    let path = schemas().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} cannot be read ({e}): run scripts/schemas.sh",
            path.display()
        )
    })
}

async fn client(cp: &ControlPlane) -> Client {
    let kc = Kubeconfig::read_from(cp.kubeconfig()).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

fn json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&cp.kubectl_ok(&a, None)).expect("kubectl prints JSON")
}

/// The engine's objects labelled as the controller's, read back in the version it writes.
fn managed(cp: &ControlPlane, e: &Engine) -> Vec<Value> {
    // `plural.version.group` pins the version read back.
    let (group, version) = e.api_version.split_once('/').unwrap();
    let plural = e.resource.split_once('.').unwrap().0;
    let pinned = format!("{plural}.{version}.{group}");
    json(cp, &[&pinned, "-l", MANAGED, "--show-managed-fields"])["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap()
}

fn condition<'a>(map: &'a Value, type_: &str) -> Option<&'a Value> {
    map.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn keeps_its_policies(test: &str, e: Engine) {
    let cp = ControlPlane::dedicated(test);
    cp.install_imdsguard_crd();
    let mut names: Vec<&str> = Vec::new();
    for (yaml, crd) in &e.crds {
        cp.apply(yaml);
        names.push(crd);
    }
    cp.wait_established(&names);
    cp.kubectl_ok(&["create", "namespace", "shop"], None);
    cp.apply("apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata:\n  name: platform\nspec:\n  rules:\n  - name: app\n    subjects:\n    - namespace: shop\n      podSelector:\n        matchLabels:\n          app: allowed\n    paths: [\"/metadata/instance/compute\"]\n");

    let mut config = ControllerConfig::new(client(&cp).await, test);
    config.engine = Some(e.engine);
    config.lease_namespace = "default".into();
    config.debounce = Duration::from_millis(100);
    config.resync = Duration::from_secs(2);
    let ctl = start(config).await.expect("the controller starts");

    // Accepted by the real schema: Ready True (an object the API refuses makes it
    // False/ApplyFailed with the API's message, shown at once), and an allow and a
    // deny read back.
    let status = eventually("Ready True on the MetadataAccessPolicy", 3 * LIMIT, || {
        let m = json(&cp, &["metadataaccesspolicy", "platform"]);
        let ready = condition(&m, "Ready")?;
        assert_ne!(ready["reason"], "ApplyFailed", "{test}: refused: {ready}");
        (ready["status"] == "True").then_some(m)
    })
    .await;
    let objects = managed(&cp, &e);
    let allow = objects
        .iter()
        .find(|o| name(o).contains("allow-metadata-"))
        .unwrap_or_else(|| panic!("no allow among {objects:#?}"));
    let deny = objects
        .iter()
        .find(|o| name(o).contains("deny-metadata"))
        .unwrap_or_else(|| panic!("no deny among {objects:#?}"))
        .clone();
    assert_eq!(allow["apiVersion"], e.api_version);
    let generated = status["status"]["generated"]
        .as_array()
        .unwrap_or_else(|| panic!("no status.generated: {status:#}"));
    assert_eq!(
        generated.len(),
        objects.len() + e.others.len(),
        "{status:#}\n{objects:#?}"
    );
    assert_eq!(status["status"]["engine"], e.api_version_engine());

    // The controller's: label and field manager imdsguard (server-side apply).
    let others: Vec<Value> = e
        .others
        .iter()
        .flat_map(|r| {
            json(&cp, &[r, "-l", MANAGED, "--show-managed-fields"])["items"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    assert_eq!(others.len(), e.others.len(), "{others:#?}");
    for o in objects.iter().chain(&others) {
        let managers: Vec<(&str, &str)> = o["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["manager"].as_str().unwrap(),
                    m["operation"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(managers, [("imdsguard", "Apply")], "{}", name(o));
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "imdsguard"
        );
    }
    // The allow names the rule's namespace; the engine's own terms.
    assert!(allow["spec"].to_string().contains("shop"), "{allow:#}");
    (e.check)(allow, &deny);
    // No NetworkPolicy is written by a cluster-scoped engine.
    let nps = cp.kubectl_ok(&["get", "networkpolicies", "-A", "-o", "name"], None);
    assert!(nps.trim().is_empty(), "{nps}");

    // Drift: the deny deleted, restored (a new object: another uid).
    let deny_name = name(&deny).to_string();
    cp.kubectl_ok(&["delete", e.resource, &deny_name], None);
    eventually("the deleted deny restored", LIMIT, || {
        managed(&cp, &e)
            .into_iter()
            .find(|o| name(o) == deny_name && o["metadata"]["uid"] != deny["metadata"]["uid"])
    })
    .await;

    // Every field the controller sets survived the schema (pruning, defaulting): a
    // resync (every 2 s) with nothing changed writes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = ctl.metrics().writes_total();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        ctl.metrics().writes_total(),
        writes,
        "a quiet resync wrote: the API server changed a field the controller sets"
    );

    // The MetadataAccessPolicy gone: everything generated goes.
    cp.kubectl_ok(&["delete", "metadataaccesspolicy", "platform"], None);
    eventually("every generated object removed", LIMIT, || {
        (managed(&cp, &e).is_empty()
            && e.others.iter().all(|r| {
                json(&cp, &[r, "-l", MANAGED])["items"]
                    .as_array()
                    .unwrap()
                    .is_empty()
            }))
        .then_some(())
    })
    .await;
    ctl.shutdown().await;
}

impl Engine {
    /// The name `status.engine` gives.
    fn api_version_engine(&self) -> &'static str {
        match self.engine {
            OutputEngine::NetworkPolicy => "networkpolicy",
            OutputEngine::Cnp => "cnp",
            OutputEngine::Anp => "anp",
            OutputEngine::Calico => "calico",
            OutputEngine::Cilium => "cilium",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn cnp_against_the_network_policy_api_crd() {
    keeps_its_policies(
        "cnp_against_the_network_policy_api_crd",
        Engine {
            engine: OutputEngine::Cnp,
            resource: "clusternetworkpolicies.policy.networking.k8s.io",
            api_version: "policy.networking.k8s.io/v1alpha2",
            crds: vec![(
                read_crd("cnp.yaml"),
                "clusternetworkpolicies.policy.networking.k8s.io",
            )],
            others: &[],
            check: |allow, deny| {
                // Both in the Admin tier, the allow ahead of the deny (lower priority
                // number first), the deny's action Deny.
                assert_eq!(allow["spec"]["tier"], "Admin", "{allow:#}");
                assert_eq!(deny["spec"]["tier"], "Admin", "{deny:#}");
                assert!(
                    allow["spec"]["priority"].as_u64() < deny["spec"]["priority"].as_u64(),
                    "{allow:#}\n{deny:#}"
                );
                assert_eq!(deny["spec"]["egress"][0]["action"], "Deny", "{deny:#}");
            },
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn anp_against_the_network_policy_api_crd() {
    keeps_its_policies(
        "anp_against_the_network_policy_api_crd",
        Engine {
            engine: OutputEngine::Anp,
            resource: "adminnetworkpolicies.policy.networking.k8s.io",
            api_version: "policy.networking.k8s.io/v1alpha1",
            crds: vec![(
                read_crd("anp-experimental.yaml"),
                "adminnetworkpolicies.policy.networking.k8s.io",
            )],
            others: &[],
            check: |allow, deny| {
                assert!(
                    allow["spec"]["priority"].as_u64() < deny["spec"]["priority"].as_u64(),
                    "{allow:#}\n{deny:#}"
                );
                assert_eq!(allow["spec"]["egress"][0]["action"], "Allow", "{allow:#}");
                assert_eq!(deny["spec"]["egress"][0]["action"], "Deny", "{deny:#}");
            },
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn cilium_against_the_cilium_crd() {
    keeps_its_policies(
        "cilium_against_the_cilium_crd",
        Engine {
            engine: OutputEngine::Cilium,
            resource: "ciliumclusterwidenetworkpolicies.cilium.io",
            api_version: "cilium.io/v2",
            crds: vec![(
                read_crd("ccnp.yaml"),
                "ciliumclusterwidenetworkpolicies.cilium.io",
            )],
            others: &[],
            check: |allow, deny| {
                // Allow rules that never isolate; the deny as egressDeny for every pod.
                assert_eq!(
                    allow["spec"]["enableDefaultDeny"]["egress"], false,
                    "{allow:#}"
                );
                assert!(allow["spec"]["egress"].is_array(), "{allow:#}");
                assert!(deny["spec"]["egressDeny"].is_array(), "{deny:#}");
                assert_eq!(
                    deny["spec"]["endpointSelector"],
                    serde_json::json!({}),
                    "{deny:#}"
                );
            },
        },
    )
    .await;
}

/// Calico's published GlobalNetworkPolicy schema (crd.projectcalico.org/v1, the only
/// one on the Go module proxy) served as `projectcalico.org/v3`, the group and version
/// the controller writes (in a Calico cluster, Calico's aggregated API server serves it
/// with the same spec), with `spec.tier` added (that CRD is of 3.28, before tiers came
/// to Calico Open Source; `crates/cli/tests/policy_generate.rs` adds it the same way).
fn calico_gnp_as_v3() -> String {
    let crd = read_crd("calico-gnp.yaml");
    let edits = [
        (
            "name: globalnetworkpolicies.crd.projectcalico.org",
            "name: globalnetworkpolicies.projectcalico.org",
        ),
        ("group: crd.projectcalico.org", "group: projectcalico.org"),
        ("\n  - name: v1\n", "\n  - name: v3\n"),
        (
            "\n              types:\n",
            "\n              tier:\n                type: string\n              types:\n",
        ),
    ];
    edits.iter().fold(crd, |crd, (from, to)| {
        assert_eq!(
            crd.matches(from).count(),
            1,
            "calico-gnp.yaml: expected one {from:?}"
        );
        crd.replacen(from, to, 1)
    })
}

/// Calico's Tier has no published schema on the module proxy: a CRD with its two spec
/// fields as Calico's API reference gives them (projectcalico.org/v3 TierSpec).
const CALICO_TIER_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: tiers.projectcalico.org
spec:
  group: projectcalico.org
  scope: Cluster
  names: {kind: Tier, listKind: TierList, plural: tiers, singular: tier}
  versions:
  - name: v3
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          apiVersion: {type: string}
          kind: {type: string}
          metadata: {type: object}
          spec:
            type: object
            properties:
              order: {type: number}
              defaultAction: {type: string, enum: [Pass, Deny]}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs control plane"]
async fn calico_against_the_calico_gnp_schema() {
    keeps_its_policies(
        "calico_against_the_calico_gnp_schema",
        Engine {
            engine: OutputEngine::Calico,
            resource: "globalnetworkpolicies.projectcalico.org",
            api_version: "projectcalico.org/v3",
            crds: vec![
                (CALICO_TIER_CRD.to_string(), "tiers.projectcalico.org"),
                (
                    calico_gnp_as_v3(),
                    "globalnetworkpolicies.projectcalico.org",
                ),
            ],
            others: &["tiers.v3.projectcalico.org"],
            check: |allow, deny| {
                // In the controller's own tier, the allow ordered ahead of the deny,
                // selectors in Calico's syntax.
                assert_eq!(allow["spec"]["tier"], "imdsguard", "{allow:#}");
                assert_eq!(deny["spec"]["tier"], "imdsguard", "{deny:#}");
                assert!(
                    allow["spec"]["order"].as_f64() < deny["spec"]["order"].as_f64(),
                    "{allow:#}\n{deny:#}"
                );
                assert_eq!(allow["spec"]["selector"], "app == 'allowed'", "{allow:#}");
                assert_eq!(deny["spec"]["egress"][0]["action"], "Deny", "{deny:#}");
            },
        },
    )
    .await;
}
