/**
 * A client of the jobagent node agent: a thin typed layer over the code generated from
 * protos/ (src/gen): trigger and wait, follow logs, watch the node's events with resume.
 */
import { BlockList, isIP } from "node:net";

import {
  ChannelCredentials,
  ClientReadableStream,
  InterceptingCall,
  Interceptor,
  Metadata,
  ServiceError,
  credentials,
  status,
} from "@grpc/grpc-js";

import {
  CancelExecutionRequest,
  GetExecutionRequest,
  JobServiceClient,
  RegisterJobRequest,
  RegisterJobResponse,
  StreamLogBatchesRequest,
  StreamLogBatchesResponse,
  TriggerJobRequest,
  WatchEventsRequest,
  WatchEventsResponse,
  WatchExecutionRequest,
} from "./gen/jobagent/v1/job_service";
import { Execution, ExecutionEvent, ExecutionStatus, Job, JobEvent, LogLine, LogStream } from "./gen/jobagent/v1/jobs";

export * as pb from "./gen/jobagent/v1/jobs";
export * as service from "./gen/jobagent/v1/job_service";

/** How to reach the agent. */
export interface Options {
  /** TLS (`credentials.createSsl(...)`, with a client certificate for mTLS); plain text when unset. */
  credentials?: ChannelCredentials;
  /**
   * A bearer token, sent as `authorization: Bearer <token>` on every call (unary and
   * streaming, through `stub` too); none when unset. Without TLS it is sent only to a unix
   * socket or a loopback address: the constructor refuses any other target.
   */
  token?: string;
}

/** A client interceptor that adds `authorization: Bearer <token>` to every call. */
export function bearerToken(token: string): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata: Metadata, listener, next) {
        metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/** True when `target` is a unix socket or a loopback address, where plain text stays on the host. */
export function isLocalTarget(target: string): boolean {
  if (target.startsWith("unix:") || target.startsWith("unix-abstract:")) {
    return true;
  }
  const address = target.replace(/^(dns|passthrough):\/\/\//, "");
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(address);
  const host = bracketed ? bracketed[1] : address.replace(/:\d+$/, "");
  if (host === "localhost") {
    return true;
  }
  const family = isIP(host);
  return family !== 0 && LOOPBACK.check(host, family === 4 ? "ipv4" : "ipv6");
}

/** An event of the node's stream: of an execution or of a job. */
export type NodeEvent =
  | { sequence: number; execution: ExecutionEvent; job?: undefined }
  | { sequence: number; job: JobEvent; execution?: undefined };

/** Which output a log read returns; by default all of the latest attempt's output as it is now. */
export interface LogOptions {
  /** Keep the read open and return new lines until the attempt ends. */
  follow?: boolean;
  /** Start with the last N lines (0: from the start). */
  tailLines?: number;
  /** Only stdout or stderr (both when unspecified). */
  stream?: LogStream;
  /** Only lines written at or after this time. */
  since?: Date;
  /** The attempt whose output to read (1 for the first); the latest when 0. */
  attempt?: number;
}

/** Throws when a batch's columns do not describe the same lines. */
function checkBatch(batch: StreamLogBatchesResponse): void {
  const lines = batch.messages.length;
  if (batch.timesUnixNano.length !== lines || batch.streams.length !== lines) {
    throw new Error(`a log batch of ${lines} messages has ${batch.timesUnixNano.length} times and ${batch.streams.length} streams`);
  }
  const beyond = batch.partialLines.find((index) => index >= lines);
  if (beyond !== undefined) {
    throw new Error(`a log batch of ${lines} messages marks line ${beyond} partial`);
  }
}

/** A time in nanoseconds since the Unix epoch (a decimal string) as a Date (whole milliseconds). */
export function dateOfUnixNano(nanoseconds: string): Date {
  const value = BigInt(nanoseconds);
  const millis = value / 1_000_000n - (value % 1_000_000n < 0n ? 1n : 0n);
  return new Date(Number(millis));
}

/**
 * The lines of a batch as the LogLine values StreamLogs sends: partial on the fragments,
 * truncated on the first line of a truncated batch.
 */
export function* batchLines(batch: StreamLogBatchesResponse): Generator<LogLine> {
  const partial = new Set(batch.partialLines);
  for (let index = 0; index < batch.messages.length; index++) {
    yield {
      time: dateOfUnixNano(batch.timesUnixNano[index]),
      stream: batch.streams[index],
      message: batch.messages[index],
      partial: partial.has(index),
      truncated: batch.truncated && index === 0,
    };
  }
}

/** True for the statuses an execution never leaves. */
export function isTerminal(value: ExecutionStatus): boolean {
  return [ExecutionStatus.EXECUTION_STATUS_COMPLETED, ExecutionStatus.EXECUTION_STATUS_FAILED,
          ExecutionStatus.EXECUTION_STATUS_CANCELLED].includes(value);
}

/** Talks to one agent. Calls reject with the grpc-js ServiceError (code, details). */
export class JobAgent {
  /** The generated client, for calls this layer does not cover. */
  readonly stub: JobServiceClient;

  /**
   * A client of the agent at `target`: host:port, or unix:/path for the agent's unix socket
   * (gRPC's naming). The connection is made by the first call.
   */
  constructor(target: string, options: Options = {}) {
    const interceptors: Interceptor[] = [];
    if (options.token) {
      if (!options.credentials && !isLocalTarget(target)) {
        throw new Error(
          `a token goes in plain text only to a unix socket or a loopback address; use TLS to reach ${target}`);
      }
      interceptors.push(bearerToken(options.token));
    }
    this.stub = new JobServiceClient(target, options.credentials ?? credentials.createInsecure(), { interceptors });
  }

  close(): void {
    this.stub.close();
  }

  private unary<Request, Response>(
    method: (request: Request, metadata: Metadata, callback: (error: ServiceError | null, response: Response) => void) => unknown,
    request: Request,
  ): Promise<Response> {
    return new Promise((resolve, reject) => {
      method.call(this.stub, request, new Metadata(), (error: ServiceError | null, response: Response) =>
        error ? reject(error) : resolve(response));
    });
  }

  /** Registers the jobs of a deployment document. */
  async register(specYaml: string, replace = false): Promise<Job[]> {
    const response = await this.unary<RegisterJobRequest, RegisterJobResponse>(
      this.stub.registerJob, RegisterJobRequest.fromPartial({ specYaml, replace }));
    return response.jobs;
  }

  /** Starts an execution of a job. */
  trigger(jobName: string): Promise<Execution> {
    return this.unary<TriggerJobRequest, Execution>(this.stub.triggerJob, TriggerJobRequest.fromPartial({ jobName }));
  }

  /** One execution. */
  getExecution(id: string): Promise<Execution> {
    return this.unary<GetExecutionRequest, Execution>(this.stub.getExecution, GetExecutionRequest.fromPartial({ id }));
  }

  /** Follows an execution until `done` says so (or it ends) and returns it then. */
  async watchUntil(id: string, done: (execution: Execution) => boolean): Promise<Execution> {
    const stream = this.stub.watchExecution(WatchExecutionRequest.fromPartial({ id }));
    let last: Execution | undefined;
    try {
      for await (const event of stream as AsyncIterable<ExecutionEvent>) {
        last = event.execution;
        if (last && (done(last) || isTerminal(last.status))) {
          return last;
        }
      }
    } finally {
      stream.cancel();
    }
    if (!last) {
      throw new Error("the watch ended without an event");
    }
    return last;
  }

  /** Waits for an execution to end. */
  wait(id: string): Promise<Execution> {
    return this.watchUntil(id, () => false);
  }

  /** Starts an execution and waits for its end. */
  async triggerAndWait(jobName: string): Promise<Execution> {
    return this.wait((await this.trigger(jobName)).id);
  }

  /**
   * The execution's output, many lines at a time (StreamLogBatches), column by column: for
   * readers of large logs (`batchLines` makes LogLine values of a batch). A batch whose
   * columns disagree in length throws. Leaving the loop ends the call.
   */
  async *logBatches(executionId: string, options: LogOptions = {}): AsyncGenerator<StreamLogBatchesResponse> {
    const stream = this.stub.streamLogBatches(StreamLogBatchesRequest.fromPartial({
      executionId,
      follow: options.follow ?? false,
      tailLines: options.tailLines ?? 0,
      stream: options.stream ?? LogStream.LOG_STREAM_UNSPECIFIED,
      since: options.since,
      attempt: options.attempt ?? 0,
    }));
    try {
      for await (const batch of stream as AsyncIterable<StreamLogBatchesResponse>) {
        checkBatch(batch);
        yield batch;
      }
    } finally {
      stream.cancel();
    }
  }

  /** The execution's output lines (read in batches); with `follow`, as they come until it ends. */
  logs(executionId: string, follow?: boolean): AsyncGenerator<LogLine>;
  logs(executionId: string, options: LogOptions): AsyncGenerator<LogLine>;
  async *logs(executionId: string, options: boolean | LogOptions = false): AsyncGenerator<LogLine> {
    for await (const batch of this.logBatches(executionId, typeof options === "boolean" ? { follow: options } : options)) {
      yield* batchLines(batch);
    }
  }

  /** Stops an execution (stop signal, grace, then SIGKILL) and returns it once final. */
  cancel(id: string, graceSeconds: number): Promise<Execution> {
    const seconds = Math.floor(graceSeconds);
    const nanos = Math.round((graceSeconds - seconds) * 1e9);
    return this.unary<CancelExecutionRequest, Execution>(this.stub.cancelExecution,
      CancelExecutionRequest.fromPartial({ id, gracePeriod: { seconds, nanos } }));
  }

  /** Follows the node's events after `since` (of one job when set). */
  watchEvents(since: number, jobName = ""): EventWatcher {
    return new EventWatcher(this, since, jobName);
  }

  /** @internal */
  openEvents(since: number, jobName: string): ClientReadableStream<WatchEventsResponse> {
    return this.stub.watchEvents(WatchEventsRequest.fromPartial({ sinceSequence: since, jobName }));
  }
}

/** The node's events, resumed after the last one handed out when the stream breaks. */
export class EventWatcher implements AsyncIterable<NodeEvent> {
  private stream?: ClientReadableStream<WatchEventsResponse>;

  constructor(private readonly agent: JobAgent, private last: number, private readonly jobName: string) {}

  get lastSequence(): number {
    return this.last;
  }

  /** Stops watching. */
  close(): void {
    this.stream?.cancel();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<NodeEvent> {
    while (true) {
      this.stream = this.agent.openEvents(this.last, this.jobName);
      try {
        for await (const response of this.stream as AsyncIterable<WatchEventsResponse>) {
          if (response.event) {
            this.last = response.event.sequence;
            yield { sequence: this.last, execution: response.event };
          } else if (response.jobEvent) {
            this.last = response.jobEvent.sequence;
            yield { sequence: this.last, job: response.jobEvent };
          }
        }
      } catch (error) {
        const code = (error as ServiceError).code;
        if (code !== status.UNAVAILABLE && code !== status.RESOURCE_EXHAUSTED) {
          throw error;
        }
      } finally {
        this.stream.cancel();
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}
