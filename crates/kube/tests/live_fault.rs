//! The one fault of the live read that a real API server cannot be made to produce on
//! demand: a list that fails between two pages. A small fake API server on 127.0.0.1
//! (plain HTTP, no credentials) answers discovery, one Namespace, a first page of Pods
//! with a continue token, then fails the second page as told. The read must fail:
//! nothing is returned as if it were complete. Everything else of the live read is
//! tested against the real API server (crates/cli/tests/audit_live.rs).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use imdsguard_kube::live::{self, Connection, LiveError, Namespaces, Progress};
use imdsguard_kube::{Client, Config};
use serde_json::{Value, json};

type Body = BoxBody<Bytes, Infallible>;

/// How the fake answers the second page of Pods.
#[derive(Clone, Copy)]
enum SecondPage {
    Ok,
    Status(u16),
}

fn reply(v: &Value, status: u16) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn pod(name: &str) -> Value {
    // As the API server lists them: no apiVersion or kind on the items.
    json!({"metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
           "spec": {"containers": [{"name": "c", "image": "i"}]}})
}

fn status(code: u16) -> Value {
    let (reason, message) = match code {
        410 => (
            "Expired",
            "The provided continue parameter is too old to display a consistent list result.",
        ),
        _ => ("InternalError", "etcdserver: request timed out"),
    };
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": message})
}

async fn handle(
    req: Request<Incoming>,
    second: SecondPage,
    seen: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Body>, Infallible> {
    let uri = req.uri().to_string();
    seen.lock().unwrap().push(uri.clone());
    let path = uri.split('?').next().unwrap_or("");
    Ok(match path {
        // Legacy discovery only: the aggregated form is not understood here, so the
        // read falls back to the group-by-group walk.
        "/api" => reply(
            &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            200,
        ),
        "/apis" => reply(
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
            200,
        ),
        "/api/v1" => reply(
            &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "namespaces", "singularName": "namespace", "namespaced": false,
                 "kind": "Namespace", "verbs": ["get", "list", "watch"]},
                {"name": "pods", "singularName": "pod", "namespaced": true,
                 "kind": "Pod", "verbs": ["get", "list", "watch"]}
            ]}),
            200,
        ),
        "/api/v1/namespaces" => reply(
            &json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
                    "items": [{"metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}}}]}),
            200,
        ),
        "/api/v1/pods" if !uri.contains("continue=") => reply(
            &json!({"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": "5", "continue": "page-2", "remainingItemCount": 2},
                    "items": [pod("a"), pod("b")]}),
            200,
        ),
        "/api/v1/pods" => match second {
            SecondPage::Ok => reply(
                &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
                        "items": [pod("c"), pod("d")]}),
                200,
            ),
            SecondPage::Status(code) => reply(&status(code), code),
        },
        _ => reply(
            &json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
            404,
        ),
    })
}

/// Starts the fake; a connection to it and the request URIs it saw.
async fn fake(second: SecondPage) -> (Connection, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, second, s.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let url = format!("http://{addr}");
    let client = Client::try_from(Config::new(url.parse().unwrap())).unwrap();
    (Connection::from_client(client, "fake", &url), seen)
}

/// One page as the read reports it: kind, objects and pages so far, remaining.
type Page = (String, usize, usize, Option<u64>);

/// Records every page the read reports.
#[derive(Default)]
struct Pages(Mutex<Vec<Page>>);

impl Progress for Pages {
    fn page(&self, kind: &str, items: usize, pages: usize, remaining: Option<u64>) {
        self.0
            .lock()
            .unwrap()
            .push((kind.to_string(), items, pages, remaining));
    }
}

#[tokio::test]
async fn both_pages_read_give_every_pod() {
    let (conn, seen) = fake(SecondPage::Ok).await;
    let progress = Pages::default();
    let read = live::read(&conn, &Namespaces::All, 2, &progress)
        .await
        .expect("the read succeeds");
    let pods: Vec<String> = read
        .loaded
        .objects
        .iter()
        .filter_map(|o| match o {
            imdsguard_core::model::Object::Pod(p) => Some(format!("{}@{}", p.name, p.source)),
            _ => None,
        })
        .collect();
    assert_eq!(
        pods,
        [
            "a@cluster fake/Pod/shop/a",
            "b@cluster fake/Pod/shop/b",
            "c@cluster fake/Pod/shop/c",
            "d@cluster fake/Pod/shop/d"
        ]
    );
    let pods_read = read.kinds.iter().find(|k| k.kind == "Pod").unwrap();
    assert_eq!((pods_read.items, pods_read.pages), (4, 2));
    assert!(
        progress
            .0
            .lock()
            .unwrap()
            .contains(&("Pod".into(), 2, 1, Some(2)))
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|u| u.starts_with("/api/v1/pods?")
            && u.contains("limit=2")
            && u.contains("continue=page-2")),
        "{seen:?}"
    );
}

async fn fails_midway(code: u16) -> String {
    let (conn, _) = fake(SecondPage::Status(code)).await;
    let err = live::read(&conn, &Namespaces::All, 2, &Pages::default())
        .await
        .expect_err("a list that fails midway is an error, not a report");
    let LiveError::Midway {
        resource,
        pages,
        items,
        ..
    } = &err
    else {
        panic!("not a midway error: {err}")
    };
    assert_eq!((resource.as_str(), *pages, *items), ("pods", 1, 2));
    let text = err.to_string();
    assert!(text.contains("failed midway"), "{text}");
    assert!(text.contains("nothing was reported"), "{text}");
    text
}

#[tokio::test]
async fn a_server_error_on_the_second_page_fails_the_read() {
    let text = fails_midway(500).await;
    assert!(text.contains("etcdserver: request timed out"), "{text}");
}

#[tokio::test]
async fn an_expired_continue_token_fails_the_read_and_says_why() {
    let text = fails_midway(410).await;
    assert!(text.contains("410 Gone"), "{text}");
    assert!(text.contains("run again"), "{text}");
}
