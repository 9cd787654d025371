//! `imdsguard agent run` and `imdsguard agent uninstall`: the agent's flags and its
//! process (logging, runtime, SIGINT/SIGTERM to stop, SIGHUP to check and reload); the
//! agent is `imdsguard-agent` ([`imdsguard_agent::Agent`]), the table
//! `imdsguard-node`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use imdsguard_agent::{Agent, AgentConfig, DEFAULT_ADMIN_LISTEN};
use imdsguard_core::nft::{self, Mode};
use imdsguard_core::target::Target;
use imdsguard_node::{AllowSpec, Exec, NftSettings, parse_allow_spec};
use imdsguard_proxy::Upstream;

use crate::cloud_arg::CloudArg;
use crate::service::{self, LogFormat, StopSignals, parse_duration};

/// What happens to pod traffic to a protected endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
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

/// The agent's node enforcement flags (nftables table `inet imdsguard`).
#[derive(Debug, Clone, Args)]
pub(crate) struct AgentNftArgs {
    /// block: drop pod traffic to the endpoints; proxy: redirect it to the filtering
    /// proxy; observe: let it through, counted and logged
    #[arg(long, value_enum, default_value_t = ModeArg::Block)]
    pub mode: ModeArg,

    /// Pod-side interface name pattern, `*` at the end as a wildcard (repeatable)
    /// [default: azv* cbr0 cni0 cali* lxc* veth*]
    #[arg(long = "pod-interface", value_name = "PATTERN")]
    pub pod_interfaces: Vec<String>,

    /// Protect this cloud's metadata endpoints, both address families (repeatable):
    /// azure: IMDS, WireServer :80 and :32526; aws: IMDS v4/v6, the EKS Pod Identity
    /// agent v4/v6, ECS task metadata; gcp: the metadata server v4/v6. Proxy mode takes
    /// one: its proxy speaks that cloud's metadata service [default: azure]
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
    /// agent, with a pods file or --kubernetes) its NAMESPACE/NAME, NAMESPACE/* for a
    /// whole namespace; a hostNetwork pod so named goes direct too (the host table
    /// expects it), in every mode
    #[arg(long = "allow", value_name = "IFACE=ADDR|NAMESPACE/NAME", value_parser = parse_allow_spec)]
    pub allow: Vec<AllowSpec>,

    /// NFLOG group for drops and observations
    #[arg(long, default_value_t = nft::DEFAULT_LOG_GROUP)]
    pub log_group: u16,

    /// Packets logged per second, at most
    #[arg(long, default_value_t = nft::DEFAULT_LOG_RATE)]
    pub log_rate: u32,
}

impl AgentNftArgs {
    /// The settings these flags stand for.
    pub(crate) fn settings(&self) -> NftSettings {
        NftSettings {
            mode: self.mode.into(),
            pod_interfaces: self.pod_interfaces.clone(),
            clouds: self.clouds.iter().map(|c| (*c).into()).collect(),
            protect: self.protect.clone(),
            proxy_address: self.proxy_address,
            proxy_address6: self.proxy_address6,
            allow: self.allow.clone(),
            log_group: self.log_group,
            log_rate: self.log_rate,
        }
    }
}

/// `imdsguard agent run`: keep imdsguard's nftables table on this node, serve the
/// filtering proxy in proxy mode, and the admin endpoints.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// The node enforcement options (mode, interfaces, clouds, proxy address, allowlist).
    #[command(flatten)]
    pub nft: AgentNftArgs,

    /// The pods this node hosts: the proxy's pod index format, each entry with the
    /// `interface` its traffic enters the node on (see docs/agent.md); reloaded on change
    /// and on SIGHUP
    #[arg(long, value_name = "FILE")]
    pub pods: Option<PathBuf>,

    /// Take the node's pods from the Kubernetes API instead of --pods: a watch of the
    /// pods with spec.nodeName=--node-name (the in-cluster service account, else the
    /// kubeconfig), interfaces from `ip route get`; drops also become Kubernetes Events
    #[arg(long, conflicts_with = "pods", requires = "node_name")]
    pub kubernetes: bool,

    /// With --kubernetes: the name of this node
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// With --kubernetes: the kubeconfig file [default: the in-cluster service account,
    /// else KUBECONFIG, else ~/.kube/config]
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,

    /// With --kubernetes: remove the start-up taint imdsguard.io/agent-not-ready:NoSchedule
    /// from --node-name once the table is in place and the node's pods and the
    /// MetadataAccessPolicy objects are applied (--remove-taint=false: leave it)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub remove_taint: bool,

    /// The access rules (docs/proxy.md); reloaded on change and on SIGHUP. Proxy mode:
    /// the proxy's (the pods they select reach IMDS through it). Block and observe
    /// modes: the pods they select are expected (allowlisted; hostNetwork ones accepted
    /// by the host table). With --kubernetes and no --rules the rules are the
    /// MetadataAccessPolicy objects; with --rules no object is watched
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,

    /// Proxy mode: where the proxy listens [default: the --proxy-address]
    #[arg(long, value_name = "ADDR:PORT")]
    pub proxy_listen: Option<SocketAddr>,

    /// Proxy mode: the metadata service allowed requests are forwarded to
    #[arg(long, value_name = "URL", default_value = imdsguard_proxy::DEFAULT_UPSTREAM)]
    pub upstream: String,

    /// Block and proxy modes: enforce nothing, show what enforcing would break. The nft
    /// tables drop nothing: what the mode would drop is let through, counted
    /// (would_drop) and logged per pod as a would-drop (no Kubernetes Event); in proxy
    /// mode the proxy also decides, logs and counts every request as usual but forwards
    /// the ones the rules deny (decision would-deny, outcome would_deny), never sending
    /// the 403. Refused in observe mode, which drops nothing anyway
    #[arg(long)]
    pub dry_run: bool,

    /// The cgroup v2 mount: hostNetwork pods are guarded by their cgroups below it
    /// (table inet imdsguard_host); without cgroup v2 there, they are not (said at start
    /// and in /readyz) and the rest works
    #[arg(long, value_name = "DIR", default_value = imdsguard_agent::host::DEFAULT_CGROUP_ROOT)]
    pub cgroup_root: PathBuf,

    /// The agent's own pod UID (downward API metadata.uid), when it runs in a pod: its
    /// own sockets (the proxy's upstream connections) are never dropped or redirected
    #[arg(long, env = "POD_UID", value_name = "UID")]
    pub pod_uid: Option<String>,

    /// The admin listener (/metrics, /healthz, /readyz)
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    /// Do not start the admin listener
    #[arg(long)]
    pub no_admin: bool,

    /// Accept a rules file with no rules (every request denied) and be ready with it;
    /// without this an empty or comment-only rules file is an error
    #[arg(long)]
    pub allow_empty_rules: bool,

    /// Accept a pods file with no pods; without this an empty or comment-only pods file
    /// is an error
    #[arg(long)]
    pub allow_empty_pods: bool,

    /// How often to check the table (restoring it), read the counters and look for
    /// changed files (a rename over a file is a change)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub check_interval: Duration,

    /// Log format (standard error)
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// The library configuration these flags stand for.
    pub(crate) fn config(&self) -> anyhow::Result<AgentConfig> {
        let config = AgentConfig {
            nft: self.nft.settings(),
            pods: self.pods.clone(),
            kubernetes: self.kubernetes,
            node_name: self.node_name.clone(),
            kubeconfig: self.kubeconfig.clone(),
            remove_taint: self.remove_taint,
            rules: self.rules.clone(),
            proxy_listen: self.proxy_listen,
            upstream: Upstream::parse(&self.upstream)?,
            dry_run: self.dry_run,
            cgroup_root: self.cgroup_root.clone(),
            pod_uid: self.pod_uid.clone().filter(|u| !u.is_empty()),
            admin_listen: (!self.no_admin).then_some(self.admin_listen),
            allow_empty_rules: self.allow_empty_rules,
            allow_empty_pods: self.allow_empty_pods,
            check_interval: self.check_interval,
        };
        config.check()?;
        Ok(config)
    }
}

/// Runs `imdsguard agent run`: starts the agent on a runtime of its own, prints one line
/// per listener on standard output (`admin http://…`, `proxy http://…`) and `enforcing
/// MODE`, checks the table and reloads the files on SIGHUP, and runs until SIGTERM or
/// SIGINT; then stops serving and leaves the rules.
pub(crate) fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    service::init_logging(args.log_format);
    let runtime = service::server_runtime()?;
    let result = runtime.block_on(async move {
        // Before anything is installed: a signal from now on stops us cleanly, and a
        // SIGHUP during the start waits for the agent instead of killing the process.
        let mut signals = StopSignals::install()?;
        let (hangups, mut hung_up) = tokio::sync::mpsc::unbounded_channel();
        service::forward_hangups(hangups);
        let agent = Agent::start(config).await?;
        {
            let mut out = std::io::stdout().lock();
            if let Some(a) = agent.admin_addr() {
                let _ = writeln!(out, "admin http://{a}");
            }
            if let Some(a) = agent.proxy_addr() {
                let _ = writeln!(out, "proxy http://{a}");
            }
            let _ = writeln!(out, "enforcing {}", agent.mode());
            let _ = out.flush();
        }
        let reload = agent.reloader();
        let forward = tokio::spawn(async move {
            while hung_up.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                if reload.send(()).is_err() {
                    break;
                }
            }
        });
        signals.recv().await;
        tracing::info!("stopping (the nft rules stay)");
        forward.abort();
        agent.shutdown().await;
        Ok(())
    });
    service::flush_logs();
    result
}

/// Remove imdsguard's nftables tables (`inet imdsguard`, and `inet imdsguard_host` for
/// hostNetwork pods) from this node: pods can reach the metadata endpoints again. Other
/// tables are not touched.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct UninstallArgs {
    /// Print the nft batch that would be applied, change nothing
    #[arg(long)]
    pub dry_run: bool,
}

/// `imdsguard agent uninstall`: removes `inet imdsguard` in one transaction and says so
/// on standard output; exit status 0 whether the table was there or not (errors: no
/// `nft`, not permitted, exit 2).
pub(crate) fn uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let exec = Exec::here();
    let table = format!(
        "table {} {} (and {} {})",
        nft::FAMILY,
        nft::TABLE,
        nft::FAMILY,
        nft::host::HOST_TABLE
    );
    let text = if args.dry_run {
        let present = imdsguard_node::read_table(&exec)?.is_some()
            || imdsguard_node::host::read_host_listing(&exec)?.is_some();
        format!(
            "{table} is {}; would apply:\n{}\nand with nft -f -:\n{}",
            if present {
                "installed"
            } else {
                "not installed"
            },
            nft::delete_table(),
            nft::host::delete_host_table()
        )
    } else if imdsguard_node::uninstall_table(&exec)? {
        format!("removed {table}: pods can reach the metadata endpoints again")
    } else {
        format!("{table} was not installed")
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use imdsguard_core::target::Cloud;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_become_the_configuration() {
        let a = parse(&[
            "--mode",
            "proxy",
            "--proxy-address",
            "10.224.0.4:8169",
            "--rules",
            "r.yaml",
            "--pods",
            "p.yaml",
            "--allow",
            "platform/allowed",
            "--allow",
            "azvx=10.0.0.1",
            "--admin-listen",
            "127.0.0.1:0",
            "--check-interval",
            "300ms",
            "--upstream",
            "http://127.0.0.1:8169",
        ])
        .unwrap();
        let c = a.config().unwrap();
        assert_eq!(c.nft.mode, Mode::Proxy);
        assert_eq!(c.check_interval, Duration::from_millis(300));
        assert_eq!(c.nft.allow.len(), 2);
        assert_eq!(c.nft.allowed_pairs().len(), 1);
        assert_eq!(c.admin_listen.unwrap().port(), 0);
        assert_eq!(c.upstream.connect_addr(), "127.0.0.1:8169");
        assert_eq!(c.pods.as_deref(), Some(std::path::Path::new("p.yaml")));
        let nft = c.nft.config().unwrap();
        assert_eq!(nft.proxy_v4.unwrap().to_string(), "10.224.0.4:8169");

        let d = parse(&[]).unwrap().config().unwrap();
        assert_eq!(
            d.admin_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_ADMIN_LISTEN)
        );
        assert_eq!(d.check_interval, Duration::from_secs(5));
        assert!(d.pods.is_none() && d.rules.is_none());
        assert_eq!(d.upstream, Upstream::default());
        assert_eq!(d.nft, NftSettings::default());
        assert_eq!(
            parse(&["--no-admin"])
                .unwrap()
                .config()
                .unwrap()
                .admin_listen,
            None
        );
        assert!(
            parse(&["--upstream", "https://x"])
                .unwrap()
                .config()
                .is_err()
        );
        assert!(parse(&["--check-interval", "soon"]).is_err());
        assert!(!c.dry_run);
        assert_eq!(
            d.cgroup_root,
            std::path::Path::new(imdsguard_agent::host::DEFAULT_CGROUP_ROOT)
        );
        let c = parse(&["--cgroup-root", "/x/cg", "--pod-uid", "0a1b"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(c.cgroup_root, std::path::Path::new("/x/cg"));
        assert_eq!(c.pod_uid.as_deref(), Some("0a1b"));
    }

    #[test]
    fn dry_run_is_refused_in_observe_mode_only() {
        let c = parse(&[
            "--mode",
            "proxy",
            "--proxy-address",
            "10.224.0.4:8169",
            "--dry-run",
        ])
        .unwrap()
        .config()
        .unwrap();
        assert!(c.dry_run);
        // The default mode is block: a dry run of it counts what block mode would drop.
        let c = parse(&["--dry-run"]).unwrap().config().unwrap();
        assert!(c.dry_run);
        assert_eq!(c.nft.mode, Mode::Block);
        let e = parse(&["--mode", "observe", "--dry-run"])
            .unwrap()
            .config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--dry-run is for block and proxy modes"), "{e}");
    }

    #[test]
    fn the_table_flags() {
        let s = parse(&[
            "--cloud",
            "azure",
            "--cloud",
            "aws",
            "--pod-interface",
            "eni*",
            "--log-group",
            "5",
            "--log-rate",
            "7",
            "--protect",
            "10.0.0.9:8080",
            "--mode",
            "observe",
        ])
        .unwrap()
        .nft
        .settings();
        assert_eq!(s.mode, Mode::Observe);
        assert_eq!(s.clouds, [Cloud::Azure, Cloud::Aws]);
        assert_eq!(s.pod_interfaces, ["eni*"]);
        assert_eq!((s.log_group, s.log_rate), (5, 7));
        assert_eq!(s.protect, ["10.0.0.9:8080".parse::<Target>().unwrap()]);
        let c = s.config().unwrap();
        assert!(c.protected.iter().any(|t| t.ip.is_ipv6()));
        // Checked when the agent starts (the configuration), as before.
        let e = parse(&["--mode", "proxy"])
            .unwrap()
            .nft
            .settings()
            .config()
            .unwrap_err();
        assert!(e.to_string().contains("proxy"), "{e}");
        let e = parse(&["--protect", "168.63.129.16:53/UDP"])
            .unwrap()
            .nft
            .settings()
            .config()
            .unwrap_err();
        assert!(e.to_string().contains("53"), "{e}");
        assert!(parse(&["--allow", "shop"]).is_err());
        assert!(parse(&["--mode", "nope"]).is_err());
    }

    #[test]
    fn one_cloud_in_proxy_mode_several_in_block_mode() {
        let c = parse(&[
            "--cloud",
            "gcp",
            "--mode",
            "proxy",
            "--proxy-address",
            "10.224.0.4:8169",
            "--proxy-address6",
            "[fd00::4]:8169",
            "--proxy-listen",
            "[::]:8169",
        ])
        .unwrap()
        .config()
        .unwrap();
        assert_eq!(c.proxy_cloud().unwrap(), Cloud::Gcp);
        let nft = c.nft.config().unwrap();
        // GCP's IPv6 metadata address is redirected to the IPv6 proxy address.
        assert!(
            nft.proxied
                .iter()
                .any(|t| t.to_string() == "[fd20:ce::254]:80/TCP"),
            "{:?}",
            nft.proxied
        );
        assert_eq!(nft.proxy_v6.unwrap().to_string(), "[fd00::4]:8169");
        let e = parse(&[
            "--cloud",
            "aws",
            "--cloud",
            "gcp",
            "--mode",
            "proxy",
            "--proxy-address",
            "10.224.0.4:8169",
        ])
        .unwrap()
        .config()
        .unwrap_err()
        .to_string();
        assert!(e.contains("one --cloud"), "{e}");
        let block = parse(&["--cloud", "aws", "--cloud", "gcp"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(block.nft.clouds, [Cloud::Aws, Cloud::Gcp]);
    }

    #[test]
    fn kubernetes_flags() {
        let k = parse(&["--kubernetes", "--node-name", "node-a"]).unwrap();
        assert!(k.kubernetes);
        assert_eq!(k.node_name.as_deref(), Some("node-a"));
        if std::env::var_os("NODE_NAME").is_none() {
            assert!(parse(&["--kubernetes"]).is_err());
        }
        assert!(parse(&["--kubernetes", "--node-name", "n", "--pods", "p"]).is_err());
        let c = k.config().unwrap();
        assert!(c.kubernetes && c.remove_taint && c.kubeconfig.is_none());
        let c = parse(&[
            "--kubernetes",
            "--node-name",
            "n",
            "--kubeconfig",
            "/k",
            "--remove-taint=false",
        ])
        .unwrap()
        .config()
        .unwrap();
        assert_eq!(c.kubeconfig.as_deref(), Some(std::path::Path::new("/k")));
        assert!(!c.remove_taint);
        assert!(
            parse(&["--kubernetes", "--node-name", "n", "--remove-taint"])
                .unwrap()
                .remove_taint
        );
        assert!(
            parse(&["--kubeconfig", "/k"]).is_err(),
            "needs --kubernetes"
        );
    }
}
