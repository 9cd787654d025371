//! Fairness benchmark: another pod's latency through the proxy while one pod holds a
//! slowloris of many connections (docs/benchmarks.md, "Proxy fairness").
//!
//! The emulator (unthrottled) and the proxy run in this process on runtimes of their
//! own, on 127.0.0.1. The victim pod (127.0.0.3) sends `GET /metadata/versions` at a
//! fixed rate, each request on a new connection as `curl` does, and the latency of
//! every request is recorded (from the scheduled send to the whole answer, so a stall
//! is not hidden). It runs twice: alone (the baseline), then while the attacker pod
//! (127.0.0.2) keeps `--attackers` connections open that send one header line a second
//! and never finish (reopening any the proxy closes, once a second, as slowloris does).
//!
//! Loopback only: run it through `bench-fairness.sh`, which gives it a network
//! namespace of its own. It refuses to run where an interface other than `lo` exists.
//!
//! ```sh
//! crates/proxy/examples/bench-fairness.sh
//! cargo run --release -p imdsguard-proxy --example bench-fairness -- \
//!     --attackers 1000 --rate 200 --seconds 5 [--per-source 1024]
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imdsguard_core::access::{AccessRules, PodIndex};
use imdsguard_emulator::{Config, Emulator, Options, Throttle};
use imdsguard_proxy::{PodRate, Proxy, ProxyConfig, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const VICTIM: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

struct Args {
    attackers: usize,
    rate: u32,
    seconds: u64,
    per_source: usize,
    max_connections: usize,
}

fn args() -> Args {
    let mut a = Args {
        attackers: 1000,
        rate: 200,
        seconds: 5,
        per_source: imdsguard_proxy::Limits::default().max_connections_per_source,
        max_connections: imdsguard_proxy::Limits::default().max_connections,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or("");
        let n = || {
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{}: a number", pair[0]))
        };
        match pair[0].as_str() {
            "--attackers" => a.attackers = n() as usize,
            "--rate" => a.rate = n() as u32,
            "--seconds" => a.seconds = n(),
            "--per-source" => a.per_source = n() as usize,
            "--max-connections" => a.max_connections = n() as usize,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// Refuses to run outside a namespace that holds only `lo`.
fn check_isolated() {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert!(
        ifaces == ["lo"],
        "bench-fairness runs only in a network namespace holding lo alone (use bench-fairness.sh); found {ifaces:?}"
    );
}

async fn connect(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    assert!(from.is_loopback() && to.ip().is_loopback(), "loopback only");
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// One slowloris connection, kept (or reopened once a second) until `stop`.
async fn slowloris(to: SocketAddr, stop: Arc<AtomicBool>, held: Arc<AtomicUsize>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = connect(ATTACKER, to).await
            && s.write_all(b"GET /metadata/versions HTTP/1.1\r\nHost: 169.254.169.254\r\n")
                .await
                .is_ok()
        {
            held.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                // One more header line a second; a read of 0 (or an error) is a close.
                tokio::select! {
                    r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if s.write_all(b"X-Slow: 1\r\n").await.is_err() { break }
                    }
                }
            }
            held.fetch_sub(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One victim request on a new connection; the answer read whole. `Ok(true)`: 200.
async fn victim_request(to: SocketAddr) -> std::io::Result<bool> {
    let mut s = connect(VICTIM, to).await?;
    s.write_all(
        b"GET /metadata/versions HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut raw = Vec::with_capacity(512);
    s.read_to_end(&mut raw).await?;
    Ok(raw.starts_with(b"HTTP/1.1 200"))
}

struct Run {
    latencies: Vec<Duration>,
    failed: usize,
}

impl Run {
    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// The victim at `rate` requests/s for `seconds`, each request bounded by 10 s.
async fn victim(to: SocketAddr, rate: u32, seconds: u64) -> Run {
    let start = Instant::now();
    let total = rate as u64 * seconds;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tasks.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let r = tokio::time::timeout(Duration::from_secs(10), victim_request(to)).await;
            (at.elapsed(), matches!(r, Ok(Ok(true))))
        });
    }
    let mut run = Run {
        latencies: Vec::with_capacity(total as usize),
        failed: 0,
    };
    while let Some(r) = tasks.join_next().await {
        let (lat, ok) = r.expect("victim task");
        if ok {
            run.latencies.push(lat);
        } else {
            run.failed += 1;
        }
    }
    run.latencies.sort();
    run
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    check_isolated();
    let a = args();
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("servers")
        .enable_all()
        .build()
        .expect("runtime");
    let (emulator, proxy) = servers.block_on(async {
        let emulator = Emulator::start(
            Config::default_aks(),
            Options {
                throttle: Throttle::disabled(),
                seed: Some(1),
                ..Options::default()
            },
        )
        .await
        .expect("emulator on loopback");
        let mut c = ProxyConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            Upstream::parse(&format!("http://{}", emulator.local_addr())).expect("upstream"),
        );
        c.rules = Some(
            AccessRules::parse(
                r#"rules: [{name: versions, subjects: [{namespace: "*"}], paths: [/metadata/versions]}]"#,
            )
            .expect("rules"),
        );
        c.pods = PodIndex::parse(
            "[{ip: 127.0.0.2, namespace: attacker, name: a}, {ip: 127.0.0.3, namespace: victim, name: v}]",
        )
        .expect("pods");
        c.limits.max_connections = a.max_connections;
        c.limits.max_connections_per_source = a.per_source.min(a.max_connections);
        // The victim's rate is the bench's, not the pod's default 2/s: the connection
        // limits are what is measured here.
        c.pod_rate = PodRate::unlimited();
        let proxy = Proxy::start(c).await.expect("proxy on loopback");
        (emulator, proxy)
    });
    let to = proxy.local_addr();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "proxy: max-connections {}, max-connections-per-source {}; victim: {} req/s for {} s, a new connection each; attacker: {} slowloris connections",
        a.max_connections,
        a.per_source.min(a.max_connections),
        a.rate,
        a.seconds,
        a.attackers
    );
    client.block_on(async {
        let base = victim(to, a.rate, a.seconds).await;
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let mut attack = tokio::task::JoinSet::new();
        for _ in 0..a.attackers {
            attack.spawn(slowloris(to, stop.clone(), held.clone()));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held_at_start = held.load(Ordering::Relaxed);
        let under = victim(to, a.rate, a.seconds).await;
        let held_at_end = held.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        attack.abort_all();
        for (name, r) in [("baseline", &base), ("under attack", &under)] {
            println!(
                "{name:>12}: {} ok, {} failed or over 10 s; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                r.latencies.len(),
                r.failed,
                ms(r.pct(0.5)),
                ms(r.pct(0.99)),
                ms(r.pct(1.0)),
            );
        }
        println!(
            "attacker connections held open: {held_at_start} after 2 s, {held_at_end} at the end"
        );
        println!(
            "victim p99 under attack / baseline: {:.2}x; p50: {:.2}x",
            ms(under.pct(0.99)) / ms(base.pct(0.99)).max(0.001),
            ms(under.pct(0.5)) / ms(base.pct(0.5)).max(0.001),
        );
    });
    drop(proxy);
    drop(emulator);
}
