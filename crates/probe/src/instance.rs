//! What an instance document exposes, and the identities it names. Pure functions over
//! the JSON the endpoint answered; secrets (SSH key material, custom and user data) are
//! counted or flagged, never copied.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// The tag AKS puts on node VMSS instances to name the kubelet identity's client id.
pub const KUBELET_IDENTITY_TAG: &str = "aks-managed-kubeletIdentityClientID";
/// The tag AKS puts on nodes where its own IMDS restriction is enabled.
pub const IMDS_RESTRICTION_TAG: &str = "aks-managed-enable-imds-restriction";

/// What the instance document exposes, as far as it may be shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstanceExposure {
    /// `compute.subscriptionId`.
    pub subscription_id: Option<String>,
    /// `compute.resourceGroupName` (on AKS, the node resource group `MC_…`).
    pub resource_group: Option<String>,
    /// `compute.vmScaleSetName`.
    pub vm_scale_set: Option<String>,
    /// `compute.name` (the VM or VMSS instance name).
    pub name: Option<String>,
    /// `compute.osProfile.computerName` (the node name).
    pub computer_name: Option<String>,
    /// `compute.location`.
    pub location: Option<String>,
    /// `compute.osProfile.adminUsername`.
    pub admin_username: Option<String>,
    /// How many SSH public keys `compute.publicKeys` lists.
    pub ssh_public_keys: usize,
    /// Whether `compute.customData` is non-empty.
    pub custom_data_present: bool,
    /// Whether `compute.userData` is non-empty.
    pub user_data_present: bool,
    /// How many tags the instance carries (`tags` and `tagsList` merged).
    pub tag_count: usize,
    /// Tags that name identities (`…ClientID`, `…ClientId`, identity resource ids), as
    /// `name` and `value`.
    pub identity_tags: Vec<Tag>,
    /// The value of `aks-managed-enable-imds-restriction`, when present.
    pub aks_imds_restriction: Option<String>,
}

/// One instance tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tag {
    /// Tag name.
    pub name: String,
    /// Tag value.
    pub value: String,
}

/// How a token request selects the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum IdentitySelector {
    /// No selector: the VM's system-assigned identity, or its only user-assigned one.
    Default,
    /// `client_id=…`.
    ClientId(String),
    /// `msi_res_id=…` (an identity's ARM resource id).
    MsiResId(String),
}

impl IdentitySelector {
    /// The query parameter that selects this identity, if any.
    pub fn query_param(&self) -> Option<(&'static str, &str)> {
        match self {
            IdentitySelector::Default => None,
            IdentitySelector::ClientId(id) => Some(("client_id", id)),
            IdentitySelector::MsiResId(id) => Some(("msi_res_id", id)),
        }
    }

    fn same(&self, other: &IdentitySelector) -> bool {
        match (self, other) {
            (IdentitySelector::Default, IdentitySelector::Default) => true,
            (IdentitySelector::ClientId(a), IdentitySelector::ClientId(b))
            | (IdentitySelector::MsiResId(a), IdentitySelector::MsiResId(b)) => {
                a.eq_ignore_ascii_case(b)
            }
            _ => false,
        }
    }
}

impl fmt::Display for IdentitySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentitySelector::Default => f.write_str("default identity"),
            IdentitySelector::ClientId(id) => write!(f, "client_id {id}"),
            IdentitySelector::MsiResId(id) => write!(f, "msi_res_id {id}"),
        }
    }
}

/// An identity to try, and where the probe learnt of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// How the token request names it.
    #[serde(flatten)]
    pub selector: IdentitySelector,
    /// Where it came from: `tag NAME` or `--client-id`.
    pub source: String,
}

/// Adds `identity` to `list` unless an identity with the same selector is there.
pub(crate) fn push_identity(list: &mut Vec<Identity>, identity: Identity) {
    if !list.iter().any(|i| i.selector.same(&identity.selector)) {
        list.push(identity);
    }
}

/// Reads an instance document. `None` when the body is not a JSON object.
pub fn analyse(body: &[u8]) -> Option<(InstanceExposure, Vec<Identity>)> {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let empty = serde_json::Map::new();
    let compute = doc
        .get("compute")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let os_profile = compute
        .get("osProfile")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let text = |map: &serde_json::Map<String, Value>, key: &str| -> Option<String> {
        map.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let present = |key: &str| text(compute, key).is_some();

    let tags = tags(compute);
    let mut identities = Vec::new();
    let mut identity_tags = Vec::new();
    for tag in &tags {
        if let Some(selector) = identity_in_tag(tag) {
            identity_tags.push(tag.clone());
            push_identity(
                &mut identities,
                Identity {
                    selector,
                    source: format!("tag {}", tag.name),
                },
            );
        }
    }
    let exposure = InstanceExposure {
        subscription_id: text(compute, "subscriptionId"),
        resource_group: text(compute, "resourceGroupName"),
        vm_scale_set: text(compute, "vmScaleSetName"),
        name: text(compute, "name"),
        computer_name: text(os_profile, "computerName"),
        location: text(compute, "location"),
        admin_username: text(os_profile, "adminUsername"),
        ssh_public_keys: compute
            .get("publicKeys")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
        custom_data_present: present("customData") || text(os_profile, "customData").is_some(),
        user_data_present: present("userData"),
        tag_count: tags.len(),
        identity_tags,
        aks_imds_restriction: tags
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(IMDS_RESTRICTION_TAG))
            .map(|t| t.value.clone()),
    };
    Some((exposure, identities))
}

/// `compute.tagsList` (`[{name, value}]`) merged with `compute.tags` (`k:v;k:v`), in
/// that order, one entry per name.
fn tags(compute: &serde_json::Map<String, Value>) -> Vec<Tag> {
    let mut out: Vec<Tag> = Vec::new();
    let mut add = |name: &str, value: &str| {
        let name = name.trim();
        if !name.is_empty() && !out.iter().any(|t| t.name == name) {
            out.push(Tag {
                name: name.to_owned(),
                value: value.trim().to_owned(),
            });
        }
    };
    if let Some(list) = compute.get("tagsList").and_then(Value::as_array) {
        for item in list {
            if let (Some(name), Some(value)) = (
                item.get("name").and_then(Value::as_str),
                item.get("value").and_then(Value::as_str),
            ) {
                add(name, value);
            }
        }
    }
    if let Some(text) = compute.get("tags").and_then(Value::as_str) {
        for pair in text.split(';') {
            let (name, value) = pair.split_once(':').unwrap_or((pair, ""));
            add(name, value);
        }
    }
    out
}

/// The identity a tag names: a name ending in `ClientID`, `ClientId`, `client_id` or
/// `client-id` (any case) with a non-empty value, or any value that is a user-assigned
/// identity's resource id.
fn identity_in_tag(tag: &Tag) -> Option<IdentitySelector> {
    let value = tag.value.trim();
    if value.is_empty() {
        return None;
    }
    let lower_value = value.to_ascii_lowercase();
    if lower_value.starts_with("/subscriptions/")
        && lower_value.contains("/providers/microsoft.managedidentity/userassignedidentities/")
    {
        return Some(IdentitySelector::MsiResId(value.to_owned()));
    }
    let name: String = tag
        .name
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .flat_map(char::to_lowercase)
        .collect();
    (name.ends_with("clientid") && !value.contains(char::is_whitespace))
        .then(|| IdentitySelector::ClientId(value.to_owned()))
}

impl InstanceExposure {
    /// One-line phrases for the report.
    pub fn describe(&self) -> Vec<String> {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let mut lines = vec![format!(
            "subscription {}, resource group {}, VMSS {}, VM {} (computer name {}), location {}",
            or_dash(&self.subscription_id),
            or_dash(&self.resource_group),
            or_dash(&self.vm_scale_set),
            or_dash(&self.name),
            or_dash(&self.computer_name),
            or_dash(&self.location),
        )];
        let keys = match self.ssh_public_keys {
            1 => "1 SSH public key".to_owned(),
            n => format!("{n} SSH public keys"),
        };
        let present = |p: bool| if p { "present" } else { "absent" };
        lines.push(format!(
            "admin user {}, {keys}, custom data {}, user data {}, {} tag(s)",
            or_dash(&self.admin_username),
            present(self.custom_data_present),
            present(self.user_data_present),
            self.tag_count
        ));
        if !self.identity_tags.is_empty() {
            let tags: Vec<String> = self
                .identity_tags
                .iter()
                .map(|t| format!("{}={}", t.name, t.value))
                .collect();
            lines.push(format!("tags naming identities: {}", tags.join(", ")));
        }
        if let Some(value) = &self.aks_imds_restriction {
            lines.push(format!("{IMDS_RESTRICTION_TAG}={value}"));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
      "compute": {
        "subscriptionId": "00000000-1111-2222-3333-444444444444",
        "resourceGroupName": "MC_rg_aks_westeurope",
        "vmScaleSetName": "aks-nodepool1-12345678-vmss",
        "name": "aks-nodepool1-12345678-vmss_0",
        "location": "westeurope",
        "osProfile": {"computerName": "aks-nodepool1-12345678-vmss000000", "adminUsername": "azureuser"},
        "publicKeys": [{"keyData": "ssh-rsa AAAASECRET", "path": "/home/azureuser/.ssh/authorized_keys"}],
        "customData": "",
        "userData": "c2VjcmV0",
        "tags": "aks-managed-kubeletIdentityClientID:aaaaaaaa-0000-0000-0000-000000000001;team:payments;aks-managed-enable-imds-restriction:false",
        "tagsList": [
          {"name": "aks-managed-kubeletIdentityClientID", "value": "aaaaaaaa-0000-0000-0000-000000000001"},
          {"name": "addon_client_id", "value": "bbbbbbbb-0000-0000-0000-000000000002"},
          {"name": "uami", "value": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/agentpool"},
          {"name": "team", "value": "payments"},
          {"name": "aks-managed-enable-imds-restriction", "value": "false"}
        ]
      },
      "network": {"interface": []}
    }"#;

    #[test]
    fn reads_what_the_document_exposes() {
        let (exposure, identities) = analyse(DOC.as_bytes()).unwrap();
        assert_eq!(
            exposure.subscription_id.as_deref(),
            Some("00000000-1111-2222-3333-444444444444")
        );
        assert_eq!(
            exposure.resource_group.as_deref(),
            Some("MC_rg_aks_westeurope")
        );
        assert_eq!(
            exposure.vm_scale_set.as_deref(),
            Some("aks-nodepool1-12345678-vmss")
        );
        assert_eq!(
            exposure.computer_name.as_deref(),
            Some("aks-nodepool1-12345678-vmss000000")
        );
        assert_eq!(exposure.admin_username.as_deref(), Some("azureuser"));
        assert_eq!(exposure.ssh_public_keys, 1);
        assert!(!exposure.custom_data_present);
        assert!(exposure.user_data_present);
        assert_eq!(exposure.tag_count, 5);
        assert_eq!(exposure.aks_imds_restriction.as_deref(), Some("false"));
        assert_eq!(exposure.identity_tags.len(), 3);
        assert_eq!(
            identities.iter().map(|i| &i.selector).collect::<Vec<_>>(),
            [
                &IdentitySelector::ClientId("aaaaaaaa-0000-0000-0000-000000000001".into()),
                &IdentitySelector::ClientId("bbbbbbbb-0000-0000-0000-000000000002".into()),
                &IdentitySelector::MsiResId(
                    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/agentpool".into()
                ),
            ]
        );
        assert_eq!(identities[0].source, format!("tag {KUBELET_IDENTITY_TAG}"));
        let shown = exposure.describe().join("\n") + &serde_json::to_string(&exposure).unwrap();
        assert!(!shown.contains("AAAASECRET"));
        assert!(!shown.contains("c2VjcmV0"));
        assert!(shown.contains("admin user azureuser, 1 SSH public key"));
    }

    #[test]
    fn tags_string_alone_is_enough() {
        let doc = r#"{"compute":{"tags":"fooClientId:abc;bar:baz;empty_client_id:"}}"#;
        let (exposure, identities) = analyse(doc.as_bytes()).unwrap();
        assert_eq!(exposure.tag_count, 3);
        assert_eq!(identities.len(), 1);
        assert_eq!(
            identities[0].selector,
            IdentitySelector::ClientId("abc".into())
        );
        assert_eq!(exposure.subscription_id, None);
    }

    #[test]
    fn not_a_document() {
        assert!(analyse(b"<html>").is_none());
        assert!(analyse(b"[1,2]").is_none());
        assert!(analyse(b"{}").is_some());
    }

    #[test]
    fn identities_are_deduplicated_case_insensitively() {
        let mut list = Vec::new();
        for id in ["ABC", "abc", "def"] {
            push_identity(
                &mut list,
                Identity {
                    selector: IdentitySelector::ClientId(id.into()),
                    source: "--client-id".into(),
                },
            );
        }
        assert_eq!(list.len(), 2);
        assert_eq!(
            IdentitySelector::ClientId("x".into()).query_param(),
            Some(("client_id", "x"))
        );
        assert_eq!(IdentitySelector::Default.query_param(), None);
    }
}
