//! openraft's storage conformance suite, for any [`Machine`].
//!
//! The suite is openraft's own statement of what log storage and a state
//! machine must do (vote, committed, purge and truncate semantics, the
//! state found after a restart, snapshot transfer). A machine implemented
//! outside this crate (the server's, over the real store) should pass it
//! too, without its crate depending on openraft: [`run_suite`] builds a
//! [`LogStore`] and a [`StateMachine`] over a fresh machine per case, each
//! in a directory of its own removed when the case ends.

use std::path::Path;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use crate::types::TypeConfig;
use crate::{LogStore, Machine, StateMachine};

/// Runs openraft's storage suite on [`LogStore`] and [`StateMachine`] over
/// machines made by `make`, each given an empty directory of its own.
/// Panics with the suite's error if a case fails.
pub fn run_suite<M, F>(make: F)
where
    M: Machine,
    F: Fn(&Path) -> M + Send + Sync,
{
    if let Err(e) = Suite::test_all(Builder(make)) {
        panic!("openraft's storage suite failed: {e}");
    }
}

/// A fresh store and machine in a directory removed when the case ends.
struct Builder<F>(F);

impl<M, F> StoreBuilder<TypeConfig, LogStore, StateMachine<M>, TempDir> for Builder<F>
where
    M: Machine,
    F: Fn(&Path) -> M + Send + Sync,
{
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine<M>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = LogStore::open(&dir.path().join("raft")).expect("the log store opens");
        let machine_dir = dir.path().join("machine");
        std::fs::create_dir(&machine_dir).expect("the machine's directory");
        let sm = StateMachine::new((self.0)(&machine_dir)).expect("a machine with a valid mark");
        Ok((dir, store, sm))
    }
}
