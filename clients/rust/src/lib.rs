//! A client of the jobagent node agent.
//!
//! [`pb`] holds the code generated from `protos/` (messages and the tonic `JobServiceClient`);
//! [`JobAgent`] is the thin typed layer a scheduler uses: trigger and wait, follow logs
//! (line by line with [`LogLines`], or many lines at a time with [`LogBatches`]), watch the
//! node's events with resume.
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
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio_stream::{Stream, StreamExt};
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

/// Which output a log read returns; the default reads all of the latest attempt's output as
/// it is now.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Keep the read open and return new lines until the attempt ends.
    pub follow: bool,
    /// Start with the last N lines (0: from the start).
    pub tail_lines: i32,
    /// Only stdout or stderr (both when unspecified).
    pub stream: pb::LogStream,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
    /// The attempt whose output to read (1 for the first); the latest when 0.
    pub attempt: u32,
}

impl pb::StreamLogBatchesResponse {
    /// The number of lines in the batch.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when the batch has no line.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The lines as the [`pb::LogLine`] values StreamLogs sends: partial on the fragments,
    /// truncated on the first line of a truncated batch.
    pub fn lines(&self) -> impl Iterator<Item = pb::LogLine> + '_ {
        let partial = self.partial_flags();
        self.messages
            .iter()
            .enumerate()
            .map(move |(index, message)| self.line(index, message.clone(), partial[index]))
    }

    /// [`lines`](Self::lines), moving the messages out of the batch.
    pub fn into_lines(mut self) -> Vec<pb::LogLine> {
        let partial = self.partial_flags();
        std::mem::take(&mut self.messages)
            .into_iter()
            .enumerate()
            .map(|(index, message)| self.line(index, message, partial[index]))
            .collect()
    }

    /// For each line, whether it is a fragment.
    fn partial_flags(&self) -> Vec<bool> {
        let mut partial = vec![false; self.messages.len()];
        for &index in &self.partial_lines {
            if let Some(flag) = partial.get_mut(index as usize) {
                *flag = true;
            }
        }
        partial
    }

    /// The line at `index`, whose text is `message`.
    fn line(&self, index: usize, message: String, partial: bool) -> pb::LogLine {
        const NANOS: i64 = 1_000_000_000;
        let time = self
            .times_unix_nano
            .get(index)
            .map(|nanos| prost_types::Timestamp {
                seconds: nanos.div_euclid(NANOS),
                nanos: nanos.rem_euclid(NANOS) as i32,
            });
        pb::LogLine {
            time,
            stream: self.streams.get(index).copied().unwrap_or_default(),
            message,
            partial,
            truncated: self.truncated && index == 0,
        }
    }

    /// The batch itself, or an error when its columns do not describe the same lines.
    fn checked(self) -> Result<Self, Status> {
        let lines = self.messages.len();
        if self.times_unix_nano.len() != lines || self.streams.len() != lines {
            return Err(Status::internal(format!(
                "a log batch of {lines} messages has {} times and {} streams",
                self.times_unix_nano.len(),
                self.streams.len()
            )));
        }
        if let Some(index) = self.partial_lines.iter().find(|&&i| i as usize >= lines) {
            return Err(Status::internal(format!(
                "a log batch of {lines} messages marks line {index} partial"
            )));
        }
        Ok(self)
    }
}

/// An execution's output, many lines at a time (StreamLogBatches), column by column: for
/// readers of large logs. A [`Stream`] of batches; a batch whose columns disagree in length
/// is an error. Dropping it ends the call.
pub struct LogBatches {
    inner: Streaming<pb::StreamLogBatchesResponse>,
}

impl LogBatches {
    /// The next batch; `None` at the end of the output.
    pub async fn message(&mut self) -> Result<Option<pb::StreamLogBatchesResponse>, Status> {
        self.next().await.transpose()
    }
}

impl Stream for LogBatches {
    type Item = Result<pb::StreamLogBatchesResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|item| item.map(|batch| batch.and_then(pb::StreamLogBatchesResponse::checked)))
    }
}

/// An execution's output one line at a time (read in batches): a [`Stream`] of
/// [`pb::LogLine`]. Dropping it ends the call.
pub struct LogLines {
    batches: LogBatches,
    pending: std::vec::IntoIter<pb::LogLine>,
}

impl LogLines {
    /// The next line; `None` at the end of the output.
    pub async fn message(&mut self) -> Result<Option<pb::LogLine>, Status> {
        self.next().await.transpose()
    }
}

impl Stream for LogLines {
    type Item = Result<pb::LogLine, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(line) = self.pending.next() {
                return Poll::Ready(Some(Ok(line)));
            }
            match ready!(Pin::new(&mut self.batches).poll_next(cx)) {
                Some(Ok(batch)) => self.pending = batch.into_lines().into_iter(),
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                None => return Poll::Ready(None),
            }
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

    /// The execution's output, many lines at a time (see [`LogBatches`]).
    pub async fn log_batches(
        &mut self,
        id: &str,
        options: &LogOptions,
    ) -> Result<LogBatches, Status> {
        let request = pb::StreamLogBatchesRequest {
            execution_id: id.to_string(),
            follow: options.follow,
            tail_lines: options.tail_lines,
            stream: options.stream as i32,
            since: options.since.map(prost_types::Timestamp::from),
            attempt: options.attempt,
        };
        let inner = self.inner.stream_log_batches(request).await?.into_inner();
        Ok(LogBatches { inner })
    }

    /// The execution's output one line at a time (see [`LogLines`]).
    pub async fn log_lines(&mut self, id: &str, options: &LogOptions) -> Result<LogLines, Status> {
        Ok(LogLines {
            batches: self.log_batches(id, options).await?,
            pending: Vec::new().into_iter(),
        })
    }

    /// The execution's output lines as they come; with `follow`, until the execution ends.
    pub async fn follow_logs(&mut self, id: &str, follow: bool) -> Result<LogLines, Status> {
        let options = LogOptions {
            follow,
            ..Default::default()
        };
        self.log_lines(id, &options).await
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

    /// 2026-12-07T07:00:00.123456789Z: more digits than a double holds.
    const MOMENT: i64 = 1_796_626_800_123_456_789;

    fn batch() -> pb::StreamLogBatchesResponse {
        let (stdout, stderr) = (pb::LogStream::Stdout as i32, pb::LogStream::Stderr as i32);
        pb::StreamLogBatchesResponse {
            messages: vec!["one".into(), "two".into(), "half".into()],
            times_unix_nano: vec![MOMENT, MOMENT + 1, -1],
            streams: vec![stdout, stderr, stdout],
            partial_lines: vec![2],
            truncated: true,
        }
    }

    #[test]
    fn a_batch_is_the_log_lines_column_by_column() {
        let (stdout, stderr) = (pb::LogStream::Stdout as i32, pb::LogStream::Stderr as i32);
        let time = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let want = vec![
            pb::LogLine {
                time: time(1_796_626_800, 123_456_789),
                stream: stdout,
                message: "one".into(),
                partial: false,
                truncated: true,
            },
            pb::LogLine {
                time: time(1_796_626_800, 123_456_790),
                stream: stderr,
                message: "two".into(),
                partial: false,
                truncated: false,
            },
            pb::LogLine {
                time: time(-1, 999_999_999),
                stream: stdout,
                message: "half".into(),
                partial: true,
                truncated: false,
            },
        ];
        assert_eq!(batch().lines().collect::<Vec<_>>(), want);
        assert_eq!(batch().into_lines(), want);
        assert_eq!(batch().len(), 3);
        assert!(pb::StreamLogBatchesResponse::default().is_empty());
    }

    #[test]
    fn a_batch_whose_columns_disagree_is_an_error() {
        assert!(batch().checked().is_ok());
        let mut short = batch();
        short.streams.pop();
        let mut beyond = batch();
        beyond.partial_lines.push(3);
        for bad in [short, beyond] {
            let status = bad.checked().expect_err("a bad batch");
            assert_eq!(status.code(), Code::Internal);
            assert!(status.message().contains("log batch"), "{status}");
        }
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
