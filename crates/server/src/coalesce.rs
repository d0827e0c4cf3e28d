//! Write coalescing: one socket write for the answers of one commit.
//!
//! HTTP/2 answers every request from its own task (hyper spawns one per
//! stream), and the connection's task writes what is ready each time it
//! runs. When a batch of writes commits, its proposers' tasks are woken one
//! after another; the first to hand its response to h2 wakes the connection
//! task, and tokio runs a freshly woken task next, before the other tasks of
//! the batch have handed over theirs. Left alone, a connection writes
//! about one response per `writev`. On loopback each write also pays, on
//! the writer's core, the receiver's TCP work and the wake-up of the
//! reading thread.
//!
//! [`Coalesce`] sits between a connection and its socket. While the
//! [`Backlog`] says answered proposers have not yet resumed, the first
//! write of a flush gives way once: it wakes its own task and returns
//! `Pending`, which puts the connection behind the tasks already queued,
//! and h2 keeps its frames. When the connection runs again, h2 adds the
//! frames those tasks queued meanwhile and writes them all at once. A lone
//! client finds no backlog and writes at once: with no other answer
//! coming, giving way would only cost it an extra poll per call.
//!
//! ```text
//! a commit answers proposers A, B and C              backlog 3
//! A's task resumes, hands h2 its response            backlog 2
//! the connection's task runs first: backlog > 0, it gives way once
//! B's and C's tasks resume and hand h2 theirs        backlog 0
//! the connection's task runs again: A, B and C leave in one writev
//! ```
//!
//! Measured, with the shapes tried before this one: `docs/decisions.md`,
//! entry 25.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A socket whose first write of a flush may wait for more.
pub struct Coalesce<T> {
    io: T,
    /// This flush has given way once already.
    yielded: bool,
    backlog: Backlog,
}

/// How many committed proposals have been answered but whose tasks have
/// not yet taken the answer: responses about to be written.
#[derive(Clone, Default)]
pub struct Backlog(Arc<AtomicUsize>);

impl Backlog {
    /// Counts one answer until the returned token is dropped, which the
    /// proposer's task does when it resumes (or the channel does, if the
    /// proposer is gone).
    pub fn answer(&self) -> Answer {
        self.0.fetch_add(1, Ordering::AcqRel);
        Answer(self.0.clone())
    }

    /// Answers given and not yet taken.
    pub fn len(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// True when no answer is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One answer in the [`Backlog`], counted until dropped.
pub struct Answer(Arc<AtomicUsize>);

impl Drop for Answer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<T> Coalesce<T> {
    /// Wraps `io`; writes give way while `backlog` has answers waiting.
    pub fn new(io: T, backlog: Backlog) -> Self {
        Coalesce {
            io,
            yielded: false,
            backlog,
        }
    }

    /// True when this write should wait once for the answers in flight.
    fn give_way(&mut self, cx: &mut Context<'_>) -> bool {
        if self.yielded || self.backlog.is_empty() {
            return false;
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.give_way(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.give_way(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 flushes once everything it had is written: the next write
        // starts a new round.
        self.yielded = false;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Coalesce<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}
