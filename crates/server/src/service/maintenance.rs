//! `etcdserverpb.Maintenance`: what a single node can answer.
//!
//! Status and Alarm are served (so `etcdctl endpoint status` and
//! `alarm list` work); Defragment is accepted and does nothing, since redb
//! reuses freed pages itself. The rest answer `Unimplemented` until their
//! issue comes.

use std::pin::Pin;
use std::sync::Arc;

use roster_proto::etcdserverpb::maintenance_server::Maintenance;
use roster_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::{reply, Reply};
use crate::error::ServerError;
use crate::node::Node;

/// The etcd API version this server reports in Status.
pub const API_VERSION: &str = "3.4.0";

/// The Maintenance service.
pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    /// A Maintenance service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, _req: Request<AlarmRequest>) -> Reply<AlarmResponse> {
        // No alarm is ever raised on this node yet, so the list is empty and
        // activating or deactivating changes nothing.
        reply(Ok(AlarmResponse {
            header: self.node.header(0),
            alarms: vec![],
        }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Reply<StatusResponse> {
        let n = &self.node;
        let st = n.status();
        let size = n.db_size() as i64;
        reply(Ok(StatusResponse {
            header: n.header(0),
            version: API_VERSION.into(),
            db_size: size,
            leader: st.leader,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors: vec![],
            db_size_in_use: size,
            is_learner: false,
        }))
    }

    async fn defragment(&self, _req: Request<DefragmentRequest>) -> Reply<DefragmentResponse> {
        reply(Ok(DefragmentResponse {
            header: self.node.header(0),
        }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Reply<HashResponse> {
        reply(Err(ServerError::Unsupported("Hash")))
    }

    async fn hash_kv(&self, _req: Request<HashKvRequest>) -> Reply<HashKvResponse> {
        reply(Err(ServerError::Unsupported("HashKV")))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _req: Request<SnapshotRequest>) -> Reply<SnapshotStream> {
        reply(Err(ServerError::Unsupported("Snapshot")))
    }

    async fn move_leader(&self, _req: Request<MoveLeaderRequest>) -> Reply<MoveLeaderResponse> {
        reply(Err(ServerError::Unsupported("MoveLeader")))
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Reply<DowngradeResponse> {
        reply(Err(ServerError::Unsupported("Downgrade")))
    }
}
