//! The attacker's path against AWS EC2 instance metadata (IMDSv1 and IMDSv2) from where
//! the probe runs:
//!
//! 1. TCP reachability of the endpoint (and of `[fd00:ec2::254]` and the EKS Pod
//!    Identity agent when asked: reachability only);
//! 2. `imdsv1`: `GET /latest/meta-data/` without a session token (IMDSv1 open?);
//! 3. `imdsv2-token`: `PUT /latest/api/token` with a short TTL (an IMDSv2 session token
//!    from here? When the hop limit stops the answer, the step times out and says so);
//! 4. with IMDSv1 or the session token: the instance identity document (region,
//!    account, instance id and type), `iam/info` (instance profile), the role name from
//!    `iam/security-credentials/`, the role's credentials (AccessKeyId shown as its first
//!    four characters and a fingerprint, Expiration; the secret key and the token never),
//!    and whether user data is there (its size only).
//!
//! Nothing read is kept beyond what a step shows: the session token lives in memory for
//! the walk and is shown as its fingerprint only.

use std::fmt;

use http::Method;
use imdsguard_core::aws as protocol;
use imdsguard_core::token::fingerprint;
use serde::Serialize;
use serde_json::Value;

use crate::classify::{Class, Outcome};
use crate::cloud::{self, Walk};
use crate::config::{AWS_TOKEN_TTL_SECONDS, ProbeConfig};
use crate::http::{Failure, Response};
use crate::report::{Fact, Step, StepName};

/// `GET` without a token: is IMDSv1 open?
pub const META_DATA_PATH: &str = "/latest/meta-data/";
/// The IMDSv2 session token `PUT`.
pub const TOKEN_PATH: &str = protocol::TOKEN_PATH;
/// The instance identity document.
pub const IDENTITY_DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";
/// The instance profile.
pub const IAM_INFO_PATH: &str = "/latest/meta-data/iam/info";
/// The role name(s), and with a role name appended, its credentials.
pub const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";
/// The user data.
pub const USER_DATA_PATH: &str = "/latest/user-data";

/// At most this many roles' credentials are asked for (an instance profile has one).
const MAX_ROLES: usize = 3;

/// The role credentials a step obtained, as far as they may be shown. The
/// `SecretAccessKey` and `Token` are never kept: only whether they were there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AwsCredentials {
    /// The AccessKeyId's first four characters (`ASIA`: temporary credentials, `AKIA`:
    /// a long-term key).
    pub access_key_id_prefix: String,
    /// [`fingerprint`] of the whole AccessKeyId.
    pub access_key_id_fingerprint: String,
    /// Whether a `SecretAccessKey` came with it (never shown).
    pub secret_access_key_present: bool,
    /// Whether a session `Token` came with it (never shown).
    pub token_present: bool,
    /// `Expiration`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    /// `Code` (`Success`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `Type` (`AWS-HMAC`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `LastUpdated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
}

impl AwsCredentials {
    fn describe(&self, role: &str) -> String {
        let mut text = format!(
            "credentials of role {role} issued: AccessKeyId {}… (sha256:{})",
            self.access_key_id_prefix, self.access_key_id_fingerprint
        );
        if let Some(exp) = &self.expiration {
            text.push_str(&format!(", Expiration {exp}"));
        }
        let mut hidden = Vec::new();
        if self.secret_access_key_present {
            hidden.push("SecretAccessKey");
        }
        if self.token_present {
            hidden.push("Token");
        }
        if !hidden.is_empty() {
            text.push_str(&format!("; {} present, not shown", hidden.join(" and ")));
        }
        text
    }
}

/// The IMDSv2 session token, held for the walk. Debug shows its fingerprint only.
struct SessionToken(String);

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionToken(sha256:{})", fingerprint(&self.0))
    }
}

/// Walks the AWS path (see the module documentation).
pub(crate) async fn walk(config: &ProbeConfig) -> Vec<Step> {
    let mut walk = Walk::start(config).await;

    // 2. IMDSv1.
    let (v1, _) = walk
        .http(StepName::Imdsv1, Method::GET, META_DATA_PATH, &[], imdsv1)
        .await;
    let v1_class = v1.class;

    // 3. IMDSv2 session token.
    let ttl = AWS_TOKEN_TTL_SECONDS.to_string();
    let (v2, answer) = walk
        .http(
            StepName::Imdsv2Token,
            Method::PUT,
            TOKEN_PATH,
            &[(protocol::TOKEN_TTL_HEADER, &ttl)],
            session_token,
        )
        .await;
    let v2_class = v2.class;
    let token = answer
        .filter(|_| v2_class == Class::SessionToken)
        .map(|r| SessionToken(String::from_utf8_lossy(&r.body).trim().to_owned()));

    // 4. With IMDSv1 or the session token (also when imdsguard denied the IMDSv1 listing:
    //    its rules may let other paths through).
    let token_header;
    let headers: &[(&str, &str)] = match &token {
        Some(t) => {
            token_header = [(protocol::TOKEN_HEADER, t.0.as_str())];
            &token_header
        }
        None => &[],
    };
    let proceed =
        token.is_some() || matches!(v1_class, Class::Readable | Class::BlockedByImdsguard);
    let why = format!(
        "not attempted: neither IMDSv1 (ended {v1_class}) nor an IMDSv2 session token \
         (ended {v2_class})"
    );
    let paths = [
        (StepName::IdentityDocument, IDENTITY_DOCUMENT_PATH),
        (StepName::IamInfo, IAM_INFO_PATH),
        (StepName::IamRole, CREDENTIALS_PATH),
    ];
    if !proceed {
        for (name, path) in paths {
            walk.skip(name, path, why.clone());
        }
        walk.skip(StepName::Credentials, CREDENTIALS_PATH, why.clone());
        walk.skip(StepName::UserData, USER_DATA_PATH, why);
        return walk.steps;
    }
    walk.http(
        StepName::IdentityDocument,
        Method::GET,
        IDENTITY_DOCUMENT_PATH,
        headers,
        identity_document,
    )
    .await;
    walk.http(
        StepName::IamInfo,
        Method::GET,
        IAM_INFO_PATH,
        headers,
        iam_info,
    )
    .await;
    let (role_step, answer) = walk
        .http(
            StepName::IamRole,
            Method::GET,
            CREDENTIALS_PATH,
            headers,
            iam_role,
        )
        .await;
    let role_class = role_step.class;
    let roles: Vec<String> = match answer {
        Some(r) if role_class == Class::Readable => roles(&r.body),
        _ => Vec::new(),
    };
    if roles.is_empty() {
        walk.skip(
            StepName::Credentials,
            CREDENTIALS_PATH,
            format!("not attempted: no role name (the iam-role step ended {role_class})"),
        );
    }
    for role in roles.iter().take(MAX_ROLES) {
        let path = format!("{CREDENTIALS_PATH}{role}");
        let (step, _) = walk
            .http(StepName::Credentials, Method::GET, &path, headers, |r| {
                credentials(r, role)
            })
            .await;
        step.resource = Some(role.clone());
    }
    walk.http(
        StepName::UserData,
        Method::GET,
        USER_DATA_PATH,
        headers,
        user_data,
    )
    .await;
    walk.steps
}

/// `GET /latest/meta-data/` without a token.
pub(crate) fn imdsv1(result: &Result<Response, Failure>) -> Outcome {
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => {
            let entries = cloud::listing(&response.body);
            let iam = entries.iter().any(|e| e == "iam/" || e == "iam");
            Outcome::new(
                Class::Readable,
                format!(
                    "IMDSv1 open: the meta-data tree answers without a session token ({} \
                     entries{}); anything on this path reads it, SSRF included",
                    entries.len(),
                    if iam { ", iam/ among them" } else { "" }
                ),
            )
            .with_facts(vec![Fact::new("imdsv1", "open")])
        }
        401 => Outcome::new(
            Class::NeedsHeader,
            "refused without a session token (HTTP 401): IMDSv2 is required \
             (httpTokens=required)",
        )
        .with_facts(vec![Fact::new("imdsv1", "closed")]),
        403 => Outcome::new(
            Class::Error,
            format!(
                "HTTP 403 Forbidden: {} (IMDS turned off on this instance?)",
                cloud::quote(&response.body)
            ),
        ),
        _ => cloud::unexpected(response, false),
    }
}

/// `PUT /latest/api/token`.
pub(crate) fn session_token(result: &Result<Response, Failure>) -> Outcome {
    if matches!(result, Err(Failure::ResponseTimeout)) {
        return Outcome::new(
            Class::BlockedTimeout,
            "no answer to the token PUT in time: the IMDSv2 token answer leaves with the \
             instance's hop limit (httpPutResponseHopLimit) as its IP TTL, and at 1 it \
             dies one hop away, before a pod behind the node sees it (or something \
             dropped the request or the answer)",
        );
    }
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    let token = String::from_utf8_lossy(&response.body).trim().to_owned();
    match response.status {
        200 if !token.is_empty() => Outcome::new(
            Class::SessionToken,
            format!(
                "IMDSv2 session token issued from here (TTL {AWS_TOKEN_TTL_SECONDS} s, \
                 sha256:{}, not shown): IMDSv2 works at this hop count",
                fingerprint(&token)
            ),
        ),
        200 => Outcome::new(Class::Error, "HTTP 200 but an empty token"),
        400 => Outcome::new(
            Class::Error,
            format!(
                "HTTP 400 Bad Request: the token PUT was refused ({})",
                cloud::quote(&response.body)
            ),
        ),
        403 => Outcome::new(
            Class::Error,
            format!(
                "HTTP 403 Forbidden: the token PUT was refused ({}; X-Forwarded-For on the \
                 way, or IMDS turned off?)",
                cloud::quote(&response.body)
            ),
        ),
        _ => cloud::unexpected(response, true),
    }
}

/// The instance identity document.
pub(crate) fn identity_document(result: &Result<Response, Failure>) -> Outcome {
    let response = match ok(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&response.body) else {
        return Outcome::new(
            Class::Error,
            format!(
                "HTTP 200 but not an identity document ({} bytes)",
                response.body.len()
            ),
        );
    };
    let mut facts = Vec::new();
    for (key, name) in [
        ("region", "region"),
        ("accountId", "account_id"),
        ("instanceId", "instance_id"),
        ("instanceType", "instance_type"),
        ("availabilityZone", "availability_zone"),
    ] {
        if let Some(value) = doc.get(key).and_then(Value::as_str) {
            facts.push(Fact::new(name, cloud::leaf(value.as_bytes())));
        }
    }
    let detail = if facts.is_empty() {
        "identity document readable (no region, account or instance named)".to_owned()
    } else {
        format!("identity document readable: {}", describe(&facts))
    };
    Outcome::new(Class::Readable, detail).with_facts(facts)
}

/// `iam/info`.
pub(crate) fn iam_info(result: &Result<Response, Failure>) -> Outcome {
    let response = match ok(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    let arn = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| {
            v.get("InstanceProfileArn")
                .and_then(Value::as_str)
                .map(|s| cloud::leaf(s.as_bytes()))
        });
    match arn {
        Some(arn) => Outcome::new(Class::Readable, format!("instance profile {arn}"))
            .with_facts(vec![Fact::new("instance_profile_arn", arn)]),
        None => Outcome::new(
            Class::Error,
            format!(
                "HTTP 200 but no InstanceProfileArn ({} bytes)",
                response.body.len()
            ),
        ),
    }
}

/// `iam/security-credentials/`: the role name.
pub(crate) fn iam_role(result: &Result<Response, Failure>) -> Outcome {
    let response = match ok(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    let roles = roles(&response.body);
    if roles.is_empty() {
        return Outcome::new(Class::Error, "HTTP 200 but no usable role name");
    }
    Outcome::new(Class::Readable, format!("role {}", roles.join(", ")))
        .with_facts(roles.iter().map(|r| Fact::new("role", r.clone())).collect())
}

/// The role names of a `iam/security-credentials/` listing that are plain path segments
/// (IAM role names: letters, digits and `+=,.@_-`).
fn roles(body: &[u8]) -> Vec<String> {
    cloud::listing(body)
        .into_iter()
        .map(|r| r.trim_end_matches('/').to_owned())
        .filter(|r| {
            !r.is_empty()
                && r.len() <= 64
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
        })
        .collect()
}

/// `iam/security-credentials/ROLE`: the credentials, summarised.
pub(crate) fn credentials(result: &Result<Response, Failure>, role: &str) -> Outcome {
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => {}
        404 => {
            return Outcome::new(
                Class::NotFound,
                format!("HTTP 404: no credentials for role {role}"),
            );
        }
        _ => return cloud::unexpected(response, true),
    }
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(&response.body) else {
        return Outcome::new(
            Class::Error,
            format!(
                "HTTP 200 but not a credentials document ({} bytes, not quoted)",
                response.body.len()
            ),
        );
    };
    let text = |key: &str| {
        doc.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let Some(key_id) = text("AccessKeyId") else {
        return Outcome::new(
            Class::Error,
            format!(
                "HTTP 200 but no AccessKeyId (Code {})",
                text("Code").map_or("-".to_owned(), |c| cloud::leaf(c.as_bytes()))
            ),
        );
    };
    let shown = |key: &str| text(key).map(|v| cloud::leaf(v.as_bytes()));
    let creds = AwsCredentials {
        access_key_id_prefix: key_id.chars().take(4).collect(),
        access_key_id_fingerprint: fingerprint(key_id),
        secret_access_key_present: text("SecretAccessKey").is_some(),
        token_present: text("Token").is_some(),
        expiration: shown("Expiration"),
        code: shown("Code"),
        kind: shown("Type"),
        last_updated: shown("LastUpdated"),
    };
    Outcome {
        credentials: Some(creds.clone()),
        ..Outcome::new(Class::CredentialsObtained, creds.describe(role))
    }
}

/// `/latest/user-data`: its size only.
pub(crate) fn user_data(result: &Result<Response, Failure>) -> Outcome {
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => Outcome::new(
            Class::Exposed,
            format!(
                "user data readable ({} bytes, not shown): bootstrap scripts often hold \
                 secrets",
                response.body.len()
            ),
        )
        .with_facts(vec![Fact::new(
            "user_data_bytes",
            response.body.len().to_string(),
        )]),
        404 => Outcome::new(Class::NotFound, "HTTP 404: no user data"),
        _ => cloud::unexpected(response, true),
    }
}

/// An answer that should be 200 (404 is `not-found`, anything else unexpected; never
/// quoted beyond [`cloud::quote`]).
fn ok(result: &Result<Response, Failure>) -> Result<&Response, Box<Outcome>> {
    let response = cloud::answer(result)?;
    match response.status {
        200 => Ok(response),
        401 => Err(Box::new(Outcome::new(
            Class::NeedsHeader,
            "HTTP 401: refused without a valid session token (IMDSv2 required)",
        ))),
        404 => Err(Box::new(Outcome::new(
            Class::NotFound,
            "HTTP 404: not there (no instance profile attached?)",
        ))),
        _ => Err(Box::new(cloud::unexpected(response, false))),
    }
}

fn describe(facts: &[Fact]) -> String {
    facts
        .iter()
        .map(|f| format!("{} {}", f.name.replace('_', " "), f.value))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn answer(status: u16, body: &str) -> Result<Response, Failure> {
        Ok(Response {
            status,
            body: Bytes::from(body.to_owned()),
        })
    }

    const DENY: &str = r#"{"error":"imdsguard_denied","imdsguard":{"decision":"deny","rule":"r1","reason":"credentials are not allowed"}}"#;

    #[test]
    fn imdsv1_open_closed_or_denied() {
        let o = imdsv1(&answer(200, "ami-id\nhostname\niam/\n"));
        assert_eq!(o.class, Some(Class::Readable));
        assert!(o.detail.contains("IMDSv1 open") && o.detail.contains("3 entries, iam/"));
        assert!(!Class::Readable.is_sensitive());
        let o = imdsv1(&answer(401, ""));
        assert_eq!(o.class, Some(Class::NeedsHeader));
        assert!(o.detail.contains("IMDSv2 is required"));
        let o = imdsv1(&answer(403, DENY));
        assert_eq!(o.class, Some(Class::BlockedByImdsguard));
        assert_eq!(
            o.detail,
            "denied by proxy (imdsguard rule r1): credentials are not allowed"
        );
        assert_eq!(o.denial.unwrap().rule.as_deref(), Some("r1"));
    }

    #[test]
    fn token_put_timeout_names_the_hop_limit() {
        let o = session_token(&Err(Failure::ResponseTimeout));
        assert_eq!(o.class, Some(Class::BlockedTimeout));
        assert!(o.detail.contains("hop limit"), "{}", o.detail);
        let o = session_token(&Err(Failure::ConnectTimeout));
        assert_eq!(o.class, Some(Class::BlockedTimeout));
        assert!(!o.detail.contains("hop limit"));
        let token = "AQAEAFakeSessionTokenValue==";
        let o = session_token(&answer(200, token));
        assert_eq!(o.class, Some(Class::SessionToken));
        assert!(!o.detail.contains(token));
        assert!(o.detail.contains(&fingerprint(token)));
        assert!(!Class::SessionToken.is_sensitive());
        let o = session_token(&answer(500, token));
        assert!(!o.detail.contains(token), "{}", o.detail);
        let shown = format!("{:?}", SessionToken(token.into()));
        assert!(!shown.contains(token));
    }

    #[test]
    fn identity_document_and_profile() {
        let doc = r#"{"accountId":"123456789012","region":"eu-west-1","instanceId":"i-0abc","instanceType":"m5.large","availabilityZone":"eu-west-1a","privateIp":"10.0.0.5"}"#;
        let o = identity_document(&answer(200, doc));
        assert_eq!(o.class, Some(Class::Readable));
        assert_eq!(
            o.detail,
            "identity document readable: region eu-west-1, account id 123456789012, \
             instance id i-0abc, instance type m5.large, availability zone eu-west-1a"
        );
        assert_eq!(o.facts.len(), 5);
        let info = r#"{"Code":"Success","InstanceProfileArn":"arn:aws:iam::123456789012:instance-profile/eks-node","InstanceProfileId":"AIPA"}"#;
        let o = iam_info(&answer(200, info));
        assert_eq!(o.class, Some(Class::Readable));
        assert_eq!(
            o.facts[0].value,
            "arn:aws:iam::123456789012:instance-profile/eks-node"
        );
        assert_eq!(iam_info(&answer(404, "")).class, Some(Class::NotFound));
        assert_eq!(iam_info(&answer(401, "")).class, Some(Class::NeedsHeader));
        assert_eq!(
            identity_document(&answer(200, "<html>")).class,
            Some(Class::Error)
        );
    }

    #[test]
    fn role_names_are_plain_segments() {
        assert_eq!(roles(b"eks-node-role\n"), ["eks-node-role"]);
        assert_eq!(roles(b"a/\n../x\nb c\nok+=,.@_-\n"), ["a", "ok+=,.@_-"]);
        let o = iam_role(&answer(200, "eks-node-role"));
        assert_eq!(o.detail, "role eks-node-role");
        assert_eq!(iam_role(&answer(200, "../etc")).class, Some(Class::Error));
    }

    #[test]
    fn credentials_show_the_key_id_prefix_and_fingerprint_only() {
        let key = "ASIAFAKEKEYID0000001";
        let secret = "fakeSecretAccessKey/0000000000000000000000";
        let token = "IQoJb3JpZ2luX2VjEFakeSessionToken";
        let body = format!(
            r#"{{"Code":"Success","LastUpdated":"2030-01-01T00:00:00Z","Type":"AWS-HMAC","AccessKeyId":"{key}","SecretAccessKey":"{secret}","Token":"{token}","Expiration":"2030-01-01T06:00:00Z"}}"#
        );
        let o = credentials(&answer(200, &body), "eks-node-role");
        assert_eq!(o.class, Some(Class::CredentialsObtained));
        assert!(Class::CredentialsObtained.is_sensitive());
        let c = o.credentials.clone().unwrap();
        assert_eq!(c.access_key_id_prefix, "ASIA");
        assert_eq!(c.access_key_id_fingerprint, fingerprint(key));
        assert_eq!(c.expiration.as_deref(), Some("2030-01-01T06:00:00Z"));
        assert!(c.secret_access_key_present && c.token_present);
        let shown = format!("{o:?} {}", serde_json::to_string(&c).unwrap());
        for s in [key, secret, token] {
            assert!(!shown.contains(s), "{shown}");
        }
        assert!(
            o.detail.contains("AccessKeyId ASIA… (sha256:"),
            "{}",
            o.detail
        );
        assert!(o.detail.contains("Expiration 2030-01-01T06:00:00Z"));
        // Unexpected answers on this path are never quoted.
        let o = credentials(&answer(500, &body), "r");
        assert_eq!(o.class, Some(Class::Error));
        assert!(!o.detail.contains(secret) && !o.detail.contains(key));
        let o = credentials(&answer(200, r#"{"Code":"Failure","Message":"x"}"#), "r");
        assert_eq!(o.class, Some(Class::Error));
        assert_eq!(
            credentials(&answer(404, ""), "r").class,
            Some(Class::NotFound)
        );
    }

    #[test]
    fn user_data_size_only() {
        let o = user_data(&answer(200, "#!/bin/bash\nexport SECRET=hunter2\n"));
        assert_eq!(o.class, Some(Class::Exposed));
        assert!(o.detail.contains("34 bytes") && !o.detail.contains("hunter2"));
        assert_eq!(user_data(&answer(404, "")).class, Some(Class::NotFound));
        let o = user_data(&answer(500, "SECRET=hunter2"));
        assert!(!o.detail.contains("hunter2"));
    }
}
