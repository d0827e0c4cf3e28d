//! The etcd v3 wire protocol as Roster speaks it.
//!
//! The `.proto` files under `proto/` are Roster's own text, written from the
//! protocol facts of etcd's API: package, service and message names and field
//! numbers match etcd's, so every etcd v3 client (etcdctl, Go clientv3,
//! python etcd3, the `etcd-client` crate) talks to a Roster server unchanged.
//! Code is generated at build time by prost and tonic, fed by `protox`, so no
//! system `protoc` is needed. Its logic is what every client and the server
//! need of the protocol: the range-end convention ([`prefix_end`]) and gRPC's
//! message framing ([`framing`]).
//!
//! Besides etcd's packages, `roster` holds the internal [`roster::Command`]
//! that the consensus layer orders and the store applies, and
//! [`roster::EncodedWatchResponse`], a `WatchResponse` with its events
//! encoded once for all the watchers that receive them.

#![allow(clippy::all, missing_docs)]

/// The `range_end` of the range holding every key that starts with
/// `prefix`: the prefix with its last byte below 0xff raised by one, and
/// what follows dropped. A prefix of 0xff bytes only (or none) has no such
/// end; `"\0"`, every key from the prefix on, stands for it.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd's MVCC record types: `KeyValue` and `Event`.
pub mod framing;

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's auth record types.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's v3 client API: KV, Watch, Lease, Cluster, Maintenance and Auth.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Roster's internal write commands, and the server's pre-encoded watch
/// response.
pub mod roster {
    tonic::include_proto!("roster");
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
