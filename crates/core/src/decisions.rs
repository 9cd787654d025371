//! Decision logs read back: what enforcing the access rules would break.
//!
//! The filtering proxy writes one decision record per request (target
//! `imdsguard::decision`, see `docs/proxy.md`). In a dry run a request the rules deny is
//! forwarded and recorded as `would-deny`; an enforcing proxy records it as `deny`. This
//! module reads such logs back and adds up, per workload, every request that enforcing
//! refuses (`deny` and `would-deny`): which endpoint, path, token audience and identity,
//! how often, first and last seen, and the rule that came closest (the one the deny
//! body names). `imdsguard report` prints the result.
//!
//! The node agent's logs are read too: its table drops packets (block mode; proxy mode
//! for what it does not proxy, such as WireServer, and for unknown sources), and in a
//! dry run lets them through, and it names them per pod in a drop record (target
//! [`DROP_TARGET`], message [`DROP_MESSAGE`] or, in a dry run, [`WOULD_DROP_MESSAGE`];
//! fields `pod`, `namespace`, `packets`, `matched_by`, and `interface` and `address`,
//! or `host_network` and `cgroup` for a hostNetwork pod). They are added up per workload
//! as well, apart from the requests ([`Report::drops`]): packets dropped and that would
//! be dropped, first and last seen, how the pod was matched; sources no pod has by
//! interface and address (or pod cgroup).
//!
//! Two line shapes are read (both JSON objects, one a line):
//!
//! - what `imdsguard proxy --log-format json` writes, which is also what
//!   `tracing-subscriber`'s JSON formatter writes for the `tracing` event (so what
//!   `imdsguard agent run --log-format json` writes):
//!   `{"timestamp":"…","level":"INFO","fields":{"message":"decision",…},"target":"imdsguard::decision"}`;
//! - the same with the event's fields at the top level (the formatter's
//!   `flatten_event`).
//!
//! A line may carry one prefix before its JSON object, separated by a space, such as
//! `kubectl logs --timestamps`' time or a container runtime's log file's
//! `TIME stderr F`. Every other line (text log lines, JSON log lines of other events)
//! is skipped and counted; a line that starts like a JSON object but is not one, or a
//! decision or drop record that lacks a field, is malformed: counted, kept with its line
//! number (the first [`MAX_MALFORMED_KEPT`]), never fatal. A line longer than
//! [`MAX_LINE`] bytes is malformed and never held whole in memory.
//!
//! Nothing here does IO: the caller hands the bytes of each input to [`DecisionLog`]
//! in chunks of any size ([`DecisionLog::begin`], [`DecisionLog::feed`],
//! [`DecisionLog::end`]) and takes a [`Report`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Map, Value};

/// The `tracing` target of decision records.
pub const DECISION_TARGET: &str = "imdsguard::decision";

/// The `tracing` target of the node agent's drop records.
pub const DROP_TARGET: &str = "imdsguard::drops";

/// The message of a drop record: the agent's table dropped the packets.
pub const DROP_MESSAGE: &str = "metadata access dropped";

/// The message of a dry run's would-drop record: the agent's table let the packets
/// through; enforcing would have dropped them.
pub const WOULD_DROP_MESSAGE: &str = "metadata access would be dropped (dry run: let through)";

/// Longest line read, in bytes (a decision record is well under 2 KiB); a longer line
/// is malformed and its bytes are dropped as they come.
pub const MAX_LINE: usize = 64 * 1024;

/// Most malformed lines kept in the report (all are counted).
pub const MAX_MALFORMED_KEPT: usize = 100;

/// Reads decision logs and adds up what enforcing would break.
#[derive(Debug, Default)]
pub struct DecisionLog {
    source: String,
    line_no: u64,
    buf: Vec<u8>,
    overlong: bool,
    seq: u64,
    lines: LineCounts,
    totals: Totals,
    workloads: BTreeMap<CallerKey, WorkloadAcc>,
    drop_totals: DropTotals,
    drops: BTreeMap<DropKey, DropsAcc>,
    malformed: Vec<Malformed>,
}

/// How the lines read were classified. `read` = `decisions` + `drops` + `skipped` +
/// `malformed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LineCounts {
    /// Lines read.
    pub read: u64,
    /// Decision records.
    pub decisions: u64,
    /// The agent's drop and would-drop records.
    pub drops: u64,
    /// Other lines: blank, text, JSON log lines of other events.
    pub skipped: u64,
    /// Lines that are not what they start as (JSON objects), decision and drop records
    /// without a field, and lines over [`MAX_LINE`] bytes.
    pub malformed: u64,
    /// Of the skipped lines, those that look like text-format decision records (they name
    /// `imdsguard::decision`): the proxy was not run with `--log-format json`.
    pub text_decisions: u64,
    /// Of the skipped lines, those that look like text-format drop records (they name
    /// `imdsguard::drops` and no decision): the agent was not run with `--log-format
    /// json`.
    pub text_drops: u64,
}

/// Decision records by decision. `records` is the sum of the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Decision records read.
    pub records: u64,
    /// `allow`.
    pub allow: u64,
    /// `would-deny`: denied by the rules, forwarded by a dry run.
    pub would_deny: u64,
    /// `deny`.
    pub deny: u64,
    /// `invalid`: IMDS's own 400/404/405, the same with or without the rules.
    pub invalid: u64,
    /// `throttled`: over the pod's rate.
    pub throttled: u64,
    /// `upstream-error`.
    pub upstream_error: u64,
    /// Any other decision.
    pub other: u64,
}

/// The agent's drop records. `records` = `dropped_records` + `would_drop_records`;
/// packet counts stop at `u64::MAX`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DropTotals {
    /// Drop and would-drop records read.
    pub records: u64,
    /// Records of packets the table dropped ([`DROP_MESSAGE`]).
    pub dropped_records: u64,
    /// Records of packets a dry run let through ([`WOULD_DROP_MESSAGE`]).
    pub would_drop_records: u64,
    /// Packets dropped.
    pub dropped_packets: u64,
    /// Packets that would have been dropped (dry run).
    pub would_drop_packets: u64,
}

/// A malformed line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Malformed {
    /// The input it was read from, as given to [`DecisionLog::begin`].
    pub source: String,
    /// Its line number (from 1).
    pub line: u64,
    /// What is wrong with it.
    pub error: String,
}

/// What enforcing would break, and what was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// No `deny` or `would-deny` record, and no drop or would-drop record, was read.
    pub nothing_would_break: bool,
    /// The lines read.
    pub lines: LineCounts,
    /// The decision records read.
    pub totals: Totals,
    /// Callers with refused requests: pods by namespace and workload, then unknown
    /// callers by address.
    pub workloads: Vec<Workload>,
    /// The agent's drop and would-drop records.
    pub drop_totals: DropTotals,
    /// What the agent's table dropped or would drop: pods by namespace and workload
    /// (grouped as [`Report::workloads`]), then sources no pod has by address and
    /// interface, then sockets in pod cgroups no pod has by cgroup.
    pub drops: Vec<Drops>,
    /// The first [`MAX_MALFORMED_KEPT`] malformed lines, in input order.
    pub malformed: Vec<Malformed>,
}

/// Who called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallerKind {
    /// A pod the proxy knew (by address, or a hostNetwork pod by its cgroup).
    Pod,
    /// No pod the proxy knew (`pod` `-`): grouped by source address.
    Unknown,
}

/// One caller's refused requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// A pod, or an unknown caller.
    pub caller: CallerKind,
    /// The pods' namespace (`-` for an unknown caller).
    pub namespace: String,
    /// The workload: the pod name without the suffix its controller generates (see
    /// [`workload_name`]); for an unknown caller its source address.
    pub workload: String,
    /// For an unknown caller on the proxy's own host, its socket's cgroup v2 id (a
    /// process in a pod's cgroup that no known pod owns, or a node process); unknown
    /// callers are grouped by address and cgroup.
    pub cgroup_id: Option<u64>,
    /// The pods' names seen, sorted (none for an unknown caller).
    pub pods: Vec<String>,
    /// The source addresses seen, sorted.
    pub peers: Vec<String>,
    /// The service accounts seen, sorted (none for an unknown caller).
    pub service_accounts: Vec<String>,
    /// Whether a record said the caller uses the node's network.
    pub host_network: bool,
    /// Refused requests (`deny` and `would-deny`).
    pub count: u64,
    /// Per endpoint, path, audience and identity, sorted by them.
    pub requests: Vec<Request>,
}

/// What the agent's table dropped, or would drop in a dry run, of one workload or one
/// unknown source. The agent's records name no endpoint and count packets (a refused
/// connection is one or more SYNs), not requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// A pod, or a source no pod has.
    pub caller: CallerKind,
    /// The pods' namespace (`-` for an unknown source).
    pub namespace: String,
    /// The workload, as in [`Workload::workload`]; for an unknown source its address
    /// (as the record wrote it), or for sockets in a pod cgroup no known pod has, the
    /// cgroup.
    pub workload: String,
    /// The pods' names seen, sorted (none for an unknown source).
    pub pods: Vec<String>,
    /// Whether the packets came from the node's network (a hostNetwork pod, or a
    /// socket in a pod cgroup), matched by their sockets' cgroup.
    pub host_network: bool,
    /// The interfaces the packets entered the node on, sorted.
    pub interfaces: Vec<String>,
    /// The source addresses, sorted.
    pub addresses: Vec<String>,
    /// The pod cgroups (hostNetwork pods), sorted.
    pub cgroups: Vec<String>,
    /// How the agent matched the packets to the pod (`pair`, `interface`, `unknown`,
    /// `cgroup`, `unknown-pod-cgroup`), sorted.
    pub matched_by: Vec<String>,
    /// Drop records read.
    pub records: u64,
    /// Packets, `dropped` + `would_drop` (stops at `u64::MAX`).
    pub packets: u64,
    /// Packets the table dropped.
    pub dropped: u64,
    /// Packets a dry run let through that enforcing would drop.
    pub would_drop: u64,
    /// The earliest record's timestamp, as written (none when no record had one).
    pub first_seen: Option<String>,
    /// The latest record's timestamp, as written.
    pub last_seen: Option<String>,
}

/// The refused requests of one caller for one endpoint, path, audience and identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// The metadata endpoint (`identity-token`, `instance`, …).
    pub endpoint: String,
    /// The canonical path.
    pub path: String,
    /// A token request's `resource` (audience).
    pub resource: Option<String>,
    /// A token request's identity selector (`client_id=…`; none for the default).
    pub identity: Option<String>,
    /// Refused requests (`deny` + `would_deny`).
    pub count: u64,
    /// Of them, `would-deny` (dry run).
    pub would_deny: u64,
    /// Of them, `deny`.
    pub deny: u64,
    /// The earliest record's timestamp, as written (none when no record had one).
    pub first_seen: Option<String>,
    /// The latest record's timestamp, as written.
    pub last_seen: Option<String>,
    /// The rule of the latest record: the rule that came closest to allowing it (the
    /// one the 403 names), or `default-deny`, `unknown-source`, ….
    pub rule: String,
    /// The latest record's reason.
    pub reason: Option<String>,
    /// Other rules earlier records named (the rules changed while the log was written),
    /// sorted.
    pub other_rules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum CallerKey {
    Pod {
        namespace: String,
        workload: String,
    },
    Unknown {
        addr: Option<IpAddr>,
        peer: String,
        cgroup: Option<u64>,
    },
}

/// Who the agent's packets came from. Unknown sources are ordered by address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum DropKey {
    Pod {
        namespace: String,
        workload: String,
    },
    UnknownSource {
        addr: Option<IpAddr>,
        address: String,
        interface: String,
    },
    UnknownCgroup {
        cgroup: String,
    },
}

#[derive(Debug, Default)]
struct DropsAcc {
    pods: BTreeSet<String>,
    host_network: bool,
    interfaces: BTreeSet<String>,
    addresses: BTreeSet<String>,
    cgroups: BTreeSet<String>,
    matched_by: BTreeSet<String>,
    records: u64,
    dropped: u64,
    would_drop: u64,
    first: Option<(i128, String)>,
    last: Option<(i128, String)>,
}

#[derive(Debug, Default)]
struct WorkloadAcc {
    pods: BTreeSet<String>,
    peers: BTreeSet<String>,
    service_accounts: BTreeSet<String>,
    host_network: bool,
    count: u64,
    requests: BTreeMap<RequestKey, RequestAcc>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RequestKey {
    endpoint: String,
    path: String,
    resource: Option<String>,
    identity: Option<String>,
}

#[derive(Debug)]
struct RequestAcc {
    would_deny: u64,
    deny: u64,
    first: Option<(i128, String)>,
    last: Option<(i128, String)>,
    /// (timestamp, input order) of the record whose rule and reason are kept.
    latest: (Option<i128>, u64),
    rule: String,
    reason: Option<String>,
    rules: BTreeSet<String>,
}

/// One decision record's fields.
struct Record<'a> {
    time: Option<(i128, &'a str)>,
    peer: &'a str,
    pod: &'a str,
    namespace: Option<&'a str>,
    service_account: Option<&'a str>,
    path: &'a str,
    endpoint: &'a str,
    decision: &'a str,
    rule: &'a str,
    reason: Option<&'a str>,
    resource: Option<&'a str>,
    identity: Option<&'a str>,
    host_network: bool,
    cgroup: Option<u64>,
}

/// One drop record's fields.
struct DropRecord<'a> {
    time: Option<(i128, &'a str)>,
    would_drop: bool,
    pod: &'a str,
    namespace: &'a str,
    packets: u64,
    host_network: bool,
    cgroup: Option<&'a str>,
    interface: Option<&'a str>,
    address: Option<&'a str>,
    matched_by: Option<&'a str>,
}

/// A record a log line holds.
enum Entry<'a> {
    Decision(Record<'a>),
    Drop(DropRecord<'a>),
}

impl DecisionLog {
    /// An empty log.
    pub fn new() -> DecisionLog {
        DecisionLog::default()
    }

    /// Starts reading the input named `source` (ending the one before, if any); line
    /// numbers start again at 1.
    pub fn begin(&mut self, source: &str) {
        self.end();
        self.source.clear();
        self.source.push_str(source);
        self.line_no = 0;
    }

    /// The next bytes of the current input; lines may be split across calls anywhere.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                Some(i) => {
                    if self.buf.is_empty() && !self.overlong {
                        // The whole line is here: no copy.
                        let line = &bytes[..i];
                        if line.len() > MAX_LINE {
                            self.overlong = true;
                            self.finish_line();
                        } else {
                            self.line(line);
                        }
                    } else {
                        self.push_part(&bytes[..i]);
                        self.finish_line();
                    }
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.push_part(bytes);
                    break;
                }
            }
        }
    }

    /// Ends the current input: a last line without a newline is read.
    pub fn end(&mut self) {
        if !self.buf.is_empty() || self.overlong {
            self.finish_line();
        }
    }

    /// Reads a whole input given as text ([`DecisionLog::begin`], [`DecisionLog::feed`],
    /// [`DecisionLog::end`]).
    pub fn read(&mut self, source: &str, text: &[u8]) {
        self.begin(source);
        self.feed(text);
        self.end();
    }

    /// The lines read so far.
    pub fn lines(&self) -> LineCounts {
        self.lines
    }

    /// What was read so far, added up (a line not yet ended is not in it).
    pub fn report(&self) -> Report {
        let workloads = self
            .workloads
            .iter()
            .map(|(key, w)| {
                let (caller, namespace, workload, cgroup_id) = match key {
                    CallerKey::Pod {
                        namespace,
                        workload,
                    } => (CallerKind::Pod, namespace.clone(), workload.clone(), None),
                    CallerKey::Unknown { peer, cgroup, .. } => {
                        (CallerKind::Unknown, "-".to_string(), peer.clone(), *cgroup)
                    }
                };
                Workload {
                    caller,
                    namespace,
                    workload,
                    cgroup_id,
                    pods: w.pods.iter().cloned().collect(),
                    peers: w.peers.iter().cloned().collect(),
                    service_accounts: w.service_accounts.iter().cloned().collect(),
                    host_network: w.host_network,
                    count: w.count,
                    requests: w
                        .requests
                        .iter()
                        .map(|(k, r)| Request {
                            endpoint: k.endpoint.clone(),
                            path: k.path.clone(),
                            resource: k.resource.clone(),
                            identity: k.identity.clone(),
                            count: r.would_deny + r.deny,
                            would_deny: r.would_deny,
                            deny: r.deny,
                            first_seen: r.first.as_ref().map(|f| f.1.clone()),
                            last_seen: r.last.as_ref().map(|l| l.1.clone()),
                            rule: r.rule.clone(),
                            reason: r.reason.clone(),
                            other_rules: r
                                .rules
                                .iter()
                                .filter(|n| **n != r.rule)
                                .cloned()
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect();
        let drops = self
            .drops
            .iter()
            .map(|(key, d)| {
                let (caller, namespace, workload) = match key {
                    DropKey::Pod {
                        namespace,
                        workload,
                    } => (CallerKind::Pod, namespace.clone(), workload.clone()),
                    DropKey::UnknownSource { address, .. } => {
                        (CallerKind::Unknown, "-".to_string(), address.clone())
                    }
                    DropKey::UnknownCgroup { cgroup } => {
                        (CallerKind::Unknown, "-".to_string(), cgroup.clone())
                    }
                };
                let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
                Drops {
                    caller,
                    namespace,
                    workload,
                    pods: list(&d.pods),
                    host_network: d.host_network,
                    interfaces: list(&d.interfaces),
                    addresses: list(&d.addresses),
                    cgroups: list(&d.cgroups),
                    matched_by: list(&d.matched_by),
                    records: d.records,
                    packets: d.dropped.saturating_add(d.would_drop),
                    dropped: d.dropped,
                    would_drop: d.would_drop,
                    first_seen: d.first.as_ref().map(|f| f.1.clone()),
                    last_seen: d.last.as_ref().map(|l| l.1.clone()),
                }
            })
            .collect();
        Report {
            nothing_would_break: self.totals.deny == 0
                && self.totals.would_deny == 0
                && self.drop_totals.records == 0,
            lines: self.lines,
            totals: self.totals,
            workloads,
            drop_totals: self.drop_totals,
            drops,
            malformed: self.malformed.clone(),
        }
    }

    fn push_part(&mut self, part: &[u8]) {
        if self.overlong {
            return;
        }
        if self.buf.len() + part.len() > MAX_LINE {
            self.overlong = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    fn finish_line(&mut self) {
        if self.overlong {
            self.overlong = false;
            self.line_no += 1;
            self.lines.read += 1;
            self.malformed(format!("line longer than {MAX_LINE} bytes"));
        } else {
            let buf = std::mem::take(&mut self.buf);
            self.line(&buf);
            self.buf = buf;
            self.buf.clear();
        }
    }

    fn malformed(&mut self, error: String) {
        self.lines.malformed += 1;
        if self.malformed.len() < MAX_MALFORMED_KEPT {
            self.malformed.push(Malformed {
                source: self.source.clone(),
                line: self.line_no,
                error,
            });
        }
    }

    /// One line, without its newline.
    fn line(&mut self, line: &[u8]) {
        self.line_no += 1;
        self.lines.read += 1;
        let value = match classify(line) {
            Classified::Skipped(text) => return self.skipped(text),
            Classified::Malformed(e) => return self.malformed(e),
            Classified::Object(v) => v,
        };
        match entry(&value) {
            Ok(None) => self.skipped(None),
            Err(e) => self.malformed(e),
            Ok(Some(Entry::Decision(rec))) => {
                self.lines.decisions += 1;
                self.seq += 1;
                self.add(&rec);
            }
            Ok(Some(Entry::Drop(rec))) => {
                self.lines.drops += 1;
                self.add_drop(&rec);
            }
        }
    }

    fn skipped(&mut self, text: Option<TextRecord>) {
        self.lines.skipped += 1;
        match text {
            Some(TextRecord::Decision) => self.lines.text_decisions += 1,
            Some(TextRecord::Drop) => self.lines.text_drops += 1,
            None => {}
        }
    }

    fn add_drop(&mut self, rec: &DropRecord<'_>) {
        let t = &mut self.drop_totals;
        t.records += 1;
        if rec.would_drop {
            t.would_drop_records += 1;
            t.would_drop_packets = t.would_drop_packets.saturating_add(rec.packets);
        } else {
            t.dropped_records += 1;
            t.dropped_packets = t.dropped_packets.saturating_add(rec.packets);
        }
        // The agent names a pod's namespace; a source no pod has has none.
        let key = if !rec.namespace.is_empty() {
            DropKey::Pod {
                namespace: rec.namespace.to_string(),
                workload: workload_name(rec.pod).to_string(),
            }
        } else if let Some(cgroup) = rec.cgroup {
            DropKey::UnknownCgroup {
                cgroup: cgroup.to_string(),
            }
        } else {
            let address = rec.address.unwrap_or("-");
            DropKey::UnknownSource {
                addr: list(address).next().and_then(|a| a.parse().ok()),
                address: address.to_string(),
                interface: rec.interface.unwrap_or("-").to_string(),
            }
        };
        let pod = !rec.namespace.is_empty();
        let d = self.drops.entry(key).or_default();
        d.records += 1;
        if rec.would_drop {
            d.would_drop = d.would_drop.saturating_add(rec.packets);
        } else {
            d.dropped = d.dropped.saturating_add(rec.packets);
        }
        d.host_network |= rec.host_network || rec.cgroup.is_some();
        let insert = |set: &mut BTreeSet<String>, item: &str| {
            if !set.contains(item) {
                set.insert(item.to_string());
            }
        };
        if pod {
            insert(&mut d.pods, rec.pod);
        }
        for i in rec.interface.into_iter().flat_map(list) {
            insert(&mut d.interfaces, i);
        }
        for a in rec.address.into_iter().flat_map(list) {
            insert(&mut d.addresses, a);
        }
        if let Some(c) = rec.cgroup {
            insert(&mut d.cgroups, c);
        }
        if let Some(m) = rec.matched_by {
            insert(&mut d.matched_by, m);
        }
        if let Some((at, text)) = rec.time {
            if d.first.as_ref().is_none_or(|f| at < f.0) {
                d.first = Some((at, text.to_string()));
            }
            if d.last.as_ref().is_none_or(|l| at >= l.0) {
                d.last = Some((at, text.to_string()));
            }
        }
    }

    fn add(&mut self, rec: &Record<'_>) {
        let t = &mut self.totals;
        t.records += 1;
        let (count, would) = match rec.decision {
            "allow" => (&mut t.allow, None),
            "invalid" => (&mut t.invalid, None),
            "throttled" => (&mut t.throttled, None),
            "upstream-error" => (&mut t.upstream_error, None),
            "deny" => (&mut t.deny, Some(false)),
            "would-deny" => (&mut t.would_deny, Some(true)),
            _ => (&mut t.other, None),
        };
        *count += 1;
        let Some(would) = would else { return };
        let pod = (rec.pod != "-").then(|| {
            let (ns, name) = match rec.pod.split_once('/') {
                Some((ns, name)) => (rec.namespace.filter(|n| *n != "-").unwrap_or(ns), name),
                None => (rec.namespace.unwrap_or("-"), rec.pod),
            };
            (ns, name)
        });
        let key = match pod {
            Some((namespace, name)) => CallerKey::Pod {
                namespace: namespace.to_string(),
                workload: workload_name(name).to_string(),
            },
            None => CallerKey::Unknown {
                addr: rec.peer.parse().ok(),
                peer: rec.peer.to_string(),
                cgroup: rec.cgroup,
            },
        };
        let w = self.workloads.entry(key).or_default();
        w.count += 1;
        w.host_network |= rec.host_network;
        if let Some((_, name)) = pod {
            if !w.pods.contains(name) {
                w.pods.insert(name.to_string());
            }
            if let Some(sa) = rec.service_account.filter(|s| *s != "-")
                && !w.service_accounts.contains(sa)
            {
                w.service_accounts.insert(sa.to_string());
            }
        }
        if !w.peers.contains(rec.peer) {
            w.peers.insert(rec.peer.to_string());
        }
        let key = RequestKey {
            endpoint: rec.endpoint.to_string(),
            path: rec.path.to_string(),
            resource: rec.resource.map(str::to_string),
            identity: rec.identity.map(str::to_string),
        };
        let order = (rec.time.map(|t| t.0), self.seq);
        let r = w.requests.entry(key).or_insert_with(|| RequestAcc {
            would_deny: 0,
            deny: 0,
            first: None,
            last: None,
            latest: order,
            rule: rec.rule.to_string(),
            reason: rec.reason.map(str::to_string),
            rules: BTreeSet::new(),
        });
        if would {
            r.would_deny += 1;
        } else {
            r.deny += 1;
        }
        if let Some((at, text)) = rec.time {
            if r.first.as_ref().is_none_or(|f| at < f.0) {
                r.first = Some((at, text.to_string()));
            }
            if r.last.as_ref().is_none_or(|l| at >= l.0) {
                r.last = Some((at, text.to_string()));
            }
        }
        if order >= r.latest {
            r.latest = order;
            if r.rule != rec.rule {
                r.rule = rec.rule.to_string();
            }
            r.reason = rec.reason.map(str::to_string);
        }
        if !r.rules.contains(rec.rule) {
            r.rules.insert(rec.rule.to_string());
        }
    }
}

/// The items of a comma-separated field (the agent's `interface` and `address` of a
/// pod with several sources), without empty ones.
fn list(field: &str) -> impl Iterator<Item = &str> {
    field.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// What a skipped text line looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextRecord {
    /// It names `imdsguard::decision`.
    Decision,
    /// It names `imdsguard::drops` (and not `imdsguard::decision`).
    Drop,
}

enum Classified {
    Skipped(Option<TextRecord>),
    Malformed(String),
    Object(Map<String, Value>),
}

/// A line as a JSON object, or why it is not one.
fn classify(line: &[u8]) -> Classified {
    let line = line.trim_ascii();
    let text = || {
        let names = |target: &str| memchr::memmem::find(line, target.as_bytes()).is_some();
        if names(DECISION_TARGET) {
            Some(TextRecord::Decision)
        } else if names(DROP_TARGET) {
            Some(TextRecord::Drop)
        } else {
            None
        }
    };
    if line.is_empty() {
        return Classified::Skipped(None);
    }
    // The JSON object: the whole line, or what follows one prefix that ends with a
    // space or tab (a time, a container runtime's `TIME stream tag`).
    let (json, prefixed) = if line[0] == b'{' {
        (line, false)
    } else {
        match memchr::memchr(b'{', line) {
            Some(at) if matches!(line[at - 1], b' ' | b'\t') => (&line[at..], true),
            _ => return Classified::Skipped(text()),
        }
    };
    match serde_json::from_slice::<Map<String, Value>>(json) {
        Ok(map) => Classified::Object(map),
        // A text line with a brace in it.
        Err(_) if prefixed => Classified::Skipped(text()),
        Err(e) => Classified::Malformed(format!("not a JSON object: {e}")),
    }
}

/// The record a log line's object holds, if it is a decision or drop record; an error
/// says what is wrong with one.
fn entry(obj: &Map<String, Value>) -> Result<Option<Entry<'_>>, String> {
    let target = obj.get("target").and_then(Value::as_str);
    let fields = match obj.get("fields") {
        Some(Value::Object(f)) => f,
        _ => obj,
    };
    match fields.get("message").and_then(Value::as_str) {
        Some("decision") if target.is_none_or(|t| t == DECISION_TARGET) => {
            record(obj, fields).map(|r| Some(Entry::Decision(r)))
        }
        Some(m @ (DROP_MESSAGE | WOULD_DROP_MESSAGE))
            if target.is_none_or(|t| t == DROP_TARGET) =>
        {
            drop_record(obj, fields, m == WOULD_DROP_MESSAGE).map(|r| Some(Entry::Drop(r)))
        }
        _ => Ok(None),
    }
}

/// A record's fields read by name; `what` names the record in errors.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    fields: &'a Map<String, Value>,
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn opt(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("{}'s `{name}` is not a string", self.what)),
        }
    }

    fn req(&self, name: &str) -> Result<&'a str, String> {
        self.opt(name)?
            .ok_or_else(|| format!("{} without `{name}`", self.what))
    }

    fn flag(&self, name: &str) -> Result<bool, String> {
        match self.fields.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("{}'s `{name}` is not a boolean", self.what)),
        }
    }

    fn time(&self) -> Result<Option<(i128, &'a str)>, String> {
        match self
            .obj
            .get("timestamp")
            .or_else(|| self.fields.get("timestamp"))
        {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some((
                parse_rfc3339(s).ok_or_else(|| {
                    format!("{}'s `timestamp` {s:?} is not an RFC 3339 time", self.what)
                })?,
                s.as_str(),
            ))),
            Some(_) => Err(format!("{}'s `timestamp` is not a string", self.what)),
        }
    }
}

/// A decision record's fields; an error says what is wrong with it.
fn record<'a>(
    obj: &'a Map<String, Value>,
    fields: &'a Map<String, Value>,
) -> Result<Record<'a>, String> {
    let f = Fields {
        obj,
        fields,
        what: "decision record",
    };
    let time = f.time()?;
    let host_network = f.flag("host_network")?;
    let cgroup = match fields.get("cgroup_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            "decision record's `cgroup_id` is not a cgroup id (an unsigned integer)".to_string()
        })?),
    };
    let rec = Record {
        time,
        cgroup,
        peer: f.req("peer")?,
        pod: f.req("pod")?,
        namespace: f.opt("namespace")?,
        service_account: f.opt("service_account")?,
        path: f.req("path")?,
        endpoint: f.req("endpoint")?,
        decision: f.req("decision")?,
        rule: f.req("rule")?,
        reason: f.opt("reason")?,
        resource: f.opt("resource")?,
        identity: f.opt("identity")?,
        host_network,
    };
    if rec.pod != "-" && !rec.pod.contains('/') && rec.namespace.is_none_or(|n| n == "-") {
        return Err(format!(
            "decision record's `pod` {:?} is neither `-` nor NAMESPACE/NAME, and it has no `namespace`",
            rec.pod
        ));
    }
    Ok(rec)
}

/// A drop record's fields (`would_drop`: its message is [`WOULD_DROP_MESSAGE`]); an
/// error says what is wrong with it.
fn drop_record<'a>(
    obj: &'a Map<String, Value>,
    fields: &'a Map<String, Value>,
    would_drop: bool,
) -> Result<DropRecord<'a>, String> {
    let f = Fields {
        obj,
        fields,
        what: "drop record",
    };
    let time = f.time()?;
    let packets = match fields.get("packets") {
        None | Some(Value::Null) => return Err("drop record without `packets`".to_string()),
        Some(v) => v.as_u64().ok_or_else(|| {
            "drop record's `packets` is not a packet count (an unsigned integer)".to_string()
        })?,
    };
    let non_empty = |name: &str| f.opt(name).map(|v| v.filter(|s| !s.is_empty()));
    Ok(DropRecord {
        time,
        would_drop,
        pod: f.req("pod")?,
        namespace: f.req("namespace")?,
        packets,
        host_network: f.flag("host_network")?,
        cgroup: non_empty("cgroup")?,
        interface: non_empty("interface")?,
        address: non_empty("address")?,
        matched_by: non_empty("matched_by")?,
    })
}

/// The alphabet of the random suffixes Kubernetes generates (`rand.String`, and
/// `SafeEncodeString` for a Deployment's `pod-template-hash`): no vowels, no 0, 1, 3.
fn is_generated(segment: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&segment.len())
        && segment
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
}

/// The workload a pod belongs to, guessed from its name (a heuristic: the decision
/// record names the pod, not its owner):
///
/// - a last segment of 5 characters from Kubernetes' random alphabet
///   (`bcdfghjklmnpqrstvwxz2456789`) is removed (DaemonSet, Job and ReplicaSet pods,
///   `generateName`); then a segment of 6 to 10 such characters (a Deployment's
///   `pod-template-hash`) or of 8 or more digits (a CronJob's scheduled time) is
///   removed as well;
/// - otherwise a last segment of digits is removed (a StatefulSet's ordinal).
///
/// `api-7d9f8c6b5d-x2x4q` → `api`, `node-agent-k7zq2` → `node-agent`,
/// `backup-29012345-hx5fd` → `backup`, `web-0` → `web`, `standalone` → `standalone`.
/// A pod that is none of these but ends like one is grouped with its look-alikes; the
/// report also lists the pods' own names.
pub fn workload_name(pod: &str) -> &str {
    let strip = |name: &str, f: &dyn Fn(&str) -> bool| -> Option<usize> {
        let (head, last) = name.rsplit_once('-')?;
        (!head.is_empty() && f(last)).then_some(head.len())
    };
    if let Some(end) = strip(pod, &|s| is_generated(s, 5..=5)) {
        let head = &pod[..end];
        let owner = strip(head, &|s| {
            is_generated(s, 6..=10) || (s.len() >= 8 && s.bytes().all(|b| b.is_ascii_digit()))
        });
        return &head[..owner.unwrap_or(end)];
    }
    match strip(pod, &|s| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }) {
        Some(end) => &pod[..end],
        None => pod,
    }
}

/// An RFC 3339 time (`2026-11-18T11:06:40.123456Z`, `…+02:00`) as nanoseconds since
/// the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let d = b.get(from..to)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0i64, |a, c| a * 10 + i64::from(c - b'0')))
    };
    let sep = |at: usize, ok: &[u8]| b.get(at).is_some_and(|c| ok.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &b[start..i.min(start + 9)];
        nanos = digits
            .iter()
            .fold(0i64, |a, c| a * 10 + i64::from(c - b'0'))
            * 10i64.pow(9 - u32::try_from(digits.len()).ok()?);
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if b.len() == i + 1 => 0,
        sign @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A line as `imdsguard proxy --log-format json` writes it.
    fn proxy_line(ts: &str, fields: Value) -> String {
        let mut f = json!({"message": "decision", "peer": "10.244.1.5", "method": "GET",
            "status": 403, "latency_us": 12, "redacted": false});
        f.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        format!(
            r#"{{"timestamp":"{ts}","level":"INFO","fields":{f},"target":"imdsguard::decision"}}"#
        )
    }

    fn deny(pod: &str, path: &str, rule: &str) -> Value {
        let ns = pod.split_once('/').map_or("-", |p| p.0);
        json!({"pod": pod, "namespace": ns, "service_account": "sa", "path": path,
            "endpoint": "identity-token", "decision": "deny", "rule": rule,
            "reason": "no rule allows it", "resource": "https://vault.azure.net"})
    }

    fn report(text: &str) -> Report {
        let mut log = DecisionLog::new();
        log.read("a.log", text.as_bytes());
        log.report()
    }

    #[test]
    fn reads_the_proxys_lines_and_the_subscribers_flattened_ones() {
        let ours = proxy_line(
            "2026-11-18T11:06:40.123456Z",
            deny(
                "payments/api-7d9f8c6b5d-x2x4q",
                "/metadata/identity/oauth2/token",
                "arm",
            ),
        );
        // flatten_event: the fields at the top level.
        let mut flat = deny(
            "payments/api-7d9f8c6b5d-q8w2z",
            "/metadata/identity/oauth2/token",
            "arm",
        );
        flat["message"] = json!("decision");
        flat["peer"] = json!("10.244.1.6");
        flat["timestamp"] = json!("2026-11-18T11:07:00Z");
        flat["target"] = json!("imdsguard::decision");
        let r = report(&format!("{ours}\n{flat}\n"));
        assert_eq!(r.lines.read, 2);
        assert_eq!(r.lines.decisions, 2, "{r:?}");
        assert_eq!(r.totals.deny, 2);
        assert!(!r.nothing_would_break);
        assert_eq!(r.workloads.len(), 1);
        let w = &r.workloads[0];
        assert_eq!(
            (w.caller, &*w.namespace, &*w.workload),
            (CallerKind::Pod, "payments", "api")
        );
        assert_eq!(w.pods, ["api-7d9f8c6b5d-q8w2z", "api-7d9f8c6b5d-x2x4q"]);
        assert_eq!(w.peers, ["10.244.1.5", "10.244.1.6"]);
        assert_eq!(w.service_accounts, ["sa"]);
        assert_eq!(w.count, 2);
        let q = &w.requests[0];
        assert_eq!(q.count, 2);
        assert_eq!(q.resource.as_deref(), Some("https://vault.azure.net"));
        assert_eq!(q.first_seen.as_deref(), Some("2026-11-18T11:06:40.123456Z"));
        assert_eq!(q.last_seen.as_deref(), Some("2026-11-18T11:07:00Z"));
        assert_eq!(q.rule, "arm");
    }

    #[test]
    fn other_lines_are_skipped_and_counted() {
        let text = [
            "",
            "   ",
            "2026-11-18T11:06:40.123456Z  INFO imdsguard::decision: decision peer=10.0.0.1 pod=- decision=deny",
            "2026-11-18T11:06:40Z  WARN imdsguard: reload failed {file: x}",
            r#"{"timestamp":"2026-11-18T11:06:40Z","level":"INFO","fields":{"message":"stopping"},"target":"imdsguard"}"#,
            // A decision-like message from another target.
            r#"{"fields":{"message":"decision","decision":"deny"},"target":"elsewhere"}"#,
            &proxy_line(
                "2026-11-18T11:06:40Z",
                json!({"pod": "web/f-0", "path": "/metadata/versions", "endpoint": "versions",
                    "decision": "allow", "rule": "basics"}),
            ),
        ]
        .join("\n");
        let r = report(&text);
        assert_eq!(r.lines.read, 7);
        assert_eq!(r.lines.skipped, 6);
        assert_eq!(r.lines.text_decisions, 1);
        assert_eq!(r.lines.decisions, 1);
        assert_eq!(r.lines.malformed, 0);
        assert_eq!(r.totals.allow, 1);
        assert!(r.nothing_would_break);
        assert!(r.workloads.is_empty());
    }

    #[test]
    fn prefixed_lines_are_read() {
        let line = proxy_line(
            "2026-11-18T11:06:40Z",
            deny("a/b-0", "/metadata/instance", "default-deny"),
        );
        // kubectl logs --timestamps, a CRI log file.
        let text =
            format!("2026-11-18T11:06:40.5Z {line}\n2026-11-18T11:06:40.5Z stderr F {line}\n");
        let r = report(&text);
        assert_eq!(r.lines.decisions, 2, "{r:?}");
        assert_eq!(r.workloads[0].workload, "b");
    }

    #[test]
    fn malformed_lines_are_counted_with_their_line_number_and_never_fatal() {
        let good = proxy_line(
            "2026-11-18T11:06:40Z",
            deny("a/b-0", "/metadata/instance", "default-deny"),
        );
        let mut no_rule: Value = serde_json::from_str(&good).unwrap();
        no_rule["fields"].as_object_mut().unwrap().remove("rule");
        let mut bad_time: Value = serde_json::from_str(&good).unwrap();
        bad_time["timestamp"] = json!("yesterday");
        let mut bad_pod: Value = serde_json::from_str(&good).unwrap();
        bad_pod["fields"]["pod"] = json!("nonamespace");
        bad_pod["fields"]["namespace"] = json!("-");
        let mut bad_cgroup: Value = serde_json::from_str(&good).unwrap();
        bad_cgroup["fields"]["cgroup_id"] = json!(-1);
        let text = format!(
            "{good}\n{{\"timestamp\": 3,\n{no_rule}\r\n{bad_time}\n{good} trailing\n{bad_pod}\n{good}\n{bad_cgroup}"
        );
        let mut log = DecisionLog::new();
        log.read("x.log", text.as_bytes());
        let r = log.report();
        assert_eq!(r.lines.read, 8);
        assert_eq!(r.lines.decisions, 2);
        assert_eq!(r.lines.malformed, 6);
        let lines: Vec<u64> = r.malformed.iter().map(|m| m.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 8]);
        assert!(
            r.malformed[5].error.contains("`cgroup_id`"),
            "{:?}",
            r.malformed[5]
        );
        assert!(r.malformed.iter().all(|m| m.source == "x.log"));
        assert!(
            r.malformed[0].error.starts_with("not a JSON object"),
            "{:?}",
            r.malformed
        );
        assert_eq!(r.malformed[1].error, "decision record without `rule`");
        assert!(
            r.malformed[2].error.contains("\"yesterday\""),
            "{:?}",
            r.malformed[2]
        );
        assert!(
            r.malformed[4].error.contains("nonamespace"),
            "{:?}",
            r.malformed[4]
        );
        assert_eq!(r.totals.deny, 2);
    }

    #[test]
    fn huge_lines_are_malformed_and_not_kept_whatever_the_chunks() {
        let good = proxy_line(
            "2026-11-18T11:06:40Z",
            deny("a/b-0", "/metadata/instance", "default-deny"),
        );
        let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_LINE));
        let text = format!("{good}\n{huge}\n{good}\n{huge}");
        for chunk in [1, 7, 4096, MAX_LINE + 10, text.len()] {
            let mut log = DecisionLog::new();
            log.begin("h.log");
            for c in text.as_bytes().chunks(chunk) {
                log.feed(c);
                assert!(log.buf.len() <= MAX_LINE);
            }
            log.end();
            let r = log.report();
            assert_eq!(r.lines.read, 4, "chunk {chunk}");
            assert_eq!(r.lines.decisions, 2, "chunk {chunk}");
            assert_eq!(r.lines.malformed, 2, "chunk {chunk}");
            assert_eq!(r.malformed[0].line, 2);
            assert_eq!(r.malformed[1].line, 4);
            assert!(r.malformed[0].error.contains("longer than"));
        }
    }

    #[test]
    fn groups_per_workload_and_request_with_first_last_and_the_latest_rule() {
        let token = "/metadata/identity/oauth2/token";
        let mut lines = vec![
            // Out of order in the file: first and last by timestamp.
            proxy_line(
                "2026-11-18T12:00:00Z",
                deny("pay/api-7d9f8c6b5d-x2x4q", token, "arm"),
            ),
            proxy_line(
                "2026-11-18T10:00:00Z",
                deny("pay/api-7d9f8c6b5d-x2x4q", token, "old"),
            ),
            proxy_line("2026-11-18T13:00:00+02:00", deny("pay/api-0", token, "arm")),
        ];
        // A dry run's would-deny of the same request, another identity, another path.
        let mut would = deny("pay/api-7d9f8c6b5d-zzzzz", token, "arm");
        would["decision"] = json!("would-deny");
        lines.push(proxy_line("2026-11-18T11:00:00Z", would.clone()));
        would["identity"] = json!("client_id=abc");
        lines.push(proxy_line("2026-11-18T11:00:00Z", would));
        lines.push(proxy_line(
            "2026-11-18T11:00:00Z",
            json!({"pod": "pay/api-0", "path": "/metadata/instance", "endpoint": "instance",
                "decision": "deny", "rule": "default-deny"}),
        ));
        // Unknown callers, by address (numeric order) then cgroup, and a DaemonSet pod.
        for (peer, cgroup) in [
            ("10.0.0.10", None),
            ("10.0.0.9", None),
            ("10.0.0.10", None),
            ("10.0.0.10", Some(4242)),
        ] {
            let mut d = deny("-", token, "unknown-source");
            d["peer"] = json!(peer);
            if let Some(id) = cgroup {
                d["cgroup_id"] = json!(id);
                d["host_network"] = json!(true);
                d["rule"] = json!("unknown-pod-cgroup");
            }
            lines.push(proxy_line("2026-11-18T11:00:00Z", d));
        }
        let mut ds = deny("kube-system/node-agent-k7zq2", token, "default-deny");
        ds["host_network"] = json!(true);
        lines.push(proxy_line("2026-11-18T11:00:00Z", ds));
        // Allowed and throttled: counted, not listed.
        let mut ok = deny("pay/web-0", token, "arm");
        ok["decision"] = json!("allow");
        lines.push(proxy_line("2026-11-18T11:00:00Z", ok.clone()));
        ok["decision"] = json!("throttled");
        lines.push(proxy_line("2026-11-18T11:00:00Z", ok));
        let r = report(&lines.join("\n"));
        assert_eq!(
            r.totals,
            Totals {
                records: 13,
                allow: 1,
                would_deny: 2,
                deny: 9,
                throttled: 1,
                ..Totals::default()
            }
        );
        let names: Vec<(CallerKind, &str, &str)> = r
            .workloads
            .iter()
            .map(|w| (w.caller, &*w.namespace, &*w.workload))
            .collect();
        assert_eq!(
            names,
            [
                (CallerKind::Pod, "kube-system", "node-agent"),
                (CallerKind::Pod, "pay", "api"),
                (CallerKind::Unknown, "-", "10.0.0.9"),
                (CallerKind::Unknown, "-", "10.0.0.10"),
                (CallerKind::Unknown, "-", "10.0.0.10"),
            ]
        );
        let cgroups: Vec<Option<u64>> = r.workloads.iter().map(|w| w.cgroup_id).collect();
        assert_eq!(cgroups, [None, None, None, None, Some(4242)]);
        assert!(r.workloads[4].host_network);
        assert_eq!(r.workloads[4].requests[0].rule, "unknown-pod-cgroup");
        assert!(r.workloads[0].host_network);
        let api = &r.workloads[1];
        assert!(!api.host_network);
        assert_eq!(api.count, 6);
        assert_eq!(
            api.pods,
            ["api-0", "api-7d9f8c6b5d-x2x4q", "api-7d9f8c6b5d-zzzzz"]
        );
        let keys: Vec<(&str, Option<&str>)> = api
            .requests
            .iter()
            .map(|q| (&*q.path, q.identity.as_deref()))
            .collect();
        assert_eq!(
            keys,
            [
                ("/metadata/identity/oauth2/token", None),
                ("/metadata/identity/oauth2/token", Some("client_id=abc")),
                ("/metadata/instance", None),
            ]
        );
        let q = &api.requests[0];
        assert_eq!((q.count, q.deny, q.would_deny), (4, 3, 1));
        assert_eq!(q.first_seen.as_deref(), Some("2026-11-18T10:00:00Z"));
        // 13:00+02:00 is 11:00Z, earlier than 12:00Z.
        assert_eq!(q.last_seen.as_deref(), Some("2026-11-18T12:00:00Z"));
        assert_eq!(q.rule, "arm");
        assert_eq!(q.other_rules, ["old"]);
        assert_eq!(api.requests[1].would_deny, 1);
        assert_eq!(r.workloads[3].count, 2);
        assert!(!r.workloads[3].host_network);
        assert!(r.workloads[3].pods.is_empty());

        // The same records in another order: the same report.
        lines.reverse();
        assert_eq!(report(&lines.join("\n")), r);
    }

    /// An agent's drop record as `tracing-subscriber`'s JSON formatter writes it
    /// (`imdsguard agent run --log-format json`; `crates/cli`'s `report_cmd` tests it
    /// with the agent's own log records).
    fn agent_line(ts: &str, would: bool, fields: Value) -> String {
        let (level, message) = if would {
            ("INFO", WOULD_DROP_MESSAGE)
        } else {
            ("WARN", DROP_MESSAGE)
        };
        let mut f = json!({"message": message});
        f.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        if would {
            f["would_drop"] = json!(true);
        }
        format!(r#"{{"timestamp":"{ts}","level":"{level}","fields":{f},"target":"{DROP_TARGET}"}}"#)
    }

    #[test]
    fn the_agents_drops_and_would_drops_add_up_per_workload() {
        let web = |packets: u64| {
            json!({"pod": "web-7d9f8c6b5d-x2x4q", "namespace": "shop",
                "interface": "azvweb", "address": "10.244.0.11,fd00::11",
                "packets": packets, "matched_by": "pair"})
        };
        let mut lines = vec![
            agent_line("2026-11-18T12:00:00Z", true, web(3)),
            agent_line("2026-11-18T10:00:00Z", false, web(2)),
            // Another pod of the workload, on another interface, matched by interface.
            agent_line(
                "2026-11-18T11:00:00Z",
                true,
                json!({"pod": "web-7d9f8c6b5d-q8w2z", "namespace": "shop",
                    "interface": "azvweb2", "address": "10.244.0.12", "packets": 1,
                    "matched_by": "interface"}),
            ),
            // A hostNetwork pod, by cgroup (a would-drop names no interface).
            agent_line(
                "2026-11-18T11:00:00Z",
                true,
                json!({"pod": "debug-k7zq2", "namespace": "monitoring", "host_network": true,
                    "cgroup": "kubepods.slice/kubepods-podabc.slice", "packets": 4,
                    "matched_by": "cgroup"}),
            ),
            // Sources no pod has: by address, then interface; sockets in a pod cgroup
            // no pod has: by cgroup.
            agent_line(
                "2026-11-18T11:00:00Z",
                false,
                json!({"pod": "unknown", "namespace": "", "interface": "azvspoof",
                    "address": "10.244.0.10", "packets": 7, "matched_by": "unknown"}),
            ),
            agent_line(
                "2026-11-18T11:00:00Z",
                false,
                json!({"pod": "unknown", "namespace": "", "interface": "azvx",
                    "address": "10.244.0.9", "packets": 1, "matched_by": "unknown"}),
            ),
            agent_line(
                "2026-11-18T11:00:01Z",
                false,
                json!({"pod": "unknown", "namespace": "", "interface": "azvspoof",
                    "address": "10.244.0.10", "packets": 1, "matched_by": "unknown"}),
            ),
            agent_line(
                "2026-11-18T11:00:00Z",
                false,
                json!({"pod": "unknown", "namespace": "", "host_network": true,
                    "cgroup": "kubepods.slice", "packets": 2,
                    "matched_by": "unknown-pod-cgroup"}),
            ),
        ];
        // flatten_event: the fields at the top level.
        let mut flat = web(5);
        flat["message"] = json!(WOULD_DROP_MESSAGE);
        flat["timestamp"] = json!("2026-11-18T11:30:00Z");
        flat["target"] = json!(DROP_TARGET);
        lines.push(flat.to_string());
        // The proxy's decisions in the same log: both read.
        lines.push(proxy_line(
            "2026-11-18T11:00:00Z",
            deny("shop/web-0", "/metadata/instance", "default-deny"),
        ));
        let r = report(&lines.join("\n"));
        assert_eq!(r.lines.read, 10);
        assert_eq!((r.lines.drops, r.lines.decisions), (9, 1), "{r:?}");
        assert_eq!(r.lines.malformed + r.lines.skipped, 0, "{r:?}");
        assert_eq!(
            r.drop_totals,
            DropTotals {
                records: 9,
                dropped_records: 5,
                would_drop_records: 4,
                dropped_packets: 2 + 7 + 1 + 1 + 2,
                would_drop_packets: 3 + 1 + 4 + 5,
            }
        );
        assert_eq!(r.totals.deny, 1);
        assert_eq!(r.workloads.len(), 1);
        let names: Vec<(CallerKind, &str, &str)> = r
            .drops
            .iter()
            .map(|d| (d.caller, &*d.namespace, &*d.workload))
            .collect();
        assert_eq!(
            names,
            [
                (CallerKind::Pod, "monitoring", "debug"),
                (CallerKind::Pod, "shop", "web"),
                (CallerKind::Unknown, "-", "10.244.0.9"),
                (CallerKind::Unknown, "-", "10.244.0.10"),
                (CallerKind::Unknown, "-", "kubepods.slice"),
            ]
        );
        let debug = &r.drops[0];
        assert!(debug.host_network);
        assert_eq!(debug.cgroups, ["kubepods.slice/kubepods-podabc.slice"]);
        assert!(debug.interfaces.is_empty() && debug.addresses.is_empty());
        assert_eq!(debug.matched_by, ["cgroup"]);
        assert_eq!((debug.would_drop, debug.dropped), (4, 0));
        let web = &r.drops[1];
        assert!(!web.host_network);
        assert_eq!(web.pods, ["web-7d9f8c6b5d-q8w2z", "web-7d9f8c6b5d-x2x4q"]);
        assert_eq!(web.interfaces, ["azvweb", "azvweb2"]);
        assert_eq!(web.addresses, ["10.244.0.11", "10.244.0.12", "fd00::11"]);
        assert_eq!(web.matched_by, ["interface", "pair"]);
        assert_eq!(
            (web.records, web.packets, web.dropped, web.would_drop),
            (4, 11, 2, 9)
        );
        assert_eq!(web.first_seen.as_deref(), Some("2026-11-18T10:00:00Z"));
        assert_eq!(web.last_seen.as_deref(), Some("2026-11-18T12:00:00Z"));
        let spoof = &r.drops[3];
        assert!(spoof.pods.is_empty());
        assert_eq!(spoof.interfaces, ["azvspoof"]);
        assert_eq!((spoof.records, spoof.dropped), (2, 8));
        assert_eq!(spoof.last_seen.as_deref(), Some("2026-11-18T11:00:01Z"));
        let cgroup = &r.drops[4];
        assert!(cgroup.host_network);
        assert_eq!(cgroup.matched_by, ["unknown-pod-cgroup"]);
        assert!(!r.nothing_would_break);

        // The same records in another order: the same report.
        lines.reverse();
        let again = report(&lines.join("\n"));
        assert_eq!(again.drops, r.drops);
        assert_eq!(again, r);
    }

    #[test]
    fn a_would_drop_alone_breaks_something_and_bad_drop_records_are_malformed() {
        let one = agent_line(
            "2026-11-18T11:00:00Z",
            true,
            json!({"pod": "batch", "namespace": "jobs", "interface": "cbr0",
                "address": "10.244.1.10", "packets": 1, "matched_by": "pair"}),
        );
        let r = report(&one);
        assert!(!r.nothing_would_break);
        assert_eq!(r.totals.records, 0);
        assert!(r.workloads.is_empty());
        assert_eq!(r.drops[0].workload, "batch");
        assert_eq!(r.drops[0].would_drop, 1);

        let good: Value = serde_json::from_str(&one).unwrap();
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            edit(&mut v);
            v.to_string()
        };
        let text = [
            with(&|v| {
                v["fields"].as_object_mut().unwrap().remove("packets");
            }),
            with(&|v| v["fields"]["packets"] = json!(-1)),
            with(&|v| {
                v["fields"].as_object_mut().unwrap().remove("namespace");
            }),
            with(&|v| v["fields"]["cgroup"] = json!(12)),
            with(&|v| v["timestamp"] = json!("now")),
            // Another target's record with the same message; the observe mode's record.
            with(&|v| v["target"] = json!("elsewhere")),
            with(&|v| v["fields"]["message"] = json!("metadata access observed")),
            // The agent's text format.
            "2026-11-18T11:00:00.5Z  WARN imdsguard::drops: metadata access dropped pod=web namespace=shop packets=2".to_string(),
        ]
        .join("\n");
        let r = report(&text);
        assert_eq!(r.lines.malformed, 5, "{r:?}");
        assert_eq!(r.lines.skipped, 3);
        assert_eq!((r.lines.text_drops, r.lines.text_decisions), (1, 0));
        assert_eq!(r.lines.drops, 0);
        assert!(r.nothing_would_break);
        let errors: Vec<&str> = r.malformed.iter().map(|m| &*m.error).collect();
        assert_eq!(errors[0], "drop record without `packets`");
        assert!(
            errors[1].contains("`packets` is not a packet count"),
            "{errors:?}"
        );
        assert_eq!(errors[2], "drop record without `namespace`");
        assert_eq!(errors[3], "drop record's `cgroup` is not a string");
        assert!(
            errors[4].contains("\"now\" is not an RFC 3339 time"),
            "{errors:?}"
        );
    }

    #[test]
    fn inputs_are_numbered_apart() {
        let mut log = DecisionLog::new();
        log.read("one", b"{\n");
        log.begin("two");
        log.feed(b"\n{");
        log.end();
        let r = log.report();
        let at: Vec<(&str, u64)> = r.malformed.iter().map(|m| (&*m.source, m.line)).collect();
        assert_eq!(at, [("one", 1), ("two", 2)]);
        assert_eq!(r.lines.read, 3);
    }

    #[test]
    fn workload_names() {
        for (pod, want) in [
            ("api-7d9f8c6b5d-x2x4q", "api"),
            ("payments-api-5c6f7b9d8-h2k4m", "payments-api"),
            ("node-agent-k7zq2", "node-agent"),
            ("backup-29012345-hx5fd", "backup"),
            ("web-0", "web"),
            ("web-12", "web"),
            ("standalone", "standalone"),
            ("proxy", "proxy"),
            ("my-proxy", "my-proxy"),
            ("-0", "-0"),
            ("x-", "x-"),
            ("job-abcde", "job-abcde"),
        ] {
            assert_eq!(workload_name(pod), want, "{pod}");
        }
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(
            parse_rfc3339("2026-11-18T11:06:40.123456Z"),
            Some(1_795_000_000_123_456_000)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31t23:00:00-01:00"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00.5z"),
            Some(1_709_164_800_500_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-18T11:06:40.1234567891Z"),
            Some(1_795_000_000_123_456_789)
        );
        for bad in [
            "",
            "2026-11-18",
            "2026-11-18T11:06:40",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-18T24:00:00Z",
            "2026-11-18T11:06:40.Z",
            "2026-11-18T11:06:40Zx",
            "2026-11-18T11:06:40+0100",
            "2026-11-18T11:06:40+01:60",
            "+026-11-18T11:06:40Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
