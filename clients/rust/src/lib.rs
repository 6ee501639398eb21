//! A client of the jobagent node agent.
//!
//! [`pb`] holds the code generated from `protos/` (messages and the tonic `JobServiceClient`);
//! [`JobAgent`] is the thin typed layer a scheduler uses: trigger and wait, follow logs,
//! watch the node's events with resume.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use jobagent_client::{JobAgent, Options};
//!
//! // The agent's unix socket, or a TCP address (`127.0.0.1:50051`, `http://127.0.0.1:50051`).
//! let options = Options {
//!     token: std::env::var("JOBAGENT_TOKEN").ok(),
//! };
//! let mut agent = JobAgent::connect_with("unix:/run/jobagent/jobagent.sock", options).await?;
//! let execution = agent.trigger_and_wait("backup").await?;
//! # Ok(())
//! # }
//! ```

use std::error::Error;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status, Streaming};

/// Generated from protos/jobagent/v1.
pub mod pb {
    tonic::include_proto!("jobagent.v1");
}

use pb::job_service_client::JobServiceClient;
use pb::watch_events_response::Item;

/// One connection to an agent.
#[derive(Clone)]
pub struct JobAgent {
    inner: JobServiceClient<InterceptedService<Channel, BearerToken>>,
}

/// How to reach the agent.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A bearer token, sent as `authorization: Bearer <token>` on every call (unary and
    /// streaming). The connection is plain text, so a token goes only to a unix socket or a
    /// loopback address: [`JobAgent::connect_with`] refuses any other target.
    pub token: Option<String>,
}

/// The interceptor that adds `authorization: Bearer <token>` to every call (none without a
/// token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The header for `token`; [`ConnectError::InvalidToken`] when it cannot be one.
    pub fn new(token: &str) -> Result<Self, ConnectError> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| ConnectError::InvalidToken)?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Why [`JobAgent::connect_with`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The target is not `unix:/path`, `host:port` or an `http://` URI.
    InvalidTarget(String),
    /// The token has characters a header cannot carry.
    InvalidToken,
    /// A token would go in plain text to a host that is not this one.
    TokenInPlainText(String),
    /// The connection failed.
    Transport(tonic::transport::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidTarget(target) => write!(
                f,
                "invalid target {target:?}: want unix:/path, host:port or http://host:port"
            ),
            Self::InvalidToken => write!(f, "the token cannot be an HTTP header value"),
            Self::TokenInPlainText(target) => write!(
                f,
                "a token goes in plain text only to a unix socket or a loopback address, not to {target}"
            ),
            Self::Transport(error) => write!(f, "cannot connect: {error}"),
        }
    }
}

impl Error for ConnectError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Transport(error) => Some(error),
            _ => None,
        }
    }
}

impl From<tonic::transport::Error> for ConnectError {
    fn from(error: tonic::transport::Error) -> Self {
        Self::Transport(error)
    }
}

/// Where a target leads: a unix socket, or a URI.
enum Target {
    Unix(PathBuf),
    Uri(Uri),
}

impl Target {
    /// `unix:/path` (or `unix:///path`), `http://host:port`, or `host:port`.
    fn parse(target: &str) -> Result<Self, ConnectError> {
        let invalid = || ConnectError::InvalidTarget(target.to_string());
        if let Some(path) = target.strip_prefix("unix:") {
            let path = PathBuf::from(path.strip_prefix("//").unwrap_or(path));
            return if path.is_absolute() {
                Ok(Self::Unix(path))
            } else {
                Err(invalid())
            };
        }
        let uri = if target.contains("://") {
            target.to_string()
        } else {
            format!("http://{target}")
        };
        uri.parse().map(Self::Uri).map_err(|_| invalid())
    }

    /// True for a unix socket or a loopback address: plain text stays on this host.
    fn is_local(&self) -> bool {
        match self {
            Self::Unix(_) => true,
            Self::Uri(uri) => match uri.host() {
                Some("localhost") => true,
                Some(host) => host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()),
                None => false,
            },
        }
    }
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
    /// Connects to `target` without a token: `unix:/path` (the agent's unix socket, gRPC's
    /// naming), `host:port` or `http://host:port`.
    pub async fn connect(target: &str) -> Result<Self, ConnectError> {
        Self::connect_with(target, Options::default()).await
    }

    /// Connects to `target` (as [`JobAgent::connect`]) with `options`.
    pub async fn connect_with(target: &str, options: Options) -> Result<Self, ConnectError> {
        let parsed = Target::parse(target)?;
        let token = match &options.token {
            Some(_) if !parsed.is_local() => {
                return Err(ConnectError::TokenInPlainText(target.to_string()))
            }
            Some(token) => BearerToken::new(token)?,
            None => BearerToken::default(),
        };
        let channel = match parsed {
            Target::Uri(uri) => Endpoint::from(uri).connect().await?,
            // The URI only fills the :authority header; the connector dials the socket.
            Target::Unix(path) => {
                Endpoint::from_static("http://localhost")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                        }
                    }))
                    .await?
            }
        };
        Ok(Self {
            inner: JobServiceClient::with_interceptor(channel, token),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_on_this_host_are_local() {
        for (target, local) in [
            ("unix:/run/jobagent/jobagent.sock", true),
            ("unix:///run/jobagent/jobagent.sock", true),
            ("127.0.0.1:50051", true),
            ("http://127.3.0.1:50051", true),
            ("[::1]:50051", true),
            ("localhost:50051", true),
            ("10.0.0.7:50051", false),
            ("http://agent.example:50051", false),
            ("[2001:db8::1]:50051", false),
        ] {
            let parsed = Target::parse(target).expect(target);
            assert_eq!(parsed.is_local(), local, "{target}");
        }
    }

    #[test]
    fn a_unix_target_names_an_absolute_path() {
        assert!(matches!(
            Target::parse("unix:///run/a.sock"),
            Ok(Target::Unix(path)) if path == PathBuf::from("/run/a.sock")
        ));
        assert!(matches!(
            Target::parse("unix:relative.sock"),
            Err(ConnectError::InvalidTarget(_))
        ));
    }

    #[tokio::test]
    async fn a_token_never_goes_in_plain_text_to_another_host() {
        let options = Options {
            token: Some("0123456789abcdef".to_string()),
        };
        let refused = JobAgent::connect_with("agent.example:50051", options).await;
        assert!(matches!(refused, Err(ConnectError::TokenInPlainText(_))));
    }

    #[test]
    fn the_token_is_a_sensitive_bearer_header() {
        let mut interceptor = BearerToken::new("0123456789abcdef").expect("a valid token");
        let request = interceptor.call(Request::new(())).expect("passes");
        let value = request.metadata().get("authorization").expect("the header");
        assert_eq!(value, "Bearer 0123456789abcdef");
        assert!(value.is_sensitive());
        assert!(matches!(
            BearerToken::new("line\nbreak"),
            Err(ConnectError::InvalidToken)
        ));
    }
}
