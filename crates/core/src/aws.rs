//! AWS EC2 instance metadata (IMDSv1 and IMDSv2), the EKS Pod Identity agent and ECS task
//! metadata: the protocol's rules as pure functions, as [`crate::imds`] is for Azure.
//!
//! Everything here is sans-IO: callers hand in the method, the path, the raw query and the
//! headers of a request and get back either a validated [`AwsRequest`] (what the request
//! asks for, and whether it carries an IMDSv2 session token) or the [`AwsError`] EC2's
//! instance metadata service itself would answer (status and body). The emulator answers
//! with these; the filtering proxy decides with them.
//!
//! The rules, as AWS documents them (`docs/emulator-aws.md` says which parts are inferred):
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (an integer
//!   1..=21600) returns an IMDSv2 session token; without the header, or with a value out of
//!   range, the answer is 400; a token `PUT` carrying `X-Forwarded-For` is refused (403);
//! - every other request is a `GET`; a `GET` may carry the token in
//!   `X-aws-ec2-metadata-token` (IMDSv2) or not (IMDSv1, refused with 401 when the
//!   instance requires tokens: the emulator's and the proxy's decision, since the token
//!   is opaque here);
//! - other methods get 405;
//! - paths are case-sensitive: `/latest/Meta-Data/` is a 404, not the meta-data tree.
//!
//! Paths are read as decoded segments: each segment is percent-decoded, empty segments
//! (`//`) are dropped and `.`/`..` resolved, and only a trailing `/` is remembered (it asks
//! for a listing). A segment that decodes to something holding `/`, `\` or NUL is refused
//! with a 404, so no reader can take `iam%2Fsecurity-credentials` for two segments. Each
//! choice makes a filter at least as strict as IMDS: whatever spelling reaches a secret is
//! classified as that secret.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::canon;
use crate::imds;
use crate::target;

/// IMDS on IPv4 (`169.254.169.254`, the same address as Azure's and GCP's).
pub const IMDS_ADDRESS_V4: Ipv4Addr = imds::IMDS_ADDRESS;
/// IMDS on IPv6 (`fd00:ec2::254`, Nitro instances with `HttpProtocolIpv6` enabled).
pub const IMDS_ADDRESS_V6: Ipv6Addr = imds::AWS_IMDS_IPV6_ADDRESS;
/// IMDS's port (plain HTTP).
pub const IMDS_PORT: u16 = 80;
/// The EKS Pod Identity agent on IPv4 (`169.254.170.23`, a hostNetwork DaemonSet); the
/// address of [`crate::target::AWS_POD_IDENTITY`].
pub const POD_IDENTITY_ADDRESS_V4: Ipv4Addr = target::AWS_POD_IDENTITY_ADDRESS;
/// The EKS Pod Identity agent on IPv6 (`fd00:ec2::23`).
pub const POD_IDENTITY_ADDRESS_V6: Ipv6Addr = target::AWS_POD_IDENTITY_IPV6_ADDRESS;
/// The EKS Pod Identity agent's port.
pub const POD_IDENTITY_PORT: u16 = 80;
/// ECS task metadata and container credentials (`169.254.170.2`).
pub const ECS_TASK_METADATA_ADDRESS: Ipv4Addr = target::AWS_ECS_TASK_METADATA_ADDRESS;
/// ECS task metadata's port.
pub const ECS_TASK_METADATA_PORT: u16 = 80;

/// IMDS's base URL on IPv4, `http://` [`IMDS_ADDRESS_V4`].
pub const IMDS_URL: &str = "http://169.254.169.254";
/// IMDS's base URL on IPv6, `http://[` [`IMDS_ADDRESS_V6`] `]`.
pub const IMDS_URL_V6: &str = "http://[fd00:ec2::254]";
/// The EKS Pod Identity agent's base URL on IPv4.
pub const POD_IDENTITY_URL: &str = "http://169.254.170.23";
/// The EKS Pod Identity agent's base URL on IPv6.
pub const POD_IDENTITY_URL_V6: &str = "http://[fd00:ec2::23]";
/// ECS task metadata's base URL.
pub const ECS_TASK_METADATA_URL: &str = "http://169.254.170.2";

/// The IMDSv2 token endpoint (`PUT`).
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The header a `GET` carries its IMDSv2 session token in.
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// The header of a token `PUT` giving the token's lifetime in seconds.
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
/// The shortest token lifetime IMDS grants (seconds).
pub const TOKEN_TTL_MIN: u32 = 1;
/// The longest token lifetime IMDS grants (seconds, six hours).
pub const TOKEN_TTL_MAX: u32 = 21_600;
/// The role name segment of the EC2 instance's own identity credentials
/// (`identity-credentials/ec2/security-credentials/ec2-instance`).
pub const IDENTITY_CREDENTIALS_ROLE: &str = "ec2-instance";

/// The content type of IMDS's answers (listings, leaves, JSON documents alike).
pub const CONTENT_TYPE_TEXT: &str = "text/plain";
/// The content type of IMDS's error pages.
pub const CONTENT_TYPE_HTML: &str = "text/html";

/// The metadata versions IMDS lists at `/` (oldest first; `latest` last), as the EC2
/// user guide's "Get the available versions of the instance metadata" shows them. A path
/// may start with any of them.
pub const VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "latest",
];

/// The methods IMDS answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AwsMethod {
    /// `GET`: every metadata path.
    Get,
    /// `PUT`: the token endpoint only.
    Put,
}

impl AwsMethod {
    /// Reads a method name (case-sensitive, as HTTP methods are).
    pub fn parse(method: &str) -> Option<AwsMethod> {
        match method {
            "GET" => Some(AwsMethod::Get),
            "PUT" => Some(AwsMethod::Put),
            _ => None,
        }
    }

    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AwsMethod::Get => "GET",
            AwsMethod::Put => "PUT",
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AwsKind {
    /// `PUT /latest/api/token`: a session token living `ttl` seconds.
    Token {
        /// The lifetime asked for, in [`TOKEN_TTL_MIN`]..=[`TOKEN_TTL_MAX`].
        ttl: u32,
    },
    /// `/`: the list of metadata versions.
    Versions,
    /// `/VERSION/`: the categories of a version (`dynamic`, `meta-data`, `user-data`).
    VersionRoot,
    /// Anything in the meta-data tree but the kinds below (`/VERSION/meta-data/...`),
    /// listings included (`iam/`, `iam/security-credentials/`).
    MetaData,
    /// `meta-data/iam/info`: the instance profile's ARN and id.
    IamInfo,
    /// `meta-data/iam/security-credentials/ROLE`: the role's temporary credentials.
    Credentials {
        /// The role name, decoded, as written (case kept).
        role: String,
    },
    /// `meta-data/identity-credentials/ec2/security-credentials/ec2-instance`: the
    /// instance identity role's credentials.
    IdentityCredentials,
    /// `dynamic/instance-identity/document`: the signed instance identity document.
    IdentityDocument,
    /// Any other path under `dynamic` (`dynamic/`, signatures, `fws/...`).
    Dynamic,
    /// `/VERSION/user-data`: the instance's user data.
    UserData,
}

impl AwsKind {
    /// A short stable name (`token`, `credentials`, ...), for logs and reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            AwsKind::Token { .. } => "token",
            AwsKind::Versions => "versions",
            AwsKind::VersionRoot => "version-root",
            AwsKind::MetaData => "meta-data",
            AwsKind::IamInfo => "iam-info",
            AwsKind::Credentials { .. } => "credentials",
            AwsKind::IdentityCredentials => "identity-credentials",
            AwsKind::IdentityDocument => "identity-document",
            AwsKind::Dynamic => "dynamic",
            AwsKind::UserData => "user-data",
        }
    }
}

impl fmt::Display for AwsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IMDSv2 session token as a request carried it: opaque here (nothing in the core
/// validates it; the emulator and the proxy do). Its `Debug` shows a fingerprint, never the
/// token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionToken(String);

impl SessionToken {
    /// Wraps a token value.
    pub fn new(value: impl Into<String>) -> SessionToken {
        SessionToken(value.into())
    }

    /// The token as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// [`crate::token::fingerprint`] of the token: safe to log.
    pub fn fingerprint(&self) -> String {
        crate::token::fingerprint(&self.0)
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionToken(<sha256:{}>)", self.fingerprint())
    }
}

/// A request IMDS would accept, read into what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRequest {
    /// The method.
    pub method: AwsMethod,
    /// What is asked for.
    pub kind: AwsKind,
    /// The path's decoded segments, `.`/`..` resolved, empty ones dropped (`/latest/
    /// meta-data/iam/info` is `["latest", "meta-data", "iam", "info"]`); case kept.
    pub segments: Vec<String>,
    /// The path ended in `/` (a listing); `/` itself has no segments and no trailing slash.
    pub trailing_slash: bool,
    /// The IMDSv2 session token the request carries (`X-aws-ec2-metadata-token`), if any;
    /// always `None` on the token `PUT` (a token header there is ignored, as IMDS does).
    pub token: Option<SessionToken>,
}

impl AwsRequest {
    /// The version segment (`latest`, `2016-09-02`); `None` for `/`.
    pub fn version(&self) -> Option<&str> {
        self.segments.first().map(String::as_str)
    }

    /// For paths in the meta-data tree, the segments after `meta-data`
    /// (`["iam", "info"]`); `None` elsewhere.
    pub fn meta_data_path(&self) -> Option<&[String]> {
        match self.segments.get(1).map(String::as_str) {
            Some("meta-data") => Some(&self.segments[2..]),
            _ => None,
        }
    }

    /// For paths under `dynamic`, the segments after `dynamic`; `None` elsewhere.
    pub fn dynamic_path(&self) -> Option<&[String]> {
        match self.segments.get(1).map(String::as_str) {
            Some("dynamic") => Some(&self.segments[2..]),
            _ => None,
        }
    }

    /// The path in canonical form: `/` and the segments, each percent-encoded except
    /// RFC 3986 unreserved characters and `@+,=:`, and the trailing `/` when there was one. This is
    /// what the proxy sends upstream (the query is never sent: IMDS reads none).
    pub fn canonical_path(&self) -> String {
        let mut out = String::with_capacity(64);
        for seg in &self.segments {
            out.push('/');
            // Role names may hold `+=,.@-_`: written as they are (as the GCP path's
            // segments), never as escapes IMDS might not decode.
            crate::gcp::encode_segment(seg, &mut out);
        }
        if self.trailing_slash || self.segments.is_empty() {
            out.push('/');
        }
        out
    }
}

/// Which answers bear credentials or secrets: the proxy grants them only by a path naming
/// them; the probe and the lab count credentials and user data as sensitive, and report a
/// session token alone as `session-token` (it opens IMDSv2's other paths, no cloud API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretKind {
    /// An instance profile role's temporary credentials (`iam/security-credentials/ROLE`).
    RoleCredentials,
    /// The instance identity role's credentials
    /// (`identity-credentials/ec2/security-credentials/ec2-instance`).
    IdentityCredentials,
    /// User data (`/latest/user-data`): bootstrap scripts, often with secrets in them
    /// (an EKS node's holds the cluster's CA and bootstrap settings).
    UserData,
    /// An IMDSv2 session token (the answer of `PUT /latest/api/token`).
    SessionToken,
}

impl SecretKind {
    /// A short stable name (`role-credentials`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::RoleCredentials => "role-credentials",
            SecretKind::IdentityCredentials => "identity-credentials",
            SecretKind::UserData => "user-data",
            SecretKind::SessionToken => "session-token",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The signed forms of the instance identity document under
/// `dynamic/instance-identity/` (PKCS7, signature, RSA-2048): proof of the instance's
/// identity that another service may accept as the node's. The proxy's rules treat them
/// as secrets ([`crate::cloud_access::secret_path`]); [`secret_kind`] does not name
/// them, as the probe never reads them.
pub const SIGNED_IDENTITY: &[&str] = &["pkcs7", "signature", "rsa2048"];

/// Which secret the answer to `request` bears, if any.
pub fn secret_kind(request: &AwsRequest) -> Option<SecretKind> {
    match request.kind {
        AwsKind::Credentials { .. } => Some(SecretKind::RoleCredentials),
        AwsKind::IdentityCredentials => Some(SecretKind::IdentityCredentials),
        AwsKind::UserData => Some(SecretKind::UserData),
        AwsKind::Token { .. } => Some(SecretKind::SessionToken),
        _ => None,
    }
}

/// What is wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsErrorKind {
    /// A token `PUT` without `X-aws-ec2-metadata-token-ttl-seconds`, or with it more than
    /// once (400).
    #[error("the token request has no (or more than one) {TOKEN_TTL_HEADER} header")]
    MissingTtl,
    /// A token lifetime that is not an integer in 1..=21600 (400).
    #[error("token lifetime `{0}` is not an integer from 1 to 21600")]
    InvalidTtl(String),
    /// A token `PUT` carrying `X-Forwarded-For` (403).
    #[error("the token request carries an X-Forwarded-For header")]
    ForwardedFor,
    /// A `GET` whose session token is missing where one is required, invalid or expired
    /// (401). Never returned by [`validate`], which does not judge tokens; the emulator and
    /// the proxy answer it.
    #[error("the session token is missing, invalid or expired")]
    Unauthorized,
    /// A `GET` whose token header is empty or repeated (401): no such request can carry a
    /// valid token.
    #[error("the {TOKEN_HEADER} header is empty or repeated")]
    MalformedToken,
    /// No such path (404).
    #[error("no such path: {0}")]
    NotFound(String),
    /// The method is not allowed on the path (405).
    #[error("HTTP method {method} isn't allowed on {path}")]
    MethodNotAllowed {
        /// The method as received.
        method: String,
        /// The path as received.
        path: String,
    },
    /// Any other status (injected failures, throttling's 429, 503).
    #[error("HTTP status {0}")]
    Status(u16),
}

/// An IMDS error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {kind}")]
pub struct AwsError {
    /// The HTTP status.
    pub status: u16,
    /// What went wrong.
    pub kind: AwsErrorKind,
}

impl AwsError {
    /// The error for `kind`, with its status.
    pub fn new(kind: AwsErrorKind) -> AwsError {
        let status = match &kind {
            AwsErrorKind::MissingTtl | AwsErrorKind::InvalidTtl(_) => 400,
            AwsErrorKind::Unauthorized | AwsErrorKind::MalformedToken => 401,
            AwsErrorKind::ForwardedFor => 403,
            AwsErrorKind::NotFound(_) => 404,
            AwsErrorKind::MethodNotAllowed { .. } => 405,
            AwsErrorKind::Status(s) => *s,
        };
        AwsError { status, kind }
    }

    /// A 401, as IMDS answers a missing (where required), invalid or expired token.
    pub fn unauthorized() -> AwsError {
        AwsError::new(AwsErrorKind::Unauthorized)
    }

    /// A 404 for `path`.
    pub fn not_found(path: &str) -> AwsError {
        AwsError::new(AwsErrorKind::NotFound(path.to_string()))
    }

    /// The body IMDS sends: [`error_page`] of the status.
    pub fn body(&self) -> String {
        error_page(self.status)
    }

    /// The body's content type ([`CONTENT_TYPE_HTML`]).
    pub fn content_type(&self) -> &'static str {
        CONTENT_TYPE_HTML
    }
}

/// The reason phrase IMDS writes in its error pages.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The error page IMDS answers with (`text/html`): an XHTML document whose title and
/// heading are `STATUS - Reason` (`404 - Not Found`), the shape AWS's user guide names
/// the errors by and EC2 sends.
pub fn error_page(status: u16) -> String {
    let title = format!("{status} - {}", reason_phrase(status));
    format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
<head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    )
}

/// A path read into decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsPath {
    /// Decoded segments (see [`AwsRequest::segments`]).
    pub segments: Vec<String>,
    /// The path ended in `/` after a segment.
    pub trailing_slash: bool,
}

/// Reads a path into decoded segments (see the module documentation); `None` when a
/// segment decodes to something holding `/`, `\` or NUL, or is not UTF-8.
pub fn parse_path(path: &str) -> Option<AwsPath> {
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in path.split('/') {
        let seg = decode_segment(raw)?;
        trailing_slash = false;
        match seg.as_str() {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => segments.push(seg),
        }
    }
    Some(AwsPath {
        trailing_slash: trailing_slash && !segments.is_empty(),
        segments,
    })
}

fn decode_segment(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    for piece in canon::pieces(raw, false) {
        match piece {
            canon::Piece::Raw(b) => out.push(b),
            canon::Piece::Escaped(b, _) => {
                if matches!(b, b'/' | b'\\' | 0) {
                    return None;
                }
                out.push(b);
            }
            canon::Piece::BadEscape(_) => out.push(b'%'),
        }
    }
    let s = String::from_utf8(out).ok()?;
    if s.contains(['\\', '\0']) {
        return None;
    }
    Some(s)
}

/// Classifies decoded segments; `None` for a path IMDS does not serve (404). The token
/// path gives `Token { ttl: 0 }`: the lifetime is the request's header, which [`validate`]
/// reads.
pub fn classify(segments: &[String]) -> Option<AwsKind> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let Some((version, rest)) = s.split_first() else {
        return Some(AwsKind::Versions);
    };
    if !VERSIONS.contains(version) {
        return None;
    }
    Some(match rest {
        [] => AwsKind::VersionRoot,
        ["api", "token"] if *version == "latest" => AwsKind::Token { ttl: 0 },
        ["user-data"] => AwsKind::UserData,
        ["meta-data", "iam", "info"] => AwsKind::IamInfo,
        ["meta-data", "iam", "security-credentials", role] => AwsKind::Credentials {
            role: role.to_string(),
        },
        [
            "meta-data",
            "identity-credentials",
            "ec2",
            "security-credentials",
            IDENTITY_CREDENTIALS_ROLE,
        ] => AwsKind::IdentityCredentials,
        ["meta-data", ..] => AwsKind::MetaData,
        ["dynamic", "instance-identity", "document"] => AwsKind::IdentityDocument,
        ["dynamic", ..] => AwsKind::Dynamic,
        _ => return None,
    })
}

/// Reads the session token header of a `GET`: `Ok(None)` without one, `Ok(Some)` with
/// exactly one non-empty value, 401 ([`AwsErrorKind::MalformedToken`]) when it is empty,
/// repeated or not visible ASCII.
pub fn request_token<K, V>(
    headers: impl IntoIterator<Item = (K, V)>,
) -> Result<Option<SessionToken>, AwsError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let mut found: Option<SessionToken> = None;
    let mut bad = false;
    for (name, value) in headers {
        if !name.as_ref().eq_ignore_ascii_case(TOKEN_HEADER) {
            continue;
        }
        let value = value.as_ref();
        match std::str::from_utf8(value) {
            Ok(v)
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) && found.is_none() =>
            {
                found = Some(SessionToken::new(v))
            }
            _ => bad = true,
        }
    }
    if bad {
        return Err(AwsError::new(AwsErrorKind::MalformedToken));
    }
    Ok(found)
}

/// Reads a token lifetime header value: an integer in 1..=21600, ASCII digits only.
pub fn parse_ttl(value: &[u8]) -> Result<u32, AwsError> {
    let invalid = || {
        AwsError::new(AwsErrorKind::InvalidTtl(
            String::from_utf8_lossy(value).into(),
        ))
    };
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let n: u64 = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(invalid)?;
    if !(u64::from(TOKEN_TTL_MIN)..=u64::from(TOKEN_TTL_MAX)).contains(&n) {
        return Err(invalid());
    }
    Ok(n as u32)
}

/// Checks a request against IMDS's rules and reads what it asks for.
///
/// `method` and `path` are as received (or as the proxy canonicalised them: a canonical
/// path reads the same), `raw_query` is the query without `?` (IMDS reads none, so it
/// decides nothing), and `headers` any iterator of (name, value) pairs (an
/// `http::HeaderMap` works as is).
///
/// Checks, in order: the method (`GET` or `PUT`, else 405); the path (decoded segments,
/// else 404; a known path, else 404); `PUT` only on [`TOKEN_PATH`] and the token path by
/// `PUT` only (else 405); on the token `PUT`, no `X-Forwarded-For` (403), exactly one
/// lifetime header (400) valued 1..=21600 (400); on a `GET`, the token header read by
/// [`request_token`] (401 when empty or repeated). Whether a token is valid, or needed,
/// is not decided here.
pub fn validate<K, V>(
    method: &str,
    path: &str,
    raw_query: Option<&str>,
    headers: impl IntoIterator<Item = (K, V)>,
) -> Result<AwsRequest, AwsError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let _ = raw_query;
    let not_allowed = || {
        AwsError::new(AwsErrorKind::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
        })
    };
    let method = AwsMethod::parse(method).ok_or_else(not_allowed)?;
    let parsed = parse_path(path).ok_or_else(|| AwsError::not_found(path))?;
    let kind = classify(&parsed.segments).ok_or_else(|| AwsError::not_found(path))?;
    let is_token = matches!(kind, AwsKind::Token { .. });
    if is_token != (method == AwsMethod::Put) {
        return Err(not_allowed());
    }
    let headers: Vec<(K, V)> = headers.into_iter().collect();
    let (kind, token) = if is_token {
        let mut ttl = None;
        let mut ttl_headers = 0;
        for (name, value) in &headers {
            let name = name.as_ref();
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                return Err(AwsError::new(AwsErrorKind::ForwardedFor));
            }
            if name.eq_ignore_ascii_case(TOKEN_TTL_HEADER) {
                ttl_headers += 1;
                ttl = Some(value.as_ref());
            }
        }
        let ttl = match (ttl, ttl_headers) {
            (Some(v), 1) => parse_ttl(v)?,
            _ => return Err(AwsError::new(AwsErrorKind::MissingTtl)),
        };
        (AwsKind::Token { ttl }, None)
    } else {
        (kind, request_token(headers.iter().map(|(k, v)| (k, v)))?)
    };
    Ok(AwsRequest {
        method,
        kind,
        segments: parsed.segments,
        trailing_slash: parsed.trailing_slash,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn role_names_are_forwarded_as_written() {
        // Found in review: `a+b@c` was forwarded as `a%2Bb%40c`, which IMDS may not
        // decode back to the role the rules decided on.
        let r = get("/latest/meta-data/iam/security-credentials/a+b@c=d,e.f").unwrap();
        assert_eq!(
            r.canonical_path(),
            "/latest/meta-data/iam/security-credentials/a+b@c=d,e.f"
        );
        assert_eq!(get(&r.canonical_path()).unwrap().kind, r.kind);
        let r = get("/latest/meta-data/iam/security-credentials/a%20b").unwrap();
        assert_eq!(
            r.canonical_path(),
            "/latest/meta-data/iam/security-credentials/a%20b"
        );
    }

    fn get(path: &str) -> Result<AwsRequest, AwsError> {
        validate("GET", path, None, Vec::<(&str, &str)>::new())
    }

    fn put_token(headers: &[(&str, &str)]) -> Result<AwsRequest, AwsError> {
        validate("PUT", TOKEN_PATH, None, headers.iter().copied())
    }

    #[test]
    fn addresses_match_the_imds_module_and_urls() {
        assert_eq!(IMDS_URL, format!("http://{IMDS_ADDRESS_V4}"));
        assert_eq!(IMDS_URL_V6, format!("http://[{IMDS_ADDRESS_V6}]"));
        assert_eq!(
            POD_IDENTITY_URL,
            format!("http://{POD_IDENTITY_ADDRESS_V4}")
        );
        assert_eq!(
            POD_IDENTITY_URL_V6,
            format!("http://[{POD_IDENTITY_ADDRESS_V6}]")
        );
        assert_eq!(
            ECS_TASK_METADATA_URL,
            format!("http://{ECS_TASK_METADATA_ADDRESS}")
        );
        assert_eq!(IMDS_ADDRESS_V6.to_string(), "fd00:ec2::254");
        assert_eq!(POD_IDENTITY_ADDRESS_V6.to_string(), "fd00:ec2::23");
        assert_eq!(IMDS_PORT, imds::IMDS_PORT);
        // The cloud's targets are these addresses and ports.
        let aws: Vec<std::net::SocketAddr> = target::Cloud::Aws
            .targets()
            .iter()
            .map(|t| std::net::SocketAddr::new(t.ip, t.port))
            .collect();
        for (ip, port) in [
            (IpAddr::V4(IMDS_ADDRESS_V4), IMDS_PORT),
            (IpAddr::V6(IMDS_ADDRESS_V6), IMDS_PORT),
            (IpAddr::V4(POD_IDENTITY_ADDRESS_V4), POD_IDENTITY_PORT),
            (IpAddr::V6(POD_IDENTITY_ADDRESS_V6), POD_IDENTITY_PORT),
            (
                IpAddr::V4(ECS_TASK_METADATA_ADDRESS),
                ECS_TASK_METADATA_PORT,
            ),
        ] {
            assert!(
                aws.contains(&std::net::SocketAddr::new(ip, port)),
                "{ip} {port}"
            );
        }
    }

    #[test]
    fn paths_are_classified_case_sensitively() {
        let cases: &[(&str, Option<AwsKind>)] = &[
            ("/", Some(AwsKind::Versions)),
            ("/latest/", Some(AwsKind::VersionRoot)),
            ("/latest", Some(AwsKind::VersionRoot)),
            ("/2016-09-02/", Some(AwsKind::VersionRoot)),
            ("/latest/meta-data/", Some(AwsKind::MetaData)),
            (
                "/latest/meta-data/placement/region",
                Some(AwsKind::MetaData),
            ),
            ("/latest/meta-data/iam/", Some(AwsKind::MetaData)),
            (
                "/latest/meta-data/iam/security-credentials/",
                Some(AwsKind::MetaData),
            ),
            ("/latest/meta-data/iam/info", Some(AwsKind::IamInfo)),
            (
                "/latest/meta-data/iam/security-credentials/node-role",
                Some(AwsKind::Credentials {
                    role: "node-role".into(),
                }),
            ),
            (
                "/2016-09-02/meta-data/iam/security-credentials/Node-Role/",
                Some(AwsKind::Credentials {
                    role: "Node-Role".into(),
                }),
            ),
            (
                "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
                Some(AwsKind::IdentityCredentials),
            ),
            (
                "/latest/meta-data/identity-credentials/ec2/info",
                Some(AwsKind::MetaData),
            ),
            (
                "/latest/dynamic/instance-identity/document",
                Some(AwsKind::IdentityDocument),
            ),
            (
                "/latest/dynamic/instance-identity/signature",
                Some(AwsKind::Dynamic),
            ),
            ("/latest/dynamic/", Some(AwsKind::Dynamic)),
            ("/latest/user-data", Some(AwsKind::UserData)),
            ("/latest/user-data/", Some(AwsKind::UserData)),
            ("/1.0/user-data", Some(AwsKind::UserData)),
            // Case-sensitive: neither the version nor the category is folded.
            ("/latest/Meta-Data/", None),
            ("/LATEST/meta-data/", None),
            ("/latest/User-Data", None),
            ("/latest/meta-data/IAM/info", Some(AwsKind::MetaData)),
            ("/2099-01-01/meta-data/", None),
            ("/latest/unknown", None),
            ("/metadata/instance", None),
        ];
        for (path, want) in cases {
            let got = get(path);
            match want {
                Some(kind) => assert_eq!(&got.expect(path).kind, kind, "{path}"),
                None => assert_eq!(got.expect_err(path).status, 404, "{path}"),
            }
        }
    }

    #[test]
    fn spellings_of_a_secret_are_the_same_secret() {
        let role = AwsKind::Credentials { role: "r".into() };
        for path in [
            "/latest/meta-data/iam/security-credentials/r",
            "/latest//meta-data/iam/security-credentials/r",
            "/latest/meta-data/./iam/security-credentials/r",
            "/latest/meta-data/x/../iam/security-credentials/r",
            "/latest/%6Deta-data/iam/security%2Dcredentials/%72",
            "/latest/meta-data/iam/security-credentials/r/",
        ] {
            let r = get(path).expect(path);
            assert_eq!(r.kind, role, "{path}");
            assert_eq!(secret_kind(&r), Some(SecretKind::RoleCredentials), "{path}");
        }
        // An encoded slash, backslash or NUL never splits or joins segments.
        for path in [
            "/latest/meta-data/iam%2Fsecurity-credentials/r",
            "/latest/meta-data/iam/security-credentials%2Fr",
            "/latest/meta-data/iam/security-credentials/r%5C",
            "/latest/meta-data/iam/security-credentials/r%00",
            "/latest/meta-data/iam/security-credentials/%FF",
        ] {
            assert_eq!(get(path).expect_err(path).status, 404, "{path}");
        }
    }

    #[test]
    fn canonical_paths_read_back_to_the_same_request() {
        for path in [
            "/",
            "/latest/",
            "/latest/meta-data/iam/security-credentials/",
            "/latest//meta-data/./placement/region",
            "/latest/meta-data/iam/security-credentials/a%20b",
            "/latest/meta-data/tags/instance/Name~x",
        ] {
            let r = get(path).unwrap();
            let again = get(&r.canonical_path()).unwrap();
            assert_eq!(again, r, "{path} -> {}", r.canonical_path());
        }
        assert_eq!(
            get("/latest//meta-data/./iam/").unwrap().canonical_path(),
            "/latest/meta-data/iam/"
        );
        assert_eq!(
            get("/latest/user-data").unwrap().canonical_path(),
            "/latest/user-data"
        );
    }

    #[test]
    fn token_put_rules() {
        let ok = put_token(&[(TOKEN_TTL_HEADER, "21600")]).unwrap();
        assert_eq!(ok.kind, AwsKind::Token { ttl: 21600 });
        assert_eq!(ok.method, AwsMethod::Put);
        assert_eq!(secret_kind(&ok), Some(SecretKind::SessionToken));
        assert_eq!(
            put_token(&[("x-AWS-ec2-metadata-token-ttl-seconds", "1")])
                .unwrap()
                .kind,
            AwsKind::Token { ttl: 1 }
        );
        for (headers, status) in [
            (vec![], 400),
            (vec![(TOKEN_TTL_HEADER, "0")], 400),
            (vec![(TOKEN_TTL_HEADER, "21601")], 400),
            (vec![(TOKEN_TTL_HEADER, "")], 400),
            (vec![(TOKEN_TTL_HEADER, "-5")], 400),
            (vec![(TOKEN_TTL_HEADER, " 60")], 400),
            (vec![(TOKEN_TTL_HEADER, "60s")], 400),
            (vec![(TOKEN_TTL_HEADER, "99999999999999999999")], 400),
            (
                vec![(TOKEN_TTL_HEADER, "60"), (TOKEN_TTL_HEADER, "60")],
                400,
            ),
            (
                vec![(TOKEN_TTL_HEADER, "60"), ("X-Forwarded-For", "10.0.0.1")],
                403,
            ),
            (vec![("x-forwarded-for", "1.2.3.4")], 403),
        ] {
            let e = put_token(&headers).expect_err(&format!("{headers:?}"));
            assert_eq!(e.status, status, "{headers:?}");
            assert!(
                e.body().contains(&format!("<h1>{status} - ")),
                "{headers:?}"
            );
        }
        // X-Forwarded-For is refused on the token PUT only.
        let r = validate(
            "GET",
            "/latest/meta-data/",
            None,
            [("X-Forwarded-For", "1.2.3.4")],
        )
        .unwrap();
        assert_eq!(r.kind, AwsKind::MetaData);
    }

    #[test]
    fn methods() {
        let ttl = [(TOKEN_TTL_HEADER, "60")];
        for (method, path, status) in [
            ("GET", TOKEN_PATH, 405),
            ("POST", TOKEN_PATH, 405),
            ("put", TOKEN_PATH, 405),
            ("PUT", "/latest/meta-data/", 405),
            ("PUT", "/2016-09-02/api/token", 404),
            ("DELETE", "/latest/meta-data/", 405),
            ("HEAD", "/latest/meta-data/", 405),
            ("PUT", "/nowhere", 404),
        ] {
            let e = validate(method, path, None, ttl).expect_err(path);
            assert_eq!(e.status, status, "{method} {path}");
        }
    }

    #[test]
    fn session_tokens_are_read_not_judged_and_never_shown() {
        let r = validate(
            "GET",
            "/latest/meta-data/",
            None,
            [(TOKEN_HEADER, "AQAEAtok==")],
        )
        .unwrap();
        let token = r.token.clone().unwrap();
        assert_eq!(token.as_str(), "AQAEAtok==");
        let debug = format!("{r:?}");
        assert!(!debug.contains("AQAEAtok"), "{debug}");
        assert!(debug.contains(&token.fingerprint()), "{debug}");
        assert_eq!(get("/latest/meta-data/").unwrap().token, None);
        for headers in [
            vec![(TOKEN_HEADER, "")],
            vec![(TOKEN_HEADER, "a"), ("x-aws-ec2-metadata-token", "b")],
            vec![(TOKEN_HEADER, "a b")],
        ] {
            let e = validate("GET", "/latest/meta-data/", None, headers.clone()).expect_err("bad");
            assert_eq!(e.status, 401, "{headers:?}");
        }
        // A token header on the PUT is not the request's token.
        let r = put_token(&[(TOKEN_TTL_HEADER, "5"), (TOKEN_HEADER, "x")]).unwrap();
        assert_eq!(r.token, None);
    }

    #[test]
    fn secrets() {
        let kind = |p: &str| secret_kind(&get(p).unwrap());
        assert_eq!(kind("/latest/user-data"), Some(SecretKind::UserData));
        assert_eq!(
            kind("/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"),
            Some(SecretKind::IdentityCredentials)
        );
        for p in [
            "/latest/meta-data/iam/security-credentials/",
            "/latest/meta-data/iam/info",
            "/latest/dynamic/instance-identity/document",
            "/latest/meta-data/placement/region",
            "/",
        ] {
            assert_eq!(kind(p), None, "{p}");
        }
    }

    #[test]
    fn error_pages() {
        let page = error_page(404);
        assert!(page.starts_with("<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n"));
        assert!(page.contains("<title>404 - Not Found</title>"));
        assert!(page.contains("<h1>404 - Not Found</h1>"));
        assert_eq!(AwsError::unauthorized().status, 401);
        assert!(
            AwsError::unauthorized()
                .body()
                .contains("401 - Unauthorized")
        );
        assert_eq!(AwsError::new(AwsErrorKind::Status(503)).status, 503);
        assert_eq!(AwsError::not_found("/x").content_type(), CONTENT_TYPE_HTML);
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl(b"1").unwrap(), 1);
        assert_eq!(parse_ttl(b"021600").unwrap(), 21600);
        assert!(parse_ttl(b"+5").is_err());
        assert!(parse_ttl(b"4294967297").is_err());
    }
}
