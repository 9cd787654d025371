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

use imdsguard_serve::{Open, ServeOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{FAKE_SECRET_PLACEHOLDER, GcpConfig, NetworkInterface, ServiceAccount};

use crate::{EmulatorError, check_listen_addr};
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
        if self.listen.is_empty() {
            return Err(EmulatorError::Option(
                "at least one listen address is needed".into(),
            ));
        }
        for addr in &self.listen {
            check_listen_addr(*addr, self.allow_metadata_address)?;
            if imdsguard_core::gcp::is_metadata_ip(addr.ip()) && !self.allow_metadata_address {
                return Err(EmulatorError::MetadataAddress(*addr));
            }
        }
        Ok(())
    }
}

/// A running GCE metadata server emulator. Dropping it stops the listeners;
/// [`GcpEmulator::shutdown`] also waits for them.
pub struct GcpEmulator {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
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
        let mut listeners = Vec::new();
        for addr in &options.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| EmulatorError::Bind {
                    addr: *addr,
                    source,
                })?;
            listeners.push(l);
        }
        let local = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        let rng = Arc::new(crate::rng::Rng::new(options.seed));
        let tree = tree::build(&config, &rng);
        let state = Arc::new(GcpState {
            config,
            tree,
            rng,
            max_wait: options.max_wait,
        });
        let addrs: Vec<SocketAddr> = listeners.iter().map(local).collect();
        let (stop, stop_rx) = watch::channel(false);
        let serve_options = ServeOptions {
            header_read: Duration::from_secs(30),
            max_header_size: None,
            max_connections: usize::MAX,
            grace: options.shutdown_grace,
        };
        let mut tasks = JoinSet::new();
        for l in listeners {
            let addr = local(&l);
            if addr.ip().is_unspecified() {
                tracing::warn!(%addr, "listening on every interface");
            }
            tracing::info!(%addr, listener = "gcp", "listening");
            tasks.spawn(imdsguard_serve::serve(
                l,
                state.clone(),
                Open,
                serve_options,
                stop_rx.clone(),
            ));
        }
        Ok(GcpEmulator { addrs, stop, tasks })
    }

    /// The first listen address (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listen address, in the order of [`GcpOptions::listen`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, lets requests in flight finish (within the grace period), and
    /// waits for every listener to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for GcpEmulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
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
