"""The executor: the execution state machine and everything that drives it."""

from agent.executor.executor import Executor

__all__ = ["Executor"]
