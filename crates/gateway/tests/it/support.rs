//! Test support: tiny hyper backends on 127.0.0.1:0, a gateway running
//! in-process on a static instance source, and an HTTP client.
//!
//! A backend answers
//! - `/echo`: the request body, streamed back as it arrives;
//! - `/slow`: 200 after two seconds;
//! - `/held`: a first chunk at once, a second one when [`Backend::release`]
//!   is notified;
//! - `/status/<code>`: that status;
//! - `/ws`: a `101` to an upgrade request, then echoes raw bytes;
//! - `/healthz`: 200, or 500 after [`Backend::set_healthy`]`(false)`;
//! - anything else: JSON naming the backend, and the method, path and
//!   headers it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use roster_client::Instance;
use roster_gateway::{Config, Gateway, Handle, Source, StaticSource};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};

type BoxBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A running backend.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    pub release: Arc<Notify>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let release = Arc::new(Notify::new());
        let state = (name.to_string(), healthy.clone(), release.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            healthy,
            release,
        }
    }

    /// The instance record for this backend.
    pub fn instance(&self) -> Instance {
        Instance::new(&self.name, self.addr.to_string())
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }
}

type State = (String, Arc<AtomicBool>, Arc<Notify>);

async fn answer((name, healthy, release): State, mut req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(full(body));
        *r.status_mut() = status;
        r
    };
    match path.as_str() {
        "/echo" => Response::new(req.into_body().map_err(Into::into).boxed_unsync()),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            reply(StatusCode::OK, "slow".into())
        }
        "/held" => {
            let (tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                let mut tx = tx;
                let _ = tx.send_data(Bytes::from_static(b"first\n")).await;
                release.notified().await;
                let _ = tx.send_data(Bytes::from_static(b"second\n")).await;
            });
            Response::new(body.map_err(|never| match never {}).boxed_unsync())
        }
        "/healthz" if !healthy.load(Ordering::SeqCst) => {
            reply(StatusCode::INTERNAL_SERVER_ERROR, "sick".into())
        }
        "/ws" => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on.await else { return };
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, String::new());
            r.headers_mut()
                .insert(header::CONNECTION, "upgrade".parse().unwrap());
            r.headers_mut()
                .insert(header::UPGRADE, "echo".parse().unwrap());
            r
        }
        p if p.starts_with("/status/") => {
            let code: u16 = p["/status/".len()..].parse().unwrap_or(500);
            reply(
                StatusCode::from_u16(code).unwrap(),
                format!("{name} says {code}"),
            )
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            let body = serde_json::json!({
                "backend": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            reply(StatusCode::OK, body.to_string())
        }
    }
}

fn full(s: String) -> BoxBody {
    Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A gateway running in-process until dropped.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Starts a gateway on port 0 with the routes and settings in `toml`.
    pub async fn start(toml: &str, source: &StaticSource) -> RunningGateway {
        let config = Config::parse(&format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{toml}"
        ))
        .unwrap();
        Self::start_with(config, source, None).await
    }

    pub async fn start_with(
        config: Config,
        source: &StaticSource,
        watch: Option<std::path::PathBuf>,
    ) -> RunningGateway {
        let mut gateway = Gateway::bind_with(config, Source::Static(source.clone()))
            .await
            .unwrap();
        if let Some(path) = watch {
            gateway = gateway.watch_config(path);
        }
        let (addr, admin, handle) = (gateway.local_addr(), gateway.admin_addr(), gateway.handle());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async move {
            let _ = stopped.await;
        }));
        RunningGateway {
            addr,
            admin,
            handle,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A plain HTTP client.
pub fn client() -> Client<HttpConnector, BoxBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An answer, fully read.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends `req` and reads the whole answer.
pub async fn send(req: Request<BoxBody>) -> Answer {
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `GET url`.
pub async fn get(url: &str) -> Answer {
    send(Request::get(url).body(empty()).unwrap()).await
}

pub fn empty() -> BoxBody {
    full(String::new())
}

pub fn body(s: &str) -> BoxBody {
    full(s.to_string())
}

/// A body whose chunks the caller sends one by one.
pub fn channel_body() -> (http_body_util::channel::Sender<Bytes>, BoxBody) {
    let (tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
    (tx, body.map_err(|never| match never {}).boxed_unsync())
}

/// A frame of data, for reading streamed answers chunk by chunk.
pub fn data(frame: Frame<Bytes>) -> Bytes {
    frame.into_data().unwrap_or_default()
}
