//! Command-line arguments: the agent's nftables options ([`AgentNftArgs`]) and
//! `imdsguard agent uninstall` ([`UninstallArgs`], [`uninstall`]).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use clap::{Args, ValueEnum};
use imdsguard_core::nft::{self, LogConfig, Mode, RulesetConfig, SourcePair};
use imdsguard_core::target::{Cloud, Target};

use crate::NodeError;
use crate::enforce::{read_table, uninstall_table};
use crate::exec::Exec;

/// What happens to pod traffic to a protected endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Drop it (counted, logged) unless the pod is allowlisted.
    Block,
    /// Redirect it to the filtering proxy (`--proxy-address`).
    Proxy,
    /// Let it through, counted and logged.
    Observe,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Block => Mode::Block,
            ModeArg::Proxy => Mode::Proxy,
            ModeArg::Observe => Mode::Observe,
        }
    }
}

/// A cloud whose metadata endpoints are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CloudArg {
    /// IMDS 169.254.169.254:80, WireServer 168.63.129.16:80 and :32526.
    Azure,
    /// 169.254.169.254:80 and [fd00:ec2::254]:80.
    Aws,
    /// 169.254.169.254:80.
    Gcp,
}

impl From<CloudArg> for Cloud {
    fn from(c: CloudArg) -> Cloud {
        match c {
            CloudArg::Azure => Cloud::Azure,
            CloudArg::Aws => Cloud::Aws,
            CloudArg::Gcp => Cloud::Gcp,
        }
    }
}

/// The agent's node enforcement options (nftables table `inet imdsguard`).
#[derive(Debug, Clone, Args)]
pub struct AgentNftArgs {
    /// block: drop pod traffic to the endpoints; proxy: redirect it to the filtering
    /// proxy; observe: let it through, counted and logged
    #[arg(long, value_enum, default_value_t = ModeArg::Block)]
    pub mode: ModeArg,

    /// Pod-side interface name pattern, `*` at the end as a wildcard (repeatable)
    /// [default: azv* cbr0 cni0 cali* lxc* veth*]
    #[arg(long = "pod-interface", value_name = "PATTERN")]
    pub pod_interfaces: Vec<String>,

    /// Protect this cloud's metadata endpoints (repeatable) [default: azure]
    #[arg(long = "cloud", value_enum)]
    pub clouds: Vec<CloudArg>,

    /// Also protect IP:PORT[/PROTO] (repeatable; port 53 is refused)
    #[arg(long = "protect", value_name = "IP:PORT[/PROTO]")]
    pub protect: Vec<Target>,

    /// Proxy mode: where IPv4 traffic is redirected (the proxy's node address)
    #[arg(long, value_name = "ADDR:PORT")]
    pub proxy_address: Option<SocketAddr>,

    /// Proxy mode: where IPv6 traffic is redirected; without it IPv6 is dropped
    #[arg(long, value_name = "[ADDR]:PORT")]
    pub proxy_address6: Option<SocketAddr>,

    /// Allowlist a pod (repeatable): its node-side interface and address, or (for the
    /// agent, with a pods file) its NAMESPACE/NAME, NAMESPACE/* for a whole namespace
    #[arg(long = "allow", value_name = "IFACE=ADDR|NAMESPACE/NAME", value_parser = parse_allow_spec)]
    pub allow: Vec<AllowSpec>,

    /// NFLOG group for drops and observations
    #[arg(long, default_value_t = nft::DEFAULT_LOG_GROUP)]
    pub log_group: u16,

    /// Packets logged per second, at most
    #[arg(long, default_value_t = nft::DEFAULT_LOG_RATE)]
    pub log_rate: u32,
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

impl AgentNftArgs {
    /// The `--allow IFACE=ADDR` pairs.
    pub fn allowed_pairs(&self) -> Vec<SourcePair> {
        self.allow
            .iter()
            .filter_map(|a| match a {
                AllowSpec::Pair(p) => Some(p.clone()),
                AllowSpec::Pod { .. } => None,
            })
            .collect()
    }

    /// The checked ruleset configuration.
    pub fn config(&self) -> Result<RulesetConfig, NodeError> {
        let clouds: Vec<Cloud> = if self.clouds.is_empty() {
            vec![Cloud::Azure]
        } else {
            self.clouds.iter().map(|c| (*c).into()).collect()
        };
        let mut config = RulesetConfig::new(self.mode.into(), &clouds);
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

/// Remove imdsguard's nftables table (`inet imdsguard`) from this node: pods can reach
/// the metadata endpoints again. Other tables are not touched.
#[derive(Debug, Clone, Default, Args)]
pub struct UninstallArgs {
    /// Print the nft batch that would be applied, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// What `imdsguard agent uninstall` did. Every outcome exits 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UninstallOutcome {
    /// The table was there and is gone.
    Removed,
    /// There was no table.
    NotInstalled,
    /// `--dry-run`: nothing changed.
    DryRun,
}

impl From<UninstallOutcome> for std::process::ExitCode {
    fn from(_: UninstallOutcome) -> Self {
        std::process::ExitCode::SUCCESS
    }
}

/// `imdsguard agent uninstall`: removes `inet imdsguard` in one transaction and says so
/// on standard output. Errors (no `nft`, not permitted) mean exit status 2 for the CLI.
pub fn uninstall(args: UninstallArgs) -> Result<UninstallOutcome, NodeError> {
    let exec = Exec::here();
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock<'_>, text: String| {
        let _ = writeln!(out, "{text}");
    };
    if args.dry_run {
        let present = read_table(&exec)?.is_some();
        say(
            &mut out,
            format!(
                "table {} {} is {}; would apply:\n{}",
                nft::FAMILY,
                nft::TABLE,
                if present {
                    "installed"
                } else {
                    "not installed"
                },
                nft::delete_table()
            ),
        );
        return Ok(UninstallOutcome::DryRun);
    }
    if uninstall_table(&exec)? {
        say(
            &mut out,
            format!(
                "removed table {} {}: pods can reach the metadata endpoints again",
                nft::FAMILY,
                nft::TABLE
            ),
        );
        Ok(UninstallOutcome::Removed)
    } else {
        say(
            &mut out,
            format!("table {} {} was not installed", nft::FAMILY, nft::TABLE),
        );
        Ok(UninstallOutcome::NotInstalled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentNftArgs,
    }

    fn parse(args: &[&str]) -> Result<RulesetConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.args.config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_protect_azure_in_block_mode() {
        let c = parse(&[]).unwrap();
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
    }

    #[test]
    fn options_become_the_configuration() {
        let c = parse(&[
            "--mode",
            "proxy",
            "--proxy-address",
            "10.224.0.4:8169",
            "--cloud",
            "azure",
            "--cloud",
            "aws",
            "--pod-interface",
            "eni*",
            "--log-group",
            "5",
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Proxy);
        assert_eq!(c.proxy_v4.unwrap().to_string(), "10.224.0.4:8169");
        assert!(c.protected.iter().any(|t| t.ip.is_ipv6()));
        assert_eq!(c.pod_interfaces, ["eni*"]);
        assert_eq!(c.log.group, 5);
        assert!(parse(&["--mode", "proxy"]).unwrap_err().contains("proxy"));
        assert!(
            parse(&["--protect", "168.63.129.16:53/UDP"])
                .unwrap_err()
                .contains("53")
        );
        assert!(parse(&["--proxy-address", "[::1]:80", "--mode", "proxy"]).is_err());
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
        let cli =
            Cli::try_parse_from(["x", "--allow", "azva=10.0.0.1", "--allow", "ns/p"]).unwrap();
        assert_eq!(cli.args.allowed_pairs().len(), 1);
        assert_eq!(cli.args.allow.len(), 2);
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
