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
/// checks left out), WireServer and HostGAPlugin are `not-checked`, and each extra TCP
/// check is an endpoint of its own: `imds-ipv6` (`--ipv6`), `pod-identity` and
/// `pod-identity-ipv6` (`--pod-identity`, the latter with `--ipv6`). An extra check the
/// probe was not asked for is left out of the message (`verify` reads a missing
/// endpoint as not checked): a `verify` older than these endpoints, which never asks
/// for them, reads the message of a newer probe image as before.
pub(crate) fn termination_message(config: &ProbeConfig, report: &Report) -> ProbeResult {
    if config.cloud != Cloud::Azure {
        return cloud_termination_message(config, report);
    }
    let endpoints = ProbeEndpoint::of_cloud(Cloud::Azure)
        .iter()
        .map(|&endpoint| {
            let address = match endpoint {
                ProbeEndpoint::Imds => Some(config.endpoint.authority()),
                ProbeEndpoint::Wireserver => config.wireserver.as_ref().map(|u| u.authority()),
                ProbeEndpoint::Hostgaplugin => config.hostgaplugin.as_ref().map(|u| u.authority()),
                // Not Azure's endpoints.
                ProbeEndpoint::ImdsIpv6
                | ProbeEndpoint::PodIdentity
                | ProbeEndpoint::PodIdentityIpv6 => None,
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

/// [`termination_message`] under `--cloud aws|gcp`.
fn cloud_termination_message(config: &ProbeConfig, report: &Report) -> ProbeResult {
    use imdsguard_probe::StepName;
    let steps = |endpoint: ProbeEndpoint| -> Vec<(&str, Option<u16>, bool)> {
        report
            .steps
            .iter()
            .filter(|s| {
                let extra = matches!(s.name, StepName::TcpConnectIpv6 | StepName::PodIdentityTcp);
                if endpoint == ProbeEndpoint::Imds {
                    !extra
                } else {
                    extra && ProbeEndpoint::of_step_to(s.name.as_str(), &s.target) == Some(endpoint)
                }
            })
            .map(|s| (s.class.as_str(), s.http_status, s.class.is_sensitive()))
            .collect()
    };
    let not_checked = format!("not checked (--cloud {})", config.cloud.name());
    let mut endpoints: Vec<EndpointResult> = vec![
        EndpointResult::from_steps(
            ProbeEndpoint::Imds,
            config.endpoint.authority(),
            steps(ProbeEndpoint::Imds),
        ),
        EndpointResult::from_steps(ProbeEndpoint::Wireserver, not_checked.clone(), Vec::new()),
        EndpointResult::from_steps(ProbeEndpoint::Hostgaplugin, not_checked, Vec::new()),
    ];
    // The extra TCP checks asked for, each at the address the probe went to.
    let extra = config
        .ipv6_endpoint
        .iter()
        .map(|url| (StepName::TcpConnectIpv6, url))
        .chain(
            config
                .pod_identity
                .iter()
                .map(|url| (StepName::PodIdentityTcp, url)),
        );
    for (name, url) in extra {
        let address = url.authority();
        if let Some(endpoint) = ProbeEndpoint::of_step_to(name.as_str(), &address) {
            endpoints.push(EndpointResult::from_steps(
                endpoint,
                address,
                steps(endpoint),
            ));
        }
    }
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

    fn step_to(name: StepName, target: &str, class: Class) -> Step {
        Step {
            target: target.into(),
            ..step(name, class, None)
        }
    }

    fn cloud_report(cloud: Cloud, config: &ProbeConfig, steps: Vec<Step>) -> Report {
        Report {
            cloud,
            endpoint: config.endpoint.to_string(),
            wireserver: None,
            hostgaplugin: None,
            api_version: None,
            token_api_version: None,
            identities: Vec::new(),
            steps,
            summary: Summary {
                sensitive: true,
                reachable: vec!["the credentials of role r, and a long sentence".repeat(8); 60],
                counts: Default::default(),
                exit_code: 1,
            },
        }
    }

    /// The dual-stack bypass: IMDS blocked on IPv4, open on IPv6; the Pod Identity
    /// agent open on IPv4, blocked on IPv6. Each TCP check is its own endpoint, and the
    /// IMDS entry keeps its own steps only.
    #[test]
    fn termination_message_of_the_extra_tcp_checks() {
        let settings = parse(&["--cloud", "aws", "--ipv6", "--pod-identity"])
            .unwrap()
            .settings();
        let config = ProbeConfig::from_settings(&settings).unwrap();
        let report = cloud_report(
            Cloud::Aws,
            &config,
            vec![
                step_to(
                    StepName::TcpConnect,
                    "169.254.169.254:80",
                    Class::BlockedTimeout,
                ),
                step_to(
                    StepName::TcpConnectIpv6,
                    "[fd00:ec2::254]:80",
                    Class::Reachable,
                ),
                step_to(
                    StepName::PodIdentityTcp,
                    "169.254.170.23:80",
                    Class::Reachable,
                ),
                step_to(
                    StepName::PodIdentityTcp,
                    "[fd00:ec2::23]:80",
                    Class::BlockedRefused,
                ),
                step(StepName::Imdsv1, Class::NotChecked, None),
                step(StepName::Credentials, Class::NotChecked, None),
            ],
        );
        let text = termination_message(&config, &report).to_message();
        assert!(text.len() <= imdsguard_kube::verify::message::MAX_MESSAGE_BYTES);
        let back = ProbeResult::from_message(&text).unwrap();
        let got: Vec<(ProbeEndpoint, &str, Seen, Vec<String>)> = back
            .endpoints
            .iter()
            .map(|e| (e.endpoint, e.address.as_str(), e.seen, e.classes.clone()))
            .collect();
        let classes = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                (
                    ProbeEndpoint::Imds,
                    "169.254.169.254:80",
                    Seen::Blocked,
                    classes(&["blocked-timeout", "not-checked"])
                ),
                (
                    ProbeEndpoint::Wireserver,
                    "not checked (--cloud aws)",
                    Seen::Unknown,
                    Vec::new()
                ),
                (
                    ProbeEndpoint::Hostgaplugin,
                    "not checked (--cloud aws)",
                    Seen::Unknown,
                    Vec::new()
                ),
                (
                    ProbeEndpoint::ImdsIpv6,
                    "[fd00:ec2::254]:80",
                    Seen::Reachable,
                    classes(&["reachable"])
                ),
                (
                    ProbeEndpoint::PodIdentity,
                    "169.254.170.23:80",
                    Seen::Reachable,
                    classes(&["reachable"])
                ),
                (
                    ProbeEndpoint::PodIdentityIpv6,
                    "[fd00:ec2::23]:80",
                    Seen::Blocked,
                    classes(&["blocked-refused"])
                ),
            ]
        );
        // The endpoints stay whole; the sentences are what gives way.
        assert!(back.reachable.len() < 60);

        // GCP: its own IPv6 address, no Pod Identity agent.
        let settings = parse(&["--cloud", "gcp", "--ipv6"]).unwrap().settings();
        let config = ProbeConfig::from_settings(&settings).unwrap();
        let report = cloud_report(
            Cloud::Gcp,
            &config,
            vec![
                step_to(StepName::TcpConnect, "169.254.169.254:80", Class::Reachable),
                step_to(
                    StepName::TcpConnectIpv6,
                    "[fd20:ce::254]:80",
                    Class::BlockedTimeout,
                ),
                step(StepName::ProjectId, Class::Readable, Some(200)),
            ],
        );
        let back =
            ProbeResult::from_message(&termination_message(&config, &report).to_message()).unwrap();
        assert_eq!(
            back.endpoints
                .iter()
                .map(|e| e.endpoint)
                .collect::<Vec<_>>(),
            [
                ProbeEndpoint::Imds,
                ProbeEndpoint::Wireserver,
                ProbeEndpoint::Hostgaplugin,
                ProbeEndpoint::ImdsIpv6
            ]
        );
        let imds = back.endpoint(ProbeEndpoint::Imds).unwrap();
        assert_eq!(imds.classes, ["reachable", "readable"]);
        let v6 = back.endpoint(ProbeEndpoint::ImdsIpv6).unwrap();
        assert_eq!(
            (v6.address.as_str(), v6.seen),
            ("[fd20:ce::254]:80", Seen::Blocked)
        );
    }

    /// Without --ipv6 and --pod-identity the message is the one verify read before
    /// these endpoints: IMDS, WireServer and HostGAPlugin only.
    #[test]
    fn termination_message_without_the_extra_checks_lists_none_of_them() {
        let settings = parse(&["--cloud", "aws"]).unwrap().settings();
        let config = ProbeConfig::from_settings(&settings).unwrap();
        let report = cloud_report(
            Cloud::Aws,
            &config,
            vec![step_to(
                StepName::TcpConnect,
                "169.254.169.254:80",
                Class::Reachable,
            )],
        );
        let back =
            ProbeResult::from_message(&termination_message(&config, &report).to_message()).unwrap();
        assert_eq!(
            back.endpoints
                .iter()
                .map(|e| e.endpoint)
                .collect::<Vec<_>>(),
            [
                ProbeEndpoint::Imds,
                ProbeEndpoint::Wireserver,
                ProbeEndpoint::Hostgaplugin
            ]
        );
        // --pod-identity alone: the agent on IPv4 only.
        let settings = parse(&["--cloud", "aws", "--pod-identity"])
            .unwrap()
            .settings();
        let config = ProbeConfig::from_settings(&settings).unwrap();
        let report = cloud_report(
            Cloud::Aws,
            &config,
            vec![
                step_to(StepName::TcpConnect, "169.254.169.254:80", Class::Reachable),
                step_to(
                    StepName::PodIdentityTcp,
                    "169.254.170.23:80",
                    Class::BlockedTimeout,
                ),
            ],
        );
        let back =
            ProbeResult::from_message(&termination_message(&config, &report).to_message()).unwrap();
        assert_eq!(
            back.endpoints
                .iter()
                .map(|e| e.endpoint)
                .collect::<Vec<_>>(),
            [
                ProbeEndpoint::Imds,
                ProbeEndpoint::Wireserver,
                ProbeEndpoint::Hostgaplugin,
                ProbeEndpoint::PodIdentity
            ]
        );
        assert_eq!(
            back.endpoint(ProbeEndpoint::Imds).unwrap().classes,
            ["reachable"]
        );
    }
}
