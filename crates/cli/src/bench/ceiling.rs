//! The machine's ceilings, and a readiness probe.
//!
//! A registry's numbers mean little without the most this machine could
//! give: `noop-server` serves etcd's `Maintenance.Status` answering an
//! empty response at once, and `noop` drives any endpoint's Status with
//! the same driver and channels as the other scenarios; against
//! `noop-server` that is the rate of a tonic unary call that does nothing,
//! the most any gRPC server here can answer. (Against a real server,
//! Status does a little work; it is still a useful "how fast is the RPC
//! layer" probe.) `fsync` appends `--val-size` bytes to a file and
//! `fdatasync`s it, `--total` times: the latency of one durable write, the
//! floor under any write acknowledged only once it is on disk. The file
//! grows with each append, so each sync also commits its new size, as a
//! log's appends do. With `--rate`, appends are paced instead of back to
//! back: on a virtual machine a sync that finds the machine idle takes
//! longer (the vCPU halts while the disk works, and waking it costs), and a
//! registry at a low write rate pays that price on every write.
//!
//! `ready` waits for an endpoint to answer a linearizable Range (what
//! `etcdctl endpoint health` asks) and prints how long that took; a script
//! timing a restart starts it together with the server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use clap::Args;
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use roster_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, RangeRequest, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse,
};
use serde_json::{json, Map};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::driver::{progress, status_text, Worker};
use super::report::{Recorder, Report};
use super::{emit, finish, Common};
use crate::serve::parse_duration;

/// Flags of `roster bench noop`.
#[derive(Args, Debug)]
pub struct NoopArgs {
    #[command(flatten)]
    common: Common,
    /// Start a noop server in this process and drive it, instead of
    /// --endpoints (convenient; a separate `noop-server` process keeps the
    /// server's CPU apart from the load generator's, as real servers are).
    #[arg(long)]
    in_process: bool,
}

/// Flags of `roster bench noop-server`.
#[derive(Args, Debug)]
pub struct NoopServerArgs {
    /// Address to listen on (port 0 picks a free port; the chosen one is
    /// printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Flags of `roster bench fsync`.
#[derive(Args, Debug)]
pub struct FsyncArgs {
    /// Directory to write the probe file in (it is removed afterwards).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Appends to make.
    #[arg(long, default_value_t = 1000)]
    total: u64,
    /// Bytes per append.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Appends per second (0: back to back).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Flags of `roster bench ready`.
#[derive(Args, Debug)]
pub struct ReadyArgs {
    /// Endpoint to probe.
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// Give up after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Maintenance with a Status that does nothing; everything else refused.
struct Noop;

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

fn refused<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("noop server: only Status is served"))
}

#[tonic::async_trait]
impl Maintenance for Noop {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse::default()))
    }
    async fn alarm(&self, _: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        refused()
    }
    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        refused()
    }
    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        refused()
    }
    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        refused()
    }
    type SnapshotStream = SnapshotStream;
    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        refused()
    }
    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        refused()
    }
    async fn downgrade(
        &self,
        _: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        refused()
    }
}

/// Serves the noop Maintenance on `listener` until the future is dropped.
/// Accepted sockets get `TCP_NODELAY`, as a gRPC server's should: tonic's
/// builder setting does not reach sockets of a listener passed in, and
/// with Nagle's algorithm on, a response written in two segments can wait
/// for the client's delayed ACK (40 ms on Linux).
async fn serve_noop(listener: TcpListener) -> Result<(), String> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(MaintenanceServer::new(Noop))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| format!("noop server: {e}"))
}

/// `roster bench noop-server`: runs until killed.
pub fn noop_server(a: NoopServerArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("starting runtime: {e}"))?;
    runtime.block_on(async move {
        let l = TcpListener::bind(a.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        // The same line `roster serve` prints, so scripts wait for both alike.
        eprintln!("roster bench noop-server: ready to serve client requests on http://{addr}");
        serve_noop(l).await
    })
}

struct StatusWorker(MaintenanceClient<Conn>);

impl Worker for StatusWorker {
    async fn op(&mut self, _seq: u64) -> Result<(), String> {
        self.0
            .status(StatusRequest {})
            .await
            .map(drop)
            .map_err(status_text)
    }
}

/// `roster bench noop`.
pub async fn noop(mut a: NoopArgs) -> Result<(), String> {
    let server = if a.in_process {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        a.common.endpoints = vec![l.local_addr().map_err(|e| e.to_string())?.to_string()];
        Some(tokio::spawn(serve_noop(l)))
    } else {
        None
    };
    let chans = a.common.channels().await?;
    let workers = (0..a.common.clients)
        .map(|i| StatusWorker(MaintenanceClient::new(chans[i % chans.len()].clone())))
        .collect();
    let rec = Arc::new(Recorder::new());
    let out = a
        .common
        .drive("noop", workers, chans.len(), rec.clone())
        .await;
    if let Some(s) = server {
        s.abort();
    }
    let mut p = a.common.params();
    p.insert("in_process".into(), json!(a.in_process));
    let report = finish("noop", p, &out, &rec, Map::new());
    emit(report, a.common.json, out.aborted)
}

/// `roster bench fsync`.
pub fn fsync(a: FsyncArgs) -> Result<(), String> {
    let path = a
        .dir
        .join(format!("roster-bench-fsync-{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let buf = vec![b'f'; a.val_size];
    let rec = Recorder::new();
    let pb = progress("fsync", a.total);
    let start = Instant::now();
    let mut failed = None;
    for i in 0..a.total {
        if a.rate > 0.0 {
            let at = start + Duration::from_secs_f64(i as f64 / a.rate);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        let t = Instant::now();
        if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_data()) {
            failed = Some(e.to_string());
            break;
        }
        rec.record(0, t.elapsed());
        if i % 16 == 0 {
            pb.set_position(i);
        }
    }
    let duration = start.elapsed();
    pb.finish_and_clear();
    drop(f);
    let _ = std::fs::remove_file(&path);
    let latency = rec.merged();
    let mut p = Map::new();
    p.insert("dir".into(), json!(a.dir.display().to_string()));
    p.insert("total".into(), json!(a.total));
    p.insert("val_size".into(), json!(a.val_size));
    p.insert("rate".into(), json!(a.rate));
    let report = Report {
        scenario: "fsync".into(),
        params: p,
        count: latency.len(),
        errors: u64::from(failed.is_some()),
        error_samples: failed.into_iter().collect(),
        duration,
        latency,
        extra: Map::new(),
    };
    emit(report, a.json, false)
}

/// `roster bench ready`.
pub async fn ready(a: ReadyArgs) -> Result<(), String> {
    let url = if a.endpoints.contains("://") {
        a.endpoints.clone()
    } else {
        format!("http://{}", a.endpoints)
    };
    let ep = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(1));
    let start = Instant::now();
    loop {
        if let Ok(ch) = ep.connect().await {
            let req = RangeRequest {
                key: b"health".to_vec(),
                ..Default::default()
            };
            if KvClient::new(ch).range(req).await.is_ok() {
                println!("{:.1}", start.elapsed().as_secs_f64() * 1000.0);
                return Ok(());
            }
        }
        if start.elapsed() > a.timeout {
            return Err(format!("{} not ready after {:?}", a.endpoints, a.timeout));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
