//! `etcdserverpb.Lease`: grant, revoke, keepalive, time-to-live, list.
//!
//! Grant and revoke are writes; applying them updates the lessor's table
//! (see [`crate::state`]). Keepalive only moves a deadline in the lessor
//! (see [`crate::lessor`]); time-to-live and list read the lessor and the
//! store.

use std::pin::Pin;
use std::sync::Arc;

use roster_proto::etcdserverpb::lease_server::Lease;
use roster_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use roster_store::{CommandKind, CommandResponse, StoreError};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Status, Streaming};

use super::{reply, Reply};
use crate::error::ServerError;
use crate::lessor::{MAX_TTL, MIN_TTL};
use crate::node::Node;

/// The Lease service.
pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    /// A Lease service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        LeaseService { node }
    }
}

/// Grants a lease with etcd's rules: TTL bounds, and a fresh random id when
/// the request names none.
pub async fn grant(node: &Node, r: LeaseGrantRequest) -> Result<LeaseGrantResponse, ServerError> {
    if r.ttl > MAX_TTL {
        return Err(ServerError::LeaseTtlTooLarge);
    }
    let ttl = r.ttl.max(MIN_TTL);
    // A server-chosen id may collide with a live lease; pick again.
    let attempts = if r.id == 0 { 8 } else { 1 };
    for _ in 0..attempts {
        let id = if r.id == 0 {
            rand::random::<i64>() & i64::MAX
        } else {
            r.id
        };
        if id == 0 {
            continue;
        }
        let cmd = CommandKind::LeaseGrant(LeaseGrantRequest { ttl, id });
        match node.propose(cmd).await {
            Ok(CommandResponse::LeaseGrant(mut resp)) => {
                node.fill(&mut resp.header);
                return Ok(resp);
            }
            Ok(other) => unreachable!("store answered {other:?} to a LeaseGrant"),
            Err(ServerError::Store(StoreError::LeaseExists)) if r.id == 0 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ServerError::Store(StoreError::LeaseExists))
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Reply<LeaseGrantResponse> {
        reply(grant(&self.node, req.into_inner()).await)
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Reply<LeaseRevokeResponse> {
        let id = req.into_inner().id;
        reply(
            async {
                let cmd = CommandKind::LeaseRevoke(LeaseRevokeRequest { id });
                match self.node.propose(cmd).await? {
                    CommandResponse::LeaseRevoke(mut resp) => {
                        self.node.fill(&mut resp.header);
                        Ok(resp)
                    }
                    other => unreachable!("store answered {other:?} to a LeaseRevoke"),
                }
            }
            .await,
        )
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Reply<KeepAliveStream> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                // A request that does not decode ends the stream with its
                // status (INTERNAL), as etcd's does.
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                // An unknown or expired lease is answered with TTL 0, as
                // etcd does; the stream stays open.
                let ttl = node.lessor.renew(msg.id).unwrap_or(0);
                let resp = LeaseKeepAliveResponse {
                    header: node.header(0),
                    id: msg.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Reply<LeaseTimeToLiveResponse> {
        let r = req.into_inner();
        let n = &self.node;
        let found = n.lessor.remaining(r.id).zip(n.store.lease(r.id));
        let resp = match found {
            Some(((left, ttl), lease)) => LeaseTimeToLiveResponse {
                header: n.header(0),
                id: r.id,
                ttl: left,
                granted_ttl: ttl,
                keys: if r.keys {
                    lease.keys.into_iter().collect()
                } else {
                    vec![]
                },
            },
            // etcd answers an unknown lease with TTL -1, not an error.
            None => LeaseTimeToLiveResponse {
                header: n.header(0),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            },
        };
        reply(Ok(resp))
    }

    async fn lease_leases(&self, _req: Request<LeaseLeasesRequest>) -> Reply<LeaseLeasesResponse> {
        let mut ids: Vec<i64> = self
            .node
            .store
            .leases()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        self.node.lessor.sort_by_expiry(&mut ids);
        let leases = ids.into_iter().map(|id| LeaseStatus { id }).collect();
        reply(Ok(LeaseLeasesResponse {
            header: self.node.header(0),
            leases,
        }))
    }
}
