//! What the planner does because of facts in its log, once they are durable: tell workers to
//! stop cancelled tasks (and take their queued messages off the queue), submit commands
//! later (retries after their backoff, the end of a cancellation's grace), and tell a worker
//! to drain or resume. The writer sends these after each flush; after a restart they are
//! derived again from the projections, so none is lost with the process.

use crate::domain::Command;
use crate::liveness::Liveness;
use crate::log::writer::WriterHandle;
use futures::StreamExt;
use shoal_shared::messages::{
    CheckMessage, KIND_HEADER, KIND_HEALTH_CHECK, WIRE_SCHEMA_VERSION, WorkerControl,
};
use shoal_shared::subjects::Subjects;
use shoal_shared::{PoolName, TaskId, Timestamp, WorkerName, codec};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

/// Something to do once a batch of the log is durable.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Tell workers to stop these tasks; remove the queued message at the given stream
    /// sequence, when known, so a task not yet taken never starts.
    Cancel(Vec<(TaskId, Option<u64>)>),
    /// Submit a command at a time.
    Schedule { at: Timestamp, cmd: Command },
    /// Publish a health check to its pool's queue (retried until stored or past its
    /// deadline).
    PublishCheck(CheckMessage),
    /// Tell a worker to drain (take no new tasks) or resume.
    Control {
        worker: WorkerName,
        pool: PoolName,
        drain: bool,
    },
}

/// Cancellations travel on core NATS, which may drop them while a worker reconnects: each
/// is sent again after these delays.
const CANCEL_RESENDS: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(8)];

enum Due {
    Submit(Command),
    Resend(Vec<TaskId>),
}

/// Carries out effects until shutdown.
pub async fn run(
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    writer: WriterHandle,
    liveness: Liveness,
    mut rx: mpsc::UnboundedReceiver<Effect>,
    shutdown: CancellationToken,
) {
    let mut due: DelayQueue<Due> = DelayQueue::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            effect = rx.recv() => match effect {
                None => return,
                Some(Effect::Cancel(tasks)) => {
                    let ids: Vec<TaskId> = tasks.iter().map(|(t, _)| *t).collect();
                    publish_cancels(&client, &subjects, &ids).await;
                    remove_queued(&js, &subjects, &tasks).await;
                    for after in CANCEL_RESENDS {
                        due.insert(Due::Resend(ids.clone()), after);
                    }
                }
                Some(Effect::Schedule { at, cmd }) => {
                    let wait = at.millis_since(Timestamp::now());
                    due.insert(Due::Submit(cmd), Duration::from_millis(wait));
                }
                Some(Effect::PublishCheck(check)) => {
                    tokio::spawn(publish_check(js.clone(), subjects.clone(), check, shutdown.clone()));
                }
                Some(Effect::Control { worker, pool, drain }) => {
                    liveness.want_draining(&worker, drain);
                    send_control(&client, &subjects, &worker, &pool, drain).await;
                }
            },
            Some(expired) = due.next(), if !due.is_empty() => match expired.into_inner() {
                Due::Submit(cmd) => {
                    if let Err(e) = writer.submit(cmd).await {
                        tracing::warn!(error = %e, "scheduled command not submitted; the planner is stopping");
                        return;
                    }
                }
                Due::Resend(ids) => publish_cancels(&client, &subjects, &ids).await,
            },
        }
    }
}

/// Publishes a check with message id `check/<id>`, so a copy published again after a
/// restart is dropped by the broker. Gives up at its deadline: the planner then calls the
/// target unavailable.
async fn publish_check(
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    check: CheckMessage,
    shutdown: CancellationToken,
) {
    let bytes: bytes::Bytes = match codec::encode(&check) {
        Ok(b) => b.into(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a health check");
            return;
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(KIND_HEADER, KIND_HEALTH_CHECK);
    let mut backoff = Duration::from_millis(100);
    while Timestamp::now() < check.deadline_at && !shutdown.is_cancelled() {
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(bytes.clone())
            .headers(headers.clone())
            .message_id(check.message_id());
        let stored = match js.send_publish(subjects.tasks(&check.pool), msg).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, target = %check.target, "health check not stored by the broker yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn publish_cancels(client: &async_nats::Client, subjects: &Subjects, tasks: &[TaskId]) {
    for task in tasks {
        if let Err(e) = client
            .publish(subjects.cancel(task), bytes::Bytes::new())
            .await
        {
            tracing::warn!(error = %e, task.id = %task, "cancellation not sent; it is sent again shortly");
        }
    }
}

/// Removes the queued messages of cancelled tasks. A message a worker already took is gone
/// or about to be (its worker is told to stop); either way there is nothing to report.
async fn remove_queued(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    tasks: &[(TaskId, Option<u64>)],
) {
    if tasks.iter().all(|(_, seq)| seq.is_none()) {
        return;
    }
    let stream = match js.get_stream(subjects.tasks_stream()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the task stream to remove cancelled tasks; workers skip them when they arrive");
            return;
        }
    };
    for (task, seq) in tasks {
        if let Some(seq) = seq {
            match stream.delete_message(*seq).await {
                Ok(_) => {
                    tracing::debug!(task.id = %task, seq, "removed a cancelled task from its queue")
                }
                Err(e) => {
                    tracing::debug!(task.id = %task, seq, error = %e, "cancelled task no longer queued")
                }
            }
        }
    }
}

/// Sends a worker its wanted drain state.
pub async fn send_control(
    client: &async_nats::Client,
    subjects: &Subjects,
    worker: &WorkerName,
    pool: &PoolName,
    drain: bool,
) {
    let msg = WorkerControl {
        schema_version: WIRE_SCHEMA_VERSION,
        worker: worker.clone(),
        drain,
    };
    match codec::encode(&msg) {
        Ok(bytes) => {
            if let Err(e) = client
                .publish(subjects.control(pool, worker), bytes.into())
                .await
            {
                tracing::warn!(error = %e, worker = %worker, "instruction not sent; it is sent again at the worker's next heartbeat");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode an instruction"),
    }
}
