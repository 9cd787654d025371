//! The agent's node enforcement settings ([`NftSettings`], plain data: the `imdsguard`
//! binary turns its flags into them) and the `--allow` entries ([`AllowSpec`]).

use std::net::{IpAddr, SocketAddr};

use imdsguard_core::nft::{self, LogConfig, Mode, RulesetConfig, SourcePair};
use imdsguard_core::target::{Cloud, Target};

use crate::NodeError;

/// What the agent enforces on the node (the table `inet imdsguard`), before it is
/// checked into a [`RulesetConfig`] by [`NftSettings::config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSettings {
    /// What happens to pod traffic to a protected endpoint.
    pub mode: Mode,
    /// Pod-side interface name patterns, `*` at the end as a wildcard (empty: the
    /// defaults, [`nft::DEFAULT_POD_INTERFACES`]).
    pub pod_interfaces: Vec<String>,
    /// Clouds whose metadata endpoints are protected (empty: Azure).
    pub clouds: Vec<Cloud>,
    /// Further protected targets (port 53 is refused).
    pub protect: Vec<Target>,
    /// Proxy mode: where IPv4 traffic is redirected (the proxy's node address).
    pub proxy_address: Option<SocketAddr>,
    /// Proxy mode: where IPv6 traffic is redirected; without it IPv6 is dropped.
    pub proxy_address6: Option<SocketAddr>,
    /// Allowlisted pods: pairs, or pods named in the agent's pods.
    pub allow: Vec<AllowSpec>,
    /// NFLOG group for drops and observations.
    pub log_group: u16,
    /// Packets logged per second, at most.
    pub log_rate: u32,
}

impl Default for NftSettings {
    /// Block mode, Azure's endpoints, the default interfaces, nothing allowlisted.
    fn default() -> NftSettings {
        NftSettings {
            mode: Mode::Block,
            pod_interfaces: Vec::new(),
            clouds: Vec::new(),
            protect: Vec::new(),
            proxy_address: None,
            proxy_address6: None,
            allow: Vec::new(),
            log_group: nft::DEFAULT_LOG_GROUP,
            log_rate: nft::DEFAULT_LOG_RATE,
        }
    }
}

impl NftSettings {
    /// The `IFACE=ADDR` entries of [`NftSettings::allow`].
    pub fn allowed_pairs(&self) -> Vec<SourcePair> {
        self.allow
            .iter()
            .filter_map(|a| match a {
                AllowSpec::Pair(p) => Some(p.clone()),
                AllowSpec::Pod { .. } => None,
            })
            .collect()
    }

    /// The checked ruleset configuration: the clouds' endpoints and the extra
    /// protected targets, the proxy addresses of the right families.
    pub fn config(&self) -> Result<RulesetConfig, NodeError> {
        let clouds: Vec<Cloud> = if self.clouds.is_empty() {
            vec![Cloud::Azure]
        } else {
            self.clouds.clone()
        };
        let mut config = RulesetConfig::new(self.mode, &clouds);
        if !self.pod_interfaces.is_empty() {
            config.pod_interfaces = self.pod_interfaces.clone();
        }
        config.protected.extend(self.protect.iter().copied());
        config.protected.sort();
        config.protected.dedup();
        config.proxy_v4 = match self.proxy_address {
            Some(SocketAddr::V4(a)) => Some(a),
            Some(SocketAddr::V6(a)) => {
                return Err(NodeError::Usage(format!(
                    "--proxy-address {a}: an IPv4 address is expected (use --proxy-address6)"
                )));
            }
            None => None,
        };
        config.proxy_v6 = match self.proxy_address6 {
            Some(SocketAddr::V6(a)) => Some(a),
            Some(SocketAddr::V4(a)) => {
                return Err(NodeError::Usage(format!(
                    "--proxy-address6 {a}: an IPv6 address is expected"
                )));
            }
            None => None,
        };
        config.log = LogConfig {
            group: self.log_group,
            rate_per_second: self.log_rate,
            ..LogConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// One `--allow`: a pair given outright, or a pod named in the agent's pods file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowSpec {
    /// `IFACE=ADDR`.
    Pair(SourcePair),
    /// `NAMESPACE/NAME` (`NAMESPACE/*`: every pod of the namespace); resolved against
    /// the pods the agent knows, with their interfaces.
    Pod {
        /// The namespace.
        namespace: String,
        /// The pod's name, or `*`.
        name: String,
    },
}

impl AllowSpec {
    /// Whether this names the pod `namespace/name`.
    pub fn names_pod(&self, namespace: &str, name: &str) -> bool {
        match self {
            AllowSpec::Pair(_) => false,
            AllowSpec::Pod {
                namespace: ns,
                name: n,
            } => ns == namespace && (n == "*" || n == name),
        }
    }
}

/// Parses `IFACE=ADDR` or `NAMESPACE/NAME`.
pub fn parse_allow_spec(text: &str) -> Result<AllowSpec, String> {
    if text.contains('=') {
        return parse_allow(text).map(AllowSpec::Pair);
    }
    match text.split_once('/') {
        Some((ns, name))
            if !ns.is_empty() && !name.is_empty() && !name.contains('/') && !ns.contains('*') =>
        {
            Ok(AllowSpec::Pod {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!(
            "`{text}`: expected IFACE=ADDR or NAMESPACE/NAME (NAMESPACE/* for a namespace)"
        )),
    }
}

/// Parses `IFACE=ADDR`.
pub fn parse_allow(text: &str) -> Result<SourcePair, String> {
    let (iface, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected IFACE=ADDR"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{addr}` is not an IP address"))?;
    SourcePair::new(iface, addr).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_protect_azure_in_block_mode() {
        let c = NftSettings::default().config().unwrap();
        assert_eq!(c.mode, Mode::Block);
        assert_eq!(
            c.protected,
            Cloud::Azure
                .targets()
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(c.pod_interfaces, nft::DEFAULT_POD_INTERFACES);
        assert_eq!(c.log.group, nft::DEFAULT_LOG_GROUP);
        assert_eq!(c.log.rate_per_second, nft::DEFAULT_LOG_RATE);
    }

    #[test]
    fn settings_become_the_configuration() {
        let proxy = NftSettings {
            mode: Mode::Proxy,
            proxy_address: Some("10.224.0.4:8169".parse().unwrap()),
            clouds: vec![Cloud::Azure, Cloud::Aws],
            pod_interfaces: vec!["eni*".into()],
            log_group: 5,
            ..NftSettings::default()
        };
        let c = proxy.config().unwrap();
        assert_eq!(c.mode, Mode::Proxy);
        assert_eq!(c.proxy_v4.unwrap().to_string(), "10.224.0.4:8169");
        assert!(c.protected.iter().any(|t| t.ip.is_ipv6()));
        assert_eq!(c.pod_interfaces, ["eni*"]);
        assert_eq!(c.log.group, 5);
        let no_address = NftSettings {
            mode: Mode::Proxy,
            ..NftSettings::default()
        };
        assert!(
            no_address
                .config()
                .unwrap_err()
                .to_string()
                .contains("proxy")
        );
        let dns = NftSettings {
            protect: vec!["168.63.129.16:53/UDP".parse().unwrap()],
            ..NftSettings::default()
        };
        assert!(dns.config().unwrap_err().to_string().contains("53"));
        let v6_as_v4 = NftSettings {
            mode: Mode::Proxy,
            proxy_address: Some("[::1]:80".parse().unwrap()),
            ..NftSettings::default()
        };
        let e = v6_as_v4.config().unwrap_err().to_string();
        assert!(e.contains("--proxy-address") && e.contains("IPv4"), "{e}");
        let v4_as_v6 = NftSettings {
            mode: Mode::Proxy,
            proxy_address: Some("10.224.0.4:8169".parse().unwrap()),
            proxy_address6: Some("10.224.0.4:8169".parse().unwrap()),
            ..NftSettings::default()
        };
        assert!(v4_as_v6.config().unwrap_err().to_string().contains("IPv6"));
    }

    #[test]
    fn allow_specs_parse() {
        assert!(matches!(
            parse_allow_spec("azvabc=10.244.0.10"),
            Ok(AllowSpec::Pair(_))
        ));
        let pod = parse_allow_spec("shop/web").unwrap();
        assert!(pod.names_pod("shop", "web") && !pod.names_pod("shop", "api"));
        assert!(parse_allow_spec("shop/*").unwrap().names_pod("shop", "api"));
        for bad in ["shop", "/web", "shop/", "a/b/c", "*/x"] {
            assert!(parse_allow_spec(bad).is_err(), "{bad}");
        }
        let settings = NftSettings {
            allow: vec![
                parse_allow_spec("azva=10.0.0.1").unwrap(),
                parse_allow_spec("ns/p").unwrap(),
            ],
            ..NftSettings::default()
        };
        assert_eq!(
            settings.allowed_pairs(),
            [SourcePair::new("azva", "10.0.0.1".parse().unwrap()).unwrap()]
        );
    }

    #[test]
    fn allow_entries_parse() {
        let p = parse_allow("azvabc=10.244.0.10").unwrap();
        assert_eq!(
            (p.iface.as_str(), p.addr.to_string()),
            ("azvabc", "10.244.0.10".into())
        );
        assert!(parse_allow("azv*=10.0.0.1").is_err());
        assert!(parse_allow("azvabc").is_err());
        assert!(parse_allow("azvabc=nope").is_err());
    }
}
