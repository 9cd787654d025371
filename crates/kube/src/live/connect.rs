//! A client for the cluster of a kubeconfig context, found the way kubectl finds it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::error::{LiveError, Looked};

/// How long to wait for a TCP connection to the API server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The kubeconfig files to read, as kubectl chooses them: `--kubeconfig`, else every
/// existing file of `KUBECONFIG` (missing ones are ignored, as kubectl does), else
/// `~/.kube/config`. `Err` lists where it looked.
fn kubeconfig_paths(flag: Option<&Path>) -> Result<Vec<PathBuf>, Vec<Looked>> {
    if let Some(p) = flag {
        return if p.is_file() {
            Ok(vec![p.to_path_buf()])
        } else {
            Err(vec![Looked::Flag(p.to_path_buf())])
        };
    }
    if let Some(value) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let listed: Vec<PathBuf> = std::env::split_paths(&value)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !listed.is_empty() {
            let found: Vec<PathBuf> = listed.iter().filter(|p| p.is_file()).cloned().collect();
            return if found.is_empty() {
                Err(listed.into_iter().map(Looked::Env).collect())
            } else {
                Ok(found)
            };
        }
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => {
            let p = PathBuf::from(home).join(".kube").join("config");
            if p.is_file() {
                Ok(vec![p])
            } else {
                Err(vec![Looked::Home(p)])
            }
        }
        None => Err(vec![Looked::NoHome]),
    }
}

/// Reads and merges the kubeconfig files (the first file to set a value wins).
fn read_kubeconfig(paths: &[PathBuf]) -> Result<Kubeconfig, LiveError> {
    let mut merged = Kubeconfig::default();
    for p in paths {
        let unreadable = |reason: String| LiveError::KubeconfigUnreadable {
            path: p.clone(),
            reason,
        };
        let one = Kubeconfig::read_from(p).map_err(|e| unreadable(e.to_string()))?;
        merged = merged.merge(one).map_err(|e| unreadable(e.to_string()))?;
    }
    Ok(merged)
}

/// A client for the cluster, with the names the report gives it.
#[derive(Clone)]
pub struct Connection {
    /// The client.
    pub client: Client,
    /// The context's name (`in-cluster` for a pod's service account).
    pub context: String,
    /// The API server's URL.
    pub server: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("context", &self.context)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection from a client made elsewhere (tests, embedding programs).
    pub fn from_client(client: Client, context: &str, server: &str) -> Connection {
        Connection {
            client,
            context: context.to_string(),
            server: server.to_string(),
        }
    }

    /// `cluster <context> at <server>`, as the report names its source.
    pub fn describe(&self) -> String {
        format!("cluster {} at {}", self.context, self.server)
    }
}

/// Connects to the cluster of `context` (default: the kubeconfig's current context) in
/// the kubeconfig kubectl would read; in a pod with no kubeconfig, to its own cluster
/// with its service account. Nothing is sent to the server yet.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Connection, LiveError> {
    let paths = match kubeconfig_paths(kubeconfig) {
        Ok(p) => p,
        Err(looked) => {
            // kubectl's fallback in a pod: the service account's in-cluster config.
            if kubeconfig.is_none()
                && context.is_none()
                && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
                && let Ok(config) = Config::incluster()
            {
                return client_from(config, "in-cluster");
            }
            return Err(LiveError::NoKubeconfig { looked });
        }
    };
    let kc = read_kubeconfig(&paths)?;
    let available: Vec<String> = kc.contexts.iter().map(|c| c.name.clone()).collect();
    let name = match context.map(str::to_string).or(kc.current_context.clone()) {
        Some(n) if !n.is_empty() => n,
        _ => return Err(LiveError::NoCurrentContext { available }),
    };
    if !available.contains(&name) {
        return Err(LiveError::UnknownContext {
            context: name,
            available,
        });
    }
    let options = KubeConfigOptions {
        context: Some(name.clone()),
        ..KubeConfigOptions::default()
    };
    let config = Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| LiveError::BadContext {
            context: name.clone(),
            reason: e.to_string(),
        })?;
    client_from(config, &name)
}

fn client_from(mut config: Config, context: &str) -> Result<Connection, LiveError> {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let server = config.cluster_url.to_string();
    let server = server.strip_suffix('/').unwrap_or(&server).to_string();
    let client = Client::try_from(config).map_err(|e| LiveError::BadContext {
        context: context.to_string(),
        reason: super::chain(&e),
    })?;
    Ok(Connection {
        client,
        context: context.to_string(),
        server,
    })
}
