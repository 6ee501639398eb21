"""jobagent: a node agent that runs container jobs for a control-plane scheduler.

Layers, each importing only the ones below it: `api` (the gRPC surface) over `executor`
(executions and their state machine) over `runtime` (containers), all speaking `domain`.

Packages and modules, one job each:

- api/: the gRPC surface
- executor/: executions, from trigger to terminal state, and cron
- runtime/: containers: images, bundles, conmon, the OCI runtime
- app: builds the store, the runtime, the executor and the server from a config
- cli: the `jobagent` command (`serve`, `image-import`)
- config: the agent's configuration and its embedded defaults
- containerpath: paths inside a container (working directory, mount targets, payload)
- diskspace: the data directory's free space, the admission and emergency reserves
- dispatch: what a job lets a trigger add, and the checks of what one adds
- domain: the types every layer shares, plain immutable dataclasses
- errors: typed domain errors (agent/api maps each to one status code)
- exclusive: one agent per data directory and per address
- faults: test-only fault points injected into a real agent process
- hostfs: files and directories on the host, each with an explicit mode
- logsetup: the agent's own log, text or JSON lines
- metrics: Prometheus metrics over HTTP
- mounts: a job's storage list and the host policy it is checked against
- priority: the agent's own threads run ahead of the processes it starts
- privileges: what a job may hold beyond the default container
- records: domain records to JSON by field name and back, from their declarations
- reference: image references (the distribution grammar, local OCI layouts)
- settings: the `serve` flags and the YAML settings file, turned into a config
- signals: signals by name or number
- spec: the seed's deployment YAML, parsed into JobSpecs
- store: SQLite: jobs, executions and events, with a node-wide event sequence
- supervisor: the agent's long-lived tasks, kept running
- walcheckpoint: the store's log checkpointed from a worker thread, off the event loop
"""

__version__ = "0.1.0"
