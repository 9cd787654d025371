//! `imdsguard proxy`: the flags of the filtering metadata proxy and its process
//! (logging, runtime, SIGINT/SIGTERM to stop, SIGHUP to reload); the proxy is
//! `imdsguard-proxy`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imdsguard_core::access::{AccessRules, PodIndex};
use imdsguard_proxy::{
    ApplyError, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, DecisionRecord, DecisionSink,
    HostCallerConfig, HostCallerMap, Limits, Metrics, PodRate, Proxy, ProxyConfig, ProxyControl,
    ProxyFiles, ReloadTarget, Timeouts, Upstream,
};

use crate::cloud_arg::CloudArg;
use crate::service::{self, LogFormat, StopSignals, parse_duration};

/// `imdsguard proxy`: the filtering metadata proxy.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProxyArgs {
    /// Whose metadata service the proxy stands in front of: its paths, headers, query
    /// parameters and errors, and the rules file's `cloud:` (see docs/proxy.md). The
    /// upstream is 169.254.169.254 for each.
    #[arg(long, value_enum, default_value = "azure")]
    pub cloud: CloudArg,
    /// Address to listen on for pods' IMDS requests.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Do not start the admin listener.
    #[arg(long)]
    pub no_admin: bool,
    /// The metadata service to forward allowed requests to (http://HOST[:PORT]).
    #[arg(long, value_name = "URL", default_value = imdsguard_proxy::DEFAULT_UPSTREAM)]
    pub upstream: String,
    /// Access rules (YAML or JSON; see docs/proxy.md).
    #[arg(long, value_name = "FILE")]
    pub rules: PathBuf,
    /// Pods by address (YAML/JSON list of {ip, namespace, name, labels, serviceAccount},
    /// or a Kubernetes PodList). Without it every caller is unknown and denied.
    #[arg(long, value_name = "FILE")]
    pub pods: Option<PathBuf>,
    /// Accept a rules file with no rules (every request denied) and be ready with it;
    /// without this an empty or comment-only rules file is an error.
    #[arg(long)]
    pub allow_empty_rules: bool,
    /// Accept a pods file with no pods (every caller unknown and denied); without this
    /// an empty or comment-only pods file is an error.
    #[arg(long)]
    pub allow_empty_pods: bool,
    /// How often to look for changed rules or pods files (0: only on SIGHUP). A file
    /// counts as changed when the file its path leads to is another (a rename over it)
    /// or its size or times changed.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Host accepted in absolute-form request targets (http://HOST/...); repeatable.
    /// Default: the cloud's (azure 169.254.169.254; aws also [fd00:ec2::254]; gcp also
    /// metadata.google.internal, metadata and [fd20:ce::254]); IPv4-mapped forms of an
    /// address are that address.
    #[arg(long = "absolute-form-host", value_name = "HOST[:PORT]")]
    pub absolute_form_hosts: Vec<String>,
    /// Time for a client to send its request headers (also the idle keep-alive time).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Time for a client to send a request body (POST).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Time to connect to the upstream.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time for the upstream's whole answer.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Most client connections at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// Most client connections at once from one source (more are closed on accept): an
    /// address, or with --host-callers a caller on this host by address and socket
    /// cgroup, so hostNetwork pods do not share the node address's; at most
    /// --max-connections.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections_per_source: usize,
    /// Requests per second each pod (or unknown source address) may send to the
    /// instance document, versions, scheduled events... (IMDS allows the VM 5); over it
    /// the pod gets IMDS's 429 with Retry-After. 0: no limit.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 2.0)]
    pub pod_rate: f64,
    /// The same for the managed-identity endpoints (IMDS allows the VM 20). 0: no limit.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 5.0)]
    pub pod_identity_rate: f64,
    /// Requests a pod may send at once above its rates (per class).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub pod_burst: u32,
    /// Largest request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// Largest upstream answer in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_response: usize,
    /// Allow listening on 169.254.169.254 or 168.63.129.16 (where the proxy owns the address).
    #[arg(long)]
    pub allow_metadata_address: bool,
    /// Dry run: a request the rules deny is logged and counted as would-deny and
    /// forwarded; nothing is denied but ambiguous targets (invalid and throttled
    /// requests are answered as usual). See `imdsguard report`.
    #[arg(long)]
    pub dry_run: bool,
    /// Identify callers on this host (hostNetwork pods share its addresses) by their
    /// socket's cgroup: the pods file's entries with `hostNetwork: true` and a `uid`,
    /// found under the cgroup v2 mount (/sys/fs/cgroup unless --cgroup-root). A
    /// process in a pod's cgroup that is no such pod is denied (unknown-pod-cgroup).
    #[arg(long)]
    pub host_callers: bool,
    /// The cgroup v2 mount holding the pods' cgroups (kubepods.slice, kubepods);
    /// implies --host-callers.
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// A destination host callers connect to (an endpoint redirected to the proxy);
    /// the proxy's own address is tried after these. Repeatable. Default: the cloud's
    /// metadata service, 169.254.169.254:80 (aws also [fd00:ec2::254]:80, gcp also
    /// [fd20:ce::254]:80).
    #[arg(long = "host-caller-destination", value_name = "ADDR:PORT")]
    pub host_caller_destinations: Vec<SocketAddr>,
    /// Log format (standard error).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Check the rules and pods files, print a summary and exit.
    #[arg(long)]
    pub check: bool,
}

impl ProxyArgs {
    /// The rules and pods files these flags name.
    pub(crate) fn files(&self) -> ProxyFiles {
        ProxyFiles {
            rules: self.rules.clone(),
            pods: self.pods.clone(),
            allow_empty_rules: self.allow_empty_rules,
            allow_empty_pods: self.allow_empty_pods,
        }
    }

    /// The library configuration these flags stand for, with the files as read.
    pub(crate) fn config(
        &self,
        loaded: &imdsguard_proxy::LoadedFiles,
    ) -> anyhow::Result<ProxyConfig> {
        let mut config = ProxyConfig::for_cloud(
            self.cloud.into(),
            self.listen,
            Upstream::parse(&self.upstream)?,
        );
        config.admin_listen = (!self.no_admin).then_some(self.admin_listen);
        config.allow_metadata_address = self.allow_metadata_address;
        config.allow_empty_rules = self.allow_empty_rules;
        config.rules = Some(loaded.rules.clone());
        config.pods = loaded.pods.clone();
        if !self.absolute_form_hosts.is_empty() {
            config.absolute_form_hosts = self.absolute_form_hosts.clone();
        }
        config.timeouts = Timeouts {
            header_read: self.header_timeout,
            request_body: self.body_timeout,
            upstream_connect: self.connect_timeout,
            upstream_response: self.upstream_timeout,
        };
        config.limits = Limits {
            max_request_body: self.max_body,
            max_response_body: self.max_response,
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            ..Limits::default()
        };
        config.pod_rate = PodRate {
            general: self.pod_rate,
            identity: self.pod_identity_rate,
            burst: self.pod_burst,
        };
        config.dry_run = self.dry_run;
        config.host_callers = self.host_caller_root().map(|root| HostCallerConfig {
            cgroup_root: root,
            destinations: if self.host_caller_destinations.is_empty() {
                default_host_caller_destinations(self.cloud.into())
            } else {
                self.host_caller_destinations.clone()
            },
        });
        config.check()?;
        Ok(config)
    }

    /// The cgroup v2 mount when host callers are identified.
    fn host_caller_root(&self) -> Option<PathBuf> {
        match &self.cgroup_root {
            Some(root) => Some(root.clone()),
            None => self
                .host_callers
                .then(|| PathBuf::from(imdsguard_core::cgroup::CGROUP2_MOUNT)),
        }
    }
}

/// Where host callers connect when no --host-caller-destination is given: the cloud's
/// metadata service (IPv4, and IPv6 for AWS and GCP).
fn default_host_caller_destinations(cloud: imdsguard_proxy::Cloud) -> Vec<SocketAddr> {
    use imdsguard_proxy::Cloud;
    let v4 = SocketAddr::from((imdsguard_core::imds::IMDS_ADDRESS, 80));
    match cloud {
        Cloud::Azure => vec![v4],
        Cloud::Aws => vec![
            v4,
            SocketAddr::from((imdsguard_core::aws::IMDS_ADDRESS_V6, 80)),
        ],
        Cloud::Gcp => vec![
            v4,
            SocketAddr::from((imdsguard_core::gcp::METADATA_IPV6_ADDRESS, 80)),
        ],
    }
}

/// The hostNetwork pods of the pods file found by cgroup: a scan of the pod roots
/// under `root` (`imdsguard_node::host::scan_pod_cgroups`) joined with the pods'
/// UIDs. A scan that fails is logged and gives no pods (their callers are then
/// denied as unknown pod cgroups, never let through).
fn host_caller_map(root: &Path, pods: &PodIndex) -> HostCallerMap {
    let mut map = HostCallerMap::new();
    let host_pods = pods.host_network_pods();
    if host_pods.is_empty() {
        return map;
    }
    let scan = match imdsguard_node::host::scan_pod_cgroups(root) {
        Ok(scan) => scan,
        Err(e) => {
            tracing::warn!(cgroup_root = %root.display(), error = %e, "cannot scan the pod cgroups: hostNetwork pods are not identified until the next scan");
            return map;
        }
    };
    for pod in host_pods {
        let Some(uid) = pod.uid.as_deref() else {
            continue;
        };
        for dir in scan.of_uid(uid) {
            map.insert(dir.id, pod.info.clone());
        }
    }
    map
}

/// The proxy's control, with the hostNetwork pods' cgroups scanned again whenever the
/// pods file is (and on a miss, through the control's source).
#[derive(Clone)]
struct HostCallerScan {
    control: ProxyControl,
    root: PathBuf,
}

impl HostCallerScan {
    /// Scans now, hands the map to the proxy and makes the scan its source.
    fn install(control: ProxyControl, root: PathBuf) -> HostCallerScan {
        let scan = HostCallerScan { control, root };
        let pods = scan.control.pods();
        let without_uid = pods
            .host_network_pods()
            .iter()
            .filter(|p| p.uid.is_none())
            .count();
        if without_uid > 0 {
            tracing::warn!(
                pods = without_uid,
                "hostNetwork pods without a uid in the pods file cannot be identified by cgroup; their requests are denied (unknown-pod-cgroup)"
            );
        }
        let map = host_caller_map(&scan.root, &pods);
        tracing::info!(
            cgroup_root = %scan.root.display(),
            host_network_pods = pods.host_network_pods().len(),
            found = map.len(),
            "hostNetwork pods identified by cgroup"
        );
        scan.control.set_host_callers(map);
        let source = scan.clone();
        scan.control
            .set_host_caller_source(Some(Arc::new(move || source.map())));
        scan
    }

    fn map(&self) -> HostCallerMap {
        host_caller_map(&self.root, &self.control.pods())
    }
}

impl ReloadTarget for HostCallerScan {
    async fn set_rules(&self, rules: AccessRules) -> Result<(), ApplyError> {
        self.control.check_rules(&rules)?;
        self.control.set_rules(rules);
        Ok(())
    }

    async fn set_pods(&self, pods: PodIndex) -> Result<(), ApplyError> {
        self.control.set_pods(pods);
        let scan = self.clone();
        let map = tokio::task::spawn_blocking(move || scan.map()).await?;
        self.control.set_host_callers(map);
        Ok(())
    }

    fn metrics(&self) -> &Metrics {
        self.control.metrics()
    }
}

/// Runs `imdsguard proxy`: reads the files, starts the proxy on a tokio runtime of its
/// own, prints one line per listener on standard output (`proxy http://…`,
/// `admin http://…`), reloads the files on SIGHUP and when they change, and stops on
/// SIGINT or SIGTERM, letting requests in flight finish. With `--check`, only reads
/// the files and prints a summary.
pub(crate) fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let files = args.files();
    let loaded = files.load()?;
    let config = args.config(&loaded)?;
    if args.check {
        let rules = config.rules.as_ref().expect("read above");
        let names: Vec<&str> = rules.rules().iter().map(|r| &*r.name).collect();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}: {} rule(s): {}",
            args.rules.display(),
            rules.len(),
            names.join(", ")
        );
        if config.cloud != imdsguard_proxy::Cloud::Azure {
            let _ = writeln!(
                out,
                "{}: cloud {}",
                args.rules.display(),
                config.cloud.name()
            );
        }
        if let Some(p) = &args.pods {
            let _ = writeln!(out, "{}: {} address(es)", p.display(), config.pods.len());
            for issue in config.pods.issues() {
                let _ = writeln!(out, "{}: left out: {issue}", p.display());
            }
        }
        return Ok(());
    }
    service::init_logging(args.log_format);
    if args.pods.is_none() {
        tracing::warn!("no --pods file: every caller is an unknown source and is denied");
    }
    let mut config = config;
    if let Some(log) = service::json_log_buffer() {
        config.decisions = Some(Arc::new(JsonDecisionLog::new(log)));
    }
    let metrics = config.metrics.get_or_insert_with(Metrics::new);
    metrics.count_log_drops(service::dropped_log_lines);
    let host_root = args.host_caller_root();
    let runtime = service::server_runtime()?;
    let result = runtime.block_on(async move {
        let mut signals = StopSignals::install()?;
        let proxy = Proxy::start(config).await?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "proxy http://{}", proxy.local_addr());
            if let Some(a) = proxy.admin_addr() {
                let _ = writeln!(out, "admin http://{a}");
            }
            let _ = out.flush();
        }
        let (reload_now, asked) = tokio::sync::mpsc::unbounded_channel();
        service::forward_hangups(reload_now);
        let reloader = match host_root {
            Some(root) => {
                let control = proxy.control();
                let scan =
                    tokio::task::spawn_blocking(move || HostCallerScan::install(control, root))
                        .await?;
                files.follow(&loaded, scan, args.reload_interval, asked)
            }
            None => files.follow(&loaded, proxy.control(), args.reload_interval, asked),
        };
        signals.recv().await;
        tracing::info!("stopping");
        reloader.abort();
        proxy.shutdown().await;
        Ok(())
    });
    service::flush_logs();
    result
}

/// The decision records as JSON lines in the log buffer (`--log-format json`), written
/// here rather than by `tracing-subscriber`'s JSON formatter (about a fifth of the
/// proxy's time on denied requests): the same line the formatter writes for the
/// `imdsguard::decision` event (`timestamp`, `level`, `fields`, `target`), subject to
/// the same `RUST_LOG` filter (read once, when the proxy starts).
struct JsonDecisionLog {
    log: crate::log_writer::BufferedLog,
    info: bool,
    warn: bool,
}

impl JsonDecisionLog {
    /// Call after [`service::init_logging`]: the filter is asked then.
    fn new(log: crate::log_writer::BufferedLog) -> JsonDecisionLog {
        JsonDecisionLog {
            log,
            info: tracing::enabled!(target: "imdsguard::decision", tracing::Level::INFO),
            warn: tracing::enabled!(target: "imdsguard::decision", tracing::Level::WARN),
        }
    }

    /// One record's line, newline included.
    fn line(record: &DecisionRecord<'_>, now: std::time::SystemTime, line: &mut String) {
        use std::fmt::Write as _;
        line.clear();
        let _ = write!(
            line,
            r#"{{"timestamp":"{}","level":"{}","fields":"#,
            humantime::format_rfc3339_micros(now),
            if record.is_warning() { "WARN" } else { "INFO" },
        );
        record.write_json_fields(line);
        line.push_str(",\"target\":\"imdsguard::decision\"}\n");
    }
}

impl DecisionSink for JsonDecisionLog {
    fn record(&self, record: &DecisionRecord<'_>) {
        if !(if record.is_warning() {
            self.warn
        } else {
            self.info
        }) {
            return;
        }
        thread_local! {
            static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(1024));
        }
        LINE.with_borrow_mut(|line| {
            JsonDecisionLog::line(record, std::time::SystemTime::now(), line);
            self.log.append(line.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_json_decision_line_has_the_subscribers_shape() {
        let rec = DecisionRecord {
            peer: "127.0.0.3".parse().unwrap(),
            pod: None,
            method: "GET",
            path: "/metadata/versions",
            endpoint: "versions",
            decision: "deny",
            rule: "unknown-source",
            status: 403,
            latency_us: 12,
            reason: Some("no known pod"),
            resource: None,
            identity: None,
            redacted: false,
            host_network: false,
            cgroup: None,
        };
        let now = std::time::UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456);
        let mut line = String::new();
        JsonDecisionLog::line(&rec, now, &mut line);
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        // tracing-subscriber's JSON: RFC 3339 UTC with microseconds.
        assert_eq!(v["timestamp"], "2026-11-18T11:06:40.123456Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "imdsguard::decision");
        assert_eq!(v["fields"]["message"], "decision");
        assert_eq!(v["fields"]["rule"], "unknown-source");
        assert_eq!(v["fields"]["status"], 403);
        let warn = DecisionRecord {
            decision: "upstream-error",
            ..rec
        };
        JsonDecisionLog::line(&warn, now, &mut line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
    }
    use imdsguard_proxy::ProxyError;
    use imdsguard_proxy::files::FileError;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    #[test]
    fn cloud_sets_the_hosts_and_the_rules_must_say_it() {
        let dir =
            std::env::temp_dir().join(format!("imdsguard-proxy-cli-cloud-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        std::fs::write(
            &rules,
            "cloud: gcp\nrules: [{name: z, subjects: [{namespace: '*'}], paths: [/computeMetadata/v1/instance/zone]}]",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut argv = vec!["proxy", "--rules", rules.to_str().unwrap()];
            argv.extend_from_slice(extra);
            let cli = Cli::try_parse_from(argv).unwrap();
            cli.args.config(&cli.args.files().load().unwrap())
        };
        let c = parse(&["--cloud", "gcp"]).unwrap();
        assert_eq!(c.cloud, imdsguard_proxy::Cloud::Gcp);
        assert!(
            c.absolute_form_hosts
                .contains(&"metadata.google.internal".to_string()),
            "{:?}",
            c.absolute_form_hosts
        );
        assert_eq!(c.upstream, Upstream::default());
        let c = parse(&["--cloud", "gcp", "--absolute-form-host", "metadata"]).unwrap();
        assert_eq!(c.absolute_form_hosts, vec!["metadata".to_string()]);
        // The default cloud is Azure's, and GCP rules are refused there.
        let e = parse(&[]).unwrap_err().to_string();
        assert!(
            e.contains("cloud gcp") && e.contains("--cloud azure"),
            "{e}"
        );
        assert!(Cli::try_parse_from(["proxy", "--rules", "r", "--cloud", "ibm"]).is_err());
        let c = parse(&["--cloud", "gcp", "--host-callers"]).unwrap();
        assert_eq!(
            c.host_callers.unwrap().destinations,
            vec![
                "169.254.169.254:80".parse().unwrap(),
                "[fd20:ce::254]:80".parse().unwrap()
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn arguments_map_to_the_configuration() {
        let dir = std::env::temp_dir().join(format!("imdsguard-proxy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        let pods = dir.join("pods.yaml");
        std::fs::write(
            &rules,
            "rules: [{name: v, subjects: [{namespace: '*'}], paths: [/metadata/versions]}]",
        )
        .unwrap();
        std::fs::write(&pods, "[{ip: 127.0.0.2, namespace: a, name: b}]").unwrap();
        let cli = Cli::try_parse_from([
            "proxy",
            "--rules",
            rules.to_str().unwrap(),
            "--pods",
            pods.to_str().unwrap(),
            "--upstream",
            "http://127.0.0.1:8169",
            "--connect-timeout",
            "250ms",
            "--no-admin",
        ])
        .unwrap();
        let c = cli.args.config(&cli.args.files().load().unwrap()).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.upstream.authority(), "127.0.0.1:8169");
        assert_eq!(c.rules.as_ref().unwrap().len(), 1);
        assert_eq!(c.pods.len(), 1);
        assert_eq!(c.timeouts.upstream_connect, Duration::from_millis(250));
        assert_eq!(c.absolute_form_hosts, vec!["169.254.169.254".to_string()]);
        assert!(
            !c.dry_run && c.host_callers.is_none(),
            "both off by default"
        );

        // Dry run; host callers with their cgroup root and destinations.
        let cli = Cli::try_parse_from([
            "proxy",
            "--rules",
            rules.to_str().unwrap(),
            "--dry-run",
            "--cgroup-root",
            "/run/cg",
            "--host-caller-destination",
            "169.254.169.254:80",
            "--host-caller-destination",
            "168.63.129.16:80",
        ])
        .unwrap();
        let c = cli.args.config(&cli.args.files().load().unwrap()).unwrap();
        assert!(c.dry_run);
        let host = c.host_callers.expect("--cgroup-root turns host callers on");
        assert_eq!(host.cgroup_root, PathBuf::from("/run/cg"));
        assert_eq!(
            host.destinations,
            vec![
                "169.254.169.254:80".parse().unwrap(),
                "168.63.129.16:80".parse().unwrap()
            ]
        );
        let cli = Cli::try_parse_from([
            "proxy",
            "--rules",
            rules.to_str().unwrap(),
            "--host-callers",
        ])
        .unwrap();
        let c = cli.args.config(&cli.args.files().load().unwrap()).unwrap();
        let host = c.host_callers.unwrap();
        assert_eq!(host.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            host.destinations,
            vec!["169.254.169.254:80".parse().unwrap()]
        );

        // Defaults: IMDS upstream, admin on loopback.
        let cli = Cli::try_parse_from(["proxy", "--rules", rules.to_str().unwrap()]).unwrap();
        let c = cli.args.config(&cli.args.files().load().unwrap()).unwrap();
        assert_eq!(c.upstream, Upstream::default());
        assert_eq!(c.admin_listen, Some(DEFAULT_ADMIN_LISTEN.parse().unwrap()));

        // Errors name the file; the metadata address is refused before anything runs.
        std::fs::write(&rules, "rules: [{name: v}]").unwrap();
        let cli = Cli::try_parse_from(["proxy", "--rules", rules.to_str().unwrap()]).unwrap();
        let e = run(cli.args).unwrap_err().to_string();
        assert!(e.contains("rules.yaml") && e.contains("rule `v`"), "{e}");
        let cli = Cli::try_parse_from(["proxy", "--rules", "/nonexistent/r.yaml"]).unwrap();
        assert!(matches!(
            run(cli.args).unwrap_err().downcast_ref::<ProxyError>(),
            Some(ProxyError::Input(FileError::Open { .. }))
        ));
        // No rules: refused unless allowed.
        std::fs::write(&rules, "rules: []").unwrap();
        let cli = Cli::try_parse_from(["proxy", "--rules", rules.to_str().unwrap()]).unwrap();
        let e = run(cli.args).unwrap_err().to_string();
        assert!(
            e.contains("rules.yaml") && e.contains("--allow-empty-rules"),
            "{e}"
        );
        let cli = Cli::try_parse_from([
            "proxy",
            "--rules",
            rules.to_str().unwrap(),
            "--allow-empty-rules",
            "--listen",
            "169.254.169.254:80",
        ])
        .unwrap();
        assert!(matches!(
            run(cli.args).unwrap_err().downcast_ref::<ProxyError>(),
            Some(ProxyError::MetadataAddress(_))
        ));
        assert!(
            Cli::try_parse_from(["proxy"]).is_err(),
            "--rules is required"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
