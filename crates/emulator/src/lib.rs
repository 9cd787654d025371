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

pub mod aws;
mod config;
pub mod gcp;
mod imds_service;
mod jwt;
mod limits;
mod listeners;
mod rng;
mod server;
mod wire;

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
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_loopback_and_imds_limits() {
        let o = Options::default();
        assert_eq!(o.imds, vec![SocketAddr::from(([127, 0, 0, 1], 0))]);
        assert_eq!(o.throttle, Throttle::IMDS);
        assert_eq!(o.faults, Faults::default());
        assert!(o.check().is_ok());
    }

    #[test]
    fn out_of_range_options_are_refused() {
        let mut o = Options::default();
        o.faults.fail_rate = 1.5;
        assert!(matches!(o.check(), Err(EmulatorError::Option(_))));
        let mut o = Options::default();
        o.faults.fail_status = 42;
        assert!(matches!(o.check(), Err(EmulatorError::Option(_))));
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut o = Options::default();
            o.throttle.identity_per_sec = rate;
            assert!(matches!(o.check(), Err(EmulatorError::Option(_))), "{rate}");
        }
        let mut o = Options {
            throttle: Throttle::disabled(),
            ..Options::default()
        };
        o.throttle.general_per_sec = f64::NAN;
        assert!(o.check().is_ok(), "unused when off");
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
        let o = Options {
            hostgaplugin: Some("168.63.129.16:32526".parse().unwrap()),
            ..Options::default()
        };
        assert!(matches!(o.check(), Err(EmulatorError::MetadataAddress(_))));
    }
}
