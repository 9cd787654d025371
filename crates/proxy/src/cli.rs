//! `imdsguard proxy`: arguments, file loading and reloading, logging, signals.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use imdsguard_core::access::{AccessRules, PodIndex};

use crate::{Limits, Proxy, ProxyConfig, ProxyControl, ProxyError, Timeouts, Upstream};

/// The proxy's listen address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8170";
/// The admin listen address when none is given.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9170";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Reads a duration: `500ms`, `2s`, `1.5s`, `1m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (500ms, 2s, 1.5s, 1m)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// `imdsguard proxy`: the filtering metadata proxy.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Address to listen on for pods' IMDS requests.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Do not start the admin listener.
    #[arg(long)]
    pub no_admin: bool,
    /// The metadata service to forward allowed requests to (http://HOST[:PORT]).
    #[arg(long, value_name = "URL", default_value = crate::DEFAULT_UPSTREAM)]
    pub upstream: String,
    /// Access rules (YAML or JSON; see docs/proxy.md).
    #[arg(long, value_name = "FILE")]
    pub rules: PathBuf,
    /// Pods by address (YAML/JSON list of {ip, namespace, name, labels, serviceAccount},
    /// or a Kubernetes PodList). Without it every caller is unknown and denied.
    #[arg(long, value_name = "FILE")]
    pub pods: Option<PathBuf>,
    /// How often to look for changed rules or pods files (0: only on SIGHUP).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Host accepted in absolute-form request targets (http://HOST/...); repeatable.
    #[arg(
        long = "absolute-form-host",
        value_name = "HOST[:PORT]",
        default_value = "169.254.169.254"
    )]
    pub absolute_form_hosts: Vec<String>,
    /// Time for a client to send its request headers (also the idle keep-alive time).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Time for a client to send a request body (POST).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Time to connect to the upstream.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time for the upstream's whole answer.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Most client connections at once.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// Largest request body in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_body: usize,
    /// Largest upstream answer in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_response: usize,
    /// Allow listening on 169.254.169.254 or 168.63.129.16 (where the proxy owns the address).
    #[arg(long)]
    pub allow_metadata_address: bool,
    /// Log format (standard error).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Check the rules and pods files, print a summary and exit.
    #[arg(long)]
    pub check: bool,
}

impl ProxyArgs {
    /// The library configuration these arguments stand for (files read).
    pub fn config(&self) -> Result<ProxyConfig, ProxyError> {
        let mut config = ProxyConfig::new(self.listen, Upstream::parse(&self.upstream)?);
        config.admin_listen = (!self.no_admin).then_some(self.admin_listen);
        config.allow_metadata_address = self.allow_metadata_address;
        config.rules = Some(read_rules(&self.rules)?);
        if let Some(p) = &self.pods {
            config.pods = read_pods(p)?;
        }
        config.absolute_form_hosts = self.absolute_form_hosts.clone();
        config.timeouts = Timeouts {
            header_read: self.header_timeout,
            request_body: self.body_timeout,
            upstream_connect: self.connect_timeout,
            upstream_response: self.upstream_timeout,
        };
        config.limits = Limits {
            max_request_body: self.max_body,
            max_response_body: self.max_response,
            max_connections: self.max_connections,
            ..Limits::default()
        };
        config.check()?;
        Ok(config)
    }
}

fn read(path: &Path) -> Result<String, ProxyError> {
    std::fs::read_to_string(path).map_err(|source| ProxyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and checks a rules file.
pub fn read_rules(path: &Path) -> Result<AccessRules, ProxyError> {
    AccessRules::parse(&read(path)?).map_err(|source| ProxyError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and checks a pods file.
pub fn read_pods(path: &Path) -> Result<PodIndex, ProxyError> {
    PodIndex::parse(&read(path)?).map_err(|source| ProxyError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Another subscriber (the CLI's) may already be installed: keep it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs `imdsguard proxy`: reads the files, starts the proxy on a tokio runtime of its
/// own, prints one line per listener on standard output (`proxy http://…`,
/// `admin http://…`), reloads the files on SIGHUP and when they change, and stops on
/// SIGINT or SIGTERM, letting requests in flight finish. With `--check`, only reads
/// the files and prints a summary.
pub fn run(args: ProxyArgs) -> Result<(), ProxyError> {
    let config = args.config()?;
    if args.check {
        let rules = config.rules.as_ref().expect("read above");
        let names: Vec<&str> = rules.rules().iter().map(|r| &*r.name).collect();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}: {} rule(s): {}",
            args.rules.display(),
            rules.len(),
            names.join(", ")
        );
        if let Some(p) = &args.pods {
            let _ = writeln!(out, "{}: {} address(es)", p.display(), config.pods.len());
        }
        return Ok(());
    }
    init_logging(args.log_format);
    if args.pods.is_none() {
        tracing::warn!("no --pods file: every caller is an unknown source and is denied");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    runtime.block_on(async move {
        let proxy = Proxy::start(config).await?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "proxy http://{}", proxy.local_addr());
            if let Some(a) = proxy.admin_addr() {
                let _ = writeln!(out, "admin http://{a}");
            }
            let _ = out.flush();
        }
        let reloader = tokio::spawn(reload_loop(
            proxy.control(),
            args.rules.clone(),
            args.pods.clone(),
            args.reload_interval,
        ));
        wait_for_stop_signal().await;
        tracing::info!("stopping");
        reloader.abort();
        proxy.shutdown().await;
        Ok(())
    })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads a file into the proxy; a bad file is logged and the old contents kept.
fn reload_file(control: &ProxyControl, which: &'static str, path: &Path) {
    let result = if which == "rules" {
        read_rules(path).map(|r| {
            let n = r.len();
            control.set_rules(r);
            n
        })
    } else {
        read_pods(path).map(|p| {
            let n = p.len();
            control.set_pods(p);
            n
        })
    };
    control.metrics().record_reload(which, result.is_ok());
    match result {
        Ok(n) => tracing::info!(file = %path.display(), entries = n, "{which} reloaded"),
        Err(e) => tracing::error!(error = %e, "{which} not reloaded; keeping the previous ones"),
    }
}

async fn reload_loop(
    control: ProxyControl,
    rules: PathBuf,
    pods: Option<PathBuf>,
    interval: Duration,
) {
    let mut files: Vec<(&'static str, PathBuf, Option<SystemTime>)> =
        vec![("rules", rules.clone(), mtime(&rules))];
    if let Some(p) = pods {
        let m = mtime(&p);
        files.push(("pods", p, m));
    }
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let poll = if interval.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        interval
    };
    loop {
        #[cfg(unix)]
        let forced = {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = hup_recv => true,
                _ = tokio::time::sleep(poll) => false,
            }
        };
        #[cfg(not(unix))]
        let forced = {
            tokio::time::sleep(poll).await;
            false
        };
        for (which, path, last) in files.iter_mut() {
            let now = mtime(path);
            if forced || now != *last {
                *last = now;
                reload_file(&control, which, path);
            }
        }
    }
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProxyArgs,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "x", "-1s", "NaN", "inf", "99999999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reloads_replace_good_files_and_keep_the_old_on_errors() {
        let dir =
            std::env::temp_dir().join(format!("imdsguard-proxy-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        let pods = dir.join("pods.json");
        let control = ProxyControl::detached();
        assert!(control.readiness().is_err());

        std::fs::write(
            &rules,
            "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/versions]}]",
        )
        .unwrap();
        reload_file(&control, "rules", &rules);
        assert_eq!(
            control.rules().as_ref().as_ref().unwrap().rules()[0]
                .name
                .as_ref(),
            "a"
        );
        assert!(control.readiness().is_ok());
        std::fs::write(&rules, "rules: [{name: b, subjects: [{namespace: x}]}]").unwrap();
        reload_file(&control, "rules", &rules);
        assert_eq!(
            control.rules().as_ref().as_ref().unwrap().rules()[0]
                .name
                .as_ref(),
            "a",
            "kept"
        );

        std::fs::write(&pods, r#"[{"ip":"10.0.0.1","namespace":"n","name":"p"}]"#).unwrap();
        reload_file(&control, "pods", &pods);
        assert_eq!(control.pods().len(), 1);
        std::fs::write(&pods, "not: [pods").unwrap();
        reload_file(&control, "pods", &pods);
        assert_eq!(control.pods().len(), 1, "kept");

        let text = control.metrics().encode();
        for want in [
            r#"imdsguard_proxy_reloads_total{file="rules",result="ok"} 1"#,
            r#"imdsguard_proxy_reloads_total{file="rules",result="error"} 1"#,
            r#"imdsguard_proxy_reloads_total{file="pods",result="error"} 1"#,
            "imdsguard_proxy_pods 1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn arguments_map_to_the_configuration() {
        let dir = std::env::temp_dir().join(format!("imdsguard-proxy-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        let pods = dir.join("pods.yaml");
        std::fs::write(
            &rules,
            "rules: [{name: v, subjects: [{namespace: '*'}], paths: [/metadata/versions]}]",
        )
        .unwrap();
        std::fs::write(&pods, "[{ip: 127.0.0.2, namespace: a, name: b}]").unwrap();
        let cli = Cli::try_parse_from([
            "proxy",
            "--rules",
            rules.to_str().unwrap(),
            "--pods",
            pods.to_str().unwrap(),
            "--upstream",
            "http://127.0.0.1:8169",
            "--connect-timeout",
            "250ms",
            "--no-admin",
        ])
        .unwrap();
        let c = cli.args.config().unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.upstream.authority(), "127.0.0.1:8169");
        assert_eq!(c.rules.as_ref().unwrap().len(), 1);
        assert_eq!(c.pods.len(), 1);
        assert_eq!(c.timeouts.upstream_connect, Duration::from_millis(250));
        assert_eq!(c.absolute_form_hosts, vec!["169.254.169.254".to_string()]);

        // Defaults: IMDS upstream, admin on loopback.
        let cli = Cli::try_parse_from(["proxy", "--rules", rules.to_str().unwrap()]).unwrap();
        let c = cli.args.config().unwrap();
        assert_eq!(c.upstream, Upstream::default());
        assert_eq!(c.admin_listen, Some(DEFAULT_ADMIN_LISTEN.parse().unwrap()));

        // Errors name the file; the metadata address is refused before anything runs.
        std::fs::write(&rules, "rules: [{name: v}]").unwrap();
        let cli = Cli::try_parse_from(["proxy", "--rules", rules.to_str().unwrap()]).unwrap();
        let e = run(cli.args).unwrap_err().to_string();
        assert!(e.contains("rules.yaml") && e.contains("rule `v`"), "{e}");
        let cli = Cli::try_parse_from(["proxy", "--rules", "/nonexistent/r.yaml"]).unwrap();
        assert!(matches!(run(cli.args), Err(ProxyError::Read { .. })));
        std::fs::write(&rules, "rules: []").unwrap();
        let cli = Cli::try_parse_from([
            "proxy",
            "--rules",
            rules.to_str().unwrap(),
            "--listen",
            "169.254.169.254:80",
        ])
        .unwrap();
        assert!(matches!(run(cli.args), Err(ProxyError::MetadataAddress(_))));
        assert!(
            Cli::try_parse_from(["proxy"]).is_err(),
            "--rules is required"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
