//! `v3lockpb.Lock`: distributed locks held with a lease (see [`super::coord`]).

use std::sync::Arc;

use roster_proto::etcdserverpb::RangeRequest;
use roster_proto::v3lockpb::lock_server::Lock;
use roster_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::Request;

use super::coord::{delete, own, session_lease, wait_turn, Abandon};
use super::{reply, Reply};
use crate::error::ServerError;
use crate::node::Node;

/// The Lock service.
pub struct LockService {
    node: Arc<Node>,
}

impl LockService {
    /// A Lock service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        LockService { node }
    }

    async fn lock(&self, r: LockRequest) -> Result<LockResponse, ServerError> {
        let node = &self.node;
        let lease = session_lease(node, r.lease).await?;
        let owned = own(node, &r.name, lease, b"").await?;
        let guard = Abandon::new(node.clone(), owned.key.clone());
        wait_turn(node, &r.name, owned.rev, lease).await?;
        // The lease may have expired while we waited, taking the key along.
        let still = node.store.range(&RangeRequest {
            key: owned.key.clone(),
            ..Default::default()
        })?;
        if still.kvs.is_empty() {
            guard.keep();
            return Err(ServerError::SessionExpired);
        }
        guard.keep();
        Ok(LockResponse {
            header: node.header(0),
            key: owned.key,
        })
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Reply<LockResponse> {
        reply(LockService::lock(self, req.into_inner()).await)
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Reply<UnlockResponse> {
        let key = req.into_inner().key;
        reply(
            async {
                let rev = delete(&self.node, &key).await?;
                Ok(UnlockResponse {
                    header: self.node.header(rev),
                })
            }
            .await,
        )
    }
}
