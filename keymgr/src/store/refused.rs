//! Warnings about refused records: each is reported once per change of its reason, not once per
//! rescan or watch event, since a bad record stays bad until someone fixes it.

use std::collections::HashMap;

use crate::Rejected;

/// What a refused record's `source` names, which decides how the warning reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin {
    /// A file of the dir store.
    File,
    /// An etcd key.
    EtcdKey,
    /// A Kubernetes `Node/<name>` whose annotations are refused.
    Node,
}

#[derive(Debug)]
pub(super) struct RejectionReporter {
    origin: Origin,
    /// Reason last reported, by source.
    reported: HashMap<String, String>,
}

impl RejectionReporter {
    pub(super) fn new(origin: Origin) -> Self {
        Self {
            origin,
            reported: HashMap::new(),
        }
    }

    /// Records that `r.source` is refused, warning unless it was already reported with the same
    /// reason.
    pub(super) fn refuse(&mut self, r: Rejected) {
        if self.reported.get(&r.source) != Some(&r.reason) {
            self.warn(&r);
        }
        self.reported.insert(r.source, r.reason);
    }

    /// Forgets `source` (accepted again, or gone), so that it is warned about again if it is
    /// refused later.
    pub(super) fn clear(&mut self, source: &str) {
        self.reported.remove(source);
    }

    fn warn(&self, r: &Rejected) {
        let node = r.node_name.as_deref().unwrap_or("?");
        let (source, reason) = (&r.source, &r.reason);
        match self.origin {
            Origin::File => tracing::warn!(
                file = %source,
                node,
                "store record refused and ignored: {reason}; other nodes are unaffected"
            ),
            Origin::EtcdKey => tracing::warn!(
                key = %source,
                node,
                "etcd record refused and ignored: {reason}; other nodes are unaffected"
            ),
            Origin::Node => tracing::warn!(
                object = %source,
                "wiremesh annotations of {source} refused and ignored: {reason}; other nodes are \
                 unaffected. Fix or remove the wiremesh.io/* annotations of that Node"
            ),
        }
    }

    /// The reason `source` was last refused for.
    #[cfg(test)]
    pub(super) fn reason(&self, source: &str) -> Option<&str> {
        self.reported.get(source).map(String::as_str)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.reported.len()
    }
}
