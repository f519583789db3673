//! **core**: the server's rules as plain state, with no I/O.
//!
//! What this layer promises:
//! - [`config`]: every option's default is one named constant here, with its reason; a
//!   [`config::Config`] is the validated, consistent configuration the engine runs with.
//! - [`policy`] and [`outbox`]: each connection's queue is bounded by bytes and by count, with
//!   priority lanes; Critical is never dropped by policy; every drop is counted by priority and
//!   bytes; `bufferedAmount` is the exact sum of the queued frames' bytes.
//! - [`message`]: the frame a broadcast shares by reference count with every recipient, its
//!   latency probe and the acknowledgement of a `send` with a callback, each reporting once.
//! - [`lifecycle`]: a connection's life as one state machine (close in either order, failures,
//!   timeouts, `terminate()`, errors), its transition table in the module doc; [`conn_state`]
//!   keeps it with the outbox under the connection's one lock so that the two never disagree (a
//!   model test explores every interleaving of the writer with pushes and closes).
//! - [`history`]: a topic's numbered history (offsets, epochs, size and age bounds) and the resume
//!   decision.
//! - [`metrics`]: counters and histograms, read without locks.
//! - [`topics`]: the topic registry, which reports a topic's first and last subscriber.
//! - [`random`]: unique names (a cluster node's id, a history's epoch).
//!
//! What it may not touch: no tokio, no sockets, no napi, no Redis. Time comes in as an `Instant`
//! argument, so every rule can be tested as a plain struct. It names only `wire` (for frame
//! encoding in tests and the handshake's refusal causes).
//!
//! Edge cases it owns: a close crossing the peer's close, or its FIN before our reply; a failure
//! after our close frame is already in the writer's batch; a queue at exactly its bound; one message larger than the whole bound; a
//! conflation key meeting a frame the writer has already taken into its batch (only frames still
//! queued are replaced); a deadline passing while a frame is queued (skipped and counted) or
//! while it is in the batch (written whole); history offsets across an epoch change.

pub(crate) mod config;
pub(crate) mod conn_state;
#[cfg(test)]
mod conn_state_model;
pub(crate) mod history;
pub(crate) mod lifecycle;
pub(crate) mod message;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod policy;
pub(crate) mod random;
pub(crate) mod topics;
