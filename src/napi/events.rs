//! Events to JavaScript: the wake-up of the JS dispatcher (a weak thread-safe function) and the
//! conversion of a batch of [`Event`]s to arrays on the JS thread.

use std::sync::{Arc, Weak};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env};

use napi_derive::napi;

use crate::core::message::Fate;
use crate::net::connection::interest;
use crate::net::events::{Event, EventSink, Wake};
use crate::wire::handshake::Request;

/// The kind of an event as JavaScript's dispatcher (`lib/dispatch.js`) receives it: the first
/// element of each event array. The elements after it, by kind:
#[napi]
pub enum EventKind {
    /// `[kind, id, protocol, request, token, extensions]`: a connection is open; `request` is
    /// the object of sluice's own listener, `token` (0 there) the handshake's of a taken-over
    /// socket; `protocol` and `extensions` are what the 101 said (`''` if nothing). Calls on the
    /// connection are the server's `conn*` methods, by id.
    Connection,
    /// `[kind, id, data: Buffer, binary: boolean]`: a message (only while JavaScript listens).
    Message,
    /// `[kind, id, code, reason]`: the connection has ended.
    Close,
    /// `[kind, id, bufferedAmount]`: bufferedAmount rose above `highWaterMark`.
    Backpressure,
    /// `[kind, id, bufferedAmount]`: bufferedAmount fell below `lowWaterMark`.
    Drain,
    /// `[kind, 0]`: the server has closed; every connection is gone.
    Closed,
    /// `[kind, token, request, protocols]`: a valid upgrade waits for `verifyReply(token, ..)`.
    Verify,
    /// `[kind, token, status]`: a handshake JavaScript knows of failed (or was refused).
    HandshakeFailed,
    /// `[kind, id, data: Buffer]`: a ping from the peer (only while JavaScript listens).
    Ping,
    /// `[kind, id, data: Buffer]`: a pong from the peer (only while JavaScript listens).
    Pong,
    /// `[kind, id, token, fate: SendFate]`: what became of a `send` with a callback.
    Sent,
    /// `[kind, token, offset, epoch, code?]`: Redis numbered a publish on a topic with history,
    /// or (`code`) it could not be sent.
    Published,
    /// `[kind, token, recovered, offset, epoch]`: a resume through Redis is answered.
    Resumed,
    /// `[kind, id, dropped, bytes, [topic, offset, epoch, ...]]`: `onOverflow: 'resync'`.
    Resync,
    /// `[kind, 0, pendingBytes]`: the fan-out backlog fell below `pendingHighWaterMark`.
    FanoutDrain,
    /// `[kind, id]`: the peer's close frame; every message before it has been delivered.
    PeerClose,
}

/// What became of a frame sent with a callback (the `Sent` event's fate).
#[napi]
pub enum SendFate {
    /// Every byte reached the kernel.
    Written,
    /// Refused by policy, evicted, or discarded when the connection ended.
    Dropped,
    /// A newer frame with the same conflation key took its place before it was written.
    Replaced,
    /// Its `ttl` ran out before the writer reached it.
    Expired,
}

impl From<Fate> for SendFate {
    fn from(f: Fate) -> Self {
        match f {
            Fate::Written => SendFate::Written,
            Fate::Dropped => SendFate::Dropped,
            Fate::Replaced => SendFate::Replaced,
            Fate::Expired => SendFate::Expired,
        }
    }
}

/// Inbound events a connection passes to JavaScript, as bits of
/// `NativeServer.connSetInterest`: without a listener they never wake the JS thread.
#[napi]
pub enum Interest {
    Message = 1,
    Ping = 2,
    Pong = 4,
}

// The bits are the connection's own (napi takes only literals for an enum's values).
const _: () = {
    assert!(Interest::Message as u8 == interest::MESSAGE);
    assert!(Interest::Ping as u8 == interest::PING);
    assert!(Interest::Pong as u8 == interest::PONG);
};

/// `(events) => void`, weak, called with the batch built in the callback.
pub type EventsTsfn = ThreadsafeFunction<(), (), EventBatch, Status, false, true, 0>;

/// The JS dispatcher, woken by a push into an idle queue.
pub struct JsWaker {
    tsfn: std::sync::Mutex<Option<EventsTsfn>>,
}

impl Wake for JsWaker {
    fn wake(&self) {
        if let Some(tsfn) = self.tsfn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            // NonBlocking on an unbounded queue: fails only while the env is shutting down,
            // when there is nobody left to deliver to.
            tsfn.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

impl JsWaker {
    /// Wraps the JS dispatcher. Called once, on the JS thread.
    pub fn attach(
        sink: &Arc<EventSink>,
        dispatcher: Function<'_, EventBatch, ()>,
    ) -> Result<Arc<JsWaker>> {
        let weak: Weak<EventSink> = Arc::downgrade(sink);
        let tsfn: EventsTsfn = dispatcher
            .build_threadsafe_function::<()>()
            .callee_handled::<false>()
            .weak::<true>()
            .build_callback(move |_ctx| {
                Ok(match weak.upgrade() {
                    Some(sink) => EventBatch(sink.take_batch()),
                    None => EventBatch::default(),
                })
            })?;
        let waker = Arc::new(JsWaker {
            tsfn: std::sync::Mutex::new(Some(tsfn)),
        });
        sink.attach(waker.clone());
        Ok(waker)
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

    /// Releases the thread-safe function.
    pub fn release(&self) {
        self.tsfn.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// One batch of events, converted to `Array<[kind, id, a, b]>` on the JS thread.
#[derive(Default)]
pub struct EventBatch(pub(crate) Vec<Event>);

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
                    e.set(0, EventKind::Connection)?;
                    e.set(1, conn.id as f64)?;
                    e.set(2, &*conn.protocol)?;
                    e.set(3, request_object(&env, request)?)?;
                    e.set(4, token as f64)?;
                    let extensions = conn.deflate.map(|n| n.response());
                    e.set(5, extensions.as_deref().unwrap_or(""))?;
                }
                Event::Message { id, data, binary } => {
                    e.set(0, EventKind::Message)?;
                    e.set(1, id as f64)?;
                    e.set(2, &BufferSlice::copy_from(&env, &data)?)?;
                    e.set(3, binary)?;
                }
                Event::Close { id, code, reason } => {
                    e.set(0, EventKind::Close)?;
                    e.set(1, id as f64)?;
                    e.set(2, code as u32)?;
                    e.set(3, reason)?;
                }
                Event::PeerClose { id } => {
                    e.set(0, EventKind::PeerClose)?;
                    e.set(1, id as f64)?;
                }
                Event::Backpressure { id, amount } => {
                    e.set(0, EventKind::Backpressure)?;
                    e.set(1, id as f64)?;
                    e.set(2, amount as f64)?;
                }
                Event::Drain { id, amount } => {
                    e.set(0, EventKind::Drain)?;
                    e.set(1, id as f64)?;
                    e.set(2, amount as f64)?;
                }
                Event::Closed => {
                    e.set(0, EventKind::Closed)?;
                    e.set(1, 0)?;
                }
                Event::Verify {
                    token,
                    request,
                    protocols,
                } => {
                    e.set(0, EventKind::Verify)?;
                    e.set(1, token as f64)?;
                    e.set(2, request_object(&env, request)?)?;
                    e.set(3, protocols)?;
                }
                Event::HandshakeFailed { token, status } => {
                    e.set(0, EventKind::HandshakeFailed)?;
                    e.set(1, token as f64)?;
                    e.set(2, status as u32)?;
                }
                Event::Ping { id, data } => {
                    e.set(0, EventKind::Ping)?;
                    e.set(1, id as f64)?;
                    e.set(2, &BufferSlice::copy_from(&env, &data)?)?;
                }
                Event::Pong { id, data } => {
                    e.set(0, EventKind::Pong)?;
                    e.set(1, id as f64)?;
                    e.set(2, &BufferSlice::copy_from(&env, &data)?)?;
                }
                Event::Published {
                    token,
                    offset,
                    epoch,
                    error,
                } => {
                    e.set(0, EventKind::Published)?;
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
                    e.set(0, EventKind::Resumed)?;
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
                    e.set(0, EventKind::Resync)?;
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
                    e.set(0, EventKind::FanoutDrain)?;
                    e.set(1, 0)?;
                    e.set(2, pending as f64)?;
                }
                Event::Sent { id, token, fate } => {
                    e.set(0, EventKind::Sent)?;
                    e.set(1, id as f64)?;
                    e.set(2, token as f64)?;
                    e.set(3, SendFate::from(fate))?;
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
