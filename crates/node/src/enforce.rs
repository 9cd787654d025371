//! Applying and reading the `inet imdsguard` table with `nft` (conntrack flushes: [`crate::conntrack`]).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use imdsguard_core::nft::{
    self, CounterValue, Difference, DroppedSource, Mode, NftParseError, ObservedConnection,
    PairChanges, RulesetConfig, SourcePair, TableState, parse_counters, parse_dropped,
    parse_observed,
};
use serde::Serialize;

use crate::conntrack::{ConntrackOutcome, flush_conntrack};
use serde_json::Value;

use crate::NodeError;
use crate::exec::Exec;

/// Applies one JSON batch with `nft -j -f -`: one transaction, all or nothing.
pub fn apply(exec: &Exec, batch: &Value) -> Result<(), NodeError> {
    if batch["nftables"].as_array().is_some_and(Vec::is_empty) {
        return Ok(());
    }
    exec.run("nft", ["-j", "-f", "-"], Some(batch.to_string().as_bytes()))
        .map(drop)
        .map_err(nft_error)
}

/// A failed `nft` run as [`NodeError::Nft`].
pub(crate) fn nft_error(e: NodeError) -> NodeError {
    match e {
        NodeError::Command {
            command,
            status,
            stderr,
        } => NodeError::Nft {
            command,
            status,
            stderr,
        },
        other => other,
    }
}

/// What `nft ARGS` (a listing) prints, or `None` when the table or set it names is not
/// there ("No such file or directory").
pub(crate) fn nft_listing(exec: &Exec, args: &[&str]) -> Result<Option<String>, NodeError> {
    match exec.run("nft", args, None).map_err(nft_error) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.names_missing_file() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `inet imdsguard` (`nft -j list table inet imdsguard`); `None` when it is absent.
pub fn read_table(exec: &Exec) -> Result<Option<TableState>, NodeError> {
    match nft_listing(exec, &["-j", "list", "table", nft::FAMILY, nft::TABLE])? {
        Some(text) => Ok(TableState::parse(&text)?),
        None => Ok(None),
    }
}

/// The named counters (`nft -j list counters table inet imdsguard`); empty when the
/// table is absent.
pub fn read_counters(exec: &Exec) -> Result<Vec<CounterValue>, NodeError> {
    let args = ["-j", "list", "counters", "table", nft::FAMILY, nft::TABLE];
    match nft_listing(exec, &args)? {
        Some(text) => Ok(parse_counters(&text)?),
        None => Ok(Vec::new()),
    }
}

/// The elements of the sets `names` of `inet imdsguard` read with `parse`, sorted; a set
/// (or the table) that is absent adds none.
fn set_elements<T: Ord>(
    exec: &Exec,
    names: [&str; 2],
    parse: fn(&str) -> Result<Vec<T>, NftParseError>,
) -> Result<Vec<T>, NodeError> {
    let mut out = Vec::new();
    for name in names {
        let args = ["-j", "list", "set", nft::FAMILY, nft::TABLE, name];
        if let Some(text) = nft_listing(exec, &args)? {
            out.extend(parse(&text)?);
        }
    }
    out.sort();
    Ok(out)
}

/// The sources dropped in the last 10 minutes, with their packet counts: the elements
/// of `dropped_v4` and `dropped_v6` (`nft -j list set inet imdsguard dropped_v4`, then
/// v6), sorted. Empty when the table or a set is absent (observe mode records nothing).
pub fn dropped_sources(exec: &Exec) -> Result<Vec<DroppedSource>, NodeError> {
    set_elements(
        exec,
        [nft::set::DROPPED_V4, nft::set::DROPPED_V6],
        parse_dropped,
    )
}

/// The connections observe mode let through in the last 10 minutes, by source pair and
/// endpoint, with their counts: the elements of `observed_v4` and `observed_v6`, sorted.
/// Empty when the table or a set is absent (block and proxy modes record nothing).
pub fn observed_connections(exec: &Exec) -> Result<Vec<ObservedConnection>, NodeError> {
    set_elements(
        exec,
        [nft::set::OBSERVED_V4, nft::set::OBSERVED_V6],
        parse_observed,
    )
}

/// Removes `inet imdsguard` and the host table `inet imdsguard_host` (each one
/// transaction, nothing else touched). `true` when either was there.
pub fn uninstall_table(exec: &Exec) -> Result<bool, NodeError> {
    let present = read_table(exec)?.is_some();
    apply(exec, &nft::delete_table())?;
    let host = crate::host::uninstall_host(exec)?;
    Ok(present || host)
}

/// What is in place, as `nft` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// `inet imdsguard` exists.
    pub installed: bool,
    /// Its chains are hooked and its verdict rules are there (and, when the expected
    /// configuration is known, it matches it).
    pub enforcing: bool,
    /// The mode its verdict rules name.
    pub mode: Option<Mode>,
    /// The allow sets' entries.
    pub allowed: Vec<SourcePair>,
    /// The known sets' entries (proxy mode redirects only these pairs).
    pub known: Vec<SourcePair>,
    /// The named counters.
    pub counters: Vec<CounterValue>,
    /// The host table (`inet imdsguard_host`, hostNetwork pods by cgroup) exists; its
    /// content is checked by [`crate::host::host_status`].
    pub host_table: bool,
    /// What is missing or different.
    pub problems: Vec<String>,
    /// What differs from the table the enforcer builds (chains, rules, set elements,
    /// mode), by kind; empty without an expected configuration.
    pub differences: Vec<Difference>,
}

impl Status {
    fn from_table(table: Option<TableState>, expected: Option<&TableState>) -> Status {
        match table {
            None => Status {
                installed: false,
                enforcing: false,
                mode: None,
                allowed: Vec::new(),
                known: Vec::new(),
                counters: Vec::new(),
                host_table: false,
                problems: vec![Difference::missing().to_string()],
                differences: vec![Difference::missing()],
            },
            Some(t) => {
                let differences = match expected {
                    Some(e) => t.differences(e),
                    None => Vec::new(),
                };
                let mut problems: Vec<String> =
                    differences.iter().map(ToString::to_string).collect();
                if !t.is_enforcing() && problems.is_empty() {
                    problems.push("chains or verdict rules are missing".into());
                }
                Status {
                    installed: true,
                    enforcing: problems.is_empty(),
                    mode: t.mode,
                    allowed: t.allowed,
                    known: t.known,
                    counters: t.counters,
                    host_table: false,
                    problems,
                    differences,
                }
            }
        }
    }
}

/// Whether our table and rules are in place, without knowing the configuration.
pub fn status(exec: &Exec) -> Result<Status, NodeError> {
    let mut s = Status::from_table(read_table(exec)?, None);
    s.host_table = crate::host::read_host_listing(exec)?.is_some();
    Ok(s)
}

/// What [`Enforcer::install`] and [`Enforcer::replace`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    /// The mode now enforced.
    pub mode: Mode,
    /// Allowlisted (interface, address) pairs.
    pub allowed: usize,
    /// Known (interface, address) pairs (the pods the node hosts).
    pub known: usize,
    /// Whether a previous table was replaced (its counters carried over).
    pub replaced: bool,
    /// The conntrack flush.
    pub conntrack: ConntrackOutcome,
    /// Time to apply the batch.
    #[serde(serialize_with = "millis")]
    pub apply_time: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The node's enforcement: owns the configuration and the allowlist, and keeps
/// `inet imdsguard` in step with them. It never removes the table by itself: when the
/// process exits or crashes the rules stay (fail closed); [`Enforcer::uninstall`] is the
/// only way out.
///
/// ```no_run
/// # fn demo() -> Result<(), imdsguard_node::NodeError> {
/// use imdsguard_core::nft::{Mode, RulesetConfig};
/// use imdsguard_core::target::Cloud;
/// use imdsguard_node::{Enforcer, Exec};
/// let mut enforcer = Enforcer::new(RulesetConfig::new(Mode::Block, &[Cloud::Azure]), Exec::here())?;
/// enforcer.install()?;                                   // atomic, conntrack flushed
/// enforcer.add_allowed("azv1a2b3c4d5e6", "10.244.0.10".parse().unwrap())?; // set change
/// assert!(enforcer.status()?.enforcing);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Enforcer {
    exec: Exec,
    config: RulesetConfig,
    allowed: BTreeSet<SourcePair>,
    known: BTreeSet<SourcePair>,
}

impl Enforcer {
    /// An enforcer for `config` (checked now), with an empty allowlist; nothing is
    /// applied until [`Enforcer::install`].
    pub fn new(config: RulesetConfig, exec: Exec) -> Result<Enforcer, NodeError> {
        config.validate()?;
        Ok(Enforcer {
            exec,
            config,
            allowed: BTreeSet::new(),
            known: BTreeSet::new(),
        })
    }

    /// Starts with `pairs` allowlisted (the pods the agent knows at start); applied by
    /// [`Enforcer::install`].
    pub fn with_allowed(mut self, pairs: impl IntoIterator<Item = SourcePair>) -> Enforcer {
        self.allowed.extend(pairs);
        self
    }

    /// Starts with `pairs` known: every pod the node hosts, as (interface, address).
    /// Proxy mode redirects only these to the proxy and drops the rest (the proxy tells
    /// callers apart by address, so an address from the wrong interface must not reach
    /// it). Applied by [`Enforcer::install`].
    pub fn with_known(mut self, pairs: impl IntoIterator<Item = SourcePair>) -> Enforcer {
        self.known.extend(pairs);
        self
    }

    /// The known pairs as the enforcer holds them.
    pub fn known(&self) -> impl Iterator<Item = &SourcePair> {
        self.known.iter()
    }

    /// The configuration.
    pub fn config(&self) -> &RulesetConfig {
        &self.config
    }

    /// Where the commands run.
    pub fn exec(&self) -> &Exec {
        &self.exec
    }

    /// The allowlist as the enforcer holds it.
    pub fn allowed(&self) -> impl Iterator<Item = &SourcePair> {
        self.allowed.iter()
    }

    /// Puts the table in place (replacing any previous one atomically, its counters
    /// carried over) with the current allowlist, then flushes conntrack toward the
    /// protected endpoints.
    pub fn install(&mut self) -> Result<InstallReport, NodeError> {
        let previous = read_table(&self.exec)?;
        let counters = previous
            .as_ref()
            .map(|t| t.counters.clone())
            .unwrap_or_default();
        let allowed: Vec<SourcePair> = self.allowed.iter().cloned().collect();
        let known: Vec<SourcePair> = self.known.iter().cloned().collect();
        let batch = nft::ruleset_with_known(&self.config, &allowed, &known, &counters)?;
        let started = Instant::now();
        apply(&self.exec, &batch)?;
        let apply_time = started.elapsed();
        let conntrack = flush_conntrack(&self.exec, &self.config.protected, None);
        for w in &conntrack.warnings {
            tracing::warn!(warning = %w, "conntrack");
        }
        tracing::info!(mode = %self.config.mode, allowed = allowed.len(), known = known.len(), deleted_flows = conntrack.deleted, "inet imdsguard installed");
        Ok(InstallReport {
            mode: self.config.mode,
            allowed: allowed.len(),
            known: known.len(),
            replaced: previous.is_some(),
            conntrack,
            apply_time,
        })
    }

    /// Switches to `config` (another mode, interfaces, proxy address): the table is
    /// rebuilt in one transaction, with the same allowlist.
    pub fn replace(&mut self, config: RulesetConfig) -> Result<InstallReport, NodeError> {
        config.validate()?;
        let old = std::mem::replace(&mut self.config, config);
        let report = self.install();
        if report.is_err() {
            self.config = old;
        }
        report
    }

    /// Allows `addr` entering on `iface` to reach the protected endpoints: one element
    /// added to an allow set, no rebuild.
    pub fn add_allowed(&mut self, iface: &str, addr: IpAddr) -> Result<SourcePair, NodeError> {
        let pair = SourcePair::new(iface, addr)?;
        apply(&self.exec, &nft::add_allowed(std::slice::from_ref(&pair)))?;
        self.allowed.insert(pair.clone());
        Ok(pair)
    }

    /// Takes (`iface`, `addr`) off the allowlist (absent is fine), then cuts its tracked
    /// flows toward the protected endpoints.
    pub fn remove_allowed(
        &mut self,
        iface: &str,
        addr: IpAddr,
    ) -> Result<ConntrackOutcome, NodeError> {
        let pair = SourcePair::new(iface, addr)?;
        apply(
            &self.exec,
            &nft::remove_allowed(std::slice::from_ref(&pair)),
        )?;
        self.allowed.remove(&pair);
        Ok(flush_conntrack(
            &self.exec,
            &self.config.protected,
            Some(pair.addr),
        ))
    }

    /// Makes the allow and known sets exactly `allowed` and `known`: only the elements
    /// that differ are added or deleted, in one transaction (no rebuild: the table and
    /// rule handles stay). Sources taken off either set have their tracked flows toward
    /// the protected endpoints cut. Returns the changes applied.
    pub fn sync_pairs(
        &mut self,
        allowed: impl IntoIterator<Item = SourcePair>,
        known: impl IntoIterator<Item = SourcePair>,
    ) -> Result<PairChanges, NodeError> {
        let allowed: Vec<SourcePair> = allowed.into_iter().collect();
        let known: Vec<SourcePair> = known.into_iter().collect();
        let changes = PairChanges::between(&self.allowed, &self.known, &allowed, &known);
        if changes.is_empty() {
            return Ok(changes);
        }
        apply(&self.exec, &changes.batch())?;
        self.allowed = allowed.into_iter().collect();
        self.known = known.into_iter().collect();
        let mut cut: BTreeSet<IpAddr> = BTreeSet::new();
        for p in changes.remove_allowed.iter().chain(&changes.remove_known) {
            cut.insert(p.addr);
        }
        for addr in cut {
            for w in flush_conntrack(&self.exec, &self.config.protected, Some(addr)).warnings {
                tracing::warn!(warning = %w, "conntrack");
            }
        }
        Ok(changes)
    }

    /// Removes the table on purpose (`imdsguard agent uninstall`). `true` when it was there.
    pub fn uninstall(&self) -> Result<bool, NodeError> {
        uninstall_table(&self.exec)
    }

    /// Whether the table is in place and as this enforcer builds it, by content: chains,
    /// every rule's statements and comment in order, the allow, known, protected and
    /// proxied sets' elements (the allowlist and known pods as the enforcer holds them),
    /// counters, mode. Counter values and the dropped-source sets are not compared.
    pub fn status(&self) -> Result<Status, NodeError> {
        let allowed: Vec<SourcePair> = self.allowed.iter().cloned().collect();
        let known: Vec<SourcePair> = self.known.iter().cloned().collect();
        let expected = TableState::from_batch(&nft::ruleset_with_known(
            &self.config,
            &allowed,
            &known,
            &[],
        )?);
        let mut s = Status::from_table(read_table(&self.exec)?, expected.as_ref());
        s.host_table = crate::host::read_host_listing(&self.exec)?.is_some();
        Ok(s)
    }

    /// The named counters.
    pub fn counters(&self) -> Result<Vec<CounterValue>, NodeError> {
        read_counters(&self.exec)
    }

    /// The sources dropped in the last 10 minutes: see [`dropped_sources`].
    pub fn dropped_sources(&self) -> Result<Vec<DroppedSource>, NodeError> {
        dropped_sources(&self.exec)
    }

    /// The connections observed in the last 10 minutes: see [`observed_connections`].
    pub fn observed_connections(&self) -> Result<Vec<ObservedConnection>, NodeError> {
        observed_connections(&self.exec)
    }
}
