//! The probe's settings as given ([`ProbeSettings`]) and the checked configuration they
//! turn into ([`ProbeConfig`]).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use imdsguard_core::target::{self, Cloud, Protocol, Target};

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

/// The AWS and GCP metadata endpoint (both clouds use 169.254.169.254:80).
pub const DEFAULT_CLOUD_ENDPOINT: &str = "http://169.254.169.254";
/// The TTL the probe asks for its IMDSv2 session token: short, the probe needs it for a
/// few seconds.
pub const AWS_TOKEN_TTL_SECONDS: u32 = 60;
/// The audience the probe asks a GCP identity token for (`--audience`).
pub const DEFAULT_GCP_AUDIENCE: &str = "https://imdsguard.invalid/probe";

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
    /// Which cloud's attacker path to walk (Azure by default).
    pub cloud: Cloud,
    /// AWS, GCP: also check TCP reachability of the cloud's IPv6 metadata address
    /// (`[fd00:ec2::254]`, `[fd20:ce::254]`; with `pod_identity`, `[fd00:ec2::23]`).
    pub ipv6: bool,
    /// AWS: also check TCP reachability of the EKS Pod Identity agent (169.254.170.23:80,
    /// and `[fd00:ec2::23]:80` with `ipv6`).
    pub pod_identity: bool,
    /// GCP: the audience of the identity token asked for.
    pub audience: String,
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
            cloud: Cloud::Azure,
            ipv6: false,
            pod_identity: false,
            audience: DEFAULT_GCP_AUDIENCE.to_owned(),
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
    /// refused: IMDS and WireServer are plain HTTP at the root. An IPv4-mapped IPv6 host
    /// (`[::ffff:169.254.169.254]`) is folded to the IPv4 address it maps
    /// ([`target::canonical_ip`]): a socket to it sends IPv4 packets there.
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
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => match target::canonical_ip(ip) {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            },
            Err(_) => host.to_owned(),
        };
        Ok(BaseUrl {
            host,
            port: authority.port_u16().unwrap_or(80),
        })
    }

    /// The base URL of a TCP target (`http://ADDR:PORT`, IPv6 in brackets).
    pub fn of_target(target: &Target) -> BaseUrl {
        BaseUrl {
            host: match target.ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            },
            port: target.port,
        }
    }

    /// The TCP target this URL names, when its host is an IP address.
    pub fn target(&self) -> Option<Target> {
        let ip = self.bare_host().parse::<IpAddr>().ok()?;
        Some(Target::new(
            target::canonical_ip(ip),
            self.port,
            Protocol::Tcp,
        ))
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
    /// Which cloud's attacker path is walked.
    pub cloud: Cloud,
    /// AWS, GCP: the cloud's IPv6 metadata address, checked for TCP reachability only.
    pub ipv6_endpoint: Option<BaseUrl>,
    /// AWS: the EKS Pod Identity agent's addresses, checked for TCP reachability only.
    pub pod_identity: Vec<BaseUrl>,
    /// GCP: the audience of the identity token asked for.
    pub audience: String,
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
            cloud: Cloud::Azure,
            ipv6_endpoint: None,
            pod_identity: Vec::new(),
            audience: DEFAULT_GCP_AUDIENCE.to_owned(),
        }
    }

    /// A configuration walking `cloud`'s attacker path against `endpoint`, with the
    /// defaults of [`ProbeConfig::new`] and no extra address (no IPv6 address, no Pod
    /// Identity agent, no WireServer).
    pub fn for_cloud(cloud: Cloud, endpoint: BaseUrl) -> ProbeConfig {
        ProbeConfig {
            cloud,
            ..ProbeConfig::new(endpoint)
        }
    }

    /// Every address this configuration sends something to, the endpoint first.
    pub fn addresses(&self) -> Vec<&BaseUrl> {
        std::iter::once(&self.endpoint)
            .chain(self.ipv6_endpoint.iter())
            .chain(self.pod_identity.iter())
            .chain(self.wireserver.iter())
            .chain(self.hostgaplugin.iter())
            .collect()
    }

    /// Checks the settings and builds the configuration. When an endpoint is given,
    /// the WireServer URLs default to "not checked": a probe pointed at an emulator
    /// never sends anything to the real addresses.
    pub fn from_settings(args: &ProbeSettings) -> Result<ProbeConfig, ProbeError> {
        if args.cloud != Cloud::Azure {
            return ProbeConfig::cloud_from_settings(args);
        }
        for (flag, given) in [("--ipv6", args.ipv6), ("--pod-identity", args.pod_identity)] {
            if given {
                return Err(ProbeError::Usage(format!(
                    "{flag} is for --cloud aws (and --ipv6 for gcp too): Azure IMDS has no \
                     IPv6 address and no Pod Identity agent"
                )));
            }
        }
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
            cloud: Cloud::Azure,
            ipv6_endpoint: None,
            pod_identity: Vec::new(),
            audience: args.audience.clone(),
        })
    }

    /// [`ProbeConfig::from_settings`] for AWS and GCP: Azure's flags refused, the
    /// cloud's endpoint, its IPv6 address and (AWS) the Pod Identity agent when asked.
    /// An endpoint that is another cloud's metadata address (WireServer under aws) is
    /// refused: the probe never contacts another cloud's endpoints.
    fn cloud_from_settings(args: &ProbeSettings) -> Result<ProbeConfig, ProbeError> {
        let cloud = args.cloud;
        for (flag, given) in [
            ("--wireserver", args.wireserver.is_some()),
            ("--hostgaplugin", args.hostgaplugin.is_some()),
            ("--client-id", !args.client_ids.is_empty()),
            ("--resource", !args.resources.is_empty()),
            ("--pod-identity", args.pod_identity && cloud != Cloud::Aws),
        ] {
            if given {
                return Err(ProbeError::Usage(format!(
                    "{flag} does not apply to --cloud {}",
                    cloud.name()
                )));
            }
        }
        let endpoint = BaseUrl::parse(args.endpoint.as_deref().unwrap_or(DEFAULT_CLOUD_ENDPOINT))
            .map_err(|reason| ProbeError::Usage(format!("--endpoint: {reason}")))?;
        if let Some(t) = endpoint.target()
            && t.service().is_some()
            && cloud.service(&t).is_none()
        {
            return Err(ProbeError::Usage(format!(
                "--endpoint: {endpoint} is another cloud's metadata address, not one of \
                 --cloud {}'s; the probe never contacts another cloud's endpoints",
                cloud.name()
            )));
        }
        let v6 = match cloud {
            Cloud::Aws => target::AWS_IMDS_IPV6,
            _ => target::GCP_METADATA_IPV6,
        };
        let ipv6_endpoint = args.ipv6.then(|| BaseUrl::of_target(&v6));
        let mut pod_identity = Vec::new();
        if args.pod_identity {
            pod_identity.push(BaseUrl::of_target(&target::AWS_POD_IDENTITY));
            if args.ipv6 {
                pod_identity.push(BaseUrl::of_target(&target::AWS_POD_IDENTITY_IPV6));
            }
        }
        let audience = args.audience.trim();
        if audience.is_empty() || audience.chars().any(char::is_control) {
            return Err(ProbeError::Usage("--audience: empty or invalid".to_owned()));
        }
        Ok(ProbeConfig {
            endpoint,
            wireserver: None,
            hostgaplugin: None,
            connect_timeout: args.connect_timeout.min(args.timeout),
            timeout: args.timeout,
            client_ids: Vec::new(),
            resources: Vec::new(),
            api_version: args.api_version.clone(),
            token_api_version: args.token_api_version.clone(),
            cloud,
            ipv6_endpoint,
            pod_identity,
            audience: audience.to_owned(),
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
                "--cloud" => s.cloud = value.parse().unwrap(),
                "--audience" => s.audience = value,
                "--ipv6" => s.ipv6 = value == "true",
                "--pod-identity" => s.pod_identity = value == "true",
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

    #[test]
    fn ipv4_mapped_endpoints_are_folded() {
        for text in [
            "http://[::ffff:169.254.169.254]",
            "http://[::ffff:a9fe:a9fe]:80/",
            "http://[0:0:0:0:0:ffff:169.254.169.254]",
        ] {
            let e = BaseUrl::parse(text).unwrap();
            assert_eq!(e.to_string(), "http://169.254.169.254", "{text}");
            assert_eq!(e.target(), Some(target::IMDS));
        }
        let e = BaseUrl::parse("http://[FD00:EC2::254]").unwrap();
        assert_eq!(e.host, "[fd00:ec2::254]");
        assert_eq!(e.target(), Some(target::AWS_IMDS_IPV6));
        assert_eq!(BaseUrl::of_target(&target::AWS_IMDS_IPV6), e);
        assert_eq!(
            BaseUrl::parse("http://metadata.google.internal")
                .unwrap()
                .target(),
            None
        );
    }

    #[test]
    fn aws_and_gcp_defaults_touch_only_their_cloud() {
        for cloud in [Cloud::Aws, Cloud::Gcp] {
            let name = cloud.name();
            let plain = ProbeConfig::from_settings(&args(&["--cloud", name])).unwrap();
            assert_eq!(plain.endpoint.to_string(), DEFAULT_CLOUD_ENDPOINT);
            assert!(plain.wireserver.is_none() && plain.hostgaplugin.is_none());
            assert!(plain.ipv6_endpoint.is_none() && plain.pod_identity.is_empty());
            let mut argv = vec!["--cloud", name, "--ipv6", "true"];
            if cloud == Cloud::Aws {
                argv.extend(["--pod-identity", "true"]);
            }
            let all = ProbeConfig::from_settings(&args(&argv)).unwrap();
            let addresses = all.addresses();
            assert_eq!(addresses.len(), if cloud == Cloud::Aws { 4 } else { 2 });
            for a in addresses {
                let t = a.target().unwrap();
                assert!(cloud.service(&t).is_some(), "{name}: {a} is not {name}'s");
            }
        }
        let aws = ProbeConfig::from_settings(&args(&[
            "--cloud",
            "aws",
            "--ipv6",
            "true",
            "--pod-identity",
            "true",
        ]))
        .unwrap();
        assert_eq!(
            aws.ipv6_endpoint.unwrap().to_string(),
            "http://[fd00:ec2::254]"
        );
        assert_eq!(
            aws.pod_identity
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["http://169.254.170.23", "http://[fd00:ec2::23]"]
        );
        let gcp = ProbeConfig::from_settings(&args(&["--cloud", "gcp", "--ipv6", "true"])).unwrap();
        assert_eq!(
            gcp.ipv6_endpoint.unwrap().to_string(),
            "http://[fd20:ce::254]"
        );
        assert_eq!(gcp.audience, DEFAULT_GCP_AUDIENCE);
        let v6 = ProbeConfig::from_settings(&args(&[
            "--cloud",
            "aws",
            "--endpoint",
            "http://[fd00:ec2::254]",
        ]))
        .unwrap();
        assert_eq!(v6.endpoint.authority(), "[fd00:ec2::254]:80");
    }

    #[test]
    fn other_clouds_flags_and_endpoints_are_refused() {
        for bad in [
            &["--cloud", "aws", "--wireserver", "http://127.0.0.1:2"][..],
            &["--cloud", "gcp", "--hostgaplugin", "http://127.0.0.1:2"],
            &["--cloud", "aws", "--client-id", "x"],
            &["--cloud", "gcp", "--resource", "r"],
            &["--cloud", "gcp", "--pod-identity", "true"],
            &["--cloud", "gcp", "--audience", " "],
            &["--ipv6", "true"],
            &["--pod-identity", "true"],
            // WireServer is Azure's; Pod Identity is not GCP's.
            &["--cloud", "aws", "--endpoint", "http://168.63.129.16"],
            &["--cloud", "gcp", "--endpoint", "http://169.254.170.23"],
            &[
                "--cloud",
                "gcp",
                "--endpoint",
                "http://[::ffff:168.63.129.16]",
            ],
            &["--cloud", "aws", "--endpoint", "http://[fd20:ce::254]"],
        ] {
            match ProbeConfig::from_settings(&args(bad)) {
                Err(ProbeError::Usage(why)) => assert!(!why.is_empty()),
                Ok(_) => panic!("{bad:?} accepted"),
            }
        }
        // Loopback (an emulator) is anyone's.
        assert!(
            ProbeConfig::from_settings(&args(&[
                "--cloud",
                "gcp",
                "--endpoint",
                "http://127.0.0.1:8"
            ]))
            .is_ok()
        );
    }
}
