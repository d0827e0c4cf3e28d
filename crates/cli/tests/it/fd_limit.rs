//! The open-file limit never stops `roster serve`. It raises its soft
//! limit to the hard one at start, as etcd does, so that more clients than
//! the usual soft limit can connect; and when clients come past even the
//! hard limit, each is served or refused at once, the accept loop does not
//! spin, and the node keeps the descriptors its log and database need.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::PutRequest;
use roster_testkit::{Proc, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts `roster serve` on 127.0.0.1:0 under `ulimit <ulimit>` (the
/// shell's flags: `-Sn N` for the soft limit, `-n N` for both); returns it
/// and its client endpoint.
fn serve_under(ulimit: &str, dir: &Path) -> (Proc, String) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit {ulimit} && exec \"$0\" serve --data-dir \"$1\" \
             --listen-client-urls http://127.0.0.1:0"
        ))
        .arg(env!("CARGO_BIN_EXE_roster"))
        .arg(dir)
        .env("RUST_LOG", "info");
    let proc = Proc::start("roster", cmd, "ready to serve client requests on http://");
    let endpoint = proc
        .ready_line()
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .to_string();
    (proc, endpoint)
}

/// Raises this test process's soft open-file limit to its hard one, as
/// the server does (a machine whose soft limit is 1024 would otherwise
/// skip the flood); returns the soft limit now, `None` for unlimited.
fn raise_own_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(_) => limit.current,
    }
}

/// The soft limit the server is started with.
const SOFT: u64 = 128;
/// Clients held connected at once: more than `SOFT` descriptors.
const CLIENTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_clients_than_the_soft_limit_are_served() {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    if hard.is_some_and(|h| h < CLIENTS as u64 * 2) {
        eprintln!("skipped: the hard limit on open files is {hard:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (proc, endpoint) = serve_under(&format!("-Sn {SOFT}"), dir.path());
    assert!(
        proc.log().iter().any(
            |l| l.contains("raised the open file limit") && l.contains(&format!("from={SOFT}"))
        ),
        "no line about the raised limit: {:?}",
        proc.log()
    );

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        // Without the raised limit the server cannot accept the next
        // connection, and the client waits: bound it.
        let connected = tokio::time::timeout(WAIT, async {
            let mut c = etcd_client::Client::connect([&endpoint], None).await?;
            c.put(format!("/fd/{i}"), "x", None).await?;
            Ok::<_, etcd_client::Error>(c)
        })
        .await;
        match connected {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => panic!("client {i}: {e}"),
            Err(_) => panic!("client {i} was not served within {WAIT:?}"),
        }
    }
    // Every connection is still open and served.
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.get(format!("/fd/{i}"), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1);
    }
}

/// The open-file limit, soft and hard, of the flooded server: raising the
/// soft limit cannot help it.
const LIMIT: u64 = 1024;
/// Raw connections held open at once: the 2,000 clients.
const FLOOD: usize = 2000;
/// gRPC clients that connect while the flood is held.
const LATE: usize = 10;
/// Puts written under the flood, of [`VALUE`] bytes each: 10 MiB, more
/// than the log holds before a checkpointed segment is rolled (8 MiB), so
/// the node must create a new segment file while the flood is held.
const PUTS: usize = 160;
const VALUE: usize = 64 << 10;

/// What became of one connection of the flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// The server's HTTP/2 settings arrived: it serves the connection.
    Served,
    /// The server closed it: a clean refusal.
    Refused,
    /// Nothing within [`WAIT`]: left in the listen backlog.
    Waiting,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_hard_limit_never_stops_the_node() {
    // The flood's own sockets need room here too.
    let own = raise_own_limit();
    if own.is_some_and(|n| n < FLOOD as u64 + 512) {
        eprintln!("skipped: this test's open file limit is {own:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, endpoint) = serve_under(&format!("-n {LIMIT}"), dir.path());
    let addr: SocketAddr = endpoint.parse().unwrap();

    // Connected before the flood, and used throughout it.
    let mut steady = etcd_client::Client::connect([&endpoint], None)
        .await
        .unwrap();
    steady.put("/steady", "x", None).await.unwrap();
    let segments_before = segments(dir.path());

    let (hoard, fates) = flood(addr).await;
    let count = |f: Fate| fates.iter().filter(|&&x| x == f).count();
    let (served, refused, waiting) = (
        count(Fate::Served),
        count(Fate::Refused),
        count(Fate::Waiting),
    );
    let late = late_clients(&endpoint).await;
    let late_waiting = late.iter().filter(|&&x| x == Fate::Waiting).count();

    // Nothing is asked of the server now: whatever CPU it burns is its
    // accept loop. The window is the measurement, not a wait for an event.
    let cpu = proc.cpu_share(Duration::from_secs(2)).await;

    let mut acked = Vec::new();
    let mut put_error = None;
    for i in 0..PUTS {
        match steady.put(key(i), vec![b'v'; VALUE], None).await {
            Ok(_) => acked.push(i),
            Err(e) => {
                put_error = Some(e.to_string());
                break;
            }
        }
    }
    // The segment is rolled at the checkpoint after the writes; a node
    // that cannot create its file stops instead.
    let rolled = tokio::time::timeout(WAIT, async {
        loop {
            if segments(dir.path()) != segments_before {
                return true;
            }
            if !proc.running() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or(false);

    drop(hoard);
    let alive = proc.running();
    let mut lost = Vec::new();
    if alive {
        let mut fresh = etcd_client::Client::connect([&endpoint], None)
            .await
            .unwrap();
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_keys_only();
        let r = roster_testkit::within(
            "a range on a fresh connection",
            fresh.get("/flood/", Some(opts)),
        )
        .await
        .unwrap();
        let found: BTreeSet<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
        lost = acked
            .iter()
            .filter(|&&i| !found.contains(key(i).as_bytes()))
            .collect();
    }

    eprintln!(
        "flood of {FLOOD} under a limit of {LIMIT}: {served} served, {refused} refused, \
         {waiting} left waiting; late gRPC clients: {late:?}; server CPU while held: \
         {:.0}%; puts acknowledged: {} of {PUTS} ({put_error:?}); segment rolled: \
         {rolled}; alive: {alive}; acknowledged puts lost: {}",
        cpu * 100.0,
        acked.len(),
        if alive {
            lost.len().to_string()
        } else {
            "unknown".into()
        },
    );
    assert_eq!(waiting, 0, "connections left waiting in the backlog");
    assert!(
        served > 0 && refused > 0,
        "{served} served, {refused} refused"
    );
    assert_eq!(late_waiting, 0, "late gRPC clients left waiting: {late:?}");
    assert!(cpu < 0.5, "the server spins: {:.0}% of a core", cpu * 100.0);
    assert_eq!(put_error, None, "puts under the flood");
    assert!(rolled, "no new log segment under the flood");
    assert!(alive, "the node stopped");
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
    let refusals = proc.log().iter().filter(|l| l.contains("refusing")).count();
    assert!(
        refusals <= 2,
        "{refusals} lines about refusals: not rate-limited"
    );
}

/// What an HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn key(i: usize) -> String {
    format!("/flood/{i:04}")
}

/// Opens [`FLOOD`] connections at once and learns each one's fate; returns
/// the served ones, still open, and every fate.
async fn flood(addr: SocketAddr) -> (Vec<TcpStream>, Vec<Fate>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        tasks.spawn(async move {
            let fate = tokio::time::timeout_at(deadline, async {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return (Fate::Refused, None);
                };
                // A client speaks first, as gRPC's do. A silent one can
                // wait forever: when 2,000 connect at once, the listen
                // queue overflows, and Linux drops the last ACK of a
                // handshake it answered with a SYN cookie. Only data the
                // client sends, retransmitted, completes it.
                if s.write_all(PREFACE).await.is_err() {
                    return (Fate::Refused, None);
                }
                let mut buf = [0u8; 64];
                match s.read(&mut buf).await {
                    Ok(n) if n > 0 => (Fate::Served, Some(s)),
                    _ => (Fate::Refused, None),
                }
            })
            .await;
            fate.unwrap_or((Fate::Waiting, None))
        });
    }
    let (mut hoard, mut fates) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (fate, stream) = done.unwrap();
        fates.push(fate);
        hoard.extend(stream);
    }
    (hoard, fates)
}

/// [`LATE`] gRPC clients that connect and put while the flood is held:
/// each is served or refused, none left waiting.
async fn late_clients(endpoint: &str) -> Vec<Fate> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..LATE {
        let url = format!("http://{endpoint}");
        tasks.spawn(async move {
            let put = async {
                let mut kv = KvClient::connect(url).await.map_err(|e| e.to_string())?;
                let req = PutRequest {
                    key: format!("/late/{i}").into_bytes(),
                    value: b"x".to_vec(),
                    ..Default::default()
                };
                kv.put(req).await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(WAIT, put).await {
                Ok(Ok(_)) => Fate::Served,
                Ok(Err(_)) => Fate::Refused,
                Err(_) => Fate::Waiting,
            }
        });
    }
    tasks.join_all().await
}

/// The names of the log's segment files under `dir`.
fn segments(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "wal") {
                found.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}
