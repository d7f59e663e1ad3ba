//! `wiremesh apply -f` / `wiremesh delete -f`: read manifests as `kubectl apply -f` does, check
//! them with the policy loader before anything reaches the agent, send them to the local agent
//! and print what it did with each object.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keymgr::store::objects::ObjectRef;
use serde_json::Value;

use super::ask::ask;
use crate::api::{error_chain, ObjectsRequest, Sourced};

/// Why the manifests were refused before anything was sent.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] policy::LoadError),
    #[error("{origin}: invalid YAML")]
    Yaml {
        origin: String,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("{origin}: {reason}")]
    Object {
        origin: String,
        reason: keymgr::store::objects::ObjectRefError,
    },
}

/// Reads manifest files as `kubectl apply -f` does (multi-document YAML, `kind: List`),
/// checks them with the policy loader (errors name the file, the resource and the field; it
/// refuses policy kinds and rules wiremesh cannot enforce as written) and returns the objects
/// wiremesh stores; other kinds are skipped with a note on stderr.
pub fn read_manifests(files: &[PathBuf]) -> Result<Vec<Sourced>, ManifestError> {
    let mut texts = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        texts.push((path.display().to_string(), text));
    }
    policy::load_with(
        texts.iter().map(|(n, t)| (n.as_str(), t.as_str())),
        crate::agent::policy::load_options(),
    )?;
    let mut out = Vec::new();
    for (file, text) in &texts {
        for (i, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let origin = format!("{file} (document {})", i + 1);
            let value: Value = match serde::Deserialize::deserialize(de) {
                Ok(v) => v,
                Err(source) => return Err(ManifestError::Yaml { origin, source }),
            };
            if value.is_null() {
                continue;
            }
            let is_list = value.get("kind").and_then(Value::as_str) == Some("List");
            let items = if is_list {
                value
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            } else {
                vec![value]
            };
            for (j, manifest) in items.into_iter().enumerate() {
                let origin = if is_list {
                    format!("{origin} items[{j}]")
                } else {
                    origin.clone()
                };
                match ObjectRef::of(&manifest) {
                    Ok(_) => out.push(Sourced { origin, manifest }),
                    Err(e) if e.is_about_kind() && manifest.get("kind").is_some() => {
                        eprintln!("note: {origin}: skipped: {e}");
                    }
                    Err(reason) => return Err(ManifestError::Object { origin, reason }),
                }
            }
        }
    }
    Ok(out)
}

/// `wiremesh apply -f` / `wiremesh delete -f`.
pub fn run(files: &[PathBuf], delete: bool, run_dir: &Path) -> ExitCode {
    let what = if delete {
        "wiremesh delete"
    } else {
        "wiremesh apply"
    };
    if files.is_empty() {
        eprintln!("{what}: no manifest given (-f FILE)");
        return ExitCode::from(2);
    }
    let manifests = match read_manifests(files) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{what}: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let req = if delete {
        ObjectsRequest {
            delete: manifests,
            ..Default::default()
        }
    } else {
        ObjectsRequest {
            apply: manifests,
            ..Default::default()
        }
    };
    match ask(run_dir, |agent| async move { agent.objects(&req).await }) {
        Ok(r) => {
            for (list, verb) in [
                (&r.configured, "configured"),
                (&r.unchanged, "unchanged"),
                (&r.deleted, "deleted"),
                (&r.not_found, "not found"),
            ] {
                for name in list {
                    println!("{name} {verb}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{what}: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
