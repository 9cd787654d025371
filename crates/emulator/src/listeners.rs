//! What the AWS and GCP emulators share: their listen addresses checked and bound
//! before any is served, and a handle on the listeners (addresses, stop, tasks).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use imdsguard_serve::{Gate, Handler, ServeOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::{EmulatorError, check_listen_addr};

/// Refuses an empty `listen` list, and, unless `allow_metadata_address`, any address
/// [`check_listen_addr`] refuses or `also_metadata` says is a metadata address.
pub(crate) fn check_listen(
    listen: &[SocketAddr],
    allow_metadata_address: bool,
    also_metadata: impl Fn(IpAddr) -> bool,
) -> Result<(), EmulatorError> {
    if listen.is_empty() {
        return Err(EmulatorError::Option(
            "at least one listen address is needed".into(),
        ));
    }
    for addr in listen {
        check_listen_addr(*addr, allow_metadata_address)?;
        if also_metadata(addr.ip()) && !allow_metadata_address {
            return Err(EmulatorError::MetadataAddress(*addr));
        }
    }
    Ok(())
}

/// Binds every address, in order, before anything is served.
pub(crate) async fn bind_all(listen: &[SocketAddr]) -> Result<Vec<TcpListener>, EmulatorError> {
    let mut listeners = Vec::new();
    for addr in listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: *addr,
                source,
            })?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Listeners being served, stopped when this is dropped.
pub(crate) struct Listeners {
    addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    tasks: JoinSet<()>,
    grace: Duration,
}

impl Listeners {
    /// None yet; shutdown waits `grace` for requests in flight.
    pub(crate) fn new(grace: Duration) -> Listeners {
        let (stop, stop_rx) = watch::channel(false);
        Listeners {
            addrs: Vec::new(),
            stop,
            stop_rx,
            tasks: JoinSet::new(),
            grace,
        }
    }

    /// Serves `listener` (logged as `name`) with `handler` behind `gate`.
    pub(crate) fn serve<H: Handler, G: Gate>(
        &mut self,
        name: &'static str,
        listener: TcpListener,
        handler: Arc<H>,
        gate: G,
    ) {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        if addr.ip().is_unspecified() {
            tracing::warn!(%addr, "listening on every interface");
        }
        tracing::info!(%addr, listener = name, "listening");
        self.addrs.push(addr);
        let options = ServeOptions {
            header_read: Duration::from_secs(30),
            max_header_size: None,
            max_connections: usize::MAX,
            grace: self.grace,
        };
        self.tasks.spawn(imdsguard_serve::serve(
            listener,
            handler,
            gate,
            options,
            self.stop_rx.clone(),
        ));
    }

    /// Every listen address, in the order served (with the real port when `:0` was
    /// asked for).
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, lets requests in flight finish (within the grace period), and
    /// waits for every listener to end.
    pub(crate) async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
