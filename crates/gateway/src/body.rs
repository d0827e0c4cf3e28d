//! Bodies: the one body type the gateway passes around, and the wrapper
//! that writes the access log when a response body ends.
//!
//! Request and response bodies are never collected: hyper's `Incoming` is
//! boxed as is and handed to the other side, which polls it frame by frame,
//! so memory per request does not depend on the body's size and a slow
//! reader slows the writer down (back-pressure through both connections).
//! Boxing costs one allocation per body and lets the gateway's own small
//! answers (errors, metrics) share the type.
//!
//! [`Logged`] counts the bytes of a response body as they pass and emits
//! the request's access-log line when the body ends — or when it is
//! dropped unfinished, because the client went away — so the line carries
//! the real size and total time, also for long streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Errors a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the gateway handles.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body received from hyper, passed on unread.
pub fn stream<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Called once when a logged body ends, with the bytes it carried and
/// whether it reached its end (false: dropped early or failed).
pub type OnEnd = Box<dyn FnOnce(u64, bool) + Send>;

/// A response body that reports its size and end (see the module docs).
pub struct Logged {
    inner: Body,
    bytes: u64,
    on_end: Option<OnEnd>,
}

impl Logged {
    /// Wraps `inner`; `on_end` runs when it ends or is dropped.
    pub fn new(inner: Body, on_end: OnEnd) -> Logged {
        let mut logged = Logged {
            inner,
            bytes: 0,
            on_end: Some(on_end),
        };
        // An empty body may never be polled (HEAD, 204): report it now.
        if logged.inner.is_end_stream() {
            logged.finish(true);
        }
        logged
    }

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes, complete);
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn logged_reports_size_once_at_the_end() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = |seen: &Arc<Mutex<Vec<(u64, bool)>>>| -> OnEnd {
            let seen = seen.clone();
            Box::new(move |n, done| seen.lock().unwrap().push((n, done)))
        };
        let body = Logged::new(full("hello"), log(&seen));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        let body = Logged::new(empty(), log(&seen));
        drop(body);
        // Dropped before its end: reported as incomplete.
        let chunks = futures_stream(&["ab", "cd"]);
        let mut body = Logged::new(chunks, log(&seen));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        drop(body);
        assert_eq!(*seen.lock().unwrap(), [(5, true), (0, true), (2, false)]);
    }

    /// A body of several chunks, each its own frame.
    fn futures_stream(chunks: &[&'static str]) -> Body {
        struct Chunks(std::collections::VecDeque<&'static str>);
        impl HttpBody for Chunks {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from(c)))))
            }
        }
        Chunks(chunks.iter().copied().collect()).boxed_unsync()
    }
}
