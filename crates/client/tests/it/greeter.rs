//! The greeter that the SDK's tests and examples call through the balancer,
//! checked on its own: a reply names the instance that gave it, which is how
//! the balancing tests tell instances apart.

use roster_greeter::{serve, Greeter, GreeterClient, HelloRequest};
use tokio::net::TcpListener;

#[tokio::test]
async fn replies_name_the_instance() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Greeter::new("g1"), async {
        let _ = stopped.await;
    }));

    let mut client = GreeterClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let reply = client
        .say_hello(HelloRequest { name: "ann".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.instance.as_str()),
        ("hello, ann", "g1")
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
