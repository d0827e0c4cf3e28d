//! `v3electionpb.Election`: leader election on ownership keys (see
//! [`super::coord`]). The leader is the contender with the lowest create
//! revision; its key's value is the election's value.

use std::pin::Pin;
use std::sync::Arc;

use roster_proto::etcdserverpb::DeleteRangeRequest;
use roster_proto::etcdserverpb::TxnRequest;
use roster_proto::etcdserverpb::{request_op, PutRequest, RangeRequest, WatchCreateRequest};
use roster_proto::mvccpb::event::EventType;
use roster_proto::prefix_end;
use roster_proto::v3electionpb::election_server::Election;
use roster_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::coord::{
    created_at, first_owner, op, own, prefix, session_lease, txn, wait_turn, Abandon,
};
use super::{reply, Reply};
use crate::error::ServerError;
use crate::node::Node;
use crate::watch::stream::local_watch;

/// The Election service.
pub struct ElectionService {
    node: Arc<Node>,
}

impl ElectionService {
    /// An Election service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ElectionService { node }
    }

    async fn campaign(&self, r: CampaignRequest) -> Result<CampaignResponse, ServerError> {
        let node = &self.node;
        let lease = session_lease(node, r.lease).await?;
        let owned = own(node, &r.name, lease, &r.value).await?;
        let guard = Abandon::new(node.clone(), owned.key.clone());
        let leader = LeaderKey {
            name: r.name.clone(),
            key: owned.key.clone(),
            rev: owned.rev,
            lease,
        };
        if owned.existing.as_ref().is_some_and(|v| *v != r.value) {
            proclaim(node, &leader, &r.value).await?;
        }
        wait_turn(node, &r.name, owned.rev, lease).await?;
        let still = node.store.range(&RangeRequest {
            key: owned.key.clone(),
            ..Default::default()
        })?;
        guard.keep();
        if still.kvs.is_empty() {
            return Err(ServerError::SessionExpired);
        }
        Ok(CampaignResponse {
            header: node.header(0),
            leader: Some(leader),
        })
    }
}

/// Sets the election's value if `leader` still leads.
async fn proclaim(node: &Node, leader: &LeaderKey, value: &[u8]) -> Result<i64, ServerError> {
    let put = PutRequest {
        key: leader.key.clone(),
        value: value.to_vec(),
        ignore_lease: true,
        ..Default::default()
    };
    let t = TxnRequest {
        compare: vec![created_at(&leader.key, leader.rev)],
        success: vec![op(request_op::Request::RequestPut(put))],
        failure: vec![],
    };
    let resp = txn(node, t).await?;
    if !resp.succeeded {
        return Err(ServerError::ElectionNotLeader);
    }
    Ok(resp.header.map_or(0, |h| h.revision))
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Reply<CampaignResponse> {
        reply(ElectionService::campaign(self, req.into_inner()).await)
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Reply<ProclaimResponse> {
        let r = req.into_inner();
        reply(
            async {
                let leader = r.leader.ok_or(ServerError::ElectionNotLeader)?;
                let rev = proclaim(&self.node, &leader, &r.value).await?;
                Ok(ProclaimResponse {
                    header: self.node.header(rev),
                })
            }
            .await,
        )
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Reply<LeaderResponse> {
        let name = req.into_inner().name;
        reply((|| {
            let (kv, _) = first_owner(&self.node, &name)?;
            let kv = kv.ok_or(ServerError::ElectionNoLeader)?;
            Ok(LeaderResponse {
                header: self.node.header(0),
                kv: Some(kv),
            })
        })())
    }

    type ObserveStream = ObserveStream;

    async fn observe(&self, req: Request<LeaderRequest>) -> Reply<ObserveStream> {
        let name = req.into_inner().name;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _ = observe(node, name, tx).await;
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Reply<ResignResponse> {
        let r = req.into_inner();
        reply(
            async {
                let Some(leader) = r.leader else {
                    return Ok(ResignResponse {
                        header: self.node.header(0),
                    });
                };
                // Only the leadership named (key and its create revision)
                // is given up; resigning one that is over changes nothing.
                let del = DeleteRangeRequest {
                    key: leader.key.clone(),
                    ..Default::default()
                };
                let t = TxnRequest {
                    compare: vec![created_at(&leader.key, leader.rev)],
                    success: vec![op(request_op::Request::RequestDeleteRange(del))],
                    failure: vec![],
                };
                let resp = txn(&self.node, t).await?;
                Ok(ResignResponse {
                    header: self.node.header(resp.header.map_or(0, |h| h.revision)),
                })
            }
            .await,
        )
    }
}

/// Streams the leader's key-value each time the leader or its value changes.
async fn observe(
    node: Arc<Node>,
    name: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), ()> {
    let p = prefix(&name);
    loop {
        let (leader, rev) = first_owner(&node, &name).map_err(|_| ())?;
        let Some(kv) = leader else {
            // Nobody leads: wait for any key under the name, then look again.
            let mut w = local_watch(
                &node.hub,
                WatchCreateRequest {
                    key: p.clone(),
                    range_end: prefix_end(&p),
                    start_revision: rev + 1,
                    ..Default::default()
                },
            );
            loop {
                tokio::select! {
                    resp = w.recv() => match resp {
                        Some(Ok(r)) if !r.events.is_empty() => break,
                        Some(Ok(r)) if r.canceled => break,
                        Some(Ok(_)) => continue,
                        _ => return Err(()),
                    },
                    _ = tx.closed() => return Ok(()),
                }
            }
            continue;
        };
        let key = kv.key.clone();
        tx.send(Ok(LeaderResponse {
            header: node.header(rev),
            kv: Some(kv),
        }))
        .await
        .map_err(|_| ())?;
        // Follow the leader's key: value changes are news, its deletion
        // means leadership moves on.
        let mut w = local_watch(
            &node.hub,
            WatchCreateRequest {
                key: key.clone(),
                start_revision: rev + 1,
                ..Default::default()
            },
        );
        'leader: loop {
            tokio::select! {
                resp = w.recv() => match resp {
                    Some(Ok(r)) if r.canceled => break 'leader,
                    Some(Ok(r)) => {
                        for e in r.events {
                            if e.r#type == EventType::Delete as i32 {
                                break 'leader;
                            }
                            let header = node.header(e.kv.as_ref().map_or(0, |kv| kv.mod_revision));
                            tx.send(Ok(LeaderResponse { header, kv: e.kv })).await.map_err(|_| ())?;
                        }
                    }
                    _ => return Err(()),
                },
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}
