//! The attacker's path against the GCE metadata server (and GKE's) from where the probe
//! runs:
//!
//! 1. TCP reachability of the endpoint (and of `[fd20:ce::254]` when asked);
//! 2. `metadata-without-header`: a value without `Metadata-Flavor: Google` (refused with
//!    403 by the real server; an answer means something in front adds the header);
//! 3. with the header: project id, numeric project id, zone, instance name, the
//!    `cluster-name` attribute, the attribute names and whether `kube-env` is among them;
//! 4. `kube-env` itself: its key names only, and which of them look like kubelet
//!    credentials (`KUBELET_CERT`, `KUBELET_KEY`, …), never a value;
//! 5. the service accounts (emails, scopes), the default account's access token (type,
//!    `expires_in` and a fingerprint: `ya29.` tokens are opaque) and an identity token
//!    for `--audience` (decoded claims and a fingerprint, never the token);
//! 6. the legacy `/0.1/` and `/computeMetadata/v1beta1/` endpoints, which needed no
//!    header: sensitive if they answer.

use http::Method;
use imdsguard_core::gcp as protocol;
use imdsguard_core::token::TokenSummary;
use serde_json::Value;

use crate::classify::{Class, Outcome};
use crate::cloud::{self, Walk};
use crate::config::ProbeConfig;
use crate::http::{Failure, Response};
use crate::report::{Fact, Step, StepName};

/// The header the metadata server requires on `/computeMetadata/v1/`.
const FLAVOR_HEADER: &str = protocol::METADATA_FLAVOR;
/// Its value.
const FLAVOR: &str = protocol::METADATA_FLAVOR_VALUE;
/// The v1 API's root.
const V1: &str = protocol::V1_PREFIX;
/// The default service account's access token.
pub const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// The default service account's identity token (`?audience=` appended).
pub const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";
/// `kube-env`.
pub const KUBE_ENV_PATH: &str = "/computeMetadata/v1/instance/attributes/kube-env";
/// The legacy v0.1 endpoint (no header needed; disabled on GKE since 1.12).
pub const LEGACY_V01_PATH: &str = "/0.1/meta-data/project-id";
/// The legacy v1beta1 endpoint (no header needed; disabled on GKE since 1.12).
pub const LEGACY_V1BETA1_PATH: &str = "/computeMetadata/v1beta1/project/project-id";

/// Walks the GCP path (see the module documentation).
pub(crate) async fn walk(config: &ProbeConfig) -> Vec<Step> {
    let mut walk = Walk::start(config).await;
    let flavor: &[(&str, &str)] = &[(FLAVOR_HEADER, FLAVOR)];

    // 2. Without the header.
    walk.http(
        StepName::MetadataWithoutHeader,
        Method::GET,
        &format!("{V1}/project/project-id"),
        &[],
        without_header,
    )
    .await;

    // 3. Values, with the header.
    for (name, path, fact) in [
        (StepName::ProjectId, "/project/project-id", "project_id"),
        (
            StepName::NumericProjectId,
            "/project/numeric-project-id",
            "numeric_project_id",
        ),
        (StepName::Zone, "/instance/zone", "zone"),
        (StepName::InstanceName, "/instance/name", "instance_name"),
        (
            StepName::ClusterName,
            "/instance/attributes/cluster-name",
            "cluster_name",
        ),
    ] {
        walk.http(name, Method::GET, &format!("{V1}{path}"), flavor, |r| {
            value(r, fact)
        })
        .await;
    }
    walk.http(
        StepName::Attributes,
        Method::GET,
        &format!("{V1}/instance/attributes/"),
        flavor,
        attributes,
    )
    .await;

    // 4. kube-env.
    walk.http(
        StepName::KubeEnv,
        Method::GET,
        KUBE_ENV_PATH,
        flavor,
        kube_env,
    )
    .await;

    // 5. Service accounts, the access token, an identity token.
    walk.http(
        StepName::ServiceAccounts,
        Method::GET,
        &format!("{V1}/instance/service-accounts/?recursive=true"),
        flavor,
        service_accounts,
    )
    .await;
    walk.http(
        StepName::Token,
        Method::GET,
        TOKEN_PATH,
        flavor,
        access_token,
    )
    .await;
    let audience = config.audience.clone();
    let path = format!(
        "{IDENTITY_PATH}?audience={}&format=full",
        crate::encode(&audience)
    );
    let (step, _) = walk
        .http(
            StepName::IdentityToken,
            Method::GET,
            &path,
            flavor,
            identity_token,
        )
        .await;
    step.resource = Some(audience);

    // 6. Legacy endpoints, without the header as their clients sent them.
    for (name, path) in [
        (StepName::LegacyV01, LEGACY_V01_PATH),
        (StepName::LegacyV1beta1, LEGACY_V1BETA1_PATH),
    ] {
        walk.http(name, Method::GET, path, &[], legacy).await;
    }
    walk.steps
}

/// A value requested without `Metadata-Flavor`.
pub(crate) fn without_header(result: &Result<Response, Failure>) -> Outcome {
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        403 => Outcome::new(
            Class::NeedsHeader,
            format!(
                "refused without `Metadata-Flavor: Google`, as the metadata server does ({})",
                cloud::quote(&response.body)
            ),
        ),
        200 => Outcome::new(
            Class::Exposed,
            "answered WITHOUT the Metadata-Flavor header: something in front of the \
             metadata server adds it, so header-less requests (SSRF) read metadata",
        ),
        _ => cloud::unexpected(response, false),
    }
}

/// An answer that should be 200 with the header.
fn ok(result: &Result<Response, Failure>) -> Result<&Response, Box<Outcome>> {
    let response = cloud::answer(result)?;
    match response.status {
        200 => Ok(response),
        404 => Err(Box::new(Outcome::new(
            Class::NotFound,
            "HTTP 404: not there",
        ))),
        403 => Err(Box::new(Outcome::new(
            Class::NeedsHeader,
            format!(
                "HTTP 403 with `Metadata-Flavor: Google` ({})",
                cloud::quote(&response.body)
            ),
        ))),
        _ => Err(Box::new(cloud::unexpected(response, false))),
    }
}

/// A leaf value (project id, zone, …), shown as `fact`.
pub(crate) fn value(result: &Result<Response, Failure>, fact: &str) -> Outcome {
    let response = match ok(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    let mut value = cloud::leaf(&response.body);
    if fact == "zone" {
        // projects/NUMBER/zones/ZONE
        value = value.rsplit('/').next().unwrap_or("").to_owned();
    }
    Outcome::new(
        Class::Readable,
        format!("{} {value}", fact.replace('_', " ")),
    )
    .with_facts(vec![Fact::new(fact, value)])
}

/// The attribute names, and whether `kube-env` is among them.
pub(crate) fn attributes(result: &Result<Response, Failure>) -> Outcome {
    let response = match ok(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    let names = cloud::listing(&response.body);
    let kube_env = names.iter().any(|n| n == "kube-env");
    Outcome::new(
        Class::Readable,
        format!(
            "{} attribute(s): {}; kube-env {}",
            names.len(),
            names.join(", "),
            if kube_env { "listed" } else { "not listed" }
        ),
    )
    .with_facts(vec![
        Fact::new("attributes", names.join(", ")),
        Fact::new("kube_env_listed", kube_env.to_string()),
    ])
}

/// Whether a kube-env key looks like it holds a kubelet credential.
fn credential_key(key: &str) -> bool {
    key.ends_with("_KEY")
        || key.ends_with("_TOKEN")
        || key.contains("PASSWORD")
        || key.contains("SECRET")
        || key == "KUBELET_CERT"
        || key.ends_with("BOOTSTRAP_CERT")
}

/// kube-env: its key names only (`KEY: value` lines), never a value.
pub(crate) fn kube_env(result: &Result<Response, Failure>) -> Outcome {
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => {}
        404 => {
            return Outcome::new(
                Class::NotFound,
                "HTTP 404: no kube-env here (concealed, Workload Identity's metadata server, \
                 or not a GKE node)",
            );
        }
        _ => return cloud::unexpected(response, true),
    }
    let text = String::from_utf8_lossy(&response.body);
    let keys: Vec<String> = text
        .lines()
        .filter_map(|line| line.split_once(':').map(|(k, _)| k.trim()))
        .filter(|k| {
            !k.is_empty()
                && k.len() <= 80
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    let credentials: Vec<String> = keys.iter().filter(|k| credential_key(k)).cloned().collect();
    let mut detail = format!(
        "kube-env readable ({} bytes, values not shown): {} key(s)",
        response.body.len(),
        keys.len()
    );
    if credentials.is_empty() {
        detail.push_str("; no kubelet credential keys");
    } else {
        detail.push_str(&format!(
            "; kubelet credentials: {}",
            credentials.join(", ")
        ));
    }
    Outcome::new(Class::Exposed, detail).with_facts(vec![
        Fact::new("kube_env_bytes", response.body.len().to_string()),
        Fact::new("kube_env_keys", keys.join(", ")),
        Fact::new("kube_env_credential_keys", credentials.join(", ")),
    ])
}

/// `instance/service-accounts/?recursive=true`: emails and scopes.
pub(crate) fn service_accounts(result: &Result<Response, Failure>) -> Outcome {
    let response = match ok(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    let Ok(Value::Object(accounts)) = serde_json::from_slice::<Value>(&response.body) else {
        return Outcome::new(
            Class::Error,
            format!(
                "HTTP 200 but not a service-accounts object ({} bytes)",
                response.body.len()
            ),
        );
    };
    let mut facts: Vec<Fact> = Vec::new();
    let mut lines = Vec::new();
    for (alias, account) in &accounts {
        let email = account
            .get("email")
            .and_then(Value::as_str)
            .map(|e| cloud::leaf(e.as_bytes()))
            .unwrap_or_else(|| cloud::leaf(alias.as_bytes()));
        if facts
            .iter()
            .any(|f| f.name == "service_account" && f.value == email)
        {
            continue; // `default` and the email name the same account
        }
        let scopes: Vec<String> = account
            .get("scopes")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(|s| cloud::leaf(s.as_bytes()))
                    .collect()
            })
            .unwrap_or_default();
        lines.push(format!(
            "{email}: scopes {}",
            if scopes.is_empty() {
                "-".to_owned()
            } else {
                scopes.join(" ")
            }
        ));
        facts.push(Fact::new("service_account", email.clone()));
        facts.push(Fact::new(
            "scopes",
            format!("{email}: {}", scopes.join(" ")),
        ));
    }
    let count = lines.len();
    lines.insert(0, format!("{count} service account(s)"));
    Outcome::new(Class::Readable, lines.join("\n")).with_facts(facts)
}

/// The default account's access token: type, `expires_in`, fingerprint.
pub(crate) fn access_token(result: &Result<Response, Failure>) -> Outcome {
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => {}
        404 => return Outcome::new(Class::NotFound, "HTTP 404: no default service account"),
        _ => return cloud::unexpected(response, true),
    }
    let summary = match TokenSummary::from_token_response(&response.body) {
        Ok(s) => s,
        Err(e) => return Outcome::new(Class::Error, format!("HTTP 200 but {e}")),
    };
    let expires_in = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v.get("expires_in").and_then(Value::as_i64));
    let mut detail = format!(
        "access token issued: {}, sha256:{} ({} bytes, not shown)",
        summary.token_type.as_deref().unwrap_or("type -"),
        summary.fingerprint,
        summary.length
    );
    let mut facts = Vec::new();
    if let Some(secs) = expires_in {
        detail.push_str(&format!(", expires_in {secs} s"));
        facts.push(Fact::new("expires_in", secs.to_string()));
    }
    if summary.claims.is_none() {
        detail.push_str("; an opaque token (no claims to read)");
    }
    Outcome {
        token: Some(summary),
        ..Outcome::new(Class::TokenObtained, detail).with_facts(facts)
    }
}

/// An identity token (the body is the JWT itself): claims and fingerprint.
pub(crate) fn identity_token(result: &Result<Response, Failure>) -> Outcome {
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => {}
        404 => return Outcome::new(Class::NotFound, "HTTP 404: no default service account"),
        _ => return cloud::unexpected(response, true),
    }
    let token = String::from_utf8_lossy(&response.body).trim().to_owned();
    if token.is_empty() {
        return Outcome::new(Class::Error, "HTTP 200 but an empty token");
    }
    let summary = TokenSummary::from_token(&token);
    let mut parts = vec![format!(
        "identity token issued: sha256:{} ({} bytes, not shown)",
        summary.fingerprint, summary.length
    )];
    match &summary.claims {
        Some(c) => {
            for (name, value) in [("aud", &c.aud), ("iss", &c.iss)] {
                if let Some(v) = value {
                    parts.push(format!("{name} {v}"));
                }
            }
            if let Some(exp) = c.exp_utc() {
                parts.push(format!("exp {exp}"));
            }
        }
        None => parts.push(format!(
            "claims unreadable ({})",
            summary.claims_error.as_deref().unwrap_or("?")
        )),
    }
    Outcome {
        token: Some(summary),
        ..Outcome::new(Class::TokenObtained, parts.join(", "))
    }
}

/// A legacy endpoint: sensitive if it answers.
pub(crate) fn legacy(result: &Result<Response, Failure>) -> Outcome {
    let response = match cloud::answer(result) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    match response.status {
        200 => Outcome::new(
            Class::Exposed,
            "the legacy endpoint answers without any header: SSRF reads metadata (and, \
             on old nodes, tokens and kube-env) through it",
        ),
        403 | 404 => Outcome::new(
            Class::Disabled,
            format!(
                "HTTP {}: the legacy endpoint is disabled ({})",
                response.status,
                cloud::quote(&response.body)
            ),
        ),
        _ => cloud::unexpected(response, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use imdsguard_core::token::fingerprint;

    fn answer(status: u16, body: &str) -> Result<Response, Failure> {
        Ok(Response {
            status,
            body: Bytes::from(body.to_owned()),
        })
    }

    #[test]
    fn without_the_header() {
        let o = without_header(&answer(403, "Missing Metadata-Flavor:Google header."));
        assert_eq!(o.class, Some(Class::NeedsHeader));
        let o = without_header(&answer(200, "my-project"));
        assert_eq!(o.class, Some(Class::Exposed));
        let deny = r#"{"error":"imdsguard_denied","imdsguard":{"decision":"deny","rule":"gke/deny","reason":"no"}}"#;
        let o = without_header(&answer(403, deny));
        assert_eq!(o.class, Some(Class::BlockedByImdsguard));
        assert!(o.detail.starts_with("denied by proxy"), "{}", o.detail);
    }

    #[test]
    fn values() {
        let o = value(&answer(200, "projects/123456/zones/europe-west1-b"), "zone");
        assert_eq!(o.detail, "zone europe-west1-b");
        assert_eq!(o.facts, [Fact::new("zone", "europe-west1-b")]);
        let o = value(&answer(200, "prod-cluster"), "cluster_name");
        assert_eq!(o.class, Some(Class::Readable));
        assert_eq!(value(&answer(404, ""), "x").class, Some(Class::NotFound));
        let o = attributes(&answer(200, "cluster-name\nkube-env\nkube-labels\n"));
        assert!(o.detail.ends_with("kube-env listed"), "{}", o.detail);
    }

    #[test]
    fn kube_env_names_keys_never_values() {
        let body = "CA_CERT: LS0tQ0FDRVJU\nKUBELET_CERT: LS0tS1VCRUxFVENFUlQ=\nKUBELET_KEY: LS0tS0VZU0VDUkVU\nKUBE_PROXY_TOKEN: abcdefsecret\nENABLE_NODE_PROBLEM_DETECTOR: standalone\n";
        let o = kube_env(&answer(200, body));
        assert_eq!(o.class, Some(Class::Exposed));
        assert!(
            o.detail
                .ends_with("kubelet credentials: KUBELET_CERT, KUBELET_KEY, KUBE_PROXY_TOKEN"),
            "{}",
            o.detail
        );
        let shown = format!("{o:?}");
        for v in [
            "LS0tQ0FDRVJU",
            "LS0tS1VCRUxFVENFUlQ=",
            "LS0tS0VZU0VDUkVU",
            "abcdefsecret",
            "standalone",
        ] {
            assert!(!shown.contains(v), "{shown}");
        }
        assert_eq!(kube_env(&answer(404, "")).class, Some(Class::NotFound));
        assert!(!kube_env(&answer(500, body)).detail.contains("LS0t"));
    }

    #[test]
    fn service_accounts_emails_and_scopes() {
        let body = r#"{"default":{"aliases":["default"],"email":"123-compute@developer.gserviceaccount.com","scopes":["https://www.googleapis.com/auth/cloud-platform"]},"123-compute@developer.gserviceaccount.com":{"aliases":["default"],"email":"123-compute@developer.gserviceaccount.com","scopes":["https://www.googleapis.com/auth/cloud-platform"]}}"#;
        let o = service_accounts(&answer(200, body));
        assert_eq!(o.class, Some(Class::Readable));
        assert_eq!(
            o.detail,
            "1 service account(s)\n123-compute@developer.gserviceaccount.com: scopes \
             https://www.googleapis.com/auth/cloud-platform"
        );
    }

    #[test]
    fn tokens_are_fingerprints() {
        let token = "ya29.c.FakeAccessTokenValue0000";
        let body =
            format!(r#"{{"access_token":"{token}","expires_in":3599,"token_type":"Bearer"}}"#);
        let o = access_token(&answer(200, &body));
        assert_eq!(o.class, Some(Class::TokenObtained));
        assert!(!o.detail.contains(token) && !format!("{o:?}").contains(token));
        assert!(o.detail.contains(&fingerprint(token)));
        assert!(o.detail.contains("Bearer") && o.detail.contains("expires_in 3599 s"));
        assert!(!access_token(&answer(500, &body)).detail.contains(token));

        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","typ":"JWT"}"#),
            b64(
                r#"{"aud":"https://imdsguard.invalid/probe","iss":"https://accounts.google.com","exp":1900000000,"email":"a@b"}"#
            ),
            b64("signature-bytes")
        );
        let o = identity_token(&answer(200, &jwt));
        assert_eq!(o.class, Some(Class::TokenObtained));
        assert!(
            o.detail.contains("aud https://imdsguard.invalid/probe"),
            "{}",
            o.detail
        );
        assert!(o.detail.contains("iss https://accounts.google.com"));
        assert!(!format!("{o:?}").contains(&jwt));
    }

    #[test]
    fn legacy_endpoints() {
        assert_eq!(legacy(&answer(200, "p")).class, Some(Class::Exposed));
        assert_eq!(
            legacy(&answer(403, "Legacy metadata endpoints are disabled")).class,
            Some(Class::Disabled)
        );
        assert_eq!(legacy(&answer(404, "")).class, Some(Class::Disabled));
    }
}
