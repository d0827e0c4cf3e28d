//! A real Roster node in the test's own process.
//!
//! A [`TestNode`] opens a [`Node`] on a data directory and serves it with
//! [`roster_server::serve`] on `127.0.0.1:0`, exactly as `roster serve`
//! does, minus the process. Each node gets a thread and a tokio runtime of
//! its own (two workers, as `roster serve` has on a two-core machine; one
//! thread when its clock is paused, which tokio requires):
//!
//! - it keeps working while the test's runtime is blocked or paused, and
//!   several nodes run side by side, as a cluster's members will;
//! - [`TestNode::kill`] drops that runtime, which cuts every connection at
//!   once as a crash would, and then stops the write path, which has already
//!   made every acknowledged write durable — so a restart on the same port
//!   and data shows what a client sees of a crashed registry coming back;
//! - the node's clock can be paused ([`Builder::paused`]): its lease
//!   deadlines, expiry ticks and checkpoints then move only when the test
//!   calls [`TestNode::advance`], so a 60 s TTL is tested in milliseconds
//!   and the answers do not depend on the machine's speed.
//!
//! A paused clock must not run ahead on its own. tokio moves a paused clock
//! to the next timer whenever its runtime has nothing to do, but a node is
//! often idle while a reply is on the way (the writer thread is syncing the
//! log, a client is sending): the clock would jump by the lessor's tick
//! again and again while a single write is in flight. A blocking task kept
//! running for the node's life stops tokio from advancing the clock by
//! itself; only [`TestNode::advance`] moves it. The test's own runtime keeps
//! real time, so its waits ([`crate::within`]) still give up after real
//! seconds.

use std::net::SocketAddr;
use std::time::Duration;

use roster_server::{Config, Node, Stopped};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// What the test asks of a running node's thread.
enum Control {
    /// Move the paused clock, then answer.
    Advance(Duration, oneshot::Sender<()>),
    /// Stop serving gracefully (as on SIGTERM) and say how it ended.
    Terminate(std::sync::mpsc::Sender<Stopped>),
}

/// A node's thread while it serves.
struct Running {
    control: mpsc::UnboundedSender<Control>,
    thread: std::thread::JoinHandle<()>,
}

/// A change to a node's configuration before it starts.
type Configure = Box<dyn FnOnce(&mut Config)>;

/// How a [`TestNode`] is started.
#[derive(Default)]
pub struct Builder {
    paused: bool,
    configure: Option<Configure>,
}

impl Builder {
    /// Pauses the node's clock: it moves only by [`TestNode::advance`].
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    /// Adjusts the node's configuration (etcd's defaults, on a fresh
    /// temporary data directory unless `configure` sets another).
    pub fn config(mut self, configure: impl FnOnce(&mut Config) + 'static) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Opens the node and serves it on a port the OS picks.
    pub fn start(self) -> TestNode {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(tmp.path());
        if let Some(configure) = self.configure {
            configure(&mut config);
        }
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let (addr, running) = launch(config.clone(), addr, self.paused);
        TestNode {
            addr,
            endpoint: addr.to_string(),
            config,
            paused: self.paused,
            running: Some(running),
            _tmp: tmp,
        }
    }
}

/// A Roster node serving on loopback from this process (see the module
/// docs); stopped when dropped.
pub struct TestNode {
    addr: SocketAddr,
    endpoint: String,
    config: Config,
    paused: bool,
    running: Option<Running>,
    _tmp: tempfile::TempDir,
}

impl TestNode {
    /// Starts a node with etcd's defaults on a fresh data directory.
    pub fn start() -> TestNode {
        TestNode::builder().start()
    }

    /// A node with other settings: `TestNode::builder().paused().start()`.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `127.0.0.1:PORT`, what etcd clients take as an endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("the node is stopped")
    }

    /// Moves the node's paused clock by `d` and lets the timers that fell
    /// due run (an expiry tick, a checkpoint). What they start, such as a
    /// lease's revoke, is a write like any other: await its effect.
    pub async fn advance(&self, d: Duration) {
        assert!(self.paused, "advance needs a node started paused");
        let (done, answered) = oneshot::channel();
        let sent = self.running().control.send(Control::Advance(d, done));
        sent.unwrap_or_else(|_| panic!("node thread gone"));
        answered.await.expect("node thread answered");
    }

    /// Kills the node as a crash would: every connection is cut at once.
    /// Acknowledged writes are durable; the data directory stays.
    pub fn kill(&mut self) {
        if let Some(running) = self.running.take() {
            // Closing the channel ends the node's loop without a drain.
            drop(running.control);
            join(running.thread);
        }
    }

    /// Stops the node as SIGTERM does: listeners close, requests in flight
    /// get the drain grace, the writer finishes. Returns how it ended.
    pub fn terminate(&mut self) -> Stopped {
        let running = self.running.take().expect("the node is stopped");
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = running.control.send(Control::Terminate(tx));
        let stopped = rx.recv().expect("node thread said how it stopped");
        join(running.thread);
        stopped
    }

    /// Starts the node again on the same data and port, killing it first
    /// if it still runs: a crashed registry coming back, or one stopped by
    /// [`TestNode::terminate`] started again.
    pub fn restart(&mut self) {
        self.kill();
        let (_, running) = launch(self.config.clone(), self.addr, self.paused);
        self.running = Some(running);
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn join(thread: std::thread::JoinHandle<()>) {
    if thread.join().is_err() && !std::thread::panicking() {
        panic!("the node's thread panicked");
    }
}

/// Starts a node's thread and waits until it serves.
fn launch(config: Config, addr: SocketAddr, paused: bool) -> (SocketAddr, Running) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (control, commands) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name(format!("test-node-{}", addr.port()))
        .spawn(move || run(config, addr, paused, ready_tx, commands))
        .expect("spawn the node's thread");
    match ready_rx.recv() {
        Ok(Ok(addr)) => (addr, Running { control, thread }),
        Ok(Err(why)) => {
            let _ = thread.join();
            panic!("test node did not start: {why}");
        }
        Err(_) => {
            join(thread);
            panic!("test node's thread ended before it served");
        }
    }
}

type Ready = std::sync::mpsc::Sender<Result<SocketAddr, String>>;

/// The node's thread: open, serve, obey the test, stop.
fn run(
    config: Config,
    addr: SocketAddr,
    paused: bool,
    ready: Ready,
    mut commands: mpsc::UnboundedReceiver<Control>,
) {
    // A paused clock needs a current-thread runtime; otherwise the node
    // gets two workers, as `roster serve` has on this machine's two cores.
    let runtime = if paused {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
    .expect("node runtime");
    let opened = runtime.block_on(async {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let node = Node::open(config).map_err(|e| e.to_string())?;
        Ok::<_, String>((listener, local, node))
    });
    let (listener, local, node) = match opened {
        Ok(opened) => opened,
        Err(why) => {
            let _ = ready.send(Err(why));
            return;
        }
    };
    // Holding a blocking task keeps a paused clock from advancing itself
    // (module docs); it ends when `hold` is dropped.
    let (hold, held) = std::sync::mpsc::channel::<()>();
    let mut hold = Some(hold);
    if paused {
        let _guard = runtime.enter();
        tokio::task::spawn_blocking(move || {
            let _ = held.recv();
        });
    }
    runtime.block_on(async {
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(roster_server::serve(node.clone(), vec![listener], async {
            let _ = stopped.await;
        }));
        let _ = ready.send(Ok(local));
        while let Some(command) = commands.recv().await {
            match command {
                Control::Advance(d, done) => {
                    tokio::time::advance(d).await;
                    // Let the timers that fell due run before answering.
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                    let _ = done.send(());
                }
                Control::Terminate(report) => {
                    // Draining waits on the clock; a paused one may now
                    // move by itself again.
                    hold = None;
                    let _ = stop.send(());
                    let how = match serving.await {
                        Ok(Ok(how)) => how,
                        _ => Stopped::Fatal,
                    };
                    let _ = report.send(how);
                    return;
                }
            }
        }
    });
    drop(hold);
    // Dropping the runtime cancels every task: connections are cut.
    drop(runtime);
    node.stop();
}
