//! What the lab does per cloud (`imdsguard lab --cloud`): the pods (dual-stack for AWS
//! and GCP), the addresses the cloud namespace holds, the proxy's rules and pods, and
//! the probe of one row. Azure's world is the lab's original one, unchanged.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use imdsguard_core::target::{
    AWS_ECS_TASK_METADATA, AWS_IMDS_IPV6, AWS_POD_IDENTITY, AWS_POD_IDENTITY_IPV6, Cloud,
    GCP_METADATA_IPV6, Target,
};
use imdsguard_node::sandbox::{self, CLOUD_ADDRESSES, PodSpec};
use imdsguard_probe::{
    BaseUrl, Class, DEFAULT_ENDPOINT, DEFAULT_HOSTGAPLUGIN, DEFAULT_WIRESERVER, ProbeConfig,
    Report, StepName,
};

use crate::report::{EndpointCell, IMDS_IPV6, Row};

/// The lab's pods: Azure's IPv4 pods, or the same pods dual-stack for AWS and GCP.
pub(crate) fn pods(cloud: Cloud) -> Vec<PodSpec> {
    match cloud {
        Cloud::Azure => sandbox::lab_pods(),
        _ => sandbox::dual_stack_lab_pods(),
    }
}

/// The addresses the cloud namespace holds: Azure's IMDS and WireServer, or every
/// address of AWS's or GCP's endpoints (both families) and its DNS resolver's.
pub(crate) fn addresses(cloud: Cloud) -> Vec<IpAddr> {
    match cloud {
        Cloud::Azure => CLOUD_ADDRESSES.iter().map(|a| IpAddr::V4(*a)).collect(),
        _ => sandbox::cloud_addresses(cloud),
    }
}

/// The cloud's metadata service over IPv6, where the lab probes it too.
pub(crate) fn imds_ipv6(cloud: Cloud) -> Option<Target> {
    match cloud {
        Cloud::Aws => Some(AWS_IMDS_IPV6),
        Cloud::Gcp => Some(GCP_METADATA_IPV6),
        _ => None,
    }
}

/// The endpoints of the cloud no emulator serves in the lab, answered by a TCP banner in
/// the cloud namespace standing in for them (the EKS Pod Identity agent, ECS task
/// metadata): the lab checks only that a pod can connect to them.
pub(crate) fn stand_ins(cloud: Cloud) -> Vec<(Target, &'static str)> {
    match cloud {
        Cloud::Aws => vec![
            (
                AWS_POD_IDENTITY,
                "imdsguard-lab stand-in: EKS Pod Identity agent",
            ),
            (
                AWS_POD_IDENTITY_IPV6,
                "imdsguard-lab stand-in: EKS Pod Identity agent",
            ),
            (
                AWS_ECS_TASK_METADATA,
                "imdsguard-lab stand-in: ECS task metadata",
            ),
        ],
        _ => Vec::new(),
    }
}

fn url(t: Target) -> BaseUrl {
    let text = match t.ip {
        IpAddr::V4(a) => format!("http://{a}:{}", t.port),
        IpAddr::V6(a) => format!("http://[{a}]:{}", t.port),
    };
    BaseUrl::parse(&text).expect("a built-in endpoint")
}

/// Azure's probe: IMDS, WireServer and HostGAPlugin on their real addresses (inside the
/// lab's namespaces the lab's emulator).
pub(crate) fn azure_probe_config(connect_timeout: Duration) -> ProbeConfig {
    let endpoint = |url: &str| BaseUrl::parse(url).expect("a built-in endpoint");
    let mut config = ProbeConfig::new(endpoint(DEFAULT_ENDPOINT));
    config.wireserver = Some(endpoint(DEFAULT_WIRESERVER));
    config.hostgaplugin = Some(endpoint(DEFAULT_HOSTGAPLUGIN));
    with_timeouts(config, connect_timeout)
}

fn with_timeouts(mut config: ProbeConfig, connect_timeout: Duration) -> ProbeConfig {
    config.connect_timeout = connect_timeout;
    config.timeout = Duration::from_secs(3).max(connect_timeout * 3);
    config
}

/// The probes of one AWS or GCP row: the cloud's attacker path over IPv4 (with the Pod
/// Identity agent's IPv4 address for AWS), and again over IPv6 (its IPv6 address).
pub(crate) fn cloud_probe_configs(cloud: Cloud, connect_timeout: Duration) -> Vec<ProbeConfig> {
    let mut v4 = ProbeConfig::for_cloud(cloud, url(imdsguard_core::target::IMDS));
    let mut out = Vec::new();
    if cloud == Cloud::Aws {
        v4.pod_identity = vec![url(AWS_POD_IDENTITY)];
    }
    out.push(with_timeouts(v4, connect_timeout));
    if let Some(v6) = imds_ipv6(cloud) {
        let mut v6 = ProbeConfig::for_cloud(cloud, url(v6));
        if cloud == Cloud::Aws {
            v6.pod_identity = vec![url(AWS_POD_IDENTITY_IPV6)];
        }
        out.push(with_timeouts(v6, connect_timeout));
    }
    out
}

/// The steps whose most telling class is a row's `imds` and `token` cells, per cloud.
fn step_lists(cloud: Cloud) -> (&'static [StepName], &'static [StepName]) {
    match cloud {
        Cloud::Aws => (
            &[
                StepName::Imdsv1,
                StepName::IdentityDocument,
                StepName::IamInfo,
                StepName::IamRole,
            ],
            &[StepName::Credentials],
        ),
        Cloud::Gcp => (
            &[
                StepName::ProjectId,
                StepName::Zone,
                StepName::InstanceName,
                StepName::Attributes,
                StepName::ServiceAccounts,
            ],
            &[StepName::Token, StepName::IdentityToken],
        ),
        _ => (&[StepName::Instance], &[StepName::Token]),
    }
}

/// The most telling class of `names`' steps in `report` (the TCP step's when none ran:
/// the connection was dropped).
fn class_of(report: &Report, names: &[StepName]) -> Class {
    let best = report
        .steps
        .iter()
        .filter(|s| names.contains(&s.name))
        .map(|s| s.class)
        .max_by_key(|c| crate::report::rank(*c))
        .unwrap_or(Class::NotChecked);
    if best == Class::NotChecked {
        report
            .steps
            .iter()
            .filter(|s| matches!(s.name, StepName::TcpConnect | StepName::TcpConnectIpv6))
            .map(|s| s.class)
            .max_by_key(|c| crate::report::rank(*c))
            .unwrap_or(Class::NotChecked)
    } else {
        best
    }
}

/// The secret steps' class; when none ran (an earlier step was denied or dropped, so
/// the probe never learnt the role's or account's name) the metadata steps' (the
/// proxy's denial, a drop).
fn secret_class(report: &Report, meta: &[StepName], secret: &[StepName]) -> Class {
    let found = report
        .steps
        .iter()
        .filter(|s| secret.contains(&s.name))
        .map(|s| s.class)
        .max_by_key(|c| crate::report::rank(*c));
    match found {
        Some(c) if c != Class::NotChecked => c,
        _ => class_of(report, meta),
    }
}

/// One AWS or GCP row from its probe reports (IPv4 first, then IPv6) and the checks
/// made beside them: `imds` and `token` the IPv4 path's, one [`EndpointCell`] for IMDS
/// over IPv6, the Pod Identity agent (both families) and ECS task metadata (`ecs`: a
/// TCP connection there, when the cloud has it).
pub(crate) fn cloud_row(
    cloud: Cloud,
    pod: &str,
    reports: &[Report],
    ecs: Option<Class>,
    dns: bool,
    node_local_dns: bool,
) -> Row {
    let (meta, secret) = step_lists(cloud);
    let v4 = &reports[0];
    let mut row = Row::new(pod, v4, dns, node_local_dns);
    row.imds = class_of(v4, meta);
    row.token = secret_class(v4, meta, secret);
    row.wireserver = Class::NotChecked;
    row.hostgaplugin = Class::NotChecked;
    let pod_identity = |r: &Report, name: &str, target: Target| {
        r.steps
            .iter()
            .find(|s| s.name == StepName::PodIdentityTcp)
            .map(|s| EndpointCell {
                endpoint: name.into(),
                target: target_text(target),
                class: s.class,
                sensitive: false,
            })
    };
    if let Some(v6) = reports.get(1) {
        let token = secret_class(v6, meta, secret);
        let class = if crate::report::obtained(token) {
            token
        } else {
            [class_of(v6, meta), token]
                .into_iter()
                .max_by_key(|c| crate::report::rank(*c))
                .unwrap_or(token)
        };
        row.endpoints.push(EndpointCell {
            endpoint: IMDS_IPV6.into(),
            target: target_text(imds_ipv6(cloud).expect("an IPv6 probe's cloud")),
            class,
            sensitive: v6.summary.sensitive,
        });
        row.sensitive |= v6.summary.sensitive;
        for r in &v6.summary.reachable {
            row.reached.push(format!("{r} (IPv6)"));
        }
    }
    if cloud == Cloud::Aws {
        row.endpoints
            .extend(pod_identity(v4, "pod-identity", AWS_POD_IDENTITY));
        if let Some(v6) = reports.get(1) {
            row.endpoints
                .extend(pod_identity(v6, "pod-identity-ipv6", AWS_POD_IDENTITY_IPV6));
        }
        if let Some(class) = ecs {
            row.endpoints.push(EndpointCell {
                endpoint: "ecs-task-metadata".into(),
                target: target_text(AWS_ECS_TASK_METADATA),
                class,
                sensitive: false,
            });
        }
    }
    row
}

/// The endpoint cell of the path the rules let `shop` and the monitoring pod read.
pub(crate) const HARMLESS_PATH: &str = "harmless-path";

/// The harmless path of `cloud` the proxy's rules let `shop` (`web`) and the monitoring
/// hostNetwork pod read, and the header its metadata service needs.
pub(crate) fn harmless_path(cloud: Cloud) -> Option<(&'static str, &'static str)> {
    match cloud {
        Cloud::Aws => Some(("/latest/meta-data/placement/region", "")),
        Cloud::Gcp => Some((
            "/computeMetadata/v1/instance/zone",
            "Metadata-Flavor: Google\r\n",
        )),
        _ => None,
    }
}

/// One GET of the cloud's harmless path over IPv4, from wherever the calling thread's
/// namespace is: `readable` (200), `blocked-by-imdsguard` (imdsguard's 403),
/// `blocked-timeout` (no connection within `timeout`), `error` otherwise.
pub(crate) fn harmless_cell(cloud: Cloud, timeout: Duration) -> Option<EndpointCell> {
    use std::io::{Read, Write};
    let (path, header) = harmless_path(cloud)?;
    let t = imdsguard_core::target::IMDS;
    let addr = SocketAddr::new(t.ip, t.port);
    let class = match std::net::TcpStream::connect_timeout(&addr, timeout) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Class::BlockedTimeout,
        Err(_) => Class::BlockedRefused,
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5).max(timeout * 3)));
            let mut text = String::new();
            let sent = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {}\r\n{header}Connection: close\r\n\r\n",
                t.ip
            );
            match sent.and_then(|()| s.read_to_string(&mut text)) {
                Ok(_) => match text.split_whitespace().nth(1) {
                    Some("200") => Class::Readable,
                    Some("403") if text.contains(imdsguard_core::token::IMDSGUARD_DENY_ERROR) => {
                        Class::BlockedByImdsguard
                    }
                    Some("429") => Class::Throttled,
                    _ => Class::Error,
                },
                Err(_) => Class::Error,
            }
        }
    };
    Some(EndpointCell {
        endpoint: HARMLESS_PATH.into(),
        target: format!("http://{}{path}", t.ip),
        class,
        sensitive: false,
    })
}

/// Whether the proxy's rules let the lab's pod (or hostNetwork row) `row` read the
/// harmless path: the core's decision for the pod as the proxy knows it.
pub(crate) fn rules_allow_harmless(cloud: Cloud, row: &str) -> bool {
    use imdsguard_core::access::{AccessRules, Decision, PodInfo};
    use imdsguard_core::canon::{Canonicalizer, Limits, default_hosts};
    use imdsguard_core::cloud_access::{CloudRequest, evaluate};
    let Some((path, _)) = harmless_path(cloud) else {
        return false;
    };
    let (namespace, app) = match row {
        "allowed" => ("platform", ""),
        "web" => ("shop", ""),
        "batch" => ("jobs", ""),
        "hostnet-monitoring" => ("monitoring", "monitoring"),
        "hostnet-debug" => ("debug", "debug"),
        _ => return false,
    };
    let mut pod = PodInfo::new(namespace, row);
    if !app.is_empty() {
        pod.labels.insert("app".into(), app.into());
    }
    let Ok(rules) = AccessRules::parse(proxy_rules(cloud)) else {
        return false;
    };
    let Ok(target) =
        Canonicalizer::for_cloud(cloud, Limits::default(), default_hosts(cloud)).canonicalize(path)
    else {
        return false;
    };
    CloudRequest::new(cloud, "GET", &target)
        .is_some_and(|req| matches!(evaluate(&rules, &pod, &req), Decision::Allow(_)))
}

/// `host:port`, IPv6 in brackets.
fn target_text(t: Target) -> String {
    SocketAddr::new(t.ip, t.port).to_string()
}

/// The filtering proxy's rules per cloud. Azure's: the `shop` namespace may read its
/// VM's location; `platform` (the allowlisted pod) the instance document and tokens;
/// the `monitoring` hostNetwork pod the instance document and a token. AWS's and GCP's:
/// `shop` and `monitoring` may read their region or zone, never credentials or a token;
/// `platform` everything.
pub(crate) fn proxy_rules(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Azure => AZURE_RULES,
        Cloud::Aws => AWS_RULES,
        _ => GCP_RULES,
    }
}

/// Azure's rules (the lab's original ones).
pub(crate) const AZURE_RULES: &str = "rules:
  - name: shop-location
    description: the web shop may read the VM's location, and nothing else
    subjects: [{namespace: shop}]
    paths: [/metadata/instance/compute/location]
  - name: platform-all
    description: the platform pod may read the instance document and get any token
    subjects: [{namespace: platform}]
    paths: [/metadata/instance]
    token:
      resources: ['*']
      identities: [{any: true}]
  - name: monitoring-token
    description: the node's monitoring agent (a hostNetwork pod) may read the instance document, tags included (they name the identity it uses), and get a token
    subjects: [{namespace: monitoring, podSelector: {matchLabels: {app: monitoring}}}]
    paths: [/metadata/instance]
    redact: [customData, userData, publicKeys]
    token:
      resources: ['*']
      identities: [{any: true}]
";

/// AWS's rules: secrets (the role's credentials, user data, the IMDSv2 token PUT) are
/// granted only by paths naming them.
pub(crate) const AWS_RULES: &str = "cloud: aws
rules:
  - name: shop-region
    description: the web shop may read its region, and nothing else
    subjects: [{namespace: shop}]
    paths: [/latest/meta-data/placement/region]
  - name: platform-all
    description: the platform pod may read everything, the role's credentials included
    subjects: [{namespace: platform}]
    paths:
      - /latest/meta-data
      - /latest/meta-data/iam/security-credentials/*
      - /latest/dynamic/instance-identity/document
      - /latest/user-data
  - name: platform-token
    description: the platform pod may get an IMDSv2 session token
    subjects: [{namespace: platform}]
    methods: [PUT]
    paths: [/latest/api/token]
  - name: monitoring-placement
    description: the node's monitoring agent (a hostNetwork pod) may read its region and availability zone, never the role's credentials
    subjects: [{namespace: monitoring, podSelector: {matchLabels: {app: monitoring}}}]
    paths: [/latest/meta-data/placement]
";

/// GCP's rules: tokens and kube-env are granted only by paths naming them.
pub(crate) const GCP_RULES: &str = "cloud: gcp
rules:
  - name: shop-zone
    description: the web shop may read its zone, and nothing else
    subjects: [{namespace: shop}]
    paths: [/computeMetadata/v1/instance/zone]
  - name: platform-all
    description: the platform pod may read everything, tokens and kube-env included
    subjects: [{namespace: platform}]
    paths:
      - /computeMetadata/v1
      - /computeMetadata/v1/instance/service-accounts/*/token
      - /computeMetadata/v1/instance/service-accounts/*/identity
      - /computeMetadata/v1/instance/attributes/kube-env
    audiences: ['*']
  - name: monitoring-zone
    description: the node's monitoring agent (a hostNetwork pod) may read its project and zone, never a token or kube-env
    subjects: [{namespace: monitoring, podSelector: {matchLabels: {app: monitoring}}}]
    paths: [/computeMetadata/v1/project/project-id, /computeMetadata/v1/instance/zone]
";

/// The pods the proxy knows (by source address), the allowlisted pod included: its own
/// traffic goes straight to IMDS, but a connection from its address that reached the
/// proxy would be taken for it and allowed. The spoofer borrows that address; only the
/// node's known (interface, address) set keeps it from the proxy. Dual-stack pods with
/// both addresses.
pub(crate) fn proxy_pods(cloud: Cloud) -> String {
    let mut text = String::new();
    for (ns, name, spec) in pods(cloud)
        .into_iter()
        .filter(|p| p.name != crate::world::SPOOFER_POD)
        .map(|p| {
            let ns = match p.name.as_str() {
                "allowed" => "platform",
                "web" => "shop",
                _ => "jobs",
            };
            (ns, p.name.clone(), p)
        })
    {
        let ips: Vec<String> = spec.addrs().iter().map(|a| format!("'{a}'")).collect();
        text.push_str(&format!(
            "- {{ips: [{}], namespace: {ns}, name: {name}}}\n",
            ips.join(", ")
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_keeps_its_ipv4_world_and_the_others_are_dual_stack() {
        assert!(pods(Cloud::Azure).iter().all(|p| p.addr6.is_none()));
        assert!(addresses(Cloud::Azure).iter().all(IpAddr::is_ipv4));
        for cloud in [Cloud::Aws, Cloud::Gcp] {
            assert!(pods(cloud).iter().all(|p| p.addr6.is_some()), "{cloud}");
            let a = addresses(cloud);
            // Every endpoint's address is in the cloud namespace, both families.
            for t in cloud.targets() {
                assert!(a.contains(&t.ip), "{cloud}: {t}");
            }
            assert!(a.iter().any(IpAddr::is_ipv6));
            assert!(a.contains(&sandbox::cloud_dns(cloud).ip()));
            // WireServer is Azure's.
            assert!(!a.contains(&IpAddr::V4(imdsguard_core::imds::WIRESERVER_ADDRESS)));
        }
    }

    #[test]
    fn the_rules_let_web_and_monitoring_read_the_harmless_path_only() {
        for cloud in [Cloud::Aws, Cloud::Gcp] {
            let allowed: Vec<&str> = [
                "allowed",
                "web",
                "batch",
                "hostnet-monitoring",
                "hostnet-debug",
                "spoofer",
            ]
            .into_iter()
            .filter(|r| rules_allow_harmless(cloud, r))
            .collect();
            assert_eq!(allowed, ["allowed", "web", "hostnet-monitoring"], "{cloud}");
        }
        assert!(!rules_allow_harmless(Cloud::Azure, "web"));
    }

    #[test]
    fn the_proxy_knows_every_pod_by_both_addresses() {
        let text = proxy_pods(Cloud::Aws);
        let pods = imdsguard_core::access::PodIndex::parse(&text).unwrap();
        assert_eq!(pods.len(), 6, "three pods, two addresses each");
        let web = pods.get("fd00:10:244::11".parse().unwrap()).unwrap();
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("shop", "web"));
        assert_eq!(
            pods.get("10.244.0.11".parse().unwrap()).unwrap().name,
            "web"
        );
        assert_eq!(
            imdsguard_core::access::PodIndex::parse(&proxy_pods(Cloud::Azure))
                .unwrap()
                .get("10.244.0.10".parse().unwrap())
                .unwrap()
                .name,
            "allowed"
        );
    }

    #[test]
    fn each_clouds_rules_read_and_give_secrets_to_the_platform_pod_only() {
        use imdsguard_core::access::Decision;
        use imdsguard_core::access::{AccessRules, PodInfo};
        use imdsguard_core::canon::{Canonicalizer, Limits, default_hosts};
        use imdsguard_core::cloud_access::{CloudRequest, evaluate};
        let pod = |ns: &str, name: &str, app: &str| {
            let mut p = PodInfo::new(ns, name);
            p.labels.insert("app".into(), app.into());
            p
        };
        let (platform, web, batch) = (
            pod("platform", "allowed", "platform"),
            pod("shop", "web", "web"),
            pod("jobs", "batch", "batch"),
        );
        let (monitoring, debug) = (
            pod("monitoring", "hostnet-monitoring", "monitoring"),
            pod("debug", "hostnet-debug", "debug"),
        );
        for cloud in Cloud::ALL {
            let rules = AccessRules::parse(proxy_rules(cloud)).unwrap();
            assert_eq!(rules.cloud(), cloud);
            let selected = |p: &PodInfo| rules.rules().iter().any(|r| r.selects(p));
            assert!(selected(&monitoring) && !selected(&debug), "{cloud}");
            if cloud == Cloud::Azure {
                continue;
            }
            let allowed = |p: &PodInfo, method: &str, target: &str| {
                let t = Canonicalizer::for_cloud(cloud, Limits::default(), default_hosts(cloud))
                    .canonicalize(target)
                    .unwrap();
                let req = CloudRequest::new(cloud, method, &t).unwrap();
                matches!(evaluate(&rules, p, &req), Decision::Allow(_))
            };
            let (secret, harmless) = match cloud {
                Cloud::Aws => (
                    "/latest/meta-data/iam/security-credentials/imdsguard-demo-node-role",
                    "/latest/meta-data/placement/region",
                ),
                _ => (
                    "/computeMetadata/v1/instance/service-accounts/default/token",
                    "/computeMetadata/v1/instance/zone",
                ),
            };
            assert!(allowed(&platform, "GET", secret), "{cloud}");
            for p in [&web, &batch, &monitoring] {
                assert!(!allowed(p, "GET", secret), "{cloud}: {}", p.name);
            }
            assert!(allowed(&web, "GET", harmless) && allowed(&monitoring, "GET", harmless));
            assert!(!allowed(&batch, "GET", harmless), "{cloud}");
            if cloud == Cloud::Aws {
                assert!(allowed(&platform, "PUT", "/latest/api/token"));
                assert!(!allowed(&web, "PUT", "/latest/api/token"));
            }
        }
    }
}
