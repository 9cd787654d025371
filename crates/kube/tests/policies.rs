//! The `MetadataAccessPolicy` watch (`imdsguard_kube::policies::PolicyWatch`) against a
//! real kube-apiserver of the test's own (`ControlPlane::dedicated`: the watch sees every
//! object of the cluster, and the test needs a cluster without the CRD at first):
//! a 404 on the list before the CRD exists, the CRD installed later picked up without a
//! restart, then the combined rules following objects created, edited and deleted within
//! 1 s each, and an object the core refuses reported and adding nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use imdsguard_kube::policies::{PolicyState, PolicyWatch};
use imdsguard_kube::{Client, Config};
use imdsguard_testkit::ControlPlane;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;

/// What "within 1 s" allows for one change to reach the state.
const PROMPT: Duration = Duration::from_secs(1);

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

/// Waits up to `within` for a state `check` accepts; panics with the last one.
async fn wait_for(
    rx: &mut watch::Receiver<PolicyState>,
    within: Duration,
    what: &str,
    check: impl Fn(&PolicyState) -> bool,
) -> PolicyState {
    let found = tokio::time::timeout(within, rx.wait_for(|s| check(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match found {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("{what}: the watch ended"),
        Err(_) => panic!(
            "{what}: not within {within:?}; last state {:?}",
            rx.borrow()
        ),
    }
}

/// The rule names in force.
fn rule_names(s: &PolicyState) -> Vec<String> {
    s.rules()
        .map(|r| r.rules().iter().map(|r| r.name.to_string()).collect())
        .unwrap_or_default()
}

fn policy(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: imdsguard.io/v1alpha1\nkind: MetadataAccessPolicy\nmetadata: {{name: {name}}}\nspec:\n  rules:\n{rules}"
    )
}

const MONITORING: &str = "  - name: monitoring
    subjects: [{namespace: kube-system, podSelector: {matchLabels: {app: ama-logs}}}]
    token: {resources: ['https://monitor.azure.com/'], identities: [{any: true}]}
";
const LOCATION: &str = "  - name: location
    subjects: [{namespace: shop}]
    paths: [/metadata/instance/compute/location]
";
/// Accepted by the API server's schema (a path starting with `/`), refused by the core
/// (not an IMDS path).
const NOT_IMDS: &str = "  - name: wide
    subjects: [{namespace: '*'}]
    paths: [/not/imds]
";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs control plane"]
async fn the_watch_follows_the_objects_within_a_second() {
    let test = "the_watch_follows_the_objects_within_a_second";
    let cp = ControlPlane::dedicated(test);
    let c = client(cp.kubeconfig()).await;
    let mut w = PolicyWatch::start(c);
    let mut rx = w.subscribe();

    // No CRD: the list answers 404, said as such, and nothing is granted.
    let state = wait_for(&mut rx, Duration::from_secs(20), "no CRD", |s| {
        matches!(s, PolicyState::NotInstalled { .. })
    })
    .await;
    assert!(state.rules().is_none());
    let why = state.readiness().unwrap_err();
    assert!(
        why.contains("metadataaccesspolicies.imdsguard.io") && why.contains("not installed"),
        "{why}"
    );
    assert_eq!(w.answered().await, Some(state));

    // The CRD installed: picked up at the next retry (kube-runtime's backoff, at most
    // 30 s between tries), without a restart.
    cp.install_imdsguard_crd();
    let state = wait_for(&mut rx, Duration::from_secs(60), "CRD installed", |s| {
        matches!(s, PolicyState::Synced(_))
    })
    .await;
    assert_eq!(rule_names(&state), Vec::<String>::new());
    assert!(
        state
            .readiness()
            .unwrap()
            .contains("0 MetadataAccessPolicy")
    );

    // Created: in force within 1 s of the API server storing it.
    cp.apply(&policy("platform", MONITORING));
    let stored = Instant::now();
    let state = wait_for(&mut rx, PROMPT, "created", |s| {
        rule_names(s) == ["platform/monitoring"]
    })
    .await;
    let PolicyState::Synced(p) = &state else {
        unreachable!()
    };
    assert_eq!(p.objects, ["platform"]);
    assert!(p.refused.is_empty());
    eprintln!("created: {:?}", stored.elapsed());

    // Edited: a second rule.
    cp.apply(&policy("platform", &format!("{MONITORING}{LOCATION}")));
    wait_for(&mut rx, PROMPT, "edited", |s| {
        rule_names(s) == ["platform/monitoring", "platform/location"]
    })
    .await;

    // An object the core refuses: listed with the core's error and generation, adds
    // nothing, and the other object's rules stay.
    cp.apply(&policy("careless", &format!("{LOCATION}{NOT_IMDS}")));
    let state = wait_for(
        &mut rx,
        PROMPT,
        "refused",
        |s| matches!(s, PolicyState::Synced(p) if p.objects.len() == 2),
    )
    .await;
    let PolicyState::Synced(p) = &state else {
        unreachable!()
    };
    assert_eq!(
        rule_names(&state),
        ["platform/monitoring", "platform/location"],
        "the refused object adds nothing, not even its valid rule"
    );
    assert_eq!(p.refused.len(), 1, "{:?}", p.refused);
    assert_eq!(p.refused[0].name, "careless");
    assert_eq!(p.refused[0].generation, Some(1));
    assert!(
        p.refused[0].error.contains("careless/wide") && p.refused[0].error.contains("/not/imds"),
        "{}",
        p.refused[0].error
    );
    // Fixed: accepted, its rules added.
    cp.apply(&policy("careless", LOCATION));
    wait_for(&mut rx, PROMPT, "fixed", |s| {
        matches!(s, PolicyState::Synced(p) if p.refused.is_empty())
            && rule_names(s).contains(&"careless/location".to_owned())
    })
    .await;

    // Deleted: gone within 1 s.
    cp.kubectl_ok(&["delete", "metadataaccesspolicy", "platform"], None);
    wait_for(&mut rx, PROMPT, "deleted", |s| {
        rule_names(s) == ["careless/location"]
    })
    .await;
    cp.kubectl_ok(&["delete", "metadataaccesspolicy", "careless"], None);
    let state = wait_for(
        &mut rx,
        PROMPT,
        "all deleted",
        |s| matches!(s, PolicyState::Synced(p) if p.objects.is_empty()),
    )
    .await;
    assert!(state.rules().is_some_and(|r| r.is_empty()));
    // The store holds what the API lists (none), trimmed.
    assert!(w.store().state().is_empty());
}
