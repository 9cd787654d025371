//! A GCE metadata server emulator, built on [`imdsguard_core::gcp`].
//!
//! It answers `/computeMetadata/v1/...` like the metadata server of a GKE node: the
//! `Metadata-Flavor: Google` header required and echoed, directory listings,
//! `?recursive=true` (JSON with camelCase keys, or `alt=text`), `wait_for_change`
//! (answered promptly: the emulated values never change), the service accounts with
//! `token` (`ya29.` access tokens) and `identity?audience=` (JWT-shaped identity tokens,
//! fake signatures), the instance and project attributes with `kube-env`, and the
//! legacy endpoints as shut down (404). docs/emulator-gcp.md says what is emulated and
//! cites the documentation of each behaviour.
//!
//! It listens on loopback by default and refuses a metadata address (169.254.169.254,
//! fd20:ce::254, ...) unless [`GcpOptions::allow_metadata_address`] is set, which only a
//! lab's own network namespace should do. It never connects anywhere. Everything secret
//! it serves (tokens, kube-env's credentials) is fake and drawn from a source seeded by
//! [`GcpOptions::seed`]; request logs hold the path, never the query nor a body.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imdsguard_emulator::EmulatorError> {
//! use imdsguard_emulator::gcp::{GcpConfig, GcpEmulator, GcpOptions};
//! let emulator = GcpEmulator::start(GcpConfig::default_gke(), GcpOptions::default()).await?;
//! println!("metadata server at http://{}", emulator.local_addr());
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

mod config;
mod service;
mod tree;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imdsguard_serve::Open;

pub use config::{FAKE_SECRET_PLACEHOLDER, GcpConfig, NetworkInterface, ServiceAccount};

use crate::EmulatorError;
use crate::listeners::{self, Listeners};
use service::GcpState;

/// The listen address of `imdsguard emulate --cloud gcp` when none is given.
pub const DEFAULT_GCP_LISTEN: &str = "127.0.0.1:8169";

/// Where the emulator listens and how it behaves.
#[derive(Debug, Clone)]
pub struct GcpOptions {
    /// Listen addresses (at least one; IPv4 and IPv6 alike).
    pub listen: Vec<SocketAddr>,
    /// Allow listening on a metadata address (lab network namespaces only).
    pub allow_metadata_address: bool,
    /// Seed of the random source (tokens, kube-env's fake credentials); `None` seeds
    /// from the clock.
    pub seed: Option<u64>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// The longest a `wait_for_change` request waits (the emulated values never change,
    /// so it is answered after `timeout_sec` or this, whichever is shorter).
    pub max_wait: Duration,
}

impl Default for GcpOptions {
    /// `127.0.0.1:0` (an ephemeral port), metadata addresses refused, clock seed, 5 s
    /// grace, `wait_for_change` answered within 1 s.
    fn default() -> Self {
        GcpOptions {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            allow_metadata_address: false,
            seed: None,
            shutdown_grace: Duration::from_secs(5),
            max_wait: Duration::from_secs(1),
        }
    }
}

impl GcpOptions {
    /// Checks the options: at least one listen address, and no metadata address
    /// (Azure's, AWS's, GCE's, also IPv4-mapped) unless allowed.
    pub fn check(&self) -> Result<(), EmulatorError> {
        listeners::check_listen(
            &self.listen,
            self.allow_metadata_address,
            imdsguard_core::gcp::is_metadata_ip,
        )
    }
}

/// A running GCE metadata server emulator. Dropping it stops the listeners;
/// [`GcpEmulator::shutdown`] also waits for them.
pub struct GcpEmulator {
    listeners: Listeners,
}

impl GcpEmulator {
    /// Checks `config` and `options` (metadata addresses are refused before anything is
    /// bound), binds every listener and serves `config` until shutdown. Needs a tokio
    /// runtime with IO and timers enabled.
    pub async fn start(
        config: GcpConfig,
        options: GcpOptions,
    ) -> Result<GcpEmulator, EmulatorError> {
        options.check()?;
        config
            .check()
            .map_err(|m| EmulatorError::Option(format!("invalid GCP configuration: {m}")))?;
        let bound = listeners::bind_all(&options.listen).await?;
        let rng = Arc::new(crate::rng::Rng::new(options.seed));
        let tree = tree::build(&config, &rng);
        let state = Arc::new(GcpState {
            config,
            tree,
            rng,
            max_wait: options.max_wait,
        });
        let mut listeners = Listeners::new(options.shutdown_grace);
        for l in bound {
            listeners.serve("gcp", l, state.clone(), Open);
        }
        Ok(GcpEmulator { listeners })
    }

    /// The first listen address (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.addrs()[0]
    }

    /// Every listen address, in the order of [`GcpOptions::listen`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.listeners.addrs()
    }

    /// Stops accepting, lets requests in flight finish (within the grace period), and
    /// waits for every listener to end.
    pub async fn shutdown(self) {
        self.listeners.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_loopback() {
        let o = GcpOptions::default();
        assert_eq!(o.listen, vec![SocketAddr::from(([127, 0, 0, 1], 0))]);
        assert!(o.check().is_ok());
    }

    #[test]
    fn metadata_addresses_are_refused_unless_allowed() {
        for addr in [
            "169.254.169.254:80",
            "[fd20:ce::254]:80",
            "[::ffff:169.254.169.254]:80",
            "168.63.129.16:80",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut o = GcpOptions {
                listen: vec![addr],
                ..GcpOptions::default()
            };
            assert!(
                matches!(o.check(), Err(EmulatorError::MetadataAddress(a)) if a == addr),
                "{addr}"
            );
            o.allow_metadata_address = true;
            assert!(o.check().is_ok(), "{addr}");
        }
        let o = GcpOptions {
            listen: vec![],
            ..GcpOptions::default()
        };
        assert!(matches!(o.check(), Err(EmulatorError::Option(_))));
    }
}
