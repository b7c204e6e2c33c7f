//! Every Prometheus metric of SPEC §5.4, named in one place (prefix `tiercast_`).
//! The exporter (`metrics-exporter-prometheus`) is installed by `serve`; without it these
//! calls cost next to nothing, so the step functions call them unconditionally.

use metrics::{counter, gauge, histogram};

pub const MESSAGES_SENT: &str = "tiercast_messages_sent_total";
pub const SEND_FAILURES: &str = "tiercast_send_failures_total";
pub const SEND_FAILURE_CLASSES: &str = "tiercast_send_failure_classes_total";
pub const MESSAGE_STATUS: &str = "tiercast_message_status_total";
pub const HOPPER_CONTACTS: &str = "tiercast_hopper_contacts";
pub const CAMPAIGN_OUTCOMES: &str = "tiercast_campaign_outcomes_total";
pub const CAMPAIGN_STATE: &str = "tiercast_campaign_state";
pub const CAMPAIGN_PAUSES: &str = "tiercast_campaign_pauses_total";
pub const CAMPAIGN_FAILURE_RATE: &str = "tiercast_campaign_failure_rate";
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

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every family with its meaning and unit: the `# HELP` lines of `/metrics`.
const FAMILIES: &[(&str, Kind, &str)] = &[
    (MESSAGES_SENT, Kind::Counter, "Templates the provider accepted (answered with a message id), per line and campaign"),
    (SEND_FAILURES, Kind::Counter, "Send requests that failed, per line, campaign, provider error code and class (retryable, throttled, permanent, request, campaign, unknown)"),
    (SEND_FAILURE_CLASSES, Kind::Counter, "Send requests that failed, per line, campaign and class only: every series exists from the start, so rate() and alerts see the first failure"),
    (MESSAGE_STATUS, Kind::Counter, "Delivery statuses, per line: from webhooks (sent, delivered, read, failed) and Meta's held send answers (held_for_quality_assessment, paused)"),
    (HOPPER_CONTACTS, Kind::Gauge, "Contacts in a campaign's hopper, per state (fresh, retry, pending, closed)"),
    (CAMPAIGN_OUTCOMES, Kind::Counter, "Closed campaign rows, per outcome (running totals from the database)"),
    (CAMPAIGN_STATE, Kind::Gauge, "1 for the campaign's current state, 0 for the others"),
    (CAMPAIGN_PAUSES, Kind::Counter, "Times a campaign was paused by tiercast (failure brake, template or quality event)"),
    (CAMPAIGN_FAILURE_RATE, Kind::Gauge, "Share (0 to 1) of the campaign's last settled sends that failed, as last compared with max_failure_rate"),
    (TIER_LIMIT, Kind::Gauge, "Messaging limit of the portfolio, in distinct recipients per 24 h (+Inf when unlimited)"),
    (TIER_USED, Kind::Gauge, "Distinct recipients of business-initiated templates in the last 24 h, per portfolio"),
    (WAITING_FOR_TIER, Kind::Gauge, "Contacts of the campaign held back until the portfolio's messaging limit has room"),
    (LINE_THROUGHPUT, Kind::Gauge, "The line's current send rate ceiling, in messages per second"),
    (SEND_LATENCY, Kind::Histogram, "Time from a send request to the provider's answer, in seconds, per line"),
    (WEBHOOK_EVENTS, Kind::Counter, "Webhook events accepted, per kind (status, inbound, template_status…)"),
    (WEBHOOK_REJECTED, Kind::Counter, "Webhook requests refused, per reason (bad signature, malformed body, bad secret…)"),
    (REPLIES, Kind::Counter, "Contact replies to a campaign, per kind (answer, free_text, late)"),
    (INTERACTIONS_OPEN, Kind::Gauge, "Open agent interactions, per line"),
    (CLOCK_STEPS, Kind::Counter, "Steps of the wall clock of 2 s or more against the monotonic clock, per direction (forward, back)"),
];

/// Registers the HELP text of every family with the installed recorder.
pub fn describe() {
    for (name, kind, help) in FAMILIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// Statuses `tiercast_message_status_total` counts from the first scrape.
const MESSAGE_STATUSES: &[&str] = &["sent", "delivered", "read", "failed"];
/// The kinds `reply` is called with.
const REPLY_KINDS: &[&str] = &["answer", "free_text", "late"];
/// The kinds of webhook events (`MetaEvent::kind`).
const WEBHOOK_EVENT_KINDS: &[&str] = &[
    "status",
    "inbound",
    "template_status",
    "template_quality",
    "template_category",
    "phone_number_quality",
    "business_capability",
    "user_preference",
    "account_update",
    "system_errors",
    "unhandled",
];
/// The reasons `webhook_rejected` is called with (signature, body and Gupshup refusals).
const WEBHOOK_REJECT_REASONS: &[&str] = &[
    "verify_token",
    "missing_signature",
    "bad_signature",
    "invalid_json",
    "too_deep",
    "not_object",
    "no_entry",
    "body",
    "not_found",
    "ip_not_allowed",
    "missing_secret",
    "bad_secret",
    "unknown_app",
    "wrong_line_secret",
];

/// Creates at zero every counter series whose labels are known at start (the config's
/// campaigns and lines, statuses, reply kinds, webhook kinds and rejection reasons), so that
/// `increase()` and `rate()` see the first event of each: a series born at 1 has no earlier
/// sample to grow from. `send_failures_total` appears at each code's first failure (the code
/// is the provider's, not known in advance); `send_failure_classes_total`, without the code,
/// exists from the start and is what alerts should use.
pub fn zero_known_series(config: &crate::config::Config) {
    for line in &config.lines {
        for status in MESSAGE_STATUSES {
            message_statuses(&line.name, status, 0);
        }
    }
    for c in &config.campaigns {
        messages_sent(&c.line, &c.name).increment(0);
        for class in crate::domain::error_class::ErrorClass::ALL {
            counter!(SEND_FAILURE_CLASSES, "line" => c.line.clone(), "campaign" => c.name.clone(),
                "class" => class.as_str())
            .increment(0);
        }
        counter!(CAMPAIGN_PAUSES, "campaign" => c.name.clone()).increment(0);
        for kind in REPLY_KINDS {
            counter!(REPLIES, "campaign" => c.name.clone(), "kind" => *kind).increment(0);
        }
        // 0 until the window holds enough settled sends to be compared with the brake.
        if c.max_failure_rate.is_some() {
            campaign_failure_rate(&c.name, 0.0);
        }
    }
    for kind in WEBHOOK_EVENT_KINDS {
        counter!(WEBHOOK_EVENTS, "kind" => *kind).increment(0);
    }
    for reason in WEBHOOK_REJECT_REASONS {
        counter!(WEBHOOK_REJECTED, "reason" => *reason).increment(0);
    }
    for direction in ["forward", "back"] {
        counter!(CLOCK_STEPS, "direction" => direction).increment(0);
    }
}

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
    counter!(SEND_FAILURE_CLASSES, "line" => line.to_string(), "campaign" => campaign.to_string(),
        "class" => class.to_string())
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

/// The failure rate `max_failure_rate` was last compared with (0 – 1), per campaign.
pub fn campaign_failure_rate(campaign: &str, rate: f64) {
    gauge!(CAMPAIGN_FAILURE_RATE, "campaign" => campaign.to_string()).set(rate);
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

#[cfg(test)]
mod tests {
    /// A family named above without HELP text would fail `promtool check metrics` only once
    /// it is first exported; this catches it at once.
    #[test]
    fn every_named_family_has_help_text() {
        let source = include_str!("metrics.rs");
        let named: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(named.len() >= 16, "{named:?}");
        for name in named {
            assert!(
                super::FAMILIES.iter().any(|(n, _, _)| *n == name),
                "{name} has no HELP text in FAMILIES"
            );
        }
    }
}
