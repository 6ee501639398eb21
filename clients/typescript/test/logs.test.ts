/** The log reads against an agent in this process that answers StreamLogBatches only. */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Server, ServerCredentials, ServerWritableStream, UntypedServiceImplementation } from "@grpc/grpc-js";

import { JobAgent, batchLines, dateOfUnixNano } from "../src/index";
import { JobServiceService, StreamLogBatchesRequest, StreamLogBatchesResponse } from "../src/gen/jobagent/v1/job_service";
import { LogStream } from "../src/gen/jobagent/v1/jobs";

const { LOG_STREAM_STDOUT: stdout, LOG_STREAM_STDERR: stderr } = LogStream;
// 2026-12-07T07:00:00.123456789Z: more digits than a double holds.
const moment = 1796626800123456789n;

let sent: StreamLogBatchesResponse[] = [];
const requests: StreamLogBatchesRequest[] = [];
const server = new Server();
let agent: JobAgent;

before(async () => {
  const implementation: UntypedServiceImplementation = {
    streamLogBatches(call: ServerWritableStream<StreamLogBatchesRequest, StreamLogBatchesResponse>) {
      requests.push(call.request);
      for (const batch of sent) {
        call.write(batch);
      }
      call.end();
    },
  };
  server.addService(JobServiceService, implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound)));
  agent = new JobAgent(`127.0.0.1:${port}`);
});

after(() => {
  agent.close();
  server.forceShutdown();
});

function batch(partial: Partial<StreamLogBatchesResponse>): StreamLogBatchesResponse {
  return StreamLogBatchesResponse.fromPartial(partial);
}

test("logs yields the batches' columns line by line, times to the millisecond", async () => {
  sent = [
    batch({
      messages: ["one", "two", "half"], streams: [stdout, stderr, stdout],
      timesUnixNano: [moment, moment + 1_000_000n, moment + 2_000_000n].map(String),
      partialLines: [2], truncated: true,
    }),
    batch({ messages: ["rest"], streams: [stdout], timesUnixNano: [String(moment + 3_000_000n)] }),
  ];
  const since = new Date("2026-12-07T06:00:00Z");
  const lines = [];
  for await (const line of agent.logs("x", { follow: true, tailLines: 5, stream: stderr, since, attempt: 2 })) {
    lines.push(line);
  }
  assert.deepEqual(lines.map((line) => [line.time?.toISOString(), line.stream, line.message, line.partial, line.truncated]), [
    ["2026-12-07T07:00:00.123Z", stdout, "one", false, true],
    ["2026-12-07T07:00:00.124Z", stderr, "two", false, false],
    ["2026-12-07T07:00:00.125Z", stdout, "half", true, false],
    ["2026-12-07T07:00:00.126Z", stdout, "rest", false, false],
  ]);
  const request = requests.pop();
  assert.equal(request?.executionId, "x");
  assert.equal(request?.follow, true);
  assert.equal(request?.tailLines, 5);
  assert.equal(request?.stream, stderr);
  assert.equal(request?.since?.getTime(), since.getTime());
  assert.equal(request?.attempt, 2);
});

test("logBatches hands out the batches as sent, with their exact nanoseconds", async () => {
  sent = [
    batch({ messages: ["a", "b"], streams: [stdout, stdout], timesUnixNano: [String(moment), String(moment + 1n)] }),
    batch({ messages: ["c"], streams: [stderr], timesUnixNano: [String(moment + 2n)] }),
  ];
  const got = [];
  for await (const item of agent.logBatches("x")) {
    got.push(item);
  }
  assert.deepEqual(got, sent);
  assert.deepEqual(requests.pop(), StreamLogBatchesRequest.fromPartial({ executionId: "x" }));
  const lines = [];
  for await (const line of agent.logs("x", false)) {
    lines.push(line.message);
  }
  assert.deepEqual(lines, ["a", "b", "c"]);
  assert.equal(requests.pop()?.follow, false);
});

test("a batch whose columns disagree is an error", async () => {
  for (const bad of [
    batch({ messages: ["a", "b"], streams: [stdout], timesUnixNano: ["1", "2"] }),
    batch({ messages: ["a"], streams: [stdout], timesUnixNano: ["1"], partialLines: [1] }),
  ]) {
    sent = [bad];
    await assert.rejects(async () => {
      for await (const line of agent.logs("x")) {
        assert.fail(`a line of a bad batch: ${line.message}`);
      }
    }, /log batch/);
  }
});

test("batchLines and dateOfUnixNano", () => {
  const lines = [...batchLines(batch({ messages: ["x"], streams: [stderr], timesUnixNano: ["-1"] }))];
  assert.deepEqual(lines, [{ time: new Date(-1), stream: stderr, message: "x", partial: false, truncated: false }]);
  assert.equal(dateOfUnixNano(String(moment)).toISOString(), "2026-12-07T07:00:00.123Z");
});
