//! One request: canonicalise, validate, identify, decide, forward (or answer), then one
//! log record and the metrics.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use imdsguard_core::access::{AccessRules, Allow, Decision, Deny, PodInfo, RULE_CANONICAL_FORM};
use imdsguard_core::canon::{CanonicalTarget, Canonicalizer, Cloud, RejectKind, Rejection};
use imdsguard_core::imds::{
    self, CONTENT_TYPE_JSON, IdentitySelector, ImdsApi, ImdsError, ImdsErrorKind, ImdsRequest,
    Method, RateClass,
};
use imdsguard_core::token::IMDSGUARD_DENY_ERROR;
use serde_json::{Value, json};

use crate::caller::{HostCaller, HostCallers};
use crate::decision::{DecisionRecord, DecisionSink, push_json_str};
use crate::fairness::{self, RateLimiter};
use crate::server::{CloseConnection, Handler, Reply};
use crate::upstream::{self, UpstreamError};
use crate::{Limits, Metrics, ProxyControl, Timeouts};

/// Whether a failed socket lookup was logged as a warning yet (once per process).
static LOOKUP_ERROR_LOGGED: AtomicBool = AtomicBool::new(false);

/// What a request came to, for the log record and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Forwarded (the upstream answered, whatever its status).
    Allow,
    /// Denied by imdsguard (403).
    Deny,
    /// Refused as IMDS would refuse it (400/404/405), answered by the proxy.
    Invalid,
    /// Over the caller's request rate (429, IMDS's throttling answer).
    Throttled,
    /// Allowed, but the upstream gave no usable answer (502/504).
    UpstreamError,
    /// Denied by the rules, but forwarded: a dry run.
    WouldDeny,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Invalid => "invalid",
            Outcome::Throttled => "throttled",
            Outcome::UpstreamError => "upstream-error",
            Outcome::WouldDeny => "would-deny",
        }
    }

    /// The `outcome` label of the metrics (`would_deny` for a dry run's denial).
    fn metric(self) -> &'static str {
        match self {
            Outcome::WouldDeny => "would_deny",
            other => other.as_str(),
        }
    }
}

/// The facts of one decision. Holds no body and no header value: never a token.
pub(crate) struct Record {
    pub(crate) pod: Option<Arc<PodInfo>>,
    /// The caller was found by its socket's cgroup (a hostNetwork pod, known or not).
    pub(crate) host_network: bool,
    /// The cgroup id of the caller's socket, when it is a socket of this host.
    pub(crate) cgroup: Option<u64>,
    pub(crate) path: String,
    pub(crate) endpoint: ImdsApi,
    /// AWS and GCP: the kind of request (`credentials`, `token`, ...), the record's
    /// and the metrics' `endpoint` in place of the Azure endpoint's name.
    pub(crate) label: Option<&'static str>,
    pub(crate) outcome: Outcome,
    pub(crate) rule: String,
    pub(crate) reason: Option<String>,
    pub(crate) resource: Option<String>,
    pub(crate) identity: Option<String>,
    pub(crate) redacted: bool,
    pub(crate) status: u16,
}

impl Record {
    /// The `endpoint` of the record and the metrics.
    fn endpoint_label(&self) -> &'static str {
        self.label.unwrap_or(self.endpoint.as_str())
    }
}

pub(crate) struct State {
    pub(crate) canon: Canonicalizer,
    pub(crate) control: ProxyControl,
    pub(crate) upstream: upstream::Client,
    pub(crate) metrics: Metrics,
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: Limits,
    pub(crate) rate: RateLimiter,
    pub(crate) decisions: Option<Arc<dyn DecisionSink>>,
    pub(crate) host: Option<HostCallers>,
    pub(crate) dry_run: bool,
    /// Whose metadata service this is: Azure's requests go through `decide` below, AWS
    /// and GCP's through `crate::cloud`.
    pub(crate) cloud: Cloud,
    /// AWS: the IMDSv2 tokens handed out through this proxy, by hash.
    pub(crate) tokens: crate::tokens::TokenBook,
}

impl Handler for State {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Reply, CloseConnection> {
        let start = Instant::now();
        let method = req.method().clone();
        let (reply, mut rec) = self.decide(req, peer, start).await;
        rec.status = reply.status().as_u16();
        let latency = start.elapsed();
        let namespace = rec.pod.as_ref().map_or("-", |p| p.namespace.as_str());
        self.metrics.decision(
            namespace,
            rec.endpoint_label(),
            rec.outcome.metric(),
            latency,
        );
        if rec.redacted {
            self.metrics.redaction(namespace);
        }
        let record = DecisionRecord {
            peer: peer.ip(),
            pod: rec.pod.as_deref(),
            method: method.as_str(),
            path: &rec.path,
            endpoint: rec.endpoint_label(),
            decision: rec.outcome.as_str(),
            rule: &rec.rule,
            status: rec.status,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            reason: rec.reason.as_deref(),
            resource: rec.resource.as_deref(),
            identity: rec.identity.as_deref(),
            redacted: rec.redacted,
            host_network: rec.host_network,
            cgroup: rec.cgroup,
        };
        match &self.decisions {
            Some(sink) => sink.record(&record),
            None => log(&record),
        }
        Ok(reply)
    }
}

impl State {
    async fn decide(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        start: Instant,
    ) -> (Reply, Record) {
        let pod = self.control.pods.load().get(peer.ip()).cloned();
        let mut rec = Record {
            pod,
            host_network: false,
            cgroup: None,
            path: String::new(),
            endpoint: ImdsApi::Unknown,
            label: None,
            outcome: Outcome::Deny,
            rule: String::new(),
            reason: None,
            resource: None,
            identity: None,
            redacted: false,
            status: 0,
        };
        // A caller the pod index does not know may be a process of this host: a
        // hostNetwork pod shares the node's addresses. Its socket tells.
        let mut unknown_pod_cgroup_id = None;
        if rec.pod.is_none()
            && let Some(host) = &self.host
        {
            let caller = host.identify(peer, start).await;
            self.metrics.host_caller_lookup(caller.result());
            match caller {
                HostCaller::Pod { pod, cgroup } => {
                    rec.pod = Some(pod);
                    rec.host_network = true;
                    rec.cgroup = Some(cgroup);
                }
                HostCaller::UnknownPodCgroup { cgroup } => {
                    rec.host_network = true;
                    rec.cgroup = Some(cgroup);
                    unknown_pod_cgroup_id = Some(cgroup);
                }
                HostCaller::Node { cgroup } => rec.cgroup = Some(cgroup),
                HostCaller::NoSocket => {}
                HostCaller::Error(e) => {
                    tracing::debug!(%peer, error = %e, "looking up a caller's socket failed");
                    if !LOOKUP_ERROR_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::warn!(%peer, error = %e, "looking up a caller's socket failed; such callers are unknown sources (counted in imdsguard_proxy_host_caller_lookups_total{{result=\"error\"}}; logged once)");
                    }
                }
            }
        }

        if self.cloud != Cloud::Azure {
            return self
                .decide_cloud(req, peer, rec, unknown_pod_cgroup_id)
                .await;
        }

        // 1. One spelling, or a rejection.
        let uri = req.uri();
        let owned;
        let raw: &str = if uri.scheme().is_none() && uri.authority().is_none() {
            uri.path_and_query().map_or("", |pq| pq.as_str())
        } else {
            owned = uri.to_string();
            &owned
        };
        let canon: CanonicalTarget = match self.canon.canonicalize(raw) {
            Ok(c) => c,
            Err(rejection) => {
                rec.path = shorten(raw.split('?').next().unwrap_or(raw), 200);
                if self.dry_run {
                    let raw = raw.to_string();
                    return self.as_received(req, raw, &rejection, peer, rec).await;
                }
                return (self.reject(&rejection, &mut rec), rec);
            }
        };
        rec.path.clone_from(&canon.path);
        rec.endpoint = canon.endpoint;
        let headers = req.headers();
        let rejection = match self
            .canon
            .check_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
        {
            Err(rejection) => Some(rejection),
            Ok(()) if req.method() != http::Method::POST && !req.body().is_end_stream() => {
                Some(Rejection {
                    kind: RejectKind::BadTargetForm,
                    detail: format!("a {} request with a body", req.method()),
                })
            }
            Ok(()) => None,
        };
        if let Some(rejection) = rejection {
            if self.dry_run {
                let raw = raw.to_string();
                return self.as_received(req, raw, &rejection, peer, rec).await;
            }
            return (self.reject(&rejection, &mut rec), rec);
        }

        // The caller's rate (per pod, or per source for unknown callers: the address,
        // and the socket's cgroup for a caller on this host): from here on a request
        // costs work, and for allowed ones IMDS's budget for the VM.
        let class = canon.endpoint.rate_class();
        let rated = self.rate.check(
            rec.pod.as_deref(),
            fairness::SourceKey::new(peer.ip(), rec.cgroup),
            class,
            Instant::now(),
        );
        if let Err(wait) = rated {
            return (self.throttled(canon.endpoint, class, wait, &mut rec), rec);
        }

        // 2. As IMDS would validate it (Metadata header, X-Forwarded-For, path, method,
        //    parameters), answered here with IMDS's own error. The query is the one
        //    canon decoded: nothing is decoded twice.
        let valid = match imds::validate_canonical(req.method().as_str(), &canon, headers.iter()) {
            Ok(v) => v,
            Err(e) => {
                rec.outcome = Outcome::Invalid;
                rec.rule = "imds-validation".into();
                rec.reason = Some(e.kind.to_string());
                return (imds_error(&e), rec);
            }
        };
        if let Some(t) = &valid.token {
            rec.resource = Some(t.resource.clone());
            rec.identity = Some(selector_text(t.selector.as_ref()));
        }

        // 3. Who is asking, and 4. the rules.
        let allow = match self.apply_rules(&mut rec, peer, unknown_pod_cgroup_id, |rules, pod| {
            rules.evaluate(pod, &valid)
        }) {
            Ok(allow) => allow,
            Err(d) => return (self.deny(d, &mut rec), rec),
        };

        // 5. Forward the canonical request.
        let (parts, body) = req.into_parts();
        let body = if valid.method == Method::Post {
            match self.read_body(body).await {
                Some(bytes) => bytes,
                None => {
                    rec.outcome = Outcome::Invalid;
                    rec.reason = Some("request body unreadable, too large or too slow".into());
                    let e = ImdsError::new(
                        valid.endpoint,
                        ImdsErrorKind::InvalidBody("unreadable, too large or too slow".into()),
                    );
                    return (imds_error(&e), rec);
                }
            }
        } else {
            Bytes::new()
        };
        let redact = allow
            .as_ref()
            .filter(|a| valid.endpoint == ImdsApi::Instance && !a.redaction.is_noop());
        let result = if let Some(allow) = redact {
            rec.redacted = true;
            self.forward_redacted(&valid, allow, &parts.headers).await
        } else {
            // Only what was validated and decided on goes upstream.
            self.forward(
                parts.method,
                &valid.upstream_target(),
                &parts.headers,
                body,
                valid.endpoint,
            )
            .await
        };
        self.answered(result, peer, rec)
    }

    /// The upstream's answer to a forwarded request, or the proxy's own 502/504.
    pub(crate) fn answered(
        &self,
        result: Result<Reply, UpstreamError>,
        peer: SocketAddr,
        mut rec: Record,
    ) -> (Reply, Record) {
        match result {
            Ok(reply) => (reply, rec),
            Err(e) => {
                self.metrics.upstream_error(e.kind());
                rec.redacted = false;
                // A dry run's denial stays the record's decision (its status says the
                // upstream failed); the upstream error is counted and logged.
                if rec.outcome == Outcome::WouldDeny {
                    tracing::warn!(%peer, error = %e, "a dry run's forwarded request got no usable answer");
                } else {
                    rec.outcome = Outcome::UpstreamError;
                    rec.reason = Some(e.to_string());
                }
                (self.upstream_error(&e), rec)
            }
        }
    }

    pub(crate) fn reject(&self, rejection: &Rejection, rec: &mut Record) -> Reply {
        rec.outcome = Outcome::Deny;
        rec.rule = RULE_CANONICAL_FORM.into();
        rec.reason = Some(format!("{}: {}", rejection.kind, rejection.detail));
        deny_reply(&Deny::canonical_form(rejection))
    }

    /// A dry run's `canonical-form` denial (an ambiguous target, a malformed header, a
    /// body where none belongs): recorded as `would-deny` and sent upstream as received
    /// (the raw target, the method, the body), since that is what would reach IMDS
    /// without the proxy; never re-spelled, because a re-spelled target may mean what
    /// IMDS would not have read. Like any forwarded request it counts against the
    /// caller's rate and passes IMDS's header checks first (`X-Forwarded-For`,
    /// `Metadata: true`: the upstream client always adds `Metadata: true`, so a request
    /// without it must not go). A target the upstream client cannot send as received
    /// (asterisk-form `*`, authority-form, `CONNECT`) is answered as IMDS would answer
    /// it: its own error, recorded `invalid`. Nothing the rules say is evaluated: the
    /// decision is the canonical-form denial.
    async fn as_received(
        &self,
        req: Request<Incoming>,
        target: String,
        rejection: &Rejection,
        peer: SocketAddr,
        mut rec: Record,
    ) -> (Reply, Record) {
        let uri = req.uri();
        let sendable = req.method() != http::Method::CONNECT
            && uri.path().starts_with('/')
            && uri.scheme().is_some() == uri.authority().is_some();
        let (path, query) = if sendable {
            (uri.path(), uri.query())
        } else {
            (target.as_str(), None)
        };
        // IMDS's own checks, headers first (`imds::validate`'s order); on a target the
        // canonicaliser refused only the header checks count, the rest is IMDS's to
        // read. The endpoint, read as leniently as IMDS reads paths, gives the rate
        // class and the shape of an error answer.
        let checked = imds::validate(req.method().as_str(), path, query, req.headers().iter());
        let endpoint = match rec.endpoint {
            ImdsApi::Unknown => ImdsApi::classify(path),
            known => known,
        };
        let class = endpoint.rate_class();
        let rated = self.rate.check(
            rec.pod.as_deref(),
            fairness::SourceKey::new(peer.ip(), rec.cgroup),
            class,
            Instant::now(),
        );
        if let Err(wait) = rated {
            return (self.throttled(endpoint, class, wait, &mut rec), rec);
        }
        let refused = match checked {
            Err(e)
                if !sendable
                    || matches!(
                        e.kind,
                        ImdsErrorKind::ForwardedFor | ImdsErrorKind::MissingMetadataHeader
                    ) =>
            {
                Some(e)
            }
            Ok(_) if !sendable => Some(ImdsError::new(
                ImdsApi::Unknown,
                ImdsErrorKind::UnknownPath {
                    path: shorten(&target, 200),
                    method: req.method().to_string(),
                },
            )),
            _ => None,
        };
        if let Some(e) = refused {
            rec.outcome = Outcome::Invalid;
            rec.rule = "imds-validation".into();
            rec.reason = Some(if sendable {
                e.kind.to_string()
            } else {
                format!(
                    "{} (a dry run cannot forward this request as received)",
                    e.kind
                )
            });
            return (imds_error(&e), rec);
        }
        rec.outcome = Outcome::WouldDeny;
        rec.rule = RULE_CANONICAL_FORM.into();
        rec.reason = Some(format!("{}: {}", rejection.kind, rejection.detail));

        let (parts, body) = req.into_parts();
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            match self.read_body(body).await {
                Some(bytes) => bytes,
                None => {
                    rec.outcome = Outcome::Invalid;
                    rec.rule = "imds-validation".into();
                    rec.reason = Some("request body unreadable, too large or too slow".into());
                    let e = ImdsError::new(
                        endpoint,
                        ImdsErrorKind::InvalidBody("unreadable, too large or too slow".into()),
                    );
                    return (imds_error(&e), rec);
                }
            }
        };
        let result = self
            .forward(parts.method, &target, &parts.headers, body, endpoint)
            .await;
        self.answered(result, peer, rec)
    }

    /// A request body read whole, within the body timeout and size limit; `None` when it
    /// is unreadable, too large or too slow.
    async fn read_body(&self, body: Incoming) -> Option<Bytes> {
        let read = tokio::time::timeout(
            self.timeouts.request_body,
            Limited::new(body, self.limits.max_request_body).collect(),
        )
        .await;
        match read {
            Ok(Ok(collected)) => Some(collected.to_bytes()),
            _ => None,
        }
    }

    /// IMDS's own throttling answer (429, its body for the endpoint) with `Retry-After`.
    fn throttled(
        &self,
        endpoint: ImdsApi,
        class: RateClass,
        wait: std::time::Duration,
        rec: &mut Record,
    ) -> Reply {
        let reply = imds_error(&ImdsError::new(endpoint, ImdsErrorKind::Throttled));
        self.throttled_reply(reply, class, wait, rec)
    }

    /// `reply`, the service's own 429, with `Retry-After`; the throttling counted and
    /// recorded in `rec`.
    pub(crate) fn throttled_reply(
        &self,
        mut reply: Reply,
        class: RateClass,
        wait: std::time::Duration,
        rec: &mut Record,
    ) -> Reply {
        let class = match class {
            RateClass::General => "general",
            RateClass::Identity => "identity",
        };
        self.metrics.throttled(class);
        rec.outcome = Outcome::Throttled;
        rec.rule = "pod-rate".into();
        rec.reason = Some(format!(
            "over the caller's {class} request rate; next request in {} ms",
            wait.as_millis()
        ));
        reply.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(fairness::retry_after_secs(wait)),
        );
        reply
    }

    /// The rules' decision on the caller (`rec.pod`, asking what `evaluate` checks),
    /// recorded in `rec`: a source that is no known pod (or a pod cgroup the index does
    /// not know yet) is denied, and so is everyone while no rules are loaded.
    /// `Ok(Some(allow))` when allowed; `Err` the denial, for [`State::deny`]. A dry run
    /// records a denial and goes on as if it were allowed, without an allowing rule
    /// (`Ok(None)`, so without redaction: the answer is the upstream's).
    pub(crate) fn apply_rules(
        &self,
        rec: &mut Record,
        peer: SocketAddr,
        unknown_pod_cgroup: Option<u64>,
        evaluate: impl FnOnce(&AccessRules, &PodInfo) -> Decision,
    ) -> Result<Option<Allow>, Deny> {
        let decision = match &rec.pod {
            None => Decision::Deny(match unknown_pod_cgroup {
                Some(cgroup) => Deny::unknown_pod_cgroup(peer.ip(), cgroup),
                None => Deny::unknown_source(peer.ip()),
            }),
            Some(pod) => match &*self.control.rules.load() {
                Some(rules) => evaluate(rules, pod),
                None => Decision::Deny(Deny::no_rules()),
            },
        };
        match decision {
            Decision::Deny(d) if self.dry_run => {
                rec.outcome = Outcome::WouldDeny;
                rec.rule = d.rule;
                rec.reason = Some(d.reason);
                Ok(None)
            }
            Decision::Deny(d) => Err(d),
            Decision::Allow(a) => {
                rec.outcome = Outcome::Allow;
                rec.rule = a.rule.to_string();
                Ok(Some(a))
            }
        }
    }

    pub(crate) fn deny(&self, deny: Deny, rec: &mut Record) -> Reply {
        rec.outcome = Outcome::Deny;
        let reply = deny_reply(&deny);
        rec.rule = deny.rule;
        rec.reason = Some(deny.reason);
        reply
    }

    async fn forward(
        &self,
        method: http::Method,
        target: &str,
        headers: &http::HeaderMap,
        body: Bytes,
        endpoint: ImdsApi,
    ) -> Result<Reply, UpstreamError> {
        let start = Instant::now();
        let answer = self.upstream.send(method, target, headers, body).await;
        self.metrics.upstream(endpoint.as_str(), start.elapsed());
        let answer = answer?;
        if !answer.status.is_success() {
            return upstream_error_answer(endpoint, answer);
        }
        let mut reply = Response::new(Full::new(answer.body));
        *reply.status_mut() = answer.status;
        *reply.headers_mut() = answer.headers;
        Ok(reply)
    }

    /// The instance document with fields removed: the whole document is read as JSON,
    /// redacted, and the asked element rendered here in the asked format (so a text
    /// listing cannot name what JSON would hide).
    async fn forward_redacted(
        &self,
        req: &ImdsRequest,
        allow: &Allow,
        headers: &http::HeaderMap,
    ) -> Result<Reply, UpstreamError> {
        // The api-version is one of imds::API_VERSIONS (validated): safe to embed.
        let version = req.api_version.as_deref().unwrap_or(imds::API_VERSIONS[0]);
        let target = format!("/metadata/instance?api-version={version}&format=json");
        let start = Instant::now();
        let answer = self
            .upstream
            .send(http::Method::GET, &target, headers, Bytes::new())
            .await;
        self.metrics
            .upstream(ImdsApi::Instance.as_str(), start.elapsed());
        let answer = answer?;
        if answer.status != StatusCode::OK {
            // An IMDS error says nothing about the document: passed on when it is in
            // IMDS's shape.
            return upstream_error_answer(ImdsApi::Instance, answer);
        }
        let mut doc: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| UpstreamError::BadDocument(format!("not JSON ({e})")))?;
        if !doc.is_object() {
            return Err(UpstreamError::BadDocument("not a JSON object".into()));
        }
        allow.redaction.apply(&mut doc);
        Ok(
            match imds::render_instance(&doc, &req.instance_path, req.format) {
                Ok(r) => respond(StatusCode::OK, r.content_type, r.body),
                Err(e) => imds_error(&e),
            },
        )
    }

    fn upstream_error(&self, e: &UpstreamError) -> Reply {
        let body = json!({
            "error": "imdsguard_upstream_error",
            "error_description": format!(
                "imdsguard allowed the request but the metadata service at {} gave no usable answer: {e}",
                self.upstream.base()
            ),
        });
        respond(e.status(), CONTENT_TYPE_JSON, body.to_string())
    }
}

/// An upstream answer that is not a success: passed on only in one of IMDS's documented
/// error shapes (re-written with only the documented fields, `Retry-After` kept when it
/// is a number of seconds), else an error that becomes the proxy's own 502.
fn upstream_error_answer(
    endpoint: ImdsApi,
    answer: upstream::Answer,
) -> Result<Reply, UpstreamError> {
    let Some(body) = imds::upstream_error_body(endpoint, answer.status.as_u16(), &answer.body)
    else {
        return Err(UpstreamError::NotImdsError(answer.status.as_u16()));
    };
    let mut reply = respond(answer.status, CONTENT_TYPE_JSON, body);
    if let Some(v) = answer.headers.get(header::RETRY_AFTER)
        && !v.is_empty()
        && v.len() <= 6
        && v.as_bytes().iter().all(u8::is_ascii_digit)
    {
        reply.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    Ok(reply)
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Reply {
    let mut reply = Response::new(Full::new(body.into()));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

fn deny_reply(deny: &Deny) -> Reply {
    respond(StatusCode::FORBIDDEN, CONTENT_TYPE_JSON, deny_body(deny))
}

/// [`Deny::body`] as text, written directly (the same bytes as serialising the
/// `serde_json::Value`, keys in its order) instead of building the value per request.
fn deny_body(deny: &Deny) -> String {
    let mut out = String::with_capacity(96 + deny.rule.len() + deny.reason.len() + deny.help.len());
    out.push_str(r#"{"error":"#);
    push_json_str(&mut out, IMDSGUARD_DENY_ERROR);
    out.push_str(r#","imdsguard":{"decision":"deny","help":"#);
    push_json_str(&mut out, &deny.help);
    out.push_str(r#","reason":"#);
    push_json_str(&mut out, &deny.reason);
    out.push_str(r#","rule":"#);
    push_json_str(&mut out, &deny.rule);
    out.push_str("}}");
    out
}

fn imds_error(e: &ImdsError) -> Reply {
    respond(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
        CONTENT_TYPE_JSON,
        e.body_string(),
    )
}

fn selector_text(s: Option<&IdentitySelector>) -> String {
    match s {
        None => "default".into(),
        Some(IdentitySelector::ClientId(v)) => format!("client_id={v}"),
        Some(IdentitySelector::ObjectId(v)) => format!("object_id={v}"),
        Some(IdentitySelector::ResourceId { id, .. }) => format!("msi_res_id={id}"),
    }
}

pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `namespace/name`, or `-`, without allocating.
struct PodId<'a>(Option<&'a PodInfo>);

impl fmt::Display for PodId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}/{}", p.namespace, p.name),
            None => f.write_str("-"),
        }
    }
}

/// The decision's one log record as a `tracing` event (target `imdsguard::decision`),
/// when no [`DecisionSink`] takes it.
fn log(rec: &DecisionRecord<'_>) {
    let pod = rec.pod;
    macro_rules! record {
        ($level:expr) => {
            tracing::event!(
                target: "imdsguard::decision",
                $level,
                peer = %rec.peer,
                pod = %PodId(pod),
                namespace = pod.map_or("-", |p| p.namespace.as_str()),
                service_account = pod.map_or("-", |p| p.service_account.as_str()),
                method = rec.method,
                path = rec.path,
                endpoint = rec.endpoint,
                decision = rec.decision,
                rule = rec.rule,
                status = rec.status,
                latency_us = rec.latency_us,
                reason = rec.reason,
                resource = rec.resource,
                identity = rec.identity,
                redacted = rec.redacted,
                host_network = rec.host_network.then_some(true),
                cgroup_id = rec.cgroup,
                "decision"
            )
        };
    }
    if rec.is_warning() {
        record!(tracing::Level::WARN);
    } else {
        record!(tracing::Level::INFO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deny_body_is_the_same_bytes_as_the_json_value() {
        let rejection = Rejection {
            kind: RejectKind::BadTargetForm,
            detail: "a \"quoted\" \\ path\n\u{1}ü".into(),
        };
        for deny in [
            Deny::unknown_source("127.0.0.9".parse().unwrap()),
            Deny::canonical_form(&rejection),
            Deny::no_rules(),
            Deny::unknown_pod_cgroup("::ffff:127.0.0.1".parse().unwrap(), 4242),
            Deny::new("r\"1", "why\t", "help\u{7f}😀"),
        ] {
            assert_eq!(deny_body(&deny), deny.body().to_string());
        }
    }

    /// The tracing event's fields as tracing-subscriber's JSON formatter writes them.
    fn tracing_fields(rec: &DecisionRecord<'_>) -> (Value, Value) {
        #[derive(Clone, Default)]
        struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || log(rec));
        let line = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        (v["fields"].clone(), v)
    }

    #[test]
    fn the_sinks_fields_are_the_tracing_events_fields() {
        let mut pod = PodInfo::new("pay\"ments", "api-7d9f");
        pod.service_account = "api\n".into();
        let rec = DecisionRecord {
            peer: "127.0.0.2".parse().unwrap(),
            pod: Some(&pod),
            method: "GET",
            path: "/metadata/identity/oauth2/token",
            endpoint: "identity-token",
            decision: "allow",
            rule: "payments-api-arm",
            status: 200,
            latency_us: 1234,
            reason: None,
            resource: Some("https://management.azure.com/"),
            identity: Some("client_id=abc"),
            redacted: false,
            host_network: false,
            cgroup: None,
        };
        let others = [
            DecisionRecord {
                pod: None,
                decision: "deny",
                rule: "unknown-source",
                status: 403,
                reason: Some("127.0.0.2 is \"no\" known pod"),
                resource: None,
                identity: None,
                ..rec
            },
            DecisionRecord {
                decision: "upstream-error",
                status: 502,
                reason: Some("connect: refused"),
                redacted: true,
                ..rec
            },
            DecisionRecord {
                decision: "would-deny",
                rule: "default-deny",
                reason: Some("no rule allows it"),
                host_network: true,
                cgroup: Some(4242),
                ..rec
            },
            DecisionRecord {
                pod: None,
                decision: "deny",
                rule: "unknown-source",
                cgroup: Some(17),
                ..rec
            },
        ];
        for rec in std::iter::once(rec).chain(others) {
            let (fields, whole) = tracing_fields(&rec);
            let mut out = String::new();
            rec.write_json_fields(&mut out);
            let ours: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(ours, fields, "{out}");
            assert_eq!(whole["target"], "imdsguard::decision");
            let level = if rec.is_warning() { "WARN" } else { "INFO" };
            assert_eq!(whole["level"], level);
        }
    }
}
