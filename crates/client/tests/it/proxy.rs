//! A TCP proxy that can cut the line: a client talks to a server through
//! it, and the test takes the path down (every open connection dropped, new
//! ones refused) and brings it back, while the server itself stays up. That
//! is how a network partition between one client and the registry looks,
//! and it lets a test change the registry behind the client's back.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy to one upstream address; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    /// How many connections are open through the proxy.
    open: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`host:port`). Must be called within a tokio runtime.
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (up, state) = watch::channel(true);
        let (count, open) = watch::channel(0usize);
        let count = Arc::new(count);
        let upstream: Arc<str> = upstream.into();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*state.borrow() {
                    // Refused: closed at once, as a dead endpoint would.
                    drop(inbound);
                    continue;
                }
                let count = count.clone();
                let (upstream, state) = (upstream.clone(), state.clone());
                tokio::spawn(async move {
                    count.send_modify(|n| *n += 1);
                    pipe(inbound, upstream, state).await;
                    count.send_modify(|n| *n -= 1);
                });
            }
        });
        Proxy {
            addr,
            up,
            open,
            task,
        }
    }

    /// `127.0.0.1:PORT` of the proxy, for a client to connect to.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Drops every open connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Cuts the line and waits until every connection through it is
    /// closed, so nothing sent afterwards can still slip through.
    pub async fn cut_and_wait(&self) {
        self.cut();
        let mut open = self.open.clone();
        open.wait_for(|n| *n == 0).await.expect("proxy running");
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn pipe(mut inbound: TcpStream, upstream: Arc<str>, mut state: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(&*upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = state.wait_for(|up| !*up) => {}
    }
}
