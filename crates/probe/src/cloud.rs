//! What the AWS and GCP walks share: the TCP steps (the endpoint, the cloud's IPv6
//! address, the EKS Pod Identity agent), running one HTTP step, skipping the rest when
//! the endpoint is unreachable, and quoting an unexpected answer without ever quoting a
//! credential.

use http::Method;
use imdsguard_core::token::{fingerprint, redact_jwts};
use serde_json::Value;

use crate::classify::{self, Class, Outcome, clip};
use crate::config::{BaseUrl, ProbeConfig};
use crate::http::{self as client, Failure, Response};
use crate::report::{Step, StepName};

/// How an imdsguard denial reads in the AWS and GCP walks: `denied by proxy (imdsguard
/// rule R): REASON`.
pub(crate) const DENIED_BY_PROXY: &str = "denied by proxy";

/// One walk's steps so far, and whether the endpoint answers TCP.
pub(crate) struct Walk<'a> {
    pub config: &'a ProbeConfig,
    pub steps: Vec<Step>,
    /// Why HTTP steps are not attempted (`None`: the endpoint is reachable).
    unreachable: Option<String>,
}

impl<'a> Walk<'a> {
    /// Runs the TCP steps: the endpoint, then the IPv6 address and the Pod Identity
    /// agent when the configuration names them (reachability only).
    pub async fn start(config: &'a ProbeConfig) -> Walk<'a> {
        let mut walk = Walk {
            config,
            steps: Vec::new(),
            unreachable: None,
        };
        let tcp = walk.tcp(StepName::TcpConnect, &config.endpoint).await;
        if tcp != Class::Reachable {
            walk.unreachable = Some(format!("not attempted: the TCP step ended {tcp}"));
        }
        if let Some(v6) = &config.ipv6_endpoint {
            walk.tcp(StepName::TcpConnectIpv6, v6).await;
        }
        for agent in &config.pod_identity {
            walk.tcp(StepName::PodIdentityTcp, agent).await;
        }
        walk
    }

    async fn tcp(&mut self, name: StepName, endpoint: &BaseUrl) -> Class {
        let exchange = client::connect_only(endpoint, self.config.connect_timeout).await;
        let mut outcome = classify::tcp(&exchange.result);
        if name == StepName::PodIdentityTcp && outcome.class == Some(Class::Reachable) {
            outcome.detail.push_str(
                " to the EKS Pod Identity agent (it hands out the credentials of pods' \
                 associated roles to those holding their service account token)",
            );
        }
        let step = crate::step(name, endpoint.authority(), &exchange, outcome);
        let class = step.class;
        self.steps.push(step);
        class
    }

    /// Sends `method path` with `headers` to the endpoint and adds the step `classify`
    /// makes of the answer (or a `not-checked` step when the endpoint is unreachable).
    /// Returns the step, and the answer's body for the caller to read further (never
    /// stored in the step).
    pub async fn http(
        &mut self,
        name: StepName,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        classify: impl FnOnce(&Result<Response, Failure>) -> Outcome,
    ) -> (&mut Step, Option<Response>) {
        let endpoint = &self.config.endpoint;
        let target = endpoint.url(path);
        if let Some(why) = &self.unreachable {
            let step = Step::bare(name, target, Class::NotChecked, why.clone());
            self.steps.push(step);
            return (self.steps.last_mut().expect("just pushed"), None);
        }
        let exchange = client::request(
            method,
            endpoint,
            path,
            headers,
            self.config.connect_timeout,
            self.config.timeout,
        )
        .await;
        let outcome = classify(&exchange.result);
        self.steps
            .push(crate::step(name, target, &exchange, outcome));
        let step = self.steps.last_mut().expect("just pushed");
        (step, exchange.result.ok())
    }

    /// Adds a step that was not attempted, saying why.
    pub fn skip(&mut self, name: StepName, path: &str, why: String) -> &mut Step {
        let why = self.unreachable.clone().unwrap_or(why);
        self.steps.push(Step::bare(
            name,
            self.config.endpoint.url(path),
            Class::NotChecked,
            why,
        ));
        self.steps.last_mut().expect("just pushed")
    }
}

/// The answer, unless it is no answer, an imdsguard denial (`denied by proxy …`) or
/// throttling (then the outcome saying so).
pub(crate) fn answer(result: &Result<Response, Failure>) -> Result<&Response, Box<Outcome>> {
    classify::common_as(result, DENIED_BY_PROXY, "imdsguard rule")
}

/// An answer no rule expected. The body is quoted (clipped, credentials masked) only
/// when the path cannot answer credentials: `secret_bearing` says it can.
pub(crate) fn unexpected(response: &Response, secret_bearing: bool) -> Outcome {
    let body = if secret_bearing {
        format!(
            "{} bytes, not quoted (this path answers credentials)",
            response.body.len()
        )
    } else {
        quote(&response.body)
    };
    Outcome::new(
        Class::Error,
        format!("{}: {body}", classify::status_line(response.status)),
    )
}

/// A short single-line rendering of a body that never shows a credential: in JSON,
/// every string value whose key names a secret (`…token`, `…secret…`, `…key…`,
/// `…password…`, `…credential…`) is replaced by its fingerprint; in any text, JWTs,
/// `ya29.` tokens and AWS access key ids are.
pub(crate) fn quote(body: &[u8]) -> String {
    if body.is_empty() {
        return "empty body".to_owned();
    }
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            mask_secret_fields(&mut value);
            value.to_string()
        }
        Err(_) => String::from_utf8_lossy(body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    };
    clip(&redact_words(&redact_jwts(&text)), 160)
}

fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("token")
        || ["secret", "key", "password", "credential"]
            .iter()
            .any(|word| key.contains(word))
}

fn mask_secret_fields(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match field {
                    Value::String(s) if !s.is_empty() && secret_key(key) => {
                        *s = format!("<secret sha256:{}>", fingerprint(s));
                    }
                    other => mask_secret_fields(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_secret_fields),
        _ => {}
    }
}

/// Replaces words that look like GCP access tokens (`ya29.…`) or AWS access key ids
/// (`ASIA…`/`AKIA…`, 16 characters or more) by their fingerprints.
pub(crate) fn redact_words(text: &str) -> String {
    let is_word =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+' | '=');
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let secret = word.starts_with("ya29.")
            || ((word.starts_with("ASIA") || word.starts_with("AKIA"))
                && word.len() >= 16
                && word.chars().all(|c| c.is_ascii_alphanumeric()));
        if secret {
            out.push_str(&format!("<secret sha256:{}>", fingerprint(word)));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The first line of a text answer, trimmed and clipped (a leaf value such as a
/// project id or a zone).
pub(crate) fn leaf(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    clip(text.lines().next().unwrap_or("").trim(), 200)
}

/// The entries of a directory listing (one a line), trimmed, empty lines dropped.
pub(crate) fn listing(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| clip(l, 200))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn quotes_never_show_credentials() {
        let body = r#"{"Code":"Success","AccessKeyId":"ASIAFAKEFAKEFAKE1234","SecretAccessKey":"s3cr3t/value+x","Token":"IQoJb3JpZ2luX2VjE","access_token":"ya29.abc"}"#;
        let quoted = quote(body.as_bytes());
        for secret in [
            "ASIAFAKEFAKEFAKE1234",
            "s3cr3t/value+x",
            "IQoJb3JpZ2luX2VjE",
            "ya29.abc",
        ] {
            assert!(!quoted.contains(secret), "{quoted}");
        }
        assert!(quoted.contains("Success"), "{quoted}");
        let text = quote(b"oops ya29.c.abcdef ASIAFAKEFAKEFAKE1234 AKIA");
        assert!(!text.contains("ya29.c.abcdef") && !text.contains("ASIAFAKEFAKEFAKE1234"));
        assert!(
            text.starts_with("oops <secret sha256:") && text.ends_with(" AKIA"),
            "{text}"
        );
    }

    #[test]
    fn unexpected_answers_on_credential_paths_are_not_quoted() {
        let r = response(500, "ASIA-looking secret-ish body");
        let o = unexpected(&r, true);
        assert_eq!(o.class, Some(Class::Error));
        assert_eq!(
            o.detail,
            "HTTP 500 Internal Server Error: 28 bytes, not quoted (this path answers credentials)"
        );
        let o = unexpected(&response(418, r#"{"SecretAccessKey":"x1"}"#), false);
        assert!(
            o.detail.starts_with("HTTP 418 I'm a teapot: "),
            "{}",
            o.detail
        );
        assert!(!o.detail.contains("x1"), "{}", o.detail);
    }

    #[test]
    fn leaves_and_listings() {
        assert_eq!(leaf(b"  my-project \nmore"), "my-project");
        assert_eq!(listing(b"a\n\n b/ \n"), ["a", "b/"]);
    }
}
