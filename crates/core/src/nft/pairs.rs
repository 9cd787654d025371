//! (interface, address) pairs: the elements of the allow and known sets, and the batches
//! that change those sets without rebuilding the table.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use nftables::expr::Expression;
use nftables::schema::{NfCmd, NfListObject};
use serde::Serialize;
use serde_json::Value;

use super::config::{NftConfigError, valid_name_chars};
use super::ruleset::{Batch, concat, element_set};
use super::set;

/// A packet source as the table matches it: the interface it enters the node on and
/// its source address. An element of the allow sets (this pair may reach the protected
/// endpoints; the same address from another interface may not) and of the known sets
/// (a pod the node hosts), see [`PairSet`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SourcePair {
    /// The pod's node-side interface (`azv1a2b3c`, or the bridge `cbr0` on bridge CNIs).
    pub iface: String,
    /// The pod's address (IPv4-mapped IPv6 addresses are stored as IPv4).
    pub addr: IpAddr,
}

/// Which pair sets an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairSet {
    /// `allow_v4` / `allow_v6`: may reach the protected endpoints directly.
    Allow,
    /// `known_v4` / `known_v6`: pods the node hosts; proxy mode redirects only these.
    Known,
}

impl PairSet {
    /// The set names, IPv4 then IPv6.
    pub fn set_names(self) -> [&'static str; 2] {
        match self {
            PairSet::Allow => [set::ALLOW_V4, set::ALLOW_V6],
            PairSet::Known => [set::KNOWN_V4, set::KNOWN_V6],
        }
    }
}

impl SourcePair {
    /// Checks the interface name (one name, no wildcard) and the address.
    pub fn new(iface: &str, addr: IpAddr) -> Result<SourcePair, NftConfigError> {
        if iface.is_empty() || iface.len() > 15 || !valid_name_chars(iface) {
            return Err(NftConfigError::InterfaceName(iface.to_owned()));
        }
        let addr = match addr {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(NftConfigError::Address(addr));
        }
        Ok(SourcePair {
            iface: iface.to_owned(),
            addr,
        })
    }

    pub(crate) fn set_name(&self, kind: PairSet) -> &'static str {
        let [v4, v6] = kind.set_names();
        if self.addr.is_ipv4() { v4 } else { v6 }
    }

    /// `"azvweb" . 10.244.0.11` as a set element.
    pub(crate) fn element(&self) -> Expression<'static> {
        concat([
            Expression::String(self.iface.clone().into()),
            Expression::String(self.addr.to_string().into()),
        ])
    }
}

impl fmt::Display for SourcePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} . {}", self.iface, self.addr)
    }
}

/// The elements of `pairs` in each `kind` set that gets any, IPv4 set first.
fn by_set(kind: PairSet, pairs: &[SourcePair]) -> Vec<(&'static str, Vec<Expression<'static>>)> {
    kind.set_names()
        .into_iter()
        .map(|name| {
            let elems: Vec<Expression<'static>> = pairs
                .iter()
                .filter(|p| p.set_name(kind) == name)
                .map(SourcePair::element)
                .collect();
            (name, elems)
        })
        .filter(|(_, elems)| !elems.is_empty())
        .collect()
}

/// Adds `pairs` to the allow sets: a set change, not a rebuild (adding twice is fine).
pub fn add_allowed(pairs: &[SourcePair]) -> Value {
    add_pairs(PairSet::Allow, pairs)
}

/// Removes `pairs` from the allow sets (each is added first in the same transaction, so
/// removing an absent pair is not an error).
pub fn remove_allowed(pairs: &[SourcePair]) -> Value {
    remove_pairs(PairSet::Allow, pairs)
}

fn push_additions(b: &mut Batch, kind: PairSet, pairs: &[SourcePair]) {
    for (name, elems) in by_set(kind, pairs) {
        b.add(NfListObject::Element(element_set(name, elems)));
    }
}

fn push_removals(b: &mut Batch, kind: PairSet, pairs: &[SourcePair]) {
    for (name, elems) in by_set(kind, pairs) {
        b.add(NfListObject::Element(element_set(name, elems.clone())));
        b.cmd(NfCmd::Delete(NfListObject::Element(element_set(
            name, elems,
        ))));
    }
}

/// Adds `pairs` to the `kind` sets: a set change, not a rebuild (adding twice is fine).
pub fn add_pairs(kind: PairSet, pairs: &[SourcePair]) -> Value {
    let mut b = Batch::new();
    push_additions(&mut b, kind, pairs);
    b.to_json()
}

/// Removes `pairs` from the `kind` sets (absent pairs are fine).
pub fn remove_pairs(kind: PairSet, pairs: &[SourcePair]) -> Value {
    let mut b = Batch::new();
    push_removals(&mut b, kind, pairs);
    b.to_json()
}

/// Element changes to the allow and known sets, applied as one transaction by
/// [`PairChanges::batch`] (what the agent does when pods come and go).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairChanges {
    /// Pairs to add to the allow sets.
    pub add_allowed: Vec<SourcePair>,
    /// Pairs to take off the allow sets.
    pub remove_allowed: Vec<SourcePair>,
    /// Pairs to add to the known sets.
    pub add_known: Vec<SourcePair>,
    /// Pairs to take off the known sets.
    pub remove_known: Vec<SourcePair>,
}

impl PairChanges {
    /// The changes that turn (`allowed`, `known`) into (`new_allowed`, `new_known`).
    pub fn between<'a>(
        allowed: impl IntoIterator<Item = &'a SourcePair>,
        known: impl IntoIterator<Item = &'a SourcePair>,
        new_allowed: &[SourcePair],
        new_known: &[SourcePair],
    ) -> PairChanges {
        let diff = |old: BTreeSet<&SourcePair>, new: BTreeSet<&SourcePair>| {
            (
                new.difference(&old).map(|p| (*p).clone()).collect(),
                old.difference(&new).map(|p| (*p).clone()).collect(),
            )
        };
        let (add_allowed, remove_allowed) =
            diff(allowed.into_iter().collect(), new_allowed.iter().collect());
        let (add_known, remove_known) =
            diff(known.into_iter().collect(), new_known.iter().collect());
        PairChanges {
            add_allowed,
            remove_allowed,
            add_known,
            remove_known,
        }
    }

    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.add_allowed.is_empty()
            && self.remove_allowed.is_empty()
            && self.add_known.is_empty()
            && self.remove_known.is_empty()
    }

    /// One batch of element commands (no rebuild): additions first, then removals.
    pub fn batch(&self) -> Value {
        let mut b = Batch::new();
        push_additions(&mut b, PairSet::Allow, &self.add_allowed);
        push_additions(&mut b, PairSet::Known, &self.add_known);
        push_removals(&mut b, PairSet::Allow, &self.remove_allowed);
        push_removals(&mut b, PairSet::Known, &self.remove_known);
        b.to_json()
    }
}
