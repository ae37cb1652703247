//! Task output: lines are collected from the process and sent to the planner in order, in
//! chunks of up to 256 lines, so a chatty script costs few messages.

use crate::report::Reporter;
use shoal_shared::messages::{TaskMessage, WorkerBody};
use shoal_shared::{DeploymentId, OutputLine, OutputStream, TaskId, Timestamp};
use tokio::sync::mpsc;

const MAX_CHUNK_LINES: usize = 256;

/// Where an executor writes output lines.
#[derive(Debug)]
pub struct OutputSink {
    tx: mpsc::Sender<OutputLine>,
    done: tokio::task::JoinHandle<()>,
}

impl OutputSink {
    /// Starts the sender of one task attempt's output.
    pub fn spawn(task: &TaskMessage, reporter: Reporter) -> OutputSink {
        let (tx, rx) = mpsc::channel(1024);
        let done = tokio::spawn(forward(
            rx,
            reporter,
            task.deployment,
            task.task,
            task.attempt,
        ));
        OutputSink { tx, done }
    }

    /// Adds a line (waits when the sender is behind, which slows the reader, not memory).
    pub async fn line(&self, stream: OutputStream, line: String) {
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
) {
    let mut next_line = 0u64;
    let mut chunk = Vec::with_capacity(MAX_CHUNK_LINES);
    // Whatever arrived while the previous chunk was being stored goes out as the next chunk:
    // a quiet script gets each line at once, a chatty one few large messages.
    while rx.recv_many(&mut chunk, MAX_CHUNK_LINES).await > 0 {
        let lines = std::mem::take(&mut chunk);
        let count = lines.len() as u64;
        reporter
            .send(WorkerBody::TaskOutput {
                deployment,
                task,
                attempt,
                first_line: next_line,
                lines,
            })
            .await;
        next_line += count;
    }
}
