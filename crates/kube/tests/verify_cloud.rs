//! `verify --cloud aws|gcp` against a real kube-apiserver (`ControlPlane`): the probe
//! Job runs `imdsguard probe --cloud X --ipv6 [--pod-identity]` on the metadata address,
//! the run verifies what that probe reports (the cloud's metadata service on
//! 169.254.169.254:80 and on its IPv6 address, and AWS's EKS Pod Identity agent on both
//! families), and the comparison with the audit's prediction works as for Azure: a
//! namespace whose egress is denied agrees on blocked, one without policy agrees on
//! reachable and is sensitive (credentials obtained), and nothing of the run is left.
//! On a dual-stack cluster, policies that deny 169.254.169.254/32 only leave the IPv6
//! address open: the audit says so, the probe sees so, and they agree; where the audit
//! says blocked and the probe got through on IPv6, they disagree (high). On a
//! single-stack cluster (the probe pod's status names an IPv4 address alone) the IPv6
//! targets are not applicable: the same IPv4-only deny and the probe's refused IPv6
//! connect give no disagreement, where a dual-stack pod's give a medium one.
//!
//! As in `verify.rs`, the test plays the job controller and the kubelet: it creates
//! each Job's pod and writes its status (its addresses, `podIP` and `podIPs`: dual-stack
//! unless said otherwise) with the probe's result as the termination message, built with the probe result's own types in the shape
//! `imdsguard probe --cloud aws|gcp --termination-log` writes (the metadata service as
//! the IMDS entry, WireServer and HostGAPlugin not checked, each extra TCP check an
//! endpoint of its own).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use imdsguard_core::audit::Severity;
use imdsguard_core::manifest::Loaded;
use imdsguard_core::target::{
    AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6, Cloud, GCP_METADATA_IPV6, IMDS, Target,
};
use imdsguard_kube::live::{self, Connection, NoProgress};
use imdsguard_kube::verify::job::{MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL};
use imdsguard_kube::verify::{
    Agreement, EndpointResult, Namespaces, ProbeEndpoint, ProbeResult, Seen, Status, Verify,
    VerifyConfig, VerifyReport,
};

/// A dual-stack pod's addresses, as the kubelet writes them (`podIPs`, IPv4 first).
const DUAL_STACK: &[&str] = &["10.244.1.7", "fd00:10:244:1::7"];
/// A single-stack (IPv4-only) pod's address.
const SINGLE_STACK: &[&str] = &["10.244.1.7"];
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

/// The result `imdsguard probe --cloud CLOUD --ipv6 [--pod-identity] --termination-log`
/// writes: the metadata service's steps as the IMDS entry, the Azure-only endpoints not
/// checked, then each extra TCP check (the IPv6 address; AWS: the Pod Identity agent on
/// IPv4 and IPv6) with the class its step ended with.
fn cloud_result(
    cloud: Cloud,
    imds_steps: &[(&str, Option<u16>, bool)],
    extra: &[&str],
    reached: &[&str],
) -> String {
    let not_checked =
        |e| EndpointResult::from_steps(e, format!("not checked (--cloud {cloud})"), Vec::new());
    let mut endpoints = vec![
        EndpointResult::from_steps(
            ProbeEndpoint::Imds,
            "169.254.169.254:80",
            imds_steps.iter().copied(),
        ),
        not_checked(ProbeEndpoint::Wireserver),
        not_checked(ProbeEndpoint::Hostgaplugin),
    ];
    let checks = &ProbeEndpoint::of_cloud(cloud)[1..];
    assert_eq!(
        checks.len(),
        extra.len(),
        "one class per extra check of {cloud}"
    );
    for (&e, class) in checks.iter().zip(extra) {
        let address = e.target_in(cloud).unwrap().to_string();
        let address = address.trim_end_matches("/TCP");
        endpoints.push(EndpointResult::from_steps(
            e,
            address,
            [(*class, None, false)],
        ));
    }
    ProbeResult::new(endpoints, reached.iter().map(|s| (*s).to_owned()).collect()).to_message()
}

/// The targets these tests verify: the defaults of `verify --cloud CLOUD` and, under
/// AWS, the Pod Identity agent named with `--target` (not checked by default).
fn cloud_targets(cloud: Cloud) -> Vec<Target> {
    match cloud {
        Cloud::Aws => vec![IMDS, AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6],
        Cloud::Gcp => vec![IMDS, GCP_METADATA_IPV6],
        Cloud::Azure => unreachable!("the Azure runs are verify.rs's"),
    }
}

/// The probe's extra flags for `cloud`'s default targets.
fn extra_flags(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Aws => " --ipv6 --pod-identity",
        _ => " --ipv6",
    }
}

/// The job controller and kubelet of one namespace: each Job's pod, with the addresses
/// `pod_ips`, terminated with `message` and `code`.
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
        Kubelet::start_with_ips(client, ns, DUAL_STACK, code, message)
    }

    fn start_with_ips(
        client: &Client,
        ns: &str,
        pod_ips: &'static [&'static str],
        code: i32,
        message: String,
    ) -> Kubelet {
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
                            run_pod(&client, &ns, &j, pod_ips, code, &message).await;
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

async fn run_pod(client: &Client, ns: &str, job: &Job, pod_ips: &[&str], code: i32, message: &str) {
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
        "podIP": pod_ips[0],
        "podIPs": pod_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
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
    verify_targets(client, cloud, namespaces, &cloud_targets(cloud)).await
}

/// A run over `namespaces` verifying the defaults of `--cloud CLOUD` and `targets`.
async fn verify_targets(
    client: &Client,
    cloud: Cloud,
    namespaces: &[&str],
    targets: &[Target],
) -> VerifyReport {
    let mut c = VerifyConfig::new(Namespaces::Only(
        namespaces.iter().map(|s| (*s).to_owned()).collect(),
    ))
    .for_cloud(cloud);
    for t in targets {
        if !c.targets.contains(t) {
            c.targets.push(*t);
        }
    }
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

/// The Job's probe command line.
fn probe_command(job: &Job) -> String {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers[0].args.as_ref().unwrap().join(" ")
}

async fn run_cloud(cloud: Cloud, open_steps: &[(&str, Option<u16>, bool)], reached: &[&str]) {
    let cp = ControlPlane::shared(&format!("verify_cloud_{cloud}"));
    let client = client_for(cp.kubeconfig()).await;
    let blocked_ns = cp.namespace(&format!("vfy-{cloud}-blocked"));
    let open_ns = cp.namespace(&format!("vfy-{cloud}-open"));
    cp.apply(&DENY_EGRESS.replace("NS", &blocked_ns));
    let targets = cloud_targets(cloud);
    let checks = targets.len() - 1;
    let blocked = cloud_result(
        cloud,
        &[
            ("blocked-timeout", None, false),
            ("not-checked", None, false),
        ],
        &vec!["blocked-timeout"; checks],
        &[],
    );
    let k = [
        Kubelet::start(&client, &blocked_ns, 0, blocked),
        Kubelet::start(
            &client,
            &open_ns,
            1,
            cloud_result(cloud, open_steps, &vec!["reachable"; checks], reached),
        ),
    ];
    let all = [blocked_ns.as_str(), open_ns.as_str()];
    let report = verify(&client, cloud, &all).await;

    // The probe Job walks the cloud on the metadata address, and checks the IPv6
    // address (and AWS's Pod Identity agent) over TCP.
    for kubelet in &k {
        let jobs = kubelet.jobs();
        assert_eq!(jobs.len(), 1);
        let args = probe_command(&jobs[0]);
        assert_eq!(
            args,
            format!(
                "probe --cloud {cloud} --format json --termination-log /dev/termination-log \
                 --endpoint http://169.254.169.254{}",
                extra_flags(cloud)
            )
        );
    }
    assert_eq!(report.cloud, cloud);
    assert_eq!(report.targets, targets);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["cloud"], cloud.name());

    let ns = |n: &str| report.namespaces.iter().find(|r| r.namespace == n).unwrap();
    let b = ns(&blocked_ns);
    assert_eq!(
        b.targets
            .iter()
            .map(|t| (t.target, t.agreement, t.seen))
            .collect::<Vec<_>>(),
        targets
            .iter()
            .map(|t| (*t, Agreement::Agree, Seen::Blocked))
            .collect::<Vec<_>>(),
        "{b:#?}"
    );
    assert!(!b.sensitive);
    let o = ns(&open_ns);
    assert_eq!(
        o.targets
            .iter()
            .map(|t| (t.target, t.agreement, t.seen))
            .collect::<Vec<_>>(),
        targets
            .iter()
            .map(|t| (*t, Agreement::Agree, Seen::Reachable))
            .collect::<Vec<_>>(),
        "{o:#?}"
    );
    assert!(o.sensitive, "{o:#?}");
    assert!(o.targets[0].sensitive && !o.targets[1].sensitive, "{o:#?}");
    assert_eq!(
        report.summary.reached,
        targets.len(),
        "{:#?}",
        report.summary
    );
    assert_eq!(report.status, Status::Finding);
    drop(k);
    assert_nothing_left(&client, &all).await;
}

/// Policies that deny 169.254.169.254/32 only: every other IPv4 address, and all of
/// IPv6, stays allowed (the bypass the audit finds on a dual-stack cluster).
const DENY_IMDS_IPV4_ONLY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-imds-ipv4, namespace: NS}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}
    - ipBlock: {cidr: '::/0'}
";

/// A dual-stack cluster: in one namespace the policies deny 169.254.169.254/32 only and
/// the probe reaches the IPv6 address (and, AWS, the Pod Identity agent): verify
/// reports the IPv6 target open, agreeing with the audit. In another every egress is
/// denied, but the dataplane enforces IPv4 only and the probe reaches the IPv6
/// addresses: verify reports those targets as high disagreements.
async fn run_dual_stack(cloud: Cloud) {
    let cp = ControlPlane::shared(&format!("verify_cloud_dual_stack_{cloud}"));
    let client = client_for(cp.kubeconfig()).await;
    let v4_only_ns = cp.namespace(&format!("vfy-{cloud}-v4only"));
    let ipv4_enforced_ns = cp.namespace(&format!("vfy-{cloud}-v4enf"));
    cp.apply(&DENY_IMDS_IPV4_ONLY.replace("NS", &v4_only_ns));
    cp.apply(&DENY_EGRESS.replace("NS", &ipv4_enforced_ns));
    let targets = cloud_targets(cloud);
    let imds_blocked = [
        ("blocked-timeout", None, false),
        ("not-checked", None, false),
    ];
    // What the probe sees in both namespaces: IPv4 dropped, IPv6 open; AWS: the Pod
    // Identity agent open on IPv4 in the first (allowed there), dropped in the second.
    let (v4_only, ipv4_enforced): (Vec<&str>, Vec<&str>) = match cloud {
        Cloud::Aws => (
            vec!["reachable", "reachable", "reachable"],
            vec!["reachable", "blocked-timeout", "reachable"],
        ),
        _ => (vec!["reachable"], vec!["reachable"]),
    };
    let k = [
        Kubelet::start(
            &client,
            &v4_only_ns,
            0,
            cloud_result(cloud, &imds_blocked, &v4_only, &[]),
        ),
        Kubelet::start(
            &client,
            &ipv4_enforced_ns,
            0,
            cloud_result(cloud, &imds_blocked, &ipv4_enforced, &[]),
        ),
    ];
    let all = [v4_only_ns.as_str(), ipv4_enforced_ns.as_str()];
    let report = verify(&client, cloud, &all).await;
    for kubelet in &k {
        let jobs = kubelet.jobs();
        assert_eq!(jobs.len(), 1);
        assert!(
            probe_command(&jobs[0]).ends_with(extra_flags(cloud)),
            "{}",
            probe_command(&jobs[0])
        );
    }
    assert_eq!(report.targets, targets);
    let ns = |n: &str| report.namespaces.iter().find(|r| r.namespace == n).unwrap();
    let ipv6 = targets[1];

    // IPv4-only deny: IMDS blocked on IPv4, open on IPv6, and the audit says the same.
    let r = ns(&v4_only_ns);
    let got: Vec<_> = r
        .targets
        .iter()
        .map(|t| {
            (
                t.target,
                t.seen,
                t.predicted.as_ref().map(|p| p.reachable),
                t.agreement,
            )
        })
        .collect();
    let mut want = vec![(IMDS, Seen::Blocked, Some(false), Agreement::Agree)];
    want.extend(
        targets[1..]
            .iter()
            .map(|t| (*t, Seen::Reachable, Some(true), Agreement::Agree)),
    );
    assert_eq!(got, want, "{r:#?}");
    let open = r.targets.iter().find(|t| t.target == ipv6).unwrap();
    assert!(open.reached() && open.message.is_none(), "{open:#?}");

    // Every egress denied, the probe through on IPv6: high disagreements there.
    let r = ns(&ipv4_enforced_ns);
    for t in &r.targets {
        assert_eq!(
            t.predicted.as_ref().map(|p| p.reachable),
            Some(false),
            "{t:#?}"
        );
        if t.target.ip.is_ipv6() {
            assert_eq!(
                (t.seen, t.agreement, t.severity),
                (Seen::Reachable, Agreement::Disagree, Some(Severity::High)),
                "{t:#?}"
            );
            assert!(
                t.message.as_deref().unwrap().contains("probe got through"),
                "{t:#?}"
            );
        } else {
            assert_eq!(
                (t.seen, t.agreement),
                (Seen::Blocked, Agreement::Agree),
                "{t:#?}"
            );
        }
    }
    let ipv6_targets = targets.iter().filter(|t| t.ip.is_ipv6()).count();
    assert_eq!(report.summary.high, ipv6_targets, "{:#?}", report.summary);
    assert_eq!(report.summary.medium, 0, "{:#?}", report.summary);
    assert_eq!(report.summary.agree, 1, "{:#?}", report.summary);
    assert_eq!(report.status, Status::Finding);

    // The JSON report names each target with what the probe saw.
    let json = serde_json::to_value(&report).unwrap();
    let v4_only_json = json["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == v4_only_ns.as_str())
        .unwrap();
    let ipv6_json = v4_only_json["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == ipv6.to_string())
        .unwrap_or_else(|| panic!("{v4_only_json:#}"));
    assert_eq!(ipv6_json["seen"], "reachable", "{ipv6_json:#}");
    assert_eq!(ipv6_json["agreement"], "agree", "{ipv6_json:#}");
    drop(k);
    assert_nothing_left(&client, &all).await;
}

/// What `imdsguard probe --cloud CLOUD --ipv6 --termination-log` writes in a pod
/// without IPv6 under an IPv4-only deny: the metadata service dropped on IPv4, the IPv6
/// connect refused at once (no IPv6 address, no route).
fn single_stack_result(cloud: Cloud) -> String {
    let not_checked =
        |e| EndpointResult::from_steps(e, format!("not checked (--cloud {cloud})"), Vec::new());
    let ipv6 = ProbeEndpoint::ImdsIpv6
        .target_in(cloud)
        .unwrap()
        .to_string();
    ProbeResult::new(
        vec![
            EndpointResult::from_steps(
                ProbeEndpoint::Imds,
                "169.254.169.254:80",
                [
                    ("blocked-timeout", None, false),
                    ("not-checked", None, false),
                ],
            ),
            not_checked(ProbeEndpoint::Wireserver),
            not_checked(ProbeEndpoint::Hostgaplugin),
            EndpointResult::from_steps(
                ProbeEndpoint::ImdsIpv6,
                ipv6.trim_end_matches("/TCP"),
                [("blocked-refused", None, false)],
            ),
        ],
        Vec::new(),
    )
    .to_message()
}

/// A single-stack cluster under the usual IPv4-only deny, with `verify --cloud CLOUD`'s
/// defaults (the metadata service on both families): the probe pod's status names an
/// IPv4 address alone, its IPv6 connect is refused at once, and the IPv6 target is not
/// applicable: no disagreement, exit status 0, the IPv4 target agreeing on blocked. The
/// same probe result from a dual-stack pod (the policies allow IPv6, the probe was
/// refused there) stays a medium disagreement: the pod's addresses decide.
async fn run_single_stack(cloud: Cloud) {
    let cp = ControlPlane::shared(&format!("verify_cloud_single_stack_{cloud}"));
    let client = client_for(cp.kubeconfig()).await;
    let single_ns = cp.namespace(&format!("vfy-{cloud}-v4pod"));
    let dual_ns = cp.namespace(&format!("vfy-{cloud}-v6pod"));
    for ns in [&single_ns, &dual_ns] {
        cp.apply(&DENY_IMDS_IPV4_ONLY.replace("NS", ns));
    }
    let defaults = VerifyConfig::new(Namespaces::All).for_cloud(cloud).targets;
    let ipv6 = defaults[1];
    assert_eq!(
        (defaults.len(), ipv6.ip.is_ipv6()),
        (2, true),
        "{defaults:?}"
    );

    let k = Kubelet::start_with_ips(
        &client,
        &single_ns,
        SINGLE_STACK,
        0,
        single_stack_result(cloud),
    );
    let report = verify_targets(&client, cloud, &[single_ns.as_str()], &[]).await;
    let jobs = k.jobs();
    assert_eq!(jobs.len(), 1);
    assert!(
        probe_command(&jobs[0]).ends_with("http://169.254.169.254 --ipv6"),
        "{}",
        probe_command(&jobs[0])
    );
    assert_eq!(report.targets, defaults);
    let r = &report.namespaces[0];
    assert_eq!(
        r.pod_ips,
        vec!["10.244.1.7".parse::<std::net::IpAddr>().unwrap()],
        "{r:#?}"
    );
    let got: Vec<_> = r
        .targets
        .iter()
        .map(|t| {
            (
                t.target,
                t.seen,
                t.predicted.as_ref().map(|p| p.reachable),
                t.agreement,
                t.severity,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (IMDS, Seen::Blocked, Some(false), Agreement::Agree, None),
            // The audit says reachable (IPv6 is allowed), the probe was refused: not a
            // disagreement, the pod has no IPv6.
            (
                ipv6,
                Seen::Blocked,
                Some(true),
                Agreement::NotApplicable,
                None
            ),
        ],
        "{r:#?}"
    );
    assert!(
        r.targets[1]
            .message
            .as_deref()
            .unwrap()
            .contains("no IPv6 address"),
        "{r:#?}"
    );
    let s = &report.summary;
    assert_eq!(
        (
            s.agree,
            s.high,
            s.medium,
            s.reached,
            s.unknown,
            s.not_applicable
        ),
        (1, 0, 0, 0, 0, 1),
        "{s:#?}"
    );
    assert_eq!(report.status, Status::Agree);
    assert_eq!(report.status.code(), 0);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["namespaces"][0]["pod_ips"], json!(["10.244.1.7"]));
    assert_eq!(
        json["namespaces"][0]["targets"][1]["agreement"],
        "not-applicable"
    );
    assert_eq!(json["summary"]["not_applicable"], 1);
    drop(k);

    // The same result from a dual-stack pod: a medium disagreement, exit status 1.
    let k = Kubelet::start_with_ips(&client, &dual_ns, DUAL_STACK, 0, single_stack_result(cloud));
    let report = verify_targets(&client, cloud, &[dual_ns.as_str()], &[]).await;
    let r = &report.namespaces[0];
    assert_eq!(r.pod_ips.len(), 2, "{r:#?}");
    assert_eq!(
        (r.targets[1].agreement, r.targets[1].severity),
        (Agreement::Disagree, Some(Severity::Medium)),
        "{r:#?}"
    );
    assert_eq!(
        (report.summary.medium, report.summary.not_applicable),
        (1, 0)
    );
    assert_eq!(report.status, Status::Finding);
    drop(k);
    assert_nothing_left(&client, &[single_ns.as_str(), dual_ns.as_str()]).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn verify_aws_single_stack_ipv6_targets_are_not_applicable() {
    run_single_stack(Cloud::Aws).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn verify_gcp_single_stack_ipv6_targets_are_not_applicable() {
    run_single_stack(Cloud::Gcp).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn verify_aws_dual_stack_sees_the_ipv6_address_an_ipv4_only_deny_leaves_open() {
    run_dual_stack(Cloud::Aws).await;
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn verify_gcp_dual_stack_sees_the_ipv6_address_an_ipv4_only_deny_leaves_open() {
    run_dual_stack(Cloud::Gcp).await;
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
