//! The faults a real Kubernetes API server cannot be made to produce, from a small fake
//! server on 127.0.0.1 (plain HTTP, no credentials) that answers each request from a
//! script: a watch cut in the middle of an object, a `410 Gone` that forces a relist,
//! responses that are not JSON, a slow page of a paginated list, and Event writes
//! throttled (429) or failing (500).
//!
//! Everything the API server does produce (the node's field selector, adds, changes and
//! deletes, pagination, Warning Events and their series, 403 forbidden, 404 for a missing
//! namespace, a server that goes away) is tested against the real one in
//! `tests/real_api.rs`. Each test here says why a real server cannot be used for it.

use std::collections::VecDeque;
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
use imdsguard_core::pods::PodPhase;
use imdsguard_kube::{
    BlockedAccess, Client, Config, EventReporter, InterfaceResolver, PodWatch, Snapshot,
};
use serde_json::{Value, json};
use tokio::sync::watch;

type Body = BoxBody<Bytes, std::io::Error>;

/// One scripted answer.
enum Reply {
    /// This status and JSON body (with `retry_after`: a `Retry-After` header, seconds).
    Json(u16, Value, Option<u32>),
    /// Status 200, `application/json`, and a body that is not JSON.
    Garbage(&'static str),
    /// This JSON, 200, after a delay.
    Slow(Duration, Value),
    /// A watch: these lines, then the connection stays open (`cut: false`) or is torn
    /// down in the middle of the next object (`cut: true`).
    Watch(Vec<Value>, bool),
}

/// What the fake server answers, in order, per kind of request; and what it was asked.
#[derive(Default)]
struct Script {
    lists: VecDeque<Reply>,
    watches: VecDeque<Reply>,
    writes: VecDeque<Reply>,
    /// Method, path and query, body (JSON, or null).
    seen: Vec<(String, String, Value)>,
}

type Shared = Arc<Mutex<Script>>;

fn json_reply(status: u16, v: &Value, retry_after: Option<u32>) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(s) = retry_after {
        r = r.header("retry-after", s.to_string());
    }
    r.body(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|e| match e {})
            .boxed(),
    )
    .unwrap()
}

fn not_found() -> Response<Body> {
    json_reply(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                "reason": "NotFound", "message": "not in the script"}),
        None,
    )
}

async fn answer(reply: Reply, written: &Value, method: &str) -> Response<Body> {
    match reply {
        Reply::Json(status, v, retry_after) => {
            // A write answered with success echoes what was written, as the API does.
            let body = if v.is_null() { written } else { &v };
            let status = if status == 0 {
                if method == "POST" { 201 } else { 200 }
            } else {
                status
            };
            json_reply(status, body, retry_after)
        }
        Reply::Garbage(text) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed())
            .unwrap(),
        Reply::Slow(delay, v) => {
            tokio::time::sleep(delay).await;
            json_reply(200, &v, None)
        }
        Reply::Watch(lines, cut) => {
            let frames = futures::stream::iter(
                lines
                    .into_iter()
                    .map(|l| Ok(Frame::data(Bytes::from(format!("{l}\n"))))),
            );
            let body: Body = if cut {
                // Half an object, then (once what came before is on the wire) the body
                // fails: hyper tears the connection down without the chunked
                // encoding's last chunk.
                let half =
                    Bytes::from_static(br#"{"type":"MODIFIED","object":{"apiVersion":"v1","ki"#);
                let tail = futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(Frame::data(half))
                })
                .chain(futures::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err(std::io::Error::other("connection cut"))
                }));
                BodyExt::boxed(StreamBody::new(frames.chain(tail)))
            } else {
                BodyExt::boxed(StreamBody::new(frames.chain(futures::stream::pending())))
            };
            Response::builder()
                .header("content-type", "application/json")
                .body(body)
                .unwrap()
        }
    }
}

async fn handle(req: Request<Incoming>, script: Shared) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let written: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.split('?').next().unwrap_or("").to_owned();
    let reply = {
        let mut s = script.lock().unwrap();
        s.seen.push((method.clone(), uri.clone(), written.clone()));
        match (method.as_str(), path.as_str()) {
            ("GET", "/api/v1/pods") if uri.contains("watch=true") => s.watches.pop_front(),
            ("GET", "/api/v1/pods") => s.lists.pop_front(),
            ("POST" | "PATCH", p) if p.starts_with("/apis/events.k8s.io/v1/namespaces/") => {
                s.writes.pop_front()
            }
            _ => None,
        }
    };
    Ok(match reply {
        Some(r) => answer(r, &written, &method).await,
        // A watch past the script stays open with nothing to say; anything else is
        // unexpected (and counted in `seen`).
        None if uri.contains("watch=true") => {
            answer(Reply::Watch(vec![], false), &written, &method).await
        }
        None => not_found(),
    })
}

/// Starts the fake server with `script`; a client for it.
async fn fake_api(script: Script) -> (Client, Shared) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script: Shared = Arc::new(Mutex::new(script));
    let s = script.clone();
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
    (Client::try_from(config).unwrap(), script)
}

fn pod(name: &str, rv: u32, ip: Option<&str>, phase: &str) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                     "resourceVersion": rv.to_string()},
        "spec": {"containers": [], "nodeName": "node-a"},
        "status": {"phase": phase}
    });
    if let Some(ip) = ip {
        p["status"]["podIP"] = json!(ip);
        p["status"]["podIPs"] = json!([{"ip": ip}]);
    }
    p
}

fn list(rv: u32, items: Vec<Value>, continue_: Option<&str>) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = continue_ {
        meta["continue"] = json!(c);
    }
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": meta, "items": items})
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn routes() -> InterfaceResolver {
    InterfaceResolver::with_lookup(Arc::new(|a: IpAddr| {
        Some(format!(
            "azv{}",
            a.to_string().rsplit('.').next().unwrap_or("x")
        ))
    }))
}

fn names(s: &Snapshot) -> Vec<String> {
    s.pods().iter().map(|p| p.id()).collect()
}

/// The requests seen whose method is `method` and whose URI contains `part`.
fn seen(script: &Shared, method: &str, part: &str) -> Vec<(String, Value)> {
    script
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(m, u, _)| m == method && u.contains(part))
        .map(|(_, u, b)| (u.clone(), b.clone()))
        .collect()
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
    match tokio::time::timeout(Duration::from_secs(15), wait).await {
        Ok(s) => s,
        Err(_) => panic!("no snapshot with {what} within 15 s: {:?}", rx.borrow()),
    }
}

/// Why not the real server: the API server ends a watch cleanly (at its timeout, with the
/// chunked encoding's last chunk). A connection torn down in the middle of an object comes
/// from the network or a crashed server, and a stopped test server cannot come back at
/// the same address with the same data.
#[tokio::test]
async fn a_watch_cut_midway_resumes_from_its_resource_version_without_a_relist() {
    let mut script = Script::default();
    script.lists.push_back(Reply::Json(
        200,
        list(1, vec![pod("web", 1, Some("10.244.0.11"), "Running")], None),
        None,
    ));
    script.watches.push_back(Reply::Watch(
        vec![event(
            "ADDED",
            pod("api", 2, Some("10.244.0.12"), "Running"),
        )],
        true,
    ));
    script.watches.push_back(Reply::Watch(
        vec![event(
            "MODIFIED",
            pod("web", 3, Some("10.244.0.11"), "Succeeded"),
        )],
        false,
    ));
    let (client, script) = fake_api(script).await;
    let mut w = PodWatch::start(client, "node-a", routes());
    let mut rx = w.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(10), w.initial())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&first), ["shop/web"]);
    let s = until(&mut rx, "web finished after the cut", |s| {
        s.get("shop", "web").unwrap().phase == PodPhase::Succeeded
    })
    .await;
    assert_eq!(
        names(&s),
        ["shop/api", "shop/web"],
        "api, from before the cut, kept"
    );
    assert_eq!(
        s.index().get("10.244.0.12".parse().unwrap()).unwrap().id(),
        "shop/api"
    );
    // One list; the second watch resumed at api's resourceVersion.
    assert_eq!(
        seen(&script, "GET", "/api/v1/pods").len() - seen(&script, "GET", "watch=true").len(),
        1
    );
    let watches = seen(&script, "GET", "watch=true");
    assert!(watches.len() >= 2, "{watches:?}");
    assert!(
        watches[1].0.contains("resourceVersion=2"),
        "{}",
        watches[1].0
    );
}

/// Why not the real server: it answers `410 Gone` only when the watched resourceVersion
/// has been compacted out of etcd and out of its watch cache, which happens on its own
/// schedule (every 5 minutes by default) and never for the latest version a watcher holds.
#[tokio::test]
async fn a_410_gone_relists_and_the_snapshot_follows_the_new_list() {
    let mut script = Script::default();
    script.lists.push_back(Reply::Json(
        200,
        list(
            5,
            vec![
                pod("web", 4, Some("10.244.0.11"), "Running"),
                pod("api", 5, Some("10.244.0.12"), "Running"),
            ],
            None,
        ),
        None,
    ));
    script.watches.push_back(Reply::Watch(
        vec![json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 5 (9)", "reason": "Expired", "code": 410}})],
        false,
    ));
    // While the watcher was out of sync, api went and new came: no event says so.
    script.lists.push_back(Reply::Json(
        200,
        list(
            9,
            vec![
                pod("web", 4, Some("10.244.0.11"), "Running"),
                pod("new", 9, Some("10.244.0.12"), "Running"),
            ],
            None,
        ),
        None,
    ));
    let (client, script) = fake_api(script).await;
    let mut w = PodWatch::start(client, "node-a", routes());
    let mut rx = w.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(10), w.initial())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&first), ["shop/api", "shop/web"]);
    let s = until(&mut rx, "the relisted pods", |s| {
        s.get("shop", "new").is_some()
    })
    .await;
    assert_eq!(names(&s), ["shop/new", "shop/web"]);
    assert_eq!(
        s.index().get("10.244.0.12".parse().unwrap()).unwrap().id(),
        "shop/new",
        "the address passed to new with the relist"
    );
    assert_eq!(w.store().len(), 2);
    let lists =
        seen(&script, "GET", "/api/v1/pods").len() - seen(&script, "GET", "watch=true").len();
    assert_eq!(lists, 2);
}

/// Why not the real server: it always answers in well-formed JSON; a body that is not
/// (an HTML error page, a truncated line) comes from a proxy or middlebox in between.
#[tokio::test]
async fn responses_that_are_not_json_publish_nothing_and_the_watch_carries_on() {
    let mut script = Script::default();
    script
        .lists
        .push_back(Reply::Garbage("<html><body>502 Bad Gateway</body></html>"));
    script.lists.push_back(Reply::Json(
        200,
        list(1, vec![pod("web", 1, Some("10.244.0.11"), "Running")], None),
        None,
    ));
    script.watches.push_back(Reply::Watch(
        vec![
            json!("not an event"),
            json!({"type": "ADDED"}),
            event("ADDED", pod("api", 2, Some("10.244.0.12"), "Running")),
        ],
        false,
    ));
    let (client, script) = fake_api(script).await;
    let mut w = PodWatch::start(client, "node-a", routes());
    let mut rx = w.subscribe();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        w.current().is_none(),
        "nothing from a list that is not JSON"
    );
    let first = tokio::time::timeout(Duration::from_secs(10), w.initial())
        .await
        .expect("the list is retried")
        .unwrap();
    assert_eq!(names(&first), ["shop/web"]);
    let s = until(&mut rx, "api, after the unreadable lines", |s| {
        s.get("shop", "api").is_some()
    })
    .await;
    assert_eq!(names(&s), ["shop/api", "shop/web"]);
    assert_eq!(
        seen(&script, "GET", "watch=true").len(),
        1,
        "the same watch went on"
    );
}

/// Why not the real server: it cannot be made slow on demand, and it serves a second
/// page as fast as the first.
#[tokio::test]
async fn a_slow_second_page_publishes_no_snapshot_of_the_first_page_alone() {
    let mut script = Script::default();
    script.lists.push_back(Reply::Json(
        200,
        list(
            3,
            vec![pod("a", 2, Some("10.244.0.2"), "Running")],
            Some("page-2"),
        ),
        None,
    ));
    script.lists.push_back(Reply::Slow(
        Duration::from_millis(1500),
        list(3, vec![pod("b", 3, Some("10.244.0.3"), "Running")], None),
    ));
    let (client, script) = fake_api(script).await;
    let mut w = PodWatch::start(client, "node-a", routes());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(w.current().is_none(), "half a list is no snapshot");
    let first = tokio::time::timeout(Duration::from_secs(10), w.initial())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(&first), ["shop/a", "shop/b"]);
    let lists = seen(&script, "GET", "/api/v1/pods");
    assert!(lists[1].0.contains("continue=page-2"), "{}", lists[1].0);
}

/// Why not the real server: a 429 comes from API Priority and Fairness when the server's
/// seats are taken (a flood that would slow every other test on the shared server), and
/// the server never answers 500 to a well-formed Event.
#[tokio::test]
async fn throttled_event_writes_are_retried_and_failed_ones_do_not_stop_the_reporter() {
    let mut script = Script::default();
    let status = |code: u16, reason: &str| {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
               "reason": reason, "message": reason})
    };
    // web: throttled once (Retry-After 1 s), then created. api: a server error, then
    // created at its next report. web's repeat: the series patch.
    script
        .writes
        .push_back(Reply::Json(429, status(429, "TooManyRequests"), Some(1)));
    script.writes.push_back(Reply::Json(0, Value::Null, None));
    script
        .writes
        .push_back(Reply::Json(500, status(500, "InternalError"), None));
    let (client, script) = fake_api(script).await;
    let period = Duration::from_millis(1500);
    let r = EventReporter::start(client, "node-a", "Azure IMDS", period);
    let access = |pod: &str| BlockedAccess {
        namespace: "shop".into(),
        pod: pod.into(),
        uid: Some(format!("uid-{pod}")),
    };
    let writes = || {
        let mut w = seen(&script, "POST", "/events");
        w.extend(seen(&script, "PATCH", "/events"));
        w.len()
    };
    let wait_writes = |n: usize| {
        let writes = &writes;
        async move {
            let done = async {
                while writes() < n {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), done)
                .await
                .unwrap_or_else(|_| panic!("not {n} Event writes: {}", writes()));
        }
    };
    let started = tokio::time::Instant::now();
    assert!(r.report(access("web")));
    assert!(r.report(access("api")));
    wait_writes(3).await;
    let posts = seen(&script, "POST", "/events");
    assert_eq!(posts.len(), 3);
    assert_eq!(
        posts[0].1, posts[1].1,
        "the throttled Event sent again as it was"
    );
    assert_eq!(posts[0].1["regarding"]["name"], "web");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "after the Retry-After"
    );
    assert_eq!(posts[2].1["regarding"]["name"], "api");

    // After the period: api's Event is created anew (the failed one never existed), web's
    // continues its series.
    tokio::time::sleep(period).await;
    assert!(r.report(access("api")));
    assert!(r.report(access("web")));
    wait_writes(5).await;
    let posts = seen(&script, "POST", "/events");
    assert_eq!(posts.len(), 4);
    assert_eq!(posts[3].1["regarding"]["name"], "api");
    assert!(posts[3].1.get("series").is_none_or(Value::is_null));
    let patches = seen(&script, "PATCH", "/events");
    assert_eq!(patches.len(), 1);
    let web_name = posts[1].1["metadata"]["name"].as_str().unwrap();
    assert!(
        patches[0].0.contains(&format!("/events/{web_name}")),
        "{}",
        patches[0].0
    );
    assert_eq!(patches[0].1["series"]["count"], 2);
}
