//! Task output: lines are collected from the process and sent to the planner in order, in
//! chunks of up to 256 lines and 256 KiB, so a chatty script costs few messages.

use super::secrets::Masker;
use crate::report::Reporter;
use shoal_shared::messages::{TaskMessage, WorkerBody};
use shoal_shared::{DeploymentId, OutputLine, OutputStream, TaskId, Timestamp};
use tokio::sync::mpsc;

const MAX_CHUNK_LINES: usize = 256;
/// Output bytes per message, well under the broker's default 1 MiB payload limit.
const MAX_CHUNK_BYTES: usize = 256 * 1024;

/// Where an executor writes output lines.
#[derive(Debug)]
pub struct OutputSink {
    tx: mpsc::Sender<OutputLine>,
    /// Masks the task's sensitive values before a line leaves the worker.
    masker: Masker,
    done: tokio::task::JoinHandle<()>,
}

impl OutputSink {
    /// Starts the sender of one delivery of a task attempt's output.
    pub fn spawn(
        task: &TaskMessage,
        delivery: u32,
        reporter: Reporter,
        masker: Masker,
    ) -> OutputSink {
        let (tx, rx) = mpsc::channel(1024);
        let done = tokio::spawn(forward(
            rx,
            reporter,
            task.deployment,
            task.task,
            task.attempt,
            delivery,
        ));
        OutputSink { tx, masker, done }
    }

    /// Adds a line (waits when the sender is behind, which slows the reader, not memory).
    pub async fn line(&self, stream: OutputStream, line: String) {
        let line = match self.masker.mask(&line) {
            std::borrow::Cow::Borrowed(_) => line,
            std::borrow::Cow::Owned(masked) => masked,
        };
        let _ = self
            .tx
            .send(OutputLine {
                stream,
                at: Timestamp::now(),
                line,
            })
            .await;
    }

    /// Sends what is left and waits until it is stored.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.done.await;
    }
}

async fn forward(
    mut rx: mpsc::Receiver<OutputLine>,
    reporter: Reporter,
    deployment: DeploymentId,
    task: TaskId,
    attempt: u32,
    delivery: u32,
) {
    let mut next_line = 0u64;
    let mut received = Vec::with_capacity(MAX_CHUNK_LINES);
    // Whatever arrived while the previous chunk was being stored goes out next: a quiet
    // script gets each line at once, a chatty one few large messages, each under the size a
    // broker accepts.
    while rx.recv_many(&mut received, MAX_CHUNK_LINES).await > 0 {
        let mut lines = Vec::new();
        let mut bytes = 0;
        for line in received.drain(..) {
            if !lines.is_empty() && bytes + line.line.len() > MAX_CHUNK_BYTES {
                next_line = send(
                    &reporter,
                    deployment,
                    task,
                    attempt,
                    delivery,
                    next_line,
                    std::mem::take(&mut lines),
                )
                .await;
                bytes = 0;
            }
            bytes += line.line.len();
            lines.push(line);
        }
        next_line = send(
            &reporter, deployment, task, attempt, delivery, next_line, lines,
        )
        .await;
    }
}

async fn send(
    reporter: &Reporter,
    deployment: DeploymentId,
    task: TaskId,
    attempt: u32,
    delivery: u32,
    first_line: u64,
    lines: Vec<OutputLine>,
) -> u64 {
    let count = lines.len() as u64;
    reporter
        .send(WorkerBody::TaskOutput {
            deployment,
            task,
            attempt,
            delivery,
            first_line,
            lines,
        })
        .await;
    first_line + count
}
