//! Calico's label selector language, as `projectcalico.org/v3` policies write it
//! (`role == 'db' && !has(debug)`), parsed into a small tree and evaluated against labels.
//!
//! The grammar and the meaning of every operator follow Calico's own parser and AST
//! (<https://github.com/projectcalico/calico/blob/master/libcalico-go/lib/selector/tokenizer/tokenizer.go>,
//! `…/selector/parser/parser.go`, `…/selector/parser/ast.go`) and the documented table
//! (<https://docs.tigera.io/calico/latest/reference/resources/networkpolicy#selectors>):
//!
//! - match operators: `all()`, `global()`, `k == 'v'`, `k != 'v'` (also true when `k` is
//!   missing), `has(k)`, `k in {'a', 'b'}`, `k not in {…}` (also true when `k` is missing),
//!   `k contains 's'`, `k starts with 's'`, `k ends with 's'`;
//! - `!` binds tighter than `&&`, which binds tighter than `||`; parentheses group; leading
//!   `!`s collapse (`!!a == 'b'` is `a == 'b'`);
//! - strings in single or double quotes, without escapes; label keys are
//!   `[a-zA-Z0-9_./-]+`; only spaces and tabs separate tokens (a newline is an error, as
//!   in Calico);
//! - the operator words after a label are matched as prefixes, as Calico's tokenizer
//!   does (`a in{'x'}` is valid; `not` before `in` and `starts`/`ends` before `with` may be
//!   followed by spaces); `has(`, `all(` and `global(` must be written without a space
//!   before `(`;
//! - an empty (or blank) selector is `all()`; a set may be empty (`k in {}`) and may end
//!   with a comma.
//!
//! What `all()` and `global()` select depends on where the selector is used (a
//! [`Scope`]): in a rule's or policy's `namespaceSelector` Calico rewrites `all()` to
//! "any namespaced resource" and `global()` to "any non-namespaced resource"
//! (`libcalico-go/lib/backend/syncersv1/updateprocessors/rules.go`); elsewhere both
//! match everything.
//!
//! Selectors come from untrusted manifests: parentheses may nest at most
//! [`MAX_DEPTH`] levels (evaluation recursion is bounded by the same number) and a
//! selector may be at most [`MAX_LEN`] bytes long.

use std::collections::BTreeSet;
use std::fmt;

use crate::model::{LabelSelector, Labels, Operator};
use crate::quote::{clip, quoted};

/// The label Calico puts on every endpoint it creates for a Kubernetes pod (`k8s`).
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";

/// How deeply parentheses may nest.
pub const MAX_DEPTH: usize = 64;
/// The longest selector accepted, in bytes (Kubernetes caps a whole object at about
/// 1.5 MB; a selector of 64 KiB is already far beyond any real one).
pub const MAX_LEN: usize = 64 * 1024;

/// Where a selector is evaluated, which decides what `all()` and `global()` mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A policy's or rule's `selector` (and `notSelector`): `all()` and `global()` match
    /// every resource in scope.
    Plain,
    /// A `namespaceSelector`, evaluated for a resource that lives in a namespace
    /// (`namespaced`) or not (host endpoints, GlobalNetworkSets): `all()` matches the
    /// namespaced ones, `global()` the others.
    Namespace {
        /// Whether the resource is namespaced.
        namespaced: bool,
    },
    /// A `serviceAccountSelector`: `all()` matches endpoints that run under a service
    /// account (`libcalico-go/…/updateprocessors/globalnetworkpolicyprocessor.go`
    /// rewrites it to `has(projectcalico.org/serviceaccount)`).
    ServiceAccount {
        /// Whether the endpoint has a service account.
        has_service_account: bool,
    },
}

/// Label lookup for selector evaluation: plain label maps, or views that add the labels
/// Calico attaches to endpoints (namespace, service account, inherited namespace labels).
pub trait LabelSource {
    /// The value of a label, if present.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSource for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    root: Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    All,
    Global,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

impl Selector {
    /// Parses a selector. An empty or blank text is `all()`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > MAX_LEN {
            return Err(SelectorError {
                column: 1,
                expected: format!("a selector of at most {MAX_LEN} bytes"),
                found: format!("{} bytes", text.len()),
            });
        }
        let tokens = tokenize(text)?;
        let mut p = Parser {
            text,
            tokens: &tokens,
            pos: 0,
        };
        let root = if p.peek().kind == Tok::Eof {
            Node::All
        } else {
            let node = p.or(0)?;
            let t = p.peek();
            if t.kind != Tok::Eof {
                return Err(p.error(t, "`&&`, `||` or the end of the selector"));
            }
            node
        };
        Ok(Selector {
            text: text.to_string(),
            root,
        })
    }

    /// `all()`.
    pub fn all() -> Selector {
        Selector {
            text: "all()".into(),
            root: Node::All,
        }
    }

    /// The selector Calico derives from a Kubernetes label selector (matchLabels as `==`,
    /// `In` / `NotIn` as `in` / `not in`, `Exists` / `DoesNotExist` as `has` / `!has`, all
    /// joined by `&&`; `libcalico-go/lib/backend/k8s/conversion/conversion.go`,
    /// `k8sSelectorToCalico`). The empty selector is `all()`.
    pub fn from_label_selector(s: &LabelSelector) -> Selector {
        let mut parts = Vec::new();
        let mut text = Vec::new();
        for (k, v) in &s.match_labels {
            parts.push(Node::Eq(k.clone(), v.clone()));
            text.push(format!("{k} == {}", quote(v)));
        }
        for r in &s.match_expressions {
            let set: BTreeSet<String> = r.values.iter().cloned().collect();
            let list = || {
                r.values
                    .iter()
                    .map(|v| quote(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let k = r.key.clone();
            match r.operator {
                Operator::In => {
                    text.push(format!("{k} in {{{}}}", list()));
                    parts.push(Node::In(k, set));
                }
                Operator::NotIn => {
                    text.push(format!("{k} not in {{{}}}", list()));
                    parts.push(Node::NotIn(k, set));
                }
                Operator::Exists => {
                    text.push(format!("has({k})"));
                    parts.push(Node::Has(k));
                }
                Operator::DoesNotExist => {
                    text.push(format!("!has({k})"));
                    parts.push(Node::Not(Box::new(Node::Has(k))));
                }
            }
        }
        match parts.len() {
            0 => Selector::all(),
            1 => Selector {
                text: text.remove(0),
                root: parts.remove(0),
            },
            _ => Selector {
                text: text.join(" && "),
                root: Node::And(parts),
            },
        }
    }

    /// `projectcalico.org/orchestrator == 'k8s' && (pods)`: what Calico makes of a
    /// Kubernetes pod selector, so that it matches pods only, never host endpoints or
    /// network sets (`k8sSelectorToCalico` with `SelectorPod`).
    pub fn kubernetes_pods(pods: &Selector) -> Selector {
        let orchestrator = Node::Eq(ORCHESTRATOR_LABEL.to_string(), "k8s".to_string());
        let head = format!("{ORCHESTRATOR_LABEL} == 'k8s'");
        if pods.is_all() {
            Selector {
                text: head,
                root: orchestrator,
            }
        } else {
            Selector {
                text: format!("{head} && ({})", pods.text),
                root: Node::And(vec![orchestrator, pods.root.clone()]),
            }
        }
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it is exactly `all()` (or empty).
    pub fn is_all(&self) -> bool {
        self.root == Node::All
    }

    /// Whether `global()` appears anywhere in it.
    pub fn uses_global(&self) -> bool {
        fn walk(n: &Node) -> bool {
            match n {
                Node::Global => true,
                Node::Not(x) => walk(x),
                Node::And(v) | Node::Or(v) => v.iter().any(walk),
                _ => false,
            }
        }
        walk(&self.root)
    }

    /// Whether it is exactly `global()`.
    pub fn is_global(&self) -> bool {
        self.root == Node::Global
    }

    /// Whether the labels match, with `all()` and `global()` matching everything.
    pub fn matches(&self, labels: &dyn LabelSource) -> bool {
        self.matches_in(labels, Scope::Plain)
    }

    /// Whether the labels match in the given scope.
    pub fn matches_in(&self, labels: &dyn LabelSource, scope: Scope) -> bool {
        eval(&self.root, labels, scope)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn quote(v: &str) -> String {
    if v.contains('\'') {
        format!("\"{v}\"")
    } else {
        format!("'{v}'")
    }
}

/// Evaluation recursion is bounded by the parse depth (at most [`MAX_DEPTH`] nested
/// parentheses, each adding at most three levels: Or, And, Not).
fn eval(n: &Node, l: &dyn LabelSource, scope: Scope) -> bool {
    match n {
        Node::All => match scope {
            Scope::Plain => true,
            Scope::Namespace { namespaced } => namespaced,
            Scope::ServiceAccount {
                has_service_account,
            } => has_service_account,
        },
        Node::Global => match scope {
            Scope::Namespace { namespaced } => !namespaced,
            _ => true,
        },
        Node::Has(k) => l.label(k).is_some(),
        Node::Eq(k, v) => l.label(k) == Some(v.as_str()),
        Node::Ne(k, v) => l.label(k) != Some(v.as_str()),
        Node::In(k, set) => l.label(k).is_some_and(|x| set.contains(x)),
        Node::NotIn(k, set) => l.label(k).is_none_or(|x| !set.contains(x)),
        Node::Contains(k, v) => l.label(k).is_some_and(|x| x.contains(v.as_str())),
        Node::StartsWith(k, v) => l.label(k).is_some_and(|x| x.starts_with(v.as_str())),
        Node::EndsWith(k, v) => l.label(k).is_some_and(|x| x.ends_with(v.as_str())),
        Node::Not(x) => !eval(x, l, scope),
        Node::And(v) => v.iter().all(|x| eval(x, l, scope)),
        Node::Or(v) => v.iter().any(|x| eval(x, l, scope)),
    }
}

/// Why a selector could not be parsed: where (1-based character column) and what was
/// expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: expected {expected}, found {found}")]
pub struct SelectorError {
    /// 1-based column, in characters.
    pub column: usize,
    /// What would have been valid there.
    pub expected: String,
    /// What was there.
    pub found: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Label(String),
    Str(String),
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    In,
    Not,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    All,
    Global,
    Has(String),
    LParen,
    RParen,
    And,
    Or,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Label(l) => format!("label {}", quoted(l)),
            Tok::Str(s) => format!("string {}", clip(&quote(s))),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eq => "`==`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::In => "`in`".into(),
            Tok::Not => "`!`".into(),
            Tok::NotIn => "`not in`".into(),
            Tok::Contains => "`contains`".into(),
            Tok::StartsWith => "`starts with`".into(),
            Tok::EndsWith => "`ends with`".into(),
            Tok::All => "`all()`".into(),
            Tok::Global => "`global()`".into(),
            Tok::Has(k) => format!("`has({})`", clip(k)),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::And => "`&&`".into(),
            Tok::Or => "`||`".into(),
            Tok::Eof => "the end of the selector".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    /// Byte offset into the text.
    at: usize,
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

fn column(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].chars().count() + 1
}

fn err_at(text: &str, at: usize, expected: &str, found: String) -> SelectorError {
    SelectorError {
        column: column(text, at),
        expected: expected.to_string(),
        found,
    }
}

/// What is at `at`, for error messages.
fn found_at(text: &str, at: usize) -> String {
    match text[at..].chars().next() {
        None => "the end of the selector".into(),
        Some('\n') => "a newline (only spaces and tabs may separate tokens)".into(),
        Some('\r') => "a carriage return (only spaces and tabs may separate tokens)".into(),
        Some(c) => format!("`{}`", c.escape_debug()),
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, SelectorError> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out: Vec<Token> = Vec::new();
    let skip_ws = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let label_end = |i: usize| {
        let mut j = i;
        while j < b.len() && is_label_byte(b[j]) {
            j += 1;
        }
        j
    };
    loop {
        i = skip_ws(i);
        if i >= b.len() {
            out.push(Token {
                kind: Tok::Eof,
                at: i,
            });
            return Ok(out);
        }
        let start = i;
        let after_label = matches!(
            out.last(),
            Some(Token {
                kind: Tok::Label(_),
                ..
            })
        );
        let kind = match b[i] {
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            q @ (b'"' | b'\'') => {
                let Some(len) = text[i + 1..].find(q as char) else {
                    return Err(err_at(
                        text,
                        i,
                        &format!("a closing {} for this string", q as char),
                        "the end of the selector".into(),
                    ));
                };
                let s = text[i + 1..i + 1 + len].to_string();
                i += len + 2;
                Tok::Str(s)
            }
            b'{' => {
                i += 1;
                Tok::LBrace
            }
            b'}' => {
                i += 1;
                Tok::RBrace
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b'=' => {
                if b.get(i + 1) == Some(&b'=') {
                    i += 2;
                    Tok::Eq
                } else {
                    return Err(err_at(text, i, "`==`", "a single `=`".into()));
                }
            }
            b'!' => {
                if b.get(i + 1) == Some(&b'=') {
                    i += 2;
                    Tok::Ne
                } else {
                    i += 1;
                    Tok::Not
                }
            }
            b'&' => {
                if b.get(i + 1) == Some(&b'&') {
                    i += 2;
                    Tok::And
                } else {
                    return Err(err_at(text, i, "`&&`", "a single `&`".into()));
                }
            }
            b'|' => {
                if b.get(i + 1) == Some(&b'|') {
                    i += 2;
                    Tok::Or
                } else {
                    return Err(err_at(text, i, "`||`", "a single `|`".into()));
                }
            }
            _ if after_label => {
                const OPS: &str = "an operator (`==`, `!=`, `in`, `not in`, `contains`, `starts with`, `ends with`)";
                let rest = &text[i..];
                let two_words = |first: &str, kind: Tok| {
                    let j = skip_ws(i + first.len());
                    if text[j..].starts_with("with") {
                        Ok((j + 4, kind))
                    } else {
                        Err(err_at(
                            text,
                            j,
                            &format!("`with` after `{first}`"),
                            found_at(text, j),
                        ))
                    }
                };
                let (next, kind) = if rest.starts_with("contains") {
                    (i + 8, Tok::Contains)
                } else if rest.starts_with("starts") {
                    two_words("starts", Tok::StartsWith)?
                } else if rest.starts_with("ends") {
                    two_words("ends", Tok::EndsWith)?
                } else if rest.starts_with("not") {
                    let j = skip_ws(i + 3);
                    if text[j..].starts_with("in") {
                        (j + 2, Tok::NotIn)
                    } else {
                        return Err(err_at(text, j, "`in` after `not`", found_at(text, j)));
                    }
                } else if rest.starts_with("in") {
                    (i + 2, Tok::In)
                } else {
                    return Err(err_at(text, i, OPS, found_at(text, i)));
                };
                i = next;
                kind
            }
            _ => {
                let rest = &text[i..];
                if rest.starts_with("has(") {
                    let j = skip_ws(i + 4);
                    let end = label_end(j);
                    if end == j {
                        return Err(err_at(
                            text,
                            j,
                            "a label name in `has(…)`",
                            found_at(text, j),
                        ));
                    }
                    let key = text[j..end].to_string();
                    let k = skip_ws(end);
                    if b.get(k) != Some(&b')') {
                        return Err(err_at(text, k, "`)` closing `has(`", found_at(text, k)));
                    }
                    i = k + 1;
                    Tok::Has(key)
                } else if rest.starts_with("all(") || rest.starts_with("global(") {
                    let (open, kind) = if rest.starts_with("all(") {
                        (4, Tok::All)
                    } else {
                        (7, Tok::Global)
                    };
                    let k = skip_ws(i + open);
                    if b.get(k) != Some(&b')') {
                        let what = if kind == Tok::All { "all(" } else { "global(" };
                        return Err(err_at(
                            text,
                            k,
                            &format!("`)` closing `{what}`"),
                            found_at(text, k),
                        ));
                    }
                    i = k + 1;
                    kind
                } else {
                    let end = label_end(i);
                    if end == i {
                        return Err(err_at(
                            text,
                            i,
                            "a label, `has(…)`, `all()`, `global()`, `!` or `(`",
                            found_at(text, i),
                        ));
                    }
                    let l = text[i..end].to_string();
                    i = end;
                    Tok::Label(l)
                }
            }
        };
        out.push(Token { kind, at: start });
    }
}

struct Parser<'a> {
    text: &'a str,
    tokens: &'a [Token],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> &'a Token {
        // The token list always ends with Eof, and `pos` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> &'a Token {
        let t = self.peek();
        if t.kind != Tok::Eof {
            self.pos += 1;
        }
        t
    }

    fn error(&self, t: &Token, expected: &str) -> SelectorError {
        SelectorError {
            column: column(self.text, t.at),
            expected: expected.to_string(),
            found: t.kind.describe(),
        }
    }

    fn or(&mut self, depth: usize) -> Result<Node, SelectorError> {
        let mut parts = vec![self.and(depth)?];
        while self.peek().kind == Tok::Or {
            self.next();
            parts.push(self.and(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Node::Or(parts)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Node, SelectorError> {
        let mut parts = vec![self.operation(depth)?];
        while self.peek().kind == Tok::And {
            self.next();
            parts.push(self.operation(depth)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Node::And(parts)
        })
    }

    fn operation(&mut self, depth: usize) -> Result<Node, SelectorError> {
        let mut negated = false;
        while self.peek().kind == Tok::Not {
            self.next();
            negated = !negated;
        }
        let t = self.next();
        let node = match &t.kind {
            Tok::Has(k) => Node::Has(k.clone()),
            Tok::All => Node::All,
            Tok::Global => Node::Global,
            Tok::Label(key) => self.label_operation(key)?,
            Tok::LParen => {
                if depth >= MAX_DEPTH {
                    return Err(self.error(t, &format!("at most {MAX_DEPTH} nested parentheses")));
                }
                let inner = self.or(depth + 1)?;
                let close = self.next();
                if close.kind != Tok::RParen {
                    return Err(self.error(close, "`)`, `&&` or `||`"));
                }
                inner
            }
            _ => {
                return Err(self.error(t, "a label, `has(…)`, `all()`, `global()`, `!` or `(`"));
            }
        };
        Ok(if negated {
            Node::Not(Box::new(node))
        } else {
            node
        })
    }

    fn label_operation(&mut self, key: &str) -> Result<Node, SelectorError> {
        let op = self.next();
        let key = key.to_string();
        let string = |p: &mut Self| -> Result<String, SelectorError> {
            let t = p.next();
            match &t.kind {
                Tok::Str(s) => Ok(s.clone()),
                _ => Err(p.error(t, "a quoted string")),
            }
        };
        Ok(match op.kind {
            Tok::Eq => Node::Eq(key, string(self)?),
            Tok::Ne => Node::Ne(key, string(self)?),
            Tok::Contains => Node::Contains(key, string(self)?),
            Tok::StartsWith => Node::StartsWith(key, string(self)?),
            Tok::EndsWith => Node::EndsWith(key, string(self)?),
            Tok::In | Tok::NotIn => {
                let open = self.next();
                if open.kind != Tok::LBrace {
                    return Err(self.error(open, "`{` starting a set of strings"));
                }
                let mut set = BTreeSet::new();
                while let Tok::Str(s) = &self.peek().kind {
                    self.next();
                    set.insert(s.clone());
                    if self.peek().kind == Tok::Comma {
                        self.next();
                    } else {
                        break;
                    }
                }
                let close = self.next();
                if close.kind != Tok::RBrace {
                    return Err(self.error(close, "a quoted string, `,` or `}`"));
                }
                if op.kind == Tok::In {
                    Node::In(key, set)
                } else {
                    Node::NotIn(key, set)
                }
            }
            _ => {
                return Err(self.error(
                    op,
                    &format!(
                        "an operator after label {} (`==`, `!=`, `in`, `not in`, `contains`, `starts with`, `ends with`)",
                        quoted(&key)
                    ),
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    //! Each case cites the Calico documentation of the selector language:
    //! <https://docs.tigera.io/calico/latest/reference/resources/networkpolicy#selectors>
    //! (the same table is on the GlobalNetworkPolicy page), or Calico's parser where the
    //! docs say nothing.
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(sel: &str, pairs: &[(&str, &str)]) -> bool {
        Selector::parse(sel)
            .unwrap_or_else(|e| panic!("{sel}: {e}"))
            .matches(&labels(pairs))
    }

    fn err(sel: &str) -> SelectorError {
        Selector::parse(sel).expect_err(sel)
    }

    #[test]
    fn match_operators() {
        // "k == 'v' Matches resources with the label 'k' and value 'v'."
        assert!(m("k == 'v'", &[("k", "v")]));
        assert!(!m("k == 'v'", &[("k", "w")]));
        assert!(!m("k == 'v'", &[]));
        assert!(m("k == \"v\"", &[("k", "v")]));
        // "k != 'v' Matches resources without label 'k' or with label 'k' and value not
        // equal to v"
        assert!(m("k != 'v'", &[]));
        assert!(m("k != 'v'", &[("k", "w")]));
        assert!(!m("k != 'v'", &[("k", "v")]));
        // "has(k) Matches resources with label 'k', independent of value."
        assert!(m("has(k)", &[("k", "")]));
        assert!(!m("has(k)", &[("j", "x")]));
        // "To match pods that do not have label k, combine this operator with ! to form
        // !has(k)"
        assert!(m("!has(k)", &[("j", "x")]));
        assert!(!m("!has(k)", &[("k", "x")]));
        // "k in { 'v1', 'v2' } Matches resources with label 'k' and value in the given set"
        assert!(m("k in { 'v1', 'v2' }", &[("k", "v2")]));
        assert!(!m("k in { 'v1', 'v2' }", &[("k", "v3")]));
        assert!(!m("k in { 'v1', 'v2' }", &[]));
        // "k not in { 'v1', 'v2' } Matches resources without label 'k' or with label 'k' and
        // value not in the given set"
        assert!(m("k not in { 'v1', 'v2' }", &[]));
        assert!(m("k not in { 'v1', 'v2' }", &[("k", "v3")]));
        assert!(!m("k not in { 'v1', 'v2' }", &[("k", "v1")]));
        // "k contains 's' Matches resources with label 'k' and value containing the
        // substring 's'"
        assert!(m("k contains 'ro'", &[("k", "prod")]));
        assert!(!m("k contains 'ro'", &[]));
        // "k starts with 's'" / "k ends with 's'"
        assert!(m("k starts with 'pr'", &[("k", "prod")]));
        assert!(!m("k starts with 'od'", &[("k", "prod")]));
        assert!(m("k ends with 'od'", &[("k", "prod")]));
        assert!(!m("k ends with 'x'", &[]));
        // "all() Match all in-scope resources. To match no resources, combine this
        // operator with ! to form !all()."
        assert!(m("all()", &[]));
        assert!(!m("!all()", &[("a", "b")]));
        // Calico's AST: GlobalNode evaluates true outside a namespaceSelector.
        assert!(m("global()", &[]));
    }

    #[test]
    fn precedence_follows_the_documented_example() {
        // "Operators have the following precedence: Highest: all the match operators,
        // Parentheses, Negation with !, Conjunction with &&, Lowest: Disjunction with ||"
        // The documented example:
        // `! has(my-label) || my-label starts with 'prod' && role in {'frontend','business'}`
        // "Would be bracketed like this:
        // ((!(has(my-label)) || ((my-label starts with 'prod') && (role in {'frontend','business'}))"
        let s = "! has(my-label) || my-label starts with 'prod' && role in {'frontend','business'}";
        // "It would match: Any resource that did not have label "my-label"."
        assert!(m(s, &[("role", "db")]));
        // "Any resource that both: Has a value for my-label that starts with "prod", and,
        // Has a role label with value either "frontend", or "business"."
        assert!(m(s, &[("my-label", "prod-1"), ("role", "business")]));
        assert!(!m(s, &[("my-label", "prod-1"), ("role", "db")]));
        assert!(!m(s, &[("my-label", "dev"), ("role", "frontend")]));
        // Parentheses group; `!` applies to one operation only.
        assert!(!m("!(a == 'x' || b == 'y')", &[("b", "y")]));
        assert!(m("!a == 'x' && b == 'y'", &[("b", "y")]));
        assert!(m("!!a == 'x'", &[("a", "x")]));
        assert!(m("(((a == 'x')))", &[("a", "x")]));
    }

    #[test]
    fn calico_tokenizer_quirks() {
        // Operator words after a label are prefixes (tokenizer.go): no space needed.
        assert!(m("a in{'x'}", &[("a", "x")]));
        assert!(m("a contains'x'", &[("a", "x")]));
        assert!(m("a not   in {'x'}", &[("a", "y")]));
        assert!(m("a starts\twith 'x'", &[("a", "xy")]));
        // Words are labels where no label precedes them.
        assert!(m("not in {'x'}", &[("not", "x")]));
        assert!(m("in == 'x'", &[("in", "x")]));
        assert!(m("has == 'x'", &[("has", "x")]));
        // Sets: empty, trailing comma (parser.go accepts both).
        assert!(!m("a in {}", &[("a", "x")]));
        assert!(m("a not in {}", &[("a", "x")]));
        assert!(m("a in {'x',}", &[("a", "x")]));
        // Label keys with prefixes, dots, slashes, dashes.
        assert!(m(
            "projectcalico.org/namespace == 'kube-system'",
            &[("projectcalico.org/namespace", "kube-system")]
        ));
        // Blank is all().
        assert!(Selector::parse("").unwrap().is_all());
        assert!(Selector::parse(" \t ").unwrap().is_all());
        // Quotes: no escapes, the other quote kind is a plain character.
        assert!(m("a == \"it's\"", &[("a", "it's")]));
        assert!(m("has( spaced )", &[("spaced", "")]));
        assert!(m("all( )", &[]));
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let e = err("a = 'x'");
        assert_eq!((e.column, e.expected.as_str()), (3, "`==`"));
        let e = err("a == x");
        assert_eq!(e.column, 6);
        assert_eq!(e.expected, "a quoted string");
        assert_eq!(e.found, "label `x`");
        let e = err("a == 'x");
        assert_eq!(e.column, 6);
        assert!(e.expected.contains("closing '"), "{e}");
        let e = err("(a == 'x'");
        assert_eq!(e.column, 10);
        assert_eq!(e.found, "the end of the selector");
        let e = err("a == 'x' b == 'y'");
        assert_eq!(e.column, 10);
        assert!(e.expected.contains("&&"), "{e}");
        let e = err("a");
        assert_eq!(e.column, 2);
        let e = err("a in ('x')");
        assert_eq!((e.column, e.found.as_str()), (6, "`(`"));
        let e = err("a in {'x' 'y'}");
        assert_eq!(e.column, 11);
        let e = err("has (a)");
        assert_eq!(e.column, 5, "{e}");
        let e = err("a starts 'x'");
        assert_eq!(e.column, 10);
        let e = err("a == 'x' &&\nb == 'y'");
        assert_eq!(e.column, 12);
        assert!(e.found.contains("newline"), "{e}");
        let e = err("a == 'x' & b == 'y'");
        assert_eq!(e.column, 10);
        // Columns count characters, not bytes.
        let e = err("é == 'x' &");
        assert_eq!(e.column, 1, "`é` is not a label character: {e}");
        let e = err("a == 'é' &");
        assert_eq!(e.column, 10);
        assert_eq!(
            err("a == x").to_string(),
            "column 6: expected a quoted string, found label `x`"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}a == 'x'{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(
            Selector::parse(&ok)
                .unwrap()
                .matches(&labels(&[("a", "x")]))
        );
        let deep = format!("{}a == 'x'{}", "(".repeat(20_000), ")".repeat(20_000));
        let e = Selector::parse(&deep).unwrap_err();
        assert!(e.expected.contains("nested"), "{e}");
        // Many `!` are collapsed iteratively, not recursively.
        let nots = format!("{}has(a)", "!".repeat(50_000));
        assert!(
            Selector::parse(&nots)
                .unwrap()
                .matches(&labels(&[("a", "")]))
        );
        let long = "a".repeat(MAX_LEN + 1);
        assert!(Selector::parse(&long).is_err());
    }

    #[test]
    fn scopes_give_all_and_global_their_namespace_meaning() {
        // "The global() operator can be used (only) in a namespaceSelector to change the
        // scope of the main selector to include non-namespaced resources such as
        // GlobalNetworkSet." (selector scopes, same page); rules.go rewrites all() to
        // has(projectcalico.org/namespace) and global() to !has(projectcalico.org/namespace).
        let none = Labels::new();
        let all = Selector::parse("all()").unwrap();
        let global = Selector::parse("global()").unwrap();
        let ns = Scope::Namespace { namespaced: true };
        let non = Scope::Namespace { namespaced: false };
        assert!(all.matches_in(&none, ns) && !all.matches_in(&none, non));
        assert!(!global.matches_in(&none, ns) && global.matches_in(&none, non));
        let sa = Selector::parse("all()").unwrap();
        assert!(!sa.matches_in(
            &none,
            Scope::ServiceAccount {
                has_service_account: false
            }
        ));
        assert!(global.uses_global() && global.is_global());
        assert!(
            Selector::parse("!global() && a == 'b'")
                .unwrap()
                .uses_global()
        );
    }

    #[test]
    fn kubernetes_label_selectors_convert_like_calico() {
        let s = LabelSelector::from_api(
            labels(&[("app", "web")]),
            [
                (
                    "tier".to_string(),
                    "NotIn".to_string(),
                    vec!["batch".to_string()],
                ),
                ("team".to_string(), "Exists".to_string(), vec![]),
                ("debug".to_string(), "DoesNotExist".to_string(), vec![]),
                (
                    "env".to_string(),
                    "In".to_string(),
                    vec!["a".into(), "b".into()],
                ),
            ],
            "x",
        )
        .unwrap();
        let c = Selector::from_label_selector(&s);
        assert_eq!(
            c.as_str(),
            "app == 'web' && tier not in {'batch'} && has(team) && !has(debug) && env in {'a', 'b'}"
        );
        // The text parses back to the same meaning.
        let back = Selector::parse(c.as_str()).unwrap();
        for pod in [
            labels(&[("app", "web"), ("team", "t"), ("env", "a")]),
            labels(&[("app", "web"), ("team", "t"), ("env", "c")]),
            labels(&[("app", "web"), ("team", "t"), ("env", "a"), ("debug", "1")]),
            labels(&[
                ("app", "web"),
                ("team", "t"),
                ("env", "b"),
                ("tier", "batch"),
            ]),
        ] {
            assert_eq!(c.matches(&pod), s.matches(&pod), "{pod:?}");
            assert_eq!(back.matches(&pod), s.matches(&pod), "{pod:?}");
        }
        assert!(Selector::from_label_selector(&LabelSelector::default()).is_all());
    }
}
