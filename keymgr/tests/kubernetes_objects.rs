//! The Kubernetes object store (`ObjectStore::kubernetes`) against an in-process FAKE API server
//! (`fake-apiserver`), not a real one: no real Kubernetes API server can be installed on the
//! project's machines. The fake speaks the real REST + watch protocol (list with
//! resourceVersion, watch with bookmarks and 410 Gone, plain-text 404 for an uninstalled group,
//! `GET /apis` discovery, ConfigMap create with 409 AlreadyExists), reached through a generated
//! kubeconfig file. What a real API server adds — RBAC, admission, pagination, label selectors,
//! CRD registration and its delays — is not covered.
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[allow(
    dead_code,
    reason = "the helpers are shared; this file uses part of them"
)]
mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use common::bounded_by;
use keymgr::store::objects::{ObjectRef, ObjectSet, ObjectStore};
use keymgr::store::KubeConfig;
use serde_json::{json, Value};
use tokio::sync::watch;
use wiremesh_fake_apiserver::FakeApiServer;

fn store(server: &FakeApiServer) -> ObjectStore {
    let config = KubeConfig {
        kubeconfig: Some(server.kubeconfig(None)),
        ..KubeConfig::default()
    };
    ObjectStore::kubernetes(&config).unwrap()
}

fn r(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The manifest stored for `r`, parsed.
fn manifest(set: &ObjectSet, r: &ObjectRef) -> Option<Value> {
    let stored = set.objects.get(r)?;
    Some(serde_json::from_str(&stored.manifest).unwrap())
}

/// Waits up to `within` for a set that satisfies `f` (called `what` in the failure).
async fn wait_for(
    rx: &mut watch::Receiver<Arc<ObjectSet>>,
    within: Duration,
    what: &str,
    f: impl Fn(&ObjectSet) -> bool,
) -> Arc<ObjectSet> {
    let found = tokio::time::timeout(within, async {
        loop {
            let set = rx.borrow_and_update().clone();
            if f(&set) {
                return set;
            }
            rx.changed().await.expect("object store stopped");
        }
    })
    .await;
    let last = rx.borrow().clone();
    found.unwrap_or_else(|_| panic!("{what} not seen within {within:?}; last set: {last:#?}"))
}

async fn bounded(test: impl Future<Output = ()>) {
    bounded_by(Duration::from_secs(60), test).await;
}

fn namespace(name: &str, team: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"team": team}}})
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx",
            "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn network_policy(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}})
}

fn cnp(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]},
        "status": {"nodes": {"node-1": {"enforcing": true}}}})
}

fn ccnp(name: &str) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": name},
        "specs": [{"endpointSelector": {}, "egress": [{"toEntities": ["world"]}]}]})
}

#[tokio::test]
async fn objects_are_listed_then_followed_as_manifests_policy_reads() {
    bounded(async {
        let server = FakeApiServer::start().await;
        server.put(namespace("shop", "a"));
        server.put(pod("shop", "web-1", "web", "10.244.1.5"));
        server.put(network_policy("shop", "allow-web"));
        server.put(cnp("shop", "from-client"));
        server.put(ccnp("egress-world"));
        let objects = store(&server);
        assert_eq!(objects.describe(), format!("kubernetes:{}", server.url()));
        let mut rx = objects.subscribe();
        let set = wait_for(&mut rx, Duration::from_secs(5), "the synced set", |s| {
            s.synced
        })
        .await;
        let refs: BTreeSet<String> = set.objects.keys().map(ToString::to_string).collect();
        let expected = [
            "Namespace shop",
            "Pod shop/web-1",
            "NetworkPolicy shop/allow-web",
            "CiliumNetworkPolicy shop/from-client",
            "CiliumClusterwideNetworkPolicy egress-world",
        ];
        assert_eq!(refs, expected.iter().map(ToString::to_string).collect());
        assert!(set.unreadable.is_empty(), "{:?}", set.unreadable);

        // What policy reads, with the type that list items lack, and nothing that changes
        // with every write (resourceVersion, managedFields) or that policy does not read.
        let p = manifest(&set, &r("Pod", "shop", "web-1")).unwrap();
        assert_eq!(
            p,
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                    "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
                "status": {"phase": "Running", "podIP": "10.244.1.5",
                    "podIPs": [{"ip": "10.244.1.5"}]}})
        );
        assert_eq!(
            set.objects[&r("Pod", "shop", "web-1")].origin,
            "/api/v1/namespaces/shop/pods/web-1"
        );
        let c = manifest(&set, &r("CiliumNetworkPolicy", "shop", "from-client")).unwrap();
        assert_eq!(c["apiVersion"], "cilium.io/v2");
        assert_eq!(c["spec"], cnp("shop", "from-client")["spec"]);
        assert!(c.get("status").is_none());
        let n = manifest(&set, &r("Namespace", "", "shop")).unwrap();
        assert_eq!(n["metadata"]["labels"], json!({"team": "a"}));
        assert!(n["metadata"].get("managedFields").is_none());
        let ccnp_seen = manifest(
            &set,
            &r("CiliumClusterwideNetworkPolicy", "", "egress-world"),
        );
        assert_eq!(ccnp_seen.unwrap()["specs"], ccnp("egress-world")["specs"]);

        // Changes arrive by watch: a relabelled pod, a deleted policy, a new namespace.
        server.put(pod("shop", "web-1", "api", "10.244.1.5"));
        server.delete("NetworkPolicy", "shop", "allow-web");
        server.put(namespace("bank", "b"));
        server.put(pod("bank", "db-0", "db", "10.244.2.7"));
        let set = wait_for(&mut rx, Duration::from_secs(2), "the changes", |s| {
            let relabelled = manifest(s, &r("Pod", "shop", "web-1"))
                .is_some_and(|p| p["metadata"]["labels"]["app"] == "api");
            relabelled
                && !s
                    .objects
                    .contains_key(&r("NetworkPolicy", "shop", "allow-web"))
                && s.objects.contains_key(&r("Namespace", "", "bank"))
                && s.objects.contains_key(&r("Pod", "bank", "db-0"))
        })
        .await;
        assert_eq!(set.objects.len(), 6);
        assert!(set.synced);

        // A status change policy does not read publishes nothing new.
        let before = rx.borrow_and_update().clone();
        let mut noisy = pod("bank", "db-0", "db", "10.244.2.7");
        noisy["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
        server.put(noisy);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "an unread field republished the set"
        );
        assert_eq!(*rx.borrow(), before);

        let refused = objects.write(vec![], vec![]).await.unwrap_err();
        assert!(refused.to_string().contains("kubectl"), "{refused}");
    })
    .await;
}

#[tokio::test]
async fn a_410_gone_relists_and_the_listing_replaces_what_was_known() {
    bounded(async {
        let server = FakeApiServer::start().await;
        server.put(namespace("shop", "a"));
        server.put(pod("shop", "web-1", "web", "10.244.1.5"));
        server.put(pod("shop", "web-2", "web", "10.244.1.6"));
        server.put(cnp("shop", "from-client"));
        let objects = store(&server);
        let mut rx = objects.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "both pods", |s| {
            s.synced && s.objects.len() == 4
        })
        .await;

        // Changes whose events are compacted away: the open watches end, the next ones get
        // 410 Gone, and only a relist can show that web-1 is gone and web-3 came.
        server.delete_compacting("Pod", "shop", "web-1");
        server.put_compacting(pod("shop", "web-3", "web", "10.244.1.7"));
        server.delete_compacting("CiliumNetworkPolicy", "shop", "from-client");
        let set = wait_for(&mut rx, Duration::from_secs(5), "the relisted pods", |s| {
            !s.objects.contains_key(&r("Pod", "shop", "web-1"))
                && s.objects.contains_key(&r("Pod", "shop", "web-3"))
                && !s
                    .objects
                    .contains_key(&r("CiliumNetworkPolicy", "shop", "from-client"))
        })
        .await;
        let refs: Vec<String> = set.objects.keys().map(ToString::to_string).collect();
        assert_eq!(refs, ["Namespace shop", "Pod shop/web-2", "Pod shop/web-3"]);
        assert!(set.synced);

        // Watching resumes after the relist.
        server.put(network_policy("shop", "late"));
        wait_for(
            &mut rx,
            Duration::from_secs(2),
            "a policy after the relist",
            |s| s.objects.contains_key(&r("NetworkPolicy", "shop", "late")),
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn missing_cilium_crds_leave_the_other_kinds_working_until_installed() {
    bounded(async {
        let server = FakeApiServer::start().await;
        server.set_cilium_crds(false);
        server.put(namespace("shop", "a"));
        server.put(pod("shop", "web-1", "web", "10.244.1.5"));
        server.put(cnp("shop", "stored-before-the-crd"));
        let objects = store(&server);
        let mut rx = objects.subscribe();
        let set = wait_for(&mut rx, Duration::from_secs(5), "a synced set", |s| {
            s.synced
        })
        .await;
        let refs: Vec<String> = set.objects.keys().map(ToString::to_string).collect();
        assert_eq!(refs, ["Namespace shop", "Pod shop/web-1"]);

        server.put(network_policy("shop", "allow-web"));
        wait_for(&mut rx, Duration::from_secs(2), "a NetworkPolicy", |s| {
            s.objects
                .contains_key(&r("NetworkPolicy", "shop", "allow-web"))
        })
        .await;

        // Installed later, the CRDs are found at the next recheck (every 10 s).
        server.set_cilium_crds(true);
        let set = wait_for(&mut rx, Duration::from_secs(15), "the CNP", |s| {
            s.objects
                .contains_key(&r("CiliumNetworkPolicy", "shop", "stored-before-the-crd"))
        })
        .await;
        assert_eq!(set.objects.len(), 4);
        assert!(set.synced);
    })
    .await;
}

#[tokio::test]
async fn an_outage_keeps_the_set_and_a_restart_catches_up() {
    bounded(async {
        let mut server = FakeApiServer::start().await;
        server.put(namespace("shop", "a"));
        server.put(pod("shop", "web-1", "web", "10.244.1.5"));
        let objects = store(&server);
        let mut rx = objects.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "the set", |s| {
            s.synced && s.objects.len() == 2
        })
        .await;

        server.stop();
        server.delete("Pod", "shop", "web-1");
        server.put(pod("shop", "web-2", "web", "10.244.1.6"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let kept = rx.borrow().clone();
        assert!(kept.synced);
        assert!(kept.objects.contains_key(&r("Pod", "shop", "web-1")));

        server.restart().await;
        wait_for(
            &mut rx,
            Duration::from_secs(10),
            "the changes made meanwhile",
            |s| {
                !s.objects.contains_key(&r("Pod", "shop", "web-1"))
                    && s.objects.contains_key(&r("Pod", "shop", "web-2"))
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configmap_allocators_never_share_a_number() {
    bounded(async {
        let server = FakeApiServer::start().await;
        let stores: Vec<_> = (0..4).map(|_| Arc::new(store(&server))).collect();
        let first = common::race_allocators(&stores).await;
        assert!(
            server.create_conflicts() > 0,
            "the allocators never raced for a number"
        );

        // Each allocation is one ConfigMap holding its label set.
        for (key, id) in &first {
            let name = format!("wiremesh-identity-{id}");
            let cm = server.object("ConfigMap", "kube-system", &name).unwrap();
            assert_eq!(cm["data"]["labels"], json!(key), "{cm}");
            assert_eq!(
                cm["metadata"]["labels"]["wiremesh.io/identity"],
                json!(id.to_string())
            );
        }

        // A later allocator reads the allocations instead of creating any.
        let conflicts = server.create_conflicts();
        let again = store(&server)
            .allocate(common::colliding_wants())
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(server.create_conflicts(), conflicts);
    })
    .await;
}
