//! Request metadata (HTTP/2 headers) of the sizes etcd takes.
//!
//! etcd's grpc-go server accepts a header list of up to 16 MiB (its
//! default `MaxHeaderListSize`); measured on etcd 3.4: one 8 MiB header
//! is answered, one of 17 MiB closes the connection. hyper's default of
//! 16 KiB made Roster tear the whole connection down (GOAWAY
//! ENHANCE_YOUR_CALM) for 64 KiB of metadata, taking every other call on
//! it along.

use prost::Message;
use roster_proto::etcdserverpb::{RangeRequest, RangeResponse};
use roster_testkit::Server;

use super::wire::{framed, Conn};

/// A Range with `metadata`, which must be answered with OK.
async fn range_with(conn: &mut Conn, metadata: &[(String, String)]) {
    let req = RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    };
    let mut call = conn.call("/etcdserverpb.KV/Range", metadata).await;
    call.send_raw(framed(&req.encode_to_vec())).await;
    call.half_close();
    let resp: RangeResponse = call.message().await;
    assert!(resp.header.is_some());
    let end = call.status().await;
    assert_eq!(end.code, 0, "{end:?}");
}

#[tokio::test]
async fn large_request_metadata_is_served_and_the_connection_lives_on() {
    let server = Server::start();
    let cases: [(&str, Vec<(String, String)>); 3] = [
        (
            "one 64 KiB header",
            vec![("x-big".into(), "a".repeat(64 << 10))],
        ),
        (
            "500 headers",
            (0..500)
                .map(|i| (format!("x-h{i}"), "v".repeat(100)))
                .collect(),
        ),
        (
            "one 1 MiB header",
            vec![("x-big".into(), "a".repeat(1 << 20))],
        ),
    ];
    for (name, metadata) in cases {
        let mut conn = Conn::open(&server).await;
        range_with(&mut conn, &metadata).await;
        assert!(!conn.is_closed(), "{name}: the connection was closed");
        range_with(&mut conn, &[]).await;
    }
}
