// Command conformance runs the scenario every client passes against a live agent
// (clients/CONFORMANCE.md):
//
//	JOBAGENT_TOKEN=<token> conformance 127.0.0.1:50051
//	JOBAGENT_TOKEN=<token> conformance unix:/run/jobagent/jobagent.sock
//	conformance --expect-unauthenticated 127.0.0.1:50051
//
// With --expect-unauthenticated it only checks that its first call is refused with
// UNAUTHENTICATED (run it without the token the agent requires).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "jobagent/clients/go/gen/jobagent/v1"
	"jobagent/clients/go/jobagent"
)

const job = "conformance-go"

func check(condition bool, what string) {
	if !condition {
		fmt.Fprintf(os.Stderr, "conformance failed: %s\n", what)
		os.Exit(1)
	}
}

func fail(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "conformance failed: %v\n", err)
		os.Exit(1)
	}
}

func must[T any](value T, err error) T {
	fail(err)
	return value
}

// linesScript writes both streams and ends with a fragment (no newline).
const linesScript = "echo one; echo two >&2; echo three; echo four >&2; printf tail"

// line is what the scenario compares of a log line.
type line struct {
	nanos              int64
	stream             pb.LogStream
	message            string
	partial, truncated bool
}

func messages(lines []line, stream pb.LogStream) []string {
	var out []string
	for _, l := range lines {
		if stream == pb.LogStream_LOG_STREAM_UNSPECIFIED || l.stream == stream {
			out = append(out, l.message)
		}
	}
	return out
}

// checkLogReads reads the log of a job that writes both streams and a fragment line by line
// and batch by batch (the lines made here from the columns): the same lines, in order.
func checkLogReads(ctx context.Context, client *jobagent.Client) {
	done := must(client.TriggerAndWait(ctx, job+"-lines"))
	check(done.GetStatus() == pb.ExecutionStatus_EXECUTION_STATUS_COMPLETED, "lines completed")
	var byLine, byBatch []line
	fail(client.Logs(ctx, done.GetId(), false, func(l *pb.LogLine) {
		byLine = append(byLine, line{l.GetTime().AsTime().UnixNano(), l.GetStream(), l.GetMessage(), l.GetPartial(), l.GetTruncated()})
	}))
	for batch, err := range client.LogBatches(ctx, done.GetId(), jobagent.LogOptions{}) {
		fail(err)
		partial := map[int]bool{}
		for _, index := range batch.GetPartialLines() {
			partial[int(index)] = true
		}
		for index, message := range batch.GetMessages() {
			byBatch = append(byBatch, line{batch.GetTimesUnixNano()[index], batch.GetStreams()[index], message,
				partial[index], batch.GetTruncated() && index == 0})
		}
	}
	check(slices.Equal(byLine, byBatch), fmt.Sprintf("line and batch reads differ: %v, %v", byLine, byBatch))
	check(slices.Equal(messages(byLine, pb.LogStream_LOG_STREAM_STDOUT), []string{"one", "three", "tail"}) &&
		slices.Equal(messages(byLine, pb.LogStream_LOG_STREAM_STDERR), []string{"two", "four"}),
		fmt.Sprintf("lines of each stream: %v", byLine))
	for _, l := range byLine {
		check(l.partial == (l.message == "tail") && !l.truncated, fmt.Sprintf("partial only on the fragment: %v", byLine))
	}
	var tail []string
	for batch, err := range client.LogBatches(ctx, done.GetId(), jobagent.LogOptions{TailLines: 2}) {
		fail(err)
		tail = append(tail, batch.GetMessages()...)
	}
	all := messages(byLine, pb.LogStream_LOG_STREAM_UNSPECIFIED)
	check(slices.Equal(tail, all[len(all)-2:]), fmt.Sprintf("tail 2: %v of %v", tail, all))
}

func main() {
	expectUnauthenticated := flag.Bool("expect-unauthenticated", false,
		"only check that the first call is refused with UNAUTHENTICATED")
	flag.Parse()
	target := "127.0.0.1:50051"
	if flag.NArg() > 0 {
		target = flag.Arg(0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := must(jobagent.Dial(target, jobagent.Options{Token: os.Getenv("JOBAGENT_TOKEN")}))
	defer client.Close()
	if *expectUnauthenticated {
		_, err := client.GetExecution(ctx, strings.Repeat("0", 32))
		if status.Code(err) != codes.Unauthenticated {
			fail(errors.Join(errors.New("want UNAUTHENTICATED"), err))
		}
		fmt.Println("unauthenticated ok: go")
		return
	}
	spec := fmt.Sprintf("version: v1\ndeployment: %[1]s\nservices:\n"+
		"  %[1]s:\n    rtype: job\n    image: {name: busybox:latest}\n"+
		"    command: {entrypoint: [/bin/echo, hello from go]}\n"+
		"  %[1]s-long:\n    rtype: job\n    image: {name: busybox:latest}\n"+
		"    command: {entrypoint: [/bin/sleep, '300']}\n"+
		"  %[1]s-lines:\n    rtype: job\n    image: {name: busybox:latest}\n"+
		"    command: {entrypoint: [/bin/sh, -c, %[2]q]}\n", job, linesScript)
	must(client.Register(ctx, spec, true))

	// Trigger, watch to the end, read the logs.
	done := must(client.TriggerAndWait(ctx, job))
	check(done.GetStatus() == pb.ExecutionStatus_EXECUTION_STATUS_COMPLETED && done.GetExitCode() == 0, "completed")
	var lines []string
	fail(client.Logs(ctx, done.GetId(), false, func(line *pb.LogLine) { lines = append(lines, line.GetMessage()) }))
	check(strings.Join(lines, "\n") == "hello from go", "logs")

	checkLogReads(ctx, client)

	// Cancel a long job once it runs.
	long := must(client.Trigger(ctx, job+"-long"))
	must(client.WatchUntil(ctx, long.GetId(), func(e *pb.Execution) bool {
		return e.GetStatus() == pb.ExecutionStatus_EXECUTION_STATUS_RUNNING
	}))
	cancelled := must(client.Cancel(ctx, long.GetId(), time.Second))
	check(cancelled.GetStatus() == pb.ExecutionStatus_EXECUTION_STATUS_CANCELLED, "cancelled")

	// An unknown id is NOT_FOUND.
	_, err := client.GetExecution(ctx, strings.Repeat("0", 32))
	check(status.Code(err) == codes.NotFound, "not found")

	// Resume an event stream: after the second event of the run, the third comes next.
	events := client.WatchEvents(0, job)
	var seen []uint64
	for {
		event := must(events.Next(ctx))
		if event.Execution != nil && event.Execution.GetExecution().GetId() == done.GetId() {
			seen = append(seen, event.Sequence)
			if jobagent.Terminal(event.Execution.GetExecution().GetStatus()) {
				break
			}
		}
	}
	check(len(seen) >= 3, "events of the run")
	resumed := client.WatchEvents(seen[1], job)
	check(must(resumed.Next(ctx)).Sequence == seen[2], "resume")
	fmt.Println("conformance ok: go")
}
