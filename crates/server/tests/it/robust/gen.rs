//! proptest strategies for every request message the server takes: each
//! field structurally valid, its value hostile — empty, `\0` and `0xff`
//! keys, negative and extreme numbers, enum values outside their range,
//! nested transactions.

use proptest::prelude::*;
use roster_proto::etcdserverpb::{
    compare::TargetUnion, request_op, watch_request::RequestUnion, AlarmRequest, CompactionRequest,
    Compare, DeleteRangeRequest, DowngradeRequest, HashKvRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberAddRequest,
    MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest,
    MoveLeaderRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchRequest,
};
use roster_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use roster_proto::v3lockpb::{LockRequest, UnlockRequest};

/// Keys: a few shared ones (so requests meet each other's keys), the edge
/// bytes, and arbitrary short ones.
pub fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0]),
        Just(vec![0xff, 0xff]),
        (0u8..4).prop_map(|i| vec![b'k', b'0' + i]),
        proptest::collection::vec(any::<u8>(), 0..12),
    ]
}

/// A signed number: small, at the edges, or anything.
pub fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        -3i64..40,
        Just(i64::MIN),
        Just(i64::MAX),
        Just(i64::MAX - 1),
        any::<i64>()
    ]
}

/// A lease id: mostly small, so grants, puts and revokes meet.
pub fn lease() -> impl Strategy<Value = i64> {
    prop_oneof![3 => -1i64..6, 1 => int()]
}

/// An enum field: in range (`0..n`) or any `i32`.
pub fn enum_of(n: i32) -> impl Strategy<Value = i32> {
    prop_oneof![3 => 0..n, 1 => any::<i32>()]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        proptest::collection::vec(any::<u8>(), 0..64),
        (0usize..70_000).prop_map(|n| vec![b'v'; n]),
    ]
}

pub fn range() -> impl Strategy<Value = RangeRequest> {
    let keys = (key(), key());
    let nums = (int(), int(), int(), int(), int(), int());
    let flags = (enum_of(3), enum_of(5), any::<[bool; 3]>());
    (keys, nums, flags).prop_map(|((key, range_end), n, (order, target, b))| RangeRequest {
        key,
        range_end,
        limit: n.0,
        revision: n.1,
        sort_order: order,
        sort_target: target,
        serializable: b[0],
        keys_only: b[1],
        count_only: b[2],
        min_mod_revision: n.2,
        max_mod_revision: n.3,
        min_create_revision: n.4,
        max_create_revision: n.5,
    })
}

pub fn put() -> impl Strategy<Value = PutRequest> {
    (key(), value(), lease(), any::<[bool; 3]>()).prop_map(|(key, value, lease, b)| PutRequest {
        key,
        value,
        lease,
        prev_kv: b[0],
        ignore_value: b[1],
        ignore_lease: b[2],
    })
}

pub fn delete() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), key(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        int().prop_map(TargetUnion::Version),
        int().prop_map(TargetUnion::CreateRevision),
        int().prop_map(TargetUnion::ModRevision),
        value().prop_map(TargetUnion::Value),
        lease().prop_map(TargetUnion::Lease),
    ];
    (
        enum_of(4),
        enum_of(5),
        key(),
        proptest::option::of(target),
        key(),
    )
        .prop_map(|(result, target, key, target_union, range_end)| Compare {
            result,
            target,
            key,
            target_union,
            range_end,
        })
}

/// Transactions nested up to three deep, some with more operations than
/// the server allows.
pub fn txn() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        range().prop_map(request_op::Request::RequestRange),
        put().prop_map(request_op::Request::RequestPut),
        delete().prop_map(request_op::Request::RequestDeleteRange),
    ];
    let op = leaf.prop_recursive(3, 24, 4, |inner| {
        let op = proptest::option::weighted(0.95, inner).prop_map(|request| RequestOp { request });
        (
            proptest::collection::vec(compare(), 0..3),
            proptest::collection::vec(op.clone(), 0..4),
            proptest::collection::vec(op, 0..4),
        )
            .prop_map(|(compare, success, failure)| {
                request_op::Request::RequestTxn(TxnRequest {
                    compare,
                    success,
                    failure,
                })
            })
    });
    let op = proptest::option::weighted(0.95, op).prop_map(|request| RequestOp { request });
    let ops = prop_oneof![
        8 => proptest::collection::vec(op.clone(), 0..5),
        1 => proptest::collection::vec(op.clone(), 120..140),
    ];
    (
        proptest::collection::vec(compare(), 0..4),
        ops,
        proptest::collection::vec(op, 0..5),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

pub fn compaction() -> impl Strategy<Value = CompactionRequest> {
    (int(), any::<bool>()).prop_map(|(revision, physical)| CompactionRequest { revision, physical })
}

pub fn lease_grant() -> impl Strategy<Value = LeaseGrantRequest> {
    (int(), lease()).prop_map(|(ttl, id)| LeaseGrantRequest { ttl, id })
}

pub fn lease_revoke() -> impl Strategy<Value = LeaseRevokeRequest> {
    lease().prop_map(|id| LeaseRevokeRequest { id })
}

pub fn keep_alive() -> impl Strategy<Value = LeaseKeepAliveRequest> {
    lease().prop_map(|id| LeaseKeepAliveRequest { id })
}

pub fn time_to_live() -> impl Strategy<Value = LeaseTimeToLiveRequest> {
    (lease(), any::<bool>()).prop_map(|(id, keys)| LeaseTimeToLiveRequest { id, keys })
}

pub fn watch() -> impl Strategy<Value = WatchRequest> {
    let create = (
        (key(), key(), int(), any::<[bool; 3]>()),
        proptest::collection::vec(enum_of(2), 0..4),
        int(),
    )
        .prop_map(|((key, range_end, start_revision, b), filters, watch_id)| {
            RequestUnion::CreateRequest(WatchCreateRequest {
                key,
                range_end,
                start_revision,
                progress_notify: b[0],
                filters,
                prev_kv: b[1],
                watch_id,
                fragment: b[2],
            })
        });
    let union = prop_oneof![
        4 => create,
        1 => int().prop_map(|watch_id| RequestUnion::CancelRequest(WatchCancelRequest { watch_id })),
        1 => Just(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    ];
    proptest::option::weighted(0.95, union).prop_map(|request_union| WatchRequest { request_union })
}

pub fn lock() -> impl Strategy<Value = LockRequest> {
    (key(), lease()).prop_map(|(name, lease)| LockRequest { name, lease })
}

pub fn unlock() -> impl Strategy<Value = UnlockRequest> {
    key().prop_map(|key| UnlockRequest { key })
}

fn leader_key() -> impl Strategy<Value = Option<LeaderKey>> {
    let k = (key(), key(), int(), lease()).prop_map(|(name, key, rev, lease)| LeaderKey {
        name,
        key,
        rev,
        lease,
    });
    proptest::option::weighted(0.9, k)
}

pub fn campaign() -> impl Strategy<Value = CampaignRequest> {
    (key(), lease(), value()).prop_map(|(name, lease, value)| CampaignRequest {
        name,
        lease,
        value,
    })
}

pub fn proclaim() -> impl Strategy<Value = ProclaimRequest> {
    (leader_key(), value()).prop_map(|(leader, value)| ProclaimRequest { leader, value })
}

pub fn leader() -> impl Strategy<Value = LeaderRequest> {
    key().prop_map(|name| LeaderRequest { name })
}

pub fn resign() -> impl Strategy<Value = ResignRequest> {
    leader_key().prop_map(|leader| ResignRequest { leader })
}

pub fn alarm() -> impl Strategy<Value = AlarmRequest> {
    let member = prop_oneof![Just(0u64), any::<u64>()];
    (enum_of(3), member, enum_of(3)).prop_map(|(action, member_id, alarm)| AlarmRequest {
        action,
        member_id,
        alarm,
    })
}

pub fn hash_kv() -> impl Strategy<Value = HashKvRequest> {
    int().prop_map(|revision| HashKvRequest { revision })
}

pub fn move_leader() -> impl Strategy<Value = MoveLeaderRequest> {
    any::<u64>().prop_map(|target_id| MoveLeaderRequest { target_id })
}

pub fn downgrade() -> impl Strategy<Value = DowngradeRequest> {
    (enum_of(3), ".{0,12}").prop_map(|(action, version)| DowngradeRequest { action, version })
}

fn urls() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(".{0,20}", 0..3)
}

pub fn member_add() -> impl Strategy<Value = MemberAddRequest> {
    (urls(), any::<bool>()).prop_map(|(peer_ur_ls, is_learner)| MemberAddRequest {
        peer_ur_ls,
        is_learner,
    })
}

pub fn member_remove() -> impl Strategy<Value = MemberRemoveRequest> {
    any::<u64>().prop_map(|id| MemberRemoveRequest { id })
}

pub fn member_update() -> impl Strategy<Value = MemberUpdateRequest> {
    (any::<u64>(), urls()).prop_map(|(id, peer_ur_ls)| MemberUpdateRequest { id, peer_ur_ls })
}

pub fn member_list() -> impl Strategy<Value = MemberListRequest> {
    any::<bool>().prop_map(|linearizable| MemberListRequest { linearizable })
}

pub fn member_promote() -> impl Strategy<Value = MemberPromoteRequest> {
    any::<u64>().prop_map(|id| MemberPromoteRequest { id })
}
