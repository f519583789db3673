//! Events to JavaScript: the wake-up of the JS dispatcher (a weak thread-safe function) and the
//! conversion of a batch of [`Event`]s to arrays on the JS thread.

use std::sync::{Arc, Weak};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env};

use crate::napi::connection::NativeConnection;
use crate::net::events::{Event, EventSink, Wake};
use crate::wire::handshake::Request;

/// Event kinds as the JS dispatcher sees them (first element of each event array).
pub mod kind {
    pub const CONNECTION: u32 = 0;
    pub const MESSAGE: u32 = 1;
    pub const CLOSE: u32 = 2;
    pub const BACKPRESSURE: u32 = 3;
    pub const DRAIN: u32 = 4;
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
