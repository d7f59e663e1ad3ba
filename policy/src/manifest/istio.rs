//! The loader's part for Services and Istio's AuthorizationPolicy and PeerAuthentication: each
//! object read with its input schema (unknown fields refused, naming them), converted with
//! `crate::istio`, and added to the bundle. A Service is kept only for its `spec.selector`.

use k8s_openapi::api::core::v1::Service as K8sService;
use yaml_serde::Value;

use super::{typed, Loader, Object};
use crate::error::LoadError;
use crate::istio::convert::authorization_policy;
use crate::istio::peer::peer_authentication;
use crate::istio::spec::{AuthorizationPolicySpec, Object as Body, PeerAuthenticationSpec};
use crate::model::Service;

impl Loader {
    pub(super) fn service(&mut self, object: Object<'_>, value: Value) -> Result<(), LoadError> {
        let svc: K8sService = typed(value).map_err(|e| object.invalid(e))?;
        self.claim(object.doc, &object.qualified)?;
        let selector = svc
            .spec
            .and_then(|s| s.selector)
            .map(|s| s.into_iter().collect());
        self.bundle.services.insert(
            format!("{}/{}", object.namespace, object.name),
            Service {
                namespace: object.namespace,
                name: object.name,
                selector,
            },
        );
        Ok(())
    }

    pub(super) fn authorization_policy(
        &mut self,
        object: Object<'_>,
        value: Value,
    ) -> Result<(), LoadError> {
        let invalid = |e| object.invalid(e);
        let body: Body<AuthorizationPolicySpec> = typed(value).map_err(invalid)?;
        let spec = body.spec.unwrap_or_default();
        let root = &self.options.istio.root_namespace;
        let policy =
            authorization_policy(&spec, &object.namespace, &object.name, root).map_err(invalid)?;
        self.claim(object.doc, &object.qualified)?;
        self.bundle.authz.push(policy);
        Ok(())
    }

    pub(super) fn peer_authentication(
        &mut self,
        object: Object<'_>,
        value: Value,
    ) -> Result<(), LoadError> {
        let invalid = |e| object.invalid(e);
        let body: Body<PeerAuthenticationSpec> = typed(value).map_err(invalid)?;
        let spec = body.spec.unwrap_or_default();
        let p = peer_authentication(&spec, &object.namespace, &object.name).map_err(invalid)?;
        self.claim(object.doc, &object.qualified)?;
        self.bundle.peer_authn.push(p);
        Ok(())
    }
}
