//! `imdsguard emulate`: the arguments of the emulators and their process (logging,
//! runtime, signals); the emulators themselves are `imdsguard-emulator`'s: Azure IMDS /
//! WireServer (the default), AWS EC2 IMDS (`--cloud aws`) and the GCE metadata server
//! (`--cloud gcp`).
//!
//! `--listen`, `--allow-metadata-address`, `--config`, `--print-default-config`,
//! `--seed` and `--log-format` apply to every cloud; the others to one cloud each, and
//! giving one with another cloud is refused (it would otherwise be silently ignored).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use imdsguard_emulator::aws::{AwsConfig, AwsEmulator, AwsOptions, HttpTokens, MAX_HOP_LIMIT};
use imdsguard_emulator::gcp::{GcpConfig, GcpEmulator, GcpOptions};
use imdsguard_emulator::{
    Config, DEFAULT_CONFIG_YAML, DEFAULT_IMDS_LISTEN, Emulator, EmulatorError, Faults, Options,
    Throttle,
};

use crate::cloud_arg::CloudArg;
use crate::service::{self, LogFormat, StopSignals, parse_positive_duration};

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` is not between 0.0 and 1.0"))
    }
}

/// `--http-tokens`: the emulated instance's `HttpTokens` metadata option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum HttpTokensArg {
    /// IMDSv1 and IMDSv2 both answer.
    Optional,
    /// Only GETs with a valid IMDSv2 session token are answered (401 otherwise).
    Required,
}

impl From<HttpTokensArg> for HttpTokens {
    fn from(a: HttpTokensArg) -> HttpTokens {
        match a {
            HttpTokensArg::Optional => HttpTokens::Optional,
            HttpTokensArg::Required => HttpTokens::Required,
        }
    }
}

/// `imdsguard emulate`: run a cloud metadata service emulator (loopback by default).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EmulateArgs {
    /// Which cloud's metadata service: Azure IMDS (and WireServer), AWS EC2 IMDS
    /// (IMDSv1/IMDSv2) or the GCE metadata server.
    #[arg(long, value_enum, default_value = "azure")]
    pub cloud: CloudArg,
    /// Listen address; repeat for several (IPv6 too, e.g. [::1]:8169).
    #[arg(long = "listen", value_name = "ADDR:PORT", default_value = DEFAULT_IMDS_LISTEN)]
    pub listen: Vec<SocketAddr>,
    /// Allow listening on a cloud metadata address (169.254.169.254, 168.63.129.16,
    /// fd00:ec2::254, ...; only inside a lab network namespace).
    #[arg(long)]
    pub allow_metadata_address: bool,
    /// The emulated VM, instance or GCE VM (YAML of the --cloud's kind); the default is
    /// an AKS, EKS or GKE node with made-up ids.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the --cloud's default configuration (YAML) and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Azure only: also serve WireServer (goal state) on this address, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR:PORT")]
    pub wireserver: Option<SocketAddr>,
    /// Azure only: also serve the host GA plugin (/vmSettings) on this address, e.g. 127.0.0.1:32526.
    #[arg(long, value_name = "ADDR:PORT")]
    pub hostgaplugin: Option<SocketAddr>,
    /// Azure only: do not throttle (IMDS answers 429 past 5 requests/s, or 20/s and 5 concurrent for identity).
    #[arg(long)]
    pub no_throttle: bool,
    /// Azure only: requests per second for instance data and other non-identity paths [default: 5].
    #[arg(long, value_name = "N")]
    pub instance_rate: Option<f64>,
    /// Azure only: requests per second for managed-identity paths [default: 20].
    #[arg(long, value_name = "N")]
    pub identity_rate: Option<f64>,
    /// Azure only: concurrent managed-identity requests [default: 5].
    #[arg(long, value_name = "N")]
    pub identity_concurrency: Option<usize>,
    /// Azure only: delay every IMDS answer by this many milliseconds [default: 0].
    #[arg(long, value_name = "MS")]
    pub delay: Option<u64>,
    /// Azure only: share of IMDS requests answered with --fail-status (0.0 to 1.0) [default: 0].
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub fail_rate: Option<f64>,
    /// Azure only: status of injected failures (IMDS documents 410 and 500) [default: 500].
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u16).range(100..=599))]
    pub fail_status: Option<u16>,
    /// Azure only: share of IMDS requests whose connection is closed without an answer (0.0 to 1.0) [default: 0].
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub drop_rate: Option<f64>,
    /// AWS only: whether GETs need an IMDSv2 session token (the instance's HttpTokens)
    /// [default: the configuration's, optional].
    #[arg(long, value_enum)]
    pub http_tokens: Option<HttpTokensArg>,
    /// AWS only: the IMDSv2 token answer's IP TTL / hop limit, 1 to 64 (HttpPutResponseHopLimit)
    /// [default: the configuration's, 2 on the built-in EKS node].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_HOP_LIMIT)))]
    pub hop_limit: Option<u8>,
    /// GCP only: the longest a wait_for_change request waits (the values never change) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub max_wait: Option<Duration>,
    /// Seed of the random source (tokens, fake credentials, fault patterns), for repeatable runs.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Request log format (standard error).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl EmulateArgs {
    /// The flags given that do not apply to `--cloud`, by name.
    fn inapplicable(&self) -> Vec<&'static str> {
        let azure = [
            ("--wireserver", self.wireserver.is_some()),
            ("--hostgaplugin", self.hostgaplugin.is_some()),
            ("--no-throttle", self.no_throttle),
            ("--instance-rate", self.instance_rate.is_some()),
            ("--identity-rate", self.identity_rate.is_some()),
            (
                "--identity-concurrency",
                self.identity_concurrency.is_some(),
            ),
            ("--delay", self.delay.is_some()),
            ("--fail-rate", self.fail_rate.is_some()),
            ("--fail-status", self.fail_status.is_some()),
            ("--drop-rate", self.drop_rate.is_some()),
        ];
        let aws = [
            ("--http-tokens", self.http_tokens.is_some()),
            ("--hop-limit", self.hop_limit.is_some()),
        ];
        let gcp = [("--max-wait", self.max_wait.is_some())];
        let mut out = Vec::new();
        for (cloud, flags) in [
            (CloudArg::Azure, &azure[..]),
            (CloudArg::Aws, &aws[..]),
            (CloudArg::Gcp, &gcp[..]),
        ] {
            if cloud != self.cloud {
                out.extend(flags.iter().filter(|(_, given)| *given).map(|(f, _)| *f));
            }
        }
        out
    }

    /// Refuses flags of another cloud than `--cloud`.
    pub(crate) fn check_cloud(&self) -> anyhow::Result<()> {
        let wrong = self.inapplicable();
        if !wrong.is_empty() {
            let cloud = imdsguard_core::target::Cloud::from(self.cloud).name();
            let owners: Vec<String> = wrong
                .iter()
                .map(|f| format!("{f} ({} only)", flag_cloud(f)))
                .collect();
            let (them, they) = if wrong.len() == 1 {
                ("it", "it belongs")
            } else {
                ("them", "they belong")
            };
            bail!(
                "{} {} not apply to --cloud {cloud}; leave {them} out or pass the --cloud {they} to",
                owners.join(", "),
                if wrong.len() == 1 { "does" } else { "do" },
            );
        }
        Ok(())
    }

    /// The Azure emulator's options these arguments stand for.
    pub(crate) fn options(&self) -> Options {
        let t = Throttle::IMDS;
        let f = Faults::default();
        Options {
            imds: self.listen.clone(),
            wireserver: self.wireserver,
            hostgaplugin: self.hostgaplugin,
            allow_metadata_address: self.allow_metadata_address,
            throttle: Throttle {
                enabled: !self.no_throttle,
                general_per_sec: self.instance_rate.unwrap_or(t.general_per_sec),
                identity_per_sec: self.identity_rate.unwrap_or(t.identity_per_sec),
                identity_concurrent: self.identity_concurrency.unwrap_or(t.identity_concurrent),
            },
            faults: Faults {
                delay: self.delay.map_or(f.delay, Duration::from_millis),
                fail_rate: self.fail_rate.unwrap_or(f.fail_rate),
                fail_status: self.fail_status.unwrap_or(f.fail_status),
                drop_rate: self.drop_rate.unwrap_or(f.drop_rate),
            },
            seed: self.seed,
            ..Options::default()
        }
    }

    /// The AWS emulator's options.
    pub(crate) fn aws_options(&self) -> AwsOptions {
        AwsOptions {
            listen: self.listen.clone(),
            allow_metadata_address: self.allow_metadata_address,
            seed: self.seed,
            ..AwsOptions::default()
        }
    }

    /// The emulated EC2 instance: `--config` or the EKS node, with `--http-tokens` and
    /// `--hop-limit` over it.
    pub(crate) fn aws_config(&self) -> anyhow::Result<AwsConfig> {
        let mut config = match &self.config {
            Some(path) => AwsConfig::load(path)?,
            None => AwsConfig::default_eks(),
        };
        if let Some(t) = self.http_tokens {
            config.http_tokens = t.into();
        }
        if let Some(h) = self.hop_limit {
            config.hop_limit = h;
        }
        Ok(config)
    }

    /// The GCE metadata server emulator's options.
    pub(crate) fn gcp_options(&self) -> GcpOptions {
        let d = GcpOptions::default();
        GcpOptions {
            listen: self.listen.clone(),
            allow_metadata_address: self.allow_metadata_address,
            seed: self.seed,
            max_wait: self.max_wait.unwrap_or(d.max_wait),
            ..d
        }
    }
}

fn flag_cloud(flag: &str) -> &'static str {
    match flag {
        "--http-tokens" | "--hop-limit" => "aws",
        "--max-wait" => "gcp",
        _ => "azure",
    }
}

/// Runs `imdsguard emulate`: prints the --cloud's default configuration, or starts its
/// emulator on a tokio runtime of its own and serves until SIGINT or SIGTERM. One line
/// per listener goes to standard output (`imds http://127.0.0.1:8169`; for GCP
/// `metadata http://...`); request logs go to standard error.
pub(crate) fn run(args: EmulateArgs) -> anyhow::Result<()> {
    args.check_cloud()?;
    match args.cloud {
        CloudArg::Azure => run_azure(args),
        CloudArg::Aws => run_aws(args),
        CloudArg::Gcp => run_gcp(args),
    }
}

fn run_azure(args: EmulateArgs) -> anyhow::Result<()> {
    if args.print_default_config {
        let _ = std::io::stdout().write_all(DEFAULT_CONFIG_YAML.as_bytes());
        return Ok(());
    }
    let options = args.options();
    options.check()?;
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default_aks(),
    };
    service::init_logging(args.log_format);
    let runtime = service::server_runtime()?;
    let result = runtime.block_on(async move {
        let mut signals = StopSignals::install()?;
        let emulator = Emulator::start(config, options).await?;
        let mut out = std::io::stdout().lock();
        for addr in emulator.imds_addrs() {
            let _ = writeln!(out, "imds http://{addr}");
        }
        if let Some(addr) = emulator.wireserver_addr() {
            let _ = writeln!(out, "wireserver http://{addr}");
        }
        if let Some(addr) = emulator.hostgaplugin_addr() {
            let _ = writeln!(out, "hostgaplugin http://{addr}");
        }
        let _ = out.flush();
        drop(out);
        signals.recv().await;
        tracing::info!("stopping");
        emulator.shutdown().await;
        Ok(())
    });
    service::flush_logs();
    result
}

/// Writes one `NAME http://ADDR` line per listener (IPv6 in brackets) and flushes.
fn print_addrs(name: &str, addrs: &[SocketAddr]) {
    let mut out = std::io::stdout().lock();
    for addr in addrs {
        let _ = writeln!(out, "{name} http://{addr}");
    }
    let _ = out.flush();
}

fn run_aws(args: EmulateArgs) -> anyhow::Result<()> {
    let config = args.aws_config()?;
    if args.print_default_config {
        let _ = std::io::stdout().write_all(config.to_yaml().as_bytes());
        return Ok(());
    }
    let options = args.aws_options();
    options.check()?;
    config
        .check()
        .map_err(|m| anyhow::anyhow!("invalid AWS instance configuration: {m}"))?;
    serve_until_signal(
        args.log_format,
        "imds",
        AwsEmulator::start(config, options),
        AwsEmulator::local_addrs,
        AwsEmulator::shutdown,
    )
}

fn run_gcp(args: EmulateArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => GcpConfig::load(path)?,
        None => GcpConfig::default_gke(),
    };
    if args.print_default_config {
        let _ = std::io::stdout().write_all(config.to_yaml().as_bytes());
        return Ok(());
    }
    let options = args.gcp_options();
    options.check()?;
    serve_until_signal(
        args.log_format,
        "metadata",
        GcpEmulator::start(config, options),
        GcpEmulator::local_addrs,
        GcpEmulator::shutdown,
    )
}

/// Runs an AWS or GCP emulator (`start`, not yet polled) until SIGINT or SIGTERM: logging
/// and runtime set up, one `NAME http://ADDR` line per listener, then a graceful stop.
fn serve_until_signal<E, D>(
    log_format: LogFormat,
    name: &str,
    start: impl Future<Output = Result<E, EmulatorError>>,
    addrs: fn(&E) -> &[SocketAddr],
    shutdown: impl FnOnce(E) -> D,
) -> anyhow::Result<()>
where
    D: Future<Output = ()>,
{
    service::init_logging(log_format);
    let runtime = service::server_runtime()?;
    let result = runtime.block_on(async move {
        let mut signals = StopSignals::install()?;
        let emulator = start.await?;
        print_addrs(name, addrs(&emulator));
        signals.recv().await;
        tracing::info!("stopping");
        shutdown(emulator).await;
        Ok(())
    });
    service::flush_logs();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulateArgs,
    }

    #[test]
    fn argument_defaults_are_loopback_and_imds_limits() {
        let cli = Cli::try_parse_from(["emulate"]).unwrap();
        let o = cli.args.options();
        assert_eq!(
            o.imds,
            vec![DEFAULT_IMDS_LISTEN.parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(o.throttle, Throttle::IMDS);
        assert_eq!(o.faults, Faults::default());
        assert!(o.check().is_ok());
    }

    #[test]
    fn arguments_map_to_options() {
        let cli = Cli::try_parse_from([
            "emulate",
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--wireserver",
            "127.0.0.1:3",
            "--no-throttle",
            "--delay",
            "25",
            "--fail-rate",
            "0.5",
            "--fail-status",
            "410",
            "--drop-rate",
            "0.25",
            "--seed",
            "9",
        ])
        .unwrap();
        let o = cli.args.options();
        assert_eq!(o.imds.len(), 2);
        assert!(!o.throttle.enabled);
        assert_eq!(o.faults.delay, Duration::from_millis(25));
        assert_eq!(
            (o.faults.fail_rate, o.faults.fail_status, o.faults.drop_rate),
            (0.5, 410, 0.25)
        );
        assert_eq!(o.seed, Some(9));
        assert!(Cli::try_parse_from(["emulate", "--fail-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["emulate", "--fail-status", "42"]).is_err());
        for rate in ["0", "-1", "NaN", "inf"] {
            let flag = format!("--identity-rate={rate}");
            let cli = Cli::try_parse_from(["emulate", flag.as_str()]).unwrap();
            assert!(
                matches!(cli.args.options().check(), Err(EmulatorError::Option(_))),
                "{rate}"
            );
        }
        let cli = Cli::try_parse_from(["emulate", "--no-throttle", "--instance-rate", "NaN"]);
        assert!(
            cli.unwrap().args.options().check().is_ok(),
            "unused when off"
        );
    }

    #[test]
    fn each_cloud_takes_its_own_flags_only() {
        let parse = |args: &[&str]| {
            let mut all = vec!["emulate"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().args
        };
        assert_eq!(parse(&[]).cloud, CloudArg::Azure, "azure by default");
        assert!(
            parse(&["--wireserver", "127.0.0.1:1", "--no-throttle"])
                .check_cloud()
                .is_ok()
        );
        let a = parse(&[
            "--cloud",
            "aws",
            "--wireserver",
            "127.0.0.1:1",
            "--delay",
            "5",
        ]);
        assert_eq!(a.inapplicable(), ["--wireserver", "--delay"]);
        let e = a.check_cloud().unwrap_err().to_string();
        assert!(
            e.contains("--wireserver (azure only), --delay (azure only)")
                && e.contains("--cloud aws"),
            "{e}"
        );
        let e = parse(&["--hop-limit", "3"])
            .check_cloud()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--hop-limit (aws only)") && e.contains("--cloud azure"),
            "{e}"
        );
        let g = parse(&[
            "--cloud",
            "gcp",
            "--max-wait",
            "2s",
            "--http-tokens",
            "required",
        ]);
        assert_eq!(g.inapplicable(), ["--http-tokens"]);
        assert_eq!(g.gcp_options().max_wait, Duration::from_secs(2));
        // Every flag of one cloud is named with its cloud.
        for (flag, cloud) in [
            ("--max-wait", "gcp"),
            ("--http-tokens", "aws"),
            ("--drop-rate", "azure"),
        ] {
            assert_eq!(flag_cloud(flag), cloud);
        }
    }

    #[test]
    fn aws_arguments_map_to_the_instance_and_options() {
        let cli = Cli::try_parse_from([
            "emulate",
            "--cloud",
            "aws",
            "--listen",
            "[::1]:0",
            "--seed",
            "5",
            "--http-tokens",
            "required",
            "--hop-limit",
            "1",
        ])
        .unwrap();
        let a = cli.args;
        assert!(a.check_cloud().is_ok());
        let o = a.aws_options();
        assert_eq!(o.listen, vec!["[::1]:0".parse::<SocketAddr>().unwrap()]);
        assert_eq!(o.seed, Some(5));
        let c = a.aws_config().unwrap();
        assert_eq!((c.http_tokens, c.hop_limit), (HttpTokens::Required, 1));
        let default = Cli::try_parse_from(["emulate", "--cloud", "aws"])
            .unwrap()
            .args;
        assert_eq!(default.aws_config().unwrap(), AwsConfig::default_eks());
        for bad in ["0", "65", "x"] {
            assert!(
                Cli::try_parse_from(["emulate", "--cloud", "aws", "--hop-limit", bad]).is_err()
            );
        }
        let cli = Cli::try_parse_from([
            "emulate",
            "--cloud",
            "aws",
            "--listen",
            "[fd00:ec2::254]:80",
        ]);
        assert!(matches!(
            cli.unwrap().args.aws_options().check(),
            Err(EmulatorError::MetadataAddress(_))
        ));
    }

    #[test]
    fn metadata_addresses_are_refused_before_anything_runs() {
        let cli =
            Cli::try_parse_from(["emulate", "--hostgaplugin", "168.63.129.16:32526"]).unwrap();
        assert!(matches!(
            cli.args.options().check(),
            Err(EmulatorError::MetadataAddress(_))
        ));
        // run() refuses before building a runtime or binding.
        let e = run(cli.args).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<EmulatorError>(),
                Some(EmulatorError::MetadataAddress(_))
            ),
            "{e}"
        );
    }
}
