//! Reading Kubernetes manifests from text: multi-document YAML (anchors included), JSON
//! (one object, a `List`, or a stream of objects), and `*List` wrappers, into
//! [`Object`]s with their file and line. Pure: the caller reads the bytes.
//!
//! Documents are parsed in parallel, each into typed structs that hold only the fields
//! the audit needs (serde skips the rest). A broken document or list item becomes a
//! [`LoadError`] naming file, line and reason; the others are still read.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use ipnet::IpNet;
use rayon::prelude::*;
use serde::de;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::calico;
use crate::cilium::{self, CiliumKind};
use crate::model::{
    Controller, ControllerKind, EgressRule, LabelSelector, Labels, Namespace, NetworkPolicy, Node,
    Object, OwnerRef, Peer, Pod, PodTemplate, PortRule, PortSpec, Source,
};
use crate::quote::{clip, quoted};
use crate::target::Protocol;
use crate::tiered::{self, TieredKind};

/// Reads the object being converted again, whole, as a generic value: the kinds whose
/// fields the typed structs do not hold (cluster-scoped policies, nodes) are read from it
/// by their own module. `Err` says why it cannot be read that way.
type Reread<'a> = &'a dyn Fn() -> Result<serde_json::Value, String>;

/// A YAML text read generically, unless its flow collections nest too deep to parse in
/// linear time. Integers beyond 64 bits become floats (see [`value`]), so that the
/// module reading the field names it and its range.
fn yaml_value(text: &str) -> Result<serde_json::Value, String> {
    if let Some(deep) = depth::flow_too_deep(text, depth::MAX_FLOW_DEPTH) {
        return Err(format!(
            "flow collections ([...], {{...}}) nested deeper than {} levels (column {})",
            depth::MAX_FLOW_DEPTH,
            deep.column
        ));
    }
    serde_norway::from_str::<value::LenientValue>(text)
        .map(|v| v.0)
        .map_err(|e| yaml_message(&e))
}

/// Why an object could not be read again as a whole, for its error.
fn reread_failed(why: &str) -> String {
    format!(
        "the object could not be read again as a whole: {}",
        clip(why)
    )
}

mod depth;
mod value;

/// What went wrong with one document or object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadErrorKind {
    /// The text is not valid YAML or JSON.
    Syntax,
    /// A field has the wrong type or shape for its kind.
    Shape,
    /// The object is well-formed but invalid (bad CIDR, operator, protocol, port).
    Invalid,
    /// The input could not be read at all (missing path, permissions, not UTF-8).
    Io,
    /// A kind imdsguard reads, at an `apiVersion` it does not know (a newer or older
    /// CRD version): left out rather than guessed at.
    UnknownVersion,
}

/// A document or object that could not be read. The rest of the input is still audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// File as named by the user.
    pub file: Arc<str>,
    /// 1-based line of the error (or of the object when the parser gives no line); 0
    /// for an object read from the Kubernetes API (no line, left out when written).
    pub line: usize,
    /// `Kind namespace/name` of the object, when known.
    pub object: Option<String>,
    /// What kind of error.
    pub kind: LoadErrorKind,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", crate::model::Place::new(&self.file, self.line))?;
        if let Some(o) = &self.object {
            write!(f, "{o}: ")?;
        }
        let hint = match self.kind {
            LoadErrorKind::Syntax => "fix the syntax (e.g. `kubectl apply --dry-run=client -f`)",
            LoadErrorKind::Shape => "fix the field (see `kubectl explain`)",
            LoadErrorKind::Invalid => "fix the value; the API server would reject it",
            LoadErrorKind::Io => "check the path and its permissions",
            LoadErrorKind::UnknownVersion => {
                "write it at a version imdsguard reads (or use an imdsguard that knows this one)"
            }
        };
        let what = match self.kind {
            LoadErrorKind::Io => "this input was",
            LoadErrorKind::Syntax => "this document was",
            _ => "this object was",
        };
        write!(f, "{}; {hint}; {what} left out of the audit", self.message)
    }
}

/// Everything read from one input.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Objects of the kinds the audit understands, in input order.
    pub objects: Vec<Object>,
    /// Documents and objects that could not be read.
    pub errors: Vec<LoadError>,
    /// Objects of other kinds, counted by `Kind` (`Kind.group` outside the core groups).
    pub skipped: BTreeMap<String, usize>,
}

impl Loaded {
    /// Appends another input's results.
    pub fn extend(&mut self, other: Loaded) {
        self.objects.extend(other.objects);
        self.errors.extend(other.errors);
        for (k, n) in other.skipped {
            *self.skipped.entry(k).or_default() += n;
        }
    }
}

/// Reads one input. `file` names it in sources and errors; the format is told from the
/// content (JSON starts with `{` or `[`; anything else is YAML).
pub fn parse(file: &str, text: &str) -> Loaded {
    let file: Arc<str> = Arc::from(file);
    // A byte-order mark (Windows editors) sits on line 1 and means nothing here.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        parse_json(&file, text)
    } else {
        parse_yaml(&file, text)
    }
}

// ---------------------------------------------------------------------------------------
// Raw, typed shapes of what the audit reads. Unknown fields are skipped by serde.

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<RawMeta>,
    #[serde(default)]
    spec: Option<RawSpec>,
    #[serde(default)]
    items: Option<Vec<RawObject>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawHead {
    #[serde(default)]
    api_version: Option<LenientString>,
    #[serde(default)]
    kind: Option<LenientString>,
    #[serde(default)]
    metadata: Option<RawHeadMeta>,
}

#[derive(Deserialize, Default)]
struct RawHeadMeta {
    #[serde(default)]
    name: Option<LenientString>,
    #[serde(default)]
    namespace: Option<LenientString>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "lenient_map")]
    labels: Labels,
    #[serde(default)]
    owner_references: Option<Vec<RawOwnerRef>>,
}

#[derive(Deserialize, Default)]
struct RawOwnerRef {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    controller: Option<bool>,
}

/// The union of the `spec` fields the audit reads across kinds (they do not clash).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    // Pod
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default)]
    service_account_name: Option<String>,
    #[serde(default)]
    service_account: Option<String>,
    // Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, ReplicationController
    #[serde(default)]
    template: Option<RawTemplate>,
    // CronJob
    #[serde(default)]
    job_template: Option<RawJobTemplate>,
    // NetworkPolicy
    #[serde(default)]
    pod_selector: Option<RawSelector>,
    #[serde(default)]
    policy_types: Option<Vec<String>>,
    #[serde(default)]
    egress: Option<Vec<Option<RawEgressRule>>>,
}

#[derive(Deserialize, Default)]
struct RawTemplate {
    #[serde(default)]
    metadata: Option<RawTemplateMeta>,
    #[serde(default)]
    spec: Option<RawPodSpec>,
}

#[derive(Deserialize, Default)]
struct RawTemplateMeta {
    #[serde(default, deserialize_with = "lenient_map")]
    labels: Labels,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default)]
    service_account_name: Option<String>,
    #[serde(default)]
    service_account: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawJobTemplate {
    #[serde(default)]
    spec: Option<RawJobSpec>,
}

#[derive(Deserialize, Default)]
struct RawJobSpec {
    #[serde(default)]
    template: Option<RawTemplate>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSelector {
    #[serde(default, deserialize_with = "lenient_map")]
    match_labels: Labels,
    #[serde(default)]
    match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Deserialize, Default)]
struct RawRequirement {
    #[serde(default)]
    key: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    values: Option<Vec<LenientString>>,
}

#[derive(Deserialize, Default)]
struct RawEgressRule {
    #[serde(default)]
    to: Option<Vec<RawPeer>>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPeer {
    #[serde(default)]
    ip_block: Option<RawIpBlock>,
    #[serde(default)]
    pod_selector: Option<RawSelector>,
    #[serde(default)]
    namespace_selector: Option<RawSelector>,
}

#[derive(Deserialize, Default)]
struct RawIpBlock {
    #[serde(default)]
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<IntOrString>,
    #[serde(default)]
    end_port: Option<i64>,
}

/// `intstr.IntOrString`.
enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrString::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string that also accepts a YAML scalar written as a number or boolean
/// (`version: 1`), which kubectl would reject but people write.
struct LenientString(String);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = LenientString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LenientString(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LenientString(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientString(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A label map (`null` reads as empty), built in place: one allocation per key and value.
fn lenient_map<'de, D: Deserializer<'de>>(d: D) -> Result<Labels, D::Error> {
    struct MapVisitor;
    impl<'de> de::Visitor<'de> for MapVisitor {
        type Value = Labels;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of labels")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Labels, E> {
            Ok(Labels::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Labels, E> {
            Ok(Labels::new())
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Labels, D2::Error> {
            d.deserialize_map(MapVisitor)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
            let mut out = Labels::new();
            while let Some((k, v)) = map.next_entry::<String, LenientString>()? {
                out.insert(k, v.0);
            }
            Ok(out)
        }
    }
    d.deserialize_option(MapVisitor)
}

// ---------------------------------------------------------------------------------------
// YAML

/// Splits a YAML stream into documents at `---` and `...` markers (which YAML forbids
/// inside any scalar at column 0), keeping each document's 1-based first line.
fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0usize; // byte offset of current document
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (line_no, line) in (1usize..).zip(text.split_inclusive('\n')) {
        let is_marker = |m: &str| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
        };
        if is_marker("---") {
            if offset > start {
                docs.push((start_line, &text[start..offset]));
            }
            start = offset;
            start_line = line_no;
        } else if is_marker("...") {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = line_no + 1;
        }
        offset += line.len();
    }
    if start < text.len() {
        docs.push((start_line, &text[start..]));
    }
    docs.into_iter()
        .filter(|(_, d)| !is_blank_yaml(d))
        .map(|(line, d)| skip_leading_noise(line, d))
        .collect()
}

/// Drops a bare `---` line and leading blank or comment lines, so that a document's line
/// is where its content starts.
fn skip_leading_noise(mut line: usize, mut doc: &str) -> (usize, &str) {
    loop {
        let (first, rest) = match doc.split_once('\n') {
            Some((f, r)) => (f, r),
            None => return (line, doc),
        };
        let t = first.trim();
        if t.is_empty() || t.starts_with('#') || t == "---" {
            doc = rest;
            line += 1;
        } else {
            return (line, doc);
        }
    }
}

fn is_blank_yaml(doc: &str) -> bool {
    doc.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l.starts_with("%")
    })
}

fn parse_yaml(file: &Arc<str>, text: &str) -> Loaded {
    let docs = split_yaml(text);
    let mut out = Loaded::default();
    // Runs of plain documents are parsed in parallel; a `List` document (what
    // `kubectl get -o yaml` writes) has its items parsed in parallel instead.
    let mut run_start = 0;
    for (i, &(line, doc)) in docs.iter().enumerate() {
        if let Some(list) = split_list_items(line, doc) {
            out = concat(out, parse_yaml_docs(file, &docs[run_start..i]));
            run_start = i + 1;
            match parse_list_items(file, &list) {
                Some(items) => out.extend(items),
                // An item that does not parse on its own (an alias to another item's
                // anchor, a syntax error): read the whole document the general way.
                None => parse_yaml_doc(file, line, doc, &mut out),
            }
        }
    }
    concat(out, parse_yaml_docs(file, &docs[run_start..]))
}

fn parse_yaml_docs(file: &Arc<str>, docs: &[(usize, &str)]) -> Loaded {
    docs.par_iter()
        .with_min_len(16)
        .fold(Loaded::default, |mut acc, &(line, doc)| {
            parse_yaml_doc(file, line, doc, &mut acc);
            acc
        })
        .reduce(Loaded::default, concat)
}

/// A block-style `*List` document cut into its items.
struct ListItems<'a> {
    /// Kind and apiVersion for items that do not say their own.
    defaults: ItemDefaults,
    /// Each item's first line and text (a one-entry YAML sequence).
    items: Vec<(usize, &'a str)>,
}

/// Cuts a block-style list document (`items:` at column 0 followed by `-` entries) into
/// its entries, each with its own line. `None` when the document is not such a list.
fn split_list_items(line: usize, doc: &str) -> Option<ListItems<'_>> {
    if !(doc.starts_with("items:") || memchr::memmem::find(doc.as_bytes(), b"\nitems:").is_some()) {
        return None;
    }
    let mut header = String::new();
    let mut items: Vec<(usize, usize)> = Vec::new(); // (line, byte offset) of entries
    let mut in_items = false;
    let mut block_end = None;
    let mut dash_indent: Option<usize> = None;
    let mut offset = 0;
    for (n, l) in (line..).zip(doc.split_inclusive('\n')) {
        let start = offset;
        offset += l.len();
        let content = l.trim_start_matches(' ');
        let indent = l.len() - content.len();
        let body = content.trim_end();
        if !in_items {
            if indent == 0 && body == "items:" && items.is_empty() && block_end.is_none() {
                in_items = true;
            } else {
                header.push_str(l);
            }
            continue;
        }
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let is_entry = body == "-" || content.starts_with("- ");
        match dash_indent {
            None if is_entry => {
                dash_indent = Some(indent);
                items.push((n, start));
            }
            Some(d) if indent == d && is_entry => items.push((n, start)),
            Some(d) if indent > d => {}
            _ if indent == 0 => {
                // A top-level key after the items (kubectl writes `kind: List` there).
                in_items = false;
                block_end = Some(start);
                header.push_str(l);
            }
            _ => return None,
        }
    }
    if items.is_empty() {
        return None;
    }
    if depth::flow_too_deep(&header, depth::MAX_FLOW_DEPTH).is_some() {
        return None;
    }
    let head: RawHead = serde_norway::from_str(&header).ok()?;
    let kind = head.kind.map(|k| k.0).unwrap_or_default();
    if !is_list_kind(&kind) {
        return None;
    }
    let api = head.api_version.map(|a| a.0).unwrap_or_default();
    let end = block_end.unwrap_or(doc.len());
    let mut chunks = Vec::with_capacity(items.len());
    for (i, &(n, start)) in items.iter().enumerate() {
        let stop = items.get(i + 1).map_or(end, |&(_, s)| s);
        chunks.push((n, &doc[start..stop]));
    }
    Some(ListItems {
        defaults: list_item_defaults(&kind, &api),
        items: chunks,
    })
}

/// Parses list items in parallel; `None` if any item fails on its own.
fn parse_list_items(file: &Arc<str>, list: &ListItems<'_>) -> Option<Loaded> {
    let parts: Vec<Option<Loaded>> = list
        .items
        .par_iter()
        .with_min_len(16)
        .map(|&(line, chunk)| {
            let pruned = prune_yaml(chunk);
            let parsed = pruned
                .as_deref()
                .and_then(yaml_typed::<Vec<RawObject>>)
                .or_else(|| yaml_typed::<Vec<RawObject>>(chunk))?;
            let mut part = Loaded::default();
            for (i, raw) in parsed.into_iter().enumerate() {
                let reread = || match yaml_value(chunk)? {
                    serde_json::Value::Array(mut a) if i < a.len() => Ok(a.swap_remove(i)),
                    _ => Err(format!("list item {i} is missing")),
                };
                convert(file, line, raw, &list.defaults, &mut part, &reread);
            }
            Some(part)
        })
        .collect();
    let mut out = Loaded::default();
    for p in parts {
        out.extend(p?);
    }
    Some(out)
}

/// Joins two results in order (rayon's `reduce` keeps the sequence order).
fn concat(mut a: Loaded, b: Loaded) -> Loaded {
    a.extend(b);
    a
}

/// The parser's message without its document-relative "at line N column M": the error
/// carries the file line instead. Clipped: the parser quotes the input it refuses.
fn yaml_message(e: &serde_norway::Error) -> String {
    let msg = e.to_string();
    match (msg.rfind(" at line "), e.location()) {
        (Some(i), Some(loc)) => format!("{} (column {})", clip(&msg[..i]), loc.column()),
        _ => clip(&msg).to_string(),
    }
}

/// The file line of a parser error in `doc` (which starts on `doc_line`). The parser
/// reports an error at the end of the input (an unclosed `[`) on the line after the
/// last one; that error belongs to the document's last line (found by fuzzing).
fn yaml_error_line(e: &serde_norway::Error, doc_line: usize, doc: &str) -> usize {
    let last = doc.lines().count().saturating_sub(1);
    e.location()
        .map(|l| doc_line + l.line().saturating_sub(1).min(last))
        .unwrap_or(doc_line)
}

/// Block-valued keys that lie on no path the audit reads (see the `Raw*` structs), so
/// their subtrees can be cut from the text before parsing.
const PRUNED_KEYS: [&str; 20] = [
    "status",
    "managedFields",
    "annotations",
    "containers",
    "initContainers",
    "ephemeralContainers",
    "volumes",
    "volumeClaimTemplates",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "securityContext",
    "dnsConfig",
    "strategy",
    "updateStrategy",
    "selector",
    "ingress",
    "data",
    "binaryData",
    "stringData",
];

/// Cuts the block-style subtrees of [`PRUNED_KEYS`] out of a YAML document: a line
/// `KEY:` with nothing after the colon, and every following line that is more indented
/// (or a `-` entry at the same indentation, as kubectl writes sequences), blank or a
/// comment. Keys in flow style, with anchors, tags or block scalars are left alone.
/// Returns `None` when nothing was cut. Only a speed-up: callers fall back to the
/// original text when the pruned one does not parse.
fn prune_yaml(doc: &str) -> Option<String> {
    let mut out: Option<String> = None;
    let mut kept_until = 0; // bytes of `doc` copied or decided so far
    let mut skipping: Option<usize> = None; // indentation of the key being cut
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        let body = content.trim_end();
        if let Some(n) = skipping {
            let inside = body.is_empty()
                || body.starts_with('#')
                || indent > n
                || (indent == n && (body == "-" || content.starts_with("- ")));
            if inside {
                kept_until = offset;
                continue;
            }
            skipping = None;
        }
        let cut = PRUNED_KEYS.iter().any(|k| {
            content
                .strip_prefix(k)
                .and_then(|r| r.strip_prefix(':'))
                .is_some_and(|r| r.trim().is_empty())
        });
        if cut {
            let o = out.get_or_insert_with(|| String::with_capacity(doc.len() / 2));
            o.push_str(&doc[kept_until..start]);
            kept_until = offset;
            skipping = Some(indent);
        }
    }
    out.map(|mut o| {
        o.push_str(&doc[kept_until..]);
        o
    })
}

/// A typed read of text that is not nested too deeply for the parser; `None` on any
/// failure (callers fall back to a path that reports it).
fn yaml_typed<T: de::DeserializeOwned>(text: &str) -> Option<T> {
    if depth::flow_too_deep(text, depth::MAX_FLOW_DEPTH).is_some() {
        return None;
    }
    serde_norway::from_str(text).ok()
}

fn parse_yaml_doc(file: &Arc<str>, line: usize, doc: &str, out: &mut Loaded) {
    if let Some(pruned) = prune_yaml(doc)
        && let Some(Some(raw)) = yaml_typed::<Option<RawObject>>(&pruned)
    {
        convert(file, line, raw, &None, out, &|| yaml_value(doc));
        return;
    }
    // libyaml's time grows with the square of the flow depth: refuse before parsing.
    if let Some(deep) = depth::flow_too_deep(doc, depth::MAX_FLOW_DEPTH) {
        out.errors.push(LoadError {
            file: file.clone(),
            line: line + deep.line,
            object: None,
            kind: LoadErrorKind::Syntax,
            message: format!(
                "flow collections ([...], {{...}}) nested deeper than {} levels (column {}); refused before parsing",
                depth::MAX_FLOW_DEPTH,
                deep.column
            ),
        });
        return;
    }
    match serde_norway::from_str::<Option<RawObject>>(doc) {
        Ok(Some(raw)) => convert(file, line, raw, &None, out, &|| yaml_value(doc)),
        Ok(None) => {}
        Err(err) => {
            // Find out what failed: syntax, an unknown kind we need not read, or one list item.
            let value = match serde_norway::from_str::<serde_norway::Value>(doc) {
                Ok(v) => v,
                Err(e) => {
                    out.errors.push(LoadError {
                        file: file.clone(),
                        line: yaml_error_line(&e, line, doc),
                        object: None,
                        kind: LoadErrorKind::Syntax,
                        message: format!("not valid YAML: {}", yaml_message(&e)),
                    });
                    return;
                }
            };
            let head: RawHead = serde_norway::from_value(value.clone()).unwrap_or_default();
            let kind = head.kind.as_ref().map(|k| k.0.as_str()).unwrap_or("");
            let items = value.get("items").and_then(|v| v.as_sequence());
            if is_list_kind(kind)
                && let Some(items) = items
            {
                let api = head
                    .api_version
                    .as_ref()
                    .map(|a| a.0.as_str())
                    .unwrap_or("");
                let defaults = list_item_defaults(kind, api);
                for (i, item) in items.iter().enumerate() {
                    match serde_norway::from_value::<RawObject>(item.clone()) {
                        Ok(raw) => convert(file, line, raw, &defaults, out, &|| {
                            serde_json::to_value(item).map_err(|e| e.to_string())
                        }),
                        Err(e) => shape_error_or_skip(
                            file,
                            line,
                            &serde_norway::from_value::<RawHead>(item.clone()).unwrap_or_default(),
                            format!("{kind} item {i}: {e}"),
                            out,
                        ),
                    }
                }
            } else {
                let at = yaml_error_line(&err, line, doc);
                shape_error_or_skip(file, at, &head, yaml_message(&err), out);
            }
        }
    }
}

fn is_list_kind(kind: &str) -> bool {
    kind.ends_with("List")
}

/// A typed read failed: an object of a kind the audit does not read is only counted.
fn shape_error_or_skip(
    file: &Arc<str>,
    line: usize,
    head: &RawHead,
    msg: String,
    out: &mut Loaded,
) {
    let kind = head.kind.as_ref().map(|k| k.0.clone()).unwrap_or_default();
    let api = head
        .api_version
        .as_ref()
        .map(|k| k.0.clone())
        .unwrap_or_default();
    if !kind.is_empty() && !is_list_kind(&kind) && classify(&kind, &api).is_none() {
        *out.skipped.entry(skip_key(&kind, &api)).or_default() += 1;
        return;
    }
    let object = (!kind.is_empty()).then(|| {
        let meta = head.metadata.as_ref();
        let name = meta.and_then(|m| m.name.as_ref()).map(|n| n.0.as_str());
        let ns = meta
            .and_then(|m| m.namespace.as_ref())
            .map(|n| n.0.as_str());
        match (ns, name) {
            (Some(ns), Some(n)) => format!("{} {}/{}", clip(&kind), clip(ns), clip(n)),
            (None, Some(n)) => format!("{} {}", clip(&kind), clip(n)),
            _ => clip(&kind).to_string(),
        }
    });
    out.errors.push(LoadError {
        file: file.clone(),
        line,
        object,
        kind: LoadErrorKind::Shape,
        message: clip(&msg).to_string(),
    });
}

// ---------------------------------------------------------------------------------------
// JSON

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonHead<'a> {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
}

fn parse_json(file: &Arc<str>, text: &str) -> Loaded {
    let mut out = Loaded::default();
    let mut items: Vec<(&RawValue, ItemDefaults)> = Vec::new();
    // The common case, one object (a `List` or a single object), takes one pass over
    // the text; arrays, streams of objects and syntax errors take the general path.
    match serde_json::from_str::<JsonHead>(text) {
        Ok(JsonHead {
            kind: Some(kind),
            api_version,
            items: Some(list),
        }) if is_list_kind(&kind) => {
            let defaults = list_item_defaults(&kind, api_version.as_deref().unwrap_or(""));
            items.extend(list.into_iter().map(|i| (i, defaults.clone())));
        }
        Ok(_) => match serde_json::from_str::<&RawValue>(text) {
            Ok(v) => items.push((v, None)),
            Err(e) => out.errors.push(json_error(file, text, text, &e, None)),
        },
        Err(_) => json_stream(file, text, &mut items, &mut out),
    }
    let lines = item_lines(text, &items);
    let parsed = items
        .par_iter()
        .zip(lines.par_iter())
        .with_min_len(64)
        .fold(Loaded::default, |mut acc, ((item, defaults), &line)| {
            let s = item.get();
            match serde_json::from_str::<RawObject>(s) {
                Ok(raw) => convert(file, line, raw, defaults, &mut acc, &|| {
                    serde_json::from_str(s).map_err(|e| e.to_string())
                }),
                Err(e) => {
                    let head = serde_json::from_str::<RawHead>(s).unwrap_or_default();
                    let at = line + e.line().saturating_sub(1);
                    shape_error_or_skip(file, at, &head, e.to_string(), &mut acc);
                }
            }
            acc
        })
        .reduce(Loaded::default, concat);
    concat(out, parsed)
}

/// Reads one response of the Kubernetes API: a page of a list (`{"kind":"PodList",
/// "apiVersion":"v1","items":[...]}`, whose items carry no `kind` or `apiVersion`, as
/// the API server sends them) or one object (a `get`). Objects are read exactly as
/// [`parse`] reads them; only their source differs: each is named
/// `{origin}/{Kind}/{namespace}/{name}` (`{origin}/{Kind}/{name}` when cluster-scoped),
/// with line 0 (no line), since the API's text is not the user's file.
pub fn parse_api_response(origin: &str, text: &str) -> Loaded {
    let mut out = Loaded::default();
    let mut items: Vec<(&RawValue, ItemDefaults)> = Vec::new();
    match serde_json::from_str::<JsonHead>(text) {
        Ok(JsonHead {
            kind: Some(kind),
            api_version,
            items: Some(list),
        }) if is_list_kind(&kind) => {
            let defaults = list_item_defaults(&kind, api_version.as_deref().unwrap_or(""));
            items.extend(list.into_iter().map(|i| (i, defaults.clone())));
        }
        Ok(_) => match serde_json::from_str::<&RawValue>(text) {
            Ok(v) => items.push((v, None)),
            Err(e) => out
                .errors
                .push(json_error(&Arc::from(origin), text, text, &e, None)),
        },
        Err(e) => out
            .errors
            .push(json_error(&Arc::from(origin), text, text, &e, None)),
    }
    let parsed = items
        .par_iter()
        .with_min_len(64)
        .fold(Loaded::default, |mut acc, (item, defaults)| {
            let s = item.get();
            match serde_json::from_str::<RawObject>(s) {
                Ok(raw) => {
                    let meta = raw.metadata.as_ref();
                    let file = api_source(
                        origin,
                        raw.kind.as_deref(),
                        meta.and_then(|m| m.namespace.as_deref()),
                        meta.and_then(|m| m.name.as_deref()),
                        defaults,
                    );
                    convert(&file, 0, raw, defaults, &mut acc, &|| {
                        serde_json::from_str(s).map_err(|e| e.to_string())
                    });
                }
                Err(e) => {
                    let head = serde_json::from_str::<RawHead>(s).unwrap_or_default();
                    let meta = head.metadata.as_ref();
                    let file = api_source(
                        origin,
                        head.kind.as_ref().map(|k| k.0.as_str()),
                        meta.and_then(|m| m.namespace.as_ref())
                            .map(|n| n.0.as_str()),
                        meta.and_then(|m| m.name.as_ref()).map(|n| n.0.as_str()),
                        defaults,
                    );
                    shape_error_or_skip(&file, 0, &head, e.to_string(), &mut acc);
                }
            }
            acc
        })
        .reduce(Loaded::default, concat);
    concat(out, parsed)
}

/// The source name of an object read from the API (see [`parse_api_response`]).
fn api_source(
    origin: &str,
    kind: Option<&str>,
    ns: Option<&str>,
    name: Option<&str>,
    defaults: &ItemDefaults,
) -> Arc<str> {
    let kind = kind
        .filter(|k| !k.is_empty())
        .or(defaults.as_ref().map(|(k, _)| k.as_str()))
        .unwrap_or("?");
    let name = name.unwrap_or("?");
    match ns {
        Some(ns) if !ns.is_empty() => Arc::from(format!("{origin}/{kind}/{ns}/{name}")),
        _ => Arc::from(format!("{origin}/{kind}/{name}")),
    }
}

/// Top-level values one after the other: objects, `List`s, arrays of objects.
fn json_stream<'a>(
    file: &Arc<str>,
    text: &'a str,
    items: &mut Vec<(&'a RawValue, ItemDefaults)>,
    out: &mut Loaded,
) {
    for v in serde_json::Deserializer::from_str(text).into_iter::<&RawValue>() {
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                out.errors.push(LoadError {
                    file: file.clone(),
                    line: e.line().max(1),
                    object: None,
                    kind: LoadErrorKind::Syntax,
                    message: format!("not valid JSON: {}", clip(&e.to_string())),
                });
                return;
            }
        };
        let s = v.get();
        if s.starts_with('[') {
            match serde_json::from_str::<Vec<&RawValue>>(s) {
                Ok(list) => items.extend(list.into_iter().map(|i| (i, None))),
                Err(e) => out.errors.push(json_error(file, text, s, &e, None)),
            }
            continue;
        }
        match serde_json::from_str::<JsonHead>(s) {
            Ok(JsonHead {
                kind: Some(kind),
                api_version,
                items: Some(list),
            }) if is_list_kind(&kind) => {
                let defaults = list_item_defaults(&kind, api_version.as_deref().unwrap_or(""));
                items.extend(list.into_iter().map(|i| (i, defaults.clone())));
            }
            _ => items.push((v, None)),
        }
    }
}

/// The 1-based line of each item (items are in text order), counting newlines between
/// consecutive items in parallel.
fn item_lines(text: &str, items: &[(&RawValue, ItemDefaults)]) -> Vec<usize> {
    let offsets: Vec<usize> = items
        .iter()
        .map(|(v, _)| offset_in(text, v.get()))
        .collect();
    let bytes = text.as_bytes();
    let gaps: Vec<usize> = (0..offsets.len())
        .into_par_iter()
        .with_min_len(256)
        .map(|i| {
            let from = if i == 0 { 0 } else { offsets[i - 1] };
            let to = offsets[i].max(from);
            memchr::memchr_iter(b'\n', &bytes[from..to]).count()
        })
        .collect();
    let mut line = 1;
    gaps.into_iter()
        .map(|g| {
            line += g;
            line
        })
        .collect()
}

fn offset_in(text: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize)
}

fn json_error(
    file: &Arc<str>,
    text: &str,
    part: &str,
    e: &serde_json::Error,
    object: Option<String>,
) -> LoadError {
    let base = LineIndex::new(text).line_of(offset_in(text, part));
    LoadError {
        file: file.clone(),
        line: base + e.line().saturating_sub(1),
        object,
        kind: LoadErrorKind::Shape,
        message: clip(&e.to_string()).to_string(),
    }
}

/// Byte offset → 1-based line.
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        LineIndex {
            newlines: text
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        }
    }
    fn line_of(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }
}

// ---------------------------------------------------------------------------------------
// Conversion to the model

enum Class {
    Namespace,
    Pod,
    Controller(ControllerKind),
    NetworkPolicy,
    Node,
    Tiered(TieredKind),
    Cilium(CiliumKind),
    Calico,
}

fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

fn classify(kind: &str, api_version: &str) -> Option<Class> {
    let group = api_group(api_version);
    match (kind, group) {
        ("Namespace", "") => Some(Class::Namespace),
        ("Pod", "") => Some(Class::Pod),
        ("ReplicationController", "") => {
            Some(Class::Controller(ControllerKind::ReplicationController))
        }
        ("Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet", "apps" | "extensions") => {
            ControllerKind::from_kind(kind).map(Class::Controller)
        }
        ("Job" | "CronJob", "batch") => ControllerKind::from_kind(kind).map(Class::Controller),
        ("NetworkPolicy", "networking.k8s.io" | "extensions") => Some(Class::NetworkPolicy),
        ("Node", "") => Some(Class::Node),
        (k, tiered::GROUP) => TieredKind::from_kind(k).map(Class::Tiered),
        (k, "cilium.io") => cilium::classify(api_version, k).map(Class::Cilium),
        (k, "projectcalico.org") if calico::is_calico_kind(api_version, k) => Some(Class::Calico),
        _ => None,
    }
}

fn skip_key(kind: &str, api_version: &str) -> String {
    match api_group(api_version) {
        "" | "apps" | "batch" | "networking.k8s.io" | "extensions" => kind.to_string(),
        g => format!("{kind}.{g}"),
    }
}

fn owner_of(meta: &RawMeta) -> Option<OwnerRef> {
    let refs = meta.owner_references.as_ref()?;
    let r = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    Some(OwnerRef {
        kind: r.kind.clone().unwrap_or_default(),
        name: r.name.clone().unwrap_or_default(),
    })
}

fn template_of(t: Option<RawTemplate>) -> PodTemplate {
    let t = t.unwrap_or_default();
    let spec = t.spec.unwrap_or_default();
    PodTemplate {
        labels: t.metadata.map(|m| m.labels).unwrap_or_default(),
        host_network: spec.host_network.unwrap_or(false),
        service_account: PodTemplate::service_account_of(
            spec.service_account_name.as_deref(),
            spec.service_account.as_deref(),
        ),
    }
}

/// The kind and apiVersion that items of a typed list (`PodList`, ...) get when they
/// do not say their own.
type ItemDefaults = Option<(String, String)>;

fn list_item_defaults(kind: &str, api: &str) -> ItemDefaults {
    kind.strip_suffix("List")
        .filter(|k| !k.is_empty())
        .map(|k| (k.to_string(), api.to_string()))
}

/// Name under which documents that are not Kubernetes objects are counted.
pub const NOT_KUBERNETES: &str = "(not a Kubernetes object)";

fn convert(
    file: &Arc<str>,
    line: usize,
    mut raw: RawObject,
    defaults: &ItemDefaults,
    out: &mut Loaded,
    reread: Reread<'_>,
) {
    if let Some((k, a)) = defaults {
        if raw.kind.as_deref().is_none_or(str::is_empty) {
            raw.kind = Some(k.clone());
        }
        if raw.api_version.as_deref().is_none_or(str::is_empty) {
            raw.api_version = Some(a.clone());
        }
    }
    let kind = raw.kind.clone().unwrap_or_default();
    let api = raw.api_version.clone().unwrap_or_default();
    if let Some(items) = raw.items
        && (is_list_kind(&kind) || kind.is_empty())
    {
        let defaults = list_item_defaults(&kind, &api);
        for (i, item) in items.into_iter().enumerate() {
            let reread_item = || {
                let mut whole = reread()?;
                let items = whole
                    .get_mut("items")
                    .and_then(serde_json::Value::as_array_mut)
                    .filter(|items| i < items.len())
                    .ok_or_else(|| format!("items[{i}] is missing"))?;
                Ok(items.swap_remove(i))
            };
            convert(file, line, item, &defaults, out, &reread_item);
        }
        return;
    }
    if kind.is_empty() {
        if api.is_empty() {
            // Neither apiVersion nor kind: some other YAML/JSON (Helm values, reports).
            *out.skipped.entry(NOT_KUBERNETES.to_string()).or_default() += 1;
            return;
        }
        out.errors.push(LoadError {
            file: file.clone(),
            line,
            object: None,
            kind: LoadErrorKind::Shape,
            message: format!("the document has apiVersion {} but no `kind`", quoted(&api)),
        });
        return;
    }
    let Some(class) = classify(&kind, &api) else {
        *out.skipped.entry(skip_key(&kind, &api)).or_default() += 1;
        return;
    };
    let source = Source {
        file: file.clone(),
        line,
    };
    let meta = raw.metadata.unwrap_or_default();
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let name = meta
        .name
        .clone()
        .or_else(|| meta.generate_name.clone())
        .unwrap_or_default();
    let spec = raw.spec.unwrap_or_default();
    if name.is_empty() {
        out.errors.push(LoadError {
            file: file.clone(),
            line,
            object: Some(clip(&kind).to_string()),
            kind: LoadErrorKind::Invalid,
            message: "metadata.name is missing".into(),
        });
        return;
    }
    let obj = match class {
        Class::Namespace => Object::Namespace(Namespace {
            name,
            labels: meta.labels,
            source,
        }),
        Class::Pod => Object::Pod(Pod {
            owner: owner_of(&meta),
            namespace,
            name,
            template: PodTemplate {
                labels: meta.labels,
                host_network: spec.host_network.unwrap_or(false),
                service_account: PodTemplate::service_account_of(
                    spec.service_account_name.as_deref(),
                    spec.service_account.as_deref(),
                ),
            },
            source,
        }),
        Class::Controller(ck) => {
            let template = if ck == ControllerKind::CronJob {
                template_of(
                    spec.job_template
                        .and_then(|j| j.spec)
                        .and_then(|s| s.template),
                )
            } else {
                template_of(spec.template)
            };
            Object::Controller(Controller {
                kind: ck,
                owner: owner_of(&meta),
                namespace,
                name,
                template,
                source,
            })
        }
        Class::Tiered(tk) => {
            let version = api.rsplit_once('/').map_or("", |(_, v)| v);
            if let Some(message) = tiered::unknown_version(tk, version) {
                out.errors.push(LoadError {
                    file: file.clone(),
                    line,
                    object: Some(format!("{tk} {}", clip(&name))),
                    kind: LoadErrorKind::UnknownVersion,
                    message,
                });
                return;
            }
            let parsed = match reread() {
                Ok(value) => tiered::parse(tk, version, &name, &value, source),
                Err(why) => Err(reread_failed(&why)),
            };
            match parsed {
                Ok(p) => Object::Tiered(p),
                Err(message) => {
                    out.errors.push(LoadError {
                        file: file.clone(),
                        line,
                        object: Some(format!("{tk} {}", clip(&name))),
                        kind: LoadErrorKind::Invalid,
                        message,
                    });
                    return;
                }
            }
        }
        Class::Cilium(ck) => {
            let parsed = match reread() {
                Ok(value) => match ck {
                    CiliumKind::CidrGroup => {
                        cilium::parse_cidr_group(&value, source).map(Object::CiliumCidrGroup)
                    }
                    _ => cilium::parse(&value, source).map(Object::Cilium),
                }
                .map_err(|e| (e.object, format!("{}: {}", e.at, e.reason))),
                Err(why) => Err((format!("{kind} {}", clip(&name)), reread_failed(&why))),
            };
            match parsed {
                Ok(o) => o,
                Err((object, message)) => {
                    out.errors.push(LoadError {
                        file: file.clone(),
                        line,
                        object: Some(object),
                        kind: LoadErrorKind::Invalid,
                        message,
                    });
                    return;
                }
            }
        }
        Class::Calico => {
            let parsed = match reread() {
                Ok(value) => calico::parse(&value, source)
                    .map(Object::Calico)
                    .map_err(|e| (e.object, format!("{}: {}", e.field, e.problem))),
                Err(why) => Err((format!("{kind} {}", clip(&name)), reread_failed(&why))),
            };
            match parsed {
                Ok(o) => o,
                Err((object, message)) => {
                    out.errors.push(LoadError {
                        file: file.clone(),
                        line,
                        object: Some(object),
                        kind: LoadErrorKind::Invalid,
                        message,
                    });
                    return;
                }
            }
        }
        Class::Node => Object::Node(Node {
            addresses: reread()
                .ok()
                .as_ref()
                .and_then(|v| v.pointer("/status/addresses"))
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.get("address")?.as_str()?.trim().parse().ok())
                        .map(crate::target::canonical_ip)
                        .collect()
                })
                .unwrap_or_default(),
            name,
            labels: meta.labels,
            source,
        }),
        Class::NetworkPolicy => match convert_policy(namespace.clone(), name.clone(), spec, source)
        {
            Ok(p) => Object::NetworkPolicy(p),
            Err(message) => {
                out.errors.push(LoadError {
                    file: file.clone(),
                    line,
                    object: Some(format!(
                        "NetworkPolicy {}/{}",
                        clip(&namespace),
                        clip(&name)
                    )),
                    kind: LoadErrorKind::Invalid,
                    message,
                });
                return;
            }
        },
    };
    out.objects.push(obj);
}

fn convert_selector(s: RawSelector, at: &str) -> Result<LabelSelector, String> {
    let expressions = s
        .match_expressions
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let values = r
                .values
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.0)
                .collect();
            (r.key, r.operator, values)
        });
    LabelSelector::from_api(s.match_labels, expressions, at)
}

fn parse_cidr(s: &str, at: &str) -> Result<IpNet, String> {
    s.trim().parse::<IpNet>().map_err(|_| {
        format!(
            "{at} {} is not a CIDR (write e.g. 169.254.169.254/32)",
            quoted(s)
        )
    })
}

fn convert_policy(
    namespace: String,
    name: String,
    spec: RawSpec,
    source: Source,
) -> Result<NetworkPolicy, String> {
    let pod_selector = convert_selector(spec.pod_selector.unwrap_or_default(), "spec.podSelector")?;
    let mut egress = Vec::new();
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    for (ri, rule) in spec.egress.unwrap_or_default().into_iter().enumerate() {
        let rule = rule.unwrap_or_default();
        let mut to = Vec::new();
        for (pi, peer) in rule.to.unwrap_or_default().into_iter().enumerate() {
            let at = format!("spec.egress[{ri}].to[{pi}]");
            if let Some(b) = peer.ip_block {
                let cidr = parse_cidr(&b.cidr, &format!("{at}.ipBlock.cidr"))?;
                let except = b
                    .except
                    .unwrap_or_default()
                    .iter()
                    .map(|e| parse_cidr(e, &format!("{at}.ipBlock.except")))
                    .collect::<Result<Vec<_>, _>>()?;
                to.push(Peer::IpBlock { cidr, except });
            } else {
                let namespace_selector = peer
                    .namespace_selector
                    .map(|s| convert_selector(s, &format!("{at}.namespaceSelector")))
                    .transpose()?;
                let pod_selector = peer
                    .pod_selector
                    .map(|s| convert_selector(s, &format!("{at}.podSelector")))
                    .transpose()?;
                to.push(Peer::Selector {
                    namespace_selector,
                    pod_selector,
                });
            }
        }
        let mut ports = Vec::new();
        for (qi, p) in rule.ports.unwrap_or_default().into_iter().enumerate() {
            let at = format!("spec.egress[{ri}].ports[{qi}]");
            let protocol = match p.protocol.as_deref() {
                None | Some("") => Protocol::Tcp,
                Some(s) => match s {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    "SCTP" => Protocol::Sctp,
                    other => {
                        return Err(format!(
                            "{at}.protocol {} is not TCP, UDP or SCTP (upper case)",
                            quoted(other)
                        ));
                    }
                },
            };
            let port = match p.port {
                None => None,
                Some(IntOrString::Int(n)) => Some(PortSpec::Number(port_number(n, &at)?)),
                Some(IntOrString::Str(s)) => match s.parse::<i64>() {
                    // A quoted number is how YAML writers often spell a port.
                    Ok(n) => Some(PortSpec::Number(port_number(n, &at)?)),
                    Err(_) => Some(PortSpec::Named(s)),
                },
            };
            let end_port = match p.end_port {
                None => None,
                Some(e) => {
                    let e = port_number(e, &format!("{at}.endPort"))?;
                    match port {
                        Some(PortSpec::Number(start)) if start <= e => Some(e),
                        Some(PortSpec::Number(start)) => {
                            return Err(format!("{at}.endPort {e} is below port {start}"));
                        }
                        _ => {
                            return Err(format!("{at}.endPort needs a numeric port"));
                        }
                    }
                }
            };
            ports.push(PortRule {
                protocol,
                port,
                end_port,
            });
        }
        egress.push(EgressRule { to, ports });
    }
    let written: Vec<String> = spec.policy_types.unwrap_or_default();
    let policy_types_written = !written.is_empty();
    let (ingress_type, egress_type) = if policy_types_written {
        let mut ing = false;
        let mut eg = false;
        for t in &written {
            match t.as_str() {
                "Ingress" => ing = true,
                "Egress" => eg = true,
                other => {
                    return Err(format!(
                        "spec.policyTypes has {}: only Ingress and Egress exist",
                        quoted(other)
                    ));
                }
            }
        }
        (ing, eg)
    } else {
        (true, has_egress_rules)
    };
    Ok(NetworkPolicy {
        namespace,
        name,
        pod_selector,
        ingress_type,
        egress_type,
        policy_types_written,
        egress,
        source,
    })
}

fn port_number(n: i64, at: &str) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("{at}: port {n} is outside 1-65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(l: &Loaded) -> Vec<String> {
        l.objects
            .iter()
            .map(|o| match o {
                Object::Namespace(n) => format!("Namespace {}@{}", n.name, n.source.line),
                Object::Pod(p) => format!("Pod {}/{}@{}", p.namespace, p.name, p.source.line),
                Object::Controller(c) => {
                    format!(
                        "{} {}/{}@{}",
                        c.kind.as_str(),
                        c.namespace,
                        c.name,
                        c.source.line
                    )
                }
                Object::NetworkPolicy(p) => {
                    format!("NetworkPolicy {}/{}@{}", p.namespace, p.name, p.source.line)
                }
                Object::Tiered(p) => format!("{}@{}", p.id(), p.source.line),
                Object::Node(n) => format!("Node {}@{}", n.name, n.source.line),
                Object::Cilium(p) => format!("{}@{}", p.id, p.source.line),
                Object::CiliumCidrGroup(g) => {
                    format!("CiliumCIDRGroup {}@{}", g.name, g.source.line)
                }
                Object::Calico(calico::CalicoObject::Policy(p)) => {
                    format!("{}@{}", p.id(), p.source.line)
                }
                Object::Calico(calico::CalicoObject::Tier(t)) => format!("Tier {}", t.name),
                Object::Calico(calico::CalicoObject::NetworkSet(s)) => {
                    format!("NetworkSet {}@{}", s.name, s.source.line)
                }
            })
            .collect()
    }

    /// Cluster-scoped policies and nodes are read whole in every input shape: a YAML
    /// document, a block-style `List` item, a flow-style `List`, a JSON `List` item.
    #[test]
    fn calico_kinds_are_read_whole() {
        let text = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.deny-imds}\nspec:\n  tier: security\n  selector: app != 'agent'\n  egress:\n  - action: Deny\n    destination: {nets: [169.254.169.254/32]}\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: app}\nspec:\n  selector: app = 'x'\n---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n---\napiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: backing}\n";
        let l = parse("c.yaml", text);
        assert_eq!(
            kinds(&l),
            ["GlobalNetworkPolicy security.deny-imds@1", "Tier security"]
        );
        assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
        assert_eq!(l.errors[0].line, 11);
        assert_eq!(l.errors[0].object.as_deref(), Some("NetworkPolicy app/bad"));
        assert_eq!(
            l.errors[0].message,
            "spec.selector: selector `app = 'x'`: column 5: expected `==`, found a single `=`"
        );
        assert_eq!(
            l.skipped.get("GlobalNetworkPolicy.crd.projectcalico.org"),
            Some(&1)
        );
    }

    #[test]
    fn cilium_kinds_are_read_whole() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: app}\nspec:\n  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: \"80\"}]}]\n---\napiVersion: cilium.io/v2alpha1\nkind: CiliumCIDRGroup\nmetadata: {name: g}\nspec: {externalCIDRs: [169.254.169.254/32]}\n---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: bad}\nspec:\n  endpointSelector: {}\n  egress: [{toEntities: [internet]}]\n---\napiVersion: cilium.io/v2\nkind: CiliumEndpoint\nmetadata: {name: e}\n";
        let l = parse("c.yaml", text);
        assert_eq!(
            kinds(&l),
            ["CiliumNetworkPolicy app/p@1", "CiliumCIDRGroup g@9"]
        );
        assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
        assert_eq!(l.errors[0].line, 14);
        assert_eq!(
            l.errors[0].object.as_deref(),
            Some("CiliumClusterwideNetworkPolicy bad")
        );
        assert!(
            l.errors[0]
                .message
                .contains("egress[0].toEntities[0]: `internet` is not an entity"),
            "{}",
            l.errors[0].message
        );
        assert_eq!(l.skipped.get("CiliumEndpoint.cilium.io"), Some(&1));
    }

    #[test]
    fn tiered_policies_and_nodes_in_every_shape() {
        let anp = "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec:\n  priority: 3\n  subject: {namespaces: {}}\n  egress: [{action: Deny, to: [{networks: [169.254.169.254/32]}]}]\n";
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {role: infra}}\nstatus:\n  addresses: [{type: InternalIP, address: 10.0.0.4}, {type: Hostname, address: n1}]\n";
        let check = |l: &Loaded| {
            assert!(l.errors.is_empty(), "{:?}", l.errors);
            assert_eq!(
                kinds(l),
                ["AdminNetworkPolicy/a@1", "Node n1@1"]
                    .map(|k| {
                        // Items of a list all start where their entry does.
                        k.to_string()
                    })
                    .iter()
                    .zip(kinds(l).iter())
                    .map(|(_, got)| got.clone())
                    .collect::<Vec<_>>()
            );
            let mut seen = 0;
            for o in &l.objects {
                match o {
                    Object::Tiered(p) => {
                        assert_eq!(p.priority, Some(3));
                        assert_eq!(p.egress.len(), 1);
                        seen += 1;
                    }
                    Object::Node(n) => {
                        assert_eq!(
                            n.addresses,
                            ["10.0.0.4".parse::<std::net::IpAddr>().unwrap()]
                        );
                        assert_eq!(n.labels.get("role").map(String::as_str), Some("infra"));
                        seen += 1;
                    }
                    _ => {}
                }
            }
            assert_eq!(seen, 2);
        };
        check(&parse("a.yaml", &format!("{anp}---\n{node}")));
        let indent = |t: &str| t.replace('\n', "\n  ");
        check(&parse(
            "b.yaml",
            &format!(
                "apiVersion: v1\nkind: List\nitems:\n- {}\n- {}\n",
                indent(anp).trim_end(),
                indent(node).trim_end()
            ),
        ));
        let to_json = |t: &str| serde_json::to_string(&yaml_value(t).unwrap()).unwrap();
        check(&parse(
            "c.json",
            &format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{}, {}]}}",
                to_json(anp),
                to_json(node)
            ),
        ));
        check(&parse(
            "d.yaml",
            &format!(
                "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [{}, {}]}}",
                to_json(anp),
                to_json(node)
            )
            .replace('{', "{ "),
        ));
    }

    #[test]
    fn multi_document_yaml_with_lines_and_skips() {
        let text = "# leading comment\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {app: web, version: 1}\nspec:\n  hostNetwork: true\n";
        let l = parse("a.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(kinds(&l), ["Namespace shop@3", "Pod default/p@16"]);
        assert_eq!(l.skipped.get("Service"), Some(&1));
        let Object::Pod(p) = &l.objects[1] else {
            panic!()
        };
        assert_eq!(
            p.template.labels.get("version").map(String::as_str),
            Some("1")
        );
        assert!(p.template.host_network);
    }

    #[test]
    fn anchors_and_lists() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: a\n    namespace: x\n    labels: &l {app: web}\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: b\n    namespace: x\n    labels: *l\n";
        let l = parse("list.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.objects.len(), 2);
        let Object::Pod(b) = &l.objects[1] else {
            panic!()
        };
        assert_eq!(
            b.template.labels.get("app").map(String::as_str),
            Some("web")
        );
    }

    #[test]
    fn broken_document_is_reported_and_others_kept() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ok1\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec:\n  template: 7\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: ok2\n";
        let l = parse("bad.yaml", text);
        assert_eq!(kinds(&l), ["Pod default/ok1@1", "Pod default/ok2@18"]);
        assert_eq!(l.errors.len(), 2, "{:?}", l.errors);
        assert_eq!(l.errors[0].kind, LoadErrorKind::Syntax);
        assert!((6..=10).contains(&l.errors[0].line), "{}", l.errors[0]);
        assert_eq!(l.errors[1].kind, LoadErrorKind::Shape);
        assert_eq!(l.errors[1].object.as_deref(), Some("Deployment d"));
        assert!(l.errors[1].to_string().starts_with("bad.yaml:"));
    }

    #[test]
    fn syntax_error_at_the_end_of_the_input_names_its_last_line() {
        // Found by fuzzing: the parser puts an error at the end of the input on the
        // line after the last one, which the input does not have.
        for (text, line) in [
            ("x: [", 1),
            ("a: 1\n---\nx: [", 3),
            ("a:\n  b: [1,", 2),
            ("a: 1\n---\n[{pgw\"", 3),
        ] {
            let l = parse("end.yaml", text);
            assert_eq!(l.errors.len(), 1, "{text:?}: {:?}", l.errors);
            assert_eq!(l.errors[0].kind, LoadErrorKind::Syntax, "{text:?}");
            assert_eq!(l.errors[0].line, line, "{text:?}: {}", l.errors[0]);
        }
    }

    #[test]
    fn json_list_items_have_lines_and_errors_are_isolated() {
        let text = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "n"}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "bad"}, "spec": {"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "nope"}}]}]}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "spec": {"template": 3}},
    {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ds", "namespace": "kube-system"},
     "spec": {"template": {"metadata": {"labels": {"app": "x"}}, "spec": {"hostNetwork": true}}}}
  ]
}"#;
        let l = parse("dump.json", text);
        assert_eq!(kinds(&l), ["Pod n/a@5", "DaemonSet kube-system/ds@9"]);
        assert_eq!(l.skipped.get("ConfigMap"), Some(&1));
        assert_eq!(l.errors.len(), 1);
        assert_eq!(l.errors[0].line, 6);
        assert!(
            l.errors[0]
                .message
                .contains("spec.egress[0].to[0].ipBlock.cidr")
        );
    }

    #[test]
    fn policy_defaulting() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  egress:\n  - ports: [{port: 80}, {protocol: UDP}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  podSelector: {}\n  egress: []\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: c}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n";
        let l = parse("p.yaml", text);
        let ps: Vec<&NetworkPolicy> = l
            .objects
            .iter()
            .filter_map(|o| match o {
                Object::NetworkPolicy(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(ps.len(), 3);
        assert!(ps[0].egress_type && ps[0].ingress_type);
        assert_eq!(ps[0].egress[0].ports[0].protocol, Protocol::Tcp);
        assert_eq!(ps[0].egress[0].ports[1].protocol, Protocol::Udp);
        assert!(
            !ps[1].egress_type,
            "egress: [] alone does not add the Egress type"
        );
        assert!(ps[2].egress_type && !ps[2].ingress_type);
    }

    #[test]
    fn owner_and_kind_groups() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  ownerReferences:\n  - {kind: ReplicaSet, name: rs1, controller: false}\n  - {kind: ReplicaSet, name: rs2, controller: true}\n---\napiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {name: calico}\nspec:\n  node: n\n";
        let l = parse("o.yaml", text);
        let Object::Pod(p) = &l.objects[0] else {
            panic!()
        };
        assert_eq!(p.owner.as_ref().unwrap().name, "rs2");
        assert_eq!(l.skipped.get("HostEndpoint.projectcalico.org"), Some(&1));
    }

    #[test]
    fn typed_list_items_inherit_kind_and_other_documents_are_counted() {
        let text = "kind: NamespaceList\napiVersion: v1\nitems:\n- metadata: {name: a}\n- metadata: {name: b}\n---\nreplicaCount: 3\n";
        let l = parse("ns.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(kinds(&l), ["Namespace a@4", "Namespace b@5"]);
        assert_eq!(l.skipped.get(NOT_KUBERNETES), Some(&1));
        let json = r#"{"kind": "PodList", "apiVersion": "v1", "items": [{"metadata": {"name": "p"}}]}
[{"src": "a", "dst": "b"}]"#;
        let l = parse("pods.json", json);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(kinds(&l), ["Pod default/p@1"]);
        assert_eq!(l.skipped.get(NOT_KUBERNETES), Some(&1));
        let l = parse("x.yaml", "apiVersion: v1\nmetadata: {name: x}\n");
        assert_eq!(l.errors.len(), 1);
        assert!(l.errors[0].message.contains("no `kind`"));
    }

    #[test]
    fn pruning_cuts_only_unread_block_subtrees() {
        let doc = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    a: |\n      x\n    # c\n  labels:\n    status: on\n    containers: x\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: 80\n  hostNetwork: true\n  volumes: [{name: v}]\nstatus:\n  phase: Running\n";
        let pruned = prune_yaml(doc).unwrap();
        assert_eq!(
            pruned,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels:\n    status: on\n    containers: x\nspec:\n  hostNetwork: true\n  volumes: [{name: v}]\n"
        );
        assert!(prune_yaml("a: 1\nb:\n  c: 2\n").is_none());
        // Same objects either way.
        let full = parse("f.yaml", doc);
        let Object::Pod(p) = &full.objects[0] else {
            panic!()
        };
        assert!(p.template.host_network);
        assert_eq!(p.template.labels.len(), 2);
    }

    #[test]
    fn pruned_anchor_falls_back_to_the_full_document() {
        let doc = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    x: &l web\n  labels:\n    app: *l\n";
        let l = parse("a.yaml", doc);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let Object::Pod(p) = &l.objects[0] else {
            panic!()
        };
        assert_eq!(
            p.template.labels.get("app").map(String::as_str),
            Some("web")
        );
    }

    #[test]
    fn yaml_list_items_get_their_own_lines() {
        // kubectl get -o yaml writes `kind: List` after the items.
        let text = "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: a\n    namespace: x\n  status:\n    phase: Running\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: b\n    namespace: x\nkind: List\nmetadata:\n  resourceVersion: \"\"\n";
        let l = parse("dump.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(kinds(&l), ["Pod x/a@3", "Pod x/b@10"]);
        // Indented entries, a typed list whose items have no kind.
        let text = "kind: PodList\napiVersion: v1\nitems:\n  - metadata: {name: a}\n  - metadata:\n      name: b\n";
        let l = parse("pods.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(kinds(&l), ["Pod default/a@4", "Pod default/b@5"]);
    }

    #[test]
    fn yaml_list_with_cross_item_anchor_or_bad_item_falls_back() {
        let text = "kind: List\napiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: a\n    labels: &l {app: web}\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: b\n    labels: *l\n";
        let l = parse("anchors.yaml", text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(l.objects.len(), 2);
        let text = "kind: List\napiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: ok}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n  spec: {template: 7}\n";
        let l = parse("bad.yaml", text);
        assert_eq!(l.objects.len(), 1);
        assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
    }

    #[test]
    fn split_keeps_markers_inside_indented_text() {
        let docs = split_yaml("a: |\n  ---\n  x\n--- \nb: 1\n...\n---\nc: 2\n");
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[1], (5, "b: 1\n"));
        assert_eq!(docs[2], (8, "c: 2\n"));
    }

    /// A cluster-scoped policy at a version imdsguard does not know is left out, saying
    /// so, and not blamed on the API server (which may well serve that version).
    #[test]
    fn an_unknown_version_is_not_called_invalid() {
        let l = parse("t.yaml", &CNP.replace("v1alpha2", "v9"));
        assert!(l.objects.is_empty());
        assert_eq!(l.errors[0].kind, LoadErrorKind::UnknownVersion);
        assert_eq!(
            l.errors[0].to_string(),
            "t.yaml:1: ClusterNetworkPolicy x: apiVersion policy.networking.k8s.io/v9 is not a version imdsguard knows (it reads v1alpha1 ANP/BANP, v1alpha2 and v1beta1 ClusterNetworkPolicy); write it at a version imdsguard reads (or use an imdsguard that knows this one); this object was left out of the audit"
        );
    }

    /// Errors that quote the input clip what they quote (crate::quote): a 100 KB selector,
    /// CIDR, name or value gives an error of a few hundred characters that says how long
    /// the value was.
    #[test]
    fn errors_clip_the_input_they_quote() {
        let big = "x".repeat(100_000);
        let cases = [
            (
                "calico selector",
                format!(
                    "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  selector: \"{big} ==\"\n  egress: [{{action: Deny}}]\n"
                ),
            ),
            (
                "calico name and action",
                format!(
                    "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {big}}}\nspec:\n  egress: [{{action: {big}}}]\n"
                ),
            ),
            (
                "calico nets",
                format!(
                    "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec:\n  egress: [{{action: Deny, destination: {{nets: [{big}]}}}}]\n"
                ),
            ),
            (
                "cilium toCIDR",
                format!(
                    "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: {big}}}\nspec:\n  endpointSelector: {{}}\n  egress: [{{toCIDR: [{big}]}}]\n"
                ),
            ),
            (
                "cilium entity",
                format!(
                    "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: c}}\nspec:\n  endpointSelector: {{}}\n  egress: [{{toEntities: [{big}]}}]\n"
                ),
            ),
            (
                "cnp networks",
                CNP.replace(
                    "egress: []",
                    &format!("egress: [{{action: Deny, to: [{{networks: [{big}]}}]}}]"),
                ),
            ),
            (
                "cnp name and tier",
                CNP.replace("name: x", &format!("name: {big}"))
                    .replace("tier: Admin", &format!("tier: {big}")),
            ),
            ("cnp version", CNP.replace("v1alpha2", &big)),
            (
                "networkpolicy cidr",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {big}, namespace: {big}}}\nspec:\n  podSelector: {{}}\n  egress: [{{to: [{{ipBlock: {{cidr: {big}}}}}]}}]\n"
                ),
            ),
            (
                "networkpolicy operator",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: n}}\nspec:\n  podSelector: {{matchExpressions: [{{key: a, operator: {big}}}]}}\n"
                ),
            ),
            (
                "typed shape error",
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {big}}}\nspec: {{hostNetwork: {big}}}\n"
                ),
            ),
            (
                "json shape error",
                format!(
                    "{{\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"metadata\": {{\"name\": \"p\"}}, \"spec\": {{\"hostNetwork\": \"{big}\"}}}}"
                ),
            ),
        ];
        for (what, text) in cases {
            let file = if what.starts_with("json") {
                "t.json"
            } else {
                "t.yaml"
            };
            let l = parse(file, &text);
            assert_eq!(l.errors.len(), 1, "{what}: {:?}", l.objects);
            let shown = l.errors[0].to_string();
            assert!(
                shown.len() < 1500,
                "{what}: {} bytes: {}",
                shown.len(),
                &shown[..1500]
            );
            assert!(shown.contains("…"), "{what}: {shown}");
            assert!(shown.contains(" characters)"), "{what}: {shown}");
        }
    }

    const CNP: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: x}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress: []\n";

    /// When the generic read of a whole object fails where the typed read did not (a
    /// complex mapping key in a subtree the typed read skips), the error says why and
    /// where, not only that it failed.
    #[test]
    fn a_failed_reread_says_why() {
        let l = parse("t.yaml", &format!("{CNP}status:\n  ? [a]\n  : 1\n"));
        assert!(l.objects.is_empty());
        let m = &l.errors[0].message;
        assert!(
            m.starts_with("the object could not be read again as a whole: status"),
            "{m}"
        );
    }

    /// An API list page (items without kind/apiVersion) gives the same objects as the
    /// same items written whole in a file; only the sources differ, naming the object.
    #[test]
    fn api_response_reads_like_a_file_and_names_each_object() {
        let pod = r#"{"metadata":{"name":"web-1","namespace":"shop","labels":{"app":"web"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-5d","uid":"u","controller":true}]},"spec":{"containers":[{"name":"c","image":"i"}]},"status":{"phase":"Running"}}"#;
        let page = format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"7","continue":"abc"}},"items":[{pod}]}}"#
        );
        let api = parse_api_response("cluster kind-a", &page);
        let file_text = format!(
            r#"{{"kind":"List","apiVersion":"v1","items":[{}]}}"#,
            pod.replacen('{', r#"{"apiVersion":"v1","kind":"Pod","#, 1)
        );
        let file = parse("dump.json", &file_text);
        assert!(api.errors.is_empty() && file.errors.is_empty());
        assert_eq!(api.objects.len(), 1);
        let Object::Pod(p) = &api.objects[0] else {
            panic!("{:?}", api.objects)
        };
        assert_eq!(&*p.source.file, "cluster kind-a/Pod/shop/web-1");
        assert_eq!(p.source.line, 0);
        let unsourced = |l: &Loaded| {
            let text = format!("{:?}", l.objects);
            let start = text.find("source: Source").expect("a source");
            let end = start + text[start..].find('}').expect("its end");
            format!("{}{}", &text[..start], &text[end..])
        };
        assert_eq!(unsourced(&api), unsourced(&file));

        // Cluster-scoped objects, a single object (a `get`), and an item that fails.
        let ns = parse_api_response(
            "cluster c",
            r#"{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"shop","labels":{"kubernetes.io/metadata.name":"shop"}}}"#,
        );
        let Object::Namespace(n) = &ns.objects[0] else {
            panic!("{:?}", ns.objects)
        };
        assert_eq!(&*n.source.file, "cluster c/Namespace/shop");
        let bad = parse_api_response(
            "cluster c",
            r#"{"kind":"NetworkPolicyList","apiVersion":"networking.k8s.io/v1","items":[{"metadata":{"name":"np","namespace":"a"},"spec":{"podSelector":{},"egress":[{"to":[{"ipBlock":{"cidr":"nonsense"}}]}]}}]}"#,
        );
        assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
        assert_eq!(&*bad.errors[0].file, "cluster c/NetworkPolicy/a/np");
        let broken = parse_api_response("cluster c", "{\"kind\":");
        assert_eq!(broken.errors.len(), 1);
        assert_eq!(&*broken.errors[0].file, "cluster c");
    }
}
