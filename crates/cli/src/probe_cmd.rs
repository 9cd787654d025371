//! `imdsguard probe`: the flags of the attacker-path probe, its runtime and its output;
//! the probe itself is `imdsguard-probe`.
//!
//! Exit status: 0 nothing sensitive reachable, 1 something is, 2 usage error.

use std::io::{self, Write as _};
use std::time::Duration;

use clap::{Args, ValueEnum};
use imdsguard_kube::verify::{EndpointResult, ProbeEndpoint, ProbeResult};
use imdsguard_probe::{
    Cloud, DEFAULT_API_VERSION, DEFAULT_GCP_AUDIENCE, DEFAULT_TOKEN_API_VERSION, ExitStatusCode,
    ProbeConfig, ProbeSettings, Report,
};

use crate::cloud_arg::CloudArg;
use crate::service::parse_positive_duration;

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Format {
    /// A readable report.
    #[default]
    Text,
    /// One JSON document (see docs/probe.md).
    Json,
}

/// Walk the attacker's path against a cloud's metadata endpoints from where this runs,
/// and report each step. Azure (default): reachability, the instance document,
/// identities, tokens, WireServer. AWS: IMDSv1 open?, an IMDSv2 token from here?, the
/// identity document, the role and its credentials, user data. GCP: the header check,
/// project and instance values, kube-env, service accounts, tokens, legacy endpoints.
///
/// Exit status: 0 when nothing sensitive is reachable, 1 when something is (instance
/// data, a token, credentials, kube-env, user data, WireServer data), 2 on usage errors.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProbeArgs {
    /// Whose metadata endpoints to probe
    #[arg(long, value_enum, default_value = "azure")]
    pub cloud: CloudArg,

    /// Metadata endpoint base URL (plain HTTP, IPv6 in brackets) [default:
    /// http://169.254.169.254]. Azure: when given, WireServer and HostGAPlugin are only
    /// checked if their URLs are given too.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,

    /// AWS, GCP: also check TCP reachability of the cloud's IPv6 metadata address
    /// ([fd00:ec2::254], [fd20:ce::254]; with --pod-identity, [fd00:ec2::23] too)
    #[arg(long)]
    pub ipv6: bool,

    /// AWS: also check TCP reachability of the EKS Pod Identity agent (169.254.170.23:80)
    #[arg(long)]
    pub pod_identity: bool,

    /// GCP: the audience of the identity token asked for
    #[arg(long, value_name = "URI", default_value = DEFAULT_GCP_AUDIENCE)]
    pub audience: String,

    /// WireServer base URL [default: http://168.63.129.16 unless --endpoint is given]
    #[arg(long, value_name = "URL")]
    pub wireserver: Option<String>,

    /// HostGAPlugin base URL [default: http://168.63.129.16:32526 unless --endpoint is given]
    #[arg(long, value_name = "URL")]
    pub hostgaplugin: Option<String>,

    /// Time allowed for a TCP connection (e.g. 2s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for a whole request, connection included
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_positive_duration)]
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

    /// Also write a compact JSON summary of the result (per endpoint: reachable, blocked
    /// or unknown, the step classes; never a token; under 4000 bytes) to this file:
    /// `/dev/termination-log` in a pod, where `imdsguard verify` reads it back from the
    /// pod's status
    #[arg(long, value_name = "PATH")]
    pub termination_log: Option<std::path::PathBuf>,
}

impl ProbeArgs {
    /// The probe's settings these flags stand for.
    pub(crate) fn settings(&self) -> ProbeSettings {
        ProbeSettings {
            endpoint: self.endpoint.clone(),
            wireserver: self.wireserver.clone(),
            hostgaplugin: self.hostgaplugin.clone(),
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            client_ids: self.client_ids.clone(),
            resources: self.resources.clone(),
            api_version: self.api_version.clone(),
            token_api_version: self.token_api_version.clone(),
            cloud: self.cloud.into(),
            ipv6: self.ipv6,
            pod_identity: self.pod_identity,
            audience: self.audience.clone(),
        }
    }
}

/// Runs `imdsguard probe`: checks the flags, probes on a current-thread runtime, prints
/// the report to standard output in the chosen format and returns the exit status (0
/// nothing sensitive reachable, 1 something is). Errors mean exit status 2.
pub(crate) fn run(args: ProbeArgs) -> anyhow::Result<ExitStatusCode> {
    let config = ProbeConfig::from_settings(&args.settings())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    let report = runtime.block_on(imdsguard_probe::probe(&config));
    if let Some(path) = &args.termination_log {
        let message = termination_message(&config, &report).to_message();
        std::fs::write(path, message).map_err(|e| {
            anyhow::anyhow!(
                "cannot write the result to --termination-log {}: {e}",
                path.display()
            )
        })?;
    }
    let text = match args.format {
        Format::Text => report.to_text(),
        Format::Json => report.to_json(),
    };
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        // A closed pipe (`imdsguard probe | head`) is not the probe's failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(anyhow::anyhow!("cannot write the report: {e}")),
    }
    Ok(report.exit_status())
}

/// The probe's result as `imdsguard verify` reads it from a pod's termination message:
/// per endpoint (IMDS, WireServer, HostGAPlugin) the address, what the probe saw at the
/// network level, the classes of its steps, and whether something sensitive came back.
/// AWS and GCP: the metadata endpoint is the IMDS entry (its steps, the extra TCP
/// checks of the IPv6 address and the Pod Identity agent left out), the others are
/// `not-checked`.
pub(crate) fn termination_message(config: &ProbeConfig, report: &Report) -> ProbeResult {
    if config.cloud != Cloud::Azure {
        let endpoints = ProbeEndpoint::ALL
            .iter()
            .map(|&endpoint| {
                let (address, steps): (String, Vec<_>) = match endpoint {
                    ProbeEndpoint::Imds => (
                        config.endpoint.authority(),
                        report
                            .steps
                            .iter()
                            .filter(|s| {
                                !matches!(
                                    s.name,
                                    imdsguard_probe::StepName::TcpConnectIpv6
                                        | imdsguard_probe::StepName::PodIdentityTcp
                                )
                            })
                            .map(|s| (s.class.as_str(), s.http_status, s.class.is_sensitive()))
                            .collect(),
                    ),
                    _ => (
                        format!("not checked (--cloud {})", config.cloud.name()),
                        Vec::new(),
                    ),
                };
                EndpointResult::from_steps(endpoint, address, steps)
            })
            .collect();
        return ProbeResult::new(endpoints, report.summary.reachable.clone());
    }
    let endpoints = ProbeEndpoint::ALL
        .iter()
        .map(|&endpoint| {
            let address = match endpoint {
                ProbeEndpoint::Imds => Some(config.endpoint.authority()),
                ProbeEndpoint::Wireserver => config.wireserver.as_ref().map(|u| u.authority()),
                ProbeEndpoint::Hostgaplugin => config.hostgaplugin.as_ref().map(|u| u.authority()),
            };
            let steps = report
                .steps
                .iter()
                .filter(|s| ProbeEndpoint::of_step(s.name.as_str()) == Some(endpoint))
                .map(|s| (s.class.as_str(), s.http_status, s.class.is_sensitive()));
            EndpointResult::from_steps(
                endpoint,
                address.unwrap_or_else(|| endpoint.target().to_string()),
                steps,
            )
        })
        .collect();
    ProbeResult::new(endpoints, report.summary.reachable.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use imdsguard_kube::verify::Seen;
    use imdsguard_probe::{Class, Step, StepName, Summary};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProbeArgs,
    }

    fn parse(argv: &[&str]) -> Result<ProbeArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("probe").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let s = parse(&[]).unwrap().settings();
        let d = ProbeSettings::default();
        assert_eq!(
            (
                s.connect_timeout,
                s.timeout,
                &s.api_version,
                &s.token_api_version
            ),
            (
                d.connect_timeout,
                d.timeout,
                &d.api_version,
                &d.token_api_version
            )
        );
        assert!(s.endpoint.is_none() && s.client_ids.is_empty() && s.resources.is_empty());
    }

    #[test]
    fn flags_map_to_settings() {
        let s = parse(&[
            "--endpoint",
            "http://127.0.0.1:1",
            "--connect-timeout",
            "250ms",
            "--timeout",
            "1.5s",
            "--client-id",
            "a",
            "--resource",
            "r",
            "--api-version",
            "2020-01-01",
        ])
        .unwrap()
        .settings();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(s.connect_timeout, Duration::from_millis(250));
        assert_eq!(s.timeout, Duration::from_millis(1500));
        assert_eq!(
            (s.client_ids, s.resources),
            (vec!["a".into()], vec!["r".into()])
        );
        assert_eq!(s.api_version, "2020-01-01");
        for bad in ["0", "-1s", "soon"] {
            assert!(parse(&["--timeout", bad]).is_err(), "{bad}");
        }
    }

    fn step(name: StepName, class: Class, http_status: Option<u16>) -> Step {
        Step {
            name,
            target: "t".into(),
            class,
            detail: "d".into(),
            http_status,
            latency_ms: Some(1),
            identity: None,
            resource: None,
            token: None,
            instance: None,
            denial: None,
            facts: Vec::new(),
            credentials: None,
        }
    }

    #[test]
    fn termination_message_summarises_each_endpoint() {
        let config = ProbeConfig::from_settings(&parse(&[]).unwrap().settings()).unwrap();
        let report = Report {
            cloud: Cloud::Azure,
            endpoint: config.endpoint.to_string(),
            wireserver: None,
            hostgaplugin: None,
            api_version: Some(DEFAULT_API_VERSION.into()),
            token_api_version: Some(DEFAULT_TOKEN_API_VERSION.into()),
            identities: Vec::new(),
            steps: vec![
                step(StepName::TcpConnect, Class::Reachable, None),
                step(
                    StepName::InstanceWithoutHeader,
                    Class::NeedsHeader,
                    Some(400),
                ),
                step(StepName::Instance, Class::Exposed, Some(200)),
                step(StepName::Identities, Class::Info, None),
                step(StepName::Token, Class::TokenObtained, Some(200)),
                step(StepName::WireserverGoalstate, Class::BlockedTimeout, None),
                step(
                    StepName::HostgapluginVmsettings,
                    Class::BlockedRefused,
                    None,
                ),
            ],
            summary: Summary {
                sensitive: true,
                reachable: vec!["the instance document".into(); 200],
                counts: Default::default(),
                exit_code: 1,
            },
        };
        let result = termination_message(&config, &report);
        let text = result.to_message();
        assert!(text.len() <= imdsguard_kube::verify::message::MAX_MESSAGE_BYTES);
        let back = ProbeResult::from_message(&text).unwrap();
        assert_eq!((back.exit_code, back.sensitive), (1, true));
        let imds = back.endpoint(ProbeEndpoint::Imds).unwrap();
        assert_eq!(imds.address, "169.254.169.254:80");
        assert_eq!(imds.seen, Seen::Reachable);
        assert!(imds.sensitive);
        assert_eq!(
            imds.classes,
            ["reachable", "needs-header", "exposed", "token-obtained"]
        );
        let ws = back.endpoint(ProbeEndpoint::Wireserver).unwrap();
        assert_eq!(
            (ws.address.as_str(), ws.seen),
            ("168.63.129.16:80", Seen::Blocked)
        );
        let hgp = back.endpoint(ProbeEndpoint::Hostgaplugin).unwrap();
        assert_eq!(
            (hgp.address.as_str(), hgp.seen),
            ("168.63.129.16:32526", Seen::Blocked)
        );
    }

    #[test]
    fn termination_log_flag() {
        assert_eq!(
            parse(&["--termination-log", "/dev/termination-log"])
                .unwrap()
                .termination_log
                .as_deref(),
            Some(std::path::Path::new("/dev/termination-log"))
        );
        assert!(parse(&[]).unwrap().termination_log.is_none());
    }

    #[test]
    fn cloud_flags() {
        let s = parse(&["--cloud", "aws", "--ipv6", "--pod-identity"])
            .unwrap()
            .settings();
        assert_eq!((s.cloud, s.ipv6, s.pod_identity), (Cloud::Aws, true, true));
        let s = parse(&["--cloud", "gcp", "--audience", "https://a.example"])
            .unwrap()
            .settings();
        assert_eq!(
            (s.cloud, s.audience.as_str()),
            (Cloud::Gcp, "https://a.example")
        );
        assert_eq!(parse(&[]).unwrap().settings().cloud, Cloud::Azure);
        assert!(parse(&["--cloud", "oracle"]).is_err());
        // Azure's flags are refused under another cloud (exit status 2).
        let s = parse(&["--cloud", "aws", "--wireserver", "http://127.0.0.1:1"])
            .unwrap()
            .settings();
        assert!(ProbeConfig::from_settings(&s).is_err());
    }

    #[test]
    fn termination_message_of_another_cloud() {
        let settings = parse(&["--cloud", "aws", "--ipv6"]).unwrap().settings();
        let config = ProbeConfig::from_settings(&settings).unwrap();
        let report = Report {
            cloud: Cloud::Aws,
            endpoint: config.endpoint.to_string(),
            wireserver: None,
            hostgaplugin: None,
            api_version: None,
            token_api_version: None,
            identities: Vec::new(),
            steps: vec![
                step(StepName::TcpConnect, Class::Reachable, None),
                step(StepName::TcpConnectIpv6, Class::BlockedTimeout, None),
                step(StepName::Imdsv1, Class::NeedsHeader, Some(401)),
                step(StepName::Credentials, Class::CredentialsObtained, Some(200)),
            ],
            summary: Summary {
                sensitive: true,
                reachable: vec!["the credentials of role r".into()],
                counts: Default::default(),
                exit_code: 1,
            },
        };
        let back =
            ProbeResult::from_message(&termination_message(&config, &report).to_message()).unwrap();
        assert_eq!((back.exit_code, back.sensitive), (1, true));
        let imds = back.endpoint(ProbeEndpoint::Imds).unwrap();
        assert_eq!(imds.address, "169.254.169.254:80");
        assert_eq!(imds.seen, Seen::Reachable);
        assert_eq!(
            imds.classes,
            ["reachable", "needs-header", "credentials-obtained"]
        );
        let ws = back.endpoint(ProbeEndpoint::Wireserver).unwrap();
        assert_eq!(ws.address, "not checked (--cloud aws)");
        assert!(ws.classes.is_empty() && !ws.sensitive);
    }
}
