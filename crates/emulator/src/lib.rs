//! imdsguard-emulator: an Azure IMDS, WireServer and host GA plugin look-alike, for tests
//! and the lab.
//!
//! The protocol rules come from [`imdsguard_core::imds`]; this crate adds the HTTP
//! server (hyper 1 on tokio), the emulated VM ([`Config`]), tokens that look like Entra ID
//! tokens (fake signatures), IMDS's throttling ([`Throttle`]) and injected faults
//! ([`Faults`]).
//!
//! It listens on loopback by default and refuses a metadata address (169.254.169.254,
//! 168.63.129.16) unless [`Options::allow_metadata_address`] is set, which only a lab's
//! own network namespace should do. It never connects anywhere.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imdsguard_emulator::EmulatorError> {
//! use imdsguard_emulator::{Config, Emulator, Options, Throttle};
//! let options = Options { throttle: Throttle::disabled(), ..Options::default() }; // 127.0.0.1:0
//! let emulator = Emulator::start(Config::default_aks(), options).await?;
//! println!("IMDS at http://{}", emulator.local_addr());
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

mod config;
mod imds_service;
mod jwt;
mod limits;
mod rng;
mod server;
mod wire;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imdsguard_core::imds::is_metadata_address;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{
    Config, DEFAULT_CONFIG_YAML, ExtensionConfig, HostGaPluginConfig, Identities, Identity,
    WireServerConfig,
};
pub use limits::{Faults, Throttle};
pub use wire::WIRESERVER_VERSION;

use imds_service::ImdsState;
use server::Role;
use wire::WireState;

/// The IMDS listen address of `imdsguard emulate` when none is given.
pub const DEFAULT_IMDS_LISTEN: &str = "127.0.0.1:8169";

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A listen address is a metadata address and the caller did not allow it.
    #[error(
        "refusing to listen on {0}: it is a cloud metadata address; pass --allow-metadata-address only inside a lab network namespace"
    )]
    MetadataAddress(SocketAddr),
    /// Binding a listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not a valid configuration.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Option(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Refuses a metadata address (169.254.169.254, 168.63.129.16, fd00:ec2::254, also
/// IPv4-mapped) unless `allow_metadata_address`. Called for every address before any is
/// bound.
pub fn check_listen_addr(
    addr: SocketAddr,
    allow_metadata_address: bool,
) -> Result<(), EmulatorError> {
    if is_metadata_address(addr.ip()) && !allow_metadata_address {
        return Err(EmulatorError::MetadataAddress(addr));
    }
    Ok(())
}

/// Where the emulator listens and how it misbehaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// IMDS listen addresses (at least one).
    pub imds: Vec<SocketAddr>,
    /// WireServer listen address (`/machine/?comp=goalstate`, `/?comp=versions`).
    pub wireserver: Option<SocketAddr>,
    /// Host GA plugin listen address (`/vmSettings`, `/health`).
    pub hostgaplugin: Option<SocketAddr>,
    /// Allow listening on a metadata address (lab network namespaces only).
    pub allow_metadata_address: bool,
    /// IMDS throttling.
    pub throttle: Throttle,
    /// Injected faults (IMDS listener only).
    pub faults: Faults,
    /// Seed of the random source (faults, token bytes); `None` seeds from the clock.
    pub seed: Option<u64>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for Options {
    /// IMDS on `127.0.0.1:0` (an ephemeral port), no WireServer, IMDS's throttling, no
    /// faults.
    fn default() -> Self {
        Options {
            imds: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            wireserver: None,
            hostgaplugin: None,
            allow_metadata_address: false,
            throttle: Throttle::IMDS,
            faults: Faults::default(),
            seed: None,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl Options {
    /// Checks ranges and refuses metadata addresses (see [`check_listen_addr`]).
    pub fn check(&self) -> Result<(), EmulatorError> {
        if self.imds.is_empty() {
            return Err(EmulatorError::Option(
                "at least one IMDS listen address is needed".into(),
            ));
        }
        for (name, rate) in [
            ("fail-rate", self.faults.fail_rate),
            ("drop-rate", self.faults.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(EmulatorError::Option(format!(
                    "--{name} must be between 0.0 and 1.0"
                )));
            }
        }
        if !(100..=599).contains(&self.faults.fail_status) {
            return Err(EmulatorError::Option(
                "--fail-status must be an HTTP status (100-599)".into(),
            ));
        }
        let t = &self.throttle;
        // `!(r > 0.0)` also refuses NaN; an infinite rate would never throttle.
        let bad_rate = |r: f64| !(r > 0.0 && r.is_finite());
        if t.enabled
            && (bad_rate(t.general_per_sec)
                || bad_rate(t.identity_per_sec)
                || t.identity_concurrent == 0)
        {
            return Err(EmulatorError::Option(
                "throttle rates must be positive numbers and concurrency at least 1".into(),
            ));
        }
        let all = self
            .imds
            .iter()
            .chain(&self.wireserver)
            .chain(&self.hostgaplugin);
        for addr in all {
            check_listen_addr(*addr, self.allow_metadata_address)?;
        }
        Ok(())
    }
}

/// A running emulator. Dropping it stops the listeners; [`Emulator::shutdown`] also
/// waits for them.
pub struct Emulator {
    imds: Vec<SocketAddr>,
    wireserver: Option<SocketAddr>,
    hostgaplugin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Emulator {
    /// Checks `options` (metadata addresses are refused before anything is bound),
    /// binds every listener, and serves `config` until shutdown. Needs a tokio runtime
    /// with IO and timers enabled.
    pub async fn start(config: Config, options: Options) -> Result<Emulator, EmulatorError> {
        options.check()?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| EmulatorError::Bind { addr, source })
        };
        let mut imds_listeners = Vec::new();
        for addr in &options.imds {
            imds_listeners.push(bind(*addr).await?);
        }
        let wire_listener = match options.wireserver {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let hostga_listener = match options.hostgaplugin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let local = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        for l in imds_listeners
            .iter()
            .chain(&wire_listener)
            .chain(&hostga_listener)
        {
            if local(l).ip().is_unspecified() {
                tracing::warn!(addr = %local(l), "listening on every interface");
            }
        }

        let rng = Arc::new(rng::Rng::new(options.seed));
        let imds_state = Arc::new(ImdsState {
            scheduled: Mutex::new(config.scheduled_events.clone()),
            limiter: limits::Limiter::new(options.throttle),
            faults: options.faults,
            rng,
            config: config.clone(),
        });
        let wire_state = Arc::new(WireState { config });

        let imds = imds_listeners.iter().map(local).collect();
        let wireserver = wire_listener.as_ref().map(local);
        let hostgaplugin = hostga_listener.as_ref().map(local);
        let (stop, stop_rx) = watch::channel(false);
        let grace = options.shutdown_grace;
        let mut tasks = JoinSet::new();
        let mut spawn = |listener: TcpListener, role: Role| {
            tracing::info!(addr = %local(&listener), listener = role.name(), "listening");
            tasks.spawn(server::serve(listener, role, stop_rx.clone(), grace));
        };
        for l in imds_listeners {
            spawn(l, Role::Imds(imds_state.clone()));
        }
        if let Some(l) = wire_listener {
            spawn(l, Role::WireServer(wire_state.clone()));
        }
        if let Some(l) = hostga_listener {
            spawn(l, Role::HostGaPlugin(wire_state));
        }
        Ok(Emulator {
            imds,
            wireserver,
            hostgaplugin,
            stop,
            tasks,
        })
    }

    /// The first IMDS listen address (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.imds[0]
    }

    /// Every IMDS listen address.
    pub fn imds_addrs(&self) -> &[SocketAddr] {
        &self.imds
    }

    /// The WireServer listen address, if any.
    pub fn wireserver_addr(&self) -> Option<SocketAddr> {
        self.wireserver
    }

    /// The host GA plugin listen address, if any.
    pub fn hostgaplugin_addr(&self) -> Option<SocketAddr> {
        self.hostgaplugin
    }

    /// Stops accepting, lets requests in flight finish (within the grace period), and
    /// waits for every listener to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Log line format of `imdsguard emulate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

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
pub struct EmulateArgs {
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
    pub fn options(&self) -> Options {
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

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Another subscriber (the CLI's) may already be installed: keep it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs `imdsguard emulate`: prints the default configuration, or starts the emulator
/// on a tokio runtime of its own and serves until SIGINT or SIGTERM. One line per
/// listener goes to standard output (`imds http://127.0.0.1:8169`); request logs go to
/// standard error.
pub fn run(args: EmulateArgs) -> Result<(), EmulatorError> {
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
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(EmulatorError::Runtime)?;
    runtime.block_on(async move {
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
        wait_for_stop_signal().await;
        tracing::info!("stopping");
        emulator.shutdown().await;
        Ok(())
    })
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
    fn metadata_addresses_are_refused_unless_allowed() {
        for addr in [
            "169.254.169.254:80",
            "168.63.129.16:80",
            "168.63.129.16:32526",
            "[::ffff:169.254.169.254]:80",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert!(
                matches!(check_listen_addr(addr, false), Err(EmulatorError::MetadataAddress(a)) if a == addr)
            );
            assert!(check_listen_addr(addr, true).is_ok());
        }
        assert!(check_listen_addr("127.0.0.1:8169".parse().unwrap(), false).is_ok());
        let cli =
            Cli::try_parse_from(["emulate", "--hostgaplugin", "168.63.129.16:32526"]).unwrap();
        assert!(matches!(
            cli.args.options().check(),
            Err(EmulatorError::MetadataAddress(_))
        ));
        // run() refuses before building a runtime or binding.
        assert!(matches!(
            run(cli.args),
            Err(EmulatorError::MetadataAddress(_))
        ));
    }
}
