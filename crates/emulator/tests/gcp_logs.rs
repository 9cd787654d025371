//! The GCE emulator's request log, alone in its test binary: tracing caches whether a
//! callsite is enabled, and another test's requests on a thread without the capturing
//! subscriber would race this one's.

mod common;

use std::net::SocketAddr;

use common::{Reply, send};
use imdsguard_emulator::gcp::{GcpConfig, GcpEmulator, GcpOptions};

const F: (&str, &str) = ("Metadata-Flavor", "Google");
const V1: &str = "/computeMetadata/v1";

async fn start(seed: u64) -> GcpEmulator {
    let options = GcpOptions {
        seed: Some(seed),
        ..GcpOptions::default()
    };
    GcpEmulator::start(GcpConfig::default_gke(), options)
        .await
        .expect("the emulator starts on loopback")
}

async fn req(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, method, target, headers, b"")
        .await
        .expect("an answer")
}

#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_name_the_request_never_a_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // A current-thread runtime keeps every task on this thread, under the subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secrets = rt.block_on(async {
        let e = start(9).await;
        let a = e.local_addr();
        let token = req(
            a,
            "GET",
            &format!("{V1}/instance/service-accounts/default/token"),
            &[F],
        )
        .await
        .json()["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        let id = req(
            a,
            "GET",
            &format!("{V1}/instance/service-accounts/default/identity?audience=secret-audience"),
            &[F],
        )
        .await
        .text()
        .to_string();
        let kube_env = req(
            a,
            "GET",
            &format!("{V1}/instance/attributes/kube-env"),
            &[F],
        )
        .await
        .text()
        .to_string();
        let recursive = req(a, "GET", &format!("{V1}/?recursive=true"), &[F])
            .await
            .text()
            .to_string();
        assert!(recursive.contains("KUBELET_KEY"));
        e.shutdown().await;
        let key = kube_env
            .lines()
            .find_map(|l| l.strip_prefix("KUBELET_KEY: "))
            .unwrap()
            .to_string();
        vec![token, id, key, "secret-audience".to_string()]
    });
    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" request")).collect();
    assert_eq!(lines.len(), 4, "{log}");
    assert!(
        lines[0].contains("kind=\"token\"") || lines[0].contains("kind=token"),
        "{log}"
    );
    assert!(lines[0].contains("status=200"), "{log}");
    for secret in &secrets {
        for part in secret.split('.') {
            assert!(
                part.len() < 8 || !log.contains(part),
                "a secret in the log: {log}"
            );
        }
    }
}
