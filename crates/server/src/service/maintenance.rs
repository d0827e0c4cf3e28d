//! `etcdserverpb.Maintenance`: what a single node can answer.
//!
//! Status, Alarm, Hash, HashKV, Snapshot and Defragment are served (the
//! last is redb's compaction, `Store::defragment`). The rest answer
//! `Unimplemented` until their issue comes.
//!
//! Alarms are state machine state: ACTIVATE and DEACTIVATE go through the
//! log (with the request's member id, as etcd), GET reads what is applied.
//! Hash and HashKV checkpoint and scan storage, so they run on a blocking
//! thread. Snapshot streams the store's snapshot (`roster_store::snapshot`)
//! (a bbolt file, as etcd's) followed by its SHA-256, as etcd does, so
//! `etcdctl snapshot save` works and `etcdctl snapshot status`, etcd's
//! restore and `roster snapshot restore` take the file.

use std::pin::Pin;
use std::sync::Arc;

use roster_proto::etcdserverpb::maintenance_server::Maintenance;
use roster_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Status};

use roster_store::{CommandKind, CommandResponse, StoreError};

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
    async fn alarm(&self, req: Request<AlarmRequest>) -> Reply<AlarmResponse> {
        let r = req.into_inner();
        let n = &self.node;
        reply(
            async {
                match AlarmAction::try_from(r.action) {
                    Ok(AlarmAction::Activate | AlarmAction::Deactivate) => {
                        match n.propose(CommandKind::Alarm(r)).await? {
                            CommandResponse::Alarm(mut resp) => {
                                n.fill(&mut resp.header);
                                Ok(resp)
                            }
                            other => unreachable!("store answered {other:?} to an Alarm"),
                        }
                    }
                    // GET, and an action etcd does not know, which it
                    // answers with nothing.
                    action => Ok(AlarmResponse {
                        header: n.header(0),
                        alarms: match action {
                            Ok(AlarmAction::Get) => n.store.alarms(r.alarm),
                            _ => vec![],
                        },
                    }),
                }
            }
            .await,
        )
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Reply<StatusResponse> {
        let n = &self.node;
        let st = n.status();
        let size = n.db_size() as i64;
        let errors = n
            .store
            .alarms(AlarmType::None as i32)
            .iter()
            .map(alarm_text)
            .collect();
        reply(Ok(StatusResponse {
            header: n.header(0),
            version: API_VERSION.into(),
            db_size: size,
            leader: st.leader,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: st.applied_index,
            errors,
            // Record bytes in use (see `Store::used_bytes`), never above
            // the file's size.
            db_size_in_use: (n.store.used_bytes() as i64).min(size),
            is_learner: false,
        }))
    }

    async fn defragment(&self, _req: Request<DefragmentRequest>) -> Reply<DefragmentResponse> {
        let store = self.node.store.clone();
        reply(
            blocking(move || store.defragment())
                .await
                .map(|()| DefragmentResponse {
                    header: self.node.header(0),
                }),
        )
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Reply<HashResponse> {
        let store = self.node.store.clone();
        let hashed = blocking(move || store.hash()).await;
        reply(hashed.map(|h| HashResponse {
            header: self.node.header(h.revision),
            hash: h.hash,
        }))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Reply<HashKvResponse> {
        let rev = req.into_inner().revision;
        let store = self.node.store.clone();
        let hashed = blocking(move || store.hash_kv(rev)).await;
        reply(hashed.map(|h| HashKvResponse {
            header: self.node.header(h.revision),
            hash: h.hash,
            compact_revision: h.compact_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, _req: Request<SnapshotRequest>) -> Reply<SnapshotStream> {
        let node = self.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        // The store is read on a blocking thread, a piece at a time: the
        // channel's two pieces are all the memory a slow reader costs.
        tokio::task::spawn_blocking(move || stream_snapshot(&node, &tx));
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn move_leader(&self, _req: Request<MoveLeaderRequest>) -> Reply<MoveLeaderResponse> {
        reply(Err(ServerError::Unsupported("MoveLeader")))
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Reply<DowngradeResponse> {
        reply(Err(ServerError::Unsupported("Downgrade")))
    }
}

/// Length of the SHA-256 sent after the snapshot.
const HASH_BYTES: u64 = 32;

/// Bytes of snapshot per message, as etcd sends them.
const SNAPSHOT_PIECE: usize = 32 << 10;

/// Sends `node`'s snapshot on `tx`, then its SHA-256 as the last message.
/// `remaining_bytes` says, as etcd's does, how many bytes are still to
/// come after each message: the hash's included, so the last says 0.
fn stream_snapshot(node: &Node, tx: &Sender<Result<SnapshotResponse, Status>>) {
    let header = node.header(0);
    let mut writer = match node.store.snapshot() {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.blocking_send(Err(Status::from(ServerError::Store(e))));
            return;
        }
    };
    // The hash follows the pages, so this much is left before it.
    let total = writer.len() + HASH_BYTES;
    let mut sent = 0u64;
    let mut hasher = Sha256::new();
    loop {
        let mut blob = Vec::with_capacity(SNAPSHOT_PIECE + 1024);
        match writer.fill(&mut blob, SNAPSHOT_PIECE) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::from(ServerError::Store(e))));
                return;
            }
        }
        hasher.update(&blob);
        sent += blob.len() as u64;
        let msg = SnapshotResponse {
            header,
            remaining_bytes: total - sent,
            blob,
        };
        if tx.blocking_send(Ok(msg)).is_err() {
            return; // the client went away
        }
    }
    let _ = tx.blocking_send(Ok(SnapshotResponse {
        header,
        remaining_bytes: 0,
        blob: hasher.finalize().to_vec(),
    }));
}

/// An alarm as etcd's Status lists it: the protobuf text of its
/// `AlarmMember`, trailing space included (`memberID:1 alarm:NOSPACE `).
fn alarm_text(m: &AlarmMember) -> String {
    let name = AlarmType::try_from(m.alarm).map_or("NONE", |a| a.as_str_name());
    format!("memberID:{} alarm:{name} ", m.member_id)
}

/// Runs a storage scan off the runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ServerError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ServerError::from),
        Err(_) => Err(ServerError::Stopped),
    }
}
