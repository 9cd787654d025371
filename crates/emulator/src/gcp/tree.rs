//! The metadata tree the server answers from: directories of entries with kebab-case
//! names (as listed and as in `alt=text`), read recursively as JSON with camelCase keys
//! (attribute names and account names kept as they are), lists as arrays.

use serde_json::{Map, Value, json};

use super::config::{FAKE_SECRET_PLACEHOLDER, GcpConfig};
use crate::rng::Rng;

/// An entry of the tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// A value.
    Leaf(Leaf),
    /// A directory.
    Dir(Dir),
}

/// A value and its default representation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Leaf {
    /// Text (JSON: a string).
    Str(String),
    /// A number (text: its digits; JSON: a number).
    Num(u64),
    /// A list: text one item a line; JSON an array. `json_default`: answered as JSON
    /// unless `alt=text` (`tags`), else as text unless `alt=json` (`scopes`, `aliases`).
    List {
        items: Vec<String>,
        json_default: bool,
    },
    /// Minted per request (`token`, `identity`): listed, never part of a recursive read.
    Minted,
}

/// How a directory reads as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// An object whose keys are the entries' names in camelCase.
    Struct,
    /// An object whose keys are the entries' names as they are (attributes, accounts).
    Map,
    /// An array, in entry order (`disks/0`, `network-interfaces/0`).
    List,
}

/// A directory: its entries in listing order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dir {
    pub(crate) style: Style,
    pub(crate) entries: Vec<(String, Node)>,
}

impl Dir {
    fn new(style: Style, mut entries: Vec<(String, Node)>) -> Dir {
        if style != Style::List {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Dir { style, entries }
    }

    fn list(items: Vec<Node>) -> Node {
        Node::Dir(Dir::new(
            Style::List,
            items
                .into_iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), n))
                .collect(),
        ))
    }

    /// The entry `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Node> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, n)| n)
    }

    /// The listing: one entry a line, directories with a trailing `/`.
    pub(crate) fn listing(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(name, node)| match node {
                Node::Dir(_) => format!("{name}/"),
                Node::Leaf(_) => name.clone(),
            })
            .collect()
    }
}

fn s(v: impl Into<String>) -> Node {
    Node::Leaf(Leaf::Str(v.into()))
}

fn n(v: u64) -> Node {
    Node::Leaf(Leaf::Num(v))
}

fn entries(pairs: Vec<(&str, Node)>) -> Vec<(String, Node)> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// `kube-env` → `kubeEnv`.
pub(crate) fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A fresh fake secret: the base64 of a PEM-looking block that says it is fake, with
/// random hex inside.
pub(crate) fn fake_secret(rng: &Rng) -> String {
    use base64::Engine;
    let hex: String = rng.bytes(24).iter().map(|b| format!("{b:02x}")).collect();
    let pem = format!(
        "-----BEGIN FAKE IMDSGUARD EMULATOR SECRET-----\n{hex}\n-----END FAKE IMDSGUARD EMULATOR SECRET-----\n"
    );
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// Every [`FAKE_SECRET_PLACEHOLDER`] in `value` replaced by its own fake secret.
fn fill_secrets(value: &str, rng: &Rng) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find(FAKE_SECRET_PLACEHOLDER) {
        out.push_str(&rest[..at]);
        out.push_str(&fake_secret(rng));
        rest = &rest[at + FAKE_SECRET_PLACEHOLDER.len()..];
    }
    out.push_str(rest);
    out
}

/// The tree `/computeMetadata/v1/` answers from, with fake secrets drawn from `rng`.
pub(crate) fn build(c: &GcpConfig, rng: &Rng) -> Dir {
    let num = c.numeric_project_id;
    let attrs = |m: &std::collections::BTreeMap<String, String>| {
        Node::Dir(Dir::new(
            Style::Map,
            m.iter()
                .map(|(k, v)| (k.clone(), s(fill_secrets(v, rng))))
                .collect(),
        ))
    };
    let interfaces = c
        .network_interfaces
        .iter()
        .map(|nic| {
            let access = match &nic.external_ip {
                Some(ip) => vec![Node::Dir(Dir::new(
                    Style::Struct,
                    entries(vec![("external-ip", s(ip)), ("type", s("ONE_TO_ONE_NAT"))]),
                ))],
                None => Vec::new(),
            };
            Node::Dir(Dir::new(
                Style::Struct,
                entries(vec![
                    ("access-configs", Dir::list(access)),
                    ("forwarded-ips", Dir::list(Vec::new())),
                    ("gateway", s(&nic.gateway)),
                    ("ip", s(&nic.ip)),
                    (
                        "ip-aliases",
                        Dir::list(nic.ip_aliases.iter().map(s).collect()),
                    ),
                    ("mac", s(&nic.mac)),
                    ("mtu", n(nic.mtu)),
                    (
                        "network",
                        s(format!("projects/{num}/networks/{}", nic.network)),
                    ),
                    ("subnetmask", s(&nic.subnetmask)),
                    ("target-instance-ips", Dir::list(Vec::new())),
                ]),
            ))
        })
        .collect();
    let mut accounts: Vec<(String, Node)> = Vec::new();
    for sa in &c.service_accounts {
        let dir = Node::Dir(Dir::new(
            Style::Struct,
            entries(vec![
                (
                    "aliases",
                    Node::Leaf(Leaf::List {
                        items: sa.aliases.clone(),
                        json_default: false,
                    }),
                ),
                ("email", s(&sa.email)),
                ("identity", Node::Leaf(Leaf::Minted)),
                (
                    "scopes",
                    Node::Leaf(Leaf::List {
                        items: sa.scopes.clone(),
                        json_default: false,
                    }),
                ),
                ("token", Node::Leaf(Leaf::Minted)),
            ]),
        ));
        for name in sa.aliases.iter().chain(std::iter::once(&sa.email)) {
            accounts.push((name.clone(), dir.clone()));
        }
    }
    let disk = Node::Dir(Dir::new(
        Style::Struct,
        entries(vec![
            ("device-name", s("persistent-disk-0")),
            ("index", n(0)),
            ("interface", s("SCSI")),
            ("mode", s("READ_WRITE")),
            ("type", s("PERSISTENT-BALANCED")),
        ]),
    ));
    let instance = Node::Dir(Dir::new(
        Style::Struct,
        entries(vec![
            ("attributes", attrs(&c.instance_attributes)),
            ("cpu-platform", s(&c.cpu_platform)),
            ("description", s(&c.description)),
            ("disks", Dir::list(vec![disk])),
            (
                "guest-attributes",
                Node::Dir(Dir::new(Style::Map, Vec::new())),
            ),
            ("hostname", s(&c.hostname)),
            ("id", n(c.instance_id)),
            ("image", s(&c.image)),
            ("licenses", Dir::list(Vec::new())),
            (
                "machine-type",
                s(format!("projects/{num}/machineTypes/{}", c.machine_type)),
            ),
            ("maintenance-event", s("NONE")),
            ("name", s(&c.instance_name)),
            ("network-interfaces", Dir::list(interfaces)),
            ("preempted", s("FALSE")),
            (
                "scheduling",
                Node::Dir(Dir::new(
                    Style::Struct,
                    entries(vec![
                        ("automatic-restart", s("TRUE")),
                        ("on-host-maintenance", s("MIGRATE")),
                        ("preemptible", s("FALSE")),
                    ]),
                )),
            ),
            (
                "service-accounts",
                Node::Dir(Dir::new(Style::Map, accounts)),
            ),
            (
                "tags",
                Node::Leaf(Leaf::List {
                    items: c.tags.clone(),
                    json_default: true,
                }),
            ),
            (
                "virtual-clock",
                Node::Dir(Dir::new(
                    Style::Struct,
                    entries(vec![("drift-token", s("0"))]),
                )),
            ),
            ("zone", s(format!("projects/{num}/zones/{}", c.zone))),
        ]),
    ));
    let project = Node::Dir(Dir::new(
        Style::Struct,
        entries(vec![
            ("attributes", attrs(&c.project_attributes)),
            ("numeric-project-id", n(num)),
            ("project-id", s(&c.project_id)),
        ]),
    ));
    Dir::new(
        Style::Struct,
        entries(vec![("instance", instance), ("project", project)]),
    )
}

/// The node at `segments` below `root`.
pub(crate) fn lookup<'a>(root: &'a Dir, segments: &[String]) -> Option<&'a Node> {
    let mut dir = root;
    let mut node: Option<&Node> = None;
    for (i, seg) in segments.iter().enumerate() {
        let next = dir.get(seg)?;
        node = Some(next);
        match next {
            Node::Dir(d) => dir = d,
            Node::Leaf(_) if i + 1 < segments.len() => return None,
            Node::Leaf(_) => {}
        }
    }
    node
}

/// A node read recursively as JSON (`None` for a minted value, left out).
pub(crate) fn to_json(node: &Node) -> Option<Value> {
    match node {
        Node::Leaf(Leaf::Str(v)) => Some(json!(v)),
        Node::Leaf(Leaf::Num(v)) => Some(json!(v)),
        Node::Leaf(Leaf::List { items, .. }) => Some(json!(items)),
        Node::Leaf(Leaf::Minted) => None,
        Node::Dir(d) => Some(dir_json(d)),
    }
}

/// A directory read recursively as JSON.
pub(crate) fn dir_json(d: &Dir) -> Value {
    match d.style {
        Style::List => Value::Array(d.entries.iter().filter_map(|(_, n)| to_json(n)).collect()),
        Style::Struct | Style::Map => {
            let mut m = Map::new();
            for (name, node) in &d.entries {
                if let Some(v) = to_json(node) {
                    let key = if d.style == Style::Struct {
                        camel(name)
                    } else {
                        name.clone()
                    };
                    m.insert(key, v);
                }
            }
            Value::Object(m)
        }
    }
}

/// A directory read recursively as text (`alt=text`): one line per value, `PATH VALUE`
/// with the path relative to the directory (kebab-case names); a list's items one line
/// each under the same path.
pub(crate) fn dir_text(d: &Dir, prefix: &str, out: &mut String) {
    for (name, node) in &d.entries {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match node {
            Node::Dir(sub) => dir_text(sub, &path, out),
            Node::Leaf(Leaf::Str(v)) => out.push_str(&format!("{path} {v}\n")),
            Node::Leaf(Leaf::Num(v)) => out.push_str(&format!("{path} {v}\n")),
            Node::Leaf(Leaf::List { items, .. }) => {
                for item in items {
                    out.push_str(&format!("{path} {item}\n"));
                }
            }
            Node::Leaf(Leaf::Minted) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Dir {
        build(&GcpConfig::default_gke(), &Rng::new(Some(1)))
    }

    fn path(p: &str) -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn names_and_keys() {
        assert_eq!(camel("numeric-project-id"), "numericProjectId");
        assert_eq!(camel("ip"), "ip");
        let t = tree();
        assert_eq!(t.listing(), ["instance/", "project/"]);
        let Some(Node::Dir(instance)) = lookup(&t, &path("instance")) else {
            panic!("instance is a directory");
        };
        let json = dir_json(instance);
        assert_eq!(
            json["machineType"],
            "projects/123456789012/machineTypes/e2-standard-4"
        );
        assert_eq!(json["id"], 4_520_316_790_173_245_061u64);
        assert_eq!(json["networkInterfaces"][0]["ipAliases"][0], "10.4.1.0/24");
        assert!(json["attributes"]["kube-env"].is_string());
        assert_eq!(json["attributes"]["cluster-name"], "imdsguard-gke");
        let sa = &json["serviceAccounts"]["default"];
        assert_eq!(sa["aliases"], json!(["default"]));
        assert!(
            sa.get("token").is_none() && sa.get("identity").is_none(),
            "{sa}"
        );
        assert!(matches!(
            lookup(&t, &path("instance/service-accounts/default/token")),
            Some(Node::Leaf(Leaf::Minted))
        ));
        assert!(lookup(&t, &path("instance/zone/x")).is_none());
        assert!(lookup(&t, &path("instance/Zone")).is_none());
    }

    #[test]
    fn secrets_are_filled_per_seed_and_say_they_are_fake() {
        use base64::Engine;
        let kube_env = |seed| {
            let t = build(&GcpConfig::default_gke(), &Rng::new(Some(seed)));
            match lookup(&t, &path("instance/attributes/kube-env")) {
                Some(Node::Leaf(Leaf::Str(v))) => v.clone(),
                other => panic!("{other:?}"),
            }
        };
        let a = kube_env(7);
        assert_eq!(a, kube_env(7));
        assert_ne!(a, kube_env(8));
        assert!(!a.contains(FAKE_SECRET_PLACEHOLDER));
        let key = a
            .lines()
            .find_map(|l| l.strip_prefix("KUBELET_KEY: "))
            .unwrap();
        let cert = a
            .lines()
            .find_map(|l| l.strip_prefix("KUBELET_CERT: "))
            .unwrap();
        assert_ne!(key, cert);
        let pem = base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap();
        assert!(
            String::from_utf8(pem)
                .unwrap()
                .contains("FAKE IMDSGUARD EMULATOR SECRET")
        );
    }

    #[test]
    fn text_form() {
        let t = tree();
        let Some(Node::Dir(project)) = lookup(&t, &path("project")) else {
            panic!()
        };
        let mut out = String::new();
        dir_text(project, "", &mut out);
        assert!(out.contains("numeric-project-id 123456789012\n"), "{out}");
        assert!(out.contains("project-id imdsguard-emulated\n"), "{out}");
        assert!(out.contains("attributes/enable-oslogin TRUE\n"), "{out}");
    }
}
