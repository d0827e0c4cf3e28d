//! Decoding a Txn request by hand, so that how deep txns may nest is
//! decided by etcd's rules and a bound of our own, not by prost's.
//!
//! prost stops decoding at 100 nested messages, and a nested txn costs two
//! (`TxnRequest` → `RequestOp` → `TxnRequest`), so a txn nested about 49
//! deep failed with "failed to decode Protobuf message" where etcd takes
//! one as deep as its op budget allows: each level spends one op of
//! `--max-txn-ops` (default 128, so 127 nested txns). prost's limit is a
//! compile-time constant (its `no-recursion-limit` feature removes it
//! from every message of every crate in the build, and leaves unknown
//! nested groups free to recurse until the stack overflows), so the two
//! recursive messages are decoded here, and every other message of a txn
//! (compares, ranges, puts, deletes) by prost as before.
//!
//! Decoding, checking, applying, encoding and dropping a txn all recurse
//! once per level, so nesting is bounded by [`MAX_DEPTH`] whatever the op
//! budget: a txn deeper than that is refused as having too many operations
//! before anything else looks at it. etcd has no such bound of its own,
//! but measured on etcd 3.4 with a large `--max-txn-ops`, 1000 levels are
//! answered and 10000 time out and leave it stuck. The functions that
//! recurse keep their frames small (leaf messages are handled in functions
//! of their own), here and in the store's apply.
//!
//! The log holds txns as the store's `Command`, so replaying it decodes
//! them here too ([`command`]).

use prost::bytes::Buf;
use prost::encoding::{
    check_wire_type, decode_key, decode_varint, skip_field, DecodeContext, WireType,
};
use prost::{DecodeError, Message};
use roster_proto::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};
use roster_store::{Command, CommandKind};

/// Nested txns accepted below a request's own txn. Measured in a debug
/// build, whose frames are the largest, on tokio's 2 MiB worker stacks:
/// 1000 levels were decoded, checked, applied, replayed from the log and
/// read back, and 2048 overflowed (in `validate`); this leaves a margin of
/// four. etcd's default budget allows 127.
pub const MAX_DEPTH: usize = 512;

/// Why a txn did not decode.
#[derive(Debug, thiserror::Error)]
pub enum TxnDecodeError {
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("txns nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Not a well-formed `TxnRequest`.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes a `TxnRequest`.
pub fn txn(buf: &[u8]) -> Result<TxnRequest, TxnDecodeError> {
    let mut t = TxnRequest::default();
    merge_txn(&mut t, buf, 0)?;
    Ok(t)
}

/// Decodes a `Command`; one that is a txn, as the server writes it (the
/// txn its only field), has the txn decoded by [`txn`].
pub fn command(buf: &[u8]) -> Result<Command, TxnDecodeError> {
    let mut b = buf;
    if let Ok((3, WireType::LengthDelimited)) = decode_key(&mut b) {
        if decode_varint(&mut b).is_ok_and(|len| len == b.len() as u64) {
            return Ok(Command {
                kind: Some(CommandKind::Txn(txn(b)?)),
            });
        }
    }
    Ok(Command::decode(buf)?)
}

/// The body of the length-delimited field `buf` is at.
fn field<'a>(buf: &mut &'a [u8], wire_type: WireType) -> Result<&'a [u8], DecodeError> {
    check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        // prost's own words for a length past the end.
        return Err(Message::decode(&[0x0a, 0x01][..])
            .map(|_: TxnRequest| ())
            .unwrap_err());
    }
    let (body, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(body)
}

// The two functions below recurse once per level, so they hold nothing
// but what the recursion needs: the leaf messages, large and many in an
// unoptimized build's frame, are decoded in functions of their own.

/// Merges the `TxnRequest` in `buf` into `t`, `depth` levels down.
fn merge_txn(t: &mut TxnRequest, mut buf: &[u8], depth: usize) -> Result<(), TxnDecodeError> {
    if depth > MAX_DEPTH {
        return Err(TxnDecodeError::TooDeep);
    }
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1 => push_compare(t, field(&mut buf, wire_type)?)?,
            2 | 3 => {
                let body = field(&mut buf, wire_type)?;
                let ops = if tag == 2 {
                    &mut t.success
                } else {
                    &mut t.failure
                };
                merge_op(push_op(ops), body, depth)?;
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
        }
    }
    Ok(())
}

/// Merges the `RequestOp` in `buf` into `op`: a field naming the variant
/// already held merges into it, another replaces it (protobuf's rule for a
/// oneof).
fn merge_op(op: &mut RequestOp, mut buf: &[u8], depth: usize) -> Result<(), TxnDecodeError> {
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1..=3 => merge_leaf(op, tag, field(&mut buf, wire_type)?)?,
            4 => {
                let body = field(&mut buf, wire_type)?;
                merge_txn(txn_of(op), body, depth + 1)?;
            }
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
        }
    }
    Ok(())
}

#[inline(never)]
fn push_compare(t: &mut TxnRequest, body: &[u8]) -> Result<(), DecodeError> {
    t.compare.push(Message::decode(body)?);
    Ok(())
}

#[inline(never)]
fn push_op(ops: &mut Vec<RequestOp>) -> &mut RequestOp {
    ops.push(RequestOp::default());
    ops.last_mut().expect("just pushed")
}

/// The txn `op` holds, made empty if it held something else.
#[inline(never)]
fn txn_of(op: &mut RequestOp) -> &mut TxnRequest {
    if !matches!(op.request, Some(Request::RequestTxn(_))) {
        op.request = Some(Request::RequestTxn(TxnRequest::default()));
    }
    match &mut op.request {
        Some(Request::RequestTxn(t)) => t,
        _ => unreachable!("set above"),
    }
}

/// Merges a range (1), put (2) or delete (3) field into `op`.
#[inline(never)]
fn merge_leaf(op: &mut RequestOp, tag: u32, body: &[u8]) -> Result<(), DecodeError> {
    let fresh = match (tag, &mut op.request) {
        (1, Some(Request::RequestRange(r))) => return r.merge(body),
        (2, Some(Request::RequestPut(p))) => return p.merge(body),
        (3, Some(Request::RequestDeleteRange(d))) => return d.merge(body),
        (1, _) => Request::RequestRange(Message::decode(body)?),
        (2, _) => Request::RequestPut(Message::decode(body)?),
        _ => Request::RequestDeleteRange(Message::decode(body)?),
    };
    op.request = Some(fresh);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use roster_proto::etcdserverpb::{Compare, PutRequest, RangeRequest};

    fn op(r: Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn decodes_what_prost_encodes() {
        let inner = TxnRequest {
            compare: vec![Compare {
                key: b"c".to_vec(),
                ..Default::default()
            }],
            success: vec![op(Request::RequestPut(PutRequest {
                key: b"p".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            }))],
            failure: vec![op(Request::RequestRange(RangeRequest {
                key: b"r".to_vec(),
                limit: 3,
                ..Default::default()
            }))],
        };
        let outer = TxnRequest {
            compare: vec![],
            success: vec![op(Request::RequestTxn(inner.clone()))],
            failure: vec![op(Request::RequestTxn(TxnRequest::default()))],
        };
        assert_eq!(txn(&outer.encode_to_vec()).unwrap(), outer);
        let cmd = Command {
            kind: Some(CommandKind::Txn(outer)),
        };
        assert_eq!(command(&cmd.encode_to_vec()).unwrap(), cmd);
        let put = Command {
            kind: Some(CommandKind::Put(PutRequest::default())),
        };
        assert_eq!(command(&put.encode_to_vec()).unwrap(), put);
    }

    #[test]
    fn a_oneof_field_seen_twice_merges_or_replaces_as_prost_does() {
        let a = op(Request::RequestPut(PutRequest {
            key: b"a".to_vec(),
            ..Default::default()
        }))
        .encode_to_vec();
        let b = op(Request::RequestPut(PutRequest {
            value: b"b".to_vec(),
            ..Default::default()
        }))
        .encode_to_vec();
        let r = op(Request::RequestRange(RangeRequest::default())).encode_to_vec();
        for ops in [[a.clone(), b.clone()].concat(), [a, r].concat()] {
            let mut mine = RequestOp::default();
            merge_op(&mut mine, &ops, 0).unwrap();
            assert_eq!(mine, RequestOp::decode(&ops[..]).unwrap());
        }
    }

    #[test]
    fn what_prost_refuses_is_refused() {
        for bad in [
            &b"\x12\x05\x22"[..],
            b"\x0a\xff",
            b"\x12\x02\x22\x05",
            b"\x08\x01",
        ] {
            assert!(TxnRequest::decode(bad).is_err(), "{bad:?}");
            assert!(
                matches!(txn(bad), Err(TxnDecodeError::Decode(_))),
                "{bad:?}"
            );
        }
    }
}
