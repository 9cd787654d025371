//! imdsguard-proxy: the filtering metadata proxy.
//!
//! It sits where pods reach Azure IMDS (the node agent redirects `169.254.169.254:80`
//! to it) and answers each request in this order:
//!
//! 1. **canonicalise** the request target and check the headers
//!    ([`imdsguard_core::canon`]): anything that could be read in two ways (`%2f`, `..`,
//!    `//`, `\`, `;`, repeated parameters, non-ASCII, oversized) is denied (403);
//! 2. **validate** it as IMDS would ([`imdsguard_core::imds::validate`]): a missing
//!    `Metadata: true`, an `X-Forwarded-For`, an unknown path, a bad api-version... get
//!    IMDS's own error (400/404/405) from the proxy, never from upstream;
//! 3. **identify** the caller: its source address in the pod index ([`PodIndex`]);
//!    unknown sources are denied;
//! 4. **decide** with the access rules ([`AccessRules::evaluate`]): default deny, a 403
//!    whose JSON body names imdsguard, the rule, the reason and how to get access;
//! 5. **forward** the canonical request (never the original bytes) to the upstream
//!    with only `Metadata`, `User-Agent`, `Accept` and `Content-Type`, and for the
//!    instance document apply the rule's redaction.
//!
//! Every request ends in one structured log record (`imdsguard::decision`, a `tracing`
//! event, or a [`DecisionRecord`] given to [`ProxyConfig::decisions`]) and in the
//! metrics ([`Metrics`]); no token, `Authorization` header or token body is logged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imdsguard_proxy::ProxyError> {
//! use imdsguard_core::access::{AccessRules, PodIndex};
//! use imdsguard_proxy::{Proxy, ProxyConfig, Upstream};
//! let mut config = ProxyConfig::new(
//!     "127.0.0.1:0".parse().unwrap(),
//!     Upstream::parse("http://127.0.0.1:8169")?,
//! );
//! config.rules = Some(AccessRules::parse("rules: []").unwrap());
//! config.pods = PodIndex::parse("[{ip: 127.0.0.2, namespace: a, name: b}]").unwrap();
//! let proxy = Proxy::start(config).await?;
//! println!("proxy at http://{}", proxy.local_addr());
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod caller;
mod cloud;
mod decision;
mod fairness;
pub mod files;
mod handler;
mod metrics;
mod reload;
mod server;
mod tokens;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use imdsguard_core::access::{AccessError, AccessRules, PodIndex};
use imdsguard_core::canon::{self, Canonicalizer};
use imdsguard_core::imds::{IMDS_ADDRESS, is_metadata_address};
pub use imdsguard_core::target::Cloud;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use reload::{
    ApplyError, FileFollower, LoadedFiles, ProxyFiles, ReloadTarget, parse_pods, parse_rules,
    read_pods, read_rules,
};

/// The proxy's listen address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8170";
/// The admin listen address when none is given.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9170";
pub use caller::{HostCallerConfig, HostCallerMap, HostCallerSource};
pub use decision::{DecisionRecord, DecisionSink};
pub use fairness::PodRate;
pub use imdsguard_core::access::RULE_UNKNOWN_POD_CGROUP;
pub use metrics::Metrics;

/// The upstream when none is given: Azure IMDS.
pub const DEFAULT_UPSTREAM: &str = imdsguard_core::imds::IMDS_URL;

/// Why the proxy could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listen address is a metadata address and the caller did not allow it.
    #[error(
        "refusing to listen on {0}: it is a cloud metadata address; pass --allow-metadata-address only where the proxy owns that address (a lab namespace, a node whose IMDS traffic is redirected)"
    )]
    MetadataAddress(SocketAddr),
    /// Binding a listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A rules or pods file could not be read, or was refused (not a regular file,
    /// empty, changed while read).
    #[error(transparent)]
    Input(#[from] files::FileError),
    /// A rules or pods file is not valid.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: AccessError,
    },
    /// The upstream URL is not `http://HOST[:PORT]`.
    #[error("invalid upstream `{url}`: {reason}")]
    Upstream {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Option(String),
}

/// The metadata service the proxy forwards to: `http://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    authority: http::uri::Authority,
}

impl Upstream {
    /// Reads `http://HOST[:PORT]` (a trailing `/` is accepted; no path, query, user
    /// information or https).
    pub fn parse(url: &str) -> Result<Upstream, ProxyError> {
        let bad = |reason: &str| ProxyError::Upstream {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported (IMDS speaks plain HTTP)"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not supported"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("give the base URL only, without a path or query"));
        }
        Ok(Upstream { authority })
    }

    /// `host[:port]` as written (the `Host` header sent upstream).
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// `host:port` to connect to: port 80 when the URL names none.
    pub fn connect_addr(&self) -> String {
        match self.authority.port_u16() {
            Some(_) => self.authority.as_str().to_string(),
            None => format!("{}:80", self.authority.host()),
        }
    }
}

impl Default for Upstream {
    /// Azure IMDS, `http://169.254.169.254`.
    fn default() -> Self {
        Upstream::parse(DEFAULT_UPSTREAM).expect("the default upstream is valid")
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// Every wait the proxy does is bounded by one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time for a client to send a request's header block; also how long an idle
    /// keep-alive connection is kept.
    pub header_read: Duration,
    /// Time for a client to send a request body (POST only).
    pub request_body: Duration,
    /// Time to open a connection to the upstream.
    pub upstream_connect: Duration,
    /// Time for the upstream's whole answer, connection included.
    pub upstream_response: Duration,
}

impl Default for Timeouts {
    /// 10 s header read, 5 s body, 2 s upstream connect, 20 s upstream answer (IMDS
    /// token requests can take seconds when Entra ID is slow).
    fn default() -> Self {
        Timeouts {
            header_read: Duration::from_secs(10),
            request_body: Duration::from_secs(5),
            upstream_connect: Duration::from_secs(2),
            upstream_response: Duration::from_secs(20),
        }
    }
}

/// Size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request target and header limits (see [`canon::Limits`]).
    pub request: canon::Limits,
    /// Largest request body (scheduled-event approvals are tiny).
    pub max_request_body: usize,
    /// Largest upstream answer body.
    pub max_response_body: usize,
    /// Most client connections open at once (further ones wait to be accepted).
    pub max_connections: usize,
    /// Most client connections open at once from one source address (further ones are
    /// closed as soon as they are accepted, so that one pod cannot hold the slots of
    /// [`Self::max_connections`] others need).
    pub max_connections_per_source: usize,
}

impl Default for Limits {
    /// [`canon::Limits::default`], 64 KiB request bodies, 4 MiB answers, 1024
    /// connections, 64 from one source address.
    fn default() -> Self {
        Limits {
            request: canon::Limits::default(),
            max_request_body: 64 * 1024,
            max_response_body: 4 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_source: 64,
        }
    }
}

/// A readiness condition beyond the proxy's own (listening, rules loaded): `Ok` when
/// ready, else why not. The agent plugs "nft rules are in place" here.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A value shared by the request path and its owner, replaced whole: readers take a
/// cheap snapshot (`Arc` clone under a read lock held for nanoseconds), writers swap.
pub struct Snapshot<T> {
    cell: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Snapshot {
            cell: self.cell.clone(),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Snapshot").field(&self.load()).finish()
    }
}

impl<T> Snapshot<T> {
    /// A snapshot holding `value`.
    pub fn new(value: T) -> Snapshot<T> {
        Snapshot {
            cell: Arc::new(RwLock::new(Arc::new(value))),
        }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        match self.cell.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the value; requests already holding the old one finish with it.
    pub fn store(&self, value: T) {
        let value = Arc::new(value);
        match self.cell.write() {
            Ok(mut g) => *g = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// Everything the proxy needs to start.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Where pods' requests arrive.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: nowhere.
    pub admin_listen: Option<SocketAddr>,
    /// Allow listening on a metadata address (169.254.169.254, 168.63.129.16).
    pub allow_metadata_address: bool,
    /// The metadata service.
    pub upstream: Upstream,
    /// Access rules; `None` until loaded: everything is denied ([`RULE_NO_RULES`](imdsguard_core::access::RULE_NO_RULES))
    /// and `/readyz` says not ready.
    pub rules: Option<AccessRules>,
    /// `/readyz` is ready with zero access rules (everything denied) only when this is
    /// set (`--allow-empty-rules`).
    pub allow_empty_rules: bool,
    /// Callers by source address.
    pub pods: PodIndex,
    /// Hosts accepted in absolute-form request targets (`http://HOST/...`).
    pub absolute_form_hosts: Vec<String>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Size limits.
    pub limits: Limits,
    /// Requests per second each pod may send, per IMDS rate class ([`PodRate::unlimited`]: no limit).
    pub pod_rate: PodRate,
    /// An extra readiness condition.
    pub ready_check: Option<ReadyCheck>,
    /// Metrics to record into (share one with the agent); `None`: a new set.
    pub metrics: Option<Metrics>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Where decision records go; `None`: `tracing` events (target `imdsguard::decision`).
    pub decisions: Option<Arc<dyn DecisionSink>>,
    /// Identify callers on the proxy's own host (hostNetwork pods) by their socket's
    /// cgroup when the pod index does not know their address; `None`: off (they are
    /// unknown sources). The pods come through [`ProxyControl::set_host_callers`].
    pub host_callers: Option<HostCallerConfig>,
    /// Dry run: a request the rules (or a built-in rule) deny is logged and counted as
    /// `would-deny` and forwarded as if allowed; an ambiguous one (`canonical-form`) is
    /// forwarded as received. No 403 is ever sent; IMDS's own refusals (400, 404) and
    /// throttling (429) stay (docs/proxy.md, "Dry run").
    pub dry_run: bool,
    /// Whose metadata service the proxy stands in front of (Azure unless told): its
    /// canonicalisation, validation and rules. The rules must be for this cloud
    /// (a rules file's `cloud:`); [`ProxyConfig::for_cloud`] also sets the cloud's
    /// absolute-form hosts.
    pub cloud: Cloud,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("upstream", &self.upstream)
            .field("rules", &self.rules.as_ref().map(AccessRules::len))
            .field("pods", &self.pods.len())
            .field("timeouts", &self.timeouts)
            .field("limits", &self.limits)
            .field("pod_rate", &self.pod_rate)
            .field("host_callers", &self.host_callers)
            .field("dry_run", &self.dry_run)
            .field("cloud", &self.cloud)
            .finish_non_exhaustive()
    }
}

impl ProxyConfig {
    /// A configuration with defaults: no admin listener, no rules (deny all), no pods,
    /// absolute-form accepted for `169.254.169.254`, default timeouts and limits.
    pub fn new(listen: SocketAddr, upstream: Upstream) -> ProxyConfig {
        ProxyConfig {
            listen,
            admin_listen: None,
            allow_metadata_address: false,
            upstream,
            rules: None,
            allow_empty_rules: false,
            pods: PodIndex::new(),
            absolute_form_hosts: vec![IMDS_ADDRESS.to_string()],
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            pod_rate: PodRate::default(),
            ready_check: None,
            metrics: None,
            shutdown_grace: Duration::from_secs(5),
            decisions: None,
            host_callers: None,
            dry_run: false,
            cloud: Cloud::Azure,
        }
    }

    /// [`ProxyConfig::new`] for `cloud`'s metadata service, accepting its hosts in
    /// absolute-form targets ([`canon::default_hosts`]: AWS `169.254.169.254` and
    /// `[fd00:ec2::254]`; GCP also `metadata.google.internal` and `metadata`).
    pub fn for_cloud(cloud: Cloud, listen: SocketAddr, upstream: Upstream) -> ProxyConfig {
        ProxyConfig {
            cloud,
            absolute_form_hosts: canon::default_hosts(cloud),
            ..ProxyConfig::new(listen, upstream)
        }
    }

    /// Checks ranges and refuses metadata listen addresses unless allowed; [`Proxy::start`]
    /// does it too.
    pub fn check(&self) -> Result<(), ProxyError> {
        for addr in std::iter::once(&self.listen).chain(&self.admin_listen) {
            if is_metadata_address(addr.ip()) && !self.allow_metadata_address {
                return Err(ProxyError::MetadataAddress(*addr));
            }
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("header read", t.header_read),
            ("request body", t.request_body),
            ("upstream connect", t.upstream_connect),
            ("upstream response", t.upstream_response),
        ] {
            if d.is_zero() {
                return Err(ProxyError::Option(format!(
                    "the {name} timeout must be positive"
                )));
            }
        }
        if self.limits.max_connections == 0 {
            return Err(ProxyError::Option(
                "max connections must be positive".into(),
            ));
        }
        if self.limits.max_connections_per_source == 0
            || self.limits.max_connections_per_source > self.limits.max_connections
        {
            return Err(ProxyError::Option(format!(
                "max connections per source must be between 1 and max connections ({}); to lift the per-source limit, make it max connections",
                self.limits.max_connections
            )));
        }
        self.pod_rate.check().map_err(ProxyError::Option)?;
        if let Some(rules) = &self.rules {
            check_rules_cloud(self.cloud, rules).map_err(ProxyError::Option)?;
        }
        Ok(())
    }
}

/// Rules for `cloud`: a rules file naming another cloud is refused (an empty one, or
/// Azure's without `cloud:` under Azure, is fine).
pub fn check_rules_cloud(cloud: Cloud, rules: &AccessRules) -> Result<(), String> {
    let name = Cloud::name;
    match rules.declared_cloud() {
        Some(c) if c != cloud => Err(format!(
            "the access rules are for cloud {} (their `cloud:`), and the proxy runs with --cloud {}",
            name(c),
            name(cloud)
        )),
        None if cloud != Cloud::Azure && !rules.is_empty() => Err(format!(
            "the access rules say no `cloud:` (Azure rules) and the proxy runs with --cloud {}: write `cloud: {}` at the top of the rules file",
            name(cloud),
            name(cloud)
        )),
        _ => Ok(()),
    }
}

/// The parts of a running proxy its owner may change: rules, pods, readiness. Cheap to
/// clone; hand one to the task that watches Kubernetes.
#[derive(Clone)]
pub struct ProxyControl {
    rules: Snapshot<Option<AccessRules>>,
    pods: Snapshot<PodIndex>,
    host_callers: Snapshot<HostCallerMap>,
    host_caller_source: Snapshot<Option<HostCallerSource>>,
    ready_check: Snapshot<Option<ReadyCheck>>,
    allow_empty_rules: bool,
    dry_run: bool,
    metrics: Metrics,
    cloud: Cloud,
}

impl ProxyControl {
    /// A control not attached to a running proxy (tests).
    #[cfg(test)]
    pub(crate) fn detached() -> ProxyControl {
        ProxyControl {
            rules: Snapshot::new(None),
            pods: Snapshot::new(PodIndex::new()),
            host_callers: Snapshot::new(HostCallerMap::new()),
            host_caller_source: Snapshot::new(None),
            ready_check: Snapshot::new(None),
            allow_empty_rules: false,
            dry_run: false,
            metrics: Metrics::new(),
            cloud: Cloud::Azure,
        }
    }

    /// The cloud the proxy serves.
    pub fn cloud(&self) -> Cloud {
        self.cloud
    }

    /// Whether `rules` are for the proxy's cloud ([`check_rules_cloud`]); reloads of
    /// another cloud's rules are refused and the rules in force kept.
    pub fn check_rules(&self, rules: &AccessRules) -> Result<(), String> {
        check_rules_cloud(self.cloud, rules)
    }

    /// Replaces the access rules (requests in flight finish with the old ones).
    pub fn set_rules(&self, rules: AccessRules) {
        self.metrics.set_rules(rules.len());
        self.rules.store(Some(rules));
    }

    /// Replaces the pod index.
    pub fn set_pods(&self, pods: PodIndex) {
        self.metrics.set_pods(pods.len());
        self.pods.store(pods);
    }

    /// Replaces the hostNetwork pods by the cgroup id of their pod-level cgroup
    /// directory (used when [`ProxyConfig::host_callers`] is on; a socket in a
    /// container's cgroup below the pod's is the pod's).
    pub fn set_host_callers(&self, map: HostCallerMap) {
        self.host_callers.store(map);
    }

    /// The hostNetwork pods by cgroup id, as last set.
    pub fn host_callers(&self) -> Arc<HostCallerMap> {
        self.host_callers.load()
    }

    /// Where a fresh map comes from when a socket is in a pod cgroup the map does not
    /// know (called off the runtime's workers, at most once a second); `None`: the map
    /// changes only through [`Self::set_host_callers`].
    pub fn set_host_caller_source(&self, source: Option<HostCallerSource>) {
        self.host_caller_source.store(source);
    }

    /// Whether denials are only logged (dry run).
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Replaces the extra readiness condition.
    pub fn set_ready_check(&self, check: Option<ReadyCheck>) {
        self.ready_check.store(check);
    }

    /// The current rules (`None` until loaded).
    pub fn rules(&self) -> Arc<Option<AccessRules>> {
        self.rules.load()
    }

    /// The current pod index.
    pub fn pods(&self) -> Arc<PodIndex> {
        self.pods.load()
    }

    /// The metrics (the agent counts the table's dropped packets here).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Ready when rules are loaded (at least one, unless empty rules were allowed) and
    /// the extra condition holds; else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let mut why = Vec::new();
        match &*self.rules.load() {
            None => why.push("access rules not loaded".to_string()),
            Some(r) if r.is_empty() && !self.allow_empty_rules => why.push(
                "0 access rules loaded (every request is denied; pass --allow-empty-rules if that is intended)"
                    .to_string(),
            ),
            Some(_) => {}
        }
        if let Some(check) = &*self.ready_check.load()
            && let Err(e) = check()
        {
            why.push(e);
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    /// What is loaded, for `/readyz`: `N access rules, M pod addresses` (`no access
    /// rules loaded` before the first), then the hostNetwork pods known by cgroup
    /// when there are any, and `dry run: denials are logged and forwarded` in a dry run.
    pub fn summary(&self) -> String {
        let pods = self.pods.load().len();
        let mut out = match &*self.rules.load() {
            Some(r) => format!("{} access rules, {pods} pod addresses", r.len()),
            None => format!("no access rules loaded, {pods} pod addresses"),
        };
        let host = self.host_callers.load().len();
        if host > 0 {
            out.push_str(&format!(", {host} hostNetwork pods by cgroup"));
        }
        if self.dry_run {
            out.push_str("; dry run: denials are logged and forwarded, not enforced");
        }
        out
    }
}

/// A running proxy. Dropping it stops the listeners; [`Proxy::shutdown`] also waits
/// for requests in flight.
pub struct Proxy {
    local: SocketAddr,
    admin: Option<SocketAddr>,
    control: ProxyControl,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Proxy {
    /// Checks the configuration (a metadata listen address is refused unless allowed),
    /// binds the listeners and serves until shutdown. Needs a tokio runtime with IO and
    /// timers.
    pub async fn start(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        config.check()?;
        // A deep accept queue (the kernel caps it at net.core.somaxconn): a burst of
        // connections from one pod, closed at once by the per-source limit, must not
        // overflow it and make another pod's SYN wait for a retransmission (1 s).
        let bind = |addr: SocketAddr| async move {
            let listen = || {
                let socket = match addr {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                socket.listen(4096)
            };
            listen().map_err(|source| ProxyError::Bind { addr, source })
        };
        let listener = bind(config.listen).await?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let local = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let metrics = config.metrics.clone().unwrap_or_default();
        let control = ProxyControl {
            rules: Snapshot::new(None),
            pods: Snapshot::new(PodIndex::new()),
            host_callers: Snapshot::new(HostCallerMap::new()),
            host_caller_source: Snapshot::new(None),
            ready_check: Snapshot::new(config.ready_check.clone()),
            allow_empty_rules: config.allow_empty_rules,
            dry_run: config.dry_run,
            metrics: metrics.clone(),
            cloud: config.cloud,
        };
        if let Some(rules) = config.rules.clone() {
            control.set_rules(rules);
        }
        control.set_pods(config.pods.clone());

        let upstream = upstream::Client::new(&config.upstream, &config.timeouts, &config.limits);
        let state = Arc::new(handler::State {
            canon: Canonicalizer::for_cloud(
                config.cloud,
                config.limits.request,
                &config.absolute_form_hosts,
            ),
            control: control.clone(),
            upstream: match config.cloud {
                Cloud::Azure => upstream,
                _ => upstream.for_other_cloud(),
            },
            metrics,
            timeouts: config.timeouts,
            limits: config.limits,
            rate: fairness::RateLimiter::new(config.pod_rate),
            decisions: config.decisions.clone(),
            host: config.host_callers.clone().map(|c| {
                caller::HostCallers::new(
                    c,
                    local,
                    control.host_callers.clone(),
                    control.host_caller_source.clone(),
                )
            }),
            dry_run: config.dry_run,
            cloud: config.cloud,
            tokens: tokens::TokenBook::default(),
        });
        if let Some(host) = &state.host {
            if host.cgroup2_mounted() {
                tracing::info!(cgroup_root = %host.root().display(), "callers on this host are identified by their socket's cgroup");
            } else {
                tracing::warn!(cgroup_root = %host.root().display(), "no cgroup v2 at the cgroup root: hostNetwork pods cannot be told from node processes, and callers from this host's addresses are unknown sources");
            }
        }
        if config.dry_run {
            tracing::warn!(
                "dry run: requests the rules deny are logged as would-deny and forwarded; nothing is denied"
            );
        }

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tracing::info!(addr = %local, upstream = %config.upstream, cloud = config.cloud.name(), "proxy listening");
        tasks.spawn(server::serve_proxy(
            listener,
            state,
            stop_rx.clone(),
            config.shutdown_grace,
        ));
        if let Some(l) = admin_listener {
            tracing::info!(addr = ?admin, "admin listening");
            tasks.spawn(admin::serve(l, control.clone(), stop_rx));
        }
        Ok(Proxy {
            local,
            admin,
            control,
            stop,
            tasks,
        })
    }

    /// The proxy's listen address (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The admin listen address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// A handle to change rules, pods and readiness while running.
    pub fn control(&self) -> ProxyControl {
        self.control.clone()
    }

    /// Replaces the access rules.
    pub fn set_rules(&self, rules: AccessRules) {
        self.control.set_rules(rules);
    }

    /// Replaces the pod index.
    pub fn set_pods(&self, pods: PodIndex) {
        self.control.set_pods(pods);
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        self.control.metrics()
    }

    /// Stops accepting, lets requests in flight finish (within the grace period), and
    /// waits for the listeners to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = Upstream::parse("http://127.0.0.1:8169/").unwrap();
        assert_eq!(u.authority(), "127.0.0.1:8169");
        assert_eq!(u.connect_addr(), "127.0.0.1:8169");
        let d = Upstream::default();
        assert_eq!(d.authority(), "169.254.169.254");
        assert_eq!(
            d.connect_addr(),
            "169.254.169.254:80",
            "IMDS's port when none is written"
        );
        assert_eq!(
            Upstream::parse("http://[::1]").unwrap().connect_addr(),
            "[::1]:80"
        );
        assert_eq!(u.to_string(), "http://127.0.0.1:8169");
        assert_eq!(Upstream::default().to_string(), DEFAULT_UPSTREAM);
        for bad in [
            "https://169.254.169.254",
            "169.254.169.254",
            "http://a@127.0.0.1",
            "http://127.0.0.1/metadata",
            "http://127.0.0.1?x",
            "nope nope",
        ] {
            assert!(
                matches!(Upstream::parse(bad), Err(ProxyError::Upstream { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn metadata_listen_addresses_are_refused() {
        let mut c = ProxyConfig::new("169.254.169.254:80".parse().unwrap(), Upstream::default());
        assert!(matches!(c.check(), Err(ProxyError::MetadataAddress(_))));
        c.allow_metadata_address = true;
        assert!(c.check().is_ok());
        let mut c = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), Upstream::default());
        c.admin_listen = Some("[::ffff:168.63.129.16]:9".parse().unwrap());
        assert!(matches!(c.check(), Err(ProxyError::MetadataAddress(_))));
        let mut c = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), Upstream::default());
        c.timeouts.upstream_connect = Duration::ZERO;
        assert!(matches!(c.check(), Err(ProxyError::Option(_))));
    }

    #[test]
    fn snapshots_swap_whole_values() {
        let s = Snapshot::new(1);
        let old = s.load();
        s.clone().store(2);
        assert_eq!((*old, *s.load()), (1, 2));
    }
}
