//! Identity numbers allocated in the Kubernetes API: one ConfigMap per number in
//! [`IDENTITY_NAMESPACE`], created with POST, so that the API server's 409 AlreadyExists is
//! what makes two agents racing for a number never both get it. It must never overwrite an
//! allocation: a number is taken by creating its ConfigMap, never by updating one.

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::Api;

use super::KubeObjects;
use crate::store::kubernetes::RPC_TIMEOUT;
use crate::store::objects::Claim;
use crate::store::StoreError;

/// Objects per page of a listing.
const PAGE: u32 = 500;
/// Where identity allocations are kept, one ConfigMap per number.
const IDENTITY_NAMESPACE: &str = "kube-system";
const IDENTITY_PREFIX: &str = "wiremesh-identity-";
/// Label of an allocation ConfigMap, holding its number (`kubectl get cm -l ...`).
const IDENTITY_LABEL: &str = "wiremesh.io/identity";
/// The ConfigMap data key holding the label set's canonical key.
const IDENTITY_DATA: &str = "labels";

impl KubeObjects {
    /// Every allocation: number → labels key.
    pub(in crate::store::objects) async fn identities(
        &self,
    ) -> Result<BTreeMap<u32, String>, StoreError> {
        let api = self.configmaps().await?;
        let mut out = BTreeMap::new();
        let mut params = ListParams::default().labels(IDENTITY_LABEL).limit(PAGE);
        loop {
            let page = self.rpc("list identities", api.list(&params)).await?;
            for cm in &page.items {
                let number = cm.metadata.name.as_deref().and_then(identity_number);
                if let (Some(id), Some(key)) = (number, holder(cm)) {
                    out.insert(id, key);
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(out),
            }
        }
    }

    /// Creates the number's ConfigMap holding `key`; if it exists (409), reads who holds it.
    pub(in crate::store::objects) async fn claim(
        &self,
        id: u32,
        key: &str,
    ) -> Result<Claim, StoreError> {
        let api = self.configmaps().await?;
        let name = format!("{IDENTITY_PREFIX}{id}");
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        (IDENTITY_LABEL.to_string(), id.to_string()),
                        ("app.kubernetes.io/managed-by".into(), "wiremesh".into()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some([(IDENTITY_DATA.to_string(), key.to_string())].into()),
            ..ConfigMap::default()
        };
        // An allocation deleted between our create and our read is tried again.
        for _ in 0..3 {
            let what = format!("create ConfigMap {IDENTITY_NAMESPACE}/{name}");
            match self
                .try_rpc(&what, api.create(&PostParams::default(), &cm))
                .await?
            {
                Ok(_) => return Ok(Claim::Ours),
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(self.unavailable(format!("{what}: {e}"))),
            }
            let what = format!("get ConfigMap {IDENTITY_NAMESPACE}/{name}");
            if let Some(cm) = self.rpc(&what, api.get_opt(&name)).await? {
                return Ok(Claim::HeldBy(holder(&cm).unwrap_or_default()));
            }
        }
        Ok(Claim::HeldBy(String::new()))
    }

    async fn configmaps(&self) -> Result<Api<ConfigMap>, StoreError> {
        let mut client = self.client.lock().await;
        if client.is_none() {
            let made = self.api.client().await;
            *client = Some(made.map_err(|e| self.unavailable(e.to_string()))?);
        }
        let client = client.clone().expect("made above");
        Ok(Api::namespaced(client, IDENTITY_NAMESPACE))
    }

    /// One request, bounded in time; any failure drops the client so that the next request
    /// makes a new one.
    async fn rpc<T>(
        &self,
        what: &str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, StoreError> {
        match self.try_rpc(what, request).await? {
            Ok(v) => Ok(v),
            Err(e) => Err(self.unavailable(format!("{what}: {e}"))),
        }
    }

    /// Like [`KubeObjects::rpc`], handing the API server's refusals (a 409) to the caller.
    async fn try_rpc<T>(
        &self,
        what: &str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<Result<T, Box<kube::core::Status>>, StoreError> {
        let failed = match tokio::time::timeout(RPC_TIMEOUT, request).await {
            Ok(Ok(v)) => return Ok(Ok(v)),
            Ok(Err(kube::Error::Api(e))) if e.code < 500 && e.code != 401 => return Ok(Err(e)),
            Ok(Err(e)) => format!("{what}: {e}"),
            Err(_) => format!("{what}: no answer within {RPC_TIMEOUT:?}"),
        };
        *self.client.lock().await = None;
        Err(self.unavailable(failed))
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::KubeUnavailable {
            server: self.api.server.clone(),
            reason,
        }
    }
}
fn identity_number(name: &str) -> Option<u32> {
    name.strip_prefix(IDENTITY_PREFIX)?.parse().ok()
}

fn holder(cm: &ConfigMap) -> Option<String> {
    cm.data.as_ref()?.get(IDENTITY_DATA).cloned()
}
