//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.
//!
//! Reads (Range, and txns whose ops are all ranges) are served from the
//! store's published state without entering the log; on a single node that
//! state is always current, so linearizable and serializable reads agree.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use roster_proto::etcdserverpb::kv_server::Kv;
use roster_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use roster_store::apply::is_read_only;
use roster_store::{CommandKind, CommandResponse, StoreError};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Status};

use super::{reply, Reply};
use crate::error::ServerError;
use crate::node::Node;
use crate::txn_decode::{self, TxnDecodeError};
use crate::unary;
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

    /// Reads `r` a piece at a time (see `roster_store`'s `store::scan`).
    async fn read_range(&self, r: &RangeRequest) -> Result<RangeResponse, ServerError> {
        let mut scan = self.node.store.range_scan(r)?;
        in_pieces(|| scan.step()).await
    }

    /// Reads a txn whose ops are all ranges a piece at a time.
    async fn read_txn(&self, t: &TxnRequest) -> Result<TxnResponse, ServerError> {
        let mut scan = self.node.store.txn_scan(t)?;
        in_pieces(|| scan.step()).await
    }
}

/// Runs `step` until it answers, letting the worker run other tasks
/// between steps: read in one go, a long range held up every task waiting
/// on the same worker (measured: `docs/decisions.md`, entry 14).
async fn in_pieces<T>(
    mut step: impl FnMut() -> Result<Option<T>, StoreError>,
) -> Result<T, ServerError> {
    loop {
        if let Some(answer) = step()? {
            return Ok(answer);
        }
        tokio::task::yield_now().await;
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
        reply(
            async {
                validate::range(&r)?;
                let mut resp = self.read_range(&r).await?;
                self.node.fill(&mut resp.header);
                Ok(resp)
            }
            .await,
        )
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
                    self.read_txn(&r).await?
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

/// The KV service's gRPC endpoint, written out by hand (see
/// `crate::unary`): what tonic's generated `KvServer` would be, without
/// its streaming codec (measured: `docs/decisions.md`, entry 26).
#[derive(Clone)]
pub struct KvServer {
    service: Arc<KvService>,
    /// Longest request message accepted.
    limit: usize,
}

impl KvServer {
    /// Serves `service`, refusing request messages over `limit` bytes.
    pub fn new(service: KvService, limit: usize) -> Self {
        KvServer {
            service: Arc::new(service),
            limit,
        }
    }
}

impl NamedService for KvServer {
    const NAME: &'static str = "etcdserverpb.KV";
}

/// Decodes a call's request, runs the handler on it and encodes its reply.
async fn call<Q, R, F, Fut>(body: Body, limit: usize, handler: F) -> http::Response<Body>
where
    Q: prost::Message + Default,
    R: prost::Message,
    F: FnOnce(Q) -> Fut,
    Fut: Future<Output = Reply<R>>,
{
    let reply = match unary::read(body, limit).await {
        Ok(req) => handler(req).await,
        Err(status) => Err(status),
    };
    match reply {
        Ok(resp) => unary::respond(resp.get_ref()),
        Err(status) => status.into_http(),
    }
}

/// [`call`] for a Txn, whose request is decoded by hand so that it may nest
/// as deep as etcd's op budget allows (see `crate::txn_decode`).
async fn call_txn(body: Body, limit: usize, s: Arc<KvService>) -> http::Response<Body> {
    let req =
        unary::read_bytes(body, limit)
            .await
            .and_then(|bytes| match txn_decode::txn(&bytes) {
                Ok(t) => Ok(t),
                Err(TxnDecodeError::TooDeep) => Err(ServerError::TooManyOps.into()),
                Err(TxnDecodeError::Decode(e)) => Err(unary::unmarshal_error(&e)),
            });
    let reply = match req {
        Ok(req) => s.txn(Request::new(req)).await,
        Err(status) => Err(status),
    };
    match reply {
        Ok(resp) => unary::respond(resp.get_ref()),
        Err(status) => status.into_http(),
    }
}

/// The service's methods.
enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

impl Service<http::Request<Body>> for KvServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = match req.uri().path() {
            "/etcdserverpb.KV/Range" => Method::Range,
            "/etcdserverpb.KV/Put" => Method::Put,
            "/etcdserverpb.KV/DeleteRange" => Method::DeleteRange,
            "/etcdserverpb.KV/Txn" => Method::Txn,
            "/etcdserverpb.KV/Compact" => Method::Compact,
            _ => return Box::pin(async { Ok(Status::unimplemented("").into_http()) }),
        };
        let (s, limit) = (self.service.clone(), self.limit);
        let body = req.into_body();
        Box::pin(async move {
            Ok(match method {
                Method::Range => call(body, limit, |r| s.range(Request::new(r))).await,
                Method::Put => call(body, limit, |r| s.put(Request::new(r))).await,
                Method::DeleteRange => call(body, limit, |r| s.delete_range(Request::new(r))).await,
                Method::Txn => call_txn(body, limit, s).await,
                Method::Compact => call(body, limit, |r| s.compact(Request::new(r))).await,
            })
        })
    }
}
