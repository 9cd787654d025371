//! The admin listener (`imdsguard-serve`'s admin endpoints): `/metrics` (OpenMetrics
//! text), `/healthz` (the process answers), `/readyz` (rules loaded, at least one unless
//! allowed, and the owner's readiness condition holds; the body says how many rules and
//! pod addresses are loaded).

use imdsguard_serve::admin::{AdminSource, Readiness};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ProxyControl;

pub(crate) async fn serve(
    listener: TcpListener,
    control: ProxyControl,
    shutdown: watch::Receiver<bool>,
) {
    let metrics = control.clone();
    let source = AdminSource::new(
        move || metrics.metrics().encode(),
        move || Readiness {
            ready: control.readiness(),
            summary: control.summary(),
        },
    );
    imdsguard_serve::admin::serve(listener, source, shutdown).await;
}
