//! `shoal logs ID [TASK]`: the output of a deployment's tasks (all, or one) as the planner
//! holds it now, or with `--follow` as it arrives until they have ended (see [`crate::live`]).

use crate::live::{Followed, OutputFollower, Scope};
use crate::{Output, render, show};
use anyhow::{Context as _, bail};
use shoal_cli::client::ApiClient;
use shoal_cli::{exit, ids};
use shoal_shared::TaskId;
use shoal_shared::api::{DeploymentDetail, TaskLog};
use std::io::Write as _;

/// `shoal logs`: the exit code ([`exit::OK`] unless following ended otherwise).
pub(crate) async fn run(
    api: &ApiClient,
    out: Output,
    id: &str,
    task: Option<&str>,
    follow: bool,
) -> anyhow::Result<i32> {
    let id = ids::deployment(api, id).await?.to_string();
    let d: DeploymentDetail = api.get_as(&format!("/api/deployments/{id}")).await?;
    let one = task.map(|t| ids::task(&d, t)).transpose()?;
    let tasks = tasks(&d, one);
    if tasks.is_empty() {
        bail!("deployment {id} has no tasks");
    }
    if !follow {
        print_all(api, out, &id, &tasks).await?;
        return Ok(exit::OK);
    }
    if let Some((task, label)) = tasks.first().filter(|_| one.is_some()) {
        println!("== task {task} ({label})");
    }
    follow_output(api, &d, one.map_or(Scope::Deployment, Scope::Task)).await
}

/// The deployment's tasks (or the one asked for), each with its label for the header.
fn tasks(d: &DeploymentDetail, one: Option<TaskId>) -> Vec<(TaskId, String)> {
    let mut tasks = Vec::new();
    for step in &d.steps {
        for t in &step.tasks {
            let label = format!(
                "{} · {} · pool {}",
                step.name,
                t.target.as_ref().map_or("(no target)", |t| t.as_str()),
                t.pool
            );
            tasks.push((t.id, label));
        }
    }
    tasks.retain(|(t, _)| one.is_none_or(|one| *t == one));
    tasks
}

/// Every task's output as the planner holds it now; with `--output json`, an array of the
/// API's `TaskLog`, one per task, each with all its lines.
async fn print_all(
    api: &ApiClient,
    out: Output,
    id: &str,
    tasks: &[(TaskId, String)],
) -> anyhow::Result<()> {
    if out == Output::Json {
        let mut all = Vec::with_capacity(tasks.len());
        for (task, _) in tasks {
            all.push(whole_log(api, id, &task.to_string()).await?);
        }
        return show(out, &all, |_| {});
    }
    for (task, label) in tasks {
        println!("== task {task} ({label})");
        // Page by page, so a long log is printed as it comes rather than held whole.
        api.task_log_pages(id, &task.to_string(), None, |lines| {
            for l in &lines {
                println!("{}", render::log_line(l.attempt, l.run, l.stream, &l.line));
            }
        })
        .await?;
    }
    Ok(())
}

/// A task's log as one `TaskLog`: every page's lines, the last page's state and cursor.
async fn whole_log(api: &ApiClient, id: &str, task: &str) -> anyhow::Result<TaskLog> {
    let mut lines = Vec::new();
    let last = api
        .task_log_pages(id, task, None, |page| lines.extend(page))
        .await?;
    Ok(TaskLog {
        lines,
        more: false,
        ..last
    })
}

/// `--follow`: prints the output lines as they arrive, then how it ended (on stderr, so
/// stdout is the output alone); the exit code of that end.
async fn follow_output(api: &ApiClient, d: &DeploymentDetail, scope: Scope) -> anyhow::Result<i32> {
    let mut f = OutputFollower::new(api, d, scope);
    loop {
        match f.next().await? {
            Followed::Lines(lines) => {
                let mut stdout = std::io::stdout().lock();
                for l in lines {
                    writeln!(stdout, "{l}").context("cannot write the output")?;
                }
                stdout.flush().context("cannot write the output")?;
            }
            Followed::Ended { code, summary } => {
                eprintln!("{summary}");
                return Ok(code);
            }
        }
    }
}
