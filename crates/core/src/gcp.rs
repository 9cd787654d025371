//! The GCE metadata server (and GKE's): the protocol's rules as pure functions, as
//! [`crate::imds`] is for Azure.
//!
//! Callers hand in the method, the path, the raw query and the headers of a request and
//! get back either a [`GcpRequest`] (what is asked: its [`GcpKind`], the decoded path
//! segments, the query parameters that mean something there) or the [`GcpError`] the
//! metadata server itself would answer (status, content type and body). The emulator
//! answers with these; the filtering proxy decides with them, and [`secret_kind`] tells
//! it which answers bear secrets.
//!
//! The rules, from the public documentation (docs/emulator-gcp.md cites each one and
//! says which are inferred):
//!
//! - `/` answers without any header (the discovery listing client libraries probe);
//!   everything under `/computeMetadata/` needs exactly one `Metadata-Flavor: Google`
//!   header (the value compared exactly), else 403 with Google's HTML error page
//!   "Missing Metadata-Flavor:Google header.";
//! - a request carrying `X-Forwarded-For` is refused (403), as GKE's metadata
//!   concealment proxy refuses it;
//! - only `GET` is served (405 otherwise; inferred);
//! - the legacy `/0.1/...` and `/computeMetadata/v1beta1/...` endpoints were shut down on
//!   2020-09-30 and answer 404 ([`GcpErrorKind::LegacyEndpoint`]); before that, GKE ≥
//!   1.12 nodes (`disable-legacy-endpoints=true`) answered 403;
//! - paths are case-sensitive: a case variant of a fixed name (`/computeMetadata/V1/`,
//!   `.../attributes/KUBE-ENV`) is not the endpoint, and one whose lower-case form would
//!   be another kind of endpoint or a secret is refused outright (404), so no filter can
//!   be walked around by case whichever way the server compares;
//! - query parameters: `recursive`, `alt=json|text`, `wait_for_change`, `timeout_sec`,
//!   `last_etag` everywhere; `scopes` on `token`; `audience` (required, non-empty),
//!   `format=standard|full` and `licenses` on `identity`. A boolean is `true` or `false`
//!   (ASCII case ignored), anything else is refused (400): stricter than a server that
//!   might read `1` as true. A known parameter given twice is refused (400). Unknown
//!   parameters (and known ones that mean nothing on the path) are ignored by GCE (GKE's
//!   concealment tests send `?nonrecursive=true` and get 200); they are listed in
//!   [`GcpRequest::ignored_params`] so that a filter can refuse them, and
//!   [`GcpRequest::upstream_target`] never sends them on.
//!
//! Paths are read by decoding each segment's `%XX` escapes, dropping empty segments and
//! resolving `.` and `..`, so that `instance//attributes/./kube-env` is kube-env (as
//! strict as any server that normalises paths). A segment whose decoding holds `/`, `\`
//! or a control character has no single meaning and is refused (404).
//!
//! Nothing here does IO.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::canon;
use crate::imds::{IMDS_ADDRESS, Query};

/// The metadata server's IPv4 address (the same link-local address as Azure's and AWS's).
pub const METADATA_ADDRESS: Ipv4Addr = IMDS_ADDRESS;
/// The metadata server's IPv6 address on IPv6-enabled VMs, `fd20:ce::254`. Unverified:
/// not in Google's public documentation that we could find (the shared reference notes
/// it from client code); treat it as a metadata address anyway.
pub const METADATA_IPV6_ADDRESS: Ipv6Addr = crate::target::GCP_METADATA_IPV6_ADDRESS;
/// The metadata server's port (plain HTTP).
pub const METADATA_PORT: u16 = 80;
/// The metadata server's fully qualified host name.
pub const METADATA_HOST: &str = "metadata.google.internal";
/// The short host name GCE's resolver also answers.
pub const METADATA_SHORT_HOST: &str = "metadata";
/// The metadata server's base URL, `http://` [`METADATA_ADDRESS`] (a string, for
/// command-line defaults).
pub const METADATA_URL: &str = "http://169.254.169.254";
/// The header every `/computeMetadata/` request needs, and every answer carries.
pub const METADATA_FLAVOR: &str = "Metadata-Flavor";
/// The only accepted value of [`METADATA_FLAVOR`] (compared exactly).
pub const METADATA_FLAVOR_VALUE: &str = "Google";
/// The path prefix of the v1 API.
pub const V1_PREFIX: &str = "/computeMetadata/v1";
/// The `Server` header GCE's metadata server answers with.
pub const SERVER_HEADER: &str = "Metadata Server for VM";
/// The content type of text answers (values, directory listings, identity tokens).
pub const CONTENT_TYPE_TEXT: &str = "application/text";
/// The content type of JSON answers (recursive reads, `alt=json`, tokens).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The content type of Google's HTML error pages (403, 404, 405).
pub const CONTENT_TYPE_HTML: &str = "text/html; charset=UTF-8";
/// The content type of plain-text errors (400).
pub const CONTENT_TYPE_PLAIN: &str = "text/plain; charset=utf-8";
/// Attributes whose value holds credentials or what leads to them: `kube-env` (a GKE
/// node's kubelet bootstrap settings, with `KUBELET_CERT` / `KUBELET_KEY` on older
/// nodes), `user-data` and `startup-script` (bootstrap scripts), and the SSH and Windows
/// keys (`ssh-keys`, the legacy `sshKeys`, `windows-keys`). The one list: the proxy's
/// rules ([`crate::cloud_access`]) and [`secret_kind`] both read it.
pub const SECRET_ATTRIBUTES: &[&str] = &[
    "kube-env",
    "user-data",
    "startup-script",
    "ssh-keys",
    "sshKeys",
    "windows-keys",
];
/// Every query parameter the metadata server documents (names compared exactly, all
/// lower-case); the canonicaliser refuses any other ([`crate::canon::RejectKind::UnknownParameter`]).
pub const KNOWN_PARAMS: &[&str] = &[
    "recursive",
    "alt",
    "wait_for_change",
    "timeout_sec",
    "last_etag",
    "audience",
    "format",
    "licenses",
    "scopes",
];

/// Whether `ip` is the metadata server's address ([`METADATA_ADDRESS`],
/// [`METADATA_IPV6_ADDRESS`]), also in IPv4-mapped IPv6 form.
pub fn is_metadata_ip(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4 == METADATA_ADDRESS,
        IpAddr::V6(v6) => v6 == METADATA_IPV6_ADDRESS,
    }
}

/// Whether a `Host` header value names the metadata server: [`METADATA_HOST`] or
/// [`METADATA_SHORT_HOST`] (ASCII case ignored, one trailing dot allowed), or an address
/// [`is_metadata_ip`] accepts (`[...]` around IPv6), with no port or port 80.
pub fn is_metadata_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        return port_ok(port)
            && inside
                .parse::<Ipv6Addr>()
                .is_ok_and(|v6| is_metadata_ip(IpAddr::V6(v6)));
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if !port_ok(port) {
        return false;
    }
    if let Ok(v4) = name.parse::<Ipv4Addr>() {
        return is_metadata_ip(IpAddr::V4(v4));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case(METADATA_HOST) || name.eq_ignore_ascii_case(METADATA_SHORT_HOST)
}

fn port_ok(port: Option<&str>) -> bool {
    match port {
        None => true,
        Some(p) => p.parse::<u16>() == Ok(METADATA_PORT) && !p.starts_with('+'),
    }
}

/// Instance or project metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `instance/...`.
    Instance,
    /// `project/...`.
    Project,
}

impl Scope {
    /// `instance` or `project`, as in the path.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Instance => "instance",
            Scope::Project => "project",
        }
    }
}

/// The `format` of an identity token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdentityFormat {
    /// `format=standard` (the default): the standard claims.
    #[default]
    Standard,
    /// `format=full`: also the `google.compute_engine` claim (project, zone, instance).
    Full,
}

impl IdentityFormat {
    /// `standard` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityFormat::Standard => "standard",
            IdentityFormat::Full => "full",
        }
    }
}

/// The `alt` representation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alt {
    /// `alt=json`.
    Json,
    /// `alt=text`.
    Text,
}

impl Alt {
    /// `json` or `text`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alt::Json => "json",
            Alt::Text => "text",
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GcpKind {
    /// `/`: the discovery listing (`computeMetadata/`); no header needed.
    Discovery,
    /// `/computeMetadata/`: the versions listing (`v1/`).
    Versions,
    /// `/computeMetadata/v1/`: the API's root (`instance/`, `project/`, ...).
    Root,
    /// `instance/` or any path below it that no other kind names (`instance/zone`).
    Instance,
    /// `project/` or any path below it that no other kind names (`project/project-id`).
    Project,
    /// `instance/attributes/` or `project/attributes/`: the attributes directory.
    Attributes {
        /// Whose attributes.
        scope: Scope,
    },
    /// One attribute (`instance/attributes/kube-env`, `project/attributes/ssh-keys`).
    Attribute {
        /// Whose attribute.
        scope: Scope,
        /// The attribute's name, decoded, case kept.
        name: String,
    },
    /// `instance/service-accounts/`: the service accounts listing.
    ServiceAccounts,
    /// `instance/service-accounts/ACCOUNT/` or one of its values (`email`, `aliases`,
    /// `scopes`).
    ServiceAccount {
        /// `default` or the account's email, decoded.
        account: String,
        /// The value asked for; `None` for the account's directory.
        field: Option<String>,
    },
    /// `instance/service-accounts/ACCOUNT/token`: an OAuth 2.0 access token.
    Token {
        /// `default` or the account's email.
        account: String,
        /// The scopes asked for with `scopes=` (comma-separated), in order; empty for the
        /// account's own scopes.
        scopes: Vec<String>,
    },
    /// `instance/service-accounts/ACCOUNT/identity?audience=...`: an OIDC identity token.
    Identity {
        /// `default` or the account's email.
        account: String,
        /// The token's audience (required, non-empty).
        audience: String,
        /// `format=standard|full`.
        format: IdentityFormat,
        /// `licenses=TRUE`: the instance's license codes in the `full` format.
        licenses: bool,
    },
    /// Any other path under `/computeMetadata/v1/` (`oslogin/`, `universe/`, ...).
    Other,
}

impl GcpKind {
    /// A short stable name (`token`, `attribute`, ...), for logs and reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            GcpKind::Discovery => "discovery",
            GcpKind::Versions => "versions",
            GcpKind::Root => "root",
            GcpKind::Instance => "instance",
            GcpKind::Project => "project",
            GcpKind::Attributes { .. } => "attributes",
            GcpKind::Attribute { .. } => "attribute",
            GcpKind::ServiceAccounts => "service-accounts",
            GcpKind::ServiceAccount { .. } => "service-account",
            GcpKind::Token { .. } => "token",
            GcpKind::Identity { .. } => "identity",
            GcpKind::Other => "other",
        }
    }

    /// Whether `name` is one of [`SECRET_ATTRIBUTES`] and this the attribute.
    pub fn is_secret_attribute(&self) -> bool {
        matches!(self, GcpKind::Attribute { name, .. } if SECRET_ATTRIBUTES.contains(&name.as_str()))
    }
}

impl fmt::Display for GcpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An answer that bears a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GcpSecret {
    /// A service account's OAuth 2.0 access token (`.../token`).
    AccessToken,
    /// A service account's OIDC identity token (`.../identity`).
    IdentityToken,
    /// `attributes/kube-env`: kubelet credentials on GKE nodes.
    KubeEnv,
    /// Another of [`SECRET_ATTRIBUTES`] (bootstrap scripts, SSH and Windows keys).
    SecretAttribute,
    /// A `recursive=true` read of a directory whose tree holds the attributes (`/`,
    /// `instance/`, `instance/attributes/`, and the same for `project/`): its JSON holds
    /// kube-env when the node has it. A recursive read of `service-accounts/` holds no
    /// token (tokens are minted per request, never part of the tree).
    RecursiveAttributes,
}

impl GcpSecret {
    /// A short stable name (`access-token`, `identity-token`, `kube-env`,
    /// `recursive-attributes`).
    pub fn as_str(self) -> &'static str {
        match self {
            GcpSecret::AccessToken => "access-token",
            GcpSecret::IdentityToken => "identity-token",
            GcpSecret::KubeEnv => "kube-env",
            GcpSecret::SecretAttribute => "secret-attribute",
            GcpSecret::RecursiveAttributes => "recursive-attributes",
        }
    }
}

impl fmt::Display for GcpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the metadata server would serve (or look up: whether the entry exists is the
/// server's data, not a rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpRequest {
    /// What is asked.
    pub kind: GcpKind,
    /// The decoded path segments after `/computeMetadata/v1` (`["instance",
    /// "attributes", "kube-env"]`); empty for [`GcpKind::Discovery`],
    /// [`GcpKind::Versions`] and [`GcpKind::Root`].
    pub segments: Vec<String>,
    /// Whether the path ends with `/` (a directory listing is asked for).
    pub directory: bool,
    /// `recursive=true`.
    pub recursive: bool,
    /// `alt=json|text`, when given.
    pub alt: Option<Alt>,
    /// `wait_for_change=true`.
    pub wait_for_change: bool,
    /// `timeout_sec=N`, when given.
    pub timeout_sec: Option<u64>,
    /// `last_etag=...`, when given (not empty).
    pub last_etag: Option<String>,
    /// Query parameters the server ignores on this path (unknown names, names that
    /// differ from a known one by case, known names that mean nothing here), as sent
    /// (decoded). A filter refuses a request that has any.
    pub ignored_params: Vec<String>,
}

impl GcpRequest {
    /// The canonical path: `/computeMetadata/v1/` and the segments, each percent-encoded
    /// where needed, with the trailing `/` of a directory.
    pub fn path(&self) -> String {
        match self.kind {
            GcpKind::Discovery => return "/".into(),
            GcpKind::Versions => return "/computeMetadata/".into(),
            _ => {}
        }
        let mut p = String::from(V1_PREFIX);
        p.push('/');
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                p.push('/');
            }
            encode_segment(seg, &mut p);
        }
        if self.directory && !self.segments.is_empty() {
            p.push('/');
        }
        p
    }

    /// The request target to send upstream: [`Self::path`] and only the parameters the
    /// request was validated on, in a fixed order (`recursive`, `alt`,
    /// `wait_for_change`, `timeout_sec`, `last_etag`, then `scopes` for a token,
    /// `audience`, `format`, `licenses` for an identity token). Ignored parameters stay
    /// behind.
    pub fn upstream_target(&self) -> String {
        let mut t = self.path();
        let mut first = true;
        let mut param = |name: &str, value: &str| {
            t.push(if first { '?' } else { '&' });
            first = false;
            t.push_str(name);
            t.push('=');
            canon::encode_value(value, &mut t);
        };
        if self.recursive {
            param("recursive", "true");
        }
        if let Some(alt) = self.alt {
            param("alt", alt.as_str());
        }
        if self.wait_for_change {
            param("wait_for_change", "true");
        }
        if let Some(s) = self.timeout_sec {
            param("timeout_sec", &s.to_string());
        }
        if let Some(e) = &self.last_etag {
            param("last_etag", e);
        }
        match &self.kind {
            GcpKind::Token { scopes, .. } if !scopes.is_empty() => {
                param("scopes", &scopes.join(","));
            }
            GcpKind::Identity {
                audience,
                format,
                licenses,
                ..
            } => {
                param("audience", audience);
                if *format == IdentityFormat::Full {
                    param("format", "full");
                    if *licenses {
                        param("licenses", "TRUE");
                    }
                }
            }
            _ => {}
        }
        t
    }

    /// Whether the path names a directory of the tree (a listing, or with `recursive`
    /// its contents): the roots, `instance/`, `project/`, the attributes and service
    /// accounts directories, and any path asked with a trailing `/`.
    pub fn is_directory(&self) -> bool {
        self.directory
            || matches!(
                self.kind,
                GcpKind::Discovery | GcpKind::Versions | GcpKind::Root
            )
    }
}

/// Which answer the server gives instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GcpErrorKind {
    /// The request carries `X-Forwarded-For` (403).
    #[error("the request carries an X-Forwarded-For header")]
    ForwardedFor,
    /// `Metadata-Flavor: Google` is missing, has another value, or is repeated (403).
    #[error("the request has no single `Metadata-Flavor: Google` header")]
    MissingFlavor,
    /// A method other than `GET` (405).
    #[error("method {0} is not allowed")]
    MethodNotAllowed(String),
    /// No such endpoint or entry (404).
    #[error("not found")]
    NotFound,
    /// A legacy endpoint (`/0.1/`, `/computeMetadata/v1beta1/`), shut down (404).
    #[error("legacy metadata endpoint (shut down on 2020-09-30)")]
    LegacyEndpoint,
    /// A known query parameter given more than once (400).
    #[error("query parameter `{0}` is given more than once")]
    RepeatedParameter(String),
    /// A known query parameter with a value it does not take (400).
    #[error("query parameter `{name}` has an invalid value `{value}`")]
    InvalidParameter {
        /// The parameter.
        name: String,
        /// Its value, decoded.
        value: String,
    },
    /// `identity` without a non-empty `audience` (400).
    #[error("identity tokens need a non-empty audience")]
    MissingAudience,
    /// `wait_for_change=true` on a directory listing without `recursive=true` (400).
    #[error("wait_for_change on a directory listing needs recursive=true")]
    WaitOnListing,
    /// Rate limit exceeded (429).
    #[error("too many requests")]
    Throttled,
    /// Any other status (injected failures: 500, 503).
    #[error("HTTP status {0}")]
    Status(u16),
}

/// An error answer of the metadata server: what went wrong, and the request path as
/// received (Google's error pages quote it, HTML-escaped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct GcpError {
    /// What went wrong.
    pub kind: GcpErrorKind,
    /// The request path as received (no query).
    pub path: String,
    /// The request method as received.
    pub method: String,
}

impl GcpError {
    /// An error for a request to `path` with `method`.
    pub fn new(kind: GcpErrorKind, method: &str, path: &str) -> GcpError {
        GcpError {
            kind,
            path: path.to_string(),
            method: method.to_string(),
        }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match &self.kind {
            GcpErrorKind::ForwardedFor | GcpErrorKind::MissingFlavor => 403,
            GcpErrorKind::MethodNotAllowed(_) => 405,
            GcpErrorKind::NotFound | GcpErrorKind::LegacyEndpoint => 404,
            GcpErrorKind::Throttled => 429,
            GcpErrorKind::Status(s) => *s,
            _ => 400,
        }
    }

    /// The answer's content type: Google's HTML error page for 403, 404 and 405, plain
    /// text otherwise.
    pub fn content_type(&self) -> &'static str {
        match self.status() {
            403..=405 => CONTENT_TYPE_HTML,
            _ => CONTENT_TYPE_PLAIN,
        }
    }

    /// The answer's body. 403, 404 and 405 are Google's HTML error page ("403. That’s an
    /// error." and a sentence quoting the path, HTML-escaped; its style sheet and logo
    /// left out); the others one line of text.
    pub fn body(&self) -> String {
        let path = html_escape(&self.path);
        let (status, title, sentence) = match &self.kind {
            GcpErrorKind::MissingFlavor => (
                403,
                "Forbidden",
                format!(
                    "Your client does not have permission to get URL <code>{path}</code> from this server. Missing Metadata-Flavor:Google header."
                ),
            ),
            GcpErrorKind::ForwardedFor => (
                403,
                "Forbidden",
                format!(
                    "Your client does not have permission to get URL <code>{path}</code> from this server. Request contains X-Forwarded-For header."
                ),
            ),
            GcpErrorKind::MethodNotAllowed(m) => (
                405,
                "Method Not Allowed",
                format!(
                    "The request method <code>{}</code> is inappropriate for the URL <code>{path}</code>.",
                    html_escape(m)
                ),
            ),
            GcpErrorKind::NotFound | GcpErrorKind::LegacyEndpoint => (
                404,
                "Not Found",
                format!("The requested URL <code>{path}</code> was not found on this server."),
            ),
            GcpErrorKind::RepeatedParameter(name) => {
                return format!("query parameter {name:?} is given more than once\n");
            }
            GcpErrorKind::InvalidParameter { name, value } => {
                return format!("invalid value {value:?} for query parameter {name:?}\n");
            }
            GcpErrorKind::MissingAudience => {
                return "non-empty audience parameter required\n".into();
            }
            GcpErrorKind::WaitOnListing => {
                return "non-recursive directory listings are not supported for wait-for-change requests\n".into();
            }
            GcpErrorKind::Throttled => return "Too many requests\n".into(),
            GcpErrorKind::Status(s) => return format!("Request failed with status {s}\n"),
        };
        format!(
            "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <meta name=viewport content=\"initial-scale=1, minimum-scale=1, width=device-width\">\n  <title>Error {status} ({title})!!1</title>\n  <p><b>{status}.</b> <ins>That’s an error.</ins>\n  <p>{sentence}  <ins>That’s all we know.</ins>\n"
        )
    }
}

/// `&`, `<`, `>`, `"` and `'` as HTML entities.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment percent-encoded: letters, digits and `-._~@+,=:` as they are, every
/// other byte as `%XX`.
pub(crate) fn encode_segment(seg: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b'~' | b'@' | b'+' | b',' | b'=' | b':'
            )
        {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// The path's decoded segments (empty ones dropped, `.` and `..` resolved) and whether
/// it ends with `/`; `None` when a decoded segment holds `/`, `\` or a control
/// character.
fn segments(path: &str) -> Option<(Vec<String>, bool)> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let seg = canon::percent_decode(raw, false);
        if seg.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
            return None;
        }
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    let directory = path.ends_with('/')
        || path.ends_with("/.")
        || path.ends_with("/..")
        || path.ends_with("%2F")
        || path.ends_with("%2f");
    Some((out, directory))
}

/// Where a path leads, before the query is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Discovery,
    Versions,
    Legacy,
    /// Under `/computeMetadata/v1/`: the segments after it.
    V1(Vec<String>),
    Unknown,
}

fn route(segments: &[String]) -> Route {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        [] => Route::Discovery,
        ["computeMetadata"] => Route::Versions,
        ["computeMetadata", "v1", ..] => Route::V1(segments[2..].to_vec()),
        ["0.1", ..] | ["computeMetadata", "v1beta1", ..] => Route::Legacy,
        _ => Route::Unknown,
    }
}

/// The kind a v1 path names, without the query's parameters (token scopes and identity
/// audience are filled in by [`validate`]).
fn classify(rest: &[String]) -> GcpKind {
    let s: Vec<&str> = rest.iter().map(String::as_str).collect();
    let scope = |x: &str| match x {
        "instance" => Some(Scope::Instance),
        "project" => Some(Scope::Project),
        _ => None,
    };
    match s.as_slice() {
        [] => GcpKind::Root,
        [sc, "attributes"] if scope(sc).is_some() => GcpKind::Attributes {
            scope: scope(sc).expect("checked"),
        },
        [sc, "attributes", name, ..] if scope(sc).is_some() => GcpKind::Attribute {
            scope: scope(sc).expect("checked"),
            name: name.to_string(),
        },
        ["instance", "service-accounts"] => GcpKind::ServiceAccounts,
        ["instance", "service-accounts", account, "token"] => GcpKind::Token {
            account: account.to_string(),
            scopes: Vec::new(),
        },
        ["instance", "service-accounts", account, "identity"] => GcpKind::Identity {
            account: account.to_string(),
            audience: String::new(),
            format: IdentityFormat::Standard,
            licenses: false,
        },
        ["instance", "service-accounts", account, field @ ..] => GcpKind::ServiceAccount {
            account: account.to_string(),
            field: (!field.is_empty()).then(|| field.join("/")),
        },
        ["instance", ..] => GcpKind::Instance,
        ["project", ..] => GcpKind::Project,
        _ => GcpKind::Other,
    }
}

/// The secret a request's answer would bear, if any: see [`GcpSecret`].
pub fn secret_kind(req: &GcpRequest) -> Option<GcpSecret> {
    secret_of(&req.kind, &req.segments, req.recursive)
}

fn secret_of(kind: &GcpKind, segments: &[String], recursive: bool) -> Option<GcpSecret> {
    match kind {
        GcpKind::Token { .. } => Some(GcpSecret::AccessToken),
        GcpKind::Identity { .. } => Some(GcpSecret::IdentityToken),
        GcpKind::Attribute { name, .. } if name == "kube-env" => Some(GcpSecret::KubeEnv),
        k if k.is_secret_attribute() => Some(GcpSecret::SecretAttribute),
        GcpKind::Discovery | GcpKind::Versions | GcpKind::Root | GcpKind::Attributes { .. }
            if recursive =>
        {
            Some(GcpSecret::RecursiveAttributes)
        }
        GcpKind::Instance | GcpKind::Project if recursive && segments.len() == 1 => {
            Some(GcpSecret::RecursiveAttributes)
        }
        _ => None,
    }
}

/// Checks a request against the metadata server's rules and reads what it asks for.
///
/// `method` and `path` are as received, `query` the raw query without `?`, `headers`
/// any iterator of (name, value) pairs (an `http::HeaderMap` works as is).
///
/// Checks, in order: no `X-Forwarded-For` (403); a known path (the legacy endpoints and
/// anything outside `/` and `/computeMetadata/` are 404; a case variant that would be
/// another kind or a secret in lower case is 404); below `/`, exactly one
/// `Metadata-Flavor: Google` (403); `GET` (405); the query (400: a repeated or invalid
/// known parameter, an identity request without a non-empty `audience`,
/// `wait_for_change` on a listing without `recursive`). Whether the entry exists is
/// the caller's data (the emulator answers 404 for a missing one).
pub fn validate<K, V>(
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: impl IntoIterator<Item = (K, V)>,
) -> Result<GcpRequest, GcpError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let err = |kind| Err(GcpError::new(kind, method, path));

    let mut flavors = 0usize;
    let mut flavor_ok = true;
    let mut forwarded = false;
    for (name, value) in headers {
        let name = name.as_ref();
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded = true;
        } else if name.eq_ignore_ascii_case(METADATA_FLAVOR) {
            flavors += 1;
            flavor_ok &= value.as_ref() == METADATA_FLAVOR_VALUE.as_bytes();
        }
    }
    if forwarded {
        return err(GcpErrorKind::ForwardedFor);
    }

    if !path.starts_with('/') {
        // `*` (OPTIONS) or a target that is not origin-form: no path of the API.
        return err(GcpErrorKind::NotFound);
    }
    let Some((segs, directory)) = segments(path) else {
        return err(GcpErrorKind::NotFound);
    };
    let route = route(&segs);
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let (kind, rest) = match route {
        Route::Discovery => (GcpKind::Discovery, Vec::new()),
        Route::Versions => (GcpKind::Versions, Vec::new()),
        Route::Legacy => return err(GcpErrorKind::LegacyEndpoint),
        Route::Unknown => {
            // `/computemetadata/v1/...` is not the API; refuse it as missing whatever
            // the server would do with the case.
            return err(GcpErrorKind::NotFound);
        }
        Route::V1(rest) => {
            let kind = classify(&rest);
            let lower_rest = &lower[2..];
            let lower_kind = classify(lower_rest);
            let secret_if_lower = secret_of(&lower_kind, lower_rest, true);
            let secret_exact = secret_of(&kind, &rest, true);
            if std::mem::discriminant(&kind) != std::mem::discriminant(&lower_kind)
                || (secret_if_lower.is_some() && secret_exact.is_none())
            {
                return err(GcpErrorKind::NotFound);
            }
            (kind, rest)
        }
    };
    // The lower-case form of a path outside the API naming the API (`/COMPUTEMETADATA/v1/`)
    // was refused above by `Route::Unknown`.

    if kind != GcpKind::Discovery && (flavors != 1 || !flavor_ok) {
        return err(GcpErrorKind::MissingFlavor);
    }
    if method != "GET" {
        return err(GcpErrorKind::MethodNotAllowed(method.to_string()));
    }

    let query = Query::parse(query);
    let mut req = GcpRequest {
        kind,
        segments: rest,
        directory,
        recursive: false,
        alt: None,
        wait_for_change: false,
        timeout_sec: None,
        last_etag: None,
        ignored_params: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut audience: Option<String> = None;
    let mut format = IdentityFormat::Standard;
    let mut licenses = false;
    let mut scopes: Vec<String> = Vec::new();
    let is_token = matches!(req.kind, GcpKind::Token { .. });
    let is_identity = matches!(req.kind, GcpKind::Identity { .. });
    for (name, value) in query.pairs() {
        let Some(known) = KNOWN_PARAMS.iter().copied().find(|k| *k == name) else {
            req.ignored_params.push(name.clone());
            continue;
        };
        if seen.contains(&known) {
            return err(GcpErrorKind::RepeatedParameter(known.to_string()));
        }
        seen.push(known);
        let invalid = || {
            Err(GcpError::new(
                GcpErrorKind::InvalidParameter {
                    name: known.to_string(),
                    value: value.clone(),
                },
                method,
                path,
            ))
        };
        let boolean = |v: &str| {
            if v.eq_ignore_ascii_case("true") {
                Some(true)
            } else if v.eq_ignore_ascii_case("false") {
                Some(false)
            } else {
                None
            }
        };
        match known {
            "recursive" => match boolean(value) {
                Some(b) => req.recursive = b,
                None => return invalid(),
            },
            "wait_for_change" => match boolean(value) {
                Some(b) => req.wait_for_change = b,
                None => return invalid(),
            },
            "alt" => match value.as_str() {
                "json" => req.alt = Some(Alt::Json),
                "text" => req.alt = Some(Alt::Text),
                _ => return invalid(),
            },
            "timeout_sec" => match value.parse::<u64>() {
                Ok(s) if !value.starts_with('+') => req.timeout_sec = Some(s),
                _ => return invalid(),
            },
            "last_etag" => {
                if value.is_empty() || value.chars().any(char::is_control) {
                    return invalid();
                }
                req.last_etag = Some(value.clone());
            }
            "audience" if is_identity => audience = Some(value.clone()),
            "format" if is_identity => match value.as_str() {
                "standard" => format = IdentityFormat::Standard,
                "full" => format = IdentityFormat::Full,
                _ => return invalid(),
            },
            "licenses" if is_identity => match boolean(value) {
                Some(b) => licenses = b,
                None => return invalid(),
            },
            "scopes" if is_token => {
                let list: Vec<String> = value.split(',').map(|s| s.trim().to_string()).collect();
                if list
                    .iter()
                    .any(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
                {
                    return invalid();
                }
                scopes = list;
            }
            _ => req.ignored_params.push(name.clone()),
        }
    }
    match &mut req.kind {
        GcpKind::Token { scopes: s, .. } => *s = scopes,
        GcpKind::Identity {
            audience: a,
            format: f,
            licenses: l,
            ..
        } => {
            match audience {
                Some(v) if !v.is_empty() => *a = v,
                _ => return err(GcpErrorKind::MissingAudience),
            }
            *f = format;
            // `licenses` means something in the `full` format only (and is sent upstream
            // only then): a standard token never carries them.
            *l = licenses && format == IdentityFormat::Full;
        }
        _ => {}
    }
    if req.wait_for_change && req.is_directory() && !req.recursive {
        return err(GcpErrorKind::WaitOnListing);
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAVOR: [(&str, &str); 1] = [("Metadata-Flavor", "Google")];

    fn get(target: &str) -> Result<GcpRequest, GcpError> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        validate("GET", path, query, FLAVOR)
    }

    fn kind(target: &str) -> GcpKind {
        get(target).unwrap_or_else(|e| panic!("{target}: {e}")).kind
    }

    fn status(target: &str) -> u16 {
        get(target).map(|_| 200).unwrap_or_else(|e| e.status())
    }

    #[test]
    fn addresses_and_hosts() {
        assert!(is_metadata_ip("169.254.169.254".parse().unwrap()));
        assert!(is_metadata_ip("::ffff:169.254.169.254".parse().unwrap()));
        assert!(is_metadata_ip("::ffff:a9fe:a9fe".parse().unwrap()));
        assert!(is_metadata_ip("fd20:ce::254".parse().unwrap()));
        assert!(!is_metadata_ip("fd00:ec2::254".parse().unwrap()));
        assert!(!is_metadata_ip("168.63.129.16".parse().unwrap()));
        for host in [
            "metadata.google.internal",
            "METADATA.Google.Internal",
            "metadata.google.internal.",
            "metadata.google.internal:80",
            "metadata",
            "169.254.169.254",
            "169.254.169.254:80",
            "[fd20:ce::254]",
            "[fd20:ce::254]:80",
            "[::ffff:169.254.169.254]",
            "[::ffff:a9fe:a9fe]:80",
        ] {
            assert!(is_metadata_host(host), "{host}");
        }
        for host in [
            "metadata.google.internal:8080",
            "metadata.google.internal:+80",
            "metadata.google.internal.evil",
            "evil.metadata.google.internal",
            "169.254.169.253",
            "[fd20:ce::254",
            "[fd20:ce::254]x",
            "fd20:ce::254",
            "",
        ] {
            assert!(!is_metadata_host(host), "{host}");
        }
        assert_eq!(METADATA_ADDRESS, crate::imds::IMDS_ADDRESS);
        assert_eq!(
            METADATA_URL,
            format!("http://{METADATA_ADDRESS}"),
            "the URL names the address"
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(kind("/"), GcpKind::Discovery);
        assert_eq!(kind("/computeMetadata/"), GcpKind::Versions);
        assert_eq!(kind("/computeMetadata/v1/"), GcpKind::Root);
        assert_eq!(kind("/computeMetadata/v1"), GcpKind::Root);
        assert_eq!(kind("/computeMetadata/v1/instance/"), GcpKind::Instance);
        assert_eq!(kind("/computeMetadata/v1/instance/zone"), GcpKind::Instance);
        assert_eq!(
            kind("/computeMetadata/v1/project/project-id"),
            GcpKind::Project
        );
        assert_eq!(
            kind("/computeMetadata/v1/instance/attributes/"),
            GcpKind::Attributes {
                scope: Scope::Instance
            }
        );
        assert_eq!(
            kind("/computeMetadata/v1/project/attributes/ssh-keys"),
            GcpKind::Attribute {
                scope: Scope::Project,
                name: "ssh-keys".into()
            }
        );
        let kube_env = kind("/computeMetadata/v1/instance/attributes/kube-env");
        assert!(kube_env.is_secret_attribute());
        assert_eq!(
            kind("/computeMetadata/v1/instance/service-accounts/"),
            GcpKind::ServiceAccounts
        );
        assert_eq!(
            kind("/computeMetadata/v1/instance/service-accounts/default/"),
            GcpKind::ServiceAccount {
                account: "default".into(),
                field: None
            }
        );
        assert_eq!(
            kind(
                "/computeMetadata/v1/instance/service-accounts/sa@p.iam.gserviceaccount.com/email"
            ),
            GcpKind::ServiceAccount {
                account: "sa@p.iam.gserviceaccount.com".into(),
                field: Some("email".into())
            }
        );
        assert_eq!(
            kind(
                "/computeMetadata/v1/instance/service-accounts/default/token?scopes=https://www.googleapis.com/auth/cloud-platform,s2"
            ),
            GcpKind::Token {
                account: "default".into(),
                scopes: vec![
                    "https://www.googleapis.com/auth/cloud-platform".into(),
                    "s2".into()
                ]
            }
        );
        assert_eq!(
            kind(
                "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https%3A%2F%2Fx.example&format=full&licenses=TRUE"
            ),
            GcpKind::Identity {
                account: "default".into(),
                audience: "https://x.example".into(),
                format: IdentityFormat::Full,
                licenses: true
            }
        );
        assert_eq!(kind("/computeMetadata/v1/oslogin/"), GcpKind::Other);
        assert_eq!(
            GcpKind::Token {
                account: "a".into(),
                scopes: vec![]
            }
            .as_str(),
            "token"
        );
    }

    #[test]
    fn every_secret_attribute_is_a_secret_and_kube_env_is_named() {
        for name in SECRET_ATTRIBUTES {
            for scope in ["instance", "project"] {
                let r = get(&format!("/computeMetadata/v1/{scope}/attributes/{name}")).unwrap();
                let want = if *name == "kube-env" {
                    GcpSecret::KubeEnv
                } else {
                    GcpSecret::SecretAttribute
                };
                assert_eq!(secret_kind(&r), Some(want), "{scope}/{name}");
            }
        }
        let r = get("/computeMetadata/v1/instance/attributes/cluster-name").unwrap();
        assert_eq!(secret_kind(&r), None);
    }

    #[test]
    fn segments_are_decoded_and_normalised() {
        let r = get("/computeMetadata/v1/instance//attributes/./x/../%6Bube-env").unwrap();
        assert_eq!(r.segments, ["instance", "attributes", "kube-env"]);
        assert_eq!(secret_kind(&r), Some(GcpSecret::KubeEnv));
        assert!(!r.directory);
        assert!(get("/computeMetadata/v1/instance/").unwrap().directory);
        // An encoded slash or backslash has no single meaning.
        assert_eq!(
            status("/computeMetadata/v1/instance%2Fattributes%2Fkube-env"),
            404
        );
        assert_eq!(
            status("/computeMetadata/v1/instance/attributes%5Ckube-env"),
            404
        );
        assert_eq!(
            status("/computeMetadata/v1/instance/attributes/kube%00env"),
            404
        );
        // Dot segments cannot climb out of the API into it.
        assert_eq!(
            kind("/x/../computeMetadata/v1/instance/service-accounts/default/token"),
            GcpKind::Token {
                account: "default".into(),
                scopes: vec![]
            }
        );
    }

    #[test]
    fn case_variants_are_refused_when_they_would_matter() {
        for target in [
            "/computeMetadata/V1/instance/",
            "/computemetadata/v1/instance/",
            "/COMPUTEMETADATA/V1/instance/service-accounts/default/token",
            "/computeMetadata/v1/Instance/attributes/kube-env",
            "/computeMetadata/v1/instance/Attributes/kube-env",
            "/computeMetadata/v1/instance/attributes/KUBE-ENV",
            "/computeMetadata/v1/instance/attributes/Kube-Env",
            "/computeMetadata/v1/instance/service-accounts/default/Token",
            "/computeMetadata/v1/instance/service-accounts/default/IDENTITY?audience=a",
            "/computeMetadata/v1/instance/Service-Accounts/",
            "/computeMetadata/v1/Project/?recursive=true",
            "/computeMetadata/v1/instance/ATTRIBUTES/?recursive=true",
        ] {
            assert_eq!(status(target), 404, "{target}");
        }
        // A case that changes nothing that matters stays the server's to look up.
        let r = get("/computeMetadata/v1/instance/attributes/Cluster-Name").unwrap();
        assert_eq!(
            r.kind,
            GcpKind::Attribute {
                scope: Scope::Instance,
                name: "Cluster-Name".into()
            }
        );
        assert_eq!(
            kind("/computeMetadata/v1/instance/Hostname"),
            GcpKind::Instance
        );
    }

    #[test]
    fn headers() {
        let p = "/computeMetadata/v1/instance/zone";
        let none: [(&str, &str); 0] = [];
        let e = validate("GET", p, None, none).unwrap_err();
        assert_eq!(e.kind, GcpErrorKind::MissingFlavor);
        assert_eq!(e.status(), 403);
        assert_eq!(e.content_type(), CONTENT_TYPE_HTML);
        assert!(e.body().contains("Missing Metadata-Flavor:Google header."));
        assert!(e.body().contains(&format!("<code>{p}</code>")));
        for bad in [
            vec![("Metadata-Flavor", "google")],
            vec![("Metadata-Flavor", "Google ")],
            vec![("Metadata-Flavor", "")],
            vec![("Metadata-Flavor", "Google"), ("metadata-flavor", "Google")],
            vec![("X-Google-Metadata-Request", "True")],
            vec![("Metadata", "true")],
        ] {
            assert_eq!(
                validate("GET", p, None, bad.clone()).unwrap_err().kind,
                GcpErrorKind::MissingFlavor,
                "{bad:?}"
            );
        }
        assert!(validate("GET", p, None, [("metadata-flavor", "Google")]).is_ok());
        for xff in ["X-Forwarded-For", "x-forwarded-for"] {
            let e = validate(
                "GET",
                p,
                None,
                [(xff, "10.0.0.1"), ("Metadata-Flavor", "Google")],
            )
            .unwrap_err();
            assert_eq!(
                (e.kind.clone(), e.status()),
                (GcpErrorKind::ForwardedFor, 403)
            );
            // Even on the discovery path, which needs no header.
            assert_eq!(
                validate("GET", "/", None, [(xff, "x")])
                    .unwrap_err()
                    .status(),
                403
            );
        }
        // The discovery listing needs no header; `/computeMetadata/` does.
        assert_eq!(
            validate("GET", "/", None, none).unwrap().kind,
            GcpKind::Discovery
        );
        assert_eq!(
            validate("GET", "/computeMetadata/", None, none)
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn methods_and_legacy_endpoints() {
        for m in ["POST", "PUT", "DELETE", "HEAD", "get"] {
            let e = validate(m, "/computeMetadata/v1/instance/", None, FLAVOR).unwrap_err();
            assert_eq!(e.status(), 405, "{m}");
            assert!(e.body().contains(&format!("<code>{m}</code>")), "{m}");
        }
        for legacy in [
            "/0.1/meta-data/attributes/kube-env",
            "/0.1/meta-data/service-accounts/default/acquire",
            "/computeMetadata/v1beta1/instance/service-accounts/default/token",
            "/computeMetadata/v1beta1/",
        ] {
            // No header needed to learn they are gone (they never needed one).
            let none: [(&str, &str); 0] = [];
            let e = validate("GET", legacy, None, none).unwrap_err();
            assert_eq!(
                (e.kind.clone(), e.status()),
                (GcpErrorKind::LegacyEndpoint, 404),
                "{legacy}"
            );
            assert!(e.body().contains("was not found on this server"));
        }
        for unknown in [
            "/computeMetadata/v2/",
            "/latest/meta-data/",
            "/metadata/instance",
        ] {
            assert_eq!(status(unknown), 404, "{unknown}");
        }
    }

    #[test]
    fn query_parameters() {
        let r = get("/computeMetadata/v1/instance/?recursive=true&alt=text&wait_for_change=TRUE&timeout_sec=5&last_etag=abc123").unwrap();
        assert!(r.recursive && r.wait_for_change);
        assert_eq!(r.alt, Some(Alt::Text));
        assert_eq!(r.timeout_sec, Some(5));
        assert_eq!(r.last_etag.as_deref(), Some("abc123"));
        assert!(r.ignored_params.is_empty());

        for bad in [
            "recursive=1",
            "recursive=yes",
            "recursive=",
            "alt=JSON",
            "alt=xml",
            "wait_for_change=1",
            "timeout_sec=-1",
            "timeout_sec=+5",
            "timeout_sec=x",
            "last_etag=",
        ] {
            let e = get(&format!("/computeMetadata/v1/instance/zone?{bad}")).unwrap_err();
            assert!(
                matches!(e.kind, GcpErrorKind::InvalidParameter { .. }),
                "{bad}: {e}"
            );
            assert_eq!(e.status(), 400);
        }
        let e = get("/computeMetadata/v1/instance/?recursive=false&recursive=true").unwrap_err();
        assert_eq!(e.kind, GcpErrorKind::RepeatedParameter("recursive".into()));

        // Unknown names, case variants and parameters that mean nothing here are ignored
        // by the server, and listed for a filter.
        let r = get("/computeMetadata/v1/instance/?nonrecursive=true&Recursive=true&recursive%3Dtrue&audience=x&scopes=y").unwrap();
        assert!(!r.recursive);
        assert_eq!(
            r.ignored_params,
            [
                "nonrecursive",
                "Recursive",
                "recursive=true",
                "audience",
                "scopes"
            ]
        );
        assert_eq!(secret_kind(&r), None);
    }

    #[test]
    fn identity_and_token_parameters() {
        let id = "/computeMetadata/v1/instance/service-accounts/default/identity";
        for q in ["", "?audience=", "?format=full", "?Audience=x"] {
            let e = get(&format!("{id}{q}")).unwrap_err();
            assert_eq!(e.kind, GcpErrorKind::MissingAudience, "{q}");
            assert_eq!(e.status(), 400);
            assert_eq!(e.body(), "non-empty audience parameter required\n");
        }
        assert!(matches!(
            get(&format!("{id}?audience=a&format=compact"))
                .unwrap_err()
                .kind,
            GcpErrorKind::InvalidParameter { .. }
        ));
        assert!(matches!(
            get("/computeMetadata/v1/instance/service-accounts/default/token?scopes=a,,b")
                .unwrap_err()
                .kind,
            GcpErrorKind::InvalidParameter { .. }
        ));
    }

    #[test]
    fn wait_for_change_on_a_listing_needs_recursive() {
        assert_eq!(
            get("/computeMetadata/v1/instance/attributes/?wait_for_change=true")
                .unwrap_err()
                .kind,
            GcpErrorKind::WaitOnListing
        );
        assert!(
            get("/computeMetadata/v1/instance/attributes/?wait_for_change=true&recursive=true")
                .is_ok()
        );
        assert!(
            get("/computeMetadata/v1/instance/attributes/cluster-name?wait_for_change=true")
                .is_ok()
        );
    }

    #[test]
    fn secrets() {
        let secret = |t: &str| secret_kind(&get(t).unwrap_or_else(|e| panic!("{t}: {e}")));
        let v1 = "/computeMetadata/v1";
        assert_eq!(
            secret(&format!("{v1}/instance/service-accounts/default/token")),
            Some(GcpSecret::AccessToken)
        );
        assert_eq!(
            secret(&format!(
                "{v1}/instance/service-accounts/x@p.iam.gserviceaccount.com/token?scopes=s"
            )),
            Some(GcpSecret::AccessToken)
        );
        assert_eq!(
            secret(&format!(
                "{v1}/instance/service-accounts/default/identity?audience=a"
            )),
            Some(GcpSecret::IdentityToken)
        );
        assert_eq!(
            secret(&format!("{v1}/instance/attributes/kube-env")),
            Some(GcpSecret::KubeEnv)
        );
        assert_eq!(
            secret(&format!("{v1}/instance/attributes/kube-env/?alt=json")),
            Some(GcpSecret::KubeEnv)
        );
        assert_eq!(
            secret(&format!("{v1}/project/attributes/kube-env")),
            Some(GcpSecret::KubeEnv)
        );
        for ancestor in [
            "/?recursive=true",
            "/computeMetadata/?recursive=true",
            "/computeMetadata/v1/?recursive=true",
            "/computeMetadata/v1/instance/?recursive=true",
            "/computeMetadata/v1/instance?recursive=true&alt=text",
            "/computeMetadata/v1/instance/attributes/?recursive=true",
            "/computeMetadata/v1/project/?recursive=true",
            "/computeMetadata/v1/project/attributes/?recursive=true",
        ] {
            let r = get(ancestor).unwrap_or_else(|e| panic!("{ancestor}: {e}"));
            assert_eq!(
                secret_kind(&r),
                Some(GcpSecret::RecursiveAttributes),
                "{ancestor}"
            );
        }
        for plain in [
            "/computeMetadata/v1/instance/",
            "/computeMetadata/v1/instance/attributes/",
            "/computeMetadata/v1/instance/attributes/cluster-name",
            "/computeMetadata/v1/instance/service-accounts/?recursive=true",
            "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
            "/computeMetadata/v1/instance/service-accounts/default/email",
            "/computeMetadata/v1/instance/network-interfaces/?recursive=true",
            "/computeMetadata/v1/project/project-id",
            "/computeMetadata/v1/instance/zone?recursive=true",
            "/",
        ] {
            assert_eq!(secret(plain), None, "{plain}");
        }
    }

    #[test]
    fn upstream_targets_keep_only_what_was_validated() {
        let t = |target: &str| get(target).unwrap().upstream_target();
        assert_eq!(
            t("/computeMetadata/v1/instance//attributes/?alt=text&foo=1&recursive=TRUE"),
            "/computeMetadata/v1/instance/attributes/?recursive=true&alt=text"
        );
        assert_eq!(
            t(
                "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https://a.example/x&format=full&licenses=true&scopes=s"
            ),
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=https%3A%2F%2Fa.example%2Fx&format=full&licenses=TRUE"
        );
        assert_eq!(
            t(
                "/computeMetadata/v1/instance/service-accounts/a@p.iam.gserviceaccount.com/token?scopes=x,y"
            ),
            "/computeMetadata/v1/instance/service-accounts/a@p.iam.gserviceaccount.com/token?scopes=x%2Cy"
        );
        assert_eq!(
            t(
                "/computeMetadata/v1/instance/attributes/a%20b?wait_for_change=true&timeout_sec=3&last_etag=e1"
            ),
            "/computeMetadata/v1/instance/attributes/a%20b?wait_for_change=true&timeout_sec=3&last_etag=e1"
        );
        assert_eq!(t("/"), "/");
        assert_eq!(t("/computeMetadata/v1"), "/computeMetadata/v1/");
        // The rebuilt target reads back as the same request.
        for target in [
            "/computeMetadata/v1/instance/attributes/kube-env",
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=a%26b&format=full",
            "/computeMetadata/v1/project/?recursive=true&alt=json",
            // `licenses` without `format=full` means nothing and is not sent on.
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=a&licenses=TRUE",
        ] {
            let r = get(target).unwrap();
            let again = get(&r.upstream_target()).unwrap();
            assert_eq!(again, r, "{target}");
        }
    }

    #[test]
    fn odd_targets_are_answered_never_a_panic() {
        for target in [
            "",
            "*",
            "computeMetadata/v1/instance/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "/%",
            "/%zz/%4",
            "/computeMetadata/v1/%ff%fe/",
            "/computeMetadata/v1/instance/attributes/\u{e9}t\u{e9}",
            "/computeMetadata/v1/../../../..",
            "/computeMetadata/v1/instance/?&&=&a&=b&recursive",
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=%",
            "/computeMetadata/v1/instance/?timeout_sec=99999999999999999999999",
        ] {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            match validate("GET", path, query, FLAVOR) {
                Ok(r) => {
                    // Whatever is accepted rebuilds into a target read the same way.
                    let t = r.upstream_target();
                    let (p, q) = match t.split_once('?') {
                        Some((p, q)) => (p, Some(q)),
                        None => (t.as_str(), None),
                    };
                    let again = validate("GET", p, q, FLAVOR).unwrap();
                    assert_eq!(
                        (again.kind, again.segments),
                        (r.kind, r.segments),
                        "{target}"
                    );
                }
                Err(e) => assert!((400..=405).contains(&e.status()), "{target}: {e}"),
            }
        }
        for not_origin_form in ["", "*", "computeMetadata/v1/instance/"] {
            assert_eq!(status(not_origin_form), 404, "{not_origin_form:?}");
        }
    }

    #[test]
    fn error_pages_escape_the_path() {
        let none: [(&str, &str); 0] = [];
        let e = validate("GET", "/computeMetadata/v1/<script>", None, none).unwrap_err();
        let body = e.body();
        assert!(body.contains("&lt;script&gt;"), "{body}");
        assert!(!body.contains("<script>"), "{body}");
        assert!(body.starts_with("<!DOCTYPE html>"));
        assert!(body.contains("Error 403 (Forbidden)!!1"));
        let e = GcpError::new(GcpErrorKind::NotFound, "GET", "/x");
        assert!(e.body().contains("<b>404.</b>"));
        assert_eq!(
            GcpError::new(GcpErrorKind::Status(503), "GET", "/").status(),
            503
        );
        assert_eq!(
            GcpError::new(GcpErrorKind::Throttled, "GET", "/").status(),
            429
        );
    }
}
