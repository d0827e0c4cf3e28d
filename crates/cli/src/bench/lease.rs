//! `lease-keepalive`: keepalive round trips on live streams.
//!
//! Each client grants its own lease, opens its own LeaseKeepAlive stream
//! and then, per operation, sends one keepalive and waits for its answer,
//! as etcd's benchmark does. Granting and opening are set-up, not
//! measured. A keepalive answered with TTL 0 means the server no longer
//! knows the lease: it counts as an error.
//!
//! The first keepalive is sent before the stream's response headers are
//! awaited: etcd (grpc-go) sends a stream's headers only with its first
//! message, so waiting for them first would wait forever.

use std::sync::Arc;

use super::conn::Conn;
use clap::Args;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use serde_json::{json, Map};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::driver::{drive, status_text, Worker};
use super::report::Recorder;
use super::{emit, finish, Common};

/// Flags of `roster bench lease-keepalive`.
#[derive(Args, Debug)]
pub struct KeepaliveArgs {
    #[command(flatten)]
    common: Common,
    /// TTL of each client's lease, in seconds.
    #[arg(long, default_value_t = 60)]
    ttl: i64,
}

struct KeepaliveWorker {
    id: i64,
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: Streaming<LeaseKeepAliveResponse>,
}

/// Answer of one keepalive on an open stream.
async fn round_trip(
    tx: &mpsc::Sender<LeaseKeepAliveRequest>,
    rx: &mut Streaming<LeaseKeepAliveResponse>,
    id: i64,
) -> Result<(), String> {
    tx.send(LeaseKeepAliveRequest { id })
        .await
        .map_err(|_| "keepalive stream closed".to_string())?;
    expect_alive(rx).await
}

/// Reads one keepalive answer and checks that the lease is still known.
async fn expect_alive(rx: &mut Streaming<LeaseKeepAliveResponse>) -> Result<(), String> {
    match rx.message().await {
        Ok(Some(r)) if r.ttl > 0 => Ok(()),
        Ok(Some(_)) => Err("lease not found (keepalive answered TTL 0)".into()),
        Ok(None) => Err("keepalive stream ended".into()),
        Err(s) => Err(status_text(s)),
    }
}

impl Worker for KeepaliveWorker {
    async fn op(&mut self, _seq: u64) -> Result<(), String> {
        round_trip(&self.tx, &mut self.rx, self.id).await
    }
}

/// Grants a lease and opens its keepalive stream.
async fn open(ch: Conn, ttl: i64) -> Result<KeepaliveWorker, String> {
    let mut lease = LeaseClient::new(ch);
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .map_err(status_text)?
        .into_inner()
        .id;
    let (tx, reqs) = mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id })
        .await
        .map_err(|_| "keepalive channel closed".to_string())?;
    let mut rx = lease
        .lease_keep_alive(ReceiverStream::new(reqs))
        .await
        .map_err(status_text)?
        .into_inner();
    expect_alive(&mut rx).await?;
    Ok(KeepaliveWorker { id, tx, rx })
}

/// `roster bench lease-keepalive`.
pub async fn keepalive(a: KeepaliveArgs) -> Result<(), String> {
    let chans = a.common.channels().await?;
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..a.common.clients {
        opening.spawn(open(chans[i % chans.len()].clone(), a.ttl));
    }
    let mut workers = Vec::with_capacity(a.common.clients);
    while let Some(w) = opening.join_next().await {
        workers.push(w.map_err(|e| e.to_string())??);
    }
    let ids: Vec<i64> = workers.iter().map(|w| w.id).collect();
    let rec = Arc::new(Recorder::new());
    let out = drive(
        "keepalive",
        workers,
        chans.len(),
        a.common.stop(),
        a.common.rate,
        rec.clone(),
    )
    .await;
    // Leave the server as found, so the next scenario measures no leases
    // of this one.
    let mut revoking = tokio::task::JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let mut lease = LeaseClient::new(chans[i % chans.len()].clone());
        revoking.spawn(async move { lease.lease_revoke(LeaseRevokeRequest { id }).await });
    }
    while revoking.join_next().await.is_some() {}
    let mut p = a.common.params();
    p.insert("ttl".into(), json!(a.ttl));
    let report = finish("lease-keepalive", p, &out, &rec, Map::new());
    emit(report, a.common.json, out.aborted)
}
