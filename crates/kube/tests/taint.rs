//! The start-up taint hand-off (`imdsguard_kube::taint`) against a real kube-apiserver
//! (`imdsguard_testkit::ControlPlane::shared`): the taint removed from the named node
//! only (another node's taint and the node's other taints untouched), a node without it
//! left unwritten, and a taint added by someone else between the agent's read and its
//! patch not lost. Nodes are cluster-scoped: each test names its own (with the process
//! id) and deletes them at the end.

use std::path::Path;

use imdsguard_kube::taint::{self, STARTUP_TAINT_KEY, TaintError, TaintOutcome};
use imdsguard_kube::{Client, Config};
use imdsguard_testkit::ControlPlane;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

/// Deletes the nodes when dropped (also when the test fails).
struct Nodes<'a> {
    cp: &'a ControlPlane,
    names: Vec<String>,
}

impl Nodes<'_> {
    /// Creates node `name` (unique to this process) with these taints.
    fn add(&mut self, name: &str, taints: Value) -> String {
        let name = format!("{name}-{}", std::process::id());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"imdsguard.io/test": "taint"}},
            "spec": {"taints": taints}
        });
        self.cp
            .kubectl_ok(&["create", "-f", "-"], Some(&node.to_string()));
        self.names.push(name.clone());
        name
    }
}

impl Drop for Nodes<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self
                .cp
                .kubectl(&["delete", "node", n, "--ignore-not-found"], None);
        }
    }
}

/// The node's taints as (key, value, effect), and its resourceVersion.
fn taints(cp: &ControlPlane, node: &str) -> (Vec<(String, String, String)>, String) {
    let out = cp.kubectl_ok(&["get", "node", node, "-o", "json"], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    let list = v["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (s("key"), s("value"), s("effect"))
        })
        .collect();
    (
        list,
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

fn t(key: &str, value: &str, effect: &str) -> (String, String, String) {
    (key.into(), value.into(), effect.into())
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn the_taint_leaves_this_node_only_and_other_taints_stay() {
    let cp = ControlPlane::shared("the_taint_leaves_this_node_only_and_other_taints_stay");
    let mut nodes = Nodes {
        cp,
        names: Vec::new(),
    };
    let mine = nodes.add(
        "taint-mine",
        json!([
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
            {"key": STARTUP_TAINT_KEY, "value": "true", "effect": "NoSchedule"},
            {"key": STARTUP_TAINT_KEY, "value": "true", "effect": "NoExecute"},
        ]),
    );
    let other = nodes.add(
        "taint-other",
        json!([{"key": STARTUP_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]),
    );
    let (other_before, other_rv) = taints(cp, &other);
    // The API server's own admission adds a taint of its own (node.kubernetes.io/not-ready):
    // it stays too.
    let (before, _) = taints(cp, &mine);
    let expected: Vec<_> = before
        .iter()
        .filter(|(k, _, e)| !(k == STARTUP_TAINT_KEY && e == "NoSchedule"))
        .cloned()
        .collect();
    assert_eq!(expected.len() + 1, before.len(), "{before:?}");
    assert!(expected.contains(&t("dedicated", "gpu", "NoSchedule")));
    assert!(expected.contains(&t(STARTUP_TAINT_KEY, "true", "NoExecute")));
    let c = client(cp.kubeconfig()).await;

    let outcome = taint::remove_taint(&c, &mine).await.unwrap();
    assert_eq!(
        outcome,
        TaintOutcome::Removed {
            removed: 1,
            attempts: 1
        }
    );
    let (now, rv) = taints(cp, &mine);
    assert_eq!(now, expected, "only the NoSchedule start-up taint goes");
    // The other node is not touched at all.
    assert_eq!(taints(cp, &other), (other_before, other_rv));

    // Again: nothing to do, nothing written.
    assert_eq!(
        taint::remove_taint(&c, &mine).await.unwrap(),
        TaintOutcome::Absent
    );
    assert_eq!(taints(cp, &mine).1, rv, "no write when the taint is absent");

    // A node without any taint: absent too; a node that does not exist: an error
    // naming it.
    let bare = nodes.add("taint-bare", json!([]));
    let (_, bare_rv) = taints(cp, &bare);
    assert_eq!(
        taint::remove_taint(&c, &bare).await.unwrap(),
        TaintOutcome::Absent
    );
    assert_eq!(taints(cp, &bare).1, bare_rv);
    let missing = format!("taint-missing-{}", std::process::id());
    let e = taint::remove_taint(&c, &missing).await.unwrap_err();
    assert!(
        matches!(&e, TaintError::Api { source: kube::Error::Api(s), .. } if s.code == 404),
        "{e:?}"
    );
    assert!(e.to_string().contains(&missing), "{e}");
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn a_taint_edit_between_the_read_and_the_patch_is_not_lost() {
    let cp = ControlPlane::shared("a_taint_edit_between_the_read_and_the_patch_is_not_lost");
    let mut nodes = Nodes {
        cp,
        names: Vec::new(),
    };
    let node = nodes.add(
        "taint-race",
        json!([
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
            {"key": STARTUP_TAINT_KEY, "value": "true", "effect": "NoSchedule"},
        ]),
    );
    let c = client(cp.kubeconfig()).await;
    let mut edits = 0;
    // After the agent's first read, someone else (kubectl, another controller) adds a
    // taint and edits the value of another: the agent's patch must not undo either.
    let outcome = taint::remove_taint_with(&c, &node, |attempt| {
        if attempt == 1 {
            cp.kubectl_ok(
                &[
                    "taint",
                    "node",
                    &node,
                    "maintenance=soon:NoSchedule",
                    "dedicated=tpu:NoSchedule",
                    "--overwrite",
                ],
                None,
            );
            edits += 1;
        }
    })
    .await
    .unwrap();
    assert_eq!(edits, 1);
    assert_eq!(
        outcome,
        TaintOutcome::Removed {
            removed: 1,
            attempts: 2
        },
        "the first patch's test fails, the second applies"
    );
    let (now, _) = taints(cp, &node);
    assert!(
        now.contains(&t("dedicated", "tpu", "NoSchedule")),
        "{now:?}"
    );
    assert!(
        now.contains(&t("maintenance", "soon", "NoSchedule")),
        "{now:?}"
    );
    assert!(
        !now.iter().any(|(k, _, _)| k == STARTUP_TAINT_KEY),
        "{now:?}"
    );
    assert!(
        !now.contains(&t("dedicated", "gpu", "NoSchedule")),
        "{now:?}"
    );
}
