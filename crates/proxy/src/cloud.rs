//! AWS and GCP requests (`--cloud aws|gcp`): the same steps as Azure's, with each
//! cloud's rules from the core.
//!
//! 1. **canonicalise** with [`Canonicalizer::for_cloud`](imdsguard_core::canon::Canonicalizer::for_cloud)
//!    (case kept, the cloud's own query parameters) and refuse header tricks
//!    (a metadata header twice or named by `Connection`): `canonical-form`, 403;
//! 2. **validate** as the service would ([`aws::validate`], [`gcp::validate`]): its own
//!    error answer (status and body) from the proxy, never from upstream; a GCP
//!    parameter the server would ignore is refused (`canonical-form`);
//! 3. **decide** with [`cloud_access::evaluate`] (the secrets [`aws::secret_kind`] and
//!    [`gcp::secret_kind`] name are granted only by a path naming them);
//! 4. **AWS tokens**: a `GET` carrying an IMDSv2 token the proxy did not hand to this pod
//!    is denied (`token-not-issued-to-caller`) with IMDS's own 401, so that SDKs fetch a
//!    fresh token through the proxy ([`crate::tokens`]);
//! 5. **forward** the validated request (its canonical target, the cloud's metadata
//!    headers and `User-Agent`, `Accept`, `Content-Type`; never `X-Forwarded-For`),
//!    record a token answer's hash for the pod, and redact JSON answers as the rules
//!    say (an answer to redact that is not JSON is withheld: 502).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use imdsguard_core::access::{Deny, RULE_TOKEN_NOT_ISSUED};
use imdsguard_core::canon::{Cloud, RejectKind, Rejection};
use imdsguard_core::cloud_access::{self, CloudRequest};
use imdsguard_core::imds::RateClass;
use imdsguard_core::{aws, gcp};
use serde_json::Value;

use crate::fairness;
use crate::handler::{Outcome, Record, State, respond, shorten};
use crate::server::Reply;
use crate::upstream::{Answer, UpstreamError};

/// The rule name of a request refused as the metadata service itself would refuse it.
const RULE_VALIDATION: &str = "imds-validation";

/// A request as the cloud's protocol module read it.
enum Valid {
    Aws(aws::AwsRequest),
    Gcp(gcp::GcpRequest),
}

impl Valid {
    /// The record's `endpoint`: the kind (`credentials`, `token`, `attribute`, ...).
    fn label(&self) -> &'static str {
        match self {
            Valid::Aws(a) => a.kind.as_str(),
            Valid::Gcp(g) => g.kind.as_str(),
        }
    }

    /// What goes upstream: the canonical target the module validated.
    fn upstream_target(&self) -> String {
        match self {
            Valid::Aws(a) => a.canonical_path(),
            Valid::Gcp(g) => g.upstream_target(),
        }
    }

    /// Whether the module says the answer bears a secret. GCP's recursive reads of the
    /// attributes are decided by redaction instead ([`cloud_access::evaluate`]).
    fn secret(&self) -> bool {
        match self {
            Valid::Aws(a) => aws::secret_kind(a).is_some(),
            Valid::Gcp(g) => matches!(
                gcp::secret_kind(g),
                Some(
                    gcp::GcpSecret::AccessToken
                        | gcp::GcpSecret::IdentityToken
                        | gcp::GcpSecret::KubeEnv
                        | gcp::GcpSecret::SecretAttribute
                )
            ),
        }
    }

    /// Tokens and credentials count against the caller's identity rate.
    fn rate_class(&self) -> RateClass {
        let identity = match self {
            Valid::Aws(a) => matches!(
                a.kind,
                aws::AwsKind::Token { .. }
                    | aws::AwsKind::Credentials { .. }
                    | aws::AwsKind::IdentityCredentials
            ),
            Valid::Gcp(g) => matches!(
                g.kind,
                gcp::GcpKind::Token { .. } | gcp::GcpKind::Identity { .. }
            ),
        };
        if identity {
            RateClass::Identity
        } else {
            RateClass::General
        }
    }

    /// Whether the answer is a JSON document a rule's `redact` applies to: AWS's
    /// identity document, IAM info and credentials; GCP's recursive reads in JSON.
    fn json_answer(&self) -> bool {
        match self {
            Valid::Aws(a) => matches!(
                a.kind,
                aws::AwsKind::IdentityDocument
                    | aws::AwsKind::IamInfo
                    | aws::AwsKind::Credentials { .. }
                    | aws::AwsKind::IdentityCredentials
            ),
            Valid::Gcp(g) => g.recursive && g.alt != Some(gcp::Alt::Text),
        }
    }
}

/// The metadata service's own error answer for `status` (AWS's XHTML page, GCP's page or
/// line of text with `Metadata-Flavor: Google`).
fn cloud_error(cloud: Cloud, status: u16, method: &str, path: &str) -> Reply {
    match cloud {
        Cloud::Gcp => {
            let kind = match status {
                404 => gcp::GcpErrorKind::NotFound,
                429 => gcp::GcpErrorKind::Throttled,
                s => gcp::GcpErrorKind::Status(s),
            };
            gcp_error(&gcp::GcpError::new(kind, method, path))
        }
        _ => respond(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            aws::CONTENT_TYPE_HTML,
            aws::error_page(status),
        ),
    }
}

fn gcp_error(e: &gcp::GcpError) -> Reply {
    let mut reply = respond(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
        e.content_type(),
        e.body(),
    );
    reply.headers_mut().insert(
        HeaderName::from_static("metadata-flavor"),
        HeaderValue::from_static(gcp::METADATA_FLAVOR_VALUE),
    );
    reply
}

/// The cloud's metadata headers of the client's request, each once, for upstream.
fn metadata_headers(cloud: Cloud, headers: &http::HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    imdsguard_core::canon::metadata_headers(cloud)
        .iter()
        .filter_map(|name| {
            let name = HeaderName::from_static(name);
            headers.get(&name).map(|v| (name, v.clone()))
        })
        .collect()
}

impl State {
    /// An AWS or GCP request, after the caller was looked up (see the module
    /// documentation).
    pub(crate) async fn decide_cloud(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        mut rec: Record,
        unknown_pod_cgroup: Option<u64>,
    ) -> (Reply, Record) {
        // 1. One spelling, or a rejection.
        let uri = req.uri();
        let raw: String = if uri.scheme().is_none() && uri.authority().is_none() {
            uri.path_and_query()
                .map_or(String::new(), |pq| pq.as_str().to_string())
        } else {
            uri.to_string()
        };
        let canon = match self.canon.canonicalize(&raw) {
            Ok(c) => c,
            Err(rejection) => {
                rec.path = shorten(raw.split('?').next().unwrap_or(&raw), 200);
                return self.cloud_rejected(req, &rejection, peer, rec).await;
            }
        };
        rec.path.clone_from(&canon.path);
        let headers = req.headers();
        let header_names = || headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        let rejection = match self
            .canon
            .check_headers(header_names())
            .and_then(|()| self.canon.check_cloud_headers(header_names()))
        {
            Err(r) => Some(r),
            Ok(()) if !req.body().is_end_stream() => Some(Rejection {
                kind: RejectKind::BadTargetForm,
                detail: format!("a {} request with a body", req.method()),
            }),
            Ok(()) => None,
        };
        if let Some(rejection) = rejection {
            return self.cloud_rejected(req, &rejection, peer, rec).await;
        }

        // 2. As the service would validate it.
        let method_owned = req.method().as_str().to_string();
        let method = method_owned.as_str();
        let query = canon.query.as_deref();
        let valid = match self.cloud {
            Cloud::Gcp => match gcp::validate(method, &canon.path, query, headers.iter()) {
                Ok(g) => Valid::Gcp(g),
                Err(e) => {
                    rec.outcome = Outcome::Invalid;
                    rec.rule = RULE_VALIDATION.into();
                    rec.reason = Some(e.kind.to_string());
                    return (gcp_error(&e), rec);
                }
            },
            _ => match aws::validate(method, &canon.path, query, headers.iter()) {
                Ok(a) => Valid::Aws(a),
                Err(e) => {
                    rec.outcome = Outcome::Invalid;
                    rec.rule = RULE_VALIDATION.into();
                    rec.reason = Some(e.kind.to_string());
                    let reply = respond(
                        StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                        e.content_type(),
                        e.body(),
                    );
                    return (reply, rec);
                }
            },
        };
        if let Valid::Gcp(g) = &valid
            && let Some(ignored) = g.ignored_params.first()
        {
            let rejection = Rejection {
                kind: RejectKind::UnknownParameter,
                detail: format!(
                    "query parameter `{}` means nothing on this path (the server would ignore it)",
                    shorten(ignored, 32)
                ),
            };
            return self.cloud_rejected(req, &rejection, peer, rec).await;
        }
        rec.label = Some(valid.label());
        if let Valid::Gcp(g) = &valid
            && let gcp::GcpKind::Identity { audience, .. } = &g.kind
        {
            rec.resource = Some(audience.clone());
        }

        // The caller's rate.
        let class = valid.rate_class();
        if let Err(wait) = self.rate.check(
            rec.pod.as_deref(),
            fairness::SourceKey::new(peer.ip(), rec.cgroup),
            class,
            Instant::now(),
        ) {
            return (self.cloud_throttled(class, wait, method, &mut rec), rec);
        }

        // 3. Who is asking, and the rules.
        let Some(mut creq) = CloudRequest::new(self.cloud, method, &canon) else {
            // validate let only GET and PUT through.
            rec.outcome = Outcome::Invalid;
            rec.rule = RULE_VALIDATION.into();
            return (cloud_error(self.cloud, 405, method, &canon.path), rec);
        };
        if valid.secret() {
            creq.mark_secret();
        }
        let allow = match self.apply_rules(&mut rec, peer, unknown_pod_cgroup, |rules, pod| {
            cloud_access::evaluate(rules, pod, &creq)
        }) {
            Ok(allow) => allow,
            Err(d) => return (self.deny(d, &mut rec), rec),
        };

        // 4. An IMDSv2 token is good only for the pod it was handed to here.
        if let Valid::Aws(a) = &valid
            && let Some(token) = &a.token
            && let Some(pod) = rec.pod.clone()
            && let Err(refusal) = self.tokens.check(token.as_str(), &pod, Instant::now())
        {
            let fingerprint = token.fingerprint();
            rec.identity = Some(format!("token sha256:{fingerprint}"));
            let reason = refusal.reason(&pod, &fingerprint);
            if self.dry_run {
                if rec.outcome == Outcome::Allow {
                    rec.outcome = Outcome::WouldDeny;
                    rec.rule = RULE_TOKEN_NOT_ISSUED.into();
                    rec.reason = Some(reason);
                }
            } else {
                rec.outcome = Outcome::Deny;
                rec.rule = RULE_TOKEN_NOT_ISSUED.into();
                rec.reason = Some(reason);
                return (cloud_error(self.cloud, 401, method, &canon.path), rec);
            }
        }

        // 5. Forward what was validated.
        let mut extra = metadata_headers(self.cloud, headers);
        if let Valid::Aws(aws::AwsRequest {
            kind: aws::AwsKind::Token { ttl },
            ..
        }) = &valid
        {
            extra.retain(|(n, _)| n.as_str() != "x-aws-ec2-metadata-token");
            extra.retain(|(n, _)| !n.as_str().ends_with("ttl-seconds"));
            extra.push((
                HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds"),
                HeaderValue::from(*ttl),
            ));
        }
        let target = valid.upstream_target();
        let (parts, _) = req.into_parts();
        let start = Instant::now();
        let answer = self
            .upstream
            .send_with(parts.method, &target, &parts.headers, &extra, Bytes::new())
            .await;
        self.metrics.upstream(valid.label(), start.elapsed());
        let result = answer.and_then(|answer| {
            self.cloud_answer(
                answer,
                &valid,
                allow.as_ref(),
                &mut rec,
                method,
                &canon.path,
            )
        });
        self.answered(result, peer, rec)
    }

    /// The upstream's answer: an error in the service's own shape, a token recorded
    /// for its pod, a JSON answer redacted.
    fn cloud_answer(
        &self,
        answer: Answer,
        valid: &Valid,
        allow: Option<&imdsguard_core::access::Allow>,
        rec: &mut Record,
        method: &str,
        path: &str,
    ) -> Result<Reply, UpstreamError> {
        if answer.status.is_redirection() {
            // GCE sends a directory asked without its `/` to the path with it: passed on
            // when the target is a path on the same server, nothing else of the answer.
            let location = answer
                .headers
                .get(header::LOCATION)
                .filter(|l| {
                    let l = l.as_bytes();
                    l.starts_with(b"/")
                        && !l.starts_with(b"//")
                        && l.len() <= 2048
                        && l.iter().all(|b| b.is_ascii_graphic() && *b != b'\\')
                })
                .cloned();
            if let Some(location) = location {
                let mut reply = respond(
                    answer.status,
                    "text/plain; charset=utf-8",
                    format!("{}\n", location.to_str().unwrap_or_default()),
                );
                reply.headers_mut().insert(header::LOCATION, location);
                if self.cloud == Cloud::Gcp {
                    reply.headers_mut().insert(
                        HeaderName::from_static("metadata-flavor"),
                        HeaderValue::from_static(gcp::METADATA_FLAVOR_VALUE),
                    );
                }
                return Ok(reply);
            }
        }
        if !answer.status.is_success() {
            let mut reply = cloud_error(self.cloud, answer.status.as_u16(), method, path);
            if let Some(v) = answer.headers.get(header::RETRY_AFTER)
                && !v.is_empty()
                && v.len() <= 6
                && v.as_bytes().iter().all(u8::is_ascii_digit)
            {
                reply.headers_mut().insert(header::RETRY_AFTER, v.clone());
            }
            return Ok(reply);
        }
        let mut body = answer.body;
        if let Valid::Aws(aws::AwsRequest {
            kind: aws::AwsKind::Token { ttl },
            ..
        }) = valid
            && let Some(pod) = &rec.pod
        {
            // The answer's own lifetime, when it says a shorter one.
            let said = answer
                .headers
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|v| aws::parse_ttl(v.as_bytes()).ok())
                .unwrap_or(*ttl);
            let token = body.trim_ascii();
            if !token.is_empty() {
                self.tokens.issue(
                    token,
                    pod,
                    Duration::from_secs(u64::from(said.min(*ttl))),
                    Instant::now(),
                );
            }
        }
        let mut headers = answer.headers;
        if let Some(allow) = allow
            && !allow.redaction.is_noop()
            && valid.json_answer()
        {
            let mut doc: Value = serde_json::from_slice(&body)
                .map_err(|e| UpstreamError::NotRedactable(format!("not JSON: {e}")))?;
            if !doc.is_object() {
                return Err(UpstreamError::NotRedactable("not a JSON object".into()));
            }
            allow.redaction.apply(&mut doc);
            body = Bytes::from(doc.to_string());
            rec.redacted = true;
            // The upstream's ETag names the whole answer, not this one.
            headers.remove(header::ETAG);
        }
        let mut reply = http::Response::new(Full::new(body));
        *reply.status_mut() = answer.status;
        *reply.headers_mut() = headers;
        Ok(reply)
    }

    /// A refused spelling or header: 403 `canonical-form`; in a dry run, recorded
    /// `would-deny` and sent upstream as received when it can be (an origin-form `GET`
    /// or `PUT`, its path and query as they came, the cloud's metadata headers), else
    /// the service's own 404.
    async fn cloud_rejected(
        &self,
        req: Request<Incoming>,
        rejection: &Rejection,
        peer: SocketAddr,
        mut rec: Record,
    ) -> (Reply, Record) {
        if !self.dry_run {
            let example = match self.cloud {
                Cloud::Gcp => {
                    "GET /computeMetadata/v1/instance/zone with Metadata-Flavor: Google once"
                }
                _ => "GET /latest/meta-data/placement/region, the token header once",
            };
            let mut deny = Deny::canonical_form(rejection);
            deny.help = format!(
                "send the request in its plain form, as the metadata service's documentation writes it (e.g. {example}), without encoded, repeated or dot segments, unknown or repeated query parameters, or repeated metadata headers"
            );
            let reply = self.deny(deny, &mut rec);
            rec.reason = Some(format!("{}: {}", rejection.kind, rejection.detail));
            return (reply, rec);
        }
        let method = req.method().as_str().to_string();
        let uri = req.uri();
        let sendable = matches!(method.as_str(), "GET" | "PUT")
            && uri.scheme().is_none()
            && uri.path().starts_with('/')
            && req.body().is_end_stream();
        let target = uri.path_and_query().map(|pq| pq.as_str().to_string());
        if let Err(wait) = self.rate.check(
            rec.pod.as_deref(),
            fairness::SourceKey::new(peer.ip(), rec.cgroup),
            RateClass::General,
            Instant::now(),
        ) {
            return (
                self.cloud_throttled(RateClass::General, wait, &method, &mut rec),
                rec,
            );
        }
        let (Some(target), true) = (target, sendable) else {
            rec.outcome = Outcome::Invalid;
            rec.rule = RULE_VALIDATION.into();
            rec.reason = Some(format!(
                "{}: {} (a dry run cannot forward this request as received)",
                rejection.kind, rejection.detail
            ));
            let path = rec.path.clone();
            return (cloud_error(self.cloud, 404, &method, &path), rec);
        };
        rec.outcome = Outcome::WouldDeny;
        rec.rule = imdsguard_core::access::RULE_CANONICAL_FORM.into();
        rec.reason = Some(format!("{}: {}", rejection.kind, rejection.detail));
        let extra = metadata_headers(self.cloud, req.headers());
        let (parts, _) = req.into_parts();
        let answer = self
            .upstream
            .send_with(parts.method, &target, &parts.headers, &extra, Bytes::new())
            .await;
        let result = answer.map(|a| {
            let mut reply = http::Response::new(Full::new(a.body));
            *reply.status_mut() = a.status;
            *reply.headers_mut() = a.headers;
            reply
        });
        self.answered(result, peer, rec)
    }

    /// The service's 429 with `Retry-After`.
    fn cloud_throttled(
        &self,
        class: RateClass,
        wait: Duration,
        method: &str,
        rec: &mut Record,
    ) -> Reply {
        let reply = cloud_error(self.cloud, 429, method, &rec.path);
        self.throttled_reply(reply, class, wait, rec)
    }
}
