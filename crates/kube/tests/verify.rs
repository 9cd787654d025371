//! `verify` against a real kube-apiserver with etcd on 127.0.0.1
//! (`imdsguard_testkit::ControlPlane`): every verdict path, the deadline, pods that do
//! not start, errors, cancellation, `--clean` and `--as`, each ending with nothing of the
//! run left in the API.
//!
//! There is no job controller and no kubelet: the test plays them ([`Kubelet`]). It
//! watches for the Jobs `verify` creates, creates each Job's pod as the job controller
//! would (the template's labels and spec, an ownerReference to the Job), and writes the
//! pod's status as the kubelet would after the probe ran: phase, and the probe
//! container's `state.terminated` with the probe's result as the termination message.
//! The results are built with the probe result's own types
//! (`EndpointResult::from_steps`, `ProbeResult::to_message`), the code path
//! `imdsguard probe --termination-log` writes through; the binary's test
//! (`crates/cli/tests/verify_live.rs`) feeds the output of a real probe run.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use imdsguard_core::audit::Severity;
use imdsguard_core::manifest::Loaded;
use imdsguard_kube::live::{self, Connection, NoProgress};
use imdsguard_kube::verify::job::{self, MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL};
use imdsguard_kube::verify::{
    Agreement, CleanConfig, EndpointResult, Namespaces, Outcome, ProbeEndpoint, ProbeResult, Seen,
    Status, Verify, VerifyConfig, VerifyReport, clean,
};
use imdsguard_kube::{Client, Config};
use imdsguard_testkit::{ControlPlane, Scratch};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// A fresh, empty folder of this test under the target dir, removed when dropped (the
/// service-account kubeconfigs written into it hold tokens).
fn scratch(name: &str) -> Scratch {
    Scratch::new(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("verify-{name}"),
    )
}

async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

/// The probe's result when every endpoint answered with data (the seed's exposed node).
fn reachable() -> String {
    let imds = EndpointResult::from_steps(
        ProbeEndpoint::Imds,
        "169.254.169.254:80",
        [
            ("reachable", None, false),
            ("needs-header", Some(400), false),
            ("exposed", Some(200), true),
            ("token-obtained", Some(200), true),
        ],
    );
    let ws = EndpointResult::from_steps(
        ProbeEndpoint::Wireserver,
        "168.63.129.16:80",
        [("exposed", Some(200), true)],
    );
    let hgp = EndpointResult::from_steps(
        ProbeEndpoint::Hostgaplugin,
        "168.63.129.16:32526",
        [("exposed", Some(200), true)],
    );
    ProbeResult::new(
        vec![imds, ws, hgp],
        vec![
            "the instance document".into(),
            "1 access token(s): default identity for https://management.azure.com/".into(),
        ],
    )
    .to_message()
}

/// The probe's result when every endpoint dropped the connection.
fn blocked() -> String {
    let imds = EndpointResult::from_steps(
        ProbeEndpoint::Imds,
        "169.254.169.254:80",
        [
            ("blocked-timeout", None, false),
            ("not-checked", None, false),
            ("not-checked", None, false),
        ],
    );
    let ws = EndpointResult::from_steps(
        ProbeEndpoint::Wireserver,
        "168.63.129.16:80",
        [("blocked-timeout", None, false)],
    );
    let hgp = EndpointResult::from_steps(
        ProbeEndpoint::Hostgaplugin,
        "168.63.129.16:32526",
        [("blocked-refused", None, false)],
    );
    ProbeResult::new(vec![imds, ws, hgp], Vec::new()).to_message()
}

/// What the test's kubelet does with a Job's pod.
#[derive(Debug, Clone)]
enum Play {
    /// Creates the pod and terminates the probe with this exit code and message.
    Terminate(i32, String),
    /// Creates the pod and leaves it Pending, never started.
    Pending,
    /// Creates the pod with the probe container waiting for this reason.
    Waiting(&'static str),
    /// Creates no pod.
    Nothing,
}

/// The job controller and kubelet of one namespace, for the Jobs `verify` creates.
struct Kubelet {
    task: JoinHandle<()>,
    /// The Jobs seen, as the API server stored them.
    jobs: Arc<Mutex<Vec<Job>>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    fn start(client: &Client, ns: &str, play: Play) -> Kubelet {
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let seen = jobs.clone();
        let client = client.clone();
        let ns = ns.to_owned();
        let task = tokio::spawn(async move {
            let api: Api<Job> = Api::namespaced(client.clone(), &ns);
            let params = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
            let mut done = BTreeSet::new();
            loop {
                if let Ok(list) = api.list(&params).await {
                    for j in list.items {
                        if j.metadata.deletion_timestamp.is_none() && done.insert(j.uid().unwrap())
                        {
                            seen.lock().unwrap().push(j.clone());
                            run_pod(&client, &ns, &j, &play).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Kubelet { task, jobs }
    }

    fn jobs(&self) -> Vec<Job> {
        self.jobs.lock().unwrap().clone()
    }
}

/// The pod the job controller would create for `job`, and what the kubelet would then
/// write to its status.
async fn run_pod(client: &Client, ns: &str, job: &Job, play: &Play) {
    if matches!(play, Play::Nothing) {
        return;
    }
    let template = job.spec.as_ref().unwrap().template.clone();
    let meta = template.metadata.unwrap_or_default();
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{}-x7k2p", job.name_any())),
            namespace: Some(ns.to_owned()),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: Job::api_version(&()).into_owned(),
                kind: "Job".into(),
                name: job.name_any(),
                uid: job.uid().unwrap(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = api
        .create(&PostParams::default(), &pod)
        .await
        .expect("the test creates the Job's pod");
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let container = |state: serde_json::Value| {
        json!([{"name": "probe", "ready": false, "restartCount": 0,
                "image": "ghcr.io/imdsguard/imdsguard:test", "imageID": "", "state": state}])
    };
    let status = match play {
        Play::Terminate(code, message) => json!({"status": {
            "phase": if *code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": container(json!({"terminated": {
                "exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" },
                "message": message, "startedAt": now, "finishedAt": now}}))}}),
        Play::Waiting(reason) => json!({"status": {"phase": "Pending",
            "containerStatuses": container(json!({"waiting": {"reason": reason,
                "message": "Back-off pulling image \"ghcr.io/imdsguard/imdsguard:test\""}}))}}),
        Play::Pending | Play::Nothing => return,
    };
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("the test writes the pod's status");
}

/// The cluster as the audit reads it, namespace by namespace (each with the
/// cluster-scoped policies).
async fn snapshot(client: &Client, namespaces: &[&str]) -> Loaded {
    let conn = Connection::from_client(client.clone(), "test", "https://127.0.0.1");
    let mut loaded = Loaded::default();
    for ns in namespaces {
        let read = live::read(
            &conn,
            &live::Namespaces::One((*ns).to_owned()),
            500,
            &NoProgress,
        )
        .await
        .expect("the live read works");
        loaded.extend(read.loaded);
    }
    loaded
}

fn config(namespaces: &[&str], deadline: Duration) -> VerifyConfig {
    let mut c = VerifyConfig::new(Namespaces::Only(
        namespaces.iter().map(|s| (*s).to_owned()).collect(),
    ));
    c.image = "ghcr.io/imdsguard/imdsguard:test".into();
    c.deadline = deadline;
    c.poll_interval = Duration::from_millis(100);
    c
}

async fn verify(client: &Client, config: VerifyConfig) -> VerifyReport {
    let namespaces: Vec<String> = match &config.namespaces {
        Namespaces::Only(l) => l.clone(),
        Namespaces::All => panic!("tests name their namespaces"),
    };
    let refs: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let snap = snapshot(client, &refs).await;
    Verify::start(client.clone(), config, snap)
        .expect("the run starts")
        .wait()
        .await
        .expect("the run reports")
}

const DENY_EGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: NS}
spec:
  podSelector: {}
  policyTypes: [Egress]
";

/// Fails unless no Job or pod of verify is left in `namespaces`.
async fn assert_nothing_left(client: &Client, namespaces: &[&str]) {
    for ns in namespaces {
        let jobs = Api::<Job>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
            .await
            .unwrap();
        assert!(
            jobs.items.is_empty(),
            "Jobs left in {ns}: {:?}",
            jobs.items.iter().map(|j| j.name_any()).collect::<Vec<_>>()
        );
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(RUN_LABEL))
            .await
            .unwrap();
        assert!(
            pods.items.is_empty(),
            "pods left in {ns}: {:?}",
            pods.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
    }
}

fn ns_result<'a>(
    report: &'a VerifyReport,
    ns: &str,
) -> &'a imdsguard_kube::verify::NamespaceResult {
    report
        .namespaces
        .iter()
        .find(|n| n.namespace == ns)
        .unwrap_or_else(|| panic!("no result for {ns}: {report:#?}"))
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn every_verdict_path_and_nothing_left() {
    let cp = ControlPlane::shared("every_verdict_path_and_nothing_left");
    let client = client_for(cp.kubeconfig()).await;
    let agree_blocked = cp.namespace("vfy-agree-blocked");
    let agree_reachable = cp.namespace("vfy-agree-reach");
    let high = cp.namespace("vfy-high");
    let medium = cp.namespace("vfy-medium");
    for ns in [&agree_blocked, &high] {
        cp.apply(&DENY_EGRESS.replace("NS", ns));
    }
    let _k = [
        Kubelet::start(&client, &agree_blocked, Play::Terminate(0, blocked())),
        Kubelet::start(&client, &agree_reachable, Play::Terminate(1, reachable())),
        Kubelet::start(&client, &high, Play::Terminate(1, reachable())),
        Kubelet::start(&client, &medium, Play::Terminate(0, blocked())),
    ];
    let all = [agree_blocked.as_str(), &agree_reachable, &high, &medium];
    let t0 = Instant::now();
    let report = verify(&client, config(&all, Duration::from_secs(20))).await;
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "the run waits for the pods, not the deadline"
    );

    let a = ns_result(&report, &agree_blocked);
    assert_eq!(a.outcome, Outcome::Observed, "{a:#?}");
    assert!(
        a.targets
            .iter()
            .all(|t| t.agreement == Agreement::Agree && t.seen == Seen::Blocked),
        "{a:#?}"
    );
    assert!(
        a.targets
            .iter()
            .all(|t| !t.predicted.as_ref().unwrap().reachable)
    );
    assert_eq!((a.exit_code, a.sensitive), (Some(0), false));

    let b = ns_result(&report, &agree_reachable);
    assert!(
        b.targets
            .iter()
            .all(|t| t.agreement == Agreement::Agree && t.seen == Seen::Reachable),
        "{b:#?}"
    );
    assert!(b.sensitive && b.reachable.iter().any(|r| r.contains("access token")));
    assert_eq!(
        b.targets[0].classes,
        ["reachable", "needs-header", "exposed", "token-obtained"]
    );

    let h = ns_result(&report, &high);
    assert!(
        h.targets
            .iter()
            .all(|t| t.agreement == Agreement::Disagree && t.severity == Some(Severity::High)),
        "{h:#?}"
    );
    assert!(
        h.targets[0]
            .message
            .as_ref()
            .unwrap()
            .contains("probe got through")
    );
    assert!(
        h.targets[0]
            .predicted
            .as_ref()
            .unwrap()
            .reason
            .contains("deny-egress"),
        "{h:#?}"
    );

    let m = ns_result(&report, &medium);
    assert!(
        m.targets
            .iter()
            .all(|t| t.agreement == Agreement::Disagree && t.severity == Some(Severity::Medium)),
        "{m:#?}"
    );

    assert_eq!((report.summary.high, report.summary.medium), (3, 3));
    assert_eq!(report.summary.agree, 2);
    assert_eq!(report.status, Status::Finding);
    assert_eq!(report.cleanup.jobs_deleted.len(), 4, "{:?}", report.cleanup);
    assert_eq!(report.cleanup.pods_deleted.len(), 4, "{:?}", report.cleanup);
    assert!(report.cleanup.errors.is_empty());
    assert_nothing_left(&client, &all).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn agreement_on_blocked_alone_exits_zero() {
    let cp = ControlPlane::shared("agreement_on_blocked_alone_exits_zero");
    let client = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-zero");
    cp.apply(&DENY_EGRESS.replace("NS", &ns));
    let _k = Kubelet::start(&client, &ns, Play::Terminate(0, blocked()));
    let report = verify(&client, config(&[&ns], Duration::from_secs(20))).await;
    assert_eq!(report.status, Status::Agree, "{report:#?}");
    assert_eq!(report.status.code(), 0);
    assert_nothing_left(&client, &[&ns]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn deadline_reached_is_a_timeout_and_everything_is_deleted() {
    let cp = ControlPlane::shared("deadline_reached_is_a_timeout_and_everything_is_deleted");
    let client = client_for(cp.kubeconfig()).await;
    let pending = cp.namespace("vfy-pending");
    let no_pod = cp.namespace("vfy-nopod");
    let _k = [
        Kubelet::start(&client, &pending, Play::Pending),
        Kubelet::start(&client, &no_pod, Play::Nothing),
    ];
    let t0 = Instant::now();
    let report = verify(
        &client,
        config(&[&pending, &no_pod], Duration::from_secs(2)),
    )
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let p = ns_result(&report, &pending);
    assert_eq!(p.outcome, Outcome::Timeout, "{p:#?}");
    let detail = p.detail.as_deref().unwrap();
    assert!(
        detail.contains("deadline of 2s reached") && detail.contains("Pending"),
        "{detail}"
    );
    assert!(p.pod.is_some());
    assert!(
        p.targets
            .iter()
            .all(|t| t.agreement == Agreement::Unknown && t.seen == Seen::Unknown)
    );
    let n = ns_result(&report, &no_pod);
    assert_eq!(n.outcome, Outcome::Timeout);
    assert!(
        n.detail.as_deref().unwrap().contains("no pod of Job"),
        "{n:#?}"
    );
    assert_eq!(report.status, Status::Incomplete);
    assert_eq!(report.cleanup.jobs_deleted.len(), 2);
    assert_eq!(report.cleanup.pods_deleted.len(), 1);
    assert_nothing_left(&client, &[&pending, &no_pod]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn a_pod_that_cannot_start_is_reported_at_once() {
    let cp = ControlPlane::shared("a_pod_that_cannot_start_is_reported_at_once");
    let client = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-pull");
    let _k = Kubelet::start(&client, &ns, Play::Waiting("ImagePullBackOff"));
    let t0 = Instant::now();
    let report = verify(&client, config(&[&ns], Duration::from_secs(30))).await;
    assert!(t0.elapsed() < Duration::from_secs(15));
    let r = ns_result(&report, &ns);
    assert_eq!(r.outcome, Outcome::FailedToStart, "{r:#?}");
    assert!(
        r.detail.as_deref().unwrap().contains("ImagePullBackOff"),
        "{r:#?}"
    );
    assert_eq!(report.status, Status::Incomplete);
    assert_nothing_left(&client, &[&ns]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn errors_are_reported_and_cleaned_up() {
    let cp = ControlPlane::shared("errors_are_reported_and_cleaned_up");
    let client = client_for(cp.kubeconfig()).await;
    // A pod whose termination message is not a probe result (an image without
    // `probe --termination-log`: clap's usage error, exit 2).
    let garbage = cp.namespace("vfy-garbage");
    let ok = cp.namespace("vfy-ok");
    let missing = format!("vfy-missing-{}", std::process::id());
    let _k = [
        Kubelet::start(
            &client,
            &garbage,
            Play::Terminate(
                2,
                "error: unexpected argument '--termination-log' found".into(),
            ),
        ),
        Kubelet::start(&client, &ok, Play::Terminate(0, blocked())),
    ];
    let mut c = config(&[&garbage, &ok], Duration::from_secs(20));
    c.namespaces = Namespaces::Only(vec![garbage.clone(), ok.clone(), missing.clone()]);
    let snap = snapshot(&client, &[&garbage, &ok]).await;
    let report = Verify::start(client.clone(), c, snap)
        .unwrap()
        .wait()
        .await
        .unwrap();
    let g = ns_result(&report, &garbage);
    assert_eq!(g.outcome, Outcome::Error, "{g:#?}");
    let detail = g.detail.as_deref().unwrap();
    assert!(
        detail.contains("exit code 2") && detail.contains("not a probe result"),
        "{detail}"
    );
    let m = ns_result(&report, &missing);
    assert_eq!(m.outcome, Outcome::Error);
    assert!(
        m.detail.as_deref().unwrap().contains("cannot create Job"),
        "{m:#?}"
    );
    assert_eq!(ns_result(&report, &ok).outcome, Outcome::Observed);
    assert_eq!(report.status, Status::Incomplete);
    assert!(report.cleanup.errors.is_empty(), "{:?}", report.cleanup);
    assert_nothing_left(&client, &[&garbage, &ok]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn a_forbidden_pod_list_ends_the_run_and_it_still_cleans_up() {
    let cp = ControlPlane::shared("a_forbidden_pod_list_ends_the_run_and_it_still_cleans_up");
    let admin = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-rbac");
    // May create and delete the Jobs, delete pods, but not list them.
    cp.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: verify-no-pod-list, namespace: {ns}}}
rules:
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, delete, get]
- apiGroups: ['']
  resources: [pods]
  verbs: [delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: verify-no-pod-list, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: verify-no-pod-list}}
subjects:
- {{kind: ServiceAccount, name: verifier, namespace: {ns}}}
"
    ));
    let dir = scratch("rbac");
    let kubeconfig = dir.join("kubeconfig");
    cp.service_account_kubeconfig(&ns, "verifier", &kubeconfig);
    wait_for_grant(cp, &ns, "verifier", "create", "jobs.batch");
    wait_for_grant(cp, &ns, "verifier", "delete", "pods");
    let limited = client_for(&kubeconfig).await;
    let _k = Kubelet::start(&admin, &ns, Play::Pending);
    let snap = snapshot(&admin, &[&ns]).await;
    let report = Verify::start(limited, config(&[&ns], Duration::from_secs(20)), snap)
        .unwrap()
        .wait()
        .await
        .unwrap();
    let r = ns_result(&report, &ns);
    assert_eq!(r.outcome, Outcome::Error, "{r:#?}");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("forbidden") && e.contains("list")),
        "{:?}",
        report.errors
    );
    assert_eq!(report.cleanup.jobs_deleted.len(), 1, "{:?}", report.cleanup);
    assert_eq!(report.status, Status::Incomplete);
    // The Job is gone; its pod (never seen: the run could not list it) is the garbage
    // collector's, which this control plane does not run: the test removes it as the
    // collector would, after checking the Job it belongs to is gone.
    let jobs = Api::<Job>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(jobs.items.is_empty());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        pods.delete(&p.name_any(), &Default::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn cancel_stops_waiting_and_cleans_up() {
    let cp = ControlPlane::shared("cancel_stops_waiting_and_cleans_up");
    let client = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-cancel");
    let k = Kubelet::start(&client, &ns, Play::Pending);
    let snap = snapshot(&client, &[&ns]).await;
    let t0 = Instant::now();
    let run = Verify::start(
        client.clone(),
        config(&[&ns], Duration::from_secs(60)),
        snap,
    )
    .unwrap();
    wait_for_pod(&client, &ns, run.run_id()).await;
    assert_eq!(k.jobs().len(), 1);
    run.canceller().cancel();
    let report = run.wait().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(20));
    assert!(report.interrupted);
    assert_eq!(ns_result(&report, &ns).outcome, Outcome::Cancelled);
    assert_eq!(report.status, Status::Incomplete);
    assert_eq!(
        (
            report.cleanup.jobs_deleted.len(),
            report.cleanup.pods_deleted.len()
        ),
        (1, 1)
    );
    assert_nothing_left(&client, &[&ns]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn a_dropped_handle_still_cleans_up() {
    let cp = ControlPlane::shared("a_dropped_handle_still_cleans_up");
    let client = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-drop");
    let _k = Kubelet::start(&client, &ns, Play::Pending);
    let snap = snapshot(&client, &[&ns]).await;
    let run = Verify::start(
        client.clone(),
        config(&[&ns], Duration::from_secs(60)),
        snap,
    )
    .unwrap();
    wait_for_pod(&client, &ns, run.run_id()).await;
    drop(run);
    let t0 = Instant::now();
    loop {
        let jobs = Api::<Job>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
            .await
            .unwrap();
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(RUN_LABEL))
            .await
            .unwrap();
        if jobs.items.is_empty() && pods.items.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the dropped run did not clean up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the RBAC authorizer grants `verb` on `resource` to the service account
/// `ns/name` (a new RoleBinding takes effect once the API server's informers see it).
fn wait_for_grant(cp: &ControlPlane, ns: &str, name: &str, verb: &str, resource: &str) {
    let sa = format!("system:serviceaccount:{ns}:{name}");
    let t0 = Instant::now();
    loop {
        let out = cp.kubectl(
            &["auth", "can-i", verb, resource, "-n", ns, "--as", &sa],
            None,
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "yes" {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{sa} never got {verb} {resource}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_for_pod(client: &Client, ns: &str, run_id: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    loop {
        let pods = api
            .list(&ListParams::default().labels(&format!("{RUN_LABEL}={run_id}")))
            .await
            .unwrap();
        if !pods.items.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no pod of run {run_id} in {ns}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plants a Job of run `run_id` expiring at `expires_at`, with its pod, as a killed run
/// leaves them.
async fn plant(client: &Client, ns: &str, run_id: &str, expires_at: SystemTime) {
    let targets = imdsguard_core::target::Cloud::Azure.targets();
    let j = job::build(&job::JobParams {
        run_id,
        namespace: ns,
        image: "ghcr.io/imdsguard/imdsguard:test",
        cloud: imdsguard_core::target::Cloud::Azure,
        targets: &targets,
        deadline: Duration::from_secs(60),
        expires_at,
        identity: None,
    });
    let created = Api::<Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &j)
        .await
        .unwrap();
    run_pod(client, ns, &created, &Play::Pending).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn clean_removes_expired_leftovers_only() {
    let cp = ControlPlane::shared("clean_removes_expired_leftovers_only");
    let client = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-clean");
    let hour = Duration::from_secs(3600);
    plant(&client, &ns, "expired1", SystemTime::now() - hour).await;
    plant(&client, &ns, "live1", SystemTime::now() + hour).await;
    let config = CleanConfig {
        namespaces: Namespaces::Only(vec![ns.clone()]),
        include_unexpired: false,
    };
    let report = clean(&client, &config).await.unwrap();
    assert_eq!(
        report.jobs_deleted,
        [format!("{ns}/imdsguard-verify-expired1")]
    );
    assert_eq!(
        report.pods_deleted,
        [format!("{ns}/imdsguard-verify-expired1-x7k2p")]
    );
    assert_eq!(
        report.kept,
        [
            format!("Job {ns}/imdsguard-verify-live1"),
            format!("Pod {ns}/imdsguard-verify-live1-x7k2p")
        ]
    );
    let left = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        left.items.iter().map(|j| j.name_any()).collect::<Vec<_>>(),
        ["imdsguard-verify-live1"]
    );
    // --include-unexpired: the rest too.
    let report = clean(
        &client,
        &CleanConfig {
            include_unexpired: true,
            ..config
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (
            report.jobs_deleted.len(),
            report.pods_deleted.len(),
            report.kept.len()
        ),
        (1, 1, 0)
    );
    assert_nothing_left(&client, &[&ns]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn as_copies_the_workloads_labels_and_service_account() {
    let cp = ControlPlane::shared("as_copies_the_workloads_labels_and_service_account");
    let client = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-as");
    cp.apply(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web, tier: front, app.kubernetes.io/managed-by: Helm}}
    spec:
      serviceAccountName: web-sa
      containers: [{{name: web, image: registry.invalid/web:1}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny-web-egress, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Egress]
"
    ));
    let k = Kubelet::start(&client, &ns, Play::Terminate(1, reachable()));
    let mut c = config(&[&ns], Duration::from_secs(20));
    c.as_workload = Some(format!("{ns}/deploy/web").parse().unwrap());
    let report = verify(&client, c).await;
    assert_eq!(
        report.as_workload.as_deref(),
        Some(format!("{ns}/web[Deployment]").as_str())
    );
    let jobs = k.jobs();
    let template = jobs[0].spec.as_ref().unwrap().template.clone();
    let labels = template.metadata.unwrap().labels.unwrap();
    assert_eq!(
        (labels["app"].as_str(), labels["tier"].as_str()),
        ("web", "front")
    );
    assert_eq!(
        labels[MANAGED_BY_LABEL], "Helm",
        "the workload's own labels win"
    );
    assert_eq!(labels[RUN_LABEL], report.run_id);
    let spec = template.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("web-sa"));
    assert_eq!(spec.automount_service_account_token, None);
    // The pod looks like the workload's to its Services: the readiness gate nothing sets,
    // as the API server stored it, keeps it from ever being Ready (a serving endpoint).
    let gates: Vec<&str> = spec
        .readiness_gates
        .iter()
        .flatten()
        .map(|g| g.condition_type.as_str())
        .collect();
    assert_eq!(gates, [job::NEVER_READY_GATE]);
    // The policy selects app=web: the audit predicts blocked for the copied labels, the
    // probe got through: a high disagreement.
    let r = ns_result(&report, &ns);
    assert!(
        r.targets.iter().all(|t| t.severity == Some(Severity::High)),
        "{r:#?}"
    );
    assert!(
        r.targets[0]
            .predicted
            .as_ref()
            .unwrap()
            .reason
            .contains("deny-web-egress")
    );
    assert_nothing_left(&client, &[&ns]).await;
    drop(k);

    // Without --as the same namespace is not selected by the policy: predicted reachable.
    let _k2 = Kubelet::start(&client, &ns, Play::Terminate(1, reachable()));
    let report = verify(&client, config(&[&ns], Duration::from_secs(20))).await;
    let r = ns_result(&report, &ns);
    assert!(
        r.targets
            .iter()
            .all(|t| t.agreement == Agreement::Agree && t.predicted.as_ref().unwrap().reachable),
        "{r:#?}"
    );
    assert_nothing_left(&client, &[&ns]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn the_documented_role_is_enough() {
    let cp = ControlPlane::shared("the_documented_role_is_enough");
    let admin = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-role");
    // docs/verify.md, RBAC: the namespaced rules, nothing more.
    cp.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: imdsguard-verify, namespace: {ns}}}
rules:
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, delete, get, list]
- apiGroups: ['']
  resources: [pods]
  verbs: [list, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: imdsguard-verify, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: imdsguard-verify}}
subjects:
- {{kind: ServiceAccount, name: verifier, namespace: {ns}}}
"
    ));
    cp.apply(&DENY_EGRESS.replace("NS", &ns));
    let dir = scratch("role");
    let kubeconfig = dir.join("kubeconfig");
    cp.service_account_kubeconfig(&ns, "verifier", &kubeconfig);
    wait_for_grant(cp, &ns, "verifier", "create", "jobs.batch");
    wait_for_grant(cp, &ns, "verifier", "list", "pods");
    let limited = client_for(&kubeconfig).await;
    let kubelet = Kubelet::start(&admin, &ns, Play::Terminate(0, blocked()));
    let snap = snapshot(&admin, &[&ns]).await;
    let report = Verify::start(
        limited.clone(),
        config(&[&ns], Duration::from_secs(20)),
        snap,
    )
    .unwrap()
    .wait()
    .await
    .unwrap();
    assert_eq!(report.status, Status::Agree, "{report:#?}");
    assert_eq!(
        (
            report.cleanup.jobs_deleted.len(),
            report.cleanup.pods_deleted.len()
        ),
        (1, 1)
    );
    assert!(report.errors.is_empty() && report.cleanup.errors.is_empty());
    // The played kubelet stops here: it would otherwise also create a pod for the
    // planted leftover below, racing plant's own pod of the same name (409 in CI).
    drop(kubelet);
    // --clean with the same role.
    plant(
        &admin,
        &ns,
        "expired2",
        SystemTime::now() - Duration::from_secs(60),
    )
    .await;
    let cleaned = clean(
        &limited,
        &CleanConfig {
            namespaces: Namespaces::Only(vec![ns.clone()]),
            include_unexpired: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (cleaned.jobs_deleted.len(), cleaned.pods_deleted.len()),
        (1, 1),
        "{cleaned:?}"
    );
    assert_nothing_left(&admin, &[&ns]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn the_probe_pod_passes_the_restricted_pod_security_standard() {
    let cp = ControlPlane::shared("the_probe_pod_passes_the_restricted_pod_security_standard");
    let client = client_for(cp.kubeconfig()).await;
    let ns = cp.namespace("vfy-restricted");
    cp.kubectl_ok(
        &[
            "label",
            "namespace",
            &ns,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    // The API server's PodSecurity admission refuses a pod that breaks the standard: the
    // test's job controller creates the Job's pod from its template, as the real one does.
    let refused = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "root"},
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}}))
            .unwrap(),
        )
        .await;
    assert!(refused.is_err(), "PodSecurity admission is on");
    let _k = Kubelet::start(&client, &ns, Play::Terminate(0, blocked()));
    let report = verify(&client, config(&[&ns], Duration::from_secs(20))).await;
    assert_eq!(
        ns_result(&report, &ns).outcome,
        Outcome::Observed,
        "{report:#?}"
    );
    assert_nothing_left(&client, &[&ns]).await;
}
