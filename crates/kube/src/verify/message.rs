//! The probe's result as a termination message: what `imdsguard probe
//! --termination-log PATH` writes and what `verify` reads back from the pod's
//! `status.containerStatuses[].state.terminated.message`.
//!
//! The kubelet keeps at most 4096 bytes of a termination message, so this is a compact
//! summary of the probe's report, never the report itself: per endpoint what the probe
//! saw at the network level ([`Seen`]), the classes of its steps, and whether anything
//! sensitive came back; plus the report's "reachable" sentences, clipped. A token is never
//! in it (the probe's report holds none either). [`ProbeResult::to_message`] keeps the
//! text under [`MAX_MESSAGE_BYTES`] by clipping, then dropping, those sentences.

use std::fmt;

use imdsguard_core::target::{Cloud, HOST_GA_PLUGIN, IMDS, MetadataService, Target, WIRESERVER};
use serde::{Deserialize, Serialize};

/// The `format` field of every result this version writes.
pub const FORMAT: &str = "imdsguard-probe-result/v1";

/// The kubelet's limit on a termination message (bytes); longer ones are cut.
pub const KUBELET_MESSAGE_LIMIT: usize = 4096;

/// The most [`ProbeResult::to_message`] writes: below the kubelet's limit.
pub const MAX_MESSAGE_BYTES: usize = 4000;

/// Which endpoint of the attacker's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeEndpoint {
    /// The instance metadata service (the probe's `--endpoint`: TCP, instance document,
    /// tokens).
    Imds,
    /// WireServer's goal state (port 80).
    Wireserver,
    /// HostGAPlugin's vmSettings (port 32526).
    Hostgaplugin,
}

impl ProbeEndpoint {
    /// Every endpoint, in the probe's order.
    pub const ALL: [ProbeEndpoint; 3] = [
        ProbeEndpoint::Imds,
        ProbeEndpoint::Wireserver,
        ProbeEndpoint::Hostgaplugin,
    ];

    /// The name used in results and flags (`imds`, `wireserver`, `hostgaplugin`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeEndpoint::Imds => "imds",
            ProbeEndpoint::Wireserver => "wireserver",
            ProbeEndpoint::Hostgaplugin => "hostgaplugin",
        }
    }

    /// The endpoint of the probe that observes `target`, when one does: the Azure IMDS
    /// address (also AWS's and GCP's on IPv4), WireServer port 80 and port 32526.
    pub fn for_target(target: &Target) -> Option<ProbeEndpoint> {
        match target.service()? {
            MetadataService::AzureImds => Some(ProbeEndpoint::Imds),
            MetadataService::AzureWireServer => Some(ProbeEndpoint::Wireserver),
            MetadataService::AzureHostGaPlugin => Some(ProbeEndpoint::Hostgaplugin),
            MetadataService::AwsImds
            | MetadataService::AwsPodIdentity
            | MetadataService::AwsEcsTaskMetadata
            | MetadataService::GcpMetadata => None,
        }
    }

    /// The endpoint of `imdsguard probe --cloud CLOUD` that observes `target`: Azure's
    /// three ([`ProbeEndpoint::for_target`]); under AWS and GCP the metadata service on
    /// 169.254.169.254:80 (the probe's IMDS entry: IMDSv1/v2 and credentials, or the GCE
    /// metadata server's values, tokens and kube-env). The other targets of those clouds
    /// (IPv6 addresses, the EKS Pod Identity agent, ECS task metadata) are not in the
    /// probe's result: `None`.
    pub fn for_cloud_target(cloud: Cloud, target: &Target) -> Option<ProbeEndpoint> {
        match cloud {
            Cloud::Azure => ProbeEndpoint::for_target(target),
            Cloud::Aws | Cloud::Gcp => (*target == IMDS).then_some(ProbeEndpoint::Imds),
        }
    }

    /// The real target this endpoint is when the probe runs with its defaults.
    pub fn target(self) -> Target {
        match self {
            ProbeEndpoint::Imds => IMDS,
            ProbeEndpoint::Wireserver => WIRESERVER,
            ProbeEndpoint::Hostgaplugin => HOST_GA_PLUGIN,
        }
    }

    /// The endpoint a step of the probe's report (its `name`) went to; `None` for a step
    /// that went nowhere (`identities`) or an unknown name.
    pub fn of_step(step_name: &str) -> Option<ProbeEndpoint> {
        match step_name {
            "tcp-connect" | "instance-without-header" | "instance" | "token" => {
                Some(ProbeEndpoint::Imds)
            }
            "wireserver-goalstate" => Some(ProbeEndpoint::Wireserver),
            "hostgaplugin-vmsettings" => Some(ProbeEndpoint::Hostgaplugin),
            _ => None,
        }
    }
}

impl fmt::Display for ProbeEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the probe saw of an endpoint at the network level, the level NetworkPolicy
/// decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Seen {
    /// A connection was established (whatever answered: IMDS, a proxy denying, an error).
    Reachable,
    /// No connection: timed out (dropped), refused, reset or unreachable.
    Blocked,
    /// Not known: not checked, or failed in a way that says nothing about the network.
    Unknown,
}

impl Seen {
    /// What one step says of its endpoint's reachability: `class` is the step's class as
    /// the probe names it (`reachable`, `blocked-timeout`, ...), `http_status` the status
    /// of its answer, when one came.
    ///
    /// `blocked-timeout` and `blocked-refused` are [`Seen::Blocked`]; the TCP step's
    /// `reachable` and any answer (`http_status`, an imdsguard denial included) are
    /// [`Seen::Reachable`]; the rest (`not-checked`, an `error` without an answer) is
    /// [`Seen::Unknown`].
    pub fn of_step(class: &str, http_status: Option<u16>) -> Seen {
        match class {
            "blocked-timeout" | "blocked-refused" => Seen::Blocked,
            "reachable" => Seen::Reachable,
            _ if http_status.is_some() => Seen::Reachable,
            "exposed"
            | "token-obtained"
            | "needs-header"
            | "blocked-by-imdsguard"
            | "identity-not-found"
            | "identity-required"
            | "throttled" => Seen::Reachable,
            _ => Seen::Unknown,
        }
    }

    /// The name used in results (`reachable`, `blocked`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Seen::Reachable => "reachable",
            Seen::Blocked => "blocked",
            Seen::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint in a probe result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointResult {
    /// Which endpoint.
    pub endpoint: ProbeEndpoint,
    /// Where the probe went, `host:port`.
    pub address: String,
    /// What it saw at the network level.
    pub seen: Seen,
    /// The classes of its steps on this endpoint, each once, in step order.
    pub classes: Vec<String>,
    /// Whether something sensitive came back (instance data, a token, WireServer data).
    pub sensitive: bool,
}

impl EndpointResult {
    /// The result of one endpoint from its steps, in order: `(class, http_status,
    /// sensitive)`. The first step decides [`Seen`] (for IMDS the TCP step), unless it
    /// says nothing ([`Seen::Unknown`]) and a later one does.
    pub fn from_steps<'a>(
        endpoint: ProbeEndpoint,
        address: impl Into<String>,
        steps: impl IntoIterator<Item = (&'a str, Option<u16>, bool)>,
    ) -> EndpointResult {
        let mut seen = Seen::Unknown;
        let mut classes: Vec<String> = Vec::new();
        let mut sensitive = false;
        for (class, status, is_sensitive) in steps {
            if seen == Seen::Unknown {
                seen = Seen::of_step(class, status);
            }
            if !classes.iter().any(|c| c == class) {
                classes.push(class.to_owned());
            }
            sensitive |= is_sensitive;
        }
        if sensitive {
            // Data came back: whatever the first step said, the endpoint answered.
            seen = Seen::Reachable;
        }
        EndpointResult {
            endpoint,
            address: address.into(),
            seen,
            classes,
            sensitive,
        }
    }
}

/// The probe's result, as written to its termination log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// [`FORMAT`].
    pub format: String,
    /// The probe's exit status: 0 nothing sensitive reachable, 1 something is.
    pub exit_code: u8,
    /// Whether anything sensitive was reachable.
    pub sensitive: bool,
    /// Per endpoint, in the probe's order (IMDS, WireServer, HostGAPlugin).
    pub endpoints: Vec<EndpointResult>,
    /// What was reachable, in the probe's words (clipped to fit the message).
    #[serde(default)]
    pub reachable: Vec<String>,
}

/// Why a termination message is not a probe result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The message is empty (the probe wrote nothing: it did not run, or an older image
    /// without `--termination-log`).
    #[error(
        "the pod's termination message is empty: the probe wrote no result (is the image an imdsguard with `probe --termination-log`?)"
    )]
    Empty,
    /// Not the JSON of a probe result.
    #[error("the pod's termination message is not a probe result ({reason}): {excerpt}")]
    Invalid {
        /// What is wrong.
        reason: String,
        /// The message's first characters.
        excerpt: String,
    },
}

impl ProbeResult {
    /// A result of these endpoints; `exit_code` and `sensitive` follow from them.
    pub fn new(endpoints: Vec<EndpointResult>, reachable: Vec<String>) -> ProbeResult {
        let sensitive = endpoints.iter().any(|e| e.sensitive);
        ProbeResult {
            format: FORMAT.to_owned(),
            exit_code: u8::from(sensitive),
            sensitive,
            endpoints,
            reachable,
        }
    }

    /// The endpoint's result, when the probe reported it.
    pub fn endpoint(&self, endpoint: ProbeEndpoint) -> Option<&EndpointResult> {
        self.endpoints.iter().find(|e| e.endpoint == endpoint)
    }

    /// The termination message: compact JSON of at most [`MAX_MESSAGE_BYTES`] bytes
    /// (the `reachable` sentences are clipped to 160 characters, then dropped from the
    /// last, until it fits; the endpoints always stay).
    pub fn to_message(&self) -> String {
        let mut result = self.clone();
        for r in &mut result.reachable {
            if r.chars().count() > 160 {
                *r = r.chars().take(159).collect::<String>() + "…";
            }
        }
        loop {
            let text = serde_json::to_string(&result).expect("a probe result serializes");
            if text.len() <= MAX_MESSAGE_BYTES || result.reachable.is_empty() {
                return text;
            }
            result.reachable.pop();
        }
    }

    /// Reads a termination message back.
    pub fn from_message(text: &str) -> Result<ProbeResult, MessageError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(MessageError::Empty);
        }
        let invalid = |reason: String| MessageError::Invalid {
            reason,
            excerpt: imdsguard_core::quote::clip(text).to_string(),
        };
        let result: ProbeResult = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if result.format != FORMAT {
            return Err(invalid(format!(
                "format `{}`, this imdsguard reads `{FORMAT}`",
                result.format
            )));
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_classes_to_network_level() {
        assert_eq!(Seen::of_step("reachable", None), Seen::Reachable);
        assert_eq!(Seen::of_step("blocked-timeout", None), Seen::Blocked);
        assert_eq!(Seen::of_step("blocked-refused", None), Seen::Blocked);
        assert_eq!(
            Seen::of_step("blocked-by-imdsguard", Some(403)),
            Seen::Reachable
        );
        assert_eq!(Seen::of_step("error", Some(500)), Seen::Reachable);
        assert_eq!(Seen::of_step("error", None), Seen::Unknown);
        assert_eq!(Seen::of_step("not-checked", None), Seen::Unknown);
    }

    #[test]
    fn endpoint_from_steps() {
        let imds = EndpointResult::from_steps(
            ProbeEndpoint::Imds,
            "169.254.169.254:80",
            [
                ("reachable", None, false),
                ("needs-header", Some(400), false),
                ("exposed", Some(200), true),
                ("token-obtained", Some(200), true),
                ("token-obtained", Some(200), true),
            ],
        );
        assert_eq!(imds.seen, Seen::Reachable);
        assert!(imds.sensitive);
        assert_eq!(
            imds.classes,
            ["reachable", "needs-header", "exposed", "token-obtained"]
        );
        let blocked = EndpointResult::from_steps(
            ProbeEndpoint::Imds,
            "169.254.169.254:80",
            [
                ("blocked-timeout", None, false),
                ("not-checked", None, false),
            ],
        );
        assert_eq!((blocked.seen, blocked.sensitive), (Seen::Blocked, false));
        let unchecked = EndpointResult::from_steps(
            ProbeEndpoint::Wireserver,
            "x:80",
            [("not-checked", None, false)],
        );
        assert_eq!(unchecked.seen, Seen::Unknown);
    }

    #[test]
    fn message_round_trip_and_limit() {
        let endpoints = ProbeEndpoint::ALL
            .iter()
            .map(|e| {
                EndpointResult::from_steps(*e, e.target().to_string(), [("reachable", None, false)])
            })
            .collect();
        let result = ProbeResult::new(endpoints, vec!["x".repeat(500); 100]);
        let text = result.to_message();
        assert!(text.len() <= MAX_MESSAGE_BYTES, "{}", text.len());
        let back = ProbeResult::from_message(&text).unwrap();
        assert_eq!(back.endpoints, result.endpoints);
        assert!(!back.reachable.is_empty() && back.reachable.len() < 100);
        assert!(back.reachable[0].chars().count() <= 160);
        assert_eq!(back.exit_code, 0);
    }

    #[test]
    fn bad_messages() {
        assert_eq!(ProbeResult::from_message("  \n"), Err(MessageError::Empty));
        assert!(matches!(
            ProbeResult::from_message("Error: unexpected argument '--termination-log'"),
            Err(MessageError::Invalid { .. })
        ));
        let mut r = ProbeResult::new(Vec::new(), Vec::new());
        r.format = "other/v9".into();
        let e = ProbeResult::from_message(&serde_json::to_string(&r).unwrap()).unwrap_err();
        assert!(e.to_string().contains("other/v9"), "{e}");
    }

    #[test]
    fn targets_map_to_endpoints() {
        for e in ProbeEndpoint::ALL {
            assert_eq!(ProbeEndpoint::for_target(&e.target()), Some(e));
        }
        assert_eq!(
            ProbeEndpoint::for_target(&imdsguard_core::target::AWS_IMDS_IPV6),
            None
        );
        assert_eq!(ProbeEndpoint::of_step("token"), Some(ProbeEndpoint::Imds));
        assert_eq!(ProbeEndpoint::of_step("identities"), None);
    }
}
