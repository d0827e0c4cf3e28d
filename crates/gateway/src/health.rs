//! Instance health: which instances of a service are out of rotation, and
//! why.
//!
//! Two signals take an instance out:
//!
//! - **Passive ejection**, from real traffic. Every proxied call reports
//!   its outcome; a connection failure, a timeout or a 5xx answer (but
//!   501 and 505) is a failure, anything else a success. After `consecutive_failures`
//!   failures in a row the instance is ejected for `cool_down`. When the
//!   cool-down ends it is eligible again but *half-open*: its failure count
//!   is not reset, so the very next failure ejects it again at once, while
//!   one success clears everything. Failures reported while it is ejected
//!   (calls that were already in flight) do not extend the cool-down.
//! - **Active checks**, optional per route ([`crate::checks`]): a check
//!   that fails `unhealthy_threshold` times in a row marks the instance
//!   down until that check passes once. Each check keeps its own count, so
//!   two routes checking the same service do not reset each other.
//!
//! The table is pure — time is an argument — so the state machine is tested
//! without a clock; [`crate::upstream`] owns one per service behind a lock
//! and passes tokio's time, which tests can pause.
//!
//! State is keyed by instance id and forgotten when the id leaves the
//! discovered set, so an instance that re-registers under a new id starts
//! clean, and the table never grows past the live set.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::EjectionConfig;

/// Something worth logging that a report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Passive ejection: the instance is out for the cool-down.
    Ejected,
    /// A success cleared an instance that had failed enough to be ejected.
    Recovered,
    /// An active check took the instance out.
    CheckDown,
    /// An active check brought the instance back.
    CheckUp,
}

/// Per-instance state.
#[derive(Debug, Default)]
struct Entry {
    /// Consecutive failed calls.
    failures: u32,
    /// Set once ejected; kept past its time (half-open) until a success.
    ejected_until: Option<Instant>,
    /// (check name, consecutive failures, down) per active check.
    checks: Vec<(Arc<str>, u32, bool)>,
}

impl Entry {
    fn out(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| t > now) || self.checks.iter().any(|c| c.2)
    }

    /// Whether this entry might be out, so the fast path must look.
    fn flagged(&self) -> bool {
        self.ejected_until.is_some() || self.checks.iter().any(|c| c.2)
    }
}

/// The health of one service's instances.
#[derive(Debug)]
pub struct HealthTable {
    policy: EjectionConfig,
    entries: HashMap<String, Entry>,
    /// How many entries are [`Entry::flagged`]; zero means nobody is out.
    flagged: usize,
}

impl HealthTable {
    /// An empty table applying `policy`.
    pub fn new(policy: EjectionConfig) -> HealthTable {
        HealthTable {
            policy,
            entries: HashMap::new(),
            flagged: 0,
        }
    }

    /// Replaces the ejection policy (on reload); current ejections keep
    /// their end time.
    pub fn set_policy(&mut self, policy: EjectionConfig) {
        self.policy = policy;
    }

    /// Whether no instance can be out of rotation: the common case, which
    /// lets a pick skip per-instance lookups.
    pub fn all_in(&self) -> bool {
        self.flagged == 0
    }

    /// Whether instance `id` is out of rotation at `now`.
    pub fn is_out(&self, id: &str, now: Instant) -> bool {
        self.flagged > 0 && self.entries.get(id).is_some_and(|e| e.out(now))
    }

    /// Records the outcome of a proxied call.
    pub fn report(&mut self, id: &str, ok: bool, now: Instant) -> Option<Transition> {
        if ok {
            let e = self.entries.get_mut(id)?;
            let was_flagged = e.flagged();
            let recovered = e.ejected_until.is_some();
            e.failures = 0;
            e.ejected_until = None;
            self.reflag(was_flagged, id);
            return recovered.then_some(Transition::Recovered);
        }
        let threshold = self.policy.consecutive_failures;
        let cool_down = self.policy.cool_down;
        let e = self.entries.entry(id.to_string()).or_default();
        let was_flagged = e.flagged();
        e.failures = e.failures.saturating_add(1);
        let ejected_now = e.ejected_until.is_some_and(|t| t > now);
        let eject = threshold > 0 && e.failures >= threshold && !ejected_now;
        if eject {
            e.ejected_until = Some(now + cool_down);
        }
        self.reflag(was_flagged, id);
        eject.then_some(Transition::Ejected)
    }

    /// Records the result of active check `check` on instance `id`; the
    /// check marks it down after `threshold` failures in a row.
    pub fn report_check(
        &mut self,
        check: &Arc<str>,
        id: &str,
        ok: bool,
        threshold: u32,
    ) -> Option<Transition> {
        let e = self.entries.entry(id.to_string()).or_default();
        let was_flagged = e.flagged();
        let slot = match e.checks.iter().position(|c| c.0 == *check) {
            Some(i) => i,
            None => {
                e.checks.push((check.clone(), 0, false));
                e.checks.len() - 1
            }
        };
        let c = &mut e.checks[slot];
        let transition = if ok {
            c.1 = 0;
            std::mem::replace(&mut c.2, false).then_some(Transition::CheckUp)
        } else {
            c.1 = c.1.saturating_add(1);
            let down = c.1 >= threshold.max(1);
            (down && !std::mem::replace(&mut c.2, down)).then_some(Transition::CheckDown)
        };
        self.reflag(was_flagged, id);
        transition
    }

    /// Forgets every active check's state (the checks were replaced).
    pub fn clear_checks(&mut self) {
        for e in self.entries.values_mut() {
            e.checks.clear();
        }
        self.recount();
    }

    /// Forgets instances whose ids are not in `live`.
    pub fn retain(&mut self, live: &[roster_client::Instance]) {
        self.entries
            .retain(|id, _| live.iter().any(|i| i.id == *id));
        self.recount();
    }

    /// Ids currently out of rotation at `now`, for the admin page.
    pub fn out_ids(&self, now: Instant) -> Vec<String> {
        let mut ids: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.out(now))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn reflag(&mut self, was: bool, id: &str) {
        let now = self.entries.get(id).is_some_and(Entry::flagged);
        match (was, now) {
            (false, true) => self.flagged += 1,
            (true, false) => self.flagged -= 1,
            _ => {}
        }
    }

    fn recount(&mut self) {
        self.flagged = self.entries.values().filter(|e| e.flagged()).count();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const COOL: Duration = Duration::from_secs(10);

    fn table() -> HealthTable {
        HealthTable::new(EjectionConfig {
            consecutive_failures: 3,
            cool_down: COOL,
        })
    }

    #[test]
    fn ejects_after_consecutive_failures_and_half_opens_after_cool_down() {
        let t0 = Instant::now();
        let mut h = table();
        assert!(h.all_in());
        assert_eq!(h.report("a", false, t0), None);
        // A success in between resets the count.
        assert_eq!(h.report("a", true, t0), None);
        assert_eq!(h.report("a", false, t0), None);
        assert_eq!(h.report("a", false, t0), None);
        assert!(!h.is_out("a", t0));
        assert_eq!(h.report("a", false, t0), Some(Transition::Ejected));
        assert!(h.is_out("a", t0));
        assert!(!h.is_out("b", t0));
        // Late failures of calls already in flight do not extend it.
        assert_eq!(h.report("a", false, t0 + COOL / 2), None);
        assert!(h.is_out("a", t0 + COOL - Duration::from_millis(1)));
        // Cool-down over: eligible, but one more failure ejects again.
        let t1 = t0 + COOL;
        assert!(!h.is_out("a", t1));
        assert_eq!(h.report("a", false, t1), Some(Transition::Ejected));
        assert!(h.is_out("a", t1));
        // After the second cool-down, one success clears it for good.
        let t2 = t1 + COOL;
        assert_eq!(h.report("a", true, t2), Some(Transition::Recovered));
        assert!(h.all_in());
        assert_eq!(h.report("a", false, t2), None);
        assert!(!h.is_out("a", t2));
    }

    #[test]
    fn zero_threshold_never_ejects() {
        let t0 = Instant::now();
        let mut h = HealthTable::new(EjectionConfig {
            consecutive_failures: 0,
            cool_down: COOL,
        });
        for _ in 0..100 {
            assert_eq!(h.report("a", false, t0), None);
        }
        assert!(!h.is_out("a", t0));
        assert!(h.all_in());
    }

    #[test]
    fn checks_count_separately_and_one_pass_restores() {
        let t0 = Instant::now();
        let (x, y): (Arc<str>, Arc<str>) = ("x".into(), "y".into());
        let mut h = table();
        assert_eq!(h.report_check(&x, "a", false, 2), None);
        assert_eq!(h.report_check(&y, "a", true, 2), None);
        assert_eq!(
            h.report_check(&x, "a", false, 2),
            Some(Transition::CheckDown)
        );
        assert_eq!(h.report_check(&x, "a", false, 2), None);
        assert!(h.is_out("a", t0));
        // Another check passing does not bring it back; its own does.
        assert_eq!(h.report_check(&y, "a", true, 2), None);
        assert!(h.is_out("a", t0));
        // Traffic successes do not override a failing check either.
        assert_eq!(h.report("a", true, t0), None);
        assert!(h.is_out("a", t0));
        assert_eq!(h.report_check(&x, "a", true, 2), Some(Transition::CheckUp));
        assert!(!h.is_out("a", t0));
        assert!(h.all_in());
        assert_eq!(
            h.report_check(&x, "a", false, 1),
            Some(Transition::CheckDown)
        );
        h.clear_checks();
        assert!(h.all_in());
    }

    #[test]
    fn forgets_instances_that_left() {
        let t0 = Instant::now();
        let mut h = table();
        for _ in 0..3 {
            h.report("gone", false, t0);
            h.report("kept", false, t0);
        }
        assert_eq!(h.out_ids(t0), ["gone", "kept"]);
        h.retain(&[roster_client::Instance::new("kept", "x:1")]);
        assert_eq!(h.out_ids(t0), ["kept"]);
        assert!(!h.is_out("gone", t0));
    }
}
