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

use super::conn::{Conn, RawStream};
use clap::Args;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
};
use serde_json::{json, Map};

use super::driver::{set_up_in_order, status_text, Worker};
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
    stream: RawStream,
}

impl KeepaliveWorker {
    /// Sends one keepalive and checks its answer: the lease must still be
    /// known.
    async fn round_trip(&mut self) -> Result<(), String> {
        self.stream.send(&LeaseKeepAliveRequest { id: self.id })?;
        match self.stream.recv::<LeaseKeepAliveResponse>().await? {
            r if r.ttl > 0 => Ok(()),
            _ => Err("lease not found (keepalive answered TTL 0)".into()),
        }
    }
}

impl Worker for KeepaliveWorker {
    async fn op(&mut self, _seq: u64) -> Result<(), String> {
        self.round_trip().await
    }
}

/// Grants a lease and opens its keepalive stream, driven by the client
/// itself (see [`RawStream`]).
async fn open(ch: Conn, ttl: i64) -> Result<KeepaliveWorker, String> {
    let id = LeaseClient::new(ch.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .map_err(status_text)?
        .into_inner()
        .id;
    let stream = ch.open_raw("/etcdserverpb.Lease/LeaseKeepAlive")?;
    let mut w = KeepaliveWorker { id, stream };
    w.round_trip().await?;
    Ok(w)
}

/// `roster bench lease-keepalive`.
pub async fn keepalive(a: KeepaliveArgs) -> Result<(), String> {
    let chans = a.common.channels().await?;
    let workers =
        set_up_in_order((0..a.common.clients).map(|i| open(chans[i % chans.len()].clone(), a.ttl)))
            .await?;
    let ids: Vec<i64> = workers.iter().map(|w| w.id).collect();
    let rec = Arc::new(Recorder::new());
    let out = a
        .common
        .drive("keepalive", workers, chans.len(), rec.clone())
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
