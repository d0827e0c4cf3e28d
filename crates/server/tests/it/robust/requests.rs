//! Every RPC, given structurally valid but hostile messages (see
//! [`super::gen`]), service by service on a node of its own. Each call must
//! be answered — a reply that decodes, or a status with a message — over a
//! connection that stays up, and the node must still serve at the end.

use proptest::prelude::*;
use roster_proto::etcdserverpb as pb;
use roster_proto::v3electionpb as el;
use roster_proto::v3lockpb as lk;

use super::gen;
use super::session::Session;

#[derive(Debug, Clone)]
enum Kv {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
}

fn kv() -> impl Strategy<Value = Kv> {
    prop_oneof![
        3 => gen::range().prop_map(Kv::Range),
        3 => gen::put().prop_map(Kv::Put),
        2 => gen::delete().prop_map(Kv::Delete),
        4 => gen::txn().prop_map(Kv::Txn),
        1 => gen::compaction().prop_map(Kv::Compact),
    ]
}

#[test]
fn kv_requests_are_answered() {
    let s = Session::start();
    proptest!(ProptestConfig::with_cases(300), |(call in kv())| {
        match &call {
            Kv::Range(r) => s.call::<pb::RangeResponse>("/etcdserverpb.KV/Range", r, false),
            Kv::Put(r) => s.call::<pb::PutResponse>("/etcdserverpb.KV/Put", r, false),
            Kv::Delete(r) => {
                s.call::<pb::DeleteRangeResponse>("/etcdserverpb.KV/DeleteRange", r, false)
            }
            Kv::Txn(r) => s.call::<pb::TxnResponse>("/etcdserverpb.KV/Txn", r, false),
            Kv::Compact(r) => s.call::<pb::CompactionResponse>("/etcdserverpb.KV/Compact", r, false),
        };
    });
    s.still_serves();
}

#[derive(Debug, Clone)]
enum Lease {
    Grant(pb::LeaseGrantRequest),
    Revoke(pb::LeaseRevokeRequest),
    KeepAlive(pb::LeaseKeepAliveRequest),
    TimeToLive(pb::LeaseTimeToLiveRequest),
    Leases,
    Put(pb::PutRequest),
}

fn lease() -> impl Strategy<Value = Lease> {
    prop_oneof![
        gen::lease_grant().prop_map(Lease::Grant),
        gen::lease_revoke().prop_map(Lease::Revoke),
        gen::keep_alive().prop_map(Lease::KeepAlive),
        gen::time_to_live().prop_map(Lease::TimeToLive),
        Just(Lease::Leases),
        gen::put().prop_map(Lease::Put),
    ]
}

#[test]
fn lease_requests_are_answered() {
    let s = Session::start();
    proptest!(ProptestConfig::with_cases(200), |(call in lease())| {
        match &call {
            Lease::Grant(r) => {
                s.call::<pb::LeaseGrantResponse>("/etcdserverpb.Lease/LeaseGrant", r, false)
            }
            Lease::Revoke(r) => {
                s.call::<pb::LeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke", r, false)
            }
            Lease::KeepAlive(r) => s.call::<pb::LeaseKeepAliveResponse>(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                r,
                true,
            ),
            Lease::TimeToLive(r) => s.call::<pb::LeaseTimeToLiveResponse>(
                "/etcdserverpb.Lease/LeaseTimeToLive",
                r,
                false,
            ),
            Lease::Leases => s.call::<pb::LeaseLeasesResponse>(
                "/etcdserverpb.Lease/LeaseLeases",
                &pb::LeaseLeasesRequest {},
                false,
            ),
            Lease::Put(r) => s.call::<pb::PutResponse>("/etcdserverpb.KV/Put", r, false),
        };
    });
    s.still_serves();
}

#[test]
fn watch_requests_are_answered() {
    let s = Session::start();
    proptest!(ProptestConfig::with_cases(150), |(w in gen::watch(), put in gen::put())| {
        s.call::<pb::WatchResponse>("/etcdserverpb.Watch/Watch", &w, true);
        s.call::<pb::PutResponse>("/etcdserverpb.KV/Put", &put, false);
    });
    s.still_serves();
}

#[derive(Debug, Clone)]
enum Coord {
    Grant(pb::LeaseGrantRequest),
    Lock(lk::LockRequest),
    Unlock(lk::UnlockRequest),
    Campaign(el::CampaignRequest),
    Proclaim(el::ProclaimRequest),
    Leader(el::LeaderRequest),
    Observe(el::LeaderRequest),
    Resign(el::ResignRequest),
}

fn coord() -> impl Strategy<Value = Coord> {
    prop_oneof![
        gen::lease_grant().prop_map(Coord::Grant),
        gen::lock().prop_map(Coord::Lock),
        gen::unlock().prop_map(Coord::Unlock),
        gen::campaign().prop_map(Coord::Campaign),
        gen::proclaim().prop_map(Coord::Proclaim),
        gen::leader().prop_map(Coord::Leader),
        gen::leader().prop_map(Coord::Observe),
        gen::resign().prop_map(Coord::Resign),
    ]
}

#[test]
fn lock_and_election_requests_are_answered() {
    let s = Session::start();
    // Lock and Campaign wait while another holds the name: they are given
    // the patience of a stream, then cancelled.
    proptest!(ProptestConfig::with_cases(200), |(call in coord())| {
        match &call {
            Coord::Grant(r) => {
                s.call::<pb::LeaseGrantResponse>("/etcdserverpb.Lease/LeaseGrant", r, false)
            }
            Coord::Lock(r) => s.call::<lk::LockResponse>("/v3lockpb.Lock/Lock", r, true),
            Coord::Unlock(r) => s.call::<lk::UnlockResponse>("/v3lockpb.Lock/Unlock", r, false),
            Coord::Campaign(r) => {
                s.call::<el::CampaignResponse>("/v3electionpb.Election/Campaign", r, true)
            }
            Coord::Proclaim(r) => {
                s.call::<el::ProclaimResponse>("/v3electionpb.Election/Proclaim", r, false)
            }
            Coord::Leader(r) => {
                s.call::<el::LeaderResponse>("/v3electionpb.Election/Leader", r, false)
            }
            Coord::Observe(r) => {
                s.call::<el::LeaderResponse>("/v3electionpb.Election/Observe", r, true)
            }
            Coord::Resign(r) => {
                s.call::<el::ResignResponse>("/v3electionpb.Election/Resign", r, false)
            }
        };
    });
    s.still_serves();
}

#[derive(Debug, Clone)]
enum Admin {
    Alarm(pb::AlarmRequest),
    HashKv(pb::HashKvRequest),
    MoveLeader(pb::MoveLeaderRequest),
    Downgrade(pb::DowngradeRequest),
    MemberAdd(pb::MemberAddRequest),
    MemberRemove(pb::MemberRemoveRequest),
    MemberUpdate(pb::MemberUpdateRequest),
    MemberList(pb::MemberListRequest),
    MemberPromote(pb::MemberPromoteRequest),
    Put(pb::PutRequest),
    /// Status, Hash, Defragment and Snapshot, which take no fields.
    Bare(u8),
}

fn admin() -> impl Strategy<Value = Admin> {
    prop_oneof![
        2 => gen::alarm().prop_map(Admin::Alarm),
        1 => gen::hash_kv().prop_map(Admin::HashKv),
        1 => gen::move_leader().prop_map(Admin::MoveLeader),
        1 => gen::downgrade().prop_map(Admin::Downgrade),
        1 => gen::member_add().prop_map(Admin::MemberAdd),
        1 => gen::member_remove().prop_map(Admin::MemberRemove),
        1 => gen::member_update().prop_map(Admin::MemberUpdate),
        1 => gen::member_list().prop_map(Admin::MemberList),
        1 => gen::member_promote().prop_map(Admin::MemberPromote),
        2 => gen::put().prop_map(Admin::Put),
        2 => (0u8..4).prop_map(Admin::Bare),
    ]
}

#[test]
fn maintenance_and_cluster_requests_are_answered() {
    let s = Session::start();
    const M: &str = "/etcdserverpb.Maintenance/";
    const C: &str = "/etcdserverpb.Cluster/";
    proptest!(ProptestConfig::with_cases(150), |(call in admin())| {
        match &call {
            Admin::Alarm(r) => s.call::<pb::AlarmResponse>(&format!("{M}Alarm"), r, false),
            Admin::HashKv(r) => s.call::<pb::HashKvResponse>(&format!("{M}HashKV"), r, false),
            Admin::MoveLeader(r) => {
                s.call::<pb::MoveLeaderResponse>(&format!("{M}MoveLeader"), r, false)
            }
            Admin::Downgrade(r) => {
                s.call::<pb::DowngradeResponse>(&format!("{M}Downgrade"), r, false)
            }
            Admin::MemberAdd(r) => {
                s.call::<pb::MemberAddResponse>(&format!("{C}MemberAdd"), r, false)
            }
            Admin::MemberRemove(r) => {
                s.call::<pb::MemberRemoveResponse>(&format!("{C}MemberRemove"), r, false)
            }
            Admin::MemberUpdate(r) => {
                s.call::<pb::MemberUpdateResponse>(&format!("{C}MemberUpdate"), r, false)
            }
            Admin::MemberList(r) => {
                s.call::<pb::MemberListResponse>(&format!("{C}MemberList"), r, false)
            }
            Admin::MemberPromote(r) => {
                s.call::<pb::MemberPromoteResponse>(&format!("{C}MemberPromote"), r, false)
            }
            Admin::Put(r) => s.call::<pb::PutResponse>("/etcdserverpb.KV/Put", r, false),
            Admin::Bare(0) => {
                s.call::<pb::StatusResponse>(&format!("{M}Status"), &pb::StatusRequest {}, false)
            }
            Admin::Bare(1) => {
                s.call::<pb::HashResponse>(&format!("{M}Hash"), &pb::HashRequest {}, false)
            }
            Admin::Bare(2) => s.call::<pb::DefragmentResponse>(
                &format!("{M}Defragment"),
                &pb::DefragmentRequest {},
                false,
            ),
            Admin::Bare(_) => s.call::<pb::SnapshotResponse>(
                &format!("{M}Snapshot"),
                &pb::SnapshotRequest {},
                true,
            ),
        };
    });
    s.still_serves();
}
