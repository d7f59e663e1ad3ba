//! The pure decision behind claiming the node name in etcd: from what the owner key and the node
//! key hold, which transaction takes the name for a new lease and which old lease may then be
//! revoked. No I/O; the session reads the two keys and runs the plan.
//!
//! It must never plan the revocation of a lease that still holds this node's record: revoking
//! deletes every key bound to the lease, and every peer would see the record vanish (and drop
//! this node's peer, routes and sessions) until it is written again.

/// One key as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Kv {
    pub(super) value: Vec<u8>,
    pub(super) mod_revision: i64,
    /// 0 when the key is bound to no lease.
    pub(super) lease: i64,
}

/// How the node key is written in the claim transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RecordWrite {
    /// No record to write or carry over.
    Leave,
    /// Put `value` with the new lease; `unchanged_at` (a mod revision) guards a carried-over
    /// record, so a record changed meanwhile fails the transaction instead of being reverted.
    Put {
        value: Vec<u8>,
        unchanged_at: Option<i64>,
    },
}

/// The transaction that takes the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClaimPlan {
    /// The owner key's mod revision it must still have, `None`: it must still be absent.
    pub(super) owner_at: Option<i64>,
    pub(super) record: RecordWrite,
    /// The previous lease of our claim, to revoke once the transaction succeeded.
    pub(super) revoke: Option<i64>,
}

/// The name is held by another owner, whose id the owner key holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node name held by owner {owner:?}")]
pub(super) struct Held {
    pub(super) owner: String,
}

/// Plans the claim of the name for `lease` by `owner_id`. `desired` is the record this agent
/// wants published, `None` before it has one (an agent that just restarted claims its name
/// before its data path is up). `Err`: another owner holds the name.
pub(super) fn plan(
    owner_id: &str,
    lease: i64,
    owner: Option<&Kv>,
    record: Option<&Kv>,
    desired: Option<&[u8]>,
) -> Result<ClaimPlan, Held> {
    let (owner_at, old_lease) = match owner {
        None => (None, 0),
        Some(kv) if kv.value == owner_id.as_bytes() => (Some(kv.mod_revision), kv.lease),
        Some(kv) => {
            return Err(Held {
                owner: String::from_utf8_lossy(&kv.value).into_owned(),
            })
        }
    };
    let revoke = (old_lease != 0 && old_lease != lease).then_some(old_lease);
    let record = match (desired, record) {
        (Some(value), _) => RecordWrite::Put {
            value: value.to_vec(),
            unchanged_at: None,
        },
        // The record our previous run published is still in force on the lease about to be
        // revoked: bind it, unchanged, to the new lease, so that it never leaves the store.
        (None, Some(kv)) if revoke.is_some() && kv.lease == old_lease => RecordWrite::Put {
            value: kv.value.clone(),
            unchanged_at: Some(kv.mod_revision),
        },
        (None, _) => RecordWrite::Leave,
    };
    Ok(ClaimPlan {
        owner_at,
        record,
        revoke,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "host/aa";
    const NEW: i64 = 0x20;
    const OLD: i64 = 0x10;

    fn kv(value: &[u8], mod_revision: i64, lease: i64) -> Kv {
        Kv {
            value: value.to_vec(),
            mod_revision,
            lease,
        }
    }

    /// The defect this module exists for: an agent killed and restarted within its lease TTL
    /// claims its name before it has a record to publish. The record of its previous run must
    /// move to the new lease in the same transaction, or revoking the old lease deletes it.
    #[test]
    fn a_restart_before_publishing_carries_the_record_over_to_the_new_lease() {
        let owner = kv(ME.as_bytes(), 7, OLD);
        let record = kv(b"{\"record\":1}", 8, OLD);
        let p = plan(ME, NEW, Some(&owner), Some(&record), None).unwrap();
        assert_eq!(p.owner_at, Some(7));
        assert_eq!(p.revoke, Some(OLD));
        assert_eq!(
            p.record,
            RecordWrite::Put {
                value: record.value.clone(),
                unchanged_at: Some(8)
            },
            "revoking {OLD:x} would delete the record still bound to it"
        );
    }

    #[test]
    fn a_desired_record_is_written_with_the_new_lease() {
        let owner = kv(ME.as_bytes(), 7, OLD);
        let record = kv(b"old", 8, OLD);
        let p = plan(ME, NEW, Some(&owner), Some(&record), Some(b"new")).unwrap();
        assert_eq!(
            p.record,
            RecordWrite::Put {
                value: b"new".to_vec(),
                unchanged_at: None
            }
        );
        assert_eq!(p.revoke, Some(OLD));
    }

    #[test]
    fn a_first_claim_needs_the_name_free_and_revokes_nothing() {
        let p = plan(ME, NEW, None, None, None).unwrap();
        assert_eq!(
            p,
            ClaimPlan {
                owner_at: None,
                record: RecordWrite::Leave,
                revoke: None
            }
        );
        // A record without a claim (written by hand, or its owner's lease on another key) is
        // not ours to carry over.
        let stray = kv(b"x", 3, OLD);
        let p = plan(ME, NEW, None, Some(&stray), None).unwrap();
        assert_eq!((p.record, p.revoke), (RecordWrite::Leave, None));
    }

    #[test]
    fn a_record_on_another_lease_is_left_alone() {
        let owner = kv(ME.as_bytes(), 7, OLD);
        for lease in [0, 0x30] {
            let record = kv(b"x", 8, lease);
            let p = plan(ME, NEW, Some(&owner), Some(&record), None).unwrap();
            assert_eq!(p.record, RecordWrite::Leave, "record on lease {lease:x}");
        }
        // The same lease again (a re-claim within one session) revokes nothing.
        let owner = kv(ME.as_bytes(), 7, NEW);
        let record = kv(b"x", 8, NEW);
        let p = plan(ME, NEW, Some(&owner), Some(&record), None).unwrap();
        assert_eq!((p.record, p.revoke), (RecordWrite::Leave, None));
    }

    #[test]
    fn another_owner_keeps_the_name() {
        let owner = kv(b"host/bb", 7, OLD);
        let record = kv(b"x", 8, OLD);
        assert_eq!(
            plan(ME, NEW, Some(&owner), Some(&record), Some(b"mine")),
            Err(Held {
                owner: "host/bb".into()
            })
        );
    }

    /// Whatever the keys hold, a planned revocation never takes our record with it.
    #[test]
    fn no_plan_revokes_the_lease_our_record_is_bound_to() {
        let leases = [0, OLD, NEW, 0x30];
        for owner_lease in leases {
            for record_lease in leases {
                for desired in [None, Some(&b"d"[..])] {
                    let owner = kv(ME.as_bytes(), 1, owner_lease);
                    let record = kv(b"r", 2, record_lease);
                    let p = plan(ME, NEW, Some(&owner), Some(&record), desired).unwrap();
                    let rebound = matches!(p.record, RecordWrite::Put { .. });
                    assert!(
                        p.revoke != Some(record_lease) || rebound,
                        "owner lease {owner_lease:x}, record lease {record_lease:x}, desired \
                         {desired:?}: {p:?}"
                    );
                }
            }
        }
    }
}
