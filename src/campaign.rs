//! Campaign life cycle (draft → running ⇄ paused → stopped / completed) and its status view.
//! Used by the CLI and the admin API alike, so both refuse and report the same way.

use crate::clock::{self, Clock};
use crate::config::{Campaign, Config};
use crate::domain::{CampaignCommand, CampaignState, HopperState, Outcome, TransitionRefused};
use crate::store::{CampaignRow, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error("no campaign named {name:?} in {config} (defined: {known})")]
    Unknown {
        name: String,
        config: String,
        known: String,
    },
    #[error(transparent)]
    Refused(#[from] TransitionRefused),
    #[error("cannot start campaign {campaign:?}: {reason}")]
    NotStartable { campaign: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CampaignError {
    /// Refusals and unknown names are the user's input; store errors are ours.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, CampaignError::Store(_))
    }
}

/// The JSON of `campaign status --json` and `GET /api/campaigns/{name}` (SPEC §5.1).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CampaignStatus {
    pub name: String,
    pub state: CampaignState,
    pub paused_reason: Option<String>,
    pub line: String,
    pub template: String,
    pub hopper: BTreeMap<&'static str, u64>,
    pub outcomes: BTreeMap<&'static str, u64>,
    pub answers: BTreeMap<String, u64>,
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    pub waiting_for_tier: u64,
    /// Sent messages Meta holds back while it assesses the template's quality (pacing).
    pub held_for_quality_assessment: u64,
    /// Sent messages Meta answered `paused` for (their template's pacing paused them).
    pub paused_by_meta: u64,
    /// For a running campaign: what holds its unsent contacts back now (empty otherwise).
    pub not_sending: Vec<NotSending>,
}

/// One reason a running campaign does not send (some of) its contacts now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NotSending {
    /// `before_start`, `outside_hours`, `waiting_for_tier`, `waiting_for_ramp` or
    /// `held_by_open_interactions`.
    pub reason: &'static str,
    /// The same, for a person.
    pub message: String,
    /// When it ends, if known (RFC 3339, UTC).
    pub until: Option<String>,
    /// How many contacts it holds, when it holds some rather than the whole campaign.
    pub contacts: Option<u64>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What holds a running campaign back (see [`NotSending`]); the dispatcher's own gates:
/// `start_at`, the time group, the tier budget (or the ramp's cap) and SPEC §2 rule 3.
async fn not_sending(
    store: &Store,
    config: &Config,
    campaign: &Campaign,
    campaign_id: i64,
    now: DateTime<Utc>,
) -> Result<Vec<NotSending>, StoreError> {
    let mut out = Vec::new();
    if let Some(start) = campaign.start_at.filter(|start| now < *start) {
        out.push(NotSending {
            reason: "before_start",
            message: format!("starts at {}", rfc3339(start)),
            until: Some(rfc3339(start)),
            contacts: None,
        });
    }
    let group = config.time_group_for(campaign);
    if !campaign.local_time && !group.is_open(now) {
        let opens = group.next_open_after(now).map(rfc3339);
        out.push(NotSending {
            reason: "outside_hours",
            message: match &opens {
                Some(at) => format!("outside its hours until {at}"),
                None => "outside its hours, which do not open within a year".into(),
            },
            until: opens,
            contacts: None,
        });
    }
    let held = store
        .held_rows(campaign_id, &campaign.line, clock::to_millis(now))
        .await?;
    if held.waiting_for_tier > 0 {
        let (reason, what) = if campaign.ramp {
            (
                "waiting_for_ramp",
                "the ramp's daily cap (Meta's next upgrade)",
            )
        } else {
            ("waiting_for_tier", "the messaging limit (tier)")
        };
        let until = held.tier_slot_at.map(|ms| rfc3339(clock::from_millis(ms)));
        out.push(NotSending {
            reason,
            message: format!(
                "{} contacts waiting for {what}{}",
                held.waiting_for_tier,
                until
                    .as_ref()
                    .map(|at| format!("; next slot at {at}"))
                    .unwrap_or_default()
            ),
            until,
            contacts: Some(held.waiting_for_tier),
        });
    }
    if held.held_by_open_interactions > 0 {
        out.push(NotSending {
            reason: "held_by_open_interactions",
            message: format!(
                "{} contacts held by an open interaction on line {} (another campaign's \
                 pending row or an agent conversation)",
                held.held_by_open_interactions, campaign.line
            ),
            until: None,
            contacts: Some(held.held_by_open_interactions),
        });
    }
    Ok(out)
}

pub fn find<'c>(config: &'c Config, name: &str) -> Result<&'c Campaign, CampaignError> {
    config.campaign(name).ok_or_else(|| CampaignError::Unknown {
        name: name.to_string(),
        config: config.source.clone(),
        known: config
            .campaigns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

pub async fn status(
    store: &Store,
    clock: &dyn Clock,
    config: &Config,
    campaign: &Campaign,
) -> Result<CampaignStatus, CampaignError> {
    let row = store
        .ensure_campaign(&campaign.name, clock.now_millis())
        .await?;
    let counts = store.hopper_counts(row.id).await?;
    let mut hopper: BTreeMap<&'static str, u64> = HopperState::ALL
        .iter()
        .map(|s| (s.as_str(), counts.state(*s)))
        .collect();
    hopper.insert("total", counts.total());
    let outcomes = Outcome::ALL
        .iter()
        .map(|o| (o.as_str(), counts.outcome(*o)))
        .collect();
    // `answers` counts answered rows by the answer's configured outcome (SPEC §5.1).
    let mut answers: BTreeMap<String, u64> = campaign
        .answers
        .iter()
        .map(|a| (a.outcome.clone(), 0))
        .collect();
    for (key, n) in &counts.by_answer {
        let outcome = campaign
            .answers
            .iter()
            .find(|a| &a.key == key || &a.outcome == key)
            .map(|a| a.outcome.clone())
            .unwrap_or_else(|| key.clone());
        *answers.entry(outcome).or_default() += n;
    }
    Ok(CampaignStatus {
        name: row.name,
        state: row.state,
        paused_reason: row.paused_reason,
        line: campaign.line.clone(),
        template: format!(
            "{} ({})",
            campaign.template.name, campaign.template.language
        ),
        hopper,
        outcomes,
        answers,
        sent: counts.sent,
        delivered: counts.delivered,
        read: counts.read,
        waiting_for_tier: store.waiting_for_tier(row.id).await?,
        held_for_quality_assessment: counts.held_for_quality_assessment,
        paused_by_meta: counts.paused_by_meta,
        not_sending: if row.state == CampaignState::Running {
            not_sending(store, config, campaign, row.id, clock.now()).await?
        } else {
            Vec::new()
        },
    })
}

/// Applies start / pause / resume / stop. Starting (and resuming) loads the campaign's lists
/// into the hopper; stopping closes every unsent row as `stopped`.
pub async fn command(
    store: &Store,
    clock: &dyn Clock,
    config: &Config,
    name: &str,
    cmd: CampaignCommand,
) -> Result<CampaignRow, CampaignError> {
    let campaign = find(config, name)?;
    let now = clock.now_millis();
    let row = store.ensure_campaign(&campaign.name, now).await?;
    let target = row.state.apply(cmd, &campaign.name)?;
    if matches!(cmd, CampaignCommand::Start | CampaignCommand::Resume) {
        check_startable(store, campaign).await?;
        store
            .load_hopper(
                row.id,
                &campaign.line,
                &campaign.lists,
                campaign.require_opt_in,
                now,
            )
            .await?;
    }
    if !store
        .transition_campaign(row.id, row.state, target, None, now)
        .await?
    {
        // Someone else changed it between our read and our write: report what it is now.
        let current = store.ensure_campaign(&campaign.name, now).await?;
        current.state.apply(cmd, &campaign.name)?;
    }
    if cmd == CampaignCommand::Stop {
        store.close_unsent(row.id, Outcome::Stopped, now).await?;
    }
    Ok(store.ensure_campaign(&campaign.name, now).await?)
}

/// A campaign may only start when its lists hold contacts and its template can be sent.
async fn check_startable(store: &Store, campaign: &Campaign) -> Result<(), CampaignError> {
    let refuse = |reason: String| CampaignError::NotStartable {
        campaign: campaign.name.clone(),
        reason,
    };
    let mut contacts = 0;
    for list in &campaign.lists {
        if !store.list_exists(list).await? {
            return Err(refuse(format!("list {list:?} does not exist; import it with `tiercast import FILE.csv --list {list}`")));
        }
        contacts += store.list_size(list).await?;
    }
    if contacts == 0 {
        return Err(refuse("its lists hold no contacts".to_string()));
    }
    Ok(())
}
