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
//! Two line shapes are read (both JSON objects, one a line):
//!
//! - what `imdsguard proxy --log-format json` writes, which is also what
//!   `tracing-subscriber`'s JSON formatter writes for the `tracing` event:
//!   `{"timestamp":"…","level":"INFO","fields":{"message":"decision",…},"target":"imdsguard::decision"}`;
//! - the same with the event's fields at the top level (the formatter's
//!   `flatten_event`).
//!
//! A line may carry one prefix before its JSON object, separated by a space, such as
//! `kubectl logs --timestamps`' time or a container runtime's log file's
//! `TIME stderr F`. Every other line (text log lines, JSON log lines of other events)
//! is skipped and counted; a line that starts like a JSON object but is not one, or a
//! decision record that lacks a field, is malformed: counted, kept with its line number
//! (the first [`MAX_MALFORMED_KEPT`]), never fatal. A line longer than [`MAX_LINE`]
//! bytes is malformed and never held whole in memory.
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
    malformed: Vec<Malformed>,
}

/// How the lines read were classified. `read` = `decisions` + `skipped` + `malformed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LineCounts {
    /// Lines read.
    pub read: u64,
    /// Decision records.
    pub decisions: u64,
    /// Other lines: blank, text, JSON log lines of other events.
    pub skipped: u64,
    /// Lines that are not what they start as (JSON objects), decision records without a
    /// field, and lines over [`MAX_LINE`] bytes.
    pub malformed: u64,
    /// Of the skipped lines, those that look like text-format decision records (they name
    /// `imdsguard::decision`): the proxy was not run with `--log-format json`.
    pub text_decisions: u64,
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
    /// No `deny` or `would-deny` record was read.
    pub nothing_would_break: bool,
    /// The lines read.
    pub lines: LineCounts,
    /// The decision records read.
    pub totals: Totals,
    /// Callers with refused requests: pods by namespace and workload, then unknown
    /// callers by address.
    pub workloads: Vec<Workload>,
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
        Report {
            nothing_would_break: self.totals.deny == 0 && self.totals.would_deny == 0,
            lines: self.lines,
            totals: self.totals,
            workloads,
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
            Classified::Skipped { text_decision } => return self.skipped(text_decision),
            Classified::Malformed(e) => return self.malformed(e),
            Classified::Object(v) => v,
        };
        match record(&value) {
            Ok(None) => self.skipped(false),
            Err(e) => self.malformed(e),
            Ok(Some(rec)) => {
                self.lines.decisions += 1;
                self.seq += 1;
                self.add(&rec);
            }
        }
    }

    fn skipped(&mut self, text_decision: bool) {
        self.lines.skipped += 1;
        if text_decision {
            self.lines.text_decisions += 1;
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

enum Classified {
    Skipped { text_decision: bool },
    Malformed(String),
    Object(Map<String, Value>),
}

/// A line as a JSON object, or why it is not one.
fn classify(line: &[u8]) -> Classified {
    let line = line.trim_ascii();
    let text_decision = || memchr::memmem::find(line, DECISION_TARGET.as_bytes()).is_some();
    if line.is_empty() {
        return Classified::Skipped {
            text_decision: false,
        };
    }
    // The JSON object: the whole line, or what follows one prefix that ends with a
    // space or tab (a time, a container runtime's `TIME stream tag`).
    let (json, prefixed) = if line[0] == b'{' {
        (line, false)
    } else {
        match memchr::memchr(b'{', line) {
            Some(at) if matches!(line[at - 1], b' ' | b'\t') => (&line[at..], true),
            _ => {
                return Classified::Skipped {
                    text_decision: text_decision(),
                };
            }
        }
    };
    match serde_json::from_slice::<Map<String, Value>>(json) {
        Ok(map) => Classified::Object(map),
        // A text line with a brace in it.
        Err(_) if prefixed => Classified::Skipped {
            text_decision: text_decision(),
        },
        Err(e) => Classified::Malformed(format!("not a JSON object: {e}")),
    }
}

/// The decision record a log line's object holds, if it is one; an error says what is
/// wrong with a decision record.
fn record(obj: &Map<String, Value>) -> Result<Option<Record<'_>>, String> {
    let target = obj.get("target").and_then(Value::as_str);
    let fields = match obj.get("fields") {
        Some(Value::Object(f)) => f,
        _ => obj,
    };
    let is_decision = fields.get("message").and_then(Value::as_str) == Some("decision")
        && target.is_none_or(|t| t == DECISION_TARGET);
    if !is_decision {
        return Ok(None);
    }
    let opt = |name: &str| -> Result<Option<&str>, String> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("decision record's `{name}` is not a string")),
        }
    };
    let req = |name: &str| -> Result<&str, String> {
        opt(name)?.ok_or_else(|| format!("decision record without `{name}`"))
    };
    let time = match obj.get("timestamp").or_else(|| fields.get("timestamp")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some((
            parse_rfc3339(s).ok_or_else(|| {
                format!("decision record's `timestamp` {s:?} is not an RFC 3339 time")
            })?,
            s.as_str(),
        )),
        Some(_) => return Err("decision record's `timestamp` is not a string".to_string()),
    };
    let host_network = match fields.get("host_network") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("decision record's `host_network` is not a boolean".into()),
    };
    let cgroup = match fields.get("cgroup_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            "decision record's `cgroup_id` is not a cgroup id (an unsigned integer)".to_string()
        })?),
    };
    let rec = Record {
        time,
        cgroup,
        peer: req("peer")?,
        pod: req("pod")?,
        namespace: opt("namespace")?,
        service_account: opt("service_account")?,
        path: req("path")?,
        endpoint: req("endpoint")?,
        decision: req("decision")?,
        rule: req("rule")?,
        reason: opt("reason")?,
        resource: opt("resource")?,
        identity: opt("identity")?,
        host_network,
    };
    if rec.pod != "-" && !rec.pod.contains('/') && rec.namespace.is_none_or(|n| n == "-") {
        return Err(format!(
            "decision record's `pod` {:?} is neither `-` nor NAMESPACE/NAME, and it has no `namespace`",
            rec.pod
        ));
    }
    Ok(Some(rec))
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
