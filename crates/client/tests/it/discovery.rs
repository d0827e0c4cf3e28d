//! Waiting on a roster-client [`Discovery`]: the tests that follow a
//! service await the instance set they expect instead of sleeping.

use roster_client::{Discovery, Instance};
use roster_testkit::WAIT;

/// Waits until the discovered set satisfies `ok`; panics with `what` and
/// the set as it stands after [`WAIT`].
pub async fn until(d: &Discovery, what: &str, ok: impl Fn(&[Instance]) -> bool) {
    let mut updates = d.updates();
    let wait = async {
        loop {
            if ok(&updates.borrow_and_update()) {
                return;
            }
            updates.changed().await.expect("discovery alive");
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: still {:?}", d.instances()));
}

/// The instances' ids, in order.
pub fn ids(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.id.as_str()).collect()
}
