//! The streaming RPCs at the wire: what a client may do on its side of a
//! stream that generated clients in Rust never do, and what etcd answers.
//!
//! - A client may half-close a Watch stream (END_STREAM) once it has sent
//!   its create requests: etcd's watchers live on until the call is
//!   cancelled, so events still come.
//! - LeaseKeepAlive half-closed: etcd answers the requests already sent,
//!   then ends the stream with OK.
//! - A message that does not decode, in the middle of either stream, ends
//!   it with `INTERNAL` "grpc: failed to unmarshal the received message
//!   ..." (grpc-go's words; what follows is the protobuf library's reason,
//!   which Go and Rust word differently).

use roster_proto::etcdserverpb::{
    watch_request, LeaseKeepAliveRequest, LeaseKeepAliveResponse, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use roster_testkit::etcd_api::connect;
use roster_testkit::Server;

use super::wire::{framed, Conn, Status, INTERNAL};

const WATCH: &str = "/etcdserverpb.Watch/Watch";
const KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
/// What etcd's answer to an undecodable stream message starts with.
const UNMARSHAL: &str = "grpc: failed to unmarshal the received message ";

fn create(key: &str) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: key.into(),
                ..Default::default()
            },
        )),
    }
}

/// Not a protobuf message: a varint that never ends.
fn garbage() -> bytes::Bytes {
    framed(b"\xff\xff\xff")
}

fn assert_unmarshal_error(s: &Status) {
    assert_eq!(s.code, INTERNAL, "{s:?}");
    assert!(s.message.starts_with(UNMARSHAL), "{s:?}");
}

#[tokio::test]
async fn a_half_closed_watch_stream_still_delivers_events() {
    let server = Server::start();
    let mut client = connect(server.endpoint()).await;
    let mut conn = Conn::open(&server).await;
    let mut watch = conn.call(WATCH, &[]).await;
    watch.send(&create("w")).await;
    watch.half_close();
    let created: WatchResponse = watch.message().await;
    assert!(created.created, "{created:?}");

    client.put("w", "after", None).await.expect("put");
    let r: WatchResponse = watch.message().await;
    assert_eq!(r.watch_id, created.watch_id);
    let kvs: Vec<_> = r.events.iter().map(|e| e.kv.clone().unwrap()).collect();
    assert_eq!(kvs.len(), 1, "{r:?}");
    assert_eq!(
        (&kvs[0].key[..], &kvs[0].value[..]),
        (&b"w"[..], &b"after"[..])
    );
}

#[tokio::test]
async fn a_watch_message_that_does_not_decode_ends_the_stream_with_internal() {
    let server = Server::start();
    let mut conn = Conn::open(&server).await;
    let mut watch = conn.call(WATCH, &[]).await;
    watch.send(&create("w")).await;
    let created: WatchResponse = watch.message().await;
    assert!(created.created, "{created:?}");
    watch.send_raw(garbage()).await;
    assert_unmarshal_error(&watch.status().await);

    // The server and the connection serve on.
    let mut again = conn.call(WATCH, &[]).await;
    again.send(&create("w")).await;
    assert!(again.message::<WatchResponse>().await.created);
}

#[tokio::test]
async fn a_keepalive_message_that_does_not_decode_ends_the_stream_with_internal() {
    let server = Server::start();
    let mut client = connect(server.endpoint()).await;
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let mut conn = Conn::open(&server).await;
    let mut ka = conn.call(KEEP_ALIVE, &[]).await;
    ka.send(&LeaseKeepAliveRequest { id: lease }).await;
    let r: LeaseKeepAliveResponse = ka.message().await;
    assert_eq!((r.id, r.ttl), (lease, 60));
    ka.send_raw(garbage()).await;
    assert_unmarshal_error(&ka.status().await);
}

#[tokio::test]
async fn a_half_closed_keepalive_stream_answers_what_was_sent_then_ends_ok() {
    let server = Server::start();
    let mut client = connect(server.endpoint()).await;
    let lease = client.lease_grant(60, None).await.expect("grant").id();
    let mut conn = Conn::open(&server).await;
    let mut ka = conn.call(KEEP_ALIVE, &[]).await;
    ka.send(&LeaseKeepAliveRequest { id: lease }).await;
    ka.send(&LeaseKeepAliveRequest { id: lease + 1 }).await;
    ka.half_close();
    let first: LeaseKeepAliveResponse = ka.message().await;
    let second: LeaseKeepAliveResponse = ka.message().await;
    assert_eq!((first.id, first.ttl), (lease, 60));
    // An unknown lease is answered with TTL 0.
    assert_eq!((second.id, second.ttl), (lease + 1, 0));
    let end = ka.status().await;
    assert_eq!(end.code, 0, "{end:?}");
}
