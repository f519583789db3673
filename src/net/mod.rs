//! **net**: the tokio tasks that own the sockets.
//!
//! What this layer promises:
//! - [`server`]: the listener and the accept thread (handshakes, refusals, `maxConnections`), the
//!   registry of connections and topics, the hand-over of sockets Node's http server accepted,
//!   and the graceful close (every connection gets 1001, then the `closed` event).
//! - [`connection`]: each connection's reader and writer on the worker runtime: the writer
//!   coalesces queued frames into vectored writes and accounts every byte; the reader reads within
//!   a budget per wake-up ([`inbound`]) and pauses while JavaScript has not taken its events; the
//!   heartbeat and the close handshake in either order, with their deadlines, as the
//!   connection's `core::lifecycle` state machine decides them.
//! - [`fanout`]: one task takes every broadcast, publish, `send` behind a broadcast and `close`
//!   behind a broadcast in submission order and queues the shared frame to each recipient; its own
//!   backlog is bounded by bytes (`maxPendingBytes`), Critical never refused.
//! - [`events`]: events reach JavaScript in batches through one queue that wakes a [`events::Wake`]
//!   (the napi layer's thread-safe function, or a test); inbound events are bounded by cost and
//!   count, and readers pause above the bound.
//! - [`lagging`]: what the kernel may hold for a connection that does not read.
//! - [`tls`]: `wss://` (the `tls` option): the certificate checked when the server is created,
//!   the TLS handshake under `handshakeTimeout` with its first record paced, and [`tls::Sock`],
//!   through which every connection reads, writes and waits, plain or over rustls.
//! - [`peers`]: what the server asks of the other nodes of a cluster, as a trait. This layer never
//!   names the transport; without the `cluster` option there are no peers.
//! - [`routing`]: where a broadcast, a publish, a topic's history and a resume go (the local
//!   fan-out and history, the peers, or both), decided here so that napi only maps arguments; a
//!   publish with history is numbered under the history's lock with its fan-out job, and a resume
//!   has one entry point whichever store answers it.
//!
//! What it may not touch: no napi (events leave through [`events::Wake`]), no Redis (the cluster
//! is reached through [`peers::Peers`]). No connection may hold more than its share: a worker's
//! time (read and write budgets per wake-up), memory (bounded outbox, bounded partial messages,
//! bounded events) or the JS thread (events in batches).
//!
//! Edge cases it owns: a client that stops reading (its queue fills, then the policy acts); one
//! that dribbles its head or its frames; a peer that closes first, or half-closes; a connection
//! that ends while broadcasts to it are in flight (frames dropped and counted, acks reported).

pub(crate) mod connection;
pub(crate) mod events;
pub(crate) mod fanout;
pub(crate) mod handshake;
pub(crate) mod inbound;
pub(crate) mod lagging;
pub(crate) mod peers;
pub(crate) mod routing;
pub(crate) mod server;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
pub(crate) mod tls;
