//! The watch and the Events against a small fake Kubernetes API server on 127.0.0.1
//! (plain HTTP, no credentials): never a real cluster.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use imdsguard_core::pods::PodIndex;
use imdsguard_kube::{BlockedAccess, Client, Config, EventReporter, InterfaceResolver, PodWatch};
use serde_json::{Value, json};

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

async fn handle(req: Request<Incoming>, seen: Seen) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock()
        .unwrap()
        .push((method.clone(), uri.clone(), value.clone()));
    let path = uri.split('?').next().unwrap_or("");
    Ok(match (method.as_str(), path) {
        ("GET", "/api/v1/pods") if uri.contains("watch=true") => {
            // One change then nothing more: the watch stays open.
            let events = vec![
                json!({"type": "ADDED", "object": pod("api", Some("10.244.0.12"), json!({}))}),
                json!({"type": "DELETED", "object": pod("web", Some("10.244.0.11"), json!({}))}),
            ];
            let frames = futures::stream::iter(
                events
                    .into_iter()
                    .map(|e| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{e}\n"))))),
            )
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
        ("POST", p) if p.starts_with("/api/v1/namespaces/") && p.ends_with("/events") => {
            let mut created = value.clone();
            created["metadata"]["name"] = json!("web.1");
            full(&created, 201)
        }
        _ => full(&json!({"kind": "Status", "code": 404}), 404),
    })
}

async fn fake_api() -> (Client, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, s.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let config = Config::new(format!("http://{addr}").parse().unwrap());
    (Client::try_from(config).unwrap(), seen)
}

fn fake_routes() -> InterfaceResolver {
    InterfaceResolver::with_lookup(Arc::new(|a: IpAddr| {
        Some(format!(
            "azv{}",
            a.to_string().rsplit('.').next().unwrap_or("x")
        ))
    }))
}

#[tokio::test]
async fn the_watch_keeps_the_nodes_pods_with_their_interfaces() {
    let (client, seen) = fake_api().await;
    let mut w = PodWatch::start(client, "node-a", fake_routes());
    let mut rx = w.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(10), w.initial())
        .await
        .expect("the first list in time")
        .expect("a snapshot");
    // Every pod is there, as plain data; the core's index decides who owns what:
    // hostNetwork, finished and address-less pods own nothing, and their interfaces
    // are not looked up.
    let index = PodIndex::from_pods(first.pods.iter().cloned());
    for (addr, p) in index.iter() {
        assert!(
            p.id() == "shop/web" || p.id() == "shop/api",
            "{addr}: {}",
            p.id()
        );
    }
    for name in ["ds", "job", "new"] {
        if let Some(p) = first.get("shop", name) {
            assert_eq!(p.interface, None, "{name}: no route lookup");
            assert!(
                p.addrs.iter().all(|a| index.get(*a).is_none()),
                "{name} owns nothing"
            );
        }
    }
    if let Some(web) = first.get("shop", "web") {
        assert_eq!(
            web.interface.as_deref(),
            Some("azvweb"),
            "the annotation wins"
        );
        assert_eq!(web.info.service_account, "web-sa");
        assert_eq!(web.info.labels.get("app").map(String::as_str), Some("web"));
    }
    // Then the watch: api added (interface from the route), web deleted.
    let last = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(s) = rx.borrow_and_update().clone()
                && s.get("shop", "web").is_none()
                && s.get("shop", "api").is_some()
            {
                return s;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the watch's changes in time");
    let api = last.get("shop", "api").unwrap();
    assert_eq!(api.interface.as_deref(), Some("azv12"));
    assert_eq!(api.uid.as_deref(), Some("uid-api"));
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

#[tokio::test]
async fn blocked_access_posts_one_warning_event_per_pod_per_period() {
    let (client, seen) = fake_api().await;
    let r = EventReporter::start(client, "node-a", "Azure IMDS", Duration::from_secs(300));
    let access = |packets| BlockedAccess {
        namespace: "shop".into(),
        pod: "web".into(),
        uid: Some("uid-web".into()),
        packets,
    };
    r.report(access(3));
    r.report(access(5));
    let posts = || -> Vec<(String, Value)> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.0 == "POST")
            .map(|s| (s.1.clone(), s.2.clone()))
            .collect()
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while posts().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the event in time");
    // The second report is held back by the rate limit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let posts = posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    let (uri, ev) = &posts[0];
    assert!(uri.starts_with("/api/v1/namespaces/shop/events"), "{uri}");
    assert_eq!(ev["kind"], "Event");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "MetadataAccessBlocked");
    assert_eq!(ev["involvedObject"]["kind"], "Pod");
    assert_eq!(ev["involvedObject"]["name"], "web");
    assert_eq!(ev["involvedObject"]["namespace"], "shop");
    assert_eq!(ev["involvedObject"]["uid"], "uid-web");
    let message = ev["message"].as_str().unwrap();
    assert!(
        message.contains("3 packets") && message.contains("Azure IMDS"),
        "{message}"
    );
}
