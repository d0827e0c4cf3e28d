//! What locks and elections share: an ownership key per lease under a name,
//! and waiting for the keys created before it to go.
//!
//! As in etcd's recipe, the contender with the lowest create revision under
//! `name/` holds the lock (or leads). Each contender writes `name/<lease in
//! hex>` attached to its lease, then waits for every key under the name with
//! a lower create revision to be deleted — by its owner, or by the lease
//! expiring. Waiting watches only the nearest predecessor, so a release
//! wakes one waiter, not all of them.

use std::sync::Arc;

use roster_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, watch_create_request::FilterType, Compare,
    DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    TxnResponse, WatchCreateRequest,
};
use roster_proto::mvccpb::{event::EventType, KeyValue};
use roster_proto::prefix_end;
use roster_store::{CommandKind, CommandResponse};

use crate::error::ServerError;
use crate::node::Node;
use crate::watch::stream::local_watch;

/// `name/`, the prefix of a name's ownership keys.
pub fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// Runs a txn through the write path.
pub async fn txn(node: &Node, t: TxnRequest) -> Result<TxnResponse, ServerError> {
    match node.propose(CommandKind::Txn(t)).await? {
        CommandResponse::Txn(r) => Ok(r),
        other => unreachable!("store answered {other:?} to a Txn"),
    }
}

/// A compare "the key was created at `rev`" (0: does not exist).
pub fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: vec![],
    }
}

/// Wraps a request into a txn op.
pub fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// A contender's ownership key.
pub struct Owned {
    /// `name/<lease hex>`.
    pub key: Vec<u8>,
    /// Its create revision: the contender's place in line.
    pub rev: i64,
    /// Its value, if the key existed before this call.
    pub existing: Option<Vec<u8>>,
}

/// Creates the ownership key of `lease` under `name`, or finds it if this
/// lease already contends.
pub async fn own(node: &Node, name: &[u8], lease: i64, value: &[u8]) -> Result<Owned, ServerError> {
    let mut key = prefix(name);
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    let put = PutRequest {
        key: key.clone(),
        value: value.to_vec(),
        lease,
        ..Default::default()
    };
    let get = RangeRequest {
        key: key.clone(),
        ..Default::default()
    };
    let t = TxnRequest {
        compare: vec![created_at(&key, 0)],
        success: vec![op(request_op::Request::RequestPut(put))],
        failure: vec![op(request_op::Request::RequestRange(get))],
    };
    let resp = txn(node, t).await?;
    if resp.succeeded {
        let rev = resp.header.map_or(0, |h| h.revision);
        return Ok(Owned {
            key,
            rev,
            existing: None,
        });
    }
    let kv = match resp.responses.into_iter().next().and_then(|r| r.response) {
        Some(response_op::Response::ResponseRange(r)) => r.kvs.into_iter().next(),
        _ => None,
    };
    // Deleted between the compare and the read cannot happen inside one
    // txn; a missing kv means the store broke its contract.
    let kv = kv.ok_or(ServerError::SessionExpired)?;
    Ok(Owned {
        key,
        rev: kv.create_revision,
        existing: Some(kv.value),
    })
}

/// The first key under `name/` by create revision: the holder or leader.
pub fn first_owner(node: &Node, name: &[u8]) -> Result<(Option<KeyValue>, i64), ServerError> {
    let p = prefix(name);
    let r = node.store.range(&RangeRequest {
        range_end: prefix_end(&p),
        key: p,
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    })?;
    let rev = r.header.map_or(0, |h| h.revision);
    Ok((r.kvs.into_iter().next(), rev))
}

/// Waits for `key` to be deleted after revision `rev`. Returns false if the
/// watch ended for another reason (the caller re-checks).
pub async fn wait_delete(node: &Arc<Node>, key: &[u8], rev: i64) -> bool {
    let mut events = local_watch(
        &node.hub,
        WatchCreateRequest {
            key: key.to_vec(),
            start_revision: rev + 1,
            filters: vec![FilterType::Noput as i32],
            ..Default::default()
        },
    );
    while let Some(Ok(resp)) = events.recv().await {
        if resp.canceled {
            return false;
        }
        if resp
            .events
            .iter()
            .any(|e| e.r#type == EventType::Delete as i32)
        {
            return true;
        }
    }
    false
}

/// Waits until no key under `name/` created before `rev` is left.
pub async fn wait_predecessors(node: &Arc<Node>, name: &[u8], rev: i64) -> Result<(), ServerError> {
    let p = prefix(name);
    loop {
        let r = node.store.range(&RangeRequest {
            range_end: prefix_end(&p),
            key: p.clone(),
            limit: 1,
            max_create_revision: rev - 1,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            ..Default::default()
        })?;
        let Some(last) = r.kvs.first() else {
            return Ok(());
        };
        wait_delete(node, &last.key, r.header.map_or(0, |h| h.revision)).await;
    }
}

/// TTL of the lease a lock or campaign that names none is held with, as
/// etcd's services grant one per call.
pub const SESSION_TTL: i64 = 60;

/// The lease a lock or campaign holds its key with: the caller's, or a
/// fresh [`SESSION_TTL`] lease when it names none (lease 0), so that two
/// lease-less callers still get distinct keys and exclude each other.
pub async fn session_lease(node: &Node, lease: i64) -> Result<i64, ServerError> {
    if lease != 0 {
        return Ok(lease);
    }
    let r = LeaseGrantRequest {
        ttl: SESSION_TTL,
        id: 0,
    };
    Ok(super::lease::grant(node, r).await?.id)
}

/// Like [`wait_predecessors`], renewing `lease` meanwhile, as etcd's
/// services do for the duration of a lock or campaign call.
pub async fn wait_turn(
    node: &Arc<Node>,
    name: &[u8],
    rev: i64,
    lease: i64,
) -> Result<(), ServerError> {
    let ttl = node
        .lessor
        .remaining(lease)
        .map_or(SESSION_TTL, |(_, ttl)| ttl);
    let period = std::time::Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
    let mut renew = tokio::time::interval(period);
    let wait = wait_predecessors(node, name, rev);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            r = &mut wait => return r,
            _ = renew.tick() => {
                node.lessor.renew(lease);
            }
        }
    }
}

/// Deletes a key through the write path.
pub async fn delete(node: &Node, key: &[u8]) -> Result<i64, ServerError> {
    let d = DeleteRangeRequest {
        key: key.to_vec(),
        ..Default::default()
    };
    match node.propose(CommandKind::DeleteRange(d)).await? {
        CommandResponse::DeleteRange(r) => Ok(r.header.map_or(0, |h| h.revision)),
        other => unreachable!("store answered {other:?} to a DeleteRange"),
    }
}

/// Deletes an ownership key if the waiting call that created it is
/// abandoned (the client gave up or disconnected), as etcd's recipe does.
pub struct Abandon {
    node: Arc<Node>,
    key: Option<Vec<u8>>,
}

impl Abandon {
    /// Guards `key`.
    pub fn new(node: Arc<Node>, key: Vec<u8>) -> Self {
        Abandon {
            node,
            key: Some(key),
        }
    }

    /// The wait succeeded: keep the key.
    pub fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let node = self.node.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = delete(&node, &key).await;
                });
            }
        }
    }
}
