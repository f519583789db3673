//! Pure state.
pub mod config;
pub mod history;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod policy;
