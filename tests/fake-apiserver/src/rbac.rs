//! RBAC authorization as kube-apiserver's RBAC authorizer decides it, from `ClusterRole`,
//! `ClusterRoleBinding`, `Role` and `RoleBinding` objects (`rbac.authorization.k8s.io/v1`, as
//! `kubectl kustomize` renders them). Pure: no I/O, so a test can replay an audit log against a
//! changed role offline. Not implemented: ClusterRole aggregation (`aggregationRule`), the
//! escalation checks on writes of RBAC objects, and every default role but `system:discovery`
//! (see [`is_discovery`]) and the `system:masters` group.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use serde::Deserialize;
use serde_json::Value;

/// Who asks for what: the user and groups, the verb, and either a resource (`resource` not
/// empty) or a non-resource `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub user: String,
    pub groups: Vec<String>,
    pub verb: String,
    /// Empty for the core group.
    pub api_group: String,
    /// Empty for a non-resource request.
    pub resource: String,
    pub subresource: String,
    /// Empty at the cluster scope.
    pub namespace: String,
    pub name: String,
    /// The URL path, matched against `nonResourceURLs` for a non-resource request.
    pub path: String,
}

/// What the authorizer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied, with the message kube-apiserver puts in its 403 `Status`.
    Deny(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("RBAC YAML document {index}: {source}")]
    Yaml {
        index: usize,
        source: yaml_serde::Error,
    },
    #[error("RBAC YAML document {index} ({kind} {name:?}): {source}")]
    Object {
        index: usize,
        kind: String,
        name: String,
        source: serde_json::Error,
    },
}

/// The RBAC objects loaded, and the decisions they give.
#[derive(Debug, Default, Clone)]
pub struct Authorizer {
    cluster_roles: BTreeMap<String, Vec<PolicyRule>>,
    /// By (namespace, name).
    roles: BTreeMap<(String, String), Vec<PolicyRule>>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    role_bindings: Vec<RoleBinding>,
}

const RBAC_API_VERSION: &str = "rbac.authorization.k8s.io/v1";

impl Authorizer {
    /// Loads every RBAC object of a multi-document YAML text; documents of other kinds are
    /// ignored.
    pub fn from_yaml(text: &str) -> Result<Self, RbacError> {
        let mut out = Self::default();
        out.add_yaml(text)?;
        Ok(out)
    }

    /// Adds the RBAC objects of another multi-document YAML text.
    pub fn add_yaml(&mut self, text: &str) -> Result<(), RbacError> {
        for (index, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let value =
                Value::deserialize(doc).map_err(|source| RbacError::Yaml { index, source })?;
            self.add(index, value)?;
        }
        Ok(())
    }

    fn add(&mut self, index: usize, value: Value) -> Result<(), RbacError> {
        if value["apiVersion"] != RBAC_API_VERSION {
            return Ok(());
        }
        let kind = value["kind"].as_str().unwrap_or("").to_owned();
        let name = value["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let err = |source| RbacError::Object {
            index,
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        match kind.as_str() {
            "ClusterRole" => {
                let role: ClusterRole = serde_json::from_value(value).map_err(err)?;
                let rules = role.rules.unwrap_or_default();
                self.cluster_roles.insert(name, rules);
            }
            "Role" => {
                let role: Role = serde_json::from_value(value).map_err(err)?;
                let ns = role.metadata.namespace.unwrap_or_else(|| "default".into());
                self.roles
                    .insert((ns, name), role.rules.unwrap_or_default());
            }
            "ClusterRoleBinding" => {
                let binding = serde_json::from_value(value).map_err(err)?;
                self.cluster_role_bindings.push(binding);
            }
            "RoleBinding" => {
                let mut binding: RoleBinding = serde_json::from_value(value).map_err(err)?;
                binding
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into());
                self.role_bindings.push(binding);
            }
            _ => {}
        }
        Ok(())
    }

    /// Allowed for the group `system:masters`, for discovery paths to every member of
    /// `system:authenticated`, and if any binding that applies to the subject grants a rule
    /// matching the request: ClusterRoleBindings everywhere, RoleBindings only in their
    /// namespace.
    pub fn authorize(&self, a: &Attributes) -> Decision {
        let member = |g: &str| a.groups.iter().any(|x| x == g);
        let discovery = is_discovery(a) && member("system:authenticated");
        if member("system:masters") || discovery || self.allows(a) {
            Decision::Allow
        } else {
            Decision::Deny(forbidden_message(a))
        }
    }

    fn allows(&self, a: &Attributes) -> bool {
        let cluster = self.cluster_role_bindings.iter().filter(|b| {
            let subjects = b.subjects.as_deref().unwrap_or_default();
            subjects.iter().any(|s| subject_matches(s, "", a))
        });
        for b in cluster {
            if b.role_ref.kind == "ClusterRole" && self.grants(&b.role_ref, "", a) {
                return true;
            }
        }
        if a.namespace.is_empty() || a.resource.is_empty() {
            return false;
        }
        let local = self.role_bindings.iter().filter(|b| {
            let ns = b.metadata.namespace.as_deref().unwrap_or("default");
            let subjects = b.subjects.as_deref().unwrap_or_default();
            ns == a.namespace && subjects.iter().any(|s| subject_matches(s, ns, a))
        });
        for b in local {
            if self.grants(&b.role_ref, &a.namespace, a) {
                return true;
            }
        }
        false
    }

    /// Whether the role `role_ref` names (a Role in `namespace`, or a ClusterRole) has a rule
    /// matching the request.
    fn grants(&self, role_ref: &RoleRef, namespace: &str, a: &Attributes) -> bool {
        let rules = match role_ref.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&role_ref.name),
            "Role" => self
                .roles
                .get(&(namespace.to_owned(), role_ref.name.clone())),
            _ => None,
        };
        rules.is_some_and(|rules| rules.iter().any(|r| rule_matches(r, a)))
    }
}

fn subject_matches(s: &Subject, binding_namespace: &str, a: &Attributes) -> bool {
    match s.kind.as_str() {
        "User" => s.name == a.user,
        "Group" => a.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s.namespace.as_deref().unwrap_or(binding_namespace);
            a.user == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

fn has(list: Option<&Vec<String>>, want: &str) -> bool {
    list.is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
}

/// One rule against one request, as `rbac/v1` `RuleAllows` does.
pub fn rule_matches(rule: &PolicyRule, a: &Attributes) -> bool {
    if !rule.verbs.iter().any(|v| v == "*" || *v == a.verb) {
        return false;
    }
    if a.resource.is_empty() {
        return rule.non_resource_urls.as_ref().is_some_and(|urls| {
            urls.iter().any(|u| match u.strip_suffix('*') {
                Some(prefix) => a.path.starts_with(prefix),
                None => *u == a.path,
            })
        });
    }
    if !has(rule.api_groups.as_ref(), &a.api_group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = rule.resources.as_ref().is_some_and(|rs| {
        rs.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
        })
    });
    let names_ok = match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => names.iter().any(|n| *n == a.name && !a.name.is_empty()),
    };
    resource_ok && names_ok
}

/// The real server's 403 message for a denied request.
pub fn forbidden_message(a: &Attributes) -> String {
    if a.resource.is_empty() {
        return format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            a.user, a.verb, a.path
        );
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let what = if a.name.is_empty() {
        combined.clone()
    } else {
        format!("{combined} \"{}\"", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let (user, verb, group) = (&a.user, &a.verb, &a.api_group);
    format!(
        "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{combined}\" in API \
         group \"{group}\" {scope}"
    )
}

/// Paths every authenticated user may read (the real `system:discovery` and
/// `system:public-info-viewer` default bindings): `/api`, `/apis` and below without a resource,
/// `/version`, `/openapi/*`, and the health endpoints.
pub fn is_discovery(a: &Attributes) -> bool {
    if !a.resource.is_empty() || a.verb != "get" {
        return false;
    }
    let p = a.path.as_str();
    matches!(
        p,
        "/api" | "/apis" | "/version" | "/healthz" | "/readyz" | "/livez"
    ) || ["/api/", "/apis/", "/openapi/", "/version/"]
        .iter()
        .any(|prefix| p.starts_with(prefix))
}

#[cfg(test)]
mod tests;
