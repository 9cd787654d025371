//! The decision record: one per request, with the decision's facts and never a body or
//! a header value (so never a token).
//!
//! By default the record is a `tracing` event (target `imdsguard::decision`, `WARN` for
//! `upstream-error`, else `INFO`). A program that writes its log itself can take the
//! records instead through a [`DecisionSink`] in [`ProxyConfig::decisions`]
//! (`imdsguard proxy --log-format json` does: it writes each record as one JSON line
//! straight into its log buffer, without `tracing-subscriber`'s JSON formatter, which
//! was about a fifth of the proxy's time on denied requests).
//!
//! [`ProxyConfig::decisions`]: crate::ProxyConfig::decisions

use std::fmt::Write as _;
use std::net::IpAddr;

use imdsguard_core::access::PodInfo;

/// Where decision records go instead of `tracing`. Called on the request's task, after
/// the answer is made: it must not block (append to a buffer, never write to a file).
pub trait DecisionSink: Send + Sync + 'static {
    /// One decision.
    fn record(&self, record: &DecisionRecord<'_>);
}

/// The facts of one decision, borrowed from the request's state.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRecord<'a> {
    /// The caller's source address.
    pub peer: IpAddr,
    /// The caller, when the pod index knows it.
    pub pod: Option<&'a PodInfo>,
    /// The request's method.
    pub method: &'a str,
    /// The canonical path (or the first 200 bytes of a rejected one).
    pub path: &'a str,
    /// The metadata endpoint (`identity-token`, `instance`, ..., `unknown`).
    pub endpoint: &'static str,
    /// `allow`, `deny`, `would-deny` (denied by the rules, forwarded: a dry run),
    /// `invalid`, `throttled` or `upstream-error`.
    pub decision: &'static str,
    /// The rule that decided (a rule name, or one of the built-in rules).
    pub rule: &'a str,
    /// The answer's status.
    pub status: u16,
    /// Microseconds from the request's head to its answer.
    pub latency_us: u64,
    /// Why, for anything but `allow`.
    pub reason: Option<&'a str>,
    /// A token request's `resource`.
    pub resource: Option<&'a str>,
    /// A token request's identity selector (`default`, `client_id=...`, ...).
    pub identity: Option<&'a str>,
    /// Whether the instance document was redacted.
    pub redacted: bool,
    /// The caller was identified by its socket's cgroup: a hostNetwork pod (`pod`
    /// names it), or a process in a pod's cgroup no known pod owns (rule
    /// `unknown-pod-cgroup`). Written only when true.
    pub host_network: bool,
    /// The cgroup v2 id of the caller's socket, when it is a socket of the proxy's own
    /// host (hostNetwork pods and node processes, with host callers on). Written only
    /// when known.
    pub cgroup: Option<u64>,
}

impl DecisionRecord<'_> {
    /// Whether the record is a warning (`upstream-error`) rather than information.
    pub fn is_warning(&self) -> bool {
        self.decision == "upstream-error"
    }

    /// Appends the record's fields as one JSON object, with the same fields and values
    /// as `tracing-subscriber`'s JSON formatter writes under `"fields"` for the
    /// `tracing` event (`"message":"decision"` included; absent options left out).
    pub fn write_json_fields(&self, out: &mut String) {
        out.push_str(r#"{"message":"decision","peer":""#);
        let _ = write!(out, "{}", self.peer);
        out.push_str(r#"","pod":"#);
        match self.pod {
            Some(p) => {
                out.push('"');
                push_escaped(out, &p.namespace);
                out.push('/');
                push_escaped(out, &p.name);
                out.push('"');
            }
            None => out.push_str(r#""-""#),
        }
        out.push_str(r#","namespace":"#);
        push_json_str(out, self.pod.map_or("-", |p| p.namespace.as_str()));
        out.push_str(r#","service_account":"#);
        push_json_str(out, self.pod.map_or("-", |p| p.service_account.as_str()));
        out.push_str(r#","method":"#);
        push_json_str(out, self.method);
        out.push_str(r#","path":"#);
        push_json_str(out, self.path);
        out.push_str(r#","endpoint":"#);
        push_json_str(out, self.endpoint);
        out.push_str(r#","decision":"#);
        push_json_str(out, self.decision);
        out.push_str(r#","rule":"#);
        push_json_str(out, self.rule);
        let _ = write!(
            out,
            r#","status":{},"latency_us":{}"#,
            self.status, self.latency_us
        );
        for (key, value) in [
            ("reason", self.reason),
            ("resource", self.resource),
            ("identity", self.identity),
        ] {
            if let Some(v) = value {
                out.push_str(",\"");
                out.push_str(key);
                out.push_str("\":");
                push_json_str(out, v);
            }
        }
        out.push_str(if self.redacted {
            r#","redacted":true"#
        } else {
            r#","redacted":false"#
        });
        if self.host_network {
            out.push_str(r#","host_network":true"#);
        }
        if let Some(id) = self.cgroup {
            let _ = write!(out, r#","cgroup_id":{id}"#);
        }
        out.push('}');
    }
}

/// `s` as a JSON string, quotes included.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// `s` escaped for the inside of a JSON string (as serde_json escapes it). Runs of
/// bytes that need no escape (most of every string here) are found eight at a time and
/// copied whole.
fn push_escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if !any_needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(bytes.len());
        while i < end {
            let b = bytes[i];
            let escape: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => {
                    i += 1;
                    continue;
                }
            };
            out.push_str(&s[start..i]);
            if escape.is_empty() {
                let _ = write!(out, "\\u{b:04x}");
            } else {
                out.push_str(escape);
            }
            i += 1;
            start = i;
        }
    }
    out.push_str(&s[start..]);
}

/// Whether any of the eight bytes is a control byte (below 0x20), `"` or `\`.
fn any_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below n (n <= 128) sets its high bit here; a zero byte of x ^ c is a byte c.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    (below(word, 0x20)
        | below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1))
        != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod() -> PodInfo {
        let mut pod = PodInfo::new("pay\"ments", "api\\7d9f\u{1}");
        pod.service_account = "api\n".into();
        pod
    }

    #[test]
    fn escapes_as_serde_json_does() {
        for s in [
            "",
            "plain",
            "q\"b\\s/",
            "\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "ünï€😀",
            "a\u{1}b",
            "a longer string with no escapes at all, more than eight bytes",
            "0123456\"89abcdef\\0123456789\u{1f}x\u{80}yz\u{ff}",
            "\"\"\"\"\"\"\"\"\"\"",
            "abcdefgh\n",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn every_ascii_byte_at_every_place_of_a_word_is_escaped_as_serde_json_does() {
        for b in 0u8..128 {
            for at in 0..19 {
                let mut bytes = vec![b'a'; 19];
                bytes[at] = b;
                let s = String::from_utf8(bytes).unwrap();
                let mut out = String::new();
                push_json_str(&mut out, &s);
                assert_eq!(out, serde_json::to_string(&s).unwrap(), "{b} at {at}");
            }
        }
    }

    #[test]
    fn fields_are_the_tracing_records_fields() {
        let pod = pod();
        let rec = DecisionRecord {
            peer: "127.0.0.2".parse().unwrap(),
            pod: Some(&pod),
            method: "GET",
            path: "/metadata/identity/oauth2/token",
            endpoint: "identity-token",
            decision: "deny",
            rule: "default-deny",
            status: 403,
            latency_us: 57,
            reason: Some("no rule \"allows\" it"),
            resource: Some("https://management.azure.com/"),
            identity: None,
            redacted: false,
            host_network: false,
            cgroup: None,
        };
        let mut out = String::new();
        rec.write_json_fields(&mut out);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(
            v,
            json!({
                "message": "decision",
                "peer": "127.0.0.2",
                "pod": "pay\"ments/api\\7d9f\u{1}",
                "namespace": "pay\"ments",
                "service_account": "api\n",
                "method": "GET",
                "path": "/metadata/identity/oauth2/token",
                "endpoint": "identity-token",
                "decision": "deny",
                "rule": "default-deny",
                "status": 403,
                "latency_us": 57,
                "reason": "no rule \"allows\" it",
                "resource": "https://management.azure.com/",
                "redacted": false,
            })
        );
        assert!(!rec.is_warning());

        let rec = DecisionRecord {
            pod: None,
            decision: "upstream-error",
            identity: Some("client_id=abc"),
            redacted: true,
            ..rec
        };
        let mut out = String::new();
        rec.write_json_fields(&mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["pod"], "-");
        assert_eq!(v["namespace"], "-");
        assert_eq!(v["service_account"], "-");
        assert_eq!(v["identity"], "client_id=abc");
        assert_eq!(v["redacted"], true);
        assert!(v.get("host_network").is_none() && v.get("cgroup_id").is_none());
        assert!(rec.is_warning());

        let rec = DecisionRecord {
            decision: "would-deny",
            host_network: true,
            cgroup: Some(u64::MAX),
            ..rec
        };
        let mut out = String::new();
        rec.write_json_fields(&mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["host_network"], true);
        assert_eq!(v["cgroup_id"], u64::MAX);
        assert!(!rec.is_warning());
    }
}
