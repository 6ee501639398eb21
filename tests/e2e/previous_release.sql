BEGIN TRANSACTION;
CREATE TABLE attempts (
    execution_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    container_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    exit_code INTEGER,
    failure_reason TEXT,
    message TEXT NOT NULL,
    PRIMARY KEY (execution_id, number)
);
INSERT INTO "attempts" VALUES('11111111111111111111111111111111',1,'ja-11111111111111111111111111111111-1','2026-12-07T12:01:01.000000+00:00','2026-12-07T12:01:02.000000+00:00',0,NULL,'exited 0');
INSERT INTO "attempts" VALUES('22222222222222222222222222222222',1,'ja-22222222222222222222222222222222-1','2026-12-07T12:02:02.000000+00:00','2026-12-07T12:02:03.000000+00:00',3,'exit_code','exited 3');
INSERT INTO "attempts" VALUES('22222222222222222222222222222222',2,'ja-22222222222222222222222222222222-2','2026-12-07T12:02:05.000000+00:00','2026-12-07T12:02:06.000000+00:00',3,'exit_code','exited 3');
CREATE TABLE cron_state (
    job_name TEXT PRIMARY KEY,
    last_schedule_time TEXT,
    last_execution_id TEXT NOT NULL DEFAULT '',
    skipped INTEGER NOT NULL DEFAULT 0,
    missed INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "cron_state" VALUES('nightly','2026-12-07T15:00:00.000000+00:00','',0,1);
CREATE TABLE events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    execution TEXT NOT NULL,
    kind TEXT NOT NULL,
    step_id TEXT NOT NULL,
    message TEXT NOT NULL,
    job_name TEXT NOT NULL DEFAULT '',
    schedule_time TEXT
);
INSERT INTO "events" VALUES(1,'2026-12-07T12:15:10.102192+00:00','','','job_registered','','','hello',NULL);
INSERT INTO "events" VALUES(2,'2026-12-07T12:15:10.102445+00:00','','','job_registered','','','params',NULL);
INSERT INTO "events" VALUES(3,'2026-12-07T12:15:10.102571+00:00','','','job_registered','','','nightly',NULL);
INSERT INTO "events" VALUES(4,'2026-12-07T12:15:10.102683+00:00','11111111111111111111111111111111','["11111111111111111111111111111111", "hello", "pending", "{\"kind\": \"cli\", \"remote_address\": \"unix:\", \"reason\": \"by hand\"}", "ja-11111111111111111111111111111111", "2026-12-07T12:01:00.000000+00:00", null, null, null, null, "", "", 1]','transition','','','hello',NULL);
INSERT INTO "events" VALUES(5,'2026-12-07T12:15:10.102817+00:00','11111111111111111111111111111111','["11111111111111111111111111111111", "hello", "initializing", "{\"kind\": \"cli\", \"remote_address\": \"unix:\", \"reason\": \"by hand\"}", "ja-11111111111111111111111111111111", "2026-12-07T12:01:00.000000+00:00", "2026-12-07T12:01:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','transition','','','hello',NULL);
INSERT INTO "events" VALUES(6,'2026-12-07T12:15:10.103016+00:00','11111111111111111111111111111111','["11111111111111111111111111111111", "hello", "running", "{\"kind\": \"cli\", \"remote_address\": \"unix:\", \"reason\": \"by hand\"}", "ja-11111111111111111111111111111111", "2026-12-07T12:01:00.000000+00:00", "2026-12-07T12:01:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','transition','','','hello',NULL);
INSERT INTO "events" VALUES(7,'2026-12-07T12:15:10.103159+00:00','11111111111111111111111111111111','["11111111111111111111111111111111", "hello", "running", "{\"kind\": \"cli\", \"remote_address\": \"unix:\", \"reason\": \"by hand\"}", "ja-11111111111111111111111111111111", "2026-12-07T12:01:00.000000+00:00", "2026-12-07T12:01:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','attempt_started','','attempt 1 started','hello',NULL);
INSERT INTO "events" VALUES(8,'2026-12-07T12:15:10.103250+00:00','11111111111111111111111111111111','["11111111111111111111111111111111", "hello", "completed", "{\"kind\": \"cli\", \"remote_address\": \"unix:\", \"reason\": \"by hand\"}", "ja-11111111111111111111111111111111", "2026-12-07T12:01:00.000000+00:00", "2026-12-07T12:01:01.000000+00:00", "2026-12-07T12:01:02.000000+00:00", 0, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','transition','','','hello',NULL);
INSERT INTO "events" VALUES(9,'2026-12-07T12:15:10.103347+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "pending", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", null, null, null, null, "", "", 1]','transition','','','params',NULL);
INSERT INTO "events" VALUES(10,'2026-12-07T12:15:10.103423+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "initializing", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", "2026-12-07T12:02:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','transition','','','params',NULL);
INSERT INTO "events" VALUES(11,'2026-12-07T12:15:10.103464+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "initializing", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", "2026-12-07T12:02:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','init_step_started','settle','init.sleep','params',NULL);
INSERT INTO "events" VALUES(12,'2026-12-07T12:15:10.103497+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "initializing", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", "2026-12-07T12:02:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','init_step_succeeded','settle','slept 1s','params',NULL);
INSERT INTO "events" VALUES(13,'2026-12-07T12:15:10.103558+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "running", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", "2026-12-07T12:02:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','transition','','','params',NULL);
INSERT INTO "events" VALUES(14,'2026-12-07T12:15:10.103623+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "running", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", "2026-12-07T12:02:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','attempt_started','','attempt 1 started','params',NULL);
INSERT INTO "events" VALUES(15,'2026-12-07T12:15:10.103695+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "running", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", "2026-12-07T12:02:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 1]','attempt_failed','','attempt 1 exited 3','params',NULL);
INSERT INTO "events" VALUES(16,'2026-12-07T12:15:10.103842+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "running", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", "2026-12-07T12:02:01.000000+00:00", null, null, null, "", "busybox@sha256:abababababababababababababababababababababababababababababababab", 2]','attempt_started','','attempt 2 started','params',NULL);
INSERT INTO "events" VALUES(17,'2026-12-07T12:15:10.103921+00:00','22222222222222222222222222222222','["22222222222222222222222222222222", "params", "failed", "{\"kind\": \"endpoint\", \"remote_address\": \"ipv4:127.0.0.1:40000\", \"reason\": \"\"}", "ja-22222222222222222222222222222222", "2026-12-07T12:02:00.000000+00:00", "2026-12-07T12:02:01.000000+00:00", "2026-12-07T12:02:06.000000+00:00", 3, "exit_code", "exited 3", "busybox@sha256:abababababababababababababababababababababababababababababababab", 2]','transition','','','params',NULL);
INSERT INTO "events" VALUES(18,'2026-12-07T12:15:10.104004+00:00','','','schedule_missed','','suspended','nightly','2026-12-07T15:00:00.000000+00:00');
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    job_name TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    container_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    exit_code INTEGER,
    failure_reason TEXT,
    message TEXT NOT NULL,
    image TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    trigger_kind TEXT NOT NULL DEFAULT ''
);
INSERT INTO "executions" VALUES('11111111111111111111111111111111','hello','completed','{"kind": "cli", "remote_address": "unix:", "reason": "by hand"}','ja-11111111111111111111111111111111','2026-12-07T12:01:00.000000+00:00','2026-12-07T12:01:01.000000+00:00','2026-12-07T12:01:02.000000+00:00',0,NULL,'','busybox@sha256:abababababababababababababababababababababababababababababababab',1,'cli');
INSERT INTO "executions" VALUES('22222222222222222222222222222222','params','failed','{"kind": "endpoint", "remote_address": "ipv4:127.0.0.1:40000", "reason": ""}','ja-22222222222222222222222222222222','2026-12-07T12:02:00.000000+00:00','2026-12-07T12:02:01.000000+00:00','2026-12-07T12:02:06.000000+00:00',3,'exit_code','exited 3','busybox@sha256:abababababababababababababababababababababababababababababababab',2,'endpoint');
CREATE TABLE jobs (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    spec_yaml TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
INSERT INTO "jobs" VALUES('hello','{"name": "hello", "image": {"name": "busybox:latest", "pull_policy": "if_not_present"}, "deployment": "legacy", "kind": "job", "command": {"entrypoint": ["/bin/sh", "-c", "echo \"hello ${GREETING}\""], "args": [], "workdir": ""}, "env": {"GREETING": "world"}, "schedule": "", "resources": {"cpu": null, "memory_bytes": null, "pids_limit": null}, "user": "", "labels": {}, "timeout_seconds": null, "stop_signal": "", "stop_grace_seconds": null, "init_steps": [], "on_init_failure": "fail", "max_concurrent": null, "retry": {"backoff_limit": 0, "initial_delay_seconds": 1.0, "max_delay_seconds": 60.0, "fail_exit_codes": [], "retry_exit_codes": []}, "max_log_bytes": null, "storage": [], "host_network": false, "privileged": false, "capabilities": [], "user_namespace": "private", "cron": {"time_zone": "UTC", "concurrency_policy": "allow", "starting_deadline_seconds": null, "suspend": false, "successful_history_limit": 3, "failed_history_limit": 1}, "dispatch": {"payload": "forbidden", "payload_path": "/run/dispatch/payload", "env": [], "required_env": [], "args": false}}','version: v1
deployment: legacy
services:
  hello:
    rtype: job
    image:
      name: busybox:latest
    command:
      entrypoint:
      - /bin/sh
      - -c
      - echo "hello ${GREETING}"
    env:
      GREETING: world
','2026-12-07T12:00:00.000000+00:00','2026-12-07T12:00:00.000000+00:00');
INSERT INTO "jobs" VALUES('params','{"name": "params", "image": {"name": "busybox:latest", "pull_policy": "never"}, "deployment": "legacy", "kind": "job", "command": {"entrypoint": ["/bin/sh", "-c"], "args": ["exit 3"], "workdir": "/tmp"}, "env": {}, "schedule": "", "resources": {"cpu": 0.5, "memory_bytes": 67108864, "pids_limit": 64}, "user": "", "labels": {"team": "storage"}, "timeout_seconds": 300.0, "stop_signal": "SIGINT", "stop_grace_seconds": 3.0, "init_steps": [{"id": "settle", "action": "init.sleep", "params": {"seconds": 1.0}, "retry": 1, "timeout_seconds": null, "on_failure": "warn"}], "on_init_failure": "fail", "max_concurrent": 2, "retry": {"backoff_limit": 1, "initial_delay_seconds": 1.0, "max_delay_seconds": 2.0, "fail_exit_codes": [9], "retry_exit_codes": []}, "max_log_bytes": 65536, "storage": [{"kind": "tmpfs", "target": "/scratch", "source": "", "readonly": false, "size_bytes": 8388608, "mode": null}], "host_network": false, "privileged": false, "capabilities": [], "user_namespace": "private", "cron": {"time_zone": "UTC", "concurrency_policy": "allow", "starting_deadline_seconds": null, "suspend": false, "successful_history_limit": 3, "failed_history_limit": 1}, "dispatch": {"payload": "optional", "payload_path": "/run/dispatch/payload", "env": ["NAME"], "required_env": [], "args": true}}','version: v1
deployment: legacy
services:
  params:
    rtype: job
    image:
      name: busybox:latest
      pull_policy: never
    command:
      entrypoint:
      - /bin/sh
      - -c
      args:
      - exit 3
      workdir: /tmp
    resources:
      cpu: 0.5
      memory: 64Mi
      pids_limit: 64
    labels:
      team: storage
    timeout: 5m
    stop_signal: INT
    stop_grace_period: 3s
    init:
      steps:
      - id: settle
        uses: init.sleep
        with:
          duration: 1s
        retry: 1
        on_failure: warn
    errors:
      on_init_failure:
        action: fail
    max_concurrent: 2
    backoff_limit: 1
    retry_policy:
      initial_delay: 1s
      max_delay: 2s
      fail_exit_codes:
      - 9
    max_log_size: 64Ki
    storage:
    - type: tmpfs
      target: /scratch
      size: 8Mi
    dispatch:
      args: true
      env:
      - NAME
      payload: optional
','2026-12-07T12:00:00.000000+00:00','2026-12-07T12:00:00.000000+00:00');
INSERT INTO "jobs" VALUES('nightly','{"name": "nightly", "image": {"name": "busybox:latest", "pull_policy": "if_not_present"}, "deployment": "legacy", "kind": "cron", "command": {"entrypoint": ["/bin/true"], "args": [], "workdir": ""}, "env": {}, "schedule": "0 3 * * *", "resources": {"cpu": null, "memory_bytes": null, "pids_limit": null}, "user": "", "labels": {}, "timeout_seconds": null, "stop_signal": "", "stop_grace_seconds": null, "init_steps": [], "on_init_failure": "fail", "max_concurrent": null, "retry": {"backoff_limit": 0, "initial_delay_seconds": 1.0, "max_delay_seconds": 60.0, "fail_exit_codes": [], "retry_exit_codes": []}, "max_log_bytes": null, "storage": [], "host_network": false, "privileged": false, "capabilities": [], "user_namespace": "private", "cron": {"time_zone": "Europe/Berlin", "concurrency_policy": "forbid", "starting_deadline_seconds": 60.0, "suspend": true, "successful_history_limit": 5, "failed_history_limit": 1}, "dispatch": {"payload": "forbidden", "payload_path": "/run/dispatch/payload", "env": [], "required_env": [], "args": false}}','version: v1
deployment: legacy
services:
  nightly:
    rtype: cron
    schedule: 0 3 * * *
    image:
      name: busybox:latest
    command:
      entrypoint:
      - /bin/true
    time_zone: Europe/Berlin
    concurrency_policy: forbid
    suspend: true
    starting_deadline_seconds: 60
    successful_jobs_history_limit: 5
','2026-12-07T12:00:00.000000+00:00','2026-12-07T12:00:00.000000+00:00');
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE trigger_requests (
    execution_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    caller TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL,
    args TEXT NOT NULL,
    env TEXT NOT NULL,
    payload BLOB NOT NULL
);
INSERT INTO "trigger_requests" VALUES('22222222222222222222222222222222','req-1','alice','print','["--fast"]','{"NAME": "x"}',X'7061796C6F6164206279746573');
CREATE TABLE user_ranges (
    job_name TEXT PRIMARY KEY,
    slot INTEGER NOT NULL UNIQUE
);
CREATE INDEX executions_by_job ON executions (job_name, created_at);
CREATE INDEX executions_by_status ON executions (status);
CREATE INDEX events_by_execution ON events (execution_id, sequence);
CREATE UNIQUE INDEX trigger_requests_by_caller ON trigger_requests (caller, request_id) WHERE request_id != '';
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('events',18);
COMMIT;
