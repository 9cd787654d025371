//! The emulated GCE VM: project, instance, network interfaces, attributes and service
//! accounts (YAML).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::EmulatorError;

/// Written in an attribute value, replaced at start by a fresh fake secret from the
/// emulator's seeded random source (each occurrence its own): the base64 of a PEM-looking
/// block that says it is fake.
pub const FAKE_SECRET_PLACEHOLDER: &str = "{{fake-secret}}";

/// What the GCE emulator answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpConfig {
    /// `project/project-id`.
    pub project_id: String,
    /// `project/numeric-project-id`.
    pub numeric_project_id: u64,
    /// The zone's name (`us-central1-c`); `instance/zone` answers
    /// `projects/NUMBER/zones/ZONE`.
    pub zone: String,
    /// `instance/id`.
    pub instance_id: u64,
    /// `instance/name`.
    pub instance_name: String,
    /// `instance/hostname`.
    pub hostname: String,
    /// The machine type's name (`e2-standard-4`); `instance/machine-type` answers
    /// `projects/NUMBER/machineTypes/TYPE`.
    pub machine_type: String,
    /// `instance/image`.
    #[serde(default)]
    pub image: String,
    /// `instance/cpu-platform`.
    #[serde(default)]
    pub cpu_platform: String,
    /// `instance/description`.
    #[serde(default)]
    pub description: String,
    /// `instance/tags` (network tags).
    #[serde(default)]
    pub tags: Vec<String>,
    /// `instance/network-interfaces/N/...`.
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// `instance/attributes/NAME` (GKE nodes: `cluster-name`, `kube-env`, ...).
    /// [`FAKE_SECRET_PLACEHOLDER`] in a value becomes a fake secret at start.
    #[serde(default)]
    pub instance_attributes: BTreeMap<String, String>,
    /// `project/attributes/NAME`.
    #[serde(default)]
    pub project_attributes: BTreeMap<String, String>,
    /// `instance/service-accounts/...`; the one with the alias `default` answers for
    /// `default`.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccount>,
    /// `expires_in` of minted access tokens, and the lifetime of identity tokens
    /// (seconds).
    #[serde(default = "default_lifetime")]
    pub token_lifetime_secs: u64,
}

fn default_lifetime() -> u64 {
    3599
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// `ip`.
    pub ip: String,
    /// `mac`.
    pub mac: String,
    /// The network's name; `network` answers `projects/NUMBER/networks/NAME`.
    pub network: String,
    /// `subnetmask`.
    pub subnetmask: String,
    /// `gateway`.
    pub gateway: String,
    /// `mtu`.
    #[serde(default = "default_mtu")]
    pub mtu: u64,
    /// `access-configs/0/external-ip` (type `ONE_TO_ONE_NAT`) when the VM has one.
    #[serde(default)]
    pub external_ip: Option<String>,
    /// `ip-aliases/N` (alias ranges: on GKE, the node's pod range).
    #[serde(default)]
    pub ip_aliases: Vec<String>,
}

fn default_mtu() -> u64 {
    1460
}

/// A service account on the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccount {
    /// `email`.
    pub email: String,
    /// `aliases` (`default` for the VM's default account).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `scopes` (OAuth scope URLs).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The account's unique id (an identity token's `sub` and `azp`).
    pub unique_id: String,
}

impl GcpConfig {
    /// A GKE node with made-up ids: cluster `imdsguard-gke` in project
    /// `imdsguard-emulated`, the Compute Engine default service account as `default`,
    /// and a `kube-env` attribute with fake `KUBELET_CERT`, `KUBELET_KEY` and `CA_CERT`
    /// (filled with fresh fake secrets at start).
    pub fn default_gke() -> GcpConfig {
        let project_number = 123_456_789_012u64;
        let cluster = "imdsguard-gke";
        let instance_name = "gke-imdsguard-gke-default-pool-5f3c2a1b-x7k2";
        let kube_env = [
            "ALLOCATE_NODE_CIDRS: \"true\"",
            "CA_CERT: {{fake-secret}}",
            "CLUSTER_NAME: imdsguard-gke",
            "DNS_DOMAIN: cluster.local",
            "ENABLE_NODE_PROBLEM_DETECTOR: standalone",
            "KUBE_PROXY_TOKEN: {{fake-secret}}",
            "KUBELET_CERT: {{fake-secret}}",
            "KUBELET_KEY: {{fake-secret}}",
            "KUBERNETES_MASTER: \"false\"",
            "KUBERNETES_MASTER_NAME: 10.128.0.2",
            "NODE_LOCAL_SSDS_EXT: \"\"",
            "ZONE: us-central1-c",
        ]
        .join("\n")
            + "\n";
        let instance_attributes: BTreeMap<String, String> = [
            ("cluster-location", "us-central1"),
            ("cluster-name", cluster),
            ("cluster-uid", "5c0ffee0c0de4b1d9e7aa11ce0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9"),
            ("created-by", "projects/123456789012/zones/us-central1-c/instanceGroupManagers/gke-imdsguard-gke-default-pool-5f3c2a1b-grp"),
            ("disable-legacy-endpoints", "true"),
            ("enable-oslogin", "false"),
            ("gci-ensure-gke-docker", "true"),
            ("gci-update-strategy", "update_disabled"),
            ("google-compute-enable-pcid", "true"),
            ("instance-template", "projects/123456789012/global/instanceTemplates/gke-imdsguard-gke-default-pool-5f3c2a1b"),
            ("kube-env", kube_env.as_str()),
            ("kube-labels", "cloud.google.com/gke-boot-disk=pd-balanced,cloud.google.com/gke-nodepool=default-pool,cloud.google.com/gke-os-distribution=cos"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let project_attributes: BTreeMap<String, String> = [
            ("enable-oslogin", "TRUE"),
            ("gke-imdsguard-gke-5c0ffee0-cidr", "network-name=default,node-cidr=10.4.0.0/14"),
            ("ssh-keys", "gke-5c0ffee0:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKE gke-5c0ffee0@imdsguard-emulator"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        GcpConfig {
            project_id: "imdsguard-emulated".into(),
            numeric_project_id: project_number,
            zone: "us-central1-c".into(),
            instance_id: 4_520_316_790_173_245_061,
            instance_name: instance_name.into(),
            hostname: format!("{instance_name}.us-central1-c.c.imdsguard-emulated.internal"),
            machine_type: "e2-standard-4".into(),
            image: "projects/gke-node-images/global/images/gke-1306-gke1029000-cos-113-18244-151-96-c-pre".into(),
            cpu_platform: "Intel Broadwell".into(),
            description: String::new(),
            tags: vec![format!("gke-{cluster}-5c0ffee0-node")],
            network_interfaces: vec![NetworkInterface {
                ip: "10.128.0.17".into(),
                mac: "42:01:0a:80:00:11".into(),
                network: "default".into(),
                subnetmask: "255.255.240.0".into(),
                gateway: "10.128.0.1".into(),
                mtu: 1460,
                external_ip: None,
                ip_aliases: vec!["10.4.1.0/24".into()],
            }],
            instance_attributes,
            project_attributes,
            service_accounts: vec![ServiceAccount {
                email: format!("{project_number}-compute@developer.gserviceaccount.com"),
                aliases: vec!["default".into()],
                scopes: vec![
                    "https://www.googleapis.com/auth/devstorage.read_only".into(),
                    "https://www.googleapis.com/auth/logging.write".into(),
                    "https://www.googleapis.com/auth/monitoring".into(),
                    "https://www.googleapis.com/auth/service.management.readonly".into(),
                    "https://www.googleapis.com/auth/servicecontrol".into(),
                    "https://www.googleapis.com/auth/trace.append".into(),
                ],
                unique_id: "104857600012345678901".into(),
            }],
            token_lifetime_secs: default_lifetime(),
        }
    }

    /// Reads a configuration file (YAML, the shape [`GcpConfig::to_yaml`] writes).
    pub fn load(path: &Path) -> Result<GcpConfig, EmulatorError> {
        let text = std::fs::read_to_string(path).map_err(|source| EmulatorError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        GcpConfig::from_yaml(&text).map_err(|message| EmulatorError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Reads a configuration from YAML text and checks it ([`GcpConfig::check`]).
    pub fn from_yaml(text: &str) -> Result<GcpConfig, String> {
        let config: GcpConfig = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// The configuration as YAML (what `--print-default-config` prints).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("the configuration serialises")
    }

    /// Checks what the tree needs: names that are single path segments, at most one
    /// account answering for `default`, emails unique.
    pub fn check(&self) -> Result<(), String> {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && !s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
        };
        for (what, names) in [
            ("instance_attributes", self.instance_attributes.keys()),
            ("project_attributes", self.project_attributes.keys()),
        ] {
            for name in names {
                if !segment_ok(name) {
                    return Err(format!("{what}: `{name}` is not a valid attribute name"));
                }
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for sa in &self.service_accounts {
            if !segment_ok(&sa.email) {
                return Err(format!(
                    "service_accounts: `{}` is not a valid email",
                    sa.email
                ));
            }
            for name in std::iter::once(&sa.email).chain(&sa.aliases) {
                if !segment_ok(name) {
                    return Err(format!("service_accounts: alias `{name}` is not valid"));
                }
                if names.contains(&name.as_str()) {
                    return Err(format!(
                        "service_accounts: `{name}` names more than one account"
                    ));
                }
                names.push(name);
            }
        }
        if self.zone.is_empty() || self.project_id.is_empty() || self.instance_name.is_empty() {
            return Err("project_id, zone and instance_name must not be empty".into());
        }
        Ok(())
    }

    /// The account `name` names (its email or an alias such as `default`).
    pub fn account(&self, name: &str) -> Option<&ServiceAccount> {
        self.service_accounts
            .iter()
            .find(|sa| sa.email == name || sa.aliases.iter().any(|a| a == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_gke_node_with_fake_kubelet_credentials() {
        let c = GcpConfig::default_gke();
        c.check().unwrap();
        let kube_env = &c.instance_attributes["kube-env"];
        for key in ["KUBELET_CERT: ", "KUBELET_KEY: ", "CA_CERT: "] {
            assert!(
                kube_env.contains(&format!("{key}{FAKE_SECRET_PLACEHOLDER}")),
                "{key}"
            );
        }
        assert_eq!(c.instance_attributes["cluster-name"], "imdsguard-gke");
        assert_eq!(
            c.account("default").unwrap().email,
            c.service_accounts[0].email
        );
        assert!(c.account("nobody").is_none());
        let again = GcpConfig::from_yaml(&c.to_yaml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = GcpConfig::default_gke();
        c.instance_attributes.insert("a/b".into(), "x".into());
        assert!(c.check().unwrap_err().contains("a/b"));
        let mut c = GcpConfig::default_gke();
        let mut second = c.service_accounts[0].clone();
        second.email = "other@p.iam.gserviceaccount.com".into();
        c.service_accounts.push(second);
        assert!(c.check().unwrap_err().contains("default"));
        assert!(GcpConfig::from_yaml("project_id: x\nbogus: 1\n").is_err());
    }
}
