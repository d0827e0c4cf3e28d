//! Txns nested in txns, as deep as etcd takes them.
//!
//! etcd checks a txn's op budget level by level: a txn spends the largest
//! of its compare, success and failure counts, and what is nested in it
//! gets what is left, so each nested level spends one op of
//! `--max-txn-ops` (128 by default: 127 txns below the request's own).
//! Past that the answer is "too many operations in txn request". The
//! requests are made by hand: prost, as the server's decoder once did,
//! stops at 100 nested messages, about 49 levels, and so does its decoding
//! of the deep answers, so the tests read the key the innermost txn put.

use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use roster_proto::etcdserverpb::{
    request_op, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
};
use roster_testkit::{Server, Setting};

use super::wire::{framed, Conn, Status};

/// A txn with `depth` txns nested one in another below it, the innermost
/// putting `key`; encoded by hand from the inside out, without recursion.
pub fn nested(depth: usize, key: &str) -> Vec<u8> {
    let put = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: format!("{depth}").into_bytes(),
            ..Default::default()
        })),
    };
    let mut txn = TxnRequest {
        compare: vec![],
        success: vec![put],
        failure: vec![],
    }
    .encode_to_vec();
    for _ in 0..depth {
        // RequestOp.request_txn = 4, inside TxnRequest.success = 2.
        let mut op = Vec::with_capacity(txn.len() + 6);
        encode_key(4, WireType::LengthDelimited, &mut op);
        encode_varint(txn.len() as u64, &mut op);
        op.extend_from_slice(&txn);
        txn.clear();
        encode_key(2, WireType::LengthDelimited, &mut txn);
        encode_varint(op.len() as u64, &mut txn);
        txn.extend_from_slice(&op);
    }
    txn
}

/// Sends a Txn of `bytes`; returns the status it ends with.
pub async fn txn(conn: &mut Conn, bytes: &[u8]) -> Status {
    let mut call = conn.call("/etcdserverpb.KV/Txn", &[]).await;
    call.send_raw(framed(bytes)).await;
    call.half_close();
    call.status().await
}

/// The value of `key`, if it exists.
pub async fn get(conn: &mut Conn, key: &str) -> Option<String> {
    let req = RangeRequest {
        key: key.into(),
        ..Default::default()
    };
    let mut call = conn.call("/etcdserverpb.KV/Range", &[]).await;
    call.send_raw(framed(&req.encode_to_vec())).await;
    call.half_close();
    let resp: RangeResponse = call.message().await;
    let kv = resp.kvs.first()?;
    Some(String::from_utf8(kv.value.clone()).unwrap())
}

pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

#[tokio::test]
async fn txns_nest_as_deep_as_the_op_budget_allows() {
    let mut server = Server::start();
    let mut conn = Conn::open(&server).await;
    for depth in [48, 49, 100, 127] {
        let end = txn(&mut conn, &nested(depth, &format!("d{depth}"))).await;
        assert_eq!(end.code, 0, "{depth}: {end:?}");
    }
    let end = txn(&mut conn, &nested(128, "d128")).await;
    assert_eq!((end.code, end.message.as_str()), (3, TOO_MANY_OPS));
    for depth in [48, 49, 100, 127] {
        let value = get(&mut conn, &format!("d{depth}")).await;
        assert_eq!(value, Some(depth.to_string()));
    }
    assert_eq!(get(&mut conn, "d128").await, None);

    // What was written comes back from the log after a restart.
    server.restart();
    let mut conn = Conn::open(&server).await;
    assert_eq!(get(&mut conn, "d127").await, Some("127".into()));
}

#[tokio::test]
async fn a_larger_op_budget_allows_deeper_nesting() {
    let server = Server::start_with(&[Setting::MaxTxnOps(501)]);
    let mut conn = Conn::open(&server).await;
    let end = txn(&mut conn, &nested(500, "deep")).await;
    assert_eq!(end.code, 0, "{end:?}");
    assert_eq!(get(&mut conn, "deep").await, Some("500".into()));
    let end = txn(&mut conn, &nested(501, "deeper")).await;
    assert_eq!((end.code, end.message.as_str()), (3, TOO_MANY_OPS));
    assert_eq!(get(&mut conn, "deeper").await, None);
}
