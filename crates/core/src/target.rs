//! Audit targets: an address, a port and a protocol (`169.254.169.254:80/TCP`), and the
//! built-in sets of metadata endpoints per cloud ([`Cloud`]: Azure, AWS, GCP), each
//! endpoint named by the cloud's meaning of it ([`Cloud::service`]).
//!
//! Every address read here is folded by [`canonical_ip`]: an IPv4-mapped IPv6 address
//! (`::ffff:169.254.169.254`) is the IPv4 address it maps, so a target, a CIDR or a pod
//! address written in mapped form is never a different destination from the IPv4 one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::Serialize;

use crate::imds::{
    AWS_IMDS_IPV6_ADDRESS, HOST_GA_PLUGIN_PORT, IMDS_ADDRESS, IMDS_PORT, WIRESERVER_ADDRESS,
    WIRESERVER_PORT,
};

/// A transport protocol as NetworkPolicy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP, the default when a NetworkPolicy port names no protocol.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The upper-case name used by the Kubernetes API (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(TargetError::Protocol(s.to_string())),
        }
    }
}

/// Why a target string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The text is not `IP:PORT[/PROTO]` (IPv6 as `[addr]:port`).
    #[error(
        "`{0}` is not a target: write IP:PORT[/PROTO], e.g. 169.254.169.254:80/TCP or [fd00:ec2::254]:80"
    )]
    Syntax(String),
    /// The port is 0 or not a number.
    #[error("`{0}`: the port must be a number from 1 to 65535")]
    Port(String),
    /// The protocol is not TCP, UDP or SCTP.
    #[error("`{0}` is not a protocol: use TCP, UDP or SCTP")]
    Protocol(String),
}

/// Azure IMDS (and AWS's and GCP's metadata service on IPv4): 169.254.169.254:80/TCP,
/// from [`crate::imds`]'s address and port, like every endpoint below.
pub const IMDS: Target = Target::new(IpAddr::V4(IMDS_ADDRESS), IMDS_PORT, Protocol::Tcp);
/// Azure WireServer: 168.63.129.16:80/TCP.
pub const WIRESERVER: Target = Target::new(
    IpAddr::V4(WIRESERVER_ADDRESS),
    WIRESERVER_PORT,
    Protocol::Tcp,
);
/// Azure WireServer's host GA plugin: 168.63.129.16:32526/TCP.
pub const HOST_GA_PLUGIN: Target = Target::new(
    IpAddr::V4(WIRESERVER_ADDRESS),
    HOST_GA_PLUGIN_PORT,
    Protocol::Tcp,
);
/// AWS instance metadata on IPv6: `[fd00:ec2::254]:80/TCP`.
pub const AWS_IMDS_IPV6: Target =
    Target::new(IpAddr::V6(AWS_IMDS_IPV6_ADDRESS), IMDS_PORT, Protocol::Tcp);
/// The EKS Pod Identity agent's IPv4 address (`169.254.170.23`), a hostNetwork
/// DaemonSet on every node (AWS EKS user guide, "EKS Pod Identity agent").
pub const AWS_POD_IDENTITY_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);
/// The EKS Pod Identity agent's IPv6 address (`fd00:ec2::23`).
pub const AWS_POD_IDENTITY_IPV6_ADDRESS: Ipv6Addr =
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23);
/// The ECS task metadata (and container credentials) address (`169.254.170.2`).
pub const AWS_ECS_TASK_METADATA_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 2);
/// The GCE metadata server's IPv6 address on IPv6-enabled VMs (`fd20:ce::254`). Not in
/// Google's public documentation that we could find: unverified.
pub const GCP_METADATA_IPV6_ADDRESS: Ipv6Addr = Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254);
/// The EKS Pod Identity agent on IPv4: `169.254.170.23:80/TCP`.
pub const AWS_POD_IDENTITY: Target = Target::new(
    IpAddr::V4(AWS_POD_IDENTITY_ADDRESS),
    IMDS_PORT,
    Protocol::Tcp,
);
/// The EKS Pod Identity agent on IPv6: `[fd00:ec2::23]:80/TCP`.
pub const AWS_POD_IDENTITY_IPV6: Target = Target::new(
    IpAddr::V6(AWS_POD_IDENTITY_IPV6_ADDRESS),
    IMDS_PORT,
    Protocol::Tcp,
);
/// ECS task metadata and container credentials: `169.254.170.2:80/TCP`.
pub const AWS_ECS_TASK_METADATA: Target = Target::new(
    IpAddr::V4(AWS_ECS_TASK_METADATA_ADDRESS),
    IMDS_PORT,
    Protocol::Tcp,
);
/// The GCE metadata server on IPv6: `[fd20:ce::254]:80/TCP` (unverified address).
pub const GCP_METADATA_IPV6: Target = Target::new(
    IpAddr::V6(GCP_METADATA_IPV6_ADDRESS),
    IMDS_PORT,
    Protocol::Tcp,
);

/// `ip` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) folded to the IPv4 address
/// it maps (std's [`IpAddr::to_canonical`]); every other address unchanged. A socket
/// for `::ffff:169.254.169.254` sends IPv4 packets to 169.254.169.254, so every reader
/// of an address (targets, CIDRs, pods files, callers) folds with this one function.
/// IPv4-compatible addresses (`::a.b.c.d`, deprecated) are real IPv6 addresses and stay.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The metadata service a target is, when it is a known one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetadataService {
    /// Azure Instance Metadata Service.
    AzureImds,
    /// Azure WireServer (goal state, extensions).
    AzureWireServer,
    /// Azure WireServer's host GA plugin port (32526, vmSettings with protected settings).
    AzureHostGaPlugin,
    /// AWS EC2 instance metadata (IPv4 or IPv6).
    AwsImds,
    /// The EKS Pod Identity agent (169.254.170.23, fd00:ec2::23).
    AwsPodIdentity,
    /// ECS task metadata and container credentials (169.254.170.2).
    AwsEcsTaskMetadata,
    /// GCP metadata server.
    GcpMetadata,
}

impl MetadataService {
    /// A short human name.
    pub fn label(self) -> &'static str {
        match self {
            MetadataService::AzureImds => "Azure IMDS",
            MetadataService::AzureWireServer => "Azure WireServer",
            MetadataService::AzureHostGaPlugin => "Azure WireServer HostGAPlugin",
            MetadataService::AwsImds => "AWS IMDS",
            MetadataService::AwsPodIdentity => "EKS Pod Identity agent",
            MetadataService::AwsEcsTaskMetadata => "ECS task metadata",
            MetadataService::GcpMetadata => "GCP metadata",
        }
    }
}

/// One destination to evaluate: address, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// Destination address.
    pub ip: IpAddr,
    /// Destination port (1..=65535).
    pub port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl Target {
    /// A target from its parts.
    pub const fn new(ip: IpAddr, port: u16, protocol: Protocol) -> Self {
        Target { ip, port, protocol }
    }

    /// The metadata service this target is, if it is one of the known ones, when no
    /// cloud is named: 169.254.169.254:80 is Azure IMDS (the default cloud); the
    /// addresses only one cloud uses name that cloud's service. [`Cloud::service`] gives
    /// a named cloud's meaning.
    pub fn service(&self) -> Option<MetadataService> {
        [
            (IMDS, MetadataService::AzureImds),
            (WIRESERVER, MetadataService::AzureWireServer),
            (HOST_GA_PLUGIN, MetadataService::AzureHostGaPlugin),
            (AWS_IMDS_IPV6, MetadataService::AwsImds),
            (AWS_POD_IDENTITY, MetadataService::AwsPodIdentity),
            (AWS_POD_IDENTITY_IPV6, MetadataService::AwsPodIdentity),
            (AWS_ECS_TASK_METADATA, MetadataService::AwsEcsTaskMetadata),
            (GCP_METADATA_IPV6, MetadataService::GcpMetadata),
        ]
        .into_iter()
        .find_map(|(t, s)| (t == self.canonical()).then_some(s))
    }

    /// Whether this is the instance metadata service proper, the endpoint the access rules
    /// (`--rules`, `--preset`) say who may reach: 169.254.169.254:80/TCP (Azure IMDS, AWS
    /// IMDS and the GCE metadata server alike), AWS's `[fd00:ec2::254]:80` and GCP's
    /// `[fd20:ce::254]:80`. Not WireServer, the Pod Identity agent or ECS task metadata.
    pub fn is_instance_metadata(&self) -> bool {
        matches!(
            self.service(),
            Some(
                MetadataService::AzureImds
                    | MetadataService::AwsImds
                    | MetadataService::GcpMetadata
            )
        )
    }

    /// The same target with its address folded by [`canonical_ip`].
    pub fn canonical(&self) -> Target {
        Target::new(canonical_ip(self.ip), self.port, self.protocol)
    }
}

impl fmt::Display for Target {
    /// `IP:PORT/PROTO`, IPv6 as `[addr]:PORT/PROTO`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Target {
    type Err = TargetError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let s = text.trim();
        let (addr, proto) = match s.rsplit_once('/') {
            Some((a, p)) => (a, p.parse::<Protocol>()?),
            None => (s, Protocol::Tcp),
        };
        let sock: SocketAddr = addr.parse().map_err(|_| {
            // Tell a bad port from a bad shape.
            match addr.rsplit_once(':') {
                Some((host, port))
                    if !port.is_empty()
                        && (host.parse::<std::net::Ipv4Addr>().is_ok()
                            || host
                                .strip_prefix('[')
                                .and_then(|h| h.strip_suffix(']'))
                                .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())) =>
                {
                    TargetError::Port(text.to_string())
                }
                _ => TargetError::Syntax(text.to_string()),
            }
        })?;
        if sock.port() == 0 {
            return Err(TargetError::Port(text.to_string()));
        }
        Ok(Target::new(canonical_ip(sock.ip()), sock.port(), proto))
    }
}

/// A cloud whose metadata endpoints form a built-in target set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Azure: IMDS and WireServer (80, 32526).
    Azure,
    /// AWS: IMDS on IPv4 and IPv6, the EKS Pod Identity agent on both, ECS task metadata.
    Aws,
    /// GCP: the metadata server on IPv4 and IPv6.
    Gcp,
}

/// A cloud name that is not `azure`, `aws` or `gcp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a cloud: use azure, aws or gcp")]
pub struct UnknownCloud(pub String);

impl Cloud {
    /// Every cloud, the default (Azure) first.
    pub const ALL: [Cloud; 3] = [Cloud::Azure, Cloud::Aws, Cloud::Gcp];

    /// The name on the command line and in JSON: `azure`, `aws`, `gcp`.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Azure => "azure",
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
        }
    }

    /// The built-in targets of this cloud, IPv4 before IPv6 of each service.
    ///
    /// - azure: IMDS 169.254.169.254:80, WireServer 168.63.129.16:80 and :32526 (Azure
    ///   DNS on port 53 is never a target).
    /// - aws: IMDS 169.254.169.254:80 and `[fd00:ec2::254]:80`, the EKS Pod Identity
    ///   agent 169.254.170.23:80 and `[fd00:ec2::23]:80`, ECS task metadata
    ///   169.254.170.2:80.
    /// - gcp: the metadata server 169.254.169.254:80 and `[fd20:ce::254]:80`
    ///   (unverified IPv6 address).
    pub fn targets(self) -> Vec<Target> {
        match self {
            Cloud::Azure => vec![IMDS, WIRESERVER, HOST_GA_PLUGIN],
            Cloud::Aws => vec![
                IMDS,
                AWS_IMDS_IPV6,
                AWS_POD_IDENTITY,
                AWS_POD_IDENTITY_IPV6,
                AWS_ECS_TASK_METADATA,
            ],
            Cloud::Gcp => vec![IMDS, GCP_METADATA_IPV6],
        }
    }

    /// What `target` is in this cloud, when it is one of its endpoints (the address
    /// folded by [`canonical_ip`]; port and protocol must match): 169.254.169.254:80 is
    /// [`MetadataService::AzureImds`] under azure, [`MetadataService::AwsImds`] under
    /// aws and [`MetadataService::GcpMetadata`] under gcp.
    pub fn service(self, target: &Target) -> Option<MetadataService> {
        let t = target.canonical();
        match self {
            Cloud::Azure => match t {
                IMDS => Some(MetadataService::AzureImds),
                WIRESERVER => Some(MetadataService::AzureWireServer),
                HOST_GA_PLUGIN => Some(MetadataService::AzureHostGaPlugin),
                _ => None,
            },
            Cloud::Aws => match t {
                IMDS | AWS_IMDS_IPV6 => Some(MetadataService::AwsImds),
                AWS_POD_IDENTITY | AWS_POD_IDENTITY_IPV6 => Some(MetadataService::AwsPodIdentity),
                AWS_ECS_TASK_METADATA => Some(MetadataService::AwsEcsTaskMetadata),
                _ => None,
            },
            Cloud::Gcp => match t {
                IMDS | GCP_METADATA_IPV6 => Some(MetadataService::GcpMetadata),
                _ => None,
            },
        }
    }

    /// The cloud's instance metadata service proper (the one the access rules' pods are
    /// expected to reach): Azure IMDS, AWS IMDS, GCP metadata.
    pub fn metadata_service(self) -> MetadataService {
        match self {
            Cloud::Azure => MetadataService::AzureImds,
            Cloud::Aws => MetadataService::AwsImds,
            Cloud::Gcp => MetadataService::GcpMetadata,
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Cloud {
    type Err = UnknownCloud;
    /// `azure`, `aws` or `gcp`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cloud::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownCloud(s.to_string()))
    }
}

/// Reads a targets file: one target a line; blank lines and `#` comments are skipped.
/// Errors name the 1-based line.
pub fn parse_targets_file(text: &str) -> Result<Vec<Target>, (usize, TargetError)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(line.parse().map_err(|e| (i + 1, e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_echoes_forms() {
        for (input, shown) in [
            ("169.254.169.254:80", "169.254.169.254:80/TCP"),
            ("169.254.169.254:80/tcp", "169.254.169.254:80/TCP"),
            ("168.63.129.16:53/UDP", "168.63.129.16:53/UDP"),
            ("10.0.0.1:9/sctp", "10.0.0.1:9/SCTP"),
            ("[fd00:ec2::254]:80", "[fd00:ec2::254]:80/TCP"),
        ] {
            assert_eq!(input.parse::<Target>().unwrap().to_string(), shown);
        }
    }

    #[test]
    fn rejects_bad_targets() {
        assert!(matches!(
            "169.254.169.254".parse::<Target>(),
            Err(TargetError::Syntax(_))
        ));
        assert!(matches!(
            "169.254.169.254:0".parse::<Target>(),
            Err(TargetError::Port(_))
        ));
        assert!(matches!(
            "169.254.169.254:99999".parse::<Target>(),
            Err(TargetError::Port(_))
        ));
        assert!(matches!(
            "169.254.169.254:80/ICMP".parse::<Target>(),
            Err(TargetError::Protocol(_))
        ));
        assert!(matches!(
            "fd00:ec2::254:80".parse::<Target>(),
            Err(TargetError::Syntax(_))
        ));
    }

    #[test]
    fn built_in_sets() {
        let azure: Vec<String> = Cloud::Azure
            .targets()
            .iter()
            .map(|t| t.to_string())
            .collect();
        assert_eq!(
            azure,
            [
                "169.254.169.254:80/TCP",
                "168.63.129.16:80/TCP",
                "168.63.129.16:32526/TCP"
            ]
        );
        assert!(
            Cloud::Aws
                .targets()
                .iter()
                .any(|t| t.service() == Some(MetadataService::AwsImds) && t.ip.is_ipv6())
        );
    }

    #[test]
    fn mapped_targets_are_the_ipv4_target() {
        for input in [
            "[::ffff:169.254.169.254]:80",
            "[::ffff:a9fe:a9fe]:80/tcp",
            "[0:0:0:0:0:ffff:169.254.169.254]:80",
        ] {
            let t: Target = input.parse().unwrap();
            assert_eq!(t, IMDS, "{input}");
            assert_eq!(t.to_string(), "169.254.169.254:80/TCP");
        }
        // IPv4-compatible (deprecated) and NAT64 forms are real IPv6 destinations.
        let compat: Target = "[::169.254.169.254]:80".parse().unwrap();
        assert!(compat.ip.is_ipv6());
        let nat64: Target = "[64:ff9b::a9fe:a9fe]:80".parse().unwrap();
        assert!(nat64.ip.is_ipv6());
        assert_eq!(
            canonical_ip("::ffff:168.63.129.16".parse().unwrap()),
            IpAddr::V4(WIRESERVER_ADDRESS)
        );
        assert_eq!(
            canonical_ip("fd00:ec2::254".parse().unwrap()),
            IpAddr::V6(AWS_IMDS_IPV6_ADDRESS)
        );
        // A Target built with a mapped address is still named by its service.
        let mapped = Target::new(
            IpAddr::V6(IMDS_ADDRESS.to_ipv6_mapped()),
            IMDS_PORT,
            Protocol::Tcp,
        );
        assert_eq!(mapped.service(), Some(MetadataService::AzureImds));
        assert_eq!(
            Cloud::Gcp.service(&mapped),
            Some(MetadataService::GcpMetadata)
        );
    }

    #[test]
    fn clouds_by_name_and_their_sets() {
        for c in Cloud::ALL {
            assert_eq!(c.name().parse::<Cloud>().unwrap(), c);
            assert_eq!(c.to_string().to_uppercase().parse::<Cloud>().unwrap(), c);
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::json!(c.name())
            );
            // Every target of a cloud is one of its services, and the cloud's metadata
            // service proper is among them on both families where it has two.
            for t in c.targets() {
                assert!(c.service(&t).is_some(), "{c} {t}");
            }
            assert!(
                c.targets()
                    .iter()
                    .any(|t| c.service(t) == Some(c.metadata_service()))
            );
        }
        assert_eq!(
            "azure-stack".parse::<Cloud>().unwrap_err().to_string(),
            "`azure-stack` is not a cloud: use azure, aws or gcp"
        );
        let shown = |c: Cloud| -> Vec<String> {
            c.targets()
                .iter()
                .map(|t| format!("{t} {}", c.service(t).unwrap().label()))
                .collect()
        };
        assert_eq!(
            shown(Cloud::Aws),
            [
                "169.254.169.254:80/TCP AWS IMDS",
                "[fd00:ec2::254]:80/TCP AWS IMDS",
                "169.254.170.23:80/TCP EKS Pod Identity agent",
                "[fd00:ec2::23]:80/TCP EKS Pod Identity agent",
                "169.254.170.2:80/TCP ECS task metadata",
            ]
        );
        assert_eq!(
            shown(Cloud::Gcp),
            [
                "169.254.169.254:80/TCP GCP metadata",
                "[fd20:ce::254]:80/TCP GCP metadata",
            ]
        );
        assert_eq!(
            shown(Cloud::Azure),
            [
                "169.254.169.254:80/TCP Azure IMDS",
                "168.63.129.16:80/TCP Azure WireServer",
                "168.63.129.16:32526/TCP Azure WireServer HostGAPlugin",
            ]
        );
        // Another cloud's endpoint, another port or protocol: not this cloud's service.
        assert_eq!(Cloud::Azure.service(&AWS_POD_IDENTITY), None);
        assert_eq!(Cloud::Gcp.service(&AWS_IMDS_IPV6), None);
        assert_eq!(Cloud::Aws.service(&WIRESERVER), None);
        assert_eq!(
            Cloud::Aws.service(&"169.254.169.254:80/UDP".parse().unwrap()),
            None
        );
        assert_eq!(
            Cloud::Aws.service(&"169.254.170.23:2703".parse().unwrap()),
            None
        );
        // With no cloud named, 169.254.169.254 keeps Azure's meaning.
        assert_eq!(IMDS.service(), Some(MetadataService::AzureImds));
        assert_eq!(
            AWS_POD_IDENTITY_IPV6.service(),
            Some(MetadataService::AwsPodIdentity)
        );
    }

    #[test]
    fn targets_file_lines() {
        let ok = parse_targets_file("# imds\n169.254.169.254:80\n\n168.63.129.16:53/UDP # dns\n")
            .unwrap();
        assert_eq!(ok.len(), 2);
        let err = parse_targets_file("1.2.3.4:80\nnope\n").unwrap_err();
        assert_eq!(err.0, 2);
    }
}
