//! Real `roster echo` backends and a real `roster gateway`, for the
//! gateway's end-to-end tests, with the HTTP client and the steady load
//! those tests drive them with.
//!
//! Every process is the binary this package builds, started the way an
//! operator would start it. [`Echo`] and [`Gateway`] wait for the one line
//! each prints when it is ready (the echo prints it only once it is
//! *registered*, the gateway once it is bound), remember when that line was
//! read, keep draining the rest of the output so no child ever blocks on a
//! full pipe, and kill the child when dropped. The last lines of each
//! child's log are printed if the test is failing, because a proxy test
//! that fails without the proxy's log is hard to read.
//! `ROSTER_TEST_VERBOSE=1` echoes every line as it arrives.
//!
//! The client is hyper's connection-level HTTP/1.1 client ([`Conn`]): a
//! test that cares about keep-alive holds one connection and sees it break
//! if the gateway drops it, where a pooled client would quietly reconnect.
//!
//! [`Load`] is the steady traffic of the membership tests: a few workers,
//! each looping GETs (or POSTs) on its own keep-alive connection, counting
//! every answer by instance and every failure with its reason. Tests await
//! conditions on that tally (an instance's first answer, a number of
//! answers) instead of sleeping for a guessed time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The longest wait for anything a test expects to happen: a process to
/// become ready, an answer, a state of the gateway's route table.
pub const WAIT: Duration = Duration::from_secs(15);

/// How many of a child's last log lines are kept for a failure report.
const LOG_LINES: usize = 200;

/// A child process of the test, killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Starts `roster ARGS` and waits for a stderr line starting with
    /// `ready`; returns the process, that line and when it was read.
    async fn start(name: &str, args: &[String], ready: &'static str) -> (Proc, String, Instant) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roster"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start roster {args:?}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = oneshot::channel();
        let (lines, label) = (log.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let verbose = std::env::var_os("ROSTER_TEST_VERBOSE").is_some();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Taken first, as close as can be to when the line was
                // written: time-to-traffic figures are measured from it.
                let at = Instant::now();
                if verbose {
                    eprintln!("[{label}] {line}");
                }
                if line.starts_with(ready) {
                    if let Some(t) = tx.take() {
                        let _ = t.send((line.clone(), at));
                    }
                }
                let mut lines = lines.lock().unwrap();
                if lines.len() == LOG_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        let mut proc = Proc {
            name: name.to_string(),
            child,
            log,
        };
        match timeout(WAIT, rx).await {
            Ok(Ok((line, at))) => (proc, line, at),
            Ok(Err(_)) => {
                let status = proc.child.wait().expect("wait");
                panic!("{name} exited ({status}) before it was ready");
            }
            Err(_) => panic!("{name} not ready after {WAIT:?}"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM: a graceful stop.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.name);
    }

    /// Sends SIGKILL (`kill -9`) and reaps the process.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// Waits, within [`WAIT`], for the process to exit.
    pub async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} still running", self.name);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits, within [`WAIT`], for a log line containing `text`.
    pub async fn until_log(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(text))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no line with {text:?} after {WAIT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The child's peak resident memory (`VmHWM`), in bytes.
    #[cfg(target_os = "linux")]
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("--- last {} lines of {} ---", log.len(), self.name);
            for line in log.iter() {
                eprintln!("[{}] {line}", self.name);
            }
        }
    }
}

/// The socket address that follows `after` in a ready line.
fn address_in(line: &str, after: &str) -> SocketAddr {
    line.split(after)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == ')').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address after {after:?} in {line:?}"))
}

/// A running `roster echo`, registered in the registry.
pub struct Echo {
    /// The process.
    pub proc: Proc,
    /// Its instance id (given with `--id`).
    pub id: String,
    /// Where it listens, which is also the address it registered.
    pub addr: SocketAddr,
    /// When the process was started: before it registered.
    pub started_at: Instant,
    /// When its ready line, printed after registering, was read; the
    /// reading thread may be scheduled late, so this can be a little
    /// after traffic has begun to arrive.
    pub ready_at: Instant,
}

impl Echo {
    /// Starts an instance `id` of `service` registered in `registry` with
    /// a 2 s lease, so that a killed instance leaves the registry soon.
    pub async fn start(registry: &str, service: &str, id: &str) -> Echo {
        Echo::start_with(registry, service, id, &["--ttl", "2"]).await
    }

    /// Like [`Echo::start`], with `extra` flags instead of `--ttl 2`.
    pub async fn start_with(registry: &str, service: &str, id: &str, extra: &[&str]) -> Echo {
        let mut args: Vec<String> = ["echo", "--listen", "127.0.0.1:0", "--endpoints", registry]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--service", service, "--id", id].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let name = format!("echo {id}");
        let started_at = Instant::now();
        let (proc, line, ready_at) = Proc::start(&name, &args, "roster: echo ").await;
        Echo {
            proc,
            id: id.to_string(),
            addr: address_in(&line, "http://"),
            started_at,
            ready_at,
        }
    }
}

/// A running `roster gateway` on free ports.
pub struct Gateway {
    /// The process.
    pub proc: Proc,
    /// Where it accepts traffic.
    pub addr: SocketAddr,
    /// Its admin listener (`/routes`, `/metrics`).
    pub admin: SocketAddr,
}

impl Gateway {
    /// Starts a gateway on `registry` with `args` (routes as `--route`
    /// flags, or `--config FILE`); it listens on free ports.
    pub async fn start(registry: &str, args: &[&str]) -> Gateway {
        let mut all: Vec<String> = ["gateway", "--endpoints", registry]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"].map(String::from));
        all.extend(args.iter().map(|s| s.to_string()));
        let (proc, line, _) = Proc::start("gateway", &all, "roster: gateway listening").await;
        Gateway {
            proc,
            addr: address_in(&line, "listening on http://"),
            admin: address_in(&line, "(admin http://"),
        }
    }

    /// The admin `/routes` answer: every route with its instances.
    pub async fn routes(&self) -> Value {
        let answer = get(self.admin, "/routes").await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.json()
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let answer = get(self.admin, "/metrics").await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.text()
    }

    /// Waits until the metric sample `series` (see [`sample`]) satisfies
    /// `ok`; returns its value.
    pub async fn until_sample(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = sample(&self.metrics().await, series);
            if ok(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{series} still {value} after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until route `name` lists exactly the instances `ids`, each
    /// with `out` (out of rotation) as given, and returns the route.
    pub async fn until_instances(&self, name: &str, ids: &[(&str, bool)]) -> Value {
        let mut want: Vec<(String, bool)> = ids.iter().map(|&(i, o)| (i.to_string(), o)).collect();
        want.sort();
        self.until_route(name, &format!("instances {want:?}"), |route| {
            instances_of(route) == want
        })
        .await
    }

    /// Waits until route `name` satisfies `ok`; polls `/routes`, the
    /// gateway's own view, because that is the state requests are routed
    /// by.
    pub async fn until_route(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let routes = self
            .until_table(&format!("route {name} {what}"), |routes| {
                routes.iter().any(|r| r["name"] == name && ok(r))
            })
            .await;
        routes
            .into_iter()
            .find(|r| r["name"] == name)
            .expect("the route")
    }

    /// Waits until the whole route table (the `/routes` list) satisfies
    /// `ok`, and returns it.
    pub async fn until_table(&self, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let routes = self.routes().await;
            let list = routes.as_array().cloned().unwrap_or_default();
            if ok(&list) {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "not {what} after {WAIT:?}: {routes:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A `/routes` entry's instances as sorted `(id, out)` pairs.
pub fn instances_of(route: &Value) -> Vec<(String, bool)> {
    let mut list: Vec<(String, bool)> = route["instances"]
        .as_array()
        .map(|is| {
            is.iter()
                .map(|i| {
                    let id = i["id"].as_str().unwrap_or_default().to_string();
                    (id, i["out"].as_bool().unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

/// The value of the Prometheus sample `series` (name and labels exactly as
/// exposed), or 0 if it is absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

/// Request and response bodies of the test client.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, read to its end.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {:?}", self.status, self.body))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo instance that answered.
    pub fn instance(&self) -> String {
        let v = self.json();
        v["instance"]
            .as_str()
            .unwrap_or_else(|| panic!("not an echo answer: {v}"))
            .to_string()
    }
}

/// One HTTP/1.1 client connection, kept alive between requests.
pub struct Conn {
    sender: SendRequest<Body>,
}

impl Conn {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Conn {
        timeout(WAIT, Conn::try_open(addr))
            .await
            .expect("connected in time")
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects to `addr`, or says why not.
    pub async fn try_open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends `req`; returns the response with its body still streaming.
    pub async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        // The connection takes the next request once the last answer is read.
        self.sender.ready().await?;
        self.sender.send_request(req).await
    }

    /// Sends `req` and reads the whole answer, within [`WAIT`].
    pub async fn call(&mut self, req: Request<Body>) -> Answer {
        let what = format!("{} {}", req.method(), req.uri());
        let call = async {
            let response = self.send(req).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        timeout(WAIT, call)
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// `GET path` with no other header than `Host: host` (if given).
    pub async fn get(&mut self, path: &str, host: Option<&str>) -> Answer {
        let mut req = Request::get(path);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        self.call(req.body(empty()).expect("request")).await
    }
}

/// `GET path` on a new connection to `addr`.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    Conn::open(addr).await.get(path, None).await
}

/// Sends `req` on a new connection to `addr`.
pub async fn call(addr: SocketAddr, req: Request<Body>) -> Answer {
    Conn::open(addr).await.call(req).await
}

/// What a [`Load`] has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests answered 200 by an instance.
    pub ok: u64,
    /// Every other outcome, with its reason, in the order seen.
    pub failures: Vec<String>,
    /// Answers by instance id.
    pub by_instance: BTreeMap<String, u64>,
    /// When each instance first answered.
    pub first: HashMap<String, Instant>,
    /// When each instance last answered.
    pub last: HashMap<String, Instant>,
}

impl Tally {
    /// Requests made: answered and failed.
    pub fn requests(&self) -> u64 {
        self.ok + self.failures.len() as u64
    }
}

/// Steady GET traffic through the gateway (see the module docs).
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    tally: Arc<watch::Sender<Tally>>,
}

/// The longest a load request may take before it counts as failed: well
/// above anything a healthy loopback round trip takes, well below the
/// gateway's 30 s route timeout.
const LOAD_REQUEST_LIMIT: Duration = Duration::from_secs(5);

impl Load {
    /// Starts `workers` loops of `GET path?w=WORKER&n=REQUEST` to `addr`,
    /// each pausing `pause` between requests.
    pub fn start(addr: SocketAddr, path: &str, workers: usize, pause: Duration) -> Load {
        Load::spawn(addr, Method::GET, path, workers, pause)
    }

    /// Like [`Load::start`] with POSTs of a small body: requests the
    /// gateway may not retry, since an instance may have acted on them.
    pub fn start_posts(addr: SocketAddr, path: &str, workers: usize, pause: Duration) -> Load {
        Load::spawn(addr, Method::POST, path, workers, pause)
    }

    fn spawn(
        addr: SocketAddr,
        method: Method,
        path: &str,
        workers: usize,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(watch::Sender::new(Tally::default()));
        let workers = (0..workers)
            .map(|w| {
                let path = format!("{path}?w={w}");
                let (method, stop, tally) = (method.clone(), stop.clone(), tally.clone());
                tokio::spawn(worker(addr, method, path, pause, stop, tally))
            })
            .collect();
        Load {
            stop,
            workers,
            tally,
        }
    }

    /// A copy of the tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.borrow().clone()
    }

    /// Waits, at most `limit`, until the tally satisfies `ok`; returns it.
    pub async fn until(&self, limit: Duration, what: &str, ok: impl Fn(&Tally) -> bool) -> Tally {
        let mut rx = self.tally.subscribe();
        let reached = timeout(limit, async {
            rx.wait_for(|t| ok(t)).await.map(|t| t.clone())
        })
        .await;
        match reached {
            Ok(Ok(t)) => t,
            _ => panic!("load: not {what} within {limit:?}: {:?}", self.tally()),
        }
    }

    /// Waits for `n` more answers (at most [`WAIT`]): proof that traffic
    /// kept flowing for a while, counted rather than timed.
    pub async fn more(&self, n: u64) -> Tally {
        let target = self.tally().requests() + n;
        self.until(WAIT, &format!("{target} requests"), |t| {
            t.requests() >= target
        })
        .await
    }

    /// Stops the workers, lets requests in flight finish, and returns the
    /// final tally.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            timeout(WAIT, w)
                .await
                .expect("load worker stopped in time")
                .expect("load worker");
        }
        self.tally.borrow().clone()
    }
}

/// One loop of a [`Load`]: a keep-alive connection, reopened if it breaks.
async fn worker(
    addr: SocketAddr,
    method: Method,
    path: String,
    pause: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<watch::Sender<Tally>>,
) {
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let outcome = timeout(LOAD_REQUEST_LIMIT, async {
            if conn.is_none() {
                conn = Some(Conn::try_open(addr).await?);
            }
            let c = conn.as_mut().expect("connected");
            let body = match method {
                Method::GET => empty(),
                _ => full(format!("request {n}")),
            };
            let req = Request::builder()
                .method(method.clone())
                .uri(format!("{path}&n={n}"))
                .body(body)
                .expect("request");
            let response = c.send(req).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.into_body().collect().await;
            let body = body.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {LOAD_REQUEST_LIMIT:?}")));
        let at = Instant::now();
        let instance = match &outcome {
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["instance"].as_str().map(str::to_string)),
            _ => None,
        };
        match (instance, outcome) {
            (Some(id), _) => tally.send_modify(|t| {
                t.ok += 1;
                *t.by_instance.entry(id.clone()).or_default() += 1;
                t.first.entry(id.clone()).or_insert(at);
                t.last.insert(id, at);
            }),
            (None, Ok((status, body))) => {
                let why = format!("{status}: {}", String::from_utf8_lossy(&body).trim());
                tally.send_modify(|t| t.failures.push(why));
            }
            (None, Err(e)) => {
                // The connection is in an unknown state: start afresh.
                conn = None;
                tally.send_modify(|t| t.failures.push(format!("{path}&n={n}: {e}")));
            }
        }
        tokio::time::sleep(pause).await;
    }
}
