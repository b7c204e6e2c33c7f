//! tiercast: an outbound WhatsApp campaign dialer daemon.
//!
//! The flow (see ARCHITECTURE in the README): CSV → `import` → contacts and lists →
//! `campaign` start loads the hopper → dispatcher claims due rows, paces, renders and sends
//! through a provider → webhooks bring statuses and replies back to the inbox.

pub mod api;
pub mod bench;
pub mod brakes;
pub mod campaign;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod group_commit;
pub mod http;
pub mod import;
pub mod inbox;
pub mod lines;
pub mod metrics;
pub mod outcomes;
pub mod pacer;
pub mod provider;
pub mod serve;
pub mod sim;
pub mod store;
pub mod tiers;
pub mod webhook;
