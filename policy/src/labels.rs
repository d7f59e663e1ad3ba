//! Label selectors (Kubernetes `LabelSelector` semantics) with Cilium's label sources.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A label set: key → value.
pub type Labels = BTreeMap<String, String>;

/// Where a selector key looks, after Cilium's `source:key` convention. A key without a known
/// source prefix is `Any`, which Cilium matches against every source; our endpoints only carry
/// `k8s` labels, so `Any` and `K8s` behave alike on them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Any,
    K8s,
    Reserved,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub source: Source,
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

/// A compiled selector: all requirements must hold. No requirement selects everything, as
/// the API reference says of an empty `LabelSelector`: "An empty label selector matches all
/// objects."
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// Why a `LabelSelector` is invalid: the field (relative to the selector) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

impl Selector {
    /// Compiles a Kubernetes `LabelSelector`. `cilium_keys` accepts Cilium's `source:key`
    /// prefixes (`k8s:`, `any:`, `reserved:`); plain Kubernetes selectors take keys literally.
    pub fn compile(sel: &LabelSelector, cilium_keys: bool) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in sel.match_labels.iter().flatten() {
            let (source, key) = split_key(key, cilium_keys, &format!("matchLabels[{key}]"))?;
            requirements.push(Requirement {
                source,
                key,
                op: Op::In,
                values: BTreeSet::from([value.clone()]),
            });
        }
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            let (source, key) = split_key(&expr.key, cilium_keys, &format!("{field}.key"))?;
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            let op = match expr.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(SelectorError {
                        field: format!("{field}.operator"),
                        message: format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                    })
                }
            };
            // API reference, LabelSelectorRequirement.values: "If the operator is In or NotIn,
            // the values array must be non-empty. If the operator is Exists or DoesNotExist,
            // the values array must be empty."
            let needs_values = matches!(op, Op::In | Op::NotIn);
            if needs_values == values.is_empty() {
                return Err(SelectorError {
                    field: format!("{field}.values"),
                    message: if needs_values {
                        format!("operator {} needs at least one value", expr.operator)
                    } else {
                        format!("operator {} takes no values", expr.operator)
                    },
                });
            }
            requirements.push(Requirement {
                source,
                key,
                op,
                values,
            });
        }
        Ok(Self { requirements })
    }

    /// A selector requiring `key=value` (source `k8s`).
    pub fn equals(key: &str, value: &str) -> Requirement {
        Requirement {
            source: Source::K8s,
            key: key.to_string(),
            op: Op::In,
            values: BTreeSet::from([value.to_string()]),
        }
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }

    /// Whether this selector names a `reserved:` label positively (so it may select a
    /// reserved identity such as the host).
    pub fn names_reserved(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.source == Source::Reserved && matches!(r.op, Op::In | Op::Exists))
    }

    /// Matches a label set whose labels all have source `source` (`k8s` for endpoints,
    /// `reserved` for reserved identities).
    pub fn matches(&self, labels: &Labels, source: &Source) -> bool {
        self.requirements.iter().all(|r| {
            let value = if r.source == Source::Any || &r.source == source {
                labels.get(&r.key)
            } else {
                None
            };
            // API reference, LabelSelectorRequirement.operator: NotIn and DoesNotExist hold
            // for objects that lack the key (apimachinery labels.Requirement.Matches).
            match (&r.op, value) {
                (Op::In, Some(v)) => r.values.contains(v),
                (Op::In, None) => false,
                (Op::NotIn, Some(v)) => !r.values.contains(v),
                (Op::NotIn, None) => true,
                (Op::Exists, v) => v.is_some(),
                (Op::DoesNotExist, v) => v.is_none(),
            }
        })
    }
}

fn split_key(key: &str, cilium: bool, field: &str) -> Result<(Source, String), SelectorError> {
    if key.is_empty() {
        return Err(SelectorError {
            field: field.to_string(),
            message: "empty label key".to_string(),
        });
    }
    if !cilium {
        return Ok((Source::Any, key.to_string()));
    }
    let Some((prefix, rest)) = key.split_once(':') else {
        return Ok((Source::Any, key.to_string()));
    };
    match prefix {
        "any" => Ok((Source::Any, rest.to_string())),
        "k8s" => Ok((Source::K8s, rest.to_string())),
        "reserved" => Ok((Source::Reserved, rest.to_string())),
        other => Err(SelectorError {
            field: field.to_string(),
            message: format!(
                "label source {other:?} in key {key:?} is not supported (use k8s:, any: or reserved:)"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> Selector {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: if values.is_empty() {
                    None
                } else {
                    Some(values.iter().map(|v| v.to_string()).collect())
                },
            }]),
        };
        Selector::compile(&sel, false).expect("valid selector")
    }

    // "An empty label selector matches all objects."
    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::compile(&LabelSelector::default(), false).expect("valid");
        assert!(s.matches(&labels(&[]), &Source::K8s));
        assert!(s.matches(&labels(&[("a", "b")]), &Source::K8s));
    }

    // "Valid operators are In, NotIn, Exists and DoesNotExist."
    #[test]
    fn operators() {
        let with = labels(&[("tier", "web")]);
        let other = labels(&[("tier", "db")]);
        let without = labels(&[("app", "x")]);
        let k = &Source::K8s;
        let s = expr("tier", "In", &["web", "api"]);
        assert!(s.matches(&with, k) && !s.matches(&other, k) && !s.matches(&without, k));
        // NotIn matches objects lacking the key.
        let s = expr("tier", "NotIn", &["web"]);
        assert!(!s.matches(&with, k) && s.matches(&other, k) && s.matches(&without, k));
        let s = expr("tier", "Exists", &[]);
        assert!(s.matches(&with, k) && !s.matches(&without, k));
        // DoesNotExist matches objects lacking the key.
        let s = expr("tier", "DoesNotExist", &[]);
        assert!(!s.matches(&with, k) && s.matches(&without, k));
    }

    // "If the operator is In or NotIn, the values array must be non-empty. If the operator
    // is Exists or DoesNotExist, the values array must be empty."
    #[test]
    fn values_must_fit_operator() {
        let mk = |op: &str, values: Option<Vec<String>>| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: op.into(),
                values,
            }]),
        };
        let err = Selector::compile(&mk("In", None), false).expect_err("In without values");
        assert_eq!(err.field, "matchExpressions[0].values");
        let err = Selector::compile(&mk("Exists", Some(vec!["x".into()])), false)
            .expect_err("Exists with values");
        assert!(err.message.contains("takes no values"));
        let err = Selector::compile(&mk("Equals", None), false).expect_err("bad operator");
        assert_eq!(err.field, "matchExpressions[0].operator");
        assert!(err.message.contains("\"Equals\""));
    }

    #[test]
    fn cilium_sources() {
        let sel = LabelSelector {
            match_labels: Some(
                [("k8s:app".to_string(), "web".to_string())]
                    .into_iter()
                    .collect(),
            ),
            match_expressions: None,
        };
        let s = Selector::compile(&sel, true).expect("valid");
        assert!(s.matches(&labels(&[("app", "web")]), &Source::K8s));
        assert!(!s.matches(&labels(&[("app", "web")]), &Source::Reserved));
        let host = LabelSelector {
            match_labels: Some(
                [("reserved:host".to_string(), String::new())]
                    .into_iter()
                    .collect(),
            ),
            match_expressions: None,
        };
        let s = Selector::compile(&host, true).expect("valid");
        assert!(s.names_reserved());
        assert!(s.matches(&labels(&[("host", "")]), &Source::Reserved));
        let bad = LabelSelector {
            match_labels: Some(
                [("cidr:x".to_string(), String::new())]
                    .into_iter()
                    .collect(),
            ),
            match_expressions: None,
        };
        assert!(Selector::compile(&bad, true).is_err());
    }
}
