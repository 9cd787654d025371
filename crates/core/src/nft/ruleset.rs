//! The table as a batch for `nft -j -f -`, built with the `nftables` crate's schema types
//! (`schema` objects, `expr` expressions, `stmt` statements: plain data, no IO) and
//! written as JSON at the end.
//!
//! Two objects are written with types of our own, because nftables 0.6's cannot say
//! them: a set whose elements carry a counter (`Set` has no `stmt`), and a named counter
//! with its values carried over (`Counter` holds 32-bit values, and byte counts pass
//! 4 GiB; it also writes `"bytes": null` when there is none).

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::expr::{CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::schema::{self, NfCmd, NfListObject, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{self, JumpTarget, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{Mode, NftConfigError, RulesetConfig};
use super::counters::CounterValue;
use super::pairs::{PairSet, SourcePair};
use super::{
    DNAT_PRIORITY, DROPPED_SET_SIZE, DROPPED_TIMEOUT_SECS, FILTER_PRIORITY, LOG_PREFIX_DROP,
    LOG_PREFIX_OBSERVE, LOG_PREFIX_SPOOF, LOG_PREFIX_WOULD_DROP, LOG_PREFIX_WOULD_SPOOF, TABLE,
    chain, counter, set,
};
use crate::target::{Protocol, Target};

/// The table's family as the schema names it ([`super::FAMILY`]).
pub(crate) const NF_FAMILY: NfFamily = NfFamily::INet;

/// A named counter object with 64-bit values (see the module's note).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NamedCounter {
    pub family: NfFamily,
    pub table: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// A set whose elements carry statements (`counter`), see the module's note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CountingSet {
    #[serde(flatten)]
    pub set: schema::Set<'static>,
    pub stmt: Vec<Statement<'static>>,
}

/// An object the schema's `NfListObject` cannot hold as we need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OwnObject {
    Set(CountingSet),
    Counter(NamedCounter),
}

/// One command of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum Command {
    /// Anything the schema holds whole.
    Nft(NfCmd<'static>),
    /// `add` of one of [`OwnObject`].
    Own { add: OwnObject },
}

/// Commands applied as one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    commands: Vec<Command>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn cmd(&mut self, command: NfCmd<'static>) {
        self.commands.push(Command::Nft(command));
    }

    pub fn add(&mut self, object: NfListObject<'static>) {
        self.cmd(NfCmd::Add(object));
    }

    fn add_own(&mut self, object: OwnObject) {
        self.commands.push(Command::Own { add: object });
    }

    fn chain(&mut self, name: &str, base: Option<(NfChainType, NfHook, i32)>) {
        let (kind, hook, prio) =
            base.map_or((None, None, None), |(k, h, p)| (Some(k), Some(h), Some(p)));
        self.add(NfListObject::Chain(schema::Chain {
            family: NF_FAMILY,
            table: TABLE.into(),
            name: name.to_owned().into(),
            _type: kind,
            hook,
            prio,
            policy: base.map(|_| NfChainPolicy::Accept),
            ..Default::default()
        }));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Statement<'static>>, comment: Option<String>) {
        self.add(NfListObject::Rule(schema::Rule {
            family: NF_FAMILY,
            table: TABLE.into(),
            chain: chain.to_owned().into(),
            expr: expr.into(),
            comment: comment.map(Cow::Owned),
            ..Default::default()
        }));
    }

    /// The batch as `nft -j -f -` reads it: `{"nftables": [...]}`.
    pub fn to_json(&self) -> Value {
        let commands: Vec<Value> = self
            .commands
            .iter()
            .map(|c| {
                // Plain data (strings, numbers, arrays, string-keyed objects): serializing
                // cannot fail.
                serde_json::to_value(c).expect("nftables schema values serialize to JSON")
            })
            .collect();
        serde_json::json!({ "nftables": commands })
    }
}

fn table() -> schema::Table<'static> {
    schema::Table {
        family: NF_FAMILY,
        name: TABLE.into(),
        handle: None,
    }
}

/// `a . b . c`
pub(crate) fn concat(parts: impl IntoIterator<Item = Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts.into_iter().collect()))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn set_ref(name: &str) -> Expression<'static> {
    Expression::String(format!("@{name}").into())
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(s.to_owned().into())
}

fn matches(
    op: Operator,
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn jump(target: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: target.to_owned().into(),
    })
}

fn named_counter(name: &'static str) -> Statement<'static> {
    Statement::Counter(stmt::Counter::Named(name.into()))
}

fn log(prefix: &'static str, group: u16) -> Statement<'static> {
    Statement::Log(Some(stmt::Log {
        prefix: Some(prefix.into()),
        group: Some(group.into()),
        ..stmt::Log::new(None)
    }))
}

/// `iifname "azv*" jump CHAIN`
fn pod_interface_jump(pattern: &str, target: &str) -> Vec<Statement<'static>> {
    vec![
        matches(Operator::EQ, meta(MetaKey::Iifname), text(pattern)),
        jump(target),
    ]
}

/// An `ifname . ipvN_addr` set (allow, known) holding `elems`.
pub(crate) fn pair_set(
    name: &str,
    addr_type: SetType,
    elems: Vec<Expression<'static>>,
) -> schema::Set<'static> {
    schema::Set {
        family: NF_FAMILY,
        table: TABLE.into(),
        name: name.to_owned().into(),
        set_type: SetTypeValue::Concatenated(vec![SetType::Ifname, addr_type].into()),
        elem: (!elems.is_empty()).then(|| elems.into()),
        ..Default::default()
    }
}

/// `elems` of the set `name`, for `add element` / `delete element`.
pub(crate) fn element_set(name: &str, elems: Vec<Expression<'static>>) -> schema::Element<'static> {
    schema::Element {
        family: NF_FAMILY,
        table: TABLE.into(),
        name: name.to_owned().into(),
        elem: elems.into(),
    }
}

pub(crate) fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The IPv4 or IPv6 flavour of the address-dependent parts.
#[derive(Clone, Copy)]
struct Family {
    /// `ip` or `ip6`.
    proto: &'static str,
    nat: NATFamily,
    addr_type: SetType,
    protected: &'static str,
    allow: &'static str,
    known: &'static str,
    dropped: &'static str,
    observed: &'static str,
    guard: &'static str,
    redirect: &'static str,
    proxied: &'static str,
}

const V4: Family = Family {
    proto: "ip",
    nat: NATFamily::IP,
    addr_type: SetType::Ipv4Addr,
    protected: set::PROTECTED_V4,
    allow: set::ALLOW_V4,
    known: set::KNOWN_V4,
    dropped: set::DROPPED_V4,
    observed: set::OBSERVED_V4,
    guard: chain::GUARD_V4,
    redirect: chain::REDIRECT_V4,
    proxied: set::PROXIED_V4,
};
const V6: Family = Family {
    proto: "ip6",
    nat: NATFamily::IP6,
    addr_type: SetType::Ipv6Addr,
    protected: set::PROTECTED_V6,
    allow: set::ALLOW_V6,
    known: set::KNOWN_V6,
    dropped: set::DROPPED_V6,
    observed: set::OBSERVED_V6,
    guard: chain::GUARD_V6,
    redirect: chain::REDIRECT_V6,
    proxied: set::PROXIED_V6,
};

impl Family {
    fn holds(self, ip: std::net::IpAddr) -> bool {
        ip.is_ipv4() == (self.proto == "ip")
    }

    /// `ip daddr . meta l4proto . th dport @SET`
    fn endpoints_match(self, set: &str) -> Statement<'static> {
        matches(
            Operator::EQ,
            concat([
                payload(self.proto, "daddr"),
                meta(MetaKey::L4proto),
                payload("th", "dport"),
            ]),
            set_ref(set),
        )
    }

    /// `iifname . ip saddr`
    fn source_pair(self) -> Expression<'static> {
        concat([meta(MetaKey::Iifname), payload(self.proto, "saddr")])
    }

    /// An endpoint set (`ipvN_addr . inet_proto . inet_service`) holding `targets` of this
    /// family.
    fn endpoint_set(self, name: &str, targets: &[Target]) -> schema::Set<'static> {
        let elems: Vec<Expression<'static>> = targets
            .iter()
            .filter(|t| self.holds(t.ip))
            .map(|t| {
                concat([
                    text(&t.ip.to_string()),
                    text(proto_name(t.protocol)),
                    Expression::Number(t.port.into()),
                ])
            })
            .collect();
        schema::Set {
            family: NF_FAMILY,
            table: TABLE.into(),
            name: name.to_owned().into(),
            set_type: SetTypeValue::Concatenated(
                vec![self.addr_type, SetType::InetProto, SetType::InetService].into(),
            ),
            elem: (!elems.is_empty()).then(|| elems.into()),
            ..Default::default()
        }
    }

    /// `iifname . ip saddr @allow_vN`
    fn allowed_match(self) -> Statement<'static> {
        matches(Operator::EQ, self.source_pair(), set_ref(self.allow))
    }

    /// `iifname . ip saddr @known_vN`
    fn known_match(self) -> Statement<'static> {
        matches(Operator::EQ, self.source_pair(), set_ref(self.known))
    }

    /// `iifname . ip saddr != @known_vN`
    fn unknown_match(self) -> Statement<'static> {
        matches(Operator::NEQ, self.source_pair(), set_ref(self.known))
    }

    /// `set dropped_vN { type ifname . ipvN_addr; flags dynamic,timeout; timeout 10m;
    /// size …; counter; }` (nft 1.0.6's JSON has no `dynamic` flag: a set a rule updates
    /// gets it anyway).
    fn dropped_set(self) -> CountingSet {
        CountingSet {
            set: schema::Set {
                flags: Some(HashSet::from([SetFlag::Timeout])),
                timeout: Some(DROPPED_TIMEOUT_SECS as u32),
                size: Some(DROPPED_SET_SIZE),
                ..pair_set(self.dropped, self.addr_type, Vec::new())
            },
            stmt: vec![Statement::Counter(stmt::Counter::Anonymous(None))],
        }
    }

    /// `update @dropped_vN { iifname . ip saddr }`
    fn record_dropped(self) -> Statement<'static> {
        Statement::Set(stmt::Set {
            op: stmt::SetOp::Update,
            elem: self.source_pair(),
            set: format!("@{}", self.dropped).into(),
        })
    }

    /// `set observed_vN { type ifname . ipvN_addr . ipvN_addr . inet_proto .
    /// inet_service; flags dynamic,timeout; timeout 10m; size …; counter; }`: the source
    /// pair and the endpoint of each connection observe mode let through.
    fn observed_set(self) -> CountingSet {
        CountingSet {
            set: schema::Set {
                family: NF_FAMILY,
                table: TABLE.into(),
                name: self.observed.into(),
                set_type: SetTypeValue::Concatenated(
                    vec![
                        SetType::Ifname,
                        self.addr_type,
                        self.addr_type,
                        SetType::InetProto,
                        SetType::InetService,
                    ]
                    .into(),
                ),
                flags: Some(HashSet::from([SetFlag::Timeout])),
                timeout: Some(DROPPED_TIMEOUT_SECS as u32),
                size: Some(DROPPED_SET_SIZE),
                ..Default::default()
            },
            stmt: vec![Statement::Counter(stmt::Counter::Anonymous(None))],
        }
    }

    /// `update @observed_vN { iifname . ip saddr . ip daddr . meta l4proto . th dport }`
    fn record_observed(self) -> Statement<'static> {
        Statement::Set(stmt::Set {
            op: stmt::SetOp::Update,
            elem: concat([
                meta(MetaKey::Iifname),
                payload(self.proto, "saddr"),
                payload(self.proto, "daddr"),
                meta(MetaKey::L4proto),
                payload("th", "dport"),
            ]),
            set: format!("@{}", self.observed).into(),
        })
    }
}

/// The whole table as one batch: `add table`, `delete table`, then the table rebuilt
/// with `allowed` in its allow sets, empty known sets, and the counters starting from
/// `counters` (so a restart does not lose them). `nft -j -f -` applies it as one
/// transaction: packets see either the old table or the new one, never none, and no
/// other table is touched. See [`ruleset_with_known`] for proxy mode's known pods.
pub fn ruleset(
    config: &RulesetConfig,
    allowed: &[SourcePair],
    counters: &[CounterValue],
) -> Result<Value, NftConfigError> {
    ruleset_with_known(config, allowed, &[], counters)
}

/// [`ruleset`] with `known` in the known sets: every pod the node hosts, as (interface,
/// address) pairs. In proxy mode only known pairs are redirected to the proxy, and
/// packets to a protected endpoint from any other pair are dropped (`spoofed`); with
/// no known pair, proxy mode sends nothing to the proxy. The other modes keep the sets
/// (so that a mode switch keeps them) but do not use them.
pub fn ruleset_with_known(
    config: &RulesetConfig,
    allowed: &[SourcePair],
    known: &[SourcePair],
    counters: &[CounterValue],
) -> Result<Value, NftConfigError> {
    Ok(build(config, allowed, known, counters)?.to_json())
}

fn build(
    config: &RulesetConfig,
    allowed: &[SourcePair],
    known: &[SourcePair],
    counters: &[CounterValue],
) -> Result<Batch, NftConfigError> {
    config.validate()?;
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.cmd(NfCmd::Delete(NfListObject::Table(table())));
    b.add(NfListObject::Table(table()));

    for name in counter::ALL {
        let carried = counters.iter().find(|c| c.name == *name);
        b.add_own(OwnObject::Counter(NamedCounter {
            family: NF_FAMILY,
            table: TABLE.into(),
            name: (*name).to_owned(),
            handle: None,
            packets: carried.map(|c| c.packets),
            bytes: carried.map(|c| c.bytes),
        }));
    }

    for fam in [V4, V6] {
        b.add(NfListObject::Set(Box::new(
            fam.endpoint_set(fam.protected, &config.protected),
        )));
        for (kind, name, pairs) in [
            (PairSet::Allow, fam.allow, allowed),
            (PairSet::Known, fam.known, known),
        ] {
            let elems = pairs
                .iter()
                .filter(|p| p.set_name(kind) == name)
                .map(SourcePair::element)
                .collect();
            b.add(NfListObject::Set(Box::new(pair_set(
                name,
                fam.addr_type,
                elems,
            ))));
        }
        b.add_own(OwnObject::Set(fam.dropped_set()));
        b.add_own(OwnObject::Set(fam.observed_set()));
    }

    // Filter: forward (routed pod traffic) and input (an endpoint held by the node).
    b.chain(chain::POD_EGRESS, None);
    for fam in [V4, V6] {
        b.chain(fam.guard, None);
    }
    for (name, hook) in [
        (chain::FORWARD, NfHook::Forward),
        (chain::INPUT, NfHook::Input),
    ] {
        b.chain(name, Some((NfChainType::Filter, hook, FILTER_PRIORITY)));
        for pattern in &config.pod_interfaces {
            b.rule(
                name,
                pod_interface_jump(pattern, chain::POD_EGRESS),
                Some(format!("imdsguard: pod interfaces {pattern}")),
            );
        }
    }
    for fam in [V4, V6] {
        b.rule(
            chain::POD_EGRESS,
            vec![fam.endpoints_match(fam.protected), jump(fam.guard)],
            None,
        );
        b.rule(
            fam.guard,
            vec![
                fam.allowed_match(),
                named_counter(counter::ALLOWED),
                Statement::Accept(None),
            ],
            Some("imdsguard: allowlisted interface and address".into()),
        );
        let limit = Statement::Limit(stmt::Limit {
            rate: config.log.rate_per_second,
            rate_unit: None,
            per: Some("second".into()),
            burst: Some(config.log.burst),
            burst_unit: None,
            inv: None,
        });
        let marker = Some(config.mode_marker());
        // A dry run accepts what the mode would drop, counted apart and logged as such.
        let (drop_verdict, blocked, spoofed, drop_prefix, spoof_prefix) = if config.dry_run {
            (
                Statement::Accept(None),
                counter::WOULD_DROP,
                counter::WOULD_DROP,
                LOG_PREFIX_WOULD_DROP,
                LOG_PREFIX_WOULD_SPOOF,
            )
        } else {
            (
                Statement::Drop(None),
                counter::BLOCKED,
                counter::SPOOFED,
                LOG_PREFIX_DROP,
                LOG_PREFIX_SPOOF,
            )
        };
        if config.mode != Mode::Observe {
            // Everything past the allow rule is dropped (a dry run: would be): record
            // who. A rule of its own, so that a failed update (full set) cannot skip the
            // verdict.
            b.rule(
                fam.guard,
                vec![fam.record_dropped()],
                Some("imdsguard: record the dropped source".into()),
            );
        }
        if config.mode == Mode::Proxy {
            // The proxy knows callers by address: a pair that is not a known pod's was
            // not redirected (see below) and must not reach the endpoint either.
            b.rule(
                fam.guard,
                vec![
                    fam.unknown_match(),
                    limit.clone(),
                    log(spoof_prefix, config.log.group),
                ],
                None,
            );
            b.rule(
                fam.guard,
                vec![
                    fam.unknown_match(),
                    named_counter(spoofed),
                    drop_verdict.clone(),
                ],
                Some(if config.dry_run {
                    "imdsguard: unknown interface and address (dry run: let through)".into()
                } else {
                    "imdsguard: unknown interface and address".into()
                }),
            );
        }
        match config.mode {
            Mode::Block | Mode::Proxy => {
                b.rule(
                    fam.guard,
                    vec![limit, log(drop_prefix, config.log.group)],
                    None,
                );
                b.rule(
                    fam.guard,
                    vec![named_counter(blocked), drop_verdict],
                    marker,
                );
            }
            Mode::Observe => {
                let ct_state = Expression::Named(NamedExpression::CT(CT {
                    key: "state".into(),
                    family: None,
                    dir: None,
                }));
                let new = matches(Operator::IN, ct_state, text("new"));
                // Who connected to which endpoint, counted per connection. A rule of
                // its own, so that a full set never skips the log or the accept.
                b.rule(
                    fam.guard,
                    vec![new.clone(), fam.record_observed()],
                    Some("imdsguard: record the observed connection".into()),
                );
                b.rule(
                    fam.guard,
                    vec![new, limit, log(LOG_PREFIX_OBSERVE, config.log.group)],
                    None,
                );
                b.rule(
                    fam.guard,
                    vec![named_counter(counter::OBSERVED), Statement::Accept(None)],
                    marker,
                );
            }
        }
    }

    // Proxy mode: redirect before routing, so the connection goes to the local proxy
    // (input) instead of being routed to the endpoint (forward, where it would be dropped).
    if config.mode == Mode::Proxy {
        let redirects: Vec<(Family, String, u16)> = [
            config.proxy_v4.map(|a| (V4, a.ip().to_string(), a.port())),
            config.proxy_v6.map(|a| (V6, a.ip().to_string(), a.port())),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (fam, _, _) in &redirects {
            b.add(NfListObject::Set(Box::new(
                fam.endpoint_set(fam.proxied, &config.proxied),
            )));
        }
        b.chain(chain::POD_REDIRECT, None);
        for (fam, _, _) in &redirects {
            b.chain(fam.redirect, None);
        }
        b.chain(
            chain::PREROUTING,
            Some((NfChainType::NAT, NfHook::Prerouting, DNAT_PRIORITY)),
        );
        for pattern in &config.pod_interfaces {
            b.rule(
                chain::PREROUTING,
                pod_interface_jump(pattern, chain::POD_REDIRECT),
                Some(format!("imdsguard: pod interfaces {pattern}")),
            );
        }
        for (fam, addr, port) in &redirects {
            b.rule(
                chain::POD_REDIRECT,
                vec![fam.endpoints_match(fam.proxied), jump(fam.redirect)],
                None,
            );
            b.rule(
                fam.redirect,
                vec![fam.allowed_match(), Statement::Return(None)],
                Some("imdsguard: allowlisted interface and address go direct".into()),
            );
            b.rule(
                fam.redirect,
                vec![
                    fam.known_match(),
                    matches(Operator::EQ, meta(MetaKey::L4proto), text("tcp")),
                    named_counter(counter::PROXIED),
                    Statement::DNAT(Some(NAT {
                        addr: Some(text(addr)),
                        family: Some(fam.nat),
                        port: Some(Expression::Number((*port).into())),
                        flags: None,
                    })),
                ],
                Some(config.mode_marker()),
            );
        }
    }
    Ok(b)
}

/// Removes the table if it is there (`add table` then `delete table`, one transaction,
/// so it never fails for a missing table). Other tables are left alone.
pub fn delete_table() -> Value {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.cmd(NfCmd::Delete(NfListObject::Table(table())));
    b.to_json()
}

#[cfg(test)]
mod comment_tests {
    use super::*;
    use crate::nft::host::COMMENT_MAX;
    use crate::target::Cloud;

    /// Every `"comment"` string anywhere in `v`.
    fn comments<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("comment", Value::String(s)) => out.push(s),
                        _ => comments(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| comments(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_comment_fits_in_128_bytes() {
        // nft refuses comments over 128 characters (as in the host table); the main
        // table's are fixed words and the interface patterns (at most 15 characters).
        for mode in [Mode::Block, Mode::Proxy, Mode::Observe] {
            for dry_run in [false, true] {
                if dry_run && mode == Mode::Observe {
                    continue;
                }
                let mut c = RulesetConfig::new(mode, &[Cloud::Azure, Cloud::Aws, Cloud::Gcp]);
                c.dry_run = dry_run;
                c.pod_interfaces = vec!["abcdefghijklmn*".into(), "abcdefghijklmno".into()];
                c.proxy_v4 = Some("10.224.0.4:8169".parse().unwrap());
                c.proxy_v6 = Some(
                    "[fd00:ec2:ffff:ffff:ffff:ffff:ffff:fffe]:65535"
                        .parse()
                        .unwrap(),
                );
                let pair =
                    SourcePair::new("abcdefghijklmno", "10.244.0.7".parse().unwrap()).unwrap();
                let batch = ruleset_with_known(
                    &c,
                    std::slice::from_ref(&pair),
                    std::slice::from_ref(&pair),
                    &[],
                )
                .unwrap();
                let mut all = Vec::new();
                comments(&batch, &mut all);
                assert!(all.len() > 5, "{mode}: {all:?}");
                for comment in all {
                    assert!(
                        comment.len() <= COMMENT_MAX,
                        "{mode} dry_run={dry_run}: {comment}"
                    );
                }
            }
        }
    }
}
