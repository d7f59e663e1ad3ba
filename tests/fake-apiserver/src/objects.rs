//! In-process helpers for objects of any kind: put, delete, read, CRD (un)installation and
//! create-conflict counts, as `kubectl apply` or a controller would change them.

use serde_json::Value;

use crate::harness::FakeApiServer;
use crate::resources;

impl FakeApiServer {
    /// Creates or replaces an object (chosen by its `kind`; namespaced kinds default to
    /// `default`), as `kubectl apply` would.
    pub fn put(&self, manifest: Value) {
        self.put_with(manifest, false);
    }

    /// Like [`FakeApiServer::put`], but drops the event history: watches get 410 Gone and must
    /// relist to see the change. Open watches are ended.
    pub fn put_compacting(&self, manifest: Value) {
        self.put_with(manifest, true);
    }

    fn put_with(&self, manifest: Value, compact: bool) {
        let kind = manifest["kind"].as_str().expect("manifest has a kind");
        let r = of_kind(kind);
        let name = manifest["metadata"]["name"]
            .as_str()
            .expect("manifest has metadata.name")
            .to_owned();
        let ns = match manifest["metadata"]["namespace"].as_str() {
            _ if !r.namespaced => String::new(),
            Some(ns) => ns.to_owned(),
            None => "default".into(),
        };
        let f = |old: Option<&Value>| {
            let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
            Some((event, Some(manifest)))
        };
        self.shared_store().change(r, &ns, &name, f, compact);
    }

    /// Deletes an object (`namespace` empty if cluster-scoped).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.delete_with(kind, namespace, name, false);
    }

    /// Like [`FakeApiServer::delete`], but drops the event history (see `put_compacting`).
    pub fn delete_compacting(&self, kind: &str, namespace: &str, name: &str) {
        self.delete_with(kind, namespace, name, true);
    }

    fn delete_with(&self, kind: &str, namespace: &str, name: &str, compact: bool) {
        let gone = |old: Option<&Value>| old.map(|_| ("DELETED", None));
        self.shared_store()
            .change(of_kind(kind), namespace, name, gone, compact);
    }

    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (of_kind(kind).plural, namespace.to_owned(), name.to_owned());
        self.shared_store().lock().objects.get(&key).cloned()
    }

    /// Installs or uninstalls the `cilium.io` CRDs (their objects are kept, as if the CRDs had
    /// been reinstalled with them).
    pub fn set_cilium_crds(&self, installed: bool) {
        self.set_crds("cilium.io", installed);
    }

    /// Installs or uninstalls the CRDs of an API group: while uninstalled, `/apis` leaves the
    /// group out and its paths answer a plain-text `404 page not found`, as a real server does.
    pub fn set_crds(&self, group: &str, installed: bool) {
        let mut st = self.shared_store().lock();
        if installed {
            st.uninstalled.remove(group);
        } else {
            st.uninstalled.insert(group.to_owned());
        }
    }

    /// How many creates were answered 409 AlreadyExists.
    pub fn create_conflicts(&self) -> u32 {
        self.shared_store().lock().create_conflicts
    }
}

fn of_kind(kind: &str) -> &'static resources::Resource {
    resources::of_kind(kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve kind {kind}"))
}
