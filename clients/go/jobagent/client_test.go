package jobagent

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	pb "jobagent/clients/go/gen/jobagent/v1"
)

func TestIsLocal(t *testing.T) {
	for target, want := range map[string]bool{
		"unix:/run/jobagent/jobagent.sock": true,
		"unix:///run/jobagent.sock":        true,
		"127.0.0.1:50051":                  true,
		"127.1.2.3:50051":                  true,
		"[::1]:50051":                      true,
		"localhost:50051":                  true,
		"dns:///localhost:50051":           true,
		"10.0.0.7:50051":                   false,
		"agent.example:50051":              false,
		"dns:///agent.example:50051":       false,
		"[2001:db8::1]:50051":              false,
	} {
		if got := isLocal(target); got != want {
			t.Errorf("isLocal(%q) = %v, want %v", target, got, want)
		}
	}
}

func TestDialSendsAPlainTextTokenOnlyOnTheHost(t *testing.T) {
	for _, c := range []struct {
		target, token string
		refused       bool
	}{
		{"agent.example:50051", "0123456789abcdef", true},
		{"agent.example:50051", "", false},
		{"127.0.0.1:50051", "0123456789abcdef", false},
		{"unix:/run/jobagent/jobagent.sock", "0123456789abcdef", false},
	} {
		client, err := Dial(c.target, Options{Token: c.token})
		if (err != nil) != c.refused {
			t.Errorf("Dial(%q, token %q): error %v, want refused=%v", c.target, c.token, err, c.refused)
		}
		if client != nil {
			client.Close()
		}
	}
}

func TestTheTokenIsABearerHeader(t *testing.T) {
	header, err := bearerToken{token: "0123456789abcdef"}.GetRequestMetadata(context.Background())
	if err != nil || header["authorization"] != "Bearer 0123456789abcdef" {
		t.Fatalf("got %v, %v", header, err)
	}
}

// batches is an agent whose StreamLogBatches sends the same batches to every caller.
type batches struct {
	pb.UnimplementedJobServiceServer
	sent    []*pb.StreamLogBatchesResponse
	request chan *pb.StreamLogBatchesRequest
}

func (b *batches) StreamLogBatches(request *pb.StreamLogBatchesRequest, stream grpc.ServerStreamingServer[pb.StreamLogBatchesResponse]) error {
	b.request <- request
	for _, batch := range b.sent {
		if err := stream.Send(batch); err != nil {
			return err
		}
	}
	return nil
}

// serve runs agent in memory and returns a client of it.
func serve(t *testing.T, agent pb.JobServiceServer) *Client {
	t.Helper()
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer()
	pb.RegisterJobServiceServer(server, agent)
	go server.Serve(listener)
	t.Cleanup(server.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return listener.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	client := &Client{conn: conn, stub: pb.NewJobServiceClient(conn)}
	t.Cleanup(func() { client.Close() })
	return client
}

var (
	stdout = pb.LogStream_LOG_STREAM_STDOUT
	stderr = pb.LogStream_LOG_STREAM_STDERR
	// A nanosecond time no float64 holds exactly.
	moment = time.Date(2026, 12, 7, 7, 0, 0, 123456789, time.UTC)
)

func TestLogLinesAreTheBatchesColumnsLineByLine(t *testing.T) {
	agent := &batches{request: make(chan *pb.StreamLogBatchesRequest, 1), sent: []*pb.StreamLogBatchesResponse{
		{
			Messages: []string{"one", "two", "half"}, Streams: []pb.LogStream{stdout, stderr, stdout},
			TimesUnixNano: []int64{moment.UnixNano(), moment.UnixNano() + 1, moment.UnixNano() + 2},
			PartialLines:  []uint32{2}, Truncated: true,
		},
		{Messages: []string{"rest"}, Streams: []pb.LogStream{stdout}, TimesUnixNano: []int64{moment.UnixNano() + 3}},
	}}
	client := serve(t, agent)
	since := moment.Add(-time.Hour)
	var got []string
	for line, err := range client.LogLines(context.Background(), "x", LogOptions{Follow: true, TailLines: 5, Stream: stderr, Since: since, Attempt: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s %s partial=%v truncated=%v",
			line.GetTime().AsTime().Format(time.RFC3339Nano), line.GetStream(), line.GetMessage(), line.GetPartial(), line.GetTruncated()))
	}
	want := []string{
		"2026-12-07T07:00:00.123456789Z LOG_STREAM_STDOUT one partial=false truncated=true",
		"2026-12-07T07:00:00.12345679Z LOG_STREAM_STDERR two partial=false truncated=false",
		"2026-12-07T07:00:00.123456791Z LOG_STREAM_STDOUT half partial=true truncated=false",
		"2026-12-07T07:00:00.123456792Z LOG_STREAM_STDOUT rest partial=false truncated=false",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	request := <-agent.request
	if request.GetExecutionId() != "x" || !request.GetFollow() || request.GetTailLines() != 5 ||
		request.GetStream() != stderr || !request.GetSince().AsTime().Equal(since) || request.GetAttempt() != 2 {
		t.Fatalf("the request was %v", request)
	}
}

func TestLogsCallsBackPerLineAndStopsAtTheFirstBreak(t *testing.T) {
	agent := &batches{request: make(chan *pb.StreamLogBatchesRequest, 2), sent: []*pb.StreamLogBatchesResponse{
		{Messages: []string{"a", "b"}, Streams: []pb.LogStream{stdout, stdout}, TimesUnixNano: []int64{1, 2}},
		{Messages: []string{"c"}, Streams: []pb.LogStream{stdout}, TimesUnixNano: []int64{3}},
	}}
	client := serve(t, agent)
	var all []string
	if err := client.Logs(context.Background(), "x", false, func(line *pb.LogLine) { all = append(all, line.GetMessage()) }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(all, "") != "abc" {
		t.Fatalf("got %q", all)
	}
	if request := <-agent.request; request.GetFollow() || request.GetSince() != nil {
		t.Fatalf("the request was %v", request)
	}
	var first []string
	for batch, err := range client.LogBatches(context.Background(), "x", LogOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		first = batch.GetMessages()
		break
	}
	if strings.Join(first, "") != "ab" {
		t.Fatalf("got %q", first)
	}
}

func TestABatchWhoseColumnsDisagreeIsAnError(t *testing.T) {
	for _, batch := range []*pb.StreamLogBatchesResponse{
		{Messages: []string{"a", "b"}, Streams: []pb.LogStream{stdout}, TimesUnixNano: []int64{1, 2}},
		{Messages: []string{"a"}, Streams: []pb.LogStream{stdout}, TimesUnixNano: []int64{1}, PartialLines: []uint32{1}},
	} {
		agent := &batches{request: make(chan *pb.StreamLogBatchesRequest, 1), sent: []*pb.StreamLogBatchesResponse{batch}}
		err := serve(t, agent).Logs(context.Background(), "x", false, func(*pb.LogLine) { t.Error("a line of a bad batch") })
		if err == nil || !strings.Contains(err.Error(), "log batch") {
			t.Errorf("%v: got error %v", batch, err)
		}
	}
}

func TestAnAgentErrorEndsTheRead(t *testing.T) {
	client := serve(t, &pb.UnimplementedJobServiceServer{})
	var errs []error
	for batch, err := range client.LogBatches(context.Background(), "x", LogOptions{}) {
		if batch != nil {
			t.Fatalf("got a batch %v", batch)
		}
		errs = append(errs, err)
	}
	if len(errs) != 1 || status.Code(errs[0]) != codes.Unimplemented {
		t.Fatalf("got %v", errs)
	}
}
