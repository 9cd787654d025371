//! Turning one exchange into a step's class and detail. Pure: it reads the outcome of a
//! request (an HTTP answer or why there was none) and never does IO.

use std::fmt;

use imdsguard_core::token::{IMDSGUARD_DENY_ERROR, TokenSummary, fingerprint, redact_jwts};
use serde::Serialize;
use serde_json::Value;

use crate::aws::AwsCredentials;
use crate::http::{Failure, Response};
use crate::instance::{self, Identity, InstanceExposure};
use crate::report::Fact;

/// What a step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// A TCP connection to the endpoint was established (not sensitive by itself).
    Reachable,
    /// No answer in time: the connection or the answer was dropped.
    BlockedTimeout,
    /// Refused, reset, or unreachable (ICMP or no route).
    BlockedRefused,
    /// The imdsguard filtering proxy denied the request (HTTP 403 naming imdsguard).
    BlockedByImdsguard,
    /// The endpoint refused a request without `Metadata: true` (HTTP 400), as IMDS does;
    /// AWS: without an IMDSv2 session token (HTTP 401, IMDSv2 required); GCP: without
    /// `Metadata-Flavor: Google` (HTTP 403).
    NeedsHeader,
    /// Instance or WireServer data was readable; AWS: user data; GCP: `kube-env`, or
    /// metadata answering without `Metadata-Flavor` (a legacy endpoint, or something in
    /// front adding the header).
    Exposed,
    /// An access token was obtained.
    TokenObtained,
    /// The token endpoint answered "Identity not found".
    IdentityNotFound,
    /// The token endpoint answered that the VM has several user-assigned identities and
    /// the request named none (HTTP 400 "Multiple user assigned identities exist"): the
    /// endpoint is open, a token needs an identity selector. Not sensitive by itself.
    IdentityRequired,
    /// HTTP 429: throttled.
    Throttled,
    /// Anything else: an unexpected status or a failure, with the status and reason.
    Error,
    /// Not attempted (with the reason).
    NotChecked,
    /// Not a request: what the probe derived (the identities to try).
    Info,
    /// AWS, GCP: metadata that is no credential answered (the IMDSv1 tree, the identity
    /// document, the role name, the project id, the service accounts' emails). Not
    /// sensitive by itself: the steps after it say what it leads to.
    Readable,
    /// AWS: an IMDSv2 session token was issued (`PUT /latest/api/token`). Not sensitive
    /// by itself: it reads what IMDSv1 would, and the steps after it say what that is.
    SessionToken,
    /// AWS: the instance role's credentials (AccessKeyId, SecretAccessKey, Token) were
    /// issued.
    CredentialsObtained,
    /// AWS, GCP: HTTP 404: nothing there (no instance profile, no user data, no such
    /// attribute).
    NotFound,
    /// GCP: a legacy endpoint (`/0.1/`, `/computeMetadata/v1beta1/`) answered that it is
    /// disabled or absent (HTTP 403 or 404), as on GKE since 1.12.
    Disabled,
}

impl Class {
    /// The name used in reports (`blocked-timeout`, `token-obtained`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Reachable => "reachable",
            Class::BlockedTimeout => "blocked-timeout",
            Class::BlockedRefused => "blocked-refused",
            Class::BlockedByImdsguard => "blocked-by-imdsguard",
            Class::NeedsHeader => "needs-header",
            Class::Exposed => "exposed",
            Class::TokenObtained => "token-obtained",
            Class::IdentityNotFound => "identity-not-found",
            Class::IdentityRequired => "identity-required",
            Class::Throttled => "throttled",
            Class::Error => "error",
            Class::NotChecked => "not-checked",
            Class::Info => "info",
            Class::Readable => "readable",
            Class::SessionToken => "session-token",
            Class::CredentialsObtained => "credentials-obtained",
            Class::NotFound => "not-found",
            Class::Disabled => "disabled",
        }
    }

    /// Every class, in declaration order (to read a class back from its name).
    pub const ALL: [Class; 18] = [
        Class::Reachable,
        Class::BlockedTimeout,
        Class::BlockedRefused,
        Class::BlockedByImdsguard,
        Class::NeedsHeader,
        Class::Exposed,
        Class::TokenObtained,
        Class::IdentityNotFound,
        Class::IdentityRequired,
        Class::Throttled,
        Class::Error,
        Class::NotChecked,
        Class::Info,
        Class::Readable,
        Class::SessionToken,
        Class::CredentialsObtained,
        Class::NotFound,
        Class::Disabled,
    ];

    /// The class named `name` (as [`Class::as_str`] writes it).
    pub fn named(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// Whether the step reached something sensitive (sets exit status 1).
    pub fn is_sensitive(self) -> bool {
        matches!(
            self,
            Class::Exposed | Class::TokenObtained | Class::CredentialsObtained
        )
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision carried by an imdsguard denial (see
/// [`imdsguard_core::token::IMDSGUARD_DENY_ERROR`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// `imdsguard.decision` (`deny`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// `imdsguard.rule`: the rule that denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `imdsguard.reason`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `imdsguard.help`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// A classified exchange.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub class: Option<Class>,
    pub detail: String,
    pub denial: Option<Denial>,
    pub token: Option<TokenSummary>,
    pub instance: Option<(InstanceExposure, Vec<Identity>)>,
    pub facts: Vec<Fact>,
    pub credentials: Option<AwsCredentials>,
}

impl Outcome {
    pub(crate) fn new(class: Class, detail: impl Into<String>) -> Outcome {
        Outcome {
            class: Some(class),
            detail: detail.into(),
            ..Outcome::default()
        }
    }

    /// The same outcome with `facts`.
    pub(crate) fn with_facts(mut self, facts: Vec<Fact>) -> Outcome {
        self.facts = facts;
        self
    }
}

/// Class and detail of a request that got no answer.
pub(crate) fn failure(f: &Failure) -> Outcome {
    match f {
        Failure::ConnectTimeout => Outcome::new(
            Class::BlockedTimeout,
            "TCP connection not established in time (packets dropped)",
        ),
        Failure::ResponseTimeout => Outcome::new(
            Class::BlockedTimeout,
            "no complete answer in time (connection or answer dropped)",
        ),
        Failure::Refused => Outcome::new(Class::BlockedRefused, "connection refused"),
        Failure::Reset(why) => Outcome::new(
            Class::BlockedRefused,
            format!("connection reset or closed without an answer ({why})"),
        ),
        Failure::Unreachable(why) => Outcome::new(
            Class::BlockedRefused,
            format!("unreachable: no route or ICMP unreachable ({why})"),
        ),
        Failure::Other(why) => Outcome::new(Class::Error, why.clone()),
    }
}

/// The TCP reachability step.
pub(crate) fn tcp(result: &Result<Response, Failure>) -> Outcome {
    match result {
        Ok(_) => Outcome::new(Class::Reachable, "TCP connection established"),
        Err(f) => failure(f),
    }
}

/// What every HTTP step shares: no answer, an imdsguard denial, throttling.
fn common(result: &Result<Response, Failure>) -> Result<&Response, Box<Outcome>> {
    common_as(result, "denied by imdsguard", "rule")
}

/// [`common`], an imdsguard denial's detail reading `DENIED (RULE_WORD R): REASON` (Azure:
/// `denied by imdsguard (rule R)`, AWS and GCP: `denied by proxy (imdsguard rule R)`).
pub(crate) fn common_as<'a>(
    result: &'a Result<Response, Failure>,
    denied: &str,
    rule_word: &str,
) -> Result<&'a Response, Box<Outcome>> {
    let response = result.as_ref().map_err(|f| Box::new(failure(f)))?;
    if response.status == 403
        && let Some(denial) = denial(&response.body)
    {
        let mut detail = denied.to_owned();
        if let Some(rule) = &denial.rule {
            detail.push_str(&format!(" ({rule_word} {rule})"));
        }
        if let Some(reason) = &denial.reason {
            detail.push_str(&format!(": {reason}"));
        }
        return Err(Box::new(Outcome {
            denial: Some(denial),
            ..Outcome::new(Class::BlockedByImdsguard, detail)
        }));
    }
    if response.status == 429 {
        return Err(Box::new(Outcome::new(
            Class::Throttled,
            format!("HTTP 429: throttled ({})", summary(&response.body)),
        )));
    }
    Ok(response)
}

/// The instance document requested without `Metadata: true`.
pub(crate) fn instance_without_header(result: &Result<Response, Failure>) -> Outcome {
    let response = match common(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        400 => Outcome::new(
            Class::NeedsHeader,
            format!(
                "refused without `Metadata: true`, as IMDS does ({})",
                summary(&response.body)
            ),
        ),
        200 => Outcome::new(
            Class::Exposed,
            "answered WITHOUT the Metadata header: something in front of IMDS adds it \
             (a proxy?), so even header-less requests (SSRF) read the instance document",
        ),
        _ => unexpected(response),
    }
}

/// The instance document with `Metadata: true`.
pub(crate) fn instance(result: &Result<Response, Failure>) -> Outcome {
    let response = match common(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => match instance::analyse(&response.body) {
            Some((exposure, identities)) => Outcome {
                instance: Some((exposure.clone(), identities)),
                ..Outcome::new(Class::Exposed, exposure.describe().join("\n"))
            },
            None => Outcome::new(
                Class::Error,
                format!(
                    "HTTP 200 but not an instance document ({} bytes)",
                    response.body.len()
                ),
            ),
        },
        _ => unexpected(response),
    }
}

/// A token request.
pub(crate) fn token(result: &Result<Response, Failure>) -> Outcome {
    let response = match common(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => match TokenSummary::from_token_response(&response.body) {
            Ok(summary) => Outcome {
                detail: describe_token(&summary),
                token: Some(summary),
                ..Outcome::new(Class::TokenObtained, "")
            },
            // The body is not quoted: it may hold a token in some other shape.
            Err(e) => Outcome::new(Class::Error, format!("HTTP 200 but {e}")),
        },
        400 if error_text_contains(&response.body, "identity not found") => Outcome::new(
            Class::IdentityNotFound,
            format!("no such identity on this VM ({})", summary(&response.body)),
        ),
        400 if error_text_contains(&response.body, "multiple user assigned identities") => {
            Outcome::new(
                Class::IdentityRequired,
                format!(
                    "the token endpoint answers, but the VM has several user-assigned \
                     identities and none was named: a token needs client_id, object_id or \
                     msi_res_id ({})",
                    summary(&response.body)
                ),
            )
        }
        _ => unexpected(response),
    }
}

/// WireServer's goal state (`/machine/?comp=goalstate`).
pub(crate) fn goalstate(result: &Result<Response, Failure>) -> Outcome {
    let response = match common(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => {
            let text = String::from_utf8_lossy(&response.body);
            let mut detail = format!(
                "goal state readable ({} bytes): the VM agent's channel, with links to \
                 extension configuration and certificates",
                response.body.len()
            );
            for tag in ["Incarnation", "ContainerId"] {
                if let Some(value) = xml_text(&text, tag) {
                    detail.push_str(&format!("; {tag} {value}"));
                }
            }
            Outcome::new(Class::Exposed, detail)
        }
        _ => unexpected(response),
    }
}

/// HostGAPlugin's `/vmSettings`.
pub(crate) fn vmsettings(result: &Result<Response, Failure>) -> Outcome {
    let response = match common(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => {
            let mut detail = format!(
                "vmSettings readable ({} bytes): extension settings",
                response.body.len()
            );
            if let Ok(value) = serde_json::from_slice::<Value>(&response.body) {
                if let Some(list) = value.get("extensionGoalStates").and_then(Value::as_array) {
                    detail.push_str(&format!("; {} extension goal state(s)", list.len()));
                }
                if has_protected_settings(&value) {
                    detail.push_str("; protected settings present");
                }
            }
            Outcome::new(Class::Exposed, detail)
        }
        _ => unexpected(response),
    }
}

pub(crate) fn unexpected(response: &Response) -> Outcome {
    Outcome::new(
        Class::Error,
        format!(
            "{}: {}",
            status_line(response.status),
            summary(&response.body)
        ),
    )
}

/// `HTTP 404 Not Found`: how an unexpected answer's detail starts.
pub(crate) fn status_line(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP {status} {reason}")
}

/// The imdsguard denial in a 403 body, if the body names imdsguard.
pub(crate) fn denial(body: &[u8]) -> Option<Denial> {
    let value = serde_json::from_slice::<Value>(body).ok();
    let names_error = value
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        == Some(IMDSGUARD_DENY_ERROR);
    let object = value
        .as_ref()
        .and_then(|v| v.get("imdsguard"))
        .and_then(Value::as_object);
    let names_text = String::from_utf8_lossy(body)
        .to_ascii_lowercase()
        .contains("imdsguard");
    if !(names_error || object.is_some() || names_text) {
        return None;
    }
    let field = |key: &str| {
        object
            .and_then(|o| o.get(key))
            .and_then(Value::as_str)
            .map(|s| clip(&redact_jwts(s), 300))
    };
    Some(Denial {
        decision: field("decision"),
        rule: field("rule"),
        reason: field("reason"),
        help: field("help"),
    })
}

/// Whether an error body says `needle` (lower case): in `error_description` or `error`
/// of IMDS-style JSON, else anywhere in the text.
fn error_text_contains(body: &[u8], needle: &str) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains(needle);
    };
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    text("error_description").contains(needle) || text("error").contains(needle)
}

/// A short, safe rendering of an error body: `error: error_description` when the body
/// is IMDS-style JSON, else its first characters; anything JWT-shaped is redacted, and so
/// is the value of any JSON field named `…token` (an opaque `access_token` is no JWT).
pub(crate) fn summary(body: &[u8]) -> String {
    if body.is_empty() {
        return "empty body".to_owned();
    }
    if let Ok(mut value) = serde_json::from_slice::<Value>(body) {
        let get = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        match (get("error"), get("error_description")) {
            (Some(e), Some(d)) => return clip(&redact_jwts(&format!("{e}: {d}")), 240),
            (Some(e), None) => return clip(&redact_jwts(e), 240),
            _ => {}
        }
        if mask_token_fields(&mut value) {
            return clip(&redact_jwts(&value.to_string()), 160);
        }
    }
    let text = String::from_utf8_lossy(body);
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    clip(&redact_jwts(&flat), 160)
}

/// Replaces the string value of every field whose name ends in `token` (any case:
/// `access_token`, `refresh_token`, `accessToken`) by its fingerprint; whether any was.
fn mask_token_fields(value: &mut Value) -> bool {
    let mut masked = false;
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match field {
                    Value::String(s)
                        if !s.is_empty() && key.to_ascii_lowercase().ends_with("token") =>
                    {
                        *s = format!("<token sha256:{}>", fingerprint(s));
                        masked = true;
                    }
                    other => masked |= mask_token_fields(other),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                masked |= mask_token_fields(item);
            }
        }
        _ => {}
    }
    masked
}

pub(crate) fn clip(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match cleaned.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &cleaned[..cut]),
        None => cleaned,
    }
}

fn describe_token(summary: &TokenSummary) -> String {
    let mut parts = Vec::new();
    match &summary.claims {
        Some(claims) => {
            let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
            parts.push(format!("appid {}", or_dash(&claims.appid)));
            parts.push(format!("xms_mirid {}", or_dash(&claims.xms_mirid)));
            parts.push(format!("aud {}", or_dash(&claims.aud)));
            if let Some(oid) = &claims.oid {
                parts.push(format!("oid {oid}"));
            }
            if let Some(tid) = &claims.tid {
                parts.push(format!("tid {tid}"));
            }
            if let Some(exp) = claims.exp_utc() {
                parts.push(format!("exp {exp}"));
            }
        }
        None => parts.push(format!(
            "claims unreadable ({})",
            summary.claims_error.as_deref().unwrap_or("?")
        )),
    }
    if let Some(on) = &summary.expires_utc {
        parts.push(format!("expires_on {on}"));
    }
    format!(
        "token obtained: {}\nfingerprint sha256:{} ({} bytes; the token itself is never shown)",
        parts.join(", "),
        summary.fingerprint,
        summary.length
    )
}

fn xml_text<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find("</")? + start;
    let value = text[start..end].trim();
    (!value.is_empty() && value.len() <= 100).then_some(value)
}

fn has_protected_settings(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k.eq_ignore_ascii_case("protectedSettings")
                && v.as_str().is_some_and(|s| !s.is_empty()))
                || has_protected_settings(v)
        }),
        Value::Array(items) => items.iter().any(has_protected_settings),
        _ => false,
    }
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

    const DENY: &str = r#"{"error":"imdsguard_denied","imdsguard":{"decision":"deny","rule":"default-deny-token","reason":"pod payments/api may not ask for tokens","help":"see imdsguard docs"}}"#;

    fn jwt() -> String {
        // {"alg":"none"} . {"appid":"app-1","aud":"https://management.azure.com/","exp":1700003600,"xms_mirid":"/m/i"}
        "eyJhbGciOiJub25lIn0.eyJhcHBpZCI6ImFwcC0xIiwiYXVkIjoiaHR0cHM6Ly9tYW5hZ2VtZW50LmF6dXJlLmNvbS8iLCJleHAiOjE3MDAwMDM2MDAsInhtc19taXJpZCI6Ii9tL2kifQ.c2ln".to_owned()
    }

    #[test]
    fn failures_map_to_blocked_classes() {
        let class = |f: Failure| failure(&f).class.unwrap();
        assert_eq!(class(Failure::ConnectTimeout), Class::BlockedTimeout);
        assert_eq!(class(Failure::ResponseTimeout), Class::BlockedTimeout);
        assert_eq!(class(Failure::Refused), Class::BlockedRefused);
        assert_eq!(class(Failure::Reset("x".into())), Class::BlockedRefused);
        assert_eq!(
            class(Failure::Unreachable("x".into())),
            Class::BlockedRefused
        );
        assert_eq!(class(Failure::Other("x".into())), Class::Error);
        assert_eq!(tcp(&answer(0, "")).class, Some(Class::Reachable));
    }

    #[test]
    fn imdsguard_denials_are_recognised_on_every_step() {
        for step in [
            instance_without_header,
            instance,
            token,
            goalstate,
            vmsettings,
        ] {
            let outcome = step(&answer(403, DENY));
            assert_eq!(outcome.class, Some(Class::BlockedByImdsguard));
            assert!(outcome.detail.contains("rule default-deny-token"));
            assert_eq!(
                outcome.denial.unwrap().help.as_deref(),
                Some("see imdsguard docs")
            );
        }
        // A body that only names imdsguard in text still counts; a bare 403 does not.
        assert_eq!(
            token(&answer(403, "blocked by imdsguard")).class,
            Some(Class::BlockedByImdsguard)
        );
        let other = token(&answer(403, r#"{"error":"forbidden"}"#));
        assert_eq!(other.class, Some(Class::Error));
        assert!(other.detail.starts_with("HTTP 403 Forbidden"));
    }

    #[test]
    fn throttling() {
        let outcome = token(&answer(429, r#"{"error":"too_many_requests"}"#));
        assert_eq!(outcome.class, Some(Class::Throttled));
        assert!(outcome.detail.contains("too_many_requests"));
    }

    #[test]
    fn header_step() {
        let body = r#"{"error":"Bad request. Required metadata header not specified"}"#;
        let outcome = instance_without_header(&answer(400, body));
        assert_eq!(outcome.class, Some(Class::NeedsHeader));
        assert!(outcome.detail.contains("Required metadata header"));
        assert_eq!(
            instance_without_header(&answer(200, "{}")).class,
            Some(Class::Exposed)
        );
        assert_eq!(
            instance_without_header(&answer(404, "")).class,
            Some(Class::Error)
        );
    }

    #[test]
    fn instance_step() {
        let outcome = instance(&answer(
            200,
            r#"{"compute":{"subscriptionId":"sub-1","tags":"aks-managed-kubeletIdentityClientID:cid"}}"#,
        ));
        assert_eq!(outcome.class, Some(Class::Exposed));
        assert!(outcome.detail.contains("subscription sub-1"));
        let (_, identities) = outcome.instance.unwrap();
        assert_eq!(identities.len(), 1);
        assert_eq!(instance(&answer(200, "<html/>")).class, Some(Class::Error));
        let outcome = instance(&answer(500, "oops"));
        assert_eq!(outcome.class, Some(Class::Error));
        assert_eq!(outcome.detail, "HTTP 500 Internal Server Error: oops");
    }

    #[test]
    fn token_step_never_carries_the_token() {
        let token_text = jwt();
        let body = format!(
            r#"{{"access_token":"{token_text}","expires_on":"1700003600","resource":"https://management.azure.com/","token_type":"Bearer"}}"#
        );
        let outcome = token(&answer(200, &body));
        assert_eq!(outcome.class, Some(Class::TokenObtained));
        assert!(outcome.detail.contains("appid app-1"));
        assert!(outcome.detail.contains("xms_mirid /m/i"));
        assert!(outcome.detail.contains("exp 2023-11-14T23:13:20Z"));
        let summary = outcome.token.unwrap();
        assert!(outcome.detail.contains(&summary.fingerprint));
        assert!(!outcome.detail.contains(&token_text));

        // A 200 without a token, and errors quoting a token, never show it either.
        let bad = token(&answer(200, &format!(r#"{{"token":"{token_text}"}}"#)));
        assert_eq!(bad.class, Some(Class::Error));
        assert!(!bad.detail.contains(&token_text));
        let quoted = token(&answer(
            500,
            &format!(r#"{{"error":"unknown","error_description":"bad {token_text}"}}"#),
        ));
        assert_eq!(quoted.class, Some(Class::Error));
        assert!(!quoted.detail.contains(&token_text));
        assert!(quoted.detail.contains("<token sha256:"));
        let raw = token(&answer(502, &format!("upstream said {token_text}")));
        assert!(!raw.detail.contains(&token_text));
        // An opaque (not JWT-shaped) token in an unexpected answer is not quoted either.
        let opaque = token(&answer(
            201,
            r#"{"access_token":"opaque-secret-value","token_type":"Bearer"}"#,
        ));
        assert_eq!(opaque.class, Some(Class::Error));
        assert!(
            !opaque.detail.contains("opaque-secret-value"),
            "{}",
            opaque.detail
        );
        assert!(
            opaque.detail.contains("<token sha256:"),
            "{}",
            opaque.detail
        );
        assert!(opaque.detail.contains("Bearer"), "{}", opaque.detail);
    }

    #[test]
    fn identity_not_found_and_other_400s() {
        let body = r#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        assert_eq!(
            token(&answer(400, body)).class,
            Some(Class::IdentityNotFound)
        );
        // Several user-assigned identities and no selector: open, but needs an identity.
        let body = r#"{"error":"invalid_request","error_description":"Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"}"#;
        let outcome = token(&answer(400, body));
        assert_eq!(outcome.class, Some(Class::IdentityRequired));
        assert!(!outcome.class.unwrap().is_sensitive());
        assert!(
            outcome.detail.contains("needs client_id"),
            "{}",
            outcome.detail
        );
        assert!(
            outcome
                .detail
                .contains("invalid_request: Multiple user assigned identities exist"),
            "{}",
            outcome.detail
        );
        assert_eq!(
            token(&answer(400, "Multiple user assigned identities exist")).class,
            Some(Class::IdentityRequired)
        );
        // Only a 400 means that.
        assert_eq!(token(&answer(500, body)).class, Some(Class::Error));
        let body = r#"{"error":"invalid_resource","error_description":"AADSTS500011: resource not found"}"#;
        let outcome = token(&answer(400, body));
        assert_eq!(outcome.class, Some(Class::Error));
        assert!(
            outcome
                .detail
                .contains("HTTP 400 Bad Request: invalid_resource")
        );
        let outcome = token(&answer(
            500,
            r#"{"error":"unknown","error_description":"boom"}"#,
        ));
        assert_eq!(
            outcome.detail,
            "HTTP 500 Internal Server Error: unknown: boom"
        );
    }

    #[test]
    fn wireserver_steps() {
        let xml = "<?xml version=\"1.0\"?><GoalState><Incarnation>7</Incarnation><Container><ContainerId>c-1</ContainerId></Container></GoalState>";
        let outcome = goalstate(&answer(200, xml));
        assert_eq!(outcome.class, Some(Class::Exposed));
        assert!(outcome.detail.contains("Incarnation 7; ContainerId c-1"));
        let json = r#"{"extensionGoalStates":[{"name":"a","settings":[{"protectedSettings":"MIIB"}]},{"name":"b"}]}"#;
        let outcome = vmsettings(&answer(200, json));
        assert_eq!(outcome.class, Some(Class::Exposed));
        assert!(
            outcome
                .detail
                .contains("2 extension goal state(s); protected settings present")
        );
        assert!(!outcome.detail.contains("MIIB"));
        assert_eq!(goalstate(&answer(400, "")).class, Some(Class::Error));
        assert_eq!(
            vmsettings(&Err(Failure::Refused)).class,
            Some(Class::BlockedRefused)
        );
    }

    #[test]
    fn summaries_are_short_and_single_line() {
        let long = "x".repeat(1000);
        let s = summary(long.as_bytes());
        assert!(s.chars().count() <= 161);
        assert_eq!(summary(b"a\n\tb"), "a b");
        assert_eq!(summary(b""), "empty body");
        assert_eq!(summary(br#"{"error":"e\u0007x"}"#), "e x");
    }
}
