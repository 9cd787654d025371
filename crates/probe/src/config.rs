//! Command-line arguments ([`ProbeArgs`]) and the checked configuration they turn into
//! ([`ProbeConfig`]).

use std::fmt;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::ProbeError;

/// The Azure IMDS address the probe walks toward by default.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The WireServer (VM agent channel, port 80) checked by default.
pub const DEFAULT_WIRESERVER: &str = "http://168.63.129.16";
/// The HostGAPlugin (port 32526) checked by default.
pub const DEFAULT_HOSTGAPLUGIN: &str = "http://168.63.129.16:32526";
/// The Azure Resource Manager audience: what an attacker wants a token for first.
pub const ARM_RESOURCE: &str = "https://management.azure.com/";
/// The Key Vault audience.
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";
/// The api-version used for the instance document.
pub const DEFAULT_API_VERSION: &str = "2021-02-01";
/// The api-version used for the token endpoint (the one its documentation shows).
pub const DEFAULT_TOKEN_API_VERSION: &str = "2018-02-01";

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// A readable report.
    #[default]
    Text,
    /// One JSON document (see docs/probe.md).
    Json,
}

/// Walk the attacker's path against Azure IMDS (and WireServer) from where this runs,
/// and report each step: reachability, the instance document, identities, tokens.
///
/// Exit status: 0 when nothing sensitive is reachable, 1 when something is (instance
/// data, a token, WireServer data), 2 on usage errors.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// IMDS base URL (plain HTTP). When given, WireServer and HostGAPlugin are only
    /// checked if their URLs are given too.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// WireServer base URL [default: http://168.63.129.16 unless --endpoint is given]
    #[arg(long, value_name = "URL")]
    pub wireserver: Option<String>,

    /// HostGAPlugin base URL [default: http://168.63.129.16:32526 unless --endpoint is given]
    #[arg(long, value_name = "URL")]
    pub hostgaplugin: Option<String>,

    /// Time allowed for a TCP connection (e.g. 2s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for a whole request, connection included
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Also try a token for this user-assigned identity (repeatable)
    #[arg(long = "client-id", value_name = "ID")]
    pub client_ids: Vec<String>,

    /// Also try a token for this resource, besides ARM and Key Vault (repeatable)
    #[arg(long = "resource", value_name = "URI")]
    pub resources: Vec<String>,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// api-version for the instance document
    #[arg(long, value_name = "VERSION", default_value = DEFAULT_API_VERSION)]
    pub api_version: String,

    /// api-version for the token endpoint
    #[arg(long, value_name = "VERSION", default_value = DEFAULT_TOKEN_API_VERSION)]
    pub token_api_version: String,
}

/// Parses a duration: `2`, `2s`, `1.5s`, `500ms` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(ms) = t.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = t.strip_suffix('s') {
        (s, 1.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 2s, 500ms)"))?;
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 3600.0 {
        return Err(format!(
            "`{text}`: expected a duration above 0 and at most 1h"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A plain-HTTP base URL: `http://host[:port][/]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host as written in the URL (an IPv6 address keeps its brackets).
    pub host: String,
    /// TCP port (80 when the URL names none).
    pub port: u16,
}

impl Endpoint {
    /// Parses `http://host[:port][/]`. Paths, queries, user info and other schemes are
    /// refused: IMDS and WireServer are plain HTTP at the root.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = text
            .trim()
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "`{text}`: scheme `{other}` is not supported (IMDS and WireServer are plain http://)"
                ));
            }
            None => return Err(format!("`{text}`: expected http://HOST[:PORT]")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{text}`: expected http://HOST[:PORT]"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{text}`: user info is not supported"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "`{text}`: give the base URL only (http://HOST[:PORT]), without a path or query"
            ));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(format!("`{text}`: no host"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
        })
    }

    /// The host without IPv6 brackets, for name resolution.
    pub fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// `host:port`, as sent in the `Host` header and shown for the TCP step.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The full URL of `path_and_query` (which starts with `/`) on this endpoint.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{self}{path_and_query}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 80 {
            write!(f, "http://{}", self.host)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

/// What one probe run does: where it goes, how long it waits, what it asks for.
///
/// There is no `Default`: a caller names the endpoint, so a library user never reaches
/// the real IMDS by accident. [`ProbeConfig::new`] leaves WireServer unchecked.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The IMDS endpoint.
    pub endpoint: Endpoint,
    /// The WireServer endpoint (goal state), or `None` to report it "not checked".
    pub wireserver: Option<Endpoint>,
    /// The HostGAPlugin endpoint (vmSettings), or `None` to report it "not checked".
    pub hostgaplugin: Option<Endpoint>,
    /// Time allowed for a TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request.
    pub timeout: Duration,
    /// Client ids to try besides those the instance document names.
    pub client_ids: Vec<String>,
    /// Resources (audiences) to ask tokens for, in order.
    pub resources: Vec<String>,
    /// api-version for the instance document.
    pub api_version: String,
    /// api-version for the token endpoint.
    pub token_api_version: String,
}

impl ProbeConfig {
    /// A configuration for `endpoint` with the default timeouts, resources (ARM, Key
    /// Vault) and api-versions, and no WireServer checks.
    pub fn new(endpoint: Endpoint) -> ProbeConfig {
        ProbeConfig {
            endpoint,
            wireserver: None,
            hostgaplugin: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            client_ids: Vec::new(),
            resources: vec![ARM_RESOURCE.to_owned(), KEY_VAULT_RESOURCE.to_owned()],
            api_version: DEFAULT_API_VERSION.to_owned(),
            token_api_version: DEFAULT_TOKEN_API_VERSION.to_owned(),
        }
    }

    /// Checks the arguments and builds the configuration. When `--endpoint` is given,
    /// the WireServer URLs default to "not checked": a probe pointed at an emulator
    /// never sends anything to the real addresses.
    pub fn from_args(args: &ProbeArgs) -> Result<ProbeConfig, ProbeError> {
        let parse = |flag: &'static str, text: &str| {
            Endpoint::parse(text).map_err(|reason| ProbeError::Usage(format!("--{flag}: {reason}")))
        };
        let endpoint_given = args.endpoint.is_some();
        let endpoint = parse(
            "endpoint",
            args.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT),
        )?;
        let optional = |flag: &'static str, given: &Option<String>, default: &str| match (
            given,
            endpoint_given,
        ) {
            (Some(url), _) => parse(flag, url).map(Some),
            (None, false) => parse(flag, default).map(Some),
            (None, true) => Ok(None),
        };
        let wireserver = optional("wireserver", &args.wireserver, DEFAULT_WIRESERVER)?;
        let hostgaplugin = optional("hostgaplugin", &args.hostgaplugin, DEFAULT_HOSTGAPLUGIN)?;

        let mut client_ids: Vec<String> = Vec::new();
        for id in &args.client_ids {
            let id = id.trim();
            if id.is_empty() || id.chars().any(char::is_control) {
                return Err(ProbeError::Usage(
                    "--client-id: empty or invalid".to_owned(),
                ));
            }
            if !client_ids
                .iter()
                .any(|known| known.eq_ignore_ascii_case(id))
            {
                client_ids.push(id.to_owned());
            }
        }
        let mut resources = vec![ARM_RESOURCE.to_owned(), KEY_VAULT_RESOURCE.to_owned()];
        for resource in &args.resources {
            let resource = resource.trim();
            if resource.is_empty() || resource.chars().any(char::is_control) {
                return Err(ProbeError::Usage("--resource: empty or invalid".to_owned()));
            }
            if !resources.iter().any(|known| known == resource) {
                resources.push(resource.to_owned());
            }
        }
        for (flag, version) in [
            ("api-version", &args.api_version),
            ("token-api-version", &args.token_api_version),
        ] {
            if version.is_empty()
                || !version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(ProbeError::Usage(format!(
                    "--{flag}: `{version}` is not an api-version (e.g. 2021-02-01)"
                )));
            }
        }
        Ok(ProbeConfig {
            endpoint,
            wireserver,
            hostgaplugin,
            connect_timeout: args.connect_timeout.min(args.timeout),
            timeout: args.timeout,
            client_ids,
            resources,
            api_version: args.api_version.clone(),
            token_api_version: args.token_api_version.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProbeArgs,
    }

    fn args(argv: &[&str]) -> ProbeArgs {
        Cli::try_parse_from(std::iter::once("probe").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://169.254.169.254").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("169.254.169.254", 80));
        assert_eq!(e.to_string(), "http://169.254.169.254");
        assert_eq!(
            e.url("/metadata/instance"),
            "http://169.254.169.254/metadata/instance"
        );
        let e = Endpoint::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(e.authority(), "127.0.0.1:8080");
        assert_eq!(e.to_string(), "http://127.0.0.1:8080");
        let e = Endpoint::parse("http://[::1]:8080").unwrap();
        assert_eq!(e.bare_host(), "::1");
        assert_eq!(e.to_string(), "http://[::1]:8080");
        for bad in [
            "https://169.254.169.254",
            "ftp://x",
            "169.254.169.254",
            "http://h/metadata",
            "http://h/?a=b",
            "http://u@h",
            "not a url",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_reach_azure_addresses() {
        let config = ProbeConfig::from_args(&args(&[])).unwrap();
        assert_eq!(config.endpoint.to_string(), DEFAULT_ENDPOINT);
        assert_eq!(config.wireserver.unwrap().to_string(), DEFAULT_WIRESERVER);
        assert_eq!(
            config.hostgaplugin.unwrap().to_string(),
            DEFAULT_HOSTGAPLUGIN
        );
        assert_eq!(config.resources, [ARM_RESOURCE, KEY_VAULT_RESOURCE]);
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.api_version, "2021-02-01");
        assert_eq!(config.token_api_version, "2018-02-01");
    }

    #[test]
    fn an_explicit_endpoint_leaves_wireserver_unchecked() {
        let config = ProbeConfig::from_args(&args(&["--endpoint", "http://127.0.0.1:1"])).unwrap();
        assert!(config.wireserver.is_none() && config.hostgaplugin.is_none());
        let config = ProbeConfig::from_args(&args(&[
            "--endpoint",
            "http://127.0.0.1:1",
            "--wireserver",
            "http://127.0.0.1:2",
        ]))
        .unwrap();
        assert_eq!(config.wireserver.unwrap().port, 2);
        assert!(config.hostgaplugin.is_none());
    }

    #[test]
    fn repeated_values_are_deduplicated_and_checked() {
        let config = ProbeConfig::from_args(&args(&[
            "--endpoint",
            "http://127.0.0.1:1",
            "--client-id",
            "AbC",
            "--client-id",
            "abc",
            "--resource",
            "https://storage.azure.com/",
            "--resource",
            ARM_RESOURCE,
            "--connect-timeout",
            "9s",
            "--timeout",
            "1s",
        ]))
        .unwrap();
        assert_eq!(config.client_ids, ["AbC"]);
        assert_eq!(
            config.resources,
            [
                ARM_RESOURCE,
                KEY_VAULT_RESOURCE,
                "https://storage.azure.com/"
            ]
        );
        assert_eq!(config.connect_timeout, Duration::from_secs(1));
        for bad in [
            &["--endpoint", "https://x"][..],
            &["--wireserver", "x:1"],
            &["--client-id", " "],
            &["--resource", ""],
            &["--api-version", "a&b"],
        ] {
            assert!(
                matches!(
                    ProbeConfig::from_args(&args(bad)),
                    Err(ProbeError::Usage(_))
                ),
                "{bad:?}"
            );
        }
    }
}
