//! The smallest end-to-end check: the binary starts, serves a put and a get
//! to a third-party etcd client, and stops cleanly on SIGTERM.

use crate::roster::Roster;

#[tokio::test]
async fn put_get_and_clean_shutdown() {
    let mut server = Roster::start();
    let mut client = etcd_client::Client::connect([server.url()], None)
        .await
        .unwrap();
    let put = client.put("hello", "world", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 2);
    let got = client.get("hello", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"world");
    assert!(server.terminate().await.success());
}
