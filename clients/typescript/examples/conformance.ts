/**
 * The conformance scenario every client passes against a live agent (clients/CONFORMANCE.md):
 *
 *     JOBAGENT_TOKEN=<token> node dist/examples/conformance.js 127.0.0.1:50051
 *     JOBAGENT_TOKEN=<token> node dist/examples/conformance.js unix:/run/jobagent/jobagent.sock
 *     node dist/examples/conformance.js --expect-unauthenticated 127.0.0.1:50051
 *
 * With --expect-unauthenticated it only checks that its first call is refused with
 * UNAUTHENTICATED (run it without the token the agent requires).
 */
import { parseArgs } from "node:util";

import { ServiceError, status } from "@grpc/grpc-js";

import { JobAgent, isTerminal } from "../src/index";
import { ExecutionStatus, LogStream } from "../src/gen/jobagent/v1/jobs";

const job = "conformance-typescript";

function check(condition: boolean, what: string): void {
  if (!condition) {
    throw new Error(`conformance failed: ${what}`);
  }
}

/** Writes both streams and ends with a fragment (no newline). */
const linesScript = "echo one; echo two >&2; echo three; echo four >&2; printf tail";

/** What the scenario compares of a log line: time (ms), stream, text, partial, truncated. */
type Line = [number, LogStream, string, boolean, boolean];

function messages(lines: Line[], stream?: LogStream): string[] {
  return lines.filter((line) => stream === undefined || line[1] === stream).map((line) => line[2]);
}

/**
 * Reads the log of a job that writes both streams and a fragment line by line and batch by
 * batch (the lines made here from the columns): the same lines, in order.
 */
async function checkLogReads(agent: JobAgent): Promise<void> {
  const done = await agent.triggerAndWait(`${job}-lines`);
  check(done.status === ExecutionStatus.EXECUTION_STATUS_COMPLETED, "lines completed");
  const byLine: Line[] = [];
  for await (const line of agent.logs(done.id)) {
    byLine.push([line.time?.getTime() ?? NaN, line.stream, line.message, line.partial, line.truncated]);
  }
  const byBatch: Line[] = [];
  for await (const batch of agent.logBatches(done.id)) {
    batch.messages.forEach((message, index) => {
      const millis = Number(BigInt(batch.timesUnixNano[index]) / 1_000_000n);
      byBatch.push([millis, batch.streams[index], message, batch.partialLines.includes(index),
                    batch.truncated && index === 0]);
    });
  }
  check(JSON.stringify(byLine) === JSON.stringify(byBatch),
        `line and batch reads differ: ${JSON.stringify(byLine)}, ${JSON.stringify(byBatch)}`);
  check(messages(byLine, LogStream.LOG_STREAM_STDOUT).join() === "one,three,tail" &&
        messages(byLine, LogStream.LOG_STREAM_STDERR).join() === "two,four",
        `lines of each stream: ${JSON.stringify(byLine)}`);
  check(byLine.every(([, , message, partial, truncated]) => partial === (message === "tail") && !truncated),
        `partial only on the fragment: ${JSON.stringify(byLine)}`);
  const tail: string[] = [];
  for await (const batch of agent.logBatches(done.id, { tailLines: 2 })) {
    tail.push(...batch.messages);
  }
  const all = messages(byLine);
  check(tail.join() === all.slice(-2).join(), `tail 2: ${tail} of ${all}`);
}

async function main(target: string, expectUnauthenticated: boolean): Promise<void> {
  const agent = new JobAgent(target, { token: process.env.JOBAGENT_TOKEN || undefined });
  try {
    if (expectUnauthenticated) {
      const refused = await agent.getExecution("0".repeat(32)).then(() => null, (error: ServiceError) => error);
      check(refused?.code === status.UNAUTHENTICATED, `want UNAUTHENTICATED, got ${refused?.message ?? "an answer"}`);
      console.log("unauthenticated ok: typescript");
      return;
    }
    await agent.register(
      `version: v1\ndeployment: ${job}\nservices:\n` +
      `  ${job}:\n    rtype: job\n    image: {name: busybox:latest}\n` +
      `    command: {entrypoint: [/bin/echo, hello from typescript]}\n` +
      `  ${job}-long:\n    rtype: job\n    image: {name: busybox:latest}\n` +
      `    command: {entrypoint: [/bin/sleep, '300']}\n` +
      `  ${job}-lines:\n    rtype: job\n    image: {name: busybox:latest}\n` +
      `    command: {entrypoint: [/bin/sh, -c, ${JSON.stringify(linesScript)}]}\n`,
      true,
    );

    // Trigger, watch to the end, read the logs.
    const done = await agent.triggerAndWait(job);
    check(done.status === ExecutionStatus.EXECUTION_STATUS_COMPLETED && done.exitCode === 0, "completed");
    const lines: string[] = [];
    for await (const line of agent.logs(done.id)) {
      lines.push(line.message);
    }
    check(lines.join("\n") === "hello from typescript", "logs");

    await checkLogReads(agent);

    // Cancel a long job once it runs.
    const long = await agent.trigger(`${job}-long`);
    await agent.watchUntil(long.id, (e) => e.status === ExecutionStatus.EXECUTION_STATUS_RUNNING);
    const cancelled = await agent.cancel(long.id, 1);
    check(cancelled.status === ExecutionStatus.EXECUTION_STATUS_CANCELLED, "cancelled");

    // An unknown id is NOT_FOUND.
    const missing = await agent.getExecution("0".repeat(32)).then(() => null, (error: ServiceError) => error);
    check(missing?.code === status.NOT_FOUND, "not found");

    // Resume an event stream: after the second event of the run, the third comes next.
    const seen: number[] = [];
    const events = agent.watchEvents(0, job);
    for await (const event of events) {
      const execution = event.execution?.execution;
      if (execution?.id === done.id) {
        seen.push(event.sequence);
        if (isTerminal(execution.status)) {
          break;
        }
      }
    }
    check(seen.length >= 3, "events of the run");
    for await (const event of agent.watchEvents(seen[1], job)) {
      check(event.sequence === seen[2], "resume");
      break;
    }
    console.log("conformance ok: typescript");
  } finally {
    agent.close();
  }
}

const { values, positionals } = parseArgs({
  options: { "expect-unauthenticated": { type: "boolean", default: false } },
  allowPositionals: true,
});
main(positionals[0] ?? "127.0.0.1:50051", values["expect-unauthenticated"] === true).catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
