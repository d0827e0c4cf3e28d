//! Upstreams: the live instances of one service and their health.
//!
//! One [`Upstream`] exists per service, shared by every route that sends
//! traffic to it, so a service routed from three prefixes is discovered
//! once and an instance ejected for failing one route's calls is out for
//! all of them. It holds
//!
//! - the current instance list, an `Arc<[Instance]>` snapshot in a watch
//!   channel, fed by a roster-client [`Discovery`](roster_client::Discovery)
//!   (or, in tests and registry-less setups, by a [`StaticSource`]);
//! - the [`HealthTable`] of its instances, behind a short-held lock.
//!
//! Discovery runs in a task owned by the upstream: it keeps trying to load
//! the service while the registry is unreachable (requests get 503 until
//! then), after which roster-client keeps the list current across registry
//! outages. Dropping the last reference — a reload removed the service's
//! last route and the old table's requests finished — stops it.
//!
//! [`Upstream::candidates`] is the per-request question "who may I send
//! this to?": every instance not out of rotation and not already tried by
//! this request. If that leaves nobody while instances remain untried, it
//! answers with those instead (fail open): when every instance looks bad,
//! a flapping health signal or an outage shared by all instances is likelier
//! than each of them being broken, and refusing all traffic for a cool-down
//! would turn a partial failure into a total one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use roster_client::{Instance, Registry};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::EjectionConfig;
use crate::health::{HealthTable, Transition};

/// Where instance lists come from.
#[derive(Clone)]
pub enum Source {
    /// Discovery in a Roster or etcd registry.
    Registry(Registry),
    /// Lists set by hand ([`StaticSource::set`]).
    Static(StaticSource),
}

/// Instance lists set in-process, for tests and fixed setups: every
/// upstream of a service follows the list last set for it.
#[derive(Clone, Default)]
pub struct StaticSource {
    services: Arc<Mutex<HashMap<String, Snapshots>>>,
}

/// The sending side of a service's instance snapshots.
type Snapshots = watch::Sender<Arc<[Instance]>>;

impl StaticSource {
    /// A source with no service listed.
    pub fn new() -> StaticSource {
        StaticSource::default()
    }

    /// Replaces `service`'s instances; upstreams see the change at once.
    pub fn set(&self, service: &str, instances: Vec<Instance>) {
        self.sender(service).send_replace(instances.into());
    }

    fn sender(&self, service: &str) -> Snapshots {
        self.services
            .lock()
            .entry(service.to_string())
            .or_insert_with(|| watch::channel(Arc::from(Vec::new())).0)
            .clone()
    }
}

/// Whom a request may be sent to, as [`Upstream::candidates`] answers.
pub enum Candidates {
    /// The service has no instance (or has not been loaded yet).
    NoInstance,
    /// Every instance was tried already.
    Exhausted,
    /// Choose among these.
    Some(Arc<[Instance]>),
}

/// One service's live instances and their health.
pub struct Upstream {
    service: Arc<str>,
    instances: watch::Receiver<Arc<[Instance]>>,
    loaded: Arc<AtomicBool>,
    health: Mutex<(HealthTable, Arc<[Instance]>)>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    /// Starts following `service` in `source`; must be called in a tokio
    /// runtime. The list is empty until discovery has loaded it.
    pub fn start(source: &Source, service: &str, policy: EjectionConfig) -> Arc<Upstream> {
        let loaded = Arc::new(AtomicBool::new(false));
        let (instances, task) = match source {
            Source::Static(s) => {
                loaded.store(true, Ordering::Relaxed);
                (s.sender(service).subscribe(), None)
            }
            Source::Registry(registry) => {
                let (tx, rx) = watch::channel(Arc::from(Vec::new()));
                let task = tokio::spawn(follow(
                    registry.clone(),
                    service.to_string(),
                    tx,
                    loaded.clone(),
                ));
                (rx, Some(task))
            }
        };
        Arc::new(Upstream {
            service: service.into(),
            instances,
            loaded,
            health: Mutex::new((HealthTable::new(policy), Arc::from(Vec::new()))),
            task,
        })
    }

    /// The service's name.
    pub fn service(&self) -> &Arc<str> {
        &self.service
    }

    /// The current instances, in key order.
    pub fn instances(&self) -> Arc<[Instance]> {
        self.instances.borrow().clone()
    }

    /// Whether discovery has loaded the service at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed)
    }

    /// Waits until the first load, at most `limit`; true if loaded.
    pub async fn wait_loaded(&self, limit: Duration) -> bool {
        let mut rx = self.instances.clone();
        let wait = async {
            while !self.loaded() {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.loaded()
    }

    /// Replaces the ejection policy (on reload).
    pub fn set_policy(&self, policy: EjectionConfig) {
        self.health.lock().0.set_policy(policy);
    }

    /// The instances a request that already tried `tried` (ids) may go to
    /// next (see the module docs for the fail-open rule).
    pub fn candidates(&self, tried: &[String]) -> Candidates {
        let all = self.instances();
        if all.is_empty() {
            return Candidates::NoInstance;
        }
        let now = Instant::now();
        let mut guard = self.health.lock();
        let (health, seen) = &mut *guard;
        if !Arc::ptr_eq(seen, &all) {
            // The set changed: forget instances that left.
            health.retain(&all);
            *seen = all.clone();
        }
        if tried.is_empty() && health.all_in() {
            return Candidates::Some(all);
        }
        let untried = |i: &&Instance| !tried.contains(&i.id);
        let fresh: Vec<Instance> = all
            .iter()
            .filter(untried)
            .filter(|i| !health.is_out(&i.id, now))
            .cloned()
            .collect();
        if !fresh.is_empty() {
            return Candidates::Some(fresh.into());
        }
        let rest: Vec<Instance> = all.iter().filter(untried).cloned().collect();
        if rest.is_empty() {
            Candidates::Exhausted
        } else {
            tracing::debug!(service = %self.service, "every untried instance is out of rotation; trying them anyway");
            Candidates::Some(rest.into())
        }
    }

    /// Records a call's outcome on instance `id` for passive ejection.
    pub fn report(&self, id: &str, ok: bool) -> Option<Transition> {
        let t = self.health.lock().0.report(id, ok, Instant::now());
        self.log(id, t);
        t
    }

    /// Records an active check's result on instance `id`.
    pub fn report_check(
        &self,
        check: &Arc<str>,
        id: &str,
        ok: bool,
        threshold: u32,
    ) -> Option<Transition> {
        let t = self.health.lock().0.report_check(check, id, ok, threshold);
        self.log(id, t);
        t
    }

    /// Forgets all active-check state (the checks were replaced).
    pub fn clear_checks(&self) {
        self.health.lock().0.clear_checks();
    }

    /// Ids of the instances out of rotation now.
    pub fn out_ids(&self) -> Vec<String> {
        self.health.lock().0.out_ids(Instant::now())
    }

    fn log(&self, id: &str, t: Option<Transition>) {
        match t {
            Some(Transition::Ejected) => {
                tracing::warn!(service = %self.service, instance = id, "instance ejected after consecutive failures")
            }
            Some(Transition::CheckDown) => {
                tracing::warn!(service = %self.service, instance = id, "instance failed its health check")
            }
            Some(t) => {
                tracing::info!(service = %self.service, instance = id, ?t, "instance back in rotation")
            }
            None => {}
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Discovers `service` (retrying while the registry is unreachable) and
/// copies every snapshot into `tx` for as long as the upstream lives.
async fn follow(
    registry: Registry,
    service: String,
    tx: watch::Sender<Arc<[Instance]>>,
    loaded: Arc<AtomicBool>,
) {
    let backoff = registry.client().options().backoff;
    let mut attempt = 0;
    let discovery = loop {
        match registry.discover(&service).await {
            Ok(d) => break d,
            Err(e) => {
                tracing::warn!(%service, error = %e, "cannot discover service yet; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt = (attempt + 1).min(16);
            }
        }
    };
    let mut updates = discovery.updates();
    loop {
        let list = updates.borrow_and_update().clone();
        tracing::info!(%service, instances = list.len(), "instance set");
        loaded.store(true, Ordering::Relaxed);
        tx.send_replace(list);
        if updates.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(c: Candidates) -> Vec<String> {
        match c {
            Candidates::Some(list) => list.iter().map(|i| i.id.clone()).collect(),
            Candidates::NoInstance => vec!["<none>".into()],
            Candidates::Exhausted => vec!["<exhausted>".into()],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_instances_leave_the_candidates_until_their_cool_down_ends() {
        let source = StaticSource::new();
        let up = Upstream::start(
            &Source::Static(source.clone()),
            "web",
            EjectionConfig::default(),
        );
        assert_eq!(ids(up.candidates(&[])), ["<none>"]);
        source.set(
            "web",
            vec![
                Instance::new("a", "127.0.0.1:1"),
                Instance::new("b", "127.0.0.1:2"),
            ],
        );
        assert_eq!(ids(up.candidates(&[])), ["a", "b"]);
        assert_eq!(ids(up.candidates(&["a".into()])), ["b"]);
        assert_eq!(
            ids(up.candidates(&["a".into(), "b".into()])),
            ["<exhausted>"]
        );
        for _ in 0..3 {
            up.report("a", false);
        }
        assert_eq!(ids(up.candidates(&[])), ["b"]);
        assert_eq!(up.out_ids(), ["a"]);
        // With b tried, the ejected a is still offered: fail open.
        assert_eq!(ids(up.candidates(&["b".into()])), ["a"]);
        tokio::time::advance(EjectionConfig::default().cool_down).await;
        assert_eq!(ids(up.candidates(&[])), ["a", "b"]);
        // Half-open: one failure ejects it again.
        up.report("a", false);
        assert_eq!(ids(up.candidates(&[])), ["b"]);
        // The instance leaves the registry: its state goes with it.
        source.set("web", vec![Instance::new("b", "127.0.0.1:2")]);
        assert_eq!(ids(up.candidates(&[])), ["b"]);
        assert!(up.out_ids().is_empty());
    }
}
