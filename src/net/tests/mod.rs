//! `net/` over real sockets on 127.0.0.1, with no Node: a [`super::testkit::Harness`] server and
//! [`super::testkit::Client`]s. What each module covers:
//!
//! | module | what |
//! |---|---|
//! | `close` | every way a connection ends: the close code on the wire, the `close` event, the FIN or reset, the `terminated` counters |
//! | `flow` | `backpressure` and `drain` crossings with their amounts, and the exact byte accounting (`bufferedAmount`, bytes and frames written, drops) |
//! | `heartbeat` | pings, pongs, the pong timeout and the cap on queued pongs |
//! | `memory` | what an idle connection keeps on the Rust heap, allocation by allocation (a counting global allocator) |
//! | `order` | fan-out order: `send`, `close` and `server.close()` behind pending broadcasts |
//! | `tls` | the same over rustls: records the kernel did not take, a stalled client, our close after them, plain text on the TLS port |

mod close;
mod flow;
mod heartbeat;
mod memory;
mod order;
mod tls;
