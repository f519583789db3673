//! sluice: a Rust-owned WebSocket server for Node.js whose broadcast never blocks the event loop.
//!
//! JavaScript calls `broadcast(buffer, priority)`; the payload is copied once into a frame, and a
//! runtime task queues a reference to that frame for every recipient. Each connection has a bounded
//! outbox with priority lanes and a per-priority policy, and its own writer that coalesces queued
//! frames into vectored writes. Events (connections, messages, backpressure, drain, close) reach
//! JavaScript in batches.
//!
//! Where things are: five layers, each a folder whose `mod.rs` is its spec, each naming only the
//! layers above it in this list (`layering.rs` checks it):
//!
//! | layer | role | may not touch |
//! |---|---|---|
//! | `wire/` | bytes: frame encoding, close codes, the handshake parser, the cluster message format | tokio, napi, Redis, other layers |
//! | `core/` | plain state: config and defaults, policy, outbox, the connection's close state machine, shared frames, history, topics, metrics | tokio, napi, Redis |
//! | `net/` | tokio tasks: accept and handshakes, connection reader and writer, fan-out, routing, the event queue, the `Peers` trait | napi, Redis (the cluster only through `Peers`) |
//! | `cluster/` | the cluster link over Redis, implementing `net::peers::Peers` | napi |
//! | `napi/` | the only `#[napi]` code: native classes, option mapping, errors with codes, event conversion, runtimes | (top) |
//!
//! `fuzz.rs` holds the fuzz targets of the handshake and frame parsers (for `fuzz_tests.rs` and
//! `fuzz/`).

mod cluster;
mod core;
#[doc(hidden)]
pub mod fuzz;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod layering;
mod napi;
mod net;
mod wire;
