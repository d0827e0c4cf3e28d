//! Real `roster echo` backends and a real `roster gateway`, for the
//! gateway's end-to-end tests, with the HTTP client and the steady load
//! those tests drive them with.
//!
//! Every process is the binary this package builds, started the way an
//! operator would start it, through [`roster_testkit::Proc`]. [`Echo`] and
//! [`Gateway`] wait for the one line each prints when it is ready (the echo
//! prints it only once it is *registered*, the gateway once it is bound).
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

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roster_testkit::{until, Proc, WAIT};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// `roster ARGS`, logging warnings only.
pub fn roster(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roster"));
    cmd.args(args).env("RUST_LOG", "warn");
    cmd
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
        let mut args = vec!["--endpoints", registry, "--service", service, "--id", id];
        args.extend(extra);
        Echo::run(id, &args)
    }

    /// Starts `roster echo --listen 127.0.0.1:0 ARGS` as instance `id`
    /// (the `--id` in `args`, if any, is what it registers as).
    pub fn run(id: &str, args: &[&str]) -> Echo {
        let mut cmd = roster(&["echo", "--listen", "127.0.0.1:0"]);
        cmd.args(args);
        let started_at = Instant::now();
        let proc = Proc::start(&format!("echo {id}"), cmd, "roster: echo ");
        Echo {
            addr: address_in(proc.ready_line(), "http://"),
            started_at,
            ready_at: proc.ready_at(),
            proc,
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
        let mut cmd = roster(&["gateway", "--endpoints", registry]);
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args);
        let proc = Proc::start("gateway", cmd, "roster: gateway listening");
        let line = proc.ready_line();
        Gateway {
            addr: address_in(line, "listening on http://"),
            admin: address_in(line, "(admin http://"),
            proc,
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
        until(&format!("metric {series}"), || async {
            Some(sample(&self.metrics().await, series)).filter(|&v| ok(v))
        })
        .await
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
        until(what, || async {
            let routes = self.routes().await;
            Some(routes.as_array().cloned().unwrap_or_default()).filter(|list| ok(list))
        })
        .await
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
