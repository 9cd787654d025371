//! Conformance against an external NetworkPolicy oracle: the golden connectivity lists of
//! np-guard/netpol-analyzer (`shared/corpus/netpol-analyzer`, next to the workspace).
//!
//! For every plain-NetworkPolicy case (and, in a second test, every case with
//! AdminNetworkPolicy, BaselineAdminNetworkPolicy or ClusterNetworkPolicy), the test asks
//! `imdsguard audit --format json` for the egress verdict of every workload towards a
//! deterministic sample of external IPv4 addresses, ports and protocols, and compares
//! each `policy_allowed` with the golden list: workload W may send to X on (P, N) exactly
//! when the golden has `W => R[External] : CONNS` with X in R and (P, N) in CONNS (a
//! workload with no such line may reach nothing outside). Every workload the golden
//! names, as a source or a destination, must be in the report.
//!
//! The same check as `shared/tools/netpol_conformance.py`, with a denser sample (both
//! sides of every range and port-span bound).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The corpus, relative to this crate: `<workspace>/../shared/corpus/netpol-analyzer/cases`.
const CASES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/corpus/netpol-analyzer/cases"
);

/// How many plain-NetworkPolicy cases the corpus holds. A corpus that silently shrinks
/// (or a skip rule that grows) must fail the test.
const EXPECTED_CASES: usize = 34;

/// How many cases hold AdminNetworkPolicy / BaselineAdminNetworkPolicy objects.
const EXPECTED_ANP_CASES: usize = 48;

/// Upper bound on targets per case, to keep the run short.
const MAX_TARGETS: usize = 3000;

/// The target that is always kept when a case's sample is thinned out.
const IMDS: (u32, u16, Proto) = (0xA9FE_A9FE, 80, Proto::Tcp); // 169.254.169.254:80/TCP

const BASE_IPS: [&str; 4] = ["169.254.169.254", "168.63.129.16", "8.8.8.8", "10.0.0.1"];
const BASE_PORTS: [u16; 6] = [1, 53, 80, 443, 32526, 65535];
const POLICY_KINDS_SKIPPED: [&str; 3] = [
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
    "ClusterNetworkPolicy",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    fn parse(s: &str) -> Option<Proto> {
        Proto::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Allowed port spans per protocol (`All Connections` is every protocol, 1-65535).
type Conns = BTreeMap<Proto, Vec<(u16, u16)>>;

fn parse_conns(s: &str) -> Conns {
    let s = s.trim();
    if s == "All Connections" {
        return Proto::ALL
            .into_iter()
            .map(|p| (p, vec![(1, 65535)]))
            .collect();
    }
    let mut out = Conns::new();
    let mut proto = None;
    for tok in s.split(',') {
        let mut tok = tok.trim();
        if let Some((p, rest)) = tok.split_once(' ')
            && let Some(p) = Proto::parse(p)
        {
            proto = Some(p);
            tok = rest.trim();
        }
        let proto = proto.unwrap_or_else(|| panic!("connection set `{s}`: no protocol"));
        let (a, b) = tok.split_once('-').unwrap_or((tok, tok));
        let port = |x: &str| -> u16 {
            x.trim()
                .parse()
                .unwrap_or_else(|_| panic!("connection set `{s}`: bad port `{x}`"))
        };
        out.entry(proto).or_default().push((port(a), port(b)));
    }
    out
}

fn conns_allow(conns: &Conns, proto: Proto, port: u16) -> bool {
    conns
        .get(&proto)
        .is_some_and(|spans| spans.iter().any(|&(a, b)| a <= port && port <= b))
}

/// `a.b.c.d-e.f.g.h[External]` as an inclusive range of IPv4 addresses.
fn external_range(peer: &str) -> Option<(u32, u32)> {
    let range = peer.strip_suffix("[External]")?;
    let (lo, hi) = range.split_once('-')?;
    let ip = |s: &str| -> u32 {
        s.parse::<Ipv4Addr>()
            .unwrap_or_else(|_| panic!("bad external range `{peer}`"))
            .into()
    };
    Some((ip(lo), ip(hi)))
}

/// What the golden list says about egress to external addresses.
#[derive(Default)]
struct Golden {
    /// Workload (`ns/name[Kind]`) → the external ranges it may reach, with connections.
    egress: BTreeMap<String, Vec<(u32, u32, Conns)>>,
    /// Every external range named in the list (either direction).
    ranges: BTreeSet<(u32, u32)>,
    /// Every workload named in the list, as a source or a destination.
    workloads: BTreeSet<String>,
}

fn parse_golden(text: &str) -> Golden {
    let mut g = Golden::default();
    for line in text.lines() {
        let Some((src, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        let Some((dst, conns)) = rest.split_once(" : ") else {
            continue;
        };
        let (src_ext, dst_ext) = (external_range(src), external_range(dst));
        g.ranges.extend(src_ext);
        g.ranges.extend(dst_ext);
        // Pseudo-peers such as `{ingress-controller}` are not workloads.
        for peer in [src, dst] {
            if is_workload_peer(peer) {
                g.workloads.insert(peer.to_string());
            }
        }
        if src_ext.is_none()
            && let Some((lo, hi)) = dst_ext
        {
            g.egress
                .entry(src.to_string())
                .or_default()
                .push((lo, hi, parse_conns(conns)));
        }
    }
    g
}

/// `namespace/name[Kind]`.
fn is_workload_peer(peer: &str) -> bool {
    peer.split_once('/').is_some_and(|(ns, rest)| {
        !ns.is_empty()
            && rest
                .split_once('[')
                .is_some_and(|(name, kind)| !name.is_empty() && kind.ends_with(']'))
    })
}

fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            manifest_files(&p, out);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(p);
        }
    }
}

/// Whether the text has `kind: X` (YAML) or `"kind": "X"` (JSON) for X one of `kinds`.
fn declares_kind(text: &str, kinds: &[&str]) -> bool {
    text.match_indices("kind").any(|(i, _)| {
        let rest = &text[i + "kind".len()..];
        let rest = rest.strip_prefix('"').unwrap_or(rest).trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            return false;
        };
        let rest = rest.trim_start();
        let rest = rest.strip_prefix('"').unwrap_or(rest);
        kinds.iter().any(|k| {
            rest.strip_prefix(k)
                .is_some_and(|after| !after.starts_with(|c: char| c.is_ascii_alphanumeric()))
        })
    })
}

fn is_plain_netpol_case(case: &Path) -> bool {
    let mut files = Vec::new();
    manifest_files(case, &mut files);
    !files.iter().any(|f| {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        declares_kind(&String::from_utf8_lossy(&bytes), &POLICY_KINDS_SKIPPED)
    })
}

/// splitmix64: a small deterministic generator, seeded per case.
struct Rng(u64);

impl Rng {
    fn seeded(name: &str) -> Rng {
        // FNV-1a of the case name.
        let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type Sample = (u32, u16, Proto);

/// The addresses, ports and protocols to ask about, at most [`MAX_TARGETS`], always
/// including 169.254.169.254:80/TCP.
fn sample_targets(case_name: &str, g: &Golden) -> Vec<Sample> {
    let mut ips: BTreeSet<u32> = BASE_IPS
        .iter()
        .map(|s| u32::from(s.parse::<Ipv4Addr>().expect("constant address")))
        .collect();
    for &(lo, hi) in &g.ranges {
        ips.extend([lo, hi, lo + (hi - lo) / 2]);
        ips.extend(
            [lo.checked_sub(1), lo.checked_add(1), hi.checked_sub(1)]
                .into_iter()
                .flatten(),
        );
        ips.extend(hi.checked_add(1));
    }
    let mut ports: BTreeMap<Proto, BTreeSet<u16>> = Proto::ALL
        .into_iter()
        .map(|p| (p, BASE_PORTS.into_iter().collect()))
        .collect();
    for rows in g.egress.values() {
        for (_, _, conns) in rows {
            for (proto, spans) in conns {
                for &(a, b) in spans {
                    let set = ports.get_mut(proto).expect("every protocol");
                    for x in [
                        i32::from(a) - 1,
                        i32::from(a),
                        i32::from(a) + 1,
                        i32::from(b) - 1,
                        i32::from(b),
                        i32::from(b) + 1,
                    ] {
                        if let Ok(x) = u16::try_from(x)
                            && x >= 1
                        {
                            set.insert(x);
                        }
                    }
                }
            }
        }
    }
    let mut all: Vec<Sample> = Vec::new();
    for &ip in &ips {
        for (&proto, set) in &ports {
            all.extend(set.iter().map(|&port| (ip, port, proto)));
        }
    }
    assert!(all.contains(&IMDS), "the sample always holds IMDS");
    if all.len() <= MAX_TARGETS {
        return all;
    }
    // Deterministic partial Fisher-Yates shuffle, then keep IMDS.
    let mut rng = Rng::seeded(case_name);
    for i in 0..MAX_TARGETS {
        let j = i + rng.below(all.len() - i);
        all.swap(i, j);
    }
    all.truncate(MAX_TARGETS);
    if !all.contains(&IMDS) {
        all[MAX_TARGETS - 1] = IMDS;
    }
    all.sort();
    all
}

fn target_text(&(ip, port, proto): &Sample) -> String {
    format!("{}:{port}/{}", Ipv4Addr::from(ip), proto.name())
}

fn parse_target(text: &str) -> Sample {
    let parsed = (|| {
        let (addr, proto) = text.rsplit_once('/')?;
        let (ip, port) = addr.rsplit_once(':')?;
        Some((
            ip.parse::<Ipv4Addr>().ok()?.into(),
            port.parse().ok()?,
            Proto::parse(proto)?,
        ))
    })();
    parsed.unwrap_or_else(|| panic!("unexpected target `{text}` in the report"))
}

/// A scratch file removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "imdsguard-conformance-{}-{tag}.txt",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("write targets file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Checks one case; returns the number of verdicts compared, or what went wrong.
fn check_case(case: &Path) -> Result<usize, String> {
    let name = case
        .file_name()
        .and_then(|n| n.to_str())
        .expect("case name");
    let golden_text = std::fs::read_to_string(case.join("expected_connlist.txt"))
        .map_err(|e| format!("cannot read golden: {e}"))?;
    let golden = parse_golden(&golden_text);
    let targets = sample_targets(name, &golden);
    let file_text: String = targets.iter().map(|t| target_text(t) + "\n").collect();
    let targets_file = TempFile::new(name, &format!("# {name}\n{file_text}"));

    let out = Command::new(env!("CARGO_BIN_EXE_imdsguard"))
        .arg("audit")
        .arg("-f")
        .arg(case)
        .arg("--targets-file")
        .arg(&targets_file.0)
        .args(["--format", "json"])
        .output()
        .expect("run imdsguard");
    let code = out.status.code();
    if !matches!(code, Some(0 | 1)) {
        return Err(format!(
            "exit status {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(400)
                .collect::<String>()
        ));
    }
    let report: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("output is not JSON: {e}"))?;

    let echoed: Vec<Sample> = report["targets"]
        .as_array()
        .ok_or("no `targets` array")?
        .iter()
        .map(|t| parse_target(t.as_str().expect("target string")))
        .collect();
    if echoed != targets {
        return Err(format!(
            "the report's targets differ from the {} in the targets file",
            targets.len()
        ));
    }

    let workloads = report["workloads"]
        .as_array()
        .ok_or("no `workloads` array")?;
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    let mut compared = 0;
    for w in workloads {
        let key = format!(
            "{}/{}[{}]",
            w["namespace"].as_str().unwrap_or("?"),
            w["name"].as_str().unwrap_or("?"),
            w["kind"].as_str().unwrap_or("?")
        );
        let rows = golden.egress.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let verdicts = w["verdicts"]
            .as_array()
            .ok_or("workload without verdicts")?;
        if verdicts.len() != targets.len() {
            return Err(format!(
                "{key}: {} verdicts for {} targets",
                verdicts.len(),
                targets.len()
            ));
        }
        for (v, t) in verdicts.iter().zip(&targets) {
            let got_target = parse_target(v["target"].as_str().expect("target string"));
            if got_target != *t {
                return Err(format!("{key}: verdicts are not in target order"));
            }
            let (ip, port, proto) = *t;
            let want = rows
                .iter()
                .any(|(lo, hi, c)| *lo <= ip && ip <= *hi && conns_allow(c, proto, port));
            let got = v["policy_allowed"]
                .as_bool()
                .ok_or("verdict without policy_allowed")?;
            if got != want {
                wrong.push(format!(
                    "{key} -> {}: policy_allowed {got}, golden {want}",
                    target_text(t)
                ));
            }
            compared += 1;
        }
        seen.insert(key);
    }
    let missing: Vec<&String> = golden.workloads.difference(&seen).collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} workload(s) of the golden list missing from the report, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if !wrong.is_empty() {
        return Err(format!(
            "{} wrong verdict(s), e.g.\n      {}",
            wrong.len(),
            wrong[..wrong.len().min(5)].join("\n      ")
        ));
    }
    if compared == 0 {
        return Err("no verdicts at all".into());
    }
    Ok(compared)
}

#[test]
fn golden_connection_list_parsing() {
    let c = parse_conns("SCTP 1-9002,9004-65535,TCP 1-79,81-65535,UDP 53");
    assert!(conns_allow(&c, Proto::Sctp, 9002));
    assert!(!conns_allow(&c, Proto::Sctp, 9003));
    assert!(conns_allow(&c, Proto::Sctp, 65535));
    assert!(!conns_allow(&c, Proto::Tcp, 80));
    assert!(conns_allow(&c, Proto::Tcp, 81));
    assert!(conns_allow(&c, Proto::Udp, 53));
    assert!(!conns_allow(&c, Proto::Udp, 54));
    let all = parse_conns("All Connections");
    assert!(
        Proto::ALL
            .iter()
            .all(|&p| conns_allow(&all, p, 1) && conns_allow(&all, p, 65535))
    );
    assert_eq!(
        external_range("0.0.0.0-9.255.255.255[External]"),
        Some((0, 0x09FF_FFFF))
    );
    assert_eq!(external_range("default/web[Deployment]"), None);
    let g = parse_golden(
        "a/w[Pod] => 1.0.0.0-1.0.0.255[External] : TCP 80\n\
         2.0.0.0-2.0.0.0[External] => a/w[Pod] : All Connections\n\
         a/v[Deployment] => a/w[Pod] : All Connections\n\
         {ingress-controller} => a/w[Pod] : TCP 8080\n",
    );
    assert_eq!(g.ranges.len(), 2);
    assert_eq!(g.egress.len(), 1);
    assert_eq!(
        g.workloads.iter().collect::<Vec<_>>(),
        ["a/v[Deployment]", "a/w[Pod]"]
    );
    assert!(declares_kind(
        "apiVersion: x\nkind: AdminNetworkPolicy\n",
        &POLICY_KINDS_SKIPPED
    ));
    assert!(declares_kind(
        r#"{"kind" : "BaselineAdminNetworkPolicy"}"#,
        &POLICY_KINDS_SKIPPED
    ));
    assert!(!declares_kind(
        "kind: NetworkPolicy\n",
        &POLICY_KINDS_SKIPPED
    ));
}

#[test]
fn target_sample_is_capped_deterministic_and_keeps_imds() {
    let mut g = Golden::default();
    for i in 0..200u32 {
        g.ranges.insert((i << 24, (i << 24) | 0xFFFF));
    }
    let a = sample_targets("case", &g);
    assert_eq!(a.len(), MAX_TARGETS);
    assert!(a.contains(&IMDS));
    assert_eq!(a, sample_targets("case", &g), "same case, same sample");
    let small = sample_targets("case", &Golden::default());
    assert_eq!(small.len(), BASE_IPS.len() * BASE_PORTS.len() * 3);
}

#[test]
#[ignore = "needs ../shared"]
fn egress_verdicts_match_netpol_analyzer_golden_lists() {
    check_corpus(
        "egress_verdicts_match_netpol_analyzer_golden_lists",
        false,
        EXPECTED_CASES,
    );
}

/// The same check on the cases with AdminNetworkPolicy / BaselineAdminNetworkPolicy
/// (`anp_*`, `banp_*`, ...): the Admin tier, NetworkPolicy and the Baseline tier composed
/// by the generic engine.
#[test]
#[ignore = "needs ../shared"]
fn admin_network_policy_verdicts_match_netpol_analyzer_golden_lists() {
    check_corpus(
        "admin_network_policy_verdicts_match_netpol_analyzer_golden_lists",
        true,
        EXPECTED_ANP_CASES,
    );
}

/// Checks every plain (or, with `anp`, every cluster-scoped-policy) case of the corpus.
fn check_corpus(test: &str, anp: bool, expected: usize) {
    let root = Path::new(CASES);
    imdsguard_testkit::require_path(
        test,
        root,
        "the netpol-analyzer corpus: `shared/` beside the checkout, as in CI",
    );
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("read corpus")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("expected_connlist.txt").is_file())
        .collect();
    cases.sort();

    let mut checked = 0;
    let mut failures = Vec::new();
    for case in cases.iter().filter(|c| is_plain_netpol_case(c) != anp) {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        match check_case(case) {
            Ok(n) => eprintln!("PASS {name}: {n} verdicts agree"),
            Err(e) => {
                eprintln!("FAIL {name}: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases disagree with the golden lists:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert_eq!(
        checked,
        expected,
        "cases in {} (anp: {anp})",
        root.display()
    );
}
