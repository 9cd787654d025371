//! The emulated VM: instance document, managed identities, scheduled events, load
//! balancer, WireServer goal state and host GA plugin settings (YAML).

use std::path::Path;

use imdsguard_core::imds::{self, IdentityIds};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EmulatorError;

/// The default configuration: an AKS node with made-up ids (printed by
/// `imdsguard emulate --print-default-config`).
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default-config.yaml");

/// What the emulator answers with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Entra ID tenant of the identities (`tid`, `iss`, `/metadata/identity/info`).
    pub tenant_id: String,
    /// Lifetime of minted tokens, in seconds.
    #[serde(default = "default_lifetime")]
    pub token_lifetime_secs: u64,
    /// The instance document (`compute`, `network`); primitives are sent as strings.
    pub instance: Value,
    /// The managed identities on the VM.
    #[serde(default)]
    pub identities: Identities,
    /// The scheduled-events document (`DocumentIncarnation`, `Events`).
    #[serde(default = "default_scheduled_events")]
    pub scheduled_events: Value,
    /// The load-balancer document; `null` answers 404 as a VM without a standard load
    /// balancer does.
    #[serde(default)]
    pub load_balancer: Value,
    /// WireServer goal-state values.
    #[serde(default)]
    pub wireserver: WireServerConfig,
    /// Host GA plugin `/vmSettings` values.
    #[serde(default)]
    pub host_ga_plugin: HostGaPluginConfig,
}

fn default_lifetime() -> u64 {
    86399
}

fn default_scheduled_events() -> Value {
    serde_json::json!({ "DocumentIncarnation": 0, "Events": [] })
}

/// The managed identities of the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identities {
    /// The system-assigned identity, if the VM has one.
    #[serde(default)]
    pub system_assigned: Option<Identity>,
    /// The user-assigned identities.
    #[serde(default)]
    pub user_assigned: Vec<Identity>,
}

/// One managed identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Display name (for user-assigned identities, the last segment of the resource id
    /// when left empty).
    #[serde(default)]
    pub name: String,
    /// Application (client) id: the token's `appid`.
    pub client_id: String,
    /// Service-principal object id: the token's `oid`.
    pub object_id: String,
    /// ARM resource id: the token's `xms_mirid`. For a system-assigned identity it
    /// defaults to the VM's `compute.resourceId`.
    #[serde(default)]
    pub resource_id: String,
}

impl Identity {
    /// The ids, as [`imds::select_identity`] reads them.
    pub fn ids(&self) -> IdentityIds<'_> {
        IdentityIds {
            client_id: &self.client_id,
            object_id: &self.object_id,
            resource_id: &self.resource_id,
        }
    }
}

/// WireServer goal-state values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WireServerConfig {
    /// Goal-state incarnation.
    pub incarnation: u64,
    /// Container id.
    pub container_id: String,
    /// Role instance id.
    pub role_instance_id: String,
}

impl Default for WireServerConfig {
    fn default() -> Self {
        WireServerConfig {
            incarnation: 1,
            container_id: "0e5f6a7b-8c9d-4e0f-a1b2-c3d4e5f6a7b8".into(),
            role_instance_id: "8f3c1a2b-4d5e-46f7-9a8b-0c1d2e3f4a5b._vm".into(),
        }
    }
}

/// Host GA plugin `/vmSettings` values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostGaPluginConfig {
    /// Extension goal states.
    pub extensions: Vec<ExtensionConfig>,
}

/// One extension in `/vmSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtensionConfig {
    /// Extension name (`vmssCSE`).
    pub name: String,
    /// Publisher and type (`Microsoft.Azure.Extensions.CustomScript`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Version.
    pub version: String,
    /// Public settings (JSON text).
    pub public_settings: String,
    /// Thumbprint of the certificate protecting `protected_settings`.
    pub protected_settings_cert_thumbprint: String,
    /// Protected settings (base64; fake).
    pub protected_settings: String,
}

impl Config {
    /// The default configuration (see [`DEFAULT_CONFIG_YAML`]).
    pub fn default_aks() -> Config {
        Config::from_yaml(DEFAULT_CONFIG_YAML).expect("the built-in configuration is valid")
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Config, EmulatorError> {
        let text = std::fs::read_to_string(path).map_err(|source| EmulatorError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|message| EmulatorError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Reads a configuration from YAML text, then normalises it (see [`Self::normalise`]).
    pub fn from_yaml(text: &str) -> Result<Config, String> {
        let mut config: Config = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        config.normalise()?;
        Ok(config)
    }

    /// Makes the configuration what IMDS would answer: primitives of the instance and
    /// load-balancer documents as strings, `tags` and `tagsList` both present and in
    /// agreement, identity names and the system identity's resource id filled in.
    pub fn normalise(&mut self) -> Result<(), String> {
        if !self.instance.is_object() {
            return Err("`instance` must be a mapping with `compute` and `network`".into());
        }
        self.instance = imds::stringify_primitives(std::mem::take(&mut self.instance));
        if !self.load_balancer.is_null() {
            self.load_balancer =
                imds::stringify_primitives(std::mem::take(&mut self.load_balancer));
        }
        if let Some(compute) = self
            .instance
            .get_mut("compute")
            .and_then(Value::as_object_mut)
        {
            let list: Option<Vec<(String, String)>> = compute
                .get("tagsList")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .map(|t| {
                            let s = |k| t.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                            (s("name"), s("value"))
                        })
                        .collect()
                });
            match (list, compute.get("tags").and_then(Value::as_str)) {
                (Some(list), None) => {
                    let text = imds::tags_text(list.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    compute.insert("tags".into(), Value::String(text));
                }
                (None, Some(text)) => {
                    let list: Vec<Value> = imds::parse_tags_text(text)
                        .into_iter()
                        .map(|(name, value)| serde_json::json!({ "name": name, "value": value }))
                        .collect();
                    compute.insert("tagsList".into(), Value::Array(list));
                }
                (None, None) => {
                    compute.insert("tags".into(), Value::String(String::new()));
                    compute.insert("tagsList".into(), Value::Array(Vec::new()));
                }
                (Some(_), Some(_)) => {}
            }
        }
        let vm_resource_id = self
            .instance
            .pointer("/compute/resourceId")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(sys) = &mut self.identities.system_assigned {
            if sys.resource_id.is_empty() {
                sys.resource_id = vm_resource_id;
            }
            if sys.name.is_empty() {
                sys.name = "system-assigned".into();
            }
        }
        for id in &mut self.identities.user_assigned {
            if id.name.is_empty() {
                id.name = id.resource_id.rsplit('/').next().unwrap_or("").to_string();
            }
        }
        let all = self
            .identities
            .system_assigned
            .iter()
            .chain(&self.identities.user_assigned);
        for id in all {
            if id.client_id.is_empty() || id.object_id.is_empty() {
                return Err(format!(
                    "identity `{}` needs client_id and object_id",
                    id.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_an_aks_node() {
        let c = Config::default_aks();
        let compute = &c.instance["compute"];
        assert_eq!(
            compute["resourceGroupName"],
            "MC_rg-prod_aks-prod_westeurope"
        );
        assert_eq!(compute["vmScaleSetName"], "aks-nodepool1-12345678-vmss");
        assert_eq!(compute["name"], "aks-nodepool1-12345678-vmss_0");
        assert_eq!(compute["customData"], "");
        assert!(
            compute["publicKeys"][0]["keyData"]
                .as_str()
                .unwrap()
                .starts_with("ssh-rsa ")
        );
        let tags = compute["tags"].as_str().unwrap();
        for key in [
            "aks-managed-kubeletIdentityClientID",
            "aks-managed-poolName",
            "aks-managed-orchestrator",
            "aks-managed-createOperationID",
        ] {
            assert!(tags.contains(&format!("{key}:")), "{key}");
        }
        let kubelet = &c.identities.user_assigned[0];
        assert_eq!(kubelet.name, "aks-prod-agentpool");
        assert!(tags.contains(&format!(
            "aks-managed-kubeletIdentityClientID:{}",
            kubelet.client_id
        )));
        assert!(c.identities.system_assigned.is_none());
        assert_eq!(c.identities.user_assigned.len(), 4);
        // Every primitive of the instance document is a string.
        fn all_strings(v: &Value) -> bool {
            match v {
                Value::String(_) => true,
                Value::Array(a) => a.iter().all(all_strings),
                Value::Object(m) => m.values().all(all_strings),
                _ => false,
            }
        }
        assert!(all_strings(&c.instance));
    }

    #[test]
    fn tags_are_derived_both_ways() {
        let c = Config::from_yaml(
            "tenant_id: t\ninstance:\n  compute:\n    tags: 'a:1;b:2'\n    zone: 1\n",
        )
        .unwrap();
        assert_eq!(
            c.instance["compute"]["tagsList"][1],
            serde_json::json!({"name": "b", "value": "2"})
        );
        assert_eq!(c.instance["compute"]["zone"], "1");
        assert!(Config::from_yaml("tenant_id: t\ninstance: 3\n").is_err());
        assert!(Config::from_yaml("tenant_id: t\ninstance: {}\nbogus: 1\n").is_err());
    }

    #[test]
    fn system_identity_defaults_to_the_vm_resource_id() {
        let c = Config::from_yaml(
            "tenant_id: t\ninstance:\n  compute:\n    resourceId: /vm\nidentities:\n  system_assigned:\n    client_id: c\n    object_id: o\n",
        )
        .unwrap();
        assert_eq!(c.identities.system_assigned.unwrap().resource_id, "/vm");
    }
}
