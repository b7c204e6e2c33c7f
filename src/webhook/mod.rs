//! Webhook ingestion primitives shared by the daemon and the simulator: signature checking
//! (`signature`), parsing Meta's envelope into events (`meta_events`) and Gupshup's v2 envelope
//! into the same events (`gupshup_events`). No I/O here.

pub mod gupshup_events;
pub mod meta_events;
pub mod signature;

pub use gupshup_events::{parse_gupshup_webhook, GupshupWebhook};
pub use meta_events::{
    parse_meta_webhook, ApiErrorInfo, EventOwner, InboundKind, InboundMessage, MessageStatus,
    MetaEvent, StatusEvent, WebhookParseError,
};
pub use signature::{sign, verify, SignatureError};
