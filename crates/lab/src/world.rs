//! The inner run: the sandbox node, the emulator in the cloud namespace, DNS echoes, the
//! filtering proxy on the node, then the phases.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use imdsguard_core::imds::{
    HOST_GA_PLUGIN_PORT, IMDS_ADDRESS, IMDS_PORT, WIRESERVER_ADDRESS, WIRESERVER_PORT,
};
use imdsguard_core::nft::{self, CounterValue, Mode, RulesetConfig, SourcePair};
use imdsguard_core::target::Cloud;
use imdsguard_emulator::{Config as VmConfig, Emulator, Options, Throttle};
use imdsguard_node::netns::{Isolated, NetNamespace};
use imdsguard_node::sandbox::{
    self, Attach, NODE_ADDR, NODE_LOCAL_DNS, Sandbox, Services, tcp_check, udp_echo_check,
};
use imdsguard_node::{Enforcer, Exec};
use imdsguard_probe::{Class, DEFAULT_ENDPOINT, ProbeConfig};
use imdsguard_proxy::{DecisionRecord, DecisionSink};
use tokio::sync::oneshot;

use crate::hostnet::{
    self, DEBUG_ROW, HostNet, Layout, MONITORING_ROW, NODE_ROW, Placement, ProbeCommand,
};
use crate::kubernetes::KubeLab;
use crate::report::{DryRunReport, LabPod, LabReport, Phase, PhaseResult, Row, check};
use crate::{LabConfig, LabError};

/// The pod whose (interface, address) pair is allowlisted.
const ALLOWED_POD: &str = "allowed";
/// Where the filtering proxy listens on the node (proxy mode redirects IMDS there).
const PROXY_LISTEN: SocketAddrV4 = SocketAddrV4::new(NODE_ADDR, 8169);
/// Where proxy mode redirects IPv6 metadata traffic (AWS and GCP labs, dual-stack): the
/// node's IPv6 address, the same port; the proxy then listens on both families.
const PROXY_LISTEN6: SocketAddrV6 = SocketAddrV6::new(sandbox::NODE_ADDR6, 8169, 0, 0);

/// Where the proxy listens: the node's IPv4 address for Azure, every address of both
/// families (`[::]:8169`) for the dual-stack labs.
fn proxy_listen(cloud: Cloud) -> SocketAddr {
    match cloud {
        Cloud::Azure => SocketAddr::V4(PROXY_LISTEN),
        _ => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), PROXY_LISTEN.port()),
    }
}

/// The pod that borrows the allowlisted pod's address; not a pod the node hosts at that
/// address, so its (interface, address) pair is not known.
pub(crate) const SPOOFER_POD: &str = "spoofer";

/// A Tokio runtime on a thread (inside a namespace or in the node's), holding a server
/// until dropped.
struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), imdsguard_node::NodeError>>>,
}

impl Background {
    /// Runs `serve` (which starts a server, reports readiness, then waits for `stop`).
    fn start<F, Fut>(
        ns: Option<&NetNamespace>,
        what: &str,
        serve: F,
    ) -> Result<Background, LabError>
    where
        F: FnOnce(mpsc::Sender<Result<(), String>>, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let body = move || match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(serve(ready_tx, stop_rx)),
            Err(e) => {
                let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
            }
        };
        let thread = match ns {
            Some(ns) => ns.spawn(body),
            None => std::thread::spawn(move || {
                body();
                Ok(())
            }),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Background {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(LabError::Lab(format!("{what}: {e}"))),
            Err(_) => {
                let why = match thread.join() {
                    Ok(Err(e)) => e.to_string(),
                    _ => "did not start".into(),
                };
                Err(LabError::Lab(format!("{what}: {why}")))
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The cloud's emulator on its real addresses inside the cloud namespace.
fn start_emulator(cloud: Cloud, ns: &NetNamespace) -> Result<Background, LabError> {
    match cloud {
        Cloud::Azure => start_azure_emulator(ns),
        Cloud::Aws => start_aws_emulator(ns),
        _ => start_gcp_emulator(ns),
    }
}

/// The emulator, answering as IMDS, WireServer and HostGAPlugin on their real addresses
/// inside the cloud namespace.
fn start_azure_emulator(cloud: &NetNamespace) -> Result<Background, LabError> {
    let options = Options {
        imds: vec![SocketAddr::new(IMDS_ADDRESS.into(), IMDS_PORT)],
        wireserver: Some(SocketAddr::new(WIRESERVER_ADDRESS.into(), WIRESERVER_PORT)),
        hostgaplugin: Some(SocketAddr::new(
            WIRESERVER_ADDRESS.into(),
            HOST_GA_PLUGIN_PORT,
        )),
        // The cloud namespace owns these addresses; nothing links it to the machine.
        allow_metadata_address: true,
        throttle: Throttle::disabled(),
        seed: Some(4),
        shutdown_grace: Duration::from_millis(200),
        ..Options::default()
    };
    serve_emulator(
        cloud,
        "the emulator",
        move || Emulator::start(VmConfig::default_aks(), options),
        Emulator::shutdown,
    )
}

/// Serves an emulator in `ns` until the lab stops it: `start` runs on the background
/// thread's runtime, its error (or readiness) is reported, `shutdown` stops it.
fn serve_emulator<E, Er, S, SFut, D, DFut>(
    ns: &NetNamespace,
    what: &str,
    start: S,
    shutdown: D,
) -> Result<Background, LabError>
where
    Er: std::fmt::Display,
    S: FnOnce() -> SFut + Send + 'static,
    SFut: std::future::Future<Output = Result<E, Er>>,
    D: FnOnce(E) -> DFut + Send + 'static,
    DFut: std::future::Future<Output = ()>,
{
    Background::start(Some(ns), what, move |ready, stop| async move {
        match start().await {
            Ok(emulator) => {
                let _ = ready.send(Ok(()));
                let _ = stop.await;
                shutdown(emulator).await;
            }
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
            }
        }
    })
}

/// The AWS emulator (IMDSv1 and IMDSv2, EKS's hop limit 2) on IMDS's real addresses in
/// both families inside the cloud namespace.
fn start_aws_emulator(ns: &NetNamespace) -> Result<Background, LabError> {
    use imdsguard_emulator::aws::{AwsConfig, AwsEmulator, AwsOptions};
    let options = AwsOptions {
        listen: [
            imdsguard_core::target::IMDS,
            imdsguard_core::target::AWS_IMDS_IPV6,
        ]
        .iter()
        .map(|t| SocketAddr::new(t.ip, t.port))
        .collect(),
        // The cloud namespace owns these addresses; nothing links it to the machine.
        allow_metadata_address: true,
        seed: Some(4),
        shutdown_grace: Duration::from_millis(200),
    };
    serve_emulator(
        ns,
        "the AWS emulator",
        move || AwsEmulator::start(AwsConfig::default_eks(), options),
        AwsEmulator::shutdown,
    )
}

/// The GCP metadata server emulator (a GKE node) on its real addresses in both families
/// inside the cloud namespace.
fn start_gcp_emulator(ns: &NetNamespace) -> Result<Background, LabError> {
    use imdsguard_emulator::gcp::{GcpConfig, GcpEmulator, GcpOptions};
    let options = GcpOptions {
        listen: [
            imdsguard_core::target::IMDS,
            imdsguard_core::target::GCP_METADATA_IPV6,
        ]
        .iter()
        .map(|t| SocketAddr::new(t.ip, t.port))
        .collect(),
        allow_metadata_address: true,
        seed: Some(4),
        shutdown_grace: Duration::from_millis(200),
        ..GcpOptions::default()
    };
    serve_emulator(
        ns,
        "the GCP emulator",
        move || GcpEmulator::start(GcpConfig::default_gke(), options),
        GcpEmulator::shutdown,
    )
}

/// The decision records of one proxy run, as the JSON lines `imdsguard proxy
/// --log-format json` writes (what `imdsguard report` reads).
#[derive(Default)]
struct Decisions {
    lines: Mutex<Vec<String>>,
}

impl DecisionSink for Decisions {
    fn record(&self, record: &DecisionRecord<'_>) {
        let mut fields = String::new();
        record.write_json_fields(&mut fields);
        let line = format!(
            r#"{{"timestamp":"{}","level":"INFO","target":"{}","fields":{fields}}}"#,
            humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            imdsguard_core::decisions::DECISION_TARGET,
        );
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }
}

/// The filtering proxy on the node (its upstream is IMDS, reached through the node's
/// link to the cloud namespace), its decisions into `sink`; with `dry_run`, denials
/// are recorded as `would-deny` and forwarded.
fn start_proxy(
    cloud: Cloud,
    dry_run: bool,
    host: Option<(&HostProcs, imdsguard_proxy::HostCallerMap)>,
    sink: Arc<Decisions>,
) -> Result<Background, LabError> {
    use imdsguard_core::access::{AccessRules, PodIndex};
    use imdsguard_proxy::{Proxy, ProxyConfig, Upstream};
    let upstream = Upstream::parse(DEFAULT_ENDPOINT).map_err(|e| LabError::Lab(e.to_string()))?;
    let mut config = ProxyConfig::for_cloud(cloud, proxy_listen(cloud), upstream);
    config.rules = Some(
        AccessRules::parse(crate::cloud::proxy_rules(cloud))
            .map_err(|e| LabError::Lab(e.to_string()))?,
    );
    config.pods = PodIndex::parse(&proxy_pods(cloud, host.as_ref().map(|h| h.0)))
        .map_err(|e| LabError::Lab(e.to_string()))?;
    config.shutdown_grace = Duration::from_millis(200);
    config.decisions = Some(sink);
    config.dry_run = dry_run;
    let host_callers = host.map(|(_, map)| map);
    if host_callers.is_some() {
        // hostNetwork callers come from the node's address: the proxy asks the kernel
        // for the client socket's cgroup and maps it to the pod.
        let mut callers = imdsguard_proxy::HostCallerConfig::new(crate::hostnet::CGROUP_ROOT);
        // The host table redirects IPv6 metadata traffic too (dual-stack labs).
        if let Some(v6) = crate::cloud::imds_ipv6(cloud) {
            callers.destinations.push(SocketAddr::new(v6.ip, v6.port));
        }
        config.host_callers = Some(callers);
    }
    Background::start(None, "the filtering proxy", move |ready, stop| async move {
        match Proxy::start(config).await {
            Ok(proxy) => {
                if let Some(map) = host_callers {
                    proxy.control().set_host_callers(map);
                }
                let _ = ready.send(Ok(()));
                let _ = stop.await;
                proxy.shutdown().await;
            }
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
            }
        }
    })
}

/// The pods file the proxy gets: the cloud's pods ([`crate::cloud::proxy_pods`]), plus
/// the hostNetwork pods by UID when they are played.
fn proxy_pods(cloud: Cloud, host: Option<&HostProcs>) -> String {
    let mut text = crate::cloud::proxy_pods(cloud);
    if let Some(host) = host {
        for p in [&host.layout.monitoring, &host.layout.debug] {
            let info = host_pod(p.row);
            let uid = &p.pod.as_ref().expect("a pod's placement").uid;
            let app = &info.labels["app"];
            text.push_str(&format!(
                "- {{uid: {uid}, hostNetwork: true, namespace: {}, name: {}, labels: {{app: {app}}}}}\n",
                info.namespace, info.name
            ));
        }
    }
    text
}

/// What `imdsguard report` makes of the dry-run phase's decisions: the pods it names,
/// as lab rows.
fn dry_run_report(
    sink: &Decisions,
    proxy_denied: Option<Vec<String>>,
) -> Result<DryRunReport, LabError> {
    use imdsguard_core::decisions::{CallerKind, DecisionLog};
    let lines = sink
        .lines
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .join("\n");
    let mut log = DecisionLog::new();
    log.read("the dry-run phase's decisions", lines.as_bytes());
    let report = log.report();
    if report.lines.malformed > 0 {
        return Err(LabError::Lab(format!(
            "the dry run's decision records did not read back: {:?}",
            report.malformed
        )));
    }
    // The lab's pods are named as its rows; an unknown caller by its address.
    let mut pods: Vec<String> = report
        .workloads
        .iter()
        .flat_map(|w| match w.caller {
            CallerKind::Pod => w.pods.clone(),
            CallerKind::Unknown => vec![format!("unknown caller {}", w.workload)],
        })
        .collect();
    pods.sort();
    pods.dedup();
    let proxy_denied = proxy_denied.map(|mut d| {
        d.sort();
        d
    });
    Ok(DryRunReport {
        pods,
        proxy_denied,
        report: serde_json::to_value(&report).expect("the report serializes"),
    })
}

/// The host table (`inet imdsguard_host`): the node's output path guarded by cgroup,
/// built by the core from a scan of the pod cgroups, as the agent builds it.
mod host_table {
    use std::collections::HashMap;
    use std::path::Path;

    use imdsguard_core::access::AccessRules;
    use imdsguard_core::nft::host::{HostGuard, HostPod};
    use imdsguard_node::host::{install_host, read_host, scan_pod_cgroups, uninstall_host};
    use imdsguard_proxy::HostCallerMap;

    use super::*;
    use crate::hostnet::CGROUP_ROOT;

    /// The guard for the lab's two hostNetwork pods as a scan of the pod cgroups finds
    /// them, and the proxy's map of their cgroup ids. Expected as the agent expects them
    /// (`imdsguard_agent::host::Expecting`): in block and observe modes when the access
    /// rules select the pod; in proxy mode only an `--allow` would, and the lab gives
    /// none (the rules' pods reach IMDS through the proxy, WireServer is dropped).
    pub(super) fn guard(
        cloud: Cloud,
        host: &HostProcs,
        mode: Mode,
    ) -> Result<(HostGuard, HostCallerMap), LabError> {
        let scan = scan_pod_cgroups(Path::new(CGROUP_ROOT)).map_err(|e| LabError::Io {
            what: format!("scanning the pod cgroups under {CGROUP_ROOT}"),
            source: e,
        })?;
        let rules = AccessRules::parse(crate::cloud::proxy_rules(cloud))
            .map_err(|e| LabError::Lab(e.to_string()))?;
        let mut pods = Vec::new();
        let mut map = HashMap::new();
        for placement in [&host.layout.monitoring, &host.layout.debug] {
            let uid = &placement.pod.as_ref().expect("a pod's placement").uid;
            let found = scan.of_uid(uid).next().ok_or_else(|| {
                LabError::Lab(format!(
                    "the scan of {CGROUP_ROOT} did not find {}'s pod cgroup (UID {uid})",
                    placement.row
                ))
            })?;
            let info = host_pod(placement.row);
            pods.push(HostPod {
                pod: info.id(),
                cgroup: found.cgroup.clone(),
                expected: mode != Mode::Proxy && rules.rules().iter().any(|r| r.selects(&info)),
            });
            map.insert(found.id, Arc::new(info));
        }
        Ok((
            HostGuard {
                roots: scan.roots,
                pods,
                own: None,
            },
            map,
        ))
    }

    /// Installs the host table for `config`'s mode, afresh (its counters start at 0 in
    /// each phase). The hierarchy is shared: a pod root another program removes between
    /// the scan and the load fails the transaction, so it is scanned and tried again.
    pub(super) fn apply(
        cloud: Cloud,
        config: &RulesetConfig,
        host: &HostProcs,
    ) -> Result<HostCallerMap, LabError> {
        let exec = Exec::here();
        uninstall_host(&exec)?;
        let mut tries = 0;
        loop {
            let (guard, map) = guard(cloud, host, config.mode)?;
            match install_host(&exec, config, &guard) {
                Ok(()) => return Ok(map),
                Err(e) if tries < 3 && e.to_string().contains("No such file or directory") => {
                    tries += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) fn uninstall() -> Result<(), LabError> {
        uninstall_host(&Exec::here())?;
        Ok(())
    }

    /// The hostNetwork pods' counters, named by their rows.
    pub(super) fn counters(host: &HostProcs) -> Result<Vec<CounterValue>, LabError> {
        let counters = read_host(&Exec::here())?
            .ok_or_else(|| LabError::Lab("the host table (inet imdsguard_host) is gone".into()))?;
        Ok([&host.layout.monitoring, &host.layout.debug]
            .into_iter()
            .map(|p| {
                let uid = &p.pod.as_ref().expect("a pod's placement").uid;
                let c = counters.pod(uid);
                CounterValue {
                    name: p.row.to_owned(),
                    packets: c.map_or(0, |c| c.packets),
                    bytes: c.map_or(0, |c| c.bytes),
                }
            })
            .collect())
    }
}

/// The probe of an Azure row (inside the lab's namespaces the real addresses are the
/// lab's emulator).
fn probe_config(connect_timeout: Duration) -> ProbeConfig {
    crate::cloud::azure_probe_config(connect_timeout)
}

/// How many times a cell that timed out where it should not have is probed again
/// before the lab calls it blocked, each time with twice the connect timeout: a busy
/// machine can miss a deadline, a drop never answers.
const RETRIES: u32 = 2;

/// Whether something in `row` timed out or went unanswered (a TCP connect, a DNS echo).
fn timed_out(row: &Row) -> bool {
    [row.imds, row.token, row.wireserver, row.hostgaplugin].contains(&Class::BlockedTimeout)
        || row
            .endpoints
            .iter()
            .any(|e| e.class == Class::BlockedTimeout)
        || !row.azure_dns
        || !row.node_local_dns
        || row.pod_to_pod == Some(false)
}

/// Where `--kubernetes` checks pod-to-pod traffic: a TCP banner in pod `web`.
const POD_TO_POD: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 11), 8080);

/// The pods whose rows are not as expected in `phase` because something timed out.
fn to_retry(cloud: Cloud, phase: Phase, pods: &[LabPod], rows: &[Row]) -> Vec<String> {
    pods.iter()
        .filter(|info| {
            rows.iter()
                .find(|r| r.pod == info.name)
                .is_some_and(|row| timed_out(row) && !check(cloud, phase, info, row).is_empty())
        })
        .map(|info| info.name.clone())
        .collect()
}

/// Probes every pod and the node; a row that is not as expected in `phase` because
/// something timed out is probed again, up to [`RETRIES`] times with a longer deadline.
fn probe_phase(
    cloud: Cloud,
    sandbox: &Sandbox,
    host: Option<&HostProcs>,
    pods: &[LabPod],
    phase: Phase,
    connect_timeout: Duration,
    pod_to_pod: bool,
) -> Result<Vec<Row>, LabError> {
    let mut rows = probe_all(cloud, sandbox, host, None, connect_timeout, pod_to_pod)?;
    let mut timeout = connect_timeout;
    for _ in 0..RETRIES {
        let again = to_retry(cloud, phase, pods, &rows);
        if again.is_empty() {
            break;
        }
        timeout *= 2;
        for new in probe_all(cloud, sandbox, host, Some(&again), timeout, pod_to_pod)? {
            if let Some(row) = rows.iter_mut().find(|r| r.pod == new.pod) {
                let attempts = row.attempts + 1;
                *row = Row { attempts, ..new };
            }
        }
    }
    Ok(rows)
}

/// The probe and the DNS checks (and pod-to-pod traffic when asked), from wherever the
/// calling thread's namespace is: Azure's probe, or the cloud's over IPv4 and IPv6 and
/// the checks of its other endpoints.
fn probe_here(cloud: Cloud, pod: &str, connect_timeout: Duration, pod_to_pod: bool) -> Row {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a runtime: {e}"),
    };
    let wait = Duration::from_millis(500);
    let dns = udp_echo_check(sandbox::cloud_dns(cloud), wait);
    let node_local_dns = udp_echo_check(SocketAddr::new(NODE_LOCAL_DNS.into(), 53), wait);
    let mut row = if cloud == Cloud::Azure {
        let config = probe_config(connect_timeout);
        let report = rt.block_on(imdsguard_probe::probe(&config));
        Row::new(pod, &report, dns, node_local_dns)
    } else {
        // The path the rules let `shop` and the monitoring pod read: through the proxy
        // in proxy mode, which the probe's own steps (all denied there) do not show.
        // First, before the probe spends the pod's request budget at the proxy (2
        // requests a second after a burst of 10).
        let harmless = crate::cloud::harmless_cell(cloud, connect_timeout);
        let reports: Vec<_> = crate::cloud::cloud_probe_configs(cloud, connect_timeout)
            .iter()
            .map(|c| rt.block_on(imdsguard_probe::probe(c)))
            .collect();
        // ECS task metadata: a connection is all the lab asks of it.
        let ecs = (cloud == Cloud::Aws).then(|| {
            let t = imdsguard_core::target::AWS_ECS_TASK_METADATA;
            if tcp_check(SocketAddr::new(t.ip, t.port), connect_timeout).connected() {
                Class::Reachable
            } else {
                Class::BlockedTimeout
            }
        });
        let mut row = crate::cloud::cloud_row(cloud, pod, &reports, ecs, dns, node_local_dns);
        row.endpoints.extend(harmless);
        row
    };
    if pod_to_pod {
        let timeout = connect_timeout.max(Duration::from_millis(500));
        row.pod_to_pod = Some(tcp_check(SocketAddr::V4(POD_TO_POD), timeout).connected());
    }
    row
}

/// The node's own processes, probed as child processes in the cgroups the kubelet would
/// give them: the kubelet (`system.slice`) and two hostNetwork pods (`kubepods.slice`).
struct HostProcs {
    layout: Layout,
    command: ProbeCommand,
}

impl HostProcs {
    /// The placements probed, `node` first.
    fn placements(&self) -> [&Placement; 3] {
        self.layout.all()
    }
}

/// Removes the lab's cgroups when dropped (the lab ended, or failed).
struct CgroupsMade;

impl Drop for CgroupsMade {
    fn drop(&mut self) {
        for left in hostnet::remove_cgroups() {
            eprintln!("imdsguard lab: could not remove the cgroup {left}");
        }
    }
}

/// Runs one probe as a child process in `placement`'s cgroup and reads its row.
fn probe_in_cgroup(
    host: &HostProcs,
    placement: &Placement,
    connect_timeout: Duration,
) -> Result<Row, LabError> {
    let probe = probe_config(connect_timeout);
    // The probe's own deadlines bound it; this only catches a child that hangs.
    let deadline = Duration::from_secs(30) + probe.timeout * 10;
    let out = hostnet::run_in_cgroup(
        &host.command,
        placement.row,
        connect_timeout,
        &placement.cgroup,
        deadline,
    )?;
    let row = Row::from_json(&out).map_err(|e| {
        LabError::Lab(format!(
            "the probe for {} (in {}): {e}",
            placement.row, placement.cgroup
        ))
    })?;
    if row.pod != placement.row {
        return Err(LabError::Lab(format!(
            "the probe for {} answered for {}",
            placement.row, row.pod
        )));
    }
    Ok(row)
}

/// The inner part of a probe run in a child process (`imdsguard lab`'s hidden
/// probe-row mode): probes from here (the node's namespace, the cgroup the lab put this
/// process in) and gives the row as JSON.
pub(crate) fn probe_row_json(cloud: Cloud, row: &str, connect_timeout: Duration) -> String {
    let r = probe_here(cloud, row, connect_timeout, false);
    serde_json::to_string(&r).expect("a row serializes")
}

/// Probes every pod and the node at once (`only`: just these).
fn probe_all(
    cloud: Cloud,
    sandbox: &Sandbox,
    host: Option<&HostProcs>,
    only: Option<&[String]>,
    connect_timeout: Duration,
    pod_to_pod: bool,
) -> Result<Vec<Row>, LabError> {
    let wanted = |name: &str| only.is_none_or(|o| o.iter().any(|n| n == name));
    let mut handles = Vec::new();
    for pod in sandbox.pods().iter().filter(|p| wanted(p.name())) {
        let name = pod.name().to_owned();
        handles.push(
            pod.netns()
                .spawn(move || Ok(probe_here(cloud, &name, connect_timeout, pod_to_pod))),
        );
    }
    match host {
        Some(host) => {
            // The node's own processes, each in its cgroup: the kubelet and the
            // hostNetwork pods (pod-to-pod is not asked with them: no --kubernetes).
            for placement in host.placements() {
                if !wanted(placement.row) {
                    continue;
                }
                let (host, placement) = (
                    HostProcs {
                        layout: host.layout.clone(),
                        command: host.command.clone(),
                    },
                    placement.clone(),
                );
                handles.push(std::thread::spawn(move || {
                    Ok::<_, imdsguard_node::NodeError>(probe_in_cgroup(
                        &host,
                        &placement,
                        connect_timeout,
                    ))
                }));
            }
        }
        None if wanted(NODE_ROW) => {
            // The node itself (the kubelet): imdsguard leaves it alone.
            let node = std::thread::spawn(move || {
                Ok::<_, imdsguard_node::NodeError>(Ok(probe_here(
                    cloud,
                    NODE_ROW,
                    connect_timeout,
                    pod_to_pod,
                )))
            });
            handles.push(node);
        }
        None => {}
    }
    let mut rows = Vec::new();
    for h in handles {
        rows.push(
            h.join()
                .map_err(|_| LabError::Lab("a probe thread panicked".into()))???,
        );
    }
    Ok(rows)
}

fn pod_infos(
    cloud: Cloud,
    sandbox: &Sandbox,
    allowed: &[SourcePair],
    known: &[SourcePair],
    kube: bool,
    host: Option<&HostProcs>,
) -> Vec<LabPod> {
    let mut out: Vec<LabPod> = sandbox
        .pods()
        .iter()
        .map(|p| {
            let s = p.spec();
            let iface = s.ingress_iface();
            let mut role = match (s.name.as_str(), s.attach) {
                (ALLOWED_POD, _) if kube => format!(
                    "expected by MetadataAccessPolicy/{}: the agent allowlists its (interface, address) pair",
                    crate::kubernetes::POLICY_NAME
                ),
                (ALLOWED_POD, _) => "allowlisted (interface, address) pair".to_owned(),
                (SPOOFER_POD, _) if kube => format!(
                    "borrows {ALLOWED_POD}'s address on its own interface (answers routed back to it); no Pod object"
                ),
                (SPOOFER_POD, _) => format!(
                    "borrows {ALLOWED_POD}'s address on its own interface (answers routed back to it); the proxy would take it for {ALLOWED_POD}"
                ),
                (_, Attach::Bridged) => format!("kubenet pod on bridge {}", sandbox::BRIDGE),
                _ if cloud == Cloud::Azure => "ordinary pod (Azure CNI)".to_owned(),
                _ => "ordinary pod (a routed veth, as the VPC CNI and GKE's dataplane wire pods)"
                    .to_owned(),
            };
            if kube && let Some(ns) = crate::kubernetes::api_namespace(&s.name) {
                role = format!("Pod {ns}/{}: {role}", s.name);
            }
            LabPod {
                name: s.name.clone(),
                address: s
                    .addrs()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                allowlisted: allowed
                    .iter()
                    .any(|a| a.iface == iface && a.addr == IpAddr::V4(s.addr)),
                through_proxy: false,
                known: known
                    .iter()
                    .any(|a| a.iface == iface && a.addr == IpAddr::V4(s.addr)),
                interface: if s.attach == Attach::Bridged {
                    format!("{iface} (port {})", s.host_iface())
                } else {
                    iface
                },
                role,
                cgroup: None,
            }
        })
        .collect();
    let node_address = match cloud {
        Cloud::Azure => NODE_ADDR.to_string(),
        _ => format!("{NODE_ADDR}, {}", sandbox::NODE_ADDR6),
    };
    let Some(host) = host else {
        out.push(LabPod {
            name: NODE_ROW.into(),
            address: node_address,
            interface: "(the node itself)".into(),
            role: "hostNetwork / kubelet: not filtered".into(),
            allowlisted: false,
            through_proxy: false,
            known: false,
            cgroup: None,
        });
        return out;
    };
    for placement in host.placements() {
        let (role, expected) = match placement.row {
            NODE_ROW => (
                "the kubelet, a node process (system.slice): not filtered".to_owned(),
                false,
            ),
            MONITORING_ROW => (
                format!(
                    "hostNetwork pod {} (Burstable), expected in block and observe modes: rule {} selects it; proxy mode: {}",
                    host_pod(MONITORING_ROW).id(),
                    match cloud {
                        Cloud::Azure => "monitoring-token",
                        Cloud::Aws => "monitoring-placement",
                        _ => "monitoring-zone",
                    },
                    match cloud {
                        Cloud::Azure => "IMDS through the proxy (allowed), WireServer dropped",
                        Cloud::Aws =>
                            "IMDS through the proxy (its placement only: the credentials denied), IPv6 and the other endpoints dropped",
                        _ =>
                            "the metadata server through the proxy (project and zone only: the token denied), IPv6 dropped",
                    }
                ),
                true,
            ),
            _ => (
                format!(
                    "hostNetwork pod {} (BestEffort), not expected: no rule selects it",
                    host_pod(DEBUG_ROW).id()
                ),
                false,
            ),
        };
        out.push(LabPod {
            name: placement.row.into(),
            address: node_address.clone(),
            interface: "(the node itself)".into(),
            role,
            allowlisted: expected,
            // Selected by the rules, named by no --allow: the proxy's in proxy mode.
            through_proxy: expected,
            known: placement.pod.is_some(),
            cgroup: Some(placement.cgroup.clone()),
        });
    }
    out
}

/// The hostNetwork pods as the proxy and the rules see them: `monitoring` (labelled
/// `app: monitoring`, which rule `monitoring-token` selects) and `debug` (no rule).
fn host_pod(row: &str) -> imdsguard_core::access::PodInfo {
    use imdsguard_core::access::PodInfo;
    let mut info = match row {
        MONITORING_ROW => PodInfo::new("monitoring", MONITORING_ROW),
        _ => PodInfo::new("debug", DEBUG_ROW),
    };
    let app = if row == MONITORING_ROW {
        "monitoring"
    } else {
        "debug"
    };
    info.labels.insert("app".into(), app.into());
    info
}

/// `controller` runs only with `--kubernetes`, which runs only `before` and `controller`
/// (the node's table is then the agent's).
fn check_phases(phases: &[Phase], kubernetes: bool) -> Result<(), LabError> {
    for p in phases {
        let ok = match p {
            Phase::Before => true,
            Phase::Controller => kubernetes,
            Phase::Block | Phase::Observe | Phase::Proxy | Phase::DryRun => !kubernetes,
        };
        if !ok {
            return Err(LabError::Lab(if kubernetes {
                format!(
                    "phase {} does not run with --kubernetes (its phases: before, controller)",
                    p.as_str()
                )
            } else {
                "phase controller needs --kubernetes".to_owned()
            }));
        }
    }
    Ok(())
}

/// Builds the lab, runs the phases and gives the report (`as_expected` says whether all
/// came out as expected).
pub(crate) fn run(isolated: &Isolated, args: &LabConfig) -> Result<LabReport, LabError> {
    let phases: Vec<Phase> = match (&args.kubernetes, args.phases.is_empty()) {
        (Some(_), true) => Phase::KUBERNETES.to_vec(),
        (None, true) => Phase::ALL.to_vec(),
        (_, false) => args.phases.clone(),
    };
    check_phases(&phases, args.kubernetes.is_some())?;
    let kube_mode = args.kubernetes.is_some();
    let mut notes = Vec::new();
    // The node's own processes in cgroups: made before anything else, removed when this
    // function ends however it ends (and by the signal handler).
    let mut _cgroups = None;
    let host = match (&args.hostnet, &args.probe_command) {
        _ if kube_mode => {
            notes.push(format!(
                "rows {MONITORING_ROW} and {DEBUG_ROW} skipped: they run without --kubernetes"
            ));
            None
        }
        (HostNet::Skipped(why), _) => {
            notes.push(format!(
                "rows {MONITORING_ROW} and {DEBUG_ROW} skipped (hostNetwork pods by cgroup): {why}; \
                 the node row is probed from the lab's own process"
            ));
            None
        }
        (HostNet::Cgroup2, None) => {
            notes.push(format!(
                "rows {MONITORING_ROW} and {DEBUG_ROW} skipped: no command to run probes in cgroups was given"
            ));
            None
        }
        (HostNet::Cgroup2, Some(command)) => {
            for stale in hostnet::sweep_stale() {
                eprintln!("imdsguard lab: removed {stale}, left by a lab run that is gone");
            }
            let layout = Layout::new(std::process::id());
            _cgroups = Some(CgroupsMade);
            layout.create()?;
            Some(HostProcs {
                layout,
                command: command.clone(),
            })
        }
    };
    let cloud = args.cloud;
    let sandbox = Sandbox::build_for(
        isolated,
        &crate::cloud::pods(cloud),
        &crate::cloud::addresses(cloud),
    )?;
    let _emulator = start_emulator(cloud, sandbox.cloud())?;
    let mut services = Services::new();
    services.udp_echo(Some(sandbox.cloud()), sandbox::cloud_dns(cloud))?;
    for (t, banner) in crate::cloud::stand_ins(cloud) {
        services.tcp_banner(Some(sandbox.cloud()), SocketAddr::new(t.ip, t.port), banner)?;
    }
    services.udp_echo(None, SocketAddr::new(NODE_LOCAL_DNS.into(), 53))?;
    if kube_mode {
        let web = sandbox.pod("web").expect("the lab has a web pod");
        services.tcp_banner(
            Some(web.netns()),
            SocketAddr::V4(POD_TO_POD),
            "imdsguard-lab web",
        )?;
    }

    let allowed_spec = sandbox
        .pod(ALLOWED_POD)
        .expect("the lab has an allowlisted pod")
        .spec()
        .clone();
    // Its pair in each family (AWS and GCP pods are dual-stack).
    let allowed: Vec<SourcePair> = allowed_spec
        .addrs()
        .into_iter()
        .map(|a| SourcePair::new(&allowed_spec.ingress_iface(), a))
        .collect::<Result<_, _>>()
        .map_err(imdsguard_node::NodeError::from)?;
    // Every pod the node hosts, with the interface its traffic enters on; the spoofer's
    // borrowed address is not its own.
    let known: Vec<SourcePair> = sandbox
        .pods()
        .iter()
        .filter(|p| p.name() != SPOOFER_POD)
        .flat_map(|p| {
            let iface = p.spec().ingress_iface();
            p.spec()
                .addrs()
                .into_iter()
                .map(move |a| SourcePair::new(&iface, a))
        })
        .collect::<Result<_, _>>()
        .map_err(imdsguard_node::NodeError::from)?;
    let pods = pod_infos(cloud, &sandbox, &allowed, &known, kube_mode, host.as_ref());
    let mut kube = match &args.kubernetes {
        Some(k) => Some(KubeLab::start(k, &sandbox, cloud)?),
        None => None,
    };

    let mut config = RulesetConfig::new(Mode::Block, &[cloud]);
    config.proxy_v4 = Some(PROXY_LISTEN);
    if cloud != Cloud::Azure {
        config.proxy_v6 = Some(PROXY_LISTEN6);
    }
    let mut enforcer = Enforcer::new(config.clone(), Exec::here())?
        .with_allowed(allowed.clone())
        .with_known(known);
    let mut results: Vec<PhaseResult> = Vec::new();
    for phase in &phases {
        let mut decisions = None;
        let mut _proxy = None;
        // The dry run's counters as it starts (carried over from the phases before).
        let mut counters_at_start = Vec::new();
        let enforcement = match phase {
            Phase::Before => {
                enforcer.uninstall()?;
                if host.is_some() {
                    host_table::uninstall()?;
                }
                "none (no inet imdsguard table)".to_owned()
            }
            Phase::Block | Phase::Observe | Phase::Proxy | Phase::DryRun => {
                let mode = match phase {
                    Phase::Block => Mode::Block,
                    Phase::Observe => Mode::Observe,
                    _ => Mode::Proxy,
                };
                let mut c = config.clone();
                c.mode = mode;
                // The dry run: the tables count and log what proxy mode would drop and
                // let it through (the agent's --dry-run).
                c.dry_run = *phase == Phase::DryRun;
                enforcer.replace(c.clone())?;
                if c.dry_run {
                    counters_at_start = enforcer.counters()?;
                }
                let host_callers = match &host {
                    Some(host) => Some((host, host_table::apply(cloud, &c, host)?)),
                    None => None,
                };
                if mode == Mode::Proxy {
                    let sink = Arc::new(Decisions::default());
                    _proxy = Some(start_proxy(
                        cloud,
                        *phase == Phase::DryRun,
                        host_callers,
                        sink.clone(),
                    )?);
                    decisions = Some(sink);
                }
                let hostnet = if host.is_some() {
                    "; hostNetwork pods by cgroup (inet imdsguard_host): the expected one let through"
                } else {
                    ""
                };
                let (endpoints, not_proxied) = match cloud {
                    Cloud::Azure => ("IMDS and WireServer", "WireServer"),
                    Cloud::Aws => (
                        "IMDS (IPv4 and IPv6), the EKS Pod Identity agent and ECS task metadata",
                        "the Pod Identity agent and ECS task metadata",
                    ),
                    _ => ("the metadata server (IPv4 and IPv6)", ""),
                };
                // " and WireServer" after "unknown pairs"; "WireServer from pods not
                // expected and " before it in the dry run; nothing when the proxy serves
                // every protected endpoint (GCP).
                let (and_others, others_and) = if not_proxied.is_empty() {
                    (String::new(), String::new())
                } else {
                    (
                        format!(" and {not_proxied}"),
                        format!("{not_proxied} from pods not expected and "),
                    )
                };
                match phase {
                    Phase::Block => format!(
                        "block: pod traffic to {endpoints} dropped unless allowlisted{hostnet}, the others dropped"
                    ),
                    Phase::Observe => format!(
                        "observe: let through, counted and logged (NFLOG){}",
                        if host.is_some() {
                            "; hostNetwork pods counted per pod by cgroup"
                        } else {
                            ""
                        }
                    ),
                    Phase::Proxy => format!(
                        "proxy: {} from known (interface, address) pairs{} redirected to the filtering proxy at {PROXY_LISTEN}, unknown pairs{} dropped{}, allowlisted pair direct",
                        match cloud {
                            Cloud::Azure => "IMDS".to_owned(),
                            _ => format!("IPv4 and IPv6 metadata (IPv6 to {PROXY_LISTEN6})"),
                        },
                        if host.is_some() {
                            " and from pod cgroups"
                        } else {
                            ""
                        },
                        and_others,
                        if host.is_some() {
                            " (hostNetwork pods' too: no --allow names them)"
                        } else {
                            ""
                        }
                    ),
                    _ => format!(
                        "dry run: proxy mode's tables dropping nothing ({others_and}unknown pairs let through, counted would_drop), the filtering proxy at {PROXY_LISTEN} with --dry-run: denials recorded as would-deny and forwarded"
                    ),
                }
            }
            Phase::Controller => kube
                .as_mut()
                .expect("checked: the controller phase runs with --kubernetes")
                .protect(&allowed)?,
        };
        let rows = probe_phase(
            cloud,
            &sandbox,
            host.as_ref(),
            &pods,
            *phase,
            args.connect_timeout,
            kube_mode,
        )?;
        let mut counters = if *phase == Phase::Before {
            Vec::new()
        } else {
            enforcer.counters()?
        };
        let mut unexpected = Vec::new();
        for info in &pods {
            if let Some(row) = rows.iter().find(|r| r.pod == info.name) {
                unexpected.extend(check(cloud, *phase, info, row));
            }
        }
        // The controller phase's table is the agent's (checked by its allow set).
        if !matches!(phase, Phase::Before | Phase::Controller) && !enforcer.status()?.enforcing {
            unexpected.push("the nft table is not as installed".into());
        }
        if let Some(host) = &host
            && !matches!(phase, Phase::Before | Phase::Controller)
        {
            // Each hostNetwork pod's rule matched its sockets by cgroup: its own counter
            // counts what it sent (observe: its connections; block: what it was let
            // through or dropped for; proxy: what was not redirected, WireServer).
            let per_pod = host_table::counters(host)?;
            // In proxy mode (and its dry run) they count only what is not redirected:
            // nothing when the proxy serves every protected endpoint (GCP).
            let counted = !matches!(phase, Phase::Proxy | Phase::DryRun)
                || config.protected.iter().any(|t| !config.proxied.contains(t));
            for c in per_pod.iter().filter(|_| counted) {
                if c.packets == 0 {
                    unexpected.push(format!(
                        "{}: the host table counted nothing for it in phase {}",
                        c.name,
                        phase.as_str()
                    ));
                }
            }
            counters.extend(per_pod);
        }
        let mut report = None;
        if *phase == Phase::DryRun {
            // Every row keeps what it had before protection: nothing is enforced, neither
            // the proxy's denials nor the tables' drops (the spoofer's too).
            if let Some(before) = results.iter().find(|p| p.phase == Phase::Before) {
                for row in &rows {
                    if let Some(b) = before.rows.iter().find(|b| b.pod == row.pod)
                        && b.cell() != row.cell()
                    {
                        unexpected.push(format!(
                            "{}: {} in phase dry-run, {} before protection",
                            row.pod,
                            row.cell(),
                            b.cell()
                        ));
                    }
                }
            }
            // What proxy mode would drop was counted, never dropped: the phase's own
            // packets (the counters are carried over from the phases before).
            let counter = |name: &str| {
                let of = |cs: &[CounterValue]| {
                    cs.iter().find(|c| c.name == name).map_or(0, |c| c.packets)
                };
                of(&counters).saturating_sub(of(&counters_at_start))
            };
            for name in [nft::counter::BLOCKED, nft::counter::SPOOFED] {
                if counter(name) != 0 {
                    unexpected.push(format!(
                        "the nft counter {name} counted {} packets in the dry run, which drops nothing",
                        counter(name)
                    ));
                }
            }
            if counter(nft::counter::WOULD_DROP) == 0 {
                unexpected.push(
                    "the nft counter would_drop counted nothing in the dry run (the spoofer's packets would be dropped in proxy mode)".into(),
                );
            }
            let proxy_denied = results.iter().find(|p| p.phase == Phase::Proxy).map(|p| {
                p.rows
                    .iter()
                    .filter(|r| r.denied_by_proxy())
                    .map(|r| r.pod.clone())
                    .collect::<Vec<_>>()
            });
            let sink = decisions.as_ref().expect("the dry-run phase has a proxy");
            let r = dry_run_report(sink, proxy_denied)?;
            if let Some(denied) = &r.proxy_denied
                && *denied != r.pods
            {
                unexpected.push(format!(
                    "the dry run's report names {} but the proxy phase denied {}",
                    list(&r.pods),
                    list(denied)
                ));
            }
            report = Some(r);
        }
        results.push(PhaseResult {
            phase: *phase,
            enforcement,
            rows,
            counters,
            unexpected,
            report,
        });
    }

    // Read the policies back, then stop the agent, the controller and the control plane
    // (before anything else touches the table the agent keeps).
    let kubernetes = match kube.take() {
        Some(k) if phases.contains(&Phase::Controller) => {
            let result = k.read_back()?;
            if let Some(p) = results.iter_mut().find(|p| p.phase == Phase::Controller) {
                p.unexpected.extend(KubeLab::unexpected(&result));
            }
            Some(result)
        }
        _ => None,
    };

    let bench = if args.bench_allow > 0 {
        let mut c = config.clone();
        c.mode = Mode::Block;
        enforcer.replace(c)?;
        let web = sandbox.pod("web").expect("the lab has a web pod");
        Some(crate::bench::allow_latency(
            &mut enforcer,
            web,
            SocketAddr::new(IMDS_ADDRESS.into(), 80),
            args.bench_allow,
        )?)
    } else {
        None
    };
    // Not needed (the namespace goes away with this process), but tidy.
    enforcer.uninstall()?;
    if host.is_some() {
        host_table::uninstall()?;
    }

    let as_expected = results.iter().all(|p| p.unexpected.is_empty());
    let report = LabReport {
        cloud,
        pods,
        phases: results,
        bench,
        kubernetes,
        notes,
        as_expected,
    };
    Ok(report)
}

/// `a, b, c`, or `nobody`.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nobody".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_would_take_the_spoofer_for_a_pod_it_allows() {
        use imdsguard_core::access::{AccessRules, PodIndex};
        let rules = AccessRules::parse(crate::cloud::proxy_rules(Cloud::Azure)).unwrap();
        assert_eq!(rules.len(), 3);
        let pods = PodIndex::parse(&crate::cloud::proxy_pods(Cloud::Azure)).unwrap();
        assert_eq!(pods.len(), 3);
        let spoofer = sandbox::lab_pods()
            .into_iter()
            .find(|p| p.name == SPOOFER_POD)
            .unwrap();
        // By address alone the spoofer is the allowlisted pod, which a rule selects.
        let as_seen = pods.get(IpAddr::V4(spoofer.addr)).unwrap();
        assert_eq!(as_seen.name, ALLOWED_POD);
        assert!(rules.rules().iter().any(|r| r.selects(as_seen)));
    }

    #[test]
    fn the_rules_expect_the_monitoring_pod_and_not_the_debug_pod() {
        use imdsguard_core::access::AccessRules;
        let rules = AccessRules::parse(crate::cloud::proxy_rules(Cloud::Azure)).unwrap();
        let selected = |row: &str| -> Vec<String> {
            let info = host_pod(row);
            rules
                .rules()
                .iter()
                .filter(|r| r.selects(&info))
                .map(|r| r.name.to_string())
                .collect()
        };
        assert_eq!(selected(MONITORING_ROW), ["monitoring-token"]);
        assert!(selected(DEBUG_ROW).is_empty());
    }

    #[test]
    fn only_cells_that_timed_out_against_expectations_are_probed_again() {
        let pod = |name: &str, allowlisted: bool| LabPod {
            name: name.into(),
            address: "10.244.0.1".into(),
            interface: "azvx".into(),
            role: String::new(),
            allowlisted,
            through_proxy: false,
            known: true,
            cgroup: None,
        };
        let row = |name: &str, class: Class, sensitive: bool, dns: bool| Row {
            pod: name.into(),
            imds: class,
            token: class,
            wireserver: class,
            hostgaplugin: class,
            azure_dns: dns,
            node_local_dns: true,
            sensitive,
            reached: Vec::new(),
            denied_by: None,
            attempts: 1,
            pod_to_pod: None,
            endpoints: Vec::new(),
        };
        let pods = [
            pod("allowed", true),
            pod("web", false),
            pod("batch", false),
            pod("slow-dns", false),
        ];
        let timeout = Class::BlockedTimeout;
        let rows = [
            // Should reach IMDS, timed out: a busy machine, or a real block. Again.
            row("allowed", timeout, false, true),
            // Dropped as it should be: a timeout is the expected answer.
            row("web", timeout, false, true),
            // Unexpected, but not a timeout (it got through): no second chance.
            row("batch", Class::TokenObtained, true, true),
            // DNS unanswered in time: again.
            row("slow-dns", timeout, false, false),
        ];
        assert_eq!(
            to_retry(Cloud::Azure, Phase::Block, &pods, &rows),
            ["allowed", "slow-dns"]
        );
        // Before protection everything should be reached: every timeout is retried.
        assert_eq!(
            to_retry(Cloud::Azure, Phase::Before, &pods, &rows),
            ["allowed", "web", "slow-dns"]
        );
    }

    #[test]
    fn the_controller_phase_and_kubernetes_go_together() {
        assert!(check_phases(&Phase::KUBERNETES, true).is_ok());
        assert!(check_phases(&Phase::ALL, false).is_ok());
        let e = check_phases(&[Phase::Controller], false).unwrap_err();
        assert!(e.to_string().contains("needs --kubernetes"), "{e}");
        let e = check_phases(&[Phase::Before, Phase::Block], true).unwrap_err();
        assert!(e.to_string().contains("phase block"), "{e}");
    }

    #[test]
    fn the_probe_targets_the_default_endpoints() {
        let c = probe_config(Duration::from_millis(300));
        assert_eq!(c.endpoint.to_string(), DEFAULT_ENDPOINT);
        assert_eq!(
            c.wireserver.unwrap().to_string(),
            imdsguard_probe::DEFAULT_WIRESERVER
        );
        assert_eq!(
            c.hostgaplugin.unwrap().to_string(),
            imdsguard_probe::DEFAULT_HOSTGAPLUGIN
        );
        assert_eq!(c.connect_timeout, Duration::from_millis(300));
    }
}
