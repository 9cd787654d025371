//! Access rules for AWS and GCP metadata requests: the per-cloud counterpart of
//! [`crate::access`]'s Azure decisions.
//!
//! A rules file says its cloud at the top (`cloud: aws` or `cloud: gcp`; none, or
//! `cloud: azure`, is Azure as before). Its rules have the same `name`, `subjects`,
//! reserved names and outcome ([`Decision`], [`Deny`] and the 403 body) as Azure's;
//! what they grant is read here ([`CloudGrant`]):
//!
//! - `paths`: the cloud's own paths, compared **exactly** (AWS and GCP paths are
//!   case-sensitive: `/latest/Meta-Data` is another path, which the service answers
//!   with 404, and never one a `/latest/meta-data` grant covers). A path grants itself
//!   and everything below it; `*` stands for any one segment
//!   (`/latest/meta-data/placement/*`, `/computeMetadata/v1/instance/zone`). `/` grants
//!   the root listing alone (Google's client libraries ask it, with
//!   `Metadata-Flavor: Google`, to tell whether they run on GCE).
//! - `methods`: `GET` unless told; AWS's IMDSv2 token step `PUT /latest/api/token` is
//!   a grant of its own (`methods: [PUT]`, that path only), apart from what the token
//!   then reads.
//! - **secrets** ([`secret_path`]: AWS role credentials under
//!   `meta-data/iam/security-credentials/ROLE` and
//!   `identity-credentials/ec2/security-credentials/…`, `user-data`, the token PUT;
//!   GCP service-account `token` and `identity`, the `kube-env`, `user-data`,
//!   `startup-script`, `ssh-keys`… attributes, and the legacy `v1beta1`/`0.1` trees)
//!   are granted only by a path naming them: same length, every segment written out,
//!   `*` only where the secret has a name of its own (the role, the service account).
//!   `/latest/meta-data/*` never gives `iam/security-credentials/ROLE`. Secrets are
//!   recognised ignoring case, so a case variant is still a secret (and no grant
//!   names it, so it is denied).
//! - `audiences` (GCP): the `audience` values an identity-token grant allows (`*`:
//!   any); a rule naming `…/identity` needs them.
//! - `redact`: fields removed from JSON answers, by name at any depth or by path, as
//!   for Azure's instance document ([`RedactSet`]). GCP's default hides the secret
//!   attributes ([`gcp_default_redact`]) from recursive reads; AWS's default hides
//!   nothing (a rule may name fields of the identity document, `accountId`). A
//!   recursive GCP read that would hold a secret attribute the redaction does not
//!   hide, or a recursive `alt=text` read with anything to hide (text cannot be
//!   redacted safely), is denied.
//!
//! Nothing here does IO.

use std::fmt;
use std::sync::Arc;

use crate::access::{
    AccessRules, Allow, Decision, Deny, PodInfo, RULE_DEFAULT_DENY, RedactSet, Redaction, Rule,
};
use crate::aws::TOKEN_PATH as AWS_TOKEN_PATH;
use crate::canon::CanonicalTarget;
use crate::target::Cloud;
use crate::{aws, gcp};

pub use crate::access::RULE_TOKEN_NOT_ISSUED;

/// What a GCP rule redacts when it says nothing: the secret attributes
/// ([`gcp::SECRET_ATTRIBUTES`]), and any `token` or `identity` key a recursive answer
/// might carry.
pub fn gcp_default_redact() -> Vec<&'static str> {
    gcp::SECRET_ATTRIBUTES
        .iter()
        .copied()
        .chain(["token", "identity"])
        .collect()
}

/// The methods a cloud rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloudMethod {
    /// Every read.
    Get,
    /// AWS's token step.
    Put,
}

impl CloudMethod {
    /// `GET`, `PUT` (exact, as on the request line).
    pub fn parse(method: &str) -> Option<CloudMethod> {
        match method {
            "GET" => Some(CloudMethod::Get),
            "PUT" => Some(CloudMethod::Put),
            _ => None,
        }
    }

    /// `GET`, `PUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            CloudMethod::Get => "GET",
            CloudMethod::Put => "PUT",
        }
    }
}

/// What kind of secret a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// AWS role credentials (AccessKeyId, SecretAccessKey, Token).
    Credentials,
    /// AWS's IMDSv2 token, or a GCP service account's OAuth access token.
    Token,
    /// A GCP identity token (a signed JWT for an audience).
    IdentityToken,
    /// User data (bootstrap scripts, often with secrets).
    UserData,
    /// AWS's signed instance identity (`dynamic/instance-identity/pkcs7`, `signature`,
    /// `rsa2048`): a login credential wherever signed node identity is trusted (Vault's
    /// aws-ec2 auth method, for one).
    SignedIdentity,
    /// A GCP secret attribute (`kube-env`, `startup-script`, SSH keys...).
    Attribute,
    /// A legacy metadata API (`/computeMetadata/v1beta1`, `/0.1`) that bypasses
    /// `Metadata-Flavor` and concealment.
    LegacyApi,
    /// Said secret by the cloud's protocol module and not recognised here: granted
    /// only by a path written out in full.
    Other,
}

impl SecretKind {
    /// `credentials`, `token`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Credentials => "credentials",
            SecretKind::Token => "token",
            SecretKind::IdentityToken => "identity-token",
            SecretKind::UserData => "user-data",
            SecretKind::SignedIdentity => "signed-identity",
            SecretKind::Attribute => "secret-attribute",
            SecretKind::LegacyApi => "legacy-api",
            SecretKind::Other => "secret",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret-bearing path: its kind and the segments a grant may write as `*` (the
/// role or service-account name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPath {
    /// The kind.
    pub kind: SecretKind,
    /// Positions of the path's own names (a grant may say `*` there).
    pub names: Vec<usize>,
}

fn ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether `segments` (a path, case kept) holds a secret of `cloud`, recognised
/// ignoring case so that a case variant is a secret too.
pub fn secret_path(cloud: Cloud, segments: &[String]) -> Option<SecretPath> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let secret = |kind, names: &[usize]| {
        Some(SecretPath {
            kind,
            names: names.to_vec(),
        })
    };
    match cloud {
        Cloud::Azure => None,
        Cloud::Aws => match s.as_slice() {
            [_, md, iam, sc, _, ..]
                if ci(md, "meta-data") && ci(iam, "iam") && ci(sc, "security-credentials") =>
            {
                secret(SecretKind::Credentials, &[4])
            }
            [_, md, ic, ec2, sc, _, ..]
                if ci(md, "meta-data")
                    && ci(ic, "identity-credentials")
                    && ci(ec2, "ec2")
                    && ci(sc, "security-credentials") =>
            {
                secret(SecretKind::Credentials, &[5])
            }
            [_, ud, ..] if ci(ud, "user-data") => secret(SecretKind::UserData, &[]),
            [_, dy, ii, sig, ..]
                if ci(dy, "dynamic")
                    && ci(ii, "instance-identity")
                    && aws::SIGNED_IDENTITY.iter().any(|k| ci(k, sig)) =>
            {
                secret(SecretKind::SignedIdentity, &[])
            }
            [_, api, token, ..] if ci(api, "api") && ci(token, "token") => {
                secret(SecretKind::Token, &[])
            }
            _ => None,
        },
        Cloud::Gcp => match s.as_slice() {
            [] => None,
            [cm, rest @ ..] if ci(cm, "computeMetadata") => match rest {
                [] => None,
                [v, ..] if !ci(v, "v1") => secret(SecretKind::LegacyApi, &[]),
                [_, inst, sa, _, last, ..]
                    if ci(inst, "instance") && ci(sa, "service-accounts") && ci(last, "token") =>
                {
                    secret(SecretKind::Token, &[4])
                }
                [_, inst, sa, _, last, ..]
                    if ci(inst, "instance")
                        && ci(sa, "service-accounts")
                        && ci(last, "identity") =>
                {
                    secret(SecretKind::IdentityToken, &[4])
                }
                [_, scope, attrs, name, ..]
                    if (ci(scope, "instance") || ci(scope, "project"))
                        && ci(attrs, "attributes")
                        && gcp::SECRET_ATTRIBUTES.iter().any(|a| ci(a, name)) =>
                {
                    secret(SecretKind::Attribute, &[])
                }
                _ => None,
            },
            _ => secret(SecretKind::LegacyApi, &[]),
        },
    }
}

/// A path a cloud rule grants: segments, `*` for any one. No segment (`/`) is the root
/// listing alone (GCP's client libraries ask it to tell whether they run on GCE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudPath {
    /// The segments (exact, or `*`).
    pub segments: Vec<String>,
}

impl CloudPath {
    /// Whether the grant covers `path`: the path is at or below it, segments compared
    /// exactly (`/` covers the root only). Says nothing of secrets ([`Self::names`]).
    pub fn covers(&self, path: &[String]) -> bool {
        if self.segments.is_empty() {
            return path.is_empty();
        }
        path.len() >= self.segments.len()
            && self
                .segments
                .iter()
                .zip(path)
                .all(|(g, s)| g == "*" || g == s)
    }

    /// Whether the grant names the secret at `path` explicitly: as long as the path,
    /// every segment exact, `*` only at the secret's own name positions.
    pub fn names(&self, path: &[String], secret: &SecretPath) -> bool {
        path.len() == self.segments.len()
            && self
                .segments
                .iter()
                .zip(path)
                .enumerate()
                .all(|(i, (g, s))| g == s || (g == "*" && secret.names.contains(&i)))
    }
}

impl fmt::Display for CloudPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// What an AWS or GCP rule grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudGrant {
    /// The cloud.
    pub cloud: Cloud,
    /// Methods (`GET`; `PUT` for AWS's token path only).
    pub methods: Vec<CloudMethod>,
    /// Paths.
    pub paths: Vec<CloudPath>,
    /// GCP identity-token audiences allowed (`*`: any).
    pub audiences: Vec<String>,
    /// Fields hidden from JSON answers.
    pub redact: Arc<RedactSet>,
}

fn is_cloud_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+' | b'=' | b',')
}

fn is_aws_version(s: &str) -> bool {
    // Only the versions IMDS lists (`core::aws::VERSIONS`): the proxy answers 404 for
    // any other, so a grant of one would grant nothing.
    crate::aws::VERSIONS.contains(&s)
}

impl CloudGrant {
    /// Reads a rule's `methods`, `paths`, `redact` and `audiences` for `cloud` (AWS or
    /// GCP); errors say what is wrong with which entry.
    pub fn new(
        cloud: Cloud,
        methods: Option<&[String]>,
        paths: &[String],
        redact: Option<&[String]>,
        audiences: Option<&[String]>,
    ) -> Result<CloudGrant, String> {
        let methods = match methods {
            None => vec![CloudMethod::Get],
            Some(list) => list
                .iter()
                .map(|m| {
                    CloudMethod::parse(&m.to_ascii_uppercase())
                        .ok_or_else(|| format!("method `{m}` is not GET or PUT"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if methods.is_empty() {
            return Err("`methods` is empty".into());
        }
        if paths.is_empty() {
            return Err("no `paths`: the rule allows nothing".into());
        }
        let paths = paths
            .iter()
            .map(|p| parse_cloud_path(cloud, p))
            .collect::<Result<Vec<_>, _>>()?;
        let token_path: Vec<String> = AWS_TOKEN_PATH[1..].split('/').map(String::from).collect();
        let is_token = |p: &CloudPath| p.segments == token_path;
        if methods.contains(&CloudMethod::Put) {
            if cloud != Cloud::Aws {
                return Err("PUT is AWS's IMDSv2 token step only".into());
            }
            if methods.len() != 1 || !paths.iter().all(is_token) {
                return Err(format!(
                    "PUT is only for the IMDSv2 token step: grant `methods: [PUT]` with `paths: [{AWS_TOKEN_PATH}]` in a rule of its own"
                ));
            }
        } else if let Some(p) = paths.iter().find(|p| is_token(p)) {
            return Err(format!(
                "path `{p}` is the IMDSv2 token step, a PUT: grant it with `methods: [PUT]` in a rule of its own"
            ));
        }
        let audiences = audiences.unwrap_or_default().to_vec();
        let identity = paths.iter().any(|p| {
            p.segments.len() == 6
                && p.segments[3] == "service-accounts"
                && p.segments[5] == "identity"
        });
        if !audiences.is_empty() && cloud != Cloud::Gcp {
            return Err("`audiences` is for GCP identity tokens".into());
        }
        if identity && audiences.is_empty() {
            return Err(
                "an identity-token path needs `audiences`: the audiences the pod may ask for (`*` for any)"
                    .into(),
            );
        }
        if !identity && !audiences.is_empty() {
            return Err(
                "`audiences` given but no path names a service account's `identity`".into(),
            );
        }
        if let Some(a) = audiences
            .iter()
            .find(|a| a.is_empty() || !a.bytes().all(|b| (0x21..0x7f).contains(&b)))
        {
            return Err(format!(
                "audience `{a}` is not a URL or name of printable characters"
            ));
        }
        let redact = match (redact, cloud) {
            (Some(list), _) => RedactSet::new(list)?,
            (None, Cloud::Gcp) => RedactSet::new(&gcp_default_redact())?,
            (None, _) => RedactSet::default(),
        };
        Ok(CloudGrant {
            cloud,
            methods,
            paths,
            audiences,
            redact: Arc::new(redact),
        })
    }

    /// Whether `audience` is allowed (exact, or `*`).
    pub fn allows_audience(&self, audience: Option<&str>) -> bool {
        self.audiences
            .iter()
            .any(|a| a == "*" || Some(a.as_str()) == audience)
    }
}

/// Reads a path grant of `cloud`: `/`-separated segments of the characters of the
/// cloud's paths, or `*`; AWS's start with `latest` (or a dated version) and one of
/// `meta-data`, `dynamic`, `user-data`, `api`; GCP's with `computeMetadata/v1`.
pub fn parse_cloud_path(cloud: Cloud, path: &str) -> Result<CloudPath, String> {
    let bad = |why: &str| Err(format!("path `{path}`: {why}"));
    let Some(body) = path.trim().strip_prefix('/') else {
        return bad("must start with /");
    };
    if body.contains('?') {
        return bad("a path grant has no query");
    }
    if body.is_empty() {
        // The root listing alone.
        return Ok(CloudPath {
            segments: Vec::new(),
        });
    }
    let body = body.strip_suffix('/').unwrap_or(body);
    let segments: Vec<String> = body.split('/').map(String::from).collect();
    if segments.iter().any(|s| {
        s.is_empty()
            || s.bytes().all(|b| b == b'.')
            || (s != "*" && !s.bytes().all(is_cloud_segment_byte))
    }) {
        return bad("segments are letters, digits and `-_.@+=,` (or `*` for any one)");
    }
    match cloud {
        Cloud::Aws => {
            if !is_aws_version(&segments[0]) {
                return bad(
                    "AWS paths start with /latest (or a version IMDS lists, such as /2016-09-02); they are case-sensitive",
                );
            }
            if let Some(tree) = segments.get(1)
                && !["meta-data", "dynamic", "user-data", "api"].contains(&tree.as_str())
            {
                return bad(
                    "the second segment is meta-data, dynamic, user-data or api (AWS paths are case-sensitive)",
                );
            }
        }
        Cloud::Gcp => {
            if segments[0] != "computeMetadata" || segments.get(1).is_some_and(|v| v != "v1") {
                return bad(
                    "GCP paths start with /computeMetadata/v1 (case-sensitive; the legacy v1beta1 and 0.1 trees are never granted)",
                );
            }
        }
        Cloud::Azure => return bad("Azure paths are read by the Azure rules"),
    }
    Ok(CloudPath { segments })
}

/// An AWS or GCP request as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudRequest {
    /// The cloud.
    pub cloud: Cloud,
    /// The method.
    pub method: CloudMethod,
    /// Path segments, case kept.
    pub segments: Vec<String>,
    /// The canonical path (with its trailing `/` for a listing).
    pub path: String,
    /// GCP `recursive=true`.
    pub recursive: bool,
    /// GCP `alt=text`.
    pub text: bool,
    /// GCP `audience`.
    pub audience: Option<String>,
    /// The secret it asks for, if any.
    pub secret: Option<SecretPath>,
}

impl CloudRequest {
    /// The request for `method` on a canonical target of `cloud`
    /// ([`crate::canon::Canonicalizer::for_cloud`]); `None` for a method no rule can
    /// grant (only `GET` and `PUT` can).
    pub fn new(cloud: Cloud, method: &str, target: &CanonicalTarget) -> Option<CloudRequest> {
        let method = CloudMethod::parse(method)?;
        let param = |n: &str| {
            target
                .params
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        Some(CloudRequest {
            cloud,
            method,
            segments: target.segments.clone(),
            path: target.path.clone(),
            recursive: param("recursive") == Some("true"),
            text: param("alt") == Some("text"),
            audience: param("audience").map(String::from),
            secret: secret_path(cloud, &target.segments),
        })
    }

    /// Marks the request secret-bearing because the cloud's protocol module says so
    /// (kept when already recognised here).
    pub fn mark_secret(&mut self) {
        if self.secret.is_none() {
            self.secret = Some(SecretPath {
                kind: SecretKind::Other,
                names: Vec::new(),
            });
        }
    }

    /// Whether a recursive read here covers a place holding secret attributes
    /// (`instance/attributes`, `project/attributes`, or an ancestor).
    fn recursive_over_secrets(&self) -> bool {
        if self.cloud != Cloud::Gcp || !self.recursive {
            return false;
        }
        let s = &self.segments;
        let under = |scope: &str| {
            let full = ["computeMetadata", "v1", scope, "attributes"];
            s.len() <= full.len() && s.iter().zip(full).all(|(a, b)| ci(a, b))
        };
        under("instance") || under("project")
    }

    /// `GET /latest/meta-data/... (audience A)`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.method.as_str(), self.path);
        if self.recursive {
            s.push_str("?recursive=true");
        }
        if let Some(a) = &self.audience {
            s.push_str(&format!(" (audience {a})"));
        }
        s
    }
}

fn help(pod: &PodInfo, req: &CloudRequest) -> String {
    format!(
        "ask the cluster admin to add an access rule (cloud: {}) to imdsguard's rules for namespace {}, service account {} allowing {} (see docs/proxy.md)",
        req.cloud.name(),
        pod.namespace,
        pod.service_account,
        req.describe()
    )
}

/// Decides an AWS or GCP request from `pod` with `rules` (see the module
/// documentation): the rules selecting the pod, of the request's cloud, granting the
/// method and the path (a secret only by a path naming it), and the audience of an
/// identity token; default deny. The redaction is what every allowing rule hides.
pub fn evaluate(rules: &AccessRules, pod: &PodInfo, req: &CloudRequest) -> Decision {
    let mut allowing: Vec<&Rule> = Vec::new();
    let mut closest: Option<(&Rule, String)> = None;
    let mut selecting: Vec<&str> = Vec::new();
    for rule in rules.rules() {
        if !rule.selects(pod) {
            continue;
        }
        selecting.push(&rule.name);
        let Some(g) = rule.cloud.as_deref() else {
            continue;
        };
        if g.cloud != req.cloud || !g.methods.contains(&req.method) {
            continue;
        }
        let covered = match &req.secret {
            // A grant of `/` is the root listing alone: never a recursive read of the
            // whole tree from there (which would hold every attribute).
            None => g
                .paths
                .iter()
                .any(|p| p.covers(&req.segments) && !(p.segments.is_empty() && req.recursive)),
            Some(secret) => {
                let named = g.paths.iter().any(|p| p.names(&req.segments, secret));
                if !named && let Some(p) = g.paths.iter().find(|p| p.covers(&req.segments)) {
                    closest.get_or_insert_with(|| {
                        (
                            rule,
                            format!(
                                "{} holds a secret ({}): rule {} grants {p}, and a secret is granted only by a path naming it",
                                req.path, secret.kind, rule.name
                            ),
                        )
                    });
                }
                named
            }
        };
        if !covered {
            continue;
        }
        if matches!(&req.secret, Some(s) if s.kind == SecretKind::IdentityToken)
            && !g.allows_audience(req.audience.as_deref())
        {
            closest.get_or_insert_with(|| {
                (
                    rule,
                    format!(
                        "rule {} allows identity tokens for {} only, not for audience {}",
                        rule.name,
                        g.audiences.join(", "),
                        req.audience.as_deref().unwrap_or("(none)")
                    ),
                )
            });
            continue;
        }
        allowing.push(rule);
    }
    let Some(first) = allowing.first() else {
        return Decision::Deny(if let Some((rule, reason)) = closest {
            Deny::new(rule.name.to_string(), reason, help(pod, req))
        } else if selecting.is_empty() {
            Deny::new(
                RULE_DEFAULT_DENY,
                format!(
                    "no access rule selects pod {} (service account {})",
                    pod.id(),
                    pod.service_account
                ),
                help(pod, req),
            )
        } else {
            Deny::new(
                RULE_DEFAULT_DENY,
                format!(
                    "rule(s) {} select pod {} but none allows {}",
                    selecting.join(", "),
                    pod.id(),
                    req.describe()
                ),
                help(pod, req),
            )
        });
    };
    let redaction = Redaction::new(
        allowing
            .iter()
            .filter_map(|r| r.cloud.as_ref().map(|g| g.redact.clone()))
            .collect(),
    );
    if req.recursive_over_secrets()
        && let Some(name) = gcp::SECRET_ATTRIBUTES
            .iter()
            .find(|a| !redaction.hides(&[a.to_string()]))
    {
        return Decision::Deny(Deny::new(
            first.name.to_string(),
            format!(
                "a recursive read of {} would hold secret attribute {name}, which rule {} does not redact",
                req.path, first.name
            ),
            format!(
                "keep {name} in the rule's `redact` list (the default), or read the attributes the pod needs one by one with grants naming them (see docs/proxy.md)"
            ),
        ));
    }
    if req.recursive && req.text && !redaction.is_noop() {
        return Decision::Deny(Deny::new(
            first.name.to_string(),
            format!(
                "a recursive alt=text read of {} cannot be redacted ({} hidden by rule {})",
                req.path,
                redaction.describe(),
                first.name
            ),
            "ask for JSON (alt=json, the default): imdsguard removes the redacted fields from it",
        ));
    }
    Decision::Allow(Allow {
        rule: first.name.clone(),
        redaction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::AccessError;
    use crate::canon::{Canonicalizer, Limits};

    fn segs(path: &[&str]) -> Vec<String> {
        path.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_secret_lists_are_the_protocol_modules_in_any_case() {
        for name in gcp::SECRET_ATTRIBUTES {
            for spelled in [name.to_string(), name.to_uppercase()] {
                for scope in ["instance", "project"] {
                    let path = segs(&["computeMetadata", "v1", scope, "attributes", &spelled]);
                    assert_eq!(
                        secret_path(Cloud::Gcp, &path).map(|s| s.kind),
                        Some(SecretKind::Attribute),
                        "{path:?}"
                    );
                }
            }
            assert!(gcp_default_redact().contains(name), "{name}");
        }
        for form in aws::SIGNED_IDENTITY {
            let path = segs(&["latest", "dynamic", "instance-identity", form]);
            assert_eq!(
                secret_path(Cloud::Aws, &path).map(|s| s.kind),
                Some(SecretKind::SignedIdentity),
                "{path:?}"
            );
        }
        let document = segs(&["latest", "dynamic", "instance-identity", "document"]);
        assert_eq!(secret_path(Cloud::Aws, &document), None);
    }

    const AWS_RULES: &str = r#"
cloud: aws
rules:
  - name: everyone-placement
    subjects: [{namespace: "*"}]
    paths: [/latest/meta-data/placement/*, /latest/dynamic/instance-identity/document, /latest/meta-data/iam]
    redact: [accountId]
  - name: imdsv2-token
    subjects: [{namespace: "*"}]
    methods: [PUT]
    paths: [/latest/api/token]
  - name: payments-role
    subjects: [{namespace: payments, serviceAccount: api}]
    paths: [/latest/meta-data/iam/security-credentials/payments-role]
  - name: broad
    subjects: [{namespace: ops}]
    paths: [/latest/meta-data, /latest/user-data/x]
"#;

    const GCP_RULES: &str = r#"
cloud: gcp
rules:
  - name: zone
    subjects: [{namespace: "*"}]
    paths: [/computeMetadata/v1/instance/zone, /computeMetadata/v1/project/project-id]
  - name: sa-token
    subjects: [{namespace: payments}]
    paths: [/computeMetadata/v1/instance/service-accounts/*/token]
  - name: identity
    subjects: [{namespace: payments}]
    paths: [/computeMetadata/v1/instance/service-accounts/default/identity]
    audiences: [https://payments.example]
  - name: monitoring
    subjects: [{namespace: monitoring}]
    paths: [/computeMetadata/v1/instance]
  - name: debug
    subjects: [{namespace: debug}]
    paths: [/computeMetadata/v1]
    redact: []
"#;

    fn pod(ns: &str, sa: &str) -> PodInfo {
        let mut p = PodInfo::new(ns, "p-1");
        p.service_account = sa.into();
        p
    }

    fn request(cloud: Cloud, method: &str, target: &str) -> CloudRequest {
        let c =
            Canonicalizer::for_cloud(cloud, Limits::default(), crate::canon::default_hosts(cloud))
                .canonicalize(target)
                .unwrap_or_else(|e| panic!("{target}: {e}"));
        CloudRequest::new(cloud, method, &c).expect("GET or PUT")
    }

    fn decide(rules: &str, cloud: Cloud, p: &PodInfo, method: &str, target: &str) -> Decision {
        let rules = AccessRules::parse(rules).expect("rules parse");
        evaluate(&rules, p, &request(cloud, method, target))
    }

    fn allowed(d: &Decision) -> Option<&str> {
        match d {
            Decision::Allow(a) => Some(&a.rule),
            Decision::Deny(_) => None,
        }
    }

    fn denied_by(d: &Decision) -> &str {
        match d {
            Decision::Deny(d) => &d.rule,
            Decision::Allow(a) => panic!("allowed by {}", a.rule),
        }
    }

    #[test]
    fn rules_files_say_their_cloud() {
        let aws = AccessRules::parse(AWS_RULES).unwrap();
        assert_eq!(aws.cloud(), Cloud::Aws);
        assert_eq!(aws.declared_cloud(), Some(Cloud::Aws));
        assert!(
            aws.rules()
                .iter()
                .all(|r| r.cloud.is_some() && r.paths.is_empty())
        );
        let azure = AccessRules::parse("rules: []").unwrap();
        assert_eq!(
            (azure.cloud(), azure.declared_cloud()),
            (Cloud::Azure, None)
        );
        let empty_gcp = AccessRules::parse("cloud: gcp\nrules: []").unwrap();
        assert_eq!(empty_gcp.declared_cloud(), Some(Cloud::Gcp));
        let e = AccessRules::parse("cloud: ibm\nrules: []").unwrap_err();
        assert!(e.to_string().contains("not azure, aws or gcp"), "{e}");
        // Rules of two clouds never add up.
        let mut all = AccessRules::parse(AWS_RULES).unwrap();
        let e = all
            .extend(AccessRules::parse(GCP_RULES).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("cannot add up"), "{e}");
        let mut all = AccessRules::default();
        all.extend(AccessRules::parse(GCP_RULES).unwrap()).unwrap();
        assert_eq!(all.cloud(), Cloud::Gcp);
    }

    #[test]
    fn bad_cloud_rules_are_refused_with_the_reason() {
        let err = |cloud: &str, rule: &str| -> String {
            let text = format!(
                "cloud: {cloud}\nrules:\n  - name: r\n    subjects: [{{namespace: a}}]\n{rule}"
            );
            match AccessRules::parse(&text) {
                Err(AccessError::Rule { rule, message }) => {
                    assert_eq!(rule, "r");
                    message
                }
                other => panic!("{text}: {other:?}"),
            }
        };
        for (cloud, rule, want) in [
            (
                "aws",
                "    paths: [/latest/Meta-Data/placement]\n",
                "case-sensitive",
            ),
            ("aws", "    paths: [/metadata/instance]\n", "/latest"),
            ("aws", "    paths: [/latest/api/token]\n", "PUT"),
            (
                "aws",
                "    methods: [PUT]\n    paths: [/latest/meta-data]\n",
                "token step",
            ),
            (
                "aws",
                "    methods: [GET, PUT]\n    paths: [/latest/api/token]\n",
                "rule of its own",
            ),
            (
                "aws",
                "    methods: [POST]\n    paths: [/latest/meta-data]\n",
                "not GET or PUT",
            ),
            (
                "aws",
                "    token: {resources: [x], identities: [{any: true}]}\n    paths: [/latest/meta-data]\n",
                "Azure",
            ),
            ("aws", "    paths: [/latest/../meta-data]\n", "segments"),
            ("aws", "    paths: [/latest//meta-data]\n", "segments"),
            ("aws", "    paths: [/latest/meta-data?x=1]\n", "query"),
            ("aws", "    paths: [\"//\"]\n", "segments"),
            (
                "aws",
                "    paths: [/latest/meta-data]\n    audiences: [x]\n",
                "GCP",
            ),
            (
                "gcp",
                "    paths: [/computeMetadata/v1beta1/instance]\n",
                "legacy",
            ),
            (
                "gcp",
                "    paths: [/computemetadata/v1/instance]\n",
                "case-sensitive",
            ),
            (
                "gcp",
                "    paths: [/computeMetadata/v1/instance/service-accounts/default/identity]\n",
                "audiences",
            ),
            (
                "gcp",
                "    paths: [/computeMetadata/v1/instance/zone]\n    audiences: [x]\n",
                "identity",
            ),
            (
                "gcp",
                "    methods: [PUT]\n    paths: [/computeMetadata/v1/instance]\n",
                "AWS",
            ),
            ("gcp", "    paths: []\n", "no `paths`"),
        ] {
            let m = err(cloud, rule);
            assert!(m.contains(want), "{rule}: {m}");
        }
        let e = AccessRules::parse(
            "rules: [{name: r, subjects: [{namespace: a}], paths: [/metadata/versions], audiences: [x]}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("GCP identity"), "{e}");
        // Reserved names stay reserved under every cloud.
        let e = AccessRules::parse(
            "cloud: aws\nrules: [{name: token-not-issued-to-caller, subjects: [{namespace: a}], paths: [/latest/meta-data]}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }

    #[test]
    fn aws_paths_are_granted_exactly_and_secrets_only_by_name() {
        let api = pod("payments", "api");
        let web = pod("web", "default");
        let ops = pod("ops", "default");
        let aws = |p: &PodInfo, m: &str, t: &str| decide(AWS_RULES, Cloud::Aws, p, m, t);
        let ok = |d: Decision| allowed(&d).map(String::from);
        assert_eq!(
            ok(aws(&web, "GET", "/latest/meta-data/placement/region")).as_deref(),
            Some("everyone-placement")
        );
        assert_eq!(
            ok(aws(
                &web,
                "GET",
                "/latest/meta-data/placement/availability-zone/"
            ))
            .as_deref(),
            Some("everyone-placement")
        );
        assert_eq!(
            ok(aws(
                &web,
                "GET",
                "/latest/dynamic/instance-identity/document"
            ))
            .as_deref(),
            Some("everyone-placement")
        );
        // Case variants are other paths: never granted by the lower-case rule.
        assert_eq!(
            denied_by(&aws(&web, "GET", "/latest/meta-data/Placement/region")),
            RULE_DEFAULT_DENY
        );
        assert_eq!(
            denied_by(&aws(&web, "GET", "/Latest/meta-data/placement/region")),
            RULE_DEFAULT_DENY
        );
        // The listing above the grant is not granted.
        assert_eq!(
            denied_by(&aws(&web, "GET", "/latest/meta-data/placement")),
            RULE_DEFAULT_DENY
        );
        // The token step is a grant of its own.
        assert_eq!(
            ok(aws(&web, "PUT", "/latest/api/token")).as_deref(),
            Some("imdsv2-token")
        );
        assert_eq!(
            denied_by(&aws(&web, "GET", "/latest/api/token")),
            RULE_DEFAULT_DENY
        );
        // Credentials: only the rule naming the role, only for its pods.
        let creds = "/latest/meta-data/iam/security-credentials/payments-role";
        assert_eq!(
            ok(aws(&api, "GET", creds)).as_deref(),
            Some("payments-role")
        );
        // `/latest/meta-data/iam` covers the path but does not name the secret.
        let d = aws(&web, "GET", creds);
        assert_eq!(denied_by(&d), "everyone-placement");
        let Decision::Deny(deny) = &d else {
            unreachable!()
        };
        assert!(
            deny.reason.contains("secret (credentials)"),
            "{}",
            deny.reason
        );
        assert!(deny.help.contains("cloud: aws"), "{}", deny.help);
        // The role listing is not a secret.
        assert!(
            allowed(&aws(
                &web,
                "GET",
                "/latest/meta-data/iam/security-credentials/"
            ))
            .is_some()
        );
        assert!(allowed(&aws(&web, "GET", "/latest/meta-data/iam/info")).is_some());
        // `/latest/meta-data` (everything) gives no credentials, no user-data.
        assert!(allowed(&aws(&ops, "GET", "/latest/meta-data/hostname")).is_some());
        assert_eq!(denied_by(&aws(&ops, "GET", creds)), "everyone-placement");
        assert_eq!(
            denied_by(&aws(
                &ops,
                "GET",
                "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"
            )),
            "broad"
        );
        assert_eq!(
            denied_by(&aws(&ops, "GET", "/latest/user-data")),
            RULE_DEFAULT_DENY
        );
        // A case variant of a secret is still a secret, and the exact grant does not
        // name it.
        assert!(
            allowed(&aws(
                &api,
                "GET",
                "/latest/meta-data/iam/Security-Credentials/payments-role"
            ))
            .is_none()
        );
        assert!(
            allowed(&aws(
                &api,
                "GET",
                "/latest/meta-data/iam/security-credentials/Payments-Role"
            ))
            .is_none()
        );
        assert!(
            allowed(&aws(
                &api,
                "GET",
                "/latest/meta-data/iam/security-credentials/payments-role/x"
            ))
            .is_none()
        );
        // The identity document's redaction is the rule's.
        let Decision::Allow(a) = aws(&web, "GET", "/latest/dynamic/instance-identity/document")
        else {
            panic!()
        };
        let mut doc = serde_json::json!({"accountId": "123456789012", "region": "eu-west-1"});
        a.redaction.apply(&mut doc);
        assert_eq!(doc, serde_json::json!({"region": "eu-west-1"}));
    }

    #[test]
    fn a_wildcard_names_only_a_secrets_own_name() {
        let rules = "cloud: aws\nrules:\n  - {name: any-role, subjects: [{namespace: a}], paths: [/latest/meta-data/iam/security-credentials/*]}\n  - {name: star, subjects: [{namespace: b}], paths: [/latest/meta-data/*/security-credentials/*]}\n";
        let creds = "/latest/meta-data/iam/security-credentials/r";
        assert_eq!(
            allowed(&decide(rules, Cloud::Aws, &pod("a", "x"), "GET", creds)),
            Some("any-role")
        );
        assert_eq!(
            denied_by(&decide(rules, Cloud::Aws, &pod("b", "x"), "GET", creds)),
            "star"
        );
        let rules = "cloud: gcp\nrules:\n  - {name: t, subjects: [{namespace: a}], paths: [/computeMetadata/v1/instance/service-accounts/default/*]}\n";
        let token = "/computeMetadata/v1/instance/service-accounts/default/token";
        assert_eq!(
            denied_by(&decide(rules, Cloud::Gcp, &pod("a", "x"), "GET", token)),
            "t"
        );
        assert!(
            allowed(&decide(
                rules,
                Cloud::Gcp,
                &pod("a", "x"),
                "GET",
                "/computeMetadata/v1/instance/service-accounts/default/email"
            ))
            .is_some()
        );
    }

    #[test]
    fn gcp_tokens_identity_audiences_and_recursive_reads() {
        let pay = pod("payments", "api");
        let mon = pod("monitoring", "agent");
        let dbg = pod("debug", "default");
        let gcp = |p: &PodInfo, t: &str| decide(GCP_RULES, Cloud::Gcp, p, "GET", t);
        assert_eq!(
            allowed(&gcp(&mon, "/computeMetadata/v1/instance/zone")),
            Some("zone")
        );
        assert_eq!(
            allowed(&gcp(
                &pay,
                "/computeMetadata/v1/instance/service-accounts/default/token"
            )),
            Some("sa-token")
        );
        assert_eq!(
            allowed(&gcp(
                &pay,
                "/computeMetadata/v1/instance/service-accounts/sa%40p.iam.gserviceaccount.com/token?scopes=https://www.googleapis.com/auth/cloud-platform"
            )),
            Some("sa-token")
        );
        // monitoring's `instance` grant covers the tree but no token, no kube-env.
        assert!(allowed(&gcp(&mon, "/computeMetadata/v1/instance/hostname")).is_some());
        assert_eq!(
            denied_by(&gcp(
                &mon,
                "/computeMetadata/v1/instance/service-accounts/default/token"
            )),
            "monitoring"
        );
        assert_eq!(
            denied_by(&gcp(
                &mon,
                "/computeMetadata/v1/instance/attributes/kube-env"
            )),
            "monitoring"
        );
        assert_eq!(
            denied_by(&gcp(
                &mon,
                "/computeMetadata/v1/instance/attributes/KUBE-ENV"
            )),
            "monitoring"
        );
        assert!(
            allowed(&gcp(
                &mon,
                "/computeMetadata/v1/instance/attributes/cluster-name"
            ))
            .is_some()
        );
        // Legacy trees are secrets nobody can grant.
        assert_eq!(
            denied_by(&gcp(
                &dbg,
                "/computeMetadata/v1beta1/instance/attributes/kube-env"
            )),
            RULE_DEFAULT_DENY
        );
        assert_eq!(
            denied_by(&gcp(&dbg, "/0.1/meta-data/attributes/kube-env")),
            RULE_DEFAULT_DENY
        );
        // Identity tokens: only the audiences allowed.
        let id = "/computeMetadata/v1/instance/service-accounts/default/identity";
        assert_eq!(
            allowed(&gcp(
                &pay,
                &format!("{id}?audience=https://payments.example")
            )),
            Some("identity")
        );
        let d = gcp(&pay, &format!("{id}?audience=https://evil.example"));
        assert_eq!(denied_by(&d), "identity");
        assert_eq!(denied_by(&gcp(&pay, id)), "identity");
        // A recursive read of instance/: allowed with the secret attributes redacted.
        let Decision::Allow(a) = gcp(&mon, "/computeMetadata/v1/instance/?recursive=true") else {
            panic!()
        };
        let mut doc = serde_json::json!({"attributes": {"kube-env": "KUBELET_KEY: x", "cluster-name": "c", "ssh-keys": "k"}, "zone": "z"});
        a.redaction.apply(&mut doc);
        assert_eq!(
            doc,
            serde_json::json!({"attributes": {"cluster-name": "c"}, "zone": "z"})
        );
        // ... but not as text, which cannot be redacted.
        assert_eq!(
            denied_by(&gcp(
                &mon,
                "/computeMetadata/v1/instance/?recursive=true&alt=text"
            )),
            "monitoring"
        );
        // A rule that redacts nothing cannot read secrets recursively.
        let d = gcp(&dbg, "/computeMetadata/v1/?recursive=true");
        assert_eq!(denied_by(&d), "debug");
        let Decision::Deny(deny) = &d else {
            unreachable!()
        };
        assert!(deny.reason.contains("kube-env"), "{}", deny.reason);
        assert_eq!(
            denied_by(&gcp(
                &dbg,
                "/computeMetadata/v1/instance/attributes/?recursive=true"
            )),
            "debug"
        );
        // Elsewhere it reads everything, as text too.
        assert!(
            allowed(&gcp(
                &dbg,
                "/computeMetadata/v1/instance/network-interfaces/?recursive=true&alt=text"
            ))
            .is_some()
        );
        assert!(allowed(&gcp(&dbg, "/computeMetadata/v1/instance/attributes/")).is_some());
        // Case variants are other paths.
        assert_eq!(
            denied_by(&gcp(&mon, "/computeMetadata/v1/Instance/zone")),
            RULE_DEFAULT_DENY
        );
    }

    #[test]
    fn azure_requests_are_never_granted_by_cloud_rules_and_back() {
        let rules = AccessRules::parse(AWS_RULES).unwrap();
        let c = Canonicalizer::default()
            .canonicalize("/metadata/instance?api-version=2021-02-01")
            .unwrap();
        let req = crate::imds::validate("GET", &c.path, c.query.as_deref(), [("Metadata", "true")])
            .unwrap();
        assert!(matches!(
            rules.evaluate(&pod("web", "default"), &req),
            Decision::Deny(_)
        ));
        let azure = AccessRules::parse(
            "rules: [{name: all, subjects: [{namespace: '*'}], paths: [/metadata/instance]}]",
        )
        .unwrap();
        let d = evaluate(
            &azure,
            &pod("web", "x"),
            &request(Cloud::Aws, "GET", "/latest/meta-data/placement/region"),
        );
        assert_eq!(denied_by(&d), RULE_DEFAULT_DENY);
    }

    #[test]
    fn the_root_grant_is_the_root_listing_alone() {
        let rules = "cloud: gcp\nrules: [{name: ping, subjects: [{namespace: '*'}], paths: [/]}]";
        let p = pod("web", "default");
        assert_eq!(
            allowed(&decide(rules, Cloud::Gcp, &p, "GET", "/")),
            Some("ping")
        );
        // Found in review: `/?recursive=true` was covered by the root grant, a read of
        // the whole tree (every attribute) for any pod the rule selects.
        for other in [
            "/?recursive=true",
            "/?recursive=true&wait_for_change=true",
            "/computeMetadata/",
            "/computeMetadata/v1/instance/zone",
            "/computeMetadata/v1/instance/service-accounts/default/token",
        ] {
            assert_eq!(
                denied_by(&decide(rules, Cloud::Gcp, &p, "GET", other)),
                RULE_DEFAULT_DENY,
                "{other}"
            );
        }
    }

    #[test]
    fn secrets_are_recognised() {
        let seg =
            |p: &str| -> Vec<String> { p.trim_matches('/').split('/').map(String::from).collect() };
        for (cloud, path, kind) in [
            (
                Cloud::Aws,
                "/latest/dynamic/instance-identity/pkcs7",
                Some(SecretKind::SignedIdentity),
            ),
            (
                Cloud::Aws,
                "/latest/dynamic/instance-identity/signature",
                Some(SecretKind::SignedIdentity),
            ),
            (
                Cloud::Aws,
                "/2016-09-02/dynamic/instance-identity/RSA2048",
                Some(SecretKind::SignedIdentity),
            ),
            (
                Cloud::Aws,
                "/latest/meta-data/iam/security-credentials/r",
                Some(SecretKind::Credentials),
            ),
            (
                Cloud::Aws,
                "/2021-07-15/meta-data/iam/security-credentials/r",
                Some(SecretKind::Credentials),
            ),
            (Cloud::Aws, "/latest/user-data", Some(SecretKind::UserData)),
            (Cloud::Aws, "/latest/api/token", Some(SecretKind::Token)),
            (
                Cloud::Aws,
                "/latest/meta-data/iam/security-credentials",
                None,
            ),
            (Cloud::Aws, "/latest/meta-data/iam/info", None),
            (
                Cloud::Gcp,
                "/computeMetadata/v1/project/attributes/ssh-keys",
                Some(SecretKind::Attribute),
            ),
            (
                Cloud::Gcp,
                "/computeMetadata/v1/instance/attributes/startup-script",
                Some(SecretKind::Attribute),
            ),
            (
                Cloud::Gcp,
                "/computeMetadata/V1/instance/attributes/kube-env",
                Some(SecretKind::Attribute),
            ),
            (
                Cloud::Gcp,
                "/computeMetadata/v1beta1/instance/zone",
                Some(SecretKind::LegacyApi),
            ),
            (
                Cloud::Gcp,
                "/0.1/meta-data/project-id",
                Some(SecretKind::LegacyApi),
            ),
            (
                Cloud::Gcp,
                "/computeMetadata/v1/instance/service-accounts/default/identity",
                Some(SecretKind::IdentityToken),
            ),
            (
                Cloud::Gcp,
                "/computeMetadata/v1/instance/service-accounts/default",
                None,
            ),
            (Cloud::Gcp, "/computeMetadata/v1", None),
        ] {
            assert_eq!(
                secret_path(cloud, &seg(path)).map(|s| s.kind),
                kind,
                "{path}"
            );
        }
        let mut r = request(Cloud::Aws, "GET", "/latest/meta-data/hostname");
        assert!(r.secret.is_none());
        r.mark_secret();
        assert_eq!(r.secret.as_ref().map(|s| s.kind), Some(SecretKind::Other));
    }
}
