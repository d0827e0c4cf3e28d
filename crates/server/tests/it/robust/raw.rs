//! Arbitrary bytes where a message belongs. Framed correctly, bytes that
//! are not the method's request message get etcd's (grpc-go's) answer to
//! an undecodable message: INTERNAL, with a message. Any bytes at all as
//! the body (a broken prefix, a compressed flag, a length past the end)
//! still get a status, never a reset stream or a dropped connection.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use prost::Message;
use roster_proto::etcdserverpb as pb;
use roster_proto::v3electionpb as el;
use roster_proto::v3lockpb as lk;

use super::session::Session;
use super::wire::{Answer, STREAM};

/// Whether bytes decode as a method's request message.
type Decodes = fn(&[u8]) -> bool;

fn decodes<M: Message + Default>(b: &[u8]) -> bool {
    M::decode(b).is_ok()
}

/// Every method served: path, its request decoder, whether it streams.
const METHODS: &[(&str, Decodes, bool)] = &[
    ("/etcdserverpb.KV/Range", decodes::<pb::RangeRequest>, false),
    ("/etcdserverpb.KV/Put", decodes::<pb::PutRequest>, false),
    (
        "/etcdserverpb.KV/DeleteRange",
        decodes::<pb::DeleteRangeRequest>,
        false,
    ),
    ("/etcdserverpb.KV/Txn", decodes::<pb::TxnRequest>, false),
    (
        "/etcdserverpb.KV/Compact",
        decodes::<pb::CompactionRequest>,
        false,
    ),
    (
        "/etcdserverpb.Watch/Watch",
        decodes::<pb::WatchRequest>,
        true,
    ),
    (
        "/etcdserverpb.Lease/LeaseGrant",
        decodes::<pb::LeaseGrantRequest>,
        false,
    ),
    (
        "/etcdserverpb.Lease/LeaseRevoke",
        decodes::<pb::LeaseRevokeRequest>,
        false,
    ),
    (
        "/etcdserverpb.Lease/LeaseKeepAlive",
        decodes::<pb::LeaseKeepAliveRequest>,
        true,
    ),
    (
        "/etcdserverpb.Lease/LeaseTimeToLive",
        decodes::<pb::LeaseTimeToLiveRequest>,
        false,
    ),
    (
        "/etcdserverpb.Lease/LeaseLeases",
        decodes::<pb::LeaseLeasesRequest>,
        false,
    ),
    ("/v3lockpb.Lock/Lock", decodes::<lk::LockRequest>, true),
    ("/v3lockpb.Lock/Unlock", decodes::<lk::UnlockRequest>, false),
    (
        "/v3electionpb.Election/Campaign",
        decodes::<el::CampaignRequest>,
        true,
    ),
    (
        "/v3electionpb.Election/Proclaim",
        decodes::<el::ProclaimRequest>,
        false,
    ),
    (
        "/v3electionpb.Election/Leader",
        decodes::<el::LeaderRequest>,
        false,
    ),
    (
        "/v3electionpb.Election/Observe",
        decodes::<el::LeaderRequest>,
        true,
    ),
    (
        "/v3electionpb.Election/Resign",
        decodes::<el::ResignRequest>,
        false,
    ),
    (
        "/etcdserverpb.Maintenance/Alarm",
        decodes::<pb::AlarmRequest>,
        false,
    ),
    (
        "/etcdserverpb.Maintenance/Status",
        decodes::<pb::StatusRequest>,
        false,
    ),
    (
        "/etcdserverpb.Maintenance/Defragment",
        decodes::<pb::DefragmentRequest>,
        false,
    ),
    (
        "/etcdserverpb.Maintenance/Hash",
        decodes::<pb::HashRequest>,
        false,
    ),
    (
        "/etcdserverpb.Maintenance/HashKV",
        decodes::<pb::HashKvRequest>,
        false,
    ),
    (
        "/etcdserverpb.Maintenance/Snapshot",
        decodes::<pb::SnapshotRequest>,
        true,
    ),
    (
        "/etcdserverpb.Maintenance/MoveLeader",
        decodes::<pb::MoveLeaderRequest>,
        false,
    ),
    (
        "/etcdserverpb.Maintenance/Downgrade",
        decodes::<pb::DowngradeRequest>,
        false,
    ),
    (
        "/etcdserverpb.Cluster/MemberAdd",
        decodes::<pb::MemberAddRequest>,
        false,
    ),
    (
        "/etcdserverpb.Cluster/MemberRemove",
        decodes::<pb::MemberRemoveRequest>,
        false,
    ),
    (
        "/etcdserverpb.Cluster/MemberUpdate",
        decodes::<pb::MemberUpdateRequest>,
        false,
    ),
    (
        "/etcdserverpb.Cluster/MemberList",
        decodes::<pb::MemberListRequest>,
        false,
    ),
    (
        "/etcdserverpb.Cluster/MemberPromote",
        decodes::<pb::MemberPromoteRequest>,
        false,
    ),
];

fn framed(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// Bytes that are rarely a message: random, or a valid-looking field tag
/// followed by a length running past the end.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..64),
        (1u8..16, any::<u8>()).prop_map(|(field, len)| vec![field << 3 | 2, len | 0x80, 0x7f]),
        Just(vec![0xff; 11]),
    ]
}

#[test]
fn undecodable_messages_are_internal_errors() {
    let s = Session::start();
    proptest!(ProptestConfig::with_cases(300), |(m in 0..METHODS.len(), msg in junk())| {
        let (path, decodes, streaming) = METHODS[m];
        let decodes = decodes(&msg);
        // The refusal of an undecodable message comes at once: a stream
        // is not let off with "still waiting" then.
        let stream = match (streaming, decodes) {
            (false, _) => None,
            (true, true) => STREAM,
            (true, false) => Some(Duration::from_secs(15)),
        };
        let answer = s.raw(path, framed(&msg), stream);
        if !decodes {
            match &answer {
                Answer::Status { code, .. } => prop_assert_eq!(*code, 13, "{}", path),
                other => prop_assert!(false, "{}: {:?} to an undecodable message", path, other),
            }
        }
    });
    s.still_serves();
}

/// A body: any bytes, or a prefix with any flag and length then any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let prefixed = (
        any::<u8>(),
        prop_oneof![0u32..100, any::<u32>()],
        proptest::collection::vec(any::<u8>(), 0..100),
    )
        .prop_map(|(flag, len, rest)| {
            let mut b = vec![flag];
            b.extend_from_slice(&len.to_be_bytes());
            b.extend(rest);
            b
        });
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..12), prefixed]
}

#[test]
fn arbitrary_bodies_get_a_status() {
    let s = Session::start();
    proptest!(ProptestConfig::with_cases(300), |(m in 0..METHODS.len(), b in body())| {
        let (path, _, streaming) = METHODS[m];
        s.raw(path, Bytes::from(b), streaming.then_some(STREAM).flatten());
    });
    s.still_serves();
}

/// Found by the property above: the bidirectional streams (Watch,
/// LeaseKeepAlive) ended OK, silently, on a message that does not decode;
/// etcd ends them with INTERNAL.
#[test]
fn streams_refuse_an_undecodable_message_as_internal() {
    let s = Session::start();
    for path in [
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseKeepAlive",
    ] {
        let answer = s.raw(path, framed(&[0]), Some(Duration::from_secs(15)));
        match answer {
            Answer::Status { code, .. } => assert_eq!(code, 13, "{path}"),
            other => panic!("{path}: {other:?}"),
        }
    }
    s.still_serves();
}
