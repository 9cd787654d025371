//! The agent's Kubernetes glue against a real kube-apiserver with etcd on 127.0.0.1
//! (`imdsguard_testkit::ControlPlane`, started by the test harness; see
//! `scripts/control-plane.sh`): the node-scoped pod watch (field selector
//! `spec.nodeName`), the pods' interfaces, and the `MetadataAccessBlocked` Warning Events
//! read back through both Event APIs, plus the faults a real server produces on demand
//! (forbidden, a missing namespace, a server that goes away).
//!
//! There is no scheduler or kubelet: pods are bound to a node by writing `spec.nodeName`
//! at creation, the test plays the kubelet's part by writing `status` (podIP, phase)
//! through the status subresource, and removes a running pod with grace period 0 (with a
//! longer grace period it stays terminating, waiting for a kubelet that never comes).
//! The control plane is shared by the tests of this binary: each test has namespaces and
//! a node name of its own, so no test sees another's pods. The faults a real server
//! cannot be made to produce stay in `tests/fake_api.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imdsguard_core::pods::PodPhase;
use imdsguard_kube::events::{ACTION, COMPONENT, REASON};
use imdsguard_kube::{
    BlockedAccess, Client, Config, EventReporter, InterfaceResolver, PodWatch, Snapshot,
};
use imdsguard_testkit::ControlPlane;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long a change may take to reach a snapshot or the API.
const WAIT: Duration = Duration::from_secs(20);

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

/// A pod of `ns` bound to `node` (none: unscheduled), with these labels, annotations
/// and hostNetwork; one container, as the API requires.
fn pod(ns: &str, name: &str, node: Option<&str>, extra: Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/none:1"}],
                 "serviceAccountName": format!("{name}-sa")}
    });
    if let Some(node) = node {
        p["spec"]["nodeName"] = json!(node);
    }
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        if let (Some(to), Some(from)) = (p[&k].as_object_mut(), v.as_object()) {
            to.extend(from.clone());
        }
    }
    serde_json::from_value(p).expect("a pod")
}

/// Creates the pod, and when `status` is given writes it as the kubelet would
/// (`{"phase": …, "ip": …}`: podIP and podIPs from `ip`).
async fn create(client: &Client, p: Pod, phase: Option<&str>, ip: Option<&str>) -> Pod {
    let ns = p.metadata.namespace.clone().unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = api.create(&PostParams::default(), &p).await.unwrap();
    if phase.is_some() || ip.is_some() {
        set_status(
            client,
            &ns,
            created.metadata.name.as_deref().unwrap(),
            phase,
            ip,
        )
        .await
    } else {
        created
    }
}

/// Writes the pod's status through the status subresource (the kubelet's part).
async fn set_status(
    client: &Client,
    ns: &str,
    name: &str,
    phase: Option<&str>,
    ip: Option<&str>,
) -> Pod {
    let mut status = json!({});
    if let Some(phase) = phase {
        status["phase"] = json!(phase);
    }
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"))
}

/// Deletes the pod at once (grace period 0: no kubelet will finish a graceful delete).
async fn force_delete(client: &Client, ns: &str, name: &str) {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap_or_else(|e| panic!("delete {ns}/{name}: {e}"));
}

/// Route lookups: `azv` and the address's last number; counted.
fn fake_routes(lookups: Arc<AtomicUsize>) -> InterfaceResolver {
    InterfaceResolver::with_lookup(Arc::new(move |a: IpAddr| {
        lookups.fetch_add(1, Ordering::SeqCst);
        Some(format!(
            "azv{}",
            a.to_string().rsplit('.').next().unwrap_or("x")
        ))
    }))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn names(s: &Snapshot) -> Vec<String> {
    s.pods().iter().map(|p| p.id()).collect()
}

fn owners(s: &Snapshot) -> Vec<(IpAddr, String)> {
    let mut v: Vec<(IpAddr, String)> = s.index().iter().map(|(a, p)| (a, p.id())).collect();
    v.sort();
    v
}

/// The next snapshot for which `done` holds; every snapshot seen on the way must pass
/// `always` (what must never be published, e.g. another node's pod).
async fn until(
    rx: &mut watch::Receiver<Option<Arc<Snapshot>>>,
    what: &str,
    always: impl Fn(&Snapshot) -> Result<(), String>,
    done: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let wait = async {
        loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                if let Err(e) = always(&s) {
                    panic!("while waiting for {what}: {e}: {:?}", names(&s));
                }
                if done(&s) {
                    return s;
                }
            }
            rx.changed().await.expect("the watch still running");
        }
    };
    match tokio::time::timeout(WAIT, wait).await {
        Ok(s) => s,
        Err(_) => panic!("no snapshot with {what} within {WAIT:?}: {:?}", rx.borrow()),
    }
}

/// Polls `f` until it gives `Some`, failing after [`WAIT`].
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, f: impl Fn() -> F) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pods the API lists for the node, as `namespace/name`, sorted.
async fn listed_on(client: &Client, node: &str) -> Vec<String> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let mut v: Vec<String> = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap(),
                p.metadata.name.as_deref().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs control plane"]
async fn the_node_watch_sees_exactly_this_nodes_pods_through_adds_changes_and_deletes() {
    let cp = ControlPlane::shared(
        "the_node_watch_sees_exactly_this_nodes_pods_through_adds_changes_and_deletes",
    );
    let ns = cp.namespace("kube-watch");
    let side = cp.namespace("kube-watch-side");
    let node = format!("node-{ns}");
    let elsewhere = format!("other-{ns}");
    let c = client(cp.kubeconfig()).await;

    // On the node: web (its interface annotated), a hostNetwork pod, a finished Job pod,
    // a pod without an address yet, and a pod of another namespace (the watch is
    // cluster-wide). Not on it: a pod of another node and an unscheduled one.
    let annotated = json!({"metadata": {"annotations": {"imdsguard.io/interface": "azvweb"}}});
    let web = create(
        &c,
        pod(&ns, "web", Some(&node), annotated),
        Some("Running"),
        Some("10.244.0.11"),
    )
    .await;
    let host = json!({"spec": {"hostNetwork": true}});
    create(
        &c,
        pod(&ns, "ds", Some(&node), host),
        Some("Running"),
        Some("10.224.0.4"),
    )
    .await;
    create(
        &c,
        pod(&ns, "job", Some(&node), json!({})),
        Some("Succeeded"),
        Some("10.244.0.13"),
    )
    .await;
    create(&c, pod(&ns, "new", Some(&node), json!({})), None, None).await;
    create(
        &c,
        pod(&side, "side", Some(&node), json!({})),
        Some("Running"),
        Some("10.244.0.14"),
    )
    .await;
    create(
        &c,
        pod(&ns, "far", Some(&elsewhere), json!({})),
        Some("Running"),
        Some("10.244.9.9"),
    )
    .await;
    create(&c, pod(&ns, "unscheduled", None, json!({})), None, None).await;

    let only_this_node = |s: &Snapshot| -> Result<(), String> {
        match s
            .pods()
            .iter()
            .find(|p| p.info.name == "far" || p.info.name == "unscheduled")
        {
            Some(p) => Err(format!("{} is not on {node}", p.id())),
            None => Ok(()),
        }
    };
    let lookups = Arc::new(AtomicUsize::new(0));
    let mut w = PodWatch::start(c.clone(), &node, fake_routes(lookups.clone()));
    let mut rx = w.subscribe();
    let first = tokio::time::timeout(WAIT, w.initial())
        .await
        .expect("the first list in time")
        .expect("a snapshot");
    only_this_node(&first).unwrap();
    let n = |name: &str| format!("{ns}/{name}");
    let side_id = format!("{side}/side");
    let mut want = vec![n("ds"), n("job"), n("new"), n("web"), side_id.clone()];
    want.sort();
    assert_eq!(names(&first), want);
    assert_eq!(
        listed_on(&c, &node).await,
        want,
        "what the API lists for the node"
    );
    // The core's index decides who owns what: hostNetwork, finished and address-less
    // pods own nothing and their interfaces are not looked up; web's annotation is its
    // interface (no lookup); side's comes from the route.
    assert_eq!(
        owners(&first),
        [
            (ip("10.244.0.11"), n("web")),
            (ip("10.244.0.14"), side_id.clone())
        ]
    );
    let web_pod = first.get(&ns, "web").unwrap();
    assert_eq!(web_pod.interface.as_deref(), Some("azvweb"));
    assert_eq!(web_pod.info.service_account, "web-sa");
    assert_eq!(
        web_pod.info.labels.get("app").map(String::as_str),
        Some("web")
    );
    assert_eq!(web_pod.uid, web.metadata.uid, "the UID the API gave it");
    assert_eq!(web_pod.phase, PodPhase::Running);
    assert!(first.get(&ns, "ds").unwrap().host_network);
    assert_eq!(first.get(&ns, "job").unwrap().phase, PodPhase::Succeeded);
    for name in ["ds", "job", "new"] {
        assert_eq!(first.get(&ns, name).unwrap().interface, None, "{name}");
    }
    assert_eq!(
        first.get(&side, "side").unwrap().interface.as_deref(),
        Some("azv14")
    );
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
    assert_eq!(
        w.store().len(),
        5,
        "the reflector's store holds the node's pods"
    );
    assert!(
        w.store()
            .state()
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(node.as_str()))
    );

    // Added: api, then the kubelet's status gives it its address (looked up).
    create(&c, pod(&ns, "api", Some(&node), json!({})), None, None).await;
    set_status(&c, &ns, "api", Some("Running"), Some("10.244.0.12")).await;
    // And one more pod elsewhere, which must not show up.
    create(
        &c,
        pod(&ns, "far2", Some(&elsewhere), json!({})),
        Some("Running"),
        Some("10.244.9.10"),
    )
    .await;
    let s = until(&mut rx, "api with its address", &only_this_node, |s| {
        s.get(&ns, "api").is_some_and(|p| !p.addrs.is_empty())
    })
    .await;
    assert!(s.get(&ns, "far2").is_none());
    assert_eq!(
        s.index().pod(&ns, "api").unwrap().interface.as_deref(),
        Some("azv12")
    );

    // Modified: api relabelled, web finished (its address is no longer its), new gets an
    // address (looked up).
    Api::<Pod>::namespaced(c.clone(), &ns)
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "back"}}})),
        )
        .await
        .unwrap();
    set_status(&c, &ns, "web", Some("Succeeded"), None).await;
    set_status(&c, &ns, "new", Some("Running"), Some("10.244.0.15")).await;
    let s = until(&mut rx, "the modifications", &only_this_node, |s| {
        s.get(&ns, "new").is_some_and(|p| !p.addrs.is_empty())
            && s.get(&ns, "web").unwrap().phase == PodPhase::Succeeded
            && s.get(&ns, "api").unwrap().info.labels.contains_key("tier")
    })
    .await;
    assert_eq!(
        owners(&s),
        [
            (ip("10.244.0.12"), n("api")),
            (ip("10.244.0.14"), side_id.clone()),
            (ip("10.244.0.15"), n("new")),
        ]
    );
    assert_eq!(
        s.get(&ns, "new").unwrap().interface.as_deref(),
        Some("azv15")
    );
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        3,
        "side's, api's (once, cached across its changes) and new's"
    );

    // A graceful delete of a running pod: with no kubelet to finish it, the pod stays,
    // terminating (and still owning its address: it may still be running). A finished
    // pod is deleted at once by the API server, graceful or not.
    let pods: Api<Pod> = Api::namespaced(c.clone(), &ns);
    pods.delete("api", &DeleteParams::default()).await.unwrap();
    pods.delete("job", &DeleteParams::default()).await.unwrap();
    let s = until(&mut rx, "api terminating, job gone", &only_this_node, |s| {
        s.get(&ns, "api").is_some_and(|p| p.terminating) && s.get(&ns, "job").is_none()
    })
    .await;
    assert!(s.get(&ns, "api").unwrap().claims_addresses());
    assert_eq!(s.index().get(ip("10.244.0.12")).unwrap().id(), n("api"));

    // Deleted with grace period 0: api, web and ds go; side (another namespace) stays.
    for name in ["api", "web", "ds"] {
        force_delete(&c, &ns, name).await;
    }
    let s = until(&mut rx, "api, web and ds deleted", &only_this_node, |s| {
        ["api", "web", "ds"].iter().all(|p| s.get(&ns, p).is_none())
    })
    .await;
    assert_eq!(names(&s), [n("new"), side_id.clone()]);
    assert_eq!(
        owners(&s),
        [(ip("10.244.0.14"), side_id), (ip("10.244.0.15"), n("new"))]
    );
    assert_eq!(listed_on(&c, &node).await, names(&s));
    assert_eq!(w.current().as_deref(), Some(&*s));
    assert_eq!(w.store().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs control plane"]
async fn the_first_list_pages_through_more_pods_than_one_page() {
    // kube-runtime lists 500 pods a page: 520 pods make the API server hand out a
    // continue token, which the watch must follow before its first snapshot.
    let cp = ControlPlane::shared("the_first_list_pages_through_more_pods_than_one_page");
    let ns = cp.namespace("kube-pages");
    let node = format!("node-{ns}");
    let items: Vec<Value> = (0..520)
        .map(|i| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("p{i:03}"), "namespace": ns},
                   "spec": {"nodeName": node,
                            "containers": [{"name": "c", "image": "registry.invalid/none:1"}]}})
        })
        .collect();
    cp.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string());
    let c = client(cp.kubeconfig()).await;
    let page = Api::<Pod>::namespaced(c.clone(), &ns)
        .list(&ListParams::default().limit(500))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 500);
    assert!(page.metadata.continue_.is_some(), "the API pages");

    let lookups = Arc::new(AtomicUsize::new(0));
    let mut w = PodWatch::start(c, &node, fake_routes(lookups.clone()));
    let first = tokio::time::timeout(WAIT, w.initial())
        .await
        .expect("the first list in time")
        .expect("a snapshot");
    assert_eq!(first.pods().len(), 520);
    assert_eq!(first.pods()[0].id(), format!("{ns}/p000"));
    assert_eq!(first.pods()[519].id(), format!("{ns}/p519"));
    assert_eq!(lookups.load(Ordering::SeqCst), 0, "no pod has an address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs control plane"]
async fn pod_interfaces_come_from_the_route_to_the_pod_address() {
    // The real lookup (`ip -j route get`, which sends no packet) of pod addresses on
    // loopback: `lo`. The annotation wins over the route.
    let test = "pod_interfaces_come_from_the_route_to_the_pod_address";
    imdsguard_testkit::require(test, &["ip"]);
    let cp = ControlPlane::shared(test);
    let ns = cp.namespace("kube-route");
    let node = format!("node-{ns}");
    let c = client(cp.kubeconfig()).await;
    create(
        &c,
        pod(&ns, "routed", Some(&node), json!({})),
        Some("Running"),
        Some("127.0.0.21"),
    )
    .await;
    let annotated = json!({"metadata": {"annotations": {"imdsguard.io/interface": "azvann"}}});
    create(
        &c,
        pod(&ns, "annotated", Some(&node), annotated),
        Some("Running"),
        Some("127.0.0.22"),
    )
    .await;
    let mut w = PodWatch::start(c.clone(), &node, InterfaceResolver::ip_route());
    let mut rx = w.subscribe();
    let first = tokio::time::timeout(WAIT, w.initial())
        .await
        .expect("the first list in time")
        .expect("a snapshot");
    assert_eq!(
        first.get(&ns, "routed").unwrap().interface.as_deref(),
        Some("lo")
    );
    assert_eq!(
        first.get(&ns, "annotated").unwrap().interface.as_deref(),
        Some("azvann")
    );
    // A pod that gets its address later is looked up then.
    create(&c, pod(&ns, "late", Some(&node), json!({})), None, None).await;
    set_status(&c, &ns, "late", Some("Running"), Some("127.0.0.23")).await;
    let s = until(
        &mut rx,
        "late with its address",
        |_| Ok(()),
        |s| s.get(&ns, "late").is_some_and(|p| !p.addrs.is_empty()),
    )
    .await;
    assert_eq!(s.get(&ns, "late").unwrap().interface.as_deref(), Some("lo"));
    assert_eq!(
        s.index().get(ip("127.0.0.23")).unwrap().id(),
        format!("{ns}/late")
    );
}

/// The events.k8s.io/v1 Events of `ns`, by name.
async fn events(c: &Client, ns: &str) -> BTreeMap<String, Event> {
    Api::<Event>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.metadata.name.clone().unwrap(), e))
        .collect()
}

/// The events of `ns` once there are `n` of them (and the series of each).
async fn until_events(c: &Client, ns: &str, n: usize) -> BTreeMap<String, Event> {
    eventually(&format!("{n} Events in {ns}"), || async move {
        let e = events(c, ns).await;
        (e.len() >= n).then_some(e)
    })
    .await
}

fn access(ns: &str, p: &Pod) -> BlockedAccess {
    BlockedAccess {
        namespace: ns.into(),
        pod: p.metadata.name.clone().unwrap(),
        uid: p.metadata.uid.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs control plane"]
async fn blocked_access_is_a_warning_event_on_the_pod_readable_through_both_event_apis() {
    let cp = ControlPlane::shared(
        "blocked_access_is_a_warning_event_on_the_pod_readable_through_both_event_apis",
    );
    let ns = cp.namespace("kube-events");
    let node = format!("node-{ns}");
    let c = client(cp.kubeconfig()).await;
    let web = create(
        &c,
        pod(&ns, "web", Some(&node), json!({})),
        Some("Running"),
        Some("10.244.0.11"),
    )
    .await;
    let api = create(
        &c,
        pod(&ns, "api", Some(&node), json!({})),
        Some("Running"),
        Some("10.244.0.12"),
    )
    .await;

    let period = Duration::from_millis(1500);
    let r = EventReporter::start(c.clone(), &node, "Azure IMDS, Azure WireServer", period);
    // A flood from web within one period: one Event; another pod is not held back.
    assert!(r.report(access(&ns, &web)));
    for _ in 0..50 {
        assert!(!r.report(access(&ns, &web)), "held back within the period");
    }
    assert!(r.report(access(&ns, &api)));
    let all = until_events(&c, &ns, 2).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let (web_name, ev) = all
        .iter()
        .find(|(_, e)| e.regarding.as_ref().unwrap().name.as_deref() == Some("web"))
        .expect("web's Event");
    let web_name = web_name.clone();
    assert!(web_name.starts_with("web."), "{web_name}");
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.reason.as_deref(), Some(REASON));
    assert_eq!(ev.action.as_deref(), Some(ACTION));
    assert_eq!(ev.reporting_controller.as_deref(), Some(COMPONENT));
    assert_eq!(ev.reporting_instance.as_deref(), Some(node.as_str()));
    assert!(ev.event_time.is_some());
    assert!(ev.series.is_none(), "{ev:?}");
    let regarding = ev.regarding.as_ref().unwrap();
    assert_eq!(regarding.api_version.as_deref(), Some("v1"));
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(regarding.uid, web.metadata.uid, "the pod's real UID");
    let note = ev.note.as_deref().unwrap();
    assert!(
        note.contains("cloud metadata endpoints (Azure IMDS, Azure WireServer)")
            && note.contains(&format!("node {node}")),
        "{note}"
    );

    // The same Event through core/v1 (what `kubectl get events` and older tools read).
    let core = Api::<CoreEvent>::namespaced(c.clone(), &ns)
        .get(&web_name)
        .await
        .unwrap();
    assert_eq!(core.type_.as_deref(), Some("Warning"));
    assert_eq!(core.reason.as_deref(), Some(REASON));
    assert_eq!(core.message.as_deref(), Some(note));
    assert_eq!(core.action.as_deref(), Some(ACTION));
    assert_eq!(core.reporting_component.as_deref(), Some(COMPONENT));
    assert_eq!(core.reporting_instance.as_deref(), Some(node.as_str()));
    assert_eq!(core.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(core.involved_object.name.as_deref(), Some("web"));
    assert_eq!(core.involved_object.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(core.involved_object.uid, web.metadata.uid);
    // And through kubectl, as a user would look for it.
    let shown = cp.kubectl_ok(
        &[
            "events", "-n", &ns, "--for", "pod/web", "--types", "Warning",
        ],
        None,
    );
    assert!(
        shown.contains(REASON) && shown.contains("Pod/web"),
        "{shown}"
    );
    assert!(!shown.contains("Pod/api"), "{shown}");

    // After the period, web's next report continues its Event: the same Event, series
    // count 2, then 3; no third Event.
    for count in [2, 3] {
        tokio::time::sleep(period + Duration::from_millis(100)).await;
        assert!(r.report(access(&ns, &web)));
        assert!(!r.report(access(&ns, &web)));
        let e = eventually(&format!("series count {count}"), || {
            let (c, ns, web_name) = (&c, &ns, &web_name);
            async move {
                let e = Api::<Event>::namespaced(c.clone(), ns)
                    .get(web_name)
                    .await
                    .ok()?;
                (e.series.as_ref().map(|s| s.count) == Some(count)).then_some(e)
            }
        })
        .await;
        assert_eq!(e.reason.as_deref(), Some(REASON));
        assert_eq!(e.regarding.as_ref().unwrap().name.as_deref(), Some("web"));
        let core = Api::<CoreEvent>::namespaced(c.clone(), &ns)
            .get(&web_name)
            .await
            .unwrap();
        assert_eq!(core.series.as_ref().and_then(|s| s.count), Some(count));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events(&c, &ns).await.len(), 2);
}

/// A file deleted when dropped (also when the test panics): a service account's
/// kubeconfig holds its token.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs control plane"]
async fn forbidden_then_granted_the_watch_and_the_events_recover() {
    // A service account with no RBAC binding: the watch's list is refused (403) and it
    // retries with backoff, publishing nothing; the Events are refused and the reporter
    // goes on. Granted the verbs, both work without a restart.
    let cp = ControlPlane::shared("forbidden_then_granted_the_watch_and_the_events_recover");
    let ns = cp.namespace("kube-forbidden");
    let node = format!("node-{ns}");
    let admin = client(cp.kubeconfig()).await;
    let web = create(
        &admin,
        pod(&ns, "web", Some(&node), json!({})),
        Some("Running"),
        Some("10.244.0.11"),
    )
    .await;
    let api = create(
        &admin,
        pod(&ns, "api", Some(&node), json!({})),
        Some("Running"),
        Some("10.244.0.12"),
    )
    .await;
    let kubeconfig =
        Removed(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{ns}.kubeconfig")));
    cp.service_account_kubeconfig(&ns, "agent", &kubeconfig.0);
    let sa = client(&kubeconfig.0).await;

    let forbidden = Api::<Pod>::all(sa.clone())
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&forbidden, Err(kube::Error::Api(s)) if s.code == 403),
        "{forbidden:?}"
    );
    let mut w = PodWatch::start(
        sa.clone(),
        &node,
        InterfaceResolver::with_lookup(Arc::new(|_| None)),
    );
    let r = EventReporter::start(sa, &node, "Azure IMDS", Duration::from_secs(60));
    assert!(
        r.report(access(&ns, &web)),
        "queued: the refusal comes later"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(w.current().is_none(), "nothing published while forbidden");
    assert!(events(&admin, &ns).await.is_empty());

    let sa_name = format!("system:serviceaccount:{ns}:agent");
    cp.kubectl_ok(
        &[
            "create",
            "clusterrole",
            &format!("{ns}-pods"),
            "--verb=list,watch",
            "--resource=pods",
        ],
        None,
    );
    cp.kubectl_ok(
        &[
            "create",
            "clusterrolebinding",
            &format!("{ns}-pods"),
            &format!("--clusterrole={ns}-pods"),
            &format!("--user={sa_name}"),
        ],
        None,
    );
    cp.kubectl_ok(
        &[
            "create",
            "role",
            "events",
            "-n",
            &ns,
            "--verb=create,patch",
            "--resource=events.events.k8s.io",
        ],
        None,
    );
    cp.kubectl_ok(
        &[
            "create",
            "rolebinding",
            "events",
            "-n",
            &ns,
            "--role=events",
            &format!("--user={sa_name}"),
        ],
        None,
    );
    // The watch's backoff tops out at 30 s; it is at a few seconds here.
    let first = tokio::time::timeout(Duration::from_secs(40), w.initial())
        .await
        .expect("the watch recovers once granted")
        .expect("a snapshot");
    assert_eq!(names(&first), [format!("{ns}/api"), format!("{ns}/web")]);
    assert!(r.report(access(&ns, &api)));
    let all = until_events(&admin, &ns, 1).await;
    let regarding: Vec<_> = all
        .values()
        .map(|e| e.regarding.as_ref().unwrap().name.clone().unwrap())
        .collect();
    assert_eq!(
        regarding,
        ["api"],
        "web's Event was refused, api's went through"
    );
    cp.kubectl(
        &[
            "delete",
            "clusterrolebinding,clusterrole",
            &format!("{ns}-pods"),
        ],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs control plane"]
async fn an_event_for_a_namespace_that_is_gone_is_refused_and_the_next_goes_through() {
    // The pod's namespace no longer exists (404 from the API server): the publish fails,
    // is logged, and the reporter carries on.
    let cp = ControlPlane::shared(
        "an_event_for_a_namespace_that_is_gone_is_refused_and_the_next_goes_through",
    );
    let ns = cp.namespace("kube-missing");
    let node = format!("node-{ns}");
    let c = client(cp.kubeconfig()).await;
    let missing = format!("{ns}-gone");
    let web = create(
        &c,
        pod(&ns, "web", Some(&node), json!({})),
        Some("Running"),
        Some("10.244.0.11"),
    )
    .await;
    let r = EventReporter::start(c.clone(), &node, "Azure IMDS", Duration::from_secs(60));
    assert!(r.report(BlockedAccess {
        namespace: missing.clone(),
        pod: "ghost".into(),
        uid: None,
    }));
    assert!(r.report(access(&ns, &web)));
    let all = until_events(&c, &ns, 1).await;
    assert_eq!(all.len(), 1);
    let out = cp.kubectl(
        &["get", "events.events.k8s.io", "-n", &missing, "-o", "name"],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
    // What the reporter met: the API's answer to an Event in that namespace.
    let e: Event = serde_json::from_value(json!({
        "metadata": {"name": "probe.1", "namespace": missing},
        "eventTime": "2024-05-01T10:00:00.000000Z",
        "reportingController": COMPONENT, "reportingInstance": node,
        "action": ACTION, "reason": REASON, "type": "Warning",
        "regarding": {"kind": "Pod", "name": "ghost", "namespace": missing, "apiVersion": "v1"}
    }))
    .unwrap();
    let err = Api::<Event>::namespaced(c.clone(), &missing)
        .create(&PostParams::default(), &e)
        .await;
    assert!(
        matches!(&err, Err(kube::Error::Api(s)) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs control plane"]
async fn when_the_api_server_goes_away_the_last_snapshot_stays() {
    // A control plane of this test's own, stopped mid-test: the watch's requests fail
    // (connection refused), it retries with backoff, and the agent keeps enforcing with
    // the last snapshot; the reporter still takes reports (their publishes fail).
    let cp = ControlPlane::dedicated("when_the_api_server_goes_away_the_last_snapshot_stays");
    let ns = cp.namespace("kube-gone");
    let node = format!("node-{ns}");
    let c = client(cp.kubeconfig()).await;
    let web = create(
        &c,
        pod(&ns, "web", Some(&node), json!({})),
        Some("Running"),
        Some("10.244.0.11"),
    )
    .await;
    let lookups = Arc::new(AtomicUsize::new(0));
    let mut w = PodWatch::start(c.clone(), &node, fake_routes(lookups));
    let mut rx = w.subscribe();
    let first = tokio::time::timeout(WAIT, w.initial())
        .await
        .expect("the first list in time")
        .expect("a snapshot");
    assert_eq!(owners(&first), [(ip("10.244.0.11"), format!("{ns}/web"))]);
    let r = EventReporter::start(c.clone(), &node, "Azure IMDS", Duration::from_secs(60));

    rx.borrow_and_update();
    drop(cp);
    let gone = Api::<Pod>::all(c.clone())
        .list(&ListParams::default())
        .await;
    assert!(gone.is_err(), "the server is gone: {gone:?}");
    assert!(r.report(access(&ns, &web)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(rx.has_changed().is_ok(), "the watch is still running");
    assert!(!rx.has_changed().unwrap(), "and published nothing new");
    assert_eq!(w.current().as_deref(), Some(&*first));
    assert_eq!(w.store().len(), 1, "the store keeps the node's pods");
    assert!(
        !r.report(access(&ns, &web)),
        "the per-pod cap still applies"
    );
}
