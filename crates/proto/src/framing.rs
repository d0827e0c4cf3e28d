//! gRPC's message framing: each message on the wire is a one-byte
//! compression flag, a four-byte big-endian length, then the message.
//!
//! The server's hand-written unary KV endpoint and `roster bench`'s load
//! generator both speak it without tonic's codec, so it lives here, beside
//! the messages it frames, where both can reach it.

use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

/// Bytes before each message: a compression flag and a big-endian length.
pub const PREFIX: usize = 5;

/// The compression flag and the message length of the length-prefixed
/// message `buf` starts with, once its prefix is whole.
pub fn prefix(buf: &[u8]) -> Option<(bool, usize)> {
    let p: &[u8; PREFIX] = buf.get(..PREFIX)?.try_into().ok()?;
    Some((
        p[0] != 0,
        u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize,
    ))
}

/// `msg` as one uncompressed length-prefixed message.
pub fn encode<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode(&mut buf).expect("the buffer holds the message");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::PutRequest;

    #[test]
    fn a_framed_message_reads_back_from_its_prefix() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
            ..Default::default()
        };
        let framed = encode(&put);
        assert_eq!(prefix(&framed[..PREFIX - 1]), None, "prefix not whole");
        let (compressed, len) = prefix(&framed).expect("prefix");
        assert!(!compressed);
        assert_eq!(len, framed.len() - PREFIX);
        assert_eq!(PutRequest::decode(&framed[PREFIX..]).unwrap(), put);
    }

    proptest::proptest! {
        /// Any bytes: a prefix once five are there, read as written.
        #[test]
        fn any_bytes_give_a_prefix_or_none(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)) {
            match prefix(&b) {
                None => proptest::prop_assert!(b.len() < PREFIX),
                Some((compressed, len)) => {
                    proptest::prop_assert_eq!(compressed, b[0] != 0);
                    proptest::prop_assert_eq!(len as u32, u32::from_be_bytes([b[1], b[2], b[3], b[4]]));
                }
            }
        }

        /// Any message framed reads back from its prefix.
        #[test]
        fn framed_messages_round_trip(key: Vec<u8>, value: Vec<u8>, lease: i64) {
            let put = PutRequest { key, value, lease, ..Default::default() };
            let framed = encode(&put);
            let (compressed, len) = prefix(&framed).unwrap();
            proptest::prop_assert!(!compressed);
            proptest::prop_assert_eq!(PREFIX + len, framed.len());
            proptest::prop_assert_eq!(PutRequest::decode(&framed[PREFIX..]).unwrap(), put);
        }
    }
}
