//! Request enum fields holding values outside their enums, as etcd 3.4
//! reads them. A protobuf enum field is an int32 on the wire, so a client
//! can send any value; typed clients cannot, so these calls are made by
//! hand ([`super::wire`]).
//!
//! etcd 3.4 refuses none of these. A compare target it does not know
//! compares as equal, a compare result it does not know holds; a sort order
//! it does not know sorts nothing, whatever the target. (A sort target it
//! does not know, with an order it knows, kills etcd 3.4; Roster refuses
//! it with etcd 3.5's "invalid sort option", tested in `validate`.)

use prost::Message;
use roster_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, Compare, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse,
};
use roster_testkit::Server;

use super::wire::{framed, Conn};

const EQUAL: i32 = CompareResult::Equal as i32;
const NOT_EQUAL: i32 = CompareResult::NotEqual as i32;
const GREATER: i32 = CompareResult::Greater as i32;
const LESS: i32 = CompareResult::Less as i32;
const VERSION: i32 = CompareTarget::Version as i32;
const VALUE: i32 = CompareTarget::Value as i32;

/// Calls `method` of KV with `req`; the answer must be OK.
async fn kv<Q: Message, R: Message + Default>(conn: &mut Conn, method: &str, req: &Q) -> R {
    let mut call = conn.call(&format!("/etcdserverpb.KV/{method}"), &[]).await;
    call.send_raw(framed(&req.encode_to_vec())).await;
    call.half_close();
    let resp = call.message().await;
    let end = call.status().await;
    assert_eq!(end.code, 0, "{method}: {end:?}");
    resp
}

async fn put(conn: &mut Conn, key: &str) -> i64 {
    let req = PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let resp: roster_proto::etcdserverpb::PutResponse = kv(conn, "Put", &req).await;
    resp.header.unwrap().revision
}

#[tokio::test]
async fn compares_outside_their_enums_are_evaluated_as_etcd_does() {
    let server = Server::start();
    let mut conn = Conn::open(&server).await;
    put(&mut conn, "k").await;
    let rev = put(&mut conn, "k2").await;

    // (key, target, result, operand version) → succeeded.
    let cases = [
        ("k", 99, EQUAL, 7, true),
        ("k", 99, NOT_EQUAL, 7, false),
        ("k", 99, GREATER, 7, false),
        ("k", 99, LESS, 7, false),
        ("k", -1, EQUAL, 7, true),
        ("missing", 99, EQUAL, 7, true),
        ("missing", 99, NOT_EQUAL, 7, false),
        ("k", VERSION, 99, 7, true),
        ("k", VERSION, -3, 1, true),
        ("k", 99, 99, 7, true),
        ("missing", VERSION, 99, 7, true),
        // A VALUE compare on a missing key fails before its result is read.
        ("missing", VALUE, 99, 7, false),
    ];
    for (key, target, result, version, want) in cases {
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key.into(),
                target,
                result,
                target_union: Some(TargetUnion::Version(version)),
                ..Default::default()
            }],
            success: vec![],
            failure: vec![],
        };
        let resp: TxnResponse = kv(&mut conn, "Txn", &txn).await;
        assert_eq!(
            resp.succeeded, want,
            "{key} target {target} result {result}"
        );
        assert_eq!(resp.header.unwrap().revision, rev, "nothing written");
    }
}

#[tokio::test]
async fn a_sort_order_outside_its_enum_sorts_nothing() {
    let server = Server::start();
    let mut conn = Conn::open(&server).await;
    for k in ["c", "a", "b"] {
        put(&mut conn, k).await;
    }
    // Keys in key order, cut to the limit, whatever the target; in a txn
    // as on its own.
    for (order, target) in [(99, 0), (-1, 3), (7, 99)] {
        let range = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            limit: 2,
            sort_order: order,
            sort_target: target,
            ..Default::default()
        };
        let resp: RangeResponse = kv(&mut conn, "Range", &range).await;
        let keys: Vec<_> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()], "order {order}");
        assert!(resp.more);
        assert_eq!(resp.count, 3);

        let txn = TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(range)),
            }],
            failure: vec![],
        };
        let resp: TxnResponse = kv(&mut conn, "Txn", &txn).await;
        let Some(request_op_response) = resp.responses.first() else {
            panic!("no response: {resp:?}");
        };
        let Some(roster_proto::etcdserverpb::response_op::Response::ResponseRange(r)) =
            &request_op_response.response
        else {
            panic!("not a range: {resp:?}");
        };
        let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()], "txn order {order}");
    }
}
