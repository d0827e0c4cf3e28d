//! The adapter's diffing as a table, its stream as a tower `Discover`, and
//! a tonic channel following a set of in-process greeters.

use std::time::Duration;

use ::tower::discover::Discover;
use roster_greeter::{serve, Greeter, GreeterClient, HelloRequest};
use tokio::net::TcpListener;
use tokio::time::timeout;

use super::*;

/// A change written as text, since tower's `Change` has no `PartialEq`.
fn show(c: &Change<String, String>) -> String {
    match c {
        Change::Insert(id, s) => format!("+{id}={s}"),
        Change::Remove(id) => format!("-{id}"),
    }
}

fn inst(id: &str, addr: &str) -> Instance {
    Instance::new(id, addr)
}

#[test]
fn diff_reports_what_the_balancer_must_learn() {
    // Instances whose address starts with "skip" map to no service.
    let mut make = |i: &Instance| (!i.addr.starts_with("skip")).then(|| i.addr.clone());
    let mut seen = BTreeMap::new();
    let mut step = |now: &[Instance]| -> Vec<String> {
        diff(&mut seen, now, &mut make).iter().map(show).collect()
    };
    let labelled = Instance {
        weight: 5,
        ..inst("b", "2:2")
    };

    let table: Vec<(&str, Vec<Instance>, Vec<&str>)> = vec![
        (
            "first snapshot",
            vec![inst("a", "1:1"), inst("b", "2:2")],
            vec!["+a=1:1", "+b=2:2"],
        ),
        (
            "same snapshot again",
            vec![inst("a", "1:1"), inst("b", "2:2")],
            vec![],
        ),
        (
            "one added",
            vec![inst("a", "1:1"), inst("b", "2:2"), inst("c", "3:3")],
            vec!["+c=3:3"],
        ),
        (
            "address changed",
            vec![inst("a", "1:9"), inst("b", "2:2"), inst("c", "3:3")],
            vec!["+a=1:9"],
        ),
        (
            "other field changed",
            vec![inst("a", "1:9"), labelled.clone(), inst("c", "3:3")],
            vec!["+b=2:2"],
        ),
        ("two gone", vec![labelled.clone()], vec!["-a", "-c"]),
        (
            "unmappable added",
            vec![labelled.clone(), inst("d", "skip:1")],
            vec![],
        ),
        (
            "unmappable becomes mappable",
            vec![labelled.clone(), inst("d", "4:4")],
            vec!["+d=4:4"],
        ),
        (
            "mappable becomes unmappable",
            vec![labelled.clone(), inst("d", "skip:2")],
            vec!["-d"],
        ),
        ("unmappable gone", vec![labelled.clone()], vec![]),
        (
            "duplicate id: the later record counts",
            vec![inst("b", "2:2"), inst("b", "2:3")],
            vec!["+b=2:3"],
        ),
        (
            "duplicates are stable",
            vec![inst("b", "2:2"), inst("b", "2:3")],
            vec![],
        ),
        ("all gone", vec![], vec!["-b"]),
    ];
    for (what, now, want) in table {
        assert_eq!(step(&now), want, "{what}");
    }
}

#[tokio::test]
async fn follows_snapshots_as_a_tower_discover() {
    let (tx, rx) = watch::channel::<Arc<[Instance]>>(Arc::from([inst("a", "1:1")]));
    let mut d = InstanceDiscover::from_updates(rx, |i: &Instance| Some(i.addr.clone()));
    let mut next = async || {
        let polled = std::future::poll_fn(|cx| Pin::new(&mut d).poll_discover(cx));
        timeout(Duration::from_secs(5), polled)
            .await
            .expect("a change in time")
            .map(|c| show(&c.expect("infallible")))
    };

    assert_eq!(
        next().await.as_deref(),
        Some("+a=1:1"),
        "the current set first"
    );
    tx.send_replace(Arc::from([inst("b", "2:2")]));
    assert_eq!(next().await.as_deref(), Some("-a"));
    assert_eq!(next().await.as_deref(), Some("+b=2:2"));
    drop(tx);
    assert_eq!(next().await, None, "the stream ends with the discovery");
}

/// A greeter serving on a fresh port until the test ends.
async fn greeter(id: &str) -> Instance {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, Greeter::new(id), std::future::pending()));
    inst(id, &addr)
}

/// Who answered one call.
async fn hello(client: &mut GreeterClient<Channel>) -> String {
    let call = client.say_hello(HelloRequest { name: "t".into() });
    let reply = timeout(Duration::from_secs(5), call)
        .await
        .expect("in time");
    reply.expect("call succeeds").into_inner().instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_channel_follows_the_set() {
    let (a, b) = (greeter("a").await, greeter("b").await);
    let (tx, rx) = watch::channel::<Arc<[Instance]>>(Arc::from([a.clone(), b.clone()]));
    let channel = feed_channel(InstanceDiscover::from_updates(rx, http_endpoint));
    let mut client = GreeterClient::new(channel);

    // Both get traffic.
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..200 {
        answered.insert(hello(&mut client).await);
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered.len(), 2, "both instances answer: {answered:?}");

    // "a" leaves the set while still serving: once the change is through,
    // only "b" answers.
    tx.send_replace(Arc::from([b.clone()]));
    let mut in_a_row = 0;
    for _ in 0..1000 {
        in_a_row = if hello(&mut client).await == "b" {
            in_a_row + 1
        } else {
            0
        };
        if in_a_row == 100 {
            break;
        }
    }
    assert_eq!(in_a_row, 100, "calls stop reaching a removed instance");

    // Dropping the channel ends the feeding task, which lets go of the
    // snapshot receiver.
    drop(client);
    timeout(Duration::from_secs(5), tx.closed())
        .await
        .expect("the feeding task ends with the channel");
}
