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

use jobagent_client::pb::ExecutionStatus;
use jobagent_client::{JobAgent, NodeEvent, Options};
use tonic::Code;

type Failure = Box<dyn std::error::Error>;

fn check(condition: bool, what: &str) -> Result<(), Failure> {
    if condition {
        Ok(())
    } else {
        Err(format!("conformance failed: {what}").into())
    }
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
                 command: {{entrypoint: [/bin/sleep, '300']}}\n"
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
