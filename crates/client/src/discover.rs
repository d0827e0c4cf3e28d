//! Discovery: the live set of a service's instances.
//!
//! `registry.discover("user.rpc").await` loads the instances with one
//! prefix read, then a background task watches the prefix from the next
//! revision and applies every change. When the watch breaks (registry down,
//! connection lost) the task keeps the cached list untouched and retries
//! with backoff; once it can read again it reloads and diffs, so every
//! difference is reported as a change and nothing is lost. A compaction
//! that overtakes the watch is handled the same way. The cache is never
//! emptied because the registry is unreachable.
//!
//! [`Discovery::instances`] is a cheap snapshot (`Arc<[Instance]>`), taken
//! without holding any lock a caller could block; [`Discovery::changes`]
//! streams what was added, removed or updated.

use std::collections::BTreeMap;
use std::sync::Arc;

use roster_proto::etcdserverpb::{watch_request, RangeRequest, WatchCreateRequest, WatchRequest};
use roster_proto::mvccpb::event::EventType;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::instance::Instance;
use crate::registry::Registry;

/// One change to the instance set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new instance.
    Added(Instance),
    /// An instance left.
    Removed(Instance),
    /// An instance's record changed.
    Updated {
        /// The record before.
        old: Instance,
        /// The record now.
        new: Instance,
    },
}

/// The live instance set of one service. Dropping it stops the watching.
pub struct Discovery {
    snapshot: watch::Receiver<Arc<[Instance]>>,
    changes: broadcast::Sender<Change>,
    task: tokio::task::JoinHandle<()>,
}

impl Discovery {
    /// The current instances, ordered by key.
    pub fn instances(&self) -> Arc<[Instance]> {
        self.snapshot.borrow().clone()
    }

    /// Changes from now on.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// A receiver that is notified whenever the set changes.
    pub fn updates(&self) -> watch::Receiver<Arc<[Instance]>> {
        self.snapshot.clone()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registry {
    /// Loads `service`'s instances and keeps following them.
    pub async fn discover(&self, service: &str) -> Result<Discovery> {
        let follower = Follower {
            client: self.client.clone(),
            prefix: self.service_prefix(service),
        };
        let (cache, rev) = follower.load().await?;
        let (snap_tx, snapshot) = watch::channel(snapshot_of(&cache));
        let (changes, _) = broadcast::channel(1024);
        let task = tokio::spawn(follower.run(cache, rev, snap_tx, changes.clone()));
        Ok(Discovery {
            snapshot,
            changes,
            task,
        })
    }
}

type Cache = BTreeMap<Vec<u8>, Instance>;

fn snapshot_of(cache: &Cache) -> Arc<[Instance]> {
    cache.values().cloned().collect()
}

struct Follower {
    client: Client,
    prefix: String,
}

/// The end of the key range of everything under `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Follower {
    async fn load(&self) -> Result<(Cache, i64)> {
        let key = self.prefix.clone().into_bytes();
        let req = RangeRequest {
            range_end: prefix_end(&key),
            key,
            ..Default::default()
        };
        let resp = self.client.unary(self.client.kv().range(req)).await?;
        let rev = resp.header.map_or(0, |h| h.revision);
        let cache = resp
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let i = Instance::parse(&self.prefix, &kv.key, &kv.value)?;
                Some((kv.key, i))
            })
            .collect();
        Ok((cache, rev))
    }

    async fn run(
        self,
        mut cache: Cache,
        mut rev: i64,
        snapshot: watch::Sender<Arc<[Instance]>>,
        changes: broadcast::Sender<Change>,
    ) {
        let backoff = self.client.options().backoff;
        let mut attempt = 0;
        loop {
            match self.follow(&mut cache, &mut rev, &snapshot, &changes).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(prefix = %self.prefix, error = %e, "discovery watch broke")
                }
            }
            // Resynchronise: reload and report the difference. Until that
            // works, the cache stays as it was.
            loop {
                tokio::time::sleep(backoff.delay(attempt)).await;
                match self.load().await {
                    Ok((fresh, r)) => {
                        attempt = 0;
                        let diff = diff(&cache, &fresh);
                        cache = fresh;
                        rev = r;
                        if !diff.is_empty() {
                            snapshot.send_replace(snapshot_of(&cache));
                            for c in diff {
                                let _ = changes.send(c);
                            }
                        }
                        break;
                    }
                    Err(_) => attempt = (attempt + 1).min(16),
                }
            }
        }
    }

    /// Applies watch events until the watch ends (error, cancel,
    /// compaction). `rev` is the last revision the cache reflects.
    async fn follow(
        &self,
        cache: &mut Cache,
        rev: &mut i64,
        snapshot: &watch::Sender<Arc<[Instance]>>,
        changes: &broadcast::Sender<Change>,
    ) -> Result<()> {
        let key = self.prefix.clone().into_bytes();
        let create = WatchCreateRequest {
            range_end: prefix_end(&key),
            key,
            start_revision: *rev + 1,
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(1);
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| Error::Closed)?;
        let mut stream = self
            .client
            .watch()
            .watch(ReceiverStream::new(rx))
            .await?
            .into_inner();
        while let Some(resp) = stream.message().await? {
            if resp.canceled || resp.compact_revision != 0 {
                // Compacted past us (or refused): reload instead.
                return Ok(());
            }
            let mut out = Vec::new();
            for e in resp.events {
                let Some(kv) = e.kv else { continue };
                *rev = (*rev).max(kv.mod_revision);
                if e.r#type == EventType::Delete as i32 {
                    if let Some(old) = cache.remove(&kv.key) {
                        out.push(Change::Removed(old));
                    }
                } else if let Some(new) = Instance::parse(&self.prefix, &kv.key, &kv.value) {
                    match cache.insert(kv.key, new.clone()) {
                        Some(old) if old != new => out.push(Change::Updated { old, new }),
                        Some(_) => {}
                        None => out.push(Change::Added(new)),
                    }
                }
            }
            if !out.is_empty() {
                snapshot.send_replace(snapshot_of(cache));
                for c in out {
                    let _ = changes.send(c);
                }
            }
        }
        Ok(())
    }
}

/// What turns `old` into `new`.
fn diff(old: &Cache, new: &Cache) -> Vec<Change> {
    let mut out = Vec::new();
    for (k, o) in old {
        match new.get(k) {
            None => out.push(Change::Removed(o.clone())),
            Some(n) if n != o => out.push(Change::Updated {
                old: o.clone(),
                new: n.clone(),
            }),
            Some(_) => {}
        }
    }
    for (k, n) in new {
        if !old.contains_key(k) {
            out.push(Change::Added(n.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_reports_every_difference() {
        let i = |id: &str, addr: &str| Instance::new(id, addr);
        let old: Cache = [
            (b"a".to_vec(), i("a", "1:1")),
            (b"b".to_vec(), i("b", "2:2")),
            (b"c".to_vec(), i("c", "3:3")),
        ]
        .into();
        let new: Cache = [
            (b"a".to_vec(), i("a", "1:1")),
            (b"b".to_vec(), i("b", "2:9")),
            (b"d".to_vec(), i("d", "4:4")),
        ]
        .into();
        let got = diff(&old, &new);
        assert_eq!(
            got,
            vec![
                Change::Updated {
                    old: i("b", "2:2"),
                    new: i("b", "2:9")
                },
                Change::Removed(i("c", "3:3")),
                Change::Added(i("d", "4:4")),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
