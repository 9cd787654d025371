//! What the table depends on, apart from the allowlist: the mode, the pod interface
//! patterns, the protected and proxied endpoints, the proxy's address and the NFLOG
//! settings, with the checks that keep nft from refusing it and pods from losing DNS.

use std::fmt;
use std::net::{IpAddr, SocketAddrV4, SocketAddrV6};
use std::str::FromStr;

use serde::Serialize;

use super::{DEFAULT_LOG_BURST, DEFAULT_LOG_GROUP, DEFAULT_LOG_RATE, DEFAULT_POD_INTERFACES};
use crate::target::{Cloud, Protocol, Target};

/// What the node does with pod traffic to a protected endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Dropped (counted, logged), unless the (interface, source address) pair is allowlisted.
    Block,
    /// Redirected (DNAT) to the local filtering proxy, unless allowlisted.
    Proxy,
    /// Let through, counted and logged.
    Observe,
}

impl Mode {
    /// `block`, `proxy` or `observe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Block => "block",
            Mode::Proxy => "proxy",
            Mode::Observe => "observe",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = NftConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "block" => Ok(Mode::Block),
            "proxy" => Ok(Mode::Proxy),
            "observe" => Ok(Mode::Observe),
            _ => Err(NftConfigError::Mode(s.to_owned())),
        }
    }
}

/// Why a configuration or an allowlist entry cannot become a ruleset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftConfigError {
    /// Not `block`, `proxy` or `observe`.
    #[error("`{0}` is not a mode: use block, proxy or observe")]
    Mode(String),
    /// No pod interface pattern.
    #[error("at least one pod interface pattern is needed")]
    NoPodInterfaces,
    /// A pod interface pattern nft would not take, or one that would match everything.
    #[error(
        "`{0}` is not a pod interface pattern: 1 to 15 characters of A-Z a-z 0-9 . _ - @, optionally ending in `*` (a bare `*` is refused)"
    )]
    InterfacePattern(String),
    /// An allowlisted interface that is not one interface name.
    #[error("`{0}` is not an interface name: 1 to 15 characters of A-Z a-z 0-9 . _ - @")]
    InterfaceName(String),
    /// An allowlisted address that cannot be a pod's.
    #[error("`{0}` cannot be a pod address")]
    Address(IpAddr),
    /// No protected endpoint.
    #[error("at least one protected endpoint is needed")]
    NoTargets,
    /// A port-53 target: DNS (Azure DNS on 168.63.129.16, GCP's on 169.254.169.254) must stay open.
    #[error("refusing to protect {0}: port 53 is DNS, which pods need")]
    DnsTarget(Target),
    /// A proxied endpoint that is not a protected TCP endpoint.
    #[error("{0} cannot be redirected to the proxy: only protected TCP endpoints can")]
    Proxied(Target),
    /// Proxy mode without a proxy address for the IPv4 endpoints.
    #[error("proxy mode needs the proxy's IPv4 address and port for the IPv4 endpoints")]
    NoProxy,
    /// A proxy address that is itself protected would redirect traffic in a loop.
    #[error("the proxy address {0} is a protected endpoint")]
    ProxyIsProtected(IpAddr),
    /// A zero log rate.
    #[error("the log rate must be at least 1 packet a second")]
    LogRate,
    /// A dry run in observe mode, which drops nothing to begin with.
    #[error(
        "a dry run is for block and proxy modes (it lets through what they would drop, counted as would_drop); observe mode drops nothing already"
    )]
    DryRunObserve,
}

/// NFLOG settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// NFLOG group (`log group N`); the agent reads it.
    pub group: u16,
    /// Packets a second logged, at most, per logging rule.
    pub rate_per_second: u32,
    /// Burst above the rate.
    pub burst: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            group: DEFAULT_LOG_GROUP,
            rate_per_second: DEFAULT_LOG_RATE,
            burst: DEFAULT_LOG_BURST,
        }
    }
}

/// Everything the ruleset depends on, except the allowlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RulesetConfig {
    /// What happens to pod traffic to a protected endpoint.
    pub mode: Mode,
    /// Pod-side interface name patterns (`azv*`, `cbr0`, ...).
    pub pod_interfaces: Vec<String>,
    /// The protected endpoints (address, port, protocol).
    pub protected: Vec<Target>,
    /// Proxy mode: the protected endpoints the proxy serves, redirected to it (by
    /// default each cloud's metadata service: `169.254.169.254:80`, and for aws
    /// `[fd00:ec2::254]:80`, for gcp `[fd20:ce::254]:80`: the filtering proxy speaks
    /// IMDS). The other protected endpoints (WireServer, the EKS Pod Identity agent, ECS
    /// task metadata) are dropped.
    pub proxied: Vec<Target>,
    /// Proxy mode: where IPv4 traffic is redirected.
    pub proxy_v4: Option<SocketAddrV4>,
    /// Proxy mode: where IPv6 traffic is redirected; without one, IPv6 traffic to a
    /// protected endpoint is dropped.
    pub proxy_v6: Option<SocketAddrV6>,
    /// NFLOG settings.
    pub log: LogConfig,
    /// Block and proxy modes: drop nothing. Every packet the mode would drop is
    /// accepted instead, counted in `would_drop` (never `blocked` or `spoofed`), logged
    /// with [`super::LOG_PREFIX_WOULD_DROP`] (or [`super::LOG_PREFIX_WOULD_SPOOF`]) and
    /// still recorded in `dropped_v4`/`dropped_v6` (the host table: on its pod counter),
    /// so the agent names the pods enforcing would cut off. The redirect to the proxy is
    /// as in proxy mode. The verdict rules' mode marker says it (`imdsguard mode=proxy
    /// dry-run`), so a switch between a dry run and enforcing is a difference.
    pub dry_run: bool,
}

impl RulesetConfig {
    /// The comment that marks the verdict rules: `imdsguard mode=block`, with
    /// ` dry-run` after the mode in a dry run.
    pub fn mode_marker(&self) -> String {
        let dry = if self.dry_run { DRY_RUN_MARKER } else { "" };
        format!("{}{}{dry}", super::MODE_MARKER, self.mode)
    }

    /// `mode` for the endpoints of `clouds` (duplicates removed), default interface
    /// patterns and logging, no proxy address.
    pub fn new(mode: Mode, clouds: &[Cloud]) -> RulesetConfig {
        let mut protected: Vec<Target> = clouds.iter().flat_map(|c| c.targets()).collect();
        protected.sort();
        protected.dedup();
        // Each cloud's metadata service proper, both families: what the filtering proxy
        // speaks. The others (WireServer, the Pod Identity agent, ECS task metadata)
        // are dropped in proxy mode.
        let proxied = protected
            .iter()
            .filter(|t| t.protocol == Protocol::Tcp && is_proxied_service(clouds, t))
            .copied()
            .collect();
        RulesetConfig {
            mode,
            proxied,
            pod_interfaces: DEFAULT_POD_INTERFACES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            protected,
            proxy_v4: None,
            proxy_v6: None,
            log: LogConfig::default(),
            dry_run: false,
        }
    }

    /// Checks what nft would refuse and what would be unsafe (port 53, a proxy on a
    /// protected address, proxy mode without a proxy).
    pub fn validate(&self) -> Result<(), NftConfigError> {
        if self.pod_interfaces.is_empty() {
            return Err(NftConfigError::NoPodInterfaces);
        }
        for p in &self.pod_interfaces {
            if !valid_interface_pattern(p) {
                return Err(NftConfigError::InterfacePattern(p.clone()));
            }
        }
        if self.protected.is_empty() {
            return Err(NftConfigError::NoTargets);
        }
        if let Some(t) = self.protected.iter().find(|t| t.port == 53) {
            return Err(NftConfigError::DnsTarget(*t));
        }
        if let Some(t) = self
            .proxied
            .iter()
            .find(|t| !self.protected.contains(t) || t.protocol != Protocol::Tcp)
        {
            return Err(NftConfigError::Proxied(*t));
        }
        if self.mode == Mode::Proxy
            && self.proxy_v4.is_none()
            && self.proxied.iter().any(|t| t.ip.is_ipv4())
        {
            return Err(NftConfigError::NoProxy);
        }
        let proxies = [
            self.proxy_v4.map(|a| IpAddr::V4(*a.ip())),
            self.proxy_v6.map(|a| IpAddr::V6(*a.ip())),
        ];
        for ip in proxies.into_iter().flatten() {
            if self.protected.iter().any(|t| t.ip == ip) {
                return Err(NftConfigError::ProxyIsProtected(ip));
            }
        }
        if self.log.rate_per_second == 0 {
            return Err(NftConfigError::LogRate);
        }
        if self.dry_run && self.mode == Mode::Observe {
            return Err(NftConfigError::DryRunObserve);
        }
        Ok(())
    }
}

/// What follows the mode in a dry run's mode marker ([`RulesetConfig::mode_marker`]).
pub(crate) const DRY_RUN_MARKER: &str = " dry-run";

/// Whether `target` is the instance metadata service proper of one of `clouds`
/// ([`Cloud::metadata_service`]: 169.254.169.254:80 for each, `[fd00:ec2::254]:80` for
/// aws, `[fd20:ce::254]:80` for gcp).
fn is_proxied_service(clouds: &[Cloud], target: &Target) -> bool {
    clouds
        .iter()
        .any(|c| c.service(target) == Some(c.metadata_service()))
}

pub(crate) fn valid_name_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

fn valid_interface_pattern(p: &str) -> bool {
    let stem = p.strip_suffix('*').unwrap_or(p);
    !stem.is_empty() && p.len() <= 15 && valid_name_chars(stem)
}
