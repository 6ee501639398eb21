"""The executor: the execution state machine and everything that drives it.

Modules, one job each:

- admission: which pending executions may start, under node and per-job limits
- events: in-process fan-out of recorded events to watchers
- executor: the node's executions, from trigger to terminal state
- init_steps: the waits and commands that run before a job's container
- lifecycle: one execution's life (prepare, attempts, deadline, cancel, outcome)
- logs: reading an attempt's log file, from the start or the tail, and following it
- machine: the state machine, as a table
- ports: what the executor needs of the layers below it
- recorder: every change of an execution checked, stored, then published
- retention: finished executions go, by age and by count
- scheduler: cron schedules become executions
- stored_jobs: stored jobs that today's validator refuses
"""

from agent.executor.executor import Executor

__all__ = ["Executor"]
