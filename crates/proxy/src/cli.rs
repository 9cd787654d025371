//! `imdsguard proxy`: arguments, file loading and reloading, logging, signals.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imdsguard_core::access::{AccessRules, PodIndex};

use crate::files::{self, FileStamp, WatchedFile};
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
    /// Accept a rules file with no rules (every request denied) and be ready with it;
    /// without this an empty or comment-only rules file is an error.
    #[arg(long)]
    pub allow_empty_rules: bool,
    /// Accept a pods file with no pods (every caller unknown and denied); without this
    /// an empty or comment-only pods file is an error.
    #[arg(long)]
    pub allow_empty_pods: bool,
    /// How often to look for changed rules or pods files (0: only on SIGHUP). A file
    /// counts as changed when the file its path leads to is another (a rename over it)
    /// or its size or times changed.
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
    /// Most client connections at once from one source address (more are closed on
    /// accept); at most --max-connections.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections_per_source: usize,
    /// Requests per second each pod (or unknown source address) may send to the
    /// instance document, versions, scheduled events... (IMDS allows the VM 5); over it
    /// the pod gets IMDS's 429 with Retry-After. 0: no limit.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 2.0)]
    pub pod_rate: f64,
    /// The same for the managed-identity endpoints (IMDS allows the VM 20). 0: no limit.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 5.0)]
    pub pod_identity_rate: f64,
    /// Requests a pod may send at once above its rates (per class).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub pod_burst: u32,
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
        self.load().map(|(config, _)| config)
    }

    /// The configuration and the stamps of the rules and pods files as read.
    fn load(&self) -> Result<(ProxyConfig, Stamps), ProxyError> {
        let mut config = ProxyConfig::new(self.listen, Upstream::parse(&self.upstream)?);
        config.admin_listen = (!self.no_admin).then_some(self.admin_listen);
        config.allow_metadata_address = self.allow_metadata_address;
        config.allow_empty_rules = self.allow_empty_rules;
        let (rules, rules_stamp) = read_rules(&self.rules, self.allow_empty_rules)?;
        config.rules = Some(rules);
        let mut pods_stamp = None;
        if let Some(p) = &self.pods {
            let (pods, stamp) = read_pods(p, self.allow_empty_pods)?;
            config.pods = pods;
            pods_stamp = Some(stamp);
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
            max_connections_per_source: self.max_connections_per_source,
            ..Limits::default()
        };
        config.pod_rate = crate::PodRate {
            general: self.pod_rate,
            identity: self.pod_identity_rate,
            burst: self.pod_burst,
        };
        config.check()?;
        Ok((
            config,
            Stamps {
                rules: rules_stamp,
                pods: pods_stamp,
            },
        ))
    }
}

/// The rules and pods files as they were when read.
struct Stamps {
    rules: FileStamp,
    pods: Option<FileStamp>,
}

/// Checks the text of the rules file `path`: no rules at all (an empty or comment-only
/// file, `rules: []`) is an error unless `allow_empty`.
pub fn parse_rules(path: &Path, text: &str, allow_empty: bool) -> Result<AccessRules, ProxyError> {
    let file_error = |source| ProxyError::File {
        path: path.to_path_buf(),
        source,
    };
    let rules = if files::is_blank(text) {
        AccessRules::new(Vec::new()).map_err(file_error)?
    } else {
        AccessRules::parse(text).map_err(file_error)?
    };
    files::check_entries(
        path,
        rules.len(),
        "access rules",
        "--allow-empty-rules",
        allow_empty,
    )?;
    Ok(rules)
}

/// Checks the text of the pods file `path`: no pods at all is an error unless
/// `allow_empty`.
pub fn parse_pods(path: &Path, text: &str, allow_empty: bool) -> Result<PodIndex, ProxyError> {
    let pods = if files::is_blank(text) {
        PodIndex::new()
    } else {
        PodIndex::parse(text).map_err(|source| ProxyError::File {
            path: path.to_path_buf(),
            source,
        })?
    };
    files::check_entries(path, pods.len(), "pods", "--allow-empty-pods", allow_empty)?;
    for issue in pods.issues() {
        tracing::warn!(file = %path.display(), issue = %issue, "pods file: left out");
    }
    Ok(pods)
}

/// Reads and checks a rules file (a regular file, never waiting on a FIFO; see
/// [`files::read_regular`]).
pub fn read_rules(path: &Path, allow_empty: bool) -> Result<(AccessRules, FileStamp), ProxyError> {
    let (text, stamp) = files::read_regular(path)?;
    Ok((parse_rules(path, &text, allow_empty)?, stamp))
}

/// Reads and checks a pods file (a regular file, never waiting on a FIFO).
pub fn read_pods(path: &Path, allow_empty: bool) -> Result<(PodIndex, FileStamp), ProxyError> {
    let (text, stamp) = files::read_regular(path)?;
    Ok((parse_pods(path, &text, allow_empty)?, stamp))
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
    let (config, stamps) = args.load()?;
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
            for issue in config.pods.issues() {
                let _ = writeln!(out, "{}: left out: {issue}", p.display());
            }
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
        let mut watched = vec![Watched::rules(
            WatchedFile::new(&args.rules, Some(stamps.rules)),
            args.allow_empty_rules,
        )];
        if let Some(p) = &args.pods {
            watched.push(Watched::pods(
                WatchedFile::new(p, stamps.pods),
                args.allow_empty_pods,
            ));
        }
        let reloader = tokio::spawn(reload_loop(proxy.control(), watched, args.reload_interval));
        wait_for_stop_signal().await;
        tracing::info!("stopping");
        reloader.abort();
        proxy.shutdown().await;
        Ok(())
    })
}

/// A rules or pods file followed by the reload loop.
struct Watched {
    file: WatchedFile,
    which: &'static str,
    allow_empty: bool,
}

impl Watched {
    fn rules(file: WatchedFile, allow_empty: bool) -> Watched {
        Watched {
            file,
            which: "rules",
            allow_empty,
        }
    }

    fn pods(file: WatchedFile, allow_empty: bool) -> Watched {
        Watched {
            file,
            which: "pods",
            allow_empty,
        }
    }

    /// Reads the file when it changed (always when `forced`) and hands it to the proxy.
    /// The read and the parsing run off the runtime with a deadline; a file that cannot
    /// be read or is refused is logged and counted, and the proxy keeps what it had.
    async fn reload(&mut self, control: &ProxyControl, forced: bool) {
        let allow_empty = self.allow_empty;
        let which = self.which;
        let result = if which == "rules" {
            self.file
                .poll(forced, move |path, text| {
                    parse_rules(path, text, allow_empty)
                })
                .await
                .map(|r| {
                    r.map(|rules| {
                        let n = rules.len();
                        control.set_rules(rules);
                        n
                    })
                })
        } else {
            self.file
                .poll(forced, move |path, text| {
                    parse_pods(path, text, allow_empty)
                })
                .await
                .map(|r| {
                    r.map(|pods| {
                        let n = pods.len();
                        control.set_pods(pods);
                        n
                    })
                })
        };
        let Some(result) = result else { return };
        control.metrics().record_reload(which, result.is_ok());
        match result {
            Ok(n) => {
                tracing::info!(file = %self.file.path().display(), entries = n, "{which} reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "{which} not reloaded; keeping the previous ones")
            }
        }
    }
}

async fn reload_loop(control: ProxyControl, mut files: Vec<Watched>, interval: Duration) {
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
        for file in files.iter_mut() {
            file.reload(&control, forced).await;
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

    /// Writes `text` to `path` as a writer should: a new file renamed over the old.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[tokio::test]
    async fn reloads_replace_good_files_and_keep_the_old_on_errors() {
        let dir =
            std::env::temp_dir().join(format!("imdsguard-proxy-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        let pods = dir.join("pods.json");
        let control = ProxyControl::detached();
        assert!(control.readiness().is_err());
        let rule_name = |c: &ProxyControl| {
            c.rules().as_ref().as_ref().unwrap().rules()[0]
                .name
                .to_string()
        };

        replace(
            &rules,
            "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/versions]}]",
        );
        let mut r = Watched::rules(WatchedFile::new(&rules, None), false);
        r.reload(&control, false).await;
        assert_eq!(rule_name(&control), "a");
        assert!(control.readiness().is_ok());
        assert_eq!(control.summary(), "1 access rules, 0 pod addresses");
        replace(&rules, "rules: [{name: b, subjects: [{namespace: x}]}]");
        r.reload(&control, false).await;
        assert_eq!(rule_name(&control), "a", "kept");

        // Emptied, or cut down to its comments: refused, the old rules stay.
        for empty in ["", "# rules: [{name: c}]\n", "rules: []"] {
            replace(&rules, empty);
            r.reload(&control, false).await;
            assert_eq!(rule_name(&control), "a", "{empty:?} refused");
        }
        // A FIFO in its place: refused without blocking, the old rules stay.
        std::fs::remove_file(&rules).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(&rules)
            .status()
            .unwrap();
        assert!(st.success());
        tokio::time::timeout(Duration::from_secs(5), r.reload(&control, true))
            .await
            .expect("a FIFO does not block the reload");
        assert_eq!(rule_name(&control), "a");
        std::fs::remove_file(&rules).unwrap();

        // Empty rules when allowed: loaded, and ready with them.
        let mut allowed = Watched::rules(WatchedFile::new(&rules, None), true);
        replace(&rules, "# nothing yet\n");
        allowed.reload(&control, false).await;
        assert_eq!(control.rules().as_ref().as_ref().unwrap().len(), 0);

        let mut p = Watched::pods(WatchedFile::new(&pods, None), false);
        replace(&pods, r#"[{"ip":"10.0.0.1","namespace":"n","name":"p"}]"#);
        p.reload(&control, false).await;
        assert_eq!(control.pods().len(), 1);
        replace(&pods, "not: [pods");
        p.reload(&control, false).await;
        assert_eq!(control.pods().len(), 1, "kept");
        replace(&pods, "[]");
        p.reload(&control, false).await;
        assert_eq!(control.pods().len(), 1, "kept");

        let text = control.metrics().encode();
        for want in [
            r#"imdsguard_proxy_reloads_total{file="rules",result="ok"} 2"#,
            r#"imdsguard_proxy_reloads_total{file="rules",result="error"} 5"#,
            r#"imdsguard_proxy_reloads_total{file="pods",result="error"} 2"#,
            "imdsguard_proxy_pods 1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn readiness_needs_rules_and_at_least_one_unless_allowed() {
        let control = ProxyControl::detached();
        let e = control.readiness().unwrap_err();
        assert!(e.contains("not loaded"), "{e}");
        control.set_rules(AccessRules::new(Vec::new()).unwrap());
        let e = control.readiness().unwrap_err();
        assert!(
            e.contains("0 access rules") && e.contains("--allow-empty-rules"),
            "{e}"
        );
        assert_eq!(control.summary(), "0 access rules, 0 pod addresses");
        let allowed = ProxyControl {
            allow_empty_rules: true,
            ..control
        };
        assert!(allowed.readiness().is_ok());
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
        assert!(matches!(
            run(cli.args),
            Err(ProxyError::Input(files::FileError::Open { .. }))
        ));
        // No rules: refused unless allowed.
        std::fs::write(&rules, "rules: []").unwrap();
        let cli = Cli::try_parse_from(["proxy", "--rules", rules.to_str().unwrap()]).unwrap();
        let e = run(cli.args).unwrap_err().to_string();
        assert!(
            e.contains("rules.yaml") && e.contains("--allow-empty-rules"),
            "{e}"
        );
        let cli = Cli::try_parse_from([
            "proxy",
            "--rules",
            rules.to_str().unwrap(),
            "--allow-empty-rules",
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
