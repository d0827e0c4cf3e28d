//! Out of descriptors, the accept loop backs off instead of spinning.
//!
//! The node's reserve (see `accept.rs`) keeps clients from taking the last
//! descriptors, so only the node's own files can use them up. To get
//! there, a child process (this test binary, re-run) serves a node under a
//! low limit and then opens `/dev/null` until `EMFILE`. The parent
//! connects clients that cannot be accepted, measures the child's CPU
//! while they wait, then lets the child free its files and sees the same
//! clients served.

use std::fs::File;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use roster_testkit::{within, Proc, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tells the re-run test binary that it is the child.
const CHILD: &str = "ROSTER_ACCEPT_CHILD";
/// What the child prints, with its address, once every descriptor is taken.
const READY: &str = "out of descriptors, serving on";
/// The child's soft limit on open files.
const LIMIT: u64 = 256;
/// Clients that wait while the child has no descriptor for them.
const CLIENTS: usize = 5;
/// What an HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_when_out_of_descriptors() {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", "node::accept::child", "--nocapture"])
        .env(CHILD, "1");
    let mut child = Proc::start("accept child", cmd, READY);
    let addr: SocketAddr = child
        .ready_line()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(PREFACE).await.unwrap();
        clients.push(s);
    }
    child.until_log("cannot accept connections").await;
    let cpu = child.cpu_share(Duration::from_secs(1)).await;
    assert!(
        cpu < 0.5,
        "the accept loop spins: {:.0}% of a core",
        cpu * 100.0
    );
    let warnings = child
        .log()
        .iter()
        .filter(|l| l.contains("cannot accept"))
        .count();
    assert_eq!(warnings, 1, "one warning per episode, not per retry");

    child.close_stdin();
    for (i, s) in clients.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let n = within("the node's settings", s.read(&mut buf)).await;
        assert!(matches!(n, Ok(n) if n > 0), "client {i}: {n:?}");
    }
    child.until_log("accepting again").await;
}

/// The child's side: a no-op in a normal test run.
#[test]
fn child() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(LIMIT),
            maximum: hard,
        },
    )
    .expect("lower the open file limit");
    let node = TestNode::start();
    // Take every descriptor left, as the node's own files might.
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()) => break,
            Err(e) => panic!("open /dev/null: {e}"),
        }
    }
    eprintln!("{READY} {}", node.addr());
    // The parent closes stdin to give the descriptors back.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    drop(held);
    // Serve until killed.
    loop {
        std::thread::park();
    }
}
