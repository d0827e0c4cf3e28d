//! The resumable watch: a watch that outlives its connection.
//!
//! An etcd watch stream dies with its connection. [`Client::watch_resumable`]
//! hides that: a background task remembers the next revision it owes the
//! caller and, when the stream breaks, reopens it with backoff starting from
//! exactly that revision, so events are delivered once each, in revision
//! order, across any number of reconnects. The revision only moves forward
//! on what the server has confirmed: after a batch of events it is the last
//! event's revision plus one; after a progress notification (requested on
//! every watch) it is the notified revision plus one, which keeps a quiet
//! watcher's revision close to the present and out of reach of compaction.
//!
//! Two things cannot be resumed, and both end the watch with a final
//! [`WatchUpdate`]:
//! - [`WatchUpdate::Compacted`]: the history from the next revision on was
//!   compacted away while the watcher was behind;
//! - [`WatchUpdate::Rewound`]: the server's revision is below what the
//!   watcher has already seen, so the server lost history (a cluster
//!   restored from an old backup, or wiped).
//!
//! Either way the caller must read the current state and watch again from
//! the revision of that read; [`crate::Discovery`] does exactly that.
//!
//! The task feeds a bounded channel: a consumer that stops reading stops the
//! stream being read, and the server buffers or catches up from storage
//! instead. Dropping the [`Watcher`] ends the task.

use roster_proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request, WatchCreateRequest, WatchRequest,
};
use roster_proto::mvccpb::Event;
pub use roster_proto::prefix_end;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::{Error, Result};

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    key: Vec<u8>,
    range_end: Vec<u8>,
    start_revision: i64,
    prev_kv: bool,
    filters: Vec<i32>,
}

impl WatchSpec {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        WatchSpec {
            key: key.into(),
            ..Default::default()
        }
    }

    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        WatchSpec {
            range_end: prefix_end(&key),
            key,
            ..Default::default()
        }
    }

    /// Starts at `revision` (inclusive) instead of the present; the usual
    /// choice is one past the revision of a read, so nothing falls between
    /// the read and the watch.
    pub fn from_revision(mut self, revision: i64) -> Self {
        self.start_revision = revision;
        self
    }

    /// Asks for each event's previous key-value.
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// Leaves out puts (only deletes are delivered).
    pub fn no_put(mut self) -> Self {
        self.filters.push(FilterType::Noput as i32);
        self
    }

    /// Leaves out deletes (only puts are delivered).
    pub fn no_delete(mut self) -> Self {
        self.filters.push(FilterType::Nodelete as i32);
        self
    }
}

/// What a [`Watcher`] delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// Events in revision order, none seen before.
    Events {
        /// The server's revision when it sent them.
        revision: i64,
        /// The events.
        events: Vec<Event>,
    },
    /// Final: the revisions the watcher still needed were compacted.
    Compacted {
        /// The oldest revision the server still has.
        compact_revision: i64,
    },
    /// Final: the server is at a revision older than one already seen.
    Rewound {
        /// The server's revision.
        revision: i64,
    },
}

impl WatchUpdate {
    /// Whether this is the last update the watcher delivers.
    pub fn is_final(&self) -> bool {
        !matches!(self, WatchUpdate::Events { .. })
    }
}

/// A watch that reconnects by itself; see the module docs.
pub struct Watcher {
    updates: mpsc::Receiver<WatchUpdate>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// The next update; `None` after a final one.
    pub async fn next(&mut self) -> Option<WatchUpdate> {
        self.updates.recv().await
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Starts a watch that resumes after reconnects from the last revision
    /// it delivered. It connects in the background: a watch started while
    /// the registry is down begins delivering once it is back.
    pub fn watch_resumable(&self, spec: WatchSpec) -> Watcher {
        let (tx, updates) = mpsc::channel(64);
        let task = tokio::spawn(
            Resumer {
                client: self.clone(),
                next: spec.start_revision,
                spec,
                tx,
            }
            .run(),
        );
        Watcher { updates, task }
    }
}

/// The background task's state.
struct Resumer {
    client: Client,
    spec: WatchSpec,
    /// The first revision not yet delivered; 0 until the first watch is
    /// created when the spec says "from now".
    next: i64,
    tx: mpsc::Sender<WatchUpdate>,
}

/// How one stream ended when it did not just break.
enum End {
    /// A final update to pass on.
    Final(WatchUpdate),
    /// The consumer is gone.
    Dropped,
}

impl Resumer {
    async fn run(mut self) {
        let backoff = self.client.options().backoff;
        let mut attempt = 0;
        loop {
            match self.stream(&mut attempt).await {
                Ok(End::Final(update)) => {
                    let _ = self.tx.send(update).await;
                    return;
                }
                Ok(End::Dropped) => return,
                Err(e) => {
                    let key = String::from_utf8_lossy(&self.spec.key);
                    tracing::debug!(%key, next = self.next, error = %e, "watch broke; resuming");
                }
            }
            tokio::time::sleep(backoff.delay(attempt)).await;
            attempt = (attempt + 1).min(16);
        }
    }

    /// Runs one watch stream until it breaks (Err) or ends for good.
    async fn stream(&mut self, attempt: &mut u32) -> Result<End> {
        let create = WatchCreateRequest {
            key: self.spec.key.clone(),
            range_end: self.spec.range_end.clone(),
            start_revision: self.next,
            progress_notify: true,
            filters: self.spec.filters.clone(),
            prev_kv: self.spec.prev_kv,
            ..Default::default()
        };
        // The request sender must outlive the stream: dropping it would
        // half-close the stream, which servers take as the end of it.
        let (req_tx, req_rx) = mpsc::channel(1);
        req_tx
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
            })
            .await
            .map_err(|_| Error::Closed)?;
        let mut api = self.client.watch();
        let open = api.watch(ReceiverStream::new(req_rx));
        let mut answers = self.client.unary(open).await?;
        while let Some(resp) = answers.message().await? {
            let header_rev = resp.header.as_ref().map_or(0, |h| h.revision);
            if resp.compact_revision != 0 {
                return Ok(End::Final(WatchUpdate::Compacted {
                    compact_revision: resp.compact_revision,
                }));
            }
            if resp.canceled {
                // Refused or cut by the server (e.g. no leader for a
                // moment): try again like a broken stream.
                return Err(Error::Canceled(resp.cancel_reason));
            }
            if resp.created {
                *attempt = 0;
                if self.next == 0 {
                    self.next = header_rev + 1;
                } else if header_rev + 1 < self.next {
                    return Ok(End::Final(WatchUpdate::Rewound {
                        revision: header_rev,
                    }));
                }
            }
            if let Some(last) = resp.events.last().and_then(|e| e.kv.as_ref()) {
                self.next = last.mod_revision + 1;
                let update = WatchUpdate::Events {
                    revision: header_rev,
                    events: resp.events,
                };
                if self.tx.send(update).await.is_err() {
                    return Ok(End::Dropped);
                }
            } else if !resp.created {
                // A progress notification: everything up to the header's
                // revision has been delivered.
                self.next = self.next.max(header_rev + 1);
            }
        }
        Err(Error::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_builders_fill_the_request_fields() {
        let s = WatchSpec::prefix("svc/")
            .from_revision(7)
            .prev_kv()
            .no_put();
        assert_eq!(
            (s.key.as_slice(), s.range_end.as_slice()),
            (&b"svc/"[..], &b"svc0"[..])
        );
        assert_eq!(s.start_revision, 7);
        assert!(s.prev_kv);
        assert_eq!(s.filters, vec![FilterType::Noput as i32]);
        assert!(WatchSpec::key("k").range_end.is_empty());
    }
}
