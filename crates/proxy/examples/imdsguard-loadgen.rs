//! imdsguard-loadgen: a small HTTP/1.1 load generator for the filtering proxy, loopback
//! only.
//!
//! ```sh
//! # Everything in-process: the emulator, the proxy in front of it, and the scenarios
//! # (denied at max rate; allowed token / versions / redacted instance, direct vs proxy).
//! cargo run --release -p imdsguard-proxy --example imdsguard-loadgen -- bench
//! cargo run --release -p imdsguard-proxy --example imdsguard-loadgen -- bench \
//!     --connections 50 --duration 5s --rate 5000 --json
//!
//! # Against a running proxy or emulator on loopback.
//! cargo run --release -p imdsguard-proxy --example imdsguard-loadgen -- run \
//!     --target http://127.0.0.1:8170 --source 127.0.0.2 \
//!     --path '/metadata/versions' --connections 50 --duration 10s
//! ```
//!
//! N keep-alive connections each send one request at a time (no pipelining), at the
//! maximum rate or at a fixed total rate (each connection on its own schedule). Latency
//! runs from the send to the whole answer; when a connection is behind schedule because
//! its previous answer came after this request's scheduled time, it runs from the
//! scheduled time instead, so a stall is not hidden by the wait it causes (a late timer
//! on the generator's side is not counted against the server). Every run is
//! bounded by `--duration` and `--requests`. It refuses any target or source address
//! that is not loopback.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use imdsguard_core::access::{AccessRules, PodIndex};
use imdsguard_emulator::{Config, Emulator, Options, Throttle};
use imdsguard_proxy::{Proxy, ProxyConfig, Upstream, parse_duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "imdsguard-loadgen",
    about = "Loopback load generator for the imdsguard proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive one target.
    Run(RunArgs),
    /// Start the emulator and the proxy in-process and run the benchmark scenarios.
    Bench(BenchArgs),
}

#[derive(clap::Args, Clone)]
struct Load {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// How long to send (after the warm-up).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before measuring (not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Stop after this many measured requests in total.
    #[arg(long, default_value_t = 5_000_000)]
    requests: usize,
    /// Total requests per second (0: as fast as the target answers).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

#[derive(clap::Args)]
struct RunArgs {
    /// http://127.0.0.1:PORT (loopback only).
    #[arg(long)]
    target: String,
    /// Request path and query.
    #[arg(long, default_value = "/metadata/versions")]
    path: String,
    /// Extra header `Name: value` (repeatable). `Metadata: true` is always sent.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Source address for the connections (repeatable; round-robin), e.g. 127.0.0.2.
    #[arg(long = "source")]
    sources: Vec<IpAddr>,
    #[command(flatten)]
    load: Load,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    load: Load,
    /// Rate of the allowed scenarios (the denied one always runs at max rate).
    #[arg(long = "allowed-rate", default_value_t = 5000.0)]
    allowed_rate: f64,
    /// Worker threads of the proxy's runtime.
    #[arg(long, default_value_t = 2)]
    proxy_threads: usize,
    /// Append the proxy's JSON decision log here (default: formatted, then discarded).
    #[arg(long)]
    log_file: Option<std::path::PathBuf>,
    /// Scenarios to run (comma-separated): denied, token, versions, instance, max.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "denied,token,versions,instance,max"
    )]
    scenarios: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Stats {
    name: String,
    target: String,
    connections: usize,
    rate: f64,
    seconds: f64,
    requests: usize,
    errors: usize,
    statuses: Vec<(u16, usize)>,
    throughput: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

fn loopback(ip: IpAddr) -> Result<IpAddr, String> {
    if ip.is_loopback() {
        Ok(ip)
    } else {
        Err(format!(
            "{ip} is not a loopback address: loadgen talks to this machine only"
        ))
    }
}

fn target_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the target must be http://127.x.y.z:PORT")?;
    let addr: SocketAddr = rest
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("`{url}`: give an IP and a port (no host names)"))?;
    loopback(addr.ip())?;
    Ok(addr)
}

/// One connection's results.
#[derive(Default)]
struct ConnResult {
    latencies_us: Vec<u32>,
    errors: usize,
    statuses: Vec<(u16, usize)>,
}

fn count_status(statuses: &mut Vec<(u16, usize)>, s: u16) {
    match statuses.iter_mut().find(|(k, _)| *k == s) {
        Some((_, n)) => *n += 1,
        None => statuses.push((s, 1)),
    }
}

/// Reads one answer (Content-Length framing) into `buf`; returns the status.
async fn read_answer(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-UTF-8 head"))?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("no status"))?;
            let len: usize = head
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .ok_or_else(|| bad("no content-length"))?;
            let total = end + 4 + len;
            while buf.len() < total {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(bad("closed mid-body"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

async fn connect(
    source: Option<IpAddr>,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(src) = source {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

#[allow(clippy::too_many_arguments)]
async fn drive_connection(
    addr: SocketAddr,
    source: Option<IpAddr>,
    request: Arc<Vec<u8>>,
    interval: Option<Duration>,
    offset: Duration,
    warmup_end: Instant,
    end: Instant,
    max_requests: usize,
) -> ConnResult {
    let mut r = ConnResult {
        latencies_us: Vec::with_capacity(max_requests.min(1 << 14)),
        ..ConnResult::default()
    };
    let mut stream = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut next = Instant::now() + offset;
    let mut last_done = Instant::now();
    loop {
        let intended = match interval {
            Some(step) => {
                let t = next;
                next += step;
                tokio::time::sleep_until(t.into()).await;
                t
            }
            None => Instant::now(),
        };
        if intended >= end || r.latencies_us.len() >= max_requests {
            break;
        }
        if stream.is_none() {
            match connect(source, addr).await {
                Ok(s) => stream = Some(s),
                Err(_) => {
                    r.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        // A timer firing late (tokio's are ~1 ms coarse; a starved client thread) is the
        // generator's lateness, not the server's: measure from the send. A connection
        // whose previous answer came after this request's scheduled time is behind
        // because of the server: measure from the schedule, so stalls are not hidden.
        let sent = Instant::now();
        let from = if last_done > intended { intended } else { sent };
        let s = stream.as_mut().expect("connected");
        let result = async {
            s.write_all(&request).await?;
            read_answer(s, &mut buf).await
        }
        .await;
        let done = Instant::now();
        last_done = done;
        match result {
            Ok(status) => {
                if intended >= warmup_end {
                    let us = done.duration_since(from).as_micros().min(u32::MAX as u128);
                    r.latencies_us.push(us as u32);
                    count_status(&mut r.statuses, status);
                }
                // An answer with Connection: close ends the connection.
                if buf
                    .windows(17)
                    .any(|w| w.eq_ignore_ascii_case(b"connection: close"))
                {
                    stream = None;
                }
            }
            Err(_) => {
                if intended >= warmup_end {
                    r.errors += 1;
                }
                stream = None;
            }
        }
    }
    r
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

/// Runs one load against `addr` on the current runtime.
async fn drive(
    name: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    sources: &[IpAddr],
    load: &Load,
) -> Stats {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let request = Arc::new(req.into_bytes());
    let start = Instant::now();
    let warmup_end = start + load.warmup;
    let end = warmup_end + load.duration;
    let conns = load.connections.max(1);
    let per_conn_max = (load.requests / conns).max(1);
    let interval = (load.rate > 0.0).then(|| Duration::from_secs_f64(conns as f64 / load.rate));
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        // Spread the connections' schedules over one interval.
        let offset = interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / conns as f64));
        tasks.push(tokio::spawn(drive_connection(
            addr,
            source,
            request.clone(),
            interval,
            offset,
            warmup_end,
            end,
            per_conn_max,
        )));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut statuses: Vec<(u16, usize)> = Vec::new();
    for t in tasks {
        let r = t.await.expect("connection task");
        latencies.extend(r.latencies_us);
        errors += r.errors;
        for (s, n) in r.statuses {
            match statuses.iter_mut().find(|(k, _)| *k == s) {
                Some((_, m)) => *m += n,
                None => statuses.push((s, n)),
            }
        }
    }
    let measured = Instant::now()
        .min(end)
        .saturating_duration_since(warmup_end)
        .as_secs_f64()
        .max(1e-9);
    latencies.sort_unstable();
    statuses.sort();
    Stats {
        name: name.to_string(),
        target: format!("http://{addr}{path}"),
        connections: conns,
        rate: load.rate,
        seconds: measured,
        requests: latencies.len(),
        errors,
        statuses,
        throughput: latencies.len() as f64 / measured,
        p50_us: percentile(&latencies, 50.0),
        p90_us: percentile(&latencies, 90.0),
        p99_us: percentile(&latencies, 99.0),
        p999_us: percentile(&latencies, 99.9),
        max_us: latencies.last().copied().unwrap_or(0) as f64,
    }
}

fn print_table(rows: &[Stats]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<28} {:>5} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8} {:>9} {:>6}  statuses",
        "scenario",
        "conns",
        "rate",
        "requests",
        "req/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "errors"
    );
    for s in rows {
        let rate = if s.rate > 0.0 {
            format!("{:.0}", s.rate)
        } else {
            "max".into()
        };
        let statuses: Vec<String> = s.statuses.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        let _ = writeln!(
            out,
            "{:<28} {:>5} {:>8} {:>10} {:>9.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0} {:>6}  {}",
            s.name,
            s.connections,
            rate,
            s.requests,
            s.throughput,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.p999_us,
            s.errors,
            statuses.join(" ")
        );
    }
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime")
}

fn run(args: RunArgs) -> Result<(), String> {
    let addr = target_addr(&args.target)?;
    for s in &args.sources {
        loopback(*s)?;
    }
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("header `{h}` is not `Name: value`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rt = client_runtime();
    let stats = rt.block_on(drive(
        "run",
        addr,
        &args.path,
        &headers,
        &args.sources,
        &args.load,
    ));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats).expect("JSON"));
    } else {
        print_table(&[stats]);
    }
    Ok(())
}

const KUBELET: &str = "2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67";
const ALLOWED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const DENIED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

fn bench(args: BenchArgs) -> Result<(), String> {
    // The proxy's decision log: JSON, formatted for every decision as in production,
    // written to a file or discarded.
    let filter = tracing_subscriber::EnvFilter::new("imdsguard::decision=info");
    match &args.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let file = std::sync::Mutex::new(file);
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(file)
                .init();
        }
        None => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::sink)
            .init(),
    }

    // Servers on runtimes of their own, as in separate processes.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.proxy_threads.max(1))
        .thread_name("servers")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
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
        .map_err(|e| e.to_string())?;
        let mut c = ProxyConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            Upstream::parse(&format!("http://{}", emulator.local_addr()))
                .map_err(|e| e.to_string())?,
        );
        c.rules = Some(
            AccessRules::parse(&format!(
                r#"
rules:
  - name: bench-allowed
    subjects: [{{namespace: bench, serviceAccount: allowed}}]
    paths: [/metadata/versions, /metadata/instance]
    token:
      resources: [https://management.azure.com/]
      identities: [{{clientId: {KUBELET}}}]
"#
            ))
            .map_err(|e| e.to_string())?,
        );
        c.pods = PodIndex::parse(
            "[{ip: 127.0.0.2, namespace: bench, name: allowed-0, serviceAccount: allowed},
              {ip: 127.0.0.3, namespace: bench, name: denied-0, serviceAccount: denied}]",
        )
        .map_err(|e| e.to_string())?;
        c.limits.max_connections = 4096;
        let proxy = Proxy::start(c).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((emulator, proxy))
    })?;
    let proxy_addr = proxy.local_addr();
    let emu_addr = emulator.local_addr();
    assert!(proxy_addr.ip().is_loopback() && emu_addr.ip().is_loopback());

    let token = format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id={KUBELET}"
    );
    let instance = "/metadata/instance?api-version=2021-02-01";
    let versions = "/metadata/versions";
    let max = Load {
        rate: 0.0,
        ..args.load.clone()
    };
    let fixed = Load {
        rate: args.allowed_rate,
        ..args.load.clone()
    };

    let client = client_runtime();
    let mut rows = Vec::new();
    let wants = |s: &str| args.scenarios.iter().any(|x| x == s);
    let mut pairs = Vec::new();
    client.block_on(async {
        if wants("denied") {
            rows.push(
                drive(
                    "denied (proxy, max rate)",
                    proxy_addr,
                    &token,
                    &[],
                    &[DENIED],
                    &max,
                )
                .await,
            );
        }
        for (label, path) in [
            ("token", token.as_str()),
            ("versions", versions),
            ("instance", instance),
        ] {
            if wants(label) {
                rows.push(
                    drive(
                        &format!("{label}: emulator direct"),
                        emu_addr,
                        path,
                        &[],
                        &[ALLOWED],
                        &fixed,
                    )
                    .await,
                );
                rows.push(
                    drive(
                        &format!("{label}: via proxy"),
                        proxy_addr,
                        path,
                        &[],
                        &[ALLOWED],
                        &fixed,
                    )
                    .await,
                );
                pairs.push(rows.len() - 2);
            }
        }
        if wants("max") {
            rows.push(
                drive(
                    "versions: emulator, max",
                    emu_addr,
                    versions,
                    &[],
                    &[ALLOWED],
                    &max,
                )
                .await,
            );
            rows.push(
                drive(
                    "versions: via proxy, max",
                    proxy_addr,
                    versions,
                    &[],
                    &[ALLOWED],
                    &max,
                )
                .await,
            );
        }
    });

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
    } else {
        print_table(&rows);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "\nadded by the proxy at {} req/s over {} connections:",
            args.allowed_rate, args.load.connections
        );
        for &i in &pairs {
            let (d, p) = (&rows[i], &rows[i + 1]);
            let _ = writeln!(
                out,
                "  {:<9} p50 {:+.0} µs, p99 {:+.0} µs",
                d.name.split(':').next().unwrap_or(""),
                p.p50_us - d.p50_us,
                p.p99_us - d.p99_us
            );
        }
    }
    servers.block_on(async {
        proxy.shutdown().await;
        emulator.shutdown().await;
    });
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Bench(a) => bench(a),
    };
    if let Err(e) = result {
        eprintln!("imdsguard-loadgen: {e}");
        std::process::exit(2);
    }
}
