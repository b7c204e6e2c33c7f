//! Group commit: many concurrent writers, one transaction. Accepted sends (each must be
//! recorded before its send counts as done) and status webhooks (each POST is answered 200
//! only once its statuses are committed) arrive many at a time; one writer task takes
//! whatever has queued up and records it in one transaction instead of one each. Every
//! caller still waits for its own commit, so the guarantees are unchanged: until then an
//! attempt is `sending` (a crash leaves it to the status webhook or reconcile, SPEC §2
//! rule 7), and an unanswered webhook is posted again by Meta.

use crate::store::{StoreError, StoreResult};
use futures::future::BoxFuture;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// Most items one transaction takes.
const MAX_BATCH: usize = 512;

type Pending<I, O> = (I, oneshot::Sender<StoreResult<O>>);

/// Writes a batch of items in one transaction, answering one output per item, in order.
pub type BatchWriter<I, O> =
    Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, StoreResult<Vec<O>>> + Send + Sync>;

/// A queue in front of one writer task, started on first use (so it can be built outside a
/// Tokio runtime). Cheap to clone.
pub struct GroupCommit<I, O> {
    write: BatchWriter<I, O>,
    sender: Arc<OnceLock<mpsc::UnboundedSender<Pending<I, O>>>>,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        GroupCommit {
            write: self.write.clone(),
            sender: self.sender.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    pub fn new(write: BatchWriter<I, O>) -> Self {
        GroupCommit {
            write,
            sender: Default::default(),
        }
    }

    /// Queues `item` and returns its output once the transaction holding it committed.
    pub async fn write(&self, item: I) -> StoreResult<O> {
        let sender = self.sender.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(writer(self.write.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if sender.send((item, reply)).is_err() {
            return Err(StoreError::Batch("the batch writer stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Batch("the batch writer stopped".into())))
    }
}

async fn writer<I, O>(write: BatchWriter<I, O>, mut queue: mpsc::UnboundedReceiver<Pending<I, O>>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
        let n = items.len();
        match write(items).await {
            Ok(outputs) if outputs.len() == n => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    let _ = reply.send(Ok(output));
                }
            }
            Ok(outputs) => {
                let message = format!("batch writer answered {} of {n} items", outputs.len());
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Batch(message.clone())));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Batch(message.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer that doubles each item and notes the size of every batch it got.
    fn doubling(batches: Arc<Mutex<Vec<usize>>>, fail: bool) -> GroupCommit<u32, u32> {
        GroupCommit::new(Arc::new(move |items: Vec<u32>| {
            batches.lock().unwrap().push(items.len());
            Box::pin(async move {
                if fail {
                    return Err(StoreError::Batch("disk full".into()));
                }
                Ok(items.iter().map(|i| i * 2).collect())
            })
        }))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_writers_share_one_batch_and_each_gets_its_own_answer() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let queue = doubling(batches.clone(), false);
        // On one thread every task queues its item before the writer task first runs.
        let tasks: Vec<_> = (0..100u32)
            .map(|i| {
                let q = queue.clone();
                tokio::spawn(async move { (i, q.write(i).await) })
            })
            .collect();
        for task in tasks {
            let (i, answer) = task.await.unwrap();
            assert_eq!(answer.unwrap(), i * 2);
        }
        assert_eq!(*batches.lock().unwrap(), vec![100]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_batch_fails_every_writer_in_it() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let queue = doubling(batches.clone(), true);
        let tasks: Vec<_> = (0..3u32)
            .map(|i| {
                let q = queue.clone();
                tokio::spawn(async move { q.write(i).await })
            })
            .collect();
        for task in tasks {
            let error = task.await.unwrap().unwrap_err();
            assert!(error.to_string().contains("disk full"), "{error}");
        }
        assert_eq!(*batches.lock().unwrap(), vec![3]);
    }
}
