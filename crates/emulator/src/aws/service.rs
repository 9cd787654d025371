//! The AWS IMDS listener: tokens, then [`aws::validate`], then the answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use imdsguard_core::aws::{
    self, AwsError, AwsKind, AwsMethod, AwsRequest, CONTENT_TYPE_TEXT, SessionToken,
};
use imdsguard_core::token::format_unix_utc;
use imdsguard_serve::{CloseConnection, Handler};
use serde_json::{Value, json};

use super::conn::Conns;
use super::{AwsConfig, HOP_LIMIT_HEADER, HttpTokens};
use crate::now_secs;
use crate::rng::Rng;
use crate::server::Answer;

/// Most live session tokens kept; past it the oldest expiring go first (EC2 keeps no
/// documented limit; a bound keeps a flood from growing the table).
const MAX_TOKENS: usize = 65_536;

/// Credentials are renewed this long before they expire (EC2 renews them at least five
/// minutes before).
const RENEW_BEFORE: u64 = 15 * 60;

/// One minted set of temporary credentials.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    last_updated: u64,
    expiration: u64,
}

pub(crate) struct AwsState {
    config: AwsConfig,
    rng: Rng,
    tokens: Mutex<HashMap<String, Instant>>,
    role: Mutex<Option<Credentials>>,
    identity: Mutex<Option<Credentials>>,
    started: u64,
}

/// One listener: the shared state and its own connections (for the hop limit).
pub(crate) struct AwsListener {
    pub(crate) state: Arc<AwsState>,
    pub(crate) conns: Arc<Conns>,
}

fn respond(status: u16, content_type: &str) -> http::response::Builder {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .header(header::SERVER, "EC2ws")
}

fn text(body: impl Into<Bytes>) -> Answer {
    let body = body.into();
    respond(200, CONTENT_TYPE_TEXT)
        .body(Full::new(body))
        .expect("static response parts are valid")
}

fn error(e: &AwsError) -> Answer {
    respond(e.status, e.content_type())
        .body(Full::new(Bytes::from(e.body())))
        .expect("static response parts are valid")
}

/// Letters and digits as base32 (upper case, 2-7), as AWS access key ids are written.
fn base32(rng: &Rng, n: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    rng.bytes(n)
        .into_iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect()
}

impl AwsState {
    pub(crate) fn new(config: AwsConfig, seed: Option<u64>) -> AwsState {
        AwsState {
            config,
            rng: Rng::new(seed),
            tokens: Mutex::new(HashMap::new()),
            role: Mutex::new(None),
            identity: Mutex::new(None),
            started: now_secs(),
        }
    }

    /// A new session token: `AQAE` (as EC2's start) then `FAKE` and random bytes.
    fn mint_token(&self, ttl: u32) -> String {
        let token = format!("AQAEAFAKE{}", STANDARD.encode(self.rng.bytes(42)));
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|_, expiry| *expiry > now);
        if tokens.len() >= MAX_TOKENS {
            let oldest = tokens
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                tokens.remove(&oldest);
            }
        }
        tokens.insert(token.clone(), now + Duration::from_secs(u64::from(ttl)));
        token
    }

    /// Whether `token` was minted here and has not expired.
    fn token_valid(&self, token: &SessionToken) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(token.as_str())
            .is_some_and(|expiry| *expiry > Instant::now())
    }

    /// The current credentials in `slot`, minted again when about to expire.
    fn credentials(&self, slot: &Mutex<Option<Credentials>>) -> Value {
        let now = now_secs();
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot
            .as_ref()
            .is_none_or(|c| c.expiration <= now + RENEW_BEFORE)
        {
            let secret = STANDARD.encode(self.rng.bytes(30));
            *slot = Some(Credentials {
                access_key_id: format!("ASIAFAKE{}", base32(&self.rng, 12)),
                secret_access_key: format!("fake{}", &secret[..36]),
                token: format!("FAKEIQoJb3JpZ2lu{}", STANDARD.encode(self.rng.bytes(480))),
                last_updated: now,
                expiration: now + self.config.credentials_lifetime_secs,
            });
        }
        let c = slot.as_ref().expect("minted above");
        json!({
            "Code": "Success",
            "LastUpdated": format_unix_utc(c.last_updated as i64),
            "Type": "AWS-HMAC",
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key,
            "Token": c.token,
            "Expiration": format_unix_utc(c.expiration as i64),
        })
    }

    fn iam_info(&self) -> Value {
        let c = &self.config;
        let id = format!("AIPAFAKE{}", base32(&Rng::new(Some(self.started)), 13));
        json!({
            "Code": "Success",
            "LastUpdated": format_unix_utc(self.started as i64),
            "InstanceProfileArn": format!("arn:aws:iam::{}:instance-profile/{}", c.account_id, c.instance_profile_name),
            "InstanceProfileId": id,
        })
    }

    fn identity_document(&self) -> Value {
        let c = &self.config;
        json!({
            "accountId": c.account_id,
            "architecture": "x86_64",
            "availabilityZone": c.availability_zone,
            "billingProducts": null,
            "devpayProductCodes": null,
            "marketplaceProductCodes": null,
            "imageId": c.ami_id,
            "instanceId": c.instance_id,
            "instanceType": c.instance_type,
            "kernelId": null,
            "pendingTime": format_unix_utc(self.started as i64),
            "privateIp": c.local_ipv4.to_string(),
            "ramdiskId": null,
            "region": c.region,
            "version": "2017-09-30",
        })
    }

    /// The meta-data tree (secrets are answered by kind before the tree is read; their
    /// leaves are here so that the listings name them).
    fn tree(&self) -> Node {
        let c = &self.config;
        let leaf = |s: &str| Node::Leaf(s.to_string());
        let mut iface = vec![
            ("device-number", leaf("0")),
            ("interface-id", leaf(&c.interface_id)),
            ("local-hostname", leaf(&c.local_hostname)),
            ("local-ipv4s", leaf(&c.local_ipv4.to_string())),
            ("mac", leaf(&c.mac)),
            ("owner-id", leaf(&c.account_id)),
            ("security-group-ids", leaf(&c.security_group_ids.join("\n"))),
            ("security-groups", leaf(&c.security_groups.join("\n"))),
            ("subnet-id", leaf(&c.subnet_id)),
            ("subnet-ipv4-cidr-block", leaf(&c.subnet_ipv4_cidr)),
            ("vpc-id", leaf(&c.vpc_id)),
            ("vpc-ipv4-cidr-block", leaf(&c.vpc_ipv4_cidr)),
            ("vpc-ipv4-cidr-blocks", leaf(&c.vpc_ipv4_cidr)),
        ];
        if let Some(v6) = c.ipv6 {
            iface.push(("ipv6s", leaf(&v6.to_string())));
        }
        let mut root = vec![
            ("ami-id", leaf(&c.ami_id)),
            ("ami-launch-index", leaf("0")),
            ("ami-manifest-path", leaf("(unknown)")),
            (
                "block-device-mapping",
                Node::dir(vec![
                    ("ami", leaf("/dev/xvda")),
                    ("root", leaf("/dev/xvda")),
                ]),
            ),
            (
                "events",
                Node::dir(vec![(
                    "maintenance",
                    Node::dir(vec![("history", leaf("[]")), ("scheduled", leaf("[]"))]),
                )]),
            ),
            ("hostname", leaf(&c.local_hostname)),
        ];
        if let Some(role) = &c.role_name {
            root.push((
                "iam",
                Node::dir(vec![
                    ("info", leaf("")),
                    (
                        "security-credentials",
                        Node::dir(vec![(role.as_str(), leaf(""))]),
                    ),
                ]),
            ));
        }
        root.extend([
            (
                "identity-credentials",
                Node::dir(vec![(
                    "ec2",
                    Node::dir(vec![
                        ("info", leaf("")),
                        (
                            "security-credentials",
                            Node::dir(vec![(aws::IDENTITY_CREDENTIALS_ROLE, leaf(""))]),
                        ),
                    ]),
                )]),
            ),
            ("instance-action", leaf("none")),
            ("instance-id", leaf(&c.instance_id)),
            ("instance-life-cycle", leaf("on-demand")),
            ("instance-type", leaf(&c.instance_type)),
        ]);
        if let Some(v6) = c.ipv6 {
            root.push(("ipv6", leaf(&v6.to_string())));
        }
        root.extend([
            ("local-hostname", leaf(&c.local_hostname)),
            ("local-ipv4", leaf(&c.local_ipv4.to_string())),
            ("mac", leaf(&c.mac)),
            (
                "metrics",
                Node::dir(vec![(
                    "vhostmd",
                    leaf("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
                )]),
            ),
            (
                "network",
                Node::dir(vec![(
                    "interfaces",
                    Node::dir(vec![(
                        "macs",
                        Node::dir(vec![(c.mac.as_str(), Node::dir(iface))]),
                    )]),
                )]),
            ),
            (
                "placement",
                Node::dir(vec![
                    ("availability-zone", leaf(&c.availability_zone)),
                    ("availability-zone-id", leaf(&c.availability_zone_id)),
                    ("region", leaf(&c.region)),
                ]),
            ),
            ("profile", leaf("default-hvm")),
            ("reservation-id", leaf("r-0abc0000deadbeef1")),
            ("security-groups", leaf(&c.security_groups.join("\n"))),
            (
                "services",
                Node::dir(vec![
                    ("domain", leaf("amazonaws.com")),
                    ("partition", leaf("aws")),
                ]),
            ),
        ]);
        if c.tags_in_metadata {
            let tags = c.tags.iter().map(|(k, v)| (k.as_str(), leaf(v))).collect();
            root.push(("tags", Node::dir(vec![("instance", Node::dir(tags))])));
        }
        Node::dir(root)
    }

    /// The answer to a request that passed the token checks.
    fn answer(&self, req: &AwsRequest) -> Result<Answer, AwsError> {
        let c = &self.config;
        let not_found = || AwsError::not_found(&req.canonical_path());
        match &req.kind {
            AwsKind::Token { .. } => unreachable!("answered by the caller"),
            AwsKind::Versions => Ok(text(aws::VERSIONS.join("\n"))),
            AwsKind::VersionRoot => {
                let mut items = vec!["dynamic", "meta-data"];
                if c.user_data.is_some() {
                    items.push("user-data");
                }
                Ok(text(items.join("\n")))
            }
            AwsKind::UserData => c.user_data.clone().map(text).ok_or_else(not_found),
            AwsKind::IamInfo if c.role_name.is_some() => Ok(text(self.iam_info().to_string())),
            AwsKind::Credentials { role } if c.role_name.as_ref() == Some(role) => {
                Ok(text(pretty(&self.credentials(&self.role))))
            }
            AwsKind::IdentityCredentials => Ok(text(pretty(&self.credentials(&self.identity)))),
            AwsKind::IamInfo | AwsKind::Credentials { .. } => Err(not_found()),
            AwsKind::IdentityDocument => Ok(text(pretty(&self.identity_document()))),
            AwsKind::Dynamic => {
                let path: Vec<&str> = req
                    .dynamic_path()
                    .unwrap_or_default()
                    .iter()
                    .map(String::as_str)
                    .collect();
                match path.as_slice() {
                    [] => Ok(text("fws/\ninstance-identity/")),
                    ["fws"] => Ok(text("instance-monitoring")),
                    ["fws", "instance-monitoring"] => Ok(text("disabled")),
                    ["instance-identity"] => Ok(text("document\npkcs7\nrsa2048\nsignature")),
                    ["instance-identity", "pkcs7" | "rsa2048" | "signature"] => {
                        // Not a signature anyone can verify: random bytes, by design.
                        Ok(text(STANDARD.encode(self.rng.bytes(256))))
                    }
                    _ => Err(not_found()),
                }
            }
            AwsKind::MetaData => {
                let path = req.meta_data_path().unwrap_or_default();
                match self.tree().find(path) {
                    Some(Node::Leaf(v)) => Ok(text(v.clone())),
                    Some(Node::Dir(children)) => Ok(text(
                        children
                            .iter()
                            .map(|(name, n)| match n {
                                Node::Dir(_) => format!("{name}/"),
                                Node::Leaf(_) => name.clone(),
                            })
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )),
                    None => Err(not_found()),
                }
            }
        }
    }

    /// Answers one request from `peer`.
    fn handle(&self, req: &Request<Incoming>, peer: SocketAddr, conns: &Conns) -> Answer {
        let parts = (req.method().as_str(), req.uri().path(), req.uri().query());
        conns.unlimit(peer);
        if parts.0 != "PUT" {
            // Tokens are checked before the path: EC2 answers 401 to an unauthenticated
            // request whatever it asks for.
            let token = match aws::request_token(req.headers().iter()) {
                Ok(t) => t,
                Err(e) => return error(&e),
            };
            match token {
                Some(t) if !self.token_valid(&t) => return error(&AwsError::unauthorized()),
                None if self.config.http_tokens == HttpTokens::Required => {
                    return error(&AwsError::unauthorized());
                }
                _ => {}
            }
        }
        let valid = match aws::validate(parts.0, parts.1, parts.2, req.headers().iter()) {
            Ok(v) => v,
            Err(e) => return error(&e),
        };
        if let (AwsMethod::Put, AwsKind::Token { ttl }) = (valid.method, &valid.kind) {
            let token = self.mint_token(*ttl);
            let hops = self.config.hop_limit;
            if !conns.limit(peer, hops) {
                tracing::debug!(%peer, hops, "could not set the token answer's hop limit");
            }
            return respond(200, CONTENT_TYPE_TEXT)
                .header(aws::TOKEN_TTL_HEADER, ttl.to_string())
                .header(HOP_LIMIT_HEADER, hops.to_string())
                .body(Full::new(Bytes::from(token)))
                .expect("static response parts are valid");
        }
        self.answer(&valid).unwrap_or_else(|e| error(&e))
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values serialize")
}

/// A node of the meta-data tree: a leaf's text or a directory's children in order.
enum Node {
    Leaf(String),
    Dir(Vec<(String, Node)>),
}

impl Node {
    fn dir(children: Vec<(&str, Node)>) -> Node {
        Node::Dir(
            children
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    fn find(&self, path: &[String]) -> Option<&Node> {
        let mut node = self;
        for seg in path {
            let Node::Dir(children) = node else {
                return None;
            };
            node = &children.iter().find(|(name, _)| name == seg)?.1;
        }
        Some(node)
    }
}

impl Handler for AwsListener {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Answer, CloseConnection> {
        let start = Instant::now();
        let answer = self.state.handle(&req, peer, &self.conns);
        let latency_ms = (start.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        // The path only: a session token travels in a header and is never logged; a
        // client writing a token into the path gets it redacted as a JWT would be.
        let path = imdsguard_core::token::redact_jwts(req.uri().path());
        let kind = aws::parse_path(req.uri().path())
            .and_then(|p| aws::classify(&p.segments))
            .map_or("unknown", |k| k.as_str());
        tracing::info!(
            listener = "aws-imds",
            %peer,
            method = %req.method(),
            %path,
            kind,
            token = req.headers().contains_key(aws::TOKEN_HEADER),
            status = answer.status().as_u16(),
            latency_ms,
            "request"
        );
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_fake_seeded_and_renewed_only_near_expiry() {
        let a = AwsState::new(AwsConfig::default_eks(), Some(3));
        let b = AwsState::new(AwsConfig::default_eks(), Some(3));
        let ca = a.credentials(&a.role);
        assert_eq!(ca["AccessKeyId"], b.credentials(&b.role)["AccessKeyId"]);
        let id = ca["AccessKeyId"].as_str().unwrap();
        assert!(id.starts_with("ASIA") && id.len() == 20, "{id}");
        assert_eq!(ca["SecretAccessKey"].as_str().unwrap().len(), 40);
        assert_eq!(a.credentials(&a.role), ca, "same until near expiry");
        assert_ne!(
            a.credentials(&a.identity)["AccessKeyId"],
            ca["AccessKeyId"],
            "the identity credentials are others"
        );
        let other = AwsState::new(AwsConfig::default_eks(), Some(4));
        assert_ne!(
            other.credentials(&other.role)["AccessKeyId"],
            ca["AccessKeyId"]
        );
    }

    #[test]
    fn tokens_expire_and_are_bounded() {
        let s = AwsState::new(AwsConfig::default_eks(), Some(1));
        let t = s.mint_token(60);
        assert!(t.starts_with("AQAEAFAKE"));
        assert!(s.token_valid(&SessionToken::new(t.clone())));
        assert!(!s.token_valid(&SessionToken::new(format!("{t}x"))));
        s.tokens
            .lock()
            .unwrap()
            .insert("old".into(), Instant::now() - Duration::from_secs(1));
        assert!(!s.token_valid(&SessionToken::new("old")));
        s.mint_token(1);
        assert!(
            !s.tokens.lock().unwrap().contains_key("old"),
            "expired ones pruned"
        );
    }
}
