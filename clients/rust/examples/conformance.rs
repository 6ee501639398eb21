//! The conformance scenario every client passes against a live agent (clients/CONFORMANCE.md):
//!
//! ```text
//! JOBAGENT_TOKEN=<token> cargo run --example conformance -- 127.0.0.1:50051
//! JOBAGENT_TOKEN=<token> cargo run --example conformance -- unix:/run/jobagent/jobagent.sock
//! cargo run --example conformance -- --expect-unauthenticated 127.0.0.1:50051
//! ```
//!
//! With `--expect-unauthenticated` it only checks that its first call is refused with
//! UNAUTHENTICATED (run it without the token the agent requires).

use std::time::Duration;

use jobagent_client::pb::{ExecutionStatus, LogStream};
use jobagent_client::{JobAgent, LogOptions, NodeEvent, Options};
use tonic::Code;

type Failure = Box<dyn std::error::Error>;

fn check(condition: bool, what: &str) -> Result<(), Failure> {
    if condition {
        Ok(())
    } else {
        Err(format!("conformance failed: {what}").into())
    }
}

/// Writes both streams and ends with a fragment (no newline).
const LINES_SCRIPT: &str = "echo one; echo two >&2; echo three; echo four >&2; printf tail";

/// What the scenario compares of a log line: time (nanoseconds), stream, text, partial,
/// truncated.
type Line = (i128, i32, String, bool, bool);

fn messages(lines: &[Line], stream: Option<LogStream>) -> Vec<&str> {
    lines
        .iter()
        .filter(|line| stream.is_none_or(|stream| line.1 == stream as i32))
        .map(|line| line.2.as_str())
        .collect()
}

/// Reads the log of a job that writes both streams and a fragment line by line and batch by
/// batch (the lines made here from the columns): the same lines, in order.
async fn check_log_reads(agent: &mut JobAgent, job: &str) -> Result<(), Failure> {
    let done = agent.trigger_and_wait(&format!("{job}-lines")).await?;
    check(
        done.status == ExecutionStatus::Completed as i32,
        "lines completed",
    )?;
    let mut by_line: Vec<Line> = Vec::new();
    let mut lines = agent.follow_logs(&done.id, false).await?;
    while let Some(line) = lines.message().await? {
        let time = line.time.unwrap_or_default();
        let nanos = i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos);
        by_line.push((
            nanos,
            line.stream,
            line.message,
            line.partial,
            line.truncated,
        ));
    }
    let mut by_batch: Vec<Line> = Vec::new();
    let mut batches = agent.log_batches(&done.id, &LogOptions::default()).await?;
    while let Some(batch) = batches.message().await? {
        for (index, message) in batch.messages.iter().enumerate() {
            by_batch.push((
                i128::from(batch.times_unix_nano[index]),
                batch.streams[index],
                message.clone(),
                batch.partial_lines.contains(&(index as u32)),
                batch.truncated && index == 0,
            ));
        }
    }
    check(
        by_line == by_batch,
        &format!("line and batch reads differ: {by_line:?}, {by_batch:?}"),
    )?;
    check(
        messages(&by_line, Some(LogStream::Stdout)) == ["one", "three", "tail"]
            && messages(&by_line, Some(LogStream::Stderr)) == ["two", "four"],
        &format!("lines of each stream: {by_line:?}"),
    )?;
    check(
        by_line
            .iter()
            .all(|line| line.3 == (line.2 == "tail") && !line.4),
        &format!("partial only on the fragment: {by_line:?}"),
    )?;
    let options = LogOptions {
        tail_lines: 2,
        ..Default::default()
    };
    let mut tail = Vec::new();
    let mut batches = agent.log_batches(&done.id, &options).await?;
    while let Some(batch) = batches.message().await? {
        tail.extend(batch.messages);
    }
    let all = messages(&by_line, None);
    check(
        tail == all[all.len().saturating_sub(2)..],
        &format!("tail 2: {tail:?} of {all:?}"),
    )
}

#[tokio::main]
async fn main() -> Result<(), Failure> {
    let (flags, targets): (Vec<String>, Vec<String>) = std::env::args()
        .skip(1)
        .partition(|arg| arg.starts_with("--"));
    let expect_unauthenticated = match flags.as_slice() {
        [] => false,
        [flag] if flag == "--expect-unauthenticated" => true,
        _ => return Err(format!("unknown flags {flags:?}").into()),
    };
    let target = targets.first().map_or("127.0.0.1:50051", String::as_str);
    let options = Options {
        token: std::env::var("JOBAGENT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    let mut agent = JobAgent::connect_with(target, options).await?;
    if expect_unauthenticated {
        let refused = agent.get_execution(&"0".repeat(32)).await;
        check(
            matches!(refused, Err(ref status) if status.code() == Code::Unauthenticated),
            &format!("want UNAUTHENTICATED, got {refused:?}"),
        )?;
        println!("unauthenticated ok: rust");
        return Ok(());
    }
    let job = "conformance-rust";
    agent
        .register(
            &format!(
                "version: v1\ndeployment: {job}\nservices:\n  {job}:\n    rtype: job\n    \
                 image: {{name: busybox:latest}}\n    command: {{entrypoint: [/bin/echo, hello from rust]}}\n  \
                 {job}-long:\n    rtype: job\n    image: {{name: busybox:latest}}\n    \
                 command: {{entrypoint: [/bin/sleep, '300']}}\n  \
                 {job}-lines:\n    rtype: job\n    image: {{name: busybox:latest}}\n    \
                 command: {{entrypoint: [/bin/sh, -c, {LINES_SCRIPT:?}]}}\n"
            ),
            true,
        )
        .await?;

    // Trigger, watch to the end, read the logs.
    let done = agent.trigger_and_wait(job).await?;
    check(
        done.status == ExecutionStatus::Completed as i32 && done.exit_code == Some(0),
        "completed",
    )?;
    check(
        agent.logs(&done.id, false).await? == ["hello from rust"],
        "logs",
    )?;

    check_log_reads(&mut agent, job).await?;

    // Cancel a long job once it runs.
    let long = agent.trigger(&format!("{job}-long")).await?;
    agent
        .watch_until(&long.id, |e| e.status == ExecutionStatus::Running as i32)
        .await?;
    let cancelled = agent.cancel(&long.id, Duration::from_secs(1)).await?;
    check(
        cancelled.status == ExecutionStatus::Cancelled as i32,
        "cancelled",
    )?;

    // An unknown id is NOT_FOUND.
    let missing = agent.get_execution(&"0".repeat(32)).await;
    check(
        matches!(missing, Err(ref status) if status.code() == Code::NotFound),
        "not found",
    )?;

    // Resume an event stream: after the second event of the run, the third comes next.
    let mut events = agent.watch_events(0, job);
    let mut seen = Vec::new();
    loop {
        if let NodeEvent::Execution(event) = events.next().await? {
            let execution = event.execution.clone().unwrap_or_default();
            if execution.id == done.id {
                seen.push(event.sequence);
                if jobagent_client::is_terminal(execution.status) {
                    break;
                }
            }
        }
    }
    check(seen.len() >= 3, "events of the run")?;
    let mut resumed = agent.watch_events(seen[1], job);
    check(resumed.next().await?.sequence() == seen[2], "resume")?;
    println!("conformance ok: rust");
    Ok(())
}
