//! Pure state.
pub(crate) mod config;
pub(crate) mod history;
pub(crate) mod message;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod policy;
