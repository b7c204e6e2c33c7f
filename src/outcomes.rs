//! The daemon's outcome writes: accepted sends (from the dispatcher's HTTP answers) and
//! status webhooks (from the inbox) queue in front of one group commit, so one transaction
//! records whatever of both has arrived. The last check of sends about to leave
//! ([`Store::launch_verdicts`]) rides the same queue: one read per batch, not one per send. With SQLite's single connection every transaction
//! is a BEGIN and a COMMIT round trip and a turn at the connection; two queues took twice the
//! turns for the same rows.

use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::group_commit::GroupCommit;
use crate::store::{
    AppliedStatus, Launch, LaunchCheck, Settle, StatusRecord, Store, StoreError, StoreResult,
};
use std::sync::Arc;

enum Write {
    Accepted(Settle),
    Statuses(Arc<[StatusRecord]>),
    Launch(LaunchCheck),
}

enum Written {
    Accepted,
    Statuses(Vec<AppliedStatus>),
    Launch(Launch),
}

/// Cheap to clone; every clone feeds the same queue.
#[derive(Clone)]
pub struct Outcomes {
    queue: GroupCommit<Write, Written>,
}

impl Outcomes {
    pub fn new(store: Store, clock: SharedClock, config: Arc<Config>) -> Self {
        let queue = GroupCommit::new(Arc::new(move |batch: Vec<Write>| {
            let store = store.clone();
            let config = config.clone();
            let now = clock.now_millis();
            Box::pin(async move {
                let mut settles = Vec::new();
                let mut posts = Vec::new();
                let mut launches = Vec::new();
                for write in batch.iter() {
                    match write {
                        Write::Accepted(s) => settles.push(s.clone()),
                        Write::Statuses(p) => posts.push(p.clone()),
                        Write::Launch(c) => launches.push(c.clone()),
                    }
                }
                let timeouts = |name: &str| response_timeout(&config, name);
                let mut applied = if settles.is_empty() && posts.is_empty() {
                    Vec::new()
                } else {
                    store
                        .record_outcomes(&settles, &posts, &timeouts, now)
                        .await?
                }
                .into_iter();
                let mut verdicts = if launches.is_empty() {
                    Vec::new()
                } else {
                    store.launch_verdicts(&launches, now).await?
                }
                .into_iter();
                Ok(batch
                    .iter()
                    .map(|write| match write {
                        Write::Accepted(_) => Written::Accepted,
                        Write::Statuses(_) => Written::Statuses(applied.next().unwrap_or_default()),
                        Write::Launch(_) => {
                            Written::Launch(verdicts.next().unwrap_or(Launch::Gone))
                        }
                    })
                    .collect())
            }) as futures::future::BoxFuture<'static, _>
        }));
        Outcomes { queue }
    }

    /// Records an accepted send; returns once it is committed.
    pub async fn accepted(&self, settle: Settle) -> StoreResult<()> {
        self.queue.write(Write::Accepted(settle)).await.map(|_| ())
    }

    /// Applies one webhook's statuses; returns, once committed, what each did.
    pub async fn statuses(&self, records: Arc<[StatusRecord]>) -> StoreResult<Vec<AppliedStatus>> {
        match self.queue.write(Write::Statuses(records)).await? {
            Written::Statuses(applied) => Ok(applied),
            _ => Err(StoreError::Batch(
                "statuses answered as something else".into(),
            )),
        }
    }

    /// Whether a claimed send may leave now ([`Store::launch_verdicts`]).
    pub async fn launch(&self, check: LaunchCheck) -> StoreResult<Launch> {
        match self.queue.write(Write::Launch(check)).await? {
            Written::Launch(verdict) => Ok(verdict),
            _ => Err(StoreError::Batch(
                "a launch check answered as something else".into(),
            )),
        }
    }
}

/// The configured response timeout of the campaign named `name`, in milliseconds.
pub(crate) fn response_timeout(config: &Config, name: &str) -> Option<Millis> {
    config
        .campaign(name)
        .map(|c| c.response_timeout.as_millis() as Millis)
}
