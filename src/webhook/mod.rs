//! Webhook ingestion primitives shared by the daemon and the simulator: signature checking
//! (`signature`) and parsing Meta's envelope into events (`meta_events`). No I/O here.

pub mod meta_events;
pub mod signature;

pub use meta_events::{
    parse_meta_webhook, ApiErrorInfo, InboundKind, InboundMessage, MessageStatus, MetaEvent,
    StatusEvent, WebhookParseError,
};
pub use signature::{sign, verify, SignatureError};
