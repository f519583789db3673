//! **napi**: the only `#[napi]` code; the native classes that `lib/` wraps in Node-style
//! EventEmitters.
//!
//! What this layer promises: every method returns at once. `broadcast`/`publish` copy the payload
//! once into a frame and hand it to the fan-out task; `send` queues into one outbox; getters read
//! atomics. Nothing here waits on a socket, and nothing loops over connections on the JS thread.
//!
//! - [`options`]: the options object as JavaScript passes it: the one place it is checked (each
//!   option, then the relations between them), mapped to `core::config::Config`.
//! - [`errors`]: errors with their `code` as a field (and, for options, their class);
//!   [`limits`]: the defaults and limits JavaScript needs itself, exported as constants.
//! - [`server`], [`connection`]: thin wrappers of `net::server::ServerShared` and
//!   `net::connection::Conn`: argument mapping, results, errors with their `code`.
//! - [`events`]: the JS dispatcher the event queue wakes, and the conversion of events to arrays
//!   (`EventKind`, `SendFate` and `Interest` exported as enums, so that `lib/` copies no number).
//! - [`metrics`]: the `metrics()` snapshot. [`runtime`]: the worker and accept runtimes, thread
//!   priority, tracing.
//!
//! What it may not touch: no decision of the engine's own (fan-out order, policy, history
//! numbering, routing between local fan-out and the peers): those live in `net` and `core`, so
//! that they are tested without Node. It may name every layer below it.

use std::sync::{Arc, Once};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

pub mod connection;
pub mod errors;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod options;
pub mod runtime;
pub mod server;

use crate::cluster::Link;
use crate::core::config::{self, Config};
use crate::core::history::HistoryLimits;
use crate::core::message::{Frame, SendAck};
use crate::core::metrics::Metrics as CoreMetrics;
use crate::core::metrics::Termination;
use crate::core::policy::Priority as CorePriority;
use crate::net::connection::Conn;
use crate::net::events::{Event, EventSink};
use crate::net::fanout::{Except, Stamp, Target};
use crate::net::server::ServerShared;
use crate::wire::frame::{encode, OpCode, MAX_CONTROL_PAYLOAD};
use crate::wire::handshake::{RefusalCause, RequestParts, Verdict};
use errors::{coded, ErrorCode};
use events::{EventBatch, JsWaker};

/// Message priority. Strings `'critical' | 'normal' | 'low'` are accepted wherever a priority is.
#[napi(string_enum = "lowercase", js_name = "Priority")]
pub enum Priority {
    /// Never dropped; goes ahead of queued Normal and Low frames (never inside a frame already
    /// being written). A connection that cannot take it under `maxBufferedAmount` is terminated.
    Critical,
    /// The default. Over `maxBufferedAmount` the `onOverflow` policy applies.
    Normal,
    /// Dropped (and counted) for a connection whose bufferedAmount is above `lowPriorityLimit`,
    /// and the first to be evicted to make room for Normal and Critical frames.
    Low,
}

impl From<Priority> for CorePriority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Critical => CorePriority::Critical,
            Priority::Normal => CorePriority::Normal,
            Priority::Low => CorePriority::Low,
        }
    }
}

/// Per-message options of `broadcast`, `publish` and `send`, as `lib/options.js` passes them.
#[napi(object)]
#[derive(Default)]
pub struct MessageOptions {
    /// Conflation key: a newer message with the same key replaces this one while it still waits
    /// in a connection's queue.
    pub key: Option<String>,
    /// Time to live in ms from the call: a message still queued for a connection when it runs out
    /// is skipped, never written, and counted in `expired`. `0`: no expiry, whatever `defaultTtl`
    /// says. Default: the server's `defaultTtl` for Normal and Low, none for Critical.
    pub ttl: Option<u32>,
    /// Ids of connections that do not get this broadcast (`broadcast`/`publish` only).
    pub except: Option<Vec<f64>>,
}

/// The number a message got on a topic with history.
#[napi(object)]
pub struct PublishResult {
    pub offset: f64,
    pub epoch: String,
    /// Cluster mode: Redis numbers the message; a `published` event with the token answers.
    pub pending: bool,
}

/// The answer to `conn.subscribe(topic, { since })`.
#[napi(object)]
pub struct ResumeResult {
    /// True if every message after `since` was replayed; false if the epoch differs or they are
    /// no longer all kept (send the client a snapshot instead).
    pub recovered: bool,
    /// The topic's latest offset when the subscription took effect.
    pub offset: f64,
    pub epoch: String,
    /// Cluster mode: the link task answers with a `resumed` event carrying the token.
    pub pending: bool,
}

/// Result of `listen()`: the bound address, or the error (`code` such as `'EADDRINUSE'`).
#[napi(object)]
pub struct ListenResult {
    pub port: u32,
    pub address: String,
    pub family: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// The options of one message: the key, the deadline (its own `ttl`, `0` for none, else the
/// server's `defaultTtl` for Normal and Low) and the connections it skips.
fn stamp(server: &ServerShared, priority: CorePriority, o: MessageOptions) -> Stamp {
    let ttl = match o.ttl {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms as u64)),
        None if priority != CorePriority::Critical => server.config.default_ttl,
        None => None,
    };
    Stamp {
        key: o.key.map(Arc::from),
        ttl,
        except: Except::from_ids(
            o.except
                .unwrap_or_default()
                .into_iter()
                .map(|id| id as u64)
                .collect(),
        ),
        tag: None,
    }
}

// Keep the defaults documented above in one place with the constants that implement them.
const _: () = {
    assert!(config::DEFAULT_PING_INTERVAL_MS == 30_000);
    assert!(config::DEFAULT_PONG_TIMEOUT_MS == 10_000);
    assert!(config::DEFAULT_HANDSHAKE_TIMEOUT_MS == 5_000);
    assert!(config::DEFAULT_CLOSE_TIMEOUT_MS == 5_000);
    assert!(config::DEFAULT_MAX_PAYLOAD == 1_048_576);
    assert!(crate::core::policy::DEFAULT_MAX_BUFFERED_AMOUNT == 524_288);
    assert!(crate::core::policy::DEFAULT_LOW_PRIORITY_LIMIT == 131_072);
    assert!(crate::core::policy::DEFAULT_HIGH_WATER_MARK == 65_536);
    assert!(crate::core::policy::DEFAULT_LOW_WATER_MARK == 16_384);
};
