//! sluice: a Rust-owned WebSocket server for Node.js whose broadcast never blocks the event loop.
//!
//! JavaScript calls `broadcast(buffer, priority)`; the payload is copied once into a frame, and a
//! runtime task queues a reference to that frame for every recipient. Each connection has a bounded
//! outbox with priority lanes and a per-priority policy, and its own writer that coalesces queued
//! frames into vectored writes. Events (connections, messages, backpressure, drain, close) reach
//! JavaScript in batches.
//!
//! Where things are:
//!
//! | role | file |
//! |---|---|
//! | napi surface (native classes, options, metrics object) | `napi_api.rs` |
//! | listener, accept loop, registry, topics, shutdown | `server.rs` |
//! | opening handshake | `handshake.rs` |
//! | per-connection reader, writer, heartbeat, close | `connection.rs` |
//! | what one client may make the reader do (read budget, rate limits, partly received messages), and the inbound frames' protocol state and close codes, apart from the socket | `inbound.rs` |
//! | per-connection outbox (lanes, accounting) | `outbox.rs` |
//! | what the kernel may hold for a lagging connection | `lagging.rs` |
//! | per-priority overflow policy | `policy.rs` |
//! | fan-out of broadcasts and publishes | `fanout.rs` |
//! | frame encoding | `frame.rs` |
//! | events to JavaScript | `events.rs` |
//! | metrics | `metrics.rs` |
//! | options and their defaults | `config.rs` |
//! | the cluster link (Redis pub/sub across processes and machines) | `cluster.rs` |
//! | topic history (offsets, epochs, the resume decision) | `history.rs` |
//! | fuzz targets of the handshake and frame parsers (for `tests/fuzz.rs`, `fuzz/`) | `fuzz.rs` |

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
