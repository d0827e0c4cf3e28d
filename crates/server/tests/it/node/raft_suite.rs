//! openraft's storage suite against Roster's real state machine: the
//! store, watch hub and lessor behind `RaftMachine`, with the mark kept in
//! the store (roster-raft's `testing` feature runs the suite, so this
//! crate never names openraft).

use std::path::Path;
use std::sync::Arc;

use roster_raft::{Machine, Mark};
use roster_server::lessor::Lessor;
use roster_server::raft_machine::RaftMachine;
use roster_server::state::StateMachine;
use roster_server::watch::hub::Hub;
use roster_store::Store;

fn machine(dir: &Path) -> RaftMachine {
    let store = Arc::new(Store::open(&dir.join("db")).expect("the store opens"));
    let hub = Arc::new(Hub::new(store.clone(), 1, 1, 1));
    let lessor = Arc::new(Lessor::recover(&store.leases()));
    RaftMachine::new(
        Arc::new(StateMachine::new(store, hub, lessor)),
        dir.to_path_buf(),
    )
}

#[test]
fn openraft_storage_suite_on_rosters_machine() {
    roster_raft::testing::run_suite(machine);
}

/// A put and a blank entry go through the machine; after a checkpoint
/// and a reopen, the store holds both the put and the blank entry's mark.
#[test]
fn a_reopened_machine_resumes_from_its_durable_mark() {
    use prost::Message;
    use roster_proto::etcdserverpb::PutRequest;
    use roster_store::{Command, CommandKind};

    let dir = tempfile::tempdir().unwrap();
    let put = Command {
        kind: Some(CommandKind::Put(PutRequest {
            key: b"svc/a".to_vec(),
            value: b"up".to_vec(),
            ..Default::default()
        })),
    }
    .encode_to_vec();
    {
        let mut m = machine(dir.path());
        let out = m
            .apply(1, &[put.clone(), put], &Mark::from_bytes(b"1".to_vec()))
            .unwrap();
        assert_eq!(out.len(), 2);
        let first = out[0]
            .downcast_ref::<roster_server::state::Outcome>()
            .expect("a state outcome");
        assert!(first.response.is_ok());
        m.apply(2, &[], &Mark::from_bytes(b"2".to_vec())).unwrap();
        assert_eq!(m.state().applied_index(), 2);
        m.state().checkpoint().unwrap();
        m.apply(3, &[], &Mark::from_bytes(b"3".to_vec())).unwrap();
    }
    let m = machine(dir.path());
    assert_eq!(m.mark(), Some(Mark::from_bytes(b"2".to_vec())));
    assert_eq!(m.state().store().revision(), 3);
}
