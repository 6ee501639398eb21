// Command watchload holds WatchEvents streams on an agent and reports, for every event,
// the delay from the time the agent recorded it to its arrival (bench P7). A Go client,
// so that the watching side takes little of the CPU it shares with the agent:
//
//	watchload -target 127.0.0.1:50051 -streams 1000 -conns 4 -since 12 -expected 40
//
// It prints "ready" once every stream is established, then, when every stream has seen
// `expected` events, one JSON array of the delays in milliseconds.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "jobagent/clients/go/gen/jobagent/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "the agent's address")
	streams := flag.Int("streams", 1000, "how many WatchEvents streams to hold")
	conns := flag.Int("conns", 4, "how many connections to spread them over")
	since := flag.Uint64("since", 0, "watch after this sequence")
	expected := flag.Int("expected", 40, "events each stream waits for")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	stubs := make([]pb.JobServiceClient, *conns)
	for i := range stubs {
		conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fail(err)
		}
		defer conn.Close()
		stubs[i] = pb.NewJobServiceClient(conn)
	}

	var established, finished sync.WaitGroup
	var mu sync.Mutex
	delays := make([]float64, 0, *streams**expected)
	established.Add(*streams)
	finished.Add(*streams)
	for i := 0; i < *streams; i++ {
		go func(stub pb.JobServiceClient) {
			defer finished.Done()
			stream, err := stub.WatchEvents(ctx, &pb.WatchEventsRequest{SinceSequence: *since})
			if err != nil {
				fail(err)
			}
			// The agent sends its headers as soon as the watch is in place.
			if _, err := stream.Header(); err != nil {
				fail(err)
			}
			established.Done()
			mine := make([]float64, 0, *expected)
			for len(mine) < *expected {
				item, err := stream.Recv()
				if err != nil {
					fail(err)
				}
				if event := item.GetEvent(); event != nil {
					arrived := time.Now()
					mine = append(mine, float64(arrived.Sub(event.GetTime().AsTime()).Microseconds())/1000)
				}
			}
			mu.Lock()
			delays = append(delays, mine...)
			mu.Unlock()
		}(stubs[i%*conns])
	}
	established.Wait()
	fmt.Println("ready")
	finished.Wait()
	out, err := json.Marshal(delays)
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "watchload: %v\n", err)
	os.Exit(1)
}
