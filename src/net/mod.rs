//! Tokio tasks.
pub(crate) mod connection;
pub(crate) mod events;
pub(crate) mod fanout;
pub(crate) mod handshake;
pub(crate) mod inbound;
pub(crate) mod lagging;
pub(crate) mod peers;
pub(crate) mod server;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
