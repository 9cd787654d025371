//! The watch and the Events against a small fake Kubernetes API server on 127.0.0.1
//! (plain HTTP, no credentials): never a real cluster.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use imdsguard_core::pods::PodPhase;
use imdsguard_kube::{
    BlockedAccess, Client, Config, EventReporter, InterfaceResolver, PodWatch, Snapshot,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

type Body = BoxBody<Bytes, Infallible>;

/// What the fake server was asked: method, path and query, body.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

fn pod(name: &str, ip: Option<&str>, extra: Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "resourceVersion": "1", "labels": {"app": name}},
        "spec": {"containers": [], "nodeName": "node-a", "serviceAccountName": format!("{name}-sa")},
        "status": {"phase": "Running"}
    });
    if let Some(ip) = ip {
        p["status"]["podIP"] = json!(ip);
        p["status"]["podIPs"] = json!([{"ip": ip}]);
    }
    if let (Some(to), Some(from)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in from {
            if let Some(obj) = to.get_mut(k).and_then(Value::as_object_mut) {
                obj.extend(v.as_object().cloned().unwrap_or_default());
            }
        }
    }
    p
}

fn full(v: &Value, status: u16) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

/// The fake server: what it was asked, and the watch events the test sends.
#[derive(Clone)]
struct Fake {
    seen: Seen,
    watch: Arc<Mutex<Option<mpsc::UnboundedReceiver<Value>>>>,
}

async fn handle(req: Request<Incoming>, fake: Fake) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.seen
        .lock()
        .unwrap()
        .push((method.clone(), uri.clone(), value.clone()));
    let path = uri.split('?').next().unwrap_or("");
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/";
    Ok(match (method.as_str(), path) {
        ("GET", "/api/v1/pods") if uri.contains("watch=true") => {
            // The test's watch events, one JSON line each; the watch then stays open.
            let rx = fake.watch.lock().unwrap().take();
            let frames = futures::stream::unfold(rx, |rx| async move {
                let mut rx = rx?;
                let e = rx.recv().await?;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{e}\n")))),
                    Some(rx),
                ))
            })
            .chain(futures::stream::pending());
            Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(frames)))
                .unwrap()
        }
        ("GET", "/api/v1/pods") => full(
            &json!({
                "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                "items": [
                    pod("web", Some("10.244.0.11"), json!({"metadata": {"annotations": {"imdsguard.io/interface": "azvweb"}}})),
                    pod("ds", Some("10.224.0.4"), json!({"spec": {"hostNetwork": true}})),
                    pod("job", Some("10.244.0.13"), json!({"status": {"phase": "Succeeded"}})),
                    pod("new", None, json!({})),
                ]
            }),
            200,
        ),
        ("POST", p) if p.starts_with(EVENTS) && p.ends_with("/events") => full(&value, 201),
        ("PATCH", p) if p.starts_with(EVENTS) && p.contains("/events/") => full(&value, 200),
        _ => full(&json!({"kind": "Status", "code": 404}), 404),
    })
}

async fn fake_api() -> (Client, Seen, mpsc::UnboundedSender<Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (watch_tx, watch_rx) = mpsc::unbounded_channel();
    let fake = Fake {
        seen: Arc::default(),
        watch: Arc::new(Mutex::new(Some(watch_rx))),
    };
    let seen = fake.seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, fake.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let config = Config::new(format!("http://{addr}").parse().unwrap());
    (Client::try_from(config).unwrap(), seen, watch_tx)
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

/// The next snapshot for which `done` holds.
async fn until(
    rx: &mut watch::Receiver<Option<Arc<Snapshot>>>,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let wait = async {
        loop {
            if let Some(s) = rx.borrow_and_update().clone()
                && done(&s)
            {
                return s;
            }
            rx.changed().await.expect("the watch still running");
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(s) => s,
        Err(_) => panic!("no snapshot with {what} within 10 s: {:?}", rx.borrow()),
    }
}

#[tokio::test]
async fn the_watch_keeps_the_nodes_pods_indexed_through_adds_changes_and_deletes() {
    let (client, seen, events) = fake_api().await;
    let lookups = Arc::new(AtomicUsize::new(0));
    let mut w = PodWatch::start(client, "node-a", fake_routes(lookups.clone()));
    let mut rx = w.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(10), w.initial())
        .await
        .expect("the first list in time")
        .expect("a snapshot");
    // Every pod listed is there, as plain data, and the core's index decides who owns
    // what: hostNetwork, finished and address-less pods own nothing, and their
    // interfaces are not looked up; web's annotation is its interface (no lookup).
    assert_eq!(
        names(&first),
        ["shop/ds", "shop/job", "shop/new", "shop/web"]
    );
    assert_eq!(owners(&first), [(ip("10.244.0.11"), "shop/web".into())]);
    for name in ["ds", "job", "new"] {
        assert_eq!(first.get("shop", name).unwrap().interface, None, "{name}");
    }
    let web = first.get("shop", "web").unwrap();
    assert_eq!(web.interface.as_deref(), Some("azvweb"));
    assert_eq!(web.info.service_account, "web-sa");
    assert_eq!(web.info.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(web.uid.as_deref(), Some("uid-web"));
    assert_eq!(lookups.load(Ordering::SeqCst), 0);
    assert_eq!(w.store().len(), 4, "the reflector's store holds the list");

    // Added: api, its interface from the route.
    events
        .send(json!({"type": "ADDED", "object": pod("api", Some("10.244.0.12"), json!({}))}))
        .unwrap();
    let s = until(&mut rx, "api added", |s| s.get("shop", "api").is_some()).await;
    assert_eq!(
        names(&s),
        ["shop/api", "shop/ds", "shop/job", "shop/new", "shop/web"]
    );
    assert_eq!(
        owners(&s),
        [
            (ip("10.244.0.11"), "shop/web".into()),
            (ip("10.244.0.12"), "shop/api".into())
        ]
    );
    assert_eq!(
        s.get("shop", "api").unwrap().interface.as_deref(),
        Some("azv12")
    );
    assert_eq!(
        s.index().pod("shop", "api").unwrap().interface.as_deref(),
        Some("azv12")
    );

    // Modified: api relabelled, web finished (its address is no longer its), new gets
    // an address (looked up); one batch.
    for (name, ip, extra) in [
        (
            "api",
            Some("10.244.0.12"),
            json!({"metadata": {"labels": {"app": "api", "tier": "back"}}}),
        ),
        (
            "web",
            Some("10.244.0.11"),
            json!({"status": {"phase": "Succeeded"}}),
        ),
        ("new", Some("10.244.0.15"), json!({})),
    ] {
        events
            .send(json!({"type": "MODIFIED", "object": pod(name, ip, extra)}))
            .unwrap();
    }
    let s = until(&mut rx, "the modifications", |s| {
        s.get("shop", "new").is_some_and(|p| !p.addrs.is_empty())
            && s.get("shop", "web").unwrap().phase == PodPhase::Succeeded
            && s.get("shop", "api")
                .unwrap()
                .info
                .labels
                .contains_key("tier")
    })
    .await;
    assert_eq!(
        owners(&s),
        [
            (ip("10.244.0.12"), "shop/api".into()),
            (ip("10.244.0.15"), "shop/new".into())
        ]
    );
    assert_eq!(
        s.get("shop", "new").unwrap().interface.as_deref(),
        Some("azv15")
    );
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        2,
        "api's address looked up once (cached across the change), new's once"
    );

    // Deleted: web and ds.
    for name in ["web", "ds"] {
        events
            .send(json!({"type": "DELETED", "object": pod(name, None, json!({}))}))
            .unwrap();
    }
    let s = until(&mut rx, "web and ds deleted", |s| {
        s.get("shop", "web").is_none() && s.get("shop", "ds").is_none()
    })
    .await;
    assert_eq!(names(&s), ["shop/api", "shop/job", "shop/new"]);
    assert_eq!(owners(&s).len(), 2);
    assert_eq!(w.current().as_deref(), Some(&*s));
    assert_eq!(w.store().len(), 3);

    // One list and one watch, both with the node's field selector.
    let seen = seen.lock().unwrap();
    let gets: Vec<&String> = seen.iter().filter(|s| s.0 == "GET").map(|s| &s.1).collect();
    assert!(gets.len() >= 2, "{gets:?}");
    for uri in gets {
        assert!(
            uri.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "{uri}"
        );
    }
}

fn writes(seen: &Seen) -> Vec<(String, String, Value)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|s| s.0 == "POST" || s.0 == "PATCH")
        .cloned()
        .collect()
}

async fn until_writes(seen: &Seen, n: usize) -> Vec<(String, String, Value)> {
    let wait = async {
        loop {
            let w = writes(seen);
            if w.len() >= n {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(w) => w,
        Err(_) => panic!("not {n} event writes within 10 s: {:?}", writes(seen)),
    }
}

#[tokio::test]
async fn blocked_access_is_one_warning_event_per_pod_whose_repeats_are_a_series() {
    let (client, seen, _) = fake_api().await;
    let period = Duration::from_millis(700);
    let r = EventReporter::start(client, "node-a", "Azure IMDS, Azure WireServer", period);
    let access = |pod: &str| BlockedAccess {
        namespace: "shop".into(),
        pod: pod.into(),
        uid: Some(format!("uid-{pod}")),
    };

    // A flood from web within one period: one write; another pod is not held back.
    assert!(r.report(access("web")));
    for _ in 0..50 {
        assert!(!r.report(access("web")), "held back within the period");
    }
    let first = until_writes(&seen, 1).await;
    assert!(r.report(access("api")));
    let w = until_writes(&seen, 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(writes(&seen).len(), 2, "{:?}", writes(&seen));

    let (method, uri, ev) = &first[0];
    assert_eq!(method, "POST");
    assert!(
        uri.starts_with("/apis/events.k8s.io/v1/namespaces/shop/events"),
        "{uri}"
    );
    assert_eq!(ev["apiVersion"], "events.k8s.io/v1");
    assert_eq!(ev["kind"], "Event");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "MetadataAccessBlocked");
    assert_eq!(ev["action"], "Drop");
    assert_eq!(ev["reportingController"], "imdsguard-agent");
    assert_eq!(ev["reportingInstance"], "node-a");
    assert_eq!(ev["metadata"]["namespace"], "shop");
    let regarding = &ev["regarding"];
    assert_eq!(regarding["apiVersion"], "v1");
    assert_eq!(regarding["kind"], "Pod");
    assert_eq!(regarding["name"], "web");
    assert_eq!(regarding["namespace"], "shop");
    assert_eq!(regarding["uid"], "uid-web");
    let note = ev["note"].as_str().unwrap();
    assert!(
        note.contains("cloud metadata endpoints (Azure IMDS, Azure WireServer)")
            && note.contains("node node-a"),
        "{note}"
    );
    assert!(ev.get("series").is_none_or(Value::is_null), "{ev}");
    let web_name = ev["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(web_name.starts_with("web."), "{web_name}");
    assert_eq!(w[1].0, "POST");
    assert_eq!(w[1].2["regarding"]["name"], "api");

    // After the period, web's next report continues its Event: a PATCH of the same
    // Event with series.count 2, then 3; no second Event.
    for count in [2, 3] {
        tokio::time::sleep(period + Duration::from_millis(50)).await;
        assert!(r.report(access("web")));
        assert!(!r.report(access("web")));
        let w = until_writes(&seen, count + 1).await;
        let (method, uri, ev) = w.last().unwrap();
        assert_eq!(method, "PATCH");
        assert_eq!(
            uri.split('?').next().unwrap(),
            format!("/apis/events.k8s.io/v1/namespaces/shop/events/{web_name}")
        );
        assert_eq!(ev["series"]["count"], count, "{ev}");
        assert!(ev["series"]["lastObservedTime"].is_string(), "{ev}");
        assert_eq!(ev["reason"], "MetadataAccessBlocked");
        assert_eq!(ev["regarding"]["name"], "web");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(writes(&seen).len(), 4, "{:?}", writes(&seen));
}
