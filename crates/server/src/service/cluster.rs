//! `etcdserverpb.Cluster`: the member list of a single-node cluster.
//! Membership changes arrive with replication; until then they answer
//! `Unimplemented`.

use std::sync::Arc;

use roster_proto::etcdserverpb::cluster_server::Cluster;
use roster_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, ResponseHeader,
};
use tonic::Request;

use super::{reply, Reply};
use crate::error::ServerError;
use crate::node::Node;

/// The Cluster service.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// A Cluster service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, _r: Request<MemberAddRequest>) -> Reply<MemberAddResponse> {
        reply(Err(ServerError::Unsupported("MemberAdd")))
    }

    async fn member_remove(&self, _r: Request<MemberRemoveRequest>) -> Reply<MemberRemoveResponse> {
        reply(Err(ServerError::Unsupported("MemberRemove")))
    }

    async fn member_update(&self, _r: Request<MemberUpdateRequest>) -> Reply<MemberUpdateResponse> {
        reply(Err(ServerError::Unsupported("MemberUpdate")))
    }

    async fn member_list(&self, _r: Request<MemberListRequest>) -> Reply<MemberListResponse> {
        let n = &self.node;
        let member = Member {
            id: n.member_id,
            name: n.config.name.clone(),
            peer_ur_ls: n.config.advertise_peer_urls.clone(),
            client_ur_ls: n.client_urls.read().clone(),
            is_learner: false,
        };
        // etcd's Cluster service headers carry no revision.
        let header = n.header(0).map(|h| ResponseHeader { revision: 0, ..h });
        reply(Ok(MemberListResponse {
            header,
            members: vec![member],
        }))
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Reply<MemberPromoteResponse> {
        reply(Err(ServerError::Unsupported("MemberPromote")))
    }
}
