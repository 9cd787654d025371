//! The node's nftables ruleset as data: the `inet imdsguard` table that keeps pods away
//! from the metadata endpoints, built as the JSON batch that `nft -j -f -` applies in one
//! transaction, and the parsers for what `nft -j list …` answers.
//!
//! Nothing here runs `nft`: `imdsguard-node` sends these batches and reads the answers.
//!
//! # The table
//!
//! ```text
//! table inet imdsguard
//!   counter allowed | blocked | observed | proxied | spoofed | would_drop
//!   set protected_v4 { type ipv4_addr . inet_proto . inet_service }   169.254.169.254 . tcp . 80, …
//!   set protected_v6 { type ipv6_addr . inet_proto . inet_service }   fd00:ec2::254 . tcp . 80 (AWS)
//!   set allow_v4     { type ifname . ipv4_addr }                       "azvabc" . 10.244.0.10, …
//!   set allow_v6     { type ifname . ipv6_addr }
//!   set known_v4     { type ifname . ipv4_addr }                       every pod the node hosts
//!   set known_v6     { type ifname . ipv6_addr }
//!   set dropped_v4   { type ifname . ipv4_addr; flags dynamic,timeout; timeout 10m; counter }
//!   set dropped_v6   { type ifname . ipv6_addr; … }                   who was dropped, and how often
//!   set observed_v4  { type ifname . ipv4_addr . ipv4_addr . inet_proto . inet_service; … }
//!   set observed_v6  { … }                      observe mode: who connected to which endpoint
//!   chain forward  (filter, hook forward, priority filter - 10): iifname "azv*" jump pod_egress, …
//!   chain input    (filter, hook input,   priority filter - 10): the same jumps
//!   chain pod_egress: ip daddr . meta l4proto . th dport @protected_v4 jump guard_v4 (and v6)
//!   chain guard_v4:   iifname . ip saddr @allow_v4 counter allowed accept
//!                     block/proxy: update @dropped_v4 { iifname . ip saddr }
//!                     proxy only:  iifname . ip saddr != @known_v4 limit … log group G (spoof)
//!                                  iifname . ip saddr != @known_v4 counter spoofed drop
//!                     block/proxy: limit … log group G;  counter blocked drop
//!                     dry run (block/proxy): the same rules, each `drop` an `accept`, counted
//!                                  would_drop, logged "imdsguard:would-drop " ("…would-spoof ")
//!                     observe:     ct state new update @observed_v4 { iifname . ip saddr . ip daddr . meta l4proto . th dport }
//!                                  ct state new limit … log group G;  counter observed accept
//!   proxy mode only:
//!   chain prerouting (nat, hook prerouting, priority dstnat - 10): iifname "azv*" jump pod_redirect, …
//!   set proxied_v4 { … }   the protected endpoints the proxy serves (IMDS), v6 likewise
//!   chain pod_redirect: ip daddr . meta l4proto . th dport @proxied_v4 jump redirect_v4
//!   chain redirect_v4:  iifname . ip saddr @allow_v4 return
//!                       iifname . ip saddr @known_v4 meta l4proto tcp counter proxied dnat ip to PROXY
//! ```
//!
//! In proxy mode the proxy identifies callers by source address, so only a *known*
//! (interface, address) pair, a pod the node hosts on that interface, is redirected. A
//! packet whose pair is unknown (a pod borrowing another pod's address from its own
//! interface) is not redirected; the forward (or input) guard then drops it, counted as
//! `spoofed` and logged with [`LOG_PREFIX_SPOOF`].
//!
//! A dry run ([`RulesetConfig::dry_run`], block and proxy modes) drops nothing: every
//! verdict that would drop accepts instead, counted in `would_drop` (`blocked` and
//! `spoofed` stay at zero) and logged with [`LOG_PREFIX_WOULD_DROP`] /
//! [`LOG_PREFIX_WOULD_SPOOF`]; the source is still recorded in `dropped_v4`, so the
//! agent names the pods enforcing would cut off. Its mode marker is `imdsguard
//! mode=proxy dry-run`.
//!
//! In block and proxy modes every packet that reaches the guard past the allow rule is
//! dropped (a dry run: accepted), so one rule there records its (interface, source address) pair in the
//! dynamic set `dropped_v4` (`dropped_v6`), whose elements carry a packet counter and
//! expire 10 minutes after their last packet: the agent reads them
//! ([`parse_dropped`]) to say which pod was dropped, without parsing NFLOG. The record
//! is a rule of its own, so a full set (the update fails and ends its rule) never skips
//! the drop. Observe mode records each new connection it lets through the same way, in
//! `observed_v4` (`observed_v6`), keyed by source pair and endpoint, each element
//! counting connections ([`parse_observed`]): what block mode would drop, per pod and
//! endpoint.
//!
//! Rules match only the protected (address, protocol, port) triples, so Azure DNS on
//! 168.63.129.16:53 and node-local DNS (169.254.20.10, 169.254.10.0/24) are never
//! touched; a port-53 target is refused outright. See `docs/node.md` for why the hooks
//! are where they are.
//!
//! # Modules
//!
//! - [`config`]: what the table depends on ([`RulesetConfig`], [`Mode`], interface
//!   patterns, NFLOG settings) and its checks;
//! - [`pairs`]: (interface, address) pairs ([`SourcePair`]) and the allow/known set
//!   changes;
//! - [`ruleset`](mod@ruleset): the batches, built with the `nftables` crate's schema types
//!   (`nftables::schema`, `nftables::expr`, `nftables::stmt`: plain data) and written as
//!   the JSON `nft -j -f -` reads;
//! - [`counters`]: the named counters and the dropped-source sets as listed;
//! - [`state`]: a listing (or a batch) read into typed values, and what differs from the
//!   table imdsguard builds.
//!
//! - [`host`]: the second table, `inet imdsguard_host`, for hostNetwork pods.
//!
//! conntrack flushing is not nftables: see [`crate::conntrack`].
//!
//! # The host table
//!
//! hostNetwork pods share the node's network namespace: their packets leave through the
//! node's `output` hook, where the interface and source address say nothing about the
//! pod. [`host`] builds a second table of ours, `table inet imdsguard_host`, that tells
//! them apart by the socket's cgroup (`socket cgroupv2 level N "PATH"`, the pod
//! directories of [`crate::cgroup`]): per hostNetwork pod a rule with a counter of its
//! own that accepts (expected) or drops (block, proxy) or logs (observe), sockets in
//! any other pod cgroup dropped, node processes untouched; in proxy mode the pod tree's
//! connections to the proxied endpoints are DNATed to the proxy. It is nft *text*
//! ([`host_ruleset`]), not JSON, because nft 1.0.6's JSON cannot say `socket cgroupv2`.

pub mod config;
pub mod counters;
pub mod host;
mod listing;
pub mod pairs;
pub mod ruleset;
pub mod state;

#[cfg(test)]
mod tests;

pub use config::{LogConfig, Mode, NftConfigError, RulesetConfig};
pub use counters::{
    CounterValue, DroppedSource, ObservedConnection, parse_counters, parse_dropped, parse_observed,
};
pub use host::{
    HOST_TABLE, HostCounters, HostGuard, HostListingError, HostPod, HostPodCount, HostRulesetError,
    delete_host_table, host_counter_name, host_counter_uid, host_differences, host_ruleset,
    parse_host_counters,
};
pub use pairs::{
    PairChanges, PairSet, SourcePair, add_allowed, add_pairs, remove_allowed, remove_pairs,
};
pub use ruleset::{delete_table, ruleset, ruleset_with_known};
pub use state::{
    ChainState, Difference, DifferenceKind, NftParseError, RuleExpr, RuleState, TableState,
};

/// The family of the table.
pub const FAMILY: &str = "inet";
/// The name of the table. imdsguard never touches any other table.
pub const TABLE: &str = "imdsguard";
/// The NFLOG group drops and observations are logged to when none is configured.
pub const DEFAULT_LOG_GROUP: u16 = 169;
/// Log at most this many packets a second (per rule) by default.
pub const DEFAULT_LOG_RATE: u32 = 10;
/// The burst allowed above [`DEFAULT_LOG_RATE`].
pub const DEFAULT_LOG_BURST: u32 = 20;
/// Pod-side interface name patterns matched by default: Azure CNI (`azv*`), kubenet and
/// bridge CNIs (`cbr0`, `cni0`: routed pod traffic enters the node through the bridge),
/// Calico (`cali*`), Cilium (`lxc*`) and generic veth pairs (`veth*`).
pub const DEFAULT_POD_INTERFACES: &[&str] = &["azv*", "cbr0", "cni0", "cali*", "lxc*", "veth*"];
/// Priority of the filter chains: `filter - 10`, before the usual filter chains.
pub const FILTER_PRIORITY: i32 = -10;
/// Priority of the proxy mode's nat chain: `dstnat - 10`.
pub const DNAT_PRIORITY: i32 = -110;
/// The prefix of the NFLOG messages for dropped packets.
pub const LOG_PREFIX_DROP: &str = "imdsguard:drop ";
/// The prefix of the NFLOG messages for packets dropped because their (interface,
/// address) pair is not a known pod's (proxy mode).
pub const LOG_PREFIX_SPOOF: &str = "imdsguard:spoof ";
/// The prefix of the NFLOG messages for packets a dry run lets through that block or
/// proxy mode would drop ([`RulesetConfig::dry_run`]).
pub const LOG_PREFIX_WOULD_DROP: &str = "imdsguard:would-drop ";
/// The prefix of the NFLOG messages for packets a dry run lets through that proxy mode
/// would drop because their (interface, address) pair is not a known pod's.
pub const LOG_PREFIX_WOULD_SPOOF: &str = "imdsguard:would-spoof ";
/// The prefix of the NFLOG messages for observed (allowed, `observe` mode) connections.
pub const LOG_PREFIX_OBSERVE: &str = "imdsguard:observe ";
/// A dropped source's element leaves `dropped_v4` / `dropped_v6` this many seconds
/// after its last dropped packet.
pub const DROPPED_TIMEOUT_SECS: u64 = 600;
/// At most this many dropped sources are recorded per family; past it, drops are still
/// dropped and counted, only not recorded per source.
pub const DROPPED_SET_SIZE: u32 = 16384;
/// The comment that marks the verdict rule of a mode: `imdsguard mode=block`.
pub const MODE_MARKER: &str = "imdsguard mode=";

/// Chain names.
pub mod chain {
    /// Base chain on the forward hook: pod traffic routed by the node.
    pub const FORWARD: &str = "forward";
    /// Base chain on the input hook: pod traffic to an endpoint the node itself holds.
    pub const INPUT: &str = "input";
    /// Base chain on the prerouting hook (nat), proxy mode only.
    pub const PREROUTING: &str = "prerouting";
    /// Pod traffic: is it for a protected endpoint?
    pub const POD_EGRESS: &str = "pod_egress";
    /// Verdict for IPv4 pod traffic to a protected endpoint.
    pub const GUARD_V4: &str = "guard_v4";
    /// Verdict for IPv6 pod traffic to a protected endpoint.
    pub const GUARD_V6: &str = "guard_v6";
    /// Proxy mode: is this pod traffic for a protected endpoint?
    pub const POD_REDIRECT: &str = "pod_redirect";
    /// Proxy mode: redirect IPv4 traffic to the proxy.
    pub const REDIRECT_V4: &str = "redirect_v4";
    /// Proxy mode: redirect IPv6 traffic to the proxy.
    pub const REDIRECT_V6: &str = "redirect_v6";
}

/// Set names.
pub mod set {
    /// Protected IPv4 endpoints: `ipv4_addr . inet_proto . inet_service`.
    pub const PROTECTED_V4: &str = "protected_v4";
    /// Protected IPv6 endpoints: `ipv6_addr . inet_proto . inet_service`.
    pub const PROTECTED_V6: &str = "protected_v6";
    /// Allowlisted IPv4 pods: `ifname . ipv4_addr`.
    pub const ALLOW_V4: &str = "allow_v4";
    /// Allowlisted IPv6 pods: `ifname . ipv6_addr`.
    pub const ALLOW_V6: &str = "allow_v6";
    /// Known IPv4 pods (every pod the node hosts): `ifname . ipv4_addr`. Proxy mode
    /// redirects only these pairs; other sources are dropped.
    pub const KNOWN_V4: &str = "known_v4";
    /// Known IPv6 pods: `ifname . ipv6_addr`.
    pub const KNOWN_V6: &str = "known_v6";
    /// Dropped IPv4 sources (block and proxy modes): `ifname . ipv4_addr`, dynamic,
    /// elements with a packet counter, expiring [`super::DROPPED_TIMEOUT_SECS`] after
    /// their last drop.
    pub const DROPPED_V4: &str = "dropped_v4";
    /// Dropped IPv6 sources: `ifname . ipv6_addr`.
    pub const DROPPED_V6: &str = "dropped_v6";
    /// Observed IPv4 connections (observe mode): `ifname . ipv4_addr . ipv4_addr .
    /// inet_proto . inet_service` (source pair, then the endpoint), dynamic, elements
    /// counting new connections, expiring like the dropped sources'.
    pub const OBSERVED_V4: &str = "observed_v4";
    /// Observed IPv6 connections: `ifname . ipv6_addr . ipv6_addr . inet_proto . inet_service`.
    pub const OBSERVED_V6: &str = "observed_v6";
    /// Proxy mode: the IPv4 endpoints redirected to the proxy.
    pub const PROXIED_V4: &str = "proxied_v4";
    /// Proxy mode: the IPv6 endpoints redirected to the proxy.
    pub const PROXIED_V6: &str = "proxied_v6";
}

/// Named counters (packets and bytes).
pub mod counter {
    /// Packets of allowlisted (interface, address) pairs to protected endpoints.
    pub const ALLOWED: &str = "allowed";
    /// Packets dropped (block mode, and in proxy mode what could not be redirected).
    pub const BLOCKED: &str = "blocked";
    /// Packets let through and logged (observe mode).
    pub const OBSERVED: &str = "observed";
    /// Connections redirected to the proxy (proxy mode; nat sees a connection's first packet).
    pub const PROXIED: &str = "proxied";
    /// Packets dropped because their (interface, address) pair is not a known pod's
    /// (proxy mode: a source the proxy would misidentify).
    pub const SPOOFED: &str = "spoofed";
    /// Packets a dry run let through that block or proxy mode would have dropped
    /// (`blocked` and `spoofed` together); zero outside a dry run.
    pub const WOULD_DROP: &str = "would_drop";
    /// Every counter, in the order they are created.
    pub const ALL: &[&str] = &[ALLOWED, BLOCKED, OBSERVED, PROXIED, SPOOFED, WOULD_DROP];
    /// The counters of dropped packets.
    pub const DROPS: &[&str] = &[BLOCKED, SPOOFED];
}
