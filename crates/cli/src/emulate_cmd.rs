//! `imdsguard emulate`: the arguments of the emulator and its process (logging,
//! runtime, signals); the emulator itself is `imdsguard-emulator`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use imdsguard_emulator::{
    Config, DEFAULT_CONFIG_YAML, DEFAULT_IMDS_LISTEN, Emulator, Faults, Options, Throttle,
};

use crate::service::{self, LogFormat, StopSignals};

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`{s}` is not between 0.0 and 1.0"))
    }
}

/// `imdsguard emulate`: run the IMDS / WireServer emulator (loopback by default).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EmulateArgs {
    /// IMDS listen address; repeat for several.
    #[arg(long = "listen", value_name = "ADDR:PORT", default_value = DEFAULT_IMDS_LISTEN)]
    pub listen: Vec<SocketAddr>,
    /// Also serve WireServer (goal state) on this address, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR:PORT")]
    pub wireserver: Option<SocketAddr>,
    /// Also serve the host GA plugin (/vmSettings) on this address, e.g. 127.0.0.1:32526.
    #[arg(long, value_name = "ADDR:PORT")]
    pub hostgaplugin: Option<SocketAddr>,
    /// Allow listening on 169.254.169.254 or 168.63.129.16 (only inside a lab network namespace).
    #[arg(long)]
    pub allow_metadata_address: bool,
    /// The emulated VM (YAML); the default is an AKS node with made-up ids.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the default configuration (YAML) and exit.
    #[arg(long)]
    pub print_default_config: bool,
    /// Do not throttle (IMDS answers 429 past 5 requests/s, or 20/s and 5 concurrent for identity).
    #[arg(long)]
    pub no_throttle: bool,
    /// Requests per second for instance data and other non-identity paths.
    #[arg(long, value_name = "N", default_value_t = Throttle::IMDS.general_per_sec)]
    pub instance_rate: f64,
    /// Requests per second for managed-identity paths.
    #[arg(long, value_name = "N", default_value_t = Throttle::IMDS.identity_per_sec)]
    pub identity_rate: f64,
    /// Concurrent managed-identity requests.
    #[arg(long, value_name = "N", default_value_t = Throttle::IMDS.identity_concurrent)]
    pub identity_concurrency: usize,
    /// Delay every IMDS answer by this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay: u64,
    /// Share of IMDS requests answered with --fail-status (0.0 to 1.0).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub fail_rate: f64,
    /// Status of injected failures (IMDS documents 410 and 500).
    #[arg(long, value_name = "CODE", default_value_t = 500, value_parser = clap::value_parser!(u16).range(100..=599))]
    pub fail_status: u16,
    /// Share of IMDS requests whose connection is closed without an answer (0.0 to 1.0).
    #[arg(long, value_name = "SHARE", default_value_t = 0.0, value_parser = parse_share)]
    pub drop_rate: f64,
    /// Seed of the random source, for repeatable fault patterns.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Request log format (standard error).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl EmulateArgs {
    /// The library options these arguments stand for.
    pub(crate) fn options(&self) -> Options {
        Options {
            imds: self.listen.clone(),
            wireserver: self.wireserver,
            hostgaplugin: self.hostgaplugin,
            allow_metadata_address: self.allow_metadata_address,
            throttle: Throttle {
                enabled: !self.no_throttle,
                general_per_sec: self.instance_rate,
                identity_per_sec: self.identity_rate,
                identity_concurrent: self.identity_concurrency,
            },
            faults: Faults {
                delay: Duration::from_millis(self.delay),
                fail_rate: self.fail_rate,
                fail_status: self.fail_status,
                drop_rate: self.drop_rate,
            },
            seed: self.seed,
            ..Options::default()
        }
    }
}

/// Runs `imdsguard emulate`: prints the default configuration, or starts the emulator
/// on a tokio runtime of its own and serves until SIGINT or SIGTERM. One line per
/// listener goes to standard output (`imds http://127.0.0.1:8169`); request logs go to
/// standard error.
pub(crate) fn run(args: EmulateArgs) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use imdsguard_emulator::EmulatorError;

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
