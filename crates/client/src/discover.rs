//! Discovery: the live set of a service's instances.
//!
//! `registry.discover("user.rpc").await` loads the instances with one
//! prefix read, then a background task follows the prefix with a resumable
//! watch ([`crate::watch`]) from the revision after the read, applying every
//! change. When the connection breaks (registry down, network cut) the
//! cached list stays untouched while the watch retries with backoff; once
//! it is back, the watch resumes from the last revision applied, so the
//! changes made meanwhile arrive as ordinary events and nothing is lost or
//! repeated. When the watch cannot resume — the history it needs was
//! compacted, or the server lost it — the task reloads the prefix, diffs the
//! fresh list against the cache so every difference is still reported as a
//! change, and watches again from the reload. The cache is never emptied
//! because the registry is unreachable.
//!
//! [`Discovery::instances`] is a cheap snapshot (`Arc<[Instance]>`), taken
//! without holding any lock a caller could block; [`Discovery::changes`]
//! streams what was added, removed or updated.

use std::collections::BTreeMap;
use std::sync::Arc;

use roster_proto::etcdserverpb::RangeRequest;
use roster_proto::mvccpb::event::EventType;
use roster_proto::mvccpb::Event;
use tokio::sync::{broadcast, watch};

use crate::client::Client;
use crate::error::Result;
use crate::instance::Instance;
use crate::registry::Registry;
use crate::watch::{prefix_end, WatchSpec, WatchUpdate};

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

    /// Follows the prefix for as long as the handle lives: a resumable
    /// watch from the revision after the load carries every change across
    /// reconnects; when it cannot resume (compaction, a server that lost
    /// history) the cache is reloaded and diffed, and watching starts again
    /// from the reload.
    async fn run(
        self,
        mut cache: Cache,
        mut rev: i64,
        snapshot: watch::Sender<Arc<[Instance]>>,
        changes: broadcast::Sender<Change>,
    ) {
        let publish = |cache: &Cache, out: Vec<Change>| {
            if !out.is_empty() {
                snapshot.send_replace(snapshot_of(cache));
                for c in out {
                    let _ = changes.send(c);
                }
            }
        };
        loop {
            let spec = WatchSpec::prefix(self.prefix.clone()).from_revision(rev + 1);
            let mut watcher = self.client.watch_resumable(spec);
            while let Some(update) = watcher.next().await {
                match update {
                    WatchUpdate::Events { events, .. } => {
                        let out = self.apply(&mut cache, events);
                        publish(&cache, out);
                    }
                    gap => {
                        tracing::info!(prefix = %self.prefix, ?gap, "discovery watch cannot resume; reloading");
                    }
                }
            }
            let (fresh, r) = self.reload().await;
            let out = diff(&cache, &fresh);
            cache = fresh;
            rev = r;
            publish(&cache, out);
        }
    }

    /// Loads until a load succeeds; until then the cache stays as it was.
    async fn reload(&self) -> (Cache, i64) {
        let backoff = self.client.options().backoff;
        let mut attempt = 0;
        loop {
            match self.load().await {
                Ok(loaded) => return loaded,
                Err(e) => {
                    tracing::debug!(prefix = %self.prefix, error = %e, "discovery reload failed");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt = (attempt + 1).min(16);
                }
            }
        }
    }

    /// Applies watch events to the cache; returns the changes they made.
    fn apply(&self, cache: &mut Cache, events: Vec<Event>) -> Vec<Change> {
        let mut out = Vec::new();
        for e in events {
            let Some(kv) = e.kv else { continue };
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
            } else if let Some(old) = cache.remove(&kv.key) {
                // Overwritten with something that is not an instance record.
                out.push(Change::Removed(old));
            }
        }
        out
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
}
