//! Azure Instance Metadata Service (IMDS): the protocol's rules as pure functions.
//!
//! Everything here is sans-IO: callers hand in the method, the path, the raw query and
//! the headers of a request, and get back either a validated [`ImdsRequest`] or the
//! [`ImdsError`] that IMDS itself would answer (status code and JSON body). The
//! emulator answers with these; the filtering proxy decides with them.
//!
//! The rules, as the public documentation gives them (see
//! `docs/emulator.md` for which parts are inferred):
//!
//! - a request must carry `Metadata: true` (exactly the lower-case value) and must not
//!   carry `X-Forwarded-For`;
//! - only `GET` is allowed, except `POST` on scheduled events (and on the newer
//!   `identity/issuecredential` flow);
//! - `api-version` is required everywhere except `/metadata/versions`, and must be one
//!   of [`API_VERSIONS`]; without a valid one the answer is 400 with `newest-versions`;
//! - a query parameter given twice is rejected;
//! - in the instance document a leaf needs `format=text`;
//! - the token endpoint needs `resource` and takes at most one identity selector
//!   (`client_id`, `object_id`, `msi_res_id` or `mi_res_id`), none of them empty.
//!
//! Paths are compared after percent-decoding each segment, dropping empty segments
//! (`//`, a trailing `/`), resolving `.` and `..`, and ignoring ASCII case of the fixed
//! endpoint names; query parameter names are compared ignoring ASCII case. Both choices
//! make a filter at least as strict as IMDS (a filter that told `Client_ID` from
//! `client_id` could be bypassed).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value, json};

use crate::canon::{self, CanonicalTarget, percent_decode};

/// The address of Azure IMDS (and of AWS and GCP metadata services).
pub const IMDS_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The address of Azure WireServer (port 80), the host GA plugin (port 32526) and Azure
/// DNS (port 53).
pub const WIRESERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
/// The IPv6 address of AWS instance metadata on Nitro instances (`fd00:ec2::254`).
pub const AWS_IMDS_IPV6_ADDRESS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// The port of the WireServer host GA plugin (`/vmSettings`).
pub const HOST_GA_PLUGIN_PORT: u16 = 32526;
/// The port of IMDS (plain HTTP).
pub const IMDS_PORT: u16 = 80;
/// The port of WireServer (plain HTTP).
pub const WIRESERVER_PORT: u16 = 80;

/// IMDS's base URL, `http://` [`IMDS_ADDRESS`] (the default of the probe's endpoint and
/// the proxy's upstream; a string, for command-line defaults).
pub const IMDS_URL: &str = "http://169.254.169.254";
/// WireServer's base URL, `http://` [`WIRESERVER_ADDRESS`].
pub const WIRESERVER_URL: &str = "http://168.63.129.16";
/// The host GA plugin's base URL, `http://` [`WIRESERVER_ADDRESS`] `:` [`HOST_GA_PLUGIN_PORT`].
pub const HOST_GA_PLUGIN_URL: &str = "http://168.63.129.16:32526";

/// Whether `ip` is a cloud metadata address of any cloud (the address of a target of
/// [`crate::target::Cloud::targets`] for Azure, AWS or GCP: [`IMDS_ADDRESS`],
/// [`WIRESERVER_ADDRESS`], [`AWS_IMDS_IPV6_ADDRESS`], the EKS Pod Identity agent's
/// 169.254.170.23 and fd00:ec2::23, ECS task metadata's 169.254.170.2, GCP's
/// fd20:ce::254), also in its IPv4-mapped IPv6 form (`::ffff:169.254.169.254`, folded by
/// [`crate::target::canonical_ip`]).
pub fn is_metadata_address(ip: IpAddr) -> bool {
    let ip = crate::target::canonical_ip(ip);
    crate::target::Cloud::ALL
        .iter()
        .flat_map(|c| c.targets())
        .any(|t| t.ip == ip)
}

/// The api-versions IMDS documents, newest first.
pub const API_VERSIONS: &[&str] = &[
    "2025-04-07",
    "2024-07-17",
    "2024-03-15",
    "2023-11-15",
    "2023-07-01",
    "2021-12-13",
    "2021-11-15",
    "2021-11-01",
    "2021-10-01",
    "2021-08-01",
    "2021-05-01",
    "2021-03-01",
    "2021-02-01",
    "2021-01-01",
    "2020-12-01",
    "2020-10-01",
    "2020-09-01",
    "2020-07-15",
    "2020-06-01",
    "2019-11-01",
    "2019-08-15",
    "2019-08-01",
    "2019-06-04",
    "2019-06-01",
    "2019-04-30",
    "2019-03-11",
    "2019-02-01",
    "2018-10-01",
    "2018-04-02",
    "2018-02-01",
    "2017-12-01",
    "2017-10-01",
    "2017-08-01",
    "2017-04-02",
    "2017-03-01",
];

/// Versions the scheduled-events endpoint documents besides [`API_VERSIONS`].
pub const SCHEDULED_EVENTS_API_VERSIONS: &[&str] = &[
    "2020-07-01",
    "2019-08-01",
    "2019-04-01",
    "2019-01-01",
    "2017-11-01",
];

/// The three newest api-versions, as IMDS lists them in `newest-versions`.
pub fn newest_versions() -> &'static [&'static str] {
    &API_VERSIONS[..3]
}

/// Whether `version` is one of [`API_VERSIONS`].
pub fn is_known_api_version(version: &str) -> bool {
    API_VERSIONS.contains(&version)
}

/// Which IMDS API a request path names (`/metadata/instance`, `/metadata/identity/oauth2/token`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImdsApi {
    /// `/metadata/instance` and its sub-paths (the instance document).
    Instance,
    /// `/metadata/attested/document` (signed VM identity).
    AttestedDocument,
    /// `/metadata/identity/oauth2/token` (managed-identity access tokens).
    IdentityToken,
    /// `/metadata/identity/info` (the tenant id).
    IdentityInfo,
    /// `/metadata/identity/getPlatformMetadata` (newer managed-identity flow).
    IdentityPlatformMetadata,
    /// `/metadata/identity/issuecredential` (newer managed-identity flow, `POST`).
    IdentityIssueCredential,
    /// `/metadata/versions` (the supported api-versions; no api-version needed).
    Versions,
    /// `/metadata/scheduledevents` (`GET` events, `POST` to approve).
    ScheduledEvents,
    /// `/metadata/loadbalancer` (load-balancer frontend IPs and rules).
    LoadBalancer,
    /// Any other path.
    Unknown,
}

/// Which IMDS rate limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    /// Instance data and every other non-identity path: 5 requests/s.
    General,
    /// Managed-identity paths: 20 requests/s and 5 concurrent.
    Identity,
}

/// The shape of an endpoint's error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorStyle {
    /// `{"error": "<message>"}`, as the instance and other metadata endpoints answer.
    Metadata,
    /// `{"error": "<code>", "error_description": "<text>"}`, as the identity endpoints answer.
    Identity,
}

impl ImdsApi {
    /// Classifies a request path (query excluded); see [`route`] for the rules.
    pub fn classify(path: &str) -> ImdsApi {
        route(path).endpoint
    }

    /// A short stable name (`instance`, `identity-token`, ...), for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ImdsApi::Instance => "instance",
            ImdsApi::AttestedDocument => "attested-document",
            ImdsApi::IdentityToken => "identity-token",
            ImdsApi::IdentityInfo => "identity-info",
            ImdsApi::IdentityPlatformMetadata => "identity-platform-metadata",
            ImdsApi::IdentityIssueCredential => "identity-issue-credential",
            ImdsApi::Versions => "versions",
            ImdsApi::ScheduledEvents => "scheduled-events",
            ImdsApi::LoadBalancer => "loadbalancer",
            ImdsApi::Unknown => "unknown",
        }
    }

    /// The endpoint's canonical path (`/metadata/identity/oauth2/token`); `None` for
    /// [`ImdsApi::Unknown`].
    pub fn canonical_path(self) -> Option<&'static str> {
        Some(match self {
            ImdsApi::Instance => "/metadata/instance",
            ImdsApi::AttestedDocument => "/metadata/attested/document",
            ImdsApi::IdentityToken => "/metadata/identity/oauth2/token",
            ImdsApi::IdentityInfo => "/metadata/identity/info",
            ImdsApi::IdentityPlatformMetadata => "/metadata/identity/getPlatformMetadata",
            ImdsApi::IdentityIssueCredential => "/metadata/identity/issuecredential",
            ImdsApi::Versions => "/metadata/versions",
            ImdsApi::ScheduledEvents => "/metadata/scheduledevents",
            ImdsApi::LoadBalancer => "/metadata/loadbalancer",
            ImdsApi::Unknown => return None,
        })
    }

    /// Whether the endpoint belongs to managed identity (tokens and their metadata).
    pub fn is_identity(self) -> bool {
        matches!(
            self,
            ImdsApi::IdentityToken
                | ImdsApi::IdentityInfo
                | ImdsApi::IdentityPlatformMetadata
                | ImdsApi::IdentityIssueCredential
        )
    }

    /// The rate limit the endpoint counts against.
    pub fn rate_class(self) -> RateClass {
        if self.is_identity() {
            RateClass::Identity
        } else {
            RateClass::General
        }
    }

    /// The shape of the endpoint's error bodies.
    pub fn error_style(self) -> ErrorStyle {
        if self.is_identity() {
            ErrorStyle::Identity
        } else {
            ErrorStyle::Metadata
        }
    }

    /// Whether the endpoint accepts `method` (`GET`; `POST` on scheduled events and
    /// issuecredential).
    pub fn allows(self, method: Method) -> bool {
        match method {
            Method::Get => self != ImdsApi::IdentityIssueCredential,
            Method::Post => {
                matches!(
                    self,
                    ImdsApi::ScheduledEvents | ImdsApi::IdentityIssueCredential
                )
            }
        }
    }

    /// Whether a request needs `api-version` (all but [`ImdsApi::Versions`]).
    pub fn requires_api_version(self) -> bool {
        self != ImdsApi::Versions
    }

    /// The oldest api-version the endpoint documents, if it came after the first one.
    pub fn min_api_version(self) -> Option<&'static str> {
        match self {
            ImdsApi::AttestedDocument => Some("2018-10-01"),
            ImdsApi::IdentityToken | ImdsApi::IdentityInfo => Some("2018-02-01"),
            ImdsApi::ScheduledEvents => Some("2017-08-01"),
            ImdsApi::LoadBalancer => Some("2020-10-01"),
            _ => None,
        }
    }

    /// Whether `version` is accepted on this endpoint: a known version (scheduled events
    /// also know [`SCHEDULED_EVENTS_API_VERSIONS`]) no older than [`Self::min_api_version`].
    pub fn accepts_api_version(self, version: &str) -> bool {
        let known = is_known_api_version(version)
            || (self == ImdsApi::ScheduledEvents
                && SCHEDULED_EVENTS_API_VERSIONS.contains(&version));
        // Versions are ISO dates, so string order is date order.
        known && self.min_api_version().is_none_or(|min| version >= min)
    }
}

impl fmt::Display for ImdsApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP methods IMDS accepts anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST` (scheduled events, issuecredential).
    Post,
}

impl Method {
    /// Reads a method name; methods are case-sensitive in HTTP, so `get` is not `GET`.
    pub fn parse(method: &str) -> Option<Method> {
        match method {
            "GET" => Some(Method::Get),
            "POST" => Some(Method::Post),
            _ => None,
        }
    }

    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// A classified path: the endpoint and, for the instance document, the path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The endpoint.
    pub endpoint: ImdsApi,
    /// For [`ImdsApi::Instance`], the segments after `/metadata/instance`
    /// (`["compute", "vmId"]`); empty otherwise.
    pub instance_path: Vec<String>,
}

/// Splits a path into decoded segments: each segment is percent-decoded (so `%2F` stays
/// inside its segment), empty segments are dropped and `.`/`..` are resolved.
pub fn path_segments(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let seg = percent_decode(raw, false);
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    out
}

/// Classifies a path (the query excluded). Fixed endpoint names compare ignoring ASCII
/// case; the instance sub-path keeps its case (`vmId`).
pub fn route(path: &str) -> Route {
    let segments = path_segments(path);
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    let endpoint = match l.as_slice() {
        ["metadata", "instance", ..] => {
            return Route {
                endpoint: ImdsApi::Instance,
                instance_path: segments[2..].to_vec(),
            };
        }
        ["metadata", "attested", "document"] => ImdsApi::AttestedDocument,
        ["metadata", "identity", "oauth2", "token"] => ImdsApi::IdentityToken,
        ["metadata", "identity", "info"] => ImdsApi::IdentityInfo,
        ["metadata", "identity", "getplatformmetadata"] => ImdsApi::IdentityPlatformMetadata,
        ["metadata", "identity", "issuecredential"] => ImdsApi::IdentityIssueCredential,
        ["metadata", "versions"] => ImdsApi::Versions,
        ["metadata", "scheduledevents"] => ImdsApi::ScheduledEvents,
        ["metadata", "loadbalancer"] => ImdsApi::LoadBalancer,
        _ => ImdsApi::Unknown,
    };
    Route {
        endpoint,
        instance_path: Vec::new(),
    }
}

/// A decoded query string (`application/x-www-form-urlencoded`), in order, repeats kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query (without the `?`); empty pieces (`a=1&&b=2`) are skipped and a
    /// name without `=` has the empty value.
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect();
        Query { pairs }
    }

    /// A query of already decoded pairs (the canonical form's
    /// [`CanonicalTarget::params`]).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Query {
        Query { pairs }
    }

    /// The first value of `name` (compared ignoring ASCII case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name` when present and not empty.
    pub fn get_non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// The first name that occurs more than once (compared ignoring ASCII case).
    pub fn repeated(&self) -> Option<&str> {
        self.pairs.iter().enumerate().find_map(|(i, (k, _))| {
            self.pairs[..i]
                .iter()
                .any(|(p, _)| p.eq_ignore_ascii_case(k))
                .then_some(k.as_str())
        })
    }

    /// The decoded pairs, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }
}

/// The representation asked for with `format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// `format=json`, the default.
    #[default]
    Json,
    /// `format=text`: a leaf's value as plain text.
    Text,
}

/// How a token request names its managed identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentitySelector {
    /// `client_id`: the identity's application (client) id.
    ClientId(String),
    /// `object_id`: the identity's service-principal object id.
    ObjectId(String),
    /// `msi_res_id` (documented) or `mi_res_id` (MSAL, Azure SDKs): the identity's ARM
    /// resource id.
    ResourceId {
        /// The resource id, decoded.
        id: String,
        /// Which parameter carried it.
        param: ResourceIdParam,
    },
}

/// The parameter name that carried a resource-id selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceIdParam {
    /// `msi_res_id`.
    MsiResId,
    /// `mi_res_id`.
    MiResId,
}

/// The identity selector parameters of the token endpoint, in the order checked.
pub const IDENTITY_SELECTOR_PARAMS: &[&str] =
    &["client_id", "object_id", "msi_res_id", "mi_res_id"];

/// A validated token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `resource` (the token's audience), decoded.
    pub resource: String,
    /// The identity asked for; `None` means the VM's default identity.
    pub selector: Option<IdentitySelector>,
}

/// A request IMDS would accept, with what the endpoint needs to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsRequest {
    /// The endpoint.
    pub endpoint: ImdsApi,
    /// The method (`GET`, or `POST` where allowed).
    pub method: Method,
    /// For the instance document, the path inside it.
    pub instance_path: Vec<String>,
    /// The api-version (absent only on `/metadata/versions`).
    pub api_version: Option<String>,
    /// The format asked for (meaningful for the instance document).
    pub format: Format,
    /// The decoded query.
    pub query: Query,
    /// For the token endpoint, its parameters.
    pub token: Option<TokenRequest>,
}

/// What is wrong with a request, or why IMDS cannot answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImdsErrorKind {
    /// The request carries `X-Forwarded-For` (400).
    #[error("the request carries an X-Forwarded-For header")]
    ForwardedFor,
    /// `Metadata: true` is missing, has another value, or is repeated (400).
    #[error("required metadata header not specified")]
    MissingMetadataHeader,
    /// No such API (404).
    #[error("API isn't found: path {path}, method {method}")]
    UnknownPath {
        /// The request path as received.
        path: String,
        /// The request method as received.
        method: String,
    },
    /// The endpoint does not take this method (405).
    #[error("HTTP method {method} isn't allowed on {path}")]
    MethodNotAllowed {
        /// The request path as received.
        path: String,
        /// The request method as received.
        method: String,
    },
    /// A query parameter occurs twice (400).
    #[error("query parameter `{0}` is given more than once")]
    RepeatedParameter(String),
    /// `api-version` is missing (400, with `newest-versions`).
    #[error("api-version was not specified")]
    MissingApiVersion,
    /// `api-version` is not one the endpoint knows (400, with `newest-versions`).
    #[error("api-version `{0}` is invalid")]
    InvalidApiVersion(String),
    /// `format` is neither `json` nor `text` (400).
    #[error("format `{0}` is invalid")]
    InvalidFormat(String),
    /// A leaf of the instance document was asked for without `format=text` (400).
    #[error("a leaf value needs format=text")]
    LeafNeedsTextFormat,
    /// No such element in the instance document (404).
    #[error("no such element")]
    NotFound,
    /// The token request has no `resource` (400).
    #[error("the token request has no resource")]
    MissingResource,
    /// An identity selector parameter is present with an empty value (400).
    #[error("query parameter `{0}` is empty")]
    EmptyParameter(String),
    /// The token request names its identity more than once (400).
    #[error("more than one identity selector: {}", .0.join(", "))]
    MultipleIdentitySelectors(Vec<String>),
    /// The `resource` is not a URI nor an application id (400 `invalid_resource`).
    #[error("resource `{0}` is not a URI")]
    InvalidResource(String),
    /// The identity asked for is not on the VM, or the VM has none (400).
    #[error("identity not found")]
    IdentityNotFound,
    /// No identity was named and the VM has several user-assigned ones and no
    /// system-assigned one (400).
    #[error("several user-assigned identities and none named")]
    MultipleUserAssignedIdentities,
    /// A `POST` body could not be read (400).
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// Rate limit exceeded (429).
    #[error("too many requests")]
    Throttled,
    /// IMDS is being updated (410; retry within 70 s).
    #[error("IMDS is being updated")]
    Gone,
    /// Internal failure (500; for tokens, the token service failed).
    #[error("internal server error")]
    ServerError,
    /// Any other status (used for injected failures).
    #[error("HTTP status {0}")]
    Status(u16),
}

/// An IMDS error answer: what went wrong and on which endpoint (which decides the body's
/// shape).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{endpoint}: {kind}")]
pub struct ImdsError {
    /// The endpoint the request was for.
    pub endpoint: ImdsApi,
    /// What went wrong.
    pub kind: ImdsErrorKind,
}

const API_VERSION_MESSAGE: &str = "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds";

impl ImdsError {
    /// An error on `endpoint`.
    pub fn new(endpoint: ImdsApi, kind: ImdsErrorKind) -> ImdsError {
        ImdsError { endpoint, kind }
    }

    /// The error IMDS answers with `status` (410, 429, 500 or any other), for injected
    /// failures.
    pub fn for_status(endpoint: ImdsApi, status: u16) -> ImdsError {
        let kind = match status {
            410 => ImdsErrorKind::Gone,
            429 => ImdsErrorKind::Throttled,
            500 => ImdsErrorKind::ServerError,
            s => ImdsErrorKind::Status(s),
        };
        ImdsError { endpoint, kind }
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        use ImdsErrorKind as K;
        match &self.kind {
            K::UnknownPath { .. } | K::NotFound => 404,
            K::MethodNotAllowed { .. } => 405,
            K::Throttled => 429,
            K::Gone => 410,
            K::ServerError => 500,
            K::Status(s) => *s,
            _ => 400,
        }
    }

    /// The JSON body IMDS answers with: `{"error": ...}` on metadata endpoints,
    /// `{"error": code, "error_description": text}` on identity endpoints, and
    /// `{"error": ..., "newest-versions": [...]}` for a missing or bad api-version.
    pub fn body(&self) -> Value {
        use ImdsErrorKind as K;
        if matches!(self.kind, K::MissingApiVersion | K::InvalidApiVersion(_)) {
            return json!({ "error": API_VERSION_MESSAGE, "newest-versions": newest_versions() });
        }
        let (code, description, message): (&str, String, String) = match &self.kind {
            K::ForwardedFor => (
                "invalid_request",
                "Request contains the X-Forwarded-For header".into(),
                "Bad request. Request contains the X-Forwarded-For header".into(),
            ),
            K::MissingMetadataHeader => (
                "bad_request_102",
                "Required metadata header not specified".into(),
                "Bad request. Required metadata header not specified".into(),
            ),
            K::UnknownPath { path, method } => {
                let m = format!("API isn't found: Path = \"{path}\", Method = \"{method}\"");
                ("not_found", m.clone(), m)
            }
            K::MethodNotAllowed { path, method } => {
                let m = format!("Http method isn't allowed: Path = \"{path}\", Method = \"{method}\"");
                ("method_not_allowed", m.clone(), m)
            }
            K::RepeatedParameter(name) => (
                "invalid_request",
                format!("Query parameter '{name}' is specified more than once"),
                format!("Bad request. Query parameter '{name}' is specified more than once"),
            ),
            K::MissingApiVersion | K::InvalidApiVersion(_) => unreachable!("handled above"),
            K::InvalidFormat(f) => (
                "invalid_request",
                format!("Format '{f}' is not supported"),
                format!(
                    "Bad request. format '{f}' is invalid. For more information refer to aka.ms/azureimds"
                ),
            ),
            K::LeafNeedsTextFormat => (
                "invalid_request",
                "Leaf values need format=text".into(),
                "Bad request. Querying a leaf node requires format=text. For more information refer to aka.ms/azureimds".into(),
            ),
            K::NotFound => ("not_found", "Not found".into(), "Not found".into()),
            K::MissingResource => (
                "invalid_request",
                "Required audience parameter not specified".into(),
                "Bad request. Required audience parameter not specified".into(),
            ),
            K::EmptyParameter(name) => (
                "invalid_request",
                format!("Query parameter '{name}' has an empty value"),
                format!("Bad request. Query parameter '{name}' has an empty value"),
            ),
            K::MultipleIdentitySelectors(_) => (
                "invalid_request",
                "Only one of client_id, object_id, msi_res_id or mi_res_id may be specified".into(),
                "Bad request. Only one of client_id, object_id, msi_res_id or mi_res_id may be specified".into(),
            ),
            K::InvalidResource(r) => (
                "invalid_resource",
                format!(
                    "AADSTS500011: The resource principal named {r} was not found in the tenant. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
                format!("Bad request. The resource principal named {r} was not found"),
            ),
            K::IdentityNotFound => {
                ("invalid_request", "Identity not found".into(), "Identity not found".into())
            }
            K::MultipleUserAssignedIdentities => (
                "invalid_request",
                "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request".into(),
                "Multiple user assigned identities exist".into(),
            ),
            K::InvalidBody(why) => (
                "invalid_request",
                format!("Invalid request body: {why}"),
                format!("Bad request. Invalid request body: {why}"),
            ),
            K::Throttled => (
                "too_many_requests",
                "Too many requests".into(),
                "Too many requests".into(),
            ),
            K::Gone => (
                "service_unavailable",
                "IMDS is being updated, retry later".into(),
                "Gone. IMDS is being updated, retry later".into(),
            ),
            K::ServerError => (
                "unknown",
                "Failed to retrieve token from the Active directory. For details see logs in C:\\User\\Data\\ManagedIdentity".into(),
                "Internal server error".into(),
            ),
            K::Status(s) => (
                "server_error",
                format!("Request failed with status {s}"),
                format!("Request failed with status {s}"),
            ),
        };
        match self.endpoint.error_style() {
            ErrorStyle::Identity => json!({ "error": code, "error_description": description }),
            ErrorStyle::Metadata => json!({ "error": message }),
        }
    }

    /// [`Self::body`] as compact JSON text.
    pub fn body_string(&self) -> String {
        self.body().to_string()
    }
}

/// Checks a request against IMDS's rules and reads what its endpoint needs.
///
/// `method` and `path` are as received, `query` is the raw query without `?`, and
/// `headers` any iterator of (name, value) pairs (an `http::HeaderMap` works as is).
///
/// Checks, in order: `X-Forwarded-For` absent; exactly one `Metadata` header, valued
/// `true`; a known path (else 404); the method (else 405); no repeated query parameter;
/// `api-version` (except on `/metadata/versions`); `format` (`json` or `text`); for
/// the token endpoint, `resource` present and a URI or application id, no empty
/// identity selector and at most one. Looking up the instance document (404, leaf without
/// `format=text`) is [`lookup`]'s and [`render_instance`]'s job.
pub fn validate<K, V>(
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: impl IntoIterator<Item = (K, V)>,
) -> Result<ImdsRequest, ImdsError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    check(method, path, route(path), Query::parse(query), headers)
}

/// [`validate`] for a request target the proxy has canonicalised
/// ([`crate::canon::Canonicalizer::canonicalize`]): its endpoint, instance path and
/// decoded parameters are taken as they are, so nothing is decoded a second time.
pub fn validate_canonical<K, V>(
    method: &str,
    target: &CanonicalTarget,
    headers: impl IntoIterator<Item = (K, V)>,
) -> Result<ImdsRequest, ImdsError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let route = Route {
        endpoint: target.endpoint,
        instance_path: target.instance_path.clone(),
    };
    let query = Query::from_pairs(target.params.clone());
    check(method, &target.path, route, query, headers)
}

fn check<K, V>(
    method: &str,
    path: &str,
    route: Route,
    query: Query,
    headers: impl IntoIterator<Item = (K, V)>,
) -> Result<ImdsRequest, ImdsError>
where
    K: AsRef<str>,
    V: AsRef<[u8]>,
{
    let Route {
        endpoint,
        instance_path,
    } = route;
    let err = |kind| Err(ImdsError::new(endpoint, kind));

    let mut metadata_values = 0usize;
    let mut metadata_ok = true;
    let mut forwarded = false;
    for (name, value) in headers {
        let name = name.as_ref();
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded = true;
        } else if name.eq_ignore_ascii_case("metadata") {
            metadata_values += 1;
            metadata_ok &= value.as_ref() == b"true";
        }
    }
    if forwarded {
        return err(ImdsErrorKind::ForwardedFor);
    }
    if metadata_values != 1 || !metadata_ok {
        return err(ImdsErrorKind::MissingMetadataHeader);
    }
    if endpoint == ImdsApi::Unknown {
        return err(ImdsErrorKind::UnknownPath {
            path: path.to_string(),
            method: method.to_string(),
        });
    }
    let Some(m) = Method::parse(method).filter(|m| endpoint.allows(*m)) else {
        return err(ImdsErrorKind::MethodNotAllowed {
            path: path.to_string(),
            method: method.to_string(),
        });
    };

    if let Some(name) = query.repeated() {
        return err(ImdsErrorKind::RepeatedParameter(name.to_string()));
    }

    let api_version = query.get("api-version").map(str::to_string);
    if endpoint.requires_api_version() {
        match api_version.as_deref() {
            None | Some("") => return err(ImdsErrorKind::MissingApiVersion),
            Some(v) if !endpoint.accepts_api_version(v) => {
                return err(ImdsErrorKind::InvalidApiVersion(v.to_string()));
            }
            Some(_) => {}
        }
    }

    let format = match query.get("format") {
        None => Format::Json,
        Some(f) if f.eq_ignore_ascii_case("json") => Format::Json,
        Some(f) if f.eq_ignore_ascii_case("text") => Format::Text,
        Some(f) if endpoint == ImdsApi::Instance => {
            return err(ImdsErrorKind::InvalidFormat(f.to_string()));
        }
        Some(_) => Format::Json,
    };

    let token = if endpoint == ImdsApi::IdentityToken {
        let Some(resource) = query.get_non_empty("resource") else {
            return err(ImdsErrorKind::MissingResource);
        };
        // An empty selector (`client_id=K&mi_res_id=`) is refused rather than read as
        // absent: a reader that took it for a selector would see two.
        if let Some(p) = IDENTITY_SELECTOR_PARAMS
            .iter()
            .find(|p| query.get(p).is_some_and(str::is_empty))
        {
            return err(ImdsErrorKind::EmptyParameter(p.to_string()));
        }
        let given: Vec<&str> = IDENTITY_SELECTOR_PARAMS
            .iter()
            .copied()
            .filter(|p| query.get_non_empty(p).is_some())
            .collect();
        if given.len() > 1 {
            return err(ImdsErrorKind::MultipleIdentitySelectors(
                given.iter().map(|s| s.to_string()).collect(),
            ));
        }
        if !is_valid_resource(resource) {
            return err(ImdsErrorKind::InvalidResource(resource.to_string()));
        }
        let selector = given.first().map(|p| {
            let v = query.get_non_empty(p).unwrap_or_default().to_string();
            match *p {
                "client_id" => IdentitySelector::ClientId(v),
                "object_id" => IdentitySelector::ObjectId(v),
                "msi_res_id" => IdentitySelector::ResourceId {
                    id: v,
                    param: ResourceIdParam::MsiResId,
                },
                _ => IdentitySelector::ResourceId {
                    id: v,
                    param: ResourceIdParam::MiResId,
                },
            }
        });
        Some(TokenRequest {
            resource: resource.to_string(),
            selector,
        })
    } else {
        None
    };

    Ok(ImdsRequest {
        endpoint,
        method: m,
        instance_path,
        api_version,
        format,
        query,
        token,
    })
}

impl ImdsRequest {
    /// The request target to send upstream: the canonical path and only the parameters
    /// the request was validated and decided on, in a fixed order, values encoded by
    /// the canonicaliser's rules. Everything else the client sent (unknown parameters,
    /// `format` where it means nothing, `api-version` on `/metadata/versions`) stays
    /// behind.
    ///
    /// | endpoint | parameters |
    /// |---|---|
    /// | token | `resource`, `api-version`, the one identity selector (`client_id`, `object_id`, `msi_res_id` or `mi_res_id`, as sent) |
    /// | instance | `api-version`, `format` (when given, lower-case) |
    /// | attested document | `api-version`, `nonce` (when given) |
    /// | versions | none |
    /// | every other endpoint | `api-version` |
    pub fn upstream_target(&self) -> String {
        let mut t = String::with_capacity(128);
        t.push_str(self.endpoint.canonical_path().unwrap_or("/"));
        for seg in &self.instance_path {
            t.push('/');
            t.push_str(seg);
        }
        let mut first = true;
        let mut param = |name: &str, value: &str| {
            t.push(if first { '?' } else { '&' });
            first = false;
            t.push_str(name);
            t.push('=');
            canon::encode_value(value, &mut t);
        };
        let version = |p: &mut dyn FnMut(&str, &str)| {
            if let Some(v) = &self.api_version {
                p("api-version", v);
            }
        };
        match self.endpoint {
            ImdsApi::Versions | ImdsApi::Unknown => {}
            ImdsApi::IdentityToken => {
                if let Some(tok) = &self.token {
                    param("resource", &tok.resource);
                    version(&mut param);
                    match &tok.selector {
                        None => {}
                        Some(IdentitySelector::ClientId(v)) => param("client_id", v),
                        Some(IdentitySelector::ObjectId(v)) => param("object_id", v),
                        Some(IdentitySelector::ResourceId { id, param: which }) => param(
                            match which {
                                ResourceIdParam::MsiResId => "msi_res_id",
                                ResourceIdParam::MiResId => "mi_res_id",
                            },
                            id,
                        ),
                    }
                } else {
                    version(&mut param);
                }
            }
            ImdsApi::Instance => {
                version(&mut param);
                if self.query.get("format").is_some() {
                    param(
                        "format",
                        match self.format {
                            Format::Json => "json",
                            Format::Text => "text",
                        },
                    );
                }
            }
            ImdsApi::AttestedDocument => {
                version(&mut param);
                if let Some(nonce) = self.query.get("nonce") {
                    param("nonce", nonce);
                }
            }
            _ => version(&mut param),
        }
        t
    }
}

/// The most an upstream error's `error` may hold (bytes).
pub const MAX_ERROR_CODE: usize = 256;
/// The most an upstream error's `error_description` may hold (bytes; Entra ID's
/// descriptions with trace and correlation ids stay well under it).
pub const MAX_ERROR_DESCRIPTION: usize = 2048;

/// An upstream error answer in one of IMDS's documented shapes, re-written with only
/// the documented fields; `None` when it is not one (the proxy then answers its own
/// 502 instead of passing it on).
///
/// - the status is 4xx or 5xx;
/// - the body is a JSON object;
/// - identity endpoints ([`ErrorStyle::Identity`]): `error`, a code of letters, digits
///   and `_` (at most [`MAX_ERROR_CODE`] bytes), and `error_description`, a string of
///   at most [`MAX_ERROR_DESCRIPTION`] bytes: `{"error", "error_description"}`;
/// - other endpoints ([`ErrorStyle::Metadata`]): `error`, a string of at most
///   [`MAX_ERROR_DESCRIPTION`] bytes, and, when present, `newest-versions`, a list of
///   at most 8 `YYYY-MM-DD` versions: `{"error"[, "newest-versions"]}`.
///
/// Other fields (Entra ID adds `error_codes`, `trace_id`, ...; anything an upstream
/// could echo) are dropped; a string holding a control character fails the shape.
pub fn upstream_error_body(endpoint: ImdsApi, status: u16, body: &[u8]) -> Option<String> {
    if !(400..=599).contains(&status) {
        return None;
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let text = |key: &str, max: usize| {
        map.get(key).and_then(Value::as_str).filter(|v| {
            v.len() <= max && !v.chars().any(|c| c.is_control() && c != '\n' && c != '\r')
        })
    };
    let shaped = match endpoint.error_style() {
        ErrorStyle::Identity => {
            let code = text("error", MAX_ERROR_CODE).filter(|c| {
                !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })?;
            let description = text("error_description", MAX_ERROR_DESCRIPTION)?;
            json!({ "error": code, "error_description": description })
        }
        ErrorStyle::Metadata => {
            let message = text("error", MAX_ERROR_DESCRIPTION)?;
            match map.get("newest-versions") {
                None => json!({ "error": message }),
                Some(Value::Array(versions))
                    if versions.len() <= 8
                        && versions
                            .iter()
                            .all(|v| v.as_str().is_some_and(is_version_shaped)) =>
                {
                    json!({ "error": message, "newest-versions": versions })
                }
                Some(_) => return None,
            }
        }
    };
    Some(shaped.to_string())
}

/// `YYYY-MM-DD` digits (an api-version IMDS may know before this list does).
fn is_version_shaped(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Whether a token `resource` is acceptable: an absolute URI (`scheme:rest`, e.g.
/// `https://management.azure.com/` or `api://app`) or an application id (a GUID).
pub fn is_valid_resource(resource: &str) -> bool {
    if is_guid(resource) {
        return true;
    }
    if resource
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let Some((scheme, rest)) = resource.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
}

/// Whether `s` is a GUID in its usual text form (`8-4-4-4-12` hex digits).
pub fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The ids of one managed identity, for [`select_identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityIds<'a> {
    /// Application (client) id.
    pub client_id: &'a str,
    /// Service-principal object id.
    pub object_id: &'a str,
    /// ARM resource id (`/subscriptions/.../userAssignedIdentities/name`); for a
    /// system-assigned identity, the VM's resource id.
    pub resource_id: &'a str,
}

/// Which identity a token request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectedIdentity {
    /// The system-assigned identity.
    System,
    /// The user-assigned identity at this index.
    User(usize),
}

/// Picks the identity a token request gets, as IMDS does: a selector must match an
/// identity of the VM (ids compare ignoring ASCII case, as GUIDs and ARM ids do), else
/// `IdentityNotFound`; without a selector, the system-assigned identity, else the only
/// user-assigned one, else `MultipleUserAssignedIdentities` (several) or
/// `IdentityNotFound` (none).
pub fn select_identity(
    selector: Option<&IdentitySelector>,
    system: Option<IdentityIds<'_>>,
    user: &[IdentityIds<'_>],
) -> Result<SelectedIdentity, ImdsErrorKind> {
    let Some(selector) = selector else {
        return match (system, user.len()) {
            (Some(_), _) => Ok(SelectedIdentity::System),
            (None, 1) => Ok(SelectedIdentity::User(0)),
            (None, 0) => Err(ImdsErrorKind::IdentityNotFound),
            (None, _) => Err(ImdsErrorKind::MultipleUserAssignedIdentities),
        };
    };
    let matches = |ids: &IdentityIds<'_>| match selector {
        IdentitySelector::ClientId(v) => ids.client_id.eq_ignore_ascii_case(v),
        IdentitySelector::ObjectId(v) => ids.object_id.eq_ignore_ascii_case(v),
        IdentitySelector::ResourceId { id, .. } => ids
            .resource_id
            .trim_end_matches('/')
            .eq_ignore_ascii_case(id.trim_end_matches('/')),
    };
    if let Some(i) = user.iter().position(matches) {
        return Ok(SelectedIdentity::User(i));
    }
    // A system-assigned identity is reachable by its client or object id, not by the
    // VM's resource id.
    if let Some(sys) = system
        && !matches!(selector, IdentitySelector::ResourceId { .. })
        && matches(&sys)
    {
        return Ok(SelectedIdentity::System);
    }
    Err(ImdsErrorKind::IdentityNotFound)
}

/// Finds the element at `path` in an instance document; array elements are addressed by
/// index (`network/interface/0/ipv4/ipAddress/0/privateIpAddress`).
pub fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |node, seg| match node {
        Value::Object(map) => map.get(seg.as_str()),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// An answer body and its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `application/json; charset=utf-8` or `text/plain; charset=utf-8`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// JSON content type as IMDS sends it.
pub const CONTENT_TYPE_JSON: &str = "application/json; charset=utf-8";
/// Text content type as IMDS sends it.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// Answers an instance-document request: the element at `path` in `format`.
///
/// JSON: objects and arrays as JSON; a leaf is refused (400) unless `format=text`.
/// Text: a leaf's value as is (`tags` reads `k:v;k:v`); an object or array lists its
/// children one a line, containers with a trailing `/` (inferred from IMDS's text
/// listing). A missing element is 404.
pub fn render_instance(
    doc: &Value,
    path: &[String],
    format: Format,
) -> Result<Rendered, ImdsError> {
    let err = |kind| Err(ImdsError::new(ImdsApi::Instance, kind));
    let Some(node) = lookup(doc, path) else {
        return err(ImdsErrorKind::NotFound);
    };
    let container = |v: &Value| matches!(v, Value::Object(_) | Value::Array(_));
    match format {
        Format::Json if container(node) => Ok(Rendered {
            content_type: CONTENT_TYPE_JSON,
            body: node.to_string(),
        }),
        Format::Json => err(ImdsErrorKind::LeafNeedsTextFormat),
        Format::Text => {
            let body = match node {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| {
                        if container(v) {
                            format!("{k}/")
                        } else {
                            k.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if container(v) {
                            format!("{i}/")
                        } else {
                            i.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                other => other.to_string(),
            };
            Ok(Rendered {
                content_type: CONTENT_TYPE_TEXT,
                body,
            })
        }
    }
}

/// Tags in IMDS's text form: `key:value;key:value`, in the order given.
pub fn tags_text<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    tags.into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Reads IMDS's tag text (`key:value;key:value`); a tag without `:` has the empty
/// value. Values may contain `:` (only the first one splits).
pub fn parse_tags_text(text: &str) -> Vec<(String, String)> {
    text.split(';')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (k, v) = t.split_once(':').unwrap_or((t, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Makes every JSON primitive a string, as IMDS sends them: numbers and booleans
/// become their text, `null` the empty string; objects and arrays are walked.
pub fn stringify_primitives(value: Value) -> Value {
    match value {
        Value::Null => Value::String(String::new()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Number(n) => Value::String(n.to_string()),
        Value::String(s) => Value::String(s),
        Value::Array(items) => Value::Array(items.into_iter().map(stringify_primitives).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, stringify_primitives(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}

/// Reads a scheduled-events approval body, `{"StartRequests": [{"EventId": "..."}]}`,
/// into the event ids.
pub fn parse_start_requests(body: &[u8]) -> Result<Vec<String>, ImdsError> {
    let bad =
        |why: String| ImdsError::new(ImdsApi::ScheduledEvents, ImdsErrorKind::InvalidBody(why));
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let requests = value
        .get("StartRequests")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("StartRequests is missing or not a list".into()))?;
    requests
        .iter()
        .map(|r| {
            r.get("EventId")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad("a start request has no EventId".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_the_addresses() {
        assert_eq!(IMDS_URL, format!("http://{IMDS_ADDRESS}"));
        assert_eq!(IMDS_PORT, 80, "IMDS_URL names no port");
        assert_eq!(WIRESERVER_URL, format!("http://{WIRESERVER_ADDRESS}"));
        assert_eq!(WIRESERVER_PORT, 80, "WIRESERVER_URL names no port");
        assert_eq!(
            HOST_GA_PLUGIN_URL,
            format!("http://{WIRESERVER_ADDRESS}:{HOST_GA_PLUGIN_PORT}")
        );
    }

    fn ok_headers() -> Vec<(&'static str, &'static str)> {
        vec![("Metadata", "true")]
    }

    fn check(method: &str, path: &str, query: &str) -> Result<ImdsRequest, ImdsError> {
        validate(method, path, Some(query), ok_headers())
    }

    fn kind(r: Result<ImdsRequest, ImdsError>) -> ImdsErrorKind {
        r.expect_err("expected an error").kind
    }

    #[test]
    fn classifies_every_endpoint() {
        let cases = [
            ("/metadata/instance", ImdsApi::Instance),
            ("/metadata/instance/compute/vmId", ImdsApi::Instance),
            ("/metadata/attested/document", ImdsApi::AttestedDocument),
            ("/metadata/identity/oauth2/token", ImdsApi::IdentityToken),
            ("/metadata/identity/info", ImdsApi::IdentityInfo),
            (
                "/metadata/identity/getPlatformMetadata",
                ImdsApi::IdentityPlatformMetadata,
            ),
            (
                "/metadata/identity/issuecredential",
                ImdsApi::IdentityIssueCredential,
            ),
            ("/metadata/versions", ImdsApi::Versions),
            ("/metadata/scheduledevents", ImdsApi::ScheduledEvents),
            ("/metadata/loadbalancer", ImdsApi::LoadBalancer),
            ("/metadata/foo", ImdsApi::Unknown),
            ("/", ImdsApi::Unknown),
            ("/latest/meta-data/", ImdsApi::Unknown),
        ];
        for (path, want) in cases {
            assert_eq!(ImdsApi::classify(path), want, "{path}");
            if let Some(c) = want.canonical_path() {
                assert_eq!(ImdsApi::classify(c), want);
            }
        }
    }

    #[test]
    fn classification_normalises_like_a_server() {
        for path in [
            "/metadata/identity/oauth2/token/",
            "//metadata//identity/oauth2/token",
            "/METADATA/Identity/OAuth2/Token",
            "/metadata/identity/oauth2/%74oken",
            "/metadata/instance/../identity/./oauth2/token",
        ] {
            assert_eq!(ImdsApi::classify(path), ImdsApi::IdentityToken, "{path}");
        }
        // An encoded slash stays inside its segment.
        assert_eq!(
            ImdsApi::classify("/metadata/identity%2Foauth2/token"),
            ImdsApi::Unknown
        );
        assert_eq!(
            route("/metadata/instance/compute/vmId/").instance_path,
            vec!["compute".to_string(), "vmId".to_string()]
        );
    }

    #[test]
    fn identity_endpoints_and_rate_classes() {
        assert!(ImdsApi::IdentityToken.is_identity());
        assert!(ImdsApi::IdentityIssueCredential.is_identity());
        assert!(!ImdsApi::Instance.is_identity());
        assert_eq!(ImdsApi::IdentityInfo.rate_class(), RateClass::Identity);
        assert_eq!(ImdsApi::Versions.rate_class(), RateClass::General);
    }

    #[test]
    fn metadata_addresses() {
        assert!(is_metadata_address("169.254.169.254".parse().unwrap()));
        assert!(is_metadata_address("168.63.129.16".parse().unwrap()));
        assert!(is_metadata_address(
            "::ffff:169.254.169.254".parse().unwrap()
        ));
        assert!(is_metadata_address("fd00:ec2::254".parse().unwrap()));
        for other_cloud in [
            "169.254.170.23",
            "::ffff:169.254.170.23",
            "fd00:ec2::23",
            "169.254.170.2",
            "fd20:ce::254",
            "::ffff:a83f:8110",
        ] {
            assert!(
                is_metadata_address(other_cloud.parse().unwrap()),
                "{other_cloud}"
            );
        }
        assert!(!is_metadata_address("169.254.20.10".parse().unwrap()));
        assert!(!is_metadata_address("::169.254.169.254".parse().unwrap()));
        assert!(!is_metadata_address("127.0.0.1".parse().unwrap()));
        assert!(!is_metadata_address("::1".parse().unwrap()));
    }

    #[test]
    fn versions() {
        assert_eq!(
            newest_versions(),
            &["2025-04-07", "2024-07-17", "2024-03-15"]
        );
        assert!(is_known_api_version("2018-02-01"));
        assert!(!is_known_api_version("2018-02-02"));
        assert!(ImdsApi::ScheduledEvents.accepts_api_version("2019-01-01"));
        assert!(!ImdsApi::Instance.accepts_api_version("2019-01-01"));
        assert!(ImdsApi::Instance.accepts_api_version("2017-03-01"));
        assert!(!ImdsApi::AttestedDocument.accepts_api_version("2018-04-02"));
        assert!(!ImdsApi::LoadBalancer.accepts_api_version("2020-09-01"));
        assert!(ImdsApi::LoadBalancer.accepts_api_version("2020-10-01"));
    }

    #[test]
    fn metadata_header_is_required_and_exact() {
        let path = "/metadata/instance";
        let q = Some("api-version=2021-02-01");
        let none: Vec<(&str, &str)> = vec![];
        assert_eq!(
            validate("GET", path, q, none).unwrap_err().kind,
            ImdsErrorKind::MissingMetadataHeader
        );
        for value in ["True", "TRUE", "1", "true ", ""] {
            let e = validate("GET", path, q, [("Metadata", value)]).unwrap_err();
            assert_eq!(e.kind, ImdsErrorKind::MissingMetadataHeader, "{value:?}");
        }
        let twice = [("Metadata", "true"), ("metadata", "true")];
        assert_eq!(
            validate("GET", path, q, twice).unwrap_err().kind,
            ImdsErrorKind::MissingMetadataHeader
        );
        let r = validate("GET", path, q, [("metadata", "true")]).expect("names ignore case");
        assert_eq!((r.endpoint, r.method), (ImdsApi::Instance, Method::Get));
        assert_eq!(r.api_version.as_deref(), Some("2021-02-01"));
    }

    #[test]
    fn missing_header_bodies_by_endpoint() {
        let none: Vec<(&str, &str)> = vec![];
        let e = validate(
            "GET",
            "/metadata/instance",
            Some("api-version=2021-02-01"),
            none.clone(),
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"error": "Bad request. Required metadata header not specified"})
        );
        let e = validate("GET", "/metadata/identity/oauth2/token", None, none).unwrap_err();
        assert_eq!(
            e.body(),
            json!({"error": "bad_request_102", "error_description": "Required metadata header not specified"})
        );
    }

    #[test]
    fn forwarded_for_is_rejected() {
        let h = [("Metadata", "true"), ("X-Forwarded-For", "10.0.0.1")];
        let e = validate(
            "GET",
            "/metadata/instance",
            Some("api-version=2021-02-01"),
            h,
        )
        .unwrap_err();
        assert_eq!(e.kind, ImdsErrorKind::ForwardedFor);
        assert_eq!(e.status(), 400);
        let h = [("Metadata", "true"), ("x-forwarded-for", "")];
        let e = validate("GET", "/metadata/identity/oauth2/token", None, h).unwrap_err();
        assert_eq!(e.kind, ImdsErrorKind::ForwardedFor);
        assert_eq!(e.body()["error"], "invalid_request");
    }

    #[test]
    fn api_version_required_and_checked() {
        let e = check("GET", "/metadata/instance", "").unwrap_err();
        assert_eq!(e.kind, ImdsErrorKind::MissingApiVersion);
        assert_eq!(e.status(), 400);
        let body = e.body();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("api-version is invalid or was not specified")
        );
        assert_eq!(body["newest-versions"], json!(newest_versions()));
        assert_eq!(
            kind(check("GET", "/metadata/instance", "api-version=")),
            ImdsErrorKind::MissingApiVersion
        );
        assert_eq!(
            kind(check("GET", "/metadata/instance", "api-version=2099-01-01")),
            ImdsErrorKind::InvalidApiVersion("2099-01-01".into())
        );
        // The identity endpoints answer the same documented body.
        let e = check(
            "GET",
            "/metadata/identity/oauth2/token",
            "resource=https://management.azure.com/",
        )
        .unwrap_err();
        assert_eq!(e.body()["newest-versions"], json!(newest_versions()));
        // Too old for the endpoint.
        assert!(matches!(
            kind(check(
                "GET",
                "/metadata/loadbalancer",
                "api-version=2020-09-01"
            )),
            ImdsErrorKind::InvalidApiVersion(_)
        ));
    }

    #[test]
    fn versions_needs_no_api_version() {
        let r = check("GET", "/metadata/versions", "").unwrap();
        assert_eq!(r.endpoint, ImdsApi::Versions);
        assert_eq!(r.api_version, None);
    }

    #[test]
    fn methods() {
        let e = check("POST", "/metadata/instance", "api-version=2021-02-01").unwrap_err();
        assert_eq!(e.status(), 405);
        assert_eq!(
            e.body(),
            json!({"error": "Http method isn't allowed: Path = \"/metadata/instance\", Method = \"POST\""})
        );
        assert_eq!(
            check("PUT", "/metadata/identity/oauth2/token", "")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            check("get", "/metadata/instance", "api-version=2021-02-01")
                .unwrap_err()
                .status(),
            405
        );
        let r = check(
            "POST",
            "/metadata/scheduledevents",
            "api-version=2020-07-01",
        )
        .unwrap();
        assert_eq!(r.method, Method::Post);
        let r = check("GET", "/metadata/scheduledevents", "api-version=2020-07-01").unwrap();
        assert_eq!(
            (r.endpoint, r.method),
            (ImdsApi::ScheduledEvents, Method::Get)
        );
        let r = check(
            "POST",
            "/metadata/identity/issuecredential",
            "api-version=2021-02-01",
        )
        .unwrap();
        assert_eq!(
            (r.endpoint, r.method),
            (ImdsApi::IdentityIssueCredential, Method::Post)
        );
        assert_eq!(
            check(
                "GET",
                "/metadata/identity/issuecredential",
                "api-version=2021-02-01"
            )
            .unwrap_err()
            .status(),
            405
        );
    }

    #[test]
    fn unknown_path_is_404() {
        let e = check("GET", "/metadata/nothing", "api-version=2021-02-01").unwrap_err();
        assert_eq!(e.status(), 404);
        assert_eq!(
            e.body(),
            json!({"error": "API isn't found: Path = \"/metadata/nothing\", Method = \"GET\""})
        );
    }

    #[test]
    fn repeated_parameter_is_rejected() {
        let e = check(
            "GET",
            "/metadata/instance",
            "api-version=2021-02-01&api-version=2021-02-01",
        )
        .unwrap_err();
        assert_eq!(
            e.kind,
            ImdsErrorKind::RepeatedParameter("api-version".into())
        );
        assert_eq!(e.status(), 400);
        let e = check(
            "GET",
            "/metadata/identity/oauth2/token",
            "api-version=2018-02-01&resource=https://a/&client_id=x&CLIENT_ID=y",
        )
        .unwrap_err();
        assert_eq!(e.kind, ImdsErrorKind::RepeatedParameter("CLIENT_ID".into()));
        assert_eq!(e.body()["error"], "invalid_request");
    }

    #[test]
    fn format_parameter() {
        assert_eq!(
            check("GET", "/metadata/instance", "api-version=2021-02-01")
                .unwrap()
                .format,
            Format::Json
        );
        assert_eq!(
            check(
                "GET",
                "/metadata/instance/compute/vmId",
                "api-version=2021-02-01&format=text"
            )
            .unwrap()
            .format,
            Format::Text
        );
        assert_eq!(
            kind(check(
                "GET",
                "/metadata/instance",
                "api-version=2021-02-01&format=xml"
            )),
            ImdsErrorKind::InvalidFormat("xml".into())
        );
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some(
            "resource=https%3A%2F%2Fmanagement.azure.com%2F&a=b+c&flag&&x=%zz",
        ));
        assert_eq!(q.get("resource"), Some("https://management.azure.com/"));
        assert_eq!(q.get("A"), Some("b c"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("x"), Some("%zz"));
        assert_eq!(q.repeated(), None);
        assert_eq!(Query::parse(None).pairs(), &[]);
    }

    #[test]
    fn token_request_rules() {
        let base = "api-version=2018-02-01";
        let path = "/metadata/identity/oauth2/token";
        let e = check("GET", path, base).unwrap_err();
        assert_eq!(e.kind, ImdsErrorKind::MissingResource);
        assert_eq!(
            e.body(),
            json!({"error": "invalid_request", "error_description": "Required audience parameter not specified"})
        );
        assert_eq!(
            kind(check("GET", path, &format!("{base}&resource="))),
            ImdsErrorKind::MissingResource
        );

        let e = check(
            "GET",
            path,
            &format!("{base}&resource=https://management.azure.com/&client_id=a&mi_res_id=b"),
        )
        .unwrap_err();
        assert_eq!(
            e.kind,
            ImdsErrorKind::MultipleIdentitySelectors(vec!["client_id".into(), "mi_res_id".into()])
        );
        assert_eq!(e.status(), 400);

        let e = check("GET", path, &format!("{base}&resource=management")).unwrap_err();
        assert_eq!(e.kind, ImdsErrorKind::InvalidResource("management".into()));
        assert_eq!(e.body()["error"], "invalid_resource");

        let r = check(
            "GET",
            path,
            &format!("{base}&resource=https%3A%2F%2Fvault.azure.net"),
        )
        .unwrap();
        let t = r.token.unwrap();
        assert_eq!(t.resource, "https://vault.azure.net");
        assert_eq!(t.selector, None);

        let sel = |q: &str| {
            check(
                "GET",
                path,
                &format!("{base}&resource=https://management.azure.com/&{q}"),
            )
            .unwrap()
            .token
            .unwrap()
            .selector
        };
        assert_eq!(
            sel("client_id=C"),
            Some(IdentitySelector::ClientId("C".into()))
        );
        assert_eq!(
            sel("object_id=O"),
            Some(IdentitySelector::ObjectId("O".into()))
        );
        assert_eq!(
            sel("msi_res_id=%2Fsubscriptions%2Fs"),
            Some(IdentitySelector::ResourceId {
                id: "/subscriptions/s".into(),
                param: ResourceIdParam::MsiResId
            })
        );
        assert_eq!(
            sel("mi_res_id=/r"),
            Some(IdentitySelector::ResourceId {
                id: "/r".into(),
                param: ResourceIdParam::MiResId
            })
        );
        // An empty selector is refused (it used to count as absent, and went upstream
        // next to the real one: `client_id=K&mi_res_id=`).
        assert_eq!(
            kind(check(
                "GET",
                "/metadata/identity/oauth2/token",
                "api-version=2018-02-01&resource=api://x&client_id=&object_id=O"
            )),
            ImdsErrorKind::EmptyParameter("client_id".into())
        );
    }

    #[test]
    fn resources() {
        for ok in [
            "https://management.azure.com/",
            "https://vault.azure.net",
            "api://my-app",
            "urn:x",
            "6dae42f8-4368-4678-94ff-3960e28e3630",
        ] {
            assert!(is_valid_resource(ok), "{ok}");
        }
        for bad in [
            "",
            "management.azure.com",
            "not a uri",
            "1http://x",
            "https:",
            "://x",
        ] {
            assert!(!is_valid_resource(bad), "{bad}");
        }
    }

    #[test]
    fn identity_selection() {
        let sys = IdentityIds {
            client_id: "sc",
            object_id: "so",
            resource_id: "/vm",
        };
        let a = IdentityIds {
            client_id: "AC",
            object_id: "ao",
            resource_id: "/ids/a",
        };
        let b = IdentityIds {
            client_id: "bc",
            object_id: "bo",
            resource_id: "/ids/b",
        };
        let users = [a, b];
        use IdentitySelector as S;
        assert_eq!(
            select_identity(None, Some(sys), &users),
            Ok(SelectedIdentity::System)
        );
        assert_eq!(
            select_identity(None, None, &users[..1]),
            Ok(SelectedIdentity::User(0))
        );
        assert_eq!(
            select_identity(None, None, &users),
            Err(ImdsErrorKind::MultipleUserAssignedIdentities)
        );
        assert_eq!(
            select_identity(None, None, &[]),
            Err(ImdsErrorKind::IdentityNotFound)
        );
        assert_eq!(
            select_identity(Some(&S::ClientId("ac".into())), None, &users),
            Ok(SelectedIdentity::User(0))
        );
        assert_eq!(
            select_identity(Some(&S::ObjectId("bo".into())), None, &users),
            Ok(SelectedIdentity::User(1))
        );
        let res = S::ResourceId {
            id: "/IDS/b/".into(),
            param: ResourceIdParam::MiResId,
        };
        assert_eq!(
            select_identity(Some(&res), None, &users),
            Ok(SelectedIdentity::User(1))
        );
        assert_eq!(
            select_identity(Some(&S::ClientId("sc".into())), Some(sys), &users),
            Ok(SelectedIdentity::System)
        );
        assert_eq!(
            select_identity(Some(&S::ClientId("zz".into())), Some(sys), &users),
            Err(ImdsErrorKind::IdentityNotFound)
        );
        let e = ImdsError::new(ImdsApi::IdentityToken, ImdsErrorKind::IdentityNotFound);
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.body(),
            json!({"error": "invalid_request", "error_description": "Identity not found"})
        );
    }

    fn doc() -> Value {
        json!({
            "compute": {
                "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
                "tags": "a:1;b:2",
                "tagsList": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}],
            },
            "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "10.224.0.4"}]}}]}
        })
    }

    fn p(s: &str) -> Vec<String> {
        path_segments(s)
    }

    #[test]
    fn instance_lookup_and_formats() {
        let d = doc();
        let r = render_instance(&d, &p("compute"), Format::Json).unwrap();
        assert_eq!(r.content_type, CONTENT_TYPE_JSON);
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap(),
            d["compute"]
        );

        let e = render_instance(&d, &p("compute/vmId"), Format::Json).unwrap_err();
        assert_eq!(e.kind, ImdsErrorKind::LeafNeedsTextFormat);
        assert_eq!(e.status(), 400);
        assert!(e.body()["error"].as_str().unwrap().contains("format=text"));

        let r = render_instance(&d, &p("compute/vmId"), Format::Text).unwrap();
        assert_eq!(
            (r.content_type, r.body.as_str()),
            (CONTENT_TYPE_TEXT, "02aab8a4-74ef-476e-8182-f6d2ba4166a6")
        );
        let r = render_instance(
            &d,
            &p("network/interface/0/ipv4/ipAddress/0/privateIpAddress"),
            Format::Text,
        )
        .unwrap();
        assert_eq!(r.body, "10.224.0.4");
        assert_eq!(
            render_instance(&d, &p("compute/tags"), Format::Text)
                .unwrap()
                .body,
            "a:1;b:2"
        );
        assert_eq!(
            render_instance(&d, &p("compute"), Format::Text)
                .unwrap()
                .body,
            "tags\ntagsList/\nvmId"
        );
        assert_eq!(
            render_instance(&d, &p("network/interface"), Format::Text)
                .unwrap()
                .body,
            "0/"
        );

        for missing in [
            "compute/nope",
            "network/interface/7",
            "compute/vmId/x",
            "network/interface/x",
        ] {
            let e = render_instance(&d, &p(missing), Format::Text).unwrap_err();
            assert_eq!(e.status(), 404, "{missing}");
            assert_eq!(e.body(), json!({"error": "Not found"}));
        }
    }

    #[test]
    fn tags() {
        assert_eq!(tags_text([("a", "1"), ("b", "x:y")]), "a:1;b:x:y");
        assert_eq!(
            parse_tags_text("a:1;b:x:y;c"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x:y".into()),
                ("c".into(), "".into())
            ]
        );
        assert_eq!(parse_tags_text(""), vec![]);
    }

    #[test]
    fn primitives_become_strings() {
        let v = stringify_primitives(json!({"a": 1, "b": [true, null, 2.5], "c": {"d": "x"}}));
        assert_eq!(
            v,
            json!({"a": "1", "b": ["true", "", "2.5"], "c": {"d": "x"}})
        );
    }

    #[test]
    fn start_requests() {
        let ids = parse_start_requests(br#"{"StartRequests":[{"EventId":"e1"},{"EventId":"e2"}]}"#)
            .unwrap();
        assert_eq!(ids, vec!["e1".to_string(), "e2".to_string()]);
        assert_eq!(parse_start_requests(b"{}").unwrap_err().status(), 400);
        assert_eq!(parse_start_requests(b"nope").unwrap_err().status(), 400);
    }

    #[test]
    fn injected_statuses() {
        let e = ImdsError::for_status(ImdsApi::IdentityToken, 500);
        assert_eq!(e.status(), 500);
        assert_eq!(e.body()["error"], "unknown");
        assert_eq!(ImdsError::for_status(ImdsApi::Instance, 410).status(), 410);
        let e = ImdsError::for_status(ImdsApi::Instance, 429);
        assert_eq!(e.body(), json!({"error": "Too many requests"}));
        assert_eq!(ImdsError::for_status(ImdsApi::Instance, 503).status(), 503);
    }

    const TOKEN: &str = "/metadata/identity/oauth2/token";
    const ARM: &str = "resource=https%3A%2F%2Fmanagement.azure.com%2F&api-version=2018-02-01";

    fn canonical(target: &str) -> Result<ImdsRequest, ImdsError> {
        let c = canon::Canonicalizer::default()
            .canonicalize(target)
            .expect("canonical");
        validate_canonical("GET", &c, ok_headers())
    }

    #[test]
    fn empty_selectors_are_refused_not_read_as_absent() {
        for (q, name) in [
            (format!("{ARM}&client_id=K&mi_res_id="), "mi_res_id"),
            (format!("{ARM}&client_id="), "client_id"),
            (format!("{ARM}&object_id=&msi_res_id=/x"), "object_id"),
            (format!("{ARM}&msi_res_id="), "msi_res_id"),
        ] {
            let e = check("GET", TOKEN, &q).expect_err(&q);
            assert_eq!(e.kind, ImdsErrorKind::EmptyParameter(name.into()), "{q}");
            assert_eq!(e.status(), 400);
            let body = e.body();
            assert_eq!(body["error"], "invalid_request", "{body}");
            assert!(
                body["error_description"].as_str().unwrap().contains(name),
                "{body}"
            );
            assert_eq!(
                body.as_object().unwrap().len(),
                2,
                "IMDS's identity error shape: {body}"
            );
            assert_eq!(
                canonical(&format!("{TOKEN}?{q}")).unwrap_err().kind,
                e.kind,
                "the canonical path decides the same"
            );
        }
        // An empty value of anything else is not a selector.
        assert!(check("GET", TOKEN, &format!("{ARM}&principal_id=")).is_ok());
    }

    #[test]
    fn the_canonical_form_validates_like_the_raw_one() {
        for t in [
            "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
            "/Metadata/Instance?API-Version=2021-02-01",
            "/metadata/identity/oauth2/token?resource=https%3A%2F%2Fvault.azure.net&api-version=2018-02-01&mi_res_id=%2Fsubscriptions%2Fs%2Fx",
            "/metadata/versions",
            "/metadata/attested/document?api-version=2021-02-01&nonce=123",
            "/metadata/identity/oauth2/token?api-version=2018-02-01",
            "/metadata/nothing?api-version=2021-02-01",
            "/metadata/instance?api-version=2001-01-01",
        ] {
            let c = canon::Canonicalizer::default().canonicalize(t).unwrap();
            assert_eq!(
                validate_canonical("GET", &c, ok_headers()),
                validate("GET", &c.path, c.query.as_deref(), ok_headers()),
                "{t}"
            );
        }
    }

    #[test]
    fn upstream_targets_hold_only_what_was_decided() {
        let cases: [(String, String); 8] = [
            // Unknown parameters stay behind; the selector goes as sent (mi_res_id).
            (
                format!(
                    "{TOKEN}?principal_id=X&{ARM}&mi_res_id=%2Fsubscriptions%2Fs%2Fid&bypass_cache=true"
                ),
                format!("{TOKEN}?{ARM}&mi_res_id=%2Fsubscriptions%2Fs%2Fid"),
            ),
            (
                format!("{TOKEN}?api-version=2018-02-01&Client_ID=abc&resource=api%3A%2F%2Fx"),
                format!("{TOKEN}?resource=api%3A%2F%2Fx&api-version=2018-02-01&client_id=abc"),
            ),
            (format!("{TOKEN}?{ARM}"), format!("{TOKEN}?{ARM}")),
            (
                "/metadata/instance/compute/vmId?format=TEXT&api-version=2021-02-01&extra=1".into(),
                "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text".into(),
            ),
            (
                "/metadata/instance?api-version=2021-02-01".into(),
                "/metadata/instance?api-version=2021-02-01".into(),
            ),
            (
                "/metadata/versions?api-version=2021-02-01&x=y".into(),
                "/metadata/versions".into(),
            ),
            (
                "/metadata/attested/document?nonce=12%2B3&api-version=2021-02-01&format=json"
                    .into(),
                "/metadata/attested/document?api-version=2021-02-01&nonce=12%2B3".into(),
            ),
            (
                "/metadata/scheduledevents?api-version=2020-07-01&format=json&z=1".into(),
                "/metadata/scheduledevents?api-version=2020-07-01".into(),
            ),
        ];
        for (sent, want) in cases {
            let r = canonical(&sent).unwrap_or_else(|e| panic!("{sent}: {e}"));
            assert_eq!(r.upstream_target(), want, "{sent}");
            // What goes upstream validates to the same request (the api-version only
            // where the endpoint reads one).
            let again = canonical(&want).unwrap();
            let version = |r: &ImdsRequest| {
                r.endpoint
                    .requires_api_version()
                    .then(|| r.api_version.clone())
            };
            assert_eq!(
                (
                    &again.token,
                    &again.instance_path,
                    again.format,
                    version(&again)
                ),
                (&r.token, &r.instance_path, r.format, version(&r)),
                "{want}"
            );
        }
    }

    #[test]
    fn upstream_errors_pass_only_in_imds_shapes() {
        use ImdsApi::{IdentityToken as Tok, Instance as Inst};
        let ok = |e, status, body: &str| upstream_error_body(e, status, body.as_bytes());
        // IMDS's own bodies pass unchanged.
        for (e, kind) in [
            (Tok, ImdsErrorKind::Throttled),
            (Tok, ImdsErrorKind::IdentityNotFound),
            (Tok, ImdsErrorKind::ServerError),
            (Inst, ImdsErrorKind::NotFound),
            (Inst, ImdsErrorKind::MissingApiVersion),
            (Inst, ImdsErrorKind::Gone),
        ] {
            let err = ImdsError::new(e, kind);
            let passed = ok(e, err.status(), &err.body_string()).expect("IMDS's own error");
            assert_eq!(
                serde_json::from_str::<Value>(&passed).unwrap(),
                err.body(),
                "{err}"
            );
        }
        // Entra ID's extra fields are dropped, the documented ones kept.
        let aad = r#"{"error":"invalid_resource","error_description":"AADSTS500011: not found\r\nTrace ID: t","error_codes":[500011],"trace_id":"t","correlation_id":"c"}"#;
        assert_eq!(
            ok(Tok, 400, aad).unwrap(),
            r#"{"error":"invalid_resource","error_description":"AADSTS500011: not found\r\nTrace ID: t"}"#
        );
        assert_eq!(
            ok(Inst, 404, r#"{"error":"Not found","access_token":"eyJ0"}"#).unwrap(),
            r#"{"error":"Not found"}"#
        );
        // Anything else is not passed.
        for (e, status, body) in [
            (Tok, 500, "<html>stack trace: secret</html>"),
            (Tok, 500, "plain text"),
            (Tok, 400, r#"{"error":"bad code!","error_description":"x"}"#),
            (Tok, 400, r#"{"error":"invalid_request"}"#),
            (
                Tok,
                400,
                r#"{"error":"invalid_request","error_description":7}"#,
            ),
            (Tok, 400, r#"["error"]"#),
            (Inst, 400, r#"{"message":"no error field"}"#),
            (Inst, 400, r#"{"error":{"nested":"object"}}"#),
            (
                Inst,
                400,
                r#"{"error":"x","newest-versions":["not a version"]}"#,
            ),
            (Inst, 400, r#"{"error":"bell\u0007"}"#),
            (Inst, 200, r#"{"error":"a success is not an error"}"#),
            (Inst, 302, r#"{"error":"redirect"}"#),
        ] {
            assert_eq!(ok(e, status, body), None, "{status} {body}");
        }
        let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(MAX_ERROR_DESCRIPTION + 1));
        assert_eq!(ok(Inst, 500, &long), None, "over the size bound");
    }
}
