//! A node: the consensus, the state machine behind it, and the node's
//! identity.
//!
//! The gRPC services hold an `Arc<Node>` and nothing else; they validate a
//! request, read the store or propose a command here, and fill the response
//! header from here. Nothing here applies a command: that is the state
//! machine's job, fed by the consensus (`crate::state`).

use std::path::PathBuf;
use std::sync::Arc;

use roster_proto::etcdserverpb::{
    alarm_request::AlarmAction, request_op, AlarmRequest, AlarmType, RequestOp, ResponseHeader,
    TxnRequest,
};
use roster_raft::LogError;
use roster_store::{Command, CommandKind, CommandResponse, Store, StoreError};
use tokio::sync::Notify;

use crate::coalesce::Backlog;
use crate::config::Config;
use crate::consensus::{Consensus, ConsensusStatus};
use crate::error::ServerError;
use crate::lessor::Lessor;
use crate::standalone::{Member, RecoverError, Standalone};
use crate::state::StateMachine;
use crate::watch::hub::Hub;

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "roster.redb";
/// Name of the write-ahead log's directory inside the data directory.
pub const WAL_DIR: &str = "wal";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The log could not be recovered (damaged, or not what the database
    /// needs); nothing was changed.
    #[error("cannot recover the log in {path}: {source}")]
    Log {
        /// The log's directory.
        path: PathBuf,
        /// What went wrong.
        source: crate::standalone::RecoverError,
    },
    /// The database could not be opened (in use, unreadable, corrupt).
    #[error("cannot open database {path}: {source}")]
    Store {
        /// The database file.
        path: PathBuf,
        /// What the store said.
        source: roster_store::StoreError,
    },
}

/// A running registry node.
pub struct Node {
    /// The store, for reads.
    pub store: Arc<Store>,
    consensus: Arc<dyn Consensus>,
    /// The cluster id in response headers.
    pub cluster_id: u64,
    /// This member's id.
    pub member_id: u64,
    /// The node's configuration.
    pub config: Config,
    /// Client URLs to advertise (filled once listeners are bound).
    pub client_urls: parking_lot::RwLock<Vec<String>>,
    /// Lease deadlines.
    pub lessor: Arc<Lessor>,
    /// Every watcher.
    pub hub: Arc<Hub>,
    /// Notified when the write path fails and the node must stop.
    pub fatal: Arc<Notify>,
    /// Answers given and not yet taken (see `crate::coalesce`).
    backlog: Backlog,
}

const META_CLUSTER_ID: &str = "cluster_id";
const META_MEMBER_ID: &str = "member_id";
const META_TERM: &str = "term";

impl Node {
    /// Opens the data directory, recovers the store and starts the writer.
    pub fn open(config: Config) -> Result<Arc<Node>, OpenError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| OpenError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let db_path = config.data_dir.join(DB_FILE);
        // A database this open creates is removed again if the node does
        // not start: with a log that needs the store it had (say the
        // database was deleted after the log moved to a new segment), the
        // refusal must leave the directory as it found it, and a second
        // start must refuse the same way rather than find a store.
        // Only while the log is untouched: once it has been replayed into
        // the new database and released, that database holds what the log
        // no longer does.
        let created = !db_path.exists();
        let mut log_touched = false;
        let node = Node::open_inner(config, &db_path, &mut log_touched);
        if let Err(e) = &node {
            let refused = matches!(
                e,
                OpenError::Log {
                    source: RecoverError::Log(LogError::Corrupt { .. } | LogError::Mismatch { .. }),
                    ..
                }
            );
            if created && (!log_touched || refused) {
                let _ = std::fs::remove_file(&db_path);
            }
        }
        node
    }

    fn open_inner(
        config: Config,
        db_path: &std::path::Path,
        log_touched: &mut bool,
    ) -> Result<Arc<Node>, OpenError> {
        let store_err = |source| OpenError::Store {
            path: db_path.to_path_buf(),
            source,
        };
        // redb verifies every page's checksum as the store opens it, and
        // the store checks what it decodes, so damage is an error. But redb
        // does not promise that no file altered behind its back can make it
        // panic, and a panic here would end the process with a backtrace
        // instead of a refusal to start: contain it, and report it as the
        // damage it is. Nothing is shared with the failed open.
        let store = crate::contain::quietly(|| Store::open(db_path))
            .map_err(|panic| {
                store_err(StoreError::Storage(format!(
                    "the database is damaged: reading it failed ({panic})"
                )))
            })?
            .map_err(store_err)?;
        let store = Arc::new(store);

        let ident = |name: &str| -> Result<u64, roster_store::StoreError> {
            match store.meta(name)? {
                Some(v) => Ok(v),
                None => {
                    // Ids are random per data directory, like etcd's, and
                    // never 0, which etcd reserves for "none".
                    let v = rand::random::<u64>().max(1);
                    store.set_meta(name, v)?;
                    Ok(v)
                }
            }
        };
        let cluster_id = ident(META_CLUSTER_ID).map_err(store_err)?;
        let member_id = ident(META_MEMBER_ID).map_err(store_err)?;
        // A single etcd member wins an election at term 2 on first start and
        // one term higher on every restart; mirror that so tools that show
        // the term see what they expect.
        // Written once the log has been recovered: a refused start leaves
        // the term as it was.
        let term = store.meta(META_TERM).map_err(store_err)?.unwrap_or(1) + 1;

        let lessor = Arc::new(Lessor::recover(&store.leases()));
        let hub = Arc::new(Hub::new(store.clone(), cluster_id, member_id, term));
        let sm = Arc::new(StateMachine::new(
            store.clone(),
            hub.clone(),
            lessor.clone(),
        ));
        let fatal = Arc::new(Notify::new());
        let backlog = Backlog::default();
        let member = Member {
            term,
            id: member_id,
            fatal: fatal.clone(),
            backlog: backlog.clone(),
        };
        // The consensus brings the store up to everything acknowledged: it
        // is durable as of its last checkpoint, the log holds the rest.
        let wal_dir = config.data_dir.join(WAL_DIR);
        *log_touched = true;
        let consensus =
            Standalone::open(sm, &wal_dir, member).map_err(|source| OpenError::Log {
                path: wal_dir.clone(),
                source,
            })?;
        if let Err(e) = store.set_meta(META_TERM, term) {
            consensus.stop();
            return Err(store_err(e));
        }
        // Time did not run for leases while the node was down.
        lessor.start_clocks();
        Ok(Arc::new(Node {
            store,
            consensus: Arc::new(consensus),
            cluster_id,
            member_id,
            client_urls: parking_lot::RwLock::new(config.advertise_client_urls.clone()),
            config,
            lessor,
            hub,
            fatal,
            backlog,
        }))
    }

    /// The consensus state.
    pub fn status(&self) -> ConsensusStatus {
        self.consensus.status()
    }

    /// Durable commits of the write path so far (log appends, one
    /// `fdatasync` each): with group commit, fewer than the writes.
    pub fn durable_commits(&self) -> u64 {
        self.consensus.durable_commits()
    }

    /// The consensus, for what proposes on its own (the lessor's loop).
    pub fn consensus(&self) -> Arc<dyn Consensus> {
        self.consensus.clone()
    }

    /// Answers to writes not yet taken by their requests' tasks: the
    /// connections' write coalescing waits for them.
    pub fn backlog(&self) -> crate::coalesce::Backlog {
        self.backlog.clone()
    }

    /// Size of the database file.
    pub fn db_size(&self) -> u64 {
        self.store.size_on_disk()
    }

    /// A response header; `revision` 0 means the current revision.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision: if revision == 0 {
                self.store.revision()
            } else {
                revision
            },
            raft_term: self.consensus.status().term,
        })
    }

    /// Fills in a header the store started (it sets only the revision).
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = self.header(revision);
    }

    /// Proposes a write and waits for its outcome.
    pub async fn propose(&self, kind: CommandKind) -> Result<CommandResponse, ServerError> {
        if let Some(cost) = space_cost(&kind) {
            self.check_quota(cost).await?;
        }
        let outcome = self.consensus.propose(Command { kind: Some(kind) }).await?;
        let response = outcome.response?;
        if let Some(settled) = outcome.settled {
            // A physical compaction: answered once storage let go.
            settled.await.map_err(|_| ServerError::Stopped)?;
        }
        Ok(response)
    }

    /// Refuses a write of `cost` bytes that would take the store past
    /// its quota, raising NOSPACE first as etcd does: from then on every
    /// member refuses what takes space, in apply, until it is cleared.
    /// The check itself reads this member's own size, so it only decides
    /// whether to propose; what apply refuses is decided from the alarm.
    async fn check_quota(&self, cost: u64) -> Result<(), ServerError> {
        if self.store.used_bytes() + cost <= self.config.quota() {
            return Ok(());
        }
        if self.store.alarms(AlarmType::Nospace as i32).is_empty() {
            let raise = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.member_id,
                alarm: AlarmType::Nospace as i32,
            };
            let cmd = Command {
                kind: Some(CommandKind::Alarm(raise)),
            };
            if let Err(e) = self.consensus.propose(cmd).await {
                tracing::warn!("raising NOSPACE: {e}");
            }
        }
        Err(StoreError::NoSpace.into())
    }

    /// Refuses requests above the configured size.
    pub fn check_size(&self, msg: &impl prost::Message) -> Result<(), ServerError> {
        if msg.encoded_len() > self.config.max_request_bytes {
            return Err(ServerError::RequestTooLarge);
        }
        Ok(())
    }

    /// Stops the write path after the RPC layer has drained. Blocks.
    pub fn stop(&self) {
        self.consensus.stop();
    }
}

/// What a put costs against the quota, as etcd reckons it: its key and
/// value and a fixed overhead.
const KV_OVERHEAD: u64 = 256;
/// What a lease grant costs against the quota.
const LEASE_OVERHEAD: u64 = 64;

/// The space a write may take, for the quota check; `None` for writes
/// that are never refused for space. A txn costs its costlier branch
/// (nested txns counted in).
fn space_cost(kind: &CommandKind) -> Option<u64> {
    fn txn(t: &TxnRequest) -> u64 {
        let branch = |ops: &[RequestOp]| ops.iter().map(op).sum::<u64>();
        branch(&t.success).max(branch(&t.failure))
    }
    fn op(o: &RequestOp) -> u64 {
        match &o.request {
            Some(request_op::Request::RequestPut(p)) => {
                KV_OVERHEAD + (p.key.len() + p.value.len()) as u64
            }
            Some(request_op::Request::RequestTxn(t)) => txn(t),
            _ => 0,
        }
    }
    match kind {
        CommandKind::Put(p) => Some(KV_OVERHEAD + (p.key.len() + p.value.len()) as u64),
        CommandKind::Txn(t) if roster_store::takes_space(kind) => Some(txn(t)),
        CommandKind::LeaseGrant(_) => Some(LEASE_OVERHEAD),
        _ => None,
    }
}
