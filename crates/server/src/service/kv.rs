//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.
//!
//! Reads (Range, and txns whose ops are all ranges) are served from the
//! store's published state without entering the log; on a single node that
//! state is always current, so linearizable and serializable reads agree.

use std::sync::Arc;

use roster_proto::etcdserverpb::kv_server::Kv;
use roster_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use roster_store::apply::is_read_only;
use roster_store::{CommandKind, CommandResponse};
use tonic::Request;

use super::{reply, Reply};
use crate::error::ServerError;
use crate::node::Node;
use crate::validate;

/// The KV service.
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    /// A KV service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }

    async fn write(&self, kind: CommandKind) -> Result<CommandResponse, ServerError> {
        self.node.propose(kind).await
    }
}

/// Unwraps the response variant a command must produce.
macro_rules! expect_response {
    ($resp:expr, $variant:ident) => {
        match $resp {
            CommandResponse::$variant(r) => r,
            other => unreachable!("store answered {:?} to a {}", other, stringify!($variant)),
        }
    };
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Reply<RangeResponse> {
        let r = req.into_inner();
        reply((|| {
            validate::range(&r)?;
            let mut resp = self.node.store.range(&r)?;
            self.node.fill(&mut resp.header);
            Ok(resp)
        })())
    }

    async fn put(&self, req: Request<PutRequest>) -> Reply<PutResponse> {
        let r = req.into_inner();
        reply(
            async {
                self.node.check_size(&r)?;
                validate::put(&r)?;
                let mut resp = expect_response!(self.write(CommandKind::Put(r)).await?, Put);
                self.node.fill(&mut resp.header);
                Ok(resp)
            }
            .await,
        )
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Reply<DeleteRangeResponse> {
        let r = req.into_inner();
        reply(
            async {
                self.node.check_size(&r)?;
                validate::delete_range(&r)?;
                let resp = self.write(CommandKind::DeleteRange(r)).await?;
                let mut resp = expect_response!(resp, DeleteRange);
                self.node.fill(&mut resp.header);
                Ok(resp)
            }
            .await,
        )
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Reply<TxnResponse> {
        let r = req.into_inner();
        reply(
            async {
                validate::txn(&r, self.node.config.max_txn_ops)?;
                // Like etcd, only what enters the log is held to the size
                // limit; a txn that can only read never does.
                let mut resp = if is_read_only(&r) {
                    self.node.store.txn_read(&r)?
                } else {
                    self.node.check_size(&r)?;
                    expect_response!(self.write(CommandKind::Txn(r)).await?, Txn)
                };
                self.node.fill(&mut resp.header);
                Ok(resp)
            }
            .await,
        )
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Reply<CompactionResponse> {
        let r = req.into_inner();
        reply(
            async {
                let resp = self.write(CommandKind::Compact(r)).await?;
                let mut resp = expect_response!(resp, Compact);
                self.node.fill(&mut resp.header);
                Ok(resp)
            }
            .await,
        )
    }
}
