//! openraft's storage conformance suite against `LogStore` and
//! `StateMachine`, each case on a fresh directory (see
//! `roster_raft::testing`).
//!
//! The suite is openraft's own statement of what log storage and a state
//! machine must do (vote, committed, purge and truncate semantics, initial
//! state after a restart, snapshot transfer). The machine here is a map of
//! `key=value` commands: the suite never builds a command, it checks
//! positions, memberships and snapshots, which the adapter owns.

use std::collections::BTreeMap;
use std::convert::Infallible;

use roster_raft::{Machine, Mark, Outcome};

/// A machine keeping `key=value` commands in a map.
#[derive(Default)]
struct MapMachine {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    mark: Option<Mark>,
}

impl Machine for MapMachine {
    type Error = Infallible;

    fn apply(
        &mut self,
        _index: u64,
        commands: &[Vec<u8>],
        mark: &Mark,
    ) -> Result<Vec<Outcome>, Infallible> {
        let mut out: Vec<Outcome> = Vec::new();
        for c in commands {
            let at = c.iter().position(|&b| b == b'=').unwrap_or(c.len());
            let old = self
                .map
                .insert(c[..at].to_vec(), c[(at + 1).min(c.len())..].to_vec());
            out.push(Box::new(old));
        }
        self.mark = Some(mark.clone());
        Ok(out)
    }

    fn mark(&self) -> Option<Mark> {
        self.mark.clone()
    }

    fn snapshot(&self) -> Result<Vec<u8>, Infallible> {
        let mut out = Vec::new();
        for (k, v) in &self.map {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        Ok(out)
    }

    fn install(&mut self, mut data: &[u8], mark: &Mark) -> Result<(), Infallible> {
        let take = |d: &mut &[u8]| {
            let (len, rest) = d.split_first_chunk::<4>().expect("a length");
            let len = u32::from_le_bytes(*len) as usize;
            let v = rest[..len].to_vec();
            *d = &rest[len..];
            v
        };
        self.map.clear();
        while !data.is_empty() {
            let k = take(&mut data);
            let v = take(&mut data);
            self.map.insert(k, v);
        }
        self.mark = Some(mark.clone());
        Ok(())
    }
}

#[test]
fn openraft_storage_suite() {
    roster_raft::testing::run_suite(|_dir: &std::path::Path| MapMachine::default());
}
