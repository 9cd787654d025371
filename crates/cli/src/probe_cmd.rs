//! `imdsguard probe`: the flags of the attacker-path probe, its runtime and its output;
//! the probe itself is `imdsguard-probe`.
//!
//! Exit status: 0 nothing sensitive reachable, 1 something is, 2 usage error.

use std::io::{self, Write as _};
use std::time::Duration;

use clap::{Args, ValueEnum};
use imdsguard_probe::{
    DEFAULT_API_VERSION, DEFAULT_TOKEN_API_VERSION, ExitStatusCode, ProbeConfig, ProbeSettings,
};

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

/// Walk the attacker's path against Azure IMDS (and WireServer) from where this runs,
/// and report each step: reachability, the instance document, identities, tokens.
///
/// Exit status: 0 when nothing sensitive is reachable, 1 when something is (instance
/// data, a token, WireServer data), 2 on usage errors.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProbeArgs {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
}
