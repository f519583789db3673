//! `NativeConnection`: the native half of `Connection` (send, close, subscribe, resume, getters).

use super::*;

use crate::net::routing::{ResumeRefused, Resumed};

/// Native half of `Connection`. It holds the connection weakly: once the connection has ended its
/// socket is closed at once, whatever JavaScript still holds.
#[napi]
pub struct NativeConnection {
    conn: Weak<Conn>,
    id: u64,
    /// To report a `send` callback's drop once the connection is gone.
    events: Arc<EventSink>,
}

impl NativeConnection {
    pub(crate) fn new(conn: &Arc<Conn>) -> Self {
        Self {
            conn: Arc::downgrade(conn),
            id: conn.id,
            events: conn.server.events.clone(),
        }
    }
}

#[napi]
impl NativeConnection {
    #[napi(getter)]
    pub fn id(&self) -> f64 {
        self.id as f64
    }

    /// Bytes of messages queued and not yet handed to the kernel (the close frame is not
    /// counted); 0 once closed.
    #[napi(getter)]
    pub fn buffered_amount(&self) -> f64 {
        self.conn
            .upgrade()
            .map_or(0.0, |c| c.buffered_data() as f64)
    }

    /// Bytes in the kernel's send queue not yet acknowledged by the peer (Linux `SIOCOUTQ`);
    /// `null` elsewhere or once closed.
    #[napi(getter)]
    pub fn kernel_buffered_amount(&self) -> Option<f64> {
        self.conn
            .upgrade()
            .and_then(|c| c.kernel_buffered_amount())
            .map(|v| v as f64)
    }

    /// Age in ms of the oldest message queued for this connection and not yet written; 0 when
    /// nothing waits, or once closed.
    #[napi(getter)]
    pub fn lag(&self) -> f64 {
        self.conn.upgrade().map_or(0.0, |c| {
            c.lag(tokio::time::Instant::now()).as_secs_f64() * 1000.0
        })
    }

    /// Queued messages of this connection whose `ttl` ran out before they were written.
    #[napi(getter)]
    pub fn expired(&self) -> f64 {
        self.conn.upgrade().map_or(0.0, |c| {
            c.expired.load(std::sync::atomic::Ordering::Relaxed) as f64
        })
    }

    /// Queued messages of this connection replaced by a newer one with the same key.
    #[napi(getter)]
    pub fn replaced(&self) -> f64 {
        self.conn.upgrade().map_or(0.0, |c| {
            c.replaced.load(std::sync::atomic::Ordering::Relaxed) as f64
        })
    }

    /// True until a close starts.
    #[napi(getter)]
    pub fn is_open(&self) -> bool {
        self.conn.upgrade().is_some_and(|c| c.is_open())
    }

    /// The negotiated extensions (the 101's `Sec-WebSocket-Extensions`), `''` if none.
    #[napi(getter)]
    pub fn extensions(&self) -> String {
        self.conn
            .upgrade()
            .and_then(|c| c.deflate.map(|n| n.response()))
            .unwrap_or_default()
    }

    /// The negotiated subprotocol, `''` if none.
    #[napi(getter)]
    pub fn protocol(&self) -> String {
        self.conn
            .upgrade()
            .map(|c| c.protocol.clone())
            .unwrap_or_default()
    }

    /// Which inbound events reach JavaScript: bits 1 message, 2 ping, 4 pong.
    #[napi]
    pub fn set_interest(&self, bits: u32) {
        if let Some(c) = self.conn.upgrade() {
            c.set_interest(bits as u8);
        }
    }

    /// Queues `data` as one frame. With `ack`, a `sent` event with that token reports whether it
    /// was wholly handed to the kernel or dropped.
    #[napi]
    pub fn send(
        &self,
        data: &[u8],
        priority: Priority,
        text: bool,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.deliver(data, op, priority, ack, options)
    }

    #[napi]
    pub fn send_text(
        &self,
        data: String,
        priority: Priority,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        self.deliver(data.as_bytes(), OpCode::Text, priority, ack, options)
    }

    fn deliver(
        &self,
        data: &[u8],
        op: OpCode,
        priority: Priority,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        let ack = ack.map(|token| {
            let (events, id, token) = (self.events.clone(), self.id, token as u64);
            SendAck::new(move |fate| events.push(Event::Sent { id, token, fate }))
        });
        let Some(c) = self.conn.upgrade() else {
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
    pub fn ping(&self, data: &[u8], pong: bool) -> Result<bool, ErrorCode> {
        if data.len() > MAX_CONTROL_PAYLOAD {
            return Err(coded(
                ErrorCode::InvalidData,
                "ping/pong data must be at most 125 bytes",
            ));
        }
        Ok(self
            .conn
            .upgrade()
            .is_some_and(|c| c.send_control(pong, data)))
    }

    /// Graceful close after queued data (and after broadcasts made before it). False if already
    /// closing or closed.
    #[napi]
    pub fn close(&self, code: u32, reason: String) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|c| c.close_ordered(code as u16, &reason))
    }

    /// Answers the peer's close frame, once the events before it have been handled (internal:
    /// `lib/dispatch.js` calls it when it reaches the close in the event stream).
    #[napi]
    pub fn answer_close(&self) {
        if let Some(c) = self.conn.upgrade() {
            c.answer_peer_close_ordered();
        }
    }

    /// Drops the TCP connection now; queued data is discarded (and counted).
    #[napi]
    pub fn terminate(&self) -> bool {
        match self.conn.upgrade() {
            Some(c) => {
                c.end(Some(Termination::Requested));
                true
            }
            None => false,
        }
    }

    /// False if already subscribed (or a resume of the topic is under way) or closed.
    #[napi]
    pub fn subscribe(&self, topic: String) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|c| !c.is_resuming(&topic) && c.server.subscribe(&c, &topic))
    }

    /// Subscribes to a topic with history, first replaying what the client missed after
    /// `offset` of `epoch` (in order with the publishes around it: no gap, no duplicate).
    #[napi]
    pub fn resume(
        &self,
        topic: String,
        offset: f64,
        epoch: String,
        token: f64,
    ) -> Result<ResumeResult, ErrorCode> {
        let Some(c) = self.conn.upgrade() else {
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
    pub fn unsubscribe(&self, topic: String) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|c| c.server.unsubscribe(&c, &topic))
    }
}
