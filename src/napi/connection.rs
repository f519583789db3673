//! The native half of `Connection` (send, close, subscribe, resume, getters): methods of the
//! server taking the connection's id. A connection has no JavaScript object of its own on the
//! native side: a `#[napi]` class instance per connection would cost about 100 bytes of JS heap
//! (the object, napi's type tag as a BigInt and its property array) and a wrap reference, for
//! each of thousands of connections.

use super::*;

use super::server::NativeServer;
use crate::net::routing::{ResumeRefused, Resumed};

/// The connection `id`, if it is still open. Once it has ended its socket is closed at once,
/// whatever JavaScript still holds, and these calls find nothing.
fn conn(s: &NativeServer, id: f64) -> Option<Arc<Conn>> {
    s.shared.conn(id as u64)
}

#[napi]
impl NativeServer {
    /// Bytes of messages queued and not yet handed to the kernel (the close frame is not
    /// counted); 0 once closed.
    #[napi]
    pub fn conn_buffered_amount(&self, id: f64) -> f64 {
        conn(self, id).map_or(0.0, |c| c.buffered_data() as f64)
    }

    /// Bytes in the kernel's send queue not yet acknowledged by the peer (Linux `SIOCOUTQ`);
    /// `null` elsewhere or once closed.
    #[napi]
    pub fn conn_kernel_buffered_amount(&self, id: f64) -> Option<f64> {
        conn(self, id)
            .and_then(|c| c.kernel_buffered_amount())
            .map(|v| v as f64)
    }

    /// Age in ms of the oldest message queued for this connection and not yet written; 0 when
    /// nothing waits, or once closed.
    #[napi]
    pub fn conn_lag(&self, id: f64) -> f64 {
        conn(self, id).map_or(0.0, |c| {
            c.lag(tokio::time::Instant::now()).as_secs_f64() * 1000.0
        })
    }

    /// Queued messages of this connection whose `ttl` ran out before they were written.
    #[napi]
    pub fn conn_expired(&self, id: f64) -> f64 {
        conn(self, id).map_or(0.0, |c| {
            c.expired.load(std::sync::atomic::Ordering::Relaxed) as f64
        })
    }

    /// Queued messages of this connection replaced by a newer one with the same key.
    #[napi]
    pub fn conn_replaced(&self, id: f64) -> f64 {
        conn(self, id).map_or(0.0, |c| {
            c.replaced.load(std::sync::atomic::Ordering::Relaxed) as f64
        })
    }

    /// True until a close starts.
    #[napi]
    pub fn conn_is_open(&self, id: f64) -> bool {
        conn(self, id).is_some_and(|c| c.is_open())
    }

    /// Which inbound events reach JavaScript: bits 1 message, 2 ping, 4 pong.
    #[napi]
    pub fn conn_set_interest(&self, id: f64, bits: u32) {
        if let Some(c) = conn(self, id) {
            c.set_interest(bits as u8);
        }
    }

    /// Queues `data` as one frame. With `ack`, a `sent` event with that token reports whether it
    /// was wholly handed to the kernel or dropped.
    #[napi]
    pub fn conn_send(
        &self,
        id: f64,
        data: &[u8],
        priority: Priority,
        text: bool,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.deliver(id, data, op, priority, ack, options)
    }

    #[napi]
    pub fn conn_send_text(
        &self,
        id: f64,
        data: String,
        priority: Priority,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        self.deliver(id, data.as_bytes(), OpCode::Text, priority, ack, options)
    }

    fn deliver(
        &self,
        id: f64,
        data: &[u8],
        op: OpCode,
        priority: Priority,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        let ack = ack.map(|token| {
            let (events, id, token) = (self.shared.events.clone(), id as u64, token as u64);
            SendAck::new(move |fate| events.push(Event::Sent { id, token, fate }))
        });
        let Some(c) = conn(self, id) else {
            // The connection is gone: dropping `ack` reports the send as dropped.
            return false;
        };
        let priority: CorePriority = priority.into();
        let stamp = stamp(&c.server, priority, options.unwrap_or_default());
        let mut frame = Frame::new(encode(op, data));
        frame.ack = ack;
        frame.key = stamp.key;
        frame.deadline = stamp.ttl.map(|t| frame.born + t);
        c.send_ordered(frame, priority)
    }

    /// Queues a ping (or, with `pong`, an unsolicited pong) carrying at most 125 bytes.
    #[napi]
    pub fn conn_ping(&self, id: f64, data: &[u8], pong: bool) -> Result<bool, ErrorCode> {
        if data.len() > MAX_CONTROL_PAYLOAD {
            return Err(coded(
                ErrorCode::InvalidData,
                "ping/pong data must be at most 125 bytes",
            ));
        }
        Ok(conn(self, id).is_some_and(|c| c.send_control(pong, data)))
    }

    /// Graceful close after queued data (and after broadcasts made before it). False if already
    /// closing or closed.
    #[napi]
    pub fn conn_close(&self, id: f64, code: u32, reason: String) -> bool {
        conn(self, id).is_some_and(|c| c.close_ordered(code as u16, &reason))
    }

    /// Answers the peer's close frame, once the events before it have been handled (internal:
    /// `lib/dispatch.js` calls it when it reaches the close in the event stream).
    #[napi]
    pub fn conn_answer_close(&self, id: f64) {
        if let Some(c) = conn(self, id) {
            c.answer_peer_close_ordered();
        }
    }

    /// Drops the TCP connection now; queued data is discarded (and counted).
    #[napi]
    pub fn conn_terminate(&self, id: f64) -> bool {
        match conn(self, id) {
            Some(c) => {
                c.end(Some(Termination::Requested));
                true
            }
            None => false,
        }
    }

    /// False if already subscribed (or a resume of the topic is under way) or closed.
    #[napi]
    pub fn conn_subscribe(&self, id: f64, topic: String) -> bool {
        conn(self, id).is_some_and(|c| !c.is_resuming(&topic) && c.server.subscribe(&c, &topic))
    }

    /// Subscribes to a topic with history, first replaying what the client missed after
    /// `offset` of `epoch` (in order with the publishes around it: no gap, no duplicate).
    #[napi]
    pub fn conn_resume(
        &self,
        id: f64,
        topic: String,
        offset: f64,
        epoch: String,
        token: f64,
    ) -> Result<ResumeResult, ErrorCode> {
        let Some(c) = conn(self, id) else {
            return Err(coded(ErrorCode::Closed, "the connection is closed"));
        };
        let since = if offset.is_finite() && offset >= 0.0 {
            offset as u64
        } else {
            u64::MAX
        };
        match c.server.resume(&c, &topic, since, epoch, token as u64) {
            Ok(Resumed::Answered {
                recovered,
                offset,
                epoch,
            }) => Ok(ResumeResult {
                recovered,
                offset: offset as f64,
                epoch,
                pending: false,
            }),
            Ok(Resumed::Pending) => Ok(ResumeResult {
                recovered: false,
                offset: 0.0,
                epoch: String::new(),
                pending: true,
            }),
            Err(ResumeRefused::NoHistory) => Err(coded(
                ErrorCode::NoHistory,
                format!("topic '{topic}' has no history (server.topic(name, {{ history }}))"),
            )),
            Err(ResumeRefused::AlreadySubscribed) => Err(coded(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to '{topic}'"),
            )),
        }
    }

    #[napi]
    pub fn conn_unsubscribe(&self, id: f64, topic: String) -> bool {
        conn(self, id).is_some_and(|c| c.server.unsubscribe(&c, &topic))
    }
}
