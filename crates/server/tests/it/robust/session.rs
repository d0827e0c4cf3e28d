//! One node, one connection, and a runtime to drive them from proptest's
//! synchronous test bodies.

use std::cell::RefCell;
use std::time::Duration;

use prost::Message;
use roster_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse,
};
use roster_testkit::TestNode;

use super::wire::{sane, Answer, Wire};

pub struct Session {
    rt: tokio::runtime::Runtime,
    node: TestNode,
    wire: RefCell<Wire>,
}

impl Session {
    pub fn start() -> Session {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let node = TestNode::start();
        let wire = RefCell::new(rt.block_on(Wire::connect(&node)));
        Session { rt, node, wire }
    }

    /// Sends `msg` to `path`, checks the answer is sane (a reply decoding
    /// as `R`, or a status saying why) and returns it.
    pub fn call<R: Message + Default>(
        &self,
        path: &str,
        msg: &impl Message,
        streaming: bool,
    ) -> Answer {
        let mut wire = self.wire.borrow_mut();
        let answer = self.rt.block_on(wire.call::<R>(path, msg, streaming));
        sane(path, &answer, streaming);
        answer
    }

    /// Sends `body` as it is as the request of `path` (`stream` as in
    /// [`Wire::raw`]); checks the answer is sane and returns it.
    pub fn raw(&self, path: &str, body: bytes::Bytes, stream: Option<Duration>) -> Answer {
        let mut wire = self.wire.borrow_mut();
        let answer = self.rt.block_on(wire.raw(path, body, stream));
        sane(path, &answer, stream.is_some());
        answer
    }

    /// After a run: the connection and a new one still work, and the node
    /// still writes and reads (its alarms, which a run may have raised,
    /// cleared first).
    pub fn still_serves(&self) {
        let fresh = RefCell::new(self.rt.block_on(Wire::connect(&self.node)));
        let old = std::mem::replace(&mut *self.wire.borrow_mut(), fresh.into_inner());
        drop(old);
        let get = AlarmRequest {
            action: AlarmAction::Get as i32,
            ..Default::default()
        };
        let Answer::Message(m) = self.call::<AlarmResponse>(ALARM, &get, false) else {
            panic!("alarms not listed");
        };
        for a in AlarmResponse::decode(m).unwrap().alarms {
            let off = AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: a.member_id,
                alarm: a.alarm,
            };
            self.call::<AlarmResponse>(ALARM, &off, false);
        }
        let put = PutRequest {
            key: b"still".to_vec(),
            value: b"serving".to_vec(),
            ..Default::default()
        };
        let answer = self.call::<PutResponse>("/etcdserverpb.KV/Put", &put, false);
        assert!(matches!(answer, Answer::Message(_)), "{answer:?}");
        let range = RangeRequest {
            key: b"still".to_vec(),
            ..Default::default()
        };
        let Answer::Message(m) =
            self.call::<RangeResponse>("/etcdserverpb.KV/Range", &range, false)
        else {
            panic!("the range was refused");
        };
        let kvs = RangeResponse::decode(m).unwrap().kvs;
        assert_eq!(kvs.len(), 1);
        assert_eq!(kvs[0].value, b"serving");
    }
}

const ALARM: &str = "/etcdserverpb.Maintenance/Alarm";
