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
//! # The same scenarios against the real binaries (`imdsguard emulate` and `imdsguard
//! # proxy` as child processes, on 127.0.0.1, the proxy's upstream the emulator), and the
//! # proxy's memory with 10,000 open keep-alive connections. Both refuse to run outside
//! # a network namespace that holds only `lo`: use crates/proxy/examples/bench-proxy.sh.
//! imdsguard-loadgen bench --bin target/release/imdsguard
//! imdsguard-loadgen memory --bin target/release/imdsguard --connections 10000
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
use humantime::parse_duration;
use imdsguard_core::access::{AccessRules, PodIndex};
use imdsguard_emulator::{Config, Emulator, Options, Throttle};
use imdsguard_proxy::{PodRate, Proxy, ProxyConfig, Upstream};
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
    /// Start the emulator and the proxy (in-process, or as processes with `--bin`) and
    /// run the benchmark scenarios.
    Bench(BenchArgs),
    /// Start `imdsguard emulate` and `imdsguard proxy` as processes, open N keep-alive
    /// connections to the proxy and hold them, and report the proxy's RSS growth.
    Memory(MemoryArgs),
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
    /// Run `BIN emulate` and `BIN proxy` as child processes (on 127.0.0.1, the proxy's
    /// upstream the emulator, its JSON decision log to --log-file or /dev/null) instead
    /// of in-process servers. Needs a network namespace holding only `lo`.
    #[arg(long, value_name = "BIN")]
    bin: Option<std::path::PathBuf>,
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

#[derive(clap::Args)]
struct MemoryArgs {
    /// The imdsguard binary (default: `imdsguard` next to this example's directory,
    /// i.e. target/release/imdsguard).
    #[arg(long, value_name = "BIN")]
    bin: Option<std::path::PathBuf>,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// What each connection does before it is held (comma-separated, one fresh proxy
    /// process each): `idle` (nothing), `request` (one allowed /metadata/versions
    /// request, forwarded to the emulator), `denied` (one denied token request).
    #[arg(long, value_delimiter = ',', default_value = "idle,request")]
    modes: Vec<String>,
    /// How long to hold the connections once all are open (RSS sampled meanwhile).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    hold: Duration,
    /// Connections opened in one batch (the next batch waits until the proxy has
    /// accepted these).
    #[arg(long, default_value_t = 200)]
    parallel: usize,
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

fn bench_rules() -> String {
    format!(
        r#"
rules:
  - name: bench-allowed
    subjects: [{{namespace: bench, serviceAccount: allowed}}]
    paths: [/metadata/versions, /metadata/instance]
    token:
      resources: [https://management.azure.com/]
      identities: [{{clientId: {KUBELET}}}]
"#
    )
}

const BENCH_PODS: &str =
    "[{ip: 127.0.0.2, namespace: bench, name: allowed-0, serviceAccount: allowed},
  {ip: 127.0.0.3, namespace: bench, name: denied-0, serviceAccount: denied}]";

/// The servers under test: in this process (on a runtime of their own), or child
/// processes.
enum Servers {
    InProcess {
        runtime: tokio::runtime::Runtime,
        emulator: Emulator,
        proxy: Proxy,
    },
    Processes(Stack),
}

fn in_process_servers(args: &BenchArgs) -> Result<Servers, String> {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.proxy_threads.max(1))
        .thread_name("servers")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (emulator, proxy) = runtime.block_on(async {
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
        c.rules = Some(AccessRules::parse(&bench_rules()).map_err(|e| e.to_string())?);
        c.pods = PodIndex::parse(BENCH_PODS).map_err(|e| e.to_string())?;
        c.limits.max_connections = 4096;
        // Throughput from one source address: no per-source or per-pod limits (the
        // fairness benchmark, examples/bench-fairness.rs, measures those).
        c.limits.max_connections_per_source = 4096;
        c.pod_rate = PodRate::unlimited();
        let proxy = Proxy::start(c).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((emulator, proxy))
    })?;
    Ok(Servers::InProcess {
        runtime,
        emulator,
        proxy,
    })
}

fn bench(args: BenchArgs) -> Result<(), String> {
    let servers = match &args.bin {
        Some(bin) => Servers::Processes(Stack::start(
            bin,
            &StackOptions {
                max_connections: 4096,
                header_timeout: "10s",
                log_file: args.log_file.clone(),
            },
        )?),
        None => in_process_servers(&args)?,
    };
    let (proxy_addr, emu_addr) = match &servers {
        Servers::InProcess {
            emulator, proxy, ..
        } => (proxy.local_addr(), emulator.local_addr()),
        Servers::Processes(stack) => (stack.proxy_addr, stack.emulator_addr),
    };
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
    match servers {
        Servers::InProcess {
            runtime,
            emulator,
            proxy,
        } => runtime.block_on(async {
            proxy.shutdown().await;
            emulator.shutdown().await;
        }),
        Servers::Processes(stack) => stack.stop()?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Child processes: `imdsguard emulate` and `imdsguard proxy`, on loopback only.

/// Refuses to start servers unless this process is in a network namespace that holds
/// nothing but `lo` (bench-proxy.sh runs us under `unshare --net`).
fn require_isolated_netns() -> Result<(), String> {
    let dev =
        std::fs::read_to_string("/proc/net/dev").map_err(|e| format!("/proc/net/dev: {e}"))?;
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    if ifaces == ["lo"] {
        Ok(())
    } else {
        Err(format!(
            "this mode starts `imdsguard proxy` and `imdsguard emulate`: run it in a network \
             namespace that holds only lo (crates/proxy/examples/bench-proxy.sh does, with \
             `unshare --net`); interfaces here: {}",
            ifaces.join(", ")
        ))
    }
}

/// The soft limit on open files (from /proc/self/limits).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `imdsguard` next to the directory of this example (target/release/imdsguard).
fn default_bin() -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("imdsguard"))
        .ok_or("cannot locate the imdsguard binary: pass --bin")?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it (`cargo build --release -p imdsguard`) or pass --bin",
            bin.display()
        ))
    }
}

/// A server process; killed (SIGKILL) if dropped while running.
struct ChildServer {
    name: &'static str,
    child: std::process::Child,
    /// Its standard output lines (`proxy http://…`, `admin http://…`, `imds http://…`).
    lines: Vec<String>,
}

impl ChildServer {
    /// Starts `bin args`, and waits (10 s at most) for an output line starting with each
    /// of `wait_for`.
    fn spawn(
        name: &'static str,
        bin: &std::path::Path,
        args: &[String],
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
        wait_for: &[&str],
    ) -> Result<ChildServer, String> {
        use std::io::BufRead as _;
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = ChildServer {
            name,
            child,
            lines: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !wait_for
            .iter()
            .all(|w| server.lines.iter().any(|l| l.starts_with(w)))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => server.lines.push(line),
                Err(_) => {
                    return Err(format!(
                        "{name} did not start (output so far: {:?}, status {:?})",
                        server.lines,
                        server.child.try_wait().ok().flatten()
                    ));
                }
            }
        }
        Ok(server)
    }

    /// The address of the output line `PREFIX http://ADDR`.
    fn addr(&self, prefix: &str) -> Result<SocketAddr, String> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix)?.trim().strip_prefix("http://"))
            .ok_or_else(|| format!("{}: no `{prefix} http://…` line", self.name))?
            .parse()
            .map_err(|e| format!("{}: {e}", self.name))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (10 s at most, then SIGKILL); `Ok` when it exited with 0.
    fn stop(mut self) -> Result<(), String> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("{} exited with {status}", self.name)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = self.child.kill();
                    return Err(format!("{} did not stop within 10 s on SIGTERM", self.name));
                }
            }
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct StackOptions {
    max_connections: usize,
    header_timeout: &'static str,
    log_file: Option<std::path::PathBuf>,
}

/// `imdsguard emulate` on 127.0.0.1 and `imdsguard proxy` in front of it.
struct Stack {
    // Field order: the proxy is dropped (killed) before the emulator.
    proxy: ChildServer,
    emulator: ChildServer,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    emulator_addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Stack {
    fn start(bin: &std::path::Path, o: &StackOptions) -> Result<Stack, String> {
        require_isolated_netns()?;
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "imdsguard-loadgen-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok::<_, String>(p.display().to_string())
        };
        let rules = write("rules.yaml", &bench_rules())?;
        let pods = write("pods.yaml", BENCH_PODS)?;
        let null = std::process::Stdio::null;
        let emulator = ChildServer::spawn(
            "imdsguard emulate",
            bin,
            &[
                "emulate".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--no-throttle".into(),
                "--seed".into(),
                "1".into(),
            ],
            &[("RUST_LOG", "warn")],
            null(),
            &["imds "],
        )?;
        let emulator_addr = emulator.addr("imds")?;
        loopback(emulator_addr.ip())?;
        let stderr = match &o.log_file {
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .into(),
            None => null(),
        };
        // The decision log as in production: JSON, every decision, on standard error.
        let proxy = ChildServer::spawn(
            "imdsguard proxy",
            bin,
            &[
                "proxy".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--admin-listen".into(),
                "127.0.0.1:0".into(),
                "--upstream".into(),
                format!("http://{emulator_addr}"),
                "--rules".into(),
                rules,
                "--pods".into(),
                pods,
                "--max-connections".into(),
                o.max_connections.to_string(),
                "--max-connections-per-source".into(),
                o.max_connections.to_string(),
                "--pod-rate".into(),
                "0".into(),
                "--pod-identity-rate".into(),
                "0".into(),
                "--header-timeout".into(),
                o.header_timeout.into(),
                "--reload-interval".into(),
                "0".into(),
                "--log-format".into(),
                "json".into(),
            ],
            &[("RUST_LOG", "info")],
            stderr,
            &["proxy ", "admin "],
        )?;
        let proxy_addr = proxy.addr("proxy")?;
        let admin_addr = proxy.addr("admin")?;
        loopback(proxy_addr.ip())?;
        loopback(admin_addr.ip())?;
        Ok(Stack {
            proxy,
            emulator,
            proxy_addr,
            admin_addr,
            emulator_addr,
            dir,
        })
    }

    /// Stops both (SIGTERM); an error when either did not exit with 0.
    fn stop(self) -> Result<(), String> {
        let Stack {
            proxy,
            emulator,
            dir,
            ..
        } = self;
        let p = proxy.stop();
        let e = emulator.stop();
        let _ = std::fs::remove_dir_all(&dir);
        p.and(e)
    }
}

/// Resident set size and its peak of a process, in KiB (/proc/PID/status).
fn rss_kib(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/status: no {name}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// One HTTP/1.1 GET with `Connection: close`; the status and the body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = connect(None, addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| bad("no answer within 5 s"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok((status, body.to_string()))
}

/// The proxy's `imdsguard_proxy_open_connections` gauge.
async fn open_connections(admin: SocketAddr) -> Result<u64, String> {
    let (status, body) = http_get(admin, "/metrics")
        .await
        .map_err(|e| format!("/metrics: {e}"))?;
    if status != 200 {
        return Err(format!("/metrics: status {status}"));
    }
    body.lines()
        .find_map(|l| l.strip_prefix("imdsguard_proxy_open_connections "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "/metrics: no imdsguard_proxy_open_connections".to_string())
}

/// What one memory run measured.
#[derive(Debug, serde::Serialize)]
struct MemoryStats {
    mode: String,
    connections: usize,
    open_seconds: f64,
    gauge_open: u64,
    gauge_after_hold: u64,
    baseline_rss_kib: u64,
    held_rss_kib: u64,
    held_peak_kib: u64,
    after_close_rss_kib: u64,
    delta_kib: u64,
    per_connection_bytes: f64,
    request_statuses: Vec<(u16, usize)>,
}

/// Opens one connection from `source` and, per `mode`, makes one request on it.
async fn open_one(
    addr: SocketAddr,
    source: IpAddr,
    request: Option<Arc<Vec<u8>>>,
) -> std::io::Result<(tokio::net::TcpStream, Option<u16>)> {
    let mut s = connect(Some(source), addr).await?;
    let status = match request {
        Some(req) => {
            s.write_all(&req).await?;
            let mut buf = Vec::new();
            Some(read_answer(&mut s, &mut buf).await?)
        }
        None => None,
    };
    Ok((s, status))
}

async fn memory_run(stack: &Stack, mode: &str, args: &MemoryArgs) -> Result<MemoryStats, String> {
    let pid = stack.proxy.pid();
    let (request, source) = match mode {
        "idle" => (None, ALLOWED),
        "request" => (
            Some(
                "GET /metadata/versions HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n",
            ),
            ALLOWED,
        ),
        "denied" => (
            Some(
                "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n",
            ),
            DENIED,
        ),
        other => return Err(format!("unknown mode `{other}` (idle, request, denied)")),
    };
    let request = request.map(|r| Arc::new(r.as_bytes().to_vec()));

    // Warm up the proxy (its runtime, the upstream pool, the log formatter) with a few
    // hundred requests on 50 connections, closed again, so the baseline is a proxy
    // that has served traffic.
    let warm = Load {
        connections: 50,
        duration: Duration::from_millis(500),
        warmup: Duration::ZERO,
        requests: 2_000,
        rate: 0.0,
    };
    drive(
        "warm-up",
        stack.proxy_addr,
        "/metadata/versions",
        &[],
        &[ALLOWED],
        &warm,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_connections(stack.admin_addr).await? != 0 {
        if Instant::now() > deadline {
            return Err("the warm-up connections did not close".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (baseline, _) = rss_kib(pid)?;

    // Open N connections, `parallel` at a time, one batch after the other: a batch
    // starts when the proxy has accepted the previous ones (its gauge), so the listen
    // queue never overflows (an overflowing queue drops the handshake's last ACK, and
    // an idle client then looks connected while the proxy never sees it).
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    let mut statuses = Vec::new();
    let mut failures = 0usize;
    let mut first_error = None;
    let mut gauge_open = 0;
    while held.len() + failures < args.connections {
        let batch = args
            .parallel
            .max(1)
            .min(args.connections - held.len() - failures);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let request = request.clone();
            let addr = stack.proxy_addr;
            tasks.spawn(tokio::time::timeout(
                Duration::from_secs(10),
                open_one(addr, source, request),
            ));
        }
        while let Some(r) = tasks.join_next().await {
            match r.expect("task") {
                Ok(Ok((stream, status))) => {
                    if let Some(s) = status {
                        count_status(&mut statuses, s);
                    }
                    held.push(stream);
                }
                Ok(Err(e)) => {
                    failures += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Err(_) => {
                    failures += 1;
                    first_error.get_or_insert("timed out".to_string());
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            gauge_open = open_connections(stack.admin_addr).await?;
            if gauge_open as usize >= held.len() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    statuses.sort();
    if failures > 0 {
        return Err(format!(
            "{failures} of {} connections failed (first: {})",
            args.connections,
            first_error.unwrap_or_default()
        ));
    }
    let open_seconds = started.elapsed().as_secs_f64();
    if (gauge_open as usize) < args.connections {
        return Err(format!(
            "the proxy holds {gauge_open} of {} connections",
            args.connections
        ));
    }

    // Hold them; the RSS is the largest seen meanwhile.
    let hold_end = Instant::now() + args.hold;
    let mut held_rss = 0;
    let held_peak = loop {
        let (rss, peak) = rss_kib(pid)?;
        held_rss = held_rss.max(rss);
        if Instant::now() >= hold_end {
            break peak;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let gauge_after_hold = open_connections(stack.admin_addr).await?;

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_connections(stack.admin_addr).await? != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after_close, _) = rss_kib(pid)?;
    let delta = held_rss.saturating_sub(baseline);
    Ok(MemoryStats {
        mode: mode.to_string(),
        connections: args.connections,
        open_seconds,
        gauge_open,
        gauge_after_hold,
        baseline_rss_kib: baseline,
        held_rss_kib: held_rss,
        held_peak_kib: held_peak,
        after_close_rss_kib: after_close,
        delta_kib: delta,
        per_connection_bytes: delta as f64 * 1024.0 / args.connections.max(1) as f64,
        request_statuses: statuses,
    })
}

fn memory(args: MemoryArgs) -> Result<(), String> {
    require_isolated_netns()?;
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => default_bin()?,
    };
    // This process and the proxy (which inherits the limit) each hold one descriptor
    // per connection.
    let need = args.connections as u64 + 256;
    match open_files_limit() {
        Some(n) if n < need => {
            return Err(format!(
                "the open-files limit is {n}, {need} are needed: raise it first (`ulimit -n 65536`, \
                 or up to `ulimit -Hn`); bench-proxy.sh does"
            ));
        }
        _ => {}
    }
    let client = client_runtime();
    let mut rows = Vec::new();
    for mode in &args.modes {
        let stack = Stack::start(
            &bin,
            &StackOptions {
                max_connections: args.connections + 64,
                // Idle connections are closed after the header timeout: keep them
                // for the whole run.
                header_timeout: "120s",
                log_file: None,
            },
        )?;
        let r = client.block_on(memory_run(&stack, mode, &args));
        let stopped = stack.stop();
        rows.push(r?);
        stopped?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
    } else {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{:<8} {:>6} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}  statuses",
            "mode",
            "conns",
            "open s",
            "gauge",
            "base MiB",
            "held MiB",
            "peak MiB",
            "closed MiB",
            "delta MiB",
            "B/conn"
        );
        for r in &rows {
            let mib = |k: u64| k as f64 / 1024.0;
            let statuses: Vec<String> = r
                .request_statuses
                .iter()
                .map(|(k, n)| format!("{k}×{n}"))
                .collect();
            let _ = writeln!(
                out,
                "{:<8} {:>6} {:>7.2} {:>7} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>9.0}  {}",
                r.mode,
                r.connections,
                r.open_seconds,
                r.gauge_after_hold,
                mib(r.baseline_rss_kib),
                mib(r.held_rss_kib),
                mib(r.held_peak_kib),
                mib(r.after_close_rss_kib),
                mib(r.delta_kib),
                r.per_connection_bytes,
                statuses.join(" ")
            );
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Bench(a) => bench(a),
        Command::Memory(a) => memory(a),
    };
    if let Err(e) = result {
        eprintln!("imdsguard-loadgen: {e}");
        std::process::exit(2);
    }
}
