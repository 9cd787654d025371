//! The probe's report: its steps, the identities it tried, a summary, and the two
//! renderings (readable text and JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use imdsguard_core::target::Cloud;
use imdsguard_core::token::TokenSummary;
use serde::Serialize;

use crate::ExitStatusCode;
use crate::aws::AwsCredentials;
use crate::classify::{Class, Denial};
use crate::instance::{Identity, InstanceExposure};

/// Which step of the attacker's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    /// 1. TCP connection to the IMDS endpoint.
    TcpConnect,
    /// 2a. The instance document without `Metadata: true`.
    InstanceWithoutHeader,
    /// 2b. The instance document with `Metadata: true`.
    Instance,
    /// 3. The identities to try.
    Identities,
    /// 4. A token for one identity and resource.
    Token,
    /// 5a. WireServer's goal state (port 80).
    WireserverGoalstate,
    /// 5b. HostGAPlugin's vmSettings (port 32526).
    HostgapluginVmsettings,
    /// AWS, GCP: TCP connection to the cloud's IPv6 metadata address.
    TcpConnectIpv6,
    /// AWS: TCP connection to the EKS Pod Identity agent.
    PodIdentityTcp,
    /// AWS: `GET /latest/meta-data/` without a session token (IMDSv1 open?).
    Imdsv1,
    /// AWS: `PUT /latest/api/token` (an IMDSv2 session token from here?).
    Imdsv2Token,
    /// AWS: `/latest/dynamic/instance-identity/document`.
    IdentityDocument,
    /// AWS: `/latest/meta-data/iam/info` (the instance profile).
    IamInfo,
    /// AWS: `/latest/meta-data/iam/security-credentials/` (the role name).
    IamRole,
    /// AWS: `/latest/meta-data/iam/security-credentials/ROLE`.
    Credentials,
    /// AWS: `/latest/user-data`.
    UserData,
    /// GCP: a metadata value without `Metadata-Flavor: Google`.
    MetadataWithoutHeader,
    /// GCP: `project/project-id`.
    ProjectId,
    /// GCP: `project/numeric-project-id`.
    NumericProjectId,
    /// GCP: `instance/zone`.
    Zone,
    /// GCP: `instance/name`.
    InstanceName,
    /// GCP: `instance/attributes/cluster-name`.
    ClusterName,
    /// GCP: `instance/attributes/` (the attribute names).
    Attributes,
    /// GCP: `instance/attributes/kube-env`.
    KubeEnv,
    /// GCP: `instance/service-accounts/?recursive=true` (emails and scopes).
    ServiceAccounts,
    /// GCP: `instance/service-accounts/default/identity?audience=…` (an ID token).
    IdentityToken,
    /// GCP: the legacy `/0.1/meta-data/` endpoint.
    #[serde(rename = "legacy-v0.1")]
    LegacyV01,
    /// GCP: the legacy `/computeMetadata/v1beta1/` endpoint.
    LegacyV1beta1,
}

impl StepName {
    /// Every step name, Azure's first, then AWS's, then GCP's.
    pub const ALL: [StepName; 28] = [
        StepName::TcpConnect,
        StepName::InstanceWithoutHeader,
        StepName::Instance,
        StepName::Identities,
        StepName::Token,
        StepName::WireserverGoalstate,
        StepName::HostgapluginVmsettings,
        StepName::TcpConnectIpv6,
        StepName::PodIdentityTcp,
        StepName::Imdsv1,
        StepName::Imdsv2Token,
        StepName::IdentityDocument,
        StepName::IamInfo,
        StepName::IamRole,
        StepName::Credentials,
        StepName::UserData,
        StepName::MetadataWithoutHeader,
        StepName::ProjectId,
        StepName::NumericProjectId,
        StepName::Zone,
        StepName::InstanceName,
        StepName::ClusterName,
        StepName::Attributes,
        StepName::KubeEnv,
        StepName::ServiceAccounts,
        StepName::IdentityToken,
        StepName::LegacyV01,
        StepName::LegacyV1beta1,
    ];

    /// The step named `name` (as [`StepName::as_str`] writes it).
    pub fn named(name: &str) -> Option<StepName> {
        StepName::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::TcpConnect => "tcp-connect",
            StepName::InstanceWithoutHeader => "instance-without-header",
            StepName::Instance => "instance",
            StepName::Identities => "identities",
            StepName::Token => "token",
            StepName::WireserverGoalstate => "wireserver-goalstate",
            StepName::HostgapluginVmsettings => "hostgaplugin-vmsettings",
            StepName::TcpConnectIpv6 => "tcp-connect-ipv6",
            StepName::PodIdentityTcp => "pod-identity-tcp",
            StepName::Imdsv1 => "imdsv1",
            StepName::Imdsv2Token => "imdsv2-token",
            StepName::IdentityDocument => "identity-document",
            StepName::IamInfo => "iam-info",
            StepName::IamRole => "iam-role",
            StepName::Credentials => "credentials",
            StepName::UserData => "user-data",
            StepName::MetadataWithoutHeader => "metadata-without-header",
            StepName::ProjectId => "project-id",
            StepName::NumericProjectId => "numeric-project-id",
            StepName::Zone => "zone",
            StepName::InstanceName => "instance-name",
            StepName::ClusterName => "cluster-name",
            StepName::Attributes => "attributes",
            StepName::KubeEnv => "kube-env",
            StepName::ServiceAccounts => "service-accounts",
            StepName::IdentityToken => "identity-token",
            StepName::LegacyV01 => "legacy-v0.1",
            StepName::LegacyV1beta1 => "legacy-v1beta1",
        }
    }

    /// What a sensitive step reached, in the summary's words (`None`: the step is never
    /// sensitive, or it is a token step, summed up apart).
    fn reached(self) -> Option<&'static str> {
        Some(match self {
            StepName::InstanceWithoutHeader => "the instance document without the Metadata header",
            StepName::Instance => "the instance document",
            StepName::WireserverGoalstate => "the WireServer goal state",
            StepName::HostgapluginVmsettings => "HostGAPlugin vmSettings",
            StepName::Credentials => "the instance role's credentials",
            StepName::UserData => "the user data",
            StepName::MetadataWithoutHeader => "metadata without the Metadata-Flavor header",
            StepName::KubeEnv => "kube-env (the kubelet's bootstrap settings)",
            StepName::LegacyV01 => "the legacy v0.1 metadata endpoint (no header needed)",
            StepName::LegacyV1beta1 => "the legacy v1beta1 metadata endpoint (no header needed)",
            _ => return None,
        })
    }
}

impl std::fmt::Display for StepName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing a step read that may be shown (a region, a project id, a role name, a
/// size, the names of kube-env's keys), never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fact {
    /// What it is (`region`, `account_id`, `project_id`, `kube_env_keys`, …).
    pub name: String,
    /// Its value.
    pub value: String,
}

impl Fact {
    pub(crate) fn new(name: &str, value: impl Into<String>) -> Fact {
        Fact {
            name: name.to_owned(),
            value: value.into(),
        }
    }
}

/// One step of the probe and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Which step.
    pub name: StepName,
    /// What it went to: a URL, or `host:port` for the TCP step.
    pub target: String,
    /// What it found.
    pub class: Class,
    /// Why, in words (may hold several lines). Never a token.
    pub detail: String,
    /// The HTTP status, when there was an answer.
    pub http_status: Option<u16>,
    /// How long the exchange took, in milliseconds, when one was attempted.
    pub latency_ms: Option<u64>,
    /// For token steps: the identity asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// For token steps: the resource asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// For an obtained token: what may be shown of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSummary>,
    /// For an exposed instance document: what it exposes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceExposure>,
    /// For a request imdsguard denied: its decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denial: Option<Denial>,
    /// AWS, GCP: what the answer held that may be shown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub facts: Vec<Fact>,
    /// AWS: the credentials obtained, as far as they may be shown (AccessKeyId's first
    /// four characters and fingerprint, Expiration; never the secret or the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<AwsCredentials>,
}

impl Step {
    /// A step with no exchange behind it.
    pub(crate) fn bare(name: StepName, target: String, class: Class, detail: String) -> Step {
        Step {
            name,
            target,
            class,
            detail,
            http_status: None,
            latency_ms: None,
            identity: None,
            resource: None,
            token: None,
            instance: None,
            denial: None,
            facts: Vec::new(),
            credentials: None,
        }
    }
}

/// The probe's verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Whether anything sensitive was reachable (exit status 1).
    pub sensitive: bool,
    /// What was reachable, in words (empty when nothing was).
    pub reachable: Vec<String>,
    /// How many steps ended in each class.
    pub counts: BTreeMap<&'static str, usize>,
    /// The exit status: 0 nothing sensitive reachable, 1 something is.
    pub exit_code: u8,
}

/// Everything one probe run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whose attacker path was walked: `azure`, `aws` or `gcp`.
    pub cloud: Cloud,
    /// The metadata endpoint (IMDS).
    pub endpoint: String,
    /// The WireServer endpoint, when checked.
    pub wireserver: Option<String>,
    /// The HostGAPlugin endpoint, when checked.
    pub hostgaplugin: Option<String>,
    /// Azure: api-version used for the instance document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Azure: api-version used for the token endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_api_version: Option<String>,
    /// The identities tried besides the default one (from the instance document's tags
    /// and `--client-id`).
    pub identities: Vec<Identity>,
    /// The steps, in the order they ran.
    pub steps: Vec<Step>,
    /// The verdict.
    pub summary: Summary,
}

impl Report {
    /// 0 when nothing sensitive is reachable, 1 when something is.
    pub fn exit_status(&self) -> ExitStatusCode {
        if self.summary.sensitive {
            ExitStatusCode::Sensitive
        } else {
            ExitStatusCode::Clean
        }
    }

    /// Fills in the summary from the steps.
    pub(crate) fn summarise(&mut self) {
        let mut counts = BTreeMap::new();
        let mut reachable = Vec::new();
        let mut tokens = Vec::new();
        for step in &self.steps {
            *counts.entry(step.class.as_str()).or_insert(0) += 1;
            if !step.class.is_sensitive() {
                continue;
            }
            match step.name {
                StepName::Token if self.cloud == Cloud::Azure => tokens.push(format!(
                    "{} for {}",
                    step.identity
                        .as_ref()
                        .map_or_else(|| "?".to_owned(), |i| i.selector.to_string()),
                    step.resource.as_deref().unwrap_or("?")
                )),
                StepName::Token => tokens.push("the default service account's access token".into()),
                StepName::Credentials => reachable.push(format!(
                    "the credentials of role {}",
                    step.resource.as_deref().unwrap_or("?")
                )),
                StepName::IdentityToken => tokens.push(format!(
                    "an identity token for {}",
                    step.resource.as_deref().unwrap_or("?")
                )),
                name => {
                    if let Some(what) = name.reached() {
                        reachable.push(what.to_owned());
                    }
                }
            }
        }
        if !tokens.is_empty() {
            // Tokens right after the instance document, before WireServer.
            let at = reachable
                .iter()
                .position(|r: &String| !r.starts_with("the instance document"))
                .unwrap_or(reachable.len());
            reachable.insert(
                at,
                format!("{} access token(s): {}", tokens.len(), tokens.join("; ")),
            );
        }
        let sensitive = !reachable.is_empty();
        self.summary = Summary {
            sensitive,
            reachable,
            counts,
            exit_code: if sensitive { 1 } else { 0 },
        };
    }

    /// The JSON rendering (pretty-printed, with a final newline).
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a report serializes");
        text.push('\n');
        text
    }

    /// The readable rendering.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.cloud == Cloud::Azure {
            let _ = writeln!(out, "imdsguard probe");
            let _ = writeln!(
                out,
                "  endpoint      {}  (instance api-version {}, token api-version {})",
                self.endpoint,
                self.api_version.as_deref().unwrap_or("-"),
                self.token_api_version.as_deref().unwrap_or("-")
            );
            let or_unchecked = |v: &Option<String>, flag: &str| {
                v.clone()
                    .unwrap_or_else(|| format!("not checked (--endpoint given without --{flag})"))
            };
            let _ = writeln!(
                out,
                "  wireserver    {}",
                or_unchecked(&self.wireserver, "wireserver")
            );
            let _ = writeln!(
                out,
                "  hostgaplugin  {}",
                or_unchecked(&self.hostgaplugin, "hostgaplugin")
            );
        } else {
            let _ = writeln!(out, "imdsguard probe --cloud {}", self.cloud.name());
            let _ = writeln!(out, "  endpoint      {}", self.endpoint);
            let also: Vec<&str> = self
                .steps
                .iter()
                .filter(|s| matches!(s.name, StepName::TcpConnectIpv6 | StepName::PodIdentityTcp))
                .map(|s| s.target.as_str())
                .collect();
            if !also.is_empty() {
                let _ = writeln!(out, "  also (TCP)    {}", also.join(", "));
            }
        }
        let _ = writeln!(out);
        for (i, step) in self.steps.iter().enumerate() {
            let class = if step.class.is_sensitive() {
                step.class.as_str().to_ascii_uppercase()
            } else {
                step.class.as_str().to_owned()
            };
            let status = step
                .http_status
                .map_or_else(|| "-".to_owned(), |s| format!("HTTP {s}"));
            let latency = step
                .latency_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms"));
            let _ = writeln!(
                out,
                "{:>2}  {:<24} {:<21} {:<9} {:>8}  {}",
                i + 1,
                step.name.as_str(),
                class,
                status,
                latency,
                step.target
            );
            if let (Some(identity), Some(resource)) = (&step.identity, &step.resource) {
                // Azure token steps: which identity, which resource.
                let _ = writeln!(
                    out,
                    "      {} ({}) -> {resource}",
                    identity.selector, identity.source
                );
            }
            for line in step.detail.lines() {
                let _ = writeln!(out, "      {line}");
            }
        }
        let _ = writeln!(out);
        if self.summary.sensitive {
            let _ = writeln!(
                out,
                "Result: SENSITIVE DATA REACHABLE from here (exit status 1):"
            );
            for item in &self.summary.reachable {
                let _ = writeln!(out, "  - {item}");
            }
        } else {
            let _ = writeln!(
                out,
                "Result: nothing sensitive reachable from here (exit status 0)."
            );
        }
        let inconclusive: Vec<String> = [Class::Error, Class::Throttled, Class::NotChecked]
            .iter()
            .filter_map(|c| {
                self.summary
                    .counts
                    .get(c.as_str())
                    .map(|n| format!("{n} {c}"))
            })
            .collect();
        if !inconclusive.is_empty() {
            let _ = writeln!(
                out,
                "Not conclusive: {} (see above).",
                inconclusive.join(", ")
            );
        }
        out
    }
}
