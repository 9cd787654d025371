//! The table's named counters and its dropped-source sets, as `nft -j list …` shows them.

use std::net::IpAddr;

use nftables::expr::{Expression, NamedExpression};
use nftables::stmt;
use serde::Serialize;
use serde_json::Value;

use super::listing::{NftParseError, objects, ours, single};
use super::ruleset::NamedCounter;
use super::set;
use crate::target::{Protocol, Target};

/// A named counter's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CounterValue {
    /// The counter's name ([`super::counter::ALL`]).
    pub name: String,
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

impl CounterValue {
    /// A listed counter object of our table (64-bit values: see [`super::ruleset`]).
    pub(crate) fn from_body(body: &Value) -> Option<CounterValue> {
        if !ours(body, "table") {
            return None;
        }
        let c: NamedCounter = serde_json::from_value(body.clone()).ok()?;
        Some(CounterValue {
            name: c.name,
            packets: c.packets.unwrap_or(0),
            bytes: c.bytes.unwrap_or(0),
        })
    }
}

/// The named counters of `inet imdsguard` in the answer to
/// `nft -j list counters table inet imdsguard` (or any listing that holds them).
pub fn parse_counters(text: &str) -> Result<Vec<CounterValue>, NftParseError> {
    Ok(objects(text)?
        .into_iter()
        .filter_map(single)
        .filter(|(kind, _)| kind == "counter")
        .filter_map(|(_, body)| CounterValue::from_body(&body))
        .collect())
}

/// One element of `dropped_v4` / `dropped_v6`: a source dropped in the last
/// [`super::DROPPED_TIMEOUT_SECS`], with what its element counted since it was added.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DroppedSource {
    /// The interface the packets entered the node on.
    pub iface: String,
    /// Their source address.
    pub addr: IpAddr,
    /// Packets dropped since the element was added (it restarts from zero when the
    /// element expired or the table was rebuilt).
    pub packets: u64,
    /// Bytes likewise.
    pub bytes: u64,
}

impl DroppedSource {
    /// `{"elem": {"val": {"concat": [IFACE, ADDR]}, "counter": {...}, "expires": …}}`, or a
    /// bare concatenation (no counter yet).
    fn from_element(elem: &Expression<'_>) -> Option<DroppedSource> {
        let (val, counter) = match elem {
            Expression::Named(NamedExpression::Elem(e)) => (&*e.val, e.counter.as_ref()),
            other => (other, None),
        };
        let Expression::Named(NamedExpression::Concat(parts)) = val else {
            return None;
        };
        let (Some(Expression::String(iface)), Some(Expression::String(addr))) =
            (parts.first(), parts.get(1))
        else {
            return None;
        };
        let (packets, bytes) = match counter {
            Some(stmt::Counter::Anonymous(Some(c))) => (c.packets, c.bytes),
            _ => (None, None),
        };
        Some(DroppedSource {
            iface: iface.to_string(),
            addr: addr.parse().ok()?,
            packets: packets.unwrap_or(0) as u64,
            bytes: bytes.unwrap_or(0) as u64,
        })
    }
}

/// The elements of the dropped-source sets in the answer to
/// `nft -j list set inet imdsguard dropped_v4` (and `dropped_v6`, or a listing of the
/// whole table). Other sets and tables are ignored.
pub fn parse_dropped(text: &str) -> Result<Vec<DroppedSource>, NftParseError> {
    let mut out = Vec::new();
    for (kind, body) in objects(text)?.into_iter().filter_map(single) {
        let name = body.get("name").and_then(Value::as_str);
        if kind != "set"
            || !ours(&body, "table")
            || !matches!(name, Some(set::DROPPED_V4 | set::DROPPED_V6))
        {
            continue;
        }
        // Only the elements are read (the set's type and flags are the table check's).
        let elems = body.get("elem").cloned().unwrap_or(Value::Null);
        let Ok(elems) = serde_json::from_value::<Vec<Expression<'static>>>(elems) else {
            continue;
        };
        out.extend(elems.iter().filter_map(DroppedSource::from_element));
    }
    out.sort();
    Ok(out)
}

/// One element of `observed_v4` / `observed_v6` (observe mode): connections from one
/// source pair to one endpoint in the last [`super::DROPPED_TIMEOUT_SECS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObservedConnection {
    /// The interface the packets entered the node on.
    pub iface: String,
    /// Their source address.
    pub addr: IpAddr,
    /// The endpoint (a protected address, protocol and port), written `IP:PORT/PROTO`.
    #[serde(serialize_with = "as_text")]
    pub endpoint: Target,
    /// New connections since the element was added (it restarts from zero when the
    /// element expired or the table was rebuilt).
    pub connections: u64,
}

impl ObservedConnection {
    /// `{"elem": {"val": {"concat": [IFACE, SADDR, DADDR, PROTO, PORT]}, "counter": …}}`,
    /// or a bare concatenation (no counter yet).
    fn from_element(elem: &Expression<'_>) -> Option<ObservedConnection> {
        let (val, counter) = match elem {
            Expression::Named(NamedExpression::Elem(e)) => (&*e.val, e.counter.as_ref()),
            other => (other, None),
        };
        let Expression::Named(NamedExpression::Concat(parts)) = val else {
            return None;
        };
        let [
            Expression::String(iface),
            Expression::String(addr),
            Expression::String(daddr),
            proto,
            Expression::Number(port),
        ] = parts.as_slice()
        else {
            return None;
        };
        // nft names the protocols it knows (`tcp`) and writes others as numbers.
        let protocol = match proto {
            Expression::String(p) => p.parse::<Protocol>().ok()?,
            Expression::Number(6) => Protocol::Tcp,
            Expression::Number(17) => Protocol::Udp,
            Expression::Number(132) => Protocol::Sctp,
            _ => return None,
        };
        let packets = match counter {
            Some(stmt::Counter::Anonymous(Some(c))) => c.packets.unwrap_or(0),
            _ => 0,
        };
        Some(ObservedConnection {
            iface: iface.to_string(),
            addr: addr.parse::<IpAddr>().ok()?.to_canonical(),
            endpoint: Target {
                ip: daddr.parse::<IpAddr>().ok()?.to_canonical(),
                port: u16::try_from(*port).ok()?,
                protocol,
            },
            connections: packets as u64,
        })
    }
}

fn as_text<S: serde::Serializer>(t: &Target, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

/// The elements of the observed-connection sets in the answer to
/// `nft -j list set inet imdsguard observed_v4` (and `observed_v6`, or a listing of
/// the whole table), sorted. Other sets and tables are ignored.
pub fn parse_observed(text: &str) -> Result<Vec<ObservedConnection>, NftParseError> {
    let mut out = Vec::new();
    for (kind, body) in objects(text)?.into_iter().filter_map(single) {
        let name = body.get("name").and_then(Value::as_str);
        if kind != "set"
            || !ours(&body, "table")
            || !matches!(name, Some(set::OBSERVED_V4 | set::OBSERVED_V6))
        {
            continue;
        }
        let elems = body.get("elem").cloned().unwrap_or(Value::Null);
        let Ok(elems) = serde_json::from_value::<Vec<Expression<'static>>>(elems) else {
            continue;
        };
        out.extend(elems.iter().filter_map(ObservedConnection::from_element));
    }
    out.sort();
    Ok(out)
}
