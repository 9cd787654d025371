//! imdsguard-probe: walks the attacker's path against Azure IMDS (and WireServer) from
//! where it runs, and reports each step with a class.
//!
//! 1. TCP reachability of the IMDS endpoint;
//! 2. the instance document without `Metadata: true` (IMDS refuses: `needs-header`), then
//!    with it: what it exposes (subscription, resource group, VMSS, node, admin user,
//!    SSH key count, custom and user data presence, tags naming identities);
//! 3. the identities to try: tags ending in `ClientID`/`ClientId` (the AKS kubelet
//!    identity's `aks-managed-kubeletIdentityClientID`), identity resource ids in tags,
//!    and `--client-id`;
//! 4. a token for the default identity and each identity, for ARM, Key Vault and each
//!    `--resource`; an obtained token is shown as decoded claims and a fingerprint,
//!    never as the token;
//! 5. WireServer's goal state (port 80) and HostGAPlugin's vmSettings (port 32526).
//!
//! [`probe`] is the library's entry (it needs a Tokio runtime with IO and time
//! enabled): [`ProbeSettings`] checked into a [`ProbeConfig`] in, a [`Report`] out. The
//! command behind `imdsguard probe` (flags, runtime, printing) is the binary's.
//!
//! Pointed at another endpoint (`--endpoint`, or [`ProbeConfig::new`]), the probe never
//! sends anything to the real WireServer unless its URLs are given too.

mod aws;
mod classify;
mod cloud;
mod config;
mod gcp;
mod http;
mod instance;
mod report;
#[cfg(test)]
mod walk_tests;

use std::time::Duration;

pub use aws::AwsCredentials;
pub use classify::{Class, Denial};
pub use config::{
    ARM_RESOURCE, AWS_TOKEN_TTL_SECONDS, BaseUrl, DEFAULT_API_VERSION, DEFAULT_CLOUD_ENDPOINT,
    DEFAULT_ENDPOINT, DEFAULT_GCP_AUDIENCE, DEFAULT_HOSTGAPLUGIN, DEFAULT_TOKEN_API_VERSION,
    DEFAULT_WIRESERVER, KEY_VAULT_RESOURCE, ProbeConfig, ProbeSettings,
};
pub use imdsguard_core::target::Cloud;
pub use instance::{
    IMDS_RESTRICTION_TAG, Identity, IdentitySelector, InstanceExposure, KUBELET_IDENTITY_TAG, Tag,
};
pub use report::{Fact, Report, Step, StepName, Summary};

use classify::Outcome;
use http::Exchange;
use instance::push_identity;

/// The least time between two token requests. IMDS allows 20 identity requests a
/// second per VM, shared by every pod on the node: the probe stays at half of that so
/// that it never throttles the node's real workloads (nor itself).
pub const TOKEN_REQUEST_SPACING: Duration = Duration::from_millis(100);

/// The probe's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatusCode {
    /// 0: nothing sensitive is reachable from here.
    Clean,
    /// 1: something sensitive is (instance data, a token, WireServer data).
    Sensitive,
    /// 2: usage error (bad arguments) or the probe could not run.
    UsageError,
}

impl ExitStatusCode {
    /// The numeric status.
    pub fn code(self) -> u8 {
        match self {
            ExitStatusCode::Clean => 0,
            ExitStatusCode::Sensitive => 1,
            ExitStatusCode::UsageError => 2,
        }
    }
}

impl From<ExitStatusCode> for std::process::ExitCode {
    fn from(status: ExitStatusCode) -> Self {
        std::process::ExitCode::from(status.code())
    }
}

/// Why the probe could not run. Every variant means exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Bad settings (the flag named, what is wrong).
    #[error("{0}")]
    Usage(String),
}

impl ProbeError {
    /// The exit status this error means (always [`ExitStatusCode::UsageError`]).
    pub fn exit_status(&self) -> ExitStatusCode {
        ExitStatusCode::UsageError
    }
}

/// Walks the attacker's path of `config.cloud` as `config` says and returns every step.
/// Needs a Tokio runtime with IO and time enabled. Requests run one after the other;
/// Azure token requests at most one per [`TOKEN_REQUEST_SPACING`] (IMDS throttles per
/// VM, and the identity endpoint allows 5 concurrent requests).
pub async fn probe(config: &ProbeConfig) -> Report {
    let steps = match config.cloud {
        Cloud::Azure => return azure(config).await,
        Cloud::Aws => aws::walk(config).await,
        Cloud::Gcp => gcp::walk(config).await,
    };
    let mut report = Report {
        cloud: config.cloud,
        endpoint: config.endpoint.to_string(),
        wireserver: None,
        hostgaplugin: None,
        api_version: None,
        token_api_version: None,
        identities: Vec::new(),
        steps,
        summary: Summary::default(),
    };
    report.summarise();
    report
}

/// Azure's walk: IMDS, identities, tokens, WireServer and HostGAPlugin.
async fn azure(config: &ProbeConfig) -> Report {
    let mut steps = Vec::new();
    let endpoint = &config.endpoint;

    // 1. TCP reachability.
    let exchange = http::connect_only(endpoint, config.connect_timeout).await;
    let tcp = step(
        StepName::TcpConnect,
        endpoint.authority(),
        &exchange,
        classify::tcp(&exchange.result),
    );
    let reachable = tcp.class == Class::Reachable;
    let unreachable_why = format!("not attempted: the TCP step ended {}", tcp.class);
    steps.push(tcp);

    // 2. The instance document, without and with the Metadata header.
    let instance_path = format!(
        "/metadata/instance?api-version={}",
        encode(&config.api_version)
    );
    let mut identities = Vec::new();
    if reachable {
        let exchange = get(config, endpoint, &instance_path, &[]).await;
        let outcome = classify::instance_without_header(&exchange.result);
        steps.push(step(
            StepName::InstanceWithoutHeader,
            endpoint.url(&instance_path),
            &exchange,
            outcome,
        ));
        let exchange = get(config, endpoint, &instance_path, &[("Metadata", "true")]).await;
        let mut outcome = classify::instance(&exchange.result);
        let exposure = outcome.instance.take();
        let mut step = step(
            StepName::Instance,
            endpoint.url(&instance_path),
            &exchange,
            outcome,
        );
        if let Some((exposure, found)) = exposure {
            step.instance = Some(exposure);
            identities = found;
        }
        steps.push(step);
    } else {
        for name in [StepName::InstanceWithoutHeader, StepName::Instance] {
            steps.push(Step::bare(
                name,
                endpoint.url(&instance_path),
                Class::NotChecked,
                unreachable_why.clone(),
            ));
        }
    }

    // 3. Identities: the instance document's, then --client-id.
    let from_document = identities.len();
    for id in &config.client_ids {
        push_identity(
            &mut identities,
            Identity {
                selector: IdentitySelector::ClientId(id.clone()),
                source: "--client-id".to_owned(),
            },
        );
    }
    let mut detail = format!(
        "{} identity(ies) named by the instance document, {} more from --client-id; \
         the default identity is always tried",
        from_document,
        identities.len() - from_document
    );
    for identity in &identities {
        detail.push_str(&format!("\n{} ({})", identity.selector, identity.source));
    }
    steps.push(Step::bare(
        StepName::Identities,
        endpoint.to_string(),
        Class::Info,
        detail,
    ));

    // 4. Tokens: default identity first, then each identity; each resource.
    let default = Identity {
        selector: IdentitySelector::Default,
        source: "no selector".to_owned(),
    };
    let mut last_token_request: Option<tokio::time::Instant> = None;
    for identity in std::iter::once(&default).chain(identities.iter()) {
        for resource in &config.resources {
            let mut path = format!(
                "/metadata/identity/oauth2/token?api-version={}&resource={}",
                encode(&config.token_api_version),
                encode(resource)
            );
            if let Some((param, value)) = identity.selector.query_param() {
                path.push_str(&format!("&{param}={}", encode(value)));
            }
            let mut step = if reachable {
                if let Some(last) = last_token_request {
                    tokio::time::sleep_until(last + TOKEN_REQUEST_SPACING).await;
                }
                last_token_request = Some(tokio::time::Instant::now());
                let exchange = get(config, endpoint, &path, &[("Metadata", "true")]).await;
                let mut outcome = classify::token(&exchange.result);
                let token = outcome.token.take();
                let mut step = step(StepName::Token, endpoint.url(&path), &exchange, outcome);
                step.token = token;
                step
            } else {
                Step::bare(
                    StepName::Token,
                    endpoint.url(&path),
                    Class::NotChecked,
                    unreachable_why.clone(),
                )
            };
            step.identity = Some(identity.clone());
            step.resource = Some(resource.clone());
            steps.push(step);
        }
    }

    // 5. WireServer and HostGAPlugin.
    let goalstate = "/machine/?comp=goalstate";
    steps.push(match &config.wireserver {
        Some(wireserver) => {
            let exchange = get(
                config,
                wireserver,
                goalstate,
                &[("x-ms-version", "2012-11-30")],
            )
            .await;
            let outcome = classify::goalstate(&exchange.result);
            step(
                StepName::WireserverGoalstate,
                wireserver.url(goalstate),
                &exchange,
                outcome,
            )
        }
        None => Step::bare(
            StepName::WireserverGoalstate,
            format!("{DEFAULT_WIRESERVER}{goalstate}"),
            Class::NotChecked,
            "not checked: --endpoint was given without --wireserver, so the real \
             WireServer is left alone"
                .to_owned(),
        ),
    });
    let vmsettings = "/vmSettings";
    steps.push(match &config.hostgaplugin {
        Some(plugin) => {
            let exchange = get(config, plugin, vmsettings, &[]).await;
            let outcome = classify::vmsettings(&exchange.result);
            step(
                StepName::HostgapluginVmsettings,
                plugin.url(vmsettings),
                &exchange,
                outcome,
            )
        }
        None => Step::bare(
            StepName::HostgapluginVmsettings,
            format!("{DEFAULT_HOSTGAPLUGIN}{vmsettings}"),
            Class::NotChecked,
            "not checked: --endpoint was given without --hostgaplugin, so the real \
             HostGAPlugin is left alone"
                .to_owned(),
        ),
    });

    let mut report = Report {
        cloud: Cloud::Azure,
        endpoint: endpoint.to_string(),
        wireserver: config.wireserver.as_ref().map(BaseUrl::to_string),
        hostgaplugin: config.hostgaplugin.as_ref().map(BaseUrl::to_string),
        api_version: Some(config.api_version.clone()),
        token_api_version: Some(config.token_api_version.clone()),
        identities,
        steps,
        summary: Summary::default(),
    };
    report.summarise();
    report
}

async fn get(
    config: &ProbeConfig,
    endpoint: &BaseUrl,
    path: &str,
    headers: &[(&str, &str)],
) -> Exchange {
    http::get(
        endpoint,
        path,
        headers,
        config.connect_timeout,
        config.timeout,
    )
    .await
}

pub(crate) fn step(name: StepName, target: String, exchange: &Exchange, outcome: Outcome) -> Step {
    let mut step = Step::bare(
        name,
        target,
        outcome.class.unwrap_or(Class::Error),
        outcome.detail,
    );
    step.http_status = exchange
        .result
        .as_ref()
        .ok()
        .map(|r| r.status)
        .filter(|s| *s != 0);
    step.latency_ms = Some(millis(exchange.latency));
    step.denial = outcome.denial;
    step.token = outcome.token;
    step.facts = outcome.facts;
    step.credentials = outcome.credentials;
    step
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("https://management.azure.com/"),
            "https%3A%2F%2Fmanagement.azure.com%2F"
        );
        assert_eq!(encode("2018-02-01"), "2018-02-01");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn exit_status_codes() {
        assert_eq!(ExitStatusCode::Clean.code(), 0);
        assert_eq!(ExitStatusCode::Sensitive.code(), 1);
        assert_eq!(ExitStatusCode::UsageError.code(), 2);
        assert_eq!(
            ProbeError::Usage("x".into()).exit_status(),
            ExitStatusCode::UsageError
        );
    }

    fn report_with(classes: &[(StepName, Class)]) -> Report {
        let mut report = Report {
            cloud: Cloud::Azure,
            endpoint: "http://127.0.0.1:1".into(),
            wireserver: None,
            hostgaplugin: None,
            api_version: Some(DEFAULT_API_VERSION.into()),
            token_api_version: Some(DEFAULT_TOKEN_API_VERSION.into()),
            identities: Vec::new(),
            steps: classes
                .iter()
                .map(|(name, class)| {
                    let mut step = Step::bare(*name, "t".into(), *class, "d".into());
                    if *name == StepName::Token {
                        step.identity = Some(Identity {
                            selector: IdentitySelector::Default,
                            source: "no selector".into(),
                        });
                        step.resource = Some(ARM_RESOURCE.into());
                    }
                    step
                })
                .collect(),
            summary: Summary::default(),
        };
        report.summarise();
        report
    }

    #[test]
    fn only_exposed_data_and_tokens_are_sensitive() {
        let clean = report_with(&[
            (StepName::TcpConnect, Class::Reachable),
            (StepName::InstanceWithoutHeader, Class::NeedsHeader),
            (StepName::Instance, Class::BlockedByImdsguard),
            (StepName::Token, Class::Throttled),
            (StepName::Token, Class::IdentityNotFound),
            (StepName::Token, Class::IdentityRequired),
            (StepName::Token, Class::Error),
            (StepName::WireserverGoalstate, Class::NotChecked),
        ]);
        assert_eq!(clean.exit_status(), ExitStatusCode::Clean);
        assert!(clean.to_text().contains("nothing sensitive reachable"));
        assert!(
            clean
                .to_text()
                .contains("Not conclusive: 1 error, 1 throttled, 1 not-checked")
        );
        assert_eq!(clean.summary.counts["throttled"], 1);
        // An answer asking for an identity selector is an answer, not an error.
        assert_eq!(clean.summary.counts["identity-required"], 1);

        for (name, class) in [
            (StepName::Instance, Class::Exposed),
            (StepName::InstanceWithoutHeader, Class::Exposed),
            (StepName::Token, Class::TokenObtained),
            (StepName::WireserverGoalstate, Class::Exposed),
            (StepName::HostgapluginVmsettings, Class::Exposed),
        ] {
            let report = report_with(&[(name, class)]);
            assert_eq!(report.exit_status(), ExitStatusCode::Sensitive, "{name:?}");
            assert_eq!(report.summary.exit_code, 1);
            assert!(report.to_text().contains("SENSITIVE DATA REACHABLE"));
        }
        let tokens = report_with(&[(StepName::Token, Class::TokenObtained)]);
        assert_eq!(
            tokens.summary.reachable,
            ["1 access token(s): default identity for https://management.azure.com/"]
        );
    }

    #[test]
    fn names_in_json_are_the_names_in_text() {
        for name in StepName::ALL {
            assert_eq!(
                serde_json::to_value(name).unwrap(),
                name.as_str(),
                "{name:?}"
            );
            assert_eq!(StepName::named(name.as_str()), Some(name));
        }
        for class in Class::ALL {
            assert_eq!(serde_json::to_value(class).unwrap(), class.as_str());
            assert_eq!(Class::named(class.as_str()), Some(class));
        }
    }

    #[test]
    fn json_shape() {
        let report = report_with(&[(StepName::TcpConnect, Class::BlockedTimeout)]);
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let step = &value["steps"][0];
        assert_eq!(step["name"], "tcp-connect");
        assert_eq!(step["class"], "blocked-timeout");
        assert!(step["http_status"].is_null());
        assert!(step["latency_ms"].is_null());
        assert_eq!(value["summary"]["exit_code"], 0);
    }
}
