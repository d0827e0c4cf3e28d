//! The types openraft is instantiated with, and how an entry is laid out
//! in Roster's log.
//!
//! openraft is generic over a *type config*: what a client proposes (`D`),
//! what applying it answers (`R`), how members are named and addressed,
//! and what a snapshot is read from. Roster fixes them here, in one place,
//! so that the rest of the crate (and later the server, through this
//! crate's own traits) never spells an openraft generic.
//!
//! - A proposal is a [`Batch`] of encoded commands. Proposers queue and one
//!   entry carries a whole queue (openraft appends once per
//!   `client_write`), which keeps group commit: one entry, one `fdatasync`,
//!   many writes. The commands stay opaque bytes; the state machine decodes
//!   them.
//! - A [`Response`] holds what applying each command produced, for the
//!   proposer waiting on this member only. It never crosses the network,
//!   so it is skipped by serde and can hold anything.
//! - Members are `u64` ids with a [`BasicNode`] (the peer URL).
//!
//! # Entries in the log
//!
//! openraft numbers its log from 0 (the first membership entry of a new
//! cluster sits at index 0) while Roster's log starts at 1 (0 means "no
//! entry" to the store). An openraft index `i` is Roster's `i + 1`; the
//! conversion lives in [`to_log`] and [`from_log`] and nowhere else.
//!
//! openraft's log id is `(term, leader node, index)`: by default two
//! leaders may share a term, so the leader's node id is part of an entry's
//! identity. Roster's log keeps `(term, index)`, so the node id leads the
//! payload as 8 little-endian bytes. After it comes the body: nothing for
//! a blank entry, the batch for a command (a `u32` count, then each
//! command as a `u32` length and its bytes), and the membership as JSON
//! for a membership change (rare, small, and readable in a hex dump;
//! `serde_json` is already in the build).

use std::any::Any;
use std::fmt;

use openraft::{CommittedLeaderId, EntryPayload, Membership};
use serde::{Deserialize, Serialize};

use crate::log::{Entry as LogEntry, EntryKind, LogId as RosterLogId};

pub use openraft::BasicNode;

openraft::declare_raft_types!(
    /// Roster's instantiation of openraft.
    pub TypeConfig:
        D = Batch,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// An openraft log entry of Roster's type config.
pub type RaftEntry = openraft::Entry<TypeConfig>;
/// An openraft log id (term, leader node, index).
pub type RaftLogId = openraft::LogId<u64>;

/// What one log entry proposes: encoded commands, applied in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The commands, each as the state machine encoded it.
    pub commands: Vec<Vec<u8>>,
}

/// What applying one command produced, for the proposer to downcast.
pub type Outcome = Box<dyn Any + Send + Sync>;

/// What applying one entry produced: an outcome per command of its batch
/// (none for a blank or membership entry). Only the member that applied it
/// reads it, so it is never serialized.
#[derive(Default, Serialize, Deserialize)]
pub struct Response {
    /// One outcome per command, in the batch's order.
    #[serde(skip)]
    pub outcomes: Vec<Outcome>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Response({} outcomes)", self.outcomes.len())
    }
}

/// Why bytes read from the log are not an entry this crate wrote.
#[derive(Debug, thiserror::Error)]
#[error("log entry {index} cannot be decoded: {reason}")]
pub struct DecodeError {
    index: u64,
    reason: String,
}

/// Roster's log position of an openraft log id.
pub fn to_log(id: &RaftLogId) -> RosterLogId {
    RosterLogId {
        term: id.leader_id.term,
        index: id.index + 1,
    }
}

/// The openraft log id of an entry at `id` written by leader `node`.
pub fn from_log(id: RosterLogId, node: u64) -> RaftLogId {
    openraft::LogId::new(CommittedLeaderId::new(id.term, node), id.index - 1)
}

/// Encodes an entry's payload as it is stored in Roster's log.
pub fn encode(entry: &RaftEntry, out: &mut Vec<u8>) -> EntryKind {
    out.clear();
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_le_bytes());
    match &entry.payload {
        EntryPayload::Blank => EntryKind::Blank,
        EntryPayload::Normal(batch) => {
            out.extend_from_slice(&(batch.commands.len() as u32).to_le_bytes());
            for c in &batch.commands {
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(c);
            }
            EntryKind::Command
        }
        EntryPayload::Membership(m) => {
            serde_json::to_writer(&mut *out, m).expect("a membership serializes");
            EntryKind::Membership
        }
    }
}

/// Decodes an entry read back from Roster's log.
pub fn decode(entry: &LogEntry) -> Result<RaftEntry, DecodeError> {
    let index = entry.id.index;
    let bad = |reason: &str| DecodeError {
        index,
        reason: reason.to_string(),
    };
    let (node, mut body) = split_u64(&entry.payload).ok_or_else(|| bad("no leader node id"))?;
    let payload = match entry.kind {
        EntryKind::Blank if body.is_empty() => EntryPayload::Blank,
        EntryKind::Blank => return Err(bad("a blank entry with a body")),
        EntryKind::Command => {
            let (count, rest) = split_u32(body).ok_or_else(|| bad("no command count"))?;
            body = rest;
            // The count is not trusted for the allocation: a command takes
            // at least its 4-byte length.
            let mut commands = Vec::with_capacity((count as usize).min(body.len() / 4));
            for _ in 0..count {
                let (len, rest) = split_u32(body).ok_or_else(|| bad("a command cut short"))?;
                let len = len as usize;
                if rest.len() < len {
                    return Err(bad("a command cut short"));
                }
                commands.push(rest[..len].to_vec());
                body = &rest[len..];
            }
            if !body.is_empty() {
                return Err(bad("bytes after the last command"));
            }
            EntryPayload::Normal(Batch { commands })
        }
        EntryKind::Membership => {
            let m: Membership<u64, BasicNode> =
                serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
            EntryPayload::Membership(m)
        }
    };
    Ok(RaftEntry {
        log_id: from_log(entry.id, node),
        payload,
    })
}

fn split_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}

fn split_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn roundtrip(e: RaftEntry) {
        let mut buf = Vec::new();
        let kind = encode(&e, &mut buf);
        let stored = LogEntry {
            id: to_log(&e.log_id),
            kind,
            payload: buf,
        };
        let back = decode(&stored).expect("decodes");
        assert_eq!(back.log_id, e.log_id);
        assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
    }

    #[test]
    fn entries_round_trip_through_the_log_format() {
        let id = |t, n, i| openraft::LogId::new(CommittedLeaderId::new(t, n), i);
        roundtrip(RaftEntry {
            log_id: id(0, 0, 0),
            payload: EntryPayload::Blank,
        });
        roundtrip(RaftEntry {
            log_id: id(3, 7, 12),
            payload: EntryPayload::Normal(Batch {
                commands: vec![b"put a".to_vec(), Vec::new(), vec![0; 300]],
            }),
        });
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        roundtrip(RaftEntry {
            log_id: id(u64::MAX, u64::MAX, 5),
            payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
        });
    }

    #[test]
    fn a_command_cut_short_is_refused() {
        let e = RaftEntry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Batch {
                commands: vec![b"abc".to_vec()],
            }),
        };
        let mut buf = Vec::new();
        let kind = encode(&e, &mut buf);
        buf.pop();
        let stored = LogEntry {
            id: to_log(&e.log_id),
            kind,
            payload: buf,
        };
        assert!(decode(&stored).is_err());
    }
}
