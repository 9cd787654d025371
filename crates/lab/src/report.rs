//! The lab's results: one row per pod (and the node) per phase, what was expected, and
//! the text and JSON renderings.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, ContentArrangement, Table};
use imdsguard_core::nft::CounterValue;
use imdsguard_core::target::Cloud;
use imdsguard_probe::{Class, Report, StepName};
use serde::Serialize;

use crate::bench::BenchResult;
use crate::kubernetes::KubernetesResult;

/// A phase of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// No protection: the attacker's path as it is on an unprotected node.
    Before,
    /// `block` mode: pod traffic to the endpoints dropped unless allowlisted.
    Block,
    /// `observe` mode: let through, counted and logged.
    Observe,
    /// `proxy` mode: IMDS traffic redirected to the filtering proxy, the rest dropped.
    Proxy,
    /// `proxy` mode's dry run: every request decided and recorded, the ones the rules
    /// deny as `would-deny`, and all forwarded; the tables drop nothing (what proxy mode
    /// would drop is counted `would_drop` and let through).
    DryRun,
    /// `--kubernetes`: a `MetadataAccessPolicy`, the controller's generated policies and
    /// the agent (`--kubernetes`, block mode) following the object.
    Controller,
}

impl Phase {
    /// The default phases.
    pub const ALL: [Phase; 5] = [
        Phase::Before,
        Phase::Block,
        Phase::Observe,
        Phase::Proxy,
        Phase::DryRun,
    ];

    /// The phases of `--kubernetes`.
    pub const KUBERNETES: [Phase; 2] = [Phase::Before, Phase::Controller];

    /// `before`, `block`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::Block => "block",
            Phase::Observe => "observe",
            Phase::Proxy => "proxy",
            Phase::DryRun => "dry-run",
            Phase::Controller => "controller",
        }
    }
}

/// One pod of the lab.
#[derive(Debug, Clone, Serialize)]
pub struct LabPod {
    /// Its name (`node` for the node itself).
    pub name: String,
    /// Its address.
    pub address: String,
    /// The interface its traffic enters the node on.
    pub interface: String,
    /// What it stands for.
    pub role: String,
    /// Whether its (interface, address) pair is allowlisted (a hostNetwork pod: whether
    /// it is expected in block and observe modes, where the access rules that select it
    /// let it through).
    pub allowlisted: bool,
    /// In proxy mode it reaches IMDS only through the proxy, whose rules allow it, and
    /// the endpoints the proxy does not serve (WireServer, HostGAPlugin) are dropped: a
    /// hostNetwork pod the rules select that no `--allow` names (the agent expects it
    /// in block and observe modes only, as it allowlists other pods).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub through_proxy: bool,
    /// Whether its (interface, address) pair is known (a pod the node hosts): proxy
    /// mode redirects only known pairs and drops the others. A hostNetwork pod is known
    /// by its cgroup: proxy mode redirects every connection from the pods' cgroups.
    pub known: bool,
    /// The cgroup its probe runs in (relative to the cgroup v2 root), for the node's own
    /// processes: the kubelet and the hostNetwork pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// What the probe (and the DNS checks) found from one pod in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The pod (or `node`).
    pub pod: String,
    /// The instance document step (or the TCP step when it was blocked).
    pub imds: Class,
    /// The most telling token step.
    pub token: Class,
    /// WireServer's goal state (port 80).
    pub wireserver: Class,
    /// HostGAPlugin's vmSettings (port 32526).
    pub hostgaplugin: Class,
    /// Azure DNS (168.63.129.16:53/udp) echoed.
    pub azure_dns: bool,
    /// Node-local DNS (169.254.20.10:53/udp) echoed.
    pub node_local_dns: bool,
    /// The probe found something sensitive (instance data, a token, WireServer data).
    pub sensitive: bool,
    /// What it reached, in the probe's words.
    pub reached: Vec<String>,
    /// The rule that denied, when the proxy did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// How many times the pod was probed in this phase: more than 1 when a timeout made
    /// the row unexpected and it was probed again with a longer deadline.
    pub attempts: u32,
    /// `--kubernetes`: a TCP connection to another pod (`web`'s 10.244.0.11:8080) was
    /// answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_to_pod: Option<bool>,
    /// AWS and GCP: the cloud's other endpoints, one cell each (IMDS over IPv6, the EKS
    /// Pod Identity agent in both families, ECS task metadata); `imds` and `token` are
    /// then the IPv4 metadata service's. Empty (and left out of the JSON) for Azure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointCell>,
}

/// What one more endpoint of the cloud gave a pod (AWS and GCP rows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointCell {
    /// Which endpoint: `imds-ipv6`, `pod-identity`, `pod-identity-ipv6`,
    /// `ecs-task-metadata`.
    pub endpoint: String,
    /// Its address, `host:port`.
    pub target: String,
    /// What was found there: the token step's class when a token or credentials were
    /// obtained, else the most telling class of its steps (`blocked-timeout` when the
    /// connection was dropped; `reachable` for an endpoint only connected to).
    pub class: Class,
    /// Credentials, a token or other sensitive data were obtained there.
    pub sensitive: bool,
}

impl EndpointCell {
    /// Reads a cell back from its JSON.
    fn from_json(v: &serde_json::Value) -> Result<EndpointCell, String> {
        let s = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("an endpoint cell has no string `{k}`"))
        };
        Ok(EndpointCell {
            endpoint: s("endpoint")?.to_owned(),
            target: s("target")?.to_owned(),
            class: class_named(s("class")?)
                .ok_or_else(|| format!("no class {}", s("class").unwrap_or("")))?,
            sensitive: v
                .get("sensitive")
                .and_then(serde_json::Value::as_bool)
                .ok_or("an endpoint cell has no boolean `sensitive`")?,
        })
    }
}

/// How telling a class is when several steps are summed up (higher first).
pub(crate) fn rank(c: Class) -> u8 {
    match c {
        Class::TokenObtained | Class::CredentialsObtained => 14,
        Class::Exposed => 13,
        Class::BlockedByImdsguard => 12,
        Class::IdentityNotFound => 11,
        Class::SessionToken => 10,
        Class::Readable => 9,
        Class::NeedsHeader => 8,
        Class::Throttled => 7,
        Class::Error => 6,
        Class::NotFound | Class::Disabled => 5,
        Class::BlockedRefused => 4,
        Class::BlockedTimeout => 3,
        Class::Reachable => 2,
        _ => 0,
    }
}

/// Whether `c` says a token or credentials were obtained (Azure and GCP tokens, AWS
/// role credentials).
pub(crate) fn obtained(c: Class) -> bool {
    matches!(c, Class::TokenObtained | Class::CredentialsObtained)
}

/// Reads a class back from its name (the probe's classes are written, not read).
fn class_named(name: &str) -> Option<Class> {
    Class::ALL.into_iter().find(|c| c.as_str() == name)
}

impl Row {
    /// Reads back a row written with `serde_json` (a probe run in a child process).
    pub(crate) fn from_json(text: &str) -> Result<Row, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not a row's JSON: {e}"))?;
        let str_of = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| format!("the row has no string `{key}`"))
        };
        let class = |key: &str| {
            str_of(key).and_then(|s| class_named(s).ok_or_else(|| format!("`{key}`: no class {s}")))
        };
        let flag = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_bool)
                .ok_or_else(|| format!("the row has no boolean `{key}`"))
        };
        Ok(Row {
            pod: str_of("pod")?.to_owned(),
            imds: class("imds")?,
            token: class("token")?,
            wireserver: class("wireserver")?,
            hostgaplugin: class("hostgaplugin")?,
            azure_dns: flag("azure_dns")?,
            node_local_dns: flag("node_local_dns")?,
            sensitive: flag("sensitive")?,
            reached: v
                .get("reached")
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            denied_by: v
                .get("denied_by")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            attempts: v
                .get("attempts")
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            pod_to_pod: v.get("pod_to_pod").and_then(serde_json::Value::as_bool),
            endpoints: v
                .get("endpoints")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().map(EndpointCell::from_json).collect())
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// Whether the filtering proxy denied one of its requests (a 403 naming imdsguard).
    pub fn denied_by_proxy(&self) -> bool {
        self.denied_by.is_some()
            || self.imds == Class::BlockedByImdsguard
            || self.token == Class::BlockedByImdsguard
    }

    /// Its cell in the before/after matrix: `TOKEN`, `EXPOSED`, `denied by proxy` or
    /// `blocked` (a token or credentials obtained on any endpoint, IPv6 included, is
    /// `TOKEN`).
    pub fn cell(&self) -> &'static str {
        if obtained(self.token) || self.endpoints.iter().any(|e| obtained(e.class)) {
            "TOKEN"
        } else if self.sensitive {
            "EXPOSED"
        } else if self.imds == Class::BlockedByImdsguard || self.token == Class::BlockedByImdsguard
        {
            "denied by proxy"
        } else {
            "blocked"
        }
    }

    /// Sums up a probe report and the DNS checks.
    pub fn new(pod: &str, report: &Report, azure_dns: bool, node_local_dns: bool) -> Row {
        let class_of = |name: StepName| {
            report
                .steps
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.class)
                .max_by_key(|c| rank(*c))
                .unwrap_or(Class::NotChecked)
        };
        let tcp = class_of(StepName::TcpConnect);
        let blocked_tcp = |c: Class| if c == Class::NotChecked { tcp } else { c };
        let denied_by = report
            .steps
            .iter()
            .find_map(|s| s.denial.as_ref().and_then(|d| d.rule.clone()));
        Row {
            pod: pod.to_owned(),
            imds: blocked_tcp(class_of(StepName::Instance)),
            token: blocked_tcp(class_of(StepName::Token)),
            wireserver: class_of(StepName::WireserverGoalstate),
            hostgaplugin: class_of(StepName::HostgapluginVmsettings),
            azure_dns,
            node_local_dns,
            sensitive: report.summary.sensitive,
            reached: report.summary.reachable.clone(),
            denied_by,
            attempts: 1,
            pod_to_pod: None,
            endpoints: Vec::new(),
        }
    }
}

/// One phase's rows, counters and surprises.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// The phase.
    pub phase: Phase,
    /// What the node enforced, in words.
    pub enforcement: String,
    /// One row per pod, then the node.
    pub rows: Vec<Row>,
    /// The `inet imdsguard` counters after the phase (empty before protection).
    pub counters: Vec<CounterValue>,
    /// What did not come out as expected.
    pub unexpected: Vec<String>,
    /// The `dry-run` phase: what `imdsguard report` makes of the phase's decision
    /// records (what enforcing would break), beside the pods the `proxy` phase denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<DryRunReport>,
}

/// The dry-run phase's report, and the proxy phase's denials it must name.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReport {
    /// The pods the report names (what enforcing would break), as lab rows.
    pub pods: Vec<String>,
    /// The pods the `proxy` phase denied (a 403 from the proxy), as lab rows; `None`
    /// when the `proxy` phase did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_denied: Option<Vec<String>>,
    /// The report itself (`imdsguard report --format json`'s document).
    pub report: serde_json::Value,
}

/// Everything the lab found.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    /// The cloud the node stood in (`azure`, `aws`, `gcp`).
    pub cloud: Cloud,
    /// The pods (and the node).
    pub pods: Vec<LabPod>,
    /// The phases, in the order run.
    pub phases: Vec<PhaseResult>,
    /// `--bench-allow`: allow-set change latencies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bench: Option<BenchResult>,
    /// `--kubernetes`: the API server, the registered objects, the read-back policies
    /// and their audit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesResult>,
    /// What the lab could not show here, and why (e.g. the hostNetwork rows without
    /// cgroup v2).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Everything came out as expected.
    pub as_expected: bool,
}

/// The cloud's DNS resolver as the checks name it.
pub(crate) fn dns_name(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Azure => "Azure DNS (168.63.129.16:53/udp)",
        Cloud::Aws => "Amazon DNS (169.254.169.253:53/udp)",
        _ => "GCP DNS (169.254.169.254:53/udp)",
    }
}

/// What a phase should show for a pod of a lab standing in `cloud`; empty when all is
/// as expected.
pub(crate) fn check(cloud: Cloud, phase: Phase, info: &LabPod, row: &Row) -> Vec<String> {
    let mut out = Vec::new();
    let who = &info.name;
    let azure = cloud == Cloud::Azure;
    if !row.azure_dns {
        out.push(format!("{who}: {} did not answer", dns_name(cloud)));
    }
    if !row.node_local_dns {
        out.push(format!(
            "{who}: node-local DNS (169.254.20.10:53/udp) did not answer"
        ));
    }
    if row.pod_to_pod == Some(false) {
        out.push(format!(
            "{who}: pod-to-pod traffic (web's 10.244.0.11:8080) did not get through in phase {}",
            phase.as_str()
        ));
    }
    // Proxy mode: the proxy decides by its rules; the endpoints it does not serve are
    // dropped. Azure's rules give the pod a token; AWS's and GCP's give it its region or
    // zone and no credentials (only the allowlisted pod, which goes direct, gets them).
    let through_proxy = phase == Phase::Proxy && info.through_proxy;
    let open = match phase {
        // The dry run enforces nothing: neither the proxy's decisions nor the tables'
        // drops (they count what proxy mode would drop, and let it through), so every
        // row keeps what it had before, the spoofer's borrowed address too.
        Phase::Before | Phase::Observe | Phase::DryRun => true,
        _ => (info.allowlisted && !through_proxy) || who == "node",
    };
    let phase_name = phase.as_str();
    // Whoever reaches IMDS gets a token (the emulated node's identities answer): a
    // row that does not (a connection that timed out under load, say) is not as
    // expected, so it is probed again.
    if (open || (through_proxy && azure)) && !obtained(row.token) {
        out.push(format!(
            "{who}: expected to get a token in phase {phase_name}, the token step ended {}{}",
            row.token,
            if row.sensitive {
                ""
            } else {
                " (nothing sensitive found)"
            }
        ));
    }
    if open {
        // Every endpoint answers: IMDS over IPv6 gives credentials too.
        for e in &row.endpoints {
            let ok = if e.endpoint == IMDS_IPV6 {
                obtained(e.class)
            } else {
                !matches!(e.class, Class::BlockedTimeout | Class::BlockedRefused)
            };
            if !ok {
                out.push(format!(
                    "{who}: {} ({}) ended {} in phase {phase_name}, expected it answered{}",
                    e.endpoint,
                    e.target,
                    e.class,
                    if e.endpoint == IMDS_IPV6 {
                        " with credentials or a token"
                    } else {
                        ""
                    }
                ));
            }
        }
        return out;
    }
    if through_proxy && !azure {
        // The proxy's rules give it no credentials: denied by the proxy, nothing
        // sensitive, over IPv4 and IPv6.
        if row.token != Class::BlockedByImdsguard || row.sensitive {
            out.push(format!(
                "{who}: the token step ended {} in phase {phase_name}{}, expected the proxy's denial",
                row.token,
                if row.sensitive {
                    format!(" and it reached {}", row.reached.join(", "))
                } else {
                    String::new()
                }
            ));
        }
    } else if row.sensitive && !through_proxy {
        out.push(format!(
            "{who}: reached {} in phase {phase_name}",
            row.reached.join(", "),
        ));
    }
    // Proxy mode: known pods get the proxy's denial, unknown pairs are dropped.
    let imds_expected = if phase == Phase::Proxy && info.known {
        Class::BlockedByImdsguard
    } else {
        Class::BlockedTimeout
    };
    let dropped: Vec<(String, Class, Class)> = if azure {
        vec![
            (
                "WireServer".to_owned(),
                row.wireserver,
                Class::BlockedTimeout,
            ),
            (
                "HostGAPlugin".to_owned(),
                row.hostgaplugin,
                Class::BlockedTimeout,
            ),
        ]
    } else {
        // IMDS over IPv6 as over IPv4 (the proxy listens on both families); every other
        // endpoint dropped.
        row.endpoints
            .iter()
            .map(|e| {
                let expected = if e.endpoint == IMDS_IPV6 {
                    imds_expected
                } else if e.endpoint == crate::cloud::HARMLESS_PATH
                    && phase == Phase::Proxy
                    && info.known
                {
                    // Through the proxy: what its rules say for this pod.
                    if crate::cloud::rules_allow_harmless(cloud, who) {
                        Class::Readable
                    } else {
                        Class::BlockedByImdsguard
                    }
                } else {
                    Class::BlockedTimeout
                };
                (format!("{} ({})", e.endpoint, e.target), e.class, expected)
            })
            .collect()
    };
    for (what, class, expected) in dropped {
        if class != expected {
            out.push(format!(
                "{who}: {what} ended {class} in phase {phase_name}, expected {expected}"
            ));
        }
    }
    if through_proxy {
        return out;
    }
    if azure {
        if row.imds != imds_expected {
            out.push(format!(
                "{who}: IMDS ended {} in phase {phase_name}, expected {imds_expected}",
                row.imds,
            ));
        }
    } else if row.token != imds_expected {
        // AWS and GCP: the rules may let a known pod read a harmless path (its region,
        // its zone), never credentials.
        out.push(format!(
            "{who}: the credentials step ended {} in phase {phase_name}, expected {imds_expected}",
            row.token,
        ));
    }
    out
}

/// The endpoint cell of IMDS (or GCP's metadata server) over IPv6.
pub(crate) const IMDS_IPV6: &str = "imds-ipv6";

fn mark(ok: bool) -> &'static str {
    if ok { "answers" } else { "NO ANSWER" }
}

impl LabReport {
    /// The JSON document.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("the report serializes");
        s.push('\n');
        s
    }

    /// Tables: one per phase, then the before/after summary.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "imdsguard lab{}: a node in network namespaces (nothing linked to this machine's network)",
            match self.cloud {
                Cloud::Azure => String::new(),
                c => format!(" --cloud {c}"),
            }
        );
        let mut pods = Table::new();
        pods.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(["pod", "address", "enters the node on", "role"]);
        for p in &self.pods {
            pods.add_row([
                p.name.clone(),
                p.address.clone(),
                p.interface.clone(),
                p.role.clone(),
            ]);
        }
        let _ = writeln!(out, "{pods}");
        for note in &self.notes {
            let _ = writeln!(out, "NOTE: {note}");
        }
        for phase in &self.phases {
            let _ = writeln!(
                out,
                "\nphase {}: {}",
                phase.phase.as_str(),
                phase.enforcement
            );
            let pod_to_pod = phase.rows.iter().any(|r| r.pod_to_pod.is_some());
            let azure = self.cloud == Cloud::Azure;
            // AWS and GCP: a column per further endpoint, named by the first row's cells.
            let extra: Vec<String> = phase
                .rows
                .first()
                .map(|r| {
                    r.endpoints
                        .iter()
                        .map(|e| format!("{} {}", e.endpoint, e.target))
                        .collect()
                })
                .unwrap_or_default();
            let (imds_header, token_header, dns_header) = match self.cloud {
                Cloud::Azure => ("IMDS instance", "IMDS token", "Azure DNS :53"),
                Cloud::Aws => ("IMDS (IPv4)", "credentials", "Amazon DNS :53"),
                _ => ("metadata (IPv4)", "token", "GCP DNS :53"),
            };
            let mut header: Vec<String> =
                vec!["from".into(), imds_header.into(), token_header.into()];
            if azure {
                header.push("WireServer :80".into());
                header.push("HostGAPlugin :32526".into());
            } else {
                header.extend(extra.iter().cloned());
            }
            header.push(dns_header.into());
            header.push("node-local DNS".into());
            if pod_to_pod {
                header.push("pod-to-pod".into());
            }
            header.push("verdict".into());
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(header);
            for r in &phase.rows {
                let imds = match &r.denied_by {
                    Some(rule) if r.imds == Class::BlockedByImdsguard => {
                        format!("{} ({rule})", r.imds)
                    }
                    _ => r.imds.to_string(),
                };
                let mut cells = vec![
                    Cell::new(&r.pod),
                    Cell::new(imds),
                    Cell::new(r.token.to_string()),
                ];
                if azure {
                    cells.push(Cell::new(r.wireserver.to_string()));
                    cells.push(Cell::new(r.hostgaplugin.to_string()));
                } else {
                    cells.extend(r.endpoints.iter().map(|e| Cell::new(e.class.to_string())));
                }
                cells.push(Cell::new(mark(r.azure_dns)));
                cells.push(Cell::new(mark(r.node_local_dns)));
                if pod_to_pod {
                    cells.push(Cell::new(match r.pod_to_pod {
                        Some(ok) => mark(ok),
                        None => "",
                    }));
                }
                cells.push(Cell::new(if r.sensitive {
                    "SENSITIVE"
                } else {
                    "protected"
                }));
                t.add_row(cells);
            }
            let _ = writeln!(out, "{t}");
            if !phase.counters.is_empty() {
                let counters: Vec<String> = phase
                    .counters
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.packets))
                    .collect();
                let _ = writeln!(out, "nft counters (packets): {}", counters.join(", "));
            }
            if let Some(r) = &phase.report {
                let _ = writeln!(
                    out,
                    "imdsguard report over this phase's decisions: enforcing would break {}",
                    if r.pods.is_empty() {
                        "nothing".to_owned()
                    } else {
                        r.pods.join(", ")
                    }
                );
                if let Some(denied) = &r.proxy_denied {
                    let _ = writeln!(
                        out,
                        "the proxy phase denied: {}",
                        if denied.is_empty() {
                            "nobody".to_owned()
                        } else {
                            denied.join(", ")
                        }
                    );
                }
            }
            for u in &phase.unexpected {
                let _ = writeln!(out, "UNEXPECTED: {u}");
            }
        }

        // The before/after matrix.
        let mut t = Table::new();
        let mut header = vec!["from".to_owned()];
        header.extend(self.phases.iter().map(|p| p.phase.as_str().to_owned()));
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(header);
        let mut by_pod: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (i, p) in self.pods.iter().enumerate() {
            let mut cells = vec![p.name.clone()];
            for phase in &self.phases {
                let cell = phase
                    .rows
                    .iter()
                    .find(|r| r.pod == p.name)
                    .map(|r| r.cell().to_owned())
                    .unwrap_or_default();
                cells.push(cell);
            }
            by_pod.insert(i, cells);
        }
        for cells in by_pod.into_values() {
            t.add_row(cells);
        }
        let _ = writeln!(
            out,
            "\nbefore/after ({}):\n{t}",
            match self.cloud {
                Cloud::Azure =>
                    "TOKEN: an access token was obtained; EXPOSED: instance or WireServer data",
                _ =>
                    "TOKEN: credentials or a token were obtained, over IPv4 or IPv6; EXPOSED: other sensitive data",
            }
        );
        if let Some(b) = &self.bench {
            let _ = writeln!(out, "\n{}", b.to_text());
        }
        if let Some(k) = &self.kubernetes {
            let _ = writeln!(out, "\n{}", k.to_text());
        }
        let _ = writeln!(
            out,
            "\n{}",
            if self.as_expected {
                "Every phase came out as expected."
            } else {
                "Some results were not as expected (see UNEXPECTED above)."
            }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pod: &str, imds: Class, token: Class) -> Row {
        Row {
            pod: pod.into(),
            imds,
            token,
            wireserver: Class::BlockedTimeout,
            hostgaplugin: Class::Exposed,
            azure_dns: true,
            node_local_dns: false,
            sensitive: token == Class::TokenObtained,
            reached: vec!["a token".into()],
            denied_by: None,
            attempts: 2,
            pod_to_pod: None,
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn a_row_written_by_a_child_reads_back_the_same() {
        for class in Class::ALL {
            assert_eq!(class_named(class.as_str()), Some(class));
            let r = Row {
                denied_by: Some("default-deny".into()),
                pod_to_pod: Some(true),
                ..row("hostnet-debug", class, Class::TokenObtained)
            };
            let back = Row::from_json(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&r).unwrap()
            );
        }
        let e = Row::from_json(r#"{"pod":"x","imds":"teleported"}"#).unwrap_err();
        assert!(e.contains("no class teleported"), "{e}");
        assert!(Row::from_json("not json").is_err());
    }

    #[test]
    fn the_dry_run_keeps_every_row_open_the_spoofer_too() {
        let pod = |name: &str, known: bool| LabPod {
            name: name.into(),
            address: "10.244.0.10".into(),
            interface: "azvx".into(),
            role: String::new(),
            allowlisted: false,
            through_proxy: false,
            known,
            cgroup: None,
        };
        let mut open = row("web", Class::Exposed, Class::TokenObtained);
        open.node_local_dns = true;
        assert!(check(Cloud::Azure, Phase::DryRun, &pod("web", true), &open).is_empty());
        // Denied by the proxy in the dry run: a 403 where the request had to be forwarded.
        let denied = Row {
            sensitive: false,
            ..row("web", Class::BlockedByImdsguard, Class::BlockedByImdsguard)
        };
        assert!(!check(Cloud::Azure, Phase::DryRun, &pod("web", true), &denied).is_empty());
        // The spoofer's borrowed address is not dropped either: the tables drop nothing.
        let mut dropped = row("spoofer", Class::BlockedTimeout, Class::BlockedTimeout);
        dropped.hostgaplugin = Class::BlockedTimeout;
        dropped.node_local_dns = true;
        let e = check(
            Cloud::Azure,
            Phase::DryRun,
            &pod("spoofer", false),
            &dropped,
        );
        assert!(
            e.iter()
                .any(|e| e.contains("expected to get a token in phase dry-run")),
            "{e:?}"
        );
        let spoofer_open = Row {
            pod: "spoofer".into(),
            ..open.clone()
        };
        assert!(
            check(
                Cloud::Azure,
                Phase::DryRun,
                &pod("spoofer", false),
                &spoofer_open
            )
            .is_empty()
        );
        // In the proxy phase the same spoofer is dropped, as expected.
        assert!(check(Cloud::Azure, Phase::Proxy, &pod("spoofer", false), &dropped).is_empty());
    }

    #[test]
    fn a_host_network_pod_the_rules_select_gets_only_imds_through_the_proxy() {
        let monitoring = LabPod {
            name: "hostnet-monitoring".into(),
            address: "10.224.0.4".into(),
            interface: "(the node itself)".into(),
            role: String::new(),
            allowlisted: true,
            through_proxy: true,
            known: true,
            cgroup: None,
        };
        let mut through = row("hostnet-monitoring", Class::Exposed, Class::TokenObtained);
        through.node_local_dns = true;
        through.hostgaplugin = Class::BlockedTimeout;
        // Proxy mode: a token from the proxy, WireServer and HostGAPlugin dropped.
        assert!(check(Cloud::Azure, Phase::Proxy, &monitoring, &through).is_empty());
        let direct = Row {
            wireserver: Class::Exposed,
            hostgaplugin: Class::Exposed,
            ..through.clone()
        };
        let e = check(Cloud::Azure, Phase::Proxy, &monitoring, &direct);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("WireServer ended exposed in phase proxy"),
            "{e:?}"
        );
        let denied = Row {
            token: Class::BlockedByImdsguard,
            sensitive: false,
            ..through.clone()
        };
        assert!(
            check(Cloud::Azure, Phase::Proxy, &monitoring, &denied)[0]
                .contains("expected to get a token in phase proxy")
        );
        // Block mode: expected, so everything is open to it.
        assert!(check(Cloud::Azure, Phase::Block, &monitoring, &direct).is_empty());
    }
}
