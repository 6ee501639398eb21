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
import { ExecutionStatus } from "../src/gen/jobagent/v1/jobs";

const job = "conformance-typescript";

function check(condition: boolean, what: string): void {
  if (!condition) {
    throw new Error(`conformance failed: ${what}`);
  }
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
      `    command: {entrypoint: [/bin/sleep, '300']}\n`,
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
