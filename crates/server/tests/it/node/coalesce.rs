//! Write coalescing: a connection's write waits once for answers that are
//! about to become responses, and never while none are.

use std::pin::Pin;
use std::task::Poll;

use roster_proto::etcdserverpb::PutRequest;
use roster_server::coalesce::{Backlog, Coalesce};
use roster_server::{Config, Node};
use roster_store::CommandKind;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// A loopback connection: (the side that writes, the side that reads).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (accepted.unwrap().0, client.unwrap())
}

/// One `poll_write` of `data`, reported as it came back.
async fn write_once(io: &mut Coalesce<TcpStream>, data: &[u8]) -> Poll<usize> {
    std::future::poll_fn(|cx| {
        Poll::Ready(Pin::new(&mut *io).poll_write(cx, data).map(|r| r.unwrap()))
    })
    .await
}

async fn flush(io: &mut Coalesce<TcpStream>) {
    std::future::poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_write_gives_way_once_while_answers_wait_and_never_otherwise() {
    let (server, mut peer) = pair().await;
    let backlog = Backlog::default();
    let mut io = Coalesce::new(server, backlog.clone());

    // Nothing waiting: the write goes straight out.
    assert_eq!(write_once(&mut io, b"a").await, Poll::Ready(1));
    flush(&mut io).await;

    // An answer waiting: the first write of the flush gives way, the
    // second goes out even though the answer is still waiting.
    let answer = backlog.answer();
    assert_eq!(write_once(&mut io, b"b").await, Poll::Pending);
    assert_eq!(write_once(&mut io, b"b").await, Poll::Ready(1));
    flush(&mut io).await;

    // A new flush gives way again while the answer waits; once taken, no
    // more waiting.
    assert_eq!(write_once(&mut io, b"c").await, Poll::Pending);
    drop(answer);
    assert!(backlog.is_empty());
    flush(&mut io).await;
    assert_eq!(write_once(&mut io, b"c").await, Poll::Ready(1));
    flush(&mut io).await;

    let mut got = [0u8; 3];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abc");
}

fn put(key: &str) -> CommandKind {
    CommandKind::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

/// Every answer leaves the backlog: taken by its proposer, or dropped with
/// a proposer that went away before taking it. A count left behind would
/// make every later write wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_empties_whether_proposers_take_answers_or_go_away() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(Config::new(dir.path())).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let node = node.clone();
        tasks.spawn(async move {
            node.propose(put(&format!("k{i}"))).await.unwrap();
        });
    }
    // Once the first has its answer, cancel the rest wherever they are:
    // queued, committing, or answered and not yet resumed.
    tasks.join_next().await.unwrap().unwrap();
    tasks.abort_all();
    let mut cancelled = 0;
    let mut done = 1;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(()) => done += 1,
            Err(e) if e.is_cancelled() => cancelled += 1,
            Err(e) => panic!("proposer failed: {e}"),
        }
    }
    eprintln!("{done} proposers took their answers, {cancelled} were cancelled");
    // Writes already queued still commit, and their answers go to closed
    // channels. One more write, answered after all of them (the queue is
    // first in, first out), shows when they are through.
    node.propose(put("last")).await.unwrap();
    assert_eq!(node.backlog().len(), 0, "answers left in the backlog");
    node.stop();
}
