//! The DaemonSets and ConfigMaps out of rendered manifests (`kubectl kustomize` output), parsed
//! into their k8s-openapi types.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;

use crate::error::{LabError, Result};
use crate::exec::run;

const KUSTOMIZE_TIMEOUT: Duration = Duration::from_secs(60);

/// The workload of a rendered deployment: its DaemonSets and its ConfigMaps, by name.
#[derive(Debug, Clone)]
pub struct Workload {
    pub daemonsets: BTreeMap<String, DaemonSet>,
    pub config_maps: BTreeMap<String, ConfigMap>,
}

impl Workload {
    /// The DaemonSet `name`.
    pub fn daemonset(&self, name: &str) -> Result<&DaemonSet> {
        self.daemonsets.get(name).ok_or_else(|| {
            let names: Vec<_> = self.daemonsets.keys().collect();
            LabError::Check(format!("no DaemonSet {name} (there are {names:?})"))
        })
    }
}

/// `kubectl kustomize <dir>`, parsed.
pub fn render_workload(dir: &Path) -> Result<Workload> {
    let text = run(
        Command::new("kubectl").arg("kustomize").arg(dir),
        KUSTOMIZE_TIMEOUT,
    )?;
    parse_workload(&text)
        .map_err(|e| LabError::Check(format!("kubectl kustomize {}: {e}", dir.display())))
}

/// The DaemonSets and ConfigMaps of multi-document YAML `text`; other kinds are skipped.
pub fn parse_workload(text: &str) -> Result<Workload> {
    let mut daemonsets = BTreeMap::new();
    let mut config_maps = BTreeMap::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let value = yaml_serde::Value::deserialize(doc)
            .map_err(|e| LabError::Check(format!("a YAML document: {e}")))?;
        match value["kind"].as_str() {
            Some("DaemonSet") => {
                let ds = typed::<DaemonSet>(value, "DaemonSet")?;
                daemonsets.insert(ds.metadata.name.clone().unwrap_or_default(), ds);
            }
            Some("ConfigMap") => {
                let cm = typed::<ConfigMap>(value, "ConfigMap")?;
                let name = cm.metadata.name.clone().unwrap_or_default();
                config_maps.insert(name, cm);
            }
            _ => {}
        }
    }
    if daemonsets.is_empty() {
        return Err(LabError::Check("no DaemonSet".into()));
    }
    Ok(Workload {
        daemonsets,
        config_maps,
    })
}

fn typed<T: serde::de::DeserializeOwned>(value: yaml_serde::Value, kind: &str) -> Result<T> {
    yaml_serde::from_value(value).map_err(|e| LabError::Check(format!("a {kind}: {e}")))
}
