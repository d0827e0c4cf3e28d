//! Watch: delivering changes to watchers, in revision order, each once.
//!
//! The [`hub::Hub`] holds every watcher of every stream. After each durable
//! batch the writer hands it the batch's events; the hub delivers them to
//! the watchers that are *synced* (caught up) by a non-blocking send into
//! their stream's bounded queue. A watcher whose queue is full, or that
//! starts at an old revision, is *unsynced*: it leaves the hub's key index,
//! so that publishing no longer visits it, and its stream's catch-up task
//! reads history from the store in bounded steps, awaiting queue space,
//! until the watcher has seen everything the hub has published; then it is
//! synced again, back in the index. So a slow consumer costs a bounded
//! queue and a cursor, never an unbounded buffer, and a crowd of stalled
//! consumers costs a write nothing — etcd's synced/unsynced design. The
//! bounds on catch-up (bytes per step, bytes queued, reads at once) are
//! in [`stream`] and [`hub::Queued`].
//!
//! Exactly-once rests on one cursor per watcher, `next_rev`: the lowest
//! revision it has not been sent. Both paths only send events at or above
//! it and move it past what they sent, and a watcher switches from catch-up
//! to live delivery under the hub lock, only when its cursor is past the
//! hub's last published revision. Since the store publishes a batch to
//! readers before the hub sees it, catch-up can never fall short of the hub.
//!
//! Events travel encoded: the hub encodes each event once per batch and
//! every watcher's response shares those bytes ([`server`] explains the
//! wire trick that lets etcd clients read them as a plain `WatchResponse`).

pub mod hub;
pub mod index;
pub mod server;
pub mod stream;
