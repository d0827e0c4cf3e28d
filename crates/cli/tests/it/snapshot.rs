//! Snapshots end to end: `etcdctl snapshot save` from a running member,
//! `roster snapshot restore` into a new data directory, `roster serve` on
//! it; and a member killed with `kill -9` in the middle of a save.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use roster_testkit::{etcdctl_binary, Etcd};

use crate::roster::Roster;

fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("run etcdctl")
}

fn restore(file: &Path, data_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("run roster snapshot restore")
}

/// Every key with its value, versions and lease, at `rev` (0: now).
async fn everything(c: &mut Client, rev: i64) -> Vec<(String, String, i64, i64, i64)> {
    let opts = GetOptions::new().with_all_keys().with_revision(rev);
    let r = c.get("", Some(opts)).await.expect("range");
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.lease(),
            )
        })
        .collect()
}

#[tokio::test]
async fn etcdctl_save_then_restore_serves_the_same_registry() {
    let source = Roster::start();
    let mut c = Client::connect([&source.endpoint], None).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    for i in 0..40 {
        let key = format!("/roster/services/svc-{}/i{i}", i % 4);
        c.put(key.as_str(), format!("v{i}"), None).await.unwrap();
    }
    for i in 0..10 {
        let key = format!("/roster/services/svc-0/i{}", i * 4);
        let opts = PutOptions::new().with_lease(lease);
        c.put(key.as_str(), format!("again-{i}"), Some(opts))
            .await
            .unwrap();
    }
    let kept = c.get("x", None).await.unwrap().header().unwrap().revision();
    c.compact(kept, None).await.unwrap();
    c.delete("/roster/services/svc-3/i3", None).await.unwrap();
    let txn = Txn::new()
        .when([Compare::version(
            "/roster/services/svc-1/i1",
            CompareOp::Greater,
            0,
        )])
        .and_then([TxnOp::put("/flag", "on", None)]);
    c.txn(txn).await.unwrap();
    let now = everything(&mut c, 0).await;
    let then = everything(&mut c, kept + 1).await;
    let revision = c.get("x", None).await.unwrap().header().unwrap().revision();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    let saved = etcdctl(
        &source.endpoint,
        &["snapshot", "save", file.to_str().unwrap()],
    );
    assert!(saved.status.success(), "etcdctl snapshot save: {saved:?}");

    // etcdctl reads the file with bbolt and checks it (`tx.Check()`).
    let status = etcdctl(
        &source.endpoint,
        &["-w", "json", "snapshot", "status", file.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.status.success(),
        "etcdctl snapshot status: {status:?}"
    );
    assert_eq!(json_number(&text, "revision"), revision, "{text}");
    assert!(json_number(&text, "totalKey") > 0, "{text}");

    // etcd's own restore takes it, and a real etcd serves it.
    let etcd = Etcd::start_prepared(Vec::new(), |data_dir, peer| {
        let cluster = format!("default={peer}");
        let restored = etcdctl(
            "127.0.0.1:1",
            &[
                "snapshot",
                "restore",
                file.to_str().unwrap(),
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--name",
                "default",
                "--initial-cluster",
                &cluster,
                "--initial-advertise-peer-urls",
                peer,
            ],
        );
        assert!(
            restored.status.success(),
            "etcdctl snapshot restore: {restored:?}"
        );
    });
    let mut e = Client::connect([etcd.endpoint()], None).await.unwrap();
    assert_eq!(
        everything(&mut e, 0).await,
        now,
        "etcd serves the same keys"
    );
    assert_eq!(everything(&mut e, kept + 1).await, then, "and history");
    let header = e.get("x", None).await.unwrap().header().unwrap().clone();
    assert_eq!(header.revision(), revision);
    let ttl = e
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.keys().len(), 10, "etcd has the lease with its keys");
    drop(etcd);

    let data_dir = dir.path().join("restored");
    let restored = restore(&file, &data_dir);
    assert!(restored.status.success(), "restore: {restored:?}");
    let again = restore(&file, &data_dir);
    assert!(!again.status.success(), "restored over a data directory");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "{err}");

    let copy = Roster::start_in(&data_dir, &[]);
    let mut r = Client::connect([&copy.endpoint], None).await.unwrap();
    assert_eq!(everything(&mut r, 0).await, now);
    assert_eq!(
        everything(&mut r, kept + 1).await,
        then,
        "history above the compaction"
    );
    let header = r.get("x", None).await.unwrap().header().unwrap().clone();
    assert_eq!(header.revision(), revision);
    let below = r
        .get("/flag", Some(GetOptions::new().with_revision(kept - 1)))
        .await;
    assert!(below.is_err(), "history below the compaction came back");
    let ttl = r
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert!(ttl.ttl() > 500, "the lease lives on: {}", ttl.ttl());
    assert_eq!(ttl.keys().len(), 10, "with its keys");
    // A new member: ids of its own.
    let source_member = c
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .member_id();
    assert_ne!(header.member_id(), source_member);
    // And it takes writes after the restored revision.
    let put = r.put("/after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), revision + 1);
}

/// A save cut short by `kill -9` leaves a partial file that restore
/// refuses and a member that restarts with everything.
#[tokio::test]
async fn kill_9_during_a_save_harms_neither_member_nor_file() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("member");
    let mut member = Roster::start_in(&data_dir, &[]);
    let mut c = Client::connect([&member.endpoint], None).await.unwrap();
    // More than HTTP/2's windows and the server's queue hold: the stream
    // is still being sent when the member dies.
    let value = "x".repeat(1024);
    for t in 0..40 {
        let ops: Vec<TxnOp> = (0..100)
            .map(|i| TxnOp::put(format!("/bulk/{t:03}/{i:03}"), value.as_str(), None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let before = listing(&mut c).await;

    // Read a first piece of the stream, then hold it open: writes go on
    // beside a snapshot in progress.
    let mut stream = c.snapshot().await.unwrap();
    let first = stream.message().await.unwrap().expect("a first piece");
    let partial: PathBuf = dir.path().join("snap.db.part");
    std::fs::write(&partial, first.blob()).unwrap();
    for i in 0..20 {
        c.put(format!("/during/{i}"), "y", None).await.unwrap();
    }
    let acked = listing(&mut c).await;
    assert_eq!(acked.len(), before.len() + 20);

    member.kill();
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break "completed",
            Err(_) => break "failed",
        }
    };
    assert_eq!(ended, "failed", "the stream outlived its member");

    let out = dir.path().join("from-partial");
    let refused = restore(&partial, &out);
    assert!(!refused.status.success(), "a partial snapshot was restored");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("snapshot"), "{err}");
    assert!(
        !out.join("roster.redb").exists(),
        "a refused restore left a database"
    );

    let again = Roster::start_in(&data_dir, &[]);
    let mut c = Client::connect([&again.endpoint], None).await.unwrap();
    assert_eq!(listing(&mut c).await, acked);
}

/// Every key with its revisions, without values.
async fn listing(c: &mut Client) -> Vec<(Vec<u8>, i64, i64)> {
    let opts = GetOptions::new().with_all_keys().with_keys_only();
    let r = c.get("", Some(opts)).await.expect("range");
    r.kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.create_revision(), kv.mod_revision()))
        .collect()
}

/// The number after `"name":` in etcdctl's JSON.
fn json_number(text: &str, name: &str) -> i64 {
    let key = format!("\"{name}\":");
    let at = text
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{name} in {text}"))
}
