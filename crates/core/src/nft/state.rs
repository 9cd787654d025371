//! A listing of the table (or a batch that builds it) read into typed values with the
//! `nftables` crate's schema types, and what differs between two of them: the agent's
//! check compares what `nft` lists with what [`super::ruleset_with_known`] builds, both
//! read by the same reader.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use nftables::expr::{Expression, NamedExpression};
use nftables::schema;
use nftables::stmt::{self, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfHook};
use serde::Serialize;
use serde_json::Value;

use super::config::{DRY_RUN_MARKER, Mode};
use super::counters::CounterValue;
pub use super::listing::NftParseError;
use super::listing::{objects, ours, single};
use super::pairs::SourcePair;
use super::{FAMILY, MODE_MARKER, TABLE, chain, counter, set};

/// One rule as data: its statements, read with the `nftables` crate's schema types, and
/// its comment. Rules compare by content, never by handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleState {
    /// Its statements (match expressions and verdicts).
    pub expr: RuleExpr,
    /// Its comment (`imdsguard mode=block` names the mode).
    pub comment: Option<String>,
}

/// A rule's statements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RuleExpr {
    /// Statements the schema knows; anonymous counters' values are left out, so that
    /// traffic never makes two rules differ.
    Statements(Vec<nftables::stmt::Statement<'static>>),
    /// Statements the schema does not know (not a rule imdsguard writes), as listed.
    Unknown(Value),
}

impl RuleState {
    /// A rule object (listed, or the body of an `add rule` command): its statements with
    /// the schema's types, or as listed when the schema does not know one of them.
    fn from_body(body: Value) -> RuleState {
        match serde_json::from_value::<schema::Rule<'static>>(body.clone()) {
            Ok(rule) => RuleState::from_statements(
                rule.expr.into_owned(),
                rule.comment.map(|c| c.into_owned()),
            ),
            Err(_) => RuleState {
                expr: RuleExpr::Unknown(body.get("expr").cloned().unwrap_or(Value::Null)),
                comment: body
                    .get("comment")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
        }
    }

    /// Anonymous counters' values are left out, so that traffic never makes two rules
    /// differ.
    fn from_statements(mut stmts: Vec<Statement<'static>>, comment: Option<String>) -> RuleState {
        for s in &mut stmts {
            if let Statement::Counter(stmt::Counter::Anonymous(c)) = s {
                *c = None;
            }
        }
        RuleState {
            expr: RuleExpr::Statements(stmts),
            comment,
        }
    }
}

impl fmt::Display for RuleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expr = serde_json::to_string(&self.expr).unwrap_or_else(|_| "?".into());
        match &self.comment {
            Some(c) => write!(f, "{expr} comment {c:?}"),
            None => f.write_str(&expr),
        }
    }
}

/// One chain of the table as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainState {
    /// The chain's name.
    pub name: String,
    /// The hook of a base chain (`forward`, `input`, `prerouting`).
    pub hook: Option<NfHook>,
    /// The type of a base chain (`filter`, `nat`).
    pub kind: Option<NfChainType>,
    /// The priority of a base chain.
    pub prio: Option<i32>,
    /// The policy of a base chain (`accept`).
    pub policy: Option<NfChainPolicy>,
    /// Its rules' handles, in order (a rebuild gives new handles).
    pub rule_handles: Vec<u64>,
    /// Its rules, in order.
    pub rules: Vec<RuleState>,
}

/// The sets whose elements the kernel adds (a rule updates them): never compared.
const DYNAMIC_SETS: &[&str] = &[
    set::DROPPED_V4,
    set::DROPPED_V6,
    set::OBSERVED_V4,
    set::OBSERVED_V6,
];

/// What a check found different from the table imdsguard builds, by kind (the agent
/// counts repairs by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DifferenceKind {
    /// The table is not there.
    Missing,
    /// A chain is missing, extra, or hooked differently.
    Chain,
    /// A rule is missing, extra, moved, or has other statements or another comment.
    Rule,
    /// A set or a named counter is missing.
    Object,
    /// A set holds other elements than it should.
    Elements,
    /// The verdict rules name another mode.
    Mode,
}

impl DifferenceKind {
    /// `missing`, `chain`, `rule`, `object`, `elements`, `mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            DifferenceKind::Missing => "missing",
            DifferenceKind::Chain => "chain",
            DifferenceKind::Rule => "rule",
            DifferenceKind::Object => "object",
            DifferenceKind::Elements => "elements",
            DifferenceKind::Mode => "mode",
        }
    }
}

/// One difference between the listed table and the one imdsguard builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// What kind of thing differs.
    pub kind: DifferenceKind,
    /// What differs, for the log (rules and elements as listed).
    pub detail: String,
}

impl Difference {
    fn new(kind: DifferenceKind, detail: String) -> Difference {
        Difference { kind, detail }
    }

    /// The table is not installed.
    pub fn missing() -> Difference {
        Difference::new(
            DifferenceKind::Missing,
            format!("table {FAMILY} {TABLE} is not installed"),
        )
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The table as `nft -j list table inet imdsguard` (or a batch from [`ruleset`](super::ruleset())) shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableState {
    /// The table's handle (a rebuild gives a new one).
    pub handle: Option<u64>,
    /// Chains in listing order.
    pub chains: Vec<ChainState>,
    /// Sets and their element count.
    pub sets: BTreeMap<String, usize>,
    /// Every set's elements, each written `a . b . c` (a concatenation's parts).
    pub elements: BTreeMap<String, BTreeSet<String>>,
    /// The allow sets' entries.
    pub allowed: Vec<SourcePair>,
    /// The known sets' entries.
    pub known: Vec<SourcePair>,
    /// The named counters.
    pub counters: Vec<CounterValue>,
    /// The mode named by the verdict rules' comments (`imdsguard mode=…`).
    pub mode: Option<Mode>,
    /// The verdict rules' comments say a dry run (`imdsguard mode=proxy dry-run`): what
    /// the mode would drop is let through.
    pub dry_run: bool,
}

impl TableState {
    /// Reads a listing of the table. An answer without our table gives `Ok(None)`.
    pub fn parse(text: &str) -> Result<Option<TableState>, NftParseError> {
        TableState::from_objects(objects(text)?, false)
    }

    /// The table a batch from [`ruleset`](super::ruleset()) would create (handles are `None`/empty).
    pub fn from_batch(batch: &Value) -> Option<TableState> {
        let items = batch.get("nftables")?.as_array()?.clone();
        TableState::from_objects(items, true).ok().flatten()
    }

    /// Reads listed objects (`{"chain": {...}}`) or batch commands (`{"add": {"chain":
    /// {...}}}`, `{"delete": {"table": ...}}`) of our table; each object is read with the
    /// schema's type, and one that does not read is left out, so that the check finds it
    /// missing and repairs it.
    fn from_objects(items: Vec<Value>, batch: bool) -> Result<Option<TableState>, NftParseError> {
        let mut state: Option<TableState> = None;
        let mut modes: Vec<(Mode, bool)> = Vec::new();
        for item in items {
            let (verb, inner) = if batch {
                match single(item) {
                    Some(command) => command,
                    None => continue,
                }
            } else {
                ("add".to_owned(), item)
            };
            let Some((kind, body)) = single(inner) else {
                continue;
            };
            let table_key = if kind == "table" { "name" } else { "table" };
            if !ours(&body, table_key) {
                continue;
            }
            match (verb.as_str(), kind.as_str()) {
                ("delete", "table") => {
                    state = None;
                    modes.clear();
                }
                ("add", "table") => {
                    let handle = serde_json::from_value::<schema::Table<'static>>(body)
                        .ok()
                        .and_then(|t| t.handle);
                    state.get_or_insert_with(TableState::default).handle = handle.map(u64::from);
                }
                ("add", "chain") => {
                    let (Some(s), Ok(c)) = (
                        state.as_mut(),
                        serde_json::from_value::<schema::Chain<'static>>(body),
                    ) else {
                        continue;
                    };
                    s.chains.push(ChainState {
                        name: c.name.into_owned(),
                        hook: c.hook,
                        kind: c._type,
                        prio: c.prio,
                        policy: c.policy,
                        rule_handles: Vec::new(),
                        rules: Vec::new(),
                    });
                }
                ("add", "rule") => {
                    let Some(s) = state.as_mut() else { continue };
                    let chain = body.get("chain").and_then(Value::as_str).unwrap_or("");
                    let handle = body.get("handle").and_then(Value::as_u64).unwrap_or(0);
                    let chain = chain.to_owned();
                    let rule = RuleState::from_body(body);
                    if let Some(m) = rule.comment.as_deref().and_then(parse_marker) {
                        modes.push(m);
                    }
                    if let Some(c) = s.chains.iter_mut().find(|c| c.name == chain) {
                        c.rule_handles.push(handle);
                        c.rules.push(rule);
                    }
                }
                ("add", "set") => {
                    let Some(s) = state.as_mut() else { continue };
                    let name = body
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let elems: Vec<Expression<'static>> = match serde_json::from_value::<
                        schema::Set<'static>,
                    >(body)
                    {
                        Ok(listed) => listed.elem.map(|e| e.into_owned()).unwrap_or_default(),
                        // A set the schema cannot read is not one imdsguard built:
                        // it differs from every expected set.
                        Err(e) => {
                            s.sets.insert(name.clone(), 0);
                            s.elements
                                .insert(name, BTreeSet::from([format!("(unreadable set: {e})")]));
                            continue;
                        }
                    };
                    s.sets.insert(name.clone(), elems.len());
                    s.elements
                        .insert(name.clone(), elems.iter().map(element_text).collect());
                    let pairs = elems.iter().filter_map(parse_pair);
                    match name.as_str() {
                        set::ALLOW_V4 | set::ALLOW_V6 => s.allowed.extend(pairs),
                        set::KNOWN_V4 | set::KNOWN_V6 => s.known.extend(pairs),
                        _ => {}
                    }
                }
                ("add", "counter") => {
                    if let (Some(s), Some(c)) = (state.as_mut(), CounterValue::from_body(&body)) {
                        s.counters.push(c);
                    }
                }
                _ => {}
            }
        }
        if let Some(s) = state.as_mut() {
            // Proxy mode marks its redirect rules `proxy` and its filter rules `proxy` too.
            modes.sort();
            modes.dedup();
            (s.mode, s.dry_run) = match modes.as_slice() {
                [(m, dry)] => (Some(*m), *dry),
                _ => (None, false),
            };
            s.allowed.sort();
            s.known.sort();
        }
        Ok(state)
    }

    /// The chain called `name`.
    pub fn chain(&self, name: &str) -> Option<&ChainState> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The value of the counter called `name`.
    pub fn counter(&self, name: &str) -> Option<&CounterValue> {
        self.counters.iter().find(|c| c.name == name)
    }

    /// What differs from `expected` (the table [`super::ruleset_with_known`] builds, read with
    /// [`TableState::from_batch`]); empty when the table is as imdsguard built it.
    ///
    /// Compared: the chains (hook, type, priority, policy), every rule of every chain in
    /// order (statements, that is match expressions and verdicts, and comment), the sets
    /// and their elements (the allow, known, protected and proxied sets; not the
    /// dropped-source and observed-connection sets, which the kernel fills), the named
    /// counters' presence, the
    /// mode. Not compared: handles, counter values, element counters and expiry times.
    pub fn differences(&self, expected: &TableState) -> Vec<Difference> {
        use DifferenceKind as K;
        let mut out = Vec::new();
        for want in &expected.chains {
            let Some(have) = self.chain(&want.name) else {
                out.push(Difference::new(
                    K::Chain,
                    format!("chain {} is missing", want.name),
                ));
                continue;
            };
            let base = |c: &ChainState| (c.hook, c.kind, c.prio, c.policy);
            if base(have) != base(want) {
                out.push(Difference::new(
                    K::Chain,
                    format!(
                        "chain {} is {}, expected {}",
                        want.name,
                        describe_base(have),
                        describe_base(want)
                    ),
                ));
            }
            out.extend(rule_differences(&want.name, &have.rules, &want.rules));
        }
        for have in &self.chains {
            if expected.chain(&have.name).is_none() {
                out.push(Difference::new(
                    K::Chain,
                    format!("unexpected chain {}", have.name),
                ));
            }
        }
        for (name, want) in &expected.elements {
            let Some(have) = self.elements.get(name) else {
                out.push(Difference::new(K::Object, format!("set {name} is missing")));
                continue;
            };
            if DYNAMIC_SETS.contains(&name.as_str()) || have == want {
                continue;
            }
            let extra: Vec<&str> = have.difference(want).map(String::as_str).collect();
            let missing: Vec<&str> = want.difference(have).map(String::as_str).collect();
            let mut parts = Vec::new();
            if !extra.is_empty() {
                parts.push(format!("holds {} it should not", extra.join(", ")));
            }
            if !missing.is_empty() {
                parts.push(format!("lacks {}", missing.join(", ")));
            }
            out.push(Difference::new(
                K::Elements,
                format!("set {name} {}", parts.join(" and ")),
            ));
        }
        for name in self.elements.keys() {
            if !expected.elements.contains_key(name) {
                out.push(Difference::new(K::Object, format!("unexpected set {name}")));
            }
        }
        for name in counter::ALL {
            if self.counter(name).is_none() {
                out.push(Difference::new(
                    K::Object,
                    format!("counter {name} is missing"),
                ));
            }
        }
        if (self.mode, self.dry_run) != (expected.mode, expected.dry_run) {
            let describe = |mode: Option<Mode>, dry: bool| {
                let m = mode.map_or("unknown".into(), |m| m.to_string());
                if dry { format!("{m} (dry run)") } else { m }
            };
            out.push(Difference::new(
                K::Mode,
                format!(
                    "mode is {}, expected {}",
                    describe(self.mode, self.dry_run),
                    describe(expected.mode, expected.dry_run)
                ),
            ));
        }
        out
    }

    /// Whether the table can enforce at all: the forward and input chains are hooked, each
    /// with at least one pod-interface rule, and the verdict rules name a mode.
    pub fn is_enforcing(&self) -> bool {
        let hooked = |name: &str, hook: NfHook| {
            self.chain(name)
                .is_some_and(|c| c.hook == Some(hook) && !c.rule_handles.is_empty())
        };
        let guards = [chain::GUARD_V4, chain::GUARD_V6]
            .iter()
            .all(|g| self.chain(g).is_some_and(|c| c.rule_handles.len() >= 2));
        let nat = self.mode != Some(Mode::Proxy) || hooked(chain::PREROUTING, NfHook::Prerouting);
        hooked(chain::FORWARD, NfHook::Forward)
            && hooked(chain::INPUT, NfHook::Input)
            && guards
            && nat
            && self.mode.is_some()
    }
}

/// A mode marker's mode and whether it says a dry run: `imdsguard mode=proxy` →
/// (proxy, false), `imdsguard mode=proxy dry-run` → (proxy, true); anything else, `None`.
fn parse_marker(comment: &str) -> Option<(Mode, bool)> {
    let rest = comment.strip_prefix(MODE_MARKER)?;
    match rest.strip_suffix(DRY_RUN_MARKER) {
        Some(m) => Some((m.parse().ok()?, true)),
        None => Some((rest.parse().ok()?, false)),
    }
}

fn describe_base(c: &ChainState) -> String {
    /// The name nft gives a schema value (`filter`, `forward`, `accept`).
    fn name<T: Serialize>(v: &Option<T>) -> String {
        match v.as_ref().map(serde_json::to_value) {
            Some(Ok(Value::String(s))) => s,
            _ => "?".into(),
        }
    }
    match (&c.kind, &c.hook) {
        (None, None) => "a regular chain".into(),
        _ => format!(
            "type {} hook {} priority {} policy {}",
            name(&c.kind),
            name(&c.hook),
            c.prio.map_or("?".into(), |p| p.to_string()),
            name(&c.policy),
        ),
    }
}

/// The rules of `chain` that differ, position by position; with another number of
/// rules, also the count.
fn rule_differences(chain: &str, have: &[RuleState], want: &[RuleState]) -> Vec<Difference> {
    let mut out = Vec::new();
    if have.len() != want.len() {
        out.push(Difference::new(
            DifferenceKind::Rule,
            format!(
                "chain {chain} has {} rule(s), expected {}",
                have.len(),
                want.len()
            ),
        ));
    }
    for i in 0..have.len().max(want.len()) {
        let detail = match (have.get(i), want.get(i)) {
            (Some(h), Some(w)) if h == w => continue,
            (Some(h), Some(w)) => format!("chain {chain} rule {} is {h}, expected {w}", i + 1),
            (Some(h), None) => format!("chain {chain} rule {} is extra: {h}", i + 1),
            (None, Some(w)) => format!("chain {chain} rule {} is missing: {w}", i + 1),
            (None, None) => continue,
        };
        out.push(Difference::new(DifferenceKind::Rule, detail));
    }
    out
}

/// An element as text: a concatenation's parts joined with ` . ` (`azvweb . 10.244.0.11`,
/// `169.254.169.254 . tcp . 80`); an element's counter, expiry and comment are left out.
fn element_text(elem: &Expression<'_>) -> String {
    match elem {
        // Addresses in one spelling (nft writes `::1.2.3.4` where Rust writes
        // `::102:304`).
        Expression::String(s) => s
            .parse::<IpAddr>()
            .map_or_else(|_| s.to_string(), |ip| ip.to_string()),
        Expression::Number(n) => n.to_string(),
        Expression::Named(NamedExpression::Concat(parts)) => parts
            .iter()
            .map(element_text)
            .collect::<Vec<_>>()
            .join(" . "),
        Expression::Named(NamedExpression::Elem(e)) => element_text(&e.val),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// A plain `"iface" . addr` concatenation, or one inside an element that carries a
/// comment or counter.
fn parse_pair(elem: &Expression<'_>) -> Option<SourcePair> {
    let parts = match elem {
        Expression::Named(NamedExpression::Concat(parts)) => parts,
        Expression::Named(NamedExpression::Elem(e)) => match &*e.val {
            Expression::Named(NamedExpression::Concat(parts)) => parts,
            _ => return None,
        },
        _ => return None,
    };
    let (Some(Expression::String(iface)), Some(Expression::String(addr))) =
        (parts.first(), parts.get(1))
    else {
        return None;
    };
    SourcePair::new(iface, addr.parse().ok()?).ok()
}
