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

use imdsguard_core::target::{
    AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6, Cloud, GCP_METADATA_IPV6,
    HOST_GA_PLUGIN, IMDS, MetadataService, Target, WIRESERVER,
};
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
    /// AWS, GCP: the cloud's IPv6 metadata address (`[fd00:ec2::254]:80`,
    /// `[fd20:ce::254]:80`), the probe's `tcp-connect-ipv6` step (`--ipv6`).
    ImdsIpv6,
    /// AWS: the EKS Pod Identity agent on IPv4 (`169.254.170.23:80`), the probe's
    /// `pod-identity-tcp` step to that address (`--pod-identity`).
    PodIdentity,
    /// AWS: the EKS Pod Identity agent on IPv6 (`[fd00:ec2::23]:80`), the probe's
    /// `pod-identity-tcp` step to that address (`--pod-identity --ipv6`). An endpoint of
    /// its own, not folded into [`ProbeEndpoint::PodIdentity`]: the audit decides the
    /// two addresses apart, and an IPv4-only deny leaving the IPv6 address open is the
    /// very case to observe.
    PodIdentityIpv6,
}

impl ProbeEndpoint {
    /// Every endpoint: Azure's in the probe's order, then those of AWS and GCP in the
    /// probe's order (the IPv6 address, the Pod Identity agent on IPv4 then IPv6).
    pub const ALL: [ProbeEndpoint; 6] = [
        ProbeEndpoint::Imds,
        ProbeEndpoint::Wireserver,
        ProbeEndpoint::Hostgaplugin,
        ProbeEndpoint::ImdsIpv6,
        ProbeEndpoint::PodIdentity,
        ProbeEndpoint::PodIdentityIpv6,
    ];

    /// The endpoints `imdsguard probe --cloud CLOUD` can observe, in the probe's order:
    /// Azure IMDS, WireServer, HostGAPlugin; AWS the metadata service on IPv4 and IPv6
    /// and the Pod Identity agent on both; GCP the metadata server on both.
    pub fn of_cloud(cloud: Cloud) -> &'static [ProbeEndpoint] {
        match cloud {
            Cloud::Azure => &[
                ProbeEndpoint::Imds,
                ProbeEndpoint::Wireserver,
                ProbeEndpoint::Hostgaplugin,
            ],
            Cloud::Aws => &[
                ProbeEndpoint::Imds,
                ProbeEndpoint::ImdsIpv6,
                ProbeEndpoint::PodIdentity,
                ProbeEndpoint::PodIdentityIpv6,
            ],
            Cloud::Gcp => &[ProbeEndpoint::Imds, ProbeEndpoint::ImdsIpv6],
        }
    }

    /// The name used in results and flags (`imds`, `wireserver`, `hostgaplugin`,
    /// `imds-ipv6`, `pod-identity`, `pod-identity-ipv6`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeEndpoint::Imds => "imds",
            ProbeEndpoint::Wireserver => "wireserver",
            ProbeEndpoint::Hostgaplugin => "hostgaplugin",
            ProbeEndpoint::ImdsIpv6 => "imds-ipv6",
            ProbeEndpoint::PodIdentity => "pod-identity",
            ProbeEndpoint::PodIdentityIpv6 => "pod-identity-ipv6",
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
    /// metadata server's values, tokens and kube-env) and on the cloud's IPv6 address
    /// (`imds-ipv6`, TCP only); under AWS also the EKS Pod Identity agent on each family
    /// (`pod-identity`, `pod-identity-ipv6`, TCP only). ECS task metadata is not in the
    /// probe's result: `None`. The address is folded by
    /// [`imdsguard_core::target::canonical_ip`] first.
    pub fn for_cloud_target(cloud: Cloud, target: &Target) -> Option<ProbeEndpoint> {
        match cloud {
            Cloud::Azure => ProbeEndpoint::for_target(target),
            Cloud::Aws | Cloud::Gcp => {
                let t = target.canonical();
                ProbeEndpoint::of_cloud(cloud)
                    .iter()
                    .copied()
                    .find(|e| e.target_in(cloud) == Some(t))
            }
        }
    }

    /// The real target this endpoint is when the probe runs with its defaults (for
    /// `imds-ipv6` AWS's address; [`ProbeEndpoint::target_in`] gives each cloud's).
    pub fn target(self) -> Target {
        match self {
            ProbeEndpoint::Imds => IMDS,
            ProbeEndpoint::Wireserver => WIRESERVER,
            ProbeEndpoint::Hostgaplugin => HOST_GA_PLUGIN,
            ProbeEndpoint::ImdsIpv6 => AWS_IMDS_IPV6,
            ProbeEndpoint::PodIdentity => AWS_POD_IDENTITY,
            ProbeEndpoint::PodIdentityIpv6 => AWS_POD_IDENTITY_IPV6,
        }
    }

    /// The real target this endpoint is under `imdsguard probe --cloud CLOUD`, when it
    /// is one of that cloud's ([`ProbeEndpoint::of_cloud`]): `imds-ipv6` is
    /// `[fd00:ec2::254]:80` under aws and `[fd20:ce::254]:80` under gcp.
    pub fn target_in(self, cloud: Cloud) -> Option<Target> {
        if !ProbeEndpoint::of_cloud(cloud).contains(&self) {
            return None;
        }
        Some(match (self, cloud) {
            (ProbeEndpoint::ImdsIpv6, Cloud::Gcp) => GCP_METADATA_IPV6,
            _ => self.target(),
        })
    }

    /// The endpoint a step of the probe's report (its `name`) went to; `None` for a step
    /// that went nowhere (`identities`) or an unknown name. `pod-identity-tcp` names the
    /// agent on both families: this gives [`ProbeEndpoint::PodIdentity`], and
    /// [`ProbeEndpoint::of_step_to`] tells the IPv6 one apart by the step's address.
    pub fn of_step(step_name: &str) -> Option<ProbeEndpoint> {
        match step_name {
            "tcp-connect" | "instance-without-header" | "instance" | "token" => {
                Some(ProbeEndpoint::Imds)
            }
            "wireserver-goalstate" => Some(ProbeEndpoint::Wireserver),
            "hostgaplugin-vmsettings" => Some(ProbeEndpoint::Hostgaplugin),
            "tcp-connect-ipv6" => Some(ProbeEndpoint::ImdsIpv6),
            "pod-identity-tcp" => Some(ProbeEndpoint::PodIdentity),
            _ => None,
        }
    }

    /// [`ProbeEndpoint::of_step`] for a step that went to `address` (the step's
    /// `target`, `host:port` for the TCP steps): `pod-identity-tcp` to an IPv6 address
    /// (`[fd00:ec2::23]:80`) is [`ProbeEndpoint::PodIdentityIpv6`].
    pub fn of_step_to(step_name: &str, address: &str) -> Option<ProbeEndpoint> {
        match ProbeEndpoint::of_step(step_name)? {
            ProbeEndpoint::PodIdentity if address.starts_with('[') => {
                Some(ProbeEndpoint::PodIdentityIpv6)
            }
            e => Some(e),
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
    /// Per endpoint, in the probe's order (IMDS, WireServer, HostGAPlugin; under AWS and
    /// GCP then the IPv6 address and the Pod Identity agent, when the probe checked them).
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
        for &e in ProbeEndpoint::of_cloud(Cloud::Azure) {
            assert_eq!(ProbeEndpoint::for_target(&e.target()), Some(e));
        }
        assert_eq!(
            ProbeEndpoint::for_target(&imdsguard_core::target::AWS_IMDS_IPV6),
            None
        );
        assert_eq!(ProbeEndpoint::of_step("token"), Some(ProbeEndpoint::Imds));
        assert_eq!(ProbeEndpoint::of_step("identities"), None);
    }

    #[test]
    fn cloud_targets_map_to_endpoints() {
        use imdsguard_core::target::AWS_ECS_TASK_METADATA;
        for cloud in Cloud::ALL {
            let endpoints = ProbeEndpoint::of_cloud(cloud);
            for &e in endpoints {
                let t = e.target_in(cloud).unwrap();
                assert_eq!(
                    ProbeEndpoint::for_cloud_target(cloud, &t),
                    Some(e),
                    "{cloud} {e}"
                );
                assert!(cloud.service(&t).is_some(), "{cloud} {t}");
            }
            // Every target of the cloud but ECS task metadata is observed, in the
            // cloud's target order.
            let observed: Vec<ProbeEndpoint> = cloud
                .targets()
                .iter()
                .filter_map(|t| ProbeEndpoint::for_cloud_target(cloud, t))
                .collect();
            assert_eq!(observed, endpoints, "{cloud}");
        }
        for (cloud, text, endpoint) in [
            (Cloud::Aws, "169.254.169.254:80", Some(ProbeEndpoint::Imds)),
            (
                Cloud::Aws,
                "[fd00:ec2::254]:80",
                Some(ProbeEndpoint::ImdsIpv6),
            ),
            (
                Cloud::Aws,
                "169.254.170.23:80",
                Some(ProbeEndpoint::PodIdentity),
            ),
            (
                Cloud::Aws,
                "[::ffff:169.254.170.23]:80",
                Some(ProbeEndpoint::PodIdentity),
            ),
            (
                Cloud::Aws,
                "[fd00:ec2::23]:80",
                Some(ProbeEndpoint::PodIdentityIpv6),
            ),
            (Cloud::Aws, "[fd20:ce::254]:80", None),
            (Cloud::Aws, "169.254.170.2:80", None),
            (Cloud::Aws, "168.63.129.16:80", None),
            (
                Cloud::Gcp,
                "[fd20:ce::254]:80",
                Some(ProbeEndpoint::ImdsIpv6),
            ),
            (Cloud::Gcp, "[fd00:ec2::254]:80", None),
            (Cloud::Gcp, "169.254.170.23:80", None),
            (Cloud::Gcp, "169.254.169.254:443", None),
            (Cloud::Azure, "[fd00:ec2::254]:80", None),
            (Cloud::Azure, "169.254.170.23:80", None),
        ] {
            let t: Target = text.parse().unwrap();
            assert_eq!(
                ProbeEndpoint::for_cloud_target(cloud, &t),
                endpoint,
                "{cloud} {text}"
            );
        }
        assert_eq!(ProbeEndpoint::for_target(&AWS_ECS_TASK_METADATA), None);
        // Azure's endpoints are no other cloud's, and the other clouds' no Azure's.
        assert_eq!(ProbeEndpoint::Wireserver.target_in(Cloud::Aws), None);
        assert_eq!(ProbeEndpoint::ImdsIpv6.target_in(Cloud::Azure), None);
        assert_eq!(ProbeEndpoint::PodIdentity.target_in(Cloud::Gcp), None);
        assert_eq!(
            ProbeEndpoint::ImdsIpv6.target_in(Cloud::Gcp),
            Some(GCP_METADATA_IPV6)
        );
    }

    #[test]
    fn cloud_steps_map_to_endpoints() {
        assert_eq!(
            ProbeEndpoint::of_step("tcp-connect-ipv6"),
            Some(ProbeEndpoint::ImdsIpv6)
        );
        assert_eq!(
            ProbeEndpoint::of_step_to("pod-identity-tcp", "169.254.170.23:80"),
            Some(ProbeEndpoint::PodIdentity)
        );
        assert_eq!(
            ProbeEndpoint::of_step_to("pod-identity-tcp", "[fd00:ec2::23]:80"),
            Some(ProbeEndpoint::PodIdentityIpv6)
        );
        assert_eq!(
            ProbeEndpoint::of_step_to("tcp-connect-ipv6", "[fd20:ce::254]:80"),
            Some(ProbeEndpoint::ImdsIpv6)
        );
        assert_eq!(
            ProbeEndpoint::of_step_to("tcp-connect", "[fd00:ec2::254]:80"),
            Some(ProbeEndpoint::Imds)
        );
        assert_eq!(ProbeEndpoint::of_step_to("identities", "x"), None);
    }

    #[test]
    fn endpoint_names_are_kebab_case_and_read_back() {
        for e in ProbeEndpoint::ALL {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
            assert_eq!(serde_json::from_str::<ProbeEndpoint>(&json).unwrap(), e);
            assert_eq!(e.to_string(), e.as_str());
        }
        assert_eq!(
            ProbeEndpoint::ALL.map(ProbeEndpoint::as_str),
            [
                "imds",
                "wireserver",
                "hostgaplugin",
                "imds-ipv6",
                "pod-identity",
                "pod-identity-ipv6"
            ]
        );
    }

    /// An AWS result with every endpoint, each with many distinct classes, and as many
    /// sentences as the probe can write stays under the limit with its endpoints whole.
    #[test]
    fn a_full_aws_message_fits() {
        let classes = [
            "reachable",
            "session-token",
            "readable",
            "needs-header",
            "credentials-obtained",
            "exposed",
            "not-found",
            "blocked-by-imdsguard",
            "throttled",
            "error",
        ];
        let mut endpoints: Vec<EndpointResult> = ProbeEndpoint::ALL
            .iter()
            .map(|&e| {
                EndpointResult::from_steps(
                    e,
                    e.target().to_string(),
                    classes.iter().map(|c| (*c, Some(200), true)),
                )
            })
            .collect();
        endpoints[1].address = "not checked (--cloud aws)".into();
        let result = ProbeResult::new(endpoints, vec!["y".repeat(300); 40]);
        let text = result.to_message();
        assert!(text.len() <= MAX_MESSAGE_BYTES, "{}", text.len());
        let back = ProbeResult::from_message(&text).unwrap();
        assert_eq!(back.endpoints, result.endpoints);
        assert!(!back.reachable.is_empty());
    }
}
