//! The probe's settings as given ([`ProbeSettings`]) and the checked configuration they
//! turn into ([`ProbeConfig`]).

use std::fmt;
use std::time::Duration;

use crate::ProbeError;

/// The Azure IMDS address the probe walks toward by default.
pub const DEFAULT_ENDPOINT: &str = imdsguard_core::imds::IMDS_URL;
/// The WireServer (VM agent channel, port 80) checked by default.
pub const DEFAULT_WIRESERVER: &str = imdsguard_core::imds::WIRESERVER_URL;
/// The HostGAPlugin (port 32526) checked by default.
pub const DEFAULT_HOSTGAPLUGIN: &str = imdsguard_core::imds::HOST_GA_PLUGIN_URL;
/// The Azure Resource Manager audience: what an attacker wants a token for first.
pub const ARM_RESOURCE: &str = "https://management.azure.com/";
/// The Key Vault audience.
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";
/// The api-version used for the instance document.
pub const DEFAULT_API_VERSION: &str = "2021-02-01";
/// The api-version used for the token endpoint (the one its documentation shows).
pub const DEFAULT_TOKEN_API_VERSION: &str = "2018-02-01";

/// What the user asked for, before it is checked: the probe's settings as plain data
/// (the `imdsguard probe` flags map onto these one to one; [`Default`] is what the
/// flags default to). [`ProbeConfig::from_settings`] checks them.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// IMDS base URL (plain HTTP); `None` is [`DEFAULT_ENDPOINT`]. When given,
    /// WireServer and HostGAPlugin are only checked if their URLs are given too.
    pub endpoint: Option<String>,
    /// WireServer base URL; `None` is [`DEFAULT_WIRESERVER`] unless `endpoint` is given.
    pub wireserver: Option<String>,
    /// HostGAPlugin base URL; `None` is [`DEFAULT_HOSTGAPLUGIN`] unless `endpoint` is
    /// given.
    pub hostgaplugin: Option<String>,
    /// Time allowed for a TCP connection (at most `timeout`).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, connection included.
    pub timeout: Duration,
    /// Also try a token for these user-assigned identities.
    pub client_ids: Vec<String>,
    /// Also try a token for these resources, besides ARM and Key Vault.
    pub resources: Vec<String>,
    /// api-version for the instance document.
    pub api_version: String,
    /// api-version for the token endpoint.
    pub token_api_version: String,
}

impl Default for ProbeSettings {
    /// The Azure addresses, 2 s to connect, 5 s a request, ARM and Key Vault, the
    /// default api-versions.
    fn default() -> Self {
        ProbeSettings {
            endpoint: None,
            wireserver: None,
            hostgaplugin: None,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            client_ids: Vec::new(),
            resources: Vec::new(),
            api_version: DEFAULT_API_VERSION.to_owned(),
            token_api_version: DEFAULT_TOKEN_API_VERSION.to_owned(),
        }
    }
}

/// A plain-HTTP base URL: `http://host[:port][/]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Host as written in the URL (an IPv6 address keeps its brackets).
    pub host: String,
    /// TCP port (80 when the URL names none).
    pub port: u16,
}

impl BaseUrl {
    /// Parses `http://host[:port][/]`. Paths, queries, user info and other schemes are
    /// refused: IMDS and WireServer are plain HTTP at the root.
    pub fn parse(text: &str) -> Result<BaseUrl, String> {
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
        Ok(BaseUrl {
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

impl fmt::Display for BaseUrl {
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
    pub endpoint: BaseUrl,
    /// The WireServer endpoint (goal state), or `None` to report it "not checked".
    pub wireserver: Option<BaseUrl>,
    /// The HostGAPlugin endpoint (vmSettings), or `None` to report it "not checked".
    pub hostgaplugin: Option<BaseUrl>,
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
    pub fn new(endpoint: BaseUrl) -> ProbeConfig {
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

    /// Checks the settings and builds the configuration. When an endpoint is given,
    /// the WireServer URLs default to "not checked": a probe pointed at an emulator
    /// never sends anything to the real addresses.
    pub fn from_settings(args: &ProbeSettings) -> Result<ProbeConfig, ProbeError> {
        let parse = |flag: &'static str, text: &str| {
            BaseUrl::parse(text).map_err(|reason| ProbeError::Usage(format!("--{flag}: {reason}")))
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

    /// The settings the flags `argv` stand for (the flags themselves are the binary's).
    fn args(argv: &[&str]) -> ProbeSettings {
        let mut s = ProbeSettings::default();
        for pair in argv.chunks(2) {
            let value = pair[1].to_owned();
            let secs = |v: &str| Duration::from_secs(v.trim_end_matches('s').parse().unwrap());
            match pair[0] {
                "--endpoint" => s.endpoint = Some(value),
                "--wireserver" => s.wireserver = Some(value),
                "--hostgaplugin" => s.hostgaplugin = Some(value),
                "--client-id" => s.client_ids.push(value),
                "--resource" => s.resources.push(value),
                "--connect-timeout" => s.connect_timeout = secs(&value),
                "--timeout" => s.timeout = secs(&value),
                "--api-version" => s.api_version = value,
                other => panic!("{other}"),
            }
        }
        s
    }

    #[test]
    fn endpoints() {
        let e = BaseUrl::parse("http://169.254.169.254").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("169.254.169.254", 80));
        assert_eq!(e.to_string(), "http://169.254.169.254");
        assert_eq!(
            e.url("/metadata/instance"),
            "http://169.254.169.254/metadata/instance"
        );
        let e = BaseUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(e.authority(), "127.0.0.1:8080");
        assert_eq!(e.to_string(), "http://127.0.0.1:8080");
        let e = BaseUrl::parse("http://[::1]:8080").unwrap();
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
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_reach_azure_addresses() {
        let config = ProbeConfig::from_settings(&args(&[])).unwrap();
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
        let config =
            ProbeConfig::from_settings(&args(&["--endpoint", "http://127.0.0.1:1"])).unwrap();
        assert!(config.wireserver.is_none() && config.hostgaplugin.is_none());
        let config = ProbeConfig::from_settings(&args(&[
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
        let config = ProbeConfig::from_settings(&args(&[
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
                    ProbeConfig::from_settings(&args(bad)),
                    Err(ProbeError::Usage(_))
                ),
                "{bad:?}"
            );
        }
    }
}
