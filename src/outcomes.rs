//! The daemon's outcome writes: accepted sends (from the dispatcher's HTTP answers) and
//! status webhooks (from the inbox) queue in front of one group commit, so one transaction
//! records whatever of both has arrived. With SQLite's single connection every transaction
//! is a BEGIN and a COMMIT round trip and a turn at the connection; two queues took twice the
//! turns for the same rows.

use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::group_commit::GroupCommit;
use crate::store::{AppliedStatus, Settle, StatusRecord, Store, StoreError, StoreResult};
use std::sync::Arc;

enum Write {
    Accepted(Settle),
    Statuses(Arc<[StatusRecord]>),
}

enum Written {
    Accepted,
    Statuses(Vec<AppliedStatus>),
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
                for write in batch.iter() {
                    match write {
                        Write::Accepted(s) => settles.push(s.clone()),
                        Write::Statuses(p) => posts.push(p.clone()),
                    }
                }
                let timeouts = |name: &str| response_timeout(&config, name);
                let mut applied = store
                    .record_outcomes(&settles, &posts, &timeouts, now)
                    .await?
                    .into_iter();
                Ok(batch
                    .iter()
                    .map(|write| match write {
                        Write::Accepted(_) => Written::Accepted,
                        Write::Statuses(_) => Written::Statuses(applied.next().unwrap_or_default()),
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
            Written::Accepted => Err(StoreError::Batch("statuses answered as a send".into())),
        }
    }
}

/// The configured response timeout of the campaign named `name`, in milliseconds.
pub(crate) fn response_timeout(config: &Config, name: &str) -> Option<Millis> {
    config
        .campaign(name)
        .map(|c| c.response_timeout.as_millis() as Millis)
}
