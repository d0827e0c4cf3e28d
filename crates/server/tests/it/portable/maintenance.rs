//! Maintenance as etcd answers it: HashKV, alarms and the space quota.
//!
//! Hash values are not compared with etcd's (its records are encoded
//! differently); what is checked is behaviour: equal for the same
//! history, different after a different write, and the errors, alarm
//! lists and refusals word for word.

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions, Compare, CompareOp,
    DeleteOptions, Txn, TxnOp,
};
use roster_testkit::etcd_api::{connect, grpc};
use roster_testkit::{Server, Setting};

const OUT_OF_RANGE: &str = "OutOfRange";
const RESOURCE_EXHAUSTED: &str = "ResourceExhausted";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// The same history on any server: puts, overwrites, a delete, a
/// compaction (physical or not) and puts after it.
async fn history(c: &mut Client, physical: bool) {
    for (k, v) in [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")] {
        c.put(k, v, None).await.unwrap();
    }
    c.delete("b", None).await.unwrap(); // rev 6
    c.put("a", "3", None).await.unwrap(); // rev 7
    let opts = match physical {
        true => CompactionOptions::new().with_physical(),
        false => CompactionOptions::new(),
    };
    c.compact(6, Some(opts)).await.unwrap();
    c.put("c", "2", None).await.unwrap(); // rev 8
}

async fn member_id(c: &mut Client) -> u64 {
    c.status().await.unwrap().header().unwrap().member_id()
}

/// (member id, alarm type) of every raised alarm.
async fn alarms(c: &mut Client) -> Vec<(u64, AlarmType)> {
    let r = c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .unwrap();
    r.alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

fn for_member(member: u64) -> Option<AlarmOptions> {
    let mut o = AlarmOptions::new();
    o.with_member(member);
    Some(o)
}

#[tokio::test]
async fn hash_kv_agrees_for_the_same_history_and_not_after_a_different_write() {
    let (one, two) = (Server::start(), Server::start());
    let (mut a, mut b) = (connect(one.endpoint()).await, connect(two.endpoint()).await);
    // One compacts physically (its history is gone when it answers),
    // the other not (its sweep may still be under way).
    history(&mut a, true).await;
    history(&mut b, false).await;

    let (ha, hb) = (a.hash_kv(0).await.unwrap(), b.hash_kv(0).await.unwrap());
    assert_eq!(ha.hash(), hb.hash());
    assert_eq!(ha.compact_version(), 6);
    assert_eq!(hb.compact_version(), 6);
    assert_eq!(ha.header().unwrap().revision(), 8);
    // At an older revision: the same on both, not the current hash.
    let (oa, ob) = (a.hash_kv(7).await.unwrap(), b.hash_kv(7).await.unwrap());
    assert_eq!(oa.hash(), ob.hash());
    assert_ne!(oa.hash(), ha.hash());
    assert_eq!(oa.header().unwrap().revision(), 8, "the current revision");
    // Asking again changes nothing.
    assert_eq!(a.hash_kv(8).await.unwrap().hash(), ha.hash());

    a.put("d", "1", None).await.unwrap();
    b.put("d", "2", None).await.unwrap();
    let (ha, hb) = (a.hash_kv(0).await.unwrap(), b.hash_kv(0).await.unwrap());
    assert_ne!(ha.hash(), hb.hash());
    // The whole-database hash answers too.
    a.hash().await.unwrap();
}

#[tokio::test]
async fn hash_kv_refuses_compacted_and_future_revisions() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    history(&mut c, true).await;
    for rev in [2, 6] {
        let got = grpc(c.hash_kv(rev).await);
        assert_eq!(got, (OUT_OF_RANGE.into(), COMPACTED.into()), "rev {rev}");
    }
    let got = grpc(c.hash_kv(9).await);
    assert_eq!(got, (OUT_OF_RANGE.into(), FUTURE_REV.into()));
    c.hash_kv(7).await.unwrap();
}

#[tokio::test]
async fn alarms_are_activated_listed_and_deactivated() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let me = member_id(&mut c).await;
    assert_eq!(alarms(&mut c).await, []);
    assert!(c.status().await.unwrap().errors().is_empty());

    for _ in 0..2 {
        let r = c
            .alarm(AlarmAction::Activate, AlarmType::Nospace, for_member(me))
            .await
            .unwrap();
        let got: Vec<_> = r
            .alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm()))
            .collect();
        assert_eq!(got, [(me, AlarmType::Nospace)], "raised, or already up");
    }
    assert_eq!(alarms(&mut c).await, [(me, AlarmType::Nospace)]);
    let status = c.status().await.unwrap();
    assert_eq!(status.errors(), [format!("memberID:{me} alarm:NOSPACE ")]);

    // NOSPACE caps what takes space, whoever raised it.
    let got = grpc(c.put("k", "v", None).await);
    assert_eq!(got, (RESOURCE_EXHAUSTED.into(), NO_SPACE.into()));
    c.get("k", None).await.unwrap();

    let r = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, for_member(me))
        .await
        .unwrap();
    assert_eq!(r.alarms().len(), 1, "the alarm cleared");
    let r = c
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, for_member(me))
        .await
        .unwrap();
    assert!(r.alarms().is_empty(), "nothing left to clear");
    assert_eq!(alarms(&mut c).await, []);
    assert!(c.status().await.unwrap().errors().is_empty());
    c.put("k", "v", None).await.unwrap();
}

/// Fills a server with a 1 MiB quota: the write that would pass it is
/// refused and raises NOSPACE; from then on what takes space is refused
/// and the rest works, until the space is freed and the alarm disarmed.
#[tokio::test]
async fn a_full_quota_raises_nospace_until_disarmed() {
    let server = Server::start_with(&[Setting::QuotaBackendBytes(1 << 20)]);
    let mut c = connect(server.endpoint()).await;
    let me = member_id(&mut c).await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let value = "x".repeat(50_000);
    let mut refused = None;
    for i in 0..200 {
        match c.put(format!("big/{i:03}"), value.as_str(), None).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(grpc::<()>(Err(e)));
                break;
            }
        }
    }
    assert_eq!(
        refused.expect("the quota never refused a put"),
        (RESOURCE_EXHAUSTED.into(), NO_SPACE.into())
    );
    assert_eq!(alarms(&mut c).await, [(me, AlarmType::Nospace)]);
    let status = c.status().await.unwrap();
    assert_eq!(status.errors(), [format!("memberID:{me} alarm:NOSPACE ")]);

    // Refused: anything that takes space, however small.
    let no_space = (RESOURCE_EXHAUSTED.to_string(), NO_SPACE.to_string());
    assert_eq!(grpc(c.put("small", "v", None).await), no_space);
    assert_eq!(grpc(c.lease_grant(60, None).await), no_space);
    let txn = Txn::new()
        .when([Compare::version("small", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("small", "v", None)]);
    assert_eq!(grpc(c.txn(txn).await), no_space);

    // Served: reads, read-only txns, deletes, compaction, revoke.
    let got = c.get("big/000", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1);
    let txn = Txn::new().and_then([TxnOp::get("big/000", None)]);
    assert!(c.txn(txn).await.unwrap().succeeded());
    let opts = DeleteOptions::new().with_prefix();
    let deleted = c.delete("big/", Some(opts)).await.unwrap();
    assert!(deleted.deleted() > 1);
    let rev = deleted.header().unwrap().revision();
    let opts = CompactionOptions::new().with_physical();
    c.compact(rev, Some(opts)).await.unwrap();
    c.defragment().await.unwrap();
    c.lease_revoke(lease).await.unwrap();
    assert_eq!(grpc(c.put("small", "v", None).await), no_space);

    // Disarmed, with the space freed, writes work again.
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, for_member(me))
        .await
        .unwrap();
    assert_eq!(alarms(&mut c).await, []);
    c.put("small", "v", None).await.unwrap();
    c.lease_grant(60, None).await.unwrap();
}

/// After a big delete and a compaction, defragment gives the space back:
/// the file shrinks, and everything that stayed is still there.
#[tokio::test]
async fn defragment_gives_space_back_after_a_big_delete() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let value = "v".repeat(4096);
    for t in 0..40 {
        let ops: Vec<TxnOp> = (0..50)
            .map(|i| TxnOp::put(format!("/big/{t:02}/{i:02}"), value.as_str(), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    c.put("/keep", "me", None).await.unwrap();
    let full = c.status().await.unwrap().db_size();
    let deleted = c
        .delete("/big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 2000);
    let rev = deleted.header().unwrap().revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    c.defragment().await.unwrap();
    let after = c.status().await.unwrap().db_size();
    eprintln!("db size: {full} bytes full, {after} after delete, compaction and defragment");
    assert!(
        after * 2 < full,
        "the database was {full} bytes with 8 MB of values, {after} after defragment"
    );
    let kept = c.get("/keep", None).await.unwrap();
    assert_eq!(kept.kvs()[0].value(), b"me");
    // And it goes on taking writes.
    c.put("/after", "defrag", None).await.unwrap();
}
