//! `verify --cloud aws|gcp` against a real kube-apiserver (`ControlPlane`): the probe
//! Job runs `imdsguard probe --cloud X` on the metadata address, the run verifies the
//! cloud's metadata service on 169.254.169.254:80 (what that probe reports), and the
//! comparison with the audit's prediction works as for Azure: a namespace whose egress
//! is denied agrees on blocked, one without policy agrees on reachable and is
//! sensitive (credentials obtained), and nothing of the run is left.
//!
//! As in `verify.rs`, the test plays the job controller and the kubelet: it creates
//! each Job's pod and writes its status with the probe's result as the termination
//! message, built with the probe result's own types in the shape
//! `imdsguard probe --cloud aws|gcp --termination-log` writes (the metadata service as
//! the IMDS entry, WireServer and HostGAPlugin not checked).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use imdsguard_core::manifest::Loaded;
use imdsguard_core::target::{Cloud, IMDS};
use imdsguard_kube::live::{self, Connection, NoProgress};
use imdsguard_kube::verify::job::{MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL};
use imdsguard_kube::verify::{
    Agreement, EndpointResult, Namespaces, ProbeEndpoint, ProbeResult, Seen, Status, Verify,
    VerifyConfig, VerifyReport,
};
use imdsguard_kube::{Client, Config};
use imdsguard_testkit::ControlPlane;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

/// The result `imdsguard probe --cloud CLOUD --termination-log` writes: the metadata
/// service's steps as the IMDS entry, the Azure-only endpoints not checked.
fn cloud_result(
    cloud: Cloud,
    imds_steps: &[(&str, Option<u16>, bool)],
    reached: &[&str],
) -> String {
    let not_checked =
        |e| EndpointResult::from_steps(e, format!("not checked (--cloud {cloud})"), Vec::new());
    ProbeResult::new(
        vec![
            EndpointResult::from_steps(
                ProbeEndpoint::Imds,
                "169.254.169.254:80",
                imds_steps.iter().copied(),
            ),
            not_checked(ProbeEndpoint::Wireserver),
            not_checked(ProbeEndpoint::Hostgaplugin),
        ],
        reached.iter().map(|s| (*s).to_owned()).collect(),
    )
    .to_message()
}

/// The job controller and kubelet of one namespace: each Job's pod, terminated with
/// `message` and `code`.
struct Kubelet {
    task: JoinHandle<()>,
    jobs: Arc<Mutex<Vec<Job>>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    fn start(client: &Client, ns: &str, code: i32, message: String) -> Kubelet {
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
                            run_pod(&client, &ns, &j, code, &message).await;
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

async fn run_pod(client: &Client, ns: &str, job: &Job, code: i32, message: &str) {
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
    let status = json!({"status": {
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{"name": "probe", "ready": false, "restartCount": 0,
            "image": "ghcr.io/imdsguard/imdsguard:test", "imageID": "",
            "state": {"terminated": {"exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "message": message, "startedAt": now, "finishedAt": now}}}]}});
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("the test writes the pod's status");
}

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

async fn verify(client: &Client, cloud: Cloud, namespaces: &[&str]) -> VerifyReport {
    let mut c = VerifyConfig::new(Namespaces::Only(
        namespaces.iter().map(|s| (*s).to_owned()).collect(),
    ))
    .for_cloud(cloud);
    c.image = "ghcr.io/imdsguard/imdsguard:test".into();
    c.deadline = Duration::from_secs(20);
    c.poll_interval = Duration::from_millis(100);
    c.check().expect("the per-cloud defaults are valid");
    let snap = snapshot(client, namespaces).await;
    Verify::start(client.clone(), c, snap)
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

async fn assert_nothing_left(client: &Client, namespaces: &[&str]) {
    for ns in namespaces {
        let jobs = Api::<Job>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
            .await
            .unwrap();
        assert!(jobs.items.is_empty(), "Jobs left in {ns}");
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(RUN_LABEL))
            .await
            .unwrap();
        assert!(pods.items.is_empty(), "pods left in {ns}");
    }
}

async fn run_cloud(cloud: Cloud, open_steps: &[(&str, Option<u16>, bool)], reached: &[&str]) {
    let cp = ControlPlane::shared(&format!("verify_cloud_{cloud}"));
    let client = client_for(cp.kubeconfig()).await;
    let blocked_ns = cp.namespace(&format!("vfy-{cloud}-blocked"));
    let open_ns = cp.namespace(&format!("vfy-{cloud}-open"));
    cp.apply(&DENY_EGRESS.replace("NS", &blocked_ns));
    let blocked = cloud_result(
        cloud,
        &[
            ("blocked-timeout", None, false),
            ("not-checked", None, false),
        ],
        &[],
    );
    let k = [
        Kubelet::start(&client, &blocked_ns, 0, blocked),
        Kubelet::start(
            &client,
            &open_ns,
            1,
            cloud_result(cloud, open_steps, reached),
        ),
    ];
    let all = [blocked_ns.as_str(), open_ns.as_str()];
    let report = verify(&client, cloud, &all).await;

    // The probe Job walks the cloud on the metadata address.
    for kubelet in &k {
        let jobs = kubelet.jobs();
        assert_eq!(jobs.len(), 1);
        let pod = jobs[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let args = pod.containers[0].args.as_ref().unwrap().join(" ");
        assert!(
            args.starts_with(&format!("probe --cloud {cloud} "))
                && args.ends_with("--endpoint http://169.254.169.254")
                && !args.contains("--wireserver"),
            "{args}"
        );
    }
    assert_eq!(report.cloud, cloud);
    assert_eq!(report.targets, [IMDS]);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["cloud"], cloud.name());

    let ns = |n: &str| report.namespaces.iter().find(|r| r.namespace == n).unwrap();
    let b = ns(&blocked_ns);
    assert_eq!(b.targets.len(), 1);
    assert_eq!(
        (b.targets[0].agreement, b.targets[0].seen),
        (Agreement::Agree, Seen::Blocked),
        "{b:#?}"
    );
    assert!(!b.sensitive);
    let o = ns(&open_ns);
    assert_eq!(
        (o.targets[0].agreement, o.targets[0].seen),
        (Agreement::Agree, Seen::Reachable),
        "{o:#?}"
    );
    assert!(o.sensitive, "{o:#?}");
    assert_eq!(report.summary.reached, 1, "{:#?}", report.summary);
    assert_eq!(report.status, Status::Finding);
    drop(k);
    assert_nothing_left(&client, &all).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn verify_aws_probes_imds_with_the_aws_probe_and_compares() {
    run_cloud(
        Cloud::Aws,
        &[
            ("reachable", None, false),
            ("session-token", Some(200), true),
            ("readable", Some(200), false),
            ("credentials-obtained", Some(200), true),
        ],
        &["the node role's credentials (ASIA… sha256:0123456789ab)"],
    )
    .await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn verify_gcp_probes_the_metadata_server_with_the_gcp_probe_and_compares() {
    run_cloud(
        Cloud::Gcp,
        &[
            ("reachable", None, false),
            ("needs-header", Some(403), false),
            ("readable", Some(200), false),
            ("token-obtained", Some(200), true),
        ],
        &["an access token of the default service account"],
    )
    .await;
}
