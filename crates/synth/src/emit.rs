//! A minimal ordered value tree and streaming JSON / YAML writers that mimic
//! the formatting of `kubectl get -o json` and `kubectl get -o yaml`.
//!
//! Only one Kubernetes object at a time is materialised as a [`V`] tree; it is
//! written straight to the output and dropped, so memory stays small no matter
//! how many objects are generated.

use std::borrow::Cow;
use std::io::{self, Write};

/// Map key: usually a static field name, sometimes a dynamic label key.
pub type Key = Cow<'static, str>;

/// A JSON-like value whose objects keep (sorted) insertion order.
#[derive(Debug, Clone)]
pub enum V {
    /// A string.
    Str(Cow<'static, str>),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// `null`.
    Null,
    /// An object; keys are sorted when built through [`Obj`].
    Obj(Vec<(Key, V)>),
    /// An array.
    Arr(Vec<V>),
}

/// Builder for [`V::Obj`]. Keys are sorted bytewise on conversion, like the
/// output of kubectl (which marshals unstructured maps with sorted keys).
#[derive(Debug, Default, Clone)]
pub struct Obj(Vec<(Key, V)>);

impl Obj {
    /// An empty object.
    pub fn new() -> Self {
        Obj(Vec::with_capacity(8))
    }

    /// Adds a field (builder style).
    pub fn with(mut self, k: impl Into<Key>, v: impl Into<V>) -> Self {
        self.0.push((k.into(), v.into()));
        self
    }

    /// Adds a field when `v` is `Some`.
    pub fn with_opt(self, k: impl Into<Key>, v: Option<impl Into<V>>) -> Self {
        match v {
            Some(v) => self.with(k, v),
            None => self,
        }
    }

    /// Adds a field in place.
    pub fn set(&mut self, k: impl Into<Key>, v: impl Into<V>) {
        self.0.push((k.into(), v.into()));
    }

    /// Whether no field was added.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Obj> for V {
    fn from(mut o: Obj) -> V {
        o.0.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        V::Obj(o.0)
    }
}
impl From<&'static str> for V {
    fn from(s: &'static str) -> V {
        V::Str(Cow::Borrowed(s))
    }
}
impl From<String> for V {
    fn from(s: String) -> V {
        V::Str(Cow::Owned(s))
    }
}
impl From<&String> for V {
    fn from(s: &String) -> V {
        V::Str(Cow::Owned(s.clone()))
    }
}
impl From<Cow<'static, str>> for V {
    fn from(s: Cow<'static, str>) -> V {
        V::Str(s)
    }
}
impl From<i64> for V {
    fn from(i: i64) -> V {
        V::Int(i)
    }
}
impl From<u32> for V {
    fn from(i: u32) -> V {
        V::Int(i64::from(i))
    }
}
impl From<u16> for V {
    fn from(i: u16) -> V {
        V::Int(i64::from(i))
    }
}
impl From<usize> for V {
    fn from(i: usize) -> V {
        V::Int(i as i64)
    }
}
impl From<bool> for V {
    fn from(b: bool) -> V {
        V::Bool(b)
    }
}
impl From<Vec<V>> for V {
    fn from(a: Vec<V>) -> V {
        V::Arr(a)
    }
}

/// Builds an array from anything convertible to [`V`].
pub fn arr<T: Into<V>>(items: impl IntoIterator<Item = T>) -> V {
    V::Arr(items.into_iter().map(Into::into).collect())
}

const SPACES: &[u8] = &[b' '; 256];

fn pad<W: Write>(w: &mut W, n: usize) -> io::Result<()> {
    let mut n = n;
    while n > 0 {
        let k = n.min(SPACES.len());
        w.write_all(&SPACES[..k])?;
        n -= k;
    }
    Ok(())
}

/// Writes `s` as a JSON string literal (also a valid YAML double-quoted
/// scalar).
pub fn json_str<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        w.write_all(b"\"")?;
        w.write_all(s.as_bytes())?;
        w.write_all(b"\"")
    } else {
        serde_json::to_writer(&mut *w, s).map_err(io::Error::other)
    }
}

fn write_int<W: Write>(w: &mut W, i: i64) -> io::Result<()> {
    let mut buf = [0u8; 24];
    let mut pos = buf.len();
    let neg = i < 0;
    let mut n = i.unsigned_abs();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        pos -= 1;
        buf[pos] = b'-';
    }
    w.write_all(&buf[pos..])
}

/// Writes `v` as pretty JSON with 4-space indentation (kubectl style); the
/// caller has already positioned the cursor at nesting level `level`.
pub fn write_json<W: Write>(w: &mut W, v: &V, level: usize) -> io::Result<()> {
    match v {
        V::Str(s) => json_str(w, s),
        V::Int(i) => write_int(w, *i),
        V::Bool(true) => w.write_all(b"true"),
        V::Bool(false) => w.write_all(b"false"),
        V::Null => w.write_all(b"null"),
        V::Obj(f) if f.is_empty() => w.write_all(b"{}"),
        V::Arr(a) if a.is_empty() => w.write_all(b"[]"),
        V::Obj(fields) => {
            w.write_all(b"{\n")?;
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",\n")?;
                }
                pad(w, (level + 1) * 4)?;
                json_str(w, k)?;
                w.write_all(b": ")?;
                write_json(w, v, level + 1)?;
            }
            w.write_all(b"\n")?;
            pad(w, level * 4)?;
            w.write_all(b"}")
        }
        V::Arr(items) => {
            w.write_all(b"[\n")?;
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",\n")?;
                }
                pad(w, (level + 1) * 4)?;
                write_json(w, v, level + 1)?;
            }
            w.write_all(b"\n")?;
            pad(w, level * 4)?;
            w.write_all(b"]")
        }
    }
}

/// Writes `v` as compact JSON (as in `last-applied-configuration`).
pub fn write_json_compact<W: Write>(w: &mut W, v: &V) -> io::Result<()> {
    match v {
        V::Obj(fields) => {
            w.write_all(b"{")?;
            for (i, (k, v)) in fields.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                json_str(w, k)?;
                w.write_all(b":")?;
                write_json_compact(w, v)?;
            }
            w.write_all(b"}")
        }
        V::Arr(items) => {
            w.write_all(b"[")?;
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write_json_compact(w, v)?;
            }
            w.write_all(b"]")
        }
        scalar => write_json(w, scalar, 0),
    }
}

/// Whether `s` can be written as a plain (unquoted) YAML scalar and still be
/// read back as the same string by YAML 1.1 and 1.2 parsers.
///
/// Conservative rules:
/// * strings starting with a letter or `/` are plain unless they are a YAML
///   1.1 boolean/null word, contain `": "` or `" #"`, end with `:` or a space,
///   or contain characters outside `[A-Za-z0-9._/-:@+=, ]`;
/// * strings starting with a digit are plain only if made of `[A-Za-z0-9._/-]`
///   and either contain a letter other than `e`/`E` (and no `0x`/`0o`/`0b`
///   prefix), like `500m` or a uid, or are dotted addresses like `10.0.0.0/8`;
///   so numbers, `1e5`, dates and timestamps are quoted;
/// * everything else is quoted.
pub fn yaml_plain_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    let word = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/');
    if first.is_ascii_alphabetic() || first == b'/' {
        const RESERVED: [&str; 9] = ["true", "false", "yes", "no", "on", "off", "y", "n", "null"];
        !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s))
            && b.iter()
                .all(|c| word(c) || matches!(c, b':' | b' ' | b'@' | b'+' | b'=' | b','))
            && last != b':'
            && last != b' '
            && !s.contains(": ")
            && !s.contains(" #")
    } else if first.is_ascii_digit() {
        if !b.iter().all(word) {
            return false;
        }
        let radix =
            b.len() > 1 && first == b'0' && matches!(b[1], b'x' | b'X' | b'o' | b'O' | b'b' | b'B');
        let letter = b
            .iter()
            .any(|c| c.is_ascii_alphabetic() && !matches!(c, b'e' | b'E'));
        let dotted = b.iter().filter(|&&c| c == b'.').count() >= 2
            && b.iter()
                .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'/'));
        (letter && !radix) || dotted
    } else {
        false
    }
}

/// Whether a multi-line string can be written as a `|` literal block (as
/// kubectl does for e.g. `last-applied-configuration` or ConfigMap data).
fn yaml_literal_ok(s: &str) -> bool {
    s.contains('\n')
        && s.ends_with('\n')
        && !s.ends_with("\n\n")
        && !s.starts_with([' ', '\n'])
        && s.chars().all(|c| c == '\n' || !c.is_control())
        && !s.split('\n').any(|l| l.ends_with(' '))
}

/// Writes a scalar (or empty collection) followed by a newline; multi-line
/// strings become literal blocks whose lines are indented by `indent`.
fn yaml_scalar_line<W: Write>(w: &mut W, v: &V, indent: usize) -> io::Result<()> {
    match v {
        V::Str(s) if yaml_plain_ok(s) => w.write_all(s.as_bytes())?,
        V::Str(s) if yaml_literal_ok(s) => {
            w.write_all(b"|\n")?;
            for line in s[..s.len() - 1].split('\n') {
                if !line.is_empty() {
                    pad(w, indent)?;
                    w.write_all(line.as_bytes())?;
                }
                w.write_all(b"\n")?;
            }
            return Ok(());
        }
        V::Str(s) => json_str(w, s)?,
        V::Obj(_) => w.write_all(b"{}")?,
        V::Arr(_) => w.write_all(b"[]")?,
        other => write_json(w, other, 0)?,
    }
    w.write_all(b"\n")
}

fn is_block(v: &V) -> bool {
    match v {
        V::Obj(f) => !f.is_empty(),
        V::Arr(a) => !a.is_empty(),
        _ => false,
    }
}

/// Writes the fields of a mapping in block style at `indent` spaces. When
/// `inline` is true the cursor is already placed for the first key (after a
/// `- ` sequence marker).
fn yaml_map<W: Write>(
    w: &mut W,
    fields: &[(Key, V)],
    indent: usize,
    mut inline: bool,
) -> io::Result<()> {
    for (k, v) in fields {
        if !inline {
            pad(w, indent)?;
        }
        inline = false;
        if yaml_plain_ok(k) {
            w.write_all(k.as_bytes())?;
        } else {
            json_str(w, k)?;
        }
        w.write_all(b":")?;
        match v {
            V::Obj(f) if !f.is_empty() => {
                w.write_all(b"\n")?;
                yaml_map(w, f, indent + 2, false)?;
            }
            V::Arr(a) if !a.is_empty() => {
                // kubectl style: sequence dashes at the same indentation as
                // the parent key.
                w.write_all(b"\n")?;
                yaml_seq(w, a, indent, false)?;
            }
            _ => {
                w.write_all(b" ")?;
                yaml_scalar_line(w, v, indent + 2)?;
            }
        }
    }
    Ok(())
}

fn yaml_seq<W: Write>(w: &mut W, items: &[V], indent: usize, mut inline: bool) -> io::Result<()> {
    for v in items {
        if !inline {
            pad(w, indent)?;
        }
        inline = false;
        w.write_all(b"- ")?;
        match v {
            V::Obj(f) if is_block(v) => yaml_map(w, f, indent + 2, true)?,
            V::Arr(a) if is_block(v) => yaml_seq(w, a, indent + 2, true)?,
            _ => yaml_scalar_line(w, v, indent + 2)?,
        }
    }
    Ok(())
}

/// Writes one YAML document body (no `---` marker) for a top-level object.
pub fn write_yaml_doc<W: Write>(w: &mut W, v: &V) -> io::Result<()> {
    match v {
        V::Obj(f) if !f.is_empty() => yaml_map(w, f, 0, false),
        V::Arr(a) if !a.is_empty() => yaml_seq(w, a, 0, false),
        other => yaml_scalar_line(w, other, 2),
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A single `kind: List` object, pretty JSON like `kubectl get -A -o json`.
    Json,
    /// Multi-document block-style YAML, one object per document.
    Yaml,
}

/// Streaming sink that receives top-level Kubernetes objects one by one.
pub struct Sink<W: Write> {
    w: W,
    format: Format,
    count: usize,
}

impl<W: Write> Sink<W> {
    /// Starts the output (writes the JSON `List` header if needed).
    pub fn new(w: W, format: Format) -> io::Result<Self> {
        let mut s = Sink {
            w,
            format,
            count: 0,
        };
        if format == Format::Json {
            s.w.write_all(b"{\n    \"apiVersion\": \"v1\",\n    \"items\": [")?;
        }
        Ok(s)
    }

    /// Writes one object.
    pub fn item(&mut self, v: &V) -> io::Result<()> {
        match self.format {
            Format::Json => {
                self.w
                    .write_all(if self.count == 0 { b"\n" } else { b",\n" })?;
                pad(&mut self.w, 8)?;
                write_json(&mut self.w, v, 2)?;
            }
            Format::Yaml => {
                if self.count > 0 {
                    self.w.write_all(b"---\n")?;
                }
                write_yaml_doc(&mut self.w, v)?;
            }
        }
        self.count += 1;
        Ok(())
    }

    /// Finishes the output, flushes, and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.format == Format::Json {
            if self.count > 0 {
                self.w.write_all(b"\n    ]")?;
            } else {
                self.w.write_all(b"]")?;
            }
            self.w.write_all(
                b",\n    \"kind\": \"List\",\n    \"metadata\": {\n        \"resourceVersion\": \"\"\n    }\n}\n",
            )?;
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> V {
        Obj::new()
            .with("kind", "Pod")
            .with("apiVersion", "v1")
            .with(
                "metadata",
                Obj::new()
                    .with("name", "p")
                    .with("labels", Obj::new().with("a", "true").with("b", "0123")),
            )
            .with(
                "spec",
                Obj::new()
                    .with("empty", Obj::new())
                    .with("list", arr(["x", "10.0.0.0/8"]))
                    .with("text", "line one\n\n  indented\n")
                    .with(
                        "nested",
                        arr([
                            V::from(Obj::new().with("k", 1u32).with("j", V::Null)),
                            arr([1u32, 2]),
                        ]),
                    ),
            )
            .into()
    }

    #[test]
    fn yaml_layout_matches_kubectl() {
        let mut out = Vec::new();
        write_yaml_doc(&mut out, &sample()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "\
apiVersion: v1
kind: Pod
metadata:
  labels:
    a: \"true\"
    b: \"0123\"
  name: p
spec:
  empty: {}
  list:
  - x
  - 10.0.0.0/8
  nested:
  - j: null
    k: 1
  - - 1
    - 2
  text: |
    line one

      indented
";
        assert_eq!(text, expected);
    }

    #[test]
    fn json_layout_matches_kubectl() {
        let mut out = Vec::new();
        write_json(&mut out, &sample(), 0).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("{\n    \"apiVersion\": \"v1\",\n    \"kind\": \"Pod\","));
        assert!(text.contains("\"empty\": {},"));
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["metadata"]["labels"]["a"], "true");
    }

    #[test]
    fn yaml_strings_round_trip() {
        let samples = [
            "Pod",
            "500m",
            "7fe8ba4449",
            "7e12345678",
            "0123",
            "1.0",
            "true",
            "No",
            "y",
            "~",
            "null",
            "2024-01-01T00:00:00Z",
            "25%",
            "fd00:ec2::254/128",
            "*/15 * * * *",
            "@hourly",
            "a: b",
            "x #y",
            "line\nbreak\n",
            "{\"a\":1}\n",
            "",
            " lead",
            "tab\there",
            "0x1F",
            "1e5",
            "1_000",
            "12:30:00",
            "http://h:80/p",
            "\u{e9}t\u{e9}",
            "quote\"s",
        ];
        for s in samples {
            let v: V = Obj::new().with("k", s).with("l", arr([s])).into();
            let mut out = Vec::new();
            write_yaml_doc(&mut out, &v).unwrap();
            let text = String::from_utf8(out).unwrap();
            let parsed: std::collections::BTreeMap<String, serde_norway::Value> =
                serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{s:?}: {e}\n{text}"));
            assert_eq!(parsed["k"].as_str(), Some(s), "{text}");
            assert_eq!(parsed["l"][0].as_str(), Some(s), "{text}");
        }
    }

    #[test]
    fn plain_scalars() {
        for ok in [
            "Pod",
            "kubernetes.io/metadata.name",
            "0.0.0.0/0",
            "v1.2.3",
            "/healthz",
            "500m",
            "1Gi",
            "7fe8ba4449",
            "49481c64-66fd-488d-bfca-71b87f8c21dd",
            "nginx:1.25.3",
            "fd00:ec2::254/128",
            "http://otel:4317",
            "Deployment has minimum availability.",
        ] {
            assert!(yaml_plain_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "true",
            "No",
            "ON",
            "null",
            "123",
            "1.5",
            "1e5",
            "1E10",
            "0x1f",
            "0b1",
            "2024-01-01",
            "2024-01-01T00:00:00Z",
            "a: b",
            "a #b",
            "-x",
            ".inf",
            "~",
            "*x",
            "25%",
            "{}",
            "key:",
            "trailing ",
            " lead",
            "12:30",
            "1_000",
            "0o17",
        ] {
            assert!(!yaml_plain_ok(bad), "{bad}");
        }
    }
}
