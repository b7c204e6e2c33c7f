//! Group commit of accepted sends. Each accepted template must be recorded
//! (`Store::settle_accepted_many`) before its send counts as done. With many sends in flight
//! their answers arrive together, so one writer task records whatever has queued up in one
//! transaction instead of one
//! transaction each. A send still waits for its own record to be committed: the guarantee
//! is unchanged (until then the attempt is `sending`, and a crash leaves it to the status
//! webhook or reconcile, SPEC §2 rule 7).

use crate::clock::Millis;
use crate::store::{Settle, Store, StoreError, StoreResult};
use std::sync::OnceLock;
use tokio::sync::{mpsc, oneshot};

/// Most records one transaction takes.
const MAX_BATCH: usize = 512;

type Pending = (Settle, oneshot::Sender<StoreResult<bool>>);

/// A queue in front of one writer task, started on first use (so it can be built outside a
/// Tokio runtime). Cheap to clone.
#[derive(Clone)]
pub struct SettleQueue {
    store: Store,
    sender: std::sync::Arc<OnceLock<mpsc::UnboundedSender<Pending>>>,
}

impl SettleQueue {
    pub fn new(store: Store) -> SettleQueue {
        SettleQueue {
            store,
            sender: Default::default(),
        }
    }

    /// Records `attempt_id` as accepted; returns once committed, with whether the row moved
    /// (false: a status webhook or reconcile settled it first).
    pub async fn settle(
        &self,
        attempt_id: i64,
        wamid: &str,
        wa_id: Option<&str>,
        now: Millis,
        response_deadline: Millis,
    ) -> StoreResult<bool> {
        let sender = self.sender.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(writer(self.store.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let settle = Settle {
            attempt_id,
            wamid: wamid.to_string(),
            wa_id: wa_id.map(str::to_string),
            now,
            response_deadline,
        };
        if sender.send((settle, reply)).is_err() {
            return Err(StoreError::Batch("the settle writer stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Batch("the settle writer stopped".into())))
    }
}

async fn writer(store: Store, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let settles: Vec<&Settle> = batch.iter().map(|(s, _)| s).collect();
        match store.settle_accepted_many(&settles).await {
            Ok(moved) => {
                for ((_, reply), moved) in batch.drain(..).zip(moved) {
                    let _ = reply.send(Ok(moved));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Batch(message.clone())));
                }
            }
        }
    }
}
