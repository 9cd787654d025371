//! Request canonicalisation for the filtering proxy: one spelling per request, or a
//! rejection.
//!
//! A filter in front of IMDS decides on a path and a query; IMDS then answers what *it*
//! reads from the bytes it gets. Every gap between the two readings is a bypass:
//! aad-pod-identity's NMI let `/metadata/identity/oauth2/token/` (a trailing slash)
//! through to IMDS unchecked, kube2iam's path matching was fooled by `//` and by case,
//! and proxies that decode once in front of a server that decodes twice lose to `%252f`.
//! The proxy therefore never forwards what it received. It reads the request target
//! here, rejects anything that could be read in two ways, and forwards the canonical
//! form it decided on.
//!
//! The rules, for the raw request target (origin-form `/path?query`, or absolute-form
//! `http://host/path?query` naming an accepted host):
//!
//! | input | outcome |
//! |---|---|
//! | non-ASCII byte, control character (tab included), space | rejected |
//! | `\`, `%5c` | rejected (some servers read a backslash as `/`) |
//! | `%2f` | rejected (an encoded separator: a slash for some readers, not for others) |
//! | `%2e`, `.` and `..` segments, any other `.` in the path | rejected |
//! | `%25` anywhere (double encoding), an invalid escape (`%zz`, `%4`) | rejected |
//! | `%00`–`%1f`, `%7f`, `%80`–`%ff`, other escapes of reserved characters | rejected |
//! | `%74oken` (an escape of a letter, digit, `-` or `_`) | decoded: `token` |
//! | `//` (an empty segment) | rejected |
//! | one trailing `/` | dropped |
//! | `;` (path parameters; in the query, a second separator for some parsers) | rejected |
//! | `#` (a fragment) | rejected (hyper already drops it; upstream never sees one) |
//! | case of the fixed endpoint names (`/Metadata/Identity/OAuth2/Token`) | lower-cased to the canonical path |
//! | case of instance sub-path segments (`compute/vmId`) | kept; rules compare them ignoring case |
//! | absolute-form for a host not in the accepted list (`http://evil/…`), `https://`, userinfo, `*`, authority-form | rejected |
//! | a query parameter given twice, names compared ignoring case (`resource=a&Resource=b`) | rejected |
//! | parameter names | lower-cased (`Resource` → `resource`); only `[A-Za-z0-9_.-]` |
//! | parameter values | decoded once (`+` is a space); must be printable ASCII without space, `%` or `\`; re-encoded |
//! | empty query pieces (`a=1&&b=2`) | dropped |
//! | target, path, query, segment or parameter counts over [`Limits`] | rejected |
//!
//! AWS and GCP ([`Canonicalizer::for_cloud`]) read the same way, with these differences:
//!
//! | input | outcome |
//! |---|---|
//! | case of any segment (`/latest/Meta-Data`) | kept: their paths are case-sensitive, and an upper-case variant is another path (the service answers 404), compared exactly by the rules |
//! | `.`, `@`, `+`, `=`, `,` inside a segment (`my.role`, `sa@p.iam.gserviceaccount.com`) | kept (escapes of `@+=,` decoded; `%2e` rejected); an all-dot segment is rejected |
//! | one trailing `/` | kept ([`CanonicalTarget::directory`]): a listing there |
//! | any query parameter on AWS | rejected ([`RejectKind::UnknownParameter`]) |
//! | a GCP parameter outside [`crate::gcp::KNOWN_PARAMS`] (names compared exactly: `Recursive` is refused, the server would ignore it), or a value outside its set (`recursive=yes`) | rejected; booleans canonical (`recursive=TRUE` → `recursive=true`); `alt` and `format` exact, as the server reads them (`alt=Text` rejected) |
//! | a metadata header given twice, or named by `Connection` | rejected ([`Canonicalizer::check_cloud_headers`]) |
//!
//! Absolute-form hosts compare after folding: `[::ffff:169.254.169.254]` and
//! `[::ffff:a9fe:a9fe]` are `169.254.169.254` ([`default_hosts`] per cloud).
//!
//! Headers: at most [`Limits::max_headers`] fields and [`Limits::max_header_bytes`]
//! bytes, names of token characters, values of printable ASCII (no tab, no control, no
//! obs-text) — see [`Canonicalizer::check_headers`]. The `Metadata` and
//! `X-Forwarded-For` rules are IMDS's own ([`crate::imds::validate`]).
//!
//! Nothing here does IO.

use std::fmt;

use crate::imds::{IMDS_ADDRESS, ImdsApi};
pub use crate::target::Cloud;

/// Size limits of a request, checked before anything else is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request target (path and query), in bytes.
    pub max_target: usize,
    /// Longest path, in bytes.
    pub max_path: usize,
    /// Most path segments.
    pub max_segments: usize,
    /// Longest query, in bytes.
    pub max_query: usize,
    /// Most query parameters.
    pub max_params: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Most header bytes (names and values, plus 4 per field for `: ` and CRLF).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    /// Generous for every IMDS client (the longest real request, a token request naming
    /// an identity by ARM id, is under 400 bytes) and small enough to bound the work.
    fn default() -> Self {
        Limits {
            max_target: 4096,
            max_path: 512,
            max_segments: 32,
            max_query: 2048,
            max_params: 16,
            max_headers: 64,
            max_header_bytes: 8192,
        }
    }
}

/// Why a request was rejected as ambiguous or oversized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// A byte outside ASCII, raw or percent-encoded.
    NonAscii,
    /// A control character (tab included), raw or percent-encoded.
    ControlChar,
    /// A backslash, raw or percent-encoded (`%5c`).
    Backslash,
    /// An encoded slash (`%2f`).
    EncodedSlash,
    /// An encoded dot (`%2e`).
    EncodedDot,
    /// An encoded percent sign (`%25`): double encoding.
    DoubleEncoding,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// An escape of a character that has no business in an IMDS path.
    DisallowedEscape,
    /// A `.` or `..` segment.
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A `;` (path parameter, or second query separator).
    Semicolon,
    /// A `#` (fragment).
    Fragment,
    /// Another character not allowed in an IMDS path (space, `.`, `~`, `+`, ...).
    DisallowedChar,
    /// An absolute-form target for a host that is not the metadata service.
    OtherHost,
    /// A target that is neither origin-form nor an accepted absolute-form
    /// (`https://`, userinfo, `*`, authority-form).
    BadTargetForm,
    /// Over a [`Limits`] bound.
    TooLong,
    /// A query parameter given twice (names compared ignoring case).
    RepeatedParameter,
    /// A query parameter name outside `[A-Za-z0-9_.-]`.
    BadParameterName,
    /// A query parameter value that decodes to a space, a control character, `%`, `\`
    /// or a non-ASCII byte.
    BadParameterValue,
    /// A header field that is malformed, or too many or too large header fields.
    BadHeader,
    /// A query parameter the cloud's metadata service does not take (AWS takes none;
    /// GCP the ones [`crate::gcp::KNOWN_PARAMS`] lists).
    UnknownParameter,
    /// A metadata header given twice, or named by `Connection` (a hop-by-hop trick that
    /// makes a proxy drop it), or a request header another cloud's service reads.
    HeaderTrick,
}

impl RejectKind {
    /// A short stable name (`encoded-slash`), for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::NonAscii => "non-ascii",
            RejectKind::ControlChar => "control-char",
            RejectKind::Backslash => "backslash",
            RejectKind::EncodedSlash => "encoded-slash",
            RejectKind::EncodedDot => "encoded-dot",
            RejectKind::DoubleEncoding => "double-encoding",
            RejectKind::BadEscape => "bad-escape",
            RejectKind::DisallowedEscape => "disallowed-escape",
            RejectKind::DotSegment => "dot-segment",
            RejectKind::EmptySegment => "empty-segment",
            RejectKind::Semicolon => "semicolon",
            RejectKind::Fragment => "fragment",
            RejectKind::DisallowedChar => "disallowed-char",
            RejectKind::OtherHost => "other-host",
            RejectKind::BadTargetForm => "bad-target-form",
            RejectKind::TooLong => "too-long",
            RejectKind::RepeatedParameter => "repeated-parameter",
            RejectKind::BadParameterName => "bad-parameter-name",
            RejectKind::BadParameterValue => "bad-parameter-value",
            RejectKind::BadHeader => "bad-header",
            RejectKind::UnknownParameter => "unknown-parameter",
            RejectKind::HeaderTrick => "header-trick",
        }
    }
}

impl fmt::Display for RejectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected request: what kind of ambiguity, and a sentence saying where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Rejection {
    /// The kind.
    pub kind: RejectKind,
    /// What was found, for the denial's `reason` (never longer than a few dozen bytes
    /// of the request).
    pub detail: String,
}

fn reject<T>(kind: RejectKind, detail: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        kind,
        detail: detail.into(),
    })
}

/// A request target in its one canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTarget {
    /// The canonical path: the endpoint's [`ImdsApi::canonical_path`], followed for the
    /// instance document by its sub-path segments (`/metadata/instance/compute/vmId`);
    /// for an unknown endpoint, the path as received (already free of anything
    /// ambiguous).
    pub path: String,
    /// The canonical query (names lower-cased, values re-encoded), without `?`; `None`
    /// when there are no parameters.
    pub query: Option<String>,
    /// The same parameters decoded, in order: (lower-case name, value). What
    /// [`crate::imds::validate_canonical`] reads, so that the query is decoded once.
    pub params: Vec<(String, String)>,
    /// The endpoint.
    pub endpoint: ImdsApi,
    /// For the instance document, the sub-path segments as sent (case kept).
    pub instance_path: Vec<String>,
    /// AWS and GCP: every path segment, decoded, case kept (their paths are
    /// case-sensitive: compared exactly). Empty for Azure.
    pub segments: Vec<String>,
    /// AWS and GCP: the path ended in `/` (a directory listing; kept in
    /// [`Self::path`], since it is another request there). Always `false` for Azure.
    pub directory: bool,
}

impl CanonicalTarget {
    /// `path?query`, what the proxy sends upstream.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Reads request targets and headers into their canonical form, or rejects them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonicalizer {
    limits: Limits,
    /// Accepted hosts of absolute-form targets, lower-case, `:80` removed, IPv4-mapped
    /// IPv6 addresses folded to IPv4.
    hosts: Vec<String>,
    /// Whose metadata service the requests are for: its path and query rules.
    cloud: Cloud,
}

impl Default for Canonicalizer {
    /// [`Limits::default`]; absolute-form accepted only for `169.254.169.254`.
    fn default() -> Self {
        Canonicalizer::new(Limits::default(), [IMDS_ADDRESS.to_string()])
    }
}

impl Canonicalizer {
    /// A canonicaliser with these limits, accepting absolute-form targets only for these
    /// hosts (`169.254.169.254`, `metadata.internal:8080`; a `:80` port is implied).
    pub fn new(limits: Limits, hosts: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        let hosts = hosts
            .into_iter()
            .map(|h| normalize_host(h.as_ref()))
            .collect();
        Canonicalizer {
            limits,
            hosts,
            cloud: Cloud::Azure,
        }
    }

    /// A canonicaliser for `cloud`'s metadata service (see the module documentation:
    /// AWS and GCP keep the case of every segment, allow the characters of role and
    /// service-account names, keep a trailing `/`, and take only their own query
    /// parameters), accepting absolute-form targets for these hosts
    /// ([`default_hosts`] gives each cloud's).
    pub fn for_cloud(
        cloud: Cloud,
        limits: Limits,
        hosts: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Self {
        Canonicalizer {
            cloud,
            ..Canonicalizer::new(limits, hosts)
        }
    }

    /// The cloud whose rules this canonicaliser applies.
    pub fn cloud(&self) -> Cloud {
        self.cloud
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Canonicalises a raw request target (as on the request line).
    pub fn canonicalize(&self, target: &str) -> Result<CanonicalTarget, Rejection> {
        let l = &self.limits;
        if target.len() > l.max_target {
            return reject(
                RejectKind::TooLong,
                format!(
                    "the request target is {} bytes (at most {})",
                    target.len(),
                    l.max_target
                ),
            );
        }
        check_bytes(target)?;
        let origin = self.origin_form(target)?;
        if origin.contains('#') {
            return reject(
                RejectKind::Fragment,
                "the request target has a fragment (#)",
            );
        }
        let (raw_path, raw_query) = match origin.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (origin, None),
        };
        if raw_path.len() > l.max_path {
            return reject(
                RejectKind::TooLong,
                format!(
                    "the path is {} bytes (at most {})",
                    raw_path.len(),
                    l.max_path
                ),
            );
        }
        if self.cloud != Cloud::Azure {
            return self.canonicalize_cloud(raw_path, raw_query);
        }
        let segments = self.path_segments(raw_path)?;
        let (query, params) = match raw_query {
            Some(q) => self.query(q)?,
            None => (None, Vec::new()),
        };

        let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let (endpoint, instance_path) = match l.as_slice() {
            ["metadata", "instance", ..] => (ImdsApi::Instance, segments[2..].to_vec()),
            _ => {
                let joined = format!("/{}", segments.join("/"));
                (ImdsApi::classify(&joined), Vec::new())
            }
        };
        let path = match endpoint.canonical_path() {
            Some(base) if endpoint == ImdsApi::Instance => {
                let mut p = String::with_capacity(raw_path.len());
                p.push_str(base);
                for s in &instance_path {
                    p.push('/');
                    p.push_str(s);
                }
                p
            }
            Some(base) => base.to_string(),
            None => format!("/{}", segments.join("/")),
        };
        // Re-encoding can lengthen the query (`@` becomes `%40`).
        self.check_canonical_len(&path, query.as_deref())?;
        Ok(CanonicalTarget {
            path,
            query,
            params,
            endpoint,
            instance_path,
            segments: Vec::new(),
            directory: false,
        })
    }

    /// The limits hold for what goes upstream too (re-encoding can lengthen a query),
    /// so that the canonical form is itself accepted.
    fn check_canonical_len(&self, path: &str, query: Option<&str>) -> Result<(), Rejection> {
        let query_len = query.map_or(0, str::len);
        if query_len > self.limits.max_query {
            return reject(
                RejectKind::TooLong,
                format!(
                    "the query is {query_len} bytes once re-encoded (at most {})",
                    self.limits.max_query
                ),
            );
        }
        let target_len = path.len() + query.map_or(0, |q| q.len() + 1);
        if target_len > self.limits.max_target {
            return reject(
                RejectKind::TooLong,
                format!(
                    "the request target is {target_len} bytes once re-encoded (at most {})",
                    self.limits.max_target
                ),
            );
        }
        Ok(())
    }

    /// AWS and GCP: segments decoded with case kept, a trailing `/` kept as
    /// [`CanonicalTarget::directory`], the cloud's own query parameters.
    fn canonicalize_cloud(
        &self,
        raw_path: &str,
        raw_query: Option<&str>,
    ) -> Result<CanonicalTarget, Rejection> {
        let Some(body) = raw_path.strip_prefix('/') else {
            return reject(RejectKind::BadTargetForm, "the path does not start with /");
        };
        let (body, directory) = match body.strip_suffix('/') {
            Some(b) => (b, true),
            None => (body, false),
        };
        let mut segments = Vec::with_capacity(8);
        if !body.is_empty() {
            for raw_seg in body.split('/') {
                if segments.len() == self.limits.max_segments {
                    return reject(
                        RejectKind::TooLong,
                        format!(
                            "the path has more than {} segments",
                            self.limits.max_segments
                        ),
                    );
                }
                segments.push(decode_cloud_segment(raw_seg)?);
            }
        }
        let directory = directory && !segments.is_empty();
        let (query, params) = match raw_query {
            None => (None, Vec::new()),
            Some(q) => {
                let (query, params) = self.query(q)?;
                self.cloud_params(query, params)?
            }
        };
        let mut path = String::with_capacity(raw_path.len());
        for s in &segments {
            path.push('/');
            path.push_str(s);
        }
        if directory || segments.is_empty() {
            path.push('/');
        }
        self.check_canonical_len(&path, query.as_deref())?;
        Ok(CanonicalTarget {
            path,
            query,
            params,
            endpoint: ImdsApi::Unknown,
            instance_path: Vec::new(),
            segments,
            directory,
        })
    }

    /// The cloud's query parameters only, with canonical values: AWS takes none; GCP
    /// the [`crate::gcp::KNOWN_PARAMS`] (booleans `true`/`false`, `alt` `json`/`text`, `format`
    /// `standard`/`full`, `licenses` `TRUE`/`FALSE`, `timeout_sec` digits, `last_etag`
    /// letters and digits; `audience` and `scopes` as any value).
    #[allow(clippy::type_complexity)]
    fn cloud_params(
        &self,
        query: Option<String>,
        params: Vec<(String, String)>,
    ) -> Result<(Option<String>, Vec<(String, String)>), Rejection> {
        if query.is_none() {
            return Ok((None, params));
        }
        if self.cloud == Cloud::Aws {
            return reject(
                RejectKind::UnknownParameter,
                format!(
                    "AWS instance metadata takes no query parameters (got `{}`)",
                    shorten(&params[0].0, 32)
                ),
            );
        }
        let mut out_params = Vec::with_capacity(params.len());
        let mut out = String::with_capacity(query.as_ref().map_or(0, String::len));
        for (name, value) in params {
            if !crate::gcp::KNOWN_PARAMS.contains(&name.as_str()) {
                return reject(
                    RejectKind::UnknownParameter,
                    format!(
                        "query parameter `{}` is not one the GCP metadata server takes",
                        shorten(&name, 32)
                    ),
                );
            }
            let bad = |want: &str| {
                reject(
                    RejectKind::BadParameterValue,
                    format!(
                        "query parameter `{name}` is `{}`, not {want}",
                        shorten(&value, 32)
                    ),
                )
            };
            let lower = value.to_ascii_lowercase();
            let value = match name.as_str() {
                "recursive" | "wait_for_change" => match lower.as_str() {
                    "true" | "false" => lower,
                    _ => return bad("true or false"),
                },
                // The server reads `alt` and `format` exactly (`alt=Text` is a 400), so
                // their values are never folded into an accepted spelling.
                "alt" => match value.as_str() {
                    "json" | "text" => value,
                    _ => return bad("json or text"),
                },
                "format" => match value.as_str() {
                    "standard" | "full" => value,
                    _ => return bad("standard or full"),
                },
                "licenses" => match lower.as_str() {
                    "true" | "false" => lower.to_ascii_uppercase(),
                    _ => return bad("TRUE or FALSE"),
                },
                "timeout_sec" => {
                    if value.is_empty()
                        || value.len() > 6
                        || !value.bytes().all(|b| b.is_ascii_digit())
                    {
                        return bad("a number of seconds");
                    }
                    value
                }
                "last_etag" => {
                    if value.is_empty()
                        || value.len() > 64
                        || !value.bytes().all(|b| b.is_ascii_alphanumeric())
                    {
                        return bad("an ETag (letters and digits)");
                    }
                    value
                }
                _ => {
                    if value.is_empty() {
                        return bad("a value");
                    }
                    value
                }
            };
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&name);
            out.push('=');
            encode_value(&value, &mut out);
            out_params.push((name, value));
        }
        Ok((Some(out), out_params))
    }

    /// The origin-form part of `target`: itself, or the path and query of an accepted
    /// absolute-form target.
    fn origin_form<'t>(&self, target: &'t str) -> Result<&'t str, Rejection> {
        if target.starts_with('/') {
            return Ok(target);
        }
        let lower_start = target.get(..8).map(str::to_ascii_lowercase);
        let rest = match lower_start.as_deref() {
            Some(s) if s.starts_with("http://") => &target[7..],
            Some("https://") => {
                return reject(
                    RejectKind::BadTargetForm,
                    "an https:// target (IMDS speaks plain HTTP)",
                );
            }
            _ => {
                return reject(
                    RejectKind::BadTargetForm,
                    "the request target is neither a path nor an http:// URL",
                );
            }
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, origin) = rest.split_at(end);
        if authority.contains('@') {
            return reject(
                RejectKind::BadTargetForm,
                "an absolute-form target with user information (@)",
            );
        }
        let host = normalize_host(authority);
        if !self.hosts.contains(&host) {
            return reject(
                RejectKind::OtherHost,
                format!(
                    "an absolute-form target for another host ({})",
                    shorten(authority, 64)
                ),
            );
        }
        if !origin.starts_with('/') {
            return reject(
                RejectKind::BadTargetForm,
                "an absolute-form target without a path",
            );
        }
        Ok(origin)
    }

    /// Decoded segments of a raw path (no empty, dot or otherwise ambiguous segment; one
    /// trailing slash dropped).
    fn path_segments(&self, raw: &str) -> Result<Vec<String>, Rejection> {
        let Some(body) = raw.strip_prefix('/') else {
            return reject(RejectKind::BadTargetForm, "the path does not start with /");
        };
        // One trailing slash is dropped (`/metadata/instance/`); a lone `/` is the root.
        let body = body.strip_suffix('/').unwrap_or(body);
        if body.is_empty() {
            return Ok(Vec::new());
        }
        let mut segments = Vec::with_capacity(8);
        for raw_seg in body.split('/') {
            if segments.len() == self.limits.max_segments {
                return reject(
                    RejectKind::TooLong,
                    format!(
                        "the path has more than {} segments",
                        self.limits.max_segments
                    ),
                );
            }
            segments.push(decode_segment(raw_seg)?);
        }
        Ok(segments)
    }

    /// The canonical query (pieces in order, names lower-cased, values re-encoded) and
    /// the decoded pairs.
    #[allow(clippy::type_complexity)]
    fn query(&self, raw: &str) -> Result<(Option<String>, Vec<(String, String)>), Rejection> {
        if raw.len() > self.limits.max_query {
            return reject(
                RejectKind::TooLong,
                format!(
                    "the query is {} bytes (at most {})",
                    raw.len(),
                    self.limits.max_query
                ),
            );
        }
        if raw.contains(';') {
            return reject(
                RejectKind::Semicolon,
                "the query has a `;` (a parameter separator for some parsers)",
            );
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut out = String::with_capacity(raw.len() + 16);
        for piece in raw.split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == self.limits.max_params {
                return reject(
                    RejectKind::TooLong,
                    format!("more than {} query parameters", self.limits.max_params),
                );
            }
            let (raw_name, raw_value) = piece.split_once('=').unwrap_or((piece, ""));
            let name = decode_query_part(raw_name).ok_or_else(|| Rejection {
                kind: RejectKind::BadParameterName,
                detail: format!(
                    "query parameter name `{}` is not plain ASCII",
                    shorten(raw_name, 32)
                ),
            })?;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return reject(
                    RejectKind::BadParameterName,
                    format!(
                        "query parameter name `{}` is not made of letters, digits, `_`, `-` and `.`",
                        shorten(&name, 32)
                    ),
                );
            }
            // IMDS compares parameter names ignoring case, so Azure's are lower-cased; the
            // GCP metadata server reads them exactly (`Recursive` is not `recursive`), so
            // their case is kept and any name not spelt as documented is refused below.
            let name = match self.cloud {
                Cloud::Azure => name.to_ascii_lowercase(),
                Cloud::Aws | Cloud::Gcp => name,
            };
            if pairs.iter().any(|(n, _)| *n == name) {
                return reject(
                    RejectKind::RepeatedParameter,
                    format!(
                        "query parameter `{}` is given more than once",
                        shorten(&name, 32)
                    ),
                );
            }
            let value = decode_query_part(raw_value).ok_or_else(|| Rejection {
                kind: RejectKind::BadParameterValue,
                detail: format!(
                    "query parameter `{}` has an invalid escape",
                    shorten(&name, 32)
                ),
            })?;
            if let Some(b) = value
                .bytes()
                .find(|b| !(0x21..0x7f).contains(b) || matches!(b, b'%' | b'\\'))
            {
                let why = match b {
                    b'%' => "`%` (double encoding)".to_string(),
                    b'\\' => "a backslash".to_string(),
                    b' ' => "a space".to_string(),
                    b if b >= 0x80 => "a non-ASCII byte".to_string(),
                    b => format!("control character 0x{b:02x}"),
                };
                return reject(
                    RejectKind::BadParameterValue,
                    format!("query parameter `{}` decodes to {why}", shorten(&name, 32)),
                );
            }
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(&name);
            out.push('=');
            encode_value(&value, &mut out);
            pairs.push((name, value));
        }
        Ok(((!out.is_empty()).then_some(out), pairs))
    }

    /// Checks header fields: count, total size, names of token characters, values of
    /// printable ASCII (space allowed inside, no tab, no control, no obs-text).
    pub fn check_headers<K, V>(
        &self,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), Rejection>
    where
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut count = 0usize;
        let mut bytes = 0usize;
        for (name, value) in headers {
            let (name, value) = (name.as_ref(), value.as_ref());
            count += 1;
            bytes += name.len() + value.len() + 4;
            if count > self.limits.max_headers {
                return reject(
                    RejectKind::BadHeader,
                    format!("more than {} header fields", self.limits.max_headers),
                );
            }
            if bytes > self.limits.max_header_bytes {
                return reject(
                    RejectKind::BadHeader,
                    format!("header fields over {} bytes", self.limits.max_header_bytes),
                );
            }
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return reject(
                    RejectKind::BadHeader,
                    format!("header name `{}` is not a token", shorten(name, 32)),
                );
            }
            if let Some(b) = value.iter().find(|b| !(0x20..0x7f).contains(*b)) {
                let (kind, what) = if *b >= 0x80 {
                    (RejectKind::NonAscii, "a non-ASCII byte".to_string())
                } else {
                    (
                        RejectKind::ControlChar,
                        format!("control character 0x{b:02x}"),
                    )
                };
                return reject(kind, format!("header `{}` holds {what}", shorten(name, 32)));
            }
        }
        Ok(())
    }

    /// AWS and GCP header tricks, after [`Self::check_headers`]: one of the cloud's
    /// metadata headers ([`metadata_headers`]) given twice (which copy counts is the
    /// reader's choice) or named by `Connection` (a hop-by-hop header a proxy on the
    /// way drops), and any `X-Forwarded-For` named by `Connection`. Names compare
    /// ignoring case, as HTTP does (`metadata-flavor` is `Metadata-Flavor`).
    pub fn check_cloud_headers<K, V>(
        &self,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), Rejection>
    where
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let watched = metadata_headers(self.cloud);
        let mut seen = [0usize; 2];
        let mut connection: Vec<String> = Vec::new();
        for (name, value) in headers {
            let name = name.as_ref();
            if let Some(i) = watched.iter().position(|w| name.eq_ignore_ascii_case(w)) {
                seen[i] += 1;
                if seen[i] > 1 {
                    return reject(
                        RejectKind::HeaderTrick,
                        format!("header `{}` is given more than once", watched[i]),
                    );
                }
            }
            if name.eq_ignore_ascii_case("connection") {
                connection.extend(
                    String::from_utf8_lossy(value.as_ref())
                        .split(',')
                        .map(|s| s.trim().to_ascii_lowercase()),
                );
            }
        }
        if let Some(named) = connection
            .iter()
            .find(|c| watched.contains(&c.as_str()) || *c == "x-forwarded-for")
        {
            return reject(
                RejectKind::HeaderTrick,
                format!(
                    "the Connection header names `{}` (a hop-by-hop trick)",
                    shorten(named, 40)
                ),
            );
        }
        Ok(())
    }
}

/// Lower-case, `:80` dropped, an IPv6 literal written in its one canonical form and an
/// IPv4-mapped one (`[::ffff:169.254.169.254]`, `[::ffff:a9fe:a9fe]`) folded to its IPv4
/// address ([`crate::target::canonical_ip`]'s rule), so that every spelling of an
/// accepted host is that host and no spelling of another one is.
fn normalize_host(authority: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let host = lower.strip_suffix(":80").unwrap_or(&lower);
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        && let Ok(v6) = inner.parse::<std::net::Ipv6Addr>()
    {
        return match std::net::IpAddr::V6(v6).to_canonical() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
    }
    host.to_string()
}

/// The hosts each cloud's clients name in absolute-form targets: Azure
/// `169.254.169.254`; AWS that and `[fd00:ec2::254]`; GCP that,
/// `metadata.google.internal`, `metadata` and `[fd20:ce::254]` (IPv4-mapped forms of
/// the addresses are folded, so they are the same hosts).
pub fn default_hosts(cloud: Cloud) -> Vec<String> {
    let v4 = IMDS_ADDRESS.to_string();
    match cloud {
        Cloud::Azure => vec![v4],
        Cloud::Aws => vec![v4, "[fd00:ec2::254]".into()],
        Cloud::Gcp => vec![
            v4,
            "metadata.google.internal".into(),
            "metadata".into(),
            "[fd20:ce::254]".into(),
        ],
    }
}

/// The request headers each cloud's metadata service reads (lower-case): given twice or
/// named by `Connection`, they are refused ([`Canonicalizer::check_cloud_headers`]).
pub fn metadata_headers(cloud: Cloud) -> &'static [&'static str] {
    match cloud {
        Cloud::Azure => &["metadata"],
        Cloud::Aws => &[
            "x-aws-ec2-metadata-token",
            "x-aws-ec2-metadata-token-ttl-seconds",
        ],
        Cloud::Gcp => &["metadata-flavor"],
    }
}

/// Rejects non-ASCII, control characters, space and backslash anywhere in the target.
fn check_bytes(target: &str) -> Result<(), Rejection> {
    for (i, b) in target.bytes().enumerate() {
        match b {
            0x80.. => {
                return reject(
                    RejectKind::NonAscii,
                    format!("a non-ASCII byte at offset {i} of the request target"),
                );
            }
            0x00..=0x1f | 0x7f => {
                return reject(
                    RejectKind::ControlChar,
                    format!("control character 0x{b:02x} at offset {i} of the request target"),
                );
            }
            b' ' => {
                return reject(
                    RejectKind::DisallowedChar,
                    format!("a space at offset {i} of the request target"),
                );
            }
            b'\\' => {
                return reject(
                    RejectKind::Backslash,
                    format!("a backslash at offset {i} of the request target"),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// A path segment decoded: letters, digits, `-` and `_`, raw or as escapes; anything
/// else is rejected with the reason.
fn decode_segment(raw: &str) -> Result<String, Rejection> {
    if raw.is_empty() {
        return reject(RejectKind::EmptySegment, "an empty path segment (//)");
    }
    if raw == "." || raw == ".." {
        return reject(RejectKind::DotSegment, format!("a `{raw}` path segment"));
    }
    decode_pieces(raw, is_segment_byte, is_segment_byte)
}

/// An AWS or GCP path segment decoded, case kept: letters, digits and `-_.@+=,` (the
/// characters of IAM role names and service-account e-mail addresses), raw or escaped
/// (but `.` only raw); `.`/`..` (any all-dot segment), `%2e`, `%2f`, `%25`, `;` and the
/// rest rejected as for Azure.
fn decode_cloud_segment(raw: &str) -> Result<String, Rejection> {
    if raw.is_empty() {
        return reject(RejectKind::EmptySegment, "an empty path segment (//)");
    }
    if raw.bytes().all(|b| b == b'.') {
        return reject(
            RejectKind::DotSegment,
            format!("a `{}` path segment", shorten(raw, 8)),
        );
    }
    let allowed = |b: u8| is_segment_byte(b) || matches!(b, b'@' | b'+' | b'=' | b',');
    let out = decode_pieces(raw, allowed, |b| allowed(b) || b == b'.')?;
    if out.bytes().all(|b| b == b'.') {
        return reject(RejectKind::DotSegment, "a segment of dots");
    }
    Ok(out)
}

/// The pieces of path segment `raw` decoded: bytes `escaped` accepts may be written as
/// escapes, bytes `plain` accepts as they are; anything else is rejected with the reason
/// (`%2f`, `%5c`, `%2e`, `%25`, control and non-ASCII escapes always).
fn decode_pieces(
    raw: &str,
    escaped: impl Fn(u8) -> bool,
    plain: impl Fn(u8) -> bool,
) -> Result<String, Rejection> {
    let mut out = String::with_capacity(raw.len());
    for piece in pieces(raw, false) {
        match piece {
            Piece::BadEscape(_) => {
                return reject(
                    RejectKind::BadEscape,
                    format!("an invalid escape in path segment `{}`", shorten(raw, 32)),
                );
            }
            Piece::Escaped(d, at) => {
                let kind = match d {
                    b'/' => RejectKind::EncodedSlash,
                    b'\\' => RejectKind::Backslash,
                    b'.' => RejectKind::EncodedDot,
                    b'%' => RejectKind::DoubleEncoding,
                    0x00..=0x1f | 0x7f => RejectKind::ControlChar,
                    0x80.. => RejectKind::NonAscii,
                    b';' => RejectKind::Semicolon,
                    b'#' => RejectKind::Fragment,
                    d if escaped(d) => {
                        out.push(d as char);
                        continue;
                    }
                    _ => RejectKind::DisallowedEscape,
                };
                return reject(
                    kind,
                    format!(
                        "escape {} ({kind}) in path segment `{}`",
                        &raw[at..at + 3],
                        shorten(raw, 32)
                    ),
                );
            }
            Piece::Raw(b) => {
                if !plain(b) {
                    let kind = match b {
                        b';' => RejectKind::Semicolon,
                        b'#' => RejectKind::Fragment,
                        _ => RejectKind::DisallowedChar,
                    };
                    return reject(
                        kind,
                        format!(
                            "character `{}` in path segment `{}`",
                            b as char,
                            shorten(raw, 32)
                        ),
                    );
                }
                out.push(b as char);
            }
        }
    }
    Ok(out)
}

/// Letters, digits, `-`, `_`: every character of every IMDS path.
fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// RFC 9110 token characters (header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One piece of a percent-encoded string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A byte as written (`+` already read as a space in form decoding).
    Raw(u8),
    /// The byte of a `%XX` escape, and the escape's offset.
    Escaped(u8, usize),
    /// A `%` not followed by two hex digits, at this offset.
    BadEscape(usize),
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`) leniently, as IMDS
/// and the GCP metadata server do: invalid escapes are kept as written, invalid UTF-8
/// becomes U+FFFD ([`crate::imds`]'s and [`crate::gcp`]'s reading of a request).
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let mut out = Vec::with_capacity(s.len());
    for piece in pieces(s, plus_is_space) {
        match piece {
            Piece::Raw(b) | Piece::Escaped(b, _) => out.push(b),
            Piece::BadEscape(_) => out.push(b'%'),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The one percent-decoder of the crate: `raw` read as escapes and raw bytes (with
/// `form`, `+` is a space, as in `application/x-www-form-urlencoded`). Callers decide
/// what an invalid escape means: the proxy's canonicaliser rejects it, the emulator's
/// lenient IMDS reading ([`crate::imds::Query::parse`]) keeps it as written.
pub(crate) fn pieces(raw: &str, form: bool) -> impl Iterator<Item = Piece> + '_ {
    let bytes = raw.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *bytes.get(i)?;
        let at = i;
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                i += 3;
                return Some(Piece::Escaped(h << 4 | l, at));
            }
            i += 1;
            return Some(Piece::BadEscape(at));
        }
        i += 1;
        Some(Piece::Raw(if form && b == b'+' { b' ' } else { b }))
    })
}

/// Form-decodes a query name or value (`+` is a space); `None` for an invalid escape or
/// a result that is not UTF-8.
fn decode_query_part(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    for piece in pieces(raw, true) {
        match piece {
            Piece::Raw(b) | Piece::Escaped(b, _) => out.push(b),
            Piece::BadEscape(_) => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_value(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// At most `max` bytes of `s` (on a character boundary), with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn percent_decoding_edges() {
        assert_eq!(percent_decode("%", false), "%");
        assert_eq!(percent_decode("a%4", false), "a%4");
        assert_eq!(percent_decode("%41%42", false), "AB");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("a+b%2", true), "a b%2");
    }

    const TOKEN: &str = "/metadata/identity/oauth2/token";
    const Q: &str = "api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";

    fn canon(t: &str) -> Result<CanonicalTarget, Rejection> {
        Canonicalizer::default().canonicalize(t)
    }

    /// What a bypass attempt must become: the clean form, or a rejection of this kind.
    enum Want {
        Same(&'static str),
        Reject(RejectKind),
    }

    /// Attempts that defeated or were tried against aad-pod-identity's NMI, kube2iam,
    /// kiam and similar filters, and the usual proxy parser differentials.
    fn bypass_table() -> Vec<(String, Want)> {
        use RejectKind as K;
        use Want::*;
        let tok = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
        let q = Q;
        vec![
            // Trailing slash: NMI matched the exact path and forwarded the rest unchecked.
            (format!("{TOKEN}/?{q}"), Same(tok)),
            (
                format!("//metadata/identity/oauth2/token?{q}"),
                Reject(K::EmptySegment),
            ),
            (
                format!("/metadata//identity/oauth2/token?{q}"),
                Reject(K::EmptySegment),
            ),
            (format!("{TOKEN}//?{q}"), Reject(K::EmptySegment)),
            (
                format!("/metadata/identity/./oauth2/token?{q}"),
                Reject(K::DotSegment),
            ),
            (
                format!("/metadata/instance/../identity/oauth2/token?{q}"),
                Reject(K::DotSegment),
            ),
            (
                format!("/metadata/identity/oauth2/token/..?{q}"),
                Reject(K::DotSegment),
            ),
            // Case: IMDS compares paths ignoring case.
            (format!("/Metadata/Identity/OAuth2/Token?{q}"), Same(tok)),
            (format!("/METADATA/IDENTITY/OAUTH2/TOKEN?{q}"), Same(tok)),
            // Encodings.
            (
                format!("/metadata/identity%2foauth2/token?{q}"),
                Reject(K::EncodedSlash),
            ),
            (
                format!("/metadata/identity%2Foauth2/token?{q}"),
                Reject(K::EncodedSlash),
            ),
            (
                format!("/metadata/identity/%2e/oauth2/token?{q}"),
                Reject(K::EncodedDot),
            ),
            (
                format!("/metadata/identity/%2E%2E/identity/oauth2/token?{q}"),
                Reject(K::EncodedDot),
            ),
            (
                format!("/metadata/identity%252foauth2/token?{q}"),
                Reject(K::DoubleEncoding),
            ),
            (format!("/metadata/identity/oauth2/%74oken?{q}"), Same(tok)),
            (
                format!("/metadata/identity/oauth2/%2574oken?{q}"),
                Reject(K::DoubleEncoding),
            ),
            (
                format!("/metadata/identity%5coauth2%5ctoken?{q}"),
                Reject(K::Backslash),
            ),
            (
                format!("/metadata/identity/oauth2/token%00?{q}"),
                Reject(K::ControlChar),
            ),
            (
                format!("/metadata/identity/oauth2/token%09?{q}"),
                Reject(K::ControlChar),
            ),
            (
                format!("/metadata/identity/oauth2/token%20?{q}"),
                Reject(K::DisallowedEscape),
            ),
            (
                format!("/metadata/identity/oauth2/token%zz?{q}"),
                Reject(K::BadEscape),
            ),
            (
                format!("/metadata/identity/oauth2/token%?{q}"),
                Reject(K::BadEscape),
            ),
            (
                format!("/metadata/identity/oauth2/tok%c3%a9n?{q}"),
                Reject(K::NonAscii),
            ),
            // Raw bytes.
            (
                format!("/metadata\\identity\\oauth2\\token?{q}"),
                Reject(K::Backslash),
            ),
            (
                format!("/metadata/identity/oauth2/token\t?{q}"),
                Reject(K::ControlChar),
            ),
            (
                format!("/metadata/identity/oauth2/token ?{q}"),
                Reject(K::DisallowedChar),
            ),
            (
                format!("/metadata/identity/oauth2/tokén?{q}"),
                Reject(K::NonAscii),
            ),
            (
                format!("/metadata/identity/oauth2/token.?{q}"),
                Reject(K::DisallowedChar),
            ),
            (
                format!("/metadata/identity/oauth2/token~?{q}"),
                Reject(K::DisallowedChar),
            ),
            // Path parameters and fragments.
            (
                format!("/metadata/identity/oauth2/token;x=y?{q}"),
                Reject(K::Semicolon),
            ),
            (
                format!("/metadata/identity;/oauth2/token?{q}"),
                Reject(K::Semicolon),
            ),
            (
                format!("/metadata/identity/oauth2/token%3b?{q}"),
                Reject(K::Semicolon),
            ),
            (
                format!("/metadata/identity/oauth2/token#frag?{q}"),
                Reject(K::Fragment),
            ),
            (
                format!("/metadata/identity/oauth2/token?{q}#frag"),
                Reject(K::Fragment),
            ),
            // Absolute-form.
            (format!("http://169.254.169.254{TOKEN}?{q}"), Same(tok)),
            (format!("HTTP://169.254.169.254:80{TOKEN}?{q}"), Same(tok)),
            (format!("http://evil{TOKEN}?{q}"), Reject(K::OtherHost)),
            (
                format!("http://evil.example:80{TOKEN}?{q}"),
                Reject(K::OtherHost),
            ),
            (
                format!("http://169.254.169.254:8080{TOKEN}?{q}"),
                Reject(K::OtherHost),
            ),
            (
                format!("http://169.254.169.254@evil{TOKEN}?{q}"),
                Reject(K::BadTargetForm),
            ),
            (
                format!("https://169.254.169.254{TOKEN}?{q}"),
                Reject(K::BadTargetForm),
            ),
            ("*".to_string(), Reject(K::BadTargetForm)),
            ("169.254.169.254:80".to_string(), Reject(K::BadTargetForm)),
            // Query differentials.
            (
                format!("{TOKEN}?api-version=2018-02-01&resource=https://a/&resource=https://b/"),
                Reject(K::RepeatedParameter),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01&resource=https://a/&Resource=https://b/"),
                Reject(K::RepeatedParameter),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01&resource=https://a/&%72esource=https://b/"),
                Reject(K::RepeatedParameter),
            ),
            (
                format!(
                    "{TOKEN}?api-version=2018-02-01&Resource=https%3A%2F%2Fmanagement.azure.com%2F"
                ),
                Same(tok),
            ),
            (
                format!("{TOKEN}?API-VERSION=2018-02-01&RESOURCE=https://management.azure.com/"),
                Same(tok),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01&&resource=https://management.azure.com/&"),
                Same(tok),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01;resource=https://management.azure.com/"),
                Reject(K::Semicolon),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01&resource=https%253A%252F%252Fa"),
                Reject(K::BadParameterValue),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01&resource=https://a/%00"),
                Reject(K::BadParameterValue),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01&resource=https://a/+x"),
                Reject(K::BadParameterValue),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01&resource=https://a/%5C"),
                Reject(K::BadParameterValue),
            ),
            (
                format!("{TOKEN}?api%20version=2018-02-01&resource=https://a/"),
                Reject(K::BadParameterName),
            ),
            // Overlong.
            (
                format!(
                    "/metadata/instance/{}?api-version=2021-02-01",
                    "a/".repeat(40)
                ),
                Reject(K::TooLong),
            ),
            (
                format!(
                    "/metadata/instance/{}?api-version=2021-02-01",
                    "a".repeat(600)
                ),
                Reject(K::TooLong),
            ),
            (
                format!("{TOKEN}?{q}&pad={}", "x".repeat(5000)),
                Reject(K::TooLong),
            ),
            (
                format!("{TOKEN}?{q}&pad={}", "x".repeat(2100)),
                Reject(K::TooLong),
            ),
        ]
    }

    #[test]
    fn bypass_table_is_rejected_or_canonical() {
        for (attempt, want) in bypass_table() {
            let got = canon(&attempt);
            match want {
                Want::Same(clean) => {
                    let clean_form = canon(clean).expect("the clean form is accepted");
                    let got = got.unwrap_or_else(|e| panic!("{attempt:?} rejected: {e}"));
                    assert_eq!(got, clean_form, "{attempt:?}");
                    assert_eq!(got.target(), clean, "{attempt:?}");
                }
                Want::Reject(kind) => {
                    let e = got.expect_err(&attempt);
                    assert_eq!(e.kind, kind, "{attempt:?}: {e}");
                    assert!(!e.detail.is_empty());
                }
            }
        }
    }

    /// The table, exported for the access-rule tests (every attempt decided like the
    /// clean form).
    pub(crate) fn attempts() -> Vec<String> {
        bypass_table().into_iter().map(|(a, _)| a).collect()
    }

    #[test]
    fn canonical_forms() {
        let c =
            canon("/metadata/instance/compute/vmId/?format=text&api-version=2021-02-01").unwrap();
        assert_eq!(c.endpoint, ImdsApi::Instance);
        assert_eq!(c.path, "/metadata/instance/compute/vmId");
        assert_eq!(c.instance_path, vec!["compute", "vmId"]);
        assert_eq!(
            c.query.as_deref(),
            Some("format=text&api-version=2021-02-01")
        );

        let c = canon("/METADATA/Instance/Compute").unwrap();
        assert_eq!(c.path, "/metadata/instance/Compute");
        assert_eq!(c.query, None);

        let c = canon("/metadata/identity/GETPLATFORMMETADATA?api-version=2021-02-01").unwrap();
        assert_eq!(c.endpoint, ImdsApi::IdentityPlatformMetadata);
        assert_eq!(c.path, "/metadata/identity/getPlatformMetadata");

        let c = canon("/metadata/versions").unwrap();
        assert_eq!(
            (c.endpoint, c.path.as_str()),
            (ImdsApi::Versions, "/metadata/versions")
        );

        // Unknown paths keep their (harmless) spelling; validate answers 404.
        let c = canon("/latest/meta-data").unwrap();
        assert_eq!(
            (c.endpoint, c.path.as_str()),
            (ImdsApi::Unknown, "/latest/meta-data")
        );
        let c = canon("/").unwrap();
        assert_eq!((c.endpoint, c.path.as_str()), (ImdsApi::Unknown, "/"));

        // Values are decoded once and re-encoded; names lower-cased.
        let c = canon(&format!(
            "{TOKEN}?Api-Version=2018-02-01&resource=https://vault.azure.net&MI_RES_ID=/subscriptions/s/x"
        ))
        .unwrap();
        assert_eq!(
            c.query.as_deref(),
            Some(
                "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&mi_res_id=%2Fsubscriptions%2Fs%2Fx"
            )
        );
        // A name without `=` has the empty value.
        let c = canon("/metadata/attested/document?api-version=2021-02-01&nonce").unwrap();
        assert_eq!(c.query.as_deref(), Some("api-version=2021-02-01&nonce="));
    }

    #[test]
    fn absolute_form_hosts_are_configurable() {
        let c = Canonicalizer::new(Limits::default(), ["Metadata.Internal:8080"]);
        let versions = c
            .canonicalize("http://metadata.internal:8080/metadata/versions")
            .unwrap();
        assert_eq!(versions.path, "/metadata/versions");
        assert_eq!(versions.query, None);
        assert_eq!(
            c.canonicalize("http://169.254.169.254/metadata/versions")
                .unwrap_err()
                .kind,
            RejectKind::OtherHost
        );
        let none = Canonicalizer::new(Limits::default(), Vec::<String>::new());
        assert_eq!(
            none.canonicalize("http://169.254.169.254/metadata/versions")
                .unwrap_err()
                .kind,
            RejectKind::OtherHost
        );
        assert_eq!(
            Canonicalizer::default()
                .canonicalize("http://169.254.169.254?x=1")
                .unwrap_err()
                .kind,
            RejectKind::BadTargetForm
        );
    }

    fn cloud(c: Cloud, t: &str) -> Result<CanonicalTarget, Rejection> {
        Canonicalizer::for_cloud(c, Limits::default(), default_hosts(c)).canonicalize(t)
    }

    /// AWS and GCP: the same rejections as Azure, case kept, their own names and query.
    #[test]
    fn cloud_bypass_table() {
        use Cloud::{Aws, Gcp};
        use RejectKind as K;
        let creds = "/latest/meta-data/iam/security-credentials/my.role";
        let token =
            "/computeMetadata/v1/instance/service-accounts/sa@p.iam.gserviceaccount.com/token";
        // (cloud, attempt, canonical target or rejection)
        let table: Vec<(Cloud, String, Result<&str, K>)> = vec![
            (Aws, creds.into(), Ok(creds)),
            (Aws, "/latest/meta-data/iam/security-credentials/My.Role".into(), Ok("/latest/meta-data/iam/security-credentials/My.Role")),
            (Aws, "/latest/Meta-Data/".into(), Ok("/latest/Meta-Data/")),
            (Aws, "/latest/meta%2ddata/iam".into(), Ok("/latest/meta-data/iam")),
            (Aws, "/latest/meta-data/iam/security-credentials/a%2bb%40c".into(), Ok("/latest/meta-data/iam/security-credentials/a+b@c")),
            (Aws, "/latest//meta-data/iam".into(), Err(K::EmptySegment)),
            (Aws, "/latest/meta-data/./iam".into(), Err(K::DotSegment)),
            (Aws, "/latest/meta-data/placement/../iam/security-credentials/r".into(), Err(K::DotSegment)),
            (Aws, "/latest/meta-data/.../iam".into(), Err(K::DotSegment)),
            (Aws, "/latest/meta-data/%2e%2e/iam".into(), Err(K::EncodedDot)),
            (Aws, "/latest/meta-data/my%2erole".into(), Err(K::EncodedDot)),
            (Aws, "/latest/meta-data%2fiam".into(), Err(K::EncodedSlash)),
            (Aws, "/latest/meta-data%252fiam".into(), Err(K::DoubleEncoding)),
            (Aws, "/latest/meta-data\\iam".into(), Err(K::Backslash)),
            (Aws, "/latest/meta-data;/iam".into(), Err(K::Semicolon)),
            (Aws, "/latest/meta-data/iam%00".into(), Err(K::ControlChar)),
            (Aws, "/latest/meta-data/i%c3%a9".into(), Err(K::NonAscii)),
            (Aws, "/latest/meta-data/iam?x=1".into(), Err(K::UnknownParameter)),
            (Aws, "/latest/meta-data/iam?".into(), Ok("/latest/meta-data/iam")),
            (Aws, format!("http://169.254.169.254{creds}"), Ok(creds)),
            (Aws, format!("http://[fd00:ec2::254]{creds}"), Ok(creds)),
            (Aws, format!("http://[FD00:EC2:0::254]:80{creds}"), Ok(creds)),
            (Aws, format!("http://[::ffff:169.254.169.254]{creds}"), Ok(creds)),
            (Aws, format!("http://[::ffff:a9fe:a9fe]:80{creds}"), Ok(creds)),
            (Aws, format!("http://[::169.254.169.254]{creds}"), Err(K::OtherHost)),
            (Aws, format!("http://metadata.google.internal{creds}"), Err(K::OtherHost)),
            (Aws, format!("http://evil.example{creds}"), Err(K::OtherHost)),
            (Aws, format!("http://169.254.169.254@evil{creds}"), Err(K::BadTargetForm)),
            (Gcp, token.into(), Ok(token)),
            (Gcp, "/computeMetadata/v1/instance/service-accounts/sa%40p.iam.gserviceaccount.com/token".into(), Ok(token)),
            (Gcp, "/computeMetadata/v1/instance/?recursive=TRUE&alt=json".into(), Ok("/computeMetadata/v1/instance/?recursive=true&alt=json")),
            (Gcp, "/computeMetadata/v1/instance/?recursive=true&alt=Json".into(), Err(K::BadParameterValue)),
            (Gcp, "/computeMetadata/v1/instance/service-accounts/default/identity?audience=a&format=FULL".into(), Err(K::BadParameterValue)),
            (Gcp, "/computeMetadata/v1/instance/?Recursive=true".into(), Err(K::UnknownParameter)),
            (Gcp, "/computeMetadata/v1/instance?recursive=true&recursive=false".into(), Err(K::RepeatedParameter)),
            (Gcp, "/computeMetadata/v1/instance?recursive=true&RECURSIVE=false".into(), Err(K::UnknownParameter)),
            (Gcp, "/computeMetadata/v1/instance?recursive=yes".into(), Err(K::BadParameterValue)),
            (Gcp, "/computeMetadata/v1/instance?recursive".into(), Err(K::BadParameterValue)),
            (Gcp, "/computeMetadata/v1/instance?foo=1".into(), Err(K::UnknownParameter)),
            (Gcp, "/computeMetadata/v1/instance?alt=xml".into(), Err(K::BadParameterValue)),
            (Gcp, "/computeMetadata/v1/instance?timeout_sec=1e3".into(), Err(K::BadParameterValue)),
            (Gcp, "/computeMetadata/v1/instance?recursive=true;alt=text".into(), Err(K::Semicolon)),
            (Gcp, "/computeMetadata/v1/instance/id?wait_for_change=true&timeout_sec=30&last_etag=ab12".into(), Ok("/computeMetadata/v1/instance/id?wait_for_change=true&timeout_sec=30&last_etag=ab12")),
            (Gcp, "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://a.example/x&format=full&licenses=true".into(), Ok("/computeMetadata/v1/instance/service-accounts/default/identity?audience=https%3A%2F%2Fa.example%2Fx&format=full&licenses=TRUE")),
            (Gcp, "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https%253A".into(), Err(K::BadParameterValue)),
            (Gcp, "/computeMetadata/V1/Instance/Zone".into(), Ok("/computeMetadata/V1/Instance/Zone")),
            (Gcp, "/computeMetadata/v1/instance/attributes/kube%2denv".into(), Ok("/computeMetadata/v1/instance/attributes/kube-env")),
            (Gcp, "http://metadata.google.internal/computeMetadata/v1/instance/zone".into(), Ok("/computeMetadata/v1/instance/zone")),
            (Gcp, "http://METADATA/computeMetadata/v1/instance/zone".into(), Ok("/computeMetadata/v1/instance/zone")),
            (Gcp, "http://[fd20:ce::254]/computeMetadata/v1/instance/zone".into(), Ok("/computeMetadata/v1/instance/zone")),
            (Gcp, "http://[::ffff:a9fe:a9fe]/computeMetadata/v1/instance/zone".into(), Ok("/computeMetadata/v1/instance/zone")),
            (Gcp, "http://metadata.google.internal./computeMetadata/v1/instance/zone".into(), Err(K::OtherHost)),
            (Gcp, "http://metadata.google.internal.evil/computeMetadata/v1/instance/zone".into(), Err(K::OtherHost)),
            (Gcp, "http://[fd00:ec2::254]/computeMetadata/v1/instance/zone".into(), Err(K::OtherHost)),
            (Gcp, "/".into(), Ok("/")),
        ];
        for (c, attempt, want) in table {
            match (cloud(c, &attempt), want) {
                (Ok(got), Ok(clean)) => {
                    assert_eq!(got.target(), clean, "{attempt}");
                    // The canonical form is a fixed point.
                    assert_eq!(cloud(c, &got.target()).as_ref(), Ok(&got), "{attempt}");
                    assert_eq!(got.endpoint, ImdsApi::Unknown);
                }
                (Err(e), Err(kind)) => {
                    assert_eq!(e.kind, kind, "{attempt}: {e}");
                    assert!(!e.detail.is_empty());
                }
                (got, want) => panic!("{attempt}: got {got:?}, want {want:?}"),
            }
        }
        let c = cloud(Aws, "/latest/Meta-Data/").unwrap();
        assert_eq!(
            (c.segments.as_slice(), c.directory),
            (&["latest".to_string(), "Meta-Data".to_string()][..], true)
        );
        // Azure is unchanged: no segments, lower-cased endpoint names.
        let c = canon("/Metadata/Versions").unwrap();
        assert!(c.segments.is_empty() && !c.directory);
        // The mapped form of an accepted host is that host for Azure too.
        assert!(canon("http://[::ffff:169.254.169.254]/metadata/versions").is_ok());
    }

    #[test]
    fn cloud_header_tricks() {
        let aws =
            Canonicalizer::for_cloud(Cloud::Aws, Limits::default(), default_hosts(Cloud::Aws));
        let gcp =
            Canonicalizer::for_cloud(Cloud::Gcp, Limits::default(), default_hosts(Cloud::Gcp));
        assert_eq!(
            aws.check_cloud_headers([
                ("X-aws-ec2-metadata-token", "t"),
                ("x-aws-ec2-metadata-token-ttl-seconds", "60")
            ]),
            Ok(())
        );
        assert_eq!(
            gcp.check_cloud_headers([("metadata-flavor", "Google"), ("Connection", "keep-alive")]),
            Ok(())
        );
        let kind =
            |c: &Canonicalizer, h: Vec<(&str, &str)>| c.check_cloud_headers(h).unwrap_err().kind;
        assert_eq!(
            kind(
                &aws,
                vec![
                    ("X-aws-ec2-metadata-token", "a"),
                    ("x-AWS-ec2-metadata-token", "b")
                ]
            ),
            RejectKind::HeaderTrick
        );
        assert_eq!(
            kind(
                &aws,
                vec![("Connection", "close, X-aws-ec2-metadata-token")]
            ),
            RejectKind::HeaderTrick
        );
        assert_eq!(
            kind(&aws, vec![("Connection", "x-forwarded-for")]),
            RejectKind::HeaderTrick
        );
        assert_eq!(
            kind(
                &gcp,
                vec![("Metadata-Flavor", "Google"), ("metadata-flavor", "Google")]
            ),
            RejectKind::HeaderTrick
        );
        assert_eq!(
            kind(&gcp, vec![("Connection", "Metadata-Flavor")]),
            RejectKind::HeaderTrick
        );
    }

    #[test]
    fn header_checks() {
        let c = Canonicalizer::default();
        assert_eq!(
            c.check_headers([("Metadata", "true"), ("User-Agent", "a b/1")]),
            Ok(())
        );
        let kind = |h: Vec<(&str, &[u8])>| c.check_headers(h).unwrap_err().kind;
        assert_eq!(kind(vec![("Metadata", b"true\t")]), RejectKind::ControlChar);
        assert_eq!(kind(vec![("X", b"caf\xc3\xa9")]), RejectKind::NonAscii);
        assert_eq!(kind(vec![("Bad Name", b"x")]), RejectKind::BadHeader);
        assert_eq!(kind(vec![("", b"x")]), RejectKind::BadHeader);
        let many: Vec<(String, &str)> = (0..65).map(|i| (format!("x-{i}"), "v")).collect();
        assert_eq!(
            c.check_headers(many).unwrap_err().kind,
            RejectKind::BadHeader
        );
        let big = "v".repeat(9000);
        assert_eq!(
            c.check_headers([("X-Big", big.as_str())]).unwrap_err().kind,
            RejectKind::BadHeader
        );
    }

    #[test]
    fn canonical_forms_are_within_the_limits_and_idempotent() {
        // Found by fuzzing: re-encoding tripled a query of `@`s past `max_query`, so the
        // canonical form went upstream over the limit and was itself rejected.
        let over = format!("/metadata/versions?x={}", "@".repeat(1000));
        assert!(over.len() <= Limits::default().max_query);
        let e = canon(&over).unwrap_err();
        assert_eq!(e.kind, RejectKind::TooLong, "{e}");
        let under = format!("/metadata/versions?x={}", "@".repeat(600));
        let c = canon(&under).expect("within the limits once re-encoded");
        assert_eq!(canon(&c.target()), Ok(c));
    }

    #[test]
    fn details_are_short() {
        let long = format!("/metadata/{}%2f", "a".repeat(300));
        let e = canon(&long).unwrap_err();
        assert!(e.detail.len() < 120, "{}", e.detail);
        assert_eq!(shorten("éé", 3), "é…");
        // Found by fuzzing: a long parameter name was quoted whole.
        let name = "n".repeat(1000);
        for query in [
            format!("{name}=%1f"),
            format!("{name}=%zz"),
            format!("{name}=a&{name}=b"),
        ] {
            let e = canon(&format!("/metadata/versions?{query}")).unwrap_err();
            assert!(e.detail.len() < 120, "{:?}: {}", e.kind, e.detail);
        }
    }
}
