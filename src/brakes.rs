//! The campaign brakes (SPEC §2 rule 4, §3 "Quality"): failures that each close one contact
//! but that, together, say the campaign is at fault. Both the dispatcher (HTTP answers) and the
//! inbox (`failed` status webhooks) ask [`after_contact_failure`] once a failure is recorded,
//! and pause through [`pause`].
//!
//! - **Same request error**: a request-shaped code ([`ErrorClass::Request`]: invalid
//!   parameter, media…) closes the contact `failed` when isolated. When the same code met the
//!   last `pause_after_same_error` distinct contacts in a row, the payload is the likelier
//!   culprit: the campaign pauses, its reason naming the code and those contacts (already
//!   closed, so a resume never sends them first).
//! - **Failure rate**: with `max_failure_rate`, the campaign pauses once more than that share
//!   of its last [`FAILURE_WINDOW`] settled sends (at least [`FAILURE_MIN_SAMPLES`]) failed in a
//!   way that counts ([`counts_against_failure_rate`]).
//!
//! Both read the campaign's attempts in the database (`store::brakes`), not process memory:
//! they see the sends and webhooks of every daemon, and hold across restarts.

use crate::clock::Millis;
use crate::config::Campaign;
use crate::domain::error_class::{counts_against_failure_rate, Classification, ErrorClass};
use crate::domain::CampaignState;
use crate::metrics as m;
use crate::store::{Store, StoreResult};
use std::collections::BTreeSet;

/// How many of a campaign's latest settled sends the failure rate is computed over.
pub const FAILURE_WINDOW: i64 = 200;
/// Below this many settled sends the failure rate says too little to pause on.
pub const FAILURE_MIN_SAMPLES: i64 = 20;

/// A failure the caller has recorded against one contact of a running campaign.
pub struct ContactFailure<'a> {
    pub campaign: &'a Campaign,
    pub campaign_id: i64,
    pub contact_id: i64,
    pub class: &'a Classification,
    pub code: Option<i64>,
}

/// Whether the failure just recorded trips a brake: the reason to pause the campaign with.
pub async fn after_contact_failure(
    store: &Store,
    failure: &ContactFailure<'_>,
) -> StoreResult<Option<String>> {
    if let (ErrorClass::Request, Some(code)) = (failure.class.class, failure.code) {
        if let Some(reason) = same_error_streak(store, failure, code).await? {
            return Ok(Some(reason));
        }
    }
    let Some(max_rate) = failure.campaign.max_failure_rate else {
        return Ok(None);
    };
    if !counts_against_failure_rate(failure.class.class, failure.code) {
        return Ok(None);
    }
    let (samples, failed) = store
        .failure_window(failure.campaign_id, FAILURE_WINDOW)
        .await?;
    if samples < FAILURE_MIN_SAMPLES {
        return Ok(None);
    }
    let rate = failed as f64 / samples as f64;
    m::campaign_failure_rate(&failure.campaign.name, rate);
    if rate <= max_rate {
        return Ok(None);
    }
    Ok(Some(format!(
        "failure rate {:.1}% ({failed} of the last {samples} settled sends) is above \
         max_failure_rate {:.1}%",
        rate * 100.0,
        max_rate * 100.0
    )))
}

/// The same request-shaped `code` on the campaign's last `pause_after_same_error` verdicts,
/// each on a different contact.
async fn same_error_streak(
    store: &Store,
    failure: &ContactFailure<'_>,
    code: i64,
) -> StoreResult<Option<String>> {
    let n = failure.campaign.pause_after_same_error as usize;
    let latest = store.latest_verdicts(failure.campaign_id, n as i64).await?;
    let contacts: BTreeSet<i64> = latest.iter().map(|v| v.contact_id).collect();
    let streak = latest.len() == n
        && contacts.len() == n
        && latest.iter().all(|v| v.error_code == Some(code));
    if !streak {
        return Ok(None);
    }
    let ids: Vec<String> = contacts.iter().map(|id| id.to_string()).collect();
    Ok(Some(format!(
        "{} (error {code}) on the last {n} distinct contacts in a row (contacts {}, closed \
         failed; the last was contact {}): the campaign's payload, not its contacts, is the \
         likely cause",
        failure.class.title,
        ids.join(", "),
        failure.contact_id
    )))
}

/// Pauses a running campaign with `reason`: the log line and the metric of every automatic
/// pause. Returns whether it was running.
pub async fn pause(
    store: &Store,
    campaign_id: i64,
    name: &str,
    reason: &str,
    now: Millis,
) -> StoreResult<bool> {
    let moved = store
        .transition_campaign(
            campaign_id,
            CampaignState::Running,
            CampaignState::Paused,
            Some(reason),
            now,
        )
        .await?;
    if moved {
        tracing::error!(campaign = %name, %reason, "campaign paused");
        m::campaign_paused(name);
    }
    Ok(moved)
}
