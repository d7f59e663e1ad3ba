//! wiremesh key manager.
//!
//! Owns a node's WireGuard identity (the private key file and the public key derived from it), the
//! node record every agent publishes, and the stores through which records are published and
//! learned (`dir` today; `etcd` and `kubernetes` sit behind the same [`Store`] seam).
//!
//! It must never log, print, serialise or `Debug`-format a private key, and never hand a record
//! that failed validation to the data path: a bad record is reported (naming its source and the
//! problem) and dropped, and every other record keeps working. In a conflict between two records
//! only the younger one (by the store's order: [`admission`]) is dropped, so the record in force
//! keeps working. It knows nothing of the agent: what a reader admits comes in as an
//! [`Admission`].

pub mod admission;
mod record;
pub mod ring;
pub mod store;

pub use admission::{validate_set, Admission, Candidate, Seniority};
pub use record::{NodeRecord, RecordError, Rejected};
pub use store::{Snapshot, Store, StoreError};
pub use wiremesh_key::{KeyError, KeyFile, PrivateKey, PublicKey};
