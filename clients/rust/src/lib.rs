//! A client of the jobagent node agent.
//!
//! [`pb`] holds the code generated from `protos/` (messages and the tonic `JobServiceClient`);
//! [`JobAgent`] is the thin typed layer a scheduler uses: trigger and wait, follow logs,
//! watch the node's events with resume.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// Generated from protos/jobagent/v1.
pub mod pb {
    tonic::include_proto!("jobagent.v1");
}

use pb::job_service_client::JobServiceClient;
use pb::watch_events_response::Item;

/// One connection to an agent.
#[derive(Clone)]
pub struct JobAgent {
    inner: JobServiceClient<Channel>,
}

/// An event on the node's stream: of an execution or of a job.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    /// A change of one execution.
    Execution(pb::ExecutionEvent),
    /// A change of a job (registered, suspended, a skipped or missed run).
    Job(pb::JobEvent),
}

impl NodeEvent {
    /// The node-wide sequence number.
    pub fn sequence(&self) -> u64 {
        match self {
            NodeEvent::Execution(event) => event.sequence,
            NodeEvent::Job(event) => event.sequence,
        }
    }
}

/// True for the statuses an execution never leaves.
pub fn is_terminal(status: i32) -> bool {
    [
        pb::ExecutionStatus::Completed as i32,
        pb::ExecutionStatus::Failed as i32,
        pb::ExecutionStatus::Cancelled as i32,
    ]
    .contains(&status)
}

impl JobAgent {
    /// Connects to `target` (`http://127.0.0.1:50051`).
    pub async fn connect(target: &str) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(target.to_string())?.connect().await?;
        Ok(Self {
            inner: JobServiceClient::new(channel),
        })
    }

    /// Registers the jobs of a deployment document (replacing changed ones if `replace`).
    pub async fn register(
        &mut self,
        spec_yaml: &str,
        replace: bool,
    ) -> Result<Vec<pb::Job>, Status> {
        let request = pb::RegisterJobRequest {
            source: Some(pb::register_job_request::Source::SpecYaml(
                spec_yaml.to_string(),
            )),
            replace,
        };
        Ok(self.inner.register_job(request).await?.into_inner().jobs)
    }

    /// Starts an execution of a job.
    pub async fn trigger(&mut self, job_name: &str) -> Result<pb::Execution, Status> {
        let request = pb::TriggerJobRequest {
            job_name: job_name.to_string(),
            ..Default::default()
        };
        Ok(self.inner.trigger_job(request).await?.into_inner())
    }

    /// One execution.
    pub async fn get_execution(&mut self, id: &str) -> Result<pb::Execution, Status> {
        let request = pb::GetExecutionRequest { id: id.to_string() };
        Ok(self.inner.get_execution(request).await?.into_inner())
    }

    /// Follows the execution until `done` says so (or it ends); returns it as it was then.
    pub async fn watch_until(
        &mut self,
        id: &str,
        done: impl Fn(&pb::Execution) -> bool,
    ) -> Result<pb::Execution, Status> {
        let request = pb::WatchExecutionRequest { id: id.to_string() };
        let mut stream = self.inner.watch_execution(request).await?.into_inner();
        let mut last = None;
        while let Some(event) = stream.message().await? {
            if let Some(execution) = event.execution {
                if done(&execution) || is_terminal(execution.status) {
                    return Ok(execution);
                }
                last = Some(execution);
            }
        }
        last.ok_or_else(|| Status::internal("the watch ended without an event"))
    }

    /// Waits for the execution to end and returns it.
    pub async fn wait(&mut self, id: &str) -> Result<pb::Execution, Status> {
        self.watch_until(id, |_| false).await
    }

    /// Triggers a job and waits for the execution to end.
    pub async fn trigger_and_wait(&mut self, job_name: &str) -> Result<pb::Execution, Status> {
        let execution = self.trigger(job_name).await?;
        self.wait(&execution.id).await
    }

    /// The execution's output as it comes; with `follow`, until the execution ends.
    pub async fn follow_logs(
        &mut self,
        id: &str,
        follow: bool,
    ) -> Result<Streaming<pb::LogLine>, Status> {
        let request = pb::StreamLogsRequest {
            execution_id: id.to_string(),
            follow,
            ..Default::default()
        };
        Ok(self.inner.stream_logs(request).await?.into_inner())
    }

    /// The execution's output lines (all of them, once it ended, with `follow`).
    pub async fn logs(&mut self, id: &str, follow: bool) -> Result<Vec<String>, Status> {
        let mut stream = self.follow_logs(id, follow).await?;
        let mut lines = Vec::new();
        while let Some(line) = stream.message().await? {
            lines.push(line.message);
        }
        Ok(lines)
    }

    /// Cancels an execution (stop signal, `grace`, then SIGKILL); returns it once terminal.
    pub async fn cancel(&mut self, id: &str, grace: Duration) -> Result<pb::Execution, Status> {
        let request = pb::CancelExecutionRequest {
            id: id.to_string(),
            grace_period: Some(prost_types::Duration {
                seconds: grace.as_secs() as i64,
                nanos: grace.subsec_nanos() as i32,
            }),
            ..Default::default()
        };
        Ok(self.inner.cancel_execution(request).await?.into_inner())
    }

    /// Follows the node's events after `since` (of one job when `job_name` is not empty).
    pub fn watch_events(&self, since: u64, job_name: &str) -> EventWatcher {
        EventWatcher {
            client: self.clone(),
            job_name: job_name.to_string(),
            last: since,
            stream: None,
        }
    }
}

/// The node's event stream, resumed from the last sequence seen when the stream breaks
/// (the agent restarted, or the watcher fell behind).
pub struct EventWatcher {
    client: JobAgent,
    job_name: String,
    last: u64,
    stream: Option<Streaming<pb::WatchEventsResponse>>,
}

impl EventWatcher {
    /// The sequence of the last event handed out.
    pub fn last_sequence(&self) -> u64 {
        self.last
    }

    /// The next event (bookmarks are skipped); OUT_OF_RANGE means re-list, then watch.
    pub async fn next(&mut self) -> Result<NodeEvent, Status> {
        loop {
            if self.stream.is_none() {
                let request = pb::WatchEventsRequest {
                    since_sequence: self.last,
                    job_name: self.job_name.clone(),
                    ..Default::default()
                };
                self.stream = Some(self.client.inner.watch_events(request).await?.into_inner());
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(response)) => {
                    let event = match response.item {
                        Some(Item::Event(event)) => NodeEvent::Execution(event),
                        Some(Item::JobEvent(event)) => NodeEvent::Job(event),
                        _ => continue,
                    };
                    self.last = event.sequence();
                    return Ok(event);
                }
                Ok(None) => self.stream = None,
                Err(status)
                    if matches!(status.code(), Code::Unavailable | Code::ResourceExhausted) =>
                {
                    self.stream = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => return Err(status),
            }
        }
    }
}
