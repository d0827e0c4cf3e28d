//! What a `kill -9` does to leases: each comes back with the remaining TTL
//! its last checkpoint recorded, not a fresh one, and time does not run
//! while the server is down (the rule in `roster_server::lessor`). This
//! needs the process, so it runs `roster serve`, on real time: checkpoints
//! are timer-driven and leave no trace a client can see, so the test waits
//! for one. etcd 3.4 checkpoints only behind an experimental flag, so this
//! is Roster's own promise and runs against Roster only.

use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use roster_testkit::etcd_api::{
    brief, connect, events, grant, keep_alive_in_background, keys_of, lease_ids, lease_of,
    put_with, watch,
};
use tokio::time::{sleep, timeout};

use crate::roster::Roster;

#[tokio::test(flavor = "multi_thread")]
async fn leases_survive_kill_9_with_their_checkpointed_remaining_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Roster::start_in(dir.path(), &[]);
    let mut c = connect(&server.endpoint).await;

    let long = grant(&mut c, 60).await;
    let granted = Instant::now();
    put_with(&mut c, "long/1", "v", long).await;
    put_with(&mut c, "long/2", "v", long).await;
    // `short` is kept alive until the crash and abandoned after it;
    // `kept` is kept alive on both sides of it.
    let short = grant(&mut c, 8).await;
    put_with(&mut c, "short/1", "v", short).await;
    let kept = grant(&mut c, 6).await;
    put_with(&mut c, "kept/1", "v", kept).await;
    let renew_short = keep_alive_in_background(&c, short, Duration::from_secs(1));
    let renew_kept = keep_alive_in_background(&c, kept, Duration::from_secs(1));

    // Checkpoints are timer-driven, every 5 s from the server's start, and
    // leave no trace a client can see, so the test waits for one. Any
    // closed 5 s window after the grant holds a tick, so by 11 s after it a
    // checkpoint taken at least 5 s after the grant has been written (with
    // a second to spare for its write): it recorded `long` with at most
    // 55 s left.
    sleep(Duration::from_secs(11).saturating_sub(granted.elapsed())).await;
    for renewer in [&renew_short, &renew_kept] {
        assert!(!renewer.is_finished(), "keepalive failed before the crash");
    }
    renew_short.abort();
    renew_kept.abort();
    server.kill();
    drop(c);

    let server = Roster::start_in(dir.path(), &[]);
    let restarted = Instant::now();
    let mut c = connect(&server.endpoint).await;
    // The live owner reconnects and renews at once.
    let renew_kept = keep_alive_in_background(&c, kept, Duration::from_secs(1));

    let mut all = vec![long, short, kept];
    all.sort();
    assert_eq!(lease_ids(&mut c).await, all);
    let keys = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let rev = keys.header().unwrap().revision();
    let keys: Vec<_> = keys
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap(), kv.lease()))
        .collect();
    assert_eq!(
        keys,
        [
            ("kept/1", kept),
            ("long/1", long),
            ("long/2", long),
            ("short/1", short)
        ]
    );
    assert_eq!(keys_of(&mut c, long).await, ["long/1", "long/2"]);

    // Not reset to the full 60 s: the checkpointed remainder, and time did
    // not run while the server was down.
    let ttl = c.lease_time_to_live(long, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(
        (40..=55).contains(&ttl.ttl()),
        "`long` restarted with {} s left",
        ttl.ttl()
    );

    // Nobody renews `short` any more: it expires, at most its TTL (plus
    // the expiry check and one write) after the restart.
    let opts = WatchOptions::new().with_start_revision(rev + 1);
    let mut w = watch(&mut c, "short/1", Some(opts)).await;
    let deleted = timeout(Duration::from_secs(15), events(&mut w, 1))
        .await
        .expect("`short` expires after the restart");
    assert_eq!(
        brief(&deleted[0]),
        (EventType::Delete, "short/1".to_string(), rev + 1)
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(8 + 2),
        "`short` outlived its TTL: {:?}",
        restarted.elapsed()
    );
    assert_eq!(lease_of(&mut c, "short/1").await, None);

    // `kept` must be renewed past its own TTL after the restart.
    sleep(Duration::from_secs(7).saturating_sub(restarted.elapsed())).await;
    assert!(!renew_kept.is_finished(), "keepalive failed after restart");
    renew_kept.abort();
    assert_eq!(lease_of(&mut c, "kept/1").await, Some(kept));
    assert_eq!(lease_of(&mut c, "long/1").await, Some(long));
    let mut left = vec![long, kept];
    left.sort();
    assert_eq!(lease_ids(&mut c).await, left);
}
