//! Bounded waits: every wait a test makes has a limit and a name, so a
//! test that goes wrong fails saying what it was waiting for instead of
//! hanging.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The longest wait for anything a test expects to happen: a server to be
/// ready, an answer, an event, a state reached. Far above what loopback
/// needs, so reaching it means the thing will not happen.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often [`until`] looks again.
const POLL: Duration = Duration::from_millis(10);

/// Awaits `f` for at most [`WAIT`]; panics naming `what` if it takes longer.
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// The output of a spawned task, awaited for at most [`WAIT`]; a panic in
/// the task is a panic here.
pub async fn joined<T>(what: &str, task: JoinHandle<T>) -> T {
    match within(what, task).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("{what}: task {e}"),
    }
}

/// Asks `check` again and again until it answers `Some`, for at most
/// [`WAIT`]; returns the answer. For states a test can only observe by
/// asking (a lease list, a route table), not for events it can await.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(found) = check().await {
                return found;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}
