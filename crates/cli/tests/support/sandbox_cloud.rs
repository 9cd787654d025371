//! The emulator in a sandbox node's cloud namespace (`imdsguard_node::sandbox`), on the
//! real IMDS address there: what the tests that run `imdsguard agent run` on the sandbox
//! node (`agent_netns`, `report`) talk to. Stopped on drop.

use std::net::SocketAddr;
use std::time::Duration;

use imdsguard_core::imds::IMDS_ADDRESS;
use imdsguard_emulator::{Config, Emulator, Options, Throttle};
use imdsguard_node::netns::NetNamespace;

/// The running emulator; stopped (and its thread joined) on drop.
pub struct Cloud {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), imdsguard_node::NodeError>>>,
}

impl Cloud {
    /// Starts the emulator in `cloud` (unthrottled, seeded) and waits until it listens.
    pub fn start(cloud: &NetNamespace) -> Cloud {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = cloud.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let options = Options {
                    imds: vec![SocketAddr::new(IMDS_ADDRESS.into(), 80)],
                    allow_metadata_address: true,
                    throttle: Throttle::disabled(),
                    seed: Some(4),
                    shutdown_grace: Duration::from_millis(100),
                    ..Options::default()
                };
                let emulator = Emulator::start(Config::default_aks(), options)
                    .await
                    .expect("the emulator starts");
                ready_tx.send(()).expect("the test waits");
                let _ = stop_rx.await;
                emulator.shutdown().await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the emulator is ready");
        Cloud {
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
