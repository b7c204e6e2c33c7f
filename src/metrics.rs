//! Every Prometheus metric of SPEC §5.4, named in one place (prefix `tiercast_`).
//! The exporter (`metrics-exporter-prometheus`) is installed by `serve`; without it these
//! calls cost next to nothing, so the step functions call them unconditionally.

use metrics::{counter, gauge, histogram};

pub const MESSAGES_SENT: &str = "tiercast_messages_sent_total";
pub const SEND_FAILURES: &str = "tiercast_send_failures_total";
pub const MESSAGE_STATUS: &str = "tiercast_message_status_total";
pub const HOPPER_CONTACTS: &str = "tiercast_hopper_contacts";
pub const CAMPAIGN_OUTCOMES: &str = "tiercast_campaign_outcomes_total";
pub const CAMPAIGN_STATE: &str = "tiercast_campaign_state";
pub const CAMPAIGN_PAUSES: &str = "tiercast_campaign_pauses_total";
pub const TIER_LIMIT: &str = "tiercast_tier_limit";
pub const TIER_USED: &str = "tiercast_tier_used";
pub const WAITING_FOR_TIER: &str = "tiercast_waiting_for_tier";
pub const LINE_THROUGHPUT: &str = "tiercast_line_throughput_mps";
pub const SEND_LATENCY: &str = "tiercast_send_latency_seconds";
pub const WEBHOOK_EVENTS: &str = "tiercast_webhook_events_total";
pub const WEBHOOK_REJECTED: &str = "tiercast_webhook_rejected_total";
pub const REPLIES: &str = "tiercast_replies_total";
pub const INTERACTIONS_OPEN: &str = "tiercast_interactions_open";
pub const CLOCK_STEPS: &str = "tiercast_clock_steps_total";

/// The handle of a campaign's sent counter: the dispatcher keeps it with the campaign, as
/// a registry lookup per message builds and hashes the labels each time. A handle taken
/// before the recorder is installed counts nothing; `serve` installs it before the
/// dispatchers start, and they take fresh handles with every campaign refresh (0.5 s).
pub fn messages_sent(line: &str, campaign: &str) -> metrics::Counter {
    counter!(MESSAGES_SENT, "line" => line.to_string(), "campaign" => campaign.to_string())
}

pub fn send_failure(line: &str, campaign: &str, code: &str, class: &str) {
    counter!(SEND_FAILURES, "line" => line.to_string(), "campaign" => campaign.to_string(),
        "code" => code.to_string(), "class" => class.to_string())
    .increment(1);
}

/// The handle of a line's send-latency histogram (kept like [`messages_sent`]'s).
pub fn send_latency(line: &str) -> metrics::Histogram {
    histogram!(SEND_LATENCY, "line" => line.to_string())
}

pub fn message_statuses(line: &str, status: &str, count: u64) {
    counter!(MESSAGE_STATUS, "line" => line.to_string(), "status" => status.to_string())
        .increment(count);
}

pub fn line_throughput(line: &str, mps: u32) {
    gauge!(LINE_THROUGHPUT, "line" => line.to_string()).set(f64::from(mps));
}

pub fn campaign_paused(campaign: &str) {
    counter!(CAMPAIGN_PAUSES, "campaign" => campaign.to_string()).increment(1);
}

pub fn hopper_contacts(campaign: &str, state: &str, n: u64) {
    gauge!(HOPPER_CONTACTS, "campaign" => campaign.to_string(), "state" => state.to_string())
        .set(n as f64);
}

/// Outcomes are exported as the running totals read from the database (absolute), so a
/// restarted daemon reports the same numbers.
pub fn campaign_outcomes(campaign: &str, outcome: &str, n: u64) {
    counter!(CAMPAIGN_OUTCOMES, "campaign" => campaign.to_string(), "outcome" => outcome.to_string()).absolute(n);
}

/// One gauge per state, 1 for the campaign's current state and 0 for the others.
pub fn campaign_state(campaign: &str, state: &str, current: bool) {
    gauge!(CAMPAIGN_STATE, "campaign" => campaign.to_string(), "state" => state.to_string())
        .set(if current { 1.0 } else { 0.0 });
}

pub fn tier(portfolio: &str, limit: Option<u64>, used: u64) {
    gauge!(TIER_LIMIT, "portfolio" => portfolio.to_string())
        .set(limit.map(|l| l as f64).unwrap_or(f64::INFINITY));
    gauge!(TIER_USED, "portfolio" => portfolio.to_string()).set(used as f64);
}

pub fn waiting_for_tier(campaign: &str, n: u64) {
    gauge!(WAITING_FOR_TIER, "campaign" => campaign.to_string()).set(n as f64);
}

pub fn webhook_event(kind: &str) {
    counter!(WEBHOOK_EVENTS, "kind" => kind.to_string()).increment(1);
}

pub fn webhook_rejected(reason: &str) {
    counter!(WEBHOOK_REJECTED, "reason" => reason.to_string()).increment(1);
}

pub fn reply(campaign: &str, kind: &str) {
    counter!(REPLIES, "campaign" => campaign.to_string(), "kind" => kind.to_string()).increment(1);
}

pub fn interactions_open(line: &str, n: u64) {
    gauge!(INTERACTIONS_OPEN, "line" => line.to_string()).set(n as f64);
}

/// The wall clock stepped (`direction`: forward, back); see `clock::SteadyClock`.
pub fn clock_step(direction: &str) {
    counter!(CLOCK_STEPS, "direction" => direction.to_string()).increment(1);
}
