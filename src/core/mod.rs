//! Pure state.
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
