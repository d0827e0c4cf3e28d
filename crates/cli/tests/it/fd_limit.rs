//! `roster serve` raises its soft limit on open files to the hard one, as
//! etcd does, so that more clients than the usual soft limit can connect.

use std::process::Command;

use roster_testkit::{Proc, WAIT};

/// The soft limit the server is started with.
const SOFT: u64 = 128;
/// Clients held connected at once: more than `SOFT` descriptors.
const CLIENTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_clients_than_the_soft_limit_are_served() {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    if hard.is_some_and(|h| h < CLIENTS as u64 * 2) {
        eprintln!("skipped: the hard limit on open files is {hard:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "ulimit -Sn {SOFT} && exec \"$0\" serve --data-dir \"$1\" \
             --listen-client-urls http://127.0.0.1:0"
        ))
        .arg(env!("CARGO_BIN_EXE_roster"))
        .arg(dir.path())
        .env("RUST_LOG", "info");
    let proc = Proc::start("roster", cmd, "ready to serve client requests on http://");
    let endpoint = proc
        .ready_line()
        .rsplit("http://")
        .next()
        .unwrap()
        .trim()
        .to_string();
    assert!(
        proc.log().iter().any(
            |l| l.contains("raised the open file limit") && l.contains(&format!("from={SOFT}"))
        ),
        "no line about the raised limit: {:?}",
        proc.log()
    );

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        // Without the raised limit the server cannot accept the next
        // connection, and the client waits: bound it.
        let connected = tokio::time::timeout(WAIT, async {
            let mut c = etcd_client::Client::connect([&endpoint], None).await?;
            c.put(format!("/fd/{i}"), "x", None).await?;
            Ok::<_, etcd_client::Error>(c)
        })
        .await;
        match connected {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => panic!("client {i}: {e}"),
            Err(_) => panic!("client {i} was not served within {WAIT:?}"),
        }
    }
    // Every connection is still open and served.
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.get(format!("/fd/{i}"), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1);
    }
}
