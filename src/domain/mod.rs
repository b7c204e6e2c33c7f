//! Pure types and rules, no I/O: phone numbers, hopper words, tiers, time groups.

pub mod authoring;
pub mod error_class;
pub mod hopper;
pub mod localtime;
pub mod phone;
pub mod ramp;
pub mod template;
pub mod text;
pub mod tier;
pub mod timegroup;

pub use hopper::{CampaignCommand, CampaignState, HopperState, Outcome, TransitionRefused};
pub use phone::{Phone, PhoneError};
pub use tier::Tier;
pub use timegroup::TimeGroup;
