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
//! **The event loop keeps running.** `lib/dispatch.js` handles events for at most a few
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
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::core::config::{
    EVENT_BATCH_BYTES, EVENT_BATCH_EVENTS, EVENT_OVERHEAD_BYTES, MAX_PENDING_EVENTS,
    MAX_PENDING_EVENT_BYTES,
};
use crate::core::message::Fate;
use crate::net::connection::Conn;
use crate::wire::handshake::Request;

/// What the queue wakes when it goes from idle to holding events: the JavaScript dispatcher (a
/// thread-safe function, in the napi layer), or a test. Called from any runtime thread, never
/// while a lock of the queue is held.
pub(crate) trait Wake: Send + Sync {
    fn wake(&self);
}

pub(crate) enum Event {
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
    /// The fate of a `send` with a callback: wholly handed to the kernel, dropped, replaced by a
    /// newer frame with the same conflation key, or expired.
    Sent {
        id: u64,
        token: u64,
        fate: Fate,
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

impl Event {
    /// What an event a reader produced costs while queued (payload + overhead); `None` for the
    /// events the server itself produces, whose number it bounds otherwise.
    pub(crate) fn inbound_cost(&self) -> Option<usize> {
        match self {
            Event::Message { data, .. } | Event::Ping { data, .. } | Event::Pong { data, .. } => {
                Some(data.len() + EVENT_OVERHEAD_BYTES)
            }
            _ => None,
        }
    }
}

pub(crate) struct EventSink {
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
    pub(crate) room: Notify,
    waker: Mutex<Option<Arc<dyn Wake>>>,
}

impl EventSink {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            scheduled: AtomicBool::new(false),
            pending_bytes: AtomicUsize::new(0),
            pending_events: AtomicUsize::new(0),
            room: Notify::new(),
            waker: Mutex::new(None),
        })
    }

    pub(crate) fn push(&self, ev: Event) {
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
            let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Takes the next batch from the front of the queue: at most [`EVENT_BATCH_EVENTS`] events
    /// and [`EVENT_BATCH_BYTES`] of cost (a larger single event goes alone). An empty batch means
    /// the queue was empty: the next push schedules a thread-safe call. Until then the caller
    /// takes the batches itself. JS thread only.
    pub(crate) fn take_batch(&self) -> Vec<Event> {
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
        events
    }

    /// True while readers should pause: JavaScript has not caught up with inbound events.
    pub(crate) fn is_full(&self) -> bool {
        self.pending_bytes.load(Ordering::Relaxed) > MAX_PENDING_EVENT_BYTES
            || self.pending_events.load(Ordering::Relaxed) >= MAX_PENDING_EVENTS
    }

    /// (inbound events, their cost in bytes) waiting for JavaScript right now.
    pub(crate) fn pending(&self) -> (usize, usize) {
        (
            self.pending_events.load(Ordering::Relaxed),
            self.pending_bytes.load(Ordering::Relaxed),
        )
    }

    /// Sets what a push into an idle queue wakes. Called once, before the server starts.
    pub(crate) fn attach(&self, waker: Arc<dyn Wake>) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(waker);
    }

    /// Forgets the waker: no further events reach JavaScript.
    pub(crate) fn detach(&self) {
        self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
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
