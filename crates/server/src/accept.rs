//! Accepting connections without letting clients take what the node needs.
//!
//! Every client connection holds a file descriptor, and so do the node's
//! own files: the raft log creates a new segment when it rolls and opens
//! its directory to sync it, and a failed log write stops the node. With
//! more clients than the open-file limit allows, two things went wrong.
//! `accept` failed with `EMFILE`, tonic's loop tried again at once, and the
//! node spun at 100% CPU; and clients took the last descriptors, so the
//! next segment could not be created and the node stopped.
//!
//! [`Incoming`] is the accept loop that fixes both.
//!
//! - **Back-off.** When `accept` fails with anything but an error about
//!   that one connection (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`), it
//!   sleeps 5 ms, then twice as long each time, up to 1 s, and accepts
//!   again. The first success resets the sleep. It logs one warning when
//!   the failures start and one line when they end, not one per retry.
//! - **Reserve.** The last [`RESERVE`] descriptors under the soft limit
//!   (a quarter of the limit if that is less) are never given to clients.
//!   A connection accepted onto one of them is closed at once. The client
//!   sees a clean refusal and can retry, instead of waiting in the listen
//!   backlog.
//!
//! The reserve needs no counting, because of two rules that POSIX sets
//! and Linux keeps. A new descriptor always gets the lowest free number,
//! and the limit bounds that number: `open` fails with `EMFILE` only when
//! every number below the limit is taken. So a connection accepted as
//! descriptor `n` proves that `0..n` are all in use. Refusing every
//! client that lands at or above `limit - RESERVE` means clients never
//! hold a number in the reserve, and those numbers stay free for the
//! node's files. If anything else in the process takes descriptors in the
//! reserve (another server in the same test process, say), the node has
//! less room, but accept still backs off instead of spinning. The limit
//! is read once, when the listener starts; `roster serve` raises it
//! before that. The alternatives (counting connections, holding spare
//! descriptors) and why they lost: `docs/decisions.md`, entry 34.
//!
//! ```text
//! 0 ........................ limit-RESERVE ........... limit
//! | clients and the node     | the node only (log, db)  |
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;

/// Descriptors under the open-file limit that clients never get.
///
/// The node's own use after start is small: rolling a log segment
/// briefly holds the new file and its directory, on top of the log's
/// active segment and the database. 64 covers that many times over and
/// still leaves 94% of a 1024 limit to clients.
pub const RESERVE: u64 = 64;

/// The first pause after a failed accept; each failure in a row doubles it.
const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause between accepts that keep failing.
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// A listener's accepted connections. Accept errors are never yielded:
/// the stream backs off and tries again.
pub struct Incoming {
    listener: TcpListener,
    /// The lowest descriptor number a client may not have; `None` when
    /// the process has no limit.
    ceiling: Option<u64>,
    pause: Option<Pin<Box<Sleep>>>,
    next_pause: Duration,
    /// Set while accepts fail.
    failing: Option<Episode>,
    /// Set while connections are refused for the reserve.
    refusing: Option<Episode>,
}

/// A run of failed or refused accepts, logged when it starts and ends.
struct Episode {
    since: Instant,
    times: u64,
}

impl Incoming {
    /// Accepts from `listener`, keeping [`RESERVE`] descriptors under the
    /// current soft limit on open files for the node.
    pub fn new(listener: TcpListener) -> Incoming {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Incoming {
            listener,
            ceiling: limit.map(ceiling),
            pause: None,
            next_pause: FIRST_PAUSE,
            failing: None,
            refusing: None,
        }
    }

    /// True when `stream` holds a descriptor in the reserve.
    fn in_reserve(&self, stream: &TcpStream) -> bool {
        let fd = stream.as_raw_fd() as u64;
        self.ceiling.is_some_and(|c| fd >= c)
    }

    fn failed(&mut self, e: io::Error) {
        match &mut self.failing {
            Some(ep) => ep.times += 1,
            None => {
                tracing::warn!(error = %e, "cannot accept connections; backing off");
                self.failing = Some(Episode::start());
            }
        }
        self.pause = Some(Box::pin(tokio::time::sleep(self.next_pause)));
        self.next_pause = (self.next_pause * 2).min(LONGEST_PAUSE);
    }

    fn refused(&mut self) {
        match &mut self.refusing {
            Some(ep) => ep.times += 1,
            None => {
                tracing::warn!(
                    reserve = RESERVE,
                    "refusing clients: the descriptors left under the open file limit \
                     are kept for the node's own files"
                );
                self.refusing = Some(Episode::start());
            }
        }
    }

    fn accepted(&mut self) {
        self.next_pause = FIRST_PAUSE;
        if let Some(ep) = self.failing.take() {
            tracing::info!(failed = ep.times, after = ?ep.since.elapsed(), "accepting again");
        }
    }

    fn kept(&mut self) {
        if let Some(ep) = self.refusing.take() {
            tracing::info!(refused = ep.times, after = ?ep.since.elapsed(), "serving new clients again");
        }
    }
}

impl Episode {
    fn start() -> Episode {
        Episode {
            since: Instant::now(),
            times: 1,
        }
    }
}

/// The lowest descriptor number a client may not have under a limit of
/// `limit` open files: [`RESERVE`] below it, or a quarter of a small limit.
fn ceiling(limit: u64) -> u64 {
    limit - RESERVE.min(limit / 4)
}

/// True for errors about one connection, gone before it was accepted:
/// the next one may be fine, so there is nothing to wait for.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

impl Stream for Incoming {
    type Item = Result<TcpStream, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            // Each accept uses tokio's cooperative budget, so a storm of
            // refusals still yields to other tasks.
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    this.accepted();
                    if this.in_reserve(&stream) {
                        // Dropped, so closed: the client learns at once.
                        this.refused();
                        continue;
                    }
                    this.kept();
                    // Without TCP_NODELAY a small response written after a
                    // small request waits for the peer's delayed ACK (40 ms
                    // on Linux): that is what a watch event or a keepalive
                    // answer is. A failure here leaves a slower socket.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    return Poll::Ready(Some(Ok(stream)));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => this.failed(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings() {
        for (limit, ceiling_) in [
            (1024, 960),
            (256, 192),
            (128, 96),
            (16, 12),
            (3, 3),
            (0, 0),
            (1 << 20, (1 << 20) - 64),
        ] {
            assert_eq!(ceiling(limit), ceiling_, "limit {limit}");
        }
    }

    #[test]
    fn connection_errors_do_not_pause() {
        let kinds = [
            (io::ErrorKind::ConnectionAborted, true),
            (io::ErrorKind::ConnectionReset, true),
            (io::ErrorKind::Interrupted, true),
            (io::ErrorKind::OutOfMemory, false),
        ];
        for (kind, quick) in kinds {
            assert_eq!(is_connection_error(&kind.into()), quick, "{kind:?}");
        }
        // EMFILE.
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
    }
}
