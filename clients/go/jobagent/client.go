// Package jobagent is a client of the jobagent node agent: a thin typed layer over the code
// generated from protos/ (package jobagentv1): trigger and wait, follow logs, watch the
// node's events with resume.
package jobagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "jobagent/clients/go/gen/jobagent/v1"
)

// Client talks to one agent.
type Client struct {
	conn *grpc.ClientConn
	stub pb.JobServiceClient
}

// Options say how to reach the agent.
type Options struct {
	// TLS secures the connection (server-authenticated, or mutual with a client
	// certificate); plain text when nil.
	TLS credentials.TransportCredentials
	// Token is a bearer token, sent as `authorization: Bearer <token>` on every call
	// (unary and streaming, through Stub too); none when empty. Without TLS it is sent
	// only to a unix socket or a loopback address: Dial refuses any other target.
	Token string
}

// Dial connects to target: host:port, or unix:/path for the agent's unix socket (gRPC's
// naming, as dns:///host:port and unix:///path). It does not wait for the connection; the
// first call makes it.
func Dial(target string, options Options) (*Client, error) {
	transport := options.TLS
	if transport == nil {
		transport = insecure.NewCredentials()
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(transport)}
	if options.Token != "" {
		local := isLocal(target)
		if options.TLS == nil && !local {
			return nil, fmt.Errorf("jobagent: a token goes in plain text only to a unix socket or a loopback address; use TLS to reach %s", target)
		}
		dial = append(dial, grpc.WithPerRPCCredentials(bearerToken{token: options.Token, local: local}))
	}
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, stub: pb.NewJobServiceClient(conn)}, nil
}

// bearerToken is the credential of every call: `authorization: Bearer <token>`.
type bearerToken struct {
	token string
	// local is a unix socket or loopback target, where plain text stays on the host.
	local bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity lets gRPC refuse to send the token over plain text, except to
// a target on this host.
func (b bearerToken) RequireTransportSecurity() bool { return !b.local }

// isLocal reports whether target names a unix socket or a loopback address.
func isLocal(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	for _, scheme := range []string{"dns:///", "passthrough:///"} {
		target = strings.TrimPrefix(target, scheme)
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Stub is the generated client, for calls the wrapper does not cover.
func (c *Client) Stub() pb.JobServiceClient { return c.stub }

// Register registers the jobs of a deployment document.
func (c *Client) Register(ctx context.Context, specYAML string, replace bool) ([]*pb.Job, error) {
	response, err := c.stub.RegisterJob(ctx, &pb.RegisterJobRequest{
		Source: &pb.RegisterJobRequest_SpecYaml{SpecYaml: specYAML}, Replace: replace,
	})
	if err != nil {
		return nil, err
	}
	return response.GetJobs(), nil
}

// Trigger starts an execution of a job.
func (c *Client) Trigger(ctx context.Context, jobName string) (*pb.Execution, error) {
	return c.stub.TriggerJob(ctx, &pb.TriggerJobRequest{JobName: jobName})
}

// GetExecution returns one execution.
func (c *Client) GetExecution(ctx context.Context, id string) (*pb.Execution, error) {
	return c.stub.GetExecution(ctx, &pb.GetExecutionRequest{Id: id})
}

// Terminal reports whether an execution's status is final.
func Terminal(status pb.ExecutionStatus) bool {
	return status == pb.ExecutionStatus_EXECUTION_STATUS_COMPLETED ||
		status == pb.ExecutionStatus_EXECUTION_STATUS_FAILED ||
		status == pb.ExecutionStatus_EXECUTION_STATUS_CANCELLED
}

// WatchUntil follows an execution until done says so or it ends, and returns it then.
func (c *Client) WatchUntil(ctx context.Context, id string, done func(*pb.Execution) bool) (*pb.Execution, error) {
	stream, err := c.stub.WatchExecution(ctx, &pb.WatchExecutionRequest{Id: id})
	if err != nil {
		return nil, err
	}
	var last *pb.Execution
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if last == nil {
				return nil, errors.New("the watch ended without an event")
			}
			return last, nil
		}
		if err != nil {
			return nil, err
		}
		last = event.GetExecution()
		if done(last) || Terminal(last.GetStatus()) {
			return last, nil
		}
	}
}

// Wait waits for an execution to end.
func (c *Client) Wait(ctx context.Context, id string) (*pb.Execution, error) {
	return c.WatchUntil(ctx, id, func(*pb.Execution) bool { return false })
}

// TriggerAndWait starts an execution and waits for its end.
func (c *Client) TriggerAndWait(ctx context.Context, jobName string) (*pb.Execution, error) {
	execution, err := c.Trigger(ctx, jobName)
	if err != nil {
		return nil, err
	}
	return c.Wait(ctx, execution.GetId())
}

// LogOptions choose which output a log read returns; the zero value reads all of the latest
// attempt's output as it is now.
type LogOptions struct {
	// Follow keeps the read open and returns new lines until the attempt ends.
	Follow bool
	// TailLines starts with the last N lines (0: from the start).
	TailLines int32
	// Stream keeps only stdout or stderr (both when unspecified).
	Stream pb.LogStream
	// Since keeps only lines written at or after this time (all when zero).
	Since time.Time
	// Attempt is the attempt whose output to read (1 for the first); the latest when 0.
	Attempt uint32
}

// LogBatches yields the execution's output many lines at a time (StreamLogBatches), column
// by column, for readers of large logs; BatchLines turns a batch into LogLine values. A
// batch whose columns disagree in length is an error. Breaking out of the loop ends the call.
func (c *Client) LogBatches(ctx context.Context, id string, options LogOptions) iter.Seq2[*pb.StreamLogBatchesResponse, error] {
	return func(yield func(*pb.StreamLogBatchesResponse, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		request := &pb.StreamLogBatchesRequest{
			ExecutionId: id, Follow: options.Follow, TailLines: options.TailLines,
			Stream: options.Stream, Attempt: options.Attempt,
		}
		if !options.Since.IsZero() {
			request.Since = timestamppb.New(options.Since)
		}
		stream, err := c.stub.StreamLogBatches(ctx, request)
		if err != nil {
			yield(nil, err)
			return
		}
		for {
			batch, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err == nil {
				err = checkBatch(batch)
			}
			if err != nil {
				yield(nil, err)
				return
			}
			if !yield(batch, nil) {
				return
			}
		}
	}
}

// checkBatch reports a batch whose columns do not describe the same lines.
func checkBatch(batch *pb.StreamLogBatchesResponse) error {
	lines := len(batch.GetMessages())
	if len(batch.GetTimesUnixNano()) != lines || len(batch.GetStreams()) != lines {
		return fmt.Errorf("jobagent: a log batch of %d messages has %d times and %d streams",
			lines, len(batch.GetTimesUnixNano()), len(batch.GetStreams()))
	}
	for _, index := range batch.GetPartialLines() {
		if int(index) >= lines {
			return fmt.Errorf("jobagent: a log batch of %d messages marks line %d partial", lines, index)
		}
	}
	return nil
}

// BatchLines yields the lines of a batch as LogLine values, as StreamLogs sends them:
// partial on the fragments, truncated on the first line of a truncated batch.
func BatchLines(batch *pb.StreamLogBatchesResponse) iter.Seq[*pb.LogLine] {
	return func(yield func(*pb.LogLine) bool) {
		messages := batch.GetMessages()
		partial := make([]bool, len(messages))
		for _, index := range batch.GetPartialLines() {
			if int(index) < len(partial) {
				partial[index] = true
			}
		}
		times, streams := batch.GetTimesUnixNano(), batch.GetStreams()
		for index, message := range messages {
			line := &pb.LogLine{
				Message:   message,
				Partial:   partial[index],
				Truncated: batch.GetTruncated() && index == 0,
			}
			if index < len(times) {
				line.Time = timestamppb.New(time.Unix(0, times[index]))
			}
			if index < len(streams) {
				line.Stream = streams[index]
			}
			if !yield(line) {
				return
			}
		}
	}
}

// LogLines yields the execution's output one line at a time (read in batches). Breaking out
// of the loop ends the call.
func (c *Client) LogLines(ctx context.Context, id string, options LogOptions) iter.Seq2[*pb.LogLine, error] {
	return func(yield func(*pb.LogLine, error) bool) {
		for batch, err := range c.LogBatches(ctx, id, options) {
			if err != nil {
				yield(nil, err)
				return
			}
			for line := range BatchLines(batch) {
				if !yield(line, nil) {
					return
				}
			}
		}
	}
}

// Logs calls line for each output line; with follow, until the execution ends.
func (c *Client) Logs(ctx context.Context, id string, follow bool, line func(*pb.LogLine)) error {
	for item, err := range c.LogLines(ctx, id, LogOptions{Follow: follow}) {
		if err != nil {
			return err
		}
		line(item)
	}
	return nil
}

// Cancel stops an execution (stop signal, grace, then SIGKILL) and returns it once final.
func (c *Client) Cancel(ctx context.Context, id string, grace time.Duration) (*pb.Execution, error) {
	return c.stub.CancelExecution(ctx, &pb.CancelExecutionRequest{
		Id: id, GracePeriod: durationpb.New(grace),
	})
}

// Event is one event of the node's stream: Execution or Job is set.
type Event struct {
	Sequence  uint64
	Execution *pb.ExecutionEvent
	Job       *pb.JobEvent
}

// EventWatcher follows the node's events, resuming after the last one it handed out when
// the stream breaks (the agent restarted, or the watcher fell behind).
type EventWatcher struct {
	client  *Client
	jobName string
	last    uint64
	stream  grpc.ServerStreamingClient[pb.WatchEventsResponse]
}

// WatchEvents follows the node's events after since (of one job when jobName is set).
func (c *Client) WatchEvents(since uint64, jobName string) *EventWatcher {
	return &EventWatcher{client: c, jobName: jobName, last: since}
}

// LastSequence is the sequence of the last event handed out.
func (w *EventWatcher) LastSequence() uint64 { return w.last }

// Next returns the next event (bookmarks are skipped); OUT_OF_RANGE means re-list, then watch.
func (w *EventWatcher) Next(ctx context.Context) (Event, error) {
	for {
		if w.stream == nil {
			stream, err := w.client.stub.WatchEvents(ctx, &pb.WatchEventsRequest{
				SinceSequence: w.last, JobName: w.jobName,
			})
			if err != nil {
				return Event{}, err
			}
			w.stream = stream
		}
		response, err := w.stream.Recv()
		if err != nil {
			w.stream = nil
			code := status.Code(err)
			if errors.Is(err, io.EOF) || code == codes.Unavailable || code == codes.ResourceExhausted {
				select {
				case <-ctx.Done():
					return Event{}, ctx.Err()
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
			return Event{}, err
		}
		switch item := response.GetItem().(type) {
		case *pb.WatchEventsResponse_Event:
			w.last = item.Event.GetSequence()
			return Event{Sequence: w.last, Execution: item.Event}, nil
		case *pb.WatchEventsResponse_JobEvent:
			w.last = item.JobEvent.GetSequence()
			return Event{Sequence: w.last, Job: item.JobEvent}, nil
		}
	}
}
