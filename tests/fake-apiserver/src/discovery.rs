//! Discovery documents: `/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`
//! and `/version`, in their plain (unaggregated) form. kubectl asks for the aggregated form
//! (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,...,
//! application/json`) and, answered plain `application/json`, reads the plain documents, as it
//! does with servers older than 1.26. The OpenAPI documents (`/openapi/v2`, `/openapi/v3`) are
//! not served (404): kubectl must run with `--validate=false`.

use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::resources::{self, Resource, RESOURCES};
use crate::response::{full, page_not_found, Body};
use crate::state::State;

const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The discovery document at `path`, if it is one.
pub fn document(st: &State, path: &str) -> Option<Response<Body>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resp = match segments.as_slice() {
        ["version"] => full(StatusCode::OK, &version()),
        ["api"] => full(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "" }],
            }),
        ),
        ["api", "v1"] => full(StatusCode::OK, &resource_list("", "v1")),
        ["apis"] => full(StatusCode::OK, &group_list(st)),
        ["apis", group] if served(st, group) => match group_of(group) {
            Some(g) => full(StatusCode::OK, &g),
            None => page_not_found(),
        },
        ["apis", group, version] if served(st, group) => {
            if resources::group_versions().contains(&(group, version)) {
                full(StatusCode::OK, &resource_list(group, version))
            } else {
                page_not_found()
            }
        }
        ["apis", ..] | ["openapi", ..] => page_not_found(),
        _ => return None,
    };
    Some(resp)
}

/// A group is served unless tests uninstalled its CRDs.
pub fn served(st: &State, group: &str) -> bool {
    !st.uninstalled.contains(group)
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-wiremesh-fake",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn group_version_entry(group: &str, version: &str) -> Value {
    json!({ "groupVersion": format!("{group}/{version}"), "version": version })
}

fn group_of(group: &str) -> Option<Value> {
    let versions: Vec<Value> = resources::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group && !g.is_empty())
        .map(|(g, v)| group_version_entry(g, v))
        .collect();
    let preferred = versions.first()?.clone();
    Some(json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": group,
        "versions": versions, "preferredVersion": preferred,
    }))
}

/// `GET /apis`: the API groups served besides the core group.
fn group_list(st: &State) -> Value {
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in resources::group_versions() {
        if !g.is_empty() && served(st, g) && !names.contains(&g) {
            names.push(g);
        }
    }
    let groups: Vec<Value> = names.into_iter().filter_map(group_of).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn resource_entry(r: &Resource) -> Value {
    let mut entry = json!({
        "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
        "kind": r.kind, "verbs": VERBS,
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    entry
}

fn resource_list(group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    let list: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(resource_entry)
        .collect();
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list,
    })
}
