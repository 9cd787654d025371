//! "Every pod except these": the complement of a union of label selectors, written as a
//! union of label selectors (each a conjunction of requirements). Used where an
//! exception can only come from a selection: Cilium's deny policies (a deny beats every
//! allow) and the NetworkPolicy deny of pods that no existing policy isolates yet.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::operator_name;
use crate::model::{LabelSelector, Operator, Requirement};

/// A requirement.
pub(crate) fn req(key: &str, operator: Operator, values: &[String]) -> Requirement {
    Requirement {
        key: key.to_string(),
        operator,
        values: values.to_vec(),
    }
}

/// A label selector as a conjunction of requirements (`matchLabels` as `In`).
pub(crate) fn atoms_of(s: &LabelSelector) -> Vec<Requirement> {
    let mut out: Vec<Requirement> = s
        .match_labels
        .iter()
        .map(|(k, v)| req(k, Operator::In, std::slice::from_ref(v)))
        .collect();
    out.extend(s.match_expressions.iter().cloned());
    out
}

/// The values a label may take, absence included: a set of values (`Only`) or every
/// value but a set (`AllBut`), with or without the label being absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allowed {
    absent: bool,
    values: Values,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Values {
    Only(BTreeSet<String>),
    AllBut(BTreeSet<String>),
}

impl Allowed {
    fn of(r: &Requirement) -> Allowed {
        let vals: BTreeSet<String> = r.values.iter().cloned().collect();
        match r.operator {
            Operator::In => Allowed {
                absent: false,
                values: Values::Only(vals),
            },
            Operator::NotIn => Allowed {
                absent: true,
                values: Values::AllBut(vals),
            },
            Operator::Exists => Allowed {
                absent: false,
                values: Values::AllBut(BTreeSet::new()),
            },
            Operator::DoesNotExist => Allowed {
                absent: true,
                values: Values::Only(BTreeSet::new()),
            },
        }
    }

    fn negate(&self) -> Allowed {
        Allowed {
            absent: !self.absent,
            values: match &self.values {
                Values::Only(v) => Values::AllBut(v.clone()),
                Values::AllBut(v) => Values::Only(v.clone()),
            },
        }
    }

    fn intersect(&self, other: &Allowed) -> Allowed {
        use Values::*;
        let values = match (&self.values, &other.values) {
            (Only(a), Only(b)) => Only(a.intersection(b).cloned().collect()),
            (Only(a), AllBut(b)) | (AllBut(b), Only(a)) => Only(a.difference(b).cloned().collect()),
            (AllBut(a), AllBut(b)) => AllBut(a.union(b).cloned().collect()),
        };
        Allowed {
            absent: self.absent && other.absent,
            values,
        }
    }

    fn is_empty(&self) -> bool {
        !self.absent && matches!(&self.values, Values::Only(v) if v.is_empty())
    }

    fn is_everything(&self) -> bool {
        self.absent && matches!(&self.values, Values::AllBut(v) if v.is_empty())
    }

    /// Whether every value `self` allows, `other` allows too.
    fn within(&self, other: &Allowed) -> bool {
        use Values::*;
        if self.absent && !other.absent {
            return false;
        }
        match (&self.values, &other.values) {
            (Only(a), Only(b)) => a.is_subset(b),
            (Only(a), AllBut(b)) => a.is_disjoint(b),
            (AllBut(_), Only(_)) => false,
            (AllBut(a), AllBut(b)) => b.is_subset(a),
        }
    }

    /// The requirements that say this (never called on an empty or full set).
    fn requirements(&self, key: &str) -> Vec<Requirement> {
        let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>();
        match (&self.values, self.absent) {
            (Values::Only(v), false) => vec![req(key, Operator::In, &list(v))],
            (Values::AllBut(v), true) => vec![req(key, Operator::NotIn, &list(v))],
            (Values::AllBut(v), false) if v.is_empty() => vec![req(key, Operator::Exists, &[])],
            (Values::AllBut(v), false) => vec![
                req(key, Operator::Exists, &[]),
                req(key, Operator::NotIn, &list(v)),
            ],
            // Absent or one of a set: only from DoesNotExist (empty set) here, since
            // intersections keep `absent` only when every part allowed it.
            (Values::Only(_), true) => vec![req(key, Operator::DoesNotExist, &[])],
        }
    }
}

/// A conjunction: per label key, the values allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Clause(BTreeMap<String, Allowed>);

impl Clause {
    /// `self` and `key` in `allowed`; `None` when nothing can satisfy both.
    fn and(&self, key: &str, allowed: &Allowed) -> Option<Clause> {
        let mut c = self.clone();
        let merged = match c.0.get(key) {
            Some(prev) => prev.intersect(allowed),
            None => allowed.clone(),
        };
        if merged.is_empty() {
            return None;
        }
        if merged.is_everything() {
            c.0.remove(key);
        } else {
            c.0.insert(key.to_string(), merged);
        }
        Some(c)
    }

    /// Whether every pod `self` selects, `other` selects too.
    fn within(&self, other: &Clause) -> bool {
        other.0.iter().all(|(k, o)| {
            let mine = self.0.get(k).cloned().unwrap_or(Allowed {
                absent: true,
                values: Values::AllBut(BTreeSet::new()),
            });
            mine.within(o)
        })
    }

    /// The clause as a Kubernetes label selector (`{}` for every pod).
    pub(crate) fn to_selector(&self) -> Value {
        let exprs: Vec<Value> = self
            .0
            .iter()
            .flat_map(|(k, a)| a.requirements(k))
            .map(|r| {
                let mut e = Map::new();
                e.insert("key".into(), json!(r.key));
                e.insert("operator".into(), json!(operator_name(r.operator)));
                if !r.values.is_empty() {
                    e.insert("values".into(), json!(r.values));
                }
                Value::Object(e)
            })
            .collect();
        if exprs.is_empty() {
            json!({})
        } else {
            json!({ "matchExpressions": exprs })
        }
    }
}

/// "Not any of the subjects" as a disjunction of clauses: each subject `a1 ∧ … ∧ an`
/// is complemented as the disjoint `¬a1 ∨ (a1 ∧ ¬a2) ∨ …` (atoms shared by many subjects
/// first, so that they merge), the subjects' complements are intersected, and clauses
/// that cannot hold or that another clause covers are dropped.
pub(crate) fn complement(subjects: &[Vec<Requirement>]) -> Vec<Clause> {
    // How many subjects share each atom: shared atoms first.
    let mut shared: BTreeMap<(String, String), usize> = BTreeMap::new();
    for s in subjects {
        for r in s {
            *shared.entry(atom_key(r)).or_default() += 1;
        }
    }
    let mut clauses = vec![Clause::default()];
    for s in subjects {
        let mut atoms: Vec<&Requirement> = s.iter().collect();
        atoms.sort_by_key(|r| {
            (
                r.key != super::cilium::NAMESPACE_LABEL,
                std::cmp::Reverse(shared[&atom_key(r)]),
                atom_key(r),
            )
        });
        let mut next = Vec::new();
        for c in &clauses {
            let mut prefix = Some(c.clone());
            for r in &atoms {
                let Some(p) = prefix else { break };
                let a = Allowed::of(r);
                if let Some(branch) = p.and(&r.key, &a.negate()) {
                    next.push(branch);
                }
                prefix = p.and(&r.key, &a);
            }
        }
        clauses = minimal(next);
    }
    clauses
}

fn atom_key(r: &Requirement) -> (String, String) {
    (r.key.clone(), format!("{:?}{:?}", r.operator, r.values))
}

/// Drops duplicates and clauses that another clause covers.
fn minimal(clauses: Vec<Clause>) -> Vec<Clause> {
    let mut out: Vec<Clause> = Vec::new();
    for c in clauses {
        if out.iter().any(|o| c.within(o)) {
            continue;
        }
        out.retain(|o| !o.within(&c));
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::cilium::NAMESPACE_LABEL;
    use crate::model::Labels;

    fn sel(c: &Clause, labels: &[(&str, &str)]) -> bool {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        c.0.iter()
            .flat_map(|(k, a)| a.requirements(k))
            .all(|r| r.matches(&labels))
    }

    fn any(cs: &[Clause], labels: &[(&str, &str)]) -> bool {
        cs.iter().any(|c| sel(c, labels))
    }

    fn r(key: &str, op: Operator, values: &[&str]) -> Requirement {
        req(
            key,
            op,
            &values.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn complement_selects_exactly_the_other_pods() {
        let ns = NAMESPACE_LABEL;
        let subjects = vec![
            vec![
                r(ns, Operator::In, &["kube-system"]),
                r("app", Operator::In, &["a"]),
                r("managed", Operator::In, &["aks"]),
            ],
            vec![
                r(ns, Operator::In, &["kube-system"]),
                r("app", Operator::In, &["b"]),
            ],
            vec![
                r(ns, Operator::In, &["kube-system"]),
                r("component", Operator::In, &["c"]),
                r("managed", Operator::In, &["aks"]),
            ],
        ];
        let cs = complement(&subjects);
        assert!(cs.len() <= 4, "{cs:?}");
        let ks = (ns, "kube-system");
        for (labels, expected) in [
            (vec![ks, ("app", "a"), ("managed", "aks")], true),
            (vec![ks, ("app", "a")], false),
            (vec![ks, ("app", "b")], true),
            (vec![ks, ("app", "b"), ("x", "y")], true),
            (vec![ks, ("component", "c"), ("managed", "aks")], true),
            (vec![ks, ("component", "c")], false),
            (vec![ks], false),
            (vec![(ns, "default"), ("app", "b")], false),
            (vec![("app", "b")], false),
        ] {
            assert_eq!(
                any(&cs, &labels),
                !expected,
                "{labels:?}: expected {expected}, clauses {cs:?}"
            );
        }
    }

    #[test]
    fn not_in_and_exists_complements() {
        let cs = complement(&[
            vec![r("tier", Operator::NotIn, &["x"])],
            vec![r("a", Operator::DoesNotExist, &[])],
        ]);
        // Not (tier not in x) and not (a absent): tier == x and a present.
        assert_eq!(cs.len(), 1);
        assert!(sel(&cs[0], &[("tier", "x"), ("a", "1")]));
        assert!(!sel(&cs[0], &[("tier", "x")]));
        assert!(!sel(&cs[0], &[("a", "1")]));
    }
}
