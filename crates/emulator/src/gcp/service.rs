//! The GCE metadata listener: [`gcp::validate`], then the answer from the tree, a minted
//! token, or the error page, every answer with `Metadata-Flavor: Google`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use imdsguard_core::gcp::{
    self, Alt, CONTENT_TYPE_JSON, CONTENT_TYPE_TEXT, GcpError, GcpErrorKind, GcpKind, GcpRequest,
    IdentityFormat,
};
use imdsguard_core::token::redact_jwts;
use imdsguard_serve::{CloseConnection, Handler, Reply};
use serde_json::{Value, json};

use super::config::{GcpConfig, ServiceAccount};
use super::tree::{self, Dir, Leaf, Node};
use crate::now_secs;
use crate::rng::Rng;

pub(crate) struct GcpState {
    pub(crate) config: GcpConfig,
    pub(crate) tree: Dir,
    pub(crate) rng: Arc<Rng>,
    pub(crate) max_wait: Duration,
}

/// An answer with the headers GCE puts on every answer.
fn respond(status: u16, content_type: &str) -> http::response::Builder {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(gcp::METADATA_FLAVOR, gcp::METADATA_FLAVOR_VALUE)
        .header(header::SERVER, gcp::SERVER_HEADER)
        .header(header::CONTENT_TYPE, content_type)
        .header("X-XSS-Protection", "0")
        .header("X-Frame-Options", "SAMEORIGIN")
}

fn finish(builder: http::response::Builder, body: impl Into<Bytes>) -> Reply {
    builder
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn error(e: &GcpError) -> Reply {
    let body = e.body();
    finish(respond(e.status(), e.content_type()), body)
}

/// A 200 answer with its ETag (FNV-1a of the body, 16 hex digits, as GCE's look).
fn ok(content_type: &str, body: String) -> Reply {
    let etag = etag(&body);
    finish(respond(200, content_type).header(header::ETAG, etag), body)
}

pub(crate) fn etag(body: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Handler for GcpState {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Reply, CloseConnection> {
        let start = Instant::now();
        // The path only, never the query (audiences, scopes) nor a body; whatever a
        // client puts in the path, a JWT is not logged.
        let path = redact_jwts(req.uri().path());
        let method = req.method().clone();
        let (kind, answer) = self.answer(&req).await;
        let latency_ms = (start.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        tracing::info!(
            listener = "gcp",
            %peer,
            %method,
            %path,
            kind,
            status = answer.status().as_u16(),
            latency_ms,
            "request"
        );
        Ok(answer)
    }
}

impl GcpState {
    async fn answer(&self, req: &Request<Incoming>) -> (&'static str, Reply) {
        let uri = req.uri();
        let valid = match gcp::validate(
            req.method().as_str(),
            uri.path(),
            uri.query(),
            req.headers().iter(),
        ) {
            Ok(v) => v,
            Err(e) => return ("refused", error(&e)),
        };
        let kind = valid.kind.as_str();
        let not_found = || {
            error(&GcpError::new(
                GcpErrorKind::NotFound,
                req.method().as_str(),
                uri.path(),
            ))
        };
        let answer = match &valid.kind {
            GcpKind::Discovery => ok(CONTENT_TYPE_TEXT, "computeMetadata/\n".into()),
            GcpKind::Versions => ok(CONTENT_TYPE_TEXT, "v1/\n".into()),
            GcpKind::Token { account, .. } if !valid.directory => {
                match self.config.account(account) {
                    Some(sa) => self.token(sa),
                    None => not_found(),
                }
            }
            GcpKind::Identity {
                account,
                audience,
                format,
                licenses,
            } if !valid.directory => match self.config.account(account) {
                Some(sa) => self.identity(sa, audience, *format, *licenses),
                None => not_found(),
            },
            _ => match self.read(&valid, uri.query()) {
                Some(answer) => self.wait(&valid, answer).await,
                None => not_found(),
            },
        };
        (kind, answer)
    }

    /// A `wait_for_change` request: the tree never changes here, so an unchanged value
    /// (no `last_etag`, or the current one) is answered after `timeout_sec` capped at
    /// `max_wait`; another `last_etag` at once.
    async fn wait(&self, req: &GcpRequest, answer: Reply) -> Reply {
        if !req.wait_for_change || answer.status() != StatusCode::OK {
            return answer;
        }
        let current = answer
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if req.last_etag.as_deref().is_some_and(|e| e != current) {
            return answer;
        }
        let asked = req
            .timeout_sec
            .map(Duration::from_secs)
            .unwrap_or(self.max_wait);
        tokio::time::sleep(asked.min(self.max_wait)).await;
        answer
    }

    /// An answer from the tree; `None` when there is no such entry.
    fn read(&self, req: &GcpRequest, query: Option<&str>) -> Option<Reply> {
        let node = if req.segments.is_empty() {
            None
        } else {
            Some(tree::lookup(&self.tree, &req.segments)?)
        };
        let dir = match node {
            None => &self.tree,
            Some(Node::Dir(d)) => d,
            Some(Node::Leaf(_)) if req.directory => return None,
            Some(Node::Leaf(leaf)) => return leaf_answer(leaf, req.alt),
        };
        if req.recursive {
            return Some(match req.alt {
                Some(Alt::Text) => {
                    let mut out = String::new();
                    tree::dir_text(dir, "", &mut out);
                    ok(CONTENT_TYPE_TEXT, out)
                }
                _ => ok(CONTENT_TYPE_JSON, tree::dir_json(dir).to_string()),
            });
        }
        if !req.directory && !req.segments.is_empty() {
            // A directory asked without its `/`: sent to the listing.
            let mut location = req.path();
            location.push('/');
            if let Some(q) = query {
                location.push('?');
                location.push_str(q);
            }
            let body = format!("{location}\n");
            return Some(finish(
                respond(301, CONTENT_TYPE_TEXT).header(header::LOCATION, location),
                body,
            ));
        }
        let listing = dir.listing();
        Some(match req.alt {
            Some(Alt::Json) => ok(CONTENT_TYPE_JSON, json!(listing).to_string()),
            _ => ok(CONTENT_TYPE_TEXT, lines(&listing)),
        })
    }

    fn token(&self, _sa: &ServiceAccount) -> Reply {
        let token = format!(
            "ya29.imdsguard-fake.{}",
            URL_SAFE_NO_PAD.encode(self.rng.bytes(96))
        );
        let body = json!({
            "access_token": token,
            "expires_in": self.config.token_lifetime_secs,
            "token_type": "Bearer",
        });
        ok(CONTENT_TYPE_JSON, body.to_string())
    }

    fn identity(
        &self,
        sa: &ServiceAccount,
        audience: &str,
        format: IdentityFormat,
        licenses: bool,
    ) -> Reply {
        let c = &self.config;
        let now = now_secs();
        let kid: String = self
            .rng
            .bytes(20)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let header = json!({ "alg": "RS256", "kid": kid, "typ": "JWT" });
        let mut claims = json!({
            "aud": audience,
            "azp": sa.unique_id,
            "email": sa.email,
            "email_verified": true,
            "exp": now + c.token_lifetime_secs + 1,
            "iat": now,
            "iss": "https://accounts.google.com",
            "sub": sa.unique_id,
        });
        if format == IdentityFormat::Full {
            let mut engine = json!({
                "instance_creation_timestamp": 1_700_000_000u64,
                "instance_id": c.instance_id.to_string(),
                "instance_name": c.instance_name,
                "project_id": c.project_id,
                "project_number": c.numeric_project_id,
                "zone": c.zone,
            });
            if licenses {
                engine["license_id"] = json!([]);
            }
            claims["google"] = json!({ "compute_engine": engine });
        }
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let jwt = format!(
            "{}.{}.{}",
            part(&header),
            part(&claims),
            URL_SAFE_NO_PAD.encode(self.rng.bytes(256))
        );
        ok(CONTENT_TYPE_TEXT, jwt)
    }
}

fn lines(items: &[String]) -> String {
    let mut out = String::new();
    for i in items {
        out.push_str(i);
        out.push('\n');
    }
    out
}

/// A value as GCE answers it: text unless the value is JSON by default (`tags`) or
/// `alt` asks otherwise. Minted values are never read from the tree.
fn leaf_answer(leaf: &Leaf, alt: Option<Alt>) -> Option<Reply> {
    Some(match (leaf, alt) {
        (Leaf::Minted, _) => return None,
        (Leaf::Str(v), Some(Alt::Json)) => ok(CONTENT_TYPE_JSON, json!(v).to_string()),
        (Leaf::Str(v), _) => ok(CONTENT_TYPE_TEXT, v.clone()),
        (Leaf::Num(v), Some(Alt::Json)) => ok(CONTENT_TYPE_JSON, json!(v).to_string()),
        (Leaf::Num(v), _) => ok(CONTENT_TYPE_TEXT, v.to_string()),
        (Leaf::List { items, .. }, Some(Alt::Json)) => {
            ok(CONTENT_TYPE_JSON, json!(items).to_string())
        }
        (Leaf::List { items, .. }, Some(Alt::Text)) => ok(CONTENT_TYPE_TEXT, lines(items)),
        (
            Leaf::List {
                items,
                json_default,
            },
            None,
        ) => {
            if *json_default {
                ok(CONTENT_TYPE_JSON, json!(items).to_string())
            } else {
                ok(CONTENT_TYPE_TEXT, lines(items))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_stable_and_tell_bodies_apart() {
        assert_eq!(etag("a"), etag("a"));
        assert_ne!(etag("a"), etag("b"));
        assert_eq!(etag("").len(), 16);
    }
}
