//! KV scenarios: `put`, `range` and `txn-put`.
//!
//! Each client is a raw `KvClient` on one of the shared channels (client
//! `i` on connection `i % conns`), issuing one request at a time.
//!
//! `range --load-keys N` first writes keys `0..N` (txns of 100 puts, which
//! both etcd's and Roster's default op limit of 128 allow) and then reads
//! keys drawn from those N. A single-key range reads one key; `--prefix`
//! reads the 100 neighbouring keys that share a key's prefix, the shape of
//! a discovery read of one service. `--consistency l` asks for a
//! linearizable read (etcd's default), `s` a serializable one.

use std::sync::Arc;

use super::conn::Conn;
use clap::Args;
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::request_op::Request as Op;
use roster_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use serde_json::{json, Map};

use super::driver::{drive, status_text, Stop, Worker};
use roster_client::watch::prefix_end;

use super::keys::{KeyArgs, KeyGen, Rng};
use super::report::Recorder;
use super::{emit, finish, Common};

/// Keys written per txn while loading.
const LOAD_BATCH: u64 = 100;

/// Flags of `roster bench put`.
#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    keys: KeyArgs,
}

/// Flags of `roster bench range`.
#[derive(Args, Debug)]
pub struct RangeArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    keys: KeyArgs,
    /// `l` for linearizable reads, `s` for serializable ones.
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    consistency: String,
    /// Read the 100 keys sharing a key's prefix instead of one key.
    #[arg(long)]
    prefix: bool,
    /// Write this many keys (indices 0..N) before measuring; reads then
    /// draw from them.
    #[arg(long, default_value_t = 0)]
    load_keys: u64,
}

/// Flags of `roster bench txn-put`.
#[derive(Args, Debug)]
pub struct TxnPutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    keys: KeyArgs,
    /// Puts per txn.
    #[arg(long, default_value_t = 1)]
    txn_ops: usize,
}

fn put_op(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

/// Puts `value` at keys of `keys` (also `watched-puts`'s putters).
pub(super) struct PutWorker {
    pub(super) kv: KvClient<Conn>,
    pub(super) keys: KeyGen,
    pub(super) rng: Rng,
    pub(super) value: Vec<u8>,
}

impl Worker for PutWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let req = PutRequest {
            key: self.keys.key(seq, &mut self.rng),
            value: self.value.clone(),
            ..Default::default()
        };
        self.kv.put(req).await.map(drop).map_err(status_text)
    }
}

/// `roster bench put`.
pub async fn put(a: PutArgs) -> Result<(), String> {
    let chans = a.common.channels().await?;
    let workers = (0..a.common.clients)
        .map(|i| PutWorker {
            kv: KvClient::new(chans[i % chans.len()].clone()),
            keys: a.keys.keygen(),
            rng: Rng::for_client(i),
            value: a.keys.value(),
        })
        .collect();
    let rec = Arc::new(Recorder::new());
    let out = a
        .common
        .drive("put", workers, chans.len(), rec.clone())
        .await;
    let mut p = a.common.params();
    a.keys.params(&mut p);
    let report = finish("put", p, &out, &rec, Map::new());
    emit(report, a.common.json, out.aborted)
}

struct TxnWorker {
    kv: KvClient<Conn>,
    keys: KeyGen,
    rng: Rng,
    value: Vec<u8>,
    ops: usize,
}

impl Worker for TxnWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let success = (0..self.ops)
            .map(|_| put_op(self.keys.key(seq, &mut self.rng), self.value.clone()))
            .collect();
        let req = TxnRequest {
            success,
            ..Default::default()
        };
        self.kv.txn(req).await.map(drop).map_err(status_text)
    }
}

/// `roster bench txn-put`.
pub async fn txn_put(a: TxnPutArgs) -> Result<(), String> {
    let chans = a.common.channels().await?;
    let workers = (0..a.common.clients)
        .map(|i| TxnWorker {
            kv: KvClient::new(chans[i % chans.len()].clone()),
            keys: a.keys.keygen(),
            rng: Rng::for_client(i),
            value: a.keys.value(),
            ops: a.txn_ops.max(1),
        })
        .collect();
    let rec = Arc::new(Recorder::new());
    let out = a
        .common
        .drive("txn-put", workers, chans.len(), rec.clone())
        .await;
    let mut p = a.common.params();
    a.keys.params(&mut p);
    p.insert("txn_ops".into(), json!(a.txn_ops));
    let report = finish("txn-put", p, &out, &rec, Map::new());
    emit(report, a.common.json, out.aborted)
}

/// Writes keys `0..n` in txns of [`LOAD_BATCH`] puts each.
struct LoadWorker {
    kv: KvClient<Conn>,
    keys: KeyGen,
    value: Vec<u8>,
    n: u64,
}

impl Worker for LoadWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let first = seq * LOAD_BATCH;
        let success = (first..(first + LOAD_BATCH).min(self.n))
            .map(|i| put_op(self.keys.key_at(i), self.value.clone()))
            .collect();
        let req = TxnRequest {
            success,
            ..Default::default()
        };
        self.kv.txn(req).await.map(drop).map_err(status_text)
    }
}

/// Loads `n` keys before a measurement; fails if any batch failed, since
/// reads of missing keys would measure something else.
async fn load(chans: &[Conn], keys: &KeyArgs, n: u64) -> Result<(), String> {
    let workers = (0..chans.len().clamp(1, 16))
        .map(|i| LoadWorker {
            kv: KvClient::new(chans[i % chans.len()].clone()),
            keys: keys.keygen(),
            value: keys.value(),
            n,
        })
        .collect();
    let batches = n.div_ceil(LOAD_BATCH);
    let rec = Arc::new(Recorder::new());
    let out = drive("load", workers, chans.len(), Stop::Total(batches), 0.0, rec).await;
    if out.errors > 0 {
        return Err(format!(
            "loading {n} keys: {} of {batches} batches failed: {:?}",
            out.errors, out.error_samples
        ));
    }
    eprintln!("loaded {n} keys in {:.1} s", out.duration.as_secs_f64());
    Ok(())
}

struct RangeWorker {
    kv: KvClient<Conn>,
    keys: KeyGen,
    rng: Rng,
    serializable: bool,
    prefix: bool,
}

impl Worker for RangeWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let i = self.keys.index(seq, &mut self.rng);
        let (key, range_end) = if self.prefix {
            let p = self.keys.hundred_prefix(i);
            let end = prefix_end(&p);
            (p, end)
        } else {
            (self.keys.key_at(i), vec![])
        };
        let req = RangeRequest {
            key,
            range_end,
            serializable: self.serializable,
            ..Default::default()
        };
        let resp = self.kv.range(req).await.map_err(status_text)?;
        // A read that finds nothing measures a cheaper path than intended.
        if resp.get_ref().kvs.is_empty() {
            return Err("range found no key (load keys first: --load-keys)".into());
        }
        Ok(())
    }
}

/// `roster bench range`.
pub async fn range(mut a: RangeArgs) -> Result<(), String> {
    if a.load_keys > 0 {
        a.keys.key_space = a.load_keys;
    }
    let chans = a.common.channels().await?;
    if a.load_keys > 0 {
        load(&chans, &a.keys, a.load_keys).await?;
    }
    let workers = (0..a.common.clients)
        .map(|i| RangeWorker {
            kv: KvClient::new(chans[i % chans.len()].clone()),
            keys: a.keys.keygen(),
            rng: Rng::for_client(i),
            serializable: a.consistency == "s",
            prefix: a.prefix,
        })
        .collect();
    let rec = Arc::new(Recorder::new());
    let out = a
        .common
        .drive("range", workers, chans.len(), rec.clone())
        .await;
    let mut p = a.common.params();
    a.keys.params(&mut p);
    p.insert("consistency".into(), json!(a.consistency));
    p.insert("prefix".into(), json!(a.prefix));
    p.insert("load_keys".into(), json!(a.load_keys));
    let report = finish("range", p, &out, &rec, Map::new());
    emit(report, a.common.json, out.aborted)
}
