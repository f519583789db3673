//! Events from the runtime threads to JavaScript, batched.
//!
//! Runtime tasks [`EventSink::push`] events into one queue per server. A push into the queue
//! while JavaScript is idle schedules one call of a thread-safe function; that call takes a batch
//! from the front of the queue, at most [`EVENT_BATCH_EVENTS`] events and [`EVENT_BATCH_BYTES`],
//! and hands it to JavaScript as one array. From then on JavaScript takes the following batches
//! itself ([`EventSink::take_batch`] through `takeEvents()`), until one comes back empty: only then
//! does the next push make a thread-safe call again. However many events pile up between two
//! turns of the event loop (10,000 `backpressure` events after one broadcast to stalled clients,
//! say) they cost one wake-up, and are delivered in the order they were pushed: a connection's
//! `connection` event always precedes its messages, its messages precede its `close`.
//!
//! **The event loop keeps running.** `lib/sluice.js` handles events for at most a few
//! milliseconds at a time and takes the next batch from a `setImmediate`, so that timers and I/O
//! callbacks run in between. One thread-safe call at a time is what makes that work: Node
//! dispatches up to 1,000 queued calls of one thread-safe function in a row without returning to
//! the event loop, and a reader pushing events as fast as JavaScript takes them would keep it
//! there.
//!
//! The thread-safe function is created *weak*: pending events never keep the process alive. The
//! server refs it while it listens (as a listening `net.Server` keeps the process alive) and unrefs
//! it on `unref()` and after `close()`.
//!
//! Inbound events (messages, pings, pongs) are the one event source the server does not control,
//! so they are counted, by what they cost: payload plus [`EVENT_OVERHEAD_BYTES`] each, and by
//! number. Above [`MAX_PENDING_EVENT_BYTES`] or [`MAX_PENDING_EVENTS`] readers stop reading (see
//! [`EventSink::room`]) and TCP flow control slows the clients down until JavaScript has caught up.
//!
//! **What an event costs** (Node 20, x86-64), which [`EVENT_OVERHEAD_BYTES`] rounds up: the
//! `Event` itself, 112 bytes in the queue (a `VecDeque` that grows by doubling: up to 224); its
//! payload's share of the read buffer it was parsed from (about its frame's size on the wire);
//! then on the JS thread a 4-element array and a Buffer over a fresh ArrayBuffer, about 300 bytes
//! of V8 heap besides the payload's copy. Measured: 50,000 empty messages queued while the JS
//! thread was blocked added 15 MB of RSS, ~300 bytes each (the queue at 65,536 slots, plus the
//! smaller buffers it outgrew, which the allocator keeps); 16-byte messages ~360 bytes each. The
//! events of a batch are garbage once dispatched, so the JS part is bounded by the batch size,
//! not the queue's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env};
use tokio::sync::Notify;

use crate::config::{
    EVENT_BATCH_BYTES, EVENT_BATCH_EVENTS, EVENT_OVERHEAD_BYTES, MAX_PENDING_EVENTS,
    MAX_PENDING_EVENT_BYTES,
};
use crate::connection::Conn;
use crate::handshake::Request;
use crate::napi_api::NativeConnection;

/// Event kinds as the JS dispatcher sees them (first element of each event array).
pub mod kind {
    pub const CONNECTION: u32 = 0;
    pub const MESSAGE: u32 = 1;
    pub const CLOSE: u32 = 2;
    pub const BACKPRESSURE: u32 = 3;
    pub const DRAIN: u32 = 4;
    pub const ERROR: u32 = 5;
    pub const CLOSED: u32 = 6;
    pub const VERIFY: u32 = 7;
    pub const HANDSHAKE_FAILED: u32 = 8;
    pub const PING: u32 = 9;
    pub const PONG: u32 = 10;
    pub const SENT: u32 = 11;
    pub const PUBLISHED: u32 = 12;
    pub const RESUMED: u32 = 13;
    pub const RESYNC: u32 = 14;
    pub const FANOUT_DRAIN: u32 = 15;
    pub const PEER_CLOSE: u32 = 16;
}

pub enum Event {
    Connection {
        conn: Arc<Conn>,
        request: Request,
        /// The handshake's token when JavaScript knows it (a taken-over socket), else 0.
        token: u64,
    },
    Message {
        id: u64,
        data: Bytes,
        binary: bool,
    },
    Close {
        id: u64,
        code: u16,
        reason: String,
    },
    /// The peer sent a close frame, after the messages already queued here. JavaScript answers
    /// with `answerClose()` once it has handled them; the connection stays open until then.
    PeerClose {
        id: u64,
    },
    Backpressure {
        id: u64,
        amount: usize,
    },
    Drain {
        id: u64,
        amount: usize,
    },
    Error {
        code: &'static str,
        message: String,
    },
    /// The server finished closing: every connection is gone.
    Closed,
    /// A valid upgrade request waits for the JavaScript hooks (`verifyClient`, `handleProtocols`)
    /// before any answer is sent; JavaScript replies with `verifyReply(token, ..)`.
    Verify {
        token: u64,
        request: Request,
        protocols: Vec<String>,
    },
    /// A taken-over socket's handshake did not complete (answered with `status`, or 0 when the
    /// socket failed first): JavaScript forgets its token.
    HandshakeFailed {
        token: u64,
        status: u16,
    },
    /// A ping from the peer (delivered only while JavaScript listens for it).
    Ping {
        id: u64,
        data: Bytes,
    },
    /// A pong from the peer (delivered only while JavaScript listens for it).
    Pong {
        id: u64,
        data: Bytes,
    },
    /// The fate of a `send` with a callback: 0 wholly handed to the kernel, 1 dropped,
    /// 2 replaced by a newer frame with the same conflation key.
    Sent {
        id: u64,
        token: u64,
        fate: u8,
    },
    /// Cluster mode: Redis numbered a publish on a topic with history (or it could not be sent:
    /// `error` is the code).
    Published {
        token: u64,
        offset: u64,
        epoch: String,
        error: Option<&'static str>,
    },
    /// `onOverflow: 'resync'`: the connection's queued Normal and Low frames were discarded.
    Resync {
        id: u64,
        frames: u64,
        bytes: u64,
        /// Per topic with history: (topic, offset, epoch) of the latest message written.
        offsets: Vec<(String, u64, String)>,
    },
    /// The broadcasts waiting for fan-out fell below `pendingHighWaterMark` after a `broadcast`
    /// returned false (or `drained()` asked): the server's `drain`.
    FanoutDrain {
        pending: usize,
    },
    /// Cluster mode: a resume request was answered.
    Resumed {
        token: u64,
        recovered: bool,
        offset: u64,
        epoch: String,
    },
}

/// `(events) => void`, weak, called with the batch built in the callback.
pub type EventsTsfn = ThreadsafeFunction<(), (), EventBatch, Status, false, true, 0>;

impl Event {
    /// What an event a reader produced costs while queued (payload + overhead); `None` for the
    /// events the server itself produces, whose number it bounds otherwise.
    pub fn inbound_cost(&self) -> Option<usize> {
        match self {
            Event::Message { data, .. } | Event::Ping { data, .. } | Event::Pong { data, .. } => {
                Some(data.len() + EVENT_OVERHEAD_BYTES)
            }
            _ => None,
        }
    }
}

pub struct EventSink {
    queue: Mutex<VecDeque<Event>>,
    /// A delivery is under way: a JS call is scheduled, or JavaScript is handling batches and will
    /// take the next one. Set by the pusher that finds it clear (swap); cleared under the queue's
    /// lock by the take that finds the queue empty, so an event pushed after that take always
    /// schedules another call, and no call is made while JavaScript takes batches itself. SeqCst
    /// pairs the flag with the queue's mutex.
    scheduled: AtomicBool,
    /// Cost ([`Event::inbound_cost`]) of the inbound events queued for JS. Changed under the
    /// queue's lock; Relaxed: a threshold for pausing readers, read without the lock.
    pending_bytes: AtomicUsize,
    /// Number of inbound events queued for JS; like `pending_bytes`.
    pending_events: AtomicUsize,
    /// Notified when JS has taken a batch: paused readers re-check the bounds.
    pub room: Notify,
    tsfn: Mutex<Option<EventsTsfn>>,
}

impl EventSink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            scheduled: AtomicBool::new(false),
            pending_bytes: AtomicUsize::new(0),
            pending_events: AtomicUsize::new(0),
            room: Notify::new(),
            tsfn: Mutex::new(None),
        })
    }

    /// Wraps the JS dispatcher. Called once, on the JS thread.
    pub fn attach(self: &Arc<Self>, dispatcher: Function<'_, EventBatch, ()>) -> Result<()> {
        let weak: Weak<EventSink> = Arc::downgrade(self);
        let tsfn: EventsTsfn = dispatcher
            .build_threadsafe_function::<()>()
            .callee_handled::<false>()
            .weak::<true>()
            .build_callback(move |_ctx| {
                Ok(match weak.upgrade() {
                    Some(sink) => sink.take_batch(),
                    None => EventBatch::default(),
                })
            })?;
        *self.tsfn.lock().unwrap_or_else(|e| e.into_inner()) = Some(tsfn);
        Ok(())
    }

    pub fn push(&self, ev: Event) {
        let cost = ev.inbound_cost();
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cost {
                self.pending_bytes.fetch_add(c, Ordering::Relaxed);
                self.pending_events.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(ev);
        }
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            if let Some(tsfn) = self.tsfn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                // NonBlocking on an unbounded queue: fails only while the env is shutting down,
                // when there is nobody left to deliver to.
                tsfn.call((), ThreadsafeFunctionCallMode::NonBlocking);
            }
        }
    }

    /// Takes the next batch from the front of the queue: at most [`EVENT_BATCH_EVENTS`] events
    /// and [`EVENT_BATCH_BYTES`] of cost (a larger single event goes alone). An empty batch means
    /// the queue was empty: the next push schedules a thread-safe call. Until then the caller
    /// takes the batches itself. JS thread only.
    pub fn take_batch(&self) -> EventBatch {
        let mut taken_bytes = 0usize;
        let mut taken_events = 0usize;
        let mut batch_bytes = 0usize;
        let events = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let mut n = 0;
            for ev in q.iter() {
                let c = ev.inbound_cost();
                let size = c.unwrap_or(EVENT_OVERHEAD_BYTES);
                if n == EVENT_BATCH_EVENTS || (n > 0 && batch_bytes + size > EVENT_BATCH_BYTES) {
                    break;
                }
                batch_bytes += size;
                if let Some(c) = c {
                    taken_bytes += c;
                    taken_events += 1;
                }
                n += 1;
            }
            if n == 0 {
                self.scheduled.store(false, Ordering::SeqCst);
                if q.capacity() > 4 * EVENT_BATCH_EVENTS {
                    // JavaScript has caught up after a flood: give back what the queue grew to.
                    q.shrink_to(EVENT_BATCH_EVENTS);
                }
            }
            let events: Vec<Event> = q.drain(..n).collect();
            if taken_events > 0 {
                self.pending_bytes.fetch_sub(taken_bytes, Ordering::Relaxed);
                self.pending_events
                    .fetch_sub(taken_events, Ordering::Relaxed);
            }
            events
        };
        if taken_events > 0 {
            self.room.notify_waiters();
        }
        EventBatch(events)
    }

    /// True while readers should pause: JavaScript has not caught up with inbound events.
    pub fn is_full(&self) -> bool {
        self.pending_bytes.load(Ordering::Relaxed) > MAX_PENDING_EVENT_BYTES
            || self.pending_events.load(Ordering::Relaxed) >= MAX_PENDING_EVENTS
    }

    /// (inbound events, their cost in bytes) waiting for JavaScript right now.
    pub fn pending(&self) -> (usize, usize) {
        (
            self.pending_events.load(Ordering::Relaxed),
            self.pending_bytes.load(Ordering::Relaxed),
        )
    }

    /// Keeps the process alive (`true`) or lets it exit (`false`). JS thread only.
    #[allow(deprecated)] // napi-rs deprecates ref/unref in favour of clone/drop, which can't unref a live TSFN.
    pub fn set_ref(&self, env: &Env, keep_alive: bool) -> Result<()> {
        if let Some(tsfn) = self.tsfn.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            if keep_alive {
                tsfn.refer(env)?;
            } else {
                tsfn.unref(env)?;
            }
        }
        Ok(())
    }

    /// Releases the thread-safe function: no further events reach JavaScript.
    pub fn detach(&self) {
        self.tsfn.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// One batch of events, converted to `Array<[kind, id, a, b]>` on the JS thread.
#[derive(Default)]
pub struct EventBatch(pub Vec<Event>);

impl TypeName for EventBatch {
    fn type_name() -> &'static str {
        "Array<Array<any>>"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ToNapiValue for EventBatch {
    unsafe fn to_napi_value(raw_env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let env = Env::from_raw(raw_env);
        let mut out = env.create_array(val.0.len() as u32)?;
        for (i, ev) in val.0.into_iter().enumerate() {
            let mut e = env.create_array(4)?;
            match ev {
                Event::Connection {
                    conn,
                    request,
                    token,
                } => {
                    e.set(0, kind::CONNECTION)?;
                    e.set(1, conn.id as f64)?;
                    e.set(2, NativeConnection::new(&conn))?;
                    e.set(3, request_object(&env, request)?)?;
                    e.set(4, token as f64)?;
                }
                Event::Message { id, data, binary } => {
                    e.set(0, kind::MESSAGE)?;
                    e.set(1, id as f64)?;
                    e.set(2, &BufferSlice::copy_from(&env, &data)?)?;
                    e.set(3, binary)?;
                }
                Event::Close { id, code, reason } => {
                    e.set(0, kind::CLOSE)?;
                    e.set(1, id as f64)?;
                    e.set(2, code as u32)?;
                    e.set(3, reason)?;
                }
                Event::PeerClose { id } => {
                    e.set(0, kind::PEER_CLOSE)?;
                    e.set(1, id as f64)?;
                }
                Event::Backpressure { id, amount } => {
                    e.set(0, kind::BACKPRESSURE)?;
                    e.set(1, id as f64)?;
                    e.set(2, amount as f64)?;
                }
                Event::Drain { id, amount } => {
                    e.set(0, kind::DRAIN)?;
                    e.set(1, id as f64)?;
                    e.set(2, amount as f64)?;
                }
                Event::Error { code, message } => {
                    e.set(0, kind::ERROR)?;
                    e.set(1, 0)?;
                    e.set(2, code)?;
                    e.set(3, message)?;
                }
                Event::Closed => {
                    e.set(0, kind::CLOSED)?;
                    e.set(1, 0)?;
                }
                Event::Verify {
                    token,
                    request,
                    protocols,
                } => {
                    e.set(0, kind::VERIFY)?;
                    e.set(1, token as f64)?;
                    e.set(2, request_object(&env, request)?)?;
                    e.set(3, protocols)?;
                }
                Event::HandshakeFailed { token, status } => {
                    e.set(0, kind::HANDSHAKE_FAILED)?;
                    e.set(1, token as f64)?;
                    e.set(2, status as u32)?;
                }
                Event::Ping { id, data } => {
                    e.set(0, kind::PING)?;
                    e.set(1, id as f64)?;
                    e.set(2, &BufferSlice::copy_from(&env, &data)?)?;
                }
                Event::Pong { id, data } => {
                    e.set(0, kind::PONG)?;
                    e.set(1, id as f64)?;
                    e.set(2, &BufferSlice::copy_from(&env, &data)?)?;
                }
                Event::Published {
                    token,
                    offset,
                    epoch,
                    error,
                } => {
                    e.set(0, kind::PUBLISHED)?;
                    e.set(1, token as f64)?;
                    e.set(2, offset as f64)?;
                    e.set(3, epoch)?;
                    if let Some(code) = error {
                        e.set(4, code)?;
                    }
                }
                Event::Resumed {
                    token,
                    recovered,
                    offset,
                    epoch,
                } => {
                    e.set(0, kind::RESUMED)?;
                    e.set(1, token as f64)?;
                    e.set(2, recovered)?;
                    e.set(3, offset as f64)?;
                    e.set(4, epoch)?;
                }
                Event::Resync {
                    id,
                    frames,
                    bytes,
                    offsets,
                } => {
                    e.set(0, kind::RESYNC)?;
                    e.set(1, id as f64)?;
                    e.set(2, frames as f64)?;
                    e.set(3, bytes as f64)?;
                    // `[topic, offset, epoch, ...]`: JavaScript builds the object (a topic may be
                    // named `__proto__`).
                    let mut flat = env.create_array((offsets.len() * 3) as u32)?;
                    for (i, (topic, offset, epoch)) in offsets.into_iter().enumerate() {
                        let i = (i * 3) as u32;
                        flat.set(i, topic)?;
                        flat.set(i + 1, offset as f64)?;
                        flat.set(i + 2, epoch)?;
                    }
                    e.set(4, flat)?;
                }
                Event::FanoutDrain { pending } => {
                    e.set(0, kind::FANOUT_DRAIN)?;
                    e.set(1, 0)?;
                    e.set(2, pending as f64)?;
                }
                Event::Sent { id, token, fate } => {
                    e.set(0, kind::SENT)?;
                    e.set(1, id as f64)?;
                    e.set(2, token as f64)?;
                    e.set(3, fate as u32)?;
                }
            }
            out.set(i as u32, e)?;
        }
        unsafe { ToNapiValue::to_napi_value(raw_env, out) }
    }
}

fn request_object(env: &Env, r: Request) -> Result<Object<'_>> {
    let mut o = Object::new(env)?;
    o.set("url", r.url)?;
    let mut headers = Object::new(env)?;
    // Repeated headers are joined with ", " as Node's IncomingMessage does for most of them.
    let mut seen: Vec<(String, String)> = Vec::with_capacity(r.headers.len());
    for (name, value) in r.headers {
        match seen.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            None => seen.push((name, value)),
        }
    }
    for (name, value) in seen {
        headers.set(name, value)?;
    }
    o.set("headers", headers)?;
    o.set("remoteAddress", r.remote.ip().to_string())?;
    o.set("remotePort", r.remote.port() as u32)?;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `EVENT_OVERHEAD_BYTES` is documented from this size: revisit it if an event grows.
    #[test]
    fn event_size_is_what_the_overhead_assumes() {
        assert!(std::mem::size_of::<Event>() <= 112);
        assert!(2 * std::mem::size_of::<Event>() + 64 <= EVENT_OVERHEAD_BYTES);
    }
}
