//! Serving the gRPC API on bound listeners until shutdown.
//!
//! Listeners are bound by the caller (the CLI, or a test binding port 0), so
//! "address in use" is reported before anything else starts and tests learn
//! the real port. Shutdown is injected as a future: when it resolves, or when
//! the write path fails, every listener stops accepting, in-flight requests
//! finish, and then the writer drains and stops.
//!
//! Connections are accepted by `accept`, which backs off when
//! accepting fails and keeps the last descriptors under the open-file
//! limit for the node's own files.

use std::future::Future;
use std::sync::Arc;

use roster_proto::etcdserverpb::cluster_server::ClusterServer;
use roster_proto::etcdserverpb::lease_server::LeaseServer;
use roster_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use roster_proto::v3electionpb::election_server::ElectionServer;
use roster_proto::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Server;

use crate::accept::Incoming;
use crate::coalesce::Coalesce;
use crate::config::GRPC_OVERHEAD_BYTES;
use crate::node::Node;
use crate::service::{
    cluster::ClusterService, election::ElectionService, kv::KvServer, kv::KvService,
    lease::LeaseService, lock::LockService, maintenance::MaintenanceService,
};
use crate::watch::server::WatchServer;
use crate::watch::stream::WatchService;

/// How long in-flight requests may run on after shutdown is asked for.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The largest request header list (gRPC metadata) served: grpc-go's
/// default, so etcd's. hyper's own default, 16 KiB, refused less than etcd
/// clients send, and h2 tears the whole connection down (GOAWAY) for a
/// list four times over its limit.
const MAX_HEADER_LIST_BYTES: u32 = 16 << 20;

/// How serving ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The shutdown future resolved.
    Requested,
    /// The write path failed; the node stopped to protect its data.
    Fatal,
}

/// Serves the etcd v3 API on every listener until `shutdown` resolves or the
/// node fails, then stops the node.
pub async fn serve(
    node: Arc<Node>,
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, tonic::transport::Error> {
    if node.client_urls.read().is_empty() {
        let urls = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| format!("http://{a}"))
            .collect();
        *node.client_urls.write() = urls;
    }
    let limit = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let router = Server::builder()
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .add_service(KvServer::new(KvService::new(node.clone()), limit))
            .add_service(
                MaintenanceServer::new(MaintenanceService::new(node.clone()))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                WatchServer::new(WatchService::new(
                    node.hub.clone(),
                    node.config.watch_progress_notify_interval,
                ))
                .max_decoding_message_size(limit),
            )
            .add_service(
                LeaseServer::new(LeaseService::new(node.clone())).max_decoding_message_size(limit),
            )
            .add_service(
                LockServer::new(LockService::new(node.clone())).max_decoding_message_size(limit),
            )
            .add_service(
                ElectionServer::new(ElectionService::new(node.clone()))
                    .max_decoding_message_size(limit),
            )
            .add_service(
                ClusterServer::new(ClusterService::new(node.clone()))
                    .max_decoding_message_size(limit),
            );
        let mut rx = stop_rx.clone();
        let backlog = node.backlog();
        let incoming = Incoming::new(listener)
            .map(move |conn| conn.map(|io| Coalesce::new(io, backlog.clone())));
        servers.spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }));
    }

    let mut background = tokio::task::JoinSet::new();
    {
        let mut rx = stop_rx.clone();
        let (lessor, consensus) = (node.lessor.clone(), node.consensus());
        background.spawn(crate::lessor::run(lessor, consensus, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }));
    }

    let why = tokio::select! {
        _ = shutdown => Stopped::Requested,
        _ = node.fatal.notified() => Stopped::Fatal,
        // A listener that dies on its own takes the node down with it.
        Some(res) = servers.join_next() => {
            let _ = stop_tx.send(true);
            stop_node(&node).await;
            res.expect("server task panicked")?;
            return Ok(Stopped::Fatal);
        }
    };
    let _ = stop_tx.send(true);
    // In-flight requests get a grace period; a client that keeps an idle
    // connection open must not keep the node from stopping. Cutting it is
    // safe: every acknowledged write is already durable, and the writer
    // still applies whatever was queued before it stops.
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        while let Some(res) = servers.join_next().await {
            res.expect("server task panicked")?;
        }
        Ok::<(), tonic::transport::Error>(())
    })
    .await;
    match drained {
        Ok(res) => res?,
        Err(_) => {
            tracing::info!("closing connections still open after {DRAIN_GRACE:?}");
            servers.abort_all();
        }
    }
    while background.join_next().await.is_some() {}
    stop_node(&node).await;
    Ok(why)
}

async fn stop_node(node: &Arc<Node>) {
    let node = node.clone();
    let _ = tokio::task::spawn_blocking(move || node.stop()).await;
}
