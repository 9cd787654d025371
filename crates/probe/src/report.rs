//! The probe's report: its steps, the identities it tried, a summary, and the two
//! renderings (readable text and JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use imdsguard_core::token::TokenSummary;
use serde::Serialize;

use crate::ExitStatusCode;
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
}

impl StepName {
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
        }
    }
}

/// The probe's verdict.
#[derive(Debug, Clone, Serialize)]
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
    /// The IMDS endpoint.
    pub endpoint: String,
    /// The WireServer endpoint, when checked.
    pub wireserver: Option<String>,
    /// The HostGAPlugin endpoint, when checked.
    pub hostgaplugin: Option<String>,
    /// api-version used for the instance document.
    pub api_version: String,
    /// api-version used for the token endpoint.
    pub token_api_version: String,
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
                StepName::InstanceWithoutHeader => {
                    reachable.push("the instance document without the Metadata header".into())
                }
                StepName::Instance => reachable.push("the instance document".into()),
                StepName::Token => tokens.push(format!(
                    "{} for {}",
                    step.identity
                        .as_ref()
                        .map_or_else(|| "?".to_owned(), |i| i.selector.to_string()),
                    step.resource.as_deref().unwrap_or("?")
                )),
                StepName::WireserverGoalstate => reachable.push("the WireServer goal state".into()),
                StepName::HostgapluginVmsettings => {
                    reachable.push("HostGAPlugin vmSettings".into())
                }
                StepName::TcpConnect | StepName::Identities => {}
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
        let _ = writeln!(out, "imdsguard probe");
        let _ = writeln!(
            out,
            "  endpoint      {}  (instance api-version {}, token api-version {})",
            self.endpoint, self.api_version, self.token_api_version
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
