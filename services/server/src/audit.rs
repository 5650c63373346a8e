//! The audit trail (issue 23, `docs/security.md`): every operator action (setting a role's weight or quota,
//! loading, activating, shadowing or rolling back a policy, tearing down a framework), allowed or refused, is
//! a structured log line with the principal and a record in etcd (`audit/<at_ms>-<id>`, the newest
//! [`KEEP`] kept), which `allot audit` lists. Refusals of any other call are logged and counted by
//! [`crate::authz`].

use crate::authz::Caller;
use crate::store::{Kind, Store};
use allot_proto::common::AuditRecord;

/// How many records the trail keeps; older ones are deleted as new ones come.
pub const KEEP: usize = 1000;

/// The audit trail of one service: where its records go and under which service name.
#[derive(Debug, Clone)]
pub struct Audit {
    store: Store,
    service: &'static str,
}

impl Audit {
    /// The trail of `service` (`registry`, `allocator`, `offer-broker`) in `store`.
    pub fn new(store: Store, service: &'static str) -> Self {
        Self { store, service }
    }

    /// Records that `caller` asked for `action` on `object` with `outcome` (the call's result): a log line now
    /// (in the call's span), and a record written to etcd in the background (a failed write is logged; the
    /// call's answer does not wait for it).
    pub fn record<T>(
        &self,
        caller: &Caller,
        action: &str,
        object: &str,
        outcome: &Result<T, tonic::Status>,
    ) {
        let (allowed, message) = match outcome {
            Ok(_) => (true, String::new()),
            Err(s) => (false, s.message().to_string()),
        };
        let kind = caller.principal().map_or("", |p| p.kind.as_str());
        tracing::info!(
            audit = true,
            service = self.service,
            principal = caller.name(),
            kind,
            action,
            object,
            allowed,
            message = %message,
            "operator action"
        );
        let record = AuditRecord {
            at_ms: allot_common::now_ms(),
            service: self.service.to_string(),
            principal: caller.name().to_string(),
            kind: kind.to_string(),
            action: action.to_string(),
            object: object.to_string(),
            allowed,
            message,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let id = format!("{:013}-{}", record.at_ms, allot_common::new_id("a"));
            if let Err(e) = store.put(&store.key(Kind::Audit, &id), &record, None).await {
                tracing::warn!(error = %e, "cannot write an audit record");
                return;
            }
            prune(&store).await;
        });
    }
}

/// Deletes the oldest records beyond [`KEEP`], in one transaction (a record rewritten since is left alone).
async fn prune(store: &Store) {
    let Ok(mut keys) = store.keys(&store.prefix(Kind::Audit)).await else {
        return;
    };
    if keys.len() <= KEEP {
        return;
    }
    keys.sort();
    let excess = (keys.len() - KEEP).min(crate::store::MAX_TXN_OPS);
    let _ = store.delete_if_unchanged(&keys[..excess]).await;
}

/// The newest `limit` records of every service, newest first.
///
/// # Errors
/// [`crate::StoreError`] when etcd cannot be read.
pub async fn recent(store: &Store, limit: usize) -> Result<Vec<AuditRecord>, crate::StoreError> {
    let (mut records, _) = store
        .list::<AuditRecord>(&store.prefix(Kind::Audit))
        .await?;
    records.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(records.into_iter().take(limit).map(|(_, r)| r).collect())
}
