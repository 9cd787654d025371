//! Audit targets: an address, a port and a protocol (`169.254.169.254:80/TCP`), and the
//! built-in sets of metadata endpoints per cloud.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
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

    /// The metadata service this target is, if it is one of the known ones.
    pub fn service(&self) -> Option<MetadataService> {
        [
            (IMDS, MetadataService::AzureImds),
            (WIRESERVER, MetadataService::AzureWireServer),
            (HOST_GA_PLUGIN, MetadataService::AzureHostGaPlugin),
            (AWS_IMDS_IPV6, MetadataService::AwsImds),
        ]
        .into_iter()
        .find_map(|(t, s)| (t == *self).then_some(s))
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
        Ok(Target::new(sock.ip(), sock.port(), proto))
    }
}

/// A cloud whose metadata endpoints form a built-in target set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// Azure: IMDS and WireServer (80, 32526).
    Azure,
    /// AWS: IMDS on IPv4 and IPv6.
    Aws,
    /// GCP: the metadata server.
    Gcp,
}

impl Cloud {
    /// The built-in targets of this cloud.
    pub fn targets(self) -> Vec<Target> {
        match self {
            Cloud::Azure => vec![IMDS, WIRESERVER, HOST_GA_PLUGIN],
            Cloud::Aws => vec![IMDS, AWS_IMDS_IPV6],
            Cloud::Gcp => vec![IMDS],
        }
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
    fn targets_file_lines() {
        let ok = parse_targets_file("# imds\n169.254.169.254:80\n\n168.63.129.16:53/UDP # dns\n")
            .unwrap();
        assert_eq!(ok.len(), 2);
        let err = parse_targets_file("1.2.3.4:80\nnope\n").unwrap_err();
        assert_eq!(err.0, 2);
    }
}
