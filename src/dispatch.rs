//! The dispatcher: claim → pace → render → send → record, one task per line.
//!
//! ```text
//!   running campaigns of the line (time group open, inside start/end)
//!        │ claim_due (short transaction: attempt row written, row held)
//!        ▼
//!   throughput limiter (GCRA, burst 1) ─▶ render (CompiledMapping) ─▶ provider.send_template
//!        │ accepted → pending                    │ error → classify (domain::error_class)
//!        ▼                                       ▼
//!   settle (group commit)           requeue / retry / close / pause campaign / unknown
//! ```
//!
//! No database transaction is open during the HTTP call. Once a send holds its HTTP permit,
//! the last check before it leaves asks whether its attempt is still the row's and the line's
//! lease still ours ([`Store::launch_verdicts`], batched in the outcomes group commit), then
//! whether its campaign still runs. [`Dispatcher::dispatch_once`] is the
//! step function tests drive; [`Dispatcher::run_line`] is the daemon's loop around the same
//! pieces, with many sends in flight.

use crate::brakes::{self, ContactFailure};
use crate::campaign::{self, CampaignError};
use crate::clock::{Clock, Millis, SharedClock};
use crate::config::{Campaign, Config};
use crate::domain::error_class::{Classification, ErrorClass};
use crate::domain::template::{CompiledMapping, ContactFields, TemplateDef};
use crate::domain::{CampaignCommand, CampaignState, Outcome};
use crate::lines::LineRuntime;
use crate::metrics as m;
use crate::outcomes::Outcomes;
use crate::provider::{Provider, SendError, TemplateMessage};
use crate::store::{
    CampaignRow, ClaimGate, Claimed, FailureAction, Launch, LaunchCheck, LineLease, LocalHours,
    Settle, Store, StoreError, TierBudget, AWAITING_RETRY_RUN,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Prefix of our `biz_opaque_callback_data`, so data other systems put there is never misread.
pub const CALLBACK_PREFIX: &str = "tc:";

pub fn callback_data(attempt_id: i64) -> String {
    format!("{CALLBACK_PREFIX}{attempt_id}")
}

pub fn parse_callback_data(data: &str) -> Option<i64> {
    data.strip_prefix(CALLBACK_PREFIX)?.parse().ok()
}

/// Longest automatic backoff between two tries of one contact.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);
/// How long a throttled row waits when the error names no delay.
const THROTTLE_DELAY: Duration = Duration::from_secs(1);
/// Meta's `message_status` values for an accepted message its pacing holds back.
const HELD_STATUSES: [&str; 2] = ["held_for_quality_assessment", "paused"];
/// The pair rate limit: one message per contact per 6 s (reference §4.3).
const PAIR_RATE_DELAY: Duration = Duration::from_secs(6);

/// How often a line re-reads its campaigns (state, hours, template) while sending: a pause or
/// stop made by another process (`tiercast campaign pause`) takes effect within this.
const CAMPAIGN_REFRESH: Duration = Duration::from_millis(500);

/// Campaign commands made in this process (the admin API) announce themselves here, so the
/// lines re-read their campaigns at once: a start is picked up without waiting for the next
/// refresh, and a pause or stop holds back the rest of the rows already claimed.
#[derive(Clone)]
pub struct CampaignChanges {
    generation: Arc<watch::Sender<u64>>,
    /// Every [`ActiveCampaign`] still alive in this process, however old: rows waiting to be
    /// sent hold the one they were claimed under. A pause or a stop halts them all at once.
    active: Arc<Mutex<Vec<Weak<ActiveCampaign>>>>,
}

impl CampaignChanges {
    fn new() -> Self {
        CampaignChanges {
            generation: Arc::new(watch::Sender::new(0)),
            active: Default::default(),
        }
    }

    /// Applies a campaign command in the database, then announces it: the one way this
    /// process's commands (admin API, bench, demo) reach the lines.
    pub async fn command(
        &self,
        store: &Store,
        clock: &dyn Clock,
        config: &Config,
        name: &str,
        cmd: CampaignCommand,
    ) -> Result<CampaignRow, CampaignError> {
        Ok(self
            .command_counting(store, clock, config, name, cmd)
            .await?
            .0)
    }

    /// [`CampaignChanges::command`], also answering how many of the campaign's sends were in
    /// the HTTP client when a pause or stop took effect. From that moment no other send of
    /// the campaign leaves this process: the rest of its claimed rows are given back.
    pub async fn command_counting(
        &self,
        store: &Store,
        clock: &dyn Clock,
        config: &Config,
        name: &str,
        cmd: CampaignCommand,
    ) -> Result<(CampaignRow, u64), CampaignError> {
        let row = campaign::command(store, clock, config, name, cmd).await?;
        let in_flight = if matches!(cmd, CampaignCommand::Pause | CampaignCommand::Stop) {
            self.halt(name)
        } else {
            0
        };
        self.announce();
        Ok((row, in_flight))
    }

    /// Halts every live [`ActiveCampaign`] named `name`; returns their sends in flight.
    fn halt(&self, name: &str) -> u64 {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.retain(|c| c.strong_count() > 0);
        active
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.config.name == name)
            .map(|c| c.halt())
            .sum()
    }

    fn register(&self, campaign: &Arc<ActiveCampaign>) {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.retain(|c| c.strong_count() > 0);
        active.push(Arc::downgrade(campaign));
    }

    /// A campaign's state changed in the database: every line re-reads its campaigns.
    fn announce(&self) {
        self.generation
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// The attempts this process has claimed and not finished with: their send tasks are still
/// under way (bounded by `request_timeout`), or their outcome is unknown and they wait for a
/// status webhook until a monotonic deadline. Reconcile leaves them alone, so a freeze of the
/// process or a step of the wall clock cannot abandon (and resend) a row still being sent.
#[derive(Default)]
struct AttemptsHere(Mutex<HashMap<i64, Option<Instant>>>);

impl AttemptsHere {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<i64, Option<Instant>>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn claimed(&self, ids: impl Iterator<Item = i64>) {
        self.with(|m| m.extend(ids.map(|id| (id, None))));
    }

    /// Done with these attempts (settled, failed or given back).
    fn forget(&self, ids: &[i64]) {
        self.with(|m| {
            for id in ids {
                m.remove(id);
            }
        });
    }

    /// The attempt's outcome is unknown: spared until `until`, then reconcile decides.
    fn unknown_until(&self, id: i64, until: Instant) {
        self.with(|m| m.insert(id, Some(until)));
    }

    /// The attempts reconcile must leave alone at `now`; forgets those whose time ran out.
    fn spared(&self, now: Instant) -> HashSet<i64> {
        self.with(|m| {
            m.retain(|_, until| until.is_none_or(|t| t > now));
            m.keys().copied().collect()
        })
    }
}

/// Forgets its attempt when its send task ends, however it ends, unless the outcome was
/// unknown.
struct SendUnderWay<'a> {
    here: &'a AttemptsHere,
    attempt_id: i64,
    unknown_until: Option<Instant>,
}

impl Drop for SendUnderWay<'_> {
    fn drop(&mut self) {
        match self.unknown_until {
            Some(until) => self.here.unknown_until(self.attempt_id, until),
            None => self.here.forget(&[self.attempt_id]),
        }
    }
}

/// A running campaign ready to send: its template checked and its mapping compiled.
pub struct ActiveCampaign {
    pub id: i64,
    pub config: Campaign,
    pub template: TemplateDef,
    pub mapping: CompiledMapping,
    /// Set when the campaign broke or stopped running: its rows not yet sent are given back.
    paused: AtomicBool,
    /// Sends handed to the HTTP client and not answered yet. Counted under this lock, with
    /// `paused` read under it, so a halt counts exactly the sends that got past it.
    in_flight: Mutex<u64>,
    sent: metrics::Counter,
    send_latency: metrics::Histogram,
}

impl ActiveCampaign {
    /// The last check before a send leaves: false once the campaign is paused or stopped;
    /// otherwise the send counts as in flight until [`ActiveCampaign::landed`].
    fn launch(&self) -> bool {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.paused.load(Ordering::SeqCst) {
            return false;
        }
        *in_flight += 1;
        true
    }

    fn landed(&self) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *in_flight = in_flight.saturating_sub(1);
    }

    /// Stops every later send of this campaign; returns the sends already in flight.
    fn halt(&self) -> u64 {
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.paused.store(true, Ordering::SeqCst);
        *in_flight
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub claimed: usize,
    pub accepted: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Claimed sends that did not leave: reconciled or taken over meanwhile (see
    /// [`Store::launch_verdicts`]).
    pub withdrawn: usize,
    pub reconciled: u64,
    /// Campaigns this pass paused, with the reason.
    pub paused: Vec<(String, String)>,
    pub completed: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendResult {
    Accepted,
    Failed,
    Unknown,
    Withdrawn,
}

/// Why a claimed send did not leave.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// Its campaign was paused or stopped.
    Halted,
    /// What [`Store::launch_verdicts`] said (never [`Launch::Go`]).
    Verdict(Launch),
}

#[derive(Clone)]
pub struct Dispatcher {
    /// This daemon's name in leases (host, process, random suffix).
    holder: Arc<str>,
    store: Store,
    clock: SharedClock,
    config: Arc<Config>,
    lines: Arc<HashMap<String, Arc<LineRuntime>>>,
    /// Accepted sends are recorded in group commits (shared with the inbox's statuses).
    outcomes: Outcomes,
    changes: CampaignChanges,
    here: Arc<AttemptsHere>,
    leases: Arc<LeasesHeld>,
}

/// Until when (on the daemon's clock) each line's lease is known to be this daemon's without
/// asking the database: half a `lease_ttl` after the start of its last successful renewal.
/// Another daemon can give up this daemon's attempts or drive its line only once the lease
/// has expired, which takes a whole `lease_ttl` after that renewal on the lease's clock; so
/// within this half, a send's last check needs no read. A freeze or a forward step of the
/// clock runs past it, and the check reads the database again.
#[derive(Default)]
struct LeasesHeld(Mutex<HashMap<Arc<str>, Millis>>);

impl LeasesHeld {
    fn renewed(&self, lease: &Arc<str>, fresh_until: Millis) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lease.clone(), fresh_until);
    }

    fn lost(&self, lease: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lease);
    }

    fn fresh(&self, lease: &str, now: Millis) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lease)
            .is_some_and(|until| now < *until)
    }
}

impl Dispatcher {
    pub fn new(
        store: Store,
        clock: SharedClock,
        config: Arc<Config>,
        lines: Arc<HashMap<String, Arc<LineRuntime>>>,
        outcomes: Outcomes,
    ) -> Self {
        let holder = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "tiercast".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        Dispatcher {
            holder: holder.into(),
            outcomes,
            changes: CampaignChanges::new(),
            here: Default::default(),
            leases: Default::default(),
            store,
            clock,
            config,
            lines,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Where this process's campaign commands announce themselves to the lines.
    pub fn campaign_changes(&self) -> CampaignChanges {
        self.changes.clone()
    }

    fn now(&self) -> Millis {
        self.clock.now_millis()
    }

    /// The campaigns of `line` that may send now. Housekeeping on the way: campaigns past
    /// their end expire their unsent rows, campaigns with nothing left complete, campaigns
    /// whose template cannot be sent pause with the reason.
    pub async fn active_campaigns(
        &self,
        line: &str,
        report: &mut PassReport,
    ) -> Result<Vec<Arc<ActiveCampaign>>, StoreError> {
        let now = self.now();
        let now_t = self.clock.now();
        let mut out = Vec::new();
        for campaign in self.config.campaigns.iter().filter(|c| c.line == line) {
            let row = self.store.ensure_campaign(&campaign.name, now).await?;
            if row.state != CampaignState::Running {
                continue;
            }
            if campaign.end_at.is_some_and(|end| now_t >= end) {
                self.store
                    .close_unsent(row.id, Outcome::Expired, now)
                    .await?;
            }
            if !self.store.has_open_rows(row.id).await? {
                if self
                    .store
                    .transition_campaign(
                        row.id,
                        CampaignState::Running,
                        CampaignState::Completed,
                        None,
                        now,
                    )
                    .await?
                {
                    tracing::info!(campaign = %campaign.name, "campaign completed: every contact has its outcome");
                    report.completed.push(campaign.name.clone());
                }
                continue;
            }
            // A local-time campaign's hours are read per contact when claiming.
            if campaign.start_at.is_some_and(|start| now_t < start)
                || (!campaign.local_time && !self.config.time_group_for(campaign).is_open(now_t))
            {
                continue;
            }
            let prepared = match self
                .store
                .template(line, &campaign.template.name, &campaign.template.language)
                .await?
            {
                None => Err(format!(
                    "template {} ({}) is not known on line {line}; run `tiercast templates sync`",
                    campaign.template.name, campaign.template.language
                )),
                Some(def) if !def.is_approved() => Err(format!(
                    "template {} ({}) is {}, not APPROVED",
                    def.name, def.language, def.status
                )),
                Some(def) => CompiledMapping::new(&def, &campaign.variables)
                    .map(|mapping| (def, mapping))
                    .map_err(|e| {
                        format!(
                            "template {} ({}): {e}",
                            campaign.template.name, campaign.template.language
                        )
                    }),
            };
            match prepared {
                Ok((template, mapping)) => {
                    let active = Arc::new(ActiveCampaign {
                        id: row.id,
                        config: campaign.clone(),
                        template,
                        mapping,
                        paused: AtomicBool::new(false),
                        in_flight: Mutex::new(0),
                        sent: m::messages_sent(line, &campaign.name),
                        send_latency: m::send_latency(line),
                    });
                    self.changes.register(&active);
                    out.push(active);
                }
                Err(reason) => {
                    self.pause(row.id, &campaign.name, &reason).await?;
                    report.paused.push((campaign.name.clone(), reason));
                }
            }
        }
        Ok(out)
    }

    async fn pause(&self, campaign_id: i64, name: &str, reason: &str) -> Result<bool, StoreError> {
        brakes::pause(&self.store, campaign_id, name, reason, self.now()).await
    }

    /// Abandons attempts whose fate stayed unknown past `reconcile_after` (their contacts
    /// become due again, or `exhausted` once the campaign's `max_attempts` are spent).
    ///
    /// `max_attempts` is read for every configured campaign of the line, not only the running
    /// ones: a campaign paused while sends were in flight still has its attempts abandoned
    /// here, and each one counts like any other spent attempt.
    pub async fn reconcile(&self, line: &str) -> Result<u64, StoreError> {
        let configured: HashMap<&str, i64> = self
            .config
            .campaigns
            .iter()
            .filter(|c| c.line == line)
            .map(|c| (c.name.as_str(), i64::from(c.max_attempts)))
            .collect();
        let max: HashMap<i64, i64> = self
            .store
            .campaigns()
            .await?
            .into_iter()
            .filter_map(|row| configured.get(row.name.as_str()).map(|m| (row.id, *m)))
            .collect();
        let spared = self.here.spared(Instant::now());
        let n = self
            .store
            .reconcile_stale(line, self.now(), &max, &spared)
            .await?;
        if n > 0 {
            tracing::warn!(
                line,
                count = n,
                "attempts with no news within reconcile_after: contacts will be sent again"
            );
        }
        Ok(n)
    }

    /// Whether this daemon may drive (or keep driving) the line leased as `lease`: lines are
    /// spread evenly, at most ⌈lines / live daemons⌉ each. A daemon over its share keeps the
    /// lines first in name order and gives back the rest. On a database error it keeps going
    /// as it was: the leases alone still guarantee one driver per line.
    async fn within_share(&self, lease: &str, holding: bool) -> bool {
        let now = self.now();
        let (members, held) = match tokio::try_join!(
            self.store.live_members(now),
            self.store.leases_held("line:", &self.holder, now)
        ) {
            Ok(v) => v,
            Err(_) => return true,
        };
        let share = (self.lines.len() as u64).div_ceil(members.max(1)) as usize;
        if holding {
            held.iter()
                .position(|l| l == lease)
                .is_none_or(|i| i < share)
        } else {
            held.len() < share
        }
    }

    /// Sends left in flight by a previous process (killed mid-call) are held for another
    /// `reconcile_after` from now: their status webhooks could not reach us while we were
    /// down, so the downtime must not count as "no news" (SPEC §2 rule 7).
    pub async fn hold_orphans(&self, line: &str) {
        let until = self.now() + self.config.server.reconcile_after.as_millis() as Millis;
        match self.store.hold_orphans(line, until).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                line,
                count = n,
                "sends left in flight by the previous process: waiting reconcile_after for \
                 their status webhooks before sending them again"
            ),
            Err(e) => {
                tracing::error!(line, error = %e, "cannot extend the holds of unfinished sends")
            }
        }
    }

    /// One deterministic pass over a line: reconcile, then claim up to `limit` due rows across
    /// its running campaigns and send them all, waiting for every answer.
    pub async fn dispatch_once(&self, line: &str, limit: usize) -> Result<PassReport, StoreError> {
        let rt = self.line(line)?;
        let mut report = PassReport::default();
        let campaigns = self.active_campaigns(line, &mut report).await?;
        report.reconciled = self.reconcile(line).await?;
        let mut sends = JoinSet::new();
        for (campaign, row) in self.claim(&rt, &campaigns, limit).await? {
            report.claimed += 1;
            rt.pacer.until_ready().await;
            let this = self.clone();
            let rt = rt.clone();
            sends.spawn(async move { this.send_one(&rt, &campaign, row, None).await });
        }
        while let Some(joined) = sends.join_next().await {
            match joined {
                Ok(Ok(SendResult::Accepted)) => report.accepted += 1,
                Ok(Ok(SendResult::Failed)) => report.failed += 1,
                Ok(Ok(SendResult::Unknown)) => report.unknown += 1,
                Ok(Ok(SendResult::Withdrawn)) => report.withdrawn += 1,
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(StoreError::Corrupt(format!("send task failed: {e}"))),
            }
        }
        for c in &campaigns {
            if c.paused.load(Ordering::SeqCst) {
                if let Some(row) = self.store.campaign_by_name(&c.config.name).await? {
                    report
                        .paused
                        .push((c.config.name.clone(), row.paused_reason.unwrap_or_default()));
                }
            }
        }
        Ok(report)
    }

    fn line(&self, line: &str) -> Result<Arc<LineRuntime>, StoreError> {
        self.lines
            .get(line)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("line {line:?} is not configured")))
    }

    /// Claims due rows, sharing `limit` between campaigns by weight so a large campaign does
    /// not starve a small one; what one leaves unused goes to the others.
    async fn claim(
        &self,
        rt: &LineRuntime,
        campaigns: &[Arc<ActiveCampaign>],
        limit: usize,
    ) -> Result<Vec<(Arc<ActiveCampaign>, Claimed)>, StoreError> {
        let mut out = Vec::new();
        // Its attempts would be recorded in a file nobody will open again.
        if self.store.database_file_lost() {
            return Ok(out);
        }
        let total_weight: u64 = campaigns
            .iter()
            .map(|c| u64::from(c.config.weight))
            .sum::<u64>()
            .max(1);
        let hold_until = self.now() + self.config.server.reconcile_after.as_millis() as Millis;
        let configured = self.config.portfolio(&rt.line.portfolio).map(|p| p.tier);
        // The stored tier, if any, replaces the configured one inside each claim.
        let budget = TierBudget::configured(&rt.line.portfolio, configured);
        let ramped = budget.ramped();
        let now_t = self.clock.now();
        let local_hours: HashMap<i64, _> = campaigns
            .iter()
            .filter(|c| c.config.local_time)
            .map(|c| (c.id, self.local_hours(&c.config, now_t)))
            .collect();
        let mut left = limit;
        for round in 0..2 {
            for c in campaigns {
                if left == 0 {
                    break;
                }
                let gate = ClaimGate {
                    budget: Some(if c.config.ramp { &ramped } else { &budget }),
                    local_hours: local_hours.get(&c.id).map(|f| f as &LocalHours<'_>),
                };
                let share = if round == 0 {
                    ((limit as u64 * u64::from(c.config.weight)).div_ceil(total_weight) as usize)
                        .min(left)
                } else {
                    left
                };
                let rows = self
                    .store
                    .claim_due(c.id, &rt.line.name, self.now(), hold_until, share, &gate)
                    .await?;
                left -= rows.len();
                self.here.claimed(rows.iter().map(|r| r.attempt_id));
                out.extend(rows.into_iter().map(|r| (c.clone(), r)));
            }
        }
        Ok(out)
    }

    /// For a `local_time` campaign: when a contact's own hours (its number's country's zone,
    /// else the time group's) are closed at `now`, the instant they open.
    fn local_hours(
        &self,
        campaign: &Campaign,
        now: chrono::DateTime<chrono::Utc>,
    ) -> impl Fn(&str) -> Option<Millis> + Sync + use<'_> {
        let group = self.config.time_group_for(campaign);
        let zones = &self.config.country_zones;
        move |phone: &str| {
            let zone = zones.of_phone(phone).unwrap_or(group.timezone);
            if group.is_open_in(now, zone) {
                return None;
            }
            let opens = group
                .next_open_after_in(now, zone)
                .unwrap_or(now + chrono::Duration::days(1));
            Some(crate::clock::to_millis(opens))
        }
    }

    /// One send, in a span naming the campaign, the contact (its id: numbers stay out of logs),
    /// the attempt and, once accepted, the wamid. The span is at debug level: at info it cost
    /// a formatted copy of its fields per message (a few per cent of the daemon's CPU in
    /// `tiercast bench`), so the warnings a send can log name their attempt themselves.
    ///
    /// `lease` is the line's lease this daemon drives it under (`run_line`); the send leaves
    /// only while it is held. The step function (`dispatch_once`) holds none.
    async fn send_one(
        &self,
        rt: &LineRuntime,
        campaign: &ActiveCampaign,
        row: Claimed,
        lease: Option<LineLease>,
    ) -> Result<SendResult, StoreError> {
        let span = tracing::debug_span!(
            "send",
            line = %rt.line.name,
            campaign = %campaign.config.name,
            contact = row.contact_id,
            attempt = row.attempt_id,
            wamid = tracing::field::Empty,
        );
        let mut under_way = SendUnderWay {
            here: &self.here,
            attempt_id: row.attempt_id,
            unknown_until: None,
        };
        let result = self
            .send_in_span(rt, campaign, row, lease)
            .instrument(span)
            .await;
        if let Ok(SendResult::Unknown) = result {
            under_way.unknown_until = Some(Instant::now() + self.config.server.reconcile_after);
        }
        result
    }

    /// The last moment before a claimed send leaves (it holds its HTTP permit): the attempt
    /// must still be its row's, the line's lease still this daemon's, and the campaign still
    /// running. The answer is also left in `asked`, with the reason of a refusal.
    async fn clear_to_send(
        &self,
        campaign: &ActiveCampaign,
        check: LaunchCheck,
        asked: &Mutex<Option<Result<(), Refused>>>,
    ) -> bool {
        let fresh = check
            .lease
            .as_ref()
            .is_some_and(|l| self.leases.fresh(&l.name, self.now()));
        let verdict = if fresh {
            Ok(Launch::Go)
        } else {
            self.outcomes.launch(check).await
        };
        let answer = match verdict {
            Ok(Launch::Go) if campaign.launch() => Ok(()),
            Ok(Launch::Go) => Err(Refused::Halted),
            Ok(verdict) => Err(Refused::Verdict(verdict)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a send before it leaves; it waits for reconcile");
                Err(Refused::Verdict(Launch::Gone))
            }
        };
        let go = answer.is_ok();
        *asked.lock().unwrap_or_else(PoisonError::into_inner) = Some(answer);
        go
    }

    async fn send_in_span(
        &self,
        rt: &LineRuntime,
        campaign: &ActiveCampaign,
        row: Claimed,
        lease: Option<LineLease>,
    ) -> Result<SendResult, StoreError> {
        if campaign.paused.load(Ordering::SeqCst) {
            // The campaign broke while this row waited: give it back untouched.
            self.store
                .record_failure(
                    row.attempt_id,
                    &FailureAction::Untouched,
                    None,
                    "campaign",
                    "campaign paused before sending",
                    self.now(),
                )
                .await?;
            return Ok(SendResult::Failed);
        }
        let contact = ContactFields {
            phone: row.phone,
            name: row.name,
            email: row.email,
            fields: row.fields,
        };
        let components = match campaign.mapping.render(&contact) {
            Ok(c) => c,
            Err(e) if e.is_contact_level() => {
                let action = FailureAction::Close {
                    outcome: Outcome::Invalid,
                };
                self.store
                    .record_failure(
                        row.attempt_id,
                        &action,
                        None,
                        "permanent",
                        &e.to_string(),
                        self.now(),
                    )
                    .await?;
                return Ok(SendResult::Failed);
            }
            Err(e) => {
                // Nothing was sent: no attempt is spent.
                self.break_campaign(
                    campaign,
                    row.attempt_id,
                    &FailureAction::Untouched,
                    None,
                    &format!("template {}: {e}", campaign.template.name),
                )
                .await?;
                return Ok(SendResult::Failed);
            }
        };
        let message = TemplateMessage {
            to: contact.phone.clone(),
            template_name: campaign.config.template.name.clone(),
            language: campaign.config.template.language.clone(),
            template_id: campaign.template.id.clone(),
            components,
            callback_data: callback_data(row.attempt_id),
        };
        let started = Instant::now();
        let asked = Mutex::new(None);
        let check = LaunchCheck {
            attempt_id: row.attempt_id,
            lease,
        };
        let result = rt
            .provider
            .send_template_if(&message, self.clear_to_send(campaign, check, &asked))
            .await;
        let asked = asked.into_inner().unwrap_or_else(PoisonError::into_inner);
        if let Some(Ok(())) = asked {
            campaign.landed();
            campaign.send_latency.record(started.elapsed());
        }
        let result = match (result, asked) {
            (Ok(Some(accepted)), _) => Ok(accepted),
            (Err(e), _) => Err(e),
            (Ok(None), asked) => {
                let refused = asked.and_then(Result::err);
                return self.unsent(campaign, row.attempt_id, refused).await;
            }
        };
        match result {
            Ok(accepted) => {
                let now = self.now();
                let deadline = now + campaign.config.response_timeout.as_millis() as Millis;
                self.outcomes
                    .accepted(Settle {
                        attempt_id: row.attempt_id,
                        wamid: accepted.wamid.clone(),
                        wa_id: accepted.wa_id.clone(),
                        now,
                        response_deadline: deadline,
                    })
                    .await?;
                campaign.sent.increment(1);
                tracing::Span::current().record("wamid", accepted.wamid.as_str());
                tracing::debug!(wamid = %accepted.wamid, status = ?accepted.message_status, "template accepted");
                if let Some(held) = accepted
                    .message_status
                    .as_deref()
                    .filter(|s| HELD_STATUSES.contains(s))
                {
                    // Meta's pacing holds the message: shown in status, report and metrics.
                    self.store
                        .record_held_status(&accepted.wamid, held, now)
                        .await?;
                    m::message_statuses(&rt.line.name, held, 1);
                }
                Ok(SendResult::Accepted)
            }
            Err(error) => {
                self.failed(
                    rt,
                    campaign,
                    &RowView {
                        attempt_id: row.attempt_id,
                        contact_id: row.contact_id,
                        attempts: row.attempts,
                        phone: &contact.phone,
                    },
                    error,
                )
                .await
            }
        }
    }

    /// A claimed send that did not leave ([`Dispatcher::clear_to_send`] said no).
    async fn unsent(
        &self,
        campaign: &ActiveCampaign,
        attempt_id: i64,
        refused: Option<Refused>,
    ) -> Result<SendResult, StoreError> {
        match refused.unwrap_or(Refused::Verdict(Launch::Gone)) {
            Refused::Halted => {
                // Paused or stopped while it waited for its permit: back to the hopper.
                self.store
                    .record_failure(
                        attempt_id,
                        &FailureAction::Untouched,
                        None,
                        "campaign",
                        "campaign paused before sending",
                        self.now(),
                    )
                    .await?;
                Ok(SendResult::Failed)
            }
            Refused::Verdict(Launch::LeaseLost) => {
                tracing::info!(campaign = %campaign.config.name, attempt = attempt_id,
                    "another daemon drives the line now: the row goes back unsent");
                self.give_back(
                    &[attempt_id],
                    "lease",
                    "the line's lease was lost before sending",
                )
                .await;
                Ok(SendResult::Withdrawn)
            }
            Refused::Verdict(_) => {
                tracing::info!(campaign = %campaign.config.name, attempt = attempt_id,
                    "the row's attempt was given up for lost while it waited: not sent");
                Ok(SendResult::Withdrawn)
            }
        }
    }

    async fn failed(
        &self,
        rt: &LineRuntime,
        campaign: &ActiveCampaign,
        row: &RowView<'_>,
        error: SendError,
    ) -> Result<SendResult, StoreError> {
        let c = error.classification();
        if matches!(
            error,
            SendError::Api { code: 130429, .. }
                | SendError::Gupshup {
                    http_status: 429,
                    ..
                }
        ) {
            rt.pacer.throttled(Instant::now());
        }
        let code = match &error {
            SendError::Api { code, .. } => Some(*code),
            _ => None,
        };
        m::send_failure(
            &rt.line.name,
            &campaign.config.name,
            &error.code_label(),
            c.class.as_str(),
        );
        if !c.known {
            tracing::warn!(line = %rt.line.name, campaign = %campaign.config.name, attempt = row.attempt_id, code = ?code, error = %error,
                "error code not in the classification table; treated as retryable");
        }
        let text = error.to_string();
        let now = self.now();
        // The pair rate backs off 4^n s, n counting this contact's earlier 131056s.
        let pair_hits = if c.pair_rate {
            self.store.pair_rate_hits(row.attempt_id).await?
        } else {
            0
        };
        let action = failure_action(&campaign.config, &c, row.attempts, pair_hits, now);
        match c.class {
            ErrorClass::Campaign => {
                let reason = format!(
                    "{} (error {}: {})",
                    c.title,
                    code.map(|c| c.to_string())
                        .unwrap_or_else(|| error.code_label()),
                    text
                );
                self.break_campaign(campaign, row.attempt_id, &action, code, &reason)
                    .await?;
                Ok(SendResult::Failed)
            }
            ErrorClass::Ambiguous => {
                tracing::warn!(line = %rt.line.name, attempt = row.attempt_id, error = %error,
                    "send outcome unknown; waiting for a status webhook before sending again");
                self.store
                    .record_failure(row.attempt_id, &action, code, c.class.as_str(), &text, now)
                    .await?;
                Ok(SendResult::Unknown)
            }
            _ => {
                if c.opt_out {
                    self.store
                        .add_opt_out(
                            row.phone,
                            "marketing opt-out reported by Meta",
                            "131050",
                            now,
                        )
                        .await?;
                }
                self.store
                    .record_failure(row.attempt_id, &action, code, c.class.as_str(), &text, now)
                    .await?;
                let failure = ContactFailure {
                    campaign: &campaign.config,
                    campaign_id: campaign.id,
                    contact_id: row.contact_id,
                    class: &c,
                    code,
                };
                if let Some(reason) = brakes::after_contact_failure(&self.store, &failure).await? {
                    campaign.paused.store(true, Ordering::SeqCst);
                    self.pause(campaign.id, &campaign.config.name, &reason)
                        .await?;
                }
                Ok(SendResult::Failed)
            }
        }
    }

    /// A failure that is the campaign's fault: the row stays due (`action` says whether the
    /// attempt counts), the campaign pauses.
    async fn break_campaign(
        &self,
        campaign: &ActiveCampaign,
        attempt_id: i64,
        action: &FailureAction,
        code: Option<i64>,
        reason: &str,
    ) -> Result<(), StoreError> {
        campaign.paused.store(true, Ordering::SeqCst);
        self.store
            .record_failure(attempt_id, action, code, "campaign", reason, self.now())
            .await?;
        self.pause(campaign.id, &campaign.config.name, reason)
            .await?;
        Ok(())
    }

    /// Re-reads the line's running campaigns. Those no longer running (paused, stopped, out of
    /// hours) are flagged, so their rows already claimed are given back unsent.
    async fn refresh_campaigns(&self, line: &str, campaigns: &mut Vec<Arc<ActiveCampaign>>) {
        let mut report = PassReport::default();
        match self.active_campaigns(line, &mut report).await {
            Ok(fresh) => {
                for old in campaigns.iter() {
                    if !fresh.iter().any(|c| c.id == old.id) {
                        old.paused.store(true, Ordering::SeqCst);
                    }
                }
                *campaigns = fresh;
            }
            Err(e) => {
                tracing::error!(line = %line, error = %e, "cannot read campaigns; retrying");
                campaigns.clear();
            }
        }
    }

    /// Returns claimed rows to the hopper unsent, as they were before the claim.
    async fn give_back(&self, attempt_ids: &[i64], kind: &str, reason: &str) {
        let given_back = self
            .store
            .give_back(attempt_ids, kind, reason, self.now())
            .await;
        if let Err(e) = given_back {
            tracing::warn!(rows = attempt_ids.len(), error = %e, "giving back claimed rows failed; they will be reconciled");
        }
    }

    /// The daemon's loop for one line: keeps up to `max_in_flight` sends going while there are
    /// due rows, sleeps briefly when there are none, stops claiming on shutdown and lets the
    /// sends in flight finish (their outcome recorded) before returning.
    pub async fn run_line(self, line: String, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let Ok(rt) = self.line(&line) else { return };
        let mut sends: JoinSet<Result<SendResult, StoreError>> = JoinSet::new();
        let mut campaigns: Vec<Arc<ActiveCampaign>> = Vec::new();
        let mut refreshed_at: Option<Instant> = None;
        let mut changes = self.changes.subscribe();
        let mut refresh_now = true;
        let capacity = rt.line.max_in_flight.max(1);
        m::line_throughput(&line, rt.line.throughput_mps);
        let lease = format!("line:{line}");
        let line_lease = LineLease {
            name: lease.as_str().into(),
            holder: self.holder.clone(),
        };
        let ttl = self.config.server.lease_ttl;
        let mut renewed_at: Option<Instant> = None;
        // A send withdrawn at its last check means another daemon took the line or gave up
        // its attempt: ask for the lease at once rather than claiming rows meanwhile.
        let mut recheck_lease = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // One daemon drives a line at a time (SPEC §6); renew well before expiry.
            if renewed_at.is_none_or(|t| t.elapsed() >= ttl / 3)
                || std::mem::take(&mut recheck_lease)
            {
                let holding = renewed_at.is_some();
                let within_share = self.within_share(&lease, holding).await;
                if holding && !within_share {
                    // More daemons joined: finish what is in flight, then hand the line over.
                    while let Some(done) = sends.join_next().await {
                        if let Ok(Err(e)) = done {
                            tracing::error!(line = %line, error = %e, "recording a send failed; the row will be reconciled");
                        }
                    }
                    self.leases.lost(&lease);
                    let _ = self.store.release_lease(&lease, &self.holder).await;
                    tracing::info!(line = %line, "handing the line to a daemon with fewer lines");
                    renewed_at = None;
                }
                let asked_at = self.now();
                let acquired = if within_share {
                    self.store
                        .acquire_lease(&lease, &self.holder, asked_at, ttl.as_millis() as Millis)
                        .await
                } else {
                    Ok(false)
                };
                match acquired {
                    Ok(true) => {
                        if renewed_at.is_none() {
                            tracing::info!(line = %line, holder = %self.holder, "driving the line");
                            // Sends the previous driver left in flight get a full
                            // reconcile_after from now: its downtime is not "no news".
                            self.hold_orphans(&line).await;
                        }
                        renewed_at = Some(Instant::now());
                        self.leases
                            .renewed(&line_lease.name, asked_at + (ttl / 2).as_millis() as Millis);
                    }
                    Ok(false) | Err(_) => {
                        self.leases.lost(&lease);
                        if renewed_at.take().is_some() {
                            tracing::warn!(line = %line, "lost the line's lease; another daemon drives it");
                        }
                        while let Some(done) = sends.try_join_next() {
                            if let Ok(Err(e)) = done {
                                tracing::error!(line = %line, error = %e, "recording a send failed; the row will be reconciled");
                            }
                        }
                        tokio::select! {
                            _ = tokio::time::sleep((ttl / 5).max(Duration::from_millis(200))) => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                }
            }
            while let Some(done) = sends.try_join_next() {
                match done {
                    Ok(Err(e)) => {
                        tracing::error!(line = %line, error = %e, "recording a send failed; the row will be reconciled")
                    }
                    Ok(Ok(SendResult::Withdrawn)) => recheck_lease = true,
                    _ => {}
                }
            }
            if recheck_lease {
                continue;
            }
            rt.pacer.recover(Instant::now());
            if refresh_due(&mut refresh_now, &mut changes, refreshed_at)
                || campaigns.iter().any(|c| c.paused.load(Ordering::SeqCst))
            {
                self.refresh_campaigns(&line, &mut campaigns).await;
                if let Err(e) = self.reconcile(&line).await {
                    tracing::error!(line = %line, error = %e, "reconcile failed; retrying");
                }
                refreshed_at = Some(Instant::now());
            }
            // Sends waiting for their settle's group commit are still tasks here: room for
            // eight times `max_in_flight` lets the next requests start meanwhile (the HTTP
            // permits still bound them) and makes claims and commits larger, so SQLite's one
            // connection changes hands less often: four times was 5 – 14 % slower in
            // `tiercast bench --no-status-webhooks`, twice 9 – 16 % slower than four. One claim
            // takes at most a second of the line's throughput, so a slow line does not hold
            // rows it cannot send soon.
            let room = (capacity * 8).saturating_sub(sends.len());
            let claim_max = room.min(512).min(rt.line.throughput_mps.max(1) as usize);
            let claimed = if room > 0 && !campaigns.is_empty() {
                match self.claim(&rt, &campaigns, claim_max).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(line = %line, error = %e, "claiming rows failed; retrying");
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            if claimed.is_empty() {
                let idle = if sends.is_empty() {
                    Duration::from_millis(200)
                } else {
                    Duration::from_millis(5)
                };
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = shutdown.changed() => {}
                    Ok(()) = changes.changed() => refresh_now = true,
                    Some(done) = sends.join_next(), if !sends.is_empty() => {
                        match done {
                            Ok(Err(e)) => {
                                tracing::error!(line = %line, error = %e, "recording a send failed; the row will be reconciled")
                            }
                            Ok(Ok(SendResult::Withdrawn)) => recheck_lease = true,
                            _ => {}
                        }
                    }
                }
                continue;
            }
            let mut claimed = claimed.into_iter();
            // Rows not to send after all, given back together after the batch.
            let mut paused_rows = Vec::new();
            let mut unsent_at_shutdown = Vec::new();
            'rows: for (campaign, row) in claimed.by_ref() {
                loop {
                    if refresh_due(&mut refresh_now, &mut changes, refreshed_at) {
                        self.refresh_campaigns(&line, &mut campaigns).await;
                        refreshed_at = Some(Instant::now());
                    }
                    if campaign.paused.load(Ordering::SeqCst) || self.store.database_file_lost() {
                        // Paused, stopped or out of hours since the claim, or the database
                        // file is gone: not sent now.
                        paused_rows.push(row.attempt_id);
                        continue 'rows;
                    }
                    tokio::select! {
                        _ = rt.pacer.until_ready() => break,
                        Ok(()) = changes.changed() => refresh_now = true,
                        _ = shutdown.changed() => {
                            // This row and the rest of the batch go back untouched.
                            unsent_at_shutdown.push(row.attempt_id);
                            break 'rows;
                        }
                    }
                }
                let this = self.clone();
                let rt = rt.clone();
                let lease = Some(line_lease.clone());
                sends.spawn(async move { this.send_one(&rt, &campaign, row, lease).await });
            }
            unsent_at_shutdown.extend(claimed.map(|(_, row)| row.attempt_id));
            self.here.forget(&paused_rows);
            self.here.forget(&unsent_at_shutdown);
            self.give_back(&paused_rows, "campaign", "campaign paused before sending")
                .await;
            self.give_back(&unsent_at_shutdown, "shutdown", "daemon shutting down")
                .await;
        }
        while let Some(done) = sends.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::error!(line = %line, error = %e, "recording a send failed during shutdown; the row will be reconciled");
            }
        }
        if renewed_at.is_some() {
            self.leases.lost(&lease);
            let _ = self.store.release_lease(&lease, &self.holder).await;
        }
        tracing::info!(line = %line, "dispatcher stopped");
    }
}

/// Whether a line should re-read its campaigns now: asked to, announced by a campaign command
/// in this process, or [`CAMPAIGN_REFRESH`] since the last read. Clears what it consumed.
fn refresh_due(
    refresh_now: &mut bool,
    changes: &mut watch::Receiver<u64>,
    refreshed_at: Option<Instant>,
) -> bool {
    let announced = changes.has_changed().unwrap_or(false);
    let due = std::mem::take(refresh_now)
        || announced
        || refreshed_at.is_none_or(|t| t.elapsed() >= CAMPAIGN_REFRESH);
    if announced {
        changes.mark_unchanged();
    }
    due
}

struct RowView<'a> {
    attempt_id: i64,
    contact_id: i64,
    attempts: i64,
    phone: &'a str,
}

/// What a failure does to the row (SPEC §2 rule 4), from the classification and the
/// campaign's retry policy. `attempts_before` is how many attempts were spent before this one;
/// `pair_hits` how many earlier sends to this contact met the pair rate limit (131056).
pub fn failure_action(
    campaign: &Campaign,
    c: &Classification,
    attempts_before: i64,
    pair_hits: i64,
    now: Millis,
) -> FailureAction {
    let min_delay = c.min_delay.unwrap_or(Duration::ZERO);
    match c.class {
        ErrorClass::Throttled => {
            let wait = if c.pair_rate {
                // 4^n seconds for the n-th pair rate hit (reference §2.4), at least 6 s.
                PAIR_RATE_DELAY.max(Duration::from_secs(
                    4u64.saturating_pow((pair_hits + 1).clamp(1, 8) as u32),
                ))
            } else {
                THROTTLE_DELAY.max(min_delay)
            };
            FailureAction::Requeue {
                at: now + wait.as_millis() as Millis,
            }
        }
        ErrorClass::Retryable => {
            let at = if campaign.auto_retry {
                let factor = 1u32 << attempts_before.clamp(0, 16) as u32;
                let backoff = campaign
                    .retry_backoff
                    .saturating_mul(factor)
                    .min(MAX_BACKOFF)
                    .max(min_delay);
                now + backoff.as_millis() as Millis
            } else {
                AWAITING_RETRY_RUN.max(now + min_delay.as_millis() as Millis)
            };
            FailureAction::Retry {
                at,
                max_attempts: i64::from(campaign.max_attempts),
            }
        }
        ErrorClass::Permanent => FailureAction::Close {
            outcome: if c.opt_out {
                Outcome::OptedOut
            } else {
                Outcome::Failed
            },
        },
        // The contact's until `brakes` finds the same code on several contacts in a row.
        ErrorClass::Request => FailureAction::Close {
            outcome: Outcome::Failed,
        },
        // The campaign pauses; the contact stays due at resume, but the attempt was made and
        // counts, so no contact is tried more than `max_attempts` times however often the
        // campaign is resumed.
        ErrorClass::Campaign => FailureAction::Retry {
            at: now,
            max_attempts: i64::from(campaign.max_attempts),
        },
        ErrorClass::Ambiguous => FailureAction::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error_class::classify_meta;

    #[test]
    fn request_errors_close_the_contact_and_campaign_errors_spend_the_attempt() {
        let config = Config::parse(
            "[[lines]]\nname = \"m\"\nprovider = \"simulator\"\n[[campaigns]]\nname = \"c\"\nline = \"m\"\n\
             template = { name = \"t\", language = \"en\" }\nlists = [\"l\"]\nmax_attempts = 2\n",
            "t.toml",
        )
        .unwrap();
        let campaign = &config.campaigns[0];
        assert_eq!(
            failure_action(campaign, &classify_meta(100), 0, 0, 7),
            FailureAction::Close {
                outcome: Outcome::Failed
            }
        );
        assert_eq!(
            failure_action(campaign, &classify_meta(190), 1, 0, 7),
            FailureAction::Retry {
                at: 7,
                max_attempts: 2
            }
        );
    }

    #[test]
    fn pair_rate_hits_back_off_four_to_the_n_seconds_and_spend_nothing() {
        let config = Config::parse(
            "[[lines]]\nname = \"m\"\nprovider = \"simulator\"\n[[campaigns]]\nname = \"c\"\nline = \"m\"\n\
             template = { name = \"t\", language = \"en\" }\nlists = [\"l\"]\n",
            "t.toml",
        )
        .unwrap();
        let campaign = &config.campaigns[0];
        let pair = classify_meta(131056);
        let wait = |hits| match failure_action(campaign, &pair, 2, hits, 0) {
            FailureAction::Requeue { at } => at / 1000,
            other => panic!("{other:?}"),
        };
        // 4 s is below the 6 s gap; then 16 s, 64 s, … whatever attempts were spent.
        assert_eq!([wait(0), wait(1), wait(2), wait(3)], [6, 16, 64, 256]);
        assert_eq!(wait(50), 65_536, "capped at 4^8 s");
        // The line's throughput limit waits a second, not 4^n.
        assert_eq!(
            failure_action(campaign, &classify_meta(130429), 0, 3, 0),
            FailureAction::Requeue { at: 1000 }
        );
    }
}
