//! Leases as the state machine sees them: id, granted TTL, the last
//! checkpointed remaining TTL, and the keys attached.
//!
//! There is no clock here. When a lease expires is the server's business: it
//! decides, then proposes a revoke like any client would, so every replica
//! deletes the same keys at the same revision. What the store keeps is what
//! must survive a restart: that the lease exists, its TTL, and the remaining
//! TTL recorded by the latest checkpoint. Which keys are attached is not
//! stored separately; it is rebuilt from the key index on open.

use std::collections::{BTreeMap, BTreeSet};

use redb::TableDefinition;

/// Lease id → 16 bytes: granted TTL and checkpointed remaining TTL, both
/// big-endian `i64` seconds (remaining is -1 when never checkpointed).
pub const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// TTL in seconds as granted.
    pub ttl: i64,
    /// Remaining TTL at the last checkpoint, -1 if none was taken.
    pub remaining: i64,
    /// Keys currently attached.
    pub keys: BTreeSet<Vec<u8>>,
}

impl Lease {
    /// Encodes the persisted part.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.ttl.to_be_bytes());
        b[8..].copy_from_slice(&self.remaining.to_be_bytes());
        b
    }

    /// Decodes the persisted part; keys are attached later. `None` for
    /// anything but the 16 bytes [`Lease::encode`] writes.
    pub fn decode(b: &[u8]) -> Option<Lease> {
        let b: &[u8; 16] = b.try_into().ok()?;
        let ttl = i64::from_be_bytes(b[..8].try_into().ok()?);
        let remaining = i64::from_be_bytes(b[8..].try_into().ok()?);
        Some(Lease {
            ttl,
            remaining,
            keys: BTreeSet::new(),
        })
    }
}

/// Every live lease by id.
#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
}

impl LeaseTable {
    /// The lease `id`, if it exists.
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// True when lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Adds a lease.
    pub fn insert(&mut self, id: i64, lease: Lease) {
        self.leases.insert(id, lease);
    }

    /// Removes a lease, returning it.
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Records a checkpointed remaining TTL; false if the lease is gone.
    pub fn checkpoint(&mut self, id: i64, remaining: i64) -> Option<&Lease> {
        let l = self.leases.get_mut(&id)?;
        l.remaining = remaining;
        Some(l)
    }

    /// Moves `key` from lease `from` to lease `to` (either may be 0).
    pub fn reattach(&mut self, key: &[u8], from: i64, to: i64) {
        if from == to {
            return;
        }
        if let Some(l) = self.leases.get_mut(&from) {
            l.keys.remove(key);
        }
        if let Some(l) = self.leases.get_mut(&to) {
            l.keys.insert(key.to_vec());
        }
    }

    /// Every lease, by id.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True when there is no lease.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}
