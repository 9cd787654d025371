//! The host table, `table inet imdsguard_host`: hostNetwork pods kept away from the
//! metadata endpoints by cgroup, on the node's own output path. Built as nft TEXT (for
//! `nft -f -`), because nft 1.0.6's JSON parser refuses `socket cgroupv2` and its JSON
//! listing drops the level; the named counters and rule comments survive the JSON
//! listing, so reading back uses `nft -j list table inet imdsguard_host`
//! ([`parse_host_counters`], [`host_differences`]).
//!
//! A hostNetwork pod shares the node's network namespace, so its packets to a protected
//! endpoint leave through the node's `output` hook like the kubelet's; what tells them
//! apart is the socket's cgroup (v2): pods live under the pod roots (`kubepods.slice`,
//! `kubepods`, see [`crate::cgroup`]), node services (kubelet, container runtime, the
//! agent's own upstream connections when it runs outside a pod) elsewhere.
//!
//! ```text
//! table inet imdsguard_host
//!   counter unknown_pod                     sockets in a pod root matched by no pod rule
//!   counter proxied                         proxy mode: pod-tree connections redirected
//!   counter would_drop                      dry run: what pod_drop would have dropped
//!   counter pod_<UID, _ for ->              one per hostNetwork pod (comment: namespace/name)
//!   set protected_v4 / protected_v6         the main table's protected endpoints
//!   chain output (filter, hook output, priority filter - 10):
//!       [observe: ct state new] ip daddr . meta l4proto . th dport @protected_v4 jump guard   (v6 likewise)
//!   chain guard:
//!       socket cgroupv2 level L "OWN" accept                                  the agent's own pod, if any
//!       socket cgroupv2 level L "POD" counter name pod_X accept               expected pod
//!       socket cgroupv2 level L "POD" counter name pod_X jump pod_drop        other pods (block, proxy)
//!       socket cgroupv2 level L "POD" counter name pod_X jump pod_observe     other pods (observe)
//!       socket cgroupv2 level 1 "ROOT" counter name unknown_pod jump pod_drop (observe: pod_observe)
//!       (anything else: a node process, untouched)
//!   chain pod_drop:    limit … log prefix "imdsguard:drop " group G;  drop
//!   chain pod_observe: limit … log prefix "imdsguard:observe " group G;  accept
//!   dry run (block, proxy): chain pod_would_drop in place of pod_drop:
//!                      limit … log prefix "imdsguard:would-drop " group G;  counter name would_drop accept
//!   proxy mode only:
//!   set proxied_v4 / proxied_v6             the endpoints the proxy serves
//!   chain nat_output (nat, hook output, priority -110, i.e. dstnat - 10):
//!       ip daddr . meta l4proto . th dport @proxied_v4 jump redirect_v4       (v6 with a v6 proxy)
//!   chain redirect_v4:
//!       socket cgroupv2 level L "OWN" return
//!       socket cgroupv2 level L "POD" return                                  expected pod
//!       socket cgroupv2 level 1 "ROOT" meta l4proto tcp counter name proxied dnat ip to PROXY
//! ```
//!
//! An *expected* pod ([`HostPod::expected`]) goes direct: the agent expects the pods
//! its `--allow` names and, in block and observe modes, the pods the access rules select
//! (in proxy mode the rules are the proxy's: those pods reach IMDS through it).
//!
//! - **block**: an expected pod is accepted, any other
//!   pod's packet is counted on its pod counter, logged and dropped; a socket under a pod
//!   root that no pod rule names (a pod the agent does not know yet, or not as
//!   hostNetwork) is counted `unknown_pod` and dropped: fail closed.
//! - **proxy**: every other pod-tree TCP connection to a proxied endpoint is
//!   DNATed to the proxy, which decides by its rules (it finds the caller's pod from
//!   the socket's cgroup id); an expected pod's is not (like an allowlisted pair in the
//!   main table). The nat chain runs before the filter chain, so what reaches
//!   `guard` is what the proxy does not serve (WireServer, IPv6 without an IPv6 proxy),
//!   decided as in block mode: an expected pod accepted, the others dropped.
//! - **observe**: only new connections go to `guard`, so the pod counters count
//!   connections; nothing is dropped, what block mode would drop is logged.
//! - **dry run** ([`RulesetConfig::dry_run`], block and proxy modes): the same rules, but
//!   what would go to `pod_drop` goes to `pod_would_drop`, which logs it as a would-drop,
//!   counts it in `would_drop` and accepts it; the pod counters count it as before, so
//!   the agent attributes each would-drop to its pod. Nothing is dropped; the DNAT to the
//!   proxy is as in proxy mode.
//!
//! Port 53 is never matched (the same [`RulesetConfig::validate`] as the main table).
//! Cgroup paths are resolved to cgroup ids by nft when the text is loaded: a path that
//! does not exist fails the whole transaction (the caller rescans and retries); a pod
//! directory removed later stays in the rule as a number that matches nothing.
//!
//! Only validated text is written: UIDs and cgroup paths come from [`PodCgroup`] and are
//! checked with [`PodCgroup::is_canonical`], roots must be [`POD_ROOTS`], pod names are
//! `namespace/name` of `A-Z a-z 0-9 . _ -`; anything else is refused
//! ([`HostRulesetError`]). Every comment is at most [`COMMENT_MAX`] (128) bytes, the
//! most nft takes: the UID and the verdict are written whole, a pod name that does not
//! fit is clipped in the middle ([`clip_pod`]: `observability/kube-prometheus-...exporter-x7k2p`),
//! the same way every time, so the listing still compares by comment.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::config::{Mode, NftConfigError, RulesetConfig};
use super::counters::CounterValue;
use super::listing::{NftParseError, objects, single};
use super::{
    DNAT_PRIORITY, FAMILY, FILTER_PRIORITY, LOG_PREFIX_DROP, LOG_PREFIX_OBSERVE,
    LOG_PREFIX_WOULD_DROP, MODE_MARKER,
};
use crate::cgroup::{POD_ROOTS, PodCgroup};
use crate::target::{Protocol, Target};

/// The host table's name (family [`FAMILY`]).
pub const HOST_TABLE: &str = "imdsguard_host";

/// Chain names of the host table.
pub mod host_chain {
    /// Base chain on the output hook (filter, `filter - 10`).
    pub const OUTPUT: &str = "output";
    /// Per pod and per pod root: who is this socket?
    pub const GUARD: &str = "guard";
    /// Log (rate-limited) and drop.
    pub const POD_DROP: &str = "pod_drop";
    /// Log (rate-limited) and accept (observe mode).
    pub const POD_OBSERVE: &str = "pod_observe";
    /// A dry run (block and proxy modes): log (rate-limited), count `would_drop` and
    /// accept what `pod_drop` would drop.
    pub const POD_WOULD_DROP: &str = "pod_would_drop";
    /// Proxy mode: base chain on the output hook (nat, priority -110: `dstnat - 10`,
    /// written as a number because nft 1.0.6 refuses the name `dstnat` on the output hook).
    pub const NAT_OUTPUT: &str = "nat_output";
    /// Proxy mode: DNAT IPv4 pod-tree connections to the proxy.
    pub const REDIRECT_V4: &str = "redirect_v4";
    /// Proxy mode: DNAT IPv6 pod-tree connections to the proxy.
    pub const REDIRECT_V6: &str = "redirect_v6";
}

/// Counter names of the host table (besides one per pod, [`host_counter_name`]).
pub mod host_counter {
    /// Packets (observe: connections) from sockets under a pod root that no pod rule names.
    pub const UNKNOWN_POD: &str = "unknown_pod";
    /// Proxy mode: pod-tree connections redirected to the proxy.
    pub const PROXIED: &str = "proxied";
    /// A dry run: packets let through that block or proxy mode would have dropped (all
    /// pods and the unknown pod cgroups together; per pod, the pod's counter).
    pub const WOULD_DROP: &str = "would_drop";
    /// The fixed counters, in the order they are created.
    pub const ALL: &[&str] = &[UNKNOWN_POD, PROXIED, WOULD_DROP];
}

/// The prefix of a pod's counter name.
const POD_COUNTER_PREFIX: &str = "pod_";

/// The longest comment nft takes, in bytes (nft 1.0.6: "comment too long, 128
/// characters maximum allowed", for rules and counters alike); one longer fails the whole
/// transaction.
pub const COMMENT_MAX: usize = 128;

/// What stands for the middle of a pod name clipped to fit a comment ([`clip_pod`]).
pub const CLIP_MARKER: &str = "...";

/// `pod` (`namespace/name`, ASCII: [`valid_pod_name`]) in at most `max` bytes: as it is
/// when it fits, else its beginning and its end (where the kubelet's and the
/// controllers' random suffixes are) around [`CLIP_MARKER`]. The same input always gives
/// the same text, so a listing's comments compare with what is built.
pub fn clip_pod(pod: &str, max: usize) -> String {
    if pod.len() <= max {
        return pod.to_owned();
    }
    let Some(keep) = max.checked_sub(CLIP_MARKER.len()) else {
        return CLIP_MARKER[..max].to_owned();
    };
    let head = keep / 2;
    let tail = keep - head;
    // ASCII only (validated), so every index is a character boundary; `get` keeps this
    // from panicking on anything else.
    match (pod.get(..head), pod.get(pod.len() - tail..)) {
        (Some(h), Some(t)) => format!("{h}{CLIP_MARKER}{t}"),
        _ => CLIP_MARKER.to_owned(),
    }
}

/// `prefix` followed by the pod name, clipped so that the whole is at most
/// [`COMMENT_MAX`] bytes (`prefix` is ours and short: at most ~95 bytes with the longest
/// UID).
fn pod_comment(prefix: &str, pod: &str) -> String {
    let room = COMMENT_MAX.saturating_sub(prefix.len());
    format!("{prefix}{}", clip_pod(pod, room))
}

/// The name of the counter of the pod `uid` (canonical, [`crate::cgroup::canonical_uid`]):
/// `pod_` and the UID with underscores for dashes.
pub fn host_counter_name(uid: &str) -> String {
    format!("{POD_COUNTER_PREFIX}{}", uid.replace('-', "_"))
}

/// The UID a pod counter's name stands for (`pod_3b1f…` → `3b1f…` with dashes), if it is one.
pub fn host_counter_uid(name: &str) -> Option<String> {
    let rest = name.strip_prefix(POD_COUNTER_PREFIX)?;
    let uid = rest.replace('_', "-");
    crate::cgroup::canonical_uid(&uid).filter(|u| *u == uid)
}

/// One hostNetwork pod the host table names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPod {
    /// `namespace/name` (written as the pod counter's comment, clipped to
    /// [`COMMENT_MAX`] bytes by [`clip_pod`]).
    pub pod: String,
    /// Its cgroup directory (as [`crate::cgroup::pod_cgroup`] gives it, e.g. from a scan).
    pub cgroup: PodCgroup,
    /// Its sockets may reach the endpoints directly (accepted, and in proxy mode not
    /// redirected to the proxy): the agent's `--allow` names it or, in block and observe
    /// modes, the access rules select it.
    pub expected: bool,
}

/// What the host table is built from, besides the agent's [`RulesetConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostGuard {
    /// The pod roots that exist on the node ([`POD_ROOTS`]): nft resolves the paths when
    /// it loads the table, so a missing one must not be named.
    pub roots: Vec<String>,
    /// The hostNetwork pods whose cgroup directories exist.
    pub pods: Vec<HostPod>,
    /// The agent's own pod, when it runs in one: its sockets (the proxy's upstream
    /// connections) are never dropped or redirected.
    pub own: Option<PodCgroup>,
}

/// Why a host table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRulesetError {
    /// The agent's configuration (the same check as the main table's).
    #[error(transparent)]
    Config(#[from] NftConfigError),
    /// A root that is not one of [`POD_ROOTS`].
    #[error("`{0}` is not a pod root (kubepods.slice or kubepods)")]
    Root(String),
    /// A pod named by something other than `namespace/name`.
    #[error("pod `{0}` is not namespace/name of A-Z a-z 0-9 . _ - (at most 253 characters each)")]
    PodName(String),
    /// A pod cgroup that is not as the kubelet names it.
    #[error(
        "pod {pod}: `{path}` (level {level}, UID `{uid}`) is not a pod cgroup directory as the kubelet names it"
    )]
    Cgroup {
        /// The pod.
        pod: String,
        /// The path given.
        path: String,
        /// The level given.
        level: u32,
        /// The UID given.
        uid: String,
    },
    /// A pod under a root that is not in [`HostGuard::roots`].
    #[error("pod {pod}: its cgroup {path} is under {root}, which is not among the pod roots given")]
    MissingRoot {
        /// The pod.
        pod: String,
        /// Its cgroup.
        path: String,
        /// Its root.
        root: String,
    },
}

/// The counters of the host table as listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostCounters {
    /// The fixed counters ([`host_counter::ALL`]) that were there.
    pub counters: Vec<CounterValue>,
    /// The pods' counters, by UID.
    pub pods: Vec<HostPodCount>,
}

impl HostCounters {
    /// The fixed counter `name`'s value, zero when absent.
    pub fn get(&self, name: &str) -> CounterValue {
        self.counters
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or(CounterValue {
                name: name.to_owned(),
                packets: 0,
                bytes: 0,
            })
    }

    /// The pod `uid`'s count, if it has a counter.
    pub fn pod(&self, uid: &str) -> Option<&HostPodCount> {
        self.pods.iter().find(|p| p.uid == uid)
    }
}

/// A hostNetwork pod's counter: packets to a protected endpoint from its sockets
/// (observe mode: new connections). In proxy mode, what the nat chain redirected is
/// counted by the proxy, not here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct HostPodCount {
    /// The pod's UID.
    pub uid: String,
    /// `namespace/name`, from the counter's comment (a long name clipped in the middle:
    /// [`clip_pod`]; the UID is what identifies the pod).
    pub pod: Option<String>,
    /// Packets (observe mode: connections).
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `pod` is `namespace/name` of characters the host table may write.
pub fn valid_pod_name(pod: &str) -> bool {
    pod.split_once('/')
        .is_some_and(|(ns, name)| valid_name_part(ns) && valid_name_part(name))
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// One rule: its statements as nft text, and its comment (every rule has one, so that a
/// listing can be checked rule by rule).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    text: String,
    comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    name: &'static str,
    /// `type filter hook output priority …; policy accept;`
    base: Option<String>,
    rules: Vec<Rule>,
}

/// A counter to declare: name, comment, carried values.
struct Counter {
    name: String,
    comment: Option<String>,
    packets: u64,
    bytes: u64,
}

/// The host table as data, before it is written.
struct HostTable {
    counters: Vec<Counter>,
    sets: Vec<(&'static str, &'static str, Vec<String>)>,
    chains: Vec<Chain>,
}

/// `socket cgroupv2 level L "PATH"`; the path is validated by the caller.
fn cgroup_match(level: u32, path: &str) -> String {
    format!("socket cgroupv2 level {level} \"{path}\"")
}

fn element(t: &Target) -> String {
    format!("{} . {} . {}", t.ip, proto(t.protocol), t.port)
}

fn check(guard: &HostGuard) -> Result<(), HostRulesetError> {
    for root in &guard.roots {
        if !POD_ROOTS.contains(&root.as_str()) {
            return Err(HostRulesetError::Root(root.clone()));
        }
    }
    let bad_cgroup = |pod: &str, c: &PodCgroup| HostRulesetError::Cgroup {
        pod: pod.to_owned(),
        path: c.path.clone(),
        level: c.level,
        uid: c.uid.clone(),
    };
    for p in &guard.pods {
        if !valid_pod_name(&p.pod) {
            return Err(HostRulesetError::PodName(p.pod.clone()));
        }
        if !p.cgroup.is_canonical() {
            return Err(bad_cgroup(&p.pod, &p.cgroup));
        }
        let root = p.cgroup.driver.root();
        if !guard.roots.iter().any(|r| r == root) {
            return Err(HostRulesetError::MissingRoot {
                pod: p.pod.clone(),
                path: p.cgroup.path.clone(),
                root: root.to_owned(),
            });
        }
    }
    if let Some(own) = &guard.own
        && !own.is_canonical()
    {
        return Err(bad_cgroup("(imdsguard itself)", own));
    }
    Ok(())
}

fn build(
    config: &RulesetConfig,
    guard: &HostGuard,
    carried: &HostCounters,
) -> Result<HostTable, HostRulesetError> {
    config.validate()?;
    check(guard)?;
    let mode = config.mode;

    // Roots in the order of POD_ROOTS, each once.
    let roots: Vec<&str> = POD_ROOTS
        .iter()
        .copied()
        .filter(|r| guard.roots.iter().any(|g| g == r))
        .collect();
    // Pods by UID (one counter each; a UID listed twice keeps both paths), in a stable order.
    let mut pods: Vec<&HostPod> = guard.pods.iter().collect();
    pods.sort_by(|a, b| (&a.cgroup.uid, &a.cgroup.path).cmp(&(&b.cgroup.uid, &b.cgroup.path)));
    pods.dedup_by(|a, b| a.cgroup.path == b.cgroup.path);

    let mut counters: Vec<Counter> = Vec::new();
    let carry = |name: &str| {
        carried
            .counters
            .iter()
            .find(|c| c.name == name)
            .map_or((0, 0), |c| (c.packets, c.bytes))
    };
    for name in host_counter::ALL {
        let (packets, bytes) = carry(name);
        counters.push(Counter {
            name: (*name).to_owned(),
            comment: None,
            packets,
            bytes,
        });
    }
    let mut by_uid: BTreeMap<&str, &str> = BTreeMap::new();
    for p in &pods {
        by_uid.entry(&p.cgroup.uid).or_insert(&p.pod);
    }
    for (uid, pod) in &by_uid {
        let (packets, bytes) = carried
            .pods
            .iter()
            .find(|c| c.uid == *uid)
            .map_or((0, 0), |c| (c.packets, c.bytes));
        counters.push(Counter {
            name: host_counter_name(uid),
            comment: Some(clip_pod(pod, COMMENT_MAX)),
            packets,
            bytes,
        });
    }

    let endpoints = |v4: bool, targets: &[Target]| -> Vec<String> {
        targets
            .iter()
            .filter(|t| t.ip.is_ipv4() == v4)
            .map(element)
            .collect()
    };
    let mut sets = vec![
        (
            "protected_v4",
            "ipv4_addr . inet_proto . inet_service",
            endpoints(true, &config.protected),
        ),
        (
            "protected_v6",
            "ipv6_addr . inet_proto . inet_service",
            endpoints(false, &config.protected),
        ),
    ];

    let limit = format!(
        "limit rate {}/second burst {} packets",
        config.log.rate_per_second, config.log.burst
    );
    let group = config.log.group;
    let mut chains = Vec::new();

    // output: protected endpoints → guard (observe: new connections only).
    let new_only = if mode == Mode::Observe {
        "ct state new "
    } else {
        ""
    };
    chains.push(Chain {
        name: host_chain::OUTPUT,
        base: Some(format!(
            "type filter hook output priority filter - {}; policy accept;",
            -FILTER_PRIORITY
        )),
        rules: [
            ("ip", "protected_v4", "IPv4"),
            ("ip6", "protected_v6", "IPv6"),
        ]
        .into_iter()
        .map(|(p, set, fam)| Rule {
            text: format!(
                "{new_only}{p} daddr . meta l4proto . th dport @{set} jump {}",
                host_chain::GUARD
            ),
            comment: format!("imdsguard: protected {fam} endpoints"),
        })
        .collect(),
    });

    // guard: the agent itself, each pod, then what is left under a pod root.
    let not_expected = if mode == Mode::Observe {
        host_chain::POD_OBSERVE
    } else if config.dry_run {
        host_chain::POD_WOULD_DROP
    } else {
        host_chain::POD_DROP
    };
    let mut rules = Vec::new();
    if let Some(own) = &guard.own {
        rules.push(Rule {
            text: format!("{} accept", cgroup_match(own.level, &own.path)),
            comment: format!("imdsguard: imdsguard's own pod {}", own.uid),
        });
    }
    for p in &pods {
        let verdict = if p.expected {
            "accept".to_owned()
        } else {
            format!("jump {not_expected}")
        };
        rules.push(Rule {
            text: format!(
                "{} counter name \"{}\" {verdict}",
                cgroup_match(p.cgroup.level, &p.cgroup.path),
                host_counter_name(&p.cgroup.uid)
            ),
            comment: pod_comment(
                &format!(
                    "imdsguard: pod {} {} ",
                    p.cgroup.uid,
                    if p.expected {
                        "expected"
                    } else {
                        "not-expected"
                    }
                ),
                &p.pod,
            ),
        });
    }
    for root in &roots {
        rules.push(Rule {
            text: format!(
                "{} counter name \"{}\" jump {not_expected}",
                cgroup_match(1, root),
                host_counter::UNKNOWN_POD
            ),
            comment: format!("imdsguard: unknown pod cgroup under {root}"),
        });
    }
    chains.push(Chain {
        name: host_chain::GUARD,
        base: None,
        rules,
    });
    let would_drop = format!("counter name \"{}\" accept", host_counter::WOULD_DROP);
    let (last, prefix, verdict) = if mode == Mode::Observe {
        (host_chain::POD_OBSERVE, LOG_PREFIX_OBSERVE, "accept")
    } else if config.dry_run {
        (
            host_chain::POD_WOULD_DROP,
            LOG_PREFIX_WOULD_DROP,
            would_drop.as_str(),
        )
    } else {
        (host_chain::POD_DROP, LOG_PREFIX_DROP, "drop")
    };
    chains.push(Chain {
        name: last,
        base: None,
        rules: vec![
            Rule {
                text: format!("{limit} log prefix \"{prefix}\" group {group}"),
                comment: format!(
                    "imdsguard: log group {group} rate {}/s burst {}",
                    config.log.rate_per_second, config.log.burst
                ),
            },
            Rule {
                text: verdict.into(),
                comment: config.mode_marker(),
            },
        ],
    });

    if mode == Mode::Proxy {
        let redirects: Vec<(&str, &'static str, &'static str, String)> = [
            config.proxy_v4.map(|a| {
                (
                    "ip",
                    "proxied_v4",
                    host_chain::REDIRECT_V4,
                    format!("{}:{}", a.ip(), a.port()),
                )
            }),
            config.proxy_v6.map(|a| {
                (
                    "ip6",
                    "proxied_v6",
                    host_chain::REDIRECT_V6,
                    format!("[{}]:{}", a.ip(), a.port()),
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (p, set, _, _) in &redirects {
            let v4 = *p == "ip";
            let kind = if v4 {
                "ipv4_addr . inet_proto . inet_service"
            } else {
                "ipv6_addr . inet_proto . inet_service"
            };
            sets.push((set, kind, endpoints(v4, &config.proxied)));
        }
        chains.push(Chain {
            name: host_chain::NAT_OUTPUT,
            base: Some(format!(
                "type nat hook output priority {DNAT_PRIORITY}; policy accept;"
            )),
            rules: redirects
                .iter()
                .map(|(p, set, chain, _)| Rule {
                    text: format!("{p} daddr . meta l4proto . th dport @{set} jump {chain}"),
                    comment: format!(
                        "imdsguard: proxied {} endpoints",
                        if *p == "ip" { "IPv4" } else { "IPv6" }
                    ),
                })
                .collect(),
        });
        for (p, _, chain, to) in &redirects {
            let mut rules = Vec::new();
            if let Some(own) = &guard.own {
                rules.push(Rule {
                    text: format!("{} return", cgroup_match(own.level, &own.path)),
                    comment: format!("imdsguard: imdsguard's own pod {} goes direct", own.uid),
                });
            }
            // Expected pods go direct in proxy mode (the agent's `--allow`, as its
            // allowlisted pairs skip the proxy in the main table).
            for pod in pods.iter().filter(|p| p.expected) {
                rules.push(Rule {
                    text: format!(
                        "{} return",
                        cgroup_match(pod.cgroup.level, &pod.cgroup.path)
                    ),
                    comment: format!("imdsguard: pod {} expected goes direct", pod.cgroup.uid),
                });
            }
            for root in &roots {
                rules.push(Rule {
                    text: format!(
                        "{} meta l4proto tcp counter name \"{}\" dnat {p} to {to}",
                        cgroup_match(1, root),
                        host_counter::PROXIED
                    ),
                    comment: format!("{MODE_MARKER}proxy {root} to {to}"),
                });
            }
            chains.push(Chain {
                name: chain,
                base: None,
                rules,
            });
        }
    }
    debug_assert!(
        counters
            .iter()
            .filter_map(|c| c.comment.as_deref())
            .chain(
                chains
                    .iter()
                    .flat_map(|c| c.rules.iter().map(|r| r.comment.as_str()))
            )
            .all(|c| c.len() <= COMMENT_MAX),
        "a comment over {COMMENT_MAX} bytes"
    );
    Ok(HostTable {
        counters,
        sets,
        chains,
    })
}

impl HostTable {
    fn write(&self) -> String {
        let mut s = String::new();
        let t = format!("table {FAMILY} {HOST_TABLE}");
        // Add (so the delete cannot fail), delete, rebuild: one transaction.
        let _ = writeln!(s, "{t} {{}}\ndelete {t}\n{t} {{");
        for c in &self.counters {
            let _ = writeln!(s, "\tcounter {} {{", c.name);
            if let Some(comment) = &c.comment {
                let _ = writeln!(s, "\t\tcomment \"{comment}\"");
            }
            let _ = writeln!(s, "\t\tpackets {} bytes {}\n\t}}", c.packets, c.bytes);
        }
        for (name, kind, elems) in &self.sets {
            let _ = writeln!(s, "\tset {name} {{\n\t\ttype {kind}");
            if !elems.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
            }
            let _ = writeln!(s, "\t}}");
        }
        for c in &self.chains {
            let _ = writeln!(s, "\tchain {} {{", c.name);
            if let Some(base) = &c.base {
                let _ = writeln!(s, "\t\t{base}");
            }
            for r in &c.rules {
                let _ = writeln!(s, "\t\t{} comment \"{}\"", r.text, r.comment);
            }
            let _ = writeln!(s, "\t}}");
        }
        s.push_str("}\n");
        s
    }
}

/// The host table as `nft -f -` text: `table … {}`, `delete table …`, then the table
/// rebuilt, one transaction (packets see the old table or the new one, never none; no
/// other table is touched). `carried` are the counters read before
/// ([`parse_host_counters`]): the fixed ones and those of pods still listed keep their
/// values.
pub fn host_ruleset(
    config: &RulesetConfig,
    guard: &HostGuard,
    carried: &HostCounters,
) -> Result<String, HostRulesetError> {
    Ok(build(config, guard, carried)?.write())
}

/// Removes the host table if it is there (`table … {}` then `delete table …`, one
/// transaction, never failing for a missing table).
pub fn delete_host_table() -> String {
    let t = format!("table {FAMILY} {HOST_TABLE}");
    format!("{t} {{}}\ndelete {t}\n")
}

fn is_host(body: &Value) -> bool {
    body.get("family").and_then(Value::as_str) == Some(FAMILY)
        && body.get("table").and_then(Value::as_str) == Some(HOST_TABLE)
}

/// The host table's counters in the answer to `nft -j list table inet imdsguard_host`
/// (or `nft -j list counters table inet imdsguard_host`): the fixed ones and one per
/// pod (by UID, with the pod named by the counter's comment). Other tables are ignored.
pub fn parse_host_counters(text: &str) -> Result<HostCounters, NftParseError> {
    let mut out = HostCounters::default();
    for (kind, body) in objects(text)?.into_iter().filter_map(single) {
        if kind != "counter" || !is_host(&body) {
            continue;
        }
        let Some(name) = body.get("name").and_then(Value::as_str) else {
            continue;
        };
        let packets = body.get("packets").and_then(Value::as_u64).unwrap_or(0);
        let bytes = body.get("bytes").and_then(Value::as_u64).unwrap_or(0);
        if let Some(uid) = host_counter_uid(name) {
            out.pods.push(HostPodCount {
                uid,
                pod: body
                    .get("comment")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                packets,
                bytes,
            });
        } else if host_counter::ALL.contains(&name) {
            out.counters.push(CounterValue {
                name: name.to_owned(),
                packets,
                bytes,
            });
        }
    }
    out.pods.sort();
    Ok(out)
}

/// What differs between the listing `nft -j list table inet imdsguard_host` and the
/// table [`host_ruleset`] builds for `config` and `guard`, by rule comment (every rule
/// has one) chain by chain, in order, by counter name and by set elements (the protected
/// and proxied endpoints); counter values are not compared. `None` when the table is not in the listing. An empty list: in place.
///
/// The comments name each pod's UID, verdict and name, the pod roots, the proxy address,
/// the log settings and the mode, so a changed guard or configuration shows as a
/// difference; the cgroup ids the paths were
/// resolved to are not compared (a pod directory removed and made again with the same
/// name needs a rebuild the caller decides on).
pub fn host_differences(
    listing: &str,
    config: &RulesetConfig,
    guard: &HostGuard,
) -> Result<Option<Vec<String>>, HostListingError> {
    let want = build(config, guard, &HostCounters::default())?;
    let items = objects(listing)?;
    let mut present = false;
    let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut counters: Vec<String> = Vec::new();
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (kind, body) in items.into_iter().filter_map(single) {
        let table_key = if kind == "table" { "name" } else { "table" };
        if body.get("family").and_then(Value::as_str) != Some(FAMILY)
            || body.get(table_key).and_then(Value::as_str) != Some(HOST_TABLE)
        {
            continue;
        }
        present = true;
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
        match kind.as_str() {
            "chain" => {
                chains.entry(name.to_owned()).or_default();
            }
            "counter" => counters.push(name.to_owned()),
            "set" => {
                let mut elems: Vec<String> = body
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(listed_element)
                    .collect();
                elems.sort();
                sets.insert(name.to_owned(), elems);
            }
            "rule" => {
                let chain = body
                    .get("chain")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let comment = body
                    .get("comment")
                    .and_then(Value::as_str)
                    .unwrap_or("(no comment)");
                chains
                    .entry(chain.to_owned())
                    .or_default()
                    .push(comment.to_owned());
            }
            _ => {}
        }
    }
    if !present {
        return Ok(None);
    }
    let mut diffs = Vec::new();
    for c in &want.counters {
        if !counters.contains(&c.name) {
            diffs.push(format!("counter {} is missing", c.name));
        }
    }
    for c in &counters {
        if !want.counters.iter().any(|w| w.name == *c) {
            diffs.push(format!("counter {c} is not ours to have"));
        }
    }
    for (name, _, elems) in &want.sets {
        let mut wanted = elems.clone();
        wanted.sort();
        match sets.get(*name) {
            None => diffs.push(format!("set {name} is missing")),
            Some(have) if *have != wanted => diffs.push(format!(
                "set {name}: elements [{}], expected [{}]",
                have.join(", "),
                wanted.join(", ")
            )),
            Some(_) => {}
        }
    }
    for name in sets.keys() {
        if !want.sets.iter().any(|(n, _, _)| n == name) {
            diffs.push(format!("set {name} is not ours to have"));
        }
    }
    for c in &want.chains {
        let wanted: Vec<&str> = c.rules.iter().map(|r| r.comment.as_str()).collect();
        match chains.get(c.name) {
            None => diffs.push(format!("chain {} is missing", c.name)),
            Some(have) if have.iter().map(String::as_str).ne(wanted.iter().copied()) => {
                diffs.push(format!(
                    "chain {}: rules [{}], expected [{}]",
                    c.name,
                    have.join("; "),
                    wanted.join("; ")
                ));
            }
            Some(_) => {}
        }
    }
    for name in chains.keys() {
        if !want.chains.iter().any(|c| c.name == name) {
            diffs.push(format!("chain {name} is not ours to have"));
        }
    }
    Ok(Some(diffs))
}

/// A listed set element as the text writes it: `{"concat": ["169.254.169.254", "tcp", 80]}`
/// → `169.254.169.254 . tcp . 80`; anything else as its JSON.
fn listed_element(v: &Value) -> String {
    match v.get("concat").and_then(Value::as_array) {
        Some(parts) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" . "),
        None => v.to_string(),
    }
}

/// Why [`host_differences`] could not compare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostListingError {
    /// The table to compare with cannot be built.
    #[error(transparent)]
    Build(#[from] HostRulesetError),
    /// The listing cannot be read.
    #[error(transparent)]
    Parse(#[from] NftParseError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{pod_cgroup, pod_cgroup_paths};
    use crate::target::Cloud;

    const EXPECTED_UID: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
    const OTHER_UID: &str = "0a1b2c3d-0000-4000-8000-00000000000b";

    fn config(mode: Mode) -> RulesetConfig {
        let mut c = RulesetConfig::new(mode, &[Cloud::Azure, Cloud::Aws]);
        c.proxy_v4 = Some("10.224.0.4:8169".parse().unwrap());
        c
    }

    fn guard() -> HostGuard {
        HostGuard {
            roots: vec!["kubepods".into(), "kubepods.slice".into()],
            pods: vec![
                HostPod {
                    pod: "monitoring/node-exporter-x2k4p".into(),
                    cgroup: pod_cgroup_paths(EXPECTED_UID)[1].clone(),
                    expected: true,
                },
                HostPod {
                    pod: "debug/node-debugger-abc".into(),
                    cgroup: pod_cgroup_paths(OTHER_UID)[3].clone(),
                    expected: false,
                },
            ],
            own: None,
        }
    }

    /// The rules of `chain` in `text`, one per line, comments included.
    fn chain<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        let start = format!("\tchain {name} {{");
        let Some(i) = text.find(&start) else {
            return Vec::new();
        };
        text[i + start.len()..]
            .lines()
            .skip(1)
            .take_while(|l| *l != "\t}")
            .map(str::trim)
            .filter(|l| !l.starts_with("type "))
            .collect()
    }

    /// Every `comment "…"` of `text`.
    fn comments(text: &str) -> Vec<&str> {
        text.split("comment \"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect()
    }

    #[test]
    fn every_comment_fits_in_128_bytes() {
        // The longest names the table takes (253 characters each side), the longest UID,
        // in every mode, with the agent's own pod and an IPv6 proxy.
        let ns = format!("o{}", "b".repeat(252));
        let name = format!("{}-x7k2p", "n".repeat(247));
        let long = format!("{ns}/{name}");
        assert!(valid_pod_name(&long));
        let uid = format!("{}-{}", "a".repeat(31), "b".repeat(32));
        assert_eq!(uid.len(), crate::cgroup::MAX_UID_LEN);
        let mut g = guard();
        for p in &mut g.pods {
            p.pod = long.clone();
        }
        g.pods.push(HostPod {
            pod: long.clone(),
            cgroup: pod_cgroup_paths(&uid)[2].clone(),
            expected: false,
        });
        g.own = Some(pod_cgroup_paths(&format!("{}c", "c".repeat(63)))[1].clone());
        let carried = HostCounters::default();
        for mode in [Mode::Block, Mode::Proxy, Mode::Observe] {
            for dry_run in [false, true] {
                if dry_run && mode == Mode::Observe {
                    continue;
                }
                let mut c = config(mode);
                c.dry_run = dry_run;
                c.proxy_v6 = Some(
                    "[fd00:ec2:ffff:ffff:ffff:ffff:ffff:fffe]:65535"
                        .parse()
                        .unwrap(),
                );
                let text = host_ruleset(&c, &g, &carried).unwrap();
                let all = comments(&text);
                assert!(all.len() > 10, "{text}");
                for comment in &all {
                    assert!(
                        comment.len() <= COMMENT_MAX,
                        "{mode} dry_run={dry_run}: {} bytes: {comment}",
                        comment.len()
                    );
                }
                // The UID and the verdict are whole; the name keeps its two ends.
                for (u, verdict) in [
                    (EXPECTED_UID, "expected"),
                    (OTHER_UID, "not-expected"),
                    (uid.as_str(), "not-expected"),
                ] {
                    let rule = all
                        .iter()
                        .find(|c| c.starts_with(&format!("imdsguard: pod {u} {verdict} ")))
                        .unwrap_or_else(|| panic!("{u}: {all:?}"));
                    assert!(
                        rule.contains(CLIP_MARKER) && rule.ends_with("-x7k2p"),
                        "{rule}"
                    );
                    assert!(rule.contains(" ob"), "{rule}");
                }
                // The counters' comments: the name clipped to 128 bytes.
                let counter = clip_pod(&long, COMMENT_MAX);
                assert_eq!(counter.len(), COMMENT_MAX);
                assert!(text.contains(&format!("comment \"{counter}\"\n\t\tpackets 0")));
            }
        }
        // A name that fits is written whole.
        let text = host_ruleset(&config(Mode::Block), &guard(), &carried).unwrap();
        assert!(!text.contains(CLIP_MARKER), "{text}");
        assert!(comments(&text).contains(
            &format!("imdsguard: pod {OTHER_UID} not-expected debug/node-debugger-abc").as_str()
        ));
    }

    #[test]
    fn clipping_a_pod_name() {
        let pod = "observability/kube-prometheus-stack-prometheus-node-exporter-x7k2p";
        assert_eq!(clip_pod(pod, 200), pod);
        assert_eq!(clip_pod(pod, pod.len()), pod);
        let c = clip_pod(pod, 40);
        assert_eq!(c, "observability/kube...node-exporter-x7k2p");
        assert_eq!(c.len(), 40);
        assert_eq!(
            clip_pod(pod, 41),
            "observability/kube-...node-exporter-x7k2p"
        );
        assert_eq!(clip_pod(pod, 4), "...p");
        assert_eq!(clip_pod(pod, 3), "...");
        assert_eq!(clip_pod(pod, 2), "..");
        assert_eq!(clip_pod(pod, 0), "");
    }

    #[test]
    fn block_mode() {
        let text = host_ruleset(&config(Mode::Block), &guard(), &HostCounters::default()).unwrap();
        assert!(text.starts_with(
            "table inet imdsguard_host {}\ndelete table inet imdsguard_host\ntable inet imdsguard_host {\n"
        ));
        assert!(
            text.contains("\t\ttype filter hook output priority filter - 10; policy accept;\n")
        );
        assert_eq!(
            chain(&text, "output"),
            [
                "ip daddr . meta l4proto . th dport @protected_v4 jump guard comment \"imdsguard: protected IPv4 endpoints\"",
                "ip6 daddr . meta l4proto . th dport @protected_v6 jump guard comment \"imdsguard: protected IPv6 endpoints\"",
            ]
        );
        let expected = &guard().pods[0].cgroup;
        let other = &guard().pods[1].cgroup;
        assert_eq!(expected.level, 3);
        assert_eq!(other.level, 2);
        assert_eq!(
            chain(&text, "guard"),
            [
                format!(
                    "socket cgroupv2 level 3 \"{}\" counter name \"pod_0a1b2c3d_0000_4000_8000_00000000000a\" accept comment \"imdsguard: pod {EXPECTED_UID} expected monitoring/node-exporter-x2k4p\"",
                    expected.path
                ),
                format!(
                    "socket cgroupv2 level 2 \"kubepods/pod{OTHER_UID}\" counter name \"pod_0a1b2c3d_0000_4000_8000_00000000000b\" jump pod_drop comment \"imdsguard: pod {OTHER_UID} not-expected debug/node-debugger-abc\""
                ),
                "socket cgroupv2 level 1 \"kubepods.slice\" counter name \"unknown_pod\" jump pod_drop comment \"imdsguard: unknown pod cgroup under kubepods.slice\"".to_owned(),
                "socket cgroupv2 level 1 \"kubepods\" counter name \"unknown_pod\" jump pod_drop comment \"imdsguard: unknown pod cgroup under kubepods\"".to_owned(),
            ]
        );
        assert!(
            expected
                .path
                .starts_with("kubepods.slice/kubepods-burstable.slice/")
        );
        assert_eq!(
            chain(&text, "pod_drop"),
            [
                "limit rate 10/second burst 20 packets log prefix \"imdsguard:drop \" group 169 comment \"imdsguard: log group 169 rate 10/s burst 20\"",
                "drop comment \"imdsguard mode=block\"",
            ]
        );
        assert!(chain(&text, "pod_observe").is_empty());
        assert!(chain(&text, "nat_output").is_empty());
        assert!(!text.contains("dnat"));
        // The protected endpoints, both families; never port 53.
        assert!(text.contains("\t\ttype ipv4_addr . inet_proto . inet_service\n\t\telements = { "));
        assert!(text.contains("169.254.169.254 . tcp . 80"));
        assert!(text.contains("168.63.129.16 . tcp . 32526"));
        assert!(text.contains("fd00:ec2::254 . tcp . 80"));
        assert!(!text.contains(" . 53"));
        // One counter per pod, named after its UID, its comment the pod.
        assert!(text.contains(
            "\tcounter pod_0a1b2c3d_0000_4000_8000_00000000000b {\n\t\tcomment \"debug/node-debugger-abc\"\n\t\tpackets 0 bytes 0\n\t}\n"
        ));
        assert!(text.contains("\tcounter unknown_pod {\n\t\tpackets 0 bytes 0\n\t}\n"));
        // Balanced braces, every rule with a comment.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        for c in ["output", "guard", "pod_drop"] {
            assert!(
                chain(&text, c).iter().all(|r| r.contains(" comment \"")),
                "{c}"
            );
        }
    }

    #[test]
    fn proxy_mode_redirects_the_pod_tree_and_guards_the_rest() {
        let mut g = guard();
        g.own = Some(pod_cgroup_paths("feedbeef")[0].clone());
        let text = host_ruleset(&config(Mode::Proxy), &g, &HostCounters::default()).unwrap();
        assert!(text.contains("\t\ttype nat hook output priority -110; policy accept;\n"));
        // Only the IPv4 proxy is set: IPv6 is not redirected (and is guarded).
        assert_eq!(
            chain(&text, "nat_output"),
            [
                "ip daddr . meta l4proto . th dport @proxied_v4 jump redirect_v4 comment \"imdsguard: proxied IPv4 endpoints\""
            ]
        );
        // The agent's own pod and the expected pod go direct; every other pod-tree
        // connection goes to the proxy.
        assert_eq!(
            chain(&text, "redirect_v4"),
            [
                "socket cgroupv2 level 2 \"kubepods.slice/kubepods-podfeedbeef.slice\" return comment \"imdsguard: imdsguard's own pod feedbeef goes direct\"",
                &format!(
                    "socket cgroupv2 level 3 \"{}\" return comment \"imdsguard: pod {EXPECTED_UID} expected goes direct\"",
                    g.pods[0].cgroup.path
                ),
                "socket cgroupv2 level 1 \"kubepods.slice\" meta l4proto tcp counter name \"proxied\" dnat ip to 10.224.0.4:8169 comment \"imdsguard mode=proxy kubepods.slice to 10.224.0.4:8169\"",
                "socket cgroupv2 level 1 \"kubepods\" meta l4proto tcp counter name \"proxied\" dnat ip to 10.224.0.4:8169 comment \"imdsguard mode=proxy kubepods to 10.224.0.4:8169\"",
            ]
        );
        assert!(chain(&text, "redirect_v6").is_empty());
        // The proxied set holds the IMDS endpoint only; WireServer stays guarded.
        let proxied = &text[text.find("set proxied_v4").unwrap()..];
        let proxied = &proxied[..proxied.find("\t}").unwrap()];
        assert!(
            proxied.contains("elements = { 169.254.169.254 . tcp . 80 }"),
            "{proxied}"
        );
        let guard_rules = chain(&text, "guard");
        assert!(guard_rules[0].starts_with(
            "socket cgroupv2 level 2 \"kubepods.slice/kubepods-podfeedbeef.slice\" accept"
        ));
        assert!(guard_rules[2].contains("jump pod_drop"));
        assert_eq!(
            chain(&text, "pod_drop")[1],
            "drop comment \"imdsguard mode=proxy\""
        );

        // With an IPv6 proxy, IPv6 is redirected too.
        let mut c = config(Mode::Proxy);
        c.proxy_v6 = Some("[fd00::4]:8169".parse().unwrap());
        let text = host_ruleset(&c, &guard(), &HostCounters::default()).unwrap();
        assert_eq!(chain(&text, "nat_output").len(), 2);
        assert_eq!(
            chain(&text, "redirect_v6")[1],
            "socket cgroupv2 level 1 \"kubepods.slice\" meta l4proto tcp counter name \"proxied\" dnat ip6 to [fd00::4]:8169 comment \"imdsguard mode=proxy kubepods.slice to [fd00::4]:8169\""
        );
        assert!(text.contains("set proxied_v6 {\n\t\ttype ipv6_addr . inet_proto . inet_service\n\t\telements = { fd00:ec2::254 . tcp . 80 }"));
        // Proxy mode without a proxy is refused like the main table.
        let mut c = config(Mode::Proxy);
        c.proxy_v4 = None;
        assert_eq!(
            host_ruleset(&c, &guard(), &HostCounters::default()),
            Err(HostRulesetError::Config(NftConfigError::NoProxy))
        );
    }

    #[test]
    fn observe_mode_counts_new_connections_and_drops_nothing() {
        let text =
            host_ruleset(&config(Mode::Observe), &guard(), &HostCounters::default()).unwrap();
        assert!(
            chain(&text, "output")
                .iter()
                .all(|r| r.starts_with("ct state new ip"))
        );
        let guard_rules = chain(&text, "guard");
        assert!(guard_rules[0].contains(" accept comment"));
        assert!(guard_rules[1].contains("jump pod_observe"));
        assert!(guard_rules[2].contains("counter name \"unknown_pod\" jump pod_observe"));
        assert_eq!(
            chain(&text, "pod_observe"),
            [
                "limit rate 10/second burst 20 packets log prefix \"imdsguard:observe \" group 169 comment \"imdsguard: log group 169 rate 10/s burst 20\"",
                "accept comment \"imdsguard mode=observe\"",
            ]
        );
        assert!(verdicts(&text, "drop").is_empty(), "{text}");
        assert!(!text.contains("pod_drop"));
        assert!(!text.contains("dnat"));
    }

    /// Every rule line of every chain of `text` that has `word` as a word of its own
    /// (before its comment): `drop` finds drop verdicts, not `pod_drop` or `would_drop`.
    fn verdicts<'a>(text: &'a str, word: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with("\t\t") && !l.trim_start().starts_with("type "))
            .filter(|l| {
                let body = l.split(" comment \"").next().unwrap_or(l);
                body.split_whitespace().any(|w| w == word)
            })
            .collect()
    }

    #[test]
    fn a_dry_run_drops_nothing_and_counts_what_it_would_drop() {
        for mode in [Mode::Block, Mode::Proxy] {
            let enforcing =
                host_ruleset(&config(mode), &guard(), &HostCounters::default()).unwrap();
            let mut c = config(mode);
            c.dry_run = true;
            let text = host_ruleset(&c, &guard(), &HostCounters::default()).unwrap();
            // Enforcing drops; the dry run has no drop verdict anywhere.
            assert_eq!(verdicts(&enforcing, "drop").len(), 1, "{mode}");
            assert_eq!(
                verdicts(&text, "drop"),
                Vec::<&str>::new(),
                "{mode}: {text}"
            );
            assert!(chain(&text, "pod_drop").is_empty(), "{mode}");
            // What would go to pod_drop goes to pod_would_drop: the same rules, each pod
            // still counted on its own counter (the agent's attribution).
            let guard_rules = chain(&text, "guard");
            assert_eq!(
                guard_rules,
                chain(&enforcing, "guard")
                    .iter()
                    .map(|r| r.replace("jump pod_drop", "jump pod_would_drop"))
                    .collect::<Vec<_>>(),
                "{mode}"
            );
            assert!(guard_rules[1].contains(
                "counter name \"pod_0a1b2c3d_0000_4000_8000_00000000000b\" jump pod_would_drop"
            ));
            assert!(guard_rules[2].contains("counter name \"unknown_pod\" jump pod_would_drop"));
            assert_eq!(
                chain(&text, "pod_would_drop"),
                [
                    "limit rate 10/second burst 20 packets log prefix \"imdsguard:would-drop \" group 169 comment \"imdsguard: log group 169 rate 10/s burst 20\"".to_owned(),
                    format!("counter name \"would_drop\" accept comment \"imdsguard mode={mode} dry-run\""),
                ]
            );
            assert!(text.contains("\tcounter would_drop {\n\t\tpackets 0 bytes 0\n\t}\n"));
            // The redirect to the proxy is proxy mode's.
            assert_eq!(
                chain(&text, "redirect_v4"),
                chain(&enforcing, "redirect_v4"),
                "{mode}"
            );
            assert_eq!(chain(&text, "nat_output"), chain(&enforcing, "nat_output"));
        }
        let mut c = config(Mode::Proxy);
        c.dry_run = true;
        let text = host_ruleset(&c, &guard(), &HostCounters::default()).unwrap();
        assert_eq!(verdicts(&text, "dnat").len(), 2, "{text}");
        // Observe mode drops nothing to begin with: a dry run of it is refused.
        let mut c = config(Mode::Observe);
        c.dry_run = true;
        assert_eq!(
            host_ruleset(&c, &guard(), &HostCounters::default()),
            Err(HostRulesetError::Config(NftConfigError::DryRunObserve))
        );
    }

    #[test]
    fn no_pods_and_no_roots() {
        let g = HostGuard::default();
        let text = host_ruleset(&config(Mode::Block), &g, &HostCounters::default()).unwrap();
        assert!(chain(&text, "guard").is_empty());
        assert!(!text.contains("socket"));
        // Only the roots that exist are named.
        let g = HostGuard {
            roots: vec!["kubepods.slice".into()],
            ..HostGuard::default()
        };
        let text = host_ruleset(&config(Mode::Block), &g, &HostCounters::default()).unwrap();
        assert_eq!(chain(&text, "guard").len(), 1);
        assert!(!text.contains("\"kubepods\""));
    }

    #[test]
    fn counters_are_carried_and_read_back() {
        let carried = HostCounters {
            counters: vec![CounterValue {
                name: "unknown_pod".into(),
                packets: 7,
                bytes: 5_000_000_000,
            }],
            pods: vec![
                HostPodCount {
                    uid: OTHER_UID.into(),
                    pod: Some("debug/node-debugger-abc".into()),
                    packets: 3,
                    bytes: 180,
                },
                HostPodCount {
                    uid: "dead".into(),
                    pod: None,
                    packets: 1,
                    bytes: 1,
                },
            ],
        };
        let text = host_ruleset(&config(Mode::Block), &guard(), &carried).unwrap();
        assert!(text.contains("\tcounter unknown_pod {\n\t\tpackets 7 bytes 5000000000\n\t}"));
        assert!(text.contains("comment \"debug/node-debugger-abc\"\n\t\tpackets 3 bytes 180\n"));
        // A pod no longer listed loses its counter.
        assert!(!text.contains("pod_dead"));

        // What nft -j lists (nft 1.0.6, trimmed).
        let listing = format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "json_schema_version": 1}}}},
            {{"table": {{"family": "inet", "name": "imdsguard_host", "handle": 2}}}},
            {{"counter": {{"family": "inet", "name": "unknown_pod", "table": "imdsguard_host", "handle": 8, "packets": 4, "bytes": 240}}}},
            {{"counter": {{"family": "inet", "name": "proxied", "table": "imdsguard_host", "handle": 9, "packets": 0, "bytes": 0}}}},
            {{"counter": {{"family": "inet", "name": "pod_{}", "table": "imdsguard_host", "handle": 7, "comment": "debug/node-debugger-abc", "packets": 5, "bytes": 300}}}},
            {{"counter": {{"family": "inet", "name": "pod_{}", "table": "imdsguard_host", "handle": 10, "comment": "monitoring/node-exporter-x2k4p", "packets": 0, "bytes": 0}}}},
            {{"counter": {{"family": "inet", "name": "blocked", "table": "imdsguard", "handle": 3, "packets": 9, "bytes": 9}}}},
            {{"counter": {{"family": "ip", "name": "unknown_pod", "table": "imdsguard_host", "handle": 3, "packets": 9, "bytes": 9}}}}
            ]}}"#,
            OTHER_UID.replace('-', "_"),
            EXPECTED_UID.replace('-', "_"),
        );
        let c = parse_host_counters(&listing).unwrap();
        assert_eq!(c.get("unknown_pod").packets, 4);
        assert_eq!(c.get("proxied").packets, 0);
        assert_eq!(c.counters.len(), 2, "other tables' counters are left out");
        assert_eq!(
            c.pods,
            [
                HostPodCount {
                    uid: EXPECTED_UID.into(),
                    pod: Some("monitoring/node-exporter-x2k4p".into()),
                    packets: 0,
                    bytes: 0,
                },
                HostPodCount {
                    uid: OTHER_UID.into(),
                    pod: Some("debug/node-debugger-abc".into()),
                    packets: 5,
                    bytes: 300,
                },
            ]
        );
        assert_eq!(c.pod(OTHER_UID).unwrap().packets, 5);
        assert!(parse_host_counters("nope").is_err());
        assert!(
            parse_host_counters(r#"{"nftables": []}"#)
                .unwrap()
                .pods
                .is_empty()
        );
    }

    #[test]
    fn counter_names_round_trip() {
        assert_eq!(
            host_counter_name(OTHER_UID),
            "pod_0a1b2c3d_0000_4000_8000_00000000000b"
        );
        assert_eq!(
            host_counter_uid(&host_counter_name(OTHER_UID)).as_deref(),
            Some(OTHER_UID)
        );
        for name in [
            "unknown_pod",
            "proxied",
            "pod_",
            "pod_xyz",
            "pod_AB",
            "blocked",
        ] {
            assert_eq!(host_counter_uid(name), None, "{name}");
        }
    }

    #[test]
    fn only_validated_text_is_written() {
        let c = config(Mode::Block);
        let none = HostCounters::default();
        let with = |f: &dyn Fn(&mut HostGuard)| {
            let mut g = guard();
            f(&mut g);
            host_ruleset(&c, &g, &none)
        };
        for bad in [
            "debug/a\"b",
            "debug/a b",
            "debug/a;b",
            "debug/a\nb",
            "nonamespace",
            "/name",
            "ns/",
            "a/b/c",
            "ns/é",
        ] {
            assert_eq!(
                with(&|g| g.pods[1].pod = bad.into()),
                Err(HostRulesetError::PodName(bad.into())),
                "{bad:?}"
            );
        }
        // Paths, levels and UIDs that are not the kubelet's.
        let e = with(&|g| g.pods[1].cgroup.path = "kubepods/pod0a\" accept; #".into()).unwrap_err();
        assert!(matches!(e, HostRulesetError::Cgroup { .. }), "{e}");
        assert!(e.to_string().contains("not a pod cgroup directory"), "{e}");
        let e = with(&|g| g.pods[1].cgroup.level = 1).unwrap_err();
        assert!(matches!(e, HostRulesetError::Cgroup { .. }), "{e}");
        let e = with(&|g| g.pods[1].cgroup.uid = "0A1B".into()).unwrap_err();
        assert!(matches!(e, HostRulesetError::Cgroup { .. }), "{e}");
        let e = with(&|g| {
            g.own = Some(PodCgroup {
                path: "system.slice".into(),
                ..pod_cgroup_paths("ab")[0].clone()
            })
        })
        .unwrap_err();
        assert!(e.to_string().contains("imdsguard itself"), "{e}");
        assert_eq!(
            with(&|g| g.roots.push("system.slice".into())),
            Err(HostRulesetError::Root("system.slice".into()))
        );
        let e = with(&|g| g.roots = vec!["kubepods".into()]).unwrap_err();
        assert!(matches!(e, HostRulesetError::MissingRoot { .. }), "{e}");
        // Port 53 refused as in the main table.
        let mut dns = config(Mode::Block);
        dns.protected.push("168.63.129.16:53/udp".parse().unwrap());
        assert!(matches!(
            host_ruleset(&dns, &guard(), &none),
            Err(HostRulesetError::Config(NftConfigError::DnsTarget(_)))
        ));
        // Everything written between quotes is from the validated alphabet.
        let text = host_ruleset(&config(Mode::Proxy), &guard(), &none).unwrap();
        for (i, quoted) in text.split('"').enumerate() {
            if i % 2 == 1 {
                assert!(
                    quoted.bytes().all(|b| b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b'_' | b'-' | b'/' | b':' | b' ' | b'=' | b'\'')),
                    "{quoted:?}"
                );
            }
        }
    }

    #[test]
    fn a_pod_listed_twice_has_one_counter() {
        let mut g = guard();
        g.pods.push(g.pods[1].clone());
        let mut moved = g.pods[1].clone();
        moved.cgroup = pod_cgroup_paths(OTHER_UID)[4].clone();
        g.pods.push(moved);
        let text = host_ruleset(&config(Mode::Block), &g, &HostCounters::default()).unwrap();
        assert_eq!(
            text.matches("\tcounter pod_0a1b2c3d_0000_4000_8000_00000000000b {")
                .count(),
            1
        );
        assert_eq!(
            chain(&text, "guard").len(),
            5,
            "two paths, one rule each, plus the roots"
        );
        assert_eq!(pod_cgroup(&g.pods[3].cgroup.path).unwrap().uid, OTHER_UID);
    }

    #[test]
    fn the_listing_is_checked_by_rule_comments() {
        let c = config(Mode::Block);
        let g = guard();
        let want = build(&c, &g, &HostCounters::default()).unwrap();
        // A listing made of what we build (as nft lists it: objects with table names).
        let mut items =
            vec![serde_json::json!({"table": {"family": "inet", "name": HOST_TABLE, "handle": 1}})];
        for ctr in &want.counters {
            items.push(serde_json::json!({"counter": {"family": "inet", "table": HOST_TABLE, "name": ctr.name}}));
        }
        for (name, _, elems) in &want.sets {
            // As nft lists them: concatenations, the port a number.
            let elem: Vec<Value> = elems
                .iter()
                .map(|e| {
                    let parts: Vec<&str> = e.split(" . ").collect();
                    serde_json::json!({"concat": [parts[0], parts[1], parts[2].parse::<u16>().unwrap()]})
                })
                .collect();
            items.push(serde_json::json!({"set": {"family": "inet", "table": HOST_TABLE, "name": name, "elem": elem}}));
        }
        for ch in &want.chains {
            items.push(serde_json::json!({"chain": {"family": "inet", "table": HOST_TABLE, "name": ch.name}}));
            for r in &ch.rules {
                items.push(serde_json::json!({"rule": {"family": "inet", "table": HOST_TABLE, "chain": ch.name, "comment": r.comment}}));
            }
        }
        let listing = |items: &[Value]| serde_json::json!({ "nftables": items }).to_string();
        assert_eq!(
            host_differences(&listing(&items), &c, &g).unwrap(),
            Some(vec![])
        );
        assert_eq!(
            host_differences(r#"{"nftables": []}"#, &c, &g).unwrap(),
            None
        );
        // Another mode, another pod, a missing rule: each shows.
        let d = host_differences(&listing(&items), &config(Mode::Observe), &g)
            .unwrap()
            .unwrap();
        assert!(
            d.iter().any(|d| d.contains("chain pod_observe is missing")),
            "{d:?}"
        );
        assert!(
            d.iter().any(|d| d.contains("chain pod_drop is not ours")),
            "{d:?}"
        );
        let mut g2 = g.clone();
        g2.pods[1].expected = true;
        let d = host_differences(&listing(&items), &c, &g2)
            .unwrap()
            .unwrap();
        assert!(d.iter().any(|d| d.starts_with("chain guard:")), "{d:?}");
        let mut fewer = items.clone();
        fewer.retain(|i| i["rule"]["comment"] != "imdsguard mode=block");
        let d = host_differences(&listing(&fewer), &c, &g).unwrap().unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].starts_with("chain pod_drop:"), "{d:?}");
        // A changed endpoint, proxy address or log setting shows too.
        let mut other_targets = config(Mode::Block);
        other_targets.protected.retain(|t| t.port != 32526);
        let d = host_differences(&listing(&items), &other_targets, &g)
            .unwrap()
            .unwrap();
        assert!(
            d.iter()
                .any(|d| d.starts_with("set protected_v4: elements")),
            "{d:?}"
        );
        let mut log = config(Mode::Block);
        log.log.group = 170;
        let d = host_differences(&listing(&items), &log, &g)
            .unwrap()
            .unwrap();
        assert!(d.iter().any(|d| d.starts_with("chain pod_drop:")), "{d:?}");
        // A dry run of the same mode is not this table, and the other way round.
        let mut dry = config(Mode::Block);
        dry.dry_run = true;
        let d = host_differences(&listing(&items), &dry, &g)
            .unwrap()
            .unwrap();
        assert!(
            d.iter()
                .any(|d| d.contains("chain pod_would_drop is missing")),
            "{d:?}"
        );
        assert!(
            d.iter().any(|d| d.contains("chain pod_drop is not ours")),
            "{d:?}"
        );
        let mut dry_items = items.clone();
        for i in &mut dry_items {
            if i["rule"]["chain"] == "pod_drop" || i["chain"]["name"] == "pod_drop" {
                let kind = if i.get("rule").is_some() {
                    "rule"
                } else {
                    "chain"
                };
                let key = if kind == "rule" { "chain" } else { "name" };
                i[kind][key] = "pod_would_drop".into();
            }
            if i["rule"]["comment"] == "imdsguard mode=block" {
                i["rule"]["comment"] = "imdsguard mode=block dry-run".into();
            }
        }
        assert_eq!(
            host_differences(&listing(&dry_items), &dry, &g).unwrap(),
            Some(vec![])
        );
        let d = host_differences(&listing(&dry_items), &c, &g)
            .unwrap()
            .unwrap();
        assert!(
            d.iter().any(|d| d.contains("chain pod_drop is missing")),
            "{d:?}"
        );
        // Only the marker says dry run (a chain renamed by hand): still a difference.
        let mut renamed = dry_items.clone();
        for i in &mut renamed {
            if i["rule"]["comment"] == "imdsguard mode=block dry-run" {
                i["rule"]["comment"] = "imdsguard mode=block".into();
            }
        }
        let d = host_differences(&listing(&renamed), &dry, &g)
            .unwrap()
            .unwrap();
        assert!(
            d.iter().any(|d| d.starts_with("chain pod_would_drop:")),
            "{d:?}"
        );
    }
}
