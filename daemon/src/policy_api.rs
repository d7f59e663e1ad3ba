//! `wiremesh apply/delete -f` and the online `wiremesh policy trace`: the CLI side (read and
//! check manifests, talk to the local agent's admin socket) and the agent side (validate the
//! whole resulting object set before anything is stored, answer traces from the policy in
//! force).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use keymgr::store::objects::{ObjectRef, ObjectSet, ObjectStore, StoredObject};
use keymgr::Snapshot;
use policy::{render_text, trace, Query};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::policy::{load, PolicyState};

pub const OBJECTS_PATH: &str = "/v1/objects";
pub const TRACE_PATH: &str = "/v1/policy/trace";

/// One manifest and where the user wrote it (`file (document N)`), for messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sourced {
    pub origin: String,
    pub manifest: Value,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ObjectsRequest {
    #[serde(default)]
    pub apply: Vec<Sourced>,
    #[serde(default)]
    pub delete: Vec<Sourced>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ObjectsResponse {
    pub configured: Vec<String>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
    pub not_found: Vec<String>,
}

/// Agent side of apply/delete: the set the store would hold afterwards must load as a whole
/// (every policy valid, no duplicates), or nothing is written. `Err` is the message for the
/// user (HTTP 400 when `bad_request`).
pub async fn change_objects(
    store: &ObjectStore,
    current: &ObjectSet,
    nodes: &Snapshot,
    req: ObjectsRequest,
) -> Result<ObjectsResponse, (bool, String)> {
    if !current.synced {
        return Err((
            false,
            format!(
                "{} has not been read yet (is it reachable?); nothing was stored",
                store.describe()
            ),
        ));
    }
    let mut next = current.clone();
    let mut resp = ObjectsResponse::default();
    let mut writes = Vec::new();
    let mut deletes = Vec::new();
    for d in &req.delete {
        let r = ObjectRef::of(&d.manifest).map_err(|e| (true, format!("{}: {e}", d.origin)))?;
        if next.objects.remove(&r).is_some() {
            resp.deleted.push(r.to_string());
            deletes.push(r);
        } else {
            resp.not_found.push(r.to_string());
        }
    }
    for a in req.apply {
        let r = ObjectRef::of(&a.manifest).map_err(|e| (true, format!("{}: {e}", a.origin)))?;
        let text = serde_json::to_string(&a.manifest).map_err(|e| (true, e.to_string()))?;
        if next.objects.get(&r).is_some_and(|o| o.manifest == text) {
            resp.unchanged.push(r.to_string());
            continue;
        }
        next.objects.insert(
            r.clone(),
            StoredObject {
                origin: a.origin,
                manifest: text.clone(),
            },
        );
        resp.configured.push(r.to_string());
        writes.push((r, text));
    }
    load(&next, nodes).map_err(|e| {
        (
            true,
            format!("{e}\nnothing was stored; the policy in force is unchanged"),
        )
    })?;
    if writes.is_empty() && deletes.is_empty() {
        return Ok(resp);
    }
    store.write(writes, deletes).await.map_err(|e| {
        (
            false,
            format!("{e}; nothing is in force until it is stored"),
        )
    })?;
    Ok(resp)
}

/// Agent side of the online trace: JSON-lines queries in, one answer per line (JSON), or the
/// text rendering when `text` and there is one query.
pub fn trace_online(state: &PolicyState, body: &str, text: bool) -> String {
    let mut out = String::new();
    for (i, line) in body.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Query::from_json_line(line, i + 1).and_then(|q| trace(&state.bundle, &q)) {
            Ok(r) if text => out.push_str(&render_text(&r)),
            Ok(r) => {
                out.push_str(&serde_json::to_string(&r).unwrap_or_default());
                out.push('\n');
            }
            Err(e) => {
                let v =
                    serde_json::json!({"verdict": null, "deniedBy": null, "error": e.to_string()});
                out.push_str(&v.to_string());
                out.push('\n');
            }
        }
    }
    if let Some(why) = &state.refused {
        let note = format!(
            "note: the store holds objects that do not load ({why}); this answer is from the \
             policy in force (generation {})\n",
            state.generation
        );
        if text {
            out.push_str(&note);
        }
    }
    out
}

/// Reads manifest files as `kubectl apply -f` does (multi-document YAML, `kind: List`),
/// checks them with the policy loader (errors name the file, the resource and the field; it
/// refuses policy kinds and rules wiremesh cannot enforce as written) and returns the objects
/// wiremesh stores; other kinds are skipped with a note on stderr.
pub fn read_manifests(files: &[PathBuf]) -> Result<Vec<Sourced>> {
    let mut texts = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        texts.push((path.display().to_string(), text));
    }
    policy::load(texts.iter().map(|(n, t)| (n.as_str(), t.as_str())))?;
    let mut out = Vec::new();
    for (file, text) in &texts {
        for (i, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let origin = format!("{file} (document {})", i + 1);
            let value: Value = serde::Deserialize::deserialize(de)
                .with_context(|| format!("{origin}: invalid YAML"))?;
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
                    Err(e) => bail!("{origin}: {e}"),
                }
            }
        }
    }
    Ok(out)
}

/// `wiremesh apply -f` / `wiremesh delete -f`.
pub fn run_objects(files: &[PathBuf], delete: bool, run_dir: &Path) -> ExitCode {
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
            eprintln!("{what}: {e:#}");
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
    let socket = run_dir.join("wiremesh.sock");
    let result = crate::runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(crate::admin::request_with_body(
                &socket,
                hyper::Method::POST,
                OBJECTS_PATH,
                serde_json::to_string(&req)?,
            ))
        })
        .and_then(|body| Ok(serde_json::from_str::<ObjectsResponse>(&body)?));
    match result {
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
            eprintln!("{what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The online trace: the queries go to the agent, which answers from the policy it enforces.
pub fn ask_agent(run_dir: &Path, lines: String, text: bool) -> Result<String> {
    let socket = run_dir.join("wiremesh.sock");
    let path = format!("{TRACE_PATH}?output={}", if text { "text" } else { "json" });
    crate::runtime()?.block_on(crate::admin::request_with_body(
        &socket,
        hyper::Method::POST,
        &path,
        lines,
    ))
}
